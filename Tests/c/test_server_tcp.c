/* test_server_tcp.c: the TCP server, listener and connector on real loopback sockets.
 *
 * Raw TCP sockets speak the captured v1 bytes (the tcp.* vectors) against our server, in
 * whole, split and merged frames; a raw v1 listener and a raw v1 connector pair with our
 * clients; a raw v1 server serves our listener and connector; ownership of registrations,
 * idle timeout, oversize frames, Bye, a server restart, 10,000 registered connections, and
 * running out of descriptors. */
#include "testlib.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* --- raw TCP helpers -------------------------------------------------------------------- */

static int tcp_socket(int family, const struct sockaddr_storage *bind_to, bool reuse) {
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("socket");
        exit(2);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (reuse) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    }
    if (bind_to &&
        bind(fd, (const struct sockaddr *)bind_to,
             bind_to->ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                           : sizeof(struct sockaddr_in6)) < 0) {
        perror("bind");
        exit(2);
    }
    tl_set_timeout(fd, tl_ms(3000));
    return fd;
}

/* A raw TCP socket bound to 127.0.0.1:0 (shareable if reuse); *where gets its address. */
static int tcp_bound(struct sockaddr_storage *where, bool reuse) {
    rndz_addr_parse("127.0.0.1:0", where, NULL);
    int fd = tcp_socket(AF_INET, where, reuse);
    socklen_t sl = sizeof *where;
    getsockname(fd, (struct sockaddr *)where, &sl);
    return fd;
}

static socklen_t sa_len(const struct sockaddr_storage *ss) {
    return ss->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
}

/* Connect a raw TCP socket to `to`, optionally from `from` (shared port). */
static int tcp_connect(const struct sockaddr_storage *to, const struct sockaddr_storage *from) {
    int fd = tcp_socket(to->ss_family, from, from != NULL);
    if (connect(fd, (const struct sockaddr *)to, sa_len(to)) < 0) {
        close(fd);
        return -errno;
    }
    return fd;
}

static void send_hex(int fd, const char *hex) {
    uint8_t b[2048];
    long n = tl_hex(hex, b, sizeof b);
    CHECK(n > 0);
    CHECK_EQ_INT(send(fd, b, (size_t)n, MSG_NOSIGNAL), n);
}

static void send_vec(int fd, const char *name) {
    const tl_vector *v = tl_vector_get(name);
    CHECK_EQ_INT(send(fd, v->bytes, v->len, MSG_NOSIGNAL), (long)v->len);
}

static void send_frame(int fd, const rndz_msg *m) {
    uint8_t b[2 + RNDZ_MAX_MSG];
    int n = rndz_frame_encode(m, b, sizeof b);
    CHECK(n > 0);
    CHECK_EQ_INT(send(fd, b, (size_t)n, MSG_NOSIGNAL), n);
}

/* Read exactly n bytes (with the socket's timeout). Returns n, 0 at EOF, -1 on error. */
static long read_full(int fd, uint8_t *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, buf + got, n - got, 0);
        if (r == 0) return 0;
        if (r < 0) return -1;
        got += (size_t)r;
    }
    return (long)n;
}

/* Read one frame; returns the body length, 0 at EOF (or an empty body), -1 on timeout. */
static long read_frame(int fd, uint8_t *body, size_t cap) {
    uint8_t h[2];
    long r = read_full(fd, h, 2);
    if (r <= 0) return r < 0 ? -1 : 0;
    size_t n = (size_t)h[0] << 8 | h[1];
    if (n > cap) return -1;
    if (n == 0) return 0;
    return read_full(fd, body, n) == (long)n ? (long)n : -1;
}

/* Expect the next frame to be exactly the bytes of vector `name` (header included). */
static void expect_vec(int fd, const char *name) {
    const tl_vector *v = tl_vector_get(name);
    uint8_t buf[2048];
    long n = read_full(fd, buf, v->len);
    CHECK_EQ_INT(n, (long)v->len);
    if (n == (long)v->len) CHECK_EQ_MEM(buf, v->len, v->bytes, v->len);
}

/* Expect the next frame's body to be the body of vector `name`, followed only by our
 * extension fields (which a v1 peer skips). */
static void expect_vec_ext(int fd, const char *name) {
    const tl_vector *v = tl_vector_get(name);
    uint8_t buf[2048];
    long n = read_frame(fd, buf, sizeof buf);
    CHECK(n > 0);
    if (n > 0) CHECK(tl_v1_with_ext(buf, (size_t)n, v->bytes + 2, v->len - 2));
}

/* Read a frame and decode it as a Response. */
static bool read_response(int fd, uint8_t *buf, size_t cap, rndz_msg *m) {
    long n = read_frame(fd, buf, cap);
    if (n <= 0) return false;
    return rndz_msg_decode(buf, (size_t)n, 1, m) == 0;
}

