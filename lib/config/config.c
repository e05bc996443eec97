#include "config/config.h"
#include "config/config_int.h"

#include "base/base.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NS_PER_MS 1000000ull

/* ---- string lists ---------------------------------------------------------------------- */

void pk_strlist_append(struct pk_strlist *l, const char *s)
{
    /* +2: the new element and the NULL terminator. */
    l->v = pk_xrealloc(l->v, (l->n + 2) * sizeof(*l->v));
    l->v[l->n++] = pk_xstrdup(s);
    l->v[l->n] = NULL;
}

void pk_strlist_clear(struct pk_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* ---- value parsers --------------------------------------------------------------------- */

bool config_is_digit(char c)
{
    return c >= '0' && c <= '9';
}

int pk_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};

    for (size_t i = 0; i < PK_ARRAY_LEN(yes); i++) {
        if (pk_strcaseeq(s, yes[i])) {
            *out = true;
            return 0;
        }
        if (pk_strcaseeq(s, no[i])) {
            *out = false;
            return 0;
        }
    }
    return PK_ERR_INVALID;
}

int pk_parse_int(const char *s, long long *out)
{
    const char *digits = (s[0] == '+' || s[0] == '-') ? s + 1 : s;
    char *end;

    /* strtoll would also skip leading spaces and accept a lone sign. */
    if (!config_is_digit(digits[0]))
        return PK_ERR_INVALID;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno == ERANGE || *end != '\0')
        return PK_ERR_INVALID;
    *out = v;
    return 0;
}

struct unit {
    const char *name;
    uint64_t mult;
};

