/* auth tokens: the compact JWS form, its header, the signature (through cjose) and the
 * claims; bearer extraction and the result names.
 *
 * cjose 0.6.2.1 does the signature arithmetic, but it is only given tokens vetted here,
 * because (as probed on Debian bookworm's build) it:
 *   - imports "alg": "none" tokens (parse-only) and ignores "crit";
 *   - decodes base64url up to the first '=' and ignores the rest, and accepts non-zero
 *     trailing bits, so one signature has many spellings;
 *   - does not tie the ECDSA curve to the alg (ES256 verifies with a P-384 key), nor check
 *     the HMAC key length, nor the RSA size (a 24-bit RSA JWK imports);
 *   - parses the header with jansson while this module uses json-c.
 * So the compact form, strict base64url, the header JSON, the alg against the key's family,
 * curve and JWK alg, and the signature length are all checked first; each token is imported
 * once and verified against exactly one key; and cjose's view of alg must equal ours.
 * Keeping cross-type keys away from cjose also keeps us independent of how each 0.6.x build
 * handles them (older 0.6 sources HMAC the raw keydata of whatever key they are given and
 * compare dig_len bytes of a shorter signature). */
#include "auth/auth.h"
#include "auth/auth_int.h"
#include "base/base.h"

#include <cjose/header.h>
#include <cjose/jws.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* ---- results, claims, bearer ---- */

static const char *const result_names[PK_AUTH_NRESULTS] = {
    [PK_AUTH_OK] = "ok",
    [PK_AUTH_MISSING_TOKEN] = "missing token",
    [PK_AUTH_MALFORMED] = "malformed",
    [PK_AUTH_ALG_NOT_ALLOWED] = "alg not allowed",
    [PK_AUTH_BAD_SIGNATURE] = "bad signature",
    [PK_AUTH_UNKNOWN_KID] = "unknown kid",
    [PK_AUTH_KEYS_NOT_LOADED] = "keys not loaded",
    [PK_AUTH_NOT_YET_VALID] = "not yet valid",
    [PK_AUTH_WRONG_AUDIENCE] = "wrong audience",
    [PK_AUTH_WRONG_ISSUER] = "wrong issuer",
    [PK_AUTH_NO_EXPIRY] = "no expiry",
    [PK_AUTH_EXPIRED] = "expired",
    [PK_AUTH_ENDPOINT_NOT_PERMITTED] = "endpoint not permitted",
    [PK_AUTH_PENDING] = "pending",
};

const char *pk_auth_result_str(enum pk_auth_result r)
{
    if ((unsigned)r >= PK_AUTH_NRESULTS)
        return "unknown";
    return result_names[r];
}

int pk_auth_http_status(enum pk_auth_result r)
{
    if (r == PK_AUTH_OK || r == PK_AUTH_PENDING)
        return 200;
    return r == PK_AUTH_ENDPOINT_NOT_PERMITTED ? 403 : 401;
}

const char *pk_auth_http_message(enum pk_auth_result r)
{
    switch (r) {
    case PK_AUTH_OK:
    case PK_AUTH_PENDING:
        return "";
    case PK_AUTH_MISSING_TOKEN:
        return "missing token";
    case PK_AUTH_EXPIRED:
        return "expired token";
    case PK_AUTH_ENDPOINT_NOT_PERMITTED:
        return "endpoint not permitted";
    default:
        return "invalid token";
    }
}

void pk_claims_copy(struct pk_claims *dst, const struct pk_claims *src)
{
    memset(dst, 0, sizeof(*dst));
    dst->exp = src->exp;
    dst->all_endpoints = src->all_endpoints;
    dst->sub = src->sub ? pk_xstrdup(src->sub) : NULL;
    if (src->n_endpoints) {
        dst->endpoints = pk_xcalloc(src->n_endpoints, sizeof(char *));
        for (size_t i = 0; i < src->n_endpoints; i++)
            dst->endpoints[i] = pk_xstrdup(src->endpoints[i]);
        dst->n_endpoints = src->n_endpoints;
    }
}

