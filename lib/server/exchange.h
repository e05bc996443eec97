/* Private to lib/server: the exchange, which joins one downstream request to one stream
 * on a sidecar's tunnel or a peer node's link (exchange.c), and what the files of the
 * proxy and cluster ports share about it.
 *
 * An exchange has two sides. The downstream side is an end (end.h): an HTTP/1.1
 * connection (h1down.c) or a stream of a downstream HTTP/2 connection (h2down.c). The
 * upstream side is a pk_h2stream on a tunnel or a peer link. Bodies move through two pipes
 * owned by the exchange (req_body: downstream -> upstream, resp_body: upstream ->
 * downstream). Each side detaches itself when it is done or gone; the exchange is freed
 * when both have. Objects are never freed from inside a pipe or nghttp2 callback of their
 * own: connections close through a deferred event.
 *
 * The ends read and set the request's fields below while they parse it (req_has_body, raw,
 * tcp, token, cluster, body_too_large) and read the rest; the exchange alone changes its
 * state (head_sent, answered, the timer, the waiting lists). */
#ifndef PK_SERVER_EXCHANGE_H
#define PK_SERVER_EXCHANGE_H

#include "server/end.h"
#include "server/server_int.h"
#include "stream/head.h"
#include "stream/pipe.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TCP_PREFIX "/_piko/v1/tcp/"
#define PIPE_HWM   (256 * 1024)

struct pk_admin_call;
struct pk_peer;

struct exchange {
    struct pk_server *srv;
    char endpoint[130];
    char client[80];    /* "ip:port" of the downstream client, for logs */
    struct pk_head req; /* the request as sent on the tunnel */
    struct pk_pipe req_body;
    struct pk_pipe resp_body;
    bool req_has_body;
    bool is_head;
    char method[12];   /* the request's method for metrics ("" before the head) */
    uint64_t start_us; /* when it started: the latency histogram and the log */
    bool raw;          /* an upgrade or a TCP tunnel: an extended CONNECT stream */
    bool tcp;          /* /_piko/v1/tcp/{endpoint} */
    char token[64];    /* the upgrade token (:protocol) */
    bool expect_continue;
    bool cluster;    /* arrived on the cluster port (a peer's stream or a state call) */
    bool forwarded;  /* a peer's stream: local tunnels only (one hop) */
    bool state_wait; /* a state long poll waiting in srv->loop.state_waiters */
    struct pk_admin_call *status_call; /* a peer's status request waiting for the admin port */
    bool body_too_large;
    bool answered; /* the proxy answered itself (an error or a state): nothing more goes down */
    uint64_t state_after;
    /* upstream side */
    struct pk_h2stream *us;
    const struct tunnel *last_tunnel;
    const struct pk_peer *last_peer; /* compared only: the peer of the failed attempt */
    bool retried;
    bool peer_refused; /* the retry follows a peer's REFUSED_STREAM (no tunnel there) */
    bool timed_out;
    /* downstream side (end.h): NULL once it is done or gone (pk_exchange_down_gone) */
    struct pk_end *down;
    bool head_sent;
    bool req_sent; /* the whole request body went onto the upstream stream */
    int status;
    /* The one timer (ex_timer_cb): proxy.timeout while no body moves and no response head
     * came (routing, a slot, the wait after the upload); the stall check while a body
     * moves. */
    struct event *timer;
    bool stall_mode;
    uint64_t stall_progress; /* body bytes moved, at the last check */
    uint64_t stalled_ms;     /* how long nothing moved */
    bool waiting;
    struct exchange *wnext;
    /* proxy.auth: the request head waits in held while its token is verified */
    struct pk_auth_req *auth;
    struct pk_head held;
    bool auth_from_authorization; /* the token came from authorization: not forwarded */
    char ip[64];
    uint16_t port;
    /* for the access log (access.c) */
    char error[96];           /* why the proxy answered, or the exchange failed */
    char via[130];            /* the tunnel's sidecar address, or the peer's node id */
    bool via_peer;            /* via is a peer node */
    bool down_h1;             /* the downstream side is an HTTP/1.1 connection */
    char forwarded_by[130];   /* a peer's stream: the node that forwarded it */
    struct pk_hdrs resp_hdrs; /* the response's fields, when the access log wants them */
};

/* access.c: records the finished exchange (access log, /status/requests). */
void pk_exchange_log(struct exchange *ex, uint64_t took_us);

/* A new exchange of a client at ip:port; the caller sets ex->down, then fills the request
 * fields and calls pk_exchange_start (or answers it with pk_exchange_fail). */
struct exchange *pk_exchange_new(struct pk_server *srv, const char *ip, uint16_t port);
/* Starts an exchange whose downstream side is set up: the cluster port's requests go to
 * pk_cluster_port_start, the others are authenticated (proxy.auth), routed and dispatched.
 * in is the request as received; its fields are taken. */
void pk_exchange_start(struct exchange *ex, struct pk_head *in);
/* Opens the upstream stream, or waits for a slot, or fails (502). */
void pk_exchange_dispatch(struct exchange *ex);
/* Answers with a JSON error (PROTOCOL.md 4), or aborts the downstream side when a
 * response head was already sent (never a silently short body). name/value: one more
 * response field, or NULL. */
void pk_exchange_fail(struct exchange *ex, int status, const char *msg);
void pk_exchange_fail_hdr(struct exchange *ex, int status, const char *msg, const char *name,
                          const char *value);
/* Answers from the proxy itself with a JSON body of n bytes (an error, or a cluster
 * state). Does nothing once the downstream side is gone or an answer was given. */
void pk_exchange_reply(struct exchange *ex, int status, const char *body, size_t n,
                       const char *name, const char *value);
/* Called by the downstream end when it is done or gone (its pipe callbacks already
 * cleared): the end is never called again, the upstream stream is cancelled unless both
 * bodies were complete, and the exchange may be freed before this returns. */
void pk_exchange_down_gone(struct exchange *ex);
/* Cancels the upstream stream, if one is open (RST_STREAM(CANCEL), deferred). */
void pk_exchange_cancel(struct exchange *ex);

/* clusterport.c */
/* A request on the cluster port: a state call, or a stream a peer forwards to one of our
 * tunnels. */
void pk_cluster_port_start(struct exchange *ex, struct pk_head *in);
/* Takes a state long poll off srv->loop.state_waiters, or cancels a status request. */
void pk_cluster_port_unwait(struct exchange *ex);
/* The long poll's wait is over: answers with the state as it is. */
void pk_cluster_port_state_timeout(struct exchange *ex);

#endif
