/* forward-bench: what rndz-cli forward and expose cost per byte: rndz_bridge (splice(2), one
 * event thread) against a plain TCP copy loop (read/write, a thread per direction), side by
 * side in the same run on loopback, with the same load.
 *
 *   make forward-bench                # build/forward-bench, then runs it with the defaults
 *   build/forward-bench [--mbytes 2048] [--conns 4] [--rounds 3]
 *
 * The middle (the bridge or the copy loop) runs in a child process, so its CPU time is its
 * own (/proc/PID/stat); the parent sends MBYTES in all over CONNS connections through it to a
 * sink and times the delivery. The table shows medians of the rounds, taken in turns. */
#include <rndz.h>

#include "benchutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>

static int listener(uint16_t *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 64)) exit(2);
    socklen_t al = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &al);
    *port = ntohs(a.sin_port);
    return fd;
}

static int dial(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) exit(2);
    return fd;
}

/* --- the baseline: a plain copy loop, a thread per direction ---------------------------- */

typedef struct copy_job {
    int from, to;
} copy_job;

static void *copy_main(void *arg) {
    copy_job *j = arg;
    static __thread char buf[65536];
    for (;;) {
        ssize_t n = read(j->from, buf, sizeof buf);
        if (n <= 0) break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(j->to, buf + off, (size_t)(n - off));
            if (w <= 0) return NULL;
            off += w;
        }
    }
    shutdown(j->to, SHUT_WR);
    return NULL;
}

/* Child: accept `conns` connections on lfd, join each with a new connection to the sink,
 * through the bridge or the copy loop; then wait to be killed. */
static void middle(bool bridge, int lfd, uint16_t sink, int conns) {
    rndz_bridge *b = NULL;
    if (bridge && rndz_bridge_create(&b)) _exit(2);
    for (int i = 0; i < conns; i++) {
        int a = accept(lfd, NULL, NULL);
        int c = dial(sink);
        if (bridge) {
            if (rndz_bridge_add(b, a, c, 0)) _exit(2);
            continue;
        }
        copy_job *j = malloc(2 * sizeof *j);
        j[0] = (copy_job){a, c};
        j[1] = (copy_job){c, a};
        pthread_t t;
        pthread_create(&t, NULL, copy_main, &j[0]);
        pthread_create(&t, NULL, copy_main, &j[1]);
    }
    for (;;) pause();
}

typedef struct sender {
    int fd;
    size_t n;
} sender;

static void *send_main(void *arg) {
    sender *s = arg;
    static __thread char buf[65536];
    memset(buf, 0x5a, sizeof buf);
    size_t sent = 0;
    while (sent < s->n) {
        size_t k = s->n - sent < sizeof buf ? s->n - sent : sizeof buf;
        ssize_t w = write(s->fd, buf, k);
        if (w <= 0) break;
        sent += (size_t)w;
    }
    shutdown(s->fd, SHUT_WR);
    return NULL;
}

static void *sink_main(void *arg) {
    int fd = *(int *)arg;
    static __thread char buf[65536];
    while (read(fd, buf, sizeof buf) > 0) {
    }
    return NULL;
}

typedef struct result {
    double mb_s, cpu_ns_per_kb;
} result;

static result measure(bool bridge, size_t total, int conns) {
    uint16_t mport, sport;
    int mfd = listener(&mport), sfd = listener(&sport);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(sfd);
        middle(bridge, mfd, sport, conns);
    }
    close(mfd);
    int cfd[64], kfd[64];
    pthread_t st[64], kt[64];
    sender s[64];
    for (int i = 0; i < conns; i++) {
        cfd[i] = dial(mport);
        kfd[i] = accept(sfd, NULL, NULL);
    }
    usleep(20000);
    double c0 = cpu_split(pid, NULL, NULL);
    uint64_t t0 = now_ns();
    for (int i = 0; i < conns; i++) {
        s[i] = (sender){cfd[i], total / (size_t)conns};
        pthread_create(&st[i], NULL, send_main, &s[i]);
        pthread_create(&kt[i], NULL, sink_main, &kfd[i]);
    }
    for (int i = 0; i < conns; i++) {
        pthread_join(st[i], NULL);
        pthread_join(kt[i], NULL);
    }
    uint64_t t1 = now_ns();
    double c1 = cpu_split(pid, NULL, NULL);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    for (int i = 0; i < conns; i++) close(cfd[i]), close(kfd[i]);
    close(sfd);
    double secs = (double)(t1 - t0) / 1e9;
    return (result){(double)total / secs / 1e6, (c1 - c0) * 1e9 / ((double)total / 1024)};
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    size_t mbytes = 2048;
    int conns = 4, rounds = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mbytes") && i + 1 < argc) mbytes = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--conns") && i + 1 < argc) conns = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: forward-bench [--mbytes N] [--conns N] [--rounds N]\n");
            return 2;
        }
    }
    if (conns < 1 || conns > 64 || rounds < 1 || rounds > 15 || mbytes < 1) {
        fprintf(stderr, "forward-bench: conns 1..64, rounds 1..15, mbytes >= 1\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    double rate[2][16], cpu[2][16];
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < 2; k++) {
            result x = measure(k == 1, mbytes << 20, conns);
            rate[k][r] = x.mb_s;
            cpu[k][r] = x.cpu_ns_per_kb;
        }
    printf("forward-bench: %zu MiB over %d connections through the middle, medians of %d turns, "
           "127.0.0.1\n", mbytes, conns, rounds);
    printf("%-22s %10s %16s %8s %10s\n", "middle", "MB/s", "CPU ns per KiB", "ratio", "CPU ratio");
    for (int k = 0; k < 2; k++) {
        qsort(rate[k], (size_t)rounds, sizeof(double), cmp);
        qsort(cpu[k], (size_t)rounds, sizeof(double), cmp);
    }
    double r0 = rate[0][rounds / 2], c0 = cpu[0][rounds / 2];
    printf("%-22s %10.0f %16.1f %8s %10s\n", "read/write copy loop", r0, c0, "1.00", "1.00");
    printf("%-22s %10.0f %16.1f %8.2f %10.2f\n", "rndz_bridge (splice)", rate[1][rounds / 2],
           cpu[1][rounds / 2], rate[1][rounds / 2] / r0, cpu[1][rounds / 2] / c0);
    return 0;
}
