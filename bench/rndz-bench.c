/* rndz-bench: the UDP rendezvous server under load, side by side with a plain UDP echo loop
 * that uses the same batching (recvmmsg/sendmmsg, same workers), measured in the same run
 * with the same load generator.
 *
 *   make bench                     # build/rndz-bench, then runs it with the defaults
 *   build/rndz-bench [--ids 10000,100000,1000000] [--seconds 3] [--workers N]
 *                    [--sockets 64] [--window 256]
 *
 * The server (or the echo loop) runs in a child process on 127.0.0.1; its CPU time (user +
 * system) comes from the child's own accounting (/proc/PID/stat), not wall time. The load
 * generator keeps `window` requests in flight over `sockets` source ports; each request is a
 * v1 Ping for one of `ids` ids, so the server registers (and then refreshes) them all.
 * Phase 1 registers every id as fast as the generator goes and records the slowest answer
 * (a table that stalls while it grows shows here); phase 2 measures steady pings. */
#include <rndz.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

#include "benchutil.h"

/* --- the baseline: a plain echo loop with the same batching ------------------------------ */

static void echo_worker(int fd) {
    struct mmsghdr m[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_storage from[BATCH];
    static __thread uint8_t buf[BATCH][1501];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i] = (struct iovec){buf[i], sizeof buf[i]};
            m[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i],
                                           .msg_iov = &iov[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(fd, m, BATCH, MSG_WAITFORONE, NULL);
        if (n <= 0) continue;
        for (int i = 0; i < n; i++) iov[i].iov_len = m[i].msg_len;
        int done = 0;
        while (done < n) {
            int k = sendmmsg(fd, m + done, (unsigned)(n - done), 0);
            if (k <= 0) break;
            done += k;
        }
    }
}

#include <pthread.h>
static void *echo_thread(void *arg) {
    echo_worker((int)(intptr_t)arg);
    return NULL;
}

static rndz_server *the_server;
static void on_term(int sig) {
    (void)sig;
    rndz_server_stop(the_server); /* async-signal-safe */
}

/* Child: serve on 127.0.0.1:port (echo or rndz) until killed. Writes the port to `out`. */
static pid_t spawn(bool echo, unsigned workers, uint64_t max_peers, int *port) {
    int p[2];
    if (pipe(p)) exit(2);
    fflush(stdout); /* or the child repeats what is buffered */
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        if (echo) {
            int first = -1, one = 1;
            for (unsigned i = 0; i < workers; i++) {
                int fd = socket(AF_INET, SOCK_DGRAM, 0);
                setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
                int big = 4 << 20;
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
                struct sockaddr_storage a;
                rndz_addr_parse(first < 0 ? "127.0.0.1:0" : "127.0.0.1:0", &a, NULL);
                if (first >= 0) ((struct sockaddr_in *)&a)->sin_port = htons((uint16_t)first);
                if (bind(fd, (struct sockaddr *)&a, sizeof(struct sockaddr_in))) _exit(3);
                socklen_t al = sizeof a;
                getsockname(fd, (struct sockaddr *)&a, &al);
                first = ntohs(((struct sockaddr_in *)&a)->sin_port);
                pthread_t th;
                pthread_create(&th, NULL, echo_thread, (void *)(intptr_t)fd);
            }
            if (write(p[1], &first, sizeof first) != sizeof first) _exit(3);
            for (;;) pause();
        }
        rndz_server_options o;
        rndz_server_options_init(&o);
        o.listen_addr = "127.0.0.1:0";
        o.enable_tcp = 0;
        o.workers = workers;
        o.max_peers = max_peers;
        rndz_server *s;
        if (rndz_server_create(&o, &s)) _exit(3);
        the_server = s;
        signal(SIGTERM, on_term);
        struct sockaddr_storage a;
        rndz_server_local_addr(s, &a, NULL);
        int port_ = ntohs(((struct sockaddr_in *)&a)->sin_port);
        if (write(p[1], &port_, sizeof port_) != sizeof port_) _exit(3);
        rndz_server_run(s);
        char line[512];
        int off = snprintf(line, sizeof line, "%16s per worker, datagrams received:", "");
        for (unsigned i = 0; i < workers && off < (int)sizeof line - 32; i++) {
            rndz_server_stats st;
            if (rndz_server_worker_stats(s, i, &st) == 0)
                off += snprintf(line + off, sizeof line - (size_t)off, " w%u=%llu", i,
                                (unsigned long long)st.udp_rx);
        }
        printf("%s\n", line);
        fflush(stdout);
        _exit(0);
    }
    close(p[1]);
    if (read(p[0], port, sizeof *port) != sizeof *port) {
        fprintf(stderr, "bench: child failed to start\n");
        exit(2);
    }
    close(p[0]);
    return pid;
}

