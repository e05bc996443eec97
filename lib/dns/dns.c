/* dns: c-ares 1.18 on libevent.
 *
 * c-ares tells us which sockets to watch through ARES_OPT_SOCK_STATE_CB; each socket gets
 * one persistent event that calls ares_process_fd, and one timer re-armed from
 * ares_timeout after every call into c-ares drives retransmissions and timeouts.
 *
 * c-ares callbacks never call user code: they store the answer in the request and make
 * its deliver event active. The user callback then runs from the loop, outside c-ares,
 * so it may call ares-backed functions and even pk_resolver_del (calling ares_destroy
 * from inside a c-ares callback is not allowed). It also keeps answers that exist before
 * pk_resolve returns (literals, /etc/hosts) from calling back from inside pk_resolve.
 *
 * c-ares 1.18 cannot cancel one query, so a cancelled request whose query is still in
 * c-ares stays allocated (flagged) until c-ares calls back, and is freed there. */
#include "dns/dns.h"

#include "base/base.h"

#include <ares.h>
#include <ares_nameser.h>
#include <arpa/inet.h>
#include <event2/event.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/un.h>
#include <unistd.h>

enum req_kind { REQ_ADDR, REQ_SRV };

struct pk_resolve_req {
    struct pk_resolver *r;
    struct pk_resolve_req *prev, *next; /* r->reqs, until delivery or free */
    enum req_kind kind;
    bool in_ares;    /* c-ares still holds a pointer to the request */
    bool cancelled;  /* never call back; free when c-ares lets go */
    bool delivering; /* the user callback has started */
    uint16_t port;
    union {
        pk_resolve_cb addr;
        pk_srv_cb srv;
    } cb;
    void *arg;
    struct event *deliver; /* activated once the answer is stored */
    int status;            /* c-ares status of the answer */
    struct pk_addrs addrs;
    struct pk_srvs srvs;
};

struct sock_watch {
    ares_socket_t fd;
    short what; /* EV_READ | EV_WRITE as last asked by c-ares */
    struct event *ev;
};

struct pk_resolver {
    struct event_base *base;
    ares_channel channel;
    bool channel_ok;
    struct event *timer;
    struct sock_watch *socks;
    size_t nsocks, capsocks;
    struct pk_resolve_req *reqs; /* every request not yet delivered or freed */
    int last_status;
};

/* ---- loop plumbing ---- */

static void rearm_timer(struct pk_resolver *r)
{
    struct timeval tv;
    if (ares_timeout(r->channel, NULL, &tv))
        evtimer_add(r->timer, &tv);
    else
        evtimer_del(r->timer);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_resolver *r = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    ares_process_fd(r->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    rearm_timer(r);
}

/* May free its own event (through sock_state_cb) before returning: touches only r. */
static void sock_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_resolver *r = arg;
    ares_socket_t rfd = (what & EV_READ) ? (ares_socket_t)fd : ARES_SOCKET_BAD;
    ares_socket_t wfd = (what & EV_WRITE) ? (ares_socket_t)fd : ARES_SOCKET_BAD;
    ares_process_fd(r->channel, rfd, wfd);
    rearm_timer(r);
}

/* Called by c-ares when it opens a socket, changes interest, or is about to close it
 * (readable == writable == 0): the event is removed before the fd is closed. */
