/* replay.c: see replay.h. */
#include "replay.h"

#include <stdlib.h>

#define TS_BITS 42 /* unix ms below 2^42: until the year 2109 */
#define TS_MASK ((1ull << TS_BITS) - 1)

int rndz__replay_init(rndz__replay *r, uint64_t ids) {
    memset(r, 0, sizeof *r);
    /* one bucket per 8 ids: 7 ways at a load near 1, 8 bytes per id */
    uint64_t n = 256;
    while (n < ids / 8 && n < (1u << 20)) n <<= 1;
    r->b = calloc(n * 8, sizeof *r->b); /* large: fresh pages, backed as they are touched */
    if (!r->b) return -ENOMEM;
    r->mask = (uint32_t)(n - 1);
    rndz__hkey_random(&r->key);
    for (int i = 0; i < RNDZ_REPLAY_LOCKS; i++) pthread_mutex_init(&r->mu[i], NULL);
    return 0;
}

void rndz__replay_free(rndz__replay *r) {
    if (!r->b) return;
    for (int i = 0; i < RNDZ_REPLAY_LOCKS; i++) pthread_mutex_destroy(&r->mu[i]);
    free(r->b);
    r->b = NULL;
}

bool rndz__replay_accept(rndz__replay *r, const char *id, size_t len, uint64_t ts) {
    if (ts == 0 || ts > TS_MASK) return false;
    uint64_t h = rndz__hash64(&r->key, id, len);
    uint32_t bi = (uint32_t)h & r->mask;
    uint64_t tag = h >> TS_BITS;
    if (!tag) tag = 1; /* 0 marks an empty way */
    pthread_mutex_t *mu = &r->mu[bi % RNDZ_REPLAY_LOCKS];
    pthread_mutex_lock(mu);
    uint64_t *w = &r->b[(size_t)bi * 8];
    bool ok = false;
    int slot = -1;
    for (int i = 1; i <= RNDZ_REPLAY_WAYS; i++) {
        if (w[i] >> TS_BITS == tag) {
            if (ts > (w[i] & TS_MASK)) {
                w[i] = tag << TS_BITS | ts;
                ok = true;
            }
            goto out;
        }
    }
    if (ts <= w[0]) goto out; /* unknown here, and not newer than what was evicted */
    for (int i = 1; i <= RNDZ_REPLAY_WAYS; i++) {
        if (!w[i]) {
            slot = i;
            break;
        }
        if (slot < 0 || (w[i] & TS_MASK) < (w[slot] & TS_MASK)) slot = i;
    }
    if (w[slot] && (w[slot] & TS_MASK) > w[0]) w[0] = w[slot] & TS_MASK;
    w[slot] = tag << TS_BITS | ts;
    ok = true;
out:
    pthread_mutex_unlock(mu);
    return ok;
}
