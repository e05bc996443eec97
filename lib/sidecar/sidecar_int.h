/* Private to lib/sidecar: types shared by sidecar.c (config, admin, lifecycle), tunnel.c
 * (tunnels to the server) and local.c / raw.c (services). */
#ifndef PK_SIDECAR_INT_H
#define PK_SIDECAR_INT_H

#include "h2/h2.h"
#include "net/net.h"
#include "sidecar/sidecar.h"

#include <stdbool.h>
#include <stdint.h>

struct hs;
struct sc_forward;
struct lconn;
struct pk_dial;
struct event;
struct pk_admin;

/* One server URL of --connect.url. */
struct sc_server {
    char *url;  /* as given, for logs */
    char *host; /* also the TLS SNI and the name the certificate must match */
    uint16_t port;
    char *authority; /* Host of the handshake request */
    bool tls;
};

/* One of the connect.connections tunnels an endpoint keeps: its own dial, backoff and URL
 * cursor, and the tunnel that fills it. A tunnel replaced after a server GOAWAY leaves its
 * slot at once (the replacement takes its place) but stays on ep->tunnels, still serving,
 * until the slot's next tunnel is up and has drained it (or it closes: see tunnel.c). */
struct sc_slot {
    struct sc_endpoint *ep;
    unsigned index;
    size_t server; /* sc->servers index of this slot's next dial */
    struct hs *hs; /* the handshake in flight */
    uint64_t backoff_ms;
    struct event *redial_ev;
    struct sc_tunnel *tunnel; /* filling the slot (HTTP/2 started, maybe not ready yet) */
};

/* One exposed endpoint and where its service listens. */
struct sc_endpoint {
    struct pk_sidecar *sc;
    char *name;
    char *host; /* local service */
    uint16_t port;
    bool tcp;           /* --tcp-endpoint: raw TCP only */
    int proxy_protocol; /* 0, 1 or 2: PROXY header before a TCP stream's bytes */
    struct sc_slot *slots;
    size_t nslots;
    struct sc_tunnel *tunnels; /* every tunnel alive, replaced ones included */
    struct lconn *idle;        /* keep-alive connections to the service */
    size_t nidle;
    uint64_t refused_log_ms; /* a TCP endpoint's last "HTTP request refused" line */
    struct sc_endpoint *next;
};

struct sc_tunnel {
    struct sc_endpoint *ep;
    struct sc_slot *slot;
    size_t server; /* sc->servers index */
    struct pk_h2conn *h2;
    uint64_t up_since_ms;
    bool up;
    bool replaced; /* the server sent GOAWAY: a replacement fills the slot */
    bool drained;  /* we started the two-step drain */
    struct sc_tunnel *next;
};

struct pk_sidecar {
    struct event_base *base;
    const struct pk_sidecar_config *cfg;
    struct pk_resolver *resolver;
    struct pk_admin *admin;
    struct sc_endpoint *eps;
    struct sc_server *servers; /* connect.url, in order */
    size_t nservers;
    struct ssl_ctx_st *tls_ctx;    /* SSL_CTX, when a connect.url or forward.url is https */
    struct pk_memtrim *memtrim;    /* freed memory back to the kernel after tunnel churn */
    struct pk_linger_list lingers; /* TLS forwards ending with a close_notify */
    char sidecar_id[64];
    struct pk_h2_settings tunnel_settings;
    bool draining;
    struct event *grace_ev;
    struct event *check_ev;
    size_t ntunnels;                    /* tunnel connections alive (HTTP/2 started) */
    size_t nstreams;                    /* streams in flight */
    uint64_t stalled;                   /* exchanges aborted by local.stall-timeout */
    struct pk_sidecar_metrics *metrics; /* scmetrics.c */
    struct pk_accesslog *access;        /* scaccess.c: the access log, /status/requests */
    struct sc_forward *forwards;
    size_t nforwards; /* forwarded connections alive */
    char *fwd_host;
    uint16_t fwd_port;
};

/* tunnel.c: the connect.url list. On success *out holds *n >= 1 parsed URLs (release with
 * pk_servers_free); on failure PK_ERR_INVALID and err names connect.url and the bad item. */
