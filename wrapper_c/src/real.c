/* The libc functions underneath the interposers, resolved once with
 * dlsym(RTLD_NEXT). dlsym can allocate, and an allocation can mmap: until the
 * symbols are resolved, and while resolving, raw system calls stand in. */
#include "wrapper.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
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
static pthread_once_t once = PTHREAD_ONCE_INIT;
static __thread int resolving;

static void resolve(void)
{
    resolving = 1;
    real_mmap = (mmap_fn)dlsym(RTLD_NEXT, "mmap");
    real_munmap = (range_fn)dlsym(RTLD_NEXT, "munmap");
    real_mprotect = (range_arg_fn)dlsym(RTLD_NEXT, "mprotect");
    real_madvise = (range_arg_fn)dlsym(RTLD_NEXT, "madvise");
    real_posix_madvise = (range_arg_fn)dlsym(RTLD_NEXT, "posix_madvise");
    resolving = 0;
}

void hpw_resolve_real(void)
{
    if (!resolving)
        pthread_once(&once, resolve);
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
