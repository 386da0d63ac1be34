/* test_relay.c: the server's relay, end to end on loopback, through the public API.
 *
 * - A UDP connect relayed (the connector or the listener asks for the relay at once, as
 *   when a direct path is known to be impossible): both get a socket of their own; the
 *   application's datagrams pass unchanged both ways, every byte value and sizes from 1 to
 *   1400; the relay's counters show them; nothing of the protocol reaches the application.
 * - Auto (the default): loopback is direct, so the relay is never joined (no session).
 * - RNDZ_RELAY_NEVER on either side, or a server without a relay: direct, no relay fields.
 * - Hostile traffic to the relay port: junk, a forged join, data from a third address, a
 *   copied token from elsewhere: counted, and the two peers receive none of it.
 * - rndz_udp_listener_accept on a direct path: a connected socket of its own.
 * - With a secret: an authenticated pair is relayed; a connector without a credential gets
 *   nothing from the server, so no token and no relay.
 * - TCP relayed: 256 KiB each way at once, byte for byte, then a half-close each way passes
 *   through; auto on loopback: direct, no session.
 * Loopback only. */
#include "testlib.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct job {
    rndz_client_options o;
    const char *server;
    char target[64];
    int rc;
    rndz_peer_info info;
    pthread_t thread;
} job;

static void *job_main(void *arg) {
    job *j = arg;
    j->rc = rndz_udp_connect_info(&j->o, j->target, &j->info);
    return NULL;
}

/* A UDP connect on a thread: prepare (then change j->o if needed), run, join. */
static void job_prepare(job *j, const tl_server *v, const char *id, const char *target,
                        int relay) {
    memset(j, 0, sizeof *j);
    j->server = v->text;
    tl_client_options(&j->o, id, &j->server, 1);
    j->o.relay = relay;
    j->o.timeout_ms = tl_ms(8000);
    snprintf(j->target, sizeof j->target, "%s", target);
}

static void job_run(job *j, void *(*fn)(void *)) {
    CHECK(pthread_create(&j->thread, NULL, fn, j) == 0);
}

static void job_start(job *j, const tl_server *v, const char *id, const char *target, int relay) {
    job_prepare(j, v, id, target, relay);
    job_run(j, job_main);
}

static int job_join(job *j) {
    pthread_join(j->thread, NULL);
    return j->rc;
}

static bool start_relay_server(tl_server *v, bool relay) {
    rndz_server_options o;
    tl_server_options(&o, "127.0.0.1:0");
    if (relay) o.relay_addr = "127.0.0.1:0";
    return tl_server_start(v, &o);
}

/* Datagrams of every size class and byte value go both ways, unchanged and in full. */
static void exchange(int a, int b) {
    static uint8_t out[1400], in[2000];
    size_t sizes[] = {1, 2, 19, 20, 21, 24, 44, 100, 512, 1400};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        for (size_t i = 0; i < sizes[k]; i++) out[i] = (uint8_t)(i * 7 + k);
        int from = k % 2 ? a : b, to = k % 2 ? b : a;
        CHECK_EQ_INT(send(from, out, sizes[k], 0), (long)sizes[k]);
        long n = tl_recv_wait(to, in, sizeof in, NULL, tl_ms(2000));
        CHECK_EQ_INT(n, (long)sizes[k]);
        if (n == (long)sizes[k]) CHECK_EQ_MEM(in, sizes[k], out, sizes[k]);
    }
    /* a datagram that looks like our probes' magic but is not ours: still the app's */
    uint8_t looks[8] = {0xd5, 'r', 'n', 'd', 'z', 'X', 'Y', 'Z'};
    CHECK_EQ_INT(send(a, looks, sizeof looks, 0), (long)sizeof looks);
    CHECK_EQ_INT(tl_recv_wait(b, in, sizeof in, NULL, tl_ms(2000)), (long)sizeof looks);
}

/* Connect `target` with the given relay modes; returns both sockets through *c and *l. */
static void connect_pair(tl_server *v, int conn_mode, int lsn_mode, int *c, int *lfd,
                         rndz_peer_info *ci, rndz_peer_info *li, rndz_udp_listener **out) {
    rndz_client_options lo;
    tl_client_options(&lo, "relay-l", (const char *const[]){v->text}, 1);
    lo.relay = lsn_mode;
    rndz_udp_listener *l = tl_udp_listener(&lo);
    *out = l;
    *c = *lfd = -1;
    if (!l) return;
    /* per-peer sockets before the connect: the listener then offers the relay */
    CHECK_EQ_INT(rndz_udp_listener_accept(l, 0, li), RNDZ_E_TIMEDOUT);
    job j;
    job_start(&j, v, "relay-c", "relay-l", conn_mode);
    *lfd = rndz_udp_listener_accept(l, tl_ms(8000), li);
    *c = job_join(&j);
    *ci = j.info;
    CHECK(*lfd >= 0);
    CHECK(*c >= 0);
}

