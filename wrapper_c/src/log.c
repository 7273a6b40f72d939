/* Logging: one line per event on stderr. write(2) on a stack buffer, so it
 * takes no stdio lock and allocates nothing; errno is preserved. */
#include "wrapper.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

void hpw_log(enum hpw_log_level level, const char *fmt, ...)
{
    if (level > hpw_cfg.log)
        return;
    int saved = errno;
    char buf[1024];
    int n = snprintf(buf, sizeof buf, HPW_LOG_PREFIX "[%ld]: ", (long)getpid());
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof buf - 2)
        len = sizeof buf - 2;
    buf[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, len);
    (void)w;
    errno = saved;
}

void hpw_log_fallback(enum hpw_fallback kind, const char *subject, const char *reason,
                      const char *why_fmt, ...)
{
    int saved = errno;
    char why[768];
    va_list ap;
    va_start(ap, why_fmt);
    vsnprintf(why, sizeof why, why_fmt, ap);
    va_end(ap);
    const char *now = hpw_cfg.strict
        ? (kind == HPW_FALLBACK_FILE ? "not falling back"
                                     : "failing it (strict mode, HUGEPAGE_WRAPPER_STRICT=1)")
        : (kind == HPW_FALLBACK_FILE ? "falling back to the regular file mapping"
                                     : "served by libc in 4 KiB pages");
    hpw_log(HPW_LOG_QUIET, "%s: %s; %s reason=%s", subject, why, now, reason);
    errno = saved;
}
