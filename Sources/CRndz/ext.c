/* ext.c: see ext.h. Fields are read through the one walker, pb.h. */
#include "ext.h"
#include "pb.h"

#include <string.h>

bool rndz__ext_present(const rndz__ext *e) {
    return e->ncands > 0 || e->has_nonce || e->rtt_ms || e->relay || e->relay_addr[0] ||
           e->has_token || e->query || e->observed[0] || e->nalt || e->nat || e->mapped[0] ||
           e->pad || e->elsewhere || e->taken;
}

int rndz__ext_decode(const uint8_t *buf, size_t len, rndz__ext *out) {
    memset(out, 0, sizeof *out);
    rndz__pb r = rndz__pb_over(buf, len);
    rndz__pb_field f;
    int rc;
    while ((rc = rndz__pb_next(&r, &f)) == 1) {
        if (f.num == 19 && f.wt == RNDZ_PB_VARINT) {
            out->rtt_ms = f.u64 > UINT32_MAX ? UINT32_MAX : (uint32_t)f.u64;
        } else if (f.num == 18 && f.wt == RNDZ_PB_I64) {
            out->nonce = f.u64; /* fixed64: little endian */
            out->has_nonce = true;
        } else if (f.num == 20 && f.wt == RNDZ_PB_VARINT) {
            out->relay = f.u64 > 2 ? 2 : (uint32_t)f.u64;
        } else if (f.num == 21 && f.wt == RNDZ_PB_LEN && f.len > 0 && f.len < RNDZ_ADDRSTRLEN) {
            memcpy(out->relay_addr, f.data, f.len);
            out->relay_addr[f.len] = 0;
        } else if (f.num == 22 && f.wt == RNDZ_PB_LEN && f.len == sizeof out->token) {
            memcpy(out->token, f.data, f.len);
            out->has_token = true;
        } else if (f.num == 23 && f.wt == RNDZ_PB_VARINT) {
            out->query = (uint32_t)(f.u64 & 15);
        } else if (f.num == 24 && f.wt == RNDZ_PB_LEN && f.len > 0 && f.len < RNDZ_ADDRSTRLEN) {
            memcpy(out->observed, f.data, f.len);
            out->observed[f.len] = 0;
        } else if (f.num == 25 && f.wt == RNDZ_PB_LEN && out->nalt < RNDZ_MAX_ALT && f.len > 0 &&
                   f.len < RNDZ_ADDRSTRLEN) {
            memcpy(out->alt[out->nalt], f.data, f.len);
            out->alt[out->nalt][f.len] = 0;
            out->nalt++;
        } else if (f.num == 27 && f.wt == RNDZ_PB_LEN && f.len > 0 && f.len < RNDZ_ADDRSTRLEN) {
            memcpy(out->mapped, f.data, f.len);
            out->mapped[f.len] = 0;
        } else if (f.num == 29 && f.wt == RNDZ_PB_VARINT) {
            out->elsewhere = f.u64 ? 1 : 0;
        } else if (f.num == 30 && f.wt == RNDZ_PB_VARINT) {
            out->taken = f.u64 ? 1 : 0;
        } else if (f.num == 26 && f.wt == RNDZ_PB_VARINT) {
            out->nat = (uint32_t)(f.u64 & 0xffff);
        } else if (f.num == 17 && f.wt == RNDZ_PB_LEN && out->ncands < RNDZ_MAX_CANDS &&
                   f.len > 0 && f.len < RNDZ_ADDRSTRLEN) {
            memcpy(out->cands[out->ncands], f.data, f.len);
            out->cands[out->ncands][f.len] = 0;
            out->ncands++;
        } /* anything else: not ours */
    }
    return rc;
}

/* A string field numbered 16..31 (a two-byte tag) shorter than 128 bytes. */
static size_t put_str(uint8_t *buf, size_t n, unsigned num, const char *v, size_t l) {
    buf[n++] = (uint8_t)((num << 3 | 2) | 0x80);
    buf[n++] = 1;
    buf[n++] = (uint8_t)l;
    memcpy(buf + n, v, l);
    return n + l;
}

