/* Unit tests for lib/h2: a client-role and a server-role pk_h2conn joined by an in-memory
 * bufferevent pair, driven by the event loop until a condition holds (with a guard timer so
 * that a bug fails the test instead of hanging it). Covers requests and responses, bodies in
 * both directions, flow-control backpressure through pipes and credit returned at reset,
 * trailers, resets, drain (both roles, two-step), close (also from inside callbacks),
 * refused and malformed streams, the concurrency limit, the SETTINGS deadline and the
 * heartbeat. A few tests talk to a bare bufferevent instead of a second pk_h2conn. */
#include "base/base.h"
#include "h2/h2.h"
#include "stream/head.h"
#include "stream/pipe.h"

#include <CUnit/CUnit.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pk_test_register_h2(void);

/* String equality that fails (instead of crashing) when actual is NULL. */
#define ASSERT_STR(actual, expected)                                                               \
    do {                                                                                           \
        const char *a_ = (actual), *e_ = (expected);                                               \
        CU_assertImplementation(a_ != NULL && strcmp(a_, e_) == 0, __LINE__,                       \
                                "ASSERT_STR(" #actual ", " #expected ")", __FILE__, "", CU_FALSE); \
    } while (0)

#define MAX_TS     8
#define PIPE_HWM   (64 * 1024)
#define GUARD_SEC  5
#define STREAM_WIN (1u << 20) /* the default stream window */
#define BIG_BODY   (4u << 20)

struct h2t;

/* One side of one stream, as the test sees it: a sink pipe for what is received and a
 * body pipe for what is sent, plus everything the callbacks reported. */
struct tstream {
    struct h2t *t;
    struct pk_h2stream *s; /* NULL once closed */
    bool server_side;
    bool sink_init, body_init;

    /* Receiving. */
    struct pk_pipe sink;
    bool consume; /* the sink's consumer takes the bytes */
    uint64_t got;
    uint32_t got_hash;
    char got_text[256];
    int readable_calls;
    bool first_byte_seen;
    int heads_at_first_byte;
    bool sink_done;
    bool sink_aborted;

    /* Sending. */
    struct pk_pipe body;
    const char *text; /* body content, or NULL for a generated pattern */
    uint64_t to_send;
    uint64_t sent;
    uint32_t sent_hash;
    bool close_body;
    const char *trailer_name, *trailer_value;

    /* Stream callbacks. */
    int heads;
    int head_status;
    char head_ctype[64];
    int closes;
    uint32_t close_code;
    int close_seq;
    bool detached_at_close;

    /* Server role: the request head as on_stream saw it. */
    char method[16], scheme[16], authority[64], path[64], xtest[64];
    bool remote_ended_at_stream;
    bool head_too_large;
};

struct side {
    struct h2t *t;
    struct pk_h2conn *c; /* NULL once closed */
    int ready;
    int closes;
    int close_seq;
    char why[64];
    int goaways;
    uint32_t goaway_code;
    int streams_closed;
    size_t nstreams_at_close;
};

enum srv_mode {
    SRV_HOLD,                 /* handler and sink, no response until the test says so */
    SRV_RESPOND,              /* responds at once */
    SRV_CONSUME_THEN_RESPOND, /* reads the whole request body, then responds */
    SRV_NO_HANDLER,           /* leaves the stream without handler */
    SRV_HANDLER_ONLY,         /* handler but no sink: the test sets it later */
};

/* Where a test makes a callback close its own connection (re-entrancy). */
enum close_at {
    CLOSE_NONE,
    CLOSE_IN_HEAD,
    CLOSE_IN_DATA,
    CLOSE_IN_STREAM_CLOSE,
    CLOSE_IN_ON_STREAM
};

struct h2t {
    struct event_base *base;
    enum close_at close_at;
    struct side cli, srv;
    int seq; /* orders close events */
    bool timed_out;
    int guard_ms; /* WAIT's limit; 0: GUARD_SEC */
    enum srv_mode mode;
    bool srv_consume; /* SRV_HOLD: whether the server's sinks are read */
    /* What the server responds with. */
    int resp_status;
    const char *resp_text;
    uint64_t resp_len;
    bool resp_body;      /* send a body pipe even when empty */
    bool resp_keep_open; /* leave the response body pipe open (the test writes it) */
    const char *resp_trailer_name, *resp_trailer_value;
    struct tstream cs[MAX_TS]; /* client streams */
    struct tstream ss[MAX_TS]; /* server streams */
    int ncs, nss;
    int on_stream_calls;
};

/* ---- helpers ------------------------------------------------------------------------ */

static uint32_t fnv(uint32_t h, const uint8_t *p, size_t n)
{
    if (h == 0)
        h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    return h;
}

static uint8_t pattern(uint64_t i)
{
    return (uint8_t)(i * 7u + (i >> 10));
}

static void guard_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    *(bool *)arg = true;
}

/* Runs the loop until cond holds or the guard fires; then asserts cond. */
#define WAIT(t, cond)                                                                              \
    do {                                                                                           \
        struct event *g_ = evtimer_new((t)->base, guard_cb, &(t)->timed_out);                      \
        int ms_ = (t)->guard_ms ? (t)->guard_ms : GUARD_SEC * 1000;                                \
        struct timeval tv_ = {ms_ / 1000, (ms_ % 1000) * 1000};                                    \
        (t)->timed_out = false;                                                                    \
        evtimer_add(g_, &tv_);                                                                     \
        while (!(cond) && !(t)->timed_out)                                                         \
            event_base_loop((t)->base, EVLOOP_ONCE);                                               \
        event_free(g_);                                                                            \
        CU_ASSERT(cond);                                                                           \
    } while (0)

/* Runs every callback that is ready, until nothing more happens without outside help. */
static void settle(struct h2t *t)
{
    for (int i = 0; i < 100000; i++) {
        event_base_loop(t->base, EVLOOP_NONBLOCK);
        if (event_base_get_num_events(t->base, EVENT_BASE_COUNT_ACTIVE) == 0)
            break;
    }
}

static void copy_str(char *dst, size_t cap, const char *s)
{
    snprintf(dst, cap, "%s", s ? s : "(null)");
}

/* ---- pipes of a test stream ---------------------------------------------------------- */

static void drain_sink(struct tstream *ts)
{
    uint8_t buf[16384];
    size_t n;
    while ((n = pk_pipe_read(&ts->sink, buf, sizeof(buf))) > 0) {
        size_t room = sizeof(ts->got_text) - 1;
        if (ts->got < room) {
            size_t k = PK_MIN(n, room - (size_t)ts->got);
            memcpy(ts->got_text + ts->got, buf, k);
        }
        ts->got_hash = fnv(ts->got_hash, buf, n);
        ts->got += n;
    }
}

static void respond(struct tstream *ts);

static void sink_readable(struct pk_pipe *p, void *consumer)
{
    struct tstream *ts = consumer;
    ts->readable_calls++;
    if (!ts->first_byte_seen && pk_pipe_len(p) > 0) {
        ts->first_byte_seen = true;
        ts->heads_at_first_byte = ts->heads;
    }
    if (p->aborted)
        ts->sink_aborted = true;
    if (ts->consume)
        drain_sink(ts);
    if (ts->t->close_at == CLOSE_IN_DATA && !ts->server_side && ts->s && ts->got > 0)
        pk_h2conn_close(pk_h2stream_conn(ts->s), "closed from the sink");
    if (pk_pipe_done(p) && !ts->sink_done) {
        ts->sink_done = true;
        /* Server streams that wait for the whole request respond now. */
        if (ts->server_side && ts->t->mode == SRV_CONSUME_THEN_RESPOND && ts->s)
            respond(ts);
    }
}

static void fill(struct tstream *ts)
{
    uint8_t chunk[16384];
    while (ts->sent < ts->to_send && !pk_pipe_full(&ts->body)) {
        size_t n = (size_t)PK_MIN((uint64_t)sizeof(chunk), ts->to_send - ts->sent);
        for (size_t i = 0; i < n; i++)
            chunk[i] = ts->text ? (uint8_t)ts->text[ts->sent + i] : pattern(ts->sent + i);
        ts->sent_hash = fnv(ts->sent_hash, chunk, n);
        ts->sent += n;
        pk_pipe_write(&ts->body, chunk, n);
    }
    if (ts->sent == ts->to_send && ts->close_body && !ts->body.eof) {
        if (ts->trailer_name) {
            pk_hdrs_add_str(&ts->body.trailers, ts->trailer_name, ts->trailer_value);
            ts->body.has_trailers = true;
        }
        pk_pipe_close(&ts->body);
    }
}

