/* Routing a proxy request to an endpoint (PROTOCOL.md 4), the checks of its target and
 * authority, and the request as it goes on a tunnel (PROTOCOL.md 1.2, 1.4). Pure
 * functions: also called by tests/fuzz. */
#include "base/base.h"
#include "http1/http1.h"
#include "server/server_int.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* RFC 3986 3.2.2-3.2.3: a reg-name or IPv4 address (unreserved, pct-encoded, sub-delims)
 * or an [IP-literal], then an optional :port of digits. No userinfo, no whitespace. */
static bool authority_valid(const char *a)
{
    const char *p = a;
    if (*p == '[') {
        const char *end = strchr(p, ']');
        if (!end || end == p + 1)
            return false;
        for (const char *q = p + 1; q < end; q++)
            if (!strchr("0123456789abcdefABCDEF:.", *q) && !(*q >= 'a' && *q <= 'z') &&
                !(*q >= 'A' && *q <= 'Z') && *q != '%' && *q != '_' && *q != '~' && *q != '-')
                return false;
        p = end + 1;
    } else {
        for (; *p && *p != ':'; p++) {
            unsigned char c = (unsigned char)*p;
            bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      strchr("-._~%!$&'()*+,;=", c);
            if (!ok || c == '\0')
                return false;
        }
        if (p == a)
            return false;
    }
    if (*p == '\0')
        return true;
    if (*p != ':')
        return false;
    for (p++; *p; p++)
        if (*p < '0' || *p > '9')
            return false;
    return true;
}

/* An origin-form target (RFC 9112 3.2.1: it starts with '/'; '*' only with OPTIONS),
 * without whitespace, control characters or a fragment: anything else would reach the
 * service as something it may read differently. */
static bool target_valid(const char *method, const char *path)
{
    if (!path || !*path)
        return false;
    if (strcmp(path, "*") == 0)
        return method && strcmp(method, "OPTIONS") == 0;
    if (path[0] != '/')
        return false;
    for (const unsigned char *p = (const unsigned char *)path; *p; p++)
        if (*p <= 0x20 || *p == 0x7f || *p == '#')
            return false;
    return true;
}

/* Chooses the endpoint (PROTOCOL.md 4): x-piko-endpoint, x-endpoint-id, then the first
 * label of a Host that has a dot and is not an IP literal. The target and the authority
 * are checked first (400 "invalid request target" / "invalid host"). Returns 0 or an HTTP
 * status. */
int pk_proxy_route(const struct pk_head *req, char *out, size_t outlen, const char **msg)
{
    bool connect = req->method && strcmp(req->method, "CONNECT") == 0;
    if (!connect && !target_valid(req->method, req->path)) {
        *msg = "invalid request target";
        return 400;
    }
    if (req->authority && !authority_valid(req->authority)) {
        *msg = "invalid host";
        return 400;
    }
    const char *id = pk_hdrs_get(&req->hdrs, "x-piko-endpoint");
    if (!id)
        id = pk_hdrs_get(&req->hdrs, "x-endpoint-id");
    size_t len = id ? strlen(id) : 0;
    if (!id && req->authority) {
        const char *host = req->authority;
        char buf[256];
        struct in6_addr a6;
        size_t hlen = strcspn(host, ":");
        if (host[0] == '[' || hlen >= sizeof(buf)) {
            host = NULL;
        } else {
            memcpy(buf, host, hlen);
            buf[hlen] = '\0';
            if (!strchr(buf, '.') || inet_pton(AF_INET, buf, &a6) == 1)
                host = NULL;
        }
        if (host) {
            id = host;
            len = strcspn(host, ".");
        }
    }
    if (!id) {
        *msg = "missing endpoint id";
        return 400;
    }
    if (!pk_endpoint_id_valid(id, len)) {
        *msg = "invalid endpoint id";
        return 400;
    }
    len = PK_MIN(len, outlen - 1);
    memcpy(out, id, len);
    out[len] = '\0';
    return 0;
}

bool pk_proxy_prepare_request(struct pk_head *out, struct pk_head *in, const char *endpoint,
                              bool https, const char *ip, uint16_t port)
{
    out->method = in->method;
    in->method = NULL;
    out->path = in->path ? in->path : pk_xstrdup("/");
    in->path = NULL;
    out->scheme = pk_xstrdup(https ? "https" : "http");
    const char *host = in->authority ? in->authority : pk_hdrs_get(&in->hdrs, "host");
    out->authority = pk_xstrdup(host ? host : endpoint);
    pk_hdrs_move(&out->hdrs, &in->hdrs);
    const char *expect = pk_hdrs_get(&out->hdrs, "expect");
    bool expect_continue = expect && pk_strcaseeq(expect, "100-continue");
    pk_h1_strip_hop_by_hop(&out->hdrs, true);
    pk_hdrs_del(&out->hdrs, "expect");
    pk_hdrs_del(&out->hdrs, "x-piko-authorization");
    pk_hdrs_del_prefix(&out->hdrs, "piko-");
    const char *xff = pk_hdrs_get(&out->hdrs, "x-forwarded-for");
    if (xff) {
        char *v = pk_xasprintf("%s, %s", xff, ip);
        pk_hdrs_set(&out->hdrs, "x-forwarded-for", v);
        free(v);
    } else {
        pk_hdrs_add_str(&out->hdrs, "x-forwarded-for", ip);
    }
    pk_hdrs_set(&out->hdrs, "x-forwarded-proto", https ? "https" : "http");
    pk_hdrs_set(&out->hdrs, "x-forwarded-host", out->authority);
    char addr[96];
    pk_hdrs_add_str(&out->hdrs, "piko-client-addr", pk_hostport(addr, sizeof(addr), ip, port));
    return expect_continue;
}

void pk_proxy_make_raw(struct pk_head *r, const char *token, bool tcp, const char *endpoint)
{
    pk_head_set(&r->method, "CONNECT", 7);
    pk_head_set(&r->protocol, token, strlen(token));
    if (tcp) {
        char auth[160];
        snprintf(auth, sizeof(auth), "%s:0", endpoint);
        pk_head_set(&r->authority, auth, strlen(auth));
        pk_head_set(&r->path, "/", 1);
        const char *ca = pk_hdrs_get(&r->hdrs, "piko-client-addr");
        char *addr = ca ? pk_xstrdup(ca) : NULL;
        pk_hdrs_free(&r->hdrs);
        if (addr) {
            pk_hdrs_add_str(&r->hdrs, "piko-client-addr", addr);
            free(addr);
        }
    }
    pk_hdrs_del(&r->hdrs, "content-length");
}
