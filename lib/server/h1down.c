/* The proxy port's HTTP/1.1 connections (and the cluster port's, for state calls): one
 * exchange at a time per connection, keep-alive, upgrades turned into raw byte streams.
 * The connection is the downstream end (end.h) of its current exchange. */
#include "base/base.h"
#include "base/log.h"
#include "http1/http1.h"
#include "net/net.h"
#include "server/down.h"
#include "server/exchange.h"
#include "stream/bevpipe.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OUT_HWM (256 * 1024)

struct h1conn {
    struct dconn dc;
    struct pk_end end; /* the downstream end of the current exchange */
    struct pk_server *srv;
    struct bufferevent *bev;
    struct pk_wbatch wb; /* responses leave in one direct write per loop round */
    struct pk_h1parser parser;
    char ip[64];
    uint16_t port;
    struct exchange *ex;
    struct event *kick_ev; /* deferred: continue parsing, or destroy */
    bool closing;
    bool abort; /* close without flushing (a response was cut short) */
    bool keep_alive;
    bool detecting;   /* still deciding between HTTP/1.1 and h2c */
    bool chunked_out; /* the response body is written with chunked framing */
    bool resp_body_expected;
    bool resp_done;
    bool read_paused;
    uint64_t head_start_ms; /* first byte of the head being received, 0 between requests */
    struct pk_bevpipe *bp;  /* after an upgrade: the socket is a raw byte stream */
};

static void h1_kick(struct h1conn *hc);
static void h1_close(struct h1conn *hc, bool abort);

static void h1_resp_readable(struct pk_pipe *p, void *consumer);

/* Moves response bytes into the socket's output while it is below its mark. */
static void h1_pump_response(struct h1conn *hc)
{
    struct exchange *ex = hc->ex;
    if (!ex || !ex->head_sent || hc->resp_done)
        return;
    struct pk_pipe *p = &ex->resp_body;
    if (p->aborted) {
        PK_INFO("proxy", "response aborted mid-body endpoint=%s client=%s: closing", ex->endpoint,
                ex->client);
        h1_close(hc, true);
        return;
    }
    if (!hc->resp_body_expected) {
        struct evbuffer *sink = pk_xevbuffer_new();
        pk_pipe_move(p, sink, pk_pipe_len(p)); /* bodies of HEAD/204/304 are dropped */
        evbuffer_free(sink);
    }
    /* Nothing to write, or at the mark in what is written and not yet taken by the
     * socket. */
    if ((pk_pipe_len(p) == 0 && !pk_pipe_done(p)) || pk_wbatch_pending(&hc->wb) >= OUT_HWM)
        return;
    if (pk_h1_pump_body(pk_wbatch_out(&hc->wb), p, hc->chunked_out, OUT_HWM)) {
        hc->resp_done = true;
        pk_pipe_set_consumer(p, NULL, NULL);
        h1_kick(hc);
    }
}

static void h1_resp_readable(struct pk_pipe *p, void *consumer)
{
    PK_UNUSED(p);
    h1_pump_response(consumer);
}

static void h1_end_abort(struct pk_end *e)
{
    struct h1conn *hc = PK_CONTAINER_OF(e, struct h1conn, end);
    if (hc->bp)
        pk_bevpipe_reset(hc->bp, PK_ERR_CLOSED); /* a raw stream failed: reset the client */
    else
        h1_close(hc, true);
}

static void h1_send_head(struct h1conn *hc, struct exchange *ex, struct pk_head *resp, bool body)
{
    hc->resp_body_expected = body;
    hc->chunked_out = false;
    if (body && !pk_hdrs_get(&resp->hdrs, "content-length")) {
        if (hc->parser.http_minor >= 1) {
            pk_hdrs_add_str(&resp->hdrs, "transfer-encoding", "chunked");
            hc->chunked_out = true;
        } else {
            hc->keep_alive = false; /* close-delimited for an HTTP/1.0 client */
        }
    }
    /* A response that starts while the request body is still arriving closes the
     * connection: the service may not read the rest (PROTOCOL.md 1.3). */
    if (hc->srv->node.draining || (ex->req_has_body && !ex->req_body.eof))
        hc->keep_alive = false;
    if (!hc->keep_alive)
        pk_hdrs_set(&resp->hdrs, "connection", "close");
    else if (hc->parser.http_minor == 0)
        pk_hdrs_set(&resp->hdrs, "connection", "keep-alive");
    pk_h1_write_response_head(pk_wbatch_out(&hc->wb), resp, hc->parser.http_minor);
    pk_pipe_set_consumer(&ex->resp_body, h1_resp_readable, hc);
    h1_pump_response(hc);
}

