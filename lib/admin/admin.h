/* admin: the admin port of both binaries — a small HTTP/1.1 server for /health, /ready and
 * /status/... that answers JSON and that no client can make big.
 *
 * Bounds (each one a reply and a close, logged at info with the peer):
 *   - the request head is at most max_head_bytes (431);
 *   - a head must be complete within head_timeout_ms of accept (the TLS handshake included)
 *     or of the first byte of a following request, however slowly the bytes come (408);
 *   - a keep-alive connection idle for idle_timeout_ms is closed;
 *   - a request with a body (Content-Length > 0 or any Transfer-Encoding) is refused with
 *     413 {"error":"request body not accepted"} before routing and auth: no body byte is
 *     kept (the socket is closed after the reply, with a lingering close);
 *   - only GET and HEAD are served (405 with Allow: GET, HEAD); HEAD gets the headers of the
 *     GET reply, content-length included, and no body;
 *   - one request at a time per connection: while a reply is pending or being written no
 *     request is parsed and at most max_head_bytes are read ahead (enough to notice the
 *     client closing), so pipelined requests wait in the socket and are answered in order;
 *   - at most max_connections connections (TLS handshakes in flight included, from accept):
 *     above it a new connection is closed at once, counted and logged at most once a
 *     second, so idle admin connections cannot use up the process's descriptors.
 * The listening socket is a pk_listener (net/listener.h), so descriptor exhaustion is
 * handled there too.
 *
 * Routing: exact paths first, then the longest registered prefix; a path without a route
 * gets 404 {"error":"not found"}. Paths are matched without the query string.
 *
 * Requests and replies. A handler runs from the loop with a pk_admin_req and replies with
 * pk_admin_reply, at once or later (an asynchronous check such as a JWT verification). The
 * request stays valid until pk_admin_reply returns or its cancel callback (see
 * pk_admin_req_on_cancel) has run, whichever comes first. If the connection goes away
 * while a request waits (the client closed or reset it; a half-close counts as gone):
 *   - with a cancel callback set, that callback runs (once, from the loop or from
 *     pk_admin_del) and the request is freed after it returns: do not reply to it then;
 *   - without one, the request stays valid and the later pk_admin_reply frees it without
 *     writing anything (a safe no-op), so an owner that always answers needs no callback.
 * pk_admin_del runs the cancel callback of every waiting request and frees all of them:
 * an owner that may still hold a request without a cancel callback must not reply after
 * pk_admin_del.
 *
 * Every function must be called from the thread running the loop. Handlers and cancel
 * callbacks may call any function of this module except pk_admin_del. */
#ifndef PK_ADMIN_H
#define PK_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct json_object;
struct pk_tls_server;
struct pk_admin;
struct pk_admin_req;

#define PK_ADMIN_DEFAULT_MAX_HEAD     (16 * 1024)
#define PK_ADMIN_DEFAULT_HEAD_TIMEOUT 10000 /* ms */
#define PK_ADMIN_DEFAULT_IDLE_TIMEOUT 60000 /* ms */

struct pk_admin_opts {
    const char *log_tag;       /* subsystem of the log lines ("admin" when NULL) */
    long long max_connections; /* connections and handshakes at once; 0: no limit */
    size_t max_head_bytes;     /* 0: PK_ADMIN_DEFAULT_MAX_HEAD */
    uint64_t head_timeout_ms;  /* 0: PK_ADMIN_DEFAULT_HEAD_TIMEOUT */
    uint64_t idle_timeout_ms;  /* 0: PK_ADMIN_DEFAULT_IDLE_TIMEOUT */
    /* TLS on the port (HTTP/1.1, no ALPN), or NULL for plain. Not owned: it must outlive
     * the admin server, and when handshakes may be in flight at pk_admin_del it must be
     * freed right after it, before the loop runs again (pk_tls_server_del drops them
     * without calling back). */
    struct pk_tls_server *tls;
};

struct pk_admin_stats {
    uint64_t accepted;  /* connections taken (TLS handshakes included) */
    uint64_t refused;   /* connections closed at once above max_connections */
    uint64_t requests;  /* complete heads: routed, or refused (405, 413) by the module */
    size_t connections; /* open now, TLS handshakes in flight included */
};

/* A route's handler: req is valid until replied (see above); arg as registered. */
typedef void (*pk_admin_handler)(struct pk_admin_req *req, void *arg);
/* The connection of a waiting request went away or the server is being freed: release
 * what the request holds. req is freed after the call. */
typedef void (*pk_admin_cancel_cb)(struct pk_admin_req *req, void *arg);

/* Listens on addr ("host:port", ":port", "[v6]:port") through a pk_listener named
 * "admin". Returns NULL with a message in err on failure. */
struct pk_admin *pk_admin_new(struct event_base *base, const char *addr,
                              const struct pk_admin_opts *opts, char *err, size_t errlen);
/* Closes the listener and every connection, runs the cancel callback of every waiting
 * request and frees it. NULL is a no-op. Not from a handler or a cancel callback. */
