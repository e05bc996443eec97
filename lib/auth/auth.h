/* auth: JWT verification for Piko's ports (upstream, proxy, admin), with the semantics of
 * Go Piko's --<port>.auth.* flags.
 *
 * A pk_auth verifies compact JWS tokens against exactly one key source:
 *   - an HMAC secret (HS256, HS384, HS512),
 *   - an RSA public key in PEM (RS256, RS384, RS512, PS256, PS384, PS512),
 *   - an ECDSA public key in PEM (ES256 on P-256, ES384 on P-384, ES512 on P-521),
 *   - a JWKS, from a file or an https:// URL, whose keys are chosen by the token's kid.
 * The token's alg must belong to the key's type (and curve, and the JWK's own alg when it
 * has one): "none" is always refused, and so is every cross-type use (an HS* token
 * against an RSA or EC key, the classic algorithm confusion; an RS* token against a
 * secret...). Header fields that name keys (jku, jwk, x5u, x5c) are never followed; a
 * "crit" header is refused since no extension is understood.
 *
 * Claims, after the signature: exp and nbf are checked when present, with opts.leeway_s
 * seconds of tolerance (default 0); a token without exp is accepted (as Go Piko does)
 * unless opts.require_exp. aud (a string or an array of strings) must contain
 * opts.audience when that is set, iss must equal opts.issuer when that is set; iat is not
 * checked (as golang-jwt v5). Registered claims of the wrong JSON type make the token
 * malformed. The Piko claim is Go Piko's {"piko": {"endpoints": ["a", "b"]}}: a missing
 * claim, a missing or null list, and an empty list all mean "every endpoint" (Go Piko's
 * len(Endpoints) == 0 rule).
 *
 * JWKS: a file is read at pk_auth_new (failure is a configuration error) and re-read when
 * it changed (inode, size, mtime or ctime) every refresh interval and whenever a token
 * names an unknown kid, synchronously, so a rotated key works on the very next
 * verification. An https JWKS is fetched with pk_httpc from pk_auth_new on, then every
 * refresh interval (every min_refetch_ms while it has never loaded); a token with an
 * unknown kid starts a refetch unless another unknown kid did in the last min_refetch_ms,
 * and its verification waits for that fetch. While the JWKS has never loaded, a
 * verification waits for the fetch in flight, or starts one when the last attempt is
 * min_refetch_ms old, and fails with KEYS_NOT_LOADED otherwise. A failed refresh keeps the
 * keys already loaded. Keys a JWKS holds that cannot be used (unknown kty, "use" other than
 * "sig", no kid, RSA under 1024 bits, unsupported curve) are skipped with a warning.
 *
 * Every function must be called from the thread running the event_base given to
 * pk_auth_new. Callbacks are always delivered from the loop (a deferred event), never from
 * inside pk_auth_verify; a callback may verify again, cancel other requests and
 * pk_auth_del its own verifier. Request lifetime: the pointer returned by pk_auth_verify
 * stays valid until its callback starts or until pk_auth_cancel / pk_auth_del; cancelled
 * requests never call back.
 *
 * The module logs JWKS loads and failures (subsystem "auth"); it does not log individual
 * rejections, whose precise reason (detail) the caller logs with its connection tag. */
#ifndef PK_AUTH_H
#define PK_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct pk_httpc;
struct pk_auth;     /* one verifier (one port's key source and claim rules) */
struct pk_auth_req; /* one asynchronous verification */

/* The outcome of a verification. PROTOCOL.md 4 maps them to replies: see
 * pk_auth_http_status and pk_auth_http_message. Every failure but MISSING_TOKEN, EXPIRED
 * and ENDPOINT_NOT_PERMITTED is "401 invalid token" to the client; the distinct values
 * are for logs and metrics. */
enum pk_auth_result {
    PK_AUTH_OK = 0,
    PK_AUTH_MISSING_TOKEN,          /* no bearer token in the request (pk_auth_bearer) */
    PK_AUTH_MALFORMED,              /* not a compact JWS of valid base64url and JSON, a claim of the
                                       wrong type, a "crit" header, or over opts.max_token_len */
    PK_AUTH_ALG_NOT_ALLOWED,        /* alg none, unknown, or not the key's type / curve / JWK alg */
    PK_AUTH_BAD_SIGNATURE,          /* the signature does not verify (or has the wrong length) */
    PK_AUTH_UNKNOWN_KID,            /* JWKS: no key has the token's kid, or the token has no kid */
    PK_AUTH_KEYS_NOT_LOADED,        /* JWKS: the https JWKS has never been loaded */
    PK_AUTH_NOT_YET_VALID,          /* nbf is in the future */
    PK_AUTH_WRONG_AUDIENCE,         /* aud missing or without opts.audience */
    PK_AUTH_WRONG_ISSUER,           /* iss missing or not opts.issuer */
    PK_AUTH_NO_EXPIRY,              /* opts.require_exp and the token has no exp */
    PK_AUTH_EXPIRED,                /* exp has passed */
    PK_AUTH_ENDPOINT_NOT_PERMITTED, /* never returned by verification: pk_auth_allows said no */
    PK_AUTH_PENDING,                /* pk_auth_verify_now only: a JWKS fetch must finish first */
    PK_AUTH_NRESULTS
};

