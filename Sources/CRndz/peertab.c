/* peertab.c: see peertab.h. */
#include "peertab.h"
#include "hash.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define CHUNK_SHIFT 12 /* 4096 entries (176 KiB) per chunk */
#define CHUNK (1u << CHUNK_SHIFT)
#define ID_HEAP 255


static rndz__peer *entry(rndz__peershard *sh, uint32_t i) {
    return &sh->chunks[i >> CHUNK_SHIFT][i & (CHUNK - 1)];
}

static void id_of(const rndz__peer *p, const char **s, size_t *n) {
    if (p->id_len == ID_HEAP) {
        char *ptr;
        uint32_t len;
        memcpy(&ptr, p->id, sizeof ptr);
        memcpy(&len, p->id + sizeof ptr, sizeof len);
        *s = ptr;
        *n = len;
    } else {
        *s = p->id;
        *n = p->id_len;
    }
}

static void id_free(rndz__peer *p) {
    if (p->id_len == ID_HEAP) {
        char *ptr;
        memcpy(&ptr, p->id, sizeof ptr);
        free(ptr);
    }
}

static bool id_eq(const rndz__peer *p, uint32_t h, const char *id, size_t len) {
    if (p->hash != h) return false;
    const char *s;
    size_t n;
    id_of(p, &s, &n);
    return n == len && memcmp(s, id, len) == 0;
}

/* Virtual memory the kernel backs on first touch: an index for the maximum costs nothing
 * until used, and never needs rehashing. */
static void *zalloc_big(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

int rndz__pt_init(rndz__peertab *t, uint64_t max_peers, uint64_t now) {
    memset(t, 0, sizeof *t);
    if (max_peers == 0) max_peers = 1;
    if (max_peers > (1ull << 31)) return -EINVAL;
    t->nshards = 64;
    while (t->nshards > 1 && max_peers / t->nshards < 1024) t->nshards /= 2;
    t->seed = rndz__random();
    t->epoch = now;
    t->max = max_peers;
    t->shards = calloc(t->nshards, sizeof *t->shards);
    if (!t->shards) return -ENOMEM;
    /* Each shard may hold its share plus slack for uneven hashing; the index keeps a load of
     * at most 2/3 so linear probes stay short (expected ~2 probes for a hit). */
    uint64_t per = max_peers / t->nshards + max_peers / t->nshards / 8 + 64;
    uint64_t slots = 1;
    while (slots < per * 3 / 2) slots <<= 1;
    for (uint32_t i = 0; i < t->nshards; i++) {
        rndz__peershard *sh = &t->shards[i];
        pthread_mutex_init(&sh->mu, NULL);
        sh->max = (uint32_t)per;
        sh->mask = (uint32_t)slots - 1;
        sh->index = zalloc_big(slots * sizeof *sh->index);
        sh->chunks = calloc((per + CHUNK - 1) / CHUNK, sizeof *sh->chunks);
        if (!sh->index || !sh->chunks) {
            rndz__pt_free(t);
            return -ENOMEM;
        }
    }
    return 0;
}

void rndz__pt_free(rndz__peertab *t) {
    if (!t->shards) return;
    for (uint32_t i = 0; i < t->nshards; i++) {
        rndz__peershard *sh = &t->shards[i];
        for (uint32_t k = 0; k < sh->count; k++) id_free(entry(sh, k));
        for (uint32_t c = 0; c < sh->nchunks; c++) free(sh->chunks[c]);
        free(sh->chunks);
        if (sh->index) munmap(sh->index, ((size_t)sh->mask + 1) * sizeof *sh->index);
        pthread_mutex_destroy(&sh->mu);
    }
    free(t->shards);
    memset(t, 0, sizeof *t);
}

static rndz__peershard *shard_of(rndz__peertab *t, uint32_t h) {
    return &t->shards[(h >> 24) & (t->nshards - 1)];
}

/* The index slot that holds entry number `want` (or the id), or the empty slot where it
 * would go. */
static uint32_t find_slot(rndz__peershard *sh, uint32_t h, const char *id, size_t len) {
    uint32_t s = h & sh->mask;
    for (;;) {
        uint32_t v = sh->index[s];
        if (v == 0 || id_eq(entry(sh, v - 1), h, id, len)) return s;
        s = (s + 1) & sh->mask;
    }
}

static uint32_t slot_of_entry(rndz__peershard *sh, uint32_t e) {
    uint32_t s = entry(sh, e)->hash & sh->mask;
    while (sh->index[s] != e + 1) s = (s + 1) & sh->mask;
    return s;
}

static void to_peer(rndz__peer *p, const struct sockaddr_storage *a) {
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const void *)a;
        memset(p->ip, 0, 10);
        p->ip[10] = p->ip[11] = 0xff;
        memcpy(p->ip + 12, &s4->sin_addr, 4);
        p->port = s4->sin_port;
        p->flags = (uint8_t)(p->flags & ~1u) | 1u;
    } else {
        const struct sockaddr_in6 *s6 = (const void *)a;
        memcpy(p->ip, &s6->sin6_addr, 16);
        p->port = s6->sin6_port;
        p->flags = (uint8_t)((p->flags & ~1u) | (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr) ? 1u : 0u));
    }
}

