/* Tests for lib/httpc: real transfers on a real event loop, against an evhttp
 * server on 127.0.0.1 and a random port that runs on the same event_base; and the
 * blocking pk_httpc_fetch against a canned one-connection server on a thread.
 *
 * Server paths: /echo (200, body "x-echo=<X-Echo header> uri=<uri>"), /missing (404),
 * /redirect (302 to /echo), /slow?ms=N (200 after N ms, from an evtimer), /big?n=N (N
 * bytes with a Content-Length), /chunked?n=N (N bytes, chunked, no length). */
#include "base/base.h"
#include "httpc/httpc.h"

#include <CUnit/CUnit.h>
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void pk_test_register_httpc(void);

#define GUARD_MS 10000
#define MAXSLOW  16
#define MAXPEERS 128

/* ---- the server ---- */

struct slow_reply {
    struct server *s;
    struct evhttp_request *req; /* NULL once answered */
    struct event *timer;
};

struct server {
    struct evhttp *http;
    uint16_t port;
    int handled;              /* requests received */
    int not_http11;           /* requests that were not HTTP/1.1 */
    int not_get;              /* requests that were not GET */
    uint16_t peers[MAXPEERS]; /* distinct client ports seen */
    size_t npeers;
    struct slow_reply slow[MAXSLOW];
    size_t nslow;
    int slow_sent;
};

static void reply(struct evhttp_request *req, int code, const char *body, size_t len)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, len);
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Test", b);
    evbuffer_free(b);
}

static void slow_cb(evutil_socket_t fd, short what, void *arg)
{
    struct slow_reply *sr = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    /* The client may have gone: libevent 2.1 then only frees the request. */
    reply(sr->req, 200, "slow", 4);
    sr->req = NULL;
    sr->s->slow_sent++;
}

static void note_peer(struct server *s, struct evhttp_request *req)
{
    char *addr = NULL;
    ev_uint16_t port = 0;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &addr, &port);
    for (size_t i = 0; i < s->npeers; i++)
        if (s->peers[i] == port)
            return;
    if (s->npeers < MAXPEERS)
        s->peers[s->npeers++] = port;
}

static void handler(struct evhttp_request *req, void *arg)
{
    struct server *s = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = evhttp_uri_get_path(uri);
    const char *query = evhttp_uri_get_query(uri);
    struct evkeyvalq q;
    char body[512];

    s->handled++;
    if (req->major != 1 || req->minor != 1)
        s->not_http11++;
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET)
        s->not_get++;
    note_peer(s, req);
    evhttp_parse_query_str(query ? query : "", &q);
    const char *nstr = evhttp_find_header(&q, "n");
    const char *msstr = evhttp_find_header(&q, "ms");
    size_t n = nstr ? (size_t)atol(nstr) : 0;
    int ms = msstr ? atoi(msstr) : 0;

    if (!path)
        path = "";
    if (strcmp(path, "/echo") == 0) {
        const char *x = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Echo");
        int len = snprintf(body, sizeof(body), "x-echo=%s uri=%s", x ? x : "-",
                           evhttp_request_get_uri(req));
        reply(req, 200, body, (size_t)len);
    } else if (strcmp(path, "/redirect") == 0) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Location", "/echo");
        reply(req, 302, "moved", 5);
    } else if (strcmp(path, "/slow") == 0 && s->nslow < MAXSLOW) {
        struct slow_reply *sr = &s->slow[s->nslow++];
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        sr->s = s;
        sr->req = req;
        sr->timer = evtimer_new(evhttp_connection_get_base(evhttp_request_get_connection(req)),
                                slow_cb, sr);
        evtimer_add(sr->timer, &tv);
    } else if (strcmp(path, "/big") == 0 || strcmp(path, "/chunked") == 0) {
        char *big = malloc(n + 1);
        memset(big, 'b', n);
        if (path[1] == 'b') {
            reply(req, 200, big, n);
        } else {
            struct evbuffer *b = evbuffer_new();
            evhttp_send_reply_start(req, 200, "OK");
            evbuffer_add(b, big, n / 2);
            evhttp_send_reply_chunk(req, b);
            evbuffer_add(b, big + n / 2, n - n / 2);
            evhttp_send_reply_chunk(req, b);
            evhttp_send_reply_end(req);
            evbuffer_free(b);
        }
        free(big);
    } else {
        reply(req, 404, "not here", 8);
    }
    evhttp_clear_headers(&q);
}

