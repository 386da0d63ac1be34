/* test_pb.c: the one protobuf field walker (Sources/CRndz/pb.c) and the decoders on top of it:
 * bounds, varint overflow, field numbers, wire types, fixed-width values; the extension
 * decoder (ext.c) refuses what the walker refuses (it once took an over-64-bit varint). */
#include "ext.h"
#include "pb.h"

#include "unit.h"

static int next_of(const uint8_t *b, size_t n, rndz__pb_field *f) {
    rndz__pb r = rndz__pb_over(b, n);
    return rndz__pb_next(&r, f);
}

static void test_walker(void) {
    rndz__pb_field f;
    CHECK_EQ_INT(next_of(NULL, 0, &f), 0); /* the end */
    static const uint8_t v[] = {0x08, 0x96, 0x01};                 /* 1: varint 150 */
    CHECK_EQ_INT(next_of(v, sizeof v, &f), 1);
    CHECK(f.num == 1 && f.wt == RNDZ_PB_VARINT && f.u64 == 150);
    CHECK_RC(next_of(v, 2, &f), RNDZ_E_TRUNCATED);
    static const uint8_t big[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    CHECK_EQ_INT(next_of(big, sizeof big, &f), 1);
    CHECK(f.u64 == UINT64_MAX);
    static const uint8_t over[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02};
    CHECK_RC(next_of(over, sizeof over, &f), RNDZ_E_VARINT); /* bit 64 */
    static const uint8_t eleven[] = {0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                     0x80, 0x00};
    CHECK_RC(next_of(eleven, sizeof eleven, &f), RNDZ_E_VARINT);
    static const uint8_t zero[] = {0x00, 0x01};
    CHECK_RC(next_of(zero, sizeof zero, &f), RNDZ_E_FIELD);
    static const uint8_t huge[] = {0xf8, 0xff, 0xff, 0xff, 0x1f, 0x00}; /* field 2^32-1 */
    CHECK_RC(next_of(huge, sizeof huge, &f), RNDZ_E_FIELD);
    static const uint8_t maxf[] = {0xf8, 0xff, 0xff, 0xff, 0x0f, 0x00}; /* 2^29-1: allowed */
    CHECK_EQ_INT(next_of(maxf, sizeof maxf, &f), 1);
    CHECK(f.num == (1u << 29) - 1);
    for (uint8_t wt = 3; wt < 8; wt++) {
        if (wt == 5) continue;
        uint8_t g[] = {(uint8_t)(1 << 3 | wt), 0, 0, 0, 0};
        CHECK_RC(next_of(g, sizeof g, &f), RNDZ_E_WIRETYPE);
    }
    static const uint8_t len[] = {0x12, 0x03, 'a', 'b', 'c', 0x12, 0x05, 'x'};
    rndz__pb r = rndz__pb_over(len, sizeof len);
    CHECK_EQ_INT(rndz__pb_next(&r, &f), 1);
    CHECK(f.num == 2 && f.wt == RNDZ_PB_LEN && f.len == 3 && f.data == len + 2);
    CHECK_RC(rndz__pb_next(&r, &f), RNDZ_E_TRUNCATED); /* 5 bytes announced, 1 there */
    static const uint8_t fx[] = {0x11, 1, 2, 3, 4, 5, 6, 7, 8, 0x1d, 0xaa, 0xbb, 0xcc, 0xdd};
    r = rndz__pb_over(fx, sizeof fx);
    CHECK_EQ_INT(rndz__pb_next(&r, &f), 1);
    CHECK(f.wt == RNDZ_PB_I64 && f.u64 == 0x0807060504030201ull);
    CHECK_EQ_INT(rndz__pb_next(&r, &f), 1);
    CHECK(f.wt == RNDZ_PB_I32 && f.u64 == 0xddccbbaau);
    CHECK_EQ_INT(rndz__pb_next(&r, &f), 0);
    CHECK_RC(next_of(fx, 5, &f), RNDZ_E_TRUNCATED);
}

static void test_ext(void) {
    rndz__ext e;
    /* 17 cand, 18 nonce (fixed64), 19 rtt */
    static const uint8_t ok[] = {0x8a, 0x01, 0x04, '1', ':', '2', '3',
                                 0x91, 0x01, 1, 0, 0, 0, 0, 0, 0, 0,
                                 0x98, 0x01, 0x33};
    CHECK_RC(rndz__ext_decode(ok, sizeof ok, &e), 0);
    CHECK(e.ncands == 1 && e.has_nonce && e.nonce == 1 && e.rtt_ms == 0x33);
    CHECK_EQ_STR(e.cands[0], "1:23");
    /* an rtt varint past 64 bits: refused (the old decoder dropped the high bits) */
    static const uint8_t over[] = {0x98, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                   0xff, 0x7f};
    CHECK_RC(rndz__ext_decode(over, sizeof over, &e), RNDZ_E_VARINT);
    static const uint8_t trunc[] = {0x91, 0x01, 1, 2, 3};
    CHECK_RC(rndz__ext_decode(trunc, sizeof trunc, &e), RNDZ_E_TRUNCATED);
    /* fields of other types under our numbers are not ours: skipped */
    static const uint8_t other[] = {0x90, 0x01, 0x05, 0x88, 0x01, 0x07};
    CHECK_RC(rndz__ext_decode(other, sizeof other, &e), 0);
    CHECK(!e.has_nonce && e.ncands == 0);
}

int main(void) {
    test_walker();
    test_ext();
    return tl_summary("test_pb");
}
