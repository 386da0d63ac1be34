/* test_e2e.c: end-to-end pairing through the C API on loopback (our server, our listener,
 * our connector), IPv4, IPv6 and dual stack; several peers and servers; the socket
 * configuration callback; the log callback. */
#include "testlib.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A listener registered with its servers, bound to `local` (NULL: the default). */
static rndz_udp_listener *listen_at(const char *id, const char *const *servers, size_t n,
                                    const char *local) {
    rndz_client_options o;
    tl_client_options(&o, id, servers, n);
    o.local_addr = local;
    return tl_udp_listener(&o);
}

static rndz_udp_listener *listen_as(const char *id, const char *const *servers, size_t n) {
    return listen_at(id, servers, n, NULL);
}

/* Connect `id` to `target` and run hello/echo between the connector's fd and the listener's
 * fd. `peer_host` is the address the server saw for the listener ("127.0.0.1", "[::1]"). */
static void pair_and_talk_from(rndz_udp_listener *l, const char *const *servers, size_t n,
                               const char *id, const char *target, const char *peer_host,
                               const char *local) {
    struct sockaddr_storage la;
    CHECK_RC(rndz_udp_listener_local_addr(l, &la, NULL), 0);
    int lport = tl_addr_port(&la);
    int lfd = rndz_udp_listener_fd(l);
    CHECK(lfd >= 0);
    CHECK_EQ_INT(rndz_udp_listener_fd(l), lfd); /* borrowed: the same each time */

    tl_connect_job j;
    tl_connect_prepare(&j, id, servers, n, target, tl_ms(500), tl_ms(3000));
    j.o.local_addr = local;
    tl_connect_run(&j);
    int fd = tl_connect_join(&j);
    if (!CHECK(fd >= 0)) {
        tl_note("connect %s -> %s: %s", id, target, rndz_err_name(fd));
        return;
    }
    char t[RNDZ_ADDRSTRLEN], want[RNDZ_ADDRSTRLEN];
    snprintf(want, sizeof want, "%s:%d", peer_host, lport);
    /* The address the server saw, or one of the listener's own candidates (this host's LAN
     * and IPv6 addresses, same port), which a dual-stack connector may verify and prefer. */
    tl_addr_text(&j.peer, t, sizeof t);
    if (strcmp(t, want) != 0) {
        tl_note("%s connected through a candidate: %s (server saw %s)", id, t, want);
        CHECK_EQ_INT(tl_addr_port(&j.peer), lport);
    }
    CHECK_EQ_INT(j.peer_len, j.peer.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                          : sizeof(struct sockaddr_in));
    CHECK(j.elapsed_ms < tl_ms(1000)); /* no lost packets on loopback: the first round works */

    /* connector -> listener */
    CHECK_EQ_INT(send(fd, "hello", 5, 0), 5);
    uint8_t buf[2048];
    struct sockaddr_storage from;
    int skipped = 0;
    long r = tl_recv_data(lfd, buf, sizeof buf, &from, tl_ms(1000), &skipped);
    CHECK_EQ_MEM(buf, r > 0 ? (size_t)r : 0, "hello", 5);
    if (r < 0) {
        close(fd);
        return;
    }
    CHECK_EQ_INT(tl_addr_port(&from), tl_port(fd)); /* from the port that asked */
    /* listener -> connector: the echo */
    socklen_t fl = from.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in);
    CHECK_EQ_INT(sendto(lfd, buf, (size_t)r, 0, (struct sockaddr *)&from, fl), r);
    skipped = 0;
    r = tl_recv_data(fd, buf, sizeof buf, NULL, tl_ms(1000), &skipped);
    CHECK_EQ_MEM(buf, r > 0 ? (size_t)r : 0, "hello", 5);
    if (skipped) tl_note("note: %d protocol packet(s) reached the connector's fd", skipped);
    /* a bigger datagram both ways, too */
    uint8_t big[1200];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)(i * 7 + 1);
    big[0] = 0xff; /* not a protocol message */
    CHECK_EQ_INT(send(fd, big, sizeof big, 0), (long)sizeof big);
    r = tl_recv_data(lfd, buf, sizeof buf, &from, tl_ms(1000), NULL);
    CHECK_EQ_MEM(buf, r > 0 ? (size_t)r : 0, big, sizeof big);
    close(fd);
}

