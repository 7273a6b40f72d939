/* The registry of memory served from huge pages, and what munmap, mprotect,
 * madvise, mremap and MAP_FIXED do on it.
 *
 * Two kinds of region live here: copies of file mappings (takeover.c) and
 * large allocations (alloc.c). Both are private mappings of a hugetlb memfd,
 * so their pages are anonymous huge pages: munmap of whole huge pages frees
 * them, and fork makes them copy-on-write, exactly as for the memory they
 * stand in for. Nothing is ever punched out of a file another process maps.
 *
 * The kernel refuses to split a huge page, so an operation that covers only
 * part of one (a 4 KiB munmap, mprotect or madvise, a MAP_FIXED mapping on
 * top, an mremap) first "demotes" that huge page: its bytes move into an
 * ordinary anonymous mapping at the same address, with the same protection,
 * and the operation then goes to the kernel unchanged. What the program
 * observes is then what the kernel would have given it. The registry keeps
 * one bit per 4 KiB page the program still holds, so that it never claims an
 * address the program has unmapped and the kernel may have reused.
 *
 * For file copies, advice that would make the kernel read the file again
 * (MADV_DONTNEED, MADV_PAGEOUT) keeps the bytes, which are the file's; advice
 * the kernel refuses on a file mapping (MADV_FREE, MADV_REMOVE,
 * MADV_WIPEONFORK) is refused with EINVAL, and PROT_WRITE on a shared mapping
 * of a read-only descriptor with EACCES, as the kernel would. */
#include "wrapper.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_REGIONS 4352 /* alloc.c's 4096 live blocks and 256 file copies */

/* Per 4 KiB page: the protection (low bits), whether the program holds it,
 * and the flags madvise sets on a mapping (the kernel splits a mapping where
 * they differ, and mremap refuses a range over more than one). */
enum {
    ST_LIVE = 0x10, ST_DONTFORK = 0x20, ST_DONTDUMP = 0x40, ST_SEQ = 0x80, ST_RAND = 0x100,
    ST_HUGE = 0x200, ST_NOHUGE = 0x400, ST_MERGE = 0x800,
};
#define ST_PROT 0x07
typedef uint16_t st_t;

struct region {
    int kind;               /* 0: free slot */
    char *base;
    size_t len;             /* whole pages */
    size_t page;
    st_t *st;               /* per 4 KiB page: ST_* */
    unsigned char *wrapped; /* per page: still a huge page */
    size_t meta_len;
    size_t nlive;           /* 4 KiB pages with ST_LIVE */
    struct hpw_file file;   /* HPW_REGION_FILE: where the bytes came from */
};

static struct region regions[MAX_REGIONS];
static int high;            /* slots [0, high) may be in use */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int count;

static void atfork_prepare(void) { pthread_mutex_lock(&lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&lock); }
static void forget_dontfork(void);
static void atfork_child(void)
{
    forget_dontfork();
    pthread_mutex_unlock(&lock);
}

