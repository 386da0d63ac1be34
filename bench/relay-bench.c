/* relay-bench: the server's relay (UDP) forwarding datagrams between two peers, side by side
 * with a plain UDP forwarding loop of the same batching (recvmmsg, forward in place, one
 * sendmmsg per batch, one thread), measured in the same run with the same load generator.
 *
 *   make relay-bench               # build/relay-bench, then runs it with the defaults
 *   build/relay-bench [--seconds 2] [--rounds 5] [--window 256] [--sizes 64,1200]
 *
 * Each forwarder runs in a child process on 127.0.0.1; its CPU time (user + system) comes
 * from the child's own accounting (/proc/PID/stat). The relay's peers are made the real way:
 * a UDP listener and a connector (RNDZ_RELAY_ONLY) through the same server, so the session is
 * joined with real tokens; the relay's limits are lifted (UINT32_MAX) so it forwards at full
 * speed. The generator sends from peer A, paced to keep `window` datagrams in flight, and
 * counts what peer B receives. The two forwarders take turns, `rounds` times per size, and
 * the table shows the medians: this machine is noisy, and turns spread the noise evenly. */
#include <rndz.h>

#include "benchutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define BATCH 64
#define MAXDG 1500

/* --- the baseline: a plain forwarder, same batching ----------------------------------- */

/* Learns the first two source addresses (A, then B) and forwards each datagram to the other. */
static void plain_forwarder(int fd) {
    struct mmsghdr in[BATCH], out[BATCH];
    struct iovec iov[BATCH], oiov[BATCH];
    struct sockaddr_storage from[BATCH], peer[2];
    static uint8_t buf[BATCH][MAXDG + 1];
    int npeers = 0;
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i] = (struct iovec){buf[i], sizeof buf[i]};
            in[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i],
                                            .msg_iov = &iov[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(fd, in, BATCH, MSG_WAITFORONE, NULL);
        if (n <= 0) continue;
        int k = 0;
        for (int i = 0; i < n; i++) {
            int side = -1;
            for (int p = 0; p < npeers; p++)
                if (memcmp(&peer[p], &from[i], sizeof(struct sockaddr_in)) == 0) side = p;
            if (side < 0 && npeers < 2) {
                peer[npeers] = from[i];
                side = npeers++;
            }
            if (side < 0 || npeers < 2) continue;
            oiov[k] = (struct iovec){buf[i], in[i].msg_len};
            out[k].msg_hdr = (struct msghdr){.msg_name = &peer[1 - side],
                                             .msg_namelen = sizeof(struct sockaddr_in),
                                             .msg_iov = &oiov[k], .msg_iovlen = 1};
            k++;
        }
        int done = 0;
        while (done < k) {
            int s = sendmmsg(fd, out + done, (unsigned)(k - done), 0);
            if (s <= 0) break;
            done += s;
        }
    }
}

static rndz_server *the_server;
static void on_term(int sig) {
    (void)sig;
    rndz_server_stop(the_server);
}

/* Child: the rndz server with a relay (ports[0]: rendezvous, ports[1]: relay) or the plain
 * forwarder (ports[1]). */
static pid_t spawn(bool relay, int ports[2]) {
    int p[2];
    if (pipe(p)) exit(2);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        if (!relay) {
            int fd = socket(AF_INET, SOCK_DGRAM, 0);
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            int big = 8 << 20;
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
            if (bind(fd, (struct sockaddr *)&a, sizeof a)) _exit(2);
            socklen_t al = sizeof a;
            getsockname(fd, (struct sockaddr *)&a, &al);
            int out[2] = {0, ntohs(a.sin_port)};
            if (write(p[1], out, sizeof out) != sizeof out) _exit(2);
            plain_forwarder(fd);
            _exit(0);
        }
        rndz_server_options o;
        rndz_server_options_init(&o);
        o.listen_addr = "127.0.0.1:0";
        o.relay_addr = "127.0.0.1:0";
        o.workers = 1;
        o.relay_rate = UINT32_MAX;
        o.relay_total_rate = UINT32_MAX;
        if (rndz_server_create(&o, &the_server)) _exit(2);
        struct sockaddr_storage ss;
        int out[2];
        rndz_server_local_addr(the_server, &ss, NULL);
        out[0] = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        rndz_server_relay_addr(the_server, &ss, NULL);
        out[1] = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        if (write(p[1], out, sizeof out) != sizeof out) _exit(2);
        signal(SIGTERM, on_term);
        rndz_server_run(the_server);
        _exit(0);
    }
    close(p[1]);
    if (read(p[0], ports, 2 * sizeof(int)) != 2 * (ssize_t)sizeof(int)) {
        fprintf(stderr, "relay-bench: child did not start\n");
        exit(1);
    }
    close(p[0]);
    return pid;
}

