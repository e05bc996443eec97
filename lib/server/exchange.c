/* The exchange: one downstream request joined to one upstream stream (exchange.h). It
 * owns the state machine (head sent, bodies done each way, answered, aborted), the one
 * timer (proxy.timeout, then the stall check), routing, proxy.auth's wait, the dispatch to
 * a tunnel or a peer link with its one retry, and the proxy's own answers. It drives the
 * downstream side only through its end (end.h), whatever the protocol. */
#include "server/exchange.h"
#include "accesslog/accesslog.h"
#include "base/base.h"
#include "base/log.h"
#include "cluster/cluster.h"
#include "http1/http1.h"

#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void ex_timer_cb(evutil_socket_t fd, short what, void *arg);
static void ex_abort_down(struct exchange *ex);
static void ex_send_head(struct exchange *ex, struct pk_head *resp, bool body);
static void ex_establish(struct exchange *ex, struct pk_head *resp);

struct exchange *pk_exchange_new(struct pk_server *srv, const char *ip, uint16_t port)
{
    struct exchange *ex = pk_xcalloc(1, sizeof(*ex));
    ex->srv = srv;
    pk_head_init(&ex->req);
    pk_pipe_init(&ex->req_body, PIPE_HWM);
    pk_pipe_init(&ex->resp_body, PIPE_HWM);
    pk_hostport(ex->client, sizeof(ex->client), ip, port);
    pk_strcopy(ex->ip, sizeof(ex->ip), ip);
    ex->port = port;
    pk_head_init(&ex->held);
    pk_hdrs_init(&ex->resp_hdrs);
    ex->timer = pk_xevent_new(srv->loop.base, -1, 0, ex_timer_cb, ex);
    ex->start_us = pk_now_us();
    srv->loop.nexchanges++;
    return ex;
}

static void ex_unwait(struct exchange *ex)
{
    if (ex->state_wait || ex->status_call) {
        pk_cluster_port_unwait(ex);
        return;
    }
    if (!ex->waiting)
        return;
    for (struct exchange **pp = &ex->srv->loop.waiting; *pp; pp = &(*pp)->wnext) {
        if (*pp == ex) {
            *pp = ex->wnext;
            break;
        }
    }
    ex->waiting = false;
}

/* Frees the exchange once neither side uses it. */
static void ex_maybe_free(struct exchange *ex)
{
    if (ex->us || ex->down)
        return;
    struct pk_server *srv = ex->srv;
    ex_unwait(ex);
    pk_auth_cancel(ex->auth);
    uint64_t took_us = pk_now_us() - ex->start_us;
    pk_server_metrics_exchange(ex, took_us);
    pk_exchange_log(ex, took_us);
    pk_hdrs_free(&ex->resp_hdrs);
    pk_head_free(&ex->held);
    PK_DEBUG("proxy",
             "done endpoint=%s client=%s method=%s path=%s status=%d ms=%llu in=%llu out=%llu",
             ex->endpoint, ex->client, ex->req.method ? ex->req.method : "-",
             ex->req.path ? ex->req.path : "-", ex->status, (unsigned long long)(took_us / 1000),
             (unsigned long long)ex->req_body.total_in, (unsigned long long)ex->resp_body.total_in);
    event_free(ex->timer);
    pk_head_free(&ex->req);
    pk_pipe_free(&ex->req_body);
    pk_pipe_free(&ex->resp_body);
    free(ex);
    srv->loop.nexchanges--;
    pk_server_check_drained(srv);
}

/* The downstream end is done or gone: it is never called again, and the upstream stream
 * is cancelled unless both bodies were complete. */
void pk_exchange_down_gone(struct exchange *ex)
{
    ex->down = NULL;
    if (ex->us && !(ex->resp_body.eof && ex->req_body.eof))
        pk_h2stream_reset(ex->us, NGHTTP2_CANCEL);
    ex_maybe_free(ex);
}