static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    struct pk_resolver *r = data;
    short what = (short)((readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
    size_t i;

    for (i = 0; i < r->nsocks; i++)
        if (r->socks[i].fd == fd)
            break;
    if (i < r->nsocks) {
        if (r->socks[i].what == what)
            return;
        event_free(r->socks[i].ev);
        if (!what) {
            r->socks[i] = r->socks[--r->nsocks];
            return;
        }
    } else {
        if (!what)
            return;
        if (r->nsocks == r->capsocks) {
            r->capsocks = r->capsocks ? 2 * r->capsocks : 4;
            r->socks = pk_xrealloc(r->socks, r->capsocks * sizeof(*r->socks));
        }
        i = r->nsocks++;
        r->socks[i].fd = fd;
    }
    r->socks[i].what = what;
    r->socks[i].ev = pk_xevent_new(r->base, fd, (short)(what | EV_PERSIST), sock_cb, r);
    event_add(r->socks[i].ev, NULL);
}

/* ---- requests ---- */

static void unlink_req(struct pk_resolve_req *req)
{
    if (req->prev)
        req->prev->next = req->next;
    else if (req->r && req->r->reqs == req)
        req->r->reqs = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
}

static void free_results(struct pk_resolve_req *req)
{
    free(req->addrs.v);
    for (size_t i = 0; i < req->srvs.n; i++)
        free(req->srvs.v[i].target);
    free(req->srvs.v);
    req->addrs.v = NULL;
    req->srvs.v = NULL;
    req->addrs.n = req->srvs.n = 0;
}

static void free_req(struct pk_resolve_req *req)
{
    unlink_req(req);
    event_free(req->deliver);
    free_results(req);
    free(req);
}

static void deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_resolve_req *req = arg;
    int err;
    PK_UNUSED(fd);
    PK_UNUSED(what);

    /* Unlinked first: the callback may delete the resolver, which must not see it. */
    unlink_req(req);
    req->delivering = true;
    req->r->last_status = req->status;
    switch (req->status) {
    case ARES_SUCCESS:
        err = 0;
        break;
    case ARES_ENODATA:
    case ARES_ENOTFOUND:
    case ARES_ENONAME:
        err = PK_ERR_NOTFOUND;
        break;
    case ARES_ETIMEOUT:
        err = PK_ERR_TIMEOUT;
        break;
    case ARES_EBADNAME:
    case ARES_EBADFAMILY:
    case ARES_EBADFLAGS:
    case ARES_EBADHINTS:
        err = PK_ERR_INVALID;
        break;
    default:
        err = PK_ERR_IO;
        break;
    }
    if (req->kind == REQ_ADDR)
        req->cb.addr(err, err ? NULL : &req->addrs, req->arg);
    else
        req->cb.srv(err, err ? NULL : &req->srvs, req->arg);
    event_free(req->deliver);
    free_results(req);
    free(req);
}

static struct pk_resolve_req *new_req(struct pk_resolver *r, enum req_kind kind, void *arg)
{
    struct pk_resolve_req *req = pk_xcalloc(1, sizeof(*req));
    req->r = r;
    req->kind = kind;
    req->arg = arg;
    req->in_ares = true;
    req->deliver = pk_xevent_new(r->base, -1, 0, deliver_cb, req);
    req->next = r->reqs;
    if (r->reqs)
        r->reqs->prev = req;
    r->reqs = req;
    return req;
}

/* Common head of the c-ares callbacks. Returns false when the request is gone. */
static bool answer_wanted(struct pk_resolve_req *req, int status)
{
    req->in_ares = false;
    if (req->cancelled || status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
        free_req(req);
        return false;
    }
    return true;
}

static void answer(struct pk_resolve_req *req, int status)
{
    req->status = status;
    event_active(req->deliver, EV_TIMEOUT, 1);
}

