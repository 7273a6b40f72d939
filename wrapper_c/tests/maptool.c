/* Test helper for the preload library: maps files the way llama.cpp does and
 * reports what the kernel shows (/proc/self/smaps, the pool counters, the bytes
 * in the mapping against read()), never what the library claims.
 *
 *   maptool mkfile PATH SIZE            deterministic contents (word = hash(offset))
 *   maptool map PATH OFFSET LENGTH [--direct] [--private] [--write-shared]
 *           [--llama-unmap HEAD TAILSTART] [--fork] [--concurrent N] [--advise]
 *           [--keep]
 * Output: key=value lines. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static int mkfile(const char *path, unsigned long long size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { perror("open"); return 1; }
    size_t chunk = 8 << 20;
    uint64_t *buf = malloc(chunk);
    for (unsigned long long off = 0; off < size; off += chunk) {
        size_t n = size - off < chunk ? (size_t)(size - off) : chunk;
        for (size_t i = 0; i < (n + 7) / 8; i++)
            buf[i] = mix(off + i * 8);
        for (size_t done = 0; done < n;) {
            ssize_t w = write(fd, (char *)buf + done, n - done);
            if (w < 0) { perror("write"); return 1; }
            done += (size_t)w;
        }
    }
    free(buf);
    return close(fd) == 0 ? 0 : 1;
}

static long counter(const char *size, const char *name)
{
    char path[128];
    snprintf(path, sizeof path, "/sys/kernel/mm/hugepages/hugepages-%s/%s", size, name);
    FILE *f = fopen(path, "r");
    long v = -1;
    if (f) { if (fscanf(f, "%ld", &v) != 1) v = -1; fclose(f); }
    return v;
}

static void pool(const char *stage)
{
    printf("free2m_%s=%ld\nfree1g_%s=%ld\n", stage, counter("2048kB", "free_hugepages"),
           stage, counter("1048576kB", "free_hugepages"));
}

/* Compare [start, end) of the mapping with the file read through read(). */
static long long compare(const char *path, const char *map, off_t offset, size_t start, size_t end)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    /* Past the 4 KiB page that holds the end of file, a file mapping faults. */
    if (fstat(fd, &st) == 0 && st.st_size > 0) {
        size_t data = (size_t)st.st_size > (size_t)offset ? (size_t)(st.st_size - offset) : 0;
        data = (data + 4095) & ~(size_t)4095;
        if (end > data)
            end = data;
    }
    size_t chunk = 16 << 20;
    char *buf = malloc(chunk);
    for (size_t pos = start; pos < end; pos += chunk) {
        size_t n = end - pos < chunk ? end - pos : chunk;
        size_t got = 0;
        while (got < n) {
            ssize_t r = pread(fd, buf + got, n - got, offset + (off_t)(pos + got));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            got += (size_t)r;
        }
        memset(buf + got, 0, n - got); /* past end of file: zeros */
        if (memcmp(buf, map + pos, n) != 0) {
            for (size_t i = 0; i < n; i++)
                if (buf[i] != map[pos + i]) { free(buf); close(fd); return (long long)(pos + i); }
        }
    }
    free(buf);
    close(fd);
    return -1;
}

static void smaps(const char *map, size_t len, const char *stage)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[4096], name[4096] = "";
    uintptr_t lo = (uintptr_t)map, hi = lo + len;
    int in = 0;
    long size = 0, hugetlb = 0, kps = 0, pmd = 0;
    while (fgets(line, sizeof line, f)) {
        uintptr_t s, e;
        if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR, &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = s < hi && e > lo;
            if (in && name[0] == '\0') {
                char *p = line; int fields = 0;
                while (*p && fields < 5) { while (*p && *p != ' ') p++; while (*p == ' ') p++; fields++; }
                snprintf(name, sizeof name, "%s", p);
                name[strcspn(name, "\n")] = '\0';
            }
            continue;
        }
        if (!in) continue;
        long v;
        if (sscanf(line, "Size: %ld kB", &v) == 1) size += v;
        else if (sscanf(line, "Private_Hugetlb: %ld kB", &v) == 1) hugetlb += v;
        else if (sscanf(line, "Shared_Hugetlb: %ld kB", &v) == 1) hugetlb += v;
        else if (sscanf(line, "KernelPageSize: %ld kB", &v) == 1 && v > kps) kps = v;
        else if (sscanf(line, "FilePmdMapped: %ld kB", &v) == 1) pmd += v;
    }
    fclose(f);
    printf("%s_size_kb=%ld\n%s_hugetlb_kb=%ld\n%s_kernel_page_kb=%ld\n%s_pmd_kb=%ld\n%s_name=%s\n",
           stage, size, stage, hugetlb, stage, kps, stage, pmd, stage, name);
}

struct conc { const char *path; size_t len; int ok; };

