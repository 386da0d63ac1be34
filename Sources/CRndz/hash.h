/* hash.h: hashes for tables an attacker feeds: a keyed one for limit buckets and the replay
 * table, a seeded one for the id tables.
 *
 * SipHash-1-3 (Aumasson and Bernstein; the variant Rust's HashMap uses) with a 128-bit key
 * drawn at random per table: without the key nobody can choose ids or addresses that land in
 * one bucket, so a flood cannot aim at a bucket it does not own. */
#ifndef RNDZ_HASH_H
#define RNDZ_HASH_H

#include "internal.h"

#include <string.h>
#include <sys/random.h>

typedef struct rndz__hkey {
    uint64_t k0, k1;
} rndz__hkey;

#define RNDZ__ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define RNDZ__SIPROUND                                                                        \
    do {                                                                                      \
        v0 += v1, v1 = RNDZ__ROTL(v1, 13), v1 ^= v0, v0 = RNDZ__ROTL(v0, 32);                 \
        v2 += v3, v3 = RNDZ__ROTL(v3, 16), v3 ^= v2;                                          \
        v0 += v3, v3 = RNDZ__ROTL(v3, 21), v3 ^= v0;                                          \
        v2 += v1, v1 = RNDZ__ROTL(v1, 17), v1 ^= v2, v2 = RNDZ__ROTL(v2, 32);                 \
    } while (0)

static inline uint64_t rndz__hash64(const rndz__hkey *k, const void *data, size_t len) {
    const uint8_t *p = data;
    uint64_t v0 = k->k0 ^ 0x736f6d6570736575ull, v1 = k->k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k->k0 ^ 0x6c7967656e657261ull, v3 = k->k1 ^ 0x7465646279746573ull;
    size_t full = len & ~(size_t)7;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t m = 0;
        for (int b = 7; b >= 0; b--) m = m << 8 | p[i + (size_t)b];
        v3 ^= m;
        RNDZ__SIPROUND;
        v0 ^= m;
    }
    uint64_t last = (uint64_t)len << 56;
    for (size_t i = 0; i < (len & 7); i++) last |= (uint64_t)p[full + i] << (8 * i);
    v3 ^= last;
    RNDZ__SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    RNDZ__SIPROUND;
    RNDZ__SIPROUND;
    RNDZ__SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* A cheap seeded hash for the id tables (peertab.h, registry.h): FNV-1a with a per-table
 * random seed and a final mix, so an attacker who does not know the seed cannot aim ids at
 * one slot run or bucket. */
static inline uint32_t rndz__hash_id(uint32_t seed, const char *s, size_t n) {
    uint32_t h = 2166136261u ^ seed;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    h ^= h >> 16;
    return h;
}

/* A fresh random key (getrandom; the jitter PRNG only if that fails). */
static inline void rndz__hkey_random(rndz__hkey *k) {
    if (getrandom(k, sizeof *k, GRND_NONBLOCK) != (ssize_t)sizeof *k) {
        k->k0 = (uint64_t)rndz__random() << 32 | rndz__random();
        k->k1 = (uint64_t)rndz__random() << 32 | rndz__random();
    }
}

#endif
