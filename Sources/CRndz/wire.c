/* wire.c: the v1 protobuf codec (Request/Response) and TCP framing.
 *
 * A hand-written proto3 codec for exactly the v1 schema (see rndz.h). It reads through the
 * one field walker (pb.h: every read bounded by the end of the input); unknown fields are
 * skipped; nothing allocates.
 */
#include "pb.h"

#include <string.h>

enum { WT_LEN = RNDZ_PB_LEN };

/* Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF), as protobuf requires of
 * string fields. */
static bool utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) len = 2, cp = c & 0x1f, min = 0x80;
        else if ((c & 0xf0) == 0xe0) len = 3, cp = c & 0x0f, min = 0x800;
        else if ((c & 0xf8) == 0xf0) len = 4, cp = c & 0x07, min = 0x10000;
        else return false;
        if (n - i < len) return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += len;
    }
    return true;
}

/* A string field: its payload, if it is valid UTF-8. */
static int take_string(const rndz__pb_field *f, const char **s, size_t *n) {
    if (f->wt != RNDZ_PB_LEN) return RNDZ_E_WIRETYPE;
    if (!utf8_valid(f->data, f->len)) return RNDZ_E_UTF8;
    *s = (const char *)f->data;
    *n = f->len;
    return 0;
}

/* The body of a command submessage: field 1 id (Isync, Fsync, Rsync, Redirect), field 2 addr
 * (Fsync, Redirect). Ping, Pong and Bye are empty: any field in them is unknown. */
static int decode_cmd(rndz__pb *r, bool has_peer, bool has_addr, rndz_msg *m) {
    rndz__pb_field f;
    int rc;
    while ((rc = rndz__pb_next(r, &f)) == 1) {
        if (f.num == 1 && has_peer) rc = take_string(&f, &m->peer_id, &m->peer_id_len);
        else if (f.num == 2 && has_addr) rc = take_string(&f, &m->addr, &m->addr_len);
        else rc = 0; /* unknown: skipped */
        if (rc) return rc;
    }
    return rc;
}

/* cmd_of[is_response][field]: the command carried by that field of Request/Response. */
static const rndz_cmd cmd_of[2][7] = {
    {RNDZ_CMD_NONE, RNDZ_CMD_NONE, RNDZ_REQ_PING, RNDZ_REQ_ISYNC, RNDZ_REQ_FSYNC, RNDZ_REQ_RSYNC,
     RNDZ_REQ_BYE},
    {RNDZ_CMD_NONE, RNDZ_CMD_NONE, RNDZ_RSP_PONG, RNDZ_RSP_REDIRECT, RNDZ_RSP_FSYNC,
     RNDZ_CMD_NONE, RNDZ_CMD_NONE},
};

static bool cmd_has_peer(rndz_cmd c) {
    return c != RNDZ_REQ_PING && c != RNDZ_REQ_BYE && c != RNDZ_RSP_PONG;
}

static bool cmd_has_addr(rndz_cmd c) {
    return c == RNDZ_REQ_FSYNC || c == RNDZ_RSP_REDIRECT || c == RNDZ_RSP_FSYNC;
}

int rndz_msg_decode(const uint8_t *buf, size_t len, int is_response, rndz_msg *out) {
    if (!out || (!buf && len)) return -EINVAL;
    memset(out, 0, sizeof *out);
    out->id = out->peer_id = out->addr = "";
    if (len > RNDZ_MAX_MSG) return RNDZ_E_TOOBIG;
    rndz__pb r = rndz__pb_over(buf, len);
    int kind = is_response ? 1 : 0;
    rndz__pb_field f;
    int rc;
    while ((rc = rndz__pb_next(&r, &f)) == 1) {
        rndz_cmd c = f.num < 7 ? cmd_of[kind][f.num] : RNDZ_CMD_NONE;
        if (f.num == 1) {
            rc = take_string(&f, &out->id, &out->id_len);
        } else if (c != RNDZ_CMD_NONE) {
            if (f.wt != RNDZ_PB_LEN) return RNDZ_E_WIRETYPE;
            /* oneof: a different member replaces the command; the same one merges into it */
            if (c != out->cmd) {
                out->cmd = c;
                out->peer_id = out->addr = "";
                out->peer_id_len = out->addr_len = 0;
            }
            rndz__pb sub = rndz__pb_over(f.data, f.len);
            rc = decode_cmd(&sub, cmd_has_peer(c), cmd_has_addr(c), out);
        } else {
            rc = 0; /* unknown: skipped */
        }
        if (rc) return rc;
    }
    if (rc < 0) return rc;
    return out->cmd == RNDZ_CMD_NONE ? RNDZ_E_NOCMD : 0;
}

/* --- encoding --------------------------------------------------------------------------- */

typedef struct writer {
    uint8_t *p, *end;
    bool overflow;
} writer;

static void put_byte(writer *w, uint8_t b) {
    if (w->p < w->end) *w->p++ = b;
    else w->overflow = true;
}

