/* srvlink.c: a listener's link to one server, on simulated time (srvlink.h). */
#include "srvlink.h"

uint32_t rndz__jitter(uint32_t base_ms, uint32_t r) {
    if (base_ms > 25000) base_ms = 25000;
    uint32_t spread = base_ms / 5; /* +-20% */
    uint32_t v = base_ms - spread + (spread ? r % (2 * spread + 1) : 0);
    if (v > 25000) v = 25000;
    return v ? v : 1;
}

static uint32_t next_rand(rndz__srvlink *k) { /* xorshift32 */
    uint32_t x = k->rng ? k->rng : 0x9e3779b9u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return k->rng = x;
}

static uint32_t keepalive(rndz__srvlink *k) { return rndz__jitter(k->keepalive_ms, next_rand(k)); }

/* Silent this long (ms) after the last sign of life: lost. */
static uint64_t lost_after(const rndz__srvlink *k) {
    return (uint64_t)RNDZ_LINK_LOST_INTERVALS * k->keepalive_ms + 1000;
}

void rndz__link_init(rndz__srvlink *k, bool stream, uint32_t keepalive_ms, uint32_t seed) {
    *k = (rndz__srvlink){.stream = stream, .keepalive_ms = keepalive_ms ? keepalive_ms : 1,
                         .backoff_ms = RNDZ_LINK_BACKOFF_MIN_MS, .rng = seed,
                         .silent_since = UINT64_MAX, .ping_out = UINT64_MAX};
    k->state = stream ? RNDZ_LINK_DOWN : RNDZ_LINK_UP;
}

uint32_t rndz__link_down(rndz__srvlink *k, uint64_t now) {
    uint32_t delay = k->backoff_ms;
    k->state = RNDZ_LINK_DOWN;
    if (k->answered) k->silent_since = now; /* broke: down if not back within DOWN_MS */
    k->answered = false;
    k->ping_out = UINT64_MAX;
    k->retry_at = now + delay;
    k->backoff_ms = delay * 2 > RNDZ_LINK_BACKOFF_MAX_MS ? RNDZ_LINK_BACKOFF_MAX_MS : delay * 2;
    return delay;
}

void rndz__link_on_connected(rndz__srvlink *k, uint64_t now) {
    k->state = RNDZ_LINK_UP;
    k->last_rx = now;
    k->ping_out = UINT64_MAX;
    k->next_ping = now; /* register at once */
}

void rndz__link_on_rx(rndz__srvlink *k, uint64_t now) { k->last_rx = now; }

void rndz__link_ping_now(rndz__srvlink *k, uint64_t now) {
    if (k->state == RNDZ_LINK_UP && k->next_ping > now) k->next_ping = now;
}

bool rndz__link_on_pong(rndz__srvlink *k, uint64_t now) {
    k->last_rx = now;
    k->backoff_ms = RNDZ_LINK_BACKOFF_MIN_MS;
    if (k->answered) {
        /* a keepalive answered (perhaps after a resend): the keepalive pace again */
        if (k->ping_out != UINT64_MAX && !k->stream) k->next_ping = now + keepalive(k);
        k->ping_out = UINT64_MAX;
        return false;
    }
    k->answered = true;
    if (!k->stream) k->next_ping = now + keepalive(k); /* the fast pace is over */
    return true;
}

bool rndz__link_is_down(const rndz__srvlink *k, uint64_t now) {
    return now >= rndz__link_down_at(k);
}

uint64_t rndz__link_down_at(const rndz__srvlink *k) {
    if (k->answered)
        return k->ping_out == UINT64_MAX ? UINT64_MAX : k->ping_out + RNDZ_LINK_DOWN_MS;
    if (k->silent_since == UINT64_MAX) return UINT64_MAX;
    return k->silent_since + RNDZ_LINK_DOWN_MS;
}

unsigned rndz__link_tick(rndz__srvlink *k, uint64_t now) {
    unsigned act = 0;
    if (k->silent_since == UINT64_MAX) k->silent_since = now;
    if (k->state == RNDZ_LINK_DOWN && now >= k->retry_at) {
        k->state = RNDZ_LINK_CONNECTING;
        act |= RNDZ_LINK_CONNECT;
    }
    if (k->state == RNDZ_LINK_UP) {
        bool silent = now - k->last_rx > lost_after(k);
        if (k->stream && silent) {
            rndz__link_down(k, now);
            k->silent_since = now > RNDZ_LINK_DOWN_MS ? now - RNDZ_LINK_DOWN_MS : 0; /* down now */
            act |= RNDZ_LINK_LOST;
        } else {
            if (!k->stream && k->answered && silent) {
                k->answered = false; /* lost or restarted: register again, fast, from now */
                k->ping_out = UINT64_MAX;
                k->silent_since = now > RNDZ_LINK_DOWN_MS ? now - RNDZ_LINK_DOWN_MS : 0; /* down now */
                k->next_ping = now;
                act |= RNDZ_LINK_LOST;
            }
            if (now >= k->next_ping) {
                act |= RNDZ_LINK_PING;
                if (k->answered && k->ping_out == UINT64_MAX) k->ping_out = now;
                uint32_t fast = k->keepalive_ms < RNDZ_LINK_FIRST_PING_MS ? k->keepalive_ms
                                                                          : RNDZ_LINK_FIRST_PING_MS;
                /* a datagram Ping goes again at the fast pace until answered (on_pong
                 * moves the next one a keepalive on); a stream's is TCP's to resend */
                k->next_ping = now + (k->stream ? keepalive(k) : fast);
            }
        }
    }
    return act;
}

uint64_t rndz__link_wake(const rndz__srvlink *k) {
    uint64_t w = UINT64_MAX;
    if (k->state == RNDZ_LINK_DOWN) w = k->retry_at;
    if (k->state == RNDZ_LINK_UP) {
        w = k->next_ping;
        if ((k->stream || k->answered) && k->last_rx + lost_after(k) + 1 < w)
            w = k->last_rx + lost_after(k) + 1;
    }
    return w;
}
