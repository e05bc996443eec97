#include "cluster/cluster.h"

#include "base/base.h"
#include "base/list.h"
#include "base/log.h"
#include "cluster/state.h"
#include "dns/dns.h"
#include "h2/h2.h"
#include "httpc/httpc.h"
#include "net/dial.h"
#include "net/tls.h"

#include <arpa/inet.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define STATE_PATH       "/_piko/v1/cluster/state"
#define MAX_ADDRS        1024
#define LINK_BACKOFF_MAX 2000

struct pk_ep_deadline {
    char *id;
    uint64_t deadline_ms;
};

enum peer_role { ROLE_UNKNOWN, ROLE_PEER, ROLE_SELF, ROLE_ALIAS };

struct peer {
    struct pk_list link; /* in c->peers */
    struct pk_cluster *c;
    char *host; /* an IP literal */
    uint16_t port;
    char addr[80]; /* "ip:port" / "[ip6]:port" */
    unsigned gen;  /* discovery round that last listed it */
    enum peer_role role;
    /* control plane */
    bool have_state;          /* st is this peer's current table */
    struct pk_node_state st;  /* node id and incarnation stay after it turns unreachable */
    uint64_t last_ok_ms;      /* last successful state answer */
    bool unreachable;         /* out of routing */
    uint64_t unreachable_ms;  /* since when */
    struct pk_httpc_req *req; /* fetch or long poll in flight */
    /* Its "moving" endpoints with absolute deadlines; kept when it turns unreachable (it
     * may have exited right after publishing them). */
    struct pk_ep_deadline *moving;
    size_t nmoving;
    struct event *watch_ev; /* next fetch (after a failure) */
    uint64_t watch_backoff_ms;
    bool failing;       /* the last fetch failed (for logs) */
    bool answered;      /* the first fetch finished, well or not */
    int failing_status; /* HTTP status of the last failure, to log each new one once */
    /* data plane */
    struct pk_h2conn *h2;
    bool released; /* forgotten; freed when its link has closed */
    struct pk_dial *dial;
    struct pk_tls_connect *tlsc; /* the link's TLS handshake */
    struct event *link_ev;
    uint64_t link_backoff_ms;
};

struct join_job {
    struct pk_join_item item;
    char **addrs; /* last good answer: "host\0port" pairs as strings "ip|port" */
    size_t naddrs;
    /* the round in flight */
    struct pk_resolve_req *srv_req;
    struct pk_resolve_req **reqs;
    size_t nreqs, pending;
    char **new_addrs;
    size_t nnew;
    bool failed;
    struct pk_cluster *c;
};

struct pk_cluster {
    struct event_base *base;
    struct pk_resolver *res;
    struct pk_httpc *http;
    char *node_id;
    char *auth_header; /* "piko-authorization: Bearer ..." or NULL */
    uint64_t resolve_ms, peer_timeout_ms;
    const struct pk_h2_settings *link_settings;
    SSL_CTX *tls_ctx; /* NULL: plain cluster */
    const struct pk_cluster_cbs *cbs;
    void *ud;
    struct join_job *jobs;
    size_t njobs;
    size_t jobs_pending;
    unsigned gen;
    bool discovered;   /* the first discovery round is done */
    uint64_t start_ms; /* for pk_cluster_synced's bound */
    struct pk_list peers;
    size_t nlinks;
    bool stopped;
    struct event *resolve_ev;
    struct event *tick_ev;
    struct event *change_ev;
};

static void peer_watch(struct peer *p);
static void peer_free(struct peer *p);
static void peer_link_ensure(struct peer *p);

static void notify_change(struct pk_cluster *c)
{
    if (!c->stopped)
        event_active(c->change_ev, EV_TIMEOUT, 0);
}

static void change_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_cluster *c = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (c->cbs->on_change)
        c->cbs->on_change(c->ud);
}

static void add_ms(struct event *ev, uint64_t ms)
{
    struct timeval tv = pk_ms_timeval(ms);
    event_add(ev, &tv);
}

static uint32_t rand32(void)
{
    return (uint32_t)pk_random_u64();
}

