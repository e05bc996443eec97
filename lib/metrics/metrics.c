#include "metrics/metrics.h"

#include "base/base.h"

#include <event2/buffer.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double pk_metrics_latency_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                             1,     2.5,  5,     10,   30,  60};
const size_t pk_metrics_latency_nbuckets = PK_ARRAY_LEN(pk_metrics_latency_buckets);
const double pk_metrics_size_buckets[] = {256,      1024,     4096,      16384,
                                          65536,    262144,   1048576,   4194304,
                                          16777216, 67108864, 268435456, 1073741824};
const size_t pk_metrics_size_nbuckets = PK_ARRAY_LEN(pk_metrics_size_buckets);

struct pk_mseries {
    struct pk_mfamily *f;
    char **values;
    uint64_t count;    /* counter value, or histogram count */
    double value;      /* gauge value, or histogram sum */
    uint64_t *buckets; /* histogram: observations <= each bound (not cumulative) */
};

struct pk_mfamily {
    enum pk_metric_type type;
    char *name;
    char *help;
    char **labels;
    size_t nlabels;
    double *bounds;
    size_t nbounds;
    struct pk_mseries **series;
    size_t nseries, cap;
    double (*fn)(void *arg); /* a gauge read at scrape time */
    void *fn_arg;
};

struct pk_metrics {
    struct pk_mfamily **families;
    size_t n, cap;
    void (*collect)(void *arg);
    void *collect_arg;
    void **kept; /* pk_metrics_keep */
    size_t nkept;
};

static void check_name(const char *s, bool metric)
{
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (metric && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok) {
            fprintf(stderr, "fatal: invalid metric or label name '%s'\n", s);
            abort();
        }
    }
    if (!s[0]) {
        fprintf(stderr, "fatal: empty metric or label name\n");
        abort();
    }
}

struct pk_metrics *pk_metrics_new(void)
{
    return pk_xcalloc(1, sizeof(struct pk_metrics));
}

static void series_free(struct pk_mseries *s, size_t nlabels)
{
    for (size_t i = 0; i < nlabels; i++)
        free(s->values[i]);
    free(s->values);
    free(s->buckets);
    free(s);
}

void pk_metrics_del(struct pk_metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++) {
        struct pk_mfamily *f = m->families[i];
        for (size_t j = 0; j < f->nseries; j++)
            series_free(f->series[j], f->nlabels);
        for (size_t j = 0; j < f->nlabels; j++)
            free(f->labels[j]);
        free(f->labels);
        free(f->series);
        free(f->bounds);
        free(f->name);
        free(f->help);
        free(f);
    }
    free(m->families);
    for (size_t i = 0; i < m->nkept; i++)
        free(m->kept[i]);
    free(m->kept);
    free(m);
}

static struct pk_mfamily *family_add(struct pk_metrics *m, enum pk_metric_type type,
                                     const char *name, const char *help)
{
    check_name(name, true);
    struct pk_mfamily *f = pk_xcalloc(1, sizeof(*f));
    f->type = type;
    f->name = pk_xstrdup(name);
    f->help = pk_xstrdup(help ? help : "");
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 16;
        m->families = pk_xrealloc(m->families, m->cap * sizeof(*m->families));
    }
    m->families[m->n++] = f;
    return f;
}

struct pk_mfamily *pk_metrics_family(struct pk_metrics *m, enum pk_metric_type type,
                                     const char *name, const char *help, const char *const *labels,
                                     const double *buckets, size_t nbuckets)
{
    struct pk_mfamily *f = family_add(m, type, name, help);
    while (labels && labels[f->nlabels])
        f->nlabels++;
    f->labels = pk_xcalloc(f->nlabels ? f->nlabels : 1, sizeof(*f->labels));
    for (size_t i = 0; i < f->nlabels; i++) {
        check_name(labels[i], false);
        f->labels[i] = pk_xstrdup(labels[i]);
    }
    if (type == PK_METRIC_HISTOGRAM) {
        f->bounds = pk_xcalloc(nbuckets ? nbuckets : 1, sizeof(*f->bounds));
        for (size_t i = 0; i < nbuckets; i++) {
            if (i > 0 && !(buckets[i] > buckets[i - 1])) {
                fprintf(stderr, "fatal: %s: buckets must increase\n", name);
                abort();
            }
            f->bounds[i] = buckets[i];
        }
        f->nbounds = nbuckets;
    }
    return f;
}

