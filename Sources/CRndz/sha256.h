/* sha256.h: SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), for authenticated ids.
 *
 * Plain portable C, no tables beyond the round constants, nothing allocated. Checked against
 * the published vectors (FIPS 180-2 appendix, RFC 4231) in Tests/unit/test_sha256.c. */
#ifndef RNDZ_SHA256_H
#define RNDZ_SHA256_H

#include "internal.h"

#define RNDZ_SHA256_LEN 32
#define RNDZ_SHA256_BLOCK 64

typedef struct rndz__sha256_ctx {
    uint32_t h[8];
    uint64_t bytes; /* total length so far */
    uint8_t buf[RNDZ_SHA256_BLOCK];
    size_t have; /* bytes in buf */
} rndz__sha256_ctx;

RNDZ_INTERNAL void rndz__sha256_init(rndz__sha256_ctx *c);
RNDZ_INTERNAL void rndz__sha256_update(rndz__sha256_ctx *c, const void *data, size_t len);
RNDZ_INTERNAL void rndz__sha256_final(rndz__sha256_ctx *c, uint8_t out[RNDZ_SHA256_LEN]);
RNDZ_INTERNAL void rndz__sha256(const void *data, size_t len, uint8_t out[RNDZ_SHA256_LEN]);

/* HMAC-SHA256. A context keyed once can be copied and reused for many messages (the server
 * keys one with its secret at start). */
typedef struct rndz__hmac {
    rndz__sha256_ctx inner, outer; /* states after absorbing key^ipad and key^opad */
} rndz__hmac;

RNDZ_INTERNAL void rndz__hmac_init(rndz__hmac *h, const void *key, size_t key_len);
RNDZ_INTERNAL void rndz__hmac_update(rndz__hmac *h, const void *data, size_t len);
RNDZ_INTERNAL void rndz__hmac_final(rndz__hmac *h, uint8_t out[RNDZ_SHA256_LEN]);
RNDZ_INTERNAL void rndz__hmac_sha256(const void *key, size_t key_len, const void *data,
                                     size_t len, uint8_t out[RNDZ_SHA256_LEN]);

/* Equal in time that depends only on n, not on where a difference is. */
RNDZ_INTERNAL bool rndz__ct_equal(const void *a, const void *b, size_t n);
/* Overwrite secrets so they do not linger in freed memory (not optimised away). */
RNDZ_INTERNAL void rndz__wipe(void *p, size_t n);

#endif
