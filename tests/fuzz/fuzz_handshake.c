/* fuzz_handshake: a sidecar's tunnel handshake at piko-server's upstream port.
 *
 * The input is what a client sends on a new upstream connection, delivered in pieces
 * (tests/fuzz/fuzz.h) to pk_h1parser (HTTP_REQUEST, 64 KiB head limit, no callbacks) the
 * way lib/server/upstream.c hs_read() does: all buffered bytes at each read, the consumed
 * ones drained. Once the message is done, the target takes hs_read's decision (reject with
 * 404, 405, 400, 426, or accept the tunnel for an endpoint) and checks what an accepted
 * tunnel relies on: a GET on /piko/v1/upstream/{id} with a valid id that asked to upgrade
 * to piko-reverse-h2, and every byte after the head left for HTTP/2.
 *
 * The decision is the server's own (pk_upstream_handshake_check, which hs_read calls). */
#include "fuzz.h"

#include "base/base.h"
#include "http1/http1.h"
#include "server/server_int.h"
#include "stream/head.h"

#define MAX_HEAD        (64 * 1024)
#define UPGRADE_TOKEN   "piko-reverse-h2"
#define UPSTREAM_PREFIX "/piko/v1/upstream/"

enum outcome { HS_MORE, HS_431, HS_400_MALFORMED, HS_404, HS_405, HS_400_ID, HS_426, HS_ACCEPT };

/* PIKO_FUZZ_STRICT=1 also fails on the known finding (docs/fuzzing.md): http-parser 2.9
 * (non-strict build) ends the head at CR followed by any byte, not only CR LF, and that
 * byte is swallowed. */
static bool strict;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    strict = getenv("PIKO_FUZZ_STRICT") && strcmp(getenv("PIKO_FUZZ_STRICT"), "1") == 0;
    return 0;
}

/* hs_read()'s decision once the message is done; *endpoint points into the head's path. */
static enum outcome decide(const struct pk_h1parser *p, const char **endpoint)
{
    const char *msg, *extra;
    switch (pk_upstream_handshake_check(p, endpoint, &msg, &extra)) {
    case 0:
        return HS_ACCEPT;
    case 404:
        return HS_404;
    case 405:
        return HS_405;
    case 426:
        return HS_426;
    case 400:
        return HS_400_ID;
    default:
        FUZZ_CHECK(false, "unexpected handshake status for '%s'", msg);
        return HS_400_ID;
    }
}

/* What an accepted tunnel relies on, checked independently of decide(). */
static void check_accept(const struct pk_h1parser *p, const char *endpoint)
{
    const struct pk_head *h = &p->head;
    FUZZ_CHECK(strcmp(h->method, "GET") == 0, "accepted a %s", h->method);
    FUZZ_CHECK(h->path && strncmp(h->path, UPSTREAM_PREFIX, strlen(UPSTREAM_PREFIX)) == 0 &&
                   endpoint == h->path + strlen(UPSTREAM_PREFIX),
               "accepted path '%s'", h->path ? h->path : "(null)");
    size_t n = strlen(endpoint);
    FUZZ_CHECK(n >= 1 && n <= 128, "endpoint id of %zu characters", n);
    for (size_t i = 0; i < n; i++) {
        char c = endpoint[i];
        FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '.' || c == '_' || c == '-',
                   "endpoint id '%s' has byte 0x%02x", endpoint, (unsigned char)c);
    }
    /* The tunnel's name is "tunnel/<id>/<peer>" in a 256-byte buffer. */
    FUZZ_CHECK(strlen("tunnel/") + n + 1 + 63 < 256, "tunnel name would be cut");
    FUZZ_CHECK(p->upgrade && p->message_done, "accepted without an upgrade");
    FUZZ_CHECK(!p->chunked && (!p->has_length || p->content_length == 0),
               "accepted a handshake with a body");
    bool token = false;
    for (size_t i = 0; i < h->hdrs.n; i++) {
        const struct pk_hdr *f = &h->hdrs.v[i];
        if (strcmp(f->name, "upgrade") == 0 && strcasestr(f->value, UPGRADE_TOKEN))
            token = true;
    }
    FUZZ_CHECK(token, "accepted without upgrade: " UPGRADE_TOKEN);
    const char *sid = pk_hdrs_get(&h->hdrs, "piko-sidecar-id");
    FUZZ_CHECK(!sid || strpbrk(sid, "\r\n") == NULL, "sidecar id with CR or LF");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    static const struct pk_h1parser_cbs none = {0};
    struct fuzz_split split;
    fuzz_split_init(&split, data[0]);
    const char *in = (const char *)data + 1;
    size_t len = size - 1, done = 0, avail = 0;
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, MAX_HEAD, &none, NULL);
    enum outcome out = HS_MORE;
    const char *endpoint = NULL;
    while (out == HS_MORE && avail < len) {
        /* One read: the new bytes join what is still buffered. */
        avail += fuzz_split_next(&split, len - avail);
        char *buf = fuzz_dup(in + done, avail - done);
        ssize_t n = pk_h1parser_feed(&p, buf, avail - done);
        free(buf);
        if (n < 0) {
            FUZZ_CHECK(p.error != PK_H1_OK, "feed failed without an error");
            out = p.error == PK_H1_HEAD_TOO_LARGE ? HS_431 : HS_400_MALFORMED;
            break;
        }
        FUZZ_CHECK((size_t)n <= avail - done, "consumed %zd of %zu bytes", n, avail - done);
        FUZZ_CHECK((size_t)n == avail - done || p.message_done,
                   "stopped at %zd of %zu bytes inside a message", n, avail - done);
        done += (size_t)n;
        if (p.message_done)
            out = decide(&p, &endpoint);
    }
    if (out == HS_ACCEPT) {
        check_accept(&p, endpoint);
        /* The bytes after the head stay for HTTP/2: the parser consumed exactly the head. */
        FUZZ_CHECK(p.head_bytes <= MAX_HEAD, "head of %zu bytes", p.head_bytes);
        FUZZ_CHECK(done > 0 && done <= avail, "consumed %zu of %zu", done, avail);
        bool bare_cr = done >= 2 && in[done - 2] == '\r' && in[done - 1] != '\n';
        FUZZ_CHECK(in[done - 1] == '\n' || (bare_cr && !strict),
                   "the head ends with byte 0x%02x at %zu", (unsigned char)in[done - 1], done);
        FUZZ_CHECK(pk_h1parser_feed(&p, "PRI", 3) == 0, "parser took bytes after an upgrade");
    }
    if (out == HS_MORE)
        FUZZ_CHECK(!p.message_done && done == len, "no decision with a complete message");
    pk_h1parser_free(&p);
    return 0;
}