int pk_parse_size(const char *s, uint64_t *bytes)
{
    static const struct unit units[] = {
        {"", 1},
        {"b", 1},
        {"k", 1ull << 10},
        {"kb", 1ull << 10},
        {"kib", 1ull << 10},
        {"m", 1ull << 20},
        {"mb", 1ull << 20},
        {"mib", 1ull << 20},
        {"g", 1ull << 30},
        {"gb", 1ull << 30},
        {"gib", 1ull << 30},
        {"t", 1ull << 40},
        {"tb", 1ull << 40},
        {"tib", 1ull << 40},
    };
    uint64_t v = 0;
    const char *p = s;

    if (!config_is_digit(*p))
        return PK_ERR_INVALID;
    for (; config_is_digit(*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return PK_ERR_INVALID;
        v = v * 10 + d;
    }
    const char *num_end = p;
    while (*p == ' ')
        p++;
    if (p != num_end && *p == '\0')
        return PK_ERR_INVALID; /* trailing spaces without a unit */
    for (size_t i = 0; i < PK_ARRAY_LEN(units); i++) {
        if (!pk_strcaseeq(p, units[i].name))
            continue;
        if (v > UINT64_MAX / units[i].mult)
            return PK_ERR_INVALID;
        *bytes = v * units[i].mult;
        return 0;
    }
    return PK_ERR_INVALID;
}

/* Follows Go's time.ParseDuration, working in unsigned nanoseconds. */
int pk_parse_duration(const char *s, uint64_t *ms)
{
    static const struct unit units[] = {
        {"ns", 1ull},
        {"us", 1000ull},
        {"\xc2\xb5s", 1000ull}, /* U+00B5 micro sign */
        {"\xce\xbcs", 1000ull}, /* U+03BC Greek small letter mu */
        {"ms", NS_PER_MS},
        {"s", 1000ull * NS_PER_MS},
        {"m", 60ull * 1000 * NS_PER_MS},
        {"h", 3600ull * 1000 * NS_PER_MS},
    };
    uint64_t total = 0;

    if (*s == '+')
        s++;
    if (strcmp(s, "0") == 0) {
        *ms = 0;
        return 0;
    }
    if (*s == '\0')
        return PK_ERR_INVALID;
    while (*s != '\0') {
        uint64_t whole = 0, frac = 0, scale = 1;
        bool have_whole = false, have_frac = false;

        if (*s != '.' && !config_is_digit(*s))
            return PK_ERR_INVALID;
        for (; config_is_digit(*s); s++) {
            unsigned d = (unsigned)(*s - '0');
            if (whole > (UINT64_MAX - d) / 10)
                return PK_ERR_INVALID;
            whole = whole * 10 + d;
            have_whole = true;
        }
        if (*s == '.') {
            s++;
            for (; config_is_digit(*s); s++) {
                have_frac = true;
                /* Digits past what fits cannot change the nanosecond result: drop them. */
                if (scale > UINT64_MAX / 100)
                    continue;
                frac = frac * 10 + (unsigned)(*s - '0');
                scale *= 10;
            }
        }
        if (!have_whole && !have_frac)
            return PK_ERR_INVALID;

        size_t ulen = 0;
        while (s[ulen] != '\0' && s[ulen] != '.' && !config_is_digit(s[ulen]))
            ulen++;
        if (ulen == 0)
            return PK_ERR_INVALID; /* missing unit */
        uint64_t unit = 0;
        for (size_t i = 0; i < PK_ARRAY_LEN(units); i++) {
            if (strlen(units[i].name) == ulen && memcmp(s, units[i].name, ulen) == 0)
                unit = units[i].mult;
        }
        if (unit == 0)
            return PK_ERR_INVALID;
        s += ulen;

        if (whole > UINT64_MAX / unit)
            return PK_ERR_INVALID;
        uint64_t v = whole * unit;
        if (frac > 0) {
            /* Same float step as Go; exact for the usual few decimal digits. */
            double f = (double)frac * ((double)unit / (double)scale);
            if (f >= 18446744073709551616.0 || (uint64_t)f > UINT64_MAX - v)
                return PK_ERR_INVALID;
            v += (uint64_t)f;
        }
        if (v > UINT64_MAX - total)
            return PK_ERR_INVALID;
        total += v;
    }
    *ms = total / NS_PER_MS + (total % NS_PER_MS != 0);
    return 0;
}

/* ---- options and fields ---------------------------------------------------------------- */

const char *config_type_word(enum pk_opt_type t)
{
    switch (t) {
    case PK_OPT_INT:
        return "integer";
    case PK_OPT_BOOL:
        return "boolean";
    case PK_OPT_DURATION:
        return "duration";
    case PK_OPT_SIZE:
        return "size";
    case PK_OPT_STRING_LIST:
        return "list";
    case PK_OPT_STRING:
    default:
        return "string";
    }
}

static void *field(const struct pk_opt *o, void *cfg)
{
    return (char *)cfg + o->offset;
}

/* Checks that text is a valid value for type t without storing it. */
static int check_text(enum pk_opt_type t, const char *text)
{
    long long i;
    bool b;
    uint64_t u;

    switch (t) {
    case PK_OPT_INT:
        return pk_parse_int(text, &i);
    case PK_OPT_BOOL:
        return pk_parse_bool(text, &b);
    case PK_OPT_DURATION:
        return pk_parse_duration(text, &u);
    case PK_OPT_SIZE:
        return pk_parse_size(text, &u);
    case PK_OPT_STRING:
    case PK_OPT_STRING_LIST:
    default:
        return 0;
    }
}

/* Parses text into the option's field, freeing the string it replaces; a list appends. On
 * failure the field is unchanged. */
int config_assign(const struct pk_opt *o, void *cfg, const char *text)
{
    void *f = field(o, cfg);

    switch (o->type) {
    case PK_OPT_STRING: {
        char **sp = f;
        free(*sp);
        *sp = pk_xstrdup(text);
        return 0;
    }
    case PK_OPT_INT:
        return pk_parse_int(text, f);
    case PK_OPT_BOOL:
        return pk_parse_bool(text, f);
    case PK_OPT_DURATION:
        return pk_parse_duration(text, f);
    case PK_OPT_SIZE:
        return pk_parse_size(text, f);
    case PK_OPT_STRING_LIST:
        pk_strlist_append(f, text);
        return 0;
    }
    return PK_ERR_INVALID;
}

/* Frees what the field owns and zeroes it. */
void config_clear_field(const struct pk_opt *o, void *cfg)
{
    void *f = field(o, cfg);

    switch (o->type) {
    case PK_OPT_STRING: {
        char **sp = f;
        free(*sp);
        *sp = NULL;
        break;
    }
    case PK_OPT_INT:
        *(long long *)f = 0;
        break;
    case PK_OPT_BOOL:
        *(bool *)f = false;
        break;
    case PK_OPT_DURATION:
    case PK_OPT_SIZE:
        *(uint64_t *)f = 0;
        break;
    case PK_OPT_STRING_LIST:
        pk_strlist_clear(f);
        break;
    }
}

void pk_config_free(const struct pk_opt *opts, size_t nopts, void *cfg)
{
    for (size_t i = 0; i < nopts; i++) {
        if (opts[i].type == PK_OPT_STRING || opts[i].type == PK_OPT_STRING_LIST)
            config_clear_field(&opts[i], cfg);
    }
}

__attribute__((format(printf, 4, 5))) int config_fail(char *err, size_t errlen, int rc,
                                                      const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static int apply_defaults(const struct pk_opt *opts, size_t nopts, void *cfg, char *err,
                          size_t errlen)
{
    for (size_t i = 0; i < nopts; i++) {
        config_clear_field(&opts[i], cfg);
        if (opts[i].def && config_assign(&opts[i], cfg, opts[i].def) != 0)
            return config_fail(err, errlen, PK_ERR_INVALID, "%s: invalid %s default '%s'",
                               opts[i].name, config_type_word(opts[i].type), opts[i].def);
    }
    return 0;
}

/* ---- command line ---------------------------------------------------------------------- */

#define CONFIG_PATH_FLAG "config.path"

/* One validated flag occurrence, applied after the file. */
struct flag_tok {
    size_t opt;
    const char *value;
};

static size_t find_flag(const struct pk_opt *opts, size_t nopts, const char *name, size_t len)
{
    for (size_t i = 0; i < nopts; i++) {
        if (strlen(opts[i].name) == len && memcmp(opts[i].name, name, len) == 0)
            return i;
    }
    return nopts;
}

/* Checks the whole command line in order, stopping at the first error or help flag. Fills
 * toks (room for argc entries) and *config_path. */
static int scan_flags(const struct pk_opt *opts, size_t nopts, int argc, char **argv,
                      struct flag_tok *toks, size_t *ntoks, const char **config_path, bool *help,
                      char *err, size_t errlen)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];

        if (strcmp(arg, "--") == 0) {
            if (i + 1 < argc)
                return config_fail(err, errlen, PK_ERR_INVALID, "unexpected argument '%s'",
                                   argv[i + 1]);
            break;
        }
        if (arg[0] != '-' || arg[1] == '\0')
            return config_fail(err, errlen, PK_ERR_INVALID, "unexpected argument '%s'", arg);
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            *help = true;
            return 0;
        }
        if (arg[1] != '-')
            return config_fail(err, errlen, PK_ERR_INVALID, "%s: unknown flag (see --help)", arg);

        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        int namelen = (int)(eq ? (size_t)(eq - name) : strlen(name));
        const char *value = eq ? eq + 1 : NULL;
        if (namelen == 4 && memcmp(name, "help", 4) == 0)
            return config_fail(err, errlen, PK_ERR_INVALID, "--help: takes no value");
        bool is_config = (size_t)namelen == strlen(CONFIG_PATH_FLAG) &&
                         memcmp(name, CONFIG_PATH_FLAG, (size_t)namelen) == 0;
        size_t idx = find_flag(opts, nopts, name, (size_t)namelen);

        if (!is_config && idx == nopts)
            return config_fail(err, errlen, PK_ERR_INVALID, "--%.*s: unknown flag (see --help)",
                               namelen, name);
        if (!value && !is_config && opts[idx].type == PK_OPT_BOOL) {
            value = "true";
        } else if (!value) {
            if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)
                return config_fail(err, errlen, PK_ERR_INVALID, "%.*s: the flag needs a value",
                                   namelen, name);
            value = argv[++i];
        }
        if (is_config) {
            *config_path = value;
            continue;
        }
        if (check_text(opts[idx].type, value) != 0)
            return config_fail(err, errlen, PK_ERR_INVALID, "%.*s: invalid %s '%s'", namelen, name,
                               config_type_word(opts[idx].type), value);
        toks[*ntoks].opt = idx;
        toks[*ntoks].value = value;
        (*ntoks)++;
    }
    return 0;
}

