#include "admin/admin.h"

#include "base/base.h"
#include "base/list.h"
#include "base/log.h"
#include "http1/http1.h"
#include "metrics/metrics.h"
#include "net/listener.h"
#include "net/net.h"
#include "net/tls.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct route {
    struct route *next;
    char *path;
    size_t len;
    bool prefix;
    pk_admin_handler handler;
    void *arg;
};

struct pk_admin {
    struct event_base *base;
    struct pk_listener *l;
    struct pk_admin_opts o; /* defaults applied */
    const char *tag;
    struct route *routes;
    struct pk_list conns;   /* struct conn */
    struct pk_list orphans; /* requests whose connection went away, without cancel cb */
    struct pk_list calls;   /* struct pk_admin_call not yet delivered nor cancelled */
    size_t nconns;          /* connections and TLS handshakes in flight */
    struct pk_linger_list lingers;
    struct pk_admin_stats stats;
    uint64_t refused_log_ms;
};

/* Why a connection's timer runs. */
enum conn_wait {
    WAIT_NONE, /* a request waits for its handler's reply */
    WAIT_HEAD, /* a head is due by head_deadline_ms */
    WAIT_IDLE, /* keep-alive, nothing received */
    WAIT_SEND  /* a reply is being written */
};

struct conn {
    struct pk_list link;
    struct pk_admin *a;
    struct bufferevent *bev;
    struct event *timer;
    struct pk_h1parser p;
    struct pk_admin_req *req; /* waiting for its reply */
    enum conn_wait wait;
    bool refuse_body; /* the head announced a body */
    bool close_after; /* close once the reply is written */
    char peer[72];
};

struct pk_admin_req {
    struct pk_list link; /* in a->orphans once the connection went away */
    struct pk_admin *a;
    struct conn *c;             /* NULL once the connection went away */
    struct pk_admin_call *call; /* an in-process request's caller, until it cancels */
    char *method, *path, *query;
    struct pk_hdrs hdrs, out;
    char peer[72];
    bool keep_alive;
    bool internal; /* made by pk_admin_call */
    pk_admin_cancel_cb cancel;
    void *cancel_arg;
};

/* An in-process request (pk_admin_call): the reply is kept and delivered from the loop. */
struct pk_admin_call {
    struct pk_list link;      /* in a->calls until delivered, cancelled or pk_admin_del */
    struct pk_admin_req *req; /* waiting for its reply; NULL once replied */
    struct event *deliver;    /* made active by the reply */
    pk_admin_call_cb cb;
    void *arg;
    int status;
    char *ctype, *body;
    size_t len;
};

static void conn_close(struct conn *c, bool linger);
static void conn_process(struct conn *c);
static void call_replied(struct pk_admin_call *call, int status, const char *ctype,
                         const char *body, size_t len);

static void arm(struct conn *c, enum conn_wait w, uint64_t ms)
{
    c->wait = w;
    if (w == WAIT_NONE) {
        evtimer_del(c->timer);
        return;
    }
    struct timeval tv = pk_ms_timeval(ms);
    evtimer_add(c->timer, &tv);
}

/* ---- requests ----------------------------------------------------------------------- */

static void req_free(struct pk_admin_req *req)
{
    pk_list_remove(&req->link);
    free(req->method);
    free(req->path);
    free(req->query);
    pk_hdrs_free(&req->hdrs);
    pk_hdrs_free(&req->out);
    free(req);
}

/* The connection of a waiting request goes away. */
static void req_detach(struct pk_admin_req *req)
{
    req->c = NULL;
    if (req->cancel) {
        req->cancel(req, req->cancel_arg);
        req_free(req);
        return;
    }
    pk_list_insert(&req->a->orphans, &req->link);
}

const char *pk_admin_req_method(const struct pk_admin_req *req)
{
    return req->method;
}

const char *pk_admin_req_path(const struct pk_admin_req *req)
{
    return req->path;
}

const char *pk_admin_req_query(const struct pk_admin_req *req)
{
    return req->query;
}

const char *pk_admin_req_header(const struct pk_admin_req *req, const char *name)
{
    for (size_t i = 0; i < req->hdrs.n; i++)
        if (strcasecmp(req->hdrs.v[i].name, name) == 0)
            return req->hdrs.v[i].value;
    return NULL;
}

const char *pk_admin_req_peer(const struct pk_admin_req *req)
{
    return req->peer;
}

