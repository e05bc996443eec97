/* The proxy port: downstream HTTP/1.1 and h2c connections, and the exchange that joins a
 * downstream request to a stream on a sidecar's tunnel.
 *
 * An exchange has two sides. The downstream side is an HTTP/1.1 connection (struct
 * h1conn, one exchange at a time) or a stream of a downstream HTTP/2 connection; the
 * upstream side is a stream on a tunnel. Bodies move through two pipes owned by the
 * exchange (req_body: downstream -> tunnel, resp_body: tunnel -> downstream). Each side
 * detaches itself when it is done or gone; the exchange is freed when both have. Objects
 * are never freed from inside a pipe or nghttp2 callback of their own: connections close
 * through a deferred event. */
#include "base/base.h"
#include "base/log.h"
#include "cluster/cluster.h"
#include "http1/http1.h"
#include "net/net.h"
#include "net/tls.h"
#include "server/end.h"
#include "server/server_int.h"
#include "stream/bevpipe.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <json-c/json.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TCP_PREFIX     "/_piko/v1/tcp/"
#define CLUSTER_PREFIX "/_piko/v1/cluster/"
#define STATE_PATH     "/_piko/v1/cluster/state"
#define MAX_STATE_WAIT 60000
#define H2_PREFACE     "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2_PREFACE_LEN 24
#define PIPE_HWM       (256 * 1024)
#define OUT_HWM        (256 * 1024)

struct h1conn;
struct h2down;

/* Every downstream connection is on srv->conns, whatever its protocol. */
enum dconn_kind { DCONN_DETECT, DCONN_H1, DCONN_H2 };

struct dconn {
    struct pk_list link;
    enum dconn_kind kind;
    bool cluster; /* accepted on the cluster port: a peer node */
};

struct exchange {
    struct pk_server *srv;
    char endpoint[130];
    char client[80];    /* "ip:port" of the downstream client, for logs */
    struct pk_head req; /* the request as sent on the tunnel */
    struct pk_pipe req_body;
    struct pk_pipe resp_body;
    bool req_has_body;
    bool is_head;
    bool raw;       /* an upgrade or a TCP tunnel: an extended CONNECT stream */
    bool tcp;       /* /_piko/v1/tcp/{endpoint} */
    char token[64]; /* the upgrade token (:protocol) */
    bool expect_continue;
    bool cluster;    /* arrived on the cluster port (a peer's stream or a state call) */
    bool forwarded;  /* a peer's stream: local tunnels only (one hop) */
    bool state_wait; /* a state long poll waiting in srv->state_waiters */
    bool body_too_large;
    bool answered; /* the proxy answered itself (an error or a state): nothing more goes down */
    uint64_t state_after;
    /* upstream side */
    struct pk_h2stream *us;
    const struct tunnel *last_tunnel;
    const struct pk_peer *last_peer; /* compared only: the peer of the failed attempt */
    bool retried;
    bool timed_out;
    /* downstream side: NULL once it is done or gone (ex_down_gone) */
    struct pk_end *down;
    bool head_sent;
    bool req_sent; /* the whole request body went onto the upstream stream */
    int status;
    /* The one timer (ex_timer_cb): proxy.timeout while no body moves and no response head
     * came (routing, a slot, the wait after the upload); the stall check while a body
     * moves. */
    struct event *timer;
    bool stall_mode;
    uint64_t stall_progress; /* body bytes moved, at the last check */
    uint64_t stalled_ms;     /* how long nothing moved */
    bool waiting;
    struct exchange *wnext;
    uint64_t start_ms;
    /* proxy.auth: the request head waits in held while its token is verified */
    struct pk_auth_req *auth;
    struct pk_head held;
    bool auth_from_authorization; /* the token came from authorization: not forwarded */
    char ip[64];
    uint16_t port;
};

