/* dns: asynchronous name and SRV lookups with c-ares, driven by a libevent loop.
 *
 * A pk_resolver is one c-ares channel whose sockets and timer are events on one
 * event_base. Every function here must be called from the thread running that loop, and
 * resolvers are created and deleted by one thread at a time (c-ares 1.18 counts its
 * library initialisation without a lock).
 *
 * Callbacks are always delivered from the loop (a deferred event), never from inside
 * pk_resolve / pk_resolve_srv and never from inside c-ares. A callback may therefore call
 * anything in this module, including pk_resolve, pk_resolve_cancel on another request
 * and pk_resolver_del on its own resolver.
 *
 * Request lifetime: the pointer returned by pk_resolve / pk_resolve_srv stays valid until
 * its callback has been called (it is invalid once the callback starts) or until
 * pk_resolve_cancel / pk_resolver_del. Cancelled requests never call back; their memory is
 * released by the module at a safe point. */
#ifndef PK_DNS_H
#define PK_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;

struct pk_resolver;    /* one c-ares channel driven by one libevent loop */
struct pk_resolve_req; /* one pending lookup */

struct pk_addr {
    struct sockaddr_storage ss;
    socklen_t len;
};

/* Result of pk_resolve: IPv4 addresses first, then IPv6, duplicates removed, at most
 * PK_RESOLVE_MAX_ADDRS. Owned by the module; valid during the callback only. */
struct pk_addrs {
    size_t n;
    struct pk_addr *v;
};

struct pk_srv {
    char *target; /* host name without the trailing dot */
    uint16_t port, priority, weight;
};

/* Result of pk_resolve_srv: priority ascending, and inside one priority in the RFC 2782
 * weighted random order. At most PK_RESOLVE_MAX_SRV records; records whose target is "."
 * (service explicitly unavailable) are dropped. Owned by the module; valid during the
 * callback only. */
struct pk_srvs {
    size_t n;
    struct pk_srv *v;
};

#define PK_RESOLVE_MAX_ADDRS 64
#define PK_RESOLVE_MAX_SRV   256

struct pk_resolver_opts {
    /* NULL for the system configuration (/etc/resolv.conf), or a comma-separated list of
     * "ip", "ip:port", "[ipv6]:port" (tests point this at dnsmasq on loopback). */
    const char *servers;
    int timeout_ms; /* first-try timeout per server; 0: system / c-ares default */
    int tries;      /* tries per server; 0: system / c-ares default */
    bool no_search; /* never append the search domains of resolv.conf */
};

/* c-ares' process-wide state: call once per process before any resolver is created and
 * before any loop thread starts (ares_library_init is not thread-safe); cleanup after the
 * last resolver is freed. Returns 0, or PK_ERR_IO with a message in err. */
int pk_dns_global_init(char *err, size_t errlen);
void pk_dns_global_cleanup(void);

/* Checks a server list as pk_resolver_opts.servers takes it, for the option named key:
 * NULL and "" (the system configuration) pass; otherwise every comma-separated item must
 * be an IP address with an optional port. Returns 0, or PK_ERR_INVALID with a message
 * naming key in err. */
int pk_dns_servers_check(const char *key, const char *servers, char *err, size_t errlen);

/* Creates a resolver on base with the system configuration (servers NULL) or with the
 * given servers (see pk_resolver_opts.servers). /etc/hosts is consulted in both cases.
 * Returns NULL on failure with a message in err (errlen bytes, may be 0). */
struct pk_resolver *pk_resolver_new(struct event_base *base, const char *servers, char *err,
                                    size_t errlen);
/* Same with every option. opts NULL means all defaults. */
struct pk_resolver *pk_resolver_new_opts(struct event_base *base,
                                         const struct pk_resolver_opts *opts, char *err,
                                         size_t errlen);
/* Destroys r. NULL is a no-op. Every request still pending is cancelled without calling
 * back, including ones whose answer is already in. Safe to call from a callback of r. */
void pk_resolver_del(struct pk_resolver *r);

/* Called once per request unless it was cancelled. err is 0 (addrs has n >= 1) or:
 * PK_ERR_NOTFOUND  the name does not exist or has no address (NXDOMAIN, NODATA),
 * PK_ERR_TIMEOUT   no server answered in time,
 * PK_ERR_INVALID   the name is malformed,
 * PK_ERR_IO        any other failure (refused, server failure, bad response, no memory).
 * On error addrs is NULL. pk_resolve_errstr(r) has c-ares' own description. */
typedef void (*pk_resolve_cb)(int err, const struct pk_addrs *addrs, void *arg);

/* Resolves host (a name, an IPv4 or IPv6 literal, or a name of /etc/hosts such as
 * "localhost") to addresses of both families, each with port set. IPv6 literals may carry
 * a zone ("fe80::1%eth0" or "%2"; an unknown zone gives PK_ERR_INVALID). Literals and
 * localhost complete without network traffic, but the callback still comes later from
 * the loop. Returns the request, or NULL when host is NULL or empty or cb is NULL (no
 * callback then). */
struct pk_resolve_req *pk_resolve(struct pk_resolver *r, const char *host, uint16_t port,
                                  pk_resolve_cb cb, void *arg);

/* Same error codes as pk_resolve_cb; srvs is NULL on error and n >= 1 on success. */
typedef void (*pk_srv_cb)(int err, const struct pk_srvs *srvs, void *arg);

/* Looks up the SRV records of name (e.g. "_cluster._tcp.piko.ns.svc.cluster.local"),
 * queried as given: no search domains are appended. c-ares 1.18 gives no TTL: callers
 * re-resolve on an interval. Returns NULL when name is NULL or empty or cb is NULL. */
struct pk_resolve_req *pk_resolve_srv(struct pk_resolver *r, const char *name, pk_srv_cb cb,
                                      void *arg);

/* Cancels req: its callback will never be called; the memory is released safely later.
 * NULL is a no-op. Must not be called on a request whose callback has started. */
void pk_resolve_cancel(struct pk_resolve_req *req);

/* c-ares' description of the status behind the callback of r being delivered (or the
 * last one delivered), e.g. "Domain name not found". A static string; meant for logging
 * inside a failed callback, where the PK_ERR_ code alone says less. */
const char *pk_resolve_errstr(const struct pk_resolver *r);

/* Sorts srvs in place: priority ascending, then RFC 2782 weighted order inside each
 * priority. rnd returns uniformly distributed 32-bit values; NULL uses an internal
 * generator seeded from the kernel. Exposed so callers can re-shuffle and tests can be
 * deterministic. */
void pk_srvs_sort(struct pk_srvs *srvs, uint32_t (*rnd)(void *arg), void *arg);

/* Splits "host:port", "[v6]:port" or ":port" (host NULL meaning any address).
 * Port must be 1-65535, or 0-65535 when allow_zero. Host names may hold [A-Za-z0-9._-];
 * a bracketed host must be an IPv6 literal (an optional "%zone" is kept). On success
 * *host is allocated (free() it) or NULL, and *port set; returns 0. Returns
 * PK_ERR_INVALID otherwise, with *host NULL. */
int pk_split_hostport(const char *s, char **host, uint16_t *port, bool allow_zero);

/* Formats sa as "1.2.3.4:80" or "[::1]:80" ("unix:PATH" for AF_UNIX, "?" when unknown)
 * into buf of len bytes, truncated if need be. Returns buf. PK_ADDR_STRLEN always fits
 * an IP address. */
#define PK_ADDR_STRLEN 64
const char *pk_addr_str(const struct sockaddr *sa, char *buf, size_t len);

#endif
