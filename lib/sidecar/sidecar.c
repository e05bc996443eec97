#include "sidecar/sidecar.h"

#include "base/base.h"
#include "base/log.h"
#include "dns/dns.h"
#include "http1/http1.h"
#include "net/dial.h"
#include "net/net.h"
#include "sidecar/sidecar_int.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
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
        "Server upstream URL (http:// or https://)"),
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
        "Server proxy URL that --forward connections go through"),
    OPT("local.connect-timeout", PK_OPT_DURATION, local_connect_timeout_ms, "5s",
        "Time allowed to connect to a local service"),
    OPT("local.max-idle", PK_OPT_INT, local_max_idle, "64",
        "Idle keep-alive connections kept per local service"),
    OPT("admin.bind-addr", PK_OPT_STRING, admin_bind_addr, "127.0.0.1:5000",
        "Address for /health and /ready"),
    OPT("log.level", PK_OPT_STRING, log_level, "info", "debug, info, warn or error"),
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

/* Parses the connect URL into host, port and TLS flag. */
static int parse_url(const char *url, char **host, uint16_t *port, bool *tls, char *err,
                     size_t errlen)
{
    const char *rest;
    if (strncmp(url, "http://", 7) == 0) {
        *tls = false;
        rest = url + 7;
    } else if (strncmp(url, "https://", 8) == 0) {
        *tls = true;
        rest = url + 8;
    } else {
        snprintf(err, errlen, "connect.url: '%s' must start with http:// or https://", url);
        return PK_ERR_INVALID;
    }
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", rest);
    size_t l = strcspn(buf, "/");
    buf[l] = '\0';
    if (!strchr(buf, ':') || buf[strlen(buf) - 1] == ']')
        strncat(buf, *tls ? ":443" : ":80", sizeof(buf) - strlen(buf) - 1);
    if (pk_split_hostport(buf, host, port, false) != 0 || !*host) {
        snprintf(err, errlen, "connect.url: invalid host or port in '%s'", url);
        free(*host);
        *host = NULL;
        return PK_ERR_INVALID;
    }
    return 0;
}

int pk_sidecar_config_check(const struct pk_sidecar_config *cfg, char *err, size_t errlen)
{
    enum pk_log_level lvl;
    if (!cfg->log_level || pk_log_parse_level(cfg->log_level, &lvl) != 0) {
        snprintf(err, errlen, "log.level: invalid level '%s' (debug, info, warn or error)",
                 cfg->log_level ? cfg->log_level : "");
        return PK_ERR_INVALID;
    }
    char *host = NULL, *name = NULL;
    uint16_t port;
    bool tls;
    if (!cfg->connect_url || parse_url(cfg->connect_url, &host, &port, &tls, err, errlen) != 0)
        return PK_ERR_INVALID;
    free(host);
    if (!cfg->admin_bind_addr || pk_split_hostport(cfg->admin_bind_addr, &host, &port, true) != 0) {
        snprintf(err, errlen, "admin.bind-addr: invalid address '%s' (want host:port or :port)",
                 cfg->admin_bind_addr ? cfg->admin_bind_addr : "");
        return PK_ERR_INVALID;
    }
    free(host);
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
    if (cfg->max_streams < 1 || cfg->max_streams > 100000) {
        snprintf(err, errlen, "connect.max-streams: must be between 1 and 100000");
        return PK_ERR_INVALID;
    }
    if (cfg->stream_window < 65535 || cfg->stream_window > 0x7fffffff ||
        cfg->connection_window < 65535 || cfg->connection_window > 0x7fffffff) {
        snprintf(err, errlen, "connect.stream-window/connection-window: 64KiB to 2GiB");
        return PK_ERR_INVALID;
    }
    if (cfg->local_max_idle < 0) {
        snprintf(err, errlen, "local.max-idle: must not be negative");
        return PK_ERR_INVALID;
    }
    return 0;
}

/* ---- tunnels ------------------------------------------------------------------------ */

static void dial_tunnel(struct sc_endpoint *ep);

