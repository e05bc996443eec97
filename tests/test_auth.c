/* Tests for lib/auth: tokens signed in the test with cjose, keys generated with OpenSSL,
 * JWKS documents in temporary files and on an evhttp server on 127.0.0.1 that runs on the
 * test's own event_base (plain http, which the verifier allows for tests only).
 *
 * The RSA and EC keys are generated once, by the suite's init function. */
#include "auth/auth.h"
#include "base/base.h"
#include "httpc/httpc.h"

#include <CUnit/CUnit.h>
#include <arpa/inet.h>
#include <cjose/base64.h>
#include <cjose/header.h>
#include <cjose/jwk.h>
#include <cjose/jws.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/encoder.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

void pk_test_register_auth(void);

#define GUARD_MS 10000
#define SECRET   "0123456789abcdef0123456789abcdef"

/* ---- keys, made once ---- */

struct keypair {
    EVP_PKEY *pkey;
    cjose_jwk_t *jwk; /* private: signs */
    char *pem;        /* SubjectPublicKeyInfo */
};

static struct {
    struct keypair rsa, rsa2, ec256, ec384, ec521, k256;
    char *rsa_pkcs1_pem;
    char *rsa_cert_pem;
    char *ec_cert_pem;
    char *rsa_private_pem;
    cjose_jwk_t *hmac;
    char tmpdir[64];
} K;

static char *pem_of(EVP_PKEY *pkey, bool private_key)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data;
    if (private_key)
        PEM_write_bio_PrivateKey(b, pkey, NULL, NULL, 0, NULL, NULL);
    else
        PEM_write_bio_PUBKEY(b, pkey);
    long n = BIO_get_mem_data(b, &data);
    char *s = pk_xstrndup(data, (size_t)n);
    BIO_free(b);
    return s;
}

static uint8_t *bn_param(EVP_PKEY *pkey, const char *name, size_t pad, size_t *len)
{
    BIGNUM *bn = NULL;
    if (!EVP_PKEY_get_bn_param(pkey, name, &bn))
        return NULL;
    size_t n = pad ? pad : (size_t)BN_num_bytes(bn);
    uint8_t *b = pk_xmalloc(n);
    BN_bn2binpad(bn, b, (int)n);
    BN_free(bn);
    *len = n;
    return b;
}

static int make_rsa(struct keypair *kp, unsigned bits)
{
    cjose_jwk_rsa_keyspec s;
    memset(&s, 0, sizeof(s));
    kp->pkey = EVP_RSA_gen(bits);
    if (!kp->pkey)
        return -1;
    s.n = bn_param(kp->pkey, OSSL_PKEY_PARAM_RSA_N, 0, &s.nlen);
    s.e = bn_param(kp->pkey, OSSL_PKEY_PARAM_RSA_E, 0, &s.elen);
    s.d = bn_param(kp->pkey, OSSL_PKEY_PARAM_RSA_D, 0, &s.dlen);
    s.p = bn_param(kp->pkey, OSSL_PKEY_PARAM_RSA_FACTOR1, 0, &s.plen);
    s.q = bn_param(kp->pkey, OSSL_PKEY_PARAM_RSA_FACTOR2, 0, &s.qlen);
    s.dp = bn_param(kp->pkey, OSSL_PKEY_PARAM_RSA_EXPONENT1, 0, &s.dplen);
    s.dq = bn_param(kp->pkey, OSSL_PKEY_PARAM_RSA_EXPONENT2, 0, &s.dqlen);
    s.qi = bn_param(kp->pkey, OSSL_PKEY_PARAM_RSA_COEFFICIENT1, 0, &s.qilen);
    kp->jwk = cjose_jwk_create_RSA_spec(&s, NULL);
    free(s.n), free(s.e), free(s.d), free(s.p), free(s.q), free(s.dp), free(s.dq), free(s.qi);
    kp->pem = pem_of(kp->pkey, false);
    return kp->jwk ? 0 : -1;
}

static int make_ec(struct keypair *kp, const char *curve, cjose_jwk_ec_curve crv, size_t cb)
{
    cjose_jwk_ec_keyspec s;
    memset(&s, 0, sizeof(s));
    kp->pkey = EVP_EC_gen(curve);
    if (!kp->pkey)
        return -1;
    kp->pem = pem_of(kp->pkey, false);
    if (crv == CJOSE_JWK_EC_INVALID)
        return 0; /* a curve cjose does not know: only its PEM is used */
    s.crv = crv;
    s.d = bn_param(kp->pkey, OSSL_PKEY_PARAM_PRIV_KEY, cb, &s.dlen);
    s.x = bn_param(kp->pkey, OSSL_PKEY_PARAM_EC_PUB_X, cb, &s.xlen);
    s.y = bn_param(kp->pkey, OSSL_PKEY_PARAM_EC_PUB_Y, cb, &s.ylen);
    kp->jwk = cjose_jwk_create_EC_spec(&s, NULL);
    free(s.d), free(s.x), free(s.y);
    return kp->jwk ? 0 : -1;
}

static char *pkcs1_pem(EVP_PKEY *pkey)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data;
    OSSL_ENCODER_CTX *ctx =
        OSSL_ENCODER_CTX_new_for_pkey(pkey, EVP_PKEY_PUBLIC_KEY, "PEM", "type-specific", NULL);
    OSSL_ENCODER_to_bio(ctx, b);
    OSSL_ENCODER_CTX_free(ctx);
    long n = BIO_get_mem_data(b, &data);
    char *s = pk_xstrndup(data, (size_t)n);
    BIO_free(b);
    return s;
}

/* A self-signed certificate for pkey, in PEM. */
static char *cert_pem(EVP_PKEY *pkey)
{
    X509 *x = X509_new();
    BIO *b = BIO_new(BIO_s_mem());
    char *data;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, pkey);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"piko-test", -1, -1,
                               0);
    X509_set_issuer_name(x, n);
    X509_sign(x, pkey, EVP_sha256());
    PEM_write_bio_X509(b, x);
    long len = BIO_get_mem_data(b, &data);
    char *s = pk_xstrndup(data, (size_t)len);
    BIO_free(b);
    X509_free(x);
    return s;
}

static void free_kp(struct keypair *kp)
{
    EVP_PKEY_free(kp->pkey);
    cjose_jwk_release(kp->jwk);
    free(kp->pem);
}

static int suite_init(void)
{
    memset(&K, 0, sizeof(K));
    if (make_rsa(&K.rsa, 2048) || make_rsa(&K.rsa2, 2048) ||
        make_ec(&K.ec256, "P-256", CJOSE_JWK_EC_P_256, 32) ||
        make_ec(&K.ec384, "P-384", CJOSE_JWK_EC_P_384, 48) ||
        make_ec(&K.ec521, "P-521", CJOSE_JWK_EC_P_521, 66) ||
        make_ec(&K.k256, "secp256k1", CJOSE_JWK_EC_INVALID, 32))
        return -1;
    K.rsa_pkcs1_pem = pkcs1_pem(K.rsa.pkey);
    K.rsa_cert_pem = cert_pem(K.rsa.pkey);
    K.ec_cert_pem = cert_pem(K.ec256.pkey);
    K.rsa_private_pem = pem_of(K.rsa.pkey, true);
    K.hmac = cjose_jwk_create_oct_spec((const uint8_t *)SECRET, strlen(SECRET), NULL);
    snprintf(K.tmpdir, sizeof(K.tmpdir), "/tmp/piko-test-auth-XXXXXX");
    if (!mkdtemp(K.tmpdir))
        return -1;
    return K.hmac && strstr(K.rsa_pkcs1_pem, "RSA PUBLIC KEY") &&
                   strstr(K.rsa_cert_pem, "CERTIFICATE") && strstr(K.ec_cert_pem, "CERTIFICATE")
               ? 0
               : -1;
}

static int suite_clean(void)
{
    char cmd[128];
    free_kp(&K.rsa);
    free_kp(&K.rsa2);
    free_kp(&K.ec256);
    free_kp(&K.ec384);
    free_kp(&K.ec521);
    free_kp(&K.k256);
    free(K.rsa_pkcs1_pem);
    free(K.rsa_cert_pem);
    free(K.ec_cert_pem);
    free(K.rsa_private_pem);
    cjose_jwk_release(K.hmac);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", K.tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- tokens ---- */

static char *b64url(const void *data, size_t len)
{
    char *out = NULL;
    size_t n;
    CU_ASSERT_FATAL(cjose_base64url_encode(data, len, &out, &n, NULL));
    char *s = pk_xstrndup(out, n);
    free(out);
    return s;
}

/* Signs payload with jwk under alg, adding kid when not NULL and the raw header field
 * extra ("name=json") when not NULL. */
static char *sign_ex(const cjose_jwk_t *jwk, const char *alg, const char *kid, const char *payload,
                     const char *extra)
{
    cjose_err err;
    const char *ser = NULL;
    cjose_header_t *h = cjose_header_new(&err);
    CU_ASSERT_FATAL(cjose_header_set(h, CJOSE_HDR_ALG, alg, &err));
    if (kid)
        CU_ASSERT_FATAL(cjose_header_set(h, CJOSE_HDR_KID, kid, &err));
    if (extra) {
        char name[32];
        const char *eq = strchr(extra, '=');
        snprintf(name, sizeof(name), "%.*s", (int)(eq - extra), extra);
        CU_ASSERT_FATAL(cjose_header_set_raw(h, name, eq + 1, &err));
    }
    cjose_jws_t *jws = cjose_jws_sign(jwk, h, (const uint8_t *)payload, strlen(payload), &err);
    if (!jws)
        fprintf(stderr, "\nsign %s: %s\n", alg, err.message);
    CU_ASSERT_PTR_NOT_NULL_FATAL(jws);
    CU_ASSERT_FATAL(cjose_jws_export(jws, &ser, &err));
    char *tok = pk_xstrdup(ser);
    cjose_jws_release(jws);
    cjose_header_release(h);
    return tok;
}

static char *sign(const cjose_jwk_t *jwk, const char *alg, const char *kid, const char *payload)
{
    return sign_ex(jwk, alg, kid, payload, NULL);
}

/* header.payload.sig from raw JSON texts, the signature given in base64url. */
static char *raw_token(const char *header, const char *payload, const char *sig)
{
    char *h = b64url(header, strlen(header)), *p = b64url(payload, strlen(payload));
    char *t = pk_xasprintf("%s.%s.%s", h, p, sig);
    free(h);
    free(p);
    return t;
}

static long long now_s(void)
{
    return (long long)time(NULL);
}

/* ---- loop harness and verifiers ---- */

struct loop {
    struct event_base *base;
    struct event *watchdog;
    bool timed_out;
};

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    struct loop *l = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);
    l->timed_out = true;
}

