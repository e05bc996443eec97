/* Unit tests for lib/http1: the http-parser wrapper (requests, responses, bodies, trailers,
 * pipelining, upgrades, limits, errors) and the HTTP/1.1 writers and hop-by-hop stripping. */
#include "base/base.h"
#include "http1/http1.h"
#include "stream/head.h"

#include <CUnit/CUnit.h>
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

/* pk_h1_pump_body: chunked framing stops at the output mark, resumes, and ends with the
 * last chunk and the trailers; raw framing moves the bytes as they are. */
static void test_pump_body(void)
{
    struct pk_pipe p;
    struct evbuffer *out = evbuffer_new();
    pk_pipe_init(&p, 1 << 20);
    pk_pipe_write(&p, "hello world", 11);
    CU_ASSERT_FALSE(pk_h1_pump_body(out, &p, true, 4)); /* below the mark: one chunk */
    CU_ASSERT_EQUAL(pk_pipe_len(&p), 7);
    evbuffer_drain(out, evbuffer_get_length(out));
    pk_hdrs_add_str(&p.trailers, "x-sum", "1");
    p.has_trailers = true;
    pk_pipe_close(&p);
    CU_ASSERT_TRUE(pk_h1_pump_body(out, &p, true, 1024));
    size_t n = evbuffer_get_length(out);
    char *got = pk_xstrndup((const char *)evbuffer_pullup(out, -1), n);
    CU_ASSERT_STRING_EQUAL(got, "7\r\no world\r\n0\r\nx-sum: 1\r\n\r\n");
    free(got);
    pk_pipe_free(&p);
    evbuffer_drain(out, evbuffer_get_length(out));

    pk_pipe_init(&p, 1 << 20);
    pk_pipe_write(&p, "abc", 3);
    CU_ASSERT_FALSE(pk_h1_pump_body(out, &p, false, 1024));
    pk_pipe_close(&p);
    CU_ASSERT_TRUE(pk_h1_pump_body(out, &p, false, 1024));
    CU_ASSERT_EQUAL(evbuffer_get_length(out), 3);
    pk_pipe_free(&p);
    evbuffer_free(out);
}

void pk_test_register_http1(void);

/* String equality that fails (instead of crashing) when actual is NULL. */
#define ASSERT_STR(actual, expected)                                                               \
    do {                                                                                           \
        const char *a_ = (actual), *e_ = (expected);                                               \
        CU_assertImplementation(a_ != NULL && strcmp(a_, e_) == 0, __LINE__,                       \
                                "ASSERT_STR(" #actual ", " #expected ")", __FILE__, "", CU_FALSE); \
    } while (0)

/* What the callbacks saw. */
struct rec {
    int heads;
    int completes;
    int head_status; /* p->head.status when on_head ran */
    bool skip_body;  /* on_head's answer */
    char body[4096];
    size_t body_len;
    int body_calls;
};

static bool rec_head(struct pk_h1parser *p, void *ud)
{
    struct rec *r = ud;
    r->heads++;
    r->head_status = p->head.status;
    return r->skip_body;
}

static void rec_body(struct pk_h1parser *p, const char *data, size_t len, void *ud)
{
    struct rec *r = ud;
    PK_UNUSED(p);
    r->body_calls++;
    CU_ASSERT_FATAL(r->body_len + len <= sizeof(r->body));
    memcpy(r->body + r->body_len, data, len);
    r->body_len += len;
}

static void rec_complete(struct pk_h1parser *p, void *ud)
{
    struct rec *r = ud;
    PK_UNUSED(p);
    r->completes++;
}

static const struct pk_h1parser_cbs rec_cbs = {rec_head, rec_body, rec_complete};

static ssize_t feed_str(struct pk_h1parser *p, const char *s)
{
    return pk_h1parser_feed(p, s, strlen(s));
}

#define BODY_IS(r, s) ((r).body_len == strlen(s) && memcmp((r).body, (s), strlen(s)) == 0)

/* ---- requests ----------------------------------------------------------------------- */

/* Error bodies are built by json-c: a message with a quote, a backslash or a control
 * character stays one valid JSON string (they were printf'd before). */
static void test_json_error_body_escapes(void)
{
    size_t n = 0;
    char *b = pk_json_error_body("bad \"token\" \\ here\n/x", &n);
    CU_ASSERT_STRING_EQUAL(b, "{\"error\":\"bad \\\"token\\\" \\\\ here\\n/x\"}\n");
    CU_ASSERT_EQUAL(n, strlen(b));
    free(b);
    b = pk_json_error_body(NULL, NULL);
    CU_ASSERT_STRING_EQUAL(b, "{\"error\":\"\"}\n");
    free(b);
}

/* The evbuffer feeder reads segment by segment (no pull-up), stops after a complete
 * message like pk_h1parser_feed, and drains exactly what was consumed: the next
 * pipelined request stays in the buffer, split across segments as it was. */
static void test_feed_evbuffer_segments(void)
{
    struct evbuffer *in = evbuffer_new();
    const char *parts[] = {"POST /a HTTP/1.1\r\nHo", "st: x\r\nContent-Length: 5\r\n\r\nhe", "llo",
                           "GET /b HTTP/1.1\r\nHost: y\r\n\r\n"};
    for (size_t i = 0; i < PK_ARRAY_LEN(parts); i++) {
        struct evbuffer *seg = evbuffer_new();
        evbuffer_add(seg, parts[i], strlen(parts[i]));
        evbuffer_add_buffer(in, seg); /* moves the chain: one segment per part */
        evbuffer_free(seg);
    }
    CU_ASSERT_TRUE(evbuffer_peek(in, -1, NULL, NULL, 0) >= 2);
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    size_t first = strlen(parts[0]) + strlen(parts[1]) + strlen(parts[2]);
    CU_ASSERT_EQUAL(pk_h1parser_feed_evbuffer(&p, in, 0), (ssize_t)first);
    CU_ASSERT_TRUE(p.message_done);
    CU_ASSERT_TRUE(BODY_IS(r, "hello"));
    ASSERT_STR(p.head.path, "/a");
    CU_ASSERT_EQUAL(evbuffer_get_length(in), strlen(parts[3]));
    pk_h1parser_next(&p);
    /* max bounds how much is fed at once. */
    CU_ASSERT_EQUAL(pk_h1parser_feed_evbuffer(&p, in, 4), 4);
    CU_ASSERT_EQUAL(pk_h1parser_feed_evbuffer(&p, in, 0), (ssize_t)strlen(parts[3]) - 4);
    CU_ASSERT_TRUE(p.message_done);
    ASSERT_STR(p.head.path, "/b");
    CU_ASSERT_EQUAL(evbuffer_get_length(in), 0);
    pk_h1parser_next(&p);
    evbuffer_add(in, "BAD LINE\r\n\r\n", strlen("BAD LINE\r\n\r\n"));
    CU_ASSERT_EQUAL(pk_h1parser_feed_evbuffer(&p, in, 0), -1);
    pk_h1parser_free(&p);
    evbuffer_free(in);
}

static void test_simple_get(void)
{
    const char *req = "GET /index.html?x=1 HTTP/1.1\r\n"
                      "Host: example.com\r\n"
                      "User-Agent: test/1.0\r\n"
                      "Accept: */*\r\n"
                      "\r\n";
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);

    CU_ASSERT_EQUAL(feed_str(&p, req), (ssize_t)strlen(req));
    CU_ASSERT_EQUAL(r.heads, 1);
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_EQUAL(r.body_len, 0);
    CU_ASSERT_TRUE(p.head_done);
    CU_ASSERT_TRUE(p.message_done);
    CU_ASSERT_EQUAL(p.error, PK_H1_OK);
    ASSERT_STR(p.head.method, "GET");
    ASSERT_STR(p.head.path, "/index.html?x=1");
    CU_ASSERT_PTR_NULL(p.head.authority); /* origin-form: Host stays a field */
    CU_ASSERT_EQUAL(p.head.status, 0);
    CU_ASSERT_EQUAL_FATAL(p.head.hdrs.n, 3);
    ASSERT_STR(p.head.hdrs.v[0].name, "host");
    ASSERT_STR(p.head.hdrs.v[0].value, "example.com");
    ASSERT_STR(pk_hdrs_get(&p.head.hdrs, "user-agent"), "test/1.0");
    ASSERT_STR(pk_hdrs_get(&p.head.hdrs, "accept"), "*/*");
    CU_ASSERT_TRUE(p.keep_alive);
    CU_ASSERT_EQUAL(p.http_minor, 1);
    CU_ASSERT_FALSE(p.chunked);
    CU_ASSERT_FALSE(p.has_length);
    CU_ASSERT_FALSE(p.upgrade);
    CU_ASSERT_EQUAL(p.trailers.n, 0);
    pk_h1parser_free(&p);
}

