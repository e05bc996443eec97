/* proxyproto: PROXY protocol v1 and v2 headers (see proxyproto.h). */
#include "net/proxyproto.h"

#include "base/base.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define V2_SIG     "\r\n\r\n\0\r\nQUIT\n"
#define V2_SIG_LEN 12

/* A connection's addresses reduced to one family, or AF_UNSPEC. */
struct endpoints {
    int family;
    union {
        struct in_addr v4;
        struct in6_addr v6;
    } src, dst;
    uint16_t sport, dport; /* host order */
};

static bool v4_of_mapped(const struct sockaddr_in6 *s6, struct in_addr *a)
{
    if (!IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
        return false;
    memcpy(&a->s_addr, &s6->sin6_addr.s6_addr[12], 4);
    return true;
}

/* Fills the IPv4 side of e from sa (plain IPv4 or IPv4-mapped IPv6). */
static bool as_v4(const struct sockaddr *sa, struct in_addr *a, uint16_t *port)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        *a = s4->sin_addr;
        *port = ntohs(s4->sin_port);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        *port = ntohs(s6->sin6_port);
        return v4_of_mapped(s6, a);
    }
    return false;
}

static void classify(const struct sockaddr *src, const struct sockaddr *dst, struct endpoints *e)
{
    memset(e, 0, sizeof(*e));
    e->family = AF_UNSPEC;
    if (!src || !dst)
        return;
    if (src->sa_family == AF_INET6 && dst->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)src;
        const struct sockaddr_in6 *d = (const struct sockaddr_in6 *)dst;
        e->family = AF_INET6;
        e->src.v6 = s->sin6_addr;
        e->dst.v6 = d->sin6_addr;
        e->sport = ntohs(s->sin6_port);
        e->dport = ntohs(d->sin6_port);
        return;
    }
    if ((src->sa_family == AF_INET || dst->sa_family == AF_INET) &&
        as_v4(src, &e->src.v4, &e->sport) && as_v4(dst, &e->dst.v4, &e->dport))
        e->family = AF_INET;
}

int pk_proxyproto_v1(struct evbuffer *out, const struct sockaddr *src, const struct sockaddr *dst)
{
    if (!out)
        return PK_ERR_INVALID;
    struct endpoints e;
    classify(src, dst, &e);
    if (e.family == AF_UNSPEC) {
        evbuffer_add(out, "PROXY UNKNOWN\r\n", 15);
        return 0;
    }
    char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
    inet_ntop(e.family, &e.src, s, sizeof(s));
    inet_ntop(e.family, &e.dst, d, sizeof(d));
    /* At most 104 bytes with both IPv6 addresses in full: under the spec's 107. */
    evbuffer_add_printf(out, "PROXY %s %s %s %u %u\r\n", e.family == AF_INET ? "TCP4" : "TCP6", s,
                        d, e.sport, e.dport);
    return 0;
}

int pk_proxyproto_v2(struct evbuffer *out, const struct sockaddr *src, const struct sockaddr *dst)
{
    if (!out)
        return PK_ERR_INVALID;
    struct endpoints e;
    classify(src, dst, &e);
    uint8_t h[V2_SIG_LEN + 4 + 36];
    size_t alen = e.family == AF_INET ? 4 : 16;
    size_t blen = e.family == AF_UNSPEC ? 0 : 2 * alen + 4;
    memcpy(h, V2_SIG, V2_SIG_LEN);
    h[12] = e.family == AF_UNSPEC ? 0x20 : 0x21; /* version 2, LOCAL or PROXY */
    h[13] = e.family == AF_UNSPEC ? 0x00 : e.family == AF_INET ? 0x11 : 0x21;
    h[14] = (uint8_t)(blen >> 8);
    h[15] = (uint8_t)(blen & 0xff);
    if (blen) {
        uint8_t *p = h + 16;
        memcpy(p, &e.src, alen);
        memcpy(p + alen, &e.dst, alen);
        p += 2 * alen;
        p[0] = (uint8_t)(e.sport >> 8);
        p[1] = (uint8_t)(e.sport & 0xff);
        p[2] = (uint8_t)(e.dport >> 8);
        p[3] = (uint8_t)(e.dport & 0xff);
    }
    evbuffer_add(out, h, 16 + blen);
    return 0;
}

static int parse_port(const char *s, uint16_t *port)
{
    unsigned long v = 0;
    size_t n = strlen(s);
    if (n == 0 || n > 5)
        return PK_ERR_INVALID;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return PK_ERR_INVALID;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > 65535)
        return PK_ERR_INVALID;
    *port = (uint16_t)v;
    return 0;
}

int pk_parse_addr_port(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[64];
    const char *port;
    if (!s || !ss || strlen(s) >= sizeof(host))
        return PK_ERR_INVALID;
    memset(ss, 0, sizeof(*ss));
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':')
            return PK_ERR_INVALID;
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = '\0';
        port = end + 2;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        uint16_t p;
        /* inet_pton also refuses a zone id ("fe80::1%eth0") and an IPv4 address. */
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1 || parse_port(port, &p) != 0)
            return PK_ERR_INVALID;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(p);
        if (len)
            *len = sizeof(*s6);
        return 0;
    }
    const char *colon = strchr(s, ':');
    if (!colon || strchr(colon + 1, ':'))
        return PK_ERR_INVALID; /* none, or an IPv6 address without brackets */
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    port = colon + 1;
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    uint16_t p;
    if (inet_pton(AF_INET, host, &s4->sin_addr) != 1 || parse_port(port, &p) != 0)
        return PK_ERR_INVALID;
    s4->sin_family = AF_INET;
    s4->sin_port = htons(p);
    if (len)
        *len = sizeof(*s4);
    return 0;
}
