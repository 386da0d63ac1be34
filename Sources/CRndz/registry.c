/* registry.c: see registry.h. */
#include "registry.h"
#include "hash.h"

#include <stdlib.h>
#include <string.h>


int rndz__reg_init(rndz__registry *r) {
    memset(r, 0, sizeof *r);
    r->nbuckets = 64;
    r->buckets = calloc(r->nbuckets, sizeof *r->buckets);
    if (!r->buckets) return -ENOMEM;
    r->seed = rndz__random();
    return 0;
}

void rndz__reg_free(rndz__registry *r) {
    rndz__reg_entry *e = r->oldest;
    while (e) {
        rndz__reg_entry *n = e->next;
        free(e);
        e = n;
    }
    free(r->buckets);
    memset(r, 0, sizeof *r);
}

static rndz__reg_entry **slot(rndz__registry *r, uint32_t h) {
    return &r->buckets[h & (r->nbuckets - 1)];
}

rndz__reg_entry *rndz__reg_get(rndz__registry *r, const char *id, size_t len) {
    uint32_t h = rndz__hash_id(r->seed, id, len);
    for (rndz__reg_entry *e = *slot(r, h); e; e = e->hnext)
        if (e->hash == h && e->id_len == len && memcmp(e->id, id, len) == 0) return e;
    return NULL;
}

static void list_unlink(rndz__registry *r, rndz__reg_entry *e) {
    if (e->prev) e->prev->next = e->next;
    else r->oldest = e->next;
    if (e->next) e->next->prev = e->prev;
    else r->newest = e->prev;
    e->prev = e->next = NULL;
}

static void list_append(rndz__registry *r, rndz__reg_entry *e) {
    e->prev = r->newest;
    e->next = NULL;
    if (r->newest) r->newest->next = e;
    else r->oldest = e;
    r->newest = e;
}

static void grow(rndz__registry *r) {
    size_t nb = r->nbuckets * 2;
    rndz__reg_entry **b = calloc(nb, sizeof *b);
    if (!b) return; /* keep working with longer chains */
    for (size_t i = 0; i < r->nbuckets; i++) {
        rndz__reg_entry *e = r->buckets[i];
        while (e) {
            rndz__reg_entry *n = e->hnext;
            rndz__reg_entry **s = &b[e->hash & (nb - 1)];
            e->hnext = *s;
            *s = e;
            e = n;
        }
    }
    free(r->buckets);
    r->buckets = b;
    r->nbuckets = nb;
}

void rndz__reg_touch(rndz__registry *r, rndz__reg_entry *e, uint64_t now) {
    e->seen = now;
    if (r->newest != e) {
        list_unlink(r, e);
        list_append(r, e);
    }
}

rndz__reg_entry *rndz__reg_put(rndz__registry *r, const char *id, size_t len,
                               const struct sockaddr *addr, void *owner, uint64_t now) {
    if (len > RNDZ_MAX_MSG) return NULL; /* admitted ids are at most max_id_len */
    rndz__reg_entry *e = rndz__reg_get(r, id, len);
    if (!e) {
        e = calloc(1, sizeof *e + len + 1);
        if (!e) return NULL;
        e->hash = rndz__hash_id(r->seed, id, len);
        e->id_len = (uint16_t)len;
        memcpy(e->id, id, len);
        rndz__reg_entry **s = slot(r, e->hash);
        e->hnext = *s;
        *s = e;
        list_append(r, e);
        if (++r->count > r->nbuckets) grow(r);
    }
    memset(&e->addr, 0, sizeof e->addr);
    memcpy(&e->addr, addr, rndz__addr_len(addr));
    e->owner = owner;
    rndz__reg_touch(r, e, now);
    return e;
}

void rndz__reg_del(rndz__registry *r, rndz__reg_entry *e) {
    rndz__reg_entry **s = slot(r, e->hash);
    while (*s && *s != e) s = &(*s)->hnext;
    if (*s) *s = e->hnext;
    list_unlink(r, e);
    r->count--;
    free(e);
}

size_t rndz__reg_expire(rndz__registry *r, uint64_t now, uint64_t max_age, size_t max,
                        uint64_t *next) {
    size_t n = 0;
    while (r->oldest && n < max && r->oldest->seen + max_age <= now) {
        rndz__reg_del(r, r->oldest);
        n++;
    }
    *next = r->oldest ? r->oldest->seen + max_age : UINT64_MAX;
    return n;
}
