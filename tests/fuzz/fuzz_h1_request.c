/* fuzz_h1_request: the downstream HTTP/1.1 side of piko-server's proxy port.
 *
 * The input is a byte stream from a client, delivered in pieces (tests/fuzz/fuzz.h) to
 * pk_h1parser (HTTP_REQUEST, 64 KiB head limit) the way lib/server/h1down.c h1_process()
 * does: whatever is buffered, again after each complete message (pk_h1parser_next) while the
 * connection stays keep-alive. For each head, the target replays what the proxy does before
 * it sends the request on a tunnel (h1_on_head, route, prepare_request: Host to authority,
 * hop-by-hop fields stripped, forwarding fields added, upgrades as extended CONNECT) and
 * checks invariants on the parser's output and on that HTTP/2 request, then hands it with
 * its body and trailers to an in-memory nghttp2 peer (h2check.h), which must accept it.
 *
 * Routing, the request's preparation and the raw (extended CONNECT) form are the server's
 * own functions (pk_proxy_route, pk_proxy_prepare_request, pk_proxy_make_raw in
 * lib/server/route.c); only the choice of what becomes a plain exchange, an upgrade or a
 * TCP tunnel (h1down.c h1_on_head) is replayed here: keep that part in step.
 *
 * Known findings, reported and not yet fixed in lib/ (docs/fuzzing.md); the target lets
 * them pass unless PIKO_FUZZ_STRICT=1:
 *  1. A request whose Transfer-Encoding does not end in chunked reaches on_head (and so the
 *     tunnel, without a body) before http-parser rejects it (HPE_INVALID_TRANSFER_ENCODING).
 *  2. CONNECT over HTTP/1.1 is sent as a plain request with :scheme and :path, which the
 *     sidecar refuses (PROTOCOL_ERROR).
 *  3. (Fixed: pk_proxy_route answers 400 "invalid host".) Host was not validated: an
 *     empty one, or one with characters outside RFC 3986 authority, became an :authority
 *     the sidecar refused.
 *  4. Trailers are forwarded unfiltered: a connection-specific one (connection,
 *     transfer-encoding, upgrade, ...) gets the stream refused by the sidecar.
 *  5. http-parser 2.9 does not check the first byte of a field value: NUL and other
 *     control characters there reach pk_hdrs (whose C-string view then disagrees with vlen)
 *     and the tunnel, whose peer drops the field.
 *  6. (Fixed: pk_proxy_route answers 400 "invalid request target".) The request target
 *     was only checked by http-parser (non-strict build): HTAB or form feed inside it, "*"
 *     with a method other than OPTIONS, or "*" followed by more, made a :path the sidecar
 *     refused.
 *  7. http-parser 2.9 (non-strict build) ends a head at CR followed by any byte, not only
 *     CR LF; the byte after the CR is swallowed (with pipelining, the first byte of the next
 *     request). */
#include "fuzz.h"
#include "h2check.h"
#include "server/server_int.h"

#include "base/base.h"
#include "http1/http1.h"
#include "stream/head.h"

#include <arpa/inet.h>

#define MAX_HEAD    (64 * 1024)
#define TCP_PREFIX  "/_piko/v1/tcp/"
#define CLIENT_IP   "192.0.2.7"
#define CLIENT_PORT 40000
#define CLIENT_ADDR "192.0.2.7:40000"

/* PIKO_FUZZ_STRICT=1 also fails on the known findings; PIKO_FUZZ_VERBOSE=1 prints every
 * tunnel request (for triage). */
static bool strict, verbose;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    strict = getenv("PIKO_FUZZ_STRICT") && strcmp(getenv("PIKO_FUZZ_STRICT"), "1") == 0;
    verbose = getenv("PIKO_FUZZ_VERBOSE") && strcmp(getenv("PIKO_FUZZ_VERBOSE"), "1") == 0;
    return 0;
}

/* One exchange: the request as the proxy would send it on a tunnel. */
struct msg {
    bool forwarded; /* routed and converted; false when the proxy answers it itself */
    bool raw;       /* an upgrade or a TCP tunnel: extended CONNECT */
    bool has_body;
    char endpoint[130];
    char token[64];
    char *connection; /* the downstream Connection values, joined */
    struct pk_head req;
    char *body;
    size_t body_len;
    struct pk_hdrs trailers;
};

static void msg_reset(struct msg *m)
{
    pk_head_free(&m->req);
    pk_hdrs_free(&m->trailers);
    free(m->body);
    free(m->connection);
    memset(m, 0, sizeof(*m));
}

