#include "net/tls.h"

#include "base/base.h"
#include "base/list.h"
#include "base/log.h"
#include "net/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* TLS 1.2 only: ECDHE key exchange with AEAD ciphers. TLS 1.3 keeps OpenSSL's defaults. */
#define TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"

const char *const pk_alpn_h2_http11[] = {"h2", "http/1.1", NULL};
const char *const pk_alpn_http11[] = {"http/1.1", NULL};

/* ---- files and contexts ------------------------------------------------------------- */

int pk_tls_server_files_check(const char *prefix, const struct pk_tls_files *f, char *err,
                              size_t errlen)
{
    if (pk_tls_set(f->cert) && !pk_tls_set(f->key)) {
        snprintf(err, errlen, "%s.key: required with %s.cert", prefix, prefix);
        return PK_ERR_INVALID;
    }
    if (pk_tls_set(f->key) && !pk_tls_set(f->cert)) {
        snprintf(err, errlen, "%s.cert: required with %s.key", prefix, prefix);
        return PK_ERR_INVALID;
    }
    if (pk_tls_set(f->client_cas) && !pk_tls_set(f->cert)) {
        snprintf(err, errlen, "%s.client-cas: needs %s.cert and %s.key (TLS on the port)", prefix,
                 prefix, prefix);
        return PK_ERR_INVALID;
    }
    return 0;
}

int pk_tls_groups_check(const char *key, const char *groups, char *err, size_t errlen)
{
    if (!pk_tls_set(groups)) {
        snprintf(err, errlen, "%s: must not be empty (default: %s)", key, PK_TLS_DEFAULT_GROUPS);
        return PK_ERR_INVALID;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, errlen, "%s: cannot create a TLS context", key);
        return PK_ERR_INVALID;
    }
    int ok = SSL_CTX_set1_groups_list(ctx, groups);
    ERR_clear_error();
    SSL_CTX_free(ctx);
    if (ok != 1) {
        snprintf(err, errlen,
                 "%s: '%s' is not a list of groups OpenSSL knows (want names such as %s, "
                 "separated by ':')",
                 key, groups, PK_TLS_DEFAULT_GROUPS);
        return PK_ERR_INVALID;
    }
    return 0;
}

int pk_tls_client_files_check(const char *prefix, const struct pk_tls_files *f, char *err,
                              size_t errlen)
{
    if (pk_tls_set(f->cert) != pk_tls_set(f->key)) {
        snprintf(err, errlen, "%s.%s: required with %s.%s", prefix,
                 pk_tls_set(f->cert) ? "key" : "cert", prefix,
                 pk_tls_set(f->cert) ? "cert" : "key");
        return PK_ERR_INVALID;
    }
    return 0;
}

/* OpenSSL's reason for the last failure: the oldest error queued is the cause ("no start
 * line"), later ones wrap it ("PEM lib"). The queue is emptied. */
static void ssl_reason(char *buf, size_t len)
{
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        if (!last)
            last = e;
    const char *r = last ? ERR_reason_error_string(last) : NULL;
    if (r)
        snprintf(buf, len, "%s", r);
    else if (last)
        snprintf(buf, len, "error %lx", last);
    else
        snprintf(buf, len, "unknown error");
}

/* A readable file, or a message naming key and path: OpenSSL's own message for a missing
 * file is obscure. */
static int check_file(const char *key, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot read '%s': %s", key, path, strerror(errno));
        return PK_ERR_IO;
    }
    close(fd);
    return 0;
}

/* Loads the certificate chain and key named by prefix.cert / prefix.key. */
static int load_identity(SSL_CTX *ctx, const char *prefix, const struct pk_tls_files *f, char *err,
                         size_t errlen)
{
    char key[96], why[256];
    snprintf(key, sizeof(key), "%s.cert", prefix);
    if (check_file(key, f->cert, err, errlen) != 0)
        return PK_ERR_IO;
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, f->cert) != 1) {
        ssl_reason(why, sizeof(why));
        snprintf(err, errlen, "%s: cannot load a certificate chain from '%s': %s", key, f->cert,
                 why);
        return PK_ERR_INVALID;
    }
    snprintf(key, sizeof(key), "%s.key", prefix);
    if (check_file(key, f->key, err, errlen) != 0)
        return PK_ERR_IO;
    if (SSL_CTX_use_PrivateKey_file(ctx, f->key, SSL_FILETYPE_PEM) != 1) {
        ssl_reason(why, sizeof(why));
        snprintf(err, errlen, "%s: cannot load a private key from '%s': %s", key, f->key, why);
        return PK_ERR_INVALID;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "%s: the key in '%s' does not match the certificate in '%s'", key,
                 f->key, f->cert);
        return PK_ERR_INVALID;
    }
    return 0;
}

