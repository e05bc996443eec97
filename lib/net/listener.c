#include "net/listener.h"

#include "base/base.h"
#include "base/log.h"
#include "net/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct pk_listener {
    struct evconnlistener *l;
    struct event *resume; /* ends an exhaustion pause */
    pk_accept_cb cb;
    void *arg;
    char name[32];
    int reserve; /* a descriptor kept for shedding one connection, or -1 */
    struct pk_listener_stats stats;
    uint64_t log_ms;   /* when the last failure was logged */
    uint64_t unlogged; /* failures since then */
};

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

/* A bare evconnlistener on "host:port", ":port" or "[v6]:port" (the host resolved with
 * getaddrinfo: numeric addresses or names from /etc/hosts). */
static struct evconnlistener *bind_listener(struct event_base *base, const char *addr,
                                            evconnlistener_cb cb, void *arg, char *err,
                                            size_t errlen)
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

static void evlistener_addr(struct evconnlistener *l, char *buf, size_t len)
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

static int reserve_open(void)
{
    return open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void accept_cb(struct evconnlistener *el, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    struct pk_listener *l = arg;
    PK_UNUSED(el);
    l->stats.accepted++;
    l->cb(fd, sa, salen, l->arg);
}

static bool exhausted(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

/* With the reserve descriptor freed, the oldest pending connection can be accepted and
 * closed at once: its client learns now instead of waiting in the backlog. */
static void shed_one(struct pk_listener *l)
{
    if (l->reserve < 0)
        return;
    close(l->reserve);
    l->reserve = -1;
    int fd = accept4(evconnlistener_get_fd(l->l), NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0) {
        /* SO_LINGER 0: a reset, so no descriptor lingers in the kernel for it either. */
        struct linger lg = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        close(fd);
        l->stats.shed++;
    }
    l->reserve = reserve_open();
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_listener *l = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (l->reserve < 0)
        l->reserve = reserve_open();
    evconnlistener_enable(l->l);
}

static void error_cb(struct evconnlistener *el, void *arg)
{
    struct pk_listener *l = arg;
    int err = EVUTIL_SOCKET_ERROR();
    PK_UNUSED(el);
    l->stats.accept_errors++;
    l->unlogged++;
    if (exhausted(err)) {
        l->stats.fd_exhausted++;
        shed_one(l);
    }
    /* Whatever failed, the pending connection is still there and the socket readable:
     * stop for a moment instead of failing again at once. */
    evconnlistener_disable(l->l);
    struct timeval tv = pk_ms_timeval(PK_LISTENER_PAUSE_MS);
    event_add(l->resume, &tv);
    uint64_t now = pk_now_ms();
    if (now - l->log_ms >= 1000) {
        PK_WARN("net",
                "accept failed port=%s: %s (%llu failures since the last report, %llu "
                "connections shed); accepting again in %dms",
                l->name, strerror(err), (unsigned long long)l->unlogged,
                (unsigned long long)l->stats.shed, PK_LISTENER_PAUSE_MS);
        l->log_ms = now;
        l->unlogged = 0;
    }
}

struct pk_listener *pk_listener_new(struct event_base *base, const char *name, const char *addr,
                                    pk_accept_cb cb, void *arg, char *err, size_t errlen)
{
    struct pk_listener *l = pk_xcalloc(1, sizeof(*l));
    l->cb = cb;
    l->arg = arg;
    snprintf(l->name, sizeof(l->name), "%s", name);
    char why[256];
    l->l = bind_listener(base, addr, accept_cb, l, why, sizeof(why));
    if (!l->l) {
        /* Name the option at fault: "cluster.bind-addr: cannot listen on ':8003': Address
         * already in use" (a --forward listener is its own option). */
        if (strcmp(name, "forward") == 0)
            snprintf(err, errlen, "forward: %s", why);
        else
            snprintf(err, errlen, "%s.bind-addr: %s", name, why);
        free(l);
        return NULL;
    }
    l->resume = pk_xevent_new(base, -1, 0, resume_cb, l);
    l->reserve = reserve_open();
    evconnlistener_set_error_cb(l->l, error_cb);
    return l;
}

void pk_listener_del(struct pk_listener *l)
{
    if (!l)
        return;
    evconnlistener_free(l->l);
    event_free(l->resume);
    if (l->reserve >= 0)
        close(l->reserve);
    free(l);
}

void pk_listener_addr(const struct pk_listener *l, char *buf, size_t len)
{
    evlistener_addr(l->l, buf, len);
}

void pk_listener_stats(const struct pk_listener *l, struct pk_listener_stats *out)
{
    *out = l->stats;
}
