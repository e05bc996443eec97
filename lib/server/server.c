#include "server/server.h"

#include "admin/admin.h"
#include "base/base.h"
#include "base/log.h"
#include "base/memtrim.h"
#include "cluster/cluster.h"
#include "cluster/state.h"
#include "config/config.h"
#include "dns/dns.h"
#include "h2/h2.h"
#include "net/net.h"
#include "server/server_int.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

/* ---- admin ------------------------------------------------------------------------- */

/* {"status": status} */
static void admin_status(struct pk_admin_req *req, int code, const char *status)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "status", json_object_new_string(status));
    pk_admin_reply(req, code, o);
}

static void admin_health(struct pk_admin_req *req, void *arg)
{
    PK_UNUSED(arg);
    admin_status(req, 200, "ok");
}

static void admin_ready(struct pk_admin_req *req, void *arg)
{
    struct pk_server *srv = arg;
    if (srv->node.ready && !srv->node.draining && pk_cluster_synced(srv->node.cluster))
        admin_status(req, 200, "ready");
    else
        admin_status(req, 503, srv->node.draining ? "draining" : "starting");
}

/* ---- routing state and cluster status ---------------------------------------------------- */

struct json_object *pk_server_state_json(struct pk_server *srv, bool with_endpoints)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "node_id", json_object_new_string(srv->node.node_id));
    json_object_object_add(o, "incarnation", json_object_new_string(srv->node.incarnation));
    json_object_object_add(o, "version", json_object_new_int64((int64_t)srv->node.state_version));
    json_object_object_add(o, "proxy_addr", json_object_new_string(srv->node.proxy_addr));
    json_object_object_add(o, "admin_addr", json_object_new_string(srv->node.admin_addr));
    json_object_object_add(o, "cluster_addr", json_object_new_string(srv->node.cluster_addr));
    json_object_object_add(o, "draining", json_object_new_boolean(srv->node.draining));
    size_t neps, ntunnels;
    struct json_object *t = pk_upstream_table_json(srv, &neps, &ntunnels);
    if (with_endpoints)
        json_object_object_add(o, "endpoints", t);
    else
        json_object_put(t);
    if (with_endpoints && srv->node.moving) {
        uint64_t now = pk_now_ms();
        struct json_object *mv = json_object_new_object();
        for (struct moving *m = srv->node.moving; m; m = m->next)
            if (m->deadline_ms > now)
                json_object_object_add(mv, m->id,
                                       json_object_new_int64((int64_t)(m->deadline_ms - now)));
        json_object_object_add(o, "moving", mv);
    }
    return o;
}

static void moving_arm(struct pk_server *srv)
{
    uint64_t next = 0, now = pk_now_ms();
    for (struct moving *m = srv->node.moving; m; m = m->next)
        if (!next || m->deadline_ms < next)
            next = m->deadline_ms;
    if (!next)
        return;
    uint64_t ms = next > now ? next - now : 0;
    struct timeval tv = pk_ms_timeval(ms);
    event_add(srv->node.moving_ev, &tv);
}

void pk_server_mark_moving(struct pk_server *srv, const char *endpoint)
{
    struct moving *m;
    for (m = srv->node.moving; m; m = m->next)
        if (strcmp(m->id, endpoint) == 0)
            break;
    if (!m) {
        m = pk_xcalloc(1, sizeof(*m));
        m->id = pk_xstrdup(endpoint);
        m->next = srv->node.moving;
        srv->node.moving = m;
    }
    m->deadline_ms = pk_now_ms() + PK_MOVE_WINDOW_MS;
    PK_INFO("server", "endpoint=%s moving: requests for it wait up to %dms for a new tunnel",
            endpoint, PK_MOVE_WINDOW_MS);
    pk_server_state_changed(srv);
    moving_arm(srv);
}

bool pk_server_is_moving(struct pk_server *srv, const char *endpoint)
{
    uint64_t now = pk_now_ms();
    for (struct moving *m = srv->node.moving; m; m = m->next)
        if (m->deadline_ms > now && strcmp(m->id, endpoint) == 0)
            return true;
    return false;
}

static void moving_free_all(struct pk_server *srv)
{
    while (srv->node.moving) {
        struct moving *m = srv->node.moving;
        srv->node.moving = m->next;
        free(m->id);
        free(m);
    }
}

