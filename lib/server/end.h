/* Private to lib/server: the downstream end of an exchange.
 *
 * An exchange (exchange.h) joins a downstream end to an upstream stream. The downstream
 * end is an HTTP/1.1 connection (h1down.c, one exchange at a time) or one stream of a
 * downstream HTTP/2 connection (h2down.c); the exchange drives it only through these ops
 * and never looks at which kind it holds (haproxy's mux_ops, nghttp2's callbacks).
 *
 * Bodies do not go through the ops: the end produces the request body into the exchange's
 * req_body pipe and consumes the response body from its resp_body pipe.
 *
 * Calling rules, for every op:
 * - The exchange calls an op only while its `down` points at the end. The end clears it
 *   (pk_exchange_down_gone) when it is done or gone, and is never called after that.
 * - Ops may be called from anywhere on the loop, pipe and nghttp2 callbacks included: they
 *   only queue output, submit frames or schedule a deferred close. None frees the end or
 *   the exchange (an op may abort a pipe, whose callbacks then run synchronously).
 * - Nothing passes ownership: heads stay the caller's (an op may edit the fields of the
 *   head it is given before sending them). */
#ifndef PK_SERVER_END_H
#define PK_SERVER_END_H

#include "stream/head.h"

#include <stdbool.h>

struct pk_end;

struct pk_end_ops {
    /* Sends the response head. body: a body follows, consumed from the exchange's
     * resp_body pipe until its end; false: the response is the head alone. Called at most
     * once per exchange, and never together with establish. */
    void (*send_head)(struct pk_end *e, struct pk_head *resp, bool body);
    /* The upstream accepted a raw stream (upgrade, TCP tunnel): answers 101 (HTTP/1.1) or
     * 200 (HTTP/2) and from then on moves raw bytes both ways through the exchange's pipes.
     * resp holds the upstream's fields, hop-by-hop ones removed. */
    void (*establish)(struct pk_end *e, struct pk_head *resp);
    /* The exchange failed after its response started: cut the downstream short (a reset
     * stream, or a connection closed without flushing), so a client never takes a
     * truncated body for a complete one. */
    void (*abort)(struct pk_end *e);
    /* The response is complete, or being sent, before the request body ended: tell the
     * client to stop sending (HTTP/2: RST_STREAM(NO_ERROR) after our END_STREAM). The
     * HTTP/1.1 end closes its connection after such a response on its own: a no-op. */
    void (*end_early)(struct pk_end *e);
    /* Optional (NULL: the end has no interim responses): the request asked for
     * "Expect: 100-continue" and a tunnel was found; answer 100 Continue now. */
    void (*send_continue)(struct pk_end *e);
    /* Optional (NULL: the end cannot carry a peer node's forwarded stream, see
     * pk_end_takes_forwarded): refuses the stream with REFUSED_STREAM so that the peer
     * may retry it on another node. Only before a response head was sent. */
    void (*refuse)(struct pk_end *e);
};

/* Embedded in the object that implements it; the exchange holds a pointer to it. */
struct pk_end {
    const struct pk_end_ops *ops;
};

/* Whether the end can carry a stream a peer node forwards (PROTOCOL.md 3): only HTTP/2
 * streams of the cluster port can, and only those can be refused for a retry elsewhere. */
static inline bool pk_end_takes_forwarded(const struct pk_end *e)
{
    return e && e->ops->refuse != NULL;
}

#endif
