/* bevpipe: a bufferevent joined to two pipes (see bevpipe.h).
 *
 * Every entry point (bufferevent, pipe and timer callbacks, public calls) runs between
 * enter() and leave(): pk_bevpipe_del inside one of them only detaches and marks the
 * object, and the outermost leave() destroys it, so no frame ever returns into freed
 * memory. Work that would re-enter a caller (resuming reads, the abortive close, on_done)
 * runs from kick_ev, a deferred event. */
#include "stream/bevpipe.h"

#include "base/base.h"
#include "net/net.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define DEFAULT_OUT_HWM (256 * 1024)
#define SPLICE_PIPE_HWM (256 * 1024)

struct pk_bevpipe {
    struct event_base *base;
    struct bufferevent *bev; /* NULL once closed abortively */
    struct pk_pipe *in;      /* NULL once detached */
    struct pk_pipe *out;     /* NULL once detached */
    size_t out_hwm;
    bool shutdown_write;
    bool plain;              /* pk_bev_is_plain: large reads (read_socket), direct writes */
    struct evbuffer *direct; /* bytes on their way straight to the socket (pump_out) */
    pk_bevpipe_done_cb on_done;
    void *arg;

    struct event *kick_ev; /* deferred: resume reading, reset, report */
    struct event *idle_ev;
    uint64_t idle_ms;
    uint64_t last_active_ms;
    uint64_t bytes_in;
    uint64_t bytes_out;

    int depth; /* entry points on the stack */
    int err;
    char why[96];

    bool read_paused;   /* blocked: `in` is full */
    bool read_eof;      /* the connection sent EOF: close `in` once its input is delivered */
    bool in_closed;     /* `in` was closed after EOF */
    bool out_ending;    /* `out` is done: flushing the output before the shutdown */
    bool write_done;    /* flushed and shut down */
    bool pumping_out;   /* pump_out is on the stack */
    bool repump_out;    /* a nested call asked for another round */
    bool reset_pending; /* close the connection abortively at the next kick */
    bool failed;
    bool reported; /* on_done was called */
    bool freed;    /* pk_bevpipe_del was called: destroy at the outermost leave() */
};

static void destroy(struct pk_bevpipe *bp)
{
    if (bp->bev)
        bufferevent_free(bp->bev);
    event_free(bp->kick_ev);
    event_free(bp->idle_ev);
    if (bp->direct)
        evbuffer_free(bp->direct);
    free(bp);
}

static void enter(struct pk_bevpipe *bp)
{
    bp->depth++;
}

/* Returns true when bp was destroyed. */
static bool leave(struct pk_bevpipe *bp)
{
    if (--bp->depth == 0 && bp->freed) {
        destroy(bp);
        return true;
    }
    return false;
}

static void kick(struct pk_bevpipe *bp)
{
    event_active(bp->kick_ev, EV_WRITE, 0);
}

static void active(struct pk_bevpipe *bp)
{
    if (bp->idle_ms)
        bp->last_active_ms = pk_now_ms();
}

static void detach(struct pk_bevpipe *bp)
{
    if (bp->in)
        pk_pipe_set_producer(bp->in, NULL, NULL);
    if (bp->out)
        pk_pipe_set_consumer(bp->out, NULL, NULL);
    bp->in = NULL;
    bp->out = NULL;
}

static void check_done(struct pk_bevpipe *bp)
{
    if (!bp->reported && (bp->failed || (bp->in_closed && bp->write_done)))
        kick(bp);
}

/* The stream failed: stop both directions, abort `in`, report from the kick. */
static void fail(struct pk_bevpipe *bp, int err, bool reset, const char *why)
{
    if (bp->failed || bp->reported || bp->freed)
        return;
    bp->failed = true;
    bp->err = err;
    bp->reset_pending = reset;
    snprintf(bp->why, sizeof(bp->why), "%s", why);
    if (bp->bev)
        bufferevent_disable(bp->bev, EV_READ | EV_WRITE);
    event_del(bp->idle_ev);
    struct pk_pipe *in = bp->in;
    detach(bp);
    kick(bp);
    if (in)
        pk_pipe_abort(in); /* last: the consumer may call anything */
}

