/* cli: the status documents as aligned text tables (pk_cli_table). Pure: JSON in, text
 * out. Columns are chosen per command; whatever else comes (another server version, an
 * unknown shape) falls back to one column per key, so the output is never empty of data. */
#include "cli/cli.h"

#include "base/base.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum col_kind {
    COL_TEXT,  /* the value as text */
    COL_BYTES, /* a byte count: 512B, 1.5KiB, 3.0MiB */
    COL_AGE,   /* seconds: 45s, 3m12s, 2h05m, 3d04h */
    COL_MS,    /* milliseconds (fractional): 0.011ms, 12.5ms, 3.20s */
    COL_ROUTE, /* "route", with its "peer" when there is one */
};

struct col {
    const char *title;
    const char *key;
    enum col_kind kind;
    size_t max; /* longer cells are cut with "..." (0: never) */
};

struct table_spec {
    const char *command;
    const struct col *cols;
    size_t ncols;
};

static const struct col nodes_cols[] = {
    {"ID", "id", COL_TEXT, 0},
    {"STATUS", "status", COL_TEXT, 0},
    {"PROXY ADDR", "proxy_addr", COL_TEXT, 0},
    {"ENDPOINTS", "endpoints", COL_TEXT, 0},
    {"TUNNELS", "tunnels", COL_TEXT, 0},
};

static const struct col endpoints_cols[] = {
    {"ENDPOINT", "endpoint", COL_TEXT, 0}, {"TUNNELS", "tunnels", COL_TEXT, 0},
    {"STREAMS", "streams", COL_TEXT, 0},   {"IN", "bytes_in", COL_BYTES, 0},
    {"OUT", "bytes_out", COL_BYTES, 0},
};

static const struct col tunnels_cols[] = {
    {"ID", "id", COL_TEXT, 0},           {"ENDPOINT", "endpoint", COL_TEXT, 0},
    {"SIDECAR", "sidecar", COL_TEXT, 0}, {"STATE", "state", COL_TEXT, 0},
    {"AGE", "age_s", COL_AGE, 0},        {"STREAMS", "streams", COL_TEXT, 0},
    {"IN", "bytes_in", COL_BYTES, 0},    {"OUT", "bytes_out", COL_BYTES, 0},
};

static const struct col requests_cols[] = {
    {"TIME", "time", COL_TEXT, 0},         {"METHOD", "method", COL_TEXT, 0},
    {"HOST", "host", COL_TEXT, 32},        {"PATH", "path", COL_TEXT, 40},
    {"STATUS", "status", COL_TEXT, 0},     {"DURATION", "duration_ms", COL_MS, 0},
    {"ENDPOINT", "endpoint", COL_TEXT, 0}, {"ROUTE", "route", COL_ROUTE, 0},
    {"CLIENT", "client", COL_TEXT, 0},     {"ERROR", "error", COL_TEXT, 48},
};

static const struct col table_cols[] = {
    {"ENDPOINT", NULL, COL_TEXT, 0},
    {"TUNNELS", NULL, COL_TEXT, 0},
};

static const struct table_spec specs[] = {
    {"nodes", nodes_cols, PK_ARRAY_LEN(nodes_cols)},
    {"endpoints", endpoints_cols, PK_ARRAY_LEN(endpoints_cols)},
    {"tunnels", tunnels_cols, PK_ARRAY_LEN(tunnels_cols)},
    {"requests", requests_cols, PK_ARRAY_LEN(requests_cols)},
};

/* Most columns a generic table shows (the rest of the keys are left to --output json). */
#define MAX_GENERIC_COLS 16

/* ---- cells ------------------------------------------------------------------------------ */

/* Control characters (a terminal escape in a path) become '?'. Takes s. */
static char *sanitize(char *s)
{
    for (char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return s;
}

static char *value_text(struct json_object *v)
{
    switch (json_object_get_type(v)) {
    case json_type_null:
        return pk_xstrdup("-");
    case json_type_string:
        return sanitize(
            pk_xstrdup(json_object_get_string_len(v) ? json_object_get_string(v) : "-"));
    case json_type_int:
        return pk_xasprintf("%lld", (long long)json_object_get_int64(v));
    case json_type_double:
        return pk_xasprintf("%g", json_object_get_double(v));
    case json_type_boolean:
        return pk_xstrdup(json_object_get_boolean(v) ? "true" : "false");
    default:
        return sanitize(pk_xstrdup(json_object_to_json_string_ext(
            v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)));
    }
}

static bool is_number(struct json_object *v)
{
    return json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double);
}