void pk_claims_free(struct pk_claims *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_endpoints; i++)
        free(c->endpoints[i]);
    free(c->endpoints);
    free(c->sub);
    memset(c, 0, sizeof(*c));
}

bool pk_auth_allows(const struct pk_claims *c, const char *endpoint)
{
    if (!c || !endpoint)
        return false;
    if (c->all_endpoints)
        return true;
    for (size_t i = 0; i < c->n_endpoints; i++)
        if (strcmp(c->endpoints[i], endpoint) == 0)
            return true;
    return false;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static bool blank(const char *s)
{
    while (is_ows(*s))
        s++;
    return *s == '\0';
}

enum pk_auth_result pk_auth_bearer(const char *x_piko_authorization, const char *authorization,
                                   const char **token, size_t *len)
{
    const char *v = x_piko_authorization;

    *token = NULL;
    *len = 0;
    if (!v || blank(v))
        v = authorization;
    if (!v)
        return PK_AUTH_MISSING_TOKEN;
    while (is_ows(*v))
        v++;
    if (strncasecmp(v, "Bearer", 6) != 0 || !is_ows(v[6]))
        return PK_AUTH_MISSING_TOKEN;
    v += 6;
    while (is_ows(*v))
        v++;
    size_t n = 0;
    while (v[n] && !is_ows(v[n]))
        n++;
    const char *rest = v + n;
    while (is_ows(*rest))
        rest++;
    if (n == 0 || *rest)
        return PK_AUTH_MISSING_TOKEN;
    *token = v;
    *len = n;
    return PK_AUTH_OK;
}

/* ---- the token ---- */

const char *pk_printable(const char *s, char *buf, size_t size)
{
    size_t n = 0;
    for (; *s && n + 1 < size && n < 64; s++)
        buf[n++] = (*s >= 0x20 && *s < 0x7f && *s != '"') ? *s : '?';
    buf[n] = '\0';
    return buf;
}

static const char *family_name(enum pk_key_family f)
{
    return f == PK_KEY_HMAC ? "an HMAC secret" : f == PK_KEY_RSA ? "an RSA key" : "an ECDSA key";
}

static bool json_string_ok(struct json_object *v)
{
    return json_object_is_type(v, json_type_string) &&
           strlen(json_object_get_string(v)) == (size_t)json_object_get_string_len(v);
}

/* A NumericDate (RFC 7519 2): any JSON number, in whole seconds. */
static bool numeric_date(struct json_object *v, int64_t *out)
{
    if (json_object_is_type(v, json_type_int)) {
        *out = json_object_get_int64(v);
        return true;
    }
    if (json_object_is_type(v, json_type_double)) {
        double d = json_object_get_double(v);
        if (!isfinite(d))
            return false;
        *out = d >= 9.2e18 ? INT64_MAX : d <= -9.2e18 ? INT64_MIN : (int64_t)floor(d);
        return true;
    }
    return false;
}

void pk_token_free(struct pk_token *t)
{
    json_object_put(t->header);
    t->header = NULL;
}

enum pk_auth_result pk_token_parse(struct pk_token *t, const char *tok, size_t len, size_t max_len,
                                   char *detail, size_t dlen)
{
    struct json_object *v;
    size_t nseg = 0;
    char buf[80];

    memset(t, 0, sizeof(*t));
    detail[0] = '\0';
    if (!tok) {
        snprintf(detail, dlen, "no token");
        return PK_AUTH_MISSING_TOKEN;
    }
    if (len > max_len) {
        snprintf(detail, dlen, "token over %zu bytes", max_len);
        return PK_AUTH_MALFORMED;
    }
    t->tok = tok;
    t->len = len;
    t->seg[0] = tok;
    for (size_t i = 0; i < len; i++) {
        if (tok[i] != '.')
            continue;
        if (nseg == 2) {
            snprintf(detail, dlen, "more than 3 segments");
            return PK_AUTH_MALFORMED;
        }
        t->seglen[nseg] = (size_t)(tok + i - t->seg[nseg]);
        t->seg[++nseg] = tok + i + 1;
    }
    if (nseg != 2) {
        snprintf(detail, dlen, len ? "not 3 segments" : "empty token");
        return PK_AUTH_MALFORMED;
    }
    t->seglen[2] = (size_t)(tok + len - t->seg[2]);
    for (size_t i = 0; i < 3; i++) {
        /* An empty signature is left to the length check: "alg none" gets its own reason. */
        if (!pk_b64url_valid(t->seg[i], t->seglen[i]) || (i < 2 && t->seglen[i] == 0)) {
            snprintf(detail, dlen, "segment %zu is not base64url", i + 1);
            return PK_AUTH_MALFORMED;
        }
    }

    uint8_t *hdr = pk_xmalloc(t->seglen[0] * 3 / 4 + 1);
    size_t n = pk_b64url_decode(t->seg[0], t->seglen[0], hdr);
    t->header = pk_json_parse_bounded((const char *)hdr, n);
    free(hdr);
    if (!t->header || !json_object_is_type(t->header, json_type_object)) {
        snprintf(detail, dlen, "header is not a JSON object");
        return PK_AUTH_MALFORMED;
    }
    if (!json_object_object_get_ex(t->header, "alg", &v) || !json_string_ok(v)) {
        snprintf(detail, dlen, "header has no alg string");
        return PK_AUTH_MALFORMED;
    }
    const char *alg = json_object_get_string(v);
    if (json_object_object_get_ex(t->header, "kid", &v)) {
        if (!json_string_ok(v)) {
            snprintf(detail, dlen, "kid is not a string");
            return PK_AUTH_MALFORMED;
        }
        t->kid = json_object_get_string(v);
    }
    if (json_object_object_get_ex(t->header, "crit", NULL)) {
        snprintf(detail, dlen, "crit header (no extension is supported)");
        return PK_AUTH_MALFORMED;
    }
    if (!(t->alg = pk_alg_find(alg))) {
        snprintf(detail, dlen, "alg \"%s\" not allowed", pk_printable(alg, buf, sizeof(buf)));
        return PK_AUTH_ALG_NOT_ALLOWED;
    }
    return PK_AUTH_OK;
}

enum pk_auth_result pk_key_fits(const struct pk_key *k, const struct pk_alg *alg, char *detail,
                                size_t dlen)
{
    if (alg->fam != k->fam) {
        snprintf(detail, dlen, "alg %s not allowed with %s", alg->name, family_name(k->fam));
        return PK_AUTH_ALG_NOT_ALLOWED;
    }
    if (alg->fam == PK_KEY_EC && alg->ec_nid != k->ec_nid) {
        snprintf(detail, dlen, "alg %s not allowed with a key on another curve", alg->name);
        return PK_AUTH_ALG_NOT_ALLOWED;
    }
    if (k->alg[0] && strcmp(k->alg, alg->name) != 0) {
        snprintf(detail, dlen, "alg %s not allowed: the JWK says %s", alg->name, k->alg);
        return PK_AUTH_ALG_NOT_ALLOWED;
    }
    return PK_AUTH_OK;
}

static enum pk_auth_result claims_strings(struct json_object *root, const char *name,
                                          struct json_object **out, char *detail, size_t dlen)
{
    *out = NULL;
    if (!json_object_object_get_ex(root, name, out) || json_object_is_type(*out, json_type_null)) {
        *out = NULL;
        return PK_AUTH_OK;
    }
    if (json_string_ok(*out))
        return PK_AUTH_OK;
    if (json_object_is_type(*out, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(*out); i++)
            if (!json_string_ok(json_object_array_get_idx(*out, i)))
                goto bad;
        return PK_AUTH_OK;
    }
bad:
    snprintf(detail, dlen, "claim %s is not a string or an array of strings", name);
    return PK_AUTH_MALFORMED;
}

static bool strings_contain(struct json_object *v, const char *want)
{
    if (json_object_is_type(v, json_type_string))
        return strcmp(json_object_get_string(v), want) == 0;
    for (size_t i = 0; i < json_object_array_length(v); i++)
        if (strcmp(json_object_get_string(json_object_array_get_idx(v, i)), want) == 0)
            return true;
    return false;
}

static enum pk_auth_result piko_claim(struct json_object *root, struct pk_claims *c, char *detail,
                                      size_t dlen)
{
    struct json_object *piko, *eps;

    c->all_endpoints = true;
    if (!json_object_object_get_ex(root, "piko", &piko) ||
        json_object_is_type(piko, json_type_null))
        return PK_AUTH_OK;
    if (!json_object_is_type(piko, json_type_object)) {
        snprintf(detail, dlen, "claim piko is not an object");
        return PK_AUTH_MALFORMED;
    }
    if (!json_object_object_get_ex(piko, "endpoints", &eps) ||
        json_object_is_type(eps, json_type_null))
        return PK_AUTH_OK;
    if (!json_object_is_type(eps, json_type_array))
        goto bad;
    size_t n = json_object_array_length(eps);
    for (size_t i = 0; i < n; i++)
        if (!json_string_ok(json_object_array_get_idx(eps, i)))
            goto bad;
    if (n == 0) /* Go Piko: len(Endpoints) == 0 permits every endpoint */
        return PK_AUTH_OK;
    c->all_endpoints = false;
    c->endpoints = pk_xcalloc(n, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        c->endpoints[i] = pk_xstrdup(json_object_get_string(json_object_array_get_idx(eps, i)));
    c->n_endpoints = n;
    return PK_AUTH_OK;
bad:
    snprintf(detail, dlen, "claim piko.endpoints is not an array of strings");
    return PK_AUTH_MALFORMED;
}

static enum pk_auth_result check_claims(const struct pk_claim_rules *rules, const uint8_t *payload,
                                        size_t len, struct pk_claims *c, char *detail, size_t dlen)
{
    struct json_object *root = pk_json_parse_bounded((const char *)payload, len), *v, *aud;
    enum pk_auth_result res = PK_AUTH_MALFORMED;
    int64_t exp = 0, nbf = 0, iat;
    bool has_exp = false, has_nbf = false;
    int64_t now = (int64_t)time(NULL);

    if (!root || !json_object_is_type(root, json_type_object)) {
        snprintf(detail, dlen, "payload is not a JSON object");
        goto out;
    }
    if (json_object_object_get_ex(root, "exp", &v)) {
        if (!numeric_date(v, &exp)) {
            snprintf(detail, dlen, "claim exp is not a number");
            goto out;
        }
        has_exp = true;
    }
    if (json_object_object_get_ex(root, "nbf", &v)) {
        if (!numeric_date(v, &nbf)) {
            snprintf(detail, dlen, "claim nbf is not a number");
            goto out;
        }
        has_nbf = true;
    }
    if (json_object_object_get_ex(root, "iat", &v) && !numeric_date(v, &iat)) {
        snprintf(detail, dlen, "claim iat is not a number");
        goto out;
    }
    const char *names[] = {"iss", "sub"};
    for (size_t i = 0; i < PK_ARRAY_LEN(names); i++) {
        if (json_object_object_get_ex(root, names[i], &v) && !json_string_ok(v)) {
            snprintf(detail, dlen, "claim %s is not a string", names[i]);
            goto out;
        }
    }
    if ((res = claims_strings(root, "aud", &aud, detail, dlen)) != PK_AUTH_OK)
        goto out;
    if ((res = piko_claim(root, c, detail, dlen)) != PK_AUTH_OK)
        goto out;

    /* The order of golang-jwt v5: exp, nbf, then aud and iss. */
    if (has_exp && exp <= now - rules->leeway_s) {
        snprintf(detail, dlen, "expired %lld s ago", (long long)(now - PK_MAX(exp, (int64_t)0)));
        res = PK_AUTH_EXPIRED;
        goto out;
    }
    if (!has_exp && rules->require_exp) {
        snprintf(detail, dlen, "no exp claim");
        res = PK_AUTH_NO_EXPIRY;
        goto out;
    }
    if (has_nbf && nbf > now + rules->leeway_s) {
        snprintf(detail, dlen, "not valid for another %lld s", (long long)(nbf - now));
        res = PK_AUTH_NOT_YET_VALID;
        goto out;
    }
    if (rules->audience && (!aud || !strings_contain(aud, rules->audience))) {
        snprintf(detail, dlen, aud ? "aud does not contain the audience" : "no aud claim");
        res = PK_AUTH_WRONG_AUDIENCE;
        goto out;
    }
    if (rules->issuer) {
        const char *iss =
            json_object_object_get_ex(root, "iss", &v) ? json_object_get_string(v) : NULL;
        if (!iss || strcmp(iss, rules->issuer) != 0) {
            snprintf(detail, dlen, iss ? "iss is not the issuer" : "no iss claim");
            res = PK_AUTH_WRONG_ISSUER;
            goto out;
        }
    }
    c->exp = has_exp ? exp : 0; /* positive: it is after now - leeway */
    if (json_object_object_get_ex(root, "sub", &v))
        c->sub = pk_xstrdup(json_object_get_string(v));
    res = PK_AUTH_OK;
out:
    json_object_put(root);
    if (res != PK_AUTH_OK)
        pk_claims_free(c);
    return res;
}

enum pk_auth_result pk_token_verify(const struct pk_token *t, const struct pk_key *k,
                                    const struct pk_claim_rules *rules, struct pk_claims *c,
                                    char *detail, size_t dlen)
{
    const struct pk_alg *alg = t->alg;
    cjose_err cerr;
    uint8_t *payload = NULL;
    size_t plen = 0;
    enum pk_auth_result res = PK_AUTH_MALFORMED;

    memset(c, 0, sizeof(*c));
    size_t want = alg->fam == PK_KEY_RSA ? k->rsa_bytes : alg->sig_len;
    size_t got = t->seglen[2] * 3 / 4;
    if (got != want) {
        snprintf(detail, dlen, "%s signature of %zu bytes, %zu expected", alg->name, got, want);
        return PK_AUTH_BAD_SIGNATURE;
    }
    cjose_jws_t *jws = cjose_jws_import(t->tok, t->len, &cerr);
    if (!jws) {
        snprintf(detail, dlen, "cjose cannot import the token: %s", cerr.message);
        return PK_AUTH_MALFORMED;
    }
    /* cjose parsed the header with jansson, we with json-c: both must see the same alg. */
    const char *calg = cjose_header_get(cjose_jws_get_protected(jws), CJOSE_HDR_ALG, &cerr);
    if (!calg || strcmp(calg, alg->name) != 0) {
        snprintf(detail, dlen, "header parsers disagree on alg");
        goto out;
    }
    if (!cjose_jws_verify(jws, k->jwk, &cerr)) {
        snprintf(detail, dlen, "bad %s signature", alg->name);
        res = PK_AUTH_BAD_SIGNATURE;
        goto out;
    }
    if (!cjose_jws_get_plaintext(jws, &payload, &plen, &cerr)) {
        snprintf(detail, dlen, "empty payload");
        goto out;
    }
    res = check_claims(rules, payload, plen, c, detail, dlen);
out:
    cjose_jws_release(jws);
    return res;
}
