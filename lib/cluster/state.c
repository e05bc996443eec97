#include "cluster/state.h"

#include "base/base.h"
#include "dns/dns.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pk_node_state_init(struct pk_node_state *st)
{
    memset(st, 0, sizeof(*st));
}

void pk_node_state_free(struct pk_node_state *st)
{
    free(st->node_id);
    free(st->incarnation);
    free(st->proxy_addr);
    free(st->admin_addr);
    free(st->cluster_addr);
    for (size_t i = 0; i < st->neps; i++)
        free(st->eps[i].id);
    free(st->eps);
    for (size_t i = 0; i < st->nmoving; i++)
        free(st->moving[i].id);
    free(st->moving);
    pk_node_state_init(st);
}

void pk_node_state_move(struct pk_node_state *dst, struct pk_node_state *src)
{
    pk_node_state_free(dst);
    *dst = *src;
    pk_node_state_init(src);
}

static int cmp_ep(const void *a, const void *b)
{
    return strcmp(((const struct pk_ep_count *)a)->id, ((const struct pk_ep_count *)b)->id);
}

/* Index of endpoint, or of where it would go (with *found false). */
static size_t ep_index(const struct pk_node_state *st, const char *endpoint, bool *found)
{
    size_t lo = 0, hi = st->neps;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->eps[mid].id, endpoint);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

uint32_t pk_node_state_count(const struct pk_node_state *st, const char *endpoint)
{
    bool found;
    size_t i = ep_index(st, endpoint, &found);
    return found ? st->eps[i].n : 0;
}

uint64_t pk_node_state_tunnels(const struct pk_node_state *st)
{
    uint64_t n = 0;
    for (size_t i = 0; i < st->neps; i++)
        n += st->eps[i].n;
    return n;
}

void pk_node_state_set(struct pk_node_state *st, const char *endpoint, uint32_t n)
{
    bool found;
    size_t i = ep_index(st, endpoint, &found);
    if (found && n) {
        st->eps[i].n = n;
    } else if (found) {
        free(st->eps[i].id);
        memmove(&st->eps[i], &st->eps[i + 1], (st->neps - i - 1) * sizeof(*st->eps));
        st->neps--;
    } else if (n) {
        st->eps = pk_xrealloc(st->eps, (st->neps + 1) * sizeof(*st->eps));
        memmove(&st->eps[i + 1], &st->eps[i], (st->neps - i) * sizeof(*st->eps));
        st->eps[i].id = pk_xstrdup(endpoint);
        st->eps[i].n = n;
        st->neps++;
    }
}

/* ---- JSON ------------------------------------------------------------------------------ */

static int get_string(struct json_object *o, const char *key, bool required, char **out, char *err,
                      size_t errlen)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || json_object_is_type(v, json_type_null)) {
        if (!required)
            return 0;
        snprintf(err, errlen, "state: missing \"%s\"", key);
        return PK_ERR_INVALID;
    }
    if (!json_object_is_type(v, json_type_string)) {
        snprintf(err, errlen, "state: \"%s\" must be a string", key);
        return PK_ERR_INVALID;
    }
    *out = pk_xstrdup(json_object_get_string(v));
    return 0;
}

/* Long (over 80 lines) on purpose: one field of the document after another, each with its
 * own type check and message, reads best in the order of PROTOCOL.md 3. */
