/* registry.h: the server's table of registered ids: id -> (address, last seen, owner).
 *
 * A chained hash table (seeded hash, power-of-two buckets) plus a list in last-seen order, so
 * refreshing an id is O(1) and expiry only ever looks at the oldest entries: it never scans
 * the whole table. */
#ifndef RNDZ_REGISTRY_H
#define RNDZ_REGISTRY_H

#include "internal.h"

typedef struct rndz__reg_entry {
    struct rndz__reg_entry *hnext;       /* bucket chain */
    struct rndz__reg_entry *prev, *next; /* last-seen order: head is the oldest */
    uint64_t seen;                       /* ms */
    uint32_t hash;
    uint16_t id_len;
    struct sockaddr_storage addr;
    void *owner; /* TCP: the connection that registered the id */
    char id[];
} rndz__reg_entry;

typedef struct rndz__registry {
    rndz__reg_entry **buckets;
    size_t nbuckets; /* power of two */
    size_t count;
    uint32_t seed;
    rndz__reg_entry *oldest, *newest;
} rndz__registry;


RNDZ_INTERNAL int rndz__reg_init(rndz__registry *r);
RNDZ_INTERNAL void rndz__reg_free(rndz__registry *r);
RNDZ_INTERNAL rndz__reg_entry *rndz__reg_get(rndz__registry *r, const char *id, size_t len);
/* Insert or update: set the address and owner, mark seen at `now` (moves it to the newest
 * end). Returns the entry or NULL (out of memory, id too long). */
RNDZ_INTERNAL rndz__reg_entry *rndz__reg_put(rndz__registry *r, const char *id, size_t len,
                                             const struct sockaddr *addr, void *owner,
                                             uint64_t now);
RNDZ_INTERNAL void rndz__reg_touch(rndz__registry *r, rndz__reg_entry *e, uint64_t now);
RNDZ_INTERNAL void rndz__reg_del(rndz__registry *r, rndz__reg_entry *e);
/* Remove at most `max` entries last seen at or before `now - max_age`. Returns how many were
 * removed; *next gets the time the oldest remaining entry will expire (UINT64_MAX if none). */
RNDZ_INTERNAL size_t rndz__reg_expire(rndz__registry *r, uint64_t now, uint64_t max_age,
                                      size_t max, uint64_t *next);

#endif
