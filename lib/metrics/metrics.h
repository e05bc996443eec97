/* metrics: counters, gauges and histograms, written as Prometheus text (format 0.0.4).
 *
 * No C client library for Prometheus is packaged in Debian, so this is a small one, made
 * for a proxy's hot path:
 *   - a family (name, help, type, label names) holds series; a series is one label set
 *     and is created up front (pk_mfamily_series), so that counting a request is an add
 *     on a struct the caller already holds: no lookup, no allocation, no formatting;
 *   - histograms have fixed buckets chosen when the family is made;
 *   - gauges whose value lives elsewhere (open connections, resident memory) are read at
 *     scrape time through a callback (pk_metrics_gauge_fn).
 *
 * Families are written in the order they were registered, series in the order they were
 * created. Names must match [a-zA-Z_:][a-zA-Z0-9_:]* and label names [a-zA-Z_][a-zA-Z0-9_]*
 * (checked: a bad one aborts, as it is a programming error). Label values are escaped.
 *
 * One registry belongs to one thread (the loop's); nothing here locks. */
#ifndef PK_METRICS_H
#define PK_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct pk_metrics;
struct pk_mfamily;
struct pk_mseries;

enum pk_metric_type { PK_METRIC_COUNTER, PK_METRIC_GAUGE, PK_METRIC_HISTOGRAM };

struct pk_metrics *pk_metrics_new(void);
/* Frees the registry, its families and series. NULL is a no-op. */
void pk_metrics_del(struct pk_metrics *m);

/* Registers a family. labels: NULL-terminated label names (NULL: none). For a histogram,
 * buckets are the upper bounds, strictly increasing, without +Inf (added when written).
 * Strings are copied. Returns the family (owned by m). */
struct pk_mfamily *pk_metrics_family(struct pk_metrics *m, enum pk_metric_type type,
                                     const char *name, const char *help, const char *const *labels,
                                     const double *buckets, size_t nbuckets);

/* The series of a label set (values in the order of the family's label names; NULL for a
 * family without labels). The same values give the same series. Owned by the family. */
struct pk_mseries *pk_mfamily_series(struct pk_mfamily *f, const char *const *values);

/* A new series of a label set the caller knows the family does not have yet (no lookup:
 * for families of many series indexed by the caller). */
struct pk_mseries *pk_mfamily_series_new(struct pk_mfamily *f, const char *const *values);

/* Counter: adds n. Gauge: adds n (may be negative with pk_mseries_add_signed). */
void pk_mseries_inc(struct pk_mseries *s, uint64_t n);
void pk_mseries_add_signed(struct pk_mseries *s, int64_t n);
/* Gauge: sets the value. */
void pk_mseries_set(struct pk_mseries *s, double v);
/* Histogram: one observation. */
void pk_mseries_observe(struct pk_mseries *s, double v);
/* The current value (counter or gauge), or the count (histogram): for tests and status. */
double pk_mseries_value(const struct pk_mseries *s);

/* A gauge (counter) without labels whose value fn(arg) gives at scrape time. */
void pk_metrics_gauge_fn(struct pk_metrics *m, const char *name, const char *help,
                         double (*fn)(void *arg), void *arg);
void pk_metrics_counter_fn(struct pk_metrics *m, const char *name, const char *help,
                           double (*fn)(void *arg), void *arg);
/* n zeroed bytes that live as long as the registry (state for scrape-time callbacks). */
void *pk_metrics_keep(struct pk_metrics *m, size_t n);
/* process_resident_memory_bytes, process_open_fds, process_max_fds,
 * process_cpu_seconds_total, process_start_time_seconds (process.c). */
void pk_metrics_add_process(struct pk_metrics *m);

/* Counter: sets the count (for counts kept elsewhere, copied in by a collect hook). */
void pk_mseries_set_count(struct pk_mseries *s, uint64_t n);
/* fn(arg) runs at the start of every pk_metrics_write, to copy values kept elsewhere into
 * series (one hook per registry; NULL removes it). */
void pk_metrics_on_collect(struct pk_metrics *m, void (*fn)(void *arg), void *arg);

/* Appends the exposition of every family to out. */
void pk_metrics_write(const struct pk_metrics *m, struct evbuffer *out);

/* A bounded label value for an HTTP method: the method itself for GET, HEAD, POST, PUT,
 * DELETE, PATCH, OPTIONS, CONNECT and TRACE, "other" for anything else (NULL too). */
const char *pk_metrics_method_label(const char *method);

/* Buckets for request latencies in seconds (5 ms to 60 s, as Go Piko's dashboards expect
 * Prometheus' defaults plus the long tail of a proxy). */
extern const double pk_metrics_latency_buckets[];
extern const size_t pk_metrics_latency_nbuckets;
/* Buckets for sizes in bytes (256 B to 1 GiB, powers of four). */
extern const double pk_metrics_size_buckets[];
extern const size_t pk_metrics_size_nbuckets;

#endif
