/* The proxy port's HTTP/2 connections (h2c with prior knowledge, or h2 by ALPN) and the
 * cluster port's, which carry peers' forwarded streams. Each stream is the downstream end
 * (end.h) of one exchange. */
#include "base/base.h"
#include "base/log.h"
#include "h2/h2.h"
#include "server/down.h"
#include "server/exchange.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct h2down {
    struct dconn dc;
    struct pk_server *srv;
    struct pk_h2conn *h2;
    char ip[64];
    uint16_t port;
};

/* A downstream HTTP/2 stream: the end of one exchange, freed when the stream closes. */
struct h2s {
    struct pk_end end;
    struct pk_h2stream *s;
    struct exchange *ex;
};

static void h2s_send_head(struct pk_end *e, struct pk_head *resp, bool body)
{
    struct h2s *hs = PK_CONTAINER_OF(e, struct h2s, end);
    if (pk_h2stream_respond(hs->s, resp, body ? &hs->ex->resp_body : NULL) != 0)
        pk_h2stream_reset(hs->s, NGHTTP2_INTERNAL_ERROR); /* the head could not be sent */
}

static void h2s_establish(struct pk_end *e, struct pk_head *resp)
{
    struct h2s *hs = PK_CONTAINER_OF(e, struct h2s, end);
    /* RFC 8441: an HTTP/2 client sent no key, so it gets no accept (the sidecar
     * checked it). */
    pk_hdrs_del(&resp->hdrs, "sec-websocket-accept");
    resp->status = 200;
    if (pk_h2stream_respond(hs->s, resp, &hs->ex->resp_body) != 0)
        pk_h2stream_reset(hs->s, NGHTTP2_CONNECT_ERROR);
}

static void h2s_abort(struct pk_end *e)
{
    struct h2s *hs = PK_CONTAINER_OF(e, struct h2s, end);
    pk_h2stream_reset(hs->s, hs->ex->raw ? NGHTTP2_CONNECT_ERROR : NGHTTP2_INTERNAL_ERROR);
}

static void h2s_end_early(struct pk_end *e)
{
    pk_h2stream_end_early(PK_CONTAINER_OF(e, struct h2s, end)->s);
}

static void h2s_refuse(struct pk_end *e)
{
    pk_h2stream_reset(PK_CONTAINER_OF(e, struct h2s, end)->s, NGHTTP2_REFUSED_STREAM);
}

static const struct pk_end_ops h2s_ops = {
    .send_head = h2s_send_head,
    .establish = h2s_establish,
    .abort = h2s_abort,
    .end_early = h2s_end_early,
    .send_continue = NULL, /* an HTTP/2 client does not wait for 100 (RFC 9113 8.1) */
    .refuse = NULL,        /* set per stream: only the cluster port's streams are refused */
};

static const struct pk_end_ops h2s_cluster_ops = {
    .send_head = h2s_send_head,
    .establish = h2s_establish,
    .abort = h2s_abort,
    .end_early = h2s_end_early,
    .send_continue = NULL,
    .refuse = h2s_refuse,
};

static void ds_on_close(struct pk_h2stream *s, uint32_t code, void *ud)
{
    struct h2s *hs = ud;
    struct exchange *ex = hs->ex;
    PK_UNUSED(s);
    PK_UNUSED(code);
    free(hs);
    pk_exchange_down_gone(ex);
}

static const struct pk_h2stream_cbs ds_cbs = {.on_close = ds_on_close};

/* proxy.max-body-bytes on an HTTP/2 downstream: DATA is counted as it arrives, whatever
 * content-length said (or did not say). The service sees at most the limit (the request
 * pipe is aborted: its stream is reset); the client gets 413, or a reset when the response
 * had started. */
static void h2_body_over_limit(struct pk_pipe *p, void *arg)
{
    struct exchange *ex = arg;
    PK_UNUSED(p);
    if (ex->body_too_large)
        return;
    ex->body_too_large = true;
    PK_INFO("proxy", "request body over %llu bytes endpoint=%s client=%s",
            (unsigned long long)ex->srv->node.cfg->proxy_max_body_bytes, ex->endpoint, ex->client);
    pk_exchange_fail(ex, 413, "request body too large");
    if (ex->down)
        ex->down->ops->end_early(ex->down);
}

/* A CONNECT stream: a raw stream to the endpoint, or refused. Returns 0, or -1 when the
 * exchange was answered. */