/* ---- peers ---------------------------------------------------------------------------- */

static bool routable(const struct peer *p)
{
    return p->role == ROLE_PEER && p->have_state && !p->unreachable;
}

static const char *peer_name(const struct peer *p)
{
    return p->st.node_id ? p->st.node_id : p->addr;
}

static struct peer *peer_find(struct pk_cluster *c, const char *host, uint16_t port)
{
    for (struct pk_list *l = c->peers.next; l != &c->peers; l = l->next) {
        struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
        if (p->port == port && strcmp(p->host, host) == 0)
            return p;
    }
    return NULL;
}

static void link_cb(evutil_socket_t fd, short what, void *arg);
static void watch_cb(evutil_socket_t fd, short what, void *arg);

static struct peer *peer_new(struct pk_cluster *c, const char *host, uint16_t port)
{
    struct peer *p = pk_xcalloc(1, sizeof(*p));
    p->c = c;
    p->host = pk_xstrdup(host);
    p->port = port;
    snprintf(p->addr, sizeof(p->addr), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
    pk_node_state_init(&p->st);
    p->watch_ev = pk_xevent_new(c->base, -1, 0, watch_cb, p);
    p->link_ev = pk_xevent_new(c->base, -1, 0, link_cb, p);
    pk_list_insert(&c->peers, &p->link);
    PK_DEBUG("cluster", "discovered address=%s", p->addr);
    return p;
}

/* Forgets a peer. Its link, if any, is closed; the peer is freed by the link's on_close. */
static void peer_release(struct peer *p)
{
    pk_list_remove(&p->link);
    pk_httpc_cancel(p->req);
    p->req = NULL;
    pk_dial_cancel(p->dial);
    p->dial = NULL;
    pk_tls_connect_cancel(p->tlsc);
    p->tlsc = NULL;
    event_del(p->watch_ev);
    event_del(p->link_ev);
    if (p->have_state)
        notify_change(p->c);
    p->have_state = false;
    p->role = ROLE_UNKNOWN;
    p->released = true;
    if (p->h2) {
        pk_h2conn_close(p->h2, "peer forgotten");
        return; /* freed in link_closed */
    }
    peer_free(p);
}

/* ---- peer links (data plane) ----------------------------------------------------------- */

static void link_ready(struct pk_h2conn *h2, void *ud)
{
    struct peer *p = ud;
    PK_UNUSED(h2);
    p->link_backoff_ms = 0;
    PK_INFO("cluster", "peer link up node=%s address=%s", peer_name(p), p->addr);
    notify_change(p->c);
}

static void moving_clear(struct peer *p)
{
    for (size_t i = 0; i < p->nmoving; i++)
        free(p->moving[i].id);
    free(p->moving);
    p->moving = NULL;
    p->nmoving = 0;
}

static void peer_free(struct peer *p)
{
    moving_clear(p);
    event_free(p->watch_ev);
    event_free(p->link_ev);
    pk_node_state_free(&p->st);
    free(p->host);
    free(p);
}

/* Dials the link again later: 100 ms doubling to LINK_BACKOFF_MAX. */
static void link_retry(struct peer *p)
{
    p->link_backoff_ms =
        p->link_backoff_ms ? PK_MIN(p->link_backoff_ms * 2, LINK_BACKOFF_MAX) : 100;
    add_ms(p->link_ev, p->link_backoff_ms);
}

static void link_closed(struct pk_h2conn *h2, const char *why, void *ud)
{
    struct peer *p = ud;
    struct pk_cluster *c = p->c;
    PK_UNUSED(h2);
    p->h2 = NULL;
    c->nlinks--;
    if (p->released) {
        peer_free(p); /* forgotten while its link was open */
        return;
    }
    PK_INFO("cluster", "peer link closed node=%s address=%s: %s", peer_name(p), p->addr, why);
    if (routable(p) && !c->stopped)
        link_retry(p);
}

static void link_stream_closed(struct pk_h2conn *h2, void *ud)
{
    struct peer *p = ud;
    PK_UNUSED(h2);
    /* A slot is free: requests waiting for this link may go now. */
    if (p->c->cbs->on_slot)
        p->c->cbs->on_slot(p->c->ud);
}

static const struct pk_h2conn_cbs link_cbs = {
    .on_ready = link_ready,
    .on_stream_closed = link_stream_closed,
    .on_close = link_closed,
};

static void link_dialled(int err, struct bufferevent *bev, const char *why, void *arg);

/* The link's TLS handshake is done (cluster TLS): on with HTTP/2. */
static void link_tls_done(int err, struct bufferevent *bev, const char *why, void *arg)
{
    struct peer *p = arg;
    p->tlsc = NULL;
    link_dialled(err, bev, why, arg);
}

static void link_dialled(int err, struct bufferevent *bev, const char *why, void *arg)
{
    struct peer *p = arg;
    struct pk_cluster *c = p->c;
    if (!err && p->dial && c->tls_ctx) {
        p->dial = NULL;
        p->tlsc = pk_tls_connect(c->base, bev, c->tls_ctx, p->host, false, c->peer_timeout_ms,
                                 link_tls_done, p);
        return;
    }
    p->dial = NULL;
    if (err) {
        PK_INFO("cluster", "peer link to node=%s address=%s failed: %s", peer_name(p), p->addr,
                why);
        link_retry(p);
        return;
    }
    char name[160];
    snprintf(name, sizeof(name), "peer/%s", p->addr);
    p->h2 = pk_h2conn_new(c->base, bev, false, c->link_settings, &link_cbs, p, name);
    if (p->h2)
        c->nlinks++;
}

static void peer_link_ensure(struct peer *p)
{
    if (p->c->stopped || !routable(p) || p->h2 || p->dial || p->tlsc ||
        event_pending(p->link_ev, EV_TIMEOUT, NULL))
        return;
    p->dial = pk_dial_start(p->c->base, p->c->res, p->host, p->port, p->c->peer_timeout_ms,
                            link_dialled, p);
}

static void link_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    peer_link_ensure(arg);
}