static bool same_addr(const rndz__peer *p, const struct sockaddr_storage *a) {
    rndz__peer q = {0};
    to_peer(&q, a);
    return q.port == p->port && memcmp(q.ip, p->ip, 16) == 0;
}

int rndz__pt_put(rndz__peertab *t, const char *id, size_t len,
                 const struct sockaddr_storage *addr, uint64_t now, uint8_t origin) {
    uint32_t h = rndz__hash_id(t->seed, id, len);
    rndz__peershard *sh = shard_of(t, h);
    pthread_mutex_lock(&sh->mu);
    uint32_t s = find_slot(sh, h, id, len);
    rndz__peer *p;
    int moved = 0;
    if (sh->index[s]) {
        p = entry(sh, sh->index[s] - 1);
        rndz__peer was = *p;
        to_peer(&was, addr);
        moved = memcmp(was.ip, p->ip, sizeof p->ip) || was.port != p->port;
    } else {
        if (sh->count >= sh->max) {
            pthread_mutex_unlock(&sh->mu);
            return -ENOSPC;
        }
        uint32_t e = sh->count;
        if ((e >> CHUNK_SHIFT) >= sh->nchunks) {
            rndz__peer *c = malloc(CHUNK * sizeof *c);
            if (!c) {
                pthread_mutex_unlock(&sh->mu);
                return -ENOMEM;
            }
            sh->chunks[sh->nchunks++] = c;
        }
        p = entry(sh, e);
        memset(p, 0, sizeof *p);
        if (len <= RNDZ_PT_INLINE_ID) {
            memcpy(p->id, id, len);
            p->id_len = (uint8_t)len;
        } else {
            char *copy = malloc(len);
            if (!copy) {
                pthread_mutex_unlock(&sh->mu);
                return -ENOMEM;
            }
            memcpy(copy, id, len);
            uint32_t l32 = (uint32_t)len;
            memcpy(p->id, &copy, sizeof copy);
            memcpy(p->id + sizeof copy, &l32, sizeof l32);
            p->id_len = ID_HEAP;
        }
        p->hash = h;
        sh->index[s] = e + 1;
        __atomic_store_n(&sh->count, sh->count + 1, __ATOMIC_RELAXED);
    }
    to_peer(p, addr);
    p->flags = (uint8_t)((p->flags & 1u) | (uint8_t)(origin << 1));
    p->seen = (uint32_t)(now - t->epoch);
    pthread_mutex_unlock(&sh->mu);
    return moved;
}

static void from_peer(const rndz__peer *p, bool v6, struct sockaddr_storage *out) {
    memset(out, 0, sizeof *out);
    if ((p->flags & 1) && !v6) {
        struct sockaddr_in *s4 = (void *)out;
        s4->sin_family = AF_INET;
        s4->sin_port = p->port;
        memcpy(&s4->sin_addr, p->ip + 12, 4);
    } else {
        struct sockaddr_in6 *s6 = (void *)out;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = p->port;
        memcpy(&s6->sin6_addr, p->ip, 16);
    }
}

