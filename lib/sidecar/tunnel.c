/* Tunnels to the server (PROTOCOL.md 1.1, 1.5). Each endpoint keeps connect.connections
 * tunnels, one per slot; a slot dials on its own, with its own backoff, taking the
 * connect.url list in turn. On a server GOAWAY the slot dials a replacement (after a
 * random 0-1 s delay) while the old tunnel finishes its open streams; once the
 * replacement is up, an old tunnel still open (long streams) gets the two-step drain, so
 * the server learns it will carry no new stream (make-before-break). An old tunnel
 * without open streams closes at once (nghttp2 ends a session that has GOAWAY and no
 * stream); the cluster covers that gap (docs/architecture/cluster.md, "moving"). */
#include "base/base.h"
#include "base/log.h"
#include "base/memtrim.h"
#include "dns/dns.h"
#include "http1/http1.h"
#include "net/dial.h"
#include "net/tls.h"
#include "sidecar/sidecar_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS   100
#define BACKOFF_MAX_MS   15000
#define BACKOFF_RESET_MS 5000 /* a tunnel that lived longer resets its slot's backoff */
#define REPLACE_DELAY_MS 1000 /* a replacement is dialled after a random delay below this */

/* ---- connect.url -------------------------------------------------------------------- */

/* Parses one URL into s (url, host, port, authority, tls). */
static int parse_url(const char *url, struct sc_server *s, char *err, size_t errlen)
{
    const char *rest;
    if (strncmp(url, "http://", 7) == 0) {
        s->tls = false;
        rest = url + 7;
    } else if (strncmp(url, "https://", 8) == 0) {
        s->tls = true;
        rest = url + 8;
    } else {
        snprintf(err, errlen, "connect.url: '%s' must start with http:// or https://", url);
        return PK_ERR_INVALID;
    }
    char buf[512];
    if (strlen(rest) >= sizeof(buf)) {
        snprintf(err, errlen, "connect.url: '%.64s...' is too long", url);
        return PK_ERR_INVALID;
    }
    snprintf(buf, sizeof(buf), "%s", rest);
    size_t l = strcspn(buf, "/");
    buf[l] = '\0';
    if (!strchr(buf, ':') || buf[strlen(buf) - 1] == ']')
        strncat(buf, s->tls ? ":443" : ":80", sizeof(buf) - strlen(buf) - 1);
    if (pk_split_hostport(buf, &s->host, &s->port, false) != 0 || !s->host) {
        snprintf(err, errlen, "connect.url: invalid host or port in '%s'", url);
        free(s->host);
        s->host = NULL;
        return PK_ERR_INVALID;
    }
    s->url = pk_xstrdup(url);
    s->authority = strchr(s->host, ':') ? pk_xasprintf("[%s]:%u", s->host, s->port)
                                        : pk_xasprintf("%s:%u", s->host, s->port);
    return 0;
}

int pk_servers_parse(const char *list, struct sc_server **out, size_t *n, char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    if (!list || !*list) {
        snprintf(err, errlen, "connect.url: missing (http://host:port, or a comma-separated list)");
        return PK_ERR_INVALID;
    }
    size_t cap = 1;
    for (const char *c = list; *c; c++)
        cap += *c == ',';
    struct sc_server *v = pk_xcalloc(cap, sizeof(*v));
    size_t nv = 0;
    for (const char *p = list;; p++) {
        size_t len = strcspn(p, ",");
        const char *b = p, *e = p + len;
        while (b < e && isspace((unsigned char)*b))
            b++;
        while (e > b && isspace((unsigned char)e[-1]))
            e--;
        char *item = pk_xstrndup(b, (size_t)(e - b));
        int rv = PK_ERR_INVALID;
        if (*item)
            rv = parse_url(item, &v[nv], err, errlen);
        else
            snprintf(err, errlen, "connect.url: empty item in '%s'", list);
        free(item);
        if (rv != 0) {
            pk_servers_free(v, nv);
            return PK_ERR_INVALID;
        }
        nv++;
        p += len;
        if (!*p)
            break;
    }
    *out = v;
    *n = nv;
    return 0;
}

void pk_servers_free(struct sc_server *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].url);
        free(v[i].host);
        free(v[i].authority);
    }
    free(v);
}

/* ---- slots and tunnels -------------------------------------------------------------- */

