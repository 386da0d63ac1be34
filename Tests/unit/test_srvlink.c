/* test_srvlink.c: a listener's link to one server (Sources/CRndz/srvlink.c) on simulated time.
 *
 * Datagram links: the fast first pings, the jittered keepalive once answered, a server that
 * goes silent is lost and pinged fast again, and answers again. Stream links: connect at once,
 * ping on connect, silence closes the connection, reconnects back off 1, 2, 4 ... 30 s, a Pong
 * resets the backoff. Then a model: a server that is down for a while, then back; the link
 * must be registered again within one keepalive (+ the backoff in force) of its return; and a
 * server that goes silent for good: down within one keepalive + DOWN_MS. */
#include "srvlink.h"

#include <stdio.h>
#include "unit.h"

#define KA 10000 /* keepalive, ms */

static void test_jitter(void) {
    for (uint32_t r = 0; r < 5000; r += 7) {
        uint32_t j = rndz__jitter(KA, r);
        CHECK(j >= 8000 && j <= 12000);
    }
    CHECK(rndz__jitter(60000, 0) <= 25000);          /* conntrack's 30 s UDP timeout */
    CHECK(rndz__jitter(60000, UINT32_MAX) <= 25000);
    CHECK(rndz__jitter(0, 5) == 1);
}

static void test_datagram(void) {
    rndz__srvlink k;
    rndz__link_init(&k, false, KA, 42);
    CHECK(k.state == RNDZ_LINK_UP);
    /* no answer yet: a ping now and every second */
    CHECK(rndz__link_tick(&k, 0) == RNDZ_LINK_PING);
    CHECK(rndz__link_wake(&k) == 1000);
    CHECK(rndz__link_tick(&k, 500) == 0);
    CHECK(rndz__link_tick(&k, 1000) == RNDZ_LINK_PING);
    CHECK(rndz__link_tick(&k, 2000) == RNDZ_LINK_PING);
    /* answered: the keepalive pace, jittered */
    CHECK(rndz__link_on_pong(&k, 2050));
    CHECK(!rndz__link_on_pong(&k, 2060)); /* only the first answer counts as new */
    uint64_t w = rndz__link_wake(&k);
    CHECK(w >= 2060 + 8000 - 10 && w <= 2050 + 12000);
    CHECK(rndz__link_tick(&k, w - 1) == 0);
    CHECK(rndz__link_tick(&k, w) == RNDZ_LINK_PING);
    /* silent for 3 keepalives + 1 s: lost, then fast pings again */
    uint64_t t = w, lost_at = 0;
    unsigned a = 0;
    while (t < 200000 && !lost_at) {
        t = rndz__link_wake(&k);
        a = rndz__link_tick(&k, t);
        if (a & RNDZ_LINK_LOST) lost_at = t;
    }
    CHECK(a == (RNDZ_LINK_LOST | RNDZ_LINK_PING)); /* a ping at once */
    CHECK(lost_at == 2060 + 3 * KA + 1000 + 1);
    CHECK(!k.answered);
    CHECK(rndz__link_wake(&k) == lost_at + 1000);
    t = rndz__link_wake(&k);
    CHECK(rndz__link_tick(&k, t) == RNDZ_LINK_PING);
    CHECK(rndz__link_wake(&k) == t + 1000);
    CHECK(rndz__link_on_pong(&k, t + 20)); /* back: a new first answer */
    /* a ping asked for now comes at the next tick, not at the keepalive */
    uint64_t due = rndz__link_wake(&k);
    rndz__link_ping_now(&k, t + 30);
    CHECK(rndz__link_wake(&k) == t + 30 && due > t + 30);
    CHECK(rndz__link_tick(&k, t + 30) & RNDZ_LINK_PING);
    /* a short keepalive is also the fast pace */
    rndz__link_init(&k, false, 300, 1);
    CHECK(rndz__link_tick(&k, 0) == RNDZ_LINK_PING);
    CHECK(rndz__link_wake(&k) == 300);
}

