#include "sidecar/sidecar.h"

#include "accesslog/accesslog.h"
#include "admin/admin.h"
#include "base/base.h"
#include "base/log.h"
#include "base/memtrim.h"
#include "dns/dns.h"
#include "net/net.h"
#include "sidecar/sidecar_int.h"

#include <event2/event.h>
#include <json-c/json.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OPT(name, type, field, def, help)                                                          \
    {                                                                                              \
        name, type, offsetof(struct pk_sidecar_config, field), def, help, NULL                     \
    }

const struct pk_opt pk_sidecar_opts[] = {
    OPT("connect.url", PK_OPT_STRING, connect_url, "http://localhost:8001",
        "Server upstream URL (http:// or https://), or a comma-separated list dialled in turn"),
    OPT("connect.token", PK_OPT_STRING, connect_token, NULL,
        "Bearer token (JWT) sent on tunnel handshakes as x-piko-authorization"),
    OPT("connect.token-file", PK_OPT_STRING, connect_token_file, NULL,
        "File holding the bearer token of tunnel handshakes, read again at every dial"),
    OPT("connect.connections", PK_OPT_INT, connections, "1",
        "Tunnels kept per endpoint, each dialled on its own (1-64)"),
    OPT("connect.tls.root-cas", PK_OPT_STRING, connect_tls.root_cas, NULL,
        "PEM CA certificates that https servers are verified against (unset: system roots)"),
    OPT("connect.tls.cert", PK_OPT_STRING, connect_tls.cert, NULL,
        "PEM client certificate chain for https servers that require one (mTLS)"),
    OPT("connect.tls.key", PK_OPT_STRING, connect_tls.key, NULL,
        "PEM private key of connect.tls.cert"),
    OPT("connect.tls.insecure-skip-verify", PK_OPT_BOOL, connect_tls_insecure, "false",
        "Do not verify https servers' certificates (testing only: anyone can impersonate them)"),
    OPT("connect.timeout", PK_OPT_DURATION, connect_timeout_ms, "10s",
        "Time allowed to dial the server and complete the handshake"),
    OPT("connect.heartbeat-interval", PK_OPT_DURATION, heartbeat_interval_ms, "10s",
        "PING interval on tunnels"),
    OPT("connect.heartbeat-timeout", PK_OPT_DURATION, heartbeat_timeout_ms, "10s",
        "A tunnel with no frame this long after a PING is dead"),
    OPT("connect.max-streams", PK_OPT_INT, max_streams, "1024",
        "Concurrent streams accepted per tunnel (SETTINGS_MAX_CONCURRENT_STREAMS)"),
    OPT("connect.stream-window", PK_OPT_SIZE, stream_window, "1MiB",
        "HTTP/2 stream flow-control window"),
    OPT("connect.connection-window", PK_OPT_SIZE, connection_window, "16MiB",
        "HTTP/2 connection flow-control window"),
    {"endpoint", PK_OPT_STRING_LIST, offsetof(struct pk_sidecar_config, endpoints), NULL,
     "Expose a local HTTP service as endpoint NAME (ADDR: port, host:port or http://host:port)",
     "NAME=ADDR"},
    {"tcp-endpoint", PK_OPT_STRING_LIST, offsetof(struct pk_sidecar_config, tcp_endpoints), NULL,
     "Expose a local TCP service as endpoint NAME (optionally ,proxy-protocol=v1 or v2)",
     "NAME=ADDR[,OPT]"},
    {"forward", PK_OPT_STRING_LIST, offsetof(struct pk_sidecar_config, forwards), NULL,
     "Listen on LOCAL_ADDR and tunnel each connection to the TCP endpoint ENDPOINT",
     "LOCAL_ADDR=ENDPOINT"},
    OPT("forward.url", PK_OPT_STRING, forward_url, "http://localhost:8000",
        "Server proxy URL (http:// or https://, with the connect.tls.* settings) that "
        "--forward connections go through"),
    OPT("forward.token", PK_OPT_STRING, forward_token, NULL,
        "Bearer token (JWT) sent on --forward connections, for the proxy port's auth"),
    OPT("forward.token-file", PK_OPT_STRING, forward_token_file, NULL,
        "File holding the bearer token of --forward connections, read at every connection"),
    OPT("local.connect-timeout", PK_OPT_DURATION, local_connect_timeout_ms, "5s",
        "Time allowed to connect to a local service"),
    OPT("local.max-idle", PK_OPT_INT, local_max_idle, "64",
        "Idle keep-alive connections kept per local service"),
    OPT("local.stall-timeout", PK_OPT_DURATION, local_stall_timeout_ms, "60s",
        "Abort a request whose body to, or response body from, the local service has not "
        "moved this long (0: never)"),
    OPT("admin.bind-addr", PK_OPT_STRING, admin_bind_addr, "127.0.0.1:5000",
        "Address for /health and /ready"),
    OPT("admin.max-connections", PK_OPT_INT, admin_max_connections, "128",
        "Admin connections open at once; above, new ones are closed at once (0: no limit)"),
    PK_LOG_OPTS(struct pk_sidecar_config, log),
    OPT("grace-period", PK_OPT_DURATION, grace_period_ms, "30s",
        "On SIGTERM/SIGINT, time allowed for in-flight streams"),
    OPT("dns.servers", PK_OPT_STRING, dns_servers, NULL,
        "DNS servers (ip[:port],...) instead of /etc/resolv.conf"),
};
const size_t pk_sidecar_nopts = PK_ARRAY_LEN(pk_sidecar_opts);

