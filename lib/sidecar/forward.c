/* --forward LOCAL_ADDR=ENDPOINT: a local listener whose every connection is tunnelled to a
 * TCP endpoint through a server's proxy port (PROTOCOL.md 2): GET /_piko/v1/tcp/{endpoint}
 * with Upgrade: piko-tcp, then after the 101 the two sockets are spliced. A connection
 * that cannot be tunnelled is closed, and the reason logged; the others go on. */
#include "accesslog/accesslog.h"
#include "base/base.h"
#include "base/log.h"
#include "dns/dns.h"
#include "http1/http1.h"
#include "net/dial.h"
#include "net/listener.h"
#include "net/net.h"
#include "net/tls.h"
#include "sidecar/sidecar_int.h"
#include "stream/bevpipe.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sc_forward {
    struct pk_sidecar *sc;
    char *local_addr;
    char *endpoint;
    char port[8]; /* the listener's port, the metric label */
    struct pk_listener *l;
    struct sc_forward *next;
    struct pk_list conns;
};

struct fconn {
    struct pk_list link;
    struct sc_forward *f;
    struct bufferevent *local;
    struct bufferevent *remote;
    struct pk_dial *dial;
    struct pk_tls_connect *tlsc;
    struct pk_h1parser parser;
    struct evbuffer *body; /* an error answer, for the log */
    struct pk_splice *sp;
    struct event *done_ev;
    char peer[64];
    char *token; /* forward.token(-file) as read for this connection, or NULL */
    /* for the access log (scaccess.c) */
    uint64_t start_us;
    int status; /* the proxy port's answer to the upgrade (101: tunnelled) */
    char error[96];
};

static int split_forward(const char *spec, char **local, char **endpoint, char *err, size_t errlen)
{
    const char *eq = strrchr(spec, '=');
    *local = *endpoint = NULL;
    if (!eq || eq == spec || !eq[1]) {
        snprintf(err, errlen, "forward: '%s' is not LOCAL_ADDR=ENDPOINT", spec);
        return PK_ERR_INVALID;
    }
    if (!pk_endpoint_id_valid(eq + 1, strlen(eq + 1))) {
        snprintf(err, errlen, "forward: invalid endpoint id '%s' in '%s'", eq + 1, spec);
        return PK_ERR_INVALID;
    }
    char *addr = pk_xstrndup(spec, (size_t)(eq - spec));
    char *host = NULL;
    uint16_t port;
    /* A bare port listens on loopback only: forwarding is for the pod itself. */
    if (strspn(addr, "0123456789") == strlen(addr)) {
        char *a = pk_xasprintf("127.0.0.1:%s", addr);
        free(addr);
        addr = a;
    }
    if (pk_split_hostport(addr, &host, &port, false) != 0) {
        snprintf(err, errlen, "forward: invalid local address '%s' in '%s'", addr, spec);
        free(addr);
        return PK_ERR_INVALID;
    }
    free(host);
    *local = addr;
    *endpoint = pk_xstrdup(eq + 1);
    return 0;
}

static bool is_https(const char *url)
{
    return url && strncmp(url, "https://", 8) == 0;
}

bool pk_forward_uses_tls(const struct pk_sidecar_config *cfg)
{
    return cfg->forwards.n > 0 && is_https(cfg->forward_url);
}

static int parse_forward_url(const char *url, char **host, uint16_t *port, char *err, size_t errlen)
{
    bool tls = is_https(url);
    if (!url || (!tls && strncmp(url, "http://", 7) != 0)) {
        snprintf(err, errlen, "forward.url: '%s' must start with http:// or https://",
                 url ? url : "");
        return PK_ERR_INVALID;
    }
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", url + (tls ? 8 : 7));
    buf[strcspn(buf, "/")] = '\0';
    if (!strchr(buf, ':') || buf[strlen(buf) - 1] == ']')
        strncat(buf, tls ? ":443" : ":80", sizeof(buf) - strlen(buf) - 1);
    if (pk_split_hostport(buf, host, port, false) != 0 || !*host) {
        free(*host);
        *host = NULL;
        snprintf(err, errlen, "forward.url: invalid host or port in '%s'", url);
        return PK_ERR_INVALID;
    }
    return 0;
}

