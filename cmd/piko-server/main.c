/* piko-server: parse the configuration, build the node, run the loop, tear down; or, as
 * "piko-server status ...", ask a running node's admin port (lib/cli). */
#include "base/base.h"
#include "base/log.h"
#include "base/memtrim.h"
#include "cli/cli.h"
#include "config/config.h"
#include "dns/dns.h"
#include "httpc/httpc.h"
#include "server/server.h"

#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

/* SIGHUP: certificates and keys are read again (new connections use them). */
static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    PK_UNUSED(sig);
    PK_UNUSED(what);
    PK_INFO("server", "received SIGHUP: reloading TLS certificates");
    pk_server_reload(arg);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    PK_UNUSED(what);
    PK_INFO("server", "received %s", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    pk_server_shutdown(arg);
}

int main(int argc, char **argv)
{
    struct pk_server_config cfg;
    char err[1024];
    if (argc > 1 && strcmp(argv[1], "status") == 0)
        return pk_cli_status_main(argc - 1, argv + 1, stdout, stderr);
    memset(&cfg, 0, sizeof(cfg));
    int rv = pk_config_load(pk_server_opts, pk_server_nopts, &cfg, argc, argv, "piko-server",
                            "Piko server: routes downstream requests to sidecars' tunnels.\n"
                            "'piko-server status --help' shows the status command (a running "
                            "node's endpoints, nodes, tunnels and requests).",
                            err, sizeof(err));
    if (rv == PK_CONFIG_HELP)
        return 0;
    if (rv == 0 && pk_server_config_check(&cfg, err, sizeof(err)) != 0) {
        pk_config_locate(pk_server_opts, pk_server_nopts, argc, argv, err, sizeof(err));
        rv = PK_ERR_INVALID;
    }
    /* The log is not configured yet: one plain line naming the key (after the file and
     * line when the value came from the file), exit status 2. */
    if (rv != 0) {
        fprintf(stderr, "piko-server: config: %s\n", err);
        pk_config_free(pk_server_opts, pk_server_nopts, &cfg);
        return 2;
    }
    pk_log_configure(cfg.log.level, cfg.log.format, cfg.log.subsystems, err, sizeof(err));
    signal(SIGPIPE, SIG_IGN);
    pk_malloc_tune();
    unsigned long nofile = pk_raise_nofile();
    PK_DEBUG("server", "open files limit %lu", nofile);

    /* Process-wide library state, once, before any loop (libcurl 7.88 and c-ares 1.18
     * initialise without locks). */
    err[0] = '\0';
    if (pk_dns_global_init(err, sizeof(err)) != 0 || pk_httpc_global_init() != 0) {
        fprintf(stderr, "piko-server: cannot initialise c-ares or libcurl%s%s\n",
                err[0] ? ": " : "", err);
        return 1;
    }
    struct event_base *base = event_base_new();
    struct pk_server *srv = pk_server_new(base, &cfg, err, sizeof(err));
    if (!srv) {
        pk_config_locate(pk_server_opts, pk_server_nopts, argc, argv, err, sizeof(err));
        PK_ERROR("server", "cannot start: %s", err);
        event_base_free(base);
        pk_httpc_global_cleanup();
        pk_dns_global_cleanup();
        pk_config_free(pk_server_opts, pk_server_nopts, &cfg);
        return 1;
    }
    struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, srv);
    struct event *sigint = evsignal_new(base, SIGINT, on_signal, srv);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    struct event *sighup = evsignal_new(base, SIGHUP, on_hup, srv);
    event_add(sighup, NULL);
    PK_INFO("server", "piko-server %s ready", PIKO_VERSION);

    event_base_dispatch(base);

    event_free(sigterm);
    event_free(sigint);
    event_free(sighup);
    pk_server_del(srv);
    event_base_free(base);
    pk_httpc_global_cleanup();
    pk_dns_global_cleanup();
    pk_config_free(pk_server_opts, pk_server_nopts, &cfg);
    PK_INFO("server", "exited");
    return 0;
}
