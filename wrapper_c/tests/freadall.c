/* Reads a file through stdio as llama.cpp's buffered loader does (fopen,
 * fread in pieces, fclose) and prints what fclose returned and errno after
 * it, so that a run with the library can be compared with one without.
 * Usage: freadall FILE [BYTES]   (BYTES: read only that much, the metadata
 * pass; default: the whole file). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    FILE *f = fopen(argv[1], "rb");
    if (f == NULL) {
        perror("fopen");
        return 1;
    }
    long long want = argc > 2 ? atoll(argv[2]) : -1;
    static char buf[1 << 20];
    long long got = 0;
    unsigned long long sum = 0;
    for (;;) {
        size_t n = sizeof(buf);
        if (want >= 0 && (long long)n > want - got)
            n = (size_t)(want - got);
        if (n == 0)
            break;
        size_t r = fread(buf, 1, n, f);
        for (size_t i = 0; i < r; i += 4096)
            sum += (unsigned char)buf[i];
        got += (long long)r;
        if (r < n)
            break;
    }
    errno = 0;
    int rc = fclose(f);
    printf("read %lld sum %llu fclose %d errno %d\n", got, sum, rc, errno);
    /* a second fclose of a closed stream is undefined: not tested */
    FILE *none = fopen("/nonexistent-hugepage-wrapper-test", "rb");
    printf("fopen missing %s errno %d\n", none ? "opened" : "failed", errno);
    return 0;
}
