/* fuzz_wire.c: the v1 codec (rndz_msg_decode / rndz_msg_encode / rndz_frame_encode) and the
 * fields v1 skips: the extensions (ext.h: 17 candidates, 18 session nonce), the Auth field
 * (auth.h: 16), and peer probes. Built with the static library (internal functions).
 *
 * Each input is decoded as a Request and as a Response. Properties:
 *   - decode returns 0 or one of its documented errors, and never reads outside the input
 *     (ASan: libFuzzer hands over a buffer of exactly `size` bytes);
 *   - a decoded message has a command of the right kind, and its strings point into the input;
 *   - it re-encodes (the canonical encoding is never longer than the input, so never TOOBIG
 *     here), the encoding decodes to the same fields, and encoding that again gives the same
 *     bytes;
 *   - encode into a buffer one byte short says NOSPACE and writes nothing outside it;
 *   - rndz_frame_encode writes the same body behind a big-endian length;
 *   - extensions: rndz__ext_decode of a decoded message succeeds or fails cleanly, keeps at
 *     most RNDZ_MAX_CANDS NUL-terminated candidates; the canonical message with those
 *     extensions appended decodes to the same fields and the same extensions;
 *   - Auth: rndz__auth_find reports a field lying inside the input with a nonce of 8..32 bytes
 *     and a 32-byte mac; a decoded request without one, signed with rndz_msg_sign (ts and
 *     nonce from the input), still decodes to the same fields, verifies under the secret's
 *     key, and no single-byte change of the signed message (position and value from the input)
 *     verifies while meaning anything else;
 *   - probes: a 24-byte probe re-encodes to the same bytes;
 *   - port mapping (pmp.h): the input as a gateway's reply in every state that waits for one
 *     moves the client only to a state it knows; a mapping it takes has a lifetime and a
 *     port, and the request it then makes (a renewal, the delete) stays within 60 bytes.
 */
#include <rndz.h>

#include "auth.h"
#include "ext.h"
#include "pmp.h"
#include "probe.h"
#include "fuzz.h"

#include <string.h>

static const uint8_t SECRET[] = "fuzz_wire secret: not a real one"; /* sizeof - 1 used */

static int decode_rc_ok(int rc) {
    return rc == 0 || rc == RNDZ_E_TRUNCATED || rc == RNDZ_E_VARINT || rc == RNDZ_E_WIRETYPE ||
           rc == RNDZ_E_FIELD || rc == RNDZ_E_UTF8 || rc == RNDZ_E_NOCMD || rc == RNDZ_E_TOOBIG;
}

static int is_request_cmd(rndz_cmd c) { return c >= RNDZ_REQ_PING && c <= RNDZ_REQ_BYE; }
static int is_response_cmd(rndz_cmd c) { return c >= RNDZ_RSP_PONG && c <= RNDZ_RSP_FSYNC; }

/* A decoded string is either empty or lies inside [buf, buf+len). */
static int inside(const char *s, size_t n, const uint8_t *buf, size_t len) {
    if (n == 0) return s != NULL;
    const uint8_t *p = (const uint8_t *)s;
    return p >= buf && p <= buf + len && n <= (size_t)(buf + len - p);
}

