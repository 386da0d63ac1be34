/* pmp.c: see pmp.h. */
#include "pmp.h"

#include <string.h>

void rndz__pmp_init(rndz__pmp *m, const uint8_t ours[4], uint16_t port, const uint8_t nonce[12]) {
    memset(m, 0, sizeof *m);
    memcpy(m->ours, ours, 4);
    memcpy(m->nonce, nonce, 12);
    m->port = port;
}

static void be16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void be32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The request of `state` with `lifetime` (s). */
static size_t request(const rndz__pmp *m, int state, uint32_t lifetime, uint8_t *b) {
    if (state == RNDZ_PMP_PCP) {
        memset(b, 0, 60);
        b[0] = 2;     /* version */
        b[1] = 1;     /* R = 0, opcode MAP */
        be32(b + 4, lifetime);
        b[18] = b[19] = 0xff; /* our address, IPv4-mapped */
        memcpy(b + 20, m->ours, 4);
        memcpy(b + 24, m->nonce, 12);
        b[36] = 17; /* UDP */
        be16(b + 40, m->port);
        be16(b + 42, m->ext_port ? m->ext_port : m->port); /* the same again, or ours */
        b[54] = b[55] = 0xff; /* suggested external address: IPv4-mapped, any or the last */
        memcpy(b + 56, m->ext_ip, 4);
        return 60;
    }
    if (state == RNDZ_PMP_NATPMP_ADDR) {
        b[0] = 0;
        b[1] = 0;
        return 2;
    }
    b[0] = 0;
    b[1] = 1; /* map UDP */
    b[2] = b[3] = 0;
    be16(b + 4, m->port);
    be16(b + 6, m->ext_port ? m->ext_port : m->port);
    be32(b + 8, lifetime);
    return 12;
}

static void ask(rndz__pmp *m, int state, uint64_t now) {
    m->state = state;
    m->tries = 0;
    m->next = now;
}

size_t rndz__pmp_next(rndz__pmp *m, uint64_t now, uint8_t buf[60], uint64_t *wake) {
    *wake = UINT64_MAX;
    switch (m->state) {
    case RNDZ_PMP_IDLE:
        ask(m, RNDZ_PMP_PCP, now);
        break;
    case RNDZ_PMP_MAPPED:
        if (now < m->renew_at) {
            *wake = m->renew_at;
            return 0;
        }
        ask(m, m->pcp ? RNDZ_PMP_PCP : RNDZ_PMP_NATPMP_MAP, now); /* renew */
        break;
    case RNDZ_PMP_NONE:
        if (now < m->quiet_until) {
            *wake = m->quiet_until;
            return 0;
        }
        ask(m, RNDZ_PMP_PCP, now);
        break;
    default:
        break;
    }
    if (now < m->next) {
        *wake = m->next;
        return 0;
    }
    if (m->tries == RNDZ_PMP_TRIES) {
        /* silence: no mapping (a renewal that goes unanswered loses it too) */
        m->state = RNDZ_PMP_NONE;
        m->quiet_until = now + RNDZ_PMP_QUIET_MS;
        if (m->ext_port) m->changed = true;
        m->ext_port = 0;
        *wake = m->quiet_until;
        return 0;
    }
    m->next = now + ((uint64_t)RNDZ_PMP_FIRST_MS << m->tries);
    m->tries++;
    *wake = m->next;
    return request(m, m->state, RNDZ_PMP_LIFETIME, buf);
}

static void mapped(rndz__pmp *m, bool pcp, const uint8_t ip[4], uint16_t port, uint32_t life,
                   uint64_t now) {
    if (memcmp(m->ext_ip, ip, 4) || m->ext_port != port) m->changed = true;
    memcpy(m->ext_ip, ip, 4);
    m->ext_port = port;
    m->pcp = pcp;
    m->lifetime = life;
    m->state = RNDZ_PMP_MAPPED;
    m->renew_at = now + (uint64_t)life * 1000 / 2;
}

static void refused(rndz__pmp *m, uint64_t now) {
    m->state = RNDZ_PMP_NONE;
    m->quiet_until = now + RNDZ_PMP_QUIET_MS;
    if (m->ext_port) m->changed = true;
    m->ext_port = 0;
}

int rndz__pmp_input(rndz__pmp *m, const uint8_t *b, size_t n, uint64_t now) {
    if (n < 4) return 0;
    if (b[0] == 2 && m->state == RNDZ_PMP_PCP) {
        /* PCP response: R bit + MAP, then the result */
        if (n < 24 || b[1] != (0x80 | 1)) return 0;
        if (b[3] == 1) { /* UNSUPP_VERSION: NAT-PMP, then */
            ask(m, RNDZ_PMP_NATPMP_ADDR, now);
            return 1;
        }
        if (b[3] != 0) {
            refused(m, now);
            return 1;
        }
        if (n < 60 || memcmp(b + 24, m->nonce, 12) || b[36] != 17 || rd16(b + 40) != m->port)
            return 0; /* not ours */
        const uint8_t *ip = b + 56;
        uint32_t life = rd32(b + 4);
        uint16_t port = rd16(b + 42);
        if (!life || !port) {
            refused(m, now);
            return 1;
        }
        mapped(m, true, ip, port, life, now);
        return 1;
    }
    if (b[0] != 0) return 0;
    if (m->state == RNDZ_PMP_PCP && b[1] >= 128) {
        /* a NAT-PMP gateway answering our PCP request (RFC 6887, 9): its protocol, then */
        ask(m, RNDZ_PMP_NATPMP_ADDR, now);
        return 1;
    }
    uint16_t result = rd16(b + 2);
    if (m->state == RNDZ_PMP_NATPMP_ADDR && b[1] == 128) {
        if (n < 12) return 0;
        if (result) {
            refused(m, now);
            return 1;
        }
        memcpy(m->ext_ip, b + 8, 4);
        ask(m, RNDZ_PMP_NATPMP_MAP, now);
        return 1;
    }
    if (m->state == RNDZ_PMP_NATPMP_MAP && b[1] == 129) {
        if (n < 16 || rd16(b + 8) != m->port) return 0;
        if (result) {
            refused(m, now);
            return 1;
        }
        uint32_t life = rd32(b + 12);
        uint16_t port = rd16(b + 10);
        if (!life || !port) {
            refused(m, now);
            return 1;
        }
        uint8_t ip[4];
        memcpy(ip, m->ext_ip, 4);
        mapped(m, false, ip, port, life, now);
        return 1;
    }
    return 0;
}

size_t rndz__pmp_delete(const rndz__pmp *m, uint8_t buf[60]) {
    if (m->state != RNDZ_PMP_MAPPED) return 0;
    return request(m, m->pcp ? RNDZ_PMP_PCP : RNDZ_PMP_NATPMP_MAP, 0, buf);
}
