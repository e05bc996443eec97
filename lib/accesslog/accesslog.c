#include "accesslog/accesslog.h"

#include "base/base.h"
#include "base/log.h"
#include "stream/head.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <json-c/printbuf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NAMES 64

/* Never logged, whatever the lists say: credentials. */
static const char *const always_blocked[] = {
    "authorization", "proxy-authorization",  "cookie",
    "set-cookie",    "x-piko-authorization", "piko-authorization"};

struct name_list {
    bool all; /* "*" */
    size_t n;
    char *names[MAX_NAMES];
};

/* One ring slot: the record copied, long values cut. */
struct slot {
    int64_t start_ms; /* wall clock, written out as RFC 3339 only when shown */
    char kind[8];
    char endpoint[130];
    char client[80];
    char method[16];
    char host[256];
    char path[512];
    char route[8];
    char tunnel[80];
    char peer[130];
    char forwarded_by[130];
    char error[128];
    int status;
    uint64_t bytes_in, bytes_out, duration_us;
};

struct pk_accesslog {
    bool enabled;
    char *node;
    struct name_list req_allow, resp_allow, block;
    struct slot ring[PK_ACCESS_RING];
    size_t next; /* the slot the next record goes to */
    size_t count;
    struct json_object *line; /* the log line, reused (line_object) */
    int64_t time_sec;         /* the second time_prefix was written for */
    char time_prefix[32];     /* its RFC 3339 text up to the milliseconds */
    size_t time_prefix_len;   /* 0: none yet */
    struct evbuffer *pending; /* lines not yet written */
    struct event *flush_ev;   /* deferred: writes them (NULL: no loop, written at once) */
};

/* ---- header lists ---------------------------------------------------------------------- */

static bool token_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

struct parse_ctx {
    const char *key;
    bool allow_star;
    struct name_list *l; /* NULL: checks only */
    size_t n;
    char *err;
    size_t errlen;
};

static int parse_name(const char *s, size_t len, void *arg)
{
    struct parse_ctx *c = arg;
    if (len == 1 && *s == '*') {
        if (!c->allow_star) {
            snprintf(c->err, c->errlen, "%s: '*' is only for the allow lists", c->key);
            return PK_ERR_INVALID;
        }
        if (c->l)
            c->l->all = true;
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        if (!token_char(s[i]) || len > 100) {
            snprintf(c->err, c->errlen, "%s: invalid header name '%.*s'", c->key,
                     (int)PK_MIN(len, (size_t)100), s);
            return PK_ERR_INVALID;
        }
    }
    if (++c->n > MAX_NAMES) {
        snprintf(c->err, c->errlen, "%s: at most %d header names", c->key, MAX_NAMES);
        return PK_ERR_INVALID;
    }
    if (c->l) /* compared without case (in_list) */
        c->l->names[c->l->n++] = pk_xstrndup(s, len);
    return 0;
}

/* Parses a comma list of header names into l (l NULL: checks only). */
static int parse_list(const char *key, const char *list, bool allow_star, struct name_list *l,
                      char *err, size_t errlen)
{
    struct parse_ctx c = {key, allow_star, l, 0, err, errlen};
    return pk_each_item(list, parse_name, &c);
}

static bool in_list(const struct name_list *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (pk_strcaseeq(l->names[i], name))
            return true;
    return false;
}

bool pk_accesslog_header_allowed(const struct pk_accesslog *l, const char *name, bool response)
{
    for (size_t i = 0; i < PK_ARRAY_LEN(always_blocked); i++)
        if (pk_strcaseeq(always_blocked[i], name))
            return false;
    if (in_list(&l->block, name))
        return false;
    const struct name_list *allow = response ? &l->resp_allow : &l->req_allow;
    return allow->all || in_list(allow, name);
}

int pk_accesslog_check(const struct pk_access_opts *o, char *err, size_t errlen)
{
    if (parse_list("log.access-request-headers", o->request_headers, true, NULL, err, errlen) ||
        parse_list("log.access-response-headers", o->response_headers, true, NULL, err, errlen) ||
        parse_list("log.access-block-headers", o->block_headers, false, NULL, err, errlen))
        return PK_ERR_INVALID;
    return 0;
}

