#include "h2/h2.h"
#include "h2/h2_int.h"

#include "base/base.h"
#include "base/log.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- streams ---------------------------------------------------------------------- */

static struct pk_h2stream *stream_new(struct pk_h2conn *c, int32_t id)
{
    struct pk_h2stream *s = pk_xcalloc(1, sizeof(*s));
    s->c = c;
    s->id = id;
    pk_head_init(&s->head);
    pk_hdrs_init(&s->trailers);
    s->next = c->streams;
    if (c->streams)
        c->streams->prev = s;
    c->streams = s;
    c->nstreams++;
    return s;
}

static void sink_drained(struct pk_pipe *p, size_t n, void *producer)
{
    struct pk_h2stream *s = producer;
    PK_UNUSED(p);
    if (n > s->unconsumed)
        n = s->unconsumed;
    s->unconsumed -= n;
    nghttp2_session_consume(s->c->ng, s->id, n);
    h2_schedule_flush(s->c);
}

static void src_readable(struct pk_pipe *p, void *consumer)
{
    struct pk_h2stream *s = consumer;
    PK_UNUSED(p);
    if (s->deferred) {
        s->deferred = false;
        nghttp2_session_resume_data(s->c->ng, s->id);
    }
    h2_schedule_flush(s->c);
}

static void end_sink(struct pk_h2stream *s)
{
    if (!s->sink)
        return;
    if (s->trailers.n) {
        pk_hdrs_move(&s->sink->trailers, &s->trailers);
        s->sink->has_trailers = true;
    }
    pk_pipe_close(s->sink);
}

/* Detaches the pipes, returns the credit still held and frees the stream. */
void h2_stream_finish(struct pk_h2stream *s, uint32_t error_code)
{
    struct pk_h2conn *c = s->c;
    if (s->unconsumed) {
        nghttp2_session_consume_connection(c->ng, s->unconsumed);
        s->unconsumed = 0;
    }
    if (s->sink) {
        pk_pipe_set_producer(s->sink, NULL, NULL);
        if (!s->sink->eof)
            pk_pipe_abort(s->sink);
        s->sink = NULL;
    }
    if (s->src) {
        pk_pipe_set_consumer(s->src, NULL, NULL);
        s->src = NULL;
    }
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    c->nstreams--;
    if (s->has_handler && s->cbs && s->cbs->on_close)
        s->cbs->on_close(s, error_code, s->ud);
    pk_head_free(&s->head);
    pk_hdrs_free(&s->trailers);
    free(s);
}

/* Every RST_STREAM of a stream goes through here, once. A second submit is not harmless:
 * nghttp2 1.52 cancels a request whose HEADERS are still queued on the first one, but
 * sends the second as a frame, and the peer, which never saw the stream, ends the whole
 * connection (RST_STREAM on an idle stream is a connection error). */
static void stream_rst(struct pk_h2stream *s, uint32_t error_code)
{
    if (s->rst_submitted)
        return;
    s->rst_submitted = true;
    nghttp2_submit_rst_stream(s->c->ng, NGHTTP2_FLAG_NONE, s->id, error_code);
}

/* The source pipe gave its last byte to nghttp2: the body is sent (its END_STREAM or
 * trailers are queued). */
static void src_finished(struct pk_h2stream *s)
{
    pk_pipe_set_consumer(s->src, NULL, NULL);
    s->src = NULL;
    s->src_last = false;
    if (s->cbs && s->cbs->on_sent)
        s->cbs->on_sent(s, s->ud);
}

/* DATA leave without a copy (NGHTTP2_DATA_FLAG_NO_COPY): this only decides a frame's
 * length and flags; send_data moves the bytes from the pipe to the connection's output. */