void pk_exchange_cancel(struct exchange *ex)
{
    if (ex->us)
        pk_h2stream_reset(ex->us, NGHTTP2_CANCEL);
}

static void ex_arm(struct exchange *ex, uint64_t ms)
{
    struct timeval tv = pk_ms_timeval(ms);
    event_add(ex->timer, &tv);
}

/* proxy.timeout: the wait for the response head from now. */
static void ex_arm_head_wait(struct exchange *ex)
{
    ex->stall_mode = false;
    ex_arm(ex, ex->srv->node.cfg->proxy_timeout_ms);
}

static uint64_t stall_interval(const struct exchange *ex)
{
    return PK_MAX(ex->srv->node.cfg->proxy_stall_timeout_ms / 4, (uint64_t)50);
}

static uint64_t ex_progress(const struct exchange *ex)
{
    return ex->req_body.total_in + ex->req_body.total_out + ex->resp_body.total_in +
           ex->resp_body.total_out;
}

/* A body is moving, or should: from now the exchange is aborted when no byte of it moves
 * for proxy.stall-timeout (nginx's read and send timeouts). Raw streams have their own
 * idle timeout instead. */
static void ex_arm_stall(struct exchange *ex)
{
    if (ex->raw || !ex->srv->node.cfg->proxy_stall_timeout_ms) {
        event_del(ex->timer);
        return;
    }
    ex->stall_mode = true;
    ex->stall_progress = ex_progress(ex);
    ex->stalled_ms = 0;
    ex_arm(ex, stall_interval(ex));
}

static bool ex_upload_pending(const struct exchange *ex)
{
    return ex->req_has_body && !ex->req_sent && !ex->req_body.aborted;
}

static void ex_stall_check(struct exchange *ex)
{
    bool response = ex->head_sent && !pk_pipe_done(&ex->resp_body) && !ex->resp_body.aborted;
    bool upload = ex_upload_pending(ex);
    if (!upload && !response) {
        /* Nothing left to move; waiting for the head after the upload is proxy.timeout's. */
        if (!ex->head_sent)
            ex_arm_head_wait(ex);
        return;
    }
    uint64_t progress = ex_progress(ex);
    if (progress != ex->stall_progress) {
        ex->stall_progress = progress;
        ex->stalled_ms = 0;
        ex_arm(ex, stall_interval(ex));
        return;
    }
    ex->stalled_ms += stall_interval(ex);
    if (ex->stalled_ms < ex->srv->node.cfg->proxy_stall_timeout_ms) {
        ex_arm(ex, stall_interval(ex));
        return;
    }
    /* Who stopped: a full request pipe is the service not reading; a full response pipe
     * the client; an empty one the side that should be sending. */
    const char *who =
        response ? (pk_pipe_full(&ex->resp_body) ? "client not reading" : "service not sending")
                 : (pk_pipe_full(&ex->req_body) ? "service not reading" : "client not sending");
    ex->srv->loop.stalled++;
    snprintf(ex->error, sizeof(ex->error), "stalled: %s", who);
    PK_INFO("proxy",
            "stalled endpoint=%s client=%s path=%.200s: %s, no body byte moved for %llums "
            "(in=%llu out=%llu): aborted",
            ex->endpoint, ex->client, ex->req.path ? ex->req.path : "-", who,
            (unsigned long long)ex->stalled_ms, (unsigned long long)ex->req_body.total_in,
            (unsigned long long)ex->resp_body.total_in);
    ex->stall_mode = false;
    if (ex->us)
        pk_h2stream_reset(ex->us, NGHTTP2_CANCEL);
    if (!ex->req_body.eof)
        pk_pipe_abort(&ex->req_body);
    if (ex->head_sent)
        ex_abort_down(ex);
    else if (pk_pipe_full(&ex->req_body))
        pk_exchange_fail(ex, 504, "upstream timeout");
    else
        pk_exchange_fail(ex, 408, "request timeout");
}

