/* piko-sidecar's Prometheus metrics (admin /metrics). Endpoints are the sidecar's own
 * configured ones, so they may be a label: the set is bounded. */
#include "admin/admin.h"
#include "base/base.h"
#include "metrics/metrics.h"
#include "sidecar/sidecar_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pk_sidecar_metrics {
    struct pk_metrics *reg;
    struct pk_mfamily *requests; /* {endpoint,status,method} */
    struct pk_mfamily *latency;  /* {endpoint} */
    struct pk_mseries *stalled;
};

static double streams_in_flight(void *arg)
{
    return (double)((struct pk_sidecar *)arg)->nstreams;
}

static double tunnels_connected(void *arg)
{
    return (double)((struct pk_sidecar *)arg)->ntunnels;
}

static void collect(void *arg)
{
    struct pk_sidecar *sc = arg;
    pk_mseries_set_count(sc->metrics->stalled, sc->stalled);
}

static void metrics_route(struct pk_admin_req *req, void *arg)
{
    struct pk_sidecar *sc = arg;
    pk_admin_reply_metrics(req, sc->metrics->reg);
}

void pk_sidecar_metrics_new(struct pk_sidecar *sc)
{
    struct pk_sidecar_metrics *m = pk_xcalloc(1, sizeof(*m));
    struct pk_metrics *r = pk_metrics_new();
    m->reg = r;
    const char *esm[] = {"endpoint", "status", "method", NULL}, *ep[] = {"endpoint", NULL};
    m->requests = pk_metrics_family(r, PK_METRIC_COUNTER, "piko_sidecar_requests_total",
                                    "Requests served from the local services, by endpoint, "
                                    "status and method (status 0: no response came).",
                                    esm, NULL, 0);
    m->latency = pk_metrics_family(r, PK_METRIC_HISTOGRAM, "piko_sidecar_request_latency_seconds",
                                   "Time from a stream's head to its end, by endpoint.", ep,
                                   pk_metrics_latency_buckets, pk_metrics_latency_nbuckets);
    pk_metrics_gauge_fn(r, "piko_sidecar_streams_in_flight", "Tunnel streams in flight.",
                        streams_in_flight, sc);
    pk_metrics_gauge_fn(r, "piko_sidecar_tunnels_connected", "Tunnels connected to servers.",
                        tunnels_connected, sc);
    m->stalled = pk_mfamily_series(
        pk_metrics_family(r, PK_METRIC_COUNTER, "piko_sidecar_stalled_total",
                          "Requests aborted by local.stall-timeout.", NULL, NULL, 0),
        NULL);
    pk_metrics_add_process(r);
    pk_metrics_on_collect(r, collect, sc);
    sc->metrics = m;
    pk_admin_route(sc->admin, "/metrics", false, metrics_route, sc);
}

void pk_sidecar_metrics_del(struct pk_sidecar *sc)
{
    if (!sc->metrics)
        return;
    pk_metrics_del(sc->metrics->reg);
    free(sc->metrics);
    sc->metrics = NULL;
}

void pk_sidecar_metrics_request(struct pk_sidecar *sc, const char *endpoint, const char *method,
                                int status, uint64_t us)
{
    struct pk_sidecar_metrics *m = sc->metrics;
    if (!m)
        return;
    const char *meth = pk_metrics_method_label(method);
    char code[8];
    snprintf(code, sizeof(code), "%d", status >= 0 && status < 1000 ? status : 0);
    const char *v[] = {endpoint, code, meth}, *e[] = {endpoint};
    pk_mseries_inc(pk_mfamily_series(m->requests, v), 1);
    pk_mseries_observe(pk_mfamily_series(m->latency, e), (double)us / 1e6);
}
