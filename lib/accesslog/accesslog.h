/* accesslog: one record per request or raw stream, on the server and the sidecar.
 *
 * A finished exchange fills a pk_access_rec (pointers into its own state: nothing is
 * copied by the caller) and calls pk_accesslog_add, which
 *   - copies the record into a ring of the last PK_ACCESS_RING records (fixed-size slots,
 *     long values cut: no allocation), served as JSON by /status/requests, newest first;
 *   - when the access log is on (log.access), writes it as one JSON object per line on the
 *     log stream, subsystem "access", at info level, or warn for a 5xx: a log.level of warn
 *     keeps only the failures.
 *
 * The record's fields (docs/manage/observability.md): time (start, RFC 3339), level,
 * subsystem, msg ("request" or "stream"), node (the server's id), kind (http, upgrade,
 * tcp), endpoint, client, method, host, path, status, bytes_in (request body, or client to
 * service on a stream), bytes_out, duration_ms, route (where it went: "tunnel", "peer",
 * "proxy" when the proxy answered itself; on the sidecar "service" for the streams the
 * server sent, "server" for --forward connections), tunnel (the sidecar's
 * address), peer (the node it was forwarded to), forwarded_by (the node that forwarded it
 * to us), error (why the proxy answered, or why the exchange failed), and
 * request_headers / response_headers when allowed.
 *
 * Headers: none are logged unless named in an allow list (log.access-request-headers,
 * log.access-response-headers: comma lists of names, or "*" for all). Names in the block
 * list (log.access-block-headers) never are, nor, whatever the lists say, authorization,
 * proxy-authorization, cookie, set-cookie, x-piko-authorization and piko-authorization.
 *
 * Lines are not written one by one: they gather in a buffer written out in one write when
 * the loop has run the callbacks that produced them (a deferred event), or at once past
 * PK_ACCESS_FLUSH_BYTES, and when the log is freed. At high request rates this is one
 * write for many lines instead of one each; an access line may come a moment after a
 * text line logged later in the same loop iteration.
 *
 * One log belongs to one loop's thread; nothing here locks. */
#ifndef PK_ACCESSLOG_H
#define PK_ACCESSLOG_H

#include "config/config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct json_object;
struct pk_hdrs;
struct pk_accesslog;

#define PK_ACCESS_RING        100
#define PK_ACCESS_FLUSH_BYTES (64 * 1024)

struct pk_access_opts {
    bool enabled;                 /* log.access: write the records */
    const char *node;             /* the server's node id (NULL on the sidecar) */
    const char *request_headers;  /* allow list, or NULL */
    const char *response_headers; /* allow list, or NULL */
    const char *block_headers;    /* block list, or NULL */
};

/* The log.* keys of both binaries, as their configuration structs hold them (a member of
 * this type, whose options come from PK_LOG_OPTS). */
struct pk_log_options {
    char *level, *format, *subsystems;
    bool access;
    char *access_request_headers, *access_response_headers, *access_block_headers;
};

#define PK_LOG_OPT(name, type, cfgtype, field, def, help)                                          \
    {                                                                                              \
        name, type, offsetof(cfgtype, field), def, help, NULL                                      \
    }
/* The entries of an options table (config/config.h) for the member m of cfgtype. */
#define PK_LOG_OPTS(cfgtype, m)                                                                    \
    PK_LOG_OPT("log.level", PK_OPT_STRING, cfgtype, m.level, "info",                               \
               "debug, info, warn or error"),                                                      \
        PK_LOG_OPT("log.format", PK_OPT_STRING, cfgtype, m.format, "text",                         \
                   "text (time level subsystem message) or json (one object per line)"),           \
        PK_LOG_OPT("log.subsystems", PK_OPT_STRING, cfgtype, m.subsystems, "",                     \
                   "Comma list of subsystems logged at every level whatever log.level says "       \
                   "(e.g. proxy,cluster)"),                                                        \
        PK_LOG_OPT("log.access", PK_OPT_BOOL, cfgtype, m.access, "true",                           \
                   "Log one JSON line per request and per raw stream (subsystem access; a 5xx "    \
                   "at warn)"),                                                                    \
        PK_LOG_OPT("log.access-request-headers", PK_OPT_STRING, cfgtype, m.access_request_headers, \
                   "",                                                                             \
                   "Request headers the access log records: comma list of names, or * for all "    \
                   "(credentials and cookies never)"),                                             \
        PK_LOG_OPT("log.access-response-headers", PK_OPT_STRING, cfgtype,                          \
                   m.access_response_headers, "",                                                  \
                   "Response headers the access log records: comma list of names, or * for all "   \
                   "(set-cookie never)"),                                                          \
        PK_LOG_OPT("log.access-block-headers", PK_OPT_STRING, cfgtype, m.access_block_headers, "", \
                   "Headers the access log never records, whatever the allow lists say")

/* Checks every log.* key. Returns 0, or PK_ERR_INVALID with a message naming the key. */
int pk_log_options_check(const struct pk_log_options *o, char *err, size_t errlen);
/* The access log these options ask for (node: the server's id, NULL on the sidecar). */
struct pk_accesslog *pk_accesslog_from_options(const struct pk_log_options *o, const char *node,
                                               struct event_base *base);

struct pk_access_rec {
    const char *kind; /* "http", "upgrade" or "tcp" */
    const char *endpoint, *client, *method, *host, *path;
    int status; /* 0: no answer reached the client */
    uint64_t bytes_in, bytes_out;
    uint64_t duration_us;
    const char *route;        /* "tunnel", "peer", "proxy", "service", "server" */
    const char *tunnel;       /* or NULL */
    const char *peer;         /* or NULL */
    const char *forwarded_by; /* or NULL */
    const char *error;        /* or NULL */
    const struct pk_hdrs *request_headers, *response_headers; /* or NULL */
};

/* Checks the three header lists (names of token characters, or "*" for an allow list).
 * Returns 0, or PK_ERR_INVALID with a message naming the key. */
int pk_accesslog_check(const struct pk_access_opts *o, char *err, size_t errlen);
/* A new log (the options checked before). Strings are copied. base: the loop that flushes
 * the lines (NULL: each line is written at once). */
struct pk_accesslog *pk_accesslog_new(const struct pk_access_opts *o, struct event_base *base);
/* Writes the lines not yet written, and frees the log. NULL is a no-op. */
void pk_accesslog_del(struct pk_accesslog *l);

/* True when request / response headers are wanted (the caller keeps them for the
 * record). NULL: false. */
bool pk_accesslog_wants_request_headers(const struct pk_accesslog *l);
bool pk_accesslog_wants_response_headers(const struct pk_accesslog *l);

/* Records a finished request or stream (see above). */
void pk_accesslog_add(struct pk_accesslog *l, const struct pk_access_rec *r);

/* The ring as a JSON array, newest first (new reference). */
struct json_object *pk_accesslog_recent_json(const struct pk_accesslog *l);

/* Whether a header may be logged with these lists (for tests). */
bool pk_accesslog_header_allowed(const struct pk_accesslog *l, const char *name, bool response);

#endif
