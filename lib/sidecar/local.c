/* Serving tunnel streams from the local service over HTTP/1.1 keep-alive connections.
 *
 * A local exchange (struct lx) joins one tunnel stream to one connection to the service
 * (struct lconn). The request body flows stream -> req_body pipe -> connection, the
 * response body connection -> resp_body pipe -> stream, each bounded by the pipe mark
 * (reading stops) and the HTTP/2 window (credit is returned as bytes leave). A connection
 * whose exchange finished cleanly goes back to the endpoint's idle pool. */
#include "accesslog/accesslog.h"
#include "base/base.h"
#include "base/log.h"
#include "dns/dns.h"
#include "http1/http1.h"
#include "net/dial.h"
#include "net/net.h"
#include "sidecar/sidecar_int.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PIPE_HWM (256 * 1024)
#define OUT_HWM  (256 * 1024)

struct lx {
    struct sc_endpoint *ep;
    struct pk_h2stream *s;
    struct lconn *lc;
    struct pk_pipe req_body;
    struct pk_pipe resp_body;
    bool is_head;
    bool req_chunked;
    bool req_sent;
    bool resp_started;
    bool resp_complete;
    bool pooled_conn;  /* the connection came from the pool: a stale one may be retried */
    bool got_bytes;    /* the service sent something */
    int status;        /* the service's response status (0: none yet) */
    char method[12];   /* for metrics */
    uint64_t start_us; /* for the latency histogram */
    /* for the access log (scaccess.c) */
    char *path, *host;
    char client[80];
    char error[96];
    struct pk_hdrs req_hdrs, resp_hdrs; /* when the access log wants them */
    /* local.stall-timeout: checked every quarter of it while the exchange lives. */
    struct event *stall_ev;
    uint64_t progress; /* body bytes moved at the last check */
    uint64_t stalled_ms;
};

struct lconn {
    struct sc_endpoint *ep;
    struct bufferevent *bev;
    struct pk_wbatch wb; /* requests leave in one direct write per loop round */
    struct pk_dial *dial;
    struct pk_h1parser parser;
    struct lx *lx;
    struct event *kick_ev;
    bool closing;
    bool read_paused;
    struct lconn *next; /* idle list */
};

static void lc_close(struct lconn *lc);
static void lx_attach(struct lx *x, struct lconn *lc);
static void lx_connect(struct lx *x);

/* ---- exchange --------------------------------------------------------------------- */

static void lx_free(struct lx *x)
{
    uint64_t took_us = pk_now_us() - x->start_us;
    pk_sidecar_metrics_request(x->ep->sc, x->ep->name, x->method, x->status, took_us);
    struct pk_access_rec r = {
        .kind = "http",
        .endpoint = x->ep->name,
        .client = x->client,
        .method = x->method,
        .host = x->host,
        .path = x->path,
        .status = x->status,
        .bytes_in = x->req_body.total_in,
        .bytes_out = x->resp_body.total_out,
        .duration_us = took_us,
        .route = "service",
        .error = x->error[0] ? x->error : NULL,
        .request_headers = &x->req_hdrs,
        .response_headers = &x->resp_hdrs,
    };
    pk_accesslog_add(x->ep->sc->access, &r);
    free(x->path);
    free(x->host);
    pk_hdrs_free(&x->req_hdrs);
    pk_hdrs_free(&x->resp_hdrs);
    if (x->stall_ev)
        event_free(x->stall_ev);
    pk_pipe_free(&x->req_body);
    pk_pipe_free(&x->resp_body);
    x->ep->sc->nstreams--;
    pk_sidecar_check_done(x->ep->sc);
    free(x);
}

static void idle_event(struct bufferevent *bev, short what, void *arg);
static void idle_read(struct bufferevent *bev, void *arg);