bool pk_admin_req_alive(const struct pk_admin_req *req)
{
    return req->c != NULL || req->call != NULL;
}

bool pk_admin_req_internal(const struct pk_admin_req *req)
{
    return req->internal;
}

void pk_admin_req_on_cancel(struct pk_admin_req *req, pk_admin_cancel_cb cb, void *arg)
{
    req->cancel = cb;
    req->cancel_arg = arg;
}

void pk_admin_req_add_header(struct pk_admin_req *req, const char *name, const char *value)
{
    pk_hdrs_add_str(&req->out, name, value);
}

/* Writes the reply; the connection goes on with the next request once it is written. */
static void write_reply(struct conn *c, struct pk_admin_req *req, int status, const char *ctype,
                        const char *body, size_t blen)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    struct pk_head h;
    char len[24];
    pk_head_init(&h);
    h.status = status;
    snprintf(len, sizeof(len), "%zu", blen);
    pk_hdrs_add_str(&h.hdrs, "content-type", ctype);
    pk_hdrs_add_str(&h.hdrs, "content-length", len);
    pk_hdrs_move(&h.hdrs, &req->out);
    c->close_after = c->close_after || !req->keep_alive || !c->p.keep_alive;
    if (c->close_after)
        pk_hdrs_add_str(&h.hdrs, "connection", "close");
    pk_h1_write_response_head(out, &h, 1);
    if (strcmp(req->method, "HEAD") != 0 && blen)
        evbuffer_add(out, body, blen);
    pk_head_free(&h);
    c->req = NULL;
    arm(c, WAIT_SEND, c->a->o.idle_timeout_ms);
}

void pk_admin_reply(struct pk_admin_req *req, int status, struct json_object *body)
{
    if (req->c || req->call) {
        const char *s = body ? json_object_to_json_string_ext(
                                   body, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)
                             : "";
        char *text = body ? pk_xasprintf("%s\n", s) : pk_xstrdup("");
        if (req->c)
            write_reply(req->c, req, status, "application/json", text, strlen(text));
        else
            call_replied(req->call, status, "application/json", text, strlen(text));
        free(text);
    }
    json_object_put(body);
    req_free(req);
}

void pk_admin_reply_text(struct pk_admin_req *req, int status, const char *content_type,
                         const char *body, size_t len)
{
    if (req->c)
        write_reply(req->c, req, status, content_type, body, len);
    else if (req->call)
        call_replied(req->call, status, content_type, body, len);
    req_free(req);
}

void pk_admin_reply_metrics(struct pk_admin_req *req, const struct pk_metrics *m)
{
    struct evbuffer *b = pk_xevbuffer_new();
    pk_metrics_write(m, b);
    size_t n = evbuffer_get_length(b);
    const char *text = n ? (const char *)evbuffer_pullup(b, (ev_ssize_t)n) : "";
    pk_admin_reply_text(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, n);
    evbuffer_free(b);
}

void pk_admin_reply_error(struct pk_admin_req *req, int status, const char *message)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "error", json_object_new_string(message));
    pk_admin_reply(req, status, o);
}

/* ---- dispatch ----------------------------------------------------------------------- */

static const struct route *route_find(const struct pk_admin *a, const char *path)
{
    const struct route *best = NULL;
    for (const struct route *r = a->routes; r; r = r->next) {
        if (!r->prefix && strcmp(r->path, path) == 0)
            return r;
        if (r->prefix && strncmp(r->path, path, r->len) == 0 && (!best || r->len > best->len))
            best = r;
    }
    return best;
}

static struct pk_admin_req *req_alloc(struct pk_admin *a, const char *method, const char *peer)
{
    struct pk_admin_req *req = pk_xcalloc(1, sizeof(*req));
    pk_list_init(&req->link);
    pk_hdrs_init(&req->hdrs);
    pk_hdrs_init(&req->out);
    req->a = a;
    req->method = pk_xstrdup(method);
    snprintf(req->peer, sizeof(req->peer), "%s", peer);
    return req;
}

static struct pk_admin_req *req_new(struct conn *c, const char *method)
{
    struct pk_admin_req *req = req_alloc(c->a, method, c->peer);
    req->c = c;
    c->req = req;
    return req;
}

/* A refusal decided by the module: logged with the peer, answered, then the connection
 * closes. req is NULL when no head was parsed (a bare request carries the reply). */