static ssize_t read_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *source, void *user_data)
{
    struct pk_h2stream *s = source->ptr;
    PK_UNUSED(buf);
    PK_UNUSED(user_data);
    struct pk_pipe *p = s ? s->src : NULL;
    if (!p)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (p->aborted) {
        /* The source failed: a raw stream reports a reset connection (CONNECT_ERROR,
         * PROTOCOL.md 1.2), anything else INTERNAL_ERROR. */
        stream_rst(s, s->raw ? NGHTTP2_CONNECT_ERROR : NGHTTP2_INTERNAL_ERROR);
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t avail = pk_pipe_len(p);
    size_t n = pk_pipe_chunk(p, PK_MIN(avail, length)); /* no chain split: no copy */
    bool last = p->eof && n == avail;
    if (!last) {
        if (n == 0) {
            s->deferred = true;
            return NGHTTP2_ERR_DEFERRED;
        }
        *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
        s->c->data_out += n;
        return (ssize_t)n;
    }
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (p->has_trailers && p->trailers.n) {
        nghttp2_nv *nv = pk_xcalloc(p->trailers.n, sizeof(*nv));
        for (size_t i = 0; i < p->trailers.n; i++) {
            nv[i] =
                (nghttp2_nv){(uint8_t *)p->trailers.v[i].name, (uint8_t *)p->trailers.v[i].value,
                             p->trailers.v[i].nlen, p->trailers.v[i].vlen, NGHTTP2_NV_FLAG_NONE};
        }
        if (nghttp2_submit_trailer(ng, id, nv, p->trailers.n) == 0)
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        free(nv);
    }
    if (n == 0) {
        /* An empty final frame: nghttp2 writes it itself, send_data is not called. */
        src_finished(s);
        return 0;
    }
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    s->c->data_out += n;
    s->src_last = true;
    return (ssize_t)n;
}

/* nghttp2's send_data_callback: one DATA frame whose length read_body chose, written as
 * its 9-byte header then the pipe's bytes moved (whole evbuffer chains, no copy) to the
 * output. Called right after read_body, from inside nghttp2_session_mem_send, so it lands
 * in order between the frames produce() writes. We never pad frames. */
static int send_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd,
                     size_t length, nghttp2_data_source *source, void *user_data)
{
    struct pk_h2conn *c = user_data;
    struct pk_h2stream *s = source->ptr;
    PK_UNUSED(ng);
    PK_UNUSED(frame);
    if (!s || !s->src || pk_pipe_len(s->src) < length)
        return NGHTTP2_ERR_CALLBACK_FAILURE; /* cannot happen: read_body saw the bytes */
    struct evbuffer *out = c->wbuf ? c->wbuf : bufferevent_get_output(c->bev);
    evbuffer_add(out, framehd, 9);
    pk_pipe_move(s->src, out, length);
    if (s->src_last && s->src)
        src_finished(s);
    return 0;
}

/* Fields of a head that fit the caller's array (nghttp2 copies them when the frame is
 * submitted); larger heads get an array from the heap. */
#define NV_STACK 48

/* Builds the nghttp2 field array of a head, pseudo-fields first: in stack (NV_STACK
 * entries) when it fits, else allocated (free it when it is not stack). */
static nghttp2_nv *make_nv(const struct pk_head *h, size_t *n, char *status_buf, nghttp2_nv *stack)
{
    nghttp2_nv *nv = h->hdrs.n + 6 <= NV_STACK ? stack : pk_xcalloc(h->hdrs.n + 6, sizeof(*nv));
    size_t i = 0;
#define NV(k, v)                                                                                   \
    nv[i++] = (nghttp2_nv)                                                                         \
    {                                                                                              \
        (uint8_t *)(k), (uint8_t *)(v), strlen(k), strlen(v), NGHTTP2_NV_FLAG_NONE                 \
    }
    if (h->status) {
        snprintf(status_buf, 4, "%03u", (unsigned)h->status % 1000u);
        NV(":status", status_buf);
    } else {
        NV(":method", h->method);
        if (h->protocol)
            NV(":protocol", h->protocol);
        if (h->scheme)
            NV(":scheme", h->scheme);
        if (h->authority)
            NV(":authority", h->authority);
        if (h->path)
            NV(":path", h->path);
    }
#undef NV
    for (size_t j = 0; j < h->hdrs.n; j++) {
        nv[i++] = (nghttp2_nv){(uint8_t *)h->hdrs.v[j].name, (uint8_t *)h->hdrs.v[j].value,
                               h->hdrs.v[j].nlen, h->hdrs.v[j].vlen, NGHTTP2_NV_FLAG_NONE};
    }
    *n = i;
    return nv;
}

