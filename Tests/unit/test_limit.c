/* test_limit.c: the server's limits (Sources/CRndz/limit.c) on simulated time: the burst, the
 * sustained rate, refill, "no limit", IPv6 sources keyed by /64, the TCP connection caps, and
 * two threads taking from one bucket at once (exactly the burst gets through: the CAS loop
 * loses nothing and grants nothing twice; TSan runs this too). */
#include "limit.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "unit.h"


static int take_n(rndz__rate *r, uint64_t key, uint64_t now, int n) {
    int ok = 0;
    for (int i = 0; i < n; i++) ok += rndz__rate_take(r, key, now);
    return ok;
}

static void test_rate(void) {
    rndz__rate r;
    CHECK(rndz__rate_init(&r, 10, 20, 1024) == 0);
    uint64_t t = 1000000;
    CHECK(take_n(&r, 7, t, 100) == 20); /* the burst, then nothing */
    CHECK(take_n(&r, 8, t, 100) == 20); /* another key, its own bucket */
    CHECK(take_n(&r, 7, t + 99, 5) == 0);
    CHECK(take_n(&r, 7, t + 100, 5) == 1); /* 100 ms = one token at 10/s */
    CHECK(take_n(&r, 7, t + 5000, 100) == 20); /* refills up to the burst, no more */
    /* sustained: 1000 attempts per second for 10 s -> burst + 10 * rate */
    t += 100000;
    int ok = 0;
    for (int ms = 0; ms < 10000; ms++) ok += take_n(&r, 9, t + (uint64_t)ms, 1);
    CHECK(ok >= 20 + 100 - 1 && ok <= 20 + 100 + 1);
    rndz__rate_free(&r);

    CHECK(rndz__rate_init(&r, UINT32_MAX, 0, 1024) == 0);
    CHECK(take_n(&r, 1, t, 100000) == 100000);
    rndz__rate_free(&r);

    CHECK(rndz__rate_init(&r, 1, 1, 16) == 0); /* the smallest */
    CHECK(take_n(&r, 1, t, 10) == 1);
    CHECK(take_n(&r, 1, t + 999, 10) == 0);
    CHECK(take_n(&r, 1, t + 1000, 10) == 1);
    rndz__rate_free(&r);
}

typedef struct {
    rndz__rate *r;
    int got;
} racer;

static void *race(void *arg) {
    racer *x = arg;
    for (int i = 0; i < 200000; i++) x->got += rndz__rate_take(x->r, 42, 5000000);
    return NULL;
}

static void test_rate_threads(void) {
    rndz__rate r;
    CHECK(rndz__rate_init(&r, 100, 1000, 64) == 0);
    racer a = {&r, 0}, b = {&r, 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, race, &a);
    pthread_create(&tb, NULL, race, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK(a.got + b.got == 1000);
    rndz__rate_free(&r);
}

static struct sockaddr_storage v4(const char *ip) {
    struct sockaddr_storage ss = {0};
    struct sockaddr_in *s = (void *)&ss;
    s->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &s->sin_addr);
    s->sin_port = htons(1000);
    return ss;
}

static struct sockaddr_storage v6(const char *ip, uint16_t port) {
    struct sockaddr_storage ss = {0};
    struct sockaddr_in6 *s = (void *)&ss;
    s->sin6_family = AF_INET6;
    inet_pton(AF_INET6, ip, &s->sin6_addr);
    s->sin6_port = htons(port);
    return ss;
}

static void opts(rndz_server_options *o) {
    rndz_server_options_init(o);
    o->max_peers = 1000;
    o->sync_rate = 20;
    o->sync_burst = 40;
    o->fsync_rate = 10;
    o->fsync_burst = 20;
    o->max_tcp_conns = 5;
    o->max_tcp_conns_per_ip = 3;
}

