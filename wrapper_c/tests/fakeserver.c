/* A stand-in for llama-server in the systemd tests: maps the file given with
 * --model the way llama.cpp does (read-only, MAP_SHARED | MAP_POPULATE), records
 * its argv in /tmp/fakeserver.PID.argv (NUL-separated; the unit's private /tmp),
 * and waits for SIGTERM.
 * Fails (exit 1) when the mapping fails, as llama-server would. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/fakeserver.%ld.argv", (long)getpid());
    FILE *f = fopen(path, "w");
    if (f) {
        for (int i = 0; i < argc; i++)
            fwrite(argv[i], 1, strlen(argv[i]) + 1, f);
        fclose(f);
    }
    const char *model = NULL;
    unsigned stop_delay = 0; /* --stop-delay N: take N seconds to exit after SIGTERM */
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 || strcmp(argv[i], "-m") == 0)
            model = argv[i + 1];
        if (strcmp(argv[i], "--stop-delay") == 0)
            stop_delay = (unsigned)atoi(argv[i + 1]);
    }
    if (model == NULL) { fprintf(stderr, "fakeserver: no --model\n"); return 2; }
    int fd = open(model, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) { perror(model); return 1; }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (m == MAP_FAILED) {
        fprintf(stderr, "fakeserver: mmap %s failed: %s\n", model, strerror(errno));
        return 1;
    }
    close(fd);
    fprintf(stderr, "fakeserver: serving %s\n", model);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sig;
    sigwait(&set, &sig);
    sleep(stop_delay);
    munmap(m, (size_t)st.st_size);
    return 0;
}