static void refuse(struct conn *c, struct pk_admin_req *req, int status, const char *msg,
                   const char *why)
{
    PK_INFO(c->a->tag, "request refused peer=%s status=%d reason=\"%s\"", c->peer, status, why);
    if (!req)
        req = req_new(c, "GET");
    c->close_after = true;
    pk_admin_reply_error(req, status, msg);
}

/* A complete head: reading of requests stops until its reply is written. */
static void dispatch(struct conn *c)
{
    struct pk_admin *a = c->a;
    struct pk_head *h = &c->p.head;
    struct pk_admin_req *req = req_new(c, h->method ? h->method : "");
    const char *target = h->path ? h->path : "";
    const char *q = strchr(target, '?');
    req->path = q ? pk_xstrndup(target, (size_t)(q - target)) : pk_xstrdup(target);
    req->query = q ? pk_xstrdup(q + 1) : NULL;
    pk_hdrs_move(&req->hdrs, &h->hdrs);
    /* An upgrade is not served: the reply is the last thing on the connection. */
    req->keep_alive = !c->p.upgrade;
    a->stats.requests++;
    arm(c, WAIT_NONE, 0);

    if (c->refuse_body) {
        refuse(c, req, 413, "request body not accepted", "request body");
        return;
    }
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        pk_admin_req_add_header(req, "allow", "GET, HEAD");
        pk_admin_reply_error(req, 405, "method not allowed");
        return;
    }
    const struct route *r = route_find(a, req->path);
    if (!r) {
        pk_admin_reply_error(req, 404, "not found");
        return;
    }
    r->handler(req, r->arg);
}

/* ---- in-process requests ------------------------------------------------------------ */

/* The request of call replied: its reply is kept for the deliver event. */
static void call_replied(struct pk_admin_call *call, int status, const char *ctype,
                         const char *body, size_t len)
{
    call->req = NULL;
    call->status = status;
    call->ctype = pk_xstrdup(ctype);
    call->body = pk_xmalloc(len + 1);
    memcpy(call->body, body, len);
    call->body[len] = '\0';
    call->len = len;
    event_active(call->deliver, EV_TIMEOUT, 0);
}

static void call_free(struct pk_admin_call *call)
{
    pk_list_remove(&call->link);
    if (call->deliver)
        event_free(call->deliver);
    free(call->ctype);
    free(call->body);
    free(call);
}

static void call_deliver(evutil_socket_t fd, short what, void *arg)
{
    struct pk_admin_call *call = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    pk_list_remove(&call->link); /* the callback may cancel other calls, or free a */
    call->cb(call->status, call->ctype, call->body, call->len, call->arg);
    call_free(call);
}

struct pk_admin_call *pk_admin_call(struct pk_admin *a, const char *path, const char *query,
                                    const char *peer, pk_admin_call_cb cb, void *arg)
{
    struct pk_admin_call *call = pk_xcalloc(1, sizeof(*call));
    pk_list_init(&call->link);
    call->cb = cb;
    call->arg = arg;
    call->deliver = pk_xevent_new(a->base, -1, 0, call_deliver, call);
    pk_list_insert(&a->calls, &call->link);
    struct pk_admin_req *req = req_alloc(a, "GET", peer ? peer : "internal");
    req->path = pk_xstrdup(path);
    req->query = query ? pk_xstrdup(query) : NULL;
    req->internal = true;
    req->call = call;
    call->req = req;
    const struct route *r = route_find(a, req->path);
    if (!r)
        pk_admin_reply_error(req, 404, "not found");
    else
        r->handler(req, r->arg);
    return call;
}

void pk_admin_call_cancel(struct pk_admin_call *call)
{
    if (!call)
        return;
    if (call->req) {
        call->req->call = NULL;
        req_detach(call->req); /* as if its connection went away */
    }
    call_free(call);
}

static bool on_head(struct pk_h1parser *p, void *ud)
{
    struct conn *c = ud;
    c->refuse_body = p->chunked || (p->has_length && p->content_length > 0) ||
                     pk_hdrs_get(&p->head.hdrs, "transfer-encoding") != NULL;
    return true; /* a body is never parsed: it is refused and the connection closes */
}

static const struct pk_h1parser_cbs parser_cbs = {.on_head = on_head};