static bool same_addr(const struct sockaddr *a, const struct sockaddr *b)
{
    if (a->sa_family != b->sa_family)
        return false;
    if (a->sa_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
    const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
    return memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0 &&
           x->sin6_scope_id == y->sin6_scope_id;
}

static void add_addrs(struct pk_resolve_req *req, const struct ares_addrinfo *res, int family)
{
    struct pk_addrs *out = &req->addrs;

    for (const struct ares_addrinfo_node *n = res->nodes; n; n = n->ai_next) {
        if (n->ai_family != family || !n->ai_addr || out->n == PK_RESOLVE_MAX_ADDRS)
            continue; /* the array holds min(nodes, PK_RESOLVE_MAX_ADDRS) entries */
        size_t need = family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
        if ((size_t)n->ai_addrlen < need)
            continue;
        bool dup = false;
        for (size_t i = 0; i < out->n && !dup; i++)
            dup = same_addr((const struct sockaddr *)&out->v[i].ss, n->ai_addr);
        if (dup)
            continue;
        struct pk_addr *a = &out->v[out->n++];
        memset(a, 0, sizeof(*a));
        memcpy(&a->ss, n->ai_addr, need);
        a->len = (socklen_t)need;
        if (family == AF_INET)
            ((struct sockaddr_in *)&a->ss)->sin_port = htons(req->port);
        else
            ((struct sockaddr_in6 *)&a->ss)->sin6_port = htons(req->port);
    }
}

static void addrinfo_cb(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    struct pk_resolve_req *req = arg;
    PK_UNUSED(timeouts);

    if (answer_wanted(req, status)) {
        if (status == ARES_SUCCESS && res) {
            size_t n = 0;
            for (const struct ares_addrinfo_node *p = res->nodes; p; p = p->ai_next)
                n++;
            req->addrs.v =
                pk_xcalloc(PK_MIN(n, (size_t)PK_RESOLVE_MAX_ADDRS), sizeof(*req->addrs.v));
            add_addrs(req, res, AF_INET);
            add_addrs(req, res, AF_INET6);
        }
        if (status == ARES_SUCCESS && !req->addrs.n)
            status = ARES_ENODATA;
        answer(req, status);
    }
    if (res)
        ares_freeaddrinfo(res);
}

static void srv_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct pk_resolve_req *req = arg;
    struct ares_srv_reply *reply = NULL;
    PK_UNUSED(timeouts);

    if (!answer_wanted(req, status))
        return;
    if (status == ARES_SUCCESS)
        status = ares_parse_srv_reply(abuf, alen, &reply);
    if (status == ARES_SUCCESS) {
        struct pk_srvs *out = &req->srvs;
        size_t n = 0;
        for (struct ares_srv_reply *s = reply; s; s = s->next)
            n++;
        out->v = pk_xcalloc(PK_MIN(n, (size_t)PK_RESOLVE_MAX_SRV), sizeof(*out->v));
        for (struct ares_srv_reply *s = reply; s && out->n < PK_RESOLVE_MAX_SRV; s = s->next) {
            size_t len = s->host ? strlen(s->host) : 0;
            while (len && s->host[len - 1] == '.')
                len--;
            if (!len) /* target "." : the service is decidedly not available here */
                continue;
            struct pk_srv *d = &out->v[out->n++];
            d->target = pk_xstrndup(s->host, len);
            d->port = s->port;
            d->priority = s->priority;
            d->weight = s->weight;
        }
        ares_free_data(reply);
        pk_srvs_sort(out, NULL, NULL);
        if (!out->n)
            status = ARES_ENODATA;
    }
    answer(req, status);
}

/* Returns 1 and fills out when host is an IPv4 or IPv6 literal (with an optional %zone,
 * by name or number), 0 when it is not a literal, -1 for an IPv6 literal with an unknown
 * zone. c-ares 1.18 is not used for literals: its fake_addrinfo misses IPv4 literals with
 * AF_UNSPEC and sends them to the DNS servers, answering only after those reply. */
