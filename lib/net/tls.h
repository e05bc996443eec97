/* tls: TLS for the ports (server side) and for dials (client side), on OpenSSL 3 and
 * libevent's bufferevent_openssl.
 *
 * Server side: a pk_tls_server is the TLS of one port ("proxy", "upstream", "admin",
 * "cluster"): its SSL_CTX built from the <port>.tls.cert / .key / .client-cas files, the
 * handshakes in flight on it and a count of the failed ones. pk_tls_server_reload builds
 * a new SSL_CTX from the same files and swaps it in only when that worked: new
 * connections use the new context, established ones keep the one they started with
 * (each SSL object holds its own reference).
 *
 * Defaults: TLS 1.2 minimum; TLS 1.2 restricted to ECDHE with AEAD ciphers, OpenSSL's
 * defaults for TLS 1.3; no renegotiation; session tickets on; a peer's close without
 * close_notify is a plain EOF (SSL_OP_IGNORE_UNEXPECTED_EOF, see LIBRARIES.md).
 *
 * Client side: pk_tls_client_ctx_new builds a context from the <prefix>.root-cas /
 * .cert / .key / .insecure-skip-verify settings and pk_tls_connect runs the handshake on
 * a connected socket.
 *
 * Every function must be called from the thread running the loop. Messages name the
 * configuration key and the file ("proxy.tls.cert: cannot read '/x.pem': No such file
 * or directory"). */
#ifndef PK_TLS_H
#define PK_TLS_H

#include <event2/util.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bufferevent;
struct event_base;
struct sockaddr;
struct ssl_ctx_st;
struct ssl_st;
struct pk_tls_server;
struct pk_tls_connect;

/* The files of one side (paths; NULL or "" is unset). */
struct pk_tls_files {
    char *cert;
    char *key;
    char *client_cas; /* server side: verify clients against these CAs (mTLS) */
    char *root_cas;   /* client side: verify the server against these CAs */
    char *groups;     /* server side: key exchange groups, OpenSSL's "a:b" form; NULL or
                         "": PK_TLS_DEFAULT_GROUPS */
};

/* X25519 and the NIST curves only: no finite-field DH (ffdhe8192 costs the server ~150
 * times the CPU of X25519 per handshake, at the client's choice). */
#define PK_TLS_DEFAULT_GROUPS "X25519:P-256:P-384"

/* Config-time check of a groups list (key names it in the message). */
int pk_tls_groups_check(const char *key, const char *groups, char *err, size_t errlen);

static inline bool pk_tls_set(const char *path)
{
    return path && *path;
}

/* Config-time checks of a server side: cert and key come together; client-cas needs
 * them. prefix is "proxy.tls". Returns 0 or PK_ERR_INVALID with a message naming the key.
 * Files are not opened here. */
int pk_tls_server_files_check(const char *prefix, const struct pk_tls_files *f, char *err,
                              size_t errlen);

/* ---- server side ------------------------------------------------------------------- */

/* NULL-terminated ALPN lists, in the server's order of preference. */
extern const char *const pk_alpn_h2_http11[]; /* "h2", "http/1.1" */
extern const char *const pk_alpn_http11[];    /* "http/1.1" */

/* Builds the TLS of port name (e.g. "proxy"; keys are name.tls.*) from f (copied), with
 * alpn (NULL: no ALPN; copied). f->cert and f->key must be set. Returns NULL with a
 * message naming the key and the file when a file is unreadable or invalid. */
struct pk_tls_server *pk_tls_server_new(struct event_base *base, const char *name,
                                        const struct pk_tls_files *f, const char *const *alpn,
                                        char *err, size_t errlen);
/* Frees the context and every handshake still in flight (their sockets are closed, their
 * callbacks never run). NULL is a no-op. */
void pk_tls_server_del(struct pk_tls_server *ts);
/* Reads the files again into a new context and uses it for new connections. On failure
 * the old context stays and err says why. Returns 0 or a negative PK_ERR_*. */
int pk_tls_server_reload(struct pk_tls_server *ts, char *err, size_t errlen);
const char *pk_tls_server_name(const struct pk_tls_server *ts);
/* Handshakes that succeeded. */
uint64_t pk_tls_server_handshakes(const struct pk_tls_server *ts);
/* Handshakes that failed (bad or missing certificate, protocol error, timeout...). */
uint64_t pk_tls_server_failures(const struct pk_tls_server *ts);
/* True when clients must present a certificate (client-cas is set). */
bool pk_tls_server_mtls(const struct pk_tls_server *ts);