int pk_node_state_parse(const char *json, size_t len, struct pk_node_state *out, char *err,
                        size_t errlen)
{
    pk_node_state_init(out);
    if (len > PK_STATE_MAX_BYTES) {
        snprintf(err, errlen, "state: document over %u bytes", PK_STATE_MAX_BYTES);
        return PK_ERR_INVALID;
    }
    struct json_tokener *tok = json_tokener_new_ex(PK_STATE_MAX_DEPTH);
    if (!tok) {
        snprintf(err, errlen, "state: out of memory");
        return PK_ERR_INVALID;
    }
    struct json_object *root = json_tokener_parse_ex(tok, json, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t used = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    int rv = PK_ERR_INVALID;
    if (!root || jerr != json_tokener_success) {
        snprintf(err, errlen, "state: invalid JSON (%s)",
                 jerr == json_tokener_continue ? "truncated" : json_tokener_error_desc(jerr));
        goto out;
    }
    for (size_t i = used; i < len; i++) {
        if (json[i] != ' ' && json[i] != '\n' && json[i] != '\r' && json[i] != '\t') {
            snprintf(err, errlen, "state: trailing data after the JSON object");
            goto out;
        }
    }
    if (!json_object_is_type(root, json_type_object)) {
        snprintf(err, errlen, "state: not a JSON object");
        goto out;
    }
    if (get_string(root, "node_id", true, &out->node_id, err, errlen) ||
        get_string(root, "incarnation", true, &out->incarnation, err, errlen) ||
        get_string(root, "proxy_addr", false, &out->proxy_addr, err, errlen) ||
        get_string(root, "admin_addr", false, &out->admin_addr, err, errlen) ||
        get_string(root, "cluster_addr", false, &out->cluster_addr, err, errlen))
        goto out;
    if (!pk_endpoint_id_valid(out->node_id, strlen(out->node_id))) {
        snprintf(err, errlen, "state: invalid \"node_id\"");
        goto out;
    }
    if (!*out->incarnation || strlen(out->incarnation) > 64) {
        snprintf(err, errlen, "state: invalid \"incarnation\"");
        goto out;
    }
    struct json_object *v;
    if (!json_object_object_get_ex(root, "version", &v) || !json_object_is_type(v, json_type_int) ||
        json_object_get_int64(v) < 0) {
        snprintf(err, errlen, "state: \"version\" must be a non-negative integer");
        goto out;
    }
    out->version = (uint64_t)json_object_get_int64(v);
    if (json_object_object_get_ex(root, "draining", &v)) {
        if (!json_object_is_type(v, json_type_boolean)) {
            snprintf(err, errlen, "state: \"draining\" must be a boolean");
            goto out;
        }
        out->draining = json_object_get_boolean(v);
    }
    if (json_object_object_get_ex(root, "endpoints", &v)) {
        if (!json_object_is_type(v, json_type_object)) {
            snprintf(err, errlen, "state: \"endpoints\" must be an object");
            goto out;
        }
        size_t n = (size_t)json_object_object_length(v);
        out->eps = n ? pk_xcalloc(n, sizeof(*out->eps)) : NULL;
        json_object_object_foreach(v, key, val)
        {
            if (!pk_endpoint_id_valid(key, strlen(key))) {
                snprintf(err, errlen, "state: invalid endpoint id in \"endpoints\"");
                goto out;
            }
            if (!json_object_is_type(val, json_type_int) || json_object_get_int64(val) < 0 ||
                json_object_get_int64(val) > 0x7fffffff) {
                snprintf(err, errlen, "state: count of endpoint \"%.64s\" must be an integer", key);
                goto out;
            }
            if (json_object_get_int64(val) == 0)
                continue;
            out->eps[out->neps].id = pk_xstrdup(key);
            out->eps[out->neps].n = (uint32_t)json_object_get_int64(val);
            out->neps++;
        }
        if (out->neps > 1)
            qsort(out->eps, out->neps, sizeof(*out->eps), cmp_ep);
    }
    if (json_object_object_get_ex(root, "moving", &v)) {
        if (!json_object_is_type(v, json_type_object)) {
            snprintf(err, errlen, "state: \"moving\" must be an object");
            goto out;
        }
        size_t n = (size_t)json_object_object_length(v);
        out->moving = n ? pk_xcalloc(n, sizeof(*out->moving)) : NULL;
        json_object_object_foreach(v, key, val)
        {
            if (!pk_endpoint_id_valid(key, strlen(key)) ||
                !json_object_is_type(val, json_type_int) || json_object_get_int64(val) < 0 ||
                json_object_get_int64(val) > 3600000) {
                snprintf(err, errlen, "state: bad entry in \"moving\"");
                goto out;
            }
            out->moving[out->nmoving].id = pk_xstrdup(key);
            out->moving[out->nmoving].n = (uint32_t)json_object_get_int64(val);
            out->nmoving++;
        }
    }
    rv = 0;
out:
    if (root)
        json_object_put(root);
    if (rv != 0)
        pk_node_state_free(out);
    return rv;
}

static void add_str(struct json_object *o, const char *key, const char *v)
{
    json_object_object_add(o, key, v ? json_object_new_string(v) : json_object_new_null());
}

struct json_object *pk_node_state_to_json(const struct pk_node_state *st, bool with_endpoints)
{
    struct json_object *o = json_object_new_object();
    add_str(o, "node_id", st->node_id);
    add_str(o, "incarnation", st->incarnation);
    json_object_object_add(o, "version", json_object_new_int64((int64_t)st->version));
    add_str(o, "proxy_addr", st->proxy_addr);
    add_str(o, "admin_addr", st->admin_addr);
    add_str(o, "cluster_addr", st->cluster_addr);
    json_object_object_add(o, "draining", json_object_new_boolean(st->draining));
    if (with_endpoints) {
        struct json_object *eps = json_object_new_object();
        for (size_t i = 0; i < st->neps; i++)
            json_object_object_add(eps, st->eps[i].id, json_object_new_int64(st->eps[i].n));
        json_object_object_add(o, "endpoints", eps);
        if (st->nmoving) {
            struct json_object *mv = json_object_new_object();
            for (size_t i = 0; i < st->nmoving; i++)
                json_object_object_add(mv, st->moving[i].id,
                                       json_object_new_int64(st->moving[i].n));
            json_object_object_add(o, "moving", mv);
        }
    }
    return o;
}

/* ---- cluster.join ---------------------------------------------------------------------- */

void pk_join_free(struct pk_join_item *items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(items[i].name);
    free(items);
}

static bool name_valid(const char *s)
{
    if (!*s || strlen(s) > 253)
        return false;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_'))
            return false;
    }
    return true;
}

