/* test_security.c: what SECURITY.md promises, on real loopback sockets (only 127.0.0.0/8).
 *
 *  - v1 still works against a server without a secret (the captured bytes), and a foreign Bye
 *    is ignored there; a foreign Ping still moves an id (v1 semantics, documented).
 *  - With a secret: nothing works without a credential (raw v1 bytes, and our clients); a
 *    client with its own credential cannot register, move, drop or speak as another id; a
 *    replayed datagram is refused, also from its own address; stale timestamps are refused;
 *    our clients with their credentials pair over UDP and TCP.
 *  - Limits: ids over max_id_len; a flood of 100,000 Isync for one target from 64 source
 *    addresses makes the target receive at most the capped number of Fsync (and Rsync the
 *    capped number of Redirect); 1,000 idle TCP connections from 1,000 addresses do not delay
 *    a pairing; the TCP caps per address and in total.
 *  - Soak: random and mutated datagrams (50 MB here; `make soak` sends 1 GB) against a server
 *    with and one without a secret: memory stays flat and both keep answering.
 *
 * Usage: test_security            every case
 *        test_security soak MB    only the soak, with MB megabytes
 */
#include "testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

/* Request fields of v1 (tl_v1_bytes takes the field number) */
enum { F_PING = 2, F_ISYNC = 3, F_RSYNC = 5, F_BYE = 6 };
#define QUIET tl_ms(150) /* how long "nothing arrives" is watched */

static const uint8_t SECRET[32] = "test secret: 32 bytes, not real";
static const uint8_t OTHER_SECRET[32] = "another server's secret, 32 byt";

/* --- helpers ----------------------------------------------------------------------------- */

/* The options of every server here: 127.0.0.1:0, two workers, the test secret or none. */
static void srv_opts(rndz_server_options *o, bool secret) {
    tl_server_options(o, "127.0.0.1:0");
    o->workers = 2;
    if (secret) {
        o->secret = SECRET;
        o->secret_len = sizeof SECRET;
    }
}

/* A server with those options, started. */
static bool srv_up(tl_server *v, bool secret) {
    rndz_server_options o;
    srv_opts(&o, secret);
    return tl_server_start(v, &o);
}

static rndz_server_stats stats(tl_server *v) { return tl_server_stats(v); }

/* Counters are updated as the workers go: wait (briefly) until udp_rx reaches `rx`. */
static rndz_server_stats stats_after(tl_server *v, uint64_t rx) {
    return tl_server_await(v, TL_STAT(udp_rx), rx, true, tl_ms(2000));
}

static void cred_of(const char *id, const uint8_t *secret, uint8_t out[RNDZ_CREDENTIAL_LEN]) {
    CHECK_RC(rndz_credential_derive(secret ? secret : SECRET, 32, id, strlen(id), out), 0);
}

/* A v1 request (built by testlib's own encoder), signed with the credential of `signer`
 * (NULL: unsigned) under `secret` (NULL: the test secret), at ts (0: now). */
static size_t req(uint8_t *b, size_t cap, const char *id, int field, const char *peer,
                  const char *signer, const uint8_t *secret, uint64_t ts) {
    size_t n = tl_v1_bytes(b, cap, id, field, peer, NULL);
    if (!signer) return n;
    uint8_t c[RNDZ_CREDENTIAL_LEN];
    cred_of(signer, secret, c);
    int m = rndz_msg_sign(c, ts, NULL, 0, b, n, cap);
    CHECK(m > (int)n);
    return m > 0 ? (size_t)m : n;
}

static void send_to(int fd, const void *b, size_t n, tl_server *v) {
    CHECK_EQ_INT(tl_sendto(fd, b, n, v->text), (long)n);
}

/* Receive a Response on fd and check its command (and the peer id inside, if given). */
static bool expect_rsp(int fd, rndz_cmd cmd, const char *id, const char *peer, char *addr_out) {
    uint8_t b[2048];
    long n = tl_recv_wait(fd, b, sizeof b, NULL, tl_ms(1000));
    if (!CHECK(n > 0)) return false;
    rndz_msg m;
    if (!CHECK_RC(rndz_msg_decode(b, (size_t)n, 1, &m), 0)) return false;
    bool ok = CHECK_EQ_INT(m.cmd, cmd);
    if (id) ok &= CHECK_EQ_SN(m.id, m.id_len, id);
    if (peer) ok &= CHECK_EQ_SN(m.peer_id, m.peer_id_len, peer);
    if (addr_out) {
        memcpy(addr_out, m.addr, m.addr_len);
        addr_out[m.addr_len] = 0;
    }
    return ok;
}

static bool silent(int fd) { return CHECK(tl_silent(fd, QUIET)); }

/* Register `id` from fd with a Ping (signed by `signer`, NULL: unsigned) and expect its Pong. */
static bool ping_as(int fd, tl_server *v, const char *id, const char *signer) {
    uint8_t b[600];
    size_t n = req(b, sizeof b, id, F_PING, NULL, signer, NULL, 0);
    send_to(fd, b, n, v);
    return expect_rsp(fd, RNDZ_RSP_PONG, id, NULL, NULL);
}

/* Send one request from fd: `id` asks about `peer` (field F_ISYNC, F_RSYNC, F_BYE...). */
static void ask(int fd, tl_server *v, const char *id, int field, const char *peer,
                const char *signer) {
    uint8_t b[600];
    size_t n = req(b, sizeof b, id, field, peer, signer, NULL, 0);
    send_to(fd, b, n, v);
}