static void schedule_redial(struct sc_endpoint *ep, uint64_t delay_ms)
{
    if (ep->sc->draining)
        return;
    struct timeval tv = {(time_t)(delay_ms / 1000), (suseconds_t)((delay_ms % 1000) * 1000)};
    event_add(ep->redial_ev, &tv);
}

/* 100 ms doubling to 15 s, with jitter (PROTOCOL.md 1.5). */
static uint64_t next_backoff(struct sc_endpoint *ep, bool to_max)
{
    if (to_max || ep->backoff_ms >= 15000)
        ep->backoff_ms = 15000;
    else
        ep->backoff_ms = ep->backoff_ms ? ep->backoff_ms * 2 : 100;
    if (ep->backoff_ms > 15000)
        ep->backoff_ms = 15000;
    uint64_t jitter = ep->backoff_ms / 5;
    return ep->backoff_ms - jitter + (uint64_t)(random() % (long)(2 * jitter + 1));
}

static void redial_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    dial_tunnel(arg);
}

static void tunnel_unlink(struct sc_tunnel *t)
{
    struct sc_endpoint *ep = t->ep;
    for (struct sc_tunnel **pp = &ep->tunnels; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    }
}

static size_t usable_tunnels(struct sc_endpoint *ep)
{
    size_t n = 0;
    for (struct sc_tunnel *t = ep->tunnels; t; t = t->next)
        if (t->up && !pk_h2conn_is_draining(t->h2))
            n++;
    return n;
}

static void t_on_stream(struct pk_h2conn *c, struct pk_h2stream *s, void *ud)
{
    struct sc_tunnel *t = ud;
    PK_UNUSED(c);
    pk_local_serve(t->ep, s);
}

static void t_on_ready(struct pk_h2conn *c, void *ud)
{
    struct sc_tunnel *t = ud;
    PK_UNUSED(c);
    t->up = true;
    t->up_since_ms = pk_now_ms();
    t->ep->ntunnels_up++;
    PK_INFO("tunnel", "tunnel up endpoint=%s server=%s", t->ep->name, t->ep->sc->cfg->connect_url);
}

static void t_on_goaway(struct pk_h2conn *c, uint32_t code, void *ud)
{
    struct sc_tunnel *t = ud;
    PK_UNUSED(c);
    struct sc_endpoint *ep = t->ep;
    PK_INFO("tunnel", "server sent GOAWAY endpoint=%s code=%u: dialling a replacement", ep->name,
            code);
    if (!t->replaced && !ep->sc->draining) {
        /* Make-before-break: the old tunnel finishes its streams meanwhile. */
        t->replaced = true;
        schedule_redial(ep, (uint64_t)(random() % 1000));
    }
}

static void t_on_close(struct pk_h2conn *c, const char *why, void *ud)
{
    struct sc_tunnel *t = ud;
    PK_UNUSED(c);
    struct sc_endpoint *ep = t->ep;
    struct pk_sidecar *sc = ep->sc;
    bool was_up = t->up;
    uint64_t lived = was_up ? pk_now_ms() - t->up_since_ms : 0;
    if (was_up)
        ep->ntunnels_up--;
    tunnel_unlink(t);
    PK_INFO("tunnel", "tunnel closed endpoint=%s lived_ms=%llu: %s", ep->name,
            (unsigned long long)lived, why);
    bool replaced = t->replaced;
    free(t);
    sc->ntunnels--;
    if (!sc->draining && !replaced && usable_tunnels(ep) == 0 && !ep->dialing) {
        if (lived > 5000)
            ep->backoff_ms = 0;
        schedule_redial(ep, next_backoff(ep, false));
    }
    pk_sidecar_check_done(sc);
}

static const struct pk_h2conn_cbs tunnel_cbs = {
    .on_stream = t_on_stream,
    .on_ready = t_on_ready,
    .on_goaway = t_on_goaway,
    .on_close = t_on_close,
};

