/* Internal interfaces of the huge-page preload library. Nothing here is exported:
 * the library is built with -fvisibility=hidden and a version script, so only
 * the interposed libc symbols in interpose.c are visible to the host program. */
#ifndef HUGEPAGE_WRAPPER_H
#define HUGEPAGE_WRAPPER_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/types.h>

#define HPW_SMALL_PAGE 4096UL
#define HPW_2M (2UL << 20)
#define HPW_1G (1UL << 30)

enum hpw_log_level { HPW_LOG_QUIET = 0, HPW_LOG_INFO = 1, HPW_LOG_DEBUG = 2 };
enum hpw_page_choice { HPW_PAGE_AUTO = 0, HPW_PAGE_2M, HPW_PAGE_1G };
enum hpw_numa_choice { HPW_NUMA_AUTO = 0, HPW_NUMA_INTERLEAVE, HPW_NUMA_OFF, HPW_NUMA_NODES };
#define HPW_MAX_NODES 1024 /* the kernel's largest MAX_NUMNODES */

/* The contracts with the agent (agent/hugepage_agent/consts.py defines them
 * too; tests/test_contracts.py holds the two equal): the library's file name,
 * the memfd names /proc/PID/smaps shows, the log prefix, the environment. */
#define HPW_LIBRARY_NAME "libhugepage-wrapper.so"
#define HPW_HEAP_MEMFD "hugepage-wrapper-heap"       /* large allocations */
#define HPW_FILE_MEMFD_PREFIX "hugepage-wrapper:"    /* a file copy: PREFIX + its path */
#define HPW_LOG_PREFIX "hugepage-wrapper"            /* each line: PREFIX[PID]: ... */
#define HPW_ENV_MIN_SIZE "HUGEPAGE_WRAPPER_MIN_SIZE"
#define HPW_ENV_ALLOC_MIN_SIZE "HUGEPAGE_WRAPPER_ALLOC_MIN_SIZE"
#define HPW_ENV_PAGE_SIZE "HUGEPAGE_WRAPPER_PAGE_SIZE"
#define HPW_ENV_STRICT "HUGEPAGE_WRAPPER_STRICT"
#define HPW_ENV_LOG "HUGEPAGE_WRAPPER_LOG"
#define HPW_ENV_THREADS "HUGEPAGE_WRAPPER_THREADS"
#define HPW_ENV_KEEP_CACHE "HUGEPAGE_WRAPPER_KEEP_CACHE"
#define HPW_ENV_DROP_CACHE "HUGEPAGE_WRAPPER_DROP_CACHE"
#define HPW_ENV_NUMA "HUGEPAGE_WRAPPER_NUMA"           /* auto, interleave, off, or nodes */
#define HPW_ENV_PREFAULT "HUGEPAGE_WRAPPER_PREFAULT"   /* 1: fault every mapping in at once */
/* The reason= token that ends every fallback line (hpw_log_fallback). */
#define HPW_REASON_POOL "pool-short"           /* the pool has too few free pages */
#define HPW_REASON_CGROUP "cgroup-limit"       /* a cgroup's hugetlb limit */
#define HPW_REASON_MEMFD "no-hugetlb-memfd"    /* memfd_create(MFD_HUGETLB) refused */
#define HPW_REASON_TABLE "too-many-mappings"   /* the library's own tables are full */
#define HPW_REASON_COPY "copy-failed"          /* reading the file into the copy failed */
#define HPW_REASON_SIZE "size-too-large"
#define HPW_REASON_NODE "node-short"           /* the NUMA node(s) it is bound to are short */
#define HPW_ALLOC_MIN_DEFAULT (8UL << 20)

struct hpw_config {
    size_t min_size;            /* smallest mapping taken over, bytes */
    size_t alloc_min;           /* smallest allocation served from huge pages; 0: none */
    enum hpw_page_choice page;  /* 2M, 1G or auto */
    int strict;                 /* fail with ENOMEM instead of falling back */
    enum hpw_log_level log;
    unsigned threads;           /* reader threads, 0 = automatic */
    int keep_cache;             /* leave what a copy read in the page cache */
    int prefault;               /* fault in every mapping at once, not only where needed */
    enum hpw_numa_choice numa;  /* where the pages go on a host with several nodes */
    unsigned long numa_nodes[HPW_MAX_NODES / (8 * sizeof(unsigned long))]; /* HPW_NUMA_NODES */
};

