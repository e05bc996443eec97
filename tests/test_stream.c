/* Unit tests for lib/stream: header lists, heads and pipes (accounting, high-water mark,
 * end and abort, producer and consumer notifications). */
#include "base/base.h"
#include "stream/head.h"
#include "stream/pipe.h"

#include <CUnit/CUnit.h>
#include <event2/buffer.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pk_test_register_stream(void);

/* String equality that fails (instead of crashing) when actual is NULL. */
#define ASSERT_STR(actual, expected)                                                               \
    do {                                                                                           \
        const char *a_ = (actual), *e_ = (expected);                                               \
        CU_assertImplementation(a_ != NULL && strcmp(a_, e_) == 0, __LINE__,                       \
                                "ASSERT_STR(" #actual ", " #expected ")", __FILE__, "", CU_FALSE); \
    } while (0)

/* ---- pk_hdrs ------------------------------------------------------------------------ */

static void test_hdrs_add_lowercases(void)
{
    struct pk_hdrs h;
    pk_hdrs_init(&h);
    CU_ASSERT_EQUAL(h.n, 0);
    CU_ASSERT_EQUAL(h.bytes, 0);

    pk_hdrs_add(&h, "Content-Type", 12, "Text/HTML", 9);
    pk_hdrs_add_str(&h, "X-MiXeD-09", "Value");
    /* Only nlen/vlen bytes are copied. */
    pk_hdrs_add(&h, "Accept-Encodingxxx", 15, "gzip;junk", 4);

    CU_ASSERT_EQUAL_FATAL(h.n, 3);
    ASSERT_STR(h.v[0].name, "content-type");
    ASSERT_STR(h.v[0].value, "Text/HTML"); /* values keep their case */
    CU_ASSERT_EQUAL(h.v[0].nlen, 12);
    CU_ASSERT_EQUAL(h.v[0].vlen, 9);
    ASSERT_STR(h.v[1].name, "x-mixed-09");
    ASSERT_STR(h.v[1].value, "Value");
    ASSERT_STR(h.v[2].name, "accept-encoding");
    ASSERT_STR(h.v[2].value, "gzip");
    CU_ASSERT_EQUAL(h.bytes, 12 + 9 + 10 + 5 + 15 + 4);

    /* Eight bytes at a time and the tail: only A-Z change, not their neighbours ('@',
     * '[', '`', '{') nor bytes with the high bit set. */
    pk_hdrs_add_str(&h, "ABCDEFGHIJKLMNOPQRSTUVWXYZ@[`{\xc1\xdA-z", "v");
    ASSERT_STR(h.v[3].name, "abcdefghijklmnopqrstuvwxyz@[`{\xc1\xdA-z");

    /* Empty values are fine. */
    pk_hdrs_add_str(&h, "x-empty", "");
    ASSERT_STR(pk_hdrs_get(&h, "x-empty"), "");
    pk_hdrs_free(&h);
    CU_ASSERT_EQUAL(h.n, 0);
    CU_ASSERT_PTR_NULL(h.v);
    CU_ASSERT_EQUAL(h.bytes, 0);
}

static void test_hdrs_grow(void)
{
    struct pk_hdrs h;
    pk_hdrs_init(&h);
    char name[32], value[32];
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof(name), "X-H%d", i);
        snprintf(value, sizeof(value), "v%d", i);
        pk_hdrs_add_str(&h, name, value);
    }
    CU_ASSERT_EQUAL(h.n, 100);
    ASSERT_STR(pk_hdrs_get(&h, "x-h0"), "v0");
    ASSERT_STR(pk_hdrs_get(&h, "x-h57"), "v57");
    ASSERT_STR(pk_hdrs_get(&h, "x-h99"), "v99");
    pk_hdrs_free(&h);
}

static void test_hdrs_get(void)
{
    struct pk_hdrs h;
    pk_hdrs_init(&h);
    CU_ASSERT_PTR_NULL(pk_hdrs_get(&h, "a"));
    pk_hdrs_add_str(&h, "Set-Cookie", "a=1");
    pk_hdrs_add_str(&h, "set-cookie", "b=2");
    pk_hdrs_add_str(&h, "Host", "example.com");
    /* First value wins. */
    ASSERT_STR(pk_hdrs_get(&h, "set-cookie"), "a=1");
    ASSERT_STR(pk_hdrs_get(&h, "host"), "example.com");
    CU_ASSERT_PTR_NULL(pk_hdrs_get(&h, "hos"));
    CU_ASSERT_PTR_NULL(pk_hdrs_get(&h, "hostx"));
    CU_ASSERT_PTR_NULL(pk_hdrs_get(&h, "cookie"));
    pk_hdrs_free(&h);
}