static void flush(struct pk_accesslog *l)
{
    size_t n = evbuffer_get_length(l->pending);
    if (n)
        pk_log_lines((const char *)evbuffer_pullup(l->pending, -1), n);
    evbuffer_drain(l->pending, n);
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    flush(arg);
}

static struct pk_access_opts access_opts(const struct pk_log_options *o, const char *node)
{
    return (struct pk_access_opts){.enabled = o->access,
                                   .node = node,
                                   .request_headers = o->access_request_headers,
                                   .response_headers = o->access_response_headers,
                                   .block_headers = o->access_block_headers};
}

int pk_log_options_check(const struct pk_log_options *o, char *err, size_t errlen)
{
    if (pk_log_check(o->level, o->format, o->subsystems, err, errlen) != 0)
        return PK_ERR_INVALID;
    struct pk_access_opts ao = access_opts(o, NULL);
    return pk_accesslog_check(&ao, err, errlen);
}

struct pk_accesslog *pk_accesslog_from_options(const struct pk_log_options *o, const char *node,
                                               struct event_base *base)
{
    struct pk_access_opts ao = access_opts(o, node);
    return pk_accesslog_new(&ao, base);
}

struct pk_accesslog *pk_accesslog_new(const struct pk_access_opts *o, struct event_base *base)
{
    struct pk_accesslog *l = pk_xcalloc(1, sizeof(*l));
    l->pending = pk_xevbuffer_new();
    if (base)
        l->flush_ev = pk_xevent_new(base, -1, 0, flush_cb, l);
    char err[256];
    l->enabled = o->enabled;
    l->node = o->node ? pk_xstrdup(o->node) : NULL;
    /* Checked at config time: a failure here leaves the list empty (nothing logged). */
    parse_list("log.access-request-headers", o->request_headers, true, &l->req_allow, err,
               sizeof(err));
    parse_list("log.access-response-headers", o->response_headers, true, &l->resp_allow, err,
               sizeof(err));
    parse_list("log.access-block-headers", o->block_headers, false, &l->block, err, sizeof(err));
    return l;
}

static void list_free(struct name_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->names[i]);
}

void pk_accesslog_del(struct pk_accesslog *l)
{
    if (!l)
        return;
    flush(l);
    json_object_put(l->line);
    if (l->flush_ev)
        event_free(l->flush_ev);
    evbuffer_free(l->pending);
    list_free(&l->req_allow);
    list_free(&l->resp_allow);
    list_free(&l->block);
    free(l->node);
    free(l);
}

bool pk_accesslog_wants_request_headers(const struct pk_accesslog *l)
{
    return l && l->enabled && (l->req_allow.all || l->req_allow.n > 0);
}

bool pk_accesslog_wants_response_headers(const struct pk_accesslog *l)
{
    return l && l->enabled && (l->resp_allow.all || l->resp_allow.n > 0);
}

/* ---- records --------------------------------------------------------------------------- */

#define copy(dst, src) pk_strcopy(dst, sizeof(dst), src)

static void add_headers(struct json_object *o, const struct pk_accesslog *l, const char *key,
                        const struct pk_hdrs *h, bool response)
{
    const struct name_list *allow = response ? &l->resp_allow : &l->req_allow;
    if (!h || !(allow->all || allow->n))
        return;
    struct json_object *hs = NULL;
    for (size_t i = 0; i < h->n; i++) {
        const struct pk_hdr *f = &h->v[i];
        if (!pk_accesslog_header_allowed(l, f->name, response))
            continue;
        if (!hs)
            hs = json_object_new_object();
        /* A repeated field's values are joined, as HTTP allows. */
        struct json_object *prev;
        if (json_object_object_get_ex(hs, f->name, &prev)) {
            char *v =
                pk_xasprintf("%s, %.*s", json_object_get_string(prev), (int)f->vlen, f->value);
            json_object_object_add(hs, f->name, json_object_new_string(v));
            free(v);
        } else {
            json_object_object_add(hs, f->name, json_object_new_string_len(f->value, (int)f->vlen));
        }
    }
    if (hs)
        json_object_object_add(o, key, hs);
}

/* ---- the log line ------------------------------------------------------------------------ */

/* duration_ms with three decimals (json-c's default writes 17 significant digits). */
/* The value is whole microseconds over 1000, so "%.3f" is its integer part, a dot and the
 * microseconds' last three digits: written as such, without the float formatting. */