/* The handshake in flight for one endpoint. */
struct hs {
    struct sc_endpoint *ep;
    struct pk_dial *dial;
    struct bufferevent *bev;
    struct pk_h1parser parser;
    struct evbuffer *body; /* error body, for the log */
};

static void hs_body(struct pk_h1parser *p, const char *data, size_t len, void *ud)
{
    struct hs *h = ud;
    PK_UNUSED(p);
    if (evbuffer_get_length(h->body) < 512)
        evbuffer_add(h->body, data, len);
}

static const struct pk_h1parser_cbs hs_cbs = {.on_body = hs_body};

static void hs_done(struct hs *h, bool ok, bool to_max, const char *why)
{
    struct sc_endpoint *ep = h->ep;
    ep->dialing = false;
    ep->hs = NULL;
    pk_h1parser_free(&h->parser);
    evbuffer_free(h->body);
    if (!ok) {
        if (h->bev)
            bufferevent_free(h->bev);
        uint64_t delay = next_backoff(ep, to_max);
        if (to_max)
            PK_ERROR("tunnel", "endpoint=%s handshake refused: %s (retry in %llums)", ep->name, why,
                     (unsigned long long)delay);
        else
            PK_WARN("tunnel", "endpoint=%s cannot connect to %s: %s (retry in %llums)", ep->name,
                    ep->sc->cfg->connect_url, why, (unsigned long long)delay);
        schedule_redial(ep, delay);
    }
    free(h);
}

static void hs_read(struct bufferevent *bev, void *arg)
{
    struct hs *h = arg;
    struct sc_endpoint *ep = h->ep;
    struct pk_sidecar *sc = ep->sc;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    const char *data = (const char *)evbuffer_pullup(in, (ssize_t)len);
    ssize_t n = pk_h1parser_feed(&h->parser, data, len);
    if (n < 0) {
        hs_done(h, false, false, "malformed handshake response");
        return;
    }
    evbuffer_drain(in, (size_t)n);
    if (!h->parser.message_done)
        return;
    int status = h->parser.head.status;
    if (status != 101) {
        char why[768];
        size_t bl = evbuffer_get_length(h->body);
        snprintf(why, sizeof(why), "status %d %.*s", status, (int)PK_MIN(bl, (size_t)512),
                 (const char *)evbuffer_pullup(h->body, -1));
        for (char *c = why; *c; c++)
            if (*c == '\n' || *c == '\r')
                *c = ' ';
        hs_done(h, false, status == 401 || status == 403, why);
        return;
    }
    /* HTTP/2 starts right after the 101's empty line: leftover input is HTTP/2. */
    h->bev = NULL;
    hs_done(h, true, false, NULL);
    bufferevent_set_timeouts(bev, NULL, NULL);
    struct sc_tunnel *t = pk_xcalloc(1, sizeof(*t));
    t->ep = ep;
    char name[256];
    snprintf(name, sizeof(name), "tunnel/%s", ep->name);
    t->next = ep->tunnels;
    ep->tunnels = t;
    sc->ntunnels++;
    t->h2 = pk_h2conn_new(sc->base, bev, true, &sc->tunnel_settings, &tunnel_cbs, t, name);
    if (!t->h2) {
        tunnel_unlink(t);
        free(t);
        sc->ntunnels--;
        schedule_redial(ep, next_backoff(ep, false));
    }
}

static void hs_event(struct bufferevent *bev, short what, void *arg)
{
    struct hs *h = arg;
    PK_UNUSED(bev);
    hs_done(h, false, false,
            (what & BEV_EVENT_TIMEOUT) ? "handshake timeout"
                                       : "connection closed during handshake");
}

static void send_handshake(struct hs *h)
{
    struct sc_endpoint *ep = h->ep;
    struct pk_sidecar *sc = ep->sc;
    evbuffer_add_printf(bufferevent_get_output(h->bev),
                        "GET /piko/v1/upstream/%s HTTP/1.1\r\nHost: %s\r\n"
                        "Connection: Upgrade\r\nUpgrade: piko-reverse-h2\r\n"
                        "Piko-Sidecar-Id: %s\r\n\r\n",
                        ep->name, sc->server_authority, sc->sidecar_id);
    bufferevent_setcb(h->bev, hs_read, NULL, hs_event, h);
    bufferevent_enable(h->bev, EV_READ | EV_WRITE);
}