static char *bytes_text(double b)
{
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
    if (b < 1024)
        return pk_xasprintf("%.0fB", b);
    size_t u = 0;
    b /= 1024;
    while (b >= 1024 && u + 1 < PK_ARRAY_LEN(units)) {
        b /= 1024;
        u++;
    }
    return pk_xasprintf("%.1f%s", b, units[u]);
}

static char *age_text(double secs)
{
    unsigned long long s = secs > 0 ? (unsigned long long)secs : 0;
    if (s < 60)
        return pk_xasprintf("%llus", s);
    if (s < 3600)
        return pk_xasprintf("%llum%02llus", s / 60, s % 60);
    if (s < 86400)
        return pk_xasprintf("%lluh%02llum", s / 3600, (s % 3600) / 60);
    return pk_xasprintf("%llud%02lluh", s / 86400, (s % 86400) / 3600);
}

static char *ms_text(double ms)
{
    if (ms < 1)
        return pk_xasprintf("%.3fms", ms);
    if (ms < 1000)
        return pk_xasprintf("%.1fms", ms);
    return pk_xasprintf("%.2fs", ms / 1000);
}

/* The cell of column c in row (an object, or anything else: "-"). */
static char *cell_text(const struct col *c, struct json_object *row)
{
    struct json_object *v = NULL;
    if (!json_object_is_type(row, json_type_object) || !json_object_object_get_ex(row, c->key, &v))
        return pk_xstrdup("-");
    char *s;
    if (c->kind == COL_BYTES && is_number(v))
        s = bytes_text(json_object_get_double(v));
    else if (c->kind == COL_AGE && is_number(v))
        s = age_text(json_object_get_double(v));
    else if (c->kind == COL_MS && is_number(v))
        s = ms_text(json_object_get_double(v));
    else
        s = value_text(v);
    struct json_object *peer = NULL;
    if (c->kind == COL_ROUTE && json_object_object_get_ex(row, "peer", &peer) &&
        json_object_is_type(peer, json_type_string) && json_object_get_string_len(peer)) {
        char *p = sanitize(pk_xstrdup(json_object_get_string(peer)));
        char *t = pk_xasprintf("%s %s", s, p);
        free(p);
        free(s);
        s = t;
    }
    if (c->max && strlen(s) > c->max && c->max > 3)
        strcpy(s + c->max - 3, "...");
    return s;
}

/* ---- layout ----------------------------------------------------------------------------- */

/* Writes nrows rows of ncols cells with every column as wide as its widest cell, three
 * spaces apart, no trailing blanks. */
static void write_grid(FILE *f, char **cells, size_t nrows, size_t ncols)
{
    size_t *w = pk_xcalloc(ncols ? ncols : 1, sizeof(*w));
    for (size_t r = 0; r < nrows; r++)
        for (size_t c = 0; c < ncols; c++)
            w[c] = PK_MAX(w[c], strlen(cells[r * ncols + c]));
    for (size_t r = 0; r < nrows; r++) {
        for (size_t c = 0; c < ncols; c++) {
            const char *s = cells[r * ncols + c];
            if (c + 1 < ncols)
                fprintf(f, "%-*s   ", (int)w[c], s);
            else
                fputs(s, f);
        }
        fputc('\n', f);
    }
    free(w);
}

static void free_cells(char **cells, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(cells[i]);
    free(cells);
}

/* An array as a table of cols, with a title row. */
static void write_rows(FILE *f, struct json_object *arr, const struct col *cols, size_t ncols)
{
    size_t n = json_object_array_length(arr), total = (n + 1) * ncols;
    char **cells = pk_xcalloc(total ? total : 1, sizeof(*cells));
    for (size_t c = 0; c < ncols; c++)
        cells[c] = pk_xstrdup(cols[c].title);
    for (size_t r = 0; r < n; r++)
        for (size_t c = 0; c < ncols; c++)
            cells[(r + 1) * ncols + c] = cell_text(&cols[c], json_object_array_get_idx(arr, r));
    write_grid(f, cells, n + 1, ncols);
    free_cells(cells, total);
}

/* Whether any object of arr has one of cols' keys. */
static bool spec_fits(struct json_object *arr, const struct col *cols, size_t ncols)
{
    for (size_t r = 0; r < json_object_array_length(arr); r++) {
        struct json_object *row = json_object_array_get_idx(arr, r);
        if (!json_object_is_type(row, json_type_object))
            continue;
        for (size_t c = 0; c < ncols; c++)
            if (json_object_object_get_ex(row, cols[c].key, NULL))
                return true;
    }
    return false;
}

