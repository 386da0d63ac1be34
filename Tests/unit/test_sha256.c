/* test_sha256.c: SHA-256 and HMAC-SHA256 (Sources/CRndz/sha256.c, hmac.c) against the
 * published vectors: FIPS 180-2 appendix B (and the 896-bit message of its successor's
 * examples), RFC 4231 test cases 1-7; then every split of a message into update() calls, the
 * constant-time compare, and the keyed-context reuse the server relies on. */
#include "sha256.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "unit.h"


static void hex(const char *h, uint8_t *out, size_t *n) {
    size_t k = 0;
    for (; h[0] && h[1]; h += 2) {
        unsigned v;
        sscanf(h, "%2x", &v);
        out[k++] = (uint8_t)v;
    }
    *n = k;
}

static bool eq_hex(const uint8_t *got, size_t n, const char *want) {
    uint8_t w[64];
    size_t wn;
    hex(want, w, &wn);
    if (wn != n || memcmp(got, w, n) != 0) {
        fprintf(stderr, "  got  ");
        for (size_t i = 0; i < n; i++) fprintf(stderr, "%02x", got[i]);
        fprintf(stderr, "\n  want %s\n", want);
        return false;
    }
    return true;
}

static void test_sha256_vectors(void) {
    static const struct {
        const char *msg;
        const char *digest;
    } v[] = {
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklm"
         "nopqrlmnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
    };
    uint8_t d[32];
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        rndz__sha256(v[i].msg, strlen(v[i].msg), d);
        CHECK(eq_hex(d, 32, v[i].digest));
    }
    /* one million 'a', fed in uneven pieces */
    char *a = malloc(1000000);
    memset(a, 'a', 1000000);
    rndz__sha256_ctx c;
    rndz__sha256_init(&c);
    size_t off = 0, step = 1;
    while (off < 1000000) {
        size_t n = step < 1000000 - off ? step : 1000000 - off;
        rndz__sha256_update(&c, a + off, n);
        off += n;
        step = step * 3 % 997 + 1;
    }
    rndz__sha256_final(&c, d);
    CHECK(eq_hex(d, 32, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"));
    free(a);
}

/* Every length 0..200 and every split point gives the one-shot digest: the padding of each
 * length modulo 64 (55, 56, 63, 64, ...) and the buffering across calls. */
static void test_sha256_splits(void) {
    uint8_t msg[200];
    for (int i = 0; i < 200; i++) msg[i] = (uint8_t)(i * 7 + 1);
    int bad = 0;
    for (size_t len = 0; len <= sizeof msg; len++) {
        uint8_t one[32];
        rndz__sha256(msg, len, one);
        for (size_t cut = 0; cut <= len; cut++) {
            uint8_t two[32];
            rndz__sha256_ctx c;
            rndz__sha256_init(&c);
            rndz__sha256_update(&c, msg, cut);
            rndz__sha256_update(&c, msg + cut, len - cut);
            rndz__sha256_final(&c, two);
            if (memcmp(one, two, 32) != 0) bad++;
        }
    }
    CHECK(bad == 0);
    /* the 55/56-byte boundary against a known value (Python hashlib) */
    uint8_t d[32];
    rndz__sha256("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 55, d);
    CHECK(eq_hex(d, 32, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"));
    rndz__sha256("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 56, d);
    CHECK(eq_hex(d, 32, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"));
}

static void test_hmac_rfc4231(void) {
    static const struct {
        const char *key_hex; /* or NULL: key_text */
        const char *key_text;
        size_t key_rep; /* key = key_hex byte repeated key_rep times, if non-zero */
        const char *data_hex;
        const char *data_text;
        size_t data_rep;
        const char *mac;
        size_t mac_len;
    } v[] = {
        /* 1 */ {"0b", NULL, 20, NULL, "Hi There", 0,
                 "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7", 32},
        /* 2 */ {NULL, "Jefe", 0, NULL, "what do ya want for nothing?", 0,
                 "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", 32},
        /* 3 */ {"aa", NULL, 20, "dd", NULL, 50,
                 "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe", 32},
        /* 4 */ {"0102030405060708090a0b0c0d0e0f10111213141516171819", NULL, 0, "cd", NULL, 50,
                 "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b", 32},
        /* 5 (truncated to 128 bits) */
        {"0c", NULL, 20, NULL, "Test With Truncation", 0, "a3b6167473100ee06e0c796c2955552b", 16},
        /* 6 */ {"aa", NULL, 131, NULL, "Test Using Larger Than Block-Size Key - Hash Key First",
                 0, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54", 32},
        /* 7 */ {"aa", NULL, 131, NULL,
                 "This is a test using a larger than block-size key and a larger than block-size "
                 "data. The key needs to be hashed before being used by the HMAC algorithm.",
                 0, "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2", 32},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint8_t key[200], data[200], mac[32];
        size_t kn, dn;
        if (v[i].key_text) {
            kn = strlen(v[i].key_text);
            memcpy(key, v[i].key_text, kn);
        } else if (v[i].key_rep) {
            hex(v[i].key_hex, key, &kn);
            memset(key, key[0], v[i].key_rep);
            kn = v[i].key_rep;
        } else {
            hex(v[i].key_hex, key, &kn);
        }
        if (v[i].data_text) {
            dn = strlen(v[i].data_text);
            memcpy(data, v[i].data_text, dn);
        } else {
            hex(v[i].data_hex, data, &dn);
            memset(data, data[0], v[i].data_rep);
            dn = v[i].data_rep;
        }
        rndz__hmac_sha256(key, kn, data, dn, mac);
        if (!eq_hex(mac, v[i].mac_len, v[i].mac)) fprintf(stderr, "  RFC 4231 case %zu\n", i + 1);
        CHECK(eq_hex(mac, v[i].mac_len, v[i].mac));
        /* incremental, byte by byte */
        rndz__hmac h;
        rndz__hmac_init(&h, key, kn);
        for (size_t k = 0; k < dn; k++) rndz__hmac_update(&h, data + k, 1);
        uint8_t mac2[32];
        rndz__hmac_final(&h, mac2);
        CHECK(memcmp(mac, mac2, 32) == 0);
    }
}

/* A context keyed once and copied gives the same result as keying each time (the server keys
 * its secret once). */
static void test_hmac_reuse(void) {
    rndz__hmac keyed;
    rndz__hmac_init(&keyed, "Jefe", 4);
    for (int round = 0; round < 3; round++) {
        rndz__hmac h = keyed;
        rndz__hmac_update(&h, "what do ya want ", 16);
        rndz__hmac_update(&h, "for nothing?", 12);
        uint8_t mac[32];
        rndz__hmac_final(&h, mac);
        CHECK(eq_hex(mac, 32, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"));
    }
}

static void test_ct_equal(void) {
    uint8_t a[32], b[32];
    for (int i = 0; i < 32; i++) a[i] = b[i] = (uint8_t)i;
    CHECK(rndz__ct_equal(a, b, 32));
    CHECK(rndz__ct_equal(a, b, 0));
    for (int i = 0; i < 32; i++) {
        b[i] ^= 0x80;
        CHECK(!rndz__ct_equal(a, b, 32));
        b[i] ^= 0x80;
    }
    rndz__wipe(a, sizeof a);
    uint8_t z[32] = {0};
    CHECK(memcmp(a, z, 32) == 0);
}

int main(void) {
    test_sha256_vectors();
    test_sha256_splits();
    test_hmac_rfc4231();
    test_hmac_reuse();
    test_ct_equal();
    return tl_summary("test_sha256");
}
