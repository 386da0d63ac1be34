/* srvlink.h: a listener's link to one rendezvous server, as a pure state machine on `now`
 * (like synplan.h): when to ping, when a silent server counts as lost, and, for TCP, when to
 * connect again and with what backoff. The listeners (udp_listen.c, tcp_listen.c) do the I/O
 * it asks for and tell it what came back; Tests/unit/test_srvlink.c drives it on simulated
 * time.
 *
 * Datagram links (UDP) are always "up": until a server first answers (or after it was lost)
 * they ping every FIRST_PING_MS, so a lost first ping costs a second, not a keepalive; once
 * answered, every keepalive with +-20% jitter, and a keepalive not answered within
 * FIRST_PING_MS is sent again at that pace until it is (one lost datagram costs a second, and
 * a server that went away is noticed within DOWN_MS of the next keepalive, see below). A
 * server silent for LOST_INTERVALS keepalives (+1 s) is lost: a ping at once, then fast pings
 * until it answers (a restarted server forgot us). A server that restarts within that time is
 * registered again by the next keepalive.
 *
 * Stream links (TCP) go DOWN -> CONNECTING -> UP. Up, they ping every jittered keepalive; a
 * connection that shows nothing for LOST_INTERVALS keepalives (+1 s) is dead (a Pong answers
 * every Ping, so that is not loss, it is a broken path). A link that goes down connects again
 * after a backoff that starts at BACKOFF_MIN_MS (a restarting server is usually back within
 * seconds) and doubles up to BACKOFF_MAX_MS (one down for long is not hammered); a Pong
 * resets it. */
#ifndef RNDZ_SRVLINK_H
#define RNDZ_SRVLINK_H

#include "internal.h"

#define RNDZ_LINK_FIRST_PING_MS 1000
#define RNDZ_LINK_LOST_INTERVALS 3
#define RNDZ_LINK_BACKOFF_MIN_MS 1000
#define RNDZ_LINK_BACKOFF_MAX_MS 30000
/* Unanswered this long since the link started (or since a stream broke), or a keepalive Ping
 * unanswered this long, it is down: a server set then registers with the next server of the
 * id's ranking (srvset.h), and returns when it answers again. So a server that goes away costs
 * its listeners at most one keepalive (jittered: 1.2 x keepalive_ms) + DOWN_MS. A lost link
 * (silent for LOST_INTERVALS keepalives) is down at once. */
#define RNDZ_LINK_DOWN_MS 3000

enum { RNDZ_LINK_DOWN, RNDZ_LINK_CONNECTING, RNDZ_LINK_UP };
/* What rndz__link_tick asks of its caller (bits). */
enum {
    RNDZ_LINK_PING = 1,    /* send a Ping now */
    RNDZ_LINK_CONNECT = 2, /* stream: connect now (the link is CONNECTING) */
    RNDZ_LINK_LOST = 4,    /* the server went silent; stream: close the connection (the link
                            * is DOWN, its reconnect scheduled) */
};

typedef struct rndz__srvlink {
    uint8_t state;
    bool stream;
    bool answered; /* a Pong came since the link (re)started or was lost */
    uint32_t keepalive_ms;
    uint32_t backoff_ms; /* stream: the next reconnect's delay */
    uint32_t rng;        /* jitter */
    uint64_t next_ping, last_rx, retry_at;
    uint64_t silent_since; /* unanswered since (UINT64_MAX: not yet ticked) */
    uint64_t ping_out;     /* answered: when the oldest unanswered keepalive Ping went
                            * (UINT64_MAX: none) */
} rndz__srvlink;

/* A keepalive interval with +-20% jitter from `r` (any random number), never above 25 s:
 * conntrack forgets one-way UDP flows after 30 s, and the jitter must not push us past it. */
RNDZ_INTERNAL uint32_t rndz__jitter(uint32_t base_ms, uint32_t r);

/* A link that starts now: a datagram link pings at the first tick, a stream link connects. */
RNDZ_INTERNAL void rndz__link_init(rndz__srvlink *k, bool stream, uint32_t keepalive_ms,
                                   uint32_t seed);
/* What is due at `now` (RNDZ_LINK_* bits). */
RNDZ_INTERNAL unsigned rndz__link_tick(rndz__srvlink *k, uint64_t now);
/* When the link next needs a tick (UINT64_MAX: not before an event). */
RNDZ_INTERNAL uint64_t rndz__link_wake(const rndz__srvlink *k);
/* A Ping at the next tick (one that asks something new, e.g. the NAT check's question). */
RNDZ_INTERNAL void rndz__link_ping_now(rndz__srvlink *k, uint64_t now);
/* Any bytes from the server (stream: keeps a connection alive). */
RNDZ_INTERNAL void rndz__link_on_rx(rndz__srvlink *k, uint64_t now);
/* A Pong. true if it is the first answer since the link started or was lost. */
RNDZ_INTERNAL bool rndz__link_on_pong(rndz__srvlink *k, uint64_t now);
/* Down (RNDZ_LINK_DOWN_MS unanswered, or lost) at `now`? */
RNDZ_INTERNAL bool rndz__link_is_down(const rndz__srvlink *k, uint64_t now);
/* When it will count as down if nothing answers (UINT64_MAX: answered). */
RNDZ_INTERNAL uint64_t rndz__link_down_at(const rndz__srvlink *k);
/* Stream: the connection is established; a Ping goes at the next tick. */
RNDZ_INTERNAL void rndz__link_on_connected(rndz__srvlink *k, uint64_t now);
/* Stream: the connection failed or broke; returns the delay before the next connect. */
RNDZ_INTERNAL uint32_t rndz__link_down(rndz__srvlink *k, uint64_t now);

#endif
