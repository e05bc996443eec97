/* The admin port's ?forward=NODE (docs/manage/observability.md): an authenticated GET of a
 * /status/ path whose query names another node is asked of that node through its cluster
 * port, GET /_piko/v1/cluster/status/{rest of the path}?{the rest of the query}, with the
 * cluster secret (or the cluster client certificate) like the state calls; the peer
 * answers what its own admin port would (clusterport.c) and that status and JSON body are
 * the reply. One hop: the peer never forwards again. */
#include "admin/admin.h"
#include "base/base.h"
#include "base/log.h"
#include "cluster/cluster.h"
#include "cluster/state.h"
#include "httpc/httpc.h"
#include "net/tls.h"
#include "server/server_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATUS_PREFIX  "/status/"
#define CLUSTER_STATUS "/_piko/v1/cluster/status/"
#define FORWARD_KEY    "forward="

/* One admin request waiting for a peer's answer. */
struct fwd {
    struct pk_server *srv;
    struct pk_admin_req *req;
    struct pk_httpc_req *hr;
    uint64_t timeout_ms;
    char node[130];
};

int pk_status_forward_split(const char *query, char *node, size_t nodelen, char **rest)
{
    *rest = NULL;
    node[0] = '\0';
    if (!query)
        return 0;
    const size_t klen = strlen(FORWARD_KEY);
    const char *found = NULL;
    size_t flen = 0, len = 0;
    char *out = pk_xmalloc(strlen(query) + 1);
    for (const char *p = query; *p;) {
        size_t n = strcspn(p, "&");
        if (!found && n >= klen && strncmp(p, FORWARD_KEY, klen) == 0) {
            found = p + klen;
            flen = n - klen;
        } else if (n > 0) {
            if (len)
                out[len++] = '&';
            memcpy(out + len, p, n);
            len += n;
        }
        p += n + (p[n] == '&');
    }
    out[len] = '\0';
    if (!found || !len) {
        free(out);
        out = NULL;
    }
    if (!found)
        return 0;
    *rest = out;
    if (flen == 0 || flen >= nodelen)
        return PK_ERR_INVALID;
    memcpy(node, found, flen);
    node[flen] = '\0';
    return 1;
}

static void fwd_cancel(struct pk_admin_req *req, void *arg)
{
    struct fwd *f = arg;
    PK_UNUSED(req);
    pk_httpc_cancel(f->hr);
    free(f);
}

static void fwd_done(int status, const char *body, size_t len, const char *err, void *arg)
{
    struct fwd *f = arg;
    struct pk_admin_req *req = f->req;
    char msg[320];
    pk_admin_req_on_cancel(req, NULL, NULL);
    if (status == 0 || status == 401) {
        /* A 401 is the peer's cluster port refusing us (its status routes need no admin
         * token from a peer): our cluster secret or certificate, not the client's token. */
        bool timeout = err && strcmp(err, "Timeout was reached") == 0;
        if (status == 401)
            snprintf(msg, sizeof(msg), "node %s refused this node's cluster credentials", f->node);
        else if (timeout)
            snprintf(msg, sizeof(msg), "node %s did not answer within %llums", f->node,
                     (unsigned long long)f->timeout_ms);
        else
            snprintf(msg, sizeof(msg), "node %s unreachable: %s", f->node, err ? err : "");
        PK_INFO("admin", "forward failed peer=%s path=%.200s node=%s: %s", pk_admin_req_peer(req),
                pk_admin_req_path(req), f->node, msg);
        pk_admin_reply_error(req, timeout ? 504 : 502, msg);
    } else {
        pk_admin_reply_text(req, status, "application/json", body, len);
    }
    free(f);
}

/* The client that asks peers, made at the first forward with the cluster's TLS files. */
static struct pk_httpc *fwd_client(struct pk_server *srv)
{
    if (!srv->node.status_http) {
        srv->node.status_http = pk_httpc_new(srv->loop.base, PK_STATE_MAX_BYTES);
        const struct pk_tls_files *t = &srv->node.cfg->cluster_tls;
        if (srv->node.status_http && pk_server_tls_cluster_client(srv))
            pk_httpc_set_tls(srv->node.status_http, t->root_cas, t->cert, t->key);
    }
    return srv->node.status_http;
}

bool pk_status_forward(struct pk_server *srv, struct pk_admin_req *req)
{
    const char *path = pk_admin_req_path(req);
    char node[130], *rest = NULL;
    if (pk_admin_req_internal(req) || strncmp(path, STATUS_PREFIX, strlen(STATUS_PREFIX)) != 0)
        return false;
    int rc = pk_status_forward_split(pk_admin_req_query(req), node, sizeof(node), &rest);
    if (rc == 0 ||
        (rc > 0 && (strcmp(node, "local") == 0 || strcmp(node, srv->node.node_id) == 0))) {
        free(rest);
        return false; /* answered here, by the route's handler */
    }
    const char *addr = rc > 0 && pk_endpoint_id_valid(node, strlen(node))
                           ? pk_cluster_node_addr(srv->node.cluster, node)
                           : NULL;
    struct pk_httpc *h = addr ? fwd_client(srv) : NULL;
    if (!addr || !h) {
        free(rest);
        pk_admin_reply_error(req, addr ? 502 : 404,
                             addr ? "cannot start the HTTP client" : "node not found");
        return true;
    }
    const struct pk_server_config *cfg = srv->node.cfg;
    char *url = pk_xasprintf("%s://%s" CLUSTER_STATUS "%s%s%s",
                             pk_server_tls_cluster_client(srv) ? "https" : "http", addr,
                             path + strlen(STATUS_PREFIX), rest ? "?" : "", rest ? rest : "");
    char *auth = cfg->cluster_secret && *cfg->cluster_secret
                     ? pk_xasprintf("piko-authorization: Bearer %s", cfg->cluster_secret)
                     : NULL;
    const char *hdrs[] = {auth, NULL};
    struct fwd *f = pk_xcalloc(1, sizeof(*f));
    f->srv = srv;
    f->req = req;
    f->timeout_ms = cfg->cluster_peer_timeout_ms;
    snprintf(f->node, sizeof(f->node), "%s", node);
    f->hr = pk_httpc_get(h, url, auth ? hdrs : NULL, f->timeout_ms, fwd_done, f);
    PK_DEBUG("admin", "forward peer=%s path=%.200s node=%s url=%s", pk_admin_req_peer(req), path,
             node, url);
    free(url);
    free(auth);
    free(rest);
    if (!f->hr) {
        free(f);
        pk_admin_reply_error(req, 502, "cannot start the request to the node");
        return true;
    }
    pk_admin_req_on_cancel(req, fwd_cancel, f);
    return true;
}

void pk_status_forward_free(struct pk_server *srv)
{
    pk_httpc_del(srv->node.status_http);
    srv->node.status_http = NULL;
}
