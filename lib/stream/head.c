#include "stream/head.h"

#include "base/base.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A block of field strings; blocks never move, so the fields' pointers stay valid. */
struct pk_hdrs_block {
    struct pk_hdrs_block *next;
    size_t used, cap;
    char data[];
};

#define BLOCK_MIN 512

void pk_hdrs_init(struct pk_hdrs *h)
{
    memset(h, 0, sizeof(*h));
}

static void free_blocks(struct pk_hdrs_block *b)
{
    while (b) {
        struct pk_hdrs_block *next = b->next;
        free(b);
        b = next;
    }
}

void pk_hdrs_free(struct pk_hdrs *h)
{
    free_blocks(h->blocks);
    free(h->v);
    memset(h, 0, sizeof(*h));
}

/* n bytes for one field's strings, from the newest block or a new one. */
static char *block_alloc(struct pk_hdrs *h, size_t n)
{
    struct pk_hdrs_block *b = h->blocks;
    if (!b || b->cap - b->used < n) {
        size_t cap = PK_MAX(n, b ? b->cap * 2 : (size_t)BLOCK_MIN);
        b = pk_xmalloc(sizeof(*b) + cap);
        b->used = 0;
        b->cap = cap;
        b->next = h->blocks;
        h->blocks = b;
    }
    char *p = b->data + b->used;
    b->used += n;
    return p;
}

/* Copies n bytes, ASCII upper case to lower case, eight bytes at a time: a byte is upper
 * case when adding (0x80 - 'A') to its low seven bits carries into bit 7 and adding
 * (0x80 - 'Z' - 1) does not, and its own bit 7 is clear; such a byte gets 0x20. */
static void lower_copy(char *dst, const char *src, size_t n)
{
    const uint64_t ones = 0x0101010101010101u, high = ones * 0x80;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, src + i, 8);
        uint64_t low7 = x & ~high;
        uint64_t upper =
            ((low7 + ones * (0x80 - 'A')) ^ (low7 + ones * (0x80 - 'Z' - 1))) & ~x & high;
        x |= upper >> 2;
        memcpy(dst + i, &x, 8);
    }
    for (; i < n; i++) {
        char c = src[i];
        dst[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
}

void pk_hdrs_add(struct pk_hdrs *h, const char *name, size_t nlen, const char *value, size_t vlen)
{
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 16;
        h->v = pk_xrealloc(h->v, h->cap * sizeof(*h->v));
    }
    struct pk_hdr *f = &h->v[h->n++];
    /* Both strings together: "name\0value\0". */
    f->name = block_alloc(h, nlen + vlen + 2);
    lower_copy(f->name, name, nlen);
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
            h->bytes -= h->v[i].nlen + h->v[i].vlen; /* its block is freed with the list */
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
    if (dst->n == 0) { /* the common case: dst takes src's array and blocks as they are */
        free(dst->v);
        struct pk_hdrs_block *old = dst->blocks;
        *dst = *src;
        if (old) { /* strings of fields deleted earlier: kept until dst is freed */
            struct pk_hdrs_block *b = old;
            while (b->next)
                b = b->next;
            b->next = dst->blocks;
            dst->blocks = old;
        }
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
    /* src's strings now belong to dst: its blocks go after dst's newest one, which
     * stays the one new fields are added to. */
    if (src->blocks) {
        struct pk_hdrs_block *b = src->blocks;
        while (b->next)
            b = b->next;
        if (dst->blocks) {
            b->next = dst->blocks->next;
            dst->blocks->next = src->blocks;
        } else {
            dst->blocks = src->blocks;
        }
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