/* "bytes_in" -> "BYTES IN" (malloc'd). */
static char *title_of(const char *key)
{
    char *t = sanitize(pk_xstrdup(key));
    for (char *p = t; *p; p++)
        *p = *p == '_' ? ' ' : (*p >= 'a' && *p <= 'z') ? (char)(*p - 'a' + 'A') : *p;
    return t;
}

/* One column per key found in arr's objects, in order of appearance (a VALUE column for
 * elements that are not objects). */
static void write_generic(FILE *f, struct json_object *arr)
{
    struct col cols[MAX_GENERIC_COLS + 1];
    char *titles[MAX_GENERIC_COLS + 1];
    size_t ncols = 0;
    bool scalars = false;
    for (size_t r = 0; r < json_object_array_length(arr); r++) {
        struct json_object *row = json_object_array_get_idx(arr, r);
        if (!json_object_is_type(row, json_type_object)) {
            scalars = true;
            continue;
        }
        json_object_object_foreach(row, key, val)
        {
            PK_UNUSED(val);
            bool seen = false;
            for (size_t c = 0; c < ncols && !seen; c++)
                seen = strcmp(cols[c].key, key) == 0;
            if (!seen && ncols < MAX_GENERIC_COLS) {
                titles[ncols] = title_of(key);
                cols[ncols] = (struct col){titles[ncols], key, COL_TEXT, 60};
                ncols++;
            }
        }
    }
    if (ncols == 0 && !scalars) {
        fputs("(none)\n", f);
        return;
    }
    if (scalars && ncols == 0) {
        size_t n = json_object_array_length(arr);
        char **cells = pk_xcalloc(n + 1, sizeof(*cells));
        cells[0] = pk_xstrdup("VALUE");
        for (size_t r = 0; r < n; r++)
            cells[r + 1] = value_text(json_object_array_get_idx(arr, r));
        write_grid(f, cells, n + 1, 1);
        free_cells(cells, n + 1);
        return;
    }
    write_rows(f, arr, cols, ncols);
    for (size_t c = 0; c < ncols; c++)
        free(titles[c]);
}

/* An object: "key  value" lines, then its endpoint_table (a node) as a table. */
static void write_object(FILE *f, struct json_object *obj)
{
    size_t n = (size_t)json_object_object_length(obj), i = 0;
    char **cells = pk_xcalloc(2 * (n ? n : 1), sizeof(*cells));
    struct json_object *table = NULL;
    json_object_object_foreach(obj, key, val)
    {
        if (strcmp(key, "endpoint_table") == 0 && json_object_is_type(val, json_type_object)) {
            table = val;
            continue;
        }
        cells[2 * i] = sanitize(pk_xstrdup(key));
        cells[2 * i + 1] = value_text(val);
        i++;
    }
    write_grid(f, cells, i, 2);
    free_cells(cells, 2 * i);
    if (!table)
        return;
    size_t m = (size_t)json_object_object_length(table), r = 1;
    cells = pk_xcalloc(2 * (m + 1), sizeof(*cells));
    cells[0] = pk_xstrdup(table_cols[0].title);
    cells[1] = pk_xstrdup(table_cols[1].title);
    json_object_object_foreach(table, ep, count)
    {
        cells[2 * r] = sanitize(pk_xstrdup(ep));
        cells[2 * r + 1] = value_text(count);
        r++;
    }
    fputc('\n', f);
    write_grid(f, cells, r, 2);
    free_cells(cells, 2 * r);
}

char *pk_cli_table(const char *command, struct json_object *doc)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        abort(); /* only for want of memory: the pk_xmalloc policy */
    if (json_object_is_type(doc, json_type_array)) {
        const struct table_spec *spec = NULL;
        for (size_t i = 0; i < PK_ARRAY_LEN(specs) && command; i++)
            if (strcmp(specs[i].command, command) == 0)
                spec = &specs[i];
        if (spec && (json_object_array_length(doc) == 0 || spec_fits(doc, spec->cols, spec->ncols)))
            write_rows(f, doc, spec->cols, spec->ncols);
        else
            write_generic(f, doc);
    } else if (json_object_is_type(doc, json_type_object)) {
        write_object(f, doc);
    } else {
        char *s = value_text(doc);
        fprintf(f, "%s\n", s);
        free(s);
    }
    fclose(f);
    return text;
}
