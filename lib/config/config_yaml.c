#include "config/config.h"
#include "config/config_int.h"

#include "base/base.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

/* A config file is written by an operator, but a typo in --config.path can still point at a
 * huge file: refuse to slurp more than this. */
#define MAX_FILE_SIZE (16u * 1024 * 1024)

/* ---- YAML file ------------------------------------------------------------------------- */

struct yctx {
    const struct pk_opt *opts;
    size_t nopts;
    void *cfg;
    yaml_document_t *doc;
    const char *file;
    bool *seen; /* per option: already set by the file */
    char *err;
    size_t errlen;
    /* Locating (config_file_line): cfg is NULL, nothing is assigned, and the line of the
     * value of option want is kept in line. */
    size_t want;
    size_t line;
};

__attribute__((format(printf, 3, 4))) static int yfail(struct yctx *y, yaml_mark_t mark,
                                                       const char *fmt, ...)
{
    if (y->err && y->errlen) {
        int n = snprintf(y->err, y->errlen, "%s:%zu: ", y->file, (size_t)mark.line + 1);
        if (n >= 0 && (size_t)n < y->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(y->err + n, y->errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return PK_ERR_INVALID;
}

static const char *scalar_text(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

/* A plain null per the YAML core schema: empty, ~ or null. */
static bool is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = scalar_text(n);
    return strcmp(s, "") == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
           strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

/* '-' and '_' are the same character in file keys. */
static char norm(char c)
{
    return c == '_' ? '-' : c;
}

static bool key_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++) {
        if (norm(a[i]) != norm(b[i]))
            return false;
    }
    return true;
}

enum key_match { KEY_NONE, KEY_OPTION, KEY_SECTION };

/* Classifies a full dotted key path: the name of an option, a proper prefix of one at a dot,
 * or neither. */
static enum key_match match_key(const struct yctx *y, const char *path, size_t *idx)
{
    size_t len = strlen(path);
    bool section = false;

    for (size_t i = 0; i < y->nopts; i++) {
        const char *name = y->opts[i].name;
        size_t nlen = strlen(name);
        if (nlen < len || !key_eq(name, len, path, len))
            continue;
        if (nlen == len) {
            *idx = i;
            return KEY_OPTION;
        }
        if (name[len] == '.')
            section = true;
    }
    return section ? KEY_SECTION : KEY_NONE;
}

struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = PK_MAX(b->cap * 2, b->len + n + 1);
        b->p = pk_xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static bool valid_env_name(const char *s, size_t n)
{
    if (n == 0 || config_is_digit(s[0]))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!(c == '_' || config_is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
            return false;
    }
    return true;
}

/* Expands ${VAR}, ${VAR:default} (default when VAR is unset or empty) and $$ in the scalar
 * at node n. Returns a new string in *out, or fails with a message naming key. */
static int expand_env(struct yctx *y, const yaml_node_t *n, const char *key, char **out)
{
    const char *s = scalar_text(n);
    size_t len = n->data.scalar.length;
    struct sbuf b = {0};
    int rc = 0;

    if (memchr(s, '\0', len)) {
        rc = yfail(y, n->start_mark, "%s: value contains a NUL character", key);
        goto out;
    }
    sb_add(&b, "", 0);
    for (size_t i = 0; i < len;) {
        if (s[i] != '$' || i + 1 == len || (s[i + 1] != '$' && s[i + 1] != '{')) {
            sb_add(&b, &s[i], 1);
            i++;
            continue;
        }
        if (s[i + 1] == '$') {
            sb_add(&b, "$", 1);
            i += 2;
            continue;
        }
        const char *start = s + i + 2;
        const char *close = memchr(start, '}', len - (i + 2));
        if (!close) {
            rc = yfail(y, n->start_mark, "%s: unterminated ${ in '%s'", key, s);
            goto out;
        }
        const char *colon = memchr(start, ':', (size_t)(close - start));
        const char *name_end = colon ? colon : close;
        int name_len = (int)(name_end - start);
        if (!valid_env_name(start, (size_t)name_len)) {
            rc = yfail(y, n->start_mark, "%s: invalid environment variable name '%.*s'", key,
                       name_len, start);
            goto out;
        }
        char *name = pk_xstrndup(start, (size_t)name_len);
        const char *val = getenv(name);
        free(name);
        if (val && (*val != '\0' || !colon)) {
            sb_add(&b, val, strlen(val));
        } else if (colon) {
            sb_add(&b, colon + 1, (size_t)(close - colon - 1));
        } else {
            rc = yfail(y, n->start_mark, "%s: environment variable %.*s is not set", key, name_len,
                       start);
            goto out;
        }
        i = (size_t)(close - s) + 1;
    }
    *out = b.p;
    b.p = NULL;
out:
    free(b.p);
    return rc;
}

/* Expands and stores one scalar into option o (appending for a list). */
static int set_scalar(struct yctx *y, const struct pk_opt *o, const yaml_node_t *n, const char *key)
{
    char *text = NULL;
    int rc = expand_env(y, n, key, &text);

    if (rc == 0 && config_assign(o, y->cfg, text) != 0)
        rc = yfail(y, n->start_mark, "%s: invalid %s '%s'", key, config_type_word(o->type), text);
    free(text);
    return rc;
}

static int set_option(struct yctx *y, size_t idx, const yaml_node_t *k, const yaml_node_t *v,
                      const char *key)
{
    const struct pk_opt *o = &y->opts[idx];

    if (y->seen[idx])
        return yfail(y, k->start_mark, "%s: duplicate key", key);
    y->seen[idx] = true;
    if (!y->cfg) {
        if (idx == y->want)
            y->line = (size_t)v->start_mark.line + 1;
        return 0;
    }

    if (o->type == PK_OPT_STRING_LIST) {
        /* The file's list replaces the default one. */
        config_clear_field(o, y->cfg);
        if (v->type == YAML_MAPPING_NODE)
            return yfail(y, v->start_mark, "%s: expected a list or a scalar", key);
        if (v->type == YAML_SCALAR_NODE)
            return is_null(v) ? 0 : set_scalar(y, o, v, key);
        for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
             it++) {
            const yaml_node_t *item = yaml_document_get_node(y->doc, *it);
            if (item->type != YAML_SCALAR_NODE)
                return yfail(y, item->start_mark, "%s: expected a list of scalars", key);
            int rc = set_scalar(y, o, item, key);
            if (rc != 0)
                return rc;
        }
        return 0;
    }
    if (v->type != YAML_SCALAR_NODE)
        return yfail(y, v->start_mark, "%s: expected a %s", key, config_type_word(o->type));
    if (o->type == PK_OPT_STRING && is_null(v)) {
        config_clear_field(o, y->cfg);
        return 0;
    }
    return set_scalar(y, o, v, key);
}

/* Applies every pair of mapping map, whose own key path is prefix (NULL at the top). A key
 * path is always an option name or a prefix of one, so recursion through aliases ends. */
static int walk_mapping(struct yctx *y, const yaml_node_t *map, const char *prefix)
{
    yaml_node_pair_t *start = map->data.mapping.pairs.start;

    for (yaml_node_pair_t *p = start; p < map->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = yaml_document_get_node(y->doc, p->key);
        const yaml_node_t *v = yaml_document_get_node(y->doc, p->value);
        int rc = 0;

        if (k->type != YAML_SCALAR_NODE)
            return yfail(y, k->start_mark, "%s: keys must be scalars",
                         prefix ? prefix : "top level");
        const char *kt = scalar_text(k);
        size_t klen = k->data.scalar.length;
        for (yaml_node_pair_t *q = start; q < p; q++) {
            const yaml_node_t *k2 = yaml_document_get_node(y->doc, q->key);
            if (key_eq(kt, klen, scalar_text(k2), k2->data.scalar.length)) {
                return yfail(y, k->start_mark, "%s%s%s: duplicate key", prefix ? prefix : "",
                             prefix ? "." : "", kt);
            }
        }

        char *key = prefix ? pk_xasprintf("%s.%s", prefix, kt) : pk_xstrdup(kt);
        size_t idx = 0;
        enum key_match m = memchr(kt, '\0', klen) ? KEY_NONE : match_key(y, key, &idx);
        if (m == KEY_OPTION) /* named as flags and checks name it, whatever the spelling */
            rc = set_option(y, idx, k, v, y->opts[idx].name);
        else if (m == KEY_SECTION && v->type == YAML_MAPPING_NODE)
            rc = walk_mapping(y, v, key);
        else if (m == KEY_SECTION && !is_null(v))
            rc = yfail(y, v->start_mark, "%s: expected a mapping", key);
        else if (m == KEY_NONE)
            rc = yfail(y, k->start_mark, "%s: unknown key", key);
        free(key);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int syntax_error(struct yctx *y, const yaml_parser_t *parser)
{
    if (parser->error == YAML_MEMORY_ERROR)
        return yfail(y, parser->mark, "out of memory while parsing YAML");
    /* A reader error (bad encoding) has no problem mark, only the reader's position. */
    yaml_mark_t mark = parser->error == YAML_READER_ERROR ? parser->mark : parser->problem_mark;
    return yfail(y, mark, "YAML syntax error: %s",
                 parser->problem ? parser->problem : "unknown error");
}

static int parse_yaml(struct yctx *y, const char *buf, size_t len)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    int rc = 0;

    if (!yaml_parser_initialize(&parser))
        return config_fail(y->err, y->errlen, PK_ERR_NOMEM, "%s: cannot initialise the YAML parser",
                           y->file);
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);

    /* yaml_parser_load frees the document itself when it fails. */
    if (!yaml_parser_load(&parser, &doc)) {
        rc = syntax_error(y, &parser);
        goto out;
    }
    y->doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && root->type == YAML_MAPPING_NODE)
        rc = walk_mapping(y, root, NULL);
    else if (root && !is_null(root))
        rc = yfail(y, root->start_mark, "expected a mapping at the top level");
    yaml_document_delete(&doc);
    y->doc = NULL;
    if (rc != 0)
        goto out;

    /* Later documents are an error unless empty (a trailing "---" is harmless). */
    for (;;) {
        if (!yaml_parser_load(&parser, &doc)) {
            rc = syntax_error(y, &parser);
            goto out;
        }
        root = yaml_document_get_root_node(&doc);
        if (root && !is_null(root))
            rc = yfail(y, doc.start_mark, "multiple YAML documents are not supported");
        yaml_document_delete(&doc);
        if (!root || rc != 0)
            break;
    }
out:
    yaml_parser_delete(&parser);
    return rc;
}

