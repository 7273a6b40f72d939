/* Differential fuzzer for the preload library.
 *
 *   mmfuzz SEED NOPS DIR      DIR holds the files f0 .. f3 (made by the test)
 *
 * Runs a seeded random sequence of mmap (files, private and shared, and
 * anonymous memory), munmap, mprotect, madvise, mremap, fork, reads, writes
 * and malloc/calloc/aligned_alloc/posix_memalign/realloc/free, and prints one
 * line per operation with everything the program can observe: return values,
 * errno, the bytes it reads (as hashes) and the faults it takes (signal and
 * si_code). No address is printed. The test runs it once with the library
 * preloaded and once without; the outputs must be identical.
 *
 * The sequence never does what is on the library's documented list of
 * differences (docs/wrapper-semantics.md): MADV_DONTNEED on a file copy the
 * program has written to, growing a file mapping past the end of the file,
 * or reading an address it has unmapped after another mapping may have been
 * placed there (the kernel's choice of address differs between the runs). */
#include <errno.h>
#include <malloc.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096UL
#define NSLOT 10
#define MAXPAGES 8192 /* 32 MiB per slot */
#define NFILES 4

enum kind { K_NONE, K_FILE, K_ANON, K_HEAP };

struct slot {
    enum kind kind;
    char *p;
    size_t len;              /* bytes: whole pages for mappings */
    unsigned char mapped[MAXPAGES];
    int written;             /* a file copy the program wrote to */
    int file;
    off_t off;
    int inner_prot;          /* a heap block with pages not read-write */
    int aligned;             /* a heap block asked for page-aligned */
};

static struct slot slots[NSLOT];
static off_t file_size[NFILES];
static char file_path[NFILES][4096];
static uint64_t rng;
static sigjmp_buf jb;
static volatile sig_atomic_t guarded;
static volatile int fault_sig, fault_code;

static uint64_t next(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static size_t rnd(size_t n) { return n == 0 ? 0 : (size_t)(next() % n); }

static void on_fault(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    if (!guarded) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    fault_sig = sig;
    fault_code = si->si_code;
    siglongjmp(jb, 1);
}

/* A byte read (0..255), or -1 with fault_sig/fault_code set. */
static int peek(const volatile char *a)
{
    if (sigsetjmp(jb, 0) != 0) {
        guarded = 0;
        return -1;
    }
    guarded = 1;
    int v = (unsigned char)*a;
    guarded = 0;
    return v;
}

static int poke(volatile char *a, char v)
{
    if (sigsetjmp(jb, 0) != 0) {
        guarded = 0;
        return -1;
    }
    guarded = 1;
    *a = v;
    guarded = 0;
    return 0;
}

/* Hash of a page (or fault), with faults counted. */
static uint64_t page_hash(const char *a, size_t n, int *faults)
{
    if (sigsetjmp(jb, 0) != 0) {
        guarded = 0;
        (*faults)++;
        return 0xfa000000ULL + (uint64_t)fault_sig * 256 + (uint64_t)fault_code;
    }
    guarded = 1;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t w;
        memcpy(&w, a + i, n - i >= 8 ? 8 : n - i);
        h = (h ^ w) * 1099511628211ULL;
    }
    guarded = 0;
    return h;
}

static size_t npages(const struct slot *s) { return (s->len + PG - 1) / PG; }

static uint64_t slot_hash(const struct slot *s, int *faults)
{
    uint64_t h = 7;
    if (s->kind == K_HEAP)
        return page_hash(s->p, s->len, faults);
    for (size_t i = 0; i < npages(s); i++)
        if (s->mapped[i])
            h = h * 31 + page_hash(s->p + i * PG, PG, faults);
    return h;
}

static void result(int rc)
{
    if (rc == 0)
        printf(" -> 0\n");
    else
        printf(" -> -1 errno %d\n", errno);
}

static struct slot *pick(int kinds)
{
    int start = (int)rnd(NSLOT);
    for (int i = 0; i < NSLOT; i++) {
        struct slot *s = &slots[(start + i) % NSLOT];
        if ((1 << s->kind) & kinds)
            return s;
    }
    return NULL;
}

