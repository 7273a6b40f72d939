/* Serving one file mapping from explicit huge pages: choose the page size,
 * check the pool, allocate a hugetlb memfd named after the file (so
 * /proc/PID/smaps attributes the pages to it), fill it, and register it.
 * Anything that goes wrong releases what was taken and falls back to the
 * caller's own file mapping (or fails with ENOMEM in strict mode). */
#include "wrapper.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/memfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MEMFD_PREFIX "hugepage-wrapper:"
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

static const char *page_name(size_t page)
{
    return page == HPW_1G ? "1 GiB" : "2 MiB";
}

static size_t choose_page_size(size_t visible)
{
    if (hpw_cfg.page == HPW_PAGE_2M)
        return HPW_2M;
    if (hpw_cfg.page == HPW_PAGE_1G)
        return HPW_1G;
    long avail = hpw_pool_available(HPW_1G);
    size_t need = (visible + HPW_1G - 1) / HPW_1G;
    return avail > 0 && (size_t)avail >= need ? HPW_1G : HPW_2M;
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

static int fill_from(int fd, int direct, off_t offset, size_t bytes, char *dst,
                     unsigned *threads, const char **what)
{
    if (*threads == 0)
        *threads = hpw_default_threads(bytes);
    int rc = hpw_fill(fd, direct, offset, bytes, dst, *threads, what);
    if (rc == 0 || !direct || errno != EINVAL)
        return rc;
    /* O_DIRECT refused by this file system: read through a plain descriptor. */
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int plain = open(link, O_RDONLY | O_CLOEXEC);
    if (plain < 0)
        return -1;
    rc = hpw_fill(plain, 0, offset, bytes, dst, *threads, what);
    int saved = errno;
    close(plain);
    errno = saved;
    return rc;
}

void *hpw_try_takeover(size_t length, int prot, int flags, int fd, off_t offset,
                       int *taken)
{
    (void)flags;
    *taken = 0;
    struct stat st;
    /* A regular file with data at the offset: /proc and /sys files (size 0)
     * and mappings wholly past the end go to the kernel, which decides. */
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= offset)
        return NULL;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (fl & O_ACCMODE) == O_WRONLY)
        return NULL;

    char path[4096];
    fd_path(fd, path, sizeof path);
    size_t visible = (length + HPW_SMALL_PAGE - 1) & ~(HPW_SMALL_PAGE - 1);
    size_t page = choose_page_size(visible);
    size_t npages = (visible + page - 1) / page;
    size_t total = npages * page;

    long avail = hpw_pool_available(page);
    if (avail < 0 || (size_t)avail < npages) {
        hpw_log(HPW_LOG_QUIET, "%s: huge page pool short: need %zu x %s pages, %ld free; "
                "%s", path, npages, page_name(page), avail < 0 ? 0 : avail,
                hpw_cfg.strict ? "not falling back" : "falling back to the regular file mapping");
        return give_up(path, taken);
    }

    char name[MEMFD_NAME_MAX + 1];
    size_t plen = strlen(path), room = MEMFD_NAME_MAX - sizeof MEMFD_PREFIX + 1;
    const char *tail = plen > room ? path + plen - room : path;
    memcpy(name, MEMFD_PREFIX, sizeof MEMFD_PREFIX - 1);
    memcpy(name + sizeof MEMFD_PREFIX - 1, tail, strlen(tail) + 1);
    unsigned size_flag = page == HPW_1G ? MFD_HUGE_1GB : MFD_HUGE_2MB;
    int memfd = memfd_create(name, MFD_CLOEXEC | MFD_HUGETLB | size_flag);
    if (memfd < 0) {
        hpw_log(HPW_LOG_QUIET, "%s: cannot create a %s hugetlb memfd (%s); %s", path,
                page_name(page), strerror(errno), hpw_cfg.strict ? "not falling back"
                : "falling back to the regular file mapping");
        return give_up(path, taken);
    }
    char *base = MAP_FAILED;
    if (ftruncate(memfd, (off_t)total) == 0)
        base = hpw_real_mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (base == MAP_FAILED) {
        /* The pool is charged at mmap time: a race with another process lands here. */
        hpw_log(HPW_LOG_QUIET, "%s: huge page pool short: need %zu x %s pages, %ld free (%s); "
                "%s", path, npages, page_name(page), hpw_pool_available(page),
                strerror(errno), hpw_cfg.strict ? "not falling back"
                : "falling back to the regular file mapping");
        close(memfd);
        return give_up(path, taken);
    }

    size_t bytes = 0;
    if (st.st_size > offset) {
        bytes = (size_t)(st.st_size - offset);
        if (bytes > visible)
            bytes = visible;
    }
    double t0 = now();
    const char *what = NULL;
    unsigned threads = hpw_cfg.threads;
    int direct = (fl & O_DIRECT) != 0;
    if (fill_from(fd, direct, offset, bytes, base, &threads, &what) != 0) {
        hpw_log(HPW_LOG_QUIET, "%s: %s failed while copying into huge pages (%s); %s", path,
                what ? what : "read", strerror(errno), hpw_cfg.strict ? "not falling back"
                : "falling back to the regular file mapping");
        hpw_real_munmap(base, total);
        close(memfd);
        return give_up(path, taken);
    }
    /* Fault in the pages past the data (end of file) too: the whole mapping is
     * then backed by huge pages from the start, as smaps shows. */
    for (size_t pos = (bytes + page - 1) / page * page; pos < total; pos += page)
        *(volatile char *)(base + pos) = 0;
    double secs = now() - t0;
    if (prot != (PROT_READ | PROT_WRITE))
        hpw_real_mprotect(base, total, prot);
    if (hpw_registry_add(base, visible, total, page, memfd, prot) != 0) {
        hpw_log(HPW_LOG_QUIET, "%s: too many mappings served from huge pages at once; %s",
                path, hpw_cfg.strict ? "not falling back"
                : "falling back to the regular file mapping");
        hpw_real_munmap(base, total);
        close(memfd);
        return give_up(path, taken);
    }
    double gib = (double)bytes / (double)HPW_1G;
    hpw_log(HPW_LOG_INFO, "%s: loaded %.2f GiB into %zu x %s huge pages in %.2f s "
            "(%.1f GiB/s, %u threads)", path, gib, npages, page_name(page), secs,
            secs > 0 ? gib / secs : 0.0, threads);
    *taken = 1;
    return base;
}
