/* pipe: one direction of a stream — bytes, then an end (with optional trailers) or an
 * abort — moving from a producer to a consumer with backpressure.
 *
 * Every hop in Piko is a pair of pipes: a downstream HTTP/1.1 exchange, a downstream
 * HTTP/2 stream, a stream on a tunnel, a connection to a local service. An adapter
 * produces into a pipe while pk_pipe_full() is false and stops reading its source
 * otherwise (an HTTP/2 producer withholds WINDOW_UPDATE instead); the consumer takes
 * bytes out only when it can write them onward, and each take tells the producer, which
 * then resumes reading or returns HTTP/2 credit. So the memory a stream pins is bounded
 * by the pipe's high-water mark plus one read, or by the HTTP/2 stream window.
 *
 * Notifications are synchronous. A callback may call any pk_pipe function except
 * pk_pipe_free, and must not free the object that owns the pipe: owners defer their
 * destruction (see server/ and sidecar/ for the pattern). */
#ifndef PK_PIPE_H
#define PK_PIPE_H

#include "stream/head.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct pk_pipe;

/* Consumer side: bytes, the end or an abort arrived. */
typedef void (*pk_pipe_readable_cb)(struct pk_pipe *p, void *consumer);
/* Producer side: the consumer took n bytes (written onward). */
typedef void (*pk_pipe_drained_cb)(struct pk_pipe *p, size_t n, void *producer);
/* Owner side: a write would have taken the pipe past its limit. */
typedef void (*pk_pipe_limit_cb)(struct pk_pipe *p, void *arg);

struct pk_pipe {
    struct evbuffer *buf;
    size_t hwm;
    bool eof;          /* the producer finished; trailers are final */
    bool aborted;      /* the producer failed: the consumer must not report a clean end */
    bool has_trailers; /* trailers holds fields to send after the body */
    struct pk_hdrs trailers;
    uint64_t total_in;  /* bytes ever written, for logs and retry decisions */
    uint64_t total_out; /* bytes ever taken */
    pk_pipe_readable_cb on_readable;
    void *consumer;
    pk_pipe_drained_cb on_drained;
    void *producer;
    uint64_t limit; /* most bytes it may ever carry (0: no limit) */
    pk_pipe_limit_cb on_limit;
    void *limit_arg;
};

void pk_pipe_init(struct pk_pipe *p, size_t hwm);
void pk_pipe_free(struct pk_pipe *p);

void pk_pipe_set_consumer(struct pk_pipe *p, pk_pipe_readable_cb cb, void *consumer);
void pk_pipe_set_producer(struct pk_pipe *p, pk_pipe_drained_cb cb, void *producer);

/* Bounds the bytes the pipe may ever carry, whoever produces them. A write that would
 * take total_in past limit is dropped whole, the pipe is aborted (the consumer never sees
 * a complete body), then on_limit runs once, synchronously from inside that write, with
 * the pipe's usual rules for callbacks. limit 0: none. */
void pk_pipe_set_limit(struct pk_pipe *p, uint64_t limit, pk_pipe_limit_cb on_limit, void *arg);

/* Producer API. Writes after the end or an abort are dropped. */
void pk_pipe_write(struct pk_pipe *p, const void *data, size_t len);
/* Moves len bytes from the front of src (no copy where the buffers allow it). */
void pk_pipe_write_from(struct pk_pipe *p, struct evbuffer *src, size_t len);
void pk_pipe_close(struct pk_pipe *p);
void pk_pipe_abort(struct pk_pipe *p);
bool pk_pipe_full(const struct pk_pipe *p);

/* Consumer API. */
size_t pk_pipe_len(const struct pk_pipe *p);
/* Copies up to max bytes into dst and removes them. */
size_t pk_pipe_read(struct pk_pipe *p, void *dst, size_t max);
/* Moves up to max bytes to the end of dst. */
size_t pk_pipe_move(struct pk_pipe *p, struct evbuffer *dst, size_t max);
/* The most bytes up to max that can be moved without copying: whole chains of the pipe's
 * buffer from the front (or max when the first chain alone holds more). A consumer that
 * may choose its chunk size (an HTTP/2 DATA frame) takes this much, so that pk_pipe_move
 * never splits a chain, which would copy its part. */
size_t pk_pipe_chunk(const struct pk_pipe *p, size_t max);
/* True when the end was reached and every byte was taken. */
bool pk_pipe_done(const struct pk_pipe *p);

#endif