/* A random range of whole pages inside one run of mapped pages: [*a, *b). */
static int mapped_range(const struct slot *s, size_t *a, size_t *b)
{
    size_t n = npages(s), at = rnd(n);
    for (size_t k = 0; k < n && !s->mapped[at]; k++)
        at = (at + 1) % n;
    if (!s->mapped[at])
        return 0;
    size_t lo = at, hi = at + 1;
    while (lo > 0 && s->mapped[lo - 1])
        lo--;
    while (hi < n && s->mapped[hi])
        hi++;
    if (rnd(4) == 0) {
        *a = lo;
        *b = hi;
    } else {
        *a = lo + rnd(hi - lo);
        *b = *a + 1 + rnd(hi - *a);
    }
    return 1;
}

/* Page-aligned heap blocks: whole pages inside, after the first page (where
 * free writes its links) and before the last. The same pages relative to the
 * block in both runs, whichever allocator served it. */
static int inner(const struct slot *s, char **a, char **e)
{
    if (!s->aligned || s->len < 3 * PG)
        return 0;
    size_t n = s->len / PG - 2, x = rnd(n), y = x + 1 + rnd(n - x);
    *a = s->p + (1 + x) * PG;
    *e = s->p + (1 + y) * PG;
    return 1;
}

static void fill(char *p, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i += 8) {
        uint64_t w = seed ^ (i * 0x9e3779b97f4a7c15ULL);
        memcpy(p + i, &w, n - i >= 8 ? 8 : n - i);
    }
}

static void op_map_file(int n)
{
    struct slot *s = pick(1 << K_NONE);
    if (s == NULL)
        return;
    int f = (int)rnd(NFILES), rdwr = rnd(4) == 0, shared = !rdwr && rnd(5) < 2;
    size_t fpages = (size_t)(file_size[f] + (off_t)PG - 1) / PG;
    off_t off = (off_t)(rnd(8) == 0 ? rnd(fpages + 2) : rnd(4) == 0 ? rnd(fpages) : 0) * (off_t)PG;
    size_t len = (1 + rnd(rnd(3) == 0 ? 3000 : 2600)) * PG;
    if (rnd(6) == 0)
        len -= rnd(PG); /* a length that is not whole pages */
    int flags = (shared ? MAP_SHARED : MAP_PRIVATE) | (rnd(3) == 0 ? MAP_POPULATE : 0);
    int fd = open(file_path[f], rdwr ? O_RDWR : O_RDONLY);
    printf("%d s%d map_file f%d off %ld len %zu %s%s%s", n, (int)(s - slots), f, (long)off, len,
           shared ? "shared" : "private", rdwr ? " rdwr" : "",
           flags & MAP_POPULATE ? " populate" : "");
    char *p = mmap(NULL, len, PROT_READ, flags, fd, off);
    close(fd);
    if (p == MAP_FAILED) {
        printf(" -> failed errno %d\n", errno);
        return;
    }
    printf(" -> ok\n");
    *s = (struct slot){.kind = K_FILE, .p = p, .len = (len + PG - 1) & ~(PG - 1), .file = f,
                       .off = off};
    memset(s->mapped, 1, npages(s));
}

static void op_map_anon(int n)
{
    struct slot *s = pick(1 << K_NONE);
    if (s == NULL)
        return;
    size_t len = (1 + rnd(2048)) * PG;
    printf("%d s%d map_anon len %zu", n, (int)(s - slots), len);
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        printf(" -> failed errno %d\n", errno);
        return;
    }
    printf(" -> ok\n");
    *s = (struct slot){.kind = K_ANON, .p = p, .len = len};
    memset(s->mapped, 1, npages(s));
}

static size_t heap_size(void)
{
    switch (rnd(3)) {
    case 0: return 1 + rnd(64 << 10);
    case 1: return (64 << 10) + rnd(1 << 20);
    default: return (1 << 20) + rnd(12 << 20);
    }
}

