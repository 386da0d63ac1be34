/* limit.h: the server's limits against floods and reflection (SECURITY.md).
 *
 * - Rates: GCRA token buckets (one 64-bit "theoretical arrival time" per bucket, updated with
 *   a compare-and-swap: lock-free, shared by every worker) in fixed arrays indexed by a keyed
 *   hash. Keys that share a bucket share its rate: a collision can only make a limit
 *   stricter, never looser, and memory never grows with the number of sources.
 *     sync:  Isync/Rsync per source address (IPv4 address; IPv6 /64, what one host gets);
 *     fsync: Fsync/Redirect sent toward one target id.
 * - TCP connections: in total and per source address (a counter array the same way; TCP is
 *   served by one thread, so plain integers).
 * Time is a parameter (ms, monotonic), so the unit tests drive it. */
#ifndef RNDZ_LIMITS_H
#define RNDZ_LIMITS_H

#include "hash.h"

#include <stdatomic.h>

typedef struct rndz__rate {
    _Atomic uint64_t *tat; /* per bucket: theoretical arrival time, in us */
    uint32_t mask;
    uint64_t interval_us;  /* 1 / rate */
    uint64_t tolerance_us; /* burst * interval */
    bool off;              /* no limit */
} rndz__rate;

typedef struct rndz__limits {
    rndz__hkey key;
    rndz__rate sync, fsync;
    uint32_t *tcp_count; /* per bucket of source addresses */
    uint32_t tcp_mask;
    uint32_t tcp_max, tcp_per_ip;
    uint32_t tcp_open;
} rndz__limits;

/* rate, burst: 0 = the default given; UINT32_MAX rate = no limit. buckets: a power of two. */
RNDZ_INTERNAL int rndz__rate_init(rndz__rate *r, uint32_t rate, uint32_t burst, size_t buckets);
RNDZ_INTERNAL void rndz__rate_free(rndz__rate *r);
/* Take one token from the bucket of `hash` at now_ms: true if allowed. */
RNDZ_INTERNAL bool rndz__rate_take(rndz__rate *r, uint64_t hash, uint64_t now_ms);

/* o: the server's options with defaults filled in. */
RNDZ_INTERNAL int rndz__limits_init(rndz__limits *l, const rndz_server_options *o);
RNDZ_INTERNAL void rndz__limits_free(rndz__limits *l);
RNDZ_INTERNAL bool rndz__limit_sync(rndz__limits *l, const struct sockaddr_storage *from,
                                    uint64_t now_ms);
RNDZ_INTERNAL bool rndz__limit_fsync(rndz__limits *l, const char *id, size_t len,
                                     uint64_t now_ms);
/* A new TCP connection from `from`: its bucket + 1 if admitted (give it back with
 * rndz__limit_tcp_close), 0 if over a cap. */
RNDZ_INTERNAL uint32_t rndz__limit_tcp_open(rndz__limits *l,
                                            const struct sockaddr_storage *from);
RNDZ_INTERNAL void rndz__limit_tcp_close(rndz__limits *l, uint32_t slot);

#endif