static void test_other_methods_and_forms(void)
{
    struct rec r = {0};
    struct pk_h1parser p;

    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    CU_ASSERT(feed_str(&p, "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n") > 0);
    ASSERT_STR(p.head.method, "OPTIONS");
    ASSERT_STR(p.head.path, "*");
    pk_h1parser_free(&p);

    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    CU_ASSERT(feed_str(&p, "DELETE /x HTTP/1.0\r\n\r\n") > 0);
    ASSERT_STR(p.head.method, "DELETE");
    CU_ASSERT_EQUAL(p.http_minor, 0);
    CU_ASSERT_FALSE(p.keep_alive); /* HTTP/1.0 without keep-alive */
    pk_h1parser_free(&p);

    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    CU_ASSERT(feed_str(&p, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n") > 0);
    CU_ASSERT_FALSE(p.keep_alive);
    pk_h1parser_free(&p);
}

static void test_absolute_form(void)
{
    static const struct {
        const char *target, *authority, *path;
    } cases[] = {
        {"http://example.com:8080/a/b?c=d", "example.com:8080", "/a/b?c=d"},
        {"http://example.com/", "example.com", "/"},
        {"http://example.com", "example.com", "/"},
        {"https://Example.COM/x", "Example.COM", "/x"},
        {"http://example.com?q=1", "example.com", "/?q=1"},
        {"http://[::1]/v6", "[::1]", "/v6"},
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(cases); i++) {
        struct rec r = {0};
        struct pk_h1parser p;
        char *req = pk_xasprintf("GET %s HTTP/1.1\r\nHost: ignored\r\n\r\n", cases[i].target);
        pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
        CU_ASSERT_EQUAL(feed_str(&p, req), (ssize_t)strlen(req));
        CU_ASSERT_EQUAL(r.completes, 1);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p.head.authority);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p.head.path);
        ASSERT_STR(p.head.authority, cases[i].authority);
        ASSERT_STR(p.head.path, cases[i].path);
        pk_h1parser_free(&p);
        free(req);
    }
}

/* Regression: an IPv6 literal with a port in absolute-form. set_target() computes the length
 * host..port first and then widens it by 2 for the brackets, though only the opening one
 * lies before the host: the authority gets the next character too ("[::1]:8080/"), and
 * with no path it reads one byte past the end of the URL. */
static void test_absolute_form_ipv6_port(void)
{
    static const struct {
        const char *target, *authority, *path;
    } cases[] = {
        {"http://[::1]:8080/x", "[::1]:8080", "/x"},
        {"http://[2001:db8::1]:443/a?b", "[2001:db8::1]:443", "/a?b"},
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(cases); i++) {
        struct rec r = {0};
        struct pk_h1parser p;
        char *req = pk_xasprintf("GET %s HTTP/1.1\r\n\r\n", cases[i].target);
        pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
        CU_ASSERT_EQUAL(feed_str(&p, req), (ssize_t)strlen(req));
        CU_ASSERT_PTR_NOT_NULL_FATAL(p.head.authority);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p.head.path);
        ASSERT_STR(p.head.authority, cases[i].authority);
        ASSERT_STR(p.head.path, cases[i].path);
        pk_h1parser_free(&p);
        free(req);
    }
}

/* Regression, same cause: with no path after the port, set_target() looks for a query with
 * strchr() from one byte past the URL's terminating NUL (a heap over-read under ASan).
 * Registered last: ASan aborts the run there. */
static void test_absolute_form_ipv6_port_no_path(void)
{
    const char *req = "GET http://[::1]:8080 HTTP/1.1\r\n\r\n";
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, req), (ssize_t)strlen(req));
    CU_ASSERT_PTR_NOT_NULL_FATAL(p.head.authority);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p.head.path);
    ASSERT_STR(p.head.authority, "[::1]:8080");
    ASSERT_STR(p.head.path, "/");
    pk_h1parser_free(&p);
}

static void test_connect_target(void)
{
    const char *req = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
                      "\x16\x03\x01";
    size_t head_len = strlen(req) - 3;
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, req), (ssize_t)head_len);
    ASSERT_STR(p.head.method, "CONNECT");
    CU_ASSERT_PTR_NOT_NULL_FATAL(p.head.authority);
    ASSERT_STR(p.head.authority, "example.com:443");
    CU_ASSERT_PTR_NULL(p.head.path);
    CU_ASSERT_TRUE(p.upgrade); /* the tunnel bytes are not HTTP */
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_EQUAL(r.body_len, 0);
    pk_h1parser_free(&p);
}

static void test_header_ows_trimmed(void)
{
    const char *req = "GET / HTTP/1.1\r\n"
                      "X-A:   spaced value  \t \r\n"
                      "X-B:\tq\t\r\n"
                      "X-Empty:\r\n"
                      "X-Spaces:    \r\n"
                      "X-Inner: a  b\r\n"
                      "\r\n";
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, req), (ssize_t)strlen(req));
    ASSERT_STR(pk_hdrs_get(&p.head.hdrs, "x-a"), "spaced value");
    ASSERT_STR(pk_hdrs_get(&p.head.hdrs, "x-b"), "q");
    CU_ASSERT_PTR_NOT_NULL_FATAL(pk_hdrs_get(&p.head.hdrs, "x-empty"));
    ASSERT_STR(pk_hdrs_get(&p.head.hdrs, "x-empty"), "");
    CU_ASSERT_PTR_NOT_NULL_FATAL(pk_hdrs_get(&p.head.hdrs, "x-spaces"));
    ASSERT_STR(pk_hdrs_get(&p.head.hdrs, "x-spaces"), "");
    ASSERT_STR(pk_hdrs_get(&p.head.hdrs, "x-inner"), "a  b");
    CU_ASSERT_EQUAL(p.head.hdrs.n, 5);
    pk_h1parser_free(&p);
}

