/* The allocator underneath the interposed malloc family: the next definition
 * in the lookup order (glibc's, or jemalloc's where a program links it),
 * resolved by real.c with the rest. dlsym itself can allocate, and
 * allocations come before any constructor runs: until the symbols are
 * resolved, a small static arena serves them. Its blocks are never freed
 * (free of one is a no-op) and are told apart by address. */
#include "wrapper.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>

#define BOOT_SIZE (256 * 1024)
static _Alignas(64) char boot[BOOT_SIZE];
static atomic_size_t boot_used;

static void *boot_alloc(size_t size, size_t align)
{
    if (align < 16)
        align = 16;
    size_t cur = atomic_load(&boot_used), start;
    do {
        start = (cur + align - 1) & ~(align - 1);
        if (start + size > BOOT_SIZE || start + size < start) {
            errno = ENOMEM;
            return NULL;
        }
    } while (!atomic_compare_exchange_weak(&boot_used, &cur, start + size));
    return boot + start; /* static storage: zero already */
}

int hpw_is_boot(const void *p)
{
    return (const char *)p >= boot && (const char *)p < boot + BOOT_SIZE;
}

void *hpw_real_malloc(size_t size)
{
    return hpw_real_ready() ? hpw_next_alloc.malloc(size) : boot_alloc(size, 16);
}

void hpw_real_free(void *p)
{
    if (p == NULL || hpw_is_boot(p))
        return;
    if (hpw_real_ready())
        hpw_next_alloc.free(p);
}

void *hpw_real_calloc(size_t n, size_t size)
{
    if (hpw_real_ready())
        return hpw_next_alloc.calloc(n, size);
    if (size != 0 && n > (size_t)-1 / size) {
        errno = ENOMEM;
        return NULL;
    }
    return boot_alloc(n * size, 16);
}

void *hpw_real_realloc(void *p, size_t size)
{
    if (p != NULL && hpw_is_boot(p)) {
        /* a boot block's size is not kept: copy what can lie behind it */
        void *q = hpw_real_malloc(size);
        if (q != NULL) {
            size_t room = (size_t)(boot + BOOT_SIZE - (char *)p);
            memcpy(q, p, size < room ? size : room);
        }
        return q;
    }
    if (hpw_real_ready())
        return hpw_next_alloc.realloc(p, size);
    return p == NULL ? boot_alloc(size, 16) : NULL;
}

int hpw_real_posix_memalign(void **out, size_t align, size_t size)
{
    if (hpw_real_ready())
        return hpw_next_alloc.posix_memalign(out, align, size);
    void *p = boot_alloc(size, align);
    if (p == NULL)
        return ENOMEM;
    *out = p;
    return 0;
}

void *hpw_real_aligned_alloc(size_t align, size_t size)
{
    return hpw_real_ready() ? hpw_next_alloc.aligned_alloc(align, size) : boot_alloc(size, align);
}

void *hpw_real_memalign(size_t align, size_t size)
{
    return hpw_real_ready() ? hpw_next_alloc.memalign(align, size) : boot_alloc(size, align);
}

size_t hpw_real_usable_size(void *p)
{
    if (p == NULL)
        return 0;
    if (hpw_is_boot(p))
        return 0; /* unknown; nothing relies on it this early */
    return hpw_real_ready() && hpw_next_alloc.usable_size != NULL ? hpw_next_alloc.usable_size(p) : 0;
}
