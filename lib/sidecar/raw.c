/* Raw streams at the sidecar: extended CONNECT streams from the server (PROTOCOL.md 1.2).
 *
 * piko-tcp: a TCP connection to the endpoint's address (optionally preceded by a PROXY
 * protocol header); the stream is answered 200 only once the connection is up. Any other
 * :protocol is an HTTP upgrade (WebSocket...): the sidecar writes the HTTP/1.1 GET with
 * Connection: Upgrade itself and answers 200 with the service's fields after its 101.
 * Then the stream's DATA are the connection's bytes both ways: END_STREAM is a FIN,
 * RST_STREAM(CONNECT_ERROR) a reset, through a bevpipe. */
#include "accesslog/accesslog.h"
#include "base/base.h"
#include "base/log.h"
#include "http1/http1.h"
#include "net/dial.h"
#include "net/net.h"
#include "net/proxyproto.h"
#include "sidecar/sidecar_int.h"
#include "stream/bevpipe.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PIPE_HWM (256 * 1024)
#define OUT_HWM  (256 * 1024)
#define WS_GUID  "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

struct rx {
    struct sc_endpoint *ep;
    struct pk_h2stream *s;
    struct pk_dial *dial;
    struct bufferevent *bev; /* before the bevpipe takes it */
    struct pk_bevpipe *bp;
    struct pk_pipe to_service; /* stream DATA -> service */
    struct pk_pipe from_service;
    struct pk_h1parser parser; /* upgrade: the service's response head */
    struct event *done_ev;     /* deferred free */
    bool upgrade;
    bool parser_used;
    bool responded;
    bool relaying; /* upgrade refused: relaying the service's HTTP response */
    bool stream_gone;
    bool conn_done;  /* the bevpipe finished (flushed) or never existed */
    char accept[64]; /* expected Sec-WebSocket-Accept when we made the key */
    char client_addr[80];
    /* for the access log (scaccess.c) */
    uint64_t start_us;
    int status; /* the service's answer: 101 for an upgrade, 200 for a TCP connection */
    char *path, *host;
    char error[96];
};

static void rx_free(struct rx *x)
{
    if (x->bp) /* joined to the service: a stream, whatever its end */
        pk_sidecar_metrics_stream(x->ep->sc, x->ep->name, !x->upgrade, x->to_service.total_in,
                                  x->from_service.total_out);
    struct pk_access_rec r = {
        .kind = x->upgrade ? "upgrade" : "tcp",
        .endpoint = x->ep->name,
        .client = x->client_addr,
        .method = x->upgrade ? "GET" : "CONNECT",
        .host = x->host,
        .path = x->path,
        .status = x->status,
        .bytes_in = x->to_service.total_in,
        .bytes_out = x->from_service.total_out,
        .duration_us = pk_now_us() - x->start_us,
        .route = "service",
        .error = x->error[0] ? x->error : NULL,
    };
    pk_accesslog_add(x->ep->sc->access, &r);
    free(x->path);
    free(x->host);
    if (x->dial)
        pk_dial_cancel(x->dial);
    if (x->bp)
        pk_bevpipe_del(x->bp);
    if (x->bev)
        bufferevent_free(x->bev);
    if (x->parser_used)
        pk_h1parser_free(&x->parser);
    pk_pipe_free(&x->to_service);
    pk_pipe_free(&x->from_service);
    event_free(x->done_ev);
    x->ep->sc->nstreams--;
    pk_sidecar_check_done(x->ep->sc);
    free(x);
}

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    rx_free(arg);
}

static void stream_closed(struct pk_h2stream *s, uint32_t code, void *ud)
{
    struct rx *x = ud;
    PK_UNUSED(s);
    x->s = NULL;
    x->stream_gone = true;
    PK_DEBUG("raw", "endpoint=%s stream closed code=%u", x->ep->name, code);
    /* The pipes were detached by h2 (an unfinished one aborted, which resets the
     * connection through the bevpipe). A live connection still flushes what the stream
     * gave it: the exchange is freed once both are done, at a safe point. */
    if (code != NGHTTP2_NO_ERROR && x->bp && !x->conn_done)
        pk_bevpipe_reset(x->bp, PK_ERR_CLOSED); /* the stream failed: reset the service */
    else if (!x->bp || x->conn_done)
        event_active(x->done_ev, EV_WRITE, 0);
}

static const struct pk_h2stream_cbs stream_cbs = {.on_close = stream_closed};

/* The service failed the stream; reason is its metric label. */
static void fail(struct rx *x, uint32_t code, const char *reason, const char *why)
{
    pk_sidecar_metrics_local_error(x->ep->sc, x->ep->name, reason);
    PK_INFO("raw", "endpoint=%s service %s:%u: %s", x->ep->name, x->ep->host, x->ep->port, why);
    if (!x->error[0])
        snprintf(x->error, sizeof(x->error), "%s", why);
    if (x->s)
        pk_h2stream_reset(x->s, code);
}