static void pair_and_talk(rndz_udp_listener *l, const char *const *servers, size_t n,
                          const char *id, const char *target, const char *peer_host) {
    pair_and_talk_from(l, servers, n, id, target, peer_host, NULL);
}

static void test_pair(const char *listen, const char *host, const char *name) {
    tl_case("pair %s", name);
    tl_mark mark = tl_mark_now(true);
    tl_server v;
    if (!tl_server_open(&v, listen)) return;
    /* IPv6 clients of a [::] server send to [::1] */
    const char *servers[] = {host[0] == '[' ? v.text6 : v.text};
    rndz_udp_listener *l = listen_as("alice", servers, 1);
    if (l) {
        struct sockaddr_storage la;
        CHECK_RC(rndz_udp_listener_local_addr(l, &la, NULL), 0);
        CHECK_EQ_INT(la.ss_family, host[0] == '[' ? AF_INET6 : AF_INET);
        pair_and_talk(l, servers, 1, "bob", "alice", host);
        /* a second peer connects to the same listener */
        tl_case("pair %s: second peer", name);
        pair_and_talk(l, servers, 1, "carol", "alice", host);
        rndz_udp_listener_destroy(l);
    }
    /* after the listener's Bye, alice is not found */
    tl_case("pair %s: after bye", name);
    tl_connect_job j;
    tl_connect_start(&j, "dave", servers, 1, "alice", tl_ms(300), tl_ms(2000));
    CHECK_RC(tl_connect_join(&j), RNDZ_E_NOTFOUND);
    tl_server_stop(&v);
    tl_case("pair %s: nothing left behind", name);
    tl_mark_check(&mark);
    tl_case("%s", "");
}

/* Clients on dual-stack sockets ("[::]:0") with an IPv4 server: the peer address comes back
 * in IPv4 form (the header: never ::ffff:a.b.c.d). Also explicit local addresses. */
static void test_local_addrs(void) {
    tl_case("local addresses");
    tl_mark mark = tl_mark_now(false);
    tl_server v;
    if (!tl_server_open(&v, "127.0.0.1:0")) return;
    const char *servers[] = {v.text};
    if (tl_have_ipv6()) {
        tl_case("dual-stack clients, IPv4 server");
        rndz_udp_listener *l = listen_at("ds", servers, 1, "[::]:0");
        if (l) {
            struct sockaddr_storage la;
            CHECK_RC(rndz_udp_listener_local_addr(l, &la, NULL), 0);
            CHECK_EQ_INT(la.ss_family, AF_INET6); /* bound to [::] */
            pair_and_talk_from(l, servers, 1, "ds-c", "ds", "127.0.0.1", "[::]:0");
            rndz_udp_listener_destroy(l);
        }
    }
    tl_case("explicit 127.0.0.1 local addresses");
    rndz_udp_listener *l = listen_at("lo", servers, 1, "127.0.0.1:0");
    if (l) {
        struct sockaddr_storage la;
        char t[RNDZ_ADDRSTRLEN];
        CHECK_RC(rndz_udp_listener_local_addr(l, &la, NULL), 0);
        CHECK(strncmp(tl_addr_text(&la, t, sizeof t), "127.0.0.1:", 10) == 0);
        pair_and_talk_from(l, servers, 1, "lo-c", "lo", "127.0.0.1", "127.0.0.1:0");
        rndz_udp_listener_destroy(l);
    }
    tl_case("a bad local address");
    rndz_client_options o;
    tl_client_options(&o, "bad", servers, 1);
    o.local_addr = "nonsense";
    rndz_udp_listener *bad = NULL;
    CHECK_RC(rndz_udp_listener_create(&o, &bad), RNDZ_E_BADADDR);
    CHECK_RC(rndz_udp_connect(&o, "lo", NULL, NULL), RNDZ_E_BADADDR);
    tl_server_stop(&v);
    tl_mark_check(&mark);
    tl_case("%s", "");
}

