/* config: command-line flags + an optional YAML file + environment expansion -> a plain struct.
 *
 * A binary describes its options with a static table of struct pk_opt, each naming a field of
 * its own config struct by offset. pk_config_load() fills that struct in three layers, each
 * overriding the one before: the table's defaults, then the YAML file named by
 * --config.path, then the other command-line flags.
 *
 * Naming: the option "proxy.bind-addr" is the flag --proxy.bind-addr and, in the file, the
 * key bind_addr inside the mapping proxy. In the file '-' and '_' are interchangeable, and a
 * dotted key ("proxy.bind_addr: x") is the same as the nested form.
 *
 * The module keeps no global state and never logs: failures come back as a negative
 * PK_ERR_* code plus a one-line message for the caller to print. */
#ifndef PK_CONFIG_H
#define PK_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum pk_opt_type {
    PK_OPT_STRING,     /* char *, owned, NULL when unset */
    PK_OPT_INT,        /* long long, decimal with optional sign */
    PK_OPT_BOOL,       /* bool, see pk_parse_bool() */
    PK_OPT_DURATION,   /* uint64_t milliseconds, see pk_parse_duration() */
    PK_OPT_SIZE,       /* uint64_t bytes, see pk_parse_size() */
    PK_OPT_STRING_LIST /* struct pk_strlist, owned */
};

/* A list of owned strings. When v is not NULL, v[n] is NULL. */
struct pk_strlist {
    char **v;
    size_t n;
};

struct pk_opt {
    const char *name; /* "proxy.bind-addr": flag --proxy.bind-addr; YAML proxy: {bind_addr: x} */
    enum pk_opt_type type;
    size_t offset;       /* offsetof(struct my_cfg, field) */
    const char *def;     /* default as text, parsed like one flag value; NULL = zero/empty */
    const char *help;    /* one line for --help */
    const char *metavar; /* e.g. "NAME=ADDR" for --help; NULL derives one from the type */
};

/* pk_config_load() returns this after printing help (-h, --help) or "PROG VERSION"
 * (--version, PIKO_VERSION from the build) to stdout. */
#define PK_CONFIG_HELP 1

/* Fills cfg from the table's defaults, then the YAML file named by --config.path (if
 * given), then the flags in argv[1..argc-1]. The table must not list "config.path".
 *
 * Flags: "--name value" or "--name=value". A BOOL flag without "=value" means true and never
 * takes the next argument. A separate value may not start with "--" (it would almost always
 * be a forgotten value); use --name=VALUE for such a value. A STRING_LIST flag may repeat:
 * its first occurrence replaces the list from the defaults and file, later ones append.
 * "--" ends the flags; positional arguments are errors. "-h" / "--help" print help;
 * "--version" anywhere before "--" prints the version, whatever else the line holds.
 *
 * File: a YAML mapping, nested by the dots of option names. Every scalar value first has
 * ${VAR} and ${VAR:default} replaced from the environment (the default applies when VAR is
 * unset or empty; an unset VAR without default is an error) and $$ replaced by $. A
 * STRING_LIST takes a sequence of scalars or one scalar. A plain null (empty, ~, null) sets a
 * STRING to NULL, a STRING_LIST to empty and is allowed as an empty section. A list in the
 * file replaces the default list. Setting the same option twice in the file is an error.
 *
 * The command line is checked completely (unknown flags, missing or malformed values, help)
 * before the file is read, so "--help" works with a broken file.
 *
 * cfg must be zeroed before its first load; loading again into it frees the old strings.
 * Returns 0 with cfg filled (release it with pk_config_free()); PK_CONFIG_HELP after printing
 * help to stdout; or PK_ERR_INVALID (bad flag, value, key or default), PK_ERR_NOTFOUND
 * (config file missing), PK_ERR_IO (config file unreadable), PK_ERR_TOO_LARGE (config file
 * above 16 MiB). On any non-zero return the owned fields of cfg are already freed and
 * zeroed. err (may be NULL) receives a one-line message without trailing newline, and is ""
 * on success. A message begins with what it is about: the option's name ("proxy.timeout:
 * invalid duration 'abc'"), after the file and line when the file is at fault
 * ("piko.yaml:3: proxy.timeout: invalid duration 'abc'"), an unknown flag as given
 * ("--proxy.bogus: unknown flag (see --help)") or config.path for an unreadable file.
 * prog and summary are only used for help. */
int pk_config_load(const struct pk_opt *opts, size_t nopts, void *cfg, int argc, char **argv,
                   const char *prog, const char *summary, char *err, size_t errlen);

/* For a message about an option that pk_config_load() accepted but a later check refused:
 * err begins with the option's name ("proxy.bind-addr: invalid address ..."). When the YAML
 * file given in argv set that option and no flag overrode it, err is rewritten to begin with
 * the file and line, like the file's own errors ("piko.yaml:3: proxy.bind-addr: ...").
 * Otherwise (no such option, a flag or the default gave the value) err is left alone. The
 * file is read again: call it only on the way out. */
void pk_config_locate(const struct pk_opt *opts, size_t nopts, int argc, char **argv, char *err,
                      size_t errlen);

/* Frees every STRING and STRING_LIST field of cfg and zeroes them. Other fields are left
 * alone. Safe to call twice. */
void pk_config_free(const struct pk_opt *opts, size_t nopts, void *cfg);

/* Writes the --help text: usage line, summary (may be NULL), one aligned line per option
 * with its default, then --config.path, --help, --version and a note on the file format. */
void pk_config_print_help(const struct pk_opt *opts, size_t nopts, const char *prog,
                          const char *summary, FILE *out);

/* Value parsers shared by flags, file and defaults. Each returns 0 and stores the result,
 * or PK_ERR_INVALID and leaves *out untouched. No surrounding whitespace is accepted. */

/* Go duration syntax: a sequence of decimal numbers, each with optional fraction and a unit
 * ns, us (or µs), ms, s, m, h: "30s", "1m30s", "500ms", "2.5s", ".5h"; a bare "0"; optional
 * leading '+'. Negative values and overflow are rejected. A result that is not a whole number
 * of milliseconds is rounded up, so a non-zero duration never becomes 0. */
int pk_parse_duration(const char *s, uint64_t *ms);

/* A decimal byte count with an optional unit, case-insensitive and all 1024-based:
 * B; K, KB, KiB; M, MB, MiB; G, GB, GiB; T, TB, TiB. Spaces may separate number and unit:
 * "65536", "64KiB", "16 MiB", "1g". No sign, no fraction; overflow is rejected. */
int pk_parse_size(const char *s, uint64_t *bytes);

/* true/false, yes/no, on/off, 1/0, case-insensitive. */
int pk_parse_bool(const char *s, bool *out);

/* Decimal long long with optional sign; out-of-range values are rejected. */
int pk_parse_int(const char *s, long long *out);

/* Appends a copy of s. */
void pk_strlist_append(struct pk_strlist *l, const char *s);
/* Frees every element and the array; leaves the list empty. */
void pk_strlist_clear(struct pk_strlist *l);

#endif
