/* piko-server's Prometheus metrics (admin /metrics): the names of Go Piko's metrics, so its
 * Grafana dashboards work, plus raw streams, tunnels, rejections, peer links and the limits
 * and defences this server adds (docs/manage/metrics.md has the table).
 *
 * Series of fixed label sets are created at start; counting is an add on a series held
 * here. Label values that come from the run (peer node ids, endpoints with
 * metrics.endpoint-labels) get their series on first use. Counts kept elsewhere (TLS
 * handshakes, accept errors, refusals, stalls, token rejections, the cluster's counters
 * and its nodes) are copied in at scrape time (collect). */
#include "admin/admin.h"
#include "base/base.h"
#include "cluster/cluster.h"
#include "h2/h2.h"
#include "metrics/metrics.h"
#include "net/listener.h"
#include "net/tls.h"
#include "server/exchange.h"
#include "server/server_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* piko_proxy_requests_total's series by status (0-599, else 0) and method index: found
 * without formatting or lookup once made. */
#define NSTATUS  600
#define NMETHODS 10

/* metrics.endpoint-labels: the most series the two piko_endpoint_* families may hold. */
#define EP_MAX_SERIES 10000
#define EP_BUCKETS    4096

enum { KIND_TCP, KIND_UPGRADE, NKINDS };
enum { DIR_IN, DIR_OUT, NDIRS };
static const char *const kinds[NKINDS] = {"tcp", "upgrade"};
static const char *const dirs[NDIRS] = {"in", "out"};

/* piko_proxy_aborts_total{kind}: the first kinds are enum pk_abort_kind. */
enum { ABORT_STALL = PK_ABORT_CONNECTION_LIMIT + 1, ABORT_TIMEOUT, ABORT_BODY_TOO_LARGE, NABORTS };
static const char *const abort_kinds[NABORTS] = {
    "head_timeout", "header_too_large", "raw_idle_timeout", "connection_limit",
    "stall",        "timeout",          "body_too_large"};

enum {
    HS_LIMIT,
    HS_BAD_REQUEST,
    HS_NOT_FOUND,
    HS_METHOD,
    HS_TIMEOUT,
    HS_UPGRADE,
    HS_HEADER_TOO_LARGE,
    HS_DRAINING,
    NHS
};
static const char *const hs_reasons[NHS] = {
    "limit",   "bad_request",      "not_found",        "method_not_allowed",
    "timeout", "upgrade_required", "header_too_large", "draining"};

enum {
    DOWN_CLOSED,
    DOWN_GOAWAY,
    DOWN_ERROR,
    DOWN_PING_TIMEOUT,
    DOWN_DRAIN,
    DOWN_REBALANCE,
    DOWN_TOKEN_EXPIRED,
    DOWN_SHUTDOWN,
    NDOWN
};
static const char *const down_reasons[NDOWN] = {
    "closed", "goaway", "error", "ping_timeout", "drain", "rebalance", "token_expired", "shutdown"};

/* piko_endpoint_requests_total's status_class: index status / 100, 0 for no status. */
static const char *const status_classes[6] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};

/* One endpoint's series (metrics.endpoint-labels), each created on first use. */
struct ep_series {
    struct ep_series *next;
    struct pk_mseries *cls[6];
    struct pk_mseries *bytes[NDIRS];
    char id[];
};

