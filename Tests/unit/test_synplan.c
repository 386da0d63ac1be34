/* test_synplan.c: the TCP listener's SYN schedule (Sources/CRndz/synplan.c) on simulated time.
 *
 * First the schedule itself, step by step. Then a model of two home routers, millisecond by
 * millisecond: the connector's SYN leaves when the Redirect reaches it (the relayed delay
 * after the Fsync reached the listener); a SYN that meets a router whose own side has not sent
 * yet is dropped (most routers) or answered with a RST (some), and a RST that goes back
 * through the listener's router closes its conntrack entry, so the connector's SYNs no longer
 * get in until the listener sends again. The plan must connect in every case where a single
 * SYN (rndz 0.1.5, and our listener before the plan) does, and also behind RST routers. */
#include "synplan.h"

#include <stdio.h>
#include <string.h>
#include "unit.h"


static void test_delay(void) {
    CHECK(rndz__synplan_delay(40, 60) == 50);
    CHECK(rndz__synplan_delay(0, 60) == 60);
    CHECK(rndz__synplan_delay(60, 0) == 60);
    CHECK(rndz__synplan_delay(0, 0) == 0);
    CHECK(rndz__synplan_delay(5000, 5000) == RNDZ_SYNPLAN_MAX_DELAY_MS);
    CHECK(rndz__synplan_delay(UINT32_MAX, UINT32_MAX) == RNDZ_SYNPLAN_MAX_DELAY_MS);
}

static void test_coordinated_then_kernel(void) {
    rndz__synplan p;
    uint64_t wake;
    rndz__synplan_init(&p, 1000, 60, 11000);
    /* nothing before the coordinated moment */
    CHECK(rndz__synplan_step(&p, 1000, RNDZ_SYN_NONE, &wake) == RNDZ_SYN_IDLE);
    CHECK(wake == 1060);
    CHECK(rndz__synplan_step(&p, 1059, RNDZ_SYN_NONE, &wake) == RNDZ_SYN_IDLE);
    CHECK(wake == 1060);
    CHECK(rndz__synplan_step(&p, 1060, RNDZ_SYN_NONE, &wake) == RNDZ_SYN_START);
    CHECK(p.attempts == 1);
    /* an attempt under way is the kernel's: no second SYN, however long it takes */
    for (uint64_t t = wake; t < 11000; t += 100)
        CHECK(rndz__synplan_step(&p, t, RNDZ_SYN_BUSY, &wake) == RNDZ_SYN_IDLE);
    CHECK(p.attempts == 1);
    CHECK(rndz__synplan_step(&p, 11000, RNDZ_SYN_NONE, &wake) == RNDZ_SYN_IDLE);
    CHECK(wake == UINT64_MAX);
}

static void test_refused_every_time(void) {
    rndz__synplan p;
    uint64_t wake = 0, now = 0;
    rndz__synplan_init(&p, now, 100, 10000);
    uint64_t starts[16];
    int n = 0;
    while (now < 20000) {
        int a = rndz__synplan_step(&p, now, RNDZ_SYN_NONE, &wake);
        if (a == RNDZ_SYN_START && n < 16) starts[n++] = now;
        if (wake == UINT64_MAX) break;
        CHECK(wake > now);
        now = wake;
    }
    CHECK(n == RNDZ_SYNPLAN_MAX_ATTEMPTS);
    CHECK(starts[0] == 100);
    for (int i = 1; i < n; i++) CHECK(starts[i] - starts[i - 1] == RNDZ_SYNPLAN_RETRY_MS);
    CHECK(now <= 10000);
}

static void test_no_delay_and_clamp(void) {
    rndz__synplan p;
    uint64_t wake;
    rndz__synplan_init(&p, 0, 0, 5000);
    CHECK(rndz__synplan_step(&p, 0, RNDZ_SYN_NONE, &wake) == RNDZ_SYN_START);
    rndz__synplan_init(&p, 0, 5000, 10000); /* an inflated estimate waits at most the cap */
    CHECK(rndz__synplan_step(&p, 0, RNDZ_SYN_NONE, &wake) == RNDZ_SYN_IDLE);
    CHECK(wake == RNDZ_SYNPLAN_MAX_DELAY_MS);
    rndz__synplan_init(&p, 0, 100, 50); /* the deadline comes first: one SYN at once */
    CHECK(rndz__synplan_step(&p, 0, RNDZ_SYN_NONE, &wake) == RNDZ_SYN_START);
    CHECK(wake == 50); /* never a wake-up past the deadline */
    CHECK(rndz__synplan_step(&p, 50, RNDZ_SYN_NONE, &wake) == RNDZ_SYN_IDLE);
    CHECK(wake == UINT64_MAX);
}

/* --- the two-router model ----------------------------------------------------------------- */

typedef struct {
    uint32_t owd_ls, owd_sc, owd_p; /* one way: listener-server, server-connector, peer-peer */
    bool rst;                       /* the routers answer early SYNs with a RST */
} world;

