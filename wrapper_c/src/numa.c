/* Where the huge pages of a mapping go, on a host with several NUMA nodes
 * (HUGEPAGE_WRAPPER_NUMA):
 *   auto        the nodes the process's CPUs span (its affinity and cpuset at
 *               start): one node, bound there; several, interleaved over them.
 *               A task memory policy the process already has (numactl, a
 *               unit's NUMAPolicy=) is kept: no policy of ours then.
 *   interleave  over every node with memory the process may use.
 *   N,M-K       those nodes: bound to one, interleaved over several.
 *   off         the kernel's default (first touch), as without this library.
 * On a host with one node none of this does anything.
 *
 * A policy is set (mbind) right after the mapping is made, before anything
 * touches it, and the mapping is then faulted in (MADV_POPULATE_WRITE) by the
 * caller: a page a bound node cannot give is an error there, and a fallback,
 * never a SIGBUS in the program (the pool's reservation is global; a policy
 * set after mmap is not checked against it). */
#include "wrapper.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MPOL_DEFAULT 0
#define MPOL_BIND 2
#define MPOL_INTERLEAVE 3
#define MASK_WORDS (HPW_MAX_NODES / (8 * sizeof(unsigned long)))
#define BITS_PER_WORD (8 * sizeof(unsigned long))

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int policy_mode;                 /* MPOL_BIND, MPOL_INTERLEAVE or 0: none */
static unsigned long policy_mask[MASK_WORDS];
static char policy_text[96] = "default";

static void mask_set(unsigned long *mask, unsigned node)
{
    if (node < HPW_MAX_NODES)
        mask[node / BITS_PER_WORD] |= 1UL << (node % BITS_PER_WORD);
}

static int mask_has(const unsigned long *mask, unsigned node)
{
    return node < HPW_MAX_NODES && (mask[node / BITS_PER_WORD] >> (node % BITS_PER_WORD)) & 1;
}

static unsigned mask_count(const unsigned long *mask)
{
    unsigned n = 0;
    for (size_t i = 0; i < MASK_WORDS; i++)
        n += (unsigned)__builtin_popcountl(mask[i]);
    return n;
}

/* A kernel list ("0-3,8,10-11"), as sysfs and /proc/PID/status write it, into
 * a mask; -1 when it is not one. */
int hpw_parse_node_list(const char *s, unsigned long *mask)
{
    memset(mask, 0, MASK_WORDS * sizeof *mask);
    if (s == NULL || *s == '\0')
        return -1;
    for (const char *p = s; *p && *p != '\n';) {
        char *end;
        unsigned long a = strtoul(p, &end, 10), b = a;
        if (end == p || a >= HPW_MAX_NODES)
            return -1;
        if (*end == '-') {
            p = end + 1;
            b = strtoul(p, &end, 10);
            if (end == p || b < a || b >= HPW_MAX_NODES)
                return -1;
        }
        for (unsigned long n = a; n <= b; n++)
            mask_set(mask, (unsigned)n);
        if (*end == ',')
            end++;
        else if (*end != '\0' && *end != '\n')
            return -1;
        p = end;
    }
    return 0;
}

static int read_mask(const char *path, unsigned long *mask)
{
    char buf[4096];
    if (hpw_read_text(path, buf, sizeof buf) <= 0)
        return -1;
    return hpw_parse_node_list(buf, mask);
}

/* The value of "Mems_allowed_list:" in /proc/self/status (the cpuset's nodes). */
static int allowed_mems(unsigned long *mask)
{
    static char buf[16 << 10];
    if (hpw_read_text("/proc/self/status", buf, sizeof buf) <= 0)
        return -1;
    const char *key = strstr(buf, "Mems_allowed_list:");
    if (key == NULL)
        return -1;
    key += strlen("Mems_allowed_list:");
    while (*key == ' ' || *key == '\t')
        key++;
    return hpw_parse_node_list(key, mask);
}

/* The nodes whose CPUs this process may run on. */
static void cpu_nodes(const unsigned long *online, unsigned long *out)
{
    cpu_set_t set;
    memset(out, 0, MASK_WORDS * sizeof *out);
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        return;
    for (unsigned node = 0; node < HPW_MAX_NODES; node++) {
        if (!mask_has(online, node))
            continue;
        char path[96];
        unsigned long cpus[MASK_WORDS]; /* the same list syntax; CPU_SETSIZE bits, as here */
        snprintf(path, sizeof path, "/sys/devices/system/node/node%u/cpulist", node);
        if (read_mask(path, cpus) != 0)
            continue;
        for (unsigned c = 0; c < CPU_SETSIZE && c < HPW_MAX_NODES; c++)
            if (mask_has(cpus, c) && CPU_ISSET((int)c, &set)) {
                mask_set(out, node);
                break;
            }
    }
}

