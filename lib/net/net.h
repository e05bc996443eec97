/* net: socket options, addresses and closing connections politely (ports: listener.h). */
#ifndef PK_NET_H
#define PK_NET_H

#include "base/list.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct bufferevent;
struct event_base;

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
