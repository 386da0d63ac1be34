/*
 * cpair: a C peer for the NAT lab, linked to librndz.so, using only include/rndz.h.
 *
 *   cpair server  --listen ADDR [--listen ADDR ...]
 *   cpair listen  --id ID --server ADDR [--server ADDR ...] [--tcp]
 *   cpair connect --id ID --server ADDR [--server ADDR ...] --target ID [--tcp]
 *                 [--timeout MS] [--tcp-rto-max MS]
 *
 * server:  runs rndz_server (UDP and, when the library has it, TCP) on ADDR until SIGTERM/SIGINT;
 *          --listen given several times: one server on every ADDR (listen_addrs).
 * listen:  registers ID; prints "registered" on stdout once a server answered; then UDP: echoes
 *          every datagram on the peer socket back to its sender; TCP: accepts connections,
 *          reads what the peer sends and answers "hello". Runs until SIGTERM/SIGINT, then
 *          destroys the handle (which says Bye) and exits 0.
 * connect: asks for TARGET, sends "hello" over the returned socket and waits for the reply.
 *          UDP: like any UDP application it resends "hello" (20 times, 500 ms apart) while no
 *          reply came, and skips datagrams that are not the echo, counting them ("stray: N"
 *          on stdout: e.g. the listener's v1 punch packet reaching the application). Prints "reply: <text> from <peer>" and exits 0; on failure prints the
 *          error (rndz_err_name + rndz_strerror) on stderr and exits 1. Usage errors exit 2.
 *          Once connected (UDP and TCP) it prints what the library found, from
 *          rndz_udp_connect_info / rndz_tcp_connect_info:
 *          "path: ADDR rtt_ms=N elapsed_ms=N advertised=0|1 verified=0|1" (elapsed_ms: the
 *          library's time to connect, from the call to the verified path).
 *
 * The harness compiles it with -DCPAIR_TCP when include/rndz.h declares the TCP API.
 */
#define _GNU_SOURCE
#include <rndz.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_SERVERS 8
#define MAX_LISTEN 16

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { (void)sig; g_stop = 1; }

static int fail(const char *what, int err)
{
    fprintf(stderr, "cpair: %s: %s (%s)\n", what, rndz_strerror(err), rndz_err_name(err));
    return 1;
}

static void fmt_addr(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
    if (rndz_addr_format((const struct sockaddr *)ss, buf, cap) < 0) snprintf(buf, cap, "?");
}

/* The "path: ..." line: what rndz_*_connect_info found. */
static void print_path(const rndz_peer_info *info, const char *text)
{
    printf("path: %s rtt_ms=%u elapsed_ms=%u advertised=%d verified=%d\n", text,
           (unsigned)info->rtt_ms, (unsigned)info->elapsed_ms, info->advertised ? 1 : 0,
           info->verified ? 1 : 0);
}

static int udp_listen(const rndz_client_options *o)
{
    rndz_udp_listener *l = NULL;
    int rc = rndz_udp_listener_create(o, &l);
    if (rc < 0) return fail("rndz_udp_listener_create", rc);
    rc = rndz_udp_listener_wait_registered(l, 15000);
    if (rc < 0) {
        rndz_udp_listener_destroy(l);
        return fail("rndz_udp_listener_wait_registered", rc);
    }
    printf("registered\n");
    fflush(stdout);
    int fd = rndz_udp_listener_fd(l);
    while (!g_stop) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 200) <= 0) continue;
        unsigned char buf[2048];
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        if (n < 0) continue;
        char text[RNDZ_ADDRSTRLEN];
        fmt_addr(&from, text, sizeof text);
        fprintf(stderr, "cpair: %zd bytes from %s, echoing\n", n, text);
        (void)sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl);
    }
    rndz_udp_listener_destroy(l);
    return 0;
}