/* The handshake in flight for one slot. */
struct hs {
    struct sc_slot *slot;
    size_t server; /* sc->servers index dialled */
    struct pk_dial *dial;
    struct bufferevent *bev;
    struct pk_h1parser parser;
    struct evbuffer *body; /* error body, for the log */
    char *token;           /* connect.token(-file) as read for this dial, or NULL */
};

static void dial_slot(struct sc_slot *sl);

static const char *server_url(const struct sc_endpoint *ep, size_t server)
{
    return ep->sc->servers[server].url;
}

static void schedule_redial(struct sc_slot *sl, uint64_t delay_ms)
{
    if (sl->ep->sc->draining)
        return;
    struct timeval tv = pk_ms_timeval(delay_ms);
    event_add(sl->redial_ev, &tv);
}

/* 100 ms doubling to 15 s, with jitter (PROTOCOL.md 1.5). */
static uint64_t next_backoff(struct sc_slot *sl, bool to_max)
{
    if (to_max || sl->backoff_ms >= BACKOFF_MAX_MS)
        sl->backoff_ms = BACKOFF_MAX_MS;
    else
        sl->backoff_ms = sl->backoff_ms ? sl->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (sl->backoff_ms > BACKOFF_MAX_MS)
        sl->backoff_ms = BACKOFF_MAX_MS;
    uint64_t jitter = sl->backoff_ms / 5;
    return sl->backoff_ms - jitter + pk_random_u64() % (2 * jitter + 1);
}

/* A dial of this slot failed: the next one tries the next URL (round robin). */
static void dial_failed(struct sc_slot *sl, size_t server)
{
    sl->server = (server + 1) % sl->ep->sc->nservers;
}

static void redial_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    dial_slot(arg);
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

static void t_on_stream(struct pk_h2conn *c, struct pk_h2stream *s, void *ud)
{
    struct sc_tunnel *t = ud;
    PK_UNUSED(c);
    pk_local_serve(t->ep, s);
}

static void t_on_ready(struct pk_h2conn *c, void *ud)
{
    struct sc_tunnel *t = ud;
    struct sc_endpoint *ep = t->ep;
    PK_UNUSED(c);
    t->up = true;
    t->up_since_ms = pk_now_ms();
    pk_sidecar_metrics_tunnel_up(ep->sc);
    PK_INFO("tunnel", "tunnel up endpoint=%s slot=%u server=%s", ep->name, t->slot->index,
            server_url(ep, t->server));
    if (t->replaced || ep->sc->draining)
        return;
    /* Make-before-break: this tunnel takes the place of the slot's replaced ones. Streams
     * they already accepted finish (RFC 9113 6.8). */
    for (struct sc_tunnel *o = ep->tunnels; o; o = o->next) {
        if (o->slot != t->slot || !o->replaced || o->drained)
            continue;
        o->drained = true;
        PK_INFO("tunnel", "replacement up, draining the old tunnel endpoint=%s slot=%u server=%s",
                ep->name, o->slot->index, server_url(ep, o->server));
        pk_h2conn_drain_two_step(o->h2);
    }
}

static void t_on_goaway(struct pk_h2conn *c, uint32_t code, void *ud)
{
    struct sc_tunnel *t = ud;
    struct sc_endpoint *ep = t->ep;
    struct sc_slot *sl = t->slot;
    PK_UNUSED(c);
    if (t->replaced || t->drained || ep->sc->draining || sl->tunnel != t) {
        PK_DEBUG("tunnel", "GOAWAY again endpoint=%s slot=%u server=%s code=%u", ep->name,
                 sl->index, server_url(ep, t->server), code);
        return;
    }
    /* The tunnel keeps serving (the server may still open streams on it) until the
     * replacement is up; it no longer fills the slot. */
    t->replaced = true;
    sl->tunnel = NULL;
    if (t->up && pk_now_ms() - t->up_since_ms > BACKOFF_RESET_MS)
        sl->backoff_ms = 0;
    uint64_t delay = pk_random_u64() % REPLACE_DELAY_MS;
    PK_INFO("tunnel",
            "server sent GOAWAY endpoint=%s slot=%u server=%s code=%u: dialling a replacement "
            "in %llums",
            ep->name, sl->index, server_url(ep, t->server), code, (unsigned long long)delay);
    schedule_redial(sl, delay);
}

