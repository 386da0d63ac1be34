/* wire.c: the v1 protobuf codec (Request/Response) and TCP framing.
 *
 * A hand-written proto3 codec for exactly the v1 schema (see rndz.h). Every read is bounded
 * by the end of the input; unknown fields are skipped by wire type; nothing allocates.
 */
#include "internal.h"

#include <string.h>

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };

typedef struct reader {
    const uint8_t *p, *end;
} reader;

static int read_varint(reader *r, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->p >= r->end) return RNDZ_E_TRUNCATED;
        uint8_t b = *r->p++;
        if (shift == 63 && b > 1) return RNDZ_E_VARINT; /* would overflow 64 bits */
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return RNDZ_E_VARINT; /* more than 10 bytes */
}

/* Read a tag; field numbers are 1..2^29-1. */
static int read_tag(reader *r, uint32_t *field, int *wt) {
    uint64_t tag;
    int rc = read_varint(r, &tag);
    if (rc) return rc;
    if (tag >> 32) return RNDZ_E_FIELD;
    *field = (uint32_t)(tag >> 3);
    *wt = (int)(tag & 7);
    if (*field == 0) return RNDZ_E_FIELD;
    return 0;
}

/* Read a length-delimited payload into a sub-reader. */
static int read_len(reader *r, reader *sub) {
    uint64_t n;
    int rc = read_varint(r, &n);
    if (rc) return rc;
    if (n > (uint64_t)(r->end - r->p)) return RNDZ_E_TRUNCATED;
    sub->p = r->p;
    sub->end = r->p + n;
    r->p += n;
    return 0;
}

static int skip_field(reader *r, int wt) {
    uint64_t v;
    reader sub;
    switch (wt) {
    case WT_VARINT: return read_varint(r, &v);
    case WT_LEN: return read_len(r, &sub);
    case WT_I64:
        if (r->end - r->p < 8) return RNDZ_E_TRUNCATED;
        r->p += 8;
        return 0;
    case WT_I32:
        if (r->end - r->p < 4) return RNDZ_E_TRUNCATED;
        r->p += 4;
        return 0;
    default: return RNDZ_E_WIRETYPE; /* groups are not part of proto3; 6 and 7 do not exist */
    }
}

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

static int read_string(reader *r, int wt, const char **s, size_t *n) {
    if (wt != WT_LEN) return RNDZ_E_WIRETYPE;
    reader sub;
    int rc = read_len(r, &sub);
    if (rc) return rc;
    if (!utf8_valid(sub.p, (size_t)(sub.end - sub.p))) return RNDZ_E_UTF8;
    *s = (const char *)sub.p;
    *n = (size_t)(sub.end - sub.p);
    return 0;
}

/* The body of a command submessage: field 1 id (Isync, Fsync, Rsync, Redirect), field 2 addr
 * (Fsync, Redirect). Ping, Pong and Bye are empty: any field in them is unknown. */
static int decode_cmd(reader *r, bool has_peer, bool has_addr, rndz_msg *m) {
    while (r->p < r->end) {
        uint32_t field;
        int wt, rc = read_tag(r, &field, &wt);
        if (rc) return rc;
        if (field == 1 && has_peer) rc = read_string(r, wt, &m->peer_id, &m->peer_id_len);
        else if (field == 2 && has_addr) rc = read_string(r, wt, &m->addr, &m->addr_len);
        else rc = skip_field(r, wt);
        if (rc) return rc;
    }
    return 0;
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
    reader r = {buf, buf + len};
    int kind = is_response ? 1 : 0;
    while (r.p < r.end) {
        uint32_t field;
        int wt, rc = read_tag(&r, &field, &wt);
        if (rc) return rc;
        rndz_cmd c = field < 7 ? cmd_of[kind][field] : RNDZ_CMD_NONE;
        if (field == 1) {
            rc = read_string(&r, wt, &out->id, &out->id_len);
        } else if (c != RNDZ_CMD_NONE) {
            if (wt != WT_LEN) return RNDZ_E_WIRETYPE;
            reader sub;
            if ((rc = read_len(&r, &sub))) return rc;
            /* oneof: a different member replaces the command; the same one merges into it */
            if (c != out->cmd) {
                out->cmd = c;
                out->peer_id = out->addr = "";
                out->peer_id_len = out->addr_len = 0;
            }
            rc = decode_cmd(&sub, cmd_has_peer(c), cmd_has_addr(c), out);
        } else {
            rc = skip_field(&r, wt);
        }
        if (rc) return rc;
    }
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
