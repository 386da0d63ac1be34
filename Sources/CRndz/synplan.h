/* synplan.h: when the TCP listener sends its SYNs toward a connecting peer.
 *
 * Pure logic, on the time the caller passes in (tested on simulated time in
 * Tests/unit/test_synplan.c); the caller owns the sockets.
 *
 * A TCP hole opens when the two SYNs cross: each NAT must have seen its own side's SYN go out
 * before the other side's SYN arrives. The connector sends its SYN when the server's Redirect
 * reaches it, which is the listener's Rsync travelling listener -> server -> connector: about
 * half the relayed round trip, D = (rtt_listener + rtt_connector) / 2, after the listener got
 * the Fsync (the connector's Isync carries its RTT to the server, field 19). As libp2p's
 * DCUtR does with its Sync message, the listener therefore sends
 *   1. its SYN at t0 + D, when the connector's leaves: the two cross in flight, so each finds
 *      the other's NAT already open. (rndz 0.1.5 sends it at t0. Behind a router that drops
 *      early SYNs that still works, the connector's SYN getting in later; behind one that
 *      answers them with a RST it fails: the RST ends the listener's attempt and, passing
 *      its own router, the conntrack entry that would have let the connector's SYN in.)
 *      With D unknown or zero it goes at once;
 *   2. then, only while the attempt fails (refused or reset), a new SYN every
 *      SYNPLAN_RETRY_MS, at most SYNPLAN_MAX_ATTEMPTS in all, until the deadline (the caller
 *      ends the plan for an address it has no route to). An attempt that waits is left to
 *      the kernel, which retransmits at least each second under rndz's cap (internal.h). */
#ifndef RNDZ_SYNPLAN_H
#define RNDZ_SYNPLAN_H

#include "internal.h"

/* A relayed round trip longer than this is an RTT sample inflated by a lost packet, not a
 * path: waiting longer would only delay the connect (behind routers that drop early SYNs the
 * connector's gets in anyway, and it is sent again each second). */
#define RNDZ_SYNPLAN_MAX_DELAY_MS 800
/* A refused or reset SYN is sent again this soon: long enough that the other side's SYN has
 * left by then on a path of up to ~100 ms one way, short enough to cost little. */
#define RNDZ_SYNPLAN_RETRY_MS 250
/* The coordinated SYN and a few retries: a peer that refuses this often is not there, and
 * each attempt costs the peer a RST. */
#define RNDZ_SYNPLAN_MAX_ATTEMPTS 6

/* The state of a plan's attempt, as the caller sees it. */
enum {
    RNDZ_SYN_NONE, /* no socket: not started yet, or the last attempt failed */
    RNDZ_SYN_BUSY  /* a socket is connecting: the kernel's to finish */
};
/* What the plan asks for. */
enum { RNDZ_SYN_IDLE, RNDZ_SYN_START };

typedef struct rndz__synplan {
    uint64_t coord_at, deadline, last_start;
    int attempts;
} rndz__synplan;

/* The relayed-path delay D for the RTTs to the server (0: unknown; the other's is used). */
RNDZ_INTERNAL uint32_t rndz__synplan_delay(uint32_t rtt_listener_ms, uint32_t rtt_connector_ms);
RNDZ_INTERNAL void rndz__synplan_init(rndz__synplan *p, uint64_t now, uint32_t delay_ms,
                                      uint64_t deadline);
/* At `now`, with the attempt's socket in `state`: START (open a socket and connect) or IDLE.
 * *wake: when to ask again (UINT64_MAX: never, the plan is over). The caller counts on the
 * plan being called at *wake. */
RNDZ_INTERNAL int rndz__synplan_step(rndz__synplan *p, uint64_t now, int state, uint64_t *wake);

#endif
