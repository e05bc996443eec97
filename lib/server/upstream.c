/* The upstream port: sidecars' tunnel handshakes (PROTOCOL.md 1.1) and the registry of
 * tunnels by endpoint. */
#include "base/base.h"
#include "base/log.h"
#include "base/memtrim.h"
#include "http1/http1.h"
#include "net/net.h"
#include "net/tls.h"
#include "server/server_int.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UPGRADE_TOKEN   "piko-reverse-h2"
#define UPSTREAM_PREFIX "/piko/v1/upstream/"

/* ---- registry ---------------------------------------------------------------------- */

static unsigned hash_id(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % PK_EP_BUCKETS;
}

static struct endpoint *ep_find(struct pk_server *srv, const char *id)
{
    for (struct endpoint *e = srv->node.eps[hash_id(id)]; e; e = e->next)
        if (strcmp(e->id, id) == 0)
            return e;
    return NULL;
}

static void ep_add(struct pk_server *srv, struct tunnel *t)
{
    struct endpoint *e = ep_find(srv, t->endpoint_id);
    if (!e) {
        e = pk_xcalloc(1, sizeof(*e));
        e->id = pk_xstrdup(t->endpoint_id);
        unsigned b = hash_id(e->id);
        e->next = srv->node.eps[b];
        srv->node.eps[b] = e;
    }
    t->ep = e;
    t->next = e->tunnels;
    e->tunnels = t;
    e->ntunnels++;
    PK_INFO("upstream", "tunnel up endpoint=%s sidecar=%s peer=%s tunnels=%zu", e->id,
            t->sidecar_id, t->peer, e->ntunnels);
    pk_server_state_changed(srv);
}

/* Takes a tunnel out of routing at once (it may still finish its streams). */
static void ep_remove(struct pk_server *srv, struct tunnel *t)
{
    struct endpoint *e = t->ep;
    if (!e)
        return;
    for (struct tunnel **pp = &e->tunnels; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            e->ntunnels--;
            break;
        }
    }
    t->ep = NULL;
    pk_server_state_changed(srv);
    if (e->ntunnels == 0) {
        unsigned b = hash_id(e->id);
        for (struct endpoint **pp = &srv->node.eps[b]; *pp; pp = &(*pp)->next) {
            if (*pp == e) {
                *pp = e->next;
                break;
            }
        }
        free(e->id);
        free(e);
    }
}

struct tunnel *pk_upstream_pick(struct pk_server *srv, const char *endpoint, bool *exists,
                                const struct tunnel *avoid)
{
    struct endpoint *e = ep_find(srv, endpoint);
    *exists = e != NULL && e->ntunnels > 0;
    if (!e)
        return NULL;
    /* Fewest open streams; ties broken round-robin by starting after the cursor. */
    struct tunnel *best = NULL;
    size_t best_n = 0, i = 0, start = e->rr++ % e->ntunnels;
    for (size_t pass = 0; pass < 2; pass++) {
        i = 0;
        for (struct tunnel *t = e->tunnels; t; t = t->next, i++) {
            if ((pass == 0 && i < start) || (pass == 1 && i >= start))
                continue;
            if (t == avoid || !pk_h2conn_can_open(t->h2))
                continue;
            size_t n = pk_h2conn_nstreams(t->h2);
            if (!best || n < best_n) {
                best = t;
                best_n = n;
            }
        }
    }
    return best;
}

/* GOAWAY on every tunnel (PROTOCOL.md 1.5): no new stream, open ones finish. In a
 * cluster the endpoints are first marked as moving, so that requests for them wait for
 * the sidecars' replacement tunnels on other nodes (docs/architecture/cluster.md). */
void pk_upstream_drain_all(struct pk_server *srv)
{
    for (struct pk_list *l = srv->loop.tunnels.next; l != &srv->loop.tunnels; l = l->next) {
        struct tunnel *t = PK_CONTAINER_OF(l, struct tunnel, link);
        if (srv->node.moving_drain && t->ep)
            pk_server_mark_moving(srv, t->ep->id);
    }
    for (struct pk_list *l = srv->loop.tunnels.next; l != &srv->loop.tunnels; l = l->next)
        pk_h2conn_drain(PK_CONTAINER_OF(l, struct tunnel, link)->h2, 0);
}

