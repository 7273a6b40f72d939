/* The registry of mappings served from huge pages, and what munmap, mprotect
 * and madvise do on them.
 *
 * A huge page mapping can only be unmapped (or split by mprotect) at huge page
 * boundaries, but callers such as llama.cpp unmap 4 KiB-aligned fragments of
 * what they believe is a file mapping. Each mapping therefore keeps a bitmap of
 * the 4 KiB pages the caller still holds; a munmap clears bits and returns 0,
 * and every huge page with no bit left is unmapped and punched out of the
 * memfd, which gives it back to the pool. The pages of a forked child's copy
 * are only unmapped, never punched: the parent still uses them. */
#include "wrapper.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_MAPPINGS 64

struct hpw_mapping {
    int in_use;
    char *base;
    size_t visible_len; /* what the caller mapped, rounded up to 4 KiB */
    size_t total_len;   /* rounded up to whole huge pages */
    size_t page_size;
    int memfd;
    int prot;
    pid_t owner;
    size_t live_huge;   /* huge pages not yet given back */
    uint64_t *live;     /* one bit per 4 KiB page the caller still holds */
    unsigned char *released; /* one byte per huge page */
    size_t meta_len;
};

static struct hpw_mapping table[MAX_MAPPINGS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int count;

int hpw_registry_empty(void)
{
    return atomic_load_explicit(&count, memory_order_acquire) == 0;
}

int hpw_registry_add(char *base, size_t visible_len, size_t total_len,
                     size_t page_size, int memfd, int prot)
{
    size_t small = total_len / HPW_SMALL_PAGE;
    size_t words = (small + 63) / 64;
    size_t huge = total_len / page_size;
    size_t meta = words * sizeof(uint64_t) + huge;
    meta = (meta + HPW_SMALL_PAGE - 1) & ~(HPW_SMALL_PAGE - 1);
    /* Metadata lives in its own anonymous mapping: no malloc in an interposer. */
    void *m = hpw_real_mmap(NULL, meta, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -1;
    uint64_t *live = m;
    size_t visible_small = visible_len / HPW_SMALL_PAGE;
    for (size_t i = 0; i < visible_small / 64; i++)
        live[i] = ~0ULL;
    if (visible_small % 64)
        live[visible_small / 64] = (1ULL << (visible_small % 64)) - 1;

    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_MAPPINGS; i++) {
        if (table[i].in_use)
            continue;
        table[i] = (struct hpw_mapping){
            .in_use = 1, .base = base, .visible_len = visible_len,
            .total_len = total_len, .page_size = page_size, .memfd = memfd,
            .prot = prot, .owner = getpid(), .live_huge = huge, .live = live,
            .released = (unsigned char *)(live + words), .meta_len = meta,
        };
        atomic_fetch_add_explicit(&count, 1, memory_order_release);
        pthread_mutex_unlock(&lock);
        return 0;
    }
    pthread_mutex_unlock(&lock);
    hpw_real_munmap(m, meta);
    return -1;
}

static int huge_page_unused(const struct hpw_mapping *r, size_t page)
{
    size_t per = r->page_size / HPW_SMALL_PAGE; /* 512 or 262144: multiples of 64 */
    const uint64_t *w = r->live + page * per / 64;
    for (size_t i = 0; i < per / 64; i++)
        if (w[i] != 0)
            return 0;
    return 1;
}

static void release_huge_page(struct hpw_mapping *r, size_t page)
{
    off_t off = (off_t)(page * r->page_size);
    hpw_real_munmap(r->base + off, r->page_size);
    if (r->owner == getpid())
        fallocate(r->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off,
                  (off_t)r->page_size);
    r->released[page] = 1;
    r->live_huge--;
    hpw_log(HPW_LOG_DEBUG, "gave back huge page %zu of the mapping at %p", page,
            (void *)r->base);
}

static void unmap_part(struct hpw_mapping *r, size_t s, size_t e)
{
    for (size_t i = s / HPW_SMALL_PAGE; i < e / HPW_SMALL_PAGE; i++)
        r->live[i / 64] &= ~(1ULL << (i % 64));
    size_t last = (e - 1) / r->page_size;
    for (size_t p = s / r->page_size; p <= last; p++)
        if (!r->released[p] && huge_page_unused(r, p))
            release_huge_page(r, p);
    if (r->live_huge == 0) {
        close(r->memfd);
        hpw_real_munmap(r->live, r->meta_len);
        r->in_use = 0;
        atomic_fetch_sub_explicit(&count, 1, memory_order_release);
    }
}

/* Narrowing the protection applies only to whole huge pages inside the range
 * (never takes access away from a neighbour); widening rounds out. Adding
 * PROT_WRITE to a shared file mapping is refused as the kernel would refuse it
 * for a read-only fd, since writes here would never reach the file. */
static int protect_part(struct hpw_mapping *r, size_t s, size_t e, int prot)
{
    if ((prot & PROT_WRITE) && !(r->prot & PROT_WRITE)) {
        errno = EACCES;
        return -1;
    }
    size_t first, end;
    if ((prot & r->prot) == r->prot) {
        first = s / r->page_size;
        end = (e + r->page_size - 1) / r->page_size;
    } else {
        first = (s + r->page_size - 1) / r->page_size;
        end = e / r->page_size;
    }
    for (size_t p = first; p < end; p++)
        if (!r->released[p])
            hpw_real_mprotect(r->base + p * r->page_size, r->page_size, prot);
    return 0;
}

static struct hpw_mapping *find_next(char *from, char *end)
{
    struct hpw_mapping *best = NULL;
    for (int i = 0; i < MAX_MAPPINGS; i++) {
        struct hpw_mapping *r = &table[i];
        if (!r->in_use || r->base + r->total_len <= from || r->base >= end)
            continue;
        if (best == NULL || r->base < best->base)
            best = r;
    }
    return best;
}

int hpw_registry_apply(enum hpw_op op, char *addr, size_t len, int arg,
                       int (*outside)(void *, size_t, int), int *handled)
{
    *handled = 0;
    if (hpw_registry_empty())
        return 0;
    char *end = addr + ((len + HPW_SMALL_PAGE - 1) & ~(HPW_SMALL_PAGE - 1));
    int rc = 0;
    pthread_mutex_lock(&lock);
    if (find_next(addr, end) == NULL) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    *handled = 1;
    char *cur = addr;
    while (cur < end) {
        struct hpw_mapping *r = find_next(cur, end);
        char *stop = r == NULL ? end : (r->base > cur ? r->base : cur);
        if (stop > cur) { /* a gap not taken over: the real call */
            int x = outside(cur, (size_t)(stop - cur), arg);
            if (x != 0 && rc == 0)
                rc = x;
            cur = stop;
        }
        if (r == NULL)
            break;
        char *rend = r->base + r->total_len < end ? r->base + r->total_len : end;
        size_t s = (size_t)(cur - r->base), e = (size_t)(rend - r->base);
        if (op == HPW_OP_UNMAP) {
            unmap_part(r, s, e);
        } else if (op == HPW_OP_PROTECT) {
            if (protect_part(r, s, e, arg) != 0 && rc == 0)
                rc = -1;
        } /* HPW_OP_ADVISE: advice on memory that already holds the data is moot */
        cur = rend;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}
