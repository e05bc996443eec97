/* httpc: libcurl 7.88 multi_socket on libevent.
 *
 * curl tells us which sockets to watch through CURLMOPT_SOCKETFUNCTION; each socket gets
 * one persistent event that calls curl_multi_socket_action. curl asks for its timeout
 * through CURLMOPT_TIMERFUNCTION, which only (re)arms one timer event; that event's
 * callback is the one that calls curl_multi_socket_action(CURL_SOCKET_TIMEOUT). Both event
 * callbacks then read curl_multi_info_read for finished transfers.
 *
 * None of the curl callbacks (socket, timer, write) calls back into libcurl or into user
 * code. A finished transfer is removed from the multi handle and its easy handle cleaned
 * up from the event callback, its result is stored in the request, and the request's
 * deliver event is made active: the user callback runs from that event, with nothing of
 * this module on the stack that touches the client afterwards, so it may start requests,
 * cancel others and free the client. The connections stay in the multi handle's pool
 * for the next request to the same host. */
#include "httpc/httpc.h"
#include "httpc/httpc_int.h"

#include "base/base.h"
#include "base/log.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef PIKO_VERSION
#define PIKO_VERSION "dev"
#endif

/* Connection pool bounds of one client. */
#define MAX_HOST_CONNECTIONS  4L
#define MAX_TOTAL_CONNECTIONS 64L

enum req_state {
    REQ_RUNNING,    /* the easy handle is in the multi handle */
    REQ_DONE,       /* result stored, deliver event active */
    REQ_DELIVERING, /* the user callback has started */
};

struct pk_httpc_req {
    struct pk_httpc *h;
    struct pk_httpc_req *prev, *next; /* h->reqs, until delivery or cancel */
    enum req_state state;
    CURL *easy; /* NULL once the transfer finished */
    bool in_multi;
    struct curl_slist *headers;
    char *url; /* for logs */
    uint64_t start_ms;
    pk_httpc_cb cb;
    void *arg;
    struct event *deliver;
    struct httpc_body body; /* body.max: the client's max_body */
    int status;
    const char *err; /* static (curl) or errmsg */
    char errmsg[64];
    char errbuf[CURL_ERROR_SIZE]; /* curl's detailed message, for the debug log */
};

struct sock_watch {
    curl_socket_t fd;
    short what; /* EV_READ | EV_WRITE as last asked by curl */
    struct event *ev;
};

struct pk_httpc {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    struct sock_watch *socks;
    size_t nsocks, capsocks;
    struct pk_httpc_req *reqs; /* every request not yet delivered or cancelled */
    size_t inflight;           /* length of reqs */
    size_t max_body;
    char *tls_cas, *tls_cert, *tls_key; /* pk_httpc_set_tls */
};

/* ---- requests ---- */

static void link_req(struct pk_httpc *h, struct pk_httpc_req *r)
{
    r->prev = NULL;
    r->next = h->reqs;
    if (h->reqs)
        h->reqs->prev = r;
    h->reqs = r;
    h->inflight++;
}

static void unlink_req(struct pk_httpc_req *r)
{
    struct pk_httpc *h = r->h;

    if (r->prev)
        r->prev->next = r->next;
    else
        h->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    h->inflight--;
}

/* Lets go of libcurl's side of r: the multi handle keeps the connection for reuse when
 * the transfer had finished cleanly, and closes it otherwise. */
static void release_easy(struct pk_httpc_req *r)
{
    if (r->in_multi)
        curl_multi_remove_handle(r->h->multi, r->easy);
    r->in_multi = false;
    if (r->easy)
        curl_easy_cleanup(r->easy);
    r->easy = NULL;
    curl_slist_free_all(r->headers);
    r->headers = NULL;
}

/* Frees what remains once r is unlinked and its easy handle released. Touches no curl
 * object, so it is safe after the client itself was freed. */
static void free_req(struct pk_httpc_req *r)
{
    if (r->deliver)
        event_free(r->deliver);
    free(r->body.data);
    free(r->url);
    free(r);
}

static void deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_httpc_req *r = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);

    /* Unlinked first: the callback may free the client, which must not see r. */
    unlink_req(r);
    r->state = REQ_DELIVERING;
    r->cb(r->status, r->body.data ? r->body.data : "", r->body.len, r->err, r->arg);
    free_req(r);
}

/* Stores the outcome of a transfer curl reported done and schedules the callback. Called
 * from an event callback, outside libcurl. */
