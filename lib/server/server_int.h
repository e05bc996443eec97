/* Private to lib/server: the types shared by its files (the proxy and cluster ports'
 * own private declarations are in exchange.h, end.h and down.h). */
#ifndef PK_SERVER_INT_H
#define PK_SERVER_INT_H

#include "auth/auth.h"
#include "base/list.h"
#include "h2/h2.h"
#include "net/listener.h"
#include "net/net.h"
#include "server/server.h"
#include "stream/pipe.h"

#include <stdbool.h>
#include <stdint.h>

struct evconnlistener;
struct event;
struct exchange;
struct pk_cluster;
struct pk_resolver;
struct pk_port_auth;
struct pk_httpc;
struct pk_hdrs;
struct pk_admin;
struct pk_admin_req;

/* A sidecar's tunnel as seen by the server: we are its HTTP/2 client. */
struct tunnel {
    struct pk_server *srv;
    struct endpoint *ep; /* NULL until the sidecar's SETTINGS arrived */
    char *endpoint_id;
    struct pk_h2conn *h2;
    char *sidecar_id;
    char peer[64];
    uint64_t served;     /* streams opened on it, for logs and /status/tunnels */
    bool shed;           /* told to reconnect elsewhere (rebalancing) */
    struct tunnel *next; /* in ep->tunnels */
    struct pk_list link; /* in srv->loop.tunnels */

    bool up;     /* registered (counted in the tunnel connects) */
    bool goaway; /* the sidecar sent GOAWAY */

    int64_t token_exp;       /* the handshake token's exp (0: none, or auth off) */
    struct event *expiry_ev; /* drains the tunnel at token_exp (portauth.c) */

    /* For /status/tunnels (status.c), set at the 101: */
    uint64_t id;               /* from 1, in the order tunnels were accepted */
    bool tcp;                  /* the sidecar declared a TCP endpoint (Piko-Endpoint-Kind) */
    int64_t connected_unix_ms; /* wall clock */
    uint64_t connected_ms;     /* pk_now_ms() */
};

/* An endpoint whose tunnels this node sent away (drain, rebalancing): requests for it
 * wait up to the deadline for a tunnel to turn up anywhere. */
struct moving {
    char *id;
    uint64_t deadline_ms;
    struct moving *next;
};

#define PK_MOVE_WINDOW_MS 5000

struct endpoint {
    char *id;
    struct tunnel *tunnels;
    size_t ntunnels;
    size_t rr;             /* round-robin cursor for ties */
    struct endpoint *next; /* hash chain */
};

#define PK_EP_BUCKETS 256

/* The node: what every loop of the process shares — identity, configuration, the routing
 * table of endpoints, the cluster view, TLS and auth contexts, the admin port, the drain
 * state. Read on any loop; changed only on the main loop (a later worker design publishes
 * it as snapshots). */
struct pk_node {
    const struct pk_server_config *cfg;
    char node_id[130];    /* --cluster.node-id or the hostname plus a random suffix */
    char incarnation[20]; /* random, new at every start */
    char proxy_addr[64], admin_addr[64], cluster_addr[64]; /* as bound */
    struct pk_resolver *resolver;
    struct pk_cluster *cluster;
    uint64_t state_version;                 /* of the routing state this node publishes */
    struct event *state_ev;                 /* answers the long polls after a change */
    struct pk_h2_settings cluster_settings; /* our side of peer links we accept */
    struct pk_h2_settings tunnel_settings;
    struct pk_h2_settings down_settings;
    bool moving_drain;     /* draining with an active peer: our endpoints move there */
    struct moving *moving; /* endpoints whose tunnels we sent away, until their deadline */
    struct event *moving_ev;
    bool ready;
    bool draining;
    bool drain_final;     /* the drain delay is over: connections are being closed */
    bool cluster_closing; /* and the connections peers opened to us too */
    bool exiting;         /* drained: the loop is told to exit */
    struct event *drain_ev;
    struct event *grace_ev;
    struct event *rebalance_ev;
    struct pk_admin *admin;
    struct pk_server_tls *tls; /* the ports' TLS (tls_ports.c) */
    struct endpoint *eps[PK_EP_BUCKETS];
    /* --<port>.auth.*: NULL when the port takes no token (portauth.c) */
    struct pk_port_auth *upstream_auth, *proxy_auth, *admin_auth;
    struct pk_httpc *auth_http;   /* for https JWKS; NULL when none */
    struct pk_httpc *status_http; /* statusfwd.c: asks peers (?forward=); NULL until then */
};

/* One loop's own state: its listeners, connections, tunnels, exchanges, waiting queue and
 * counters, touched only by the thread that runs it (today the one loop of the process). */