/* --- the load generator ------------------------------------------------------------------ */

typedef struct gen {
    int nsock;
    int *fds;
    struct sockaddr_in to;
    uint64_t nids;
    uint64_t *sent_at; /* per id: time of the request in flight, 0 = none */
    uint64_t *lat;     /* latency samples (ns) */
    size_t nlat, caplat;
    uint64_t max_lat;
    uint64_t answered;
    uint64_t lost;
} gen;

static int encode_ping(uint64_t id, uint8_t *buf) {
    char text[24];
    int n = snprintf(text, sizeof text, "bench%011llu", (unsigned long long)id); /* 16 bytes */
    rndz_msg m = {.cmd = RNDZ_REQ_PING, .id = text, .id_len = (size_t)n};
    return rndz_msg_encode(&m, buf, 64);
}

static int64_t parse_id(const uint8_t *buf, size_t len) {
    rndz_msg m;
    if (rndz_msg_decode(buf, len, 1, &m) != 0 && rndz_msg_decode(buf, len, 0, &m) != 0) return -1;
    if (m.id_len != 16 || memcmp(m.id, "bench", 5) != 0) return -1;
    char d[12];
    memcpy(d, m.id + 5, 11);
    d[11] = 0;
    return strtoll(d, NULL, 10);
}

/* Run for `seconds` (or until every id in [0, limit) was answered once, if limit > 0),
 * keeping `window` requests in flight. Ids are taken in order from *next (mod nids). */
