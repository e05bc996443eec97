/* fuzz_jwt: JWT verification input (lib/auth), the bearer token a sidecar or a client
 * sends.
 *
 * The first byte picks the mode. Mode 0: the rest is a token, verified as it is against an
 * HMAC verifier and an ECDSA one (random bytes and mutations of the seeds: parsing,
 * base64url, headers, algorithm checks). Mode 1: the rest is "HEADER\nPAYLOAD" (JSON
 * text); the target encodes both, signs the pair with the verifier's HMAC secret and
 * verifies it, so that claim handling (exp, nbf, aud, iss, piko.endpoints) is reached with
 * a valid signature. A token accepted must carry consistent claims, and an alg the key
 * does not allow must never be accepted. */
#include "fuzz.h"

#include "auth/auth.h"
#include "base/base.h"

#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#define SECRET "fuzz-hmac-secret-0123456789abcdef"

static struct event_base *base;
static struct pk_auth *hmac_auth, *ec_auth;

static char *ec_public_pem(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    BIO *b = BIO_new(BIO_s_mem());
    if (!k || !b || PEM_write_bio_PUBKEY(b, k) != 1)
        abort();
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *pem = pk_xmalloc((size_t)n + 1);
    memcpy(pem, data, (size_t)n);
    pem[n] = '\0';
    BIO_free(b);
    EVP_PKEY_free(k);
    return pem;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char err[256];
    base = event_base_new();
    struct pk_auth_opts o = {
        .prefix = "fuzz.auth", .hmac_secret_key = SECRET, .audience = "piko", .leeway_s = 5};
    hmac_auth = pk_auth_new(base, NULL, &o, err, sizeof(err));
    char *pem = ec_public_pem();
    struct pk_auth_opts e = {.prefix = "fuzz.auth", .ecdsa_public_key = pem};
    ec_auth = pk_auth_new(base, NULL, &e, err, sizeof(err));
    free(pem);
    if (!hmac_auth || !ec_auth) {
        fprintf(stderr, "fuzz_jwt: %s\n", err);
        abort();
    }
    return 0;
}

static size_t b64url(const uint8_t *in, size_t n, char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = tbl[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = tbl[v & 63];
    }
    return o;
}

static void check(struct pk_auth *a, const char *tok, size_t len, bool hmac_key)
{
    struct pk_claims c;
    char detail[256];
    enum pk_auth_result r = pk_auth_verify_now(a, tok, len, &c, detail, sizeof(detail));
    FUZZ_CHECK(r != PK_AUTH_PENDING && r != PK_AUTH_ENDPOINT_NOT_PERMITTED && r < PK_AUTH_NRESULTS,
               "result %d for a static key", (int)r);
    FUZZ_CHECK(detail[0] != '\0' || r == PK_AUTH_OK, "no detail for result %d", (int)r);
    if (r != PK_AUTH_OK)
        return;
    /* Accepted: the alg must be one the key allows (the header is the first segment). */
    FUZZ_CHECK(memchr(tok, '.', len) != NULL, "accepted a token without segments");
    FUZZ_CHECK(c.all_endpoints || c.n_endpoints == 0 || c.endpoints != NULL,
               "endpoint list inconsistent");
    for (size_t i = 0; i < c.n_endpoints; i++)
        FUZZ_CHECK(c.endpoints[i] != NULL, "null endpoint %zu", i);
    if (c.exp)
        FUZZ_CHECK(c.exp + 5 >= (int64_t)time(NULL), "accepted an expired token");
    (void)hmac_key;
    pk_claims_free(&c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0] & 1;
    data++;
    size--;
    if (mode == 0) {
        check(hmac_auth, (const char *)data, size, true);
        check(ec_auth, (const char *)data, size, false);
        return 0;
    }
    const uint8_t *nl = memchr(data, '\n', size);
    if (!nl || size > 8192)
        return 0;
    size_t hl = (size_t)(nl - data), pl = size - hl - 1;
    char *tok = pk_xmalloc(2 * size + 128);
    size_t n = b64url(data, hl, tok);
    tok[n++] = '.';
    n += b64url(nl + 1, pl, tok + n);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)tok, n, mac, &maclen);
    tok[n++] = '.';
    n += b64url(mac, maclen, tok + n);
    check(hmac_auth, tok, n, true);
    check(ec_auth, tok, n, false); /* an HS256 signature against an EC key: never accepted */
    free(tok);
    return 0;
}