/* Two listeners on one server: the connector reaches the one it names. */
static void test_two_listeners(void) {
    tl_case("two listeners");
    tl_server v;
    if (!tl_server_open(&v, "127.0.0.1:0")) return;
    const char *servers[] = {v.text};
    rndz_udp_listener *l1 = listen_as("l1", servers, 1);
    rndz_udp_listener *l2 = listen_as("l2", servers, 1);
    if (l1 && l2) {
        pair_and_talk(l2, servers, 1, "cx", "l2", "127.0.0.1");
        CHECK(tl_silent(rndz_udp_listener_fd(l1), tl_ms(50))); /* l1 saw no data */
        pair_and_talk(l1, servers, 1, "cy", "l1", "127.0.0.1");
    }
    rndz_udp_listener_destroy(l1);
    rndz_udp_listener_destroy(l2);
    tl_server_stop(&v);
    tl_case("%s", "");
}

/* Several servers: a silent one does not stop the pairing through the good one. */
static void test_several_servers(void) {
    tl_case("several servers");
    tl_server v, w;
    if (!tl_server_open(&v, "127.0.0.1:0")) return;
    if (!tl_server_open(&w, "127.0.0.1:0")) return;
    int silent = tl_udp_socket(AF_INET, 100);
    char st[RNDZ_ADDRSTRLEN];
    tl_local_text(silent, st, sizeof st);
    /* the listener knows all three and registers with all (servers_per_id 3: as before
     * server sets); the connectors each know a different working one */
    const char *lsrv[] = {st, v.text, w.text};
    rndz_client_options lo;
    tl_client_options(&lo, "multi", lsrv, 3);
    lo.servers_per_id = 3;
    rndz_udp_listener *l = tl_udp_listener(&lo);
    if (l) {
        const char *c1[] = {st, v.text};
        pair_and_talk(l, c1, 2, "via-v", "multi", "127.0.0.1");
        const char *c2[] = {w.text, st};
        pair_and_talk(l, c2, 2, "via-w", "multi", "127.0.0.1");
    }
    rndz_udp_listener_destroy(l);
    close(silent);
    tl_server_stop(&v);
    tl_server_stop(&w);
    tl_case("%s", "");
}

/* --- socket configuration callback -------------------------------------------------------- */

typedef struct cfg {
    int calls;
    int fail_at; /* 1-based call that fails (0 = never) */
    int err;
    int bad; /* calls that broke the contract */
    int dgram, stream;
    bool any_type; /* a server may also make a TCP socket */
} cfg;

static int cfg_fn(int fd, int family, int socktype, void *user) {
    cfg *c = user;
    c->calls++;
    int v = -1;
    socklen_t vl = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &vl) != 0 || v != socktype) c->bad++;
    vl = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &vl) != 0 || v != family) c->bad++;
    if (tl_port(fd) != 0) c->bad++; /* must be called before bind */
    if (socktype == SOCK_DGRAM) c->dgram++;
    else if (socktype == SOCK_STREAM && c->any_type) c->stream++;
    else c->bad++;
    if (c->fail_at && c->calls == c->fail_at) return c->err;
    return 0;
}