/* ---- watch (control plane) ------------------------------------------------------------- */

static void watch_retry(struct peer *p)
{
    uint64_t cap = PK_MIN((uint64_t)1000, PK_MAX(p->c->peer_timeout_ms / 4, (uint64_t)50));
    p->watch_backoff_ms = p->watch_backoff_ms ? PK_MIN(p->watch_backoff_ms * 2, cap) : 50;
    add_ms(p->watch_ev, p->watch_backoff_ms);
}

static bool another_has(struct pk_cluster *c, const struct peer *self, const char *node_id,
                        const char *incarnation)
{
    for (struct pk_list *l = c->peers.next; l != &c->peers; l = l->next) {
        struct peer *q = PK_CONTAINER_OF(l, struct peer, link);
        if (q != self && q->role == ROLE_PEER && q->st.node_id &&
            strcmp(q->st.node_id, node_id) == 0 && strcmp(q->st.incarnation, incarnation) == 0)
            return true;
    }
    return false;
}

static void watch_done(int status, const char *body, size_t len, const char *errmsg, void *arg)
{
    struct peer *p = arg;
    struct pk_cluster *c = p->c;
    p->req = NULL;
    p->answered = true;
    struct pk_node_state st;
    char err[256] = "";
    if (status != 200 || pk_node_state_parse(body, len, &st, err, sizeof(err)) != 0) {
        if (status == 0)
            snprintf(err, sizeof(err), "%s", errmsg ? errmsg : "transfer failed");
        else if (status != 200)
            snprintf(err, sizeof(err), "status %d%s", status,
                     status == 401 ? " (cluster.secret differs)" : "");
        if (!p->failing && (p->have_state || status == 401 || status == 403))
            PK_WARN("cluster", "peer state fetch failed node=%s address=%s: %s", peer_name(p),
                    p->addr, err);
        else if ((status >= 400 && p->failing_status != status) ||
                 (status == 0 && !p->failing && strstr(err, "SSL")))
            /* A TLS failure (a peer's certificate not trusted...) is a configuration
             * problem: said once per streak of failures. */
            PK_WARN("cluster", "peer state fetch failed address=%s: %s", p->addr, err);
        else
            PK_DEBUG("cluster", "peer state fetch failed address=%s: %s", p->addr, err);
        p->failing = true;
        p->failing_status = status;
        watch_retry(p);
        return;
    }
    p->failing = false;
    p->failing_status = 0;
    p->watch_backoff_ms = 0;
    p->last_ok_ms = pk_now_ms();
    if (strcmp(st.node_id, c->node_id) == 0) {
        PK_DEBUG("cluster", "address=%s is this node", p->addr);
        p->role = ROLE_SELF;
        pk_node_state_free(&st);
        return; /* not watched any more */
    }
    if (p->role != ROLE_PEER && another_has(c, p, st.node_id, st.incarnation)) {
        PK_DEBUG("cluster", "address=%s is another address of node=%s", p->addr, st.node_id);
        p->role = ROLE_ALIAS;
        pk_node_state_free(&st);
        return;
    }
    p->role = ROLE_PEER;
    bool same_life = p->st.node_id && strcmp(p->st.node_id, st.node_id) == 0 &&
                     strcmp(p->st.incarnation, st.incarnation) == 0;
    bool changed = !p->have_state || !same_life || st.version != p->st.version;
    if (!p->have_state || p->unreachable)
        PK_INFO("cluster", "peer %s node=%s address=%s endpoints=%zu draining=%d",
                p->unreachable && same_life ? "reachable again" : "joined", st.node_id, p->addr,
                st.neps, st.draining);
    else if (!same_life)
        PK_INFO("cluster", "peer restarted node=%s address=%s (new incarnation)", st.node_id,
                p->addr);
    else if (st.draining && !p->st.draining)
        PK_INFO("cluster", "peer draining node=%s", st.node_id);
    if (!same_life && p->h2)
        pk_h2conn_close(p->h2, "peer restarted");
    if (changed || !same_life) {
        moving_clear(p);
        if (st.nmoving) {
            uint64_t now = pk_now_ms();
            p->moving = pk_xcalloc(st.nmoving, sizeof(*p->moving));
            for (size_t i = 0; i < st.nmoving; i++) {
                p->moving[i].id = pk_xstrdup(st.moving[i].id);
                p->moving[i].deadline_ms = now + st.moving[i].n;
            }
            p->nmoving = st.nmoving;
        }
        pk_node_state_move(&p->st, &st);
    } else
        pk_node_state_free(&st);
    p->have_state = true;
    p->unreachable = false;
    if (changed)
        notify_change(c);
    peer_link_ensure(p);
    peer_watch(p);
}