static void ex_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct exchange *ex = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (ex->stall_mode) {
        ex_stall_check(ex);
        return;
    }
    if (ex->head_sent)
        return;
    if (ex->state_wait) {
        pk_cluster_port_state_timeout(ex);
        return;
    }
    if (ex->auth) {
        /* The JWKS fetch the verification waits for is the upstream that timed out. */
        PK_WARN("proxy", "token verification not done after %llums client=%s: 504",
                (unsigned long long)ex->srv->node.cfg->proxy_timeout_ms, ex->client);
        pk_auth_cancel(ex->auth);
        ex->auth = NULL;
        ex->timed_out = true;
        pk_exchange_fail(ex, 504, "upstream timeout");
        return;
    }
    PK_INFO("proxy", "upstream timeout endpoint=%s client=%s path=%s after=%llums", ex->endpoint,
            ex->client, ex->req.path ? ex->req.path : "-",
            (unsigned long long)ex->srv->node.cfg->proxy_timeout_ms);
    ex->timed_out = true;
    ex_unwait(ex);
    if (ex->us)
        pk_h2stream_reset(ex->us, NGHTTP2_CANCEL);
    pk_exchange_fail(ex, 504, "upstream timeout");
}

void pk_exchange_fail(struct exchange *ex, int status, const char *msg)
{
    pk_exchange_fail_hdr(ex, status, msg, NULL, NULL);
}

/* Answers from the proxy itself with a JSON body (an error, or a cluster state). */
void pk_exchange_reply(struct exchange *ex, int status, const char *body, size_t n,
                       const char *name, const char *value)
{
    if (!ex->down || ex->answered)
        return;
    /* The proxy answers instead of the service: whatever the service would still send
     * is not wanted (and must never become a second response). */
    if (ex->us) {
        pk_h2stream_reset(ex->us, NGHTTP2_CANCEL);
        pk_h2stream_set_sink(ex->us, NULL); /* DATA before the reset goes out is dropped */
    }
    if (ex->head_sent) {
        ex_abort_down(ex);
        return;
    }
    ex->answered = true;
    /* The failed upstream attempt may have aborted the pipe: start a fresh one. */
    pk_pipe_free(&ex->resp_body);
    pk_pipe_init(&ex->resp_body, PIPE_HWM);
    char len[24];
    snprintf(len, sizeof(len), "%zu", n);
    struct pk_head h;
    pk_head_init(&h);
    h.status = status;
    pk_hdrs_add_str(&h.hdrs, "content-type", "application/json");
    pk_hdrs_add_str(&h.hdrs, "content-length", len);
    if (name)
        pk_hdrs_add_str(&h.hdrs, name, value);
    pk_pipe_write(&ex->resp_body, body, n);
    pk_pipe_close(&ex->resp_body);
    ex_send_head(ex, &h, !ex->is_head);
    pk_head_free(&h);
}

void pk_exchange_fail_hdr(struct exchange *ex, int status, const char *msg, const char *name,
                          const char *value)
{
    if (!ex->error[0])
        pk_strcopy(ex->error, sizeof(ex->error), msg);
    size_t n;
    char *body = pk_json_error_body(msg, &n);
    pk_exchange_reply(ex, status, body, n, name, value);
    free(body);
}

static void ex_abort_down(struct exchange *ex)
{
    if (ex->down)
        ex->down->ops->abort(ex->down);
}

/* ex_establish and ex_send_head are the only ways a response head goes downstream, and
 * each sends at most one: a second head (an upstream answer racing the proxy's own error
 * answer) is dropped here, whoever asks. */
static void ex_establish(struct exchange *ex, struct pk_head *resp)
{
    if (ex->head_sent)
        return;
    ex->head_sent = true;
    ex->status = resp->status;
    event_del(ex->timer);
    if (ex->down)
        ex->down->ops->establish(ex->down, resp);
}