/* True if the peer closed the connection (EOF or reset) within ms. */
static bool closed_within(int fd, unsigned ms) {
    tl_set_timeout(fd, ms);
    uint8_t b[64];
    for (;;) {
        ssize_t r = recv(fd, b, sizeof b, 0);
        if (r == 0) return true;
        if (r < 0) return errno == ECONNRESET;
    }
}

/* Our server on `addr` (idle timeout idle_ms, 0: the default); false if it did not start. */
static bool start_server(tl_server *v, const char *addr, uint32_t idle_ms) {
    rndz_server_options o;
    tl_server_options(&o, addr);
    if (idle_ms) o.tcp_idle_ms = idle_ms;
    /* every client here is 127.0.0.1 (10,000 at once below); the per-address cap is tested in
     * test_security */
    o.max_tcp_conns_per_ip = UINT32_MAX;
    return tl_server_start(v, &o);
}

static rndz_server_stats stats(tl_server *v) { return tl_server_stats(v); }

/* Poll the server's stats until it has `peers` TCP ids registered or ms pass. */
static bool wait_peers(tl_server *v, uint64_t peers, unsigned ms) {
    return tl_server_await(v, TL_STAT(tcp_peers), peers, false, ms).tcp_peers == peers;
}

/* --- server semantics with the captured bytes -------------------------------------------- */

static void test_vectors_against_server(void) {
    tl_case("tcp vectors against our server");
    tl_server v;
    if (!start_server(&v, "127.0.0.1:0", 0)) return;

    int c1 = tcp_connect(&v.sa, NULL);
    CHECK(c1 >= 0);
    send_vec(c1, "tcp.ping");
    expect_vec(c1, "tcp.pong");

    /* c3 asks for nobody: the exact not-found bytes */
    int c3 = tcp_connect(&v.sa, NULL);
    send_vec(c3, "tcp.isync.unknown");
    expect_vec(c3, "tcp.redirect.empty");

    /* c2 asks for c1: c1 gets Fsync{c2, c2's address}; c2 gets nothing yet */
    int c2 = tcp_connect(&v.sa, NULL);
    send_vec(c2, "tcp.isync");
    uint8_t buf[2048];
    rndz_msg m;
    CHECK(read_response(c1, buf, sizeof buf, &m));
    CHECK_EQ_INT(m.cmd, RNDZ_RSP_FSYNC);
    CHECK_EQ_INT(m.id_len, 0); /* over TCP, responses carry no id */
    CHECK_EQ_SN(m.peer_id, m.peer_id_len, "c2");
    char c2addr[RNDZ_ADDRSTRLEN];
    tl_local_text(c2, c2addr, sizeof c2addr);
    CHECK_EQ_SN(m.addr, m.addr_len, c2addr);
    CHECK(tl_silent(c2, 100));

    /* c1 answers Rsync{c2}: c2 gets Redirect{c1, c1's address} */
    send_vec(c1, "tcp.rsync");
    CHECK(read_response(c2, buf, sizeof buf, &m));
    CHECK_EQ_INT(m.cmd, RNDZ_RSP_REDIRECT);
    CHECK_EQ_SN(m.peer_id, m.peer_id_len, "c1");
    char c1addr[RNDZ_ADDRSTRLEN];
    tl_local_text(c1, c1addr, sizeof c1addr);
    CHECK_EQ_SN(m.addr, m.addr_len, c1addr);

    close(c1);
    close(c2);
    close(c3);
    tl_server_stop(&v);
}

static void test_split_and_merged_frames(void) {
    tl_case("split and merged frames");
    tl_server v;
    if (!start_server(&v, "127.0.0.1:0", 0)) return;
    int c = tcp_connect(&v.sa, NULL);
    const tl_vector *ping = tl_vector_get("tcp.ping");
    /* one byte at a time */
    for (size_t i = 0; i < ping->len; i++) {
        CHECK_EQ_INT(send(c, ping->bytes + i, 1, MSG_NOSIGNAL), 1);
        tl_sleep_ms(5);
    }
    expect_vec(c, "tcp.pong");
    /* three frames in one write, the last one cut in the middle, then its rest */
    uint8_t three[64];
    size_t n = 0;
    for (int k = 0; k < 3; k++) {
        memcpy(three + n, ping->bytes, ping->len);
        n += ping->len;
    }
    CHECK_EQ_INT(send(c, three, n - 3, MSG_NOSIGNAL), (long)(n - 3));
    expect_vec(c, "tcp.pong");
    expect_vec(c, "tcp.pong");
    CHECK(tl_silent(c, 50));
    CHECK_EQ_INT(send(c, three + n - 3, 3, MSG_NOSIGNAL), 3);
    expect_vec(c, "tcp.pong");
    close(c);
    tl_server_stop(&v);
}

