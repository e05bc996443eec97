/* httpc: asynchronous HTTP/1.1 GET client on libcurl's multi interface, driven by a
 * libevent loop (the cluster's control plane: state, long-poll watch, JWKS); and one
 * blocking GET for a command without a loop (the status CLI, pk_httpc_fetch).
 *
 * A pk_httpc is one CURLM whose sockets and timer are events on one event_base. It keeps
 * a bounded pool of connections (4 per host, 64 in all) that later requests reuse. Every
 * function here must be called from the thread running that loop.
 *
 * Callbacks are always delivered from the loop (a deferred event), never from inside
 * pk_httpc_get and never from inside libcurl. A callback may therefore start new
 * requests, cancel other requests and even pk_httpc_del its own client.
 *
 * Request lifetime: the pointer returned by pk_httpc_get stays valid until its callback
 * has returned (the request is freed right after) or until pk_httpc_cancel /
 * pk_httpc_del. Cancelled requests never call back.
 *
 * Only http:// and https:// URLs are fetched; redirects are not followed (a 3xx status is
 * passed through); proxies named in the environment are ignored. */
#ifndef PK_HTTPC_H
#define PK_HTTPC_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct pk_httpc;     /* one CURLM driven by one libevent loop */
struct pk_httpc_req; /* one GET in flight */

/* Body bound used when pk_httpc_new is given max_body 0. */
#define PK_HTTPC_DEFAULT_MAX_BODY (1024 * 1024)

/* status: the HTTP status, or 0 when the transfer failed (err says why: curl's message,
 * e.g. "Couldn't connect to server", "Timeout was reached", "response body over N bytes").
 * err is NULL when status is not 0.
 * body/len: the response body (NUL-terminated for convenience; len excludes the NUL); valid
 * only during the call. Never NULL: an empty or failed response gives "" and 0.
 * The request is freed right after the callback returns. */
typedef void (*pk_httpc_cb)(int status, const char *body, size_t len, const char *err, void *arg);

/* libcurl's process-wide state: call once per process before any client is created and
 * before any loop thread starts (curl_global_init is not thread-safe in 7.88); cleanup
 * after the last client is freed. Returns 0 or PK_ERR_IO. */
int pk_httpc_global_init(void);
void pk_httpc_global_cleanup(void);

/* Creates a client on base (pk_httpc_global_init must have run). Bodies longer than
 * max_body bytes fail the request (0: PK_HTTPC_DEFAULT_MAX_BODY). Returns NULL when base is
 * NULL or libcurl cannot make a multi handle. */
struct pk_httpc *pk_httpc_new(struct event_base *base, size_t max_body);

/* Cancels every request (no callbacks), closes the pooled connections and frees h. NULL is
 * a no-op. Safe from inside a callback of h. */
void pk_httpc_del(struct pk_httpc *h);

/* TLS for https:// URLs of this client (the cluster's state calls): the server is
 * verified against the CA file root_cas by chain only (no host name check: peers are
 * addressed by IP), and cert/key (may be NULL) are the client certificate. Paths are
 * copied; libcurl reads the files for each new connection (no CA cache), so a renewed
 * file is used by the next connection. Applies to requests started afterwards. */
void pk_httpc_set_tls(struct pk_httpc *h, const char *root_cas, const char *cert, const char *key);

/* GET url with extra header lines ("Name: value", NULL-terminated array, may be NULL;
 * copied), whole-transfer timeout timeout_ms (0 = none). The transfer starts from the loop.
 * Every failure after this returns (bad URL, refused, timeout, body too large) is
 * reported through cb with status 0. Returns NULL, and never calls back, only on
 * allocation / curl setup failure or when h, url or cb is NULL. */
struct pk_httpc_req *pk_httpc_get(struct pk_httpc *h, const char *url, const char *const *headers,
                                  uint64_t timeout_ms, pk_httpc_cb cb, void *arg);

/* The callback will not be called; NULL is a no-op. Allowed from inside any pk_httpc callback
 * (including for a different request) but not for the request whose callback is running. */
void pk_httpc_cancel(struct pk_httpc_req *r);

/* Requests started and neither called back (a callback that is running no longer counts)
 * nor cancelled. */
size_t pk_httpc_inflight(const struct pk_httpc *h);

/* ---- one blocking GET (fetch.c) ------------------------------------------------------ */

struct pk_httpc_fetch_opts {
    const char *const *headers; /* "Name: value" lines, NULL-terminated; may be NULL */
    uint64_t timeout_ms;        /* the whole transfer; 0: none */
    size_t max_body;            /* 0: PK_HTTPC_DEFAULT_MAX_BODY */
    /* https: the server's certificate is verified, host name included, against root_cas
     * (a PEM file) or, when NULL, the system's CAs; cert and key (PEM files, key NULL:
     * in cert) are the client certificate, or NULL. */
    const char *root_cas, *cert, *key;
};

struct pk_httpc_result {
    int status;         /* the HTTP status (any, 4xx and 5xx included) */
    char *body;         /* NUL-terminated (len excludes the NUL); owned */
    size_t len;         /* of body */
    char *content_type; /* the response's, or NULL; owned */
    char err[256];      /* why the transfer failed ("" when it did not) */
};

/* GETs url (http:// or https://; redirects are not followed, proxies named in the
 * environment are ignored) and blocks until the response or a failure. o may be NULL.
 * Returns 0 with res filled (release it with pk_httpc_result_free), or PK_ERR_IO with
 * res->err saying why (curl's message: "Failed to connect to localhost port 8002 after 0
 * ms: Couldn't connect to server", "Operation timed out after ...", "response body over N
 * bytes") and nothing to free. pk_httpc_global_init must have run. Thread-safe: it uses
 * nothing but its own easy handle. */
int pk_httpc_fetch(const char *url, const struct pk_httpc_fetch_opts *o,
                   struct pk_httpc_result *res);
/* Frees the body and content type; NULL is a no-op. */
void pk_httpc_result_free(struct pk_httpc_result *res);

#endif