static int udp_connect(const rndz_client_options *o, const char *target)
{
    rndz_peer_info info;
    memset(&info, 0, sizeof info);
    int fd = rndz_udp_connect_info(o, target, &info);
    if (fd < 0) return fail("rndz_udp_connect_info", fd);
    char text[RNDZ_ADDRSTRLEN];
    fmt_addr(&info.addr, text, sizeof text);
    print_path(&info, text);
    fprintf(stderr, "cpair: peer %s, sending hello\n", text);
    /* Anything but the echo is counted and skipped (a v1 listener's punch packet, an Rsync
     * request, can reach the connected socket): the harness reports it. */
    int stray = 0;
    /* 20 times, 500 ms apart: the data path is as lossy as the connect was (a round trip
     * through two links with 20% loss each survives 41% of the time). */
    for (int i = 0; i < 20; i++) {
        if (send(fd, "hello", 5, 0) < 0) fprintf(stderr, "cpair: send: %s\n", strerror(errno));
        for (;;) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 500) <= 0) break;
            char buf[2048];
            ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
            if (n < 0) {
                fprintf(stderr, "cpair: recv: %s\n", strerror(errno));
                break;
            }
            if (n == 5 && !memcmp(buf, "hello", 5)) {
                printf("reply: hello from %s\n", text);
                if (stray) printf("stray: %d\n", stray);
                close(fd);
                return 0;
            }
            stray++;
            rndz_msg m;
            int dec = rndz_msg_decode((const uint8_t *)buf, (size_t)n, 0, &m);
            fprintf(stderr, "cpair: stray datagram on the connected socket (%zd bytes%s)\n", n,
                    dec == 0 ? ", decodes as a rndz v1 Request" : "");
        }
    }
    close(fd);
    fprintf(stderr, "cpair: no reply from %s\n", text);
    if (stray) printf("stray: %d\n", stray);
    return 1;
}

#ifdef CPAIR_TCP
/* Read until the peer has sent something (or closed), with a deadline. */
static ssize_t read_some(int fd, char *buf, size_t cap, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, ms) <= 0) return -1;
    return read(fd, buf, cap);
}

struct peer_job {
    int fd;
    char text[RNDZ_ADDRSTRLEN];
};

/* Read what the peer sends (waiting as long as the CLI's listener, 20 s: under loss a
 * connection's first data can take seconds), answer "hello", close. */
static void *answer_peer(void *arg)
{
    struct peer_job *j = arg;
    char buf[2048];
    ssize_t n = read_some(j->fd, buf, sizeof buf, 20000);
    fprintf(stderr, "cpair: accepted %s, read %zd bytes, answering hello\n", j->text, n);
    if (n > 0 && write(j->fd, "hello", 5) != 5) fprintf(stderr, "cpair: write failed\n");
    /* Our end, then the peer's (up to 20 s): the connection stays ours, not an orphan the
     * kernel may give up on, until the reply is acknowledged. */
    shutdown(j->fd, SHUT_WR);
    while (n > 0 && read_some(j->fd, buf, sizeof buf, 20000) > 0) {
    }
    close(j->fd);
    free(j);
    return NULL;
}

static int tcp_listen(const rndz_client_options *o)
{
    rndz_tcp_listener *l = NULL;
    int rc = rndz_tcp_listener_create(o, &l);
    if (rc < 0) return fail("rndz_tcp_listener_create", rc);
    rc = rndz_tcp_listener_wait_registered(l, 15000);
    if (rc < 0) {
        rndz_tcp_listener_destroy(l);
        return fail("rndz_tcp_listener_wait_registered", rc);
    }
    printf("registered\n");
    fflush(stdout);
    while (!g_stop) {
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        int fd = rndz_tcp_listener_accept(l, 200, &from, &fl);
        if (fd == RNDZ_E_TIMEDOUT || fd == -EINTR || fd == -EAGAIN) continue;
        if (fd < 0) {
            rndz_tcp_listener_destroy(l);
            return fail("rndz_tcp_listener_accept", fd);
        }
        /* Each peer on a thread of its own (as the CLI's listener does), so one whose data is
         * slow does not hold up the next. */
        struct peer_job *j = malloc(sizeof *j);
        pthread_t th;
        if (!j) {
            close(fd);
            continue;
        }
        j->fd = fd;
        fmt_addr(&from, j->text, sizeof j->text);
        if (pthread_create(&th, NULL, answer_peer, j) != 0) {
            close(fd);
            free(j);
            continue;
        }
        pthread_detach(th);
    }
    rndz_tcp_listener_destroy(l);
    return 0;
}