static void op_heap_alloc(int n)
{
    struct slot *s = pick(1 << K_NONE);
    if (s == NULL)
        return;
    size_t size = heap_size();
    int how = (int)rnd(5);
    char *p = NULL;
    const char *names[] = {"malloc", "calloc", "aligned_alloc", "posix_memalign", "memalign"};
    errno = 0;
    switch (how) {
    case 0: p = malloc(size); break;
    case 1: p = calloc(1 + rnd(4), size); break;
    case 2: p = aligned_alloc(4096, (size + 4095) & ~(size_t)4095); break;
    case 3: {
        void *q = NULL;
        int rc = posix_memalign(&q, (size_t)1 << (3 + rnd(19)), size);
        p = rc == 0 ? q : NULL;
        break;
    }
    default: p = memalign((size_t)1 << (4 + rnd(18)), size); break;
    }
    printf("%d s%d %s %zu", n, (int)(s - slots), names[how], size);
    if (p == NULL) {
        printf(" -> NULL errno %d\n", errno);
        return;
    }
    size_t zeros = 0;
    if (how == 1)
        for (size_t i = 0; i < size; i++)
            zeros += p[i] == 0;
    printf(" -> ok%s\n", how == 1 ? (zeros == size ? " zeroed" : " NOT-ZEROED") : "");
    fill(p, size, (uint64_t)n);
    *s = (struct slot){.kind = K_HEAP, .p = p, .len = size, .aligned = how == 2};
}

static void restore_heap(struct slot *s)
{
    if (!s->inner_prot)
        return;
    if (s->len >= 3 * PG)
        mprotect(s->p + PG, (s->len / PG - 2) * PG, PROT_READ | PROT_WRITE);
    s->inner_prot = 0;
}

static void op_heap_realloc(int n)
{
    struct slot *s = pick(1 << K_HEAP);
    if (s == NULL)
        return;
    restore_heap(s);
    size_t size = heap_size(), keep = size < s->len ? size : s->len;
    int faults = 0;
    uint64_t before = page_hash(s->p, keep, &faults);
    printf("%d s%d realloc %zu -> %zu", n, (int)(s - slots), s->len, size);
    char *p = realloc(s->p, size);
    if (p == NULL) {
        printf(" -> NULL errno %d\n", errno);
        return;
    }
    printf(" -> ok kept %d\n", page_hash(p, keep, &faults) == before);
    if (size > keep)
        fill(p + keep, size - keep, (uint64_t)n);
    s->p = p;
    s->len = size;
    s->aligned = 0; /* realloc keeps no alignment */
}

static void op_heap_free(int n)
{
    struct slot *s = pick(1 << K_HEAP);
    if (s == NULL)
        return;
    restore_heap(s);
    int faults = 0;
    printf("%d s%d free %zu hash %016llx faults %d\n", n, (int)(s - slots), s->len,
           (unsigned long long)slot_hash(s, &faults), faults);
    free(s->p);
    s->kind = K_NONE;
}

static void op_unmap(int n)
{
    struct slot *s = pick(1 << K_FILE | 1 << K_ANON);
    size_t a, b;
    if (s == NULL || !mapped_range(s, &a, &b))
        return;
    printf("%d s%d munmap [%zu, %zu) of %zu", n, (int)(s - slots), a, b, npages(s));
    int rc = munmap(s->p + a * PG, (b - a) * PG);
    if (rc != 0) {
        result(rc);
        return;
    }
    memset(s->mapped + a, 0, b - a);
    /* Nothing can have been placed there yet: the hole must fault. */
    int v = peek(s->p + a * PG);
    printf(" -> 0 probe %d sig %d code %d\n", v, v < 0 ? fault_sig : 0, v < 0 ? fault_code : 0);
    size_t left = 0;
    for (size_t i = 0; i < npages(s); i++)
        left += s->mapped[i];
    if (left == 0)
        s->kind = K_NONE;
}

static const int prots[] = {PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE, PROT_WRITE,
                            PROT_READ | PROT_EXEC};

static void op_protect(int n)
{
    struct slot *s = pick(1 << K_FILE | 1 << K_ANON | 1 << K_HEAP);
    if (s == NULL)
        return;
    int prot = prots[rnd(sizeof prots / sizeof prots[0])];
    if (s->kind == K_HEAP) {
        char *a, *e;
        if (!inner(s, &a, &e))
            return;
        printf("%d s%d mprotect heap +%zu %zu prot %d", n, (int)(s - slots), (size_t)(a - s->p), (size_t)(e - a), prot);
        result(mprotect(a, (size_t)(e - a), prot));
        s->inner_prot = 1;
        return;
    }
    size_t a, b;
    if (!mapped_range(s, &a, &b))
        return;
    printf("%d s%d mprotect [%zu, %zu) prot %d", n, (int)(s - slots), a, b, prot);
    result(mprotect(s->p + a * PG, (b - a) * PG, prot));
}

