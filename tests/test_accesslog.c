/* Unit tests for lib/accesslog: the header allow and block lists (credentials never
 * logged), the checks of the lists' values, and the ring behind /status/requests (newest
 * first, the last PK_ACCESS_RING records, long values cut). The e2e suite checks the log
 * lines against a real workload. */
#include "accesslog/accesslog.h"

#include "base/base.h"
#include "stream/head.h"

#include <CUnit/CUnit.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

void pk_test_register_accesslog(void);

static void test_header_lists(void)
{
    struct pk_access_opts o = {.request_headers = "*",
                               .response_headers = "Content-Type, x-cache",
                               .block_headers = "x-secret"};
    struct pk_accesslog *l = pk_accesslog_new(&o, NULL);
    CU_ASSERT_TRUE(pk_accesslog_header_allowed(l, "user-agent", false));
    CU_ASSERT_TRUE(pk_accesslog_header_allowed(l, "X-Trace", false));
    CU_ASSERT_FALSE(pk_accesslog_header_allowed(l, "X-Secret", false));
    /* Credentials never, even with "*". */
    CU_ASSERT_FALSE(pk_accesslog_header_allowed(l, "Authorization", false));
    CU_ASSERT_FALSE(pk_accesslog_header_allowed(l, "cookie", false));
    CU_ASSERT_FALSE(pk_accesslog_header_allowed(l, "x-piko-authorization", false));
    CU_ASSERT_FALSE(pk_accesslog_header_allowed(l, "proxy-authorization", false));
    CU_ASSERT_TRUE(pk_accesslog_header_allowed(l, "content-type", true));
    CU_ASSERT_TRUE(pk_accesslog_header_allowed(l, "X-Cache", true));
    CU_ASSERT_FALSE(pk_accesslog_header_allowed(l, "etag", true));
    CU_ASSERT_FALSE(pk_accesslog_header_allowed(l, "set-cookie", true));
    pk_accesslog_del(l);

    struct pk_access_opts none = {0};
    l = pk_accesslog_new(&none, NULL);
    CU_ASSERT_FALSE(pk_accesslog_header_allowed(l, "user-agent", false));
    CU_ASSERT_FALSE(pk_accesslog_wants_request_headers(l));
    pk_accesslog_del(l);
}

static void test_check_names_the_key(void)
{
    char err[256];
    struct pk_access_opts o = {.request_headers = "a,b c"};
    CU_ASSERT_NOT_EQUAL(pk_accesslog_check(&o, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "log.access-request-headers"));
    struct pk_access_opts b = {.block_headers = "*"};
    CU_ASSERT_NOT_EQUAL(pk_accesslog_check(&b, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "log.access-block-headers"));
    struct pk_access_opts ok = {.request_headers = " user-agent , x-trace ,",
                                .response_headers = "*",
                                .block_headers = "x-secret"};
    CU_ASSERT_EQUAL(pk_accesslog_check(&ok, err, sizeof(err)), 0);
}

static void test_ring_newest_first(void)
{
    struct pk_access_opts o = {.node = "n1"};
    struct pk_accesslog *l = pk_accesslog_new(&o, NULL);
    struct json_object *a = pk_accesslog_recent_json(l);
    CU_ASSERT_EQUAL(json_object_array_length(a), 0);
    json_object_put(a);
    char path[32], longpath[2000];
    memset(longpath, 'p', sizeof(longpath) - 1);
    longpath[0] = '/';
    longpath[sizeof(longpath) - 1] = '\0';
    for (int i = 0; i < PK_ACCESS_RING + 20; i++) {
        snprintf(path, sizeof(path), "/r%d", i);
        struct pk_access_rec r = {.kind = "http",
                                  .endpoint = "ep",
                                  .method = "GET",
                                  .path = i == PK_ACCESS_RING + 19 ? longpath : path,
                                  .status = 200 + i % 2,
                                  .bytes_in = (uint64_t)i,
                                  .duration_us = 1500,
                                  .route = "tunnel"};
        pk_accesslog_add(l, &r);
    }
    a = pk_accesslog_recent_json(l);
    CU_ASSERT_EQUAL(json_object_array_length(a), PK_ACCESS_RING);
    struct json_object *first = json_object_array_get_idx(a, 0), *last, *v;
    CU_ASSERT_TRUE(json_object_object_get_ex(first, "path", &v));
    CU_ASSERT_TRUE(strlen(json_object_get_string(v)) < sizeof(longpath) - 1); /* cut */
    CU_ASSERT_TRUE(json_object_object_get_ex(first, "node", &v));
    CU_ASSERT_STRING_EQUAL(json_object_get_string(v), "n1");
    CU_ASSERT_TRUE(json_object_object_get_ex(first, "duration_ms", &v));
    CU_ASSERT_DOUBLE_EQUAL(json_object_get_double(v), 1.5, 1e-9);
    last = json_object_array_get_idx(a, PK_ACCESS_RING - 1);
    CU_ASSERT_TRUE(json_object_object_get_ex(last, "path", &v));
    CU_ASSERT_STRING_EQUAL(json_object_get_string(v), "/r20");
    CU_ASSERT_TRUE(json_object_object_get_ex(last, "bytes_in", &v));
    CU_ASSERT_EQUAL(json_object_get_int64(v), 20);
    CU_ASSERT_FALSE(json_object_object_get_ex(last, "error", &v)); /* empty: left out */
    json_object_put(a);
    pk_accesslog_del(l);
}

void pk_test_register_accesslog(void)
{
    CU_pSuite s = CU_add_suite("accesslog", NULL, NULL);
    CU_add_test(s, "header allow and block lists", test_header_lists);
    CU_add_test(s, "list checks name the key", test_check_names_the_key);
    CU_add_test(s, "ring newest first, bounded, cut", test_ring_newest_first);
}
