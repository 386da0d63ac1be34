/* auth.c: the Auth field (see auth.h): find it, sign, verify, derive credentials.
 *
 * It reads fields through the one walker (pb.h), like wire.c's v1 codec and ext.c; the
 * server only calls it on messages wire.c already decoded. */
#include "auth.h"
#include "pb.h"

#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>

static const char CRED_LABEL[] = "rndz id credential v1";

static int parse_auth(const uint8_t *p, size_t len, rndz__auth_field *f) {
    rndz__pb r = rndz__pb_over(p, len);
    rndz__pb_field x;
    bool has_ts = false;
    int rc;
    f->nonce = f->mac = NULL;
    f->nonce_len = 0;
    while ((rc = rndz__pb_next(&r, &x)) == 1) {
        if (x.num == 1) {
            if (x.wt != RNDZ_PB_VARINT) return -1;
            f->ts = x.u64;
            has_ts = true;
        } else if (x.num == 2) {
            if (x.wt != RNDZ_PB_LEN) return -1;
            f->nonce = x.data;
            f->nonce_len = x.len;
        } else if (x.num == 3) {
            if (x.wt != RNDZ_PB_LEN || x.len != RNDZ_SHA256_LEN) return -1;
            f->mac = x.data;
        } /* other fields: skipped, for later versions */
    }
    if (rc < 0) return -1;
    if (!has_ts || !f->mac || !f->nonce || f->nonce_len < RNDZ_AUTH_NONCE_MIN ||
        f->nonce_len > RNDZ_AUTH_NONCE_MAX)
        return -1;
    return 0;
}

int rndz__auth_find(const uint8_t *buf, size_t len, rndz__auth_field *f) {
    rndz__pb r = rndz__pb_over(buf, len);
    rndz__pb_field x;
    int found = 0, rc;
    const uint8_t *start = r.p;
    while ((rc = rndz__pb_next(&r, &x)) == 1) {
        const uint8_t *field_start = start;
        start = r.p;
        if (x.num != RNDZ_AUTH_FIELD) continue;
        /* exactly one: with two, which one the MAC skips would be ambiguous */
        if (x.wt != RNDZ_PB_LEN || found || parse_auth(x.data, x.len, f)) return RNDZ__AUTH_MALFORMED;
        f->start = (size_t)(field_start - buf);
        f->end = (size_t)(r.p - buf);
        found = 1;
    }
    return rc < 0 ? RNDZ__AUTH_MALFORMED : found;
}

void rndz__auth_mac(const uint8_t cred[RNDZ_CREDENTIAL_LEN], uint64_t ts, const uint8_t *nonce,
                    size_t nonce_len, const uint8_t *buf, size_t len, size_t skip_start,
                    size_t skip_end, uint8_t out[RNDZ_SHA256_LEN]) {
    uint8_t head[9];
    for (int i = 0; i < 8; i++) head[i] = (uint8_t)(ts >> (56 - 8 * i));
    head[8] = (uint8_t)nonce_len;
    rndz__hmac h;
    rndz__hmac_init(&h, cred, RNDZ_CREDENTIAL_LEN);
    rndz__hmac_update(&h, head, sizeof head);
    rndz__hmac_update(&h, nonce, nonce_len);
    rndz__hmac_update(&h, buf, skip_start);
    rndz__hmac_update(&h, buf + skip_end, len - skip_end);
    rndz__hmac_final(&h, out);
    rndz__wipe(&h, sizeof h);
}