static int udp_at(const char *addr) { return tl_udp_socket_at(addr, 1000); }

/* carol asks for alice (signed by `signer`, or not): alice is gone, a Redirect with no
 * address comes back. */
static void expect_alice_gone(int c, tl_server *v, const char *signer) {
    ask(c, v, "carol", F_ISYNC, "alice", signer);
    char addr[RNDZ_ADDRSTRLEN + 1] = "x";
    expect_rsp(c, RNDZ_RSP_REDIRECT, "carol", "alice", addr);
    CHECK_EQ_STR(addr, "");
}

/* Options of one of our clients here: bound to 127.0.0.1, with its credential (or NULL). */
static void client(rndz_client_options *o, const char *id, const char *const *servers,
                   const uint8_t *credential) {
    tl_client_options(o, id, servers, 1);
    o->local_addr = "127.0.0.1:0";
    o->credential = credential;
}

/* --- v1 without a secret ----------------------------------------------------------------- */

static void test_v1_without_secret(void) {
    tl_case("v1 bytes against a server without a secret");
    tl_server v;
    if (!srv_up(&v, false)) return;
    int c1 = udp_at("127.0.0.1:0"), c2 = udp_at("127.0.0.1:0");
    /* the captured Ping gets the captured Pong, byte for byte */
    const tl_vector *ping = tl_vector_get("udp.ping"), *pong = tl_vector_get("udp.pong");
    uint8_t b[2048];
    long n = tl_udp_request(c1, ping->bytes, ping->len, v.text, b, sizeof b, NULL, tl_ms(1000));
    CHECK_EQ_MEM(b, (size_t)(n > 0 ? n : 0), pong->bytes, pong->len);
    /* the captured Isync (c2 -> c1) makes c1 receive Fsync{c2, c2's address} */
    const tl_vector *isync = tl_vector_get("udp.isync");
    send_to(c2, isync->bytes, isync->len, &v);
    char addr[RNDZ_ADDRSTRLEN + 1], mine[RNDZ_ADDRSTRLEN];
    expect_rsp(c1, RNDZ_RSP_FSYNC, "c1", "c2", addr);
    CHECK_EQ_STR(addr, tl_local_text(c2, mine, sizeof mine));
    /* the captured Rsync (c1 -> server, for c2) makes c2 receive Redirect{c1, c1's address} */
    const tl_vector *rsync = tl_vector_get("udp.rsync");
    send_to(c1, rsync->bytes, rsync->len, &v);
    expect_rsp(c2, RNDZ_RSP_REDIRECT, "c2", "c1", addr);
    CHECK_EQ_STR(addr, tl_local_text(c1, mine, sizeof mine));
    /* a signed Ping is a v1 Ping to a server without a secret (field 16 is skipped) */
    size_t len = req(b, sizeof b, "c3", F_PING, NULL, "c3", NULL, 0);
    send_to(c1, b, len, &v);
    expect_rsp(c1, RNDZ_RSP_PONG, "c3", NULL, NULL);
    rndz_server_stats st = stats_after(&v, 4);
    CHECK_EQ_INT(st.auth_failed, 0);
    CHECK_EQ_INT(st.udp_peers, 3);
    close(c1);
    close(c2);
    tl_server_stop(&v);
}

/* Without a secret: a Bye from another address is ignored; a Ping from another address
 * still moves the id (v1 semantics: what only a secret prevents, SECURITY.md). */
static void test_no_auth_bye_and_hijack(void) {
    tl_case("no secret: foreign Bye refused, Ping moves the id (v1)");
    tl_server v;
    if (!srv_up(&v, false)) return;
    int a = udp_at("127.0.0.1:0"), m = udp_at("127.0.0.66:0"), c = udp_at("127.0.0.1:0");
    uint8_t b[256];
    ping_as(a, &v, "alice", NULL);
    /* mallory says Bye for alice */
    ask(m, &v, "alice", F_BYE, NULL, NULL);
    silent(m);
    rndz_server_stats st = stats_after(&v, 2);
    CHECK_EQ_INT(st.udp_peers, 1);
    /* alice is still where she was */
    ask(c, &v, "carol", F_ISYNC, "alice", NULL);
    expect_rsp(a, RNDZ_RSP_FSYNC, "alice", "carol", NULL);
    silent(m);
    /* v1: a Ping from mallory for alice moves alice to mallory */
    ping_as(m, &v, "alice", NULL);
    ask(c, &v, "carol", F_ISYNC, "alice", NULL);
    expect_rsp(m, RNDZ_RSP_FSYNC, "alice", "carol", NULL);
    silent(a);
    /* and a Bye from alice's old address is now foreign too */
    size_t n = req(b, sizeof b, "alice", F_BYE, NULL, NULL, NULL, 0);
    send_to(a, b, n, &v);
    tl_sleep_ms(tl_ms(50));
    CHECK_EQ_INT(stats(&v).udp_peers, 2);
    /* her own Bye (from where she is registered) removes her */
    send_to(m, b, n, &v);
    st = stats_after(&v, 7);
    CHECK_EQ_INT(st.udp_peers, 1);
    expect_alice_gone(c, &v, NULL);
    close(a);
    close(m);
    close(c);
    tl_server_stop(&v);
}

/* --- with a secret ---------------------------------------------------------------------- */

