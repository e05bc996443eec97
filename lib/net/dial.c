#include "net/dial.h"

#include "base/base.h"
#include "dns/dns.h"
#include "net/net.h"

#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pk_dial {
    struct event_base *base;
    struct pk_resolve_req *rr;
    struct bufferevent *bev;
    struct pk_addrs addrs;
    size_t next;
    uint64_t timeout_ms;
    pk_dial_cb cb;
    void *arg;
    char why[256];
    char host[256];
};

static void dial_free(struct pk_dial *d)
{
    if (d->rr)
        pk_resolve_cancel(d->rr);
    if (d->bev)
        bufferevent_free(d->bev);
    free(d->addrs.v);
    free(d);
}

static void try_next(struct pk_dial *d);

static void finish(struct pk_dial *d, int err)
{
    struct bufferevent *bev = d->bev;
    d->bev = NULL;
    if (bev) {
        bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
        bufferevent_set_timeouts(bev, NULL, NULL);
        bufferevent_disable(bev, EV_READ | EV_WRITE);
    }
    d->cb(err, bev, d->why, d->arg);
    dial_free(d);
}

static void connect_event(struct bufferevent *bev, short what, void *arg)
{
    struct pk_dial *d = arg;
    PK_UNUSED(bev);
    if (what & BEV_EVENT_CONNECTED) {
        pk_tune_socket(bufferevent_getfd(d->bev));
        d->why[0] = '\0';
        finish(d, 0);
        return;
    }
    char a[PK_ADDR_STRLEN];
    struct pk_addr *pa = &d->addrs.v[d->next - 1];
    int e = EVUTIL_SOCKET_ERROR();
    snprintf(d->why, sizeof(d->why), "%s: %s",
             pk_addr_str((struct sockaddr *)&pa->ss, a, sizeof(a)),
             (what & BEV_EVENT_TIMEOUT) ? "connect timeout" : strerror(e ? e : ECONNREFUSED));
    bufferevent_free(d->bev);
    d->bev = NULL;
    try_next(d);
}

static void try_next(struct pk_dial *d)
{
    while (d->next < d->addrs.n) {
        struct pk_addr *pa = &d->addrs.v[d->next++];
        d->bev = pk_xbufferevent_socket_new(d->base, -1, BEV_OPT_CLOSE_ON_FREE);
        bufferevent_setcb(d->bev, NULL, NULL, connect_event, d);
        struct timeval tv = pk_ms_timeval(d->timeout_ms);
        bufferevent_set_timeouts(d->bev, &tv, &tv);
        if (bufferevent_socket_connect(d->bev, (struct sockaddr *)&pa->ss, (int)pa->len) == 0)
            return;
        char a[PK_ADDR_STRLEN];
        snprintf(d->why, sizeof(d->why), "%s: %s",
                 pk_addr_str((struct sockaddr *)&pa->ss, a, sizeof(a)), strerror(errno));
        bufferevent_free(d->bev);
        d->bev = NULL;
    }
    finish(d, PK_ERR_IO);
}

static void resolved(int err, const struct pk_addrs *addrs, void *arg)
{
    struct pk_dial *d = arg;
    d->rr = NULL;
    if (err) {
        snprintf(d->why, sizeof(d->why), "cannot resolve %s: %s", d->host, pk_strerror(err));
        finish(d, err);
        return;
    }
    d->addrs.n = addrs->n;
    d->addrs.v = pk_xcalloc(addrs->n, sizeof(*addrs->v));
    memcpy(d->addrs.v, addrs->v, addrs->n * sizeof(*addrs->v));
    /* IPv4 first: local services mostly listen on 127.0.0.1, and "localhost" gives both. */
    size_t k = 0;
    for (size_t i = 0; i < d->addrs.n; i++) {
        if (d->addrs.v[i].ss.ss_family == AF_INET) {
            struct pk_addr t = d->addrs.v[k];
            d->addrs.v[k++] = d->addrs.v[i];
            d->addrs.v[i] = t;
        }
    }
    try_next(d);
}

struct pk_dial *pk_dial_start(struct event_base *base, struct pk_resolver *res, const char *host,
                              uint16_t port, uint64_t timeout_ms, pk_dial_cb cb, void *arg)
{
    struct pk_dial *d = pk_xcalloc(1, sizeof(*d));
    d->base = base;
    d->timeout_ms = timeout_ms ? timeout_ms : 10000;
    d->cb = cb;
    d->arg = arg;
    snprintf(d->host, sizeof(d->host), "%s", host);
    d->rr = pk_resolve(res, host, port, resolved, d);
    if (!d->rr) {
        free(d);
        return NULL;
    }
    return d;
}

void pk_dial_cancel(struct pk_dial *d)
{
    if (d)
        dial_free(d);
}
