/* h2: an nghttp2 session over a libevent bufferevent, in either role, with streams whose
 * bodies flow through pk_pipe (backpressure end to end).
 *
 * Roles are fixed at creation whatever the TCP direction: piko-server's end of a tunnel
 * is the HTTP/2 client, the sidecar's end is the HTTP/2 server (PROTOCOL.md 1.1).
 *
 * Re-entrancy contract: nghttp2 is never driven (mem_recv/mem_send/del) from inside one of
 * its callbacks. Every pk_h2 function may be called from anywhere, including pipe and
 * stream callbacks: submissions only queue frames and schedule a deferred flush on the
 * loop, and pk_h2conn_close only schedules the destruction.
 *
 * Received DATA is written into the stream's sink pipe; HTTP/2 credit (WINDOW_UPDATE) is
 * returned only as the sink's consumer takes the bytes, so a stream pins at most its
 * window. Outbound DATA is read from the stream's source pipe by a data provider that
 * defers while the pipe is empty. */
#ifndef PK_H2_H
#define PK_H2_H

#include "stream/head.h"
#include "stream/pipe.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bufferevent;
struct event_base;
struct pk_h2conn;
struct pk_h2stream;

struct pk_h2_settings {
    uint32_t max_concurrent_streams; /* what we accept from the peer */
    uint32_t stream_window;
    uint32_t conn_window;
    bool enable_connect_protocol;
    size_t max_header_bytes;   /* per header block (names + values) */
    uint64_t ping_interval_ms; /* 0: no heartbeat */
    uint64_t ping_timeout_ms;
    uint64_t settings_timeout_ms; /* close when the peer's SETTINGS do not come; 0: none */
    size_t out_hwm;               /* stop producing frames above this much queued output */
};

void pk_h2_settings_default(struct pk_h2_settings *s);

struct pk_h2conn_cbs {
    /* Server role: a new stream's request head is complete (pk_h2stream_head). The callee
     * must call pk_h2stream_set_handler() (and may respond or reset) before returning;
     * a stream left without handler is reset. */
    void (*on_stream)(struct pk_h2conn *c, struct pk_h2stream *s, void *ud);
    /* The peer's first SETTINGS frame arrived. */
    void (*on_ready)(struct pk_h2conn *c, void *ud);
    /* The peer sent GOAWAY. */
    void (*on_goaway)(struct pk_h2conn *c, uint32_t error_code, void *ud);
    /* A stream of this connection closed (a slot is free). Optional. */
    void (*on_stream_closed)(struct pk_h2conn *c, void *ud);
    /* The connection is gone; why is a static string. Every stream got its on_close
     * before this. The conn is freed right after this returns. */
    void (*on_close)(struct pk_h2conn *c, const char *why, void *ud);
};

struct pk_h2stream_cbs {
    /* Client role: the final response head arrived (1xx other than 101 are dropped). */
    void (*on_head)(struct pk_h2stream *s, void *ud);
    /* The stream is closed (error_code is the HTTP/2 code, NGHTTP2_NO_ERROR = 0 for a clean
     * close; PK_H2_CONN_LOST when the connection went away). The stream is freed right
     * after this returns; the pipes are already detached from it. */
    void (*on_close)(struct pk_h2stream *s, uint32_t error_code, void *ud);
    /* Optional: the whole outgoing body was handed to nghttp2 (END_STREAM or the trailers
     * follow). Called from inside nghttp2: only arm timers or set flags here. */
    void (*on_sent)(struct pk_h2stream *s, void *ud);
};

#define PK_H2_CONN_LOST 0xffffffffu

/* Takes ownership of bev (connected, possibly with input already buffered — it is read
 * as HTTP/2). Sends the preface (client role) and SETTINGS at once. name is copied and
 * used in logs. */
struct pk_h2conn *pk_h2conn_new(struct event_base *base, struct bufferevent *bev, bool server_role,
                                const struct pk_h2_settings *settings,
                                const struct pk_h2conn_cbs *cbs, void *ud, const char *name);
/* Aborts the connection (deferred): streams get on_close(PK_H2_CONN_LOST), then the conn's
 * on_close. Idempotent. */