struct pk_loop {
    struct event_base *base;
    struct pk_listener *proxy_l;
    struct pk_listener *upstream_l;
    struct pk_listener *cluster_l;  /* NULL without cluster.join */
    struct exchange *state_waiters; /* long polls of the node's routing state */
    struct event *check_ev;         /* deferred: is the drain over? */
    size_t nconns;                  /* downstream connections (h1 + h2 + undecided) */
    uint64_t refused_conns;         /* closed at once above a connection limit */
    uint64_t stalled;               /* exchanges aborted by proxy.stall-timeout */
    uint64_t refused_log_ms;
    size_t ntunnels_open; /* tunnels incl. handshaking ones */
    uint64_t tunnel_ids;  /* the last tunnel id handed out */
    size_t nexchanges;
    struct exchange *waiting; /* exchanges waiting for a tunnel slot */
    struct pk_list conns;     /* downstream connections, for drain and teardown */
    struct pk_list tunnels;   /* every tunnel, registered or not */
    struct pk_list handshakes;
    struct pk_linger_list lingers;     /* closed connections still flushing */
    struct pk_server_metrics *metrics; /* srvmetrics.c: this loop's Prometheus registry */
    struct pk_accesslog *access;       /* access.c: the access log and /status/requests */
    struct pk_memtrim *memtrim;        /* freed memory back to the kernel after tunnel churn */
};

struct pk_server {
    struct pk_node node;
    struct pk_loop loop;
};

/* accept.c. Closes fd when n >= max (> 0): a listener's connection limit. */
bool pk_accept_refuse_over_limit(struct pk_server *srv, evutil_socket_t fd, long long max, size_t n,
                                 const char *what);

/* upstream.c */
int pk_upstream_listen(struct pk_server *srv, char *err, size_t errlen);
/* The tunnel handshake's request (PROTOCOL.md 1.1), once p has a complete message: 0 with
 * *endpoint pointing into the path, or the HTTP status of the refusal with *msg and *extra
 * (an extra response field line, or NULL). Pure: also called by tests/fuzz. */
struct pk_h1parser;
int pk_upstream_handshake_check(const struct pk_h1parser *p, const char **endpoint,
                                const char **msg, const char **extra);
/* Picks the tunnel of an endpoint with the fewest open streams (ties round-robin), one
 * that can open a stream now. *exists tells whether the endpoint has any tunnel. */
struct tunnel *pk_upstream_pick(struct pk_server *srv, const char *endpoint, bool *exists,
                                const struct tunnel *avoid);
void pk_upstream_drain_all(struct pk_server *srv);

/* accept.c */
int pk_proxy_listen(struct pk_server *srv, char *err, size_t errlen);
/* exchange.c. A tunnel of this endpoint (NULL: of any) has a free slot again, or a new one arrived:
 * the requests waiting for it are dispatched again. */
void pk_exchange_redispatch(struct pk_server *srv, const char *endpoint);
/* Drains downstream connections, or (cluster) the connections peers opened to us. */
void pk_proxy_drain_all(struct pk_server *srv, bool cluster);
/* Teardown: aborts every downstream connection (deferred) / every tunnel and handshake. */
void pk_proxy_abort_all(struct pk_server *srv);
void pk_upstream_abort_all(struct pk_server *srv);

/* Local tunnel count of every endpoint, as a JSON object (new reference). */
struct json_object *pk_upstream_table_json(struct pk_server *srv, size_t *neps, size_t *ntunnels);
/* Sends a GOAWAY notice to one tunnel of the node's busiest share (rebalancing). */
bool pk_upstream_shed_one(struct pk_server *srv);
size_t pk_upstream_count(struct pk_server *srv);

/* route.c. Chooses the endpoint of a request (PROTOCOL.md 4): x-piko-endpoint, x-endpoint-id, then
 * the first label of a Host that has a dot and is not an IP literal. Returns 0 with the id
 * in out, or an HTTP status (400) with *msg. Pure: also called by tests/fuzz. */
int pk_proxy_route(const struct pk_head *req, char *out, size_t outlen, const char **msg);
/* Builds the request sent on a tunnel from the downstream one (PROTOCOL.md 1.4): moves
 * method, path, authority (Host, else endpoint) and fields out of in into out, strips the
 * hop-by-hop and piko-* fields, adds x-forwarded-* and piko-client-addr for ip:port; https:
 * the downstream's scheme. Returns true when the client sent Expect: 100-continue. Pure:
 * also called by tests/fuzz. */
bool pk_proxy_prepare_request(struct pk_head *out, struct pk_head *in, const char *endpoint,
                              bool https, const char *ip, uint16_t port);
