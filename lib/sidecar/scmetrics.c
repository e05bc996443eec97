/* piko-sidecar's Prometheus metrics (admin /metrics). Endpoints are the sidecar's own
 * configured ones and forward ports its own listeners, so they may be labels: the sets are
 * bounded. docs/manage/metrics.md has the table. */
#include "admin/admin.h"
#include "base/base.h"
#include "h2/h2.h"
#include "metrics/metrics.h"
#include "sidecar/sidecar_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pk_sidecar_metrics {
    struct pk_metrics *reg;
    struct pk_mfamily *requests;     /* {endpoint,status,method} */
    struct pk_mfamily *latency;      /* {endpoint} */
    struct pk_mfamily *streams;      /* {endpoint,kind} */
    struct pk_mfamily *stream_bytes; /* {endpoint,kind,direction} */
    struct pk_mfamily *local_errors; /* {endpoint,reason} */
    struct pk_mfamily *forwards;     /* {port} */
    struct pk_mseries *stalled, *connects;
    struct pk_mfamily *disconnects; /* {reason} */
};

static double streams_in_flight(void *arg)
{
    return (double)((struct pk_sidecar *)arg)->nstreams;
}

/* Tunnels up (SETTINGS exchanged) and not closing, replaced ones included while they
 * serve. */