/* Returns a connection to the pool or closes it. */
static void lc_release(struct lconn *lc, bool reusable)
{
    struct sc_endpoint *ep = lc->ep;
    lc->lx = NULL;
    if (!reusable || lc->closing || ep->sc->draining ||
        ep->nidle >= (size_t)ep->sc->cfg->local_max_idle) {
        lc_close(lc);
        return;
    }
    pk_h1parser_free(&lc->parser);
    memset(&lc->parser, 0, sizeof(lc->parser));
    pk_wbatch_flush(&lc->wb);
    bufferevent_setcb(lc->bev, idle_read, NULL, idle_event, lc);
    bufferevent_enable(lc->bev, EV_READ);
    lc->next = ep->idle;
    ep->idle = lc;
    ep->nidle++;
}

static void stream_closed(struct pk_h2stream *s, uint32_t code, void *ud)
{
    struct lx *x = ud;
    PK_UNUSED(s);
    x->s = NULL;
    if (code != NGHTTP2_NO_ERROR) {
        const char *why = code == PK_H2_CONN_LOST ? "tunnel lost" : nghttp2_http2_strerror(code);
        PK_DEBUG("local", "endpoint=%s stream closed: %s", x->ep->name, why);
        if (!x->error[0])
            snprintf(x->error, sizeof(x->error), "stream closed by the server: %s", why);
    }
    if (x->lc) {
        struct lconn *lc = x->lc;
        x->lc = NULL;
        pk_pipe_set_consumer(&x->req_body, NULL, NULL);
        pk_pipe_set_producer(&x->resp_body, NULL, NULL);
        lc_release(lc, code == NGHTTP2_NO_ERROR && x->req_sent && x->resp_complete &&
                           lc->parser.keep_alive);
    }
    lx_free(x);
}

static const struct pk_h2stream_cbs stream_cbs = {.on_close = stream_closed};

/* The exchange failed: tell the server how (PROTOCOL.md 1.3). reason: the metric label
 * of the service's failure, NULL when the client went away. */
static void lx_fail(struct lx *x, uint32_t code, const char *reason, const char *why)
{
    pk_sidecar_metrics_local_error(x->ep->sc, x->ep->name, reason);
    /* A dial failure already names the address ("127.0.0.1:8080: Connection refused"). */
    char addr[300];
    snprintf(addr, sizeof(addr), "%s:%u: ", x->ep->host, x->ep->port);
    if (strncmp(why, addr, strlen(addr)) == 0)
        why += strlen(addr);
    PK_INFO("local", "endpoint=%s service %s:%u: %s", x->ep->name, x->ep->host, x->ep->port, why);
    if (!x->error[0])
        pk_strcopy(x->error, sizeof(x->error), why);
    if (x->lc) {
        struct lconn *lc = x->lc;
        x->lc = NULL;
        pk_pipe_set_consumer(&x->req_body, NULL, NULL);
        pk_pipe_set_producer(&x->resp_body, NULL, NULL);
        lc_release(lc, false);
    }
    if (!x->s)
        return;
    if (x->resp_started)
        pk_pipe_abort(&x->resp_body);
    else
        pk_h2stream_reset(x->s, code);
}

/* ---- stall timer ------------------------------------------------------------------ */

static uint64_t stall_interval(const struct lx *x)
{
    return PK_MAX(x->ep->sc->cfg->local_stall_timeout_ms / 4, (uint64_t)50);
}

static void stall_arm(struct lx *x)
{
    uint64_t ms = stall_interval(x);
    struct timeval tv = pk_ms_timeval(ms);
    event_add(x->stall_ev, &tv);
}

/* A body that should move (the request to the service, or its response) and did not for
 * local.stall-timeout: the service stopped reading or sending, or the server stopped
 * taking the response. Waiting for the response head is the server's proxy.timeout. */