struct json_object *pk_upstream_table_json(struct pk_server *srv, size_t *neps, size_t *ntunnels)
{
    struct json_object *o = json_object_new_object();
    *neps = *ntunnels = 0;
    for (size_t b = 0; b < PK_EP_BUCKETS; b++) {
        for (struct endpoint *e = srv->node.eps[b]; e; e = e->next) {
            json_object_object_add(o, e->id, json_object_new_int64((int64_t)e->ntunnels));
            (*neps)++;
            *ntunnels += e->ntunnels;
        }
    }
    return o;
}

size_t pk_upstream_count(struct pk_server *srv)
{
    size_t n = 0;
    for (struct pk_list *l = srv->loop.tunnels.next; l != &srv->loop.tunnels; l = l->next) {
        struct tunnel *t = PK_CONTAINER_OF(l, struct tunnel, link);
        if (t->ep && !t->shed)
            n++;
    }
    return n;
}

/* Rebalancing: tells one tunnel of the endpoint with the most local tunnels to reconnect
 * (GOAWAY); when it was the endpoint's last one here, the endpoint is marked moving. */
bool pk_upstream_shed_one(struct pk_server *srv)
{
    struct tunnel *best = NULL;
    size_t best_n = 0;
    for (struct pk_list *l = srv->loop.tunnels.next; l != &srv->loop.tunnels; l = l->next) {
        struct tunnel *t = PK_CONTAINER_OF(l, struct tunnel, link);
        if (!t->ep || t->shed || !pk_h2conn_is_ready(t->h2))
            continue;
        if (!best || t->ep->ntunnels > best_n) {
            best = t;
            best_n = t->ep->ntunnels;
        }
    }
    if (!best)
        return false;
    best->shed = true;
    PK_INFO("upstream", "rebalancing: asking sidecar=%s endpoint=%s to reconnect elsewhere",
            best->sidecar_id, best->endpoint_id);
    if (best->ep->ntunnels == 1)
        pk_server_mark_moving(srv, best->endpoint_id);
    pk_h2conn_drain(best->h2, 0);
    return true;
}

/* ---- tunnel connection ------------------------------------------------------------- */

static void tunnel_ready(struct pk_h2conn *c, void *ud)
{
    struct tunnel *t = ud;
    PK_UNUSED(c);
    if (t->srv->node.draining) {
        pk_h2conn_drain(t->h2, 0);
        return;
    }
    ep_add(t->srv, t);
    t->up = true;
    pk_server_metrics_tunnel_up(t);
    pk_exchange_redispatch(t->srv, t->endpoint_id);
}

static void tunnel_goaway(struct pk_h2conn *c, uint32_t error_code, void *ud)
{
    struct tunnel *t = ud;
    PK_UNUSED(c);
    PK_INFO("upstream", "tunnel draining (GOAWAY from sidecar) endpoint=%s sidecar=%s error=%u",
            t->endpoint_id, t->sidecar_id, error_code);
    t->goaway = true;
    ep_remove(t->srv, t);
}

static void tunnel_stream_closed(struct pk_h2conn *c, void *ud)
{
    struct tunnel *t = ud;
    PK_UNUSED(c);
    if (t->ep)
        pk_exchange_redispatch(t->srv, t->endpoint_id);
}

static void tunnel_closed(struct pk_h2conn *c, const char *why, void *ud)
{
    struct tunnel *t = ud;
    struct pk_server *srv = t->srv;
    PK_UNUSED(c);
    PK_INFO("upstream", "tunnel closed endpoint=%s sidecar=%s peer=%s streams_served=%llu: %s",
            t->endpoint_id, t->sidecar_id, t->peer, (unsigned long long)t->served, why);
    pk_server_metrics_tunnel_down(t, why);
    ep_remove(srv, t);
    pk_list_remove(&t->link);
    if (t->expiry_ev)
        event_free(t->expiry_ev);
    free(t->endpoint_id);
    free(t->sidecar_id);
    free(t);
    srv->loop.ntunnels_open--;
    pk_memtrim_poke(srv->loop.memtrim);
    pk_server_check_drained(srv);
}

