/* The interposed libc entry points: the only symbols this library exports.
 * On any doubt a call goes to libc unchanged. A thread-local flag keeps the
 * library's own calls (and whatever dlsym or malloc do inside them) out. */
#include "wrapper.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define EXPORT __attribute__((visibility("default")))

static __thread int inside;
static atomic_int initialized; /* the configuration is loaded: allocations may be served */

__attribute__((constructor)) static void hpw_init(void)
{
    inside = 1;
    hpw_resolve_real();
    hpw_config_load();
    hpw_registry_init(); /* before alloc's: fork takes alloc's lock first */
    hpw_alloc_init();
    hpw_dropcache_init();
    inside = 0;
    atomic_store_explicit(&initialized, 1, memory_order_release);
}

__attribute__((destructor)) static void hpw_fini(void)
{
    hpw_alloc_report();
}

EXPORT void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    if (!inside && !(flags & MAP_ANONYMOUS) &&
        hpw_takeover_eligible(length, prot, flags, fd, offset)) {
        int saved = errno, taken = 0;
        inside = 1;
        void *p = hpw_try_takeover(length, prot, flags, fd, offset, &taken);
        inside = 0;
        if (taken)
            return p;
        errno = saved;
    }
    if (!inside && (flags & MAP_FIXED) && ((uintptr_t)addr & (HPW_SMALL_PAGE - 1)) == 0 &&
        length != 0 && !hpw_registry_empty()) {
        /* The new mapping replaces whatever is there, huge pages included. */
        inside = 1;
        int rc = hpw_registry_prepare_fixed(addr, length);
        inside = 0;
        if (rc != 0) {
            errno = ENOMEM;
            return MAP_FAILED;
        }
    }
    return hpw_real_mmap(addr, length, prot, flags, fd, offset);
}

EXPORT void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    return mmap(addr, length, prot, flags, fd, offset);
}

static int real_munmap_arg(void *addr, size_t len, int unused)
{
    (void)unused;
    return hpw_real_munmap(addr, len);
}

static int ranged(enum hpw_op op, void *addr, size_t len, int arg,
                  int (*real)(void *, size_t, int), int *handled)
{
    *handled = 0;
    if (inside || len == 0 || ((unsigned long)addr & (HPW_SMALL_PAGE - 1)) != 0 ||
        hpw_registry_empty())
        return 0;
    inside = 1;
    int rc = hpw_registry_apply(op, addr, len, arg, real, handled);
    inside = 0;
    return rc;
}

EXPORT int munmap(void *addr, size_t len)
{
    int handled;
    int rc = ranged(HPW_OP_UNMAP, addr, len, 0, real_munmap_arg, &handled);
    return handled ? rc : hpw_real_munmap(addr, len);
}

EXPORT int mprotect(void *addr, size_t len, int prot)
{
    int handled;
    int rc = ranged(HPW_OP_PROTECT, addr, len, prot, hpw_real_mprotect, &handled);
    return handled ? rc : hpw_real_mprotect(addr, len, prot);
}

EXPORT int madvise(void *addr, size_t len, int advice)
{
    int handled;
    int rc = ranged(HPW_OP_ADVISE, addr, len, advice, hpw_real_madvise, &handled);
    return handled ? rc : hpw_real_madvise(addr, len, advice);
}

/* posix_madvise returns an error number and leaves errno alone. */
EXPORT int posix_madvise(void *addr, size_t len, int advice)
{
    if (advice == POSIX_MADV_DONTNEED || inside || hpw_registry_empty())
        return hpw_real_posix_madvise(addr, len, advice);
    int saved = errno;
    int rc = madvise(addr, len, advice) == 0 ? 0 : errno;
    errno = saved;
    return rc;
}

EXPORT void *mremap(void *old, size_t old_size, size_t new_size, int flags, ...)
{
    void *new_addr = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        new_addr = va_arg(ap, void *);
        va_end(ap);
    }
    if (!inside && !hpw_registry_empty()) {
        int handled;
        inside = 1;
        void *p = hpw_registry_mremap(old, old_size, new_size, flags, new_addr, &handled);
        inside = 0;
        if (handled)
            return p;
    }
    return hpw_real_mremap(old, old_size, new_size, flags, new_addr);
}

