/* relay.c: see relay.h. */
#include "relay.h"
#include "hash.h"
#include "probe.h"
#include "server_proto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

static const char TOKEN_LABEL[] = "rndz relay v1";

void rndz__relay_key_init(rndz__relay_key *k) {
    uint8_t raw[32];
    rndz__hkey a, b;
    rndz__hkey_random(&a);
    rndz__hkey_random(&b);
    memcpy(raw, &a, 16);
    memcpy(raw + 16, &b, 16);
    rndz__hmac_init(&k->h, raw, sizeof raw);
    rndz__wipe(raw, sizeof raw);
    rndz__wipe(&a, sizeof a);
    rndz__wipe(&b, sizeof b);
}

static void put_be64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint64_t get_be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return v;
}

static void token_mac(const rndz__relay_key *k, const uint8_t head[16], int role,
                      uint8_t out[RNDZ_SHA256_LEN]) {
    rndz__hmac h = k->h;
    uint8_t r = (uint8_t)role;
    rndz__hmac_update(&h, TOKEN_LABEL, sizeof TOKEN_LABEL - 1);
    rndz__hmac_update(&h, head, 16);
    rndz__hmac_update(&h, &r, 1);
    rndz__hmac_final(&h, out);
}

void rndz__relay_token(const rndz__relay_key *k, uint64_t nonce, int role, uint64_t now,
                       uint8_t out[RNDZ_RELAY_TOKEN_LEN]) {
    uint8_t mac[RNDZ_SHA256_LEN];
    put_be64(out, nonce);
    put_be64(out + 8, now + RNDZ_RELAY_TOKEN_TTL_MS);
    token_mac(k, out, role, mac);
    memcpy(out + 16, mac, 16);
}

/* 0 if the token is good for `role` at `now`, else the reason. */
static const char *token_check(const rndz__relay_key *k, const uint8_t *tok, int role,
                               uint64_t now) {
    uint8_t mac[RNDZ_SHA256_LEN];
    token_mac(k, tok, role, mac);
    if (!rndz__ct_equal(mac, tok + 16, 16)) return "join with a forged token";
    if (get_be64(tok + 8) < now) return "join with an expired token";
    return NULL;
}

size_t rndz__relay_encode(uint8_t *out, int type, int arg, uint64_t nonce,
                          const uint8_t *token) {
    uint32_t hi = htonl(RNDZ_PROBE_MAGIC_HI), lo = htonl(RNDZ_RELAY_MAGIC_LO);
    memcpy(out, &hi, 4);
    memcpy(out + 4, &lo, 4);
    out[8] = (uint8_t)type;
    out[9] = (uint8_t)arg;
    out[10] = out[11] = 0;
    if (type == RNDZ_RELAY_JOIN) {
        memcpy(out + 12, token, RNDZ_RELAY_TOKEN_LEN);
        return RNDZ_RELAY_JOIN_LEN;
    }
    put_be64(out + 12, nonce);
    return RNDZ_RELAY_CTL_LEN;
}

int rndz__relay_decode(const uint8_t *buf, size_t len, int *arg, uint64_t *nonce,
                       const uint8_t **token) {
    if (len != RNDZ_RELAY_JOIN_LEN && len != RNDZ_RELAY_CTL_LEN) return 0;
    uint32_t hi, lo;
    memcpy(&hi, buf, 4);
    memcpy(&lo, buf + 4, 4);
    if (ntohl(hi) != RNDZ_PROBE_MAGIC_HI || ntohl(lo) != RNDZ_RELAY_MAGIC_LO) return 0;
    int type = buf[8];
    if (buf[10] | buf[11]) return 0;
    if (type == RNDZ_RELAY_JOIN) {
        if (len != RNDZ_RELAY_JOIN_LEN) return 0;
        if (buf[9] != RNDZ_RELAY_ROLE_CONNECTOR && buf[9] != RNDZ_RELAY_ROLE_LISTENER) return 0;
        *arg = buf[9];
        *token = buf + 12;
        *nonce = get_be64(buf + 12);
        return type;
    }
    if (len != RNDZ_RELAY_CTL_LEN || type < RNDZ_RELAY_STATE || type > RNDZ_RELAY_USE_ACK) return 0;
    if (type == RNDZ_RELAY_STATE && buf[9] != RNDZ_RELAY_WAITING && buf[9] != RNDZ_RELAY_READY)
        return 0;
    if (type != RNDZ_RELAY_STATE && buf[9]) return 0;
    *arg = buf[9];
    *nonce = get_be64(buf + 12);
    *token = NULL;
    return type;
}