static void test_bad_frames(void) {
    tl_server v;
    if (!start_server(&v, "127.0.0.1:0", 0)) return;

    tl_case("oversize frame closes the connection");
    int c = tcp_connect(&v.sa, NULL);
    send_vec(c, "tcp.ping");
    expect_vec(c, "tcp.pong");
    CHECK(wait_peers(&v, 1, 1000));
    send_hex(c, "05 dd"); /* 1501 bytes announced */
    CHECK(closed_within(c, 2000));
    CHECK(wait_peers(&v, 0, 1000)); /* and its registration went with it */
    CHECK(stats(&v).tcp_malformed >= 1);
    close(c);

    tl_case("undecodable body closes the connection");
    c = tcp_connect(&v.sa, NULL);
    send_hex(c, "00 03 ff ff ff");
    CHECK(closed_within(c, 2000));
    close(c);

    tl_case("a 1500-byte frame is accepted (and dropped as undecodable)");
    c = tcp_connect(&v.sa, NULL);
    uint8_t big[2 + 1500];
    big[0] = 0x05;
    big[1] = 0xdc;
    memset(big + 2, 0, 1500); /* field 0: invalid, so the connection goes, but as a body */
    CHECK_EQ_INT(send(c, big, sizeof big, MSG_NOSIGNAL), (long)sizeof big);
    CHECK(closed_within(c, 2000));
    close(c);

    tl_case("Bye drops the connection and the id");
    c = tcp_connect(&v.sa, NULL);
    send_vec(c, "tcp.ping");
    expect_vec(c, "tcp.pong");
    CHECK(wait_peers(&v, 1, 1000));
    rndz_msg bye = {.cmd = RNDZ_REQ_BYE, .id = "c1", .id_len = 2};
    send_frame(c, &bye);
    CHECK(closed_within(c, 2000));
    CHECK(wait_peers(&v, 0, 1000));
    close(c);

    tl_case("a silent half-open connection does not stall others");
    int mute = tcp_connect(&v.sa, NULL);
    send_hex(mute, "00 10 0a"); /* a frame that never completes */
    c = tcp_connect(&v.sa, NULL);
    send_vec(c, "tcp.ping");
    expect_vec(c, "tcp.pong");
    close(c);
    close(mute);
    tl_server_stop(&v);
}

static void test_idle_timeout(void) {
    tl_case("idle timeout (shortened to 300 ms)");
    tl_server v;
    if (!start_server(&v, "127.0.0.1:0", 300)) return;
    int c = tcp_connect(&v.sa, NULL);
    send_vec(c, "tcp.ping");
    expect_vec(c, "tcp.pong");
    /* still there while it talks */
    for (int i = 0; i < 3; i++) {
        tl_sleep_ms(150);
        send_vec(c, "tcp.ping");
        expect_vec(c, "tcp.pong");
    }
    uint64_t t0 = tl_now_ms();
    CHECK(closed_within(c, 3000));
    uint64_t took = tl_now_ms() - t0;
    CHECK(took >= 250);
    CHECK(took < tl_ms(1500));
    CHECK(wait_peers(&v, 0, 1000));
    close(c);
    tl_server_stop(&v);
}

static void test_ownership(void) {
    tl_case("a registration belongs to the connection that made it last");
    tl_server v;
    if (!start_server(&v, "127.0.0.1:0", 0)) return;
    int a = tcp_connect(&v.sa, NULL), b = tcp_connect(&v.sa, NULL);
    send_vec(a, "tcp.ping"); /* c1 on a */
    expect_vec(a, "tcp.pong");
    send_vec(b, "tcp.ping"); /* c1 reconnects on b */
    expect_vec(b, "tcp.pong");
    close(a); /* the old connection goes: c1 must stay registered (on b) */
    tl_sleep_ms(100);
    CHECK(wait_peers(&v, 1, 1000));
    int c2 = tcp_connect(&v.sa, NULL);
    send_vec(c2, "tcp.isync");
    uint8_t buf[2048];
    rndz_msg m;
    CHECK(read_response(b, buf, sizeof buf, &m)); /* forwarded down b, not a */
    CHECK_EQ_INT(m.cmd, RNDZ_RSP_FSYNC);
    close(b);
    CHECK(wait_peers(&v, 1, 1000)); /* c2 (registered by its Isync) stays */
    int c3 = tcp_connect(&v.sa, NULL);
    send_vec(c3, "tcp.isync.unknown");
    expect_vec(c3, "tcp.redirect.empty");
    rndz_msg isync = {.cmd = RNDZ_REQ_ISYNC, .id = "c3", .id_len = 2, .peer_id = "c1",
                      .peer_id_len = 2};
    send_frame(c3, &isync);
    CHECK(read_response(c3, buf, sizeof buf, &m));
    CHECK_EQ_INT(m.cmd, RNDZ_RSP_REDIRECT);
    CHECK_EQ_INT(m.addr_len, 0); /* c1 is gone with b */
    close(c2);
    close(c3);
    tl_server_stop(&v);
}

