/* Private to the registry's four files (registry.c: the region table;
 * demote.c: huge pages into 4 KiB pages; rangeops.c: munmap, mprotect,
 * madvise and MAP_FIXED on registered memory; mremap.c: moving and growing
 * it). Nothing here is seen outside them: wrapper.h holds what the rest of
 * the library calls. Every function here expects rg_lock held. */
#ifndef HUGEPAGE_WRAPPER_REGISTRY_H
#define HUGEPAGE_WRAPPER_REGISTRY_H

#include "wrapper.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

/* Per 4 KiB page: the protection (low bits), whether the program holds it,
 * and the flags madvise sets on a mapping (the kernel splits a mapping where
 * they differ, and mremap refuses a range over more than one). */
enum {
    ST_LIVE = 0x10, ST_DONTFORK = 0x20, ST_DONTDUMP = 0x40, ST_SEQ = 0x80, ST_RAND = 0x100,
    ST_HUGE = 0x200, ST_NOHUGE = 0x400, ST_MERGE = 0x800,
};
#define ST_PROT 0x07
typedef uint16_t st_t;

struct region {
    int kind;               /* 0: free slot */
    char *base;
    size_t len;             /* whole pages */
    size_t page;
    st_t *st;               /* per 4 KiB page: ST_* */
    unsigned char *wrapped; /* per page: still a huge page */
    size_t meta_len;
    size_t nlive;           /* 4 KiB pages with ST_LIVE */
    struct hpw_file file;   /* HPW_REGION_FILE: where the bytes came from */
};

/* registry.c: the table, and finding memory in it */
extern struct region rg_regions[HPW_MAX_REGIONS];
extern int rg_high;          /* slots [0, rg_high) may be in use */
extern pthread_mutex_t rg_lock;
extern atomic_int rg_count;  /* regions in use */
int rg_bit(const struct region *r, size_t small);
void rg_clear_bits(struct region *r, size_t from, size_t to);
void rg_drop(struct region *r);
int rg_make_region(struct region *out, int kind, char *base, size_t len, size_t page,
                   size_t visible, int prot, int wrapped, const struct hpw_file *file);
int rg_insert(const struct region *r);
struct region *rg_region_at(const char *x);
char *rg_next_held(char *x, char *end);
int rg_overlaps(const char *a, const char *e);
int rg_overlap(const struct region *r, const char *a, const char *e, size_t *s, size_t *t);
char *rg_run_end(char *cur, char *end, struct region **rp);
void rg_mark(struct region *r, const char *a, const char *e, int prot, int set, int clear);

/* demote.c */
char *rg_copy_out(char *addr, size_t len, int prot, int dontfork);
int rg_move_in(char *tmp, char *addr, size_t len);
int rg_demote(struct region *r, size_t p);
int rg_cut_at(const char *x);
int rg_demote_all(const char *a, const char *e);

/* rangeops.c */
void rg_forget(const char *a, const char *e);
void rg_forget_dontfork(void);

#endif