struct pk_server_metrics {
    struct pk_metrics *reg;
    struct pk_mfamily *requests;               /* piko_proxy_requests_total{status,method} */
    struct pk_mseries *(*by_status)[NMETHODS]; /* [NSTATUS]: requests' series, made on use */
    struct pk_mseries *latency, *req_size, *resp_size;
    struct pk_mfamily *tls_handshakes, *tls_failures; /* {port} */
    struct pk_mfamily *accept_errors, *fd_exhausted;  /* {port} */
    struct pk_mseries *refused, *stalled;
    struct pk_mseries *upstream_requests;
    struct pk_mfamily *remote_requests; /* {node_id} */
    struct pk_mseries *streams[NKINDS], *stream_bytes[NKINDS][NDIRS];
    struct pk_mseries *aborts[NABORTS];
    struct pk_mseries *tunnel_connects, *tunnel_down[NDOWN];
    struct pk_mfamily *hs_rejections, *auth_rejections; /* {reason} */
    struct pk_mseries *hs[NHS];
    struct pk_mseries *hs_auth[PK_AUTH_NRESULTS], *proxy_auth[PK_AUTH_NRESULTS];
    struct pk_mfamily *nodes;    /* piko_cluster_nodes{status} */
    struct pk_mfamily *forwards; /* {node_id} */
    struct pk_mseries *forward_retries, *state[2], *state_failures, *peer_unreachable;
    struct pk_mseries *nodes_by[3];
    /* metrics.endpoint-labels (NULL families when off) */
    struct pk_mfamily *ep_requests, *ep_bytes;
    struct pk_mseries *ep_dropped;
    struct ep_series **ep_table;
    size_t ep_nseries;
};

static struct pk_mseries *counter(struct pk_metrics *r, const char *name, const char *help)
{
    return pk_mfamily_series(pk_metrics_family(r, PK_METRIC_COUNTER, name, help, NULL, NULL, 0),
                             NULL);
}

static struct pk_mseries *series1(struct pk_mfamily *f, const char *value)
{
    const char *v[] = {value};
    return pk_mfamily_series(f, v);
}

/* Exchanges in progress, peers' forwarded streams included, but not the long polls of
 * peers waiting for this node's routing state to change. */
static double in_flight(void *arg)
{
    struct pk_server *srv = arg;
    size_t n = srv->loop.nexchanges;
    for (const struct exchange *ex = srv->loop.state_waiters; ex && n; ex = ex->wnext)
        n--;
    return (double)n;
}

static double connected_upstreams(void *arg)
{
    return (double)pk_upstream_count(arg);
}

static double registered_endpoints(void *arg)
{
    struct pk_server *srv = arg;
    size_t n = 0;
    for (size_t b = 0; b < PK_EP_BUCKETS; b++)
        for (struct endpoint *e = srv->node.eps[b]; e; e = e->next)
            n += e->ntunnels > 0;
    return (double)n;
}

/* "missing token" -> "missing_token": label values without spaces. */
static void auth_label(enum pk_auth_result r, char *out, size_t len)
{
    snprintf(out, len, "%s", pk_auth_result_str(r));
    for (char *p = out; *p; p++)
        if (*p == ' ')
            *p = '_';
}

/* The series of every token rejection reason in f, when the port verifies tokens. */
static void auth_series(struct pk_mfamily *f, const struct pk_port_auth *pa,
                        struct pk_mseries *out[PK_AUTH_NRESULTS])
{
    if (!pa)
        return;
    for (int r = PK_AUTH_MISSING_TOKEN; r < PK_AUTH_NRESULTS; r++) {
        if (r == PK_AUTH_PENDING)
            continue;
        char label[48];
        auth_label((enum pk_auth_result)r, label, sizeof(label));
        out[r] = series1(f, label);
    }
}

static void copy_auth(struct pk_mseries *s[PK_AUTH_NRESULTS], const struct pk_port_auth *pa)
{
    uint64_t n[PK_AUTH_NRESULTS];
    pk_port_auth_rejections(pa, n);
    for (int r = 0; r < PK_AUTH_NRESULTS; r++)
        if (s[r])
            pk_mseries_set_count(s[r], n[r]);
}

