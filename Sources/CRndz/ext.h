/* ext.h: protocol extensions that v1 peers skip (unknown top-level protobuf fields).
 *
 *   Request / Response, top level:
 *     17: cand   repeated string  the sender's local candidate addresses ("10.1.0.5:4000")
 *     18: nonce  fixed64          the connect session (chosen by the connector)
 *     19: rtt    uint32           the connector's round trip to the server, ms (Isync, and
 *                                 the Fsync made of it): the TCP listener times its
 *                                 coordinated SYN with it (synplan.h)
 *     20: relay  uint32           Isync: the connector can use a relay (1), or wants it at
 *                                 once (2); Rsync: the listener will join one (1, 2)
 *     21: relay_addr string       Fsync, Redirect: the server's relay ("[::]:9000": a
 *                                 wildcard host means the server's own address)
 *     22: relay_token bytes[32]   Fsync, Redirect: the token that joins it (relay.h)
 *     23: query  uint32           Ping: what the sender asks of the server (NAT checks):
 *                                 1 its address as seen (24) and the server's other
 *                                 addresses (25); 2 the Pong from another of the server's
 *                                 addresses (filtering); 4 do not register the id; 8 say
 *                                 whether this Ping took the id over (30; a listener)
 *     24: observed string         Pong: the source address the server saw
 *     25: alt    repeated string  Pong: the server's own specific listen addresses
 *     26: nat    uint32           Isync, Rsync (copied into Fsync, Redirect): the sender's NAT
 *                                 as its NAT check found it (RNDZ_NAT_*)
 *     27: mapped string           Rsync (copied into Redirect): which of the candidates is a
 *                                 port mapping at the listener's gateway (pmp.h)
 *     29: elsewhere uint32        Redirect "not found" to a client that probes: 1 the target is
 *                                 registered over the other transport (UDP / TCP)
 *     30: taken uint32            Pong to a Ping whose query asks (RNDZ__Q_TAKEN, a listener's):
 *                                 1 this Ping took the id over from another address (TCP: from
 *                                 another connection), whose connects now come here
 *     28: pad    bytes            Ping with a query: zeros, so the Pong (with 24 and 25) is
 *                                 no larger than the Ping: a spoofed query amplifies nothing
 *   The server fills 21 and 22 itself (never copied from a request) when it has a relay and
 *   the request asked for one (20); a Redirect gets them only when both peers asked.
 *   A connector puts its candidates and session in Isync; a server that knows these fields
 *   copies them into the Fsync it forwards; the listener answers with its own candidates in
 *   Rsync, which the server copies into the Redirect. Their presence tells each side that
 *   the other speaks probes; with a v1 peer or a v1 server they are absent and both fall back
 *   to v1 behaviour. The probes that
 *   peers exchange then are probe.h's; the addresses put in `cand`, ifaddr.h's. */
#ifndef RNDZ_EXT_H
#define RNDZ_EXT_H

#include "internal.h"

#define RNDZ_MAX_CANDS 8
#define RNDZ_MAX_ALT 4
enum { RNDZ__Q_OBSERVED = 1, RNDZ__Q_OTHER = 2, RNDZ__Q_NOREG = 4, RNDZ__Q_TAKEN = 8 };
/* A NAT check's Ping pads itself this much: room for the address seen and two others in the
 * Pong (IPv6 ones included), which the server trims to the request's size. */
#define RNDZ__Q_PAD 160

typedef struct rndz__ext {
    size_t ncands;
    char cands[RNDZ_MAX_CANDS][RNDZ_ADDRSTRLEN];
    bool has_nonce;
    uint64_t nonce;
    uint32_t rtt_ms; /* 0: absent */
    uint32_t relay;  /* 0: absent */
    char relay_addr[RNDZ_ADDRSTRLEN]; /* "": absent */
    bool has_token;
    uint8_t token[32];
    uint32_t query;  /* 0: absent */
    char observed[RNDZ_ADDRSTRLEN];
    size_t nalt;
    char alt[RNDZ_MAX_ALT][RNDZ_ADDRSTRLEN];
    uint32_t nat;    /* 0: absent (unknown) */
    char mapped[RNDZ_ADDRSTRLEN]; /* "": absent */
    uint32_t elsewhere; /* 29: 0 absent */
    uint32_t taken;     /* 30: 0 absent */
    uint16_t pad;    /* 28 (< 512): bytes of zeros that make a NAT check's Ping as large as the Pong
                      * it asks for (the server answers no larger than the request) */
} rndz__ext;

/* Find the extension fields of an encoded Request or Response (0; *out empty if none). Only
 * called on messages that already decoded. */
RNDZ_INTERNAL int rndz__ext_decode(const uint8_t *buf, size_t len, rndz__ext *out);
/* Append the extension fields to an encoded message of length n in buf (capacity cap).
 * Returns the new length, or RNDZ_E_TOOBIG / RNDZ_E_NOSPACE. */
RNDZ_INTERNAL int rndz__ext_append(const rndz__ext *e, uint8_t *buf, size_t n, size_t cap);
/* True if the extension carries anything. */
RNDZ_INTERNAL bool rndz__ext_present(const rndz__ext *e);

#endif
