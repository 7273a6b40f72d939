/* How many pages of one size the kernel's huge page pool can still give:
 * free minus reserved, plus what overcommit may still add as surplus; and the
 * one reader of the small kernel files the library consults. */
#include "wrapper.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

ssize_t hpw_read_text(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    return n;
}

long hpw_pool_counter(int node, size_t page_size, const char *name)
{
    char path[128], buf[32];
    if (node < 0)
        snprintf(path, sizeof path, "/sys/kernel/mm/hugepages/hugepages-%zukB/%s",
                 page_size >> 10, name);
    else
        snprintf(path, sizeof path,
                 "/sys/devices/system/node/node%d/hugepages/hugepages-%zukB/%s", node,
                 page_size >> 10, name);
    if (hpw_read_text(path, buf, sizeof buf) <= 0)
        return -1;
    return strtol(buf, NULL, 10);
}

static long read_counter(size_t page_size, const char *name)
{
    return hpw_pool_counter(-1, page_size, name);
}

long hpw_pool_available(size_t page_size)
{
    long free_pages = read_counter(page_size, "free_hugepages");
    long resv = read_counter(page_size, "resv_hugepages");
    if (free_pages < 0 || resv < 0)
        return -1; /* this page size is not supported by the kernel */
    long avail = free_pages - resv;
    long overcommit = read_counter(page_size, "nr_overcommit_hugepages");
    long surplus = read_counter(page_size, "surplus_hugepages");
    if (overcommit > 0 && surplus >= 0 && overcommit > surplus)
        avail += overcommit - surplus;
    return avail < 0 ? 0 : avail;
}