static void h1_raw_done(struct pk_bevpipe *bp, int err, void *arg)
{
    struct h1conn *hc = arg;
    PK_UNUSED(bp);
    struct exchange *ex = hc->ex;
    if (ex)
        PK_DEBUG("proxy", "raw stream done endpoint=%s client=%s err=%d in=%llu out=%llu",
                 ex->endpoint, ex->client, err, (unsigned long long)pk_bevpipe_bytes_in(hc->bp),
                 (unsigned long long)pk_bevpipe_bytes_out(hc->bp));
    if (err == PK_ERR_TIMEOUT)
        pk_server_metrics_abort(hc->srv, PK_ABORT_RAW_IDLE);
    h1_close(hc, err != 0);
}

/* The sidecar accepted an upgrade or a TCP tunnel: answer 101 and turn the socket into a
 * raw byte stream joined to the exchange's pipes. */
static void h1_establish(struct h1conn *hc, struct exchange *ex, struct pk_head *resp)
{
    pk_wbatch_flush(&hc->wb); /* the socket is the bevpipe's from now on */
    struct evbuffer *out = bufferevent_get_output(hc->bev);
    resp->status = 101;
    pk_hdrs_set(&resp->hdrs, "connection", "Upgrade");
    pk_hdrs_set(&resp->hdrs, "upgrade", ex->token);
    pk_h1_write_response_head(out, resp, 1);
    hc->resp_done = false;
    hc->bp = pk_bevpipe_new(hc->srv->loop.base, hc->bev, &ex->req_body, &ex->resp_body,
                            !pk_bev_is_tls(hc->bev), OUT_HWM, h1_raw_done, hc);
    if (hc->srv->node.cfg->proxy_raw_idle_timeout_ms)
        pk_bevpipe_set_idle_timeout(hc->bp, hc->srv->node.cfg->proxy_raw_idle_timeout_ms);
}

static void h1_end_send_head(struct pk_end *e, struct pk_head *resp, bool body)
{
    struct h1conn *hc = PK_CONTAINER_OF(e, struct h1conn, end);
    h1_send_head(hc, hc->ex, resp, body);
}

static void h1_end_establish(struct pk_end *e, struct pk_head *resp)
{
    struct h1conn *hc = PK_CONTAINER_OF(e, struct h1conn, end);
    h1_establish(hc, hc->ex, resp);
}

/* HTTP/1.1 closes the connection after a response that started before the request body
 * ended (h1_send_head): nothing to do here. */
static void h1_end_early(struct pk_end *e)
{
    PK_UNUSED(e);
}

static void h1_end_continue(struct pk_end *e)
{
    struct h1conn *hc = PK_CONTAINER_OF(e, struct h1conn, end);
    evbuffer_add_printf(pk_wbatch_out(&hc->wb), "HTTP/1.1 100 Continue\r\n\r\n");
}

static const struct pk_end_ops h1_end_ops = {
    .send_head = h1_end_send_head,
    .establish = h1_end_establish,
    .abort = h1_end_abort,
    .end_early = h1_end_early,
    .send_continue = h1_end_continue,
    .refuse = NULL, /* peer streams are HTTP/2 */
};

static void h1_req_drained(struct pk_pipe *p, size_t n, void *producer)
{
    struct h1conn *hc = producer;
    PK_UNUSED(n);
    if (hc->read_paused && !pk_pipe_full(p)) {
        hc->read_paused = false;
        h1_kick(hc);
    }
}