/* Only the field that carried a proxy token is removed: the application's own
 * authorization fields stay, in order (issue: duplicate Authorization fields). */
static void test_hdrs_del_first_and_count(void)
{
    struct pk_hdrs h;
    pk_hdrs_init(&h);
    CU_ASSERT_EQUAL(pk_hdrs_count(&h, "authorization"), 0);
    CU_ASSERT_EQUAL(pk_hdrs_del_first(&h, "authorization"), 0);
    pk_hdrs_add_str(&h, "Authorization", "Bearer t");
    pk_hdrs_add_str(&h, "x", "1");
    pk_hdrs_add_str(&h, "authorization", "Basic dXNlcjpwYXNz");
    pk_hdrs_add_str(&h, "AUTHORIZATION", "Basic b3RoZXI6eA==");
    CU_ASSERT_EQUAL(pk_hdrs_count(&h, "authorization"), 3);
    CU_ASSERT_EQUAL(pk_hdrs_del_first(&h, "authorization"), 1);
    CU_ASSERT_EQUAL(pk_hdrs_count(&h, "authorization"), 2);
    CU_ASSERT_EQUAL_FATAL(h.n, 3);
    ASSERT_STR(h.v[0].name, "x");
    ASSERT_STR(h.v[1].value, "Basic dXNlcjpwYXNz");
    ASSERT_STR(h.v[2].value, "Basic b3RoZXI6eA==");
    CU_ASSERT_EQUAL(h.bytes, 1 + 1 + 2 * strlen("authorization") + strlen("Basic dXNlcjpwYXNz") +
                                 strlen("Basic b3RoZXI6eA=="));
    pk_hdrs_free(&h);
}

static void test_hdrs_del(void)
{
    struct pk_hdrs h;
    pk_hdrs_init(&h);
    pk_hdrs_add_str(&h, "a", "1");
    pk_hdrs_add_str(&h, "B", "22");
    pk_hdrs_add_str(&h, "a", "333");
    pk_hdrs_add_str(&h, "c", "4444");
    pk_hdrs_add_str(&h, "A", "55555");
    CU_ASSERT_EQUAL(h.bytes, 5 + 1 + 2 + 3 + 4 + 5);

    CU_ASSERT_EQUAL(pk_hdrs_del(&h, "a"), 3);
    CU_ASSERT_EQUAL_FATAL(h.n, 2);
    /* The others keep their order. */
    ASSERT_STR(h.v[0].name, "b");
    ASSERT_STR(h.v[0].value, "22");
    ASSERT_STR(h.v[1].name, "c");
    ASSERT_STR(h.v[1].value, "4444");
    CU_ASSERT_EQUAL(h.bytes, 1 + 2 + 1 + 4);
    CU_ASSERT_PTR_NULL(pk_hdrs_get(&h, "a"));

    CU_ASSERT_EQUAL(pk_hdrs_del(&h, "nothing"), 0);
    CU_ASSERT_EQUAL(h.n, 2);
    CU_ASSERT_EQUAL(pk_hdrs_del(&h, "c"), 1);
    CU_ASSERT_EQUAL(pk_hdrs_del(&h, "b"), 1);
    CU_ASSERT_EQUAL(h.n, 0);
    CU_ASSERT_EQUAL(h.bytes, 0);

    /* Still usable after everything was removed. */
    pk_hdrs_add_str(&h, "d", "x");
    ASSERT_STR(pk_hdrs_get(&h, "d"), "x");
    pk_hdrs_free(&h);
}

/* pk_hdrs_del_prefix removes the piko-* fields in one pass (it replaced a loop that freed
 * a name while still comparing against it). */
