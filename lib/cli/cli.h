/* cli: "piko-server status COMMAND", a client of a running node's admin port.
 *
 *   piko-server status endpoints | nodes | node ID | tunnels | requests  [flags]
 *
 * GETs /status/upstream/endpoints, /status/cluster/nodes, /status/cluster/nodes/ID,
 * /status/tunnels or /status/requests from --server.url (with ?forward=NODE: that node's
 * answer, relayed by the node asked) and prints it as a table or as indented JSON. The
 * token of --token or --token-file goes in "Authorization: Bearer". The blocking GET is
 * httpc's pk_httpc_fetch (libcurl's easy interface): the command has no event loop.
 *
 * Parsing, the URL, the tables and the error messages are pure functions (tests/test_cli.c);
 * pk_cli_status_main is the command. Exit status: 0, 1 (the server could not be reached or
 * did not answer a status), 2 (usage: bad flag, command or token file). */
#ifndef PK_CLI_H
#define PK_CLI_H

#include "config/config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct json_object;

#define PK_CLI_DEFAULT_URL "http://localhost:8002"

/* The flags (lib/config option table pk_cli_status_opts; also keys of --config.path). */
struct pk_cli_status_config {
    char *server_url;
    char *server_tls_root_cas;
    char *server_tls_cert;
    char *server_tls_key;
    char *token;
    char *token_file;
    char *forward;
    char *output; /* "table" or "json" */
    uint64_t timeout_ms;
};

extern const struct pk_opt pk_cli_status_opts[];
extern const size_t pk_cli_status_nopts;

/* One parsed command line. */
struct pk_cli_status {
    struct pk_cli_status_config cfg;
    const char *command; /* "endpoints", "nodes", "node", "tunnels" or "requests" (static) */
    char *node_id;       /* the ID of "node" (owned), else NULL */
    bool json;           /* --output json */
};

/* Parses argv[1..argc-1] (argv[0] is "status"): the command words and the flags, in any
 * order ("--" ends the flags). st must be zeroed. Returns 0 with st filled (release it with
 * pk_cli_status_free), PK_CONFIG_HELP after printing help or the version to stdout, or
 * PK_ERR_INVALID with a one-line message in err; st is left empty unless 0 is returned. */
int pk_cli_status_parse(struct pk_cli_status *st, int argc, char **argv, char *err, size_t errlen);
void pk_cli_status_free(struct pk_cli_status *st);

/* The URL to GET (malloc'd): --server.url without its trailing slashes ("http://" added
 * when it names no scheme), the command's path, and ?forward=NODE when given. */
char *pk_cli_status_url(const struct pk_cli_status *st);

/* The token to send (malloc'd; NULL when neither --token nor --token-file is set), read
 * from --token-file (at most 16 KiB, surrounding blanks and newlines dropped). Returns 0,
 * or PK_ERR_INVALID with a message in err (unreadable or empty file, both flags, a
 * control character in the token). */
int pk_cli_status_token(const struct pk_cli_status *st, char **token, char *err, size_t errlen);

/* The message (malloc'd, one line, no trailing newline) for a reply of status other than
 * 2xx to url, whose body is body (NUL-terminated, may be NULL; its "error" field is quoted
 * when it is JSON): 401 asks for a token, or says the one given was refused; 404 names the
 * node or the route; others give the status and the server's message. */
char *pk_cli_status_error(const struct pk_cli_status *st, const char *url, int status,
                          const char *body);

/* doc as the table of command (malloc'd text, each line ending in '\n'):
 *   nodes      ID, STATUS, PROXY ADDR, ENDPOINTS, TUNNELS
 *   endpoints  ENDPOINT, TUNNELS, STREAMS, IN, OUT
 *   tunnels    ID, ENDPOINT, SIDECAR, STATE, AGE, STREAMS, IN, OUT
 *   requests   TIME, METHOD, HOST, PATH, STATUS, DURATION, ENDPOINT, ROUTE, CLIENT, ERROR
 *   node (an object): one "key  value" line per member (nested values as compact JSON),
 *              then its endpoint_table as ENDPOINT, TUNNELS.
 * An array whose objects have none of the command's keys (another server version), or
 * of an unknown command, gets one column per key found, in order; a missing or null value
 * is "-". Never fails: whatever JSON doc is, something readable comes out. */
char *pk_cli_table(const char *command, struct json_object *doc);

/* The command: parses, GETs, prints to out (errors to err, prefixed "piko-server status:").
 * Returns the exit status. Initialises libcurl itself (pk_httpc_global_init). */
int pk_cli_status_main(int argc, char **argv, FILE *out, FILE *err);

#endif