static double tunnels_connected(void *arg)
{
    struct pk_sidecar *sc = arg;
    size_t n = 0;
    for (struct sc_endpoint *ep = sc->eps; ep; ep = ep->next)
        for (struct sc_tunnel *t = ep->tunnels; t; t = t->next)
            n += t->up && pk_h2conn_is_ready(t->h2);
    return (double)n;
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

static const char *const down_reasons[] = {"closed",       "goaway", "error",
                                           "ping_timeout", "drain",  "shutdown"};

void pk_sidecar_metrics_new(struct pk_sidecar *sc)
{
    struct pk_sidecar_metrics *m = pk_xcalloc(1, sizeof(*m));
    struct pk_metrics *r = pk_metrics_new();
    m->reg = r;
    const char *esm[] = {"endpoint", "status", "method", NULL}, *ep[] = {"endpoint", NULL};
    const char *ek[] = {"endpoint", "kind", NULL}, *ekd[] = {"endpoint", "kind", "direction", NULL};
    const char *er[] = {"endpoint", "reason", NULL}, *port[] = {"port", NULL};
    const char *reason[] = {"reason", NULL};
    m->requests = pk_metrics_family(r, PK_METRIC_COUNTER, "piko_sidecar_requests_total",
                                    "Requests served from the local services, by endpoint, "
                                    "status and method (status 0: no response came).",
                                    esm, NULL, 0);
    m->latency = pk_metrics_family(r, PK_METRIC_HISTOGRAM, "piko_sidecar_request_latency_seconds",
                                   "Time from a stream's head to its end, by endpoint.", ep,
                                   pk_metrics_latency_buckets, pk_metrics_latency_nbuckets);
    pk_metrics_gauge_fn(r, "piko_sidecar_streams_in_flight", "Tunnel streams in flight.",
                        streams_in_flight, sc);
    m->streams = pk_metrics_family(r, PK_METRIC_COUNTER, "piko_sidecar_streams_total",
                                   "Raw streams (tcp, upgrade) joined to a local service, "
                                   "counted when they end.",
                                   ek, NULL, 0);
    m->stream_bytes = pk_metrics_family(
        r, PK_METRIC_COUNTER, "piko_sidecar_stream_bytes_total",
        "Bytes of the raw streams, counted when they end (in: to the service).", ekd, NULL, 0);
    m->local_errors = pk_metrics_family(r, PK_METRIC_COUNTER, "piko_sidecar_local_errors_total",
                                        "Exchanges and streams the local service failed, by "
                                        "endpoint and reason.",
                                        er, NULL, 0);
    pk_metrics_gauge_fn(r, "piko_sidecar_tunnels_connected", "Tunnels up to servers.",
                        tunnels_connected, sc);
    m->connects = pk_mfamily_series(pk_metrics_family(r, PK_METRIC_COUNTER,
                                                      "piko_sidecar_tunnel_connects_total",
                                                      "Tunnels that came up.", NULL, NULL, 0),
                                    NULL);
    m->disconnects =
        pk_metrics_family(r, PK_METRIC_COUNTER, "piko_sidecar_tunnel_disconnects_total",
                          "Tunnels that were up and closed, by reason.", reason, NULL, 0);
    for (size_t i = 0; i < PK_ARRAY_LEN(down_reasons); i++) {
        const char *v[] = {down_reasons[i]};
        pk_mfamily_series(m->disconnects, v);
    }
    m->forwards = pk_metrics_family(r, PK_METRIC_COUNTER, "piko_sidecar_forward_connections_total",
                                    "Connections accepted by a --forward listener, by its port.",
                                    port, NULL, 0);
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
    pk_utoa(code, sizeof(code), status >= 0 && status < 1000 ? (unsigned)status : 0);
    const char *v[] = {endpoint, code, meth}, *e[] = {endpoint};
    pk_mseries_inc(pk_mfamily_series(m->requests, v), 1);
    pk_mseries_observe(pk_mfamily_series(m->latency, e), (double)us / 1e6);
}

void pk_sidecar_metrics_stream(struct pk_sidecar *sc, const char *endpoint, bool tcp, uint64_t in,
                               uint64_t out)
{
    struct pk_sidecar_metrics *m = sc->metrics;
    if (!m)
        return;
    const char *kind = tcp ? "tcp" : "upgrade";
    const char *v[] = {endpoint, kind}, *vi[] = {endpoint, kind, "in"},
               *vo[] = {endpoint, kind, "out"};
    pk_mseries_inc(pk_mfamily_series(m->streams, v), 1);
    pk_mseries_inc(pk_mfamily_series(m->stream_bytes, vi), in);
    pk_mseries_inc(pk_mfamily_series(m->stream_bytes, vo), out);
}

const char *pk_sidecar_dial_error(int err, const char *why)
{
    if (err != PK_ERR_IO)
        return "resolve";
    return why && strstr(why, "connect timeout") ? "connect_timeout" : "connect";
}

void pk_sidecar_metrics_local_error(struct pk_sidecar *sc, const char *endpoint, const char *reason)
{
    struct pk_sidecar_metrics *m = sc->metrics;
    if (!m || !reason)
        return;
    const char *v[] = {endpoint, reason};
    pk_mseries_inc(pk_mfamily_series(m->local_errors, v), 1);
}

void pk_sidecar_metrics_forward(struct pk_sidecar *sc, const char *port)
{
    struct pk_sidecar_metrics *m = sc->metrics;
    if (!m)
        return;
    const char *v[] = {port};
    pk_mseries_inc(pk_mfamily_series(m->forwards, v), 1);
}

void pk_sidecar_metrics_tunnel_up(struct pk_sidecar *sc)
{
    if (sc->metrics)
        pk_mseries_inc(sc->metrics->connects, 1);
}

void pk_sidecar_metrics_tunnel_down(const struct sc_tunnel *t, const char *why)
{
    struct pk_sidecar *sc = t->ep->sc;
    if (!sc->metrics || !t->up)
        return;
    const char *reason, *cls = pk_h2_close_class(why);
    if (sc->draining)
        reason = "drain"; /* this sidecar is shutting down */
    else if (t->replaced)
        reason = "goaway"; /* the server asked for a replacement */
    else if (!cls)
        reason = "shutdown"; /* closed by this sidecar: "shutting down" */
    else
        reason = cls;
    const char *v[] = {reason};
    pk_mseries_inc(pk_mfamily_series(sc->metrics->disconnects, v), 1);
}