static void test_hdrs_del_prefix(void)
{
    struct pk_hdrs h;
    pk_hdrs_init(&h);
    pk_hdrs_add_str(&h, "Piko-Endpoint", "a");
    pk_hdrs_add_str(&h, "x-keep", "1");
    pk_hdrs_add_str(&h, "piko-hop", "b");
    pk_hdrs_add_str(&h, "pikox", "c");
    pk_hdrs_add_str(&h, "PIKO-LAST", "d");
    CU_ASSERT_EQUAL(pk_hdrs_del_prefix(&h, "piko-"), 3);
    CU_ASSERT_EQUAL_FATAL(h.n, 2);
    ASSERT_STR(h.v[0].name, "x-keep");
    ASSERT_STR(h.v[1].name, "pikox");
    CU_ASSERT_EQUAL(h.bytes, 6 + 1 + 5 + 1);
    /* The empty prefix removes nothing (not everything). */
    CU_ASSERT_EQUAL(pk_hdrs_del_prefix(&h, ""), 0);
    CU_ASSERT_EQUAL(h.n, 2);
    /* A prefix equal to a whole name matches it. */
    CU_ASSERT_EQUAL(pk_hdrs_del_prefix(&h, "pikox"), 1);
    CU_ASSERT_EQUAL(pk_hdrs_del_prefix(&h, "nothing"), 0);
    CU_ASSERT_EQUAL(h.n, 1);
    pk_hdrs_free(&h);
}

static void test_hdrs_set(void)
{
    struct pk_hdrs h;
    pk_hdrs_init(&h);
    pk_hdrs_add_str(&h, "via", "1.1 a");
    pk_hdrs_add_str(&h, "x", "keep");
    pk_hdrs_add_str(&h, "Via", "1.1 b");
    pk_hdrs_set(&h, "via", "1.1 piko");
    CU_ASSERT_EQUAL_FATAL(h.n, 2);
    ASSERT_STR(pk_hdrs_get(&h, "via"), "1.1 piko");
    ASSERT_STR(pk_hdrs_get(&h, "x"), "keep");
    CU_ASSERT_EQUAL(h.bytes, 1 + 4 + 3 + 8);

    /* Setting an absent field adds it; the name is lower-cased too. */
    pk_hdrs_set(&h, "X-New", "n");
    CU_ASSERT_EQUAL(h.n, 3);
    ASSERT_STR(pk_hdrs_get(&h, "x-new"), "n");
    pk_hdrs_free(&h);
}

static void test_hdrs_has_token(void)
{
    struct pk_hdrs h;
    pk_hdrs_init(&h);
    pk_hdrs_add_str(&h, "Connection", "keep-alive, Upgrade");
    pk_hdrs_add_str(&h, "te", "  trailers\t");
    pk_hdrs_add_str(&h, "x-list", ",,a , b\t,c,");
    pk_hdrs_add_str(&h, "x-list", "second");
    pk_hdrs_add_str(&h, "x-empty", "");

    CU_ASSERT_TRUE(pk_hdrs_has_token(&h, "connection", "upgrade"));
    CU_ASSERT_TRUE(pk_hdrs_has_token(&h, "connection", "UPGRADE"));
    CU_ASSERT_TRUE(pk_hdrs_has_token(&h, "connection", "Keep-Alive"));
    CU_ASSERT_FALSE(pk_hdrs_has_token(&h, "connection", "close"));
    CU_ASSERT_FALSE(pk_hdrs_has_token(&h, "connection", "keep"));
    CU_ASSERT_FALSE(pk_hdrs_has_token(&h, "connection", "upgrade,"));
    CU_ASSERT_FALSE(pk_hdrs_has_token(&h, "connection", "keep-alive, upgrade"));

    CU_ASSERT_TRUE(pk_hdrs_has_token(&h, "te", "trailers"));

    CU_ASSERT_TRUE(pk_hdrs_has_token(&h, "x-list", "a"));
    CU_ASSERT_TRUE(pk_hdrs_has_token(&h, "x-list", "b"));
    CU_ASSERT_TRUE(pk_hdrs_has_token(&h, "x-list", "c"));
    /* Every field of that name is searched. */
    CU_ASSERT_TRUE(pk_hdrs_has_token(&h, "x-list", "second"));
    CU_ASSERT_FALSE(pk_hdrs_has_token(&h, "x-list", "d"));
    CU_ASSERT_FALSE(pk_hdrs_has_token(&h, "x-list", "a , b"));
    CU_ASSERT_FALSE(pk_hdrs_has_token(&h, "x-empty", "a"));
    CU_ASSERT_FALSE(pk_hdrs_has_token(&h, "x-missing", "a"));
    /* The field name must match exactly (names are stored lower-case). */
    CU_ASSERT_FALSE(pk_hdrs_has_token(&h, "connectio", "upgrade"));
    pk_hdrs_free(&h);
}