static void collect(void *arg)
{
    struct pk_server *srv = arg;
    struct pk_server_metrics *m = srv->loop.metrics;
    for (int p = 0; p < PK_PORT_COUNT; p++) {
        struct pk_tls_server *ts = pk_server_tls_port(srv, (enum pk_port)p);
        if (!ts)
            continue;
        const char *v[] = {pk_port_name((enum pk_port)p)};
        pk_mseries_set_count(pk_mfamily_series(m->tls_handshakes, v), pk_tls_server_handshakes(ts));
        pk_mseries_set_count(pk_mfamily_series(m->tls_failures, v), pk_tls_server_failures(ts));
    }
    struct pk_listener *ls[] = {srv->loop.proxy_l, srv->loop.upstream_l, NULL, srv->loop.cluster_l};
    for (int p = 0; p < PK_PORT_COUNT; p++) {
        if (!ls[p])
            continue;
        struct pk_listener_stats st;
        pk_listener_stats(ls[p], &st);
        const char *v[] = {pk_port_name((enum pk_port)p)};
        pk_mseries_set_count(pk_mfamily_series(m->accept_errors, v), st.accept_errors);
        pk_mseries_set_count(pk_mfamily_series(m->fd_exhausted, v), st.fd_exhausted);
    }
    pk_mseries_set_count(m->refused, srv->loop.refused_conns);
    pk_mseries_set_count(m->stalled, srv->loop.stalled);
    pk_mseries_set_count(m->aborts[ABORT_STALL], srv->loop.stalled);
    copy_auth(m->hs_auth, srv->node.upstream_auth);
    copy_auth(m->proxy_auth, srv->node.proxy_auth);

    const struct pk_cluster_counters *cc = pk_cluster_counters(srv->node.cluster);
    pk_mseries_set_count(m->state[1], cc->state_received);
    pk_mseries_set_count(m->state_failures, cc->state_failed);
    pk_mseries_set_count(m->peer_unreachable, cc->peer_unreachable);
    struct pk_cluster_census cs;
    pk_cluster_census(srv->node.cluster, &cs);
    /* This node counts too, as in Go Piko's cluster state. */
    pk_mseries_set(m->nodes_by[0], (double)(cs.active + !srv->node.draining));
    pk_mseries_set(m->nodes_by[1], (double)(cs.draining + srv->node.draining));
    pk_mseries_set(m->nodes_by[2], (double)cs.unreachable);
}

static void metrics_reply(struct pk_admin_req *req, void *arg)
{
    struct pk_server *srv = arg;
    pk_admin_reply_metrics(req, srv->loop.metrics->reg);
}

/* Behind the admin port's token, like every route but /health and /ready (Prometheus
 * sends one with its authorization setting). */
static void metrics_route(struct pk_admin_req *req, void *arg)
{
    pk_admin_auth(arg, req, metrics_reply);
}

static void metrics_disabled(struct pk_admin_req *req, void *arg)
{
    PK_UNUSED(arg);
    pk_admin_reply_error(req, 404, "metrics disabled");
}

