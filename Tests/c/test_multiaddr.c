/* test_multiaddr.c: a server answers from the address each client wrote to (IP_PKTINFO,
 * IPV6_PKTINFO through the batched receive and send), and serves several listen addresses.
 *
 * On Linux all of 127.0.0.0/8 is local: a server bound to 0.0.0.0 is reached at 127.0.0.2
 * and 127.0.0.3 too, and without the destination address kept it answers from 127.0.0.1 (the
 * route's preferred source), which a socket connected to 127.0.0.2 drops: the loopback form of
 * a multi-homed host (rndz 0.1.5 and this server before had that fault). Loopback only. */
#include "testlib.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define F_PING 2
#define F_ISYNC 3
#define RF_PONG 2
#define RF_FSYNC 4

/* A UDP socket bound to `local` ("127.0.0.1:0") and connected to `to`: it hears only `to`. */
static int connected_to(const char *local, const char *to) {
    int fd = tl_udp_socket_at(local, 2000);
    struct sockaddr_storage a;
    socklen_t al;
    CHECK_RC(rndz_addr_parse(to, &a, &al), 0);
    CHECK(connect(fd, (struct sockaddr *)&a, al) == 0);
    return fd;
}

/* Ping as `id` on a connected socket; true if a Pong came back (on it, so from `to`). */
static bool pong_on(int fd, const char *id) {
    uint8_t b[256], r[256];
    size_t n = tl_v1_bytes(b, sizeof b, id, F_PING, NULL, NULL);
    CHECK_EQ_INT(send(fd, b, n, 0), (long)n);
    long got = tl_recv_wait(fd, r, sizeof r, NULL, tl_ms(1000));
    rndz_msg m;
    return got > 0 && rndz_msg_decode(r, (size_t)got, 1, &m) == 0 && m.cmd == RNDZ_RSP_PONG;
}

/* Start a server on these listen addresses, `workers` workers (0: the default). */
static bool start_on(tl_server *v, const char *const *addrs, size_t n, unsigned workers) {
    rndz_server_options o;
    tl_server_options(&o, addrs[0]);
    o.listen_addrs = addrs;
    o.n_listen_addrs = n;
    if (workers) o.workers = workers;
    return tl_server_start(v, &o);
}

/* Ping as `id` from the unconnected socket u to `to`; true if answered (from *from). */
static bool pong_from(int u, const char *id, const char *to, struct sockaddr_storage *from) {
    uint8_t b[256], r[256];
    size_t n = tl_v1_bytes(b, sizeof b, id, F_PING, NULL, NULL);
    return tl_udp_request(u, b, n, to, r, sizeof r, from, tl_ms(1000)) > 0;
}

static void text_at(char *out, size_t cap, const char *host, int port) {
    snprintf(out, cap, "%s:%d", host, port);
}

/* A wildcard server: clients writing to secondary addresses hear back from them, and a
 * forward to a peer leaves from the address that peer wrote to. */
static void test_wildcard(const char *listen) {
    tl_case("wildcard %s", listen);
    tl_server v;
    rndz_server_options o;
    tl_server_options(&o, listen);
    o.workers = 2;
    if (!tl_server_start(&v, &o)) return;
    char at2[64], at3[64], at1[64];
    text_at(at1, sizeof at1, "127.0.0.1", v.port);
    text_at(at2, sizeof at2, "127.0.0.2", v.port);
    text_at(at3, sizeof at3, "127.0.0.3", v.port);
    int x = connected_to("127.0.0.1:0", at2), y = connected_to("127.0.0.1:0", at3);
    int z = connected_to("127.0.0.1:0", at1);
    CHECK(pong_on(x, "mx")); /* through 127.0.0.2: the Pong comes from 127.0.0.2 */
    CHECK(pong_on(y, "my"));
    CHECK(pong_on(z, "mz"));
    /* an unconnected socket sees where the answer came from */
    int u = tl_udp_socket_at("127.0.0.1:0", 2000);
    struct sockaddr_storage from;
    char ft[RNDZ_ADDRSTRLEN];
    CHECK(pong_from(u, "mu", at3, &from));
    CHECK_EQ_STR(tl_addr_text(&from, ft, sizeof ft), at3);
    /* y asks for x: the Fsync reaches x on its socket connected to 127.0.0.2 */
    uint8_t b[256], r[256];
    size_t n = tl_v1_bytes(b, sizeof b, "my", F_ISYNC, "mx", NULL);
    CHECK_EQ_INT(send(y, b, n, 0), (long)n);
    long got = tl_recv_wait(x, r, sizeof r, NULL, tl_ms(1000));
    rndz_msg m;
    CHECK(got > 0 && rndz_msg_decode(r, (size_t)got, 1, &m) == 0 && m.cmd == RNDZ_RSP_FSYNC);
    close(u);
    close(x);
    close(y);
    close(z);
    tl_server_stop(&v);
}

