/* test_predict.c: port prediction (Sources/CRndz/predict.c) on simulated time, against models
 * of the hard side's NAT: random (every mapping a random port of 1024..65535) and sequential
 * (each new mapping the last one + step, after the port the server saw, sometimes with ports
 * taken in between by other traffic). Both machines run together, 1 ms steps, a one-way
 * delay between the sides; a probe of the easy side succeeds when it lands on a port the
 * hard side's NAT mapped toward it before it arrived. Checked: the pace (sockets and probes
 * per ms, never more), the totals (N sockets, at most PASSES x M probes), the resends, and
 * the success rates the birthday arithmetic promises. */
#include "predict.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "unit.h"

#define ONE_WAY 20 /* ms */

typedef struct trial {
    bool ok;
    uint64_t at; /* ms to the first hit */
    uint32_t probes, sockets;
} trial;

static uint32_t lcg(uint32_t *s) {
    *s = *s * 1103515245u + 12345u;
    return *s >> 8;
}

/* One connect: the hard side's NAT model gives socket i port ports[i] (filled lazily). */
static trial run(uint32_t seed, bool sequential, int step, uint32_t timeout) {
    static rndz__predict h, e;
    static uint16_t port_of[RNDZ_PREDICT_SOCKETS];
    static int64_t opened_at[65536]; /* by public port: when its mapping toward E opened */
    for (int i = 0; i < 65536; i++) opened_at[i] = -1;
    uint32_t rs = seed;
    uint16_t seen = (uint16_t)(20000 + lcg(&rs) % 20000);
    rndz__predict_init(&h, RNDZ_PREDICT_HARD, 0, timeout, 0, seed * 7 + 1);
    rndz__predict_init(&e, RNDZ_PREDICT_EASY, 0, timeout, seen, seed * 13 + 5);
    uint16_t last = seen;
    trial t = {0};
    rndz__predict_send out[64];
    for (uint64_t now = 0; now < timeout && !t.ok; now++) {
        uint64_t nh, ne;
        size_t n = rndz__predict_tick(&h, now, out, 64, &nh);
        CHECK(n <= RNDZ_PREDICT_HARD_PER_MS || n == 0 || now == 0 || h.opened == RNDZ_PREDICT_SOCKETS);
        for (size_t i = 0; i < n; i++) {
            if (!out[i].open) continue;
            t.sockets++;
            uint16_t p;
            if (sequential) {
                last = (uint16_t)(last + step + (lcg(&rs) % 8 == 0 ? 1 : 0)); /* a stray */
                p = last;
            } else {
                do p = (uint16_t)(1024 + lcg(&rs) % 64512); while (opened_at[p] >= 0);
            }
            port_of[out[i].index] = p;
            opened_at[p] = (int64_t)now;
        }
        n = rndz__predict_tick(&e, now, out, 64, &ne);
        CHECK(n <= RNDZ_PREDICT_EASY_PER_MS);
        for (size_t i = 0; i < n; i++) {
            t.probes++;
            int64_t o = opened_at[out[i].port];
            if (o >= 0 && o <= (int64_t)(now + ONE_WAY)) {
                t.ok = true;
                t.at = now + 2 * ONE_WAY; /* there, and the ack back */
                break;
            }
        }
    }
    (void)port_of;
    return t;
}

static void test_pace_and_totals(void) {
    rndz__predict h;
    rndz__predict_send out[512];
    rndz__predict_init(&h, RNDZ_PREDICT_HARD, 1000, 5000, 0, 1);
    uint64_t next;
    /* late by 100 ms: at most what the pace allows by then, never all at once */
    size_t n = rndz__predict_tick(&h, 1100, out, 512, &next);
    CHECK_EQ_INT((long)n, 101);
    uint32_t opened = (uint32_t)n, resends = 0;
    for (uint64_t now = 1101; now < 6000; now++) {
        n = rndz__predict_tick(&h, now, out, 512, &next);
        for (size_t i = 0; i < n; i++) {
            if (out[i].open) opened++;
            else resends++;
            CHECK(out[i].index < RNDZ_PREDICT_SOCKETS);
        }
        CHECK(next > now || n > 0);
    }
    CHECK_EQ_INT(opened, RNDZ_PREDICT_SOCKETS);
    /* rounds every RESEND_MS after the opening (~4.6 s left: 7 or 8 rounds of 256) */
    CHECK(resends >= 6 * RNDZ_PREDICT_SOCKETS && resends <= 9 * RNDZ_PREDICT_SOCKETS);
    /* past the deadline: nothing */
    CHECK_EQ_INT((long)rndz__predict_tick(&h, 6000, out, 512, &next), 0);

    rndz__predict e;
    rndz__predict_init(&e, RNDZ_PREDICT_EASY, 0, 60000, 40000, 2);
    uint32_t sent = 0;
    bool dup = false;
    static uint8_t seen_in_pass[65536];
    memset(seen_in_pass, 0, sizeof seen_in_pass);
    for (uint64_t now = 0; now < 60000; now++) {
        n = rndz__predict_tick(&e, now, out, 512, &next);
        for (size_t i = 0; i < n; i++) {
            if (sent % RNDZ_PREDICT_PROBES == 0) memset(seen_in_pass, 0, sizeof seen_in_pass);
            dup |= seen_in_pass[out[i].port]++ > 0;
            CHECK(out[i].port >= RNDZ_PREDICT_PORT_MIN);
            /* the sequential guesses first: right after the port the server saw */
            if (sent < 5) CHECK_EQ_INT(out[i].port, 40001 + (int)sent);
            sent++;
        }
    }
    CHECK(!dup); /* no port twice in one pass */
    CHECK_EQ_INT(sent, RNDZ_PREDICT_PROBES * RNDZ_PREDICT_PASSES); /* then it stops */
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_random_nat(void) {
    enum { TRIALS = 400 };
    int first_pass = 0, ok = 0;
    static uint64_t at[TRIALS];
    for (uint32_t s = 1; s <= TRIALS; s++) {
        trial t = run(s, false, 0, 5000);
        /* a pass: the opening (256 ms) overlaps it; M probes at 2/ms take 512 ms */
        if (t.ok && t.at <= RNDZ_PREDICT_PROBES / RNDZ_PREDICT_EASY_PER_MS + 2 * ONE_WAY + 300)
            first_pass++;
        if (t.ok) at[ok++] = t.at;
        CHECK(t.sockets <= RNDZ_PREDICT_SOCKETS);
    }
    qsort(at, (size_t)ok, sizeof at[0], cmp_u64);
    printf("test_predict: random NAT: %d/%d found a path, %d in the first pass; median %llu ms\n",
           ok, TRIALS, first_pass, (unsigned long long)at[ok / 2]);
    /* the arithmetic: 98.3% a pass (the early probes meet fewer open mappings: a little
     * less), more than 99.9% within 4 passes */
    CHECK(first_pass >= TRIALS * 90 / 100);
    CHECK(ok >= TRIALS * 99 / 100);
}

static void test_sequential_nat(void) {
    for (int step = 1; step <= 2; step++) {
        uint64_t worst = 0;
        for (uint32_t s = 1; s <= 200; s++) {
            trial t = run(s, true, step, 5000);
            CHECK(t.ok);
            if (t.at > worst) worst = t.at;
        }
        printf("test_predict: sequential NAT, step %d: 200/200, slowest %llu ms\n", step,
               (unsigned long long)worst);
        CHECK(worst < 400); /* found among the guesses right after the port the server saw */
    }
}

int main(void) {
    test_pace_and_totals();
    test_random_nat();
    test_sequential_nat();
    return tl_summary("test_predict");
}