static void test_auth_without_credential(void) {
    tl_case("secret: nothing works without a credential");
    tl_server v;
    if (!srv_up(&v, true)) return;
    int x = udp_at("127.0.0.1:0");
    /* the captured v1 bytes: all dropped, no answer */
    static const char *const names[] = {"udp.ping", "udp.isync", "udp.rsync", "udp.bye",
                                        "udp.isync.unknown"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const tl_vector *t = tl_vector_get(names[i]);
        send_to(x, t->bytes, t->len, &v);
    }
    silent(x);
    rndz_server_stats st = stats_after(&v, 5);
    CHECK_EQ_INT(st.auth_failed, 5);
    CHECK_EQ_INT(st.udp_peers, 0);
    CHECK_EQ_INT(st.udp_tx, 0);
    /* signed under another server's secret: the same */
    uint8_t b[256];
    size_t n = req(b, sizeof b, "c1", F_PING, NULL, "c1", OTHER_SECRET, 0);
    send_to(x, b, n, &v);
    silent(x);
    CHECK_EQ_INT(stats_after(&v, 6).auth_failed, 6);

    /* our clients without a credential: never registered, never connected */
    char srvtext[RNDZ_ADDRSTRLEN];
    snprintf(srvtext, sizeof srvtext, "%s", v.text);
    const char *servers[] = {srvtext};
    rndz_client_options co;
    client(&co, "lonely", servers, NULL);
    rndz_udp_listener *l = NULL;
    CHECK_RC(rndz_udp_listener_create(&co, &l), 0);
    CHECK_RC(rndz_udp_listener_wait_registered(l, tl_ms(700)), RNDZ_E_TIMEDOUT);
    rndz_udp_listener_destroy(l);
    co.id = "c2";
    co.timeout_ms = tl_ms(700);
    int fd = rndz_udp_connect(&co, "lonely", NULL, NULL);
    CHECK_RC(fd, RNDZ_E_TIMEDOUT);
    if (fd >= 0) close(fd);
    /* TCP: the captured Ping frame gets the connection closed, no Pong */
    int t = socket(AF_INET, SOCK_STREAM, 0);
    CHECK_EQ_INT(connect(t, (struct sockaddr *)&v.sa, sizeof(struct sockaddr_in)), 0);
    const tl_vector *tp = tl_vector_get("tcp.ping");
    CHECK_EQ_INT(send(t, tp->bytes, tp->len, MSG_NOSIGNAL), (long)tp->len);
    tl_set_timeout(t, tl_ms(2000));
    CHECK_EQ_INT(recv(t, b, sizeof b, 0), 0); /* closed, nothing sent */
    close(t);
    rndz_tcp_listener *tl = NULL;
    co.id = "lonely-tcp";
    CHECK_RC(rndz_tcp_listener_create(&co, &tl), 0);
    CHECK(rndz_tcp_listener_wait_registered(tl, tl_ms(700)) < 0);
    rndz_tcp_listener_destroy(tl);
    st = stats(&v);
    CHECK(st.auth_failed >= 7);
    CHECK_EQ_INT(st.tcp_peers, 0);
    CHECK_EQ_INT(st.udp_peers, 0);
    close(x);
    tl_server_stop(&v);
}

/* A client with its own credential (mallory's) cannot register, move, drop or speak as
 * another id (alice); a replay of alice's own datagram is refused from anywhere. */
