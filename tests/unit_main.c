/* The unit test runner: registers every suite of tests/suites.def and runs one suite
 * (argv[1]) or all of them. Exit status is non-zero when any test or assertion failed. */
#include "dns/dns.h"
#include "httpc/httpc.h"

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#define PK_SUITE(name) void pk_test_register_##name(void);
#include "suites.def"
#undef PK_SUITE

struct suite_entry {
    const char *name;
    void (*reg)(void);
};

static const struct suite_entry suites[] = {
#define PK_SUITE(name) {#name, pk_test_register_##name},
#include "suites.def"
#undef PK_SUITE
};

int main(int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : NULL;
    int found = 0;

    signal(SIGPIPE, SIG_IGN);
    char err[256];
    if (pk_dns_global_init(err, sizeof(err)) != 0 || pk_httpc_global_init() != 0)
        return 2;
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    for (size_t i = 0; i < sizeof(suites) / sizeof(suites[0]); i++) {
        if (only && strcmp(only, suites[i].name) != 0)
            continue;
        suites[i].reg();
        found++;
    }
    if (!found) {
        fprintf(stderr, "piko-unit: no suite named %s\n", only);
        CU_cleanup_registry();
        return 2;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    pk_httpc_global_cleanup();
    pk_dns_global_cleanup();
    return failed ? 1 : 0;
}