/* --- pairing ------------------------------------------------------------------------------ */

static rndz_client_options client_opts(const char *id, const char **servers, size_t n) {
    rndz_client_options o;
    tl_client_options(&o, id, servers, n);
    o.timeout_ms = tl_ms(5000);
    return o;
}

/* Data both ways over a connected pair. */
static void exchange(int x, int y);

/* The connector got fd (or an error): the listener accepts its side, they exchange data, both
 * are closed. */
static void accept_and_talk(rndz_tcp_listener *l, int fd) {
    CHECK(fd >= 0);
    int a = rndz_tcp_listener_accept(l, tl_ms(3000), NULL, NULL);
    CHECK(a >= 0);
    if (fd >= 0 && a >= 0) exchange(fd, a);
    if (fd >= 0) close(fd);
    if (a >= 0) close(a);
}

/* Data both ways over a connected pair. */
static void exchange(int x, int y) {
    tl_set_timeout(x, tl_ms(3000));
    tl_set_timeout(y, tl_ms(3000));
    CHECK_EQ_INT(send(x, "hello", 5, MSG_NOSIGNAL), 5);
    char buf[16] = {0};
    CHECK_EQ_INT(read_full(y, (uint8_t *)buf, 5), 5);
    CHECK_EQ_STR(buf, "hello");
    CHECK_EQ_INT(send(y, "world", 5, MSG_NOSIGNAL), 5);
    memset(buf, 0, sizeof buf);
    CHECK_EQ_INT(read_full(x, (uint8_t *)buf, 5), 5);
    CHECK_EQ_STR(buf, "world");
}


static void test_pair(const char *listen, const char *label) {
    tl_case("TCP pairing through our server, %s", label);
    tl_server v;
    if (!start_server(&v, listen, 0)) return;
    const char *servers[] = {v.text};
    rndz_client_options lo = client_opts("L", servers, 1);
    rndz_tcp_listener *l = tl_tcp_listener(&lo);
    rndz_client_options co = client_opts("C", servers, 1);
    struct sockaddr_storage peer, apeer;
    int fd = rndz_tcp_connect(&co, "L", &peer, NULL);
    CHECK(fd >= 0);
    struct sockaddr_storage laddr;
    rndz_tcp_listener_local_addr(l, &laddr, NULL);
    CHECK_EQ_INT(tl_addr_port(&peer), tl_addr_port(&laddr));
    int afd = rndz_tcp_listener_accept(l, tl_ms(3000), &apeer, NULL);
    CHECK(afd >= 0);
    if (fd >= 0 && afd >= 0) {
        /* the accepted peer is the connector's local port, the one it asked from */
        struct sockaddr_storage cl;
        socklen_t cll = sizeof cl;
        getsockname(fd, (struct sockaddr *)&cl, &cll);
        CHECK_EQ_INT(tl_addr_port(&apeer), tl_addr_port(&cl));
        exchange(fd, afd);
    }
    if (fd >= 0) close(fd);
    if (afd >= 0) close(afd);

    tl_case("TCP errors, %s", label);
    CHECK_RC(rndz_tcp_connect(&co, "nobody", NULL, NULL), RNDZ_E_NOTFOUND);
    CHECK_RC(rndz_tcp_listener_accept(l, 50, NULL, NULL), RNDZ_E_TIMEDOUT);

    /* an id registered over the other transport: a hint, not just "not found" */
    tl_case("other transport, %s", label);
    CHECK_RC(rndz_udp_connect(&co, "L", NULL, NULL), RNDZ_E_TRANSPORT);
    rndz_client_options uo = client_opts("U", servers, 1);
    rndz_udp_listener *ul = NULL;
    CHECK_RC(rndz_udp_listener_create(&uo, &ul), 0);
    if (ul) {
        CHECK_RC(rndz_udp_listener_wait_registered(ul, tl_ms(3000)), 0);
        CHECK_RC(rndz_tcp_connect(&co, "U", NULL, NULL), RNDZ_E_TRANSPORT);
        rndz_udp_listener_destroy(ul);
    }
    CHECK_RC(rndz_udp_connect(&co, "nobody", NULL, NULL), RNDZ_E_NOTFOUND);

    /* close wakes a waiting accept */
    tl_case("close wakes accept, %s", label);
    CHECK_RC(rndz_tcp_listener_close(l), 0);
    CHECK_RC(rndz_tcp_listener_accept(l, UINT32_MAX, NULL, NULL), RNDZ_E_CLOSED);
    rndz_tcp_listener_destroy(l);
    tl_server_stop(&v);
}