static int h2_take_connect(struct exchange *ex, struct pk_head *in)
{
    if (ex->cluster) {
        /* A peer forwards raw streams in the tunnel's form (PROTOCOL.md 1.2). */
        if (!in->protocol || strlen(in->protocol) >= sizeof(ex->token)) {
            pk_exchange_fail(ex, 400, "bad extended CONNECT");
            return -1;
        }
        pk_strcopy(ex->token, sizeof(ex->token), in->protocol);
        ex->tcp = strcmp(in->protocol, "piko-tcp") == 0;
        ex->raw = true;
        ex->req_has_body = true;
    } else {
        /* RFC 8441 extended CONNECT: a WebSocket (or other protocol) to an HTTP endpoint,
         * or piko-tcp to /_piko/v1/tcp/{endpoint}. Plain CONNECT is not a proxy feature. */
        const char *path = in->path ? in->path : "";
        if (!in->protocol) {
            pk_exchange_fail(ex, 405, "CONNECT is not supported");
            return -1;
        }
        ex->tcp = strncmp(path, TCP_PREFIX, strlen(TCP_PREFIX)) == 0;
        if (ex->tcp && strcmp(in->protocol, "piko-tcp") != 0) {
            pk_exchange_fail(ex, 400, "the tcp path takes :protocol piko-tcp");
            return -1;
        }
        if (strlen(in->protocol) >= sizeof(ex->token)) {
            pk_exchange_fail(ex, 400, "bad upgrade token");
            return -1;
        }
        pk_strcopy(ex->token, sizeof(ex->token), in->protocol);
        ex->raw = true;
        ex->req_has_body = true;
    }
    return 0;
}

static void h2d_on_stream(struct pk_h2conn *c, struct pk_h2stream *s, void *ud)
{
    struct h2down *d = ud;
    PK_UNUSED(c);
    struct exchange *ex = pk_exchange_new(d->srv, d->ip, d->port);
    struct h2s *hs = pk_xcalloc(1, sizeof(*hs));
    hs->end.ops = d->dc.cluster ? &h2s_cluster_ops : &h2s_ops;
    hs->s = s;
    hs->ex = ex;
    ex->down = &hs->end;
    pk_h2stream_set_handler(s, &ds_cbs, hs);
    struct pk_head *in = pk_h2stream_head(s);
    ex->req_has_body = !pk_h2stream_remote_ended(s);
    pk_h2stream_set_sink(s, &ex->req_body);
    ex->cluster = d->dc.cluster;
    if (pk_h2stream_head_too_large(s)) {
        snprintf(ex->endpoint, sizeof(ex->endpoint), "-");
        pk_server_metrics_abort(d->srv, PK_ABORT_HEADER_TOO_LARGE);
        pk_exchange_fail(ex, 431, "request header fields too large");
        pk_h2stream_end_early(s);
        return;
    }
    const char *cl = pk_hdrs_get(&in->hdrs, "content-length");
    uint64_t max_body = d->srv->node.cfg->proxy_max_body_bytes;
    if (!ex->cluster && max_body && cl && strtoull(cl, NULL, 10) > max_body) {
        ex->body_too_large = true;
        pk_exchange_fail(ex, 413, "request body too large");
        pk_h2stream_end_early(s);
        return;
    }
    if (in->method && strcmp(in->method, "CONNECT") == 0 && h2_take_connect(ex, in) != 0)
        return;
    if (!ex->cluster && !ex->raw && max_body)
        pk_pipe_set_limit(&ex->req_body, max_body, h2_body_over_limit, ex);
    pk_exchange_start(ex, in);
}

static void h2d_on_close(struct pk_h2conn *c, const char *why, void *ud)
{
    struct h2down *d = ud;
    struct pk_server *srv = d->srv;
    PK_UNUSED(c);
    PK_DEBUG("proxy", "h2 connection closed client=%s:%u: %s", d->ip, d->port, why);
    pk_list_remove(&d->dc.link);
    free(d);
    srv->loop.nconns--;
    pk_server_check_drained(srv);
}

static const struct pk_h2conn_cbs h2d_cbs = {.on_stream = h2d_on_stream, .on_close = h2d_on_close};

void pk_h2down_new(struct pk_server *srv, struct bufferevent *bev, const char *ip, uint16_t port,
                   bool cluster)
{
    struct h2down *d = pk_xcalloc(1, sizeof(*d));
    d->srv = srv;
    pk_strcopy(d->ip, sizeof(d->ip), ip);
    d->port = port;
    char name[128];
    snprintf(name, sizeof(name), "%s/%s:%u", cluster ? "peer-in" : "downstream", ip, port);
    d->dc.kind = DCONN_H2;
    d->dc.cluster = cluster;
    pk_list_insert(&srv->loop.conns, &d->dc.link);
    d->h2 = pk_h2conn_new(srv->loop.base, bev, true,
                          cluster ? &srv->node.cluster_settings : &srv->node.down_settings,
                          &h2d_cbs, d, name);
    if (!d->h2) {
        pk_list_remove(&d->dc.link);
        free(d);
        srv->loop.nconns--;
    }
}

void pk_h2down_drain(struct dconn *dc)
{
    struct h2down *d = PK_CONTAINER_OF(dc, struct h2down, dc);
    pk_h2conn_drain(d->h2, pk_h2conn_last_stream_id(d->h2));
}

void pk_h2down_abort(struct dconn *dc)
{
    pk_h2conn_close(PK_CONTAINER_OF(dc, struct h2down, dc)->h2, "shutting down");
}