static void test_auth_hijack(void) {
    tl_case("secret: hijack, foreign Bye, replay, stale");
    tl_server v;
    if (!srv_up(&v, true)) return;
    int a = udp_at("127.0.0.1:0"), m = udp_at("127.0.0.66:0"), c = udp_at("127.0.0.1:0");
    uint8_t ping_a[256], b[256];
    size_t pa = req(ping_a, sizeof ping_a, "alice", F_PING, NULL, "alice", NULL, 0);
    send_to(a, ping_a, pa, &v);
    expect_rsp(a, RNDZ_RSP_PONG, "alice", NULL, NULL);
    uint64_t rx = 1, failed = 0;

    /* register/move alice: unsigned, with mallory's credential, under another secret, with
     * alice's credential but 60 s old or 60 s ahead */
    size_t n = req(b, sizeof b, "alice", F_PING, NULL, NULL, NULL, 0);
    send_to(m, b, n, &v), rx++, failed++;
    n = req(b, sizeof b, "alice", F_PING, NULL, "mallory", NULL, 0);
    send_to(m, b, n, &v), rx++, failed++;
    n = req(b, sizeof b, "alice", F_PING, NULL, "alice", OTHER_SECRET, 0);
    send_to(m, b, n, &v), rx++, failed++;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t wall = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
    n = req(b, sizeof b, "alice", F_PING, NULL, "alice", NULL, wall - 60000);
    send_to(m, b, n, &v), rx++, failed++;
    n = req(b, sizeof b, "alice", F_PING, NULL, "alice", NULL, wall + 60000);
    send_to(m, b, n, &v), rx++, failed++;
    /* alice's own Ping, replayed from mallory's address, and from alice's */
    send_to(m, ping_a, pa, &v), rx++;
    send_to(a, ping_a, pa, &v), rx++;
    silent(m);
    silent(a);
    /* drop alice: Bye unsigned, with mallory's credential */
    n = req(b, sizeof b, "alice", F_BYE, NULL, NULL, NULL, 0);
    send_to(m, b, n, &v), rx++, failed++;
    n = req(b, sizeof b, "alice", F_BYE, NULL, "mallory", NULL, 0);
    send_to(m, b, n, &v), rx++, failed++;
    /* speak as alice: an Isync and an Rsync with id alice, signed by mallory */
    n = req(b, sizeof b, "alice", F_ISYNC, "carol", "mallory", NULL, 0);
    send_to(m, b, n, &v), rx++, failed++;
    n = req(b, sizeof b, "alice", F_RSYNC, "carol", "mallory", NULL, 0);
    send_to(m, b, n, &v), rx++, failed++;
    /* a signed message with a byte of its body changed (alice -> alicf) */
    n = req(b, sizeof b, "alice", F_PING, NULL, "alice", NULL, 0);
    b[6] = 'f';
    send_to(m, b, n, &v), rx++, failed++;
    silent(m);
    rndz_server_stats st = stats_after(&v, rx);
    CHECK_EQ_INT(st.auth_failed, failed);
    CHECK_EQ_INT(st.auth_replayed, 2);
    CHECK_EQ_INT(st.udp_peers, 1);
    CHECK_EQ_INT(st.udp_tx, 1); /* alice's one Pong */

    /* alice is still at her address: carol (signed) asks for her */
    ask(c, &v, "carol", F_ISYNC, "alice", "carol");
    char addr[RNDZ_ADDRSTRLEN + 1], mine[RNDZ_ADDRSTRLEN];
    expect_rsp(a, RNDZ_RSP_FSYNC, "alice", "carol", addr);
    CHECK_EQ_STR(addr, tl_local_text(c, mine, sizeof mine));
    silent(m);
    /* mallory may register as mallory, and ask for alice like anyone */
    ping_as(m, &v, "mallory", "mallory");
    ask(m, &v, "mallory", F_ISYNC, "alice", "mallory");
    expect_rsp(a, RNDZ_RSP_FSYNC, "alice", "mallory", NULL);
    /* TCP: alice's credential is needed there too; a replayed frame closes the connection */
    int t = socket(AF_INET, SOCK_STREAM, 0);
    CHECK_EQ_INT(connect(t, (struct sockaddr *)&v.sa, sizeof(struct sockaddr_in)), 0);
    uint8_t f[300];
    n = req(f + 2, sizeof f - 2, "alice", F_PING, NULL, "alice", NULL, 0);
    f[0] = (uint8_t)(n >> 8), f[1] = (uint8_t)n;
    CHECK_EQ_INT(send(t, f, n + 2, MSG_NOSIGNAL), (long)n + 2);
    tl_set_timeout(t, tl_ms(2000));
    CHECK_EQ_INT(recv(t, b, sizeof b, 0), 4); /* Pong */
    CHECK_EQ_INT(send(t, f, n + 2, MSG_NOSIGNAL), (long)n + 2);
    CHECK_EQ_INT(recv(t, b, sizeof b, 0), 0); /* replay: closed */
    close(t);
    CHECK_EQ_INT(stats(&v).auth_replayed, 3);
    /* alice's own signed Bye, from her address, removes her */
    ask(a, &v, "alice", F_BYE, NULL, "alice");
    tl_sleep_ms(tl_ms(50));
    expect_alice_gone(c, &v, "carol");
    close(a);
    close(m);
    close(c);
    tl_server_stop(&v);
}

/* One TCP pairing through the server: connector `cid` (with its credential, or NULL) to
 * listener `lid`, which must be registered with l; returns the connector's time in us (-1 if
 * it failed). */
static long tcp_pair_us(tl_server *v, rndz_tcp_listener *l, const char *cid, const char *lid,
                        const uint8_t *credential) {
    const char *servers[] = {v->text};
    tl_tcp_job tj = {.target = lid};
    client(&tj.o, cid, servers, credential);
    tj.o.timeout_ms = tl_ms(5000);
    tl_tcp_job_run(&tj);
    int acc = rndz_tcp_listener_accept(l, tl_ms(5000), NULL, NULL);
    tl_tcp_job_join(&tj);
    CHECK(tj.rc >= 0);
    CHECK(acc >= 0);
    if (tj.rc >= 0) close(tj.rc);
    if (acc >= 0) close(acc);
    return tj.rc >= 0 ? (long)tj.elapsed_us : -1;
}

/* Our clients with their credentials, through a server with a secret; and a credential held
 * for the wrong id does not register. */
static void test_auth_clients(void) {
    tl_case("secret: our clients with credentials");
    tl_server v;
    if (!srv_up(&v, true)) return;
    const char *servers[] = {v.text};
    uint8_t ca[32], cc[32], cm[32];
    cred_of("alice", NULL, ca);
    cred_of("carol", NULL, cc);
    cred_of("mallory", NULL, cm);
    rndz_client_options lo;
    client(&lo, "alice", servers, ca);
    rndz_udp_listener *l = tl_udp_listener(&lo);
    tl_connect_job j;
    tl_connect_prepare(&j, "carol", servers, 1, "alice", 0, tl_ms(5000));
    j.o.credential = cc;
    tl_connect_run(&j);
    int fd = tl_connect_join(&j);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    /* mallory holding alice's id but her own credential: refused */
    rndz_udp_listener *l2 = NULL;
    lo.id = "alice";
    lo.credential = cm;
    CHECK_RC(rndz_udp_listener_create(&lo, &l2), 0);
    CHECK_RC(rndz_udp_listener_wait_registered(l2, tl_ms(600)), RNDZ_E_TIMEDOUT);
    rndz_udp_listener_destroy(l2);
    rndz_udp_listener_destroy(l);
    /* TCP */
    lo.id = "alice";
    lo.credential = ca;
    rndz_tcp_listener *tl = tl_tcp_listener(&lo);
    if (tl) tcp_pair_us(&v, tl, "carol", "alice", cc);
    rndz_tcp_listener_destroy(tl);
    rndz_server_stats st = stats(&v);
    CHECK_EQ_INT(st.auth_replayed, 0); /* our clients never trip the replay check */
    tl_server_stop(&v);
}

