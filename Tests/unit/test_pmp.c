/* test_pmp.c: the port-mapping client (Sources/CRndz/pmp.c) on simulated time, against
 * gateways built from the RFCs' formats: a PCP gateway that maps; one that says "unsupported
 * version" (then NAT-PMP: external address, then the mapping); a NAT-PMP gateway answering
 * the PCP request in its own format; refusals; silence (given up after 350 ms, not asked
 * again for 10 minutes); renewal at half the lifetime, a lost renewal; the delete request;
 * replies that are not ours, and junk, change nothing. */
#include "pmp.h"

#include <stdio.h>
#include <string.h>
#include "unit.h"

static const uint8_t OURS[4] = {192, 168, 1, 10}, EXT[4] = {203, 0, 113, 7};
static const uint8_t NONCE[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8), p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (24 - 8 * i));
}

/* A PCP MAP answer to request q (60 bytes) with a result, lifetime and external port. */
static size_t pcp_answer(const uint8_t *q, uint8_t result, uint32_t life, uint16_t port,
                         uint8_t *a) {
    memset(a, 0, 60);
    a[0] = 2;
    a[1] = 0x81;
    a[3] = result;
    put32(a + 4, life);
    memcpy(a + 24, q + 24, 12 + 4 + 2); /* nonce, protocol, reserved, internal port */
    put16(a + 42, port);
    a[54] = a[55] = 0xff;
    memcpy(a + 56, EXT, 4);
    return 60;
}

static void test_pcp(void) {
    rndz__pmp m;
    rndz__pmp_init(&m, OURS, 45001, NONCE);
    uint8_t q[60], a[60];
    uint64_t wake;
    size_t n = rndz__pmp_next(&m, 1000, q, &wake);
    CHECK_EQ_INT((long)n, 60);
    CHECK_EQ_INT(q[0], 2);
    CHECK_EQ_INT(q[1], 1);
    CHECK_EQ_INT(q[36], 17);
    CHECK_EQ_MEM(q + 20, 4, OURS, 4);
    CHECK_EQ_INT(q[40] << 8 | q[41], 45001);
    CHECK_EQ_INT((long)wake, 1050);
    /* an answer with another nonce: not ours */
    pcp_answer(q, 0, 600, 50000, a);
    a[24] ^= 1;
    CHECK_EQ_INT(rndz__pmp_input(&m, a, 60, 1010), 0);
    CHECK_EQ_INT(m.state, RNDZ_PMP_PCP);
    pcp_answer(q, 0, 600, 50000, a);
    CHECK_EQ_INT(rndz__pmp_input(&m, a, 60, 1010), 1);
    CHECK_EQ_INT(m.state, RNDZ_PMP_MAPPED);
    CHECK(m.pcp && m.changed);
    CHECK_EQ_INT(m.ext_port, 50000);
    CHECK_EQ_MEM(m.ext_ip, 4, EXT, 4);
    /* nothing until half the lifetime, then the renewal asks for the same port */
    CHECK_EQ_INT((long)rndz__pmp_next(&m, 2000, q, &wake), 0);
    CHECK_EQ_INT((long)wake, 1010 + 300000);
    n = rndz__pmp_next(&m, 1010 + 300000, q, &wake);
    CHECK_EQ_INT((long)n, 60);
    CHECK_EQ_INT(q[42] << 8 | q[43], 50000);
    /* the renewal unanswered: the mapping is gone (and the candidate with it) */
    m.changed = false;
    uint64_t t = 1010 + 300000;
    while (rndz__pmp_next(&m, t, q, &wake) || m.state == RNDZ_PMP_PCP) t = wake;
    CHECK_EQ_INT(m.state, RNDZ_PMP_NONE);
    CHECK(m.changed && m.ext_port == 0);
    CHECK_EQ_INT((long)(t - (1010 + 300000)), 350); /* three tries: 0, 50, 150; silent at 350 */
    CHECK_EQ_INT((long)rndz__pmp_delete(&m, q), 0);
}

