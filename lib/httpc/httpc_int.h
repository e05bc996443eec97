/* httpc private: what the loop's client (httpc.c) and the blocking fetch (fetch.c) share.
 * Included by the .c files of lib/httpc only; httpc.h is the module's interface. */
#ifndef PK_HTTPC_INT_H
#define PK_HTTPC_INT_H

#include <stdbool.h>
#include <stddef.h>

/* A response body kept as it arrives, bounded while it arrives. */
struct httpc_body {
    char *data; /* cap + 1 bytes, NUL-terminated; NULL while empty */
    size_t len, cap;
    size_t max;   /* the bound */
    bool too_big; /* bytes past max were refused */
};

/* libcurl's CURLOPT_WRITEFUNCTION for a struct httpc_body (CURLOPT_WRITEDATA): keeps the
 * bytes, or refuses them past the bound (too_big set), which aborts the transfer with
 * CURLE_WRITE_ERROR. */
size_t httpc_body_write(char *ptr, size_t size, size_t nmemb, void *body);

#endif