/* ---- invariants --------------------------------------------------------------------- */

static bool is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* True when the value holds a control character other than HTAB (NUL, CR and LF included):
 * RFC 9110 5.5 allows none. */
static bool value_has_ctl(const struct pk_hdr *f)
{
    for (size_t i = 0; i < f->vlen; i++) {
        unsigned char c = (unsigned char)f->value[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return true;
    }
    return false;
}

/* Known finding 5 (see the top of this file) in a field block: skip the message. */
static bool known_ctl(const struct pk_hdrs *h)
{
    if (strict)
        return false;
    for (size_t i = 0; i < h->n; i++)
        if (value_has_ctl(&h->v[i]))
            return true;
    return false;
}

/* A field as the parser must deliver it: a lower-case token name; a value without control
 * characters and without whitespace at either end (RFC 9110 5.5). */
static void check_field(const struct pk_hdr *f, const char *where)
{
    FUZZ_CHECK(f->nlen > 0 && strlen(f->name) == f->nlen, "%s: empty name or NUL in name", where);
    for (size_t i = 0; i < f->nlen; i++) {
        unsigned char c = (unsigned char)f->name[i];
        FUZZ_CHECK(is_tchar(c) && !(c >= 'A' && c <= 'Z'), "%s: name '%s' has byte 0x%02x", where,
                   f->name, c);
    }
    FUZZ_CHECK(!value_has_ctl(f), "%s: control character in the value of '%s'", where, f->name);
    if (f->vlen) {
        char first = f->value[0], last = f->value[f->vlen - 1];
        FUZZ_CHECK(first != ' ' && first != '\t' && last != ' ' && last != '\t',
                   "%s: whitespace around the value of '%s': '%s'", where, f->name, f->value);
    }
}

static void check_hdrs(const struct pk_hdrs *h, const char *where)
{
    size_t bytes = 0;
    for (size_t i = 0; i < h->n; i++) {
        check_field(&h->v[i], where);
        bytes += h->v[i].nlen + h->v[i].vlen;
    }
    FUZZ_CHECK(h->bytes == bytes, "%s: bytes %zu, fields hold %zu", where, h->bytes, bytes);
    FUZZ_CHECK(h->n <= h->cap, "%s: n %zu > cap %zu", where, h->n, h->cap);
}

static bool all_digits(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

/* The head as pk_h1parser delivers it to on_head. Returns false for a head that trips a
 * known finding (not checked further unless strict). */
static bool check_parsed_head(const struct pk_h1parser *p)
{
    const struct pk_head *h = &p->head;
    FUZZ_CHECK(p->error == PK_H1_OK && p->head_done, "on_head with error %d", (int)p->error);
    FUZZ_CHECK(p->head_bytes <= MAX_HEAD, "head of %zu bytes passed the limit", p->head_bytes);
    FUZZ_CHECK(h->method && *h->method, "no method");
    if (known_ctl(&h->hdrs))
        return false;
    check_hdrs(&h->hdrs, "head");
    if (strcmp(h->method, "CONNECT") == 0) {
        FUZZ_CHECK(h->authority && !h->path, "CONNECT without authority or with a path");
    } else {
        FUZZ_CHECK(h->path && (h->path[0] == '/' || h->path[0] == '*'), "path '%s'",
                   h->path ? h->path : "(null)");
    }
    /* Message framing (RFC 9112 6.3): a request smuggling guard. */
    bool te = pk_hdrs_get(&h->hdrs, "transfer-encoding") != NULL;
    if (te && !p->chunked && !strict) {
        /* Known finding 1: see the top of this file. */
        return false;
    }
    FUZZ_CHECK(!te || p->chunked, "transfer-encoding '%s' but not chunked",
               pk_hdrs_get(&h->hdrs, "transfer-encoding"));
    FUZZ_CHECK(!(p->chunked && p->has_length), "chunked and content-length");
    size_t ncl = 0;
    for (size_t i = 0; i < h->hdrs.n; i++) {
        const struct pk_hdr *f = &h->hdrs.v[i];
        if (strcmp(f->name, "content-length") != 0)
            continue;
        ncl++;
        FUZZ_CHECK(!p->chunked, "content-length with chunked framing");
        FUZZ_CHECK(all_digits(f->value) && strtoull(f->value, NULL, 10) == p->content_length,
                   "content-length '%s' but the parser framed %llu bytes", f->value,
                   (unsigned long long)p->content_length);
    }
    FUZZ_CHECK(p->chunked || p->has_length == (ncl > 0), "has_length %d with %zu content-length",
               p->has_length, ncl);
    return true;
}

static bool is_hop_by_hop(const char *name)
{
    static const char *const names[] = {"connection",        "keep-alive", "proxy-connection",
                                        "transfer-encoding", "upgrade",    "host"};
    for (size_t i = 0; i < PK_ARRAY_LEN(names); i++)
        if (strcmp(name, names[i]) == 0)
            return true;
    return false;
}

/* True when the comma list (any case, optional whitespace) names name. */
static bool list_names(const char *list, const char *name)
{
    size_t nl = strlen(name);
    for (const char *s = list; s && *s;) {
        s += strspn(s, ", \t");
        size_t n = strcspn(s, ", \t");
        if (n == nl && pk_memcaseeq(s, n, name))
            return true;
        s += n;
    }
    return false;
}

/* Fields the proxy adds after stripping (a Connection token naming one removes only the
 * client's copy). */
static bool set_by_proxy(const char *name)
{
    static const char *const names[] = {"te", "x-forwarded-for", "x-forwarded-proto",
                                        "x-forwarded-host", "piko-client-addr"};
    for (size_t i = 0; i < PK_ARRAY_LEN(names); i++)
        if (strcmp(name, names[i]) == 0)
            return true;
    return false;
}

/* The request as the proxy sends it on a tunnel (PROTOCOL.md 1.4). */
static void check_converted(const struct msg *m)
{
    const struct pk_head *r = &m->req;
    FUZZ_CHECK(r->method && r->scheme && r->authority && r->path, "a pseudo-field is missing");
    check_hdrs(&r->hdrs, "tunnel request");
    size_t client_addr = 0, xff = 0;
    for (size_t i = 0; i < r->hdrs.n; i++) {
        const struct pk_hdr *f = &r->hdrs.v[i];
        FUZZ_CHECK(!is_hop_by_hop(f->name), "hop-by-hop field '%s' forwarded", f->name);
        FUZZ_CHECK(strcmp(f->name, "te") != 0 || strcmp(f->value, "trailers") == 0,
                   "te '%s' forwarded", f->value);
        FUZZ_CHECK(set_by_proxy(f->name) || !m->connection || !list_names(m->connection, f->name),
                   "field '%s' named by Connection '%s' forwarded", f->name, m->connection);
        FUZZ_CHECK(strcmp(f->name, "expect") != 0 && strcmp(f->name, "x-piko-authorization") != 0,
                   "'%s' forwarded", f->name);
        if (strncmp(f->name, "piko-", 5) == 0) {
            FUZZ_CHECK(strcmp(f->name, "piko-client-addr") == 0, "'%s' forwarded", f->name);
            FUZZ_CHECK(strcmp(f->value, CLIENT_ADDR) == 0, "piko-client-addr '%s'", f->value);
            client_addr++;
        }
        if (strcmp(f->name, "x-forwarded-for") == 0)
            xff++;
    }
    FUZZ_CHECK(client_addr == 1, "%zu piko-client-addr fields", client_addr);
    if (m->raw) {
        FUZZ_CHECK(strcmp(r->method, "CONNECT") == 0 && r->protocol && *r->protocol,
                   "upgrade not sent as extended CONNECT");
        FUZZ_CHECK(!pk_hdrs_get(&r->hdrs, "content-length"), "content-length on a raw stream");
        return;
    }
    FUZZ_CHECK(!r->protocol, ":protocol on a plain request");
    FUZZ_CHECK(xff == 1, "%zu x-forwarded-for fields", xff);
    const char *xfh = pk_hdrs_get(&r->hdrs, "x-forwarded-host");
    FUZZ_CHECK(xfh && strcmp(xfh, r->authority) == 0, "x-forwarded-host '%s' vs '%s'",
               xfh ? xfh : "(null)", r->authority);
}

/* ---- the proxy, replayed ------------------------------------------------------------ */

/* route.c, the proxy's own routing (pk_proxy_route). */
static int route(const struct pk_head *req, char *out, size_t outlen)
{
    const char *msg = NULL;
    return pk_proxy_route(req, out, outlen, &msg);
}

/* The server's own preparation (pk_proxy_prepare_request), for a plain-TCP client. */
static void prepare_request(struct msg *m, struct pk_head *in)
{
    pk_proxy_prepare_request(&m->req, in, m->endpoint, false, CLIENT_IP, CLIENT_PORT);
}

/* h1down.c h1_on_head() and exchange.c pk_exchange_start(); sets m->forwarded when the request goes
 * out. */
static void proxy_head(struct msg *m, struct pk_h1parser *p)
{
    struct pk_head *in = &p->head;
    for (size_t i = 0; i < in->hdrs.n; i++) {
        if (strcmp(in->hdrs.v[i].name, "connection") == 0) {
            char *j =
                pk_xasprintf("%s,%s", m->connection ? m->connection : "", in->hdrs.v[i].value);
            free(m->connection);
            m->connection = j;
        }
    }
    m->has_body = p->chunked || (p->has_length && p->content_length > 0);
    const char *path = in->path ? in->path : "";
    bool tcp = strncmp(path, TCP_PREFIX, strlen(TCP_PREFIX)) == 0;
    if (tcp && !(p->upgrade && pk_hdrs_has_token(&in->hdrs, "upgrade", "piko-tcp")))
        return; /* 426 */
    if (p->upgrade && !tcp && strcmp(in->method, "GET") != 0) {
        /* a plain exchange */
    } else if (p->upgrade) {
        const char *up = tcp ? "piko-tcp" : pk_hdrs_get(&in->hdrs, "upgrade");
        size_t n = up ? strcspn(up, ", \t") : 0;
        if (n == 0 || n >= sizeof(m->token))
            return; /* 400 */
        snprintf(m->token, sizeof(m->token), "%.*s", (int)n, up);
        m->raw = true;
        m->has_body = true;
    }
    if (!in->authority) {
        const char *host = pk_hdrs_get(&in->hdrs, "host");
        if (host)
            pk_head_set(&in->authority, host, strlen(host));
    }
    if (tcp) {
        const char *id = in->path + strlen(TCP_PREFIX);
        if (!pk_endpoint_id_valid(id, strlen(id)))
            return; /* 400 */
        snprintf(m->endpoint, sizeof(m->endpoint), "%s", id);
    } else if (route(in, m->endpoint, sizeof(m->endpoint)) != 0) {
        return; /* 400 */
    }
    prepare_request(m, in);
    if (m->raw) {
        pk_proxy_make_raw(&m->req, m->token, tcp, m->endpoint);
    }
    m->forwarded = true;
    check_converted(m);
}

/* ---- known findings ------------------------------------------------------------------ */

/* A request the sidecar refuses because of a known finding (2 or 4 at the top of this
 * file; 3 and 6 are refused by pk_proxy_route now). Always false when strict. */
static bool known_h2_finding(struct msg *m)
{
    if (strict)
        return false;
    const struct pk_head *r = &m->req;
    if (strcmp(r->method, "CONNECT") == 0 && !r->protocol)
        return true; /* 2 */
    if (m->trailers.n == 0)
        return false;
    struct h2check again = {
        .body = m->body ? m->body : "",
        .body_len = m->body_len,
        .has_body = m->has_body,
    };
    return h2check_run(&again, r); /* 4: fine without its trailers */
}

static void dump(const struct msg *m)
{
    const struct pk_head *r = &m->req;
    fprintf(stderr, "tunnel request: %s%s%s %s %s://%s\n", r->method, r->protocol ? "+" : "",
            r->protocol ? r->protocol : "", r->path, r->scheme, r->authority);
    for (size_t i = 0; i < r->hdrs.n; i++)
        fprintf(stderr, "  %s: %s\n", r->hdrs.v[i].name, r->hdrs.v[i].value);
    fprintf(stderr, "  body %zu bytes%s\n", m->body_len, m->has_body ? "" : " (none)");
    for (size_t i = 0; i < m->trailers.n; i++)
        fprintf(stderr, "  trailer %s: %s\n", m->trailers.v[i].name, m->trailers.v[i].value);
}

/* ---- parser callbacks ---------------------------------------------------------------- */

struct conn {
    struct msg m;
    size_t heads, completes;
};

static bool on_head(struct pk_h1parser *p, void *ud)
{
    struct conn *c = ud;
    c->heads++;
    FUZZ_CHECK(c->heads == c->completes + 1, "head %zu after %zu messages", c->heads, c->completes);
    msg_reset(&c->m);
    if (check_parsed_head(p))
        proxy_head(&c->m, p);
    return false;
}

static void on_body(struct pk_h1parser *p, const char *data, size_t len, void *ud)
{
    struct conn *c = ud;
    FUZZ_CHECK(p->head_done && !p->upgrade, "body bytes outside a message body");
    struct msg *m = &c->m;
    m->body = realloc(m->body, m->body_len + len + 1);
    FUZZ_CHECK(m->body != NULL, "out of memory");
    memcpy(m->body + m->body_len, data, len);
    m->body_len += len;
    FUZZ_CHECK(!p->has_length || m->body_len <= p->content_length,
               "%zu body bytes with content-length %llu", m->body_len,
               (unsigned long long)p->content_length);
}

static void on_complete(struct pk_h1parser *p, void *ud)
{
    struct conn *c = ud;
    struct msg *m = &c->m;
    c->completes++;
    FUZZ_CHECK(c->completes == c->heads, "message %zu complete after %zu heads", c->completes,
               c->heads);
    FUZZ_CHECK(!p->has_length || p->upgrade || m->body_len == p->content_length,
               "message complete with %zu body bytes, content-length %llu", m->body_len,
               (unsigned long long)p->content_length);
    FUZZ_CHECK(p->trailers.n == 0 || p->chunked, "trailers without chunked framing");
    if (known_ctl(&p->trailers))
        return;
    check_hdrs(&p->trailers, "trailers");
    if (!m->forwarded)
        return;
    if (!m->raw)
        pk_hdrs_move(&m->trailers, &p->trailers); /* h1_on_complete() */
    struct h2check h2 = {
        .body = !m->raw && m->body ? m->body : "",
        .body_len = m->raw ? 0 : m->body_len,
        .has_body = m->has_body,
        .trailers = &m->trailers,
    };
    if (verbose)
        dump(m);
    if (h2check_run(&h2, &m->req) || known_h2_finding(m))
        return;
    FUZZ_CHECK(false, "%s %s: %s", m->req.method, m->req.path, h2.why);
}

static const struct pk_h1parser_cbs cbs = {
    .on_head = on_head,
    .on_body = on_body,
    .on_complete = on_complete,
};

/* ---- the connection ------------------------------------------------------------------ */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    struct fuzz_split split;
    fuzz_split_init(&split, data[0]);
    const char *in = (const char *)data + 1;
    size_t len = size - 1, done = 0, avail = 0; /* consumed, and delivered so far */
    struct conn c = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, MAX_HEAD, &cbs, &c);
    for (;;) {
        if (p.message_done) {
            /* h1_process(): the next request on a keep-alive connection. After an
             * upgrade the bytes are the tunnel's, not HTTP. */
            if (p.upgrade || !p.keep_alive)
                break;
            pk_h1parser_next(&p);
        }
        if (done == avail) {
            if (avail == len)
                break;
            avail += fuzz_split_next(&split, len - avail);
        }
        size_t n_in = avail - done;
        char *buf = fuzz_dup(in + done, n_in);
        ssize_t n = pk_h1parser_feed(&p, buf, n_in);
        free(buf);
        if (n < 0) {
            FUZZ_CHECK(p.error != PK_H1_OK, "feed failed without an error");
            FUZZ_CHECK(pk_h1parser_feed(&p, "x", 1) == -1, "feed after an error succeeded");
            break;
        }
        FUZZ_CHECK((size_t)n <= n_in, "consumed %zd of %zu bytes", n, n_in);
        FUZZ_CHECK((size_t)n == n_in || p.message_done,
                   "stopped at %zd of %zu bytes inside a message", n, n_in);
        done += (size_t)n;
        bool body = p.chunked || (p.has_length && p.content_length > 0);
        if (n > 0 && p.message_done && (!body || p.upgrade || p.chunked)) {
            /* A message ends with its head or its trailer section, at an LF. */
            bool bare_cr = done >= 2 && in[done - 2] == '\r' && in[done - 1] != '\n';
            FUZZ_CHECK(in[done - 1] == '\n' || (bare_cr && !strict),
                       "the head ends with byte 0x%02x at %zu", (unsigned char)in[done - 1], done);
        }
        if (n == 0 && !p.message_done) {
            if (avail == len)
                break;
            avail += fuzz_split_next(&split, len - avail);
        }
    }
    /* The client closes: completes a close-delimited body, or fails. */
    if (!p.error && !p.message_done && c.heads > c.completes) {
        int rv = pk_h1parser_eof(&p);
        FUZZ_CHECK(rv == 0 ? p.message_done : p.error != PK_H1_OK, "eof returned %d", rv);
    }
    FUZZ_CHECK(c.completes <= c.heads, "%zu messages, %zu heads", c.completes, c.heads);
    msg_reset(&c.m);
    pk_h1parser_free(&p);
    return 0;
}
