/* auth: the verifier, its asynchronous requests and the JWKS life cycle (file re-reads,
 * https fetches, the refresh timer, the unknown-kid refetch and its rate limit). Tokens and
 * claims are checked by token.c, key material is loaded by keys.c. */
#include "auth/auth.h"

#include "auth/auth_int.h"
#include "base/base.h"
#include "base/log.h"
#include "httpc/httpc.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum req_state {
    REQ_QUEUED,     /* result stored, deliver event active */
    REQ_WAITING,    /* waiting for the JWKS fetch in flight */
    REQ_DELIVERING, /* the callback has started */
};

struct pk_auth_req {
    struct pk_auth *a;
    struct pk_auth_req *prev, *next; /* a->reqs, until delivery or cancel */
    enum req_state state;
    pk_auth_cb cb;
    void *arg;
    struct event *deliver;
    char *token; /* REQ_WAITING only */
    size_t len;
    enum pk_auth_result result;
    struct pk_claims claims;
    char detail[160];
};

/* What identifies one version of a JWKS file. */
struct file_sig {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
};

struct pk_auth {
    struct event_base *base;
    struct pk_httpc *http;
    char *prefix;
    char *what_jwks;             /* "<prefix>.jwks.endpoint", for logs */
    struct pk_claim_rules rules; /* its strings are owned */
    size_t max_token_len;

    struct pk_keyset keys; /* the static key (n == 1) or the current JWKS */
    bool jwks;
    bool loaded;
    char *jwks_url;  /* http(s) JWKS */
    char *jwks_path; /* file JWKS */
    struct file_sig file_sig;
    uint64_t refresh_ms, min_refetch_ms, timeout_ms;
    uint64_t last_load_ms;      /* monotonic start of the last read or fetch; 0: never */
    uint64_t last_kid_fetch_ms; /* the last fetch an unknown kid started; 0: never */
    struct pk_httpc_req *fetch;
    struct event *refresh;

    struct pk_auth_req *reqs; /* queued and waiting requests */
    size_t nwaiting;
    struct pk_auth_counters counters;
};

/* ---- the JWKS ---- */

static void schedule_refresh(struct pk_auth *a, uint64_t ms);
static void wake_waiters(struct pk_auth *a);

/* Same kids in the same order: a refresh that changed nothing is not worth an info line. */
static bool same_kids(const struct pk_keyset *x, const struct pk_keyset *y)
{
    if (x->n != y->n)
        return false;
    for (size_t i = 0; i < x->n; i++)
        if (strcmp(x->v[i].kid, y->v[i].kid) != 0)
            return false;
    return true;
}

static void set_keys(struct pk_auth *a, struct pk_keyset *ks, const char *source)
{
    if (a->loaded && same_kids(&a->keys, ks))
        PK_DEBUG("auth", "jwks reloaded option=%s source=%s keys=%zu", a->what_jwks, source, ks->n);
    else
        PK_INFO("auth", "jwks loaded option=%s source=%s keys=%zu", a->what_jwks, source, ks->n);
    pk_keyset_free(&a->keys);
    a->keys = *ks;
    a->loaded = true;
    a->counters.jwks_loads++;
    a->counters.jwks_keys = ks->n;
}

static bool same_sig(const struct file_sig *x, const struct file_sig *y)
{
    return x->dev == y->dev && x->ino == y->ino && x->size == y->size &&
           x->mtime.tv_sec == y->mtime.tv_sec && x->mtime.tv_nsec == y->mtime.tv_nsec &&
           x->ctime.tv_sec == y->ctime.tv_sec && x->ctime.tv_nsec == y->ctime.tv_nsec;
}

/* Reads the JWKS file into the keys. Returns 0 or PK_ERR_IO / PK_ERR_INVALID / PK_ERR_TOO_LARGE
 * with the reason in err; the keys in use stay on failure. */
static int load_file(struct pk_auth *a, char *err, size_t errlen)
{
    struct stat st;
    struct pk_keyset ks = {NULL, 0};
    char *buf = NULL;
    int rc = PK_ERR_IO;

    a->last_load_ms = pk_now_ms();
    /* O_NONBLOCK: a FIFO named by mistake must not block the loop (S_ISREG is checked). */
    int fd = open(a->jwks_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot read %s: %s", a->jwks_path, strerror(errno));
        goto out;
    }
    /* Recorded whatever the outcome: a broken version is not re-read until it changes
     * (or min_refetch_ms passed), however many unknown kids come meanwhile. */
    a->file_sig = (struct file_sig){st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim};
    if (!S_ISREG(st.st_mode) || st.st_size > PK_AUTH_MAX_JWKS_BYTES) {
        snprintf(err, errlen, "%s is not a regular file of at most %d bytes", a->jwks_path,
                 PK_AUTH_MAX_JWKS_BYTES);
        rc = PK_ERR_TOO_LARGE;
        goto out;
    }
    buf = pk_xmalloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(err, errlen, "cannot read %s: %s", a->jwks_path,
                     n < 0 ? strerror(errno) : "file shrank");
            goto out;
        }
        got += (size_t)n;
    }
    char why[128];
    if ((rc = pk_jwks_parse(buf, got, a->what_jwks, &ks, why, sizeof(why))) != 0) {
        snprintf(err, errlen, "%s: %s", a->jwks_path, why);
        goto out;
    }
    set_keys(a, &ks, a->jwks_path);
