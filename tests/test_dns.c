/* Tests for lib/dns: real lookups on a real event loop, never the outside network.
 *
 * Literals and /etc/hosts need no server. Names and SRV records are answered by a
 * dnsmasq started on 127.0.0.1 and a random port (Debian package dnsmasq-base); without
 * it those tests fail. Timeouts use a "blackhole" UDP socket that never answers, errors
 * a closed port. */
#include "base/base.h"
#include "dns/dns.h"

#include <CUnit/CUnit.h>
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void pk_test_register_dns(void);

/* ---- loop harness ---- */

struct loop {
    struct event_base *base;
    struct event *watchdog;
    int pending; /* callbacks still expected */
    bool timed_out;
};

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    struct loop *l = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    l->timed_out = true;
}

static void loop_init(struct loop *l)
{
    memset(l, 0, sizeof(*l));
    l->base = event_base_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(l->base);
    l->watchdog = evtimer_new(l->base, watchdog_cb, l);
}

static void loop_free(struct loop *l)
{
    event_free(l->watchdog);
    event_base_free(l->base);
}

/* Runs the loop until every expected callback came, or 10 s passed (a failure). */
static void loop_run(struct loop *l)
{
    struct timeval tv = {10, 0};
    l->timed_out = false;
    evtimer_add(l->watchdog, &tv);
    while (l->pending > 0 && !l->timed_out)
        event_base_loop(l->base, EVLOOP_ONCE);
    evtimer_del(l->watchdog);
    CU_ASSERT_FALSE(l->timed_out);
}

/* Runs the loop for ms milliseconds, giving callbacks that must not come a chance to. */
static void loop_settle(struct loop *l, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    l->timed_out = false;
    evtimer_add(l->watchdog, &tv);
    while (!l->timed_out)
        event_base_loop(l->base, EVLOOP_ONCE);
}

static struct pk_resolver *resolver_at(struct loop *l, const char *servers, int timeout_ms,
                                       int tries)
{
    struct pk_resolver_opts o;
    char err[256] = "";
    memset(&o, 0, sizeof(o));
    o.servers = servers;
    o.timeout_ms = timeout_ms;
    o.tries = tries;
    o.no_search = true;
    struct pk_resolver *r = pk_resolver_new_opts(l->base, &o, err, sizeof(err));
    if (!r)
        fprintf(stderr, "\nresolver_at(%s): %s\n", servers ? servers : "system", err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    return r;
}

/* ---- results ---- */

#define MAXV 8

struct addr_result {
    struct loop *l;
    struct pk_resolver *r;
    int called;
    int err;
    char errstr[128];
    size_t n;
    struct pk_addr v[MAXV];
};

static void addr_cb(int err, const struct pk_addrs *addrs, void *arg)
{
    struct addr_result *res = arg;
    res->called++;
    res->err = err;
    if (res->r)
        snprintf(res->errstr, sizeof(res->errstr), "%s", pk_resolve_errstr(res->r));
    if (err == 0) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(addrs);
        CU_ASSERT(addrs->n >= 1);
        res->n = PK_MIN(addrs->n, (size_t)MAXV);
        memcpy(res->v, addrs->v, res->n * sizeof(*res->v));
    } else {
        CU_ASSERT_PTR_NULL(addrs);
    }
    res->l->pending--;
}

struct srv_result {
    struct loop *l;
    int called;
    int err;
    size_t n;
    char target[MAXV][64];
    struct pk_srv v[MAXV];
};

static void srv_cb(int err, const struct pk_srvs *srvs, void *arg)
{
    struct srv_result *res = arg;
    res->called++;
    res->err = err;
    if (err == 0) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(srvs);
        res->n = PK_MIN(srvs->n, (size_t)MAXV);
        for (size_t i = 0; i < res->n; i++) {
            res->v[i] = srvs->v[i];
            snprintf(res->target[i], sizeof(res->target[i]), "%s", srvs->v[i].target);
            res->v[i].target = res->target[i];
        }
    } else {
        CU_ASSERT_PTR_NULL(srvs);
    }
    res->l->pending--;
}

static bool is_v4(const struct pk_addr *a, const char *ip, uint16_t port)
{
    const struct sockaddr_in *in = (const struct sockaddr_in *)&a->ss;
    struct in_addr want;
    inet_pton(AF_INET, ip, &want);
    return in->sin_family == AF_INET && a->len == sizeof(*in) &&
           in->sin_addr.s_addr == want.s_addr && ntohs(in->sin_port) == port;
}

static bool is_v6(const struct pk_addr *a, const char *ip, uint16_t port)
{
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a->ss;
    struct in6_addr want;
    inet_pton(AF_INET6, ip, &want);
    return in6->sin6_family == AF_INET6 && a->len == sizeof(*in6) &&
           memcmp(&in6->sin6_addr, &want, sizeof(want)) == 0 && ntohs(in6->sin6_port) == port;
}

/* ---- sockets for failure cases ---- */

static int udp_bound(uint16_t *port)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *port = ntohs(sin.sin_port);
    return fd;
}

/* A loopback port with nothing listening (UDP or TCP), for the moment. */
static uint16_t closed_port(void)
{
    for (int attempt = 0; attempt < 20; attempt++) {
        uint16_t port = 0;
        int fd = udp_bound(&port);
        if (fd < 0)
            continue;
        close(fd);
        int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sin;
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sin.sin_port = htons(port);
        bool ok = t >= 0 && bind(t, (struct sockaddr *)&sin, sizeof(sin)) == 0;
        if (t >= 0)
            close(t);
        if (ok)
            return port;
    }
    return 0;
}

/* A UDP "server" that receives and never answers: queries to it time out. */
struct blackhole {
    int fd;
    char servers[32];
};

static void blackhole_open(struct blackhole *b)
{
    uint16_t port = 0;
    b->fd = udp_bound(&port);
    CU_ASSERT_FATAL(b->fd >= 0);
    snprintf(b->servers, sizeof(b->servers), "127.0.0.1:%u", (unsigned)port);
}

