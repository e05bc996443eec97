/* Private to lib/server: the types shared by server.c, proxy.c and upstream.c. */
#ifndef PK_SERVER_INT_H
#define PK_SERVER_INT_H

#include "base/list.h"
#include "h2/h2.h"
#include "net/net.h"
#include "server/server.h"
#include "stream/pipe.h"

#include <stdbool.h>
#include <stdint.h>

struct evconnlistener;
struct evhttp;
struct event;
struct exchange;

/* A sidecar's tunnel as seen by the server: we are its HTTP/2 client. */
struct tunnel {
    struct pk_server *srv;
    struct endpoint *ep; /* NULL until the sidecar's SETTINGS arrived */
    char *endpoint_id;
    struct pk_h2conn *h2;
    char *sidecar_id;
    char peer[64];
    uint64_t served;     /* streams opened on it, for logs */
    struct tunnel *next; /* in ep->tunnels */
    struct pk_list link; /* in srv->tunnels */
};

struct endpoint {
    char *id;
    struct tunnel *tunnels;
    size_t ntunnels;
    size_t rr;             /* round-robin cursor for ties */
    struct endpoint *next; /* hash chain */
};

#define PK_EP_BUCKETS 256

struct pk_server {
    struct event_base *base;
    char node_id[96]; /* hostname plus a random suffix, new at every start */
    const struct pk_server_config *cfg;
    struct evconnlistener *proxy_l;
    struct evconnlistener *upstream_l;
    struct evhttp *admin;
    struct endpoint *eps[PK_EP_BUCKETS];
    struct pk_h2_settings tunnel_settings;
    struct pk_h2_settings down_settings;
    bool ready;
    bool draining;
    struct event *grace_ev;
    struct event *check_ev;
    size_t nconns;        /* downstream connections (h1 + h2 + undecided) */
    size_t ntunnels_open; /* tunnels incl. handshaking ones */
    size_t nexchanges;
    struct exchange *waiting; /* exchanges waiting for a tunnel slot */
    struct pk_list conns;     /* downstream connections, for drain and teardown */
    struct pk_list tunnels;   /* every tunnel, registered or not */
    struct pk_list handshakes;
    struct pk_linger_list lingers; /* closed connections still flushing */
};

/* upstream.c */
int pk_upstream_listen(struct pk_server *srv, char *err, size_t errlen);
/* Picks the tunnel of an endpoint with the fewest open streams (ties round-robin), one
 * that can open a stream now. *exists tells whether the endpoint has any tunnel. */
struct tunnel *pk_upstream_pick(struct pk_server *srv, const char *endpoint, bool *exists,
                                const struct tunnel *avoid);
void pk_upstream_drain_all(struct pk_server *srv);

/* proxy.c */
int pk_proxy_listen(struct pk_server *srv, char *err, size_t errlen);
/* A tunnel of this endpoint has a free slot again (or a new one arrived). */
void pk_proxy_slot_free(struct pk_server *srv, const char *endpoint);
void pk_proxy_drain_all(struct pk_server *srv);
/* Teardown: aborts every downstream connection (deferred) / every tunnel and handshake. */
void pk_proxy_abort_all(struct pk_server *srv);
void pk_upstream_abort_all(struct pk_server *srv);

/* server.c */
/* Called whenever work finishes during a drain: exits the loop when nothing is left. */
void pk_server_check_drained(struct pk_server *srv);

#endif