out:
    if (rc != 0)
        a->counters.jwks_load_failures++;
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

/* Re-reads the JWKS file when it changed. With if_stale, also when the last read is
 * min_refetch_ms old, in case a change kept every stat field; a missing file is retried at
 * that rate only. */
static void reload_file(struct pk_auth *a, bool if_stale)
{
    struct stat st;
    char err[256];
    bool changed = false;

    if (stat(a->jwks_path, &st) == 0) {
        struct file_sig now = {st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim};
        changed = !same_sig(&now, &a->file_sig);
    }
    if (!changed && (!if_stale || pk_now_ms() - a->last_load_ms < a->min_refetch_ms))
        return;
    if (load_file(a, err, sizeof(err)) != 0)
        PK_WARN("auth", "jwks reload failed option=%s, keeping %zu keys: %s", a->what_jwks,
                a->keys.n, err);
}

static void fetch_cb(int status, const char *body, size_t len, const char *err, void *arg)
{
    struct pk_auth *a = arg;
    struct pk_keyset ks = {NULL, 0};
    char why[128];
    bool ok = false;

    a->fetch = NULL;
    if (status != 200) {
        if (status)
            snprintf(why, sizeof(why), "HTTP status %d", status);
        else
            snprintf(why, sizeof(why), "%s", err);
    } else if (pk_jwks_parse(body, len, a->what_jwks, &ks, why, sizeof(why)) == 0) {
        set_keys(a, &ks, a->jwks_url);
        ok = true;
    }
    if (!ok) {
        a->counters.jwks_load_failures++;
        PK_WARN("auth", "jwks fetch failed option=%s url=%s, keeping %zu keys: %s", a->what_jwks,
                a->jwks_url, a->keys.n, why);
    }
    /* Until a first load succeeds, retry at the refetch rate rather than every refresh. */
    schedule_refresh(a, a->loaded ? a->refresh_ms : PK_MIN(a->refresh_ms, a->min_refetch_ms));
    wake_waiters(a);
}

static bool start_fetch(struct pk_auth *a)
{
    static const char *const hdrs[] = {"Accept: application/json, application/jwk-set+json", NULL};

    a->last_load_ms = pk_now_ms();
    a->fetch = pk_httpc_get(a->http, a->jwks_url, hdrs, a->timeout_ms, fetch_cb, a);
    if (!a->fetch) {
        a->counters.jwks_load_failures++;
        PK_WARN("auth", "jwks fetch not started option=%s url=%s", a->what_jwks, a->jwks_url);
        return false;
    }
    return true;
}

/* True when a fetch is in flight or was started now. The rate limit: a JWKS never loaded
 * is fetched again min_refetch_ms after the last attempt; an unknown kid makes one fetch per
 * min_refetch_ms at most, whatever the periodic refreshes did. */
static bool fetch_or_join(struct pk_auth *a, bool for_kid)
{
    uint64_t now = pk_now_ms(), last = for_kid ? a->last_kid_fetch_ms : a->last_load_ms;

    if (a->fetch)
        return true;
    if (last && now - last < a->min_refetch_ms)
        return false;
    if (for_kid)
        a->last_kid_fetch_ms = now;
    return start_fetch(a);
}

static void refresh_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_auth *a = arg;
    PK_UNUSED(fd);
    PK_UNUSED(what);

    if (a->jwks_path) {
        reload_file(a, false);
        schedule_refresh(a, a->refresh_ms);
    } else if (!a->fetch && !start_fetch(a)) {
        schedule_refresh(a, a->min_refetch_ms);
    }
}

static void schedule_refresh(struct pk_auth *a, uint64_t ms)
{
    struct timeval tv = pk_ms_timeval(ms);
    evtimer_add(a->refresh, &tv);
}

/* Finds the JWKS key for kid that fits alg: UNKNOWN_KID when no key has the kid,
 * ALG_NOT_ALLOWED when none of those fits alg. */
