#include "http1/http1.h"

#include "base/base.h"

#include <event2/buffer.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct pk_h1parser *P(http_parser *hp)
{
    return hp->data;
}

/* Accounts head bytes; returns non-zero (stop the parser) above the limit. */
static int count(struct pk_h1parser *p, size_t n)
{
    p->head_bytes += n;
    if (p->head_bytes > p->max_head) {
        p->error = PK_H1_HEAD_TOO_LARGE;
        return 1;
    }
    return 0;
}

static void append(char **s, size_t *len, size_t *cap, const char *at, size_t n)
{
    if (*len + n + 1 > *cap) {
        *cap = PK_MAX(*len + n + 1, PK_MAX(*cap * 2, (size_t)64));
        *s = pk_xrealloc(*s, *cap);
    }
    memcpy(*s + *len, at, n);
    *len += n;
    (*s)[*len] = '\0';
}

static void flush_field(struct pk_h1parser *p)
{
    if (!p->has_field)
        return;
    struct pk_hdrs *dst = p->head_done ? &p->trailers : &p->head.hdrs;
    /* Optional whitespace around values is not part of the value (RFC 9110 5.5). */
    const char *v = p->value_len ? p->value : "";
    size_t vlen = p->value_len;
    while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
        vlen--;
    pk_hdrs_add(dst, p->field, p->field_len, v, vlen);
    p->field_len = p->value_len = 0;
    p->has_field = false;
    p->in_value = false;
}

static int on_message_begin(http_parser *hp)
{
    struct pk_h1parser *p = P(hp);
    pk_head_free(&p->head);
    pk_hdrs_free(&p->trailers);
    p->url_len = 0;
    if (p->url)
        p->url[0] = '\0';
    p->head_bytes = 0;
    p->head_done = p->message_done = p->upgrade = false;
    return 0;
}

static int on_url(http_parser *hp, const char *at, size_t n)
{
    struct pk_h1parser *p = P(hp);
    if (count(p, n))
        return 1;
    append(&p->url, &p->url_len, &p->url_cap, at, n);
    return 0;
}

static int on_status(http_parser *hp, const char *at, size_t n)
{
    PK_UNUSED(at);
    return count(P(hp), n);
}

/* RFC 9110 5.6.2 token characters. */
static bool is_tchar(unsigned char c)
{
    unsigned char lc = c | 0x20; /* a letter's lower case; never a letter otherwise */
    if ((lc >= 'a' && lc <= 'z') || (c >= '0' && c <= '9') || c == '-')
        return true;
    switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
        return true;
    default:
        return false;
    }
}

static int on_header_field(http_parser *hp, const char *at, size_t n)
{
    struct pk_h1parser *p = P(hp);
    /* ": " and CRLF are charged once per field, however the bytes arrive. */
    bool new_field = p->in_value || !p->has_field;
    if (count(p, n + (new_field ? 4 : 0)))
        return 1;
    for (size_t i = 0; i < n; i++) {
        if (!is_tchar((unsigned char)at[i])) {
            p->error = PK_H1_MALFORMED;
            p->error_detail = "invalid character in a field name";
            return 1;
        }
    }
    if (p->in_value)
        flush_field(p);
    append(&p->field, &p->field_len, &p->field_cap, at, n);
    p->has_field = true;
    return 0;
}

/* False when no byte of s is below 0x20 or 0x7f (DEL), eight bytes at a time (the
 * has-less-than and has-zero-byte tests on 64-bit words, exact as a yes/no); true means
 * the bytes are checked one by one (HTAB, a legal value byte, also says true). */
static bool maybe_ctl(const char *s, size_t n)
{
    const uint64_t ones = 0x0101010101010101u, high = ones * 0x80;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, s + i, 8);
        uint64_t del = x ^ (ones * 0x7f);
        if ((((x - ones * 0x20) & ~x) | ((del - ones) & ~del)) & high)
            return true;
    }
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return true;
    }
    return false;
}