/* --- limits ------------------------------------------------------------------------------ */

static void test_id_limit(void) {
    tl_case("max_id_len");
    tl_server v;
    if (!srv_up(&v, false)) return;
    int x = udp_at("127.0.0.1:0");
    char id[400];
    memset(id, 'i', sizeof id);
    id[RNDZ_MAX_ID_LEN] = 0;
    ping_as(x, &v, id, NULL); /* the default limit: fine */
    id[RNDZ_MAX_ID_LEN] = 'i';
    id[RNDZ_MAX_ID_LEN + 1] = 0;
    ask(x, &v, id, F_PING, NULL, NULL);
    ask(x, &v, "short", F_ISYNC, id, NULL); /* a long target */
    silent(x);
    CHECK_EQ_INT(stats_after(&v, 3).id_refused, 2);
    close(x);
    tl_server_stop(&v);
}

typedef struct counter {
    int fd;
    atomic_bool stop;
    atomic_int fsync, redirect, other;
    uint64_t last_ms;
    pthread_t th;
} counter;

static void *count_run(void *arg) {
    counter *c = arg;
    uint8_t b[2048];
    while (!atomic_load(&c->stop) || tl_pending(c->fd)) {
        long n = tl_recv_wait(c->fd, b, sizeof b, NULL, 20);
        if (n < 0) continue;
        rndz_msg m;
        if (rndz_msg_decode(b, (size_t)n, 1, &m) == 0 && m.cmd == RNDZ_RSP_FSYNC)
            atomic_fetch_add(&c->fsync, 1);
        else if (rndz_msg_decode(b, (size_t)n, 1, &m) == 0 && m.cmd == RNDZ_RSP_REDIRECT)
            atomic_fetch_add(&c->redirect, 1);
        else
            atomic_fetch_add(&c->other, 1);
        c->last_ms = tl_now_ms();
    }
    return NULL;
}

/* Send `total` requests id "f<i>" field `field` for `target` from `nsrc` sockets on as many
 * loopback addresses, in sendmmsg batches. Returns the datagrams sent. */
static long flood(tl_server *v, int field, const char *target, long total, int nsrc, int base) {
    int fds[64];
    for (int i = 0; i < nsrc; i++) {
        char a[32];
        snprintf(a, sizeof a, "127.0.%d.%d:0", base, 2 + i);
        fds[i] = udp_at(a);
    }
    enum { BATCH = 64 };
    static uint8_t bufs[64][BATCH][64];
    static size_t lens[64][BATCH];
    for (int s = 0; s < nsrc; s++)
        for (int k = 0; k < BATCH; k++) {
            char id[16];
            snprintf(id, sizeof id, "f%d.%d", s, k);
            lens[s][k] = tl_v1_bytes(bufs[s][k], sizeof bufs[s][k], id, field, target, NULL);
        }
    struct mmsghdr mm[BATCH];
    struct iovec iov[BATCH];
    long sent = 0;
    for (int round = 0; sent < total; round++) {
        int s = round % nsrc;
        int k = 0;
        for (; k < BATCH && sent + k < total; k++) {
            iov[k] = (struct iovec){bufs[s][k], lens[s][k]};
            mm[k].msg_hdr = (struct msghdr){.msg_name = &v->sa,
                                            .msg_namelen = sizeof(struct sockaddr_in),
                                            .msg_iov = &iov[k], .msg_iovlen = 1};
        }
        int r = sendmmsg(fds[s], mm, (unsigned)k, 0);
        if (r > 0) sent += r;
        else if (r < 0 && errno != EAGAIN && errno != ENOBUFS) break;
    }
    for (int i = 0; i < nsrc; i++) close(fds[i]);
    return sent;
}

