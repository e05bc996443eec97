/* The process's heap policy: the trim threshold set once at start (pk_malloc_tune), and
 * the heap's free memory given back to the kernel after bursts of connection set-ups and
 * closes (the trimmer).
 *
 * A TLS handshake, or an HTTP/1.1 upgrade, holds tens of KiB while it runs and frees them
 * when it ends; a closed tunnel frees its buffers. glibc returns freed memory to the kernel
 * only from the top of the heap, so after thousands of tunnels were set up at once (a
 * sidecar's start, a server restart) the freed pages between the live tunnels stay
 * resident. A trimmer runs malloc_trim a little after such activity, at most once per
 * PK_MEMTRIM_DELAY_MS however often it is poked. docs/benchmarks.md "Memory per idle
 * tunnel" has the measurements. Loop thread only. */
#ifndef PK_BASE_MEMTRIM_H
#define PK_BASE_MEMTRIM_H

struct event_base;
struct pk_memtrim;

#define PK_MEMTRIM_DELAY_MS 1000

/* The process's malloc policy for a proxy: freed memory at the top of the heap is given
 * back to the kernel only above PK_MALLOC_TRIM_THRESHOLD (glibc: 128 KiB), so a bulk
 * stream, which allocates and frees 64 KiB buffers all the time, stops paying a page fault
 * and a page clear for every buffer. Call once at start. */
#define PK_MALLOC_TRIM_THRESHOLD (4 * 1024 * 1024)
void pk_malloc_tune(void);

/* A trimmer on base's loop; it does nothing until poked. */
struct pk_memtrim *pk_memtrim_new(struct event_base *base);
/* Cancels a pending trim and frees t; NULL is a no-op. */
void pk_memtrim_del(struct pk_memtrim *t);
/* A burst of memory was (or is about to be) freed: trim within PK_MEMTRIM_DELAY_MS unless a
 * trim is already pending. Cheap: arms a timer at most. NULL is a no-op. */
void pk_memtrim_poke(struct pk_memtrim *t);

#endif
