/* piko-server's Prometheus metrics (admin /metrics): the names of Go Piko's metrics, so its
 * Grafana dashboards work, plus the limits and defences this server adds. Series are
 * created once per label set; a request costs a few additions on the loop's registry.
 * Counts kept elsewhere (TLS handshakes, accept errors, refusals) are copied in at scrape
 * time (collect). */
#include "admin/admin.h"
#include "base/base.h"
#include "metrics/metrics.h"
#include "net/listener.h"
#include "net/tls.h"
#include "server/server_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pk_server_metrics {
    struct pk_metrics *reg;
    struct pk_mfamily *requests; /* piko_proxy_requests_total{status,method} */
    struct pk_mseries *latency, *req_size, *resp_size;
    struct pk_mfamily *tls_handshakes, *tls_failures; /* {port} */
    struct pk_mfamily *accept_errors, *fd_exhausted;  /* {port} */
    struct pk_mseries *refused, *stalled;
};

static double in_flight(void *arg)
{
    return (double)((struct pk_server *)arg)->loop.nexchanges;
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

void pk_server_metrics_new(struct pk_server *srv)
{
    struct pk_server_metrics *m = pk_xcalloc(1, sizeof(*m));
    struct pk_metrics *r = pk_metrics_new();
    m->reg = r;
    const char *sm[] = {"status", "method", NULL}, *port[] = {"port", NULL};
    m->requests = pk_metrics_family(r, PK_METRIC_COUNTER, "piko_proxy_requests_total",
                                    "Requests answered on the proxy port, by status and method "
                                    "(status 0: the client left before any answer).",
                                    sm, NULL, 0);
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
    pk_metrics_gauge_fn(r, "piko_upstreams_connected_upstreams",
                        "Tunnels of sidecars connected to this node.", connected_upstreams, srv);
    pk_metrics_gauge_fn(r, "piko_upstreams_registered_endpoints",
                        "Endpoints with at least one tunnel on this node.", registered_endpoints,
                        srv);
    m->refused = pk_mfamily_series(
        pk_metrics_family(r, PK_METRIC_COUNTER, "piko_connections_refused_total",
                          "Connections closed at once above a port's connection limit.", NULL, NULL,
                          0),
        NULL);
    m->stalled = pk_mfamily_series(
        pk_metrics_family(r, PK_METRIC_COUNTER, "piko_proxy_stalled_total",
                          "Exchanges aborted by proxy.stall-timeout.", NULL, NULL, 0),
        NULL);
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
    pk_metrics_add_process(r);
    pk_metrics_on_collect(r, collect, srv);
    srv->loop.metrics = m;
    pk_admin_route(srv->node.admin, "/metrics", false, metrics_route, srv);
}

void pk_server_metrics_del(struct pk_server *srv)
{
    struct pk_server_metrics *m = srv->loop.metrics;
    if (!m)
        return;
    pk_metrics_del(m->reg);
    free(m);
    srv->loop.metrics = NULL;
}

void pk_server_metrics_request(struct pk_server *srv, const char *method, int status, uint64_t us,
                               uint64_t in_bytes, uint64_t out_bytes)
{
    struct pk_server_metrics *m = srv->loop.metrics;
    if (!m)
        return;
    const char *meth = pk_metrics_method_label(method);
    char code[8];
    snprintf(code, sizeof(code), "%d", status >= 0 && status < 1000 ? status : 0);
    const char *v[] = {code, meth};
    pk_mseries_inc(pk_mfamily_series(m->requests, v), 1);
    pk_mseries_observe(m->latency, (double)us / 1e6);
    pk_mseries_observe(m->req_size, (double)in_bytes);
    pk_mseries_observe(m->resp_size, (double)out_bytes);
}
