/* list: an intrusive doubly-linked list (a circular list with a sentinel head).
 *
 * Embed a struct pk_list in an object, link it into a head, and get the object back with
 * PK_CONTAINER_OF. Removing an element leaves it self-linked, so removing twice is safe. */
#ifndef PK_LIST_H
#define PK_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct pk_list {
    struct pk_list *prev;
    struct pk_list *next;
};

#define PK_CONTAINER_OF(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

static inline void pk_list_init(struct pk_list *l)
{
    l->prev = l->next = l;
}

static inline bool pk_list_empty(const struct pk_list *l)
{
    return l->next == l;
}

static inline void pk_list_insert(struct pk_list *head, struct pk_list *e)
{
    e->next = head->next;
    e->prev = head;
    head->next->prev = e;
    head->next = e;
}

static inline void pk_list_remove(struct pk_list *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->prev = e->next = e;
}

#endif