static void stall_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lx *x = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    bool upload = x->lc && !x->req_sent;
    bool response = x->resp_started && !x->resp_complete;
    uint64_t progress = x->req_body.total_in + x->req_body.total_out + x->resp_body.total_in +
                        x->resp_body.total_out;
    if ((!upload && !response) || progress != x->progress) {
        x->progress = progress;
        x->stalled_ms = 0;
        stall_arm(x);
        return;
    }
    x->stalled_ms += stall_interval(x);
    if (x->stalled_ms < x->ep->sc->cfg->local_stall_timeout_ms) {
        stall_arm(x);
        return;
    }
    x->ep->sc->stalled++;
    char why[160];
    snprintf(why, sizeof(why), "stalled: no body byte moved for %llums (%s)",
             (unsigned long long)x->stalled_ms, response ? "response" : "request body");
    lx_fail(x, NGHTTP2_CANCEL, "stall", why);
}

/* ---- request: stream -> service ---------------------------------------------------- */

static void pump_request(struct lconn *lc)
{
    struct lx *x = lc->lx;
    if (!x || x->req_sent)
        return;
    struct pk_pipe *p = &x->req_body;
    if (p->aborted) {
        if (x->resp_complete) {
            /* The stream ended early after a complete response: nothing failed. */
            x->lc = NULL;
            pk_pipe_set_consumer(p, NULL, NULL);
            pk_pipe_set_producer(&x->resp_body, NULL, NULL);
            lc_release(lc, false);
            return;
        }
        lx_fail(x, NGHTTP2_CANCEL, NULL, "request aborted by the client");
        return;
    }
    /* Nothing to write, or at the mark in what is written and not yet taken. */
    if ((pk_pipe_len(p) == 0 && !pk_pipe_done(p)) || pk_wbatch_pending(&lc->wb) >= OUT_HWM)
        return;
    if (pk_h1_pump_body(pk_wbatch_out(&lc->wb), p, x->req_chunked, OUT_HWM)) {
        x->req_sent = true;
        pk_pipe_set_consumer(p, NULL, NULL);
    }
}

static void req_readable(struct pk_pipe *p, void *consumer)
{
    PK_UNUSED(p);
    pump_request(consumer);
}

/* Appends a field to a head that only the HTTP/1.1 writer reads: the strings are
 * borrowed (the stream's head, literals, the joined cookie), never copied or freed. */
static void view_add(struct pk_hdrs *h, const char *name, size_t nlen, const char *value,
                     size_t vlen)
{
    h->v[h->n++] = (struct pk_hdr){(char *)name, (char *)value, nlen, vlen};
    h->bytes += nlen + vlen;
}

static void view_add_str(struct pk_hdrs *h, const char *name, const char *value)
{
    view_add(h, name, strlen(name), value, strlen(value));
}

static void write_request_head(struct lx *x, struct evbuffer *out)
{
    struct pk_head *in = pk_h2stream_head(x->s);
    struct pk_head h;
    pk_head_init(&h);
    h.method = in->method;
    h.path = in->path;
    h.authority = in->authority;
    /* At most the stream's fields and four more (cookie, te, connection, framing). */
    struct pk_hdr stackv[32];
    size_t cap = in->hdrs.n + 4;
    h.hdrs.v = cap <= PK_ARRAY_LEN(stackv) ? stackv : pk_xmalloc(cap * sizeof(*h.hdrs.v));
    h.hdrs.cap = cap;
    /* Cookies split across fields are joined before HTTP/1.1 (RFC 9113 8.2.3). */
    char *cookie = NULL;
    bool te_trailers = false;
    for (size_t i = 0; i < in->hdrs.n; i++) {
        struct pk_hdr *f = &in->hdrs.v[i];
        if (strncmp(f->name, "piko-", 5) == 0)
            continue;
        if (strcmp(f->name, "cookie") == 0) {
            char *c = cookie ? pk_xasprintf("%s; %s", cookie, f->value) : pk_xstrdup(f->value);
            free(cookie);
            cookie = c;
            continue;
        }
        if (strcmp(f->name, "te") == 0) {
            te_trailers = true;
            continue;
        }
        view_add(&h.hdrs, f->name, f->nlen, f->value, f->vlen);
    }
    if (cookie)
        view_add_str(&h.hdrs, "cookie", cookie);
    if (te_trailers) {
        view_add_str(&h.hdrs, "te", "trailers");
        view_add_str(&h.hdrs, "connection", "te");
    }
    x->req_chunked = false;
    if (!pk_hdrs_get(&h.hdrs, "content-length")) {
        if (pk_h2stream_remote_ended(x->s) && pk_pipe_len(&x->req_body) == 0) {
            const char *m = h.method ? h.method : "";
            if (!strcmp(m, "POST") || !strcmp(m, "PUT") || !strcmp(m, "PATCH"))
                view_add_str(&h.hdrs, "content-length", "0");
        } else {
            view_add_str(&h.hdrs, "transfer-encoding", "chunked");
            x->req_chunked = true;
        }
    }
    pk_h1_write_request_head(out, &h);
    free(cookie);
    if (h.hdrs.v != stackv)
        free(h.hdrs.v);
}