/* Expired entries go; requests still waiting for them get their answer (502). */
static void moving_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_server *srv = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    uint64_t now = pk_now_ms();
    for (struct moving **pp = &srv->node.moving; *pp;) {
        struct moving *m = *pp;
        if (m->deadline_ms <= now) {
            *pp = m->next;
            free(m->id);
            free(m);
        } else {
            pp = &m->next;
        }
    }
    pk_server_state_changed(srv);
    pk_exchange_redispatch_all(srv);
    moving_arm(srv);
}

void pk_server_state_changed(struct pk_server *srv)
{
    srv->node.state_version++;
    event_active(srv->node.state_ev, EV_TIMEOUT, 0); /* long polls are answered from the loop */
}

static void state_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    pk_cluster_port_state_changed(arg);
}

/* The local node as /status/cluster/nodes lists it. */
static struct json_object *local_node_json(struct pk_server *srv, bool table)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string(srv->node.node_id));
    json_object_object_add(o, "status",
                           json_object_new_string(srv->node.draining ? "draining" : "active"));
    json_object_object_add(o, "local", json_object_new_boolean(true));
    json_object_object_add(o, "incarnation", json_object_new_string(srv->node.incarnation));
    json_object_object_add(o, "version", json_object_new_int64((int64_t)srv->node.state_version));
    json_object_object_add(o, "proxy_addr", json_object_new_string(srv->node.proxy_addr));
    json_object_object_add(o, "admin_addr", json_object_new_string(srv->node.admin_addr));
    json_object_object_add(o, "cluster_addr", json_object_new_string(srv->node.cluster_addr));
    json_object_object_add(o, "build_version", json_object_new_string(PIKO_VERSION));
    size_t neps, ntunnels;
    struct json_object *t = pk_upstream_table_json(srv, &neps, &ntunnels);
    json_object_object_add(o, "endpoints", json_object_new_int64((int64_t)neps));
    json_object_object_add(o, "tunnels", json_object_new_int64((int64_t)ntunnels));
    pk_server_tls_status(srv, o);
    pk_server_listeners_status(srv, o);
    if (table)
        json_object_object_add(o, "endpoint_table", t);
    else
        json_object_put(t);
    return o;
}

#define NODES_PATH "/status/cluster/nodes"

/* /status/cluster/nodes[/] lists the nodes, /status/cluster/nodes/{id|local} shows one. */
static void admin_nodes(struct pk_admin_req *req, struct pk_server *srv)
{
    const char *path = pk_admin_req_path(req);
    size_t plen = strlen(path), base = strlen(NODES_PATH);
    if (plen == base || (plen == base + 1 && path[base] == '/')) {
        struct json_object *a = json_object_new_array();
        json_object_array_add(a, local_node_json(srv, false));
        pk_cluster_nodes_json(srv->node.cluster, a);
        pk_admin_reply(req, 200, a);
        return;
    }
    char id[160];
    snprintf(id, sizeof(id), "%s", path + base + 1);
    struct json_object *o = NULL;
    if (strcmp(id, "local") == 0 || strcmp(id, srv->node.node_id) == 0)
        o = local_node_json(srv, true);
    else if (pk_endpoint_id_valid(id, strlen(id)))
        o = pk_cluster_node_json(srv->node.cluster, id);
    if (!o) {
        pk_admin_reply_error(req, 404, "node not found");
        return;
    }
    pk_admin_reply(req, 200, o);
}

/* Every path but /health and /ready, once authenticated. */
static void admin_other(struct pk_admin_req *req, void *arg)
{
    const char *path = pk_admin_req_path(req);
    size_t base = strlen(NODES_PATH);
    if (pk_server_status_reply(req, arg)) /* /status/upstream/endpoints, /status/tunnels */
        return;
    if (strncmp(path, NODES_PATH, base) == 0 && (path[base] == '\0' || path[base] == '/')) {
        admin_nodes(req, arg);
        return;
    }
    pk_admin_reply_error(req, 404, "not found");
}

/* Everything but /health and /ready needs a token when admin.auth is on. */
static void admin_authed(struct pk_admin_req *req, void *arg)
{
    pk_admin_auth(arg, req, admin_other);
}