static void finish_req(struct pk_httpc_req *r, CURLcode result)
{
    long code = 0;

    if (result == CURLE_OK)
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
    if (r->body.too_big || result == CURLE_FILESIZE_EXCEEDED) {
        snprintf(r->errmsg, sizeof(r->errmsg), "response body over %zu bytes", r->body.max);
        r->err = r->errmsg;
    } else if (result != CURLE_OK) {
        r->err = curl_easy_strerror(result);
    } else if (code <= 0 || code > 999) {
        r->err = "no HTTP status";
    }
    if (r->err) {
        r->status = 0;
        r->body.len = 0;
        if (r->body.data)
            r->body.data[0] = '\0';
        PK_DEBUG("httpc", "get failed url=%s after=%llums: %s%s%s%s", r->url,
                 (unsigned long long)(pk_now_ms() - r->start_ms), r->err, r->errbuf[0] ? " (" : "",
                 r->errbuf, r->errbuf[0] ? ")" : "");
    } else {
        r->status = (int)code;
        PK_DEBUG("httpc", "get done url=%s status=%d bytes=%zu after=%llums", r->url, r->status,
                 r->body.len, (unsigned long long)(pk_now_ms() - r->start_ms));
    }
    release_easy(r);
    r->state = REQ_DONE;
    event_active(r->deliver, EV_TIMEOUT, 1);
}

/* Reads every finished transfer. Must follow each curl_multi_socket_action. */
static void drain_done(struct pk_httpc *h)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(h->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        char *priv = NULL;
        CURLcode result = msg->data.result; /* msg is invalid after remove_handle */
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        finish_req((struct pk_httpc_req *)(void *)priv, result);
    }
}

/* ---- curl callbacks: they only store and (re)arm events ---- */

size_t httpc_body_write(char *ptr, size_t size, size_t nmemb, void *body)
{
    struct httpc_body *b = body;
    size_t n = size * nmemb;
    if (n > b->max - b->len) {
        b->too_big = true;
        return 0; /* anything but n aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (b->len + n > b->cap) {
        size_t need = b->len + n;
        size_t cap = b->cap < b->max / 2 ? PK_MAX(2 * b->cap, (size_t)1024) : b->max;
        cap = PK_MIN(PK_MAX(cap, need), b->max);
        b->data = pk_xrealloc(b->data, cap + 1);
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

static void sock_cb(evutil_socket_t fd, short what, void *arg);

/* Called by curl when it opens a socket, changes interest, or is about to close it
 * (CURL_POLL_REMOVE): the event is removed before the fd is closed. */
static int socket_fn(CURL *easy, curl_socket_t s, int action, void *clientp, void *socketp)
{
    struct pk_httpc *h = clientp;
    short what;
    size_t i;
    PK_UNUSED(easy);
    PK_UNUSED(socketp);

    switch (action) {
    case CURL_POLL_IN:
        what = EV_READ;
        break;
    case CURL_POLL_OUT:
        what = EV_WRITE;
        break;
    case CURL_POLL_INOUT:
        what = EV_READ | EV_WRITE;
        break;
    default:
        what = 0;
        break;
    }
    /* A linear search rather than curl_multi_assign: no multi call from inside curl, and
     * the pool bounds the number of sockets. */
    for (i = 0; i < h->nsocks; i++)
        if (h->socks[i].fd == s)
            break;
    if (i < h->nsocks) {
        if (h->socks[i].what == what)
            return 0;
        event_free(h->socks[i].ev);
        if (!what) {
            h->socks[i] = h->socks[--h->nsocks];
            return 0;
        }
    } else {
        if (!what)
            return 0;
        if (h->nsocks == h->capsocks) {
            h->capsocks = h->capsocks ? 2 * h->capsocks : 8;
            h->socks = pk_xrealloc(h->socks, h->capsocks * sizeof(*h->socks));
        }
        i = h->nsocks++;
        h->socks[i].fd = s;
    }
    h->socks[i].what = what;
    h->socks[i].ev = pk_xevent_new(h->base, s, (short)(what | EV_PERSIST), sock_cb, h);
    event_add(h->socks[i].ev, NULL);
    return 0;
}

/* curl's timeout changed: only the timer event is touched here. */
static int timer_fn(CURLM *multi, long timeout_ms, void *clientp)
{
    struct pk_httpc *h = clientp;
    PK_UNUSED(multi);

    if (timeout_ms < 0) {
        evtimer_del(h->timer);
    } else {
        struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
        evtimer_add(h->timer, &tv);
    }
    return 0;
}

/* ---- event callbacks: the only callers of curl_multi_socket_action ---- */

/* May free its own event (through socket_fn) before returning: touches only h. */
static void sock_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_httpc *h = arg;
    int mask = 0, running = 0;

    if (what & EV_READ)
        mask |= CURL_CSELECT_IN;
    if (what & EV_WRITE)
        mask |= CURL_CSELECT_OUT;
    curl_multi_socket_action(h->multi, fd, mask, &running);
    drain_done(h);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_httpc *h = arg;
    int running = 0;
    PK_UNUSED(fd);
    PK_UNUSED(what);

    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain_done(h);
}

/* ---- API ---- */

struct pk_httpc *pk_httpc_new(struct event_base *base, size_t max_body)
{
    struct pk_httpc *h;

    if (!base)
        return NULL;
    h = pk_xcalloc(1, sizeof(*h));
    h->base = base;
    h->max_body = max_body ? PK_MIN(max_body, SIZE_MAX / 2) : PK_HTTPC_DEFAULT_MAX_BODY;
    h->timer = pk_xevent_new(base, -1, 0, timer_cb, h);
    h->multi = curl_multi_init();
    if (!h->multi)
        goto fail;
    if (curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_fn) != CURLM_OK ||
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h) != CURLM_OK ||
        curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_fn) != CURLM_OK ||
        curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h) != CURLM_OK ||
        curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, MAX_HOST_CONNECTIONS) !=
            CURLM_OK ||
        curl_multi_setopt(h->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, MAX_TOTAL_CONNECTIONS) !=
            CURLM_OK ||
        curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, MAX_TOTAL_CONNECTIONS) != CURLM_OK)
        goto fail;
    return h;

