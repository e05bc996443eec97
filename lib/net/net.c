#include "net/net.h"

#include "base/base.h"
#include "net/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

void pk_sockaddr_ip(const struct sockaddr *sa, char *ip, size_t iplen, uint16_t *port)
{
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, (socklen_t)iplen);
        *port = ntohs(s6->sin6_port);
    } else if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, ip, (socklen_t)iplen);
        *port = ntohs(s4->sin_port);
    } else {
        snprintf(ip, iplen, "unknown");
        *port = 0;
    }
}

void pk_tune_socket(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    int idle = 30, intvl = 10, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

/* evbuffer_read's cap in libevent 2.1 (EVBUFFER_MAX_READ). */
#define LIBEVENT_READ 4096

bool pk_bev_is_plain(struct bufferevent *bev)
{
    return !pk_bev_is_tls(bev) && !bufferevent_get_underlying(bev);
}

bool pk_bev_read_was_full(struct bufferevent *bev)
{
    return evbuffer_get_length(bufferevent_get_input(bev)) >= LIBEVENT_READ;
}

void pk_bev_tune_bulk(struct bufferevent *bev)
{
    bufferevent_set_max_single_write(bev, PK_BEV_BULK_WRITE);
}

/* One read: a 64 KiB chain with its header (libevent rounds chain allocations up to a
 * power of two, so a round 64 KiB read would allocate 128 KiB). */
#define READ_CHUNK (64 * 1024 - 128)

size_t pk_bev_read_more(struct bufferevent *bev, size_t max, enum pk_read_end *end)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    evutil_socket_t fd = bufferevent_getfd(bev);
    size_t total = 0;
    int err = 0;
    *end = PK_READ_AGAIN;
    if (fd < 0)
        return 0;
    /* A socket bufferevent keeps the end of its input frozen outside its own reads. */
    evbuffer_unfreeze(in, 0);
    while (total < max) {
        size_t want = PK_MIN(max - total, (size_t)READ_CHUNK);
        struct evbuffer_iovec v[2];
        int nv = evbuffer_reserve_space(in, (ev_ssize_t)want, v, 2);
        if (nv <= 0)
            break;
        struct iovec iov[2];
        size_t room = 0;
        for (int i = 0; i < nv; i++) {
            iov[i].iov_base = v[i].iov_base;
            iov[i].iov_len = PK_MIN(v[i].iov_len, want - room);
            room += iov[i].iov_len;
        }
        ssize_t n = readv(fd, iov, nv);
        if (n <= 0) {
            err = errno;
            evbuffer_commit_space(in, v, 0);
            if (n == 0)
                *end = PK_READ_EOF;
            else if (err == EINTR)
                continue;
            else if (err != EAGAIN && err != EWOULDBLOCK)
                *end = PK_READ_ERROR;
            break;
        }
        size_t left = (size_t)n;
        int used = 0;
        while (left > 0 && used < nv) {
            v[used].iov_len = PK_MIN(iov[used].iov_len, left);
            left -= v[used].iov_len;
            used++;
        }
        evbuffer_commit_space(in, v, used);
        total += (size_t)n;
        /* A short read: the socket is empty (saves the read that would say EAGAIN). */
        if ((size_t)n < room)
            break;
    }
    evbuffer_freeze(in, 0);
    errno = err;
    return total;
}

size_t pk_bev_write_direct(struct bufferevent *bev, struct evbuffer *buf)
{
    evutil_socket_t fd = bufferevent_getfd(bev);
    size_t done = 0;
    while (fd >= 0 && evbuffer_get_length(buf) > 0) {
        int n = evbuffer_write(buf, fd);
        if (n <= 0)
            break; /* full (EAGAIN) or failed: the bufferevent retries, and reports */
        done += (size_t)n;
    }
    if (evbuffer_get_length(buf) > 0)
        evbuffer_add_buffer(bufferevent_get_output(bev), buf);
    return done;
}

static void wbatch_flush_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_wbatch *w = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    bool wrote = w->buf && evbuffer_get_length(w->buf) > 0;
    pk_wbatch_flush(w);
    if (wrote && w->on_flushed)
        w->on_flushed(w->arg);
}

void pk_wbatch_init(struct pk_wbatch *w, struct event_base *base, struct bufferevent *bev,
                    void (*on_flushed)(void *arg), void *arg)
{
    w->bev = bev;
    w->buf = NULL;
    w->on_flushed = on_flushed;
    w->arg = arg;
    w->plain = pk_bev_is_plain(bev);
    w->flush_ev = w->plain ? pk_xevent_new(base, -1, 0, wbatch_flush_cb, w) : NULL;
}