static enum pk_auth_result find_key(struct pk_auth *a, const char *kid, const struct pk_alg *alg,
                                    const struct pk_key **out, char *detail, size_t dlen)
{
    enum pk_auth_result res = PK_AUTH_UNKNOWN_KID;
    char buf[80];

    for (size_t i = 0; i < a->keys.n; i++) {
        const struct pk_key *k = &a->keys.v[i];
        if (strcmp(k->kid, kid) != 0)
            continue;
        res = pk_key_fits(k, alg, detail, dlen);
        if (res == PK_AUTH_OK) {
            *out = k;
            return res;
        }
    }
    if (res == PK_AUTH_UNKNOWN_KID)
        snprintf(detail, dlen, "no key with kid \"%s\"", pk_printable(kid, buf, sizeof(buf)));
    return res;
}

/* ---- verification ---- */

/* The whole check. A JWKS file that lacks the kid is re-read at once when it changed. With
 * may_fetch, an https JWKS that lacks the kid (or was never loaded) is fetched, or joins the
 * fetch in flight, and PENDING is returned. */
static enum pk_auth_result check(struct pk_auth *a, const char *tok, size_t len, bool may_fetch,
                                 struct pk_claims *c, char *detail, size_t dlen)
{
    struct pk_token t;
    const struct pk_key *key = NULL;
    enum pk_auth_result res;

    memset(c, 0, sizeof(*c));
    if ((res = pk_token_parse(&t, tok, len, a->max_token_len, detail, dlen)) != PK_AUTH_OK)
        goto out;
    if (!a->jwks) {
        key = &a->keys.v[0];
        if ((res = pk_key_fits(key, t.alg, detail, dlen)) != PK_AUTH_OK)
            goto out;
    } else {
        if (!a->loaded && may_fetch && a->jwks_url && fetch_or_join(a, false)) {
            res = PK_AUTH_PENDING;
            goto out;
        }
        if (!a->loaded) {
            snprintf(detail, dlen, "the JWKS has not been loaded");
            res = PK_AUTH_KEYS_NOT_LOADED;
            goto out;
        }
        if (!t.kid) {
            snprintf(detail, dlen, "token has no kid");
            res = PK_AUTH_UNKNOWN_KID;
            goto out;
        }
        res = find_key(a, t.kid, t.alg, &key, detail, dlen);
        if (res == PK_AUTH_UNKNOWN_KID && a->jwks_path) {
            /* Synchronous and cheap (a stat unless the file changed): a rotated key works
             * on the very next verification. */
            reload_file(a, true);
            res = find_key(a, t.kid, t.alg, &key, detail, dlen);
        } else if (res == PK_AUTH_UNKNOWN_KID && may_fetch && fetch_or_join(a, true)) {
            res = PK_AUTH_PENDING;
        }
        if (res != PK_AUTH_OK)
            goto out;
    }
    res = pk_token_verify(&t, key, &a->rules, c, detail, dlen);
out:
    if (res == PK_AUTH_PENDING)
        snprintf(detail, dlen, "waiting for a JWKS fetch");
    pk_token_free(&t);
    return res;
}

static void count(struct pk_auth *a, enum pk_auth_result res)
{
    if (res == PK_AUTH_OK)
        a->counters.accepted++;
    else if (res != PK_AUTH_PENDING && (unsigned)res < PK_AUTH_NRESULTS)
        a->counters.rejected[res]++;
}

enum pk_auth_result pk_auth_verify_now(struct pk_auth *a, const char *token, size_t len,
                                       struct pk_claims *claims, char *detail, size_t detaillen)
{
    char scratch[160];

    if (!detail || detaillen == 0) {
        detail = scratch;
        detaillen = sizeof(scratch);
    }
    enum pk_auth_result res = check(a, token, len, true, claims, detail, detaillen);
    count(a, res);
    return res;
}

/* ---- requests ---- */

static void link_req(struct pk_auth *a, struct pk_auth_req *r)
{
    r->prev = NULL;
    r->next = a->reqs;
    if (a->reqs)
        a->reqs->prev = r;
    a->reqs = r;
}

static void unlink_req(struct pk_auth_req *r)
{
    struct pk_auth *a = r->a;

    if (r->prev)
        r->prev->next = r->next;
    else
        a->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    if (r->state == REQ_WAITING)
        a->nwaiting--;
}

/* Frees r, already unlinked. Touches nothing of its verifier. */
static void free_req(struct pk_auth_req *r)
{
    event_free(r->deliver);
    pk_claims_free(&r->claims);
    free(r->token);
    free(r);
}

