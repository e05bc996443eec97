/* auth key material: PEM public keys and HMAC secrets turned into cjose JWKs, JWKS
 * documents, strict base64url and bounded JSON.
 *
 * cjose 0.6 cannot import PEM, so OpenSSL 3 decodes it and the key's components (RSA n and
 * e; the EC curve and point) are handed to cjose_jwk_create_RSA_spec / _EC_spec. Only the
 * non-deprecated OpenSSL 3 API is used (EVP_PKEY parameters, d2i_PUBKEY). */
#include "auth/auth.h"
#include "auth/auth_int.h"
#include "base/base.h"
#include "base/log.h"

#include <cjose/jwk.h>
#include <json-c/json.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* RSA moduli below this are refused (Go refuses them since 1.24). */
#define MIN_RSA_BITS 1024

static const struct pk_alg algs[] = {
    {"HS256", PK_KEY_HMAC, 32, 0},
    {"HS384", PK_KEY_HMAC, 48, 0},
    {"HS512", PK_KEY_HMAC, 64, 0},
    {"RS256", PK_KEY_RSA, 0, 0},
    {"RS384", PK_KEY_RSA, 0, 0},
    {"RS512", PK_KEY_RSA, 0, 0},
    {"PS256", PK_KEY_RSA, 0, 0},
    {"PS384", PK_KEY_RSA, 0, 0},
    {"PS512", PK_KEY_RSA, 0, 0},
    {"ES256", PK_KEY_EC, 64, NID_X9_62_prime256v1},
    {"ES384", PK_KEY_EC, 96, NID_secp384r1},
    {"ES512", PK_KEY_EC, 132, NID_secp521r1},
};

const struct pk_alg *pk_alg_find(const char *name)
{
    for (size_t i = 0; i < PK_ARRAY_LEN(algs); i++)
        if (strcmp(algs[i].name, name) == 0)
            return &algs[i];
    return NULL;
}

void pk_keyset_free(struct pk_keyset *ks)
{
    for (size_t i = 0; i < ks->n; i++) {
        cjose_jwk_release(ks->v[i].jwk);
        free(ks->v[i].kid);
    }
    free(ks->v);
    ks->v = NULL;
    ks->n = 0;
}

/* ---- base64url and JSON ---- */

static int b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

bool pk_b64url_valid(const char *in, size_t len)
{
    if (len % 4 == 1)
        return false;
    for (size_t i = 0; i < len; i++)
        if (b64url_val((unsigned char)in[i]) < 0)
            return false;
    /* The bits of the last character past the data must be zero, or one value would have
     * several encodings (a malleable signature). */
    if (len % 4 == 2)
        return (b64url_val((unsigned char)in[len - 1]) & 0x0f) == 0;
    if (len % 4 == 3)
        return (b64url_val((unsigned char)in[len - 1]) & 0x03) == 0;
    return true;
}

size_t pk_b64url_decode(const char *in, size_t len, uint8_t *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        acc = (acc << 6) | (uint32_t)b64url_val((unsigned char)in[i]);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    return n;
}

struct json_object *pk_json_parse_bounded(const char *buf, size_t len)
{
    if (len > INT32_MAX)
        return NULL;
    struct json_tokener *tok = json_tokener_new_ex(PK_AUTH_JSON_DEPTH);
    if (!tok)
        return NULL;
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    struct json_object *o = json_tokener_parse_ex(tok, buf, (int)len);
    if (o && json_tokener_get_error(tok) == json_tokener_success) {
        for (size_t i = json_tokener_get_parse_end(tok); i < len; i++) {
            if (buf[i] != ' ' && buf[i] != '\t' && buf[i] != '\r' && buf[i] != '\n') {
                json_object_put(o);
                o = NULL;
                break;
            }
        }
    } else {
        json_object_put(o);
        o = NULL;
    }
    json_tokener_free(tok);
    return o;
}

/* ---- static keys ---- */

int pk_key_from_secret(struct pk_key *k, const char *secret, const char *what, char *err,
                       size_t errlen)
{
    cjose_err cerr;
    size_t len = strlen(secret);

    memset(k, 0, sizeof(*k));
    k->jwk = cjose_jwk_create_oct_spec((const uint8_t *)secret, len, &cerr);
    if (!k->jwk) {
        snprintf(err, errlen, "%s: %s", what, cerr.message);
        return PK_ERR_INVALID;
    }
    k->fam = PK_KEY_HMAC;
    /* RFC 7518 3.2 wants a key as long as the hash; Go Piko takes any, and so do we. */
    if (len < 32)
        PK_WARN("auth", "%s is %zu bytes: HS256 wants at least 32", what, len);
    return 0;
}

/* The public key of the first PEM block: SubjectPublicKeyInfo ("PUBLIC KEY"), PKCS#1 ("RSA
 * PUBLIC KEY") or a certificate. Private keys are refused: they do not belong in this
 * option. */