static void test_relayed(int conn_mode, int lsn_mode) {
    tl_case(conn_mode == RNDZ_RELAY_ONLY ? "udp relayed (connector asks)"
                                         : "udp relayed (listener asks)");
    tl_server v;
    if (!start_relay_server(&v, true)) return;
    struct sockaddr_storage ra;
    CHECK_RC(rndz_server_relay_addr(v.s, &ra, NULL), 0);
    int c, lfd;
    rndz_peer_info ci, li;
    rndz_udp_listener *l;
    connect_pair(&v, conn_mode, lsn_mode, &c, &lfd, &ci, &li, &l);
    if (c >= 0 && lfd >= 0) {
        CHECK_EQ_INT(ci.relayed, 1);
        CHECK_EQ_INT(li.relayed, 1);
        CHECK_EQ_INT(ci.verified, 1);
        CHECK_EQ_INT(tl_addr_port(&ci.addr), tl_addr_port(&ra));
        CHECK_EQ_INT(tl_addr_port(&li.addr), tl_addr_port(&ra));
        CHECK_EQ_STR(li.id, "relay-c");
        exchange(c, lfd);
        rndz_server_stats st = tl_server_stats(&v);
        CHECK(st.relay_tx >= 11);
        CHECK(st.relay_bytes >= 1400);
        CHECK_EQ_INT(st.relay_sessions, 1);
        CHECK_EQ_INT(st.relay_refused, 0);
        /* nothing more queued: no protocol message reached either socket */
        CHECK(tl_silent(c, tl_ms(300)));
        CHECK(tl_silent(lfd, tl_ms(50)));
    }
    if (c >= 0) close(c);
    if (lfd >= 0) close(lfd);
    rndz_udp_listener_destroy(l);
    tl_server_stop(&v);
}

static void test_direct(const char *name, bool relay_server, int conn_mode, int lsn_mode) {
    tl_case(name);
    tl_server v;
    if (!start_relay_server(&v, relay_server)) return;
    int c, lfd;
    rndz_peer_info ci, li;
    rndz_udp_listener *l;
    connect_pair(&v, conn_mode, lsn_mode, &c, &lfd, &ci, &li, &l);
    if (c >= 0 && lfd >= 0) {
        CHECK_EQ_INT(ci.relayed, 0);
        CHECK_EQ_INT(li.relayed, 0);
        CHECK_EQ_INT(ci.verified, 1);
        /* the listener's socket is its own, connected to the connector */
        struct sockaddr_storage pa;
        socklen_t pl = sizeof pa;
        CHECK(getpeername(lfd, (struct sockaddr *)&pa, &pl) == 0);
        exchange(c, lfd);
        /* ... and the shared socket hears none of it */
        CHECK(tl_silent(rndz_udp_listener_fd(l), tl_ms(50)));
        rndz_server_stats st = tl_server_stats(&v);
        CHECK_EQ_INT(st.relay_sessions, 0);
        CHECK_EQ_INT(st.relay_rx, 0);
    }
    if (c >= 0) close(c);
    if (lfd >= 0) close(lfd);
    rndz_udp_listener_destroy(l);
    tl_server_stop(&v);
}

