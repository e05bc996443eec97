/* cluster private: the types and functions that the parts of the cluster module share.
 * cluster.c: lifecycle, routing and status; peers.c: peers, their links (data plane) and
 * their watches (control plane); discovery.c: the cluster.join lookups. Included by the .c
 * files of lib/cluster only; cluster.h is the module's interface. Everything here runs on
 * the cluster's loop thread. */
#ifndef PK_CLUSTER_INT_H
#define PK_CLUSTER_INT_H

#include "base/list.h"
#include "cluster/cluster.h"
#include "cluster/state.h"

#include <event2/util.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event;
struct event_base;
struct pk_dial;
struct pk_h2_settings;
struct pk_h2conn;
struct pk_httpc;
struct pk_httpc_req;
struct pk_resolve_req;
struct pk_resolver;
struct pk_tls_connect;

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
    bool unreachable;         /* out of routing; or never answered within peer_timeout */
    uint64_t unreachable_ms;  /* since when */
    uint64_t found_ms;        /* when discovery first listed it */
    char last_error[160];     /* why the last state call failed, for the unreachable warning */
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

/* One address lookup of a join job: req is cleared when its answer comes (the resolver
 * frees it then), so that a stop cancels only the lookups still in flight. */
struct job_lookup {
    struct join_job *j;
    struct pk_resolve_req *req;
};

struct join_job {
    struct pk_join_item item;
    char **addrs; /* last good answer: "host\0port" pairs as strings "ip|port" */
    size_t naddrs;
    /* the round in flight */
    struct pk_resolve_req *srv_req;
    struct job_lookup *lookups;
    size_t nlookups, pending;
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
    struct pk_cluster_counters counters;
    bool stopped;
    struct event *resolve_ev;
    struct event *tick_ev;
    struct event *change_ev;
};

/* cluster.c */

/* Tells the owner (on_change) from the loop, soon; nothing once stopped. */
void cluster_notify_change(struct pk_cluster *c);
/* (Re)arms the timer ev to fire in ms milliseconds. */
void cluster_add_ms(struct event *ev, uint64_t ms);

/* peers.c */

/* A peer of the data plane: its role is ROLE_PEER, its state is known and it is reachable. */
bool cluster_peer_routable(const struct peer *p);
/* Its node id once known, else its address: for logs and pk_peer_node_id. */
const char *cluster_peer_name(const struct peer *p);
struct peer *cluster_peer_find(struct pk_cluster *c, const char *host, uint16_t port);
/* A new peer at host (an IP literal) and port, in c->peers, not watched yet. */
struct peer *cluster_peer_new(struct pk_cluster *c, const char *host, uint16_t port);
/* Forgets a peer (removed from c->peers at once; freed now or when its link has closed). */
void cluster_peer_release(struct peer *p);
/* Starts the state fetch or long poll unless one is in flight, the cluster is stopped or
 * the peer is this node or an alias. */
void cluster_peer_watch(struct peer *p);
/* Dials the peer link of a routable peer unless it is up, being dialled or waiting out a
 * backoff. */
void cluster_peer_link_ensure(struct peer *p);
/* The tick timer (c->tick_ev): moving deadlines and unreachable peers. */
void cluster_tick_cb(evutil_socket_t fd, short what, void *arg);

/* discovery.c */

/* Starts a discovery round (every join job) unless one is in flight or c is stopped; the
 * round ends in committing its answer and arming c->resolve_ev for the next one. */
void cluster_discovery_start(struct pk_cluster *c);
/* The resolve timer (c->resolve_ev): starts a round. */
void cluster_resolve_cb(evutil_socket_t fd, short what, void *arg);
/* Frees v and its n strings (v may be NULL when n is 0). */
void cluster_free_strv(char **v, size_t n);

#endif
