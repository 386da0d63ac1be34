/* test_punch.c: the probe state machine (Sources/CRndz/punch.c) on simulated time.
 *
 * Two machines, a connector and a listener, exchange probes and acks through a simulated
 * network that loses, duplicates, delays and (through random delays) reorders datagrams. No
 * sockets, no sleeping: thousands of connects run in a fraction of a second, and each run is
 * deterministic (seeded). */
#include "punch.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "unit.h"


static uint64_t rng;
static double uniform(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng >> 11) / (double)(1ull << 53);
}

static struct sockaddr_storage addr(const char *text) {
    struct sockaddr_storage ss;
    if (rndz_addr_parse(text, &ss, NULL)) abort();
    return ss;
}

/* The network: which destination addresses reach the other side, with what one-way delay. */
typedef struct net {
    double loss;    /* per datagram, end to end */
    double dup;     /* chance a datagram arrives twice */
    uint32_t dmin, dmax; /* one-way delay range (ms): random delays reorder */
    bool lan_ok;    /* the peers share a LAN: private candidates reach */
} net;

typedef struct pkt {
    uint64_t at;
    int to;   /* 0 connector, 1 listener */
    int type; /* probe or ack */
    uint32_t seq;
    struct sockaddr_storage src; /* as seen by the receiver */
    struct sockaddr_storage via; /* the candidate it was sent to (for acks: the reply path) */
} pkt;

#define MAXQ 4096
static pkt q[MAXQ];
static size_t nq;

static void enqueue(const net *n, uint64_t now, int to, int type, uint32_t seq,
                    const struct sockaddr_storage *src, const struct sockaddr_storage *via) {
    int copies = uniform() < n->dup ? 2 : 1;
    for (int c = 0; c < copies; c++) {
        if (uniform() < n->loss || nq == MAXQ) continue;
        uint32_t d = n->dmin + (uint32_t)(uniform() * (n->dmax - n->dmin + 1));
        q[nq++] = (pkt){now + d, to, type, seq, *src, *via};
    }
}

static bool reachable(const net *n, const struct sockaddr_storage *dst) {
    return n->lan_ok || !rndz__addr_is_private(dst);
}

/* One connect: returns true if the connector verified a path; fills rtt, the winner and the
 * time it took. */
typedef struct outcome {
    bool ok, lan;
    uint32_t rtt;
    uint64_t took;
    uint32_t probes;
} outcome;

static outcome run(const net *n, uint32_t timeout_ms) {
    /* the connector sits behind 198.51.100.7:5000 (LAN 10.1.0.10:5000); the listener behind
     * 203.0.113.12:4000 (LAN 10.2.0.10:4000, or 10.1.0.20 when they share a LAN) */
    struct sockaddr_storage c_pub = addr("198.51.100.7:5000"), c_lan = addr("10.1.0.10:5000");
    struct sockaddr_storage l_pub = addr("203.0.113.12:4000"),
                            l_lan = addr(n->lan_ok ? "10.1.0.20:4000" : "10.2.0.10:4000");
    rndz__punch pc, pl;
    uint64_t now = 1000000;
    rndz__punch_init(&pc, 42, now, timeout_ms);
    rndz__punch_add(&pc, &l_pub, false);
    rndz__punch_add(&pc, &l_lan, true);
    rndz__punch_init(&pl, 42, now, timeout_ms);
    rndz__punch_add(&pl, &c_pub, false);
    rndz__punch_add(&pl, &c_lan, true);
    nq = 0;
    uint64_t start = now;
    outcome o = {0};
    while (pc.state == RNDZ_PUNCH_RUNNING) {
        rndz__punch_send s[RNDZ_MAX_CANDS + 1];
        uint64_t nc, nl;
        size_t k = rndz__punch_tick(&pc, now, s, 9, &nc);
        for (size_t i = 0; i < k; i++) {
            const struct sockaddr_storage *dst = &pc.cand[s[i].cand];
            o.probes++;
            if (reachable(n, dst)) /* the listener sees it from our matching address */
                enqueue(n, now, 1, RNDZ_PROBE, s[i].seq,
                        rndz__addr_is_private(dst) ? &c_lan : &c_pub, dst);
        }
        k = rndz__punch_tick(&pl, now, s, 9, &nl);
        for (size_t i = 0; i < k; i++) {
            const struct sockaddr_storage *dst = &pl.cand[s[i].cand];
            if (reachable(n, dst))
                enqueue(n, now, 0, RNDZ_PROBE, s[i].seq,
                        rndz__addr_is_private(dst) ? &l_lan : &l_pub, dst);
        }
        if (pc.state != RNDZ_PUNCH_RUNNING) break;
        /* next event: the earliest packet or timer */
        uint64_t next = nc < nl ? nc : nl;
        size_t best = nq;
        for (size_t i = 0; i < nq; i++)
            if (q[i].at <= next && (best == nq || q[i].at < q[best].at)) best = i;
        if (best < nq) {
            pkt p = q[best];
            q[best] = q[--nq];
            now = p.at > now ? p.at : now;
            rndz__punch *me = p.to == 0 ? &pc : &pl;
            const struct sockaddr_storage *mine =
                rndz__addr_is_private(&p.src) ? (p.to == 0 ? &c_lan : &l_lan)
                                              : (p.to == 0 ? &c_pub : &l_pub);
            if (p.type == RNDZ_PROBE) /* answer from where it arrived, to where it came from */
                enqueue(n, now, 1 - p.to, RNDZ_PROBE_ACK, p.seq, mine, &p.src);
            else
                rndz__punch_on_ack(me, &p.src, p.seq, now);
        } else {
            if (next == UINT64_MAX) break;
            now = next > now ? next : now;
        }
    }
    o.ok = pc.state == RNDZ_PUNCH_VERIFIED;
    o.took = now - start;
    if (o.ok) {
        o.rtt = pc.rtt_ms;
        o.lan = pc.lan[pc.winner];
    }
    return o;
}