/* The same message fed one byte at a time gives the same result. */
static void test_bytewise_feed(void)
{
    const char *req = "POST /up HTTP/1.1\r\n"
                      "Host: example.com\r\n"
                      "X-Long-Header-Name: some value\r\n"
                      "Transfer-Encoding: chunked\r\n"
                      "\r\n"
                      "3\r\nabc\r\n"
                      "4\r\ndefg\r\n"
                      "0\r\n"
                      "X-Trailer: t\r\n"
                      "\r\n";
    struct rec r = {0};
    struct pk_h1parser p;
    size_t len = strlen(req), used = 0;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    for (size_t i = 0; i < len; i++) {
        ssize_t n = pk_h1parser_feed(&p, req + i, 1);
        CU_ASSERT_EQUAL_FATAL(n, 1);
        used += (size_t)n;
    }
    CU_ASSERT_EQUAL(used, len);
    CU_ASSERT_EQUAL(r.heads, 1);
    CU_ASSERT_EQUAL(r.completes, 1);
    ASSERT_STR(p.head.path, "/up");
    ASSERT_STR(pk_hdrs_get(&p.head.hdrs, "host"), "example.com");
    ASSERT_STR(pk_hdrs_get(&p.head.hdrs, "x-long-header-name"), "some value");
    CU_ASSERT_TRUE(BODY_IS(r, "abcdefg"));
    ASSERT_STR(pk_hdrs_get(&p.trailers, "x-trailer"), "t");
    pk_h1parser_free(&p);
}

/* Regression: the head limit must not depend on how the bytes were segmented.
 * on_header_field() charges 4 bytes (": " and CRLF) per call, and http-parser calls it once
 * per feed a name is split over: a head well under max_head is refused when it arrives in
 * small pieces (byte-at-a-time charges each name five times its length). */
static void test_head_limit_independent_of_segmentation(void)
{
    const char *req = "GET / HTTP/1.1\r\n"
                      "Host: example.com\r\n"
                      "Accept-Language: en\r\n"
                      "X-Request-Identifier: 1\r\n"
                      "\r\n";
    size_t len = strlen(req);
    struct rec r = {0};
    struct pk_h1parser p;

    /* The whole head is within the limit when it comes in one piece... */
    pk_h1parser_init(&p, HTTP_REQUEST, len, &rec_cbs, &r);
    CU_ASSERT_EQUAL(pk_h1parser_feed(&p, req, len), (ssize_t)len);
    CU_ASSERT_EQUAL(r.completes, 1);
    pk_h1parser_free(&p);

    /* ...so it must be within it in pieces too. */
    memset(&r, 0, sizeof(r));
    pk_h1parser_init(&p, HTTP_REQUEST, len, &rec_cbs, &r);
    size_t i;
    for (i = 0; i < len; i++) {
        if (pk_h1parser_feed(&p, req + i, 1) != 1)
            break;
    }
    CU_ASSERT_EQUAL(i, len);
    CU_ASSERT_EQUAL(p.error, PK_H1_OK);
    CU_ASSERT_EQUAL(r.completes, 1);
    pk_h1parser_free(&p);
}

static void test_content_length_body(void)
{
    const char *head = "POST /upload HTTP/1.1\r\n"
                       "Content-Length: 11\r\n"
                       "\r\n";
    char *req = pk_xasprintf("%shello", head);
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);

    CU_ASSERT_EQUAL(feed_str(&p, req), (ssize_t)strlen(req));
    CU_ASSERT_EQUAL(r.heads, 1);
    CU_ASSERT_EQUAL(r.completes, 0);
    CU_ASSERT_TRUE(p.has_length);
    CU_ASSERT_EQUAL(p.content_length, 11);
    CU_ASSERT_FALSE(p.chunked);
    CU_ASSERT_TRUE(BODY_IS(r, "hello"));

    /* The rest of the body plus the start of a next request: stops after the body. */
    CU_ASSERT_EQUAL(feed_str(&p, " worldGET / HTTP/1.1\r\n"), 6);
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_TRUE(BODY_IS(r, "hello world"));
    CU_ASSERT_EQUAL(p.trailers.n, 0);
    pk_h1parser_free(&p);
    free(req);
}

static void test_content_length_zero(void)
{
    const char *req = "POST /e HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, req), (ssize_t)strlen(req));
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_TRUE(p.has_length);
    CU_ASSERT_EQUAL(p.content_length, 0);
    CU_ASSERT_EQUAL(r.body_calls, 0);
    pk_h1parser_free(&p);
}

static void test_chunked_body_and_trailers(void)
{
    const char *req = "POST /c HTTP/1.1\r\n"
                      "Host: h\r\n"
                      "Transfer-Encoding: chunked\r\n"
                      "Trailer: X-Checksum\r\n"
                      "\r\n"
                      "5\r\nhello\r\n"
                      "6;ext=1\r\n world\r\n"
                      "A\r\n0123456789\r\n"
                      "0\r\n"
                      "X-Checksum: abc\r\n"
                      "X-Other:  v \r\n"
                      "\r\n";
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);

    CU_ASSERT_EQUAL(feed_str(&p, req), (ssize_t)strlen(req));
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_TRUE(p.chunked);
    CU_ASSERT_FALSE(p.has_length);
    CU_ASSERT_TRUE(BODY_IS(r, "hello world0123456789"));
    CU_ASSERT_EQUAL_FATAL(p.trailers.n, 2);
    ASSERT_STR(pk_hdrs_get(&p.trailers, "x-checksum"), "abc");
    ASSERT_STR(pk_hdrs_get(&p.trailers, "x-other"), "v");
    /* Trailers do not leak into the head's fields. */
    CU_ASSERT_PTR_NULL(pk_hdrs_get(&p.head.hdrs, "x-checksum"));
    CU_ASSERT_EQUAL(p.head.hdrs.n, 3);
    pk_h1parser_free(&p);
}

static void test_chunked_without_trailers(void)
{
    const char *req = "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "3\r\nabc\r\n0\r\n\r\n";
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, req), (ssize_t)strlen(req));
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_TRUE(BODY_IS(r, "abc"));
    CU_ASSERT_EQUAL(p.trailers.n, 0);
    pk_h1parser_free(&p);
}