/* Parses "NAME=ADDR[,proxy-protocol=v1|v2]" where ADDR is "port", "host:port" or
 * "http://host:port[/]" (options only where key is "tcp-endpoint"). */
static int parse_endpoint(const char *key, const char *spec, char **name, char **host,
                          uint16_t *port, int *proxy_protocol, char *err, size_t errlen)
{
    const char *eq = strchr(spec, '=');
    *name = *host = NULL;
    *proxy_protocol = 0;
    if (!eq || eq == spec) {
        snprintf(err, errlen, "%s: '%s' is not NAME=ADDR", key, spec);
        return PK_ERR_INVALID;
    }
    if (!pk_endpoint_id_valid(spec, (size_t)(eq - spec))) {
        snprintf(err, errlen, "%s: invalid endpoint id '%.*s' (1-128 of [A-Za-z0-9._-])", key,
                 (int)(eq - spec), spec);
        return PK_ERR_INVALID;
    }
    char addr[512];
    snprintf(addr, sizeof(addr), "%s", eq + 1);
    char *opt = strchr(addr, ',');
    if (opt) {
        *opt++ = '\0';
        if (strcmp(key, "tcp-endpoint") != 0) {
            snprintf(err, errlen, "%s: options are only for --tcp-endpoint ('%s')", key, spec);
            return PK_ERR_INVALID;
        }
        if (strcmp(opt, "proxy-protocol=v1") == 0) {
            *proxy_protocol = 1;
        } else if (strcmp(opt, "proxy-protocol=v2") == 0) {
            *proxy_protocol = 2;
        } else {
            snprintf(err, errlen, "%s: unknown option '%s' (proxy-protocol=v1 or v2)", key, opt);
            return PK_ERR_INVALID;
        }
    }
    char buf[512];
    if (strncmp(addr, "http://", 7) == 0) {
        snprintf(buf, sizeof(buf), "%s", addr + 7);
        size_t l = strlen(buf);
        if (l && buf[l - 1] == '/')
            buf[l - 1] = '\0';
        if (!strchr(buf, ':'))
            strncat(buf, ":80", sizeof(buf) - strlen(buf) - 1);
    } else if (strspn(addr, "0123456789") == strlen(addr) && addr[0]) {
        snprintf(buf, sizeof(buf), "127.0.0.1:%s", addr);
    } else {
        snprintf(buf, sizeof(buf), "%s", addr);
    }
    if (pk_split_hostport(buf, host, port, false) != 0 || !*host) {
        snprintf(err, errlen, "%s: invalid address '%s' in '%s' (port, host:port or URL)", key,
                 addr, spec);
        free(*host);
        *host = NULL;
        return PK_ERR_INVALID;
    }
    *name = pk_xstrndup(spec, (size_t)(eq - spec));
    return 0;
}