static void test_flood(void) {
    tl_case("flood of 100,000 Isync for one target");
    rndz_server_options o;
    srv_opts(&o, false);
    tl_server v;
    if (!tl_server_start(&v, &o)) return;
    int victim = udp_at("127.0.0.1:0");
    int big = 4 << 20;
    setsockopt(victim, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big); /* count, not drop */
    setsockopt(victim, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    ping_as(victim, &v, "victim", NULL);
    counter c = {.fd = victim};
    pthread_create(&c.th, NULL, count_run, &c);
    uint64_t t0 = tl_now_ms();
    long sent = flood(&v, F_ISYNC, "victim", 100000, 64, 1);
    uint64_t t_sent = tl_now_ms();
    tl_sleep_ms(tl_ms(300)); /* what the server still had queued */
    atomic_store(&c.stop, true);
    pthread_join(c.th, NULL);
    uint64_t t1 = tl_now_ms();
    rndz_server_stats st = stats(&v);
    double secs = (double)(t1 - t0) / 1000.0;
    long cap = (long)o.fsync_burst + (long)(o.fsync_rate * secs) + 1;
    int got = atomic_load(&c.fsync);
    tl_note("flood: %ld Isync sent from 64 addresses in %llu ms; server took %llu; the target "
            "received %d Fsync (cap %ld = burst %u + %u/s over %.2f s); %llu limited per "
            "source, %llu per target",
            sent, (unsigned long long)(t_sent - t0), (unsigned long long)st.udp_rx - 1, got, cap,
            o.fsync_burst, o.fsync_rate, secs, (unsigned long long)st.sync_limited,
            (unsigned long long)st.fsync_limited);
    CHECK_EQ_INT(sent, 100000);
    CHECK(got >= (int)o.fsync_burst); /* the burst got through: the path works */
    CHECK(got <= cap);
    CHECK_EQ_INT(atomic_load(&c.other), 0);
    CHECK(st.sync_limited > 0 && st.fsync_limited > 0);
    /* the target still gets Fsync at the capped rate afterwards, from a new requester */
    tl_sleep_ms(tl_ms(250)); /* 2 tokens at 10/s */
    int x = udp_at("127.0.0.1:0");
    ask(x, &v, "late", F_ISYNC, "victim", NULL);
    expect_rsp(victim, RNDZ_RSP_FSYNC, "victim", "late", NULL);

    /* Rsync: Redirects toward one target are capped the same way */
    int victim2 = udp_at("127.0.0.1:0");
    ping_as(victim2, &v, "victim2", NULL);
    counter c2 = {.fd = victim2};
    pthread_create(&c2.th, NULL, count_run, &c2);
    t0 = tl_now_ms();
    sent = flood(&v, F_RSYNC, "victim2", 20000, 32, 2);
    tl_sleep_ms(tl_ms(300));
    atomic_store(&c2.stop, true);
    pthread_join(c2.th, NULL);
    secs = (double)(tl_now_ms() - t0) / 1000.0;
    cap = (long)o.fsync_burst + (long)(o.fsync_rate * secs) + 1;
    got = atomic_load(&c2.redirect);
    tl_note("flood: %ld Rsync for one target: it received %d Redirect (cap %ld)", sent, got, cap);
    CHECK(got >= (int)o.fsync_burst && got <= cap);
    /* still serving */
    ping_as(x, &v, "after", NULL);
    close(x);
    close(victim);
    close(victim2);
    tl_server_stop(&v);
}

/* A TCP connection from a given source address, non-blocking connect; -1 on failure. */
static int tcp_from(const char *src, const struct sockaddr_storage *to) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_storage ss;
    rndz_addr_parse(src, &ss, NULL);
    if (bind(fd, (struct sockaddr *)&ss, sizeof(struct sockaddr_in)) < 0 ||
        (connect(fd, (const struct sockaddr *)to, sizeof(struct sockaddr_in)) < 0 &&
         errno != EINPROGRESS)) {
        close(fd);
        return -1;
    }
    return fd;
}

static bool wait_conns(tl_server *v, uint64_t want, unsigned ms) {
    return tl_server_await(v, TL_STAT(tcp_conns), want, false, ms).tcp_conns == want;
}

static void test_idle_tcp(void) {
    tl_case("1,000 idle TCP connections");
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max < 2600) {
        tl_note("SKIP idle TCP: fd hard limit %llu", (unsigned long long)rl.rlim_max);
        return;
    }
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    tl_server v;
    if (!srv_up(&v, false)) return;
    const char *servers[] = {v.text};
    rndz_client_options lo;
    client(&lo, "tl", servers, NULL);
    rndz_tcp_listener *l = tl_tcp_listener(&lo);
    if (!l) {
        tl_server_stop(&v);
        return;
    }
    long base = tcp_pair_us(&v, l, "tc0", "tl", NULL);
    CHECK(wait_conns(&v, 1, tl_ms(3000))); /* the listener's; the connector's has closed */
    uint64_t conns0 = 1;
    static int idle[1000];
    int made = 0;
    for (int i = 0; i < 1000; i++) {
        char src[32];
        snprintf(src, sizeof src, "127.0.%d.%d:0", 10 + i / 250, 2 + i % 250);
        idle[i] = tcp_from(src, &v.sa);
        if (idle[i] >= 0) made++;
    }
    CHECK_EQ_INT(made, 1000);
    CHECK(wait_conns(&v, conns0 + 1000, tl_ms(5000)));
    long with_idle = tcp_pair_us(&v, l, "tc1", "tl", NULL);
    long again = tcp_pair_us(&v, l, "tc2", "tl", NULL);
    tl_note("idle TCP: pairing took %ld us alone, %ld and %ld us with 1,000 idle connections "
            "from 1,000 addresses (%llu open)", base, with_idle, again,
            (unsigned long long)stats(&v).tcp_conns);
    /* not delayed: within 100 ms of the pairing without them (it takes well under 1 ms) */
    CHECK(with_idle >= 0 && with_idle <= base + 100000L * (long)tl_slow());
    CHECK(again >= 0 && again <= base + 100000L * (long)tl_slow());
    CHECK_EQ_INT(stats(&v).tcp_refused, 0);
    for (int i = 0; i < 1000; i++)
        if (idle[i] >= 0) close(idle[i]);
    rndz_tcp_listener_destroy(l);
    tl_server_stop(&v);
}

/* true if the server closed this connection (EOF or reset) within ms */
static bool closed_by_server(int fd, unsigned ms) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, (int)ms) <= 0) return false;
    char c;
    ssize_t r = recv(fd, &c, 1, MSG_DONTWAIT);
    return r == 0 || (r < 0 && (errno == ECONNRESET || errno == EPIPE));
}

