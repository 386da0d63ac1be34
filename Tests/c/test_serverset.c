/* test_serverset.c: server sets at scale on one machine (issue 15).
 *
 * Eight servers in this process. 10,000 listeners' ids are registered from eight sockets,
 * as rndz-bench's load generator does: each id with the two servers that rendezvous hashing
 * ranks first (rndz_server_rank, K = 2), and a thread answers every Fsync with an Rsync (as a
 * v1 listener). Then: the spread of ids over the servers (each within 10% of even, 5.8 standard
 * deviations: the ports differ every run; the figures are printed); every id
 * found by asking the servers of its id; a sample found by rndz_udp_connect given all eight
 * servers in another order. One server is stopped: the ids it held register with the next of
 * their ranking (what a listener does when a server is down: srvset.h), every id is found
 * again, and the share of registrations that moved is printed (1/8 expected). Real
 * listeners' failover and return are checked in test_e2e-like form in test_failover below. */
#include "testlib.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NSRV 8
#define IDS 10000
#define NSOCK 8
#define K 2

static tl_server srv[NSRV];
static const char *texts[NSRV];
static bool dead[NSRV];
static int socks[NSOCK];
static uint8_t top[IDS][NSRV]; /* each id's ranking */
static atomic_bool stop;
static atomic_long rsyncs;

static void id_of(int n, char *buf, size_t cap) { snprintf(buf, cap, "id-%05d", n); }

static void send_msg(int fd, rndz_cmd cmd, const char *id, const char *peer, const char *to) {
    rndz_msg m = {cmd, id, strlen(id), peer, peer ? strlen(peer) : 0, "", 0};
    uint8_t buf[512];
    int n = rndz_msg_encode(&m, buf, sizeof buf);
    if (n > 0) tl_sendto(fd, buf, (size_t)n, to);
}

/* The listeners' side: an Rsync for every Fsync, to the server that sent it. */
static void *answer(void *arg) {
    (void)arg;
    struct pollfd p[NSOCK];
    for (int i = 0; i < NSOCK; i++) p[i] = (struct pollfd){.fd = socks[i], .events = POLLIN};
    while (!atomic_load(&stop)) {
        if (poll(p, NSOCK, 50) <= 0) continue;
        for (int i = 0; i < NSOCK; i++) {
            if (!(p[i].revents & POLLIN)) continue;
            uint8_t buf[1600];
            struct sockaddr_storage from;
            long n;
            socklen_t fl = sizeof from;
            while ((n = recvfrom(socks[i], buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from,
                                 &fl)) > 0) {
                fl = sizeof from;
                rndz_msg m;
                if (rndz_msg_decode(buf, (size_t)n, 1, &m) || m.cmd != RNDZ_RSP_FSYNC) continue;
                char id[64], peer[64], to[RNDZ_ADDRSTRLEN];
                snprintf(id, sizeof id, "%.*s", (int)m.id_len, m.id);
                snprintf(peer, sizeof peer, "%.*s", (int)m.peer_id_len, m.peer_id);
                tl_addr_text(&from, to, sizeof to);
                send_msg(socks[i], RNDZ_REQ_RSYNC, id, peer, to);
                atomic_fetch_add(&rsyncs, 1);
            }
        }
    }
    return NULL;
}

/* Register every id with the first K live servers of its ranking; until every server counts
 * what it should (Pings are datagrams: some may drop under the burst, so resend). */
static bool register_all(uint64_t *want_out) {
    uint64_t want[NSRV] = {0};
    for (int n = 0; n < IDS; n++)
        for (int r = 0, k = 0; r < NSRV && k < K; r++)
            if (!dead[top[n][r]]) want[top[n][r]]++, k++;
    /* under a sanitizer the servers are several times slower: pace more, ask more often */
    for (int attempt = 0; attempt < 5 * (int)tl_slow(); attempt++) {
        for (int n = 0; n < IDS; n++) {
            char id[32];
            id_of(n, id, sizeof id);
            for (int r = 0, k = 0; r < NSRV && k < K; r++) {
                if (dead[top[n][r]]) continue;
                send_msg(socks[n % NSOCK], RNDZ_REQ_PING, id, NULL, texts[top[n][r]]);
                k++;
            }
            if (n % 200 == 199) tl_sleep_ms(2 * tl_slow()); /* a burst would overflow buffers */
        }
        bool all = true;
        for (int s = 0; s < NSRV; s++) {
            if (dead[s]) continue;
            rndz_server_stats st = tl_server_await(&srv[s], TL_STAT(udp_peers), want[s], true,
                                                   tl_ms(1000));
            all &= st.udp_peers >= want[s];
        }
        if (all) break;
    }
    for (int s = 0; s < NSRV; s++) want_out[s] = want[s];
    return true;
}