/* ---- entry point ----------------------------------------------------------------------- */

#ifndef PIKO_VERSION
#define PIKO_VERSION "dev"
#endif

/* "--version" before any "--": the version is all that is wanted, whatever else is there. */
static bool wants_version(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "--version") == 0)
            return true;
    return false;
}

int pk_config_load(const struct pk_opt *opts, size_t nopts, void *cfg, int argc, char **argv,
                   const char *prog, const char *summary, char *err, size_t errlen)
{
    struct flag_tok *toks = pk_xcalloc(argc > 0 ? (size_t)argc : 1, sizeof(*toks));
    bool *list_replaced = pk_xcalloc(nopts, sizeof(bool));
    const char *config_path = NULL;
    size_t ntoks = 0;
    bool help = false;
    int rc;

    if (err && errlen)
        err[0] = '\0';
    if (wants_version(argc, argv)) {
        printf("%s %s\n", prog ? prog : "PROG", PIKO_VERSION);
        fflush(stdout);
        rc = PK_CONFIG_HELP;
        goto out;
    }
    rc = scan_flags(opts, nopts, argc, argv, toks, &ntoks, &config_path, &help, err, errlen);
    if (rc != 0)
        goto out;
    if (help) {
        pk_config_print_help(opts, nopts, prog, summary, stdout);
        fflush(stdout);
        rc = PK_CONFIG_HELP;
        goto out;
    }
    rc = apply_defaults(opts, nopts, cfg, err, errlen);
    if (rc != 0)
        goto out;
    if (config_path) {
        rc = config_load_file(opts, nopts, cfg, config_path, err, errlen);
        if (rc != 0)
            goto out;
    }
    for (size_t i = 0; i < ntoks; i++) {
        const struct pk_opt *o = &opts[toks[i].opt];
        /* The first occurrence of a list flag replaces the list from defaults and file. */
        if (o->type == PK_OPT_STRING_LIST && !list_replaced[toks[i].opt]) {
            config_clear_field(o, cfg);
            list_replaced[toks[i].opt] = true;
        }
        /* Values were checked by scan_flags, so this cannot fail. */
        rc = config_assign(o, cfg, toks[i].value);
        if (rc != 0)
            goto out;
    }
out:
    free(toks);
    free(list_replaced);
    if (rc != 0)
        pk_config_free(opts, nopts, cfg);
    return rc;
}

