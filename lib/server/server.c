#include "server/server.h"

#include "base/base.h"
#include "base/log.h"
#include "config/config.h"
#include "dns/dns.h"
#include "h2/h2.h"
#include "net/net.h"
#include "server/server_int.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define OPT(name, type, field, def, help)                                                          \
    {                                                                                              \
        name, type, offsetof(struct pk_server_config, field), def, help, NULL                      \
    }

const struct pk_opt pk_server_opts[] = {
    OPT("proxy.bind-addr", PK_OPT_STRING, proxy_bind_addr, ":8000",
        "Address for downstream clients (HTTP/1.1 and h2c)"),
    OPT("proxy.timeout", PK_OPT_DURATION, proxy_timeout_ms, "30s",
        "Time to wait for an upstream response head before answering 504"),
    OPT("proxy.max-header-bytes", PK_OPT_SIZE, proxy_max_header_bytes, "64KiB",
        "Largest request head accepted (431 above)"),
    OPT("proxy.head-timeout", PK_OPT_DURATION, proxy_head_timeout_ms, "10s",
        "Time to receive a request head (408 after)"),
    OPT("proxy.idle-timeout", PK_OPT_DURATION, proxy_idle_timeout_ms, "5m",
        "Idle keep-alive connections are closed after this"),
    OPT("proxy.max-h2-streams", PK_OPT_INT, proxy_max_h2_streams, "256",
        "Concurrent streams per downstream HTTP/2 connection"),
    OPT("proxy.raw-idle-timeout", PK_OPT_DURATION, proxy_raw_idle_timeout_ms, "0",
        "Close an upgraded or TCP stream idle this long (0: never)"),
    OPT("upstream.bind-addr", PK_OPT_STRING, upstream_bind_addr, ":8001",
        "Address for sidecar tunnels"),
    OPT("upstream.heartbeat-interval", PK_OPT_DURATION, upstream_heartbeat_interval_ms, "10s",
        "PING interval on tunnels"),
    OPT("upstream.heartbeat-timeout", PK_OPT_DURATION, upstream_heartbeat_timeout_ms, "10s",
        "A tunnel with no frame this long after a PING is dead"),
    OPT("upstream.stream-window", PK_OPT_SIZE, upstream_stream_window, "1MiB",
        "HTTP/2 stream flow-control window on tunnels"),
    OPT("upstream.connection-window", PK_OPT_SIZE, upstream_connection_window, "16MiB",
        "HTTP/2 connection flow-control window on tunnels"),
    OPT("admin.bind-addr", PK_OPT_STRING, admin_bind_addr, ":8002",
        "Address for /health and /ready"),
    OPT("log.level", PK_OPT_STRING, log_level, "info", "debug, info, warn or error"),
    OPT("grace-period", PK_OPT_DURATION, grace_period_ms, "30s",
        "On SIGTERM/SIGINT, time allowed for in-flight requests"),
};
const size_t pk_server_nopts = PK_ARRAY_LEN(pk_server_opts);

int pk_server_config_check(const struct pk_server_config *cfg, char *err, size_t errlen)
{
    enum pk_log_level lvl;
    if (!cfg->log_level || pk_log_parse_level(cfg->log_level, &lvl) != 0) {
        snprintf(err, errlen, "log.level: invalid level '%s' (debug, info, warn or error)",
                 cfg->log_level ? cfg->log_level : "");
        return PK_ERR_INVALID;
    }
    const char *addrs[][2] = {{"proxy.bind-addr", cfg->proxy_bind_addr},
                              {"upstream.bind-addr", cfg->upstream_bind_addr},
                              {"admin.bind-addr", cfg->admin_bind_addr}};
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
    if (cfg->proxy_max_h2_streams < 1 || cfg->proxy_max_h2_streams > 100000) {
        snprintf(err, errlen, "proxy.max-h2-streams: must be between 1 and 100000");
        return PK_ERR_INVALID;
    }
    if (cfg->proxy_max_header_bytes < 1024 || cfg->proxy_max_header_bytes > 1024 * 1024) {
        snprintf(err, errlen, "proxy.max-header-bytes: must be between 1KiB and 1MiB");
        return PK_ERR_INVALID;
    }
    if (cfg->upstream_heartbeat_interval_ms == 0 || cfg->upstream_heartbeat_timeout_ms == 0) {
        snprintf(err, errlen, "upstream.heartbeat-interval and -timeout must be greater than 0");
        return PK_ERR_INVALID;
    }
    return 0;
}