static void server_start(struct server *s, struct event_base *base)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);

    memset(s, 0, sizeof(*s));
    s->http = evhttp_new(base);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s->http);
    evhttp_set_gencb(s->http, handler, s);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(s->http, "127.0.0.1", 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(bs);
    CU_ASSERT_FATAL(getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &len) ==
                    0);
    s->port = ntohs(sin.sin_port);
    CU_ASSERT_FATAL(s->port != 0);
}

static void server_stop(struct server *s)
{
    /* Requests still held by /slow must be answered (or freed by the answer) first. */
    for (size_t i = 0; i < s->nslow; i++) {
        if (s->slow[i].req)
            reply(s->slow[i].req, 200, "late", 4);
        event_free(s->slow[i].timer);
    }
    evhttp_free(s->http);
}

/* ---- loop harness ---- */

struct fx {
    struct event_base *base;
    struct event *watchdog;
    bool timed_out;
    int pending; /* callbacks still expected */
    struct server srv;
    struct pk_httpc *h;
    char url[256];
};

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    struct fx *fx = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    fx->timed_out = true;
}

static void fx_init(struct fx *fx, size_t max_body)
{
    memset(fx, 0, sizeof(*fx));
    fx->base = event_base_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(fx->base);
    fx->watchdog = evtimer_new(fx->base, watchdog_cb, fx);
    server_start(&fx->srv, fx->base);
    fx->h = pk_httpc_new(fx->base, max_body);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fx->h);
}

static void fx_free(struct fx *fx)
{
    pk_httpc_del(fx->h);
    server_stop(&fx->srv);
    event_free(fx->watchdog);
    event_base_free(fx->base);
}

static const char *url(struct fx *fx, const char *path)
{
    snprintf(fx->url, sizeof(fx->url), "http://127.0.0.1:%u%s", (unsigned)fx->srv.port, path);
    return fx->url;
}

/* Runs the loop until *counter reaches want, or GUARD_MS passed (a failure). */
static void loop_until(struct fx *fx, const int *counter, int want, bool down)
{
    struct timeval tv = {GUARD_MS / 1000, 0};
    fx->timed_out = false;
    evtimer_add(fx->watchdog, &tv);
    while ((down ? *counter > want : *counter < want) && !fx->timed_out)
        event_base_loop(fx->base, EVLOOP_ONCE);
    evtimer_del(fx->watchdog);
    CU_ASSERT_FALSE(fx->timed_out);
}

/* Runs the loop until every expected callback came. */
static void loop_run(struct fx *fx)
{
    loop_until(fx, &fx->pending, 0, true);
}

/* Runs the loop for ms milliseconds, giving callbacks that must not come a chance to. */
static void loop_settle(struct fx *fx, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    fx->timed_out = false;
    evtimer_add(fx->watchdog, &tv);
    while (!fx->timed_out)
        event_base_loop(fx->base, EVLOOP_ONCE);
}

/* ---- results ---- */

struct result {
    struct fx *fx;
    int called;
    int status;
    char body[512];
    size_t len;
    bool body_nul; /* body[len] was a NUL */
    bool all_b;    /* every byte was 'b' (the /big and /chunked bodies) */
    bool err_null;
    char err[256];
    size_t inflight; /* pk_httpc_inflight from inside the callback */
    uint64_t at_ms;
    /* What the callback does next. */
    void (*then)(struct result *res);
    struct pk_httpc_req *other;
    struct result *next_res;
};

