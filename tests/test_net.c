/* Unit tests for lib/net/proxyproto and lib/stream/bevpipe.
 *
 * PROXY protocol: exact bytes of v1 and v2 headers for IPv4, IPv6, mixed and unknown
 * families, and the "ip:port" / "[v6]:port" parser.
 *
 * bevpipe and splice run over real sockets (AF_UNIX socketpairs, where shutdown works, and
 * loopback TCP pairs where a reset must be a real RST), driven by the event loop until a
 * condition holds, with a guard timer so that a bug fails the test instead of hanging it.
 * The far end of each socket is a plain bufferevent ("peer") that sends and checks a
 * position-dependent byte pattern, so loss, duplication and reordering are all caught. */
#include "base/base.h"
#include "net/net.h"
#include "net/proxyproto.h"
#include "net/tls.h"
#include "stream/bevpipe.h"
#include "stream/pipe.h"

#include <CUnit/CUnit.h>
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void pk_test_register_net(void);

#define GUARD_MS  10000
#define MIB       (1024 * 1024)
#define CHUNK     65536
#define ONE_READ  16384 /* libevent 2.1 reads at most this much per read event */
#define PEER_OUT  (256 * 1024)
#define SEED_IN   0x1234u /* peer -> bevpipe -> in */
#define SEED_OUT  0xabcdu /* out -> bevpipe -> peer */
#define SEED_ATOB 0x5151u
#define SEED_BTOA 0x7373u

/* ---- PROXY protocol ------------------------------------------------------------------- */

static void sin4(struct sockaddr_in *s, const char *ip, uint16_t port)
{
    memset(s, 0, sizeof(*s));
    s->sin_family = AF_INET;
    s->sin_port = htons(port);
    CU_ASSERT_FATAL(inet_pton(AF_INET, ip, &s->sin_addr) == 1);
}

static void sin6(struct sockaddr_in6 *s, const char *ip, uint16_t port)
{
    memset(s, 0, sizeof(*s));
    s->sin6_family = AF_INET6;
    s->sin6_port = htons(port);
    CU_ASSERT_FATAL(inet_pton(AF_INET6, ip, &s->sin6_addr) == 1);
}

/* True when buf holds exactly the n bytes of want. */
static bool buf_is(struct evbuffer *buf, const void *want, size_t n)
{
    if (evbuffer_get_length(buf) != n)
        return false;
    return memcmp(evbuffer_pullup(buf, -1), want, n) == 0;
}

static bool v1_is(const struct sockaddr *src, const struct sockaddr *dst, const char *want)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, "x", 1); /* appends: what was there stays */
    int rv = pk_proxyproto_v1(b, src, dst);
    evbuffer_drain(b, 1);
    bool ok = rv == 0 && buf_is(b, want, strlen(want));
    if (!ok)
        fprintf(stderr, "\nv1 got '%.*s' want '%s'\n", (int)evbuffer_get_length(b),
                (const char *)evbuffer_pullup(b, -1), want);
    evbuffer_free(b);
    return ok;
}

static bool v2_is(const struct sockaddr *src, const struct sockaddr *dst, const uint8_t *want,
                  size_t n)
{
    struct evbuffer *b = evbuffer_new();
    int rv = pk_proxyproto_v2(b, src, dst);
    bool ok = rv == 0 && buf_is(b, want, n);
    evbuffer_free(b);
    return ok;
}

static void test_proxy_v1_ipv4(void)
{
    struct sockaddr_in s, d;
    sin4(&s, "192.0.2.1", 56324);
    sin4(&d, "198.51.100.22", 443);
    CU_ASSERT(v1_is((struct sockaddr *)&s, (struct sockaddr *)&d,
                    "PROXY TCP4 192.0.2.1 198.51.100.22 56324 443\r\n"));
    sin4(&s, "255.255.255.255", 65535);
    sin4(&d, "0.0.0.0", 0);
    CU_ASSERT(v1_is((struct sockaddr *)&s, (struct sockaddr *)&d,
                    "PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n"));
}