static void blackhole_close(struct blackhole *b)
{
    close(b->fd);
}

/* A DNS server on the loop that answers A queries with 127.0.0.99 twice and 127.0.0.98,
 * and never answers anything else: one family succeeds while the other times out. */
struct half_dns {
    struct blackhole bh;
    struct event *ev;
    int answered, dropped;
};

static void half_dns_cb(evutil_socket_t fd, short what, void *arg)
{
    struct half_dns *h = arg;
    unsigned char q[512], out[512];
    struct sockaddr_storage from;
    socklen_t fromlen = sizeof(from);
    PK_UNUSED(what);

    ssize_t n = recvfrom(fd, q, sizeof(q), 0, (struct sockaddr *)&from, &fromlen);
    if (n < 12)
        return;
    size_t off = 12;
    while (off < (size_t)n && q[off] != 0)
        off += 1u + q[off];
    if (off + 5 > (size_t)n)
        return;
    size_t qend = off + 5; /* root label, qtype, qclass */
    unsigned qtype = (unsigned)(q[off + 1] << 8 | q[off + 2]);
    if (qtype != 1) {
        h->dropped++;
        return;
    }
    static const unsigned char ips[3][4] = {{127, 0, 0, 99}, {127, 0, 0, 99}, {127, 0, 0, 98}};
    memcpy(out, q, qend);
    out[2] = 0x81; /* QR, RD */
    out[3] = 0x80; /* RA, NOERROR */
    out[6] = 0;
    out[7] = 3; /* ANCOUNT */
    memset(out + 8, 0, 4);
    size_t len = qend;
    for (size_t i = 0; i < 3; i++) {
        static const unsigned char rr[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4};
        memcpy(out + len, rr, sizeof(rr));
        memcpy(out + len + sizeof(rr), ips[i], 4);
        len += sizeof(rr) + 4;
    }
    sendto(fd, out, len, 0, (struct sockaddr *)&from, fromlen);
    h->answered++;
}

static void half_dns_open(struct half_dns *h, struct loop *l)
{
    memset(h, 0, sizeof(*h));
    blackhole_open(&h->bh);
    h->ev = event_new(l->base, h->bh.fd, EV_READ | EV_PERSIST, half_dns_cb, h);
    event_add(h->ev, NULL);
}

static void half_dns_close(struct half_dns *h)
{
    event_free(h->ev);
    blackhole_close(&h->bh);
}

/* ---- dnsmasq ---- */

static pid_t dm_pid;
static uint16_t dm_port;
static char dm_servers[32];
static char dm_log[64];

static const char *find_dnsmasq(void)
{
    static char path[512];
    const char *env = getenv("PATH");
    char dirs[1024];
    snprintf(dirs, sizeof(dirs), "%s:/usr/sbin:/sbin:/usr/local/sbin", env ? env : "/usr/bin");
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(path, sizeof(path), "%s/dnsmasq", d);
        if (access(path, X_OK) == 0)
            return path;
    }
    return NULL;
}

