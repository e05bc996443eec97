/* Port authentication (docs/manage/security.md): the verifiers of
 * --{upstream,proxy,admin}.auth.*, the bearer token of a request, the timer that drains a
 * tunnel when its token expires (PROTOCOL.md 1.5) and the admin port's gate (behind which
 * statusfwd.c takes the ?forward= requests). The upstream
 * handshake (upstream.c) and the proxy exchange (exchange.c) verify through
 * pk_port_auth_verify and log their rejections with their own tags. */
#include "admin/admin.h"
#include "auth/auth.h"
#include "base/base.h"
#include "base/log.h"
#include "httpc/httpc.h"
#include "server/server_int.h"

#include <errno.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* A PEM key given as a path is read whole; a public key or certificate is a few KiB. */
#define MAX_PEM_BYTES (64 * 1024)
/* libevent timers are not meant for years: a far expiry is re-armed in steps. */
#define MAX_EXPIRY_STEP_MS (24ull * 3600 * 1000)

struct admin_wait;

struct pk_port_auth {
    const char *port; /* "upstream", "proxy" or "admin" */
    struct pk_auth *a;
    bool disconnect_on_expiry;
    uint64_t not_permitted;   /* 403s; the verifier counts the 401s */
    struct admin_wait *waits; /* admin requests waiting for their verification */
};

/* One admin request waiting for its token's verification. */
struct admin_wait {
    struct pk_server *srv;
    struct pk_admin_req *req;
    void (*handler)(struct pk_admin_req *req, void *arg);
    struct pk_auth_req *ar;
    struct admin_wait *prev, *next;
};

static bool set(const char *s)
{
    return s && *s;
}

/* The key option's value is PEM text when it starts (after blanks) with "-----BEGIN",
 * otherwise the path of a PEM file, read now. Returns the PEM text (free it) or NULL with
 * the reason in err. */