static void deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_auth_req *r = arg;
    struct pk_auth *a = r->a;
    PK_UNUSED(fd);
    PK_UNUSED(what);

    /* Unlinked first: the callback may free the verifier, which must not see r. */
    unlink_req(r);
    r->state = REQ_DELIVERING;
    count(a, r->result);
    r->cb(r->result, r->result == PK_AUTH_OK ? &r->claims : NULL, r->detail, r->arg);
    free_req(r);
}

static void queue(struct pk_auth_req *r, enum pk_auth_result res)
{
    if (r->state == REQ_WAITING)
        r->a->nwaiting--;
    r->state = REQ_QUEUED;
    r->result = res;
    free(r->token);
    r->token = NULL;
    event_active(r->deliver, EV_TIMEOUT, 1);
}

/* Called when a JWKS fetch ended: every waiting verification is decided now. */
static void wake_waiters(struct pk_auth *a)
{
    for (struct pk_auth_req *r = a->reqs; r; r = r->next) {
        if (r->state != REQ_WAITING)
            continue;
        queue(r, check(a, r->token, r->len, false, &r->claims, r->detail, sizeof(r->detail)));
    }
}

struct pk_auth_req *pk_auth_verify(struct pk_auth *a, const char *token, size_t len, pk_auth_cb cb,
                                   void *arg)
{
    if (!a || !cb)
        return NULL;
    struct pk_auth_req *r = pk_xcalloc(1, sizeof(*r));
    r->a = a;
    r->cb = cb;
    r->arg = arg;
    r->deliver = pk_xevent_new(a->base, -1, 0, deliver_cb, r);
    r->state = REQ_QUEUED;
    link_req(a, r);
    bool may_wait = a->nwaiting < PK_AUTH_MAX_WAITING;
    enum pk_auth_result res =
        check(a, token, len, may_wait, &r->claims, r->detail, sizeof(r->detail));
    if (res == PK_AUTH_PENDING) {
        r->state = REQ_WAITING;
        r->token = pk_xmalloc(len ? len : 1);
        memcpy(r->token, token, len);
        r->len = len;
        a->nwaiting++;
        return r;
    }
    queue(r, res);
    return r;
}

void pk_auth_cancel(struct pk_auth_req *r)
{
    if (!r || r->state == REQ_DELIVERING)
        return;
    unlink_req(r);
    free_req(r);
}

/* ---- the verifier ---- */

bool pk_auth_ready(const struct pk_auth *a)
{
    return a && (!a->jwks || a->loaded);
}

const struct pk_auth_counters *pk_auth_counters(const struct pk_auth *a)
{
    return &a->counters;
}

static bool set(const char *s)
{
    return s && *s;
}

/* Splits the JWKS endpoint into a->jwks_url or a->jwks_path. */
static int jwks_source(struct pk_auth *a, const struct pk_auth_opts *o, char *err, size_t errlen)
{
    const char *e = o->jwks_endpoint;

    if (strncasecmp(e, "https://", 8) == 0) {
        a->jwks_url = pk_xstrdup(e);
    } else if (strncasecmp(e, "http://", 7) == 0) {
        if (!o->jwks_allow_http) {
            snprintf(err, errlen, "%s: http:// is refused (keys must come over https)",
                     a->what_jwks);
            return PK_ERR_INVALID;
        }
        PK_WARN("auth",
                "%s: fetching keys over plain http (%s): for tests only, anyone on the "
                "path can substitute keys",
                a->what_jwks, e);
        a->jwks_url = pk_xstrdup(e);
    } else if (strncmp(e, "file://", 7) == 0) {
        a->jwks_path = pk_xstrdup(e + 7);
    } else if (strncmp(e, "file:", 5) == 0) {
        a->jwks_path = pk_xstrdup(e + 5);
    } else if (strstr(e, "://")) {
        snprintf(err, errlen, "%s: unsupported scheme (https://, file: or a path)", a->what_jwks);
        return PK_ERR_INVALID;
    } else {
        a->jwks_path = pk_xstrdup(e);
    }
    if (a->jwks_path && !*a->jwks_path) {
        snprintf(err, errlen, "%s: empty path", a->what_jwks);
        return PK_ERR_INVALID;
    }
    if (a->jwks_url && !a->http) {
        snprintf(err, errlen, "%s: an https JWKS needs an HTTP client", a->what_jwks);
        return PK_ERR_INVALID;
    }
    return 0;
}