static void op_advise(int n)
{
    static const int advice[] = {MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED,
                                 MADV_DONTNEED, MADV_DONTFORK, MADV_DOFORK, MADV_DONTDUMP,
                                 MADV_DODUMP, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_COLD,
                                 MADV_PAGEOUT, MADV_FREE, MADV_REMOVE, MADV_WIPEONFORK,
                                 MADV_KEEPONFORK, MADV_MERGEABLE, MADV_UNMERGEABLE, 12345};
    struct slot *s = pick(1 << K_FILE | 1 << K_ANON | 1 << K_HEAP);
    if (s == NULL)
        return;
    int adv = advice[rnd(sizeof advice / sizeof advice[0])];
    if (adv == MADV_DONTNEED && s->kind == K_FILE && s->written)
        return; /* documented: the copy keeps what the program wrote */
    if (adv == MADV_FREE && s->kind != K_FILE)
        return; /* the kernel may or may not drop the pages: not comparable */
    int posix = rnd(8) == 0 && adv <= MADV_WILLNEED;
    char *a, *e;
    if (s->kind == K_HEAP) {
        if (!inner(s, &a, &e) || adv == MADV_DONTFORK || adv == MADV_WIPEONFORK)
            return;
        printf("%d s%d %s heap +%zu %zu advice %d", n, (int)(s - slots), posix ? "posix_madvise" : "madvise",
               (size_t)(a - s->p), (size_t)(e - a), adv);
    } else {
        size_t pa, pb;
        if (!mapped_range(s, &pa, &pb))
            return;
        a = s->p + pa * PG;
        e = s->p + pb * PG;
        printf("%d s%d %s [%zu, %zu) advice %d", n, (int)(s - slots), posix ? "posix_madvise" : "madvise", pa, pb, adv);
    }
    if (posix) {
        int saved = errno = 4242;
        int rc = posix_madvise(a, (size_t)(e - a), adv);
        printf(" -> %d errno kept %d\n", rc, errno == saved);
        return;
    }
    result(madvise(a, (size_t)(e - a), adv));
}