static int ms_to_json(struct json_object *jso, struct printbuf *pb, int level, int flags)
{
    PK_UNUSED(level);
    PK_UNUSED(flags);
    double ms = json_object_get_double(jso);
    char buf[48];
    int n;
    if (ms >= 0 && ms < 1e12) {
        uint64_t us = (uint64_t)(ms * 1000.0 + 0.5);
        pk_utoa(buf, sizeof(buf), us / 1000);
        size_t len = strlen(buf);
        unsigned frac = (unsigned)(us % 1000);
        buf[len++] = '.';
        buf[len++] = (char)('0' + frac / 100);
        buf[len++] = (char)('0' + frac / 10 % 10);
        buf[len++] = (char)('0' + frac % 10);
        n = (int)len;
    } else {
        n = snprintf(buf, sizeof(buf), "%.3f", ms);
    }
    return printbuf_memappend(pb, buf, n) < 0 ? -1 : 0;
}

/* pk_rfc3339 of unix_ms, the text up to the seconds kept from the last call in the same
 * second (lines come many a second). */
static const char *line_time(struct pk_accesslog *l, int64_t unix_ms, char *buf, size_t len)
{
    int64_t sec = unix_ms / 1000, ms = unix_ms % 1000;
    if (ms < 0) { /* before 1970: floor, as pk_rfc3339 does */
        sec--;
        ms += 1000;
    }
    if (!l->time_prefix_len || sec != l->time_sec) {
        pk_rfc3339(l->time_prefix, sizeof(l->time_prefix), sec * 1000);
        l->time_prefix_len = strlen(l->time_prefix) - 4; /* less "000Z" */
        l->time_sec = sec;
    }
    if (len < l->time_prefix_len + 5)
        return pk_rfc3339(buf, len, unix_ms);
    memcpy(buf, l->time_prefix, l->time_prefix_len);
    char *p = buf + l->time_prefix_len;
    *p++ = (char)('0' + ms / 100);
    *p++ = (char)('0' + ms / 10 % 10);
    *p++ = (char)('0' + ms % 10);
    *p++ = 'Z';
    *p = '\0';
    return buf;
}

/* The line's object is kept from line to line and its values are set in place (set_fields),
 * so that once its keys exist a line costs no allocation: only an optional key that comes
 * or goes (tunnel, peer, error, headers) is added or removed. Keys are written in the
 * order they were added. */
static struct json_object *line_object(struct pk_accesslog *l)
{
    if (!l->line) {
        l->line = json_object_new_object();
        const char *fixed[] = {"time", "level", "subsystem", "msg"};
        for (size_t i = 0; i < PK_ARRAY_LEN(fixed); i++)
            json_object_object_add(l->line, fixed[i], json_object_new_string("access"));
    }
    return l->line;
}

/* Sets a string value; an empty or NULL one removes the key. */
static void line_str(struct json_object *o, const char *key, const char *v)
{
    struct json_object *cur;
    bool has = json_object_object_get_ex(o, key, &cur);
    if (!v || !*v) {
        if (has)
            json_object_object_del(o, key);
        return;
    }
    if (has && json_object_is_type(cur, json_type_string))
        json_object_set_string(cur, v);
    else
        json_object_object_add(o, key, json_object_new_string(v));
}

static void line_int(struct json_object *o, const char *key, int64_t v)
{
    struct json_object *cur;
    if (json_object_object_get_ex(o, key, &cur))
        json_object_set_int64(cur, v);
    else
        json_object_object_add(o, key, json_object_new_int64(v));
}

static void line_ms(struct json_object *o, const char *key, uint64_t us)
{
    struct json_object *cur;
    if (!json_object_object_get_ex(o, key, &cur)) {
        cur = json_object_new_double(0);
        json_object_set_serializer(cur, ms_to_json, NULL, NULL);
        json_object_object_add(o, key, cur);
    }
    json_object_set_double(cur, (double)us / 1000.0);
}

/* The record's fields after time (and level, subsystem, msg in the log), on a new object
 * or on the kept line. */