static void test_proxy_v1_ipv6(void)
{
    struct sockaddr_in6 s, d;
    sin6(&s, "2001:db8::1", 40000);
    sin6(&d, "2001:db8:0:0:0:0:0:2", 8443);
    CU_ASSERT(v1_is((struct sockaddr *)&s, (struct sockaddr *)&d,
                    "PROXY TCP6 2001:db8::1 2001:db8::2 40000 8443\r\n"));
    /* The longest line: two full-width addresses stay under the spec's 107 bytes. */
    sin6(&s, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535);
    sin6(&d, "fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
    const char *longest = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe "
                          "fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    CU_ASSERT(strlen(longest) <= 107);
    CU_ASSERT(v1_is((struct sockaddr *)&s, (struct sockaddr *)&d, longest));
}

static void test_proxy_v1_unknown(void)
{
    struct sockaddr_in s4;
    struct sockaddr_in6 d6, m6;
    struct sockaddr un = {.sa_family = AF_UNIX};
    sin4(&s4, "192.0.2.1", 1000);
    sin6(&d6, "2001:db8::2", 443);
    sin6(&m6, "::ffff:198.51.100.7", 443);
    /* Mixed families, another family, a missing address. */
    CU_ASSERT(v1_is((struct sockaddr *)&s4, (struct sockaddr *)&d6, "PROXY UNKNOWN\r\n"));
    CU_ASSERT(v1_is((struct sockaddr *)&d6, (struct sockaddr *)&s4, "PROXY UNKNOWN\r\n"));
    CU_ASSERT(v1_is(&un, &un, "PROXY UNKNOWN\r\n"));
    CU_ASSERT(v1_is(NULL, (struct sockaddr *)&s4, "PROXY UNKNOWN\r\n"));
    CU_ASSERT(v1_is((struct sockaddr *)&s4, NULL, "PROXY UNKNOWN\r\n"));
    /* An IPv4-mapped address next to an IPv4 one is IPv4. */
    CU_ASSERT(v1_is((struct sockaddr *)&s4, (struct sockaddr *)&m6,
                    "PROXY TCP4 192.0.2.1 198.51.100.7 1000 443\r\n"));
    CU_ASSERT(v1_is((struct sockaddr *)&m6, (struct sockaddr *)&s4,
                    "PROXY TCP4 198.51.100.7 192.0.2.1 443 1000\r\n"));
    CU_ASSERT_EQUAL(pk_proxyproto_v1(NULL, (struct sockaddr *)&s4, (struct sockaddr *)&s4),
                    PK_ERR_INVALID);
}

static const uint8_t v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                   0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

static void test_proxy_v2_ipv4(void)
{
    struct sockaddr_in s, d;
    sin4(&s, "192.0.2.1", 56324);   /* 0xdc04 */
    sin4(&d, "198.51.100.22", 443); /* 0x01bb */
    uint8_t want[28];
    memcpy(want, v2_sig, 12);
    const uint8_t rest[16] = {0x21, 0x11, 0x00, 0x0c, 192,  0,    2,    1,
                              198,  51,   100,  22,   0xdc, 0x04, 0x01, 0xbb};
    memcpy(want + 12, rest, sizeof(rest));
    CU_ASSERT(v2_is((struct sockaddr *)&s, (struct sockaddr *)&d, want, sizeof(want)));
}

static void test_proxy_v2_ipv6(void)
{
    struct sockaddr_in6 s, d;
    sin6(&s, "2001:db8::1", 40000);  /* 0x9c40 */
    sin6(&d, "2001:db8::2:3", 8443); /* 0x20fb */
    uint8_t want[52] = {0};
    memcpy(want, v2_sig, 12);
    want[12] = 0x21; /* version 2, PROXY */
    want[13] = 0x21; /* TCP over IPv6 */
    want[14] = 0x00;
    want[15] = 36;
    const uint8_t a[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01};
    const uint8_t b[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0x03};
    memcpy(want + 16, a, 16);
    memcpy(want + 32, b, 16);
    want[48] = 0x9c;
    want[49] = 0x40;
    want[50] = 0x20;
    want[51] = 0xfb;
    CU_ASSERT(v2_is((struct sockaddr *)&s, (struct sockaddr *)&d, want, sizeof(want)));
}

static void test_proxy_v2_local(void)
{
    struct sockaddr_in s4, m4;
    struct sockaddr_in6 d6, m6;
    sin4(&s4, "192.0.2.1", 1000);
    sin6(&d6, "2001:db8::2", 443);
    uint8_t local[16];
    memcpy(local, v2_sig, 12);
    local[12] = 0x20; /* version 2, LOCAL */
    local[13] = 0x00; /* UNSPEC */
    local[14] = 0x00;
    local[15] = 0x00;
    CU_ASSERT(v2_is((struct sockaddr *)&s4, (struct sockaddr *)&d6, local, sizeof(local)));
    CU_ASSERT(v2_is((struct sockaddr *)&d6, (struct sockaddr *)&s4, local, sizeof(local)));
    CU_ASSERT(v2_is(NULL, NULL, local, sizeof(local)));
    /* A mapped address next to IPv4: TCP over IPv4. */
    sin4(&m4, "10.1.2.3", 80);
    sin6(&m6, "::ffff:192.0.2.9", 5000);
    uint8_t want[28];
    memcpy(want, v2_sig, 12);
    const uint8_t rest[16] = {0x21, 0x11, 0x00, 0x0c, 192,  0,    2,    9,
                              10,   1,    2,    3,    0x13, 0x88, 0x00, 0x50};
    memcpy(want + 12, rest, sizeof(rest));
    CU_ASSERT(v2_is((struct sockaddr *)&m6, (struct sockaddr *)&m4, want, sizeof(want)));
    CU_ASSERT_EQUAL(pk_proxyproto_v2(NULL, NULL, NULL), PK_ERR_INVALID);
}

static void test_parse_addr_port_good(void)
{
    struct sockaddr_storage ss;
    socklen_t len = 0;
    char ip[INET6_ADDRSTRLEN];

    CU_ASSERT_EQUAL_FATAL(pk_parse_addr_port("192.0.2.1:56324", &ss, &len), 0);
    CU_ASSERT_EQUAL(ss.ss_family, AF_INET);
    CU_ASSERT_EQUAL(len, sizeof(struct sockaddr_in));
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
    CU_ASSERT_EQUAL(ntohs(s4->sin_port), 56324);
    inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
    CU_ASSERT_STRING_EQUAL(ip, "192.0.2.1");

    CU_ASSERT_EQUAL_FATAL(pk_parse_addr_port("[2001:db8::1]:443", &ss, &len), 0);
    CU_ASSERT_EQUAL(ss.ss_family, AF_INET6);
    CU_ASSERT_EQUAL(len, sizeof(struct sockaddr_in6));
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
    CU_ASSERT_EQUAL(ntohs(s6->sin6_port), 443);
    inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
    CU_ASSERT_STRING_EQUAL(ip, "2001:db8::1");

    const char *good[] = {"0.0.0.0:0",          "255.255.255.255:65535", "[::1]:1",
                          "[::ffff:1.2.3.4]:9", "1.2.3.4:080",           "[2001:DB8::A]:00443"};
    for (size_t i = 0; i < PK_ARRAY_LEN(good); i++) {
        int rv = pk_parse_addr_port(good[i], &ss, NULL);
        if (rv != 0)
            fprintf(stderr, "\nrejected good '%s'\n", good[i]);
        CU_ASSERT_EQUAL(rv, 0);
    }

    /* Round trip into a PROXY header, the way the sidecar uses it. */
    struct sockaddr_storage src, dst;
    CU_ASSERT_EQUAL_FATAL(pk_parse_addr_port("[2001:db8::7]:50000", &src, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(pk_parse_addr_port("[2001:db8::8]:22", &dst, NULL), 0);
    CU_ASSERT(v1_is((struct sockaddr *)&src, (struct sockaddr *)&dst,
                    "PROXY TCP6 2001:db8::7 2001:db8::8 50000 22\r\n"));
}

static void test_parse_addr_port_bad(void)
{
    struct sockaddr_storage ss;
    socklen_t len = 0;
    char longest[128];
    memset(longest, '1', sizeof(longest) - 1);
    longest[sizeof(longest) - 1] = '\0';
    const char *bad[] = {
        "",
        ":80",
        "1.2.3.4",
        "1.2.3.4:",
        "1.2.3.4:65536",
        "1.2.3.4:123456",
        "1.2.3.4:-1",
        "1.2.3.4:+80",
        "1.2.3.4: 80",
        "1.2.3.4:80 ",
        " 1.2.3.4:80",
        "1.2.3.4:80x",
        "1.2.3:80",
        "1.2.3.4.5:80",
        "256.1.1.1:80",
        "example.com:80",
        "localhost:80",
        "2001:db8::1:443", /* IPv6 needs brackets */
        "[2001:db8::1]443",
        "[2001:db8::1]",
        "[2001:db8::1]:",
        "[2001:db8::1]:65536",
        "[2001:db8::1:443",
        "2001:db8::1]:443",
        "[1.2.3.4]:80",
        "[fe80::1%eth0]:80",
        "[]:80",
        "[::1]:[80]",
        longest,
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        int rv = pk_parse_addr_port(bad[i], &ss, &len);
        if (rv != PK_ERR_INVALID)
            fprintf(stderr, "\naccepted bad '%s'\n", bad[i]);
        CU_ASSERT_EQUAL(rv, PK_ERR_INVALID);
    }
    CU_ASSERT_EQUAL(pk_parse_addr_port(NULL, &ss, &len), PK_ERR_INVALID);
}

/* ---- fixture: an event loop, a bevpipe and the peer on the socket's other end ---------- */

struct fx;

/* The far end of a socket: sends tx_total pattern bytes (seed tx_seed, starting at stream
 * offset tx_off), then optionally shuts its write side; checks what it receives. */
struct peer {
    struct fx *fx;
    struct bufferevent *bev;
    uint32_t tx_seed;
    uint64_t tx_off;
    uint64_t tx_total;
    uint64_t tx_queued;
    bool tx_go;
    bool tx_shut;
    bool tx_shut_done;
    uint32_t rx_seed;
    bool rx_paused;
    uint64_t rx;
    uint64_t rx_bad;
    bool rx_eof;
    bool error;
    int error_errno;
};

/* The consumer of `in`. */
struct sink {
    struct fx *fx;
    struct pk_pipe pipe;
    uint32_t seed;
    bool paused;
    uint64_t got;
    uint64_t bad;
    size_t max_len; /* the most `in` ever held when it told us it was readable */
    bool done;
    bool aborted;
    bool free_bp; /* free the bevpipe from inside the next notification */
};

/* The producer of `out`. */
struct source {
    struct pk_pipe pipe;
    uint32_t seed;
    uint64_t total;
    uint64_t written;
    bool go;
    bool close_at_end;
    bool closed;
};

struct fx {
    struct event_base *base;
    bool timed_out;
    struct pk_bevpipe *bp;
    struct sink sink;
    struct source src;
    struct peer peer;
    struct peer peer2; /* splice: the b side */
    struct pk_splice *sp;
    int done_calls;
    int done_err;
    bool free_in_done;
    int ticks; /* idle test */
    struct event *tick_ev;
};

static uint8_t gen(uint32_t seed, uint64_t i)
{
    uint32_t x = (uint32_t)(i >> 2) * 2654435761u ^ seed;
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    return (uint8_t)(x >> ((i & 3) * 8));
}

static void gen_fill(uint8_t *buf, size_t n, uint32_t seed, uint64_t off)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = gen(seed, off + i);
}

static uint64_t gen_check(const uint8_t *buf, size_t n, uint32_t seed, uint64_t off)
{
    uint64_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += buf[i] != gen(seed, off + i);
    return bad;
}

static void guard_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    *(bool *)arg = true;
}

/* Runs the loop until cond holds or the guard fires, then asserts cond. */
#define WAIT(f, cond)                                                                              \
    do {                                                                                           \
        struct event *g_ = evtimer_new((f)->base, guard_cb, &(f)->timed_out);                      \
        struct timeval tv_ = {GUARD_MS / 1000, (GUARD_MS % 1000) * 1000};                          \
        (f)->timed_out = false;                                                                    \
        evtimer_add(g_, &tv_);                                                                     \
        while (!(cond) && !(f)->timed_out)                                                         \
            event_base_loop((f)->base, EVLOOP_ONCE);                                               \
        event_free(g_);                                                                            \
        CU_ASSERT(cond);                                                                           \
    } while (0)

/* Lets the loop run for ms: a pause in which something must not happen. */
static void settle(struct fx *f, int ms)
{
    struct event *g = evtimer_new(f->base, guard_cb, &f->timed_out);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    f->timed_out = false;
    evtimer_add(g, &tv);
    while (!f->timed_out)
        event_base_loop(f->base, EVLOOP_ONCE);
    event_free(g);
}

static void peer_take(struct peer *p)
{
    static uint8_t buf[CHUNK];
    struct evbuffer *in = bufferevent_get_input(p->bev);
    int n;
    while ((n = evbuffer_remove(in, buf, sizeof(buf))) > 0) {
        p->rx_bad += gen_check(buf, (size_t)n, p->rx_seed, p->rx);
        p->rx += (uint64_t)n;
    }
}

static void peer_pump(struct peer *p)
{
    static uint8_t buf[CHUNK];
    if (!p->tx_go || !p->bev)
        return;
    struct evbuffer *out = bufferevent_get_output(p->bev);
    while (p->tx_queued < p->tx_total && evbuffer_get_length(out) < PEER_OUT) {
        size_t n = (size_t)PK_MIN(p->tx_total - p->tx_queued, (uint64_t)CHUNK);
        gen_fill(buf, n, p->tx_seed, p->tx_off + p->tx_queued);
        evbuffer_add(out, buf, n);
        p->tx_queued += n;
    }
    if (p->tx_queued == p->tx_total && p->tx_shut && !p->tx_shut_done &&
        evbuffer_get_length(out) == 0) {
        p->tx_shut_done = true;
        shutdown(bufferevent_getfd(p->bev), SHUT_WR);
    }
}

static void peer_read(struct bufferevent *bev, void *arg)
{
    struct peer *p = arg;
    PK_UNUSED(bev);
    if (!p->rx_paused)
        peer_take(p);
}

static void peer_write(struct bufferevent *bev, void *arg)
{
    PK_UNUSED(bev);
    peer_pump(arg);
}

static void peer_event(struct bufferevent *bev, short what, void *arg)
{
    struct peer *p = arg;
    PK_UNUSED(bev);
    if (what & BEV_EVENT_ERROR) {
        p->error = true;
        p->error_errno = EVUTIL_SOCKET_ERROR();
    }
    if (what & BEV_EVENT_EOF) {
        peer_take(p);
        p->rx_eof = true;
    }
}

static void peer_attach(struct fx *f, struct peer *p, struct bufferevent *bev, uint32_t rx_seed,
                        uint32_t tx_seed)
{
    memset(p, 0, sizeof(*p));
    p->fx = f;
    p->rx_seed = rx_seed;
    p->tx_seed = tx_seed;
    p->bev = bev;
    bufferevent_setcb(p->bev, peer_read, peer_write, peer_event, p);
    bufferevent_enable(p->bev, EV_READ | EV_WRITE);
}

static void peer_init(struct fx *f, struct peer *p, int fd, uint32_t rx_seed, uint32_t tx_seed)
{
    struct bufferevent *bev = bufferevent_socket_new(f->base, fd, BEV_OPT_CLOSE_ON_FREE);
    CU_ASSERT_PTR_NOT_NULL_FATAL(bev);
    peer_attach(f, p, bev, rx_seed, tx_seed);
}

/* Sends total bytes, then shuts the write side down if shut. */
static void peer_send(struct peer *p, uint64_t total, bool shut)
{
    p->tx_total = total;
    p->tx_shut = shut;
    p->tx_go = true;
    peer_pump(p);
}

static void peer_pause(struct peer *p, bool paused)
{
    p->rx_paused = paused;
    if (paused) {
        bufferevent_disable(p->bev, EV_READ);
    } else {
        bufferevent_enable(p->bev, EV_READ);
        peer_take(p);
    }
}

/* Closes the peer's socket with a RST (SO_LINGER {1, 0}). */
static void peer_reset(struct peer *p)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(bufferevent_getfd(p->bev), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    bufferevent_free(p->bev);
    p->bev = NULL;
}

static void sink_take(struct sink *s)
{
    static uint8_t buf[CHUNK];
    size_t n;
    while ((n = pk_pipe_read(&s->pipe, buf, sizeof(buf))) > 0) {
        s->bad += gen_check(buf, n, s->seed, s->got);
        s->got += n;
    }
    if (pk_pipe_done(&s->pipe))
        s->done = true;
}

static void sink_readable(struct pk_pipe *p, void *consumer)
{
    struct sink *s = consumer;
    s->max_len = PK_MAX(s->max_len, pk_pipe_len(p));
    if (p->aborted)
        s->aborted = true;
    if (s->free_bp && s->fx->bp) {
        s->free_bp = false;
        pk_bevpipe_del(s->fx->bp);
        s->fx->bp = NULL;
        return;
    }
    if (!s->paused)
        sink_take(s);
}

static void sink_resume(struct sink *s)
{
    s->paused = false;
    sink_take(s);
}

/* Writes the pattern while `out` has room. Called back synchronously from inside the
 * bevpipe's own pk_pipe_move, so the offset advances before each write. */
static void source_fill(struct source *s)
{
    static uint8_t buf[CHUNK];
    if (!s->go)
        return;
    while (s->written < s->total && !pk_pipe_full(&s->pipe)) {
        size_t n = (size_t)PK_MIN(s->total - s->written, (uint64_t)CHUNK);
        uint64_t off = s->written;
        gen_fill(buf, n, s->seed, off);
        s->written += n;
        pk_pipe_write(&s->pipe, buf, n);
    }
    if (s->written == s->total && s->close_at_end && !s->closed) {
        s->closed = true;
        pk_pipe_close(&s->pipe);
    }
}

static void source_drained(struct pk_pipe *p, size_t n, void *producer)
{
    PK_UNUSED(p);
    PK_UNUSED(n);
    source_fill(producer);
}

static void source_send(struct source *s, uint64_t total, bool close_at_end)
{
    s->total = total;
    s->close_at_end = close_at_end;
    s->go = true;
    source_fill(s);
}

static void on_done(struct pk_bevpipe *bp, int err, void *arg)
{
    struct fx *f = arg;
    CU_ASSERT_PTR_EQUAL(bp, f->bp);
    f->done_calls++;
    f->done_err = err;
    if (f->free_in_done) {
        pk_bevpipe_del(bp);
        f->bp = NULL;
    }
}

static void socket_pair(bool tcp, int fds[2])
{
    if (!tcp) {
        CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    } else {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t sl = sizeof(sa);
        int l = socket(AF_INET, SOCK_STREAM, 0);
        CU_ASSERT_FATAL(l >= 0);
        CU_ASSERT_FATAL(bind(l, (struct sockaddr *)&sa, sizeof(sa)) == 0);
        CU_ASSERT_FATAL(listen(l, 1) == 0);
        CU_ASSERT_FATAL(getsockname(l, (struct sockaddr *)&sa, &sl) == 0);
        fds[1] = socket(AF_INET, SOCK_STREAM, 0);
        CU_ASSERT_FATAL(connect(fds[1], (struct sockaddr *)&sa, sizeof(sa)) == 0);
        fds[0] = accept(l, NULL, NULL);
        CU_ASSERT_FATAL(fds[0] >= 0);
        close(l);
    }
    evutil_make_socket_nonblocking(fds[0]);
    evutil_make_socket_nonblocking(fds[1]);
}

static void fx_init(struct fx *f)
{
    memset(f, 0, sizeof(*f));
    f->base = event_base_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(f->base);
    f->free_in_done = true;
}

/* The test's ends of `in` (sink) and `out` (source). */
static void fx_pipes(struct fx *f, size_t in_hwm, size_t out_pipe_hwm)
{
    f->sink.fx = f;
    f->sink.seed = SEED_IN;
    pk_pipe_init(&f->sink.pipe, in_hwm);
    pk_pipe_set_consumer(&f->sink.pipe, sink_readable, &f->sink);
    f->src.seed = SEED_OUT;
    pk_pipe_init(&f->src.pipe, out_pipe_hwm);
    pk_pipe_set_producer(&f->src.pipe, source_drained, &f->src);
}

/* A bevpipe on one end of a socket pair and a peer on the other. prefix bytes of the
 * peer's pattern are put in the bevpipe's bufferevent input beforehand (leftover input). */
static void fx_bevpipe(struct fx *f, bool tcp, size_t in_hwm, size_t out_pipe_hwm, size_t out_hwm,
                       size_t prefix)
{
    int fds[2];
    socket_pair(tcp, fds);
    struct bufferevent *bev = bufferevent_socket_new(f->base, fds[0], BEV_OPT_CLOSE_ON_FREE);
    CU_ASSERT_PTR_NOT_NULL_FATAL(bev);
    if (prefix) {
        /* Read by the bufferevent before the bevpipe exists, like bytes after a head. (A
         * bufferevent's input cannot be added to directly: libevent freezes its end.) */
        uint8_t *buf = pk_xmalloc(prefix);
        gen_fill(buf, prefix, SEED_IN, 0);
        CU_ASSERT_FATAL(write(fds[1], buf, prefix) == (ssize_t)prefix);
        free(buf);
        bufferevent_enable(bev, EV_READ);
        WAIT(f, evbuffer_get_length(bufferevent_get_input(bev)) == prefix);
    }
    fx_pipes(f, in_hwm, out_pipe_hwm);
    peer_init(f, &f->peer, fds[1], SEED_OUT, SEED_IN);
    f->peer.tx_off = prefix;
    f->bp = pk_bevpipe_new(f->base, bev, &f->sink.pipe, &f->src.pipe, true, out_hwm, on_done, f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f->bp);
}

static void fx_free(struct fx *f)
{
    pk_bevpipe_del(f->bp);
    pk_splice_del(f->sp);
    if (f->peer.bev)
        bufferevent_free(f->peer.bev);
    if (f->peer2.bev)
        bufferevent_free(f->peer2.bev);
    if (f->tick_ev)
        event_free(f->tick_ev);
    pk_pipe_free(&f->sink.pipe);
    pk_pipe_free(&f->src.pipe);
    event_base_free(f->base);
}

/* ---- bevpipe -------------------------------------------------------------------------- */

/* Several MiB each way at once, with leftover input delivered first, both directions ending
 * with a half-close; on_done(0) exactly once. */
static void test_bevpipe_both_ways(void)
{
    struct fx f;
    fx_init(&f);
    f.free_in_done = false;
    const uint64_t n_in = 6 * MIB + 12345, n_out = 5 * MIB + 777, prefix = 3000;
    fx_bevpipe(&f, false, 256 * 1024, 256 * 1024, 0, prefix);
    peer_send(&f.peer, n_in, true);
    source_send(&f.src, n_out, true);
    WAIT(&f, f.done_calls > 0 && f.peer.rx_eof && f.sink.done);
    CU_ASSERT_EQUAL(f.sink.got, prefix + n_in);
    CU_ASSERT_EQUAL(f.sink.bad, 0);
    CU_ASSERT(!f.sink.aborted);
    CU_ASSERT_EQUAL(f.peer.rx, n_out);
    CU_ASSERT_EQUAL(f.peer.rx_bad, 0);
    CU_ASSERT(!f.peer.error);
    CU_ASSERT_EQUAL(f.done_err, 0);
    CU_ASSERT_EQUAL(pk_bevpipe_bytes_in(f.bp), prefix + n_in);
    CU_ASSERT_EQUAL(pk_bevpipe_bytes_out(f.bp), n_out);
    CU_ASSERT_STRING_EQUAL(pk_bevpipe_error(f.bp), "");
    /* Exactly once, even with the bevpipe left alive. */
    settle(&f, 30);
    CU_ASSERT_EQUAL(f.done_calls, 1);
    fx_free(&f);
}

/* `in`'s consumer stops taking: reading stops with `in` at most one read above its mark,
 * and resumes, losing nothing, once the consumer drains it. */
static void test_bevpipe_backpressure_in(void)
{
    struct fx f;
    fx_init(&f);
    const size_t hwm = 64 * 1024;
    const uint64_t total = 4 * MIB;
    fx_bevpipe(&f, false, hwm, 64 * 1024, 0, 0);
    f.sink.paused = true;
    source_send(&f.src, 0, true);
    peer_send(&f.peer, total, true);
    WAIT(&f, f.sink.max_len >= hwm);
    settle(&f, 50);
    CU_ASSERT(pk_pipe_len(&f.sink.pipe) <= hwm + ONE_READ);
    uint64_t b1 = pk_bevpipe_bytes_in(f.bp);
    settle(&f, 50);
    CU_ASSERT_EQUAL(pk_bevpipe_bytes_in(f.bp), b1);
    CU_ASSERT(b1 <= hwm + ONE_READ);
    /* The peer is blocked: its bytes wait in its own buffer and the kernel's. */
    CU_ASSERT(f.peer.tx_queued < total ||
              evbuffer_get_length(bufferevent_get_output(f.peer.bev)) > 0);
    CU_ASSERT_EQUAL(f.done_calls, 0);

    sink_resume(&f.sink);
    WAIT(&f, f.sink.done && f.done_calls == 1);
    CU_ASSERT_EQUAL(f.sink.got, total);
    CU_ASSERT_EQUAL(f.sink.bad, 0);
    CU_ASSERT(f.sink.max_len <= hwm + ONE_READ);
    CU_ASSERT_EQUAL(f.done_err, 0);
    fx_free(&f);
}

/* The peer stops reading: bevpipe takes from `out` only while the connection's output is
 * below out_hwm, so the producer blocks; it resumes when the peer reads again. */
static void test_bevpipe_backpressure_out(void)
{
    struct fx f;
    fx_init(&f);
    const uint64_t total = 8 * MIB;
    fx_bevpipe(&f, false, 64 * 1024, 64 * 1024, 64 * 1024, 0);
    peer_pause(&f.peer, true);
    peer_send(&f.peer, 0, true);
    source_send(&f.src, total, true);
    WAIT(&f, pk_pipe_full(&f.src.pipe));
    settle(&f, 50);
    uint64_t b1 = pk_bevpipe_bytes_out(f.bp);
    CU_ASSERT(f.src.written < total);
    CU_ASSERT(pk_pipe_full(&f.src.pipe));
    settle(&f, 50);
    CU_ASSERT_EQUAL(pk_bevpipe_bytes_out(f.bp), b1);
    /* out_hwm plus what the kernel buffers: far from everything. */
    CU_ASSERT(b1 < total / 4);
    CU_ASSERT_EQUAL(f.done_calls, 0);

    peer_pause(&f.peer, false);
    WAIT(&f, f.peer.rx_eof && f.done_calls == 1);
    CU_ASSERT_EQUAL(f.peer.rx, total);
    CU_ASSERT_EQUAL(f.peer.rx_bad, 0);
    CU_ASSERT_EQUAL(f.done_err, 0);
    CU_ASSERT(f.sink.done);
    fx_free(&f);
}

/* The peer shuts its write side first: `in` closes after every byte, while `out` still
 * flows to the peer afterwards. */
static void test_bevpipe_half_close_peer_first(void)
{
    struct fx f;
    fx_init(&f);
    fx_bevpipe(&f, false, 256 * 1024, 256 * 1024, 0, 0);
    peer_send(&f.peer, MIB, true);
    WAIT(&f, f.sink.done);
    CU_ASSERT_EQUAL(f.sink.got, MIB);
    CU_ASSERT_EQUAL(f.sink.bad, 0);
    CU_ASSERT(!f.sink.aborted);
    settle(&f, 20);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    CU_ASSERT(!f.peer.rx_eof);

    source_send(&f.src, 2 * MIB, true);
    WAIT(&f, f.peer.rx_eof && f.done_calls == 1);
    CU_ASSERT_EQUAL(f.peer.rx, 2 * MIB);
    CU_ASSERT_EQUAL(f.peer.rx_bad, 0);
    CU_ASSERT(!f.peer.error);
    CU_ASSERT_EQUAL(f.done_err, 0);
    fx_free(&f);
}

/* `out` ends first: the peer reads every byte then EOF, and can still send afterwards. */
static void test_bevpipe_half_close_out_first(void)
{
    struct fx f;
    fx_init(&f);
    fx_bevpipe(&f, false, 256 * 1024, 256 * 1024, 0, 0);
    source_send(&f.src, MIB + 1, true);
    WAIT(&f, f.peer.rx_eof);
    CU_ASSERT_EQUAL(f.peer.rx, MIB + 1);
    CU_ASSERT_EQUAL(f.peer.rx_bad, 0);
    settle(&f, 20);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    CU_ASSERT(!f.sink.done);

    peer_send(&f.peer, 512 * 1024, true);
    WAIT(&f, f.sink.done && f.done_calls == 1);
    CU_ASSERT_EQUAL(f.sink.got, 512 * 1024);
    CU_ASSERT_EQUAL(f.sink.bad, 0);
    CU_ASSERT(!f.peer.error);
    CU_ASSERT_EQUAL(f.done_err, 0);
    fx_free(&f);
}

/* An empty `out` that is already closed, and no data from the peer: FIN both ways. */
static void test_bevpipe_empty_both_ways(void)
{
    struct fx f;
    fx_init(&f);
    fx_bevpipe(&f, false, 1024, 1024, 0, 0);
    pk_pipe_close(&f.src.pipe);
    peer_send(&f.peer, 0, true);
    WAIT(&f, f.done_calls == 1 && f.peer.rx_eof && f.sink.done);
    CU_ASSERT_EQUAL(f.done_err, 0);
    CU_ASSERT_EQUAL(f.sink.got, 0);
    CU_ASSERT_EQUAL(f.peer.rx, 0);
    fx_free(&f);
}

/* libevent may report EOF while input is still buffered: here a bufferevent pair whose
 * writer finishes while `in` is full. `in` must close only after every byte. Also the
 * mode without shutdown (TLS): the end of `out` only marks the write side done. */
static void test_bevpipe_eof_with_input_pending(void)
{
    struct fx f;
    fx_init(&f);
    f.free_in_done = false;
    struct bufferevent *pair[2];
    CU_ASSERT_FATAL(bufferevent_pair_new(f.base, BEV_OPT_CLOSE_ON_FREE, pair) == 0);
    fx_pipes(&f, 16 * 1024, 64 * 1024);
    peer_attach(&f, &f.peer, pair[1], SEED_OUT, SEED_IN);
    f.sink.paused = true;
    f.bp = pk_bevpipe_new(f.base, pair[0], &f.sink.pipe, &f.src.pipe, false, 0, on_done, &f);
    peer_send(&f.peer, 100000, false);
    WAIT(&f, f.sink.max_len >= 16 * 1024);
    bufferevent_flush(f.peer.bev, EV_WRITE, BEV_FINISHED); /* EOF at our end */
    settle(&f, 10);
    CU_ASSERT(!f.sink.done);
    CU_ASSERT(!f.sink.aborted);
    source_send(&f.src, 50000, true);
    WAIT(&f, f.peer.rx == 50000);
    settle(&f, 10);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    sink_resume(&f.sink);
    WAIT(&f, f.sink.done && f.done_calls == 1);
    CU_ASSERT_EQUAL(f.sink.got, 100000);
    CU_ASSERT_EQUAL(f.sink.bad, 0);
    CU_ASSERT_EQUAL(f.peer.rx_bad, 0);
    CU_ASSERT_EQUAL(f.done_err, 0);
    /* The owner takes the connection back to close it politely itself. */
    struct bufferevent *bev = pk_bevpipe_take_bev(f.bp);
    f.bp = NULL;
    CU_ASSERT_PTR_EQUAL(bev, pair[0]);
    bufferevent_write(bev, "bye", 3);
    bufferevent_enable(bev, EV_WRITE);
    WAIT(&f, f.peer.rx == 50003);
    bufferevent_free(bev);
    fx_free(&f);
}

/* The TLS mode: the end of `out` cannot be a half-close, so once the output is flushed
 * both directions end (PROTOCOL.md 2): `in` closes cleanly after the input already read,
 * on_done(0) comes although the peer never sent EOF, and no FIN was sent (the owner
 * ends the connection with a close_notify). */
static void test_bevpipe_tls_write_end_ends_both_directions(void)
{
    struct fx f;
    fx_init(&f);
    f.free_in_done = false;
    struct bufferevent *pair[2];
    CU_ASSERT_FATAL(bufferevent_pair_new(f.base, BEV_OPT_CLOSE_ON_FREE, pair) == 0);
    fx_pipes(&f, 64 * 1024, 64 * 1024);
    peer_attach(&f, &f.peer, pair[1], SEED_OUT, SEED_IN);
    f.bp = pk_bevpipe_new(f.base, pair[0], &f.sink.pipe, &f.src.pipe, false, 0, on_done, &f);
    peer_send(&f.peer, 30000, false);
    WAIT(&f, f.sink.got == 30000);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    source_send(&f.src, 20000, true);
    WAIT(&f, f.done_calls == 1 && f.sink.done);
    CU_ASSERT_EQUAL(f.done_err, 0);
    CU_ASSERT(!f.sink.aborted);
    CU_ASSERT_EQUAL(f.sink.got, 30000);
    CU_ASSERT_EQUAL(f.sink.bad, 0);
    WAIT(&f, f.peer.rx == 20000);
    CU_ASSERT_EQUAL(f.peer.rx_bad, 0);
    settle(&f, 10);
    CU_ASSERT(!f.peer.rx_eof);
    struct bufferevent *bev = pk_bevpipe_take_bev(f.bp);
    f.bp = NULL;
    CU_ASSERT_PTR_EQUAL(bev, pair[0]);
    bufferevent_free(bev);
    fx_free(&f);
}

/* `out` aborted over TCP: the connection is reset, so the peer gets ECONNRESET (not a
 * clean EOF); `in` is aborted and on_done reports PK_ERR_CLOSED. */
static void test_bevpipe_out_abort_tcp_rst(void)
{
    struct fx f;
    fx_init(&f);
    fx_bevpipe(&f, true, 256 * 1024, 256 * 1024, 0, 0);
    source_send(&f.src, 100 * 1000, false);
    WAIT(&f, f.peer.rx > 0);
    pk_pipe_abort(&f.src.pipe);
    WAIT(&f, f.done_calls == 1 && (f.peer.error || f.peer.rx_eof));
    CU_ASSERT(f.peer.error);
    CU_ASSERT_EQUAL(f.peer.error_errno, ECONNRESET);
    CU_ASSERT(!f.peer.rx_eof);
    CU_ASSERT_EQUAL(f.peer.rx_bad, 0);
    CU_ASSERT_EQUAL(f.done_err, PK_ERR_CLOSED);
    CU_ASSERT(f.sink.aborted);
    fx_free(&f);
}

/* The same over AF_UNIX, which has no RST: the peer sees a plain EOF (Linux reports
 * ECONNRESET only when the closed end had unread input). The abort is still reported. */
static void test_bevpipe_out_abort_unix_eof(void)
{
    struct fx f;
    fx_init(&f);
    fx_bevpipe(&f, false, 256 * 1024, 256 * 1024, 0, 0);
    source_send(&f.src, 1000, false);
    WAIT(&f, f.peer.rx == 1000);
    pk_pipe_abort(&f.src.pipe);
    WAIT(&f, f.done_calls == 1 && (f.peer.error || f.peer.rx_eof));
    CU_ASSERT(f.peer.rx_eof);
    CU_ASSERT(!f.peer.error);
    CU_ASSERT_EQUAL(f.done_err, PK_ERR_CLOSED);
    CU_ASSERT(f.sink.aborted);
    fx_free(&f);
}

/* An abort that comes after `out` ended, while its bytes are still being flushed (every
 * byte was taken into the connection's output, but the peer does not read), wins: the
 * connection is reset, no FIN, and the unsent bytes are dropped. */
static void test_bevpipe_out_abort_while_flushing(void)
{
    struct fx f;
    fx_init(&f);
    const uint64_t total = 8 * MIB;
    fx_bevpipe(&f, true, 256 * 1024, 2 * total, 2 * total, 0);
    peer_pause(&f.peer, true);
    source_send(&f.src, total, true);
    WAIT(&f, pk_pipe_done(&f.src.pipe));
    CU_ASSERT_EQUAL(pk_bevpipe_bytes_out(f.bp), total);
    settle(&f, 20);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    pk_pipe_abort(&f.src.pipe);
    WAIT(&f, f.done_calls == 1);
    CU_ASSERT_EQUAL(f.done_err, PK_ERR_CLOSED);
    CU_ASSERT(f.sink.aborted);
    peer_pause(&f.peer, false);
    WAIT(&f, f.peer.error || f.peer.rx_eof);
    CU_ASSERT(f.peer.error);
    CU_ASSERT_EQUAL(f.peer.error_errno, ECONNRESET);
    CU_ASSERT(f.peer.rx < total);
    CU_ASSERT_EQUAL(f.peer.rx_bad, 0);
    fx_free(&f);
}

/* The peer resets the connection: `in` is aborted (after the bytes that came before) and
 * on_done reports PK_ERR_IO with the reason. */
static void test_bevpipe_peer_reset(void)
{
    struct fx f;
    fx_init(&f);
    fx_bevpipe(&f, true, 256 * 1024, 256 * 1024, 0, 0);
    peer_send(&f.peer, 5000, false);
    WAIT(&f, f.sink.got == 5000);
    peer_reset(&f.peer);
    WAIT(&f, f.done_calls == 1);
    CU_ASSERT_EQUAL(f.done_err, PK_ERR_IO);
    CU_ASSERT(f.sink.aborted);
    CU_ASSERT(!f.sink.done);
    CU_ASSERT_EQUAL(f.sink.bad, 0);
    fx_free(&f);
}

/* The owner aborts `in` itself (its consumer side failed): the next bytes from the peer
 * reset the connection instead of being dropped. */
static void test_bevpipe_in_aborted_by_owner(void)
{
    struct fx f;
    fx_init(&f);
    fx_bevpipe(&f, true, 256 * 1024, 256 * 1024, 0, 0);
    peer_send(&f.peer, 1000, false);
    WAIT(&f, f.sink.got == 1000);
    pk_pipe_abort(&f.sink.pipe);
    settle(&f, 10);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    peer_send(&f.peer, 2000, false);
    WAIT(&f, f.done_calls == 1 && f.peer.error);
    CU_ASSERT_EQUAL(f.done_err, PK_ERR_CLOSED);
    CU_ASSERT_EQUAL(f.peer.error_errno, ECONNRESET);
    CU_ASSERT_EQUAL(f.sink.got, 1000);
    fx_free(&f);
}

/* A peer that has gone entirely (not half-closed) while `out` still writes: the write
 * fails and the stream reports PK_ERR_IO with the reason, `in` aborted. */
static void test_bevpipe_write_to_closed_peer(void)
{
    struct fx f;
    fx_init(&f);
    f.free_in_done = false;
    fx_bevpipe(&f, true, 256 * 1024, 256 * 1024, 0, 0);
    bufferevent_free(f.peer.bev); /* FIN, and a RST for whatever arrives next */
    f.peer.bev = NULL;
    WAIT(&f, f.sink.done);
    source_send(&f.src, 4 * MIB, true);
    WAIT(&f, f.done_calls == 1);
    CU_ASSERT_EQUAL(f.done_err, PK_ERR_IO);
    CU_ASSERT(f.sink.aborted);
    CU_ASSERT(strlen(pk_bevpipe_error(f.bp)) > 0);
    fx_free(&f);
}

/* pk_bevpipe_reset after `out` already ended (and the peer saw the FIN): the connection
 * is still reset and on_done reports the given error. */
static void test_bevpipe_reset_after_out_ended(void)
{
    struct fx f;
    fx_init(&f);
    fx_bevpipe(&f, true, 256 * 1024, 256 * 1024, 0, 0);
    source_send(&f.src, 1000, true);
    WAIT(&f, f.peer.rx_eof);
    CU_ASSERT_EQUAL(f.peer.rx, 1000);
    pk_bevpipe_reset(f.bp, PK_ERR_PROTOCOL);
    WAIT(&f, f.done_calls == 1);
    CU_ASSERT_EQUAL(f.done_err, PK_ERR_PROTOCOL);
    CU_ASSERT(f.sink.aborted);
    /* The peer's next write meets the reset. */
    peer_send(&f.peer, MIB, false);
    WAIT(&f, f.peer.error);
    CU_ASSERT(f.peer.error_errno == ECONNRESET || f.peer.error_errno == EPIPE);
    fx_free(&f);
}

/* Nothing moves: the idle timeout fails the stream and resets the connection. */
static void test_bevpipe_idle_timeout(void)
{
    struct fx f;
    fx_init(&f);
    fx_bevpipe(&f, true, 256 * 1024, 256 * 1024, 0, 0);
    f.free_in_done = false;
    pk_bevpipe_set_idle_timeout(f.bp, 30);
    WAIT(&f, f.done_calls == 1);
    CU_ASSERT_EQUAL(f.done_err, PK_ERR_TIMEOUT);
    CU_ASSERT(f.sink.aborted);
    CU_ASSERT_STRING_EQUAL(pk_bevpipe_error(f.bp), "idle timeout");
    /* Closed abortively already: nothing to take back. */
    CU_ASSERT_PTR_NULL(pk_bevpipe_take_bev(f.bp));
    f.bp = NULL;
    WAIT(&f, f.peer.error || f.peer.rx_eof);
    CU_ASSERT(f.peer.error);
    CU_ASSERT_EQUAL(f.peer.error_errno, ECONNRESET);
    fx_free(&f);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct fx *f = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (f->ticks-- > 0)
        peer_send(&f->peer, f->peer.tx_total + 1, false);
    else
        event_del(f->tick_ev);
}

/* Bytes keep the idle timer from firing however long the stream lasts: a byte every
 * 10 ms for a second, with a 400 ms idle timeout. */
static void test_bevpipe_idle_timeout_postponed(void)
{
    struct fx f;
    fx_init(&f);
    fx_bevpipe(&f, false, 256 * 1024, 256 * 1024, 0, 0);
    pk_bevpipe_set_idle_timeout(f.bp, 400);
    f.ticks = 100;
    f.tick_ev = event_new(f.base, -1, EV_PERSIST, tick_cb, &f);
    struct timeval tv = {0, 10 * 1000};
    event_add(f.tick_ev, &tv);
    WAIT(&f, f.ticks < 0 || f.done_calls > 0);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    CU_ASSERT_EQUAL(f.sink.got, 100);
    WAIT(&f, f.done_calls == 1);
    CU_ASSERT_EQUAL(f.done_err, PK_ERR_TIMEOUT);
    fx_free(&f);
}

/* pk_bevpipe_del from inside `in`'s notification (in the middle of delivering input),
 * and right after creation: no callback afterwards, no use after free (ASan), and the
 * socket is closed. */
static void test_bevpipe_free_anywhere(void)
{
    struct fx f;
    fx_init(&f);
    fx_bevpipe(&f, false, 256 * 1024, 256 * 1024, 0, 4096);
    f.sink.free_bp = true;
    source_send(&f.src, 64 * 1024, false);
    peer_send(&f.peer, MIB, false);
    WAIT(&f, f.bp == NULL);
    WAIT(&f, f.peer.error || f.peer.rx_eof);
    settle(&f, 20);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    /* The pipes are detached: the test's ends still work alone. */
    CU_ASSERT_PTR_NULL(f.sink.pipe.on_drained);
    CU_ASSERT_PTR_NULL(f.src.pipe.on_readable);
    fx_free(&f);

    fx_init(&f);
    fx_bevpipe(&f, false, 256 * 1024, 256 * 1024, 0, 100);
    pk_bevpipe_del(f.bp); /* its first kick is pending */
    f.bp = NULL;
    WAIT(&f, f.peer.rx_eof || f.peer.error);
    settle(&f, 10);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    CU_ASSERT_EQUAL(f.sink.got, 0);
    fx_free(&f);
}

/* ---- splice --------------------------------------------------------------------------- */

static void on_splice_done(struct pk_splice *sp, int err, void *arg)
{
    struct fx *f = arg;
    CU_ASSERT_PTR_EQUAL(sp, f->sp);
    f->done_calls++;
    f->done_err = err;
    pk_splice_del(sp);
    f->sp = NULL;
}

/* peer (a's far end) <-> a == splice == b <-> peer2 (b's far end), over loopback TCP. */
static void fx_splice(struct fx *f)
{
    int p1[2], p2[2];
    socket_pair(true, p1);
    socket_pair(true, p2);
    peer_init(f, &f->peer, p1[1], SEED_BTOA, SEED_ATOB);
    peer_init(f, &f->peer2, p2[1], SEED_ATOB, SEED_BTOA);
    struct bufferevent *a = bufferevent_socket_new(f->base, p1[0], BEV_OPT_CLOSE_ON_FREE);
    struct bufferevent *b = bufferevent_socket_new(f->base, p2[0], BEV_OPT_CLOSE_ON_FREE);
    CU_ASSERT_FATAL(a && b);
    f->sp = pk_splice_new(f->base, a, b, true, true, on_splice_done, f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f->sp);
}

/* Bytes both ways at once; a's EOF reaches b as a FIN after every byte, while b keeps
 * sending; b's FIN then ends the splice cleanly. */
static void test_splice_both_ways_half_close(void)
{
    struct fx f;
    fx_init(&f);
    fx_splice(&f);
    const uint64_t n_ab = 5 * MIB + 3, n_ba = 3 * MIB + 5;
    peer_send(&f.peer, n_ab, true);
    peer_send(&f.peer2, n_ba, false);
    WAIT(&f, f.peer2.rx_eof);
    CU_ASSERT_EQUAL(f.peer2.rx, n_ab);
    CU_ASSERT_EQUAL(f.peer2.rx_bad, 0);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    CU_ASSERT(!f.peer.rx_eof);

    WAIT(&f, f.peer.rx == n_ba);
    CU_ASSERT_EQUAL(pk_splice_bytes_ab(f.sp), n_ab);
    CU_ASSERT_EQUAL(pk_splice_bytes_ba(f.sp), n_ba);
    settle(&f, 20);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    CU_ASSERT(!f.peer.rx_eof);
    f.peer2.tx_shut = true;
    peer_pump(&f.peer2);
    WAIT(&f, f.peer.rx_eof && f.done_calls == 1);
    CU_ASSERT_EQUAL(f.peer.rx, n_ba);
    CU_ASSERT_EQUAL(f.peer.rx_bad, 0);
    CU_ASSERT_EQUAL(f.done_err, 0);
    CU_ASSERT(!f.peer.error && !f.peer2.error);
    fx_free(&f);
}

/* A reset on a reaches b as a reset; on_done reports the error once. */
static void test_splice_reset_propagates(void)
{
    struct fx f;
    fx_init(&f);
    fx_splice(&f);
    peer_send(&f.peer, 100 * 1000, false);
    WAIT(&f, f.peer2.rx == 100 * 1000);
    peer_reset(&f.peer);
    WAIT(&f, f.done_calls == 1 && (f.peer2.error || f.peer2.rx_eof));
    CU_ASSERT_EQUAL(f.done_err, PK_ERR_IO);
    CU_ASSERT(f.peer2.error);
    CU_ASSERT_EQUAL(f.peer2.error_errno, ECONNRESET);
    settle(&f, 20);
    CU_ASSERT_EQUAL(f.done_calls, 1);
    fx_free(&f);
}

/* b resets after it received a's FIN: a is reset too (through the aborted pipe). */
static void test_splice_reset_from_receiver(void)
{
    struct fx f;
    fx_init(&f);
    fx_splice(&f);
    peer_send(&f.peer, 1000, true);
    WAIT(&f, f.peer2.rx_eof);
    CU_ASSERT_EQUAL(f.peer2.rx, 1000);
    peer_reset(&f.peer2);
    WAIT(&f, f.done_calls == 1 && (f.peer.error || f.peer.rx_eof));
    CU_ASSERT_EQUAL(f.done_err, PK_ERR_IO);
    CU_ASSERT(f.peer.error);
    CU_ASSERT_EQUAL(f.peer.error_errno, ECONNRESET);
    fx_free(&f);
}

/* a resets after its own FIN went through (b has nothing more to write, so only a's
 * writes can notice): when b's bytes meet the reset, b is reset too. */
static void test_splice_reset_from_finished_sender(void)
{
    struct fx f;
    fx_init(&f);
    fx_splice(&f);
    peer_send(&f.peer, 1000, true);
    WAIT(&f, f.peer2.rx_eof);
    peer_reset(&f.peer);
    peer_send(&f.peer2, 4 * MIB, false);
    WAIT(&f, f.done_calls == 1 && f.peer2.error);
    CU_ASSERT_EQUAL(f.done_err, PK_ERR_IO);
    CU_ASSERT(f.peer2.error_errno == ECONNRESET || f.peer2.error_errno == EPIPE);
    fx_free(&f);
}

/* TLS settings: pairs are checked at config time and failures name the key (and the
 * file: unreadable files are reported before OpenSSL sees them). */
/* A socket pair (see socket_pair) with a bufferevent on fds[0]. */
static struct bufferevent *socket_bev(struct event_base *base, bool tcp, int fds[2])
{
    socket_pair(tcp, fds);
    struct bufferevent *bev = bufferevent_socket_new(base, fds[0], BEV_OPT_CLOSE_ON_FREE);
    CU_ASSERT_PTR_NOT_NULL_FATAL(bev);
    return bev;
}

/* pk_bev_read_more: large reads into a socket bufferevent's input, up to max, stopping at
 * an empty socket; EOF and a reset are reported; the input's end stays frozen after. */
static void test_bev_read_more(void)
{
    struct event_base *base = event_base_new();
    int fds[2];
    struct bufferevent *bev = socket_bev(base, false, fds);
    struct evbuffer *in = bufferevent_get_input(bev);
    enum pk_read_end end;

    /* Nothing to read. */
    CU_ASSERT_EQUAL(pk_bev_read_more(bev, 1 << 20, &end), 0);
    CU_ASSERT_EQUAL(end, PK_READ_AGAIN);

    /* Fill the socket with a pattern as far as it takes. */
    size_t sent = 0;
    uint8_t chunk[8192];
    for (;;) {
        for (size_t i = 0; i < sizeof(chunk); i++)
            chunk[i] = (uint8_t)((sent + i) * 7);
        ssize_t n = write(fds[1], chunk, sizeof(chunk));
        if (n <= 0)
            break;
        sent += (size_t)n;
    }
    CU_ASSERT_FATAL(sent > 64 * 1024);
    CU_ASSERT_EQUAL(pk_bev_read_more(bev, 1000, &end), 1000);
    CU_ASSERT_EQUAL(end, PK_READ_AGAIN);
    CU_ASSERT_EQUAL(pk_bev_read_more(bev, 1 << 24, &end), sent - 1000);
    CU_ASSERT_EQUAL(end, PK_READ_AGAIN);
    CU_ASSERT_EQUAL(evbuffer_get_length(in), sent);
    const uint8_t *all = evbuffer_pullup(in, -1);
    size_t bad = 0;
    for (size_t i = 0; i < sent; i++)
        bad += all[i] != (uint8_t)(i * 7);
    CU_ASSERT_EQUAL(bad, 0);
    /* libevent's freeze of the input's end is back in place. */
    CU_ASSERT_EQUAL(evbuffer_add(in, "x", 1), -1);

    /* The peer closes: EOF. */
    close(fds[1]);
    CU_ASSERT_EQUAL(pk_bev_read_more(bev, 1 << 20, &end), 0);
    CU_ASSERT_EQUAL(end, PK_READ_EOF);
    bufferevent_free(bev);

    /* A reset: an error with errno set. */
    bev = socket_bev(base, true, fds);
    CU_ASSERT_FATAL(write(fds[1], "abc", 3) == 3);
    usleep(20000);
    CU_ASSERT_EQUAL(pk_bev_read_more(bev, 1 << 20, &end), 3);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fds[1], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fds[1]);
    usleep(20000);
    CU_ASSERT_EQUAL(pk_bev_read_more(bev, 1 << 20, &end), 0);
    CU_ASSERT_EQUAL(end, PK_READ_ERROR);
    CU_ASSERT_EQUAL(errno, ECONNRESET);
    bufferevent_free(bev);
    event_base_free(base);
}