static void body_drained(struct pk_pipe *p, size_t n, void *producer)
{
    PK_UNUSED(p);
    PK_UNUSED(n);
    fill(producer);
}

static void init_sink(struct tstream *ts)
{
    pk_pipe_init(&ts->sink, PIPE_HWM);
    pk_pipe_set_consumer(&ts->sink, sink_readable, ts);
    ts->sink_init = true;
}

static void init_body(struct tstream *ts)
{
    pk_pipe_init(&ts->body, PIPE_HWM);
    pk_pipe_set_producer(&ts->body, body_drained, ts);
    ts->body_init = true;
}

/* ---- stream callbacks ----------------------------------------------------------------- */

static void ts_on_head(struct pk_h2stream *s, void *ud)
{
    struct tstream *ts = ud;
    struct pk_head *h = pk_h2stream_head(s);
    ts->heads++;
    ts->head_status = h->status;
    copy_str(ts->head_ctype, sizeof(ts->head_ctype), pk_hdrs_get(&h->hdrs, "content-type"));
    if (ts->t->close_at == CLOSE_IN_HEAD)
        pk_h2conn_close(pk_h2stream_conn(s), "closed from on_head");
}

static void ts_on_close(struct pk_h2stream *s, uint32_t error_code, void *ud)
{
    struct tstream *ts = ud;
    PK_UNUSED(s);
    ts->closes++;
    ts->close_code = error_code;
    ts->close_seq = ++ts->t->seq;
    /* The pipes are already detached from the stream. */
    ts->detached_at_close = (!ts->sink_init || ts->sink.on_drained == NULL) &&
                            (!ts->body_init || ts->body.on_readable == NULL);
    ts->s = NULL;
    if (ts->t->close_at == CLOSE_IN_STREAM_CLOSE && !ts->server_side)
        pk_h2conn_close(pk_h2stream_conn(s), "closed from on_close");
}

static const struct pk_h2stream_cbs ts_cbs = {.on_head = ts_on_head, .on_close = ts_on_close};

/* ---- connection callbacks ------------------------------------------------------------ */

static void respond(struct tstream *ts)
{
    struct h2t *t = ts->t;
    struct pk_head h;
    pk_head_init(&h);
    h.status = t->resp_status ? t->resp_status : 200;
    pk_hdrs_add_str(&h.hdrs, "content-type", "text/plain");
    bool with_body = t->resp_body || t->resp_text || t->resp_len || t->resp_trailer_name;
    if (with_body) {
        init_body(ts);
        ts->text = t->resp_text;
        ts->to_send = t->resp_text ? strlen(t->resp_text) : t->resp_len;
        ts->close_body = !t->resp_keep_open;
        ts->trailer_name = t->resp_trailer_name;
        ts->trailer_value = t->resp_trailer_value;
    }
    CU_ASSERT_EQUAL(pk_h2stream_respond(ts->s, &h, with_body ? &ts->body : NULL), 0);
    pk_head_free(&h);
    if (with_body)
        fill(ts);
}

static void srv_on_stream(struct pk_h2conn *c, struct pk_h2stream *s, void *ud)
{
    struct side *sd = ud;
    struct h2t *t = sd->t;
    t->on_stream_calls++;
    if (t->nss >= MAX_TS)
        return; /* refused */
    struct tstream *ts = &t->ss[t->nss++];
    struct pk_head *h = pk_h2stream_head(s);
    ts->t = t;
    ts->s = s;
    ts->server_side = true;
    copy_str(ts->method, sizeof(ts->method), h->method);
    copy_str(ts->scheme, sizeof(ts->scheme), h->scheme);
    copy_str(ts->authority, sizeof(ts->authority), h->authority);
    copy_str(ts->path, sizeof(ts->path), h->path);
    copy_str(ts->xtest, sizeof(ts->xtest), pk_hdrs_get(&h->hdrs, "x-test"));
    ts->remote_ended_at_stream = pk_h2stream_remote_ended(s);
    ts->head_too_large = pk_h2stream_head_too_large(s);
    if (t->close_at == CLOSE_IN_ON_STREAM)
        pk_h2conn_close(c, "closed from on_stream");
    if (t->mode == SRV_NO_HANDLER)
        return;
    pk_h2stream_set_handler(s, &ts_cbs, ts);
    init_sink(ts);
    if (t->mode == SRV_HANDLER_ONLY)
        return;
    ts->consume = t->mode != SRV_HOLD || t->srv_consume;
    pk_h2stream_set_sink(s, &ts->sink);
    if (t->mode == SRV_RESPOND)
        respond(ts);
}

static void on_ready(struct pk_h2conn *c, void *ud)
{
    struct side *sd = ud;
    PK_UNUSED(c);
    sd->ready++;
}

static void on_goaway(struct pk_h2conn *c, uint32_t error_code, void *ud)
{
    struct side *sd = ud;
    PK_UNUSED(c);
    sd->goaways++;
    sd->goaway_code = error_code;
}

static void on_stream_closed(struct pk_h2conn *c, void *ud)
{
    struct side *sd = ud;
    PK_UNUSED(c);
    sd->streams_closed++;
}

static void on_conn_close(struct pk_h2conn *c, const char *why, void *ud)
{
    struct side *sd = ud;
    sd->closes++;
    sd->close_seq = ++sd->t->seq;
    sd->nstreams_at_close = pk_h2conn_nstreams(c);
    copy_str(sd->why, sizeof(sd->why), why);
    sd->c = NULL;
}

static const struct pk_h2conn_cbs cli_cbs = {
    .on_ready = on_ready,
    .on_goaway = on_goaway,
    .on_stream_closed = on_stream_closed,
    .on_close = on_conn_close,
};

static const struct pk_h2conn_cbs srv_cbs = {
    .on_stream = srv_on_stream,
    .on_ready = on_ready,
    .on_goaway = on_goaway,
    .on_stream_closed = on_stream_closed,
    .on_close = on_conn_close,
};

/* ---- fixture ------------------------------------------------------------------------- */

static void test_settings(struct pk_h2_settings *s)
{
    pk_h2_settings_default(s);
    s->ping_interval_ms = 0;
    s->settings_timeout_ms = 0;
}

static struct h2t *h2t_new_with(const struct pk_h2_settings *cset,
                                const struct pk_h2_settings *sset, const struct pk_h2conn_cbs *scbs)
{
    struct h2t *t = pk_xcalloc(1, sizeof(*t));
    struct bufferevent *pair[2];
    t->base = event_base_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(t->base);
    CU_ASSERT_EQUAL_FATAL(bufferevent_pair_new(t->base, BEV_OPT_CLOSE_ON_FREE, pair), 0);
    t->cli.t = t->srv.t = t;
    t->cli.c = pk_h2conn_new(t->base, pair[0], false, cset, &cli_cbs, &t->cli, "test-client");
    t->srv.c = pk_h2conn_new(t->base, pair[1], true, sset, scbs, &t->srv, "test-server");
    CU_ASSERT_PTR_NOT_NULL_FATAL(t->cli.c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t->srv.c);
    return t;
}

static struct h2t *h2t_new(void)
{
    struct pk_h2_settings s;
    test_settings(&s);
    return h2t_new_with(&s, &s, &srv_cbs);
}

/* Both sides saw the other's SETTINGS. */
static void wait_ready(struct h2t *t)
{
    WAIT(t, t->cli.ready && t->srv.ready);
}

static void h2t_free(struct h2t *t)
{
    if (t->cli.c)
        pk_h2conn_close(t->cli.c, "test over");
    if (t->srv.c)
        pk_h2conn_close(t->srv.c, "test over");
    WAIT(t, !t->cli.c && !t->srv.c);
    for (int i = 0; i < MAX_TS; i++) {
        struct tstream *v[2] = {&t->cs[i], &t->ss[i]};
        for (int j = 0; j < 2; j++) {
            if (v[j]->sink_init)
                pk_pipe_free(&v[j]->sink);
            if (v[j]->body_init)
                pk_pipe_free(&v[j]->body);
        }
    }
    event_base_free(t->base);
    free(t);
}

