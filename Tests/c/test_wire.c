/* test_wire.c: the v1 codec and TCP framing against the captured vectors, odd and malformed
 * input with exact error codes, encode bounds, and a deterministic mutation fuzz. */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What every captured vector decodes to. Every vector in the file must be listed here and
 * every entry here must be in the file. */
typedef struct expect {
    const char *name;
    int is_response;
    rndz_cmd cmd;
    const char *id, *peer, *addr;
} expect;

static const expect vectors_expected[] = {
    {"udp.ping", 0, RNDZ_REQ_PING, "c1", "", ""},
    {"udp.pong", 1, RNDZ_RSP_PONG, "c1", "", ""},
    {"udp.isync", 0, RNDZ_REQ_ISYNC, "c2", "c1", ""},
    {"udp.fsync", 1, RNDZ_RSP_FSYNC, "c1", "c2", "127.0.0.1:57456"},
    {"udp.rsync", 0, RNDZ_REQ_RSYNC, "c1", "c2", ""},
    {"udp.rsync.punch", 0, RNDZ_REQ_RSYNC, "c1", "c2", ""},
    {"udp.redirect", 1, RNDZ_RSP_REDIRECT, "c2", "c1", "127.0.0.1:37681"},
    {"udp.isync.unknown", 0, RNDZ_REQ_ISYNC, "c3", "nobody", ""},
    {"udp.redirect.empty", 1, RNDZ_RSP_REDIRECT, "c3", "nobody", ""},
    {"udp.bye", 0, RNDZ_REQ_BYE, "o2", "", ""},
    {"udp.fsync.ipv6", 1, RNDZ_RSP_FSYNC, "v1", "v2", "[::1]:42719"},
    {"tcp.ping", 0, RNDZ_REQ_PING, "c1", "", ""},
    {"tcp.pong", 1, RNDZ_RSP_PONG, "", "", ""},
    {"tcp.isync", 0, RNDZ_REQ_ISYNC, "c2", "c1", ""},
    {"tcp.fsync", 1, RNDZ_RSP_FSYNC, "", "c2", "127.0.0.1:33289"},
    {"tcp.rsync", 0, RNDZ_REQ_RSYNC, "c1", "c2", ""},
    {"tcp.redirect", 1, RNDZ_RSP_REDIRECT, "", "c1", "127.0.0.1:36777"},
    {"tcp.isync.unknown", 0, RNDZ_REQ_ISYNC, "c3", "nobody", ""},
    {"tcp.redirect.empty", 1, RNDZ_RSP_REDIRECT, "", "nobody", ""},
    /* Probes: the request decodes to this (rc 0) or fails with rc; the reply (if any) is
     * checked separately in check_probe(). */
    {"probe.empty-id", 0, RNDZ_REQ_PING, "", "", ""},
    {"probe.unknown-field", 0, RNDZ_REQ_PING, "p1", "", ""},
    {"probe.cmd-first", 0, RNDZ_REQ_PING, "p2", "", ""},
    {"probe.no-cmd", 0, RNDZ_CMD_NONE, NULL, NULL, NULL},
    {"probe.garbage", 0, RNDZ_CMD_NONE, NULL, NULL, NULL},
    {"probe.rsync-nobody", 0, RNDZ_REQ_RSYNC, "p4", "ghost", ""},
};

/* Probes whose request must fail, and how. */
static int probe_rc(const char *name) {
    if (strcmp(name, "probe.no-cmd") == 0) return RNDZ_E_NOCMD;
    if (strcmp(name, "probe.garbage") == 0) return RNDZ_E_TRUNCATED; /* ff ff ff: a cut varint */
    return 0;
}

static const expect *find_expect(const char *name) {
    for (size_t i = 0; i < sizeof vectors_expected / sizeof vectors_expected[0]; i++)
        if (strcmp(vectors_expected[i].name, name) == 0) return &vectors_expected[i];
    return NULL;
}

/* Decode from a heap copy of exactly len bytes (so valgrind/ASan see any over-read). The
 * copy is returned in *keep (the decoded strings point into it); free it after use. */
static int decode_exact(const uint8_t *bytes, size_t len, int is_response, rndz_msg *m,
                        uint8_t **keep) {
    uint8_t *copy = malloc(len ? len : 1);
    if (len) memcpy(copy, bytes, len);
    int rc = rndz_msg_decode(copy, len, is_response, m);
    *keep = copy;
    return rc;
}

static void check_fields(const rndz_msg *m, const expect *e) {
    CHECK_EQ_INT(m->cmd, e->cmd);
    CHECK(m->id != NULL && m->peer_id != NULL && m->addr != NULL);
    if (m->id) CHECK_EQ_SN(m->id, m->id_len, e->id);
    if (m->peer_id) CHECK_EQ_SN(m->peer_id, m->peer_id_len, e->peer);
    if (m->addr) CHECK_EQ_SN(m->addr, m->addr_len, e->addr);
}

/* Strings point into the decoded buffer (or are empty). */
static bool points_into(const char *s, size_t n, const uint8_t *buf, size_t len) {
    if (n == 0) return s != NULL;
    return (const uint8_t *)s >= buf && (const uint8_t *)s + n <= buf + len;
}

