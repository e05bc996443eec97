/* dial: an outbound TCP connection by name — resolve with c-ares, then try each address
 * in turn until one connects or the deadline passes. */
#ifndef PK_DIAL_H
#define PK_DIAL_H

#include <stdint.h>

struct bufferevent;
struct event_base;
struct pk_resolver;
struct pk_dial;

/* On success err is 0 and bev is a connected bufferevent owned by the callee (callbacks
 * unset, not enabled). On failure bev is NULL and why says what went wrong, e.g.
 * "127.0.0.1:8001: Connection refused". The dial object is freed after the callback. */
typedef void (*pk_dial_cb)(int err, struct bufferevent *bev, const char *why, void *arg);

struct pk_dial *pk_dial_start(struct event_base *base, struct pk_resolver *res, const char *host,
                              uint16_t port, uint64_t timeout_ms, pk_dial_cb cb, void *arg);
/* The callback will not be called. NULL is a no-op. Not from inside the callback. */
void pk_dial_cancel(struct pk_dial *d);

#endif