static void test_pipelined(void)
{
    const char *first = "POST /1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
    const char *second = "GET /2 HTTP/1.1\r\nX-Second: yes\r\n\r\n";
    const char *third = "GET /3 HTTP/1.1\r\n\r\n";
    char *all = pk_xasprintf("%s%s%s", first, second, third);
    size_t len = strlen(all);
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);

    ssize_t n1 = pk_h1parser_feed(&p, all, len);
    CU_ASSERT_EQUAL(n1, (ssize_t)strlen(first));
    CU_ASSERT_EQUAL(r.completes, 1);
    ASSERT_STR(p.head.path, "/1");
    CU_ASSERT_TRUE(BODY_IS(r, "abc"));

    /* Without pk_h1parser_next nothing more is consumed. */
    CU_ASSERT_EQUAL(pk_h1parser_feed(&p, all + n1, len - (size_t)n1), 0);
    CU_ASSERT_EQUAL(r.heads, 1);

    pk_h1parser_next(&p);
    ssize_t n2 = pk_h1parser_feed(&p, all + n1, len - (size_t)n1);
    CU_ASSERT_EQUAL(n2, (ssize_t)strlen(second));
    CU_ASSERT_EQUAL(r.heads, 2);
    CU_ASSERT_EQUAL(r.completes, 2);
    ASSERT_STR(p.head.method, "GET");
    ASSERT_STR(p.head.path, "/2");
    /* The previous message's fields are gone. */
    CU_ASSERT_PTR_NULL(pk_hdrs_get(&p.head.hdrs, "content-length"));
    ASSERT_STR(pk_hdrs_get(&p.head.hdrs, "x-second"), "yes");
    CU_ASSERT_FALSE(p.has_length);

    pk_h1parser_next(&p);
    ssize_t n3 = pk_h1parser_feed(&p, all + n1 + n2, len - (size_t)(n1 + n2));
    CU_ASSERT_EQUAL(n3, (ssize_t)strlen(third));
    CU_ASSERT_EQUAL(r.completes, 3);
    ASSERT_STR(p.head.path, "/3");
    CU_ASSERT_EQUAL(p.head.hdrs.n, 0);
    pk_h1parser_free(&p);
    free(all);
}

static void test_head_too_large(void)
{
    struct rec r = {0};
    struct pk_h1parser p;
    char big[300];
    memset(big, 'v', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';

    /* A long field value. */
    char *req = pk_xasprintf("GET / HTTP/1.1\r\nX-Big: %s\r\n\r\n", big);
    pk_h1parser_init(&p, HTTP_REQUEST, 256, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, req), -1);
    CU_ASSERT_EQUAL(p.error, PK_H1_HEAD_TOO_LARGE);
    CU_ASSERT_EQUAL(r.heads, 0);
    /* Sticky: further input is refused. */
    CU_ASSERT_EQUAL(feed_str(&p, "\r\n"), -1);
    CU_ASSERT_EQUAL(pk_h1parser_eof(&p), -1);
    CU_ASSERT_EQUAL(p.error, PK_H1_HEAD_TOO_LARGE);
    pk_h1parser_free(&p);
    free(req);

    /* A long target. */
    req = pk_xasprintf("GET /%s HTTP/1.1\r\n\r\n", big);
    pk_h1parser_init(&p, HTTP_REQUEST, 256, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, req), -1);
    CU_ASSERT_EQUAL(p.error, PK_H1_HEAD_TOO_LARGE);
    pk_h1parser_free(&p);
    free(req);

    /* Many small fields, fed in two pieces. */
    pk_h1parser_init(&p, HTTP_REQUEST, 256, &rec_cbs, &r);
    CU_ASSERT(feed_str(&p, "GET / HTTP/1.1\r\n") > 0);
    ssize_t rv = 0;
    for (int i = 0; i < 40 && rv >= 0; i++)
        rv = feed_str(&p, "X-Field: value\r\n");
    CU_ASSERT_EQUAL(rv, -1);
    CU_ASSERT_EQUAL(p.error, PK_H1_HEAD_TOO_LARGE);
    pk_h1parser_free(&p);

    /* A response head too. */
    req = pk_xasprintf("HTTP/1.1 200 OK\r\nX-Big: %s\r\n\r\n", big);
    pk_h1parser_init(&p, HTTP_RESPONSE, 256, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, req), -1);
    CU_ASSERT_EQUAL(p.error, PK_H1_HEAD_TOO_LARGE);
    pk_h1parser_free(&p);
    free(req);

    /* The body does not count against the head limit. */
    memset(&r, 0, sizeof(r));
    req = pk_xasprintf("POST / HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s", strlen(big), big);
    pk_h1parser_init(&p, HTTP_REQUEST, 256, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, req), (ssize_t)strlen(req));
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_EQUAL(r.body_len, strlen(big));
    pk_h1parser_free(&p);
    free(req);
}

static void test_malformed(void)
{
    static const char *const bad[] = {
        "G@T / HTTP/1.1\r\n\r\n",
        "GET / HTTP/x.1\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "\x01\x02\x03",
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        struct rec r = {0};
        struct pk_h1parser p;
        pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
        CU_ASSERT_EQUAL(feed_str(&p, bad[i]), -1);
        CU_ASSERT_EQUAL(p.error, PK_H1_MALFORMED);
        CU_ASSERT_PTR_NOT_NULL(p.error_detail);
        CU_ASSERT_EQUAL(r.completes, 0);
        CU_ASSERT_EQUAL(feed_str(&p, "GET / HTTP/1.1\r\n\r\n"), -1);
        pk_h1parser_free(&p);
    }

    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_RESPONSE, 8192, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, "HTTP/1.1 2x0 OK\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(p.error, PK_H1_MALFORMED);
    pk_h1parser_free(&p);
}

/* Feeds s one byte at a time; returns -1 at the first error, else 0. */
static int feed_bytewise(struct pk_h1parser *p, const char *s)
{
    size_t len = strlen(s), off = 0;
    while (off < len) {
        ssize_t n = pk_h1parser_feed(p, s + off, 1);
        if (n < 0)
            return -1;
        if (n == 0 && !p->message_done)
            return -1;
        off += (size_t)n;
        if (p->message_done && off < len) {
            pk_h1parser_next(p);
        }
    }
    return 0;
}

/* Request smuggling defences (issue "Security"): folding, repeated or unknown
 * Transfer-Encoding, whatever the segmentation. */
static void test_smuggling(void)
{
    static const struct {
        const char *req;
        enum pk_h1_error err;
        const char *detail;
    } cases[] = {
        {"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n", PK_H1_MALFORMED, "folding"},
        {"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n\tb\r\n\r\n", PK_H1_MALFORMED, "folding"},
        {"\r\n\r\nGET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", PK_H1_MALFORMED, "folding"},
        {"GET / HTTP/1.1\nX-A: a\n b\n\n", PK_H1_MALFORMED, "folding"},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
         "0\r\n\r\n",
         PK_H1_MALFORMED, "repeated transfer-encoding"},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
         PK_H1_NOT_IMPLEMENTED, "not implemented"},
        {"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
         PK_H1_MALFORMED, NULL},
        {"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", PK_H1_MALFORMED,
         NULL},
        {"GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n", PK_H1_MALFORMED, NULL},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n",
         PK_H1_MALFORMED, NULL},
        /* found by fuzz_h1_request: a control byte first in a value, a bare CR ending a
         * line (http-parser swallowed the next byte), a bare CR where the empty line is */
        {"GET / HTTP/1.1\r\nX-A: \001abc\r\n\r\n", PK_H1_MALFORMED, "control character"},
        {"GET / HTTP/1.1\r\nX-A: ab\x7f\r\n\r\n", PK_H1_MALFORMED, NULL},
        {"GET / HTTP/1.1\r\nX-A: a\rXGET /2 HTTP/1.1\r\n\r\n", PK_H1_MALFORMED, NULL},
        {"GET / HTTP/1.1\r\nX-A: a\r\n\rXGET /2 HTTP/1.1\r\n\r\n", PK_H1_MALFORMED, "bare CR"},
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(cases); i++) {
        for (int bytewise = 0; bytewise < 2; bytewise++) {
            struct rec r = {0};
            struct pk_h1parser p;
            pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
            int rv = bytewise ? feed_bytewise(&p, cases[i].req)
                              : (feed_str(&p, cases[i].req) < 0 ? -1 : 0);
            CU_ASSERT_EQUAL(rv, -1);
            CU_ASSERT_EQUAL(p.error, cases[i].err);
            if (cases[i].detail && (!p.error_detail || !strstr(p.error_detail, cases[i].detail))) {
                fprintf(stderr, "case %zu: detail '%s'\n", i,
                        p.error_detail ? p.error_detail : "(none)");
                CU_FAIL("error detail");
            }
            CU_ASSERT_EQUAL(r.completes, 0);
            pk_h1parser_free(&p);
        }
    }
    /* What stays accepted: a value with inner spaces, a body holding "\n " bytes, chunk
     * extensions, leading empty lines, and the same on a pipelined second request. */
    const char *ok = "\r\nPOST / HTTP/1.1\r\nX-A: a b\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "3;ext=1\r\n\n b\r\n0\r\n\r\n"
                     "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\nX-B: c\r\n\r\n"
                     "2\r\n\n\t\r\n0\r\n\r\n";
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        struct rec r = {0};
        struct pk_h1parser p;
        pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
        if (bytewise) {
            CU_ASSERT_EQUAL(feed_bytewise(&p, ok), 0);
        } else {
            size_t len = strlen(ok), off = 0;
            while (off < len) {
                ssize_t n = pk_h1parser_feed(&p, ok + off, len - off);
                CU_ASSERT_TRUE_FATAL(n > 0);
                off += (size_t)n;
                if (p.message_done)
                    pk_h1parser_next(&p);
            }
        }
        CU_ASSERT_EQUAL(p.error, PK_H1_OK);
        CU_ASSERT_EQUAL(r.completes, 2);
        pk_h1parser_free(&p);
    }
}

