/* Shared by the test programs. */
#ifndef HPW_TESTUTIL_H
#define HPW_TESTUTIL_H

#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Page cache held for a file, in KiB: mincore on a raw mmap system call, which
 * the preloaded library does not see. */
static inline long cached_kb(const char *path)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size == 0) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    size_t len = (size_t)st.st_size;
    void *m = (void *)syscall(SYS_mmap, NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return -1;
    size_t pages = (len + 4095) / 4096;
    unsigned char *vec = malloc(pages);
    long kb = 0;
    if (vec != NULL && syscall(SYS_mincore, m, len, vec) == 0)
        for (size_t i = 0; i < pages; i++)
            kb += (vec[i] & 1) ? 4 : 0;
    free(vec);
    syscall(SYS_munmap, m, len);
    return kb;
}

#endif