/* A relay that refuses what it must: junk, forged joins, third parties. */
static void test_hostile(void) {
    tl_case("hostile traffic to the relay port");
    tl_server v;
    if (!start_relay_server(&v, true)) return;
    struct sockaddr_storage ra;
    CHECK_RC(rndz_server_relay_addr(v.s, &ra, NULL), 0);
    int c, lfd;
    rndz_peer_info ci, li;
    rndz_udp_listener *l;
    connect_pair(&v, RNDZ_RELAY_ONLY, RNDZ_RELAY_AUTO, &c, &lfd, &ci, &li, &l);
    if (c >= 0 && lfd >= 0) {
        rndz_server_stats before = tl_server_stats(&v);
        int x = tl_udp_socket(AF_INET, 500);
        uint8_t junk[64];
        for (int i = 0; i < 100; i++) {
            for (size_t k = 0; k < sizeof junk; k++) junk[k] = (uint8_t)(i * 31 + k);
            tl_sendto_sa(x, junk, (size_t)(i % 64) + 1, &ra);
        }
        /* a join with the right shape and a made-up token, both roles */
        uint8_t join[44] = {0xd5, 'r', 'n', 'd', 'z', 'R', 'L', 'Y', 1, 1, 0, 0};
        tl_sendto_sa(x, join, sizeof join, &ra);
        join[9] = 2;
        tl_sendto_sa(x, join, sizeof join, &ra);
        rndz_server_stats st = tl_server_await(&v, TL_STAT(relay_refused),
                                               before.relay_refused + 2, true, tl_ms(2000));
        CHECK_EQ_INT(st.relay_refused, before.relay_refused + 2);
        st = tl_server_await(&v, TL_STAT(relay_foreign), before.relay_foreign + 100, true,
                             tl_ms(2000));
        CHECK_EQ_INT(st.relay_foreign, before.relay_foreign + 100);
        CHECK_EQ_INT(st.relay_tx, before.relay_tx);
        /* the peers heard nothing of it, and still talk */
        CHECK(tl_silent(c, tl_ms(200)));
        CHECK(tl_silent(lfd, tl_ms(10)));
        exchange(c, lfd);
        CHECK(tl_silent(x, tl_ms(10))); /* and the stranger got nothing back */
        close(x);
    }
    if (c >= 0) close(c);
    if (lfd >= 0) close(lfd);
    rndz_udp_listener_destroy(l);
    tl_server_stop(&v);
}

static void *tcp_connect_main(void *arg) {
    job *j = arg;
    j->rc = rndz_tcp_connect_info(&j->o, j->target, &j->info);
    return NULL;
}

/* Write all of buf (blocking socket). */
static bool write_all(int fd, const uint8_t *buf, size_t n) {
    while (n) {
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
        if (w <= 0) return false;
        buf += w;
        n -= (size_t)w;
    }
    return true;
}

typedef struct pump_job {
    int fd;
    const uint8_t *data;
    size_t n;
    bool ok;
    pthread_t t;
} pump_job;

static void *pump_main(void *arg) {
    pump_job *p = arg;
    p->ok = write_all(p->fd, p->data, p->n);
    shutdown(p->fd, SHUT_WR); /* the half-close must pass through */
    return NULL;
}

/* Read until EOF (or 10 s); returns the bytes read. */
static size_t read_to_eof(int fd, uint8_t *buf, size_t cap) {
    size_t got = 0;
    tl_set_timeout(fd, tl_ms(10000));
    for (;;) {
        ssize_t r = recv(fd, buf + got, cap - got, 0);
        if (r <= 0) return got;
        got += (size_t)r;
        if (got == cap) return got;
    }
}

static void test_tcp(bool relayed) {
    tl_case(relayed ? "tcp relayed: bytes both ways, half-closes" : "tcp auto on loopback: direct");
    tl_server v;
    if (!start_relay_server(&v, true)) return;
    rndz_client_options lo;
    tl_client_options(&lo, "trelay-l", (const char *const[]){v.text}, 1);
    rndz_tcp_listener *l = tl_tcp_listener(&lo);
    if (!l) {
        tl_server_stop(&v);
        return;
    }
    job j;
    job_prepare(&j, &v, "trelay-c", "trelay-l", relayed ? RNDZ_RELAY_ONLY : RNDZ_RELAY_AUTO);
    job_run(&j, tcp_connect_main);
    rndz_peer_info li;
    int lfd = rndz_tcp_listener_accept_info(l, tl_ms(8000), &li);
    int c = job_join(&j);
    CHECK(lfd >= 0);
    CHECK(c >= 0);
    if (lfd >= 0 && c >= 0) {
        CHECK_EQ_INT(j.info.relayed, relayed);
        CHECK_EQ_INT(li.relayed, relayed);
        if (relayed) CHECK_EQ_STR(li.id, "trelay-c");
        enum { N = 256 * 1024 };
        static uint8_t a[N], b[N], ra[N + 1], rb[N + 1];
        for (size_t i = 0; i < N; i++) a[i] = (uint8_t)(i * 13 + 1), b[i] = (uint8_t)(i * 7 + 3);
        pump_job pa = {.fd = c, .data = a, .n = N}, pb = {.fd = lfd, .data = b, .n = N};
        CHECK(pthread_create(&pa.t, NULL, pump_main, &pa) == 0);
        CHECK(pthread_create(&pb.t, NULL, pump_main, &pb) == 0);
        size_t got_b = read_to_eof(c, rb, sizeof rb);   /* the listener's bytes, then EOF */
        size_t got_a = read_to_eof(lfd, ra, sizeof ra); /* the connector's bytes, then EOF */
        pthread_join(pa.t, NULL);
        pthread_join(pb.t, NULL);
        CHECK(pa.ok && pb.ok);
        CHECK_EQ_INT((long)got_a, N);
        CHECK_EQ_INT((long)got_b, N);
        CHECK_EQ_MEM(ra, got_a, a, N);
        CHECK_EQ_MEM(rb, got_b, b, N);
        rndz_server_stats st = tl_server_stats(&v);
        if (relayed) CHECK(st.relay_bytes >= 2 * N);
        else CHECK_EQ_INT(st.relay_bytes, 0);
    }
    if (c >= 0) close(c);
    if (lfd >= 0) close(lfd);
    rndz_tcp_listener_destroy(l);
    /* both ends closed: the relay ends the session */
    if (relayed) {
        rndz_server_stats st = tl_server_await(&v, TL_STAT(relay_sessions), 0, false, tl_ms(2000));
        CHECK_EQ_INT(st.relay_sessions, 0);
    }
    tl_server_stop(&v);
}

