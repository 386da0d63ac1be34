/* fuzz_wire.c: the v1 codec (rndz_msg_decode / rndz_msg_encode / rndz_frame_encode).
 *
 * Each input is decoded as a Request and as a Response. Properties:
 *   - decode returns 0 or one of its documented errors, and never reads outside the input
 *     (ASan: libFuzzer hands over a buffer of exactly `size` bytes);
 *   - a decoded message has a command of the right kind, and its strings point into the input;
 *   - it re-encodes (the canonical encoding is never longer than the input, so never TOOBIG
 *     here), the encoding decodes to the same fields, and encoding that again gives the same
 *     bytes;
 *   - encode into a buffer one byte short says NOSPACE and writes nothing outside it;
 *   - rndz_frame_encode writes the same body behind a big-endian length.
 */
#include <rndz.h>

#include "fuzz.h"

#include <string.h>

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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_kind(data, size, 0);
    check_kind(data, size, 1);
    return 0;
}