struct h1conn {
    struct dconn dc;
    struct pk_end end; /* the downstream end of the current exchange */
    struct pk_server *srv;
    struct bufferevent *bev;
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

struct h2down {
    struct dconn dc;
    struct pk_server *srv;
    struct pk_h2conn *h2;
    char ip[64];
    uint16_t port;
};

static void ex_dispatch(struct exchange *ex);
static void ex_fail(struct exchange *ex, int status, const char *msg);
static void h1_kick(struct h1conn *hc);
static void h1_close(struct h1conn *hc, bool abort);

/* ---- exchange ------------------------------------------------------------------------ */

static void ex_timer_cb(evutil_socket_t fd, short what, void *arg);
static void ex_reply_state(struct exchange *ex);

static struct exchange *ex_new(struct pk_server *srv, const char *ip, uint16_t port)
{
    struct exchange *ex = pk_xcalloc(1, sizeof(*ex));
    ex->srv = srv;
    pk_head_init(&ex->req);
    pk_pipe_init(&ex->req_body, PIPE_HWM);
    pk_pipe_init(&ex->resp_body, PIPE_HWM);
    snprintf(ex->client, sizeof(ex->client), strchr(ip, ':') ? "[%s]:%u" : "%s:%u", ip, port);
    snprintf(ex->ip, sizeof(ex->ip), "%s", ip);
    ex->port = port;
    pk_head_init(&ex->held);
    ex->timer = pk_xevent_new(srv->base, -1, 0, ex_timer_cb, ex);
    ex->start_ms = pk_now_ms();
    srv->nexchanges++;
    return ex;
}

static void ex_unwait(struct exchange *ex)
{
    if (ex->state_wait) {
        for (struct exchange **pp = &ex->srv->state_waiters; *pp; pp = &(*pp)->wnext) {
            if (*pp == ex) {
                *pp = ex->wnext;
                break;
            }
        }
        ex->state_wait = false;
        return;
    }
    if (!ex->waiting)
        return;
    for (struct exchange **pp = &ex->srv->waiting; *pp; pp = &(*pp)->wnext) {
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
    pk_head_free(&ex->held);
    PK_DEBUG("proxy",
             "done endpoint=%s client=%s method=%s path=%s status=%d ms=%llu in=%llu out=%llu",
             ex->endpoint, ex->client, ex->req.method ? ex->req.method : "-",
             ex->req.path ? ex->req.path : "-", ex->status,
             (unsigned long long)(pk_now_ms() - ex->start_ms),
             (unsigned long long)ex->req_body.total_in, (unsigned long long)ex->resp_body.total_in);
    event_free(ex->timer);
    pk_head_free(&ex->req);
    pk_pipe_free(&ex->req_body);
    pk_pipe_free(&ex->resp_body);
    free(ex);
    srv->nexchanges--;
    pk_server_check_drained(srv);
}

/* The downstream end is done or gone: it is never called again, and the upstream stream
 * is cancelled unless both bodies were complete. */
static void ex_down_gone(struct exchange *ex)
{
    ex->down = NULL;
    if (ex->us && !(ex->resp_body.eof && ex->req_body.eof))
        pk_h2stream_reset(ex->us, NGHTTP2_CANCEL);
    ex_maybe_free(ex);
}

static void ex_fail(struct exchange *ex, int status, const char *msg);
static void ex_abort_down(struct exchange *ex);

static void ex_arm(struct exchange *ex, uint64_t ms)
{
    struct timeval tv = pk_ms_timeval(ms);
    event_add(ex->timer, &tv);
}

/* proxy.timeout: the wait for the response head from now. */
static void ex_arm_head_wait(struct exchange *ex)
{
    ex->stall_mode = false;
    ex_arm(ex, ex->srv->cfg->proxy_timeout_ms);
}

static uint64_t stall_interval(const struct exchange *ex)
{
    return PK_MAX(ex->srv->cfg->proxy_stall_timeout_ms / 4, (uint64_t)50);
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
    if (ex->raw || !ex->srv->cfg->proxy_stall_timeout_ms) {
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
    if (ex->stalled_ms < ex->srv->cfg->proxy_stall_timeout_ms) {
        ex_arm(ex, stall_interval(ex));
        return;
    }
    /* Who stopped: a full request pipe is the service not reading; a full response pipe
     * the client; an empty one the side that should be sending. */
    const char *who =
        response ? (pk_pipe_full(&ex->resp_body) ? "client not reading" : "service not sending")
                 : (pk_pipe_full(&ex->req_body) ? "service not reading" : "client not sending");
    ex->srv->stalled++;
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
        ex_fail(ex, 504, "upstream timeout");
    else
        ex_fail(ex, 408, "request timeout");
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
        ex_unwait(ex);
        ex_reply_state(ex);
        return;
    }
    if (ex->auth) {
        /* The JWKS fetch the verification waits for is the upstream that timed out. */
        PK_WARN("proxy", "token verification not done after %llums client=%s: 504",
                (unsigned long long)ex->srv->cfg->proxy_timeout_ms, ex->client);
        pk_auth_cancel(ex->auth);
        ex->auth = NULL;
        ex_fail(ex, 504, "upstream timeout");
        return;
    }
    PK_INFO("proxy", "upstream timeout endpoint=%s client=%s path=%s after=%llums", ex->endpoint,
            ex->client, ex->req.path ? ex->req.path : "-",
            (unsigned long long)ex->srv->cfg->proxy_timeout_ms);
    ex->timed_out = true;
    ex_unwait(ex);
    if (ex->us)
        pk_h2stream_reset(ex->us, NGHTTP2_CANCEL);
    ex_fail(ex, 504, "upstream timeout");
}

/* Sends the response head downstream; the body (if any) follows from resp_body. */
static void ex_send_head(struct exchange *ex, struct pk_head *resp, bool body);

/* Answers with a JSON error (PROTOCOL.md 4), or aborts the downstream side when a
 * response head was already sent (never a silently short body). */
static void ex_fail_hdr(struct exchange *ex, int status, const char *msg, const char *name,
                        const char *value);

static void ex_fail(struct exchange *ex, int status, const char *msg)
{
    ex_fail_hdr(ex, status, msg, NULL, NULL);
}

/* Answers from the proxy itself with a JSON body (an error, or a cluster state). */
static void ex_reply(struct exchange *ex, int status, const char *body, size_t n, const char *name,
                     const char *value)
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

static void ex_fail_hdr(struct exchange *ex, int status, const char *msg, const char *name,
                        const char *value)
{
    size_t n;
    char *body = pk_json_error_body(msg, &n);
    ex_reply(ex, status, body, n, name, value);
    free(body);
}

static void ex_establish(struct exchange *ex, struct pk_head *resp);

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
            pk_pipe_free(&ex->resp_body);
            pk_pipe_init(&ex->resp_body, PIPE_HWM);
            ex_dispatch(ex);
            return;
        }
        PK_INFO("proxy", "upstream failed endpoint=%s client=%s code=%s head_sent=%d", ex->endpoint,
                ex->client, code == PK_H2_CONN_LOST ? "tunnel lost" : nghttp2_http2_strerror(code),
                ex->head_sent);
        ex_fail(ex, 502, "upstream unreachable");
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

/* Opens the upstream stream on a local tunnel, or else on the link to a peer node that
 * holds the endpoint (a forwarded stream, PROTOCOL.md 3). A peer's own streams
 * (ex->forwarded) only ever use local tunnels: one hop at most. */
static void ex_dispatch(struct exchange *ex)
{
    struct pk_server *srv = ex->srv;
    bool exists, pexists = false;
    struct tunnel *t =
        pk_upstream_pick(srv, ex->endpoint, &exists, ex->retried ? ex->last_tunnel : NULL);
    struct pk_peer *peer = NULL;
    if (!t && !ex->forwarded && srv->cluster)
        peer = pk_cluster_pick(srv->cluster, ex->endpoint, ex->retried ? ex->last_peer : NULL,
                               &pexists);
    if (!t && !peer) {
        /* A draining node here or a peer sent the endpoint's tunnels away: wait for the
         * replacements (bounded by the move window and proxy.timeout). */
        if (!exists && !pexists && !ex->forwarded && pk_server_is_moving(srv, ex->endpoint))
            pexists = true;
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
            ex_fail(ex, 502, ex->retried ? "upstream unreachable" : "no available upstreams");
            return;
        }
        if (ex->retried && !pexists) {
            /* The one retry has no other tunnel to go to. */
            ex_fail(ex, 502, "upstream unreachable");
            return;
        }
        /* Every tunnel is at its stream limit, or the peer link is coming up: wait for a
         * slot (PROTOCOL.md 1.5), up to proxy.timeout. */
        if (!ex->waiting) {
            ex->waiting = true;
            ex->wnext = srv->waiting;
            srv->waiting = ex;
        }
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
    } else {
        /* The forwarding fields go on this stream only: a retry may go to a local tunnel,
         * and a sidecar never sees the cluster secret. nghttp2 copies the fields. */
        ex->last_peer = peer;
        ex->last_tunnel = NULL;
        struct pk_hdrs *h = &ex->req.hdrs;
        pk_hdrs_add_str(h, "piko-endpoint", ex->endpoint);
        pk_hdrs_add_str(h, "piko-forwarded-by", srv->node_id);
        if (srv->cfg->cluster_secret && *srv->cfg->cluster_secret) {
            char *auth = pk_xasprintf("Bearer %s", srv->cfg->cluster_secret);
            pk_hdrs_add_str(h, "piko-authorization", auth);
            free(auth);
        }
        ex->us = pk_h2conn_request(pk_peer_link(peer), &ex->req,
                                   ex->req_has_body ? &ex->req_body : NULL, &us_cbs, ex);
        pk_hdrs_del(h, "piko-endpoint");
        pk_hdrs_del(h, "piko-forwarded-by");
        pk_hdrs_del(h, "piko-authorization");
        PK_DEBUG("proxy", "forwarding endpoint=%s to node=%s", ex->endpoint, pk_peer_node_id(peer));
    }
    if (!ex->us) {
        ex_fail(ex, 502, "upstream unreachable");
        return;
    }
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

void pk_proxy_retry_waiting(struct pk_server *srv)
{
    pk_proxy_slot_free(srv, NULL);
}

/* Re-dispatches the waiting requests of endpoint (NULL: all of them). */
void pk_proxy_slot_free(struct pk_server *srv, const char *endpoint)
{
    struct exchange *ready = NULL;
    for (struct exchange **pp = &srv->waiting; *pp;) {
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
        ex_dispatch(ex);
    }
}

/* RFC 3986 3.2.2-3.2.3: a reg-name or IPv4 address (unreserved, pct-encoded, sub-delims)
 * or an [IP-literal], then an optional :port of digits. No userinfo, no whitespace. */
static bool authority_valid(const char *a)
{
    const char *p = a;
    if (*p == '[') {
        const char *end = strchr(p, ']');
        if (!end || end == p + 1)
            return false;
        for (const char *q = p + 1; q < end; q++)
            if (!strchr("0123456789abcdefABCDEF:.", *q) && !(*q >= 'a' && *q <= 'z') &&
                !(*q >= 'A' && *q <= 'Z') && *q != '%' && *q != '_' && *q != '~' && *q != '-')
                return false;
        p = end + 1;
    } else {
        for (; *p && *p != ':'; p++) {
            unsigned char c = (unsigned char)*p;
            bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      strchr("-._~%!$&'()*+,;=", c);
            if (!ok || c == '\0')
                return false;
        }
        if (p == a)
            return false;
    }
    if (*p == '\0')
        return true;
    if (*p != ':')
        return false;
    for (p++; *p; p++)
        if (*p < '0' || *p > '9')
            return false;
    return true;
}

/* An origin-form target (RFC 9112 3.2.1: it starts with '/'; '*' only with OPTIONS),
 * without whitespace, control characters or a fragment: anything else would reach the
 * service as something it may read differently. */
static bool target_valid(const char *method, const char *path)
{
    if (!path || !*path)
        return false;
    if (strcmp(path, "*") == 0)
        return method && strcmp(method, "OPTIONS") == 0;
    if (path[0] != '/')
        return false;
    for (const unsigned char *p = (const unsigned char *)path; *p; p++)
        if (*p <= 0x20 || *p == 0x7f || *p == '#')
            return false;
    return true;
}

/* Chooses the endpoint (PROTOCOL.md 4): x-piko-endpoint, x-endpoint-id, then the first
 * label of a Host that has a dot and is not an IP literal. The target and the authority
 * are checked first (400 "invalid request target" / "invalid host"). Returns 0 or an HTTP
 * status. */
int pk_proxy_route(const struct pk_head *req, char *out, size_t outlen, const char **msg)
{
    bool connect = req->method && strcmp(req->method, "CONNECT") == 0;
    if (!connect && !target_valid(req->method, req->path)) {
        *msg = "invalid request target";
        return 400;
    }
    if (req->authority && !authority_valid(req->authority)) {
        *msg = "invalid host";
        return 400;
    }
    const char *id = pk_hdrs_get(&req->hdrs, "x-piko-endpoint");
    if (!id)
        id = pk_hdrs_get(&req->hdrs, "x-endpoint-id");
    size_t len = id ? strlen(id) : 0;
    if (!id && req->authority) {
        const char *host = req->authority;
        char buf[256];
        struct in6_addr a6;
        size_t hlen = strcspn(host, ":");
        if (host[0] == '[' || hlen >= sizeof(buf)) {
            host = NULL;
        } else {
            memcpy(buf, host, hlen);
            buf[hlen] = '\0';
            if (!strchr(buf, '.') || inet_pton(AF_INET, buf, &a6) == 1)
                host = NULL;
        }
        if (host) {
            id = host;
            len = strcspn(host, ".");
        }
    }
    if (!id) {
        *msg = "missing endpoint id";
        return 400;
    }
    if (!pk_endpoint_id_valid(id, len)) {
        *msg = "invalid endpoint id";
        return 400;
    }
    snprintf(out, outlen, "%.*s", (int)len, id);
    return 0;
}

/* Builds the request sent on the tunnel from the downstream one (PROTOCOL.md 1.4). */
static void prepare_request(struct exchange *ex, struct pk_head *in, const char *ip, uint16_t port)
{
    struct pk_head *r = &ex->req;
    r->method = in->method;
    in->method = NULL;
    r->path = in->path ? in->path : pk_xstrdup("/");
    in->path = NULL;
    /* As downstream (PROTOCOL.md 1.2); a TCP tunnel's CONNECT is always http. */
    bool https = pk_server_tls_port(ex->srv, PK_PORT_PROXY) && !ex->tcp;
    r->scheme = pk_xstrdup(https ? "https" : "http");
    const char *host = in->authority ? in->authority : pk_hdrs_get(&in->hdrs, "host");
    r->authority = pk_xstrdup(host ? host : ex->endpoint);
    pk_hdrs_move(&r->hdrs, &in->hdrs);
    ex->expect_continue = pk_hdrs_get(&r->hdrs, "expect") != NULL &&
                          pk_strcaseeq(pk_hdrs_get(&r->hdrs, "expect"), "100-continue");
    pk_h1_strip_hop_by_hop(&r->hdrs, true);
    pk_hdrs_del(&r->hdrs, "expect");
    pk_hdrs_del(&r->hdrs, "x-piko-authorization");
    pk_hdrs_del_prefix(&r->hdrs, "piko-");
    const char *xff = pk_hdrs_get(&r->hdrs, "x-forwarded-for");
    char *v = xff ? pk_xasprintf("%s, %s", xff, ip) : pk_xstrdup(ip);
    pk_hdrs_set(&r->hdrs, "x-forwarded-for", v);
    free(v);
    pk_hdrs_set(&r->hdrs, "x-forwarded-proto", https ? "https" : "http");
    pk_hdrs_set(&r->hdrs, "x-forwarded-host", r->authority);
    char addr[96];
    snprintf(addr, sizeof(addr), strchr(ip, ':') ? "[%s]:%u" : "%s:%u", ip, port);
    pk_hdrs_add_str(&r->hdrs, "piko-client-addr", addr);
}

/* ---- the cluster port: peers' streams and the routing state ---------------------------- */

/* PROTOCOL.md 3: "Bearer <cluster secret>", compared in constant time. Peer streams carry
 * it in piko-authorization (their authorization field belongs to the application); state
 * calls may use authorization. */
static bool secret_ok(struct pk_server *srv, const struct pk_hdrs *h, bool allow_authorization,
                      const char **why)
{
    const char *secret = srv->cfg->cluster_secret;
    if (!secret || !*secret)
        return true;
    /* With cluster mTLS every connection here presented a certificate signed by
     * cluster.tls.client-cas: it replaces the secret (PROTOCOL.md 3). */
    if (pk_tls_server_mtls(pk_server_tls_port(srv, PK_PORT_CLUSTER)))
        return true;
    const char *v = pk_hdrs_get(h, "piko-authorization");
    if (!v && allow_authorization)
        v = pk_hdrs_get(h, "authorization");
    if (!v) {
        *why = "missing cluster secret";
        return false;
    }
    *why = "invalid cluster secret";
    if (strncasecmp(v, "Bearer ", 7) != 0)
        return false;
    const char *tok = v + 7;
    size_t tl = strlen(tok), sl = strlen(secret);
    unsigned char diff = tl != sl;
    for (size_t i = 0; i < sl; i++)
        diff |= (unsigned char)(secret[i] ^ (i < tl ? tok[i] : 0));
    return diff == 0;
}

static void ex_reply_state(struct exchange *ex)
{
    struct json_object *o = pk_server_state_json(ex->srv, true);
    const char *txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    ex_reply(ex, 200, txt, strlen(txt), NULL, NULL);
    json_object_put(o);
}

static bool query_u64(const char *query, const char *key, uint64_t *out, bool duration)
{
    size_t kl = strlen(key);
    for (const char *q = query; q && *q; q = strchr(q, '&') ? strchr(q, '&') + 1 : NULL) {
        if (strncmp(q, key, kl) != 0 || q[kl] != '=')
            continue;
        char buf[32];
        size_t n = strcspn(q + kl + 1, "&");
        if (n == 0 || n >= sizeof(buf))
            return false;
        memcpy(buf, q + kl + 1, n);
        buf[n] = '\0';
        if (duration)
            return pk_parse_duration(buf, out) == 0;
        char *end;
        unsigned long long v = strtoull(buf, &end, 10);
        *out = v;
        return *end == '\0' && buf[0] >= '0' && buf[0] <= '9';
    }
    return false;
}

/* GET /_piko/v1/cluster/state[?after=V&wait=D]: now, or once the version exceeds V. */
static void ex_state_request(struct exchange *ex, const char *path)
{
    struct pk_server *srv = ex->srv;
    const char *q = strchr(path, '?');
    uint64_t after = 0, wait = 0;
    bool has_after = q && query_u64(q + 1, "after", &after, false);
    if (q && !query_u64(q + 1, "wait", &wait, true))
        wait = 0;
    if (!has_after || srv->state_version > after || wait == 0 || srv->cluster_closing) {
        ex_reply_state(ex);
        return;
    }
    wait = PK_MIN(wait, (uint64_t)MAX_STATE_WAIT);
    ex->state_wait = true;
    ex->state_after = after;
    ex->wnext = srv->state_waiters;
    srv->state_waiters = ex;
    struct timeval tv = pk_ms_timeval(wait);
    event_add(ex->timer, &tv);
}

void pk_proxy_state_changed(struct pk_server *srv)
{
    struct exchange *list = srv->state_waiters;
    srv->state_waiters = NULL;
    while (list) {
        struct exchange *ex = list;
        list = ex->wnext;
        ex->wnext = NULL;
        ex->state_wait = false;
        if (srv->state_version > ex->state_after || srv->cluster_closing) {
            event_del(ex->timer);
            ex_reply_state(ex);
        } else {
            ex->state_wait = true;
            ex->wnext = srv->state_waiters;
            srv->state_waiters = ex;
        }
    }
}

/* A request on the cluster port: a state call, or a stream a peer forwards to one of our
 * tunnels, taken as it comes (the peer already prepared it) minus the forwarding fields. */
static void ex_start_cluster(struct exchange *ex, struct pk_head *in)
{
    struct pk_server *srv = ex->srv;
    const char *path = in->path ? in->path : "";
    bool control = strncmp(path, CLUSTER_PREFIX, strlen(CLUSTER_PREFIX)) == 0;
    const char *why = NULL;
    ex->is_head = in->method && strcmp(in->method, "HEAD") == 0;
    snprintf(ex->endpoint, sizeof(ex->endpoint), "-");
    if (!secret_ok(srv, &in->hdrs, control, &why)) {
        PK_WARN("cluster", "refused request from %s on the cluster port: %s", ex->client, why);
        ex_fail(ex, 401, why);
        return;
    }
    if (control) {
        size_t plen = strcspn(path, "?");
        if (plen != strlen(STATE_PATH) || strncmp(path, STATE_PATH, plen) != 0) {
            ex_fail(ex, 404, "not found");
        } else if (strcmp(in->method, "GET") != 0 && !ex->is_head) {
            ex_fail_hdr(ex, 405, "method not allowed", "allow", "GET");
        } else {
            ex_state_request(ex, path);
        }
        return;
    }
    const char *ep = pk_hdrs_get(&in->hdrs, "piko-endpoint");
    /* HTTP/1.1 on the cluster port takes state calls only (peer streams are HTTP/2). */
    bool h2 = pk_end_takes_forwarded(ex->down);
    if (!h2 || !ep || !pk_hdrs_get(&in->hdrs, "piko-forwarded-by")) {
        ex_fail(ex, h2 ? 400 : 404, h2 ? "not a forwarded request" : "not found");
        return;
    }
    if (!pk_endpoint_id_valid(ep, strlen(ep))) {
        ex_fail(ex, 400, "invalid endpoint id");
        return;
    }
    snprintf(ex->endpoint, sizeof(ex->endpoint), "%s", ep);
    PK_DEBUG("cluster", "forwarded stream endpoint=%s from node=%s", ex->endpoint,
             pk_hdrs_get(&in->hdrs, "piko-forwarded-by"));
    ex->forwarded = true;
    struct pk_head *r = &ex->req;
    r->method = in->method;
    r->path = in->path;
    r->scheme = in->scheme;
    r->authority = in->authority;
    r->protocol = in->protocol;
    in->method = in->path = in->scheme = in->authority = in->protocol = NULL;
    pk_hdrs_move(&r->hdrs, &in->hdrs);
    pk_hdrs_del(&r->hdrs, "piko-authorization");
    pk_hdrs_del(&r->hdrs, "piko-endpoint");
    pk_hdrs_del(&r->hdrs, "piko-forwarded-by");
    struct timeval tv = pk_ms_timeval(srv->cfg->proxy_timeout_ms);
    event_add(ex->timer, &tv);
    ex_dispatch(ex);
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
            snprintf(ex->endpoint, sizeof(ex->endpoint), "%s", id);
    } else {
        status = pk_proxy_route(in, ex->endpoint, sizeof(ex->endpoint), &msg);
    }
    ex->is_head = in->method && strcmp(in->method, "HEAD") == 0;
    if (status) {
        snprintf(ex->endpoint, sizeof(ex->endpoint), "-");
        ex_fail(ex, status, msg);
        return;
    }
    if (claims && !pk_auth_allows(claims, ex->endpoint)) {
        pk_port_auth_not_permitted(ex->srv->proxy_auth);
        PK_INFO("proxy", "request refused endpoint=%s client=%s status=403 reason=%s", ex->endpoint,
                ex->client, pk_auth_result_str(PK_AUTH_ENDPOINT_NOT_PERMITTED));
        ex_fail(ex, 403, pk_auth_http_message(PK_AUTH_ENDPOINT_NOT_PERMITTED));
        return;
    }
    prepare_request(ex, in, ex->ip, ex->port);
    /* PROTOCOL.md 1.4: authorization belongs to the application unless it carried the
     * token of proxy.auth (x-piko-authorization is always removed). Only the field that
     * carried it goes (the first, as verified): others are the application's own
     * credentials. */
    if (ex->auth_from_authorization)
        pk_hdrs_del_first(&ex->req.hdrs, "authorization");
    if (ex->raw) {
        /* Extended CONNECT (PROTOCOL.md 1.2): the method becomes CONNECT, the upgrade
         * token :protocol. A TCP tunnel carries only the client address. */
        struct pk_head *r = &ex->req;
        pk_head_set(&r->method, "CONNECT", 7);
        pk_head_set(&r->protocol, ex->token, strlen(ex->token));
        if (ex->tcp) {
            char auth[160];
            snprintf(auth, sizeof(auth), "%s:0", ex->endpoint);
            pk_head_set(&r->authority, auth, strlen(auth));
            pk_head_set(&r->path, "/", 1);
            const char *ca = pk_hdrs_get(&r->hdrs, "piko-client-addr");
            char *addr = ca ? pk_xstrdup(ca) : NULL;
            pk_hdrs_free(&r->hdrs);
            if (addr) {
                pk_hdrs_add_str(&r->hdrs, "piko-client-addr", addr);
                free(addr);
            }
        }
        pk_hdrs_del(&r->hdrs, "content-length");
    }
    if (!evtimer_pending(ex->timer, NULL)) {
        struct timeval tv = pk_ms_timeval(ex->srv->cfg->proxy_timeout_ms);
        event_add(ex->timer, &tv);
    }
    ex_dispatch(ex);
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
        ex_fail_hdr(ex, status, pk_auth_http_message(res), "www-authenticate", "Bearer");
        return;
    }
    ex_route(ex, &ex->held, claims);
}

