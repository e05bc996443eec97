/* fuzz_cluster_state: the routing state document a peer node sends (PROTOCOL.md 3).
 *
 * The input is the HTTP body of a state response, given to pk_node_state_parse(). What it
 * accepts must satisfy the parser's contract (node id and endpoint ids valid, incarnation
 * of 1-64 characters, counts 1..2^31-1, endpoints sorted and unique) and survive a round
 * trip: pk_node_state_to_json() then parsing again gives the same state, and serialising
 * that gives the same text. On failure the state is left empty with a message. */
#include "fuzz.h"

#include "base/base.h"
#include "cluster/state.h"

#include <json-c/json.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    return 0;
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static void check_empty(const struct pk_node_state *st)
{
    static const struct pk_node_state zero;
    FUZZ_CHECK(memcmp(st, &zero, sizeof(zero)) == 0, "state not left empty after an error");
}

static void check_valid(const struct pk_node_state *st)
{
    FUZZ_CHECK(st->node_id && pk_endpoint_id_valid(st->node_id, strlen(st->node_id)),
               "node_id '%s'", st->node_id ? st->node_id : "(null)");
    size_t il = st->incarnation ? strlen(st->incarnation) : 0;
    FUZZ_CHECK(il >= 1 && il <= 64, "incarnation of %zu characters", il);
    FUZZ_CHECK(st->version <= INT64_MAX, "version %llu", (unsigned long long)st->version);
    FUZZ_CHECK(st->neps == 0 || st->eps, "%zu endpoints without a table", st->neps);
    for (size_t i = 0; i < st->neps; i++) {
        const struct pk_ep_count *e = &st->eps[i];
        FUZZ_CHECK(e->id && pk_endpoint_id_valid(e->id, strlen(e->id)), "endpoint id '%s'",
                   e->id ? e->id : "(null)");
        FUZZ_CHECK(e->n >= 1 && e->n <= 0x7fffffffu, "endpoint %s count %u", e->id, e->n);
        FUZZ_CHECK(i == 0 || strcmp(st->eps[i - 1].id, e->id) < 0,
                   "endpoints not sorted or repeated at %s", e->id);
        FUZZ_CHECK(pk_node_state_count(st, e->id) == e->n, "lookup of %s", e->id);
    }
}

static void check_same(const struct pk_node_state *a, const struct pk_node_state *b)
{
    FUZZ_CHECK(str_eq(a->node_id, b->node_id), "node_id '%s' then '%s'", a->node_id, b->node_id);
    FUZZ_CHECK(str_eq(a->incarnation, b->incarnation), "incarnation changed");
    FUZZ_CHECK(a->version == b->version, "version %llu then %llu", (unsigned long long)a->version,
               (unsigned long long)b->version);
    FUZZ_CHECK(str_eq(a->proxy_addr, b->proxy_addr), "proxy_addr changed");
    FUZZ_CHECK(str_eq(a->admin_addr, b->admin_addr), "admin_addr changed");
    FUZZ_CHECK(str_eq(a->cluster_addr, b->cluster_addr), "cluster_addr changed");
    FUZZ_CHECK(a->draining == b->draining, "draining changed");
    FUZZ_CHECK(a->neps == b->neps, "%zu endpoints then %zu", a->neps, b->neps);
    for (size_t i = 0; i < a->neps; i++) {
        FUZZ_CHECK(strcmp(a->eps[i].id, b->eps[i].id) == 0 && a->eps[i].n == b->eps[i].n,
                   "endpoint %zu: %s=%u then %s=%u", i, a->eps[i].id, a->eps[i].n, b->eps[i].id,
                   b->eps[i].n);
    }
}

/* The state as the text a node serves (JSON_C_TO_STRING_PLAIN, as lib/server does). */
static char *to_text(const struct pk_node_state *st, bool with_endpoints)
{
    struct json_object *o = pk_node_state_to_json(st, with_endpoints);
    char *s = pk_xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *doc = fuzz_dup(data, size);
    char err[256];
    struct pk_node_state st, back;
    memset(err, 'x', sizeof(err));
    memset(&st, 0x5a, sizeof(st)); /* parse must not depend on the old content */
    int rc = pk_node_state_parse(doc, size, &st, err, sizeof(err));
    free(doc);
    FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL || rc == 0, "error message not terminated");
    if (rc != 0) {
        FUZZ_CHECK(rc == PK_ERR_INVALID, "pk_node_state_parse returned %d", rc);
        FUZZ_CHECK(strncmp(err, "state: ", 7) == 0, "error message '%s'", err);
        check_empty(&st);
        return 0;
    }
    check_valid(&st);

    char *text = to_text(&st, true);
    rc = pk_node_state_parse(text, strlen(text), &back, err, sizeof(err));
    FUZZ_CHECK(rc == 0, "own serialisation rejected: %s: %s", err, text);
    check_same(&st, &back);
    char *again = to_text(&back, true);
    FUZZ_CHECK(strcmp(text, again) == 0, "serialisation not stable:\n%s\n%s", text, again);
    free(again);
    free(text);
    pk_node_state_free(&back);

    /* Without the endpoint table: the same node with no endpoints. */
    text = to_text(&st, false);
    rc = pk_node_state_parse(text, strlen(text), &back, err, sizeof(err));
    FUZZ_CHECK(rc == 0 && back.neps == 0, "state without endpoints: %s", rc ? err : text);
    free(text);
    pk_node_state_free(&back);

    /* The table operations keep it sorted and valid. */
    if (st.neps) {
        char *id = pk_xstrdup(st.eps[0].id);
        pk_node_state_set(&st, id, 0);
        FUZZ_CHECK(pk_node_state_count(&st, id) == 0, "endpoint %s still counted", id);
        pk_node_state_set(&st, id, 7);
        FUZZ_CHECK(pk_node_state_count(&st, id) == 7, "endpoint %s not set", id);
        free(id);
        check_valid(&st);
    }
    pk_node_state_free(&st);
    check_empty(&st);
    return 0;
}
