/* The libc functions underneath the interposers, resolved once with
 * dlsym(RTLD_NEXT): the mmap family here, the malloc family for alloc_real.c.
 * dlsym can allocate, and an allocation can mmap: until the symbols are
 * resolved, and while resolving, raw system calls (and alloc_real.c's static
 * arena) stand in. */
#include "wrapper.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);
typedef int (*range_fn)(void *, size_t);
typedef int (*range_arg_fn)(void *, size_t, int);

static mmap_fn real_mmap;
static range_fn real_munmap;
static range_arg_fn real_mprotect;
static range_arg_fn real_madvise;
static range_arg_fn real_posix_madvise;
typedef void *(*mremap_fn)(void *, size_t, size_t, int, ...);
static mremap_fn real_mremap;
static int (*real_fclose)(FILE *);
struct hpw_alloc_fns hpw_next_alloc;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static atomic_int resolved;
static __thread int resolving;

static void resolve(void)
{
    resolving = 1;
    real_mmap = (mmap_fn)dlsym(RTLD_NEXT, "mmap");
    real_munmap = (range_fn)dlsym(RTLD_NEXT, "munmap");
    real_mprotect = (range_arg_fn)dlsym(RTLD_NEXT, "mprotect");
    real_madvise = (range_arg_fn)dlsym(RTLD_NEXT, "madvise");
    real_posix_madvise = (range_arg_fn)dlsym(RTLD_NEXT, "posix_madvise");
    real_mremap = (mremap_fn)dlsym(RTLD_NEXT, "mremap");
    real_fclose = (int (*)(FILE *))dlsym(RTLD_NEXT, "fclose");
    struct hpw_alloc_fns *a = &hpw_next_alloc;
    a->malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    a->free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    a->calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
    a->realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    a->posix_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
    a->aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "aligned_alloc");
    a->memalign = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "memalign");
    a->usable_size = (size_t (*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
    resolving = 0;
    atomic_store_explicit(&resolved, 1, memory_order_release);
}

void hpw_resolve_real(void)
{
    if (!resolving)
        pthread_once(&once, resolve);
}

int hpw_real_ready(void)
{
    if (atomic_load_explicit(&resolved, memory_order_acquire))
        return 1;
    if (resolving)
        return 0;
    pthread_once(&once, resolve);
    return hpw_next_alloc.malloc != NULL;
}

void *hpw_real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    hpw_resolve_real();
    if (real_mmap != NULL)
        return real_mmap(addr, len, prot, flags, fd, off);
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

int hpw_real_munmap(void *addr, size_t len)
{
    hpw_resolve_real();
    if (real_munmap != NULL)
        return real_munmap(addr, len);
    return (int)syscall(SYS_munmap, addr, len);
}

int hpw_real_mprotect(void *addr, size_t len, int prot)
{
    hpw_resolve_real();
    if (real_mprotect != NULL)
        return real_mprotect(addr, len, prot);
    return (int)syscall(SYS_mprotect, addr, len, prot);
}

int hpw_real_madvise(void *addr, size_t len, int advice)
{
    hpw_resolve_real();
    if (real_madvise != NULL)
        return real_madvise(addr, len, advice);
    return (int)syscall(SYS_madvise, addr, len, advice);
}

/* posix_madvise returns an error number instead of setting errno. */
int hpw_real_posix_madvise(void *addr, size_t len, int advice)
{
    hpw_resolve_real();
    if (real_posix_madvise != NULL)
        return real_posix_madvise(addr, len, advice);
    if (advice == POSIX_MADV_DONTNEED)
        return 0; /* glibc ignores it too: it would discard data */
    long r = syscall(SYS_madvise, addr, len, advice);
    return r == 0 ? 0 : errno;
}

void *hpw_real_mremap(void *old, size_t old_size, size_t new_size, int flags, void *new_addr)
{
    hpw_resolve_real();
    if (real_mremap != NULL)
        return real_mremap(old, old_size, new_size, flags, new_addr);
    return (void *)syscall(SYS_mremap, old, old_size, new_size, flags, new_addr);
}

int hpw_real_fclose(FILE *fp)
{
    hpw_resolve_real();
    if (real_fclose == NULL) {
        errno = ENOSYS; /* cannot happen with a libc underneath */
        return EOF;
    }
    return real_fclose(fp);
}