struct pk_mseries *pk_mfamily_series(struct pk_mfamily *f, const char *const *values)
{
    for (size_t i = 0; i < f->nseries; i++) {
        struct pk_mseries *s = f->series[i];
        size_t j = 0;
        while (j < f->nlabels && strcmp(s->values[j], values[j]) == 0)
            j++;
        if (j == f->nlabels)
            return s;
    }
    return pk_mfamily_series_new(f, values);
}

struct pk_mseries *pk_mfamily_series_new(struct pk_mfamily *f, const char *const *values)
{
    struct pk_mseries *s = pk_xcalloc(1, sizeof(*s));
    s->f = f;
    s->values = pk_xcalloc(f->nlabels ? f->nlabels : 1, sizeof(*s->values));
    for (size_t i = 0; i < f->nlabels; i++)
        s->values[i] = pk_xstrdup(values[i] ? values[i] : "");
    if (f->type == PK_METRIC_HISTOGRAM)
        s->buckets = pk_xcalloc(f->nbounds + 1, sizeof(*s->buckets));
    if (f->nseries == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 8;
        f->series = pk_xrealloc(f->series, f->cap * sizeof(*f->series));
    }
    f->series[f->nseries++] = s;
    return s;
}

void pk_mseries_inc(struct pk_mseries *s, uint64_t n)
{
    if (s->f->type == PK_METRIC_GAUGE)
        s->value += (double)n;
    else
        s->count += n;
}

void pk_mseries_add_signed(struct pk_mseries *s, int64_t n)
{
    s->value += (double)n;
}

void pk_mseries_set_count(struct pk_mseries *s, uint64_t n)
{
    s->count = n;
}

void pk_metrics_on_collect(struct pk_metrics *m, void (*fn)(void *arg), void *arg)
{
    m->collect = fn;
    m->collect_arg = arg;
}

void pk_mseries_set(struct pk_mseries *s, double v)
{
    s->value = v;
}

void pk_mseries_observe(struct pk_mseries *s, double v)
{
    const struct pk_mfamily *f = s->f;
    size_t i = 0;
    while (i < f->nbounds && v > f->bounds[i])
        i++;
    s->buckets[i]++; /* i == nbounds: only +Inf */
    s->count++;
    s->value += v;
}

double pk_mseries_value(const struct pk_mseries *s)
{
    return s->f->type == PK_METRIC_GAUGE ? s->value : (double)s->count;
}

void *pk_metrics_keep(struct pk_metrics *m, size_t n)
{
    m->kept = pk_xrealloc(m->kept, (m->nkept + 1) * sizeof(*m->kept));
    return m->kept[m->nkept++] = pk_xcalloc(1, n ? n : 1);
}

static void fn_family(struct pk_metrics *m, enum pk_metric_type type, const char *name,
                      const char *help, double (*fn)(void *arg), void *arg)
{
    struct pk_mfamily *f = family_add(m, type, name, help);
    f->labels = pk_xcalloc(1, sizeof(*f->labels));
    f->fn = fn;
    f->fn_arg = arg;
}

void pk_metrics_counter_fn(struct pk_metrics *m, const char *name, const char *help,
                           double (*fn)(void *arg), void *arg)
{
    fn_family(m, PK_METRIC_COUNTER, name, help, fn, arg);
}

void pk_metrics_gauge_fn(struct pk_metrics *m, const char *name, const char *help,
                         double (*fn)(void *arg), void *arg)
{
    fn_family(m, PK_METRIC_GAUGE, name, help, fn, arg);
}

/* ---- exposition ------------------------------------------------------------------- */

/* A float as Prometheus reads it: integers without a fraction, +Inf/-Inf/NaN spelled. */
static void write_double(struct evbuffer *out, double v)
{
    if (isnan(v))
        evbuffer_add(out, "NaN", 3);
    else if (isinf(v))
        evbuffer_add_printf(out, "%sInf", v > 0 ? "+" : "-");
    else if (v == (double)(int64_t)v && fabs(v) < 1e15)
        evbuffer_add_printf(out, "%lld", (long long)v);
    else {
        /* The shortest of %.15g and %.17g that reads back as v: "0.1", not
         * "0.10000000000000001". */
        char buf[32];
        snprintf(buf, sizeof(buf), "%.15g", v);
        if (strtod(buf, NULL) != v)
            snprintf(buf, sizeof(buf), "%.17g", v);
        evbuffer_add(out, buf, strlen(buf));
    }
}

