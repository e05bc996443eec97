/* The cluster port's requests (PROTOCOL.md 3): the cluster secret check, the routing
 * state calls and their long polls, a peer's status requests (the admin port's ?forward=,
 * statusfwd.c) and the streams peers forward to our tunnels. The listener and the
 * connections are accept.c's; each request is an exchange. */
#include "admin/admin.h"
#include "base/base.h"
#include "base/log.h"
#include "net/tls.h"
#include "server/exchange.h"

#include <event2/event.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CLUSTER_PREFIX "/_piko/v1/cluster/"
#define STATE_PATH     "/_piko/v1/cluster/state"
#define STATUS_PREFIX  "/_piko/v1/cluster/status/"
#define MAX_STATE_WAIT 60000

/* PROTOCOL.md 3: "Bearer <cluster secret>", compared in constant time. Peer streams carry
 * it in piko-authorization (their authorization field belongs to the application); state
 * calls may use authorization. */
static bool secret_ok(struct pk_server *srv, const struct pk_hdrs *h, bool allow_authorization,
                      const char **why)
{
    const char *secret = srv->node.cfg->cluster_secret;
    if (!secret || !*secret)
        return true;
    /* With cluster mTLS every connection here presented a certificate signed by
     * cluster.tls.client-cas: it replaces the secret (PROTOCOL.md 3). */
    if (pk_tls_server_mtls(pk_server_tls_port(srv, PK_PORT_CLUSTER)))
        return true;
    const char *v = pk_hdrs_get(h, "piko-authorization");
    if (!v && allow_authorization)
        v = pk_hdrs_get(h, "authorization");
    if (!v) {
        *why = "missing cluster secret";
        return false;
    }
    *why = "invalid cluster secret";
    if (strncasecmp(v, "Bearer ", 7) != 0)
        return false;
    const char *tok = v + 7;
    size_t tl = strlen(tok), sl = strlen(secret);
    unsigned char diff = tl != sl;
    for (size_t i = 0; i < sl; i++)
        diff |= (unsigned char)(secret[i] ^ (i < tl ? tok[i] : 0));
    return diff == 0;
}

static void state_reply(struct exchange *ex)
{
    struct json_object *o = pk_server_state_json(ex->srv, true);
    const char *txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    pk_exchange_reply(ex, 200, txt, strlen(txt), NULL, NULL);
    json_object_put(o);
}

static bool query_u64(const char *query, const char *key, uint64_t *out, bool duration)
{
    size_t kl = strlen(key);
    for (const char *q = query; q && *q; q = strchr(q, '&') ? strchr(q, '&') + 1 : NULL) {
        if (strncmp(q, key, kl) != 0 || q[kl] != '=')
            continue;
        char buf[32];
        size_t n = strcspn(q + kl + 1, "&");
        if (n == 0 || n >= sizeof(buf))
            return false;
        memcpy(buf, q + kl + 1, n);
        buf[n] = '\0';
        if (duration)
            return pk_parse_duration(buf, out) == 0;
        char *end;
        unsigned long long v = strtoull(buf, &end, 10);
        *out = v;
        return *end == '\0' && buf[0] >= '0' && buf[0] <= '9';
    }
    return false;
}

/* GET /_piko/v1/cluster/state[?after=V&wait=D]: now, or once the version exceeds V. */
static void state_request(struct exchange *ex, const char *path)
{
    struct pk_server *srv = ex->srv;
    const char *q = strchr(path, '?');
    uint64_t after = 0, wait = 0;
    bool has_after = q && query_u64(q + 1, "after", &after, false);
    if (q && !query_u64(q + 1, "wait", &wait, true))
        wait = 0;
    if (!has_after || srv->node.state_version > after || wait == 0 || srv->node.cluster_closing) {
        state_reply(ex);
        return;
    }
    wait = PK_MIN(wait, (uint64_t)MAX_STATE_WAIT);
    ex->state_wait = true;
    ex->state_after = after;
    ex->wnext = srv->loop.state_waiters;
    srv->loop.state_waiters = ex;
    struct timeval tv = pk_ms_timeval(wait);
    event_add(ex->timer, &tv);
}

void pk_cluster_port_state_changed(struct pk_server *srv)
{
    struct exchange *list = srv->loop.state_waiters;
    srv->loop.state_waiters = NULL;
    while (list) {
        struct exchange *ex = list;
        list = ex->wnext;
        ex->wnext = NULL;
        ex->state_wait = false;
        if (srv->node.state_version > ex->state_after || srv->node.cluster_closing) {
            event_del(ex->timer);
            state_reply(ex);
        } else {
            ex->state_wait = true;
            ex->wnext = srv->loop.state_waiters;
            srv->loop.state_waiters = ex;
        }
    }
}

/* The admin port's answer to a peer's status request: relayed when it is JSON (an HTML
 * page is not a status a peer asks for). */
static void status_done(int status, const char *ctype, const char *body, size_t len, void *arg)
{
    struct exchange *ex = arg;
    ex->status_call = NULL;
    if (strncasecmp(ctype, "application/json", 16) != 0) {
        pk_exchange_fail(ex, 406, "only JSON status routes are forwarded");
        return;
    }
    pk_exchange_reply(ex, status, body, len, NULL, NULL);
}