static void ex_send_head(struct exchange *ex, struct pk_head *resp, bool body)
{
    if (ex->head_sent)
        return;
    ex->head_sent = true;
    ex->status = resp->status;
    event_del(ex->timer);
    if (!ex->answered && (body || ex_upload_pending(ex)))
        ex_arm_stall(ex);
    if (ex->down)
        ex->down->ops->send_head(ex->down, resp, body);
}

static void us_on_head(struct pk_h2stream *s, void *ud)
{
    struct exchange *ex = ud;
    if (!ex->down || ex->timed_out || ex->head_sent)
        return;
    event_del(ex->timer);
    struct pk_head *h = pk_h2stream_head(s);
    struct pk_head resp;
    pk_head_init(&resp);
    resp.status = h->status;
    pk_hdrs_move(&resp.hdrs, &h->hdrs);
    pk_h1_strip_hop_by_hop(&resp.hdrs, false);
    if (pk_accesslog_wants_response_headers(ex->srv->loop.access))
        for (size_t i = 0; i < resp.hdrs.n; i++)
            pk_hdrs_add(&ex->resp_hdrs, resp.hdrs.v[i].name, resp.hdrs.v[i].nlen,
                        resp.hdrs.v[i].value, resp.hdrs.v[i].vlen);
    if (ex->raw && resp.status >= 200 && resp.status < 300) {
        ex_establish(ex, &resp);
        pk_head_free(&resp);
        return;
    }
    bool body = !(ex->is_head || resp.status == 204 || resp.status == 304 ||
                  (pk_h2stream_remote_ended(s) && pk_pipe_len(&ex->resp_body) == 0 &&
                   pk_hdrs_get(&resp.hdrs, "content-length") == NULL));
    if (!body && !ex->is_head && resp.status != 204 && resp.status != 304)
        pk_hdrs_set(&resp.hdrs, "content-length", "0");
    ex_send_head(ex, &resp, body);
    pk_head_free(&resp);
}

static void us_on_close(struct pk_h2stream *s, uint32_t code, void *ud)
{
    struct exchange *ex = ud;
    PK_UNUSED(s);
    ex->us = NULL;
    if (code != NGHTTP2_NO_ERROR && !ex->timed_out && ex->down) {
        if (!ex->head_sent && code == NGHTTP2_REFUSED_STREAM && !ex->retried &&
            ex->req_body.total_out == 0) {
            /* Refused before any body byte was taken: one retry on another tunnel. */
            PK_DEBUG("proxy", "stream refused endpoint=%s: retrying on another tunnel",
                     ex->endpoint);
            ex->retried = true;
            ex->peer_refused = ex->last_peer != NULL;
            pk_server_metrics_retry(ex);
            pk_pipe_free(&ex->resp_body);
            pk_pipe_init(&ex->resp_body, PIPE_HWM);
            pk_exchange_dispatch(ex);
            return;
        }
        PK_INFO("proxy", "upstream failed endpoint=%s client=%s code=%s head_sent=%d", ex->endpoint,
                ex->client, code == PK_H2_CONN_LOST ? "tunnel lost" : nghttp2_http2_strerror(code),
                ex->head_sent);
        pk_exchange_fail(ex, 502, "upstream unreachable");
    } else if (code == NGHTTP2_NO_ERROR && ex->down && !ex->req_body.eof) {
        /* The service answered without reading the whole request: the downstream h2
         * stream ends the same way. (HTTP/1.1 closes after the response instead.) */
        ex->down->ops->end_early(ex->down);
    }
    ex_maybe_free(ex);
}

/* The whole request body is on the upstream stream: proxy.timeout counts from here (the
 * upload itself was watched by the stall check). */
static void us_on_sent(struct pk_h2stream *s, void *ud)
{
    struct exchange *ex = ud;
    PK_UNUSED(s);
    ex->req_sent = true;
    if (!ex->head_sent && !ex->raw && !ex->answered)
        ex_arm_head_wait(ex);
}

static const struct pk_h2stream_cbs us_cbs = {
    .on_head = us_on_head, .on_close = us_on_close, .on_sent = us_on_sent};

