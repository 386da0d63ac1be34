/* hmac.c: HMAC-SHA256 (RFC 2104, vectors in RFC 4231), constant-time compare, wiping. */
#include "sha256.h"

#include <string.h>

void rndz__hmac_init(rndz__hmac *h, const void *key, size_t key_len) {
    uint8_t k[RNDZ_SHA256_BLOCK] = {0};
    if (key_len > RNDZ_SHA256_BLOCK) rndz__sha256(key, key_len, k); /* long keys are hashed */
    else if (key_len) memcpy(k, key, key_len);
    uint8_t pad[RNDZ_SHA256_BLOCK];
    for (int i = 0; i < RNDZ_SHA256_BLOCK; i++) pad[i] = k[i] ^ 0x36;
    rndz__sha256_init(&h->inner);
    rndz__sha256_update(&h->inner, pad, sizeof pad);
    for (int i = 0; i < RNDZ_SHA256_BLOCK; i++) pad[i] = k[i] ^ 0x5c;
    rndz__sha256_init(&h->outer);
    rndz__sha256_update(&h->outer, pad, sizeof pad);
    rndz__wipe(k, sizeof k);
    rndz__wipe(pad, sizeof pad);
}

void rndz__hmac_update(rndz__hmac *h, const void *data, size_t len) {
    rndz__sha256_update(&h->inner, data, len);
}

void rndz__hmac_final(rndz__hmac *h, uint8_t out[RNDZ_SHA256_LEN]) {
    uint8_t ih[RNDZ_SHA256_LEN];
    rndz__sha256_final(&h->inner, ih);
    rndz__sha256_update(&h->outer, ih, sizeof ih);
    rndz__sha256_final(&h->outer, out);
    rndz__wipe(ih, sizeof ih);
}

void rndz__hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                       uint8_t out[RNDZ_SHA256_LEN]) {
    rndz__hmac h;
    rndz__hmac_init(&h, key, key_len);
    rndz__hmac_update(&h, data, len);
    rndz__hmac_final(&h, out);
    rndz__wipe(&h, sizeof h);
}

bool rndz__ct_equal(const void *a, const void *b, size_t n) {
    const volatile uint8_t *x = a, *y = b;
    uint8_t d = 0;
    for (size_t i = 0; i < n; i++) d |= (uint8_t)(x[i] ^ y[i]);
    return d == 0;
}

void rndz__wipe(void *p, size_t n) {
    volatile uint8_t *v = p;
    while (n--) *v++ = 0;
}
