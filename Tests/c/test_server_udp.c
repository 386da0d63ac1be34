/* test_server_udp.c: the UDP server's v1 semantics on real loopback sockets, raw sockets that
 * speak v1 exactly as the captured vectors show (as an rndz 0.1.5 listener against our server
 * and connector, and as an rndz 0.1.5 server against our listener and connector), and the
 * connector's errors. */
#include "testlib.h"

#include <errno.h>
#include <stdatomic.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QUIET_MS tl_ms(100) /* how long "nothing arrives" is watched (client side) */

/* --- helpers ----------------------------------------------------------------------------- */

typedef struct srv {
    tl_server t;  /* t.text: where IPv4 clients send; t.text6: IPv6 clients */
    long sent;    /* datagrams the test sent to it */
    long want_tx; /* datagrams it should have sent */
} srv;

static void srv_options(rndz_server_options *o, const char *listen) {
    tl_server_options(o, listen);
    o->max_id_len = UINT32_MAX; /* v1 has no id limit (a 1500-byte Ping below); the default
                                 * limit is tested in test_security */
}

static bool srv_open(srv *v, const char *listen, uint32_t expiry_ms, int ipv6_only) {
    memset(v, 0, sizeof *v);
    rndz_server_options o;
    srv_options(&o, listen);
    o.ipv6_only = ipv6_only;
    if (expiry_ms) o.udp_expiry_ms = expiry_ms;
    return tl_server_start(&v->t, &o);
}

/* A server on [::] (dual stack, or ipv6_only), where this host has IPv6 loopback. */
static bool srv_open_v6(srv *v, const char *name, int ipv6_only) {
    if (!tl_have_ipv6()) {
        tl_note("SKIP %s: no IPv6 loopback", name);
        return false;
    }
    tl_case("%s", name);
    return srv_open(v, "[::]:0", 0, ipv6_only);
}

static void srv_close(srv *v) { tl_server_stop(&v->t); }

static void srv_send(srv *v, int fd, const void *data, size_t len, int family) {
    long n = tl_sendto(fd, data, len, family == AF_INET6 ? v->t.text6 : v->t.text);
    CHECK_EQ_INT(n, (long)len);
    v->sent++;
}

/* Receive one datagram and compare it byte for byte; the source port must be `from_port`. */
static bool expect_bytes(int fd, const uint8_t *want, size_t wlen, int from_port) {
    uint8_t buf[2048];
    struct sockaddr_storage from;
    long n = tl_recv_wait(fd, buf, sizeof buf, &from, tl_ms(1000));
    if (!CHECK(n >= 0)) return false;
    bool ok = CHECK_EQ_MEM(buf, (size_t)n, want, wlen);
    if (from_port) ok &= CHECK_EQ_INT(tl_addr_port(&from), from_port);
    return ok;
}

static bool expect_vector(int fd, const char *name, int from_port) {
    const tl_vector *v = tl_vector_get(name);
    return expect_bytes(fd, v->bytes, v->len, from_port);
}

/* Expect the message tl_v1_bytes(id, field, peer, addr). */
static bool expect_msg(int fd, const char *id, int field, const char *peer, const char *addr,
                       int from_port) {
    uint8_t want[512];
    size_t n = tl_v1_bytes(want, sizeof want, id, field, peer, addr);
    return expect_bytes(fd, want, n, from_port);
}

/* A v1 message built by hand (field numbers from the brief). */
static size_t msg(uint8_t *out, const char *id, int field, const char *peer, const char *addr) {
    return tl_v1_bytes(out, 512, id, field, peer, addr);
}
enum { F_PING = 2, F_ISYNC = 3, F_FSYNC = 4, F_RSYNC = 5, F_BYE = 6 };       /* Request */
enum { F_PONG = 2, F_REDIRECT = 3, F_RFSYNC = 4 };                         /* Response */

/* The server's answer on fd: exactly these bytes / this vector / this message (checked as
 * expect_* do), counted as one datagram it sent. */
static bool reply_bytes(srv *v, int fd, const uint8_t *want, size_t wlen) {
    v->want_tx++;
    return expect_bytes(fd, want, wlen, v->t.port);
}

static bool reply_vector(srv *v, int fd, const char *name) {
    v->want_tx++;
    return expect_vector(fd, name, v->t.port);
}

static bool reply_msg(srv *v, int fd, const char *id, int field, const char *peer,
                      const char *addr) {
    v->want_tx++;
    return expect_msg(fd, id, field, peer, addr, v->t.port);
}

/* Send vector `name` from fd. */
static void send_vector(srv *v, int fd, const char *name) {
    const tl_vector *t = tl_vector_get(name);
    srv_send(v, fd, t->bytes, t->len, AF_INET);
}

/* Send tl_v1_bytes(id, field, peer) from fd. */
static void send_msg(srv *v, int fd, const char *id, int field, const char *peer, int family) {
    uint8_t b[512];
    srv_send(v, fd, b, msg(b, id, field, peer, NULL), family);
}

/* A Ping of `size` bytes (a 2-byte id length, then id bytes `fill`), into b. */
static size_t big_ping(uint8_t *b, size_t size, char fill) {
    size_t idl = size - 5;
    b[0] = 0x0a;
    b[1] = (uint8_t)(idl | 0x80);
    b[2] = (uint8_t)(idl >> 7);
    memset(b + 3, fill, idl);
    b[3 + idl] = 0x12;
    b[4 + idl] = 0x00;
    return size;
}

/* Register `id` from fd with a Ping; the Pong has the same bytes, from the server's port. */
static bool ping_as(srv *v, int fd, const char *id, int family) {
    uint8_t b[512];
    size_t n = msg(b, id, F_PING, NULL, NULL);
    srv_send(v, fd, b, n, family);
    return reply_bytes(v, fd, b, n);
}

/* Wait until the server has handled everything sent before: a fresh socket pings and waits
 * for the Pong (datagrams to one socket are handled in order). */
static void barrier(srv *v) {
    int fd = tl_udp_socket(AF_INET, 1000);
    ping_as(v, fd, "barrier", AF_INET);
    close(fd);
    /* The server has several workers (SO_REUSEPORT sockets, one per core by default), and
     * the kernel spreads client sockets over them: datagrams from different sockets are not
     * handled in the order they were sent. So also wait until the server has taken in every
     * datagram sent, and give the worker that took the last ones a moment to handle them. */
    rndz_server_stats st;
    uint64_t t0 = tl_now_ms();
    while (rndz_server_stats_get(v->t.s, &st) == 0 && (long)st.udp_rx < v->sent &&
           tl_now_ms() - t0 < tl_ms(1000))
        tl_sleep_ms(1);
    tl_sleep_ms(tl_ms(3));
}

/* Nothing was sent to fd: after a barrier, anything the server sent before is queued. */
static bool quiet(srv *v, int fd) {
    barrier(v);
    return CHECK(!tl_pending(fd));
}

/* The counters are updated after the datagram is sent: poll until the server has counted
 * everything the test saw (or a second passed), then return them. */