int pk_forward_config_check(const struct pk_sidecar_config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < cfg->forwards.n; i++) {
        char *l, *e;
        if (split_forward(cfg->forwards.v[i], &l, &e, err, errlen) != 0)
            return PK_ERR_INVALID;
        free(l);
        free(e);
    }
    if (cfg->forwards.n) {
        char *h = NULL;
        uint16_t p;
        if (parse_forward_url(cfg->forward_url, &h, &p, err, errlen) != 0)
            return PK_ERR_INVALID;
        free(h);
    }
    return 0;
}

/* ---- one forwarded connection ---------------------------------------------------------- */

static void fc_free(struct fconn *fc)
{
    struct pk_sidecar *sc = fc->f->sc;
    struct pk_access_rec r = {
        .kind = "tcp",
        .endpoint = fc->f->endpoint,
        .client = fc->peer,
        .status = fc->status,
        .bytes_in = fc->sp ? pk_splice_bytes_ab(fc->sp) : 0,
        .bytes_out = fc->sp ? pk_splice_bytes_ba(fc->sp) : 0,
        .duration_us = pk_now_us() - fc->start_us,
        .route = "server",
        .error = fc->error[0] ? fc->error : NULL,
    };
    pk_accesslog_add(sc->access, &r);
    pk_list_remove(&fc->link);
    if (fc->dial)
        pk_dial_cancel(fc->dial);
    pk_tls_connect_cancel(fc->tlsc);
    if (fc->sp)
        pk_splice_del(fc->sp);
    if (fc->local)
        bufferevent_free(fc->local);
    if (fc->remote)
        bufferevent_free(fc->remote);
    pk_h1parser_free(&fc->parser);
    evbuffer_free(fc->body);
    event_free(fc->done_ev);
    free(fc->token);
    free(fc);
    sc->nforwards--;
    pk_sidecar_check_done(sc);
}

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    fc_free(arg);
}

static void fc_done(struct fconn *fc)
{
    event_active(fc->done_ev, EV_WRITE, 0);
}

static void fc_fail(struct fconn *fc, const char *why)
{
    PK_WARN("forward", "local=%s client=%s endpoint=%s: closing the connection: %s",
            fc->f->local_addr, fc->peer, fc->f->endpoint, why);
    if (!fc->error[0])
        snprintf(fc->error, sizeof(fc->error), "%s", why);
    fc_done(fc);
}

static void spliced(struct pk_splice *sp, int err, void *arg)
{
    struct fconn *fc = arg;
    PK_UNUSED(sp);
    PK_DEBUG("forward", "local=%s client=%s endpoint=%s done err=%d", fc->f->local_addr, fc->peer,
             fc->f->endpoint, err);
    if (err == 0 && pk_forward_uses_tls(fc->f->sc->cfg)) {
        /* The proxy side ends with a close_notify after the flush (PROTOCOL.md 2). */
        struct bufferevent *r = pk_splice_take_b(sp);
        if (r)
            pk_bev_linger_close(r, &fc->f->sc->lingers);
    }
    fc_done(fc);
}

static void on_body(struct pk_h1parser *p, const char *data, size_t len, void *ud)
{
    struct fconn *fc = ud;
    PK_UNUSED(p);
    if (evbuffer_get_length(fc->body) < 512)
        evbuffer_add(fc->body, data, len);
}

static const struct pk_h1parser_cbs parser_cbs = {.on_body = on_body};