static void t_on_close(struct pk_h2conn *c, const char *why, void *ud)
{
    struct sc_tunnel *t = ud;
    struct sc_endpoint *ep = t->ep;
    struct sc_slot *sl = t->slot;
    struct pk_sidecar *sc = ep->sc;
    PK_UNUSED(c);
    uint64_t lived = t->up ? pk_now_ms() - t->up_since_ms : 0;
    pk_sidecar_metrics_tunnel_down(t, why);
    tunnel_unlink(t);
    sc->ntunnels--;
    PK_INFO("tunnel", "tunnel closed endpoint=%s slot=%u server=%s lived_ms=%llu%s: %s", ep->name,
            sl->index, server_url(ep, t->server), (unsigned long long)lived,
            t->replaced ? " replaced=1" : "", why);
    /* A replaced tunnel left its slot already: the slot is dialling or filled. */
    if (sl->tunnel == t) {
        sl->tunnel = NULL;
        if (lived > BACKOFF_RESET_MS)
            sl->backoff_ms = 0;
        if (!t->up)
            dial_failed(sl, t->server);
        schedule_redial(sl, next_backoff(sl, false));
    }
    free(t);
    pk_memtrim_poke(sc->memtrim);
    pk_sidecar_check_done(sc);
}

static const struct pk_h2conn_cbs tunnel_cbs = {
    .on_stream = t_on_stream,
    .on_ready = t_on_ready,
    .on_goaway = t_on_goaway,
    .on_close = t_on_close,
};

/* ---- handshake ---------------------------------------------------------------------- */

static void hs_body(struct pk_h1parser *p, const char *data, size_t len, void *ud)
{
    struct hs *h = ud;
    PK_UNUSED(p);
    if (evbuffer_get_length(h->body) < 512)
        evbuffer_add(h->body, data, len);
}

static const struct pk_h1parser_cbs hs_cbs = {.on_body = hs_body};

static void hs_free(struct hs *h)
{
    pk_memtrim_poke(h->slot->ep->sc->memtrim);
    h->slot->hs = NULL;
    pk_dial_cancel(h->dial);
    if (h->bev)
        bufferevent_free(h->bev);
    pk_h1parser_free(&h->parser);
    evbuffer_free(h->body);
    free(h->token);
    free(h);
}

static void hs_done(struct hs *h, bool ok, bool to_max, const char *why)
{
    struct sc_slot *sl = h->slot;
    struct sc_endpoint *ep = sl->ep;
    size_t server = h->server;
    hs_free(h);
    if (ok)
        return;
    dial_failed(sl, server);
    uint64_t delay = next_backoff(sl, to_max);
    if (to_max)
        PK_ERROR("tunnel", "endpoint=%s slot=%u handshake refused by %s: %s (retry in %llums)",
                 ep->name, sl->index, server_url(ep, server), why, (unsigned long long)delay);
    else
        PK_WARN("tunnel", "endpoint=%s slot=%u cannot connect to %s: %s (retry in %llums)",
                ep->name, sl->index, server_url(ep, server), why, (unsigned long long)delay);
    schedule_redial(sl, delay);
}

/* Parses the handshake answer; returns true once the handshake is over (h is gone). */
static bool hs_process(struct hs *h, struct bufferevent *bev)
{
    struct sc_slot *sl = h->slot;
    struct sc_endpoint *ep = sl->ep;
    struct pk_sidecar *sc = ep->sc;
    struct evbuffer *in = bufferevent_get_input(bev);
    ssize_t n = pk_h1parser_feed_evbuffer(&h->parser, in, 0);
    if (n < 0) {
        hs_done(h, false, false, "malformed handshake response");
        return true;
    }
    if (!h->parser.message_done)
        return false;
    int status = h->parser.head.status;
    if (status != 101) {
        char why[768];
        pk_error_message(status, (const char *)evbuffer_pullup(h->body, -1),
                         evbuffer_get_length(h->body), why, sizeof(why));
        /* The proxy port answers a handshake as a request without an endpoint. */
        if (status == 400 && strstr(why, "missing endpoint id")) {
            size_t wl = strlen(why);
            snprintf(why + wl, sizeof(why) - wl,
                     " (connect.url looks like the server's proxy port: sidecars dial its "
                     "upstream port, :8001 by default)");
        }
        hs_done(h, false, status == 401 || status == 403, why);
        return true;
    }
    /* HTTP/2 starts right after the 101's empty line: leftover input is HTTP/2. */
    size_t server = h->server;
    h->bev = NULL;
    hs_done(h, true, false, NULL);
    bufferevent_set_timeouts(bev, NULL, NULL);
    struct sc_tunnel *t = pk_xcalloc(1, sizeof(*t));
    t->ep = ep;
    t->slot = sl;
    t->server = server;
    char name[256];
    snprintf(name, sizeof(name), "tunnel/%s/%u", ep->name, sl->index);
    t->next = ep->tunnels;
    ep->tunnels = t;
    sl->tunnel = t;
    sc->ntunnels++;
    t->h2 = pk_h2conn_new(sc->base, bev, true, &sc->tunnel_settings, &tunnel_cbs, t, name);
    if (!t->h2) {
        tunnel_unlink(t);
        free(t);
        sl->tunnel = NULL;
        sc->ntunnels--;
        dial_failed(sl, server);
        schedule_redial(sl, next_backoff(sl, false));
    }
    return true;
}