/* Go Piko's families and the proxy port's own. */
static void proxy_families(struct pk_server_metrics *m, struct pk_server *srv)
{
    struct pk_metrics *r = m->reg;
    const char *sm[] = {"status", "method", NULL}, *port[] = {"port", NULL};
    const char *kind[] = {"kind", NULL}, *kind_dir[] = {"kind", "direction", NULL};
    m->requests = pk_metrics_family(r, PK_METRIC_COUNTER, "piko_proxy_requests_total",
                                    "Requests answered on the proxy port, by status and method "
                                    "(status 0: the client left before any answer).",
                                    sm, NULL, 0);
    m->by_status = pk_xcalloc(NSTATUS, sizeof(*m->by_status));
    m->latency = pk_mfamily_series(
        pk_metrics_family(r, PK_METRIC_HISTOGRAM, "piko_proxy_request_latency_seconds",
                          "Time from a request's head to the end of its exchange.", NULL,
                          pk_metrics_latency_buckets, pk_metrics_latency_nbuckets),
        NULL);
    pk_metrics_gauge_fn(r, "piko_proxy_requests_in_flight", "Requests in flight.", in_flight, srv);
    m->req_size =
        pk_mfamily_series(pk_metrics_family(r, PK_METRIC_HISTOGRAM, "piko_proxy_request_size_bytes",
                                            "Request body bytes received.", NULL,
                                            pk_metrics_size_buckets, pk_metrics_size_nbuckets),
                          NULL);
    m->resp_size = pk_mfamily_series(
        pk_metrics_family(r, PK_METRIC_HISTOGRAM, "piko_proxy_response_size_bytes",
                          "Response body bytes sent.", NULL, pk_metrics_size_buckets,
                          pk_metrics_size_nbuckets),
        NULL);
    struct pk_mfamily *streams =
        pk_metrics_family(r, PK_METRIC_COUNTER, "piko_proxy_streams_total",
                          "Raw streams of the proxy port (TCP tunnels, upgrades such as "
                          "WebSocket) that were established, counted when they end.",
                          kind, NULL, 0);
    struct pk_mfamily *bytes =
        pk_metrics_family(r, PK_METRIC_COUNTER, "piko_proxy_stream_bytes_total",
                          "Bytes of the raw streams, counted when they end (in: from the client).",
                          kind_dir, NULL, 0);
    for (int k = 0; k < NKINDS; k++) {
        m->streams[k] = series1(streams, kinds[k]);
        for (int d = 0; d < NDIRS; d++) {
            const char *v[] = {kinds[k], dirs[d]};
            m->stream_bytes[k][d] = pk_mfamily_series(bytes, v);
        }
    }
    struct pk_mfamily *aborts = pk_metrics_family(
        r, PK_METRIC_COUNTER, "piko_proxy_aborts_total",
        "Requests, streams and connections cut short by a limit or a timer, by kind.", kind, NULL,
        0);
    for (int k = 0; k < NABORTS; k++)
        m->aborts[k] = series1(aborts, abort_kinds[k]);
    m->auth_rejections = pk_metrics_family(r, PK_METRIC_COUNTER, "piko_proxy_auth_rejections_total",
                                           "Requests refused by proxy.auth (401, 403), by reason.",
                                           (const char *[]){"reason", NULL}, NULL, 0);
    auth_series(m->auth_rejections, srv->node.proxy_auth, m->proxy_auth);
    m->refused = counter(r, "piko_connections_refused_total",
                         "Connections closed at once above a port's connection limit.");
    m->stalled =
        counter(r, "piko_proxy_stalled_total", "Exchanges aborted by proxy.stall-timeout.");
    m->tls_handshakes = pk_metrics_family(r, PK_METRIC_COUNTER, "piko_tls_handshakes_total",
                                          "TLS handshakes completed, by port.", port, NULL, 0);
    m->tls_failures =
        pk_metrics_family(r, PK_METRIC_COUNTER, "piko_tls_handshake_failures_total",
                          "TLS handshakes that failed or timed out, by port.", port, NULL, 0);
    m->accept_errors = pk_metrics_family(r, PK_METRIC_COUNTER, "piko_accept_errors_total",
                                         "accept() failures, by port.", port, NULL, 0);
    m->fd_exhausted =
        pk_metrics_family(r, PK_METRIC_COUNTER, "piko_accept_fd_exhausted_total",
                          "accept() failures for want of a descriptor, by port.", port, NULL, 0);
}

/* Tunnels and where requests go. */
static void upstream_families(struct pk_server_metrics *m, struct pk_server *srv)
{
    struct pk_metrics *r = m->reg;
    const char *node[] = {"node_id", NULL}, *reason[] = {"reason", NULL};
    pk_metrics_gauge_fn(r, "piko_upstreams_connected_upstreams",
                        "Tunnels of sidecars connected to this node.", connected_upstreams, srv);
    pk_metrics_gauge_fn(r, "piko_upstreams_registered_endpoints",
                        "Endpoints with at least one tunnel on this node.", registered_endpoints,
                        srv);
    m->upstream_requests =
        counter(r, "piko_upstreams_upstream_requests_total",
                "Streams opened on a tunnel connected to this node (a retry counts again).");
    m->remote_requests = pk_metrics_family(
        r, PK_METRIC_COUNTER, "piko_upstreams_remote_requests_total",
        "Streams forwarded to another node, by its node id (a retry counts again).", node, NULL, 0);
    m->tunnel_connects = counter(r, "piko_upstreams_tunnel_connects_total",
                                 "Tunnels that became routable on this node.");
    struct pk_mfamily *down =
        pk_metrics_family(r, PK_METRIC_COUNTER, "piko_upstreams_tunnel_disconnects_total",
                          "Routable tunnels that closed, by reason.", reason, NULL, 0);
    for (int i = 0; i < NDOWN; i++)
        m->tunnel_down[i] = series1(down, down_reasons[i]);
    m->hs_rejections = pk_metrics_family(
        r, PK_METRIC_COUNTER, "piko_upstreams_handshake_rejections_total",
        "Tunnel handshakes refused, by reason (the request, a limit, or the token).", reason, NULL,
        0);
    for (int i = 0; i < NHS; i++)
        m->hs[i] = series1(m->hs_rejections, hs_reasons[i]);
    auth_series(m->hs_rejections, srv->node.upstream_auth, m->hs_auth);
}

