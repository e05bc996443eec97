/* http1: HTTP/1.1 messages on top of http-parser (never a hand-written parser).
 *
 * pk_h1parser turns bytes into a pk_head, body chunks (chunked framing already decoded)
 * and trailers. It stops after each complete message (or after the head of an upgrade)
 * so that a keep-alive connection handles one exchange at a time, pipelined bytes stay
 * in the caller's buffer; pk_h1parser_next() arms it for the next message.
 *
 * The writers serialise heads and chunked framing into an evbuffer. */
#ifndef PK_HTTP1_H
#define PK_HTTP1_H

#include "stream/head.h"
#include "stream/pipe.h"

#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct evbuffer;

enum pk_h1_error {
    PK_H1_OK = 0,
    PK_H1_MALFORMED,      /* the parser rejected the bytes */
    PK_H1_HEAD_TOO_LARGE, /* head above max_head bytes */
    PK_H1_NOT_IMPLEMENTED /* a transfer coding other than chunked (501) */
};

struct pk_h1parser;

struct pk_h1parser_cbs {
    /* The head is complete (p->head). Return true to parse no body (a response to HEAD). */
    bool (*on_head)(struct pk_h1parser *p, void *ud);
    void (*on_body)(struct pk_h1parser *p, const char *data, size_t len, void *ud);
    /* The message is complete; trailers, if any, are in p->trailers. */
    void (*on_complete)(struct pk_h1parser *p, void *ud);
};

struct pk_h1parser {
    http_parser hp;
    const struct pk_h1parser_cbs *cbs;
    void *ud;
    size_t max_head;
    size_t head_bytes;
    struct pk_head head;
    struct pk_hdrs trailers;
    /* Accumulated across callbacks (a token may arrive in pieces); the buffers are kept
     * from field to field and from message to message, and freed by pk_h1parser_free. */
    char *url; /* request target as received, always terminated once allocated */
    size_t url_len, url_cap;
    char *field; /* field name being accumulated */
    size_t field_len, field_cap;
    char *value; /* field value being accumulated */
    size_t value_len, value_cap;
    bool has_field; /* a field name was started and not yet added */
    bool in_value;
    bool head_done;
    bool message_done;
    bool upgrade;    /* the message asked for an upgrade (parser stops after its head) */
    bool keep_alive; /* valid after the head */
    bool chunked;    /* the body uses chunked framing */
    bool has_length; /* content-length was given */
    uint64_t content_length;
    int http_minor;
    char line[16]; /* tail of the request line, for the version check */
    size_t line_len;
    bool line_checked;
    bool head_scanned; /* the obsolete-line-folding scan reached the end of the head */
    int scan_state;
    enum pk_h1_error error;
    const char *error_detail;
};

/* type is HTTP_REQUEST or HTTP_RESPONSE. */
void pk_h1parser_init(struct pk_h1parser *p, enum http_parser_type type, size_t max_head,
                      const struct pk_h1parser_cbs *cbs, void *ud);
void pk_h1parser_free(struct pk_h1parser *p);
/* Feeds bytes. Returns the number consumed (it stops early after a complete message or
 * the head of an upgrade) or -1 on an error (see p->error). */
ssize_t pk_h1parser_feed(struct pk_h1parser *p, const char *data, size_t len);
/* Feeds up to max bytes (0: all) from the front of in, segment by segment without
 * pulling them up into one block, and drains what the parser consumed. Returns that
 * count (it stops early where pk_h1parser_feed does) or -1 on an error (see p->error).
 * The parser's callbacks see pointers into in's segments: they must copy what they keep
 * and must not touch in. */
ssize_t pk_h1parser_feed_evbuffer(struct pk_h1parser *p, struct evbuffer *in, size_t max);
/* Tells the parser the peer closed: completes a close-delimited body. Returns 0 or -1. */
int pk_h1parser_eof(struct pk_h1parser *p);
/* Arms the parser for the next message on the same connection. */
void pk_h1parser_next(struct pk_h1parser *p);

/* Writers. */
void pk_h1_write_request_head(struct evbuffer *out, const struct pk_head *h);
/* Writes the status line and fields (no framing fields are added). */
void pk_h1_write_response_head(struct evbuffer *out, const struct pk_head *h, int http_minor);
void pk_h1_write_chunk(struct evbuffer *out, struct evbuffer *data, size_t len);
void pk_h1_write_last_chunk(struct evbuffer *out, const struct pk_hdrs *trailers);
const char *pk_h1_reason(int status);
/* The JSON error body of every error answer (PROTOCOL.md 4): {"error":"<msg>"} and a
 * newline, built by json-c so any message is escaped. Returns a malloc'd string; *len (may
 * be NULL) gets its length. */
char *pk_json_error_body(const char *msg, size_t *len);

/* Moves body bytes from p to out, framed as a chunked body or as they are, while out
 * holds less than hwm. Returns true once the body is complete: the end of p was reached
 * (for chunked framing the last chunk and p's trailers are written too). */
bool pk_h1_pump_body(struct evbuffer *out, struct pk_pipe *p, bool chunked, size_t hwm);

/* Hop-by-hop handling (PROTOCOL.md 1.4): removes Connection and every field it names,
 * Keep-Alive, Proxy-Connection, TE (unless te_trailers_ok and it is "trailers"),
 * Transfer-Encoding, Upgrade and Host. */
void pk_h1_strip_hop_by_hop(struct pk_hdrs *h, bool keep_te_trailers);

#endif