/* ---- byte budgets ---- */

static bool bucket_take(rndz__bytes_bucket *b, uint32_t rate, size_t len, uint64_t now) {
    if (rate == UINT32_MAX) return true;
    /* burst: a quarter second of the rate, at least one large datagram */
    uint64_t cap = ((uint64_t)rate / 4 > 65536 ? (uint64_t)rate / 4 : 65536) * 1000;
    if (now > b->at) {
        uint64_t span = now - b->at;
        /* ms * B/s = milli-bytes; a long idle span fills the bucket whatever (no overflow) */
        uint64_t add = span > cap / (rate ? rate : 1) ? cap : span * (uint64_t)rate;
        b->level_mb = b->level_mb + add > cap || add > cap ? cap : b->level_mb + add;
        b->at = now;
    }
    uint64_t cost = (uint64_t)len * 1000;
    if (b->level_mb < cost) return false;
    b->level_mb -= cost;
    return true;
}

static void bucket_fill(rndz__bytes_bucket *b, uint32_t rate, uint64_t now) {
    b->at = now;
    b->level_mb = rate == UINT32_MAX ? 0 : ((uint64_t)rate / 4 > 65536 ? rate / 4 : 65536) * 1000ull;
}

/* ---- tables ---- */

/* Addresses as the relay's one UDP socket reports them: all in one form (an IPv6 socket's
 * IPv4 peers mapped), so they compare and hash as they are, on every datagram. */
static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family) return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *p = (const void *)a, *q = (const void *)b;
        return p->sin_port == q->sin_port && p->sin_addr.s_addr == q->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *p = (const void *)a, *q = (const void *)b;
    return p->sin6_port == q->sin6_port && p->sin6_scope_id == q->sin6_scope_id &&
           memcmp(&p->sin6_addr, &q->sin6_addr, sizeof p->sin6_addr) == 0;
}

static uint32_t addr_bucket(const rndz__relay *r, const struct sockaddr_storage *a) {
    uint8_t key[19];
    size_t n = 0;
    key[n++] = (uint8_t)a->ss_family;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)a;
        memcpy(key + n, &s->sin_addr, 4), n += 4;
        memcpy(key + n, &s->sin_port, 2), n += 2;
    } else {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)a;
        memcpy(key + n, &s->sin6_addr, 16), n += 16;
        memcpy(key + n, &s->sin6_port, 2), n += 2;
    }
    return (uint32_t)rndz__hash64(&r->addr_key, key, n) & r->mask;
}

static uint32_t nonce_bucket(const rndz__relay *r, uint64_t nonce) {
    return (uint32_t)rndz__hash64(&r->nonce_key, &nonce, sizeof nonce) & r->mask;
}

int rndz__relay_init(rndz__relay *r, const rndz__relay_key *key, const rndz__relay_limits *lim,
                     uint64_t now) {
    memset(r, 0, sizeof *r);
    r->key = key;
    r->lim = *lim;
    if (!lim->max_sessions) return -EINVAL;
    uint32_t nb = 16;
    while (nb < 2 * lim->max_sessions && nb < (1u << 30)) nb <<= 1;
    r->mask = nb - 1;
    r->sess = calloc(lim->max_sessions, sizeof *r->sess);
    r->free_list = calloc(lim->max_sessions, sizeof *r->free_list);
    r->by_nonce = calloc(nb, sizeof *r->by_nonce);
    r->by_addr = calloc(nb, sizeof *r->by_addr);
    if (!r->sess || !r->free_list || !r->by_nonce || !r->by_addr) {
        rndz__relay_free(r);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < lim->max_sessions; i++) r->free_list[i] = lim->max_sessions - 1 - i;
    r->nfree = lim->max_sessions;
    rndz__hkey_random(&r->addr_key);
    rndz__hkey_random(&r->nonce_key);
    bucket_fill(&r->total, lim->total_rate, now);
    return 0;
}

void rndz__relay_free(rndz__relay *r) {
    free(r->sess);
    free(r->free_list);
    free(r->by_nonce);
    free(r->by_addr);
    r->sess = NULL;
    r->free_list = r->by_nonce = r->by_addr = NULL;
}

