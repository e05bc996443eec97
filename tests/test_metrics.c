/* Unit tests for lib/metrics: the Prometheus text exposition (format 0.0.4) of counters,
 * gauges and histograms, label escaping, series reuse and scrape-time gauges. The e2e
 * suite parses real /metrics output with a Prometheus parser; these pin the bytes. */
#include "metrics/metrics.h"

#include "base/base.h"

#include <CUnit/CUnit.h>
#include <event2/buffer.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void pk_test_register_metrics(void);

/* The exposition as a NUL-terminated string (caller frees). */
static char *expose(const struct pk_metrics *m)
{
    struct evbuffer *b = evbuffer_new();
    pk_metrics_write(m, b);
    size_t n = evbuffer_get_length(b);
    char *s = pk_xmalloc(n + 1);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    evbuffer_free(b);
    return s;
}

#define ASSERT_CONTAINS(hay, needle)                                                               \
    CU_assertImplementation(strstr((hay), (needle)) != NULL, __LINE__, "contains " needle,         \
                            __FILE__, "", CU_FALSE)

static void test_counter_with_labels(void)
{
    struct pk_metrics *m = pk_metrics_new();
    const char *labels[] = {"status", "method", NULL};
    struct pk_mfamily *f = pk_metrics_family(m, PK_METRIC_COUNTER, "piko_proxy_requests_total",
                                             "Requests.", labels, NULL, 0);
    const char *v200[] = {"200", "GET"}, *v502[] = {"502", "POST"};
    struct pk_mseries *a = pk_mfamily_series(f, v200);
    struct pk_mseries *b = pk_mfamily_series(f, v502);
    CU_ASSERT_PTR_EQUAL(pk_mfamily_series(f, v200), a); /* same labels, same series */
    pk_mseries_inc(a, 3);
    pk_mseries_inc(b, 1);
    pk_mseries_inc(a, 1);
    CU_ASSERT_EQUAL(pk_mseries_value(a), 4);
    char *s = expose(m);
    CU_ASSERT_STRING_EQUAL(s, "# HELP piko_proxy_requests_total Requests.\n"
                              "# TYPE piko_proxy_requests_total counter\n"
                              "piko_proxy_requests_total{status=\"200\",method=\"GET\"} 4\n"
                              "piko_proxy_requests_total{status=\"502\",method=\"POST\"} 1\n");
    free(s);
    pk_metrics_del(m);
}

static void test_gauge_and_escaping(void)
{
    struct pk_metrics *m = pk_metrics_new();
    struct pk_mfamily *g =
        pk_metrics_family(m, PK_METRIC_GAUGE, "g", "A \\ help\nline.", NULL, NULL, 0);
    struct pk_mseries *s0 = pk_mfamily_series(g, NULL);
    pk_mseries_inc(s0, 5);
    pk_mseries_add_signed(s0, -2);
    CU_ASSERT_EQUAL(pk_mseries_value(s0), 3);
    pk_mseries_set(s0, 0.25);
    const char *labels[] = {"endpoint", NULL};
    struct pk_mfamily *e = pk_metrics_family(m, PK_METRIC_GAUGE, "e", "", labels, NULL, 0);
    const char *weird[] = {"a\"b\\c\nd"};
    pk_mseries_set(pk_mfamily_series(e, weird), 1);
    char *s = expose(m);
    ASSERT_CONTAINS(s, "# HELP g A \\\\ help\\nline.\n# TYPE g gauge\ng 0.25\n");
    ASSERT_CONTAINS(s, "e{endpoint=\"a\\\"b\\\\c\\nd\"} 1\n");
    free(s);
    pk_metrics_del(m);
}

