/* The admin port's view of this node's tunnels (docs/manage/observability.md "Status
 * API"): /status/upstream/endpoints and /status/tunnels, and the status page at "/".
 *
 * The two routes are answered from admin_other in server.c, so they sit behind the admin
 * token like every /status route. The page carries no data (it fetches the routes with the
 * operator's token), so it is served without one. */
#include "admin/admin.h"
#include "base/base.h"
#include "h2/h2.h"
#include "server/server_int.h"

#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

static void add_u64(struct json_object *o, const char *key, uint64_t v)
{
    json_object_object_add(o, key, json_object_new_int64((int64_t)v));
}

static int by_id(const void *a, const void *b)
{
    const struct endpoint *const *x = a, *const *y = b;
    return strcmp((*x)->id, (*y)->id);
}

/* One endpoint of the routing table: its registered tunnels summed. An endpoint is "tcp"
 * when every sidecar serving it said so (an HTTP endpoint takes TCP streams too). */
static struct json_object *endpoint_json(const struct endpoint *e)
{
    uint64_t streams = 0, total = 0, in = 0, out = 0;
    bool tcp = e->tunnels != NULL;
    for (const struct tunnel *t = e->tunnels; t; t = t->next) {
        uint64_t tin, tout;
        pk_h2conn_data_bytes(t->h2, &tin, &tout);
        streams += pk_h2conn_nstreams(t->h2);
        total += t->served;
        in += tin;
        out += tout;
        tcp = tcp && t->tcp;
    }
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "endpoint", json_object_new_string(e->id));
    add_u64(o, "tunnels", e->ntunnels);
    json_object_object_add(o, "tcp", json_object_new_boolean(tcp));
    add_u64(o, "streams", streams);
    add_u64(o, "streams_total", total);
    add_u64(o, "bytes_in", in);
    add_u64(o, "bytes_out", out);
    return o;
}

/* GET /status/upstream/endpoints: the endpoints with a tunnel on this node, by name. */
static struct json_object *endpoints_json(struct pk_server *srv)
{
    size_t n = 0, i = 0;
    for (size_t b = 0; b < PK_EP_BUCKETS; b++)
        for (struct endpoint *e = srv->node.eps[b]; e; e = e->next)
            n++;
    struct endpoint **v = pk_xcalloc(n ? n : 1, sizeof(*v));
    for (size_t b = 0; b < PK_EP_BUCKETS; b++)
        for (struct endpoint *e = srv->node.eps[b]; e; e = e->next)
            v[i++] = e;
    qsort(v, n, sizeof(*v), by_id);
    struct json_object *a = json_object_new_array();
    for (i = 0; i < n; i++)
        json_object_array_add(a, endpoint_json(v[i]));
    free(v);
    return a;
}

/* "draining" once it takes no new stream (GOAWAY either way, rebalancing, node drain,
 * closing), else "starting" until the sidecar's SETTINGS (not routed yet), then "active". */
static const char *tunnel_state(const struct tunnel *t)
{
    if (t->shed || pk_h2conn_is_draining(t->h2))
        return "draining";
    return t->ep ? "active" : "starting";
}

static struct json_object *tunnel_json(const struct tunnel *t, uint64_t now_ms)
{
    char when[32];
    uint64_t in, out;
    pk_h2conn_data_bytes(t->h2, &in, &out);
    struct json_object *o = json_object_new_object();
    add_u64(o, "id", t->id);
    json_object_object_add(o, "endpoint", json_object_new_string(t->endpoint_id));
    json_object_object_add(o, "tcp", json_object_new_boolean(t->tcp));
    json_object_object_add(o, "sidecar", json_object_new_string(t->peer));
    json_object_object_add(o, "sidecar_id", json_object_new_string(t->sidecar_id));
    json_object_object_add(o, "state", json_object_new_string(tunnel_state(t)));
    json_object_object_add(
        o, "connected_at",
        json_object_new_string(pk_rfc3339(when, sizeof(when), t->connected_unix_ms)));
    add_u64(o, "age_s", (now_ms - t->connected_ms) / 1000);
    add_u64(o, "streams", pk_h2conn_nstreams(t->h2));
    add_u64(o, "streams_total", t->served);
    add_u64(o, "bytes_in", in);
    add_u64(o, "bytes_out", out);
    if (t->token_exp > 0)
        json_object_object_add(
            o, "token_expires_at",
            json_object_new_string(pk_rfc3339(when, sizeof(when), t->token_exp * 1000)));
    return o;
}

/* GET /status/tunnels: every tunnel past its handshake, oldest first. */
static struct json_object *tunnels_json(struct pk_server *srv)
{
    struct json_object *a = json_object_new_array();
    uint64_t now = pk_now_ms();
    /* The list is newest first: walk it backwards. */
    for (struct pk_list *l = srv->loop.tunnels.prev; l != &srv->loop.tunnels; l = l->prev)
        json_object_array_add(a, tunnel_json(PK_CONTAINER_OF(l, struct tunnel, link), now));
    return a;
}

bool pk_server_status_reply(struct pk_admin_req *req, struct pk_server *srv)
{
    const char *path = pk_admin_req_path(req);
    struct json_object *body;
    if (strcmp(path, "/status/upstream/endpoints") == 0)
        body = endpoints_json(srv);
    else if (strcmp(path, "/status/tunnels") == 0)
        body = tunnels_json(srv);
    else
        return false;
    pk_admin_reply(req, 200, body);
    return true;
}

static void page(struct pk_admin_req *req, void *arg)
{
    PK_UNUSED(arg);
    pk_admin_reply_status_page(req);
}

void pk_server_status_new(struct pk_server *srv)
{
    pk_admin_route(srv->node.admin, "/", false, page, srv);
}
