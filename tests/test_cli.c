/* Unit tests for lib/cli: the status command's command line, URL, token, error messages
 * and tables (all pure; the request itself is the e2e test's, e2e/test_50_status_cli.py). */
#include "base/base.h"
#include "cli/cli.h"
#include "config/config.h"

#include <CUnit/CUnit.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void pk_test_register_cli(void);

/* Parses the words (argv[0] "status" added); returns the result, st filled on 0. */
static int parse(struct pk_cli_status *st, char *err, size_t errlen, const char *const *words)
{
    char *argv[32];
    int argc = 0;
    argv[argc++] = "status";
    for (size_t i = 0; words[i] && argc < 31; i++)
        argv[argc++] = (char *)words[i];
    argv[argc] = NULL;
    memset(st, 0, sizeof(*st));
    err[0] = '\0';
    return pk_cli_status_parse(st, argc, argv, err, errlen);
}

#define PARSE(st, err, ...) parse(st, err, sizeof(err), (const char *const[]){__VA_ARGS__, NULL})

static void test_parse(void)
{
    struct pk_cli_status st;
    char err[256];

    CU_ASSERT_EQUAL_FATAL(PARSE(&st, err, "nodes"), 0);
    CU_ASSERT_STRING_EQUAL(st.command, "nodes");
    CU_ASSERT_PTR_NULL(st.node_id);
    CU_ASSERT_STRING_EQUAL(st.cfg.server_url, PK_CLI_DEFAULT_URL);
    CU_ASSERT_EQUAL(st.cfg.timeout_ms, 10000);
    CU_ASSERT(!st.json);
    pk_cli_status_free(&st);

    /* Flags before and after the words, with "=" or a separate value. */
    CU_ASSERT_EQUAL_FATAL(PARSE(&st, err, "--server.url", "http://h:1", "node", "--output=json",
                                "n-2", "--forward", "n3", "--timeout", "2s", "--token", "t"),
                          0);
    CU_ASSERT_STRING_EQUAL(st.command, "node");
    CU_ASSERT_STRING_EQUAL(st.node_id, "n-2");
    CU_ASSERT_STRING_EQUAL(st.cfg.server_url, "http://h:1");
    CU_ASSERT_STRING_EQUAL(st.cfg.forward, "n3");
    CU_ASSERT_STRING_EQUAL(st.cfg.token, "t");
    CU_ASSERT_EQUAL(st.cfg.timeout_ms, 2000);
    CU_ASSERT(st.json);
    pk_cli_status_free(&st);

    /* "--" ends the flags. */
    CU_ASSERT_EQUAL_FATAL(PARSE(&st, err, "node", "--", "local"), 0);
    CU_ASSERT_STRING_EQUAL(st.node_id, "local");
    pk_cli_status_free(&st);

    struct {
        const char *msg;
        const char *const words[6];
    } bad[] = {
        {"missing command", {NULL}},
        {"unknown command 'nodez'", {"nodez"}},
        {"node: missing node ID", {"node"}},
        {"nodes: unexpected argument 'x'", {"nodes", "x"}},
        {"node: unexpected argument 'b'", {"node", "a", "b"}},
        {"node: invalid node id 'a/b'", {"node", "a/b"}},
        {"--output: want table or json (got 'yaml')", {"nodes", "--output", "yaml"}},
        {"--server.url: want http://HOST:PORT", {"nodes", "--server.url", "ftp://x"}},
        {"--forward: invalid node id", {"nodes", "--forward", "a b"}},
        {"--token and --token-file: give one", {"nodes", "--token", "a", "--token-file", "f"}},
        /* lib/config's words: only what names the flag and the fault is checked. */
        {"--nope", {"nodes", "--nope"}},
        {"token", {"nodes", "--token"}},
        {"timeout: invalid duration", {"nodes", "--timeout", "soon"}},
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        CU_ASSERT_EQUAL(parse(&st, err, sizeof(err), bad[i].words), PK_ERR_INVALID);
        if (!strstr(err, bad[i].msg))
            fprintf(stderr, "\nwant '%s' in '%s'\n", bad[i].msg, err);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, bad[i].msg));
        CU_ASSERT_PTR_NULL(st.command);
    }
    fflush(stdout);
    CU_ASSERT_EQUAL(PARSE(&st, err, "nodes", "--version"), PK_CONFIG_HELP);
}

