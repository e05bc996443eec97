/* Unit tests for lib/base: endpoint ids, case-insensitive comparisons, allocation helpers,
 * log level parsing, error strings and time formatting. */
#include "base/base.h"
#include "base/log.h"

#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void pk_test_register_base(void);

/* String equality that fails (instead of crashing) when actual is NULL. */
#define ASSERT_STR(actual, expected)                                                               \
    do {                                                                                           \
        const char *a_ = (actual), *e_ = (expected);                                               \
        CU_assertImplementation(a_ != NULL && strcmp(a_, e_) == 0, __LINE__,                       \
                                "ASSERT_STR(" #actual ", " #expected ")", __FILE__, "", CU_FALSE); \
    } while (0)

static void test_endpoint_id_lengths(void)
{
    char buf[200];

    memset(buf, 'a', sizeof(buf));
    CU_ASSERT_FALSE(pk_endpoint_id_valid(buf, 0));
    CU_ASSERT_FALSE(pk_endpoint_id_valid("", 0));
    CU_ASSERT_TRUE(pk_endpoint_id_valid(buf, 1));
    CU_ASSERT_TRUE(pk_endpoint_id_valid(buf, 127));
    CU_ASSERT_TRUE(pk_endpoint_id_valid(buf, 128));
    CU_ASSERT_FALSE(pk_endpoint_id_valid(buf, 129));
    CU_ASSERT_FALSE(pk_endpoint_id_valid(buf, sizeof(buf)));
}

static void test_endpoint_id_chars(void)
{
    CU_ASSERT_TRUE(pk_endpoint_id_valid("my-endpoint", 11));
    CU_ASSERT_TRUE(pk_endpoint_id_valid("A.b_C-9", 7));
    CU_ASSERT_TRUE(pk_endpoint_id_valid("0123456789", 10));
    CU_ASSERT_TRUE(pk_endpoint_id_valid("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 26));
    CU_ASSERT_TRUE(pk_endpoint_id_valid("abcdefghijklmnopqrstuvwxyz", 26));
    CU_ASSERT_TRUE(pk_endpoint_id_valid("...", 3));
    CU_ASSERT_TRUE(pk_endpoint_id_valid("-_", 2));

    /* Every character outside [A-Za-z0-9._-] is refused, alone and inside a valid id. */
    for (int c = 0; c < 256; c++) {
        bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '.' || c == '_' || c == '-';
        char one[1] = {(char)c};
        char mid[3] = {'a', (char)c, 'b'};
        CU_ASSERT_EQUAL(pk_endpoint_id_valid(one, 1), allowed);
        CU_ASSERT_EQUAL(pk_endpoint_id_valid(mid, 3), allowed);
    }
    CU_ASSERT_FALSE(pk_endpoint_id_valid("a/b", 3));
    CU_ASSERT_FALSE(pk_endpoint_id_valid("a b", 3));
    CU_ASSERT_FALSE(pk_endpoint_id_valid("a:b", 3));
    CU_ASSERT_FALSE(pk_endpoint_id_valid("caf\xc3\xa9", 5));

    /* Only len bytes are looked at: a bad byte past len does not matter. */
    CU_ASSERT_TRUE(pk_endpoint_id_valid("abc/def", 3));
    CU_ASSERT_FALSE(pk_endpoint_id_valid("abc/def", 4));
}

/* pk_strcopy and pk_hostport give what snprintf gave, cut the same way. */
static void test_strcopy_hostport(void)
{
    char buf[8], want[8];
    CU_ASSERT_STRING_EQUAL(pk_strcopy(buf, sizeof(buf), "abc"), "abc");
    CU_ASSERT_STRING_EQUAL(pk_strcopy(buf, sizeof(buf), NULL), "");
    CU_ASSERT_STRING_EQUAL(pk_strcopy(buf, sizeof(buf), "abcdefghij"), "abcdefg");
    CU_ASSERT_STRING_EQUAL(pk_strcopy(buf, 1, "abc"), "");

    unsigned long long nums[] = {0, 7, 10, 200, 65535, 18446744073709551615ull};
    for (size_t i = 0; i < PK_ARRAY_LEN(nums); i++) {
        char got[24], w[24];
        snprintf(w, sizeof(w), "%llu", nums[i]);
        CU_ASSERT_STRING_EQUAL(pk_utoa(got, sizeof(got), nums[i]), w);
    }

    const char *hosts[] = {"127.0.0.1", "::1", "h", "fe80::1:2:3", ""};
    unsigned ports[] = {0, 7, 80, 65535};
    for (size_t i = 0; i < PK_ARRAY_LEN(hosts); i++) {
        for (size_t j = 0; j < PK_ARRAY_LEN(ports); j++) {
            char big[64], wbig[64];
            const char *fmt = strchr(hosts[i], ':') ? "[%s]:%u" : "%s:%u";
            snprintf(wbig, sizeof(wbig), fmt, hosts[i], ports[j]);
            CU_ASSERT_STRING_EQUAL(pk_hostport(big, sizeof(big), hosts[i], ports[j]), wbig);
            snprintf(want, sizeof(want), fmt, hosts[i], ports[j]);
            CU_ASSERT_STRING_EQUAL(pk_hostport(buf, sizeof(buf), hosts[i], ports[j]), want);
        }
    }
}

static void test_strcaseeq(void)
{
    CU_ASSERT_TRUE(pk_strcaseeq("", ""));
    CU_ASSERT_TRUE(pk_strcaseeq("Content-Length", "content-length"));
    CU_ASSERT_TRUE(pk_strcaseeq("KEEP-ALIVE", "keep-alive"));
    CU_ASSERT_TRUE(pk_strcaseeq("a1_-.", "A1_-."));
    CU_ASSERT_FALSE(pk_strcaseeq("abc", "abd"));
    CU_ASSERT_FALSE(pk_strcaseeq("abc", "abcd"));
    CU_ASSERT_FALSE(pk_strcaseeq("abcd", "abc"));
    CU_ASSERT_FALSE(pk_strcaseeq("", "a"));
    CU_ASSERT_FALSE(pk_strcaseeq("a", ""));
    /* ASCII only: '@' (0x40) and '`' (0x60) are not the case pair of anything. */
    CU_ASSERT_FALSE(pk_strcaseeq("@", "`"));
    CU_ASSERT_FALSE(pk_strcaseeq("[", "{"));
    CU_ASSERT_FALSE(pk_strcaseeq("\xc3\x89", "\xc3\xa9"));
}

static void test_memcaseeq(void)
{
    /* a is not NUL-terminated: only alen bytes count, and b must end right there. */
    const char *a = "Upgradexyz";
    CU_ASSERT_TRUE(pk_memcaseeq(a, 7, "upgrade"));
    CU_ASSERT_TRUE(pk_memcaseeq(a, 7, "UPGRADE"));
    CU_ASSERT_FALSE(pk_memcaseeq(a, 7, "upgrad"));
    CU_ASSERT_FALSE(pk_memcaseeq(a, 7, "upgradex"));
    CU_ASSERT_FALSE(pk_memcaseeq(a, 6, "upgrade"));
    CU_ASSERT_TRUE(pk_memcaseeq(a, 0, ""));
    CU_ASSERT_FALSE(pk_memcaseeq(a, 0, "u"));
    CU_ASSERT_TRUE(pk_memcaseeq("TE", 2, "te"));
}

static void test_xasprintf(void)
{
    char *s = pk_xasprintf("%s=%d/%zu/%llx", "key", -42, (size_t)7, 0xabcULL);
    ASSERT_STR(s, "key=-42/7/abc");
    free(s);

    s = pk_xasprintf("%s", "");
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    ASSERT_STR(s, "");
    free(s);

    char big[5000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    s = pk_xasprintf("[%s]", big);
    CU_ASSERT_EQUAL(strlen(s), sizeof(big) + 1);
    CU_ASSERT_EQUAL(s[0], '[');
    CU_ASSERT_EQUAL(s[sizeof(big)], ']');
    free(s);
}

static void test_xstrndup(void)
{
    char *s = pk_xstrndup("abcdef", 3);
    ASSERT_STR(s, "abc");
    free(s);
    s = pk_xstrndup("abc", 0);
    ASSERT_STR(s, "");
    free(s);
    s = pk_xstrdup("hello");
    ASSERT_STR(s, "hello");
    free(s);
}

static void test_log_parse_level(void)
{
    enum pk_log_level lv = PK_LOG_ERROR;

    CU_ASSERT_EQUAL(pk_log_parse_level("debug", &lv), 0);
    CU_ASSERT_EQUAL(lv, PK_LOG_DEBUG);
    CU_ASSERT_EQUAL(pk_log_parse_level("info", &lv), 0);
    CU_ASSERT_EQUAL(lv, PK_LOG_INFO);
    CU_ASSERT_EQUAL(pk_log_parse_level("warn", &lv), 0);
    CU_ASSERT_EQUAL(lv, PK_LOG_WARN);
    CU_ASSERT_EQUAL(pk_log_parse_level("error", &lv), 0);
    CU_ASSERT_EQUAL(lv, PK_LOG_ERROR);
    CU_ASSERT_EQUAL(pk_log_parse_level("DEBUG", &lv), 0);
    CU_ASSERT_EQUAL(lv, PK_LOG_DEBUG);
    CU_ASSERT_EQUAL(pk_log_parse_level("Warn", &lv), 0);
    CU_ASSERT_EQUAL(lv, PK_LOG_WARN);

    /* Failures leave the output alone. */
    lv = PK_LOG_INFO;
    CU_ASSERT_EQUAL(pk_log_parse_level("", &lv), PK_ERR_INVALID);
    CU_ASSERT_EQUAL(pk_log_parse_level("warning", &lv), PK_ERR_INVALID);
    CU_ASSERT_EQUAL(pk_log_parse_level("err", &lv), PK_ERR_INVALID);
    CU_ASSERT_EQUAL(pk_log_parse_level("trace", &lv), PK_ERR_INVALID);
    CU_ASSERT_EQUAL(pk_log_parse_level(" info", &lv), PK_ERR_INVALID);
    CU_ASSERT_EQUAL(pk_log_parse_level("info ", &lv), PK_ERR_INVALID);
    CU_ASSERT_EQUAL(lv, PK_LOG_INFO);
}

static void test_log_check_and_subsystems(void)
{
    char err[256];
    CU_ASSERT_EQUAL(pk_log_check("info", "json", "proxy, cluster", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(pk_log_check("info", "xml", "", err, sizeof(err)), PK_ERR_INVALID);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "log.format"));
    CU_ASSERT_EQUAL(pk_log_check("loud", "text", "", err, sizeof(err)), PK_ERR_INVALID);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "log.level"));
    CU_ASSERT_EQUAL(pk_log_check("info", "text", "proxy,Bad Name", err, sizeof(err)),
                    PK_ERR_INVALID);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "log.subsystems"));

    enum pk_log_level saved = pk_log_min_level;
    CU_ASSERT_EQUAL(pk_log_configure("warn", "text", " proxy ,cluster", err, sizeof(err)), 0);
    CU_ASSERT_TRUE(pk_log_enabled(PK_LOG_DEBUG, "proxy"));
    CU_ASSERT_TRUE(pk_log_enabled(PK_LOG_DEBUG, "cluster"));
    CU_ASSERT_FALSE(pk_log_enabled(PK_LOG_INFO, "upstream"));
    CU_ASSERT_TRUE(pk_log_enabled(PK_LOG_WARN, "upstream"));
    CU_ASSERT_FALSE(pk_log_enabled(PK_LOG_INFO, "prox"));
    CU_ASSERT_EQUAL(pk_log_configure("info", "text", "", err, sizeof(err)), 0);
    CU_ASSERT_FALSE(pk_log_enabled(PK_LOG_DEBUG, "proxy"));
    pk_log_set_level(saved);
}