static bool tcp_listening(uint16_t port)
{
    struct sockaddr_in sin;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(port);
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static void dump_log(void)
{
    char buf[2048];
    FILE *f = fopen(dm_log, "r");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    buf[n] = '\0';
    if (f)
        fclose(f);
    fprintf(stderr, "\n--- dnsmasq output ---\n%s----------------------\n", buf);
}

static pid_t spawn_dnsmasq(const char *bin, uint16_t port, int logfd)
{
    char portarg[32];
    snprintf(portarg, sizeof(portarg), "--port=%u", (unsigned)port);
    char *const argv[] = {
        (char *)"dnsmasq",
        (char *)"--no-daemon",
        (char *)"--conf-file=/dev/null",
        portarg,
        (char *)"--listen-address=127.0.0.1",
        (char *)"--bind-interfaces",
        (char *)"--no-resolv",
        (char *)"--no-hosts",
        (char *)"--local=/piko.test/",
        (char *)"--local=/invalid/",
        (char *)"--local-ttl=1",
        (char *)"--srv-host=_cluster._tcp.piko.test,node1.piko.test,8003,10,5",
        (char *)"--srv-host=_cluster._tcp.piko.test,node2.piko.test,8004,10,15",
        (char *)"--srv-host=_cluster._tcp.piko.test,node3.piko.test,8005,5,0",
        (char *)"--srv-host=_cluster._tcp.piko.test,node4.piko.test,8006,20,1",
        (char *)"--srv-host=_gone._tcp.piko.test",
        (char *)"--host-record=node1.piko.test,127.0.0.11",
        (char *)"--host-record=node2.piko.test,127.0.0.12,fd00::12",
        NULL,
    };
    pid_t pid = fork();
    if (pid == 0) {
        /* Never outlive the test runner, even when it crashes. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        execv(bin, argv);
        _exit(127);
    }
    return pid;
}

/* Starts dnsmasq once for the suite; returns its port, or 0 (and says why). */
static uint16_t dnsmasq_start(void)
{
    if (dm_port)
        return dm_port;
    const char *bin = find_dnsmasq();
    if (!bin) {
        fprintf(stderr, "\nFAIL: dnsmasq not found: apt-get install dnsmasq-base\n");
        return 0;
    }
    snprintf(dm_log, sizeof(dm_log), "/tmp/piko-test-dnsmasq-XXXXXX");
    int logfd = mkstemp(dm_log);
    if (logfd < 0) {
        fprintf(stderr, "\nFAIL: mkstemp: %s\n", strerror(errno));
        return 0;
    }
    for (int attempt = 0; attempt < 5 && !dm_port; attempt++) {
        uint16_t port = closed_port();
        pid_t pid = port ? spawn_dnsmasq(bin, port, logfd) : -1;
        if (pid < 0)
            continue;
        uint64_t deadline = pk_now_ms() + 5000;
        int status;
        while (pk_now_ms() < deadline) {
            if (waitpid(pid, &status, WNOHANG) == pid) {
                pid = 0; /* exited: port taken meanwhile, or bad options */
                break;
            }
            if (tcp_listening(port)) {
                dm_pid = pid;
                dm_port = port;
                break;
            }
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (!dm_port && pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
        }
    }
    close(logfd);
    if (!dm_port) {
        fprintf(stderr, "\nFAIL: dnsmasq (%s) did not start\n", bin);
        dump_log();
    }
    unlink(dm_log); /* only read when the start fails; dnsmasq keeps its descriptor */
    if (!dm_port)
        return 0;
    snprintf(dm_servers, sizeof(dm_servers), "127.0.0.1:%u", (unsigned)dm_port);
    return dm_port;
}

static void dnsmasq_stop(void)
{
    if (dm_pid > 0) {
        int status;
        kill(dm_pid, SIGTERM);
        waitpid(dm_pid, &status, 0);
    }
    dm_pid = 0;
    dm_port = 0;
}

/* A resolver on dnsmasq, or NULL after recording a failure. */
static struct pk_resolver *dnsmasq_resolver(struct loop *l)
{
    if (!dnsmasq_start()) {
        CU_FAIL("dnsmasq is required for this test (Debian: dnsmasq-base)");
        return NULL;
    }
    return resolver_at(l, dm_servers, 1000, 2);
}

/* ---- literals and /etc/hosts ---- */

static void test_literal_v4(void)
{
    struct loop l;
    loop_init(&l);
    struct pk_resolver *r = pk_resolver_new(l.base, NULL, NULL, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    struct addr_result res = {.l = &l};

    l.pending = 1;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "127.0.0.1", 8080, addr_cb, &res));
    CU_ASSERT_EQUAL(res.called, 0); /* never from inside pk_resolve */
    loop_run(&l);
    CU_ASSERT_EQUAL(res.called, 1);
    CU_ASSERT_EQUAL(res.err, 0);
    CU_ASSERT_EQUAL(res.n, 1);
    CU_ASSERT(is_v4(&res.v[0], "127.0.0.1", 8080));
    pk_resolver_del(r);
    loop_free(&l);
}

static void test_literal_v6(void)
{
    struct loop l;
    loop_init(&l);
    struct pk_resolver *r = pk_resolver_new(l.base, NULL, NULL, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    struct addr_result res = {.l = &l};

    l.pending = 1;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "::1", 443, addr_cb, &res));
    CU_ASSERT_EQUAL(res.called, 0);
    loop_run(&l);
    CU_ASSERT_EQUAL(res.called, 1);
    CU_ASSERT_EQUAL(res.err, 0);
    CU_ASSERT_EQUAL(res.n, 1);
    CU_ASSERT(is_v6(&res.v[0], "::1", 443));
    pk_resolver_del(r);
    loop_free(&l);
}

/* Literals never reach a DNS server: the only one here never answers. */
static void test_literals_offline(void)
{
    struct loop l;
    struct blackhole bh;
    loop_init(&l);
    blackhole_open(&bh);
    struct pk_resolver *r = resolver_at(&l, bh.servers, 5000, 1);
    struct addr_result v4 = {.l = &l}, v6 = {.l = &l}, zone = {.l = &l}, numzone = {.l = &l},
                       badzone = {.l = &l};
    unsigned lo = if_nametoindex("lo");

    l.pending = 5;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "10.1.2.3", 1, addr_cb, &v4));
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "2001:db8::7", 2, addr_cb, &v6));
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "fe80::1%lo", 3, addr_cb, &zone));
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "fe80::2%7", 4, addr_cb, &numzone));
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "fe80::1%nosuchif9", 5, addr_cb, &badzone));
    CU_ASSERT_EQUAL(v4.called + v6.called + zone.called + numzone.called + badzone.called, 0);
    loop_run(&l); /* the watchdog (10 s) is shorter than the resolver timeout: no DNS */
    CU_ASSERT_EQUAL(v4.err, 0);
    CU_ASSERT(is_v4(&v4.v[0], "10.1.2.3", 1));
    CU_ASSERT_EQUAL(v6.err, 0);
    CU_ASSERT(is_v6(&v6.v[0], "2001:db8::7", 2));
    CU_ASSERT_EQUAL(zone.err, 0);
    CU_ASSERT(is_v6(&zone.v[0], "fe80::1", 3));
    CU_ASSERT_EQUAL(((struct sockaddr_in6 *)&zone.v[0].ss)->sin6_scope_id, lo);
    CU_ASSERT_EQUAL(numzone.err, 0);
    CU_ASSERT_EQUAL(((struct sockaddr_in6 *)&numzone.v[0].ss)->sin6_scope_id, 7);
    CU_ASSERT_EQUAL(badzone.err, PK_ERR_INVALID);
    pk_resolver_del(r);
    blackhole_close(&bh);
    loop_free(&l);
}

/* "localhost" comes from /etc/hosts: the only server is a closed port, so an answer
 * proves no DNS server was needed. */
static void test_localhost(void)
{
    struct loop l;
    loop_init(&l);
    char servers[32];
    snprintf(servers, sizeof(servers), "127.0.0.1:%u", (unsigned)closed_port());
    struct pk_resolver *r = resolver_at(&l, servers, 200, 1);
    struct addr_result res = {.l = &l};

    l.pending = 1;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "localhost", 7000, addr_cb, &res));
    CU_ASSERT_EQUAL(res.called, 0);
    loop_run(&l);
    CU_ASSERT_EQUAL(res.called, 1);
    CU_ASSERT_EQUAL_FATAL(res.err, 0);
    CU_ASSERT(res.n >= 1);
    bool saw_v4 = false;
    for (size_t i = 0; i < res.n; i++) {
        const struct pk_addr *a = &res.v[i];
        bool v4 = a->ss.ss_family == AF_INET;
        if (v4) {
            const struct sockaddr_in *in = (const struct sockaddr_in *)&a->ss;
            CU_ASSERT_EQUAL(ntohl(in->sin_addr.s_addr) >> 24, 127);
            CU_ASSERT_EQUAL(ntohs(in->sin_port), 7000);
            CU_ASSERT(i == 0 || saw_v4); /* IPv4 first */
            saw_v4 = true;
        } else {
            CU_ASSERT(is_v6(a, "::1", 7000));
        }
    }
    CU_ASSERT(saw_v4);
    pk_resolver_del(r);
    loop_free(&l);
}

