#include "base/log.h"

#include "base/base.h"

#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum pk_log_level pk_log_min_level = PK_LOG_INFO;
size_t pk_log_nsubsystems;

#define MAX_SUBSYSTEMS 32

static enum pk_log_format log_format = PK_LOG_TEXT;
static char subsystems[MAX_SUBSYSTEMS][32];

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int pk_log_parse_level(const char *s, enum pk_log_level *out)
{
    for (size_t i = 0; s && i < PK_ARRAY_LEN(level_names); i++) {
        if (pk_strcaseeq(s, level_names[i])) {
            *out = (enum pk_log_level)i;
            return 0;
        }
    }
    return PK_ERR_INVALID;
}

void pk_log_set_level(enum pk_log_level level)
{
    pk_log_min_level = level;
}

int pk_log_parse_format(const char *s, enum pk_log_format *out)
{
    if (s && pk_strcaseeq(s, "text")) {
        *out = PK_LOG_TEXT;
        return 0;
    }
    if (s && pk_strcaseeq(s, "json")) {
        *out = PK_LOG_JSON;
        return 0;
    }
    return PK_ERR_INVALID;
}

struct check_ctx {
    char *err;
    size_t errlen;
    size_t n;
};

static int check_name(const char *name, size_t len, void *arg)
{
    struct check_ctx *c = arg;
    bool ok = len < sizeof(subsystems[0]);
    for (size_t i = 0; ok && i < len; i++)
        ok = (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
             name[i] == '.' || name[i] == '-' || name[i] == '_';
    if (!ok) {
        snprintf(c->err, c->errlen,
                 "log.subsystems: invalid subsystem '%.*s' (lower-case names such as proxy, "
                 "upstream, cluster, access)",
                 (int)PK_MIN(len, (size_t)64), name);
        return PK_ERR_INVALID;
    }
    if (++c->n > MAX_SUBSYSTEMS) {
        snprintf(c->err, c->errlen, "log.subsystems: at most %d subsystems", MAX_SUBSYSTEMS);
        return PK_ERR_INVALID;
    }
    return 0;
}

int pk_log_check_subsystems(const char *list, char *err, size_t errlen)
{
    struct check_ctx c = {err, errlen, 0};
    return pk_each_item(list, check_name, &c);
}

static int add_name(const char *name, size_t len, void *arg)
{
    PK_UNUSED(arg);
    memcpy(subsystems[pk_log_nsubsystems], name, len);
    subsystems[pk_log_nsubsystems][len] = '\0';
    pk_log_nsubsystems++;
    return 0;
}

int pk_log_check(const char *level, const char *format, const char *subsys, char *err,
                 size_t errlen)
{
    enum pk_log_level lvl;
    enum pk_log_format fmt;
    if (pk_log_parse_level(level, &lvl) != 0) {
        snprintf(err, errlen, "log.level: invalid level '%s' (debug, info, warn or error)",
                 level ? level : "");
        return PK_ERR_INVALID;
    }
    if (pk_log_parse_format(format ? format : "text", &fmt) != 0) {
        snprintf(err, errlen, "log.format: invalid format '%s' (text or json)", format);
        return PK_ERR_INVALID;
    }
    return pk_log_check_subsystems(subsys, err, errlen);
}

int pk_log_configure(const char *level, const char *format, const char *subsys, char *err,
                     size_t errlen)
{
    if (pk_log_check(level, format, subsys, err, errlen) != 0)
        return PK_ERR_INVALID;
    pk_log_parse_level(level, &pk_log_min_level);
    pk_log_parse_format(format ? format : "text", &log_format);
    pk_log_nsubsystems = 0;
    pk_each_item(subsys, add_name, NULL);
    return 0;
}

bool pk_log_subsystem_on(const char *subsys)
{
    for (size_t i = 0; i < pk_log_nsubsystems; i++)
        if (strcmp(subsystems[i], subsys) == 0)
            return true;
    return false;
}

bool pk_log_enabled(enum pk_log_level level, const char *subsys)
{
    return level >= pk_log_min_level || (pk_log_nsubsystems && pk_log_subsystem_on(subsys));
}

/* One write per line keeps lines whole when several processes share a terminal. */
static void put_line(const char *line, size_t len)
{
    fwrite(line, 1, len, stderr);
    fflush(stderr);
}

void pk_log_write(enum pk_log_level level, const char *subsys, const char *fmt, ...)
{
    char line[2048], ts[32];
    va_list ap;

    pk_rfc3339(ts, sizeof(ts), pk_unix_ms());
    if (log_format == PK_LOG_JSON) {
        char msg[2048];
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "time", json_object_new_string(ts));
        json_object_object_add(o, "level", json_object_new_string(level_names[level]));
        json_object_object_add(o, "subsystem", json_object_new_string(subsys));
        json_object_object_add(o, "msg", json_object_new_string(msg));
        size_t n;
        const char *s = json_object_to_json_string_length(
            o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
        char *out = malloc(n + 1);
        if (out) {
            memcpy(out, s, n);
            out[n] = '\n';
            put_line(out, n + 1);
            free(out);
        }
        json_object_put(o);
        return;
    }
    int n = snprintf(line, sizeof(line), "%s %-5s %-8s ", ts, level_names[level], subsys);
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : PK_MIN((size_t)m, sizeof(line) - (size_t)n - 2));
    line[len++] = '\n';
    put_line(line, len);
}

void pk_log_lines(const char *lines, size_t len)
{
    put_line(lines, len);
}