static void test_stream(void) {
    rndz__srvlink k;
    rndz__link_init(&k, true, KA, 7);
    CHECK(k.state == RNDZ_LINK_DOWN);
    CHECK(rndz__link_tick(&k, 0) == RNDZ_LINK_CONNECT);
    CHECK(k.state == RNDZ_LINK_CONNECTING);
    CHECK(rndz__link_wake(&k) == UINT64_MAX); /* the connect's event moves it on */
    CHECK(rndz__link_tick(&k, 5000) == 0);
    rndz__link_on_connected(&k, 5000);
    CHECK(rndz__link_tick(&k, 5000) == RNDZ_LINK_PING); /* register at once */
    CHECK(rndz__link_on_pong(&k, 5010));
    /* silence: lost after 3 keepalives + 1 s, and down with the first backoff */
    uint64_t t = 5010;
    unsigned a = 0;
    while (!(a & RNDZ_LINK_LOST) && t < 100000) {
        t = rndz__link_wake(&k);
        a = rndz__link_tick(&k, t);
    }
    CHECK(t == 5010 + 3 * KA + 1000 + 1);
    CHECK(k.state == RNDZ_LINK_DOWN);
    CHECK(k.retry_at == t + 1000);
    /* failed connects back off: 1 s (used), then 2, 4, 8, 16, 30, 30 */
    uint32_t want[] = {2000, 4000, 8000, 16000, 30000, 30000};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        t = rndz__link_wake(&k);
        CHECK(rndz__link_tick(&k, t) == RNDZ_LINK_CONNECT);
        CHECK(rndz__link_down(&k, t) == want[i]);
    }
    /* a connection that comes up is not enough: a Pong resets the backoff */
    t = rndz__link_wake(&k);
    CHECK(rndz__link_tick(&k, t) == RNDZ_LINK_CONNECT);
    rndz__link_on_connected(&k, t);
    CHECK(rndz__link_down(&k, t + 5) == 30000);
    t = rndz__link_wake(&k);
    CHECK(rndz__link_tick(&k, t) == RNDZ_LINK_CONNECT);
    rndz__link_on_connected(&k, t);
    rndz__link_on_pong(&k, t + 3);
    CHECK(rndz__link_down(&k, t + 9) == 1000);
    /* bytes keep a connection alive without a Pong */
    rndz__link_init(&k, true, KA, 9);
    rndz__link_tick(&k, 0);
    rndz__link_on_connected(&k, 0);
    for (t = 0; t < 100000; t += 1000) {
        rndz__link_on_rx(&k, t);
        CHECK(!(rndz__link_tick(&k, t) & RNDZ_LINK_LOST));
    }
}

/* A keepalive that goes unanswered: sent again each second (a lost datagram costs a second,
 * not a keepalive), answered late it is no loss; unanswered DOWN_MS it is down, so a server
 * set stands another server in (srvset.h) long before the link counts as lost. */
static void test_keepalive_unanswered(void) {
    rndz__srvlink k;
    rndz__link_init(&k, false, KA, 5);
    CHECK(rndz__link_tick(&k, 0) == RNDZ_LINK_PING);
    CHECK(rndz__link_on_pong(&k, 10));
    uint64_t w = rndz__link_wake(&k);
    CHECK(rndz__link_tick(&k, w) == RNDZ_LINK_PING);
    CHECK(rndz__link_down_at(&k) == w + RNDZ_LINK_DOWN_MS);
    CHECK(rndz__link_wake(&k) == w + 1000); /* unanswered: again in a second */
    CHECK(rndz__link_tick(&k, w + 1000) == RNDZ_LINK_PING);
    CHECK(!rndz__link_on_pong(&k, w + 1005)); /* the resend answered */
    CHECK(!rndz__link_is_down(&k, w + 1005) && rndz__link_down_at(&k) == UINT64_MAX);
    uint64_t w2 = rndz__link_wake(&k);
    CHECK(w2 >= w + 1005 + 8000 && w2 <= w + 1005 + 12000); /* the keepalive pace again */
    /* a server gone: pings each second, down DOWN_MS after the keepalive */
    CHECK(rndz__link_tick(&k, w2) == RNDZ_LINK_PING);
    CHECK(rndz__link_tick(&k, w2 + 1000) == RNDZ_LINK_PING);
    CHECK(rndz__link_tick(&k, w2 + 2000) == RNDZ_LINK_PING);
    CHECK(!rndz__link_is_down(&k, w2 + RNDZ_LINK_DOWN_MS - 1));
    CHECK(rndz__link_is_down(&k, w2 + RNDZ_LINK_DOWN_MS));
    CHECK(k.answered); /* down, not lost: still registered there as far as we know */
    CHECK(!rndz__link_on_pong(&k, w2 + 3500)); /* back: up, at once */
    CHECK(!rndz__link_is_down(&k, w2 + 3500));
    /* stream: the keepalive is TCP's to resend; unanswered DOWN_MS, the link is down too */
    rndz__link_init(&k, true, KA, 6);
    CHECK(rndz__link_tick(&k, 0) == RNDZ_LINK_CONNECT);
    rndz__link_on_connected(&k, 5);
    CHECK(rndz__link_tick(&k, 5) == RNDZ_LINK_PING);
    CHECK(rndz__link_on_pong(&k, 8));
    w = rndz__link_wake(&k);
    CHECK(rndz__link_tick(&k, w) == RNDZ_LINK_PING);
    CHECK(rndz__link_wake(&k) >= w + 8000); /* no resend of our own */
    CHECK(!rndz__link_is_down(&k, w + RNDZ_LINK_DOWN_MS - 1));
    CHECK(rndz__link_is_down(&k, w + RNDZ_LINK_DOWN_MS));
    rndz__link_on_pong(&k, w + RNDZ_LINK_DOWN_MS + 200);
    CHECK(!rndz__link_is_down(&k, w + RNDZ_LINK_DOWN_MS + 200));
}