/* ---- through a DNS server ---- */

static void test_dns_names(void)
{
    struct loop l;
    loop_init(&l);
    struct pk_resolver *r = dnsmasq_resolver(&l);
    if (!r) {
        loop_free(&l);
        return;
    }
    struct addr_result both = {.l = &l}, v4only = {.l = &l};

    l.pending = 2;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "node2.piko.test", 9000, addr_cb, &both));
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "node1.piko.test", 9001, addr_cb, &v4only));
    loop_run(&l);
    CU_ASSERT_EQUAL(both.err, 0);
    CU_ASSERT_EQUAL_FATAL(both.n, 2);
    CU_ASSERT(is_v4(&both.v[0], "127.0.0.12", 9000));
    CU_ASSERT(is_v6(&both.v[1], "fd00::12", 9000));
    CU_ASSERT_EQUAL(v4only.err, 0);
    CU_ASSERT_EQUAL_FATAL(v4only.n, 1);
    CU_ASSERT(is_v4(&v4only.v[0], "127.0.0.11", 9001));
    pk_resolver_del(r);
    loop_free(&l);
}

static void test_nonexistent_name(void)
{
    struct loop l;
    loop_init(&l);
    struct pk_resolver *r = dnsmasq_resolver(&l);
    if (!r) {
        loop_free(&l);
        return;
    }
    char ok_text[128];
    snprintf(ok_text, sizeof(ok_text), "%s", pk_resolve_errstr(r));
    struct addr_result res = {.l = &l, .r = r};

    l.pending = 1;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "nonexistent.invalid", 80, addr_cb, &res));
    loop_run(&l);
    CU_ASSERT_EQUAL(res.called, 1);
    CU_ASSERT_EQUAL(res.err, PK_ERR_NOTFOUND);
    CU_ASSERT(res.errstr[0] != '\0');
    CU_ASSERT(strcmp(res.errstr, ok_text) != 0);
    pk_resolver_del(r);
    loop_free(&l);
}

static void test_timeout(void)
{
    struct loop l;
    struct blackhole bh;
    loop_init(&l);
    blackhole_open(&bh);
    struct pk_resolver *r = resolver_at(&l, bh.servers, 100, 1);
    struct addr_result res = {.l = &l};
    struct srv_result sres = {.l = &l};

    l.pending = 2;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "slow.piko.test", 80, addr_cb, &res));
    CU_ASSERT_PTR_NOT_NULL(pk_resolve_srv(r, "_slow._tcp.piko.test", srv_cb, &sres));
    loop_run(&l);
    CU_ASSERT_EQUAL(res.called, 1);
    CU_ASSERT_EQUAL(res.err, PK_ERR_TIMEOUT);
    CU_ASSERT_EQUAL(sres.called, 1);
    CU_ASSERT_EQUAL(sres.err, PK_ERR_TIMEOUT);
    pk_resolver_del(r);
    blackhole_close(&bh);
    loop_free(&l);
}

/* A answered, AAAA timed out: success with the IPv4 addresses, duplicates removed. */
static void test_one_family_answers(void)
{
    struct loop l;
    struct half_dns h;
    loop_init(&l);
    half_dns_open(&h, &l);
    struct pk_resolver *r = resolver_at(&l, h.bh.servers, 100, 1);
    struct addr_result res = {.l = &l};

    l.pending = 1;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "half.piko.test", 5000, addr_cb, &res));
    loop_run(&l);
    CU_ASSERT_EQUAL(h.answered, 1);
    CU_ASSERT_EQUAL(h.dropped, 1);
    CU_ASSERT_EQUAL(res.err, 0);
    CU_ASSERT_EQUAL_FATAL(res.n, 2);
    CU_ASSERT(is_v4(&res.v[0], "127.0.0.99", 5000));
    CU_ASSERT(is_v4(&res.v[1], "127.0.0.98", 5000));
    pk_resolver_del(r);
    half_dns_close(&h);
    loop_free(&l);
}

/* Deleted while A is answered and AAAA pending: c-ares 1.18 ends such a getaddrinfo with
 * ARES_SUCCESS at ares_destroy, which must not reach the user either. */
static void test_del_half_answered(void)
{
    struct loop l;
    struct half_dns h;
    loop_init(&l);
    half_dns_open(&h, &l);
    struct pk_resolver *r = resolver_at(&l, h.bh.servers, 5000, 1);
    struct addr_result res = {.l = &l};

    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "half.piko.test", 80, addr_cb, &res));
    loop_settle(&l, 50); /* the A answer arrives and is parsed; AAAA waits 5 s */
    CU_ASSERT_EQUAL(h.answered, 1);
    pk_resolver_del(r);
    loop_settle(&l, 20);
    CU_ASSERT_EQUAL(res.called, 0);
    half_dns_close(&h);
    loop_free(&l);
}

static void test_server_refused(void)
{
    struct loop l;
    loop_init(&l);
    char servers[32];
    snprintf(servers, sizeof(servers), "127.0.0.1:%u", (unsigned)closed_port());
    struct pk_resolver *r = resolver_at(&l, servers, 200, 1);
    struct addr_result res = {.l = &l};

    l.pending = 1;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "nonexistent.invalid", 80, addr_cb, &res));
    loop_run(&l);
    CU_ASSERT_EQUAL(res.called, 1);
    CU_ASSERT(res.err == PK_ERR_IO || res.err == PK_ERR_TIMEOUT);
    pk_resolver_del(r);
    loop_free(&l);
}