static void check_probe(const tl_vector *v, const expect *e) {
    rndz_msg m;
    uint8_t *keep;
    int want = probe_rc(v->name);
    int rc = decode_exact(v->bytes, v->len, 0, &m, &keep);
    CHECK_RC(rc, want);
    if (want == 0 && rc == 0) {
        check_fields(&m, e);
        /* The canonical encoding of what was decoded (field order and unknown fields are not
         * kept: id first, then the command). */
        uint8_t out[64];
        int n = rndz_msg_encode(&m, out, sizeof out);
        CHECK(n > 0);
        if (!v->reply_none) {
            /* The reference server answered Pong with the same id: that is our encoding of
             * Response{id, Pong}, byte for byte. */
            rndz_msg pong = m;
            pong.cmd = RNDZ_RSP_PONG;
            n = rndz_msg_encode(&pong, out, sizeof out);
            CHECK_EQ_MEM(out, n > 0 ? (size_t)n : 0, v->reply, v->reply_len);
            rndz_msg r;
            uint8_t *k2;
            CHECK_RC(decode_exact(v->reply, v->reply_len, 1, &r, &k2), 0);
            CHECK_EQ_INT(r.cmd, RNDZ_RSP_PONG);
            CHECK_EQ_MEM(r.id, r.id_len, m.id, m.id_len);
            free(k2);
        }
    }
    if (strcmp(v->name, "probe.no-cmd") == 0 || strcmp(v->name, "probe.garbage") == 0 ||
        strcmp(v->name, "probe.rsync-nobody") == 0)
        CHECK(v->reply_none);
    else
        CHECK(!v->reply_none);
    free(keep);
}

static void test_vectors(void) {
    const tl_vector *vs;
    size_t n = tl_vectors(&vs);
    CHECK_EQ_INT(n, sizeof vectors_expected / sizeof vectors_expected[0]);
    for (size_t i = 0; i < sizeof vectors_expected / sizeof vectors_expected[0]; i++) {
        bool found = false;
        for (size_t k = 0; k < n; k++) found |= strcmp(vs[k].name, vectors_expected[i].name) == 0;
        tl_case("table entry %s", vectors_expected[i].name);
        CHECK(found);
    }
    for (size_t i = 0; i < n; i++) {
        const tl_vector *v = &vs[i];
        const expect *e = find_expect(v->name);
        tl_case("vector %s", v->name);
        if (!CHECK(e != NULL)) continue;
        if (v->is_probe) {
            CHECK(strncmp(v->name, "probe.", 6) == 0);
            check_probe(v, e);
            continue;
        }
        bool tcp = strcmp(v->transport, "tcp") == 0;
        const uint8_t *body = v->bytes;
        size_t blen = v->len;
        if (tcp) {
            if (!CHECK(v->len >= 2)) continue;
            CHECK_EQ_INT((size_t)v->bytes[0] << 8 | v->bytes[1], v->len - 2);
            body += 2;
            blen -= 2;
            /* through the framer: whole, then byte by byte */
            rndz_framer f;
            rndz_framer_init(&f);
            CHECK_RC(rndz_framer_feed(&f, v->bytes, v->len), (int)v->len);
            const uint8_t *fb = NULL;
            size_t fl = 0;
            CHECK_EQ_INT(rndz_framer_next(&f, &fb, &fl), 1);
            if (fb) CHECK_EQ_MEM(fb, fl, body, blen);
            CHECK_EQ_INT(rndz_framer_next(&f, &fb, &fl), 0);
        }
        rndz_msg m;
        uint8_t *keep;
        int rc = decode_exact(body, blen, e->is_response, &m, &keep);
        CHECK_RC(rc, 0);
        if (rc == 0) {
            check_fields(&m, e);
            CHECK(points_into(m.id, m.id_len, keep, blen));
            CHECK(points_into(m.peer_id, m.peer_id_len, keep, blen));
            CHECK(points_into(m.addr, m.addr_len, keep, blen));
            uint8_t out[2048];
            int en = rndz_msg_encode(&m, out, sizeof out);
            CHECK_RC(en, (int)blen);
            if (en > 0) CHECK_EQ_MEM(out, (size_t)en, body, blen);
            if (tcp) {
                en = rndz_frame_encode(&m, out, sizeof out);
                CHECK_RC(en, (int)v->len);
                if (en > 0) CHECK_EQ_MEM(out, (size_t)en, v->bytes, v->len);
            }
            /* Encoding from the table alone (not from decoded pointers) gives the bytes too. */
            rndz_msg t = {e->cmd, e->id, strlen(e->id), e->peer, strlen(e->peer), e->addr,
                          strlen(e->addr)};
            en = rndz_msg_encode(&t, out, sizeof out);
            if (en > 0) CHECK_EQ_MEM(out, (size_t)en, body, blen);
            else CHECK_RC(en, (int)blen);
        }
        free(keep);
    }
    tl_case("%s", "");
}

/* --- malformed and odd input ----------------------------------------------------------- */

typedef struct bad_case {
    const char *what;
    const char *hex;
    int is_response;
    int rc;
} bad_case;

