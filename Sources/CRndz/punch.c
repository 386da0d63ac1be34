/* punch.c: see punch.h. */
#include "punch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

void rndz__punch_init(rndz__punch *p, uint64_t nonce, uint64_t now, uint32_t timeout_ms) {
    memset(p, 0, sizeof *p);
    p->nonce = nonce;
    p->deadline = now + timeout_ms;
    p->next_send = now;
    p->wait_ms = RNDZ_PUNCH_FIRST_RETRY_MS;
    p->state = RNDZ_PUNCH_RUNNING;
    p->winner = -1;
    p->grace_until = UINT64_MAX;
}

void rndz__punch_add(rndz__punch *p, const struct sockaddr_storage *a, bool lan) {
    if (p->ncand >= RNDZ_ARRAY_LEN(p->cand)) return;
    for (size_t i = 0; i < p->ncand; i++)
        if (rndz__addr_equal((const struct sockaddr *)&p->cand[i], (const struct sockaddr *)a))
            return;
    p->cand[p->ncand] = *a;
    p->lan[p->ncand] = lan;
    p->ncand++;
}

int rndz__punch_adopt(rndz__punch *p, const struct sockaddr_storage *a) {
    for (size_t i = 0; i < p->ncand; i++)
        if (rndz__addr_equal((const struct sockaddr *)&p->cand[i], (const struct sockaddr *)a))
            return (int)i;
    if (p->ncand < RNDZ_ARRAY_LEN(p->cand)) {
        rndz__punch_add(p, a, false);
        return (int)p->ncand - 1;
    }
    /* full: a mapping that answered beats the last candidate advertised (slot 0, the
     * address the server saw, stays) */
    size_t last = p->ncand - 1;
    p->cand[last] = *a;
    p->lan[last] = false;
    return (int)last;
}

static bool any_lan(const rndz__punch *p) {
    for (size_t i = 0; i < p->ncand; i++)
        if (p->lan[i]) return true;
    return false;
}

size_t rndz__punch_tick(rndz__punch *p, uint64_t now, rndz__punch_send *out, size_t max,
                        uint64_t *next) {
    size_t n = 0;
    if (p->state == RNDZ_PUNCH_RUNNING && p->winner >= 0 && now >= p->grace_until)
        p->state = RNDZ_PUNCH_VERIFIED; /* the LAN grace is over: keep what verified */
    if (p->state == RNDZ_PUNCH_RUNNING && now >= p->deadline) p->state = RNDZ_PUNCH_FAILED;
    if (p->state != RNDZ_PUNCH_RUNNING) {
        *next = UINT64_MAX;
        return 0;
    }
    if (now >= p->next_send) {
        uint32_t seq = p->seq++;
        p->sent_at[seq % 64] = now;
        for (size_t i = 0; i < p->ncand && n < max; i++) out[n++] = (rndz__punch_send){(int)i, seq};
        p->probes_sent += (uint32_t)n;
        p->next_send = now + p->wait_ms;
        p->wait_ms = p->wait_ms * 2 > RNDZ_PUNCH_RETRY_CAP_MS ? RNDZ_PUNCH_RETRY_CAP_MS
                                                               : p->wait_ms * 2;
    }
    uint64_t t = p->next_send < p->deadline ? p->next_send : p->deadline;
    if (p->grace_until < t) t = p->grace_until;
    *next = t;
    return n;
}

void rndz__punch_on_ack(rndz__punch *p, const struct sockaddr_storage *from, uint32_t seq,
                        uint64_t now) {
    if (p->state != RNDZ_PUNCH_RUNNING || seq >= p->seq || p->seq - seq > 64) return;
    int idx = -1;
    for (size_t i = 0; i < p->ncand; i++)
        if (rndz__addr_equal((const struct sockaddr *)&p->cand[i], (const struct sockaddr *)from))
            idx = (int)i;
    if (idx < 0) {
        /* An ack from an address we did not probe: the peer's NAT answered from a mapping
         * we could not predict. The ack proves that path too: adopt it. */
        if (p->ncand >= RNDZ_ARRAY_LEN(p->cand)) return;
        rndz__punch_add(p, from, rndz__addr_is_private(from));
        idx = (int)p->ncand - 1;
    }
    uint32_t rtt = (uint32_t)(now - p->sent_at[seq % 64]);
    bool better = p->winner < 0 || (p->lan[idx] && !p->lan[p->winner]);
    if (!better) return;
    p->winner = idx;
    p->rtt_ms = rtt ? rtt : 1;
    if (p->lan[idx] || !any_lan(p)) {
        p->state = RNDZ_PUNCH_VERIFIED;
    } else {
        uint64_t g = rtt < RNDZ_PUNCH_LAN_GRACE_MS ? rtt : RNDZ_PUNCH_LAN_GRACE_MS;
        p->grace_until = now + g;
    }
}