/* Milliseconds from the Fsync to the crossed handshake, or 0 if none within 10 s. With
 * `plan` false the listener sends one SYN (kernel retransmissions only). */
static uint64_t simulate(const world *w, bool plan) {
    enum { HORIZON = 10000, NEVER = UINT32_MAX };
    /* pending arrivals, by time: SYNs from the listener at the connector's router, SYNs from
     * the connector at the listener's router, RSTs back at the listener */
    static uint32_t l_syn_at_r1[HORIZON + 2000], c_syn_at_r2[HORIZON + 2000],
        rst_at_l[HORIZON + 2000];
    memset(l_syn_at_r1, 0, sizeof l_syn_at_r1);
    memset(c_syn_at_r2, 0, sizeof c_syn_at_r2);
    memset(rst_at_l, 0, sizeof rst_at_l);
    uint64_t t_redirect = w->owd_ls + w->owd_sc; /* the connector's first SYN */
    bool lsock = false; /* the listener has a socket connecting */
    int gen = 0;        /* its generation: a RST ends only the attempt it answers */
    uint64_t l_started = 0;
    bool r2_open = false, r1_open = false;
    uint64_t c_next_syn = t_redirect;
    rndz__synplan p;
    rndz__synplan_init(&p, 0, rndz__synplan_delay(2 * w->owd_ls, 2 * w->owd_sc), HORIZON);
    uint64_t wake = 0;
    bool first = true;
    for (uint64_t t = 0; t < HORIZON; t++) {
        /* the listener */
        int action = RNDZ_SYN_IDLE;
        if (plan && t >= wake)
            action = rndz__synplan_step(&p, t, lsock ? RNDZ_SYN_BUSY : RNDZ_SYN_NONE, &wake);
        if (!plan && first) action = RNDZ_SYN_START;
        first = false;
        if (action != RNDZ_SYN_IDLE) {
            lsock = true, gen++, l_started = t;
        } else if (lsock && t > l_started && (t - l_started) % 1000 == 0) {
            action = RNDZ_SYN_START; /* the kernel's retransmission, each second (capped) */
        }
        if (action != RNDZ_SYN_IDLE) {
            r2_open = true; /* our SYN went out through our router */
            l_syn_at_r1[t + w->owd_p] = (uint32_t)gen;
        }
        /* the connector: first SYN at the Redirect, again each second (the cap) */
        if (t == c_next_syn) {
            r1_open = true;
            c_syn_at_r2[t + w->owd_p] = 1;
            c_next_syn = t + 1000;
        }
        /* arrivals */
        if (rst_at_l[t] && (int)rst_at_l[t] == gen && lsock) lsock = false;
        if (l_syn_at_r1[t]) {
            if (r1_open) return t + w->owd_p; /* crossed: the connector answers SYN-ACK */
            if (w->rst) {
                rst_at_l[t + w->owd_p] = l_syn_at_r1[t];
                r2_open = false; /* the RST through our router ends its entry */
            }
        }
        if (c_syn_at_r2[t]) {
            if (r2_open && lsock) return t + w->owd_p; /* simultaneous open */
            /* else: dropped, or refused (the connector tries again within a second anyway) */
        }
    }
    return 0;
}

static void test_model(void) {
    int plan_ok = 0, single_ok = 0, plan_rst_ok = 0, single_rst_ok = 0, n = 0;
    uint64_t worst = 0;
    for (uint32_t ls = 1; ls <= 150; ls += 7)
        for (uint32_t sc = 1; sc <= 150; sc += 11)
            for (uint32_t pp = 1; pp <= 250; pp += 13) {
                n++;
                world w = {ls, sc, pp, false};
                uint64_t a = simulate(&w, true), b = simulate(&w, false);
                plan_ok += a > 0;
                single_ok += b > 0;
                if (a > worst) worst = a;
                CHECK(a > 0 || b == 0); /* never worse than a single SYN */
                w.rst = true;
                uint64_t c = simulate(&w, true), d = simulate(&w, false);
                plan_rst_ok += c > 0;
                single_rst_ok += d > 0;
                CHECK(c > 0); /* behind RST routers the coordinated SYN crosses */
            }
    printf("test_synplan: model, %d paths: drop routers: plan %d, single SYN %d (slowest %llu "
           "ms); RST routers: plan %d, single SYN %d\n",
           n, plan_ok, single_ok, (unsigned long long)worst, plan_rst_ok, single_rst_ok);
    CHECK(plan_ok == n);
    CHECK(plan_rst_ok == n);
    CHECK(single_rst_ok < n); /* the model does show the problem the plan solves */
}

int main(void) {
    test_delay();
    test_coordinated_then_kernel();
    test_refused_every_time();
    test_no_delay_and_clamp();
    test_model();
    return tl_summary("test_synplan");
}