static void *conc_worker(void *arg)
{
    struct conc *c = arg;
    int fd = open(c->path, O_RDONLY);
    char *m = mmap(NULL, c->len, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return NULL;
    c->ok = compare(c->path, m, 0, 0, c->len) < 0 && munmap(m, c->len) == 0;
    return NULL;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && strcmp(argv[1], "mkfile") == 0)
        return mkfile(argv[2], strtoull(argv[3], NULL, 0));
    if (argc < 5 || strcmp(argv[1], "map") != 0) {
        fprintf(stderr, "usage: see the comment at the top of maptool.c\n");
        return 2;
    }
    const char *path = argv[2];
    off_t offset = (off_t)strtoll(argv[3], NULL, 0);
    size_t len = strtoull(argv[4], NULL, 0);
    int direct = 0, private_map = 0, write_shared = 0, fork_child = 0, advise = 0, keep = 0;
    size_t head = 0, tail = 0, concurrent = 0;
    for (int i = 5; i < argc; i++) {
        if (!strcmp(argv[i], "--direct")) direct = 1;
        else if (!strcmp(argv[i], "--private")) private_map = 1;
        else if (!strcmp(argv[i], "--write-shared")) write_shared = 1;
        else if (!strcmp(argv[i], "--fork")) fork_child = 1;
        else if (!strcmp(argv[i], "--advise")) advise = 1;
        else if (!strcmp(argv[i], "--keep")) keep = 1;
        else if (!strcmp(argv[i], "--concurrent") && i + 1 < argc) concurrent = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--llama-unmap") && i + 2 < argc) {
            head = strtoull(argv[++i], NULL, 0);
            tail = strtoull(argv[++i], NULL, 0);
        } else { fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
    }
    pool("before");
    if (concurrent) {
        pthread_t t[64];
        struct conc c[64];
        for (size_t i = 0; i < concurrent && i < 64; i++) {
            c[i] = (struct conc){path, len, 0};
            pthread_create(&t[i], NULL, conc_worker, &c[i]);
        }
        int ok = 0;
        for (size_t i = 0; i < concurrent && i < 64; i++) { pthread_join(t[i], NULL); ok += c[i].ok; }
        printf("concurrent_ok=%d\n", ok);
        pool("after_unmap");
        return 0;
    }
    int fd = open(path, (write_shared ? O_RDWR : O_RDONLY) | (direct ? O_DIRECT : 0));
    if (fd < 0) { printf("open=fail errno=%d\n", errno); return 1; }
    int prot = PROT_READ | (write_shared ? PROT_WRITE : 0);
    int flags = (private_map ? MAP_PRIVATE : MAP_SHARED) | MAP_POPULATE;
    char *m = mmap(NULL, len, prot, flags, fd, offset);
    if (m == MAP_FAILED) {
        printf("mmap=fail\nerrno=%d\n", errno);
        pool("after_unmap");
        return 0;
    }
    close(fd);
    printf("mmap=ok\n");
    pool("after_map");
    printf("cache_after_map_kb=%ld\n", cached_kb(path));
    smaps(m, len, "map");
    long long bad = compare(path, m, offset, 0, len);
    printf("compare=%s\nmismatch_at=%lld\n", bad < 0 ? "match" : "mismatch", bad);
    if (write_shared) {
        memcpy(m + 4096, "MARKER!!", 8);
        printf("msync_rc=%d\n", msync(m, len, MS_SYNC));
    }
    if (advise) {
        printf("posix_madvise_rc=%d\n", posix_madvise(m + 4096, 8192, POSIX_MADV_WILLNEED));
        printf("posix_madvise_random_rc=%d\n", posix_madvise(m + 12288, 4096 * 5, POSIX_MADV_RANDOM));
        printf("madvise_rc=%d\n", madvise(m + 4096, 4096, MADV_DONTNEED));
        printf("mprotect_rc=%d\n", mprotect(m + 4096, 8192, PROT_READ));
        long long b2 = compare(path, m, offset, 0, len);
        printf("compare_after_advise=%s\n", b2 < 0 ? "match" : "mismatch");
    }
    if (fork_child) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            int ok = compare(path, m, offset, 0, len) < 0;
            munmap(m, len); /* must not take the pages from the parent */
            _exit(ok ? 0 : 1);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        printf("fork_child=%s\n", WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "match" : "mismatch");
        long long b3 = compare(path, m, offset, 0, len);
        printf("compare_after_child=%s\n", b3 < 0 ? "match" : "mismatch");
    }
    if (head || tail) {
        printf("unmap_head_rc=%d\n", head ? munmap(m, head) : 0);
        printf("unmap_tail_rc=%d\n", tail < len ? munmap(m + tail, len - tail) : 0);
        pool("after_partial");
        smaps(m + head, tail - head, "middle");
        long long b4 = compare(path, m, offset, head, tail);
        printf("compare_middle=%s\n", b4 < 0 ? "match" : "mismatch");
        printf("unmap_rest_rc=%d\n", munmap(m + head, tail - head));
    } else if (!keep) {
        printf("unmap_rc=%d\n", munmap(m, len));
    }
    pool("after_unmap");
    return 0;
}