static void cluster_families(struct pk_server_metrics *m)
{
    struct pk_metrics *r = m->reg;
    const char *node[] = {"node_id", NULL}, *status[] = {"status", NULL};
    const char *direction[] = {"direction", NULL};
    m->nodes =
        pk_metrics_family(r, PK_METRIC_GAUGE, "piko_cluster_nodes",
                          "Nodes this node knows (itself included), by status.", status, NULL, 0);
    m->nodes_by[0] = series1(m->nodes, "active");
    m->nodes_by[1] = series1(m->nodes, "draining");
    m->nodes_by[2] = series1(m->nodes, "unreachable");
    m->forwards = pk_metrics_family(
        r, PK_METRIC_COUNTER, "piko_cluster_forwards_total",
        "Streams other nodes forwarded to this node's tunnels, by the forwarding node's id.", node,
        NULL, 0);
    m->forward_retries =
        counter(r, "piko_cluster_forward_retries_total",
                "Forwarded streams a peer refused (REFUSED_STREAM) and that were retried.");
    struct pk_mfamily *state = pk_metrics_family(
        r, PK_METRIC_COUNTER, "piko_cluster_state_updates_total",
        "Routing state answers: sent to peers' state calls and long polls, received from "
        "peers.",
        direction, NULL, 0);
    m->state[0] = series1(state, "sent");
    m->state[1] = series1(state, "received");
    m->state_failures = counter(r, "piko_cluster_state_failures_total",
                                "State calls to peers that failed (no answer, or not 200).");
    m->peer_unreachable = counter(r, "piko_cluster_peer_unreachable_total",
                                  "Peers that turned unreachable (no state for "
                                  "cluster.peer-timeout), or never answered within it.");
}

static void endpoint_families(struct pk_server_metrics *m)
{
    struct pk_metrics *r = m->reg;
    const char *ec[] = {"endpoint", "status_class", NULL}, *ed[] = {"endpoint", "direction", NULL};
    m->ep_requests =
        pk_metrics_family(r, PK_METRIC_COUNTER, "piko_endpoint_requests_total",
                          "Requests and raw streams of the proxy port by endpoint and status class "
                          "(metrics.endpoint-labels).",
                          ec, NULL, 0);
    m->ep_bytes = pk_metrics_family(r, PK_METRIC_COUNTER, "piko_endpoint_bytes_total",
                                    "Body and raw stream bytes by endpoint (in: from the client; "
                                    "metrics.endpoint-labels).",
                                    ed, NULL, 0);
    m->ep_dropped = counter(r, "piko_endpoint_requests_dropped_total",
                            "Requests not counted by endpoint: the piko_endpoint_* series reached "
                            "their bound (10000).");
    m->ep_table = pk_xcalloc(EP_BUCKETS, sizeof(*m->ep_table));
}

void pk_server_metrics_new(struct pk_server *srv)
{
    if (!srv->node.cfg->metrics_enabled) {
        pk_admin_route(srv->node.admin, "/metrics", false, metrics_disabled, srv);
        return;
    }
    struct pk_server_metrics *m = pk_xcalloc(1, sizeof(*m));
    m->reg = pk_metrics_new();
    proxy_families(m, srv);
    upstream_families(m, srv);
    cluster_families(m);
    if (srv->node.cfg->metrics_endpoint_labels)
        endpoint_families(m);
    pk_metrics_add_process(m->reg);
    pk_metrics_on_collect(m->reg, collect, srv);
    srv->loop.metrics = m;
    pk_admin_route(srv->node.admin, "/metrics", false, metrics_route, srv);
}