/* SO_LINGER {1, 0}: the close sends a RST instead of a FIN. */
static void close_abortively(struct bufferevent *bev)
{
    evutil_socket_t fd = bufferevent_getfd(bev);
    if (fd >= 0) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    bufferevent_free(bev);
}

/* ---- connection -> in ---------------------------------------------------------------- */

/* Delivers buffered input while `in` has room; closes `in` after EOF once all is out. */
static void pump_in(struct pk_bevpipe *bp)
{
    if (!bp->in || bp->failed || bp->in_closed)
        return;
    if (bp->in->aborted) {
        /* Its consumer side failed (the owner aborted it): writes would be dropped. */
        fail(bp, PK_ERR_CLOSED, true, "input aborted by its owner");
        return;
    }
    struct evbuffer *input = bufferevent_get_input(bp->bev);
    while (evbuffer_get_length(input) > 0) {
        if (pk_pipe_full(bp->in)) {
            bp->read_paused = true;
            bufferevent_disable(bp->bev, EV_READ);
            return;
        }
        /* At most up to the mark: `in` never holds more than hwm bytes from us. */
        size_t room = bp->in->hwm - pk_pipe_len(bp->in);
        size_t n = PK_MIN(evbuffer_get_length(input), room);
        bp->bytes_in += n;
        active(bp);
        pk_pipe_write_from(bp->in, input, n);
        if (bp->freed || bp->failed)
            return;
    }
    if (bp->read_eof) {
        bp->in_closed = true;
        pk_pipe_close(bp->in);
        if (!bp->freed)
            check_done(bp);
    }
}

static void in_drained(struct pk_pipe *p, size_t n, void *producer)
{
    struct pk_bevpipe *bp = producer;
    PK_UNUSED(n);
    if (bp->read_paused && !pk_pipe_full(p))
        kick(bp);
}

/* ---- out -> connection ---------------------------------------------------------------- */

static void finish_write(struct pk_bevpipe *bp)
{
    bp->write_done = true;
    if (bp->out)
        pk_pipe_set_consumer(bp->out, NULL, NULL);
    if (bp->shutdown_write) {
        evutil_socket_t fd = bufferevent_getfd(bp->bev);
        /* ENOTCONN: the peer is already gone; a read will report how. */
        if (fd >= 0)
            shutdown(fd, SHUT_WR);
    } else if (!bp->read_eof) {
        /* TLS cannot half-close: the close_notify that follows ends both directions
         * (PROTOCOL.md 2). What was read is delivered, then `in` ends as at EOF. */
        bp->read_eof = true;
        bufferevent_disable(bp->bev, EV_READ);
        pump_in(bp);
        if (bp->freed || bp->failed)
            return;
    }
    check_done(bp);
}

static void pump_out(struct pk_bevpipe *bp)
{
    if (!bp->out || bp->failed || bp->write_done)
        return;
    if (bp->pumping_out) {
        /* A nested call from our own pk_pipe_move: the outer loop goes on. */
        bp->repump_out = true;
        return;
    }
    struct evbuffer *output = bufferevent_get_output(bp->bev);
    bp->pumping_out = true;
    do {
        bp->repump_out = false;
        /* Aborted even after its end was seen (while flushing): the reset must win. */
        if (bp->out->aborted) {
            bp->pumping_out = false;
            fail(bp, PK_ERR_CLOSED, true, "output aborted");
            return;
        }
        while (pk_pipe_len(bp->out) > 0 && evbuffer_get_length(output) < bp->out_hwm) {
            /* Nothing queued on a plain socket: straight to it (pk_bev_write_direct). */
            bool direct = bp->plain && evbuffer_get_length(output) == 0;
            if (direct && !bp->direct)
                bp->direct = pk_xevbuffer_new();
            size_t n = pk_pipe_move(bp->out, direct ? bp->direct : output,
                                    bp->out_hwm - evbuffer_get_length(output));
            if (direct && bp->bev)
                pk_bev_write_direct(bp->bev, bp->direct);
            bp->bytes_out += n;
            active(bp);
            if (bp->freed || bp->failed || !bp->out) {
                bp->pumping_out = false;
                return;
            }
        }
    } while (bp->repump_out);
    bp->pumping_out = false;
    if (!bp->out_ending && pk_pipe_done(bp->out)) {
        /* The write callback now runs once the output is empty. */
        bp->out_ending = true;
        bufferevent_setwatermark(bp->bev, EV_WRITE, 0, 0);
    }
    if (bp->out_ending && evbuffer_get_length(output) == 0)
        finish_write(bp);
}