/* ---- response: service -> stream ---------------------------------------------------- */

static bool resp_on_head(struct pk_h1parser *p, void *ud)
{
    struct lconn *lc = ud;
    struct lx *x = lc->lx;
    int status = p->head.status;
    if (!x || (status >= 100 && status < 200))
        return false; /* interim responses are not relayed */
    struct pk_head h;
    pk_head_init(&h);
    h.status = status;
    pk_hdrs_move(&h.hdrs, &p->head.hdrs);
    pk_h1_strip_hop_by_hop(&h.hdrs, false);
    pk_hdrs_del_prefix(&h.hdrs, "piko-");
    if (pk_accesslog_wants_response_headers(x->ep->sc->access))
        for (size_t i = 0; i < h.hdrs.n; i++)
            pk_hdrs_add(&x->resp_hdrs, h.hdrs.v[i].name, h.hdrs.v[i].nlen, h.hdrs.v[i].value,
                        h.hdrs.v[i].vlen);
    bool body = !(x->is_head || status == 204 || status == 304);
    x->status = status;
    if (x->s) {
        x->resp_started = true;
        if (pk_h2stream_respond(x->s, &h, body ? &x->resp_body : NULL) != 0)
            pk_h2stream_reset(x->s, NGHTTP2_INTERNAL_ERROR);
    }
    pk_head_free(&h);
    return x->is_head;
}

static void resp_on_body(struct pk_h1parser *p, const char *data, size_t len, void *ud)
{
    struct lconn *lc = ud;
    PK_UNUSED(p);
    if (lc->lx)
        pk_pipe_write(&lc->lx->resp_body, data, len);
}

static void resp_on_complete(struct pk_h1parser *p, void *ud)
{
    struct lconn *lc = ud;
    struct lx *x = lc->lx;
    if (!x || (p->head.status >= 100 && p->head.status < 200))
        return;
    x->resp_complete = true;
    if (!x->req_sent && x->s) {
        /* The service answered before reading the whole request: relay the complete
         * response, then stop the request (PROTOCOL.md 1.3). The connection is not
         * reused: unread request bytes may still be in flight to it. */
        PK_DEBUG("local", "endpoint=%s response complete before the request body", x->ep->name);
        lc->parser.keep_alive = false;
        pk_h2stream_end_early(x->s);
    }
    if (p->trailers.n) {
        pk_hdrs_move(&x->resp_body.trailers, &p->trailers);
        x->resp_body.has_trailers = true;
    }
    pk_pipe_close(&x->resp_body);
}

static const struct pk_h1parser_cbs resp_cbs = {
    .on_head = resp_on_head,
    .on_body = resp_on_body,
    .on_complete = resp_on_complete,
};

static void resp_drained(struct pk_pipe *p, size_t n, void *producer)
{
    struct lconn *lc = producer;
    PK_UNUSED(n);
    if (lc->read_paused && !pk_pipe_full(p)) {
        lc->read_paused = false;
        event_active(lc->kick_ev, EV_READ, 0);
    }
}