/* A new client stream record; the caller may adjust it before client_request(). */
static struct tstream *new_cs(struct h2t *t)
{
    CU_ASSERT_FATAL(t->ncs < MAX_TS);
    struct tstream *ts = &t->cs[t->ncs++];
    ts->t = t;
    ts->consume = true;
    ts->close_body = true;
    return ts;
}

/* Opens a request on the client; with_body sends ts->to_send bytes (ts->text or a pattern)
 * through a body pipe. */
static struct pk_h2stream *client_request(struct tstream *ts, const char *path, bool with_body)
{
    struct h2t *t = ts->t;
    struct pk_head h;
    pk_head_init(&h);
    pk_head_set(&h.method, with_body ? "POST" : "GET", with_body ? 4 : 3);
    pk_head_set(&h.scheme, "https", 5);
    pk_head_set(&h.authority, "example.com", 11);
    pk_head_set(&h.path, path, strlen(path));
    pk_hdrs_add_str(&h.hdrs, "x-test", "abc");
    init_sink(ts);
    if (with_body) {
        init_body(ts);
        if (ts->text)
            ts->to_send = strlen(ts->text);
    }
    ts->s = pk_h2conn_request(t->cli.c, &h, with_body ? &ts->body : NULL, &ts_cbs, ts);
    pk_head_free(&h);
    if (ts->s) {
        pk_h2stream_set_sink(ts->s, &ts->sink);
        if (with_body)
            fill(ts);
    }
    return ts->s;
}

/* Opens a GET of "/" on the client with one extra field (name: value), no body. */
static struct pk_h2stream *client_request_field(struct tstream *ts, const char *name,
                                                const char *value)
{
    struct pk_head h;
    pk_head_init(&h);
    pk_head_set(&h.method, "GET", 3);
    pk_head_set(&h.scheme, "https", 5);
    pk_head_set(&h.authority, "a", 1);
    pk_head_set(&h.path, "/", 1);
    pk_hdrs_add_str(&h.hdrs, name, value);
    init_sink(ts);
    ts->s = pk_h2conn_request(ts->t->cli.c, &h, NULL, &ts_cbs, ts);
    pk_head_free(&h);
    if (ts->s)
        pk_h2stream_set_sink(ts->s, &ts->sink);
    return ts->s;
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_ready(void)
{
    struct h2t *t = h2t_new();
    CU_ASSERT_FALSE(pk_h2conn_is_ready(t->cli.c));
    CU_ASSERT_FALSE(pk_h2conn_can_open(t->cli.c));
    wait_ready(t);
    settle(t);
    CU_ASSERT_EQUAL(t->cli.ready, 1);
    CU_ASSERT_EQUAL(t->srv.ready, 1);
    CU_ASSERT_TRUE(pk_h2conn_is_ready(t->cli.c));
    CU_ASSERT_TRUE(pk_h2conn_is_ready(t->srv.c));
    CU_ASSERT_FALSE(pk_h2conn_is_draining(t->cli.c));
    CU_ASSERT_TRUE(pk_h2conn_can_open(t->cli.c));
    CU_ASSERT_EQUAL(pk_h2conn_nstreams(t->cli.c), 0);
    ASSERT_STR(pk_h2conn_name(t->cli.c), "test-client");
    CU_ASSERT_PTR_EQUAL(pk_h2conn_userdata(t->srv.c), &t->srv);
    CU_ASSERT_EQUAL(t->cli.closes + t->srv.closes, 0);
    h2t_free(t);
}

static void test_request_response(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_RESPOND;
    t->resp_text = "hello from the server";
    wait_ready(t);

    struct tstream *c = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/hello?x=1", false));
    CU_ASSERT(pk_h2stream_id(c->s) > 0);
    CU_ASSERT_PTR_EQUAL(pk_h2stream_conn(c->s), t->cli.c);
    CU_ASSERT_EQUAL(pk_h2conn_nstreams(t->cli.c), 1);
    WAIT(t, c->closes == 1);

    /* The server saw the request head. */
    CU_ASSERT_EQUAL_FATAL(t->nss, 1);
    struct tstream *s = &t->ss[0];
    ASSERT_STR(s->method, "GET");
    ASSERT_STR(s->scheme, "https");
    ASSERT_STR(s->authority, "example.com");
    ASSERT_STR(s->path, "/hello?x=1");
    ASSERT_STR(s->xtest, "abc");
    CU_ASSERT_TRUE(s->remote_ended_at_stream);
    /* A request without body ends the server's sink at once. */
    CU_ASSERT_TRUE(s->sink_done);
    CU_ASSERT_EQUAL(s->got, 0);

    /* The client got the head, then the body, then a clean close. */
    CU_ASSERT_EQUAL(c->heads, 1);
    CU_ASSERT_EQUAL(c->head_status, 200);
    ASSERT_STR(c->head_ctype, "text/plain");
    CU_ASSERT_EQUAL(c->heads_at_first_byte, 1);
    ASSERT_STR(c->got_text, "hello from the server");
    CU_ASSERT_TRUE(c->sink_done);
    CU_ASSERT_FALSE(c->sink_aborted);
    CU_ASSERT_EQUAL(c->close_code, 0);
    CU_ASSERT_TRUE(c->detached_at_close);
    CU_ASSERT_EQUAL(pk_h2conn_nstreams(t->cli.c), 0);
    CU_ASSERT_EQUAL(t->cli.streams_closed, 1);

    WAIT(t, s->closes == 1);
    CU_ASSERT_EQUAL(s->close_code, 0);
    CU_ASSERT_TRUE(s->detached_at_close);
    CU_ASSERT_EQUAL(t->srv.streams_closed, 1);
    CU_ASSERT_EQUAL(pk_h2conn_nstreams(t->srv.c), 0);
    /* Nothing closed the connections. */
    CU_ASSERT_PTR_NOT_NULL(t->cli.c);
    CU_ASSERT_PTR_NOT_NULL(t->srv.c);
    h2t_free(t);
}

static void test_request_no_body_response_no_body(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_RESPOND;
    t->resp_status = 204;
    wait_ready(t);
    struct tstream *c = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/", false));
    WAIT(t, c->closes == 1);
    CU_ASSERT_EQUAL(c->head_status, 204);
    CU_ASSERT_EQUAL(c->close_code, 0);
    CU_ASSERT_EQUAL(c->got, 0);
    CU_ASSERT_TRUE(c->sink_done);
    h2t_free(t);
}

static void test_big_request_body(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_CONSUME_THEN_RESPOND;
    t->resp_text = "stored";
    wait_ready(t);

    struct tstream *c = new_cs(t);
    c->to_send = BIG_BODY;
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/upload", true));
    WAIT(t, c->closes == 1);

    CU_ASSERT_EQUAL_FATAL(t->nss, 1);
    struct tstream *s = &t->ss[0];
    CU_ASSERT_FALSE(s->remote_ended_at_stream);
    ASSERT_STR(s->method, "POST");
    CU_ASSERT_EQUAL(c->sent, BIG_BODY);
    CU_ASSERT_EQUAL(s->got, BIG_BODY);
    CU_ASSERT_EQUAL(s->got_hash, c->sent_hash);
    CU_ASSERT_EQUAL(s->sink.total_in, BIG_BODY);
    CU_ASSERT_TRUE(s->sink_done);
    CU_ASSERT_EQUAL(c->body.total_out, BIG_BODY);
    CU_ASSERT_EQUAL(c->close_code, 0);
    ASSERT_STR(c->got_text, "stored");
    /* DATA payload counted on both ends, each way. */
    uint64_t cin, cout, sin, sout;
    pk_h2conn_data_bytes(t->cli.c, &cin, &cout);
    pk_h2conn_data_bytes(t->srv.c, &sin, &sout);
    CU_ASSERT_EQUAL(cout, BIG_BODY);
    CU_ASSERT_EQUAL(sin, BIG_BODY);
    CU_ASSERT_EQUAL(sout, strlen("stored"));
    CU_ASSERT_EQUAL(cin, strlen("stored"));
    h2t_free(t);
}

static void test_big_response_body(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_RESPOND;
    t->resp_len = BIG_BODY - 12345;
    wait_ready(t);

    struct tstream *c = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/download", false));
    WAIT(t, c->closes == 1);
    CU_ASSERT_EQUAL_FATAL(t->nss, 1);
    CU_ASSERT_EQUAL(c->got, BIG_BODY - 12345);
    CU_ASSERT_EQUAL(c->got_hash, t->ss[0].sent_hash);
    CU_ASSERT_EQUAL(c->close_code, 0);
    h2t_free(t);
}

/* Several streams at once, each with a body both ways. */
static void test_concurrent_streams(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_CONSUME_THEN_RESPOND;
    t->resp_len = 300000;
    wait_ready(t);
    for (int i = 0; i < 4; i++) {
        struct tstream *c = new_cs(t);
        c->to_send = 200000u + (uint64_t)i * 1000u;
        CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/multi", true));
    }
    CU_ASSERT_EQUAL(pk_h2conn_nstreams(t->cli.c), 4);
    WAIT(t, t->cs[0].closes && t->cs[1].closes && t->cs[2].closes && t->cs[3].closes);
    CU_ASSERT_EQUAL_FATAL(t->nss, 4);
    for (int i = 0; i < 4; i++) {
        struct tstream *c = &t->cs[i];
        CU_ASSERT_EQUAL(c->close_code, 0);
        CU_ASSERT_EQUAL(c->got, 300000);
        /* Match the server stream by the body it received. */
        bool matched = false;
        for (int j = 0; j < 4; j++) {
            if (t->ss[j].got == c->sent && t->ss[j].got_hash == c->sent_hash)
                matched = true;
        }
        CU_ASSERT_TRUE(matched);
    }
    h2t_free(t);
}

/* The receiver's sink is not read: the sender must stop after one stream window, with the
 * rest still in its source pipe; once the sink is read everything arrives. */
static void test_backpressure_request_body(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_HOLD;
    t->srv_consume = false; /* the server's consumer does not take bytes */
    t->resp_status = 204;
    wait_ready(t);

    struct tstream *c = new_cs(t);
    c->to_send = BIG_BODY;
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/slow-reader", true));
    WAIT(t, t->nss == 1 && pk_pipe_len(&t->ss[0].sink) >= STREAM_WIN / 2);
    settle(t);
    struct tstream *s = &t->ss[0];

    size_t held = pk_pipe_len(&s->sink);
    CU_ASSERT(held + s->got <= STREAM_WIN);
    CU_ASSERT(held > 0);
    CU_ASSERT(c->sent < BIG_BODY);
    CU_ASSERT(pk_pipe_len(&c->body) > 0); /* the sender's source still has data */
    CU_ASSERT_FALSE(c->body.eof);
    CU_ASSERT_EQUAL(c->closes, 0);
    CU_ASSERT_FALSE(s->sink_done);

    /* Read again: the credit comes back and the body completes. */
    t->mode = SRV_CONSUME_THEN_RESPOND;
    s->consume = true;
    drain_sink(s);
    WAIT(t, c->closes == 1);
    CU_ASSERT_EQUAL(c->close_code, 0);
    CU_ASSERT_EQUAL(c->head_status, 204);
    CU_ASSERT_EQUAL(s->got, BIG_BODY);
    CU_ASSERT_EQUAL(s->got_hash, c->sent_hash);
    h2t_free(t);
}

/* Same in the other direction, with a smaller stream window set by the client. */
static void test_backpressure_response_body(void)
{
    struct pk_h2_settings cset, sset;
    const uint32_t win = 128 * 1024;
    test_settings(&cset);
    test_settings(&sset);
    cset.stream_window = win;
    struct h2t *t = h2t_new_with(&cset, &sset, &srv_cbs);
    t->mode = SRV_RESPOND;
    t->resp_len = BIG_BODY;
    wait_ready(t);

    struct tstream *c = new_cs(t);
    c->consume = false;
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/big", false));
    WAIT(t, pk_pipe_len(&c->sink) >= win / 2 || c->closes);
    settle(t);

    CU_ASSERT_EQUAL_FATAL(t->nss, 1);
    struct tstream *s = &t->ss[0];
    CU_ASSERT(pk_pipe_len(&c->sink) <= win);
    CU_ASSERT(pk_pipe_len(&c->sink) > 0);
    CU_ASSERT(pk_pipe_len(&s->body) > 0);
    CU_ASSERT(s->sent < BIG_BODY);
    CU_ASSERT_EQUAL(c->closes, 0);

    c->consume = true;
    drain_sink(c);
    WAIT(t, c->closes == 1);
    CU_ASSERT_EQUAL(c->close_code, 0);
    CU_ASSERT_EQUAL(c->got, BIG_BODY);
    CU_ASSERT_EQUAL(c->got_hash, s->sent_hash);
    h2t_free(t);
}

/* Bytes a reset stream received but nobody read must be credited back to the connection
 * window, or later streams stall. */
static void test_reset_returns_connection_credit(void)
{
    struct pk_h2_settings cset, sset;
    test_settings(&cset);
    test_settings(&sset);
    sset.conn_window = STREAM_WIN; /* one unread stream could exhaust it */
    struct h2t *t = h2t_new_with(&cset, &sset, &srv_cbs);
    t->mode = SRV_HOLD;
    t->srv_consume = false;
    wait_ready(t);

    struct tstream *a = new_cs(t);
    a->to_send = 2 * STREAM_WIN;
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(a, "/unread", true));
    WAIT(t, t->nss == 1 && pk_pipe_len(&t->ss[0].sink) >= STREAM_WIN / 2);
    settle(t);
    CU_ASSERT(pk_pipe_len(&t->ss[0].sink) <= STREAM_WIN);
    pk_h2stream_reset(t->ss[0].s, NGHTTP2_CANCEL);
    WAIT(t, a->closes == 1);
    CU_ASSERT_EQUAL(a->close_code, NGHTTP2_CANCEL);

    /* A second stream with a body bigger than the connection window. */
    t->mode = SRV_CONSUME_THEN_RESPOND;
    struct tstream *b = new_cs(t);
    b->to_send = 3 * STREAM_WIN;
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(b, "/after", true));
    WAIT(t, b->closes == 1);
    CU_ASSERT_EQUAL(b->close_code, 0);
    CU_ASSERT_EQUAL_FATAL(t->nss, 2);
    CU_ASSERT_EQUAL(t->ss[1].got, 3 * STREAM_WIN);
    h2t_free(t);
}