static void bp_done(struct pk_bevpipe *bp, int err, void *arg)
{
    struct rx *x = arg;
    PK_DEBUG("raw", "endpoint=%s connection done err=%d to_service=%llu from_service=%llu",
             x->ep->name, err, (unsigned long long)pk_bevpipe_bytes_out(bp),
             (unsigned long long)pk_bevpipe_bytes_in(bp));
    x->conn_done = true;
    if (err && x->s)
        pk_h2stream_reset(x->s, NGHTTP2_CONNECT_ERROR);
    if (x->stream_gone)
        event_active(x->done_ev, EV_WRITE, 0);
}

/* Both directions become raw bytes on the connection. */
static void go_raw(struct rx *x)
{
    struct bufferevent *bev = x->bev;
    x->bev = NULL;
    x->bp = pk_bevpipe_new(x->ep->sc->base, bev, &x->from_service, &x->to_service, true, OUT_HWM,
                           bp_done, x);
}

static void respond(struct rx *x, struct pk_head *h, bool body)
{
    x->responded = true;
    if (!x->status)
        x->status = h->status;
    if (x->s && pk_h2stream_respond(x->s, h, body ? &x->from_service : NULL) != 0)
        pk_h2stream_reset(x->s, NGHTTP2_CONNECT_ERROR);
}

/* ---- upgrade: the service's answer ---------------------------------------------------- */

static bool up_on_head(struct pk_h1parser *p, void *ud)
{
    struct rx *x = ud;
    int status = p->head.status;
    if (status >= 100 && status < 200 && status != 101)
        return false;
    x->status = status;
    struct pk_head h;
    pk_head_init(&h);
    h.status = status;
    pk_hdrs_move(&h.hdrs, &p->head.hdrs);
    pk_h1_strip_hop_by_hop(&h.hdrs, false);
    pk_hdrs_del_prefix(&h.hdrs, "piko-");
    if (status == 101) {
        const char *acc = pk_hdrs_get(&h.hdrs, "sec-websocket-accept");
        if (x->accept[0] && (!acc || strcmp(acc, x->accept) != 0)) {
            fail(x, NGHTTP2_INTERNAL_ERROR, "bad_upgrade", "bad Sec-WebSocket-Accept in the 101");
        } else {
            h.status = 200;
            respond(x, &h, true);
        }
    } else if (status >= 200 && status < 300) {
        fail(x, NGHTTP2_INTERNAL_ERROR, "bad_upgrade",
             "answered an upgrade with a 2xx other than 101");
    } else {
        /* Refused: relay the response as it is, then end (PROTOCOL.md 1.2). */
        x->relaying = true;
        respond(x, &h, !(status == 204 || status == 304));
    }
    pk_head_free(&h);
    return false;
}

static void up_on_body(struct pk_h1parser *p, const char *data, size_t len, void *ud)
{
    struct rx *x = ud;
    PK_UNUSED(p);
    if (x->relaying)
        pk_pipe_write(&x->from_service, data, len);
}

static void up_on_complete(struct pk_h1parser *p, void *ud)
{
    struct rx *x = ud;
    PK_UNUSED(p);
    if (x->relaying)
        pk_pipe_close(&x->from_service);
}

static const struct pk_h1parser_cbs up_cbs = {
    .on_head = up_on_head,
    .on_body = up_on_body,
    .on_complete = up_on_complete,
};

static void up_read(struct bufferevent *bev, void *arg)
{
    struct rx *x = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (evbuffer_get_length(in) > 0 && x->bev) {
        ssize_t n = pk_h1parser_feed_evbuffer(&x->parser, in, 0);
        if (n < 0) {
            fail(x, NGHTTP2_INTERNAL_ERROR, "malformed_response", "malformed upgrade response");
            return;
        }
        if (x->parser.upgrade && x->parser.head.status == 101 && x->responded) {
            go_raw(x); /* bytes after the 101 stay in the input: the bevpipe reads them */
            return;
        }
        if (x->parser.message_done) {
            if (!x->responded)
                pk_h1parser_next(&x->parser); /* interim response */
            else
                return;
        } else if (n == 0) {
            return;
        }
    }
}

static void up_event(struct bufferevent *bev, short what, void *arg)
{
    struct rx *x = arg;
    up_read(bev, x);
    if (!x->bev)
        return;
    if (x->relaying && pk_h1parser_eof(&x->parser) == 0)
        return;
    if (x->relaying)
        pk_pipe_abort(&x->from_service);
    else if (what & BEV_EVENT_EOF)
        fail(x, NGHTTP2_INTERNAL_ERROR, "closed", "closed the connection during the upgrade");
    else
        fail(x, NGHTTP2_INTERNAL_ERROR, "error", "connection error during the upgrade");
    bufferevent_disable(bev, EV_READ | EV_WRITE);
}

