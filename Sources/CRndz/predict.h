/* predict.h: port prediction for one hard side (UDP): a destination-dependent ("symmetric")
 * NAT on one side, an endpoint-independent one on the other. Pure: time is a parameter; the
 * caller owns the sockets (Tests/unit/test_predict.c runs it against models of random and
 * sequential NATs).
 *
 * The hard side H cannot tell the easy side E which public port its NAT will give a flow to
 * E: it opens many sockets, each sending a probe to E's public address, so its NAT opens one
 * mapping per socket, each on a port of its own. E probes many ports of H's public address
 * from its one socket (whose public address never changes). A probe of E that lands on a port
 * H's NAT mapped toward E goes through to that socket, which acks: the path is verified.
 *
 * The numbers (the birthday arithmetic): with N mappings among R = 64512 ports (1024..65535:
 * what a random NAT draws from) and M distinct ports probed, a pass misses all N with
 * probability C(R-N, M) / C(R, M) < (1 - N/R)^M ~ exp(-N*M/R):
 *     N = 256, M = 1024: exp(-4.06) = 1.7%: a pass finds a path 98.3% of the time,
 *     two passes (2048 ports) 99.97%.
 * N costs H's NAT N table entries and H N descriptors for a few seconds; M costs E's NAT M
 * entries (unanswered UDP: Linux forgets them after 30 s) and the network M probes of 24
 * bytes (24 KiB a pass). Paced: H opens one socket a millisecond (256 ms), E sends two
 * probes a millisecond (512 ms a pass, about 50 KB/s on the wire), at most PASSES passes.
 * H's sockets probe E again every RESEND_MS: E's NAT lets them in once E has probed their
 * port, which proves the path the other way.
 *
 * A sequential NAT gives H's sockets the ports right after the one the server saw: E probes
 * those first (GUESS_AHEAD ports after it, step 1 and 2 covered), then random ones. */
#ifndef RNDZ_PREDICT_H
#define RNDZ_PREDICT_H

#include "internal.h"

#define RNDZ_PREDICT_SOCKETS 256
#define RNDZ_PREDICT_PROBES 1024 /* per pass */
#define RNDZ_PREDICT_PASSES 4
#define RNDZ_PREDICT_PORT_MIN 1024
#define RNDZ_PREDICT_HARD_PER_MS 1
#define RNDZ_PREDICT_EASY_PER_MS 2
#define RNDZ_PREDICT_RESEND_MS 500
#define RNDZ_PREDICT_GUESS_AHEAD (2 * RNDZ_PREDICT_SOCKETS)
/* Probes the prediction sends carry this bit in their sequence number (the punch's own stay
 * far below it): an ack to one is the prediction's. */
#define RNDZ_PREDICT_SEQ 0x80000000u

enum { RNDZ_PREDICT_HARD = 1, RNDZ_PREDICT_EASY = 2 };

typedef struct rndz__predict {
    int role;
    uint64_t start, deadline;
    uint32_t rng;
    /* hard: sockets opened so far, and the resend round */
    uint32_t opened, resent;
    uint64_t round_at;
    /* easy */
    uint16_t seen_port; /* the port the server saw for H */
    uint32_t sent;      /* probes sent in all */
    uint8_t tried[65536 / 8]; /* ports probed this pass */
} rndz__predict;

/* One thing to send: hard: a probe from socket `index` to E (new: open it first); easy: a
 * probe to H's public address on `port`. */
typedef struct rndz__predict_send {
    uint32_t index;
    uint16_t port;
    bool open;
} rndz__predict_send;

/* seen_port: easy side: the port the server saw for the hard side (0: unknown). Ports here
 * are in host order. */
RNDZ_INTERNAL void rndz__predict_init(rndz__predict *p, int role, uint64_t now,
                                      uint32_t timeout_ms, uint16_t seen_port, uint32_t seed);
/* What is due at `now` (up to max); *next: when to run again (UINT64_MAX: done). */
RNDZ_INTERNAL size_t rndz__predict_tick(rndz__predict *p, uint64_t now, rndz__predict_send *out,
                                        size_t max, uint64_t *next);

#endif
