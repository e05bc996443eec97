/* h2check: would a sidecar accept this request? For the fuzz targets of tests/fuzz.
 *
 * The proxy sends every HTTP/1.1 request it accepts as an HTTP/2 stream on a tunnel, and the
 * sidecar's nghttp2 session (default HTTP messaging checks, extended CONNECT enabled) resets
 * a stream whose fields break RFC 9113 and silently drops a regular field it finds invalid.
 * h2check plays both ends in memory: an nghttp2 client submits the head the way lib/h2 does
 * (make_nv: pseudo-fields first, then the fields; the body; the trailers as a HEADERS frame
 * before END_STREAM) and an nghttp2 server receives it. The result says whether the stream
 * arrived whole, or why not. */
#ifndef PK_FUZZ_H2CHECK_H
#define PK_FUZZ_H2CHECK_H

#include "fuzz.h"
#include "stream/head.h"

#include <nghttp2/nghttp2.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

struct h2check {
    /* input */
    const char *body;
    size_t body_len, body_off;
    bool has_body;
    const struct pk_hdrs *trailers;
    /* what the server saw */
    bool headers_done;
    bool ended;
    bool reset;
    size_t nfields;
    size_t body_recv;
    char why[256]; /* first problem, "" when none */
};

static void h2check_why(struct h2check *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Records the first problem only. */
static void h2check_why(struct h2check *c, const char *fmt, ...)
{
    if (c->why[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->why, sizeof(c->why), fmt, ap);
    va_end(ap);
}

static ssize_t h2check_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                            uint32_t *flags, nghttp2_data_source *source, void *ud)
{
    struct h2check *c = source->ptr;
    (void)ud;
    size_t n = c->body_len - c->body_off;
    if (n > length)
        n = length;
    memcpy(buf, c->body + c->body_off, n);
    c->body_off += n;
    if (c->body_off == c->body_len) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        const struct pk_hdrs *t = c->trailers;
        if (t && t->n) {
            nghttp2_nv *nv = malloc(t->n * sizeof(*nv));
            if (!nv)
                abort();
            for (size_t i = 0; i < t->n; i++)
                nv[i] = (nghttp2_nv){(uint8_t *)t->v[i].name, (uint8_t *)t->v[i].value,
                                     t->v[i].nlen, t->v[i].vlen, NGHTTP2_NV_FLAG_NONE};
            if (nghttp2_submit_trailer(ng, id, nv, t->n) == 0)
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            free(nv);
        }
    }
    return (ssize_t)n;
}

static int h2check_on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name,
                             size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags,
                             void *ud)
{
    struct h2check *c = ud;
    (void)ng, (void)f, (void)name, (void)nlen, (void)value, (void)vlen, (void)flags;
    c->nfields++;
    return 0;
}

static int h2check_on_invalid_header(nghttp2_session *ng, const nghttp2_frame *f,
                                     const uint8_t *name, size_t nlen, const uint8_t *value,
                                     size_t vlen, uint8_t flags, void *ud)
{
    (void)ng, (void)f, (void)flags;
    h2check_why(ud, "field dropped by the peer as invalid: '%.*s: %.*s'", (int)nlen,
                (const char *)name, (int)vlen, (const char *)value);
    return 0;
}

static int h2check_on_invalid_frame(nghttp2_session *ng, const nghttp2_frame *f, int err, void *ud)
{
    (void)ng, (void)f;
    h2check_why(ud, "stream refused by the peer: %s", nghttp2_strerror(err));
    return 0;
}

static int h2check_on_frame(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    struct h2check *c = ud;
    (void)ng;
    if (f->hd.stream_id != 1)
        return 0;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST)
        c->headers_done = true;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        c->ended = true;
    return 0;
}

static int h2check_on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                           size_t len, void *ud)
{
    struct h2check *c = ud;
    (void)ng, (void)flags, (void)id, (void)data;
    c->body_recv += len;
    return 0;
}

static int h2check_on_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
    struct h2check *c = ud;
    (void)ng;
    if (id == 1 && code != NGHTTP2_NO_ERROR) {
        c->reset = true;
        h2check_why(c, "stream reset: %s", nghttp2_http2_strerror(code));
    }
    return 0;
}