static void result_cb(int status, const char *body, size_t len, const char *err, void *arg)
{
    struct result *res = arg;

    res->called++;
    res->status = status;
    res->at_ms = pk_now_ms();
    CU_ASSERT_PTR_NOT_NULL_FATAL(body);
    res->len = len;
    res->body_nul = body[len] == '\0';
    snprintf(res->body, sizeof(res->body), "%.*s", (int)PK_MIN(len, sizeof(res->body) - 1), body);
    res->all_b = true;
    for (size_t i = 0; i < len; i++)
        if (body[i] != 'b')
            res->all_b = false;
    res->err_null = err == NULL;
    snprintf(res->err, sizeof(res->err), "%s", err ? err : "");
    res->inflight = pk_httpc_inflight(res->fx->h);
    res->fx->pending--;
    if (res->then)
        res->then(res);
}

static struct pk_httpc_req *get(struct fx *fx, const char *path, const char *const *hdrs,
                                uint64_t timeout_ms, struct result *res)
{
    memset(res, 0, sizeof(*res));
    res->fx = fx;
    struct pk_httpc_req *r = pk_httpc_get(fx->h, url(fx, path), hdrs, timeout_ms, result_cb, res);
    CU_ASSERT_PTR_NOT_NULL(r);
    if (r)
        fx->pending++;
    return r;
}

/* A loopback TCP port with nothing listening, for the moment. */
static uint16_t closed_port(void)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    CU_ASSERT_FATAL(getsockname(fd, (struct sockaddr *)&sin, &len) == 0);
    close(fd);
    return ntohs(sin.sin_port);
}

/* ---- tests ---- */

static void test_get_200_body_and_header(void)
{
    struct fx fx;
    struct result res;
    char hdr[64] = "X-Echo: hello world";
    const char *hdrs[] = {"X-Other: 1", hdr, NULL};

    fx_init(&fx, 0);
    get(&fx, "/echo?a=1", hdrs, 5000, &res);
    /* The header lines were copied: changing them now must not change the request. */
    strcpy(hdr, "X-Echo: changed");
    CU_ASSERT_EQUAL(pk_httpc_inflight(fx.h), 1);
    CU_ASSERT_EQUAL(res.called, 0); /* never from inside pk_httpc_get */
    loop_run(&fx);
    CU_ASSERT_EQUAL(res.called, 1);
    CU_ASSERT_EQUAL(res.status, 200);
    CU_ASSERT_STRING_EQUAL(res.body, "x-echo=hello world uri=/echo?a=1");
    CU_ASSERT_EQUAL(res.len, strlen("x-echo=hello world uri=/echo?a=1"));
    CU_ASSERT_TRUE(res.body_nul);
    CU_ASSERT_TRUE(res.err_null);
    CU_ASSERT_EQUAL(res.inflight, 0);
    CU_ASSERT_EQUAL(pk_httpc_inflight(fx.h), 0);
    CU_ASSERT_EQUAL(fx.srv.handled, 1);
    CU_ASSERT_EQUAL(fx.srv.not_http11, 0);
    CU_ASSERT_EQUAL(fx.srv.not_get, 0);

    /* No header lines at all. */
    get(&fx, "/echo", NULL, 0, &res);
    loop_run(&fx);
    CU_ASSERT_EQUAL(res.status, 200);
    CU_ASSERT_STRING_EQUAL(res.body, "x-echo=- uri=/echo");
    fx_free(&fx);
}

static void test_status_passed_through(void)
{
    struct fx fx;
    struct result res;

    fx_init(&fx, 0);
    get(&fx, "/missing", NULL, 5000, &res);
    loop_run(&fx);
    CU_ASSERT_EQUAL(res.called, 1);
    CU_ASSERT_EQUAL(res.status, 404);
    CU_ASSERT_STRING_EQUAL(res.body, "not here");
    CU_ASSERT_TRUE(res.err_null);

    /* Redirects are not followed. */
    get(&fx, "/redirect", NULL, 5000, &res);
    loop_run(&fx);
    CU_ASSERT_EQUAL(res.status, 302);
    CU_ASSERT_STRING_EQUAL(res.body, "moved");
    CU_ASSERT_EQUAL(fx.srv.handled, 2);
    fx_free(&fx);
}

