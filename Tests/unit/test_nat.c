/* test_nat.c: the NAT check's pure parts (Sources/CRndz/nat.c): the allocation classifier on
 * models of preserving, sequential (steps 1, 2, with a stray allocation by other traffic) and
 * random NATs, and the gateway reply parser on NAT-PMP, PCP and junk. */
#include "nat.h"

#include <stdio.h>
#include <string.h>
#include "unit.h"

static int classify(const uint16_t *p, size_t n, int *step) {
    uint16_t fp[1] = {p[0]}, fl[1] = {1};
    return rndz__nat_classify(p, n, fp, fl, 1, step);
}

static void test_classify(void) {
    int step;
    /* preserving: every socket's first mapping kept its local port */
    uint16_t fp[3] = {4000, 4100, 4200}, fl[3] = {4000, 4100, 4200};
    uint16_t any[4] = {4000, 9000, 4100, 9100};
    CHECK_EQ_INT(rndz__nat_classify(any, 4, fp, fl, 3, &step), RNDZ_NAT_PORT_PRESERVING);
    fp[2] = 4201;
    CHECK(rndz__nat_classify(any, 4, fp, fl, 3, &step) != RNDZ_NAT_PORT_PRESERVING);
    /* sequential, step 1 and 2, across a wrap of the port space */
    uint16_t s1[8] = {50000, 50001, 50002, 50003, 50004, 50005, 50006, 50007};
    CHECK_EQ_INT(classify(s1, 8, &step), RNDZ_NAT_PORT_SEQUENTIAL);
    CHECK_EQ_INT(step, 1);
    uint16_t s2[8] = {65530, 65532, 65534, 0, 2, 4, 6, 8};
    CHECK_EQ_INT(classify(s2, 8, &step), RNDZ_NAT_PORT_SEQUENTIAL);
    CHECK_EQ_INT(step, 2);
    /* one port taken by other traffic in between: still sequential */
    uint16_t s3[8] = {1000, 1001, 1002, 1004, 1005, 1006, 1007, 1008};
    CHECK_EQ_INT(classify(s3, 8, &step), RNDZ_NAT_PORT_SEQUENTIAL);
    CHECK_EQ_INT(step, 1);
    /* random: a model with a fixed seed, many draws: never called sequential */
    uint32_t x = 12345;
    for (int t = 0; t < 1000; t++) {
        uint16_t r[8];
        for (int i = 0; i < 8; i++) {
            x = x * 1103515245u + 12345u;
            r[i] = (uint16_t)(1024 + (x >> 8) % 64512);
        }
        CHECK_EQ_INT(classify(r, 8, &step), RNDZ_NAT_PORT_RANDOM);
    }
    /* a large regular step is not a sequential NAT's */
    uint16_t big[6] = {1000, 1100, 1200, 1300, 1400, 1500};
    CHECK_EQ_INT(classify(big, 6, &step), RNDZ_NAT_PORT_RANDOM);
    /* too few samples */
    CHECK_EQ_INT(classify(s1, 2, &step), RNDZ_NAT_PORT_UNKNOWN);
}

static void test_pmp(void) {
    uint8_t pmp[12] = {0, 128, 0, 0, 0, 0, 1, 2, 203, 0, 113, 1};
    CHECK_EQ_INT(rndz__nat_pmp_reply(pmp, sizeof pmp), 1);
    CHECK_EQ_INT(rndz__nat_pmp_reply(pmp, 7), 0);
    uint8_t pcp[24] = {2, 0x80};
    CHECK_EQ_INT(rndz__nat_pmp_reply(pcp, sizeof pcp), 2);
    CHECK_EQ_INT(rndz__nat_pmp_reply(pcp, 23), 0);
    uint8_t junk[64];
    for (size_t n = 0; n <= sizeof junk; n++) {
        for (size_t i = 0; i < n; i++) junk[i] = (uint8_t)(i * 37 + n);
        int r = rndz__nat_pmp_reply(junk, n);
        CHECK(r >= 0 && r <= 2);
    }
    CHECK_EQ_STR(rndz_nat_mapping_name(RNDZ_NAT_ENDPOINT_DEPENDENT), "endpoint-dependent");
    CHECK_EQ_STR(rndz_nat_allocation_name(RNDZ_NAT_PORT_SEQUENTIAL), "sequential");
}

int main(void) {
    test_classify();
    test_pmp();
    return tl_summary("test_nat");
}