static void test_request_line_version(void)
{
    static const char *const bad[] = {
        "GET / HTTX/1.1\r\n\r\n",
        "GET / HTTP/1.2\r\n\r\n",
        "GET / HTTP/2.0\r\n\r\n",
        "GET /\r\n\r\n",
        "GET /a/rather/long/path/beyond/the/kept/tail HTTP/1.1 x\r\n\r\n",
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        struct rec r = {0};
        struct pk_h1parser p;
        pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
        CU_ASSERT_EQUAL(feed_str(&p, bad[i]), -1);
        CU_ASSERT_EQUAL(p.error, PK_H1_MALFORMED);
        CU_ASSERT_EQUAL(r.heads, 0);
        pk_h1parser_free(&p);
    }

    /* Accepted: HTTP/1.0, empty lines before the request, a long target, a request line
     * split over several reads, and a bare LF. */
    static const char *const good[] = {
        "GET / HTTP/1.0\r\n\r\n",
        "\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        "GET /a/rather/long/path/beyond/the/kept/tail?with=query HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\nHost: a\n\n",
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(good); i++) {
        struct rec r = {0};
        struct pk_h1parser p;
        pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
        CU_ASSERT_EQUAL(feed_str(&p, good[i]), (ssize_t)strlen(good[i]));
        CU_ASSERT_EQUAL(r.completes, 1);
        pk_h1parser_free(&p);
    }

    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, "GET /split HT"), 13);
    CU_ASSERT_EQUAL(feed_str(&p, "TP/1."), 5);
    CU_ASSERT_EQUAL(feed_str(&p, "1\r\n\r\n"), 5);
    CU_ASSERT_EQUAL(r.completes, 1);
    ASSERT_STR(p.head.path, "/split");
    pk_h1parser_free(&p);

    /* The check runs again for every pipelined request. */
    memset(&r, 0, sizeof(r));
    const char *two = "GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/9.9\r\n\r\n";
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    ssize_t n = feed_str(&p, two);
    CU_ASSERT_EQUAL(n, (ssize_t)strlen("GET /1 HTTP/1.1\r\n\r\n"));
    pk_h1parser_next(&p);
    CU_ASSERT_EQUAL(feed_str(&p, two + n), -1);
    CU_ASSERT_EQUAL(p.error, PK_H1_MALFORMED);
    CU_ASSERT_EQUAL(r.completes, 1);
    pk_h1parser_free(&p);
}

static void test_field_name_chars(void)
{
    static const char *const bad[] = {
        "GET / HTTP/1.1\r\nX-A@b: c\r\n\r\n",
        "GET / HTTP/1.1\r\nX(a): c\r\n\r\n",
        "GET / HTTP/1.1\r\nX\"a: c\r\n\r\n",
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        struct rec r = {0};
        struct pk_h1parser p;
        pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
        CU_ASSERT_EQUAL(feed_str(&p, bad[i]), -1);
        CU_ASSERT_EQUAL(p.error, PK_H1_MALFORMED);
        pk_h1parser_free(&p);
    }
    const char *ok = "GET / HTTP/1.1\r\nX-a.b_c~!#$%&'*+^`|: v\r\n\r\n";
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, ok), (ssize_t)strlen(ok));
    ASSERT_STR(pk_hdrs_get(&p.head.hdrs, "x-a.b_c~!#$%&'*+^`|"), "v");
    pk_h1parser_free(&p);
}

static void test_upgrade_request(void)
{
    const char *head = "GET /chat HTTP/1.1\r\n"
                       "Host: example.com\r\n"
                       "Connection: Upgrade\r\n"
                       "Upgrade: websocket\r\n"
                       "\r\n";
    const char leftover[] = "\x81\x05hello";
    char *req = pk_xasprintf("%s%s", head, leftover);
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);

    CU_ASSERT_EQUAL(feed_str(&p, req), (ssize_t)strlen(head));
    CU_ASSERT_TRUE(p.upgrade);
    CU_ASSERT_EQUAL(r.heads, 1);
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_EQUAL(r.body_len, 0); /* the new protocol's bytes are not body */
    ASSERT_STR(p.head.path, "/chat");
    ASSERT_STR(pk_hdrs_get(&p.head.hdrs, "upgrade"), "websocket");
    /* Nothing more is taken. */
    CU_ASSERT_EQUAL(feed_str(&p, req + strlen(head)), 0);
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_EQUAL(p.error, PK_H1_OK);
    pk_h1parser_free(&p);
    free(req);

    /* Upgrade without "Connection: upgrade" is not an upgrade. */
    memset(&r, 0, sizeof(r));
    const char *plain = "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, plain), (ssize_t)strlen(plain));
    CU_ASSERT_FALSE(p.upgrade);
    CU_ASSERT_EQUAL(r.completes, 1);
    pk_h1parser_free(&p);
}

/* ---- responses ---------------------------------------------------------------------- */

static void test_response_content_length(void)
{
    const char *resp = "HTTP/1.1 200 OK\r\n"
                       "Content-Type: text/plain\r\n"
                       "Content-Length: 5\r\n"
                       "\r\n"
                       "hello";
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_RESPONSE, 8192, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, resp), (ssize_t)strlen(resp));
    CU_ASSERT_EQUAL(r.head_status, 200);
    CU_ASSERT_EQUAL(p.head.status, 200);
    CU_ASSERT_PTR_NULL(p.head.method);
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_TRUE(BODY_IS(r, "hello"));
    ASSERT_STR(pk_hdrs_get(&p.head.hdrs, "content-type"), "text/plain");
    CU_ASSERT_TRUE(p.keep_alive);
    /* EOF after a complete message is fine. */
    CU_ASSERT_EQUAL(pk_h1parser_eof(&p), 0);
    CU_ASSERT_EQUAL(r.completes, 1);
    pk_h1parser_free(&p);
}