/* GET /_piko/v1/cluster/status/{rest}[?query]: what our admin port answers for
 * GET /status/{rest}[?query], without the admin token (the cluster secret or certificate
 * was checked) and never forwarded further. */
static void status_request(struct exchange *ex, const char *path)
{
    struct pk_server *srv = ex->srv;
    size_t plen = strcspn(path, "?"), skip = strlen(STATUS_PREFIX);
    char *apath = pk_xasprintf("/status/%.*s", (int)(plen - skip), path + skip);
    char peer[96];
    snprintf(peer, sizeof(peer), "cluster:%s", ex->client);
    PK_DEBUG("cluster", "status request from %s path=%.200s", ex->client, apath);
    if (srv->node.admin)
        ex->status_call =
            pk_admin_call(srv->node.admin, apath, path[plen] == '?' ? path + plen + 1 : NULL, peer,
                          status_done, ex);
    else
        pk_exchange_fail(ex, 503, "admin port not open");
    free(apath);
}

void pk_cluster_port_unwait(struct exchange *ex)
{
    pk_admin_call_cancel(ex->status_call);
    ex->status_call = NULL;
    for (struct exchange **pp = &ex->srv->loop.state_waiters; *pp; pp = &(*pp)->wnext) {
        if (*pp == ex) {
            *pp = ex->wnext;
            break;
        }
    }
    ex->state_wait = false;
}

void pk_cluster_port_state_timeout(struct exchange *ex)
{
    pk_cluster_port_unwait(ex);
    state_reply(ex);
}

/* A request on the cluster port: a state call, or a stream a peer forwards to one of our
 * tunnels, taken as it comes (the peer already prepared it) minus the forwarding fields. */
void pk_cluster_port_start(struct exchange *ex, struct pk_head *in)
{
    struct pk_server *srv = ex->srv;
    const char *path = in->path ? in->path : "";
    bool control = strncmp(path, CLUSTER_PREFIX, strlen(CLUSTER_PREFIX)) == 0;
    const char *why = NULL;
    ex->is_head = in->method && strcmp(in->method, "HEAD") == 0;
    snprintf(ex->endpoint, sizeof(ex->endpoint), "-");
    if (!secret_ok(srv, &in->hdrs, control, &why)) {
        PK_WARN("cluster", "refused request from %s on the cluster port: %s", ex->client, why);
        pk_exchange_fail(ex, 401, why);
        return;
    }
    if (control) {
        size_t plen = strcspn(path, "?");
        bool state = plen == strlen(STATE_PATH) && strncmp(path, STATE_PATH, plen) == 0;
        bool status = strncmp(path, STATUS_PREFIX, strlen(STATUS_PREFIX)) == 0;
        if (!state && !status) {
            pk_exchange_fail(ex, 404, "not found");
        } else if (strcmp(in->method, "GET") != 0 && !ex->is_head) {
            pk_exchange_fail_hdr(ex, 405, "method not allowed", "allow", "GET");
        } else if (state) {
            state_request(ex, path);
        } else {
            status_request(ex, path);
        }
        return;
    }
    const char *ep = pk_hdrs_get(&in->hdrs, "piko-endpoint");
    /* HTTP/1.1 on the cluster port takes state calls only (peer streams are HTTP/2). */
    bool h2 = pk_end_takes_forwarded(ex->down);
    if (!h2 || !ep || !pk_hdrs_get(&in->hdrs, "piko-forwarded-by")) {
        pk_exchange_fail(ex, h2 ? 400 : 404, h2 ? "not a forwarded request" : "not found");
        return;
    }
    if (!pk_endpoint_id_valid(ep, strlen(ep))) {
        pk_exchange_fail(ex, 400, "invalid endpoint id");
        return;
    }
    snprintf(ex->endpoint, sizeof(ex->endpoint), "%s", ep);
    PK_DEBUG("cluster", "forwarded stream endpoint=%s from node=%s", ex->endpoint,
             pk_hdrs_get(&in->hdrs, "piko-forwarded-by"));
    ex->forwarded = true;
    snprintf(ex->forwarded_by, sizeof(ex->forwarded_by), "%s",
             pk_hdrs_get(&in->hdrs, "piko-forwarded-by"));
    snprintf(ex->method, sizeof(ex->method), "%s", in->method ? in->method : "");
    struct pk_head *r = &ex->req;
    r->method = in->method;
    r->path = in->path;
    r->scheme = in->scheme;
    r->authority = in->authority;
    r->protocol = in->protocol;
    in->method = in->path = in->scheme = in->authority = in->protocol = NULL;
    pk_hdrs_move(&r->hdrs, &in->hdrs);
    pk_hdrs_del(&r->hdrs, "piko-authorization");
    pk_hdrs_del(&r->hdrs, "piko-endpoint");
    pk_hdrs_del(&r->hdrs, "piko-forwarded-by");
    struct timeval tv = pk_ms_timeval(srv->node.cfg->proxy_timeout_ms);
    event_add(ex->timer, &tv);
    pk_exchange_dispatch(ex);
}