static void loop_init(struct loop *l)
{
    memset(l, 0, sizeof(*l));
    l->base = event_base_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(l->base);
    l->watchdog = evtimer_new(l->base, watchdog_cb, l);
}

static void loop_free(struct loop *l)
{
    event_free(l->watchdog);
    event_base_free(l->base);
}

/* Runs the loop until *counter >= want, or GUARD_MS passed (a failure). */
static void loop_until(struct loop *l, const int *counter, int want)
{
    struct timeval tv = {GUARD_MS / 1000, 0};
    l->timed_out = false;
    evtimer_add(l->watchdog, &tv);
    while (*counter < want && !l->timed_out)
        event_base_loop(l->base, EVLOOP_ONCE);
    evtimer_del(l->watchdog);
    CU_ASSERT_FALSE(l->timed_out);
}

/* Runs the loop until *v >= want (a counter of the verifier), or GUARD_MS passed. */
static void loop_until_u64(struct loop *l, const uint64_t *v, uint64_t want)
{
    struct timeval tv = {GUARD_MS / 1000, 0};
    l->timed_out = false;
    evtimer_add(l->watchdog, &tv);
    while (*v < want && !l->timed_out)
        event_base_loop(l->base, EVLOOP_ONCE);
    evtimer_del(l->watchdog);
    CU_ASSERT_FALSE(l->timed_out);
}

/* Runs the loop for ms milliseconds, giving callbacks that must not come a chance to. */
static void loop_settle(struct loop *l, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    l->timed_out = false;
    evtimer_add(l->watchdog, &tv);
    while (!l->timed_out)
        event_base_loop(l->base, EVLOOP_ONCE);
}

static void opts_init(struct pk_auth_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->prefix = "upstream.auth";
}

static struct pk_auth *new_auth(struct loop *l, struct pk_httpc *http, const struct pk_auth_opts *o)
{
    char err[256] = "";
    struct pk_auth *a = pk_auth_new(l->base, http, o, err, sizeof(err));
    if (!a)
        fprintf(stderr, "\npk_auth_new: %s\n", err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    return a;
}

/* pk_auth_new must fail with a message containing want. */
static void new_fails(struct loop *l, struct pk_httpc *http, const struct pk_auth_opts *o,
                      const char *want)
{
    char err[256] = "";
    struct pk_auth *a = pk_auth_new(l->base, http, o, err, sizeof(err));
    CU_ASSERT_PTR_NULL(a);
    pk_auth_del(a);
    if (!strstr(err, want))
        fprintf(stderr, "\nerror \"%s\" does not contain \"%s\"\n", err, want);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, want));
}

static char last_detail[160];

/* pk_auth_verify_now on a NUL-terminated token; claims may be NULL. */
static enum pk_auth_result vnow(struct pk_auth *a, const char *tok, struct pk_claims *claims)
{
    struct pk_claims c;
    enum pk_auth_result r =
        pk_auth_verify_now(a, tok, strlen(tok), &c, last_detail, sizeof(last_detail));
    if (claims)
        *claims = c;
    else
        pk_claims_free(&c);
    return r;
}

/* Checks the result of verifying tok, printing the detail when it differs. */
#define EXPECT(a, tok, want)                                                                       \
    do {                                                                                           \
        enum pk_auth_result r_ = vnow((a), (tok), NULL);                                           \
        if (r_ != (want))                                                                          \
            fprintf(stderr, "\nline %d: got %s (%s), want %s\n", __LINE__, pk_auth_result_str(r_), \
                    last_detail, pk_auth_result_str(want));                                        \
        CU_ASSERT_EQUAL(r_, (want));                                                               \
    } while (0)

/* Verifies tok with a (which is freed) and a fresh loop; for one-token claim tests. */
static enum pk_auth_result verify_with(const struct pk_auth_opts *o, const char *tok,
                                       struct pk_claims *claims)
{
    struct loop l;
    loop_init(&l);
    struct pk_auth *a = new_auth(&l, NULL, o);
    enum pk_auth_result r = vnow(a, tok, claims);
    pk_auth_del(a);
    loop_free(&l);
    return r;
}

/* ---- tests: algorithms and keys ---- */

static void test_hmac_valid(void)
{
    struct loop l;
    struct pk_auth_opts o;
    char payload[128];
    const char *algs[] = {"HS256", "HS384", "HS512"};

    loop_init(&l);
    opts_init(&o);
    o.hmac_secret_key = SECRET;
    struct pk_auth *a = new_auth(&l, NULL, &o);
    CU_ASSERT_TRUE(pk_auth_ready(a));
    long long exp = now_s() + 3600;
    snprintf(payload, sizeof(payload), "{\"sub\":\"svc\",\"exp\":%lld}", exp);
    for (size_t i = 0; i < PK_ARRAY_LEN(algs); i++) {
        char *t = sign(K.hmac, algs[i], NULL, payload);
        struct pk_claims c;
        CU_ASSERT_EQUAL(vnow(a, t, &c), PK_AUTH_OK);
        CU_ASSERT_EQUAL(c.exp, exp);
        CU_ASSERT_PTR_NOT_NULL_FATAL(c.sub);
        CU_ASSERT_STRING_EQUAL(c.sub, "svc");
        CU_ASSERT_TRUE(c.all_endpoints);
        pk_claims_free(&c);
        free(t);
    }
    CU_ASSERT_EQUAL(pk_auth_counters(a)->accepted, 3);
    pk_auth_del(a);
    loop_free(&l);
}

static void test_rsa_valid(void)
{
    struct loop l;
    struct pk_auth_opts o;
    const char *algs[] = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"};
    const char *pems[] = {K.rsa.pem, K.rsa_pkcs1_pem, K.rsa_cert_pem};

    loop_init(&l);
    for (size_t p = 0; p < PK_ARRAY_LEN(pems); p++) {
        opts_init(&o);
        o.rsa_public_key = pems[p];
        struct pk_auth *a = new_auth(&l, NULL, &o);
        for (size_t i = 0; i < PK_ARRAY_LEN(algs); i++) {
            char *t = sign(K.rsa.jwk, algs[i], NULL, "{\"sub\":\"x\"}");
            struct pk_claims c;
            EXPECT(a, t, PK_AUTH_OK);
            CU_ASSERT_EQUAL(vnow(a, t, &c), PK_AUTH_OK);
            CU_ASSERT_EQUAL(c.exp, 0); /* no exp: accepted, as Go Piko */
            pk_claims_free(&c);
            free(t);
        }
        /* Signed by another RSA key. */
        char *t = sign(K.rsa2.jwk, "RS256", NULL, "{}");
        EXPECT(a, t, PK_AUTH_BAD_SIGNATURE);
        free(t);
        pk_auth_del(a);
    }
    loop_free(&l);
}

static void test_ecdsa_valid(void)
{
    struct loop l;
    struct pk_auth_opts o;
    struct {
        struct keypair *kp;
        const char *alg;
    } ok[] = {{&K.ec256, "ES256"}, {&K.ec384, "ES384"}, {&K.ec521, "ES512"}};

    loop_init(&l);
    for (size_t i = 0; i < PK_ARRAY_LEN(ok); i++) {
        opts_init(&o);
        o.ecdsa_public_key = ok[i].kp->pem;
        struct pk_auth *a = new_auth(&l, NULL, &o);
        char *t = sign(ok[i].kp->jwk, ok[i].alg, NULL, "{\"aud\":\"x\"}");
        EXPECT(a, t, PK_AUTH_OK);
        free(t);
        pk_auth_del(a);
    }
    /* A certificate works as well as a bare public key. */
    opts_init(&o);
    o.ecdsa_public_key = K.ec_cert_pem;
    struct pk_auth *c = new_auth(&l, NULL, &o);
    char *tc = sign(K.ec256.jwk, "ES256", NULL, "{}");
    EXPECT(c, tc, PK_AUTH_OK);
    free(tc);
    pk_auth_del(c);
    /* The curve belongs to the alg: an ES256 token never verifies against a P-384 key, even
     * when its signature has the length a P-384 one would have. */
    opts_init(&o);
    o.ecdsa_public_key = K.ec384.pem;
    struct pk_auth *a = new_auth(&l, NULL, &o);
    char *t = sign(K.ec256.jwk, "ES256", NULL, "{}");
    EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
    free(t);
    t = sign(K.ec384.jwk, "ES384", NULL, "{}");
    EXPECT(a, t, PK_AUTH_OK);
    /* One byte more or less in the signature. */
    char *longer = pk_xasprintf("%sAA", t);
    EXPECT(a, longer, PK_AUTH_BAD_SIGNATURE);
    t[strlen(t) - 4] = '\0';
    EXPECT(a, t, PK_AUTH_BAD_SIGNATURE);
    free(longer);
    free(t);
    /* Another P-384 key. */
    pk_auth_del(a);
    opts_init(&o);
    o.ecdsa_public_key = K.ec256.pem;
    a = new_auth(&l, NULL, &o);
    struct keypair other;
    CU_ASSERT_FATAL(make_ec(&other, "P-256", CJOSE_JWK_EC_P_256, 32) == 0);
    t = sign(other.jwk, "ES256", NULL, "{}");
    EXPECT(a, t, PK_AUTH_BAD_SIGNATURE);
    free(t);
    free_kp(&other);
    pk_auth_del(a);
    loop_free(&l);
}