static void lc_process(struct lconn *lc)
{
    struct evbuffer *in = bufferevent_get_input(lc->bev);
    while (lc->lx && !lc->closing && evbuffer_get_length(in) > 0) {
        struct lx *x = lc->lx;
        if (x->resp_complete)
            break; /* anything more is not ours: the connection is not reused */
        if (pk_pipe_full(&x->resp_body)) {
            lc->read_paused = true;
            bufferevent_disable(lc->bev, EV_READ);
            return;
        }
        x->got_bytes = true;
        ssize_t n = pk_h1parser_feed_evbuffer(&lc->parser, in, 65536);
        if (n < 0) {
            lx_fail(x, NGHTTP2_INTERNAL_ERROR, "malformed_response", "malformed response");
            return;
        }
        if (lc->parser.message_done && !x->resp_complete) {
            pk_h1parser_next(&lc->parser); /* after an interim response */
            continue;
        }
        if (n == 0)
            break;
    }
    if (lc->lx && !lc->closing)
        bufferevent_enable(lc->bev, EV_READ);
}

static void lc_event(struct bufferevent *bev, short what, void *arg);

/* After libevent's read (4 KiB at most) came back full, a plain connection's socket is
 * drained in large reads while the response pipe has room (pk_bev_read_more). An EOF is left for
 * libevent to see again (it stays readable); an error is handled here, as the event callback would
 * have. */
static void lc_read(struct bufferevent *bev, void *arg)
{
    struct lconn *lc = arg;
    bool more = pk_bev_read_was_full(bev);
    lc_process(lc);
    while (more && lc->wb.plain && lc->lx && !lc->closing && !lc->read_paused &&
           evbuffer_get_length(bufferevent_get_input(bev)) == 0) {
        struct pk_pipe *p = &lc->lx->resp_body;
        size_t room = p->hwm > pk_pipe_len(p) ? p->hwm - pk_pipe_len(p) : 0;
        enum pk_read_end end = PK_READ_AGAIN;
        size_t n = room ? pk_bev_read_more(bev, room, &end) : 0;
        if (end == PK_READ_ERROR) {
            lc_event(bev, BEV_EVENT_READING | BEV_EVENT_ERROR, lc);
            return;
        }
        if (n == 0)
            return;
        lc_process(lc);
        if (n < room || end == PK_READ_EOF)
            return;
    }
}

/* The round's writes went straight to the socket: more of the request may follow. */
static void lc_flushed(void *arg)
{
    struct lconn *lc = arg;
    if (!lc->closing && lc->lx)
        pump_request(lc);
}

static void lc_write(struct bufferevent *bev, void *arg)
{
    PK_UNUSED(bev);
    pump_request(arg);
}

static void lc_event(struct bufferevent *bev, short what, void *arg)
{
    struct lconn *lc = arg;
    PK_UNUSED(bev);
    struct lx *x = lc->lx;
    if (!x) {
        lc_close(lc);
        return;
    }
    lc_process(lc);
    if ((what & BEV_EVENT_EOF) && lc->lx && !x->resp_complete &&
        pk_h1parser_eof(&lc->parser) == 0 && x->resp_complete) {
        /* A close-delimited body ended (the parser completes it at EOF; checked again
         * after, since an interim response does not complete the exchange). */
        lc->parser.keep_alive = false;
        return;
    }
    if (!lc->lx || x->resp_complete)
        return;
    if (x->pooled_conn && !x->got_bytes && !x->resp_started && x->req_body.total_out == 0) {
        /* A pooled connection the service had closed: dial a fresh one. */
        PK_DEBUG("local", "endpoint=%s stale pooled connection: redialling", x->ep->name);
        x->lc = NULL;
        lc->lx = NULL;
        lc_close(lc);
        x->pooled_conn = false;
        lx_connect(x);
        return;
    }
    bool eof = what & BEV_EVENT_EOF;
    lx_fail(x, NGHTTP2_INTERNAL_ERROR, eof ? "closed" : "error",
            eof ? "closed the connection before the response was complete" : "connection error");
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lconn *lc = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (lc->closing) {
        if (lc->dial)
            pk_dial_cancel(lc->dial);
        if (lc->bev) {
            pk_wbatch_free(&lc->wb, false); /* closing: nothing more is owed */
            bufferevent_free(lc->bev);
        }
        pk_h1parser_free(&lc->parser);
        event_free(lc->kick_ev);
        free(lc);
        return;
    }
    lc_process(lc);
}