/* pk_bev_write_direct: what the socket takes goes at once (the output stays empty); the
 * rest moves to the output and the bufferevent writes it after, in order. */
static void test_bev_write_direct(void)
{
    struct event_base *base = event_base_new();
    int fds[2];
    struct bufferevent *bev = socket_bev(base, false, fds);
    bufferevent_enable(bev, EV_WRITE);
    struct evbuffer *buf = evbuffer_new();
    evbuffer_add(buf, "hello", 5);
    CU_ASSERT_EQUAL(pk_bev_write_direct(bev, buf), 5);
    CU_ASSERT_EQUAL(evbuffer_get_length(buf), 0);
    CU_ASSERT_EQUAL(evbuffer_get_length(bufferevent_get_output(bev)), 0);
    char got[8];
    CU_ASSERT_EQUAL(read(fds[1], got, sizeof(got)), 5);
    CU_ASSERT_EQUAL(memcmp(got, "hello", 5), 0);

    /* More than the socket holds: the rest is queued and flushed by the loop. */
    const size_t total = 4 * MIB;
    uint8_t *big = pk_xmalloc(total);
    for (size_t i = 0; i < total; i++)
        big[i] = (uint8_t)(i * 13);
    evbuffer_add(buf, big, total);
    size_t direct = pk_bev_write_direct(bev, buf);
    CU_ASSERT(direct > 0 && direct < total);
    CU_ASSERT_EQUAL(evbuffer_get_length(buf), 0);
    CU_ASSERT_EQUAL(evbuffer_get_length(bufferevent_get_output(bev)), total - direct);
    size_t rx = 0, bad = 0;
    uint8_t chunk[65536];
    while (rx < total) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        ssize_t n = read(fds[1], chunk, sizeof(chunk));
        for (ssize_t i = 0; i < n; i++)
            bad += chunk[i] != (uint8_t)((rx + (size_t)i) * 13);
        if (n > 0)
            rx += (size_t)n;
    }
    CU_ASSERT_EQUAL(rx, total);
    CU_ASSERT_EQUAL(bad, 0);
    free(big);
    evbuffer_free(buf);
    bufferevent_free(bev);
    close(fds[1]);
    event_base_free(base);
}

