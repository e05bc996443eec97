/* Private to lib/sidecar: types shared by sidecar.c (tunnels) and local.c (services). */
#ifndef PK_SIDECAR_INT_H
#define PK_SIDECAR_INT_H

#include "h2/h2.h"
#include "sidecar/sidecar.h"

#include <stdbool.h>
#include <stdint.h>

struct hs;
struct sc_forward;
struct lconn;
struct pk_dial;
struct event;

/* One exposed endpoint and where its service listens. */
struct sc_endpoint {
    struct pk_sidecar *sc;
    char *name;
    char *host; /* local service */
    uint16_t port;
    bool tcp;           /* --tcp-endpoint: raw TCP only */
    int proxy_protocol; /* 0, 1 or 2: PROXY header before a TCP stream's bytes */
    struct sc_tunnel *tunnels;
    size_t ntunnels_up;
    bool dialing;
    struct hs *hs; /* the tunnel handshake in flight */
    uint64_t backoff_ms;
    struct event *redial_ev;
    struct lconn *idle; /* keep-alive connections to the service */
    size_t nidle;
    struct sc_endpoint *next;
};

struct sc_tunnel {
    struct sc_endpoint *ep;
    struct pk_h2conn *h2;
    uint64_t up_since_ms;
    bool up;
    bool replaced; /* a replacement was dialled after GOAWAY */
    struct sc_tunnel *next;
};

struct pk_sidecar {
    struct event_base *base;
    const struct pk_sidecar_config *cfg;
    struct pk_resolver *resolver;
    struct evhttp *admin;
    struct sc_endpoint *eps;
    char *server_host;
    uint16_t server_port;
    char *server_authority;
    bool tls;
    struct ssl_ctx_st *tls_ctx; /* SSL_CTX, when connect.url is https */
    char sidecar_id[64];
    struct pk_h2_settings tunnel_settings;
    bool draining;
    struct event *grace_ev;
    struct event *check_ev;
    size_t ntunnels; /* tunnel connections alive (incl. handshaking) */
    size_t nstreams; /* streams in flight */
    struct sc_forward *forwards;
    size_t nforwards; /* forwarded connections alive */
    char *fwd_host;
    uint16_t fwd_port;
};

/* local.c: serves one tunnel stream from the endpoint's service. */
void pk_local_serve(struct sc_endpoint *ep, struct pk_h2stream *s);
void pk_local_pool_free(struct sc_endpoint *ep);
/* raw.c: serves an extended CONNECT stream (piko-tcp or an HTTP upgrade). */
void pk_raw_serve(struct sc_endpoint *ep, struct pk_h2stream *s);

/* forward.c: --forward listeners. */
int pk_forward_config_check(const struct pk_sidecar_config *cfg, char *err, size_t errlen);
int pk_forward_start(struct pk_sidecar *sc, char *err, size_t errlen);
void pk_forward_stop_listening(struct pk_sidecar *sc);
/* Teardown: closes every listener and forwarded connection. */
void pk_forward_stop(struct pk_sidecar *sc);

/* sidecar.c */
void pk_sidecar_check_done(struct pk_sidecar *sc);

#endif
