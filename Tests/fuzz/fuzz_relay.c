/* fuzz_relay.c: the relay's logic (relay.c) against a shadow model, on a simulated clock.
 *
 * The input is a script of datagrams, each from one of 8 addresses: raw bytes, a join made
 * with a real token (nonce and role from the input; sometimes expired, sometimes with a byte
 * flipped), or time passing (which may expire sessions). Properties:
 *   - decode of any bytes is 0 or a well-formed message that re-encodes to the same bytes;
 *   - a join answers only with a token that verifies, and a state message of its nonce;
 *   - a forward happens only from an address that joined a session, only to the address that
 *     joined the other role of that same session (the shadow remembers both), never to the
 *     source, and never after that session expired; a role, once joined, is never answered
 *     from another address; expiry leaves no session idle past idle_ms;
 *   - the table never holds more than max_sessions, and active + free = max_sessions. */
#include <rndz.h>

#include "relay.h"
#include "server_proto.h"
#include "fuzz.h"

#include <arpa/inet.h>
#include <string.h>

#define NADDR 8
#define MAXS 4

typedef struct shadow {
    bool used;
    uint64_t nonce;
    int side[2]; /* address index per role, -1: none */
    uint64_t last;
} shadow;

static struct sockaddr_storage addr_of(int i) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *s = (struct sockaddr_in *)&ss;
    s->sin_family = AF_INET;
    s->sin_port = htons((uint16_t)(4000 + i));
    s->sin_addr.s_addr = htonl(0xc0000200u + (uint32_t)(i % 3)); /* 192.0.2.0..2: shared IPs */
    return ss;
}

static int index_of(const struct sockaddr_storage *a) {
    for (int i = 0; i < NADDR; i++) {
        struct sockaddr_storage b = addr_of(i);
        if (rndz__addr_equal((const struct sockaddr *)a, (const struct sockaddr *)&b)) return i;
    }
    return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static rndz__relay_key key;
    static bool keyed;
    if (!keyed) {
        rndz__relay_key_init(&key);
        keyed = true;
    }
    rndz__relay r;
    rndz__relay_limits lim = {.max_sessions = MAXS, .rate = 20000, .total_rate = 50000,
                              .idle_ms = 1000};
    uint64_t now = 1000;
    FUZZ_CHECK(rndz__relay_init(&r, &key, &lim, now) == 0, "init");
    shadow sh[16];
    memset(sh, 0, sizeof sh);
    size_t off = 0;
    while (off + 3 <= size) {
        int src = data[off] % NADDR, kind = data[off + 1] % 6;
        size_t len = data[off + 2];
        off += 3;
        if (len > size - off) len = size - off;
        const uint8_t *payload = data + off;
        off += len;
        uint8_t buf[256];
        size_t n = len;
        memcpy(buf, payload, len);
        if (kind == 5) { /* time passes */
            now += (uint64_t)(len ? payload[0] : 1) * 10;
            rndz__relay_expire(&r, now, MAXS, NULL, NULL);
            /* every idle session went; the shadow follows the table (which of two sessions
             * with the same pair of addresses a datagram refreshed is the relay's choice) */
            for (uint32_t i = 0; i < MAXS; i++)
                FUZZ_CHECK(!r.sess[i].used || now < r.sess[i].last + lim.idle_ms,
                           "session %u idle past idle_ms", i);
            for (int k = 0; k < 16; k++) {
                bool live = false;
                for (uint32_t i = 0; i < MAXS; i++)
                    live |= r.sess[i].used && r.sess[i].nonce == sh[k].nonce;
                if (sh[k].used && !live) sh[k].used = false;
            }
            continue;
        }
        if (kind >= 2) { /* a join: nonce 0..3 from the input, its role, a real token */
            uint64_t nonce = len ? payload[0] % 4 : 0;
            int role = len > 1 && (payload[1] & 1) ? RNDZ_RELAY_ROLE_LISTENER
                                                    : RNDZ_RELAY_ROLE_CONNECTOR;
            if (kind == 3 && now <= RNDZ_RELAY_TOKEN_TTL_MS + 1) continue; /* none expired yet */
            uint64_t minted = kind == 3 ? now - RNDZ_RELAY_TOKEN_TTL_MS - 1 : now;
            uint8_t tok[RNDZ_RELAY_TOKEN_LEN];
            rndz__relay_token(&key, nonce, role, minted, tok);
            n = rndz__relay_encode(buf, RNDZ_RELAY_JOIN, role, 0, tok);
            if (kind == 4 && len > 2) buf[12 + payload[2] % RNDZ_RELAY_TOKEN_LEN] ^= 1 | payload[2];
        }
        /* decode: 0, or a message that re-encodes to the same bytes */
        int arg;
        uint64_t dn;
        const uint8_t *tok;
        int type = rndz__relay_decode(buf, n, &arg, &dn, &tok);
        if (type) {
            uint8_t again[RNDZ_RELAY_JOIN_LEN];
            size_t m = rndz__relay_encode(again, type, arg, dn, tok);
            FUZZ_CHECK(m == n && memcmp(again, buf, n) == 0, "re-encode of type %d", type);
        }
        struct sockaddr_storage from = addr_of(src);
        rndz__relay_out o;
        rndz__relay_input(&r, &from, NULL, NULL, buf, n, now, &o);
        FUZZ_CHECK(r.active <= MAXS && r.active + r.nfree == MAXS, "table %u + %u", r.active,
                   r.nfree);
        if (type == RNDZ_RELAY_JOIN && o.ctl_len) {
            /* accepted: the shadow learns the side (first join of a role wins) */
            int a2;
            uint64_t n2;
            const uint8_t *t2;
            FUZZ_CHECK(rndz__relay_decode(o.ctl, o.ctl_len, &a2, &n2, &t2) == RNDZ_RELAY_STATE &&
                       n2 == dn, "state answer");
            FUZZ_CHECK(kind == 2 || kind == 4, "a join with an expired token was taken");
            shadow *s = NULL;
            for (int k = 0; k < 16 && !s; k++)
                if (sh[k].used && sh[k].nonce == dn) s = &sh[k];
            for (int k = 0; k < 16 && !s; k++)
                if (!sh[k].used) {
                    s = &sh[k];
                    *s = (shadow){.used = true, .nonce = dn, .side = {-1, -1}};
                }
            FUZZ_CHECK(s != NULL, "shadow full");
            if (s->side[arg - 1] < 0) s->side[arg - 1] = src;
            FUZZ_CHECK(s->side[arg - 1] == src, "join of a taken role from elsewhere answered");
            s->last = now;
        }
        if (o.forward) {
            int to = index_of(&o.to);
            FUZZ_CHECK(to >= 0 && to != src, "forward to %d from %d", to, src);
            bool paired = false;
            for (int k = 0; k < 16; k++)
                if (sh[k].used && ((sh[k].side[0] == src && sh[k].side[1] == to) ||
                                   (sh[k].side[1] == src && sh[k].side[0] == to))) {
                    paired = true;
                    sh[k].last = now;
                }
            FUZZ_CHECK(paired, "forward from %d to %d, not a joined pair", src, to);
        }
    }
    rndz__relay_free(&r);
    return 0;
}