/* ---- SRV ---- */

static void test_srv(void)
{
    struct loop l;
    loop_init(&l);
    struct pk_resolver *r = dnsmasq_resolver(&l);
    if (!r) {
        loop_free(&l);
        return;
    }
    struct srv_result res = {.l = &l};

    l.pending = 1;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve_srv(r, "_cluster._tcp.piko.test", srv_cb, &res));
    loop_run(&l);
    CU_ASSERT_EQUAL(res.called, 1);
    CU_ASSERT_EQUAL_FATAL(res.err, 0);
    CU_ASSERT_EQUAL_FATAL(res.n, 4);
    /* priority 5, then the two of priority 10 in weighted order, then priority 20 */
    CU_ASSERT_STRING_EQUAL(res.v[0].target, "node3.piko.test");
    CU_ASSERT_EQUAL(res.v[0].port, 8005);
    CU_ASSERT_EQUAL(res.v[0].priority, 5);
    CU_ASSERT_EQUAL(res.v[0].weight, 0);
    for (size_t i = 1; i <= 2; i++) {
        CU_ASSERT_EQUAL(res.v[i].priority, 10);
        if (strcmp(res.v[i].target, "node1.piko.test") == 0) {
            CU_ASSERT_EQUAL(res.v[i].port, 8003);
            CU_ASSERT_EQUAL(res.v[i].weight, 5);
        } else {
            CU_ASSERT_STRING_EQUAL(res.v[i].target, "node2.piko.test");
            CU_ASSERT_EQUAL(res.v[i].port, 8004);
            CU_ASSERT_EQUAL(res.v[i].weight, 15);
        }
    }
    CU_ASSERT_STRING_NOT_EQUAL(res.v[1].target, res.v[2].target);
    CU_ASSERT_STRING_EQUAL(res.v[3].target, "node4.piko.test");
    CU_ASSERT_EQUAL(res.v[3].port, 8006);
    CU_ASSERT_EQUAL(res.v[3].priority, 20);
    CU_ASSERT_EQUAL(res.v[3].weight, 1);
    pk_resolver_del(r);
    loop_free(&l);
}

/* No such name, and a record whose target is "." (service not available): both
 * PK_ERR_NOTFOUND. */
static void test_srv_notfound(void)
{
    struct loop l;
    loop_init(&l);
    struct pk_resolver *r = dnsmasq_resolver(&l);
    if (!r) {
        loop_free(&l);
        return;
    }
    struct srv_result none = {.l = &l}, gone = {.l = &l};

    l.pending = 2;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve_srv(r, "_none._tcp.piko.test", srv_cb, &none));
    CU_ASSERT_PTR_NOT_NULL(pk_resolve_srv(r, "_gone._tcp.piko.test", srv_cb, &gone));
    loop_run(&l);
    CU_ASSERT_EQUAL(none.called, 1);
    CU_ASSERT_EQUAL(none.err, PK_ERR_NOTFOUND);
    CU_ASSERT_EQUAL(gone.called, 1);
    CU_ASSERT_EQUAL(gone.err, PK_ERR_NOTFOUND);
    pk_resolver_del(r);
    loop_free(&l);
}

struct seq {
    uint32_t first;
    int calls;
};

/* Returns first on the first call, then 0. */
static uint32_t seq_rnd(void *arg)
{
    struct seq *s = arg;
    return s->calls++ == 0 ? s->first : 0;
}

static void test_srvs_sort(void)
{
    /* Priorities out of order on input. */
    struct pk_srv in[] = {
        {"d", 1, 20, 1}, {"b", 2, 10, 10}, {"z", 3, 5, 7}, {"a", 4, 10, 0}, {"c", 5, 10, 30},
    };
    struct pk_srv v[PK_ARRAY_LEN(in)];
    struct pk_srvs s = {PK_ARRAY_LEN(in), v};
    int first[3] = {0, 0, 0}; /* how often a, b, c comes first in priority 10 */

    /* The priority-10 group holds a(0) b(10) c(30), zero weight first: sum 40. A random
     * value k picks a for k = 0, b for 1..10, c for 11..40 (RFC 2782), so over every k
     * each record leads as often as its weight (a: once). */
    for (uint32_t k = 0; k <= 40; k++) {
        struct seq sq = {k, 0};
        memcpy(v, in, sizeof(in));
        pk_srvs_sort(&s, seq_rnd, &sq);
        CU_ASSERT_STRING_EQUAL(v[0].target, "z");
        CU_ASSERT_EQUAL(v[0].port, 3);
        for (size_t i = 1; i <= 3; i++)
            CU_ASSERT_EQUAL(v[i].priority, 10);
        CU_ASSERT_STRING_EQUAL(v[4].target, "d");
        CU_ASSERT_STRING_NOT_EQUAL(v[1].target, v[2].target);
        CU_ASSERT_STRING_NOT_EQUAL(v[1].target, v[3].target);
        CU_ASSERT_STRING_NOT_EQUAL(v[2].target, v[3].target);
        first[v[1].target[0] - 'a']++;
        /* After the first pick, a 0 picks the front of what is left. */
        if (k >= 11)
            CU_ASSERT_STRING_EQUAL(v[2].target, "a");
    }
    CU_ASSERT_EQUAL(first[0], 1);
    CU_ASSERT_EQUAL(first[1], 10);
    CU_ASSERT_EQUAL(first[2], 30);

    /* Larger random values wrap modulo sum + 1 rather than overrun. */
    struct seq big = {UINT32_MAX, 0};
    memcpy(v, in, sizeof(in));
    pk_srvs_sort(&s, seq_rnd, &big);
    CU_ASSERT_STRING_EQUAL(v[0].target, "z");
    CU_ASSERT_STRING_EQUAL(v[4].target, "d");

    /* The default generator keeps priorities sorted; empty and single lists are fine. */
    memcpy(v, in, sizeof(in));
    pk_srvs_sort(&s, NULL, NULL);
    for (size_t i = 1; i < s.n; i++)
        CU_ASSERT(v[i - 1].priority <= v[i].priority);
    struct pk_srvs empty = {0, NULL};
    pk_srvs_sort(&empty, NULL, NULL);
    struct pk_srvs one = {1, v};
    pk_srvs_sort(&one, NULL, NULL);
    CU_ASSERT_STRING_EQUAL(v[0].target, "z");
}

