/* The proxy and cluster ports' listeners: connection limits, TLS accept, protocol
 * detection (ALPN, else the h2c preface), then the connection goes to h1down.c or
 * h2down.c. Also drains and aborts every downstream connection. */
#include "base/base.h"
#include "base/log.h"
#include "net/listener.h"
#include "net/net.h"
#include "net/tls.h"
#include "server/down.h"
#include "server/server_int.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define H2_PREFACE     "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2_PREFACE_LEN 24

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
    uint64_t now = pk_now_ms(), limit = dt->srv->node.cfg->proxy_head_timeout_ms;
    if (!dt->first_ms)
        dt->first_ms = now;
    if (h2 && n < H2_PREFACE_LEN) {
        /* Wait for the whole preface, within the head timeout from its first byte. */
        if (now - dt->first_ms >= limit)
            detect_event(bev, BEV_EVENT_TIMEOUT, dt);
        else
            pk_down_set_timeout(bev, limit - (now - dt->first_ms));
        return;
    }
    struct detect d = *dt;
    pk_list_remove(&dt->dc.link);
    free(dt);
    bufferevent_set_timeouts(bev, NULL, NULL);
    if (h2) {
        pk_h2down_new(d.srv, bev, d.ip, d.port, d.dc.cluster);
        return;
    }
    struct h1conn *hc = pk_h1down_new(d.srv, bev, d.ip, d.port, d.dc.cluster, d.first_ms);
    pk_down_set_timeout(bev, d.srv->node.cfg->proxy_head_timeout_ms);
    pk_h1down_process(hc);
}

static void detect_event(struct bufferevent *bev, short what, void *arg)
{
    struct detect *dt = arg;
    PK_UNUSED(what);
    struct pk_server *srv = dt->srv;
    pk_list_remove(&dt->dc.link);
    free(dt);
    bufferevent_free(bev);
    srv->loop.nconns--;
    pk_server_check_drained(srv);
}

/* Above proxy.max-connections a new connection is closed at once (counted, logged at
 * most once a second): the process keeps its descriptors and memory for the ones it has. */
bool pk_accept_refuse_over_limit(struct pk_server *srv, evutil_socket_t fd, long long max, size_t n,
                                 const char *what)
{
    if (max <= 0 || n < (size_t)max)
        return false;
    evutil_closesocket(fd);
    srv->loop.refused_conns++;
    uint64_t now = pk_now_ms();
    if (now - srv->loop.refused_log_ms >= 1000) {
        srv->loop.refused_log_ms = now;
        PK_WARN("server",
                "%s connection limit (%lld) reached: new connections closed (%llu so far)", what,
                max, (unsigned long long)srv->loop.refused_conns);
    }
    return true;
}

/* What is left of proxy.head-timeout, counted from accept_ms (at least 1 ms, so that a
 * timeout fires rather than none being set). */
static uint64_t head_left(struct pk_server *srv, uint64_t accept_ms)
{
    uint64_t limit = srv->node.cfg->proxy_head_timeout_ms, spent = pk_now_ms() - accept_ms;
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
            pk_h2down_new(srv, bev, ip, port, cluster);
            return;
        }
        pk_h1down_new(srv, bev, ip, port, cluster, accept_ms);
        pk_down_set_timeout(bev, head_left(srv, accept_ms));
        return;
    }
    struct detect *dt = pk_xcalloc(1, sizeof(*dt));
    dt->dc.cluster = cluster;
    dt->srv = srv;
    pk_sockaddr_ip(sa, dt->ip, sizeof(dt->ip), &dt->port);
    dt->bev = bev;
    dt->dc.kind = DCONN_DETECT;
    dt->first_ms = accept_ms;
    pk_list_insert(&srv->loop.conns, &dt->dc.link);
    pk_down_set_timeout(bev, head_left(srv, accept_ms));
    bufferevent_setcb(bev, detect_read, NULL, detect_event, dt);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void tls_accepted(struct pk_server *srv, struct bufferevent *bev, const struct sockaddr *sa,
                         const char *alpn, uint64_t accept_ms, bool cluster)
{
    /* Failed, or the listener closed while the handshake ran: nothing new is served. */
    if (!bev || (cluster ? srv->node.cluster_closing : srv->node.drain_final)) {
        if (bev)
            bufferevent_free(bev);
        srv->loop.nconns--;
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
    if (!cluster && pk_accept_refuse_over_limit(srv, fd, srv->node.cfg->proxy_max_connections,
                                                srv->loop.nconns, "proxy")) {
        pk_server_metrics_abort(srv, PK_ABORT_CONNECTION_LIMIT);
        return;
    }
    /* Counted from accept: a TLS handshake in flight holds a slot like a connection. */
    srv->loop.nconns++;
    struct pk_tls_server *ts = pk_server_tls_port(srv, cluster ? PK_PORT_CLUSTER : PK_PORT_PROXY);
    if (ts) {
        pk_tls_accept(ts, fd, sa, srv->node.cfg->proxy_head_timeout_ms,
                      cluster ? cluster_tls_accepted : proxy_tls_accepted, srv);
        return;
    }
    pk_tune_socket(fd);
    struct bufferevent *bev = bufferevent_socket_new(srv->loop.base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        evutil_closesocket(fd);
        srv->loop.nconns--;
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
    srv->loop.proxy_l = pk_listener_new(srv->loop.base, "proxy", srv->node.cfg->proxy_bind_addr,
                                        proxy_accept, srv, err, errlen);
    return srv->loop.proxy_l ? 0 : PK_ERR_IO;
}

int pk_cluster_port_listen(struct pk_server *srv, char *err, size_t errlen)
{
    srv->loop.cluster_l =
        pk_listener_new(srv->loop.base, "cluster", srv->node.cfg->cluster_bind_addr, cluster_accept,
                        srv, err, errlen);
    return srv->loop.cluster_l ? 0 : PK_ERR_IO;
}

void pk_proxy_drain_all(struct pk_server *srv, bool cluster)
{
    struct pk_list *l, *next;
    for (l = srv->loop.conns.next; l != &srv->loop.conns; l = next) {
        next = l->next;
        struct dconn *dc = PK_CONTAINER_OF(l, struct dconn, link);
        if (dc->cluster != cluster)
            continue;
        if (dc->kind == DCONN_H2) {
            pk_h2down_drain(dc);
        } else if (dc->kind == DCONN_H1) {
            pk_h1down_drain(dc);
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
    for (l = srv->loop.conns.next; l != &srv->loop.conns; l = next) {
        next = l->next;
        struct dconn *dc = PK_CONTAINER_OF(l, struct dconn, link);
        if (dc->kind == DCONN_H2)
            pk_h2down_abort(dc);
        else if (dc->kind == DCONN_H1)
            pk_h1down_abort(dc);
        else
            detect_event(PK_CONTAINER_OF(dc, struct detect, dc)->bev, BEV_EVENT_EOF,
                         PK_CONTAINER_OF(dc, struct detect, dc));
    }
}
