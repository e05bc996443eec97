/* log: one line per event on stderr.
 *
 * Two formats (log.format): text, "time level subsystem message key=value ...", and json,
 * one object per line {"time", "level", "subsystem", "msg"} for log collectors. Access log
 * records (accesslog/accesslog.h) are JSON objects in both formats; they obey the same
 * level and subsystem rules (pk_log_enabled) and are written with pk_log_lines.
 *
 * The level is checked before the arguments are formatted, so a disabled debug line costs
 * one comparison (two while log.subsystems names any subsystem: those log at every level,
 * whatever log.level says, as Go Piko's --log.subsystems). Level, format and subsystems are
 * process-wide configuration set once at start-up (the only globals the modules read,
 * never written after the loop starts). */
#ifndef PK_LOG_H
#define PK_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum pk_log_level { PK_LOG_DEBUG = 0, PK_LOG_INFO, PK_LOG_WARN, PK_LOG_ERROR };
enum pk_log_format { PK_LOG_TEXT = 0, PK_LOG_JSON };

extern enum pk_log_level pk_log_min_level;
extern size_t pk_log_nsubsystems; /* subsystems named by log.subsystems */

/* Parses "debug", "info", "warn" or "error". Returns 0, or PK_ERR_INVALID. */
int pk_log_parse_level(const char *s, enum pk_log_level *out);
void pk_log_set_level(enum pk_log_level level);
/* Parses "text" or "json". Returns 0, or PK_ERR_INVALID. */
int pk_log_parse_format(const char *s, enum pk_log_format *out);
/* Checks a log.subsystems value: a comma list of names of [a-z0-9.-] (spaces around
 * commas allowed), or empty. Returns 0, or PK_ERR_INVALID with a message in err. */
int pk_log_check_subsystems(const char *list, char *err, size_t errlen);

/* Checks log.level, log.format and log.subsystems. Returns 0, or PK_ERR_INVALID with a
 * message naming the key. */
int pk_log_check(const char *level, const char *format, const char *subsystems, char *err,
                 size_t errlen);
/* Applies log.level, log.format and log.subsystems, checked before (the values as
 * given: the keys' names are in the messages). Returns 0, or PK_ERR_INVALID with a message
 * naming the key. */
int pk_log_configure(const char *level, const char *format, const char *subsystems, char *err,
                     size_t errlen);

/* True when a line of this level and subsystem would be written. */
bool pk_log_enabled(enum pk_log_level level, const char *subsys);
bool pk_log_subsystem_on(const char *subsys);

void pk_log_write(enum pk_log_level level, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Writes len bytes of whole lines (each ending in a newline, filtered before) in one
 * write. */
void pk_log_lines(const char *lines, size_t len);

#define PK_LOG(level, subsys, ...)                                                                 \
    do {                                                                                           \
        if ((level) >= pk_log_min_level || (pk_log_nsubsystems && pk_log_subsystem_on(subsys)))    \
            pk_log_write((level), (subsys), __VA_ARGS__);                                          \
    } while (0)

#define PK_DEBUG(subsys, ...) PK_LOG(PK_LOG_DEBUG, subsys, __VA_ARGS__)
#define PK_INFO(subsys, ...)  PK_LOG(PK_LOG_INFO, subsys, __VA_ARGS__)
#define PK_WARN(subsys, ...)  PK_LOG(PK_LOG_WARN, subsys, __VA_ARGS__)
#define PK_ERROR(subsys, ...) PK_LOG(PK_LOG_ERROR, subsys, __VA_ARGS__)

#endif
