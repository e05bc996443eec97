#include "cluster/cluster.h"
#include "cluster/cluster_int.h"

#include "base/base.h"
#include "base/list.h"
#include "base/log.h"
#include "cluster/state.h"
#include "dns/dns.h"
#include "h2/h2.h"
#include "httpc/httpc.h"
#include "net/tls.h"

#include <event2/event.h>
#include <json-c/json.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cluster_notify_change(struct pk_cluster *c)
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

void cluster_add_ms(struct event *ev, uint64_t ms)
{
    struct timeval tv = pk_ms_timeval(ms);
    event_add(ev, &tv);
}

static uint32_t rand32(void)
{
    return (uint32_t)pk_random_u64();
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
    c->resolve_ev = pk_xevent_new(base, -1, 0, cluster_resolve_cb, c);
    c->tick_ev = pk_xevent_new(base, -1, 0, cluster_tick_cb, c);
    c->change_ev = pk_xevent_new(base, -1, 0, change_cb, c);
    cluster_add_ms(c->tick_ev, PK_MAX(c->peer_timeout_ms / 10, (uint64_t)20));
    c->start_ms = pk_now_ms();
    c->discovered = n == 0;
    if (n)
        cluster_discovery_start(c);
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
        for (size_t k = 0; k < j->nlookups; k++)
            pk_resolve_cancel(j->lookups[k].req);
        free(j->lookups);
        j->lookups = NULL;
        j->nlookups = 0;
    }
    while (!pk_list_empty(&c->peers))
        cluster_peer_release(PK_CONTAINER_OF(c->peers.next, struct peer, link));
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

void pk_cluster_del(struct pk_cluster *c)
{
    if (!c)
        return;
    pk_cluster_stop(c);
    for (size_t i = 0; i < c->njobs; i++) {
        free(c->jobs[i].item.name);
        cluster_free_strv(c->jobs[i].addrs, c->jobs[i].naddrs);
        cluster_free_strv(c->jobs[i].new_addrs, c->jobs[i].nnew);
    }
    free(c->jobs);
    pk_httpc_del(c->http);
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
            if (!cluster_peer_routable(p) || p->st.draining != (pass == 1))
                continue;
            uint32_t cnt = pk_node_state_count(&p->st, endpoint);
            if (!cnt)
                continue;
            if ((const struct pk_peer *)p == avoid)
                continue; /* the retry of a refused stream goes elsewhere or nowhere */
            *exists = true;
            if (!p->h2 || !pk_h2conn_can_open(p->h2)) {
                cluster_peer_link_ensure(p);
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
    return cluster_peer_name((const struct peer *)pp);
}

void pk_cluster_totals(const struct pk_cluster *c, size_t *nodes, uint64_t *tunnels)
{
    *nodes = 0;
    *tunnels = 0;
    if (!c)
        return;
    for (struct pk_list *l = c->peers.next; l != &c->peers; l = l->next) {
        const struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
        if (!cluster_peer_routable(p) || p->st.draining)
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
        if (cluster_peer_routable(p) && !p->st.draining)
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

const struct pk_cluster_counters *pk_cluster_counters(const struct pk_cluster *c)
{
    static const struct pk_cluster_counters none;
    return c ? &c->counters : &none;
}

/* Known peers, and for a while after they turned unreachable; addresses that never
 * answered, while discovery returns them. */
static bool listed(const struct pk_cluster *c, const struct peer *p)
{
    if (p->role == ROLE_UNKNOWN && p->unreachable)
        return true;
    if (p->role != ROLE_PEER || !p->st.node_id)
        return false;
    return !p->unreachable || pk_now_ms() - p->unreachable_ms <= c->peer_timeout_ms;
}

static struct json_object *string_or_null(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

static struct json_object *peer_json(const struct peer *p, bool table)
{
    struct json_object *o = json_object_new_object();
    const char *status = p->unreachable ? "unreachable" : p->st.draining ? "draining" : "active";
    /* An address that never answered is known by its address only. */
    json_object_object_add(o, "id", json_object_new_string(cluster_peer_name(p)));
    json_object_object_add(o, "status", json_object_new_string(status));
    json_object_object_add(o, "local", json_object_new_boolean(false));
    json_object_object_add(o, "incarnation", string_or_null(p->st.incarnation));
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
    if (p->unreachable && p->last_error[0])
        json_object_object_add(o, "error", json_object_new_string(p->last_error));
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

const char *pk_cluster_node_addr(const struct pk_cluster *c, const char *id)
{
    if (!c)
        return NULL;
    for (struct pk_list *l = c->peers.next; l != &c->peers; l = l->next) {
        const struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
        if (listed(c, p) && p->st.node_id && strcmp(p->st.node_id, id) == 0)
            return p->addr;
    }
    return NULL;
}

struct json_object *pk_cluster_node_json(const struct pk_cluster *c, const char *id)
{
    if (!c)
        return NULL;
    for (struct pk_list *l = c->peers.next; l != &c->peers; l = l->next) {
        const struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
        if (listed(c, p) && p->st.node_id && strcmp(p->st.node_id, id) == 0)
            return peer_json(p, true);
    }
    return NULL;
}

void pk_cluster_census(const struct pk_cluster *c, struct pk_cluster_census *out)
{
    memset(out, 0, sizeof(*out));
    if (!c)
        return;
    for (struct pk_list *l = c->peers.next; l != &c->peers; l = l->next) {
        const struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
        if (!listed(c, p))
            continue;
        if (p->unreachable)
            out->unreachable++;
        else if (p->st.draining)
            out->draining++;
        else
            out->active++;
    }
}