static void tls_event(struct bufferevent *bev, short what, void *arg)
{
    struct hs *h = arg;
    if (what & BEV_EVENT_CONNECTED) {
        send_handshake(h);
        return;
    }
    char why[512];
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    unsigned long e = bufferevent_get_openssl_error(bev);
    if (vr != X509_V_OK)
        snprintf(why, sizeof(why), "TLS handshake failed: certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
    else if (e)
        snprintf(why, sizeof(why), "TLS handshake failed: %s", ERR_reason_error_string(e));
    else
        snprintf(why, sizeof(why), "TLS handshake failed: %s",
                 (what & BEV_EVENT_TIMEOUT) ? "timeout" : "connection closed");
    hs_done(h, false, false, why);
}

/* Wraps a connected socket in TLS: SNI and certificate verification against the system
 * roots (OpenSSL's default paths, so SSL_CERT_FILE and SSL_CERT_DIR apply). */
static int start_tls(struct hs *h, struct bufferevent *bev)
{
    struct pk_sidecar *sc = h->ep->sc;
    SSL *ssl = SSL_new(sc->tls_ctx);
    if (!ssl)
        return -1;
    struct in6_addr a6;
    bool ip = inet_pton(AF_INET, sc->server_host, &a6) == 1 ||
              inet_pton(AF_INET6, sc->server_host, &a6) == 1;
    if (ip) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), sc->server_host);
    } else {
        SSL_set_tlsext_host_name(ssl, sc->server_host);
        SSL_set1_host(ssl, sc->server_host);
    }
    struct bufferevent *tb = bufferevent_openssl_filter_new(
        sc->base, bev, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
    if (!tb) {
        SSL_free(ssl);
        return -1;
    }
    h->bev = tb;
    struct timeval tv = {(time_t)(sc->cfg->connect_timeout_ms / 1000),
                         (suseconds_t)((sc->cfg->connect_timeout_ms % 1000) * 1000)};
    bufferevent_set_timeouts(tb, &tv, NULL);
    bufferevent_setcb(tb, NULL, NULL, tls_event, h);
    bufferevent_enable(tb, EV_READ | EV_WRITE);
    return 0;
}

static void dialed(int err, struct bufferevent *bev, const char *why, void *arg)
{
    struct hs *h = arg;
    h->dial = NULL;
    if (err) {
        hs_done(h, false, false, why);
        return;
    }
    struct pk_sidecar *sc = h->ep->sc;
    if (sc->tls) {
        if (start_tls(h, bev) != 0) {
            bufferevent_free(bev);
            hs_done(h, false, false, "cannot start TLS");
        }
        return;
    }
    h->bev = bev;
    struct timeval tv = {(time_t)(sc->cfg->connect_timeout_ms / 1000),
                         (suseconds_t)((sc->cfg->connect_timeout_ms % 1000) * 1000)};
    bufferevent_set_timeouts(bev, &tv, NULL);
    send_handshake(h);
}

static void dial_tunnel(struct sc_endpoint *ep)
{
    struct pk_sidecar *sc = ep->sc;
    if (sc->draining || ep->dialing)
        return;
    ep->dialing = true;
    struct hs *h = pk_xcalloc(1, sizeof(*h));
    h->ep = ep;
    h->body = evbuffer_new();
    pk_h1parser_init(&h->parser, HTTP_RESPONSE, 64 * 1024, &hs_cbs, h);
    PK_DEBUG("tunnel", "endpoint=%s dialling %s", ep->name, sc->cfg->connect_url);
    ep->hs = h;
    h->dial = pk_dial_start(sc->base, sc->resolver, sc->server_host, sc->server_port,
                            sc->cfg->connect_timeout_ms, dialed, h);
    if (!h->dial)
        hs_done(h, false, false, "cannot resolve the server host");
}

