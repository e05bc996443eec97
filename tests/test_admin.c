/* Unit tests for lib/admin: the bounded admin HTTP/1.1 server.
 *
 * Each test starts a pk_admin on 127.0.0.1:0 and talks to it with plain non-blocking
 * sockets; the loop runs in slices until what the test waits for holds, with a guard so a
 * bug fails the test instead of hanging it. Replies are checked byte for byte where the
 * format matters (status line, content-type, content-length, JSON body). */
#include "admin/admin.h"
#include "base/base.h"

#include <CUnit/CUnit.h>
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void pk_test_register_admin(void);

#define GUARD_MS 5000

struct fx {
    struct event_base *base;
    struct pk_admin *a;
    uint16_t port;
    struct pk_admin_req *held; /* a request /async left unanswered */
    int calls;                 /* handler runs */
    int cancels;               /* cancel callback runs */
    char last_query[64];
    char last_header[64];
    char last_peer[80];
};

struct client {
    int fd;
    char buf[65536];
    size_t len;
    bool eof;
};

/* Answers {"path": path}: the order of pipelined replies shows in the bodies. */
static void echo_handler(struct pk_admin_req *req, void *arg)
{
    struct fx *f = arg;
    f->calls++;
    const char *q = pk_admin_req_query(req), *h = pk_admin_req_header(req, "x-TEST");
    snprintf(f->last_query, sizeof(f->last_query), "%s", q ? q : "(null)");
    snprintf(f->last_header, sizeof(f->last_header), "%s", h ? h : "(null)");
    snprintf(f->last_peer, sizeof(f->last_peer), "%s", pk_admin_req_peer(req));
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "path", json_object_new_string(pk_admin_req_path(req)));
    pk_admin_reply(req, 200, o);
}

static void hold_handler(struct pk_admin_req *req, void *arg)
{
    struct fx *f = arg;
    f->calls++;
    f->held = req;
}

static void cancel_cb(struct pk_admin_req *req, void *arg)
{
    struct fx *f = arg;
    CU_ASSERT(req == f->held);
    f->cancels++;
    f->held = NULL;
}

static void hold_cancel_handler(struct pk_admin_req *req, void *arg)
{
    hold_handler(req, arg);
    pk_admin_req_on_cancel(req, cancel_cb, arg);
}

static void fx_start(struct fx *f, const struct pk_admin_opts *o)
{
    char err[256], addr[64];
    memset(f, 0, sizeof(*f));
    f->base = event_base_new();
    f->a = pk_admin_new(f->base, "127.0.0.1:0", o, err, sizeof(err));
    CU_ASSERT_PTR_NOT_NULL_FATAL(f->a);
    pk_admin_route(f->a, "/hello", false, echo_handler, f);
    pk_admin_route(f->a, "/p/", true, echo_handler, f);
    pk_admin_route(f->a, "/async", false, hold_handler, f);
    pk_admin_route(f->a, "/cancel", false, hold_cancel_handler, f);
    pk_admin_addr(f->a, addr, sizeof(addr));
    f->port = (uint16_t)atoi(strrchr(addr, ':') + 1);
}

static void fx_stop(struct fx *f)
{
    pk_admin_del(f->a);
    event_base_free(f->base);
}

