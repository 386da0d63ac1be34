/* test_relay.c: the relay's logic (Sources/CRndz/relay.c) on simulated time.
 *
 * Tokens: a good one joins; forged, expired, the wrong role's, or another session's do not.
 * Sessions: the first join waits, the second makes both ready; data goes only between the two
 * joined addresses, unchanged in destination; a third address, and a second join of a taken
 * role from elsewhere, reach nobody. Limits: the session table, the per-session and the total
 * byte rates (with refill over time), idle expiry; each drop names its statistic. */
#include "relay.h"
#include "server_proto.h"

#include <arpa/inet.h>
#include <string.h>
#include "unit.h"

static struct sockaddr_storage v4(const char *ip, uint16_t port) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *s = (struct sockaddr_in *)&ss;
    s->sin_family = AF_INET;
    s->sin_port = htons(port);
    inet_pton(AF_INET, ip, &s->sin_addr);
    return ss;
}

static rndz__relay_key key;

static void join_msg(uint8_t out[RNDZ_RELAY_JOIN_LEN], uint64_t nonce, int role, uint64_t now) {
    uint8_t tok[RNDZ_RELAY_TOKEN_LEN];
    rndz__relay_token(&key, nonce, role, now, tok);
    rndz__relay_encode(out, RNDZ_RELAY_JOIN, role, 0, tok);
}

static int state_of(const rndz__relay_out *o) {
    int arg;
    uint64_t nonce;
    const uint8_t *tok;
    if (!o->ctl_len) return -1;
    if (rndz__relay_decode(o->ctl, o->ctl_len, &arg, &nonce, &tok) != RNDZ_RELAY_STATE) return -2;
    return arg;
}

static rndz__relay_limits lim(uint32_t max, uint32_t rate, uint32_t total) {
    return (rndz__relay_limits){.max_sessions = max, .rate = rate, .total_rate = total,
                                .idle_ms = 60000};
}

static void test_codec(void) {
    uint8_t b[RNDZ_RELAY_JOIN_LEN];
    int arg;
    uint64_t nonce;
    const uint8_t *tok;
    join_msg(b, 0x1122334455667788ull, RNDZ_RELAY_ROLE_LISTENER, 0);
    CHECK_EQ_INT(rndz__relay_decode(b, sizeof b, &arg, &nonce, &tok), RNDZ_RELAY_JOIN);
    CHECK_EQ_INT(arg, RNDZ_RELAY_ROLE_LISTENER);
    CHECK(nonce == 0x1122334455667788ull);
    b[9] = 3; /* no such role */
    CHECK_EQ_INT(rndz__relay_decode(b, sizeof b, &arg, &nonce, &tok), 0);
    uint8_t c[RNDZ_RELAY_CTL_LEN];
    CHECK_EQ_INT((int)rndz__relay_encode(c, RNDZ_RELAY_USE, 0, 42, NULL), RNDZ_RELAY_CTL_LEN);
    CHECK_EQ_INT(rndz__relay_decode(c, sizeof c, &arg, &nonce, &tok), RNDZ_RELAY_USE);
    CHECK(nonce == 42);
    CHECK_EQ_INT(rndz__relay_decode(c, sizeof c - 1, &arg, &nonce, &tok), 0);
    c[0] ^= 1; /* not our magic: application data */
    CHECK_EQ_INT(rndz__relay_decode(c, sizeof c, &arg, &nonce, &tok), 0);
    /* every byte length up to a join, random content: never a crash, rarely a message */
    uint8_t junk[64];
    for (size_t len = 0; len <= sizeof junk; len++) {
        for (size_t i = 0; i < len; i++) junk[i] = (uint8_t)(rndz__random());
        (void)rndz__relay_decode(junk, len, &arg, &nonce, &tok);
    }
}

