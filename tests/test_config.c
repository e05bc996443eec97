/* Unit tests for lib/config: value parsers, flags, YAML file, environment expansion, help. */
#include "base/base.h"
#include "config/config.h"

#include <CUnit/CUnit.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void pk_test_register_config(void);

struct tcfg {
    char *bind;
    long long workers;
    bool debug;
    bool tls;
    uint64_t timeout;
    uint64_t max_body;
    struct pk_strlist upstreams;
    struct pk_strlist tags;
    char *node;
    char *gossip;
};

static const struct pk_opt topts[] = {
    {"proxy.bind-addr", PK_OPT_STRING, offsetof(struct tcfg, bind), ":8000", "Proxy listen address",
     "ADDR"},
    {"proxy.workers", PK_OPT_INT, offsetof(struct tcfg, workers), "4", "Worker count", NULL},
    {"log.debug", PK_OPT_BOOL, offsetof(struct tcfg, debug), NULL, "Debug logging", NULL},
    {"tls.enabled", PK_OPT_BOOL, offsetof(struct tcfg, tls), "true", "Enable TLS", NULL},
    {"proxy.timeout", PK_OPT_DURATION, offsetof(struct tcfg, timeout), "30s",
     "Upstream response timeout", NULL},
    {"proxy.max-body-size", PK_OPT_SIZE, offsetof(struct tcfg, max_body), "1MiB", "Body limit",
     NULL},
    {"upstream.addrs", PK_OPT_STRING_LIST, offsetof(struct tcfg, upstreams), NULL, "Upstreams",
     "NAME=ADDR"},
    {"tags", PK_OPT_STRING_LIST, offsetof(struct tcfg, tags), "default", "Tags", NULL},
    {"node-name", PK_OPT_STRING, offsetof(struct tcfg, node), NULL, "Node name", NULL},
    {"cluster.gossip.bind-addr", PK_OPT_STRING, offsetof(struct tcfg, gossip), NULL,
     "Gossip address", NULL},
};

#define NOPTS PK_ARRAY_LEN(topts)

static char err[512];

/* Loads args (NULL-terminated, program name excluded) into c. */
static int load_args(struct tcfg *c, const char *const *args)
{
    char *argv[32];
    int argc = 0;

    argv[argc++] = "piko-test";
    for (; *args; args++)
        argv[argc++] = (char *)*args;
    argv[argc] = NULL;
    return pk_config_load(topts, NOPTS, c, argc, argv, "piko-test", "Test summary.", err,
                          sizeof(err));
}

#define LOAD(c, ...) load_args((c), (const char *const[]){__VA_ARGS__, NULL})

/* Writes content to a new temp file; path receives its name. */
static void write_tmp(char *path, size_t pathlen, const char *content)
{
    snprintf(path, pathlen, "/tmp/piko-config-test-XXXXXX.yaml");
    int fd = mkstemps(path, 5);
    CU_ASSERT_FATAL(fd >= 0);
    size_t len = strlen(content);
    CU_ASSERT_FATAL(write(fd, content, len) == (ssize_t)len);
    close(fd);
}

/* Loads the YAML content through --config.path plus extra args; returns the result. */
static int load_yaml(struct tcfg *c, const char *yaml, char *path, size_t pathlen,
                     const char *const *extra)
{
    const char *args[16];
    size_t n = 0;

    write_tmp(path, pathlen, yaml);
    args[n++] = "--config.path";
    args[n++] = path;
    for (; extra && *extra; extra++)
        args[n++] = *extra;
    args[n] = NULL;
    int rc = load_args(c, args);
    unlink(path);
    return rc;
}

/* Expects a YAML load to fail with exactly "<tmpfile>:<msg>". */
static void expect_yaml_error(const char *yaml, const char *msg)
{
    struct tcfg c = {0};
    char path[64], want[600];

    int rc = load_yaml(&c, yaml, path, sizeof(path), NULL);
    CU_ASSERT_EQUAL(rc, PK_ERR_INVALID);
    snprintf(want, sizeof(want), "%s:%s", path, msg);
    CU_ASSERT_STRING_EQUAL(err, want);
    if (strcmp(err, want) != 0)
        fprintf(stderr, "\n  got:  %s\n  want: %s\n", err, want);
    /* A failed load leaves nothing owned behind. */
    CU_ASSERT_PTR_NULL(c.bind);
    CU_ASSERT_PTR_NULL(c.tags.v);
    pk_config_free(topts, NOPTS, &c);
}

static void expect_flag_error(const char *const *args, const char *msg)
{
    struct tcfg c = {0};

    CU_ASSERT_EQUAL(load_args(&c, args), PK_ERR_INVALID);
    CU_ASSERT_STRING_EQUAL(err, msg);
    if (strcmp(err, msg) != 0)
        fprintf(stderr, "\n  got:  %s\n  want: %s\n", err, msg);
    pk_config_free(topts, NOPTS, &c);
}

#define FLAG_ERROR(msg, ...) expect_flag_error((const char *const[]){__VA_ARGS__, NULL}, (msg))

/* ---- parsers --------------------------------------------------------------------------- */