static void test_connect_timeout(void) {
    tl_case("TCP connect to a silent server times out");
    /* a listening socket that never answers: connect succeeds, no Redirect comes */
    struct sockaddr_storage any;
    int ls = tcp_bound(&any, false);
    CHECK_EQ_INT(listen(ls, 4), 0);
    char text[RNDZ_ADDRSTRLEN];
    tl_local_text(ls, text, sizeof text);
    const char *servers[] = {text};
    rndz_client_options co = client_opts("C", servers, 1);
    co.timeout_ms = 300;
    uint64_t t0 = tl_now_ms();
    CHECK_RC(rndz_tcp_connect(&co, "L", NULL, NULL), RNDZ_E_TIMEDOUT);
    uint64_t took = tl_now_ms() - t0;
    CHECK(took >= 280 && took < tl_ms(2000));
    close(ls);
}

/* A raw v1 TCP listener (what rndz 0.1.5 does): ping from the shared port, listen on it,
 * answer Fsync with Rsync (and a SYN toward the peer). Our connector must reach it. */
static void test_v1_listener_with_our_connector(void) {
    tl_case("raw v1 TCP listener, our connector");
    tl_server v;
    if (!start_server(&v, "127.0.0.1:0", 0)) return;
    struct sockaddr_storage local;
    int ls = tcp_bound(&local, true);
    CHECK_EQ_INT(listen(ls, 8), 0);
    int srv = tcp_connect(&v.sa, &local);
    CHECK(srv >= 0);
    send_vec(srv, "tcp.ping"); /* c1 */
    expect_vec(srv, "tcp.pong");

    const char *servers[] = {v.text};
    tl_tcp_job j = {.o = client_opts("c2", servers, 1), .target = "c1"};
    tl_tcp_job_run(&j);
    uint8_t buf[2048];
    rndz_msg m;
    long fn = read_frame(srv, buf, sizeof buf);
    CHECK(fn > 0 && rndz_msg_decode(buf, (size_t)fn, 1, &m) == 0);
    CHECK_EQ_INT(m.cmd, RNDZ_RSP_FSYNC);
    CHECK_EQ_SN(m.peer_id, m.peer_id_len, "c2");
    /* The connector's RTT to the server rides along as field 19 (tag 0x98 0x01, a varint of
     * at least 1 ms), for our listener's coordinated SYN; this v1 listener skips it. */
    const uint8_t *t19 = fn > 0 ? memmem(buf, (size_t)fn, "\x98\x01", 2) : NULL;
    CHECK(t19 && t19 + 2 < buf + fn && t19[2] >= 1);
    send_vec(srv, "tcp.rsync"); /* Rsync{c2} from c1: the captured bytes */
    tl_set_timeout(ls, tl_ms(3000));
    struct sockaddr_storage from;
    socklen_t fl = sizeof from;
    int a = accept(ls, (struct sockaddr *)&from, &fl);
    CHECK(a >= 0);
    tl_tcp_job_join(&j);
    CHECK(j.rc >= 0);
    if (a >= 0 && j.rc >= 0) exchange(j.rc, a);
    if (a >= 0) close(a);
    if (j.rc >= 0) close(j.rc);
    close(srv);
    close(ls);
    tl_server_stop(&v);
}

/* A raw v1 TCP connector against our listener: Isync, Redirect, connect from the same port. */
static void test_v1_connector_with_our_listener(void) {
    tl_case("raw v1 TCP connector, our listener");
    tl_server v;
    if (!start_server(&v, "127.0.0.1:0", 0)) return;
    const char *servers[] = {v.text};
    rndz_client_options lo = client_opts("c1", servers, 1);
    rndz_tcp_listener *l = tl_tcp_listener(&lo);
    struct sockaddr_storage local;
    int srv = tcp_bound(&local, true);
    CHECK_EQ_INT(connect(srv, (struct sockaddr *)&v.sa, sa_len(&v.sa)), 0);
    send_vec(srv, "tcp.isync"); /* c2 asks for c1 */
    uint8_t buf[2048];
    rndz_msg m;
    CHECK(read_response(srv, buf, sizeof buf, &m));
    CHECK_EQ_INT(m.cmd, RNDZ_RSP_REDIRECT);
    CHECK_EQ_SN(m.peer_id, m.peer_id_len, "c1");
    char at[RNDZ_ADDRSTRLEN] = {0};
    memcpy(at, m.addr, m.addr_len < sizeof at - 1 ? m.addr_len : sizeof at - 1);
    struct sockaddr_storage peer;
    CHECK_RC(rndz_addr_parse(at, &peer, NULL), 0);
    int fd = -1;
    for (int i = 0; i < 20 && fd < 0; i++) { /* as v1 would, but retry a refused race */
        fd = tcp_connect(&peer, &local);
        if (fd < 0) tl_sleep_ms(50);
    }
    accept_and_talk(l, fd);
    close(srv);
    rndz_tcp_listener_destroy(l);
    tl_server_stop(&v);
}