static void test_trailers_both_directions(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_CONSUME_THEN_RESPOND;
    t->resp_text = "response body";
    t->resp_trailer_name = "x-resp-trailer";
    t->resp_trailer_value = "resp-value";
    wait_ready(t);

    struct tstream *c = new_cs(t);
    c->text = "request body";
    c->trailer_name = "x-req-trailer";
    c->trailer_value = "req-value";
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/grpc", true));
    WAIT(t, c->closes == 1);
    CU_ASSERT_EQUAL(c->close_code, 0);

    CU_ASSERT_EQUAL_FATAL(t->nss, 1);
    struct tstream *s = &t->ss[0];
    ASSERT_STR(s->got_text, "request body");
    CU_ASSERT_TRUE(s->sink.eof);
    CU_ASSERT_TRUE(s->sink.has_trailers);
    ASSERT_STR(pk_hdrs_get(&s->sink.trailers, "x-req-trailer"), "req-value");
    /* Trailers are not request head fields. */
    ASSERT_STR(s->xtest, "abc");

    ASSERT_STR(c->got_text, "response body");
    CU_ASSERT_TRUE(c->sink.eof);
    CU_ASSERT_TRUE(c->sink.has_trailers);
    const char *v = pk_hdrs_get(&c->sink.trailers, "x-resp-trailer");
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    ASSERT_STR(v, "resp-value");
    h2t_free(t);
}

/* Trailers after an empty body (the gRPC error shape). */
static void test_trailers_empty_body(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_RESPOND;
    t->resp_body = true;
    t->resp_trailer_name = "grpc-status";
    t->resp_trailer_value = "5";
    wait_ready(t);
    struct tstream *c = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/empty", false));
    WAIT(t, c->closes == 1);
    CU_ASSERT_EQUAL(c->close_code, 0);
    CU_ASSERT_EQUAL(c->got, 0);
    CU_ASSERT_TRUE(c->sink.has_trailers);
    const char *v = pk_hdrs_get(&c->sink.trailers, "grpc-status");
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    ASSERT_STR(v, "5");
    h2t_free(t);
}

/* A sink attached after the request ended (no body, or trailers only) is ended at once,
 * with the trailers. */