/* Loads CA certificates (PEM, one or more) into the context's trust store. */
static int load_cas(SSL_CTX *ctx, const char *key, const char *path, char *err, size_t errlen)
{
    char why[256];
    if (check_file(key, path, err, errlen) != 0)
        return PK_ERR_IO;
    ERR_clear_error();
    if (SSL_CTX_load_verify_locations(ctx, path, NULL) != 1) {
        ssl_reason(why, sizeof(why));
        snprintf(err, errlen, "%s: cannot load CA certificates from '%s': %s", key, path, why);
        return PK_ERR_INVALID;
    }
    return 0;
}

static void common_options(SSL_CTX *ctx)
{
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS);
    /* LIBRARIES.md: libevent 2.1 + OpenSSL 3 turn a close without close_notify into an
     * error; HTTP/2 framing and HTTP/1.1 lengths detect truncation anyway. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 SSL_OP_NO_COMPRESSION);
    /* libevent retries a blocked write from a buffer that may have moved. No partial
     * writes: libevent 2.1 would go on with the next chunk after a short one.
     * RELEASE_BUFFERS: OpenSSL frees a connection's record read and write buffers (about
     * 34 KiB together) whenever they are empty instead of keeping them for the connection's
     * life; an idle tunnel or keep-alive connection then holds none (docs/benchmarks.md
     * "Memory per idle tunnel"). */
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
}

/* ALPN wire format: length-prefixed names. Returns the length written. */
static size_t alpn_wire(const char *const *alpn, unsigned char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; alpn && alpn[i]; i++) {
        size_t l = strlen(alpn[i]);
        if (l == 0 || l > 255 || n + 1 + l > cap)
            break;
        out[n++] = (unsigned char)l;
        memcpy(out + n, alpn[i], l);
        n += l;
    }
    return n;
}

/* ---- server side ------------------------------------------------------------------- */

struct pk_tls_server {
    struct event_base *base;
    char *name;   /* "proxy" */
    char *prefix; /* "proxy.tls" */
    struct pk_tls_files files;
    unsigned char alpn[64]; /* wire format */
    size_t alpn_len;
    SSL_CTX *ctx;
    struct pk_list pending;
    uint64_t failures;
    uint64_t handshakes;
};

struct tls_pending {
    struct pk_list link;
    struct pk_tls_server *ts;
    struct bufferevent *bev;
    struct sockaddr_storage ss;
    char peer[80];
    struct event *deadline; /* the handshake must be done by then */
    uint64_t start_ms;
    pk_tls_accepted_cb cb;
    void *arg;
};

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    struct pk_tls_server *ts = arg;
    PK_UNUSED(ssl);
    /* The server's order wins: the first of ours that the client offers. */
    for (size_t i = 0; i < ts->alpn_len; i += 1 + ts->alpn[i]) {
        for (unsigned j = 0; j < inlen; j += 1u + in[j]) {
            if (in[j] == ts->alpn[i] && j + 1u + in[j] <= inlen &&
                memcmp(in + j + 1, ts->alpn + i + 1, in[j]) == 0) {
                *out = in + j + 1;
                *outlen = in[j];
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    /* No common protocol: go on without ALPN (the port sniffs or speaks HTTP/1.1). */
    return SSL_TLSEXT_ERR_NOACK;
}

static void count_failure(struct pk_tls_server *ts, const char *peer, const char *why)
{
    ts->failures++;
    PK_INFO("tls", "handshake failed port=%s peer=%s failures=%llu: %s", ts->name, peer,
            (unsigned long long)ts->failures, why);
}

static SSL_CTX *server_ctx_new(struct pk_tls_server *ts, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, errlen, "%s: cannot create a TLS context", ts->prefix);
        return NULL;
    }
    common_options(ctx);
    /* Key exchange groups (TLS 1.3 and ECDHE in 1.2): without a list OpenSSL also accepts
     * ffdhe2048-8192, and a client choosing ffdhe8192 costs the server ~150 times the CPU of
     * X25519 per handshake (docs/manage/security.md). */
    const char *groups = pk_tls_set(ts->files.groups) ? ts->files.groups : PK_TLS_DEFAULT_GROUPS;
    if (SSL_CTX_set1_groups_list(ctx, groups) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "tls.groups: '%s' is not a list of groups OpenSSL knows", groups);
        goto fail;
    }
    if (load_identity(ctx, ts->prefix, &ts->files, err, errlen) != 0)
        goto fail;
    if (pk_tls_set(ts->files.client_cas)) {
        char key[96];
        snprintf(key, sizeof(key), "%s.client-cas", ts->prefix);
        if (load_cas(ctx, key, ts->files.client_cas, err, errlen) != 0)
            goto fail;
        /* The CA names sent in the CertificateRequest: clients pick a matching cert. */
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ts->files.client_cas);
        if (names)
            SSL_CTX_set_client_CA_list(ctx, names);
        ERR_clear_error();
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    if (ts->alpn_len)
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, ts);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