static void set_fields(struct json_object *o, const char *node, const struct pk_access_rec *r)
{
    line_str(o, "node", node);
    line_str(o, "kind", r->kind);
    line_str(o, "endpoint", r->endpoint);
    line_str(o, "client", r->client);
    line_str(o, "method", r->method);
    line_str(o, "host", r->host);
    line_str(o, "path", r->path);
    line_int(o, "status", r->status);
    line_int(o, "bytes_in", (int64_t)r->bytes_in);
    line_int(o, "bytes_out", (int64_t)r->bytes_out);
    line_ms(o, "duration_ms", r->duration_us);
    line_str(o, "route", r->route);
    line_str(o, "tunnel", r->tunnel);
    line_str(o, "peer", r->peer);
    line_str(o, "forwarded_by", r->forwarded_by);
    line_str(o, "error", r->error);
}

void pk_accesslog_add(struct pk_accesslog *l, const struct pk_access_rec *r)
{
    if (!l)
        return;
    struct slot *s = &l->ring[l->next];
    l->next = (l->next + 1) % PK_ACCESS_RING;
    if (l->count < PK_ACCESS_RING)
        l->count++;
    /* The wall-clock time the record started: now less its duration. */
    s->start_ms = pk_unix_ms() - (int64_t)(r->duration_us / 1000);
    copy(s->kind, r->kind);
    copy(s->endpoint, r->endpoint);
    copy(s->client, r->client);
    copy(s->method, r->method);
    copy(s->host, r->host);
    copy(s->path, r->path);
    copy(s->route, r->route);
    copy(s->tunnel, r->tunnel);
    copy(s->peer, r->peer);
    copy(s->forwarded_by, r->forwarded_by);
    copy(s->error, r->error);
    s->status = r->status;
    s->bytes_in = r->bytes_in;
    s->bytes_out = r->bytes_out;
    s->duration_us = r->duration_us;

    enum pk_log_level level = r->status >= 500 ? PK_LOG_WARN : PK_LOG_INFO;
    if (!l->enabled || !pk_log_enabled(level, "access"))
        return;
    /* The line's values are whole (the ring keeps them cut). */
    struct json_object *o = line_object(l);
    char time[32];
    line_str(o, "time", line_time(l, s->start_ms, time, sizeof(time)));
    line_str(o, "level", level == PK_LOG_WARN ? "warn" : "info");
    line_str(o, "msg", strcmp(s->kind, "http") == 0 ? "request" : "stream");
    set_fields(o, l->node, r);
    json_object_object_del(o, "request_headers");
    json_object_object_del(o, "response_headers");
    add_headers(o, l, "request_headers", r->request_headers, false);
    add_headers(o, l, "response_headers", r->response_headers, true);
    size_t n;
    const char *js = json_object_to_json_string_length(
        o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
    evbuffer_add(l->pending, js, n);
    evbuffer_add(l->pending, "\n", 1);
    if (!l->flush_ev || evbuffer_get_length(l->pending) >= PK_ACCESS_FLUSH_BYTES)
        flush(l);
    else if (!event_pending(l->flush_ev, EV_TIMEOUT, NULL))
        event_active(l->flush_ev, EV_TIMEOUT, 0);
}

struct json_object *pk_accesslog_recent_json(const struct pk_accesslog *l)
{
    struct json_object *a = json_object_new_array();
    if (!l)
        return a;
    for (size_t i = 0; i < l->count; i++) {
        const struct slot *s = &l->ring[(l->next + PK_ACCESS_RING - 1 - i) % PK_ACCESS_RING];
        struct pk_access_rec r = {
            .kind = s->kind,
            .endpoint = s->endpoint,
            .client = s->client,
            .method = s->method,
            .host = s->host,
            .path = s->path,
            .status = s->status,
            .bytes_in = s->bytes_in,
            .bytes_out = s->bytes_out,
            .duration_us = s->duration_us,
            .route = s->route,
            .tunnel = s->tunnel,
            .peer = s->peer,
            .forwarded_by = s->forwarded_by,
            .error = s->error,
        };
        struct json_object *o = json_object_new_object();
        char time[32];
        json_object_object_add(o, "time",
                               json_object_new_string(pk_rfc3339(time, sizeof(time), s->start_ms)));
        set_fields(o, l->node, &r);
        json_object_array_add(a, o);
    }
    return a;
}
