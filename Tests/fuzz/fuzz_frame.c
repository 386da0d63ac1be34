/* fuzz_frame.c: TCP frame reassembly (rndz_framer_feed / rndz_framer_next), checked against a
 * trivially correct reference parser, with every body decoded as a Request and a Response.
 *
 * Input layout: byte 0's low 4 bits = k, the number of cut points; the next k bytes are chunk
 * lengths; the rest is the byte stream, fed to the framer in chunks of those lengths (the last
 * chunk is whatever is left), each chunk in its own heap buffer of exactly its size so ASan
 * sees any read past it. Properties:
 *   - the framer yields exactly the bodies the reference finds, in order, whatever the cuts;
 *   - it fails with RNDZ_E_FRAME exactly when the reference meets a length over RNDZ_MAX_MSG;
 *   - it always makes progress, and at the end holds exactly the unfinished frame's bytes;
 *   - decoding any body never fails otherwise than with a documented error.
 */
#include <rndz.h>

#include "fuzz.h"

#include <string.h>

/* The reference: the frame starting at `pos` of the stream. Returns 1 and the body if complete,
 * 0 if the stream ends inside it, -1 if its header is oversize. */
static int ref_frame(const uint8_t *s, size_t n, size_t pos, size_t *body, size_t *blen) {
    if (n - pos < 2) return 0;
    size_t L = (size_t)s[pos] << 8 | s[pos + 1];
    if (L > RNDZ_MAX_MSG) return -1;
    if (n - pos - 2 < L) return 0;
    *body = pos + 2;
    *blen = L;
    return 1;
}

static void decode_body(const uint8_t *body, size_t len) {
    rndz_msg m;
    for (int kind = 0; kind < 2; kind++) {
        int rc = rndz_msg_decode(body, len, kind, &m);
        FUZZ_CHECK(rc == 0 || (rc <= RNDZ_E_TRUNCATED && rc >= RNDZ_E_TOOBIG),
                   "decode returned %d (%s)", rc, rndz_err_name(rc));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    size_t k = data[0] & 15;
    if (size < 1 + k) return 0;
    const uint8_t *cuts = data + 1;
    const uint8_t *stream = data + 1 + k;
    size_t n = size - 1 - k;

    rndz_framer f;
    rndz_framer_init(&f);
    size_t ref_pos = 0; /* where the reference's next frame starts */
    size_t off = 0;     /* how much of the stream has been handed to the framer */
    for (size_t c = 0; c <= k && off <= n; c++) {
        size_t clen = c < k ? cuts[c] : n - off;
        if (clen > n - off) clen = n - off;
        uint8_t *chunk = malloc(clen ? clen : 1);
        FUZZ_CHECK(chunk != NULL, "malloc");
        if (clen) memcpy(chunk, stream + off, clen);
        size_t used = 0;
        for (;;) {
            int rc = rndz_framer_feed(&f, chunk + used, clen - used);
            if (rc == RNDZ_E_FRAME) {
                size_t b, bl;
                FUZZ_CHECK(ref_frame(stream, n, ref_pos, &b, &bl) == -1,
                           "RNDZ_E_FRAME at stream offset %zu, but the header there is fine",
                           ref_pos);
                free(chunk);
                return 0; /* the stream cannot be resynchronised: a server closes it */
            }
            FUZZ_CHECK(rc >= 0 && (size_t)rc <= clen - used, "feed returned %d of %zu", rc,
                       clen - used);
            used += (size_t)rc;
            const uint8_t *body;
            size_t blen;
            int got = rndz_framer_next(&f, &body, &blen);
            FUZZ_CHECK(got == 0 || got == 1, "next returned %d", got);
            if (got) {
                size_t rb, rbl;
                FUZZ_CHECK(ref_frame(stream, n, ref_pos, &rb, &rbl) == 1,
                           "framer produced a frame at stream offset %zu the reference lacks",
                           ref_pos);
                FUZZ_CHECK(blen == rbl && memcmp(body, stream + rb, blen) == 0,
                           "frame at %zu: body differs (%zu vs %zu bytes)", ref_pos, blen, rbl);
                FUZZ_CHECK(body >= f.buf && body + blen <= f.buf + sizeof f.buf,
                           "body outside the framer");
                decode_body(body, blen);
                ref_pos = rb + rbl;
                continue;
            }
            if (used == clen) break;
            FUZZ_CHECK(rc > 0, "no progress: feed consumed nothing and no frame is ready");
        }
        free(chunk);
        off += clen;
    }
    /* Everything fed: the framer holds exactly the bytes of the unfinished frame. */
    size_t rb, rbl;
    int last = ref_frame(stream, n, ref_pos, &rb, &rbl);
    FUZZ_CHECK(last != 1, "the reference has a frame at %zu the framer never produced", ref_pos);
    FUZZ_CHECK(last != -1, "oversize header at %zu never refused", ref_pos);
    if (last == 0) FUZZ_CHECK(f.have == n - ref_pos, "framer holds %zu bytes, want %zu", f.have,
                              n - ref_pos);
    return 0;
}