/* ---- admin ------------------------------------------------------------------------- */

static void admin_reply(struct evhttp_request *req, int code, const char *body)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "%s\n", body);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Service Unavailable", b);
    evbuffer_free(b);
}

static void admin_health(struct evhttp_request *req, void *arg)
{
    PK_UNUSED(arg);
    admin_reply(req, 200, "{\"status\":\"ok\"}");
}

static void admin_ready(struct evhttp_request *req, void *arg)
{
    struct pk_server *srv = arg;
    if (srv->ready && !srv->draining)
        admin_reply(req, 200, "{\"status\":\"ready\"}");
    else
        admin_reply(req, 503,
                    srv->draining ? "{\"status\":\"draining\"}" : "{\"status\":\"starting\"}");
}

static void admin_notfound(struct evhttp_request *req, void *arg)
{
    PK_UNUSED(arg);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "{\"error\":\"not found\"}\n");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, 404, "Not Found", b);
    evbuffer_free(b);
}

static int admin_listen(struct pk_server *srv, char *err, size_t errlen)
{
    char addrbuf[256];
    struct evconnlistener *l =
        pk_listen(srv->base, srv->cfg->admin_bind_addr, NULL, NULL, err, errlen);
    if (!l)
        return PK_ERR_IO;
    evconnlistener_disable(l);
    srv->admin = evhttp_new(srv->base);
    if (!evhttp_bind_listener(srv->admin, l)) {
        snprintf(err, errlen, "cannot serve admin on '%s'", srv->cfg->admin_bind_addr);
        return PK_ERR_IO;
    }
    evconnlistener_enable(l);
    evhttp_set_allowed_methods(srv->admin, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_cb(srv->admin, "/health", admin_health, srv);
    evhttp_set_cb(srv->admin, "/ready", admin_ready, srv);
    evhttp_set_gencb(srv->admin, admin_notfound, srv);
    pk_listener_addr(l, addrbuf, sizeof(addrbuf));
    PK_INFO("server", "admin listening addr=%s", addrbuf);
    return 0;
}

/* ---- lifecycle ------------------------------------------------------------------------ */

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_server *srv = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    PK_WARN("server", "grace period over with %zu requests in flight: exiting", srv->nexchanges);
    event_base_loopexit(srv->base, NULL);
}

static void check_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_server *srv = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (srv->draining && srv->nexchanges == 0 && srv->nconns == 0 && srv->lingers.n == 0) {
        PK_INFO("server", "drained: exiting");
        event_base_loopexit(srv->base, NULL);
    }
}

void pk_server_check_drained(struct pk_server *srv)
{
    if (srv->draining && srv->nexchanges == 0 && srv->nconns == 0 && srv->lingers.n == 0)
        event_active(srv->check_ev, EV_TIMEOUT, 0);
}

static void linger_done(void *arg)
{
    pk_server_check_drained(arg);
}

void pk_server_shutdown(struct pk_server *srv)
{
    if (srv->draining)
        return;
    srv->draining = true;
    PK_INFO("server", "shutting down: %zu requests in flight, grace period %llums", srv->nexchanges,
            (unsigned long long)srv->cfg->grace_period_ms);
    /* New connections are refused; established ones finish their work. */
    evconnlistener_disable(srv->proxy_l);
    evconnlistener_disable(srv->upstream_l);
    pk_upstream_drain_all(srv);
    pk_proxy_drain_all(srv);
    struct timeval tv = {(time_t)(srv->cfg->grace_period_ms / 1000),
                         (suseconds_t)((srv->cfg->grace_period_ms % 1000) * 1000)};
    event_add(srv->grace_ev, &tv);
    pk_server_check_drained(srv);
}