static int same(const char *a, size_t an, const char *b, size_t bn) {
    return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

static int same_msg(const rndz_msg *a, const rndz_msg *b) {
    return a->cmd == b->cmd && same(a->id, a->id_len, b->id, b->id_len) &&
           same(a->peer_id, a->peer_id_len, b->peer_id, b->peer_id_len) &&
           same(a->addr, a->addr_len, b->addr, b->addr_len);
}

static void check_kind(const uint8_t *data, size_t size, int is_response) {
    rndz_msg m;
    int rc = rndz_msg_decode(data, size, is_response, &m);
    FUZZ_CHECK(decode_rc_ok(rc), "decode returned %d (%s)", rc, rndz_err_name(rc));
    if (size > RNDZ_MAX_MSG) FUZZ_CHECK(rc == RNDZ_E_TOOBIG, "decode of %zu bytes: %d", size, rc);
    if (rc) return;
    FUZZ_CHECK(is_response ? is_response_cmd(m.cmd) : is_request_cmd(m.cmd), "cmd %d", m.cmd);
    FUZZ_CHECK(inside(m.id, m.id_len, data, size), "id outside the input");
    FUZZ_CHECK(inside(m.peer_id, m.peer_id_len, data, size), "peer_id outside the input");
    FUZZ_CHECK(inside(m.addr, m.addr_len, data, size), "addr outside the input");

    uint8_t out[RNDZ_MAX_MSG];
    int n = rndz_msg_encode(&m, out, sizeof out);
    FUZZ_CHECK(n > 0 || n == RNDZ_E_TOOBIG, "encode returned %d (%s)", n, rndz_err_name(n));
    if (n < 0) return;
    FUZZ_CHECK((size_t)n <= size, "canonical encoding (%d bytes) longer than the input (%zu)", n,
               size);

    rndz_msg back;
    rc = rndz_msg_decode(out, (size_t)n, is_response, &back);
    FUZZ_CHECK(rc == 0, "re-decode returned %d (%s)", rc, rndz_err_name(rc));
    FUZZ_CHECK(same_msg(&m, &back), "re-decoded message differs");

    uint8_t again[RNDZ_MAX_MSG];
    int n2 = rndz_msg_encode(&back, again, sizeof again);
    FUZZ_CHECK(n2 == n && memcmp(out, again, (size_t)n) == 0, "encoding not stable (%d, %d)", n,
               n2);

    /* One byte short: refused, and nothing written past the end (ASan on the heap copy). */
    uint8_t *tight = malloc((size_t)n - 1 + 1); /* +1: malloc(0) may return NULL */
    FUZZ_CHECK(tight != NULL, "malloc");
    rc = rndz_msg_encode(&m, tight, (size_t)n - 1);
    FUZZ_CHECK(rc == RNDZ_E_NOSPACE, "encode into %d bytes returned %d", n - 1, rc);
    free(tight);

    uint8_t frame[2 + RNDZ_MAX_MSG];
    rc = rndz_frame_encode(&m, frame, (size_t)n + 2);
    FUZZ_CHECK(rc == n + 2, "frame_encode returned %d, want %d", rc, n + 2);
    FUZZ_CHECK(((size_t)frame[0] << 8 | frame[1]) == (size_t)n, "frame header");
    FUZZ_CHECK(memcmp(frame + 2, out, (size_t)n) == 0, "frame body differs from encode");
    rc = rndz_frame_encode(&m, frame, (size_t)n + 1);
    FUZZ_CHECK(rc == RNDZ_E_NOSPACE, "frame_encode into %d bytes returned %d", n + 1, rc);
}

/* The candidates as ext_append writes them: each up to its first NUL; empty ones vanish. */
static int same_ext(const rndz__ext *sent, const rndz__ext *got) {
    size_t k = 0;
    for (size_t i = 0; i < sent->ncands; i++) {
        if (!sent->cands[i][0]) continue;
        if (k >= got->ncands || strcmp(sent->cands[i], got->cands[k]) != 0) return 0;
        k++;
    }
    return k == got->ncands && sent->has_nonce == got->has_nonce &&
           (!sent->has_nonce || sent->nonce == got->nonce) && sent->rtt_ms == got->rtt_ms;
}

static void check_ext(const uint8_t *data, size_t size, int is_response, const rndz_msg *m) {
    rndz__ext e;
    int rc = rndz__ext_decode(data, size, &e);
    FUZZ_CHECK(rc == 0 || rc == RNDZ_E_TRUNCATED || rc == RNDZ_E_WIRETYPE, "ext_decode %d", rc);
    if (rc) return;
    FUZZ_CHECK(e.ncands <= RNDZ_MAX_CANDS, "%zu candidates", e.ncands);
    for (size_t i = 0; i < e.ncands; i++)
        FUZZ_CHECK(memchr(e.cands[i], 0, RNDZ_ADDRSTRLEN) != NULL, "candidate %zu unterminated", i);
    uint8_t out[RNDZ_MAX_MSG];
    int n = rndz_msg_encode(m, out, sizeof out);
    if (n < 0) return;
    int n2 = rndz__ext_append(&e, out, (size_t)n, sizeof out);
    FUZZ_CHECK(n2 >= n || n2 == RNDZ_E_TOOBIG, "ext_append returned %d", n2);
    if (n2 < 0) return;
    rndz_msg back;
    rc = rndz_msg_decode(out, (size_t)n2, is_response, &back);
    FUZZ_CHECK(rc == 0 && same_msg(m, &back), "extensions change the v1 fields (%d)", rc);
    rndz__ext e2;
    FUZZ_CHECK(rndz__ext_decode(out, (size_t)n2, &e2) == 0 && same_ext(&e, &e2),
               "extensions do not survive append + decode");
}

static void check_auth_field(const uint8_t *data, size_t size) {
    rndz__auth_field f;
    int rc = rndz__auth_find(data, size, &f);
    FUZZ_CHECK(rc == 0 || rc == 1 || rc == RNDZ__AUTH_MALFORMED, "auth_find %d", rc);
    if (rc != 1) return;
    FUZZ_CHECK(f.start < f.end && f.end <= size, "field [%zu, %zu) of %zu", f.start, f.end, size);
    FUZZ_CHECK(f.nonce_len >= RNDZ_AUTH_NONCE_MIN && f.nonce_len <= RNDZ_AUTH_NONCE_MAX,
               "nonce of %zu bytes", f.nonce_len);
    FUZZ_CHECK(f.nonce >= data + f.start && f.nonce + f.nonce_len <= data + f.end, "nonce");
    FUZZ_CHECK(f.mac >= data + f.start && f.mac + RNDZ_SHA256_LEN <= data + f.end, "mac");
}

/* A decoded request without an Auth field: sign it, verify it, tamper with it. */
static void check_signing(const uint8_t *data, size_t size, const rndz_msg *m) {
    rndz__auth_field f;
    if (rndz__auth_find(data, size, &f) != 0 || size < 1) return;
    /* ts and nonce from the input's last bytes; the tampering from its first two */
    uint64_t ts = 1;
    for (size_t i = 0; i < 8 && i < size; i++) ts = ts << 8 ^ data[size - 1 - i];
    ts = ts % (1ull << 50) + 1; /* a plausible unix ms, never 0 ("now") */
    uint8_t nonce[RNDZ_AUTH_NONCE_MAX] = {0};
    size_t nonce_len = RNDZ_AUTH_NONCE_MIN + data[size - 1] % 25;
    memcpy(nonce, data, size < nonce_len ? size : nonce_len);

    uint8_t cred[RNDZ_CREDENTIAL_LEN];
    FUZZ_CHECK(rndz_credential_derive(SECRET, sizeof SECRET - 1, m->id, m->id_len, cred) == 0,
               "credential_derive");
    uint8_t buf[RNDZ_MAX_MSG];
    memcpy(buf, data, size);
    int n = rndz_msg_sign(cred, ts, nonce, nonce_len, buf, size, sizeof buf);
    FUZZ_CHECK(n > (int)size || n == RNDZ_E_TOOBIG, "msg_sign returned %d", n);
    if (n < 0) return;
    rndz_msg back;
    FUZZ_CHECK(rndz_msg_decode(buf, (size_t)n, 0, &back) == 0 && same_msg(m, &back),
               "signing changes the v1 fields");
    rndz__auth_key key;
    rndz__auth_key_init(&key, SECRET, sizeof SECRET - 1, 1000, 0);
    uint64_t got_ts = 0;
    int rc = rndz__auth_verify(&key, buf, (size_t)n, back.id, back.id_len, ts, &got_ts);
    FUZZ_CHECK(rc == RNDZ__AUTH_OK && got_ts == ts, "a signed message does not verify: %d", rc);
    rc = rndz__auth_verify(&key, buf, (size_t)n, back.id, back.id_len, ts + 1001, &got_ts);
    FUZZ_CHECK(rc == RNDZ__AUTH_STALE, "outside the window: %d", rc);

    /* One byte changed: it must not verify, unless it still means exactly the same. */
    size_t pos = ((size_t)data[0] << 8 | (size > 1 ? data[1] : 0)) % (size_t)n;
    uint8_t was = buf[pos];
    buf[pos] ^= (uint8_t)(size > 2 && data[2] ? data[2] : 0x01);
    rndz_msg t;
    if (rndz_msg_decode(buf, (size_t)n, 0, &t) == 0 &&
        rndz__auth_verify(&key, buf, (size_t)n, t.id, t.id_len, ts, &got_ts) == RNDZ__AUTH_OK) {
        rndz__ext e1, e2;
        int r1 = rndz__ext_decode(data, size, &e1), r2 = rndz__ext_decode(buf, (size_t)n, &e2);
        FUZZ_CHECK(same_msg(m, &t) && got_ts == ts && r1 == r2 && (r1 || same_ext(&e1, &e2)),
                   "byte %zu changed 0x%02x -> 0x%02x and the message still verifies", pos,
                   was, buf[pos]);
    }
}

static void check_probe(const uint8_t *data, size_t size) {
    int type;
    uint32_t seq;
    uint64_t nonce;
    if (!rndz__probe_decode(data, size, &type, &seq, &nonce)) return;
    uint8_t again[RNDZ_PROBE_LEN];
    rndz__probe_encode(again, type, seq, nonce);
    FUZZ_CHECK(size == RNDZ_PROBE_LEN && memcmp(again, data, size) == 0, "probe re-encodes differently");
}

static void check_pmp(const uint8_t *data, size_t size) {
    static const uint8_t ours[4] = {10, 0, 0, 2}, nonce[12] = {7};
    for (int st = RNDZ_PMP_PCP; st <= RNDZ_PMP_NATPMP_MAP; st++) {
        rndz__pmp m;
        rndz__pmp_init(&m, ours, 45001, nonce);
        m.state = st;
        rndz__pmp_input(&m, data, size, 1000);
        FUZZ_CHECK(m.state >= RNDZ_PMP_IDLE && m.state <= RNDZ_PMP_NONE, "state %d", m.state);
        if (m.state == RNDZ_PMP_MAPPED)
            FUZZ_CHECK(m.lifetime && m.ext_port && m.renew_at > 1000, "a mapping without life");
        uint8_t out[60];
        uint64_t wake;
        size_t n = rndz__pmp_next(&m, m.renew_at, out, &wake);
        FUZZ_CHECK(n <= 60, "request of %zu bytes", n);
        FUZZ_CHECK(rndz__pmp_delete(&m, out) <= 60, "delete");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_pmp(data, size);
    rndz_msg m;
    for (int kind = 0; kind < 2; kind++) {
        check_kind(data, size, kind);
        if (rndz_msg_decode(data, size, kind, &m) == 0) {
            check_ext(data, size, kind, &m);
            if (kind == 0) check_signing(data, size, &m);
        }
    }
    check_auth_field(data, size);
    check_probe(data, size);
    return 0;
}