static const bad_case bad_cases[] = {
    {"empty input", "", 0, RNDZ_E_NOCMD},
    {"empty input (response)", "", 1, RNDZ_E_NOCMD},
    {"tag varint cut off", "0a 02 63 31 92", 0, RNDZ_E_TRUNCATED},
    {"length varint cut off", "0a 82", 0, RNDZ_E_TRUNCATED},
    {"id length past the end", "0a 05 63 31", 0, RNDZ_E_TRUNCATED},
    {"id length past the end by one", "12 00 0a 03 63 31", 0, RNDZ_E_TRUNCATED},
    {"cmd length past the end", "0a 02 63 31 1a 04 0a 02 63", 0, RNDZ_E_TRUNCATED},
    {"inner string past the submessage (bytes follow outside)", "1a 04 0a 03 63 31 32", 0,
     RNDZ_E_TRUNCATED},
    {"inner string past the end", "1a 04 0a 05 63 31", 0, RNDZ_E_TRUNCATED},
    {"inner varint runs to the submessage end", "1a 02 ff ff 0a 02 63 31", 0, RNDZ_E_TRUNCATED},
    {"nested garbage at the end", "0a 02 63 31 1a 03 ff ff ff", 0, RNDZ_E_TRUNCATED},
    {"huge length", "0a ff ff ff ff ff ff ff ff 7f 63", 0, RNDZ_E_TRUNCATED},
    {"length 2^32+2 (wraps to 2 in 32 bits)", "0a 82 80 80 80 10 63 31 12 00", 0,
     RNDZ_E_TRUNCATED},
    {"unknown fixed64 cut off", "12 00 79 01 02 03", 0, RNDZ_E_TRUNCATED},
    {"unknown fixed32 cut off", "12 00 7d 01 02 03", 0, RNDZ_E_TRUNCATED},
    {"unknown varint cut off", "12 00 78 80", 0, RNDZ_E_TRUNCATED},
    {"unknown bytes past the end", "12 00 7a 03 00", 0, RNDZ_E_TRUNCATED},
    {"11-byte varint (unknown field)", "0a 02 63 31 12 00 78 ff ff ff ff ff ff ff ff ff ff 01", 0,
     RNDZ_E_VARINT},
    {"11-byte varint of zeros", "12 00 78 80 80 80 80 80 80 80 80 80 80 00", 0, RNDZ_E_VARINT},
    {"10-byte varint over 64 bits", "12 00 78 ff ff ff ff ff ff ff ff ff 02", 0, RNDZ_E_VARINT},
    {"11-byte length varint", "0a ff ff ff ff ff ff ff ff ff ff 01", 0, RNDZ_E_VARINT},
    {"11-byte tag", "80 80 80 80 80 80 80 80 80 80 00", 0, RNDZ_E_VARINT},
    {"id as varint", "08 05 12 00", 0, RNDZ_E_WIRETYPE},
    {"id as fixed32", "0d 00 00 00 00 12 00", 0, RNDZ_E_WIRETYPE},
    {"id as fixed64", "09 00 00 00 00 00 00 00 00 12 00", 0, RNDZ_E_WIRETYPE},
    {"id as group", "0b 0c 12 00", 0, RNDZ_E_WIRETYPE},
    {"ping as varint", "0a 02 63 31 10 00", 0, RNDZ_E_WIRETYPE},
    {"isync as fixed32", "0a 02 63 31 1d 00 00 00 00", 0, RNDZ_E_WIRETYPE},
    {"redirect as varint (response)", "0a 02 63 31 18 01", 1, RNDZ_E_WIRETYPE},
    {"isync id as varint", "0a 02 63 32 1a 02 08 01", 0, RNDZ_E_WIRETYPE},
    {"fsync addr as varint (response)", "22 06 0a 02 63 32 10 05", 1, RNDZ_E_WIRETYPE},
    {"start group (unknown field)", "12 00 7b 7c", 0, RNDZ_E_WIRETYPE},
    {"end group (unknown field)", "12 00 7c", 0, RNDZ_E_WIRETYPE},
    {"wire type 6", "12 00 7e 00", 0, RNDZ_E_WIRETYPE},
    {"wire type 7", "12 00 7f 00", 0, RNDZ_E_WIRETYPE},
    {"group inside isync", "1a 06 0a 02 63 31 1b 1c", 0, RNDZ_E_WIRETYPE},
    {"field number 0, len", "02 00 12 00", 0, RNDZ_E_FIELD},
    {"field number 0, varint", "12 00 00 00", 0, RNDZ_E_FIELD},
    {"field number 0 inside isync", "1a 04 02 00 0a 00", 0, RNDZ_E_FIELD},
    {"field number 2^29 (tag 2^32)", "12 00 80 80 80 80 10 00", 0, RNDZ_E_FIELD},
    {"field number 2^32", "12 00 80 80 80 80 80 01 00", 0, RNDZ_E_FIELD},
    {"invalid UTF-8 in id", "0a 02 c3 28 12 00", 0, RNDZ_E_UTF8},
    {"lone continuation byte in id", "0a 01 80 12 00", 0, RNDZ_E_UTF8},
    {"overlong NUL in peer id", "1a 04 0a 02 c0 80", 0, RNDZ_E_UTF8},
    {"UTF-16 surrogate in id", "0a 03 ed a0 80 12 00", 0, RNDZ_E_UTF8},
    {"above U+10FFFF in id", "0a 04 f4 90 80 80 12 00", 0, RNDZ_E_UTF8},
    {"cut multibyte in id", "0a 01 e2 12 00", 0, RNDZ_E_UTF8},
    {"0xff in addr (response fsync)", "0a 02 63 31 22 08 0a 02 63 32 12 02 31 ff", 1,
     RNDZ_E_UTF8},
    {"invalid UTF-8 in redirect addr", "1a 06 0a 01 61 12 01 fe", 1, RNDZ_E_UTF8},
    {"no command", "0a 02 70 33", 0, RNDZ_E_NOCMD},
    {"only unknown fields", "78 01 7a 00", 0, RNDZ_E_NOCMD},
    {"request-only rsync decoded as a response", "0a 02 63 31 2a 04 0a 02 63 32", 1,
     RNDZ_E_NOCMD},
    {"request-only bye decoded as a response", "0a 02 63 31 32 00", 1, RNDZ_E_NOCMD},
    {"command field 7 is unknown", "0a 02 63 31 3a 00", 0, RNDZ_E_NOCMD},
};

