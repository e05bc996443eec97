#include "h2/h2.h"
#include "h2/h2_int.h"

#include "base/base.h"
#include "base/log.h"
#include "net/net.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <malloc.h>
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

void pk_h2_settings_default(struct pk_h2_settings *s)
{
    memset(s, 0, sizeof(*s));
    s->max_concurrent_streams = 1024;
    s->stream_window = 1u << 20;
    s->conn_window = 16u << 20;
    s->max_header_bytes = 64 * 1024;
    s->ping_interval_ms = 10000;
    s->ping_timeout_ms = 10000;
    s->settings_timeout_ms = 10000;
    s->out_hwm = 256 * 1024;
}

void h2_schedule_flush(struct pk_h2conn *c)
{
    event_active(c->flush_ev, EV_WRITE, 0);
}

/* ---- connection ---------------------------------------------------------------------- */

static void destroy(struct pk_h2conn *c)
{
    while (c->streams) {
        struct pk_h2stream *s = c->streams;
        if (s->id > 0)
            nghttp2_session_set_stream_user_data(c->ng, s->id, NULL);
        h2_stream_finish(s, PK_H2_CONN_LOST);
    }
    if (c->cbs->on_close)
        c->cbs->on_close(c, c->why ? c->why : "closed", c->ud);
    nghttp2_session_del(c->ng);
    bufferevent_free(c->bev);
    if (c->direct)
        evbuffer_free(c->direct);
    event_free(c->flush_ev);
    if (c->ping_ev)
        event_free(c->ping_ev);
    event_free(c->deadline_ev);
    free(c->name);
    free(c);
}

/* Produces frames into the output buffer up to the high-water mark. Never called from
 * inside nghttp2. */
/* A GOAWAY is submitted only once every frame queued before it (notably the HEADERS of
 * streams opened just before the drain) is written: nghttp2 sends GOAWAY ahead of queued
 * HEADERS, and a peer that has GOAWAY and no open stream stops reading, so such a stream
 * would be lost with the connection. */
static void submit_pending_goaway(struct pk_h2conn *c)
{
    size_t bytes = 0;
    while (nghttp2_session_get_outbound_queue_size(c->ng) > 0 && bytes < (4u << 20)) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->ng, &data);
        if (n <= 0)
            break;
        evbuffer_add(c->wbuf, data, (size_t)n);
        bytes += (size_t)n;
    }
    nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, c->goaway_last_id, NGHTTP2_NO_ERROR, NULL, 0);
    c->goaway_pending = false;
}

static void produce(struct pk_h2conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    /* With nothing queued, frames go straight to the socket (no write event to add and
     * delete again); with something queued, behind it. */
    bool direct = c->plain && !c->closing && evbuffer_get_length(out) == 0;
    if (direct && !c->direct)
        c->direct = pk_xevbuffer_new();
    c->wbuf = direct ? c->direct : out;
    if (c->goaway_pending && !c->closing)
        submit_pending_goaway(c);
    while (!c->closing && evbuffer_get_length(c->wbuf) < c->set.out_hwm) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->ng, &data);
        if (n < 0) {
            PK_WARN("h2", "conn=%s send failed: %s", c->name, nghttp2_strerror((int)n));
            c->wbuf = NULL;
            pk_h2conn_close(c, "http2 send error");
            return;
        }
        if (n == 0)
            break;
        evbuffer_add(c->wbuf, data, (size_t)n);
    }
    if (direct)
        pk_bev_write_direct(c->bev, c->direct);
    c->wbuf = NULL;
    if (!c->closing && !c->close_after_flush && !nghttp2_session_want_read(c->ng) &&
        !nghttp2_session_want_write(c->ng)) {
        c->close_after_flush = true;
        if (!c->why)
            c->why = "session ended";
    }
    if (c->close_after_flush && !c->closing && evbuffer_get_length(out) == 0)
        pk_h2conn_close(c, c->why);
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_h2conn *c = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (c->closing) {
        destroy(c);
        return;
    }
    produce(c);
}

static void consume_input(struct pk_h2conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer_iovec v[8];
    while (!c->closing && evbuffer_get_length(in) > 0) {
        /* Feed the buffer's segments as they are: no copy into one block. */
        int nv = evbuffer_peek(in, -1, NULL, v, 8);
        size_t done = 0;
        for (int i = 0; i < nv && i < 8 && !c->closing; i++) {
            ssize_t n = nghttp2_session_mem_recv(c->ng, v[i].iov_base, v[i].iov_len);
            if (n < 0) {
                PK_INFO("h2", "conn=%s receive failed: %s", c->name, nghttp2_strerror((int)n));
                evbuffer_drain(in, done);
                pk_h2conn_close(c, "http2 protocol error");
                return;
            }
            done += (size_t)n;
        }
        evbuffer_drain(in, done);
    }
}

