/* net: listeners, socket options and closing connections politely. */
#ifndef PK_NET_H
#define PK_NET_H

#include "base/list.h"

#include <event2/listener.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct bufferevent;
struct event_base;

/* Binds a bare evconnlistener (pk_listener_new in listener.h wraps one with the handling
 * of descriptor exhaustion; use that for ports) on "host:port", ":port" or "[v6]:port" (the host is
 * resolved with getaddrinfo at start-up: numeric addresses or names from /etc/hosts). Returns NULL
 * and a message in err on failure. */
struct evconnlistener *pk_listen(struct event_base *base, const char *addr, evconnlistener_cb cb,
                                 void *arg, char *err, size_t errlen);
/* "127.0.0.1:8000" for the address a listener is actually bound to. */
void pk_evlistener_addr(struct evconnlistener *l, char *buf, size_t len);

/* TCP_NODELAY and keepalive on a connected socket. */
void pk_tune_socket(int fd);

/* Splits a sockaddr into a printable IP (no brackets) and a port. */
void pk_sockaddr_ip(const struct sockaddr *sa, char *ip, size_t iplen, uint16_t *port);

/* Connections being closed politely, so that their owner can wait for them to finish
 * (drain) or free them at teardown. on_change (may be NULL) runs when one finished. */
struct pk_linger_list {
    struct pk_list head;
    size_t n;
    void (*on_change)(void *arg);
    void *arg;
};

void pk_linger_list_init(struct pk_linger_list *l, void (*on_change)(void *arg), void *arg);
/* Frees every connection still lingering (teardown). */
void pk_linger_list_free(struct pk_linger_list *l);

/* Closes a bufferevent after its output is flushed: then a TLS connection sends its
 * close_notify, the write side is shut down and input is read and discarded until EOF or
 * 2 seconds (a lingering close, so a response is not destroyed by a reset when the peer
 * still sends). Takes ownership of bev; list
 * (may be NULL) tracks it until it is gone. */
void pk_bev_linger_close(struct bufferevent *bev, struct pk_linger_list *list);

#endif