static void out_readable(struct pk_pipe *p, void *consumer)
{
    struct pk_bevpipe *bp = consumer;
    PK_UNUSED(p);
    enter(bp);
    pump_out(bp);
    leave(bp);
}

/* ---- bufferevent and timer callbacks -------------------------------------------------- */

/* The socket failed with errno e: what arrived before is still delivered, if there is
 * room, then the stream fails. */
static void socket_failed(struct pk_bevpipe *bp, int e, bool writing)
{
    char why[96];
    snprintf(why, sizeof(why), "connection %s: %s", writing ? "write failed" : "reset",
             e ? evutil_socket_error_to_string(e) : "error");
    pump_in(bp);
    fail(bp, PK_ERR_IO, false, why);
}

/* Plain sockets: after libevent's read (4 KiB at most), drains the socket in large reads
 * while `in` has room (pk_bev_read_more). EOF and errors seen here are handled as the
 * event callback handles them. */
static void read_socket(struct pk_bevpipe *bp)
{
    if (!bp->plain)
        return;
    while (bp->in && bp->bev && !bp->failed && !bp->freed && !bp->read_paused && !bp->read_eof &&
           evbuffer_get_length(bufferevent_get_input(bp->bev)) == 0) {
        size_t len = pk_pipe_len(bp->in);
        size_t room = bp->in->hwm > len ? bp->in->hwm - len : 0;
        if (room == 0)
            return;
        enum pk_read_end end;
        size_t n = pk_bev_read_more(bp->bev, room, &end);
        int e = errno;
        if (n)
            pump_in(bp);
        if (end == PK_READ_EOF) {
            if (bp->freed || bp->failed)
                return;
            bp->read_eof = true;
            bufferevent_disable(bp->bev, EV_READ);
            pump_in(bp);
            return;
        }
        if (end == PK_READ_ERROR) {
            if (!bp->freed)
                socket_failed(bp, e, false);
            return;
        }
        if (n < room)
            return; /* the socket is empty */
    }
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct pk_bevpipe *bp = arg;
    bool more = pk_bev_read_was_full(bev);
    enter(bp);
    pump_in(bp);
    if (more)
        read_socket(bp);
    leave(bp);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct pk_bevpipe *bp = arg;
    PK_UNUSED(bev);
    enter(bp);
    pump_out(bp);
    leave(bp);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct pk_bevpipe *bp = arg;
    PK_UNUSED(bev);
    enter(bp);
    if (bp->failed || bp->freed)
        goto out;
    if (what & BEV_EVENT_ERROR) {
        socket_failed(bp, EVUTIL_SOCKET_ERROR(), what & BEV_EVENT_WRITING);
    } else if (what & BEV_EVENT_EOF) {
        if (what & BEV_EVENT_WRITING) {
            fail(bp, PK_ERR_IO, false, "connection closed while writing");
            goto out;
        }
        /* libevent 2.1 may report EOF before the read callback saw all input. */
        bp->read_eof = true;
        pump_in(bp);
    }
out:
    leave(bp);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_bevpipe *bp = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    enter(bp);
    if (bp->freed)
        goto out;
    if (bp->reset_pending && bp->bev) {
        close_abortively(bp->bev);
        bp->bev = NULL;
    }
    if (!bp->failed) {
        if (bp->read_paused && bp->in && !pk_pipe_full(bp->in)) {
            bp->read_paused = false;
            pump_in(bp);
            if (!bp->read_paused && !bp->read_eof && !bp->failed && !bp->freed)
                bufferevent_enable(bp->bev, EV_READ);
        }
        if (!bp->freed)
            pump_out(bp);
    }
    if (bp->freed || bp->reported || !(bp->failed || (bp->in_closed && bp->write_done)))
        goto out;
    bp->reported = true;
    event_del(bp->idle_ev);
    detach(bp);
    if (bp->on_done)
        bp->on_done(bp, bp->err, bp->arg);
out:
    leave(bp);
}

