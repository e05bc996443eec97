/* piko-server's options (flags and YAML keys) and the checks of values that parse but
 * make no sense together: kept apart from the code they configure (pk_server_new). */
#include "server/server.h"

#include "accesslog/accesslog.h"
#include "base/base.h"
#include "base/log.h"
#include "cluster/state.h"
#include "config/config.h"
#include "dns/dns.h"
#include "net/tls.h"
#include "server/server_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    PK_LOG_OPTS(struct pk_server_config, log),
    OPT("metrics.enabled", PK_OPT_BOOL, metrics_enabled, "true",
        "Count requests, streams, tunnels and limits and serve them at the admin port's "
        "/metrics (false: nothing is counted and /metrics answers 404)"),
    OPT("metrics.endpoint-labels", PK_OPT_BOOL, metrics_endpoint_labels, "false",
        "Also count requests and bytes by endpoint (piko_endpoint_*): one series per endpoint "
        "and status class, created on first use, at most 10000 (docs/manage/metrics.md)"),
    OPT("grace-period", PK_OPT_DURATION, grace_period_ms, "30s",
        "On SIGTERM/SIGINT, time allowed for in-flight requests"),
    OPT("drain-delay", PK_OPT_DURATION, drain_delay_ms, "0s",
        "On SIGTERM, keep accepting (not ready) this long before draining connections"),
};
const size_t pk_server_nopts = PK_ARRAY_LEN(pk_server_opts);

/* The listen addresses, the log level and the proxy and upstream ports' numbers. */
static int check_ports(const struct pk_server_config *cfg, char *err, size_t errlen)
{
    if (pk_log_options_check(&cfg->log, err, errlen) != 0)
        return PK_ERR_INVALID;
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
    if (cfg->upstream_handshake_timeout_ms == 0) {
        snprintf(err, errlen, "upstream.handshake-timeout: must be greater than 0");
        return PK_ERR_INVALID;
    }
    if (cfg->upstream_heartbeat_interval_ms == 0 || cfg->upstream_heartbeat_timeout_ms == 0) {
        snprintf(err, errlen, "%s: must be greater than 0",
                 cfg->upstream_heartbeat_interval_ms == 0 ? "upstream.heartbeat-interval"
                                                          : "upstream.heartbeat-timeout");
        return PK_ERR_INVALID;
    }
    return 0;
}

/* Rebalancing, the cluster (join list, node id, the proof peers must give) and TLS. */
static int check_cluster(struct pk_server_config *cfg, char *err, size_t errlen)
{
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
        snprintf(err, errlen, "%s: must be at least 100ms",
                 cfg->cluster_peer_timeout_ms < 100 ? "cluster.peer-timeout"
                                                    : "cluster.resolve-interval");
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
    if (pk_dns_servers_check("dns.servers", cfg->dns_servers, err, errlen) != 0)
        return PK_ERR_INVALID;
    if (pk_server_tls_check(cfg, err, errlen) != 0)
        return PK_ERR_INVALID;
    if (pk_tls_groups_check("tls.groups", cfg->tls_groups, err, errlen) != 0)
        return PK_ERR_INVALID;
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
    return 0;
}

int pk_server_config_check(struct pk_server_config *cfg, char *err, size_t errlen)
{
    if (check_ports(cfg, err, errlen) != 0 || check_cluster(cfg, err, errlen) != 0)
        return PK_ERR_INVALID;
    return 0;
}