/* Odd but valid input: decodes with rc 0 to these fields. */
typedef struct odd_case {
    const char *what;
    const char *hex;
    int is_response;
    rndz_cmd cmd;
    const char *id, *peer, *addr;
} odd_case;

static const odd_case odd_cases[] = {
    {"cmd before id", "1a 04 0a 02 63 31 0a 02 63 32", 0, RNDZ_REQ_ISYNC, "c2", "c1", ""},
    {"empty id", "12 00", 0, RNDZ_REQ_PING, "", "", ""},
    {"explicit empty id", "0a 00 12 00", 0, RNDZ_REQ_PING, "", "", ""},
    {"id repeated: the last wins", "0a 01 61 12 00 0a 01 62", 0, RNDZ_REQ_PING, "b", "", ""},
    {"two commands: the last wins", "12 00 1a 04 0a 02 63 31", 0, RNDZ_REQ_ISYNC, "", "c1", ""},
    {"two commands, other order: the last wins and its fields only",
     "1a 04 0a 02 63 31 12 00", 0, RNDZ_REQ_PING, "", "", ""},
    {"same command twice: merged", "22 04 0a 02 63 32 22 05 12 03 31 3a 32", 0, RNDZ_REQ_FSYNC,
     "", "c2", "1:2"},
    {"fields inside the command in reverse order",
     "0a 02 63 31 22 0b 12 05 31 2e 32 3a 33 0a 02 63 32", 1, RNDZ_RSP_FSYNC, "c1", "c2", "1.2:3"},
    {"unknown varint field", "0a 02 70 31 12 00 78 01", 0, RNDZ_REQ_PING, "p1", "", ""},
    {"unknown fields of every wire type",
     "78 96 01 79 01 02 03 04 05 06 07 08 7a 03 61 62 63 7d 01 02 03 04 0a 01 78 12 00", 0,
     RNDZ_REQ_PING, "x", "", ""},
    {"largest field number 2^29-1", "12 00 f8 ff ff ff 0f 00", 0, RNDZ_REQ_PING, "", "", ""},
    {"10-byte varint of 2^64-1", "12 00 78 ff ff ff ff ff ff ff ff ff 01", 0, RNDZ_REQ_PING, "", "",
     ""},
    {"non-minimal varint length", "0a 82 00 63 31 12 80 00", 0, RNDZ_REQ_PING, "c1", "", ""},
    {"unknown field inside isync", "1a 08 0a 02 63 31 10 07 7a 00", 0, RNDZ_REQ_ISYNC, "", "c1",
     ""},
    {"isync has no addr: field 2 skipped", "1a 07 0a 02 63 31 12 01 7a", 0, RNDZ_REQ_ISYNC, "",
     "c1", ""},
    {"rsync has no addr: field 2 skipped", "2a 07 12 01 7a 0a 02 63 31", 0, RNDZ_REQ_RSYNC, "",
     "c1", ""},
    {"request fsync carries addr", "0a 01 61 22 0a 0a 01 62 12 05 31 2e 32 3a 33", 0,
     RNDZ_REQ_FSYNC, "a", "b", "1.2:3"},
    {"UTF-8 id", "0a 05 c3 a9 e2 82 ac 12 00", 0, RNDZ_REQ_PING, "\xc3\xa9\xe2\x82\xac", "", ""},
    {"4-byte UTF-8 id", "0a 04 f0 9f 98 80 12 00", 0, RNDZ_REQ_PING, "\xf0\x9f\x98\x80", "", ""},
    {"NUL inside id is valid UTF-8", "0a 03 61 00 62 12 00", 0, RNDZ_REQ_PING, NULL, "", ""},
    {"redirect with empty submessage", "0a 01 61 1a 00", 1, RNDZ_RSP_REDIRECT, "a", "", ""},
    /* Ping{}, Pong{} and Bye{} have no fields: field 1 inside them is an unknown field, which
     * v1 (prost) skips whatever its wire type, and it is not an id. */
    {"ping with an unknown string field 1", "0a 01 61 12 03 0a 01 78", 0, RNDZ_REQ_PING, "a", "",
     ""},
    {"ping with an unknown varint field 1", "0a 01 61 12 02 08 05", 0, RNDZ_REQ_PING, "a", "", ""},
    {"bye with an unknown varint field 1", "0a 01 61 32 02 08 05", 0, RNDZ_REQ_BYE, "a", "", ""},
    {"pong with an unknown varint field 1", "0a 01 61 12 02 08 05", 1, RNDZ_RSP_PONG, "a", "", ""},
    {"isync with a 3-byte target", "1a 05 0a 03 61 62 63", 0,
     RNDZ_REQ_ISYNC, "", "abc", ""},
};

static void test_bad_input(void) {
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        tl_case("bad: %s", c->what);
        uint8_t bytes[256];
        long n = tl_hex(c->hex, bytes, sizeof bytes);
        if (!CHECK(n >= 0)) continue;
        rndz_msg m;
        uint8_t *keep;
        CHECK_RC(decode_exact(bytes, (size_t)n, c->is_response, &m, &keep), c->rc);
        free(keep);
    }
    for (size_t i = 0; i < sizeof odd_cases / sizeof odd_cases[0]; i++) {
        const odd_case *c = &odd_cases[i];
        tl_case("odd: %s", c->what);
        uint8_t bytes[256];
        long n = tl_hex(c->hex, bytes, sizeof bytes);
        if (!CHECK(n >= 0)) continue;
        rndz_msg m;
        uint8_t *keep;
        int rc = decode_exact(bytes, (size_t)n, c->is_response, &m, &keep);
        CHECK_RC(rc, 0);
        if (rc == 0) {
            CHECK_EQ_INT(m.cmd, c->cmd);
            if (c->id) CHECK_EQ_SN(m.id, m.id_len, c->id);
            else CHECK_EQ_MEM(m.id, m.id_len, "a\0b", 3);
            CHECK_EQ_SN(m.peer_id, m.peer_id_len, c->peer);
            CHECK_EQ_SN(m.addr, m.addr_len, c->addr);
        }
        free(keep);
    }
    tl_case("%s", "");
}

