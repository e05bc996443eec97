/* The ports' TLS (docs/manage/security.md): one pk_tls_server per port that has a
 * certificate, the context peers are dialled with, and their reload on SIGHUP.
 *
 * ALPN: the proxy port offers h2 and http/1.1 (the proxy then skips the preface sniff),
 * the upstream port http/1.1 only (the tunnel handshake is HTTP/1.1, then reverse h2), the
 * cluster port h2 (peer links) and http/1.1 (state calls). The admin port (lib/admin) speaks
 * HTTP/1.1 without ALPN.
 *
 * Also the ports' counters in the status API (pk_server_listeners_status). */
#include "admin/admin.h"
#include "base/base.h"
#include "base/log.h"
#include "cluster/cluster.h"
#include "net/tls.h"
#include "server/server_int.h"

#include <json-c/json.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pk_server_tls {
    struct pk_tls_server *port[PK_PORT_COUNT];
    SSL_CTX *cluster_client;
};

static const char *const port_names[PK_PORT_COUNT] = {"proxy", "upstream", "admin", "cluster"};

const char *pk_port_name(enum pk_port p)
{
    return port_names[p];
}
static const char *const alpn_h2[] = {"h2", NULL};

static const struct pk_tls_files *port_files(const struct pk_server_config *cfg, enum pk_port p)
{
    switch (p) {
    case PK_PORT_PROXY:
        return &cfg->proxy_tls;
    case PK_PORT_UPSTREAM:
        return &cfg->upstream_tls;
    case PK_PORT_ADMIN:
        return &cfg->admin_tls;
    case PK_PORT_CLUSTER:
    default:
        return &cfg->cluster_tls;
    }
}

static const char *const *port_alpn(enum pk_port p)
{
    switch (p) {
    case PK_PORT_PROXY:
    case PK_PORT_CLUSTER:
        return pk_alpn_h2_http11;
    case PK_PORT_UPSTREAM:
        return pk_alpn_http11;
    case PK_PORT_ADMIN:
    default:
        return NULL;
    }
}

int pk_server_tls_check(const struct pk_server_config *cfg, char *err, size_t errlen)
{
    char prefix[32];
    for (int p = 0; p < PK_PORT_COUNT; p++) {
        snprintf(prefix, sizeof(prefix), "%s.tls", port_names[p]);
        if (pk_tls_server_files_check(prefix, port_files(cfg, (enum pk_port)p), err, errlen) != 0)
            return PK_ERR_INVALID;
    }
    /* All or nothing: a node serving TLS to peers dials them over TLS too. */
    const struct pk_tls_files *c = &cfg->cluster_tls;
    if (pk_tls_set(c->root_cas) && !pk_tls_set(c->cert)) {
        snprintf(err, errlen,
                 "cluster.tls.root-cas: needs cluster.tls.cert and cluster.tls.key (TLS on the "
                 "cluster port is all or nothing)");
        return PK_ERR_INVALID;
    }
    if (pk_tls_set(c->cert) && !pk_tls_set(c->root_cas) && cfg->cluster_join &&
        *cfg->cluster_join) {
        snprintf(err, errlen,
                 "cluster.tls.root-cas: required with cluster.tls.cert and cluster.join (peers "
                 "are dialled over TLS and verified against it)");
        return PK_ERR_INVALID;
    }
    return 0;
}

int pk_server_tls_new(struct pk_server *srv, char *err, size_t errlen)
{
    const struct pk_server_config *cfg = srv->node.cfg;
    srv->node.tls = pk_xcalloc(1, sizeof(*srv->node.tls));
    for (int p = 0; p < PK_PORT_COUNT; p++) {
        struct pk_tls_files f = *port_files(cfg, (enum pk_port)p);
        if (!pk_tls_set(f.cert))
            continue;
        f.groups = cfg->tls_groups;
        srv->node.tls->port[p] = pk_tls_server_new(srv->loop.base, port_names[p], &f,
                                                   port_alpn((enum pk_port)p), err, errlen);
        if (!srv->node.tls->port[p])
            return PK_ERR_INVALID;
        PK_INFO("tls", "port=%s cert=%s%s%s groups=%s", port_names[p], f.cert,
                pk_tls_set(f.client_cas) ? " client-cas=" : "",
                pk_tls_set(f.client_cas) ? f.client_cas : "", f.groups);
    }
    if (pk_tls_set(cfg->cluster_tls.root_cas)) {
        srv->node.tls->cluster_client =
            pk_tls_client_ctx_new("cluster.tls", &cfg->cluster_tls, false, alpn_h2, err, errlen);
        if (!srv->node.tls->cluster_client)
            return PK_ERR_INVALID;
        PK_INFO("tls",
                "peers are dialled over TLS, verified against root-cas=%s (chain only, "
                "not the address)",
                cfg->cluster_tls.root_cas);
    }
    return 0;
}

