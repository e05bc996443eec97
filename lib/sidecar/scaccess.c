/* The sidecar's access log (accesslog/accesslog.h): one record per stream the server sent
 * us, at its end — an HTTP request to the service (local.c) or a raw stream (raw.c) — and
 * /status/requests on the sidecar's admin port. */
#include "accesslog/accesslog.h"
#include "admin/admin.h"
#include "base/base.h"
#include "sidecar/sidecar_int.h"

static void requests_route(struct pk_admin_req *req, void *arg)
{
    struct pk_sidecar *sc = arg;
    pk_admin_reply(req, 200, pk_accesslog_recent_json(sc->access));
}

void pk_sidecar_access_new(struct pk_sidecar *sc)
{
    sc->access = pk_accesslog_from_options(&sc->cfg->log, NULL, sc->base);
    pk_admin_route(sc->admin, "/status/requests", false, requests_route, sc);
}

void pk_sidecar_access_del(struct pk_sidecar *sc)
{
    pk_accesslog_del(sc->access);
    sc->access = NULL;
}