/* Turns a prepared request into the extended CONNECT of a raw stream (PROTOCOL.md 1.2): the
 * upgrade token as :protocol; a TCP tunnel (tcp) carries only piko-client-addr, to
 * "endpoint:0". Pure: also called by tests/fuzz. */
void pk_proxy_make_raw(struct pk_head *r, const char *token, bool tcp, const char *endpoint);

/* accept.c (cluster port) */
int pk_cluster_port_listen(struct pk_server *srv, char *err, size_t errlen);
/* exchange.c. Re-dispatches every request waiting for a route (a peer's table or link changed). */
void pk_exchange_redispatch_all(struct pk_server *srv);
/* clusterport.c. Answers the state long polls (the version moved, or the node is draining). */
void pk_cluster_port_state_changed(struct pk_server *srv);

/* tls_ports.c */
enum pk_port { PK_PORT_PROXY, PK_PORT_UPSTREAM, PK_PORT_ADMIN, PK_PORT_CLUSTER, PK_PORT_COUNT };
/* "proxy", "upstream", "admin", "cluster": the ports' names in options, logs and labels. */
const char *pk_port_name(enum pk_port p);
/* Config checks of every <port>.tls.* key (pairs, cluster all-or-nothing). */
int pk_server_tls_check(const struct pk_server_config *cfg, char *err, size_t errlen);
/* Loads the ports' certificates (before the listeners). Returns 0 or PK_ERR_* with a
 * message naming the key and the file. */
int pk_server_tls_new(struct pk_server *srv, char *err, size_t errlen);
void pk_server_tls_free(struct pk_server *srv);
/* The TLS of a port, or NULL when it is plain TCP. */
struct pk_tls_server *pk_server_tls_port(struct pk_server *srv, enum pk_port port);
/* The context peers are dialled with (NULL: plain cluster). */
struct ssl_ctx_st *pk_server_tls_cluster_client(struct pk_server *srv);
/* access.c: the access log and its /status/requests route (after the admin port). */
void pk_server_access_new(struct pk_server *srv);
void pk_server_access_del(struct pk_server *srv);

/* srvmetrics.c: the loop's Prometheus registry and its /metrics route on the admin port
 * (after admin_listen; with metrics.enabled false there is no registry and the route
 * answers 404); _del at teardown. The counting functions below are cheap no-ops without a
 * registry, and may be called from anywhere on the loop. */
struct pk_server_metrics;
void pk_server_metrics_new(struct pk_server *srv);
void pk_server_metrics_del(struct pk_server *srv);
/* A finished exchange of the proxy or the cluster port (from ex_maybe_free). */
void pk_server_metrics_exchange(const struct exchange *ex, uint64_t took_us);
/* The exchange opened its upstream stream: on a local tunnel, or a peer link (ex->via_peer). */
void pk_server_metrics_dispatch(const struct exchange *ex);
/* A refused stream is retried (its failed attempt is ex->last_tunnel or ex->last_peer). */
void pk_server_metrics_retry(const struct exchange *ex);
/* Limits and timers that cut a connection or request short before any exchange exists, or
 * that the exchange does not see (the others come from the exchange: proxy.timeout,
 * proxy.max-body-bytes, and the stall count). */
enum pk_abort_kind {
    PK_ABORT_HEAD_TIMEOUT,     /* 408: proxy.head-timeout */
    PK_ABORT_HEADER_TOO_LARGE, /* 431: proxy.max-header-bytes */
    PK_ABORT_RAW_IDLE,         /* proxy.raw-idle-timeout closed a raw stream */
    PK_ABORT_CONNECTION_LIMIT, /* proxy.max-connections: closed at accept */
};
void pk_server_metrics_abort(struct pk_server *srv, enum pk_abort_kind kind);
/* A tunnel handshake refused by the upstream port before its token was looked at: status
 * is the refusal's HTTP status (400, 404, 405, 408, 426, 431, 503), 0 a connection closed
 * at accept above upstream.max-connections. Token rejections are the verifier's counts. */
void pk_server_metrics_handshake_rejected(struct pk_server *srv, int status);
/* A tunnel became routable (t->up set) / closed (why: pk_h2conn's on_close reason). */
void pk_server_metrics_tunnel_up(const struct tunnel *t);
void pk_server_metrics_tunnel_down(const struct tunnel *t, const char *why);
/* Adds "listeners": {port: {"accepted", "accept_errors", "fd_exhausted", "shed"}} and
 * "connections": {"proxy", "upstream", "refused", "stalled"} (counts from accept) to a
 * status object. */