static EVP_PKEY *pem_public_key(const char *pem, const char **why)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    char *name = NULL, *header = NULL;
    unsigned char *data = NULL;
    long len = 0;
    EVP_PKEY *pkey = NULL;

    *why = "not a PEM public key";
    if (!bio)
        return NULL;
    if (PEM_read_bio(bio, &name, &header, &data, &len) != 1)
        goto out;
    const unsigned char *p = data;
    if (strcmp(name, "PUBLIC KEY") == 0) {
        pkey = d2i_PUBKEY(NULL, &p, len);
    } else if (strcmp(name, "RSA PUBLIC KEY") == 0) {
        pkey = d2i_PublicKey(EVP_PKEY_RSA, NULL, &p, len);
    } else if (strcmp(name, "CERTIFICATE") == 0) {
        X509 *x = d2i_X509(NULL, &p, len);
        if (x)
            pkey = X509_get_pubkey(x);
        X509_free(x);
    } else if (strstr(name, "PRIVATE KEY")) {
        *why = "a private key, not a public key";
    } else {
        *why = "not a PEM public key (unexpected PEM block)";
    }
out:
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(data);
    BIO_free(bio);
    return pkey;
}

/* BN -> big-endian bytes, left-padded to pad bytes when pad > 0. */
static uint8_t *bn_bytes(const BIGNUM *bn, size_t pad, size_t *len)
{
    size_t n = pad ? pad : (size_t)BN_num_bytes(bn);
    uint8_t *b = pk_xmalloc(n ? n : 1);
    if (BN_bn2binpad(bn, b, (int)n) < 0) {
        free(b);
        return NULL;
    }
    *len = n;
    return b;
}

static int rsa_key(struct pk_key *k, EVP_PKEY *pkey, const char **why)
{
    BIGNUM *n = NULL, *e = NULL;
    cjose_jwk_rsa_keyspec spec;
    int rc = PK_ERR_INVALID;

    memset(&spec, 0, sizeof(spec));
    if (!EVP_PKEY_is_a(pkey, "RSA")) {
        *why = "not an RSA public key";
        return PK_ERR_INVALID;
    }
    if (EVP_PKEY_get_bits(pkey) < MIN_RSA_BITS) {
        *why = "RSA key under 1024 bits";
        return PK_ERR_INVALID;
    }
    *why = "cannot read the RSA key";
    if (!EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n) ||
        !EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e))
        goto out;
    spec.n = bn_bytes(n, 0, &spec.nlen);
    spec.e = bn_bytes(e, 0, &spec.elen);
    if (!spec.n || !spec.e)
        goto out;
    k->jwk = cjose_jwk_create_RSA_spec(&spec, NULL);
    if (!k->jwk)
        goto out;
    k->fam = PK_KEY_RSA;
    k->rsa_bytes = (size_t)EVP_PKEY_get_size(pkey);
    rc = 0;
out:
    free(spec.n);
    free(spec.e);
    BN_free(n);
    BN_free(e);
    return rc;
}

static size_t curve_bytes(int nid)
{
    switch (nid) {
    case NID_X9_62_prime256v1:
        return 32;
    case NID_secp384r1:
        return 48;
    case NID_secp521r1:
        return 66;
    default:
        return 0;
    }
}

static int ec_key(struct pk_key *k, EVP_PKEY *pkey, const char **why)
{
    char group[64];
    BIGNUM *x = NULL, *y = NULL;
    cjose_jwk_ec_keyspec spec;
    int rc = PK_ERR_INVALID;

    memset(&spec, 0, sizeof(spec));
    if (!EVP_PKEY_is_a(pkey, "EC")) {
        *why = "not an ECDSA public key";
        return PK_ERR_INVALID;
    }
    *why = "unsupported curve (P-256, P-384 or P-521 only)";
    if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                        NULL))
        return PK_ERR_INVALID;
    int nid = OBJ_txt2nid(group);
    size_t cb = curve_bytes(nid);
    if (!cb)
        return PK_ERR_INVALID;
    *why = "cannot read the ECDSA key";
    if (!EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_X, &x) ||
        !EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, &y))
        goto out;
    spec.crv = (cjose_jwk_ec_curve)nid;
    spec.x = bn_bytes(x, cb, &spec.xlen);
    spec.y = bn_bytes(y, cb, &spec.ylen);
    if (!spec.x || !spec.y)
        goto out;
    k->jwk = cjose_jwk_create_EC_spec(&spec, NULL);
    if (!k->jwk)
        goto out;
    k->fam = PK_KEY_EC;
    k->ec_nid = nid;
    rc = 0;
out:
    free(spec.x);
    free(spec.y);
    BN_free(x);
    BN_free(y);
    return rc;
}

int pk_key_from_pem(struct pk_key *k, const char *pem, enum pk_key_family fam, const char *what,
                    char *err, size_t errlen)
{
    const char *why;
    int rc = PK_ERR_INVALID;

    memset(k, 0, sizeof(*k));
    EVP_PKEY *pkey = pem_public_key(pem, &why);
    if (pkey)
        rc = fam == PK_KEY_RSA ? rsa_key(k, pkey, &why) : ec_key(k, pkey, &why);
    EVP_PKEY_free(pkey);
    if (rc != 0)
        snprintf(err, errlen, "%s: %s", what, why);
    return rc;
}

