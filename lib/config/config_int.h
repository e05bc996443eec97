/* config private: what the option machinery (config.c: values, options, command line,
 * entry point, help) and the YAML file reader (config_yaml.c) share. Included by the .c
 * files of lib/config only; config.h is the module's interface. */
#ifndef PK_CONFIG_INT_H
#define PK_CONFIG_INT_H

#include "config/config.h"

#include <stdbool.h>
#include <stddef.h>

/* config.c */

bool config_is_digit(char c);
/* The word for a type in messages: "integer", "duration", "list"... */
const char *config_type_word(enum pk_opt_type t);
/* Parses text into the option's field, freeing the string it replaces; a list appends. On
 * failure the field is unchanged. */
int config_assign(const struct pk_opt *o, void *cfg, const char *text);
/* Frees what the field owns and zeroes it. */
void config_clear_field(const struct pk_opt *o, void *cfg);
/* Formats the message into err (when err and errlen are set) and returns rc. */
__attribute__((format(printf, 4, 5))) int config_fail(char *err, size_t errlen, int rc,
                                                      const char *fmt, ...);

/* config_yaml.c */

/* Applies the YAML file at path to cfg (over the defaults already there): every key must
 * name an option or a section of options, ${VAR} is expanded from the environment, a list
 * in the file replaces the default one. Returns 0, or a negative PK_ERR_... with a message
 * naming the file and line in err. */
int config_load_file(const struct pk_opt *opts, size_t nopts, void *cfg, const char *path,
                     char *err, size_t errlen);

/* The 1-based line at which the YAML file at path sets option idx, or 0 when it does not
 * (or the file cannot be read or parsed). Nothing is assigned. */
size_t config_file_line(const struct pk_opt *opts, size_t nopts, const char *path, size_t idx);

#endif