int rndz__ext_append(const rndz__ext *e, uint8_t *buf, size_t n, size_t cap) {
    size_t need = 0;
    for (size_t i = 0; i < e->ncands; i++) need += 3 + strlen(e->cands[i]);
    if (e->has_nonce) need += 2 + 8;
    if (e->rtt_ms) need += 2 + 5;
    if (e->relay) need += 3;
    size_t ral = strlen(e->relay_addr);
    if (ral) need += 3 + ral;
    if (e->has_token) need += 3 + sizeof e->token;
    if (e->query) need += 3;
    size_t obl = strlen(e->observed);
    if (obl) need += 3 + obl;
    for (size_t i = 0; i < e->nalt; i++) need += 3 + strlen(e->alt[i]);
    if (e->nat) need += 2 + 3;
    size_t mpl = strlen(e->mapped);
    if (mpl) need += 3 + mpl;
    if (e->pad) need += 4 + e->pad;
    if (e->elsewhere) need += 3;
    if (e->taken) need += 3;
    if (n + need > RNDZ_MAX_MSG) return RNDZ_E_TOOBIG;
    if (n + need > cap) return RNDZ_E_NOSPACE;
    for (size_t i = 0; i < e->ncands; i++) {
        size_t l = strlen(e->cands[i]); /* < 64: one-byte length */
        buf[n++] = (17 << 3 | 2) | 0x80; /* field 17 takes a two-byte tag: 0x8a 0x01 */
        buf[n++] = 1;
        buf[n++] = (uint8_t)l;
        memcpy(buf + n, e->cands[i], l);
        n += l;
    }
    if (e->has_nonce) {
        buf[n++] = (18 << 3 | 1) | 0x80; /* two-byte tag: 0x91 0x01 */
        buf[n++] = 1;
        for (int i = 0; i < 8; i++) buf[n++] = (uint8_t)(e->nonce >> (8 * i));
    }
    if (e->rtt_ms) {
        buf[n++] = (19 << 3 | 0) | 0x80; /* two-byte tag: 0x98 0x01 */
        buf[n++] = 1;
        for (uint32_t v = e->rtt_ms;; v >>= 7) {
            buf[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
            if (v <= 0x7f) break;
        }
    }
    /* fields 20..22 take two-byte tags too: 0xa0 0x01, 0xaa 0x01, 0xb2 0x01 */
    if (e->relay) {
        buf[n++] = (20 << 3 | 0) | 0x80;
        buf[n++] = 1;
        buf[n++] = (uint8_t)e->relay; /* 1 or 2: one byte */
    }
    if (ral) {
        buf[n++] = (21 << 3 | 2) | 0x80;
        buf[n++] = 1;
        buf[n++] = (uint8_t)ral;
        memcpy(buf + n, e->relay_addr, ral);
        n += ral;
    }
    if (e->has_token) {
        buf[n++] = (22 << 3 | 2) | 0x80;
        buf[n++] = 1;
        buf[n++] = (uint8_t)sizeof e->token;
        memcpy(buf + n, e->token, sizeof e->token);
        n += sizeof e->token;
    }
    /* fields 23..26: two-byte tags 0xb8 0x01, 0xc2 0x01, 0xca 0x01, 0xd0 0x01 */
    if (e->query) {
        buf[n++] = (23 << 3 | 0) | 0x80;
        buf[n++] = 1;
        buf[n++] = (uint8_t)(e->query & 15);
    }
    if (obl) n = put_str(buf, n, 24, e->observed, obl);
    for (size_t i = 0; i < e->nalt; i++) n = put_str(buf, n, 25, e->alt[i], strlen(e->alt[i]));
    if (mpl) n = put_str(buf, n, 27, e->mapped, mpl);
    if (e->elsewhere) {
        buf[n++] = (29 << 3 | 0) | 0x80;
        buf[n++] = 1;
        buf[n++] = 1;
    }
    if (e->taken) {
        buf[n++] = (uint8_t)((30 << 3 | 0) | 0x80);
        buf[n++] = 1;
        buf[n++] = 1;
    }
    if (e->pad) {
        buf[n++] = (28 << 3 | 2) | 0x80;
        buf[n++] = 1;
        if (e->pad > 127) buf[n++] = (uint8_t)((e->pad & 0x7f) | 0x80), buf[n++] = (uint8_t)(e->pad >> 7);
        else buf[n++] = (uint8_t)e->pad;
        memset(buf + n, 0, e->pad);
        n += e->pad;
    }
    if (e->nat) {
        buf[n++] = (26 << 3 | 0) | 0x80;
        buf[n++] = 1;
        for (uint32_t v = e->nat & 0xffff;; v >>= 7) {
            buf[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
            if (v <= 0x7f) break;
        }
    }
    return (int)n;
}