static const struct pk_h2conn_cbs tunnel_cbs = {
    .on_ready = tunnel_ready,
    .on_goaway = tunnel_goaway,
    .on_stream_closed = tunnel_stream_closed,
    .on_close = tunnel_closed,
};

/* ---- handshake ---------------------------------------------------------------------- */

struct handshake {
    struct pk_list link; /* in srv->loop.handshakes */
    struct pk_server *srv;
    struct bufferevent *bev;
    struct pk_h1parser parser;
    char peer[64];
    struct pk_auth_req *auth; /* upstream.auth: the token's verification in flight */
    char *endpoint;           /* while it is in flight */
    struct event *deadline;   /* upstream.handshake-timeout from accept */
};

static void hs_free(struct handshake *hs)
{
    pk_memtrim_poke(hs->srv->loop.memtrim);
    pk_auth_cancel(hs->auth);
    event_free(hs->deadline);
    free(hs->endpoint);
    pk_list_remove(&hs->link);
    pk_h1parser_free(&hs->parser);
    free(hs);
}

static void hs_reply_error(struct handshake *hs, int status, const char *msg, const char *extra)
{
    struct evbuffer *out = bufferevent_get_output(hs->bev);
    size_t n;
    char *body = pk_json_error_body(msg, &n);
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                        "content-length: %zu\r\nconnection: close\r\n%s\r\n%s",
                        status, pk_h1_reason(status), n, extra ? extra : "", body);
    free(body);
    pk_bev_linger_close(hs->bev, &hs->srv->loop.lingers);
    hs->srv->loop.ntunnels_open--;
    hs_free(hs);
}

static void hs_reject(struct handshake *hs, int status, const char *msg, const char *extra)
{
    PK_INFO("upstream", "handshake rejected peer=%s status=%d: %s", hs->peer, status, msg);
    pk_server_metrics_handshake_rejected(hs->srv, status);
    hs_reply_error(hs, status, msg, extra);
}

static void hs_accept(struct handshake *hs, const char *endpoint, int64_t token_exp)
{
    struct pk_server *srv = hs->srv;
    struct pk_head *h = &hs->parser.head;
    struct tunnel *t = pk_xcalloc(1, sizeof(*t));
    t->srv = srv;
    pk_list_insert(&srv->loop.tunnels, &t->link);
    t->endpoint_id = pk_xstrdup(endpoint);
    const char *sid = pk_hdrs_get(&h->hdrs, "piko-sidecar-id");
    t->sidecar_id = pk_xstrdup(sid ? sid : "-");
    snprintf(t->peer, sizeof(t->peer), "%s", hs->peer);
    const char *kind = pk_hdrs_get(&h->hdrs, "piko-endpoint-kind");
    t->tcp = kind && pk_strcaseeq(kind, "tcp");
    t->id = ++srv->loop.tunnel_ids;
    t->connected_unix_ms = pk_unix_ms();
    t->connected_ms = pk_now_ms();

    evbuffer_add_printf(bufferevent_get_output(hs->bev),
                        "HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\n"
                        "upgrade: " UPGRADE_TOKEN "\r\npiko-node-id: %s\r\n\r\n",
                        srv->node.node_id);
    char name[256];
    snprintf(name, sizeof(name), "tunnel/%s/%s", endpoint, hs->peer);
    struct bufferevent *bev = hs->bev;
    bufferevent_set_timeouts(bev, NULL, NULL);
    hs_free(hs);
    /* Leftover bytes after the request head stay in bev's input: HTTP/2 reads them. */
    t->h2 =
        pk_h2conn_new(srv->loop.base, bev, false, &srv->node.tunnel_settings, &tunnel_cbs, t, name);
    if (!t->h2) {
        pk_list_remove(&t->link);
        free(t->endpoint_id);
        free(t->sidecar_id);
        free(t);
        srv->loop.ntunnels_open--;
        return;
    }
    pk_tunnel_expiry_start(srv, t, token_exp);
}