static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_bevpipe *bp = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (!bp->idle_ms || bp->failed || bp->reported)
        return;
    uint64_t quiet = pk_now_ms() - bp->last_active_ms;
    if (quiet < bp->idle_ms) {
        uint64_t left = bp->idle_ms - quiet;
        struct timeval tv = pk_ms_timeval(left);
        event_add(bp->idle_ev, &tv);
        return;
    }
    enter(bp);
    fail(bp, PK_ERR_TIMEOUT, true, "idle timeout");
    leave(bp);
}

/* ---- public ------------------------------------------------------------------------- */

struct pk_bevpipe *pk_bevpipe_new(struct event_base *base, struct bufferevent *bev,
                                  struct pk_pipe *in, struct pk_pipe *out, bool shutdown_write,
                                  size_t out_hwm, pk_bevpipe_done_cb on_done, void *arg)
{
    struct pk_bevpipe *bp = pk_xcalloc(1, sizeof(*bp));
    bp->base = base;
    bp->bev = bev;
    bp->in = in;
    bp->out = out;
    bp->shutdown_write = shutdown_write;
    bp->plain = pk_bev_is_plain(bev);
    bp->out_hwm = out_hwm ? out_hwm : DEFAULT_OUT_HWM;
    bp->on_done = on_done;
    bp->arg = arg;
    bp->kick_ev = pk_xevent_new(base, -1, 0, kick_cb, bp);
    bp->idle_ev = pk_xevent_new(base, -1, 0, idle_cb, bp);
    pk_pipe_set_producer(in, in_drained, bp);
    pk_pipe_set_consumer(out, out_readable, bp);
    bufferevent_setcb(bev, read_cb, write_cb, event_cb, bp);
    /* No read high mark: reading stops only while `in` is full (and a mark would also stop
     * the read callback with input pending). */
    bufferevent_setwatermark(bev, EV_READ, 0, 0);
    bufferevent_setwatermark(bev, EV_WRITE, bp->out_hwm / 2, 0);
    bufferevent_set_timeouts(bev, NULL, NULL);
    pk_bev_tune_bulk(bev);
    /* Leftover input and whatever `out` holds already move from the kick, which also
     * starts reading (as if resumed from a pause). */
    bufferevent_disable(bev, EV_READ);
    bufferevent_enable(bev, EV_WRITE);
    bp->read_paused = true;
    kick(bp);
    return bp;
}

void pk_bevpipe_set_idle_timeout(struct pk_bevpipe *bp, uint64_t ms)
{
    bp->idle_ms = ms;
    event_del(bp->idle_ev);
    if (!ms || bp->failed || bp->reported)
        return;
    bp->last_active_ms = pk_now_ms();
    struct timeval tv = pk_ms_timeval(ms);
    event_add(bp->idle_ev, &tv);
}

void pk_bevpipe_reset(struct pk_bevpipe *bp, int err)
{
    enter(bp);
    fail(bp, err < 0 ? err : PK_ERR_CLOSED, true, "reset by its owner");
    leave(bp);
}

