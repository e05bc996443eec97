/* piko-sidecar: parse the configuration, start the tunnels, run the loop, tear down. */
#include "base/base.h"
#include "base/log.h"
#include "base/memtrim.h"
#include "config/config.h"
#include "dns/dns.h"
#include "sidecar/sidecar.h"

#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

/* SIGHUP: certificates and keys are read again (new connections use them). */
static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    PK_UNUSED(sig);
    PK_UNUSED(what);
    PK_INFO("sidecar", "received SIGHUP: reloading TLS certificates");
    pk_sidecar_reload(arg);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    PK_UNUSED(what);
    PK_INFO("sidecar", "received %s", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    pk_sidecar_shutdown(arg);
}

int main(int argc, char **argv)
{
    struct pk_sidecar_config cfg;
    char err[1024];
    memset(&cfg, 0, sizeof(cfg));
    int rv = pk_config_load(pk_sidecar_opts, pk_sidecar_nopts, &cfg, argc, argv, "piko-sidecar",
                            "Piko sidecar: exposes local services through tunnels it dials out.",
                            err, sizeof(err));
    if (rv == PK_CONFIG_HELP)
        return 0;
    if (rv == 0 && pk_sidecar_config_check(&cfg, err, sizeof(err)) != 0) {
        pk_config_locate(pk_sidecar_opts, pk_sidecar_nopts, argc, argv, err, sizeof(err));
        rv = PK_ERR_INVALID;
    }
    /* The log is not configured yet: one plain line naming the key (after the file and
     * line when the value came from the file), exit status 2. */
    if (rv != 0) {
        fprintf(stderr, "piko-sidecar: config: %s\n", err);
        pk_config_free(pk_sidecar_opts, pk_sidecar_nopts, &cfg);
        return 2;
    }
    pk_log_configure(cfg.log.level, cfg.log.format, cfg.log.subsystems, err, sizeof(err));
    signal(SIGPIPE, SIG_IGN);
    pk_malloc_tune();
    unsigned long nofile = pk_raise_nofile();
    PK_DEBUG("sidecar", "open files limit %lu", nofile);

    /* Process-wide library state, once, before any loop (c-ares 1.18 initialises without
     * locks). The sidecar makes no libcurl transfer, so libcurl's global init (about 6 MB
     * of resident memory with its TLS backend) is not done. */
    if (pk_dns_global_init(err, sizeof(err)) != 0) {
        fprintf(stderr, "piko-sidecar: cannot initialise c-ares: %s\n", err);
        return 1;
    }
    struct event_base *base = event_base_new();
    struct pk_sidecar *sc = pk_sidecar_new(base, &cfg, err, sizeof(err));
    if (!sc) {
        pk_config_locate(pk_sidecar_opts, pk_sidecar_nopts, argc, argv, err, sizeof(err));
        PK_ERROR("sidecar", "cannot start: %s", err);
        event_base_free(base);
        pk_dns_global_cleanup();
        pk_config_free(pk_sidecar_opts, pk_sidecar_nopts, &cfg);
        return 1;
    }
    struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, sc);
    struct event *sigint = evsignal_new(base, SIGINT, on_signal, sc);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    struct event *sighup = evsignal_new(base, SIGHUP, on_hup, sc);
    event_add(sighup, NULL);
    PK_INFO("sidecar", "piko-sidecar %s started", PIKO_VERSION);

    event_base_dispatch(base);

    event_free(sigterm);
    event_free(sigint);
    event_free(sighup);
    pk_sidecar_del(sc);
    event_base_free(base);
    pk_dns_global_cleanup();
    pk_config_free(pk_sidecar_opts, pk_sidecar_nopts, &cfg);
    return 0;
}
