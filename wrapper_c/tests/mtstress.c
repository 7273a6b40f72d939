/* Stress test for the preload library with threads and fork, the cases a
 * single-threaded fuzzer cannot reach:
 *
 *   mtstress FILE FORKS
 *
 * - 4 threads unmap 4 KiB fragments of one taken-over file mapping, each in
 *   its quarter, checking that what is left still holds the file's bytes;
 * - 4 threads map anonymous memory, write it, MADV_DONTNEED it and check it
 *   reads zero (the kernel reuses the holes the first group leaves, and the
 *   library must not claim those new mappings);
 * - 1 thread calls madvise on the mapping in a loop (harmless hints: the
 *   pages may be another thread's by then);
 * - the main thread forks FORKS children meanwhile; each reads the mapping,
 *   allocates, unmaps and exits. A child still alive after 10 s is a hang.
 * Output: key=value lines; every count of failures must be 0. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PG 4096UL

static char *map;
static size_t len;
static unsigned char *expect;
static atomic_int stop;
static atomic_long fragment_mismatch, dontneed_failures, anon_ops, fragments, advise_ops;

static uint64_t next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    return z ^ (z >> 27);
}

static void *fragmenter(void *arg)
{
    size_t q = (size_t)(uintptr_t)arg, quarter = len / 4 / PG * PG;
    size_t at = q * quarter, end = at + quarter;
    uint64_t seed = q + 1;
    while (at < end) {
        size_t n = (1 + next(&seed) % 64) * PG;
        if (n > end - at)
            n = end - at;
        if (munmap(map + at, n) != 0)
            atomic_fetch_add(&fragment_mismatch, 1);
        at += n;
        atomic_fetch_add(&fragments, 1);
        if (at < end && memcmp(map + at, expect + at, PG) != 0)
            atomic_fetch_add(&fragment_mismatch, 1);
    }
    return NULL;
}

static void *anon_worker(void *arg)
{
    uint64_t seed = (uintptr_t)arg * 7919;
    while (!atomic_load(&stop)) {
        size_t n = (1 + next(&seed) % 64) * PG;
        unsigned char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                                -1, 0);
        if (p == MAP_FAILED)
            continue;
        memset(p, 0xab, n);
        if (madvise(p, n, MADV_DONTNEED) != 0)
            atomic_fetch_add(&dontneed_failures, 1);
        for (size_t i = 0; i < n; i += 512)
            if (p[i] != 0) {
                atomic_fetch_add(&dontneed_failures, 1);
                break;
            }
        munmap(p, n);
        atomic_fetch_add(&anon_ops, 1);
    }
    return NULL;
}

static void *adviser(void *arg)
{
    (void)arg;
    uint64_t seed = 99;
    while (!atomic_load(&stop)) {
        size_t at = next(&seed) % (len / PG) * PG;
        madvise(map + at, PG, (int)(next(&seed) % 2) ? MADV_WILLNEED : MADV_RANDOM);
        atomic_fetch_add(&advise_ops, 1);
    }
    return NULL;
}

static int child(void)
{
    volatile unsigned sum = 0;
    for (size_t i = 0; i < PG; i += 64)
        sum += (unsigned char)map[len + i];
    char *p = malloc(16 << 20);
    if (p != NULL)
        memset(p, 1, 16 << 20);
    free(p);
    int ok = memcmp(map + len, expect + len, PG) == 0;
    munmap(map + len, PG);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: mtstress FILE FORKS\n");
        return 2;
    }
    int forks = atoi(argv[2]);
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror(argv[1]);
        return 2;
    }
    len = (size_t)st.st_size / PG * PG;
    expect = malloc(len);
    for (size_t done = 0; done < len;) {
        ssize_t n = pread(fd, expect + done, len - done, (off_t)done);
        if (n <= 0)
            return 2;
        done += (size_t)n;
    }
    map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    len -= PG; /* the fragmenters' part; the last page is the children's */
    pthread_t t[9];
    for (uintptr_t i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, anon_worker, (void *)i);
    pthread_create(&t[4], NULL, adviser, NULL);
    for (uintptr_t i = 0; i < 4; i++)
        pthread_create(&t[5 + i], NULL, fragmenter, (void *)i);
    int hung = 0, failed = 0;
    for (int i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(child());
        int status = 0;
        struct timespec t0, now;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (;;) {
            pid_t w = waitpid(pid, &status, WNOHANG);
            if (w == pid) {
                failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
                break;
            }
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - t0.tv_sec > 10) {
                hung++;
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                break;
            }
            usleep(200);
        }
    }
    for (int i = 5; i < 9; i++)
        pthread_join(t[i], NULL);
    atomic_store(&stop, 1);
    for (int i = 0; i < 5; i++)
        pthread_join(t[i], NULL);
    printf("fragments=%ld\nfragment_mismatch=%ld\nanon_ops=%ld\ndontneed_failures=%ld\n"
           "advise_ops=%ld\nforks=%d\nhung_children=%d\nfailed_children=%d\n",
           atomic_load(&fragments), atomic_load(&fragment_mismatch), atomic_load(&anon_ops),
           atomic_load(&dontneed_failures), atomic_load(&advise_ops), forks, hung, failed);
    return 0;
}
