/* h2 private: what the connection part (h2.c: session setup, I/O, flush, heartbeats,
 * drain, lifecycle) and the stream part (h2stream.c: the pk_h2stream API, the data
 * provider, the sinks and the nghttp2 callbacks) share. Included by the .c files of lib/h2
 * only; h2.h is the module's interface. */
#ifndef PK_H2_INT_H
#define PK_H2_INT_H

#include "h2/h2.h"

#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bufferevent;
struct event;
struct event_base;

/* Opaque data of the PING that asks the peer for its answer to a shutdown notice
 * (pk_h2conn_drain_two_step); its ACK triggers the final GOAWAY. */
#define DRAIN_PING_OPAQUE "pkdrain!"

struct pk_h2stream {
    struct pk_h2conn *c;
    int32_t id;
    struct pk_head head;     /* received head */
    struct pk_hdrs trailers; /* received trailers, until handed to the sink */
    bool head_done;
    bool remote_ended;
    bool deferred; /* the data provider is waiting for the source pipe */
    bool src_last; /* the frame being sent takes the source's last bytes */
    bool has_handler;
    bool end_sent;        /* our END_STREAM went out */
    bool raw;             /* a CONNECT stream: DATA are the bytes of a connection */
    bool rst_after_end;   /* RST_STREAM(NO_ERROR) once it has */
    bool rst_submitted;   /* one RST_STREAM per stream (stream_rst) */
    bool head_too_large;  /* server role: fields past max_header_bytes were dropped */
    struct pk_pipe *sink; /* received DATA */
    struct pk_pipe *src;  /* DATA to send */
    size_t unconsumed;    /* bytes given to the sink and not yet taken */
    const struct pk_h2stream_cbs *cbs;
    void *ud;
    struct pk_h2stream *prev, *next;
};

/* The mapped blocks of a connection's nghttp2 session (h2.c, "session memory"). */
#define H2_MEM_BLOCKS 8
struct h2_block {
    void *p; /* NULL: a free entry */
    size_t len;
    bool arena; /* in the arena, else a mapping of its own */
};

struct h2_mem {
    unsigned char *arena; /* H2_ARENA bytes, or NULL */
    size_t front, back;   /* the arena's unused space */
    size_t arena_blocks;  /* arena blocks not freed yet */
    bool arena_done;      /* made once per session, never again */
    bool creating;        /* inside nghttp2_session_*_new3 */
    struct h2_block b[H2_MEM_BLOCKS];
};

struct pk_h2conn {
    struct event_base *base;
    struct bufferevent *bev;
    nghttp2_session *ng;
    bool server;
    bool plain;              /* a plain socket bufferevent: large reads, direct writes */
    struct evbuffer *wbuf;   /* where frames go while produce() runs: output or direct */
    struct evbuffer *direct; /* frames written straight to the socket (pk_bev_write_direct) */
    struct pk_h2_settings set;
    const struct pk_h2conn_cbs *cbs;
    void *ud;
    char *name;
    struct event *flush_ev;
    struct event *ping_ev;
    struct event *deadline_ev;
    uint64_t last_rx_ms;
    uint64_t ping_sent_ms;
    bool ready;
    bool closing;           /* destruction scheduled */
    bool close_after_flush; /* destroy once the output buffer is empty */
    bool goaway_recv;
    bool goaway_pending; /* pk_h2conn_drain: GOAWAY to submit at the next flush */
    int32_t goaway_last_id;
    int drain_state; /* 0 none, 1 shutdown notice sent (two-step), 2 final GOAWAY sent */
    const char *why;
    struct pk_h2stream *streams;
    size_t nstreams;
    uint64_t data_in, data_out; /* DATA payload bytes received / handed to nghttp2 */
    struct h2_mem mem;          /* the session's mapped blocks; outlives the session */
};

/* h2.c */

/* Makes the connection produce frames from the loop, soon: safe from anywhere, including
 * inside nghttp2 callbacks (it only activates an event). */
void h2_schedule_flush(struct pk_h2conn *c);

/* h2stream.c */

/* Detaches the stream's pipes, returns the flow-control credit it still holds, unlinks it
 * from its connection, calls its on_close (when it has a handler) and frees it. The caller
 * has cleared the stream's nghttp2 user data. */
void h2_stream_finish(struct pk_h2stream *s, uint32_t error_code);
/* Schedules the connection's close once it is draining (either way) and has no stream. */
void h2_check_idle_drained(struct pk_h2conn *c);
/* The nghttp2 callback set of every connection (user_data is the struct pk_h2conn); the
 * caller deletes it with nghttp2_session_callbacks_del once the session is made. */
nghttp2_session_callbacks *h2_callbacks_new(void);

#endif