static void test_secret(void) {
    tl_case("relay with a secret: only authenticated pairs");
    static const uint8_t secret[] = "relay test secret, 32 bytes long";
    rndz_server_options so;
    tl_server_options(&so, "127.0.0.1:0");
    so.relay_addr = "127.0.0.1:0";
    so.secret = secret;
    so.secret_len = sizeof secret - 1;
    tl_server v;
    if (!tl_server_start(&v, &so)) return;
    uint8_t lcred[RNDZ_CREDENTIAL_LEN], ccred[RNDZ_CREDENTIAL_LEN];
    CHECK_RC(rndz_credential_derive(secret, sizeof secret - 1, "sec-l", 5, lcred), 0);
    CHECK_RC(rndz_credential_derive(secret, sizeof secret - 1, "sec-c", 5, ccred), 0);
    rndz_client_options lo;
    tl_client_options(&lo, "sec-l", (const char *const[]){v.text}, 1);
    lo.credential = lcred;
    rndz_udp_listener *l = tl_udp_listener(&lo);
    if (!l) {
        tl_server_stop(&v);
        return;
    }
    rndz_peer_info li;
    CHECK_EQ_INT(rndz_udp_listener_accept(l, 0, &li), RNDZ_E_TIMEDOUT);
    /* no credential: the server serves nothing (auth_failed), so no relay either */
    job j;
    job_prepare(&j, &v, "sec-c", "sec-l", RNDZ_RELAY_ONLY);
    j.o.timeout_ms = tl_ms(1500);
    job_run(&j, job_main);
    CHECK_EQ_INT(job_join(&j), RNDZ_E_TIMEDOUT);
    job_prepare(&j, &v, "sec-c", "sec-l", RNDZ_RELAY_ONLY);
    j.o.credential = ccred;
    job_run(&j, job_main);
    int lfd = rndz_udp_listener_accept(l, tl_ms(8000), &li);
    int c = job_join(&j);
    CHECK(c >= 0 && lfd >= 0);
    if (c >= 0 && lfd >= 0) {
        CHECK_EQ_INT(j.info.relayed, 1);
        CHECK_EQ_INT(li.relayed, 1);
        exchange(c, lfd);
    }
    rndz_server_stats st = tl_server_stats(&v);
    CHECK(st.auth_failed >= 1);
    CHECK_EQ_INT(st.relay_refused, 0);
    if (c >= 0) close(c);
    if (lfd >= 0) close(lfd);
    rndz_udp_listener_destroy(l);
    tl_server_stop(&v);
}

/* The connector's first datagram, sent the moment its connect returns, reaches the
 * listener's per-peer socket, and nothing else does (no probe, no confirm): 100 connects in a
 * row with the CPUs kept busy, so either side's thread may be late; every other one from the
 * same port as the one before it. (Before the listener made
 * its per-peer socket ahead of its ack, 7 to 49 of 100 arrived: the rest went to the shared
 * socket while the listener had not yet read the confirm.) */