/* The option whose name begins msg, followed by ':' or ' ' ("proxy.timeout: ..."), or
 * nopts. */
static size_t option_named(const struct pk_opt *opts, size_t nopts, const char *msg)
{
    size_t idx = nopts, best = 0;
    for (size_t i = 0; i < nopts; i++) {
        size_t len = strlen(opts[i].name);
        if (len > best && strncmp(msg, opts[i].name, len) == 0 &&
            (msg[len] == ':' || msg[len] == ' ')) {
            idx = i;
            best = len;
        }
    }
    return idx;
}

void pk_config_locate(const struct pk_opt *opts, size_t nopts, int argc, char **argv, char *err,
                      size_t errlen)
{
    if (!err || !errlen)
        return;
    size_t idx = option_named(opts, nopts, err);
    if (idx == nopts)
        return;
    struct flag_tok *toks = pk_xcalloc(argc > 0 ? (size_t)argc : 1, sizeof(*toks));
    const char *config_path = NULL;
    size_t ntoks = 0, line = 0;
    bool help = false;
    char scratch[256];
    if (scan_flags(opts, nopts, argc, argv, toks, &ntoks, &config_path, &help, scratch,
                   sizeof(scratch)) != 0 ||
        help || !config_path)
        goto out;
    for (size_t i = 0; i < ntoks; i++) {
        if (toks[i].opt == idx)
            goto out; /* a flag set it, over the file */
    }
    line = config_file_line(opts, nopts, config_path, idx);
    if (line) {
        char *msg = pk_xasprintf("%s:%zu: %s", config_path, line, err);
        snprintf(err, errlen, "%s", msg);
        free(msg);
    }
out:
    free(toks);
}

