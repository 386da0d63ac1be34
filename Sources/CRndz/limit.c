/* limit.c: see limit.h. */
#include "limit.h"

#include <stdlib.h>
#include <string.h>

#define TCP_BUCKETS 65536 /* 256 KiB of counters; a source shares its cap with 1/65536 of others */

int rndz__rate_init(rndz__rate *r, uint32_t rate, uint32_t burst, size_t buckets) {
    memset(r, 0, sizeof *r);
    if (rate == UINT32_MAX) {
        r->off = true;
        return 0;
    }
    if (!rate) rate = 1;
    if (!burst) burst = 1;
    r->interval_us = 1000000u / rate ? 1000000u / rate : 1;
    r->tolerance_us = (uint64_t)burst * r->interval_us;
    r->tat = calloc(buckets, sizeof *r->tat);
    if (!r->tat) return -ENOMEM;
    r->mask = (uint32_t)(buckets - 1);
    return 0;
}

void rndz__rate_free(rndz__rate *r) {
    free(r->tat);
    r->tat = NULL;
}

bool rndz__rate_take(rndz__rate *r, uint64_t hash, uint64_t now_ms) {
    if (r->off) return true;
    /* GCRA: a request is conforming if, after it, the bucket's theoretical arrival time is at
     * most `tolerance` ahead of now; that allows `burst` at once, then `rate` per second. */
    _Atomic uint64_t *p = &r->tat[hash & r->mask];
    uint64_t now = now_ms * 1000;
    uint64_t tat = atomic_load_explicit(p, memory_order_relaxed);
    for (;;) {
        uint64_t next = (tat > now ? tat : now) + r->interval_us;
        if (next - now > r->tolerance_us) return false;
        if (atomic_compare_exchange_weak_explicit(p, &tat, next, memory_order_relaxed,
                                                  memory_order_relaxed))
            return true;
    }
}

static size_t buckets_for(uint64_t peers) {
    /* about one bucket per 4 peers: a legitimate key rarely shares its rate with more than a
     * few others; 32 KiB to 8 MiB of memory, backed as it is touched */
    size_t n = 4096;
    while (n < peers / 4 && n < (1u << 20)) n <<= 1;
    return n;
}

int rndz__limits_init(rndz__limits *l, const rndz_server_options *o) {
    memset(l, 0, sizeof *l);
    rndz__hkey_random(&l->key);
    size_t n = buckets_for(o->max_peers);
    int rc = rndz__rate_init(&l->sync, o->sync_rate, o->sync_burst, n);
    if (!rc) rc = rndz__rate_init(&l->fsync, o->fsync_rate, o->fsync_burst, n);
    if (!rc && !(l->tcp_count = calloc(TCP_BUCKETS, sizeof *l->tcp_count))) rc = -ENOMEM;
    if (rc) {
        rndz__limits_free(l);
        return rc;
    }
    l->tcp_mask = TCP_BUCKETS - 1;
    l->tcp_max = o->max_tcp_conns;
    l->tcp_per_ip = o->max_tcp_conns_per_ip;
    return 0;
}

void rndz__limits_free(rndz__limits *l) {
    rndz__rate_free(&l->sync);
    rndz__rate_free(&l->fsync);
    free(l->tcp_count);
    l->tcp_count = NULL;
}

/* The key of a source: IPv4 the address, IPv6 its /64 (one host usually holds a whole /64,
 * so a finer key would give it 2^64 buckets). */
static uint64_t source_hash(const rndz__limits *l, const struct sockaddr_storage *a) {
    uint8_t k[17] = {0};
    if (a->ss_family == AF_INET) {
        memcpy(k, &((const struct sockaddr_in *)a)->sin_addr, 4);
        k[16] = 4;
    } else if (a->ss_family == AF_INET6) {
        const uint8_t *ip = ((const struct sockaddr_in6 *)a)->sin6_addr.s6_addr;
        if (IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)ip)) {
            memcpy(k, ip + 12, 4);
            k[16] = 4;
        } else {
            memcpy(k, ip, 8);
            k[16] = 6;
        }
    }
    return rndz__hash64(&l->key, k, sizeof k);
}

bool rndz__limit_sync(rndz__limits *l, const struct sockaddr_storage *from, uint64_t now_ms) {
    return l->sync.off || rndz__rate_take(&l->sync, source_hash(l, from), now_ms);
}

bool rndz__limit_fsync(rndz__limits *l, const char *id, size_t len, uint64_t now_ms) {
    return l->fsync.off || rndz__rate_take(&l->fsync, rndz__hash64(&l->key, id, len), now_ms);
}

uint32_t rndz__limit_tcp_open(rndz__limits *l, const struct sockaddr_storage *from) {
    if (l->tcp_max != UINT32_MAX && l->tcp_open >= l->tcp_max) return 0;
    uint32_t b = (uint32_t)(source_hash(l, from) >> 32) & l->tcp_mask;
    if (l->tcp_per_ip != UINT32_MAX && l->tcp_count[b] >= l->tcp_per_ip) return 0;
    l->tcp_count[b]++;
    l->tcp_open++;
    return b + 1;
}

void rndz__limit_tcp_close(rndz__limits *l, uint32_t slot) {
    if (!slot) return;
    if (l->tcp_count[slot - 1]) l->tcp_count[slot - 1]--;
    if (l->tcp_open) l->tcp_open--;
}