static void cl_open(struct fx *f, struct client *c)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(f->port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    memset(c, 0, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    CU_ASSERT_FATAL(c->fd >= 0);
    CU_ASSERT_FATAL(connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
}

static void cl_close(struct client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static void cl_send(struct client *c, const char *s)
{
    CU_ASSERT(send(c->fd, s, strlen(s), MSG_NOSIGNAL) == (ssize_t)strlen(s));
}

static void cl_poll(struct client *c)
{
    while (!c->eof && c->len < sizeof(c->buf) - 1) {
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, MSG_DONTWAIT);
        if (n > 0) {
            c->len += (size_t)n;
            c->buf[c->len] = '\0';
        } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            c->eof = true;
        } else {
            break;
        }
    }
}

/* Runs the loop in slices until cond(arg) holds or GUARD_MS passed; returns cond. */
static bool run_until(struct fx *f, bool (*cond)(void *), void *arg)
{
    uint64_t end = pk_now_ms() + GUARD_MS;
    while (!cond(arg) && pk_now_ms() < end) {
        struct timeval tv = {0, 5000};
        event_base_loopexit(f->base, &tv);
        event_base_dispatch(f->base);
    }
    return cond(arg);
}

/* Runs the loop for ms. */
static void run_for(struct fx *f, int ms)
{
    struct timeval tv = {0, ms * 1000};
    event_base_loopexit(f->base, &tv);
    event_base_dispatch(f->base);
}

static size_t count(const char *s, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

struct wait_replies {
    struct client *c;
    size_t n;
};

/* n complete replies (each one a status line and a body ending in a newline), or EOF. */
static bool replies_cond(void *arg)
{
    struct wait_replies *w = arg;
    cl_poll(w->c);
    return w->c->eof || (count(w->c->buf, "HTTP/1.1 ") >= w->n && w->c->len > 0 &&
                         w->c->buf[w->c->len - 1] == '\n' && count(w->c->buf, "}\n") >= w->n);
}

static bool wait_replies(struct fx *f, struct client *c, size_t n)
{
    struct wait_replies w = {c, n};
    return run_until(f, replies_cond, &w);
}

static bool eof_cond(void *arg)
{
    struct client *c = arg;
    cl_poll(c);
    return c->eof;
}

static void test_route_answered(void)
{
    struct fx f;
    struct client c;
    fx_start(&f, NULL);
    cl_open(&f, &c);
    cl_send(&c, "GET /hello?a=1&b=2 HTTP/1.1\r\nHost: x\r\nX-Test: yes\r\n\r\n");
    CU_ASSERT(wait_replies(&f, &c, 1));
    CU_ASSERT_STRING_EQUAL(c.buf, "HTTP/1.1 200 OK\r\n"
                                  "content-type: application/json\r\n"
                                  "content-length: 18\r\n"
                                  "\r\n"
                                  "{\"path\":\"/hello\"}\n");
    CU_ASSERT_STRING_EQUAL(f.last_query, "a=1&b=2");
    CU_ASSERT_STRING_EQUAL(f.last_header, "yes");
    CU_ASSERT(strncmp(f.last_peer, "127.0.0.1:", 10) == 0);
    /* A prefix route. */
    c.len = 0;
    cl_send(&c, "GET /p/x/y HTTP/1.1\r\n\r\n");
    CU_ASSERT(wait_replies(&f, &c, 1));
    CU_ASSERT_PTR_NOT_NULL(strstr(c.buf, "{\"path\":\"/p/x/y\"}\n"));
    CU_ASSERT_STRING_EQUAL(f.last_query, "(null)");
    CU_ASSERT_STRING_EQUAL(f.last_header, "(null)");
    cl_close(&c);
    fx_stop(&f);
}

static void test_not_found_and_method(void)
{
    struct fx f;
    struct client c;
    fx_start(&f, NULL);
    cl_open(&f, &c);
    cl_send(&c, "GET /nope HTTP/1.1\r\n\r\n");
    CU_ASSERT(wait_replies(&f, &c, 1));
    CU_ASSERT_STRING_EQUAL(c.buf, "HTTP/1.1 404 Not Found\r\n"
                                  "content-type: application/json\r\n"
                                  "content-length: 22\r\n"
                                  "\r\n"
                                  "{\"error\":\"not found\"}\n");
    c.len = 0;
    cl_send(&c, "DELETE /hello HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    CU_ASSERT(wait_replies(&f, &c, 1));
    CU_ASSERT(strncmp(c.buf, "HTTP/1.1 405 ", 13) == 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(c.buf, "\r\nallow: GET, HEAD\r\n"));
    CU_ASSERT_EQUAL(f.calls, 0);
    /* Still usable: 404 and 405 keep the connection. */
    c.len = 0;
    cl_send(&c, "GET /hello HTTP/1.1\r\n\r\n");
    CU_ASSERT(wait_replies(&f, &c, 1));
    CU_ASSERT(strncmp(c.buf, "HTTP/1.1 200 ", 13) == 0);
    cl_close(&c);
    fx_stop(&f);
}

static void test_head(void)
{
    struct fx f;
    struct client c;
    fx_start(&f, NULL);
    cl_open(&f, &c);
    /* HEAD then GET on one connection: the HEAD reply has the length but no body. */
    cl_send(&c, "HEAD /hello HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n");
    CU_ASSERT(wait_replies(&f, &c, 1));
    CU_ASSERT_STRING_EQUAL(c.buf, "HTTP/1.1 200 OK\r\n"
                                  "content-type: application/json\r\n"
                                  "content-length: 18\r\n"
                                  "\r\n"
                                  "HTTP/1.1 200 OK\r\n"
                                  "content-type: application/json\r\n"
                                  "content-length: 18\r\n"
                                  "\r\n"
                                  "{\"path\":\"/hello\"}\n");
    cl_close(&c);
    fx_stop(&f);
}

static void test_body_refused_unread(void)
{
    struct fx f;
    struct client c;
    fx_start(&f, NULL);
    cl_open(&f, &c);
    /* A 100 MiB body is announced; 64 KiB of it are sent: the reply and the close come
     * without the rest. */
    cl_send(&c, "POST /hello HTTP/1.1\r\nContent-Length: 104857600\r\n\r\n");
    static char chunk[65536];
    memset(chunk, 'x', sizeof(chunk));
    CU_ASSERT(send(c.fd, chunk, sizeof(chunk), MSG_NOSIGNAL) > 0);
    CU_ASSERT(run_until(&f, eof_cond, &c));
    CU_ASSERT(strncmp(c.buf, "HTTP/1.1 413 ", 13) == 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(c.buf, "\r\nconnection: close\r\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(c.buf, "\r\n\r\n{\"error\":\"request body not accepted\"}\n"));
    cl_close(&c);
    /* Chunked, and a transfer coding the parser does not know: refused the same way. */
    const char *heads[] = {
        "GET /hello HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        "GET /hello HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"};
    for (size_t i = 0; i < PK_ARRAY_LEN(heads); i++) {
        cl_open(&f, &c);
        cl_send(&c, heads[i]);
        CU_ASSERT(run_until(&f, eof_cond, &c));
        CU_ASSERT(strncmp(c.buf, "HTTP/1.1 413 ", 13) == 0);
        cl_close(&c);
    }
    CU_ASSERT_EQUAL(f.calls, 0);
    fx_stop(&f);
}

static void test_head_too_large(void)
{
    struct fx f;
    struct client c;
    fx_start(&f, NULL);
    cl_open(&f, &c);
    static char big[20 * 1024];
    memset(big, 'a', sizeof(big) - 1);
    cl_send(&c, "GET /hello HTTP/1.1\r\nX-Big: ");
    cl_send(&c, big);
    CU_ASSERT(run_until(&f, eof_cond, &c));
    CU_ASSERT(strncmp(c.buf, "HTTP/1.1 431 ", 13) == 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(c.buf, "{\"error\":\"request header fields too large\"}\n"));
    CU_ASSERT_EQUAL(f.calls, 0);
    cl_close(&c);
    fx_stop(&f);
}

static void test_head_deadline(void)
{
    struct fx f;
    struct client c, silent;
    struct pk_admin_opts o = {.head_timeout_ms = 200, .idle_timeout_ms = 300};
    fx_start(&f, &o);
    cl_open(&f, &c);
    cl_open(&f, &silent);
    /* A head trickling in: the deadline runs from accept, not from the last byte. */
    uint64_t start = pk_now_ms();
    cl_send(&c, "GET /hel");
    run_for(&f, 100);
    cl_send(&c, "lo HTTP/1.1\r\n");
    CU_ASSERT(run_until(&f, eof_cond, &c));
    CU_ASSERT(pk_now_ms() - start < 1000);
    CU_ASSERT(strncmp(c.buf, "HTTP/1.1 408 ", 13) == 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(c.buf, "{\"error\":\"request timeout\"}\n"));
    /* Nothing at all from accept: 408 too. */
    CU_ASSERT(run_until(&f, eof_cond, &silent));
    CU_ASSERT(strncmp(silent.buf, "HTTP/1.1 408 ", 13) == 0);
    cl_close(&c);
    cl_close(&silent);
    /* After a reply, an idle keep-alive connection closes without a reply. */
    cl_open(&f, &c);
    cl_send(&c, "GET /hello HTTP/1.1\r\n\r\n");
    CU_ASSERT(wait_replies(&f, &c, 1));
    c.len = 0;
    CU_ASSERT(run_until(&f, eof_cond, &c));
    CU_ASSERT_EQUAL(c.len, 0);
    cl_close(&c);
    fx_stop(&f);
}

static void test_keep_alive_and_pipelining(void)
{
    struct fx f;
    struct client c;
    fx_start(&f, NULL);
    cl_open(&f, &c);
    cl_send(&c, "GET /hello HTTP/1.1\r\n\r\n");
    CU_ASSERT(wait_replies(&f, &c, 1));
    c.len = 0;
    cl_send(&c, "GET /p/second HTTP/1.1\r\n\r\n");
    CU_ASSERT(wait_replies(&f, &c, 1));
    CU_ASSERT_PTR_NOT_NULL(strstr(c.buf, "{\"path\":\"/p/second\"}\n"));
    CU_ASSERT(!c.eof);
    /* Three pipelined requests in one write, the last one closing. */
    c.len = 0;
    cl_send(&c, "GET /p/1 HTTP/1.1\r\n\r\nGET /p/2 HTTP/1.1\r\n\r\n"
                "GET /p/3 HTTP/1.1\r\nConnection: close\r\n\r\n");
    CU_ASSERT(run_until(&f, eof_cond, &c));
    const char *r1 = strstr(c.buf, "{\"path\":\"/p/1\"}"),
               *r2 = strstr(c.buf, "{\"path\":\"/p/2\"}"),
               *r3 = strstr(c.buf, "{\"path\":\"/p/3\"}");
    CU_ASSERT(r1 && r2 && r3 && r1 < r2 && r2 < r3);
    CU_ASSERT_EQUAL(count(c.buf, "HTTP/1.1 200 OK"), 3);
    CU_ASSERT_EQUAL(count(c.buf, "connection: close"), 1);
    CU_ASSERT_EQUAL(f.calls, 5);
    cl_close(&c);
    fx_stop(&f);
}

struct conns_wait {
    struct pk_admin *a;
    size_t n;
};

static bool conns_cond(void *arg)
{
    struct conns_wait *w = arg;
    struct pk_admin_stats st;
    pk_admin_stats(w->a, &st);
    return st.connections == w->n;
}

static void test_connection_cap(void)
{
    struct fx f;
    struct client c1, c2, c3;
    struct pk_admin_opts o = {.max_connections = 2};
    fx_start(&f, &o);
    cl_open(&f, &c1);
    cl_open(&f, &c2);
    struct conns_wait w = {f.a, 2};
    CU_ASSERT(run_until(&f, conns_cond, &w));
    cl_open(&f, &c3);
    CU_ASSERT(run_until(&f, eof_cond, &c3));
    CU_ASSERT_EQUAL(c3.len, 0);
    struct pk_admin_stats st;
    pk_admin_stats(f.a, &st);
    CU_ASSERT_EQUAL(st.refused, 1);
    CU_ASSERT_EQUAL(st.accepted, 2);
    /* The two admitted connections still work; once one goes, a new one is served. */
    cl_send(&c1, "GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n");
    CU_ASSERT(run_until(&f, eof_cond, &c1));
    CU_ASSERT(strncmp(c1.buf, "HTTP/1.1 200 ", 13) == 0);
    cl_close(&c1);
    w.n = 1;
    CU_ASSERT(run_until(&f, conns_cond, &w));
    cl_close(&c3);
    cl_open(&f, &c3);
    cl_send(&c3, "GET /hello HTTP/1.1\r\n\r\n");
    CU_ASSERT(wait_replies(&f, &c3, 1));
    CU_ASSERT(strncmp(c3.buf, "HTTP/1.1 200 ", 13) == 0);
    cl_close(&c2);
    cl_close(&c3);
    fx_stop(&f);
}

static bool held_cond(void *arg)
{
    return ((struct fx *)arg)->held != NULL;
}

static void test_async_reply(void)
{
    struct fx f;
    struct client c;
    fx_start(&f, NULL);
    cl_open(&f, &c);
    /* A second request pipelined behind the waiting one is answered after it. */
    cl_send(&c, "GET /async HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n");
    CU_ASSERT(run_until(&f, held_cond, &f));
    run_for(&f, 50);
    cl_poll(&c);
    CU_ASSERT_EQUAL(c.len, 0);
    CU_ASSERT_EQUAL(f.calls, 1);
    CU_ASSERT(pk_admin_req_alive(f.held));
    CU_ASSERT_STRING_EQUAL(pk_admin_req_method(f.held), "GET");
    pk_admin_req_add_header(f.held, "WWW-Authenticate", "Bearer");
    pk_admin_reply_error(f.held, 401, "later");
    f.held = NULL;
    CU_ASSERT(wait_replies(&f, &c, 2));
    const char *r1 = strstr(c.buf, "HTTP/1.1 401 Unauthorized\r\n"),
               *r2 = strstr(c.buf, "{\"path\":\"/hello\"}");
    CU_ASSERT(r1 && r2 && r1 < r2);
    CU_ASSERT_PTR_NOT_NULL(strstr(c.buf, "\r\nwww-authenticate: Bearer\r\n"));
    cl_close(&c);
    fx_stop(&f);
}

static bool held_dead_cond(void *arg)
{
    struct fx *f = arg;
    return f->held && !pk_admin_req_alive(f->held);
}

static bool cancelled_cond(void *arg)
{
    return ((struct fx *)arg)->cancels > 0;
}

static void test_reply_after_client_left(void)
{
    struct fx f;
    struct client c;
    fx_start(&f, NULL);
    /* Without a cancel callback: the request outlives its connection, the reply is a
     * no-op that frees it. */
    cl_open(&f, &c);
    cl_send(&c, "GET /async HTTP/1.1\r\n\r\n");
    CU_ASSERT(run_until(&f, held_cond, &f));
    cl_close(&c);
    CU_ASSERT(run_until(&f, held_dead_cond, &f));
    pk_admin_reply(f.held, 200, json_object_new_object());
    f.held = NULL;
    struct conns_wait w = {f.a, 0};
    CU_ASSERT(run_until(&f, conns_cond, &w));
    /* With one: it runs once, and the request is gone. */
    cl_open(&f, &c);
    cl_send(&c, "GET /cancel HTTP/1.1\r\n\r\n");
    CU_ASSERT(run_until(&f, held_cond, &f));
    cl_close(&c);
    CU_ASSERT(run_until(&f, cancelled_cond, &f));
    CU_ASSERT_EQUAL(f.cancels, 1);
    CU_ASSERT_PTR_NULL(f.held);
    fx_stop(&f);
}

static void test_teardown_with_connections(void)
{
    struct fx f;
    struct client idle, partial, waiting, orphan;
    fx_start(&f, NULL);
    cl_open(&f, &idle);
    cl_open(&f, &partial);
    cl_send(&partial, "GET /hel");
    cl_open(&f, &orphan);
    cl_send(&orphan, "GET /async HTTP/1.1\r\n\r\n");
    CU_ASSERT(run_until(&f, held_cond, &f));
    struct pk_admin_req *unanswered = f.held; /* freed by pk_admin_del, never replied */
    f.held = NULL;
    cl_open(&f, &waiting);
    cl_send(&waiting, "GET /cancel HTTP/1.1\r\n\r\n");
    CU_ASSERT(run_until(&f, held_cond, &f));
    CU_ASSERT(unanswered != f.held);
    struct conns_wait w = {f.a, 4};
    CU_ASSERT(run_until(&f, conns_cond, &w));
    pk_admin_del(f.a);
    f.a = NULL;
    CU_ASSERT_EQUAL(f.cancels, 1);
    event_base_free(f.base);
    struct client *all[] = {&idle, &partial, &waiting, &orphan};
    for (size_t i = 0; i < PK_ARRAY_LEN(all); i++) {
        /* Blocking read: EOF (or a reset) at once, since the server closed them. */
        fcntl(all[i]->fd, F_SETFL, 0);
        char b[256];
        ssize_t n;
        while ((n = recv(all[i]->fd, b, sizeof(b), 0)) > 0)
            ;
        CU_ASSERT(n <= 0);
        cl_close(all[i]);
    }
}

/* ---- in-process calls (pk_admin_call) ---- */

struct call_result {
    int n; /* callbacks */
    int status;
    char ctype[64];
    char body[256];
    size_t len;
};

static void call_cb(int status, const char *ctype, const char *body, size_t len, void *arg)
{
    struct call_result *r = arg;
    r->n++;
    r->status = status;
    snprintf(r->ctype, sizeof(r->ctype), "%s", ctype);
    snprintf(r->body, sizeof(r->body), "%s", body);
    r->len = len;
}

static bool call_cond(void *arg)
{
    return ((struct call_result *)arg)->n > 0;
}

static void internal_handler(struct pk_admin_req *req, void *arg)
{
    struct fx *f = arg;
    f->calls++;
    pk_admin_reply_error(req, pk_admin_req_internal(req) ? 200 : 403,
                         pk_admin_req_alive(req) ? "internal" : "dead");
}

static void text_handler(struct pk_admin_req *req, void *arg)
{
    PK_UNUSED(arg);
    pk_admin_reply_text(req, 200, "text/html", "<p>", 3);
}

static void test_call_routed(void)
{
    struct fx f;
    struct call_result r = {0};
    fx_start(&f, NULL);
    pk_admin_route(f.a, "/internal", false, internal_handler, &f);
    pk_admin_route(f.a, "/text", false, text_handler, &f);
    /* The handler runs at once; the reply comes from the loop, never before the call returns. */
    struct pk_admin_call *call = pk_admin_call(f.a, "/p/x", "a=1", "cluster:peer", call_cb, &r);
    CU_ASSERT_PTR_NOT_NULL(call);
    CU_ASSERT_EQUAL(f.calls, 1);
    CU_ASSERT_EQUAL(r.n, 0);
    CU_ASSERT_STRING_EQUAL(f.last_query, "a=1");
    CU_ASSERT_STRING_EQUAL(f.last_peer, "cluster:peer");
    CU_ASSERT(run_until(&f, call_cond, &r));
    CU_ASSERT_EQUAL(r.n, 1);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_STRING_EQUAL(r.ctype, "application/json");
    CU_ASSERT_STRING_EQUAL(r.body, "{\"path\":\"/p/x\"}\n");
    CU_ASSERT_EQUAL(r.len, strlen(r.body));

    memset(&r, 0, sizeof(r));
    pk_admin_call(f.a, "/internal", NULL, NULL, call_cb, &r);
    CU_ASSERT(run_until(&f, call_cond, &r));
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_STRING_EQUAL(r.body, "{\"error\":\"internal\"}\n");

    memset(&r, 0, sizeof(r));
    pk_admin_call(f.a, "/text", NULL, NULL, call_cb, &r);
    CU_ASSERT(run_until(&f, call_cond, &r));
    CU_ASSERT_STRING_EQUAL(r.ctype, "text/html");
    CU_ASSERT_STRING_EQUAL(r.body, "<p>");

    memset(&r, 0, sizeof(r));
    pk_admin_call(f.a, "/nowhere", NULL, NULL, call_cb, &r);
    CU_ASSERT(run_until(&f, call_cond, &r));
    CU_ASSERT_EQUAL(r.status, 404);
    CU_ASSERT_STRING_EQUAL(r.body, "{\"error\":\"not found\"}\n");
    fx_stop(&f);
}

static void test_call_cancelled(void)
{
    struct fx f;
    struct call_result r = {0};
    fx_start(&f, NULL);
    /* Cancelled while its handler holds it: the handler's cancel callback runs. */
    struct pk_admin_call *call = pk_admin_call(f.a, "/cancel", NULL, NULL, call_cb, &r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f.held);
    CU_ASSERT(pk_admin_req_alive(f.held));
    pk_admin_call_cancel(call);
    CU_ASSERT_EQUAL(f.cancels, 1);
    CU_ASSERT_PTR_NULL(f.held);
    /* Without a cancel callback the request stays valid and a later reply is dropped. */
    call = pk_admin_call(f.a, "/async", NULL, NULL, call_cb, &r);
    struct pk_admin_req *held = f.held;
    CU_ASSERT_PTR_NOT_NULL_FATAL(held);
    pk_admin_call_cancel(call);
    CU_ASSERT(!pk_admin_req_alive(held));
    pk_admin_reply_error(held, 200, "late");
    /* Replied but not yet delivered: cancelling drops the reply. */
    call = pk_admin_call(f.a, "/hello", NULL, NULL, call_cb, &r);
    pk_admin_call_cancel(call);
    run_for(&f, 20);
    CU_ASSERT_EQUAL(r.n, 0);
    /* A call still waiting at pk_admin_del never calls back; cancelling it then frees it. */
    f.held = NULL;
    call = pk_admin_call(f.a, "/async", NULL, NULL, call_cb, &r);
    struct pk_admin_call *replied = pk_admin_call(f.a, "/hello", NULL, NULL, call_cb, &r);
    pk_admin_del(f.a);
    f.a = NULL;
    run_for(&f, 20);
    CU_ASSERT_EQUAL(r.n, 0);
    pk_admin_call_cancel(call);
    pk_admin_call_cancel(replied);
    event_base_free(f.base);
}

void pk_test_register_admin(void)
{
    CU_pSuite s = CU_add_suite("admin", NULL, NULL);
    CU_add_test(s, "route_answered", test_route_answered);
    CU_add_test(s, "not_found_and_method", test_not_found_and_method);
    CU_add_test(s, "head", test_head);
    CU_add_test(s, "body_refused_unread", test_body_refused_unread);
    CU_add_test(s, "head_too_large", test_head_too_large);
    CU_add_test(s, "head_deadline", test_head_deadline);
    CU_add_test(s, "keep_alive_and_pipelining", test_keep_alive_and_pipelining);
    CU_add_test(s, "connection_cap", test_connection_cap);
    CU_add_test(s, "async_reply", test_async_reply);
    CU_add_test(s, "reply_after_client_left", test_reply_after_client_left);
    CU_add_test(s, "teardown_with_connections", test_teardown_with_connections);
    CU_add_test(s, "call_routed", test_call_routed);
    CU_add_test(s, "call_cancelled", test_call_cancelled);
}
