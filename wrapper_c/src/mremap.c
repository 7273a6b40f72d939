/* mremap of memory the registry holds: shrinking in place, and moving or
 * growing a copy (a file copy's new part gets the file's bytes, or past its
 * end the file mapping itself). */
#include "registry.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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
    if (rg_make_region(&r, HPW_REGION_FILE, base, len, HPW_SMALL_PAGE, len, prot, 0, f) != 0)
        return;
    if (dontfork)
        rg_mark(&r, base, base + len, -1, ST_DONTFORK, 0);
    rg_insert(&r);
}

/* Where [a, e) is one mapping to the kernel (all held, one protection, one
 * fork behaviour), its region; else NULL. */
static struct region *one_mapping(char *a, char *e)
{
    struct region *r = rg_region_at(a);
    if (r == NULL || e > r->base + r->len)
        return NULL;
    size_t s = (size_t)(a - r->base) / HPW_SMALL_PAGE, t = (size_t)(e - r->base) / HPW_SMALL_PAGE;
    for (size_t i = s; i < t; i++)
        if (!rg_bit(r, i) || r->st[i] != r->st[s])
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
    if (rg_cut_at(old) == 0 && rg_cut_at(end) == 0 &&
        (tmp = rg_copy_out(old, old_size, prot, dontfork)) != NULL && rg_move_in(tmp, old, old_size) == 0) {
        for (size_t p = (size_t)(old - r->base) / r->page; p * r->page < (size_t)(end - r->base); p++)
            r->wrapped[p] = 0;
        rc = hpw_real_mremap(old, old_size, new_size, flags, new_addr);
    }
    if (rc != MAP_FAILED) {
        int saved = errno;
        rg_forget(old, end);
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
    pthread_mutex_lock(&rg_lock);
    void *rc = MAP_FAILED;
    if (fixed && rg_overlaps(new_addr, new_addr + grown)) {
        *handled = 1; /* the kernel unmaps what is there */
        if (rg_cut_at(new_addr) != 0 || rg_cut_at(new_addr + grown) != 0) {
            errno = ENOMEM;
            goto out;
        }
        rg_forget(new_addr, new_addr + grown);
    }
    if (rg_next_held(old, end) == end) {
        if (*handled)
            rc = hpw_real_mremap(old, old_size, new_size, flags, new_addr);
        goto out;
    }
    *handled = 1;
    if (grown < old_size) { /* as the kernel: the tail goes first */
        if (rg_cut_at(old + grown) != 0 || hpw_real_munmap(old + grown, old_size - grown) != 0)
            goto out;
        rg_forget(old + grown, end);
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
    pthread_mutex_unlock(&rg_lock);
    return rc;
}
