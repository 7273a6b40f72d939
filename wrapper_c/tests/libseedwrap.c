/* The seed design note's wrapper, as the benchmark baseline: any fd mapping of
 * at least 1 GiB is replaced by anonymous MAP_HUGETLB memory filled by pread,
 * in one thread, page cache kept, munmap not handled. One fix only, so that
 * the model is intact and token outputs compare: the seed's single pread
 * stopped at 0x7ffff000 bytes; here it loops. */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

__attribute__((visibility("default")))
void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
    if (!real_mmap)
        real_mmap = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap");
    if (fd >= 0 && length >= (1UL << 30)) {
        void *huge = real_mmap(NULL, length, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        if (huge != MAP_FAILED) {
            fprintf(stderr, "seed-wrapper: Allocated %.2f GB with MAP_HUGETLB\n",
                    (double)length / (1 << 30));
            size_t done = 0;
            while (done < length) {
                ssize_t r = pread(fd, (char *)huge + done, length - done, offset + (off_t)done);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r <= 0)
                    break;
                done += (size_t)r;
            }
            return huge;
        }
    }
    return real_mmap(addr, length, prot, flags, fd, offset);
}

__attribute__((visibility("default")))
void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    return mmap(addr, length, prot, flags, fd, offset);
}