/* ---- admin ------------------------------------------------------------------------- */

static void reply(struct evhttp_request *req, int code, const char *body)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "%s\n", body);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, code, code == 200 ? "OK" : code == 404 ? "Not Found" : "Unavailable", b);
    evbuffer_free(b);
}

static void admin_health(struct evhttp_request *req, void *arg)
{
    PK_UNUSED(arg);
    reply(req, 200, "{\"status\":\"ok\"}");
}

static void admin_ready(struct evhttp_request *req, void *arg)
{
    struct pk_sidecar *sc = arg;
    bool ready = !sc->draining;
    for (struct sc_endpoint *ep = sc->eps; ep && ready; ep = ep->next)
        ready = usable_tunnels(ep) > 0;
    reply(req, ready ? 200 : 503,
          ready ? "{\"status\":\"ready\"}"
                : (sc->draining ? "{\"status\":\"draining\"}" : "{\"status\":\"connecting\"}"));
}

static void admin_other(struct evhttp_request *req, void *arg)
{
    PK_UNUSED(arg);
    reply(req, 404, "{\"error\":\"not found\"}");
}

/* ---- lifecycle ---------------------------------------------------------------------- */

void pk_sidecar_check_done(struct pk_sidecar *sc)
{
    if (sc->draining && sc->ntunnels == 0 && sc->nforwards == 0)
        event_active(sc->check_ev, EV_TIMEOUT, 0);
}

static void check_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_sidecar *sc = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (sc->draining && sc->ntunnels == 0 && sc->nforwards == 0) {
        PK_INFO("sidecar", "every tunnel closed: exiting");
        event_base_loopexit(sc->base, NULL);
    }
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_sidecar *sc = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    PK_WARN("sidecar", "grace period over with %zu streams in flight: exiting", sc->nstreams);
    event_base_loopexit(sc->base, NULL);
}

void pk_sidecar_shutdown(struct pk_sidecar *sc)
{
    if (sc->draining)
        return;
    sc->draining = true;
    PK_INFO("sidecar", "shutting down: %zu streams in flight", sc->nstreams);
    pk_forward_stop_listening(sc);
    for (struct sc_endpoint *ep = sc->eps; ep; ep = ep->next) {
        event_del(ep->redial_ev);
        for (struct sc_tunnel *t = ep->tunnels; t; t = t->next)
            pk_h2conn_drain_two_step(t->h2);
        pk_local_pool_free(ep);
    }
    struct timeval tv = {(time_t)(sc->cfg->grace_period_ms / 1000),
                         (suseconds_t)((sc->cfg->grace_period_ms % 1000) * 1000)};
    event_add(sc->grace_ev, &tv);
    pk_sidecar_check_done(sc);
}