static void test_bad_signatures(void)
{
    struct loop l;
    struct pk_auth_opts o;

    loop_init(&l);
    opts_init(&o);
    o.hmac_secret_key = SECRET;
    struct pk_auth *a = new_auth(&l, NULL, &o);

    /* Wrong secret. */
    cjose_jwk_t *wrong = cjose_jwk_create_oct_spec((const uint8_t *)"another secret", 14, NULL);
    char *t = sign(wrong, "HS256", NULL, "{\"sub\":\"a\"}");
    EXPECT(a, t, PK_AUTH_BAD_SIGNATURE);
    free(t);
    cjose_jwk_release(wrong);

    /* Tampered payload: the same header and signature over another payload. */
    t = sign(K.hmac, "HS256", NULL, "{\"sub\":\"a\"}");
    EXPECT(a, t, PK_AUTH_OK);
    char *other = sign(K.hmac, "HS256", NULL, "{\"sub\":\"b\"}");
    char *dot1 = strchr(t, '.'), *dot2 = strrchr(t, '.');
    char *odot1 = strchr(other, '.'), *odot2 = strrchr(other, '.');
    char *forged =
        pk_xasprintf("%.*s.%.*s%s", (int)(dot1 - t), t, (int)(odot2 - odot1 - 1), odot1 + 1, dot2);
    EXPECT(a, forged, PK_AUTH_BAD_SIGNATURE);
    free(forged);
    free(other);

    /* Tampered signature: one character in the middle. */
    char *bad = pk_xstrdup(t);
    char *mid = strrchr(bad, '.') + 10;
    *mid = *mid == 'A' ? 'B' : 'A';
    EXPECT(a, bad, PK_AUTH_BAD_SIGNATURE);
    free(bad);

    /* Truncated and empty signatures (cjose 0.6 would over-read a short one). */
    bad = pk_xstrdup(t);
    bad[strlen(bad) - 3] = '\0';
    EXPECT(a, bad, PK_AUTH_BAD_SIGNATURE);
    strrchr(bad, '.')[1] = '\0';
    EXPECT(a, bad, PK_AUTH_BAD_SIGNATURE);
    free(bad);

    /* Tampered header: the alg changed to HS384 over the HS256 signature. */
    char *h384 = b64url("{\"alg\":\"HS384\"}", 15);
    forged = pk_xasprintf("%s%s", h384, dot1);
    EXPECT(a, forged, PK_AUTH_BAD_SIGNATURE);
    free(forged);
    free(h384);
    free(t);
    CU_ASSERT(pk_auth_counters(a)->rejected[PK_AUTH_BAD_SIGNATURE] >= 6);
    pk_auth_del(a);
    loop_free(&l);
}

static void test_alg_none_refused(void)
{
    struct loop l;
    struct pk_auth_opts o;
    const char *sigs[] = {"", "AAAA", "c2lnbmF0dXJl"};
    const char *headers[] = {"{\"alg\":\"none\"}", "{\"alg\":\"None\"}", "{\"alg\":\"NONE\"}",
                             "{\"alg\":\"\"}", "{\"alg\":\"HS1\"}"};

    loop_init(&l);
    opts_init(&o);
    o.hmac_secret_key = SECRET;
    struct pk_auth *a = new_auth(&l, NULL, &o);
    for (size_t h = 0; h < PK_ARRAY_LEN(headers); h++) {
        for (size_t s = 0; s < PK_ARRAY_LEN(sigs); s++) {
            char *t = raw_token(headers[h], "{\"sub\":\"admin\"}", sigs[s]);
            EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
            free(t);
        }
    }
    EXPECT(a, "eyJhbGciOiJub25lIn0.e30.", PK_AUTH_ALG_NOT_ALLOWED);
    pk_auth_del(a);

    /* Same against an RSA verifier. */
    opts_init(&o);
    o.rsa_public_key = K.rsa.pem;
    a = new_auth(&l, NULL, &o);
    char *t = raw_token("{\"alg\":\"none\",\"typ\":\"JWT\"}", "{}", "");
    EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
    free(t);
    pk_auth_del(a);
    loop_free(&l);
}

/* header.payload signed with HMAC-SHA256 and SECRET, from raw JSON texts. */
static char *raw_hs256(const char *header, const char *payload)
{
    unsigned char mac[32];
    unsigned int maclen = 0;
    char *h = b64url(header, strlen(header)), *p = b64url(payload, strlen(payload));
    char *input = pk_xasprintf("%s.%s", h, p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET),
                                      (const unsigned char *)input, strlen(input), mac, &maclen));
    char *sig = b64url(mac, maclen);
    char *t = pk_xasprintf("%s.%s", input, sig);
    free(h);
    free(p);
    free(input);
    free(sig);
    return t;
}

static void test_duplicate_header_names(void)
{
    struct loop l;
    struct pk_auth_opts o;

    loop_init(&l);
    opts_init(&o);
    o.hmac_secret_key = SECRET;
    struct pk_auth *a = new_auth(&l, NULL, &o);
    char *t = raw_hs256("{\"alg\":\"HS256\"}", "{\"sub\":\"x\"}");
    EXPECT(a, t, PK_AUTH_OK); /* the crafting itself is right */
    free(t);
    /* The last of two names wins, for json-c (ours) as for jansson (cjose's). */
    t = raw_hs256("{\"alg\":\"none\",\"alg\":\"HS256\"}", "{}");
    EXPECT(a, t, PK_AUTH_OK);
    free(t);
    t = raw_hs256("{\"alg\":\"HS256\",\"alg\":\"none\"}", "{}");
    EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
    free(t);
    t = raw_hs256("{\"alg\":\"HS256\"}", "{\"exp\":1,\"exp\":99999999999}");
    EXPECT(a, t, PK_AUTH_OK);
    free(t);
    pk_auth_del(a);
    loop_free(&l);
}

static void test_alg_confusion(void)
{
    struct loop l;
    struct pk_auth_opts o;

    loop_init(&l);
    opts_init(&o);
    o.rsa_public_key = K.rsa.pem;
    struct pk_auth *a = new_auth(&l, NULL, &o);

    /* The classic: HS256 keyed with the bytes of the RSA public key's PEM. */
    cjose_jwk_t *pemkey =
        cjose_jwk_create_oct_spec((const uint8_t *)K.rsa.pem, strlen(K.rsa.pem), NULL);
    char *t = sign(pemkey, "HS256", NULL, "{\"sub\":\"admin\"}");
    EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
    CU_ASSERT_PTR_NOT_NULL(strstr(last_detail, "RSA"));
    free(t);
    t = sign(pemkey, "HS512", NULL, "{}");
    EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
    free(t);
    /* An ECDSA token against the RSA key. */
    t = sign(K.ec256.jwk, "ES256", NULL, "{}");
    EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
    free(t);
    pk_auth_del(a);

    /* RS and ES tokens against an HMAC verifier; HS against ECDSA. */
    opts_init(&o);
    o.hmac_secret_key = SECRET;
    a = new_auth(&l, NULL, &o);
    t = sign(K.rsa.jwk, "RS256", NULL, "{}");
    EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
    free(t);
    t = sign(K.ec256.jwk, "ES256", NULL, "{}");
    EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
    free(t);
    pk_auth_del(a);
    opts_init(&o);
    o.ecdsa_public_key = K.ec256.pem;
    a = new_auth(&l, NULL, &o);
    cjose_jwk_t *ecpem =
        cjose_jwk_create_oct_spec((const uint8_t *)K.ec256.pem, strlen(K.ec256.pem), NULL);
    t = sign(ecpem, "HS256", NULL, "{}");
    EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
    free(t);
    t = sign(K.rsa.jwk, "PS256", NULL, "{}");
    EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
    free(t);
    CU_ASSERT_EQUAL(pk_auth_counters(a)->rejected[PK_AUTH_ALG_NOT_ALLOWED], 2);
    cjose_jwk_release(ecpem);
    cjose_jwk_release(pemkey);
    pk_auth_del(a);
    loop_free(&l);
}

/* ---- tests: claims ---- */

