#include "cluster/cluster.h"
#include "cluster/cluster_int.h"

#include "base/base.h"
#include "base/list.h"
#include "base/log.h"
#include "cluster/state.h"
#include "dns/dns.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ADDRS 1024

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

void cluster_free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void discovery_commit(struct pk_cluster *c);

static void job_finish(struct join_job *j)
{
    struct pk_cluster *c = j->c;
    free(j->lookups);
    j->lookups = NULL;
    j->nlookups = 0;
    if (!j->failed) {
        cluster_free_strv(j->addrs, j->naddrs);
        j->addrs = j->new_addrs;
        j->naddrs = j->nnew;
    } else {
        cluster_free_strv(j->new_addrs, j->nnew);
    }
    j->new_addrs = NULL;
    j->nnew = 0;
    if (--c->jobs_pending == 0)
        discovery_commit(c);
}

static void addr_resolved(int err, const struct pk_addrs *addrs, void *arg)
{
    struct job_lookup *lk = arg;
    struct join_job *j = lk->j;
    lk->req = NULL; /* answered: the resolver frees it */
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
    j->lookups = pk_xcalloc(srvs->n ? srvs->n : 1, sizeof(*j->lookups));
    j->pending = srvs->n;
    j->nlookups = 0;
    for (size_t i = 0; i < srvs->n; i++) {
        struct job_lookup *lk = &j->lookups[j->nlookups];
        lk->j = j;
        lk->req = pk_resolve(j->c->res, srvs->v[i].target, srvs->v[i].port, addr_resolved, lk);
        if (lk->req)
            j->nlookups++;
        else
            j->pending--;
    }
    if (j->pending == 0)
        job_finish(j);
}

void cluster_discovery_start(struct pk_cluster *c)
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
            j->lookups = pk_xcalloc(1, sizeof(*j->lookups));
            j->lookups[0].j = j;
            j->pending = 1;
            j->nlookups = 1;
            j->lookups[0].req =
                pk_resolve(c->res, j->item.name, j->item.port, addr_resolved, &j->lookups[0]);
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
            struct peer *p = cluster_peer_find(c, host, port);
            if (!p)
                p = cluster_peer_new(c, host, port);
            p->gen = c->gen;
            cluster_peer_watch(p);
        }
    }
    struct pk_list *l, *next;
    for (l = c->peers.next; l != &c->peers; l = next) {
        next = l->next;
        struct peer *p = PK_CONTAINER_OF(l, struct peer, link);
        if (p->gen != c->gen) {
            if (p->role == ROLE_PEER)
                PK_INFO("cluster", "peer forgotten node=%s address=%s: no longer discovered",
                        cluster_peer_name(p), p->addr);
            cluster_peer_release(p);
        }
    }
    cluster_add_ms(c->resolve_ev, c->resolve_ms);
}

void cluster_resolve_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    cluster_discovery_start(arg);
}
