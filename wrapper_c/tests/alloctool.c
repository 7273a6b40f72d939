/* Exercises the malloc family under the preload library (or without it, for
 * comparison) and checks what the program observes: contents, zeroing,
 * alignment, errno, fork isolation. Prints key=value lines and, per check,
 * "ok NAME" or "FAIL NAME: why"; exits 1 if any check failed.
 *   alloctool all SIZE         every check with blocks of SIZE bytes
 *   alloctool hold SIZE        malloc SIZE, touch it, print "held ADDR", wait for stdin
 *   alloctool strict SIZE      malloc SIZE; print ptr=0/1 and errno */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures;

static void check(int ok, const char *name, const char *why)
{
    if (ok) {
        printf("ok %s\n", name);
    } else {
        printf("FAIL %s: %s\n", name, why);
        failures++;
    }
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 31 + seed);
}

static int same(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(i * 31 + seed))
            return 0;
    return 1;
}

static int all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            return 0;
    return 1;
}

/* Whether addr lies in a mapping whose name contains `name`. */
static int mapped_as(const void *addr, const char *name)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && (uintptr_t)addr >= lo &&
            (uintptr_t)addr < hi) {
            found = strstr(line, name) != NULL;
            break;
        }
    }
    if (f != NULL)
        fclose(f);
    return found;
}

static void check_calloc(size_t size)
{
    unsigned char *a = malloc(size);
    fill(a, size, 7);
    free(a);
    unsigned char *b = calloc(1, size);
    check(b != NULL && all_zero(b, size), "calloc_zero", "calloc memory not zero after reuse");
    free(b);
    unsigned char *c = calloc(size / 16, 16);
    check(c != NULL && all_zero(c, size / 16 * 16), "calloc_zero_nmemb",
          "calloc(n, 16) not zero");
    free(c);
    errno = 0;
    volatile size_t huge_n = SIZE_MAX / 2; /* hidden from the compiler's size check */
    void *d = calloc(huge_n, 4);
    check(d == NULL && errno == ENOMEM, "calloc_overflow", "overflow not ENOMEM");
}

static void check_realloc(size_t size)
{
    /* small -> large: crosses the threshold upwards, contents kept */
    unsigned char *p = malloc(1000);
    fill(p, 1000, 3);
    p = realloc(p, size);
    check(p != NULL && same(p, 1000, 3), "realloc_up", "contents lost growing across");
    printf("realloc_up_huge=%d\n", mapped_as(p, "hugepage-wrapper-heap"));
    fill(p, size, 4);
    /* large -> larger */
    p = realloc(p, size * 2);
    check(p != NULL && same(p, size, 4), "realloc_grow", "contents lost growing");
    /* large -> less large: in place, the pages past it given back */
    p = realloc(p, size);
    check(p != NULL && same(p, size, 4) && malloc_usable_size(p) >= size, "realloc_shrink",
          "contents or size lost shrinking in place");
    /* large -> small: crosses downwards */
    p = realloc(p, 4000);
    check(p != NULL && same(p, 4000, 4), "realloc_down", "contents lost shrinking across");
    printf("realloc_down_huge=%d\n", mapped_as(p, "hugepage-wrapper-heap"));
    free(p);
    unsigned char *q = malloc(size);
    q = realloc(q, 0); /* glibc: frees, returns NULL */
    check(q == NULL, "realloc_zero", "realloc(p, 0) did not return NULL");
    errno = 0;
    volatile size_t huge_n = SIZE_MAX / 2;
    void *r = reallocarray(NULL, huge_n, 4);
    check(r == NULL && errno == ENOMEM, "reallocarray_overflow", "overflow not ENOMEM");
}