static void hs_read(struct bufferevent *bev, void *arg)
{
    hs_process(arg, bev);
}

static void hs_event(struct bufferevent *bev, short what, void *arg)
{
    struct hs *h = arg;
    /* libevent 2.1 over OpenSSL may report EOF before the last bytes read were delivered
     * (LIBRARIES.md): a refusal (401, 503...) followed by close_notify is in the input. */
    if (!(what & BEV_EVENT_TIMEOUT) && evbuffer_get_length(bufferevent_get_input(bev)) > 0 &&
        hs_process(h, bev))
        return;
    char why[384] = "connection closed during handshake";
    if (pk_bev_is_tls(bev) && !(what & BEV_EVENT_TIMEOUT)) {
        /* TLS 1.3: a server refusing our client certificate says so after our side of
         * the TLS handshake is done, as an alert read here. */
        char r[320];
        pk_tls_error(bev, what, r, sizeof(r));
        snprintf(why, sizeof(why), "connection closed during handshake: %s", r);
    }
    hs_done(h, false, false, (what & BEV_EVENT_TIMEOUT) ? "handshake timeout" : why);
}

static void send_handshake(struct hs *h)
{
    struct sc_endpoint *ep = h->slot->ep;
    struct pk_sidecar *sc = ep->sc;
    struct evbuffer *out = bufferevent_get_output(h->bev);
    evbuffer_add_printf(out,
                        "GET /piko/v1/upstream/%s HTTP/1.1\r\nHost: %s\r\n"
                        "Connection: Upgrade\r\nUpgrade: piko-reverse-h2\r\n"
                        "Piko-Sidecar-Id: %s\r\n",
                        ep->name, sc->servers[h->server].authority, sc->sidecar_id);
    /* For the server's status (docs/architecture/protocol.md 1.1): it routes the same. */
    if (ep->tcp)
        evbuffer_add_printf(out, "Piko-Endpoint-Kind: tcp\r\n");
    if (h->token)
        evbuffer_add_printf(out, "x-piko-authorization: Bearer %s\r\n", h->token);
    evbuffer_add(out, "\r\n", 2);
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

/* Wraps a connected socket in TLS for the URL being dialled: SNI and certificate
 * verification of that URL's host against the system roots (OpenSSL's default paths, so
 * SSL_CERT_FILE and SSL_CERT_DIR apply). */
static int start_tls(struct hs *h, struct bufferevent *bev)
{
    struct pk_sidecar *sc = h->slot->ep->sc;
    const char *host = sc->servers[h->server].host;
    SSL *ssl = SSL_new(sc->tls_ctx);
    if (!ssl)
        return -1;
    struct in6_addr a6;
    bool ip = inet_pton(AF_INET, host, &a6) == 1 || inet_pton(AF_INET6, host, &a6) == 1;
    if (ip) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
    } else {
        SSL_set_tlsext_host_name(ssl, host);
        SSL_set1_host(ssl, host);
    }
    /* On the socket itself, not as a filter over the plain bufferevent: OpenSSL reads whole
     * records from the socket instead of 4 KiB pieces relayed through a second buffer. */
    evutil_socket_t fd = bufferevent_getfd(bev);
    struct bufferevent *tb =
        fd < 0 ? NULL
               : bufferevent_openssl_socket_new(sc->base, fd, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                BEV_OPT_CLOSE_ON_FREE);
    if (!tb) {
        SSL_free(ssl);
        return -1;
    }
    /* The socket is the TLS bufferevent's now: the plain one goes without closing it. */
    bufferevent_setfd(bev, -1);
    bufferevent_free(bev);
    h->bev = tb;
    struct timeval tv = pk_ms_timeval(sc->cfg->connect_timeout_ms);
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
    struct pk_sidecar *sc = h->slot->ep->sc;
    if (sc->servers[h->server].tls) {
        if (start_tls(h, bev) != 0) {
            bufferevent_free(bev);
            hs_done(h, false, false, "cannot start TLS");
        }
        return;
    }
    h->bev = bev;
    struct timeval tv = pk_ms_timeval(sc->cfg->connect_timeout_ms);
    bufferevent_set_timeouts(bev, &tv, NULL);
    send_handshake(h);
}

