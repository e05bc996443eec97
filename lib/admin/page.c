/* The status page (admin.h, pk_admin_reply_status_page). */
#include "admin/page.h"
#include "admin/admin.h"

/* The page's script and styles are inline and it only fetches the admin port's own JSON:
 * nothing else may load, no form may post, no other site may frame it. */
#define PAGE_CSP                                                                                   \
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "                  \
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "                     \
    "frame-ancestors 'none'"

void pk_admin_reply_status_page(struct pk_admin_req *req)
{
    pk_admin_req_add_header(req, "Content-Security-Policy", PAGE_CSP);
    pk_admin_req_add_header(req, "X-Content-Type-Options", "nosniff");
    pk_admin_req_add_header(req, "X-Frame-Options", "DENY");
    pk_admin_req_add_header(req, "Referrer-Policy", "no-referrer");
    pk_admin_req_add_header(req, "Cache-Control", "no-store");
    pk_admin_reply_text(req, 200, "text/html; charset=utf-8",
                        (const char *)pk_admin_status_page_html, pk_admin_status_page_html_len);
}