static int on_header_value(http_parser *hp, const char *at, size_t n)
{
    struct pk_h1parser *p = P(hp);
    if (count(p, n))
        return 1;
    /* http-parser does not check a value's first byte: no control character but HTAB
     * (RFC 9110 5.5), so a NUL never truncates a value and nothing odd is passed on. */
    bool suspect = maybe_ctl(at, n);
    for (size_t i = 0; suspect && i < n; i++) {
        unsigned char c = (unsigned char)at[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            p->error = PK_H1_MALFORMED;
            p->error_detail = "control character in a field value";
            return 1;
        }
    }

    p->in_value = true;
    append(&p->value, &p->value_len, &p->value_cap, at, n);
    return 0;
}

/* Splits the request target: absolute-form gives the authority and the path. */
static int set_target(struct pk_h1parser *p)
{
    struct http_parser_url u;
    const char *url = p->url_len ? p->url : "";
    if (p->hp.method == HTTP_CONNECT) {
        pk_head_set(&p->head.authority, url, p->url_len);
        return 0;
    }
    if (url[0] == '/' || url[0] == '*') {
        pk_head_set(&p->head.path, url, p->url_len);
        return 0;
    }
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, p->url_len, 0, &u) != 0 || !(u.field_set & (1 << UF_HOST)))
        return -1;
    size_t start = u.field_data[UF_HOST].off;
    size_t end = start + u.field_data[UF_HOST].len;
    if (start > 0 && url[start - 1] == '[') { /* keep IPv6 brackets */
        start--;
        end++;
    }
    if (u.field_set & (1 << UF_PORT))
        end = u.field_data[UF_PORT].off + u.field_data[UF_PORT].len;
    size_t len = end - start;
    pk_head_set(&p->head.authority, url + start, len);
    if (u.field_set & (1 << UF_PATH)) {
        size_t off = u.field_data[UF_PATH].off;
        pk_head_set(&p->head.path, url + off, p->url_len - off);
    } else {
        const char *q = strchr(url + end, '?');
        char *path = q ? pk_xasprintf("/%s", q) : pk_xstrdup("/");
        pk_head_set(&p->head.path, path, strlen(path));
        free(path);
    }
    return 0;
}

/* Request smuggling defences beyond http-parser's (which already refuses Content-Length
 * with Transfer-Encoding and repeated or malformed Content-Length): one Transfer-Encoding
 * field, and it says exactly "chunked" — the proxy re-frames bodies and cannot apply or
 * carry other codings (RFC 9112 6.1: 501). */
static int check_transfer_encoding(struct pk_h1parser *p)
{
    const char *te = NULL;
    size_t n = 0;
    for (size_t i = 0; i < p->head.hdrs.n; i++) {
        if (strcmp(p->head.hdrs.v[i].name, "transfer-encoding") == 0) {
            te = p->head.hdrs.v[i].value;
            n++;
        }
    }
    if (n > 1) {
        p->error = PK_H1_MALFORMED;
        p->error_detail = "repeated transfer-encoding";
        return -1;
    }
    if (te && !pk_strcaseeq(te, "chunked")) {
        p->error = PK_H1_NOT_IMPLEMENTED;
        p->error_detail = "transfer coding not implemented";
        return -1;
    }
    return 0;
}

static int on_headers_complete(http_parser *hp)
{
    struct pk_h1parser *p = P(hp);
    flush_field(p);
    p->head_done = true;
    p->http_minor = hp->http_minor;
    p->keep_alive = http_should_keep_alive(hp) != 0;
    /* http-parser sets upgrade before this callback; a request with a body is parsed as
     * an ordinary message (RFC 9110 7.8) and only then would it stop. */
    bool has_body =
        (hp->flags & F_CHUNKED) || (hp->content_length > 0 && hp->content_length != ULLONG_MAX);
    p->upgrade =
        hp->upgrade && (hp->method == HTTP_CONNECT || !has_body || hp->type == HTTP_RESPONSE);
    p->chunked = (hp->flags & F_CHUNKED) != 0;
    p->has_length = !p->chunked && hp->content_length != ULLONG_MAX;
    p->content_length = p->has_length ? hp->content_length : 0;
    if (hp->type == HTTP_REQUEST && check_transfer_encoding(p) != 0)
        return -1;
    if (hp->type == HTTP_REQUEST) {
        const char *m = http_method_str((enum http_method)hp->method);
        pk_head_set(&p->head.method, m, strlen(m));
        if (set_target(p) != 0) {
            p->error = PK_H1_MALFORMED;
            p->error_detail = "bad request target";
            return -1;
        }
    } else {
        p->head.status = (int)hp->status_code;
    }
    bool skip = p->cbs->on_head ? p->cbs->on_head(p, p->ud) : false;
    return skip ? 1 : 0;
}