static void test_sock_config(void) {
    tl_case("sock_config");
    tl_mark mark = tl_mark_now(true);
    tl_server v;
    if (!tl_server_open(&v, "127.0.0.1:0")) return;
    const char *servers[] = {v.text};
    rndz_client_options o;
    tl_client_options(&o, "cfg", servers, 1);
    o.sock_config = cfg_fn;

    /* listener: every socket it makes (one per server, and the peer socket) */
    cfg lc = {0};
    o.sock_config_user = &lc;
    rndz_udp_listener *l = NULL;
    CHECK_RC(rndz_udp_listener_create(&o, &l), 0);
    CHECK_RC(rndz_udp_listener_wait_registered(l, tl_ms(2000)), 0);
    CHECK(lc.calls >= 2);
    CHECK_EQ_INT(lc.bad, 0);
    int listener_calls = lc.calls;
    tl_note("sock_config: listener with 1 server made %d socket(s)", listener_calls);

    /* connector */
    cfg cc = {0};
    o.id = "cfg-c";
    o.sock_config_user = &cc;
    o.timeout_ms = tl_ms(3000);
    struct sockaddr_storage peer;
    int fd = rndz_udp_connect(&o, "cfg", &peer, NULL);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    CHECK(cc.calls >= 1);
    CHECK_EQ_INT(cc.bad, 0);
    rndz_udp_listener_destroy(l);

    /* a negative return aborts with that error, at whichever socket it happens */
    for (int k = 1; k <= listener_calls; k++) {
        tl_case("sock_config: listener aborted at call %d", k);
        cfg f = {.fail_at = k, .err = -EPERM};
        o.id = "cfg";
        o.sock_config_user = &f;
        l = (rndz_udp_listener *)&f;
        CHECK_RC(rndz_udp_listener_create(&o, &l), -EPERM);
        CHECK(l == NULL);
        CHECK_EQ_INT(f.calls, k);
    }
    tl_case("sock_config: connector aborted");
    cfg f = {.fail_at = 1, .err = -EACCES};
    o.id = "cfg-c";
    o.sock_config_user = &f;
    CHECK_RC(rndz_udp_connect(&o, "cfg", NULL, NULL), -EACCES);
    CHECK_EQ_INT(f.calls, 1);
    /* an rndz code passes through too */
    cfg g = {.fail_at = 1, .err = RNDZ_E_PEERFAIL};
    o.sock_config_user = &g;
    CHECK_RC(rndz_udp_connect(&o, "cfg", NULL, NULL), RNDZ_E_PEERFAIL);

    tl_case("sock_config: server");
    cfg sc = {.any_type = true};
    rndz_server_options so;
    tl_server_options(&so, "127.0.0.1:0");
    so.sock_config = cfg_fn;
    so.sock_config_user = &sc;
    rndz_server *s = NULL;
    CHECK_RC(rndz_server_create(&so, &s), 0);
    CHECK(sc.dgram >= 1);
    CHECK_EQ_INT(sc.bad, 0);
    rndz_server_destroy(s);
    cfg sf = {.fail_at = 1, .err = -ENOMEM, .any_type = true};
    so.sock_config_user = &sf;
    CHECK_RC(rndz_server_create(&so, &s), -ENOMEM);
    CHECK(s == NULL);

    tl_server_stop(&v);
    tl_case("sock_config: nothing left behind");
    tl_mark_check(&mark);
    tl_case("%s", "");
}

/* --- log callback ------------------------------------------------------------------------- */

static atomic_int log_calls, log_bad;
static int log_token;

static void log_fn(rndz_log_level level, const char *m, void *user) {
    atomic_fetch_add(&log_calls, 1);
    if (user != &log_token || !m || level > RNDZ_LOG_DEBUG || level < RNDZ_LOG_ERROR)
        atomic_fetch_add(&log_bad, 1);
}