static void test_pair(void) {
    rndz__relay r;
    rndz__relay_limits l = lim(4, UINT32_MAX, UINT32_MAX);
    CHECK_RC(rndz__relay_init(&r, &key, &l, 0), 0);
    struct sockaddr_storage a = v4("192.0.2.1", 4000), b = v4("198.51.100.7", 5000),
                            x = v4("203.0.113.9", 6000);
    uint8_t ja[RNDZ_RELAY_JOIN_LEN], jb[RNDZ_RELAY_JOIN_LEN];
    join_msg(ja, 7, RNDZ_RELAY_ROLE_CONNECTOR, 0);
    join_msg(jb, 7, RNDZ_RELAY_ROLE_LISTENER, 0);
    rndz__relay_out o;
    uint8_t data[] = "hello";

    /* data before anyone joined: foreign */
    rndz__relay_input(&r, &a, NULL, NULL, data, 5, 10, &o);
    CHECK(!o.forward);
    CHECK_EQ_INT(o.stat, RNDZ__ST_relay_foreign);

    rndz__relay_input(&r, &a, NULL, NULL, ja, sizeof ja, 10, &o);
    CHECK_EQ_INT(o.stat, -1);
    CHECK_EQ_INT(state_of(&o), RNDZ_RELAY_WAITING);
    CHECK(!o.notify);
    CHECK_EQ_INT((int)r.active, 1);
    /* the joined side alone: nothing to forward to */
    rndz__relay_input(&r, &a, NULL, NULL, data, 5, 11, &o);
    CHECK(!o.forward);
    CHECK_EQ_INT(o.stat, RNDZ__ST_relay_foreign);
    /* the join again (a retry): still waiting, no second session */
    rndz__relay_input(&r, &a, NULL, NULL, ja, sizeof ja, 12, &o);
    CHECK_EQ_INT(state_of(&o), RNDZ_RELAY_WAITING);
    CHECK_EQ_INT((int)r.active, 1);
    /* the connector's token used for the listener's role: refused */
    uint8_t swapped[RNDZ_RELAY_JOIN_LEN];
    memcpy(swapped, ja, sizeof swapped);
    swapped[9] = RNDZ_RELAY_ROLE_LISTENER;
    rndz__relay_input(&r, &x, NULL, NULL, swapped, sizeof swapped, 13, &o);
    CHECK_EQ_INT(o.stat, RNDZ__ST_relay_refused);
    CHECK_EQ_INT((int)o.ctl_len, 0);

    /* the other role from the same address: it would only hear itself */
    rndz__relay_input(&r, &a, NULL, NULL, jb, sizeof jb, 15, &o);
    CHECK_EQ_INT(o.stat, RNDZ__ST_relay_refused);
    CHECK_EQ_INT((int)o.ctl_len, 0);

    rndz__relay_input(&r, &b, NULL, NULL, jb, sizeof jb, 20, &o);
    CHECK_EQ_INT(state_of(&o), RNDZ_RELAY_READY);
    CHECK(o.notify);
    CHECK(rndz__addr_equal((struct sockaddr *)&o.notify_to, (struct sockaddr *)&a));
    CHECK_EQ_INT((int)r.active, 1);

    /* both ways, to the other side only */
    rndz__relay_input(&r, &a, NULL, NULL, data, 5, 21, &o);
    CHECK(o.forward);
    CHECK(rndz__addr_equal((struct sockaddr *)&o.to, (struct sockaddr *)&b));
    rndz__relay_input(&r, &b, NULL, NULL, data, 5, 21, &o);
    CHECK(o.forward);
    CHECK(rndz__addr_equal((struct sockaddr *)&o.to, (struct sockaddr *)&a));
    /* a third address, even with a port of a joined one or a joined one's IP: nobody */
    struct sockaddr_storage a2 = v4("192.0.2.1", 4001);
    rndz__relay_input(&r, &x, NULL, NULL, data, 5, 22, &o);
    CHECK(!o.forward);
    CHECK_EQ_INT(o.stat, RNDZ__ST_relay_foreign);
    rndz__relay_input(&r, &a2, NULL, NULL, data, 5, 22, &o);
    CHECK(!o.forward);
    /* a taken role joined again from elsewhere (a copied token): refused, the session keeps
     * its addresses */
    rndz__relay_input(&r, &x, NULL, NULL, jb, sizeof jb, 23, &o);
    CHECK_EQ_INT(o.stat, RNDZ__ST_relay_refused);
    rndz__relay_input(&r, &x, NULL, NULL, data, 5, 23, &o);
    CHECK(!o.forward);
    rndz__relay_input(&r, &a, NULL, NULL, data, 5, 24, &o);
    CHECK(o.forward && rndz__addr_equal((struct sockaddr *)&o.to, (struct sockaddr *)&b));

    /* idle: not before idle_ms, then gone, and its addresses reach nobody */
    CHECK_EQ_INT((int)rndz__relay_expire(&r, 24 + 59999, 100, NULL, NULL), 0);
    CHECK_EQ_INT((int)rndz__relay_expire(&r, 24 + 60000, 100, NULL, NULL), 1);
    CHECK_EQ_INT((int)r.active, 0);
    rndz__relay_input(&r, &a, NULL, NULL, data, 5, 60100, &o);
    CHECK(!o.forward);
    CHECK_EQ_INT(o.stat, RNDZ__ST_relay_foreign);
    rndz__relay_free(&r);
}

