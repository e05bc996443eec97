/* The bearer tokens the sidecar sends (docs/manage/security.md): --connect.token or
 * --connect.token-file on tunnel handshakes, --forward.token or --forward.token-file on
 * forwarded connections. A token file is read again at every dial, so a token refreshed
 * on disk (a Kubernetes projected token, a vault agent) is used by the next tunnel. */
#include "base/base.h"
#include "http1/http1.h"
#include "sidecar/sidecar_int.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The server refuses longer tokens (PK_AUTH_DEFAULT_MAX_TOKEN_LEN). */
#define MAX_TOKEN_BYTES (16 * 1024)

static bool set(const char *s)
{
    return s && *s;
}

/* A token goes into a header line: one word of visible ASCII, nothing that could end the
 * line or the field. Blanks around it (a file's final newline) are trimmed by the caller. */
static bool token_ok(const char *t, size_t len)
{
    if (len == 0 || len > MAX_TOKEN_BYTES)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f)
            return false;
    return true;
}

static char *trimmed(const char *s, size_t len)
{
    while (len && strchr(" \t\r\n", s[0])) {
        s++;
        len--;
    }
    while (len && strchr(" \t\r\n", s[len - 1]))
        len--;
    return pk_xstrndup(s, len);
}

int pk_token_config_check(const char *token, const char *file, const char *opt, char *err,
                          size_t errlen)
{
    if (set(token) && set(file)) {
        snprintf(err, errlen, "%s and %s-file: give one of them", opt, opt);
        return PK_ERR_INVALID;
    }
    if (set(token)) {
        char *t = trimmed(token, strlen(token));
        bool ok = token_ok(t, strlen(t));
        free(t);
        if (!ok) {
            snprintf(err, errlen,
                     "%s: not a token (one word of visible ASCII characters, at most %d bytes)",
                     opt, MAX_TOKEN_BYTES);
            return PK_ERR_INVALID;
        }
    }
    return 0;
}

/* Reads a token file: a regular file of at most MAX_TOKEN_BYTES (plus blanks). O_NONBLOCK:
 * a FIFO named by mistake must not block the loop. */
static int read_token_file(const char *path, char **out, char *err, size_t errlen)
{
    struct stat st;
    int rc = PK_ERR_IO;
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > MAX_TOKEN_BYTES + 64) {
        snprintf(err, errlen, "%s is not a regular file of at most %d bytes", path,
                 MAX_TOKEN_BYTES);
        goto out;
    }
    buf = pk_xmalloc((size_t)st.st_size + 1);
    ssize_t n;
    do {
        n = read(fd, buf, (size_t)st.st_size);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    *out = trimmed(buf, (size_t)n);
    if (!token_ok(*out, strlen(*out))) {
        snprintf(err, errlen, "%s does not hold a token (%s)", path,
                 **out ? "not one word of visible ASCII" : "empty");
        free(*out);
        *out = NULL;
        goto out;
    }
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

int pk_token_get(const char *token, const char *file, char **out, char *err, size_t errlen)
{
    *out = NULL;
    if (set(token)) {
        *out = trimmed(token, strlen(token));
        return 0;
    }
    if (set(file))
        return read_token_file(file, out, err, errlen);
    return 0;
}

const char *pk_error_message(int status, const char *body, size_t len, char *buf, size_t size)
{
    struct json_tokener *tok = json_tokener_new_ex(8);
    struct json_object *o = json_tokener_parse_ex(tok, body, (int)PK_MIN(len, (size_t)4096));
    struct json_object *e = NULL;
    if (o && json_object_is_type(o, json_type_object) &&
        json_object_object_get_ex(o, "error", &e) && json_object_is_type(e, json_type_string)) {
        snprintf(buf, size, "status %d: %.200s", status, json_object_get_string(e));
    } else if (len) {
        snprintf(buf, size, "status %d %s (an answer that is not Piko's)", status,
                 pk_h1_reason(status));
    } else {
        snprintf(buf, size, "status %d %s", status, pk_h1_reason(status));
    }
    json_object_put(o);
    json_tokener_free(tok);
    for (char *c = buf; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c == 0x7f)
            *c = ' ';
    return buf;
}