/* Dials the slot's current URL unless the slot is filled or already dialling. */
static void dial_slot(struct sc_slot *sl)
{
    struct sc_endpoint *ep = sl->ep;
    struct pk_sidecar *sc = ep->sc;
    if (sc->draining || sl->hs || sl->tunnel)
        return;
    /* The token file is read at every dial: the token may have been refreshed. */
    char *token = NULL, why[512];
    if (pk_token_get(sc->cfg->connect_token, sc->cfg->connect_token_file, &token, why,
                     sizeof(why)) != 0) {
        uint64_t delay = next_backoff(sl, false);
        PK_ERROR("tunnel",
                 "endpoint=%s slot=%u no token to dial with: connect.token-file: %s "
                 "(retry in %llums)",
                 ep->name, sl->index, why, (unsigned long long)delay);
        schedule_redial(sl, delay);
        return;
    }
    struct hs *h = pk_xcalloc(1, sizeof(*h));
    h->token = token;
    h->slot = sl;
    h->server = sl->server;
    h->body = pk_xevbuffer_new();
    pk_h1parser_init(&h->parser, HTTP_RESPONSE, 64 * 1024, &hs_cbs, h);
    const struct sc_server *srv = &sc->servers[h->server];
    PK_DEBUG("tunnel", "endpoint=%s slot=%u dialling %s", ep->name, sl->index, srv->url);
    sl->hs = h;
    h->dial = pk_dial_start(sc->base, sc->resolver, srv->host, srv->port,
                            sc->cfg->connect_timeout_ms, dialed, h);
    if (!h->dial)
        hs_done(h, false, false, "cannot resolve the server host");
}

/* ---- per endpoint ------------------------------------------------------------------- */

void pk_tunnels_start(struct sc_endpoint *ep)
{
    struct pk_sidecar *sc = ep->sc;
    ep->nslots = (size_t)sc->cfg->connections;
    ep->slots = pk_xcalloc(ep->nslots, sizeof(*ep->slots));
    for (size_t i = 0; i < ep->nslots; i++) {
        struct sc_slot *sl = &ep->slots[i];
        sl->ep = ep;
        sl->index = (unsigned)i;
        /* Slots start spread over the URLs, so a list of nodes gets a tunnel on each. */
        sl->server = i % sc->nservers;
        sl->redial_ev = pk_xevent_new(sc->base, -1, 0, redial_cb, sl);
    }
    for (size_t i = 0; i < ep->nslots; i++)
        dial_slot(&ep->slots[i]);
}

bool pk_tunnels_ready(const struct sc_endpoint *ep)
{
    for (const struct sc_tunnel *t = ep->tunnels; t; t = t->next) {
        if (!t->up || t->drained)
            continue;
        /* A replaced tunnel serves until its replacement drains it; any other draining
         * tunnel is closing. */
        if (t->replaced || !pk_h2conn_is_draining(t->h2))
            return true;
    }
    return false;
}

void pk_tunnels_drain(struct sc_endpoint *ep)
{
    for (size_t i = 0; i < ep->nslots; i++) {
        event_del(ep->slots[i].redial_ev);
        if (ep->slots[i].hs)
            hs_free(ep->slots[i].hs);
    }
    for (struct sc_tunnel *t = ep->tunnels; t; t = t->next) {
        t->drained = true;
        pk_h2conn_drain_two_step(t->h2);
    }
}

void pk_tunnels_abort(struct sc_endpoint *ep)
{
    for (size_t i = 0; i < ep->nslots; i++) {
        event_del(ep->slots[i].redial_ev);
        if (ep->slots[i].hs)
            hs_free(ep->slots[i].hs);
    }
    for (struct sc_tunnel *t = ep->tunnels; t; t = t->next)
        pk_h2conn_close(t->h2, "shutting down");
}

void pk_tunnels_free(struct sc_endpoint *ep)
{
    for (size_t i = 0; i < ep->nslots; i++)
        event_free(ep->slots[i].redial_ev);
    free(ep->slots);
    ep->slots = NULL;
    ep->nslots = 0;
}