static enum pk_auth_result hmac_claims(const char *payload, const char *audience,
                                       const char *issuer, unsigned leeway, bool require_exp,
                                       struct pk_claims *c)
{
    struct pk_auth_opts o;
    opts_init(&o);
    o.hmac_secret_key = SECRET;
    o.audience = audience;
    o.issuer = issuer;
    o.leeway_s = leeway;
    o.require_exp = require_exp;
    char *t = sign(K.hmac, "HS256", NULL, payload);
    enum pk_auth_result r = verify_with(&o, t, c);
    free(t);
    return r;
}

static void test_time_claims(void)
{
    char p[160];
    struct pk_claims c;
    long long now = now_s();

    snprintf(p, sizeof(p), "{\"exp\":%lld}", now - 100);
    CU_ASSERT_EQUAL(hmac_claims(p, NULL, NULL, 0, false, NULL), PK_AUTH_EXPIRED);
    CU_ASSERT_STRING_EQUAL(pk_auth_http_message(PK_AUTH_EXPIRED), "expired token");
    snprintf(p, sizeof(p), "{\"exp\":%lld}", now + 100);
    CU_ASSERT_EQUAL(hmac_claims(p, NULL, NULL, 0, false, &c), PK_AUTH_OK);
    CU_ASSERT_EQUAL(c.exp, now + 100);
    pk_claims_free(&c);
    /* A fractional exp is fine too. */
    snprintf(p, sizeof(p), "{\"exp\":%lld.5}", now + 100);
    CU_ASSERT_EQUAL(hmac_claims(p, NULL, NULL, 0, false, NULL), PK_AUTH_OK);
    /* Leeway: 2 s late passes with 5 s of leeway, not without. */
    snprintf(p, sizeof(p), "{\"exp\":%lld}", now - 2);
    CU_ASSERT_EQUAL(hmac_claims(p, NULL, NULL, 0, false, NULL), PK_AUTH_EXPIRED);
    CU_ASSERT_EQUAL(hmac_claims(p, NULL, NULL, 5, false, NULL), PK_AUTH_OK);
    /* nbf. */
    snprintf(p, sizeof(p), "{\"nbf\":%lld}", now + 100);
    CU_ASSERT_EQUAL(hmac_claims(p, NULL, NULL, 0, false, NULL), PK_AUTH_NOT_YET_VALID);
    CU_ASSERT_STRING_EQUAL(pk_auth_http_message(PK_AUTH_NOT_YET_VALID), "invalid token");
    snprintf(p, sizeof(p), "{\"nbf\":%lld}", now + 3);
    CU_ASSERT_EQUAL(hmac_claims(p, NULL, NULL, 5, false, NULL), PK_AUTH_OK);
    snprintf(p, sizeof(p), "{\"nbf\":%lld,\"iat\":%lld}", now - 100, now - 100);
    CU_ASSERT_EQUAL(hmac_claims(p, NULL, NULL, 0, false, NULL), PK_AUTH_OK);
    /* No exp: accepted unless required. */
    CU_ASSERT_EQUAL(hmac_claims("{}", NULL, NULL, 0, false, &c), PK_AUTH_OK);
    CU_ASSERT_EQUAL(c.exp, 0);
    pk_claims_free(&c);
    CU_ASSERT_EQUAL(hmac_claims("{}", NULL, NULL, 0, true, NULL), PK_AUTH_NO_EXPIRY);
    /* Wrong types are malformed. */
    CU_ASSERT_EQUAL(hmac_claims("{\"exp\":\"99999999999\"}", NULL, NULL, 0, false, NULL),
                    PK_AUTH_MALFORMED);
    CU_ASSERT_EQUAL(hmac_claims("{\"nbf\":true}", NULL, NULL, 0, false, NULL), PK_AUTH_MALFORMED);
    CU_ASSERT_EQUAL(hmac_claims("{\"iat\":[1]}", NULL, NULL, 0, false, NULL), PK_AUTH_MALFORMED);
    CU_ASSERT_EQUAL(hmac_claims("{\"sub\":1}", NULL, NULL, 0, false, NULL), PK_AUTH_MALFORMED);
    /* Extreme dates neither overflow nor wrap around. */
    const char *expired[] = {"{\"exp\":-9223372036854775808}", "{\"exp\":-1e300}", "{\"exp\":0}",
                             "{\"exp\":-1}"};
    for (size_t i = 0; i < PK_ARRAY_LEN(expired); i++)
        CU_ASSERT_EQUAL(hmac_claims(expired[i], NULL, NULL, 5, false, NULL), PK_AUTH_EXPIRED);
    const char *future[] = {"{\"exp\":9223372036854775807}", "{\"exp\":1e300}",
                            "{\"exp\":99999999999999999999999}"};
    for (size_t i = 0; i < PK_ARRAY_LEN(future); i++) {
        CU_ASSERT_EQUAL(hmac_claims(future[i], NULL, NULL, 5, false, &c), PK_AUTH_OK);
        CU_ASSERT(c.exp > now + 1000000000LL);
        pk_claims_free(&c);
    }
    CU_ASSERT_EQUAL(hmac_claims("{\"nbf\":1e300}", NULL, NULL, 5, false, NULL),
                    PK_AUTH_NOT_YET_VALID);
    CU_ASSERT_EQUAL(hmac_claims("{\"nbf\":-1e300}", NULL, NULL, 5, false, NULL), PK_AUTH_OK);
}

static void test_audience_issuer(void)
{
    const char *ok[] = {"{\"aud\":\"piko\"}", "{\"aud\":[\"other\",\"piko\"]}",
                        "{\"aud\":[\"piko\"],\"iss\":\"me\"}"};
    for (size_t i = 0; i < PK_ARRAY_LEN(ok); i++)
        CU_ASSERT_EQUAL(hmac_claims(ok[i], "piko", NULL, 0, false, NULL), PK_AUTH_OK);
    const char *wrong[] = {"{\"aud\":\"other\"}", "{\"aud\":[\"other\"]}", "{\"aud\":[]}", "{}",
                           "{\"aud\":\"pikox\"}", "{\"aud\":null}"};
    for (size_t i = 0; i < PK_ARRAY_LEN(wrong); i++)
        CU_ASSERT_EQUAL(hmac_claims(wrong[i], "piko", NULL, 0, false, NULL),
                        PK_AUTH_WRONG_AUDIENCE);
    CU_ASSERT_EQUAL(hmac_claims("{\"aud\":[\"piko\",1]}", "piko", NULL, 0, false, NULL),
                    PK_AUTH_MALFORMED);
    CU_ASSERT_EQUAL(hmac_claims("{\"aud\":{\"piko\":1}}", "piko", NULL, 0, false, NULL),
                    PK_AUTH_MALFORMED);
    /* Not configured: not checked (but still typed). */
    CU_ASSERT_EQUAL(hmac_claims("{\"aud\":\"other\"}", NULL, NULL, 0, false, NULL), PK_AUTH_OK);

    CU_ASSERT_EQUAL(hmac_claims("{\"iss\":\"me\"}", NULL, "me", 0, false, NULL), PK_AUTH_OK);
    CU_ASSERT_EQUAL(hmac_claims("{\"iss\":\"you\"}", NULL, "me", 0, false, NULL),
                    PK_AUTH_WRONG_ISSUER);
    CU_ASSERT_EQUAL(hmac_claims("{\"iss\":\"me \"}", NULL, "me", 0, false, NULL),
                    PK_AUTH_WRONG_ISSUER);
    CU_ASSERT_EQUAL(hmac_claims("{}", NULL, "me", 0, false, NULL), PK_AUTH_WRONG_ISSUER);
    CU_ASSERT_EQUAL(hmac_claims("{\"iss\":\"me\\u0000x\"}", NULL, "me", 0, false, NULL),
                    PK_AUTH_MALFORMED);
    CU_ASSERT_EQUAL(hmac_claims("{\"iss\":1}", NULL, NULL, 0, false, NULL), PK_AUTH_MALFORMED);
    CU_ASSERT_EQUAL(hmac_claims("{\"aud\":\"piko\",\"iss\":\"you\"}", "piko", "me", 0, false, NULL),
                    PK_AUTH_WRONG_ISSUER);
}