static void test_clean(void) {
    net n = {.loss = 0, .dmin = 20, .dmax = 20};
    rng = 1;
    outcome o = run(&n, 10000);
    CHECK(o.ok);
    CHECK(o.rtt == 40);       /* exactly the round trip */
    /* the first probe's ack at one RTT, then the LAN grace (min(RTT, 50 ms)) in case the
     * peer's LAN address answers too: it cannot here */
    CHECK(o.took == 40 + 40);
    CHECK(!o.lan);            /* no shared LAN: the public path */
    CHECK(o.probes == 2);     /* one round to both candidates */
}

static void test_lan_preferred(void) {
    /* a shared LAN: the LAN path is faster here, and it wins even if the public ack comes
     * first */
    net n = {.loss = 0, .dmin = 5, .dmax = 5, .lan_ok = true};
    rng = 2;
    outcome o = run(&n, 10000);
    CHECK(o.ok && o.lan);
}

static void test_all_lost(void) {
    net n = {.loss = 1.0, .dmin = 10, .dmax = 10};
    rng = 3;
    outcome o = run(&n, 5000);
    CHECK(!o.ok);
    CHECK(o.took == 5000); /* gives up exactly at the deadline */
    /* pacing: rounds at 0, 100, 300, 700, 1500, 2500, 3500, 4500 ms: 8 rounds x 2 candidates */
    CHECK(o.probes == 16);
}

static void test_pacing_schedule(void) {
    rndz__punch p;
    rndz__punch_init(&p, 1, 0, 10000);
    struct sockaddr_storage a = addr("203.0.113.1:1");
    rndz__punch_add(&p, &a, false);
    uint64_t want[] = {0, 100, 300, 700, 1500, 2500, 3500};
    rndz__punch_send s[4];
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        uint64_t next;
        CHECK(rndz__punch_tick(&p, want[i], s, 4, &next) == 1);
        CHECK(s[0].seq == i);
        if (i + 1 < sizeof want / sizeof want[0]) CHECK(next == want[i + 1]);
        /* nothing is due before the next time */
        if (i + 1 < sizeof want / sizeof want[0])
            CHECK(rndz__punch_tick(&p, want[i + 1] - 1, s, 4, &next) == 0);
    }
}

/* An ack for a probe sent long ago, a duplicate, or from an unknown address. */
static void test_odd_acks(void) {
    rndz__punch p;
    rndz__punch_init(&p, 1, 0, 10000);
    struct sockaddr_storage a = addr("203.0.113.1:1"), other = addr("203.0.113.9:9");
    rndz__punch_add(&p, &a, false);
    rndz__punch_send s[4];
    uint64_t next;
    rndz__punch_tick(&p, 0, s, 4, &next);
    rndz__punch_on_ack(&p, &a, 5, 10); /* a seq never sent: ignored */
    CHECK(p.state == RNDZ_PUNCH_RUNNING);
    /* an ack from an address we never probed (the peer's NAT mapped another port): it still
     * proves a path, and is adopted */
    rndz__punch_on_ack(&p, &other, 0, 30);
    CHECK(p.state == RNDZ_PUNCH_VERIFIED);
    CHECK(p.rtt_ms == 30);
    CHECK(rndz__addr_equal((struct sockaddr *)&p.cand[p.winner], (struct sockaddr *)&other));
}

/* The bar: with 20% loss on each WAN link (a datagram crosses two: 36% end to end),
 * duplication, and delays that reorder, at least 99% of connects verify in 10 s. */
static void test_loss(double link_loss, int trials, double want_rate) {
    net n = {.loss = 1 - (1 - link_loss) * (1 - link_loss), .dup = 0.05, .dmin = 10, .dmax = 80};
    rng = 7;
    int ok = 0;
    uint64_t sum = 0, worst = 0;
    for (int i = 0; i < trials; i++) {
        outcome o = run(&n, 10000);
        if (o.ok) {
            ok++;
            sum += o.took;
            if (o.took > worst) worst = o.took;
            CHECK(o.rtt >= 20 && o.rtt <= 160); /* a real round trip, never a retry's mix */
        }
    }
    double rate = (double)ok / trials;
    printf("test_punch: %.0f%% loss per link: %d/%d verified (%.2f%%), mean %.0f ms, worst "
           "%llu ms\n", link_loss * 100, ok, trials, rate * 100, ok ? (double)sum / ok : 0,
           (unsigned long long)worst);
    CHECK(rate >= want_rate);
}

int main(void) {
    test_clean();
    test_lan_preferred();
    test_all_lost();
    test_pacing_schedule();
    test_odd_acks();
    test_loss(0.10, 2000, 0.999);
    test_loss(0.20, 2000, 0.99);
    return tl_summary("test_punch");
}
