/* httpc: one blocking GET with libcurl's easy interface, for a one-shot command (the
 * status CLI) that has no event loop. The bounds are those of the loop's client: a body
 * limit checked while it arrives, http and https only, no redirects, no proxy from the
 * environment. */
#include "httpc/httpc.h"

#include "base/base.h"

#include <curl/curl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef PIKO_VERSION
#define PIKO_VERSION "dev"
#endif

struct sink {
    char *body; /* cap + 1 bytes, NUL-terminated; NULL while empty */
    size_t len, cap, max;
    bool too_big;
};

static size_t sink_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct sink *s = userdata;
    size_t n = size * nmemb;
    if (n > s->max - s->len) {
        s->too_big = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (s->len + n > s->cap) {
        size_t cap = PK_MIN(PK_MAX(2 * s->cap, PK_MAX(s->len + n, (size_t)4096)), s->max);
        s->body = pk_xrealloc(s->body, cap + 1);
        s->cap = cap;
    }
    memcpy(s->body + s->len, ptr, n);
    s->len += n;
    s->body[s->len] = '\0';
    return n;
}

static CURLcode setup(CURL *e, const char *url, const struct pk_httpc_fetch_opts *o,
                      struct curl_slist *headers, struct sink *s, char *errbuf)
{
    CURLcode rc;
    if ((rc = curl_easy_setopt(e, CURLOPT_URL, url)) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_HTTPGET, 1L)) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1)) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https")) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L)) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_PROXY, "")) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_USERAGENT, "piko/" PIKO_VERSION)) != CURLE_OK ||
        (rc = curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink_write)) != CURLE_OK ||
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
    struct sink s = {.max = o->max_body ? o->max_body : PK_HTTPC_DEFAULT_MAX_BODY};
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
    res->body = s.body ? s.body : pk_xstrdup("");
    res->len = s.len;
    res->content_type = ctype ? pk_xstrdup(ctype) : NULL;
    s.body = NULL;
    rc = 0;
out:
    free(s.body);
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