/* Feeds buffered input to the parser while no request is in progress. */
static void conn_process(struct conn *c)
{
    struct pk_admin *a = c->a;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len;
    while (!c->req && c->wait != WAIT_SEND && (len = evbuffer_get_length(in)) > 0) {
        if (c->wait == WAIT_IDLE)
            arm(c, WAIT_HEAD, a->o.head_timeout_ms); /* the first byte of a request */
        ssize_t n = pk_h1parser_feed_evbuffer(&c->p, in, 16384);
        if (n < 0) {
            enum pk_h1_error e = c->p.error;
            int status = e == PK_H1_HEAD_TOO_LARGE ? 431 : e == PK_H1_NOT_IMPLEMENTED ? 413 : 400;
            const char *msg = status == 431   ? "request header fields too large"
                              : status == 413 ? "request body not accepted"
                                              : "malformed request";
            refuse(c, NULL, status, msg, c->p.error_detail ? c->p.error_detail : msg);
            return;
        }
        if (c->p.message_done) {
            dispatch(c);
            return;
        }
        if (n == 0)
            break;
    }
}

/* ---- connections -------------------------------------------------------------------- */

static void conn_read(struct bufferevent *bev, void *arg)
{
    PK_UNUSED(bev);
    conn_process(arg);
}

/* The reply is written: next request, or close. */
static void conn_written(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    if (c->wait != WAIT_SEND || evbuffer_get_length(bufferevent_get_output(bev)) > 0)
        return;
    if (c->close_after) {
        conn_close(c, true);
        return;
    }
    pk_h1parser_next(&c->p);
    if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        arm(c, WAIT_HEAD, c->a->o.head_timeout_ms);
    else
        arm(c, WAIT_IDLE, c->a->o.idle_timeout_ms);
    conn_process(c);
}

static void conn_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    PK_UNUSED(bev);
    /* libevent 2.1 may report EOF before the last bytes were handed to the read callback. */
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && !c->req)
        conn_process(c);
    if ((what & BEV_EVENT_EOF) && c->wait == WAIT_SEND && !(what & BEV_EVENT_ERROR)) {
        c->close_after = true; /* answer what was asked, then go */
        return;
    }
    conn_close(c, false);
}

static void conn_timer(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    if (c->wait == WAIT_HEAD && !c->req) {
        refuse(c, NULL, 408, "request timeout", "no complete head in time");
        return;
    }
    conn_close(c, false); /* idle, or a reply the client does not take */
}

/* Closes c (lingering: after its output is written) and frees it; a request still waiting
 * is detached first. */
static void conn_close(struct conn *c, bool linger)
{
    struct pk_admin *a = c->a;
    if (c->req)
        req_detach(c->req);
    c->req = NULL;
    pk_list_remove(&c->link);
    event_free(c->timer);
    pk_h1parser_free(&c->p);
    if (linger)
        pk_bev_linger_close(c->bev, &a->lingers);
    else
        bufferevent_free(c->bev);
    a->nconns--;
    free(c);
}