static void test_timeout(void)
{
    struct fx fx;
    struct result res;

    fx_init(&fx, 0);
    uint64_t t0 = pk_now_ms();
    get(&fx, "/slow?ms=3000", NULL, 200, &res);
    loop_run(&fx);
    CU_ASSERT_EQUAL(res.called, 1);
    CU_ASSERT_EQUAL(res.status, 0);
    CU_ASSERT_STRING_EQUAL(res.err, "Timeout was reached");
    CU_ASSERT_EQUAL(res.len, 0);
    CU_ASSERT_STRING_EQUAL(res.body, "");
    /* Well before the server's reply (3 s): the timeout, not the answer, ended it. */
    CU_ASSERT(res.at_ms - t0 >= 150);
    CU_ASSERT(res.at_ms - t0 < 2500);
    CU_ASSERT_EQUAL(fx.srv.slow_sent, 0);
    CU_ASSERT_EQUAL(pk_httpc_inflight(fx.h), 0);
    fx_free(&fx);
}

static void test_connection_refused(void)
{
    struct fx fx;
    struct result res;
    char u[64];

    fx_init(&fx, 0);
    snprintf(u, sizeof(u), "http://127.0.0.1:%u/", (unsigned)closed_port());
    memset(&res, 0, sizeof(res));
    res.fx = &fx;
    CU_ASSERT_PTR_NOT_NULL_FATAL(pk_httpc_get(fx.h, u, NULL, 5000, result_cb, &res));
    fx.pending++;
    loop_run(&fx);
    CU_ASSERT_EQUAL(res.called, 1);
    CU_ASSERT_EQUAL(res.status, 0);
    CU_ASSERT_STRING_EQUAL(res.err, "Couldn't connect to server");
    CU_ASSERT_EQUAL(res.len, 0);
    CU_ASSERT_TRUE(res.body_nul);
    fx_free(&fx);
}

static void test_bad_url(void)
{
    struct fx fx;
    struct result a, b;

    fx_init(&fx, 0);
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    a.fx = b.fx = &fx;
    /* Only http and https: failures still come from the loop, with status 0. */
    CU_ASSERT_PTR_NOT_NULL_FATAL(pk_httpc_get(fx.h, "file:///etc/passwd", NULL, 0, result_cb, &a));
    CU_ASSERT_PTR_NOT_NULL_FATAL(pk_httpc_get(fx.h, "http://", NULL, 0, result_cb, &b));
    fx.pending += 2;
    CU_ASSERT_EQUAL(a.called + b.called, 0);
    loop_run(&fx);
    CU_ASSERT_EQUAL(a.called, 1);
    CU_ASSERT_EQUAL(a.status, 0);
    CU_ASSERT_STRING_EQUAL(a.err, "Unsupported protocol");
    CU_ASSERT_EQUAL(b.called, 1);
    CU_ASSERT_EQUAL(b.status, 0);
    CU_ASSERT_FALSE(b.err_null);
    /* Arguments that cannot make a request. */
    CU_ASSERT_PTR_NULL(pk_httpc_get(NULL, "http://127.0.0.1/", NULL, 0, result_cb, &a));
    CU_ASSERT_PTR_NULL(pk_httpc_get(fx.h, NULL, NULL, 0, result_cb, &a));
    CU_ASSERT_PTR_NULL(pk_httpc_get(fx.h, "http://127.0.0.1/", NULL, 0, NULL, &a));
    CU_ASSERT_EQUAL(pk_httpc_inflight(fx.h), 0);
    fx_free(&fx);
}

