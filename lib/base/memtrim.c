#include "base/memtrim.h"

#include "base/base.h"

#include <event2/event.h>
#include <malloc.h>
#include <stdlib.h>

void pk_malloc_tune(void)
{
    /* Also fixes the mmap threshold at its default (128 KiB) instead of glibc's dynamic
     * one, which would otherwise grow with the largest buffer ever freed. */
    mallopt(M_TRIM_THRESHOLD, PK_MALLOC_TRIM_THRESHOLD);
}

struct pk_memtrim {
    struct event *ev;
};

static void trim_cb(evutil_socket_t fd, short what, void *arg)
{
    PK_UNUSED(fd);
    PK_UNUSED(what);
    PK_UNUSED(arg);
    malloc_trim(0);
}

struct pk_memtrim *pk_memtrim_new(struct event_base *base)
{
    struct pk_memtrim *t = pk_xcalloc(1, sizeof(*t));
    t->ev = pk_xevent_new(base, -1, 0, trim_cb, t);
    return t;
}

void pk_memtrim_del(struct pk_memtrim *t)
{
    if (!t)
        return;
    event_free(t->ev);
    free(t);
}

void pk_memtrim_poke(struct pk_memtrim *t)
{
    if (!t || event_pending(t->ev, EV_TIMEOUT, NULL))
        return;
    struct timeval tv = pk_ms_timeval(PK_MEMTRIM_DELAY_MS);
    event_add(t->ev, &tv);
}