/* --- size limits and encoding ------------------------------------------------------------ */

static void test_sizes(void) {
    static uint8_t big[4096], out[4096];
    char *id = malloc(2000);
    memset(id, 'a', 2000);

    /* 1500 bytes: id of 1495 (2-byte length) + Ping = 1 + 2 + 1495 + 2. */
    tl_case("encode 1500-byte message");
    rndz_msg m = {RNDZ_REQ_PING, id, 1495, "", 0, "", 0};
    int n = rndz_msg_encode(&m, big, sizeof big);
    CHECK_RC(n, 1500);
    rndz_msg d;
    uint8_t *keep;
    CHECK_RC(decode_exact(big, 1500, 0, &d, &keep), 0);
    CHECK_EQ_INT(d.id_len, 1495);
    CHECK_EQ_INT(d.cmd, RNDZ_REQ_PING);
    free(keep);
    n = rndz_frame_encode(&m, big, sizeof big);
    CHECK_RC(n, 1502);
    CHECK_EQ_INT(big[0], 0x05);
    CHECK_EQ_INT(big[1], 0xdc);
    CHECK_RC(rndz_frame_encode(&m, big, 1501), RNDZ_E_NOSPACE);
    CHECK_RC(rndz_msg_encode(&m, big, 1499), RNDZ_E_NOSPACE);

    tl_case("encode 1501-byte message");
    m.id_len = 1496;
    CHECK_RC(rndz_msg_encode(&m, big, sizeof big), RNDZ_E_TOOBIG);
    CHECK_RC(rndz_frame_encode(&m, big, sizeof big), RNDZ_E_TOOBIG);
    /* too big wins over too small: the message can never be sent */
    CHECK_RC(rndz_msg_encode(&m, big, 10), RNDZ_E_TOOBIG);

    tl_case("decode oversize");
    /* A valid message of 1501 bytes: id of 1496 + Ping. Oversize whatever the content. */
    size_t o = 0;
    big[o++] = 0x0a;
    big[o++] = (uint8_t)(1496 | 0x80);
    big[o++] = (uint8_t)(1496 >> 7);
    memset(big + o, 'a', 1496);
    o += 1496;
    big[o++] = 0x12;
    big[o++] = 0x00;
    CHECK_EQ_INT(o, 1501);
    CHECK_RC(decode_exact(big, o, 0, &d, &keep), RNDZ_E_TOOBIG);
    free(keep);
    CHECK_RC(decode_exact(big, o, 1, &d, &keep), RNDZ_E_TOOBIG);
    free(keep);
    memset(big, 0, sizeof big);
    CHECK_RC(decode_exact(big, 4096, 0, &d, &keep), RNDZ_E_TOOBIG);
    free(keep);
    /* 1500 bytes of zero tags: field number 0 */
    CHECK_RC(decode_exact(big, 1500, 0, &d, &keep), RNDZ_E_FIELD);
    free(keep);

    tl_case("encode without a command");
    rndz_msg none = {RNDZ_CMD_NONE, "a", 1, "", 0, "", 0};
    CHECK_RC(rndz_msg_encode(&none, out, sizeof out), RNDZ_E_NOCMD);
    none.cmd = (rndz_cmd)99;
    CHECK_RC(rndz_msg_encode(&none, out, sizeof out), RNDZ_E_NOCMD);
    none.cmd = (rndz_cmd)6;
    CHECK_RC(rndz_msg_encode(&none, out, sizeof out), RNDZ_E_NOCMD);
    CHECK_RC(rndz_frame_encode(&none, out, sizeof out), RNDZ_E_NOCMD);

    tl_case("encode drops fields the command lacks");
    uint8_t want[64];
    rndz_msg ping = {RNDZ_REQ_PING, "c1", 2, "junk", 4, "1.2.3.4:5", 9};
    n = rndz_msg_encode(&ping, out, sizeof out);
    long wn = tl_hex("0a 02 63 31 12 00", want, sizeof want);
    CHECK_EQ_MEM(out, n > 0 ? (size_t)n : 0, want, (size_t)wn);
    rndz_msg isync = {RNDZ_REQ_ISYNC, "c2", 2, "c1", 2, "1.2.3.4:5", 9};
    n = rndz_msg_encode(&isync, out, sizeof out);
    wn = tl_hex("0a 02 63 32 1a 04 0a 02 63 31", want, sizeof want);
    CHECK_EQ_MEM(out, n > 0 ? (size_t)n : 0, want, (size_t)wn);
    /* NULL strings with zero length are fine */
    rndz_msg bye = {RNDZ_REQ_BYE, NULL, 0, NULL, 0, NULL, 0};
    n = rndz_msg_encode(&bye, out, sizeof out);
    wn = tl_hex("32 00", want, sizeof want);
    CHECK_EQ_MEM(out, n > 0 ? (size_t)n : 0, want, (size_t)wn);
    /* a 200-byte id needs a 2-byte length varint */
    rndz_msg lng = {RNDZ_RSP_REDIRECT, id, 200, "x", 1, "", 0};
    n = rndz_msg_encode(&lng, out, sizeof out);
    CHECK_RC(n, 1 + 2 + 200 + 1 + 1 + 3);
    CHECK_EQ_INT(out[0], 0x0a);
    CHECK_EQ_INT(out[1], 0xc8);
    CHECK_EQ_INT(out[2], 0x01);
    free(id);
    tl_case("%s", "");
}