/* A raw v1 TCP server (the captured bytes) serving our listener and our connector. */
static void test_v1_server_with_our_clients(void) {
    tl_case("raw v1 TCP server, our listener and connector");
    struct sockaddr_storage sa;
    int ls = tcp_bound(&sa, false);
    CHECK_EQ_INT(listen(ls, 8), 0);
    char st[RNDZ_ADDRSTRLEN];
    rndz_addr_format((struct sockaddr *)&sa, st, sizeof st);
    const char *servers[] = {st};
    rndz_client_options lo = client_opts("c1", servers, 1);
    rndz_tcp_listener *l = NULL;
    CHECK_RC(rndz_tcp_listener_create(&lo, &l), 0);
    struct sockaddr_storage lfrom, cfrom;
    socklen_t fl = sizeof lfrom;
    tl_set_timeout(ls, tl_ms(3000));
    int lc = accept(ls, (struct sockaddr *)&lfrom, &fl);
    CHECK(lc >= 0);
    if (lc < 0) return;
    tl_set_timeout(lc, tl_ms(3000));
    expect_vec_ext(lc, "tcp.ping");
    send_vec(lc, "tcp.pong");
    CHECK_RC(rndz_tcp_listener_wait_registered(l, tl_ms(3000)), 0);

    tl_tcp_job j = {.o = client_opts("c2", servers, 1), .target = "c1"};
    tl_tcp_job_run(&j);
    fl = sizeof cfrom;
    int cc = accept(ls, (struct sockaddr *)&cfrom, &fl);
    CHECK(cc >= 0);
    tl_set_timeout(cc, tl_ms(3000));
    expect_vec_ext(cc, "tcp.isync"); /* v1's bytes, then our candidates and session */
    char caddr[RNDZ_ADDRSTRLEN], laddr[RNDZ_ADDRSTRLEN];
    rndz_addr_format((struct sockaddr *)&cfrom, caddr, sizeof caddr);
    rndz_addr_format((struct sockaddr *)&lfrom, laddr, sizeof laddr);
    rndz_msg f = {.cmd = RNDZ_RSP_FSYNC, .peer_id = "c2", .peer_id_len = 2, .addr = caddr,
                  .addr_len = strlen(caddr)};
    send_frame(lc, &f);
    expect_vec(lc, "tcp.rsync"); /* our listener answers with exactly v1's bytes */
    rndz_msg r = {.cmd = RNDZ_RSP_REDIRECT, .peer_id = "c1", .peer_id_len = 2, .addr = laddr,
                  .addr_len = strlen(laddr)};
    send_frame(cc, &r);
    accept_and_talk(l, tl_tcp_job_join(&j));
    close(cc);
    close(lc);
    close(ls);
    rndz_tcp_listener_destroy(l);
}

static void test_server_restart(void) {
    tl_case("server restart: the listener registers again and a new connect works");
    tl_server v;
    if (!start_server(&v, "127.0.0.1:0", 0)) return;
    char st[RNDZ_ADDRSTRLEN]; /* v is started again below; this stays */
    snprintf(st, sizeof st, "%s", v.text);
    const char *servers[] = {st};
    rndz_client_options lo = client_opts("L", servers, 1);
    rndz_tcp_listener *l = tl_tcp_listener(&lo);
    CHECK(wait_peers(&v, 1, 1000));
    tl_server_stop(&v);
    tl_sleep_ms(200);
    /* same address and port */
    if (!start_server(&v, st, 0)) {
        rndz_tcp_listener_destroy(l);
        return;
    }
    CHECK_EQ_STR(v.text, st);
    uint64_t t0 = tl_now_ms();
    CHECK(wait_peers(&v, 1, tl_ms(5000)));
    tl_note("listener registered again %llu ms after the restart",
            (unsigned long long)(tl_now_ms() - t0));
    rndz_client_options co = client_opts("C", servers, 1);
    accept_and_talk(l, rndz_tcp_connect(&co, "L", NULL, NULL));
    rndz_tcp_listener_destroy(l);
    tl_server_stop(&v);
}

/* TCP_RTO_MAX_MS of a socket, or -1 where the kernel has no such option (before 6.15). */
static int rto_max_of(int fd) {
    int v = 0;
    socklen_t vl = sizeof v;
    return getsockopt(fd, IPPROTO_TCP, 44 /* TCP_RTO_MAX_MS */, &v, &vl) == 0 ? v : -1;
}