static void test_sink_set_after_end(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_HANDLER_ONLY;
    t->resp_status = 204;
    wait_ready(t);

    struct tstream *c1 = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c1, "/no-body", false));
    struct tstream *c2 = new_cs(t);
    c2->text = "";
    c2->trailer_name = "x-only-trailer";
    c2->trailer_value = "t";
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c2, "/trailers-only", true));
    WAIT(t, t->nss == 2 && pk_h2stream_remote_ended(t->ss[0].s) &&
                pk_h2stream_remote_ended(t->ss[1].s));
    settle(t);

    for (int i = 0; i < 2; i++) {
        struct tstream *s = &t->ss[i];
        bool trailers_only = strcmp(s->path, "/trailers-only") == 0;
        CU_ASSERT_FALSE(s->sink.eof);
        s->consume = true;
        pk_h2stream_set_sink(s->s, &s->sink);
        CU_ASSERT_TRUE(s->sink.eof);
        CU_ASSERT_TRUE(s->sink_done);
        CU_ASSERT_EQUAL(s->got, 0);
        CU_ASSERT_EQUAL(s->sink.has_trailers, trailers_only);
        if (trailers_only)
            ASSERT_STR(pk_hdrs_get(&s->sink.trailers, "x-only-trailer"), "t");
        respond(s);
    }
    WAIT(t, c1->closes == 1 && c2->closes == 1);
    CU_ASSERT_EQUAL(c1->close_code, 0);
    CU_ASSERT_EQUAL(c2->close_code, 0);
    CU_ASSERT_EQUAL(c2->head_status, 204);
    h2t_free(t);
}

/* Regression: pk_h2stream_set_sink() with another pipe leaves the stream registered as the
 * old pipe's producer (sink_drained with the stream as argument). stream_finish() only
 * detaches the current sink, so once the stream is freed a read from the old pipe calls
 * sink_drained() on freed memory. */
static void test_set_sink_replacement_detaches_old(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_HOLD;
    t->srv_consume = true;
    t->resp_body = true;
    t->resp_keep_open = true;
    wait_ready(t);
    struct tstream *c = new_cs(t);
    c->consume = false;
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/switch", false));
    WAIT(t, t->nss == 1);
    struct tstream *s = &t->ss[0];
    respond(s);
    pk_pipe_write(&s->body, "part1", 5);
    WAIT(t, pk_pipe_len(&c->sink) == 5);

    struct pk_pipe other;
    pk_pipe_init(&other, PIPE_HWM);
    pk_h2stream_set_sink(c->s, &other);
    CU_ASSERT_PTR_NULL(c->sink.on_drained); /* the old sink no longer points at the stream */
    CU_ASSERT_PTR_NOT_NULL(other.on_drained);

    pk_pipe_write(&s->body, "part2", 5);
    pk_pipe_close(&s->body);
    WAIT(t, c->closes == 1);
    CU_ASSERT_EQUAL(c->close_code, 0);
    CU_ASSERT_EQUAL(pk_pipe_len(&other), 5);
    CU_ASSERT_TRUE(other.eof);
    CU_ASSERT_PTR_NULL(other.on_drained);
    pk_pipe_free(&other);
    h2t_free(t);
}

static void test_reset_by_server(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_HOLD;
    t->srv_consume = true;
    wait_ready(t);

    struct tstream *c = new_cs(t);
    c->text = "partial";
    c->close_body = false; /* the body stays open */
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/reset", true));
    WAIT(t, t->nss == 1 && t->ss[0].got == 7);
    struct tstream *s = &t->ss[0];
    ASSERT_STR(s->got_text, "partial");

    pk_h2stream_reset(s->s, NGHTTP2_CANCEL);
    WAIT(t, c->closes == 1 && s->closes == 1);
    CU_ASSERT_EQUAL(c->close_code, NGHTTP2_CANCEL);
    CU_ASSERT_EQUAL(s->close_code, NGHTTP2_CANCEL);
    /* Neither sink ended cleanly. */
    CU_ASSERT_TRUE(c->sink.aborted);
    CU_ASSERT_FALSE(c->sink.eof);
    CU_ASSERT_TRUE(c->sink_aborted);
    CU_ASSERT_TRUE(s->sink.aborted);
    CU_ASSERT_TRUE(c->detached_at_close);
    CU_ASSERT_TRUE(s->detached_at_close);
    /* Writes into the detached source are harmless. */
    pk_pipe_write(&c->body, "more", 4);
    settle(t);
    /* The connection itself is fine. */
    CU_ASSERT_TRUE(pk_h2conn_can_open(t->cli.c));
    CU_ASSERT_PTR_NOT_NULL(t->srv.c);
    h2t_free(t);
}

static void test_reset_by_client(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_HOLD;
    t->srv_consume = true;
    wait_ready(t);

    struct tstream *c = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/cancel", false));
    WAIT(t, t->nss == 1);
    pk_h2stream_reset(c->s, NGHTTP2_INTERNAL_ERROR);
    WAIT(t, c->closes == 1 && t->ss[0].closes == 1);
    CU_ASSERT_EQUAL(t->ss[0].close_code, NGHTTP2_INTERNAL_ERROR);
    CU_ASSERT_EQUAL(c->close_code, NGHTTP2_INTERNAL_ERROR);
    CU_ASSERT_TRUE(c->sink.aborted);
    CU_ASSERT_EQUAL(pk_h2conn_nstreams(t->srv.c), 0);
    h2t_free(t);
}

/* Regression: a request reset twice before its HEADERS went out (the proxy gave up on it
 * from two places: the body limit, then its own error answer). nghttp2 cancels the
 * queued HEADERS on the first reset but sent the second as a frame, and the peer, which
 * never saw the stream, ended the whole connection with PROTOCOL_ERROR. */
static void test_double_reset_before_headers_keeps_the_connection(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_HOLD;
    t->srv_consume = true;
    wait_ready(t);
    struct tstream *c = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/twice", false));
    pk_h2stream_reset(c->s, NGHTTP2_CANCEL);
    pk_h2stream_reset(c->s, NGHTTP2_CANCEL);
    WAIT(t, c->closes == 1);
    settle(t);
    CU_ASSERT_EQUAL(t->nss, 0); /* the server never saw it */
    CU_ASSERT_EQUAL(t->srv.goaways, 0);
    CU_ASSERT_TRUE(pk_h2conn_can_open(t->cli.c));
    /* The next request on the same connection is served. */
    struct tstream *c2 = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c2, "/after", false));
    WAIT(t, t->nss == 1);
    h2t_free(t);
}

/* A source pipe aborted by its producer resets the stream instead of ending it cleanly. */
static void test_aborted_body_resets(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_HOLD;
    t->srv_consume = true;
    wait_ready(t);
    struct tstream *c = new_cs(t);
    c->text = "some";
    c->close_body = false;
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/abort", true));
    WAIT(t, t->nss == 1 && t->ss[0].got == 4);
    pk_pipe_abort(&c->body);
    WAIT(t, c->closes == 1 && t->ss[0].closes == 1);
    CU_ASSERT_NOT_EQUAL(t->ss[0].close_code, 0);
    CU_ASSERT_TRUE(t->ss[0].sink.aborted);
    CU_ASSERT_FALSE(t->ss[0].sink.eof);
    h2t_free(t);
}

static void test_drain_client(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_HOLD;
    t->srv_consume = true;
    t->resp_text = "goodbye";
    wait_ready(t);

    struct tstream *c = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/last", false));
    WAIT(t, t->nss == 1);

    pk_h2conn_drain(t->cli.c, 0);
    CU_ASSERT_TRUE(pk_h2conn_is_draining(t->cli.c));
    CU_ASSERT_FALSE(pk_h2conn_can_open(t->cli.c));
    WAIT(t, t->srv.goaways == 1);
    settle(t);
    CU_ASSERT_EQUAL(t->srv.goaway_code, NGHTTP2_NO_ERROR);
    CU_ASSERT_TRUE(pk_h2conn_is_draining(t->srv.c));
    /* The open stream keeps both connections up. */
    CU_ASSERT_PTR_NOT_NULL(t->cli.c);
    CU_ASSERT_PTR_NOT_NULL(t->srv.c);
    CU_ASSERT_EQUAL(c->closes, 0);

    /* The stream finishes; then both connections close by themselves. */
    respond(&t->ss[0]);
    WAIT(t, !t->cli.c && !t->srv.c);
    CU_ASSERT_EQUAL(c->closes, 1);
    CU_ASSERT_EQUAL(c->close_code, 0);
    ASSERT_STR(c->got_text, "goodbye");
    CU_ASSERT_TRUE(c->sink_done);
    CU_ASSERT_EQUAL(t->ss[0].close_code, 0);
    CU_ASSERT(c->close_seq < t->cli.close_seq);
    CU_ASSERT(t->ss[0].close_seq < t->srv.close_seq);
    CU_ASSERT_EQUAL(t->cli.closes, 1);
    CU_ASSERT_EQUAL(t->srv.closes, 1);
    ASSERT_STR(t->cli.why, "drained");
    h2t_free(t);
}

