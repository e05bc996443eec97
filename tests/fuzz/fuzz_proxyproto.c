/* fuzz_proxyproto: lib/net/proxyproto, which has no PROXY header parser (Piko only writes
 * headers) but parses the piko-client-addr field a sidecar receives on each TCP stream
 * ("ip:port" or "[ipv6]:port", pk_parse_addr_port) and writes v1 and v2 headers from it.
 *
 * The input is two addresses separated by a NUL byte (source, then destination). Checks:
 * an accepted address prints back (inet_ntop) to a string that parses to the same address;
 * the v1 and v2 headers written for the pair are well formed (v1 at most 107 bytes, ending
 * in CRLF; v2 signature, command, family and length consistent) and, decoded again, name
 * exactly the parsed addresses and ports, with UNKNOWN / LOCAL exactly when the pair has no
 * common family. */
#include "fuzz.h"

#include "base/base.h"
#include "net/proxyproto.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <netinet/in.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    return 0;
}

/* An address reduced as the PROXY protocol sees it. */
struct addr {
    int family; /* AF_INET, AF_INET6 or AF_UNSPEC */
    uint8_t ip[16];
    uint16_t port;
};

static bool parse(const char *s, struct sockaddr_storage *ss)
{
    socklen_t len = 0;
    if (pk_parse_addr_port(s, ss, &len) != 0)
        return false;
    FUZZ_CHECK(strlen(s) <= 63, "accepted '%s' of %zu characters", s, strlen(s));
    if (ss->ss_family == AF_INET) {
        FUZZ_CHECK(len == sizeof(struct sockaddr_in), "IPv4 length %u", (unsigned)len);
    } else {
        FUZZ_CHECK(ss->ss_family == AF_INET6, "family %d", ss->ss_family);
        FUZZ_CHECK(len == sizeof(struct sockaddr_in6), "IPv6 length %u", (unsigned)len);
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        FUZZ_CHECK(s6->sin6_scope_id == 0 && s6->sin6_flowinfo == 0, "zone or flow in '%s'", s);
    }
    return true;
}

/* Prints ss as "ip:port" / "[ip]:port" and parses that again. */
static void check_reprint(const char *orig, const struct sockaddr_storage *ss)
{
    char ip[INET6_ADDRSTRLEN], text[80];
    struct sockaddr_storage again;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(text, sizeof(text), "%s:%u", ip, ntohs(s4->sin_port));
    } else {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(text, sizeof(text), "[%s]:%u", ip, ntohs(s6->sin6_port));
    }
    FUZZ_CHECK(parse(text, &again), "'%s' parsed but its form '%s' does not", orig, text);
    FUZZ_CHECK(memcmp(ss, &again, sizeof(again)) == 0, "'%s' and '%s' differ", orig, text);
}

static struct addr reduce(const struct sockaddr_storage *ss, bool to_v4)
{
    struct addr a = {.family = ss->ss_family};
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        memcpy(a.ip, &s4->sin_addr, 4);
        a.port = ntohs(s4->sin_port);
    } else {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        a.port = ntohs(s6->sin6_port);
        if (to_v4) {
            a.family = AF_INET;
            memcpy(a.ip, &s6->sin6_addr.s6_addr[12], 4);
        } else {
            memcpy(a.ip, &s6->sin6_addr, 16);
        }
    }
    return a;
}

