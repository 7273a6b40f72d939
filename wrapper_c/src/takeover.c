/* Serving one file mapping from explicit huge pages: decide whether a copy
 * can be told from the file mapping, choose the page sizes, check the pool,
 * map private hugetlb memfds named after the file (so /proc/PID/smaps
 * attributes the pages to it), fill them, and register them. Anything that
 * goes wrong releases what was taken and falls back to the caller's own file
 * mapping (or fails with ENOMEM in strict mode). */
#include "wrapper.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/memfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <linux/magic.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#define MEMFD_PREFIX HPW_FILE_MEMFD_PREFIX
#define MEMFD_NAME_MAX 249

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fd_path(int fd, char *out, size_t size)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, size - 1);
    if (n < 0)
        n = snprintf(out, size, "fd %d", fd);
    out[n < (ssize_t)size ? n : (ssize_t)size - 1] = '\0';
}

static void *give_up(const char *path, int *taken)
{
    if (hpw_cfg.strict) {
        hpw_log(HPW_LOG_QUIET, "%s: strict mode (HUGEPAGE_WRAPPER_STRICT=1): failing the "
                "mapping with ENOMEM", path);
        *taken = 1;
        errno = ENOMEM;
        return MAP_FAILED;
    }
    *taken = 0;
    return NULL;
}

static int fill_from(int fd, int direct, int prefault, off_t offset, size_t bytes, char *dst,
                     unsigned *threads, const char **what)
{
    if (*threads == 0)
        *threads = hpw_default_threads(bytes);
    int rc = hpw_fill(fd, direct, prefault, offset, bytes, dst, *threads, what);
    if (rc == 0 || !direct || errno != EINVAL)
        return rc;
    /* O_DIRECT refused by this file system: read through a plain descriptor. */
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int plain = open(link, O_RDONLY | O_CLOEXEC);
    if (plain < 0)
        return -1;
    rc = hpw_fill(plain, 0, prefault, offset, bytes, dst, *threads, what);
    int saved = errno;
    close(plain);
    errno = saved;
    return rc;
}

#define ALLOWED_FLAGS (MAP_POPULATE | MAP_NORESERVE | MAP_LOCKED | MAP_NONBLOCK | \
                       MAP_DENYWRITE | MAP_EXECUTABLE)

/* From the arguments alone: a read-only private or shared file mapping, with
 * no flag whose meaning a copy could not keep (MAP_FIXED, MAP_32BIT,
 * MAP_SHARED_VALIDATE, MAP_GROWSDOWN, MAP_HUGETLB...). */
int hpw_takeover_eligible(size_t length, int prot, int flags, int fd, off_t offset)
{
    int type = flags & MAP_TYPE;
    return fd >= 0 && prot == PROT_READ && (type == MAP_PRIVATE || type == MAP_SHARED) &&
           (flags & ~(MAP_TYPE | ALLOWED_FLAGS)) == 0 && length >= hpw_cfg.min_size &&
           length <= ((size_t)-1 >> 2) && offset >= 0 &&
           (offset & (off_t)(HPW_SMALL_PAGE - 1)) == 0;
}

/* Where a copy cannot be told from the file mapping: a regular file with data
 * at the offset, read through a descriptor that cannot make the mapping
 * writable later (a shared mapping of a read-write descriptor could be), on a
 * file system whose pages are not memory already (tmpfs, memfd, hugetlbfs). */
static int copyable(int fd, int flags, struct stat *st, int *fl, int *noexec)
{
    struct statfs sf;
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode) || fstatfs(fd, &sf) != 0)
        return 0;
    if (sf.f_type == TMPFS_MAGIC || sf.f_type == HUGETLBFS_MAGIC || sf.f_type == RAMFS_MAGIC)
        return 0;
    *fl = fcntl(fd, F_GETFL);
    if (*fl < 0 || (*fl & O_PATH))
        return 0;
    int mode = *fl & O_ACCMODE;
    if (mode == O_WRONLY || (mode == O_RDWR && (flags & MAP_TYPE) != MAP_PRIVATE))
        return 0;
    *noexec = (sf.f_flags & ST_NOEXEC) != 0;
    return 1;
}