static void test_limits(void) {
    rndz_server_options o;
    opts(&o);
    rndz__limits l;
    CHECK(rndz__limits_init(&l, &o) == 0);
    uint64_t t = 1000000;
    struct sockaddr_storage a = v4("192.0.2.1"), a2 = v4("192.0.2.1");
    ((struct sockaddr_in *)&a2)->sin_port = htons(2000); /* another port, same host */
    int ok = 0;
    for (int i = 0; i < 30; i++) ok += rndz__limit_sync(&l, &a, t);
    for (int i = 0; i < 30; i++) ok += rndz__limit_sync(&l, &a2, t);
    CHECK(ok == 40);
    /* the same address as IPv4-mapped IPv6 (a dual-stack socket) is the same source */
    struct sockaddr_storage m = v6("::ffff:192.0.2.1", 5);
    CHECK(!rndz__limit_sync(&l, &m, t));
    /* IPv6: one /64 is one source, whatever the host part */
    struct sockaddr_storage h1 = v6("2001:db8:1:2::1", 1), h2 = v6("2001:db8:1:2:ffff::9", 2);
    ok = 0;
    for (int i = 0; i < 30; i++) ok += rndz__limit_sync(&l, &h1, t);
    for (int i = 0; i < 30; i++) ok += rndz__limit_sync(&l, &h2, t);
    CHECK(ok == 40);
    /* other /64s and other addresses have their own buckets (a keyed hash over 4096 buckets:
     * a collision among these few is possible but rare; allow one) */
    int fresh = 0;
    for (int i = 0; i < 16; i++) {
        char ip[64];
        snprintf(ip, sizeof ip, "2001:db8:1:%x::1", 100 + i);
        struct sockaddr_storage x = v6(ip, 1);
        fresh += rndz__limit_sync(&l, &x, t);
        snprintf(ip, sizeof ip, "198.51.100.%d", i + 1);
        x = v4(ip);
        fresh += rndz__limit_sync(&l, &x, t);
    }
    CHECK(fresh >= 31);
    /* per target id */
    ok = 0;
    for (int i = 0; i < 50; i++) ok += rndz__limit_fsync(&l, "alice", 5, t);
    CHECK(ok == 20);
    CHECK(rndz__limit_fsync(&l, "bob", 3, t) || rndz__limit_fsync(&l, "carol", 5, t));
    CHECK(rndz__limit_fsync(&l, "alice", 5, t + 100)); /* 10/s */

    /* TCP: 3 per source, 5 in all */
    uint32_t s[8];
    CHECK((s[0] = rndz__limit_tcp_open(&l, &a)) != 0);
    CHECK((s[1] = rndz__limit_tcp_open(&l, &a2)) != 0);
    CHECK((s[2] = rndz__limit_tcp_open(&l, &m)) != 0);
    CHECK(rndz__limit_tcp_open(&l, &a) == 0); /* 4th from 192.0.2.1 */
    CHECK((s[3] = rndz__limit_tcp_open(&l, &h1)) != 0);
    CHECK((s[4] = rndz__limit_tcp_open(&l, &h2)) != 0);
    struct sockaddr_storage b = v4("203.0.113.9");
    CHECK(rndz__limit_tcp_open(&l, &b) == 0); /* 6th in all */
    rndz__limit_tcp_close(&l, s[3]);
    CHECK((s[5] = rndz__limit_tcp_open(&l, &b)) != 0);
    rndz__limit_tcp_close(&l, s[0]);
    rndz__limit_tcp_close(&l, 0); /* no slot: nothing */
    CHECK((s[6] = rndz__limit_tcp_open(&l, &a)) != 0);
    CHECK(l.tcp_open == 5);
    rndz__limits_free(&l);

    /* no limits at all */
    o.sync_rate = o.fsync_rate = o.max_tcp_conns = o.max_tcp_conns_per_ip = UINT32_MAX;
    CHECK(rndz__limits_init(&l, &o) == 0);
    ok = 0;
    for (int i = 0; i < 1000; i++)
        ok += rndz__limit_sync(&l, &a, t) + rndz__limit_fsync(&l, "x", 1, t) +
              (rndz__limit_tcp_open(&l, &a) != 0);
    CHECK(ok == 3000);
    rndz__limits_free(&l);
}

int main(void) {
    test_rate();
    test_rate_threads();
    test_limits();
    return tl_summary("test_limit");
}