void pk_admin_del(struct pk_admin *a);
/* "127.0.0.1:8002" as bound. */
void pk_admin_addr(const struct pk_admin *a, char *buf, size_t len);
void pk_admin_stats(const struct pk_admin *a, struct pk_admin_stats *out);

/* Registers handler for path exactly, or (prefix) for every path starting with it. path
 * is copied. A later registration of the same path and kind replaces the earlier one. */
void pk_admin_route(struct pk_admin *a, const char *path, bool prefix, pk_admin_handler handler,
                    void *arg);

/* ---- in-process requests --------------------------------------------------------------- */

/* A GET made by the owner itself rather than by a client of the port: a peer node asking
 * through the cluster port for what this node's admin port would answer. */
struct pk_admin_call;

/* The reply of a call: the status, the content type ("application/json" for
 * pk_admin_reply) and len bytes of body (NUL-terminated), valid only during the callback. */
typedef void (*pk_admin_call_cb)(int status, const char *content_type, const char *body, size_t len,
                                 void *arg);

/* Routes "GET path?query" (query without '?', or NULL) through a's routes as a request that
 * came on no connection: the route's handler runs before this returns, and its reply,
 * given at once or later, is passed to cb from the loop (never from inside this function
 * or the handler). pk_admin_req_peer says peer (copied; NULL: "internal"). The request is
 * internal (pk_admin_req_internal): whoever calls this has authenticated its own caller,
 * so an auth gate may let it through. Returns the call, valid until cb has returned or
 * pk_admin_call_cancel. */
struct pk_admin_call *pk_admin_call(struct pk_admin *a, const char *path, const char *query,
                                    const char *peer, pk_admin_call_cb cb, void *arg);
/* cb will not be called; a request still waiting for its reply is dropped as if its
 * connection went away (its cancel callback runs, if set). Frees call; NULL is a no-op.
 * Not from inside call's own callback. After pk_admin_del, calls not yet delivered never
 * call back, and this only frees them. */
void pk_admin_call_cancel(struct pk_admin_call *call);
/* True for a request made by pk_admin_call. */
bool pk_admin_req_internal(const struct pk_admin_req *req);

/* ---- a request ----------------------------------------------------------------------- */

/* "GET" or "HEAD". */
const char *pk_admin_req_method(const struct pk_admin_req *req);
/* The path without the query string ("/status/auth"). */
const char *pk_admin_req_path(const struct pk_admin_req *req);
/* The query string without '?', or NULL when the target had none. */
const char *pk_admin_req_query(const struct pk_admin_req *req);
/* The first value of a request header (name case-insensitive), or NULL. */
const char *pk_admin_req_header(const struct pk_admin_req *req, const char *name);
/* The client's "ip:port" ("[v6]:port" for IPv6). */
const char *pk_admin_req_peer(const struct pk_admin_req *req);
/* False once the connection went away, or an in-process call was cancelled (a reply
 * would be dropped). */
bool pk_admin_req_alive(const struct pk_admin_req *req);

/* Sets the callback run if the request is dropped before its reply; NULL removes it. */
void pk_admin_req_on_cancel(struct pk_admin_req *req, pk_admin_cancel_cb cb, void *arg);
/* Adds a header to the reply to come (e.g. "WWW-Authenticate", "Bearer"); copied. */
void pk_admin_req_add_header(struct pk_admin_req *req, const char *name, const char *value);

/* Replies status with body (taken: json_object_put is called on it) serialised as plain
 * JSON (slashes not escaped) plus a newline, as content-type application/json with a
 * content-length; a NULL body is an empty one. HEAD gets the same headers and no body.
 * Frees req. On a dead connection it only frees. */
void pk_admin_reply(struct pk_admin_req *req, int status, struct json_object *body);
/* Replies status with len bytes of body (copied) as content_type (e.g. Prometheus' text
 * format). HEAD gets the same headers and no body. Frees req, as pk_admin_reply. */
void pk_admin_reply_text(struct pk_admin_req *req, int status, const char *content_type,
                         const char *body, size_t len);
/* Replies 200 with the Prometheus text exposition of m. Frees req, as pk_admin_reply. */
struct pk_metrics;
void pk_admin_reply_metrics(struct pk_admin_req *req, const struct pk_metrics *m);
/* pk_admin_reply of {"error": message}. */
void pk_admin_reply_error(struct pk_admin_req *req, int status, const char *message);

/* Replies 200 with the server's status page (page.c: lib/admin/status_page.html, built
 * into the binary): one HTML document with its CSS and script inline that fetches the
 * /status routes itself, with the admin token the operator types in when they answer 401.
 * It holds no data, so it may be served without a token. The reply forbids every
 * resource but its own inline code and same-origin fetches (Content-Security-Policy),
 * framing and caching. Frees req, as pk_admin_reply. */
void pk_admin_reply_status_page(struct pk_admin_req *req);

#endif