static void test_tcp_caps(void) {
    tl_case("TCP caps per address and in total");
    rndz_server_options o;
    srv_opts(&o, false);
    o.max_tcp_conns = 40;
    o.max_tcp_conns_per_ip = 10;
    tl_server v;
    if (!tl_server_start(&v, &o)) return;
    int fds[60], n = 0;
    for (int i = 0; i < 15; i++) fds[n++] = tcp_from("127.0.20.7:0", &v.sa);
    CHECK(wait_conns(&v, 10, tl_ms(3000)));
    int closed = 0;
    for (int i = 0; i < 15; i++) closed += closed_by_server(fds[i], i < 10 ? 20 : tl_ms(1000));
    CHECK_EQ_INT(closed, 5);
    for (int i = 0; i < 40; i++) {
        char src[32];
        snprintf(src, sizeof src, "127.0.21.%d:0", 2 + i);
        fds[n++] = tcp_from(src, &v.sa);
    }
    tl_sleep_ms(tl_ms(200));
    rndz_server_stats st = stats(&v);
    CHECK_EQ_INT(st.tcp_conns, 40);
    CHECK_EQ_INT(st.tcp_refused, 5 + 10);
    /* a closed connection frees its place */
    close(fds[0]);
    CHECK(wait_conns(&v, 39, tl_ms(2000)));
    int again = tcp_from("127.0.20.7:0", &v.sa);
    CHECK(wait_conns(&v, 40, tl_ms(2000)));
    CHECK(!closed_by_server(again, 50));
    close(again);
    for (int i = 1; i < n; i++)
        if (fds[i] >= 0) close(fds[i]);
    tl_server_stop(&v);
}

/* --- soak -------------------------------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

/* Seeds to mutate: every captured UDP vector and TCP body, and signed requests (valid for the
 * server with the secret until they are replayed or go stale: most are). */
typedef struct seed {
    uint8_t b[RNDZ_MAX_MSG];
    size_t len;
} seed;

static size_t make_seeds(seed *s, size_t cap) {
    const tl_vector *v;
    size_t nv = tl_vectors(&v), n = 0;
    for (size_t i = 0; i < nv && n < cap; i++) {
        if (v[i].len < 2) continue;
        bool tcp = strcmp(v[i].transport, "tcp") == 0;
        size_t off = tcp ? 2 : 0;
        memcpy(s[n].b, v[i].bytes + off, v[i].len - off);
        s[n].len = v[i].len - off;
        n++;
    }
    static const int fields[] = {F_PING, F_ISYNC, F_RSYNC, F_BYE};
    for (int i = 0; n < cap && i < 40; i++) {
        char id[32], peer[32];
        snprintf(id, sizeof id, "soak%d", i % 7);
        snprintf(peer, sizeof peer, "soak%d", (i + 3) % 7);
        s[n].len = req(s[n].b, sizeof s[n].b, id, fields[i % 4], peer, id, NULL, 0);
        n++;
    }
    return n;
}

static size_t mutate(uint8_t *out, const seed *seeds, size_t nseeds) {
    uint64_t kind = rnd() % 10;
    size_t len;
    if (kind < 3) { /* random bytes, any length up to past the limit */
        len = rnd() % 1600;
        for (size_t i = 0; i < len; i += 8) {
            uint64_t r = rnd();
            memcpy(out + i, &r, len - i < 8 ? len - i : 8);
        }
        return len;
    }
    const seed *s = &seeds[rnd() % nseeds];
    memcpy(out, s->b, s->len);
    len = s->len;
    int edits = 1 + (int)(rnd() % 6);
    for (int e = 0; e < edits; e++) {
        uint64_t r = rnd();
        size_t at = len ? (size_t)(r >> 16) % len : 0;
        switch (r % 7) {
        case 0: if (len) out[at] ^= (uint8_t)(1u << (r >> 8) % 8); break; /* flip a bit */
        case 1: if (len) out[at] = (uint8_t)(r >> 24); break;             /* set a byte */
        case 2: if (len) len = at; break;                                 /* truncate */
        case 3: /* insert random bytes */
            if (len < 1400) {
                size_t k = 1 + (r >> 32) % 40;
                memmove(out + at + k, out + at, len - at);
                for (size_t i = 0; i < k; i++) out[at + i] = (uint8_t)rnd();
                len += k;
            }
            break;
        case 4: /* delete a range */
            if (len) {
                size_t k = 1 + (r >> 32) % (len - at);
                memmove(out + at, out + at + k, len - at - k);
                len -= k;
            }
            break;
        case 5: /* splice another seed on */
            if (len < 1000) {
                const seed *t = &seeds[(r >> 32) % nseeds];
                memcpy(out + len, t->b, t->len);
                len += t->len;
            }
            break;
        case 6: /* a huge length prefix or varint */
            if (len) out[at] = (r >> 40) & 1 ? 0xff : 0x80;
            break;
        }
    }
    return len;
}