static rndz_server_stats settled_stats(srv *v) {
    rndz_server_stats st;
    uint64_t t0 = tl_now_ms();
    do {
        memset(&st, 0xee, sizeof st);
        CHECK_RC(rndz_server_stats_get(v->t.s, &st), 0);
        if ((long)st.udp_rx == v->sent && (long)st.udp_tx == v->want_tx) break;
        tl_sleep_ms(2);
    } while (tl_now_ms() - t0 < tl_ms(1000));
    /* then until two reads 5 ms apart agree (the last handler finishes its bookkeeping) */
    for (int i = 0; i < 200; i++) {
        rndz_server_stats again;
        tl_sleep_ms(5);
        CHECK_RC(rndz_server_stats_get(v->t.s, &again), 0);
        bool same = memcmp(&again, &st, sizeof st) == 0;
        st = again;
        if (same) break;
    }
    return st;
}

static rndz_server_stats stats(srv *v) { return settled_stats(v); }

static const char *text_of(int fd, char *buf) { return tl_local_text(fd, buf, RNDZ_ADDRSTRLEN); }

/* --- server semantics -------------------------------------------------------------------- */

static void test_server_basic(void) {
    tl_case("server basic");
    tl_mark mark = tl_mark_now(false);
    srv v;
    if (!srv_open(&v, "127.0.0.1:0", 0, 0)) return;
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    CHECK_RC(rndz_server_local_addr(v.t.s, &ss, &sl), 0);
    CHECK_EQ_INT(ss.ss_family, AF_INET);
    CHECK_EQ_INT(sl, sizeof(struct sockaddr_in));
    char t[RNDZ_ADDRSTRLEN];
    CHECK_EQ_STR(tl_addr_text(&ss, t, sizeof t), v.t.text);

    /* ping -> pong, exactly the captured bytes */
    tl_case("ping/pong");
    int a = tl_udp_socket(AF_INET, 1000); /* c1 */
    send_vector(&v, a, "udp.ping");
    reply_vector(&v, a, "udp.pong");

    /* sanity of the hand-built bytes against the captures */
    tl_case("hand-built bytes");
    uint8_t b[512];
    size_t n = msg(b, "c1", F_RFSYNC, "c2", "127.0.0.1:57456");
    CHECK_EQ_MEM(b, n, tl_vector_get("udp.fsync")->bytes, tl_vector_get("udp.fsync")->len);
    n = msg(b, "c2", F_REDIRECT, "c1", "127.0.0.1:37681");
    CHECK_EQ_MEM(b, n, tl_vector_get("udp.redirect")->bytes, tl_vector_get("udp.redirect")->len);

    /* isync to a known id: the target gets Fsync{X, X's address}; X gets nothing */
    tl_case("isync known");
    int bfd = tl_udp_socket(AF_INET, 1000); /* c2 */
    send_vector(&v, bfd, "udp.isync");
    reply_msg(&v, a, "c1", F_RFSYNC, "c2", text_of(bfd, t));
    quiet(&v, bfd);

    /* isync to an unknown id: Redirect with an empty addr, exactly the capture */
    tl_case("isync unknown");
    int c = tl_udp_socket(AF_INET, 1000); /* c3 */
    send_vector(&v, c, "udp.isync.unknown");
    reply_vector(&v, c, "udp.redirect.empty");
    quiet(&v, a);

    /* rsync: the target (c2, registered by its isync) gets Redirect{c1, c1's address} */
    tl_case("rsync");
    send_vector(&v, a, "udp.rsync");
    reply_msg(&v, bfd, "c2", F_REDIRECT, "c1", text_of(a, t));
    quiet(&v, a);

    /* a ping from a new address moves the id */
    tl_case("re-register from a new address");
    int a2 = tl_udp_socket(AF_INET, 1000);
    send_vector(&v, a2, "udp.ping");
    reply_vector(&v, a2, "udp.pong");
    send_vector(&v, bfd, "udp.isync");
    reply_msg(&v, a2, "c1", F_RFSYNC, "c2", text_of(bfd, t));
    quiet(&v, a);

    /* bye forgets: o2 is known, says bye (the captured bytes), then is not found */
    tl_case("bye");
    int d = tl_udp_socket(AF_INET, 1000); /* o2 */
    int e = tl_udp_socket(AF_INET, 1000); /* asks for o2 */
    ping_as(&v, d, "o2", AF_INET);
    n = msg(b, "e1", F_ISYNC, "o2", NULL);
    srv_send(&v, e, b, n, AF_INET);
    reply_msg(&v, d, "o2", F_RFSYNC, "e1", text_of(e, t));
    send_vector(&v, d, "udp.bye");
    quiet(&v, d); /* bye has no answer */
    srv_send(&v, e, b, n, AF_INET);
    reply_msg(&v, e, "e1", F_REDIRECT, "o2", NULL);
    quiet(&v, d);

    /* the odd-input probes: exactly what the reference server answered */
    const tl_vector *vs;
    size_t nv = tl_vectors(&vs);
    for (size_t i = 0; i < nv; i++) {
        if (!vs[i].is_probe) continue;
        tl_case("probe %s", vs[i].name);
        int p = tl_udp_socket(AF_INET, 1000);
        srv_send(&v, p, vs[i].bytes, vs[i].len, AF_INET);
        if (vs[i].reply_none) {
            quiet(&v, p);
        } else {
            reply_bytes(&v, p, vs[i].reply, vs[i].reply_len);
        }
        close(p);
    }

    tl_case("stats");
    barrier(&v);
    rndz_server_stats st = stats(&v);
    CHECK_EQ_INT(st.udp_rx, v.sent);
    CHECK_EQ_INT(st.udp_tx, v.want_tx);
    CHECK_EQ_INT(st.udp_malformed, 2); /* probe.no-cmd and probe.garbage */
    CHECK_EQ_INT(st.udp_expired, 0);
    /* c1, c2, e1, "" (probe.empty-id), p1, p2, barrier; o2 left */
    CHECK_EQ_INT(st.udp_peers, 7);
    CHECK_EQ_INT(st.tcp_conns, 0);
    CHECK_EQ_INT(st.tcp_peers, 0);

    close(a);
    close(a2);
    close(bfd);
    close(c);
    close(d);
    close(e);
    srv_close(&v);
    tl_case("server basic: fds");
    tl_mark_check(&mark);
    tl_case("%s", "");
}

static void test_server_malformed(void) {
    tl_case("malformed");
    srv v;
    if (!srv_open(&v, "127.0.0.1:0", 0, 0)) return;
    int x = tl_udp_socket(AF_INET, 1000);
    uint8_t b[4096];
    long n;
    long bad = 0;
    static const char *const bad_hex[] = {
        "ff ff ff",                   /* garbage */
        "0a 02 70 33",                /* no command */
        "0a 02 c3 28 12 00",          /* id not UTF-8 */
        "0a 02 63 31 10 00",          /* ping with the wrong wire type */
        "0a 02 63 31 1a 04 0a 02 63", /* truncated */
        "0a 01 61 22 00",             /* a Request Fsync: not something a server takes */
        "",                           /* empty datagram */
    };
    for (size_t i = 0; i < sizeof bad_hex / sizeof bad_hex[0]; i++) {
        n = tl_hex(bad_hex[i], b, sizeof b);
        srv_send(&v, x, b, (size_t)n, AF_INET);
        bad++;
    }
    /* oversize: a Ping whose id makes the datagram 1501 and 4000 bytes */
    for (size_t size = 1501; size <= 4000; size += 2499) {
        srv_send(&v, x, b, big_ping(b, size, 'x'), AF_INET);
        bad++;
    }
    quiet(&v, x); /* nothing answered */
    /* still serving: a ping from the same socket */
    n = (long)msg(b, "still", F_PING, NULL, NULL);
    srv_send(&v, x, b, (size_t)n, AF_INET);
    reply_bytes(&v, x, b, (size_t)n);
    /* and a 1500-byte ping is fine */
    srv_send(&v, x, b, big_ping(b, 1500, 'y'), AF_INET);
    reply_bytes(&v, x, b, 1500);
    rndz_server_stats st = stats(&v);
    CHECK_EQ_INT(st.udp_malformed, bad);
    CHECK_EQ_INT(st.udp_rx, v.sent);
    CHECK_EQ_INT(st.udp_tx, v.want_tx);
    close(x);
    srv_close(&v);
    tl_case("%s", "");
}