static void test_body_over_max(void)
{
    struct fx fx;
    struct result exact, over, chunked_exact, chunked_over, huge;

    fx_init(&fx, 100);
    get(&fx, "/big?n=100", NULL, 5000, &exact);
    get(&fx, "/big?n=101", NULL, 5000, &over);
    get(&fx, "/chunked?n=100", NULL, 5000, &chunked_exact);
    get(&fx, "/chunked?n=101", NULL, 5000, &chunked_over);
    get(&fx, "/chunked?n=100000", NULL, 5000, &huge);
    loop_run(&fx);

    CU_ASSERT_EQUAL(exact.status, 200);
    CU_ASSERT_EQUAL(exact.len, 100);
    CU_ASSERT_TRUE(exact.all_b);
    CU_ASSERT_TRUE(exact.body_nul);
    CU_ASSERT_EQUAL(chunked_exact.status, 200);
    CU_ASSERT_EQUAL(chunked_exact.len, 100);
    CU_ASSERT_TRUE(chunked_exact.all_b);

    /* Content-Length over the bound (refused up front) or a chunked body that grows past
     * it (refused while reading): the same report. */
    struct result *bad[] = {&over, &chunked_over, &huge};
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        CU_ASSERT_EQUAL(bad[i]->called, 1);
        CU_ASSERT_EQUAL(bad[i]->status, 0);
        CU_ASSERT_STRING_EQUAL(bad[i]->err, "response body over 100 bytes");
        CU_ASSERT_EQUAL(bad[i]->len, 0);
        CU_ASSERT_TRUE(bad[i]->body_nul);
    }
    CU_ASSERT_EQUAL(pk_httpc_inflight(fx.h), 0);

    /* The client still works after aborted transfers. */
    get(&fx, "/echo", NULL, 5000, &exact);
    loop_run(&fx);
    CU_ASSERT_EQUAL(exact.status, 200);
    fx_free(&fx);
}

static void test_cancel_before_completion(void)
{
    struct fx fx;
    struct result a, b, c;

    fx_init(&fx, 0);
    /* Cancelled before the loop ever ran: the transfer never started. */
    struct pk_httpc_req *ra = get(&fx, "/slow?ms=300", NULL, 5000, &a);
    CU_ASSERT_EQUAL(pk_httpc_inflight(fx.h), 1);
    pk_httpc_cancel(ra);
    fx.pending--;
    CU_ASSERT_EQUAL(pk_httpc_inflight(fx.h), 0);

    /* Cancelled while the server holds the request. */
    struct pk_httpc_req *rb = get(&fx, "/slow?ms=300", NULL, 5000, &b);
    loop_until(&fx, &fx.srv.handled, 1, false);
    CU_ASSERT_EQUAL(fx.srv.handled, 1);
    pk_httpc_cancel(rb);
    fx.pending--;
    pk_httpc_cancel(NULL);
    CU_ASSERT_EQUAL(pk_httpc_inflight(fx.h), 0);

    loop_settle(&fx, 500);
    CU_ASSERT_EQUAL(a.called, 0);
    CU_ASSERT_EQUAL(b.called, 0);
    CU_ASSERT_EQUAL(fx.srv.slow_sent, 1); /* b's reply went out to a closed connection */

    /* The client is still usable. */
    get(&fx, "/echo", NULL, 5000, &c);
    loop_run(&fx);
    CU_ASSERT_EQUAL(c.status, 200);
    fx_free(&fx);
}

#define NCONC 50

static void test_concurrent_50(void)
{
    struct fx fx;
    static struct result res[NCONC];
    char path[64], hdr[64];

    fx_init(&fx, 0);
    for (int i = 0; i < NCONC; i++) {
        const char *hdrs[] = {hdr, NULL};
        snprintf(path, sizeof(path), "/echo?i=%d", i);
        snprintf(hdr, sizeof(hdr), "X-Echo: %d", i * 7);
        get(&fx, path, hdrs, 10000, &res[i]);
    }
    CU_ASSERT_EQUAL(pk_httpc_inflight(fx.h), NCONC);
    loop_run(&fx);
    for (int i = 0; i < NCONC; i++) {
        char want[64];
        snprintf(want, sizeof(want), "x-echo=%d uri=/echo?i=%d", i * 7, i);
        CU_ASSERT_EQUAL(res[i].called, 1);
        CU_ASSERT_EQUAL(res[i].status, 200);
        CU_ASSERT_STRING_EQUAL(res[i].body, want);
    }
    CU_ASSERT_EQUAL(fx.srv.handled, NCONC);
    CU_ASSERT_EQUAL(pk_httpc_inflight(fx.h), 0);
    /* At most 4 connections to one host, reused for the other 46 requests. */
    CU_ASSERT(fx.srv.npeers >= 1);
    CU_ASSERT(fx.srv.npeers <= 4);
    fx_free(&fx);
}