struct pk_server *pk_server_new(struct event_base *base, const struct pk_server_config *cfg,
                                char *err, size_t errlen)
{
    struct pk_server *srv = pk_xcalloc(1, sizeof(*srv));
    char addr[256];
    srv->base = base;
    srv->cfg = cfg;
    char host[64] = "piko";
    uint32_t suffix = 0;
    gethostname(host, sizeof(host));
    host[sizeof(host) - 1] = '\0';
    if (getrandom(&suffix, sizeof(suffix), 0) != sizeof(suffix))
        suffix = (uint32_t)pk_now_ms() ^ (uint32_t)getpid();
    snprintf(srv->node_id, sizeof(srv->node_id), "%s-%08x", host, suffix);
    srv->grace_ev = event_new(base, -1, 0, grace_cb, srv);
    srv->check_ev = event_new(base, -1, 0, check_cb, srv);
    pk_list_init(&srv->conns);
    pk_list_init(&srv->tunnels);
    pk_list_init(&srv->handshakes);
    pk_linger_list_init(&srv->lingers, linger_done, srv);

    pk_h2_settings_default(&srv->tunnel_settings);
    srv->tunnel_settings.stream_window = (uint32_t)cfg->upstream_stream_window;
    srv->tunnel_settings.conn_window = (uint32_t)cfg->upstream_connection_window;
    srv->tunnel_settings.ping_interval_ms = cfg->upstream_heartbeat_interval_ms;
    srv->tunnel_settings.ping_timeout_ms = cfg->upstream_heartbeat_timeout_ms;
    srv->tunnel_settings.settings_timeout_ms = cfg->upstream_heartbeat_timeout_ms;
    srv->tunnel_settings.max_header_bytes = cfg->proxy_max_header_bytes;

    pk_h2_settings_default(&srv->down_settings);
    srv->down_settings.max_concurrent_streams = (uint32_t)cfg->proxy_max_h2_streams;
    srv->down_settings.enable_connect_protocol = true; /* RFC 8441: WebSocket, piko-tcp */
    srv->down_settings.ping_interval_ms = 0;
    srv->down_settings.settings_timeout_ms = cfg->proxy_head_timeout_ms;
    srv->down_settings.max_header_bytes = cfg->proxy_max_header_bytes;

    if (pk_proxy_listen(srv, err, errlen) != 0 || pk_upstream_listen(srv, err, errlen) != 0 ||
        admin_listen(srv, err, errlen) != 0) {
        pk_server_del(srv);
        return NULL;
    }
    pk_listener_addr(srv->proxy_l, addr, sizeof(addr));
    PK_INFO("server", "node id=%s", srv->node_id);
    PK_INFO("server", "proxy listening addr=%s", addr);
    pk_listener_addr(srv->upstream_l, addr, sizeof(addr));
    PK_INFO("server", "upstream listening addr=%s", addr);
    srv->ready = true;
    return srv;
}

void pk_server_del(struct pk_server *srv)
{
    if (!srv)
        return;
    /* Abort whatever is left and let the deferred closes run, so nothing leaks. */
    pk_proxy_abort_all(srv);
    pk_upstream_abort_all(srv);
    for (int i = 0; i < 100 && (srv->nconns || srv->ntunnels_open || srv->nexchanges); i++)
        event_base_loop(srv->base, EVLOOP_NONBLOCK);
    pk_linger_list_free(&srv->lingers);
    if (srv->proxy_l)
        evconnlistener_free(srv->proxy_l);
    if (srv->upstream_l)
        evconnlistener_free(srv->upstream_l);
    if (srv->admin)
        evhttp_free(srv->admin);
    event_free(srv->grace_ev);
    event_free(srv->check_ev);
    for (size_t b = 0; b < PK_EP_BUCKETS; b++) {
        while (srv->eps[b]) {
            struct endpoint *e = srv->eps[b];
            srv->eps[b] = e->next;
            free(e->id);
            free(e);
        }
    }
    free(srv);
}