static void test_parse_duration(void)
{
    static const struct {
        const char *s;
        uint64_t ms;
    } ok[] = {
        {"0", 0},
        {"+0", 0},
        {"0s", 0},
        {"30s", 30000},
        {"1m30s", 90000},
        {"500ms", 500},
        {"1h", 3600000},
        {"2.5s", 2500},
        {".5s", 500},
        {"5.s", 5000},
        {"+5s", 5000},
        {"1h1m1s1ms", 3661001},
        {"1.5h", 5400000},
        {"1.5ms", 2},  /* rounded up */
        {"500us", 1},  /* never rounds a non-zero duration to 0 */
        {"1000us", 1}, /* exact */
        {"1000\xc2\xb5s", 1},
        {"2000\xce\xbcs", 2},
        {"1000000ns", 1},
        {"0.001s", 1},
        {"1.0000000000000000000001s", 1000},
        {"18446744073709551615ns", 18446744073710},
        {"5124095h", 18446742000000},
    };
    static const char *const bad[] = {
        "",
        "+",
        "-1s",
        "-0",
        "5",
        "1x",
        "1s ",
        " 1s",
        "s",
        ".",
        ".s",
        "1.2.3s",
        "1sm",
        "1d",
        "abc",
        "1 s",
        "--1s",
        "1e3s",
        "18446744073709551616ns", /* overflow */
        "5124096h",               /* overflow in multiply */
        "5124095h5124095h",       /* overflow in sum */
        "99999999999999999999s",
    };

    for (size_t i = 0; i < PK_ARRAY_LEN(ok); i++) {
        uint64_t ms = 777;
        int rc = pk_parse_duration(ok[i].s, &ms);
        CU_ASSERT_EQUAL(rc, 0);
        CU_ASSERT_EQUAL(ms, ok[i].ms);
        if (rc != 0 || ms != ok[i].ms)
            fprintf(stderr, "\n  duration '%s': rc=%d ms=%llu\n", ok[i].s, rc,
                    (unsigned long long)ms);
    }
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        uint64_t ms = 777;
        int rc = pk_parse_duration(bad[i], &ms);
        CU_ASSERT_EQUAL(rc, PK_ERR_INVALID);
        CU_ASSERT_EQUAL(ms, 777); /* untouched on failure */
        if (rc != PK_ERR_INVALID)
            fprintf(stderr, "\n  duration '%s' accepted\n", bad[i]);
    }
}

static void test_parse_size(void)
{
    static const struct {
        const char *s;
        uint64_t bytes;
    } ok[] = {
        {"0", 0},
        {"65536", 65536},
        {"64KiB", 65536},
        {"1MiB", 1048576},
        {"16MiB", 16777216},
        {"1GiB", 1073741824},
        {"1K", 1024},
        {"1KB", 1024},
        {"1M", 1048576},
        {"1MB", 1048576},
        {"1G", 1073741824},
        {"1GB", 1073741824},
        {"2T", 2199023255552},
        {"1kib", 1024},
        {"1mb", 1048576},
        {"512B", 512},
        {"16 MiB", 16777216},
        {"007", 7},
        {"18446744073709551615", UINT64_MAX},
        {"16777215TiB", 16777215ull << 40},
        {"17179869183GiB", 17179869183ull << 30},
    };
    static const char *const bad[] = {
        "",
        "-1",
        "+1",
        "1.5MiB",
        "1XB",
        "KiB",
        " 1",
        "1 ",
        "1KiBs",
        "1 K B",
        "0x10",
        "1e3",
        "1Ki B",
        "1KiB ",
        "18446744073709551616", /* overflow */
        "16777216TiB",          /* 2^64 */
        "17179869184GiB",       /* 2^64 */
    };

    for (size_t i = 0; i < PK_ARRAY_LEN(ok); i++) {
        uint64_t b = 777;
        int rc = pk_parse_size(ok[i].s, &b);
        CU_ASSERT_EQUAL(rc, 0);
        CU_ASSERT_EQUAL(b, ok[i].bytes);
        if (rc != 0 || b != ok[i].bytes)
            fprintf(stderr, "\n  size '%s': rc=%d b=%llu\n", ok[i].s, rc, (unsigned long long)b);
    }
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        uint64_t b = 777;
        int rc = pk_parse_size(bad[i], &b);
        CU_ASSERT_EQUAL(rc, PK_ERR_INVALID);
        CU_ASSERT_EQUAL(b, 777);
        if (rc != PK_ERR_INVALID)
            fprintf(stderr, "\n  size '%s' accepted\n", bad[i]);
    }
}

static void test_parse_bool(void)
{
    static const char *const yes[] = {"true", "TRUE", "True", "yes", "YES", "on", "On", "1"};
    static const char *const no[] = {"false", "FALSE", "no", "No", "off", "OFF", "0"};
    static const char *const bad[] = {"",     "2",     "t",     "f",  "y", "n",
                                      "yess", "truee", " true", "-1", "01"};
    bool b;

    for (size_t i = 0; i < PK_ARRAY_LEN(yes); i++) {
        b = false;
        CU_ASSERT_EQUAL(pk_parse_bool(yes[i], &b), 0);
        CU_ASSERT_TRUE(b);
    }
    for (size_t i = 0; i < PK_ARRAY_LEN(no); i++) {
        b = true;
        CU_ASSERT_EQUAL(pk_parse_bool(no[i], &b), 0);
        CU_ASSERT_FALSE(b);
    }
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        b = true;
        CU_ASSERT_EQUAL(pk_parse_bool(bad[i], &b), PK_ERR_INVALID);
        CU_ASSERT_TRUE(b);
    }
}

