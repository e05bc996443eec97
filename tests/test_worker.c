/* lib/worker: the mailbox and the snapshot reclamation, exercised by real threads (run
 * under ThreadSanitizer by `make test-tsan`, under AddressSanitizer by `make test`). */
#include "base/base.h"
#include "worker/mailbox.h"
#include "worker/qsbr.h"

#include <CUnit/CUnit.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void pk_test_register_worker(void);

/* ---- mailbox ----------------------------------------------------------------------- */

#define SENDERS    4
#define PER_SENDER 50000

struct seq_msg {
    struct pk_msg m; /* first */
    int sender;
    uint64_t seq;
};

struct sink {
    struct event_base *base;
    uint64_t next_seq[SENDERS]; /* the loop's own: touched on its thread only */
    uint64_t got, out_of_order, dropped;
    struct pk_mailbox *box;
};

static void on_seq(struct pk_msg *m, void *arg)
{
    struct seq_msg *sm = (struct seq_msg *)m;
    struct sink *s = arg;
    if (!s) {
        free(sm);
        return;
    }
    if (sm->seq != s->next_seq[sm->sender])
        s->out_of_order++;
    s->next_seq[sm->sender] = sm->seq + 1;
    if (++s->got == (uint64_t)SENDERS * PER_SENDER)
        event_base_loopbreak(s->base);
    free(sm);
}

struct sender {
    struct pk_mailbox *box;
    int id;
};

static void *send_all(void *arg)
{
    struct sender *sd = arg;
    for (uint64_t i = 0; i < PER_SENDER; i++) {
        struct seq_msg *sm = pk_xmalloc(sizeof(*sm));
        sm->m.fn = on_seq;
        sm->sender = sd->id;
        sm->seq = i;
        pk_mailbox_send(sd->box, &sm->m);
    }
    return NULL;
}

/* Four threads send 50,000 messages each while the loop runs: every message arrives
 * once, each sender's in order, and the loop is woken by the sends alone. */
static void test_mailbox_many_senders(void)
{
    struct sink s;
    memset(&s, 0, sizeof(s));
    s.base = event_base_new();
    s.box = pk_mailbox_new(s.base, &s);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s.box);
    pthread_t th[SENDERS];
    struct sender sd[SENDERS];
    for (int i = 0; i < SENDERS; i++) {
        sd[i] = (struct sender){s.box, i};
        CU_ASSERT_FATAL(pthread_create(&th[i], NULL, send_all, &sd[i]) == 0);
    }
    /* A safety net only: the test fails, not hangs, if a wake-up were lost. */
    struct timeval limit = {20, 0};
    event_base_loopexit(s.base, &limit);
    event_base_dispatch(s.base);
    for (int i = 0; i < SENDERS; i++)
        pthread_join(th[i], NULL);
    CU_ASSERT_EQUAL(s.got, (uint64_t)SENDERS * PER_SENDER);
    CU_ASSERT_EQUAL(s.out_of_order, 0);
    for (int i = 0; i < SENDERS; i++)
        CU_ASSERT_EQUAL(s.next_seq[i], PER_SENDER);
    pk_mailbox_free(s.box);
    event_base_free(s.base);
}

static int dropped_count;

static void on_drop(struct pk_msg *m, void *arg)
{
    CU_ASSERT_PTR_NULL(arg);
    dropped_count++;
    free(m);
}

/* Messages still queued when the mailbox is freed are handed over with arg NULL;
 * pk_mailbox_run delivers in order and honours its bound. */
static void test_mailbox_run_and_free(void)
{
    struct sink s;
    memset(&s, 0, sizeof(s));
    s.base = event_base_new();
    s.box = pk_mailbox_new(s.base, &s);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s.box);
    for (uint64_t i = 0; i < 10; i++) {
        struct seq_msg *sm = pk_xmalloc(sizeof(*sm));
        sm->m.fn = on_seq;
        sm->sender = 0;
        sm->seq = i;
        pk_mailbox_send(s.box, &sm->m);
    }
    CU_ASSERT_EQUAL(pk_mailbox_run(s.box, 4), 4);
    CU_ASSERT_EQUAL(s.got, 4);
    CU_ASSERT_EQUAL(pk_mailbox_run(s.box, 0), 6);
    CU_ASSERT_EQUAL(s.out_of_order, 0);
    CU_ASSERT_EQUAL(pk_mailbox_run(s.box, 0), 0);
    dropped_count = 0;
    for (int i = 0; i < 3; i++) {
        struct pk_msg *m = pk_xmalloc(sizeof(*m));
        m->fn = on_drop;
        pk_mailbox_send(s.box, m);
    }
    pk_mailbox_free(s.box);
    CU_ASSERT_EQUAL(dropped_count, 3);
    event_base_free(s.base);
}

/* ---- qsbr -------------------------------------------------------------------------- */

#define VERSIONS 20000
#define READERS  2
#define ALIVE    0x5eed5eedu

struct version {
    unsigned magic;
    uint64_t value;
};

static _Atomic uint64_t versions_freed;

static void free_version(void *p)
{
    struct version *v = p;
    v->magic = 0; /* a reader that still used it would see this (or ASan the free) */
    free(v);
    atomic_fetch_add(&versions_freed, 1);
}

struct qsbr_fx {
    struct pk_qsbr *q;
    _Atomic(void *) slot;
    atomic_bool stop;
    uint64_t bad[READERS];
    uint64_t reads[READERS];
};