static void test_response_chunked(void)
{
    const char *resp = "HTTP/1.1 200 OK\r\n"
                       "Transfer-Encoding: chunked\r\n"
                       "\r\n"
                       "4\r\nWiki\r\n5\r\npedia\r\n0\r\nGrpc-Status: 0\r\n\r\n";
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_RESPONSE, 8192, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, resp), (ssize_t)strlen(resp));
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_TRUE(BODY_IS(r, "Wikipedia"));
    ASSERT_STR(pk_hdrs_get(&p.trailers, "grpc-status"), "0");
    pk_h1parser_free(&p);
}

static void test_response_to_head(void)
{
    /* A response to HEAD announces a length but has no body; the next response follows. */
    const char *first = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
    const char *second = "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno";
    char *all = pk_xasprintf("%s%s", first, second);
    struct rec r = {.skip_body = true};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_RESPONSE, 8192, &rec_cbs, &r);

    ssize_t n = feed_str(&p, all);
    CU_ASSERT_EQUAL(n, (ssize_t)strlen(first));
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_EQUAL(r.body_len, 0);
    CU_ASSERT_EQUAL(p.head.status, 200);

    r.skip_body = false;
    pk_h1parser_next(&p);
    CU_ASSERT_EQUAL(feed_str(&p, all + n), (ssize_t)strlen(second));
    CU_ASSERT_EQUAL(r.completes, 2);
    CU_ASSERT_EQUAL(p.head.status, 404);
    CU_ASSERT_TRUE(BODY_IS(r, "no"));
    pk_h1parser_free(&p);
    free(all);
}

static void test_response_no_body_statuses(void)
{
    static const char *const resps[] = {
        "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(resps); i++) {
        struct rec r = {0};
        struct pk_h1parser p;
        pk_h1parser_init(&p, HTTP_RESPONSE, 8192, &rec_cbs, &r);
        CU_ASSERT_EQUAL(feed_str(&p, resps[i]), (ssize_t)strlen(resps[i]));
        CU_ASSERT_EQUAL(r.completes, 1);
        CU_ASSERT_EQUAL(r.body_len, 0);
        CU_ASSERT_TRUE(p.keep_alive);
        pk_h1parser_free(&p);
    }
}

static void test_response_close_delimited(void)
{
    const char *resp = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome bytes";
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_RESPONSE, 8192, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, resp), (ssize_t)strlen(resp));
    CU_ASSERT_EQUAL(r.completes, 0);
    CU_ASSERT_FALSE(p.has_length);
    CU_ASSERT_FALSE(p.chunked);
    CU_ASSERT_FALSE(p.keep_alive);
    CU_ASSERT_EQUAL(feed_str(&p, " and more"), 9);
    CU_ASSERT_EQUAL(r.completes, 0);
    CU_ASSERT_EQUAL(pk_h1parser_eof(&p), 0);
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_TRUE(BODY_IS(r, "some bytes and more"));
    CU_ASSERT_EQUAL(p.error, PK_H1_OK);
    pk_h1parser_free(&p);

    /* HTTP/1.0 without a length: also until EOF. */
    memset(&r, 0, sizeof(r));
    pk_h1parser_init(&p, HTTP_RESPONSE, 8192, &rec_cbs, &r);
    CU_ASSERT(feed_str(&p, "HTTP/1.0 200 OK\r\n\r\nabc") > 0);
    CU_ASSERT_EQUAL(r.completes, 0);
    CU_ASSERT_EQUAL(pk_h1parser_eof(&p), 0);
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_TRUE(BODY_IS(r, "abc"));
    pk_h1parser_free(&p);
}