struct pk_h2stream *pk_h2conn_request(struct pk_h2conn *c, const struct pk_head *head,
                                      struct pk_pipe *body, const struct pk_h2stream_cbs *cbs,
                                      void *ud)
{
    if (c->closing || c->server)
        return NULL;
    char status[4];
    size_t n;
    nghttp2_nv stack[NV_STACK];
    nghttp2_nv *nv = make_nv(head, &n, status, stack);
    struct pk_h2stream *s = stream_new(c, -1);
    s->cbs = cbs;
    s->ud = ud;
    s->has_handler = true;
    s->raw = head->method && strcmp(head->method, "CONNECT") == 0;
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_body};
    int32_t id = nghttp2_submit_request(c->ng, NULL, nv, n, body ? &prd : NULL, s);
    if (nv != stack)
        free(nv);
    if (id < 0) {
        PK_WARN("h2", "conn=%s submit request failed: %s", c->name, nghttp2_strerror(id));
        s->has_handler = false; /* no on_close for a stream that never existed */
        h2_stream_finish(s, NGHTTP2_INTERNAL_ERROR);
        return NULL;
    }
    s->id = id;
    if (body) {
        s->src = body;
        pk_pipe_set_consumer(body, src_readable, s);
    }
    h2_schedule_flush(c);
    return s;
}

void pk_h2stream_set_handler(struct pk_h2stream *s, const struct pk_h2stream_cbs *cbs, void *ud)
{
    s->cbs = cbs;
    s->ud = ud;
    s->has_handler = true;
}

void pk_h2stream_set_sink(struct pk_h2stream *s, struct pk_pipe *sink)
{
    if (s->sink && s->sink != sink)
        pk_pipe_set_producer(s->sink, NULL, NULL);
    s->sink = sink;
    if (!sink)
        return;
    pk_pipe_set_producer(sink, sink_drained, s);
    if (s->remote_ended)
        end_sink(s);
}

int pk_h2stream_respond(struct pk_h2stream *s, const struct pk_head *head, struct pk_pipe *body)
{
    char status[4];
    size_t n;
    nghttp2_nv stack[NV_STACK];
    nghttp2_nv *nv = make_nv(head, &n, status, stack);
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_body};
    int rv = nghttp2_submit_response(s->c->ng, s->id, nv, n, body ? &prd : NULL);
    if (nv != stack)
        free(nv);
    if (rv != 0)
        return PK_ERR_PROTOCOL;
    if (body) {
        s->src = body;
        pk_pipe_set_consumer(body, src_readable, s);
    }
    h2_schedule_flush(s->c);
    return 0;
}

void pk_h2stream_reset(struct pk_h2stream *s, uint32_t error_code)
{
    stream_rst(s, error_code);
    h2_schedule_flush(s->c);
}

void pk_h2stream_end_early(struct pk_h2stream *s)
{
    if (s->end_sent) {
        pk_h2stream_reset(s, NGHTTP2_NO_ERROR);
        return;
    }
    s->rst_after_end = true;
}

struct pk_head *pk_h2stream_head(struct pk_h2stream *s)
{
    return &s->head;
}

int32_t pk_h2stream_id(const struct pk_h2stream *s)
{
    return s->id;
}

struct pk_h2conn *pk_h2stream_conn(const struct pk_h2stream *s)
{
    return s->c;
}

bool pk_h2stream_head_too_large(const struct pk_h2stream *s)
{
    return s->head_too_large;
}

bool pk_h2stream_remote_ended(const struct pk_h2stream *s)
{
    return s->remote_ended;
}

/* ---- nghttp2 callbacks -------------------------------------------------------------- */

