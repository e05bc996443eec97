/* Tests for lib/cluster/state: the routing state document, the join list and the
 * weighted choice. */
#include "base/base.h"
#include "cluster/state.h"

#include <CUnit/CUnit.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pk_test_register_cluster(void);

static int parse(const char *json, struct pk_node_state *st, char *err, size_t errlen)
{
    return pk_node_state_parse(json, strlen(json), st, err, errlen);
}

static void test_state_parse(void)
{
    struct pk_node_state st;
    char err[256];
    const char *doc = "{\"node_id\":\"n1-abc\",\"incarnation\":\"0011\",\"version\":42,"
                      "\"proxy_addr\":\"10.0.0.1:8000\",\"admin_addr\":\"10.0.0.1:8002\","
                      "\"cluster_addr\":\"10.0.0.1:8003\",\"draining\":true,"
                      "\"endpoints\":{\"zeta\":1,\"alpha\":3,\"gone\":0,\"m.x-y_z\":2}}";
    CU_ASSERT_EQUAL_FATAL(parse(doc, &st, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(st.node_id, "n1-abc");
    CU_ASSERT_STRING_EQUAL(st.incarnation, "0011");
    CU_ASSERT_EQUAL(st.version, 42);
    CU_ASSERT_STRING_EQUAL(st.proxy_addr, "10.0.0.1:8000");
    CU_ASSERT_TRUE(st.draining);
    /* zero counts are dropped, the table is sorted */
    CU_ASSERT_EQUAL_FATAL(st.neps, 3);
    CU_ASSERT_STRING_EQUAL(st.eps[0].id, "alpha");
    CU_ASSERT_STRING_EQUAL(st.eps[1].id, "m.x-y_z");
    CU_ASSERT_STRING_EQUAL(st.eps[2].id, "zeta");
    CU_ASSERT_EQUAL(pk_node_state_count(&st, "alpha"), 3);
    CU_ASSERT_EQUAL(pk_node_state_count(&st, "zeta"), 1);
    CU_ASSERT_EQUAL(pk_node_state_count(&st, "gone"), 0);
    CU_ASSERT_EQUAL(pk_node_state_count(&st, "beta"), 0);
    CU_ASSERT_EQUAL(pk_node_state_tunnels(&st), 6);
    pk_node_state_free(&st);
}

static void test_state_roundtrip(void)
{
    struct pk_node_state st, back;
    char err[256];
    pk_node_state_init(&st);
    st.node_id = pk_xstrdup("node-1");
    st.incarnation = pk_xstrdup("feed");
    st.version = 7;
    st.cluster_addr = pk_xstrdup("[::1]:8003");
    for (int i = 99; i >= 0; i--) {
        char id[16];
        snprintf(id, sizeof(id), "ep%02d", i);
        pk_node_state_set(&st, id, (uint32_t)i + 1);
    }
    pk_node_state_set(&st, "ep50", 0); /* removes */
    pk_node_state_set(&st, "ep10", 9); /* replaces */
    CU_ASSERT_EQUAL(st.neps, 99);
    struct json_object *o = pk_node_state_to_json(&st, true);
    const char *txt = json_object_to_json_string(o);
    CU_ASSERT_EQUAL_FATAL(parse(txt, &back, err, sizeof(err)), 0);
    json_object_put(o);
    CU_ASSERT_STRING_EQUAL(back.node_id, "node-1");
    CU_ASSERT_EQUAL(back.version, 7);
    CU_ASSERT_PTR_NULL(back.proxy_addr);
    CU_ASSERT_STRING_EQUAL(back.cluster_addr, "[::1]:8003");
    CU_ASSERT_EQUAL(back.neps, 99);
    CU_ASSERT_EQUAL(pk_node_state_count(&back, "ep10"), 9);
    CU_ASSERT_EQUAL(pk_node_state_count(&back, "ep50"), 0);
    CU_ASSERT_EQUAL(pk_node_state_count(&back, "ep99"), 100);
    for (size_t i = 1; i < back.neps; i++)
        CU_ASSERT_TRUE(strcmp(back.eps[i - 1].id, back.eps[i].id) < 0);
    /* move leaves the source empty */
    struct pk_node_state moved;
    pk_node_state_init(&moved);
    pk_node_state_move(&moved, &back);
    CU_ASSERT_PTR_NULL(back.node_id);
    CU_ASSERT_EQUAL(back.neps, 0);
    CU_ASSERT_EQUAL(moved.neps, 99);
    pk_node_state_free(&moved);
    pk_node_state_free(&st);
}

static void expect_bad(const char *doc, const char *needle)
{
    struct pk_node_state st;
    char err[256] = "";
    int rv = parse(doc, &st, err, sizeof(err));
    CU_ASSERT_EQUAL(rv, PK_ERR_INVALID);
    if (rv == 0) {
        fprintf(stderr, "accepted: %s\n", doc);
        pk_node_state_free(&st);
        return;
    }
    if (!strstr(err, needle)) {
        fprintf(stderr, "error '%s' does not name '%s'\n", err, needle);
        CU_FAIL("error message");
    }
    CU_ASSERT_PTR_NULL(st.node_id);
    CU_ASSERT_EQUAL(st.neps, 0);
}

static void test_state_rejects(void)
{
    expect_bad("", "invalid JSON");
    expect_bad("{\"node_id\":\"a\"", "truncated");
    expect_bad("[1,2]", "not a JSON object");
    expect_bad("{\"incarnation\":\"1\",\"version\":1}", "node_id");
    expect_bad("{\"node_id\":\"a b\",\"incarnation\":\"1\",\"version\":1}", "node_id");
    expect_bad("{\"node_id\":\"a\",\"version\":1}", "incarnation");
    expect_bad("{\"node_id\":\"a\",\"incarnation\":\"1\"}", "version");
    expect_bad("{\"node_id\":\"a\",\"incarnation\":\"1\",\"version\":-1}", "version");
    expect_bad("{\"node_id\":\"a\",\"incarnation\":\"1\",\"version\":\"3\"}", "version");
    expect_bad("{\"node_id\":\"a\",\"incarnation\":\"1\",\"version\":1,\"draining\":1}",
               "draining");
    expect_bad("{\"node_id\":\"a\",\"incarnation\":\"1\",\"version\":1,\"endpoints\":[]}",
               "endpoints");
    expect_bad("{\"node_id\":\"a\",\"incarnation\":\"1\",\"version\":1,"
               "\"endpoints\":{\"bad/id\":1}}",
               "endpoint id");
    expect_bad("{\"node_id\":\"a\",\"incarnation\":\"1\",\"version\":1,"
               "\"endpoints\":{\"x\":-2}}",
               "\"x\"");
    expect_bad("{\"node_id\":\"a\",\"incarnation\":\"1\",\"version\":1,"
               "\"endpoints\":{\"x\":4294967296}}",
               "\"x\"");
    expect_bad("{\"node_id\":\"a\",\"incarnation\":\"1\",\"version\":1} x", "trailing");
    expect_bad("{\"node_id\":\"a\",\"incarnation\":\"1\",\"version\":1,\"proxy_addr\":5}",
               "proxy_addr");
    /* nesting deeper than the limit */
    expect_bad("{\"node_id\":\"a\",\"incarnation\":\"1\",\"version\":1,\"x\":"
               "[[[[[[[[[[[[1]]]]]]]]]]]]}",
               "invalid JSON");
}

static void test_join_parse(void)
{
    struct pk_join_item *it;
    size_t n;
    char err[256];
    CU_ASSERT_EQUAL_FATAL(pk_join_parse(" srv:_cluster._tcp.piko.ns.svc.cluster.local , "
                                        "dns:piko-headless:8003,10.0.0.5:8003,,[::1]:9,"
                                        "node-2.example:8003",
                                        &it, &n, err, sizeof(err)),
                          0);
    CU_ASSERT_EQUAL_FATAL(n, 5);
    CU_ASSERT_EQUAL(it[0].kind, PK_JOIN_SRV);
    CU_ASSERT_STRING_EQUAL(it[0].name, "_cluster._tcp.piko.ns.svc.cluster.local");
    CU_ASSERT_EQUAL(it[1].kind, PK_JOIN_DNS);
    CU_ASSERT_STRING_EQUAL(it[1].name, "piko-headless");
    CU_ASSERT_EQUAL(it[1].port, 8003);
    CU_ASSERT_EQUAL(it[2].kind, PK_JOIN_HOSTPORT);
    CU_ASSERT_STRING_EQUAL(it[2].name, "10.0.0.5");
    CU_ASSERT_EQUAL(it[3].kind, PK_JOIN_HOSTPORT);
    CU_ASSERT_STRING_EQUAL(it[3].name, "::1");
    CU_ASSERT_EQUAL(it[3].port, 9);
    CU_ASSERT_STRING_EQUAL(it[4].name, "node-2.example");
    pk_join_free(it, n);

    CU_ASSERT_EQUAL(pk_join_parse("", &it, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_EQUAL(pk_join_parse(NULL, &it, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(n, 0);

    const char *bad[] = {"srv:",   "srv:bad name", "dns:noport",          "host",
                         "host:0", "host:99999",   "10.0.0.1:8003,:8003", "dns::80"};
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        err[0] = '\0';
        CU_ASSERT_EQUAL(pk_join_parse(bad[i], &it, &n, err, sizeof(err)), PK_ERR_INVALID);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "cluster.join"));
        CU_ASSERT_PTR_NULL(it);
    }
}

static void test_pick_weighted(void)
{
    uint32_t w[3] = {1, 0, 3};
    size_t hits[3] = {0, 0, 0};
    /* r spread evenly over [0, 2^32): the shares follow the weights exactly */
    for (uint32_t i = 0; i < 4000; i++) {
        size_t k = pk_pick_weighted(w, 3, (uint32_t)((uint64_t)i * 0x100000000ull / 4000));
        CU_ASSERT_TRUE_FATAL(k < 3);
        hits[k]++;
    }
    CU_ASSERT_EQUAL(hits[0], 1000);
    CU_ASSERT_EQUAL(hits[1], 0);
    CU_ASSERT_EQUAL(hits[2], 3000);
    CU_ASSERT_EQUAL(pk_pick_weighted(w, 3, 0xffffffffu), 2);
    uint32_t z[2] = {0, 0};
    CU_ASSERT_EQUAL(pk_pick_weighted(z, 2, 5), 2);
    CU_ASSERT_EQUAL(pk_pick_weighted(NULL, 0, 5), 0);
}

void pk_test_register_cluster(void)
{
    CU_pSuite s = CU_add_suite("cluster", NULL, NULL);
    CU_add_test(s, "state_parse", test_state_parse);
    CU_add_test(s, "state_roundtrip", test_state_roundtrip);
    CU_add_test(s, "state_rejects", test_state_rejects);
    CU_add_test(s, "join_parse", test_join_parse);
    CU_add_test(s, "pick_weighted", test_pick_weighted);
}