/* Most bytes read from a plain socket per read callback, beyond libevent's own read. */
#define READ_BURST (256 * 1024)

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct pk_h2conn *c = arg;
    if (c->closing)
        return;
    /* More may wait on a plain socket: it is drained in large reads (pk_bev_read_more). */
    bool more = c->plain && pk_bev_read_was_full(bev);
    consume_input(c);
    size_t got = 0;
    while (more && !c->closing && got < READ_BURST) {
        enum pk_read_end end;
        size_t n = pk_bev_read_more(bev, READ_BURST - got, &end);
        got += n;
        if (n)
            consume_input(c);
        if (end != PK_READ_AGAIN && !c->closing)
            pk_h2conn_close(c,
                            end == PK_READ_EOF ? "peer closed the connection" : "connection error");
        if (end != PK_READ_AGAIN || n == 0 || c->closing)
            break;
    }
    if (!c->closing)
        produce(c);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct pk_h2conn *c = arg;
    PK_UNUSED(bev);
    if (!c->closing)
        produce(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct pk_h2conn *c = arg;
    PK_UNUSED(bev);
    if (c->closing)
        return;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        /* libevent 2.1 may report EOF before all input was delivered. */
        consume_input(c);
        pk_h2conn_close(c,
                        (what & BEV_EVENT_EOF) ? "peer closed the connection" : "connection error");
    }
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_h2conn *c = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (!c->ready) {
        PK_WARN("h2", "conn=%s no SETTINGS from peer in time: closing", c->name);
        pk_h2conn_close(c, "no SETTINGS from peer");
    } else if (c->ping_sent_ms && c->last_rx_ms < c->ping_sent_ms) {
        PK_WARN("h2", "conn=%s heartbeat timeout: no frame for %llu ms: closing", c->name,
                (unsigned long long)(pk_now_ms() - c->ping_sent_ms));
        pk_h2conn_close(c, "heartbeat timeout");
    }
}

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_h2conn *c = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (c->closing || !c->ready)
        return;
    /* One PING at a time: an unanswered one keeps its deadline. */
    if (c->ping_sent_ms && c->last_rx_ms < c->ping_sent_ms)
        return;
    nghttp2_submit_ping(c->ng, NGHTTP2_FLAG_NONE, NULL);
    c->ping_sent_ms = pk_now_ms();
    struct timeval tv = pk_ms_timeval(c->set.ping_timeout_ms);
    event_add(c->deadline_ev, &tv);
    h2_schedule_flush(c);
}

/* ---- session memory ------------------------------------------------------------------ */

/* What an idle tunnel costs is mostly what nghttp2 1.52 allocates when a session is made:
 * the session (2.9 KiB, written), two HPACK ring arrays (1 KiB each, written only when
 * header fields are indexed), a stream map (4 KiB, calloc, written only when a stream
 * opens) and a 16 KiB frame buffer into which every outgoing frame is written from the
 * start. From the heap, each of them lands on pages of its own or on memory touched before
 * (calloc's clearing, freed TLS and request buffers), and all 25 KiB tend to stay resident.
 *
 * So the blocks of 1 KiB and more that the session makes while it is created go to one
 * mapping of H2_ARENA bytes of its own, the "arena": the session struct and the frame
 * buffer next to each other at its front, so that the first page holds the session and the
 * frame buffer's first bytes; the others at its back. The kernel backs only the pages
 * written, so an idle session holds one page. Space freed in the arena is not reused; the
 * arena is unmapped when its last block is freed (at the latest with the session). Later,
 * blocks of H2_MAP_MIN bytes and more (a grown frame buffer or stream map) get a mapping of
 * their own, and the rest comes from malloc. struct h2_mem records the mapped blocks, as
 * nghttp2_mem's free gives no size. docs/benchmarks.md "Memory per idle tunnel" has the
 * measurements. */
#define H2_ARENA        (32 * 1024)
#define H2_ARENA_MIN    1024
#define H2_FRAMEBUF_MIN (16 * 1024)
#define H2_MAP_MIN      4096

static size_t align16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* The entry of m's table that holds ptr (NULL: a free entry), or -1. */
static int mem_slot(const struct h2_mem *m, const void *ptr)
{
    for (int i = 0; i < H2_MEM_BLOCKS; i++)
        if (m->b[i].p == ptr)
            return i;
    return -1;
}

