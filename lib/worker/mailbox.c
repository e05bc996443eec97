/* mailbox: see mailbox.h.
 *
 * The queue (Dmitry Vyukov's intrusive MPSC node-based queue): producers exchange the
 * head pointer and then link the previous head to their node; the consumer walks from
 * the tail. Between a producer's exchange and its link the list is briefly cut: the
 * consumer then sees "empty" and stops, and the producer's wake-up, which comes after its
 * link, brings it back.
 *
 * Wake-ups: `pending` is true from the moment a sender decided to write the eventfd until
 * the loop starts draining. A sender writes the eventfd only when it turns pending from
 * false to true; the loop turns it back to false (an atomic exchange, which also makes
 * every push completed before it visible) before it drains. So a message is either seen
 * by a drain that follows its push, or its sender wakes the loop again. */
#include "worker/mailbox.h"

#include "base/base.h"

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Messages run per wake-up before the loop gets to its other events. */
#define BATCH 1024

struct pk_mailbox {
    _Atomic(struct pk_msg *) head; /* producers: the last message pushed */
    struct pk_msg *tail;           /* the consumer: the next message to run */
    struct pk_msg stub;
    atomic_bool pending;
    int efd;
    struct event *ev;
    void *arg;
};

static void push(struct pk_mailbox *b, struct pk_msg *m)
{
    atomic_store_explicit(&m->next, NULL, memory_order_relaxed);
    struct pk_msg *prev = atomic_exchange_explicit(&b->head, m, memory_order_acq_rel);
    atomic_store_explicit(&prev->next, m, memory_order_release);
}

/* The next message, or NULL when there is none (or a push is half done: its sender will
 * wake the loop again). */
static struct pk_msg *pop(struct pk_mailbox *b)
{
    struct pk_msg *tail = b->tail;
    struct pk_msg *next = atomic_load_explicit(&tail->next, memory_order_acquire);
    if (tail == &b->stub) {
        if (!next)
            return NULL;
        b->tail = next;
        tail = next;
        next = atomic_load_explicit(&next->next, memory_order_acquire);
    }
    if (next) {
        b->tail = next;
        return tail;
    }
    if (tail != atomic_load_explicit(&b->head, memory_order_acquire))
        return NULL;
    /* tail is the last message: put the stub behind it so that it can be taken. */
    push(b, &b->stub);
    next = atomic_load_explicit(&tail->next, memory_order_acquire);
    if (next) {
        b->tail = next;
        return tail;
    }
    return NULL;
}

size_t pk_mailbox_run(struct pk_mailbox *b, size_t max)
{
    size_t n = 0;
    struct pk_msg *m;
    while ((!max || n < max) && (m = pop(b)) != NULL) {
        m->fn(m, b->arg);
        n++;
    }
    return n;
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pk_mailbox *b = arg;
    PK_UNUSED(what);
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof(v)); /* resets the counter; EAGAIN after an event_active */
    PK_UNUSED(r);
    atomic_exchange_explicit(&b->pending, false, memory_order_acq_rel);
    if (pk_mailbox_run(b, BATCH) == BATCH)
        event_active(b->ev, EV_READ, 0); /* more may wait: after the loop's other events */
}

struct pk_mailbox *pk_mailbox_new(struct event_base *base, void *arg)
{
    struct pk_mailbox *b = pk_xcalloc(1, sizeof(*b));
    atomic_init(&b->stub.next, NULL);
    atomic_init(&b->head, &b->stub);
    b->tail = &b->stub;
    atomic_init(&b->pending, false);
    b->arg = arg;
    b->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (b->efd >= 0)
        b->ev = event_new(base, b->efd, EV_READ | EV_PERSIST, wake_cb, b);
    if (!b->ev || event_add(b->ev, NULL) != 0) {
        if (b->ev)
            event_free(b->ev);
        if (b->efd >= 0)
            close(b->efd);
        free(b);
        return NULL;
    }
    return b;
}

void pk_mailbox_send(struct pk_mailbox *b, struct pk_msg *m)
{
    push(b, m);
    if (!atomic_exchange_explicit(&b->pending, true, memory_order_acq_rel)) {
        uint64_t one = 1;
        /* Cannot fail but for a counter at its maximum, which a pending wake-up implies. */
        ssize_t w = write(b->efd, &one, sizeof(one));
        PK_UNUSED(w);
    }
}

void pk_mailbox_free(struct pk_mailbox *b)
{
    if (!b)
        return;
    void *arg = b->arg;
    b->arg = NULL;
    pk_mailbox_run(b, 0);
    b->arg = arg;
    event_free(b->ev);
    close(b->efd);
    free(b);
}