/* The downstream side of the current exchange is finished: detach from it. */
static void h1_detach(struct h1conn *hc)
{
    struct exchange *ex = hc->ex;
    if (!ex)
        return;
    hc->ex = NULL;
    pk_pipe_set_consumer(&ex->resp_body, NULL, NULL);
    pk_pipe_set_producer(&ex->req_body, NULL, NULL);
    if (!ex->req_body.eof)
        pk_pipe_abort(&ex->req_body);
    pk_exchange_down_gone(ex);
}

static void h1_destroy(struct h1conn *hc)
{
    struct pk_server *srv = hc->srv;
    pk_wbatch_free(&hc->wb, !hc->abort); /* before the bevpipe may free the bufferevent */
    if (hc->bp) {
        /* Detach the bevpipe from the exchange's pipes before they can go away. Over TLS
         * a clean end keeps the socket for the close_notify of the lingering close. */
        struct bufferevent *tls = NULL;
        if (!hc->abort && pk_bev_is_tls(hc->bev))
            tls = pk_bevpipe_take_bev(hc->bp);
        else
            pk_bevpipe_del(hc->bp);
        hc->bp = NULL;
        hc->bev = tls;
    }
    h1_detach(hc);
    pk_list_remove(&hc->dc.link);
    if (hc->bev && hc->abort)
        bufferevent_free(hc->bev);
    else if (hc->bev)
        pk_bev_linger_close(hc->bev, &srv->loop.lingers);
    /* else it belonged to the bevpipe, already freed */
    event_free(hc->kick_ev);
    pk_h1parser_free(&hc->parser);
    free(hc);
    srv->loop.nconns--;
    pk_server_check_drained(srv);
}

static void h1_close(struct h1conn *hc, bool abort)
{
    if (!hc->closing) {
        hc->closing = true;
        bufferevent_disable(hc->bev, EV_READ);
    }
    hc->abort = hc->abort || abort;
    event_active(hc->kick_ev, EV_WRITE, 0);
}

/* An error before any exchange could start: answer and close. */
static void h1_reject(struct h1conn *hc, int status, const char *msg)
{
    size_t n;
    char *body = pk_json_error_body(msg, &n);
    evbuffer_add_printf(
        pk_wbatch_out(&hc->wb),
        "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %zu\r\n"
        "connection: close\r\n\r\n%s",
        status, pk_h1_reason(status), n, body);
    free(body);
    if (status == 408 || status == 431)
        pk_server_metrics_abort(hc->srv,
                                status == 408 ? PK_ABORT_HEAD_TIMEOUT : PK_ABORT_HEADER_TOO_LARGE);
    PK_INFO("proxy", "rejected client=%s:%u status=%d: %s%s%s%s", hc->ip, hc->port, status, msg,
            hc->parser.error_detail ? " (" : "",
            hc->parser.error_detail ? hc->parser.error_detail : "",
            hc->parser.error_detail ? ")" : "");
    h1_close(hc, false);
}