static void test_endpoints_claim(void)
{
    struct pk_claims c, copy;

    CU_ASSERT_EQUAL(
        hmac_claims("{\"piko\":{\"endpoints\":[\"a\",\"b-2\"]}}", NULL, NULL, 0, false, &c),
        PK_AUTH_OK);
    CU_ASSERT_FALSE(c.all_endpoints);
    CU_ASSERT_EQUAL(c.n_endpoints, 2);
    CU_ASSERT_TRUE(pk_auth_allows(&c, "a"));
    CU_ASSERT_TRUE(pk_auth_allows(&c, "b-2"));
    CU_ASSERT_FALSE(pk_auth_allows(&c, "c"));
    CU_ASSERT_FALSE(pk_auth_allows(&c, "A"));
    CU_ASSERT_FALSE(pk_auth_allows(&c, "b"));
    CU_ASSERT_FALSE(pk_auth_allows(&c, NULL));
    pk_claims_copy(&copy, &c);
    pk_claims_free(&c);
    CU_ASSERT_TRUE(pk_auth_allows(&copy, "b-2"));
    CU_ASSERT_FALSE(pk_auth_allows(&copy, "c"));
    pk_claims_free(&copy);
    pk_claims_free(NULL);
    CU_ASSERT_FALSE(pk_auth_allows(NULL, "a"));
    CU_ASSERT_EQUAL(pk_auth_http_status(PK_AUTH_ENDPOINT_NOT_PERMITTED), 403);
    CU_ASSERT_STRING_EQUAL(pk_auth_http_message(PK_AUTH_ENDPOINT_NOT_PERMITTED),
                           "endpoint not permitted");

    /* No restriction: claim missing, piko without endpoints, null, or empty (Go Piko). */
    const char *all[] = {"{}", "{\"piko\":{}}", "{\"piko\":null}",
                         "{\"piko\":{\"endpoints\":null}}", "{\"piko\":{\"endpoints\":[]}}"};
    for (size_t i = 0; i < PK_ARRAY_LEN(all); i++) {
        CU_ASSERT_EQUAL(hmac_claims(all[i], NULL, NULL, 0, false, &c), PK_AUTH_OK);
        CU_ASSERT_TRUE(c.all_endpoints);
        CU_ASSERT_TRUE(pk_auth_allows(&c, "anything"));
        pk_claims_free(&c);
    }
    const char *bad[] = {"{\"piko\":\"a\"}", "{\"piko\":{\"endpoints\":\"a\"}}",
                         "{\"piko\":{\"endpoints\":[\"a\",1]}}", "{\"piko\":[\"a\"]}"};
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++)
        CU_ASSERT_EQUAL(hmac_claims(bad[i], NULL, NULL, 0, false, NULL), PK_AUTH_MALFORMED);
}

static void test_malformed_tokens(void)
{
    struct loop l;
    struct pk_auth_opts o;

    loop_init(&l);
    opts_init(&o);
    o.hmac_secret_key = SECRET;
    struct pk_auth *a = new_auth(&l, NULL, &o);
    char *good = sign(K.hmac, "HS256", "k", "{\"sub\":\"a\"}");
    EXPECT(a, good, PK_AUTH_OK);

    const char *plain[] = {"",         ".",       "..",           "abc",
                           "abc.def",  "a.b.c.d", "!!!.e30.AAAA", "eyJhbGciOiJIUzI1NiJ9..AAAA",
                           ".e30.AAAA"};
    for (size_t i = 0; i < PK_ARRAY_LEN(plain); i++)
        EXPECT(a, plain[i], PK_AUTH_MALFORMED);

    /* Four segments; padding; base64 (not url) characters; a space. */
    char *t = pk_xasprintf("%s.AAAA", good);
    EXPECT(a, t, PK_AUTH_MALFORMED);
    free(t);
    t = pk_xasprintf("%s=", good);
    EXPECT(a, t, PK_AUTH_MALFORMED);
    free(t);
    t = pk_xstrdup(good);
    strrchr(t, '.')[5] = '+';
    EXPECT(a, t, PK_AUTH_MALFORMED);
    strrchr(t, '.')[5] = ' ';
    EXPECT(a, t, PK_AUTH_MALFORMED);
    free(t);

    /* Non-zero trailing bits in the last character: cjose 0.6 decodes this to the same
     * signature (and verifies it); a token has one spelling here. */
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    t = pk_xstrdup(good);
    char *lastc = t + strlen(t) - 1;
    CU_ASSERT_EQUAL_FATAL(strlen(strrchr(t, '.') + 1) % 4, 3);
    *lastc = b64[(strchr(b64, *lastc) - b64) | 1];
    EXPECT(a, t, PK_AUTH_MALFORMED);
    free(t);

    /* Headers: not JSON, not an object, no alg, alg not a string, kid not a string, crit. */
    const char *headers[] = {"nope",
                             "[\"HS256\"]",
                             "{\"typ\":\"JWT\"}",
                             "{\"alg\":256}",
                             "{\"alg\":\"HS256\",\"kid\":7}",
                             "{\"alg\":\"HS256\"} x"};
    for (size_t i = 0; i < PK_ARRAY_LEN(headers); i++) {
        t = raw_token(headers[i], "{}", "AAAA");
        EXPECT(a, t, PK_AUTH_MALFORMED);
        free(t);
    }
    t = sign_ex(K.hmac, "HS256", NULL, "{}", "crit=[\"exp\"]");
    EXPECT(a, t, PK_AUTH_MALFORMED);
    CU_ASSERT_PTR_NOT_NULL(strstr(last_detail, "crit"));
    free(t);

    /* Correctly signed payloads that are not a JSON object. */
    const char *payloads[] = {"not json",   "[1,2]",       "\"s\"",           "{} x",
                              "{\"a\":1,}", "{\"a\":'x'}", "{\"a\":\"\xff\"}"};
    for (size_t i = 0; i < PK_ARRAY_LEN(payloads); i++) {
        t = sign(K.hmac, "HS256", NULL, payloads[i]);
        EXPECT(a, t, PK_AUTH_MALFORMED);
        free(t);
    }
    t = sign(K.hmac, "HS256", NULL, "{\"a\":1}\n ");
    EXPECT(a, t, PK_AUTH_OK);
    free(t);
    /* Deeper than the JSON depth bound. */
    char deep[512] = "{\"a\":";
    for (int i = 0; i < 100; i++)
        strcat(deep, "[");
    for (int i = 0; i < 100; i++)
        strcat(deep, "]");
    strcat(deep, "}");
    t = sign(K.hmac, "HS256", NULL, deep);
    EXPECT(a, t, PK_AUTH_MALFORMED);
    free(t);

    /* 1 MB: refused on its length, before any decoding. */
    size_t big = 1024 * 1024;
    char *huge = pk_xmalloc(big + 1);
    memset(huge, 'A', big);
    huge[10] = huge[big / 2] = '.';
    huge[big] = '\0';
    EXPECT(a, huge, PK_AUTH_MALFORMED);
    CU_ASSERT_PTR_NOT_NULL(strstr(last_detail, "over 16384 bytes"));
    free(huge);

    /* NULL token. */
    struct pk_claims c;
    CU_ASSERT_EQUAL(pk_auth_verify_now(a, NULL, 0, &c, NULL, 0), PK_AUTH_MISSING_TOKEN);
    CU_ASSERT(pk_auth_counters(a)->rejected[PK_AUTH_MALFORMED] >= 25);
    CU_ASSERT_EQUAL(pk_auth_counters(a)->rejected[PK_AUTH_MISSING_TOKEN], 1);
    free(good);
    pk_auth_del(a);

    /* A lower bound of ours. */
    opts_init(&o);
    o.hmac_secret_key = SECRET;
    o.max_token_len = 40;
    a = new_auth(&l, NULL, &o);
    t = sign(K.hmac, "HS256", NULL, "{}");
    EXPECT(a, t, PK_AUTH_MALFORMED);
    free(t);
    pk_auth_del(a);
    loop_free(&l);
}

static void test_bearer(void)
{
    const char *tok;
    size_t len;

    CU_ASSERT_EQUAL(pk_auth_bearer("Bearer xyz", "Bearer abc", &tok, &len), PK_AUTH_OK);
    CU_ASSERT_EQUAL(len, 3);
    CU_ASSERT_NSTRING_EQUAL(tok, "xyz", 3);
    CU_ASSERT_EQUAL(pk_auth_bearer(NULL, "bearer abc", &tok, &len), PK_AUTH_OK);
    CU_ASSERT_NSTRING_EQUAL(tok, "abc", len);
    CU_ASSERT_EQUAL(pk_auth_bearer("  BEARER \t a.b.c  ", NULL, &tok, &len), PK_AUTH_OK);
    CU_ASSERT_EQUAL(len, 5);
    CU_ASSERT_NSTRING_EQUAL(tok, "a.b.c", 5);
    /* A blank x-piko-authorization is absent; a non-bearer one still wins (Go Piko). */
    CU_ASSERT_EQUAL(pk_auth_bearer(" ", "Bearer abc", &tok, &len), PK_AUTH_OK);
    CU_ASSERT_NSTRING_EQUAL(tok, "abc", len);
    CU_ASSERT_EQUAL(pk_auth_bearer("Basic dXNlcjpwdw==", "Bearer abc", &tok, &len),
                    PK_AUTH_MISSING_TOKEN);
    const char *bad[] = {"",          "Bearer",     "Bearer ",  "Bearer  \t", "Bearerx abc",
                         "Basic abc", "Bearer a b", "Token abc"};
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        CU_ASSERT_EQUAL(pk_auth_bearer(NULL, bad[i], &tok, &len), PK_AUTH_MISSING_TOKEN);
        CU_ASSERT_PTR_NULL(tok);
        CU_ASSERT_EQUAL(len, 0);
    }
    CU_ASSERT_EQUAL(pk_auth_bearer(NULL, NULL, &tok, &len), PK_AUTH_MISSING_TOKEN);
    CU_ASSERT_EQUAL(pk_auth_http_status(PK_AUTH_MISSING_TOKEN), 401);
    CU_ASSERT_STRING_EQUAL(pk_auth_http_message(PK_AUTH_MISSING_TOKEN), "missing token");
    CU_ASSERT_STRING_EQUAL(pk_auth_http_message(PK_AUTH_BAD_SIGNATURE), "invalid token");
    CU_ASSERT_STRING_EQUAL(pk_auth_result_str(PK_AUTH_UNKNOWN_KID), "unknown kid");
    CU_ASSERT_EQUAL(pk_auth_http_status(PK_AUTH_OK), 200);
}