static void base64(const unsigned char *in, size_t len, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

static void write_upgrade_request(struct rx *x, struct evbuffer *out)
{
    struct pk_head *in = pk_h2stream_head(x->s);
    struct pk_head h;
    pk_head_init(&h);
    h.method = "GET";
    h.path = in->path;
    h.authority = in->authority;
    for (size_t i = 0; i < in->hdrs.n; i++) {
        struct pk_hdr *f = &in->hdrs.v[i];
        if (strncmp(f->name, "piko-", 5) != 0)
            pk_hdrs_add(&h.hdrs, f->name, f->nlen, f->value, f->vlen);
    }
    pk_hdrs_set(&h.hdrs, "connection", "Upgrade");
    pk_hdrs_set(&h.hdrs, "upgrade", in->protocol);
    if (strcmp(in->protocol, "websocket") == 0 && !pk_hdrs_get(&h.hdrs, "sec-websocket-key")) {
        /* An RFC 8441 client sends no key: make one and check the accept ourselves. */
        unsigned char raw[16], digest[SHA_DIGEST_LENGTH];
        char key[32];
        RAND_bytes(raw, sizeof(raw));
        base64(raw, sizeof(raw), key);
        char *cat = pk_xasprintf("%s%s", key, WS_GUID);
        SHA1((const unsigned char *)cat, strlen(cat), digest);
        free(cat);
        base64(digest, sizeof(digest), x->accept);
        pk_hdrs_set(&h.hdrs, "sec-websocket-key", key);
        if (!pk_hdrs_get(&h.hdrs, "sec-websocket-version"))
            pk_hdrs_add_str(&h.hdrs, "sec-websocket-version", "13");
    }
    pk_h1_write_request_head(out, &h);
    pk_hdrs_free(&h.hdrs);
}

/* ---- connecting ------------------------------------------------------------------------ */

static void dialed(int err, struct bufferevent *bev, const char *why, void *arg)
{
    struct rx *x = arg;
    x->dial = NULL;
    if (err) {
        /* Nothing reached the service: the server may retry elsewhere (1.3). */
        fail(x, NGHTTP2_REFUSED_STREAM, pk_sidecar_dial_error(err, why), why);
        return;
    }
    if (!x->s) {
        bufferevent_free(bev);
        return;
    }
    x->bev = bev;
    struct evbuffer *out = bufferevent_get_output(bev);
    if (x->upgrade) {
        pk_h1parser_init(&x->parser, HTTP_RESPONSE, 64 * 1024, &up_cbs, x);
        x->parser_used = true;
        write_upgrade_request(x, out);
        pk_pipe_set_producer(&x->from_service, NULL, NULL);
        bufferevent_setcb(bev, up_read, NULL, up_event, x);
        bufferevent_enable(bev, EV_READ | EV_WRITE);
        return;
    }
    if (x->ep->proxy_protocol) {
        struct sockaddr_storage src, dst;
        socklen_t sl, dl = sizeof(dst);
        int fd = bufferevent_getfd(bev);
        bool have = x->client_addr[0] && pk_parse_addr_port(x->client_addr, &src, &sl) == 0 &&
                    getpeername(fd, (struct sockaddr *)&dst, &dl) == 0;
        if (!have) {
            memset(&src, 0, sizeof(src));
            memset(&dst, 0, sizeof(dst));
        }
        if (x->ep->proxy_protocol == 1)
            pk_proxyproto_v1(out, (struct sockaddr *)&src, (struct sockaddr *)&dst);
        else
            pk_proxyproto_v2(out, (struct sockaddr *)&src, (struct sockaddr *)&dst);
    }
    struct pk_head h;
    pk_head_init(&h);
    h.status = 200;
    respond(x, &h, true);
    pk_head_free(&h);
    go_raw(x);
}

void pk_raw_serve(struct sc_endpoint *ep, struct pk_h2stream *s)
{
    struct pk_head *h = pk_h2stream_head(s);
    bool tcp = strcmp(h->protocol, "piko-tcp") == 0;
    if (!tcp && ep->tcp) {
        /* An upgrade sent to a TCP endpoint (PROTOCOL.md 1.3). */
        pk_h2stream_set_handler(s, NULL, NULL);
        pk_h2stream_reset(s, NGHTTP2_REFUSED_STREAM);
        return;
    }
    struct rx *x = pk_xcalloc(1, sizeof(*x));
    x->ep = ep;
    x->s = s;
    x->upgrade = !tcp;
    x->start_us = pk_now_us();
    x->path = h->path && !tcp ? pk_xstrdup(h->path) : NULL;
    x->host = h->authority && !tcp ? pk_xstrdup(h->authority) : NULL;
    x->done_ev = pk_xevent_new(ep->sc->base, -1, 0, done_cb, x);
    const char *ca = pk_hdrs_get(&h->hdrs, "piko-client-addr");
    if (ca)
        snprintf(x->client_addr, sizeof(x->client_addr), "%s", ca);
    pk_pipe_init(&x->to_service, PIPE_HWM);
    pk_pipe_init(&x->from_service, PIPE_HWM);
    ep->sc->nstreams++;
    pk_h2stream_set_handler(s, &stream_cbs, x);
    pk_h2stream_set_sink(s, &x->to_service);
    x->dial = pk_dial_start(ep->sc->base, ep->sc->resolver, ep->host, ep->port,
                            ep->sc->cfg->local_connect_timeout_ms, dialed, x);
    if (!x->dial)
        fail(x, NGHTTP2_REFUSED_STREAM, "resolve", "cannot resolve the service address");
}
