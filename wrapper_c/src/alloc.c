/* Large heap allocations served from explicit huge pages.
 *
 * An allocation of at least HUGEPAGE_WRAPPER_ALLOC_MIN_SIZE bytes gets a
 * mapping of its own: a private mapping of a fresh hugetlb memfd named
 * "hugepage-wrapper-heap", so that /proc/PID/smaps attributes its pages
 * (`/memfd:hugepage-wrapper-heap (deleted)`). Private, so that after fork
 * the memory is copy-on-write as malloc's is; the memfd itself never holds a
 * page (the kernel gives a private mapping anonymous pages) and is closed at
 * once. The pool is charged when the mapping is made, so a short pool shows
 * there, as ENOMEM, and the caller falls back to libc (or fails, in strict
 * mode). Pages are faulted lazily, as with malloc, and come zeroed.
 *
 * The pointer handed out is the start of the mapping: huge page aligned,
 * which honours every alignment up to the page size. A table keyed by that
 * address tells ours from libc's; any pointer that is not huge page aligned
 * is libc's without a look. */
#include "wrapper.h"

#include <errno.h>
#include <linux/memfd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_LIVE HPW_MAX_ALLOCS
#define TABLE_SIZE (2 * MAX_LIVE) /* open addressing; at most half full */
#define TOMBSTONE ((char *)1)
#define FALLBACK_LOG_LINES 16

struct block {
    char *base;
    size_t len;
    size_t page;
};

static struct block table[TABLE_SIZE];
static size_t live_count;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_size_t live_blocks;
static atomic_size_t live_bytes, peak_bytes, fallback_count;

static void atfork_prepare(void) { pthread_mutex_lock(&lock); }
static void atfork_release(void) { pthread_mutex_unlock(&lock); }

void hpw_alloc_init(void)
{
    pthread_atfork(atfork_prepare, atfork_release, atfork_release);
}

static size_t slot_of(const void *base)
{
    uintptr_t k = (uintptr_t)base >> 21;
    return (size_t)((k * 0x9E3779B97F4A7C15ULL) >> 32) & (TABLE_SIZE - 1);
}

static int table_put(char *base, size_t len, size_t page)
{
    pthread_mutex_lock(&lock);
    if (live_count >= MAX_LIVE) {
        pthread_mutex_unlock(&lock);
        return -1;
    }
    size_t i = slot_of(base);
    while (table[i].base != NULL && table[i].base != TOMBSTONE)
        i = (i + 1) & (TABLE_SIZE - 1);
    table[i] = (struct block){base, len, page};
    live_count++;
    atomic_fetch_add(&live_blocks, 1);
    pthread_mutex_unlock(&lock);
    return 0;
}

/* The table's entry for p, or NULL; the caller holds the lock. */
static struct block *lookup(const void *p)
{
    for (size_t i = slot_of(p), n = 0; n < TABLE_SIZE && table[i].base != NULL;
         i = (i + 1) & (TABLE_SIZE - 1), n++)
        if (table[i].base == p)
            return &table[i];
    return NULL;
}

/* Whether p may be ours: a huge page aligned pointer while any block lives.
 * Every other pointer is libc's, known without taking the lock. */
static int maybe_ours(const void *p)
{
    return p != NULL && ((uintptr_t)p & (HPW_2M - 1)) == 0 &&
           atomic_load_explicit(&live_blocks, memory_order_acquire) != 0;
}

/* The length of our block at p (0: not ours); with `remove`, forgets it. */
static size_t table_find(const void *p, int remove)
{
    pthread_mutex_lock(&lock);
    struct block *b = lookup(p);
    size_t len = b != NULL ? b->len : 0;
    if (b != NULL && remove) {
        b->base = TOMBSTONE;
        live_count--;
        atomic_fetch_sub(&live_blocks, 1);
    }
    pthread_mutex_unlock(&lock);
    return len;
}

/* Shrinks our block at p to `size` bytes, giving back the huge pages past it
 * (rounded to the page size the block was made with). */