static atomic_bool hog_stop;
static void *hog_main(void *arg) {
    (void)arg;
    volatile uint64_t x = 0;
    while (!atomic_load(&hog_stop)) x++;
    return NULL;
}

static void *first_datagram_main(void *arg) {
    job *j = arg;
    j->rc = rndz_udp_connect_info(&j->o, j->target, &j->info);
    if (j->rc >= 0) {
        char msg[32];
        int n = snprintf(msg, sizeof msg, "first %s", j->o.id);
        send(j->rc, msg, (size_t)n, 0);
    }
    return NULL;
}

static void test_first_datagram(bool relayed) {
    tl_case("udp %s: the first datagram reaches the per-peer socket, alone",
            relayed ? "relayed" : "direct");
    tl_server v;
    if (!start_relay_server(&v, relayed)) return;
    rndz_client_options lo;
    tl_client_options(&lo, "first-l", (const char *const[]){v.text}, 1);
    rndz_udp_listener *l = tl_udp_listener(&lo);
    if (!l) return;
    rndz_peer_info li;
    CHECK_EQ_INT(rndz_udp_listener_accept(l, 0, &li), RNDZ_E_TIMEDOUT);
    pthread_t hogs[2];
    atomic_store(&hog_stop, false);
    for (int i = 0; i < 2; i++) pthread_create(&hogs[i], NULL, hog_main, NULL);
    /* every other connect from one port: the peer connecting again from where it was */
    char again[RNDZ_ADDRSTRLEN];
    int tmp = tl_udp_socket(AF_INET, 0);
    tl_local_text(tmp, again, sizeof again);
    close(tmp);
    int ok = 0, missing = 0, wrong = 0, extra = 0;
    const int N = relayed ? 30 : 100;
    for (int i = 0; i < N; i++) {
        job j;
        char id[32];
        snprintf(id, sizeof id, "first-c%d", i);
        job_prepare(&j, &v, id, "first-l", relayed ? RNDZ_RELAY_ONLY : RNDZ_RELAY_NEVER);
        if (i % 2) j.o.local_addr = again;
        job_run(&j, first_datagram_main);
        int lfd = rndz_udp_listener_accept(l, tl_ms(8000), &li);
        int c = job_join(&j);
        CHECK(lfd >= 0 && c >= 0);
        CHECK_EQ_INT(li.relayed, relayed);
        if (lfd >= 0) {
            char want[32], got[64];
            int wn = snprintf(want, sizeof want, "first %s", id);
            long n = tl_recv_wait(lfd, got, sizeof got, NULL, tl_ms(1000));
            if (n < 0) missing++;
            else if (n != wn || memcmp(got, want, (size_t)wn) != 0) wrong++;
            else ok++;
            if (n >= 0 && !tl_silent(lfd, 5)) extra++;
            close(lfd);
        }
        if (c >= 0) close(c);
    }
    atomic_store(&hog_stop, true);
    for (int i = 0; i < 2; i++) pthread_join(hogs[i], NULL);
    printf("test_relay: first datagram after a %s connect, %d connects with both CPUs busy: %d "
           "arrived, %d missing, %d something else first, %d followed by more\n",
           relayed ? "relayed" : "direct", N, ok, missing, wrong, extra);
    CHECK_EQ_INT(extra, 0);
    CHECK_EQ_INT(ok, N);
    rndz_udp_listener_destroy(l);
    tl_server_stop(&v);
}

int main(void) {
    tl_init("test_relay", 120);
    tl_mark m = tl_mark_now(true);
    test_first_datagram(false);
    test_first_datagram(true);
    test_relayed(RNDZ_RELAY_ONLY, RNDZ_RELAY_AUTO);
    test_relayed(RNDZ_RELAY_AUTO, RNDZ_RELAY_ONLY);
    test_direct("udp auto on loopback: direct, relay untouched", true, RNDZ_RELAY_AUTO,
                RNDZ_RELAY_AUTO);
    test_direct("udp relay forbidden by the connector", true, RNDZ_RELAY_NEVER, RNDZ_RELAY_ONLY);
    test_direct("udp relay forbidden by the listener", true, RNDZ_RELAY_ONLY, RNDZ_RELAY_NEVER);
    test_direct("udp, server without a relay", false, RNDZ_RELAY_ONLY, RNDZ_RELAY_ONLY);
    test_hostile();
    test_secret();
    test_tcp(true);
    test_tcp(false);
    tl_mark_check(&m);
    return tl_finish();
}
