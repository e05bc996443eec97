/* cli: "piko-server status COMMAND" (cli.h): the command line, the request to the admin
 * port and what is printed. */
#include "cli/cli.h"

#include "base/base.h"
#include "config/config.h"
#include "httpc/httpc.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef PIKO_VERSION
#define PIKO_VERSION "dev"
#endif

/* Status documents are JSON of a few levels; a reply deeper than this is not one. */
#define MAX_JSON_DEPTH 64
/* /status/requests of a busy node, /status/upstream/endpoints of a big one. */
#define MAX_BODY_BYTES (16u << 20)
#define MAX_TOKEN_FILE (16 * 1024)

#define OPT(name, type, field, def, help, metavar)                                                 \
    {                                                                                              \
        name, type, offsetof(struct pk_cli_status_config, field), def, help, metavar               \
    }

const struct pk_opt pk_cli_status_opts[] = {
    OPT("server.url", PK_OPT_STRING, server_url, PK_CLI_DEFAULT_URL,
        "The node's admin port: http://HOST:PORT, or https:// when it has admin.tls.cert", "URL"),
    OPT("server.tls.root-cas", PK_OPT_STRING, server_tls_root_cas, NULL,
        "PEM CA certificates the admin port's certificate is verified against, host name "
        "included (https; unset: the system's CAs)",
        "FILE"),
    OPT("server.tls.cert", PK_OPT_STRING, server_tls_cert, NULL,
        "PEM client certificate, when the admin port requires one (admin.tls.client-cas)", "FILE"),
    OPT("server.tls.key", PK_OPT_STRING, server_tls_key, NULL, "PEM private key of server.tls.cert",
        "FILE"),
    OPT("token", PK_OPT_STRING, token, NULL,
        "Admin token (a JWT), sent as Authorization: Bearer; needed when the node sets "
        "admin.auth.*",
        "TOKEN"),
    OPT("token-file", PK_OPT_STRING, token_file, NULL,
        "File holding the admin token (unlike --token, not shown in the process list)", "FILE"),
    OPT("forward", PK_OPT_STRING, forward, NULL,
        "Show this node's view instead (a node id from 'status nodes'), asked through the "
        "node at server.url over the cluster port",
        "NODE"),
    OPT("output", PK_OPT_STRING, output, "table", "table or json (the reply, indented)", "FORMAT"),
    OPT("timeout", PK_OPT_DURATION, timeout_ms, "10s", "Give up after this long", NULL),
};
const size_t pk_cli_status_nopts = PK_ARRAY_LEN(pk_cli_status_opts);

struct command {
    const char *name;
    const char *path; /* on the admin port; "node" adds the ID */
    bool takes_id;
    const char *help;
};

static const struct command commands[] = {
    {"endpoints", "/status/upstream/endpoints", false,
     "the endpoints with tunnels on the node and their tunnel counts"},
    {"nodes", "/status/cluster/nodes", false,
     "the nodes of the cluster as this node sees them (itself first)"},
    {"node", "/status/cluster/nodes/", true, "one node in detail (ID: a node id, or local)"},
    {"tunnels", "/status/tunnels", false, "the sidecars' tunnels connected to the node"},
    {"requests", "/status/requests", false, "the node's last requests, newest first"},
};

#define USAGE "piko-server status endpoints|nodes|node ID|tunnels|requests"

/* The help's summary: what the command does and one line per command. malloc'd. */
static char *summary_text(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        abort(); /* only for want of memory: the pk_xmalloc policy */
    fputs("Shows a running piko-server's status, asked of its admin port "
          "(docs/manage/observability.md).\n\nCommands:",
          f);
    for (size_t i = 0; i < PK_ARRAY_LEN(commands); i++)
        fprintf(f, "\n  %-10s  %s", commands[i].takes_id ? "node ID" : commands[i].name,
                commands[i].help);
    fclose(f);
    return text;
}

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < PK_ARRAY_LEN(commands); i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* ---- the command line ------------------------------------------------------------------ */

/* Whether "--name" (name up to '=' or the end) takes the next argument as its value. */
static bool takes_value(const char *arg)
{
    if (strncmp(arg, "--", 2) != 0 || strchr(arg, '='))
        return false;
    const char *name = arg + 2;
    if (strcmp(name, "config.path") == 0)
        return true;
    for (size_t i = 0; i < pk_cli_status_nopts; i++)
        if (strcmp(pk_cli_status_opts[i].name, name) == 0)
            return pk_cli_status_opts[i].type != PK_OPT_BOOL;
    return false;
}