/* upstream.auth: the handshake's token was verified (PROTOCOL.md 1.1). */
static void hs_verified(enum pk_auth_result res, const struct pk_claims *claims, const char *detail,
                        void *arg)
{
    struct handshake *hs = arg;
    const char *sid = pk_hdrs_get(&hs->parser.head.hdrs, "piko-sidecar-id");
    hs->auth = NULL;
    if (res == PK_AUTH_OK && !pk_auth_allows(claims, hs->endpoint)) {
        res = PK_AUTH_ENDPOINT_NOT_PERMITTED;
        detail = "piko.endpoints does not list the endpoint";
        pk_port_auth_not_permitted(hs->srv->node.upstream_auth);
    }
    if (res != PK_AUTH_OK) {
        int status = pk_auth_http_status(res);
        PK_WARN("upstream",
                "handshake refused endpoint=%s sidecar=%s peer=%s status=%d reason=%s: %s",
                hs->endpoint, sid ? sid : "-", hs->peer, status, pk_auth_result_str(res), detail);
        hs_reply_error(hs, status, pk_auth_http_message(res),
                       status == 401 ? "www-authenticate: Bearer\r\n" : NULL);
        return;
    }
    if (hs->srv->node.draining) {
        hs_reject(hs, 503, "node draining", NULL);
        return;
    }
    char *ep = hs->endpoint;
    hs->endpoint = NULL;
    hs_accept(hs, ep, claims->exp);
    free(ep);
}

int pk_upstream_handshake_check(const struct pk_h1parser *p, const char **endpoint,
                                const char **msg, const char **extra)
{
    const struct pk_head *h = &p->head;
    const char *path = h->path ? h->path : "";
    *extra = NULL;
    if (strncmp(path, UPSTREAM_PREFIX, strlen(UPSTREAM_PREFIX)) != 0) {
        *msg = "not found";
        return 404;
    }
    if (!h->method || strcmp(h->method, "GET") != 0) {
        *msg = "method not allowed";
        *extra = "allow: GET\r\n";
        return 405;
    }
    *endpoint = path + strlen(UPSTREAM_PREFIX);
    if (!pk_endpoint_id_valid(*endpoint, strlen(*endpoint))) {
        *msg = "invalid endpoint id";
        return 400;
    }
    if (!p->upgrade || !pk_hdrs_has_token(&h->hdrs, "upgrade", UPGRADE_TOKEN)) {
        *msg = "upgrade required";
        *extra = "upgrade: " UPGRADE_TOKEN "\r\n";
        return 426;
    }
    return 0;
}

static void hs_read(struct bufferevent *bev, void *arg)
{
    struct handshake *hs = arg;
    if (hs->auth)
        return; /* bytes before our answer stay in the input, for HTTP/2 */
    struct evbuffer *in = bufferevent_get_input(bev);
    ssize_t n = pk_h1parser_feed_evbuffer(&hs->parser, in, 0);
    if (n < 0) {
        if (hs->parser.error == PK_H1_HEAD_TOO_LARGE)
            hs_reject(hs, 431, "request header fields too large", NULL);
        else
            hs_reject(hs, 400, "malformed request", NULL);
        return;
    }
    if (!hs->parser.message_done)
        return;

    struct pk_head *h = &hs->parser.head;
    const char *endpoint, *msg, *extra;
    int status = pk_upstream_handshake_check(&hs->parser, &endpoint, &msg, &extra);
    if (status) {
        hs_reject(hs, status, msg, extra);
        return;
    }
    if (hs->srv->node.draining) {
        hs_reject(hs, 503, "node draining", NULL);
        return;
    }
    char *ep = pk_xstrdup(endpoint);
    if (hs->srv->node.upstream_auth) {
        /* The answer waits for the verification; a disconnect or the handshake timeout
         * cancels it (hs_free). */
        hs->endpoint = ep;
        /* Nothing is read until the verdict (a JWKS fetch may take a while): what the
         * sidecar sends meanwhile waits in the socket, bounded by TCP's own window. A
         * disconnect is noticed at the handshake's deadline. */
        bufferevent_disable(hs->bev, EV_READ);
        hs->auth =
            pk_port_auth_verify(hs->srv->node.upstream_auth, &h->hdrs, NULL, hs_verified, hs);
        return;
    }
    hs_accept(hs, ep, 0);
    free(ep);
}

static void hs_event(struct bufferevent *bev, short what, void *arg)
{
    struct handshake *hs = arg;
    PK_UNUSED(what);
    PK_DEBUG("upstream", "handshake aborted by peer=%s", hs->peer);
    bufferevent_free(bev);
    hs->srv->loop.ntunnels_open--;
    hs_free(hs);
}