static void test_parse_int(void)
{
    static const struct {
        const char *s;
        long long v;
    } ok[] = {
        {"0", 0},
        {"42", 42},
        {"-5", -5},
        {"+7", 7},
        {"007", 7},
        {"9223372036854775807", 9223372036854775807LL},
        {"-9223372036854775808", -9223372036854775807LL - 1},
    };
    static const char *const bad[] = {
        "",
        "-",
        "+",
        "1.5",
        "0x10",
        " 1",
        "1 ",
        "1k",
        "--1",
        "abc",
        "9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999",
    };

    for (size_t i = 0; i < PK_ARRAY_LEN(ok); i++) {
        long long v = 777;
        CU_ASSERT_EQUAL(pk_parse_int(ok[i].s, &v), 0);
        CU_ASSERT_EQUAL(v, ok[i].v);
    }
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        long long v = 777;
        int rc = pk_parse_int(bad[i], &v);
        CU_ASSERT_EQUAL(rc, PK_ERR_INVALID);
        CU_ASSERT_EQUAL(v, 777);
        if (rc != PK_ERR_INVALID)
            fprintf(stderr, "\n  int '%s' accepted\n", bad[i]);
    }
}

/* ---- flags ----------------------------------------------------------------------------- */

static void test_defaults(void)
{
    struct tcfg c = {0};
    const char *none[] = {NULL};

    CU_ASSERT_EQUAL_FATAL(load_args(&c, none), 0);
    CU_ASSERT_STRING_EQUAL(err, "");
    CU_ASSERT_STRING_EQUAL(c.bind, ":8000");
    CU_ASSERT_EQUAL(c.workers, 4);
    CU_ASSERT_FALSE(c.debug);
    CU_ASSERT_TRUE(c.tls);
    CU_ASSERT_EQUAL(c.timeout, 30000);
    CU_ASSERT_EQUAL(c.max_body, 1048576);
    CU_ASSERT_EQUAL(c.upstreams.n, 0);
    CU_ASSERT_PTR_NULL(c.upstreams.v);
    CU_ASSERT_EQUAL_FATAL(c.tags.n, 1);
    CU_ASSERT_STRING_EQUAL(c.tags.v[0], "default");
    CU_ASSERT_PTR_NULL(c.tags.v[1]);
    CU_ASSERT_PTR_NULL(c.node);
    CU_ASSERT_PTR_NULL(c.gossip);
    pk_config_free(topts, NOPTS, &c);
}

static void test_flag_forms(void)
{
    struct tcfg c = {0};

    CU_ASSERT_EQUAL_FATAL(LOAD(&c, "--proxy.bind-addr", ":9000", "--proxy.timeout=1m30s",
                               "--proxy.workers", "-3", "--proxy.max-body-size=64KiB",
                               "--node-name=", "--cluster.gossip.bind-addr=a=b"),
                          0);
    CU_ASSERT_STRING_EQUAL(c.bind, ":9000");
    CU_ASSERT_EQUAL(c.timeout, 90000);
    CU_ASSERT_EQUAL(c.workers, -3);
    CU_ASSERT_EQUAL(c.max_body, 65536);
    CU_ASSERT_STRING_EQUAL(c.node, "");
    CU_ASSERT_STRING_EQUAL(c.gossip, "a=b"); /* only the first '=' splits */

    /* The last occurrence of a scalar flag wins; "--" ends the flags. */
    CU_ASSERT_EQUAL_FATAL(LOAD(&c, "--proxy.workers=1", "--proxy.workers=2", "--"), 0);
    CU_ASSERT_EQUAL(c.workers, 2);
    CU_ASSERT_STRING_EQUAL(c.bind, ":8000"); /* back to the default on a fresh load */
    pk_config_free(topts, NOPTS, &c);
}

static void test_bool_flags(void)
{
    struct tcfg c = {0};

    CU_ASSERT_EQUAL_FATAL(LOAD(&c, "--log.debug", "--tls.enabled=no"), 0);
    CU_ASSERT_TRUE(c.debug);
    CU_ASSERT_FALSE(c.tls);

    /* A bare bool flag never consumes the next argument, even a flag. */
    CU_ASSERT_EQUAL_FATAL(LOAD(&c, "--tls.enabled=off", "--log.debug", "--proxy.workers", "9"), 0);
    CU_ASSERT_TRUE(c.debug);
    CU_ASSERT_EQUAL(c.workers, 9);

    CU_ASSERT_EQUAL_FATAL(LOAD(&c, "--log.debug=TRUE", "--tls.enabled=1"), 0);
    CU_ASSERT_TRUE(c.debug);
    CU_ASSERT_TRUE(c.tls);
    CU_ASSERT_EQUAL_FATAL(LOAD(&c, "--log.debug=false", "--tls.enabled=On"), 0);
    CU_ASSERT_FALSE(c.debug);
    CU_ASSERT_TRUE(c.tls);
    pk_config_free(topts, NOPTS, &c);

    FLAG_ERROR("unexpected argument 'false'", "--log.debug", "false");
    FLAG_ERROR("log.debug: invalid boolean 'maybe'", "--log.debug=maybe");
    FLAG_ERROR("tls.enabled: invalid boolean ''", "--tls.enabled=");
}

static void test_flag_errors(void)
{
    FLAG_ERROR("--xyz: unknown flag (see --help)", "--xyz");
    FLAG_ERROR("--xyz: unknown flag (see --help)", "--xyz=1");
    FLAG_ERROR("--proxy.bind_addr: unknown flag (see --help)", "--proxy.bind_addr=:1");
    FLAG_ERROR("-x: unknown flag (see --help)", "-x");
    FLAG_ERROR("unexpected argument 'x'", "x");
    FLAG_ERROR("unexpected argument '-'", "-");
    FLAG_ERROR("unexpected argument 'x'", "--log.debug", "--", "x");
    FLAG_ERROR("proxy.timeout: the flag needs a value", "--proxy.timeout");
    FLAG_ERROR("proxy.timeout: the flag needs a value", "--proxy.timeout", "--log.debug");
    FLAG_ERROR("config.path: the flag needs a value", "--config.path");
    FLAG_ERROR("--help: takes no value", "--help=1");
    FLAG_ERROR("proxy.timeout: invalid duration 'abc'", "--proxy.timeout", "abc");
    FLAG_ERROR("proxy.timeout: invalid duration '-1s'", "--proxy.timeout=-1s");
    FLAG_ERROR("proxy.max-body-size: invalid size '1.5MiB'", "--proxy.max-body-size=1.5MiB");
    FLAG_ERROR("proxy.max-body-size: invalid size '-1'", "--proxy.max-body-size", "-1");
    FLAG_ERROR("proxy.workers: invalid integer '9223372036854775808'",
               "--proxy.workers=9223372036854775808");
    FLAG_ERROR("proxy.workers: invalid integer 'four'", "--proxy.workers", "four");
    /* The command line is checked before the file is read. */
    FLAG_ERROR("--nope: unknown flag (see --help)", "--config.path", "/nonexistent/piko.yaml",
               "--nope");
}

