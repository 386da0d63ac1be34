/* punch.h: the probe state machine that turns candidate addresses into a verified path.
 *
 * Pure logic: it takes the current time and says what to send and when it next wants to
 * run; the caller owns the sockets. Tests drive it on simulated time with loss, reordering,
 * duplication and delay (Tests/unit/test_punch.c).
 *
 * Both peers run one per connect session: each sends probes to every candidate of the other
 * and answers the other's probes with acks. An ack proves the path both ways (our probe got
 * there, its ack came back) and gives the round-trip time. */
#ifndef RNDZ_PUNCH_H
#define RNDZ_PUNCH_H

#include "ext.h"
#include "probe.h"

/* Probe pacing. The first probe goes at once. Retries start at FIRST_RETRY_MS: a little above
 * a typical continental round trip, so a fast path answers before the first retry, and a
 * lost probe costs little. Each retry doubles the wait (a path that is slow, not lossy, is
 * not flooded, and NATs that rate-limit new flows are not tripped) up to RETRY_CAP_MS, which
 * then keeps a steady probe per second per candidate until the deadline: with 20% loss on
 * each of two links a round trip survives 41% of the time, so ten seconds of retries fail
 * with probability about 0.59^14 < 0.1%. */
#define RNDZ_PUNCH_FIRST_RETRY_MS 100
#define RNDZ_PUNCH_RETRY_CAP_MS 1000
/* After a public path verifies, wait this long (at most one RTT) for a LAN candidate: a
 * direct path inside the LAN is faster and does not depend on the NAT. */
#define RNDZ_PUNCH_LAN_GRACE_MS 50

enum { RNDZ_PUNCH_RUNNING, RNDZ_PUNCH_VERIFIED, RNDZ_PUNCH_FAILED };

typedef struct rndz__punch {
    uint64_t nonce;
    size_t ncand;
    struct sockaddr_storage cand[RNDZ_MAX_CANDS + 1];
    bool lan[RNDZ_MAX_CANDS + 1];
    uint64_t deadline, next_send, grace_until;
    uint32_t wait_ms; /* current retry interval */
    uint32_t seq;     /* next probe sequence number */
    uint64_t sent_at[64]; /* by seq % 64 */
    int state;
    int winner; /* candidate index */
    uint32_t rtt_ms;
    uint32_t probes_sent;
} rndz__punch;

/* A send the machine asks for: probe `seq` to candidate `cand`. */
typedef struct rndz__punch_send {
    int cand;
    uint32_t seq;
} rndz__punch_send;

RNDZ_INTERNAL void rndz__punch_init(rndz__punch *p, uint64_t nonce, uint64_t now,
                                    uint32_t timeout_ms);
/* Add a candidate (ignored when already present or full). `lan`: a private address. */
RNDZ_INTERNAL void rndz__punch_add(rndz__punch *p, const struct sockaddr_storage *a, bool lan);
/* A path that answered outside the plan (a confirm, a predicted port): its candidate index,
 * adding it (when full, in place of the last one advertised). */
RNDZ_INTERNAL int rndz__punch_adopt(rndz__punch *p, const struct sockaddr_storage *a);
/* Do what is due at `now`: fills up to `max` sends, returns how many; *next gets the next
 * wake-up time (UINT64_MAX when done). */
RNDZ_INTERNAL size_t rndz__punch_tick(rndz__punch *p, uint64_t now, rndz__punch_send *out,
                                      size_t max, uint64_t *next);
/* An ack for probe `seq` came from `from` at `now`. */
RNDZ_INTERNAL void rndz__punch_on_ack(rndz__punch *p, const struct sockaddr_storage *from,
                                      uint32_t seq, uint64_t now);

#endif