void hpw_alloc_shrink(void *p, size_t size)
{
    pthread_mutex_lock(&lock);
    struct block *b = lookup(p);
    if (b != NULL) {
        size_t keep = (size + b->page - 1) / b->page * b->page;
        if (keep < b->len) {
            hpw_registry_shrink(p, keep);
            if (hpw_real_munmap((char *)p + keep, b->len - keep) == 0) {
                atomic_fetch_sub(&live_bytes, b->len - keep);
                b->len = keep;
            }
        }
    }
    pthread_mutex_unlock(&lock);
}

size_t hpw_alloc_size(const void *p)
{
    return maybe_ours(p) ? table_find(p, 0) : 0;
}

int hpw_alloc_wants(size_t size, size_t align)
{
    return hpw_cfg.alloc_min != 0 && size >= hpw_cfg.alloc_min && align <= HPW_2M;
}

static double mib(size_t n)
{
    return (double)n / (double)(1 << 20);
}

/* `short_of`: what was short, e.g. "huge page pool short: need 16 x 2 MiB pages, 3 free" */
static void *fallback_because(size_t size, const char *short_of, const char *reason)
{
    size_t n = atomic_fetch_add(&fallback_count, 1);
    if (n < FALLBACK_LOG_LINES) {
        char subject[64];
        snprintf(subject, sizeof subject, "allocation of %.1f MiB", mib(size));
        hpw_log_fallback(HPW_FALLBACK_ALLOC, subject, reason, "%s", short_of);
    } else if (n == FALLBACK_LOG_LINES)
        hpw_log(HPW_LOG_QUIET, "more allocations fell back to libc; not logging each");
    errno = ENOMEM;
    return NULL;
}

static void *fallback(size_t size, size_t pages, size_t page, const char *why,
                      const char *reason)
{
    char what[256];
    snprintf(what, sizeof what, "%s: need %zu x %s pages, %ld free", why, pages,
             page == HPW_1G ? "1 GiB" : "2 MiB", hpw_pool_available(page));
    return fallback_because(size, what, reason);
}

/* Past a cgroup's hugetlb fault limit the first touch raises SIGBUS: 1 (the
 * fallback logged, errno ENOMEM) when the allocation would cross a limit.
 * *room: the pages the cgroups allow now, -1 when no limit binds. */
static int over_cgroup_limit(size_t size, size_t pages, size_t page, long *room_out)
{
    char file[512], what[768];
    long room = hpw_cgroup_room(page, file, sizeof file);
    *room_out = room;
    if (room < 0 || (size_t)room >= pages)
        return 0;
    snprintf(what, sizeof what, "cgroup hugetlb limit: need %zu x %s pages, %ld allowed by %s",
             pages, page == HPW_1G ? "1 GiB" : "2 MiB", room, file);
    fallback_because(size, what, HPW_REASON_CGROUP);
    return 1;
}

/* The node(s) a bound policy allows have too few free pages. */
static void *node_short(size_t size, size_t pages, size_t page)
{
    char what[512];
    hpw_numa_short(page, pages, what, sizeof what);
    return fallback_because(size, what, HPW_REASON_NODE);
}

static size_t choose_page(size_t size)
{
    if (hpw_cfg.page == HPW_PAGE_2M)
        return HPW_2M;
    if (hpw_cfg.page == HPW_PAGE_1G)
        return HPW_1G;
    /* auto: 1 GiB pages only where they waste little and the pool has them */
    size_t pages = (size + HPW_1G - 1) / HPW_1G;
    long avail = hpw_pool_available(HPW_1G);
    if (avail > 0 && (size_t)avail >= pages && pages * HPW_1G - size <= size / 32)
        return HPW_1G;
    return HPW_2M;
}

/* A block of at least `size` bytes from huge pages, or NULL with errno ENOMEM
 * (the pool is short: the caller falls back, or fails in strict mode). */