/* Drain with nothing open closes at once (after the GOAWAY is written). */
static void test_drain_idle(void)
{
    struct h2t *t = h2t_new();
    wait_ready(t);
    pk_h2conn_drain(t->cli.c, 0);
    WAIT(t, !t->cli.c && !t->srv.c);
    CU_ASSERT_EQUAL(t->srv.goaways, 1);
    CU_ASSERT_EQUAL(t->cli.closes, 1);
    CU_ASSERT_EQUAL(t->srv.closes, 1);
    h2t_free(t);
}

/* Server-role drain: GOAWAY(last accepted id) lets that stream finish too. */
static void test_drain_server(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_HOLD;
    t->srv_consume = true;
    t->resp_text = "done";
    wait_ready(t);
    struct tstream *c = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/s", false));
    WAIT(t, t->nss == 1);
    CU_ASSERT_EQUAL(pk_h2conn_last_stream_id(t->srv.c), pk_h2stream_id(c->s));
    pk_h2conn_drain(t->srv.c, pk_h2conn_last_stream_id(t->srv.c));
    WAIT(t, t->cli.goaways == 1);
    CU_ASSERT_FALSE(pk_h2conn_can_open(t->cli.c));
    CU_ASSERT_EQUAL(c->closes, 0);
    respond(&t->ss[0]);
    WAIT(t, !t->cli.c && !t->srv.c);
    CU_ASSERT_EQUAL(c->close_code, 0);
    ASSERT_STR(c->got_text, "done");
    h2t_free(t);
}

/* Sidecar drain (RFC 9113 6.8): GOAWAY(2^31-1), PING, then GOAWAY(last accepted); the
 * open stream completes and both ends close. */
static void test_drain_two_step(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_HOLD;
    t->srv_consume = true;
    t->resp_text = "finished";
    wait_ready(t);
    struct tstream *c = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/long", false));
    WAIT(t, t->nss == 1);

    pk_h2conn_drain_two_step(t->srv.c);
    CU_ASSERT_TRUE(pk_h2conn_is_draining(t->srv.c));
    WAIT(t, t->cli.goaways == 2);
    settle(t);
    CU_ASSERT_EQUAL(t->cli.goaway_code, NGHTTP2_NO_ERROR);
    CU_ASSERT_FALSE(pk_h2conn_can_open(t->cli.c));
    CU_ASSERT_EQUAL(c->closes, 0);
    CU_ASSERT_PTR_NOT_NULL(t->cli.c);
    CU_ASSERT_PTR_NOT_NULL(t->srv.c);

    respond(&t->ss[0]);
    WAIT(t, !t->cli.c && !t->srv.c);
    CU_ASSERT_EQUAL(c->close_code, 0);
    ASSERT_STR(c->got_text, "finished");
    h2t_free(t);
}

/* A request the server's nghttp2 rejects (no :path, no :scheme) never reaches on_stream;
 * the stream object made for it is freed (ASan) and the client sees a reset. */
static void test_malformed_request_rejected(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_RESPOND;
    wait_ready(t);
    struct tstream *c = new_cs(t);
    struct pk_head h;
    pk_head_init(&h);
    pk_head_set(&h.method, "GET", 3);
    pk_head_set(&h.authority, "a", 1);
    init_sink(c);
    c->s = pk_h2conn_request(t->cli.c, &h, NULL, &ts_cbs, c);
    pk_head_free(&h);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c->s);
    pk_h2stream_set_sink(c->s, &c->sink);
    WAIT(t, c->closes == 1);
    CU_ASSERT_EQUAL(c->close_code, NGHTTP2_PROTOCOL_ERROR);
    CU_ASSERT_EQUAL(t->on_stream_calls, 0);
    settle(t);
    CU_ASSERT_PTR_NOT_NULL(t->srv.c);
    CU_ASSERT_EQUAL(pk_h2conn_nstreams(t->srv.c), 0);
    h2t_free(t);
}

static void test_close(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_HOLD;
    t->srv_consume = true;
    wait_ready(t);

    struct tstream *c1 = new_cs(t);
    struct tstream *c2 = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c1, "/one", false));
    c2->text = "open body";
    c2->close_body = false;
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c2, "/two", true));
    WAIT(t, t->nss == 2);

    pk_h2conn_close(t->cli.c, "test close");
    pk_h2conn_close(t->cli.c, "second close"); /* idempotent */
    /* Deferred: nothing has happened yet. */
    CU_ASSERT_EQUAL(t->cli.closes, 0);
    CU_ASSERT_EQUAL(c1->closes, 0);
    CU_ASSERT_FALSE(pk_h2conn_is_ready(t->cli.c));
    CU_ASSERT_PTR_NULL(pk_h2conn_request(t->cli.c, &(struct pk_head){0}, NULL, &ts_cbs, NULL));
    WAIT(t, t->cli.closes == 1);
    settle(t);
    CU_ASSERT_EQUAL(t->cli.closes, 1);
    ASSERT_STR(t->cli.why, "test close");
    CU_ASSERT_EQUAL(t->cli.nstreams_at_close, 0);
    CU_ASSERT_EQUAL(c1->closes, 1);
    CU_ASSERT_EQUAL(c2->closes, 1);
    CU_ASSERT_EQUAL(c1->close_code, PK_H2_CONN_LOST);
    CU_ASSERT_EQUAL(c2->close_code, PK_H2_CONN_LOST);
    CU_ASSERT(c1->close_seq < t->cli.close_seq);
    CU_ASSERT(c2->close_seq < t->cli.close_seq);
    CU_ASSERT_TRUE(c1->sink.aborted);
    CU_ASSERT_TRUE(c2->detached_at_close);

    /* The server end (a pair does not report the close): its streams are lost too. */
    pk_h2conn_close(t->srv.c, "server close");
    WAIT(t, t->srv.closes == 1);
    CU_ASSERT_EQUAL(t->ss[0].close_code, PK_H2_CONN_LOST);
    CU_ASSERT_EQUAL(t->ss[1].close_code, PK_H2_CONN_LOST);
    CU_ASSERT_TRUE(t->ss[1].sink.aborted);
    CU_ASSERT(t->ss[1].close_seq < t->srv.close_seq);
    h2t_free(t);
}

/* Every pk_h2 function may be called from callbacks: a connection closed from inside its
 * own stream callbacks (some of them run inside nghttp2) tears down cleanly (ASan). */
static void test_close_from_callbacks(void)
{
    static const struct {
        enum close_at at;
        const char *why;
        uint32_t code; /* the client stream's close code */
    } cases[] = {
        {CLOSE_IN_HEAD, "closed from on_head", PK_H2_CONN_LOST},
        {CLOSE_IN_DATA, "closed from the sink", PK_H2_CONN_LOST},
        {CLOSE_IN_STREAM_CLOSE, "closed from on_close", 0},
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(cases); i++) {
        struct h2t *t = h2t_new();
        t->mode = SRV_RESPOND;
        t->resp_len = 256 * 1024;
        wait_ready(t);
        t->close_at = cases[i].at;
        struct tstream *c = new_cs(t);
        CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/reentrant", false));
        WAIT(t, t->cli.closes == 1);
        settle(t);
        CU_ASSERT_EQUAL(c->closes, 1);
        CU_ASSERT_EQUAL(c->close_code, cases[i].code);
        CU_ASSERT_EQUAL(c->heads, 1);
        ASSERT_STR(t->cli.why, cases[i].why);
        CU_ASSERT(c->close_seq < t->cli.close_seq);
        h2t_free(t);
    }

    /* The server closes from on_stream. */
    struct h2t *t = h2t_new();
    t->mode = SRV_RESPOND;
    wait_ready(t);
    t->close_at = CLOSE_IN_ON_STREAM;
    struct tstream *c = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/x", false));
    WAIT(t, t->srv.closes == 1);
    settle(t);
    ASSERT_STR(t->srv.why, "closed from on_stream");
    CU_ASSERT_EQUAL(t->nss, 1);
    CU_ASSERT_EQUAL(t->ss[0].closes, 1);
    CU_ASSERT_EQUAL(t->ss[0].close_code, PK_H2_CONN_LOST);
    h2t_free(t);
}