static void test_server_peers_and_bye(void) {
    tl_case("peers count and bye");
    srv v;
    if (!srv_open(&v, "127.0.0.1:0", 0, 0)) return;
    int x = tl_udp_socket(AF_INET, 1000), y = tl_udp_socket(AF_INET, 1000);
    uint8_t b[64];
    ping_as(&v, x, "a", AF_INET);
    ping_as(&v, y, "b", AF_INET);
    CHECK_EQ_INT(stats(&v).udp_peers, 2);
    size_t n = msg(b, "a", F_BYE, NULL, NULL);
    srv_send(&v, x, b, n, AF_INET);
    n = msg(b, "nobody", F_BYE, NULL, NULL); /* bye of an unknown id: nothing happens */
    srv_send(&v, x, b, n, AF_INET);
    /* a bye from another address is refused (rndz 0.1.5 honoured it: anyone could drop any
     * id); from b's own address it is honoured */
    n = msg(b, "b", F_BYE, NULL, NULL);
    srv_send(&v, x, b, n, AF_INET);
    barrier(&v);
    CHECK_EQ_INT(stats(&v).udp_peers, 2); /* "b" and "barrier" */
    srv_send(&v, y, b, n, AF_INET);
    barrier(&v);
    CHECK_EQ_INT(stats(&v).udp_peers, 1); /* only "barrier" */
    CHECK(!tl_pending(x));
    CHECK(!tl_pending(y));
    close(x);
    close(y);
    srv_close(&v);
    tl_case("%s", "");
}

static void test_server_expiry(void) {
    tl_case("expiry");
    const unsigned expiry = tl_ms(300), step = tl_ms(60);
    srv v;
    if (!srv_open(&v, "127.0.0.1:0", expiry, 0)) return;
    int e = tl_udp_socket(AF_INET, 1000), k = tl_udp_socket(AF_INET, 1000),
        q = tl_udp_socket(AF_INET, 1000);
    uint8_t b[64], ping_k[64], isync[64];
    char t[RNDZ_ADDRSTRLEN];
    size_t n = msg(b, "e1", F_PING, NULL, NULL);
    size_t nk = msg(ping_k, "k1", F_PING, NULL, NULL);
    size_t ni = msg(isync, "q1", F_ISYNC, "e1", NULL);
    uint64_t t0 = tl_now_ms();
    srv_send(&v, e, b, n, AF_INET);
    reply_bytes(&v, e, b, n);
    /* Ask for e1 every step while k1 keeps pinging; e1 must vanish after `expiry`. */
    uint64_t gone_at = 0;
    uint8_t buf[512];
    while (tl_now_ms() - t0 < tl_ms(2000)) {
        srv_send(&v, k, ping_k, nk, AF_INET);
        reply_bytes(&v, k, ping_k, nk);
        uint64_t asked = tl_now_ms();
        srv_send(&v, q, isync, ni, AF_INET);
        struct sockaddr_storage from;
        long r = tl_recv_wait(q, buf, sizeof buf, &from, step);
        if (r >= 0) { /* not found */
            uint8_t want[64];
            size_t wn = msg(want, "q1", F_REDIRECT, "e1", NULL);
            CHECK_EQ_MEM(buf, (size_t)r, want, wn);
            gone_at = asked;
            v.want_tx++;
            break;
        }
        /* still known: e1 got the Fsync */
        reply_msg(&v, e, "e1", F_RFSYNC, "q1", text_of(q, t));
    }
    CHECK(gone_at != 0);
    if (gone_at) {
        tl_note("e1 expired after %llu ms (expiry %u ms)", (unsigned long long)(gone_at - t0),
                expiry);
        CHECK(gone_at - t0 >= expiry - tl_ms(60)); /* not before its time (less one step) */
        CHECK(gone_at - t0 <= expiry + tl_ms(400));
    }
    /* k1, refreshed all along, is still known */
    n = msg(b, "q1", F_ISYNC, "k1", NULL);
    srv_send(&v, q, b, n, AF_INET);
    reply_msg(&v, k, "k1", F_RFSYNC, "q1", text_of(q, t));
    rndz_server_stats st = stats(&v);
    CHECK_EQ_INT(st.udp_expired, 1);
    CHECK_EQ_INT(st.udp_peers, 2); /* k1, q1 */
    /* Without traffic everything expires (the timer runs on its own, no datagram needed) */
    uint64_t quiet_from = tl_now_ms();
    do {
        tl_sleep_ms(10);
        CHECK_RC(rndz_server_stats_get(v.t.s, &st), 0);
    } while (st.udp_peers != 0 && tl_now_ms() - quiet_from < expiry + tl_ms(1000));
    uint64_t took = tl_now_ms() - quiet_from;
    CHECK_EQ_INT(st.udp_expired, 3);
    CHECK_EQ_INT(st.udp_peers, 0);
    CHECK(took >= expiry - tl_ms(30));
    CHECK(took <= expiry + tl_ms(300));
    close(e);
    close(k);
    close(q);
    srv_close(&v);
    tl_case("%s", "");
}