static int on_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *user_data)
{
    struct pk_h2conn *c = user_data;
    PK_UNUSED(ng);
    PK_UNUSED(hd);
    c->last_rx_ms = pk_now_ms();
    return 0;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data)
{
    struct pk_h2conn *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST ||
        !c->server)
        return 0;
    struct pk_h2stream *s = stream_new(c, frame->hd.stream_id);
    nghttp2_session_set_stream_user_data(ng, frame->hd.stream_id, s);
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
    struct pk_h2conn *c = user_data;
    PK_UNUSED(flags);
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct pk_h2stream *s = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (!s)
        return 0;
    if (s->head_too_large)
        return 0;
    struct pk_hdrs *dst = s->head_done ? &s->trailers : &s->head.hdrs;
    if (dst->bytes + namelen + valuelen > c->set.max_header_bytes && c->server && !s->head_done) {
        /* A request head: the rest of the block is decoded (HPACK state) and dropped, and
         * the stream's owner answers 431 (pk_h2stream_head_too_large). */
        PK_INFO("h2", "conn=%s stream=%d request header block over %zu bytes: 431", c->name, s->id,
                c->set.max_header_bytes);
        s->head_too_large = true;
        return 0;
    }
    if (dst->bytes + namelen + valuelen > c->set.max_header_bytes) {
        PK_INFO("h2", "conn=%s stream=%d header block over %zu bytes: reset", c->name, s->id,
                c->set.max_header_bytes);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    const char *n = (const char *)name, *v = (const char *)value;
    if (namelen > 0 && n[0] == ':' && !s->head_done) {
        struct pk_head *h = &s->head;
        if (namelen == 7 && memcmp(n, ":status", 7) == 0)
            h->status = atoi(v);
        else if (namelen == 7 && memcmp(n, ":method", 7) == 0)
            pk_head_set(&h->method, v, valuelen);
        else if (namelen == 7 && memcmp(n, ":scheme", 7) == 0)
            pk_head_set(&h->scheme, v, valuelen);
        else if (namelen == 10 && memcmp(n, ":authority", 10) == 0)
            pk_head_set(&h->authority, v, valuelen);
        else if (namelen == 5 && memcmp(n, ":path", 5) == 0)
            pk_head_set(&h->path, v, valuelen);
        else if (namelen == 9 && memcmp(n, ":protocol", 9) == 0)
            pk_head_set(&h->protocol, v, valuelen);
        return 0;
    }
    pk_hdrs_add(dst, n, namelen, v, valuelen);
    return 0;
}

void h2_check_idle_drained(struct pk_h2conn *c)
{
    if ((c->drain_state == 2 || c->goaway_recv) && c->nstreams == 0 && !c->close_after_flush) {
        c->close_after_flush = true;
        c->why = "drained";
        h2_schedule_flush(c);
    }
}