static void remote_read(struct bufferevent *bev, void *arg)
{
    struct fconn *fc = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (pk_h1parser_feed_evbuffer(&fc->parser, in, 0) < 0) {
        fc_fail(fc, "malformed answer from the proxy port");
        return;
    }
    if (!fc->parser.message_done)
        return;
    int status = fc->parser.head.status;
    fc->status = status;
    if (status != 101) {
        char msg[512], why[600];
        pk_error_message(status, (const char *)evbuffer_pullup(fc->body, -1),
                         evbuffer_get_length(fc->body), msg, sizeof(msg));
        snprintf(why, sizeof(why), "proxy answered %s", msg);
        fc_fail(fc, why);
        return;
    }
    /* Tunnel established: bytes after the 101 stay in remote's input for the splice. */
    struct bufferevent *l = fc->local, *r = fc->remote;
    fc->local = fc->remote = NULL;
    bufferevent_setcb(r, NULL, NULL, NULL, NULL);
    /* Over TLS the proxy side cannot half-close: see pk_bevpipe_new. */
    fc->sp = pk_splice_new(fc->f->sc->base, l, r, true, !pk_bev_is_tls(r), spliced, fc);
}

static void remote_event(struct bufferevent *bev, short what, void *arg)
{
    struct fconn *fc = arg;
    remote_read(bev, fc);
    if (fc->sp)
        return;
    char why[384];
    snprintf(why, sizeof(why), "%s",
             (what & BEV_EVENT_EOF) ? "proxy closed the connection before the upgrade"
                                    : "connection to the proxy failed");
    if (pk_bev_is_tls(bev) && !(what & BEV_EVENT_EOF)) {
        char r[320];
        pk_tls_error(bev, what, r, sizeof(r));
        snprintf(why, sizeof(why), "connection to the proxy failed: %s", r);
    }
    fc_fail(fc, why);
}

static void send_upgrade(struct fconn *fc, struct bufferevent *bev);

static void tls_done(int err, struct bufferevent *bev, const char *why, void *arg)
{
    struct fconn *fc = arg;
    fc->tlsc = NULL;
    if (err) {
        fc_fail(fc, why);
        return;
    }
    send_upgrade(fc, bev);
}

static void dialed(int err, struct bufferevent *bev, const char *why, void *arg)
{
    struct fconn *fc = arg;
    fc->dial = NULL;
    if (err) {
        char msg[512];
        snprintf(msg, sizeof(msg), "cannot connect to the proxy port: %s", why);
        fc_fail(fc, msg);
        return;
    }
    struct pk_sidecar *sc = fc->f->sc;
    if (pk_forward_uses_tls(sc->cfg)) {
        fc->tlsc =
            pk_tls_connect(sc->base, bev, sc->tls_ctx, sc->fwd_host, !sc->cfg->connect_tls_insecure,
                           sc->cfg->connect_timeout_ms, tls_done, fc);
        return;
    }
    send_upgrade(fc, bev);
}