static size_t put_varint(uint8_t *p, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

int rndz__auth_append(const uint8_t cred[RNDZ_CREDENTIAL_LEN], uint64_t ts,
                      const uint8_t *nonce, size_t nonce_len, uint8_t *buf, size_t len,
                      size_t cap) {
    rndz__auth_field f;
    if (rndz__auth_find(buf, len, &f) != 0) return RNDZ_E_WRONGKIND; /* has one (or a bad one) */
    uint8_t field[RNDZ_AUTH_MAX_FIELD], sub[RNDZ_AUTH_MAX_FIELD];
    size_t n = 0;
    sub[n++] = 0x08; /* 1: ts, varint */
    n += put_varint(sub + n, ts);
    sub[n++] = 0x12; /* 2: nonce, bytes */
    sub[n++] = (uint8_t)nonce_len;
    memcpy(sub + n, nonce, nonce_len);
    n += nonce_len;
    sub[n++] = 0x1a; /* 3: mac, bytes */
    sub[n++] = RNDZ_SHA256_LEN;
    rndz__auth_mac(cred, ts, nonce, nonce_len, buf, len, len, len, sub + n);
    n += RNDZ_SHA256_LEN;
    size_t m = 0;
    m += put_varint(field, (uint64_t)RNDZ_AUTH_FIELD << 3 | RNDZ_PB_LEN);
    m += put_varint(field + m, n);
    memcpy(field + m, sub, n);
    m += n;
    if (len + m > RNDZ_MAX_MSG) return RNDZ_E_TOOBIG;
    if (len + m > cap) return RNDZ_E_NOSPACE;
    memcpy(buf + len, field, m);
    return (int)(len + m);
}

static _Atomic uint64_t last_ts;

uint64_t rndz__auth_next_ts(void) {
    uint64_t now = rndz__unix_ms();
    uint64_t prev = atomic_load_explicit(&last_ts, memory_order_relaxed);
    for (;;) {
        uint64_t next = now > prev ? now : prev + 1;
        if (atomic_compare_exchange_weak_explicit(&last_ts, &prev, next, memory_order_relaxed,
                                                  memory_order_relaxed))
            return next;
    }
}

void rndz__auth_nonce(uint8_t *out, size_t n) {
    /* The nonce need not be secret (freshness comes from ts); it keeps two signers of one id
     * from producing the same MAC input. */
    if (getrandom(out, n, GRND_NONBLOCK) == (ssize_t)n) return;
    for (size_t i = 0; i < n; i++) out[i] = (uint8_t)rndz__random();
}

static void credential(const rndz__hmac *keyed, const char *id, size_t id_len,
                       uint8_t out[RNDZ_CREDENTIAL_LEN]) {
    rndz__hmac h = *keyed;
    rndz__hmac_update(&h, CRED_LABEL, sizeof CRED_LABEL - 1);
    rndz__hmac_update(&h, id, id_len);
    rndz__hmac_final(&h, out);
    rndz__wipe(&h, sizeof h);
}

void rndz__auth_key_init(rndz__auth_key *k, const uint8_t *secret, size_t len,
                         uint32_t window_ms, uint64_t now_unix_ms) {
    rndz__hmac_init(&k->secret, secret, len);
    k->window_ms = window_ms;
    k->not_before = now_unix_ms;
}

int rndz__auth_verify(const rndz__auth_key *k, const uint8_t *buf, size_t len, const char *id,
                      size_t id_len, uint64_t now_unix_ms, uint64_t *ts) {
    rndz__auth_field f;
    int rc = rndz__auth_find(buf, len, &f);
    if (rc == 0) return RNDZ__AUTH_MISSING;
    if (rc < 0) return RNDZ__AUTH_MALFORMED;
    uint64_t skew = f.ts > now_unix_ms ? f.ts - now_unix_ms : now_unix_ms - f.ts;
    if (f.ts < k->not_before || skew > k->window_ms) return RNDZ__AUTH_STALE;
    uint8_t cred[RNDZ_CREDENTIAL_LEN], mac[RNDZ_SHA256_LEN];
    credential(&k->secret, id, id_len, cred);
    rndz__auth_mac(cred, f.ts, f.nonce, f.nonce_len, buf, len, f.start, f.end, mac);
    bool ok = rndz__ct_equal(mac, f.mac, sizeof mac);
    rndz__wipe(cred, sizeof cred);
    if (!ok) return RNDZ__AUTH_BADMAC;
    *ts = f.ts;
    return RNDZ__AUTH_OK;
}

/* --- public ----------------------------------------------------------------------------- */

#define SECRET_MIN 16

int rndz_credential_derive(const uint8_t *secret, size_t secret_len, const char *id,
                           size_t id_len, uint8_t out[RNDZ_CREDENTIAL_LEN]) {
    if (!secret || secret_len < SECRET_MIN || !out || (!id && id_len)) return -EINVAL;
    rndz__hmac h;
    rndz__hmac_init(&h, secret, secret_len);
    credential(&h, id ? id : "", id_len, out);
    rndz__wipe(&h, sizeof h);
    return 0;
}

int rndz_msg_sign(const uint8_t credential_[RNDZ_CREDENTIAL_LEN], uint64_t ts_ms,
                  const uint8_t *nonce, size_t nonce_len, uint8_t *buf, size_t len,
                  size_t cap) {
    if (!credential_ || !buf || len > cap) return -EINVAL;
    if (nonce && (nonce_len < RNDZ_AUTH_NONCE_MIN || nonce_len > RNDZ_AUTH_NONCE_MAX))
        return -EINVAL;
    rndz_msg m;
    int rc = rndz_msg_decode(buf, len, 0, &m);
    if (rc) return rc;
    uint8_t rnd[RNDZ_AUTH_NONCE_DEFAULT];
    if (!nonce) {
        rndz__auth_nonce(rnd, sizeof rnd);
        nonce = rnd;
        nonce_len = sizeof rnd;
    }
    return rndz__auth_append(credential_, ts_ms ? ts_ms : rndz__auth_next_ts(), nonce,
                             nonce_len, buf, len, cap);
}