static int parse_literal(const char *host, uint16_t port, struct pk_addr *out)
{
    struct sockaddr_in *in = (struct sockaddr_in *)&out->ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->ss;
    char buf[INET6_ADDRSTRLEN];
    const char *zone = strchr(host, '%');
    size_t alen = zone ? (size_t)(zone - host) : strlen(host);

    memset(out, 0, sizeof(*out));
    if (!zone && inet_pton(AF_INET, host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        out->len = sizeof(*in);
        return 1;
    }
    if (alen >= sizeof(buf))
        return 0;
    memcpy(buf, host, alen);
    buf[alen] = '\0';
    if (inet_pton(AF_INET6, buf, &in6->sin6_addr) != 1)
        return 0;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    out->len = sizeof(*in6);
    if (zone) {
        const char *z = zone + 1;
        size_t digits = strspn(z, "0123456789");
        if (*z && !z[digits] && digits < 10)
            in6->sin6_scope_id = (uint32_t)strtoul(z, NULL, 10);
        else
            in6->sin6_scope_id = *z ? if_nametoindex(z) : 0;
        if (!in6->sin6_scope_id)
            return -1;
    }
    return 1;
}

struct pk_resolve_req *pk_resolve(struct pk_resolver *r, const char *host, uint16_t port,
                                  pk_resolve_cb cb, void *arg)
{
    if (!r || !host || !*host || !cb)
        return NULL;
    struct pk_resolve_req *req = new_req(r, REQ_ADDR, arg);
    req->cb.addr = cb;
    req->port = port;

    struct pk_addr lit;
    int rc = parse_literal(host, port, &lit);
    if (rc != 0) {
        req->in_ares = false;
        if (rc > 0) {
            req->addrs.v = pk_xmalloc(sizeof(*req->addrs.v));
            req->addrs.v[0] = lit;
            req->addrs.n = 1;
        }
        answer(req, rc > 0 ? ARES_SUCCESS : ARES_EBADNAME);
        return req;
    }

    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* We order by family ourselves; RFC 6724 sorting would open a socket per address. */
    hints.ai_flags = ARES_AI_NOSORT;
    /* May call addrinfo_cb before returning (/etc/hosts, localhost): it only stores. */
    ares_getaddrinfo(r->channel, host, NULL, &hints, addrinfo_cb, req);
    rearm_timer(r);
    return req;
}

struct pk_resolve_req *pk_resolve_srv(struct pk_resolver *r, const char *name, pk_srv_cb cb,
                                      void *arg)
{
    if (!r || !name || !*name || !cb)
        return NULL;
    struct pk_resolve_req *req = new_req(r, REQ_SRV, arg);
    req->cb.srv = cb;
    ares_query(r->channel, name, C_IN, T_SRV, srv_cb, req);
    rearm_timer(r);
    return req;
}

void pk_resolve_cancel(struct pk_resolve_req *req)
{
    if (!req || req->delivering || req->cancelled)
        return;
    req->cancelled = true;
    if (!req->in_ares)
        free_req(req); /* answer stored, deliver event pending: nobody else holds it */
}

const char *pk_resolve_errstr(const struct pk_resolver *r)
{
    return ares_strerror(r ? r->last_status : ARES_SUCCESS);
}

/* ---- resolver ---- */

struct pk_resolver *pk_resolver_new(struct event_base *base, const char *servers, char *err,
                                    size_t errlen)
{
    struct pk_resolver_opts opts;
    memset(&opts, 0, sizeof(opts));
    opts.servers = servers;
    return pk_resolver_new_opts(base, &opts, err, errlen);
}

/* "ip", "ip:port", "[ipv6]" or "[ipv6]:port", or a bare IPv6 address. */
static bool server_item_ok(const char *s, size_t n)
{
    char buf[INET6_ADDRSTRLEN + 16];
    struct in6_addr a6;
    struct in_addr a4;
    char *port = NULL;

    if (n == 0 || n >= sizeof(buf))
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (buf[0] == '[') {
        char *close = strchr(buf, ']');
        if (!close || (close[1] && close[1] != ':'))
            return false;
        *close = '\0';
        if (close[1] == ':')
            port = close + 2;
        if (inet_pton(AF_INET6, buf + 1, &a6) != 1)
            return false;
    } else if (inet_pton(AF_INET6, buf, &a6) == 1) {
        return true;
    } else {
        port = strchr(buf, ':');
        if (port)
            *port++ = '\0';
        if (inet_pton(AF_INET, buf, &a4) != 1)
            return false;
    }
    if (!port)
        return true;
    size_t digits = strspn(port, "0123456789");
    if (digits == 0 || digits > 5 || port[digits])
        return false;
    long v = strtol(port, NULL, 10);
    return v >= 1 && v <= 65535;
}

int pk_dns_servers_check(const char *key, const char *servers, char *err, size_t errlen)
{
    if (!servers || !*servers)
        return 0;
    for (const char *p = servers;; p++) {
        size_t n = strcspn(p, ",");
        if (!server_item_ok(p, n)) {
            bool one = strchr(servers, ',') == NULL;
            snprintf(err, errlen, "%s: '%.*s' is not an IP address with an optional port%s%s%s",
                     key, (int)n, p, one ? "" : " (in '", one ? "" : servers, one ? "" : "')");
            return PK_ERR_INVALID;
        }
        p += n;
        if (!*p)
            return 0;
    }
}

struct pk_resolver *pk_resolver_new_opts(struct event_base *base,
                                         const struct pk_resolver_opts *opts, char *err,
                                         size_t errlen)
{
    static const struct pk_resolver_opts defaults;
    struct pk_resolver *r = NULL;
    struct ares_options ao;
    int mask = ARES_OPT_SOCK_STATE_CB;
    int st;

    if (!opts)
        opts = &defaults;
    if (!base || (opts->servers && !*opts->servers)) {
        if (errlen)
            snprintf(err, errlen, "dns: %s", base ? "empty server list" : "no event base");
        return NULL;
    }
    r = pk_xcalloc(1, sizeof(*r));
    r->base = base;
    memset(&ao, 0, sizeof(ao));
    ao.sock_state_cb = sock_state_cb;
    ao.sock_state_cb_data = r;
    if (opts->timeout_ms > 0) {
        ao.timeout = opts->timeout_ms;
        mask |= ARES_OPT_TIMEOUTMS;
    }
    if (opts->tries > 0) {
        ao.tries = opts->tries;
        mask |= ARES_OPT_TRIES;
    }
    if (opts->no_search) {
        ao.domains = NULL;
        ao.ndomains = 0;
        mask |= ARES_OPT_DOMAINS;
    }
    st = ares_init_options(&r->channel, &ao, mask);
    if (st != ARES_SUCCESS) {
        if (errlen)
            snprintf(err, errlen, "dns: ares_init_options: %s", ares_strerror(st));
        goto fail;
    }
    r->channel_ok = true;
    if (opts->servers) {
        st = ares_set_servers_ports_csv(r->channel, opts->servers);
        if (st != ARES_SUCCESS) {
            if (errlen)
                snprintf(err, errlen, "dns: bad server list \"%s\": %s", opts->servers,
                         ares_strerror(st));
            goto fail;
        }
    }
    r->timer = pk_xevent_new(base, -1, 0, timer_cb, r);
    return r;

fail:
    pk_resolver_del(r);
    return NULL;
}

void pk_resolver_del(struct pk_resolver *r)
{
    if (!r)
        return;
    /* ares_destroy calls back every query still in c-ares, usually with
     * ARES_EDESTRUCTION but not always (1.18 getaddrinfo may report ARES_SUCCESS with
     * partial results): the flag, not the status, keeps the user callbacks quiet. */
    for (struct pk_resolve_req *req = r->reqs; req; req = req->next)
        req->cancelled = true;
    if (r->channel_ok)
        ares_destroy(r->channel);
    /* c-ares has let go of everything: free the answered requests and any it did not
     * call back. */
    while (r->reqs)
        free_req(r->reqs);
    for (size_t i = 0; i < r->nsocks; i++)
        event_free(r->socks[i].ev);
    free(r->socks);
    if (r->timer)
        event_free(r->timer);
    free(r);
}

int pk_dns_global_init(char *err, size_t errlen)
{
    int st = ares_library_init(ARES_LIB_INIT_ALL);
    if (st != ARES_SUCCESS) {
        if (errlen)
            snprintf(err, errlen, "dns: ares_library_init: %s", ares_strerror(st));
        return PK_ERR_IO;
    }
    return 0;
}

void pk_dns_global_cleanup(void)
{
    ares_library_cleanup();
}

/* ---- SRV ordering (RFC 2782) ---- */

static uint32_t default_rnd(void *arg)
{
    static _Thread_local uint64_t state;
    PK_UNUSED(arg);
    if (!state) {
        if (getrandom(&state, sizeof(state), GRND_NONBLOCK) != (ssize_t)sizeof(state))
            state = pk_now_ms() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&state;
        state |= 1;
    }
    /* xorshift64* */
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return (uint32_t)((state * 0x2545F4914F6CDD1DULL) >> 32);
}

/* Moves v[from] to v[to] (to <= from), shifting the ones between up by one. */
static void move_to(struct pk_srv *v, size_t to, size_t from)
{
    struct pk_srv tmp = v[from];
    memmove(&v[to + 1], &v[to], (from - to) * sizeof(*v));
    v[to] = tmp;
}

void pk_srvs_sort(struct pk_srvs *srvs, uint32_t (*rnd)(void *arg), void *arg)
{
    struct pk_srv *v = srvs->v;
    size_t n = srvs->n;

    if (!rnd)
        rnd = default_rnd;
    /* Stable insertion sort by priority: n is bounded by PK_RESOLVE_MAX_SRV. */
    for (size_t i = 1; i < n; i++) {
        size_t j = i;
        while (j > 0 && v[j - 1].priority > v[i].priority)
            j--;
        if (j != i)
            move_to(v, j, i);
    }
    for (size_t a = 0, b; a < n; a = b) {
        for (b = a + 1; b < n && v[b].priority == v[a].priority; b++)
            ;
        /* Zero-weight records first, so that they keep a small chance of going first. */
        for (size_t i = a, z = a; i < b; i++)
            if (v[i].weight == 0)
                move_to(v, z++, i);
        for (size_t pos = a; pos + 1 < b; pos++) {
            uint32_t sum = 0;
            for (size_t i = pos; i < b; i++)
                sum += v[i].weight;
            uint32_t pick = rnd(arg) % (sum + 1);
            uint32_t run = 0;
            size_t i = pos;
            for (; i < b; i++) {
                run += v[i].weight;
                if (run >= pick)
                    break;
            }
            move_to(v, pos, i < b ? i : b - 1);
        }
    }
}

/* ---- helpers ---- */

static bool host_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_';
}

