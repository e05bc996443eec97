/* Private to lib/admin: the status page's bytes, generated at build time from
 * status_page.html by scripts/embed.cmake (CMakeLists.txt). */
#ifndef PK_ADMIN_PAGE_H
#define PK_ADMIN_PAGE_H

#include <stddef.h>

/* The document followed by a NUL; _len does not count the NUL. */
extern const unsigned char pk_admin_status_page_html[];
extern const size_t pk_admin_status_page_html_len;

#endif