int pk_sidecar_config_check(const struct pk_sidecar_config *cfg, char *err, size_t errlen)
{
    if (pk_log_options_check(&cfg->log, err, errlen) != 0)
        return PK_ERR_INVALID;
    char *host = NULL, *name = NULL;
    uint16_t port;
    struct sc_server *servers;
    size_t nservers;
    if (pk_servers_parse(cfg->connect_url, &servers, &nservers, err, errlen) != 0)
        return PK_ERR_INVALID;
    pk_servers_free(servers, nservers);
    if (cfg->connections < 1 || cfg->connections > 64) {
        snprintf(err, errlen, "connect.connections: must be between 1 and 64 (got %lld)",
                 cfg->connections);
        return PK_ERR_INVALID;
    }
    if (!cfg->admin_bind_addr || pk_split_hostport(cfg->admin_bind_addr, &host, &port, true) != 0) {
        snprintf(err, errlen, "admin.bind-addr: invalid address '%s' (want host:port or :port)",
                 cfg->admin_bind_addr ? cfg->admin_bind_addr : "");
        return PK_ERR_INVALID;
    }
    free(host);
    if (cfg->admin_max_connections < 0) {
        snprintf(err, errlen, "admin.max-connections: must not be negative");
        return PK_ERR_INVALID;
    }
    if (cfg->endpoints.n == 0 && cfg->tcp_endpoints.n == 0 && cfg->forwards.n == 0) {
        snprintf(err, errlen,
                 "endpoint: nothing to do: give --endpoint NAME=ADDR, "
                 "--tcp-endpoint NAME=ADDR or --forward LOCAL_ADDR=ENDPOINT");
        return PK_ERR_INVALID;
    }
    int pp;
    for (size_t i = 0; i < cfg->endpoints.n; i++) {
        if (parse_endpoint("endpoint", cfg->endpoints.v[i], &name, &host, &port, &pp, err,
                           errlen) != 0)
            return PK_ERR_INVALID;
        free(name);
        free(host);
    }
    for (size_t i = 0; i < cfg->tcp_endpoints.n; i++) {
        if (parse_endpoint("tcp-endpoint", cfg->tcp_endpoints.v[i], &name, &host, &port, &pp, err,
                           errlen) != 0)
            return PK_ERR_INVALID;
        free(name);
        free(host);
    }
    if (pk_forward_config_check(cfg, err, errlen) != 0)
        return PK_ERR_INVALID;
    if (pk_token_config_check(cfg->connect_token, cfg->connect_token_file, "connect.token", err,
                              errlen) != 0 ||
        pk_token_config_check(cfg->forward_token, cfg->forward_token_file, "forward.token", err,
                              errlen) != 0 ||
        pk_tls_client_files_check("connect.tls", &cfg->connect_tls, err, errlen) != 0)
        return PK_ERR_INVALID;
    if (cfg->max_streams < 1 || cfg->max_streams > 100000) {
        snprintf(err, errlen, "connect.max-streams: must be between 1 and 100000");
        return PK_ERR_INVALID;
    }
    if (cfg->stream_window < 65535 || cfg->stream_window > 0x7fffffff) {
        snprintf(err, errlen, "connect.stream-window: must be between 64KiB and 2GiB");
        return PK_ERR_INVALID;
    }
    if (cfg->connection_window < 65535 || cfg->connection_window > 0x7fffffff) {
        snprintf(err, errlen, "connect.connection-window: must be between 64KiB and 2GiB");
        return PK_ERR_INVALID;
    }
    if (cfg->local_max_idle < 0) {
        snprintf(err, errlen, "local.max-idle: must not be negative");
        return PK_ERR_INVALID;
    }
    if (pk_dns_servers_check("dns.servers", cfg->dns_servers, err, errlen) != 0)
        return PK_ERR_INVALID;
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
    struct pk_sidecar *sc = arg;
    bool ready = !sc->draining;
    for (struct sc_endpoint *ep = sc->eps; ep && ready; ep = ep->next)
        ready = pk_tunnels_ready(ep);
    admin_status(req, ready ? 200 : 503,
                 ready ? "ready" : (sc->draining ? "draining" : "connecting"));
}

/* ---- lifecycle ---------------------------------------------------------------------- */

void pk_sidecar_check_done(struct pk_sidecar *sc)
{
    if (sc->draining && sc->ntunnels == 0 && sc->nforwards == 0)
        event_active(sc->check_ev, EV_TIMEOUT, 0);
}

/* The shutdown lines speak only of what this sidecar runs: tunnels for endpoints,
 * connections for forwards, or both. */
static const char *closed_what(const struct pk_sidecar *sc)
{
    if (sc->eps && sc->forwards)
        return "every tunnel and forwarded connection closed";
    return sc->eps ? "every tunnel closed" : "every forwarded connection closed";
}