/* "ok", "missing token", "malformed", "alg not allowed", "bad signature", "unknown kid",
 * "keys not loaded", "not yet valid", "wrong audience", "wrong issuer", "no expiry",
 * "expired", "endpoint not permitted", "pending": a static string, for logs and metric
 * labels. */
const char *pk_auth_result_str(enum pk_auth_result r);
/* 200 for OK (and PENDING), 403 for ENDPOINT_NOT_PERMITTED, 401 for the rest. */
int pk_auth_http_status(enum pk_auth_result r);
/* The PROTOCOL.md 4 error message: "missing token", "expired token",
 * "endpoint not permitted", or "invalid token" for every other failure; "" for OK. */
const char *pk_auth_http_message(enum pk_auth_result r);

/* What a verified token allows. Owned by the module in a callback (valid during the call
 * only); pk_claims_copy makes a copy the caller owns. */
struct pk_claims {
    int64_t exp;        /* seconds since the epoch; 0 when the token has no exp. exp and nbf
                           are checked against the wall clock (time()). The caller implements
                           disable-disconnect-on-expiry by ignoring exp once accepted. */
    bool all_endpoints; /* no piko.endpoints restriction: every endpoint is allowed */
    char **endpoints;   /* n_endpoints strings when !all_endpoints, else NULL */
    size_t n_endpoints;
    char *sub; /* the sub claim, NULL when absent */
};

/* Fills dst (overwritten, not freed) with a deep copy of src. */
void pk_claims_copy(struct pk_claims *dst, const struct pk_claims *src);
/* Frees what c holds and zeroes it; c itself is the caller's. NULL is a no-op. */
void pk_claims_free(struct pk_claims *c);
/* True when the claims allow endpoint (exact, case-sensitive match, as Go Piko), or carry no
 * endpoint restriction. False when c or endpoint is NULL. The caller answers 403 "endpoint
 * not permitted" (PK_AUTH_ENDPOINT_NOT_PERMITTED) on false. */
bool pk_auth_allows(const struct pk_claims *c, const char *endpoint);

/* Finds the bearer token of a request from its two header values (either may be NULL):
 * x-piko-authorization wins over authorization whenever it is present and not blank, even
 * when it holds no bearer token (as Go Piko). The value must be "Bearer <token>": the
 * scheme is case-insensitive, spaces and tabs around the token are ignored, and the token
 * is one word. On PK_AUTH_OK *token points into the chosen header value and *len is its
 * length (not NUL-terminated in general); otherwise returns PK_AUTH_MISSING_TOKEN. */
enum pk_auth_result pk_auth_bearer(const char *x_piko_authorization, const char *authorization,
                                   const char **token, size_t *len);

#define PK_AUTH_DEFAULT_REFRESH_MS       (5 * 60 * 1000)
#define PK_AUTH_DEFAULT_MIN_REFETCH_MS   (10 * 1000)
#define PK_AUTH_DEFAULT_FETCH_TIMEOUT_MS (10 * 1000)
#define PK_AUTH_DEFAULT_MAX_TOKEN_LEN    (16 * 1024)
#define PK_AUTH_MAX_LEEWAY_S             300
/* Bound on a JWKS file, and on the keys kept from one JWKS. An https JWKS is bounded by the
 * pk_httpc client's max_body. */
#define PK_AUTH_MAX_JWKS_BYTES (1024 * 1024)
#define PK_AUTH_MAX_JWKS_KEYS  64
/* Verifications waiting for one JWKS fetch; past this they fail at once. */
#define PK_AUTH_MAX_WAITING 4096

