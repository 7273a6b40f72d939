/* The registry of memory served from huge pages: the table of regions and
 * the lookups the range operations share (registry.h). What munmap,
 * mprotect, madvise, mremap and MAP_FIXED do on that memory lives in
 * demote.c, rangeops.c and mremap.c.
 *
 * Two kinds of region live here: copies of file mappings (takeover.c) and
 * large allocations (alloc.c). Both are private mappings of a hugetlb memfd,
 * so their pages are anonymous huge pages: munmap of whole huge pages frees
 * them, and fork makes them copy-on-write, exactly as for the memory they
 * stand in for. Nothing is ever punched out of a file another process maps.
 * The registry keeps one bit per 4 KiB page the program still holds, so that
 * it never claims an address the program has unmapped and the kernel may
 * have reused. */
#include "registry.h"

#include <string.h>
#include <sys/mman.h>

struct region rg_regions[HPW_MAX_REGIONS];
int rg_high;
pthread_mutex_t rg_lock = PTHREAD_MUTEX_INITIALIZER;
atomic_int rg_count;

static void atfork_prepare(void) { pthread_mutex_lock(&rg_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&rg_lock); }
static void atfork_child(void)
{
    rg_forget_dontfork();
    pthread_mutex_unlock(&rg_lock);
}

void hpw_registry_init(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

int hpw_registry_empty(void)
{
    return atomic_load_explicit(&rg_count, memory_order_acquire) == 0;
}

int rg_bit(const struct region *r, size_t small)
{
    return (r->st[small] & ST_LIVE) != 0;
}

/* The program no longer holds 4 KiB pages [from, to): a huge page it holds
 * none of is gone (the kernel may put something else there). */
void rg_clear_bits(struct region *r, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (rg_bit(r, i)) {
            r->st[i] &= (st_t)~ST_LIVE;
            r->nlive--;
        }
    size_t per = r->page / HPW_SMALL_PAGE;
    for (size_t p = from / per; p * per < to && p < r->len / r->page; p++) {
        if (!r->wrapped[p])
            continue;
        size_t i = p * per;
        while (i < (p + 1) * per && !rg_bit(r, i))
            i++;
        if (i == (p + 1) * per)
            r->wrapped[p] = 0;
    }
}

void rg_drop(struct region *r)
{
    hpw_real_munmap(r->st, r->meta_len);
    r->kind = 0;
    atomic_fetch_sub_explicit(&rg_count, 1, memory_order_release);
}

/* A region's metadata, in an anonymous mapping of its own (no malloc in an
 * interposer): the live bits for the first `visible` bytes set, each page
 * wrapped (or not) with protection `prot`. */
int rg_make_region(struct region *out, int kind, char *base, size_t len, size_t page,
                       size_t visible, int prot, int wrapped, const struct hpw_file *file)
{
    size_t small = len / HPW_SMALL_PAGE, npages = len / page;
    size_t pathlen = file != NULL && file->path != NULL ? strlen(file->path) + 1 : 0;
    size_t meta = small * sizeof(st_t) + npages + pathlen;
    meta = (meta + HPW_SMALL_PAGE - 1) & ~(HPW_SMALL_PAGE - 1);
    st_t *st = hpw_real_mmap(NULL, meta, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (st == MAP_FAILED)
        return -1;
    size_t vis = visible / HPW_SMALL_PAGE;
    for (size_t i = 0; i < vis; i++) /* the rest is zero: not held */
        st[i] = (st_t)(ST_LIVE | (prot & ST_PROT));
    unsigned char *wr = (unsigned char *)(st + small);
    memset(wr, wrapped ? 1 : 0, npages);
    *out = (struct region){
        .kind = kind, .base = base, .len = len, .page = page, .st = st,
        .wrapped = wr, .meta_len = meta, .nlive = vis,
    };
    if (file != NULL) {
        out->file = *file;
        if (pathlen != 0) {
            memcpy(wr + npages, file->path, pathlen);
            out->file.path = (const char *)(wr + npages);
        }
    }
    return 0;
}

/* Puts r into a free slot; the lock is held. */
int rg_insert(const struct region *r)
{
    for (int i = 0; i < HPW_MAX_REGIONS; i++) {
        if (rg_regions[i].kind != 0)
            continue;
        rg_regions[i] = *r;
        if (i >= rg_high)
            rg_high = i + 1;
        atomic_fetch_add_explicit(&rg_count, 1, memory_order_release);
        return 0;
    }
    hpw_real_munmap(r->st, r->meta_len);
    return -1;
}

int hpw_registry_add(int kind, char *base, size_t len, size_t page, size_t visible,
                     int prot, const struct hpw_file *file)
{
    struct region r;
    if (rg_make_region(&r, kind, base, len, page, visible, prot, 1, file) != 0)
        return -1;
    pthread_mutex_lock(&rg_lock);
    int rc = rg_insert(&r);
    pthread_mutex_unlock(&rg_lock);
    return rc;
}

/* Regions may overlap where one holds pages another has given up (the
 * kernel reuses those addresses): a region is found by kind and base. */
static struct region *find_base(int kind, const char *base)
{
    for (int i = 0; i < rg_high; i++)
        if (rg_regions[i].kind == kind && rg_regions[i].base == base)
            return &rg_regions[i];
    return NULL;
}

void hpw_registry_remove(int kind, const char *base)
{
    pthread_mutex_lock(&rg_lock);
    struct region *r = find_base(kind, base);
    if (r != NULL)
        rg_drop(r);
    pthread_mutex_unlock(&rg_lock);
}

void hpw_registry_shrink(const char *base, size_t len)
{
    pthread_mutex_lock(&rg_lock);
    struct region *r = find_base(HPW_REGION_ALLOC, base);
    if (r != NULL && len < r->len) {
        rg_clear_bits(r, len / HPW_SMALL_PAGE, r->len / HPW_SMALL_PAGE);
        r->len = len;
    }
    pthread_mutex_unlock(&rg_lock);
}

/* The region that holds the 4 KiB page at x, or NULL. */
struct region *rg_region_at(const char *x)
{
    for (int i = 0; i < rg_high; i++) {
        struct region *r = &rg_regions[i];
        if (r->kind != 0 && x >= r->base && x < r->base + r->len &&
            rg_bit(r, (size_t)(x - r->base) / HPW_SMALL_PAGE))
            return r;
    }
    return NULL;
}

/* The first page in [x, end) that a region holds, or end. */
char *rg_next_held(char *x, char *end)
{
    char *best = end;
    for (int i = 0; i < rg_high; i++) {
        struct region *r = &rg_regions[i];
        if (r->kind == 0 || r->nlive == 0 || r->base >= best || r->base + r->len <= x)
            continue;
        size_t j = x > r->base ? (size_t)(x - r->base) / HPW_SMALL_PAGE : 0;
        size_t last = (size_t)((best < r->base + r->len ? best : r->base + r->len) - r->base)
                      / HPW_SMALL_PAGE;
        while (j < last && !rg_bit(r, j))
            j++;
        if (j < last)
            best = r->base + j * HPW_SMALL_PAGE;
    }
    return best;
}

int rg_overlaps(const char *a, const char *e)
{
    for (int i = 0; i < rg_high; i++) {
        const struct region *r = &rg_regions[i];
        if (r->kind != 0 && r->base < e && r->base + r->len > a && r->nlive != 0)
            return 1;
    }
    return 0;
}

/* Whether r overlaps [a, e); if so, the overlap as offsets [*s, *t) in r. */
int rg_overlap(const struct region *r, const char *a, const char *e, size_t *s, size_t *t)
{
    if (r->kind == 0 || r->base >= e || r->base + r->len <= a)
        return 0;
    *s = a > r->base ? (size_t)(a - r->base) : 0;
    *t = e < r->base + r->len ? (size_t)(e - r->base) : r->len;
    return 1;
}

/* The run of addresses from cur that the registry sees alike: held by no
 * region, or held by region *rp. */
char *rg_run_end(char *cur, char *end, struct region **rp)
{
    struct region *r = rg_region_at(cur);
    *rp = r;
    if (r == NULL)
        return rg_next_held(cur, end);
    size_t i = (size_t)(cur - r->base) / HPW_SMALL_PAGE;
    size_t last = (size_t)((end < r->base + r->len ? end : r->base + r->len) - r->base)
                  / HPW_SMALL_PAGE;
    while (i < last && rg_bit(r, i))
        i++;
    return r->base + i * HPW_SMALL_PAGE;
}

/* Update what the registry knows of the pages in [a, e). */
void rg_mark(struct region *r, const char *a, const char *e, int prot, int set, int clear)
{
    for (size_t i = (size_t)(a - r->base) / HPW_SMALL_PAGE;
         i < (size_t)(e - r->base) / HPW_SMALL_PAGE; i++) {
        if (!rg_bit(r, i))
            continue;
        st_t b = (st_t)((r->st[i] | set) & ~clear);
        r->st[i] = prot >= 0 ? (st_t)((b & ~ST_PROT) | (prot & ST_PROT)) : b;
    }
}