/* Moves every pending frame from one session to the other; false when neither has any. */
static bool h2check_pump(nghttp2_session *from, nghttp2_session *to)
{
    bool moved = false;
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(from, &data);
        if (n <= 0)
            return moved;
        moved = true;
        if (nghttp2_session_mem_recv(to, data, (size_t)n) != n)
            return moved;
    }
}

/* One round trip between the sessions; false when nothing moved. */
static bool h2check_exchange(nghttp2_session *cli, nghttp2_session *srv)
{
    bool a = h2check_pump(cli, srv);
    bool b = h2check_pump(srv, cli);
    return a || b;
}

/* Sends h (plus body and trailers when has_body) from a client to a server session.
 * Returns true when the server received the stream whole; otherwise c->why says why. */
static bool h2check_run(struct h2check *c, const struct pk_head *h)
{
    nghttp2_session_callbacks *cb;
    nghttp2_session *cli, *srv;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, h2check_on_header);
    nghttp2_session_callbacks_set_on_invalid_header_callback(cb, h2check_on_invalid_header);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, h2check_on_invalid_frame);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, h2check_on_frame);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, h2check_on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2check_on_close);
    struct h2check ignored = {0};
    nghttp2_session_client_new(&cli, cb, &ignored);
    nghttp2_session_server_new(&srv, cb, c);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv = {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1};
    nghttp2_submit_settings(srv, NGHTTP2_FLAG_NONE, &iv, 1);
    nghttp2_submit_settings(cli, NGHTTP2_FLAG_NONE, NULL, 0);
    while (h2check_exchange(cli, srv))
        ;

    /* lib/h2 make_nv() */
    nghttp2_nv *nv = calloc(h->hdrs.n + 6, sizeof(*nv));
    size_t n = 0;
    if (!nv)
        abort();
#define NV(k, v)                                                                                   \
    nv[n++] =                                                                                      \
        (nghttp2_nv){(uint8_t *)(k), (uint8_t *)(v), strlen(k), strlen(v), NGHTTP2_NV_FLAG_NONE}
    NV(":method", h->method);
    if (h->protocol)
        NV(":protocol", h->protocol);
    if (h->scheme)
        NV(":scheme", h->scheme);
    if (h->authority)
        NV(":authority", h->authority);
    if (h->path)
        NV(":path", h->path);
#undef NV
    size_t npseudo = n;
    for (size_t j = 0; j < h->hdrs.n; j++)
        nv[n++] = (nghttp2_nv){(uint8_t *)h->hdrs.v[j].name, (uint8_t *)h->hdrs.v[j].value,
                               h->hdrs.v[j].nlen, h->hdrs.v[j].vlen, NGHTTP2_NV_FLAG_NONE};
    nghttp2_data_provider prd = {.source.ptr = c, .read_callback = h2check_read};
    int32_t id = nghttp2_submit_request(cli, NULL, nv, n, c->has_body ? &prd : NULL, NULL);
    free(nv);
    bool ok = false;
    if (id != 1) {
        h2check_why(c, "nghttp2_submit_request refused the head: %s", nghttp2_strerror(id));
        goto out;
    }
    for (int rounds = 0; rounds < 1000; rounds++) {
        if (!h2check_exchange(cli, srv))
            break;
    }
    size_t want = npseudo + h->hdrs.n + (c->has_body && c->trailers ? c->trailers->n : 0);
    if (!c->headers_done)
        h2check_why(c, "the peer never completed the request head");
    if (!c->ended)
        h2check_why(c, "the peer never saw the end of the stream");
    if (c->body_recv != c->body_len)
        h2check_why(c, "the peer received %zu body bytes of %zu", c->body_recv, c->body_len);
    if (c->nfields != want)
        h2check_why(c, "the peer received %zu fields of %zu", c->nfields, want);
    ok = !c->why[0];
out:
    nghttp2_session_del(cli);
    nghttp2_session_del(srv);
    return ok;
}

#endif
