/* sidecar: piko-sidecar — keeps tunnels to the server for each endpoint and hands their
 * streams to the local services. */
#ifndef PK_SIDECAR_H
#define PK_SIDECAR_H

#include "accesslog/accesslog.h"
#include "config/config.h"
#include "net/tls.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct pk_sidecar;

struct pk_sidecar_config {
    char *connect_url;     /* one URL or a comma-separated list */
    long long connections; /* tunnels per endpoint */
    uint64_t connect_timeout_ms;
    uint64_t heartbeat_interval_ms;
    uint64_t heartbeat_timeout_ms;
    long long max_streams;
    uint64_t stream_window;
    uint64_t connection_window;
    struct pk_strlist endpoints;
    struct pk_strlist tcp_endpoints;
    struct pk_strlist forwards;
    char *forward_url;
    uint64_t local_connect_timeout_ms;
    long long local_max_idle;
    uint64_t local_stall_timeout_ms;
    char *admin_bind_addr;
    long long admin_max_connections;
    struct pk_log_options log; /* log.* (accesslog/accesslog.h) */
    uint64_t grace_period_ms;
    char *dns_servers;
    /* connect.tls.root-cas / .cert / .key (also used for an https forward.url) */
    struct pk_tls_files connect_tls;
    bool connect_tls_insecure;

    char *connect_token;      /* bearer token of the tunnel handshakes */
    char *connect_token_file; /* or a file holding it, read at every dial */
    char *forward_token;      /* bearer token of --forward connections (proxy.auth) */
    char *forward_token_file; /* or a file holding it, read at every connection */
};

extern const struct pk_opt pk_sidecar_opts[];
extern const size_t pk_sidecar_nopts;

int pk_sidecar_config_check(const struct pk_sidecar_config *cfg, char *err, size_t errlen);

struct pk_sidecar *pk_sidecar_new(struct event_base *base, const struct pk_sidecar_config *cfg,
                                  char *err, size_t errlen);
/* Graceful stop: two-step GOAWAY on every tunnel, no more dials; the loop exits once every
 * tunnel closed or the grace period ended. Idempotent. */
void pk_sidecar_shutdown(struct pk_sidecar *sc);
void pk_sidecar_del(struct pk_sidecar *sc);
/* SIGHUP: builds the TLS client context again from connect.tls.* (a renewed client
 * certificate); new dials use it. On failure the current one stays and the reason is
 * logged. */
void pk_sidecar_reload(struct pk_sidecar *sc);

#endif
