/* munmap, mprotect, madvise and MAP_FIXED on memory the registry holds.
 *
 * For file copies, advice that would make the kernel read the file again
 * (MADV_DONTNEED, MADV_PAGEOUT) keeps the bytes, which are the file's; advice
 * the kernel refuses on a file mapping (MADV_FREE, MADV_REMOVE,
 * MADV_WIPEONFORK) is refused with EINVAL, and PROT_WRITE on a shared mapping
 * of a read-only descriptor with EACCES, as the kernel would. */
#include "registry.h"

#include <errno.h>
#include <sys/mman.h>

/* The program no longer holds [a, e) (munmap, or a mapping put on top). */
void rg_forget(const char *a, const char *e)
{
    for (int i = 0; i < rg_high; i++) {
        struct region *r = &rg_regions[i];
        size_t s, t;
        if (!rg_overlap(r, a, e, &s, &t))
            continue;
        rg_clear_bits(r, s / HPW_SMALL_PAGE, (t + HPW_SMALL_PAGE - 1) / HPW_SMALL_PAGE);
        if (r->nlive == 0 && r->kind == HPW_REGION_FILE)
            rg_drop(r); /* an allocation stays until free() */
    }
}

void rg_forget_dontfork(void)
{
    for (int i = 0; i < rg_high; i++) {
        struct region *r = &rg_regions[i];
        if (r->kind == 0)
            continue;
        for (size_t j = 0; j < r->len / HPW_SMALL_PAGE; j++)
            if (r->st[j] & ST_DONTFORK)
                rg_clear_bits(r, j, j + 1);
        if (r->nlive == 0 && r->kind == HPW_REGION_FILE)
            rg_drop(r);
    }
}

static int protect(char *a, char *e, int prot)
{
    for (char *cur = a; cur < e;) {
        struct region *r;
        char *stop = rg_run_end(cur, e, &r);
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
            rg_mark(r, cur, stop, prot, 0, 0);
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
        rg_mark(r, a, e, -1, advice == MADV_DONTFORK ? ST_DONTFORK : 0,
             advice == MADV_DOFORK ? ST_DONTFORK : 0);
        return 0;
    case MADV_FREE: case MADV_REMOVE: case MADV_WIPEONFORK:
        if (file) { /* the kernel refuses these on a private file mapping */
            errno = advice == MADV_REMOVE ? EACCES : EINVAL;
            return -1;
        }
        if (rg_demote_all(a, e) != 0)
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
        rg_mark(r, a, e, -1, set, clear);
        return 0;
    }
}

static int advise(char *a, char *e, int advice, int (*outside)(void *, size_t, int))
{
    int holes = 0;
    for (char *cur = a; cur < e;) {
        struct region *r;
        char *stop = rg_run_end(cur, e, &r);
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
    pthread_mutex_lock(&rg_lock);
    if (!rg_overlaps(addr, end)) {
        pthread_mutex_unlock(&rg_lock);
        return 0;
    }
    *handled = 1;
    int rc = 0;
    if (rg_cut_at(addr) != 0 || rg_cut_at(end) != 0) {
        rc = -1; /* no memory for the 4 KiB copy: as the kernel would say */
        errno = ENOMEM;
    } else if (op == HPW_OP_UNMAP) {
        rc = outside(addr, (size_t)(end - addr), 0);
        if (rc == 0)
            rg_forget(addr, end);
    } else if (op == HPW_OP_PROTECT) {
        rc = protect(addr, end, arg);
    } else {
        rc = advise(addr, end, arg, outside);
    }
    pthread_mutex_unlock(&rg_lock);
    return rc;
}

int hpw_registry_prepare_fixed(char *addr, size_t len)
{
    if (hpw_registry_empty())
        return 0;
    char *end = addr + ((len + HPW_SMALL_PAGE - 1) & ~(HPW_SMALL_PAGE - 1));
    if (end <= addr)
        return 0;
    pthread_mutex_lock(&rg_lock);
    int rc = 0;
    if (rg_overlaps(addr, end)) {
        rc = rg_cut_at(addr) != 0 || rg_cut_at(end) != 0 ? -1 : 0;
        if (rc == 0)
            rg_forget(addr, end);
    }
    pthread_mutex_unlock(&rg_lock);
    return rc;
}