/* ---- JWKS ---- */

static const char *json_str(struct json_object *o, const char *key)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    /* An embedded NUL would make the C string say less than the JSON does. */
    if (strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v))
        return NULL;
    return json_object_get_string(v);
}

static const char SKIP_KTY[] = "unsupported kty";
static const char SKIP_NOT_SIG[] = "use is not sig";

/* Turns one JWKS entry into k. Returns NULL, or why the key is skipped. */
static const char *jwk_key(struct pk_key *k, struct json_object *o)
{
    cjose_err cerr;
    const char *kty = json_str(o, "kty");
    const char *use = json_str(o, "use");
    const char *kid = json_str(o, "kid");
    const char *alg = json_str(o, "alg");
    enum pk_key_family fam;

    memset(k, 0, sizeof(*k));
    if (!kty)
        return "no kty";
    if (strcmp(kty, "RSA") == 0)
        fam = PK_KEY_RSA;
    else if (strcmp(kty, "EC") == 0)
        fam = PK_KEY_EC;
    else if (strcmp(kty, "oct") == 0)
        fam = PK_KEY_HMAC;
    else
        return SKIP_KTY;
    if (json_object_object_get_ex(o, "use", NULL) && (!use || strcmp(use, "sig") != 0))
        return SKIP_NOT_SIG;
    if (!kid)
        return "no kid (tokens choose keys by kid)";
    if (json_object_object_get_ex(o, "alg", NULL)) {
        const struct pk_alg *a = alg ? pk_alg_find(alg) : NULL;
        if (!a || a->fam != fam)
            return "alg unsupported or not of the key's type";
        snprintf(k->alg, sizeof(k->alg), "%s", a->name);
    }
    const char *txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    k->jwk = cjose_jwk_import(txt, strlen(txt), &cerr);
    if (!k->jwk)
        return "cjose cannot import it";
    k->fam = fam;
    const char *skip = NULL;
    if (fam == PK_KEY_RSA) {
        size_t bits = cjose_jwk_get_keysize(k->jwk, &cerr);
        k->rsa_bytes = (bits + 7) / 8;
        if (bits < MIN_RSA_BITS)
            skip = "RSA key under 1024 bits";
    } else if (fam == PK_KEY_EC) {
        k->ec_nid = (int)cjose_jwk_EC_get_curve(k->jwk, &cerr);
        if (!curve_bytes(k->ec_nid))
            skip = "unsupported curve";
    }
    if (skip) {
        cjose_jwk_release(k->jwk);
        k->jwk = NULL;
        return skip;
    }
    k->kid = pk_xstrdup(kid);
    return NULL;
}

int pk_jwks_parse(const char *buf, size_t len, const char *what, struct pk_keyset *ks, char *err,
                  size_t errlen)
{
    struct json_object *root = pk_json_parse_bounded(buf, len), *keys;
    struct pk_keyset out = {NULL, 0};

    if (!root || !json_object_is_type(root, json_type_object)) {
        snprintf(err, errlen, "not a JSON object");
        json_object_put(root);
        return PK_ERR_INVALID;
    }
    if (!json_object_object_get_ex(root, "keys", &keys) ||
        !json_object_is_type(keys, json_type_array)) {
        snprintf(err, errlen, "no \"keys\" array");
        json_object_put(root);
        return PK_ERR_INVALID;
    }
    size_t n = json_object_array_length(keys);
    out.v = pk_xcalloc(PK_MIN(n, (size_t)PK_AUTH_MAX_JWKS_KEYS) + 1, sizeof(*out.v));
    for (size_t i = 0; i < n; i++) {
        struct json_object *o = json_object_array_get_idx(keys, i);
        if (out.n == PK_AUTH_MAX_JWKS_KEYS) {
            PK_WARN("auth", "%s: more than %d keys, the rest are ignored", what,
                    PK_AUTH_MAX_JWKS_KEYS);
            break;
        }
        const char *skip = json_object_is_type(o, json_type_object) ? jwk_key(&out.v[out.n], o)
                                                                    : "not a JSON object";
        if (skip) {
            const char *kid = json_object_is_type(o, json_type_object) ? json_str(o, "kid") : NULL;
            /* Encryption keys and key types of no JWS alg here are normal in a provider's JWKS
             * and come back with every refresh: not worth a warning. */
            enum pk_log_level lvl =
                skip == SKIP_NOT_SIG || skip == SKIP_KTY ? PK_LOG_DEBUG : PK_LOG_WARN;
            PK_LOG(lvl, "auth", "%s: key %zu%s%.64s%s skipped: %s", what, i, kid ? " kid=\"" : "",
                   kid ? kid : "", kid ? "\"" : "", skip);
            continue;
        }
        out.n++;
    }
    json_object_put(root);
    pk_keyset_free(ks);
    *ks = out;
    return 0;
}
