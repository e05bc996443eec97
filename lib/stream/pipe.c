#include "stream/pipe.h"

#include "base/base.h"

#include <event2/buffer.h>
#include <stdint.h>
#include <string.h>

void pk_pipe_init(struct pk_pipe *p, size_t hwm)
{
    memset(p, 0, sizeof(*p));
    p->buf = pk_xevbuffer_new();
    p->hwm = hwm;
    pk_hdrs_init(&p->trailers);
}

void pk_pipe_free(struct pk_pipe *p)
{
    if (p->buf)
        evbuffer_free(p->buf);
    pk_hdrs_free(&p->trailers);
    memset(p, 0, sizeof(*p));
}

void pk_pipe_set_consumer(struct pk_pipe *p, pk_pipe_readable_cb cb, void *consumer)
{
    p->on_readable = cb;
    p->consumer = consumer;
}

void pk_pipe_set_producer(struct pk_pipe *p, pk_pipe_drained_cb cb, void *producer)
{
    p->on_drained = cb;
    p->producer = producer;
}

static void notify_consumer(struct pk_pipe *p)
{
    if (p->on_readable)
        p->on_readable(p, p->consumer);
}

void pk_pipe_set_limit(struct pk_pipe *p, uint64_t limit, pk_pipe_limit_cb on_limit, void *arg)
{
    p->limit = limit;
    p->on_limit = on_limit;
    p->limit_arg = arg;
}

/* True (and the pipe aborted, the owner told) when len more bytes would cross the limit. */
static bool over_limit(struct pk_pipe *p, size_t len)
{
    if (!p->limit || p->total_in + len <= p->limit)
        return false;
    pk_pipe_abort(p);
    if (p->on_limit)
        p->on_limit(p, p->limit_arg);
    return true;
}

void pk_pipe_write(struct pk_pipe *p, const void *data, size_t len)
{
    if (p->eof || p->aborted || len == 0 || over_limit(p, len))
        return;
    evbuffer_add(p->buf, data, len);
    p->total_in += len;
    notify_consumer(p);
}

void pk_pipe_write_from(struct pk_pipe *p, struct evbuffer *src, size_t len)
{
    if (p->eof || p->aborted || len == 0 || over_limit(p, len)) {
        evbuffer_drain(src, len);
        return;
    }
    int n = evbuffer_remove_buffer(src, p->buf, len);
    if (n <= 0)
        return;
    p->total_in += (size_t)n;
    notify_consumer(p);
}

void pk_pipe_close(struct pk_pipe *p)
{
    if (p->eof || p->aborted)
        return;
    p->eof = true;
    notify_consumer(p);
}

void pk_pipe_abort(struct pk_pipe *p)
{
    if (p->aborted)
        return;
    p->aborted = true;
    notify_consumer(p);
}

bool pk_pipe_full(const struct pk_pipe *p)
{
    return evbuffer_get_length(p->buf) >= p->hwm;
}

size_t pk_pipe_len(const struct pk_pipe *p)
{
    return evbuffer_get_length(p->buf);
}

static void taken(struct pk_pipe *p, size_t n)
{
    p->total_out += n;
    if (n && p->on_drained)
        p->on_drained(p, n, p->producer);
}

size_t pk_pipe_read(struct pk_pipe *p, void *dst, size_t max)
{
    int n = evbuffer_remove(p->buf, dst, max);
    if (n <= 0)
        return 0;
    taken(p, (size_t)n);
    return (size_t)n;
}

size_t pk_pipe_move(struct pk_pipe *p, struct evbuffer *dst, size_t max)
{
    size_t len = evbuffer_get_length(p->buf);
    size_t n = len < max ? len : max;
    if (n == 0)
        return 0;
    if (n == len)
        evbuffer_add_buffer(dst, p->buf);
    else
        evbuffer_remove_buffer(p->buf, dst, n);
    taken(p, n);
    return n;
}

size_t pk_pipe_chunk(const struct pk_pipe *p, size_t max)
{
    struct evbuffer_iovec v[16];
    int n = evbuffer_peek(p->buf, (ev_ssize_t)max, NULL, v, 16);
    size_t whole = 0;
    for (int i = 0; i < n && i < 16; i++) {
        if (whole + v[i].iov_len > max)
            break;
        whole += v[i].iov_len;
    }
    return whole ? whole : PK_MIN(max, evbuffer_get_length(p->buf));
}

bool pk_pipe_done(const struct pk_pipe *p)
{
    return p->eof && evbuffer_get_length(p->buf) == 0;
}