/* ---- requests made and cancelled from callbacks ---- */

static void chain_next(struct result *res)
{
    struct fx *fx = res->fx;
    const char *hdrs[] = {"X-Echo: chained", NULL};
    /* The client is fully usable here, even for the next request's allocation. */
    res->other = get(fx, "/echo?step=2", hdrs, 5000, res->next_res);
}

static void test_chain_from_callback(void)
{
    struct fx fx;
    struct result first, second;

    fx_init(&fx, 0);
    get(&fx, "/echo?step=1", NULL, 5000, &first);
    first.then = chain_next;
    first.next_res = &second;
    loop_run(&fx);
    CU_ASSERT_EQUAL(first.called, 1);
    CU_ASSERT_EQUAL(first.status, 200);
    CU_ASSERT_PTR_NOT_NULL(first.other);
    CU_ASSERT_EQUAL(second.called, 1);
    CU_ASSERT_EQUAL(second.status, 200);
    CU_ASSERT_STRING_EQUAL(second.body, "x-echo=chained uri=/echo?step=2");
    CU_ASSERT(second.at_ms >= first.at_ms);
    CU_ASSERT_EQUAL(fx.srv.handled, 2);
    /* Sequential requests to one host share one kept-alive connection. */
    CU_ASSERT_EQUAL(fx.srv.npeers, 1);
    fx_free(&fx);
}

static void cancel_other(struct result *res)
{
    pk_httpc_cancel(res->other);
    res->fx->pending--; /* the cancelled one will not call back */
}

static void test_cancel_other_from_callback(void)
{
    struct fx fx;
    struct result fast, slow, after;

    fx_init(&fx, 0);
    struct pk_httpc_req *rs = get(&fx, "/slow?ms=400", NULL, 5000, &slow);
    get(&fx, "/echo", NULL, 5000, &fast);
    fast.then = cancel_other;
    fast.other = rs;
    loop_run(&fx);
    CU_ASSERT_EQUAL(fast.called, 1);
    CU_ASSERT_EQUAL(fast.status, 200);
    CU_ASSERT_EQUAL(fast.inflight, 1); /* slow, just before the cancel */
    CU_ASSERT_EQUAL(pk_httpc_inflight(fx.h), 0);
    loop_settle(&fx, 600);
    CU_ASSERT_EQUAL(slow.called, 0);

    get(&fx, "/echo", NULL, 5000, &after);
    loop_run(&fx);
    CU_ASSERT_EQUAL(after.status, 200);
    fx_free(&fx);
}

static void free_client(struct result *res)
{
    pk_httpc_del(res->fx->h);
    res->fx->h = NULL;
}

static void test_free_from_callback(void)
{
    struct fx fx;
    struct result fast, slow, done;

    fx_init(&fx, 0);
    get(&fx, "/slow?ms=300", NULL, 5000, &slow);
    get(&fx, "/echo", NULL, 5000, &fast);
    fast.then = free_client;
    loop_until(&fx, &fast.called, 1, false);
    CU_ASSERT_EQUAL(fast.status, 200);
    CU_ASSERT_PTR_NULL(fx.h);
    loop_settle(&fx, 500);
    CU_ASSERT_EQUAL(slow.called, 0);

    /* A new client on the same loop works (curl's global state survived the free). */
    fx.h = pk_httpc_new(fx.base, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fx.h);
    fx.pending = 0;
    get(&fx, "/echo", NULL, 5000, &done);
    loop_run(&fx);
    CU_ASSERT_EQUAL(done.status, 200);
    fx_free(&fx);
}