static void test_response_truncated(void)
{
    struct rec r = {0};
    struct pk_h1parser p;

    /* EOF inside a content-length body. */
    pk_h1parser_init(&p, HTTP_RESPONSE, 8192, &rec_cbs, &r);
    CU_ASSERT(feed_str(&p, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc") > 0);
    CU_ASSERT_EQUAL(pk_h1parser_eof(&p), -1);
    CU_ASSERT_EQUAL(p.error, PK_H1_MALFORMED);
    CU_ASSERT_EQUAL(r.completes, 0);
    pk_h1parser_free(&p);

    /* EOF inside a chunked body. */
    pk_h1parser_init(&p, HTTP_RESPONSE, 8192, &rec_cbs, &r);
    CU_ASSERT(feed_str(&p, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab") > 0);
    CU_ASSERT_EQUAL(pk_h1parser_eof(&p), -1);
    CU_ASSERT_EQUAL(r.completes, 0);
    pk_h1parser_free(&p);

    /* EOF inside the head. */
    memset(&r, 0, sizeof(r));
    pk_h1parser_init(&p, HTTP_RESPONSE, 8192, &rec_cbs, &r);
    CU_ASSERT(feed_str(&p, "HTTP/1.1 200 OK\r\nContent-Le") > 0);
    CU_ASSERT_EQUAL(pk_h1parser_eof(&p), -1);
    CU_ASSERT_EQUAL(r.heads, 0);
    pk_h1parser_free(&p);
}

static void test_response_interim_then_final(void)
{
    const char *interim = "HTTP/1.1 100 Continue\r\n\r\n";
    const char *final = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    char *all = pk_xasprintf("%s%s", interim, final);
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_RESPONSE, 8192, &rec_cbs, &r);
    ssize_t n = feed_str(&p, all);
    CU_ASSERT_EQUAL(n, (ssize_t)strlen(interim));
    CU_ASSERT_EQUAL(r.head_status, 100);
    CU_ASSERT_EQUAL(r.completes, 1);
    pk_h1parser_next(&p);
    CU_ASSERT_EQUAL(feed_str(&p, all + n), (ssize_t)strlen(final));
    CU_ASSERT_EQUAL(r.head_status, 200);
    CU_ASSERT_EQUAL(r.completes, 2);
    CU_ASSERT_TRUE(BODY_IS(r, "ok"));
    pk_h1parser_free(&p);
    free(all);
}

static void test_response_101(void)
{
    const char *head = "HTTP/1.1 101 Switching Protocols\r\n"
                       "Connection: Upgrade\r\n"
                       "Upgrade: websocket\r\n"
                       "\r\n";
    const char *leftover = "\x81\x02hi";
    char *all = pk_xasprintf("%s%s", head, leftover);
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_RESPONSE, 8192, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, all), (ssize_t)strlen(head));
    CU_ASSERT_EQUAL(p.head.status, 101);
    CU_ASSERT_TRUE(p.upgrade);
    CU_ASSERT_EQUAL(r.completes, 1);
    CU_ASSERT_EQUAL(r.body_len, 0);
    CU_ASSERT_EQUAL(feed_str(&p, leftover), 0);
    CU_ASSERT_EQUAL(p.error, PK_H1_OK);
    pk_h1parser_free(&p);
    free(all);
}

/* ---- writers ------------------------------------------------------------------------ */

/* Returns the buffer's content as a new string and empties it. */
static char *take(struct evbuffer *b)
{
    size_t len = evbuffer_get_length(b);
    char *s = pk_xmalloc(len + 1);
    evbuffer_remove(b, s, len);
    s[len] = '\0';
    return s;
}

#define ASSERT_OUT(buf, expected)                                                                  \
    do {                                                                                           \
        char *got_ = take(buf);                                                                    \
        ASSERT_STR(got_, expected);                                                                \
        free(got_);                                                                                \
    } while (0)

static void test_write_request_head(void)
{
    struct evbuffer *out = evbuffer_new();
    struct pk_head h;
    pk_head_init(&h);
    pk_head_set(&h.method, "POST", 4);
    pk_head_set(&h.path, "/p?q=1", 6);
    pk_head_set(&h.authority, "example.com:8080", 16);
    pk_hdrs_add_str(&h.hdrs, "Accept", "*/*");
    pk_hdrs_add_str(&h.hdrs, "x-a", "b");
    pk_h1_write_request_head(out, &h);
    ASSERT_OUT(out, "POST /p?q=1 HTTP/1.1\r\n"
                    "host: example.com:8080\r\n"
                    "accept: */*\r\n"
                    "x-a: b\r\n"
                    "\r\n");

    /* No path: "/"; no authority: no host field. */
    pk_head_set(&h.path, NULL, 0);
    pk_head_set(&h.authority, NULL, 0);
    pk_hdrs_free(&h.hdrs);
    pk_h1_write_request_head(out, &h);
    ASSERT_OUT(out, "POST / HTTP/1.1\r\n\r\n");
    pk_head_free(&h);
    evbuffer_free(out);
}

static void test_write_response_head(void)
{
    struct evbuffer *out = evbuffer_new();
    struct pk_head h;
    pk_head_init(&h);
    h.status = 200;
    pk_hdrs_add_str(&h.hdrs, "content-length", "5");
    pk_hdrs_add_str(&h.hdrs, "X-Y", "z");
    pk_h1_write_response_head(out, &h, 1);
    ASSERT_OUT(out, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-y: z\r\n\r\n");

    pk_hdrs_free(&h.hdrs);
    h.status = 404;
    pk_h1_write_response_head(out, &h, 0);
    ASSERT_OUT(out, "HTTP/1.0 404 Not Found\r\n\r\n");

    h.status = 299;
    pk_h1_write_response_head(out, &h, 1);
    ASSERT_OUT(out, "HTTP/1.1 299 Status\r\n\r\n");

    h.status = 502;
    pk_h1_write_response_head(out, &h, 1);
    ASSERT_OUT(out, "HTTP/1.1 502 Bad Gateway\r\n\r\n");
    pk_head_free(&h);
    evbuffer_free(out);
}

static void test_reason(void)
{
    ASSERT_STR(pk_h1_reason(101), "Switching Protocols");
    ASSERT_STR(pk_h1_reason(200), "OK");
    ASSERT_STR(pk_h1_reason(204), "No Content");
    ASSERT_STR(pk_h1_reason(400), "Bad Request");
    ASSERT_STR(pk_h1_reason(431), "Request Header Fields Too Large");
    ASSERT_STR(pk_h1_reason(503), "Service Unavailable");
    ASSERT_STR(pk_h1_reason(504), "Gateway Timeout");
    ASSERT_STR(pk_h1_reason(599), "Status");
}

static void test_write_chunks(void)
{
    struct evbuffer *out = evbuffer_new();
    struct evbuffer *data = evbuffer_new();

    evbuffer_add(data, "hello world!", 12);
    pk_h1_write_chunk(out, data, 5);
    ASSERT_OUT(out, "5\r\nhello\r\n");
    CU_ASSERT_EQUAL(evbuffer_get_length(data), 7);
    pk_h1_write_chunk(out, data, 7);
    ASSERT_OUT(out, "7\r\n world!\r\n");
    CU_ASSERT_EQUAL(evbuffer_get_length(data), 0);

    /* Sizes are hex. */
    char big[300];
    memset(big, 'x', sizeof(big));
    evbuffer_add(data, big, sizeof(big));
    pk_h1_write_chunk(out, data, sizeof(big));
    char *s = take(out);
    CU_ASSERT_EQUAL(strncmp(s, "12c\r\nxxx", 8), 0);
    CU_ASSERT_EQUAL(strlen(s), 5 + 300 + 2);
    ASSERT_STR(s + 5 + 300, "\r\n");
    free(s);

    /* A zero-length chunk would end the body: nothing is written. */
    evbuffer_add(data, "abc", 3);
    pk_h1_write_chunk(out, data, 0);
    CU_ASSERT_EQUAL(evbuffer_get_length(out), 0);
    CU_ASSERT_EQUAL(evbuffer_get_length(data), 3);

    pk_h1_write_last_chunk(out, NULL);
    ASSERT_OUT(out, "0\r\n\r\n");

    struct pk_hdrs t;
    pk_hdrs_init(&t);
    pk_h1_write_last_chunk(out, &t);
    ASSERT_OUT(out, "0\r\n\r\n");
    pk_hdrs_add_str(&t, "X-Checksum", "abc");
    pk_hdrs_add_str(&t, "grpc-status", "0");
    pk_h1_write_last_chunk(out, &t);
    ASSERT_OUT(out, "0\r\nx-checksum: abc\r\ngrpc-status: 0\r\n\r\n");
    pk_hdrs_free(&t);
    evbuffer_free(data);
    evbuffer_free(out);
}

/* What the writers produce, the parser reads back. */
static void test_write_parse_roundtrip(void)
{
    struct evbuffer *out = evbuffer_new();
    struct evbuffer *data = evbuffer_new();
    struct pk_head h;
    pk_head_init(&h);
    pk_head_set(&h.method, "PUT", 3);
    pk_head_set(&h.path, "/obj", 4);
    pk_head_set(&h.authority, "store", 5);
    pk_hdrs_add_str(&h.hdrs, "transfer-encoding", "chunked");
    pk_h1_write_request_head(out, &h);
    evbuffer_add(data, "0123456789abcdefghij", 20);
    pk_h1_write_chunk(out, data, 10);
    pk_h1_write_chunk(out, data, 10);
    struct pk_hdrs t;
    pk_hdrs_init(&t);
    pk_hdrs_add_str(&t, "x-sum", "42");
    pk_h1_write_last_chunk(out, &t);

    char *wire = take(out);
    struct rec r = {0};
    struct pk_h1parser p;
    pk_h1parser_init(&p, HTTP_REQUEST, 8192, &rec_cbs, &r);
    CU_ASSERT_EQUAL(feed_str(&p, wire), (ssize_t)strlen(wire));
    CU_ASSERT_EQUAL(r.completes, 1);
    ASSERT_STR(p.head.method, "PUT");
    ASSERT_STR(p.head.path, "/obj");
    ASSERT_STR(pk_hdrs_get(&p.head.hdrs, "host"), "store");
    CU_ASSERT_TRUE(p.chunked);
    CU_ASSERT_TRUE(BODY_IS(r, "0123456789abcdefghij"));
    ASSERT_STR(pk_hdrs_get(&p.trailers, "x-sum"), "42");
    pk_h1parser_free(&p);
    free(wire);
    pk_hdrs_free(&t);
    pk_head_free(&h);
    evbuffer_free(data);
    evbuffer_free(out);
}

/* ---- hop-by-hop --------------------------------------------------------------------- */

static void add_hop_fields(struct pk_hdrs *h)
{
    pk_hdrs_add_str(h, "Connection", "keep-alive, X-Custom");
    pk_hdrs_add_str(h, "X-Custom", "1");
    pk_hdrs_add_str(h, "Keep-Alive", "timeout=5");
    pk_hdrs_add_str(h, "Proxy-Connection", "keep-alive");
    pk_hdrs_add_str(h, "Transfer-Encoding", "chunked");
    pk_hdrs_add_str(h, "Upgrade", "websocket");
    pk_hdrs_add_str(h, "Host", "example.com");
    pk_hdrs_add_str(h, "X-Keep", "y");
    pk_hdrs_add_str(h, "connection", "X-SECOND"); /* a second Connection field */
    pk_hdrs_add_str(h, "x-second", "2");
    pk_hdrs_add_str(h, "Content-Length", "3");
}

static void test_strip_hop_by_hop(void)
{
    struct pk_hdrs h;
    pk_hdrs_init(&h);
    add_hop_fields(&h);
    pk_hdrs_add_str(&h, "TE", "trailers");
    pk_h1_strip_hop_by_hop(&h, false);
    CU_ASSERT_EQUAL_FATAL(h.n, 2);
    ASSERT_STR(h.v[0].name, "x-keep");
    ASSERT_STR(h.v[1].name, "content-length");
    CU_ASSERT_EQUAL(h.bytes, 6 + 1 + 14 + 1);
    pk_hdrs_free(&h);

    /* te: trailers is kept when asked. */
    pk_hdrs_init(&h);
    add_hop_fields(&h);
    pk_hdrs_add_str(&h, "TE", "trailers");
    pk_h1_strip_hop_by_hop(&h, true);
    CU_ASSERT_EQUAL(h.n, 3);
    ASSERT_STR(pk_hdrs_get(&h, "te"), "trailers");
    CU_ASSERT_PTR_NOT_NULL(pk_hdrs_get(&h, "x-keep"));
    CU_ASSERT_PTR_NULL(pk_hdrs_get(&h, "host"));
    CU_ASSERT_PTR_NULL(pk_hdrs_get(&h, "x-custom"));
    CU_ASSERT_PTR_NULL(pk_hdrs_get(&h, "x-second"));
    pk_hdrs_free(&h);
}

static void test_strip_te(void)
{
    struct pk_hdrs h;

    /* Any other TE goes, even when trailers are allowed. */
    pk_hdrs_init(&h);
    pk_hdrs_add_str(&h, "te", "gzip");
    pk_h1_strip_hop_by_hop(&h, true);
    CU_ASSERT_PTR_NULL(pk_hdrs_get(&h, "te"));
    pk_hdrs_free(&h);

    /* Case-insensitive value. */
    pk_hdrs_init(&h);
    pk_hdrs_add_str(&h, "te", "Trailers");
    pk_h1_strip_hop_by_hop(&h, true);
    CU_ASSERT_PTR_NOT_NULL(pk_hdrs_get(&h, "te"));
    pk_hdrs_free(&h);

    /* "Connection: TE" (as RFC 9110 asks of senders of TE) does not defeat keeping it. */
    pk_hdrs_init(&h);
    pk_hdrs_add_str(&h, "Connection", "TE");
    pk_hdrs_add_str(&h, "TE", "trailers");
    pk_h1_strip_hop_by_hop(&h, true);
    CU_ASSERT_EQUAL(h.n, 1);
    ASSERT_STR(pk_hdrs_get(&h, "te"), "trailers");
    pk_hdrs_free(&h);

    pk_hdrs_init(&h);
    pk_hdrs_add_str(&h, "Connection", "TE");
    pk_hdrs_add_str(&h, "TE", "trailers");
    pk_h1_strip_hop_by_hop(&h, false);
    CU_ASSERT_EQUAL(h.n, 0);
    pk_hdrs_free(&h);

    /* Nothing to strip: untouched. */
    pk_hdrs_init(&h);
    pk_hdrs_add_str(&h, "a", "1");
    pk_hdrs_add_str(&h, "b", "2");
    pk_h1_strip_hop_by_hop(&h, false);
    CU_ASSERT_EQUAL(h.n, 2);
    pk_hdrs_free(&h);
}

void pk_test_register_http1(void)
{
    CU_pSuite s = CU_add_suite("http1", NULL, NULL);

    CU_add_test(s, "simple_get", test_simple_get);
    CU_add_test(s, "json_error_body_escapes", test_json_error_body_escapes);
    CU_add_test(s, "feed_evbuffer_segments", test_feed_evbuffer_segments);
    CU_add_test(s, "smuggling", test_smuggling);
    CU_add_test(s, "other_methods_and_forms", test_other_methods_and_forms);
    CU_add_test(s, "absolute_form", test_absolute_form);
    CU_add_test(s, "absolute_form_ipv6_port", test_absolute_form_ipv6_port);
    CU_add_test(s, "connect_target", test_connect_target);
    CU_add_test(s, "header_ows_trimmed", test_header_ows_trimmed);
    CU_add_test(s, "bytewise_feed", test_bytewise_feed);
    CU_add_test(s, "head_limit_independent_of_segmentation",
                test_head_limit_independent_of_segmentation);
    CU_add_test(s, "content_length_body", test_content_length_body);
    CU_add_test(s, "content_length_zero", test_content_length_zero);
    CU_add_test(s, "chunked_body_and_trailers", test_chunked_body_and_trailers);
    CU_add_test(s, "chunked_without_trailers", test_chunked_without_trailers);
    CU_add_test(s, "pipelined", test_pipelined);
    CU_add_test(s, "head_too_large", test_head_too_large);
    CU_add_test(s, "malformed", test_malformed);
    CU_add_test(s, "request_line_version", test_request_line_version);
    CU_add_test(s, "field_name_chars", test_field_name_chars);
    CU_add_test(s, "upgrade_request", test_upgrade_request);
    CU_add_test(s, "response_content_length", test_response_content_length);
    CU_add_test(s, "response_chunked", test_response_chunked);
    CU_add_test(s, "response_to_head", test_response_to_head);
    CU_add_test(s, "response_no_body_statuses", test_response_no_body_statuses);
    CU_add_test(s, "response_close_delimited", test_response_close_delimited);
    CU_add_test(s, "response_truncated", test_response_truncated);
    CU_add_test(s, "response_interim_then_final", test_response_interim_then_final);
    CU_add_test(s, "response_101", test_response_101);
    CU_add_test(s, "write_request_head", test_write_request_head);
    CU_add_test(s, "write_response_head", test_write_response_head);
    CU_add_test(s, "reason", test_reason);
    CU_add_test(s, "write_chunks", test_write_chunks);
    CU_add_test(s, "write_parse_roundtrip", test_write_parse_roundtrip);
    CU_add_test(s, "strip_hop_by_hop", test_strip_hop_by_hop);
    CU_add_test(s, "strip_te", test_strip_te);
    CU_add_test(s, "pump_body", test_pump_body);
    CU_add_test(s, "absolute_form_ipv6_port_no_path", test_absolute_form_ipv6_port_no_path);
}