/* ---- the malloc family: large allocations from huge pages (alloc.c) ---- */

static int serve(size_t size, size_t align)
{
    return !inside && atomic_load_explicit(&initialized, memory_order_acquire) &&
           hpw_alloc_wants(size, align);
}

/* 1 when the wrapper answers an allocation itself: *out is a huge page
 * block, or NULL with errno ENOMEM when strict mode makes it fail. 0 when
 * libc is to serve it (too small, or the pool is short); errno is kept. */
static int take(size_t size, size_t align, void **out)
{
    if (!serve(size, align))
        return 0;
    int saved = errno;
    inside = 1;
    *out = hpw_alloc(size);
    inside = 0;
    int failed = *out == NULL && hpw_cfg.strict;
    errno = failed ? ENOMEM : saved;
    return *out != NULL || failed;
}

EXPORT void *malloc(size_t size)
{
    void *p;
    return take(size, 0, &p) ? p : hpw_real_malloc(size);
}

EXPORT void free(void *p)
{
    if (!hpw_alloc_free(p))
        hpw_real_free(p);
}

EXPORT void *calloc(size_t n, size_t size)
{
    void *p; /* fresh huge pages are zero */
    if ((size == 0 || n <= SIZE_MAX / size) && take(n * size, 0, &p))
        return p;
    return hpw_real_calloc(n, size);
}

/* Moves a block to a new home of `size` bytes: copies what both can hold. */
static void *move(void *p, size_t old, size_t size)
{
    void *q = malloc(size);
    if (q == NULL)
        return NULL; /* p stays as it was */
    memcpy(q, p, old < size ? old : size);
    free(p);
    return q;
}

EXPORT void *realloc(void *p, size_t size)
{
    if (p == NULL)
        return malloc(size);
    size_t ours = hpw_alloc_size(p);
    if (ours != 0) {
        if (size == 0) { /* as glibc: frees, returns NULL */
            free(p);
            return NULL;
        }
        if (size <= ours && serve(size, 0)) { /* still large and it fits: in place */
            int saved = errno;
            hpw_alloc_shrink(p, size);
            errno = saved;
            return p;
        }
        return move(p, ours, size);
    }
    void *q;
    if (!hpw_is_boot(p) && take(size, 0, &q)) { /* grown across the threshold */
        if (q != NULL) {
            size_t old = hpw_real_usable_size(p);
            memcpy(q, p, old < size ? old : size);
            hpw_real_free(p);
        }
        return q; /* NULL in strict mode: p stays as it was */
    }
    return hpw_real_realloc(p, size);
}

EXPORT void *reallocarray(void *p, size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, n * size);
}

static int valid_align(size_t align)
{
    return align != 0 && (align & (align - 1)) == 0;
}

EXPORT int posix_memalign(void **out, size_t align, size_t size)
{
    void *p;
    if (valid_align(align) && align % sizeof(void *) == 0 && take(size, align, &p)) {
        if (p == NULL)
            return ENOMEM; /* strict mode */
        *out = p;
        return 0;
    }
    return hpw_real_posix_memalign(out, align, size);
}

static void *aligned(size_t align, size_t size, void *(*real)(size_t, size_t))
{
    void *p;
    return valid_align(align) && take(size, align, &p) ? p : real(align, size);
}

EXPORT void *aligned_alloc(size_t align, size_t size)
{
    return aligned(align, size, hpw_real_aligned_alloc);
}

EXPORT void *memalign(size_t align, size_t size)
{
    return aligned(align, size, hpw_real_memalign);
}

EXPORT size_t malloc_usable_size(void *p)
{
    size_t ours = hpw_alloc_size(p);
    return ours != 0 ? ours : hpw_real_usable_size(p);
}

EXPORT int fclose(FILE *stream)
{
    if (!inside && stream != NULL && hpw_dropcache_wanted()) {
        inside = 1;
        int saved = errno;
        int fd = fileno(stream);
        off_t pos = fd >= 0 ? ftello(stream) : -1;
        if (pos >= 0)
            hpw_dropcache_at_close(fd, pos);
        errno = saved;
        inside = 0;
    }
    return hpw_real_fclose(stream);
}