static void test_log_set_level(void)
{
    enum pk_log_level saved = pk_log_min_level;
    pk_log_set_level(PK_LOG_WARN);
    CU_ASSERT_EQUAL(pk_log_min_level, PK_LOG_WARN);
    pk_log_set_level(PK_LOG_DEBUG);
    CU_ASSERT_EQUAL(pk_log_min_level, PK_LOG_DEBUG);
    pk_log_set_level(saved);
}

/* Runs fn with stderr redirected to a temporary file; returns what was written. */
static char *capture_stderr(void (*fn)(void))
{
    char path[] = "/tmp/piko-log-test-XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    fn();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    off_t len = lseek(fd, 0, SEEK_END);
    char *out = pk_xmalloc((size_t)len + 1);
    CU_ASSERT_EQUAL(pread(fd, out, (size_t)len, 0), len);
    out[len] = '\0';
    close(fd);
    return out;
}

static void log_short(void)
{
    pk_log_write(PK_LOG_WARN, "tunnel", "endpoint=%s streams=%d", "ep-1", 3);
}

static void log_long(void)
{
    char big[5000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    pk_log_write(PK_LOG_ERROR, "h2", "%s", big);
}

static void log_filtered(void)
{
    enum pk_log_level saved = pk_log_min_level;
    pk_log_set_level(PK_LOG_WARN);
    PK_DEBUG("x", "debug %d", 1);
    PK_INFO("x", "info %d", 2);
    PK_WARN("x", "warn %d", 3);
    PK_ERROR("x", "error %d", 4);
    pk_log_set_level(saved);
}

static void test_log_write(void)
{
    char *out = capture_stderr(log_short);
    /* "2026-01-02T03:04:05.678Z warn  tunnel   endpoint=ep-1 streams=3\n" */
    size_t len = strlen(out);
    CU_ASSERT(len > 25);
    CU_ASSERT_EQUAL(out[4], '-');
    CU_ASSERT_EQUAL(out[10], 'T');
    CU_ASSERT_EQUAL(out[23], 'Z');
    ASSERT_STR(out + 24, " warn  tunnel   endpoint=ep-1 streams=3\n");
    free(out);

    /* A message longer than the line buffer is cut, and the line still ends in one \n. */
    out = capture_stderr(log_long);
    len = strlen(out);
    CU_ASSERT(len > 1000 && len < 5000);
    CU_ASSERT_EQUAL(out[len - 1], '\n');
    CU_ASSERT_PTR_EQUAL(strchr(out, '\n'), out + len - 1);
    CU_ASSERT_EQUAL(out[len - 2], 'x');
    free(out);

    /* Below the level nothing is written. */
    out = capture_stderr(log_filtered);
    CU_ASSERT_PTR_NULL(strstr(out, "debug 1"));
    CU_ASSERT_PTR_NULL(strstr(out, "info 2"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, " warn  x        warn 3\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, " error x        error 4\n"));
    free(out);
}

static void test_strerror(void)
{
    static const struct {
        int code;
        const char *text;
    } cases[] = {
        {PK_OK, "success"},
        {PK_ERR_INVALID, "invalid argument"},
        {PK_ERR_NOMEM, "buffer full"},
        {PK_ERR_IO, "i/o error"},
        {PK_ERR_NOTFOUND, "not found"},
        {PK_ERR_TIMEOUT, "timed out"},
        {PK_ERR_PROTOCOL, "protocol error"},
        {PK_ERR_CLOSED, "closed"},
        {PK_ERR_TOO_LARGE, "too large"},
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(cases); i++) {
        const char *s = pk_strerror(cases[i].code);
        CU_ASSERT_PTR_NOT_NULL_FATAL(s);
        ASSERT_STR(s, cases[i].text);
        /* Every known code has its own text. */
        for (size_t j = 0; j < i; j++)
            CU_ASSERT_STRING_NOT_EQUAL(s, pk_strerror(cases[j].code));
        CU_ASSERT_STRING_NOT_EQUAL(s, "unknown error");
    }
    ASSERT_STR(pk_strerror(-9), "unknown error");
    ASSERT_STR(pk_strerror(1), "unknown error");
    ASSERT_STR(pk_strerror(-1000), "unknown error");
}

static void test_minmax(void)
{
    CU_ASSERT_EQUAL(PK_MIN(3, 5), 3);
    CU_ASSERT_EQUAL(PK_MAX(3, 5), 5);
    CU_ASSERT_EQUAL(PK_MIN(-1, 1), -1);
    int arr[7];
    CU_ASSERT_EQUAL(PK_ARRAY_LEN(arr), 7);
}

static void test_now_ms_monotonic(void)
{
    uint64_t a = pk_now_ms();
    uint64_t b = pk_now_ms();
    CU_ASSERT(a > 0);
    CU_ASSERT(b >= a);
}

static void test_rfc3339(void)
{
    char buf[32];
    ASSERT_STR(pk_rfc3339(buf, sizeof(buf), 0), "1970-01-01T00:00:00.000Z");
    ASSERT_STR(pk_rfc3339(buf, sizeof(buf), 1796674703480LL), "2026-12-07T20:18:23.480Z");
    ASSERT_STR(pk_rfc3339(buf, sizeof(buf), -1), "1969-12-31T23:59:59.999Z");
    CU_ASSERT(pk_unix_ms() > 1700000000000LL);
}

void pk_test_register_base(void)
{
    CU_pSuite s = CU_add_suite("base", NULL, NULL);

    CU_add_test(s, "endpoint_id_lengths", test_endpoint_id_lengths);
    CU_add_test(s, "endpoint_id_chars", test_endpoint_id_chars);
    CU_add_test(s, "strcopy_hostport", test_strcopy_hostport);
    CU_add_test(s, "strcaseeq", test_strcaseeq);
    CU_add_test(s, "memcaseeq", test_memcaseeq);
    CU_add_test(s, "xasprintf", test_xasprintf);
    CU_add_test(s, "xstrndup", test_xstrndup);
    CU_add_test(s, "log_parse_level", test_log_parse_level);
    CU_add_test(s, "log_check_and_subsystems", test_log_check_and_subsystems);
    CU_add_test(s, "log_set_level", test_log_set_level);
    CU_add_test(s, "log_write", test_log_write);
    CU_add_test(s, "strerror", test_strerror);
    CU_add_test(s, "minmax", test_minmax);
    CU_add_test(s, "now_ms_monotonic", test_now_ms_monotonic);
    CU_add_test(s, "rfc3339", test_rfc3339);
}