static char *dup_or_null(const char *s)
{
    return pk_tls_set(s) ? pk_xstrdup(s) : NULL;
}

struct pk_tls_server *pk_tls_server_new(struct event_base *base, const char *name,
                                        const struct pk_tls_files *f, const char *const *alpn,
                                        char *err, size_t errlen)
{
    struct pk_tls_server *ts = pk_xcalloc(1, sizeof(*ts));
    ts->base = base;
    ts->name = pk_xstrdup(name);
    ts->prefix = pk_xasprintf("%s.tls", name);
    ts->files.cert = dup_or_null(f->cert);
    ts->files.key = dup_or_null(f->key);
    ts->files.client_cas = dup_or_null(f->client_cas);
    ts->files.groups = dup_or_null(f->groups);
    ts->alpn_len = alpn_wire(alpn, ts->alpn, sizeof(ts->alpn));
    pk_list_init(&ts->pending);
    ts->ctx = server_ctx_new(ts, err, errlen);
    if (!ts->ctx) {
        pk_tls_server_del(ts);
        return NULL;
    }
    return ts;
}

static void pending_free(struct tls_pending *p)
{
    pk_list_remove(&p->link);
    if (p->deadline)
        event_free(p->deadline);
    if (p->bev)
        bufferevent_free(p->bev);
    free(p);
}

void pk_tls_server_del(struct pk_tls_server *ts)
{
    if (!ts)
        return;
    while (!pk_list_empty(&ts->pending))
        pending_free(PK_CONTAINER_OF(ts->pending.next, struct tls_pending, link));
    SSL_CTX_free(ts->ctx);
    free(ts->files.cert);
    free(ts->files.key);
    free(ts->files.client_cas);
    free(ts->files.groups);
    free(ts->name);
    free(ts->prefix);
    free(ts);
}

int pk_tls_server_reload(struct pk_tls_server *ts, char *err, size_t errlen)
{
    SSL_CTX *ctx = server_ctx_new(ts, err, errlen);
    if (!ctx)
        return PK_ERR_INVALID;
    /* Established connections hold their own reference to the old context. */
    SSL_CTX_free(ts->ctx);
    ts->ctx = ctx;
    return 0;
}

const char *pk_tls_server_name(const struct pk_tls_server *ts)
{
    return ts->name;
}

uint64_t pk_tls_server_failures(const struct pk_tls_server *ts)
{
    return ts ? ts->failures : 0;
}

uint64_t pk_tls_server_handshakes(const struct pk_tls_server *ts)
{
    return ts ? ts->handshakes : 0;
}

bool pk_tls_server_mtls(const struct pk_tls_server *ts)
{
    return ts && pk_tls_set(ts->files.client_cas);
}

/* A failed handshake: the socket is closed, then the owner learns (bev NULL). */
static void pending_fail(struct tls_pending *p)
{
    struct sockaddr_storage ss = p->ss;
    pk_tls_accepted_cb cb = p->cb;
    void *cbarg = p->arg;
    uint64_t start = p->start_ms;
    pending_free(p);
    cb(NULL, (struct sockaddr *)&ss, NULL, start, cbarg);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tls_pending *p = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    count_failure(p->ts, p->peer, "handshake not done in time");
    pending_fail(p);
}