/* ---- cancel and teardown ---- */

static void test_cancel_answered(void)
{
    struct loop l;
    loop_init(&l);
    struct pk_resolver *r = pk_resolver_new(l.base, NULL, NULL, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    struct addr_result cancelled = {.l = &l}, sentinel = {.l = &l};

    /* The literal's answer is already stored when pk_resolve returns. */
    struct pk_resolve_req *req = pk_resolve(r, "127.0.0.1", 80, addr_cb, &cancelled);
    CU_ASSERT_PTR_NOT_NULL_FATAL(req);
    pk_resolve_cancel(req);
    l.pending = 1;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "127.0.0.2", 80, addr_cb, &sentinel));
    loop_run(&l);
    loop_settle(&l, 20);
    CU_ASSERT_EQUAL(sentinel.called, 1);
    CU_ASSERT_EQUAL(cancelled.called, 0);
    pk_resolve_cancel(NULL);
    pk_resolver_del(r);
    loop_free(&l);
}

static void test_cancel_in_flight(void)
{
    struct loop l;
    struct blackhole bh;
    loop_init(&l);
    blackhole_open(&bh);
    struct pk_resolver *r = resolver_at(&l, bh.servers, 100, 1);
    struct addr_result cancelled = {.l = &l}, sentinel = {.l = &l};
    struct srv_result srv_cancelled = {.l = &l};

    struct pk_resolve_req *a = pk_resolve(r, "one.piko.test", 80, addr_cb, &cancelled);
    struct pk_resolve_req *s = pk_resolve_srv(r, "_one._tcp.piko.test", srv_cb, &srv_cancelled);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    pk_resolve_cancel(a);
    pk_resolve_cancel(s);
    /* The sentinel times out after the cancelled queries did inside c-ares. */
    l.pending = 1;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "two.piko.test", 80, addr_cb, &sentinel));
    loop_run(&l);
    loop_settle(&l, 50);
    CU_ASSERT_EQUAL(sentinel.called, 1);
    CU_ASSERT_EQUAL(sentinel.err, PK_ERR_TIMEOUT);
    CU_ASSERT_EQUAL(cancelled.called, 0);
    CU_ASSERT_EQUAL(srv_cancelled.called, 0);
    pk_resolver_del(r);
    blackhole_close(&bh);
    loop_free(&l);
}

static void test_del_with_pending(void)
{
    struct loop l;
    struct blackhole bh;
    loop_init(&l);
    blackhole_open(&bh);
    struct pk_resolver *r = resolver_at(&l, bh.servers, 100, 1);
    struct addr_result in_flight = {.l = &l}, answered = {.l = &l}, cancelled = {.l = &l};
    struct srv_result srv = {.l = &l};

    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "pending.piko.test", 80, addr_cb, &in_flight));
    CU_ASSERT_PTR_NOT_NULL(pk_resolve_srv(r, "_pending._tcp.piko.test", srv_cb, &srv));
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(r, "::1", 80, addr_cb, &answered));
    pk_resolve_cancel(pk_resolve(r, "pending2.piko.test", 80, addr_cb, &cancelled));
    pk_resolver_del(r);
    /* Longer than the 100 ms query timeout: nothing may fire, ASan sees no leak. */
    loop_settle(&l, 250);
    CU_ASSERT_EQUAL(in_flight.called, 0);
    CU_ASSERT_EQUAL(answered.called, 0);
    CU_ASSERT_EQUAL(cancelled.called, 0);
    CU_ASSERT_EQUAL(srv.called, 0);
    pk_resolver_del(NULL);
    blackhole_close(&bh);
    loop_free(&l);
}

struct del_ctx {
    struct loop *l;
    struct pk_resolver *r;
    int called;
};

static void del_in_cb(int err, const struct pk_addrs *addrs, void *arg)
{
    struct del_ctx *c = arg;
    PK_UNUSED(addrs);
    CU_ASSERT_EQUAL(err, 0);
    c->called++;
    pk_resolver_del(c->r);
    c->l->pending--;
}

/* Deleting the resolver from one of its callbacks cancels the others. */
static void test_del_from_callback(void)
{
    struct loop l;
    struct blackhole bh;
    loop_init(&l);
    blackhole_open(&bh);
    struct del_ctx c = {.l = &l};
    c.r = resolver_at(&l, bh.servers, 100, 1);
    struct addr_result other = {.l = &l}, other_answered = {.l = &l};

    CU_ASSERT_PTR_NOT_NULL(pk_resolve(c.r, "pending.piko.test", 80, addr_cb, &other));
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(c.r, "127.0.0.1", 80, del_in_cb, &c));
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(c.r, "127.0.0.3", 80, addr_cb, &other_answered));
    l.pending = 1;
    loop_run(&l);
    loop_settle(&l, 250);
    CU_ASSERT_EQUAL(c.called, 1);
    /* Answered too, but libevent runs active events in activation order: the delete
     * came first and dropped it. */
    CU_ASSERT_EQUAL(other_answered.called, 0);
    CU_ASSERT_EQUAL(other.called, 0);
    blackhole_close(&bh);
    loop_free(&l);
}

struct chain_ctx {
    struct loop *l;
    struct pk_resolver *r;
    struct addr_result second;
    int called;
};