/* Ask for every id, as a connector does: the servers of its ranking in order, the next only
 * when one stays silent (a stopped one). Returns how many were found. */
static int find_all(int q) {
    int found = 0;
    enum { WINDOW = 200 };
    static bool got[IDS];
    memset(got, 0, sizeof got);
    for (int base = 0; base < IDS; base += WINDOW) {
        int end = base + WINDOW < IDS ? base + WINDOW : IDS;
        for (int attempt = 0; attempt < 6; attempt++) {
            bool pending = false;
            for (int n = base; n < end; n++) {
                if (got[n]) continue;
                pending = true;
                char id[32];
                id_of(n, id, sizeof id);
                /* the first live server of its ranking (a connector asks the first K and
                 * moves on from a silent one: a stopped server is silent) */
                int r = 0;
                while (dead[top[n][r]]) r++;
                send_msg(q, RNDZ_REQ_ISYNC, "finder", id, texts[top[n][r]]);
            }
            if (!pending) break;
            int missing = 0;
            for (int n = base; n < end; n++) missing += !got[n];
            uint64_t until = tl_now_ms() + tl_ms(300);
            while (missing > 0 && tl_now_ms() < until) {
                uint8_t buf[1600];
                long n = tl_recv_wait(q, buf, sizeof buf, NULL, 50);
                if (n <= 0) continue;
                rndz_msg m;
                if (rndz_msg_decode(buf, (size_t)n, 1, &m) || m.cmd != RNDZ_RSP_REDIRECT ||
                    m.addr_len == 0 || m.peer_id_len != 8)
                    continue;
                int k = atoi(m.peer_id + 3);
                if (k >= 0 && k < IDS && !got[k]) {
                    got[k] = true, found++;
                    if (k >= base && k < end) missing--;
                }
            }
        }
    }
    return found;
}