static void accept_event(struct bufferevent *bev, short what, void *arg)
{
    struct tls_pending *p = arg;
    if (what & BEV_EVENT_CONNECTED) {
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        const unsigned char *a = NULL;
        unsigned alen = 0;
        char alpn[32] = "";
        SSL_get0_alpn_selected(ssl, &a, &alen);
        if (a && alen < sizeof(alpn)) {
            memcpy(alpn, a, alen);
            alpn[alen] = '\0';
        }
        /* From now on failures belong to the connection's owner. */
        p->ts->handshakes++;
        PK_DEBUG("tls", "handshake done port=%s peer=%s version=%s alpn=%s", p->ts->name, p->peer,
                 SSL_get_version(ssl), alpn[0] ? alpn : "-");
        bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
        bufferevent_set_timeouts(bev, NULL, NULL);
        bufferevent_disable(bev, EV_READ | EV_WRITE);
        struct sockaddr_storage ss = p->ss;
        pk_tls_accepted_cb cb = p->cb;
        void *cbarg = p->arg;
        uint64_t start = p->start_ms;
        p->bev = NULL;
        pending_free(p);
        cb(bev, (struct sockaddr *)&ss, alpn[0] ? alpn : NULL, start, cbarg);
        return;
    }
    char why[320];
    pk_tls_error(bev, what, why, sizeof(why));
    count_failure(p->ts, p->peer, why);
    pending_fail(p);
}