bool rndz__pt_get(rndz__peertab *t, const char *id, size_t len, bool v6,
                  struct sockaddr_storage *out, uint8_t *origin) {
    uint32_t h = rndz__hash_id(t->seed, id, len);
    rndz__peershard *sh = shard_of(t, h);
    pthread_mutex_lock(&sh->mu);
    uint32_t s = find_slot(sh, h, id, len);
    bool found = sh->index[s] != 0;
    if (found) {
        const rndz__peer *p = entry(sh, sh->index[s] - 1);
        from_peer(p, v6, out);
        if (origin) *origin = (uint8_t)(p->flags >> 1);
    }
    pthread_mutex_unlock(&sh->mu);
    return found;
}

/* Remove the entry in index slot s (lock held): backward-shift the probe run so no
 * tombstones are needed, then move the last entry into the hole to keep entries dense. */
static void remove_at(rndz__peershard *sh, uint32_t s) {
    uint32_t e = sh->index[s] - 1;
    id_free(entry(sh, e));
    uint32_t hole = s, j = s;
    for (;;) {
        j = (j + 1) & sh->mask;
        uint32_t v = sh->index[j];
        if (!v) break;
        uint32_t home = entry(sh, v - 1)->hash & sh->mask;
        /* move v back if its home is not in (hole, j] (cyclically) */
        if (((j - home) & sh->mask) >= ((j - hole) & sh->mask)) {
            sh->index[hole] = v;
            hole = j;
        }
    }
    sh->index[hole] = 0;
    uint32_t last = sh->count - 1;
    if (e != last) {
        uint32_t ls = slot_of_entry(sh, last);
        *entry(sh, e) = *entry(sh, last);
        sh->index[ls] = e + 1;
    }
    __atomic_store_n(&sh->count, sh->count - 1, __ATOMIC_RELAXED);
    /* give back a chunk that emptied (keep one spare to avoid churn at a boundary) */
    if (sh->nchunks > 1 && ((sh->count + 2 * CHUNK - 1) >> CHUNK_SHIFT) < sh->nchunks) {
        free(sh->chunks[--sh->nchunks]);
        sh->chunks[sh->nchunks] = NULL;
    }
}

int rndz__pt_del(rndz__peertab *t, const char *id, size_t len,
                 const struct sockaddr_storage *from) {
    uint32_t h = rndz__hash_id(t->seed, id, len);
    rndz__peershard *sh = shard_of(t, h);
    pthread_mutex_lock(&sh->mu);
    uint32_t s = find_slot(sh, h, id, len);
    int rc = 0;
    if (sh->index[s]) {
        if (from && !same_addr(entry(sh, sh->index[s] - 1), from)) rc = -EPERM;
        else {
            remove_at(sh, s);
            rc = 1;
        }
    }
    pthread_mutex_unlock(&sh->mu);
    return rc;
}

size_t rndz__pt_sweep(rndz__peertab *t, uint32_t shard, uint64_t now, uint64_t max_age,
                      size_t budget) {
    rndz__peershard *sh = &t->shards[shard & (t->nshards - 1)];
    uint32_t nowr = (uint32_t)(now - t->epoch);
    size_t removed = 0;
    pthread_mutex_lock(&sh->mu);
    for (size_t k = 0; k < budget && sh->count; k++) {
        if (sh->sweep >= sh->count) sh->sweep = 0;
        rndz__peer *p = entry(sh, sh->sweep);
        if ((uint32_t)(nowr - p->seen) >= max_age) {
            remove_at(sh, slot_of_entry(sh, sh->sweep)); /* the last entry moves here: */
            removed++;                                   /* look at this place again */
        } else {
            sh->sweep++;
        }
    }
    pthread_mutex_unlock(&sh->mu);
    return removed;
}

uint64_t rndz__pt_count(rndz__peertab *t) {
    uint64_t n = 0;
    for (uint32_t i = 0; i < t->nshards; i++) n += __atomic_load_n(&t->shards[i].count, __ATOMIC_RELAXED);
    return n;
}
