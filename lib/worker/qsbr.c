/* qsbr: see qsbr.h.
 *
 * A global epoch counts retirements. Retiring a version takes the next epoch e; a reader's
 * quiescent state records the epoch it sees then. Once every reader has recorded e or
 * later, each of them has been quiescent after the version was unpublished (the
 * publishing exchange precedes the epoch's increment, and a reader that sees the new epoch
 * sees the new pointer from then on), so none can hold it: it is freed. All epoch accesses
 * are sequentially consistent. */
#include "worker/qsbr.h"

#include "base/base.h"

#include <stdint.h>
#include <stdlib.h>

struct retired {
    void *p;
    void (*free_fn)(void *);
    uint64_t epoch;
    struct retired *next;
};

/* One cache line per reader, so that readers do not slow each other down. */
struct reader_epoch {
    _Atomic uint64_t seen;
    char pad[64 - sizeof(uint64_t)];
};

struct pk_qsbr {
    _Atomic uint64_t epoch;
    size_t nreaders;
    struct reader_epoch *readers;
    struct retired *retired; /* the writer's, newest first */
};

struct pk_qsbr *pk_qsbr_new(size_t nreaders)
{
    struct pk_qsbr *q = pk_xcalloc(1, sizeof(*q));
    atomic_init(&q->epoch, 0);
    q->nreaders = nreaders;
    q->readers = pk_xcalloc(nreaders ? nreaders : 1, sizeof(*q->readers));
    for (size_t i = 0; i < nreaders; i++)
        atomic_init(&q->readers[i].seen, 0);
    return q;
}

void pk_qsbr_quiescent(struct pk_qsbr *q, size_t reader)
{
    atomic_store(&q->readers[reader].seen, atomic_load(&q->epoch));
}

void pk_qsbr_publish(struct pk_qsbr *q, _Atomic(void *) *slot, void *next, void (*free_fn)(void *))
{
    void *old = atomic_exchange(slot, next);
    if (!old)
        return;
    struct retired *r = pk_xmalloc(sizeof(*r));
    r->p = old;
    r->free_fn = free_fn;
    r->epoch = atomic_fetch_add(&q->epoch, 1) + 1;
    r->next = q->retired;
    q->retired = r;
}

size_t pk_qsbr_reclaim(struct pk_qsbr *q)
{
    uint64_t min = UINT64_MAX;
    for (size_t i = 0; i < q->nreaders; i++) {
        uint64_t seen = atomic_load(&q->readers[i].seen);
        if (seen < min)
            min = seen;
    }
    size_t left = 0;
    struct retired **pp = &q->retired;
    while (*pp) {
        struct retired *r = *pp;
        if (r->epoch <= min) {
            *pp = r->next;
            r->free_fn(r->p);
            free(r);
        } else {
            left++;
            pp = &r->next;
        }
    }
    return left;
}

void pk_qsbr_free(struct pk_qsbr *q)
{
    if (!q)
        return;
    while (q->retired) {
        struct retired *r = q->retired;
        q->retired = r->next;
        r->free_fn(r->p);
        free(r);
    }
    free(q->readers);
    free(q);
}