void pk_server_metrics_del(struct pk_server *srv)
{
    struct pk_server_metrics *m = srv->loop.metrics;
    if (!m)
        return;
    if (m->ep_table) {
        for (size_t b = 0; b < EP_BUCKETS; b++) {
            while (m->ep_table[b]) {
                struct ep_series *e = m->ep_table[b];
                m->ep_table[b] = e->next;
                free(e);
            }
        }
        free(m->ep_table);
    }
    pk_metrics_del(m->reg);
    free(m->by_status);
    free(m);
    srv->loop.metrics = NULL;
}

/* ---- counting -------------------------------------------------------------------------- */

static unsigned ep_hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % EP_BUCKETS;
}

/* A series of the endpoint families, created now unless the bound is reached (NULL). */
static struct pk_mseries *ep_new_series(struct pk_server_metrics *m, struct pk_mfamily *f,
                                        const char *endpoint, const char *value)
{
    if (m->ep_nseries >= EP_MAX_SERIES)
        return NULL;
    m->ep_nseries++;
    const char *v[] = {endpoint, value};
    return pk_mfamily_series_new(f, v);
}

/* metrics.endpoint-labels: the request, and its bytes, under its endpoint. */
static void ep_count(struct pk_server_metrics *m, const struct exchange *ex)
{
    const char *id = ex->endpoint;
    unsigned b = ep_hash(id);
    struct ep_series *e = m->ep_table[b];
    while (e && strcmp(e->id, id) != 0)
        e = e->next;
    if (!e) {
        if (m->ep_nseries + 1 + NDIRS > EP_MAX_SERIES) {
            pk_mseries_inc(m->ep_dropped, 1);
            return;
        }
        size_t n = strlen(id) + 1;
        e = pk_xcalloc(1, sizeof(*e) + n);
        memcpy(e->id, id, n);
        for (int d = 0; d < NDIRS; d++)
            e->bytes[d] = ep_new_series(m, m->ep_bytes, id, dirs[d]);
        e->next = m->ep_table[b];
        m->ep_table[b] = e;
    }
    int status = ex->status, c = status >= 100 && status < 600 ? status / 100 : 0;
    if (!e->cls[c] && !(e->cls[c] = ep_new_series(m, m->ep_requests, id, status_classes[c]))) {
        pk_mseries_inc(m->ep_dropped, 1);
        return;
    }
    pk_mseries_inc(e->cls[c], 1);
    pk_mseries_inc(e->bytes[DIR_IN], ex->req_body.total_in);
    pk_mseries_inc(e->bytes[DIR_OUT], ex->resp_body.total_out);
}

/* The series of piko_proxy_requests_total{status,method}. */
static struct pk_mseries *request_series(struct pk_server_metrics *m, int status,
                                         const char *method)
{
    static const char *const methods[NMETHODS] = {"GET",   "HEAD",    "POST",    "PUT",   "DELETE",
                                                  "PATCH", "OPTIONS", "CONNECT", "TRACE", "other"};
    const char *label = pk_metrics_method_label(method);
    int i = 0;
    while (i < NMETHODS - 1 && strcmp(methods[i], label) != 0)
        i++;
    if (status < 0 || status > 999)
        status = 0;
    char code[8];
    const char *v[] = {code, label};
    if (status >= NSTATUS) { /* an odd status from a service: looked up */
        snprintf(code, sizeof(code), "%d", status);
        return pk_mfamily_series(m->requests, v);
    }
    struct pk_mseries **s = &m->by_status[status][i];
    if (!*s) {
        snprintf(code, sizeof(code), "%d", status);
        *s = pk_mfamily_series(m->requests, v);
    }
    return *s;
}