/* Encoding into every too-small capacity: RNDZ_E_NOSPACE, and nothing written past cap. */
static void test_nospace(void) {
    const tl_vector *vs;
    size_t nv = tl_vectors(&vs);
    for (size_t i = 0; i < nv; i++) {
        const tl_vector *v = &vs[i];
        const expect *e = find_expect(v->name);
        if (!e || v->is_probe) continue;
        bool tcp = strcmp(v->transport, "tcp") == 0;
        rndz_msg m = {e->cmd, e->id, strlen(e->id), e->peer, strlen(e->peer), e->addr,
                      strlen(e->addr)};
        tl_case("nospace %s", v->name);
        for (size_t cap = 0; cap < v->len; cap++) {
            /* exact-size heap buffer for valgrind, and a canary check right after it */
            uint8_t *exact = malloc(cap ? cap : 1);
            int rc = tcp ? rndz_frame_encode(&m, exact, cap) : rndz_msg_encode(&m, exact, cap);
            CHECK_RC(rc, RNDZ_E_NOSPACE);
            free(exact);
            uint8_t buf[2100];
            memset(buf, 0xa5, sizeof buf);
            rc = tcp ? rndz_frame_encode(&m, buf, cap) : rndz_msg_encode(&m, buf, cap);
            CHECK_RC(rc, RNDZ_E_NOSPACE);
            bool intact = true;
            for (size_t k = cap; k < sizeof buf; k++) intact &= buf[k] == 0xa5;
            CHECK(intact);
        }
        /* and exactly enough works */
        uint8_t *exact = malloc(v->len);
        int rc = tcp ? rndz_frame_encode(&m, exact, v->len) : rndz_msg_encode(&m, exact, v->len);
        CHECK_RC(rc, (int)v->len);
        if (rc > 0) CHECK_EQ_MEM(exact, v->len, v->bytes, v->len);
        free(exact);
    }
    tl_case("%s", "");
}

/* --- framer ------------------------------------------------------------------------------ */

typedef struct frames {
    uint8_t stream[8192];
    size_t len;
    size_t nframes;
    size_t off[32], blen[32]; /* body offset and length of each frame in stream */
} frames;

static void collect_tcp(frames *fr) {
    const tl_vector *vs;
    size_t nv = tl_vectors(&vs);
    memset(fr, 0, sizeof *fr);
    for (size_t i = 0; i < nv; i++) {
        if (strcmp(vs[i].transport, "tcp") != 0 || fr->nframes == 30) continue;
        memcpy(fr->stream + fr->len, vs[i].bytes, vs[i].len);
        fr->off[fr->nframes] = fr->len + 2;
        fr->blen[fr->nframes] = vs[i].len - 2;
        fr->nframes++;
        fr->len += vs[i].len;
    }
    /* a zero-length frame too */
    fr->stream[fr->len] = 0;
    fr->stream[fr->len + 1] = 0;
    fr->off[fr->nframes] = fr->len + 2;
    fr->blen[fr->nframes] = 0;
    fr->nframes++;
    fr->len += 2;
}

/* Feed the stream in chunks given by next_chunk() and check every body comes out in order. */
static void run_framer(const frames *fr, size_t (*next_chunk)(size_t i), const char *how) {
    tl_case("framer %s", how);
    rndz_framer f;
    rndz_framer_init(&f);
    size_t pos = 0, got = 0, calls = 0;
    bool ok = true;
    while (ok && pos < fr->len && calls < 100000) {
        size_t chunk = next_chunk(calls++);
        if (chunk > fr->len - pos) chunk = fr->len - pos;
        uint8_t *piece = malloc(chunk ? chunk : 1); /* exact size: over-reads show in valgrind */
        memcpy(piece, fr->stream + pos, chunk);
        size_t used = 0;
        for (;;) {
            int n = rndz_framer_feed(&f, piece + used, chunk - used);
            if (n < 0 || (size_t)n > chunk - used) {
                ok = CHECK_RC(n, (int)(chunk - used)) && false;
                break;
            }
            used += (size_t)n;
            const uint8_t *body;
            size_t blen;
            int r, taken = 0;
            while (ok && (r = rndz_framer_next(&f, &body, &blen)) == 1) {
                taken++;
                if (!(ok = CHECK(got < fr->nframes))) break;
                ok = CHECK_EQ_MEM(body, blen, fr->stream + fr->off[got], fr->blen[got]);
                got++;
            }
            if (!ok || used == chunk) break;
            if (n == 0 && taken == 0) { /* no progress */
                ok = CHECK_EQ_INT(used, chunk);
                break;
            }
        }
        free(piece);
        pos += used;
    }
    CHECK_EQ_INT(pos, fr->len);
    CHECK_EQ_INT(got, fr->nframes);
    tl_case("%s", "");
}

static size_t chunk_one(size_t i) { return (void)i, 1; }
static size_t chunk_all(size_t i) { return (void)i, 1u << 20; }
static size_t chunk_three(size_t i) { return (void)i, 3; }
static uint32_t rng_state = 0x12345678;
static uint32_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}
static size_t chunk_random(size_t i) { return (void)i, rng() % 40; }