static void test_url(void)
{
    struct pk_cli_status st;
    char err[256];
    struct {
        const char *const words[8];
        const char *url;
    } cases[] = {
        {{"nodes"}, "http://localhost:8002/status/cluster/nodes"},
        {{"endpoints", "--server.url", "https://a:9/"}, "https://a:9/status/upstream/endpoints"},
        {{"tunnels", "--server.url", "10.0.0.1:8002"}, "http://10.0.0.1:8002/status/tunnels"},
        {{"requests", "--forward", "n2"}, "http://localhost:8002/status/requests?forward=n2"},
        {{"node", "local", "--forward", "n2"},
         "http://localhost:8002/status/cluster/nodes/local?forward=n2"},
        {{"node", "n1.x_y-z", "--server.url", "http://h//"},
         "http://h/status/cluster/nodes/n1.x_y-z"},
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(cases); i++) {
        CU_ASSERT_EQUAL_FATAL(parse(&st, err, sizeof(err), cases[i].words), 0);
        char *url = pk_cli_status_url(&st);
        CU_ASSERT_STRING_EQUAL(url, cases[i].url);
        free(url);
        pk_cli_status_free(&st);
    }
}

static void test_token(void)
{
    struct pk_cli_status st;
    char err[256], path[64], *tok;

    CU_ASSERT_EQUAL_FATAL(PARSE(&st, err, "nodes"), 0);
    CU_ASSERT_EQUAL(pk_cli_status_token(&st, &tok, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NULL(tok);
    pk_cli_status_free(&st);

    CU_ASSERT_EQUAL_FATAL(PARSE(&st, err, "nodes", "--token", " abc.def "), 0);
    CU_ASSERT_EQUAL(pk_cli_status_token(&st, &tok, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(tok, "abc.def");
    free(tok);
    pk_cli_status_free(&st);

    /* A file's final newline is not part of the token. */
    snprintf(path, sizeof(path), "/tmp/pk-cli-token-XXXXXX");
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT(write(fd, "eyJ.x.y\n", 8) == 8);
    close(fd);
    CU_ASSERT_EQUAL_FATAL(PARSE(&st, err, "nodes", "--token-file", path), 0);
    CU_ASSERT_EQUAL(pk_cli_status_token(&st, &tok, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(tok, "eyJ.x.y");
    free(tok);
    pk_cli_status_free(&st);

    /* Two lines would be a header injection; an empty file is a mistake. */
    FILE *f = fopen(path, "w");
    CU_ASSERT_FATAL(f != NULL);
    fputs("a\nb\n", f);
    fclose(f);
    CU_ASSERT_EQUAL_FATAL(PARSE(&st, err, "nodes", "--token-file", path), 0);
    CU_ASSERT_EQUAL(pk_cli_status_token(&st, &tok, err, sizeof(err)), PK_ERR_INVALID);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "--token-file: the token has a control character"));
    pk_cli_status_free(&st);
    f = fopen(path, "w");
    CU_ASSERT_FATAL(f != NULL);
    fputs(" \n", f);
    fclose(f);
    CU_ASSERT_EQUAL_FATAL(PARSE(&st, err, "nodes", "--token-file", path), 0);
    CU_ASSERT_EQUAL(pk_cli_status_token(&st, &tok, err, sizeof(err)), PK_ERR_INVALID);
    CU_ASSERT_STRING_EQUAL(err, "--token-file: the token is empty");
    pk_cli_status_free(&st);
    unlink(path);
    CU_ASSERT_EQUAL_FATAL(PARSE(&st, err, "nodes", "--token-file", path), 0);
    CU_ASSERT_EQUAL(pk_cli_status_token(&st, &tok, err, sizeof(err)), PK_ERR_INVALID);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "cannot read"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "No such file"));
    pk_cli_status_free(&st);
}

/* The message for status and body with the words' command line. */
static char *error_for(const char *const *words, int status, const char *body)
{
    struct pk_cli_status st;
    char err[256];
    CU_ASSERT_EQUAL_FATAL(parse(&st, err, sizeof(err), words), 0);
    char *m = pk_cli_status_error(&st, "http://u/x", status, body);
    pk_cli_status_free(&st);
    return m;
}

static void test_errors(void)
{
    struct {
        const char *const words[6];
        int status;
        const char *body;
        const char *want;
    } cases[] = {
        {{"nodes"},
         401,
         "{\"error\":\"missing token\"}\n",
         "admin port requires a token: pass --token or --token-file (401 missing token)"},
        {{"nodes", "--token", "t"},
         401,
         "{\"error\":\"invalid token\"}",
         "the admin port refused the token (401 invalid token): check --token or --token-file"},
        {{"nodes"}, 403, "", "the admin port refused access (403 forbidden)"},
        {{"node", "n9"},
         404,
         "{\"error\":\"node not found\"}",
         "node n9 not found (see 'piko-server status nodes')"},
        {{"nodes", "--forward", "n9"},
         404,
         "{\"error\":\"node not found\"}",
         "--forward: node n9 not found (see 'piko-server status nodes')"},
        {{"node", "local", "--forward", "n9"},
         404,
         "{\"error\":\"node not found\"}",
         "--forward: node n9 not found (see 'piko-server status nodes')"},
        {{"tunnels"},
         404,
         "{\"error\":\"not found\"}",
         "http://u/x: 404 not found (a server without this status route: another version?)"},
        {{"nodes", "--forward", "n2"},
         502,
         "{\"error\":\"node n2 unreachable: Couldn't connect to server\"}",
         "http://u/x: 502 node n2 unreachable: Couldn't connect to server"},
        {{"nodes"}, 500, "<html>\x1b[31mboom\nmore", "http://u/x: 500 <html>?[31mboom"},
        {{"nodes"}, 503, NULL, "http://u/x: 503 (no message)"},
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(cases); i++) {
        char *m = error_for(cases[i].words, cases[i].status, cases[i].body);
        if (strcmp(m, cases[i].want) != 0)
            fprintf(stderr, "\ncase %zu: got '%s'\n", i, m);
        CU_ASSERT_STRING_EQUAL(m, cases[i].want);
        free(m);
    }
}

/* pk_cli_table of json text. */
static char *table(const char *command, const char *json)
{
    struct json_object *doc = json_tokener_parse(json);
    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    char *t = pk_cli_table(command, doc);
    json_object_put(doc);
    return t;
}

#define TABLE_IS(command, json, want)                                                              \
    do {                                                                                           \
        char *t_ = table(command, json);                                                           \
        if (strcmp(t_, want) != 0)                                                                 \
            fprintf(stderr, "\ngot:\n%s\nwant:\n%s\n", t_, want);                                  \
        CU_ASSERT_STRING_EQUAL(t_, want);                                                          \
        free(t_);                                                                                  \
    } while (0)

static void test_tables(void)
{
    TABLE_IS(
        "nodes",
        "[{\"id\":\"n1\",\"status\":\"active\",\"local\":true,\"proxy_addr\":\"127.0.0.1:8000\","
        "\"endpoints\":2,\"tunnels\":3},{\"id\":\"node-two\",\"status\":\"unreachable\","
        "\"proxy_addr\":null,\"endpoints\":0,\"tunnels\":0}]",
        "ID         STATUS        PROXY ADDR       ENDPOINTS   TUNNELS\n"
        "n1         active        127.0.0.1:8000   2           3\n"
        "node-two   unreachable   -                0           0\n");
    /* An empty list: the titles alone. */
    TABLE_IS("endpoints", "[]", "ENDPOINT   TUNNELS   STREAMS   IN   OUT\n");
    TABLE_IS("endpoints",
             "[{\"endpoint\":\"my-service\",\"tunnels\":2,\"tcp\":false,\"streams\":0,"
             "\"bytes_in\":2048,\"bytes_out\":0}]",
             "ENDPOINT     TUNNELS   STREAMS   IN       OUT\n"
             "my-service   2         0         2.0KiB   0B\n");
    TABLE_IS("tunnels",
             "[{\"id\":7,\"endpoint\":\"e\",\"sidecar\":\"10.0.0.9:4411\",\"state\":\"active\","
             "\"age_s\":3725,\"streams\":1,\"bytes_in\":512,\"bytes_out\":1572864}]",
             "ID   ENDPOINT   SIDECAR         STATE    AGE     STREAMS   IN     OUT\n"
             "7    e          10.0.0.9:4411   active   1h02m   1         512B   1.5MiB\n");
    TABLE_IS(
        "requests",
        "[{\"time\":\"T1\",\"method\":\"GET\",\"host\":\"h\",\"path\":\"/a\",\"status\":502,"
        "\"duration_ms\":0.011,\"endpoint\":\"e\",\"route\":\"peer\",\"peer\":\"n2\","
        "\"client\":\"c:1\",\"error\":\"upstream unreachable\"},{\"time\":\"T2\","
        "\"method\":\"POST\",\"path\":\"/0123456789012345678901234567890123456789xyz\","
        "\"status\":200,\"duration_ms\":1500,\"route\":\"tunnel\"}]",
        "TIME   METHOD   HOST   PATH                                       STATUS   DURATION   "
        "ENDPOINT   ROUTE     CLIENT   ERROR\n"
        "T1     GET      h      /a                                         502      0.011ms    "
        "e          peer n2   c:1      upstream unreachable\n"
        "T2     POST     -      /012345678901234567890123456789012345...   200      1.50s      "
        "-          tunnel    -        -\n");
    /* A node: its members, then its endpoint table. */
    TABLE_IS(
        "node",
        "{\"id\":\"n1\",\"local\":true,\"tls\":{\"a\":1},\"endpoint_table\":{\"b\":2,\"a\":1}}",
        "id      n1\n"
        "local   true\n"
        "tls     {\"a\":1}\n"
        "\n"
        "ENDPOINT   TUNNELS\n"
        "b          2\n"
        "a          1\n");
    /* Another server's shape: one column per key; elements that are not objects. */
    TABLE_IS("nodes", "[{\"name\":\"x\",\"state_of\":1},{\"name\":\"y\",\"more\":[1,2]}]",
             "NAME   STATE OF   MORE\n"
             "x      1          -\n"
             "y      -          [1,2]\n");
    TABLE_IS("whatever", "[1,\"two\"]", "VALUE\n1\ntwo\n");
    TABLE_IS("nodes", "[{}]", "(none)\n");
    TABLE_IS("nodes", "\"just text\"", "just text\n");
    /* Control characters never reach the terminal. */
    TABLE_IS("endpoints", "[{\"endpoint\":\"a\\u001b[2Jb\",\"tunnels\":1}]",
             "ENDPOINT   TUNNELS   STREAMS   IN   OUT\n"
             "a?[2Jb     1         -         -    -\n");
}

void pk_test_register_cli(void)
{
    CU_pSuite s = CU_add_suite("cli", NULL, NULL);
    CU_add_test(s, "parse", test_parse);
    CU_add_test(s, "url", test_url);
    CU_add_test(s, "token", test_token);
    CU_add_test(s, "errors", test_errors);
    CU_add_test(s, "tables", test_tables);
}