void pk_server_tls_free(struct pk_server *srv)
{
    if (!srv->node.tls)
        return;
    for (int p = 0; p < PK_PORT_COUNT; p++)
        pk_tls_server_del(srv->node.tls->port[p]);
    SSL_CTX_free(srv->node.tls->cluster_client);
    free(srv->node.tls);
    srv->node.tls = NULL;
}

struct pk_tls_server *pk_server_tls_port(struct pk_server *srv, enum pk_port port)
{
    return srv->node.tls ? srv->node.tls->port[port] : NULL;
}

struct ssl_ctx_st *pk_server_tls_cluster_client(struct pk_server *srv)
{
    return srv->node.tls ? srv->node.tls->cluster_client : NULL;
}

void pk_server_reload(struct pk_server *srv)
{
    char err[512];
    if (!srv->node.tls)
        return;
    for (int p = 0; p < PK_PORT_COUNT; p++) {
        struct pk_tls_server *ts = srv->node.tls->port[p];
        if (!ts)
            continue;
        if (pk_tls_server_reload(ts, err, sizeof(err)) != 0)
            PK_WARN("tls", "reload failed port=%s, keeping the current certificate: %s",
                    port_names[p], err);
        else
            PK_INFO("tls", "reloaded port=%s cert=%s", port_names[p],
                    port_files(srv->node.cfg, (enum pk_port)p)->cert);
    }
    if (srv->node.tls->cluster_client) {
        SSL_CTX *ctx = pk_tls_client_ctx_new("cluster.tls", &srv->node.cfg->cluster_tls, false,
                                             alpn_h2, err, sizeof(err));
        if (!ctx) {
            PK_WARN("tls", "reload failed for peer links, keeping the current context: %s", err);
        } else {
            SSL_CTX_free(srv->node.tls->cluster_client);
            srv->node.tls->cluster_client = ctx;
            pk_cluster_set_tls_ctx(srv->node.cluster, ctx);
        }
    }
}

void pk_server_tls_status(struct pk_server *srv, struct json_object *o)
{
    bool any = false;
    for (int p = 0; srv->node.tls && p < PK_PORT_COUNT; p++)
        any = any || srv->node.tls->port[p];
    if (!any)
        return; /* no TLS port: no "tls" object rather than an empty one */
    struct json_object *t = json_object_new_object();
    for (int p = 0; p < PK_PORT_COUNT; p++) {
        struct pk_tls_server *ts = srv->node.tls->port[p];
        if (!ts)
            continue;
        struct json_object *po = json_object_new_object();
        json_object_object_add(po, "handshakes",
                               json_object_new_int64((int64_t)pk_tls_server_handshakes(ts)));
        json_object_object_add(po, "handshake_failures",
                               json_object_new_int64((int64_t)pk_tls_server_failures(ts)));
        json_object_object_add(po, "mtls", json_object_new_boolean(pk_tls_server_mtls(ts)));
        json_object_object_add(t, port_names[p], po);
    }
    json_object_object_add(o, "tls", t);
}

static void listener_json(struct json_object *ls, const char *name, const struct pk_listener *l)
{
    if (!l)
        return;
    struct pk_listener_stats st;
    pk_listener_stats(l, &st);
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "accepted", json_object_new_int64((int64_t)st.accepted));
    json_object_object_add(o, "accept_errors", json_object_new_int64((int64_t)st.accept_errors));
    json_object_object_add(o, "fd_exhausted", json_object_new_int64((int64_t)st.fd_exhausted));
    json_object_object_add(o, "shed", json_object_new_int64((int64_t)st.shed));
    json_object_object_add(ls, name, o);
}

void pk_server_listeners_status(struct pk_server *srv, struct json_object *o)
{
    struct json_object *ls = json_object_new_object();
    listener_json(ls, "proxy", srv->loop.proxy_l);
    listener_json(ls, "upstream", srv->loop.upstream_l);
    listener_json(ls, "cluster", srv->loop.cluster_l);
    if (srv->node.admin) {
        struct pk_admin_stats st;
        pk_admin_stats(srv->node.admin, &st);
        struct json_object *a = json_object_new_object();
        json_object_object_add(a, "accepted", json_object_new_int64((int64_t)st.accepted));
        json_object_object_add(a, "refused", json_object_new_int64((int64_t)st.refused));
        json_object_object_add(a, "requests", json_object_new_int64((int64_t)st.requests));
        json_object_object_add(a, "connections", json_object_new_int64((int64_t)st.connections));
        json_object_object_add(ls, "admin", a);
    }
    json_object_object_add(o, "listeners", ls);
    struct json_object *c = json_object_new_object();
    json_object_object_add(c, "proxy", json_object_new_int64((int64_t)srv->loop.nconns));
    json_object_object_add(c, "upstream", json_object_new_int64((int64_t)srv->loop.ntunnels_open));
    json_object_object_add(c, "refused", json_object_new_int64((int64_t)srv->loop.refused_conns));
    json_object_object_add(c, "stalled", json_object_new_int64((int64_t)srv->loop.stalled));
    json_object_object_add(o, "connections", c);
}