static int on_body(http_parser *hp, const char *at, size_t n)
{
    struct pk_h1parser *p = P(hp);
    if (p->cbs->on_body)
        p->cbs->on_body(p, at, n, p->ud);
    return 0;
}

static int on_message_complete(http_parser *hp)
{
    struct pk_h1parser *p = P(hp);
    flush_field(p);
    p->message_done = true;
    if (p->cbs->on_complete)
        p->cbs->on_complete(p, p->ud);
    http_parser_pause(hp, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void pk_h1parser_init(struct pk_h1parser *p, enum http_parser_type type, size_t max_head,
                      const struct pk_h1parser_cbs *cbs, void *ud)
{
    memset(p, 0, sizeof(*p));
    http_parser_init(&p->hp, type);
    p->hp.data = p;
    p->cbs = cbs;
    p->ud = ud;
    p->max_head = max_head;
}

void pk_h1parser_free(struct pk_h1parser *p)
{
    pk_head_free(&p->head);
    pk_hdrs_free(&p->trailers);
    free(p->url);
    free(p->field);
    free(p->value);
    p->url = p->field = p->value = NULL;
    p->url_len = p->url_cap = p->field_len = p->field_cap = p->value_len = p->value_cap = 0;
    p->has_field = p->in_value = false;
}

/* http-parser (non-strict build) accepts any letters where "HTTP" belongs; the version
 * token of a request line is checked here: the line must end in " HTTP/1.0" or
 * " HTTP/1.1". Empty lines before a request are skipped (RFC 9112 2.2). */
/* Keeps the last sizeof(p->line) bytes of the request line seen so far. */
static void line_tail(struct pk_h1parser *p, const char *s, size_t n)
{
    const size_t cap = sizeof(p->line);
    if (n >= cap) {
        memcpy(p->line, s + n - cap, cap);
        p->line_len = cap;
        return;
    }
    if (p->line_len + n > cap) { /* longer than we keep: check the tail only */
        size_t drop = p->line_len + n - cap;
        memmove(p->line, p->line + drop, p->line_len - drop);
        p->line_len -= drop;
    }
    memcpy(p->line + p->line_len, s, n);
    p->line_len += n;
}

static int check_request_line(struct pk_h1parser *p, const char *data, size_t len)
{
    size_t i = 0;
    while (i < len && !p->line_checked) {
        const char *nl = memchr(data + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - data) : len;
        line_tail(p, data + i, end - i);
        if (!nl)
            break;
        i = end + 1;
        size_t l = p->line_len;
        if (l && p->line[l - 1] == '\r')
            l--;
        if (l == 0) {
            p->line_len = 0;
            continue;
        }
        p->line_checked = true;
        if (l < 10 || memcmp(p->line + l - 9, " HTTP/1.", 8) != 0 ||
            (p->line[l - 1] != '0' && p->line[l - 1] != '1')) {
            p->error = PK_H1_MALFORMED;
            p->error_detail = "bad request line";
            return -1;
        }
    }
    return 0;
}

/* http-parser accepts obsolete line folding (a field line starting with SP or HTAB) and
 * joins it into the value, and in its non-strict build takes a bare CR followed by any
 * byte as a line end (swallowing the byte). RFC 9112 lets a recipient reject both, and a
 * proxy must not pass them on. The head's bytes are scanned before the parser sees them,
 * with the state kept across feeds: 0 message start (CR/LF before the request line are
 * skipped), 1 inside a line, 2 just after LF, 3 after LF CR, 4 after CR inside a line.
 * The scan stops at the empty line. */
static int scan_head(struct pk_h1parser *p, const char *data, size_t len)
{
    for (size_t i = 0; i < len && !p->head_scanned; i++) {
        char c = data[i];
        switch (p->scan_state) {
        case 0:
            if (c != '\r' && c != '\n')
                p->scan_state = 1;
            break;
        case 1: {
            /* Inside a line only CR and LF matter: skip to the first of them. */
            const char *nl = memchr(data + i, '\n', len - i);
            size_t end = nl ? (size_t)(nl - data) : len;
            const char *cr = memchr(data + i, '\r', end - i);
            if (cr)
                end = (size_t)(cr - data);
            if (end == len) {
                i = len;
                continue;
            }
            i = end;
            p->scan_state = data[i] == '\n' ? 2 : 4;
            break;
        }
        case 4:
            if (c != '\n') {
                p->error = PK_H1_MALFORMED;
                p->error_detail = "bare CR in the head";
                return -1;
            }
            p->scan_state = 2;
            break;
        case 2:
            if (c == ' ' || c == '\t') {
                p->error = PK_H1_MALFORMED;
                p->error_detail = "obsolete line folding";
                return -1;
            }
            p->scan_state = c == '\r' ? 3 : c == '\n' ? 0 : 1;
            p->head_scanned = c == '\n';
            break;
        default: /* 3: LF CR, the empty line unless a bare CR */
            if (c != '\n') {
                p->error = PK_H1_MALFORMED;
                p->error_detail = "bare CR in the head";
                return -1;
            }
            p->head_scanned = true;
            break;
        }
    }
    return 0;
}

ssize_t pk_h1parser_feed(struct pk_h1parser *p, const char *data, size_t len)
{
    if (p->error)
        return -1;
    if (p->message_done || (p->upgrade && p->head_done))
        return 0;
    if (!p->line_checked && p->hp.type == HTTP_REQUEST && check_request_line(p, data, len) != 0)
        return -1;
    if (!p->head_scanned && p->hp.type == HTTP_REQUEST && scan_head(p, data, len) != 0)
        return -1;
    size_t n = http_parser_execute(&p->hp, &settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&p->hp);
    if (e != HPE_OK && e != HPE_PAUSED) {
        if (!p->error) {
            p->error = e == HPE_HEADER_OVERFLOW ? PK_H1_HEAD_TOO_LARGE : PK_H1_MALFORMED;
            p->error_detail = http_errno_description(e);
        }
        return -1;
    }
    if (p->upgrade) {
        if (!p->message_done) {
            p->message_done = true;
            if (p->cbs->on_complete)
                p->cbs->on_complete(p, p->ud);
        }
    }
    return (ssize_t)n;
}

int pk_h1parser_eof(struct pk_h1parser *p)
{
    if (p->error)
        return -1;
    if (p->message_done)
        return 0;
    http_parser_execute(&p->hp, &settings, NULL, 0);
    enum http_errno e = HTTP_PARSER_ERRNO(&p->hp);
    if ((e == HPE_OK || e == HPE_PAUSED) && p->message_done)
        return 0;
    p->error = PK_H1_MALFORMED;
    p->error_detail = "connection closed before the message was complete";
    return -1;
}

void pk_h1parser_next(struct pk_h1parser *p)
{
    p->line_checked = false;
    p->head_scanned = false;
    p->scan_state = 0;
    p->line_len = 0;
    p->message_done = false;
    p->head_done = false;
    http_parser_pause(&p->hp, 0);
}

/* Heads are serialised into one block and added with a single evbuffer_add: each add to
 * a bufferevent's output runs its callbacks. */
static size_t fields_len(const struct pk_hdrs *h)
{
    return h->bytes + h->n * 4;
}

static char *put_fields(char *p, const struct pk_hdrs *h)
{
    for (size_t i = 0; i < h->n; i++) {
        memcpy(p, h->v[i].name, h->v[i].nlen);
        p += h->v[i].nlen;
        *p++ = ':';
        *p++ = ' ';
        memcpy(p, h->v[i].value, h->v[i].vlen);
        p += h->v[i].vlen;
        *p++ = '\r';
        *p++ = '\n';
    }
    return p;
}

/* The head's first lines as pieces, joined in add_head (no format string on the request
 * path: a head costs one copy). */
struct piece {
    const char *s;
    size_t len;
};

static void add_head_pieces(struct evbuffer *out, const struct piece *pc, size_t npc,
                            const struct pk_hdrs *h)
{
    size_t cap = fields_len(h) + 2;
    for (size_t i = 0; i < npc; i++)
        cap += pc[i].len;
    char stackbuf[4096];
    char *buf = cap <= sizeof(stackbuf) ? stackbuf : pk_xmalloc(cap);
    char *p = buf;
    for (size_t i = 0; i < npc; i++) {
        memcpy(p, pc[i].s, pc[i].len);
        p += pc[i].len;
    }
    p = put_fields(p, h);
    *p++ = '\r';
    *p++ = '\n';
    evbuffer_add(out, buf, (size_t)(p - buf));
    if (buf != stackbuf)
        free(buf);
}

static void add_head(struct evbuffer *out, const char *line, size_t linelen,
                     const struct pk_hdrs *h)
{
    struct piece pc = {line, linelen};
    add_head_pieces(out, &pc, 1, h);
}

static struct piece piece(const char *s)
{
    return (struct piece){s, strlen(s)};
}

void pk_h1_write_request_head(struct evbuffer *out, const struct pk_head *h)
{
    struct piece pc[] = {piece(h->method),       piece(" "),      piece(h->path ? h->path : "/"),
                         piece(" HTTP/1.1\r\n"), piece("host: "), piece(""),
                         piece("\r\n")};
    size_t npc = 4;
    if (h->authority) {
        pc[5] = piece(h->authority);
        npc = PK_ARRAY_LEN(pc);
    }
    add_head_pieces(out, pc, npc, &h->hdrs);
}

void pk_h1_write_response_head(struct evbuffer *out, const struct pk_head *h, int http_minor)
{
    /* A status is three digits (RFC 9110 15): written without a format string. */
    if (h->status < 100 || h->status > 999) {
        char line[128];
        int n = snprintf(line, sizeof(line), "HTTP/1.%d %d %s\r\n", http_minor ? 1 : 0, h->status,
                         pk_h1_reason(h->status));
        add_head(out, line, (size_t)n, &h->hdrs);
        return;
    }
    unsigned st = (unsigned)h->status;
    char line[] = "HTTP/1.1 200 ";
    line[7] = http_minor ? '1' : '0';
    line[9] = (char)('0' + st / 100);
    line[10] = (char)('0' + st / 10 % 10);
    line[11] = (char)('0' + st % 10);
    const char *reason = pk_h1_reason(h->status);
    struct piece pc[] = {{line, sizeof(line) - 1}, piece(reason), piece("\r\n")};
    add_head_pieces(out, pc, PK_ARRAY_LEN(pc), &h->hdrs);
}

void pk_h1_write_chunk(struct evbuffer *out, struct evbuffer *data, size_t len)
{
    if (len == 0)
        return;
    evbuffer_add_printf(out, "%zx\r\n", len);
    evbuffer_remove_buffer(data, out, len);
    evbuffer_add(out, "\r\n", 2);
}

void pk_h1_write_last_chunk(struct evbuffer *out, const struct pk_hdrs *trailers)
{
    static const struct pk_hdrs none;
    add_head(out, "0\r\n", 3, trailers ? trailers : &none);
}

bool pk_h1_pump_body(struct evbuffer *out, struct pk_pipe *p, bool chunked, size_t hwm)
{
    size_t len;
    while ((len = pk_pipe_len(p)) > 0 && evbuffer_get_length(out) < hwm) {
        size_t n = PK_MIN(len, hwm - evbuffer_get_length(out));
        if (chunked) {
            evbuffer_add_printf(out, "%zx\r\n", n);
            pk_pipe_move(p, out, n);
            evbuffer_add(out, "\r\n", 2);
        } else {
            pk_pipe_move(p, out, n);
        }
    }
    if (!pk_pipe_done(p))
        return false;
    if (chunked)
        pk_h1_write_last_chunk(out, p->has_trailers ? &p->trailers : NULL);
    return true;
}

const char *pk_h1_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 426:
        return "Upgrade Required";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Status";
    }
}

