/* Environment parsing. Runs once, from the library constructor. An invalid
 * value is reported once on stderr and the default is kept: a typo in a unit
 * file must never crash the model server. */
#include "wrapper.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct hpw_config hpw_cfg = {
    .min_size = HPW_1G,
    .alloc_min = HPW_ALLOC_MIN_DEFAULT,
    .page = HPW_PAGE_AUTO,
    .strict = 0,
    .log = HPW_LOG_INFO,
    .threads = 0,
};

/* "1073741824", "512M", "1G", "1GiB", "64k": bytes with an optional binary suffix. */
int hpw_parse_size(const char *s, size_t *out)
{
    if (s == NULL || !isdigit((unsigned char)s[0]))
        return -1;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0)
        return -1;
    unsigned shift = 0;
    switch (toupper((unsigned char)*end)) {
    case '\0': break;
    case 'K': shift = 10; end++; break;
    case 'M': shift = 20; end++; break;
    case 'G': shift = 30; end++; break;
    case 'T': shift = 40; end++; break;
    default: return -1;
    }
    if (shift != 0) {
        if (toupper((unsigned char)end[0]) == 'I' && toupper((unsigned char)end[1]) == 'B')
            end += 2;
        else if (toupper((unsigned char)end[0]) == 'B')
            end += 1;
    }
    if (*end != '\0')
        return -1;
    if (shift != 0 && v > (~0ULL >> shift))
        return -1;
    *out = (size_t)(v << shift);
    return 0;
}

static void invalid(const char *name, const char *value, const char *expected)
{
    hpw_log(HPW_LOG_QUIET, "ignoring invalid %s=\"%s\" (expected %s); using the default",
            name, value, expected);
}

/* A 0/1 setting: unset or empty keeps the default. */
static void load_flag(const char *name, int *flag)
{
    const char *v = secure_getenv(name);
    if (v == NULL || *v == '\0')
        return;
    if (strcmp(v, "1") == 0)
        *flag = 1;
    else if (strcmp(v, "0") == 0)
        *flag = 0;
    else
        invalid(name, v, "0 or 1");
}

void hpw_config_load(void)
{
    const char *v;

    /* The log level first, so that later messages honour it. */
    if ((v = secure_getenv(HPW_ENV_LOG)) != NULL && *v != '\0') {
        if (strcmp(v, "quiet") == 0)
            hpw_cfg.log = HPW_LOG_QUIET;
        else if (strcmp(v, "info") == 0)
            hpw_cfg.log = HPW_LOG_INFO;
        else if (strcmp(v, "debug") == 0)
            hpw_cfg.log = HPW_LOG_DEBUG;
        else
            invalid(HPW_ENV_LOG, v, "quiet, info or debug");
    }
    if ((v = secure_getenv(HPW_ENV_MIN_SIZE)) != NULL && *v != '\0') {
        size_t n;
        if (hpw_parse_size(v, &n) == 0 && n > 0)
            hpw_cfg.min_size = n;
        else
            invalid(HPW_ENV_MIN_SIZE, v, "a positive size such as 1G or 536870912");
    }
    if ((v = secure_getenv(HPW_ENV_ALLOC_MIN_SIZE)) != NULL && *v != '\0') {
        size_t n;
        if (strcmp(v, "off") == 0)
            hpw_cfg.alloc_min = 0;
        else if (hpw_parse_size(v, &n) == 0)
            hpw_cfg.alloc_min = n; /* 0 is off too */
        else
            invalid(HPW_ENV_ALLOC_MIN_SIZE, v, "a size such as 8M, or off");
    }
    if ((v = secure_getenv(HPW_ENV_PAGE_SIZE)) != NULL && *v != '\0') {
        if (strcmp(v, "2M") == 0 || strcmp(v, "2m") == 0)
            hpw_cfg.page = HPW_PAGE_2M;
        else if (strcmp(v, "1G") == 0 || strcmp(v, "1g") == 0)
            hpw_cfg.page = HPW_PAGE_1G;
        else if (strcmp(v, "auto") == 0)
            hpw_cfg.page = HPW_PAGE_AUTO;
        else
            invalid(HPW_ENV_PAGE_SIZE, v, "2M, 1G or auto");
    }
    load_flag(HPW_ENV_STRICT, &hpw_cfg.strict);
    load_flag(HPW_ENV_KEEP_CACHE, &hpw_cfg.keep_cache);
    load_flag(HPW_ENV_PREFAULT, &hpw_cfg.prefault);
    if ((v = secure_getenv(HPW_ENV_NUMA)) != NULL && *v != '\0') {
        if (strcmp(v, "auto") == 0)
            hpw_cfg.numa = HPW_NUMA_AUTO;
        else if (strcmp(v, "interleave") == 0)
            hpw_cfg.numa = HPW_NUMA_INTERLEAVE;
        else if (strcmp(v, "off") == 0)
            hpw_cfg.numa = HPW_NUMA_OFF;
        else if (hpw_parse_node_list(v, hpw_cfg.numa_nodes) == 0)
            hpw_cfg.numa = HPW_NUMA_NODES;
        else
            invalid(HPW_ENV_NUMA, v, "auto, interleave, off or a node list such as 1 or 0-1");
    }
    if ((v = secure_getenv(HPW_ENV_THREADS)) != NULL && *v != '\0') {
        char *end = NULL;
        errno = 0;
        long n = strtol(v, &end, 10);
        if (errno == 0 && end != v && *end == '\0' && n >= 1 && n <= 256)
            hpw_cfg.threads = (unsigned)n;
        else
            invalid(HPW_ENV_THREADS, v, "a whole number from 1 to 256");
    }
}