static void describe(void)
{
    int w = snprintf(policy_text, sizeof policy_text, "%s:",
                     policy_mode == MPOL_BIND ? "bind" : "interleave");
    const char *sep = "";
    for (unsigned node = 0; node < HPW_MAX_NODES && w > 0 && (size_t)w < sizeof policy_text;
         node++)
        if (mask_has(policy_mask, node)) {
            w += snprintf(policy_text + w, sizeof policy_text - (size_t)w, "%s%u", sep, node);
            sep = ",";
        }
}

static void decide(void)
{
    unsigned long online[MASK_WORDS], memory[MASK_WORDS], allowed[MASK_WORDS], want[MASK_WORDS];
    if (read_mask("/sys/devices/system/node/online", online) != 0 || mask_count(online) < 2)
        return; /* one node (or no NUMA): nothing to place */
    if (read_mask("/sys/devices/system/node/has_memory", memory) != 0)
        memcpy(memory, online, sizeof memory);
    if (allowed_mems(allowed) != 0)
        memcpy(allowed, memory, sizeof allowed);
    switch (hpw_cfg.numa) {
    case HPW_NUMA_OFF:
        return;
    case HPW_NUMA_AUTO: {
        int mode = MPOL_DEFAULT;
        if (syscall(SYS_get_mempolicy, &mode, NULL, 0UL, NULL, 0UL) == 0 && mode != MPOL_DEFAULT) {
            hpw_log(HPW_LOG_DEBUG, "NUMA: keeping the process's own memory policy (mode %d)",
                    mode);
            return;
        }
        cpu_nodes(online, want);
        break;
    }
    case HPW_NUMA_INTERLEAVE:
        memcpy(want, memory, sizeof want);
        break;
    case HPW_NUMA_NODES:
        memcpy(want, hpw_cfg.numa_nodes, sizeof want);
        break;
    }
    for (size_t i = 0; i < MASK_WORDS; i++)
        want[i] &= memory[i] & allowed[i];
    unsigned n = mask_count(want);
    if (n == 0) {
        hpw_log(HPW_LOG_INFO, "NUMA: no node with memory matches %s=%s; leaving placement to "
                "the kernel", HPW_ENV_NUMA, getenv(HPW_ENV_NUMA) ? getenv(HPW_ENV_NUMA) : "auto");
        return;
    }
    memcpy(policy_mask, want, sizeof policy_mask);
    policy_mode = n == 1 ? MPOL_BIND : MPOL_INTERLEAVE;
    describe();
    hpw_log(HPW_LOG_DEBUG, "NUMA: huge pages %s", policy_text);
}

int hpw_numa_active(void)
{
    pthread_once(&once, decide);
    return policy_mode != 0;
}

const char *hpw_numa_policy(void)
{
    pthread_once(&once, decide);
    return policy_text;
}

int hpw_numa_place(char *p, size_t len)
{
    if (!hpw_numa_active())
        return 0;
    int saved = errno;
    long rc = syscall(SYS_mbind, p, len, policy_mode, policy_mask,
                      (unsigned long)HPW_MAX_NODES + 1, 0U);
    if (rc != 0) {
        hpw_log(HPW_LOG_DEBUG, "NUMA: mbind %s failed (%s); the kernel places these pages",
                policy_text, strerror(errno));
        errno = saved;
        return -1;
    }
    errno = saved;
    return 0;
}

long hpw_numa_free(size_t page)
{
    if (!hpw_numa_active() || policy_mode != MPOL_BIND)
        return -1;
    long sum = 0;
    for (unsigned node = 0; node < HPW_MAX_NODES; node++)
        if (mask_has(policy_mask, node)) {
            long f = hpw_pool_counter((int)node, page, "free_hugepages");
            sum += f > 0 ? f : 0;
        }
    return sum;
}

void hpw_numa_short(size_t page, size_t pages, char *out, size_t size)
{
    int w = 0;
    for (unsigned node = 0; node < HPW_MAX_NODES && w >= 0 && (size_t)w < size; node++)
        if (mask_has(policy_mask, node)) {
            long f = hpw_pool_counter((int)node, page, "free_hugepages");
            w += snprintf(out + w, size - (size_t)w, "%snode %u: %ld of %zu %s pages free",
                          w ? ", " : "", node, f < 0 ? 0 : f, pages,
                          page == HPW_1G ? "1 GiB" : "2 MiB");
        }
    if (w == 0 && size)
        snprintf(out, size, "NUMA policy %s: pages short", policy_text);
}