static void chain_cb(int err, const struct pk_addrs *addrs, void *arg)
{
    struct chain_ctx *c = arg;
    PK_UNUSED(addrs);
    CU_ASSERT_EQUAL(err, 0);
    c->called++;
    c->second.l = c->l;
    c->l->pending++;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(c->r, "::1", 81, addr_cb, &c->second));
    CU_ASSERT_EQUAL(c->second.called, 0);
    c->l->pending--;
}

static void test_resolve_from_callback(void)
{
    struct loop l;
    loop_init(&l);
    struct chain_ctx c = {.l = &l};
    c.r = pk_resolver_new(l.base, NULL, NULL, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c.r);

    l.pending = 1;
    CU_ASSERT_PTR_NOT_NULL(pk_resolve(c.r, "127.0.0.1", 80, chain_cb, &c));
    loop_run(&l);
    CU_ASSERT_EQUAL(c.called, 1);
    CU_ASSERT_EQUAL(c.second.called, 1);
    CU_ASSERT_EQUAL(c.second.err, 0);
    CU_ASSERT(is_v6(&c.second.v[0], "::1", 81));
    pk_resolver_del(c.r);
    loop_free(&l);
}

static void test_bad_arguments(void)
{
    struct loop l;
    char err[256];
    loop_init(&l);

    err[0] = '\0';
    CU_ASSERT_PTR_NULL(pk_resolver_new(l.base, "", err, sizeof(err)));
    CU_ASSERT(err[0] != '\0');
    err[0] = '\0';
    CU_ASSERT_PTR_NULL(pk_resolver_new(l.base, "not-an-address", err, sizeof(err)));
    CU_ASSERT(err[0] != '\0');
    CU_ASSERT_PTR_NULL(pk_resolver_new(NULL, NULL, err, sizeof(err)));
    CU_ASSERT_PTR_NULL(pk_resolver_new(l.base, "", NULL, 0));

    struct pk_resolver *r = pk_resolver_new(l.base, "127.0.0.1:53,[::1]:53", err, sizeof(err));
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    struct addr_result res = {.l = &l};
    struct srv_result sres = {.l = &l};
    CU_ASSERT_PTR_NULL(pk_resolve(r, NULL, 80, addr_cb, &res));
    CU_ASSERT_PTR_NULL(pk_resolve(r, "", 80, addr_cb, &res));
    CU_ASSERT_PTR_NULL(pk_resolve(r, "x", 80, NULL, &res));
    CU_ASSERT_PTR_NULL(pk_resolve_srv(r, "", srv_cb, &sres));
    CU_ASSERT_PTR_NULL(pk_resolve_srv(r, NULL, srv_cb, &sres));
    loop_settle(&l, 10);
    CU_ASSERT_EQUAL(res.called, 0);
    CU_ASSERT_EQUAL(sres.called, 0);
    pk_resolver_del(r);
    loop_free(&l);
}

/* ---- helpers ---- */

static void test_split_hostport(void)
{
    static const struct {
        const char *in;
        bool allow_zero;
        const char *host; /* NULL: any */
        uint16_t port;
    } good[] = {
        {"example.com:80", false, "example.com", 80},
        {"1.2.3.4:65535", false, "1.2.3.4", 65535},
        {"[::1]:443", false, "::1", 443},
        {"[fe80::1%eth0]:8080", false, "fe80::1%eth0", 8080},
        {"[::ffff:1.2.3.4]:1", false, "::ffff:1.2.3.4", 1},
        {":8080", false, NULL, 8080},
        {"host:0", true, "host", 0},
        {":0", true, NULL, 0},
        {"a_b-c.d:1", false, "a_b-c.d", 1},
        {"svc:00080", false, "svc", 80},
        {"localhost:65535", true, "localhost", 65535},
    };
    static const struct {
        const char *in;
        bool allow_zero;
    } bad[] = {
        {NULL, true},           {"", true},           {"host", true},
        {"host:", true},        {"host:0", false},    {":0", false},
        {"host:65536", true},   {"host:99999", true}, {"host:123456", true},
        {"host:-1", true},      {"host:+80", true},   {"host:80x", true},
        {"host: 80", true},     {"::1:80", true},     {"[::1]", true},
        {"[::1]80", true},      {"[]:80", true},      {"[1.2.3.4]:80", true},
        {"[::1:80", true},      {"ho st:80", true},   {"[fe80::1%]:80", true},
        {"host:80:90", true},   {":", true},          {"[::1]:", true},
        {" host:80", true},     {"[::1]:80]", true},  {"[fe80::1%e/0]:80", true},
        {"h\xc3\xa9:80", true}, {"[zz::1]:80", true}, {"host:8\n", true},
    };

    for (size_t i = 0; i < PK_ARRAY_LEN(good); i++) {
        char *host = (char *)"sentinel";
        uint16_t port = 12345;
        int rc = pk_split_hostport(good[i].in, &host, &port, good[i].allow_zero);
        if (rc != 0)
            fprintf(stderr, "\nsplit(%s) failed\n", good[i].in);
        CU_ASSERT_EQUAL(rc, 0);
        if (rc != 0)
            continue;
        if (good[i].host) {
            CU_ASSERT_PTR_NOT_NULL(host);
            if (host)
                CU_ASSERT_STRING_EQUAL(host, good[i].host);
        } else {
            CU_ASSERT_PTR_NULL(host);
        }
        CU_ASSERT_EQUAL(port, good[i].port);
        free(host);
    }
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        char *host = (char *)"sentinel";
        uint16_t port = 0;
        int rc = pk_split_hostport(bad[i].in, &host, &port, bad[i].allow_zero);
        if (rc != PK_ERR_INVALID)
            fprintf(stderr, "\nsplit(%s) accepted\n", bad[i].in ? bad[i].in : "NULL");
        CU_ASSERT_EQUAL(rc, PK_ERR_INVALID);
        CU_ASSERT_PTR_NULL(host);
        if (rc == 0)
            free(host);
    }

    /* Host names longer than a DNS name are refused. */
    char long_name[300];
    memset(long_name, 'a', 260);
    memcpy(long_name + 260, ":80", 4);
    char *host = NULL;
    uint16_t port = 0;
    CU_ASSERT_EQUAL(pk_split_hostport(long_name, &host, &port, false), PK_ERR_INVALID);
    CU_ASSERT_PTR_NULL(host);
    CU_ASSERT_EQUAL(pk_split_hostport("h:1", NULL, &port, false), PK_ERR_INVALID);
    CU_ASSERT_EQUAL(pk_split_hostport("h:1", &host, NULL, false), PK_ERR_INVALID);
}