/* Closing either end in the middle of bodies flowing both ways. */
static void test_close_mid_transfer(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_HOLD;
    t->srv_consume = false; /* nobody reads: the bodies stop half-way */
    t->resp_len = BIG_BODY;
    wait_ready(t);
    for (int i = 0; i < 3; i++) {
        struct tstream *c = new_cs(t);
        c->to_send = BIG_BODY;
        c->consume = false;
        CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/both-ways", true));
    }
    WAIT(t, t->nss == 3);
    for (int i = 0; i < 3; i++)
        respond(&t->ss[i]);
    settle(t);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT(pk_pipe_len(&t->ss[i].sink) > 0);
        CU_ASSERT(pk_pipe_len(&t->cs[i].sink) > 0);
        CU_ASSERT_EQUAL(t->cs[i].closes, 0);
    }
    pk_h2conn_close(t->srv.c, "server gone");
    WAIT(t, t->srv.closes == 1);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(t->ss[i].closes, 1);
        CU_ASSERT_EQUAL(t->ss[i].close_code, PK_H2_CONN_LOST);
        CU_ASSERT_TRUE(t->ss[i].sink.aborted);
        CU_ASSERT_TRUE(t->ss[i].detached_at_close);
    }
    /* The producers keep writing into detached pipes: harmless. */
    for (int i = 0; i < 3; i++)
        pk_pipe_write(&t->ss[i].body, "x", 1);
    pk_h2conn_close(t->cli.c, "client gone");
    WAIT(t, t->cli.closes == 1);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(t->cs[i].closes, 1);
        CU_ASSERT_EQUAL(t->cs[i].close_code, PK_H2_CONN_LOST);
        CU_ASSERT_TRUE(t->cs[i].sink.aborted);
    }
    h2t_free(t);
}

static void test_refused_without_handler(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_NO_HANDLER;
    wait_ready(t);
    struct tstream *c = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/nobody", false));
    WAIT(t, c->closes == 1);
    CU_ASSERT_EQUAL(c->close_code, NGHTTP2_REFUSED_STREAM);
    CU_ASSERT_EQUAL(c->heads, 0);
    CU_ASSERT_TRUE(c->sink.aborted);
    CU_ASSERT_EQUAL(t->on_stream_calls, 1);
    settle(t);
    CU_ASSERT_EQUAL(pk_h2conn_nstreams(t->srv.c), 0);
    /* Still usable. */
    CU_ASSERT_TRUE(pk_h2conn_can_open(t->cli.c));
    t->mode = SRV_RESPOND;
    struct tstream *c2 = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c2, "/ok", false));
    WAIT(t, c2->closes == 1);
    CU_ASSERT_EQUAL(c2->close_code, 0);
    h2t_free(t);
}

static void test_refused_without_on_stream(void)
{
    static const struct pk_h2conn_cbs bare_cbs = {.on_ready = on_ready, .on_close = on_conn_close};
    struct pk_h2_settings s;
    test_settings(&s);
    struct h2t *t = h2t_new_with(&s, &s, &bare_cbs);
    wait_ready(t);
    struct tstream *c = new_cs(t);
    c->text = "body";
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c, "/x", true));
    WAIT(t, c->closes == 1);
    CU_ASSERT_EQUAL(c->close_code, NGHTTP2_REFUSED_STREAM);
    h2t_free(t);
}

static void test_max_concurrent_streams(void)
{
    struct pk_h2_settings cset, sset;
    test_settings(&cset);
    test_settings(&sset);
    sset.max_concurrent_streams = 2;
    struct h2t *t = h2t_new_with(&cset, &sset, &srv_cbs);
    t->mode = SRV_HOLD;
    t->srv_consume = true;
    t->resp_text = "ok";
    wait_ready(t);

    CU_ASSERT_TRUE(pk_h2conn_can_open(t->cli.c));
    struct tstream *c1 = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c1, "/1", false));
    CU_ASSERT_TRUE(pk_h2conn_can_open(t->cli.c));
    struct tstream *c2 = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c2, "/2", false));
    CU_ASSERT_FALSE(pk_h2conn_can_open(t->cli.c));

    /* A third opened anyway waits for a slot instead of being refused. */
    struct tstream *c3 = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c3, "/3", false));
    WAIT(t, t->nss == 2);
    settle(t);
    CU_ASSERT_EQUAL(t->nss, 2);
    CU_ASSERT_EQUAL(t->on_stream_calls, 2);
    CU_ASSERT_EQUAL(c3->closes, 0);

    respond(&t->ss[0]);
    WAIT(t, c1->closes == 1 && t->nss == 3);
    CU_ASSERT_EQUAL(c1->close_code, 0);
    ASSERT_STR(t->ss[2].path, "/3");
    CU_ASSERT_FALSE(pk_h2conn_can_open(t->cli.c)); /* c2 and c3 open */
    respond(&t->ss[1]);
    respond(&t->ss[2]);
    WAIT(t, c2->closes == 1 && c3->closes == 1);
    CU_ASSERT_EQUAL(c3->close_code, 0);
    ASSERT_STR(c3->got_text, "ok");
    CU_ASSERT_TRUE(pk_h2conn_can_open(t->cli.c));
    h2t_free(t);
}

static void test_header_block_limit(void)
{
    struct pk_h2_settings cset, sset;
    test_settings(&cset);
    test_settings(&sset);
    sset.max_header_bytes = 256;
    struct h2t *t = h2t_new_with(&cset, &sset, &srv_cbs);
    t->mode = SRV_RESPOND;
    wait_ready(t);

    struct tstream *c = new_cs(t);
    char big[400];
    memset(big, 'v', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request_field(c, "x-big", big));
    /* The request reaches its owner marked too large (so it answers 431 and never routes
     * the incomplete head); the connection and its HPACK state stay good. */
    WAIT(t, c->closes == 1);
    CU_ASSERT_EQUAL(t->on_stream_calls, 1);
    CU_ASSERT_TRUE(t->ss[0].head_too_large);
    settle(t);
    CU_ASSERT_PTR_NOT_NULL(t->srv.c);
    CU_ASSERT_EQUAL(pk_h2conn_nstreams(t->srv.c), 0);
    h2t_free(t);
}

/* h2.c "session memory": a header block bigger than the frame buffer made with the session
 * takes blocks outside the session's arena (mappings of their own, malloc blocks grown past
 * the mapping size, on both ends); both sessions keep working. */