fail:
    pk_httpc_del(h);
    return NULL;
}

void pk_httpc_del(struct pk_httpc *h)
{
    if (!h)
        return;
    while (h->reqs) {
        struct pk_httpc_req *r = h->reqs;
        unlink_req(r);
        release_easy(r);
        free_req(r);
    }
    /* Closing the pooled connections calls socket_fn and timer_fn: events still exist. */
    if (h->multi)
        curl_multi_cleanup(h->multi);
    for (size_t i = 0; i < h->nsocks; i++)
        event_free(h->socks[i].ev);
    free(h->socks);
    event_free(h->timer);
    free(h->tls_cas);
    free(h->tls_cert);
    free(h->tls_key);
    free(h);
}

int pk_httpc_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : PK_ERR_IO;
}

void pk_httpc_global_cleanup(void)
{
    curl_global_cleanup();
}

struct pk_httpc_req *pk_httpc_get(struct pk_httpc *h, const char *url, const char *const *headers,
                                  uint64_t timeout_ms, pk_httpc_cb cb, void *arg)
{
    struct pk_httpc_req *r;
    CURL *e;

    if (!h || !url || !cb)
        return NULL;
    r = pk_xcalloc(1, sizeof(*r));
    r->h = h;
    r->cb = cb;
    r->arg = arg;
    r->url = pk_xstrdup(url);
    r->body.max = h->max_body;
    r->start_ms = pk_now_ms();
    for (size_t i = 0; headers && headers[i]; i++) {
        struct curl_slist *l = curl_slist_append(r->headers, headers[i]);
        if (!l)
            goto fail;
        r->headers = l;
    }
    e = r->easy = curl_easy_init();
    if (!e)
        goto fail;
    if (curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
        /* "" also overrides http_proxy and friends from the environment. */
        curl_easy_setopt(e, CURLOPT_PROXY, "") != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_USERAGENT, "piko/" PIKO_VERSION) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, httpc_body_write) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &r->body) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_PRIVATE, r) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf) != CURLE_OK ||
        /* Refuses an announced Content-Length over the bound before reading the body. */
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->body.max) != CURLE_OK ||
        (r->headers && curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers) != CURLE_OK) ||
        (timeout_ms && curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                                        (long)PK_MIN(timeout_ms, (uint64_t)LONG_MAX)) != CURLE_OK))
        goto fail;
    if (h->tls_cas && (curl_easy_setopt(e, CURLOPT_CAINFO, h->tls_cas) != CURLE_OK ||
                       curl_easy_setopt(e, CURLOPT_CAPATH, NULL) != CURLE_OK ||
                       curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK ||
                       curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L) != CURLE_OK ||
                       curl_easy_setopt(e, CURLOPT_CA_CACHE_TIMEOUT, 0L) != CURLE_OK))
        goto fail;
    if (h->tls_cert && (curl_easy_setopt(e, CURLOPT_SSLCERT, h->tls_cert) != CURLE_OK ||
                        curl_easy_setopt(e, CURLOPT_SSLKEY, h->tls_key) != CURLE_OK))
        goto fail;
    r->deliver = pk_xevent_new(h->base, -1, 0, deliver_cb, r);
    /* Calls timer_fn with 0: the transfer starts from the timer event. */
    if (curl_multi_add_handle(h->multi, e) != CURLM_OK)
        goto fail;
    r->in_multi = true;
    r->state = REQ_RUNNING;
    link_req(h, r);
    PK_DEBUG("httpc", "get url=%s timeout=%llums", url, (unsigned long long)timeout_ms);
    return r;

fail:
    release_easy(r);
    free_req(r);
    return NULL;
}

static void set_str(char **dst, const char *src)
{
    free(*dst);
    *dst = src && *src ? pk_xstrdup(src) : NULL;
}

void pk_httpc_set_tls(struct pk_httpc *h, const char *root_cas, const char *cert, const char *key)
{
    set_str(&h->tls_cas, root_cas);
    set_str(&h->tls_cert, cert);
    set_str(&h->tls_key, key);
}

void pk_httpc_cancel(struct pk_httpc_req *r)
{
    if (!r || r->state == REQ_DELIVERING)
        return;
    PK_DEBUG("httpc", "get cancelled url=%s", r->url);
    unlink_req(r);
    /* Outside libcurl here (pk_httpc calls user code from its own events only), so the
     * easy handle can leave the multi handle now; a pending deliver event goes with r. */
    release_easy(r);
    free_req(r);
}

size_t pk_httpc_inflight(const struct pk_httpc *h)
{
    return h ? h->inflight : 0;
}