static void check_align(size_t size)
{
    size_t aligns[] = {16, 64, 4096, 65536, 2UL << 20, 4UL << 20};
    for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
        void *p = NULL;
        int rc = posix_memalign(&p, aligns[i], size);
        char name[64];
        snprintf(name, sizeof name, "posix_memalign_%zu", aligns[i]);
        check(rc == 0 && p != NULL && ((uintptr_t)p % aligns[i]) == 0, name, "misaligned");
        if (p != NULL) {
            memset(p, 1, size);
            check(malloc_usable_size(p) >= size, "usable_size", "usable size below the request");
        }
        free(p);
        void *a = aligned_alloc(aligns[i], size);
        check(a != NULL && ((uintptr_t)a % aligns[i]) == 0, "aligned_alloc", "misaligned");
        free(a);
        void *m = memalign(aligns[i], size);
        check(m != NULL && ((uintptr_t)m % aligns[i]) == 0, "memalign", "misaligned");
        free(m);
    }
    void *p = (void *)1;
    check(posix_memalign(&p, 3, size) == EINVAL && p == (void *)1, "posix_memalign_einval",
          "a bad alignment was not EINVAL");
}

static void check_foreign(size_t size)
{
    char *s = strdup("a foreign pointer");
    free(s);
    void *v = valloc(size); /* not interposed: glibc's, page aligned */
    memset(v, 2, size);
    free(v);
    void *small = malloc(100);
    check(!mapped_as(small, "hugepage-wrapper-heap"), "small_not_huge",
          "a small allocation went to huge pages");
    free(small);
    check(1, "foreign_free", "");
}

struct worker { size_t size; unsigned seed; int bad; };

static void *work(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < 50; i++) {
        size_t n = (i % 3 == 0) ? 512 : w->size + (size_t)i * 4096;
        unsigned char *p = (i % 2) ? malloc(n) : calloc(1, n);
        if (p == NULL) { w->bad = 1; break; }
        if (i % 2 == 0 && !all_zero(p, n)) w->bad = 1;
        fill(p, n, w->seed + (unsigned)i);
        p = realloc(p, n + 8192);
        if (p == NULL || !same(p, n, w->seed + (unsigned)i)) w->bad = 1;
        free(p);
    }
    return NULL;
}

static void check_threads(size_t size)
{
    pthread_t t[4];
    struct worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){size, (unsigned)i * 17, 0};
        pthread_create(&t[i], NULL, work, &w[i]);
    }
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        bad |= w[i].bad;
    }
    check(!bad, "threads", "a thread saw wrong contents");
}

static void check_fork(size_t size)
{
    unsigned char *p = malloc(size);
    fill(p, size, 9);
    pid_t pid = fork();
    if (pid == 0) {
        int ok = same(p, size, 9);
        fill(p, size, 10); /* copy-on-write: the parent must not see it */
        unsigned char *q = malloc(size); /* the child allocates too (locks after fork) */
        if (q != NULL) memset(q, 1, size);
        free(q);
        _exit(ok ? 0 : 1);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fork_child_reads", "child saw other data");
    check(same(p, size, 9), "fork_cow", "the child's writes reached the parent");
    free(p);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: alloctool all|hold|strict SIZE\n");
        return 2;
    }
    size_t size = strtoull(argv[2], NULL, 0);
    if (strcmp(argv[1], "hold") == 0) {
        unsigned char *p = malloc(size);
        if (p == NULL) { perror("malloc"); return 1; }
        memset(p, 1, size);
        printf("held %p huge=%d\n", (void *)p, mapped_as(p, "hugepage-wrapper-heap"));
        fflush(stdout);
        char buf[16];
        while (fread(buf, 1, sizeof buf, stdin) > 0) {}
        free(p);
        return 0;
    }
    if (strcmp(argv[1], "strict") == 0) {
        errno = 0;
        void *p = malloc(size);
        printf("ptr=%d errno=%d\n", p != NULL, errno);
        return 0;
    }
    void *probe = malloc(size);
    printf("huge=%d\n", mapped_as(probe, "hugepage-wrapper-heap"));
    free(probe);
    check_calloc(size);
    check_realloc(size);
    check_align(size);
    check_foreign(size);
    check_threads(size);
    check_fork(size);
    printf("failures=%d\n", failures);
    return failures ? 1 : 0;
}
