/* peertab.h: the UDP server's table of registered ids, built for a million peers and more.
 *
 * - Compact: an entry is 44 bytes (id up to 16 bytes inline, longer ids on the heap; the
 *   address as 16 bytes + port; last-seen time; hash), kept dense in fixed-size chunks, plus
 *   4-byte index slots at a load of at most 2/3: about 55 bytes per peer at the maximum by
 *   design (the benchmark measures ~61 bytes of RSS growth per id at a million: page and
 *   allocator overhead on top).
 * - No pauses: the index is sized once for the configured maximum and allocated as untouched
 *   virtual memory, which the kernel backs page by page as ids arrive: it never rehashes.
 *   Chunks of entries are added one at a time, never moved.
 * - Expiry in small steps: a sweep visits a bounded number of entries per call, so a full
 *   pass is spread over a quarter of the expiry time.
 * - Sharded with a lock per shard, so several server workers share one table: an Isync
 *   arriving on one worker finds a peer registered through another. */
#ifndef RNDZ_PEERTAB_H
#define RNDZ_PEERTAB_H

#include "internal.h"

#include <pthread.h>

#define RNDZ_PT_INLINE_ID 16

typedef struct rndz__peer {
    uint32_t hash;
    uint32_t seen; /* ms since the table's epoch (wraps after 49 days; compared by difference) */
    uint8_t ip[16]; /* IPv6, or IPv4 as ::ffff:a.b.c.d */
    uint16_t port;  /* network order */
    uint8_t id_len; /* 0..16: inline; 255: on the heap */
    uint8_t flags;  /* bit 0: the address was IPv4; bits 1-7: where it wrote to (server.h,
                     * rndz__origin) */
    char id[RNDZ_PT_INLINE_ID]; /* inline bytes, or (char *ptr, uint32_t len) memcpy'd in */
} rndz__peer;

typedef struct rndz__peershard {
    pthread_mutex_t mu;
    uint32_t *index; /* slot -> entry number + 1; 0 = empty; linear probing */
    uint32_t mask;
    rndz__peer **chunks;
    uint32_t nchunks, count, max;
    uint32_t sweep; /* next entry the expiry sweep looks at */
    char pad[64];
} rndz__peershard;

typedef struct rndz__peertab {
    rndz__peershard *shards;
    uint32_t nshards; /* power of two */
    uint32_t seed;
    uint64_t epoch;   /* ms: time 0 of `seen` */
    uint64_t max;
} rndz__peertab;

/* A resolved peer handed out by lookups (copied: the table may change right after). */
typedef struct rndz__peer_addr {
    struct sockaddr_storage addr;
} rndz__peer_addr;

RNDZ_INTERNAL int rndz__pt_init(rndz__peertab *t, uint64_t max_peers, uint64_t now);
RNDZ_INTERNAL void rndz__pt_free(rndz__peertab *t);
/* Insert or refresh id -> addr at now, with the origin (0..127) the id wrote to. 0; 1 when
 * id was registered at another address (now replaced); or -ENOSPC when the table is full. */
RNDZ_INTERNAL int rndz__pt_put(rndz__peertab *t, const char *id, size_t len,
                               const struct sockaddr_storage *addr, uint64_t now, uint8_t origin);
/* Copy the address of id into *out (in the form given, e.g. IPv4-mapped for an IPv6 server
 * socket: `v6` asks for AF_INET6 mapped form) and its origin into *origin (may be NULL).
 * true if found. */
RNDZ_INTERNAL bool rndz__pt_get(rndz__peertab *t, const char *id, size_t len, bool v6,
                                struct sockaddr_storage *out, uint8_t *origin);
/* Remove id if it is registered at `from` (or anywhere if from is NULL). 1 removed, 0 not
 * registered, -EPERM registered elsewhere. */
RNDZ_INTERNAL int rndz__pt_del(rndz__peertab *t, const char *id, size_t len,
                               const struct sockaddr_storage *from);
/* Visit up to `budget` entries of shard `shard`, removing those not seen for max_age ms.
 * Returns the number removed. */
RNDZ_INTERNAL size_t rndz__pt_sweep(rndz__peertab *t, uint32_t shard, uint64_t now,
                                    uint64_t max_age, size_t budget);
RNDZ_INTERNAL uint64_t rndz__pt_count(rndz__peertab *t);

#endif