/* "3 streams in flight", "1 forwarded connections open", or both joined by ", ". */
static void in_flight(const struct pk_sidecar *sc, char *buf, size_t len)
{
    int n = 0;
    buf[0] = '\0';
    if (sc->eps)
        n = snprintf(buf, len, "%zu streams in flight", sc->nstreams);
    if (sc->forwards && n >= 0 && (size_t)n < len)
        snprintf(buf + n, len - (size_t)n, "%s%zu forwarded connections open", n ? ", " : "",
                 sc->nforwards);
}

static void check_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_sidecar *sc = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (sc->draining && sc->ntunnels == 0 && sc->nforwards == 0) {
        PK_INFO("sidecar", "%s: exiting", closed_what(sc));
        event_base_loopexit(sc->base, NULL);
    }
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_sidecar *sc = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    char open[96];
    in_flight(sc, open, sizeof(open));
    PK_WARN("sidecar", "grace period over with %s: exiting", open);
    event_base_loopexit(sc->base, NULL);
}

void pk_sidecar_shutdown(struct pk_sidecar *sc)
{
    if (sc->draining)
        return;
    sc->draining = true;
    char open[96];
    in_flight(sc, open, sizeof(open));
    PK_INFO("sidecar", "shutting down: %s", open);
    pk_forward_stop_listening(sc);
    for (struct sc_endpoint *ep = sc->eps; ep; ep = ep->next) {
        pk_tunnels_drain(ep);
        pk_local_pool_free(ep);
    }
    struct timeval tv = pk_ms_timeval(sc->cfg->grace_period_ms);
    event_add(sc->grace_ev, &tv);
    pk_sidecar_check_done(sc);
}

struct pk_sidecar *pk_sidecar_new(struct event_base *base, const struct pk_sidecar_config *cfg,
                                  char *err, size_t errlen)
{
    struct pk_sidecar *sc = pk_xcalloc(1, sizeof(*sc));
    sc->base = base;
    sc->cfg = cfg;
    pk_linger_list_init(&sc->lingers, NULL, NULL);
    sc->memtrim = pk_memtrim_new(base);
    sc->grace_ev = pk_xevent_new(base, -1, 0, grace_cb, sc);
    sc->check_ev = pk_xevent_new(base, -1, 0, check_cb, sc);
    char host[64];
    gethostname(host, sizeof(host));
    host[sizeof(host) - 1] = '\0';
    snprintf(sc->sidecar_id, sizeof(sc->sidecar_id), "%.40s-%d", host, (int)getpid());

    if (pk_servers_parse(cfg->connect_url, &sc->servers, &sc->nservers, err, errlen) != 0)
        goto fail;
    bool tls = false;
    for (size_t i = 0; i < sc->nservers; i++)
        tls = tls || sc->servers[i].tls;

    pk_h2_settings_default(&sc->tunnel_settings);
    sc->tunnel_settings.max_concurrent_streams = (uint32_t)cfg->max_streams;
    sc->tunnel_settings.enable_connect_protocol = true;
    sc->tunnel_settings.stream_window = (uint32_t)cfg->stream_window;
    sc->tunnel_settings.conn_window = (uint32_t)cfg->connection_window;
    sc->tunnel_settings.ping_interval_ms = cfg->heartbeat_interval_ms;
    sc->tunnel_settings.ping_timeout_ms = cfg->heartbeat_timeout_ms;
    sc->tunnel_settings.settings_timeout_ms = cfg->heartbeat_timeout_ms;

    if (tls || pk_forward_uses_tls(cfg)) {
        sc->tls_ctx = pk_tls_client_ctx_new("connect.tls", &cfg->connect_tls,
                                            cfg->connect_tls_insecure, pk_alpn_http11, err, errlen);
        if (!sc->tls_ctx)
            goto fail;
        if (cfg->connect_tls_insecure)
            PK_WARN("sidecar", "connect.tls.insecure-skip-verify is on: server certificates are "
                               "NOT verified, anyone on the network path can impersonate the "
                               "server (testing only)");
    }
    /* dns.servers "" is the system configuration, as on the server. */
    sc->resolver = pk_resolver_new(
        base, cfg->dns_servers && *cfg->dns_servers ? cfg->dns_servers : NULL, err, errlen);
    if (!sc->resolver)
        goto fail;

    struct pk_admin_opts ao = {.max_connections = cfg->admin_max_connections};
    sc->admin = pk_admin_new(base, cfg->admin_bind_addr, &ao, err, errlen);
    if (!sc->admin)
        goto fail;
    pk_admin_route(sc->admin, "/health", false, admin_health, sc);
    pk_admin_route(sc->admin, "/ready", false, admin_ready, sc);
    pk_sidecar_metrics_new(sc); /* adds /metrics */
    pk_sidecar_access_new(sc);  /* adds /status/requests */
    char addr[128];
    pk_admin_addr(sc->admin, addr, sizeof(addr));
    PK_INFO("sidecar", "admin listening addr=%s max-connections=%lld", addr,
            cfg->admin_max_connections);
    /* connect.url is dialled for endpoints only: a forward-only sidecar opens no tunnel
     * (its forwards log the server they go through). */
    if (cfg->endpoints.n + cfg->tcp_endpoints.n)
        PK_INFO("sidecar", "connect urls=%s connections=%lld", cfg->connect_url, cfg->connections);

    struct sc_endpoint **tail = &sc->eps;
    size_t nall = cfg->endpoints.n + cfg->tcp_endpoints.n;
    for (size_t i = 0; i < nall; i++) {
        bool tcp = i >= cfg->endpoints.n;
        const char *spec = tcp ? cfg->tcp_endpoints.v[i - cfg->endpoints.n] : cfg->endpoints.v[i];
        struct sc_endpoint *ep = pk_xcalloc(1, sizeof(*ep));
        ep->sc = sc;
        ep->tcp = tcp;
        parse_endpoint(tcp ? "tcp-endpoint" : "endpoint", spec, &ep->name, &ep->host, &ep->port,
                       &ep->proxy_protocol, err, errlen);
        *tail = ep;
        tail = &ep->next;
        PK_INFO("sidecar", "endpoint=%s kind=%s service=%s:%u%s", ep->name, tcp ? "tcp" : "http",
                ep->host, ep->port,
                ep->proxy_protocol == 1   ? " proxy-protocol=v1"
                : ep->proxy_protocol == 2 ? " proxy-protocol=v2"
                                          : "");
        pk_tunnels_start(ep);
    }
    if (pk_forward_start(sc, err, errlen) != 0)
        goto fail;
    return sc;
fail:
    pk_sidecar_del(sc);
    return NULL;
}