struct evbuffer *pk_wbatch_out(struct pk_wbatch *w)
{
    struct evbuffer *out = bufferevent_get_output(w->bev);
    if (!w->plain)
        return out;
    if (w->buf && evbuffer_get_length(w->buf) > 0)
        return w->buf; /* its flush is scheduled; it goes behind the output, in order */
    if (evbuffer_get_length(out) > 0)
        return out;
    if (!w->buf)
        w->buf = pk_xevbuffer_new();
    event_active(w->flush_ev, EV_WRITE, 0); /* once per round however often it is asked */
    return w->buf;
}

size_t pk_wbatch_pending(const struct pk_wbatch *w)
{
    return evbuffer_get_length(bufferevent_get_output(w->bev)) +
           (w->buf ? evbuffer_get_length(w->buf) : 0);
}

void pk_wbatch_flush(struct pk_wbatch *w)
{
    if (w->flush_ev)
        event_del(w->flush_ev);
    if (!w->buf || evbuffer_get_length(w->buf) == 0)
        return;
    if (evbuffer_get_length(bufferevent_get_output(w->bev)) > 0)
        evbuffer_add_buffer(bufferevent_get_output(w->bev), w->buf); /* behind what is queued */
    else
        pk_bev_write_direct(w->bev, w->buf);
}

void pk_wbatch_free(struct pk_wbatch *w, bool flush)
{
    if (flush)
        pk_wbatch_flush(w);
    if (w->buf)
        evbuffer_free(w->buf);
    if (w->flush_ev)
        event_free(w->flush_ev);
    w->buf = NULL;
    w->flush_ev = NULL;
}

struct pk_linger {
    struct pk_list link;
    struct bufferevent *bev;
    struct pk_linger_list *list;
};

void pk_linger_list_init(struct pk_linger_list *l, void (*on_change)(void *arg), void *arg)
{
    pk_list_init(&l->head);
    l->n = 0;
    l->on_change = on_change;
    l->arg = arg;
}

static void linger_end(struct pk_linger *lg)
{
    struct pk_linger_list *list = lg->list;
    bufferevent_free(lg->bev);
    pk_list_remove(&lg->link);
    free(lg);
    if (list) {
        list->n--;
        if (list->on_change)
            list->on_change(list->arg);
    }
}

void pk_linger_list_free(struct pk_linger_list *l)
{
    l->on_change = NULL;
    while (!pk_list_empty(&l->head))
        linger_end(PK_CONTAINER_OF(l->head.next, struct pk_linger, link));
}

static void linger_read(struct bufferevent *bev, void *arg)
{
    PK_UNUSED(arg);
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
}

static void linger_event(struct bufferevent *bev, short what, void *arg)
{
    PK_UNUSED(bev);
    PK_UNUSED(what);
    linger_end(arg);
}

static void linger_flushed(struct bufferevent *bev, void *arg)
{
    if (evbuffer_get_length(bufferevent_get_output(bev)) > 0)
        return;
    /* TLS first says goodbye itself (close_notify), then the TCP write side closes. */
    pk_tls_close_notify(bev);
    evutil_socket_t fd = bufferevent_getfd(bev);
    if (fd >= 0)
        shutdown(fd, SHUT_WR);
    struct timeval tv = {2, 0};
    bufferevent_setcb(bev, linger_read, NULL, linger_event, arg);
    bufferevent_set_timeouts(bev, &tv, NULL);
    bufferevent_enable(bev, EV_READ);
}

void pk_bev_linger_close(struct bufferevent *bev, struct pk_linger_list *list)
{
    struct timeval tv = {10, 0};
    struct pk_linger *lg = pk_xcalloc(1, sizeof(*lg));
    lg->bev = bev;
    lg->list = list;
    pk_list_init(&lg->link);
    if (list) {
        pk_list_insert(&list->head, &lg->link);
        list->n++;
    }
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    bufferevent_setwatermark(bev, EV_READ, 0, 0);
    bufferevent_setcb(bev, linger_read, linger_flushed, linger_event, lg);
    /* A peer that never reads gets 10 s to take the response. */
    bufferevent_set_timeouts(bev, &tv, &tv);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        linger_flushed(bev, lg);
}
