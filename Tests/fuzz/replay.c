/* replay.c: runs a fuzz target's LLVMFuzzerTestOneInput over files, without libFuzzer, so the
 * seed corpus and the regression inputs run as plain tests (`make fuzz-replay`, part of
 * `make check`) with any compiler, under any sanitizer or valgrind.
 *
 *   replay_<target> DIR_OR_FILE...
 *
 * Directories are read one level deep, in name order, skipping names that start with '.' or
 * are README*. A missing directory is an error (a typo would otherwise test nothing). If an
 * input fails (a property aborts, a sanitizer reports, a signal), the file's name is printed
 * on stderr. Exit status: 0 if every input ran.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* asprintf */
#endif
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *current = "(none)";

static void say_current(void) {
    static const char a[] = "replay: failed on input ";
    (void)!write(2, a, sizeof a - 1);
    (void)!write(2, current, strlen(current));
    (void)!write(2, "\n", 1);
}

static void on_signal(int sig) {
    say_current();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Provided by the ASan/UBSan runtime when one is linked in: called before it exits. */
extern void __sanitizer_set_death_callback(void (*cb)(void)) __attribute__((weak));

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fprintf(stderr, "replay: out of memory\n");
            exit(2);
        }
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        buf = realloc(buf, cap *= 2);
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        fprintf(stderr, "replay: %s: read error\n", path);
        free(buf);
        return -1;
    }
    /* Exactly n bytes on the heap, as libFuzzer hands them over, so ASan sees overreads. */
    uint8_t *input = malloc(n ? n : 1);
    if (!input) exit(2);
    memcpy(input, buf, n);
    free(buf);
    current = path;
    LLVMFuzzerTestOneInput(input, n);
    current = "(none)";
    free(input);
    return 0;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs every input under `path`; returns the count, or -1 on an error. */
static long run_path(const char *path) {
    struct stat st;
    if (stat(path, &st) < 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) return run_file(path) < 0 ? -1 : 1;
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || strncmp(e->d_name, "README", 6) == 0) continue;
        if (n == cap) {
            names = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof *names);
            if (!names) exit(2);
        }
        if (asprintf(&names[n++], "%s/%s", path, e->d_name) < 0) exit(2);
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, by_name);
    long count = 0;
    for (size_t i = 0; i < n; i++) {
        if (count >= 0) {
            if (stat(names[i], &st) == 0 && S_ISDIR(st.st_mode)) {
                /* one level deep only */
            } else if (run_file(names[i]) < 0) {
                count = -1;
            } else {
                count++;
            }
        }
        free(names[i]);
    }
    free(names);
    return count;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR_OR_FILE...\n", argv[0]);
        return 2;
    }
    if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(say_current);
    int sigs[] = {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) signal(sigs[i], on_signal);
    long total = 0;
    for (int i = 1; i < argc; i++) {
        long n = run_path(argv[i]);
        if (n < 0) return 1;
        total += n;
    }
    const char *name = strrchr(argv[0], '/');
    printf("%s: %ld inputs ok\n", name ? name + 1 : argv[0], total);
    return 0;
}