struct plan {
    size_t visible;   /* what the program mapped, in 4 KiB pages */
    size_t bytes;     /* file bytes in it */
    size_t data_len;  /* those bytes in 4 KiB pages: the copy */
    size_t big;       /* bytes in 1 GiB pages, from the start */
    size_t small;     /* bytes in 2 MiB pages, after them */
    size_t align;
};

static int pool_gives(size_t page, size_t n)
{
    long avail = n ? hpw_pool_available(page) : 0;
    return n == 0 || (avail >= 0 && (size_t)avail >= n);
}

static int cgroup_allows(size_t page, size_t n, char *file, size_t file_len)
{
    long room = n ? hpw_cgroup_room(page, file, file_len) : -1;
    return room < 0 || (size_t)room >= n;
}

/* The pool has n pages of this size, and the cgroups let this process take
 * them (past a fault limit, the first touch would raise SIGBUS). */
static int have(size_t page, size_t n)
{
    long node_free = n ? hpw_numa_free(page) : -1;
    return pool_gives(page, n) && cgroup_allows(page, n, NULL, 0) &&
           (node_free < 0 || (size_t)node_free >= n);
}

/* Auto mode: 1 GiB pages for the whole gigabytes and 2 MiB pages for the rest
 * where the pools have them; else all in 1 GiB pages, else all in 2 MiB. */
static void plan_pages(struct plan *p)
{
    size_t gib = p->data_len / HPW_1G, up = (p->data_len + HPW_1G - 1) / HPW_1G;
    size_t rest = (p->data_len - gib * HPW_1G + HPW_2M - 1) / HPW_2M;
    if (hpw_cfg.page == HPW_PAGE_1G)
        p->big = up * HPW_1G;
    else if (hpw_cfg.page == HPW_PAGE_2M)
        p->big = 0;
    else if (gib > 0 && have(HPW_1G, gib) && have(HPW_2M, rest))
        p->big = gib * HPW_1G;
    else if (have(HPW_1G, up) && !have(HPW_2M, (p->data_len + HPW_2M - 1) / HPW_2M))
        p->big = up * HPW_1G;
    else
        p->big = 0;
    size_t left = p->data_len > p->big ? p->data_len - p->big : 0;
    p->small = (left + HPW_2M - 1) / HPW_2M * HPW_2M;
    p->align = p->big != 0 ? HPW_1G : HPW_2M;
}

/* 1 when the pools and the cgroups give the plan's pages; else 0, with why
 * (and the reason= token) */