static void test_hdrs_move(void)
{
    struct pk_hdrs dst, src;
    pk_hdrs_init(&dst);
    pk_hdrs_init(&src);
    pk_hdrs_add_str(&dst, "a", "1");
    for (int i = 0; i < 20; i++) /* forces dst to grow while moving */
        pk_hdrs_add_str(&src, "b", i % 2 ? "odd" : "even");
    size_t before = dst.bytes + src.bytes;

    pk_hdrs_move(&dst, &src);
    CU_ASSERT_EQUAL(src.n, 0);
    CU_ASSERT_EQUAL(src.bytes, 0);
    CU_ASSERT_PTR_NULL(src.v);
    CU_ASSERT_EQUAL_FATAL(dst.n, 21);
    ASSERT_STR(dst.v[0].name, "a");
    ASSERT_STR(dst.v[1].value, "even");
    ASSERT_STR(dst.v[2].value, "odd");
    ASSERT_STR(dst.v[20].value, "odd");
    CU_ASSERT_EQUAL(dst.bytes, before);

    /* Moving an empty list is a no-op; src stays usable. */
    pk_hdrs_move(&dst, &src);
    CU_ASSERT_EQUAL(dst.n, 21);
    pk_hdrs_add_str(&src, "c", "3");
    pk_hdrs_move(&dst, &src);
    CU_ASSERT_EQUAL(dst.n, 22);
    ASSERT_STR(pk_hdrs_get(&dst, "c"), "3");
    pk_hdrs_free(&src);
    pk_hdrs_free(&dst);

    /* Strings stay where they are across moves, whatever blocks hold them: many long
     * fields (several blocks) into an emptied list (its deleted fields' block kept). */
    char big[300];
    memset(big, 'v', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    pk_hdrs_add_str(&dst, "gone", "x");
    CU_ASSERT_EQUAL(pk_hdrs_del(&dst, "gone"), 1);
    for (int i = 0; i < 10; i++)
        pk_hdrs_add_str(&src, "long", big);
    pk_hdrs_move(&dst, &src);
    pk_hdrs_add_str(&dst, "after", "1");
    for (int i = 0; i < 10; i++)
        pk_hdrs_add_str(&src, "more", big);
    pk_hdrs_move(&dst, &src);
    CU_ASSERT_EQUAL_FATAL(dst.n, 21);
    for (size_t i = 0; i < dst.n; i++)
        if (i != 10)
            ASSERT_STR(dst.v[i].value, big);
    ASSERT_STR(pk_hdrs_get(&dst, "after"), "1");
    pk_hdrs_free(&dst);
    pk_hdrs_free(&src);
}

static void test_head_set(void)
{
    struct pk_head h;
    pk_head_init(&h);
    CU_ASSERT_PTR_NULL(h.method);
    CU_ASSERT_EQUAL(h.status, 0);

    pk_head_set(&h.method, "GETxx", 3);
    ASSERT_STR(h.method, "GET");
    pk_head_set(&h.path, "/a/b?c=d", 8);
    ASSERT_STR(h.path, "/a/b?c=d");
    /* Replacing frees the old value (ASan would see a leak otherwise). */
    pk_head_set(&h.path, "/x", 2);
    ASSERT_STR(h.path, "/x");
    pk_head_set(&h.authority, "example.com", 11);
    pk_head_set(&h.scheme, "https", 5);
    pk_head_set(&h.protocol, "websocket", 9);
    pk_head_set(&h.protocol, NULL, 0);
    CU_ASSERT_PTR_NULL(h.protocol);
    pk_head_set(&h.scheme, "", 0);
    ASSERT_STR(h.scheme, "");
    pk_hdrs_add_str(&h.hdrs, "X", "y");

    pk_head_free(&h);
    CU_ASSERT_PTR_NULL(h.method);
    CU_ASSERT_PTR_NULL(h.path);
    CU_ASSERT_PTR_NULL(h.authority);
    CU_ASSERT_EQUAL(h.hdrs.n, 0);
}

/* ---- pk_pipe ------------------------------------------------------------------------ */

struct pipe_log {
    int readable;     /* consumer notifications */
    int drained;      /* producer notifications */
    size_t drained_n; /* bytes reported to the producer */
    size_t last_n;
};

static void on_readable(struct pk_pipe *p, void *consumer)
{
    PK_UNUSED(p);
    struct pipe_log *l = consumer;
    l->readable++;
}

static void on_drained(struct pk_pipe *p, size_t n, void *producer)
{
    PK_UNUSED(p);
    struct pipe_log *l = producer;
    l->drained++;
    l->drained_n += n;
    l->last_n = n;
}

static void test_pipe_write_read(void)
{
    struct pk_pipe p;
    struct pipe_log cons = {0}, prod = {0};
    char buf[64];

    pk_pipe_init(&p, 1024);
    pk_pipe_set_consumer(&p, on_readable, &cons);
    pk_pipe_set_producer(&p, on_drained, &prod);
    CU_ASSERT_EQUAL(pk_pipe_len(&p), 0);
    CU_ASSERT_FALSE(pk_pipe_done(&p));

    pk_pipe_write(&p, "hello ", 6);
    pk_pipe_write(&p, "world", 5);
    CU_ASSERT_EQUAL(cons.readable, 2);
    CU_ASSERT_EQUAL(pk_pipe_len(&p), 11);
    CU_ASSERT_EQUAL(p.total_in, 11);
    CU_ASSERT_EQUAL(p.total_out, 0);

    /* A zero-length write changes nothing and notifies nobody. */
    pk_pipe_write(&p, "x", 0);
    CU_ASSERT_EQUAL(cons.readable, 2);
    CU_ASSERT_EQUAL(p.total_in, 11);

    CU_ASSERT_EQUAL(pk_pipe_read(&p, buf, 4), 4);
    CU_ASSERT_EQUAL(memcmp(buf, "hell", 4), 0);
    CU_ASSERT_EQUAL(prod.drained, 1);
    CU_ASSERT_EQUAL(prod.last_n, 4);
    CU_ASSERT_EQUAL(p.total_out, 4);
    CU_ASSERT_EQUAL(pk_pipe_len(&p), 7);

    CU_ASSERT_EQUAL(pk_pipe_read(&p, buf, sizeof(buf)), 7);
    CU_ASSERT_EQUAL(memcmp(buf, "o world", 7), 0);
    CU_ASSERT_EQUAL(prod.drained, 2);
    CU_ASSERT_EQUAL(prod.drained_n, 11);
    CU_ASSERT_EQUAL(p.total_out, 11);

    /* Reading an empty pipe reports nothing to the producer. */
    CU_ASSERT_EQUAL(pk_pipe_read(&p, buf, sizeof(buf)), 0);
    CU_ASSERT_EQUAL(prod.drained, 2);
    CU_ASSERT_EQUAL(p.total_out, 11);
    /* No notification goes back to the consumer on a read. */
    CU_ASSERT_EQUAL(cons.readable, 2);
    pk_pipe_free(&p);
}

static void test_pipe_move(void)
{
    struct pk_pipe p;
    struct pipe_log prod = {0};
    struct evbuffer *dst = evbuffer_new();
    char buf[64];

    pk_pipe_init(&p, 1024);
    pk_pipe_set_producer(&p, on_drained, &prod);
    pk_pipe_write(&p, "0123456789", 10);

    /* Partial move. */
    CU_ASSERT_EQUAL(pk_pipe_move(&p, dst, 3), 3);
    CU_ASSERT_EQUAL(evbuffer_get_length(dst), 3);
    CU_ASSERT_EQUAL(pk_pipe_len(&p), 7);
    CU_ASSERT_EQUAL(prod.drained, 1);
    CU_ASSERT_EQUAL(prod.last_n, 3);
    CU_ASSERT_EQUAL(p.total_out, 3);

    /* Move of everything (max above the length). */
    CU_ASSERT_EQUAL(pk_pipe_move(&p, dst, 100), 7);
    CU_ASSERT_EQUAL(pk_pipe_len(&p), 0);
    CU_ASSERT_EQUAL(prod.drained, 2);
    CU_ASSERT_EQUAL(prod.last_n, 7);
    CU_ASSERT_EQUAL(p.total_out, 10);

    /* Exactly the length. */
    pk_pipe_write(&p, "ab", 2);
    CU_ASSERT_EQUAL(pk_pipe_move(&p, dst, 2), 2);
    CU_ASSERT_EQUAL(p.total_out, 12);
    CU_ASSERT_EQUAL(p.total_in, 12);

    /* Nothing to move: no notification. */
    CU_ASSERT_EQUAL(pk_pipe_move(&p, dst, 100), 0);
    CU_ASSERT_EQUAL(prod.drained, 3);
    /* max 0 moves nothing. */
    pk_pipe_write(&p, "z", 1);
    CU_ASSERT_EQUAL(pk_pipe_move(&p, dst, 0), 0);
    CU_ASSERT_EQUAL(pk_pipe_len(&p), 1);
    CU_ASSERT_EQUAL(prod.drained, 3);

    CU_ASSERT_EQUAL(evbuffer_remove(dst, buf, sizeof(buf)), 12);
    CU_ASSERT_EQUAL(memcmp(buf, "0123456789ab", 12), 0);
    /* The pipe still works after moving its whole buffer out. */
    CU_ASSERT_EQUAL(pk_pipe_read(&p, buf, sizeof(buf)), 1);
    CU_ASSERT_EQUAL(buf[0], 'z');
    evbuffer_free(dst);
    pk_pipe_free(&p);
}

/* pk_pipe_chunk: whole chains from the front, up to max; the first chain cut when it
 * alone holds more than max. */
static void test_pipe_chunk(void)
{
    struct pk_pipe p;
    pk_pipe_init(&p, 1 << 20);
    CU_ASSERT_EQUAL(pk_pipe_chunk(&p, 100), 0);
    char a[1000], b[500];
    memset(a, 'a', sizeof(a));
    memset(b, 'b', sizeof(b));
    struct evbuffer *src = evbuffer_new();
    evbuffer_add_reference(src, a, sizeof(a), NULL, NULL);
    pk_pipe_write_from(&p, src, sizeof(a));
    evbuffer_add_reference(src, b, sizeof(b), NULL, NULL);
    pk_pipe_write_from(&p, src, sizeof(b));
    CU_ASSERT_EQUAL(pk_pipe_len(&p), 1500);
    CU_ASSERT_EQUAL(pk_pipe_chunk(&p, 1200), 1000);
    CU_ASSERT_EQUAL(pk_pipe_chunk(&p, 1500), 1500);
    CU_ASSERT_EQUAL(pk_pipe_chunk(&p, 5000), 1500);
    CU_ASSERT_EQUAL(pk_pipe_chunk(&p, 800), 800);
    struct evbuffer *dst = evbuffer_new();
    CU_ASSERT_EQUAL(pk_pipe_move(&p, dst, pk_pipe_chunk(&p, 1200)), 1000);
    CU_ASSERT_EQUAL(pk_pipe_chunk(&p, 1200), 500);
    evbuffer_free(dst);
    evbuffer_free(src);
    pk_pipe_free(&p);
}

static void test_pipe_hwm(void)
{
    struct pk_pipe p;
    char buf[16];

    pk_pipe_init(&p, 10);
    CU_ASSERT_FALSE(pk_pipe_full(&p));
    pk_pipe_write(&p, "123456789", 9);
    CU_ASSERT_FALSE(pk_pipe_full(&p));
    pk_pipe_write(&p, "0", 1);
    CU_ASSERT_TRUE(pk_pipe_full(&p));
    /* The mark only advises the producer: writes above it are kept. */
    pk_pipe_write(&p, "abcde", 5);
    CU_ASSERT_TRUE(pk_pipe_full(&p));
    CU_ASSERT_EQUAL(pk_pipe_len(&p), 15);
    CU_ASSERT_EQUAL(pk_pipe_read(&p, buf, 5), 5);
    CU_ASSERT_TRUE(pk_pipe_full(&p));
    CU_ASSERT_EQUAL(pk_pipe_read(&p, buf, 1), 1);
    CU_ASSERT_FALSE(pk_pipe_full(&p));
    pk_pipe_free(&p);
}

static void test_pipe_close_eof(void)
{
    struct pk_pipe p;
    struct pipe_log cons = {0};
    char buf[16];

    pk_pipe_init(&p, 1024);
    pk_pipe_set_consumer(&p, on_readable, &cons);
    pk_pipe_write(&p, "abc", 3);
    pk_pipe_close(&p);
    CU_ASSERT_TRUE(p.eof);
    CU_ASSERT_FALSE(p.aborted);
    CU_ASSERT_EQUAL(cons.readable, 2);
    /* Not done while bytes remain. */
    CU_ASSERT_FALSE(pk_pipe_done(&p));

    /* Writes after the end are dropped, without notification. */
    pk_pipe_write(&p, "def", 3);
    CU_ASSERT_EQUAL(pk_pipe_len(&p), 3);
    CU_ASSERT_EQUAL(p.total_in, 3);
    CU_ASSERT_EQUAL(cons.readable, 2);
    /* Closing twice notifies once. */
    pk_pipe_close(&p);
    CU_ASSERT_EQUAL(cons.readable, 2);

    CU_ASSERT_EQUAL(pk_pipe_read(&p, buf, sizeof(buf)), 3);
    CU_ASSERT_EQUAL(memcmp(buf, "abc", 3), 0);
    CU_ASSERT_TRUE(pk_pipe_done(&p));
    CU_ASSERT_EQUAL(p.total_out, 3);
    pk_pipe_free(&p);

    /* Close of an empty pipe: done at once. */
    pk_pipe_init(&p, 1024);
    pk_pipe_close(&p);
    CU_ASSERT_TRUE(pk_pipe_done(&p));
    pk_pipe_free(&p);
}

static void test_pipe_abort(void)
{
    struct pk_pipe p;
    struct pipe_log cons = {0};

    pk_pipe_init(&p, 1024);
    pk_pipe_set_consumer(&p, on_readable, &cons);
    pk_pipe_write(&p, "abc", 3);
    pk_pipe_abort(&p);
    CU_ASSERT_TRUE(p.aborted);
    CU_ASSERT_FALSE(p.eof);
    CU_ASSERT_FALSE(pk_pipe_done(&p));
    CU_ASSERT_EQUAL(cons.readable, 2);

    /* Idempotent, and writes and close after an abort are dropped silently. */
    pk_pipe_abort(&p);
    pk_pipe_write(&p, "def", 3);
    pk_pipe_close(&p);
    CU_ASSERT_EQUAL(cons.readable, 2);
    CU_ASSERT_EQUAL(p.total_in, 3);
    CU_ASSERT_FALSE(p.eof);
    CU_ASSERT_EQUAL(pk_pipe_len(&p), 3);
    pk_pipe_free(&p);
}

static void on_limit(struct pk_pipe *p, void *arg)
{
    int *calls = arg;
    (*calls)++;
    /* Called after the abort: the consumer already knows the body is not complete. */
    CU_ASSERT_TRUE(p->aborted);
}

/* proxy.max-body-bytes counts what any producer writes (an HTTP/2 client need not send a
 * content-length): the write that crosses the limit is dropped whole and aborts. */
static void test_pipe_limit(void)
{
    struct pk_pipe p;
    struct pipe_log cons = {0};
    int calls = 0;
    pk_pipe_init(&p, 1024);
    pk_pipe_set_consumer(&p, on_readable, &cons);
    pk_pipe_set_limit(&p, 5, on_limit, &calls);
    pk_pipe_write(&p, "abc", 3);
    pk_pipe_write(&p, "de", 2); /* exactly the limit: fine */
    CU_ASSERT_EQUAL(calls, 0);
    CU_ASSERT_FALSE(p.aborted);
    pk_pipe_write(&p, "f", 1);
    CU_ASSERT_EQUAL(calls, 1);
    CU_ASSERT_TRUE(p.aborted);
    CU_ASSERT_EQUAL(p.total_in, 5);
    CU_ASSERT_EQUAL(pk_pipe_len(&p), 5);
    /* Once only; later writes are dropped like any write after an abort. */
    pk_pipe_write(&p, "g", 1);
    CU_ASSERT_EQUAL(calls, 1);
    pk_pipe_free(&p);

    /* The evbuffer path too: the source is drained, nothing past the limit arrives. */
    struct evbuffer *src = evbuffer_new();
    calls = 0;
    pk_pipe_init(&p, 1024);
    pk_pipe_set_limit(&p, 4, on_limit, &calls);
    evbuffer_add(src, "0123456789", 10);
    pk_pipe_write_from(&p, src, 3);
    pk_pipe_write_from(&p, src, 3);
    CU_ASSERT_EQUAL(calls, 1);
    CU_ASSERT_EQUAL(p.total_in, 3);
    CU_ASSERT_EQUAL(evbuffer_get_length(src), 4);
    evbuffer_free(src);
    pk_pipe_free(&p);
}

/* A consumer that takes everything as soon as it is notified, the way an adapter that
 * can write onward does; it records what it saw. */
struct eager {
    struct evbuffer *out;
    int calls;
    bool saw_eof;
};

static void eager_readable(struct pk_pipe *p, void *consumer)
{
    struct eager *e = consumer;
    e->calls++;
    pk_pipe_move(p, e->out, SIZE_MAX);
    if (pk_pipe_done(p))
        e->saw_eof = true;
}

/* A producer that refills the pipe up to its mark whenever bytes are taken. */
struct refill {
    size_t left;
    int calls;
};

static void refill_drained(struct pk_pipe *p, size_t n, void *producer)
{
    struct refill *r = producer;
    PK_UNUSED(n);
    r->calls++;
    while (r->left > 0 && !pk_pipe_full(p)) {
        char chunk[7] = "abcdefg";
        size_t k = PK_MIN(r->left, sizeof(chunk));
        r->left -= k;
        pk_pipe_write(p, chunk, k);
    }
    if (r->left == 0)
        pk_pipe_close(p);
}

static void test_pipe_reentrant_flow(void)
{
    struct pk_pipe p;
    struct eager e = {.out = evbuffer_new()};
    struct refill r = {.left = 1000};

    pk_pipe_init(&p, 64);
    pk_pipe_set_producer(&p, refill_drained, &r);
    /* Fill before the consumer exists: bytes wait in the pipe. */
    refill_drained(&p, 0, &r);
    CU_ASSERT_TRUE(pk_pipe_full(&p));
    CU_ASSERT(pk_pipe_len(&p) < 64 + 7);
    r.calls = 0;

    /* The consumer's takes notify the producer, whose writes notify the consumer. */
    pk_pipe_set_consumer(&p, eager_readable, &e);
    eager_readable(&p, &e);
    CU_ASSERT_TRUE(e.saw_eof);
    CU_ASSERT_TRUE(pk_pipe_done(&p));
    CU_ASSERT_EQUAL(evbuffer_get_length(e.out), 1000);
    CU_ASSERT_EQUAL(p.total_in, 1000);
    CU_ASSERT_EQUAL(p.total_out, 1000);
    CU_ASSERT(r.calls > 0);
    evbuffer_free(e.out);
    pk_pipe_free(&p);
}

static void test_pipe_trailers(void)
{
    struct pk_pipe p;
    pk_pipe_init(&p, 16);
    CU_ASSERT_FALSE(p.has_trailers);
    pk_hdrs_add_str(&p.trailers, "Grpc-Status", "0");
    p.has_trailers = true;
    pk_pipe_close(&p);
    ASSERT_STR(pk_hdrs_get(&p.trailers, "grpc-status"), "0");
    pk_pipe_free(&p); /* frees the trailers (ASan checks) */
    CU_ASSERT_PTR_NULL(p.buf);
}

static void test_pipe_detach_callbacks(void)
{
    struct pk_pipe p;
    struct pipe_log cons = {0}, prod = {0};
    char buf[4];

    pk_pipe_init(&p, 16);
    pk_pipe_set_consumer(&p, on_readable, &cons);
    pk_pipe_set_producer(&p, on_drained, &prod);
    pk_pipe_write(&p, "ab", 2);
    pk_pipe_set_consumer(&p, NULL, NULL);
    pk_pipe_set_producer(&p, NULL, NULL);
    pk_pipe_write(&p, "cd", 2);
    CU_ASSERT_EQUAL(pk_pipe_read(&p, buf, 4), 4);
    pk_pipe_close(&p);
    CU_ASSERT_EQUAL(cons.readable, 1);
    CU_ASSERT_EQUAL(prod.drained, 0);
    pk_pipe_free(&p);
}

void pk_test_register_stream(void)
{
    CU_pSuite s = CU_add_suite("stream", NULL, NULL);

    CU_add_test(s, "hdrs_add_lowercases", test_hdrs_add_lowercases);
    CU_add_test(s, "pipe_chunk", test_pipe_chunk);
    CU_add_test(s, "hdrs_grow", test_hdrs_grow);
    CU_add_test(s, "hdrs_get", test_hdrs_get);
    CU_add_test(s, "hdrs_del_first_and_count", test_hdrs_del_first_and_count);
    CU_add_test(s, "hdrs_del", test_hdrs_del);
    CU_add_test(s, "hdrs_del_prefix", test_hdrs_del_prefix);
    CU_add_test(s, "hdrs_set", test_hdrs_set);
    CU_add_test(s, "hdrs_has_token", test_hdrs_has_token);
    CU_add_test(s, "hdrs_move", test_hdrs_move);
    CU_add_test(s, "head_set", test_head_set);
    CU_add_test(s, "pipe_write_read", test_pipe_write_read);
    CU_add_test(s, "pipe_move", test_pipe_move);
    CU_add_test(s, "pipe_hwm", test_pipe_hwm);
    CU_add_test(s, "pipe_limit", test_pipe_limit);
    CU_add_test(s, "pipe_close_eof", test_pipe_close_eof);
    CU_add_test(s, "pipe_abort", test_pipe_abort);
    CU_add_test(s, "pipe_reentrant_flow", test_pipe_reentrant_flow);
    CU_add_test(s, "pipe_trailers", test_pipe_trailers);
    CU_add_test(s, "pipe_detach_callbacks", test_pipe_detach_callbacks);
}