static uint64_t run_load(gen *g, unsigned window, double seconds, uint64_t limit,
                         uint64_t *next) {
    uint64_t t_end = now_ns() + (uint64_t)(seconds * 1e9), start_answered = g->answered;
    unsigned inflight = 0;
    uint64_t issued = 0;
    struct pollfd *pf = calloc((size_t)g->nsock, sizeof *pf);
    for (int i = 0; i < g->nsock; i++) pf[i] = (struct pollfd){g->fds[i], POLLIN, 0};
    uint64_t last_progress = now_ns();
    for (;;) {
        uint64_t now = now_ns();
        if (limit ? (g->answered - start_answered >= limit) : now >= t_end) break;
        if (now - last_progress > 500000000ull) { /* lost datagrams: forget them */
            for (uint64_t i = 0; i < g->nids; i++) g->sent_at[i] = 0;
            issued -= inflight; /* ask again for what was lost */
            g->lost += inflight;
            inflight = 0;
            last_progress = now;
        }
        /* Requests go out in sendmmsg batches: 64 consecutive ids share a source port. */
        while (inflight < window && (!limit || issued < limit)) {
            struct mmsghdr m[BATCH];
            struct iovec iov[BATCH];
            uint8_t b[BATCH][64];
            uint64_t ids[BATCH];
            int nb = 0, fd = -1;
            while (nb < BATCH && inflight + (unsigned)nb < window &&
                   (!limit || issued + (uint64_t)nb < limit)) {
                uint64_t id = *next % g->nids;
                int f = g->fds[(id / BATCH) % (uint64_t)g->nsock];
                if (fd >= 0 && f != fd) break;
                *next += 1;
                if (g->sent_at[id]) continue;
                fd = f;
                int n = encode_ping(id, b[nb]);
                iov[nb] = (struct iovec){b[nb], (size_t)n};
                m[nb].msg_hdr = (struct msghdr){.msg_name = &g->to, .msg_namelen = sizeof g->to,
                                                .msg_iov = &iov[nb], .msg_iovlen = 1};
                ids[nb++] = id;
            }
            if (!nb) break;
            uint64_t t = now_ns();
            int sent = sendmmsg(fd, m, (unsigned)nb, MSG_DONTWAIT);
            if (sent < 0) sent = 0;
            for (int k = 0; k < sent; k++) g->sent_at[ids[k]] = t;
            inflight += (unsigned)sent;
            issued += (uint64_t)sent;
            if (sent < nb) break;
        }
        if (poll(pf, (nfds_t)g->nsock, 100) <= 0) continue;
        for (int i = 0; i < g->nsock; i++) {
            if (!(pf[i].revents & POLLIN)) continue;
            struct mmsghdr m[BATCH];
            struct iovec iov[BATCH];
            uint8_t buf[BATCH][128];
            for (int k = 0; k < BATCH; k++) {
                iov[k] = (struct iovec){buf[k], sizeof buf[k]};
                m[k].msg_hdr = (struct msghdr){.msg_iov = &iov[k], .msg_iovlen = 1};
            }
            int n = recvmmsg(g->fds[i], m, BATCH, MSG_DONTWAIT, NULL);
            uint64_t t = now_ns();
            for (int k = 0; k < n; k++) {
                int64_t id = parse_id(buf[k], m[k].msg_len);
                if (id < 0 || (uint64_t)id >= g->nids || !g->sent_at[id]) continue;
                uint64_t l = t - g->sent_at[id];
                g->sent_at[id] = 0;
                if (l > g->max_lat) g->max_lat = l;
                if (g->nlat < g->caplat) g->lat[g->nlat++] = l;
                else g->lat[(g->answered * 2654435761u) % g->caplat] = l; /* reservoir-ish */
                g->answered++;
                inflight--;
                last_progress = t;
            }
        }
    }
    free(pf);
    return g->answered - start_answered;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t pct(gen *g, double p) {
    if (!g->nlat) return 0;
    qsort(g->lat, g->nlat, sizeof *g->lat, cmp_u64);
    return g->lat[(size_t)(p * (double)(g->nlat - 1))];
}

typedef struct result {
    double rate, cpu_us, usr_us, p50_us, p99_us, reg_max_ms;
    long rss_kb, base_rss_kb;
    uint64_t peers;
} result;

static result measure(bool echo, uint64_t nids, unsigned workers, int nsock, unsigned window,
                      double seconds) {
    result r = {0};
    int port;
    pid_t pid = spawn(echo, workers, nids + nids / 4 + 1024, &port);
    usleep(100000);
    r.base_rss_kb = rss_kb(pid);
    gen g = {.nsock = nsock, .nids = nids};
    g.fds = calloc((size_t)nsock, sizeof *g.fds);
    for (int i = 0; i < nsock; i++) {
        g.fds[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        int big = 4 << 20;
        setsockopt(g.fds[i], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        struct sockaddr_in any = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
        bind(g.fds[i], (struct sockaddr *)&any, sizeof any);
    }
    g.to = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(0x7f000001)};
    g.sent_at = calloc(nids, sizeof *g.sent_at);
    g.caplat = 1 << 20;
    g.lat = malloc(g.caplat * sizeof *g.lat);
    uint64_t next = 0;
    /* phase 1: register every id once, as fast as the generator goes */
    run_load(&g, window < 64 ? window : 64, 1e9, nids, &next);
    r.reg_max_ms = (double)g.max_lat / 1e6;
    r.rss_kb = rss_kb(pid);
    /* phase 2: steady pings over all ids */
    g.nlat = 0;
    g.max_lat = 0;
    double u0, s0, u1, s1;
    double c0 = cpu_split(pid, &u0, &s0);
    uint64_t t0 = now_ns();
    uint64_t n = run_load(&g, window, seconds, 0, &next);
    double wall = (double)(now_ns() - t0) / 1e9;
    double c1 = cpu_split(pid, &u1, &s1);
    r.rate = (double)n / wall;
    r.cpu_us = n ? (c1 - c0) * 1e6 / (double)n : 0;
    r.usr_us = n ? (u1 - u0) * 1e6 / (double)n : 0;
    r.p50_us = (double)pct(&g, 0.50) / 1e3;
    r.p99_us = (double)pct(&g, 0.99) / 1e3;
    r.peers = nids;
    if (!echo) fflush(stdout), kill(pid, SIGTERM);
    else kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    for (int i = 0; i < nsock; i++) close(g.fds[i]);
    free(g.fds);
    free(g.sent_at);
    free(g.lat);
    return r;
}

/* TCP: memory per registered connection. A server child with TCP on; `n` connections each
 * send a Ping with its own id and read the Pong; the child's RSS before and after. */
static void tcp_memory(int n) {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max < (rlim_t)n + 100) {
        printf("tcp: skipped, the descriptor limit (%llu) is below %d\n",
               (unsigned long long)rl.rlim_max, n + 100);
        return;
    }
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    int p[2];
    if (pipe(p)) return;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        rndz_server_options o;
        rndz_server_options_init(&o);
        o.listen_addr = "127.0.0.1:0";
        o.workers = 1;
        o.max_tcp_conns_per_ip = UINT32_MAX; /* every client is 127.0.0.1 here */
        rndz_server *s;
        if (rndz_server_create(&o, &s)) _exit(3);
        struct sockaddr_storage a;
        rndz_server_local_addr(s, &a, NULL);
        int port_ = ntohs(((struct sockaddr_in *)&a)->sin_port);
        if (write(p[1], &port_, sizeof port_) != sizeof port_) _exit(3);
        rndz_server_run(s);
        _exit(0);
    }
    close(p[1]);
    int port;
    if (read(p[0], &port, sizeof port) != sizeof port) return;
    close(p[0]);
    usleep(100000);
    long rss0 = rss_kb(pid);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(0x7f000001)};
    int *fds = calloc((size_t)n, sizeof *fds);
    int ok = 0;
    uint64_t t0 = now_ns();
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&to, sizeof to) < 0) break;
        char id[24];
        int il = snprintf(id, sizeof id, "tcp%013d", i);
        rndz_msg m = {.cmd = RNDZ_REQ_PING, .id = id, .id_len = (size_t)il};
        uint8_t b[64];
        int fl = rndz_frame_encode(&m, b, sizeof b);
        if (send(fds[i], b, (size_t)fl, 0) != fl) break;
    }
    for (int i = 0; i < n; i++) {
        uint8_t b[4];
        if (fds[i] > 0 && recv(fds[i], b, 4, MSG_WAITALL) == 4) ok++;
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    usleep(100000);
    long rss1 = rss_kb(pid);
    printf("tcp: %d of %d connections registered in %.2f s; server RSS %.1f -> %.1f MiB: "
           "%.0f bytes per registered connection (user space; the kernel's socket buffers "
           "are not in RSS)\n", ok, n, secs, (double)rss0 / 1024, (double)rss1 / 1024,
           ok ? (double)(rss1 - rss0) * 1024 / ok : 0);
    for (int i = 0; i < n; i++)
        if (fds[i] > 0) close(fds[i]);
    free(fds);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

int main(int argc, char **argv) {
    uint64_t idsets[8] = {10000, 100000, 1000000};
    int nsets = 3;
    double seconds = 3;
    unsigned workers = 0, window = 256;
    int nsock = 64, tcp_conns = 10000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--ids") && i + 1 < argc) {
            nsets = 0;
            for (char *t = strtok(argv[++i], ","); t && nsets < 8; t = strtok(NULL, ","))
                idsets[nsets++] = strtoull(t, NULL, 10);
        } else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--workers") && i + 1 < argc) workers = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--sockets") && i + 1 < argc) nsock = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--window") && i + 1 < argc) window = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tcp") && i + 1 < argc) tcp_conns = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--ids N,N,...] [--seconds S] [--workers N] "
                            "[--sockets N] [--window N] [--tcp CONNS]\n", argv[0]);
            return 2;
        }
    }
    if (!workers) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        workers = n > 0 ? (unsigned)n : 1;
    }
    signal(SIGPIPE, SIG_IGN);
    printf("rndz-bench: %u server worker(s), %d source ports, window %u, %.1f s per row, "
           "librndz %s\n", workers, nsock, window, seconds, rndz_version_string());
    printf("%-9s %-5s %10s %10s %9s %8s %8s %11s %8s %7s %8s\n", "ids", "what", "pings/s",
           "cpu us/op", "(user)", "p50 us", "p99 us", "reg max ms", "RSS MiB", "B/peer",
           "vs echo");
    for (int k = 0; k < nsets; k++) {
        result e = measure(true, idsets[k], workers, nsock, window, seconds);
        result r = measure(false, idsets[k], workers, nsock, window, seconds);
        printf("%-9llu %-5s %10.0f %10.2f %9.2f %8.0f %8.0f %11s %8.1f %7s %8s\n",
               (unsigned long long)idsets[k], "echo", e.rate, e.cpu_us, e.usr_us, e.p50_us,
               e.p99_us, "-", (double)e.rss_kb / 1024, "-", "1.00");
        char bpp[32];
        snprintf(bpp, sizeof bpp, "%.1f",
                 (double)(r.rss_kb - r.base_rss_kb) * 1024 / (double)idsets[k]);
        char reg[32];
        snprintf(reg, sizeof reg, "%.2f", r.reg_max_ms);
        char ratio[32];
        snprintf(ratio, sizeof ratio, "%.2f", e.rate > 0 ? r.rate / e.rate : 0);
        printf("%-9llu %-5s %10.0f %10.2f %9.2f %8.0f %8.0f %11s %8.1f %7s %8s\n",
               (unsigned long long)idsets[k], "rndz", r.rate, r.cpu_us, r.usr_us, r.p50_us,
               r.p99_us, reg, (double)r.rss_kb / 1024, bpp, ratio);
        fflush(stdout);
    }
    if (tcp_conns > 0) tcp_memory(tcp_conns);
    return 0;
}