static bool valid_id(const char *s)
{
    return strcmp(s, "local") == 0 || pk_endpoint_id_valid(s, strlen(s));
}

/* The words that are not flags, checked against the commands. */
static int parse_words(struct pk_cli_status *st, char **words, size_t nwords, char *err,
                       size_t errlen)
{
    if (nwords == 0) {
        snprintf(err, errlen, "missing command: " USAGE " (see --help)");
        return PK_ERR_INVALID;
    }
    const struct command *c = find_command(words[0]);
    if (!c) {
        snprintf(err, errlen, "unknown command '%.64s': " USAGE " (see --help)", words[0]);
        return PK_ERR_INVALID;
    }
    if (c->takes_id && nwords < 2) {
        snprintf(err, errlen, "%s: missing node ID (a node id from 'status nodes', or local)",
                 c->name);
        return PK_ERR_INVALID;
    }
    size_t want = c->takes_id ? 2 : 1;
    if (nwords > want) {
        snprintf(err, errlen, "%s: unexpected argument '%.64s'", c->name, words[want]);
        return PK_ERR_INVALID;
    }
    if (c->takes_id && !valid_id(words[1])) {
        snprintf(err, errlen, "%s: invalid node id '%.64s' (1-128 characters of [A-Za-z0-9._-])",
                 c->name, words[1]);
        return PK_ERR_INVALID;
    }
    st->command = c->name;
    st->node_id = c->takes_id ? pk_xstrdup(words[1]) : NULL;
    return 0;
}

/* The flags' values that make no sense. */
static int check_flags(struct pk_cli_status *st, char *err, size_t errlen)
{
    const struct pk_cli_status_config *c = &st->cfg;
    if (!c->output || (strcmp(c->output, "table") != 0 && strcmp(c->output, "json") != 0)) {
        snprintf(err, errlen, "--output: want table or json (got '%.32s')",
                 c->output ? c->output : "");
        return PK_ERR_INVALID;
    }
    st->json = strcmp(c->output, "json") == 0;
    const char *u = c->server_url ? c->server_url : "";
    const char *scheme = strstr(u, "://");
    if (!*u || (scheme && strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0)) {
        snprintf(err, errlen,
                 "--server.url: want http://HOST:PORT or https://HOST:PORT (got '%.128s')", u);
        return PK_ERR_INVALID;
    }
    if (c->forward && !valid_id(c->forward)) {
        snprintf(err, errlen,
                 "--forward: invalid node id '%.64s' (1-128 characters of [A-Za-z0-9._-])",
                 c->forward);
        return PK_ERR_INVALID;
    }
    if (c->token && c->token_file) {
        snprintf(err, errlen, "--token and --token-file: give one of them");
        return PK_ERR_INVALID;
    }
    return 0;
}

int pk_cli_status_parse(struct pk_cli_status *st, int argc, char **argv, char *err, size_t errlen)
{
    /* The flags go to lib/config (argv[0] kept in front), the words to parse_words. */
    char **flags = pk_xcalloc((size_t)argc + 1, sizeof(*flags));
    char **words = pk_xcalloc((size_t)argc + 1, sizeof(*words));
    size_t nflags = 1, nwords = 0;
    flags[0] = argc > 0 ? argv[0] : "status";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--version") == 0) { /* the binary's, not the usage line's */
            printf("piko-server %s\n", PIKO_VERSION);
            fflush(stdout);
            free(flags);
            free(words);
            return PK_CONFIG_HELP;
        }
        if (strcmp(a, "--") == 0) {
            while (++i < argc)
                words[nwords++] = argv[i];
            break;
        }
        if (a[0] != '-' || a[1] == '\0') {
            words[nwords++] = argv[i];
            continue;
        }
        flags[nflags++] = argv[i];
        if (takes_value(a) && i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0)
            flags[nflags++] = argv[++i];
    }
    char *summary = summary_text();
    int rc = pk_config_load(pk_cli_status_opts, pk_cli_status_nopts, &st->cfg, (int)nflags, flags,
                            USAGE, summary, err, errlen);
    free(summary);
    if (rc == 0 && ((rc = parse_words(st, words, nwords, err, errlen)) != 0 ||
                    (rc = check_flags(st, err, errlen)) != 0))
        pk_cli_status_free(st);
    free(flags);
    free(words);
    return rc;
}

void pk_cli_status_free(struct pk_cli_status *st)
{
    pk_config_free(pk_cli_status_opts, pk_cli_status_nopts, &st->cfg);
    free(st->node_id);
    memset(st, 0, sizeof(*st));
}