static void put_varint(writer *w, uint64_t v) {
    while (v >= 0x80) {
        put_byte(w, (uint8_t)(v | 0x80));
        v >>= 7;
    }
    put_byte(w, (uint8_t)v);
}

static size_t varint_size(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) v >>= 7, n++;
    return n;
}

static void put_bytes(writer *w, const void *s, size_t n) {
    if ((size_t)(w->end - w->p) < n) {
        w->overflow = true;
        w->p = w->end;
        return;
    }
    if (n) memcpy(w->p, s, n);
    w->p += n;
}

/* proto3: an empty string is not written. */
static size_t string_size(size_t n) { return n ? 1 + varint_size(n) + n : 0; }
static void put_string(writer *w, uint32_t field, const char *s, size_t n) {
    if (!n) return;
    put_varint(w, (uint64_t)field << 3 | WT_LEN);
    put_varint(w, n);
    put_bytes(w, s, n);
}

static int cmd_field(rndz_cmd c, int *is_response) {
    for (int k = 0; k < 2; k++)
        for (int f = 2; f < 7; f++)
            if (cmd_of[k][f] == c && c != RNDZ_CMD_NONE) {
                *is_response = k;
                return f;
            }
    return 0;
}

int rndz_msg_encode(const rndz_msg *m, uint8_t *buf, size_t cap) {
    if (!m || (!buf && cap)) return -EINVAL;
    int is_response;
    int field = cmd_field(m->cmd, &is_response);
    if (!field) return RNDZ_E_NOCMD;
    size_t peer_len = m->peer_id ? m->peer_id_len : 0;
    size_t addr_len = (m->addr && cmd_has_addr(m->cmd)) ? m->addr_len : 0;
    if (!cmd_has_peer(m->cmd)) peer_len = 0;
    size_t id_len = m->id ? m->id_len : 0;
    size_t sub = string_size(peer_len) + string_size(addr_len);
    size_t total = string_size(id_len) + 1 + varint_size(sub) + sub;
    if (total > RNDZ_MAX_MSG) return RNDZ_E_TOOBIG;
    if (total > cap) return RNDZ_E_NOSPACE;
    writer w = {buf, buf + cap, false};
    put_string(&w, 1, m->id, id_len);
    put_varint(&w, (uint64_t)field << 3 | WT_LEN);
    put_varint(&w, sub);
    put_string(&w, 1, m->peer_id, peer_len);
    put_string(&w, 2, m->addr, addr_len);
    return w.overflow ? RNDZ_E_NOSPACE : (int)(w.p - buf);
}

int rndz__encode(rndz_cmd cmd, const char *id, size_t id_len, const char *peer, size_t peer_len,
                 const char *addr, size_t addr_len, uint8_t *buf, size_t cap) {
    rndz_msg m = {cmd, id, id_len, peer, peer_len, addr, addr_len};
    return rndz_msg_encode(&m, buf, cap);
}

/* --- TCP framing ------------------------------------------------------------------------ */

int rndz_frame_encode(const rndz_msg *m, uint8_t *buf, size_t cap) {
    if (!buf || cap < 2) return buf ? RNDZ_E_NOSPACE : -EINVAL;
    int n = rndz_msg_encode(m, buf + 2, cap - 2);
    return n < 0 ? n : rndz__frame_seal(buf, (size_t)n);
}

int rndz__frame_seal(uint8_t *frame, size_t body_len) {
    if (body_len > RNDZ_MAX_MSG) return RNDZ_E_TOOBIG;
    frame[0] = (uint8_t)(body_len >> 8);
    frame[1] = (uint8_t)body_len;
    return (int)body_len + 2;
}

void rndz_framer_init(rndz_framer *f) {
    if (f) f->have = 0;
}

static size_t frame_need(const rndz_framer *f) {
    return f->have < 2 ? 2 : 2 + ((size_t)f->buf[0] << 8 | f->buf[1]);
}

int rndz_framer_feed(rndz_framer *f, const uint8_t *data, size_t len) {
    if (!f || (!data && len)) return -EINVAL;
    size_t used = 0;
    for (;;) {
        size_t need = frame_need(f);
        if (need - 2 > RNDZ_MAX_MSG) return RNDZ_E_FRAME;
        if (f->have == need && f->have >= 2) break; /* a complete frame waits for _next */
        size_t n = need - f->have;
        if (n > len - used) n = len - used;
        if (!n) break;
        memcpy(f->buf + f->have, data + used, n);
        f->have += n;
        used += n;
    }
    return (int)used;
}

int rndz_framer_next(rndz_framer *f, const uint8_t **body, size_t *len) {
    if (!f || !body || !len) return -EINVAL;
    size_t need = frame_need(f);
    if (f->have < 2 || f->have != need) return 0;
    *body = f->buf + 2;
    *len = need - 2;
    f->have = 0;
    return 1;
}