static void test_natpmp_fallback(void) {
    for (int pcp_says = 0; pcp_says < 2; pcp_says++) {
        rndz__pmp m;
        rndz__pmp_init(&m, OURS, 45001, NONCE);
        uint8_t q[60], a[60];
        uint64_t wake;
        rndz__pmp_next(&m, 0, q, &wake);
        if (pcp_says) { /* PCP's UNSUPP_VERSION */
            pcp_answer(q, 1, 0, 0, a);
            CHECK_EQ_INT(rndz__pmp_input(&m, a, 24, 5), 1);
        } else { /* a NAT-PMP gateway answers in its own format */
            uint8_t r[8] = {0, 129, 0, 1};
            CHECK_EQ_INT(rndz__pmp_input(&m, r, sizeof r, 5), 1);
        }
        CHECK_EQ_INT(m.state, RNDZ_PMP_NATPMP_ADDR);
        CHECK_EQ_INT((long)rndz__pmp_next(&m, 5, q, &wake), 2); /* external address request */
        uint8_t addr[12] = {0, 128, 0, 0, 0, 0, 0, 9};
        memcpy(addr + 8, EXT, 4);
        CHECK_EQ_INT(rndz__pmp_input(&m, addr, sizeof addr, 6), 1);
        CHECK_EQ_INT((long)rndz__pmp_next(&m, 6, q, &wake), 12); /* mapping request */
        CHECK_EQ_INT(q[1], 1);
        CHECK_EQ_INT(q[4] << 8 | q[5], 45001);
        uint8_t map[16] = {0, 129, 0, 0, 0, 0, 0, 9};
        put16(map + 8, 45001);
        put16(map + 10, 61000);
        put32(map + 12, 7200);
        CHECK_EQ_INT(rndz__pmp_input(&m, map, sizeof map, 7), 1);
        CHECK_EQ_INT(m.state, RNDZ_PMP_MAPPED);
        CHECK(!m.pcp);
        CHECK_EQ_INT(m.ext_port, 61000);
        CHECK_EQ_MEM(m.ext_ip, 4, EXT, 4);
        /* delete: the same request with lifetime 0 */
        CHECK_EQ_INT((long)rndz__pmp_delete(&m, q), 12);
        CHECK_EQ_INT(q[8] | q[9] | q[10] | q[11], 0);
    }
}

static void test_refusal_and_silence(void) {
    rndz__pmp m;
    rndz__pmp_init(&m, OURS, 45001, NONCE);
    uint8_t q[60], a[60];
    uint64_t wake;
    rndz__pmp_next(&m, 0, q, &wake);
    pcp_answer(q, 2, 0, 0, a); /* NOT_AUTHORIZED */
    CHECK_EQ_INT(rndz__pmp_input(&m, a, 60, 1), 1);
    CHECK_EQ_INT(m.state, RNDZ_PMP_NONE);
    CHECK_EQ_INT((long)rndz__pmp_next(&m, 2, q, &wake), 0);
    CHECK_EQ_INT((long)wake, 1 + RNDZ_PMP_QUIET_MS); /* remembered */
    CHECK_EQ_INT((long)rndz__pmp_next(&m, 1 + RNDZ_PMP_QUIET_MS, q, &wake), 60); /* asked again */
    /* junk of every length in every state moves nothing */
    uint8_t junk[80];
    for (int st = RNDZ_PMP_PCP; st <= RNDZ_PMP_NATPMP_MAP; st++)
        for (size_t len = 0; len < sizeof junk; len++) {
            for (size_t i = 0; i < len; i++) junk[i] = (uint8_t)(i * 13 + len + 3);
            m.state = st;
            rndz__pmp_input(&m, junk, len, 10);
            CHECK(m.state >= RNDZ_PMP_IDLE && m.state <= RNDZ_PMP_NONE);
        }
}

int main(void) {
    test_pcp();
    test_natpmp_fallback();
    test_refusal_and_silence();
    return tl_summary("test_pmp");
}