void pk_tls_accept(struct pk_tls_server *ts, evutil_socket_t fd, const struct sockaddr *sa,
                   uint64_t timeout_ms, pk_tls_accepted_cb cb, void *arg)
{
    pk_tune_socket(fd);
    SSL *ssl = SSL_new(ts->ctx);
    if (!ssl) {
        evutil_closesocket(fd);
        count_failure(ts, "?", "cannot create a TLS session");
        cb(NULL, sa, NULL, pk_now_ms(), arg);
        return;
    }
    struct tls_pending *p = pk_xcalloc(1, sizeof(*p));
    p->ts = ts;
    p->start_ms = pk_now_ms();
    p->cb = cb;
    p->arg = arg;
    size_t sl =
        sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    memcpy(&p->ss, sa, PK_MIN(sl, sizeof(p->ss)));
    char ip[64];
    uint16_t port;
    pk_sockaddr_ip(sa, ip, sizeof(ip), &port);
    snprintf(p->peer, sizeof(p->peer), strchr(ip, ':') ? "[%s]:%u" : "%s:%u", ip, port);
    p->bev = bufferevent_openssl_socket_new(ts->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                            BEV_OPT_CLOSE_ON_FREE);
    if (!p->bev) {
        SSL_free(ssl);
        evutil_closesocket(fd);
        count_failure(ts, p->peer, "cannot create a TLS bufferevent");
        free(p);
        cb(NULL, sa, NULL, pk_now_ms(), arg);
        return;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(p->bev, 1);
    pk_list_insert(&ts->pending, &p->link);
    if (timeout_ms) {
        /* A deadline, not an idle timeout: a ClientHello trickled a byte at a time must
         * not hold the connection past it. */
        struct timeval tv = pk_ms_timeval(timeout_ms);
        p->deadline = pk_xevent_new(ts->base, -1, 0, deadline_cb, p);
        event_add(p->deadline, &tv);
    }
    bufferevent_setcb(p->bev, NULL, NULL, accept_event, p);
    bufferevent_enable(p->bev, EV_READ | EV_WRITE);
}

/* ---- client side ------------------------------------------------------------------- */

struct ssl_ctx_st *pk_tls_client_ctx_new(const char *prefix, const struct pk_tls_files *f,
                                         bool insecure, const char *const *alpn, char *err,
                                         size_t errlen)
{
    char key[96];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "%s: cannot create a TLS context", prefix);
        return NULL;
    }
    common_options(ctx);
    if (insecure) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    } else {
        if (pk_tls_set(f->root_cas)) {
            snprintf(key, sizeof(key), "%s.root-cas", prefix);
            if (load_cas(ctx, key, f->root_cas, err, errlen) != 0)
                goto fail;
        } else {
            SSL_CTX_set_default_verify_paths(ctx);
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    if (pk_tls_set(f->cert) && load_identity(ctx, prefix, f, err, errlen) != 0)
        goto fail;
    unsigned char wire[64];
    size_t n = alpn_wire(alpn, wire, sizeof(wire));
    if (n)
        SSL_CTX_set_alpn_protos(ctx, wire, (unsigned)n);
    ERR_clear_error();
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

void pk_tls_client_ssl_setup(struct ssl_st *ssl, const char *host, bool check_name)
{
    struct in6_addr a6;
    bool ip = inet_pton(AF_INET, host, &a6) == 1 || inet_pton(AF_INET6, host, &a6) == 1;
    if (!ip)
        SSL_set_tlsext_host_name(ssl, host); /* SNI is for names only (RFC 6066) */
    if (!check_name)
        return;
    if (ip)
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
    else
        SSL_set1_host(ssl, host);
}

struct pk_tls_connect {
    struct bufferevent *bev;
    struct event *ev; /* deferred report of a failure to start */
    pk_tls_connect_cb cb;
    void *arg;
    char why[320];
};

static void tc_free(struct pk_tls_connect *tc)
{
    if (tc->bev)
        bufferevent_free(tc->bev);
    event_free(tc->ev);
    free(tc);
}

static void tc_finish(struct pk_tls_connect *tc, int err)
{
    struct bufferevent *bev = err ? NULL : tc->bev;
    if (bev) {
        tc->bev = NULL;
        bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
        bufferevent_set_timeouts(bev, NULL, NULL);
        bufferevent_disable(bev, EV_READ | EV_WRITE);
    }
    tc->cb(err, bev, tc->why, tc->arg);
    tc_free(tc);
}

static void connect_event(struct bufferevent *bev, short what, void *arg)
{
    struct pk_tls_connect *tc = arg;
    if (what & BEV_EVENT_CONNECTED) {
        tc->why[0] = '\0';
        tc_finish(tc, 0);
        return;
    }
    char why[300];
    pk_tls_error(bev, what, why, sizeof(why));
    snprintf(tc->why, sizeof(tc->why), "TLS handshake failed: %s", why);
    tc_finish(tc, PK_ERR_IO);
}

static void start_failed(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    tc_finish(arg, PK_ERR_IO);
}

struct pk_tls_connect *pk_tls_connect(struct event_base *base, struct bufferevent *plain,
                                      struct ssl_ctx_st *ctx, const char *host, bool check_name,
                                      uint64_t timeout_ms, pk_tls_connect_cb cb, void *arg)
{
    struct pk_tls_connect *tc = pk_xcalloc(1, sizeof(*tc));
    tc->cb = cb;
    tc->arg = arg;
    tc->ev = pk_xevent_new(base, -1, 0, start_failed, tc);
    /* The socket moves to a TLS bufferevent of its own (not a filter over plain). */
    evutil_socket_t fd = fcntl(bufferevent_getfd(plain), F_DUPFD_CLOEXEC, 0);
    bufferevent_free(plain);
    SSL *ssl = fd >= 0 ? SSL_new(ctx) : NULL;
    if (ssl) {
        pk_tls_client_ssl_setup(ssl, host, check_name);
        tc->bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                 BEV_OPT_CLOSE_ON_FREE);
        if (!tc->bev)
            SSL_free(ssl);
    }
    if (!tc->bev) {
        if (fd >= 0)
            evutil_closesocket(fd);
        snprintf(tc->why, sizeof(tc->why), "cannot start TLS");
        event_active(tc->ev, EV_TIMEOUT, 0);
        return tc;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(tc->bev, 1);
    if (timeout_ms) {
        struct timeval tv = pk_ms_timeval(timeout_ms);
        bufferevent_set_timeouts(tc->bev, &tv, &tv);
    }
    bufferevent_setcb(tc->bev, NULL, NULL, connect_event, tc);
    bufferevent_enable(tc->bev, EV_READ | EV_WRITE);
    return tc;
}

void pk_tls_connect_cancel(struct pk_tls_connect *tc)
{
    if (tc)
        tc_free(tc);
}

/* ---- any TLS bufferevent ----------------------------------------------------------- */

bool pk_bev_is_tls(struct bufferevent *bev)
{
    return bev && bufferevent_openssl_get_ssl(bev) != NULL;
}

void pk_tls_close_notify(struct bufferevent *bev)
{
    SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
    if (!ssl || !SSL_is_init_finished(ssl))
        return;
    /* Writes the alert straight to the socket (the output buffer is empty); a full
     * socket buffer only loses the courtesy, not data. */
    SSL_shutdown(ssl);
    ERR_clear_error();
}

void pk_tls_error(struct bufferevent *bev, short what, char *buf, size_t len)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    /* The newest error with a reason ("peer did not return a certificate"). */
    const char *r = NULL;
    unsigned long x;
    while ((x = bufferevent_get_openssl_error(bev)) != 0)
        if (!r)
            r = ERR_reason_error_string(x);
    if (vr != X509_V_OK)
        snprintf(buf, len, "certificate verify failed: %s", X509_verify_cert_error_string(vr));
    else if (r)
        snprintf(buf, len, "%s", r);
    else if (what & BEV_EVENT_TIMEOUT)
        snprintf(buf, len, "timeout");
    else if ((what & BEV_EVENT_ERROR) && EVUTIL_SOCKET_ERROR())
        snprintf(buf, len, "%s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    else
        snprintf(buf, len, "connection closed");
}