static int tcp_connect(const rndz_client_options *o, const char *target)
{
    rndz_peer_info info;
    memset(&info, 0, sizeof info);
    int fd = rndz_tcp_connect_info(o, target, &info);
    if (fd < 0) return fail("rndz_tcp_connect_info", fd);
    char text[RNDZ_ADDRSTRLEN], buf[2048];
    fmt_addr(&info.addr, text, sizeof text);
    print_path(&info, text);
    if (write(fd, "hello", 5) != 5) {
        fprintf(stderr, "cpair: write to %s: %s\n", text, strerror(errno));
        close(fd);
        return 1;
    }
    /* As long for the reply as for the connect (the CLI's --timeout does the same). */
    ssize_t n = read_some(fd, buf, sizeof buf - 1, (int)o->timeout_ms);
    close(fd);
    if (n <= 0) {
        fprintf(stderr, "cpair: no reply from %s\n", text);
        return 1;
    }
    buf[n] = 0;
    printf("reply: %s from %s\n", buf, text);
    return 0;
}
#endif

static rndz_server *g_server;
static void on_server_signal(int sig)
{
    (void)sig;
    if (g_server) rndz_server_stop(g_server); /* async-signal-safe */
}

static int serve(const char *const *listen_addrs, size_t n)
{
    rndz_server_options so;
    rndz_server_options_init(&so);
    if (n == 1) {
        so.listen_addr = listen_addrs[0];
    } else {
#ifdef RNDZ_MAX_LISTEN
        so.listen_addrs = listen_addrs;
        so.n_listen_addrs = n;
#else
        fprintf(stderr, "cpair: include/rndz.h has no listen_addrs: one --listen only\n");
        return 2;
#endif
    }
    int rc = rndz_server_create(&so, &g_server);
    if (rc < 0) return fail("rndz_server_create", rc);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_server_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    printf("serving");
    for (size_t i = 0; i < n; i++) printf(" %s", listen_addrs[i]);
    printf("\n");
    rc = rndz_server_run(g_server);
    rndz_server *s = g_server;
    g_server = NULL;
    rndz_server_destroy(s);
    return rc < 0 ? fail("rndz_server_run", rc) : 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: cpair server --listen ADDR [--listen ADDR ...]\n"
                    "       cpair listen|connect --id ID --server ADDR [--server ADDR ...]"
                    " [--target ID] [--tcp] [--timeout MS] [--tcp-rto-max MS]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage();
    const char *mode = argv[1], *id = NULL, *target = NULL, *listen_addrs[MAX_LISTEN];
    const char *servers[MAX_SERVERS];
    size_t n_servers = 0, n_listen = 0;
    int tcp = 0;
    long timeout_ms = 0, rto_max_ms = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--tcp")) tcp = 1;
        else if (!v) return usage();
        else if (!strcmp(a, "--id")) id = v, i++;
        else if (!strcmp(a, "--target")) target = v, i++;
        else if (!strcmp(a, "--listen") && n_listen < MAX_LISTEN) listen_addrs[n_listen++] = v, i++;
        else if (!strcmp(a, "--timeout")) timeout_ms = strtol(v, NULL, 10), i++;
        else if (!strcmp(a, "--tcp-rto-max")) rto_max_ms = strtol(v, NULL, 10), i++;
        else if (!strcmp(a, "--server") && n_servers < MAX_SERVERS) servers[n_servers++] = v, i++;
        else return usage();
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(mode, "server")) return n_listen ? serve(listen_addrs, n_listen) : usage();
    int listen = !strcmp(mode, "listen");
    if ((!listen && strcmp(mode, "connect")) || !id || !n_servers || (!listen && !target))
        return usage();

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: blocking calls return EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    rndz_client_options o;
    rndz_client_options_init(&o);
    o.id = id;
    o.servers = servers;
    o.n_servers = n_servers;
    if (timeout_ms > 0) o.timeout_ms = (uint32_t)timeout_ms;
    if (rto_max_ms > 0) o.tcp_rto_max_ms = (uint32_t)rto_max_ms;

    if (!tcp) return listen ? udp_listen(&o) : udp_connect(&o, target);
#ifdef CPAIR_TCP
    return listen ? tcp_listen(&o) : tcp_connect(&o, target);
#else
    fprintf(stderr, "cpair: built without TCP: include/rndz.h declares no rndz_tcp_* API\n");
    return 3;
#endif
}
