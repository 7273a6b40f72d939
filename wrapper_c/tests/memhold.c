/* Holds memory for tests and benchmarks until its standard input closes.
 *   memhold MIB              hold MIB of anonymous memory (4 KiB pages)
 *   memhold MIB --fragment   hold MIB as 4 KiB pages interleaved with as many freed
 *                            ones, so that free memory is fragmented
 * Prints "ready" once the memory is held. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: memhold MIB [--fragment]\n"); return 2; }
    size_t len = strtoull(argv[1], NULL, 10) << 20;
    int fragment = argc > 2 && strcmp(argv[2], "--fragment") == 0;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(m, len, MADV_NOHUGEPAGE);
    if (!fragment) {
        memset(m, 1, len);
    } else {
        /* Fault the kept pages and as many others in turn, so the kernel hands
         * them out physically interleaved, then free the others in one call. */
        char *other = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (other == MAP_FAILED) { perror("mmap"); return 1; }
        madvise(other, len, MADV_NOHUGEPAGE);
        for (size_t off = 0; off < len; off += 4096) {
            m[off] = 1;
            other[off] = 1;
        }
        munmap(other, len);
    }
    printf("ready\n");
    fflush(stdout);
    char buf[64];
    while (fread(buf, 1, sizeof buf, stdin) > 0) {}
    return 0;
}