static int connected_udp(int port) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) exit(1);
    return fd;
}

typedef struct pair {
    int a, b; /* a's datagrams reach b through the forwarder */
} pair;

/* The relay's pair, made the real way: a listener accepting, a connector with the relay only. */
typedef struct conn_job {
    rndz_client_options o;
    const char *server;
    int fd;
} conn_job;

static void *connector(void *arg) {
    conn_job *j = arg;
    j->fd = rndz_udp_connect_info(&j->o, "bench-l", NULL);
    return NULL;
}

static pair relay_pair(int srv_port) {
    static char server[64];
    snprintf(server, sizeof server, "127.0.0.1:%d", srv_port);
    const char *servers[] = {server};
    rndz_client_options lo;
    rndz_client_options_init(&lo);
    lo.id = "bench-l";
    lo.servers = servers;
    lo.n_servers = 1;
    rndz_udp_listener *l;
    if (rndz_udp_listener_create(&lo, &l) || rndz_udp_listener_wait_registered(l, 3000)) exit(1);
    rndz_peer_info info;
    if (rndz_udp_listener_accept(l, 0, &info) != RNDZ_E_TIMEDOUT) exit(1); /* per-peer sockets */
    conn_job j = {.fd = -1};
    rndz_client_options_init(&j.o);
    j.o.id = "bench-c";
    j.o.servers = servers;
    j.o.n_servers = 1;
    j.o.relay = RNDZ_RELAY_ONLY;
    pthread_t t;
    pthread_create(&t, NULL, connector, &j);
    int b = rndz_udp_listener_accept(l, 5000, &info);
    pthread_join(t, NULL);
    if (b < 0 || j.fd < 0 || !info.relayed) {
        fprintf(stderr, "relay-bench: no relayed pair (%s / %s)\n", rndz_strerror(b),
                rndz_strerror(j.fd));
        exit(1);
    }
    /* the listener's other sockets stay open, idle, for the run: the process exits after */
    return (pair){j.fd, b};
}

static pair plain_pair(int port) {
    pair p = {connected_udp(port), connected_udp(port)};
    /* the forwarder learns A, then B */
    uint8_t hi = 0;
    send(p.a, &hi, 1, 0);
    usleep(20000);
    send(p.b, &hi, 1, 0);
    usleep(20000);
    uint8_t buf[16];
    while (recv(p.a, buf, sizeof buf, MSG_DONTWAIT) > 0) {
    }
    return p;
}

typedef struct load {
    pair p;
    size_t size;
    unsigned window;
    atomic_uint_fast64_t received;
    atomic_bool stop;
} load;