void pk_sidecar_reload(struct pk_sidecar *sc)
{
    char err[512];
    if (!sc->tls_ctx)
        return;
    SSL_CTX *ctx =
        pk_tls_client_ctx_new("connect.tls", &sc->cfg->connect_tls, sc->cfg->connect_tls_insecure,
                              pk_alpn_http11, err, sizeof(err));
    if (!ctx) {
        PK_WARN("sidecar", "TLS reload failed, keeping the current settings: %s", err);
        return;
    }
    /* Connections already up keep a reference to the old context. */
    SSL_CTX_free(sc->tls_ctx);
    sc->tls_ctx = ctx;
    PK_INFO("sidecar", "TLS settings reloaded%s%s",
            pk_tls_set(sc->cfg->connect_tls.cert) ? " cert=" : "",
            pk_tls_set(sc->cfg->connect_tls.cert) ? sc->cfg->connect_tls.cert : "");
}

void pk_sidecar_del(struct pk_sidecar *sc)
{
    if (!sc)
        return;
    /* Abort whatever is left and let the deferred closes run, so nothing leaks. */
    sc->draining = true;
    for (struct sc_endpoint *ep = sc->eps; ep; ep = ep->next) {
        pk_tunnels_abort(ep);
        pk_local_pool_free(ep);
    }
    pk_forward_stop(sc);
    for (int i = 0; i < 100 && (sc->ntunnels || sc->nstreams || sc->nforwards); i++)
        event_base_loop(sc->base, EVLOOP_NONBLOCK);
    for (struct sc_endpoint *ep = sc->eps; ep; ep = ep->next)
        pk_local_pool_free(ep);
    event_base_loop(sc->base, EVLOOP_NONBLOCK);
    while (sc->eps) {
        struct sc_endpoint *ep = sc->eps;
        sc->eps = ep->next;
        pk_tunnels_free(ep);
        free(ep->name);
        free(ep->host);
        free(ep);
    }
    pk_admin_del(sc->admin);
    pk_sidecar_metrics_del(sc);
    pk_sidecar_access_del(sc);
    pk_resolver_del(sc->resolver);
    pk_linger_list_free(&sc->lingers);
    if (sc->tls_ctx)
        SSL_CTX_free(sc->tls_ctx);
    event_free(sc->grace_ev);
    event_free(sc->check_ev);
    pk_servers_free(sc->servers, sc->nservers);
    pk_memtrim_del(sc->memtrim);
    free(sc);
}