static void test_log(void) {
    tl_case("log callback");
    rndz_set_log(log_fn, &log_token, RNDZ_LOG_DEBUG);
    tl_server v;
    if (tl_server_open(&v, "127.0.0.1:0")) {
        const char *servers[] = {v.text};
        rndz_udp_listener *l = listen_as("logged", servers, 1);
        if (l) pair_and_talk(l, servers, 1, "logger", "logged", "127.0.0.1");
        rndz_udp_listener_destroy(l);
        tl_server_stop(&v);
    }
    rndz_set_log(NULL, NULL, RNDZ_LOG_WARN);
    int calls = atomic_load(&log_calls);
    CHECK(calls > 0);
    CHECK_EQ_INT(atomic_load(&log_bad), 0);
    /* with the level back at warn and the default sink, our callback is not called again */
    tl_server w;
    if (tl_server_open(&w, "127.0.0.1:0")) tl_server_stop(&w);
    CHECK_EQ_INT(atomic_load(&log_calls), calls);
    tl_case("%s", "");
}

/* --- a second listener for an id in use is warned ------------------------------------------ */

static atomic_int taken_warnings;

static void taken_fn(rndz_log_level level, const char *m, void *user) {
    (void)user;
    if (level == RNDZ_LOG_WARN && strstr(m, "'dup' was in use at") &&
        strstr(m, "is another listener running with this id?"))
        atomic_fetch_add(&taken_warnings, 1);
}

static void test_taken(void) {
    tl_server v;
    if (!tl_server_open(&v, "127.0.0.1:0")) return;
    const char *servers[] = {v.text};
    rndz_set_log(taken_fn, NULL, RNDZ_LOG_WARN);
    rndz_client_options o;
    tl_client_options(&o, "dup", servers, 1);

    tl_case("udp: the second listener for an id is warned, the first not");
    rndz_udp_listener *u1 = tl_udp_listener(&o);
    CHECK_EQ_INT(atomic_load(&taken_warnings), 0);
    rndz_udp_listener *u2 = tl_udp_listener(&o);
    CHECK_EQ_INT(atomic_load(&taken_warnings), 1);
    /* and connects now reach the second */
    if (u2) pair_and_talk(u2, servers, 1, "dup-c", "dup", "127.0.0.1");
    uint64_t ids = tl_server_stats(&v).udp_peers; /* "dup", and the connector's own id */
    rndz_udp_listener_destroy(u1);
    rndz_udp_listener_destroy(u2);
    tl_case("udp: one after the first said goodbye is not warned");
    /* the goodbye taken first (the server's workers may see the next Ping before it) */
    CHECK_EQ_INT(tl_server_await(&v, TL_STAT(udp_peers), ids - 1, false, tl_ms(2000)).udp_peers,
                 ids - 1);
    rndz_udp_listener *u3 = tl_udp_listener(&o);
    CHECK_EQ_INT(atomic_load(&taken_warnings), 1);
    rndz_udp_listener_destroy(u3);

    tl_case("tcp: the second listener for an id is warned, the first not");
    atomic_store(&taken_warnings, 0);
    rndz_tcp_listener *t1 = tl_tcp_listener(&o);
    CHECK_EQ_INT(atomic_load(&taken_warnings), 0);
    rndz_tcp_listener *t2 = tl_tcp_listener(&o);
    CHECK_EQ_INT(atomic_load(&taken_warnings), 1);
    rndz_tcp_listener_destroy(t1);
    rndz_tcp_listener_destroy(t2);
    rndz_set_log(NULL, NULL, RNDZ_LOG_WARN);
    tl_server_stop(&v);
    tl_case("%s", "");
}

int main(void) {
    tl_init("test_e2e", 30);
    test_pair("127.0.0.1:0", "127.0.0.1", "IPv4");
    if (tl_have_ipv6()) {
        test_pair("[::1]:0", "[::1]", "IPv6");
        test_pair("[::]:0", "127.0.0.1", "dual stack, IPv4 clients");
        test_pair("[::]:0", "[::1]", "dual stack, IPv6 clients");
    } else {
        tl_note("SKIP IPv6 pairing: no IPv6 loopback");
    }
    test_local_addrs();
    test_two_listeners();
    test_several_servers();
    test_sock_config();
    test_log();
    test_taken();
    return tl_finish();
}