/* Neither a local tunnel nor a peer can take the stream now (exists / pexists: the
 * endpoint has tunnels here / on a peer): wait for a slot, refuse a peer's stream, or
 * fail. */
static void ex_no_route(struct exchange *ex, bool exists, bool pexists)
{
    struct pk_server *srv = ex->srv;
    /* A draining node here or a peer sent the endpoint's tunnels away: wait for the
     * replacements (bounded by the move window and proxy.timeout). */
    if (!exists && !pexists && !ex->forwarded && pk_server_is_moving(srv, ex->endpoint))
        pexists = true;
    /* A peer refused the stream: it no longer has a tunnel for the endpoint, though our
     * view of it said so (its tunnel is moving, and the news has not reached us yet).
     * Nothing else has one now: treat the endpoint as moving, so that this request and the
     * next wait for the new tunnel within the move window instead of failing. */
    if (!exists && !pexists && ex->peer_refused && !ex->forwarded) {
        ex->peer_refused = false; /* once: when the window ends, the answer is 502 */
        pk_server_mark_moving(srv, ex->endpoint);
        pexists = true;
    }
    if (!exists && !pexists) {
        if (ex->forwarded && pk_end_takes_forwarded(ex->down) && !ex->head_sent) {
            /* The peer's view was stale: refused, so it can try another node. */
            PK_DEBUG("proxy", "forwarded stream for endpoint=%s: no local tunnel, refused",
                     ex->endpoint);
            ex_unwait(ex);
            ex->down->ops->refuse(ex->down);
            return;
        }
        ex_unwait(ex);
        pk_exchange_fail(ex, 502, ex->retried ? "upstream unreachable" : "no available upstreams");
        return;
    }
    if (ex->retried && !pexists) {
        /* The one retry has no other tunnel to go to. */
        pk_exchange_fail(ex, 502, "upstream unreachable");
        return;
    }
    /* Every tunnel is at its stream limit, or the peer link is coming up: wait for a
     * slot (PROTOCOL.md 1.5), up to proxy.timeout. */
    if (!ex->waiting) {
        ex->waiting = true;
        ex->wnext = srv->loop.waiting;
        srv->loop.waiting = ex;
    }
}

/* Opens the stream on the link to a peer node that holds the endpoint (a forwarded
 * stream, PROTOCOL.md 3). The forwarding fields go on this stream only: a retry may go to
 * a local tunnel, and a sidecar never sees the cluster secret. nghttp2 copies the
 * fields. */
static struct pk_h2stream *ex_forward(struct exchange *ex, struct pk_peer *peer)
{
    struct pk_server *srv = ex->srv;
    ex->last_peer = peer;
    ex->last_tunnel = NULL;
    struct pk_hdrs *h = &ex->req.hdrs;
    pk_hdrs_add_str(h, "piko-endpoint", ex->endpoint);
    pk_hdrs_add_str(h, "piko-forwarded-by", srv->node.node_id);
    if (srv->node.cfg->cluster_secret && *srv->node.cfg->cluster_secret) {
        char *auth = pk_xasprintf("Bearer %s", srv->node.cfg->cluster_secret);
        pk_hdrs_add_str(h, "piko-authorization", auth);
        free(auth);
    }
    struct pk_h2stream *us = pk_h2conn_request(
        pk_peer_link(peer), &ex->req, ex->req_has_body ? &ex->req_body : NULL, &us_cbs, ex);
    pk_hdrs_del(h, "piko-endpoint");
    pk_hdrs_del(h, "piko-forwarded-by");
    pk_hdrs_del(h, "piko-authorization");
    PK_DEBUG("proxy", "forwarding endpoint=%s to node=%s", ex->endpoint, pk_peer_node_id(peer));
    return us;
}

/* Opens the upstream stream on a local tunnel, or else on the link to a peer node that
 * holds the endpoint. A peer's own streams (ex->forwarded) only ever use local tunnels:
 * one hop at most. */