static void test_list_flags(void)
{
    struct tcfg c = {0};
    char path[64];

    /* Repeated flags append; the first one replaces the default. */
    CU_ASSERT_EQUAL_FATAL(
        LOAD(&c, "--tags", "a", "--upstream.addrs=x=1", "--tags=b", "--upstream.addrs", "y=2"), 0);
    CU_ASSERT_EQUAL_FATAL(c.tags.n, 2);
    CU_ASSERT_STRING_EQUAL(c.tags.v[0], "a");
    CU_ASSERT_STRING_EQUAL(c.tags.v[1], "b");
    CU_ASSERT_PTR_NULL(c.tags.v[2]);
    CU_ASSERT_EQUAL_FATAL(c.upstreams.n, 2);
    CU_ASSERT_STRING_EQUAL(c.upstreams.v[0], "x=1");
    CU_ASSERT_STRING_EQUAL(c.upstreams.v[1], "y=2");

    /* A list in the file replaces the default; a flag replaces the file's list. */
    const char *yaml = "tags: [f1, f2]\nupstream:\n  addrs:\n    - u1\n    - u2\n";
    CU_ASSERT_EQUAL_FATAL(load_yaml(&c, yaml, path, sizeof(path), NULL), 0);
    CU_ASSERT_EQUAL_FATAL(c.tags.n, 2);
    CU_ASSERT_STRING_EQUAL(c.tags.v[0], "f1");
    CU_ASSERT_STRING_EQUAL(c.tags.v[1], "f2");
    CU_ASSERT_EQUAL_FATAL(c.upstreams.n, 2);
    CU_ASSERT_STRING_EQUAL(c.upstreams.v[1], "u2");

    const char *extra[] = {"--tags", "c1", "--tags", "c2", "--tags", "c3", NULL};
    CU_ASSERT_EQUAL_FATAL(load_yaml(&c, yaml, path, sizeof(path), extra), 0);
    CU_ASSERT_EQUAL_FATAL(c.tags.n, 3);
    CU_ASSERT_STRING_EQUAL(c.tags.v[0], "c1");
    CU_ASSERT_STRING_EQUAL(c.tags.v[2], "c3");
    CU_ASSERT_EQUAL(c.upstreams.n, 2); /* untouched by flags */

    /* A single scalar is a one-element list; null empties the list. */
    CU_ASSERT_EQUAL_FATAL(
        load_yaml(&c, "tags: solo\nupstream: {addrs: ~}\n", path, sizeof(path), NULL), 0);
    CU_ASSERT_EQUAL_FATAL(c.tags.n, 1);
    CU_ASSERT_STRING_EQUAL(c.tags.v[0], "solo");
    CU_ASSERT_EQUAL(c.upstreams.n, 0);
    CU_ASSERT_EQUAL_FATAL(load_yaml(&c, "tags:\n", path, sizeof(path), NULL), 0);
    CU_ASSERT_EQUAL(c.tags.n, 0);
    CU_ASSERT_PTR_NULL(c.tags.v);
    pk_config_free(topts, NOPTS, &c);
}

/* ---- YAML file ------------------------------------------------------------------------- */

static void test_precedence(void)
{
    struct tcfg c = {0};
    char path[64];
    const char *yaml = "proxy:\n"
                       "  bind_addr: \":7000\"\n"
                       "  timeout: 10s\n"
                       "  workers: 8\n";
    const char *extra[] = {"--proxy.timeout=5s", NULL};

    /* file over default */
    CU_ASSERT_EQUAL_FATAL(load_yaml(&c, yaml, path, sizeof(path), NULL), 0);
    CU_ASSERT_STRING_EQUAL(c.bind, ":7000");
    CU_ASSERT_EQUAL(c.timeout, 10000);
    CU_ASSERT_EQUAL(c.workers, 8);
    CU_ASSERT_EQUAL(c.max_body, 1048576); /* default kept */

    /* flag over file, whatever the order on the command line */
    CU_ASSERT_EQUAL_FATAL(load_yaml(&c, yaml, path, sizeof(path), extra), 0);
    CU_ASSERT_EQUAL(c.timeout, 5000);
    CU_ASSERT_STRING_EQUAL(c.bind, ":7000");
    CU_ASSERT_EQUAL(c.workers, 8);

    write_tmp(path, sizeof(path), yaml);
    char flagbuf[128];
    snprintf(flagbuf, sizeof(flagbuf), "--config.path=%s", path);
    CU_ASSERT_EQUAL_FATAL(LOAD(&c, "--proxy.workers=2", flagbuf), 0);
    unlink(path);
    CU_ASSERT_EQUAL(c.workers, 2);
    CU_ASSERT_EQUAL(c.timeout, 10000);
    pk_config_free(topts, NOPTS, &c);
}