static void send_upgrade(struct fconn *fc, struct bufferevent *bev)
{
    struct pk_sidecar *sc = fc->f->sc;
    fc->remote = bev;
    struct evbuffer *out = bufferevent_get_output(bev);
    evbuffer_add_printf(out,
                        "GET /_piko/v1/tcp/%s HTTP/1.1\r\nHost: %s:%u\r\n"
                        "Connection: Upgrade\r\nUpgrade: piko-tcp\r\n",
                        fc->f->endpoint, sc->fwd_host, sc->fwd_port);
    if (fc->token)
        evbuffer_add_printf(out, "x-piko-authorization: Bearer %s\r\n", fc->token);
    evbuffer_add(out, "\r\n", 2);
    bufferevent_setcb(bev, remote_read, NULL, remote_event, fc);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void local_event(struct bufferevent *bev, short what, void *arg)
{
    struct fconn *fc = arg;
    PK_UNUSED(bev);
    PK_UNUSED(what);
    /* The local client went away before the tunnel was up. */
    fc_done(fc);
}

static void accept_cb(evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    struct sc_forward *f = arg;
    struct pk_sidecar *sc = f->sc;
    PK_UNUSED(salen);
    struct fconn *fc = pk_xcalloc(1, sizeof(*fc));
    fc->f = f;
    fc->start_us = pk_now_us();
    pk_addr_str(sa, fc->peer, sizeof(fc->peer));
    pk_tune_socket(fd);
    fc->local = pk_xbufferevent_socket_new(sc->base, fd, BEV_OPT_CLOSE_ON_FREE);
    /* Not read until the tunnel is up: the bytes wait in the kernel. */
    bufferevent_setcb(fc->local, NULL, NULL, local_event, fc);
    bufferevent_disable(fc->local, EV_READ);
    fc->body = pk_xevbuffer_new();
    fc->done_ev = pk_xevent_new(sc->base, -1, 0, done_cb, fc);
    pk_h1parser_init(&fc->parser, HTTP_RESPONSE, 64 * 1024, &parser_cbs, fc);
    pk_list_insert(&f->conns, &fc->link);
    sc->nforwards++;
    pk_sidecar_metrics_forward(sc, f->port);
    char why[512];
    if (pk_token_get(sc->cfg->forward_token, sc->cfg->forward_token_file, &fc->token, why,
                     sizeof(why)) != 0) {
        char msg[600];
        snprintf(msg, sizeof(msg), "no token: forward.token-file: %s", why);
        fc_fail(fc, msg);
        return;
    }
    fc->dial = pk_dial_start(sc->base, sc->resolver, sc->fwd_host, sc->fwd_port,
                             sc->cfg->connect_timeout_ms, dialed, fc);
    if (!fc->dial)
        fc_fail(fc, "cannot resolve the forward.url host");
}

int pk_forward_start(struct pk_sidecar *sc, char *err, size_t errlen)
{
    const struct pk_sidecar_config *cfg = sc->cfg;
    if (cfg->forwards.n &&
        parse_forward_url(cfg->forward_url, &sc->fwd_host, &sc->fwd_port, err, errlen) != 0)
        return PK_ERR_INVALID;
    for (size_t i = 0; i < cfg->forwards.n; i++) {
        struct sc_forward *f = pk_xcalloc(1, sizeof(*f));
        f->sc = sc;
        pk_list_init(&f->conns);
        f->next = sc->forwards;
        sc->forwards = f;
        if (split_forward(cfg->forwards.v[i], &f->local_addr, &f->endpoint, err, errlen) != 0)
            return PK_ERR_INVALID;
        f->l = pk_listener_new(sc->base, "forward", f->local_addr, accept_cb, f, err, errlen);
        if (!f->l)
            return PK_ERR_IO;
        char a[128];
        pk_listener_addr(f->l, a, sizeof(a));
        const char *colon = strrchr(a, ':');
        snprintf(f->port, sizeof(f->port), "%s", colon ? colon + 1 : a);
        PK_INFO("forward", "listening local=%s endpoint=%s server=%s", a, f->endpoint,
                cfg->forward_url);
    }
    return 0;
}

void pk_forward_stop_listening(struct pk_sidecar *sc)
{
    for (struct sc_forward *f = sc->forwards; f; f = f->next) {
        if (f->l) {
            pk_listener_del(f->l);
            f->l = NULL;
        }
    }
}

void pk_forward_stop(struct pk_sidecar *sc)
{
    pk_forward_stop_listening(sc);
    while (sc->forwards) {
        struct sc_forward *f = sc->forwards;
        sc->forwards = f->next;
        while (!pk_list_empty(&f->conns))
            fc_free(PK_CONTAINER_OF(f->conns.next, struct fconn, link));
        free(f->local_addr);
        free(f->endpoint);
        free(f);
    }
    free(sc->fwd_host);
    sc->fwd_host = NULL;
}