void pk_exchange_dispatch(struct exchange *ex)
{
    struct pk_server *srv = ex->srv;
    bool exists, pexists = false;
    struct tunnel *t =
        pk_upstream_pick(srv, ex->endpoint, &exists, ex->retried ? ex->last_tunnel : NULL);
    struct pk_peer *peer = NULL;
    if (!t && !ex->forwarded && srv->node.cluster)
        peer = pk_cluster_pick(srv->node.cluster, ex->endpoint, ex->retried ? ex->last_peer : NULL,
                               &pexists);
    if (!t && !peer) {
        ex_no_route(ex, exists, pexists);
        return;
    }
    ex_unwait(ex);
    if (t) {
        ex->last_tunnel = t;
        ex->last_peer = NULL;
        ex->us = pk_h2conn_request(t->h2, &ex->req, ex->req_has_body ? &ex->req_body : NULL,
                                   &us_cbs, ex);
        if (ex->us)
            t->served++;
        pk_strcopy(ex->via, sizeof(ex->via), t->peer);
        ex->via_peer = false;
    } else {
        ex->us = ex_forward(ex, peer);
        pk_strcopy(ex->via, sizeof(ex->via), pk_peer_node_id(peer));
        ex->via_peer = true;
    }
    if (!ex->us) {
        pk_exchange_fail(ex, 502, "upstream unreachable");
        return;
    }
    pk_server_metrics_dispatch(ex);
    pk_h2stream_set_sink(ex->us, &ex->resp_body);
    /* An upload is watched by the stall check; proxy.timeout starts when it is all on the
     * stream (us_on_sent), not before: a slow upload is not a slow service. */
    if (!ex->req_has_body)
        ex->req_sent = true;
    else if (!ex->raw && !ex->req_sent)
        ex_arm_stall(ex);
    if (ex->expect_continue && ex->down && ex->down->ops->send_continue) {
        /* The proxy answers 100 Continue itself once a tunnel is found (PROTOCOL.md 1.4). */
        ex->expect_continue = false;
        ex->down->ops->send_continue(ex->down);
    }
}

void pk_exchange_redispatch_all(struct pk_server *srv)
{
    pk_exchange_redispatch(srv, NULL);
}

/* Re-dispatches the waiting requests of endpoint (NULL: all of them). */
void pk_exchange_redispatch(struct pk_server *srv, const char *endpoint)
{
    struct exchange *ready = NULL;
    for (struct exchange **pp = &srv->loop.waiting; *pp;) {
        struct exchange *ex = *pp;
        if (!endpoint || strcmp(ex->endpoint, endpoint) == 0) {
            *pp = ex->wnext;
            ex->waiting = false;
            ex->wnext = ready;
            ready = ex;
        } else {
            pp = &ex->wnext;
        }
    }
    while (ready) {
        struct exchange *ex = ready;
        ready = ex->wnext;
        ex->wnext = NULL;
        pk_exchange_dispatch(ex);
    }
}

/* Routes the request and opens its upstream stream. claims: what the verified token
 * allows (proxy.auth), else NULL. */
