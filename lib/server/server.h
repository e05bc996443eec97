/* server: one piko-server node — proxy, upstream and admin listeners on one loop.
 *
 * Everything hangs off struct pk_server; there is no mutable global state, so several
 * workers (one loop each) can come later without a rewrite. */
#ifndef PK_SERVER_H
#define PK_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
#include "accesslog/accesslog.h"
#include "config/config.h"
#include "net/tls.h"
struct pk_server;

/* --<port>.auth.*: JWT verification on one port (portauth.c). At most one key source;
 * none set: the port is open. */
struct pk_port_auth_config {
    char *hmac_secret_key;
    char *rsa_public_key;   /* PEM text, or the path of a PEM file */
    char *ecdsa_public_key; /* PEM text, or the path of a PEM file */
    char *jwks_endpoint;    /* https:// URL or file path */
    uint64_t jwks_cache_ttl_ms;
    char *audience;
    char *issuer;
    bool disable_disconnect_on_expiry; /* upstream only */
};

struct pk_server_config {
    char *proxy_bind_addr;
    uint64_t proxy_timeout_ms;
    uint64_t proxy_max_header_bytes;
    uint64_t proxy_head_timeout_ms;
    uint64_t proxy_idle_timeout_ms;
    long long proxy_max_h2_streams;
    uint64_t proxy_raw_idle_timeout_ms;
    uint64_t proxy_stall_timeout_ms;
    long long proxy_max_connections;
    uint64_t proxy_max_body_bytes;
    long long upstream_max_connections;
    uint64_t upstream_handshake_timeout_ms;
    struct pk_port_auth_config proxy_auth;
    char *upstream_bind_addr;
    uint64_t upstream_heartbeat_interval_ms;
    uint64_t upstream_heartbeat_timeout_ms;
    uint64_t upstream_stream_window;
    uint64_t upstream_connection_window;
    char *upstream_rebalance_threshold; /* a fraction, parsed by pk_server_config_check */
    uint64_t upstream_rebalance_interval_ms;
    double rebalance_threshold; /* parsed from upstream_rebalance_threshold */
    struct pk_port_auth_config upstream_auth;
    char *admin_bind_addr;
    long long admin_max_connections;
    struct pk_port_auth_config admin_auth;
    char *cluster_bind_addr;
    char *cluster_node_id;
    char *cluster_join;
    uint64_t cluster_resolve_interval_ms;
    uint64_t cluster_peer_timeout_ms;
    char *cluster_secret;
    bool cluster_insecure_no_secret;
    char *dns_servers;
    struct pk_log_options log; /* log.* (accesslog/accesslog.h) */
    bool metrics_enabled;
    bool metrics_endpoint_labels;
    uint64_t grace_period_ms;
    uint64_t drain_delay_ms;
    /* TLS of each port: <port>.tls.cert/.key/.client-cas (unset: plain TCP), and
     * cluster.tls.root-cas (peers are dialled over TLS). See tls_ports.c. */
    struct pk_tls_files proxy_tls, upstream_tls, admin_tls, cluster_tls;
    char *tls_groups; /* key exchange groups of every port (copied into each port's files) */
};

/* The option table of piko-server (flags and YAML keys). */
extern const struct pk_opt pk_server_opts[];
extern const size_t pk_server_nopts;

/* Checks values that parse but make no sense together, and fills the derived fields
 * (rebalance_threshold). Returns 0 or PK_ERR_INVALID with
 * a message naming the key. */
int pk_server_config_check(struct pk_server_config *cfg, char *err, size_t errlen);

/* Binds every listener. Returns NULL with a message on failure. The config is borrowed
 * and must outlive the server. */
struct pk_server *pk_server_new(struct event_base *base, const struct pk_server_config *cfg,
                                char *err, size_t errlen);
/* Starts a graceful shutdown: not ready, GOAWAY on every tunnel and downstream h2
 * connection, idle keep-alive connections closed; the loop exits when in-flight work is
 * done or the grace period ends. Idempotent. */
void pk_server_shutdown(struct pk_server *srv);
void pk_server_del(struct pk_server *srv);
/* SIGHUP: reads every port's certificate, key and client CAs again (tls_ports.c). A port
 * whose files fail keeps its old ones, and the reason is logged. */
void pk_server_reload(struct pk_server *srv);

#endif
