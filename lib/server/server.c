#include "server/server.h"

#include "admin/admin.h"
#include "base/base.h"
#include "base/log.h"
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

#define OPT(name, type, field, def, help)                                                          \
    {                                                                                              \
        name, type, offsetof(struct pk_server_config, field), def, help, NULL                      \
    }

/* --<port>.auth.* (docs/manage/security.md): the flags of Go Piko. */
#define AUTH_OPTS(port)                                                                            \
    OPT(#port ".auth.hmac-secret-key", PK_OPT_STRING, port##_auth.hmac_secret_key, NULL,           \
        "Require a JWT on the " #port " port signed with this HMAC secret (HS256/384/512)"),       \
        OPT(#port ".auth.rsa-public-key", PK_OPT_STRING, port##_auth.rsa_public_key, NULL,         \
            "Require a JWT on the " #port " port signed with this RSA key (RS*, PS*): PEM text, "  \
            "or the path of a PEM file"),                                                          \
        OPT(#port ".auth.ecdsa-public-key", PK_OPT_STRING, port##_auth.ecdsa_public_key, NULL,     \
            "Require a JWT on the " #port " port signed with this ECDSA key (ES256/384/512): PEM " \
            "text, or the path of a PEM file"),                                                    \
        OPT(#port ".auth.jwks.endpoint", PK_OPT_STRING, port##_auth.jwks_endpoint, NULL,           \
            "Require a JWT on the " #port " port signed with a key of this JWKS (chosen by kid): " \
            "an https:// URL or a file path"),                                                     \
        OPT(#port ".auth.jwks.cache-ttl", PK_OPT_DURATION, port##_auth.jwks_cache_ttl_ms, "5m",    \
            "How often the JWKS is fetched again (a file: checked for changes); an unknown kid "   \
            "also refreshes it"),                                                                  \
        OPT(#port ".auth.audience", PK_OPT_STRING, port##_auth.audience, NULL,                     \
            "Tokens on the " #port " port must list this audience (aud); empty: not checked"),     \
        OPT(#port ".auth.issuer", PK_OPT_STRING, port##_auth.issuer, NULL,                         \
            "Tokens on the " #port " port must have this issuer (iss); empty: not checked")

const struct pk_opt pk_server_opts[] = {
    OPT("proxy.bind-addr", PK_OPT_STRING, proxy_bind_addr, ":8000",
        "Address for downstream clients (HTTP/1.1 and h2c)"),
    OPT("proxy.timeout", PK_OPT_DURATION, proxy_timeout_ms, "30s",
        "Time to wait for an upstream response head, counted from the end of the request "
        "body (504 after); also bounds routing (a free tunnel slot, token verification)"),
    OPT("proxy.max-header-bytes", PK_OPT_SIZE, proxy_max_header_bytes, "64KiB",
        "Largest request head accepted (431 above)"),
    OPT("proxy.head-timeout", PK_OPT_DURATION, proxy_head_timeout_ms, "10s",
        "Time to receive a request head (408 after)"),
    OPT("proxy.idle-timeout", PK_OPT_DURATION, proxy_idle_timeout_ms, "5m",
        "Idle keep-alive connections are closed after this"),
    OPT("proxy.max-h2-streams", PK_OPT_INT, proxy_max_h2_streams, "256",
        "Concurrent streams per downstream HTTP/2 connection"),
    OPT("proxy.stall-timeout", PK_OPT_DURATION, proxy_stall_timeout_ms, "60s",
        "Abort an HTTP exchange when no byte of a body that is moving (the upload, or the "
        "response) moved this long: a client that stops reading or sending, a service that "
        "stalls (0: never)"),
    OPT("proxy.raw-idle-timeout", PK_OPT_DURATION, proxy_raw_idle_timeout_ms, "0",
        "Close an upgraded or TCP stream idle this long (0: never)"),
    OPT("proxy.max-connections", PK_OPT_INT, proxy_max_connections, "10000",
        "Downstream connections open at once; above, new ones are closed at once (0: no limit)"),
    OPT("proxy.max-body-bytes", PK_OPT_SIZE, proxy_max_body_bytes, "0",
        "Largest request body accepted (413 above); 0: unlimited"),
    AUTH_OPTS(proxy),
    OPT("proxy.tls.cert", PK_OPT_STRING, proxy_tls.cert, NULL,
        "PEM certificate chain: TLS on the proxy port, ALPN h2 and http/1.1 (unset: plain)"),
    OPT("proxy.tls.key", PK_OPT_STRING, proxy_tls.key, NULL, "PEM private key of proxy.tls.cert"),
    OPT("proxy.tls.client-cas", PK_OPT_STRING, proxy_tls.client_cas, NULL,
        "PEM CA certificates: clients must present a certificate they signed (mTLS)"),
    OPT("upstream.bind-addr", PK_OPT_STRING, upstream_bind_addr, ":8001",
        "Address for sidecar tunnels"),
    OPT("upstream.max-connections", PK_OPT_INT, upstream_max_connections, "10000",
        "Tunnels and handshakes open at once; above, new connections are closed (0: no limit)"),
    OPT("upstream.handshake-timeout", PK_OPT_DURATION, upstream_handshake_timeout_ms, "10s",
        "Time from accept to a complete tunnel handshake (TLS, the upgrade request and its "
        "token's verification): a deadline, however slowly the bytes come"),
    OPT("upstream.heartbeat-interval", PK_OPT_DURATION, upstream_heartbeat_interval_ms, "10s",
        "PING interval on tunnels"),
    OPT("upstream.heartbeat-timeout", PK_OPT_DURATION, upstream_heartbeat_timeout_ms, "10s",
        "A tunnel with no frame this long after a PING is dead"),
    OPT("upstream.stream-window", PK_OPT_SIZE, upstream_stream_window, "1MiB",
        "HTTP/2 stream flow-control window on tunnels"),
    OPT("upstream.connection-window", PK_OPT_SIZE, upstream_connection_window, "16MiB",
        "HTTP/2 connection flow-control window on tunnels"),
    OPT("upstream.rebalance.threshold", PK_OPT_STRING, upstream_rebalance_threshold, "0",
        "Shed tunnels when this node holds more than the cluster average by this fraction "
        "(e.g. 0.2); 0: off"),
    OPT("upstream.rebalance.interval", PK_OPT_DURATION, upstream_rebalance_interval_ms, "1s",
        "When rebalancing, shed at most one tunnel per interval"),
    AUTH_OPTS(upstream),
    OPT("upstream.auth.disable-disconnect-on-expiry", PK_OPT_BOOL,
        upstream_auth.disable_disconnect_on_expiry, "false",
        "Keep a tunnel open after its token expired (otherwise it is drained at expiry)"),
    OPT("upstream.tls.cert", PK_OPT_STRING, upstream_tls.cert, NULL,
        "PEM certificate chain: TLS on the upstream port (unset: plain)"),
    OPT("upstream.tls.key", PK_OPT_STRING, upstream_tls.key, NULL,
        "PEM private key of upstream.tls.cert"),
    OPT("upstream.tls.client-cas", PK_OPT_STRING, upstream_tls.client_cas, NULL,
        "PEM CA certificates: sidecars must present a certificate they signed (mTLS)"),
    OPT("admin.bind-addr", PK_OPT_STRING, admin_bind_addr, ":8002",
        "Address for /health, /ready and /status"),
    OPT("admin.max-connections", PK_OPT_INT, admin_max_connections, "128",
        "Admin connections open at once; above, new ones are closed at once (0: no limit)"),
    AUTH_OPTS(admin),
    OPT("admin.tls.cert", PK_OPT_STRING, admin_tls.cert, NULL,
        "PEM certificate chain: TLS on the admin port (unset: plain)"),
    OPT("admin.tls.key", PK_OPT_STRING, admin_tls.key, NULL, "PEM private key of admin.tls.cert"),
    OPT("admin.tls.client-cas", PK_OPT_STRING, admin_tls.client_cas, NULL,
        "PEM CA certificates: admin clients must present a certificate they signed (mTLS)"),
    OPT("cluster.bind-addr", PK_OPT_STRING, cluster_bind_addr, ":8003",
        "Address for peer nodes (peer links and routing state)"),
    OPT("cluster.node-id", PK_OPT_STRING, cluster_node_id, "",
        "Node id; empty: the hostname plus a random suffix"),
    OPT("cluster.join", PK_OPT_STRING, cluster_join, "",
        "Peers' cluster addresses: comma list of srv:NAME, dns:NAME:PORT, HOST:PORT"),
    OPT("cluster.resolve-interval", PK_OPT_DURATION, cluster_resolve_interval_ms, "5s",
        "How often cluster.join is resolved again"),
    OPT("cluster.peer-timeout", PK_OPT_DURATION, cluster_peer_timeout_ms, "5s",
        "A peer unreachable this long leaves routing"),
    OPT("cluster.secret", PK_OPT_STRING, cluster_secret, "",
        "Shared secret every request on the cluster port must carry; required with "
        "cluster.join unless cluster.tls.client-cas or cluster.insecure-no-secret is set"),
    OPT("cluster.insecure-no-secret", PK_OPT_BOOL, cluster_insecure_no_secret, "false",
        "Run a cluster without cluster.secret or cluster mTLS: anyone who reaches the cluster "
        "port can use this node's tunnels, bypassing proxy.auth (testing only)"),
    OPT("cluster.tls.cert", PK_OPT_STRING, cluster_tls.cert, NULL,
        "PEM certificate chain: TLS on the cluster port, also the client certificate peers "
        "are dialled with (unset: plain)"),
    OPT("cluster.tls.key", PK_OPT_STRING, cluster_tls.key, NULL,
        "PEM private key of cluster.tls.cert"),
    OPT("cluster.tls.client-cas", PK_OPT_STRING, cluster_tls.client_cas, NULL,
        "PEM CA certificates: peers must present a certificate they signed (mTLS; then "
        "cluster.secret may be empty)"),
    OPT("cluster.tls.root-cas", PK_OPT_STRING, cluster_tls.root_cas, NULL,
        "PEM CA certificates peers' cluster certificates are verified against (chain only); "
        "required with cluster.tls.cert"),
    OPT("tls.groups", PK_OPT_STRING, tls_groups, PK_TLS_DEFAULT_GROUPS,
        "Key exchange groups the TLS ports accept, in OpenSSL's form (a:b:c)"),
    OPT("dns.servers", PK_OPT_STRING, dns_servers, "",
        "DNS servers for cluster.join (comma list of ip[:port]); empty: /etc/resolv.conf"),
    OPT("log.level", PK_OPT_STRING, log_level, "info", "debug, info, warn or error"),
    OPT("grace-period", PK_OPT_DURATION, grace_period_ms, "30s",
        "On SIGTERM/SIGINT, time allowed for in-flight requests"),
    OPT("drain-delay", PK_OPT_DURATION, drain_delay_ms, "0s",
        "On SIGTERM, keep accepting (not ready) this long before draining connections"),
};
const size_t pk_server_nopts = PK_ARRAY_LEN(pk_server_opts);

int pk_server_config_check(struct pk_server_config *cfg, char *err, size_t errlen)
{
    enum pk_log_level lvl;
    if (!cfg->log_level || pk_log_parse_level(cfg->log_level, &lvl) != 0) {
        snprintf(err, errlen, "log.level: invalid level '%s' (debug, info, warn or error)",
                 cfg->log_level ? cfg->log_level : "");
        return PK_ERR_INVALID;
    }
    const char *addrs[][2] = {{"proxy.bind-addr", cfg->proxy_bind_addr},
                              {"upstream.bind-addr", cfg->upstream_bind_addr},
                              {"admin.bind-addr", cfg->admin_bind_addr},
                              {"cluster.bind-addr", cfg->cluster_bind_addr}};
    for (size_t i = 0; i < PK_ARRAY_LEN(addrs); i++) {
        char *host = NULL;
        uint16_t port;
        if (!addrs[i][1] || pk_split_hostport(addrs[i][1], &host, &port, true) != 0) {
            snprintf(err, errlen, "%s: invalid address '%s' (want host:port or :port)", addrs[i][0],
                     addrs[i][1] ? addrs[i][1] : "");
            return PK_ERR_INVALID;
        }
        free(host);
    }
    if (cfg->proxy_timeout_ms == 0) {
        snprintf(err, errlen, "proxy.timeout: must be greater than 0");
        return PK_ERR_INVALID;
    }
    if (cfg->upstream_stream_window < 65535 || cfg->upstream_stream_window > 0x7fffffff) {
        snprintf(err, errlen, "upstream.stream-window: must be between 64KiB and 2GiB");
        return PK_ERR_INVALID;
    }
    if (cfg->upstream_connection_window < 65535 || cfg->upstream_connection_window > 0x7fffffff) {
        snprintf(err, errlen, "upstream.connection-window: must be between 64KiB and 2GiB");
        return PK_ERR_INVALID;
    }
    if (cfg->proxy_max_connections < 0 || cfg->upstream_max_connections < 0 ||
        cfg->admin_max_connections < 0) {
        snprintf(err, errlen, "%s: must not be negative",
                 cfg->proxy_max_connections < 0      ? "proxy.max-connections"
                 : cfg->upstream_max_connections < 0 ? "upstream.max-connections"
                                                     : "admin.max-connections");
        return PK_ERR_INVALID;
    }
    if (cfg->proxy_max_h2_streams < 1 || cfg->proxy_max_h2_streams > 100000) {
        snprintf(err, errlen, "proxy.max-h2-streams: must be between 1 and 100000");
        return PK_ERR_INVALID;
    }
    if (cfg->proxy_max_header_bytes < 1024 || cfg->proxy_max_header_bytes > 1024 * 1024) {
        snprintf(err, errlen, "proxy.max-header-bytes: must be between 1KiB and 1MiB");
        return PK_ERR_INVALID;
    }
    char *end = NULL;
    double thr =
        strtod(cfg->upstream_rebalance_threshold ? cfg->upstream_rebalance_threshold : "", &end);
    if (!end || end == cfg->upstream_rebalance_threshold || *end || thr < 0 || thr > 100) {
        snprintf(err, errlen,
                 "upstream.rebalance.threshold: want a fraction such as 0.2 (got '%s')",
                 cfg->upstream_rebalance_threshold ? cfg->upstream_rebalance_threshold : "");
        return PK_ERR_INVALID;
    }
    cfg->rebalance_threshold = thr;
    if (cfg->upstream_rebalance_interval_ms == 0) {
        snprintf(err, errlen, "upstream.rebalance.interval: must be greater than 0");
        return PK_ERR_INVALID;
    }
    if (cfg->cluster_peer_timeout_ms < 100 || cfg->cluster_resolve_interval_ms < 100) {
        snprintf(err, errlen, "cluster.peer-timeout and cluster.resolve-interval: at least 100ms");
        return PK_ERR_INVALID;
    }
    if (cfg->cluster_node_id && *cfg->cluster_node_id &&
        !pk_endpoint_id_valid(cfg->cluster_node_id, strlen(cfg->cluster_node_id))) {
        snprintf(err, errlen, "cluster.node-id: 1-128 characters of [A-Za-z0-9._-]");
        return PK_ERR_INVALID;
    }
    struct pk_join_item *items;
    size_t nitems;
    if (pk_join_parse(cfg->cluster_join, &items, &nitems, err, errlen) != 0)
        return PK_ERR_INVALID;
    pk_join_free(items, nitems);
    if (pk_server_tls_check(cfg, err, errlen) != 0)
        return PK_ERR_INVALID;
    if (pk_tls_groups_check("tls.groups", cfg->tls_groups, err, errlen) != 0)
        return PK_ERR_INVALID;
    if (cfg->upstream_handshake_timeout_ms == 0) {
        snprintf(err, errlen, "upstream.handshake-timeout: must be greater than 0");
        return PK_ERR_INVALID;
    }
    /* A node in a cluster serves its tunnels to whoever reaches the cluster port: that
     * must prove it is a peer (docs/manage/security.md). */
    bool clustered = cfg->cluster_join && *cfg->cluster_join;
    if (clustered && !(cfg->cluster_secret && *cfg->cluster_secret) &&
        !pk_tls_set(cfg->cluster_tls.client_cas) && !cfg->cluster_insecure_no_secret) {
        snprintf(err, errlen,
                 "cluster.secret: required with cluster.join (anyone who reaches the cluster port "
                 "could use this node's tunnels); or set cluster.tls.client-cas (mTLS), or "
                 "cluster.insecure-no-secret to run without proof");
        return PK_ERR_INVALID;
    }
    if (cfg->upstream_heartbeat_interval_ms == 0 || cfg->upstream_heartbeat_timeout_ms == 0) {
        snprintf(err, errlen, "upstream.heartbeat-interval and -timeout must be greater than 0");
        return PK_ERR_INVALID;
    }
    return 0;
}

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
        pk_listener_free(srv->loop.cluster_l);
        srv->loop.cluster_l = NULL;
        srv->node.cluster_closing = true;
        pk_cluster_port_state_changed(srv); /* the long polls are answered now */
        pk_proxy_drain_all(srv, true);
    }
    if (drained(srv)) {
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
        pk_listener_free(srv->loop.proxy_l);
        srv->loop.proxy_l = NULL;
    }
    if (srv->loop.upstream_l) {
        pk_listener_free(srv->loop.upstream_l);
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

struct pk_server *pk_server_new(struct event_base *base, const struct pk_server_config *cfg,
                                char *err, size_t errlen)
{
    struct pk_server *srv = pk_xcalloc(1, sizeof(*srv));
    char addr[256];
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

    pk_h2_settings_default(&srv->node.tunnel_settings);
    srv->node.tunnel_settings.stream_window = (uint32_t)cfg->upstream_stream_window;
    srv->node.tunnel_settings.conn_window = (uint32_t)cfg->upstream_connection_window;
    srv->node.tunnel_settings.ping_interval_ms = cfg->upstream_heartbeat_interval_ms;
    srv->node.tunnel_settings.ping_timeout_ms = cfg->upstream_heartbeat_timeout_ms;
    srv->node.tunnel_settings.settings_timeout_ms = cfg->upstream_heartbeat_timeout_ms;
    srv->node.tunnel_settings.max_header_bytes = cfg->proxy_max_header_bytes;

    pk_h2_settings_default(&srv->node.down_settings);
    srv->node.down_settings.max_concurrent_streams = (uint32_t)cfg->proxy_max_h2_streams;
    srv->node.down_settings.enable_connect_protocol = true; /* RFC 8441: WebSocket, piko-tcp */
    srv->node.down_settings.ping_interval_ms = 0;
    srv->node.down_settings.settings_timeout_ms = cfg->proxy_head_timeout_ms;
    srv->node.down_settings.max_header_bytes = cfg->proxy_max_header_bytes;

    /* Peer links we dial use the tunnel's settings (same client code); the links peers open
     * to our cluster port get these: */
    pk_h2_settings_default(&srv->node.cluster_settings);
    srv->node.cluster_settings.max_concurrent_streams = 16384;
    srv->node.cluster_settings.stream_window = (uint32_t)cfg->upstream_stream_window;
    srv->node.cluster_settings.conn_window = (uint32_t)cfg->upstream_connection_window;
    srv->node.cluster_settings.enable_connect_protocol = true;
    srv->node.cluster_settings.ping_interval_ms = 0; /* the dialling side sends heartbeats */
    srv->node.cluster_settings.settings_timeout_ms = cfg->upstream_heartbeat_timeout_ms;
    srv->node.cluster_settings.max_header_bytes = cfg->proxy_max_header_bytes;

    if (pk_server_auth_init(srv, err, errlen) != 0) {
        pk_server_del(srv);
        return NULL;
    }
    /* The cluster port serves this node's tunnels to its peers: a node that is not in a
     * cluster has no peers and does not open it (docs/manage/security.md). */
    bool clustered = cfg->cluster_join && *cfg->cluster_join;
    if (pk_server_tls_new(srv, err, errlen) != 0 || pk_proxy_listen(srv, err, errlen) != 0 ||
        pk_upstream_listen(srv, err, errlen) != 0 || admin_listen(srv, err, errlen) != 0 ||
        (clustered && pk_cluster_port_listen(srv, err, errlen) != 0)) {
        pk_server_del(srv);
        return NULL;
    }
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

    struct pk_resolver_opts ropts = {
        .servers = cfg->dns_servers && *cfg->dns_servers ? cfg->dns_servers : NULL};
    srv->node.resolver = pk_resolver_new_opts(base, &ropts, err, errlen);
    if (!srv->node.resolver) {
        pk_server_del(srv);
        return NULL;
    }
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
        pk_cluster_new(base, srv->node.resolver, &copts, &cluster_cbs, srv, err, errlen);
    if (!srv->node.cluster) {
        pk_server_del(srv);
        return NULL;
    }
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
    pk_cluster_free(srv->node.cluster);
    /* Before the verifiers: the admin requests waiting for one are cancelled with it. */
    pk_admin_free(srv->node.admin);
    srv->node.admin = NULL;
    pk_server_auth_free(srv);
    pk_resolver_del(srv->node.resolver);
    pk_linger_list_free(&srv->loop.lingers);
    if (srv->loop.proxy_l)
        pk_listener_free(srv->loop.proxy_l);
    if (srv->loop.upstream_l)
        pk_listener_free(srv->loop.upstream_l);
    if (srv->loop.cluster_l)
        pk_listener_free(srv->loop.cluster_l);
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
    free(srv);
}