static void test_yaml_nesting(void)
{
    struct tcfg c = {0};
    char path[64];

    /* Nested, dashed, underscored and dotted keys all name the same options. */
    const char *yaml = "# comment\n"
                       "proxy:\n"
                       "  max-body-size: 2MiB\n"
                       "  bind_addr: '[::1]:80'\n"
                       "cluster:\n"
                       "  gossip:\n"
                       "    bind_addr: gossip:1\n"
                       "log.debug: yes\n"
                       "tls: {enabled: off}\n"
                       "node_name: n1\n";
    CU_ASSERT_EQUAL_FATAL(load_yaml(&c, yaml, path, sizeof(path), NULL), 0);
    CU_ASSERT_EQUAL(c.max_body, 2097152);
    CU_ASSERT_STRING_EQUAL(c.bind, "[::1]:80");
    CU_ASSERT_STRING_EQUAL(c.gossip, "gossip:1");
    CU_ASSERT_TRUE(c.debug);
    CU_ASSERT_FALSE(c.tls);
    CU_ASSERT_STRING_EQUAL(c.node, "n1");

    CU_ASSERT_EQUAL_FATAL(
        load_yaml(&c, "cluster.gossip: {bind-addr: g2}\n", path, sizeof(path), NULL), 0);
    CU_ASSERT_STRING_EQUAL(c.gossip, "g2");

    /* Empty file, comments only, an empty section and an explicit null string. */
    CU_ASSERT_EQUAL(load_yaml(&c, "", path, sizeof(path), NULL), 0);
    CU_ASSERT_STRING_EQUAL(c.bind, ":8000");
    CU_ASSERT_EQUAL(load_yaml(&c, "# nothing\n\n", path, sizeof(path), NULL), 0);
    CU_ASSERT_EQUAL(load_yaml(&c, "---\n", path, sizeof(path), NULL), 0);
    CU_ASSERT_EQUAL(load_yaml(&c, "---\nnode_name: x\n---\n...\n---\n", path, sizeof(path), NULL),
                    0);
    CU_ASSERT_STRING_EQUAL(c.node, "x");
    CU_ASSERT_EQUAL_FATAL(load_yaml(&c, "proxy:\nnode_name: ~\n", path, sizeof(path), NULL), 0);
    CU_ASSERT_STRING_EQUAL(c.bind, ":8000");
    CU_ASSERT_PTR_NULL(c.node);
    CU_ASSERT_EQUAL_FATAL(load_yaml(&c, "proxy: {bind_addr: ~}\n", path, sizeof(path), NULL), 0);
    CU_ASSERT_PTR_NULL(c.bind); /* a null overrides the default */
    CU_ASSERT_EQUAL_FATAL(load_yaml(&c, "proxy: {bind_addr: ''}\n", path, sizeof(path), NULL), 0);
    CU_ASSERT_STRING_EQUAL(c.bind, ""); /* quoted: an empty string, not null */
    CU_ASSERT_EQUAL_FATAL(load_yaml(&c, "node_name: 'null'\n", path, sizeof(path), NULL), 0);
    CU_ASSERT_STRING_EQUAL(c.node, "null");

    /* Anchors and aliases resolve. */
    CU_ASSERT_EQUAL_FATAL(load_yaml(&c,
                                    "node_name: &n shared\ncluster: {gossip: {bind_addr: *n}}\n",
                                    path, sizeof(path), NULL),
                          0);
    CU_ASSERT_STRING_EQUAL(c.gossip, "shared");
    pk_config_free(topts, NOPTS, &c);
}