struct pk_auth_opts {
    /* Names the options in error messages and logs: "upstream.auth" gives
     * "upstream.auth.rsa-public-key: not a PEM public key". NULL: "auth". */
    const char *prefix;
    /* Exactly one of the four key sources; NULL or "" is unset. */
    const char *hmac_secret_key;  /* the secret's bytes, as given (Go Piko: []byte(flag)) */
    const char *rsa_public_key;   /* PEM text: PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE */
    const char *ecdsa_public_key; /* PEM text: PUBLIC KEY or CERTIFICATE; P-256/384/521 */
    /* "https://...", "file:PATH", "file:///abs/path" or a plain path. "http://" is refused
     * unless jwks_allow_http (tests only: logged as a warning). */
    const char *jwks_endpoint;
    bool jwks_allow_http;
    uint64_t jwks_refresh_ms;     /* 0: PK_AUTH_DEFAULT_REFRESH_MS */
    uint64_t jwks_min_refetch_ms; /* rate limit of the fetches verifications start (unknown
                                     kid; JWKS never loaded); 0: default */
    uint64_t jwks_timeout_ms;     /* one https fetch; 0: default */
    const char *audience;         /* NULL or "": aud not checked */
    const char *issuer;           /* NULL or "": iss not checked */
    bool require_exp;             /* refuse tokens without exp (Go Piko accepts them) */
    unsigned leeway_s;            /* tolerance on exp and nbf, 0..PK_AUTH_MAX_LEEWAY_S */
    size_t max_token_len;         /* longer tokens are malformed; 0: the default */
};

/* Counters since pk_auth_new, for metrics. rejected[] is indexed by enum pk_auth_result;
 * its OK, PENDING and ENDPOINT_NOT_PERMITTED slots stay 0 (the 403 is the caller's
 * decision, taken with pk_auth_allows). Cancelled verifications are not counted. */
struct pk_auth_counters {
    uint64_t accepted;
    uint64_t rejected[PK_AUTH_NRESULTS];
    uint64_t jwks_loads;         /* JWKS documents loaded (file reads or fetches) */
    uint64_t jwks_load_failures; /* reads or fetches that failed or held no valid JWKS */
    size_t jwks_keys;            /* usable keys in the current JWKS */
};

/* Creates a verifier on base. http is the client for an https JWKS and may be NULL
 * otherwise; it must outlive the verifier. Keys are loaded now (a JWKS file is read, an
 * https JWKS fetch is started). Returns NULL with a one-line message in err (errlen bytes,
 * may be 0) naming the option at fault, e.g. "upstream.auth.rsa-public-key: not a PEM
 * public key", "upstream.auth: more than one key source (hmac-secret-key, jwks.endpoint)".
 * opts and its strings are copied. */
struct pk_auth *pk_auth_new(struct event_base *base, struct pk_httpc *http,
                            const struct pk_auth_opts *opts, char *err, size_t errlen);

/* Cancels every pending verification (no callbacks), stops the JWKS fetch and timer and
 * frees a. NULL is a no-op. Safe from inside a callback of a. */
void pk_auth_del(struct pk_auth *a);

/* True when tokens can be verified now: always for a static key, once a JWKS has loaded. */
bool pk_auth_ready(const struct pk_auth *a);

/* res: PK_AUTH_OK with claims, or the failure (never PENDING or ENDPOINT_NOT_PERMITTED).
 * claims is NULL unless OK; claims and detail (a precise reason for the log, e.g.
 * "alg HS256 not allowed with an RSA key", never NULL) are valid during the call only. */
typedef void (*pk_auth_cb)(enum pk_auth_result res, const struct pk_claims *claims,
                           const char *detail, void *arg);

/* Verifies token (len bytes; need not be NUL-terminated; copied when the verification has
 * to wait). The result always comes through cb from the loop, even when it is known at
 * once (as it is unless a JWKS fetch must finish first). A NULL token is MISSING_TOKEN.
 * Returns NULL, and never calls back, only when a or cb is NULL. */
struct pk_auth_req *pk_auth_verify(struct pk_auth *a, const char *token, size_t len, pk_auth_cb cb,
                                   void *arg);

/* The callback will not be called; NULL is a no-op, and so is cancelling a request whose
 * callback is running. */
void pk_auth_cancel(struct pk_auth_req *req);

/* The synchronous core of pk_auth_verify, for callers that cannot wait and for fuzzing.
 * On PK_AUTH_OK fills *claims (pk_claims_free it); otherwise *claims is zeroed. detail
 * (detaillen bytes, may be 0) receives the precise reason. Returns PK_AUTH_PENDING, after
 * starting a fetch if none was in flight, when an https JWKS must be (re)loaded first;
 * a later call after the fetch ends gives the answer. Counts in the counters except
 * PENDING. */
enum pk_auth_result pk_auth_verify_now(struct pk_auth *a, const char *token, size_t len,
                                       struct pk_claims *claims, char *detail, size_t detaillen);

/* The counters of a; valid as long as a. */
const struct pk_auth_counters *pk_auth_counters(const struct pk_auth *a);

#endif
