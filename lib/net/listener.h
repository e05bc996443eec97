/* listener: a listening socket that an exhausted descriptor table cannot turn into a busy
 * loop.
 *
 * libevent's evconnlistener stays armed when accept() fails with EMFILE or ENFILE: the
 * pending connection is still there, so the loop wakes at once, fails again and logs each
 * time (measured: 98% CPU and 195,000 log lines a second with 1,024 descriptors). A
 * pk_listener instead
 *   - keeps one descriptor in reserve (/dev/null); on EMFILE/ENFILE it frees the reserve,
 *     accepts the oldest pending connection and closes it at once (that client gets an
 *     immediate close instead of a hang), then takes the reserve back, as nginx, haproxy
 *     and libuv do;
 *   - pauses accepting for PK_LISTENER_PAUSE_MS, then tries again (connections wait in
 *     the kernel's backlog meanwhile);
 *   - logs at most one line a second per listener, with the count since the last line;
 *   - counts accepted connections and accept failures.
 * (Connection caps close new connections at once: see pk_accept_refuse_over_limit.)
 *
 * Every function must be called from the thread running the loop. */
#ifndef PK_LISTENER_H
#define PK_LISTENER_H

#include <event2/util.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct sockaddr;
struct pk_listener;

/* How long accepting stops after accept() failed for want of a descriptor. */
#define PK_LISTENER_PAUSE_MS 100

/* An accepted connection: fd is owned by the callee; sa is the peer's address. */
typedef void (*pk_accept_cb)(evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg);

struct pk_listener_stats {
    uint64_t accepted;      /* connections handed to the callback */
    uint64_t accept_errors; /* accept() failures (descriptor exhaustion included) */
    uint64_t fd_exhausted;  /* failures for want of a descriptor (EMFILE, ENFILE, ENOBUFS,
                               ENOMEM) */
    uint64_t shed;          /* connections closed at once through the reserve descriptor */
};

/* Binds "host:port", ":port" or "[v6]:port" (the host resolved with getaddrinfo: numeric
 * addresses or names from /etc/hosts) and starts accepting. name ("proxy") tags the log
 * lines and names the option in errors ("proxy.bind-addr: cannot listen on ..."; "forward"
 * for a --forward listener). Returns NULL and a message in err on failure. */
struct pk_listener *pk_listener_new(struct event_base *base, const char *name, const char *addr,
                                    pk_accept_cb cb, void *arg, char *err, size_t errlen);
/* Closes the socket and the reserve descriptor. NULL is a no-op. Safe from the accept
 * callback of another listener, not from its own. */
void pk_listener_del(struct pk_listener *l);
/* "127.0.0.1:8000" for the address the listener is bound to ("?" when unknown). */
void pk_listener_addr(const struct pk_listener *l, char *buf, size_t len);
void pk_listener_stats(const struct pk_listener *l, struct pk_listener_stats *out);

#endif
