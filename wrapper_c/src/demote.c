/* Demotion: the kernel refuses to split a huge page, so an operation that
 * covers only part of one (a 4 KiB munmap, mprotect or madvise, a MAP_FIXED
 * mapping on top, an mremap) first "demotes" that huge page: its bytes move
 * into an ordinary anonymous mapping at the same address, with the same
 * protection, and the operation then goes to the kernel unchanged. What the
 * program observes is then what the kernel would have given it. */
#include "registry.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

/* Copies [addr, addr+len) (readable or not) into a fresh anonymous mapping
 * with protection prot; NULL when there is no memory for it. */
char *rg_copy_out(char *addr, size_t len, int prot, int dontfork)
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
int rg_move_in(char *tmp, char *addr, size_t len)
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
int rg_demote(struct region *r, size_t p)
{
    if (!r->wrapped[p])
        return 0;
    char *addr = r->base + p * r->page;
    size_t first = p * r->page / HPW_SMALL_PAGE, end = first + r->page / HPW_SMALL_PAGE;
    st_t st = r->st[first]; /* alike across a huge page */
    char *tmp = rg_copy_out(addr, r->page, st & ST_PROT, (st & ST_DONTFORK) != 0);
    if (tmp == NULL || rg_move_in(tmp, addr, r->page) != 0)
        return -1;
    r->wrapped[p] = 0;
    /* What the program never mapped past its end goes back to the kernel. */
    for (size_t i = first; i < end;) {
        size_t j = i;
        while (j < end && !rg_bit(r, j))
            j++;
        if (j > i)
            hpw_real_munmap(r->base + i * HPW_SMALL_PAGE, (j - i) * HPW_SMALL_PAGE);
        i = j + 1;
    }
    hpw_log(HPW_LOG_DEBUG, "huge page at %p now in 4 KiB pages", (void *)addr);
    return 0;
}

/* Demote the huge page that x cuts in two, if any. */
int rg_cut_at(const char *x)
{
    for (int i = 0; i < rg_high; i++) {
        struct region *r = &rg_regions[i];
        if (r->kind == 0 || x <= r->base || x >= r->base + r->len)
            continue;
        size_t off = (size_t)(x - r->base);
        if (off % r->page != 0 && r->wrapped[off / r->page])
            return rg_demote(r, off / r->page);
    }
    return 0;
}

/* Demote every huge page in [a, e). */
int rg_demote_all(const char *a, const char *e)
{
    for (int i = 0; i < rg_high; i++) {
        struct region *r = &rg_regions[i];
        size_t s, t;
        if (!rg_overlap(r, a, e, &s, &t))
            continue;
        for (size_t p = s / r->page; p * r->page < t; p++)
            if (rg_demote(r, p) != 0)
                return -1;
    }
    return 0;
}