static bool is_hop_by_hop(const char *name)
{
    switch (name[0]) {
    case 'c':
        return strcmp(name, "connection") == 0;
    case 'k':
        return strcmp(name, "keep-alive") == 0;
    case 'p':
        return strcmp(name, "proxy-connection") == 0;
    case 't':
        return strcmp(name, "transfer-encoding") == 0;
    case 'u':
        return strcmp(name, "upgrade") == 0;
    case 'h':
        return strcmp(name, "host") == 0;
    default:
        return false;
    }
}

void pk_h1_strip_hop_by_hop(struct pk_hdrs *h, bool keep_te_trailers)
{
    /* Fields named by Connection are hop-by-hop too; collect the names first, since
     * deleting compacts the array. Most messages have no Connection field. */
    bool te_trailers = keep_te_trailers && pk_hdrs_has_token(h, "te", "trailers");
    size_t total = 0;
    for (size_t i = 0; i < h->n; i++)
        if (strcmp(h->v[i].name, "connection") == 0)
            total += h->v[i].vlen + 1;
    if (total) { /* the values joined with commas, on the stack when they are short */
        char stackbuf[256];
        char *names = total + 1 <= sizeof(stackbuf) ? stackbuf : pk_xmalloc(total + 1);
        size_t at = 0;
        for (size_t i = 0; i < h->n; i++) {
            if (strcmp(h->v[i].name, "connection") == 0) {
                names[at++] = ',';
                memcpy(names + at, h->v[i].value, h->v[i].vlen);
                at += h->v[i].vlen;
            }
        }
        names[at] = '\0';
        char *save = NULL;
        for (char *tok = strtok_r(names, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
            for (char *c = tok; *c; c++)
                if (*c >= 'A' && *c <= 'Z')
                    *c = (char)(*c + 32);
            if (strcmp(tok, "te") != 0)
                pk_hdrs_del(h, tok);
        }
        if (names != stackbuf)
            free(names);
    }
    size_t out = 0;
    bool had_te = false;
    for (size_t i = 0; i < h->n; i++) {
        struct pk_hdr *f = &h->v[i];
        bool te = strcmp(f->name, "te") == 0;
        had_te = had_te || te;
        if (te || is_hop_by_hop(f->name)) {
            h->bytes -= f->nlen + f->vlen; /* its strings are freed with the list */
            continue;
        }
        h->v[out++] = *f;
    }
    h->n = out;
    /* TE survives only as "trailers" (PROTOCOL.md 1.4). */
    if (had_te && te_trailers)
        pk_hdrs_add_str(h, "te", "trailers");
}

char *pk_json_error_body(const char *msg, size_t *len)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "error", json_object_new_string(msg ? msg : ""));
    char *body =
        pk_xasprintf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                                   JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
    if (len)
        *len = strlen(body);
    return body;
}

ssize_t pk_h1parser_feed_evbuffer(struct pk_h1parser *p, struct evbuffer *in, size_t max)
{
    size_t want = evbuffer_get_length(in);
    if (max && max < want)
        want = max;
    struct evbuffer_iovec v[16];
    int nv = evbuffer_peek(in, (ev_ssize_t)want, NULL, v, 16);
    size_t done = 0;
    for (int i = 0; i < nv && i < 16 && done < want; i++) {
        size_t len = PK_MIN(v[i].iov_len, want - done);
        ssize_t n = pk_h1parser_feed(p, v[i].iov_base, len);
        if (n < 0) {
            evbuffer_drain(in, done);
            return -1;
        }
        done += (size_t)n;
        if ((size_t)n < len)
            break;
    }
    evbuffer_drain(in, done);
    return (ssize_t)done;
}
