/* Helpers shared by the libFuzzer targets of tests/fuzz (docs/fuzzing.md).
 *
 * A target checks invariants with FUZZ_CHECK: a violation prints what broke and aborts,
 * which libFuzzer reports as a crash and saves the input. */
#ifndef PK_FUZZ_H
#define PK_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant violated: %s: ", __FILE__, __LINE__, #cond);         \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Splits the rest of an input into pieces, the way a socket delivers it. The first input
 * byte chooses the pattern: 0 delivers everything at once, otherwise pieces of 1..byte
 * bytes drawn from a generator seeded by that byte, so a crash replays identically. */
struct fuzz_split {
    uint32_t state;
    size_t max;
};

static inline void fuzz_split_init(struct fuzz_split *s, uint8_t selector)
{
    s->state = 0x9e3779b9u ^ selector;
    s->max = selector;
}

/* Size of the next piece when avail bytes are left (at least 1 while avail > 0). */
static inline size_t fuzz_split_next(struct fuzz_split *s, size_t avail)
{
    if (s->max == 0 || avail == 0)
        return avail;
    s->state ^= s->state << 13;
    s->state ^= s->state >> 17;
    s->state ^= s->state << 5;
    size_t n = 1 + s->state % s->max;
    return n < avail ? n : avail;
}

/* A copy of len bytes in its own allocation, so that ASan catches a read past the end of
 * what a parser was given (the input buffer itself goes on). Never NULL. */
static inline char *fuzz_dup(const void *p, size_t len)
{
    char *c = malloc(len ? len : 1);
    if (!c)
        abort();
    if (len)
        memcpy(c, p, len);
    return c;
}

#endif