static int parse_item(const char *item, struct pk_join_item *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (strncmp(item, "srv:", 4) == 0) {
        out->kind = PK_JOIN_SRV;
        if (!name_valid(item + 4)) {
            snprintf(err, errlen, "cluster.join: '%s': srv: takes a DNS name", item);
            return PK_ERR_INVALID;
        }
        out->name = pk_xstrdup(item + 4);
        return 0;
    }
    const char *hp = item;
    out->kind = PK_JOIN_HOSTPORT;
    if (strncmp(item, "dns:", 4) == 0) {
        out->kind = PK_JOIN_DNS;
        hp = item + 4;
    }
    char *host = NULL;
    if (pk_split_hostport(hp, &host, &out->port, false) != 0 || !host) {
        free(host);
        snprintf(err, errlen, "cluster.join: '%s': want srv:NAME, dns:NAME:PORT or HOST:PORT",
                 item);
        return PK_ERR_INVALID;
    }
    out->name = host;
    return 0;
}

int pk_join_parse(const char *list, struct pk_join_item **items, size_t *n, char *err,
                  size_t errlen)
{
    *items = NULL;
    *n = 0;
    if (!list)
        return 0;
    char *copy = pk_xstrdup(list), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ' || *tok == '\t')
            tok++;
        size_t l = strlen(tok);
        while (l && (tok[l - 1] == ' ' || tok[l - 1] == '\t'))
            tok[--l] = '\0';
        if (!l)
            continue;
        struct pk_join_item it;
        if (parse_item(tok, &it, err, errlen) != 0) {
            pk_join_free(*items, *n);
            *items = NULL;
            *n = 0;
            free(copy);
            return PK_ERR_INVALID;
        }
        *items = pk_xrealloc(*items, (*n + 1) * sizeof(**items));
        (*items)[(*n)++] = it;
    }
    free(copy);
    return 0;
}

size_t pk_pick_weighted(const uint32_t *weights, size_t n, uint32_t r)
{
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += weights[i];
    if (total == 0)
        return n;
    uint64_t x = ((uint64_t)r * total) >> 32;
    for (size_t i = 0; i < n; i++) {
        if (x < weights[i])
            return i;
        x -= weights[i];
    }
    return n - 1;
}