static void *receiver(void *arg) {
    load *L = arg;
    struct mmsghdr m[BATCH];
    struct iovec iov[BATCH];
    static uint8_t buf[BATCH][MAXDG];
    while (!atomic_load(&L->stop)) {
        for (int i = 0; i < BATCH; i++) {
            iov[i] = (struct iovec){buf[i], sizeof buf[i]};
            m[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
        }
        struct pollfd pf = {.fd = L->p.b, .events = POLLIN};
        if (poll(&pf, 1, 50) <= 0) continue;
        int n = recvmmsg(L->p.b, m, BATCH, MSG_DONTWAIT, NULL);
        if (n > 0) atomic_fetch_add(&L->received, (uint64_t)n);
    }
    return NULL;
}

typedef struct result {
    double rate;       /* datagrams per second delivered */
    double cpu_us;     /* forwarder CPU per delivered datagram, us */
    double mbit;       /* payload Mbit/s */
    uint64_t sent, got;
} result;

static result measure(pid_t child, pair p, size_t size, unsigned window, double seconds) {
    load L = {.p = p, .size = size, .window = window};
    atomic_init(&L.received, 0);
    atomic_init(&L.stop, false);
    pthread_t t;
    pthread_create(&t, NULL, receiver, &L);
    static uint8_t data[BATCH][MAXDG];
    struct mmsghdr m[BATCH];
    struct iovec iov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        memset(data[i], 0x5a, size);
        data[i][0] = 0x01; /* never a relay control message */
        iov[i] = (struct iovec){data[i], size};
        m[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
    }
    uint64_t sent = 0, lost_base = 0;
    double c0 = cpu_split(child, NULL, NULL);
    uint64_t t0 = now_ns(), end = t0 + (uint64_t)(seconds * 1e9), last_progress = t0;
    uint64_t last_got = 0;
    while (now_ns() < end) {
        uint64_t got = atomic_load(&L.received);
        if (got != last_got) last_got = got, last_progress = now_ns();
        /* datagrams lost in the kernel (a full buffer) never arrive: after 20 ms without
         * progress, count the window as lost and go on */
        if (now_ns() - last_progress > 20000000ull) {
            lost_base = sent - got;
            last_progress = now_ns();
        }
        uint64_t inflight = sent - got - lost_base;
        if (inflight + BATCH > window) {
            struct timespec ts = {0, 20000};
            nanosleep(&ts, NULL);
            continue;
        }
        int n = sendmmsg(p.a, m, BATCH, MSG_DONTWAIT);
        if (n > 0) sent += (uint64_t)n;
    }
    uint64_t t1 = now_ns();
    double c1 = cpu_split(child, NULL, NULL);
    usleep(50000);
    atomic_store(&L.stop, true);
    pthread_join(t, NULL);
    uint64_t got = atomic_load(&L.received);
    double secs = (double)(t1 - t0) / 1e9;
    result r = {.rate = (double)got / secs, .cpu_us = got ? (c1 - c0) * 1e6 / (double)got : 0,
                .mbit = (double)got * (double)size * 8 / secs / 1e6, .sent = sent, .got = got};
    return r;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of each field over n results. */
static result median(result *r, int n) {
    double rate[16], cpu[16], mbit[16];
    result m = {0};
    for (int i = 0; i < n; i++) {
        rate[i] = r[i].rate, cpu[i] = r[i].cpu_us, mbit[i] = r[i].mbit;
        m.sent += r[i].sent, m.got += r[i].got;
    }
    qsort(rate, (size_t)n, sizeof *rate, cmp_double);
    qsort(cpu, (size_t)n, sizeof *cpu, cmp_double);
    qsort(mbit, (size_t)n, sizeof *mbit, cmp_double);
    m.rate = rate[n / 2], m.cpu_us = cpu[n / 2], m.mbit = mbit[n / 2];
    return m;
}

int main(int argc, char **argv) {
    double seconds = 2;
    int rounds = 5;
    unsigned window = 256;
    size_t sizes[8] = {64, 1200};
    int nsizes = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--window") && i + 1 < argc) window = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--sizes") && i + 1 < argc) {
            nsizes = 0;
            for (char *s = strtok(argv[++i], ","); s && nsizes < 8; s = strtok(NULL, ","))
                sizes[nsizes++] = (size_t)atoi(s);
        } else {
            fprintf(stderr, "usage: relay-bench [--seconds S] [--rounds N] [--window N] "
                            "[--sizes 64,1200]\n");
            return 2;
        }
    }
    if (rounds < 1 || rounds > 16) {
        fprintf(stderr, "relay-bench: rounds are 1..16\n");
        return 2;
    }
    for (int k = 0; k < nsizes; k++)
        if (sizes[k] < 1 || sizes[k] > MAXDG) {
            fprintf(stderr, "relay-bench: sizes are 1..%d bytes\n", MAXDG);
            return 2;
        }
    rndz_set_log(NULL, NULL, RNDZ_LOG_WARN);
    int pp[2], rp[2];
    pid_t plain = spawn(false, pp);
    pid_t relay = spawn(true, rp);
    pair P = plain_pair(pp[1]);
    pair R = relay_pair(rp[0]);
    printf("relay-bench: medians of %d turns of %.1f s each, window %u, one forwarding thread "
           "each, 127.0.0.1\n", rounds, seconds, window);
    printf("%-8s %-12s %12s %10s %14s %12s %8s %9s\n", "size", "forwarder", "datagrams/s",
           "Mbit/s", "CPU us/dgram", "delivered", "ratio", "CPU ratio");
    for (int k = 0; k < nsizes; k++) {
        result ra[16], rb[16];
        for (int t = 0; t < rounds; t++) {
            ra[t] = measure(plain, P, sizes[k], window, seconds);
            rb[t] = measure(relay, R, sizes[k], window, seconds);
        }
        result a = median(ra, rounds), b = median(rb, rounds);
        printf("%-8zu %-12s %12.0f %10.1f %14.2f %10.1f%% %8s %9s\n", sizes[k], "plain loop",
               a.rate, a.mbit, a.cpu_us, 100.0 * (double)a.got / (double)(a.sent ? a.sent : 1),
               "1.00", "1.00");
        printf("%-8zu %-12s %12.0f %10.1f %14.2f %10.1f%% %8.2f %9.2f\n", sizes[k], "rndz relay",
               b.rate, b.mbit, b.cpu_us, 100.0 * (double)b.got / (double)(b.sent ? b.sent : 1),
               a.rate > 0 ? b.rate / a.rate : 0, a.cpu_us > 0 ? b.cpu_us / a.cpu_us : 0);
    }
    kill(plain, SIGKILL);
    kill(relay, SIGTERM);
    waitpid(plain, NULL, 0);
    waitpid(relay, NULL, 0);
    return 0;
}