void hpw_registry_init(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

int hpw_registry_empty(void)
{
    return atomic_load_explicit(&count, memory_order_acquire) == 0;
}

static int bit(const struct region *r, size_t small)
{
    return (r->st[small] & ST_LIVE) != 0;
}

/* The program no longer holds 4 KiB pages [from, to): a huge page it holds
 * none of is gone (the kernel may put something else there). */
static void clear_bits(struct region *r, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (bit(r, i)) {
            r->st[i] &= (st_t)~ST_LIVE;
            r->nlive--;
        }
    size_t per = r->page / HPW_SMALL_PAGE;
    for (size_t p = from / per; p * per < to && p < r->len / r->page; p++) {
        if (!r->wrapped[p])
            continue;
        size_t i = p * per;
        while (i < (p + 1) * per && !bit(r, i))
            i++;
        if (i == (p + 1) * per)
            r->wrapped[p] = 0;
    }
}

static void drop(struct region *r)
{
    hpw_real_munmap(r->st, r->meta_len);
    r->kind = 0;
    atomic_fetch_sub_explicit(&count, 1, memory_order_release);
}

/* A region's metadata, in an anonymous mapping of its own (no malloc in an
 * interposer): the live bits for the first `visible` bytes set, each page
 * wrapped (or not) with protection `prot`. */
static int make_region(struct region *out, int kind, char *base, size_t len, size_t page,
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
static int insert(const struct region *r)
{
    for (int i = 0; i < MAX_REGIONS; i++) {
        if (regions[i].kind != 0)
            continue;
        regions[i] = *r;
        if (i >= high)
            high = i + 1;
        atomic_fetch_add_explicit(&count, 1, memory_order_release);
        return 0;
    }
    hpw_real_munmap(r->st, r->meta_len);
    return -1;
}

int hpw_registry_add(int kind, char *base, size_t len, size_t page, size_t visible,
                     int prot, const struct hpw_file *file)
{
    struct region r;
    if (make_region(&r, kind, base, len, page, visible, prot, 1, file) != 0)
        return -1;
    pthread_mutex_lock(&lock);
    int rc = insert(&r);
    pthread_mutex_unlock(&lock);
    return rc;
}

/* Regions may overlap where one holds pages another has given up (the
 * kernel reuses those addresses): a region is found by kind and base. */
static struct region *find_base(int kind, const char *base)
{
    for (int i = 0; i < high; i++)
        if (regions[i].kind == kind && regions[i].base == base)
            return &regions[i];
    return NULL;
}

void hpw_registry_remove(int kind, const char *base)
{
    pthread_mutex_lock(&lock);
    struct region *r = find_base(kind, base);
    if (r != NULL)
        drop(r);
    pthread_mutex_unlock(&lock);
}

void hpw_registry_shrink(const char *base, size_t len)
{
    pthread_mutex_lock(&lock);
    struct region *r = find_base(HPW_REGION_ALLOC, base);
    if (r != NULL && len < r->len) {
        clear_bits(r, len / HPW_SMALL_PAGE, r->len / HPW_SMALL_PAGE);
        r->len = len;
    }
    pthread_mutex_unlock(&lock);
}

/* Copies [addr, addr+len) (readable or not) into a fresh anonymous mapping
 * with protection prot; NULL when there is no memory for it. */
static char *copy_out(char *addr, size_t len, int prot, int dontfork)
{
    char *tmp = hpw_real_mmap(NULL, len, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (tmp == MAP_FAILED)
        return NULL;
    if (!(prot & PROT_READ))
        hpw_real_mprotect(addr, len, prot | PROT_READ);
    memcpy(tmp, addr, len);
    if (!(prot & PROT_READ))
        hpw_real_mprotect(addr, len, prot);
    if (prot != (PROT_READ | PROT_WRITE))
        hpw_real_mprotect(tmp, len, prot);
    if (dontfork)
        hpw_real_madvise(tmp, len, MADV_DONTFORK);
    return tmp;
}

/* Puts tmp (len bytes) where addr is, replacing what is there at once. */
static int move_in(char *tmp, char *addr, size_t len)
{
    if (hpw_real_mremap(tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, addr) != MAP_FAILED)
        return 0;
    int saved = errno;
    hpw_real_munmap(tmp, len);
    errno = saved;
    return -1;
}

/* Huge page `p` of r becomes ordinary 4 KiB memory with the same bytes,
 * protection and fork behaviour, at the same address. The lock is held. */
static int demote(struct region *r, size_t p)
{
    if (!r->wrapped[p])
        return 0;
    char *addr = r->base + p * r->page;
    size_t first = p * r->page / HPW_SMALL_PAGE, end = first + r->page / HPW_SMALL_PAGE;
    st_t st = r->st[first]; /* alike across a huge page */
    char *tmp = copy_out(addr, r->page, st & ST_PROT, (st & ST_DONTFORK) != 0);
    if (tmp == NULL || move_in(tmp, addr, r->page) != 0)
        return -1;
    r->wrapped[p] = 0;
    /* What the program never mapped past its end goes back to the kernel. */
    for (size_t i = first; i < end;) {
        size_t j = i;
        while (j < end && !bit(r, j))
            j++;
        if (j > i)
            hpw_real_munmap(r->base + i * HPW_SMALL_PAGE, (j - i) * HPW_SMALL_PAGE);
        i = j + 1;
    }
    hpw_log(HPW_LOG_DEBUG, "huge page at %p now in 4 KiB pages", (void *)addr);
    return 0;
}

/* The region that holds the 4 KiB page at x, or NULL. */
static struct region *region_at(const char *x)
{
    for (int i = 0; i < high; i++) {
        struct region *r = &regions[i];
        if (r->kind != 0 && x >= r->base && x < r->base + r->len &&
            bit(r, (size_t)(x - r->base) / HPW_SMALL_PAGE))
            return r;
    }
    return NULL;
}

/* The first page in [x, end) that a region holds, or end. */
static char *next_held(char *x, char *end)
{
    char *best = end;
    for (int i = 0; i < high; i++) {
        struct region *r = &regions[i];
        if (r->kind == 0 || r->nlive == 0 || r->base >= best || r->base + r->len <= x)
            continue;
        size_t j = x > r->base ? (size_t)(x - r->base) / HPW_SMALL_PAGE : 0;
        size_t last = (size_t)((best < r->base + r->len ? best : r->base + r->len) - r->base)
                      / HPW_SMALL_PAGE;
        while (j < last && !bit(r, j))
            j++;
        if (j < last)
            best = r->base + j * HPW_SMALL_PAGE;
    }
    return best;
}

static int overlaps(const char *a, const char *e)
{
    for (int i = 0; i < high; i++) {
        const struct region *r = &regions[i];
        if (r->kind != 0 && r->base < e && r->base + r->len > a && r->nlive != 0)
            return 1;
    }
    return 0;
}

/* Demote the huge page that x cuts in two, if any. */
static int cut_at(const char *x)
{
    for (int i = 0; i < high; i++) {
        struct region *r = &regions[i];
        if (r->kind == 0 || x <= r->base || x >= r->base + r->len)
            continue;
        size_t off = (size_t)(x - r->base);
        if (off % r->page != 0 && r->wrapped[off / r->page])
            return demote(r, off / r->page);
    }
    return 0;
}

/* Whether r overlaps [a, e); if so, the overlap as offsets [*s, *t) in r. */
static int overlap(const struct region *r, const char *a, const char *e, size_t *s, size_t *t)
{
    if (r->kind == 0 || r->base >= e || r->base + r->len <= a)
        return 0;
    *s = a > r->base ? (size_t)(a - r->base) : 0;
    *t = e < r->base + r->len ? (size_t)(e - r->base) : r->len;
    return 1;
}

/* Demote every huge page in [a, e). */
static int demote_all(const char *a, const char *e)
{
    for (int i = 0; i < high; i++) {
        struct region *r = &regions[i];
        size_t s, t;
        if (!overlap(r, a, e, &s, &t))
            continue;
        for (size_t p = s / r->page; p * r->page < t; p++)
            if (demote(r, p) != 0)
                return -1;
    }
    return 0;
}

/* The program no longer holds [a, e) (munmap, or a mapping put on top). */
static void forget(const char *a, const char *e)
{
    for (int i = 0; i < high; i++) {
        struct region *r = &regions[i];
        size_t s, t;
        if (!overlap(r, a, e, &s, &t))
            continue;
        clear_bits(r, s / HPW_SMALL_PAGE, (t + HPW_SMALL_PAGE - 1) / HPW_SMALL_PAGE);
        if (r->nlive == 0 && r->kind == HPW_REGION_FILE)
            drop(r); /* an allocation stays until free() */
    }
}

static void forget_dontfork(void)
{
    for (int i = 0; i < high; i++) {
        struct region *r = &regions[i];
        if (r->kind == 0)
            continue;
        for (size_t j = 0; j < r->len / HPW_SMALL_PAGE; j++)
            if (r->st[j] & ST_DONTFORK)
                clear_bits(r, j, j + 1);
        if (r->nlive == 0 && r->kind == HPW_REGION_FILE)
            drop(r);
    }
}

/* The run of addresses from cur that the registry sees alike: held by no
 * region, or held by region *rp. */
static char *run_end(char *cur, char *end, struct region **rp)
{
    struct region *r = region_at(cur);
    *rp = r;
    if (r == NULL)
        return next_held(cur, end);
    size_t i = (size_t)(cur - r->base) / HPW_SMALL_PAGE;
    size_t last = (size_t)((end < r->base + r->len ? end : r->base + r->len) - r->base)
                  / HPW_SMALL_PAGE;
    while (i < last && bit(r, i))
        i++;
    return r->base + i * HPW_SMALL_PAGE;
}

/* Update what the registry knows of the pages in [a, e). */
static void mark(struct region *r, const char *a, const char *e, int prot, int set, int clear)
{
    for (size_t i = (size_t)(a - r->base) / HPW_SMALL_PAGE;
         i < (size_t)(e - r->base) / HPW_SMALL_PAGE; i++) {
        if (!bit(r, i))
            continue;
        st_t b = (st_t)((r->st[i] | set) & ~clear);
        r->st[i] = prot >= 0 ? (st_t)((b & ~ST_PROT) | (prot & ST_PROT)) : b;
    }
}

static int protect(char *a, char *e, int prot)
{
    for (char *cur = a; cur < e;) {
        struct region *r;
        char *stop = run_end(cur, e, &r);
        if (r != NULL && r->kind == HPW_REGION_FILE) {
            if ((prot & PROT_WRITE) && !r->file.maywrite) {
                errno = EACCES;
                return -1;
            }
            if ((prot & PROT_EXEC) && r->file.noexec) {
                errno = EACCES;
                return -1;
            }
        }
        if (hpw_real_mprotect(cur, (size_t)(stop - cur), prot) != 0)
            return -1; /* as the kernel: what came before stays changed */
        if (r != NULL)
            mark(r, cur, stop, prot, 0, 0);
        cur = stop;
    }
    return 0;
}

/* Advice that changes nothing the program can read: what it does to the
 * kernel's view of the mapping (the flags it sets and clears), or 0 for
 * advice that is not such a hint. */
static int hint(int advice, int *set, int *clear)
{
    *set = *clear = 0;
    switch (advice) {
    case MADV_NORMAL: *clear = ST_SEQ | ST_RAND; return 1;
    case MADV_RANDOM: *set = ST_RAND; *clear = ST_SEQ; return 1;
    case MADV_SEQUENTIAL: *set = ST_SEQ; *clear = ST_RAND; return 1;
    case MADV_HUGEPAGE: *set = ST_HUGE; *clear = ST_NOHUGE; return 1;
    case MADV_NOHUGEPAGE: *set = ST_NOHUGE; *clear = ST_HUGE; return 1;
    case MADV_MERGEABLE: *set = ST_MERGE; return 1;
    case MADV_UNMERGEABLE: *clear = ST_MERGE; return 1;
    case MADV_DONTDUMP: *set = ST_DONTDUMP; return 1;
    case MADV_DODUMP: *clear = ST_DONTDUMP; return 1;
    case MADV_WILLNEED:
#ifdef MADV_COLD
    case MADV_COLD: case MADV_PAGEOUT:
#endif
        return 1;
    default:
        return 0;
    }
}

/* Advice on memory the registry holds: 0, or -1 with errno. */
static int advise_held(struct region *r, char *a, char *e, int advice,
                       int (*outside)(void *, size_t, int))
{
    size_t len = (size_t)(e - a);
    int file = r->kind == HPW_REGION_FILE, set, clear;
    switch (advice) {
    case MADV_DONTFORK: case MADV_DOFORK:
        if (outside(a, len, advice) != 0)
            return -1;
        mark(r, a, e, -1, advice == MADV_DONTFORK ? ST_DONTFORK : 0,
             advice == MADV_DOFORK ? ST_DONTFORK : 0);
        return 0;
    case MADV_FREE: case MADV_REMOVE: case MADV_WIPEONFORK:
        if (file) { /* the kernel refuses these on a private file mapping */
            errno = advice == MADV_REMOVE ? EACCES : EINVAL;
            return -1;
        }
        if (demote_all(a, e) != 0)
            return -1;
        return outside(a, len, advice);
    case MADV_DONTNEED:
#ifdef MADV_DONTNEED_LOCKED
    case MADV_DONTNEED_LOCKED:
#endif
        /* A file copy keeps the bytes the kernel would read again; an
         * allocation's whole huge pages drop to zero, as anonymous memory. */
        return file ? 0 : outside(a, len, advice);
    default: /* the kernel judges advice it does not know, or acts on huge pages */
        if (!hint(advice, &set, &clear))
            return outside(a, len, advice);
        mark(r, a, e, -1, set, clear);
        return 0;
    }
}

static int advise(char *a, char *e, int advice, int (*outside)(void *, size_t, int))
{
    int holes = 0;
    for (char *cur = a; cur < e;) {
        struct region *r;
        char *stop = run_end(cur, e, &r);
        int rc = r != NULL ? advise_held(r, cur, stop, advice, outside)
                           : outside(cur, (size_t)(stop - cur), advice);
        if (rc != 0) {
            if (r != NULL || errno != ENOMEM)
                return -1;
            holes = 1; /* as the kernel: carry on, report ENOMEM at the end */
        }
        cur = stop;
    }
    if (holes)
        errno = ENOMEM;
    return holes ? -1 : 0;
}

int hpw_registry_apply(enum hpw_op op, char *addr, size_t len, int arg,
                       int (*outside)(void *, size_t, int), int *handled)
{
    *handled = 0;
    if (hpw_registry_empty() || len > (size_t)-1 - HPW_SMALL_PAGE)
        return 0;
    char *end = addr + ((len + HPW_SMALL_PAGE - 1) & ~(HPW_SMALL_PAGE - 1));
    if (end < addr)
        return 0;
    pthread_mutex_lock(&lock);
    if (!overlaps(addr, end)) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    *handled = 1;
    int rc = 0;
    if (cut_at(addr) != 0 || cut_at(end) != 0) {
        rc = -1; /* no memory for the 4 KiB copy: as the kernel would say */
        errno = ENOMEM;
    } else if (op == HPW_OP_UNMAP) {
        rc = outside(addr, (size_t)(end - addr), 0);
        if (rc == 0)
            forget(addr, end);
    } else if (op == HPW_OP_PROTECT) {
        rc = protect(addr, end, arg);
    } else {
        rc = advise(addr, end, arg, outside);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int hpw_registry_prepare_fixed(char *addr, size_t len)
{
    if (hpw_registry_empty())
        return 0;
    char *end = addr + ((len + HPW_SMALL_PAGE - 1) & ~(HPW_SMALL_PAGE - 1));
    if (end <= addr)
        return 0;
    pthread_mutex_lock(&lock);
    int rc = 0;
    if (overlaps(addr, end)) {
        rc = cut_at(addr) != 0 || cut_at(end) != 0 ? -1 : 0;
        if (rc == 0)
            forget(addr, end);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

/* Reopen the file a copy came from, if it is still the same file. */
static int reopen(const struct hpw_file *f)
{
    if (f->path == NULL || f->path[0] != '/')
        return -1;
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) != 0 || st.st_dev != f->dev || st.st_ino != f->ino)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* The moved bytes of a file copy are ordinary memory now, but still a copy
 * of the file: registered (in 4 KiB pages) so that advice and a later mremap
 * keep behaving as on a file mapping. The lock is held. */
static void keep_file_semantics(char *base, size_t len, const struct hpw_file *f, int prot,
                                int dontfork)
{
    struct region r;
    if (make_region(&r, HPW_REGION_FILE, base, len, HPW_SMALL_PAGE, len, prot, 0, f) != 0)
        return;
    if (dontfork)
        mark(&r, base, base + len, -1, ST_DONTFORK, 0);
    insert(&r);
}

/* Where [a, e) is one mapping to the kernel (all held, one protection, one
 * fork behaviour), its region; else NULL. */
static struct region *one_mapping(char *a, char *e)
{
    struct region *r = region_at(a);
    if (r == NULL || e > r->base + r->len)
        return NULL;
    size_t s = (size_t)(a - r->base) / HPW_SMALL_PAGE, t = (size_t)(e - r->base) / HPW_SMALL_PAGE;
    for (size_t i = s; i < t; i++)
        if (!bit(r, i) || r->st[i] != r->st[s])
            return NULL;
    return r;
}

/* The file's bytes for a grown copy: read into [at, at+len), which the
 * kernel has just added as zero pages, then given the copy's protection. */
static void read_tail(int fd, char *at, size_t len, off_t off, int prot)
{
    hpw_real_mprotect(at, len, PROT_READ | PROT_WRITE);
    for (size_t done = 0; done < len;) {
        ssize_t n = pread(fd, at + done, len - done, off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    hpw_real_mprotect(at, len, prot);
}

/* Moving or growing a copy (the shrinking is done): the range becomes one
 * ordinary mapping with the same bytes, the kernel moves it, and a file
 * copy's new part gets the file's bytes (or, past the end of file, the file
 * mapping itself, which faults there as the kernel's would). */
static void *move_copy(char *old, size_t old_size, size_t new_size, int flags, char *new_addr)
{
    char *end = old + old_size;
    size_t grown = (new_size + HPW_SMALL_PAGE - 1) & ~(HPW_SMALL_PAGE - 1);
    struct region *r = one_mapping(old, end);
    if (r == NULL) {
        errno = EFAULT; /* as the kernel, for a range over more than one mapping */
        return MAP_FAILED;
    }
    int file = r->kind == HPW_REGION_FILE;
    struct hpw_file f = r->file;
    char path[4096] = "";
    snprintf(path, sizeof path, "%s", f.path != NULL ? f.path : "");
    f.path = path; /* the region may go below */
    f.offset += (off_t)(old - r->base);
    st_t st = r->st[(size_t)(old - r->base) / HPW_SMALL_PAGE];
    int prot = st & ST_PROT, dontfork = (st & ST_DONTFORK) != 0;
    int fd = -1;
    size_t data = grown;
    if (file && grown > old_size) {
        struct stat fs;
        if ((fd = reopen(&f)) < 0 || fstat(fd, &fs) != 0) {
            if (fd >= 0)
                close(fd);
            errno = ENOMEM; /* the file is gone: the copy cannot grow */
            return MAP_FAILED;
        }
        off_t left = fs.st_size > f.offset ? fs.st_size - f.offset : 0;
        size_t in_file = ((size_t)left + HPW_SMALL_PAGE - 1) & ~(HPW_SMALL_PAGE - 1);
        data = in_file < old_size ? old_size : (in_file < grown ? in_file : grown);
    }
    void *rc = MAP_FAILED;
    char *tmp = NULL;
    if (cut_at(old) == 0 && cut_at(end) == 0 &&
        (tmp = copy_out(old, old_size, prot, dontfork)) != NULL && move_in(tmp, old, old_size) == 0) {
        for (size_t p = (size_t)(old - r->base) / r->page; p * r->page < (size_t)(end - r->base); p++)
            r->wrapped[p] = 0;
        rc = hpw_real_mremap(old, old_size, new_size, flags, new_addr);
    }
    if (rc != MAP_FAILED) {
        int saved = errno;
        forget(old, end);
        char *n = rc;
        if (fd >= 0 && data > old_size)
            read_tail(fd, n + old_size, data - old_size, f.offset + (off_t)old_size, prot);
        if (fd >= 0 && grown > data)
            hpw_real_mmap(n + data, grown - data, prot, f.flags | MAP_FIXED, fd,
                          f.offset + (off_t)data);
        if (file)
            keep_file_semantics(n, data, &f, prot, dontfork);
        errno = saved;
    }
    if (fd >= 0)
        close(fd);
    return rc;
}

void *hpw_registry_mremap(char *old, size_t old_size, size_t new_size, int flags,
                          char *new_addr, int *handled)
{
    *handled = 0;
    if (hpw_registry_empty() || old_size == 0 || new_size == 0 ||
        ((uintptr_t)old & (HPW_SMALL_PAGE - 1)) || old_size > ((size_t)-1 >> 2) ||
        new_size > ((size_t)-1 >> 2))
        return MAP_FAILED; /* the kernel answers these */
    old_size = (old_size + HPW_SMALL_PAGE - 1) & ~(HPW_SMALL_PAGE - 1);
    size_t grown = (new_size + HPW_SMALL_PAGE - 1) & ~(HPW_SMALL_PAGE - 1);
    char *end = old + old_size;
    int fixed = (flags & MREMAP_FIXED) != 0;
    pthread_mutex_lock(&lock);
    void *rc = MAP_FAILED;
    if (fixed && overlaps(new_addr, new_addr + grown)) {
        *handled = 1; /* the kernel unmaps what is there */
        if (cut_at(new_addr) != 0 || cut_at(new_addr + grown) != 0) {
            errno = ENOMEM;
            goto out;
        }
        forget(new_addr, new_addr + grown);
    }
    if (next_held(old, end) == end) {
        if (*handled)
            rc = hpw_real_mremap(old, old_size, new_size, flags, new_addr);
        goto out;
    }
    *handled = 1;
    if (grown < old_size) { /* as the kernel: the tail goes first */
        if (cut_at(old + grown) != 0 || hpw_real_munmap(old + grown, old_size - grown) != 0)
            goto out;
        forget(old + grown, end);
        old_size = grown;
        end = old + old_size;
        if (!fixed || new_addr == old) {
            rc = old;
            goto out;
        }
    }
    if (grown == old_size && !fixed) {
        rc = old;
        goto out;
    }
    rc = move_copy(old, old_size, new_size, flags, new_addr);
out:
    pthread_mutex_unlock(&lock);
    return rc;
}