static void test_connect_info_and_rto_cap(void) {
    tl_case("rndz_tcp_connect_info; tcp_rto_max_ms on the connections handed over");
    tl_server v;
    if (!start_server(&v, "127.0.0.1:0", 0)) return;
    const char *servers[] = {v.text};
    rndz_client_options bad = client_opts("L", servers, 1);
    rndz_tcp_listener *l = NULL;
    bad.tcp_rto_max_ms = 999; /* below the kernel's floor: refused up front */
    CHECK_RC(rndz_tcp_listener_create(&bad, &l), -EINVAL);
    bad.tcp_rto_max_ms = 120001;
    CHECK_RC(rndz_tcp_connect(&bad, "L", NULL, NULL), -EINVAL);

    rndz_client_options lo = client_opts("L", servers, 1);
    lo.tcp_rto_max_ms = 2000;
    l = tl_tcp_listener(&lo);
    for (int keep = 0; keep < 2; keep++) {
        rndz_client_options co = client_opts("C", servers, 1);
        co.tcp_rto_max_ms = keep ? 5000 : 0;
        rndz_peer_info info;
        memset(&info, 0xa5, sizeof info);
        uint64_t t0 = tl_now_ms();
        int fd = rndz_tcp_connect_info(&co, "L", &info);
        uint64_t took = tl_now_ms() - t0;
        CHECK(fd >= 0);
        int afd = rndz_tcp_listener_accept(l, tl_ms(3000), NULL, NULL);
        CHECK(afd >= 0);
        struct sockaddr_storage laddr;
        rndz_tcp_listener_local_addr(l, &laddr, NULL);
        CHECK_EQ_INT(info.addr.ss_family, AF_INET);
        CHECK_EQ_INT(tl_addr_port(&info.addr), tl_addr_port(&laddr));
        CHECK_EQ_INT(info.verified, 1);
        CHECK_EQ_INT(info.advertised, 0); /* the address the server saw answered first */
        CHECK_EQ_INT(info.lan, 0);        /* loopback is not a LAN address */
        CHECK(info.elapsed_ms <= took);
        CHECK(info.rtt_ms >= 1 && info.rtt_ms < 1000); /* rounded up: loopback gives 1 */
        CHECK_EQ_INT(info.id[0], 0);
        int cap = fd >= 0 ? rto_max_of(fd) : -1, acap = afd >= 0 ? rto_max_of(afd) : -1;
        if (cap < 0) {
            tl_note("this kernel has no TCP_RTO_MAX_MS: the cap is not checked");
        } else {
            /* connector: its option, or the kernel default back; listener: its option */
            int dflt = 120000;
            FILE *f = fopen("/proc/sys/net/ipv4/tcp_rto_max_ms", "r");
            if (f) {
                if (fscanf(f, "%d", &dflt) != 1) dflt = 120000;
                fclose(f);
            }
            CHECK_EQ_INT(cap, keep ? 5000 : dflt);
            CHECK_EQ_INT(acap, 2000);
        }
        if (fd >= 0 && afd >= 0) exchange(fd, afd);
        if (fd >= 0) close(fd);
        if (afd >= 0) close(afd);
    }
    rndz_tcp_listener_destroy(l);
    tl_server_stop(&v);
}

/* --- scale and descriptor exhaustion (child processes) ----------------------------------- */

#ifndef MANY
#define MANY 10000
#endif

static void test_many_connections(void) {
    tl_case("%d concurrent registered TCP connections", MANY);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max < MANY + 200) {
        tl_note("SKIP %d connections: fd hard limit %llu too low", MANY,
                (unsigned long long)rl.rlim_max);
        return;
    }
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    long rss0 = tl_rss_kb();
    tl_server v;
    if (!start_server(&v, "127.0.0.1:0", 0)) return;
    int res[2], hold[2]; /* child -> parent: the verdict; parent -> child: stay alive */
    CHECK_EQ_INT(pipe(res), 0);
    CHECK_EQ_INT(pipe(hold), 0);
    pid_t pid = fork();
    if (pid == 0) { /* the clients: connect, ping with its own id, read the pong */
        close(res[0]);
        close(hold[1]);
        static int fds[MANY];
        int ok = 0, made = 0;
        for (int i = 0; i < MANY; i++) {
            fds[i] = tcp_connect(&v.sa, NULL);
            if (fds[i] < 0) break;
            made++;
            char id[16];
            snprintf(id, sizeof id, "p%d", i);
            rndz_msg ping = {.cmd = RNDZ_REQ_PING, .id = id, .id_len = strlen(id)};
            uint8_t b[64];
            int n = rndz_frame_encode(&ping, b, sizeof b);
            if (send(fds[i], b, (size_t)n, MSG_NOSIGNAL) != n) break;
        }
        for (int i = 0; i < made; i++) {
            uint8_t b[4];
            if (read_full(fds[i], b, 4) == 4 && b[2] == 0x12) ok++;
        }
        if (ok != MANY) fprintf(stderr, "many: %d connected, %d answered\n", made, ok);
        char c = ok == MANY ? 'y' : 'n';
        if (write(res[1], &c, 1) != 1) _exit(1);
        if (read(hold[0], &c, 1) < 0) _exit(1); /* the parent closes it: exit */
        _exit(0);
    }
    close(res[1]);
    close(hold[0]);
    char c = 0;
    CHECK_EQ_INT(read(res[0], &c, 1), 1);
    CHECK_EQ_INT(c, 'y');
    CHECK(wait_peers(&v, MANY, tl_ms(5000)));
    rndz_server_stats stt = stats(&v);
    CHECK_EQ_INT(stt.tcp_conns, MANY);
    long rss1 = tl_rss_kb();
    tl_note("%llu registered TCP connections; server RSS grew %ld KiB = %ld bytes/connection",
            (unsigned long long)stt.tcp_conns, rss1 - rss0, (rss1 - rss0) * 1024 / MANY);
    /* a new client is still served at once */
    int extra = tcp_connect(&v.sa, NULL);
    send_vec(extra, "tcp.ping");
    expect_vec(extra, "tcp.pong");
    close(extra);
    close(hold[1]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(res[0]);
    CHECK(wait_peers(&v, 0, tl_ms(5000)));
    tl_server_stop(&v);
}