static void test_tokens(void) {
    rndz__relay r;
    rndz__relay_limits l = lim(4, UINT32_MAX, UINT32_MAX);
    CHECK_RC(rndz__relay_init(&r, &key, &l, 0), 0);
    struct sockaddr_storage a = v4("192.0.2.1", 4000);
    uint8_t j[RNDZ_RELAY_JOIN_LEN];
    rndz__relay_out o;
    /* forged: one bit of the mac, of the nonce, of the expiry */
    int where[] = {12 + 16, 12, 12 + 8 + 7};
    for (size_t k = 0; k < RNDZ_ARRAY_LEN(where); k++) {
        join_msg(j, 9, RNDZ_RELAY_ROLE_CONNECTOR, 0);
        j[where[k]] ^= 1;
        rndz__relay_input(&r, &a, NULL, NULL, j, sizeof j, 1, &o);
        CHECK_EQ_INT(o.stat, RNDZ__ST_relay_refused);
        CHECK_EQ_INT((int)o.ctl_len, 0);
    }
    /* another server's key */
    rndz__relay_key other;
    rndz__relay_key_init(&other);
    uint8_t tok[RNDZ_RELAY_TOKEN_LEN];
    rndz__relay_token(&other, 9, RNDZ_RELAY_ROLE_CONNECTOR, 0, tok);
    rndz__relay_encode(j, RNDZ_RELAY_JOIN, RNDZ_RELAY_ROLE_CONNECTOR, 0, tok);
    rndz__relay_input(&r, &a, NULL, NULL, j, sizeof j, 1, &o);
    CHECK_EQ_INT(o.stat, RNDZ__ST_relay_refused);
    /* expired: good until TTL after minting, not after */
    join_msg(j, 9, RNDZ_RELAY_ROLE_CONNECTOR, 1000);
    rndz__relay_input(&r, &a, NULL, NULL, j, sizeof j, 1000 + RNDZ_RELAY_TOKEN_TTL_MS + 1, &o);
    CHECK_EQ_INT(o.stat, RNDZ__ST_relay_refused);
    rndz__relay_input(&r, &a, NULL, NULL, j, sizeof j, 1000 + RNDZ_RELAY_TOKEN_TTL_MS, &o);
    CHECK_EQ_INT(o.stat, -1);
    CHECK_EQ_INT((int)r.active, 1);
    rndz__relay_free(&r);
}

static void test_limits(void) {
    rndz__relay r;
    rndz__relay_limits l = lim(2, 100000, 150000);
    CHECK_RC(rndz__relay_init(&r, &key, &l, 0), 0);
    rndz__relay_out o;
    uint8_t j[RNDZ_RELAY_JOIN_LEN];
    struct sockaddr_storage s[6];
    for (int i = 0; i < 6; i++) s[i] = v4("192.0.2.1", (uint16_t)(4000 + i));
    /* two sessions fill the table; a third is refused */
    for (int n = 0; n < 2; n++) {
        join_msg(j, (uint64_t)n + 1, RNDZ_RELAY_ROLE_CONNECTOR, 0);
        rndz__relay_input(&r, &s[2 * n], NULL, NULL, j, sizeof j, 0, &o);
        join_msg(j, (uint64_t)n + 1, RNDZ_RELAY_ROLE_LISTENER, 0);
        rndz__relay_input(&r, &s[2 * n + 1], NULL, NULL, j, sizeof j, 0, &o);
        CHECK_EQ_INT(state_of(&o), RNDZ_RELAY_READY);
    }
    join_msg(j, 3, RNDZ_RELAY_ROLE_CONNECTOR, 0);
    rndz__relay_input(&r, &s[4], NULL, NULL, j, sizeof j, 0, &o);
    CHECK_EQ_INT(o.stat, RNDZ__ST_relay_refused);
    /* per session: 100 kB/s, burst 64 KiB: in one instant about 64 KiB passes */
    static uint8_t big[1000];
    size_t passed = 0;
    for (int i = 0; i < 200; i++) {
        rndz__relay_input(&r, &s[0], NULL, NULL, big, sizeof big, 1, &o);
        if (o.forward) passed += sizeof big;
        else CHECK_EQ_INT(o.stat, RNDZ__ST_relay_limited);
    }
    CHECK(passed >= 64000 && passed <= 66000);
    /* the total (150 kB/s, burst 64 KiB) was spent by session 1 too: session 2 gets little */
    size_t passed2 = 0;
    for (int i = 0; i < 200; i++) {
        rndz__relay_input(&r, &s[2], NULL, NULL, big, sizeof big, 1, &o);
        if (o.forward) passed2 += sizeof big;
    }
    CHECK(passed2 <= 2000);
    /* over one simulated second, session 1 alone: its own rate binds (100 kB/s) */
    size_t sent = 0;
    for (uint64_t t = 2; t < 1002; t++) {
        for (int i = 0; i < 5; i++) {
            rndz__relay_input(&r, &s[0], NULL, NULL, big, sizeof big, t, &o);
            if (o.forward) sent += sizeof big;
        }
    }
    CHECK(sent >= 95000 && sent <= 105000);
    /* TCP: bytes already read are charged into debt, and the wait pays it back at the rate */
    uint64_t wait = rndz__relay_charge(&r, 0, 200000, 2000);
    CHECK(wait >= 1300 && wait <= 2100); /* ~150-200 kB of debt at 100 kB/s (and the total) */
    CHECK_EQ_INT((long)rndz__relay_charge(&r, 0, 0, 2000 + wait), 0);
    rndz__relay_free(&r);
}

int main(void) {
    rndz__relay_key_init(&key);
    test_codec();
    test_pair();
    test_tokens();
    test_limits();
    return tl_summary("test_relay");
}
