/* bevpipe: a bufferevent as the two ends of a raw byte stream, and splice, two bufferevents
 * relaying raw bytes to each other.
 *
 * A bevpipe joins a connected bufferevent (a TCP service behind the sidecar, a downstream
 * client after an upgrade, a --forward connection) to two pipes: bytes read from the
 * connection are produced into `in`, bytes consumed from `out` are written to the
 * connection. Both directions keep the pipes' backpressure: reading stops while `in` is
 * full, and `out` is taken only while the connection's output is below out_hwm, so the
 * memory one connection pins is bounded by in's mark plus out_hwm. A plain socket is read
 * in large reads and written directly when nothing is queued (lib/net).
 *
 * Directions end separately (TCP half-close; TLS: see shutdown_write): EOF from the connection
 * closes `in` while `out` keeps flowing; the end of `out` becomes a FIN (shutdown(SHUT_WR)) once
 * everything before it was flushed. A reset travels both ways: a socket error aborts `in`; an
 * aborted `out` resets the connection (RST). A pipe notifies only its consumer, so an
 * owner whose other side fails must call pk_bevpipe_reset (aborting `in` itself is noticed
 * only when the next bytes or EOF arrive; aborting `out` after its end was taken and
 * flushed is not noticed at all).
 *
 * Re-entrancy: every function may be called from anywhere, including pipe callbacks and
 * on_done; pk_bevpipe_del from inside a callback only detaches and defers the rest. on_done
 * itself always runs from a deferred event of the loop, never inside a caller's call. */
#ifndef PK_BEVPIPE_H
#define PK_BEVPIPE_H

#include "stream/pipe.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bufferevent;
struct event_base;
struct pk_bevpipe;
struct pk_splice;

/* The stream is finished: err 0 when both directions ended cleanly (EOF was read and `in`
 * closed, and `out` ended, was flushed and the write side shut down), else negative:
 * PK_ERR_IO (the socket failed, e.g. ECONNRESET), PK_ERR_CLOSED (`out` or `in` was
 * aborted by the owner's side), PK_ERR_TIMEOUT (idle timeout), or pk_bevpipe_reset's err.
 * On every error `in` is aborted.
 * Called exactly once; the owner then calls pk_bevpipe_del (it may do so here). */
typedef void (*pk_bevpipe_done_cb)(struct pk_bevpipe *bp, int err, void *arg);

/* Joins bev to two pipes: bevpipe becomes in's producer and out's consumer (it sets their
 * producer/consumer callbacks; the owner keeps the other ends). Both pipes are owned by the
 * caller and must outlive the bevpipe (until pk_bevpipe_del).
 *
 * Takes ownership of bev, which must be connected and own its socket
 * (BEV_OPT_CLOSE_ON_FREE); its callbacks, watermarks and timeouts are replaced. Bytes
 * already in bev's input are delivered first. out_hwm bounds bev's output (0: 256 KiB).
 * shutdown_write: the end of `out` is a shutdown(fd, SHUT_WR) (plain sockets); false (TLS,
 * which cannot half-close) ends both directions once the output is flushed: input already
 * read is delivered, then `in` is closed as at EOF and on_done(0) follows, so the owner
 * takes the bev back (pk_bevpipe_take_bev) and ends it with a close_notify
 * (pk_bev_linger_close). An EOF read first (the peer's close_notify) closes `in` only, as
 * on a plain socket.
 *
 * on_done may be NULL (the owner then watches the pipes alone). Nothing happens
 * synchronously: the first bytes move from a deferred event. Never NULL. */
struct pk_bevpipe *pk_bevpipe_new(struct event_base *base, struct bufferevent *bev,
                                  struct pk_pipe *in, struct pk_pipe *out, bool shutdown_write,
                                  size_t out_hwm, pk_bevpipe_done_cb on_done, void *arg);

/* Fails the stream with PK_ERR_TIMEOUT (and resets the connection) when no byte moved in
 * either direction for ms milliseconds. 0 disables it (the default). */
void pk_bevpipe_set_idle_timeout(struct pk_bevpipe *bp, uint64_t ms);

/* Resets the connection (RST) and aborts `in`; on_done(err) follows unless it was already
 * reported (an err that is not negative becomes PK_ERR_CLOSED). For an owner whose other
 * side failed, whatever state the pipes are in. */
void pk_bevpipe_reset(struct pk_bevpipe *bp, int err);

/* Detaches from the pipes (neither is closed nor aborted) and frees bev, closing the
 * socket (unsent output is dropped). on_done will not be called after this. NULL is a
 * no-op. Safe from anywhere, including on_done and pipe callbacks. */
void pk_bevpipe_del(struct pk_bevpipe *bp);

/* Like pk_bevpipe_del, but hands bev back instead of freeing it (callbacks cleared, read
 * and write disabled, leftover input and unsent output kept): e.g. to end a TLS
 * connection with a close_notify and pk_bev_linger_close once its on_done(0) came. Returns
 * NULL when the connection was already closed abortively. */
struct bufferevent *pk_bevpipe_take_bev(struct pk_bevpipe *bp);

/* Bytes produced into `in` and bytes taken from `out` so far, for logs. */
uint64_t pk_bevpipe_bytes_in(const struct pk_bevpipe *bp);
uint64_t pk_bevpipe_bytes_out(const struct pk_bevpipe *bp);

/* Why the stream failed, for logs ("connection reset: Connection reset by peer",
 * "idle timeout"...); "" while it has not failed. Valid until pk_bevpipe_del. */
const char *pk_bevpipe_error(const struct pk_bevpipe *bp);

/* ---- splice ------------------------------------------------------------------------- */

/* All done: err 0 when both directions ended cleanly, else the first error (as for
 * pk_bevpipe_done_cb). Called exactly once, from a deferred event; the owner then calls
 * pk_splice_del (it may do so here). */
typedef void (*pk_splice_done_cb)(struct pk_splice *sp, int err, void *arg);

/* Relays raw bytes both ways between bev_a and bev_b (ownership of both is taken, as for
 * pk_bevpipe_new) through two internal 256 KiB pipes. EOF on one side becomes a write
 * shutdown of the other once everything before it was flushed (when that side's
 * shutdown_* is true, see pk_bevpipe_new); a reset or error on either side resets the
 * other. Never NULL. */
struct pk_splice *pk_splice_new(struct event_base *base, struct bufferevent *bev_a,
                                struct bufferevent *bev_b, bool shutdown_a, bool shutdown_b,
                                pk_splice_done_cb on_done, void *arg);
/* Idle timeout of the whole splice (no byte in either direction); 0 disables it. */
void pk_splice_set_idle_timeout(struct pk_splice *sp, uint64_t ms);
/* Bytes relayed from a to b and from b to a. */
uint64_t pk_splice_bytes_ab(const struct pk_splice *sp);
uint64_t pk_splice_bytes_ba(const struct pk_splice *sp);
/* After on_done: hands bev_b back (see pk_bevpipe_take_bev), e.g. to end a TLS side with a
 * close_notify; pk_splice_del then frees only bev_a. NULL when b was closed abortively. */
struct bufferevent *pk_splice_take_b(struct pk_splice *sp);
/* Frees both bufferevents (closing the sockets). NULL is a no-op. Safe from on_done. */
void pk_splice_del(struct pk_splice *sp);

#endif