static void admin_auth_status(struct pk_admin_req *req, void *arg)
{
    pk_admin_auth(arg, req, pk_admin_auth_status);
}

static int admin_listen(struct pk_server *srv, char *err, size_t errlen)
{
    struct pk_admin_opts o = {
        .max_connections = srv->node.cfg->admin_max_connections,
        .tls = pk_server_tls_port(srv, PK_PORT_ADMIN),
    };
    srv->node.admin = pk_admin_new(srv->loop.base, srv->node.cfg->admin_bind_addr, &o, err, errlen);
    if (!srv->node.admin)
        return PK_ERR_IO;
    pk_admin_route(srv->node.admin, "/health", false, admin_health, srv);
    pk_admin_route(srv->node.admin, "/ready", false, admin_ready, srv);
    pk_admin_route(srv->node.admin, "/status/auth", false, admin_auth_status, srv);
    pk_admin_route(srv->node.admin, "/", true, admin_authed, srv);
    pk_server_metrics_new(srv); /* adds /metrics */
    pk_server_access_new(srv);  /* adds /status/requests */
    pk_server_status_new(srv);  /* adds the status page at / */
    pk_admin_addr(srv->node.admin, srv->node.admin_addr, sizeof(srv->node.admin_addr));
    PK_INFO("server", "admin listening addr=%s max-connections=%lld", srv->node.admin_addr,
            srv->node.cfg->admin_max_connections);
    return 0;
}

/* ---- lifecycle ------------------------------------------------------------------------ */

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_server *srv = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    PK_WARN("server", "grace period over with %zu requests in flight: exiting",
            srv->loop.nexchanges);
    event_base_loopexit(srv->loop.base, NULL);
}

static bool drained(struct pk_server *srv)
{
    return srv->node.draining && srv->node.drain_final && srv->loop.nexchanges == 0 &&
           srv->loop.nconns == 0 && srv->loop.lingers.n == 0;
}

static void check_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_server *srv = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (srv->node.draining && srv->node.drain_final && srv->loop.cluster_l) {
        /* Our tunnels take no new stream: close the links peers opened to us (the
         * streams in flight on them finish) and answer their long polls. */
        pk_listener_del(srv->loop.cluster_l);
        srv->loop.cluster_l = NULL;
        srv->node.cluster_closing = true;
        pk_cluster_port_state_changed(srv); /* the long polls are answered now */
        pk_proxy_drain_all(srv, true);
    }
    if (drained(srv) && !srv->node.exiting) {
        srv->node.exiting = true; /* said once, though the check may run again */
        PK_INFO("server", "drained: exiting");
        event_base_loopexit(srv->loop.base, NULL);
    }
}

void pk_server_check_drained(struct pk_server *srv)
{
    if (srv->node.draining && srv->node.drain_final)
        event_active(srv->loop.check_ev, EV_TIMEOUT, 0);
}

static void linger_done(void *arg)
{
    pk_server_check_drained(arg);
}

/* The drain delay is over: stop accepting, close downstream connections as their work
 * ends. Peer connections stay while our tunnels may still be needed. */
static void drain_final(struct pk_server *srv)
{
    srv->node.drain_final = true;
    PK_INFO("server", "draining connections: %zu requests in flight, %zu tunnels",
            srv->loop.nexchanges, srv->loop.ntunnels_open);
    if (srv->loop.proxy_l) {
        pk_listener_del(srv->loop.proxy_l);
        srv->loop.proxy_l = NULL;
    }
    if (srv->loop.upstream_l) {
        pk_listener_del(srv->loop.upstream_l);
        srv->loop.upstream_l = NULL;
    }
    pk_proxy_drain_all(srv, false);
    pk_server_check_drained(srv);
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    drain_final(arg);
}