static void test_session_memory_past_the_arena(void)
{
    struct h2t *t = h2t_new();
    t->mode = SRV_RESPOND;
    t->resp_text = "ok";
    wait_ready(t);

    struct tstream *c = new_cs(t);
    static char big[40000];
    memset(big, 'v', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request_field(c, "x-big", big));
    WAIT(t, c->closes == 1);
    CU_ASSERT_EQUAL(c->close_code, 0);
    CU_ASSERT_EQUAL(c->head_status, 200);
    CU_ASSERT_EQUAL_FATAL(t->nss, 1);
    CU_ASSERT_FALSE(t->ss[0].head_too_large);

    struct tstream *c2 = new_cs(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(client_request(c2, "/again", false));
    WAIT(t, c2->closes == 1);
    CU_ASSERT_EQUAL(c2->close_code, 0);
    ASSERT_STR(c2->got_text, "ok");
    h2t_free(t);
}

static void test_server_role_cannot_request(void)
{
    struct h2t *t = h2t_new();
    struct pk_head h;
    pk_head_init(&h);
    pk_head_set(&h.method, "GET", 3);
    pk_head_set(&h.path, "/", 1);
    CU_ASSERT_PTR_NULL(pk_h2conn_request(t->srv.c, &h, NULL, &ts_cbs, NULL));
    CU_ASSERT_EQUAL(pk_h2conn_nstreams(t->srv.c), 0);
    pk_head_free(&h);
    h2t_free(t);
}

/* ---- a raw peer -------------------------------------------------------------------------- */

/* One pk_h2conn against a bare bufferevent that the test drives. */
struct rawt {
    struct h2t t; /* only base, cli/srv sides and timed_out are used */
    struct bufferevent *peer;
};

static void test_settings_timeout(void)
{
    struct rawt r;
    memset(&r, 0, sizeof(r));
    struct bufferevent *pair[2];
    struct pk_h2_settings s;
    test_settings(&s);
    s.settings_timeout_ms = 20;
    r.t.base = event_base_new();
    CU_ASSERT_EQUAL_FATAL(bufferevent_pair_new(r.t.base, BEV_OPT_CLOSE_ON_FREE, pair), 0);
    r.peer = pair[1]; /* never answers */
    r.t.cli.t = &r.t;
    r.t.cli.c = pk_h2conn_new(r.t.base, pair[0], false, &s, &cli_cbs, &r.t.cli, "lonely");
    CU_ASSERT_PTR_NOT_NULL_FATAL(r.t.cli.c);
    WAIT(&r.t, r.t.cli.closes == 1);
    ASSERT_STR(r.t.cli.why, "no SETTINGS from peer");
    ASSERT_STR(pk_h2_close_class(r.t.cli.why), "ping_timeout");
    CU_ASSERT_EQUAL(r.t.cli.ready, 0);
    if (r.t.cli.c)
        pk_h2conn_close(r.t.cli.c, "test over");
    WAIT(&r.t, !r.t.cli.c);
    bufferevent_free(r.peer);
    event_base_free(r.t.base);
}

static void test_garbage_input_closes(void)
{
    struct rawt r;
    memset(&r, 0, sizeof(r));
    struct bufferevent *pair[2];
    struct pk_h2_settings s;
    test_settings(&s);
    r.t.base = event_base_new();
    CU_ASSERT_EQUAL_FATAL(bufferevent_pair_new(r.t.base, BEV_OPT_CLOSE_ON_FREE, pair), 0);
    r.peer = pair[0];
    r.t.srv.t = &r.t;
    r.t.srv.c = pk_h2conn_new(r.t.base, pair[1], true, &s, &srv_cbs, &r.t.srv, "victim");
    CU_ASSERT_PTR_NOT_NULL_FATAL(r.t.srv.c);
    bufferevent_enable(r.peer, EV_READ | EV_WRITE);
    const char junk[] = "GET / HTTP/1.1\r\nHost: not-http2\r\n\r\n";
    bufferevent_write(r.peer, junk, sizeof(junk) - 1);
    WAIT(&r.t, r.t.srv.closes == 1);
    ASSERT_STR(r.t.srv.why, "http2 protocol error");
    ASSERT_STR(pk_h2_close_class(r.t.srv.why), "error");
    CU_ASSERT_EQUAL(r.t.srv.ready, 0);
    bufferevent_free(r.peer);
    event_base_free(r.t.base);
}

/* A peer that sent its preface and SETTINGS, then never answers a PING (it does not even
 * read). The conn must close with "heartbeat timeout" once ping_timeout_ms passes after a
 * PING. Returns the reason the server end closed, or "" if it did not within 1 s. */
static void heartbeat_case(uint64_t interval_ms, uint64_t timeout_ms, char *why, size_t whylen)
{
    struct rawt r;
    memset(&r, 0, sizeof(r));
    struct bufferevent *pair[2];
    struct pk_h2_settings s;
    test_settings(&s);
    s.ping_interval_ms = interval_ms;
    s.ping_timeout_ms = timeout_ms;
    r.t.base = event_base_new();
    r.t.guard_ms = 1000;
    CU_ASSERT_EQUAL_FATAL(bufferevent_pair_new(r.t.base, BEV_OPT_CLOSE_ON_FREE, pair), 0);
    r.peer = pair[0];
    r.t.srv.t = &r.t;
    r.t.srv.c = pk_h2conn_new(r.t.base, pair[1], true, &s, &srv_cbs, &r.t.srv, "heartbeat");
    CU_ASSERT_PTR_NOT_NULL_FATAL(r.t.srv.c);
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                                  "\x00\x00\x00\x04\x00\x00\x00\x00\x00"; /* empty SETTINGS */
    bufferevent_write(r.peer, preface, sizeof(preface) - 1);
    WAIT(&r.t, r.t.srv.ready == 1);
    WAIT(&r.t, r.t.srv.closes == 1);
    snprintf(why, whylen, "%s", r.t.srv.closes ? r.t.srv.why : "");
    if (r.t.srv.c) {
        r.t.guard_ms = 0;
        pk_h2conn_close(r.t.srv.c, "test over");
        WAIT(&r.t, !r.t.srv.c);
    }
    bufferevent_free(r.peer);
    event_base_free(r.t.base);
}

static void test_heartbeat_timeout_short_interval(void)
{
    char why[64];
    /* Interval longer than the timeout: the deadline fires between two PINGs. */
    heartbeat_case(40, 10, why, sizeof(why));
    ASSERT_STR(why, "heartbeat timeout");
    ASSERT_STR(pk_h2_close_class(why), "ping_timeout");
    /* Reasons the owner gives pk_h2conn_close are its own to classify. */
    CU_ASSERT_PTR_NULL(pk_h2_close_class("shutting down"));
    CU_ASSERT_PTR_NULL(pk_h2_close_class(NULL));
}

/* Regression: with ping_interval_ms < ping_timeout_ms every PING re-arms the pending
 * deadline (ping_cb calls event_add on deadline_ev again and moves ping_sent_ms), so the
 * deadline never fires and a dead peer is never detected. With equal values (the defaults,
 * 10 s and 10 s) it fires only when both timers happen to fall due in the same round. */
static void test_heartbeat_timeout_interval_below_timeout(void)
{
    char why[64];
    heartbeat_case(10, 40, why, sizeof(why));
    ASSERT_STR(why, "heartbeat timeout");
}

void pk_test_register_h2(void)
{
    CU_pSuite s = CU_add_suite("h2", NULL, NULL);

    CU_add_test(s, "ready", test_ready);
    CU_add_test(s, "session_memory_past_the_arena", test_session_memory_past_the_arena);
    CU_add_test(s, "request_response", test_request_response);
    CU_add_test(s, "request_no_body_response_no_body", test_request_no_body_response_no_body);
    CU_add_test(s, "big_request_body", test_big_request_body);
    CU_add_test(s, "big_response_body", test_big_response_body);
    CU_add_test(s, "concurrent_streams", test_concurrent_streams);
    CU_add_test(s, "backpressure_request_body", test_backpressure_request_body);
    CU_add_test(s, "backpressure_response_body", test_backpressure_response_body);
    CU_add_test(s, "reset_returns_connection_credit", test_reset_returns_connection_credit);
    CU_add_test(s, "trailers_both_directions", test_trailers_both_directions);
    CU_add_test(s, "trailers_empty_body", test_trailers_empty_body);
    CU_add_test(s, "sink_set_after_end", test_sink_set_after_end);
    CU_add_test(s, "set_sink_replacement_detaches_old", test_set_sink_replacement_detaches_old);
    CU_add_test(s, "reset_by_server", test_reset_by_server);
    CU_add_test(s, "reset_by_client", test_reset_by_client);
    CU_add_test(s, "aborted_body_resets", test_aborted_body_resets);
    CU_add_test(s, "double_reset_before_headers_keeps_the_connection",
                test_double_reset_before_headers_keeps_the_connection);
    CU_add_test(s, "drain_client", test_drain_client);
    CU_add_test(s, "drain_idle", test_drain_idle);
    CU_add_test(s, "drain_server", test_drain_server);
    CU_add_test(s, "drain_two_step", test_drain_two_step);
    CU_add_test(s, "malformed_request_rejected", test_malformed_request_rejected);
    CU_add_test(s, "close", test_close);
    CU_add_test(s, "close_from_callbacks", test_close_from_callbacks);
    CU_add_test(s, "close_mid_transfer", test_close_mid_transfer);
    CU_add_test(s, "refused_without_handler", test_refused_without_handler);
    CU_add_test(s, "refused_without_on_stream", test_refused_without_on_stream);
    CU_add_test(s, "max_concurrent_streams", test_max_concurrent_streams);
    CU_add_test(s, "header_block_limit", test_header_block_limit);
    CU_add_test(s, "server_role_cannot_request", test_server_role_cannot_request);
    CU_add_test(s, "settings_timeout", test_settings_timeout);
    CU_add_test(s, "garbage_input_closes", test_garbage_input_closes);
    CU_add_test(s, "heartbeat_timeout_short_interval", test_heartbeat_timeout_short_interval);
    CU_add_test(s, "heartbeat_timeout_interval_below_timeout",
                test_heartbeat_timeout_interval_below_timeout);
}