void pk_h2conn_close(struct pk_h2conn *c, const char *why);
/* The class of a reason that on_close gives, for metric labels: "ping_timeout" (no
 * SETTINGS, or no frame after a PING, in time), "closed" (the peer closed, or the session
 * ended or drained), "error" (an I/O or HTTP/2 error), or NULL for a reason the owner gave
 * pk_h2conn_close itself. */
const char *pk_h2_close_class(const char *why);
/* Graceful drain: GOAWAY(NO_ERROR, last_stream_id). Open streams complete; the connection
 * closes once none is left. Client role (tunnel) uses last_stream_id 0 (PROTOCOL.md 1.5);
 * server role uses the highest stream id it accepted (pk_h2conn_last_stream_id). */
void pk_h2conn_drain(struct pk_h2conn *c, int32_t last_stream_id);
/* Sidecar drain step one (RFC 9113 6.8): GOAWAY(2^31-1) then a PING; on its ACK the real
 * GOAWAY(last accepted) is sent. */
void pk_h2conn_drain_two_step(struct pk_h2conn *c);
int32_t pk_h2conn_last_stream_id(const struct pk_h2conn *c);
bool pk_h2conn_is_ready(const struct pk_h2conn *c);
bool pk_h2conn_is_draining(const struct pk_h2conn *c);
/* Streams currently open on this connection. */
size_t pk_h2conn_nstreams(const struct pk_h2conn *c);
/* DATA payload bytes received from and sent to the peer since the connection opened:
 * bodies and raw streams' bytes (HEADERS, frame headers and padding not counted). Sent
 * counts bytes handed to nghttp2 for the socket. */
void pk_h2conn_data_bytes(const struct pk_h2conn *c, uint64_t *in, uint64_t *out);
/* True when a new stream can be opened now (ready, not draining, under the peer's
 * MAX_CONCURRENT_STREAMS). */
bool pk_h2conn_can_open(const struct pk_h2conn *c);
const char *pk_h2conn_name(const struct pk_h2conn *c);
void *pk_h2conn_userdata(const struct pk_h2conn *c);

/* Client role: opens a stream. body is the request body source (NULL: no body, END_STREAM
 * on HEADERS); the response body is written to sink (may be NULL until on_head, see
 * pk_h2stream_set_sink). Returns NULL on failure. */
struct pk_h2stream *pk_h2conn_request(struct pk_h2conn *c, const struct pk_head *head,
                                      struct pk_pipe *body, const struct pk_h2stream_cbs *cbs,
                                      void *ud);

/* Sets the handler of a server-role stream and where its request body goes. */
void pk_h2stream_set_handler(struct pk_h2stream *s, const struct pk_h2stream_cbs *cbs, void *ud);
void pk_h2stream_set_sink(struct pk_h2stream *s, struct pk_pipe *sink);
/* Server role: submits the response head; body NULL means none (END_STREAM on HEADERS). */
int pk_h2stream_respond(struct pk_h2stream *s, const struct pk_head *head, struct pk_pipe *body);
void pk_h2stream_reset(struct pk_h2stream *s, uint32_t error_code);
/* The response is complete but the request body is not needed: once our END_STREAM has
 * gone out (now, if it has), RST_STREAM(NO_ERROR) tells the peer to stop sending
 * (RFC 9113 8.1, PROTOCOL.md 1.3). */
void pk_h2stream_end_early(struct pk_h2stream *s);
/* The received head (request in server role, response in client role). */
struct pk_head *pk_h2stream_head(struct pk_h2stream *s);
int32_t pk_h2stream_id(const struct pk_h2stream *s);
struct pk_h2conn *pk_h2stream_conn(const struct pk_h2stream *s);
/* Server role: the request's header block was over max_header_bytes. Its head is
 * incomplete (the fields past the limit were dropped): answer 431, never route it. */
bool pk_h2stream_head_too_large(const struct pk_h2stream *s);
/* True when the peer ended its side of the stream with END_STREAM (no body follows). */
bool pk_h2stream_remote_ended(const struct pk_h2stream *s);

#endif
