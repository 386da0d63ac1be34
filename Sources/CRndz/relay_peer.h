/* relay_peer.h: a peer's side of a relay session (relay.h has the relay's): what the UDP and
 * TCP connectors and listeners share.
 *
 * The server's Fsync or Redirect brought the relay's address and a token (ext.h). The peer
 * opens a socket of its own toward the relay (any local port: the relay learns the address
 * from the join), joins, and waits for "ready" (the other peer joined too). Then the
 * connector, which chooses the path, sends "use" through the relay, and the listener answers
 * "ack": the relayed path is verified both ways, and both sides agree it is the one. Over UDP
 * joins and "use" are resent, 200 ms doubling to 1 s, until answered; over TCP each is sent
 * once.
 *
 * The connector commits to the relay when it joins: from then on it sends no confirm for a
 * direct path, so a listener that got no confirm waits for the relay's "use". */
#ifndef RNDZ_RELAY_PEER_H
#define RNDZ_RELAY_PEER_H

#include "client.h"
#include "relay.h"

#define RNDZ_RELAY_FIRST_RETRY_MS 200
#define RNDZ_RELAY_RETRY_CAP_MS 1000

typedef struct rndz__rpeer {
    int fd;                        /* -1 until opened */
    int socktype;
    int role;                      /* RNDZ_RELAY_ROLE_* */
    struct sockaddr_storage addr;  /* the relay */
    uint64_t nonce;
    uint8_t token[RNDZ_RELAY_TOKEN_LEN];
    int state;                     /* 0, RNDZ_RELAY_WAITING, RNDZ_RELAY_READY */
    bool done;                     /* connector: "ack" came; listener: "use" came */
    uint64_t next_send, sent_at;
    uint32_t wait_ms, rtt_ms;
} rndz__rpeer;

/* The relay a Fsync or Redirect offered, from its extension fields; `server` is the server
 * that sent it (a wildcard relay host means that server's address). false if none. */
RNDZ_INTERNAL bool rndz__rpeer_init(rndz__rpeer *r, const rndz__client *c, const rndz__ext *e,
                                    const struct sockaddr_storage *server, int role,
                                    int socktype);
/* Open the socket (UDP: connected; TCP: connecting) and send the join (TCP: once connected).
 * 0 or an error. */
RNDZ_INTERNAL int rndz__rpeer_open(rndz__rpeer *r, const rndz__client *c, uint64_t now);
/* UDP: resend what is unanswered if due; returns the next time it wants to run. */
RNDZ_INTERNAL uint64_t rndz__rpeer_tick(rndz__rpeer *r, uint64_t now);
/* The socket is readable: read relay messages (UDP: a datagram that is not one is left
 * queued; the connector takes it as the listener's "ack", the application's first bytes).
 * 0, or an error (the relay or the connection failed). */
RNDZ_INTERNAL int rndz__rpeer_readable(rndz__rpeer *r, uint64_t now);
/* TCP: the connect finished (writable): send the join. 0 or an error. */
RNDZ_INTERNAL int rndz__rpeer_connected(rndz__rpeer *r);
/* Hand the socket over: the relay's control messages filtered (UDP), blocking. Returns the
 * fd (the rpeer no longer owns it). */
RNDZ_INTERNAL int rndz__rpeer_take(rndz__rpeer *r, const rndz__client *c);
RNDZ_INTERNAL void rndz__rpeer_close(rndz__rpeer *r);

#endif
