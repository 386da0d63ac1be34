/* replay.h: the newest accepted timestamp of each id, in bounded memory, so an authenticated
 * server refuses a replayed request (auth.h).
 *
 * A set-associative table: buckets of 64 bytes (one cache line) chosen by a keyed hash of the
 * id, each holding a floor and 7 entries of (22-bit tag, 42-bit unix ms). An id's request is
 * taken only if its ts is newer than its entry's, or, with no entry, newer than the bucket's
 * floor. A full bucket evicts its oldest entry and raises the floor to that entry's ts, so an
 * evicted id can still never replay anything it sent before: when the table overflows, the
 * cost is a refused request from a client whose clock lags the bucket's oldest entry, never
 * an accepted replay. Two ids with the same bucket and tag share an entry: conservative too.
 * Locked by stripes (the UDP workers and TCP share it). */
#ifndef RNDZ_REPLAY_H
#define RNDZ_REPLAY_H

#include "hash.h"

#include <pthread.h>

#define RNDZ_REPLAY_WAYS 7
#define RNDZ_REPLAY_LOCKS 64

typedef struct rndz__replay {
    uint64_t *b; /* (mask + 1) buckets of 8 words: [0] floor, [1..7] tag << 42 | ts */
    uint32_t mask;
    rndz__hkey key;
    pthread_mutex_t mu[RNDZ_REPLAY_LOCKS];
} rndz__replay;

/* Size for about `ids` ids active within the auth window (more only raise floors). */
RNDZ_INTERNAL int rndz__replay_init(rndz__replay *r, uint64_t ids);
RNDZ_INTERNAL void rndz__replay_free(rndz__replay *r);
/* true: ts is newer than anything accepted for id, and is now its newest. false: refuse. */
RNDZ_INTERNAL bool rndz__replay_accept(rndz__replay *r, const char *id, size_t len,
                                       uint64_t ts);

#endif