struct reader_arg {
    struct qsbr_fx *fx;
    size_t id;
};

static void *reader(void *arg)
{
    struct reader_arg *ra = arg;
    struct qsbr_fx *fx = ra->fx;
    uint64_t last = 0;
    while (!atomic_load(&fx->stop)) {
        /* One "loop round": read the published version a few times, then be quiescent. */
        for (int i = 0; i < 8; i++) {
            struct version *v = pk_qsbr_read(&fx->slot);
            if (v->magic != ALIVE || v->value < last)
                fx->bad[ra->id]++;
            last = v->value;
            fx->reads[ra->id]++;
        }
        pk_qsbr_quiescent(fx->q, ra->id);
    }
    pk_qsbr_quiescent(fx->q, ra->id);
    return NULL;
}

/* One writer publishes 20,000 versions while two readers read them: no reader ever sees
 * a freed version or goes back in time, and every retired version is freed once the
 * readers have been quiescent. */
static void test_qsbr_publish_and_reclaim(void)
{
    struct qsbr_fx fx;
    memset(&fx, 0, sizeof(fx));
    atomic_init(&versions_freed, 0);
    fx.q = pk_qsbr_new(READERS);
    struct version *v0 = pk_xmalloc(sizeof(*v0));
    *v0 = (struct version){ALIVE, 0};
    atomic_init(&fx.slot, v0);
    atomic_init(&fx.stop, false);
    pthread_t th[READERS];
    struct reader_arg ra[READERS];
    for (size_t i = 0; i < READERS; i++) {
        ra[i] = (struct reader_arg){&fx, i};
        CU_ASSERT_FATAL(pthread_create(&th[i], NULL, reader, &ra[i]) == 0);
    }
    size_t max_waiting = 0;
    for (uint64_t n = 1; n <= VERSIONS; n++) {
        struct version *v = pk_xmalloc(sizeof(*v));
        *v = (struct version){ALIVE, n};
        pk_qsbr_publish(fx.q, &fx.slot, v, free_version);
        size_t left = pk_qsbr_reclaim(fx.q);
        if (left > max_waiting)
            max_waiting = left;
    }
    atomic_store(&fx.stop, true);
    for (size_t i = 0; i < READERS; i++)
        pthread_join(th[i], NULL);
    /* Both readers ended with a quiescent state: everything retired can go. */
    CU_ASSERT_EQUAL(pk_qsbr_reclaim(fx.q), 0);
    CU_ASSERT_EQUAL(atomic_load(&versions_freed), VERSIONS);
    for (size_t i = 0; i < READERS; i++) {
        CU_ASSERT_EQUAL(fx.bad[i], 0);
        CU_ASSERT(fx.reads[i] > 0);
    }
    /* Reclamation kept up while readers ran (not everything waited until the end). */
    CU_ASSERT(max_waiting < VERSIONS);
    free_version(pk_qsbr_read(&fx.slot));
    pk_qsbr_free(fx.q);
}

/* Nothing is freed while a reader has not been quiescent since the retirement. */
static void test_qsbr_waits_for_every_reader(void)
{
    atomic_init(&versions_freed, 0);
    struct pk_qsbr *q = pk_qsbr_new(2);
    _Atomic(void *) slot;
    struct version *a = pk_xmalloc(sizeof(*a)), *b = pk_xmalloc(sizeof(*b));
    *a = (struct version){ALIVE, 1};
    *b = (struct version){ALIVE, 2};
    atomic_init(&slot, a);
    pk_qsbr_publish(q, &slot, b, free_version);
    CU_ASSERT_PTR_EQUAL(pk_qsbr_read(&slot), b);
    CU_ASSERT_EQUAL(pk_qsbr_reclaim(q), 1);
    pk_qsbr_quiescent(q, 0);
    CU_ASSERT_EQUAL(pk_qsbr_reclaim(q), 1); /* reader 1 may still hold a */
    CU_ASSERT_EQUAL(atomic_load(&versions_freed), 0);
    pk_qsbr_quiescent(q, 1);
    CU_ASSERT_EQUAL(pk_qsbr_reclaim(q), 0);
    CU_ASSERT_EQUAL(atomic_load(&versions_freed), 1);
    /* A NULL old value is not retired; pk_qsbr_free frees what is left. */
    _Atomic(void *) empty;
    atomic_init(&empty, NULL);
    pk_qsbr_publish(q, &empty, a = pk_xmalloc(sizeof(*a)), free_version);
    CU_ASSERT_EQUAL(pk_qsbr_reclaim(q), 0);
    pk_qsbr_publish(q, &slot, NULL, free_version); /* retires b */
    pk_qsbr_free(q);
    CU_ASSERT_EQUAL(atomic_load(&versions_freed), 2);
    free(a);
}

void pk_test_register_worker(void)
{
    CU_pSuite s = CU_add_suite("worker", NULL, NULL);
    CU_add_test(s, "mailbox_many_senders", test_mailbox_many_senders);
    CU_add_test(s, "mailbox_run_and_free", test_mailbox_run_and_free);
    CU_add_test(s, "qsbr_publish_and_reclaim", test_qsbr_publish_and_reclaim);
    CU_add_test(s, "qsbr_waits_for_every_reader", test_qsbr_waits_for_every_reader);
}
