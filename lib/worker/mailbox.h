/* mailbox: messages from any thread to one event loop, without a lock.
 *
 * The building block of worker loops (docs/architecture/workers.md): a loop owns a
 * mailbox; any thread sends it messages; the loop runs each message's handler, in the
 * order each sender sent them, from an event of its own. A message is the sender's
 * allocation (embed struct pk_msg first in a larger struct); ownership passes with it,
 * so whatever it carries (an evbuffer, a head) is touched by one thread at a time.
 *
 * The queue is Vyukov's intrusive multi-producer single-consumer list: a send is one
 * atomic exchange and one store, never a lock and never a wait; the loop is woken through
 * an eventfd written only when the mailbox goes from idle to busy, so a burst of messages
 * costs one wake-up. */
#ifndef PK_MAILBOX_H
#define PK_MAILBOX_H

#include <stdatomic.h>
#include <stddef.h>

struct event_base;
struct pk_mailbox;
struct pk_msg;

/* Runs on the mailbox's loop with the mailbox's arg; owns m from then on (frees or
 * reuses it). At pk_mailbox_free, messages never delivered are handed over with arg NULL:
 * free them and touch nothing else. */
typedef void (*pk_msg_fn)(struct pk_msg *m, void *arg);

struct pk_msg {
    _Atomic(struct pk_msg *) next; /* the queue's link: the sender need not set it */
    pk_msg_fn fn;
};

/* A mailbox whose messages run on base (the owner's loop, which must be running for
 * messages to be delivered). NULL when the eventfd or the event cannot be made. */
struct pk_mailbox *pk_mailbox_new(struct event_base *base, void *arg);

/* From any thread, the owner's included: queues m (m->fn set by the caller). Messages
 * of one sending thread run in the order they were sent. Never blocks; never fails. */
void pk_mailbox_send(struct pk_mailbox *b, struct pk_msg *m);

/* Runs what is queued now (at most max messages, 0: no bound), on the owner's thread.
 * Returns the number run. The loop does this by itself; for tests and teardown. */
size_t pk_mailbox_run(struct pk_mailbox *b, size_t max);

/* On the owner's thread, once no other thread sends any more: every message still queued
 * gets fn(m, NULL), then the mailbox is freed. NULL is a no-op. */
void pk_mailbox_free(struct pk_mailbox *b);

#endif
