/* ext.c: see ext.h. */
#include "ext.h"

#include <string.h>

static int rd_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    *v = 0;
    for (int s = 0; s < 64; s += 7) {
        if (*p >= end) return -1;
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << s;
        if (!(b & 0x80)) return 0;
    }
    return -1;
}

bool rndz__ext_present(const rndz__ext *e) {
    return e->ncands > 0 || e->has_nonce || e->rtt_ms;
}

int rndz__ext_decode(const uint8_t *buf, size_t len, rndz__ext *out) {
    memset(out, 0, sizeof *out);
    const uint8_t *p = buf, *end = buf + len;
    while (p < end) {
        uint64_t tag, v;
        if (rd_varint(&p, end, &tag)) return RNDZ_E_TRUNCATED;
        unsigned field = (unsigned)(tag >> 3), wt = (unsigned)(tag & 7);
        switch (wt) {
        case 0:
            if (rd_varint(&p, end, &v)) return RNDZ_E_TRUNCATED;
            if (field == 19) out->rtt_ms = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
            break;
        case 1:
            if (end - p < 8) return RNDZ_E_TRUNCATED;
            if (field == 18) {
                uint64_t n = 0;
                for (int i = 7; i >= 0; i--) n = n << 8 | p[i]; /* fixed64 is little endian */
                out->nonce = n;
                out->has_nonce = true;
            }
            p += 8;
            break;
        case 2:
            if (rd_varint(&p, end, &v) || v > (uint64_t)(end - p)) return RNDZ_E_TRUNCATED;
            if (field == 17 && out->ncands < RNDZ_MAX_CANDS && v > 0 && v < RNDZ_ADDRSTRLEN) {
                memcpy(out->cands[out->ncands], p, v);
                out->cands[out->ncands][v] = 0;
                out->ncands++;
            }
            p += v;
            break;
        case 5:
            if (end - p < 4) return RNDZ_E_TRUNCATED;
            p += 4;
            break;
        default: return RNDZ_E_WIRETYPE;
        }
    }
    return 0;
}

int rndz__ext_append(const rndz__ext *e, uint8_t *buf, size_t n, size_t cap) {
    size_t need = 0;
    for (size_t i = 0; i < e->ncands; i++) need += 3 + strlen(e->cands[i]);
    if (e->has_nonce) need += 2 + 8;
    if (e->rtt_ms) need += 2 + 5;
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
    return (int)n;
}