static void test_addr_str(void)
{
    char buf[PK_ADDR_STRLEN];
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
    struct sockaddr_un un;

    memset(&in, 0, sizeof(in));
    in.sin_family = AF_INET;
    in.sin_port = htons(80);
    inet_pton(AF_INET, "1.2.3.4", &in.sin_addr);
    CU_ASSERT_PTR_EQUAL(pk_addr_str((struct sockaddr *)&in, buf, sizeof(buf)), buf);
    CU_ASSERT_STRING_EQUAL(buf, "1.2.3.4:80");

    memset(&in6, 0, sizeof(in6));
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(443);
    inet_pton(AF_INET6, "::1", &in6.sin6_addr);
    CU_ASSERT_STRING_EQUAL(pk_addr_str((struct sockaddr *)&in6, buf, sizeof(buf)), "[::1]:443");

    in6.sin6_port = htons(65535);
    inet_pton(AF_INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &in6.sin6_addr);
    CU_ASSERT_STRING_EQUAL(pk_addr_str((struct sockaddr *)&in6, buf, sizeof(buf)),
                           "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");

    /* Truncated, still terminated. */
    char small[6];
    CU_ASSERT_STRING_EQUAL(pk_addr_str((struct sockaddr *)&in, small, sizeof(small)), "1.2.3");

    memset(&un, 0, sizeof(un));
    un.sun_family = AF_UNIX;
    snprintf(un.sun_path, sizeof(un.sun_path), "/run/piko.sock");
    CU_ASSERT_STRING_EQUAL(pk_addr_str((struct sockaddr *)&un, buf, sizeof(buf)),
                           "unix:/run/piko.sock");

    struct sockaddr other;
    memset(&other, 0, sizeof(other));
    other.sa_family = AF_UNSPEC;
    CU_ASSERT_STRING_EQUAL(pk_addr_str(&other, buf, sizeof(buf)), "?");
    CU_ASSERT_STRING_EQUAL(pk_addr_str(NULL, buf, sizeof(buf)), "?");
}

/* The syntax pk_resolver_new accepts, checked before any resolver exists. */
static void test_servers_check(void)
{
    char err[256];
    const char *good[] = {NULL,
                          "",
                          "127.0.0.1",
                          "127.0.0.1:5353",
                          "::1",
                          "[::1]",
                          "[::1]:53",
                          "10.0.0.1,10.0.0.2:53",
                          "fe80::1,[2001:db8::1]:5353"};
    for (size_t i = 0; i < PK_ARRAY_LEN(good); i++)
        CU_ASSERT_EQUAL(pk_dns_servers_check("dns.servers", good[i], err, sizeof(err)), 0);
    const char *bad[] = {"bogus",           "ns1.example.com", "127.0.0.1:", "127.0.0.1:0",
                         "127.0.0.1:65536", "1.2.3.4:53x",     "[::1",       "[::1]x",
                         "[127.0.0.1]",     "1.2.3.4,",        ",1.2.3.4",   "1.2.3.4,,5.6.7.8"};
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        CU_ASSERT_EQUAL(pk_dns_servers_check("dns.servers", bad[i], err, sizeof(err)),
                        PK_ERR_INVALID);
        CU_ASSERT_NSTRING_EQUAL(err, "dns.servers: '", 14);
    }
    pk_dns_servers_check("dns.servers", "bogus", err, sizeof(err));
    CU_ASSERT_STRING_EQUAL(err, "dns.servers: 'bogus' is not an IP address with an optional port");
    pk_dns_servers_check("dns.servers", "1.2.3.4,x:53", err, sizeof(err));
    CU_ASSERT_STRING_EQUAL(
        err, "dns.servers: 'x:53' is not an IP address with an optional port (in '1.2.3.4,x:53')");
}

static int suite_clean(void)
{
    dnsmasq_stop();
    return 0;
}

void pk_test_register_dns(void)
{
    CU_pSuite s = CU_add_suite("dns", NULL, suite_clean);
    CU_add_test(s, "literal_v4", test_literal_v4);
    CU_add_test(s, "literal_v6", test_literal_v6);
    CU_add_test(s, "literals_offline", test_literals_offline);
    CU_add_test(s, "localhost_from_hosts_file", test_localhost);
    CU_add_test(s, "dns_names_v4_first", test_dns_names);
    CU_add_test(s, "nonexistent_name", test_nonexistent_name);
    CU_add_test(s, "timeout", test_timeout);
    CU_add_test(s, "one_family_answers", test_one_family_answers);
    CU_add_test(s, "del_half_answered", test_del_half_answered);
    CU_add_test(s, "server_refused", test_server_refused);
    CU_add_test(s, "srv_sorted", test_srv);
    CU_add_test(s, "srv_notfound", test_srv_notfound);
    CU_add_test(s, "srvs_sort_weighted", test_srvs_sort);
    CU_add_test(s, "cancel_answered", test_cancel_answered);
    CU_add_test(s, "cancel_in_flight", test_cancel_in_flight);
    CU_add_test(s, "del_with_pending", test_del_with_pending);
    CU_add_test(s, "del_from_callback", test_del_from_callback);
    CU_add_test(s, "resolve_from_callback", test_resolve_from_callback);
    CU_add_test(s, "bad_arguments", test_bad_arguments);
    CU_add_test(s, "split_hostport", test_split_hostport);
    CU_add_test(s, "addr_str", test_addr_str);
    CU_add_test(s, "servers_check", test_servers_check);
}