/* Side entry e = session * 2 + role - 1; chains hold e + 1. */
static rndz__relay_side *side_of(rndz__relay *r, uint32_t e) { return &r->sess[e / 2].side[e % 2]; }

static bool find_addr(rndz__relay *r, const struct sockaddr_storage *a, uint32_t *e_out) {
    for (uint32_t e1 = r->by_addr[addr_bucket(r, a)]; e1; e1 = side_of(r, e1 - 1)->next) {
        if (same_addr(&side_of(r, e1 - 1)->addr, a)) {
            *e_out = e1 - 1;
            return true;
        }
    }
    return false;
}

static bool find_nonce(rndz__relay *r, uint64_t nonce, uint32_t *idx) {
    for (uint32_t i1 = r->by_nonce[nonce_bucket(r, nonce)]; i1; i1 = r->sess[i1 - 1].next)
        if (r->sess[i1 - 1].nonce == nonce) {
            *idx = i1 - 1;
            return true;
        }
    return false;
}

static void unlink_side(rndz__relay *r, uint32_t e) {
    rndz__relay_side *s = side_of(r, e);
    if (!s->bound || s->conn) return; /* TCP sides are not in the address table */
    uint32_t *p = &r->by_addr[addr_bucket(r, &s->addr)];
    while (*p && *p != e + 1) p = &side_of(r, *p - 1)->next;
    if (*p) *p = s->next;
    s->next = 0;
}

static void end_session(rndz__relay *r, uint32_t i) {
    rndz__relay_sess *se = &r->sess[i];
    unlink_side(r, i * 2);
    unlink_side(r, i * 2 + 1);
    uint32_t *p = &r->by_nonce[nonce_bucket(r, se->nonce)];
    while (*p && *p != i + 1) p = &r->sess[*p - 1].next;
    if (*p) *p = se->next;
    memset(se, 0, sizeof *se);
    r->free_list[r->nfree++] = i;
    r->active--;
}

static void drop(rndz__relay_out *o, int stat, const char *why) {
    o->stat = stat;
    o->why = why;
}

static void join(rndz__relay *r, const struct sockaddr_storage *from,
                 const rndz__relay_via *via, void *conn, int role,
                 uint64_t nonce, const uint8_t *token, uint64_t now, rndz__relay_out *o) {
    const char *bad = token_check(r->key, token, role, now);
    if (bad) {
        drop(o, RNDZ__ST_relay_refused, bad);
        return;
    }
    uint32_t i;
    if (!find_nonce(r, nonce, &i)) {
        if (!r->nfree) {
            drop(o, RNDZ__ST_relay_refused, "relay full (relay_max_sessions)");
            return;
        }
        i = r->free_list[--r->nfree];
        rndz__relay_sess *se = &r->sess[i];
        memset(se, 0, sizeof *se);
        se->used = true;
        se->nonce = nonce;
        se->created = now;
        bucket_fill(&se->bucket, r->lim.rate, now);
        uint32_t b = nonce_bucket(r, nonce);
        se->next = r->by_nonce[b];
        r->by_nonce[b] = i + 1;
        r->active++;
    }
    rndz__relay_sess *se = &r->sess[i];
    rndz__relay_side *me = &se->side[role - 1], *other = &se->side[2 - role];
    if (me->bound) {
        bool same = conn ? me->conn == conn : same_addr(&me->addr, from);
        if (!same) {
            drop(o, RNDZ__ST_relay_refused, "join of a role already taken from elsewhere");
            return;
        }
    } else if (!conn && other->bound && same_addr(&other->addr, from)) {
        /* both roles from one address: it would only hear itself (a reflector) */
        drop(o, RNDZ__ST_relay_refused, "join of both roles from one address");
        return;
    } else {
        me->bound = true;
        me->addr = *from;
        if (via) me->via = *via;
        me->conn = conn;
        if (!conn) {
            uint32_t b = addr_bucket(r, from);
            me->next = r->by_addr[b];
            r->by_addr[b] = i * 2 + (uint32_t)role - 1 + 1;
        }
        if (other->bound) {
            /* the second side: the first learns that the session is ready */
            o->notify = true;
            o->notify_to = other->addr;
            o->notify_via = other->via;
            o->notify_conn = other->conn;
        }
    }
    se->last = now;
    o->sess = i;
    o->ctl_len = rndz__relay_encode(o->ctl, RNDZ_RELAY_STATE,
                                    other->bound ? RNDZ_RELAY_READY : RNDZ_RELAY_WAITING,
                                    nonce, NULL);
}