static void test_yaml_errors(void)
{
    struct tcfg c = {0};
    char path[64], want[256];

    expect_yaml_error("proxy:\n  timeout: 1s\n\n\n\n\n  bind_adr: x\n",
                      "7: proxy.bind_adr: unknown key");
    expect_yaml_error("\n\nproxy:\n  timeout: abc\n", "4: proxy.timeout: invalid duration 'abc'");
    expect_yaml_error("proxy:\n  max_body_size: 1.5MiB\n",
                      "2: proxy.max-body-size: invalid size '1.5MiB'");
    expect_yaml_error("proxy:\n  workers: many\n", "2: proxy.workers: invalid integer 'many'");
    expect_yaml_error("log:\n  debug: maybe\n", "2: log.debug: invalid boolean 'maybe'");
    expect_yaml_error("proxy:\n  timeout: -5s\n", "2: proxy.timeout: invalid duration '-5s'");
    expect_yaml_error("tls: {}\n\n\n\nproxy: 5\n", "5: proxy: expected a mapping");
    expect_yaml_error("proxy:\n  timeout:\n    - 1s\n", "3: proxy.timeout: expected a duration");
    expect_yaml_error("node_name: {a: b}\n", "1: node-name: expected a string");
    expect_yaml_error("tags: {a: b}\n", "1: tags: expected a list or a scalar");
    expect_yaml_error("tags:\n  - a\n  - [b]\n", "3: tags: expected a list of scalars");
    expect_yaml_error("bogus: 1\n", "1: bogus: unknown key");
    expect_yaml_error("proxy:\n  bind_addr:\n    x: 1\n", "3: proxy.bind-addr: expected a string");
    expect_yaml_error("cluster: {gossip: {bind_addr: a, port: 1}}\n",
                      "1: cluster.gossip.port: unknown key");
    expect_yaml_error("just a string\n", "1: expected a mapping at the top level");
    expect_yaml_error("- a\n- b\n", "1: expected a mapping at the top level");
    expect_yaml_error("proxy:\n  timeout: 1s\n  timeout: 2s\n", "3: proxy.timeout: duplicate key");
    expect_yaml_error("proxy:\n  bind-addr: a\n  bind_addr: b\n",
                      "3: proxy.bind_addr: duplicate key");
    expect_yaml_error("proxy: {timeout: 1s}\nproxy.timeout: 2s\n",
                      "2: proxy.timeout: duplicate key");
    expect_yaml_error("? [a]\n: 1\n", "1: top level: keys must be scalars");
    expect_yaml_error("node_name: a\n---\nnode_name: b\n",
                      "2: multiple YAML documents are not supported");
    expect_yaml_error("node_name: a\n---\n---\n\n---\n- x\n",
                      "5: multiple YAML documents are not supported");
    expect_yaml_error("proxy:\n  timeout: 1s\n bad: [\n",
                      "3: YAML syntax error: did not find expected key");
    expect_yaml_error("proxy: [a, b\n\n", "3: YAML syntax error: did not find expected ',' or ']'");
    expect_yaml_error("node_name: *missing\n", "1: YAML syntax error: found undefined alias");

    /* Missing file: exact message and error code. */
    CU_ASSERT_EQUAL(LOAD(&c, "--config.path", "/nonexistent/piko.yaml"), PK_ERR_NOTFOUND);
    CU_ASSERT_STRING_EQUAL(err,
                           "config.path: cannot read '/nonexistent/piko.yaml': No such file or "
                           "directory");
    CU_ASSERT_EQUAL(LOAD(&c, "--config.path=/tmp"), PK_ERR_IO);
    CU_ASSERT_STRING_EQUAL(err, "config.path: cannot read '/tmp': Is a directory");

    /* An error in the file after a successful load leaves cfg empty. */
    CU_ASSERT_EQUAL_FATAL(LOAD(&c, "--node-name=x"), 0);
    CU_ASSERT_NOT_EQUAL(load_yaml(&c, "nope: 1\n", path, sizeof(path), NULL), 0);
    snprintf(want, sizeof(want), "%s:1: nope: unknown key", path);
    CU_ASSERT_STRING_EQUAL(err, want);
    CU_ASSERT_PTR_NULL(c.node);
    CU_ASSERT_PTR_NULL(c.bind);
    CU_ASSERT_PTR_NULL(c.tags.v);
    CU_ASSERT_EQUAL(c.tags.n, 0);
}

static void test_env_expansion(void)
{
    struct tcfg c = {0};
    char path[64];

    setenv("PIKO_TEST_ADDR", "10.0.0.1", 1);
    setenv("PIKO_TEST_EMPTY", "", 1);
    unsetenv("PIKO_TEST_UNSET");
    const char *yaml =
        "proxy:\n"
        "  bind_addr: ${PIKO_TEST_ADDR}:${PIKO_TEST_UNSET:8080}\n"
        "  timeout: ${PIKO_TEST_UNSET:45s}\n"
        "node_name: \"$$HOME-$${X}-${PIKO_TEST_EMPTY}-${PIKO_TEST_EMPTY:dflt}-$-a$\"\n"
        "cluster.gossip.bind_addr: ${PIKO_TEST_UNSET:}\n"
        "tags: [\"${PIKO_TEST_ADDR}\", 'x${PIKO_TEST_UNSET:a:b}y']\n";
    CU_ASSERT_EQUAL_FATAL(load_yaml(&c, yaml, path, sizeof(path), NULL), 0);
    CU_ASSERT_STRING_EQUAL(c.bind, "10.0.0.1:8080");
    CU_ASSERT_EQUAL(c.timeout, 45000);
    CU_ASSERT_STRING_EQUAL(c.node, "$HOME-${X}--dflt-$-a$");
    CU_ASSERT_STRING_EQUAL(c.gossip, "");
    CU_ASSERT_EQUAL_FATAL(c.tags.n, 2);
    CU_ASSERT_STRING_EQUAL(c.tags.v[0], "10.0.0.1");
    CU_ASSERT_STRING_EQUAL(c.tags.v[1], "xa:by");

    /* Flags are not expanded: the shell already did that. */
    CU_ASSERT_EQUAL_FATAL(LOAD(&c, "--node-name=${PIKO_TEST_ADDR}"), 0);
    CU_ASSERT_STRING_EQUAL(c.node, "${PIKO_TEST_ADDR}");
    pk_config_free(topts, NOPTS, &c);

    /* The expanded value is what gets parsed and reported. */
    setenv("PIKO_TEST_BAD", "soon", 1);
    expect_yaml_error("\n\nproxy:\n  timeout: ${PIKO_TEST_BAD}\n",
                      "4: proxy.timeout: invalid duration 'soon'");
    expect_yaml_error("\n\nproxy:\n  timeout: ${PIKO_TEST_UNSET}\n",
                      "4: proxy.timeout: environment variable PIKO_TEST_UNSET is not set");
    expect_yaml_error("tags:\n  - ok\n  - ${PIKO_TEST_UNSET}\n",
                      "3: tags: environment variable PIKO_TEST_UNSET is not set");
    expect_yaml_error("node_name: a${PIKO_TEST_ADDR\n",
                      "1: node-name: unterminated ${ in 'a${PIKO_TEST_ADDR'");
    expect_yaml_error("node_name: ${}\n", "1: node-name: invalid environment variable name ''");
    expect_yaml_error("node_name: ${1X}\n", "1: node-name: invalid environment variable name '1X'");
    unsetenv("PIKO_TEST_ADDR");
    unsetenv("PIKO_TEST_EMPTY");
    unsetenv("PIKO_TEST_BAD");
}

/* ---- help and lifetime ----------------------------------------------------------------- */