/* A block from the arena, or NULL: only while the session is being created. */
static void *arena_block(struct h2_mem *m, size_t size, int slot)
{
    if (!m->creating || size < H2_ARENA_MIN || size > H2_ARENA)
        return NULL;
    if (!m->arena && !m->arena_done) {
        void *a = mmap(NULL, H2_ARENA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        m->arena_done = true;
        if (a == MAP_FAILED)
            return NULL;
        m->arena = a;
        m->front = 0;
        m->back = H2_ARENA;
    }
    if (!m->arena || align16(size) > m->back - m->front)
        return NULL;
    unsigned char *p;
    /* The session (the first block) and frame buffers at the front, the rest at the back. */
    if (m->arena_blocks == 0 || size >= H2_FRAMEBUF_MIN) {
        p = m->arena + m->front;
        m->front += align16(size);
    } else {
        m->back -= align16(size);
        p = m->arena + m->back;
    }
    m->arena_blocks++;
    m->b[slot] = (struct h2_block){p, size, true};
    return p;
}

/* *zero: the block reads as zeros (a block of the arena or a fresh mapping; the arena's
 * freed space is never handed out again). */
static void *mem_alloc(struct h2_mem *m, size_t size, bool *zero)
{
    int slot = mem_slot(m, NULL);
    void *p = slot >= 0 ? arena_block(m, size, slot) : NULL;
    if (!p && slot >= 0 && size >= H2_MAP_MIN) {
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            p = NULL;
        else
            m->b[slot] = (struct h2_block){p, size, false};
    }
    *zero = p != NULL;
    return p ? p : malloc(size);
}

static void *h2_mem_malloc(size_t size, void *ud)
{
    bool zero;
    return mem_alloc(ud, size, &zero);
}

static void h2_mem_free(void *ptr, void *ud)
{
    struct h2_mem *m = ud;
    int i = ptr ? mem_slot(m, ptr) : -1;
    if (i < 0) {
        free(ptr);
        return;
    }
    struct h2_block b = m->b[i];
    m->b[i] = (struct h2_block){NULL, 0, false};
    if (!b.arena)
        munmap(b.p, b.len);
    else if (--m->arena_blocks == 0) {
        munmap(m->arena, H2_ARENA);
        m->arena = NULL;
    }
}

static void *h2_mem_calloc(size_t nmemb, size_t size, void *ud)
{
    if (size && nmemb > SIZE_MAX / size)
        return NULL;
    bool zero;
    void *p = mem_alloc(ud, nmemb * size, &zero);
    if (p && !zero)
        memset(p, 0, nmemb * size);
    return p;
}

static void *h2_mem_realloc(void *ptr, size_t size, void *ud)
{
    struct h2_mem *m = ud;
    int i = ptr ? mem_slot(m, ptr) : -1;
    if (!ptr)
        return h2_mem_malloc(size, ud);
    if (i < 0 && size < H2_MAP_MIN)
        return realloc(ptr, size);
    if (i >= 0 && size <= m->b[i].len)
        return ptr;
    size_t old = i >= 0 ? m->b[i].len : malloc_usable_size(ptr);
    void *np = h2_mem_malloc(size, ud);
    if (!np)
        return NULL;
    memcpy(np, ptr, old < size ? old : size);
    h2_mem_free(ptr, ud);
    return np;
}

struct pk_h2conn *pk_h2conn_new(struct event_base *base, struct bufferevent *bev, bool server_role,
                                const struct pk_h2_settings *settings,
                                const struct pk_h2conn_cbs *cbs, void *ud, const char *name)
{
    struct pk_h2conn *c = pk_xcalloc(1, sizeof(*c));
    c->base = base;
    c->bev = bev;
    c->server = server_role;
    c->set = *settings;
    c->cbs = cbs;
    c->ud = ud;
    c->name = pk_xstrdup(name);
    c->last_rx_ms = pk_now_ms();

    nghttp2_session_callbacks *cb = h2_callbacks_new();
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_peer_max_concurrent_streams(opt, 100);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    /* Flood defences, explicit so they do not depend on the library's defaults: rapid
     * reset (1000 RST_STREAM, refilled at 33 per second), CONTINUATION frames after one
     * HEADERS (8), entries per SETTINGS frame (32); PING/SETTINGS ACKs queued (1000
     * above). Each breach ends the connection with GOAWAY. */
    nghttp2_option_set_stream_reset_rate_limit(opt, 1000, 33);
    nghttp2_option_set_max_continuations(opt, 8);
    nghttp2_option_set_max_settings(opt, 32);
    /* nghttp2 keeps its own copy of mem; its user data, c->mem, outlives the session. */
    nghttp2_mem mem = {&c->mem, h2_mem_malloc, h2_mem_free, h2_mem_calloc, h2_mem_realloc};
    c->mem.creating = true;
    int rv = server_role ? nghttp2_session_server_new3(&c->ng, cb, c, opt, &mem)
                         : nghttp2_session_client_new3(&c->ng, cb, c, opt, &mem);
    c->mem.creating = false;
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0) {
        PK_ERROR("h2", "conn=%s cannot create session: %s", name, nghttp2_strerror(rv));
        bufferevent_free(bev);
        free(c->name);
        free(c);
        return NULL;
    }

    nghttp2_settings_entry iv[6];
    size_t niv = 0;
    iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
                                         server_role ? settings->max_concurrent_streams : 0};
    iv[niv++] =
        (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, settings->stream_window};
    iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_FRAME_SIZE, 64 * 1024};
    iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
                                         (uint32_t)settings->max_header_bytes};
    if (server_role && settings->enable_connect_protocol)
        iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1};
    if (!server_role)
        iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
    nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, niv);
    nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0,
                                          (int32_t)settings->conn_window);

    c->flush_ev = pk_xevent_new(base, -1, 0, flush_cb, c);
    c->deadline_ev = pk_xevent_new(base, -1, 0, deadline_cb, c);
    if (settings->ping_interval_ms) {
        c->ping_ev = pk_xevent_new(base, -1, EV_PERSIST, ping_cb, c);
        struct timeval tv = pk_ms_timeval(settings->ping_interval_ms);
        event_add(c->ping_ev, &tv);
    }
    if (settings->settings_timeout_ms) {
        struct timeval tv = pk_ms_timeval(settings->settings_timeout_ms);
        event_add(c->deadline_ev, &tv);
    }
    bufferevent_setcb(bev, read_cb, write_cb, event_cb, c);
    bufferevent_setwatermark(bev, EV_WRITE, settings->out_hwm / 2, 0);
    pk_bev_tune_bulk(bev);
    c->plain = pk_bev_is_plain(bev);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    /* Bytes that arrived together with the handshake are HTTP/2 already. */
    if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        consume_input(c);
    h2_schedule_flush(c);
    return c;
}