static void conn_start(struct pk_admin *a, struct bufferevent *bev, const struct sockaddr *sa,
                       uint64_t start_ms)
{
    struct conn *c = pk_xcalloc(1, sizeof(*c));
    char ip[64];
    uint16_t port = 0;
    c->a = a;
    c->bev = bev;
    pk_sockaddr_ip(sa, ip, sizeof(ip), &port);
    snprintf(c->peer, sizeof(c->peer), strchr(ip, ':') ? "[%s]:%u" : "%s:%u", ip, port);
    pk_h1parser_init(&c->p, HTTP_REQUEST, a->o.max_head_bytes, &parser_cbs, c);
    c->timer = pk_xevent_new(a->base, -1, 0, conn_timer, c);
    pk_list_insert(&a->conns, &c->link);
    uint64_t spent = pk_now_ms() - start_ms;
    uint64_t limit = a->o.head_timeout_ms;
    arm(c, WAIT_HEAD, spent < limit ? limit - spent : 1);
    /* While a request waits, reading goes on (so a close is noticed) up to one head. */
    bufferevent_setwatermark(bev, EV_READ, 0, a->o.max_head_bytes);
    bufferevent_setcb(bev, conn_read, conn_written, conn_event, c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void tls_done(struct bufferevent *bev, const struct sockaddr *sa, const char *alpn,
                     uint64_t start_ms, void *arg)
{
    struct pk_admin *a = arg;
    PK_UNUSED(alpn);
    if (!bev) {
        a->nconns--; /* failed: logged and counted by pk_tls_accept */
        return;
    }
    conn_start(a, bev, sa, start_ms);
}

static size_t open_count(const struct pk_admin *a)
{
    return a->nconns + a->lingers.n;
}

static void accept_cb(evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    struct pk_admin *a = arg;
    PK_UNUSED(salen);
    long long max = a->o.max_connections;
    if (max > 0 && open_count(a) >= (size_t)max) {
        evutil_closesocket(fd);
        a->stats.refused++;
        uint64_t now = pk_now_ms();
        if (now - a->refused_log_ms >= 1000) {
            a->refused_log_ms = now;
            PK_WARN(a->tag, "connection limit (%lld) reached: new connections closed (%llu so far)",
                    max, (unsigned long long)a->stats.refused);
        }
        return;
    }
    a->nconns++;
    a->stats.accepted++;
    if (a->o.tls) {
        pk_tls_accept(a->o.tls, fd, sa, a->o.head_timeout_ms, tls_done, a);
        return;
    }
    pk_tune_socket(fd);
    struct bufferevent *bev = bufferevent_socket_new(a->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        evutil_closesocket(fd);
        a->nconns--;
        return;
    }
    conn_start(a, bev, sa, pk_now_ms());
}

/* ---- the server --------------------------------------------------------------------- */

struct pk_admin *pk_admin_new(struct event_base *base, const char *addr,
                              const struct pk_admin_opts *opts, char *err, size_t errlen)
{
    struct pk_admin *a = pk_xcalloc(1, sizeof(*a));
    a->base = base;
    if (opts)
        a->o = *opts;
    a->tag = a->o.log_tag ? a->o.log_tag : "admin";
    if (!a->o.max_head_bytes)
        a->o.max_head_bytes = PK_ADMIN_DEFAULT_MAX_HEAD;
    if (!a->o.head_timeout_ms)
        a->o.head_timeout_ms = PK_ADMIN_DEFAULT_HEAD_TIMEOUT;
    if (!a->o.idle_timeout_ms)
        a->o.idle_timeout_ms = PK_ADMIN_DEFAULT_IDLE_TIMEOUT;
    pk_list_init(&a->conns);
    pk_list_init(&a->orphans);
    pk_list_init(&a->calls);
    pk_linger_list_init(&a->lingers, NULL, NULL);
    a->l = pk_listener_new(base, "admin", addr, accept_cb, a, err, errlen);
    if (!a->l) {
        free(a);
        return NULL;
    }
    return a;
}

void pk_admin_del(struct pk_admin *a)
{
    if (!a)
        return;
    pk_listener_del(a->l);
    while (!pk_list_empty(&a->conns))
        conn_close(PK_CONTAINER_OF(a->conns.next, struct conn, link), false);
    /* Calls still held by their callers never call back; pk_admin_call_cancel frees them. */
    while (!pk_list_empty(&a->calls)) {
        struct pk_admin_call *call = PK_CONTAINER_OF(a->calls.next, struct pk_admin_call, link);
        pk_list_remove(&call->link);
        if (call->req) {
            call->req->call = NULL;
            req_detach(call->req);
            call->req = NULL;
        }
        event_free(call->deliver);
        call->deliver = NULL;
    }
    while (!pk_list_empty(&a->orphans))
        req_free(PK_CONTAINER_OF(a->orphans.next, struct pk_admin_req, link));
    pk_linger_list_free(&a->lingers);
    while (a->routes) {
        struct route *r = a->routes;
        a->routes = r->next;
        free(r->path);
        free(r);
    }
    free(a);
}

void pk_admin_addr(const struct pk_admin *a, char *buf, size_t len)
{
    pk_listener_addr(a->l, buf, len);
}

void pk_admin_stats(const struct pk_admin *a, struct pk_admin_stats *out)
{
    *out = a->stats;
    out->connections = open_count(a);
}

void pk_admin_route(struct pk_admin *a, const char *path, bool prefix, pk_admin_handler handler,
                    void *arg)
{
    for (struct route *r = a->routes; r; r = r->next) {
        if (r->prefix == prefix && strcmp(r->path, path) == 0) {
            r->handler = handler;
            r->arg = arg;
            return;
        }
    }
    struct route *r = pk_xcalloc(1, sizeof(*r));
    r->path = pk_xstrdup(path);
    r->len = strlen(path);
    r->prefix = prefix;
    r->handler = handler;
    r->arg = arg;
    r->next = a->routes;
    a->routes = r;
}