/* Starts an exchange whose downstream side is set up. With proxy.auth the request's
 * token is verified first (Go Piko's order: 401 before any routing answer), its head
 * waiting in ex->held; proxy.timeout bounds the wait. */
static void ex_start(struct exchange *ex, struct pk_head *in)
{
    if (ex->cluster) {
        /* Peers' streams were verified by the node the client reached. */
        ex_start_cluster(ex, in);
        return;
    }
    if (!ex->srv->proxy_auth) {
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
        ex_fail(ex, 400, "duplicate x-piko-authorization");
        return;
    }
    ex->held = *in;
    pk_head_init(in);
    struct timeval tv = pk_ms_timeval(ex->srv->cfg->proxy_timeout_ms);
    event_add(ex->timer, &tv);
    ex->auth = pk_port_auth_verify(ex->srv->proxy_auth, &ex->held.hdrs,
                                   &ex->auth_from_authorization, ex_verified, ex);
}

/* ---- downstream HTTP/1.1 --------------------------------------------------------------- */

static void h1_resp_readable(struct pk_pipe *p, void *consumer);

/* Moves response bytes into the socket's output while it is below its mark. */
static void h1_pump_response(struct h1conn *hc)
{
    struct exchange *ex = hc->ex;
    if (!ex || !ex->head_sent || hc->resp_done)
        return;
    struct pk_pipe *p = &ex->resp_body;
    struct evbuffer *out = bufferevent_get_output(hc->bev);
    if (p->aborted) {
        PK_INFO("proxy", "response aborted mid-body endpoint=%s client=%s: closing", ex->endpoint,
                ex->client);
        h1_close(hc, true);
        return;
    }
    if (!hc->resp_body_expected) {
        struct evbuffer *sink = evbuffer_new();
        pk_pipe_move(p, sink, pk_pipe_len(p)); /* bodies of HEAD/204/304 are dropped */
        evbuffer_free(sink);
    }
    if (pk_h1_pump_body(out, p, hc->chunked_out, OUT_HWM)) {
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

static void ex_abort_down(struct exchange *ex)
{
    if (ex->down)
        ex->down->ops->abort(ex->down);
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
    if (hc->srv->draining || (ex->req_has_body && !ex->req_body.eof))
        hc->keep_alive = false;
    if (!hc->keep_alive)
        pk_hdrs_set(&resp->hdrs, "connection", "close");
    else if (hc->parser.http_minor == 0)
        pk_hdrs_set(&resp->hdrs, "connection", "keep-alive");
    pk_h1_write_response_head(bufferevent_get_output(hc->bev), resp, hc->parser.http_minor);
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
    h1_close(hc, err != 0);
}

/* The sidecar accepted an upgrade or a TCP tunnel: answer 101 and turn the socket into a
 * raw byte stream joined to the exchange's pipes. */
static void h1_establish(struct h1conn *hc, struct exchange *ex, struct pk_head *resp)
{
    struct evbuffer *out = bufferevent_get_output(hc->bev);
    resp->status = 101;
    pk_hdrs_set(&resp->hdrs, "connection", "Upgrade");
    pk_hdrs_set(&resp->hdrs, "upgrade", ex->token);
    pk_h1_write_response_head(out, resp, 1);
    hc->resp_done = false;
    hc->bp = pk_bevpipe_new(hc->srv->base, hc->bev, &ex->req_body, &ex->resp_body,
                            !pk_bev_is_tls(hc->bev), OUT_HWM, h1_raw_done, hc);
    if (hc->srv->cfg->proxy_raw_idle_timeout_ms)
        pk_bevpipe_set_idle_timeout(hc->bp, hc->srv->cfg->proxy_raw_idle_timeout_ms);
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
    evbuffer_add_printf(bufferevent_get_output(hc->bev), "HTTP/1.1 100 Continue\r\n\r\n");
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
    ex_down_gone(ex);
}

static void h1_destroy(struct h1conn *hc)
{
    struct pk_server *srv = hc->srv;
    if (hc->bp) {
        /* Detach the bevpipe from the exchange's pipes before they can go away. Over TLS
         * a clean end keeps the socket for the close_notify of the lingering close. */
        struct bufferevent *tls = NULL;
        if (!hc->abort && pk_bev_is_tls(hc->bev))
            tls = pk_bevpipe_take_bev(hc->bp);
        else
            pk_bevpipe_free(hc->bp);
        hc->bp = NULL;
        hc->bev = tls;
    }
    h1_detach(hc);
    pk_list_remove(&hc->dc.link);
    if (hc->bev && hc->abort)
        bufferevent_free(hc->bev);
    else if (hc->bev)
        pk_bev_linger_close(hc->bev, &srv->lingers);
    /* else it belonged to the bevpipe, already freed */
    event_free(hc->kick_ev);
    pk_h1parser_free(&hc->parser);
    free(hc);
    srv->nconns--;
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
        bufferevent_get_output(hc->bev),
        "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %zu\r\n"
        "connection: close\r\n\r\n%s",
        status, pk_h1_reason(status), n, body);
    free(body);
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
    struct exchange *ex = ex_new(hc->srv, hc->ip, hc->port);
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
    uint64_t max_body = hc->srv->cfg->proxy_max_body_bytes;
    if (max_body && p->has_length && p->content_length > max_body) {
        hc->keep_alive = false;
        ex->body_too_large = true;
        ex_fail(ex, 413, "request body too large");
        return false;
    }
    if (hc->dc.cluster) {
        /* HTTP/1.1 on the cluster port: state calls only (peer streams are HTTP/2). */
        ex->cluster = true;
        if (p->upgrade)
            hc->keep_alive = false;
        ex_start(ex, &p->head);
        return false;
    }
    if (strcmp(p->head.method, "CONNECT") == 0) {
        /* A forward proxy's tunnel is not a Piko feature (TCP goes through
         * /_piko/v1/tcp/{endpoint}); same answer as over HTTP/2. */
        hc->keep_alive = false;
        ex_fail(ex, 405, "CONNECT is not supported");
        return false;
    }
    const char *path = p->head.path ? p->head.path : "";
    ex->tcp = strncmp(path, TCP_PREFIX, strlen(TCP_PREFIX)) == 0;
    if (ex->tcp && !(p->upgrade && pk_hdrs_has_token(&p->head.hdrs, "upgrade", "piko-tcp"))) {
        hc->keep_alive = false;
        ex_fail_hdr(ex, 426, "upgrade required", "upgrade", "piko-tcp");
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
            ex_fail(ex, 400, "bad upgrade token");
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
    ex_start(ex, &p->head);
    return false;
}

static void h1_on_body(struct pk_h1parser *p, const char *data, size_t len, void *ud)
{
    struct h1conn *hc = ud;
    PK_UNUSED(p);
    struct exchange *ex = hc->ex;
    if (!ex || ex->body_too_large)
        return;
    uint64_t max_body = hc->srv->cfg->proxy_max_body_bytes;
    if (max_body && !ex->raw && ex->req_body.total_in + len > max_body) {
        /* A chunked body over the limit: 413 if nothing was answered yet, and the
         * connection closes either way (the rest of the body is not read). */
        PK_INFO("proxy", "request body over %llu bytes endpoint=%s client=%s",
                (unsigned long long)max_body, ex->endpoint, ex->client);
        ex->body_too_large = true;
        hc->keep_alive = false;
        if (!ex->req_body.eof)
            pk_pipe_abort(&ex->req_body);
        if (ex->us)
            pk_h2stream_reset(ex->us, NGHTTP2_CANCEL);
        ex_fail(ex, 413, "request body too large");
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

static void set_timeout(struct bufferevent *bev, uint64_t ms)
{
    struct timeval tv = pk_ms_timeval(ms);
    bufferevent_set_timeouts(bev, ms ? &tv : NULL, NULL);
}

/* proxy.head-timeout bounds the whole head from its first byte, not the gaps between
 * bytes: a client trickling a byte a second (slowloris) gets 408 like a silent one. */
static int head_deadline(struct h1conn *hc)
{
    uint64_t now = pk_now_ms(), limit = hc->srv->cfg->proxy_head_timeout_ms;
    if (!hc->head_start_ms)
        hc->head_start_ms = now;
    if (now - hc->head_start_ms >= limit) {
        h1_reject(hc, 408, "request timeout");
        return -1;
    }
    set_timeout(hc->bev, limit - (now - hc->head_start_ms));
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
            if (!hc->keep_alive || hc->srv->draining) {
                h1_close(hc, false);
                return;
            }
            pk_h1parser_next(&hc->parser);
            set_timeout(hc->bev, evbuffer_get_length(in) ? hc->srv->cfg->proxy_head_timeout_ms
                                                         : hc->srv->cfg->proxy_idle_timeout_ms);
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
        size_t len = evbuffer_get_length(in);
        size_t chunk = PK_MIN(len, (size_t)65536);
        const char *data = (const char *)evbuffer_pullup(in, (ssize_t)chunk);
        bool had_ex = hc->ex != NULL;
        ssize_t n = pk_h1parser_feed(&hc->parser, data, chunk);
        if (n < 0) {
            if (had_ex || hc->ex) {
                PK_INFO("proxy", "bad request body client=%s:%u: %s", hc->ip, hc->port,
                        hc->parser.error_detail ? hc->parser.error_detail : "malformed");
                if (hc->ex && !hc->ex->head_sent)
                    ex_fail(hc->ex, 400, "malformed request");
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
        evbuffer_drain(in, (size_t)n);
        if (!hc->ex && !hc->parser.head_done && n > 0 && head_deadline(hc) != 0)
            return;
        if (n == 0 && !hc->parser.message_done)
            break;
    }
    bool want_read = !hc->closing && !hc->read_paused && !hc->parser.message_done;
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

static struct h1conn *h1_new(struct pk_server *srv, struct bufferevent *bev, const char *ip,
                             uint16_t port)
{
    struct h1conn *hc = pk_xcalloc(1, sizeof(*hc));
    hc->srv = srv;
    hc->bev = bev;
    snprintf(hc->ip, sizeof(hc->ip), "%s", ip);
    hc->port = port;
    hc->kick_ev = pk_xevent_new(srv->base, -1, 0, h1_kick_cb, hc);
    hc->end.ops = &h1_end_ops;
    pk_h1parser_init(&hc->parser, HTTP_REQUEST, srv->cfg->proxy_max_header_bytes, &h1_parser_cbs,
                     hc);
    hc->dc.kind = DCONN_H1;
    pk_list_insert(&srv->conns, &hc->dc.link);
    bufferevent_setcb(bev, h1_read, h1_write, h1_event, hc);
    bufferevent_setwatermark(bev, EV_WRITE, OUT_HWM / 2, 0);
    bufferevent_setwatermark(bev, EV_READ, 0, 256 * 1024);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    return hc;
}

/* ---- downstream HTTP/2 (h2c prior knowledge) ------------------------------------------- */

/* A downstream HTTP/2 stream: the end of one exchange, freed when the stream closes. */
struct h2s {
    struct pk_end end;
    struct pk_h2stream *s;
    struct exchange *ex;
};

static void h2s_send_head(struct pk_end *e, struct pk_head *resp, bool body)
{
    struct h2s *hs = PK_CONTAINER_OF(e, struct h2s, end);
    pk_h2stream_respond(hs->s, resp, body ? &hs->ex->resp_body : NULL);
}

static void h2s_establish(struct pk_end *e, struct pk_head *resp)
{
    struct h2s *hs = PK_CONTAINER_OF(e, struct h2s, end);
    /* RFC 8441: an HTTP/2 client sent no key, so it gets no accept (the sidecar
     * checked it). */
    pk_hdrs_del(&resp->hdrs, "sec-websocket-accept");
    resp->status = 200;
    pk_h2stream_respond(hs->s, resp, &hs->ex->resp_body);
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
    ex_down_gone(ex);
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
            (unsigned long long)ex->srv->cfg->proxy_max_body_bytes, ex->endpoint, ex->client);
    ex_fail(ex, 413, "request body too large");
    if (ex->down)
        ex->down->ops->end_early(ex->down);
}

static void h2d_on_stream(struct pk_h2conn *c, struct pk_h2stream *s, void *ud)
{
    struct h2down *d = ud;
    PK_UNUSED(c);
    struct exchange *ex = ex_new(d->srv, d->ip, d->port);
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
        ex_fail(ex, 431, "request header fields too large");
        pk_h2stream_end_early(s);
        return;
    }
    const char *cl = pk_hdrs_get(&in->hdrs, "content-length");
    uint64_t max_body = d->srv->cfg->proxy_max_body_bytes;
    if (!ex->cluster && max_body && cl && strtoull(cl, NULL, 10) > max_body) {
        ex_fail(ex, 413, "request body too large");
        pk_h2stream_end_early(s);
        return;
    }
    if (ex->cluster && in->method && strcmp(in->method, "CONNECT") == 0) {
        /* A peer forwards raw streams in the tunnel's form (PROTOCOL.md 1.2). */
        if (!in->protocol || strlen(in->protocol) >= sizeof(ex->token)) {
            ex_fail(ex, 400, "bad extended CONNECT");
            return;
        }
        snprintf(ex->token, sizeof(ex->token), "%s", in->protocol);
        ex->tcp = strcmp(in->protocol, "piko-tcp") == 0;
        ex->raw = true;
        ex->req_has_body = true;
    } else if (in->method && strcmp(in->method, "CONNECT") == 0) {
        /* RFC 8441 extended CONNECT: a WebSocket (or other protocol) to an HTTP endpoint,
         * or piko-tcp to /_piko/v1/tcp/{endpoint}. Plain CONNECT is not a proxy feature. */
        const char *path = in->path ? in->path : "";
        if (!in->protocol) {
            ex_fail(ex, 405, "CONNECT is not supported");
            return;
        }
        ex->tcp = strncmp(path, TCP_PREFIX, strlen(TCP_PREFIX)) == 0;
        if (ex->tcp && strcmp(in->protocol, "piko-tcp") != 0) {
            ex_fail(ex, 400, "the tcp path takes :protocol piko-tcp");
            return;
        }
        if (strlen(in->protocol) >= sizeof(ex->token)) {
            ex_fail(ex, 400, "bad upgrade token");
            return;
        }
        snprintf(ex->token, sizeof(ex->token), "%s", in->protocol);
        ex->raw = true;
        ex->req_has_body = true;
    }
    if (!ex->cluster && !ex->raw && max_body)
        pk_pipe_set_limit(&ex->req_body, max_body, h2_body_over_limit, ex);
    ex_start(ex, in);
}

static void h2d_on_close(struct pk_h2conn *c, const char *why, void *ud)
{
    struct h2down *d = ud;
    struct pk_server *srv = d->srv;
    PK_UNUSED(c);
    PK_DEBUG("proxy", "h2 connection closed client=%s:%u: %s", d->ip, d->port, why);
    pk_list_remove(&d->dc.link);
    free(d);
    srv->nconns--;
    pk_server_check_drained(srv);
}

static const struct pk_h2conn_cbs h2d_cbs = {.on_stream = h2d_on_stream, .on_close = h2d_on_close};

static void h2d_new(struct pk_server *srv, struct bufferevent *bev, const char *ip, uint16_t port,
                    bool cluster)
{
    struct h2down *d = pk_xcalloc(1, sizeof(*d));
    d->srv = srv;
    snprintf(d->ip, sizeof(d->ip), "%s", ip);
    d->port = port;
    char name[128];
    snprintf(name, sizeof(name), "%s/%s:%u", cluster ? "peer-in" : "downstream", ip, port);
    d->dc.kind = DCONN_H2;
    d->dc.cluster = cluster;
    pk_list_insert(&srv->conns, &d->dc.link);
    d->h2 =
        pk_h2conn_new(srv->base, bev, true, cluster ? &srv->cluster_settings : &srv->down_settings,
                      &h2d_cbs, d, name);
    if (!d->h2) {
        pk_list_remove(&d->dc.link);
        free(d);
        srv->nconns--;
    }
}

/* ---- accepting and protocol detection ------------------------------------------------- */

struct detect {
    struct dconn dc;
    struct pk_server *srv;
    struct bufferevent *bev;
    uint64_t first_ms; /* when its first byte arrived */
    char ip[64];
    uint16_t port;
};

static void detect_event(struct bufferevent *bev, short what, void *arg);

static void detect_read(struct bufferevent *bev, void *arg)
{
    struct detect *dt = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    size_t n = PK_MIN(len, (size_t)H2_PREFACE_LEN);
    const char *data = (const char *)evbuffer_pullup(in, (ssize_t)n);
    bool h2 = memcmp(data, H2_PREFACE, n) == 0;
    uint64_t now = pk_now_ms(), limit = dt->srv->cfg->proxy_head_timeout_ms;
    if (!dt->first_ms)
        dt->first_ms = now;
    if (h2 && n < H2_PREFACE_LEN) {
        /* Wait for the whole preface, within the head timeout from its first byte. */
        if (now - dt->first_ms >= limit)
            detect_event(bev, BEV_EVENT_TIMEOUT, dt);
        else
            set_timeout(bev, limit - (now - dt->first_ms));
        return;
    }
    struct detect d = *dt;
    pk_list_remove(&dt->dc.link);
    free(dt);
    bufferevent_set_timeouts(bev, NULL, NULL);
    if (h2) {
        h2d_new(d.srv, bev, d.ip, d.port, d.dc.cluster);
        return;
    }
    struct h1conn *hc = h1_new(d.srv, bev, d.ip, d.port);
    hc->dc.cluster = d.dc.cluster;
    hc->head_start_ms = d.first_ms;
    set_timeout(bev, d.srv->cfg->proxy_head_timeout_ms);
    h1_process(hc);
}

static void detect_event(struct bufferevent *bev, short what, void *arg)
{
    struct detect *dt = arg;
    PK_UNUSED(what);
    struct pk_server *srv = dt->srv;
    pk_list_remove(&dt->dc.link);
    free(dt);
    bufferevent_free(bev);
    srv->nconns--;
    pk_server_check_drained(srv);
}

/* Above proxy.max-connections a new connection is closed at once (counted, logged at
 * most once a second): the process keeps its descriptors and memory for the ones it has. */
bool pk_server_over_limit(struct pk_server *srv, evutil_socket_t fd, long long max, size_t n,
                          const char *what)
{
    if (max <= 0 || n < (size_t)max)
        return false;
    evutil_closesocket(fd);
    srv->refused_conns++;
    uint64_t now = pk_now_ms();
    if (now - srv->refused_log_ms >= 1000) {
        srv->refused_log_ms = now;
        PK_WARN("server",
                "%s connection limit (%lld) reached: new connections closed (%llu so far)", what,
                max, (unsigned long long)srv->refused_conns);
    }
    return true;
}

/* What is left of proxy.head-timeout, counted from accept_ms (at least 1 ms, so that a
 * timeout fires rather than none being set). */
static uint64_t head_left(struct pk_server *srv, uint64_t accept_ms)
{
    uint64_t limit = srv->cfg->proxy_head_timeout_ms, spent = pk_now_ms() - accept_ms;
    return spent < limit ? limit - spent : 1;
}

/* A new connection (already counted in nconns): with ALPN its protocol is known, else the
 * first bytes tell. Its first request head must arrive within proxy.head-timeout of
 * accept_ms, the TLS handshake included. */
static void conn_start(struct pk_server *srv, struct bufferevent *bev, const struct sockaddr *sa,
                       bool cluster, const char *alpn, uint64_t accept_ms)
{
    if (alpn) {
        char ip[64];
        uint16_t port;
        pk_sockaddr_ip(sa, ip, sizeof(ip), &port);
        if (strcmp(alpn, "h2") == 0) {
            h2d_new(srv, bev, ip, port, cluster);
            return;
        }
        struct h1conn *hc = h1_new(srv, bev, ip, port);
        hc->dc.cluster = cluster;
        hc->head_start_ms = accept_ms;
        set_timeout(bev, head_left(srv, accept_ms));
        return;
    }
    struct detect *dt = pk_xcalloc(1, sizeof(*dt));
    dt->dc.cluster = cluster;
    dt->srv = srv;
    pk_sockaddr_ip(sa, dt->ip, sizeof(dt->ip), &dt->port);
    dt->bev = bev;
    dt->dc.kind = DCONN_DETECT;
    dt->first_ms = accept_ms;
    pk_list_insert(&srv->conns, &dt->dc.link);
    set_timeout(bev, head_left(srv, accept_ms));
    bufferevent_setcb(bev, detect_read, NULL, detect_event, dt);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void tls_accepted(struct pk_server *srv, struct bufferevent *bev, const struct sockaddr *sa,
                         const char *alpn, uint64_t accept_ms, bool cluster)
{
    /* Failed, or the listener closed while the handshake ran: nothing new is served. */
    if (!bev || (cluster ? srv->cluster_closing : srv->drain_final)) {
        if (bev)
            bufferevent_free(bev);
        srv->nconns--;
        pk_server_check_drained(srv);
        return;
    }
    conn_start(srv, bev, sa, cluster, alpn, accept_ms);
}

static void proxy_tls_accepted(struct bufferevent *bev, const struct sockaddr *sa, const char *alpn,
                               uint64_t start_ms, void *arg)
{
    tls_accepted(arg, bev, sa, alpn, start_ms, false);
}

static void cluster_tls_accepted(struct bufferevent *bev, const struct sockaddr *sa,
                                 const char *alpn, uint64_t start_ms, void *arg)
{
    tls_accepted(arg, bev, sa, alpn, start_ms, true);
}

static void accept_conn(struct pk_server *srv, evutil_socket_t fd, struct sockaddr *sa,
                        bool cluster)
{
    if (!cluster &&
        pk_server_over_limit(srv, fd, srv->cfg->proxy_max_connections, srv->nconns, "proxy"))
        return;
    /* Counted from accept: a TLS handshake in flight holds a slot like a connection. */
    srv->nconns++;
    struct pk_tls_server *ts = pk_server_tls_port(srv, cluster ? PK_PORT_CLUSTER : PK_PORT_PROXY);
    if (ts) {
        pk_tls_accept(ts, fd, sa, srv->cfg->proxy_head_timeout_ms,
                      cluster ? cluster_tls_accepted : proxy_tls_accepted, srv);
        return;
    }
    pk_tune_socket(fd);
    struct bufferevent *bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        evutil_closesocket(fd);
        srv->nconns--;
        return;
    }
    conn_start(srv, bev, sa, cluster, NULL, pk_now_ms());
}

static void proxy_accept(evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    PK_UNUSED(salen);
    accept_conn(arg, fd, sa, false);
}

static void cluster_accept(evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    PK_UNUSED(salen);
    accept_conn(arg, fd, sa, true);
}

int pk_proxy_listen(struct pk_server *srv, char *err, size_t errlen)
{
    srv->proxy_l = pk_listener_new(srv->base, "proxy", srv->cfg->proxy_bind_addr, proxy_accept, srv,
                                   err, errlen);
    return srv->proxy_l ? 0 : PK_ERR_IO;
}

int pk_cluster_port_listen(struct pk_server *srv, char *err, size_t errlen)
{
    srv->cluster_l = pk_listener_new(srv->base, "cluster", srv->cfg->cluster_bind_addr,
                                     cluster_accept, srv, err, errlen);
    return srv->cluster_l ? 0 : PK_ERR_IO;
}

void pk_proxy_drain_all(struct pk_server *srv, bool cluster)
{
    struct pk_list *l, *next;
    for (l = srv->conns.next; l != &srv->conns; l = next) {
        next = l->next;
        struct dconn *dc = PK_CONTAINER_OF(l, struct dconn, link);
        if (dc->cluster != cluster)
            continue;
        if (dc->kind == DCONN_H2) {
            struct h2down *d = PK_CONTAINER_OF(dc, struct h2down, dc);
            pk_h2conn_drain(d->h2, pk_h2conn_last_stream_id(d->h2));
        } else if (dc->kind == DCONN_H1) {
            struct h1conn *hc = PK_CONTAINER_OF(dc, struct h1conn, dc);
            hc->keep_alive = false;
            if (!hc->ex)
                h1_close(hc, false);
        } else {
            /* Nothing was sent on it yet: close it like an idle keep-alive connection. */
            detect_event(PK_CONTAINER_OF(dc, struct detect, dc)->bev, BEV_EVENT_EOF,
                         PK_CONTAINER_OF(dc, struct detect, dc));
        }
    }
}

void pk_proxy_abort_all(struct pk_server *srv)
{
    struct pk_list *l, *next;
    for (l = srv->conns.next; l != &srv->conns; l = next) {
        next = l->next;
        struct dconn *dc = PK_CONTAINER_OF(l, struct dconn, link);
        if (dc->kind == DCONN_H2)
            pk_h2conn_close(PK_CONTAINER_OF(dc, struct h2down, dc)->h2, "shutting down");
        else if (dc->kind == DCONN_H1)
            h1_close(PK_CONTAINER_OF(dc, struct h1conn, dc), true);
        else
            detect_event(PK_CONTAINER_OF(dc, struct detect, dc)->bev, BEV_EVENT_EOF,
                         PK_CONTAINER_OF(dc, struct detect, dc));
    }
}