/* The handshake succeeded: bev is an open TLS bufferevent owning the socket (callbacks
 * unset, reading and writing disabled, no timeouts); sa is the client's address; alpn is
 * the protocol agreed ("h2", "http/1.1") or NULL without ALPN; start_ms is pk_now_ms() at
 * pk_tls_accept (deadlines that run from accept go on from it). The callee owns bev.
 * It failed: bev and alpn are NULL, the socket is closed already (the owner releases what
 * it counted for the connection). */
typedef void (*pk_tls_accepted_cb)(struct bufferevent *bev, const struct sockaddr *sa,
                                   const char *alpn, uint64_t start_ms, void *arg);

/* Runs the server handshake on an accepted socket (ownership of fd is taken). cb runs
 * once, from the loop (or from this call when no TLS session can be made): with the
 * connection on success; with NULL after a failure or a handshake not done within
 * timeout_ms of this call (0: none; a deadline, however the bytes trickle in), which is
 * logged at info with its reason and counted. pk_tls_server_del drops handshakes in
 * flight without calling cb. */
void pk_tls_accept(struct pk_tls_server *ts, evutil_socket_t fd, const struct sockaddr *sa,
                   uint64_t timeout_ms, pk_tls_accepted_cb cb, void *arg);

/* ---- client side ------------------------------------------------------------------- */

/* A client context: verification against f->root_cas (NULL: the system roots, i.e.
 * OpenSSL's default paths, so SSL_CERT_FILE and SSL_CERT_DIR apply) unless insecure,
 * the client certificate f->cert / f->key when set, and alpn (may be NULL). prefix
 * names the keys in messages ("connect.tls"). Returns NULL with a message naming the key
 * and the file. Free with SSL_CTX_free. */
struct ssl_ctx_st *pk_tls_client_ctx_new(const char *prefix, const struct pk_tls_files *f,
                                         bool insecure, const char *const *alpn, char *err,
                                         size_t errlen);
/* Config-time check of a client side: cert and key come together. */
int pk_tls_client_files_check(const char *prefix, const struct pk_tls_files *f, char *err,
                              size_t errlen);

/* Prepares ssl for a server named host: SNI (for a name), and, with check_name, the
 * certificate must match host (a DNS name or an IP literal). */
void pk_tls_client_ssl_setup(struct ssl_st *ssl, const char *host, bool check_name);

/* err 0: bev is an open TLS bufferevent (callbacks unset, disabled, no timeouts), owned by
 * the callee. Otherwise bev is NULL and why says what failed ("certificate verify failed:
 * unable to get local issuer certificate"). The handle is freed after the callback. */
typedef void (*pk_tls_connect_cb)(int err, struct bufferevent *bev, const char *why, void *arg);

/* Runs the client handshake on plain, a connected socket bufferevent (from pk_dial; taken
 * over and freed), with a new SSL of ctx prepared by pk_tls_client_ssl_setup(host,
 * check_name). cb runs from the loop. Never NULL. */
struct pk_tls_connect *pk_tls_connect(struct event_base *base, struct bufferevent *plain,
                                      struct ssl_ctx_st *ctx, const char *host, bool check_name,
                                      uint64_t timeout_ms, pk_tls_connect_cb cb, void *arg);
/* The callback will not run; the connection is closed. NULL is a no-op. Not from inside
 * the callback. */
void pk_tls_connect_cancel(struct pk_tls_connect *tc);

/* ---- any TLS bufferevent ----------------------------------------------------------- */

/* True when bev is a TLS bufferevent (bufferevent_openssl). */
bool pk_bev_is_tls(struct bufferevent *bev);
/* Sends a close_notify on a TLS bufferevent whose output is flushed; no-op otherwise. */
void pk_tls_close_notify(struct bufferevent *bev);
/* Why a TLS bufferevent failed, from its event flags what: the certificate verification
 * result, else OpenSSL's reason, else "timeout" / "connection closed". */
void pk_tls_error(struct bufferevent *bev, short what, char *buf, size_t len);

#endif
