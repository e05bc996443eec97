/* head: the header part of an HTTP message, independent of the wire version.
 *
 * Field names are stored lower-case (HTTP/2 form); HTTP/1.1 writers keep them so.
 * Every string is owned by the struct and freed by pk_head_free / pk_hdrs_free. A field
 * list keeps its strings in a few blocks of its own (struct pk_hdrs_block): adding a
 * field costs no allocation of its own, and a deleted field's bytes are given back only
 * when the list is freed (lists live for one message). */
#ifndef PK_HEAD_H
#define PK_HEAD_H

#include <stdbool.h>
#include <stddef.h>

struct pk_hdr {
    char *name;
    char *value;
    size_t nlen;
    size_t vlen;
};

struct pk_hdrs_block;

struct pk_hdrs {
    struct pk_hdr *v;
    size_t n;
    size_t cap;
    size_t bytes;                 /* sum of name and value lengths, for limits */
    struct pk_hdrs_block *blocks; /* where the strings are, newest first */
};

struct pk_head {
    int status; /* responses: the status code; requests: 0 */
    char *method;
    char *scheme;
    char *authority;
    char *path;
    char *protocol; /* extended CONNECT :protocol, or NULL */
    struct pk_hdrs hdrs;
};

void pk_hdrs_init(struct pk_hdrs *h);
void pk_hdrs_free(struct pk_hdrs *h);
/* Appends a field; the name is lower-cased on the copy. */
void pk_hdrs_add(struct pk_hdrs *h, const char *name, size_t nlen, const char *value, size_t vlen);
void pk_hdrs_add_str(struct pk_hdrs *h, const char *name, const char *value);
/* First value of a field (name lower-case), or NULL. */
const char *pk_hdrs_get(const struct pk_hdrs *h, const char *name);
/* How many fields have this name (lower-case). */
size_t pk_hdrs_count(const struct pk_hdrs *h, const char *name);
/* Removes the first field with this name (the one pk_hdrs_get returns); returns 1, or 0
 * when there is none. */
size_t pk_hdrs_del_first(struct pk_hdrs *h, const char *name);
/* Removes every field with this name; returns how many were removed. */
size_t pk_hdrs_del(struct pk_hdrs *h, const char *name);
/* Removes every field whose name starts with prefix (lower-case); returns the count. */
size_t pk_hdrs_del_prefix(struct pk_hdrs *h, const char *prefix);
/* Replaces every field of this name by a single one. */
void pk_hdrs_set(struct pk_hdrs *h, const char *name, const char *value);
/* True when a comma-separated field of that name lists token (case-insensitive). */
bool pk_hdrs_has_token(const struct pk_hdrs *h, const char *name, const char *token);
/* Moves every field of src to the end of dst; src is left empty. */
void pk_hdrs_move(struct pk_hdrs *dst, struct pk_hdrs *src);

void pk_head_init(struct pk_head *h);
void pk_head_free(struct pk_head *h);
/* Replaces a string member (e.g. &head->path) with a copy of s (NULL clears it). */
void pk_head_set(char **member, const char *s, size_t len);

#endif