int pk_servers_parse(const char *list, struct sc_server **out, size_t *n, char *err, size_t errlen);
void pk_servers_free(struct sc_server *v, size_t n);
/* tunnel.c: creates the endpoint's connect.connections slots and dials each. */
void pk_tunnels_start(struct sc_endpoint *ep);
/* True when a tunnel of ep is up and serving (a replaced one counts until it is drained). */
bool pk_tunnels_ready(const struct sc_endpoint *ep);
/* Shutdown (sc->draining already set): no more dials, two-step drain on every tunnel. */
void pk_tunnels_drain(struct sc_endpoint *ep);
/* Teardown: cancels dials and handshakes, aborts every tunnel (their on_close runs from
 * the loop). pk_tunnels_free once ep->tunnels is empty or the loop is gone. */
void pk_tunnels_abort(struct sc_endpoint *ep);
void pk_tunnels_free(struct sc_endpoint *ep);

/* scaccess.c: the access log and its /status/requests route (after the admin port). */
void pk_sidecar_access_new(struct pk_sidecar *sc);
void pk_sidecar_access_del(struct pk_sidecar *sc);

/* local.c: serves one tunnel stream from the endpoint's service. */
void pk_local_serve(struct sc_endpoint *ep, struct pk_h2stream *s);
void pk_local_pool_free(struct sc_endpoint *ep);
/* raw.c: serves an extended CONNECT stream (piko-tcp or an HTTP upgrade). */
void pk_raw_serve(struct sc_endpoint *ep, struct pk_h2stream *s);

/* forward.c: --forward listeners. */
int pk_forward_config_check(const struct pk_sidecar_config *cfg, char *err, size_t errlen);
/* True when --forward is used with an https forward.url. */
bool pk_forward_uses_tls(const struct pk_sidecar_config *cfg);
int pk_forward_start(struct pk_sidecar *sc, char *err, size_t errlen);
void pk_forward_stop_listening(struct pk_sidecar *sc);
/* Teardown: closes every listener and forwarded connection. */
void pk_forward_stop(struct pk_sidecar *sc);

/* sidecar.c */
void pk_sidecar_check_done(struct pk_sidecar *sc);

/* token.c: the bearer token of --connect.token / --connect.token-file (opt "connect.token")
 * or --forward.token(-file). Config check: not both, and a token given inline is one word
 * of visible ASCII. */
int pk_token_config_check(const char *token, const char *file, const char *opt, char *err,
                          size_t errlen);
/* The token to send now: *out (free it) is the inline token, or the token file read again
 * (blanks trimmed), or NULL when neither is configured. Returns 0, or PK_ERR_IO with the
 * reason in err when the file is missing, unreadable, or holds no token. */
int pk_token_get(const char *token, const char *file, char **out, char *err, size_t errlen);
/* An error answer of the server for a log line: "status 401: expired token" when the body
 * is PROTOCOL.md's JSON {"error": "..."}, else the status, its reason and the body's size
 * only ("status 404 Not Found (an answer that is not Piko's)": another server's
 * HTML page would fill every retry line). Control characters become spaces. Returns buf. */
const char *pk_error_message(int status, const char *body, size_t len, char *buf, size_t size);

/* scmetrics.c: the Prometheus registry and its /metrics route (after the admin port is
 * up). The counting functions may be called from anywhere on the loop. */
struct pk_sidecar_metrics;
void pk_sidecar_metrics_new(struct pk_sidecar *sc);
void pk_sidecar_metrics_del(struct pk_sidecar *sc);
/* One finished HTTP exchange with the local service. */
void pk_sidecar_metrics_request(struct pk_sidecar *sc, const char *endpoint, const char *method,
                                int status, uint64_t us);
/* One raw stream that was joined to the service (tcp, else upgrade), when it ends: in
 * bytes went to the service, out bytes came from it. */
void pk_sidecar_metrics_stream(struct pk_sidecar *sc, const char *endpoint, bool tcp, uint64_t in,
                               uint64_t out);
/* The local service failed an exchange or a stream; reason is a static label (NULL: not
 * the service's failure, nothing counted). */
void pk_sidecar_metrics_local_error(struct pk_sidecar *sc, const char *endpoint,
                                    const char *reason);
/* The label of a failed dial to a service: "resolve", "connect_timeout" or "connect". */
const char *pk_sidecar_dial_error(int err, const char *why);
/* A --forward listener (port: its bound port, as a string) accepted a connection. */
void pk_sidecar_metrics_forward(struct pk_sidecar *sc, const char *port);
/* A tunnel came up (t->up set) / closed (why: pk_h2conn's on_close reason). */
void pk_sidecar_metrics_tunnel_up(struct pk_sidecar *sc);
void pk_sidecar_metrics_tunnel_down(const struct sc_tunnel *t, const char *why);

#endif