static void test_framer(void) {
    static frames fr;
    collect_tcp(&fr);
    CHECK(fr.nframes >= 9);
    run_framer(&fr, chunk_one, "one byte at a time");
    run_framer(&fr, chunk_all, "everything in one feed");
    run_framer(&fr, chunk_three, "three bytes at a time");
    run_framer(&fr, chunk_random, "random chunks");

    rndz_framer f;
    const uint8_t *body = NULL;
    size_t blen = 99;

    tl_case("framer: one feed stops after the first complete frame");
    rndz_framer_init(&f);
    const tl_vector *ping = tl_vector_get("tcp.ping"), *pong = tl_vector_get("tcp.pong");
    uint8_t two[64];
    memcpy(two, ping->bytes, ping->len);
    memcpy(two + ping->len, pong->bytes, pong->len);
    CHECK_RC(rndz_framer_feed(&f, two, ping->len + pong->len), (int)ping->len);
    /* while a frame waits, nothing more is taken */
    CHECK_RC(rndz_framer_feed(&f, two + ping->len, pong->len), 0);
    CHECK_EQ_INT(rndz_framer_next(&f, &body, &blen), 1);
    CHECK_EQ_MEM(body, blen, ping->bytes + 2, ping->len - 2);
    CHECK_EQ_INT(rndz_framer_next(&f, &body, &blen), 0);
    CHECK_RC(rndz_framer_feed(&f, two + ping->len, pong->len), (int)pong->len);
    CHECK_EQ_INT(rndz_framer_next(&f, &body, &blen), 1);
    CHECK_EQ_MEM(body, blen, pong->bytes + 2, pong->len - 2);

    tl_case("framer: empty framer and partial frames");
    rndz_framer_init(&f);
    CHECK_EQ_INT(rndz_framer_next(&f, &body, &blen), 0);
    CHECK_RC(rndz_framer_feed(&f, ping->bytes, 0), 0);
    CHECK_EQ_INT(rndz_framer_next(&f, &body, &blen), 0);
    CHECK_RC(rndz_framer_feed(&f, ping->bytes, 1), 1);
    CHECK_EQ_INT(rndz_framer_next(&f, &body, &blen), 0);
    CHECK_RC(rndz_framer_feed(&f, ping->bytes + 1, 3), 3);
    CHECK_EQ_INT(rndz_framer_next(&f, &body, &blen), 0);
    CHECK_RC(rndz_framer_feed(&f, ping->bytes + 4, ping->len - 4), (int)ping->len - 4);
    CHECK_EQ_INT(rndz_framer_next(&f, &body, &blen), 1);
    CHECK_EQ_MEM(body, blen, ping->bytes + 2, ping->len - 2);

    tl_case("framer: zero-length body");
    rndz_framer_init(&f);
    uint8_t zero[2] = {0, 0};
    CHECK_RC(rndz_framer_feed(&f, zero, 2), 2);
    blen = 99;
    CHECK_EQ_INT(rndz_framer_next(&f, &body, &blen), 1);
    CHECK_EQ_INT(blen, 0);
    CHECK_EQ_INT(rndz_framer_next(&f, &body, &blen), 0);

    tl_case("framer: 1500-byte body accepted");
    static uint8_t maxf[1502];
    memset(maxf, 0x42, sizeof maxf);
    maxf[0] = 0x05;
    maxf[1] = 0xdc;
    rndz_framer_init(&f);
    CHECK_RC(rndz_framer_feed(&f, maxf, sizeof maxf), 1502);
    CHECK_EQ_INT(rndz_framer_next(&f, &body, &blen), 1);
    CHECK_EQ_INT(blen, 1500);

    tl_case("framer: header announcing 1501 bytes");
    uint8_t over[8] = {0x05, 0xdd, 1, 2, 3};
    rndz_framer_init(&f);
    CHECK_RC(rndz_framer_feed(&f, over, sizeof over), RNDZ_E_FRAME);
    CHECK_EQ_INT(rndz_framer_next(&f, &body, &blen), 0);
    rndz_framer_init(&f);
    CHECK_RC(rndz_framer_feed(&f, over, 1), 1);
    CHECK_RC(rndz_framer_feed(&f, over + 1, 1), RNDZ_E_FRAME);
    uint8_t huge[2] = {0xff, 0xff};
    rndz_framer_init(&f);
    CHECK_RC(rndz_framer_feed(&f, huge, 2), RNDZ_E_FRAME);
    /* a good frame then an oversize header: the first comes out, then the error */
    rndz_framer_init(&f);
    uint8_t mix[16];
    memcpy(mix, pong->bytes, pong->len);
    mix[pong->len] = 0x06;
    mix[pong->len + 1] = 0x00;
    CHECK_RC(rndz_framer_feed(&f, mix, pong->len + 2), (int)pong->len);
    CHECK_EQ_INT(rndz_framer_next(&f, &body, &blen), 1);
    CHECK_RC(rndz_framer_feed(&f, mix + pong->len, 2), RNDZ_E_FRAME);
    tl_case("%s", "");
}

/* --- mutation fuzz ----------------------------------------------------------------------- */

static bool is_rndz_error(int rc) {
    return rc == RNDZ_E_TRUNCATED || rc == RNDZ_E_VARINT || rc == RNDZ_E_WIRETYPE ||
           rc == RNDZ_E_FIELD || rc == RNDZ_E_UTF8 || rc == RNDZ_E_NOCMD || rc == RNDZ_E_TOOBIG;
}

static bool cmd_valid(rndz_cmd c, int is_response) {
    if (is_response) return c == RNDZ_RSP_PONG || c == RNDZ_RSP_REDIRECT || c == RNDZ_RSP_FSYNC;
    return c >= RNDZ_REQ_PING && c <= RNDZ_REQ_BYE;
}