static void lc_close(struct lconn *lc)
{
    if (lc->closing)
        return;
    lc->closing = true;
    if (lc->bev)
        bufferevent_disable(lc->bev, EV_READ | EV_WRITE);
    event_active(lc->kick_ev, EV_WRITE, 0);
}

/* ---- idle pool --------------------------------------------------------------------- */

static void pool_remove(struct lconn *lc)
{
    struct sc_endpoint *ep = lc->ep;
    for (struct lconn **pp = &ep->idle; *pp; pp = &(*pp)->next) {
        if (*pp == lc) {
            *pp = lc->next;
            ep->nidle--;
            return;
        }
    }
}

static void idle_event(struct bufferevent *bev, short what, void *arg)
{
    PK_UNUSED(bev);
    PK_UNUSED(what);
    pool_remove(arg);
    lc_close(arg);
}

static void idle_read(struct bufferevent *bev, void *arg)
{
    /* A service does not speak first on an idle keep-alive connection. */
    PK_UNUSED(bev);
    pool_remove(arg);
    lc_close(arg);
}

void pk_local_pool_free(struct sc_endpoint *ep)
{
    while (ep->idle) {
        struct lconn *lc = ep->idle;
        ep->idle = lc->next;
        ep->nidle--;
        lc_close(lc);
    }
}

/* ---- connecting ---------------------------------------------------------------------- */

static struct lconn *lc_new(struct sc_endpoint *ep)
{
    struct lconn *lc = pk_xcalloc(1, sizeof(*lc));
    lc->ep = ep;
    lc->kick_ev = pk_xevent_new(ep->sc->base, -1, 0, kick_cb, lc);
    return lc;
}

static void lx_attach(struct lx *x, struct lconn *lc)
{
    x->lc = lc;
    lc->lx = x;
    pk_h1parser_init(&lc->parser, HTTP_RESPONSE, 64 * 1024, &resp_cbs, lc);
    bufferevent_setcb(lc->bev, lc_read, lc_write, lc_event, lc);
    bufferevent_setwatermark(lc->bev, EV_WRITE, OUT_HWM / 2, 0);
    bufferevent_setwatermark(lc->bev, EV_READ, 0, 256 * 1024);
    write_request_head(x, pk_wbatch_out(&lc->wb));
    pk_pipe_set_consumer(&x->req_body, req_readable, lc);
    pk_pipe_set_producer(&x->resp_body, resp_drained, lc);
    /* bufferevent_enable adds the events it is given even when they are enabled already:
     * an enabled write event with nothing to write costs an epoll_ctl to add it and one
     * to delete it again, so writing is enabled only where it is not (a pooled connection
     * keeps it). */
    short ev = EV_READ;
    if (!(bufferevent_get_enabled(lc->bev) & EV_WRITE))
        ev |= EV_WRITE;
    bufferevent_enable(lc->bev, ev);
    pump_request(lc);
}

static void dialed(int err, struct bufferevent *bev, const char *why, void *arg)
{
    struct lconn *lc = arg;
    lc->dial = NULL;
    struct lx *x = lc->lx;
    if (err) {
        lc->lx = NULL;
        lc_close(lc);
        if (x) {
            x->lc = NULL;
            /* Nothing reached the service: the server may retry elsewhere (1.3). */
            lx_fail(x, NGHTTP2_REFUSED_STREAM, pk_sidecar_dial_error(err, why), why);
        }
        return;
    }
    lc->bev = bev;
    pk_wbatch_init(&lc->wb, lc->ep->sc->base, bev, lc_flushed, lc);
    if (!x) {
        lc_close(lc);
        return;
    }
    lx_attach(x, lc);
}