static char *pem_text(const char *value, const char *what, char *err, size_t errlen)
{
    const char *p = value + strspn(value, " \t\r\n");
    if (strncmp(p, "-----BEGIN", 10) == 0)
        return pk_xstrdup(value);
    FILE *f = fopen(value, "re");
    if (!f) {
        snprintf(err, errlen, "%s: not PEM text (-----BEGIN ...) and cannot read '%.128s': %s",
                 what, value, strerror(errno));
        return NULL;
    }
    char *buf = pk_xmalloc(MAX_PEM_BYTES + 1);
    size_t n = fread(buf, 1, MAX_PEM_BYTES + 1, f);
    bool bad = ferror(f);
    fclose(f);
    if (bad || n > MAX_PEM_BYTES) {
        snprintf(err, errlen, "%s: cannot read '%.128s': %s", what, value,
                 bad ? "read error" : "over 64 KiB");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

static const char *key_source(const struct pk_port_auth_config *c)
{
    return set(c->hmac_secret_key)    ? "hmac-secret-key"
           : set(c->rsa_public_key)   ? "rsa-public-key"
           : set(c->ecdsa_public_key) ? "ecdsa-public-key"
                                      : "jwks.endpoint";
}

static struct pk_port_auth *port_auth_new(struct pk_server *srv, const char *port,
                                          const struct pk_port_auth_config *c, char *err,
                                          size_t errlen)
{
    if (!set(c->hmac_secret_key) && !set(c->rsa_public_key) && !set(c->ecdsa_public_key) &&
        !set(c->jwks_endpoint) && !set(c->audience) && !set(c->issuer))
        return NULL; /* the port is open */
    char prefix[32], what[64];
    snprintf(prefix, sizeof(prefix), "%s.auth", port);
    struct pk_auth_opts o = {
        .prefix = prefix,
        .hmac_secret_key = c->hmac_secret_key,
        .jwks_endpoint = c->jwks_endpoint,
        .jwks_refresh_ms = c->jwks_cache_ttl_ms,
        .audience = c->audience,
        .issuer = c->issuer,
    };
    char *rsa = NULL, *ec = NULL;
    struct pk_port_auth *pa = NULL;
    if (set(c->rsa_public_key)) {
        snprintf(what, sizeof(what), "%s.rsa-public-key", prefix);
        if (!(rsa = pem_text(c->rsa_public_key, what, err, errlen)))
            goto out;
        o.rsa_public_key = rsa;
    }
    if (set(c->ecdsa_public_key)) {
        snprintf(what, sizeof(what), "%s.ecdsa-public-key", prefix);
        if (!(ec = pem_text(c->ecdsa_public_key, what, err, errlen)))
            goto out;
        o.ecdsa_public_key = ec;
    }
    if (set(c->jwks_endpoint) && strncasecmp(c->jwks_endpoint, "https://", 8) == 0 &&
        !srv->node.auth_http && !(srv->node.auth_http = pk_httpc_new(srv->loop.base, 0))) {
        snprintf(err, errlen, "%s.jwks.endpoint: cannot create an HTTP client", prefix);
        goto out;
    }
    struct pk_auth *a = pk_auth_new(srv->loop.base, srv->node.auth_http, &o, err, errlen);
    if (!a)
        goto out;
    pa = pk_xcalloc(1, sizeof(*pa));
    pa->port = port;
    pa->a = a;
    pa->disconnect_on_expiry = !c->disable_disconnect_on_expiry;
    PK_INFO("auth", "port=%s requires a token key=%s%s%s%s%s%s%s", port, key_source(c),
            set(c->jwks_endpoint) ? " jwks=" : "", set(c->jwks_endpoint) ? c->jwks_endpoint : "",
            set(c->audience) ? " audience=" : "", set(c->audience) ? c->audience : "",
            set(c->issuer) ? " issuer=" : "", set(c->issuer) ? c->issuer : "");
out:
    free(rsa);
    free(ec);
    return pa;
}

int pk_server_auth_init(struct pk_server *srv, char *err, size_t errlen)
{
    const struct pk_server_config *cfg = srv->node.cfg;
    err[0] = '\0';
    srv->node.upstream_auth = port_auth_new(srv, "upstream", &cfg->upstream_auth, err, errlen);
    if (!srv->node.upstream_auth && err[0])
        return PK_ERR_INVALID;
    srv->node.proxy_auth = port_auth_new(srv, "proxy", &cfg->proxy_auth, err, errlen);
    if (!srv->node.proxy_auth && err[0])
        return PK_ERR_INVALID;
    srv->node.admin_auth = port_auth_new(srv, "admin", &cfg->admin_auth, err, errlen);
    if (!srv->node.admin_auth && err[0])
        return PK_ERR_INVALID;
    return 0;
}

static void port_auth_free(struct pk_port_auth *pa)
{
    if (!pa)
        return;
    while (pa->waits) {
        /* Teardown without pk_admin_del first: the requests are left to it. */
        struct admin_wait *w = pa->waits;
        pa->waits = w->next;
        pk_admin_req_on_cancel(w->req, NULL, NULL);
        pk_auth_cancel(w->ar);
        free(w);
    }
    pk_auth_del(pa->a);
    free(pa);
}

void pk_server_auth_free(struct pk_server *srv)
{
    port_auth_free(srv->node.upstream_auth);
    port_auth_free(srv->node.proxy_auth);
    port_auth_free(srv->node.admin_auth);
    srv->node.upstream_auth = srv->node.proxy_auth = srv->node.admin_auth = NULL;
    pk_httpc_del(srv->node.auth_http);
    srv->node.auth_http = NULL;
    pk_status_forward_free(srv);
}

/* ---- verification -------------------------------------------------------------------- */

static struct pk_auth_req *verify_fields(struct pk_port_auth *pa, const char *x_piko,
                                         const char *authorization, bool *from_authorization,
                                         pk_auth_cb cb, void *arg)
{
    const char *tok = NULL;
    size_t len = 0;
    if (pk_auth_bearer(x_piko, authorization, &tok, &len) != PK_AUTH_OK)
        tok = NULL; /* verified all the same: MISSING_TOKEN, counted */
    if (from_authorization)
        *from_authorization = tok && authorization && tok >= authorization &&
                              tok < authorization + strlen(authorization);
    return pk_auth_verify(pa->a, tok, tok ? len : 0, cb, arg);
}

struct pk_auth_req *pk_port_auth_verify(struct pk_port_auth *pa, const struct pk_hdrs *h,
                                        bool *from_authorization, pk_auth_cb cb, void *arg)
{
    return verify_fields(pa, pk_hdrs_get(h, "x-piko-authorization"),
                         pk_hdrs_get(h, "authorization"), from_authorization, cb, arg);
}

void pk_port_auth_not_permitted(struct pk_port_auth *pa)
{
    pa->not_permitted++;
}

void pk_port_auth_rejections(const struct pk_port_auth *pa, uint64_t out[PK_AUTH_NRESULTS])
{
    memset(out, 0, PK_AUTH_NRESULTS * sizeof(*out));
    if (!pa)
        return;
    const struct pk_auth_counters *c = pk_auth_counters(pa->a);
    for (int r = PK_AUTH_MISSING_TOKEN; r < PK_AUTH_NRESULTS; r++)
        out[r] = r == PK_AUTH_ENDPOINT_NOT_PERMITTED ? pa->not_permitted : c->rejected[r];
}

/* ---- token expiry on tunnels ----------------------------------------------------------- */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void expiry_arm(struct tunnel *t)
{
    int64_t now = wall_ms();
    uint64_t ms = 0;
    if (t->token_exp > now / 1000) {
        /* exp is in seconds: the tunnel goes at the first millisecond after it. */
        uint64_t left = (uint64_t)(t->token_exp - now / 1000) * 1000 - (uint64_t)(now % 1000);
        ms = PK_MIN(left, MAX_EXPIRY_STEP_MS);
    }
    struct timeval tv = pk_ms_timeval(ms);
    evtimer_add(t->expiry_ev, &tv);
}

static void expiry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tunnel *t = arg;
    struct pk_server *srv = t->srv;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (wall_ms() / 1000 < t->token_exp) {
        expiry_arm(t); /* a step of a far expiry, or the clock moved */
        return;
    }
    if (pk_h2conn_is_draining(t->h2))
        return;
    PK_INFO("upstream",
            "token expired: draining the tunnel endpoint=%s sidecar=%s peer=%s exp=%lld "
            "streams=%zu",
            t->endpoint_id, t->sidecar_id, t->peer, (long long)t->token_exp,
            pk_h2conn_nstreams(t->h2));
    /* Like a rebalancing shed: the sidecar redials with the token it has now, and requests
     * wait for that tunnel when this was the endpoint's last one. */
    t->shed = true;
    if (t->ep && t->ep->ntunnels == 1 && !srv->node.draining)
        pk_server_mark_moving(srv, t->endpoint_id);
    pk_h2conn_drain(t->h2, 0);
}

void pk_tunnel_expiry_start(struct pk_server *srv, struct tunnel *t, int64_t exp)
{
    t->token_exp = exp;
    if (!srv->node.upstream_auth || !srv->node.upstream_auth->disconnect_on_expiry || exp <= 0)
        return;
    t->expiry_ev = pk_xevent_new(srv->loop.base, -1, 0, expiry_cb, t);
    expiry_arm(t);
}

/* ---- the admin port ----------------------------------------------------------------------- */

static void wait_unlink(struct admin_wait *w)
{
    struct pk_port_auth *pa = w->srv->node.admin_auth;
    if (w->prev)
        w->prev->next = w->next;
    else
        pa->waits = w->next;
    if (w->next)
        w->next->prev = w->prev;
}

/* An authenticated admin request: asked of another node (?forward=) or served here. */
static void admin_run(struct pk_server *srv, struct pk_admin_req *req,
                      void (*handler)(struct pk_admin_req *req, void *arg))
{
    if (!pk_status_forward(srv, req))
        handler(req, srv);
}

static void admin_verified(enum pk_auth_result res, const struct pk_claims *claims,
                           const char *detail, void *arg)
{
    struct admin_wait *w = arg;
    struct pk_admin_req *req = w->req;
    PK_UNUSED(claims);
    wait_unlink(w);
    pk_admin_req_on_cancel(req, NULL, NULL);
    if (res == PK_AUTH_OK) {
        admin_run(w->srv, req, w->handler);
    } else {
        PK_INFO("admin", "request refused peer=%s path=%.200s status=401 reason=%s: %s",
                pk_admin_req_peer(req), pk_admin_req_path(req), pk_auth_result_str(res), detail);
        pk_admin_req_add_header(req, "WWW-Authenticate", "Bearer");
        pk_admin_reply_error(req, 401, pk_auth_http_message(res));
    }
    free(w);
}

/* The client went away (or the admin port is being freed) during the verification. */
static void admin_wait_cancel(struct pk_admin_req *req, void *arg)
{
    struct admin_wait *w = arg;
    PK_UNUSED(req);
    wait_unlink(w);
    pk_auth_cancel(w->ar);
    free(w);
}

void pk_admin_auth(struct pk_server *srv, struct pk_admin_req *req,
                   void (*handler)(struct pk_admin_req *req, void *arg))
{
    struct pk_port_auth *pa = srv->node.admin_auth;
    /* An internal request is a peer's, over the cluster port, which checked the cluster
     * secret or certificate (clusterport.c): no admin token. */
    if (!pa || pk_admin_req_internal(req)) {
        admin_run(srv, req, handler);
        return;
    }
    struct admin_wait *w = pk_xcalloc(1, sizeof(*w));
    w->srv = srv;
    w->req = req;
    w->handler = handler;
    w->next = pa->waits;
    if (pa->waits)
        pa->waits->prev = w;
    pa->waits = w;
    /* The verification always answers from the loop: until then the request waits, and
     * its cancellation (the connection went away) cancels the verification. */
    pk_admin_req_on_cancel(req, admin_wait_cancel, w);
    w->ar = verify_fields(pa, pk_admin_req_header(req, "x-piko-authorization"),
                          pk_admin_req_header(req, "authorization"), NULL, admin_verified, w);
}

static struct json_object *counters_json(const struct pk_port_auth *pa)
{
    const struct pk_auth_counters *c = pk_auth_counters(pa->a);
    struct json_object *o = json_object_new_object(), *rej = json_object_new_object();
    json_object_object_add(o, "accepted", json_object_new_int64((int64_t)c->accepted));
    for (int r = PK_AUTH_MISSING_TOKEN; r < PK_AUTH_NRESULTS; r++) {
        uint64_t n = r == PK_AUTH_ENDPOINT_NOT_PERMITTED ? pa->not_permitted : c->rejected[r];
        if (r != PK_AUTH_PENDING)
            json_object_object_add(rej, pk_auth_result_str((enum pk_auth_result)r),
                                   json_object_new_int64((int64_t)n));
    }
    json_object_object_add(o, "rejected", rej);
    json_object_object_add(o, "jwks_loads", json_object_new_int64((int64_t)c->jwks_loads));
    json_object_object_add(o, "jwks_load_failures",
                           json_object_new_int64((int64_t)c->jwks_load_failures));
    json_object_object_add(o, "jwks_keys", json_object_new_int64((int64_t)c->jwks_keys));
    return o;
}

void pk_admin_auth_status(struct pk_admin_req *req, void *arg)
{
    struct pk_server *srv = arg;
    struct pk_port_auth *ports[] = {srv->node.upstream_auth, srv->node.proxy_auth,
                                    srv->node.admin_auth};
    const char *names[] = {"upstream", "proxy", "admin"};
    struct json_object *o = json_object_new_object();
    for (size_t i = 0; i < PK_ARRAY_LEN(ports); i++)
        json_object_object_add(o, names[i], ports[i] ? counters_json(ports[i]) : NULL);
    pk_admin_reply(req, 200, o);
}
