/* A stand-in for llama-server in the systemd tests: maps the file given with
 * --model the way llama.cpp does (read-only, MAP_SHARED | MAP_POPULATE), records
 * its argv in /tmp/fakeserver.PID.argv (NUL-separated; the unit's private /tmp),
 * answers every HTTP request on 127.0.0.1:PORT (--port) with 200 as llama-server's
 * /health does once loaded, and waits for SIGTERM.
 * Fails (exit 1) when the mapping fails or the port cannot be bound, as
 * llama-server would, and with --fail-start (an argument it refuses). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static int listen_on(int port)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 16) != 0) {
        fprintf(stderr, "fakeserver: cannot listen on 127.0.0.1:%d: %s\n", port,
                strerror(errno));
        return -1;
    }
    return s;
}

static void answer(int s)
{
    int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return;
    char buf[4096];
    (void)!read(c, buf, sizeof buf);
    static const char reply[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                "Content-Length: 15\r\nConnection: close\r\n\r\n"
                                "{\"status\":\"ok\"}";
    (void)!write(c, reply, sizeof reply - 1);
    close(c);
}

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
    int port = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--fail-start") == 0) {
            fprintf(stderr, "fakeserver: error: invalid argument: --fail-start\n");
            return 1;
        }
        if (i + 1 >= argc)
            break;
        if (strcmp(argv[i], "--model") == 0 || strcmp(argv[i], "-m") == 0)
            model = argv[i + 1];
        if (strcmp(argv[i], "--stop-delay") == 0)
            stop_delay = (unsigned)atoi(argv[i + 1]);
        if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
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
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int http = port > 0 && port < 65536 ? listen_on(port) : -1;
    if (port > 0 && http < 0)
        return 1;
    fprintf(stderr, "fakeserver: serving %s\n", model);
    struct pollfd fds[2] = {{.fd = signalfd(-1, &set, SFD_CLOEXEC), .events = POLLIN},
                            {.fd = http, .events = POLLIN}};
    for (;;) {
        if (poll(fds, http >= 0 ? 2 : 1, -1) < 0 && errno != EINTR)
            break;
        if (fds[0].revents & POLLIN)
            break;
        if (http >= 0 && (fds[1].revents & POLLIN))
            answer(http);
    }
    if (http >= 0)
        close(http);
    sleep(stop_delay);
    munmap(m, (size_t)st.st_size);
    return 0;
}