static int parse_port(const char *s, uint16_t *port, bool allow_zero)
{
    unsigned long v = 0;
    size_t i = 0;
    for (; s[i]; i++) {
        if (s[i] < '0' || s[i] > '9' || i >= 5)
            return PK_ERR_INVALID;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (i == 0 || v > 65535 || (v == 0 && !allow_zero))
        return PK_ERR_INVALID;
    *port = (uint16_t)v;
    return 0;
}

int pk_split_hostport(const char *s, char **host, uint16_t *port, bool allow_zero)
{
    const char *colon;
    char *h = NULL;
    int result = PK_ERR_INVALID;

    if (host)
        *host = NULL;
    if (!s || !host || !port)
        return PK_ERR_INVALID;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':' || end == s + 1)
            goto out;
        h = pk_xstrndup(s + 1, (size_t)(end - s - 1));
        char *zone = strchr(h, '%');
        struct in6_addr a6;
        if (zone) {
            if (zone[1] == '\0')
                goto out;
            for (const char *p = zone + 1; *p; p++)
                if (!host_char_ok(*p))
                    goto out;
            *zone = '\0';
        }
        bool ok = inet_pton(AF_INET6, h, &a6) == 1;
        if (zone)
            *zone = '%';
        if (!ok)
            goto out;
        colon = end + 1;
    } else {
        colon = strchr(s, ':');
        if (!colon || strchr(colon + 1, ':'))
            goto out; /* no port, or an unbracketed IPv6 literal */
        if (colon > s) {
            if ((size_t)(colon - s) > 253)
                goto out;
            for (const char *p = s; p < colon; p++)
                if (!host_char_ok(*p))
                    goto out;
            h = pk_xstrndup(s, (size_t)(colon - s));
        }
    }
    if (parse_port(colon + 1, port, allow_zero) != 0)
        goto out;
    *host = h;
    h = NULL;
    result = 0;
out:
    free(h);
    return result;
}

const char *pk_addr_str(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];

    if (!buf || !len)
        return buf;
    if (!sa) {
        snprintf(buf, len, "?");
    } else if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
        snprintf(buf, len, "%s:%u", ip, (unsigned)ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%u", ip, (unsigned)ntohs(in6->sin6_port));
    } else if (sa->sa_family == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
        snprintf(buf, len, "unix:%.*s", (int)strnlen(un->sun_path, sizeof(un->sun_path)),
                 un->sun_path);
    } else {
        snprintf(buf, len, "?");
    }
    return buf;
}