/* A server that goes silent at `down` (ms) and stays so (a host gone, no reset): every Ping
 * before is answered after 5 ms. Returns when the link first counts as down. */
static uint64_t model_silent(bool stream, uint64_t down, uint32_t seed) {
    rndz__srvlink k;
    rndz__link_init(&k, stream, KA, seed);
    uint64_t t = 0, pong_at = UINT64_MAX;
    while (t < down + 120000) {
        uint64_t w = rndz__link_wake(&k), d = rndz__link_down_at(&k);
        uint64_t next = w < pong_at ? w : pong_at;
        if (d > t && d < next) next = d;
        if (stream && k.state == RNDZ_LINK_CONNECTING) next = t + 1;
        t = next < t ? t : next;
        if (rndz__link_is_down(&k, t) && t >= down) return t;
        if (t == pong_at) {
            pong_at = UINT64_MAX;
            if (t < down) rndz__link_on_pong(&k, t);
            continue;
        }
        if (stream && k.state == RNDZ_LINK_CONNECTING) {
            rndz__link_on_connected(&k, t);
            continue;
        }
        unsigned a = rndz__link_tick(&k, t);
        if ((a & RNDZ_LINK_PING) && pong_at == UINT64_MAX) pong_at = t + 5;
    }
    return UINT64_MAX;
}

static void test_model_silent(void) {
    for (int stream = 0; stream < 2; stream++) {
        for (uint32_t i = 0; i < 50; i++) {
            uint64_t down = 40000 + i * 997; /* anywhere in a keepalive period */
            uint64_t at = model_silent(stream, down, 77 + i);
            /* the next keepalive (at most 1.2 x 10 s) and DOWN_MS: 15 s, where the link
             * would count as lost only after 3 keepalives + 1 s (31 s) */
            uint64_t bound = down + 12000 + RNDZ_LINK_DOWN_MS;
            CHECK(at >= down && at <= bound);
            if (!(at >= down && at <= bound))
                fprintf(stderr, "  stream %d silent from %llu: down at %llu, bound %llu\n",
                        stream, (unsigned long long)down, (unsigned long long)at,
                        (unsigned long long)bound);
        }
    }
}

/* A server down from `down` to `up` (ms), having forgotten us when it comes back: the link is
 * driven event by event; every Ping while the server is up is answered after 5 ms. Returns
 * the first answer at or after `up` (0: none within the run). */
static uint64_t model(bool stream, uint64_t down, uint64_t up) {
    rndz__srvlink k;
    rndz__link_init(&k, stream, KA, 1234);
    uint64_t t = 0, pong_at = UINT64_MAX, back = 0;
    while (t < up + 120000) {
        uint64_t w = rndz__link_wake(&k);
        uint64_t next = w < pong_at ? w : pong_at;
        if (stream && k.state == RNDZ_LINK_CONNECTING) next = t + 1; /* its event */
        if (next == UINT64_MAX) break;
        t = next < t ? t : next;
        bool server_up = t < down || t >= up;
        if (t == pong_at) {
            pong_at = UINT64_MAX;
            if (server_up) rndz__link_on_pong(&k, t);
            if (server_up && t >= up && !back) back = t;
            if (!server_up && stream) rndz__link_down(&k, t);
            continue;
        }
        if (stream && k.state == RNDZ_LINK_CONNECTING) {
            if (server_up) rndz__link_on_connected(&k, t);
            else rndz__link_down(&k, t); /* refused */
            continue;
        }
        if (stream && k.state == RNDZ_LINK_UP && t >= down && t < up) {
            rndz__link_down(&k, t); /* the server's end reset the connection */
            continue;
        }
        unsigned a = rndz__link_tick(&k, t);
        if ((a & RNDZ_LINK_PING) && server_up && pong_at == UINT64_MAX) pong_at = t + 5;
    }
    return back;
}

static void test_model(void) {
    for (int stream = 0; stream < 2; stream++) {
        for (uint64_t outage = 1000; outage <= 120000; outage *= 3) {
            uint64_t down = 50000, up = down + outage;
            uint64_t back = model(stream, down, up);
            /* UDP: the next keepalive (at most 12 s) registers again; a long outage is
             * lost after 3 keepalives + 1 s, then a ping each second. TCP: the backoff in
             * force (doubling from 1 s while refused, at most 30 s) plus a round trip. */
            uint64_t bound = stream ? up + 30000 + 10 : up + 12000 + 10;
            CHECK(back >= up && back <= bound);
            if (!(back >= up && back <= bound))
                fprintf(stderr, "  stream %d outage %llu: back at %llu, bound %llu\n", stream,
                        (unsigned long long)outage, (unsigned long long)back,
                        (unsigned long long)bound);
        }
    }
}

int main(void) {
    test_jitter();
    test_datagram();
    test_stream();
    test_keepalive_unanswered();
    test_model();
    test_model_silent();
    return tl_summary("test_srvlink");
}
