/* Dropping the model file from the page cache after a buffered load.
 *
 * When the agent has llama.cpp read the weights through the page cache
 * (--load-mode none, chosen because the cache already held most of the
 * file), the server ends up holding them twice: in its heap buffers (served
 * from huge pages) and in the page cache. HUGEPAGE_WRAPPER_DROP_CACHE names
 * the model file; when the program closes a stream on that file (llama.cpp's
 * loader reads it with fread and closes it with fclose), the pages it read
 * are dropped (POSIX_FADV_DONTNEED): the whole file once the stream has read
 * past half of it (the load), else only what it read (the metadata pass).
 * Dropping changes nothing the program observes. */
#include "wrapper.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>

static dev_t target_dev;
static ino_t target_ino;
static int target_set;

void hpw_dropcache_init(void)
{
    const char *path = secure_getenv(HPW_ENV_DROP_CACHE);
    struct stat st;
    if (path == NULL || *path == '\0')
        return;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        hpw_log(HPW_LOG_DEBUG, "HUGEPAGE_WRAPPER_DROP_CACHE=%s: not a regular file; nothing "
                "will be dropped", path);
        return;
    }
    target_dev = st.st_dev;
    target_ino = st.st_ino;
    target_set = 1;
}

int hpw_dropcache_wanted(void)
{
    return target_set;
}

void hpw_dropcache_at_close(int fd, off_t pos)
{
    struct stat st;
    int saved = errno;
    if (!target_set || fd < 0 || fstat(fd, &st) != 0 || st.st_dev != target_dev ||
        st.st_ino != target_ino) {
        errno = saved;
        return;
    }
    if (pos >= st.st_size / 2) {
        if (posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0)
            hpw_log(HPW_LOG_INFO, "the load read the model file (%.1f MiB): dropped it from "
                    "the page cache, so that it is not held twice",
                    (double)st.st_size / (1 << 20));
    } else if (pos > 0) {
        (void)posix_fadvise(fd, 0, pos, POSIX_FADV_DONTNEED);
    }
    errno = saved;
}