void pk_server_shutdown(struct pk_server *srv)
{
    if (srv->node.draining)
        return;
    srv->node.draining = true;
    /* With a node to go to, the sidecars move there: our endpoints are published as
     * moving so that requests wait for them (docs/architecture/cluster.md). */
    srv->node.moving_drain = pk_cluster_has_active_peer(srv->node.cluster);
    PK_INFO("server",
            "shutting down: %zu requests in flight, %zu tunnels (%s), drain delay %llums, "
            "grace period %llums",
            srv->loop.nexchanges, srv->loop.ntunnels_open,
            srv->node.moving_drain ? "moving to other nodes" : "drained",
            (unsigned long long)srv->node.cfg->drain_delay_ms,
            (unsigned long long)srv->node.cfg->grace_period_ms);
    pk_server_state_changed(srv); /* peers learn at once that we are draining */
    pk_upstream_drain_all(srv);
    struct timeval tv = pk_ms_timeval(srv->node.cfg->grace_period_ms);
    event_add(srv->node.grace_ev, &tv);
    if (srv->node.cfg->drain_delay_ms) {
        struct timeval dv = pk_ms_timeval(srv->node.cfg->drain_delay_ms);
        event_add(srv->node.drain_ev, &dv);
    } else {
        drain_final(srv);
    }
}

static void cluster_change(void *ud)
{
    pk_exchange_redispatch_all(ud);
}

static void cluster_slot(void *ud)
{
    struct pk_server *srv = ud;
    if (srv->loop.waiting)
        pk_exchange_redispatch_all(srv);
}

static const struct pk_cluster_cbs cluster_cbs = {.on_change = cluster_change,
                                                  .on_slot = cluster_slot};

/* Rebalancing (off unless upstream.rebalance.threshold > 0): while this node holds more
 * tunnels than the cluster average by the threshold, one tunnel per interval is asked to
 * reconnect through the load balancer. */
static void rebalance_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_server *srv = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (!srv->node.draining) {
        size_t nodes;
        uint64_t others;
        pk_cluster_totals(srv->node.cluster, &nodes, &others);
        size_t local = pk_upstream_count(srv);
        double avg = (double)(local + others) / (double)(nodes + 1);
        if (nodes > 0 && local >= 2 &&
            (double)local > avg * (1.0 + srv->node.cfg->rebalance_threshold))
            pk_upstream_shed_one(srv);
    }
    struct timeval tv = pk_ms_timeval(srv->node.cfg->upstream_rebalance_interval_ms);
    event_add(srv->node.rebalance_ev, &tv);
}

static void random_hex(char *buf, size_t len, size_t bytes)
{
    uint8_t r[16];
    if (bytes > sizeof(r))
        bytes = sizeof(r);
    if (getrandom(r, bytes, 0) != (ssize_t)bytes) {
        uint64_t x = pk_now_ms() ^ ((uint64_t)getpid() << 32);
        memcpy(r, &x, bytes < 8 ? bytes : 8);
    }
    buf[0] = '\0';
    for (size_t i = 0; i < bytes && 2 * i + 2 < len; i++)
        snprintf(buf + 2 * i, len - 2 * i, "%02x", r[i]);
}