static void ex_route(struct exchange *ex, struct pk_head *in, const struct pk_claims *claims)
{
    const char *msg = NULL;
    int status;
    if (ex->tcp) {
        const char *id = in->path + strlen(TCP_PREFIX);
        status = pk_endpoint_id_valid(id, strlen(id)) ? 0 : 400;
        msg = "invalid endpoint id";
        if (!status)
            pk_strcopy(ex->endpoint, sizeof(ex->endpoint), id);
    } else {
        status = pk_proxy_route(in, ex->endpoint, sizeof(ex->endpoint), &msg);
    }
    ex->is_head = in->method && strcmp(in->method, "HEAD") == 0;
    if (status) {
        snprintf(ex->endpoint, sizeof(ex->endpoint), "-");
        pk_exchange_fail(ex, status, msg);
        return;
    }
    if (claims && !pk_auth_allows(claims, ex->endpoint)) {
        pk_port_auth_not_permitted(ex->srv->node.proxy_auth);
        PK_INFO("proxy", "request refused endpoint=%s client=%s status=403 reason=%s", ex->endpoint,
                ex->client, pk_auth_result_str(PK_AUTH_ENDPOINT_NOT_PERMITTED));
        pk_exchange_fail(ex, 403, pk_auth_http_message(PK_AUTH_ENDPOINT_NOT_PERMITTED));
        return;
    }
    /* As downstream (PROTOCOL.md 1.2); a TCP tunnel's CONNECT is always http. */
    bool https = pk_server_tls_port(ex->srv, PK_PORT_PROXY) && !ex->tcp;
    ex->expect_continue =
        pk_proxy_prepare_request(&ex->req, in, ex->endpoint, https, ex->ip, ex->port);
    /* PROTOCOL.md 1.4: authorization belongs to the application unless it carried the
     * token of proxy.auth (x-piko-authorization is always removed). Only the field that
     * carried it goes (the first, as verified): others are the application's own
     * credentials. */
    if (ex->auth_from_authorization)
        pk_hdrs_del_first(&ex->req.hdrs, "authorization");
    if (ex->raw) {
        /* Extended CONNECT (PROTOCOL.md 1.2): the method becomes CONNECT, the upgrade
         * token :protocol. A TCP tunnel carries only the client address. */
        pk_proxy_make_raw(&ex->req, ex->token, ex->tcp, ex->endpoint);
    }
    if (!evtimer_pending(ex->timer, NULL)) {
        struct timeval tv = pk_ms_timeval(ex->srv->node.cfg->proxy_timeout_ms);
        event_add(ex->timer, &tv);
    }
    pk_exchange_dispatch(ex);
}

static void ex_verified(enum pk_auth_result res, const struct pk_claims *claims, const char *detail,
                        void *arg)
{
    struct exchange *ex = arg;
    ex->auth = NULL;
    if (res != PK_AUTH_OK) {
        int status = pk_auth_http_status(res);
        PK_INFO("proxy", "request refused client=%s path=%.200s status=%d reason=%s: %s",
                ex->client, ex->held.path ? ex->held.path : "-", status, pk_auth_result_str(res),
                detail);
        pk_exchange_fail_hdr(ex, status, pk_auth_http_message(res), "www-authenticate", "Bearer");
        return;
    }
    ex_route(ex, &ex->held, claims);
}

/* Starts an exchange whose downstream side is set up. With proxy.auth the request's
 * token is verified first (Go Piko's order: 401 before any routing answer), its head
 * waiting in ex->held; proxy.timeout bounds the wait. */
void pk_exchange_start(struct exchange *ex, struct pk_head *in)
{
    if (ex->cluster) {
        /* Peers' streams were verified by the node the client reached. */
        pk_cluster_port_start(ex, in);
        return;
    }
    pk_strcopy(ex->method, sizeof(ex->method), in->method ? in->method : "");
    if (!ex->srv->node.proxy_auth) {
        ex_route(ex, in, NULL);
        return;
    }
    ex->is_head = in->method && strcmp(in->method, "HEAD") == 0;
    /* Which of two tokens would count is anybody's guess (proxies in front may reorder
     * or merge them): refuse rather than pick one. */
    if (pk_hdrs_count(&in->hdrs, "x-piko-authorization") > 1) {
        snprintf(ex->endpoint, sizeof(ex->endpoint), "-");
        PK_INFO("proxy", "request refused client=%s status=400: duplicate x-piko-authorization",
                ex->client);
        pk_exchange_fail(ex, 400, "duplicate x-piko-authorization");
        return;
    }
    ex->held = *in;
    pk_head_init(in);
    struct timeval tv = pk_ms_timeval(ex->srv->node.cfg->proxy_timeout_ms);
    event_add(ex->timer, &tv);
    ex->auth = pk_port_auth_verify(ex->srv->node.proxy_auth, &ex->held.hdrs,
                                   &ex->auth_from_authorization, ex_verified, ex);
}