void pk_server_metrics_exchange(const struct exchange *ex, uint64_t took_us)
{
    struct pk_server_metrics *m = ex->srv->loop.metrics;
    if (!m)
        return;
    if (ex->timed_out)
        pk_mseries_inc(m->aborts[ABORT_TIMEOUT], 1);
    if (ex->body_too_large)
        pk_mseries_inc(m->aborts[ABORT_BODY_TOO_LARGE], 1);
    if (ex->cluster) {
        /* The cluster port: a peer's forwarded stream, or a state call. */
        if (ex->forwarded)
            pk_mseries_inc(series1(m->forwards, ex->forwarded_by), 1);
        else if (ex->status == 200)
            pk_mseries_inc(m->state[0], 1);
        return;
    }
    pk_mseries_inc(request_series(m, ex->status, ex->method), 1);
    pk_mseries_observe(m->latency, (double)took_us / 1e6);
    pk_mseries_observe(m->req_size, (double)ex->req_body.total_in);
    pk_mseries_observe(m->resp_size, (double)ex->resp_body.total_out);
    if (ex->raw && ex->status >= 200 && ex->status < 300) {
        int k = ex->tcp ? KIND_TCP : KIND_UPGRADE;
        pk_mseries_inc(m->streams[k], 1);
        pk_mseries_inc(m->stream_bytes[k][DIR_IN], ex->req_body.total_in);
        pk_mseries_inc(m->stream_bytes[k][DIR_OUT], ex->resp_body.total_out);
    }
    if (m->ep_table && ex->endpoint[0] && strcmp(ex->endpoint, "-") != 0)
        ep_count(m, ex);
}

void pk_server_metrics_dispatch(const struct exchange *ex)
{
    struct pk_server_metrics *m = ex->srv->loop.metrics;
    if (!m)
        return;
    if (ex->via_peer)
        pk_mseries_inc(series1(m->remote_requests, ex->via), 1);
    else
        pk_mseries_inc(m->upstream_requests, 1);
}

void pk_server_metrics_retry(const struct exchange *ex)
{
    struct pk_server_metrics *m = ex->srv->loop.metrics;
    if (m && ex->last_peer)
        pk_mseries_inc(m->forward_retries, 1);
}

void pk_server_metrics_abort(struct pk_server *srv, enum pk_abort_kind kind)
{
    struct pk_server_metrics *m = srv->loop.metrics;
    if (m)
        pk_mseries_inc(m->aborts[kind], 1);
}

void pk_server_metrics_handshake_rejected(struct pk_server *srv, int status)
{
    struct pk_server_metrics *m = srv->loop.metrics;
    if (!m)
        return;
    int i;
    switch (status) {
    case 0:
        i = HS_LIMIT;
        break;
    case 404:
        i = HS_NOT_FOUND;
        break;
    case 405:
        i = HS_METHOD;
        break;
    case 408:
        i = HS_TIMEOUT;
        break;
    case 426:
        i = HS_UPGRADE;
        break;
    case 431:
        i = HS_HEADER_TOO_LARGE;
        break;
    case 503:
        i = HS_DRAINING;
        break;
    default:
        i = HS_BAD_REQUEST;
        break;
    }
    pk_mseries_inc(m->hs[i], 1);
}

void pk_server_metrics_tunnel_up(const struct tunnel *t)
{
    struct pk_server_metrics *m = t->srv->loop.metrics;
    if (m)
        pk_mseries_inc(m->tunnel_connects, 1);
}

/* Why a routable tunnel closed: what this node decided first, then what the sidecar said,
 * then what the connection saw. */
static int down_reason(const struct tunnel *t, const char *why)
{
    if (t->srv->node.draining)
        return DOWN_DRAIN;
    if (t->shed) /* told to go: rebalancing, or its token expired (portauth.c) */
        return t->token_exp > 0 && (int64_t)time(NULL) >= t->token_exp ? DOWN_TOKEN_EXPIRED
                                                                       : DOWN_REBALANCE;
    if (t->goaway)
        return DOWN_GOAWAY;
    const char *cls = pk_h2_close_class(why);
    if (!cls)
        return DOWN_SHUTDOWN; /* closed by this node: "shutting down" */
    if (strcmp(cls, "ping_timeout") == 0)
        return DOWN_PING_TIMEOUT;
    return strcmp(cls, "closed") == 0 ? DOWN_CLOSED : DOWN_ERROR;
}

void pk_server_metrics_tunnel_down(const struct tunnel *t, const char *why)
{
    struct pk_server_metrics *m = t->srv->loop.metrics;
    if (m && t->up)
        pk_mseries_inc(m->tunnel_down[down_reason(t, why)], 1);
}
