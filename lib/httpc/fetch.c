/* httpc: one blocking GET with libcurl's easy interface, for a one-shot command (the
 * status CLI) that has no event loop. The bounds are those of the loop's client: a body
 * limit checked while it arrives, http and https only, no redirects, no proxy from the
 * environment. */
#include "httpc/httpc.h"
#include "httpc/httpc_int.h"

#include "base/base.h"

#include <curl/curl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef PIKO_VERSION
#define PIKO_VERSION "dev"
#endif

static CURLcode setup(CURL *e, const char *url, const struct pk_httpc_fetch_opts *o,
                      struct curl_slist *headers, struct httpc_body *s, char *errbuf)
{
    CURLcode rc;
    if ((rc = curl_easy_setopt(e, CURLOPT_URL, url)) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_HTTPGET, 1L)) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1)) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https")) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L)) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_PROXY, "")) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_USERAGENT, "piko/" PIKO_VERSION)) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, httpc_body_write)) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_WRITEDATA, s)) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf)) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)s->max)) != CURLE_OK)
        return rc;
    if (headers && (rc = curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers)) != CURLE_OK)
        return rc;
    if (o->timeout_ms &&
        (rc = curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                               (long)PK_MIN(o->timeout_ms, (uint64_t)LONG_MAX))) != CURLE_OK)
        return rc;
    if (o->root_cas && *o->root_cas &&
        ((rc = curl_easy_setopt(e, CURLOPT_CAINFO, o->root_cas)) != CURLE_OK ||
         (rc = curl_easy_setopt(e, CURLOPT_CAPATH, NULL)) != CURLE_OK))
        return rc;
    if (o->cert && *o->cert &&
        ((rc = curl_easy_setopt(e, CURLOPT_SSLCERT, o->cert)) != CURLE_OK ||
         (rc = curl_easy_setopt(e, CURLOPT_SSLKEY, o->key && *o->key ? o->key : NULL)) != CURLE_OK))
        return rc;
    return CURLE_OK;
}

int pk_httpc_fetch(const char *url, const struct pk_httpc_fetch_opts *opts,
                   struct pk_httpc_result *res)
{
    static const struct pk_httpc_fetch_opts none;
    const struct pk_httpc_fetch_opts *o = opts ? opts : &none;
    struct httpc_body s = {.max = o->max_body ? o->max_body : PK_HTTPC_DEFAULT_MAX_BODY};
    struct curl_slist *headers = NULL;
    char errbuf[CURL_ERROR_SIZE] = "";
    CURL *e = NULL;
    CURLcode cc = CURLE_OK;
    int rc = PK_ERR_IO;

    memset(res, 0, sizeof(*res));
    for (size_t i = 0; o->headers && o->headers[i]; i++) {
        struct curl_slist *l = curl_slist_append(headers, o->headers[i]);
        if (!l) {
            snprintf(res->err, sizeof(res->err), "out of memory");
            goto out;
        }
        headers = l;
    }
    if (!(e = curl_easy_init())) {
        snprintf(res->err, sizeof(res->err), "cannot start libcurl");
        goto out;
    }
    if ((cc = setup(e, url, o, headers, &s, errbuf)) != CURLE_OK ||
        (cc = curl_easy_perform(e)) != CURLE_OK) {
        if (s.too_big || cc == CURLE_FILESIZE_EXCEEDED)
            snprintf(res->err, sizeof(res->err), "response body over %zu bytes", s.max);
        else if (errbuf[0])
            snprintf(res->err, sizeof(res->err), "%s", errbuf);
        else
            snprintf(res->err, sizeof(res->err), "%s", curl_easy_strerror(cc));
        goto out;
    }
    long code = 0;
    char *ctype = NULL;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_getinfo(e, CURLINFO_CONTENT_TYPE, &ctype);
    if (code <= 0 || code > 999) {
        snprintf(res->err, sizeof(res->err), "no HTTP status");
        goto out;
    }
    res->status = (int)code;
    res->body = s.data ? s.data : pk_xstrdup("");
    res->len = s.len;
    res->content_type = ctype ? pk_xstrdup(ctype) : NULL;
    s.data = NULL;
    rc = 0;
out:
    free(s.data);
    curl_slist_free_all(headers);
    if (e)
        curl_easy_cleanup(e);
    return rc;
}

void pk_httpc_result_free(struct pk_httpc_result *res)
{
    if (!res)
        return;
    free(res->body);
    free(res->content_type);
    res->body = res->content_type = NULL;
    res->len = 0;
}