static void test_scale(void) {
    tl_case("8 servers, 10000 ids");
    for (int s = 0; s < NSRV; s++) {
        rndz_server_options o;
        tl_server_options(&o, "127.0.0.1:0");
        o.sync_rate = o.sync_burst = o.fsync_rate = o.fsync_burst = UINT32_MAX;
        /* the registrations are pinged once a phase, and under TSan a phase took 43 s: ids
         * must not expire between phases (one did at the default 60 s) */
        o.udp_expiry_ms = 600000;
        if (!tl_server_start(&srv[s], &o)) return;
        texts[s] = srv[s].text;
    }
    int big = 4 << 20;
    for (int i = 0; i < NSOCK; i++) {
        socks[i] = tl_udp_socket(AF_INET, 0);
        setsockopt(socks[i], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    }
    for (int n = 0; n < IDS; n++) {
        char id[32];
        id_of(n, id, sizeof id);
        size_t order[NSRV];
        CHECK_RC(rndz_server_rank(id, texts, NSRV, order), 0);
        for (int r = 0; r < NSRV; r++) top[n][r] = (uint8_t)order[r];
    }
    pthread_t th;
    pthread_create(&th, NULL, answer, NULL);

    uint64_t t0 = tl_now_ms();
    uint64_t want[NSRV];
    register_all(want);
    uint64_t before[NSRV], total = 0;
    for (int s = 0; s < NSRV; s++) {
        before[s] = tl_server_stats(&srv[s]).udp_peers;
        total += before[s];
        CHECK_EQ_INT((int)before[s], (int)want[s]);
        /* near even (2,500 each). The servers' ports, and so the hash, differ in every run:
         * a server's count is then a draw (each id picks it with p = 2/8) with a standard
         * deviation of sqrt(10000 x 1/4 x 3/4) = 43, so 5% (2.9 sd) is missed by one of eight
         * servers in about one run in 30 (seen in CI: 2,351). 10% is 5.8 sd, missed about
         * once in ten million runs. The fixed addresses of test_srvset hold 5% every time. */
        CHECK(before[s] > 2250 && before[s] < 2750);
    }
    CHECK_EQ_INT((int)total, IDS * K);
    printf("test_serverset: %d ids x K %d registered in %llu ms; per server:", IDS, K,
           (unsigned long long)(tl_now_ms() - t0));
    for (int s = 0; s < NSRV; s++) printf(" %llu", (unsigned long long)before[s]);
    printf(" (even: %d)\n", IDS * K / NSRV);

    int q = tl_udp_socket(AF_INET, 0);
    setsockopt(q, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    t0 = tl_now_ms();
    int found = find_all(q);
    CHECK_EQ_INT(found, IDS);
    printf("test_serverset: %d of %d ids found in %llu ms\n", found, IDS,
           (unsigned long long)(tl_now_ms() - t0));

    /* the library's connector, given the servers in another order, finds them too */
    const char *rev[NSRV];
    for (int s = 0; s < NSRV; s++) rev[s] = texts[NSRV - 1 - s];
    int sample_ok = 0;
    for (int n = 0; n < IDS; n += IDS / 50) {
        char id[32], me[32];
        id_of(n, id, sizeof id);
        snprintf(me, sizeof me, "conn-%d", n);
        rndz_client_options o;
        tl_client_options(&o, me, rev, NSRV);
        o.timeout_ms = tl_ms(3000);
        int fd = rndz_udp_connect(&o, id, NULL, NULL);
        if (fd >= 0) sample_ok++, close(fd);
    }
    CHECK_EQ_INT(sample_ok, 50);

    /* one server stops: its ids register with the next of their ranking */
    tl_case("one server stopped");
    int gone = 3;
    /* what each server holds now (the sample's connector ids too: a server registers the id
     * of a connector, as v1 does), and which server each of the stopped one's ids goes to */
    uint64_t mid[NSRV], inc[NSRV] = {0};
    for (int s = 0; s < NSRV; s++) mid[s] = tl_server_stats(&srv[s]).udp_peers;
    for (int n = 0; n < IDS; n++)
        if (top[n][0] == gone || top[n][1] == gone) inc[top[n][K]]++;
    tl_server_stop(&srv[gone]);
    dead[gone] = true;
    t0 = tl_now_ms();
    register_all(want);
    uint64_t moved = 0;
    for (int s = 0; s < NSRV; s++) {
        if (dead[s]) continue;
        uint64_t now = tl_server_stats(&srv[s]).udp_peers;
        CHECK_EQ_INT((int)now, (int)(mid[s] + inc[s]));
        moved += now - mid[s];
    }
    CHECK_EQ_INT((int)moved, (int)before[gone]);
    found = find_all(q);
    CHECK_EQ_INT(found, IDS);
    printf("test_serverset: server %d stopped: %llu of %d registrations moved (%.1f%%; 1/8 = "
           "12.5%%), each to one other server; %d of %d ids found again %llu ms after\n", gone,
           (unsigned long long)moved, IDS * K, 100.0 * (double)moved / (IDS * K), found, IDS,
           (unsigned long long)(tl_now_ms() - t0));
    sample_ok = 0;
    for (int n = 0; n < IDS; n += IDS / 50) {
        char id[32], me[32];
        id_of(n, id, sizeof id);
        snprintf(me, sizeof me, "conn2-%d", n);
        rndz_client_options o;
        tl_client_options(&o, me, rev, NSRV); /* the stopped one included */
        o.timeout_ms = tl_ms(3000);
        int fd = rndz_udp_connect(&o, id, NULL, NULL);
        if (fd >= 0) sample_ok++, close(fd);
    }
    CHECK_EQ_INT(sample_ok, 50);

    atomic_store(&stop, true);
    pthread_join(th, NULL);
    close(q);
    for (int i = 0; i < NSOCK; i++) close(socks[i]);
    for (int s = 0; s < NSRV; s++)
        if (!dead[s]) tl_server_stop(&srv[s]);
    tl_case("%s", "");
}

/* Real listeners (UDP and TCP), three servers, K = 2: registered with the two its id ranks
 * first; the first stops: a connector still finds it at once (the second holds it), and the
 * listener registers with the third; the first comes back on its port: the listener returns
 * to it and leaves the third. */
static uint64_t stat_at(const rndz_server_stats *st, size_t off) {
    uint64_t v;
    memcpy(&v, (const char *)st + off, sizeof v);
    return v;
}

/* n servers on loopback; their addresses kept in text (t points to them: a server started
 * again later on its port keeps its address). */
static bool open_servers(tl_server *v, int n, char (*text)[RNDZ_ADDRSTRLEN], const char **t) {
    for (int i = 0; i < n; i++) {
        if (!tl_server_open(&v[i], "127.0.0.1:0")) return false;
        snprintf(text[i], RNDZ_ADDRSTRLEN, "%s", v[i].text);
        t[i] = text[i];
    }
    return true;
}

static void failover(bool tcp) {
    tl_case("failover and return, %s", tcp ? "tcp" : "udp");
    tl_server v[3];
    const char *t[3];
    char keep_text[3][RNDZ_ADDRSTRLEN];
    if (!open_servers(v, 3, keep_text, t)) return;
    const char *id = tcp ? "fo-tcp" : "fo-udp";
    size_t order[3];
    CHECK_RC(rndz_server_rank(id, t, 3, order), 0);
    size_t first = order[0], second = order[1], third = order[2];
    size_t stat = tcp ? TL_STAT(tcp_peers) : TL_STAT(udp_peers);
    rndz_client_options o;
    tl_client_options(&o, id, t, 3);
    o.keepalive_ms = 300;
    rndz_udp_listener *ul = tcp ? NULL : tl_udp_listener(&o);
    rndz_tcp_listener *tl = tcp ? tl_tcp_listener(&o) : NULL;
    if (!ul && !tl) return;
    tl_server_await(&v[first], stat, 1, false, tl_ms(2000));
    tl_server_await(&v[second], stat, 1, false, tl_ms(2000));
    rndz_server_stats st = tl_server_stats(&v[third]);
    CHECK_EQ_INT((int)stat_at(&st, stat), 0);

    /* the connector knows the servers in another order */
    const char *rev[3] = {t[2], t[1], t[0]};
    rndz_client_options co;
    tl_client_options(&co, tcp ? "fo-c1" : "fo-c2", rev, 3);
    co.timeout_ms = tl_ms(5000);

    tl_server_stop(&v[first]);
    uint64_t t0 = tl_now_ms();
    int fd = tcp ? rndz_tcp_connect(&co, id, NULL, NULL) : rndz_udp_connect(&co, id, NULL, NULL);
    CHECK(fd >= 0);
    uint64_t found_ms = tl_now_ms() - t0;
    if (fd >= 0) close(fd);
    if (tl) {
        int afd = rndz_tcp_listener_accept(tl, tl_ms(3000), NULL, NULL);
        if (afd >= 0) close(afd);
    }
    st = tl_server_await(&v[third], stat, 1, false, tl_ms(8000));
    uint64_t moved_ms = tl_now_ms() - t0;
    CHECK_EQ_INT((int)stat_at(&st, stat), 1);

    /* back on its port */
    rndz_server_options so;
    tl_server_options(&so, t[first]);
    bool back = tl_server_start(&v[first], &so);
    CHECK(back);
    t0 = tl_now_ms();
    if (back) {
        st = tl_server_await(&v[first], stat, 1, false, tl_ms(10000));
        CHECK_EQ_INT((int)stat_at(&st, stat), 1);
    }
    st = tl_server_await(&v[third], stat, 0, false, tl_ms(5000));
    CHECK_EQ_INT((int)stat_at(&st, stat), 0);
    printf("test_serverset: %s listener, keepalive 300 ms: with its first server stopped, found "
           "in %llu ms; registered with the third %llu ms after the stop; back with the first "
           "and gone from the third %llu ms after its restart\n", tcp ? "TCP" : "UDP",
           (unsigned long long)found_ms, (unsigned long long)moved_ms,
           (unsigned long long)(tl_now_ms() - t0));
    rndz_udp_listener_destroy(ul);
    rndz_tcp_listener_destroy(tl);
    for (int i = 0; i < 3; i++)
        if (i != (int)first || back) tl_server_stop(&v[i]);
    tl_case("%s", "");
}

/* K = 1, a UDP listener with a 2 s keepalive, its server gone (closed: silent to it): the
 * listener notices at its next keepalive, unanswered 3 s (RNDZ_LINK_DOWN_MS), and registers
 * with the next server; so the loss costs a connect at most one keepalive (1.2 x 2 s
 * jittered) + 3 s = 5.4 s, where waiting for the link to count as lost (3 keepalives + 1 s)
 * took 7 s. Then a connector finds it there. */
static void silent_server_k1(void) {
    tl_case("K 1: a silent server is replaced within a keepalive and 3 s");
    tl_server v[2];
    const char *t[2];
    char keep_text[2][RNDZ_ADDRSTRLEN];
    if (!open_servers(v, 2, keep_text, t)) return;
    const char *id = "k1-silent";
    size_t order[2];
    CHECK_RC(rndz_server_rank(id, t, 2, order), 0);
    rndz_client_options o;
    tl_client_options(&o, id, t, 2);
    o.servers_per_id = 1;
    o.keepalive_ms = 2000;
    rndz_udp_listener *l = tl_udp_listener(&o);
    if (!l) return;
    CHECK_EQ_INT((int)tl_server_stats(&v[order[1]]).udp_peers, 0);
    tl_server_stop(&v[order[0]]);
    uint64_t t0 = tl_now_ms();
    rndz_server_stats st = tl_server_await(&v[order[1]], TL_STAT(udp_peers), 1, false,
                                           tl_ms(9000));
    uint64_t moved_ms = tl_now_ms() - t0;
    CHECK_EQ_INT((int)st.udp_peers, 1);
    CHECK(moved_ms <= tl_ms(2400 + 3000 /* RNDZ_LINK_DOWN_MS */ + 300));
    rndz_client_options co;
    tl_client_options(&co, "k1-asker", t, 2);
    co.servers_per_id = 1;
    co.timeout_ms = tl_ms(8000);
    t0 = tl_now_ms();
    int fd = rndz_udp_connect(&co, id, NULL, NULL);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    printf("test_serverset: K 1, keepalive 2000 ms, the listener's server gone: registered with "
           "the next %llu ms after (bound 5400 + 300 slack), found there in %llu ms (the "
           "connector asks the silent one first)\n", (unsigned long long)moved_ms,
           (unsigned long long)(tl_now_ms() - t0));
    rndz_udp_listener_destroy(l);
    tl_server_stop(&v[order[1]]);
    tl_case("%s", "");
}

/* A connector with K = 1 and two servers, the first of the target's ranking silent: it asks
 * the second too, and takes that one's "not found" only once a listener would have failed
 * over to it (so a slow first server is not taken for a lost one); with the live server
 * ranked first, "not found" at once. */
static void stand_in_not_found(void) {
    tl_case("a stand-in's not found waits for the failover time");
    tl_server v;
    if (!tl_server_open(&v, "127.0.0.1:0")) return;
    int silent = tl_udp_socket(AF_INET, 100);
    char st[RNDZ_ADDRSTRLEN];
    tl_local_text(silent, st, sizeof st);
    const char *two[] = {st, v.text};
    char first_silent[32] = "", first_live[32] = "";
    for (int n = 0; n < 100 && (!first_silent[0] || !first_live[0]); n++) {
        char id[32];
        snprintf(id, sizeof id, "ghost-%d", n);
        size_t order[2];
        CHECK_RC(rndz_server_rank(id, two, 2, order), 0);
        snprintf(order[0] == 0 ? first_silent : first_live, 32, "%s", id);
    }
    rndz_client_options o;
    tl_client_options(&o, "asker", two, 2);
    o.servers_per_id = 1;
    o.timeout_ms = 9000;
    uint64_t t0 = tl_now_ms();
    CHECK_RC(rndz_udp_connect(&o, first_live, NULL, NULL), RNDZ_E_NOTFOUND);
    uint64_t live_ms = tl_now_ms() - t0;
    CHECK(live_ms < 1000);
    t0 = tl_now_ms();
    CHECK_RC(rndz_udp_connect(&o, first_silent, NULL, NULL), RNDZ_E_NOTFOUND);
    uint64_t silent_ms = tl_now_ms() - t0;
    CHECK(silent_ms >= 4400 && silent_ms < 8000);
    printf("test_serverset: K 1, not found: %llu ms with the live server ranked first, %llu ms "
           "with a silent one ranked first\n", (unsigned long long)live_ms,
           (unsigned long long)silent_ms);
    close(silent);
    tl_server_stop(&v);
    tl_case("%s", "");
}

int main(void) {
    tl_init("test_serverset", 120);
    test_scale();
    failover(false);
    failover(true);
    stand_in_not_found();
    silent_server_k1();
    return tl_finish();
}