static const struct pk_h1parser_cbs hs_parser_cbs = {0};

/* The whole handshake (TLS, the upgrade request, its token's verification) has one
 * deadline from accept: a request trickled a byte at a time cannot hold the slot. */
static void hs_deadline(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    hs_reject(arg, 408, "request timeout", NULL);
}

static void hs_start(struct pk_server *srv, struct bufferevent *bev, const struct sockaddr *sa,
                     uint64_t accept_ms)
{
    struct handshake *hs = pk_xcalloc(1, sizeof(*hs));
    char ip[64];
    uint16_t port;
    pk_sockaddr_ip(sa, ip, sizeof(ip), &port);
    snprintf(hs->peer, sizeof(hs->peer), "%s:%u", ip, port);
    hs->srv = srv;
    pk_list_insert(&srv->loop.handshakes, &hs->link);
    hs->bev = bev;
    pk_h1parser_init(&hs->parser, HTTP_REQUEST, srv->node.cfg->proxy_max_header_bytes,
                     &hs_parser_cbs, hs);
    uint64_t limit = srv->node.cfg->upstream_handshake_timeout_ms, spent = pk_now_ms() - accept_ms;
    uint64_t left = spent < limit ? limit - spent : 0;
    struct timeval tv = pk_ms_timeval(left);
    hs->deadline = pk_xevent_new(srv->loop.base, -1, 0, hs_deadline, hs);
    event_add(hs->deadline, &tv);
    bufferevent_setcb(hs->bev, hs_read, NULL, hs_event, hs);
    bufferevent_enable(hs->bev, EV_READ | EV_WRITE);
}

static void upstream_tls_accepted(struct bufferevent *bev, const struct sockaddr *sa,
                                  const char *alpn, uint64_t start_ms, void *arg)
{
    struct pk_server *srv = arg;
    PK_UNUSED(alpn);
    /* Failed, or the listener closed while the TLS handshake ran. */
    if (!bev || srv->node.drain_final) {
        if (bev)
            bufferevent_free(bev);
        srv->loop.ntunnels_open--;
        pk_server_check_drained(srv);
        return;
    }
    hs_start(srv, bev, sa, start_ms);
}

static void upstream_accept(evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    struct pk_server *srv = arg;
    PK_UNUSED(salen);
    if (pk_accept_refuse_over_limit(srv, fd, srv->node.cfg->upstream_max_connections,
                                    srv->loop.ntunnels_open, "upstream")) {
        pk_server_metrics_handshake_rejected(srv, 0);
        return;
    }
    /* Counted from accept: handshakes in flight hold a slot like tunnels. */
    srv->loop.ntunnels_open++;
    struct pk_tls_server *ts = pk_server_tls_port(srv, PK_PORT_UPSTREAM);
    if (ts) {
        pk_tls_accept(ts, fd, sa, srv->node.cfg->upstream_handshake_timeout_ms,
                      upstream_tls_accepted, srv);
        return;
    }
    pk_tune_socket(fd);
    hs_start(srv, pk_xbufferevent_socket_new(srv->loop.base, fd, BEV_OPT_CLOSE_ON_FREE), sa,
             pk_now_ms());
}

int pk_upstream_listen(struct pk_server *srv, char *err, size_t errlen)
{
    srv->loop.upstream_l =
        pk_listener_new(srv->loop.base, "upstream", srv->node.cfg->upstream_bind_addr,
                        upstream_accept, srv, err, errlen);
    return srv->loop.upstream_l ? 0 : PK_ERR_IO;
}

void pk_upstream_abort_all(struct pk_server *srv)
{
    while (!pk_list_empty(&srv->loop.handshakes)) {
        struct handshake *hs = PK_CONTAINER_OF(srv->loop.handshakes.next, struct handshake, link);
        bufferevent_free(hs->bev);
        srv->loop.ntunnels_open--;
        hs_free(hs);
    }
    for (struct pk_list *l = srv->loop.tunnels.next; l != &srv->loop.tunnels; l = l->next)
        pk_h2conn_close(PK_CONTAINER_OF(l, struct tunnel, link)->h2, "shutting down");
}