static void op_mremap(int n)
{
    struct slot *s = pick(1 << K_FILE | 1 << K_ANON);
    if (s == NULL)
        return;
    size_t np = npages(s), mapped = 0;
    for (size_t i = 0; i < np; i++)
        mapped += s->mapped[i];
    if (mapped != np)
        return; /* holes: the kernel may have put other mappings there */
    if (s->kind == K_FILE && s->off + (off_t)(np * PG) > ((file_size[s->file] + 4095) & ~4095L))
        return; /* documented: a copy that reaches past the end of its file */
    size_t to;
    if (rnd(2) == 0) {
        to = 1 + rnd(np);
    } else {
        to = np + 1 + rnd(np);
        if (s->kind == K_FILE) { /* documented: growing past the end of file */
            off_t left = file_size[s->file] - s->off;
            size_t in_file = left > 0 ? ((size_t)left + PG - 1) / PG : 0;
            if (to > in_file)
                to = in_file;
        }
    }
    if (to > MAXPAGES || to == 0)
        return;
    int fixed = rnd(4) == 0;
    printf("%d s%d mremap %zu -> %zu%s", n, (int)(s - slots), np, to, fixed ? " fixed" : "");
    char *dest = NULL, *p;
    if (fixed) {
        dest = mmap(NULL, to * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        p = mremap(s->p, np * PG, to * PG, MREMAP_MAYMOVE | MREMAP_FIXED, dest);
    } else {
        p = mremap(s->p, np * PG, to * PG, MREMAP_MAYMOVE);
    }
    if (p == MAP_FAILED) {
        printf(" -> failed errno %d\n", errno);
        if (dest != NULL)
            munmap(dest, to * PG);
        return;
    }
    printf(" -> ok%s\n", fixed && p != dest ? " NOT-AT-DEST" : "");
    s->p = p;
    s->len = to * PG;
    memset(s->mapped, 1, to);
}

static int random_byte(const struct slot *s, size_t *at)
{
    if (s->kind == K_HEAP) {
        *at = rnd(s->len);
        return 1;
    }
    size_t a, b;
    if (!mapped_range(s, &a, &b))
        return 0;
    *at = a * PG + rnd((b - a) * PG);
    return 1;
}

static void op_read(int n)
{
    struct slot *s = pick(1 << K_FILE | 1 << K_ANON | 1 << K_HEAP);
    if (s == NULL)
        return;
    printf("%d s%d read", n, (int)(s - slots));
    for (int k = 0; k < 8; k++) {
        size_t at;
        if (!random_byte(s, &at))
            break;
        int v = peek(s->p + at);
        if (v < 0)
            printf(" @%zu:sig%d/%d", at, fault_sig, fault_code);
        else
            printf(" @%zu:%d", at, v);
    }
    printf("\n");
}

static void op_write(int n)
{
    struct slot *s = pick(1 << K_FILE | 1 << K_ANON | 1 << K_HEAP);
    size_t at;
    if (s == NULL || !random_byte(s, &at))
        return;
    char v = (char)rnd(256);
    int rc = poke(s->p + at, v);
    if (rc == 0 && s->kind == K_FILE)
        s->written = 1;
    printf("%d s%d write @%zu %d -> %s\n", n, (int)(s - slots), at, (unsigned char)v,
           rc == 0 ? "ok" : (fault_sig == SIGSEGV ? "SIGSEGV" : "SIGBUS"));
    if (rc != 0)
        printf("%d s%d fault code %d\n", n, (int)(s - slots), fault_code);
}

static void op_hash(int n)
{
    struct slot *s = pick(1 << K_FILE | 1 << K_ANON | 1 << K_HEAP);
    if (s == NULL)
        return;
    int faults = 0;
    uint64_t h = slot_hash(s, &faults);
    printf("%d s%d hash %016llx faults %d\n", n, (int)(s - slots), (unsigned long long)h, faults);
}

static uint64_t all_hash(int *faults)
{
    uint64_t h = 0;
    for (int i = 0; i < NSLOT; i++)
        if (slots[i].kind != K_NONE)
            h = h * 1000003 + slot_hash(&slots[i], faults);
    return h;
}

static void op_fork(int n)
{
    int fds[2];
    if (pipe(fds) != 0)
        return;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        int faults = 0;
        uint64_t h[2] = {all_hash(&faults), 0};
        for (int i = 0; i < NSLOT; i++) { /* the parent must not see these */
            struct slot *s = &slots[i];
            size_t at;
            if (s->kind != K_NONE && random_byte(s, &at))
                poke(s->p + at, (char)0x5a);
            if (s->kind == K_HEAP) {
                char *q = realloc(s->p, s->len + (3 << 20)); /* the allocator works here */
                h[1] += q != NULL;
                if (q != NULL)
                    s->p = q;
            }
        }
        h[1] = h[1] * 1000 + (uint64_t)faults;
        if (write(fds[1], h, sizeof h) != (ssize_t)sizeof h)
            _exit(3);
        _exit(0);
    }
    close(fds[1]);
    uint64_t h[2] = {0, 0};
    ssize_t got = read(fds[0], h, sizeof h);
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    int faults = 0;
    uint64_t mine = all_hash(&faults);
    printf("%d fork child %016llx %llu read %zd status %d parent %016llx faults %d\n", n,
           (unsigned long long)h[0], (unsigned long long)h[1], got, status,
           (unsigned long long)mine, faults);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: mmfuzz SEED NOPS DIR\n");
        return 2;
    }
    rng = strtoull(argv[1], NULL, 0);
    int nops = atoi(argv[2]);
    for (int f = 0; f < NFILES; f++) {
        struct stat st;
        snprintf(file_path[f], sizeof file_path[f], "%s/f%d", argv[3], f);
        if (stat(file_path[f], &st) != 0) {
            perror(file_path[f]);
            return 2;
        }
        file_size[f] = st.st_size;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    if (getenv("MMFUZZ_LINEBUF") != NULL)
        setvbuf(stdout, NULL, _IOLBF, 0); /* to read the output along with stderr */
    else
        setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    for (int n = 0; n < nops; n++) {
        size_t r = rnd(1000);
        if (r < 60) op_map_file(n);
        else if (r < 100) op_map_anon(n);
        else if (r < 150) op_heap_alloc(n);
        else if (r < 180) op_heap_realloc(n);
        else if (r < 220) op_heap_free(n);
        else if (r < 320) op_unmap(n);
        else if (r < 420) op_protect(n);
        else if (r < 540) op_advise(n);
        else if (r < 580) op_mremap(n);
        else if (r < 760) op_read(n);
        else if (r < 880) op_write(n);
        else if (r < 997) op_hash(n);
        else op_fork(n);
    }
    int faults = 0;
    printf("end %016llx faults %d\n", (unsigned long long)all_hash(&faults), faults);
    return 0;
}