void pk_bevpipe_del(struct pk_bevpipe *bp)
{
    if (!bp || bp->freed)
        return;
    detach(bp);
    bp->freed = true;
    if (bp->bev)
        bufferevent_disable(bp->bev, EV_READ | EV_WRITE);
    if (bp->depth == 0)
        destroy(bp);
}

struct bufferevent *pk_bevpipe_take_bev(struct pk_bevpipe *bp)
{
    struct bufferevent *bev = bp->bev;
    bp->bev = NULL;
    if (bev) {
        bufferevent_disable(bev, EV_READ | EV_WRITE);
        bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
        bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    }
    pk_bevpipe_del(bp);
    return bev;
}

uint64_t pk_bevpipe_bytes_in(const struct pk_bevpipe *bp)
{
    return bp->bytes_in;
}

uint64_t pk_bevpipe_bytes_out(const struct pk_bevpipe *bp)
{
    return bp->bytes_out;
}

const char *pk_bevpipe_error(const struct pk_bevpipe *bp)
{
    return bp->why;
}

/* ---- splice ------------------------------------------------------------------------- */

struct pk_splice {
    struct pk_pipe ab; /* read from a, written to b */
    struct pk_pipe ba;
    struct pk_bevpipe *a; /* in = ab, out = ba */
    struct pk_bevpipe *b; /* in = ba, out = ab */
    pk_splice_done_cb on_done;
    void *arg;
    int err;
    bool a_done;
    bool b_done;
};

static void splice_side_done(struct pk_bevpipe *bp, int err, void *arg)
{
    struct pk_splice *sp = arg;
    bool is_a = bp == sp->a;
    struct pk_bevpipe *other = is_a ? sp->b : sp->a;
    bool other_done = is_a ? sp->b_done : sp->a_done;
    if (is_a)
        sp->a_done = true;
    else
        sp->b_done = true;
    if (err && !sp->err)
        sp->err = err;
    if (!other_done) {
        /* The abort of the shared pipe is not seen by a side whose output already ended:
         * reset it directly. Its on_done follows from its own kick. */
        if (err)
            pk_bevpipe_reset(other, err);
        return;
    }
    sp->on_done(sp, sp->err, sp->arg);
}

struct pk_splice *pk_splice_new(struct event_base *base, struct bufferevent *bev_a,
                                struct bufferevent *bev_b, bool shutdown_a, bool shutdown_b,
                                pk_splice_done_cb on_done, void *arg)
{
    struct pk_splice *sp = pk_xcalloc(1, sizeof(*sp));
    sp->on_done = on_done;
    sp->arg = arg;
    pk_pipe_init(&sp->ab, SPLICE_PIPE_HWM);
    pk_pipe_init(&sp->ba, SPLICE_PIPE_HWM);
    sp->a = pk_bevpipe_new(base, bev_a, &sp->ab, &sp->ba, shutdown_a, 0, splice_side_done, sp);
    sp->b = pk_bevpipe_new(base, bev_b, &sp->ba, &sp->ab, shutdown_b, 0, splice_side_done, sp);
    return sp;
}

void pk_splice_set_idle_timeout(struct pk_splice *sp, uint64_t ms)
{
    pk_bevpipe_set_idle_timeout(sp->a, ms);
    pk_bevpipe_set_idle_timeout(sp->b, ms);
}

uint64_t pk_splice_bytes_ab(const struct pk_splice *sp)
{
    return sp->ab.total_out;
}

uint64_t pk_splice_bytes_ba(const struct pk_splice *sp)
{
    return sp->ba.total_out;
}

struct bufferevent *pk_splice_take_b(struct pk_splice *sp)
{
    struct pk_bevpipe *b = sp->b;
    sp->b = NULL;
    return b ? pk_bevpipe_take_bev(b) : NULL;
}

void pk_splice_del(struct pk_splice *sp)
{
    if (!sp)
        return;
    pk_bevpipe_del(sp->a);
    pk_bevpipe_del(sp->b);
    pk_pipe_free(&sp->ab);
    pk_pipe_free(&sp->ba);
    free(sp);
}