char *pk_cli_status_url(const struct pk_cli_status *st)
{
    const char *u = st->cfg.server_url ? st->cfg.server_url : PK_CLI_DEFAULT_URL;
    size_t n = strlen(u);
    while (n > 0 && u[n - 1] == '/')
        n--;
    const struct command *c = find_command(st->command ? st->command : "");
    return pk_xasprintf("%s%.*s%s%s%s%s", strstr(u, "://") ? "" : "http://", (int)n, u,
                        c ? c->path : "/status", c && c->takes_id ? st->node_id : "",
                        st->cfg.forward ? "?forward=" : "", st->cfg.forward ? st->cfg.forward : "");
}

/* ---- the token -------------------------------------------------------------------------- */

static int read_token_file(const char *path, char **out, char *err, size_t errlen)
{
    int rc = PK_ERR_INVALID;
    char *buf = pk_xmalloc(MAX_TOKEN_FILE + 1);
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(err, errlen, "--token-file: cannot read '%.200s': %s", path, strerror(errno));
        goto out;
    }
    size_t n = fread(buf, 1, MAX_TOKEN_FILE + 1, f);
    if (ferror(f) || n > MAX_TOKEN_FILE) {
        snprintf(err, errlen, "--token-file: cannot read '%.200s': %s", path,
                 n > MAX_TOKEN_FILE ? "over 16 KiB" : "read error");
        goto out;
    }
    buf[n] = '\0';
    *out = buf;
    buf = NULL;
    rc = 0;
out:
    if (f)
        fclose(f);
    free(buf);
    return rc;
}

