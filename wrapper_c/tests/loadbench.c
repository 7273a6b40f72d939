/* Loads a file into memory one way and prints seconds and the page cache left.
 *   loadbench plain FILE   mmap(PROT_READ, MAP_SHARED|MAP_POPULATE): llama.cpp's default;
 *                          run under LD_PRELOAD=libhugepage-wrapper.so to measure the library
 *   loadbench seed FILE    the seed's approach: anonymous MAP_HUGETLB memory, one thread,
 *                          one pread per chunk, page cache kept
 * Output: key=value lines (seconds, gib_per_s, cache_kb, hugetlb). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 3) { fprintf(stderr, "usage: loadbench plain|seed FILE\n"); return 2; }
    const char *path = argv[2];
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) { perror(path); return 1; }
    size_t len = (size_t)st.st_size;
    volatile unsigned long sum = 0;
    double t0 = now();
    char *m;
    if (strcmp(argv[1], "seed") == 0) {
        size_t total = (len + (2UL << 20) - 1) & ~((2UL << 20) - 1);
        m = mmap(NULL, total, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        if (m == MAP_FAILED) { perror("mmap MAP_HUGETLB"); return 1; }
        size_t chunk = 1UL << 30;
        for (size_t off = 0; off < len;) {
            size_t want = len - off < chunk ? len - off : chunk;
            ssize_t r = pread(fd, m + off, want, (off_t)off);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) { perror("pread"); return 1; }
            off += (size_t)r;
        }
    } else {
        m = mmap(NULL, len, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
        if (m == MAP_FAILED) { perror("mmap"); return 1; }
    }
    double secs = now() - t0;
    for (size_t i = 0; i < len; i += 1 << 20) sum += (unsigned char)m[i];
    printf("seconds=%.4f\ngib_per_s=%.2f\ncache_kb=%ld\n", secs,
           (double)len / (1 << 30) / secs, cached_kb(path));
    return 0;
}