static void test_bad_config(void)
{
    struct loop l;
    struct pk_auth_opts o;
    char path[128];

    loop_init(&l);
    opts_init(&o);
    o.rsa_public_key = "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n";
    new_fails(&l, NULL, &o, "upstream.auth.rsa-public-key: not a PEM public key");
    o.rsa_public_key = "not even PEM";
    new_fails(&l, NULL, &o, "upstream.auth.rsa-public-key: not a PEM public key");
    o.rsa_public_key = K.ec256.pem;
    new_fails(&l, NULL, &o, "upstream.auth.rsa-public-key: not an RSA public key");
    o.rsa_public_key = K.rsa_private_pem;
    new_fails(&l, NULL, &o, "upstream.auth.rsa-public-key: a private key");
    opts_init(&o);
    o.ecdsa_public_key = K.rsa.pem;
    new_fails(&l, NULL, &o, "upstream.auth.ecdsa-public-key: not an ECDSA public key");
    o.ecdsa_public_key = K.k256.pem;
    new_fails(&l, NULL, &o, "upstream.auth.ecdsa-public-key: unsupported curve");
    o.ecdsa_public_key = "x";
    new_fails(&l, NULL, &o, "upstream.auth.ecdsa-public-key: not a PEM public key");

    opts_init(&o);
    new_fails(&l, NULL, &o, "upstream.auth: no key source");
    o.hmac_secret_key = "";
    new_fails(&l, NULL, &o, "upstream.auth: no key source");
    o.hmac_secret_key = SECRET;
    o.rsa_public_key = K.rsa.pem;
    new_fails(&l, NULL, &o, "more than one key source (hmac-secret-key, rsa-public-key)");
    o.rsa_public_key = NULL;
    o.jwks_endpoint = "https://example.com/jwks";
    new_fails(&l, NULL, &o, "more than one key source (hmac-secret-key, jwks.endpoint)");
    o.hmac_secret_key = NULL;
    new_fails(&l, NULL, &o, "upstream.auth.jwks.endpoint: an https JWKS needs an HTTP client");
    o.jwks_endpoint = "http://127.0.0.1:1/jwks";
    new_fails(&l, NULL, &o, "upstream.auth.jwks.endpoint: http:// is refused");
    o.jwks_endpoint = "ftp://example.com/jwks";
    new_fails(&l, NULL, &o, "upstream.auth.jwks.endpoint: unsupported scheme");
    snprintf(path, sizeof(path), "%s/missing.json", K.tmpdir);
    o.jwks_endpoint = path;
    new_fails(&l, NULL, &o, "upstream.auth.jwks.endpoint: cannot read");
    snprintf(path, sizeof(path), "%s/bad.json", K.tmpdir);
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("{\"keys\": oops", f);
    fclose(f);
    new_fails(&l, NULL, &o, "not a JSON object");
    f = fopen(path, "w");
    fputs("{\"kes\": []}", f);
    fclose(f);
    new_fails(&l, NULL, &o, "no \"keys\" array");

    opts_init(&o);
    o.hmac_secret_key = SECRET;
    o.leeway_s = PK_AUTH_MAX_LEEWAY_S + 1;
    new_fails(&l, NULL, &o, "upstream.auth: leeway");
    o.leeway_s = 0;
    o.prefix = NULL;
    o.hmac_secret_key = NULL;
    new_fails(&l, NULL, &o, "auth: no key source");
    CU_ASSERT_PTR_NULL(pk_auth_new(NULL, NULL, &o, NULL, 0));
    pk_auth_del(NULL);
    loop_free(&l);
}

/* ---- asynchronous verification ---- */

struct result {
    int called;
    enum pk_auth_result res;
    bool had_claims;
    struct pk_claims claims;
    char detail[160];
    /* What the callback does next. */
    struct pk_auth **free_it;
    struct pk_auth *verify_with;
    const char *verify_tok;
    struct result *next;
};

static void result_cb(enum pk_auth_result res, const struct pk_claims *claims, const char *detail,
                      void *arg)
{
    struct result *r = arg;
    r->called++;
    r->res = res;
    r->had_claims = claims != NULL;
    CU_ASSERT_EQUAL(claims != NULL, res == PK_AUTH_OK);
    if (claims)
        pk_claims_copy(&r->claims, claims);
    CU_ASSERT_PTR_NOT_NULL_FATAL(detail);
    snprintf(r->detail, sizeof(r->detail), "%s", detail);
    if (r->verify_with)
        CU_ASSERT_PTR_NOT_NULL(pk_auth_verify(r->verify_with, r->verify_tok, strlen(r->verify_tok),
                                              result_cb, r->next));
    if (r->free_it) {
        pk_auth_del(*r->free_it);
        *r->free_it = NULL;
    }
}

static struct pk_auth_req *verify(struct pk_auth *a, const char *tok, struct result *r)
{
    memset(r, 0, sizeof(*r));
    struct pk_auth_req *req = pk_auth_verify(a, tok, strlen(tok), result_cb, r);
    CU_ASSERT_PTR_NOT_NULL(req);
    return req;
}

static void test_async_delivery(void)
{
    struct loop l;
    struct pk_auth_opts o;
    struct result ok, bad, cancelled, chained, later;
    char payload[96];

    loop_init(&l);
    opts_init(&o);
    o.hmac_secret_key = SECRET;
    struct pk_auth *a = new_auth(&l, NULL, &o);
    long long exp = now_s() + 60;
    snprintf(payload, sizeof(payload), "{\"piko\":{\"endpoints\":[\"e1\"]},\"exp\":%lld}", exp);
    char *t = sign(K.hmac, "HS256", NULL, payload);
    verify(a, t, &ok);
    /* The token may change once pk_auth_verify returned. */
    t[5] ^= 1;
    verify(a, "x.y.z", &bad);
    struct pk_auth_req *rc = verify(a, "a.b.c", &cancelled);
    CU_ASSERT_EQUAL(ok.called + bad.called + cancelled.called, 0); /* never from inside */
    pk_auth_cancel(rc);
    pk_auth_cancel(NULL);
    loop_until(&l, &bad.called, 1);
    loop_until(&l, &ok.called, 1);
    CU_ASSERT_EQUAL(ok.res, PK_AUTH_OK);
    CU_ASSERT_TRUE(ok.had_claims);
    CU_ASSERT_TRUE(pk_auth_allows(&ok.claims, "e1"));
    CU_ASSERT_FALSE(pk_auth_allows(&ok.claims, "e2"));
    CU_ASSERT_EQUAL(ok.claims.exp, exp);
    pk_claims_free(&ok.claims);
    CU_ASSERT_EQUAL(bad.res, PK_AUTH_MALFORMED);
    CU_ASSERT_FALSE(bad.had_claims);
    CU_ASSERT_STRING_NOT_EQUAL(bad.detail, "");
    loop_settle(&l, 50);
    CU_ASSERT_EQUAL(cancelled.called, 0);
    CU_ASSERT_EQUAL(ok.called, 1);
    /* Cancelled requests are not counted. */
    CU_ASSERT_EQUAL(pk_auth_counters(a)->accepted, 1);
    CU_ASSERT_EQUAL(pk_auth_counters(a)->rejected[PK_AUTH_MALFORMED], 1);

    /* A callback that verifies again, then one that frees the verifier with a request
     * still queued. */
    t[5] ^= 1;
    verify(a, t, &chained);
    chained.verify_with = a;
    chained.verify_tok = t;
    chained.next = &later;
    memset(&later, 0, sizeof(later));
    loop_until(&l, &later.called, 1);
    CU_ASSERT_EQUAL(chained.res, PK_AUTH_OK);
    CU_ASSERT_EQUAL(later.res, PK_AUTH_OK);
    pk_claims_free(&chained.claims);
    pk_claims_free(&later.claims);

    struct result first, second;
    verify(a, t, &first);
    verify(a, t, &second);
    first.free_it = second.free_it = &a;
    loop_settle(&l, 50);
    CU_ASSERT_EQUAL(first.called + second.called, 1); /* the other was cancelled by the free */
    CU_ASSERT_PTR_NULL(a);
    pk_claims_free(&first.claims);
    pk_claims_free(&second.claims);
    free(t);

    /* Freed with requests queued: no callbacks. */
    a = new_auth(&l, NULL, &o);
    verify(a, "a.b.c", &first);
    pk_auth_del(a);
    loop_settle(&l, 50);
    CU_ASSERT_EQUAL(first.called, 0);
    CU_ASSERT_PTR_NULL(pk_auth_verify(NULL, "a", 1, result_cb, &first));
    loop_free(&l);
}

/* ---- JWKS ---- */

/* {"keys":[...]} with the public part of each jwk, given kid and, when not NULL, alg. */
static char *jwks_doc(size_t n, const cjose_jwk_t *const *jwks, const char *const *kids,
                      const char *const *algs)
{
    struct json_object *root = json_object_new_object(), *keys = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        char *pub = cjose_jwk_to_json(jwks[i], false, NULL);
        struct json_object *k = json_tokener_parse(pub);
        free(pub);
        CU_ASSERT_PTR_NOT_NULL_FATAL(k);
        json_object_object_del(k, "kid");
        if (kids[i])
            json_object_object_add(k, "kid", json_object_new_string(kids[i]));
        if (algs && algs[i])
            json_object_object_add(k, "alg", json_object_new_string(algs[i]));
        json_object_array_add(keys, k);
    }
    json_object_object_add(root, "keys", keys);
    char *s = pk_xstrdup(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN));
    json_object_put(root);
    return s;
}