static void test_help_text(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    CU_ASSERT_FATAL(f != NULL);
    pk_config_print_help(topts, NOPTS, "piko-test", "Test summary.", f);
    fclose(f);
    CU_ASSERT_FATAL(text != NULL);
    CU_ASSERT_EQUAL(strncmp(text, "Usage: piko-test [flags]\n\nTest summary.\n", 40), 0);
    /* The longest left column is "--cluster.gossip.bind-addr STRING" (33 chars). */
    CU_ASSERT_PTR_NOT_NULL(
        strstr(text, "\n  --proxy.timeout DURATION            Upstream response timeout "
                     "(default 30s)\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(text, "\n  --cluster.gossip.bind-addr STRING   Gossip address\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\n  --proxy.bind-addr ADDR "));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\n  --log.debug                         Debug logging\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "Enable TLS (default true)\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "--upstream.addrs NAME=ADDR"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "Tags (repeatable) (default default)\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\n  --config.path FILE                  "));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\n  -h, --help                          "));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(text, "\n  --version                           Show the version"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "--proxy.bind-addr is\n  proxy: {bind_addr: ...}\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "${VAR:default}"));
    /* Every option line ends in a newline and none is empty of help. */
    CU_ASSERT_PTR_NULL(strstr(text, "   \n"));
    free(text);
}

/* Runs a load with stdout sent to a temp file; returns the load's result and what it
 * printed (caller frees). */
static int load_capturing_stdout(const char *const *args, char **printed)
{
    char path[64];
    struct tcfg c = {0};

    write_tmp(path, sizeof(path), "");
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    FILE *f = fopen(path, "w+");
    CU_ASSERT_FATAL(saved >= 0 && f != NULL);
    dup2(fileno(f), STDOUT_FILENO);
    int rc = load_args(&c, args);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);

    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    CU_ASSERT_FATAL(n >= 0);
    *printed = pk_xcalloc(1, (size_t)n + 1);
    rewind(f);
    CU_ASSERT_EQUAL(fread(*printed, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    unlink(path);
    pk_config_free(topts, NOPTS, &c);
    return rc;
}

static void test_help_flag(void)
{
    char *out = NULL;

    CU_ASSERT_EQUAL(load_capturing_stdout((const char *const[]){"--help", NULL}, &out),
                    PK_CONFIG_HELP);
    CU_ASSERT_EQUAL(strncmp(out, "Usage: piko-test [flags]\n", 25), 0);
    free(out);
    CU_ASSERT_EQUAL(load_capturing_stdout((const char *const[]){"-h", NULL}, &out), PK_CONFIG_HELP);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "--proxy.timeout DURATION"));
    free(out);
    /* Help wins over a broken config file and flags after it. */
    CU_ASSERT_EQUAL(
        load_capturing_stdout(
            (const char *const[]){"--config.path", "/nonexistent/x.yaml", "-h", "--bogus", NULL},
            &out),
        PK_CONFIG_HELP);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "Usage: "));
    free(out);
    /* An error before --help is reported instead, and nothing is printed. */
    CU_ASSERT_EQUAL(load_capturing_stdout((const char *const[]){"--bogus", "--help", NULL}, &out),
                    PK_ERR_INVALID);
    CU_ASSERT_STRING_EQUAL(out, "");
    free(out);
    /* --version prints "PROG VERSION", whatever else the command line holds. */
    CU_ASSERT_EQUAL(
        load_capturing_stdout(
            (const char *const[]){"--proxy.timeout", "5s", "--bogus", "--version", NULL}, &out),
        PK_CONFIG_HELP);
    CU_ASSERT_STRING_EQUAL(out, "piko-test " PIKO_VERSION "\n");
    free(out);
    CU_ASSERT_EQUAL(load_capturing_stdout((const char *const[]){"--", "--version", NULL}, &out),
                    PK_ERR_INVALID);
    free(out);
}

static void test_reload_and_free(void)
{
    struct tcfg c = {0};
    char path[64];

    CU_ASSERT_EQUAL_FATAL(LOAD(&c, "--node-name=a", "--tags=x", "--tags=y"), 0);
    /* Loading again replaces (and frees) every owned value; ASan reports any leak. */
    CU_ASSERT_EQUAL_FATAL(
        load_yaml(&c, "node_name: b\ntags: [p, q, r]\n", path, sizeof(path), NULL), 0);
    CU_ASSERT_STRING_EQUAL(c.node, "b");
    CU_ASSERT_EQUAL(c.tags.n, 3);
    CU_ASSERT_EQUAL_FATAL(LOAD(&c, "--proxy.workers=1"), 0);
    CU_ASSERT_PTR_NULL(c.node);
    CU_ASSERT_EQUAL(c.tags.n, 1);

    c.workers = 99;
    pk_config_free(topts, NOPTS, &c);
    CU_ASSERT_PTR_NULL(c.bind);
    CU_ASSERT_PTR_NULL(c.node);
    CU_ASSERT_PTR_NULL(c.gossip);
    CU_ASSERT_PTR_NULL(c.tags.v);
    CU_ASSERT_EQUAL(c.tags.n, 0);
    CU_ASSERT_PTR_NULL(c.upstreams.v);
    CU_ASSERT_EQUAL(c.workers, 99);   /* non-owned fields are left alone */
    pk_config_free(topts, NOPTS, &c); /* idempotent */

    struct pk_strlist l = {0};
    pk_strlist_append(&l, "one");
    pk_strlist_append(&l, "two");
    CU_ASSERT_EQUAL(l.n, 2);
    CU_ASSERT_STRING_EQUAL(l.v[1], "two");
    CU_ASSERT_PTR_NULL(l.v[2]);
    pk_strlist_clear(&l);
    CU_ASSERT_PTR_NULL(l.v);
    CU_ASSERT_EQUAL(l.n, 0);
}