static void headers_received(struct pk_h2conn *c, struct pk_h2stream *s, const nghttp2_frame *f)
{
    bool end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    /* Known before the handlers run, so they can tell a request without a body. */
    if (end)
        s->remote_ended = true;
    if (!s->head_done) {
        if (!c->server && s->head.status >= 100 && s->head.status < 200 && s->head.status != 101) {
            /* Interim response: dropped (PROTOCOL.md 1.4). */
            pk_hdrs_free(&s->head.hdrs);
            s->head.status = 0;
            return;
        }
        s->head_done = true;
        s->raw = c->server && s->head.method && strcmp(s->head.method, "CONNECT") == 0;
        if (c->server) {
            if (c->cbs->on_stream)
                c->cbs->on_stream(c, s, c->ud);
            if (!s->has_handler) {
                stream_rst(s, NGHTTP2_REFUSED_STREAM);
                return;
            }
        } else if (s->cbs && s->cbs->on_head) {
            s->cbs->on_head(s, s->ud);
        }
    }
    if (end)
        end_sink(s);
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data)
{
    struct pk_h2conn *c = user_data;
    struct pk_h2stream *s = NULL;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        s = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
        if (s)
            headers_received(c, s, frame);
        break;
    case NGHTTP2_DATA:
        s = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
        if (s && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
            s->remote_ended = true;
            end_sink(s);
        }
        break;
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && !c->ready) {
            c->ready = true;
            if (c->cbs->on_ready)
                c->cbs->on_ready(c, c->ud);
        }
        break;
    case NGHTTP2_GOAWAY:
        c->goaway_recv = true;
        PK_DEBUG("h2", "conn=%s GOAWAY received error=%u last_stream=%d", c->name,
                 frame->goaway.error_code, frame->goaway.last_stream_id);
        if (c->cbs->on_goaway)
            c->cbs->on_goaway(c, frame->goaway.error_code, c->ud);
        h2_check_idle_drained(c);
        break;
    case NGHTTP2_PING:
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) && c->drain_state == 1 &&
            memcmp(frame->ping.opaque_data, DRAIN_PING_OPAQUE, 8) == 0) {
            nghttp2_submit_goaway(ng, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(ng), NGHTTP2_NO_ERROR,
                                  NULL, 0);
            c->drain_state = 2;
            h2_check_idle_drained(c);
        }
        break;
    default:
        break;
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user_data)
{
    PK_UNUSED(flags);
    ((struct pk_h2conn *)user_data)->data_in += len;
    struct pk_h2stream *s = nghttp2_session_get_stream_user_data(ng, id);
    if (!s || !s->sink || s->sink->eof || s->sink->aborted) {
        nghttp2_session_consume(ng, id, len);
        return 0;
    }
    s->unconsumed += len;
    pk_pipe_write(s->sink, data, len);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error_code, void *user_data)
{
    struct pk_h2conn *c = user_data;
    struct pk_h2stream *s = nghttp2_session_get_stream_user_data(ng, id);
    if (!s)
        return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    h2_stream_finish(s, error_code);
    if (c->cbs->on_stream_closed)
        c->cbs->on_stream_closed(c, c->ud);
    h2_check_idle_drained(c);
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data)
{
    PK_UNUSED(user_data);
    if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM) ||
        (frame->hd.type != NGHTTP2_DATA && frame->hd.type != NGHTTP2_HEADERS))
        return 0;
    struct pk_h2stream *s = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (!s)
        return 0;
    s->end_sent = true;
    if (s->rst_after_end)
        stream_rst(s, NGHTTP2_NO_ERROR);
    return 0;
}

static int on_error(nghttp2_session *ng, int lib_error_code, const char *msg, size_t len,
                    void *user_data)
{
    struct pk_h2conn *c = user_data;
    PK_UNUSED(ng);
    PK_DEBUG("h2", "conn=%s nghttp2: %.*s (%d)", c->name, (int)len, msg, lib_error_code);
    return 0;
}

/* A frame nghttp2 refused (it then resets the stream or ends the connection): why. */
static int on_invalid_frame(nghttp2_session *ng, const nghttp2_frame *frame, int lib_error_code,
                            void *user_data)
{
    struct pk_h2conn *c = user_data;
    PK_UNUSED(ng);
    PK_INFO("h2", "conn=%s invalid frame type=%u stream=%d from the peer: %s", c->name,
            (unsigned)frame->hd.type, frame->hd.stream_id, nghttp2_strerror(lib_error_code));
    return 0;
}

/* DATA frames as large as the peer allows (up to 64 KiB): fewer frames and callbacks per
 * byte than nghttp2's default of 16 KiB. */
static ssize_t read_length(nghttp2_session *ng, uint8_t frame_type, int32_t stream_id,
                           int32_t session_window, int32_t stream_window, uint32_t max_frame,
                           void *user_data)
{
    PK_UNUSED(ng);
    PK_UNUSED(frame_type);
    PK_UNUSED(stream_id);
    PK_UNUSED(user_data);
    ssize_t n = PK_MIN((ssize_t)session_window, (ssize_t)stream_window);
    n = PK_MIN(n, (ssize_t)max_frame);
    n = PK_MIN(n, (ssize_t)(64 * 1024));
    return n > 0 ? n : 1;
}

nghttp2_session_callbacks *h2_callbacks_new(void)
{
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_data_source_read_length_callback(cb, read_length);
    nghttp2_session_callbacks_set_send_data_callback(cb, send_data);
    nghttp2_session_callbacks_set_error_callback2(cb, on_error);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
    return cb;
}
