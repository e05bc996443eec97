/* Unit tests for lib/server/portauth.c (the verifiers of --<port>.auth.*, the bearer token
 * of a request) and lib/sidecar/token.c (the tokens the sidecar sends).
 *
 * The server side runs on a bare struct pk_server holding only what pk_server_auth_init
 * reads (base, cfg); verifications are driven by the loop until their callback came. Keys
 * are generated with OpenSSL and written as PEM, to files under a temporary directory. */
#include "base/base.h"
#include "server/server_int.h"
#include "sidecar/sidecar_int.h"

#include <CUnit/CUnit.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void pk_test_register_portauth(void);

static char tmpdir[64];

static int suite_init(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/pk-portauth-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int suite_clean(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static char *path_of(const char *name)
{
    return pk_xasprintf("%s/%s", tmpdir, name);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CU_ASSERT_FATAL(f != NULL);
    fputs(text, f);
    fclose(f);
}

/* The PEM public key of a fresh P-256 key (free it). */
static char *ec_public_pem(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    CU_ASSERT_FATAL(k != NULL);
    BIO *b = BIO_new(BIO_s_mem());
    CU_ASSERT_FATAL(PEM_write_bio_PUBKEY(b, k) == 1);
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *pem = pk_xstrndup(data, (size_t)n);
    BIO_free(b);
    EVP_PKEY_free(k);
    return pem;
}

struct fixture {
    struct event_base *base;
    struct pk_server_config cfg;
    struct pk_server srv;
    char err[512];
};

static void fx_init(struct fixture *fx)
{
    memset(fx, 0, sizeof(*fx));
    fx->base = event_base_new();
    fx->srv.loop.base = fx->base;
    fx->srv.node.cfg = &fx->cfg;
}

static int fx_auth(struct fixture *fx)
{
    return pk_server_auth_init(&fx->srv, fx->err, sizeof(fx->err));
}

static void fx_free(struct fixture *fx)
{
    pk_server_auth_free(&fx->srv);
    event_base_free(fx->base);
}

static void test_ports_open_by_default(void)
{
    struct fixture fx;
    fx_init(&fx);
    CU_ASSERT_EQUAL(fx_auth(&fx), 0);
    CU_ASSERT_PTR_NULL(fx.srv.node.upstream_auth);
    CU_ASSERT_PTR_NULL(fx.srv.node.proxy_auth);
    CU_ASSERT_PTR_NULL(fx.srv.node.admin_auth);
    fx_free(&fx);
}

static void test_pem_as_text_and_as_path(void)
{
    char *pem = ec_public_pem(), *path = path_of("ec.pub.pem");
    write_file(path, pem);
    struct fixture fx;
    fx_init(&fx);
    fx.cfg.upstream_auth.ecdsa_public_key = pem;
    fx.cfg.admin_auth.ecdsa_public_key = path;
    CU_ASSERT_EQUAL(fx_auth(&fx), 0);
    CU_ASSERT_PTR_NOT_NULL(fx.srv.node.upstream_auth);
    CU_ASSERT_PTR_NOT_NULL(fx.srv.node.admin_auth);
    CU_ASSERT_PTR_NULL(fx.srv.node.proxy_auth);
    fx_free(&fx);
    free(pem);
    free(path);
}

static void test_bad_keys_name_the_option(void)
{
    char *pem = ec_public_pem(), *path = path_of("ec2.pub.pem");
    write_file(path, pem);
    static const struct {
        int port; /* 0 upstream, 1 proxy, 2 admin */
        const char *field;
        const char *value; /* "@" : the EC key file */
        const char *want;
    } cases[] = {
        {0, "rsa", "/nonexistent/key.pem",
         "upstream.auth.rsa-public-key: not PEM text (-----BEGIN ...) and cannot read "
         "'/nonexistent/key.pem'"},
        {1, "rsa", "@", "proxy.auth.rsa-public-key:"},
        {2, "ecdsa", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
         "admin.auth.ecdsa-public-key:"},
        {1, "audience", "x", "proxy.auth: no key source"},
        {0, "jwks", "/nonexistent/jwks.json", "upstream.auth.jwks.endpoint:"},
    };
    for (size_t i = 0; i < PK_ARRAY_LEN(cases); i++) {
        struct fixture fx;
        fx_init(&fx);
        struct pk_port_auth_config *c = cases[i].port == 0   ? &fx.cfg.upstream_auth
                                        : cases[i].port == 1 ? &fx.cfg.proxy_auth
                                                             : &fx.cfg.admin_auth;
        char *v = (char *)(strcmp(cases[i].value, "@") == 0 ? path : cases[i].value);
        if (strcmp(cases[i].field, "rsa") == 0)
            c->rsa_public_key = v;
        else if (strcmp(cases[i].field, "ecdsa") == 0)
            c->ecdsa_public_key = v;
        else if (strcmp(cases[i].field, "audience") == 0)
            c->audience = v;
        else
            c->jwks_endpoint = v;
        CU_ASSERT_EQUAL(fx_auth(&fx), PK_ERR_INVALID);
        if (!strstr(fx.err, cases[i].want))
            fprintf(stderr, "\ncase %zu: got '%s', want '%s'\n", i, fx.err, cases[i].want);
        CU_ASSERT_PTR_NOT_NULL(strstr(fx.err, cases[i].want));
        fx_free(&fx);
    }
    free(pem);
    free(path);
}

struct outcome {
    bool done;
    enum pk_auth_result res;
};

static void verified(enum pk_auth_result res, const struct pk_claims *claims, const char *detail,
                     void *arg)
{
    struct outcome *o = arg;
    PK_UNUSED(claims);
    PK_UNUSED(detail);
    o->done = true;
    o->res = res;
}

/* Verifies the bearer token of fields (name, value pairs) with the proxy port's verifier. */
static enum pk_auth_result verify(struct fixture *fx, const char *const *fields, size_t n,
                                  bool *from_authorization)
{
    struct pk_hdrs h;
    struct outcome o = {false, PK_AUTH_NRESULTS};
    pk_hdrs_init(&h);
    for (size_t i = 0; i + 1 < n; i += 2)
        pk_hdrs_add_str(&h, fields[i], fields[i + 1]);
    CU_ASSERT_PTR_NOT_NULL(
        pk_port_auth_verify(fx->srv.node.proxy_auth, &h, from_authorization, verified, &o));
    pk_hdrs_free(&h); /* the token is copied when the verification must wait */
    for (int i = 0; i < 100 && !o.done; i++)
        event_base_loop(fx->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    CU_ASSERT(o.done);
    return o.res;
}

static void test_bearer_fields(void)
{
    /* HS256 {"sub":"t"} with the secret "0123456789abcdef0123456789abcdef". */
    static const char tok[] = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0In0."
                              "IE9CyX6o3QtMtubjMoGg0fpxxccBwgt_A-y3zmxUL0s";
    struct fixture fx;
    fx_init(&fx);
    fx.cfg.proxy_auth.hmac_secret_key = "0123456789abcdef0123456789abcdef";
    CU_ASSERT_FATAL(fx_auth(&fx) == 0);
    bool from_az = true;

    const char *none[] = {"accept", "*/*"};
    CU_ASSERT_EQUAL(verify(&fx, none, 2, &from_az), PK_AUTH_MISSING_TOKEN);
    CU_ASSERT(!from_az);

    const char *az[] = {"authorization", tok};
    CU_ASSERT_EQUAL(verify(&fx, az, 2, &from_az), PK_AUTH_OK);
    CU_ASSERT(from_az);

    const char *x[] = {"x-piko-authorization", tok, "authorization", "Basic YTpi"};
    CU_ASSERT_EQUAL(verify(&fx, x, 4, &from_az), PK_AUTH_OK);
    CU_ASSERT(!from_az);

    /* x-piko-authorization wins even without a bearer token in it. */
    const char *xbad[] = {"x-piko-authorization", "Basic YTpi", "authorization", tok};
    CU_ASSERT_EQUAL(verify(&fx, xbad, 4, &from_az), PK_AUTH_MISSING_TOKEN);
    CU_ASSERT(!from_az);

    const char *basic[] = {"authorization", "Basic YTpi"};
    CU_ASSERT_EQUAL(verify(&fx, basic, 2, &from_az), PK_AUTH_MISSING_TOKEN);

    const char *forged[] = {"authorization", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ0In0."};
    CU_ASSERT_EQUAL(verify(&fx, forged, 2, &from_az), PK_AUTH_ALG_NOT_ALLOWED);
    fx_free(&fx);
}

/* ---- sidecar tokens ------------------------------------------------------------------- */

static void test_token_config_check(void)
{
    char err[256];
    CU_ASSERT_EQUAL(pk_token_config_check(NULL, NULL, "connect.token", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(pk_token_config_check("a.b.c", NULL, "connect.token", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(pk_token_config_check(" a.b.c\n", "", "connect.token", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(pk_token_config_check("a", "/f", "connect.token", err, sizeof(err)),
                    PK_ERR_INVALID);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "connect.token and connect.token-file"));
    const char *bad[] = {"two words", "a\r\nx-evil: 1", "tab\there", "caf\xc3\xa9", "   "};
    for (size_t i = 0; i < PK_ARRAY_LEN(bad); i++) {
        CU_ASSERT_EQUAL(pk_token_config_check(bad[i], NULL, "forward.token", err, sizeof(err)),
                        PK_ERR_INVALID);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "forward.token: not a token"));
    }
}

static void test_token_get(void)
{
    char err[512], *tok = (char *)"untouched";
    CU_ASSERT_EQUAL(pk_token_get(NULL, NULL, &tok, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NULL(tok);
    CU_ASSERT_EQUAL(pk_token_get(" inline.tok ", NULL, &tok, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(tok, "inline.tok");
    free(tok);

    char *path = path_of("token");
    CU_ASSERT_EQUAL(pk_token_get(NULL, path, &tok, err, sizeof(err)), PK_ERR_IO);
    CU_ASSERT_PTR_NULL(tok);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "No such file"));
    write_file(path, "\n  file.tok.v1\r\n\n");
    CU_ASSERT_EQUAL(pk_token_get(NULL, path, &tok, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(tok, "file.tok.v1");
    free(tok);
    write_file(path, "file.tok.v2"); /* read again: refreshed tokens are picked up */
    CU_ASSERT_EQUAL(pk_token_get(NULL, path, &tok, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(tok, "file.tok.v2");
    free(tok);
    write_file(path, " \n");
    CU_ASSERT_EQUAL(pk_token_get(NULL, path, &tok, err, sizeof(err)), PK_ERR_IO);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "does not hold a token (empty)"));
    write_file(path, "one\nx-injected: yes\n");
    CU_ASSERT_EQUAL(pk_token_get(NULL, path, &tok, err, sizeof(err)), PK_ERR_IO);
    CU_ASSERT_PTR_NULL(tok);
    free(path);

    /* A FIFO must not block the loop; a directory is not a token file either. */
    char *fifo = path_of("fifo");
    CU_ASSERT_FATAL(mkfifo(fifo, 0600) == 0);
    CU_ASSERT_EQUAL(pk_token_get(NULL, fifo, &tok, err, sizeof(err)), PK_ERR_IO);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "not a regular file"));
    CU_ASSERT_EQUAL(pk_token_get(NULL, tmpdir, &tok, err, sizeof(err)), PK_ERR_IO);
    free(fifo);
}

static void test_error_message(void)
{
    char buf[256];
    const char *json = "{\"error\":\"expired token\"}\n";
    CU_ASSERT_STRING_EQUAL(pk_error_message(401, json, strlen(json), buf, sizeof(buf)),
                           "status 401: expired token");
    const char *text = "upstream\r\nbroke";
    CU_ASSERT_STRING_EQUAL(pk_error_message(502, text, strlen(text), buf, sizeof(buf)),
                           "status 502 Bad Gateway (an answer that is not Piko's)");
    const char *nested = "{\"error\":{\"x\":1}}";
    CU_ASSERT_STRING_EQUAL(pk_error_message(400, nested, strlen(nested), buf, sizeof(buf)),
                           "status 400 Bad Request (an answer that is not Piko's)");
    const char *ctl = "{\"error\":\"a\\nb\"}";
    CU_ASSERT_STRING_EQUAL(pk_error_message(403, ctl, strlen(ctl), buf, sizeof(buf)),
                           "status 403: a b");
    CU_ASSERT_STRING_EQUAL(pk_error_message(503, "", 0, buf, sizeof(buf)),
                           "status 503 Service Unavailable");
}

/* The admin port's ?forward= (statusfwd.c): the node to ask and the rest of the query. */
static void test_forward_split(void)
{
    char node[16], *rest;
    CU_ASSERT_EQUAL(pk_status_forward_split(NULL, node, sizeof(node), &rest), 0);
    CU_ASSERT_PTR_NULL(rest);
    CU_ASSERT_EQUAL(pk_status_forward_split("a=1&b", node, sizeof(node), &rest), 0);
    CU_ASSERT_PTR_NULL(rest);
    CU_ASSERT_EQUAL(pk_status_forward_split("forward=n2", node, sizeof(node), &rest), 1);
    CU_ASSERT_STRING_EQUAL(node, "n2");
    CU_ASSERT_PTR_NULL(rest);
    CU_ASSERT_EQUAL(
        pk_status_forward_split("a=1&forward=n-3&&b=2&forward=x", node, sizeof(node), &rest), 1);
    CU_ASSERT_STRING_EQUAL(node, "n-3");
    CU_ASSERT_STRING_EQUAL(rest, "a=1&b=2&forward=x"); /* the first one counts */
    free(rest);
    CU_ASSERT_EQUAL(pk_status_forward_split("forwarded=1&forward", node, sizeof(node), &rest), 0);
    CU_ASSERT_PTR_NULL(rest);
    CU_ASSERT_EQUAL(pk_status_forward_split("forward=&a", node, sizeof(node), &rest),
                    PK_ERR_INVALID);
    CU_ASSERT_STRING_EQUAL(rest, "a");
    free(rest);
    CU_ASSERT_EQUAL(pk_status_forward_split("forward=0123456789abcdef", node, sizeof(node), &rest),
                    PK_ERR_INVALID);
    CU_ASSERT_PTR_NULL(rest);
}

void pk_test_register_portauth(void)
{
    CU_pSuite s = CU_add_suite("portauth", suite_init, suite_clean);
    CU_add_test(s, "ports_open_by_default", test_ports_open_by_default);
    CU_add_test(s, "pem_as_text_and_as_path", test_pem_as_text_and_as_path);
    CU_add_test(s, "bad_keys_name_the_option", test_bad_keys_name_the_option);
    CU_add_test(s, "bearer_fields", test_bearer_fields);
    CU_add_test(s, "token_config_check", test_token_config_check);
    CU_add_test(s, "token_get", test_token_get);
    CU_add_test(s, "error_message", test_error_message);
    CU_add_test(s, "forward_split", test_forward_split);
}