static void lx_connect(struct lx *x)
{
    struct sc_endpoint *ep = x->ep;
    while (ep->idle) {
        struct lconn *lc = ep->idle;
        ep->idle = lc->next;
        ep->nidle--;
        x->pooled_conn = true;
        lx_attach(x, lc);
        return;
    }
    struct lconn *lc = lc_new(ep);
    lc->lx = x;
    x->lc = lc;
    lc->dial = pk_dial_start(ep->sc->base, ep->sc->resolver, ep->host, ep->port,
                             ep->sc->cfg->local_connect_timeout_ms, dialed, lc);
    if (!lc->dial) {
        x->lc = NULL;
        lc->lx = NULL;
        lc_close(lc);
        lx_fail(x, NGHTTP2_REFUSED_STREAM, "resolve", "cannot resolve the service address");
    }
}

void pk_local_serve(struct sc_endpoint *ep, struct pk_h2stream *s)
{
    struct pk_head *h = pk_h2stream_head(s);
    if (h->method && strcmp(h->method, "CONNECT") == 0) {
        if (h->protocol) {
            pk_raw_serve(ep, s);
            return;
        }
        /* Plain CONNECT is never sent (PROTOCOL.md 1.2). */
        pk_h2stream_set_handler(s, NULL, NULL);
        pk_h2stream_reset(s, NGHTTP2_PROTOCOL_ERROR);
        return;
    }
    if (ep->tcp) {
        /* An HTTP exchange sent to a TCP endpoint (PROTOCOL.md 1.3): the client gets the
         * server's 502, so the reason is said here, at most once a second. */
        uint64_t now = pk_now_ms();
        if (now - ep->refused_log_ms >= 1000) {
            ep->refused_log_ms = now;
            PK_WARN("local",
                    "endpoint=%s is a TCP endpoint (--tcp-endpoint): an HTTP request was "
                    "refused; reach it with --forward or GET /_piko/v1/tcp/%s",
                    ep->name, ep->name);
        }
        pk_h2stream_set_handler(s, NULL, NULL);
        pk_h2stream_reset(s, NGHTTP2_REFUSED_STREAM);
        return;
    }
    struct lx *x = pk_xcalloc(1, sizeof(*x));
    x->ep = ep;
    x->s = s;
    x->is_head = h->method && strcmp(h->method, "HEAD") == 0;
    pk_strcopy(x->method, sizeof(x->method), h->method ? h->method : "");
    x->start_us = pk_now_us();
    x->path = h->path ? pk_xstrdup(h->path) : NULL;
    x->host = h->authority ? pk_xstrdup(h->authority) : NULL;
    const char *ca = pk_hdrs_get(&h->hdrs, "piko-client-addr");
    pk_strcopy(x->client, sizeof(x->client), ca ? ca : "");
    pk_hdrs_init(&x->req_hdrs);
    pk_hdrs_init(&x->resp_hdrs);
    if (pk_accesslog_wants_request_headers(ep->sc->access))
        for (size_t i = 0; i < h->hdrs.n; i++)
            pk_hdrs_add(&x->req_hdrs, h->hdrs.v[i].name, h->hdrs.v[i].nlen, h->hdrs.v[i].value,
                        h->hdrs.v[i].vlen);
    pk_pipe_init(&x->req_body, PIPE_HWM);
    pk_pipe_init(&x->resp_body, PIPE_HWM);
    ep->sc->nstreams++;
    pk_h2stream_set_handler(s, &stream_cbs, x);
    pk_h2stream_set_sink(s, &x->req_body);
    if (ep->sc->cfg->local_stall_timeout_ms) {
        x->stall_ev = pk_xevent_new(ep->sc->base, -1, 0, stall_cb, x);
        stall_arm(x);
    }
    lx_connect(x);
}