/* Charge len bytes whatever the level (TCP: they were read already); the wait until the
 * bucket is out of debt, ms. */
static uint64_t bucket_charge(rndz__bytes_bucket *b, uint32_t rate, size_t len, uint64_t now) {
    if (rate == UINT32_MAX) return 0;
    uint64_t cost = (uint64_t)len * 1000;
    bucket_take(b, rate, 0, now); /* refill to now */
    if (b->level_mb >= cost) {
        b->level_mb -= cost;
        return 0;
    }
    uint64_t debt = cost - b->level_mb;
    b->level_mb = 0;
    uint64_t wait = (debt + rate - 1) / rate; /* milli-bytes / (bytes/s) = ms */
    b->at = now + wait;                       /* the refill starts once the debt is paid */
    return wait;
}

uint64_t rndz__relay_charge(rndz__relay *r, uint32_t i, size_t len, uint64_t now) {
    rndz__relay_sess *se = &r->sess[i];
    uint64_t a = bucket_charge(&se->bucket, r->lim.rate, len, now);
    uint64_t b = bucket_charge(&r->total, r->lim.total_rate, len, now);
    se->last = now;
    return a > b ? a : b;
}

bool rndz__relay_spend(rndz__relay *r, uint32_t i, size_t len, uint64_t now, int *stat) {
    rndz__relay_sess *se = &r->sess[i];
    if (!bucket_take(&se->bucket, r->lim.rate, len, now) ||
        !bucket_take(&r->total, r->lim.total_rate, len, now)) {
        *stat = RNDZ__ST_relay_limited;
        return false;
    }
    se->last = now;
    return true;
}

void rndz__relay_input(rndz__relay *r, const struct sockaddr_storage *from,
                       const rndz__relay_via *via, void *conn, const uint8_t *buf, size_t len,
                       uint64_t now, rndz__relay_out *o) {
    o->stat = -1;
    o->forward = o->notify = false;
    o->ctl_len = 0;
    o->why = NULL;
    o->to_conn = o->notify_conn = NULL;
    int arg;
    uint64_t nonce;
    const uint8_t *token;
    bool is_join = rndz__relay_decode(buf, len, &arg, &nonce, &token) == RNDZ_RELAY_JOIN;
    if (is_join) {
        join(r, from, via, conn, arg, nonce, token, now, o);
        return;
    }
    uint32_t e;
    if (conn || !find_addr(r, from, &e)) {
        drop(o, RNDZ__ST_relay_foreign, "datagram from an address in no session");
        return;
    }
    rndz__relay_sess *se = &r->sess[e / 2];
    const rndz__relay_side *other = &se->side[1 - e % 2];
    if (!other->bound) {
        drop(o, RNDZ__ST_relay_foreign, "the other side has not joined");
        return;
    }
    int stat;
    if (!rndz__relay_spend(r, e / 2, len, now, &stat)) {
        drop(o, stat, "over the relay's rate");
        return;
    }
    o->forward = true;
    o->to = other->addr;
    o->to_via = other->via;
}

void rndz__relay_end(rndz__relay *r, uint32_t i, void *self, void **other_conn) {
    *other_conn = NULL;
    if (i >= r->lim.max_sessions || !r->sess[i].used) return;
    for (int k = 0; k < 2; k++)
        if (r->sess[i].side[k].conn && r->sess[i].side[k].conn != self)
            *other_conn = r->sess[i].side[k].conn;
    end_session(r, i);
}

size_t rndz__relay_expire(rndz__relay *r, uint64_t now, size_t budget,
                          void (*cb)(void *ctx, void *conn), void *ctx) {
    size_t ended = 0;
    uint32_t n = r->lim.max_sessions;
    for (size_t k = 0; k < budget && k < n; k++) {
        uint32_t i = r->sweep_at;
        r->sweep_at = (r->sweep_at + 1) % n;
        rndz__relay_sess *se = &r->sess[i];
        if (!se->used || now < se->last + r->lim.idle_ms) continue;
        for (int s = 0; s < 2; s++)
            if (se->side[s].bound && se->side[s].conn && cb) cb(ctx, se->side[s].conn);
        end_session(r, i);
        ended++;
    }
    return ended;
}
