#include "base/base.h"

#include <sys/random.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

const char *pk_strerror(int err)
{
    switch (err) {
    case PK_OK:
        return "success";
    case PK_ERR_INVALID:
        return "invalid argument";
    case PK_ERR_NOMEM:
        return "buffer full";
    case PK_ERR_IO:
        return "i/o error";
    case PK_ERR_NOTFOUND:
        return "not found";
    case PK_ERR_TIMEOUT:
        return "timed out";
    case PK_ERR_PROTOCOL:
        return "protocol error";
    case PK_ERR_CLOSED:
        return "closed";
    case PK_ERR_TOO_LARGE:
        return "too large";
    default:
        return "unknown error";
    }
}

static void oom(size_t n)
{
    fprintf(stderr, "fatal: out of memory allocating %zu bytes\n", n);
    abort();
}

void *pk_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *pk_xcalloc(size_t nmemb, size_t size)
{
    void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
    if (!p)
        oom(nmemb * size);
    return p;
}

void *pk_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *pk_xstrdup(const char *s)
{
    return pk_xstrndup(s, strlen(s));
}

char *pk_xstrndup(const char *s, size_t n)
{
    char *p = pk_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *pk_xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *out = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&out, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom(0);
    return out;
}

uint64_t pk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t pk_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int64_t pk_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *pk_rfc3339(char *buf, size_t len, int64_t unix_ms)
{
    time_t sec = (time_t)(unix_ms / 1000);
    int ms = (int)(unix_ms % 1000);
    if (ms < 0) { /* before 1970: floor, so the milliseconds stay positive */
        sec--;
        ms += 1000;
    }
    struct tm tm;
    gmtime_r(&sec, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
    return buf;
}

char *pk_strcopy(char *dst, size_t len, const char *src)
{
    size_t n = src ? strnlen(src, len - 1) : 0;
    memcpy(dst, src ? src : "", n);
    dst[n] = '\0';
    return dst;
}

char *pk_utoa(char *buf, size_t len, unsigned long long v)
{
    char digits[24], *d = digits + sizeof(digits);
    *--d = '\0';
    do {
        *--d = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return pk_strcopy(buf, len, d);
}

char *pk_hostport(char *buf, size_t len, const char *host, unsigned port)
{
    char d[24];
    pk_utoa(d, sizeof(d), port);
    bool v6 = strchr(host, ':') != NULL;
    const char *parts[] = {v6 ? "[" : "", host, v6 ? "]:" : ":", d};
    size_t n = 0;
    for (size_t i = 0; i < PK_ARRAY_LEN(parts) && n + 1 < len; i++) {
        size_t k = strnlen(parts[i], len - 1 - n);
        memcpy(buf + n, parts[i], k);
        n += k;
    }
    buf[n] = '\0';
    return buf;
}

static int lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

bool pk_memcaseeq(const char *a, size_t alen, const char *b)
{
    size_t i;
    for (i = 0; i < alen; i++) {
        if (b[i] == '\0' || lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return false;
    }
    return b[i] == '\0';
}

bool pk_strcaseeq(const char *a, const char *b)
{
    return pk_memcaseeq(a, strlen(a), b);
}

bool pk_endpoint_id_valid(const char *s, size_t len)
{
    if (len == 0 || len > 128)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

unsigned long pk_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    return (unsigned long)rl.rlim_cur;
}

struct timeval pk_ms_timeval(uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    return tv;
}

struct event *pk_xevent_new(struct event_base *base, int fd, short what,
                            void (*cb)(int, short, void *), void *arg)
{
    struct event *ev = event_new(base, fd, what, cb, arg);
    if (!ev) {
        fprintf(stderr, "fatal: event_new failed\n");
        abort();
    }
    return ev;
}

uint64_t pk_random_u64(void)
{
    uint64_t r;
    if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
        /* Only without a kernel entropy pool (early boot): jitter need not be secret. */
        static _Thread_local uint64_t x = 0x9e3779b97f4a7c15ull;
        x ^= pk_now_ms() + 0x632be59bd9b4e019ull;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r = x;
    }
    return r;
}

int pk_each_item(const char *list, int (*fn)(const char *name, size_t len, void *arg), void *arg)
{
    const char *p = list ? list : "";
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *s = p;
        while (*p && *p != ',')
            p++;
        const char *e = p;
        while (e > s && e[-1] == ' ')
            e--;
        if (e > s) {
            int rv = fn(s, (size_t)(e - s), arg);
            if (rv)
                return rv;
        }
    }
    return 0;
}

struct bufferevent *pk_xbufferevent_socket_new(struct event_base *base, int fd, int options)
{
    struct bufferevent *bev = bufferevent_socket_new(base, fd, options);
    if (!bev) {
        fprintf(stderr, "fatal: bufferevent_socket_new failed\n");
        abort();
    }
    return bev;
}

struct evbuffer *pk_xevbuffer_new(void)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        fprintf(stderr, "fatal: evbuffer_new failed\n");
        abort();
    }
    return b;
}