static void test_free_in_flight(void)
{
    struct fx fx;
    struct result slow[6];

    fx_init(&fx, 0);
    for (size_t i = 0; i < PK_ARRAY_LEN(slow); i++)
        get(&fx, "/slow?ms=300", NULL, 5000, &slow[i]);
    /* Until the server holds 4 of them (the per-host bound): 4 transfers on open
     * connections, 2 queued inside curl. */
    loop_until(&fx, &fx.srv.handled, 4, false);
    CU_ASSERT_EQUAL(pk_httpc_inflight(fx.h), PK_ARRAY_LEN(slow));
    pk_httpc_del(fx.h);
    fx.h = NULL;
    loop_settle(&fx, 500);
    for (size_t i = 0; i < PK_ARRAY_LEN(slow); i++)
        CU_ASSERT_EQUAL(slow[i].called, 0);
    CU_ASSERT_EQUAL(fx.srv.handled, 4);

    /* And a client freed before its loop ever ran. */
    struct result never;
    fx.h = pk_httpc_new(fx.base, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fx.h);
    get(&fx, "/echo", NULL, 5000, &never);
    pk_httpc_del(fx.h);
    fx.h = NULL;
    loop_settle(&fx, 100);
    CU_ASSERT_EQUAL(never.called, 0);
    pk_httpc_del(NULL);
    fx_free(&fx);
}

/* ---- pk_httpc_fetch: one blocking GET, against a canned server on a thread ---- */

struct canned {
    int lfd;
    uint16_t port;
    const char *response; /* written after the request head; NULL: never answers */
    char request[2048];   /* the head received */
    pthread_t thread;
};