int pk_cli_status_token(const struct pk_cli_status *st, char **token, char *err, size_t errlen)
{
    *token = NULL;
    const char *from = st->cfg.token_file ? "--token-file" : "--token";
    char *t = NULL;
    if (st->cfg.token_file) {
        if (read_token_file(st->cfg.token_file, &t, err, errlen) != 0)
            return PK_ERR_INVALID;
    } else if (st->cfg.token) {
        t = pk_xstrdup(st->cfg.token);
    } else {
        return 0;
    }
    /* Blanks and the file's final newline around the token are not part of it. */
    size_t start = strspn(t, " \t\r\n"), end = strlen(t);
    while (end > start && strchr(" \t\r\n", t[end - 1]))
        end--;
    memmove(t, t + start, end - start);
    t[end - start] = '\0';
    const char *why = !t[0] ? "is empty" : NULL;
    for (const char *p = t; *p && !why; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            why = "has a control character (a token is one line)";
    if (why) {
        snprintf(err, errlen, "%s: the token %s", from, why);
        free(t);
        return PK_ERR_INVALID;
    }
    *token = t;
    return 0;
}

/* ---- errors ----------------------------------------------------------------------------- */

/* The server's own words: the "error" of a JSON object, else the body's first line (cut,
 * control characters replaced). malloc'd, "" when there are none. */
static char *server_message(const char *body)
{
    if (!body || !*body)
        return pk_xstrdup("");
    struct json_object *o = json_tokener_parse(body), *e = NULL;
    char *msg = NULL;
    if (o && json_object_object_get_ex(o, "error", &e) && json_object_is_type(e, json_type_string))
        msg = pk_xstrdup(json_object_get_string(e));
    json_object_put(o);
    if (!msg)
        msg = pk_xstrndup(body, PK_MIN(strcspn(body, "\r\n"), (size_t)200));
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return msg;
}

char *pk_cli_status_error(const struct pk_cli_status *st, const char *url, int status,
                          const char *body)
{
    char *m = server_message(body), *out;
    bool has_token = st->cfg.token || st->cfg.token_file;
    const char *fwd = st->cfg.forward;
    bool node = st->command && strcmp(st->command, "node") == 0;
    if (status == 401 && !has_token)
        out = pk_xasprintf("admin port requires a token: pass --token or --token-file (401 %s)",
                           *m ? m : "unauthorized");
    else if (status == 401)
        out = pk_xasprintf("the admin port refused the token (401 %s): check --token or "
                           "--token-file",
                           *m ? m : "unauthorized");
    else if (status == 403)
        out = pk_xasprintf("the admin port refused access (403 %s)", *m ? m : "forbidden");
    else if (status == 404 && strcmp(m, "node not found") == 0 && fwd &&
             (!node || strcmp(st->node_id, "local") == 0))
        out = pk_xasprintf("--forward: node %s not found (see 'piko-server status nodes')", fwd);
    else if (status == 404 && strcmp(m, "node not found") == 0 && fwd)
        out = pk_xasprintf("node %s not found: node %s does not know it, or there is no node %s "
                           "to forward to (see 'piko-server status nodes')",
                           st->node_id, fwd, fwd);
    else if (status == 404 && strcmp(m, "node not found") == 0 && node)
        out = pk_xasprintf("node %s not found (see 'piko-server status nodes')", st->node_id);
    else if (status == 404)
        out = pk_xasprintf("%s: 404 %s (a server without this status route: another version?)", url,
                           *m ? m : "not found");
    else
        out = pk_xasprintf("%s: %d %s", url, status, *m ? m : "(no message)");
    free(m);
    return out;
}

/* ---- the command ------------------------------------------------------------------------ */

/* The body as JSON, or NULL when it is not one complete JSON text. */
static struct json_object *parse_body(const char *body, size_t len)
{
    struct json_tokener *tok = json_tokener_new_ex(MAX_JSON_DEPTH);
    if (!tok)
        return NULL;
    struct json_object *o = json_tokener_parse_ex(tok, body, (int)PK_MIN(len, (size_t)INT32_MAX));
    size_t end = json_tokener_get_parse_end(tok);
    if (o && (json_tokener_get_error(tok) != json_tokener_success ||
              body[end + strspn(body + end, " \t\r\n")] != '\0')) {
        json_object_put(o);
        o = NULL;
    }
    json_tokener_free(tok);
    return o;
}

/* GETs and prints; the exit status. */
static int run(const struct pk_cli_status *st, const char *token, FILE *out, FILE *errf)
{
    char *url = pk_cli_status_url(st), *auth = NULL;
    const char *hdrs[] = {"Accept: application/json", NULL, NULL};
    if (token)
        hdrs[1] = auth = pk_xasprintf("Authorization: Bearer %s", token);
    struct pk_httpc_fetch_opts o = {
        .headers = hdrs,
        .timeout_ms = st->cfg.timeout_ms,
        .max_body = MAX_BODY_BYTES,
        .root_cas = st->cfg.server_tls_root_cas,
        .cert = st->cfg.server_tls_cert,
        .key = st->cfg.server_tls_key,
    };
    struct pk_httpc_result res;
    struct json_object *doc = NULL;
    int rc = 1;
    if (pk_httpc_fetch(url, &o, &res) != 0) {
        fprintf(errf, "piko-server status: cannot reach the admin port at %s: %s\n", url, res.err);
        goto out;
    }
    if (res.status < 200 || res.status > 299) {
        char *m = pk_cli_status_error(st, url, res.status, res.body);
        fprintf(errf, "piko-server status: %s\n", m);
        free(m);
        goto out;
    }
    if (!(doc = parse_body(res.body, res.len))) {
        char *m = server_message(res.body);
        fprintf(errf, "piko-server status: %s: the reply is not JSON (content-type %s): %.80s\n",
                url, res.content_type ? res.content_type : "none", m);
        free(m);
        goto out;
    }
    if (st->json) {
        fprintf(out, "%s\n",
                json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PRETTY |
                                                        JSON_C_TO_STRING_SPACED |
                                                        JSON_C_TO_STRING_NOSLASHESCAPE));
    } else {
        char *t = pk_cli_table(st->command, doc);
        fputs(t, out);
        free(t);
    }
    rc = fflush(out) == 0 ? 0 : 1;
out:
    json_object_put(doc);
    pk_httpc_result_free(&res);
    free(auth);
    free(url);
    return rc;
}

int pk_cli_status_main(int argc, char **argv, FILE *out, FILE *errf)
{
    struct pk_cli_status st;
    char err[512], *token = NULL;
    memset(&st, 0, sizeof(st));
    int rc = pk_cli_status_parse(&st, argc, argv, err, sizeof(err));
    if (rc == PK_CONFIG_HELP)
        return 0;
    if (rc == 0 && pk_cli_status_token(&st, &token, err, sizeof(err)) != 0)
        rc = PK_ERR_INVALID;
    if (rc != 0) {
        fprintf(errf, "piko-server status: %s\n", err);
        pk_cli_status_free(&st);
        return 2;
    }
    if (pk_httpc_global_init() != 0) {
        fprintf(errf, "piko-server status: cannot initialise libcurl\n");
        rc = 1;
    } else {
        rc = run(&st, token, out, errf);
        pk_httpc_global_cleanup();
    }
    free(token);
    pk_cli_status_free(&st);
    return rc;
}