void *hpw_alloc(size_t size)
{
    size_t page = choose_page(size);
    if (size > (size_t)-1 - page)
        return fallback(size, 0, page, "size too large", HPW_REASON_SIZE);
    size_t pages = (size + page - 1) / page, len = pages * page;
    long avail = hpw_pool_available(page);
    if (avail >= 0 && (size_t)avail < pages)
        return fallback(size, pages, page, "huge page pool short", HPW_REASON_POOL);
    long room;
    if (over_cgroup_limit(size, pages, page, &room))
        return NULL;
    long node_free = hpw_numa_free(page);
    if (node_free >= 0 && (size_t)node_free < pages)
        return node_short(size, pages, page);
    unsigned flag = page == HPW_1G ? MFD_HUGE_1GB : MFD_HUGE_2MB;
    int fd = memfd_create(HPW_HEAP_MEMFD, MFD_CLOEXEC | MFD_HUGETLB | flag);
    if (fd < 0)
        return fallback(size, pages, page, "no hugetlb memfd", HPW_REASON_MEMFD);
    char *p = MAP_FAILED;
    if (ftruncate(fd, (off_t)len) == 0)
        p = hpw_real_mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return fallback(size, pages, page, "huge page pool short", HPW_REASON_POOL);
    /* Placed on its node(s) before anything touches it; then, under a NUMA
     * policy or a cgroup's fault limit, faulted in now: a page the node or the
     * limit refuses is a fallback here, not a SIGBUS at the program's first touch. */
    hpw_numa_place(p, len);
    if (hpw_prefault_wanted(room >= 0) && hpw_populate(p, len) != 0) {
        hpw_real_munmap(p, len);
        if (over_cgroup_limit(size, pages, page, &room)) /* crossed since the check */
            return NULL;
        node_free = hpw_numa_free(page);
        if (node_free >= 0 && (size_t)node_free < pages)
            return node_short(size, pages, page);
        return fallback(size, pages, page, "huge pages could not be faulted in",
                        HPW_REASON_POOL);
    }
    if (hpw_registry_add(HPW_REGION_ALLOC, p, len, page, len, PROT_READ | PROT_WRITE,
                         NULL) != 0) {
        hpw_real_munmap(p, len);
        return fallback(size, pages, page, "too many huge page allocations",
                        HPW_REASON_TABLE);
    }
    if (table_put(p, len, page) != 0) {
        hpw_registry_remove(HPW_REGION_ALLOC, p);
        hpw_real_munmap(p, len);
        return fallback(size, pages, page, "too many huge page allocations",
                        HPW_REASON_TABLE);
    }
    size_t now = atomic_fetch_add(&live_bytes, len) + len;
    size_t peak = atomic_load(&peak_bytes);
    while (now > peak && !atomic_compare_exchange_weak(&peak_bytes, &peak, now)) {}
    hpw_log(HPW_LOG_DEBUG, "allocation of %.1f MiB at %p: %zu x %s huge pages", mib(size),
            (void *)p, pages, page == HPW_1G ? "1 GiB" : "2 MiB");
    return p;
}

/* Frees p if it is ours; 0 when it is not (the caller passes it to libc). */
int hpw_alloc_free(void *p)
{
    if (!maybe_ours(p))
        return 0;
    size_t len = table_find(p, 1);
    if (len == 0)
        return 0;
    hpw_registry_remove(HPW_REGION_ALLOC, p); /* before the addresses can be reused */
    hpw_real_munmap(p, len);
    hpw_log(HPW_LOG_DEBUG, "freed the allocation at %p (%.1f MiB)", p, mib(len));
    atomic_fetch_sub(&live_bytes, len);
    return 1;
}

void hpw_alloc_report(void)
{
    size_t peak = atomic_load(&peak_bytes);
    if (peak != 0 || atomic_load(&fallback_count) != 0)
        hpw_log(HPW_LOG_DEBUG, "allocations: peak %.1f MiB in huge pages, %zu fell back",
                mib(peak), atomic_load(&fallback_count));
}
