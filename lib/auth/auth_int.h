/* auth internals shared by auth.c (the verifier, requests, JWKS life cycle), token.c (the
 * token, its signature and claims) and keys.c (PEM, secrets, JWKS documents, base64url,
 * bounded JSON). Not part of the module's API. */
#ifndef PK_AUTH_INT_H
#define PK_AUTH_INT_H

#include "auth/auth.h"

#include <cjose/jwk.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum pk_key_family { PK_KEY_HMAC, PK_KEY_RSA, PK_KEY_EC };

/* One JWS algorithm this module accepts: the family of key it needs, its signature length
 * (0 for RSA: the modulus size) and, for ECDSA, the one curve it may use. */
struct pk_alg {
    const char *name;
    enum pk_key_family fam;
    size_t sig_len;
    int ec_nid;
};

/* The entry named name (case-sensitive, as RFC 7515), or NULL ("none" is never listed). */
const struct pk_alg *pk_alg_find(const char *name);

/* A verification key. */
struct pk_key {
    cjose_jwk_t *jwk;
    char *kid; /* NULL for a static key */
    enum pk_key_family fam;
    int ec_nid;       /* PK_KEY_EC: the curve */
    size_t rsa_bytes; /* PK_KEY_RSA: modulus size, the length of every signature */
    char alg[8];      /* the JWK's "alg", "" when it has none (any alg of the family) */
};

struct pk_keyset {
    struct pk_key *v;
    size_t n;
};

void pk_keyset_free(struct pk_keyset *ks);

/* Loads the static key of one option. what names it in err ("upstream.auth.rsa-public-key").
 * Returns 0, or PK_ERR_INVALID with "<what>: <reason>" in err. */
int pk_key_from_secret(struct pk_key *k, const char *secret, const char *what, char *err,
                       size_t errlen);
int pk_key_from_pem(struct pk_key *k, const char *pem, enum pk_key_family fam, const char *what,
                    char *err, size_t errlen);

/* Parses a JWKS document into ks (replaced only on success). Unusable keys are skipped with a
 * warning naming what. Returns 0, or PK_ERR_INVALID (not JSON, no "keys" array) with the
 * reason in err. */
int pk_jwks_parse(const char *buf, size_t len, const char *what, struct pk_keyset *ks, char *err,
                  size_t errlen);

/* Strict unpadded base64url (RFC 7515 section 2): only [A-Za-z0-9_-], no length 4n+1, zero
 * trailing bits. */
bool pk_b64url_valid(const char *in, size_t len);
/* Decodes a pk_b64url_valid string into out (len * 3 / 4 bytes); returns the length. */
size_t pk_b64url_decode(const char *in, size_t len, uint8_t *out);

/* What a verifier requires of the claims besides the signature. */
struct pk_claim_rules {
    const char *audience; /* NULL: aud not checked */
    const char *issuer;   /* NULL: iss not checked */
    bool require_exp;
    int64_t leeway_s;
};

/* A compact JWS split and its header parsed. Points into the caller's token. */
struct pk_token {
    const char *tok;
    size_t len;
    const char *seg[3];
    size_t seglen[3];
    struct json_object *header; /* owned */
    const struct pk_alg *alg;
    const char *kid; /* NULL when absent; points into header */
};

/* Checks the compact form (at most max_len bytes, three strict base64url segments), parses
 * the header (a JSON object with a string alg, an optional string kid, no crit) and finds
 * the alg. Returns OK, MISSING_TOKEN (tok NULL), MALFORMED or ALG_NOT_ALLOWED, with the
 * reason in detail. pk_token_free t whatever the result. */
enum pk_auth_result pk_token_parse(struct pk_token *t, const char *tok, size_t len, size_t max_len,
                                   char *detail, size_t dlen);
void pk_token_free(struct pk_token *t);
/* OK when key k may check a token of algorithm alg (family, curve, the JWK's own alg);
 * ALG_NOT_ALLOWED otherwise. */
enum pk_auth_result pk_key_fits(const struct pk_key *k, const struct pk_alg *alg, char *detail,
                                size_t dlen);
/* Verifies the signature of a parsed token with k (which fits its alg), then the claims
 * against rules. On OK fills c; otherwise c is zeroed. */
enum pk_auth_result pk_token_verify(const struct pk_token *t, const struct pk_key *k,
                                    const struct pk_claim_rules *rules, struct pk_claims *c,
                                    char *detail, size_t dlen);
/* Copies s (from a token) into buf for a log line: printable ASCII, at most 64 characters. */
const char *pk_printable(const char *s, char *buf, size_t size);

/* Parses a whole JSON text (trailing whitespace allowed) with json-c at a bounded depth;
 * NULL when it is not exactly one JSON value. */
struct json_object *pk_json_parse_bounded(const char *buf, size_t len);
#define PK_AUTH_JSON_DEPTH 16

#endif