/* Replaces path atomically (a new inode), as key rotation tools do. */
static void write_file(const char *path, const char *text)
{
    char tmp[256];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    CU_ASSERT_FATAL(fclose(f) == 0);
    CU_ASSERT_FATAL(rename(tmp, path) == 0);
}

static void test_jwks_file_by_kid(void)
{
    struct loop l;
    struct pk_auth_opts o;
    char path[128], endpoint[160];
    const cjose_jwk_t *keys[] = {K.rsa.jwk, K.ec256.jwk};
    const char *kids[] = {"r1", "e1"};
    const char *algs[] = {"RS256", NULL};

    loop_init(&l);
    snprintf(path, sizeof(path), "%s/jwks-two.json", K.tmpdir);
    char *doc = jwks_doc(2, keys, kids, algs);
    /* Keys that are skipped: an encryption key, one without kid, an unknown kty. */
    char *extra = pk_xasprintf(
        "%.*s,{\"kty\":\"EC\",\"use\":\"enc\",\"kid\":\"enc\",\"crv\":\"P-256\",\"x\":\"AA\","
        "\"y\":\"AA\"},{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"},{\"kty\":\"OKP\",\"kid\":\"o\"}]}",
        (int)(strlen(doc) - 2), doc);
    write_file(path, extra);
    snprintf(endpoint, sizeof(endpoint), "file:%s", path);
    opts_init(&o);
    o.jwks_endpoint = endpoint;
    struct pk_auth *a = new_auth(&l, NULL, &o);
    CU_ASSERT_TRUE(pk_auth_ready(a));
    CU_ASSERT_EQUAL(pk_auth_counters(a)->jwks_keys, 2);
    CU_ASSERT_EQUAL(pk_auth_counters(a)->jwks_loads, 1);

    char *t = sign(K.rsa.jwk, "RS256", "r1", "{}");
    EXPECT(a, t, PK_AUTH_OK);
    free(t);
    t = sign(K.ec256.jwk, "ES256", "e1", "{}");
    EXPECT(a, t, PK_AUTH_OK);
    free(t);
    /* The JWK says RS256: RS384 and PS256 with the same key are refused. */
    t = sign(K.rsa.jwk, "RS384", "r1", "{}");
    EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
    free(t);
    t = sign(K.rsa.jwk, "PS256", "r1", "{}");
    EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
    free(t);
    /* A kid naming a key of another type. */
    t = sign(K.ec256.jwk, "ES256", "r1", "{}");
    EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
    free(t);
    cjose_jwk_t *pemkey =
        cjose_jwk_create_oct_spec((const uint8_t *)K.rsa.pem, strlen(K.rsa.pem), NULL);
    t = sign(pemkey, "HS256", "r1", "{}");
    EXPECT(a, t, PK_AUTH_ALG_NOT_ALLOWED);
    free(t);
    cjose_jwk_release(pemkey);
    /* The right kid, the wrong signer. */
    t = sign(K.rsa2.jwk, "RS256", "r1", "{}");
    EXPECT(a, t, PK_AUTH_BAD_SIGNATURE);
    free(t);
    /* Unknown kid, no kid, skipped keys. */
    const char *unknown[] = {"zz", "enc", "o", NULL};
    for (size_t i = 0; i < PK_ARRAY_LEN(unknown); i++) {
        t = sign(K.ec256.jwk, "ES256", unknown[i], "{}");
        EXPECT(a, t, PK_AUTH_UNKNOWN_KID);
        free(t);
    }
    CU_ASSERT_EQUAL(pk_auth_counters(a)->jwks_loads, 1); /* the file did not change */
    pk_auth_del(a);
    free(extra);
    free(doc);
    loop_free(&l);
}

static void test_jwks_file_rotation(void)
{
    struct loop l;
    struct pk_auth_opts o;
    char path[128];
    const char *kid1[] = {"r1"}, *kid2[] = {"r2"};

    loop_init(&l);
    snprintf(path, sizeof(path), "%s/jwks-rot.json", K.tmpdir);
    char *doc = jwks_doc(1, (const cjose_jwk_t *const[]){K.rsa.jwk}, kid1, NULL);
    write_file(path, doc);
    free(doc);
    opts_init(&o);
    o.jwks_endpoint = path;
    struct pk_auth *a = new_auth(&l, NULL, &o);
    char *t1 = sign(K.rsa.jwk, "RS256", "r1", "{}");
    char *t2 = sign(K.rsa2.jwk, "RS256", "r2", "{}");
    EXPECT(a, t1, PK_AUTH_OK);
    EXPECT(a, t2, PK_AUTH_UNKNOWN_KID);

    /* Rotated: the very next verification with the new kid works, without the loop. */
    doc = jwks_doc(1, (const cjose_jwk_t *const[]){K.rsa2.jwk}, kid2, NULL);
    write_file(path, doc);
    free(doc);
    EXPECT(a, t2, PK_AUTH_OK);
    EXPECT(a, t1, PK_AUTH_UNKNOWN_KID);
    CU_ASSERT_EQUAL(pk_auth_counters(a)->jwks_loads, 2);

    /* A broken rewrite keeps the keys in use. */
    write_file(path, "{broken");
    EXPECT(a, t1, PK_AUTH_UNKNOWN_KID);
    EXPECT(a, t2, PK_AUTH_OK);
    CU_ASSERT_EQUAL(pk_auth_counters(a)->jwks_load_failures, 1);
    free(t1);
    free(t2);
    pk_auth_del(a);
    loop_free(&l);
}

static void test_jwks_file_refresh_timer(void)
{
    struct loop l;
    struct pk_auth_opts o;
    char path[128];
    const cjose_jwk_t *keys[] = {K.rsa.jwk, K.rsa2.jwk};
    const char *kids[] = {"r1", "r2"};

    loop_init(&l);
    snprintf(path, sizeof(path), "%s/jwks-timer.json", K.tmpdir);
    char *doc = jwks_doc(1, keys, kids, NULL);
    write_file(path, doc);
    free(doc);
    opts_init(&o);
    o.jwks_endpoint = path;
    o.jwks_refresh_ms = 50;
    struct pk_auth *a = new_auth(&l, NULL, &o);
    const struct pk_auth_counters *cnt = pk_auth_counters(a);
    /* An unchanged file is not read again. */
    loop_settle(&l, 300);
    CU_ASSERT_EQUAL(cnt->jwks_loads, 1);
    /* A changed one is, by the timer alone. */
    doc = jwks_doc(2, keys, kids, NULL);
    write_file(path, doc);
    free(doc);
    loop_until_u64(&l, &cnt->jwks_loads, 2);
    CU_ASSERT_EQUAL(cnt->jwks_keys, 2);
    /* Deleted: the keys stay. */
    CU_ASSERT_FATAL(unlink(path) == 0);
    loop_settle(&l, 200);
    CU_ASSERT_EQUAL(cnt->jwks_keys, 2);
    char *t = sign(K.rsa2.jwk, "RS256", "r2", "{}");
    EXPECT(a, t, PK_AUTH_OK);
    free(t);
    pk_auth_del(a);
    loop_free(&l);
}

/* The JWKS server: GET /jwks answers body (500 when NULL). */
struct jwks_server {
    struct evhttp *http;
    uint16_t port;
    int hits;
    char *body;
};

static void jwks_handler(struct evhttp_request *req, void *arg)
{
    struct jwks_server *s = arg;
    struct evbuffer *b = evbuffer_new();
    s->hits++;
    if (s->body && strcmp(evhttp_request_get_uri(req), "/jwks") == 0) {
        evbuffer_add(b, s->body, strlen(s->body));
        evhttp_send_reply(req, 200, "OK", b);
    } else {
        evhttp_send_reply(req, 500, "Oops", b);
    }
    evbuffer_free(b);
}

static void jwks_server_start(struct jwks_server *s, struct event_base *base)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    memset(s, 0, sizeof(*s));
    s->http = evhttp_new(base);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s->http);
    evhttp_set_gencb(s->http, jwks_handler, s);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(s->http, "127.0.0.1", 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(bs);
    CU_ASSERT_FATAL(getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &len) ==
                    0);
    s->port = ntohs(sin.sin_port);
}

static void jwks_server_stop(struct jwks_server *s)
{
    evhttp_free(s->http);
    free(s->body);
}

