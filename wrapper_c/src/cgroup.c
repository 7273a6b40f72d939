/* The hugetlb limits of the cgroup this process runs in, and of its ancestors:
 * how many more huge pages of one size it may fault in (hugetlb.<size>.max in
 * cgroup v2, .limit_in_bytes in v1) and reserve (.rsvd.max, .rsvd.limit_in_bytes)
 * before the kernel refuses. Past the fault limit the kernel raises SIGBUS at
 * the first touch of a page that mmap granted (what Kubernetes gives a pod that
 * requests no hugepages-2Mi, and what runc before 1.1.10 sets alone), so the
 * allocator and the file copier ask here first and fall back instead. */
#include "wrapper.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define LINE_MAX_LEN 4096

/* Each line of a small file, in turn; 0 from fn stops. */
static void each_line(const char *path, int (*fn)(char *line, void *arg), void *arg)
{
    static char buf[64 << 10]; /* under hpw_cgroup_room's lock */
    ssize_t n = hpw_read_text(path, buf, sizeof buf);
    for (char *line = buf, *end; n > 0 && line && *line; line = end ? end + 1 : NULL) {
        end = strchr(line, '\n');
        if (end)
            *end = '\0';
        if (!fn(line, arg))
            break;
    }
}

struct where {
    int v2;
    char path[LINE_MAX_LEN];  /* the cgroup, below its hierarchy's root */
    char mount[LINE_MAX_LEN]; /* where that hierarchy is mounted */
    char root[LINE_MAX_LEN];  /* the mount's root within the hierarchy */
};

static int has_word(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)) != NULL; p += n)
        if ((p == list || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
            return 1;
    return 0;
}

/* /proc/self/cgroup: HIERARCHY-ID:CONTROLLERS:PATH; v2's is 0::PATH */
static int cgroup_line(char *line, void *arg)
{
    struct where *w = arg;
    char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c2)
        return 1;
    *c2 = '\0';
    const char *controllers = c1 + 1;
    int match = w->v2 ? (c1 - line == 1 && line[0] == '0' && *controllers == '\0')
                      : has_word(controllers, "hugetlb");
    if (!match)
        return 1;
    snprintf(w->path, sizeof w->path, "%s", c2 + 1);
    return 0;
}

/* mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPER */
static int mount_line(char *line, void *arg)
{
    struct where *w = arg;
    char *sep = strstr(line, " - ");
    if (!sep)
        return 1;
    char fstype[32] = "", super[512] = "";
    if (sscanf(sep + 3, "%31s %*s %511s", fstype, super) < 1)
        return 1;
    int match = w->v2 ? strcmp(fstype, "cgroup2") == 0
                      : strcmp(fstype, "cgroup") == 0 && has_word(super, "hugetlb");
    if (!match)
        return 1;
    char root[LINE_MAX_LEN], mount[LINE_MAX_LEN];
    if (sscanf(line, "%*s %*s %*s %4095s %4095s", root, mount) != 2)
        return 1;
    snprintf(w->root, sizeof w->root, "%s", root);
    snprintf(w->mount, sizeof w->mount, "%s", mount);
    return 0;
}

/* The directory of this process's cgroup in one hierarchy; 0 when found. */
static int locate(int v2, char *dir, size_t size, size_t *mount_len)
{
    static struct where w; /* large: not on the program's stack */
    memset(&w, 0, sizeof w);
    w.v2 = v2;
    each_line("/proc/self/cgroup", cgroup_line, &w);
    if (w.path[0] != '/')
        return -1;
    each_line("/proc/self/mountinfo", mount_line, &w);
    if (w.mount[0] != '/')
        return -1;
    const char *rel = w.path;
    size_t rl = strlen(w.root);
    if (strcmp(w.root, "/") != 0) {
        if (strncmp(rel, w.root, rl) != 0)
            return -1; /* this cgroup is not below the mount's root */
        rel += rl;
    }
    *mount_len = strlen(w.mount);
    int n = snprintf(dir, size, "%s%s", w.mount, strcmp(rel, "/") == 0 ? "" : rel);
    return n > 0 && (size_t)n < size ? 0 : -1;
}

static long long read_number(const char *dir, const char *name, int *unlimited)
{
    char path[LINE_MAX_LEN + 64], buf[64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (hpw_read_text(path, buf, sizeof buf) <= 0)
        return -1;
    *unlimited = strncmp(buf, "max", 3) == 0;
    return *unlimited ? 0 : strtoll(buf, NULL, 10);
}

/* One limit (fault or reservation) at one level: the pages left under it, or
 * -1 when it does not bind there. */
static long pages_left(const char *dir, const char *limit, const char *usage, size_t page)
{
    int unlimited = 0, ignored = 0;
    long long max = read_number(dir, limit, &unlimited);
    if (max < 0 || unlimited)
        return -1;
    long long used = read_number(dir, usage, &ignored);
    if (used < 0)
        used = 0;
    if ((unsigned long long)max >= (1ULL << 62))
        return -1; /* v1's "no limit" */
    return max > used ? (long)((unsigned long long)(max - used) / page) : 0;
}

long hpw_cgroup_room(size_t page, char *file, size_t file_len)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* the buffers are static */
    const char *size = page == HPW_1G ? "1GB" : "2MB";
    long room = -1;
    pthread_mutex_lock(&lock);
    for (int v2 = 1; v2 >= 0; v2--) {
        static char dir[LINE_MAX_LEN];
        size_t mount_len = 0;
        if (locate(v2, dir, sizeof dir, &mount_len) != 0)
            continue;
        static const char *const v2_files[][2] = {{"max", "current"},
                                                  {"rsvd.max", "rsvd.current"}};
        static const char *const v1_files[][2] = {{"limit_in_bytes", "usage_in_bytes"},
                                                  {"rsvd.limit_in_bytes", "rsvd.usage_in_bytes"}};
        /* this cgroup and each ancestor up to the hierarchy's root: all bind */
        for (;;) {
            for (int k = 0; k < 2; k++) {
                char limit[64], usage[64];
                const char *const *f = v2 ? v2_files[k] : v1_files[k];
                snprintf(limit, sizeof limit, "hugetlb.%s.%s", size, f[0]);
                snprintf(usage, sizeof usage, "hugetlb.%s.%s", size, f[1]);
                long left = pages_left(dir, limit, usage, page);
                if (left >= 0 && (room < 0 || left < room)) {
                    room = left;
                    if (file && file_len)
                        snprintf(file, file_len, "%s/%s", dir, limit);
                }
            }
            char *slash = strrchr(dir, '/');
            if (!slash || (size_t)(slash - dir) < mount_len)
                break;
            *slash = '\0';
        }
    }
    pthread_mutex_unlock(&lock);
    return room;
}

int hpw_populate(char *p, size_t len)
{
    int saved = errno;
    if (hpw_real_madvise(p, len, MADV_POPULATE_WRITE) == 0 || errno == EINVAL) {
        errno = saved; /* done, or a kernel before 5.14: the first touches fault them in */
        return 0;
    }
    return -1;
}

int hpw_prefault_wanted(int limit_binds)
{
    return limit_binds || hpw_cfg.prefault || hpw_numa_active();
}
