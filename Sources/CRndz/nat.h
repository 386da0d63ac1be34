/* nat.h: the NAT check's pure parts (nat.c), for the unit tests and the connects that use
 * what a check found: the allocation classifier, the port-mapping reply parser, and the NAT
 * field peers exchange (ext.h, field 26). */
#ifndef RNDZ_NAT_H
#define RNDZ_NAT_H

#include "internal.h"

/* A sequential NAT's step is at most this; larger regular gaps count as random. */
#define RNDZ__NAT_MAX_STEP 16

/* The allocation pattern (RNDZ_NAT_PORT_*) of public ports p[0..n) in the order they were
 * allocated, and of each socket's first mapping (its public and local port): all first
 * mappings kept their local port = preserving; three gaps in four the same small step =
 * sequential (*step); otherwise random; too few samples = unknown. */
RNDZ_INTERNAL int rndz__nat_classify(const uint16_t *p, size_t n, const uint16_t *firsts_public,
                                     const uint16_t *firsts_local, size_t nfirst, int *step);
/* A reply from the gateway: 1 NAT-PMP, 2 PCP, 0 neither (bounded: any bytes). */
RNDZ_INTERNAL int rndz__nat_pmp_reply(const uint8_t *b, size_t n);

/* The IPv4 default gateway (from /proc/net/route) at the port-mapping port; false if none. */
RNDZ_INTERNAL bool rndz__nat_gateway(struct sockaddr_storage *gw);

#endif