static int pool_has(const struct plan *p, char *why, size_t size, const char **reason)
{
    size_t n1 = p->big / HPW_1G, n2 = p->small / HPW_2M;
    if (have(HPW_1G, n1) && have(HPW_2M, n2))
        return 1;
    char file[512];
    *reason = HPW_REASON_POOL;
    if (pool_gives(HPW_1G, n1) && pool_gives(HPW_2M, n2) &&
        !(cgroup_allows(HPW_1G, n1, NULL, 0) && cgroup_allows(HPW_2M, n2, NULL, 0))) {
        /* a cgroup limit binds */
        *reason = HPW_REASON_CGROUP;
        size_t page = cgroup_allows(HPW_1G, n1, file, sizeof file) ? HPW_2M : HPW_1G;
        size_t n = page == HPW_1G ? n1 : n2;
        long room = hpw_cgroup_room(page, file, sizeof file);
        snprintf(why, size, "cgroup hugetlb limit: need %zu x %s pages, %ld allowed by %s", n,
                 page == HPW_1G ? "1 GiB" : "2 MiB", room < 0 ? 0 : room, file);
        return 0;
    }
    long a1 = hpw_pool_available(HPW_1G), a2 = hpw_pool_available(HPW_2M);
    if (n1 + n2 && (!n1 || a1 >= (long)n1) && (!n2 || a2 >= (long)n2)) { /* the pool has them, a bound node not */
        *reason = HPW_REASON_NODE;
        size_t page = n1 && hpw_numa_free(HPW_1G) < (long)n1 ? HPW_1G : HPW_2M;
        hpw_numa_short(page, page == HPW_1G ? n1 : n2, why, size);
        return 0;
    }
    int w = snprintf(why, size, "huge page pool short: need");
    if (n1 && w > 0 && (size_t)w < size)
        w += snprintf(why + w, size - (size_t)w, " %zu x 1 GiB pages, %ld free%s", n1,
                      a1 < 0 ? 0 : a1, n2 ? ";" : "");
    if (n2 && w > 0 && (size_t)w < size)
        snprintf(why + w, size - (size_t)w, " %zu x 2 MiB pages, %ld free", n2, a2 < 0 ? 0 : a2);
    return 0;
}

/* A private mapping of a fresh hugetlb memfd at `at`: its pages are anonymous
 * huge pages, charged to the pool now. */
static int map_segment(char *at, size_t len, size_t page, const char *name)
{
    unsigned size_flag = page == HPW_1G ? MFD_HUGE_1GB : MFD_HUGE_2MB;
    int memfd = memfd_create(name, MFD_CLOEXEC | MFD_HUGETLB | size_flag);
    if (memfd < 0)
        return -1;
    void *m = MAP_FAILED;
    if (ftruncate(memfd, (off_t)len) == 0)
        m = hpw_real_mmap(at, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, memfd, 0);
    int saved = errno;
    close(memfd);
    errno = saved;
    return m == MAP_FAILED ? -1 : 0;
}

static int munmap_arg(void *addr, size_t len, int unused)
{
    (void)unused;
    return hpw_real_munmap(addr, len);
}

/* Step 1: whether the mapping can be served from a copy, and its plan; 0
 * when it cannot (the caller maps the file itself, silently). */
static int plan_copy(size_t length, int flags, int fd, off_t offset, struct stat *st,
                     int *fl, int *noexec, struct plan *pl)
{
    if (!copyable(fd, flags, st, fl, noexec) || st->st_size <= offset)
        return 0;
    *pl = (struct plan){.visible = (length + HPW_SMALL_PAGE - 1) & ~(HPW_SMALL_PAGE - 1)};
    pl->bytes = (size_t)(st->st_size - offset) < pl->visible ? (size_t)(st->st_size - offset)
                                                             : pl->visible;
    pl->data_len = (pl->bytes + HPW_SMALL_PAGE - 1) & ~(HPW_SMALL_PAGE - 1);
    if (pl->data_len < hpw_cfg.min_size)
        return 0; /* the file holds less than that: not worth a copy */
    plan_pages(pl);
    return 1;
}

/* The memfd name smaps shows for a copy of `path`: the prefix and as much of
 * the path's end as fits. */
static void memfd_name(const char *path, char name[MEMFD_NAME_MAX + 1])
{
    size_t plen = strlen(path), room = MEMFD_NAME_MAX - sizeof MEMFD_PREFIX + 1;
    const char *tail = plen > room ? path + plen - room : path;
    memcpy(name, MEMFD_PREFIX, sizeof MEMFD_PREFIX - 1);
    memcpy(name + sizeof MEMFD_PREFIX - 1, tail, strlen(tail) + 1);
}

/* Step 2: address space for the copy and the part past the end of file,
 * aligned, with the huge page segments mapped (charged to the pool now).
 * NULL when the pool is short, or with *span 0, the address space. */
