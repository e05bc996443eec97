/* The status page (admin.h, pk_admin_reply_status_page). */
#include "admin/page.h"
#include "admin/admin.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

/* The CSP source of the inline block between open and close in the page:
 * 'sha256-<base64>' of its exact text, or 'none' when the page has no such block. A
 * script or style that is not byte for byte the page's own (one injected through a value
 * the page failed to escape) does not run. */
static void inline_hash(const char *open, const char *close, char *out, size_t outlen)
{
    const char *doc = (const char *)pk_admin_status_page_html;
    const char *a = strstr(doc, open), *b = a ? strstr(a + strlen(open), close) : NULL;
    unsigned char md[EVP_MAX_MD_SIZE], b64[2 * EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!b) {
        snprintf(out, outlen, "'none'");
        return;
    }
    a += strlen(open);
    EVP_Digest(a, (size_t)(b - a), md, &n, EVP_sha256(), NULL);
    EVP_EncodeBlock(b64, md, (int)n);
    snprintf(out, outlen, "'sha256-%s'", (const char *)b64);
}

void pk_admin_reply_status_page(struct pk_admin_req *req)
{
    /* Computed per request (a page load costs two hashes of a few KiB): nothing cached. */
    char script[64], style[64], csp[320];
    inline_hash("<script>", "</script>", script, sizeof(script));
    inline_hash("<style>", "</style>", style, sizeof(style));
    /* Only the page's own code runs and it only fetches the admin port's JSON: no other
     * resource, no form post, no framing by another site. */
    snprintf(csp, sizeof(csp),
             "default-src 'none'; script-src %s; style-src %s; connect-src 'self'; "
             "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
             script, style);
    pk_admin_req_add_header(req, "Content-Security-Policy", csp);
    pk_admin_req_add_header(req, "X-Content-Type-Options", "nosniff");
    pk_admin_req_add_header(req, "X-Frame-Options", "DENY");
    pk_admin_req_add_header(req, "Referrer-Policy", "no-referrer");
    pk_admin_req_add_header(req, "Cache-Control", "no-store");
    pk_admin_reply_text(req, 200, "text/html; charset=utf-8",
                        (const char *)pk_admin_status_page_html, pk_admin_status_page_html_len);
}