struct pk_sidecar *pk_sidecar_new(struct event_base *base, const struct pk_sidecar_config *cfg,
                                  char *err, size_t errlen)
{
    struct pk_sidecar *sc = pk_xcalloc(1, sizeof(*sc));
    sc->base = base;
    sc->cfg = cfg;
    sc->grace_ev = event_new(base, -1, 0, grace_cb, sc);
    sc->check_ev = event_new(base, -1, 0, check_cb, sc);
    char host[64];
    gethostname(host, sizeof(host));
    host[sizeof(host) - 1] = '\0';
    snprintf(sc->sidecar_id, sizeof(sc->sidecar_id), "%.40s-%d", host, (int)getpid());
    srandom((unsigned)(pk_now_ms() ^ (uint64_t)getpid()));

    parse_url(cfg->connect_url, &sc->server_host, &sc->server_port, &sc->tls, err, errlen);
    sc->server_authority = strchr(sc->server_host, ':')
                               ? pk_xasprintf("[%s]:%u", sc->server_host, sc->server_port)
                               : pk_xasprintf("%s:%u", sc->server_host, sc->server_port);

    pk_h2_settings_default(&sc->tunnel_settings);
    sc->tunnel_settings.max_concurrent_streams = (uint32_t)cfg->max_streams;
    sc->tunnel_settings.enable_connect_protocol = true;
    sc->tunnel_settings.stream_window = (uint32_t)cfg->stream_window;
    sc->tunnel_settings.conn_window = (uint32_t)cfg->connection_window;
    sc->tunnel_settings.ping_interval_ms = cfg->heartbeat_interval_ms;
    sc->tunnel_settings.ping_timeout_ms = cfg->heartbeat_timeout_ms;
    sc->tunnel_settings.settings_timeout_ms = cfg->heartbeat_timeout_ms;

    if (sc->tls) {
        sc->tls_ctx = SSL_CTX_new(TLS_client_method());
        if (!sc->tls_ctx) {
            snprintf(err, errlen, "cannot create a TLS context");
            goto fail;
        }
        SSL_CTX_set_min_proto_version(sc->tls_ctx, TLS1_2_VERSION);
        SSL_CTX_set_default_verify_paths(sc->tls_ctx);
        SSL_CTX_set_verify(sc->tls_ctx, SSL_VERIFY_PEER, NULL);
        /* libevent 2.1 with OpenSSL 3 reports a close without close_notify as an error;
         * HTTP/2 framing detects truncation anyway. */
        SSL_CTX_set_options(sc->tls_ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    }
    sc->resolver = pk_resolver_new(base, cfg->dns_servers, err, errlen);
    if (!sc->resolver)
        goto fail;

    struct evconnlistener *l = pk_listen(base, cfg->admin_bind_addr, NULL, NULL, err, errlen);
    if (!l)
        goto fail;
    sc->admin = evhttp_new(base);
    evhttp_bind_listener(sc->admin, l);
    evconnlistener_enable(l);
    evhttp_set_cb(sc->admin, "/health", admin_health, sc);
    evhttp_set_cb(sc->admin, "/ready", admin_ready, sc);
    evhttp_set_gencb(sc->admin, admin_other, sc);
    char addr[128];
    pk_listener_addr(l, addr, sizeof(addr));
    PK_INFO("sidecar", "admin listening addr=%s", addr);

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
        ep->redial_ev = event_new(base, -1, 0, redial_cb, ep);
        *tail = ep;
        tail = &ep->next;
        PK_INFO("sidecar", "endpoint=%s kind=%s service=%s:%u%s", ep->name, tcp ? "tcp" : "http",
                ep->host, ep->port,
                ep->proxy_protocol == 1   ? " proxy-protocol=v1"
                : ep->proxy_protocol == 2 ? " proxy-protocol=v2"
                                          : "");
        dial_tunnel(ep);
    }
    if (pk_forward_start(sc, err, errlen) != 0)
        goto fail;
    return sc;
fail:
    pk_sidecar_del(sc);
    return NULL;
}

void pk_sidecar_del(struct pk_sidecar *sc)
{
    if (!sc)
        return;
    /* Abort whatever is left and let the deferred closes run, so nothing leaks. */
    sc->draining = true;
    for (struct sc_endpoint *ep = sc->eps; ep; ep = ep->next) {
        event_del(ep->redial_ev);
        if (ep->hs) {
            struct hs *h = ep->hs;
            pk_dial_cancel(h->dial);
            if (h->bev)
                bufferevent_free(h->bev);
            h->bev = NULL;
            pk_h1parser_free(&h->parser);
            evbuffer_free(h->body);
            free(h);
            ep->hs = NULL;
        }
        for (struct sc_tunnel *t = ep->tunnels; t; t = t->next)
            pk_h2conn_close(t->h2, "shutting down");
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
        event_free(ep->redial_ev);
        free(ep->name);
        free(ep->host);
        free(ep);
    }
    if (sc->admin)
        evhttp_free(sc->admin);
    pk_resolver_del(sc->resolver);
    if (sc->tls_ctx)
        SSL_CTX_free(sc->tls_ctx);
    event_free(sc->grace_ev);
    event_free(sc->check_ev);
    free(sc->server_host);
    free(sc->server_authority);
    free(sc);
}
