#include "stream/head.h"

#include "base/base.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void pk_hdrs_init(struct pk_hdrs *h)
{
    memset(h, 0, sizeof(*h));
}

void pk_hdrs_free(struct pk_hdrs *h)
{
    for (size_t i = 0; i < h->n; i++) {
        free(h->v[i].name); /* the value shares the allocation */
    }
    free(h->v);
    memset(h, 0, sizeof(*h));
}

void pk_hdrs_add(struct pk_hdrs *h, const char *name, size_t nlen, const char *value, size_t vlen)
{
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 16;
        h->v = pk_xrealloc(h->v, h->cap * sizeof(*h->v));
    }
    struct pk_hdr *f = &h->v[h->n++];
    /* One allocation for both strings: "name\0value\0". */
    f->name = pk_xmalloc(nlen + vlen + 2);
    for (size_t i = 0; i < nlen; i++) {
        char c = name[i];
        f->name[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    f->name[nlen] = '\0';
    f->value = f->name + nlen + 1;
    memcpy(f->value, value, vlen);
    f->value[vlen] = '\0';
    f->nlen = nlen;
    f->vlen = vlen;
    h->bytes += nlen + vlen;
}

void pk_hdrs_add_str(struct pk_hdrs *h, const char *name, const char *value)
{
    pk_hdrs_add(h, name, strlen(name), value, strlen(value));
}

const char *pk_hdrs_get(const struct pk_hdrs *h, const char *name)
{
    for (size_t i = 0; i < h->n; i++) {
        if (strcmp(h->v[i].name, name) == 0)
            return h->v[i].value;
    }
    return NULL;
}

size_t pk_hdrs_count(const struct pk_hdrs *h, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < h->n; i++)
        n += strcmp(h->v[i].name, name) == 0;
    return n;
}

/* Removes the fields named name (or, with cmp_len, starting with its first cmp_len
 * characters); at most max of them. */
static size_t del_matching(struct pk_hdrs *h, const char *name, size_t cmp_len, size_t max)
{
    size_t out = 0, removed = 0;
    for (size_t i = 0; i < h->n; i++) {
        bool match =
            cmp_len ? strncmp(h->v[i].name, name, cmp_len) == 0 : strcmp(h->v[i].name, name) == 0;
        if (match && removed < max) {
            h->bytes -= h->v[i].nlen + h->v[i].vlen;
            free(h->v[i].name);
            removed++;
            continue;
        }
        h->v[out++] = h->v[i];
    }
    h->n = out;
    return removed;
}

size_t pk_hdrs_del(struct pk_hdrs *h, const char *name)
{
    return del_matching(h, name, 0, SIZE_MAX);
}

size_t pk_hdrs_del_first(struct pk_hdrs *h, const char *name)
{
    return del_matching(h, name, 0, 1);
}

size_t pk_hdrs_del_prefix(struct pk_hdrs *h, const char *prefix)
{
    return prefix[0] ? del_matching(h, prefix, strlen(prefix), SIZE_MAX) : 0;
}

void pk_hdrs_set(struct pk_hdrs *h, const char *name, const char *value)
{
    pk_hdrs_del(h, name);
    pk_hdrs_add_str(h, name, value);
}

static bool list_has_token(const char *v, const char *token)
{
    size_t tlen = strlen(token);
    while (*v) {
        while (*v == ' ' || *v == '\t' || *v == ',')
            v++;
        const char *start = v;
        while (*v && *v != ',')
            v++;
        const char *end = v;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if ((size_t)(end - start) == tlen && pk_memcaseeq(start, tlen, token))
            return true;
    }
    return false;
}

bool pk_hdrs_has_token(const struct pk_hdrs *h, const char *name, const char *token)
{
    for (size_t i = 0; i < h->n; i++) {
        if (strcmp(h->v[i].name, name) == 0 && list_has_token(h->v[i].value, token))
            return true;
    }
    return false;
}

void pk_hdrs_move(struct pk_hdrs *dst, struct pk_hdrs *src)
{
    if (dst->n == 0) { /* the common case: dst takes src's array as it is */
        free(dst->v);
        *dst = *src;
        memset(src, 0, sizeof(*src));
        return;
    }
    for (size_t i = 0; i < src->n; i++) {
        if (dst->n == dst->cap) {
            dst->cap = dst->cap ? dst->cap * 2 : 16;
            dst->v = pk_xrealloc(dst->v, dst->cap * sizeof(*dst->v));
        }
        dst->v[dst->n++] = src->v[i];
        dst->bytes += src->v[i].nlen + src->v[i].vlen;
    }
    free(src->v);
    memset(src, 0, sizeof(*src));
}

void pk_head_init(struct pk_head *h)
{
    memset(h, 0, sizeof(*h));
}

void pk_head_free(struct pk_head *h)
{
    free(h->method);
    free(h->scheme);
    free(h->authority);
    free(h->path);
    free(h->protocol);
    pk_hdrs_free(&h->hdrs);
    memset(h, 0, sizeof(*h));
}

void pk_head_set(char **member, const char *s, size_t len)
{
    free(*member);
    *member = s ? pk_xstrndup(s, len) : NULL;
}