static bool h1_on_head(struct pk_h1parser *p, void *ud)
{
    struct h1conn *hc = ud;
    bufferevent_set_timeouts(hc->bev, NULL, NULL);
    hc->head_start_ms = 0;
    struct exchange *ex = pk_exchange_new(hc->srv, hc->ip, hc->port);
    ex->down_h1 = true;
    hc->ex = ex;
    ex->down = &hc->end;
    hc->keep_alive = p->keep_alive;
    hc->resp_done = false;
    ex->req_has_body = p->chunked || (p->has_length && p->content_length > 0);
    if (p->has_length && p->content_length == 0 && !p->chunked)
        ex->req_has_body = false;
    pk_pipe_set_producer(&ex->req_body, h1_req_drained, hc);
    if (!ex->req_has_body)
        pk_pipe_close(&ex->req_body);
    uint64_t max_body = hc->srv->node.cfg->proxy_max_body_bytes;
    if (max_body && p->has_length && p->content_length > max_body) {
        hc->keep_alive = false;
        ex->body_too_large = true;
        pk_exchange_fail(ex, 413, "request body too large");
        return false;
    }
    if (hc->dc.cluster) {
        /* HTTP/1.1 on the cluster port: state calls only (peer streams are HTTP/2). */
        ex->cluster = true;
        if (p->upgrade)
            hc->keep_alive = false;
        pk_exchange_start(ex, &p->head);
        return false;
    }
    if (strcmp(p->head.method, "CONNECT") == 0) {
        /* A forward proxy's tunnel is not a Piko feature (TCP goes through
         * /_piko/v1/tcp/{endpoint}); same answer as over HTTP/2. */
        hc->keep_alive = false;
        pk_exchange_fail(ex, 405, "CONNECT is not supported");
        return false;
    }
    const char *path = p->head.path ? p->head.path : "";
    ex->tcp = strncmp(path, TCP_PREFIX, strlen(TCP_PREFIX)) == 0;
    if (ex->tcp && !(p->upgrade && pk_hdrs_has_token(&p->head.hdrs, "upgrade", "piko-tcp"))) {
        hc->keep_alive = false;
        pk_exchange_fail_hdr(ex, 426, "upgrade required", "upgrade", "piko-tcp");
        return false;
    }
    if (p->upgrade)
        hc->keep_alive = false; /* whatever happens, the connection is not reused */
    if (p->upgrade && !ex->tcp && strcmp(p->head.method, "GET") != 0) {
        /* Only a GET is carried as an upgrade (PROTOCOL.md 1.2); any other request with
         * Upgrade is a plain exchange (Upgrade is hop-by-hop and removed). */
    } else if (p->upgrade) {
        const char *up = ex->tcp ? "piko-tcp" : pk_hdrs_get(&p->head.hdrs, "upgrade");
        size_t n = up ? strcspn(up, ", \t") : 0;
        if (n == 0 || n >= sizeof(ex->token)) {
            pk_exchange_fail(ex, 400, "bad upgrade token");
            return false;
        }
        snprintf(ex->token, sizeof(ex->token), "%.*s", (int)n, up);
        ex->raw = true;
        /* Raw bytes follow the 101; until then the socket is not read. */
        pk_pipe_free(&ex->req_body);
        pk_pipe_init(&ex->req_body, PIPE_HWM);
        ex->req_has_body = true;
    }
    if (!p->head.authority) {
        const char *host = pk_hdrs_get(&p->head.hdrs, "host");
        if (host)
            pk_head_set(&p->head.authority, host, strlen(host));
    }
    pk_exchange_start(ex, &p->head);
    return false;
}

static void h1_on_body(struct pk_h1parser *p, const char *data, size_t len, void *ud)
{
    struct h1conn *hc = ud;
    PK_UNUSED(p);
    struct exchange *ex = hc->ex;
    if (!ex || ex->body_too_large)
        return;
    uint64_t max_body = hc->srv->node.cfg->proxy_max_body_bytes;
    if (max_body && !ex->raw && ex->req_body.total_in + len > max_body) {
        /* A chunked body over the limit: 413 if nothing was answered yet, and the
         * connection closes either way (the rest of the body is not read). */
        PK_INFO("proxy", "request body over %llu bytes endpoint=%s client=%s",
                (unsigned long long)max_body, ex->endpoint, ex->client);
        ex->body_too_large = true;
        hc->keep_alive = false;
        if (!ex->req_body.eof)
            pk_pipe_abort(&ex->req_body);
        pk_exchange_cancel(ex);
        pk_exchange_fail(ex, 413, "request body too large");
        h1_close(hc, !ex->head_sent);
        return;
    }
    pk_pipe_write(&ex->req_body, data, len);
}

static void h1_on_complete(struct pk_h1parser *p, void *ud)
{
    struct h1conn *hc = ud;
    if (!hc->ex || hc->ex->raw)
        return; /* an upgrade's bytes come after the 101, through the bevpipe */
    struct pk_pipe *rb = &hc->ex->req_body;
    if (p->trailers.n) {
        /* Fields that must not be trailers (RFC 9110 6.5.1: framing, routing, hop-by-hop)
         * are dropped rather than passed on. */
        pk_h1_strip_hop_by_hop(&p->trailers, false);
        pk_hdrs_del(&p->trailers, "content-length");
        pk_hdrs_del(&p->trailers, "host");
        pk_hdrs_del(&p->trailers, "x-piko-authorization");
        pk_hdrs_del_prefix(&p->trailers, "piko-");
    }
    if (p->trailers.n) {
        pk_hdrs_move(&rb->trailers, &p->trailers);
        rb->has_trailers = true;
    }
    pk_pipe_close(rb);
}

