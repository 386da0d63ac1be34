/* pmp.h: a port mapping at the default gateway, by PCP (RFC 6887) or NAT-PMP (RFC 6886), for
 * the UDP listener's shared port. Pure: the caller sends what pmp_next asks, feeds replies
 * to pmp_input, and drives it with the time (Tests/unit/test_pmp.c; Tests/fuzz/fuzz_wire.c
 * feeds it any bytes).
 *
 *   PCP MAP (60 bytes): version 2, opcode 1, lifetime, our address (IPv4-mapped), then a
 *   12-byte nonce, protocol 17, our port, the suggested external port and address.
 *   A gateway that answers "unsupported version" (PCP result 1, or a NAT-PMP reply) speaks
 *   NAT-PMP: external address request (2 bytes), then a UDP mapping request (12 bytes).
 * Each request is resent after 50 and 150 ms; at 350 ms the gateway counts as silent, and the
 * mapping is not asked again for RNDZ_PMP_QUIET_MS. A mapping is renewed at half its lifetime
 * and deleted (lifetime 0) when the listener closes. */
#ifndef RNDZ_PMP_H
#define RNDZ_PMP_H

#include "internal.h"

#define RNDZ_PMP_PORT 5351
#define RNDZ_PMP_LIFETIME 600 /* seconds asked */
#define RNDZ_PMP_TRIES 3
#define RNDZ_PMP_FIRST_MS 50
#define RNDZ_PMP_QUIET_MS 600000 /* after silence or refusal: ask again after 10 minutes */

enum {
    RNDZ_PMP_IDLE,     /* nothing asked yet */
    RNDZ_PMP_PCP,      /* PCP MAP asked */
    RNDZ_PMP_NATPMP_ADDR, /* NAT-PMP external address asked */
    RNDZ_PMP_NATPMP_MAP,  /* NAT-PMP mapping asked */
    RNDZ_PMP_MAPPED,   /* a mapping holds: ext */
    RNDZ_PMP_NONE      /* silence or refusal: none (until quiet_until) */
};

typedef struct rndz__pmp {
    int state;
    bool pcp;            /* the mapping is PCP's (else NAT-PMP's) */
    uint16_t port;       /* our port */
    uint8_t ours[4];     /* our IPv4 address toward the gateway */
    uint8_t nonce[12];
    int tries;
    uint64_t next;       /* when to send (again) */
    uint64_t renew_at, quiet_until;
    uint32_t lifetime;   /* granted, s */
    uint8_t ext_ip[4];
    uint16_t ext_port;
    bool changed;        /* ext became known or changed since the caller last looked */
} rndz__pmp;

RNDZ_INTERNAL void rndz__pmp_init(rndz__pmp *m, const uint8_t ours[4], uint16_t port,
                                  const uint8_t nonce[12]);
/* What to send at `now`: its length in buf (at most 60 bytes), 0 if nothing; *wake: when to
 * call again (UINT64_MAX: never). */
RNDZ_INTERNAL size_t rndz__pmp_next(rndz__pmp *m, uint64_t now, uint8_t buf[60], uint64_t *wake);
/* A datagram from the gateway (any bytes): 1 if it moved the state, else 0. */
RNDZ_INTERNAL int rndz__pmp_input(rndz__pmp *m, const uint8_t *b, size_t n, uint64_t now);
/* The request that deletes the mapping (lifetime 0), for the close; 0 if none holds. */
RNDZ_INTERNAL size_t rndz__pmp_delete(const rndz__pmp *m, uint8_t buf[60]);

#endif
