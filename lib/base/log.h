/* log: one line per event, "time level subsystem message key=value ...", on stderr.
 *
 * The level is checked before the arguments are formatted, so a disabled debug line
 * costs one comparison. The level is process-wide configuration set once at start-up
 * (it is the only global the modules read, and it is never written after the loop
 * starts). */
#ifndef PK_LOG_H
#define PK_LOG_H

#include <stdbool.h>

enum pk_log_level { PK_LOG_DEBUG = 0, PK_LOG_INFO, PK_LOG_WARN, PK_LOG_ERROR };

extern enum pk_log_level pk_log_min_level;

/* Parses "debug", "info", "warn" or "error". Returns 0, or PK_ERR_INVALID. */
int pk_log_parse_level(const char *s, enum pk_log_level *out);
void pk_log_set_level(enum pk_log_level level);

void pk_log_write(enum pk_log_level level, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define PK_LOG(level, subsys, ...)                                                                 \
    do {                                                                                           \
        if ((level) >= pk_log_min_level)                                                           \
            pk_log_write((level), (subsys), __VA_ARGS__);                                          \
    } while (0)

#define PK_DEBUG(subsys, ...) PK_LOG(PK_LOG_DEBUG, subsys, __VA_ARGS__)
#define PK_INFO(subsys, ...)  PK_LOG(PK_LOG_INFO, subsys, __VA_ARGS__)
#define PK_WARN(subsys, ...)  PK_LOG(PK_LOG_WARN, subsys, __VA_ARGS__)
#define PK_ERROR(subsys, ...) PK_LOG(PK_LOG_ERROR, subsys, __VA_ARGS__)

#endif