static const struct pk_h1parser_cbs h1_parser_cbs = {
    .on_head = h1_on_head,
    .on_body = h1_on_body,
    .on_complete = h1_on_complete,
};

/* proxy.head-timeout bounds the whole head from its first byte, not the gaps between
 * bytes: a client trickling a byte a second (slowloris) gets 408 like a silent one. */
static int head_deadline(struct h1conn *hc)
{
    uint64_t now = pk_now_ms(), limit = hc->srv->node.cfg->proxy_head_timeout_ms;
    if (!hc->head_start_ms)
        hc->head_start_ms = now;
    if (now - hc->head_start_ms >= limit) {
        h1_reject(hc, 408, "request timeout");
        return -1;
    }
    pk_down_set_timeout(hc->bev, limit - (now - hc->head_start_ms));
    return 0;
}

/* Feeds buffered input to the parser while the current exchange can take it. */
static void h1_process(struct h1conn *hc)
{
    if (hc->bp)
        return; /* upgraded: the bevpipe owns the socket */
    struct evbuffer *in = bufferevent_get_input(hc->bev);
    while (!hc->closing) {
        /* A finished exchange: next request (keep-alive) or close. */
        if (hc->ex && hc->resp_done && hc->parser.message_done) {
            h1_detach(hc);
            if (!hc->keep_alive || hc->srv->node.draining) {
                h1_close(hc, false);
                return;
            }
            pk_h1parser_next(&hc->parser);
            pk_down_set_timeout(hc->bev, evbuffer_get_length(in)
                                             ? hc->srv->node.cfg->proxy_head_timeout_ms
                                             : hc->srv->node.cfg->proxy_idle_timeout_ms);
        }
        if (hc->ex && hc->resp_done && !hc->parser.message_done) {
            /* The service answered before the whole request arrived (PROTOCOL.md 1.3). */
            h1_close(hc, false);
            return;
        }
        if (hc->parser.message_done || evbuffer_get_length(in) == 0)
            break;
        if (hc->ex && pk_pipe_full(&hc->ex->req_body)) {
            hc->read_paused = true;
            break;
        }
        bool had_ex = hc->ex != NULL;
        /* At most 64 KiB at a time: the request pipe's mark is checked between feeds. */
        ssize_t n = pk_h1parser_feed_evbuffer(&hc->parser, in, 65536);
        if (n < 0) {
            if (had_ex || hc->ex) {
                PK_INFO("proxy", "bad request body client=%s:%u: %s", hc->ip, hc->port,
                        hc->parser.error_detail ? hc->parser.error_detail : "malformed");
                if (hc->ex && !hc->ex->head_sent)
                    pk_exchange_fail(hc->ex, 400, "malformed request");
                else
                    h1_close(hc, true);
                hc->keep_alive = false;
                if (hc->ex && hc->ex->req_body.eof == false)
                    pk_pipe_abort(&hc->ex->req_body);
                break;
            }
            if (hc->parser.error == PK_H1_HEAD_TOO_LARGE)
                h1_reject(hc, 431, "request header fields too large");
            else if (hc->parser.error == PK_H1_NOT_IMPLEMENTED)
                h1_reject(hc, 501, "transfer coding not implemented");
            else
                h1_reject(hc, 400, "malformed request");
            return;
        }
        if (!hc->ex && !hc->parser.head_done && n > 0 && head_deadline(hc) != 0)
            return;
        if (n == 0 && !hc->parser.message_done)
            break;
    }
    /* Reading stays on while a request is in flight and nothing follows it (every turn
     * off and on again is an epoll_ctl); bytes of a pipelined next request stop it until
     * the response is done, as does a full request pipe. */
    bool want_read = !hc->closing && !hc->read_paused &&
                     (!hc->parser.message_done || evbuffer_get_length(in) == 0);
    if (want_read)
        bufferevent_enable(hc->bev, EV_READ);
    else if (!hc->closing)
        bufferevent_disable(hc->bev, EV_READ);
}