void pk_h2conn_close(struct pk_h2conn *c, const char *why)
{
    if (c->closing)
        return;
    c->closing = true;
    if (!c->why)
        c->why = why;
    PK_DEBUG("h2", "conn=%s closing: %s", c->name, c->why ? c->why : "closed");
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    event_active(c->flush_ev, EV_WRITE, 0);
}

const char *pk_h2_close_class(const char *why)
{
    static const char *const classes[][2] = {
        {"no SETTINGS from peer", "ping_timeout"},
        {"heartbeat timeout", "ping_timeout"},
        {"peer closed the connection", "closed"},
        {"session ended", "closed"},
        {"drained", "closed"},
        {"closed", "closed"},
        {"connection error", "error"},
        {"http2 protocol error", "error"},
        {"http2 send error", "error"},
    };
    for (size_t i = 0; why && i < PK_ARRAY_LEN(classes); i++)
        if (strcmp(why, classes[i][0]) == 0)
            return classes[i][1];
    return NULL;
}

void pk_h2conn_drain(struct pk_h2conn *c, int32_t last_stream_id)
{
    if (c->closing || c->drain_state == 2)
        return;
    c->goaway_pending = true; /* submitted by the next flush, see submit_pending_goaway */
    c->goaway_last_id = last_stream_id;
    c->drain_state = 2;
    h2_check_idle_drained(c);
    h2_schedule_flush(c);
}

void pk_h2conn_drain_two_step(struct pk_h2conn *c)
{
    if (c->closing || c->drain_state != 0)
        return;
    if (!c->server) {
        pk_h2conn_drain(c, 0);
        return;
    }
    nghttp2_submit_shutdown_notice(c->ng);
    nghttp2_submit_ping(c->ng, NGHTTP2_FLAG_NONE, (const uint8_t *)DRAIN_PING_OPAQUE);
    c->drain_state = 1;
    h2_schedule_flush(c);
}

int32_t pk_h2conn_last_stream_id(const struct pk_h2conn *c)
{
    return nghttp2_session_get_last_proc_stream_id(c->ng);
}

bool pk_h2conn_is_ready(const struct pk_h2conn *c)
{
    return c->ready && !c->closing;
}

bool pk_h2conn_is_draining(const struct pk_h2conn *c)
{
    return c->drain_state != 0 || c->goaway_recv || c->closing || c->close_after_flush;
}

size_t pk_h2conn_nstreams(const struct pk_h2conn *c)
{
    return c->nstreams;
}

void pk_h2conn_data_bytes(const struct pk_h2conn *c, uint64_t *in, uint64_t *out)
{
    *in = c->data_in;
    *out = c->data_out;
}

bool pk_h2conn_can_open(const struct pk_h2conn *c)
{
    if (!pk_h2conn_is_ready(c) || pk_h2conn_is_draining(c))
        return false;
    return c->nstreams <
           nghttp2_session_get_remote_settings(c->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
}

const char *pk_h2conn_name(const struct pk_h2conn *c)
{
    return c->name;
}

void *pk_h2conn_userdata(const struct pk_h2conn *c)
{
    return c->ud;
}