/* config.c: environment parsing (invalid values are reported once, default kept). */
extern struct hpw_config hpw_cfg;
void hpw_config_load(void);
int hpw_parse_size(const char *s, size_t *out);

/* log.c: one line per event on stderr, written with write(2); errno preserved. */
void hpw_log(enum hpw_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Every fallback line, in the one format the agent parses (journal.py):
 *   hugepage-wrapper[PID]: SUBJECT: WHY; WHAT NOW reason=REASON
 * SUBJECT: the file's path, or "allocation of N MiB"; WHAT NOW: the fallback
 * (the regular file mapping, libc's memory) or, in strict mode, the failure. */
enum hpw_fallback { HPW_FALLBACK_FILE, HPW_FALLBACK_ALLOC };
void hpw_log_fallback(enum hpw_fallback kind, const char *subject, const char *reason,
                      const char *why_fmt, ...) __attribute__((format(printf, 4, 5)));

/* real.c: the libc functions underneath, resolved once. */
void *hpw_real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int hpw_real_munmap(void *addr, size_t len);
int hpw_real_mprotect(void *addr, size_t len, int prot);
int hpw_real_madvise(void *addr, size_t len, int advice);
int hpw_real_posix_madvise(void *addr, size_t len, int advice);
void *hpw_real_mremap(void *old, size_t old_size, size_t new_size, int flags, void *new_addr);
void hpw_resolve_real(void);
/* The malloc family next in the lookup order (glibc's, or jemalloc's where a
 * program links it), resolved with the rest. */
struct hpw_alloc_fns {
    void *(*malloc)(size_t);
    void (*free)(void *);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    int (*posix_memalign)(void **, size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    void *(*memalign)(size_t, size_t);
    size_t (*usable_size)(void *);
};
extern struct hpw_alloc_fns hpw_next_alloc;
/* 1 when they can be called; 0 while they are being resolved (in this thread). */
int hpw_real_ready(void);

/* alloc_real.c: the allocator underneath (the next malloc in the lookup
 * order), with a static arena for what comes before it is resolved. */
void *hpw_real_malloc(size_t size);
void hpw_real_free(void *p);
void *hpw_real_calloc(size_t n, size_t size);
void *hpw_real_realloc(void *p, size_t size);
int hpw_real_posix_memalign(void **out, size_t align, size_t size);
void *hpw_real_aligned_alloc(size_t align, size_t size);
void *hpw_real_memalign(size_t align, size_t size);
size_t hpw_real_usable_size(void *p);
int hpw_is_boot(const void *p);

/* alloc.c: large allocations from huge pages, each its own private mapping of a
 * hugetlb memfd named HPW_HEAP_MEMFD. */
void hpw_alloc_init(void);
int hpw_alloc_wants(size_t size, size_t align);
void *hpw_alloc(size_t size);   /* NULL, errno ENOMEM: the pool is short */
int hpw_alloc_free(void *p);    /* 0: not ours */
size_t hpw_alloc_size(const void *p); /* 0: not ours */
void hpw_alloc_shrink(void *p, size_t size);
void hpw_alloc_report(void);

/* pool.c: what the kernel's huge page pool can still give, in pages; a small
 * file's text (/proc, /sys), NUL-terminated: its length, or -1. */
long hpw_pool_available(size_t page_size);
/* One counter of a pool (free_hugepages, ...): the whole machine's (node -1)
 * or one NUMA node's; -1 when it cannot be read. */
long hpw_pool_counter(int node, size_t page_size, const char *name);
ssize_t hpw_read_text(const char *path, char *buf, size_t size);

/* cgroup.c: how many more huge pages of a size this process's cgroups let it
 * fault in and reserve; -1 when no limit binds. `file` names the limit that
 * binds (its path). */
long hpw_cgroup_room(size_t page, char *file, size_t file_len);
/* Fault in [p, p+len) of a huge page mapping now (MADV_POPULATE_WRITE): -1
 * (errno EFAULT) where a page cannot be had, a cgroup's fault limit above all,
 * instead of a SIGBUS at the program's first touch. */
int hpw_populate(char *p, size_t len);

/* numa.c: the NUMA memory policy of the mappings served (HUGEPAGE_WRAPPER_NUMA).
 * hpw_numa_active: 1 when one is set (a host with several nodes), and every
 * mapping must then be faulted in before use. hpw_numa_place: set it on
 * [p, p+len), before anything touches it. hpw_numa_free: the free pages of
 * the node(s) a bound policy allows, -1 when none binds. hpw_numa_short: what
 * those nodes have, for a fallback line ("node 1: 12 of 300 2 MiB pages free").
 * hpw_parse_node_list: "0-2,5" into a mask of HPW_MAX_NODES bits. */
int hpw_numa_active(void);
const char *hpw_numa_policy(void);
int hpw_numa_place(char *p, size_t len);
long hpw_numa_free(size_t page);
void hpw_numa_short(size_t page, size_t pages, char *out, size_t size);
int hpw_parse_node_list(const char *s, unsigned long *mask);
/* Whether a new mapping is faulted in at once: a NUMA policy, a cgroup's
 * hugetlb limit that binds (the caller has read its room), or
 * HUGEPAGE_WRAPPER_PREFAULT=1. */
int hpw_prefault_wanted(int limit_binds);

/* copy.c: fill memory with file contents, in parallel; drops the page cache read.
 * `prefault`: fault each chunk in first (hpw_populate), where a page may be refused. */
int hpw_fill(int fd, int direct, int prefault, off_t offset, size_t bytes, char *dst,
             unsigned threads, const char **what);
unsigned hpw_default_threads(size_t bytes);

/* How much the library serves at once: its tables are static (no malloc in
 * an interposer). The registry holds every live allocation and, beside them,
 * the file copies (each one or two regions, and their moved parts). */
#define HPW_MAX_ALLOCS 4096      /* live large allocations (alloc.c) */
#define HPW_MAX_FILE_REGIONS 256 /* file copies' regions at once */
#define HPW_MAX_REGIONS (HPW_MAX_ALLOCS + HPW_MAX_FILE_REGIONS)

/* registry.c, demote.c, rangeops.c, mremap.c (private: registry.h): the memory served from huge pages (file copies and large
 * allocations), and what range operations on it do. */
enum { HPW_REGION_FILE = 1, HPW_REGION_ALLOC = 2 };
struct hpw_file {            /* where a file copy came from */
    const char *path;        /* to map the file itself when mremap grows the copy */
    dev_t dev;
    ino_t ino;
    off_t offset;            /* of the region's first byte */
    int flags;               /* the program's mmap flags */
    int maywrite;            /* PROT_WRITE may be added (a private mapping) */
    int noexec;              /* the file system is mounted noexec */
};
void hpw_registry_init(void);
int hpw_registry_add(int kind, char *base, size_t len, size_t page, size_t visible,
                     int prot, const struct hpw_file *file);
void hpw_registry_remove(int kind, const char *base);
void hpw_registry_shrink(const char *base, size_t len);
int hpw_registry_empty(void);
/* Apply an operation to [addr, addr+len): huge pages it cuts in two become
 * 4 KiB pages first; memory the registry does not hold goes to `outside`
 * (the real libc call). *handled is 0 when the registry holds none of it. */
enum hpw_op { HPW_OP_UNMAP, HPW_OP_PROTECT, HPW_OP_ADVISE };
int hpw_registry_apply(enum hpw_op op, char *addr, size_t len, int arg,
                       int (*outside)(void *, size_t, int), int *handled);
/* Before a MAP_FIXED mapping on [addr, addr+len): 0, or -1 (no memory). */
int hpw_registry_prepare_fixed(char *addr, size_t len);
void *hpw_registry_mremap(char *old, size_t old_size, size_t new_size, int flags,
                          char *new_addr, int *handled);

/* dropcache.c: drop the model file (HUGEPAGE_WRAPPER_DROP_CACHE) from the page
 * cache when a stream that read it is closed. */
void hpw_dropcache_init(void);
int hpw_dropcache_wanted(void);
void hpw_dropcache_at_close(int fd, off_t pos);
int hpw_real_fclose(FILE *fp);

/* takeover.c: decide whether to serve an mmap from huge pages and do it. */
int hpw_takeover_eligible(size_t length, int prot, int flags, int fd, off_t offset);
void *hpw_try_takeover(size_t length, int prot, int flags, int fd, off_t offset,
                       int *taken);

#endif