static bool is_mapped(const struct sockaddr_storage *ss)
{
    return ss->ss_family == AF_INET6 &&
           IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

/* What the header must describe (proxyproto.h): both IPv6, or IPv4 with IPv4-mapped IPv6
 * taken as IPv4, else nothing. */
static void expect(const struct sockaddr_storage *s, const struct sockaddr_storage *d,
                   struct addr *es, struct addr *ed)
{
    memset(es, 0, sizeof(*es));
    memset(ed, 0, sizeof(*ed));
    es->family = ed->family = AF_UNSPEC;
    if (!s || !d)
        return;
    if (s->ss_family == AF_INET6 && d->ss_family == AF_INET6) {
        *es = reduce(s, false);
        *ed = reduce(d, false);
    } else if ((s->ss_family == AF_INET || is_mapped(s)) &&
               (d->ss_family == AF_INET || is_mapped(d))) {
        *es = reduce(s, true);
        *ed = reduce(d, true);
    }
}

static void check_v1(struct evbuffer *b, const struct addr *es, const struct addr *ed)
{
    size_t n = evbuffer_get_length(b);
    char *h = pk_xstrndup((const char *)evbuffer_pullup(b, -1), n);
    FUZZ_CHECK(n <= 107 && n >= 8 && strlen(h) == n, "v1 header of %zu bytes", n);
    FUZZ_CHECK(memcmp(h + n - 2, "\r\n", 2) == 0 && strpbrk(h, "\r\n") == h + n - 2,
               "v1 header not one CRLF line: '%s'", h);
    if (es->family == AF_UNSPEC) {
        FUZZ_CHECK(strcmp(h, "PROXY UNKNOWN\r\n") == 0, "v1 '%s' for no common family", h);
        free(h);
        return;
    }
    char proto[8], sa[64], da[64];
    unsigned sp, dp;
    int k = sscanf(h, "PROXY %7s %63s %63s %u %u\r\n", proto, sa, da, &sp, &dp);
    FUZZ_CHECK(k == 5, "v1 header '%s' has %d fields", h, k);
    int fam = strcmp(proto, "TCP4") == 0 ? AF_INET : strcmp(proto, "TCP6") == 0 ? AF_INET6 : -1;
    FUZZ_CHECK(fam == es->family, "v1 '%s' for family %d", h, es->family);
    uint8_t sip[16] = {0}, dip[16] = {0};
    FUZZ_CHECK(inet_pton(fam, sa, sip) == 1 && inet_pton(fam, da, dip) == 1, "v1 addresses of '%s'",
               h);
    size_t alen = fam == AF_INET ? 4 : 16;
    FUZZ_CHECK(memcmp(sip, es->ip, alen) == 0 && memcmp(dip, ed->ip, alen) == 0,
               "v1 '%s' names other addresses", h);
    FUZZ_CHECK(sp == es->port && dp == ed->port, "v1 '%s' ports, want %u %u", h, es->port,
               ed->port);
    free(h);
}

static void check_v2(struct evbuffer *b, const struct addr *es, const struct addr *ed)
{
    size_t n = evbuffer_get_length(b);
    const uint8_t *h = evbuffer_pullup(b, -1);
    FUZZ_CHECK(n >= 16 && memcmp(h, "\r\n\r\n\0\r\nQUIT\n", 12) == 0, "v2 signature");
    size_t blen = (size_t)h[14] << 8 | h[15];
    FUZZ_CHECK(n == 16 + blen, "v2 of %zu bytes declares %zu", n, blen);
    if (es->family == AF_UNSPEC) {
        FUZZ_CHECK(h[12] == 0x20 && h[13] == 0x00 && blen == 0, "v2 LOCAL expected");
        return;
    }
    size_t alen = es->family == AF_INET ? 4 : 16;
    FUZZ_CHECK(h[12] == 0x21, "v2 command 0x%02x", h[12]);
    FUZZ_CHECK(h[13] == (es->family == AF_INET ? 0x11 : 0x21), "v2 family 0x%02x", h[13]);
    FUZZ_CHECK(blen == 2 * alen + 4, "v2 address block of %zu bytes", blen);
    const uint8_t *p = h + 16;
    FUZZ_CHECK(memcmp(p, es->ip, alen) == 0 && memcmp(p + alen, ed->ip, alen) == 0,
               "v2 names other addresses");
    p += 2 * alen;
    FUZZ_CHECK((p[0] << 8 | p[1]) == es->port && (p[2] << 8 | p[3]) == ed->port, "v2 ports");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size + 1);
    if (!in)
        abort();
    memcpy(in, data, size);
    in[size] = '\0';
    const char *src = in;
    const char *nul = memchr(in, '\0', size);
    const char *dst = nul && nul < in + size ? nul + 1 : "10.0.0.2:8080";
    struct sockaddr_storage s, d;
    bool have_s = parse(src, &s), have_d = parse(dst, &d);
    if (have_s)
        check_reprint(src, &s);
    if (have_d)
        check_reprint(dst, &d);
    struct addr es, ed;
    expect(have_s ? &s : NULL, have_d ? &d : NULL, &es, &ed);
    const struct sockaddr *sa = have_s ? (const struct sockaddr *)&s : NULL;
    const struct sockaddr *da = have_d ? (const struct sockaddr *)&d : NULL;
    struct evbuffer *b = evbuffer_new();
    FUZZ_CHECK(pk_proxyproto_v1(b, sa, da) == 0, "v1 failed");
    check_v1(b, &es, &ed);
    evbuffer_drain(b, evbuffer_get_length(b));
    FUZZ_CHECK(pk_proxyproto_v2(b, sa, da) == 0, "v2 failed");
    check_v2(b, &es, &ed);
    evbuffer_free(b);
    FUZZ_CHECK(pk_proxyproto_v1(NULL, sa, da) == PK_ERR_INVALID, "v1 without a buffer");
    free(in);
    return 0;
}