static void soak(long mb) {
    tl_case("soak %ld MB", mb);
    rndz_server_options o;
    tl_server v[2];
    srv_opts(&o, false);
    o.max_peers = 2000; /* fills during the warm-up: later growth would be a leak */
    if (!tl_server_start(&v[0], &o)) return;
    srv_opts(&o, true);
    o.max_peers = 2000;
    if (!tl_server_start(&v[1], &o)) return;
    static seed seeds[64];
    size_t nseeds = make_seeds(seeds, 64);
    enum { NSRC = 16, BATCH = 64 };
    int fds[NSRC];
    for (int i = 0; i < NSRC; i++) {
        char a[32];
        snprintf(a, sizeof a, "127.0.30.%d:0", 2 + i);
        fds[i] = udp_at(a);
    }
    static uint8_t bufs[BATCH][1600];
    struct mmsghdr mm[BATCH];
    struct iovec iov[BATCH];
    uint64_t total = (uint64_t)mb << 20, bytes = 0, warm = total / 10, sent[2] = {0, 0};
    uint64_t dropped[2] = {0, 0};
    if (warm < (5u << 20)) warm = total / 2;
    long rss0 = -1, rss_start = tl_rss_kb();
    uint64_t t0 = tl_now_ms(), waited = 0;
    uint8_t drain[2048];
    for (uint64_t round = 0; bytes < total; round++) {
        int which = (int)(round & 1);
        int s = (int)(round / 2 % NSRC);
        for (int k = 0; k < BATCH; k++) {
            size_t len = mutate(bufs[k], seeds, nseeds);
            iov[k] = (struct iovec){bufs[k], len};
            mm[k].msg_hdr = (struct msghdr){.msg_name = &v[which].sa,
                                            .msg_namelen = sizeof(struct sockaddr_in),
                                            .msg_iov = &iov[k], .msg_iovlen = 1};
        }
        int r = sendmmsg(fds[s], mm, BATCH, 0);
        for (int k = 0; k < r; k++) bytes += iov[k].iov_len;
        if (r > 0) sent[which] += (uint64_t)r;
        while (recv(fds[s], drain, sizeof drain, MSG_DONTWAIT) >= 0) {} /* replies */
        /* Keep the servers' queues short, so what is sent is mostly what they handle: wait
         * while more than 2048 are in flight and the servers are still taking them (once
         * they stop, the rest was dropped by the kernel). */
        if (round % 8 == 7) {
            uint64_t until = tl_now_ms() + 20, prev = 0;
            for (;;) {
                rndz_server_stats a, b;
                rndz_server_stats_get(v[0].s, &a);
                rndz_server_stats_get(v[1].s, &b);
                uint64_t left0 = sent[0] - a.udp_rx - dropped[0];
                uint64_t left1 = sent[1] - b.udp_rx - dropped[1];
                if (left0 < 2048 && left1 < 2048) break;
                if ((prev == a.udp_rx + b.udp_rx && waited) || tl_now_ms() >= until) {
                    dropped[0] = sent[0] - a.udp_rx; /* what is left will not come */
                    dropped[1] = sent[1] - b.udp_rx;
                    break;
                }
                prev = a.udp_rx + b.udp_rx;
                waited++;
                usleep(200);
            }
        }
        if (rss0 < 0 && bytes >= warm) rss0 = tl_rss_kb();
    }
    uint64_t ms = tl_now_ms() - t0;
    tl_sleep_ms(tl_ms(200));
    long rss1 = tl_rss_kb();
    rndz_server_stats a = stats(&v[0]), b = stats(&v[1]);
    tl_note("soak: %.1f MB in %llu datagrams in %.1f s; servers took %llu + %llu (no secret: "
            "%llu malformed, %llu peers; secret: %llu auth failed, %llu replayed); RSS %ld KiB "
            "at start, %ld KiB after the first %llu MB, %ld KiB at the end",
            (double)bytes / 1048576.0, (unsigned long long)(sent[0] + sent[1]), ms / 1000.0,
            (unsigned long long)a.udp_rx, (unsigned long long)b.udp_rx,
            (unsigned long long)a.udp_malformed, (unsigned long long)a.udp_peers,
            (unsigned long long)b.auth_failed, (unsigned long long)b.auth_replayed, rss_start,
            rss0, (unsigned long long)(warm >> 20), rss1);
    CHECK(bytes >= total);
    CHECK(a.udp_rx > (sent[0] * 9) / 10 && b.udp_rx > (sent[1] * 9) / 10);
    CHECK(rss1 - rss0 < 8 * 1024); /* flat: the tables were full after the warm-up */
    CHECK(b.auth_failed > 0);
    /* both still answer, correctly */
    int x = udp_at("127.0.0.1:0"), y = udp_at("127.0.0.1:0");
    uint8_t m[256];
    for (int i = 0; i < 2; i++) {
        while (recv(x, drain, sizeof drain, MSG_DONTWAIT) >= 0) {}
        const char *signer = i ? "after" : NULL;
        size_t n = req(m, sizeof m, "after", F_PING, NULL, signer, NULL, 0);
        send_to(x, m, n, &v[i]);
        expect_rsp(x, RNDZ_RSP_PONG, "after", NULL, NULL);
        n = req(m, sizeof m, "asker", F_ISYNC, "after", i ? "asker" : NULL, NULL, 0);
        send_to(y, m, n, &v[i]);
        expect_rsp(x, RNDZ_RSP_FSYNC, "after", "asker", NULL);
    }
    close(x);
    close(y);
    for (int i = 0; i < NSRC; i++) close(fds[i]);
    tl_server_stop(&v[0]);
    tl_server_stop(&v[1]);
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "soak") == 0) {
        tl_init("test_security", 3600);
        soak(atol(argv[2]));
        return tl_finish();
    }
    tl_init("test_security", 120);
    test_v1_without_secret();
    test_no_auth_bye_and_hijack();
    test_auth_without_credential();
    test_auth_hijack();
    test_auth_clients();
    test_id_limit();
    test_flood();
    test_idle_tcp();
    test_tcp_caps();
    long mb = 50 / (long)tl_slow();
    soak(mb < 2 ? 2 : mb);
    return tl_finish();
}