/* CPU seconds (user+sys) used so far by a process. */
static double cpu_of(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, stm = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &stm) != 2)
        return -1;
    return (double)(ut + stm) / (double)sysconf(_SC_CLK_TCK);
}

static void test_out_of_descriptors(void) {
    tl_case("out of descriptors: the server says so and does not spin");
    int ready[2], errp[2];
    CHECK_EQ_INT(pipe(ready), 0);
    CHECK_EQ_INT(pipe(errp), 0);
    pid_t pid = fork();
    if (pid == 0) { /* the server, with room for only a few connections */
        close(ready[0]);
        close(errp[0]);
        dup2(errp[1], 2);
        /* The soft limit only (it is what makes accept fail with EMFILE): valgrind refuses
         * to change the hard one (EPERM), and the test would then not run out at all. */
        struct rlimit rl;
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = 32;
        setrlimit(RLIMIT_NOFILE, &rl);
        rndz_server_options o;
        tl_server_options(&o, "127.0.0.1:0");
        rndz_server *s;
        if (rndz_server_create(&o, &s)) _exit(2);
        struct sockaddr_storage a;
        rndz_server_local_addr(s, &a, NULL);
        if (write(ready[1], &a, sizeof a) != sizeof a) _exit(2);
        rndz_server_run(s);
        _exit(0);
    }
    close(ready[1]);
    close(errp[1]);
    struct sockaddr_storage sa;
    CHECK_EQ_INT(read(ready[0], &sa, sizeof sa), (long)sizeof sa);
    int fds[64], n = 0;
    for (int i = 0; i < 64; i++) {
        fds[i] = tcp_connect(&sa, NULL);
        if (fds[i] >= 0) n++;
    }
    tl_sleep_ms(300);
    double c0 = cpu_of(pid);
    tl_sleep_ms(1000);
    double c1 = cpu_of(pid);
    tl_note("server CPU while over its descriptor limit: %.2f s in 1 s", c1 - c0);
    CHECK(c1 - c0 < 0.3); /* not spinning */
    for (int i = 0; i < 64; i++)
        if (fds[i] >= 0) close(fds[i]);
    tl_sleep_ms(200);
    /* and it serves again */
    int c = tcp_connect(&sa, NULL);
    CHECK(c >= 0);
    if (c >= 0) {
        send_vec(c, "tcp.ping");
        expect_vec(c, "tcp.pong");
        close(c);
    }
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    char log[8192] = {0};
    size_t got = 0;
    ssize_t r;
    while (got < sizeof log - 1 && (r = read(errp[0], log + got, sizeof log - 1 - got)) > 0)
        got += (size_t)r;
    CHECK(strstr(log, "out of file descriptors") != NULL);
    close(errp[0]);
    close(ready[0]);
}

int main(void) {
    tl_init("test_server_tcp", 90);
    test_vectors_against_server();
    test_split_and_merged_frames();
    test_bad_frames();
    test_idle_timeout();
    test_ownership();
    test_pair("127.0.0.1:0", "IPv4");
    if (tl_have_ipv6()) {
        test_pair("[::1]:0", "IPv6");
    } else {
        tl_note("SKIP IPv6 TCP pairing: no IPv6 loopback");
    }
    test_connect_timeout();
    test_v1_listener_with_our_connector();
    test_v1_connector_with_our_listener();
    test_v1_server_with_our_clients();
    test_server_restart();
    test_connect_info_and_rto_cap();
    test_out_of_descriptors();
    if (!getenv("RNDZ_SKIP_SCALE")) test_many_connections();
    return tl_finish();
}
