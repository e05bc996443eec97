/* process_* metrics (the names every Prometheus client library uses), read from /proc/self
 * and getrusage at scrape time. */
#include "metrics/metrics.h"

#include "base/base.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Resident pages from /proc/self/statm. */
static double resident_bytes(void *arg)
{
    PK_UNUSED(arg);
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "re");
    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

static double open_fds(void *arg)
{
    PK_UNUSED(arg);
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    double n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n > 0 ? n - 1 : 0; /* the directory's own descriptor */
}

static double cpu_seconds(void *arg)
{
    PK_UNUSED(arg);
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double max_fds(void *arg)
{
    PK_UNUSED(arg);
    struct rlimit rl;
    return getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (double)rl.rlim_cur : 0;
}

static double start_time(void *arg)
{
    return *(double *)arg;
}

void pk_metrics_add_process(struct pk_metrics *m)
{
    /* Owned by the registry's last family: freed with it (see pk_metrics_del). */
    double *start = pk_metrics_keep(m, sizeof(double));
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    *start = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    pk_metrics_gauge_fn(m, "process_resident_memory_bytes", "Resident memory size in bytes.",
                        resident_bytes, NULL);
    pk_metrics_gauge_fn(m, "process_open_fds", "Number of open file descriptors.", open_fds, NULL);
    pk_metrics_gauge_fn(m, "process_max_fds", "Maximum number of open file descriptors.", max_fds,
                        NULL);
    pk_metrics_counter_fn(m, "process_cpu_seconds_total",
                          "Total user and system CPU time spent in seconds.", cpu_seconds, NULL);
    pk_metrics_gauge_fn(m, "process_start_time_seconds",
                        "Start time of the process since unix epoch in seconds.", start_time,
                        start);
}