static void h1_kick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h1conn *hc = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (hc->closing) {
        h1_destroy(hc);
        return;
    }
    h1_process(hc);
}

static void h1_kick(struct h1conn *hc)
{
    event_active(hc->kick_ev, EV_WRITE, 0);
}

static void h1_read(struct bufferevent *bev, void *arg)
{
    PK_UNUSED(bev);
    h1_process(arg);
}

/* The round's writes went straight to the socket: more of the response may follow. */
static void h1_flushed(void *arg)
{
    struct h1conn *hc = arg;
    if (!hc->closing && !hc->bp)
        h1_pump_response(hc);
}

static void h1_write(struct bufferevent *bev, void *arg)
{
    struct h1conn *hc = arg;
    PK_UNUSED(bev);
    if (!hc->closing)
        h1_pump_response(hc);
}

static void h1_event(struct bufferevent *bev, short what, void *arg)
{
    struct h1conn *hc = arg;
    PK_UNUSED(bev);
    if (hc->closing)
        return;
    if (what & BEV_EVENT_TIMEOUT) {
        if (!hc->ex && (hc->head_start_ms || hc->parser.head_bytes > 0) && !hc->parser.head_done) {
            h1_reject(hc, 408, "request timeout");
            return;
        }
        if (!hc->ex) {
            h1_close(hc, false);
            return;
        }
        bufferevent_enable(hc->bev, EV_READ);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        /* The client finished sending. A request in flight may still be answered if its
         * body was complete; otherwise the exchange is cancelled. */
        if (hc->ex && hc->parser.message_done && !hc->resp_done) {
            hc->keep_alive = false;
            bufferevent_disable(hc->bev, EV_READ);
            return;
        }
        if (hc->ex && pk_h1parser_eof(&hc->parser) == 0 && !hc->resp_done) {
            hc->keep_alive = false;
            return;
        }
    }
    h1_close(hc, true);
}

struct h1conn *pk_h1down_new(struct pk_server *srv, struct bufferevent *bev, const char *ip,
                             uint16_t port, bool cluster, uint64_t head_start_ms)
{
    struct h1conn *hc = pk_xcalloc(1, sizeof(*hc));
    hc->srv = srv;
    hc->bev = bev;
    pk_strcopy(hc->ip, sizeof(hc->ip), ip);
    hc->port = port;
    hc->kick_ev = pk_xevent_new(srv->loop.base, -1, 0, h1_kick_cb, hc);
    pk_wbatch_init(&hc->wb, srv->loop.base, bev, h1_flushed, hc);
    hc->end.ops = &h1_end_ops;
    pk_h1parser_init(&hc->parser, HTTP_REQUEST, srv->node.cfg->proxy_max_header_bytes,
                     &h1_parser_cbs, hc);
    hc->dc.kind = DCONN_H1;
    hc->dc.cluster = cluster;
    hc->head_start_ms = head_start_ms;
    pk_list_insert(&srv->loop.conns, &hc->dc.link);
    bufferevent_setcb(bev, h1_read, h1_write, h1_event, hc);
    bufferevent_setwatermark(bev, EV_WRITE, OUT_HWM / 2, 0);
    bufferevent_setwatermark(bev, EV_READ, 0, 256 * 1024);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    return hc;
}

void pk_h1down_process(struct h1conn *hc)
{
    h1_process(hc);
}

void pk_h1down_drain(struct dconn *dc)
{
    struct h1conn *hc = PK_CONTAINER_OF(dc, struct h1conn, dc);
    hc->keep_alive = false;
    if (!hc->ex)
        h1_close(hc, false);
}

void pk_h1down_abort(struct dconn *dc)
{
    h1_close(PK_CONTAINER_OF(dc, struct h1conn, dc), true);
}
