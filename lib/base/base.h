/* base: allocation, error codes, time and small string helpers shared by every module.
 *
 * Allocation of small objects never fails from the caller's point of view: pk_xmalloc
 * and friends abort the process when memory is exhausted. Sizes that come from the
 * network are bounded by the caller before they reach an allocator. */
#ifndef PK_BASE_H
#define PK_BASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>

struct bufferevent;
struct evbuffer;
struct event;
struct event_base;

/* Error codes: 0 is success, failures are negative. */
enum pk_err {
    PK_OK = 0,
    PK_ERR_INVALID = -1,   /* bad argument or malformed input */
    PK_ERR_NOMEM = -2,     /* a bounded buffer is full */
    PK_ERR_IO = -3,        /* a socket or file operation failed */
    PK_ERR_NOTFOUND = -4,  /* no such thing (endpoint, file, key) */
    PK_ERR_TIMEOUT = -5,   /* a deadline passed */
    PK_ERR_PROTOCOL = -6,  /* the peer broke the protocol */
    PK_ERR_CLOSED = -7,    /* the object is closing or closed */
    PK_ERR_TOO_LARGE = -8, /* input above a configured limit */
};

/* A static, human-readable description of an error code. */
const char *pk_strerror(int err);

void *pk_xmalloc(size_t n);
void *pk_xcalloc(size_t nmemb, size_t size);
void *pk_xrealloc(void *p, size_t n);
char *pk_xstrdup(const char *s);
char *pk_xstrndup(const char *s, size_t n);
/* printf into a newly allocated string. */
char *pk_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Monotonic clock in milliseconds, and in microseconds. */
uint64_t pk_now_ms(void);
uint64_t pk_now_us(void);
/* The wall clock in milliseconds since the Unix epoch (for timestamps shown to people;
 * durations use the monotonic clock above). */
int64_t pk_unix_ms(void);
/* Writes unix_ms as RFC 3339 UTC with milliseconds ("2026-12-07T20:18:23.480Z"); len of
 * 32 is always enough. Returns buf. */
char *pk_rfc3339(char *buf, size_t len, int64_t unix_ms);
/* A random number from the kernel (getrandom): for jitter and random choices, safe from
 * any thread, no seeding. */
uint64_t pk_random_u64(void);
/* A duration in milliseconds as the struct timeval libevent takes. */
struct timeval pk_ms_timeval(uint64_t ms);
/* bufferevent_socket_new and evbuffer_new that abort when they fail (they fail only for
 * want of memory with a valid base: the pk_xmalloc policy). */
struct bufferevent *pk_xbufferevent_socket_new(struct event_base *base, int fd, int options);
struct evbuffer *pk_xevbuffer_new(void);
/* event_new that aborts when it fails (only for want of memory: the pk_xmalloc policy). */
struct event *pk_xevent_new(struct event_base *base, int fd, short what,
                            void (*cb)(int, short, void *), void *arg);
/* Raises the soft limit of open files to the hard limit (a proxy holds two descriptors
 * per proxied connection). Returns the soft limit now in force. */
unsigned long pk_raise_nofile(void);

/* Copies src (NULL: "") into dst of len bytes (len > 0), cut to len - 1 bytes and always
 * terminated; snprintf's "%s" without the format parsing. Returns dst. */
char *pk_strcopy(char *dst, size_t len, const char *src);

/* Writes v in decimal into buf of len bytes (len >= 21 always fits); snprintf's "%llu"
 * for the request path. Returns buf. */
char *pk_utoa(char *buf, size_t len, unsigned long long v);
/* Writes "host:port", or "[host]:port" when host holds a ':' (IPv6), into buf of len
 * bytes, cut to fit like pk_strcopy; the same text as snprintf with "[%s]:%u" or "%s:%u",
 * for the request path. Returns buf. */
char *pk_hostport(char *buf, size_t len, const char *host, unsigned port);

/* ASCII case-insensitive comparisons for protocol tokens. */
bool pk_strcaseeq(const char *a, const char *b);
/* Calls fn on each item of a comma list (blanks around items trimmed, empty items
 * skipped; NULL is an empty list) and stops at the first non-zero return, which it
 * returns; 0 when every call returned 0. */
int pk_each_item(const char *list, int (*fn)(const char *item, size_t len, void *arg), void *arg);
bool pk_memcaseeq(const char *a, size_t alen, const char *b);

/* True when s is 1-128 characters of [A-Za-z0-9._-] (PROTOCOL.md 1.1). */
bool pk_endpoint_id_valid(const char *s, size_t len);

#define PK_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define PK_MIN(a, b)    ((a) < (b) ? (a) : (b))
#define PK_MAX(a, b)    ((a) > (b) ? (a) : (b))
#define PK_UNUSED(x)    (void)(x)

#endif