static int load_keys(struct pk_auth *a, const struct pk_auth_opts *o, char *err, size_t errlen)
{
    const char *names[4] = {"hmac-secret-key", "rsa-public-key", "ecdsa-public-key",
                            "jwks.endpoint"};
    const char *vals[4] = {o->hmac_secret_key, o->rsa_public_key, o->ecdsa_public_key,
                           o->jwks_endpoint};
    int which = -1;

    for (int i = 0; i < 4; i++) {
        if (!set(vals[i]))
            continue;
        if (which >= 0) {
            snprintf(err, errlen, "%s: more than one key source (%s, %s)", a->prefix, names[which],
                     names[i]);
            return PK_ERR_INVALID;
        }
        which = i;
    }
    if (which < 0) {
        snprintf(err, errlen,
                 "%s: no key source (hmac-secret-key, rsa-public-key, "
                 "ecdsa-public-key or jwks.endpoint)",
                 a->prefix);
        return PK_ERR_INVALID;
    }
    if (which == 3) {
        a->jwks = true;
        int rc = jwks_source(a, o, err, errlen);
        if (rc != 0)
            return rc;
        if (a->jwks_path) {
            char why[256];
            if ((rc = load_file(a, why, sizeof(why))) != 0) {
                snprintf(err, errlen, "%s: %s", a->what_jwks, why);
                return rc;
            }
            schedule_refresh(a, a->refresh_ms);
        } else if (!start_fetch(a)) {
            schedule_refresh(a, a->min_refetch_ms);
        }
        return 0;
    }
    char *what = pk_xasprintf("%s.%s", a->prefix, names[which]);
    a->keys.v = pk_xcalloc(1, sizeof(*a->keys.v));
    int rc = which == 0   ? pk_key_from_secret(&a->keys.v[0], vals[0], what, err, errlen)
             : which == 1 ? pk_key_from_pem(&a->keys.v[0], vals[1], PK_KEY_RSA, what, err, errlen)
                          : pk_key_from_pem(&a->keys.v[0], vals[2], PK_KEY_EC, what, err, errlen);
    if (rc == 0)
        a->keys.n = 1;
    free(what);
    return rc;
}

struct pk_auth *pk_auth_new(struct event_base *base, struct pk_httpc *http,
                            const struct pk_auth_opts *opts, char *err, size_t errlen)
{
    const char *prefix = opts && set(opts->prefix) ? opts->prefix : "auth";
    char dummy[1];

    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    if (!base || !opts) {
        snprintf(err, errlen, "%s: no event loop or options", prefix);
        return NULL;
    }
    if (opts->leeway_s > PK_AUTH_MAX_LEEWAY_S) {
        snprintf(err, errlen, "%s: leeway of %u s is over %d s", prefix, opts->leeway_s,
                 PK_AUTH_MAX_LEEWAY_S);
        return NULL;
    }
    struct pk_auth *a = pk_xcalloc(1, sizeof(*a));
    a->base = base;
    a->http = http;
    a->prefix = pk_xstrdup(prefix);
    a->what_jwks = pk_xasprintf("%s.jwks.endpoint", prefix);
    a->rules.audience = set(opts->audience) ? pk_xstrdup(opts->audience) : NULL;
    a->rules.issuer = set(opts->issuer) ? pk_xstrdup(opts->issuer) : NULL;
    a->rules.require_exp = opts->require_exp;
    a->rules.leeway_s = opts->leeway_s;
    a->max_token_len = opts->max_token_len ? opts->max_token_len : PK_AUTH_DEFAULT_MAX_TOKEN_LEN;
    a->refresh_ms = opts->jwks_refresh_ms ? opts->jwks_refresh_ms : PK_AUTH_DEFAULT_REFRESH_MS;
    a->min_refetch_ms =
        opts->jwks_min_refetch_ms ? opts->jwks_min_refetch_ms : PK_AUTH_DEFAULT_MIN_REFETCH_MS;
    a->timeout_ms =
        opts->jwks_timeout_ms ? opts->jwks_timeout_ms : PK_AUTH_DEFAULT_FETCH_TIMEOUT_MS;
    a->refresh = pk_xevent_new(base, -1, 0, refresh_cb, a);
    if (load_keys(a, opts, err, errlen) != 0) {
        pk_auth_del(a);
        return NULL;
    }
    return a;
}

void pk_auth_del(struct pk_auth *a)
{
    if (!a)
        return;
    pk_httpc_cancel(a->fetch);
    while (a->reqs) {
        struct pk_auth_req *r = a->reqs;
        unlink_req(r);
        free_req(r);
    }
    event_free(a->refresh);
    pk_keyset_free(&a->keys);
    free(a->prefix);
    free(a->what_jwks);
    free((char *)a->rules.audience);
    free((char *)a->rules.issuer);
    free(a->jwks_url);
    free(a->jwks_path);
    free(a);
}