static void peer_watch(struct peer *p)
{
    struct pk_cluster *c = p->c;
    if (c->stopped || p->req || p->role == ROLE_SELF || p->role == ROLE_ALIAS)
        return;
    char url[512];
    uint64_t wait = PK_MAX(c->peer_timeout_ms / 2, (uint64_t)50);
    if (p->have_state && !p->unreachable)
        snprintf(url, sizeof(url), "%s://%s" STATE_PATH "?after=%llu&wait=%llums",
                 c->tls_ctx ? "https" : "http", p->addr, (unsigned long long)p->st.version,
                 (unsigned long long)wait);
    else
        snprintf(url, sizeof(url), "%s://%s" STATE_PATH, c->tls_ctx ? "https" : "http", p->addr);
    const char *hdrs[] = {c->auth_header, NULL};
    p->req = pk_httpc_get(c->http, url, c->auth_header ? hdrs : NULL, wait + c->peer_timeout_ms / 2,
                          watch_done, p);
    if (!p->req)
        watch_retry(p);
}

static void watch_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    peer_watch(arg);
}

/* Marks peers that stayed silent too long as unreachable, and stops listing them later. */
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_cluster *c = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    uint64_t now = pk_now_ms();
    for (struct pk_list *l = c->peers.next; l != &c->peers; l = l->next) {
        struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
        bool expired = false;
        for (size_t i = 0; i < p->nmoving; i++)
            expired = expired || p->moving[i].deadline_ms <= now;
        if (expired) {
            /* Requests waiting for these endpoints fail now unless a tunnel turned up. */
            size_t k = 0;
            for (size_t i = 0; i < p->nmoving; i++) {
                if (p->moving[i].deadline_ms <= now)
                    free(p->moving[i].id);
                else
                    p->moving[k++] = p->moving[i];
            }
            p->nmoving = k;
            notify_change(c);
        }
        if (p->role != ROLE_PEER || p->unreachable || now - p->last_ok_ms <= c->peer_timeout_ms)
            continue;
        PK_WARN("cluster", "peer unreachable node=%s address=%s: no state for %llums", peer_name(p),
                p->addr, (unsigned long long)(now - p->last_ok_ms));
        p->unreachable = true;
        p->unreachable_ms = now;
        /* Its table never comes back: a later answer is fetched in full. */
        char *id = p->st.node_id, *inc = p->st.incarnation;
        p->st.node_id = p->st.incarnation = NULL;
        pk_node_state_free(&p->st);
        p->st.node_id = id;
        p->st.incarnation = inc;
        p->st.version = 0;
        if (p->h2)
            pk_h2conn_close(p->h2, "peer unreachable");
        pk_httpc_cancel(p->req);
        p->req = NULL;
        event_del(p->watch_ev);
        peer_watch(p);
        notify_change(c);
    }
    add_ms(c->tick_ev, PK_MAX(c->peer_timeout_ms / 10, (uint64_t)20));
}