static void test_histogram(void)
{
    struct pk_metrics *m = pk_metrics_new();
    const double bounds[] = {0.1, 1, 10};
    const char *labels[] = {"k", NULL};
    struct pk_mfamily *f =
        pk_metrics_family(m, PK_METRIC_HISTOGRAM, "lat_seconds", "L.", labels, bounds, 3);
    const char *v[] = {"x"};
    struct pk_mseries *h = pk_mfamily_series(f, v);
    pk_mseries_observe(h, 0.05);
    pk_mseries_observe(h, 0.1); /* le is inclusive */
    pk_mseries_observe(h, 5);
    pk_mseries_observe(h, 100);
    CU_ASSERT_EQUAL(pk_mseries_value(h), 4);
    char *s = expose(m);
    CU_ASSERT_STRING_EQUAL(s, "# HELP lat_seconds L.\n"
                              "# TYPE lat_seconds histogram\n"
                              "lat_seconds_bucket{k=\"x\",le=\"0.1\"} 2\n"
                              "lat_seconds_bucket{k=\"x\",le=\"1\"} 2\n"
                              "lat_seconds_bucket{k=\"x\",le=\"10\"} 3\n"
                              "lat_seconds_bucket{k=\"x\",le=\"+Inf\"} 4\n"
                              "lat_seconds_sum{k=\"x\"} 105.15\n"
                              "lat_seconds_count{k=\"x\"} 4\n");
    free(s);
    pk_metrics_del(m);
}

static double read_arg(void *arg)
{
    return *(double *)arg;
}

static void test_scrape_time_gauge(void)
{
    struct pk_metrics *m = pk_metrics_new();
    double v = 12;
    pk_metrics_gauge_fn(m, "process_open_fds", "Open descriptors.", read_arg, &v);
    char *s = expose(m);
    ASSERT_CONTAINS(s, "# TYPE process_open_fds gauge\nprocess_open_fds 12\n");
    free(s);
    v = NAN;
    s = expose(m);
    ASSERT_CONTAINS(s, "process_open_fds NaN\n");
    free(s);
    pk_metrics_del(m);
    pk_metrics_del(NULL);
}

static void bump(void *arg)
{
    struct pk_mseries *s = arg;
    pk_mseries_set_count(s, (uint64_t)pk_mseries_value(s) + 10);
}

/* Counts kept elsewhere are copied in by the collect hook, before every exposition. */
static void test_collect_hook(void)
{
    struct pk_metrics *m = pk_metrics_new();
    struct pk_mseries *s = pk_mfamily_series(
        pk_metrics_family(m, PK_METRIC_COUNTER, "c_total", "C.", NULL, NULL, 0), NULL);
    pk_metrics_on_collect(m, bump, s);
    char *t = expose(m);
    ASSERT_CONTAINS(t, "c_total 10\n");
    free(t);
    t = expose(m);
    ASSERT_CONTAINS(t, "c_total 20\n");
    free(t);
    pk_metrics_del(m);
}

/* A family indexed by its owner: series_new adds without looking, series finds them. */
static void test_series_new(void)
{
    struct pk_metrics *m = pk_metrics_new();
    const char *labels[] = {"endpoint", NULL};
    struct pk_mfamily *f =
        pk_metrics_family(m, PK_METRIC_COUNTER, "e_total", "E.", labels, NULL, 0);
    const char *a[] = {"a"}, *b[] = {"b"};
    struct pk_mseries *sa = pk_mfamily_series_new(f, a), *sb = pk_mfamily_series_new(f, b);
    CU_ASSERT_PTR_EQUAL(pk_mfamily_series(f, a), sa);
    CU_ASSERT_PTR_EQUAL(pk_mfamily_series(f, b), sb);
    pk_mseries_inc(sb, 2);
    char *t = expose(m);
    ASSERT_CONTAINS(t, "e_total{endpoint=\"a\"} 0\ne_total{endpoint=\"b\"} 2\n");
    free(t);
    pk_metrics_del(m);
}

void pk_test_register_metrics(void)
{
    CU_pSuite s = CU_add_suite("metrics", NULL, NULL);
    CU_add_test(s, "counter_with_labels", test_counter_with_labels);
    CU_add_test(s, "gauge_and_escaping", test_gauge_and_escaping);
    CU_add_test(s, "histogram", test_histogram);
    CU_add_test(s, "scrape_time_gauge", test_scrape_time_gauge);
    CU_add_test(s, "collect_hook", test_collect_hook);
    CU_add_test(s, "series_new", test_series_new);
}
