/* The allocator underneath the interposed malloc family: the next definition
 * in the lookup order (glibc's, or jemalloc's where a program links it),
 * resolved once with dlsym(RTLD_NEXT). dlsym itself can allocate, and
 * allocations come before any constructor runs: until the symbols are
 * resolved, a small static arena serves them. Its blocks are never freed
 * (free of one is a no-op) and are told apart by address. */
#include "wrapper.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

typedef void *(*malloc_fn)(size_t);
typedef void (*free_fn)(void *);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef int (*posix_memalign_fn)(void **, size_t, size_t);
typedef void *(*aligned_fn)(size_t, size_t);
typedef size_t (*usable_fn)(void *);

static malloc_fn r_malloc;
static free_fn r_free;
static calloc_fn r_calloc;
static realloc_fn r_realloc;
static posix_memalign_fn r_posix_memalign;
static aligned_fn r_aligned_alloc;
static aligned_fn r_memalign;
static usable_fn r_usable;
static atomic_int resolved;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static __thread int resolving;

#define BOOT_SIZE (256 * 1024)
static _Alignas(64) char boot[BOOT_SIZE];
static atomic_size_t boot_used;

static void resolve(void)
{
    resolving = 1;
    r_malloc = (malloc_fn)dlsym(RTLD_NEXT, "malloc");
    r_free = (free_fn)dlsym(RTLD_NEXT, "free");
    r_calloc = (calloc_fn)dlsym(RTLD_NEXT, "calloc");
    r_realloc = (realloc_fn)dlsym(RTLD_NEXT, "realloc");
    r_posix_memalign = (posix_memalign_fn)dlsym(RTLD_NEXT, "posix_memalign");
    r_aligned_alloc = (aligned_fn)dlsym(RTLD_NEXT, "aligned_alloc");
    r_memalign = (aligned_fn)dlsym(RTLD_NEXT, "memalign");
    r_usable = (usable_fn)dlsym(RTLD_NEXT, "malloc_usable_size");
    resolving = 0;
    atomic_store_explicit(&resolved, 1, memory_order_release);
}

/* 1 when the real allocator can be called, 0 while it is being resolved. */
static int ready(void)
{
    if (atomic_load_explicit(&resolved, memory_order_acquire))
        return 1;
    if (resolving)
        return 0;
    pthread_once(&once, resolve);
    return r_malloc != NULL;
}

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
    return ready() ? r_malloc(size) : boot_alloc(size, 16);
}

void hpw_real_free(void *p)
{
    if (p == NULL || hpw_is_boot(p))
        return;
    if (ready())
        r_free(p);
}

void *hpw_real_calloc(size_t n, size_t size)
{
    if (ready())
        return r_calloc(n, size);
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
    if (ready())
        return r_realloc(p, size);
    return p == NULL ? boot_alloc(size, 16) : NULL;
}

int hpw_real_posix_memalign(void **out, size_t align, size_t size)
{
    if (ready())
        return r_posix_memalign(out, align, size);
    void *p = boot_alloc(size, align);
    if (p == NULL)
        return ENOMEM;
    *out = p;
    return 0;
}

void *hpw_real_aligned_alloc(size_t align, size_t size)
{
    return ready() ? r_aligned_alloc(align, size) : boot_alloc(size, align);
}

void *hpw_real_memalign(size_t align, size_t size)
{
    return ready() ? r_memalign(align, size) : boot_alloc(size, align);
}

size_t hpw_real_usable_size(void *p)
{
    if (p == NULL)
        return 0;
    if (hpw_is_boot(p))
        return 0; /* unknown; nothing relies on it this early */
    return ready() && r_usable != NULL ? r_usable(p) : 0;
}
