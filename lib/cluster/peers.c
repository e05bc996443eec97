#include "cluster/cluster.h"
#include "cluster/cluster_int.h"

#include "base/base.h"
#include "base/list.h"
#include "base/log.h"
#include "cluster/state.h"
#include "dns/dns.h"
#include "h2/h2.h"
#include "httpc/httpc.h"
#include "net/dial.h"
#include "net/tls.h"

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATE_PATH       "/_piko/v1/cluster/state"
#define LINK_BACKOFF_MAX 2000

static void peer_free(struct peer *p);

/* ---- peers ---------------------------------------------------------------------------- */

bool cluster_peer_routable(const struct peer *p)
{
    return p->role == ROLE_PEER && p->have_state && !p->unreachable;
}

const char *cluster_peer_name(const struct peer *p)
{
    return p->st.node_id ? p->st.node_id : p->addr;
}

struct peer *cluster_peer_find(struct pk_cluster *c, const char *host, uint16_t port)
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

struct peer *cluster_peer_new(struct pk_cluster *c, const char *host, uint16_t port)
{
    struct peer *p = pk_xcalloc(1, sizeof(*p));
    p->c = c;
    p->host = pk_xstrdup(host);
    p->port = port;
    snprintf(p->addr, sizeof(p->addr), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
    p->found_ms = pk_now_ms();
    pk_node_state_init(&p->st);
    p->watch_ev = pk_xevent_new(c->base, -1, 0, watch_cb, p);
    p->link_ev = pk_xevent_new(c->base, -1, 0, link_cb, p);
    pk_list_insert(&c->peers, &p->link);
    PK_DEBUG("cluster", "discovered address=%s", p->addr);
    return p;
}

/* Forgets a peer. Its link, if any, is closed; the peer is freed by the link's on_close. */
void cluster_peer_release(struct peer *p)
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
        cluster_notify_change(p->c);
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
    PK_INFO("cluster", "peer link up node=%s address=%s", cluster_peer_name(p), p->addr);
    cluster_notify_change(p->c);
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
    cluster_add_ms(p->link_ev, p->link_backoff_ms);
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
    PK_INFO("cluster", "peer link closed node=%s address=%s: %s", cluster_peer_name(p), p->addr,
            why);
    if (cluster_peer_routable(p) && !c->stopped)
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
        PK_INFO("cluster", "peer link to node=%s address=%s failed: %s", cluster_peer_name(p),
                p->addr, why);
        link_retry(p);
        return;
    }
    char name[160];
    snprintf(name, sizeof(name), "peer/%s", p->addr);
    p->h2 = pk_h2conn_new(c->base, bev, false, c->link_settings, &link_cbs, p, name);
    if (p->h2)
        c->nlinks++;
}

void cluster_peer_link_ensure(struct peer *p)
{
    if (p->c->stopped || !cluster_peer_routable(p) || p->h2 || p->dial || p->tlsc ||
        event_pending(p->link_ev, EV_TIMEOUT, NULL))
        return;
    p->dial = pk_dial_start(p->c->base, p->c->res, p->host, p->port, p->c->peer_timeout_ms,
                            link_dialled, p);
}

static void link_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    cluster_peer_link_ensure(arg);
}

/* ---- watch (control plane) ------------------------------------------------------------- */

static void watch_retry(struct peer *p)
{
    uint64_t cap = PK_MIN((uint64_t)1000, PK_MAX(p->c->peer_timeout_ms / 4, (uint64_t)50));
    p->watch_backoff_ms = p->watch_backoff_ms ? PK_MIN(p->watch_backoff_ms * 2, cap) : 50;
    cluster_add_ms(p->watch_ev, p->watch_backoff_ms);
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
            PK_WARN("cluster", "peer state fetch failed node=%s address=%s: %s",
                    cluster_peer_name(p), p->addr, err);
        else if ((status >= 400 && p->failing_status != status) ||
                 (status == 0 && !p->failing && strstr(err, "SSL")))
            /* A TLS failure (a peer's certificate not trusted...) is a configuration
             * problem: said once per streak of failures. */
            PK_WARN("cluster", "peer state fetch failed address=%s: %s", p->addr, err);
        else
            PK_DEBUG("cluster", "peer state fetch failed address=%s: %s", p->addr, err);
        snprintf(p->last_error, sizeof(p->last_error), "%s", err);
        c->counters.state_failed++;
        p->failing = true;
        p->failing_status = status;
        watch_retry(p);
        return;
    }
    p->failing = false;
    p->failing_status = 0;
    p->watch_backoff_ms = 0;
    p->last_ok_ms = pk_now_ms();
    c->counters.state_received++;
    if (p->unreachable && !p->st.node_id) {
        /* Its silence was said at warn: its first answer is said too. */
        PK_INFO("cluster", "peer %s answered after %.1fs unreachable node=%s", p->addr,
                (double)(p->last_ok_ms - p->found_ms) / 1000.0, st.node_id);
        p->unreachable = false;
    }
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
        cluster_notify_change(c);
    cluster_peer_link_ensure(p);
    cluster_peer_watch(p);
}

void cluster_peer_watch(struct peer *p)
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
    cluster_peer_watch(arg);
}

/* Marks peers that stayed silent too long as unreachable, and stops listing them later. */
void cluster_tick_cb(evutil_socket_t fd, short what, void *arg)
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
            cluster_notify_change(c);
        }
        if (p->role == ROLE_UNKNOWN && !p->unreachable && now - p->found_ms > c->peer_timeout_ms) {
            /* An address of cluster.join that never answered: without this the node would
             * report ready alone and say nothing above debug. Said once, until it answers. */
            PK_WARN("cluster", "peer %s unreachable after %.1fs: %s", p->addr,
                    (double)(now - p->found_ms) / 1000.0,
                    p->last_error[0] ? p->last_error : "no answer to the state call yet");
            p->unreachable = true;
            p->unreachable_ms = now;
            c->counters.peer_unreachable++;
            continue;
        }
        if (p->role != ROLE_PEER || p->unreachable || now - p->last_ok_ms <= c->peer_timeout_ms)
            continue;
        PK_WARN("cluster", "peer unreachable node=%s address=%s: no state for %llums",
                cluster_peer_name(p), p->addr, (unsigned long long)(now - p->last_ok_ms));
        p->unreachable = true;
        p->unreachable_ms = now;
        c->counters.peer_unreachable++;
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
        cluster_peer_watch(p);
        cluster_notify_change(c);
    }
    cluster_add_ms(c->tick_ev, PK_MAX(c->peer_timeout_ms / 10, (uint64_t)20));
}
