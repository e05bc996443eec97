/* cluster: membership, the peers' routing state and the peer links of one node.
 *
 * Discovery resolves --cluster.join (SRV, A/AAAA, host:port) every resolve interval. Each
 * address found becomes a peer that is watched over the control plane: a full fetch of
 * GET /_piko/v1/cluster/state, then long polls (?after=V&wait=W) that return as soon as
 * the peer's version moves, so a change reaches every node in about one round trip. A
 * peer that answers with our own node id is ourselves and is left alone; a second address
 * of a node already known is an alias and is left alone too.
 *
 * A peer whose state could not be fetched for peer_timeout leaves routing (its table is
 * dropped, it is listed as unreachable), is no longer listed after another peer_timeout,
 * and is forgotten as soon as discovery stops returning its address. An address that never
 * answered its first state call within peer_timeout is warned about once and listed as
 * unreachable (by address: its node id is unknown) for as long as discovery returns it. A restarted
 * peer (new incarnation) replaces its old state at once.
 *
 * Each reachable peer has one peer link: an HTTP/2 connection to its cluster port on
 * which this node is the client (the same h2 code as the tunnel's server side). The proxy
 * opens forwarded streams on it (PROTOCOL.md 3). */
#ifndef PK_CLUSTER_H
#define PK_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct json_object;
struct pk_h2_settings;
struct pk_h2conn;
struct pk_resolver;
struct pk_cluster;
struct pk_peer;
struct pk_tls_files;
struct ssl_ctx_st;

struct pk_cluster_opts {
    const char *node_id; /* ours */
    const char *join;    /* --cluster.join */
    uint64_t resolve_interval_ms;
    uint64_t peer_timeout_ms;
    const char *secret; /* NULL or "": none */
    const struct pk_h2_settings *link_settings;
    /* Cluster TLS (NULL: plain): peer links are dialled with tls_ctx (a reference is
     * taken; peers are verified by chain only, not by address) and state calls use https
     * with tls_files' root_cas, cert and key (borrowed; read by libcurl per connection). */
    struct ssl_ctx_st *tls_ctx;
    const struct pk_tls_files *tls_files;
};

struct pk_cluster_cbs {
    /* Routing may have changed (a peer's table, status or link): requests waiting for a
     * route should look again. Called from the loop, never from inside pk_cluster_*. */
    void (*on_change)(void *ud);
    /* A stream of a peer link closed (a slot is free). Called from the loop. */
    void (*on_slot)(void *ud);
};

struct pk_cluster *pk_cluster_new(struct event_base *base, struct pk_resolver *res,
                                  const struct pk_cluster_opts *opts,
                                  const struct pk_cluster_cbs *cbs, void *ud, char *err,
                                  size_t errlen);
/* Stops discovery and watches and closes every peer link (deferred: streams get their
 * on_close from the loop). pk_cluster_nlinks() tells when they are gone. */
void pk_cluster_stop(struct pk_cluster *c);
size_t pk_cluster_nlinks(const struct pk_cluster *c);
/* New peer links are dialled with ctx (SIGHUP reload; a reference is taken). */
void pk_cluster_set_tls_ctx(struct pk_cluster *c, struct ssl_ctx_st *ctx);
/* Frees (after pk_cluster_stop and the loop has run the closes). NULL is a no-op. */
void pk_cluster_del(struct pk_cluster *c);

/* The peer to forward a request for endpoint to: among reachable peers holding it,
 * non-draining ones first, chosen in proportion to their tunnel counts, with a link that
 * can open a stream now; never avoid. *exists tells whether any reachable peer holds the
 * endpoint at all (its link may be coming up). */
struct pk_peer *pk_cluster_pick(struct pk_cluster *c, const char *endpoint,
                                const struct pk_peer *avoid, bool *exists);
struct pk_h2conn *pk_peer_link(const struct pk_peer *p);
const char *pk_peer_node_id(const struct pk_peer *p);

/* Reachable peers (not ourselves) and the tunnels they hold, for rebalancing. */
void pk_cluster_totals(const struct pk_cluster *c, size_t *nodes, uint64_t *tunnels);
/* True when some reachable peer is not draining: a tunnel told to go elsewhere has
 * somewhere to go. */
bool pk_cluster_has_active_peer(const struct pk_cluster *c);

/* True once the first discovery round is done and every address found has answered its
 * first state call (or failed it), or peer_timeout after the start: until then this node
 * may not know where endpoints are, so it reports not ready. */
bool pk_cluster_synced(const struct pk_cluster *c);

/* Counts since pk_cluster_new, for metrics. */
struct pk_cluster_counters {
    uint64_t state_received;   /* state answers received from peers (fetches and long polls) */
    uint64_t state_failed;     /* state calls that failed (transfer errors, non-200 answers) */
    uint64_t peer_unreachable; /* peers that turned unreachable, or never answered in time */
};
const struct pk_cluster_counters *pk_cluster_counters(const struct pk_cluster *c);

/* The peers /status/cluster/nodes lists, by status (this node not included). */
struct pk_cluster_census {
    size_t active, draining, unreachable;
};
void pk_cluster_census(const struct pk_cluster *c, struct pk_cluster_census *out);

/* Status objects (admin /status/cluster/nodes): every listed peer appended to array; the
 * one with node id id as a new object (with its endpoint table), or NULL. */
void pk_cluster_nodes_json(const struct pk_cluster *c, struct json_object *array);
struct json_object *pk_cluster_node_json(const struct pk_cluster *c, const char *id);
/* The cluster address ("ip:port") of the listed peer with node id id, or NULL: where to
 * ask that node for its status (the admin port's ?forward=). Valid until the loop runs. */
const char *pk_cluster_node_addr(const struct pk_cluster *c, const char *id);

#endif
