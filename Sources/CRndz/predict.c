/* predict.c: see predict.h. */
#include "predict.h"

#include <string.h>

void rndz__predict_init(rndz__predict *p, int role, uint64_t now, uint32_t timeout_ms,
                        uint16_t seen_port, uint32_t seed) {
    memset(p, 0, sizeof *p);
    p->role = role;
    p->start = now;
    p->deadline = now + timeout_ms;
    p->rng = seed ? seed : 0x9e3779b9u;
    p->seen_port = seen_port;
    p->round_at = now;
}

static uint32_t next_rand(rndz__predict *p) {
    uint32_t x = p->rng; /* xorshift32 */
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return p->rng = x;
}

static bool tried(const rndz__predict *p, uint16_t port) {
    return p->tried[port >> 3] & (1u << (port & 7));
}

static void mark(rndz__predict *p, uint16_t port) { p->tried[port >> 3] |= (uint8_t)(1u << (port & 7)); }

/* The easy side's next port: the sequential guesses first, then random ones not tried in
 * this pass (a new pass forgets the last one's). */
static uint16_t next_port(rndz__predict *p) {
    uint32_t in_pass = p->sent % RNDZ_PREDICT_PROBES;
    if (in_pass == 0) memset(p->tried, 0, sizeof p->tried);
    if (p->seen_port && p->sent < RNDZ_PREDICT_GUESS_AHEAD) {
        uint32_t port = (uint32_t)p->seen_port + 1 + p->sent;
        if (port <= 65535 && port >= RNDZ_PREDICT_PORT_MIN) {
            mark(p, (uint16_t)port);
            return (uint16_t)port;
        }
    }
    for (;;) {
        uint16_t port = (uint16_t)(RNDZ_PREDICT_PORT_MIN +
                                   next_rand(p) % (65536u - RNDZ_PREDICT_PORT_MIN));
        if (!tried(p, port)) {
            mark(p, port);
            return port;
        }
    }
}

size_t rndz__predict_tick(rndz__predict *p, uint64_t now, rndz__predict_send *out, size_t max,
                          uint64_t *next) {
    size_t n = 0;
    *next = UINT64_MAX;
    if (now >= p->deadline) return 0;
    uint64_t elapsed = now - p->start;
    if (p->role == RNDZ_PREDICT_HARD) {
        /* open at the pace (each opening sends the socket's first probe); then rounds, one
         * each RESEND_MS, in which every socket probes again, at the same pace */
        if (p->opened < RNDZ_PREDICT_SOCKETS) {
            uint64_t due = (elapsed + 1) * RNDZ_PREDICT_HARD_PER_MS;
            while (p->opened < RNDZ_PREDICT_SOCKETS && p->opened < due && n < max)
                out[n++] = (rndz__predict_send){.index = p->opened++, .open = true};
            if (p->opened == RNDZ_PREDICT_SOCKETS) {
                p->round_at = now + RNDZ_PREDICT_RESEND_MS;
                p->resent = 0;
            }
            *next = p->opened < RNDZ_PREDICT_SOCKETS ? (n == max ? now : now + 1) : p->round_at;
        } else {
            if (now >= p->round_at) {
                uint64_t due = (now - p->round_at + 1) * RNDZ_PREDICT_HARD_PER_MS;
                while (p->resent < RNDZ_PREDICT_SOCKETS && p->resent < due && n < max)
                    out[n++] = (rndz__predict_send){.index = p->resent++};
                if (p->resent == RNDZ_PREDICT_SOCKETS) {
                    p->round_at = now + RNDZ_PREDICT_RESEND_MS;
                    p->resent = 0;
                }
            }
            *next = p->resent ? (n == max ? now : now + 1) : p->round_at;
        }
        if (*next > p->deadline) *next = p->deadline;
        return n;
    }
    /* easy: probes at the pace, PASSES passes at most */
    uint64_t due = (elapsed + 1) * RNDZ_PREDICT_EASY_PER_MS;
    uint64_t cap = (uint64_t)RNDZ_PREDICT_PROBES * RNDZ_PREDICT_PASSES;
    while (p->sent < due && p->sent < cap && n < max) {
        out[n++] = (rndz__predict_send){.port = next_port(p)};
        p->sent++;
    }
    if (p->sent < cap) *next = n == max ? now : now + 1;
    return n;
}