static void count_flush(void *arg)
{
    (*(int *)arg)++;
}

/* pk_wbatch: writes of one loop round leave in one direct write at the end of the round,
 * in order with whatever was queued in the output before. */
static void test_wbatch(void)
{
    struct event_base *base = event_base_new();
    int fds[2];
    struct bufferevent *bev = socket_bev(base, false, fds);
    bufferevent_enable(bev, EV_WRITE);
    struct pk_wbatch w;
    int flushed = 0;
    pk_wbatch_init(&w, base, bev, count_flush, &flushed);
    struct evbuffer *out = bufferevent_get_output(bev);
    evbuffer_add(pk_wbatch_out(&w), "head ", 5);
    evbuffer_add(pk_wbatch_out(&w), "body", 4);
    CU_ASSERT_EQUAL(evbuffer_get_length(out), 0); /* nothing queued in the output */
    CU_ASSERT_EQUAL(pk_wbatch_pending(&w), 9);
    event_base_loop(base, EVLOOP_NONBLOCK); /* the end of the round: one direct write */
    CU_ASSERT_EQUAL(pk_wbatch_pending(&w), 0);
    CU_ASSERT_EQUAL(flushed, 1);
    char got[32];
    CU_ASSERT_EQUAL(read(fds[1], got, sizeof(got)), 9);
    CU_ASSERT_EQUAL(memcmp(got, "head body", 9), 0);

    /* Bytes already queued in the output: writes go behind them, in order. */
    evbuffer_add(out, "A", 1);
    CU_ASSERT_PTR_EQUAL(pk_wbatch_out(&w), out);
    evbuffer_add(pk_wbatch_out(&w), "B", 1);
    pk_wbatch_flush(&w);
    for (int i = 0; i < 10 && evbuffer_get_length(out) > 0; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    CU_ASSERT_EQUAL(read(fds[1], got, sizeof(got)), 2);
    CU_ASSERT_EQUAL(memcmp(got, "AB", 2), 0);

    /* Dropped when the connection is cut short. */
    evbuffer_add(pk_wbatch_out(&w), "D", 1);
    struct pk_wbatch w2 = w;
    pk_wbatch_init(&w, base, bev, count_flush, &flushed);
    pk_wbatch_free(&w2, false);
    /* Flushed by hand before the end of the round (before a close, say). */
    evbuffer_add(pk_wbatch_out(&w), "C", 1);
    flushed = 0;
    pk_wbatch_free(&w, true);
    CU_ASSERT_EQUAL(read(fds[1], got, sizeof(got)), 1);
    CU_ASSERT_EQUAL(got[0], 'C');
    event_base_loop(base, EVLOOP_NONBLOCK); /* the cancelled flush does not run */
    CU_ASSERT_EQUAL(flushed, 0);
    bufferevent_free(bev);
    close(fds[1]);
    event_base_free(base);
}

static void test_tls_config_messages(void)
{
    char err[512];
    struct pk_tls_files f = {.cert = (char *)"a.pem"};
    CU_ASSERT_EQUAL(pk_tls_server_files_check("proxy.tls", &f, err, sizeof(err)), PK_ERR_INVALID);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "proxy.tls.key"));
    f = (struct pk_tls_files){.key = (char *)"a.key"};
    CU_ASSERT_EQUAL(pk_tls_server_files_check("admin.tls", &f, err, sizeof(err)), PK_ERR_INVALID);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "admin.tls.cert"));
    f = (struct pk_tls_files){.client_cas = (char *)"ca.pem"};
    CU_ASSERT_EQUAL(pk_tls_server_files_check("upstream.tls", &f, err, sizeof(err)),
                    PK_ERR_INVALID);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "upstream.tls.client-cas"));
    f = (struct pk_tls_files){
        .cert = (char *)"a.pem", .key = (char *)"a.key", .client_cas = (char *)"ca.pem"};
    CU_ASSERT_EQUAL(pk_tls_server_files_check("proxy.tls", &f, err, sizeof(err)), 0);
    f = (struct pk_tls_files){.cert = (char *)"c.pem"};
    CU_ASSERT_EQUAL(pk_tls_client_files_check("connect.tls", &f, err, sizeof(err)), PK_ERR_INVALID);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "connect.tls.key"));

    struct event_base *base = event_base_new();
    f = (struct pk_tls_files){.cert = (char *)"/nonexistent/c.pem",
                              .key = (char *)"/nonexistent/k.pem"};
    CU_ASSERT_PTR_NULL(pk_tls_server_new(base, "upstream", &f, pk_alpn_http11, err, sizeof(err)));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "upstream.tls.cert"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "/nonexistent/c.pem"));
    f = (struct pk_tls_files){.root_cas = (char *)"/nonexistent/ca.pem"};
    CU_ASSERT_PTR_NULL(pk_tls_client_ctx_new("connect.tls", &f, false, NULL, err, sizeof(err)));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "connect.tls.root-cas"));
    /* Without verification the CA file is not needed. */
    SSL_CTX *ctx = pk_tls_client_ctx_new("connect.tls", &f, true, pk_alpn_http11, err, sizeof(err));
    CU_ASSERT_PTR_NOT_NULL(ctx);
    SSL_CTX_free(ctx);
    event_base_free(base);
}