/* Identity, timers, lists and the HTTP/2 settings of each kind of session. */
static void node_init(struct pk_server *srv, struct event_base *base,
                      const struct pk_server_config *cfg)
{
    srv->loop.base = base;
    srv->node.cfg = cfg;
    char host[64] = "piko", suffix[16];
    gethostname(host, sizeof(host));
    host[sizeof(host) - 1] = '\0';
    host[strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")] = '\0';
    random_hex(suffix, sizeof(suffix), 4);
    if (cfg->cluster_node_id && *cfg->cluster_node_id)
        snprintf(srv->node.node_id, sizeof(srv->node.node_id), "%s", cfg->cluster_node_id);
    else
        snprintf(srv->node.node_id, sizeof(srv->node.node_id), "%s-%s", host[0] ? host : "piko",
                 suffix);
    random_hex(srv->node.incarnation, sizeof(srv->node.incarnation), 8);
    srv->node.state_version = 1;
    srv->node.grace_ev = pk_xevent_new(base, -1, 0, grace_cb, srv);
    srv->loop.check_ev = pk_xevent_new(base, -1, 0, check_cb, srv);
    srv->node.state_ev = pk_xevent_new(base, -1, 0, state_cb, srv);
    srv->node.drain_ev = pk_xevent_new(base, -1, 0, drain_cb, srv);
    srv->node.rebalance_ev = pk_xevent_new(base, -1, 0, rebalance_cb, srv);
    srv->node.moving_ev = pk_xevent_new(base, -1, 0, moving_cb, srv);
    pk_list_init(&srv->loop.conns);
    pk_list_init(&srv->loop.tunnels);
    pk_list_init(&srv->loop.handshakes);
    pk_linger_list_init(&srv->loop.lingers, linger_done, srv);
    srv->loop.memtrim = pk_memtrim_new(base);

    struct pk_h2_settings *t = &srv->node.tunnel_settings;
    pk_h2_settings_default(t);
    t->stream_window = (uint32_t)cfg->upstream_stream_window;
    t->conn_window = (uint32_t)cfg->upstream_connection_window;
    t->ping_interval_ms = cfg->upstream_heartbeat_interval_ms;
    t->ping_timeout_ms = cfg->upstream_heartbeat_timeout_ms;
    t->settings_timeout_ms = cfg->upstream_heartbeat_timeout_ms;
    t->max_header_bytes = cfg->proxy_max_header_bytes;

    struct pk_h2_settings *d = &srv->node.down_settings;
    pk_h2_settings_default(d);
    d->max_concurrent_streams = (uint32_t)cfg->proxy_max_h2_streams;
    d->enable_connect_protocol = true; /* RFC 8441: WebSocket, piko-tcp */
    d->ping_interval_ms = 0;
    d->settings_timeout_ms = cfg->proxy_head_timeout_ms;
    d->max_header_bytes = cfg->proxy_max_header_bytes;

    /* Peer links we dial use the tunnel's settings (same client code); the links peers open
     * to our cluster port get these: */
    struct pk_h2_settings *c = &srv->node.cluster_settings;
    pk_h2_settings_default(c);
    c->max_concurrent_streams = 16384;
    c->stream_window = (uint32_t)cfg->upstream_stream_window;
    c->conn_window = (uint32_t)cfg->upstream_connection_window;
    c->enable_connect_protocol = true;
    c->ping_interval_ms = 0; /* the dialling side sends heartbeats */
    c->settings_timeout_ms = cfg->upstream_heartbeat_timeout_ms;
    c->max_header_bytes = cfg->proxy_max_header_bytes;
}

/* Binds every port. The cluster port serves this node's tunnels to its peers: a node that
 * is not in a cluster has no peers and does not open it (docs/manage/security.md). */
static int ports_listen(struct pk_server *srv, bool clustered, char *err, size_t errlen)
{
    char addr[256];
    if (pk_server_tls_new(srv, err, errlen) != 0 || pk_proxy_listen(srv, err, errlen) != 0 ||
        pk_upstream_listen(srv, err, errlen) != 0 || admin_listen(srv, err, errlen) != 0 ||
        (clustered && pk_cluster_port_listen(srv, err, errlen) != 0))
        return PK_ERR_IO;
    pk_listener_addr(srv->loop.proxy_l, srv->node.proxy_addr, sizeof(srv->node.proxy_addr));
    PK_INFO("server", "node id=%s incarnation=%s", srv->node.node_id, srv->node.incarnation);
    PK_INFO("server", "proxy listening addr=%s", srv->node.proxy_addr);
    pk_listener_addr(srv->loop.upstream_l, addr, sizeof(addr));
    PK_INFO("server", "upstream listening addr=%s", addr);
    if (srv->loop.cluster_l) {
        pk_listener_addr(srv->loop.cluster_l, srv->node.cluster_addr,
                         sizeof(srv->node.cluster_addr));
        PK_INFO("server", "cluster listening addr=%s", srv->node.cluster_addr);
    } else {
        PK_INFO("server", "cluster port not opened: no cluster.join (a standalone node)");
    }
    return 0;
}

/* The resolver and the cluster (discovery, peers' state, peer links). */
static int cluster_start(struct pk_server *srv, bool clustered, char *err, size_t errlen)
{
    const struct pk_server_config *cfg = srv->node.cfg;
    struct pk_resolver_opts ropts = {
        .servers = cfg->dns_servers && *cfg->dns_servers ? cfg->dns_servers : NULL};
    srv->node.resolver = pk_resolver_new_opts(srv->loop.base, &ropts, err, errlen);
    if (!srv->node.resolver)
        return PK_ERR_INVALID;
    struct pk_cluster_opts copts = {
        .node_id = srv->node.node_id,
        .join = cfg->cluster_join,
        .resolve_interval_ms = cfg->cluster_resolve_interval_ms,
        .peer_timeout_ms = cfg->cluster_peer_timeout_ms,
        .secret = cfg->cluster_secret,
        .link_settings = &srv->node.tunnel_settings,
        .tls_ctx = pk_server_tls_cluster_client(srv),
        .tls_files = &cfg->cluster_tls,
    };
    srv->node.cluster =
        pk_cluster_new(srv->loop.base, srv->node.resolver, &copts, &cluster_cbs, srv, err, errlen);
    if (!srv->node.cluster)
        return PK_ERR_INVALID;
    if (clustered) {
        PK_INFO("cluster", "joining %s", cfg->cluster_join);
        /* Only with cluster.insecure-no-secret (pk_server_config_check refuses the rest). */
        if ((!cfg->cluster_secret || !*cfg->cluster_secret) &&
            !pk_tls_set(cfg->cluster_tls.client_cas))
            PK_WARN("cluster",
                    "INSECURE: cluster.insecure-no-secret is set and there is no cluster.secret "
                    "nor cluster mTLS: anyone who reaches the cluster port %s can use this "
                    "node's tunnels without proxy.auth",
                    srv->node.cluster_addr);
    }
    return 0;
}

struct pk_server *pk_server_new(struct event_base *base, const struct pk_server_config *cfg,
                                char *err, size_t errlen)
{
    struct pk_server *srv = pk_xcalloc(1, sizeof(*srv));
    node_init(srv, base, cfg);
    bool clustered = cfg->cluster_join && *cfg->cluster_join;
    if (pk_server_auth_init(srv, err, errlen) != 0 ||
        ports_listen(srv, clustered, err, errlen) != 0 ||
        cluster_start(srv, clustered, err, errlen) != 0) {
        pk_server_del(srv);
        return NULL;
    }
    if (cfg->rebalance_threshold > 0) {
        struct timeval tv = pk_ms_timeval(cfg->upstream_rebalance_interval_ms);
        event_add(srv->node.rebalance_ev, &tv);
    }
    srv->node.ready = true;
    return srv;
}

void pk_server_del(struct pk_server *srv)
{
    if (!srv)
        return;
    /* Abort whatever is left and let the deferred closes run, so nothing leaks. */
    pk_proxy_abort_all(srv);
    pk_upstream_abort_all(srv);
    pk_cluster_stop(srv->node.cluster);
    for (int i = 0; i < 100 && (srv->loop.nconns || srv->loop.ntunnels_open ||
                                srv->loop.nexchanges || pk_cluster_nlinks(srv->node.cluster));
         i++)
        event_base_loop(srv->loop.base, EVLOOP_NONBLOCK);
    pk_cluster_del(srv->node.cluster);
    /* Before the verifiers: the admin requests waiting for one are cancelled with it. */
    pk_admin_del(srv->node.admin);
    pk_server_metrics_del(srv);
    pk_server_access_del(srv);
    srv->node.admin = NULL;
    pk_server_auth_free(srv);
    pk_resolver_del(srv->node.resolver);
    pk_linger_list_free(&srv->loop.lingers);
    if (srv->loop.proxy_l)
        pk_listener_del(srv->loop.proxy_l);
    if (srv->loop.upstream_l)
        pk_listener_del(srv->loop.upstream_l);
    if (srv->loop.cluster_l)
        pk_listener_del(srv->loop.cluster_l);
    pk_server_tls_free(srv);
    event_free(srv->node.grace_ev);
    event_free(srv->loop.check_ev);
    event_free(srv->node.state_ev);
    event_free(srv->node.drain_ev);
    event_free(srv->node.rebalance_ev);
    event_free(srv->node.moving_ev);
    moving_free_all(srv);
    for (size_t b = 0; b < PK_EP_BUCKETS; b++) {
        while (srv->node.eps[b]) {
            struct endpoint *e = srv->node.eps[b];
            srv->node.eps[b] = e->next;
            free(e->id);
            free(e);
        }
    }
    pk_memtrim_del(srv->loop.memtrim);
    free(srv);
}