static void *canned_serve(void *arg)
{
    struct canned *c = arg;
    int fd = accept(c->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    size_t len = 0;
    while (len < sizeof(c->request) - 1 && !strstr(c->request, "\r\n\r\n")) {
        ssize_t n = recv(fd, c->request + len, sizeof(c->request) - 1 - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
        c->request[len] = '\0';
    }
    if (c->response) {
        CU_ASSERT(send(fd, c->response, strlen(c->response), MSG_NOSIGNAL) ==
                  (ssize_t)strlen(c->response));
    } else {
        char b[64];
        while (recv(fd, b, sizeof(b), 0) > 0) /* until the client gives up */
            ;
    }
    close(fd);
    return NULL;
}

static void canned_start(struct canned *c, const char *response)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof(sa);
    memset(c, 0, sizeof(*c));
    c->response = response;
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    c->lfd = socket(AF_INET, SOCK_STREAM, 0);
    CU_ASSERT_FATAL(c->lfd >= 0);
    CU_ASSERT_FATAL(bind(c->lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CU_ASSERT_FATAL(listen(c->lfd, 4) == 0);
    CU_ASSERT_FATAL(getsockname(c->lfd, (struct sockaddr *)&sa, &sl) == 0);
    c->port = ntohs(sa.sin_port);
    CU_ASSERT_FATAL(pthread_create(&c->thread, NULL, canned_serve, c) == 0);
}

static void canned_stop(struct canned *c)
{
    pthread_join(c->thread, NULL);
    close(c->lfd);
}

static void test_fetch(void)
{
    struct canned c;
    struct pk_httpc_result res;
    char url[64];
    const char *hdrs[] = {"Authorization: Bearer tok", NULL};
    struct pk_httpc_fetch_opts o = {.headers = hdrs, .timeout_ms = 5000};

    canned_start(&c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n"
                     "Connection: close\r\n\r\n[1,2,3]");
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/status/x?forward=n2", c.port);
    CU_ASSERT_EQUAL(pk_httpc_fetch(url, &o, &res), 0);
    canned_stop(&c);
    CU_ASSERT_EQUAL(res.status, 200);
    CU_ASSERT_EQUAL(res.len, 7);
    CU_ASSERT_STRING_EQUAL(res.body, "[1,2,3]");
    CU_ASSERT_STRING_EQUAL(res.content_type, "application/json");
    CU_ASSERT_STRING_EQUAL(res.err, "");
    CU_ASSERT(strncmp(c.request, "GET /status/x?forward=n2 HTTP/1.1\r\n", 35) == 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(c.request, "\r\nAuthorization: Bearer tok\r\n"));
    pk_httpc_result_free(&res);
    pk_httpc_result_free(&res); /* twice is harmless */

    /* Any status is an answer; an empty body is "". */
    canned_start(&c, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/", c.port);
    CU_ASSERT_EQUAL(pk_httpc_fetch(url, NULL, &res), 0);
    canned_stop(&c);
    CU_ASSERT_EQUAL(res.status, 401);
    CU_ASSERT_STRING_EQUAL(res.body, "");
    CU_ASSERT_PTR_NULL(res.content_type);
    pk_httpc_result_free(&res);
}

static void test_fetch_failures(void)
{
    struct canned c;
    struct pk_httpc_result res;
    char url[64];

    /* Refused: the port of a closed listener. */
    canned_start(&c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/", c.port);
    CU_ASSERT_EQUAL(pk_httpc_fetch(url, NULL, &res), 0);
    canned_stop(&c);
    pk_httpc_result_free(&res);
    CU_ASSERT_EQUAL(pk_httpc_fetch(url, NULL, &res), PK_ERR_IO);
    CU_ASSERT_EQUAL(res.status, 0);
    CU_ASSERT_PTR_NULL(res.body);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.err, "onnect"));

    /* No answer within the timeout. */
    struct pk_httpc_fetch_opts o = {.timeout_ms = 200};
    canned_start(&c, NULL);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/", c.port);
    uint64_t t0 = pk_now_ms();
    CU_ASSERT_EQUAL(pk_httpc_fetch(url, &o, &res), PK_ERR_IO);
    CU_ASSERT(pk_now_ms() - t0 < 5000);
    canned_stop(&c);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.err, "imed out"));

    /* A body over the bound, announced or not. */
    o = (struct pk_httpc_fetch_opts){.timeout_ms = 5000, .max_body = 4};
    canned_start(&c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/", c.port);
    CU_ASSERT_EQUAL(pk_httpc_fetch(url, &o, &res), PK_ERR_IO);
    canned_stop(&c);
    CU_ASSERT_STRING_EQUAL(res.err, "response body over 4 bytes");
    canned_start(&c, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello");
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/", c.port);
    CU_ASSERT_EQUAL(pk_httpc_fetch(url, &o, &res), PK_ERR_IO);
    canned_stop(&c);
    CU_ASSERT_STRING_EQUAL(res.err, "response body over 4 bytes");

    /* Only http and https. */
    CU_ASSERT_EQUAL(pk_httpc_fetch("ftp://127.0.0.1/", NULL, &res), PK_ERR_IO);
    CU_ASSERT(res.err[0] != '\0');
}

void pk_test_register_httpc(void)
{
    CU_pSuite s = CU_add_suite("httpc", NULL, NULL);

    CU_add_test(s, "get_200_body_and_header", test_get_200_body_and_header);
    CU_add_test(s, "status_passed_through", test_status_passed_through);
    CU_add_test(s, "timeout", test_timeout);
    CU_add_test(s, "connection_refused", test_connection_refused);
    CU_add_test(s, "bad_url", test_bad_url);
    CU_add_test(s, "body_over_max", test_body_over_max);
    CU_add_test(s, "cancel_before_completion", test_cancel_before_completion);
    CU_add_test(s, "concurrent_50", test_concurrent_50);
    CU_add_test(s, "chain_from_callback", test_chain_from_callback);
    CU_add_test(s, "cancel_other_from_callback", test_cancel_other_from_callback);
    CU_add_test(s, "free_from_callback", test_free_from_callback);
    CU_add_test(s, "free_in_flight", test_free_in_flight);
    CU_add_test(s, "fetch", test_fetch);
    CU_add_test(s, "fetch_failures", test_fetch_failures);
}
