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
#include <unistd.h>

static int split_addr(const char *addr, char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *colon;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || end[1] != ':')
            return -1;
        snprintf(host, hostlen, "%.*s", (int)(end - addr - 1), addr + 1);
        colon = end + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon)
            return -1;
        snprintf(host, hostlen, "%.*s", (int)(colon - addr), addr);
    }
    snprintf(port, portlen, "%s", colon + 1);
    char *end;
    long p = strtol(port, &end, 10);
    if (*end || p < 0 || p > 65535 || port[0] == '\0')
        return -1;
    return 0;
}

struct evconnlistener *pk_listen(struct event_base *base, const char *addr, evconnlistener_cb cb,
                                 void *arg, char *err, size_t errlen)
{
    char host[256], port[16];
    struct addrinfo hints = {0}, *res = NULL;
    if (split_addr(addr, host, sizeof(host), port, sizeof(port)) != 0) {
        snprintf(err, errlen, "invalid listen address '%s' (want host:port or :port)", addr);
        return NULL;
    }
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int rv = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (rv != 0) {
        snprintf(err, errlen, "cannot resolve listen address '%s': %s", addr, gai_strerror(rv));
        return NULL;
    }
    struct evconnlistener *l = NULL;
    int saved = 0;
    for (struct addrinfo *ai = res; ai && !l; ai = ai->ai_next) {
        l = evconnlistener_new_bind(
            base, cb, arg, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 1024,
            ai->ai_addr, (int)ai->ai_addrlen);
        if (!l)
            saved = errno;
    }
    freeaddrinfo(res);
    if (!l)
        snprintf(err, errlen, "cannot listen on '%s': %s", addr, strerror(saved));
    return l;
}

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

void pk_evlistener_addr(struct evconnlistener *l, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char ip[INET6_ADDRSTRLEN];
    uint16_t port;
    if (getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&ss, &sl) != 0) {
        snprintf(buf, len, "?");
        return;
    }
    pk_sockaddr_ip((struct sockaddr *)&ss, ip, sizeof(ip), &port);
    snprintf(buf, len, ss.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", ip, port);
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
