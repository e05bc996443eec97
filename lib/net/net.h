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
struct evbuffer;

/* TCP_NODELAY and keepalive on a connected socket. */
void pk_tune_socket(int fd);

/* Large writes on a bufferevent that carries bulk bytes: libevent 2.1 writes at most
 * 16 KiB per call by default; this raises it to PK_BEV_BULK_WRITE. */
#define PK_BEV_BULK_WRITE (256 * 1024)
void pk_bev_tune_bulk(struct bufferevent *bev);

/* A bufferevent straight on a plain socket (not TLS, not a filter): the bytes on its
 * socket are the stream's, so pk_bev_read_more and pk_bev_write_direct may be used. */
bool pk_bev_is_plain(struct bufferevent *bev);

/* How pk_bev_read_more stopped. */
enum pk_read_end {
    PK_READ_AGAIN, /* the socket has nothing more for now, or max was reached */
    PK_READ_EOF,   /* the peer closed its side */
    PK_READ_ERROR, /* the read failed: errno says why */
};

/* Reads what the socket of a plain socket bufferevent holds into the bufferevent's input,
 * up to max bytes, in reads of up to 64 KiB. libevent 2.1's own read takes at most 4096
 * bytes per call whatever bufferevent_set_max_single_read says (evbuffer_read caps it), so
 * a bulk stream costs a readv, a FIONREAD ioctl and a loop round per 4 KiB; the owner of a
 * bulk bufferevent calls this from its read callback, after libevent's read, to drain the
 * socket in a few large reads. Never for a TLS or filter bufferevent (the bytes on the
 * socket are not the stream's). Returns the bytes added; *end says how it stopped (the
 * owner handles EOF and errors as its event callback would: libevent does not see them). */
size_t pk_bev_read_more(struct bufferevent *bev, size_t max, enum pk_read_end *end);

/* At the start of a read callback: whether the input holds a full libevent read (4096
 * bytes) or more, so that more may be waiting on the socket and pk_bev_read_more is worth
 * a call; a shorter read means the socket was drained (and a call would only say EAGAIN). */
bool pk_bev_read_was_full(struct bufferevent *bev);

/* Writes buf straight to the socket of a plain socket bufferevent whose output is empty,
 * as much as the socket takes now (nginx's optimistic write); what it does not take is
 * moved to the output, which the bufferevent then writes as usual (and where a failed
 * write is reported). Bytes put in a bufferevent's output make libevent add its write
 * event and, once written, delete it: two epoll_ctl per response on a keep-alive
 * connection; a direct write costs none. The caller makes sure the output is empty (or
 * bytes would be reordered) and the bufferevent is not TLS. Returns the bytes written. */
size_t pk_bev_write_direct(struct bufferevent *bev, struct evbuffer *buf);

/* Output batched for a direct write: what a connection writes during one round of the
 * loop (a response head, then its body as it arrives) goes to the socket in one write at
 * the end of the round (pk_bev_write_direct), or to the bufferevent's output when bytes
 * are queued there already or the connection is TLS. For the HTTP/1.1 ends, whose writes
 * would otherwise add and delete the write event for every response. */
struct pk_wbatch {
    struct bufferevent *bev;
    struct evbuffer *buf; /* NULL until first needed */
    struct event *flush_ev;
    bool plain;
    void (*on_flushed)(void *arg);
    void *arg;
};

/* bev: a connected bufferevent (plain or TLS). on_flushed (may be NULL) runs after an
 * end-of-round flush that wrote something: what the socket took never passes through the output, so
 * the bufferevent's write callback, which a writer waits for to write more, does not come for it.
 */
void pk_wbatch_init(struct pk_wbatch *w, struct event_base *base, struct bufferevent *bev,
                    void (*on_flushed)(void *arg), void *arg);
/* Where to write now: the batch (its flush scheduled for the end of the round) or, when
 * the output holds bytes already or the connection is TLS, the output itself. */
struct evbuffer *pk_wbatch_out(struct pk_wbatch *w);
/* Bytes written and not yet taken by the socket (batch and output). */
size_t pk_wbatch_pending(const struct pk_wbatch *w);
/* Writes the batch now (before closing the connection or handing its bufferevent over:
 * after this, everything written is in the socket or in the output). */
void pk_wbatch_flush(struct pk_wbatch *w);
/* Frees the batch (not the bufferevent), flushing it first unless flush is false (the
 * connection is being cut short: what is not written yet is dropped). */
void pk_wbatch_free(struct pk_wbatch *w, bool flush);

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