/* ---- discovery -------------------------------------------------------------------------- */

static void job_add_addr(struct join_job *j, const struct sockaddr *sa)
{
    if (j->nnew >= MAX_ADDRS)
        return;
    char ip[64];
    uint16_t port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        port = ntohs(s4->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        port = ntohs(s6->sin6_port);
    } else {
        return;
    }
    j->new_addrs = pk_xrealloc(j->new_addrs, (j->nnew + 1) * sizeof(char *));
    j->new_addrs[j->nnew++] = pk_xasprintf("%s|%u", ip, port);
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void discovery_commit(struct pk_cluster *c);

static void job_finish(struct join_job *j)
{
    struct pk_cluster *c = j->c;
    free(j->reqs);
    j->reqs = NULL;
    j->nreqs = 0;
    if (!j->failed) {
        free_strv(j->addrs, j->naddrs);
        j->addrs = j->new_addrs;
        j->naddrs = j->nnew;
    } else {
        free_strv(j->new_addrs, j->nnew);
    }
    j->new_addrs = NULL;
    j->nnew = 0;
    if (--c->jobs_pending == 0)
        discovery_commit(c);
}

static void addr_resolved(int err, const struct pk_addrs *addrs, void *arg)
{
    struct join_job *j = arg;
    if (err) {
        PK_WARN("cluster", "cluster.join: cannot resolve '%s': %s", j->item.name,
                pk_resolve_errstr(j->c->res));
        /* One SRV target failing is not the whole answer failing. */
        if (j->item.kind != PK_JOIN_SRV)
            j->failed = true;
    } else {
        size_t n = j->item.kind == PK_JOIN_HOSTPORT ? 1 : addrs->n;
        for (size_t i = 0; i < n; i++)
            job_add_addr(j, (const struct sockaddr *)&addrs->v[i].ss);
    }
    if (--j->pending == 0)
        job_finish(j);
}

static void srv_resolved(int err, const struct pk_srvs *srvs, void *arg)
{
    struct join_job *j = arg;
    j->srv_req = NULL;
    if (err) {
        PK_WARN("cluster", "cluster.join: SRV lookup of '%s' failed: %s", j->item.name,
                pk_resolve_errstr(j->c->res));
        j->failed = err != PK_ERR_NOTFOUND; /* no records at all: nobody is there */
        j->pending = 1;
        job_finish(j);
        return;
    }
    j->reqs = pk_xcalloc(srvs->n, sizeof(*j->reqs));
    j->pending = srvs->n;
    j->nreqs = 0;
    for (size_t i = 0; i < srvs->n; i++) {
        struct pk_resolve_req *r =
            pk_resolve(j->c->res, srvs->v[i].target, srvs->v[i].port, addr_resolved, j);
        if (r)
            j->reqs[j->nreqs++] = r;
        else
            j->pending--;
    }
    if (j->pending == 0)
        job_finish(j);
}

static void discovery_start(struct pk_cluster *c)
{
    if (c->jobs_pending || c->stopped)
        return;
    c->jobs_pending = c->njobs;
    for (size_t i = 0; i < c->njobs; i++) {
        struct join_job *j = &c->jobs[i];
        j->failed = false;
        j->nnew = 0;
        if (j->item.kind == PK_JOIN_SRV) {
            j->srv_req = pk_resolve_srv(c->res, j->item.name, srv_resolved, j);
        } else {
            j->reqs = pk_xcalloc(1, sizeof(*j->reqs));
            j->pending = 1;
            j->reqs[0] = pk_resolve(c->res, j->item.name, j->item.port, addr_resolved, j);
            j->nreqs = 1;
        }
    }
}

/* Every job answered: peers listed by some job stay, new ones are watched, the others
 * are forgotten. */
static void discovery_commit(struct pk_cluster *c)
{
    c->gen++;
    c->discovered = true;
    for (size_t i = 0; i < c->njobs; i++) {
        struct join_job *j = &c->jobs[i];
        for (size_t k = 0; k < j->naddrs; k++) {
            char host[64];
            char *bar = strrchr(j->addrs[k], '|');
            snprintf(host, sizeof(host), "%.*s", (int)(bar - j->addrs[k]), j->addrs[k]);
            uint16_t port = (uint16_t)atoi(bar + 1);
            struct peer *p = peer_find(c, host, port);
            if (!p)
                p = peer_new(c, host, port);
            p->gen = c->gen;
            peer_watch(p);
        }
    }
    struct pk_list *l, *next;
    for (l = c->peers.next; l != &c->peers; l = next) {
        next = l->next;
        struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
        if (p->gen != c->gen) {
            if (p->role == ROLE_PEER)
                PK_INFO("cluster", "peer forgotten node=%s address=%s: no longer discovered",
                        peer_name(p), p->addr);
            peer_release(p);
        }
    }
    add_ms(c->resolve_ev, c->resolve_ms);
}

static void resolve_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    discovery_start(arg);
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

struct pk_cluster *pk_cluster_new(struct event_base *base, struct pk_resolver *res,
                                  const struct pk_cluster_opts *o, const struct pk_cluster_cbs *cbs,
                                  void *ud, char *err, size_t errlen)
{
    struct pk_join_item *items;
    size_t n;
    if (pk_join_parse(o->join, &items, &n, err, errlen) != 0)
        return NULL;
    struct pk_cluster *c = pk_xcalloc(1, sizeof(*c));
    c->base = base;
    c->res = res;
    c->http = pk_httpc_new(base, PK_STATE_MAX_BYTES);
    if (!c->http) {
        snprintf(err, errlen, "cluster: cannot start the HTTP client");
        pk_join_free(items, n);
        free(c);
        return NULL;
    }
    c->node_id = pk_xstrdup(o->node_id);
    if (o->secret && *o->secret)
        c->auth_header = pk_xasprintf("piko-authorization: Bearer %s", o->secret);
    c->resolve_ms = o->resolve_interval_ms;
    c->peer_timeout_ms = o->peer_timeout_ms;
    c->link_settings = o->link_settings;
    if (o->tls_ctx) {
        pk_cluster_set_tls_ctx(c, o->tls_ctx);
        pk_httpc_set_tls(c->http, o->tls_files->root_cas, o->tls_files->cert, o->tls_files->key);
    }
    c->cbs = cbs;
    c->ud = ud;
    c->njobs = n;
    c->jobs = n ? pk_xcalloc(n, sizeof(*c->jobs)) : NULL;
    for (size_t i = 0; i < n; i++) {
        c->jobs[i].item = items[i];
        c->jobs[i].c = c;
    }
    free(items); /* the names moved into the jobs */
    pk_list_init(&c->peers);
    c->resolve_ev = pk_xevent_new(base, -1, 0, resolve_cb, c);
    c->tick_ev = pk_xevent_new(base, -1, 0, tick_cb, c);
    c->change_ev = pk_xevent_new(base, -1, 0, change_cb, c);
    add_ms(c->tick_ev, PK_MAX(c->peer_timeout_ms / 10, (uint64_t)20));
    c->start_ms = pk_now_ms();
    c->discovered = n == 0;
    if (n)
        discovery_start(c);
    return c;
}

void pk_cluster_stop(struct pk_cluster *c)
{
    if (!c || c->stopped)
        return;
    c->stopped = true;
    event_del(c->resolve_ev);
    event_del(c->tick_ev);
    event_del(c->change_ev);
    for (size_t i = 0; i < c->njobs; i++) {
        struct join_job *j = &c->jobs[i];
        pk_resolve_cancel(j->srv_req);
        j->srv_req = NULL;
        for (size_t k = 0; k < j->nreqs; k++)
            pk_resolve_cancel(j->reqs[k]);
        free(j->reqs);
        j->reqs = NULL;
        j->nreqs = 0;
    }
    while (!pk_list_empty(&c->peers))
        peer_release(PK_CONTAINER_OF(c->peers.next, struct peer, link));
}

void pk_cluster_set_tls_ctx(struct pk_cluster *c, struct ssl_ctx_st *ctx)
{
    if (!c)
        return;
    SSL_CTX_up_ref(ctx);
    SSL_CTX_free(c->tls_ctx);
    c->tls_ctx = ctx;
}

size_t pk_cluster_nlinks(const struct pk_cluster *c)
{
    return c ? c->nlinks : 0;
}

void pk_cluster_free(struct pk_cluster *c)
{
    if (!c)
        return;
    pk_cluster_stop(c);
    for (size_t i = 0; i < c->njobs; i++) {
        free(c->jobs[i].item.name);
        free_strv(c->jobs[i].addrs, c->jobs[i].naddrs);
        free_strv(c->jobs[i].new_addrs, c->jobs[i].nnew);
    }
    free(c->jobs);
    pk_httpc_free(c->http);
    event_free(c->resolve_ev);
    event_free(c->tick_ev);
    event_free(c->change_ev);
    free(c->node_id);
    free(c->auth_header);
    SSL_CTX_free(c->tls_ctx);
    free(c);
}

/* ---- routing ------------------------------------------------------------------------------ */

struct pk_peer *pk_cluster_pick(struct pk_cluster *c, const char *endpoint,
                                const struct pk_peer *avoid, bool *exists)
{
    *exists = false;
    if (!c)
        return NULL;
    struct peer *cand[64];
    uint32_t w[64];
    size_t n = 0;
    /* Pass 0: non-draining peers; pass 1: draining ones, only when pass 0 found none. */
    for (int pass = 0; pass < 2 && n == 0; pass++) {
        for (struct pk_list *l = c->peers.next; l != &c->peers && n < 64; l = l->next) {
            struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
            if (!routable(p) || p->st.draining != (pass == 1))
                continue;
            uint32_t cnt = pk_node_state_count(&p->st, endpoint);
            if (!cnt)
                continue;
            if ((const struct pk_peer *)p == avoid)
                continue; /* the retry of a refused stream goes elsewhere or nowhere */
            *exists = true;
            if (!p->h2 || !pk_h2conn_can_open(p->h2)) {
                peer_link_ensure(p);
                continue;
            }
            cand[n] = p;
            w[n++] = cnt;
        }
    }
    if (n == 0) {
        /* Nobody holds it, but a draining node may have just sent its tunnels away. */
        uint64_t now = pk_now_ms();
        for (struct pk_list *l = c->peers.next; l != &c->peers && !*exists; l = l->next) {
            struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
            for (size_t k = 0; k < p->nmoving && !*exists; k++)
                *exists = p->moving[k].deadline_ms > now && strcmp(p->moving[k].id, endpoint) == 0;
        }
        return NULL;
    }
    size_t i = pk_pick_weighted(w, n, rand32());
    return (struct pk_peer *)cand[i < n ? i : 0];
}

struct pk_h2conn *pk_peer_link(const struct pk_peer *pp)
{
    return ((const struct peer *)pp)->h2;
}

const char *pk_peer_node_id(const struct pk_peer *pp)
{
    return peer_name((const struct peer *)pp);
}

void pk_cluster_totals(const struct pk_cluster *c, size_t *nodes, uint64_t *tunnels)
{
    *nodes = 0;
    *tunnels = 0;
    if (!c)
        return;
    for (struct pk_list *l = c->peers.next; l != &c->peers; l = l->next) {
        const struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
        if (!routable(p) || p->st.draining)
            continue;
        (*nodes)++;
        *tunnels += pk_node_state_tunnels(&p->st);
    }
}

bool pk_cluster_has_active_peer(const struct pk_cluster *c)
{
    if (!c)
        return false;
    for (struct pk_list *l = c->peers.next; l != &c->peers; l = l->next) {
        const struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
        if (routable(p) && !p->st.draining)
            return true;
    }
    return false;
}

bool pk_cluster_synced(const struct pk_cluster *c)
{
    if (!c || pk_now_ms() - c->start_ms > c->peer_timeout_ms)
        return true;
    if (!c->discovered)
        return false;
    for (struct pk_list *l = c->peers.next; l != &c->peers; l = l->next) {
        const struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
        if (!p->answered)
            return false;
    }
    return true;
}

/* ---- status ------------------------------------------------------------------------------- */

static bool listed(const struct pk_cluster *c, const struct peer *p)
{
    if (p->role != ROLE_PEER || !p->st.node_id)
        return false;
    return !p->unreachable || pk_now_ms() - p->unreachable_ms <= c->peer_timeout_ms;
}

static struct json_object *peer_json(const struct peer *p, bool table)
{
    struct json_object *o = json_object_new_object();
    const char *status = p->unreachable ? "unreachable" : p->st.draining ? "draining" : "active";
    json_object_object_add(o, "id", json_object_new_string(p->st.node_id));
    json_object_object_add(o, "status", json_object_new_string(status));
    json_object_object_add(o, "local", json_object_new_boolean(false));
    json_object_object_add(o, "incarnation", json_object_new_string(p->st.incarnation));
    json_object_object_add(o, "version", json_object_new_int64((int64_t)p->st.version));
    json_object_object_add(o, "address", json_object_new_string(p->addr));
    json_object_object_add(o, "proxy_addr",
                           p->st.proxy_addr ? json_object_new_string(p->st.proxy_addr) : NULL);
    json_object_object_add(o, "admin_addr",
                           p->st.admin_addr ? json_object_new_string(p->st.admin_addr) : NULL);
    json_object_object_add(o, "cluster_addr",
                           p->st.cluster_addr ? json_object_new_string(p->st.cluster_addr) : NULL);
    json_object_object_add(o, "endpoints", json_object_new_int64((int64_t)p->st.neps));
    json_object_object_add(o, "tunnels",
                           json_object_new_int64((int64_t)pk_node_state_tunnels(&p->st)));
    json_object_object_add(
        o, "link", json_object_new_string(p->h2 && pk_h2conn_is_ready(p->h2) ? "up" : "down"));
    if (table) {
        struct json_object *t = json_object_new_object();
        for (size_t i = 0; i < p->st.neps; i++)
            json_object_object_add(t, p->st.eps[i].id, json_object_new_int64(p->st.eps[i].n));
        json_object_object_add(o, "endpoint_table", t);
    }
    return o;
}

void pk_cluster_nodes_json(const struct pk_cluster *c, struct json_object *array)
{
    if (!c)
        return;
    for (struct pk_list *l = c->peers.next; l != &c->peers; l = l->next) {
        const struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
        if (listed(c, p))
            json_object_array_add(array, peer_json(p, false));
    }
}

struct json_object *pk_cluster_node_json(const struct pk_cluster *c, const char *id)
{
    if (!c)
        return NULL;
    for (struct pk_list *l = c->peers.next; l != &c->peers; l = l->next) {
        const struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
        if (listed(c, p) && strcmp(p->st.node_id, id) == 0)
            return peer_json(p, true);
    }
    return NULL;
}