static void test_jwks_http_unknown_kid_refetch(void)
{
    struct loop l;
    struct pk_auth_opts o;
    struct jwks_server srv;
    struct result first, rotated, unknown;
    char url[96];
    const char *kids[] = {"a", "b"};
    const cjose_jwk_t *keys[] = {K.rsa.jwk, K.ec256.jwk};

    loop_init(&l);
    jwks_server_start(&srv, l.base);
    srv.body = jwks_doc(1, keys, kids, NULL);
    struct pk_httpc *h = pk_httpc_new(l.base, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/jwks", (unsigned)srv.port);
    opts_init(&o);
    o.jwks_endpoint = url;
    o.jwks_allow_http = true;
    struct pk_auth *a = new_auth(&l, h, &o);
    CU_ASSERT_FALSE(pk_auth_ready(a));

    /* Before the first load: the verification waits for the fetch in flight. */
    char *ta = sign(K.rsa.jwk, "RS256", "a", "{\"sub\":\"first\"}");
    verify(a, ta, &first);
    loop_until(&l, &first.called, 1);
    CU_ASSERT_EQUAL(first.res, PK_AUTH_OK);
    CU_ASSERT_STRING_EQUAL(first.claims.sub, "first");
    pk_claims_free(&first.claims);
    CU_ASSERT_TRUE(pk_auth_ready(a));
    CU_ASSERT_EQUAL(srv.hits, 1);

    /* Key b appears on the server: a token with kid b makes the verifier refetch, and the
     * verification waits for that fetch. */
    free(srv.body);
    srv.body = jwks_doc(2, keys, kids, NULL);
    char *tb = sign(K.ec256.jwk, "ES256", "b", "{}");
    verify(a, tb, &rotated);
    CU_ASSERT_EQUAL(rotated.called, 0);
    loop_until(&l, &rotated.called, 1);
    CU_ASSERT_EQUAL(rotated.res, PK_AUTH_OK);
    pk_claims_free(&rotated.claims);
    CU_ASSERT_EQUAL(srv.hits, 2);

    /* Another unknown kid within the refetch interval: refused without a fetch. */
    char *tc = sign(K.ec256.jwk, "ES256", "c", "{}");
    verify(a, tc, &unknown);
    loop_until(&l, &unknown.called, 1);
    CU_ASSERT_EQUAL(unknown.res, PK_AUTH_UNKNOWN_KID);
    loop_settle(&l, 100);
    CU_ASSERT_EQUAL(srv.hits, 2);
    const struct pk_auth_counters *cnt = pk_auth_counters(a);
    CU_ASSERT_EQUAL(cnt->accepted, 2);
    CU_ASSERT_EQUAL(cnt->rejected[PK_AUTH_UNKNOWN_KID], 1);
    CU_ASSERT_EQUAL(cnt->jwks_loads, 2);
    CU_ASSERT_EQUAL(cnt->jwks_keys, 2);
    free(ta);
    free(tb);
    free(tc);
    pk_auth_del(a);
    pk_httpc_del(h);
    jwks_server_stop(&srv);
    loop_free(&l);
}

static void test_jwks_http_refresh_and_verify_now(void)
{
    struct loop l;
    struct pk_auth_opts o;
    struct jwks_server srv;
    char url[96];
    const char *kids[] = {"a"}, *kids2[] = {"z"};

    loop_init(&l);
    jwks_server_start(&srv, l.base);
    srv.body = jwks_doc(1, (const cjose_jwk_t *const[]){K.ec384.jwk}, kids, NULL);
    struct pk_httpc *h = pk_httpc_new(l.base, 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/jwks", (unsigned)srv.port);
    opts_init(&o);
    o.jwks_endpoint = url;
    o.jwks_allow_http = true;
    o.jwks_refresh_ms = 200;
    struct pk_auth *a = new_auth(&l, h, &o);
    char *t = sign(K.ec384.jwk, "ES384", "a", "{}");
    struct pk_claims c;

    /* The synchronous form says PENDING while the fetch runs, then answers. */
    CU_ASSERT_EQUAL(pk_auth_verify_now(a, t, strlen(t), &c, NULL, 0), PK_AUTH_PENDING);
    CU_ASSERT_EQUAL(pk_auth_counters(a)->rejected[PK_AUTH_PENDING], 0);
    loop_until_u64(&l, &pk_auth_counters(a)->jwks_loads, 1);
    CU_ASSERT_TRUE(pk_auth_ready(a));
    CU_ASSERT_EQUAL(pk_auth_verify_now(a, t, strlen(t), &c, NULL, 0), PK_AUTH_OK);
    pk_claims_free(&c);

    /* The periodic refresh replaces the keys: "a" goes away. Its token then starts one
     * refetch (PENDING), and is refused once that fetch is done, without another. */
    free(srv.body);
    srv.body = jwks_doc(1, (const cjose_jwk_t *const[]){K.ec384.jwk}, kids2, NULL);
    loop_until_u64(&l, &pk_auth_counters(a)->jwks_loads, 2);
    CU_ASSERT_EQUAL(srv.hits, 2);
    EXPECT(a, t, PK_AUTH_PENDING);
    CU_ASSERT_STRING_EQUAL(last_detail, "waiting for a JWKS fetch");
    loop_until_u64(&l, &pk_auth_counters(a)->jwks_loads, 3);
    CU_ASSERT_EQUAL(srv.hits, 3);
    EXPECT(a, t, PK_AUTH_UNKNOWN_KID);
    CU_ASSERT_EQUAL(srv.hits, 3);

    /* A refresh that fails keeps the keys. */
    free(srv.body);
    srv.body = NULL;
    loop_until_u64(&l, &pk_auth_counters(a)->jwks_load_failures, 1);
    CU_ASSERT_EQUAL(srv.hits, 4);
    CU_ASSERT_EQUAL(pk_auth_counters(a)->jwks_keys, 1);
    char *tz = sign(K.ec384.jwk, "ES384", "z", "{}");
    EXPECT(a, tz, PK_AUTH_OK);
    free(tz);
    free(t);
    pk_auth_del(a);
    pk_httpc_del(h);
    jwks_server_stop(&srv);
    loop_free(&l);
}

static void test_jwks_http_down_and_cancel(void)
{
    struct loop l;
    struct pk_auth_opts o;
    struct jwks_server srv;
    struct result waiting, again, cancelled, kept;
    char url[96];

    loop_init(&l);
    jwks_server_start(&srv, l.base); /* body NULL: every fetch gets a 500 */
    struct pk_httpc *h = pk_httpc_new(l.base, 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/jwks", (unsigned)srv.port);
    opts_init(&o);
    o.jwks_endpoint = url;
    o.jwks_allow_http = true;
    struct pk_auth *a = new_auth(&l, h, &o);
    char *t = sign(K.rsa.jwk, "RS256", "a", "{}");

    verify(a, t, &waiting);
    loop_until(&l, &waiting.called, 1);
    CU_ASSERT_EQUAL(waiting.res, PK_AUTH_KEYS_NOT_LOADED);
    CU_ASSERT_EQUAL(srv.hits, 1);
    CU_ASSERT_FALSE(pk_auth_ready(a));
    /* Right after a failed fetch: refused at once, no new fetch. */
    verify(a, t, &again);
    loop_until(&l, &again.called, 1);
    CU_ASSERT_EQUAL(again.res, PK_AUTH_KEYS_NOT_LOADED);
    CU_ASSERT_EQUAL(srv.hits, 1);
    CU_ASSERT_EQUAL(pk_auth_counters(a)->jwks_load_failures, 1);
    pk_auth_del(a);

    /* Cancelled while waiting for the first fetch; the other waiting one is answered. */
    srv.body = jwks_doc(1, (const cjose_jwk_t *const[]){K.rsa.jwk}, (const char *[]){"a"}, NULL);
    a = new_auth(&l, h, &o);
    struct pk_auth_req *rc = verify(a, t, &cancelled);
    verify(a, t, &kept);
    pk_auth_cancel(rc);
    loop_until(&l, &kept.called, 1);
    CU_ASSERT_EQUAL(kept.res, PK_AUTH_OK);
    pk_claims_free(&kept.claims);
    loop_settle(&l, 50);
    CU_ASSERT_EQUAL(cancelled.called, 0);
    pk_auth_del(a);

    /* Freed while a verification waits for the fetch: no callback, the fetch is dropped. */
    a = new_auth(&l, h, &o);
    verify(a, t, &cancelled);
    pk_auth_del(a);
    loop_settle(&l, 100);
    CU_ASSERT_EQUAL(cancelled.called, 0);
    CU_ASSERT_EQUAL(pk_httpc_inflight(h), 0);
    free(t);
    pk_httpc_del(h);
    jwks_server_stop(&srv);
    loop_free(&l);
}

void pk_test_register_auth(void)
{
    CU_pSuite s = CU_add_suite("auth", suite_init, suite_clean);

    CU_add_test(s, "hmac_valid", test_hmac_valid);
    CU_add_test(s, "rsa_valid", test_rsa_valid);
    CU_add_test(s, "ecdsa_valid", test_ecdsa_valid);
    CU_add_test(s, "bad_signatures", test_bad_signatures);
    CU_add_test(s, "alg_none_refused", test_alg_none_refused);
    CU_add_test(s, "alg_confusion", test_alg_confusion);
    CU_add_test(s, "duplicate_header_names", test_duplicate_header_names);
    CU_add_test(s, "time_claims", test_time_claims);
    CU_add_test(s, "audience_issuer", test_audience_issuer);
    CU_add_test(s, "endpoints_claim", test_endpoints_claim);
    CU_add_test(s, "malformed_tokens", test_malformed_tokens);
    CU_add_test(s, "bearer", test_bearer);
    CU_add_test(s, "bad_config", test_bad_config);
    CU_add_test(s, "async_delivery", test_async_delivery);
    CU_add_test(s, "jwks_file_by_kid", test_jwks_file_by_kid);
    CU_add_test(s, "jwks_file_rotation", test_jwks_file_rotation);
    CU_add_test(s, "jwks_file_refresh_timer", test_jwks_file_refresh_timer);
    CU_add_test(s, "jwks_http_unknown_kid_refetch", test_jwks_http_unknown_kid_refetch);
    CU_add_test(s, "jwks_http_refresh_and_verify_now", test_jwks_http_refresh_and_verify_now);
    CU_add_test(s, "jwks_http_down_and_cancel", test_jwks_http_down_and_cancel);
}