/* Our own clients, each given another address of the same wildcard server. */
static void test_pair_through_two_addresses(void) {
    tl_case("pair through 127.0.0.2 and 127.0.0.3");
    tl_server v;
    if (!tl_server_open(&v, "0.0.0.0:0")) return;
    char at2[64], at3[64];
    text_at(at2, sizeof at2, "127.0.0.2", v.port);
    text_at(at3, sizeof at3, "127.0.0.3", v.port);
    const char *s2[] = {at2}, *s3[] = {at3};
    rndz_client_options o;
    tl_client_options(&o, "ml", s2, 1);
    o.local_addr = "127.0.0.1:0";
    rndz_udp_listener *l = tl_udp_listener(&o); /* registered: its Pong came from .2 */
    if (l) {
        tl_connect_job j;
        tl_connect_prepare(&j, "mc", s3, 1, "ml", 0, tl_ms(3000));
        j.o.local_addr = "127.0.0.1:0";
        tl_connect_run(&j);
        int fd = tl_connect_join(&j);
        CHECK(fd >= 0);
        if (fd >= 0) close(fd);
        rndz_udp_listener_destroy(l);
    }
    /* TCP answers from the right address by itself; the pair goes the same way */
    rndz_tcp_listener *tl = tl_tcp_listener(&o);
    if (tl) {
        tl_tcp_job j;
        tl_client_options(&j.o, "mtc", s3, 1);
        j.o.local_addr = "127.0.0.1:0";
        j.o.timeout_ms = tl_ms(3000);
        j.target = "ml";
        tl_tcp_job_run(&j);
        int afd = rndz_tcp_listener_accept(tl, tl_ms(3000), NULL, NULL);
        int cfd = tl_tcp_job_join(&j);
        CHECK(afd >= 0 && cfd >= 0);
        if (afd >= 0) close(afd);
        if (cfd >= 0) close(cfd);
        rndz_tcp_listener_destroy(tl);
    }
    tl_server_stop(&v);
}

/* Several listen addresses: one port for all, each answered from itself, one table of ids. */
static void test_listen_addrs(bool v6) {
    tl_case("listen_addrs%s", v6 ? " with IPv6" : "");
    const char *addrs[] = {"127.0.0.2:0", v6 ? "[::1]:0" : "127.0.0.3:0"};
    tl_server v;
    if (!start_on(&v, addrs, 2, 0)) return;
    struct sockaddr_storage got[4];
    CHECK_EQ_INT(rndz_server_local_addrs(v.s, got, 4), 2);
    char t0[RNDZ_ADDRSTRLEN], t1[RNDZ_ADDRSTRLEN];
    tl_addr_text(&got[0], t0, sizeof t0);
    tl_addr_text(&got[1], t1, sizeof t1);
    CHECK_EQ_INT(tl_addr_port(&got[0]), tl_addr_port(&got[1])); /* port 0: one port */
    CHECK(strncmp(t0, "127.0.0.2:", 10) == 0);
    int x = connected_to("127.0.0.2:0", t0);
    int y = connected_to(v6 ? "[::1]:0" : "127.0.0.3:0", t1);
    CHECK(pong_on(x, "lx"));
    CHECK(pong_on(y, "ly"));
    /* one table: y asks for x across addresses (and families) */
    uint8_t b[256], r[256];
    size_t n = tl_v1_bytes(b, sizeof b, "ly", F_ISYNC, "lx", NULL);
    CHECK_EQ_INT(send(y, b, n, 0), (long)n);
    long g = tl_recv_wait(x, r, sizeof r, NULL, tl_ms(1000));
    rndz_msg m;
    CHECK(g > 0 && rndz_msg_decode(r, (size_t)g, 1, &m) == 0 && m.cmd == RNDZ_RSP_FSYNC);
    /* listen_addrs replace listen_addr: the first address is the first of them */
    struct sockaddr_storage first;
    CHECK_RC(rndz_server_local_addr(v.s, &first, NULL), 0);
    char ft[RNDZ_ADDRSTRLEN];
    CHECK_EQ_STR(tl_addr_text(&first, ft, sizeof ft), t0);
    close(x);
    close(y);
    tl_server_stop(&v);
}