void pk_test_register_net(void)
{
    CU_pSuite s = CU_add_suite("net", NULL, NULL);

    CU_add_test(s, "proxy_v1_ipv4", test_proxy_v1_ipv4);
    CU_add_test(s, "bev_read_more", test_bev_read_more);
    CU_add_test(s, "bev_write_direct", test_bev_write_direct);
    CU_add_test(s, "wbatch", test_wbatch);
    CU_add_test(s, "proxy_v1_ipv6", test_proxy_v1_ipv6);
    CU_add_test(s, "proxy_v1_unknown", test_proxy_v1_unknown);
    CU_add_test(s, "proxy_v2_ipv4", test_proxy_v2_ipv4);
    CU_add_test(s, "proxy_v2_ipv6", test_proxy_v2_ipv6);
    CU_add_test(s, "proxy_v2_local", test_proxy_v2_local);
    CU_add_test(s, "parse_addr_port_good", test_parse_addr_port_good);
    CU_add_test(s, "parse_addr_port_bad", test_parse_addr_port_bad);
    CU_add_test(s, "bevpipe_both_ways", test_bevpipe_both_ways);
    CU_add_test(s, "bevpipe_backpressure_in", test_bevpipe_backpressure_in);
    CU_add_test(s, "bevpipe_backpressure_out", test_bevpipe_backpressure_out);
    CU_add_test(s, "bevpipe_half_close_peer_first", test_bevpipe_half_close_peer_first);
    CU_add_test(s, "bevpipe_half_close_out_first", test_bevpipe_half_close_out_first);
    CU_add_test(s, "bevpipe_empty_both_ways", test_bevpipe_empty_both_ways);
    CU_add_test(s, "bevpipe_eof_with_input_pending", test_bevpipe_eof_with_input_pending);
    CU_add_test(s, "tls_config_messages", test_tls_config_messages);
    CU_add_test(s, "bevpipe_tls_write_end_ends_both_directions",
                test_bevpipe_tls_write_end_ends_both_directions);
    CU_add_test(s, "bevpipe_out_abort_tcp_rst", test_bevpipe_out_abort_tcp_rst);
    CU_add_test(s, "bevpipe_out_abort_unix_eof", test_bevpipe_out_abort_unix_eof);
    CU_add_test(s, "bevpipe_out_abort_while_flushing", test_bevpipe_out_abort_while_flushing);
    CU_add_test(s, "bevpipe_peer_reset", test_bevpipe_peer_reset);
    CU_add_test(s, "bevpipe_in_aborted_by_owner", test_bevpipe_in_aborted_by_owner);
    CU_add_test(s, "bevpipe_write_to_closed_peer", test_bevpipe_write_to_closed_peer);
    CU_add_test(s, "bevpipe_reset_after_out_ended", test_bevpipe_reset_after_out_ended);
    CU_add_test(s, "bevpipe_idle_timeout", test_bevpipe_idle_timeout);
    CU_add_test(s, "bevpipe_idle_timeout_postponed", test_bevpipe_idle_timeout_postponed);
    CU_add_test(s, "bevpipe_free_anywhere", test_bevpipe_free_anywhere);
    CU_add_test(s, "splice_both_ways_half_close", test_splice_both_ways_half_close);
    CU_add_test(s, "splice_reset_propagates", test_splice_reset_propagates);
    CU_add_test(s, "splice_reset_from_receiver", test_splice_reset_from_receiver);
    CU_add_test(s, "splice_reset_from_finished_sender", test_splice_reset_from_finished_sender);
}
