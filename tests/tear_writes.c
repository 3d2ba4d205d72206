/* LD_PRELOAD shim for tests/test_store_tears.py: the short write Linux leaves when SIGKILL lands in
 * the middle of a pwrite (generic_perform_write checks for a fatal signal before each page it copies).
 *
 * TEAR_LOG=path    append "offset size" for every pwrite that crosses a page boundary
 * TEAR_AT=k        on the k-th such pwrite (1-based), write only up to the first page boundary, then SIGKILL
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);

static long crossing = 0;

static ssize_t maybe_tear(pwrite_fn real, int fd, const void *buf, size_t n, off_t off) {
    off_t boundary = (off / 4096 + 1) * 4096;
    if (n > 0 && off + (off_t)n > boundary) {
        crossing++;
        const char *log = getenv("TEAR_LOG");
        if (log) {
            FILE *f = fopen(log, "a");
            if (f) {
                fprintf(f, "%ld %zu\n", (long)off, n);
                fclose(f);
            }
        }
        const char *at = getenv("TEAR_AT");
        if (at && atol(at) == crossing) {
            real(fd, buf, (size_t)(boundary - off), off);
            kill(getpid(), SIGKILL);
        }
    }
    return real(fd, buf, n, off);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    static pwrite_fn real;
    if (!real) real = (pwrite_fn)dlsym(RTLD_NEXT, "pwrite");
    return maybe_tear(real, fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    static pwrite_fn real;
    if (!real) real = (pwrite_fn)dlsym(RTLD_NEXT, "pwrite64");
    return maybe_tear(real, fd, buf, n, off);
}