/* "0.0.0.0:P" next to "[::]:P": the IPv6 one serves IPv6 only, so both bind one port. */
static void test_v4_and_v6_wildcards(void) {
    tl_case("0.0.0.0 and [::] together");
    const char *addrs[] = {"0.0.0.0:0", "[::]:0"};
    tl_server v;
    if (!start_on(&v, addrs, 2, 0)) return;
    char a4[64], a6[64];
    snprintf(a4, sizeof a4, "127.0.0.2:%d", v.port);
    snprintf(a6, sizeof a6, "[::1]:%d", v.port);
    int x = connected_to("127.0.0.1:0", a4), y = connected_to("[::1]:0", a6);
    CHECK(pong_on(x, "w4"));
    CHECK(pong_on(y, "w6"));
    close(x);
    close(y);
    tl_server_stop(&v);
}

/* A datagram to a broadcast address is answered from an address of ours (the kernel's
 * choice), not from the broadcast address. */
static void test_broadcast(void) {
    tl_case("broadcast destination");
    tl_server v;
    if (!tl_server_open(&v, "0.0.0.0:0")) return;
    int u = tl_udp_socket_at("127.0.0.1:0", 2000);
    int on = 1;
    CHECK(setsockopt(u, SOL_SOCKET, SO_BROADCAST, &on, sizeof on) == 0);
    char to[64];
    snprintf(to, sizeof to, "127.255.255.255:%d", v.port);
    struct sockaddr_storage from;
    CHECK(pong_from(u, "bc", to, &from));
    close(u);
    tl_server_stop(&v);
}

/* More destinations than the origin table holds: the rest are answered unpinned, on the
 * socket they came in on (here the second, IPv4 one, behind an IPv6 first). */
static void test_origins_full(void) {
    tl_case("origin table full");
    const char *addrs[] = {"[::1]:0", "0.0.0.0:0"};
    tl_server v;
    if (!start_on(&v, addrs, 2, 1)) return;
    struct sockaddr_storage got[2];
    rndz_server_local_addrs(v.s, got, 2);
    int port = tl_addr_port(&got[1]);
    int u = tl_udp_socket_at("127.0.0.1:0", 2000);
    int answered = 0;
    for (int i = 0; i < 140; i++) {
        char to[64], id[16];
        snprintf(to, sizeof to, "127.0.%d.%d:%d", 1 + i / 200, 2 + i % 200, port);
        snprintf(id, sizeof id, "f%d", i);
        struct sockaddr_storage from;
        if (pong_from(u, id, to, &from)) answered++;
    }
    CHECK_EQ_INT(answered, 140);
    close(u);
    tl_server_stop(&v);
}

static void test_bad_options(void) {
    tl_case("bad listen_addrs");
    rndz_server_options o;
    rndz_server_options_init(&o);
    const char *addrs[RNDZ_MAX_LISTEN + 1];
    for (int i = 0; i <= RNDZ_MAX_LISTEN; i++) addrs[i] = "127.0.0.1:0";
    o.listen_addrs = addrs;
    o.n_listen_addrs = RNDZ_MAX_LISTEN + 1;
    rndz_server *s = NULL;
    CHECK_RC(rndz_server_create(&o, &s), -EINVAL);
    o.n_listen_addrs = 2;
    addrs[1] = "not an address";
    CHECK_RC(rndz_server_create(&o, &s), RNDZ_E_BADADDR);
    o.listen_addrs = NULL;
    CHECK_RC(rndz_server_create(&o, &s), -EINVAL);
    CHECK(s == NULL);
}

int main(void) {
    tl_init("test_multiaddr", 120);
    tl_mark m = tl_mark_now(true);
    test_wildcard("0.0.0.0:0");
    if (tl_have_ipv6()) test_wildcard("[::]:0"); /* dual stack: IPv4 through mapped addresses */
    test_pair_through_two_addresses();
    test_listen_addrs(false);
    if (tl_have_ipv6()) test_listen_addrs(true);
    if (tl_have_ipv6()) {
        test_v4_and_v6_wildcards();
        test_origins_full();
    }
    test_broadcast();
    test_bad_options();
    tl_case("nothing left behind");
    tl_mark_check(&m);
    return tl_finish();
}