static void test_bad_default(void)
{
    struct bad {
        uint64_t t;
        char *s;
    } b = {0};
    static const struct pk_opt opts[] = {
        {"s", PK_OPT_STRING, offsetof(struct bad, s), "str", "s", NULL},
        {"t", PK_OPT_DURATION, offsetof(struct bad, t), "forever", "t", NULL},
    };
    char *argv[] = {"prog", NULL};

    CU_ASSERT_EQUAL(pk_config_load(opts, 2, &b, 1, argv, "prog", NULL, err, sizeof(err)),
                    PK_ERR_INVALID);
    CU_ASSERT_STRING_EQUAL(err, "t: invalid duration default 'forever'");
    CU_ASSERT_PTR_NULL(b.s);
    /* err may be NULL. */
    CU_ASSERT_EQUAL(pk_config_load(opts, 2, &b, 1, argv, "prog", NULL, NULL, 0), PK_ERR_INVALID);
}

/* pk_config_locate: a message about an option the file set gains the file and line; one
 * about an option a flag or the default set is left alone. */
static void locate(const char *path, const char *const *args, char *msg, size_t len)
{
    char *argv[16];
    int argc = 0;

    argv[argc++] = "piko-test";
    if (path) {
        argv[argc++] = "--config.path";
        argv[argc++] = (char *)path;
    }
    for (; args && *args; args++)
        argv[argc++] = (char *)*args;
    argv[argc] = NULL;
    pk_config_locate(topts, NOPTS, argc, argv, msg, len);
}

static void test_locate(void)
{
    char path[64], msg[256], want[320];
    const char *none[] = {NULL};
    const char *flag[] = {"--proxy.workers=9", NULL};
    const char *list[] = {"--tags", "x", NULL};

    write_tmp(path, sizeof(path),
              "proxy:\n  bind_addr: nope\n\n  workers: 99\ntags:\n  - a\n  - b\n");
    snprintf(msg, sizeof(msg), "proxy.workers: must be at most 64");
    locate(path, none, msg, sizeof(msg));
    snprintf(want, sizeof(want), "%s:4: proxy.workers: must be at most 64", path);
    CU_ASSERT_STRING_EQUAL(msg, want);

    /* The option's name followed by a space also counts; the longest name wins. */
    snprintf(msg, sizeof(msg), "proxy.bind-addr and proxy.workers: pick one");
    locate(path, none, msg, sizeof(msg));
    snprintf(want, sizeof(want), "%s:2: proxy.bind-addr and proxy.workers: pick one", path);
    CU_ASSERT_STRING_EQUAL(msg, want);

    /* A list: the line where its items begin. */
    snprintf(msg, sizeof(msg), "tags: 'b' is not a tag");
    locate(path, none, msg, sizeof(msg));
    snprintf(want, sizeof(want), "%s:6: tags: 'b' is not a tag", path);
    CU_ASSERT_STRING_EQUAL(msg, want);

    /* A flag overrides the file: the flag is at fault. */
    snprintf(msg, sizeof(msg), "proxy.workers: must be at most 64");
    locate(path, flag, msg, sizeof(msg));
    CU_ASSERT_STRING_EQUAL(msg, "proxy.workers: must be at most 64");
    snprintf(msg, sizeof(msg), "tags: 'x' is not a tag");
    locate(path, list, msg, sizeof(msg));
    CU_ASSERT_STRING_EQUAL(msg, "tags: 'x' is not a tag");

    /* Not set by the file (a default), not an option, no file at all. */
    snprintf(msg, sizeof(msg), "proxy.timeout: too short");
    locate(path, none, msg, sizeof(msg));
    CU_ASSERT_STRING_EQUAL(msg, "proxy.timeout: too short");
    snprintf(msg, sizeof(msg), "proxy.workersx: no such option");
    locate(path, none, msg, sizeof(msg));
    CU_ASSERT_STRING_EQUAL(msg, "proxy.workersx: no such option");
    snprintf(msg, sizeof(msg), "proxy.workers: must be at most 64");
    locate(NULL, none, msg, sizeof(msg));
    CU_ASSERT_STRING_EQUAL(msg, "proxy.workers: must be at most 64");
    unlink(path);
    /* The file is gone: nothing to point at. */
    locate(path, none, msg, sizeof(msg));
    CU_ASSERT_STRING_EQUAL(msg, "proxy.workers: must be at most 64");
}

void pk_test_register_config(void)
{
    CU_pSuite s = CU_add_suite("config", NULL, NULL);

    CU_add_test(s, "parse_duration", test_parse_duration);
    CU_add_test(s, "parse_size", test_parse_size);
    CU_add_test(s, "parse_bool", test_parse_bool);
    CU_add_test(s, "parse_int", test_parse_int);
    CU_add_test(s, "defaults", test_defaults);
    CU_add_test(s, "flag_forms", test_flag_forms);
    CU_add_test(s, "bool_flags", test_bool_flags);
    CU_add_test(s, "flag_errors", test_flag_errors);
    CU_add_test(s, "list_flags", test_list_flags);
    CU_add_test(s, "precedence", test_precedence);
    CU_add_test(s, "yaml_nesting", test_yaml_nesting);
    CU_add_test(s, "yaml_errors", test_yaml_errors);
    CU_add_test(s, "env_expansion", test_env_expansion);
    CU_add_test(s, "help_text", test_help_text);
    CU_add_test(s, "help_flag", test_help_flag);
    CU_add_test(s, "reload_and_free", test_reload_and_free);
    CU_add_test(s, "bad_default", test_bad_default);
    CU_add_test(s, "locate", test_locate);
}