void pk_server_listeners_status(struct pk_server *srv, struct json_object *o);
/* Adds "tls": {port: {"handshake_failures": n, "mtls": b}} to a status object. */
void pk_server_tls_status(struct pk_server *srv, struct json_object *o);
/* status.c: the status page at "/" on the admin port (after admin_listen; served without
 * a token: it holds no data). */
void pk_server_status_new(struct pk_server *srv);
/* status.c: answers /status/upstream/endpoints and /status/tunnels (called behind the
 * admin auth gate) and returns true, or returns false for any other path. */
bool pk_server_status_reply(struct pk_admin_req *req, struct pk_server *srv);

/* server.c */
/* Marks endpoint as moving for PK_MOVE_WINDOW_MS (published to peers). */
void pk_server_mark_moving(struct pk_server *srv, const char *endpoint);
bool pk_server_is_moving(struct pk_server *srv, const char *endpoint);
/* The routing state changed (a tunnel came or went, draining started). */
void pk_server_state_changed(struct pk_server *srv);
struct json_object *pk_server_state_json(struct pk_server *srv, bool with_endpoints);
/* Called whenever work finishes during a drain: exits the loop when nothing is left. */
void pk_server_check_drained(struct pk_server *srv);

/* portauth.c: JWT authentication of the upstream, proxy and admin ports. */
/* Builds the verifiers of --{upstream,proxy,admin}.auth.* (keys loaded now). Returns 0, or
 * PK_ERR_INVALID with a message naming the option at fault. */
int pk_server_auth_init(struct pk_server *srv, char *err, size_t errlen);
/* Teardown: cancels every verification in flight (the admin requests still waiting for
 * one are dropped) and frees the verifiers and their HTTP client, and the forwards' client
 * (pk_status_forward_free). Call it after pk_admin_del, whose cancel callbacks release the
 * admin waits and the forwards. */
void pk_server_auth_free(struct pk_server *srv);
/* Verifies the bearer token of a request (x-piko-authorization, else authorization; none:
 * MISSING_TOKEN) with pa; cb comes from the loop, as pk_auth_verify. *from_authorization
 * (may be NULL) tells whether the token was taken from the authorization field. */
struct pk_auth_req *pk_port_auth_verify(struct pk_port_auth *pa, const struct pk_hdrs *h,
                                        bool *from_authorization, pk_auth_cb cb, void *arg);
/* Counts a 403 (the verifier counts the 401s). */
void pk_port_auth_not_permitted(struct pk_port_auth *pa);
/* The rejections of a port's verifications so far, by enum pk_auth_result (the 403s in
 * PK_AUTH_ENDPOINT_NOT_PERMITTED); all 0 when pa is NULL. */
void pk_port_auth_rejections(const struct pk_port_auth *pa, uint64_t out[PK_AUTH_NRESULTS]);
/* Arms t->expiry_ev to drain the tunnel when its token expires, unless
 * upstream.auth.disable-disconnect-on-expiry or the token has no exp. */
void pk_tunnel_expiry_start(struct pk_server *srv, struct tunnel *t, int64_t exp);
/* Admin requests: runs handler(req, srv) at once when admin auth is off, else once the
 * request's token verified (401 JSON with WWW-Authenticate: Bearer otherwise). A request
 * whose connection goes away while it waits is cancelled with its verification. */
void pk_admin_auth(struct pk_server *srv, struct pk_admin_req *req,
                   void (*handler)(struct pk_admin_req *req, void *arg));
/* GET /status/auth: the verifiers' counters (arg is the server). */
void pk_admin_auth_status(struct pk_admin_req *req, void *arg);

/* statusfwd.c: the admin port's ?forward=NODE. */
/* Takes an authenticated admin request whose path is under /status/ and whose query has
 * forward=NODE, NODE neither "local" nor this node: asks NODE through its cluster port and
 * replies with its answer (404 {"error":"node not found"} for a node not listed, 502 when
 * it cannot be reached, 504 when it does not answer within cluster.peer-timeout). Returns
 * false, and leaves req alone, for every other request, and for internal ones (a peer's
 * forwarded request: one hop). */
bool pk_status_forward(struct pk_server *srv, struct pk_admin_req *req);
/* Teardown, after pk_admin_del (whose cancel callbacks cancel the forwards in flight). */
void pk_status_forward_free(struct pk_server *srv);
/* Splits an admin query (without '?', may be NULL): 1 with the value of its first
 * forward= in node and the other parameters, in order, in *rest (malloc'd; NULL when
 * none); 0 without forward= (*rest NULL); PK_ERR_INVALID when the value is empty or does
 * not fit nodelen (*rest set as for 1). Pure. */
int pk_status_forward_split(const char *query, char *node, size_t nodelen, char **rest);

#endif