static bool same_fields(const rndz_msg *a, const rndz_msg *b) {
    return a->cmd == b->cmd && a->id_len == b->id_len && !memcmp(a->id, b->id, a->id_len) &&
           a->peer_id_len == b->peer_id_len && !memcmp(a->peer_id, b->peer_id, a->peer_id_len) &&
           a->addr_len == b->addr_len && !memcmp(a->addr, b->addr, a->addr_len);
}

static size_t mutate(uint8_t *b, size_t len, size_t cap) {
    int ops = 1 + (int)(rng() % 4);
    for (int k = 0; k < ops; k++) {
        switch (rng() % 9) {
        case 0: /* bit flip */
        case 1:
            if (len) b[rng() % len] ^= (uint8_t)(1u << (rng() % 8));
            break;
        case 2: /* random byte */
            if (len) b[rng() % len] = (uint8_t)rng();
            break;
        case 3: /* truncate */
            if (len) len = rng() % len;
            break;
        case 4: /* insert a byte */
            if (len < cap) {
                size_t at = rng() % (len + 1);
                memmove(b + at + 1, b + at, len - at);
                b[at] = (uint8_t)(rng() % 3 == 0 ? 0x80 | rng() : rng());
                len++;
            }
            break;
        case 5: /* delete a byte */
            if (len) {
                size_t at = rng() % len;
                memmove(b + at, b + at + 1, len - at - 1);
                len--;
            }
            break;
        case 6: /* length byte +- 1 */
            if (len) {
                size_t at = rng() % len;
                b[at] = (uint8_t)(b[at] + (rng() % 2 ? 1 : -1));
            }
            break;
        case 7: /* duplicate a slice (repeated fields) */
            if (len) {
                size_t at = rng() % len, n = 1 + rng() % (len - at);
                if (len + n <= cap) {
                    memmove(b + at + n, b + at, len - at);
                    len += n;
                }
            }
            break;
        case 8: /* grow toward / past the size limit */
            if (rng() % 8 == 0 && len < cap) {
                size_t add = rng() % (cap - len + 1);
                memset(b + len, (int)(rng() % 2 ? 0x00 : 0x78), add);
                len += add;
            }
            break;
        }
    }
    return len;
}

static void test_fuzz(void) {
    const tl_vector *vs;
    size_t nv = tl_vectors(&vs);
    enum { PER_VECTOR = 4000, CAP = 1600 };
    size_t runs = 0, ok_decodes = 0, bad_rc = 0, bad_ptr = 0, bad_rt = 0, bad_big = 0;
    int shown = 0;
    rng_state = 0x5eed1234;
    static uint8_t work[CAP];
    for (size_t i = 0; i < nv; i++) {
        const uint8_t *seed = vs[i].bytes;
        size_t slen = vs[i].len;
        if (strcmp(vs[i].transport, "tcp") == 0) seed += 2, slen -= 2;
        for (int r = 0; r < PER_VECTOR; r++) {
            memcpy(work, seed, slen);
            size_t len = mutate(work, slen, CAP);
            for (int resp = 0; resp < 2; resp++) {
                runs++;
                rndz_msg m;
                uint8_t *keep;
                int rc = decode_exact(work, len, resp, &m, &keep);
                if (rc != 0 && !is_rndz_error(rc)) {
                    bad_rc++;
                } else if (len > RNDZ_MAX_MSG && rc != RNDZ_E_TOOBIG) {
                    bad_big++;
                } else if (rc == 0) {
                    ok_decodes++;
                    if (!cmd_valid(m.cmd, resp) || !points_into(m.id, m.id_len, keep, len) ||
                        !points_into(m.peer_id, m.peer_id_len, keep, len) ||
                        !points_into(m.addr, m.addr_len, keep, len)) {
                        bad_ptr++;
                    } else {
                        uint8_t out[CAP], out2[CAP];
                        int en = rndz_msg_encode(&m, out, sizeof out);
                        rndz_msg m2;
                        uint8_t *keep2 = NULL;
                        int rc2 = en > 0 ? decode_exact(out, (size_t)en, resp, &m2, &keep2) : en;
                        int en2 = rc2 == 0 ? rndz_msg_encode(&m2, out2, sizeof out2) : -1;
                        bool good = en > 0 && (size_t)en <= len && rc2 == 0 &&
                                    same_fields(&m, &m2) && en2 == en && !memcmp(out, out2, (size_t)en);
                        if (!good) {
                            bad_rt++;
                            if (shown++ < 3) {
                                char h[512], h2[512];
                                tl_note("fuzz round trip differs (%s, as %s): input %s -> cmd %d "
                                        "id %zu peer %zu addr %zu -> encode %d: %s -> decode %d",
                                        vs[i].name, resp ? "response" : "request",
                                        tl_tohex(work, len, h, sizeof h), m.cmd, m.id_len,
                                        m.peer_id_len, m.addr_len, en,
                                        en > 0 ? tl_tohex(out, (size_t)en, h2, sizeof h2) : "-",
                                        rc2);
                            }
                        }
                        free(keep2);
                    }
                }
                free(keep);
            }
        }
    }
    tl_note("fuzz: %zu decodes, %zu accepted", runs, ok_decodes);
    tl_case("fuzz");
    CHECK_EQ_INT(bad_rc, 0);
    CHECK_EQ_INT(bad_big, 0);
    CHECK_EQ_INT(bad_ptr, 0);
    CHECK_EQ_INT(bad_rt, 0);
    CHECK(ok_decodes > 1000); /* the mutations do reach valid messages */
    tl_case("%s", "");
}

int main(void) {
    tl_init("test_wire", 20);
    test_vectors();
    test_bad_input();
    test_sizes();
    test_nospace();
    test_framer();
    test_fuzz();
    return tl_finish();
}
