/* cluster/state: the routing state one node publishes to its peers (PROTOCOL.md 3), the
 * cluster.join list, and the weighted choice between nodes. Pure data: no I/O, so every
 * function here is unit tested on its own.
 *
 * A node's state is versioned: the version grows at every change of its endpoint table or
 * draining flag, and (node_id, incarnation) names one life of one node, so a restarted node
 * (new incarnation) replaces what its peers knew about it instead of mixing with it. */
#ifndef PK_CLUSTER_STATE_H
#define PK_CLUSTER_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;

struct pk_ep_count {
    char *id;
    uint32_t n; /* tunnels the node holds for this endpoint */
};

struct pk_node_state {
    char *node_id;
    char *incarnation;
    uint64_t version;
    char *proxy_addr;
    char *admin_addr;
    char *cluster_addr;
    bool draining;
    struct pk_ep_count *eps; /* sorted by id */
    size_t neps;
    /* Endpoints whose tunnels this (draining) node just sent away: their sidecars are
     * dialling other nodes, so requests wait for them instead of failing. n is how many
     * more milliseconds to wait at most. */
    struct pk_ep_count *moving;
    size_t nmoving;
};

/* Largest state document accepted from a peer, and the deepest JSON nesting. */
#define PK_STATE_MAX_BYTES (8u << 20)
#define PK_STATE_MAX_DEPTH 8

void pk_node_state_init(struct pk_node_state *st);
void pk_node_state_free(struct pk_node_state *st);
/* Moves src into dst (dst's previous content is freed; src is left empty). */
void pk_node_state_move(struct pk_node_state *dst, struct pk_node_state *src);
/* Parses a peer's state document. Strict: every field of PROTOCOL.md 3 with its type,
 * endpoint ids valid, counts 0..2^31. Returns 0, or PK_ERR_INVALID with a message naming
 * the offending field; out is left empty on error. */
int pk_node_state_parse(const char *json, size_t len, struct pk_node_state *out, char *err,
                        size_t errlen);
/* The state as a JSON object (new reference); with_endpoints adds the "endpoints" table. */
struct json_object *pk_node_state_to_json(const struct pk_node_state *st, bool with_endpoints);
/* Tunnels the node holds for endpoint (0 when none). */
uint32_t pk_node_state_count(const struct pk_node_state *st, const char *endpoint);
uint64_t pk_node_state_tunnels(const struct pk_node_state *st);
/* Adds or replaces endpoint's count in the sorted table (n 0 removes it). */
void pk_node_state_set(struct pk_node_state *st, const char *endpoint, uint32_t n);

/* One item of --cluster.join. */
enum pk_join_kind {
    PK_JOIN_SRV,     /* srv:NAME — the SRV records of NAME (a headless Service) */
    PK_JOIN_DNS,     /* dns:NAME:PORT — every A/AAAA record of NAME */
    PK_JOIN_HOSTPORT /* HOST:PORT — one address (HOST may be a name) */
};

struct pk_join_item {
    enum pk_join_kind kind;
    char *name;
    uint16_t port; /* 0 for srv: */
};

/* Parses a comma list ("srv:_cluster._tcp.piko.default.svc.cluster.local,10.0.0.5:8003").
 * Empty items are skipped. Returns 0 with a malloc'ed array (free with pk_join_free), or
 * PK_ERR_INVALID with a message quoting the bad item. */
int pk_join_parse(const char *list, struct pk_join_item **items, size_t *n, char *err,
                  size_t errlen);
void pk_join_free(struct pk_join_item *items, size_t n);

/* Picks index i with probability weights[i] / sum(weights), using r uniform in
 * [0, 2^32). Returns n when every weight is 0. */
size_t pk_pick_weighted(const uint32_t *weights, size_t n, uint32_t r);

#endif
