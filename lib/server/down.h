/* Private to lib/server: downstream connections of the proxy and cluster ports, as
 * accept.c sees them. accept.c detects the protocol, then hands the connection to
 * h1down.c or h2down.c, which make exchanges of its requests (exchange.h). */
#ifndef PK_SERVER_DOWN_H
#define PK_SERVER_DOWN_H

#include "base/base.h"
#include "base/list.h"

#include <event2/bufferevent.h>
#include <stdbool.h>
#include <stdint.h>

struct pk_server;
struct h1conn;

/* Every downstream connection is on srv->loop.conns, whatever its protocol. */
enum dconn_kind { DCONN_DETECT, DCONN_H1, DCONN_H2 };

struct dconn {
    struct pk_list link;
    enum dconn_kind kind;
    bool cluster; /* accepted on the cluster port: a peer node */
};

/* h1down.c. Takes bev (nconns already counts it); its first request head is due within
 * proxy.head-timeout of head_start_ms. The caller sets the read timeout. */
struct h1conn *pk_h1down_new(struct pk_server *srv, struct bufferevent *bev, const char *ip,
                             uint16_t port, bool cluster, uint64_t head_start_ms);
/* Parses what is already buffered. */
void pk_h1down_process(struct h1conn *hc);
/* Drain: no more requests after the one in flight (closed now when idle). */
void pk_h1down_drain(struct dconn *dc);
/* Closes at once without flushing (deferred). */
void pk_h1down_abort(struct dconn *dc);

/* h2down.c. Takes bev (nconns already counts it; released here if the session cannot be
 * set up). */
void pk_h2down_new(struct pk_server *srv, struct bufferevent *bev, const char *ip, uint16_t port,
                   bool cluster);
/* GOAWAY(last accepted stream): the open streams complete. */
void pk_h2down_drain(struct dconn *dc);
void pk_h2down_abort(struct dconn *dc);

/* A read timeout of ms (0: none) on bev, no write timeout. */
static inline void pk_down_set_timeout(struct bufferevent *bev, uint64_t ms)
{
    struct timeval tv = pk_ms_timeval(ms);
    bufferevent_set_timeouts(bev, ms ? &tv : NULL, NULL);
}

#endif
