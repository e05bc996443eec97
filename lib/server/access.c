/* The server's access log (accesslog/accesslog.h): one record per finished exchange of
 * the proxy port, and of the cluster port's forwarded streams (state calls are not
 * requests), and /status/requests on the admin port: the last records, newest first. */
#include "accesslog/accesslog.h"
#include "admin/admin.h"
#include "base/base.h"
#include "server/exchange.h"
#include "server/server_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void requests_reply(struct pk_admin_req *req, void *arg)
{
    struct pk_server *srv = arg;
    pk_admin_reply(req, 200, pk_accesslog_recent_json(srv->loop.access));
}

/* Behind the admin port's token, like every /status route. */
static void requests_route(struct pk_admin_req *req, void *arg)
{
    pk_admin_auth(arg, req, requests_reply);
}

void pk_server_access_new(struct pk_server *srv)
{
    srv->loop.access =
        pk_accesslog_from_options(&srv->node.cfg->log, srv->node.node_id, srv->loop.base);
    pk_admin_route(srv->node.admin, "/status/requests", false, requests_route, srv);
}

void pk_server_access_del(struct pk_server *srv)
{
    pk_accesslog_del(srv->loop.access);
    srv->loop.access = NULL;
}

void pk_exchange_log(struct exchange *ex, uint64_t took_us)
{
    struct pk_server *srv = ex->srv;
    if (!srv->loop.access || (ex->cluster && !ex->forwarded))
        return; /* state calls, and a cluster request refused before it was one */
    char tcp_path[sizeof(TCP_PREFIX) + sizeof(ex->endpoint)];
    struct pk_access_rec r = {
        .kind = ex->tcp   ? "tcp"
                : ex->raw ? "upgrade"
                          : "http",
        .endpoint = ex->endpoint[0] ? ex->endpoint : NULL,
        .client = ex->client,
        .method = ex->method,
        .host = ex->req.authority ? ex->req.authority : ex->held.authority,
        .path = ex->req.path ? ex->req.path : ex->held.path,
        .status = ex->status,
        .bytes_in = ex->req_body.total_in,
        .bytes_out = ex->resp_body.total_out,
        .duration_us = took_us,
        .forwarded_by = ex->forwarded_by[0] ? ex->forwarded_by : NULL,
        .error = ex->error[0] ? ex->error : NULL,
        .request_headers = &ex->req.hdrs,
        .response_headers = &ex->resp_hdrs,
    };
    if (!ex->via[0]) {
        r.route = "proxy";
    } else if (ex->via_peer) {
        r.route = "peer";
        r.peer = ex->via;
    } else {
        r.route = "tunnel";
        r.tunnel = ex->via;
    }
    if (ex->tcp) { /* the tunnel's request is "endpoint:0": show what the client asked */
        r.host = NULL;
        snprintf(tcp_path, sizeof(tcp_path), "%s%s", TCP_PREFIX, ex->endpoint);
        r.path = tcp_path;
    }
    /* An HTTP/1.1 client saw the tunnel's 200 for a raw stream as 101 Switching Protocols. */
    if (ex->raw && ex->down_h1 && r.status == 200)
        r.status = 101;
    if (!ex->status && !r.error)
        r.error = "client closed before the response";
    pk_accesslog_add(srv->loop.access, &r);
}