/* ---- help ------------------------------------------------------------------------------ */

static const char *metavar(const struct pk_opt *o)
{
    if (o->metavar)
        return o->metavar;
    switch (o->type) {
    case PK_OPT_INT:
        return "INT";
    case PK_OPT_DURATION:
        return "DURATION";
    case PK_OPT_SIZE:
        return "SIZE";
    case PK_OPT_STRING_LIST:
        return "VALUE";
    case PK_OPT_BOOL:
        return "BOOL";
    case PK_OPT_STRING:
    default:
        return "STRING";
    }
}

/* "--name METAVAR"; a bool flag shows no value since it needs none. */
static char *flag_column(const struct pk_opt *o)
{
    if (o->type == PK_OPT_BOOL)
        return pk_xasprintf("--%s", o->name);
    return pk_xasprintf("--%s %s", o->name, metavar(o));
}

/* Writes how option o looks in the file: "a.b-c" -> "a: {b_c: ...}". */
static void print_yaml_form(FILE *out, const char *name)
{
    int depth = 0;

    for (const char *p = name;; p++) {
        if (*p == '.') {
            fputs(": {", out);
            depth++;
        } else if (*p == '\0') {
            fputs(": ...", out);
            break;
        } else {
            fputc(*p == '-' ? '_' : *p, out);
        }
    }
    while (depth-- > 0)
        fputc('}', out);
}

void pk_config_print_help(const struct pk_opt *opts, size_t nopts, const char *prog,
                          const char *summary, FILE *out)
{
    static const char *const extra[][2] = {
        {"--config.path FILE", "Load options from this YAML file; flags override it"},
        {"-h, --help", "Show this help and exit"},
        {"--version", "Show the version and exit"},
    };
    char **cols = pk_xcalloc(nopts, sizeof(*cols));
    int width = 0;

    for (size_t i = 0; i < nopts; i++) {
        cols[i] = flag_column(&opts[i]);
        width = PK_MAX(width, (int)strlen(cols[i]));
    }
    for (size_t i = 0; i < PK_ARRAY_LEN(extra); i++)
        width = PK_MAX(width, (int)strlen(extra[i][0]));

    fprintf(out, "Usage: %s [flags]\n", prog ? prog : "PROG");
    if (summary && *summary)
        fprintf(out, "\n%s\n", summary);
    fputs("\nFlags:\n", out);
    for (size_t i = 0; i < nopts; i++) {
        const struct pk_opt *o = &opts[i];
        fprintf(out, "  %-*s   %s", width, cols[i], o->help ? o->help : "");
        if (o->type == PK_OPT_STRING_LIST)
            fputs(" (repeatable)", out);
        if (o->def && *o->def)
            fprintf(out, " (default %s)", o->def);
        fputc('\n', out);
        free(cols[i]);
    }
    free(cols);
    for (size_t i = 0; i < PK_ARRAY_LEN(extra); i++)
        fprintf(out, "  %-*s   %s\n", width, extra[i][0], extra[i][1]);

    fputs("\nEvery flag is also a key of the YAML file given by --config.path: dots nest\n"
          "mappings and dashes become underscores",
          out);
    const char *example = NULL;
    for (size_t i = 0; i < nopts && !example; i++) {
        if (strchr(opts[i].name, '.'))
            example = opts[i].name;
    }
    if (example) {
        fprintf(out, ", so --%s is\n  ", example);
        print_yaml_form(out, example);
    } else {
        fputc('.', out);
    }
    fputs("\nFile values may use ${VAR} or ${VAR:default} to read the environment ($$ is a\n"
          "literal $). Flags override the file, which overrides the defaults. A boolean\n"
          "flag alone means true: --flag, or --flag=false.\n",
          out);
}
