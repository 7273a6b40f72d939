/* The copy engine: fills memory with a file's bytes, in parallel.
 *
 * - one read moves at most 0x7ffff000 bytes on Linux: every read is a loop;
 * - EINTR is retried, short reads continue, 0 before the expected end is an
 *   error (the file shrank under us), never silent zeros;
 * - an fd opened with O_DIRECT is read with aligned lengths into the (huge
 *   page aligned) destination;
 * - each thread reads one contiguous part of the range through a descriptor of
 *   its own (reopened from /proc/self/fd), so that each has its own readahead
 *   state: threads sharing one open file interleave and defeat readahead, which
 *   made cold loads (file not in the page cache) slower than one thread;
 * - the page cache of each chunk is dropped once copied (POSIX_FADV_DONTNEED),
 *   so the model is not held in RAM twice;
 * - the threads inherit the process's NUMA memory policy, and each faults in
 *   the pages it fills, so `numactl --interleave` (or a unit's NUMAPolicy=)
 *   places the pages as it would for the program itself. */
#include "wrapper.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (64UL << 20)
#define MAX_IO 0x7ffff000UL
#define MAX_THREADS 256 /* as HUGEPAGE_WRAPPER_THREADS and wrapper.threads allow */

struct job {
    int fd;
    int direct;
    int prefault;  /* fault each chunk in before reading into it (a cgroup limit binds) */
    off_t offset;
    size_t bytes;
    char *dst;
    size_t nchunks;
    atomic_int failed;
    int err;
    const char *what;
    pthread_mutex_t lock;
};

static void fail(struct job *j, int err, const char *what)
{
    pthread_mutex_lock(&j->lock);
    if (!atomic_load(&j->failed)) {
        j->err = err;
        j->what = what;
        atomic_store(&j->failed, 1);
    }
    pthread_mutex_unlock(&j->lock);
}

/* Read exactly `len` bytes at `off` (fewer only at end of file with O_DIRECT,
 * where the length was rounded up past the end). Returns bytes read or -1. */
static ssize_t read_full(int fd, char *dst, size_t len, off_t off, size_t must, int *err)
{
    size_t done = 0;
    while (done < len) {
        size_t want = len - done;
        if (want > MAX_IO)
            want = MAX_IO;
        ssize_t r = pread(fd, dst + done, want, off + (off_t)done);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            *err = errno;
            return -1;
        }
        if (r == 0)
            break;
        done += (size_t)r;
    }
    if (done < must) {
        *err = EIO; /* end of file before the expected end: the file shrank */
        return -1;
    }
    return (ssize_t)done;
}

struct part {
    struct job *job;
    size_t start, end; /* this thread's contiguous part of the range */
};

static int own_descriptor(const struct job *j)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", j->fd);
    int fd = open(path, O_RDONLY | O_CLOEXEC | (j->direct ? O_DIRECT : 0));
    if (fd < 0)
        return j->fd; /* no /proc: share the caller's descriptor */
    if (!j->direct)
        posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    return fd;
}

static void *worker(void *arg)
{
    struct part *p = arg;
    struct job *j = p->job;
    int fd = own_descriptor(j);
    for (size_t start = p->start; start < p->end && !atomic_load(&j->failed); start += CHUNK) {
        size_t len = p->end - start < CHUNK ? p->end - start : CHUNK;
        size_t must = len;
        if (j->direct) /* aligned length; the destination has room up to a huge page */
            len = (len + HPW_SMALL_PAGE - 1) & ~(HPW_SMALL_PAGE - 1);
        int err = 0;
        if (j->prefault && hpw_populate(j->dst + start, len) != 0) { /* no SIGBUS in the read */
            fail(j, errno, "faulting in huge pages");
            break;
        }
        if (read_full(fd, j->dst + start, len, j->offset + (off_t)start, must, &err) < 0) {
            fail(j, err, "read");
            break;
        }
        if (!j->direct && !hpw_cfg.keep_cache)
            posix_fadvise(fd, j->offset + (off_t)start, (off_t)must, POSIX_FADV_DONTNEED);
    }
    if (fd != j->fd)
        close(fd);
    return NULL;
}

unsigned hpw_default_threads(size_t bytes)
{
    cpu_set_t set;
    unsigned cpus = 1;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        cpus = (unsigned)CPU_COUNT(&set);
    if (cpus > 8)
        cpus = 8; /* past this, memory bandwidth, not cores, limits the copy */
    size_t chunks = (bytes + CHUNK - 1) / CHUNK;
    if (chunks < cpus)
        cpus = chunks == 0 ? 1 : (unsigned)chunks;
    return cpus == 0 ? 1 : cpus;
}

int hpw_fill(int fd, int direct, int prefault, off_t offset, size_t bytes, char *dst,
             unsigned threads, const char **what)
{
    struct job j = {
        .fd = fd, .direct = direct, .prefault = prefault, .offset = offset, .bytes = bytes, .dst = dst,
        .nchunks = (bytes + CHUNK - 1) / CHUNK, .err = 0, .what = NULL,
    };
    atomic_init(&j.failed, 0);
    pthread_mutex_init(&j.lock, NULL);
    if (threads == 0)
        threads = hpw_default_threads(bytes);
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    if (threads > j.nchunks)
        threads = j.nchunks == 0 ? 1 : (unsigned)j.nchunks;

    /* Contiguous parts, each a whole number of chunks (the last takes the rest). */
    struct part parts[MAX_THREADS];
    size_t per = (j.nchunks + threads - 1) / threads * CHUNK;
    for (unsigned t = 0; t < threads; t++) {
        size_t a = (size_t)t * per, b = a + per;
        parts[t] = (struct part){&j, a < bytes ? a : bytes, b < bytes ? b : bytes};
    }
    pthread_t tids[MAX_THREADS];
    unsigned started = 0;
    for (unsigned t = 1; t < threads; t++) {
        if (pthread_create(&tids[started], NULL, worker, &parts[t]) != 0) {
            worker(&parts[t]); /* no thread: this one reads that part too */
            continue;
        }
        started++;
    }
    worker(&parts[0]);
    for (unsigned t = 0; t < started; t++)
        pthread_join(tids[t], NULL);
    pthread_mutex_destroy(&j.lock);
    if (atomic_load(&j.failed)) {
        *what = j.what;
        errno = j.err;
        return -1;
    }
    return 0;
}