/* Label values escape backslash, double quote and newline (format 0.0.4). */
static void write_escaped(struct evbuffer *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            evbuffer_add(out, "\\\\", 2);
        else if (*s == '"')
            evbuffer_add(out, "\\\"", 2);
        else if (*s == '\n')
            evbuffer_add(out, "\\n", 2);
        else
            evbuffer_add(out, s, 1);
    }
}

/* {a="x",b="y"[,le="..."]} or nothing. */
static void write_labels(struct evbuffer *out, const struct pk_mfamily *f,
                         const struct pk_mseries *s, const double *le)
{
    if (f->nlabels == 0 && !le)
        return;
    evbuffer_add(out, "{", 1);
    for (size_t i = 0; i < f->nlabels; i++) {
        evbuffer_add_printf(out, "%s%s=\"", i ? "," : "", f->labels[i]);
        write_escaped(out, s->values[i]);
        evbuffer_add(out, "\"", 1);
    }
    if (le) {
        evbuffer_add_printf(out, "%sle=\"", f->nlabels ? "," : "");
        write_double(out, *le);
        evbuffer_add(out, "\"", 1);
    }
    evbuffer_add(out, "}", 1);
}

static void write_help(struct evbuffer *out, const struct pk_mfamily *f)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    evbuffer_add_printf(out, "# HELP %s ", f->name);
    /* HELP text escapes backslash and newline. */
    for (const char *p = f->help; *p; p++) {
        if (*p == '\\')
            evbuffer_add(out, "\\\\", 2);
        else if (*p == '\n')
            evbuffer_add(out, "\\n", 2);
        else
            evbuffer_add(out, p, 1);
    }
    evbuffer_add_printf(out, "\n# TYPE %s %s\n", f->name, types[f->type]);
}

static void write_histogram(struct evbuffer *out, const struct pk_mfamily *f,
                            const struct pk_mseries *s)
{
    uint64_t cum = 0;
    for (size_t b = 0; b <= f->nbounds; b++) {
        double le = b < f->nbounds ? f->bounds[b] : INFINITY;
        cum += s->buckets[b];
        evbuffer_add_printf(out, "%s_bucket", f->name);
        write_labels(out, f, s, &le);
        evbuffer_add_printf(out, " %llu\n", (unsigned long long)cum);
    }
    evbuffer_add_printf(out, "%s_sum", f->name);
    write_labels(out, f, s, NULL);
    evbuffer_add(out, " ", 1);
    write_double(out, s->value);
    evbuffer_add_printf(out, "\n%s_count", f->name);
    write_labels(out, f, s, NULL);
    evbuffer_add_printf(out, " %llu\n", (unsigned long long)s->count);
}

void pk_metrics_write(const struct pk_metrics *m, struct evbuffer *out)
{
    if (m->collect)
        m->collect(m->collect_arg);
    for (size_t i = 0; i < m->n; i++) {
        const struct pk_mfamily *f = m->families[i];
        write_help(out, f);
        if (f->fn) {
            evbuffer_add_printf(out, "%s ", f->name);
            write_double(out, f->fn(f->fn_arg));
            evbuffer_add(out, "\n", 1);
            continue;
        }
        for (size_t j = 0; j < f->nseries; j++) {
            const struct pk_mseries *s = f->series[j];
            if (f->type == PK_METRIC_HISTOGRAM) {
                write_histogram(out, f, s);
                continue;
            }
            evbuffer_add(out, f->name, strlen(f->name));
            write_labels(out, f, s, NULL);
            evbuffer_add(out, " ", 1);
            if (f->type == PK_METRIC_COUNTER)
                evbuffer_add_printf(out, "%llu", (unsigned long long)s->count);
            else
                write_double(out, s->value);
            evbuffer_add(out, "\n", 1);
        }
    }
}

const char *pk_metrics_method_label(const char *method)
{
    static const char *const methods[] = {"GET",   "HEAD",    "POST",    "PUT",   "DELETE",
                                          "PATCH", "OPTIONS", "CONNECT", "TRACE", NULL};
    for (size_t i = 0; method && methods[i]; i++)
        if (strcmp(method, methods[i]) == 0)
            return methods[i];
    return "other";
}