/* A server on [::] serves IPv4 and IPv6 clients and writes IPv4 addresses in IPv4 form. */
static void test_server_dual_stack(void) {
    srv v;
    if (!srv_open_v6(&v, "dual stack", 0)) return;
    struct sockaddr_storage ss;
    CHECK_RC(rndz_server_local_addr(v.t.s, &ss, NULL), 0);
    CHECK_EQ_INT(ss.ss_family, AF_INET6);
    enum { A4, B4, A6 };
    static const char *const ids[] = {"a4", "b4", "a6"};
    static const int fam[] = {AF_INET, AF_INET, AF_INET6};
    int fd[3];
    for (int k = 0; k < 3; k++) fd[k] = tl_udp_socket(fam[k], 1000);
    ping_as(&v, fd[A4], ids[A4], fam[A4]);
    ping_as(&v, fd[A6], ids[A6], fam[A6]);
    static const struct {
        const char *name;
        int from, field;  /* who asks, with what */
        const char *peer; /* about whom */
        int to, rsp;      /* who gets the answer, which */
        bool found;       /* the answer names the asker, with its address in its own form */
    } cases[] = {
        {"v4 asks v4", B4, F_ISYNC, "a4", A4, F_RFSYNC, true},
        {"v4 asks v6", B4, F_ISYNC, "a6", A6, F_RFSYNC, true},
        {"v6 asks v4", A6, F_ISYNC, "a4", A4, F_RFSYNC, true},
        {"v4 rsyncs v6", A4, F_RSYNC, "a6", A6, F_REDIRECT, true},
        {"not found to v4", B4, F_ISYNC, "zz", B4, F_REDIRECT, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tl_case("dual stack: %s", cases[i].name);
        int from = cases[i].from, to = cases[i].to;
        send_msg(&v, fd[from], ids[from], cases[i].field, cases[i].peer, fam[from]);
        char t[RNDZ_ADDRSTRLEN];
        const char *addr = NULL;
        if (cases[i].found) {
            addr = text_of(fd[from], t);
            const char *form = fam[from] == AF_INET6 ? "[::1]:" : "127.0.0.1:";
            CHECK(strncmp(t, form, strlen(form)) == 0);
        }
        expect_msg(fd[to], ids[to], cases[i].rsp, cases[i].found ? ids[from] : cases[i].peer,
                   addr, v.t.port);
    }
    for (int k = 0; k < 3; k++) close(fd[k]);
    srv_close(&v);
    tl_case("%s", "");
}

static void test_server_ipv6_only(void) {
    srv v;
    if (!srv_open_v6(&v, "ipv6 only", 1)) return;
    int a4 = tl_udp_socket(AF_INET, 1000), a6 = tl_udp_socket(AF_INET6, 1000);
    uint8_t b[64];
    ping_as(&v, a6, "x6", AF_INET6);
    size_t n = msg(b, "x4", F_PING, NULL, NULL);
    tl_sendto(a4, b, n, v.t.text);
    CHECK(tl_silent(a4, QUIET_MS));
    int p = tl_udp_socket(AF_INET6, 1000);
    ping_as(&v, p, "p6", AF_INET6);
    v.want_tx = 2;
    CHECK_EQ_INT(stats(&v).udp_rx, 2); /* the IPv4 ping never reached it */
    close(p);
    close(a4);
    close(a6);
    srv_close(&v);

    tl_case("ipv6 loopback server");
    if (!srv_open(&v, "[::1]:0", 0, 0)) return;
    a6 = tl_udp_socket(AF_INET6, 1000);
    ping_as(&v, a6, "y6", AF_INET6);
    close(a6);
    srv_close(&v);
    tl_case("%s", "");
}

/* Several workers share one table: ids registered through one worker's socket are found
 * through every other, and each client gets its answers from the server's port. */
static void test_server_workers(void) {
    tl_case("workers");
    rndz_server_options o;
    srv_options(&o, "127.0.0.1:0");
    CHECK_EQ_INT(o.workers, 0);
    o.workers = 1;
    rndz_server *s1 = NULL;
    CHECK_RC(rndz_server_create(&o, &s1), 0);
    rndz_server_stats st;
    CHECK_RC(rndz_server_stats_get(s1, &st), 0);
    CHECK_EQ_INT(st.workers, 1);
    rndz_server_destroy(s1);

    enum { N = 24 };
    srv v;
    memset(&v, 0, sizeof v);
    o.workers = 4;
    if (!tl_server_start(&v.t, &o)) return;
    CHECK_RC(rndz_server_stats_get(v.t.s, &st), 0);
    CHECK_EQ_INT(st.workers, 4);
    int fd[N];
    char id[N][16], t[RNDZ_ADDRSTRLEN];
    uint8_t b[512];
    for (int i = 0; i < N; i++) {
        fd[i] = tl_udp_socket(AF_INET, 1000);
        snprintf(id[i], sizeof id[i], "w%d", i);
        ping_as(&v, fd[i], id[i], AF_INET);
    }
    /* every client asks for the next one: the Fsync reaches it, whichever worker has it */
    for (int i = 0; i < N; i++) {
        int k = (i + 1) % N;
        size_t n = msg(b, id[i], F_ISYNC, id[k], NULL);
        srv_send(&v, fd[i], b, n, AF_INET);
        tl_case("workers: %s asks for %s", id[i], id[k]);
        reply_msg(&v, fd[k], id[k], F_RFSYNC, id[i], text_of(fd[i], t));
    }
    tl_case("workers: stats");
    st = settled_stats(&v);
    CHECK_EQ_INT(st.udp_rx, v.sent);
    CHECK_EQ_INT(st.udp_tx, v.want_tx);
    CHECK_EQ_INT(st.udp_peers, N);
    /* the per-worker counters add up to the totals */
    uint64_t rx = 0, tx = 0;
    for (unsigned w = 0; w < 4; w++) {
        rndz_server_stats ws;
        CHECK_RC(rndz_server_worker_stats(v.t.s, w, &ws), 0);
        rx += ws.udp_rx;
        tx += ws.udp_tx;
    }
    CHECK_EQ_INT(rx, st.udp_rx);
    CHECK_EQ_INT(tx, st.udp_tx);
    rndz_server_stats ws;
    CHECK(rndz_server_worker_stats(v.t.s, 4, &ws) < 0);
    for (int i = 0; i < N; i++) close(fd[i]);
    srv_close(&v);
    tl_case("%s", "");
}

static int config_calls;
static int config_fail(int fd, int family, int socktype, void *user) {
    config_calls++;
    CHECK_EQ_INT(socktype, SOCK_DGRAM);
    CHECK_EQ_INT(family, AF_INET);
    CHECK(user == &config_calls);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    CHECK_EQ_INT(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
    CHECK_EQ_INT(tl_addr_port(&ss), 0); /* not bound yet */
    return -EPERM;
}

static void *stop_later(void *arg) {
    tl_sleep_ms(tl_ms(100));
    rndz_server_stop(arg);
    return NULL;
}

static void test_server_lifecycle(void) {
    tl_case("server create errors");
    tl_mark mark = tl_mark_now(true);
    rndz_server_options o;
    rndz_server_options_init(&o);
    CHECK_EQ_STR(o.listen_addr, "0.0.0.0:8888");
    CHECK_EQ_INT(o.enable_udp, 1);
    CHECK_EQ_INT(o.udp_expiry_ms, 60000);
    CHECK_EQ_INT(o.tcp_idle_ms, 30000);
    rndz_server *s = (rndz_server *)&o; /* must be reset to NULL on failure */
    o.listen_addr = "garbage";
    CHECK_RC(rndz_server_create(&o, &s), RNDZ_E_BADADDR);
    CHECK(s == NULL);
    o.listen_addr = "127.0.0.1";
    CHECK_RC(rndz_server_create(&o, &s), RNDZ_E_BADADDR);
    o.listen_addr = "localhost:0"; /* numeric only */
    CHECK_RC(rndz_server_create(&o, &s), RNDZ_E_BADADDR);
    CHECK(rndz_server_create(&o, NULL) < 0);

    tl_case("server address in use");
    srv v;
    if (srv_open(&v, "127.0.0.1:0", 0, 0)) {
        char busy[64];
        snprintf(busy, sizeof busy, "127.0.0.1:%d", v.t.port);
        o.listen_addr = busy;
        CHECK_RC(rndz_server_create(&o, &s), -EADDRINUSE);
        srv_close(&v);
    }

    tl_case("server sock_config abort");
    o.listen_addr = "127.0.0.1:0";
    o.sock_config = config_fail;
    o.sock_config_user = &config_calls;
    config_calls = 0;
    CHECK_RC(rndz_server_create(&o, &s), -EPERM);
    CHECK_EQ_INT(config_calls, 1);
    o.sock_config = NULL;

    tl_case("server run/stop on the calling thread");
    CHECK_RC(rndz_server_create(&o, &s), 0);
    pthread_t th;
    pthread_create(&th, NULL, stop_later, s);
    uint64_t t0 = tl_now_ms();
    CHECK_RC(rndz_server_run(s), 0);
    CHECK(tl_now_ms() - t0 < tl_ms(2000));
    pthread_join(th, NULL);
    rndz_server_destroy(s);

    tl_case("server destroy without start, destroy(NULL), stop twice");
    CHECK_RC(rndz_server_create(&o, &s), 0);
    rndz_server_destroy(s);
    rndz_server_destroy(NULL);
    CHECK_RC(rndz_server_create(&o, &s), 0);
    CHECK_RC(rndz_server_start(s), 0);
    CHECK(rndz_server_start(s) < 0); /* already running */
    CHECK_RC(rndz_server_stop(s), 0);
    CHECK_RC(rndz_server_stop(s), 0);
    rndz_server_destroy(s);

    tl_case("server lifecycle: nothing left behind");
    tl_mark_check(&mark);
    tl_case("%s", "");
}

/* --- a raw v1 listener against our server and our connector -------------------------- */

static void test_v1_listener_our_connector(void) {
    tl_case("v1 listener + our connector");
    tl_mark mark = tl_mark_now(false);
    srv v;
    if (!srv_open(&v, "127.0.0.1:0", 0, 0)) return;
    int l = tl_udp_socket(AF_INET, 1000); /* the rndz 0.1.5 listener, id c1 */
    const tl_vector *ping = tl_vector_get("udp.ping");
    srv_send(&v, l, ping->bytes, ping->len, AF_INET);
    expect_vector(l, "udp.pong", v.t.port);

    tl_connect_job j;
    const char *servers[] = {v.t.text};
    tl_connect_start(&j, "c2", servers, 1, "c1", tl_ms(500), tl_ms(3000));

    /* the server forwards the connector's Isync as Fsync{c2, its address} */
    uint8_t buf[2048];
    struct sockaddr_storage from;
    long n = tl_recv_wait(l, buf, sizeof buf, &from, tl_ms(2000));
    CHECK(n > 0);
    rndz_msg m;
    char caddr[RNDZ_ADDRSTRLEN] = "";
    if (n > 0 && CHECK_RC(rndz_msg_decode(buf, (size_t)n, 1, &m), 0) &&
        CHECK_EQ_INT(m.cmd, RNDZ_RSP_FSYNC) && CHECK(m.addr_len < sizeof caddr)) {
        memcpy(caddr, m.addr, m.addr_len);
        caddr[m.addr_len] = 0;
        uint8_t want[512];
        size_t wn = msg(want, "c1", F_RFSYNC, "c2", caddr);
        CHECK(tl_v1_with_ext(buf, (size_t)n, want, wn)); /* the connector's extension fields
                                                          * ride along; a v1 listener skips them */
        CHECK(strncmp(caddr, "127.0.0.1:", 10) == 0);
        CHECK_EQ_INT(tl_addr_port(&from), v.t.port);
    }
    /* the v1 listener answers: Rsync to the server, the same bytes to the peer */
    const tl_vector *rsync = tl_vector_get("udp.rsync");
    const tl_vector *punch = tl_vector_get("udp.rsync.punch");
    srv_send(&v, l, rsync->bytes, rsync->len, AF_INET);
    if (caddr[0]) tl_sendto(l, punch->bytes, punch->len, caddr);

    int fd = tl_connect_join(&j);
    CHECK(fd >= 0);
    char t[RNDZ_ADDRSTRLEN];
    if (fd >= 0) {
        char lt[RNDZ_ADDRSTRLEN];
        CHECK_EQ_STR(tl_addr_text(&j.peer, t, sizeof t), text_of(l, lt));
        CHECK_EQ_INT(j.peer_len, sizeof(struct sockaddr_in));
        /* the socket is bound to the port that asked, and connected to the peer */
        CHECK_EQ_STR(text_of(fd, t), caddr);
        struct sockaddr_storage pa;
        socklen_t pl = sizeof pa;
        CHECK_EQ_INT(getpeername(fd, (struct sockaddr *)&pa, &pl), 0);
        CHECK_EQ_INT(tl_addr_port(&pa), tl_port(l));
        /* data both ways */
        CHECK_EQ_INT(send(fd, "hello", 5, 0), 5);
        int skipped = 0;
        n = tl_recv_data(l, buf, sizeof buf, &from, tl_ms(1000), &skipped);
        CHECK_EQ_MEM(buf, n > 0 ? (size_t)n : 0, "hello", 5);
        CHECK_EQ_STR(tl_addr_text(&from, t, sizeof t), caddr);
        CHECK_EQ_INT(tl_sendto_sa(l, "world", 5, &from), 5);
        skipped = 0;
        n = tl_recv_data(fd, buf, sizeof buf, NULL, tl_ms(1000), &skipped);
        CHECK_EQ_MEM(buf, n > 0 ? (size_t)n : 0, "world", 5);
        if (skipped) tl_note("note: the connector's fd delivered %d protocol packet(s)", skipped);
        close(fd);
    }
    close(l);
    srv_close(&v);
    tl_mark_check(&mark);
    tl_case("%s", "");
}

/* --- a raw v1 server against our listener and our connector ------------------------- */

/* Receive at the raw server; answer the listener's pings (exact bytes) with Pong and count
 * them; return the first datagram that is not a ping from the listener. */
typedef struct listener_pings {
    int port;   /* the listener's */
    int *count; /* may be NULL */
} listener_pings;

static bool answer_ping(int s, const uint8_t *buf, size_t n, const struct sockaddr_storage *from,
                        void *user) {
    listener_pings *lp = user;
    const tl_vector *ping = tl_vector_get("udp.ping"), *pong = tl_vector_get("udp.pong");
    /* the v1 bytes, or them followed by extension fields (the first pings ask what the server
     * sees, nat.h: field 23, which v1 skips) */
    if (tl_addr_port(from) != lp->port || !tl_v1_with_ext(buf, n, ping->bytes, ping->len))
        return false;
    if (lp->count) (*lp->count)++;
    tl_sendto_sa(s, pong->bytes, pong->len, from);
    return true;
}

static long v1srv_recv(int s, int listener_port, uint8_t *buf, size_t cap,
                       struct sockaddr_storage *from, unsigned timeout_ms, int *pings) {
    listener_pings lp = {listener_port, pings};
    return tl_recv_skip(s, buf, cap, from, timeout_ms, answer_ping, &lp);
}

static void test_v1_server_our_clients(void) {
    tl_case("v1 server + our listener and connector");
    tl_mark mark = tl_mark_now(true);
    int s = tl_udp_socket(AF_INET, 1000); /* the rndz 0.1.5 server */
    char stext[RNDZ_ADDRSTRLEN], t[RNDZ_ADDRSTRLEN];
    text_of(s, stext);
    const char *servers[] = {stext};
    rndz_client_options o;
    tl_client_options(&o, "c1", servers, 1);
    o.keepalive_ms = tl_ms(200);
    rndz_udp_listener *l = NULL;
    int rc = rndz_udp_listener_create(&o, &l);
    if (!CHECK_RC(rc, 0)) {
        close(s);
        return;
    }
    int lfd = rndz_udp_listener_fd(l);
    CHECK(lfd >= 0);
    struct sockaddr_storage la;
    socklen_t lal = 0;
    CHECK_RC(rndz_udp_listener_local_addr(l, &la, &lal), 0);
    int lport = tl_addr_port(&la);
    CHECK(lport > 0);
    CHECK_EQ_INT(tl_port(lfd), lport); /* the peer socket shares the port */

    /* the first ping: the captured bytes (with the NAT check's question, a field v1 skips);
     * not answered yet -> not registered */
    uint8_t buf[2048];
    struct sockaddr_storage from;
    long n = tl_recv_wait(s, buf, sizeof buf, &from, tl_ms(1000));
    const tl_vector *ping = tl_vector_get("udp.ping"), *pong = tl_vector_get("udp.pong");
    CHECK(tl_v1_with_ext(buf, n > 0 ? (size_t)n : 0, ping->bytes, ping->len));
    CHECK_EQ_INT(tl_addr_port(&from), lport);
    CHECK_RC(rndz_udp_listener_wait_registered(l, 50), RNDZ_E_TIMEDOUT);
    tl_sendto_sa(s, pong->bytes, pong->len, &from);
    CHECK_RC(rndz_udp_listener_wait_registered(l, tl_ms(2000)), 0);

    /* keepalive: pings keep coming, every keepalive_ms +-20% */
    tl_case("v1 server: keepalive");
    int pings = 0;
    uint64_t t0 = tl_now_ms();
    n = v1srv_recv(s, lport, buf, sizeof buf, &from, tl_ms(700), &pings);
    CHECK_EQ_INT(n, -1); /* nothing but pings */
    uint64_t dt = tl_now_ms() - t0;
    tl_note("keepalive: %d pings in %llu ms at keepalive_ms %u", pings, (unsigned long long)dt,
            o.keepalive_ms);
    CHECK(pings >= 2); /* 700 ms / (200 ms +-20%) = 2.9 .. 4.4 */
    CHECK(pings <= 5);

    /* the connector's isync: exactly the captured bytes */
    tl_case("v1 server: connect");
    tl_connect_job j;
    tl_connect_start(&j, "c2", servers, 1, "c1", tl_ms(500), tl_ms(3000));
    n = v1srv_recv(s, lport, buf, sizeof buf, &from, tl_ms(2000), NULL);
    const tl_vector *isync = tl_vector_get("udp.isync");
    CHECK(tl_v1_with_ext(buf, n > 0 ? (size_t)n : 0, isync->bytes, isync->len));
    struct sockaddr_storage caddr = from;
    char ctext[RNDZ_ADDRSTRLEN];
    tl_addr_text(&caddr, ctext, sizeof ctext);
    CHECK(tl_addr_port(&caddr) != lport);
    /* forward it to the listener as Fsync{c2, connector's address} */
    uint8_t m[512];
    size_t mn = msg(m, "c1", F_RFSYNC, "c2", ctext);
    struct sockaddr_storage lsa;
    char ltext[RNDZ_ADDRSTRLEN];
    snprintf(ltext, sizeof ltext, "127.0.0.1:%d", lport);
    rndz_addr_parse(ltext, &lsa, NULL);
    tl_sendto_sa(s, m, mn, &lsa);
    /* the listener answers with Rsync{c2}, exactly the captured bytes (isyncs resent by the
     * connector in the meantime are skipped) */
    const tl_vector *rsync = tl_vector_get("udp.rsync");
    for (;;) {
        n = v1srv_recv(s, lport, buf, sizeof buf, &from, tl_ms(1000), NULL);
        if (n > 0 && tl_addr_port(&from) == tl_addr_port(&caddr)) continue;
        break;
    }
    CHECK_EQ_MEM(buf, n > 0 ? (size_t)n : 0, rsync->bytes, rsync->len);
    CHECK_EQ_INT(tl_addr_port(&from), lport);
    /* redirect the connector to the listener */
    mn = msg(m, "c2", F_REDIRECT, "c1", ltext);
    tl_sendto_sa(s, m, mn, &caddr);
    int fd = tl_connect_join(&j);
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK_EQ_STR(tl_addr_text(&j.peer, t, sizeof t), ltext);
        CHECK_EQ_STR(text_of(fd, t), ctext);
        CHECK_EQ_INT(send(fd, "hello", 5, 0), 5);
        int skipped = 0;
        n = tl_recv_data(lfd, buf, sizeof buf, &from, tl_ms(1000), &skipped);
        CHECK_EQ_MEM(buf, n > 0 ? (size_t)n : 0, "hello", 5);
        CHECK_EQ_STR(tl_addr_text(&from, t, sizeof t), ctext);
        CHECK_EQ_INT(sendto(lfd, "world", 5, 0, (struct sockaddr *)&from,
                            from.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                       : sizeof(struct sockaddr_in)),
                     5);
        skipped = 0;
        n = tl_recv_data(fd, buf, sizeof buf, NULL, tl_ms(1000), &skipped);
        CHECK_EQ_MEM(buf, n > 0 ? (size_t)n : 0, "world", 5);
        close(fd);
    }

    /* destroy: Bye, exactly the v1 bytes, from the listener's port */
    tl_case("v1 server: bye");
    rndz_udp_listener_destroy(l);
    n = v1srv_recv(s, lport, buf, sizeof buf, &from, tl_ms(1000), NULL);
    uint8_t bye[64];
    size_t bn = msg(bye, "c1", F_BYE, NULL, NULL);
    CHECK_EQ_MEM(buf, n > 0 ? (size_t)n : 0, bye, bn);
    CHECK_EQ_INT(tl_addr_port(&from), lport);
    CHECK(tl_silent(s, QUIET_MS)); /* and then nothing: no thread left pinging */
    close(s);
    tl_mark_check(&mark);
    tl_case("%s", "");
}

/* --- connector errors -------------------------------------------------------------------- */

/* A raw server on a thread: answers every Isync with "not found", or stays silent. */
typedef struct raw_srv {
    int fd;
    bool answer;
    atomic_bool stop;
    int isyncs, bad;
    pthread_t th;
    char text[RNDZ_ADDRSTRLEN];
} raw_srv;

static void *raw_srv_run(void *arg) {
    raw_srv *r = arg;
    uint8_t buf[2048];
    struct sockaddr_storage from;
    while (!atomic_load(&r->stop)) {
        long n = tl_recv_wait(r->fd, buf, sizeof buf, &from, 20);
        if (n < 0) continue;
        rndz_msg m;
        if (rndz_msg_decode(buf, (size_t)n, 0, &m) != 0 || m.cmd != RNDZ_REQ_ISYNC) {
            r->bad++;
            continue;
        }
        /* exactly Isync{target} from id "cx" */
        uint8_t want[512];
        char target[300];
        snprintf(target, sizeof target, "%.*s", (int)m.peer_id_len, m.peer_id);
        size_t wn = msg(want, "cx", F_ISYNC, target, NULL);
        if (!tl_v1_with_ext(buf, (size_t)n, want, wn)) r->bad++; /* + our extension fields */
        r->isyncs++;
        if (r->answer) {
            size_t rn = msg(want, "cx", F_REDIRECT, target, NULL);
            tl_sendto_sa(r->fd, want, rn, &from);
        }
    }
    return NULL;
}

static void raw_srv_start(raw_srv *r, bool answer) {
    memset(r, 0, sizeof *r);
    r->fd = tl_udp_socket(AF_INET, 100);
    r->answer = answer;
    text_of(r->fd, r->text);
    pthread_create(&r->th, NULL, raw_srv_run, r);
}

static void raw_srv_stop(raw_srv *r) {
    atomic_store(&r->stop, true);
    pthread_join(r->th, NULL);
    close(r->fd);
}

static int connect_now(const char *id, const char *const *servers, size_t n, const char *target,
                       uint32_t round_ms, uint32_t timeout_ms, uint64_t *elapsed) {
    tl_connect_job j;
    tl_connect_start(&j, id, servers, n, target, round_ms, timeout_ms);
    int rc = tl_connect_join(&j);
    if (elapsed) *elapsed = j.elapsed_ms;
    if (rc >= 0) close(rc);
    return rc;
}

/* The connector believes only its servers, and only answers about its target. */
static void test_connector_answers(void) {
    tl_case("connector: answers it must ignore");
    tl_mark mark = tl_mark_now(false);
    int s1 = tl_udp_socket(AF_INET, 1000), s2 = tl_udp_socket(AF_INET, 1000);
    int x = tl_udp_socket(AF_INET, 1000), l = tl_udp_socket(AF_INET, 1000);
    char t1[RNDZ_ADDRSTRLEN], t2[RNDZ_ADDRSTRLEN], xt[RNDZ_ADDRSTRLEN], lt[RNDZ_ADDRSTRLEN];
    text_of(s1, t1);
    text_of(s2, t2);
    text_of(x, xt);
    text_of(l, lt);
    const char *servers[] = {t1, t2};
    tl_connect_job j;
    tl_connect_start(&j, "cx", servers, 2, "c1", tl_ms(1000), tl_ms(3000));
    uint8_t buf[512], m[512];
    struct sockaddr_storage c1from, c2from;
    long n = tl_recv_wait(s1, buf, sizeof buf, &c1from, tl_ms(1000));
    size_t mn = msg(m, "cx", F_ISYNC, "c1", NULL);
    CHECK(tl_v1_with_ext(buf, n > 0 ? (size_t)n : 0, m, mn));
    n = tl_recv_wait(s2, buf, sizeof buf, &c2from, tl_ms(1000));
    CHECK(tl_v1_with_ext(buf, n > 0 ? (size_t)n : 0, m, mn));
    CHECK_EQ_INT(tl_addr_port(&c1from), tl_addr_port(&c2from)); /* one port asks both */
    /* a Redirect from someone who is not a server: ignored */
    mn = msg(m, "cx", F_REDIRECT, "c1", xt);
    tl_sendto_sa(x, m, mn, &c1from);
    /* a Redirect about another target, from a server: ignored */
    mn = msg(m, "cx", F_REDIRECT, "someone-else", xt);
    tl_sendto_sa(s1, m, mn, &c1from);
    /* a Redirect with an address that does not parse: ignored */
    mn = msg(m, "cx", F_REDIRECT, "c1", "not an address");
    tl_sendto_sa(s1, m, mn, &c1from);
    /* a Pong and an Fsync from a server: not answers */
    mn = msg(m, "cx", F_PONG, NULL, NULL);
    tl_sendto_sa(s1, m, mn, &c1from);
    mn = msg(m, "cx", F_RFSYNC, "c1", xt);
    tl_sendto_sa(s1, m, mn, &c1from);
    /* server 1 does not know c1; server 2 does */
    mn = msg(m, "cx", F_REDIRECT, "c1", NULL);
    tl_sendto_sa(s1, m, mn, &c1from);
    tl_sleep_ms(tl_ms(20));
    mn = msg(m, "cx", F_REDIRECT, "c1", lt);
    tl_sendto_sa(s2, m, mn, &c2from);
    int fd = tl_connect_join(&j);
    CHECK(fd >= 0);
    char t[RNDZ_ADDRSTRLEN];
    if (fd >= 0) {
        CHECK_EQ_STR(tl_addr_text(&j.peer, t, sizeof t), lt);
        CHECK(j.elapsed_ms < tl_ms(900)); /* no need for a second round */
        CHECK_EQ_INT(send(fd, "data", 4, 0), 4);
        n = tl_recv_data(l, buf, sizeof buf, NULL, tl_ms(1000), NULL);
        CHECK_EQ_MEM(buf, n > 0 ? (size_t)n : 0, "data", 4);
        CHECK(!tl_pending(x));
        close(fd);
    }
    close(s1);
    close(s2);
    close(x);
    close(l);
    tl_mark_check(&mark);
    tl_case("%s", "");
}

/* Our listener with two v1 servers: it pings both; a bad Fsync is dropped without an Rsync. */
static void test_listener_two_servers(void) {
    tl_case("listener: two v1 servers");
    tl_mark mark = tl_mark_now(false);
    int s1 = tl_udp_socket(AF_INET, 1000), s2 = tl_udp_socket(AF_INET, 1000);
    char t1[RNDZ_ADDRSTRLEN], t2[RNDZ_ADDRSTRLEN];
    const char *servers[] = {text_of(s1, t1), text_of(s2, t2)};
    rndz_client_options o;
    tl_client_options(&o, "c1", servers, 2);
    rndz_udp_listener *l = NULL;
    if (!CHECK_RC(rndz_udp_listener_create(&o, &l), 0)) return;
    struct sockaddr_storage la;
    CHECK_RC(rndz_udp_listener_local_addr(l, &la, NULL), 0);
    int lport = tl_addr_port(&la);
    const tl_vector *ping = tl_vector_get("udp.ping"), *pong = tl_vector_get("udp.pong");
    uint8_t buf[512];
    struct sockaddr_storage f1, f2;
    long n = tl_recv_wait(s1, buf, sizeof buf, &f1, tl_ms(1000));
    CHECK(tl_v1_with_ext(buf, n > 0 ? (size_t)n : 0, ping->bytes, ping->len));
    long n1 = n;
    n = tl_recv_wait(s2, buf, sizeof buf, &f2, tl_ms(1000));
    /* v1 with our take-over question only (3 bytes), except to the server our id ranks first
     * (srvset.h): the NAT check asks that one alone */
    CHECK(tl_v1_with_ext(buf, n > 0 ? (size_t)n : 0, ping->bytes, ping->len));
    long plain = (long)ping->len + 3;
    CHECK((n1 == plain) != (n == plain));
    CHECK(n1 > plain || n > plain);
    CHECK_EQ_INT(tl_addr_port(&f1), lport); /* both from the shared port */
    CHECK_EQ_INT(tl_addr_port(&f2), lport);
    tl_sendto_sa(s2, pong->bytes, pong->len, &f2); /* only server 2 answers */
    CHECK_RC(rndz_udp_listener_wait_registered(l, tl_ms(1000)), 0);

    /* Fsync with addresses that cannot be used: no Rsync, no crash */
    tl_case("listener: bad Fsync");
    static const char *const bad_addrs[] = {"garbage", "", "1.2.3.4", "[::1]:99999"};
    uint8_t m[512];
    for (size_t i = 0; i < sizeof bad_addrs / sizeof bad_addrs[0]; i++) {
        size_t mn = msg(m, "c1", F_RFSYNC, "c9", bad_addrs[i]);
        tl_sendto_sa(s2, m, mn, &f2);
    }
    /* then a good one is still answered */
    int peer = tl_udp_socket(AF_INET, 1000);
    char pt[RNDZ_ADDRSTRLEN];
    size_t mn = msg(m, "c1", F_RFSYNC, "c8", text_of(peer, pt));
    tl_sendto_sa(s2, m, mn, &f2);
    uint8_t want[64];
    size_t wn = msg(want, "c1", F_RSYNC, "c8", NULL);
    for (;;) { /* skip pings: with no answer from server 2's keepalive they keep coming */
        n = tl_recv_wait(s2, buf, sizeof buf, NULL, tl_ms(1000));
        if (n == (long)ping->len && memcmp(buf, ping->bytes, ping->len) == 0) continue;
        break;
    }
    CHECK_EQ_MEM(buf, n > 0 ? (size_t)n : 0, want, wn); /* the Rsync is for c8, not c9 */
    n = tl_recv_wait(peer, buf, sizeof buf, NULL, tl_ms(1000)); /* and the punch */
    CHECK_EQ_MEM(buf, n > 0 ? (size_t)n : 0, want, wn);
    rndz_udp_listener_destroy(l);
    /* both servers get the Bye */
    size_t bn = msg(want, "c1", F_BYE, NULL, NULL);
    for (int k = 0; k < 2; k++) {
        int sfd = k ? s2 : s1;
        bool got = false;
        while (!got && (n = tl_recv_wait(sfd, buf, sizeof buf, NULL, tl_ms(500))) >= 0)
            got = (size_t)n == bn && memcmp(buf, want, bn) == 0; /* pings may come first */
        tl_case("listener: bye to server %d", k + 1);
        CHECK(got);
    }
    close(peer);
    close(s1);
    close(s2);
    tl_mark_check(&mark);
    tl_case("%s", "");
}

static void test_connector_errors(void) {
    tl_mark mark = tl_mark_now(false);
    uint64_t el;

    tl_case("connector: not found on our server");
    srv v;
    if (srv_open(&v, "127.0.0.1:0", 0, 0)) {
        const char *servers[] = {v.t.text};
        CHECK_RC(connect_now("cx", servers, 1, "nobody", tl_ms(300), tl_ms(3000), &el),
                 RNDZ_E_NOTFOUND);
        CHECK(el < tl_ms(1000)); /* the answer ends it, not the timeout */
        srv_close(&v);
    }

    tl_case("connector: not found on every v1 server");
    raw_srv r1, r2;
    raw_srv_start(&r1, true);
    raw_srv_start(&r2, true);
    {
        const char *servers[] = {r1.text, r2.text};
        CHECK_RC(connect_now("cx", servers, 2, "nobody", tl_ms(300), tl_ms(3000), &el),
                 RNDZ_E_NOTFOUND);
        CHECK(el < tl_ms(1000));
    }
    raw_srv_stop(&r1);
    raw_srv_stop(&r2);
    CHECK(r1.isyncs >= 1 && r2.isyncs >= 1);
    CHECK_EQ_INT(r1.bad + r2.bad, 0);

    tl_case("connector: silent server -> timed out");
    raw_srv sil;
    raw_srv_start(&sil, false);
    {
        const char *servers[] = {sil.text};
        CHECK_RC(connect_now("cx", servers, 1, "c1", tl_ms(100), tl_ms(350), &el),
                 RNDZ_E_TIMEDOUT);
        tl_note("timed out after %llu ms (timeout %u)", (unsigned long long)el, tl_ms(350));
        CHECK(el >= tl_ms(350) - 5);
        CHECK(el < tl_ms(350) + tl_ms(300));
    }
    raw_srv_stop(&sil);
    CHECK(sil.isyncs >= 3); /* resent every round: at 0, 100, 200, 300 ms */
    CHECK(sil.isyncs <= 5);
    CHECK_EQ_INT(sil.bad, 0);

    tl_case("connector: one says not found, one is silent -> timed out");
    raw_srv_start(&r1, true);
    raw_srv_start(&sil, false);
    {
        const char *servers[] = {r1.text, sil.text};
        CHECK_RC(connect_now("cx", servers, 2, "c1", tl_ms(100), tl_ms(250), &el),
                 RNDZ_E_TIMEDOUT);
    }
    raw_srv_stop(&r1);
    raw_srv_stop(&sil);
    CHECK(sil.isyncs >= 2);

    tl_case("connector: bad options");
    const char *one[] = {"127.0.0.1:9"};
    CHECK_RC(connect_now("", one, 1, "c1", 0, tl_ms(200), NULL), RNDZ_E_BADID);
    char longid[300];
    memset(longid, 'a', 256);
    longid[256] = 0;
    CHECK_RC(connect_now(longid, one, 1, "c1", 0, tl_ms(200), NULL), RNDZ_E_BADID);
    CHECK_RC(connect_now("\xff\xfe", one, 1, "c1", 0, tl_ms(200), NULL), RNDZ_E_BADID);
    CHECK_RC(connect_now("cx", one, 1, "", 0, tl_ms(200), NULL), RNDZ_E_BADID);
    CHECK_RC(connect_now("cx", one, 1, longid, 0, tl_ms(200), NULL), RNDZ_E_BADID);
    CHECK_RC(connect_now("cx", one, 0, "c1", 0, tl_ms(200), NULL), RNDZ_E_NOSERVER);
    const char *garbage[] = {"garbage"};
    CHECK_RC(connect_now("cx", garbage, 1, "c1", 0, tl_ms(200), NULL), RNDZ_E_BADADDR);
    rndz_client_options o;
    rndz_client_options_init(&o);
    CHECK_EQ_INT(o.keepalive_ms, 10000);
    CHECK_EQ_INT(o.round_ms, 1000);
    CHECK_EQ_INT(o.timeout_ms, 10000);
    o.id = "cx";
    CHECK_RC(rndz_udp_connect(&o, "c1", NULL, NULL), RNDZ_E_NOSERVER); /* servers NULL */
    o.servers = one;
    o.n_servers = 1;
    CHECK_RC(rndz_udp_connect(&o, NULL, NULL, NULL), RNDZ_E_BADID);
    rndz_udp_listener *l = (rndz_udp_listener *)&o;
    o.id = "";
    CHECK_RC(rndz_udp_listener_create(&o, &l), RNDZ_E_BADID);
    CHECK(l == NULL);
    o.id = NULL;
    CHECK_RC(rndz_udp_listener_create(&o, &l), RNDZ_E_BADID);
    o.id = "cx";
    o.n_servers = 0;
    CHECK_RC(rndz_udp_listener_create(&o, &l), RNDZ_E_NOSERVER);
    rndz_udp_listener_destroy(NULL);
    tl_case("connector errors: fds");
    tl_mark_check(&mark);
    tl_case("%s", "");
}

int main(void) {
    tl_init("test_server_udp", 30);
    test_server_basic();
    test_server_malformed();
    test_server_peers_and_bye();
    test_server_expiry();
    test_server_dual_stack();
    test_server_ipv6_only();
    test_server_workers();
    test_server_lifecycle();
    test_v1_listener_our_connector();
    test_v1_server_our_clients();
    test_connector_answers();
    test_listener_two_servers();
    test_connector_errors();
    return tl_finish();
}
