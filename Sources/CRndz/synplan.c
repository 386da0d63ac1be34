/* synplan.c: see synplan.h. */
#include "synplan.h"

uint32_t rndz__synplan_delay(uint32_t rtt_listener_ms, uint32_t rtt_connector_ms) {
    if (!rtt_listener_ms) rtt_listener_ms = rtt_connector_ms;
    if (!rtt_connector_ms) rtt_connector_ms = rtt_listener_ms;
    uint64_t d = ((uint64_t)rtt_listener_ms + rtt_connector_ms) / 2;
    return d > RNDZ_SYNPLAN_MAX_DELAY_MS ? RNDZ_SYNPLAN_MAX_DELAY_MS : (uint32_t)d;
}

void rndz__synplan_init(rndz__synplan *p, uint64_t now, uint32_t delay_ms, uint64_t deadline) {
    p->coord_at = now + (delay_ms > RNDZ_SYNPLAN_MAX_DELAY_MS ? RNDZ_SYNPLAN_MAX_DELAY_MS
                                                               : delay_ms);
    if (p->coord_at >= deadline) p->coord_at = now; /* a short deadline: one SYN at once */
    p->deadline = deadline;
    p->last_start = 0;
    p->attempts = 0;
}

int rndz__synplan_step(rndz__synplan *p, uint64_t now, int state, uint64_t *wake) {
    *wake = UINT64_MAX;
    if (now >= p->deadline) return RNDZ_SYN_IDLE;
    if (p->attempts == 0 && now < p->coord_at) {
        *wake = p->coord_at;
        return RNDZ_SYN_IDLE;
    }
    /* After the coordinated SYN only a failed attempt is replaced, paced. A waiting or
     * answered one is the kernel's to finish; look again later in case it fails. */
    uint64_t due = p->attempts ? p->last_start + RNDZ_SYNPLAN_RETRY_MS : now;
    if (state == RNDZ_SYN_NONE && now >= due) {
        if (p->attempts >= RNDZ_SYNPLAN_MAX_ATTEMPTS) return RNDZ_SYN_IDLE;
        p->attempts++;
        p->last_start = now;
        *wake = now + RNDZ_SYNPLAN_RETRY_MS;
        if (*wake > p->deadline) *wake = p->deadline;
        return RNDZ_SYN_START;
    }
    *wake = now >= due ? now + RNDZ_SYNPLAN_RETRY_MS : due;
    if (*wake > p->deadline) *wake = p->deadline;
    return RNDZ_SYN_IDLE;
}
