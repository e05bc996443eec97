#include "base/log.h"

#include "base/base.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

enum pk_log_level pk_log_min_level = PK_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int pk_log_parse_level(const char *s, enum pk_log_level *out)
{
    for (size_t i = 0; i < PK_ARRAY_LEN(level_names); i++) {
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

void pk_log_write(enum pk_log_level level, const char *subsys, const char *fmt, ...)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;
    va_list ap;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %-5s %-8s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(tv.tv_usec / 1000), level_names[level], subsys);
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : PK_MIN((size_t)m, sizeof(line) - (size_t)n - 2));
    line[len++] = '\n';
    /* One write per line keeps lines whole when several processes share a terminal. */
    fwrite(line, 1, len, stderr);
    fflush(stderr);
}
