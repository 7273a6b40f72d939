/* The interposed libc entry points: the only symbols this library exports.
 * On any doubt a call goes to libc unchanged. A thread-local flag keeps the
 * library's own calls (and whatever dlsym or malloc do inside them) out. */
#include "wrapper.h"

#include <errno.h>
#include <sys/mman.h>

#define EXPORT __attribute__((visibility("default")))

static __thread int inside;

__attribute__((constructor)) static void hpw_init(void)
{
    inside = 1;
    hpw_resolve_real();
    hpw_config_load();
    inside = 0;
}

static int eligible(size_t length, int prot, int flags, int fd, off_t offset)
{
    return !inside && fd >= 0 && !(flags & MAP_ANONYMOUS) && (prot & PROT_READ) &&
           !(prot & PROT_WRITE) && !(flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) &&
           length >= hpw_cfg.min_size && (offset & (off_t)(HPW_SMALL_PAGE - 1)) == 0 &&
           offset >= 0;
}

EXPORT void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    if (eligible(length, prot, flags, fd, offset)) {
        int saved = errno, taken = 0;
        inside = 1;
        void *p = hpw_try_takeover(length, prot, flags, fd, offset, &taken);
        inside = 0;
        if (taken)
            return p;
        errno = saved;
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

EXPORT int posix_madvise(void *addr, size_t len, int advice)
{
    int handled;
    int rc = ranged(HPW_OP_ADVISE, addr, len, advice, hpw_real_posix_madvise, &handled);
    return handled ? rc : hpw_real_posix_madvise(addr, len, advice);
}
