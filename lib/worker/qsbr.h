/* qsbr: read-mostly data shared by worker loops, replaced by publishing a new version and
 * freed once no thread can still be reading the old one (quiescent-state-based
 * reclamation, docs/architecture/workers.md).
 *
 * Readers take no lock and no reference: a reader loads the published pointer (acquire)
 * and may use what it points to until its next quiescent state, which it declares between
 * two rounds of its loop, when it holds no such pointer. The one writer replaces the
 * pointer, retires the old version, and frees it once every reader has declared a
 * quiescent state since. A reader that sleeps long (an idle loop) delays the freeing, not
 * the writer: pk_qsbr_reclaim says how many versions wait, and the writer may wake the
 * laggards (a message to their mailbox makes them run a round). */
#ifndef PK_QSBR_H
#define PK_QSBR_H

#include <stdatomic.h>
#include <stddef.h>

struct pk_qsbr;

/* A domain of nreaders reader threads, numbered 0..nreaders-1 (the writer, if it reads
 * too, is one of them). */
struct pk_qsbr *pk_qsbr_new(size_t nreaders);
/* Frees what is still retired (every reader must be done), then the domain. */
void pk_qsbr_free(struct pk_qsbr *q);

/* Reader `reader`: holds no pointer to published data now. Cheap: two atomic operations. */
void pk_qsbr_quiescent(struct pk_qsbr *q, size_t reader);

/* Writer: replaces *slot with next and retires the old value (freed with free_fn once
 * every reader has passed a quiescent state; NULL old values are not retired). */
void pk_qsbr_publish(struct pk_qsbr *q, _Atomic(void *) *slot, void *next, void (*free_fn)(void *));
/* Reader: the published value (acquire). */
static inline void *pk_qsbr_read(_Atomic(void *) *slot)
{
    return atomic_load_explicit(slot, memory_order_acquire);
}

/* Writer: frees every retired version no reader can still see. Returns how many are left
 * waiting for a reader's quiescent state. */
size_t pk_qsbr_reclaim(struct pk_qsbr *q);

#endif