static char *map_copy(const struct plan *pl, const char *name, size_t *span)
{
    size_t huge_len = pl->big + pl->small;
    *span = huge_len > pl->visible ? huge_len : pl->visible;
    char *res = hpw_real_mmap(NULL, *span + pl->align, PROT_NONE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (res == MAP_FAILED) {
        *span = 0;
        return NULL;
    }
    char *base = (char *)(((uintptr_t)res + pl->align - 1) & ~(uintptr_t)(pl->align - 1));
    if (base > res)
        hpw_real_munmap(res, (size_t)(base - res));
    if (res + *span + pl->align > base + *span)
        hpw_real_munmap(base + *span, (size_t)(res + *span + pl->align - (base + *span)));
    if ((pl->big && map_segment(base, pl->big, HPW_1G, name) != 0) ||
        (pl->small && map_segment(base + pl->big, pl->small, HPW_2M, name) != 0)) {
        int err = errno;
        hpw_real_munmap(base, *span);
        errno = err;
        return NULL;
    }
    return base;
}

/* Step 3: the file's bytes into the copy, placed on its NUMA node(s) first;
 * 0 when done (*what and errno say what failed otherwise). */
static int fill_copy(const struct plan *pl, char *base, int fd, int direct, off_t offset,
                     unsigned *threads, const char **what)
{
    size_t huge_len = pl->big + pl->small;
    hpw_numa_place(base, huge_len); /* before the copy touches a page */
    /* The pages past the data too: the whole copy is then backed by huge pages
     * from the start, as smaps shows. */
    size_t past_data = (pl->bytes + HPW_2M - 1) / HPW_2M * HPW_2M;
    /* Under a cgroup's fault limit or a NUMA policy, each page is faulted in
     * before it is written, so that a page the limit or the node refuses is an
     * error here, not a SIGBUS; elsewhere the pool's reservation (at mmap)
     * guarantees them, and the faults of the copy itself are cheaper than a
     * separate pass. */
    int prefault = hpw_prefault_wanted(hpw_cgroup_room(HPW_2M, NULL, 0) >= 0 ||
                                       hpw_cgroup_room(HPW_1G, NULL, 0) >= 0);
    if (fill_from(fd, direct, prefault, offset, pl->bytes, base, threads, what) != 0)
        return -1;
    if (past_data < huge_len && prefault &&
        hpw_populate(base + past_data, huge_len - past_data) != 0) {
        *what = "faulting in huge pages";
        return -1;
    }
    for (size_t pos = past_data; !prefault && pos < huge_len; pos += HPW_2M)
        *(volatile char *)(base + pos) = 0; /* reserved at mmap: no limit can refuse it */
    return 0;
}

/* Step 4: the copy's segments in the registry; 0, or -1 with none left there. */
static int register_copy(const struct plan *pl, char *base, int prot, struct hpw_file *file)
{
    size_t vis_big = pl->data_len < pl->big ? pl->data_len : pl->big;
    int regs = 0;
    if (pl->big && hpw_registry_add(HPW_REGION_FILE, base, pl->big, HPW_1G, vis_big, prot,
                                    file) == 0)
        regs |= 1;
    file->offset += (off_t)pl->big;
    if (pl->small && hpw_registry_add(HPW_REGION_FILE, base + pl->big, pl->small, HPW_2M,
                                      pl->data_len - vis_big, prot, file) == 0)
        regs |= 2;
    if (regs == ((pl->big ? 1 : 0) | (pl->small ? 2 : 0)))
        return 0;
    if (regs & 1)
        hpw_registry_remove(HPW_REGION_FILE, base);
    if (regs & 2)
        hpw_registry_remove(HPW_REGION_FILE, base + pl->big);
    return -1;
}

/* Step 5: past the end of the data nothing the program mapped stays in huge
 * pages (the last one goes to 4 KiB pages), and the part past the end of file
 * is the file itself, which faults SIGBUS there as the kernel does. */
static void trim_tail(const struct plan *pl, char *base, int prot, int flags, int fd,
                      off_t offset)
{
    size_t huge_len = pl->big + pl->small;
    size_t last = pl->small ? HPW_2M : HPW_1G;
    if (huge_len > pl->data_len && (last == HPW_2M || pl->visible > pl->data_len)) {
        int handled;
        hpw_registry_apply(HPW_OP_UNMAP, base + pl->data_len, huge_len - pl->data_len, 0,
                           munmap_arg, &handled);
    }
    if (pl->visible > pl->data_len)
        hpw_real_mmap(base + pl->data_len, pl->visible - pl->data_len, prot, flags | MAP_FIXED,
                      fd, offset + (off_t)pl->data_len);
}

void *hpw_try_takeover(size_t length, int prot, int flags, int fd, off_t offset,
                       int *taken)
{
    *taken = 0;
    struct stat st;
    struct plan pl;
    int fl = 0, noexec = 0;
    if (!plan_copy(length, flags, fd, offset, &st, &fl, &noexec, &pl))
        return NULL;
    char path[4096], why[640], name[MEMFD_NAME_MAX + 1];
    fd_path(fd, path, sizeof path);
    const char *reason = NULL;
    if (!pool_has(&pl, why, sizeof why, &reason)) {
        hpw_log_fallback(HPW_FALLBACK_FILE, path, reason, "%s", why);
        return give_up(path, taken);
    }
    memfd_name(path, name);
    size_t span;
    char *base = map_copy(&pl, name, &span);
    if (base == NULL && span == 0)
        return give_up(path, taken); /* no address space: the file mapping will say so */
    if (base == NULL) {
        /* The pool is charged at mmap time: a race with another process lands here. */
        hpw_log_fallback(HPW_FALLBACK_FILE, path, HPW_REASON_POOL, "huge page pool short (%s)",
                         strerror(errno));
        return give_up(path, taken);
    }
    double t0 = now();
    const char *what = NULL;
    unsigned threads = hpw_cfg.threads;
    if (fill_copy(&pl, base, fd, (fl & O_DIRECT) != 0, offset, &threads, &what) != 0) {
        int err = errno;
        if (!pool_has(&pl, why, sizeof why, &reason)) /* a limit crossed since the check */
            hpw_log_fallback(HPW_FALLBACK_FILE, path, reason, "%s", why);
        else
            hpw_log_fallback(HPW_FALLBACK_FILE, path, HPW_REASON_COPY,
                             "%s failed while copying into huge pages (%s)", what ? what : "read",
                             strerror(err));
        hpw_real_munmap(base, span);
        return give_up(path, taken);
    }
    double secs = now() - t0;
    hpw_real_mprotect(base, pl.big + pl.small, prot);
    struct hpw_file file = {
        .path = path, .dev = st.st_dev, .ino = st.st_ino, .offset = offset,
        .flags = flags & (MAP_TYPE | ALLOWED_FLAGS), .maywrite = (flags & MAP_TYPE) == MAP_PRIVATE,
        .noexec = noexec,
    };
    if (register_copy(&pl, base, prot, &file) != 0) {
        hpw_log_fallback(HPW_FALLBACK_FILE, path, HPW_REASON_TABLE,
                         "too many mappings served from huge pages at once");
        hpw_real_munmap(base, span);
        return give_up(path, taken);
    }
    trim_tail(&pl, base, prot, flags, fd, offset);
    double gib = (double)pl.bytes / (double)HPW_1G;
    hpw_log(HPW_LOG_INFO, "%s: loaded %.2f GiB into %zu x 1 GiB and %zu x 2 MiB huge pages "
            "in %.2f s (%.1f GiB/s, %u threads)", path, gib, pl.big / HPW_1G,
            pl.small / HPW_2M, secs, secs > 0 ? gib / secs : 0.0, threads);
    *taken = 1;
    return base;
}