static int read_file(const char *path, char **out, size_t *outlen, char *err, size_t errlen)
{
    char ebuf[128];
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        goto os_error;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 4096;
            buf = pk_xrealloc(buf, cap);
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto os_error;
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > MAX_FILE_SIZE) {
            rc = config_fail(err, errlen, PK_ERR_TOO_LARGE,
                             "config.path: '%s' is larger than %u bytes", path, MAX_FILE_SIZE);
            goto out;
        }
    }
    *out = buf;
    *outlen = len;
    buf = NULL;
    goto out;

os_error:
    rc = config_fail(err, errlen, errno == ENOENT ? PK_ERR_NOTFOUND : PK_ERR_IO,
                     "config.path: cannot read '%s': %s", path,
                     strerror_r(errno, ebuf, sizeof(ebuf)));
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

int config_load_file(const struct pk_opt *opts, size_t nopts, void *cfg, const char *path,
                     char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    int rc = read_file(path, &buf, &len, err, errlen);

    if (rc != 0)
        return rc;
    struct yctx y = {
        .opts = opts,
        .nopts = nopts,
        .cfg = cfg,
        .file = path,
        .seen = pk_xcalloc(nopts, sizeof(bool)),
        .err = err,
        .errlen = errlen,
    };
    rc = parse_yaml(&y, buf, len);
    free(y.seen);
    free(buf);
    return rc;
}

size_t config_file_line(const struct pk_opt *opts, size_t nopts, const char *path, size_t idx)
{
    char *buf = NULL, err[256];
    size_t len = 0;

    if (read_file(path, &buf, &len, err, sizeof(err)) != 0)
        return 0;
    struct yctx y = {
        .opts = opts,
        .nopts = nopts,
        .file = path,
        .seen = pk_xcalloc(nopts, sizeof(bool)),
        .err = err,
        .errlen = sizeof(err),
        .want = idx,
    };
    int rc = parse_yaml(&y, buf, len);
    free(y.seen);
    free(buf);
    return rc == 0 ? y.line : 0;
}
