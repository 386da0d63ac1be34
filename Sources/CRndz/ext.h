/* ext.h: protocol extensions that v1 peers skip (unknown top-level protobuf fields).
 *
 *   Request / Response, top level:
 *     17: cand   repeated string  the sender's local candidate addresses ("10.1.0.5:4000")
 *     18: nonce  fixed64          the connect session (chosen by the connector)
 *     19: rtt    uint32           the connector's round trip to the server, ms (Isync, and
 *                                 the Fsync made of it): the TCP listener times its
 *                                 coordinated SYN with it (synplan.h)
 *   A connector puts its candidates and session in Isync; a server that knows these fields
 *   copies them into the Fsync it forwards; the listener answers with its own candidates in
 *   Rsync, which the server copies into the Redirect. Their presence tells each side that
 *   the other speaks probes; with a v1 peer or a v1 server they are absent and both fall back
 *   to v1 behaviour.
 *
 *   Probes (peer to peer, only between peers that both sent extensions): 24 bytes
 *     magic[8] "\xd5rndzPRB", type[1] (1 probe, 2 ack, 3 confirm), 0[3], seq[4] BE, nonce[8] BE.
 *   A kernel filter keyed on the magic keeps them from the application's sockets. */
#ifndef RNDZ_EXT_H
#define RNDZ_EXT_H

#include "internal.h"

#define RNDZ_MAX_CANDS 8
#define RNDZ_PROBE_LEN 24
#define RNDZ_PROBE_MAGIC_HI 0xd5726e64u /* "\xd5rnd" */
#define RNDZ_PROBE_MAGIC_LO 0x7a505242u /* "zPRB" */

/* probe: "are you there?"; ack: "yes" (answers a probe, same seq); confirm: "your ack
 * reached me: the path works both ways" (the connector, once, when it picks the path). */
enum { RNDZ_PROBE = 1, RNDZ_PROBE_ACK = 2, RNDZ_PROBE_CONFIRM = 3 };

typedef struct rndz__ext {
    size_t ncands;
    char cands[RNDZ_MAX_CANDS][RNDZ_ADDRSTRLEN];
    bool has_nonce;
    uint64_t nonce;
    uint32_t rtt_ms; /* 0: absent */
} rndz__ext;

/* Find the extension fields of an encoded Request or Response (0; *out empty if none). Only
 * called on messages that already decoded. */
RNDZ_INTERNAL int rndz__ext_decode(const uint8_t *buf, size_t len, rndz__ext *out);
/* Append the extension fields to an encoded message of length n in buf (capacity cap).
 * Returns the new length, or RNDZ_E_TOOBIG / RNDZ_E_NOSPACE. */
RNDZ_INTERNAL int rndz__ext_append(const rndz__ext *e, uint8_t *buf, size_t n, size_t cap);
/* True if the extension carries anything. */
RNDZ_INTERNAL bool rndz__ext_present(const rndz__ext *e);

RNDZ_INTERNAL void rndz__probe_encode(uint8_t out[RNDZ_PROBE_LEN], int type, uint32_t seq,
                                      uint64_t nonce);
/* 1 and the fields if buf is a probe, else 0. */
RNDZ_INTERNAL int rndz__probe_decode(const uint8_t *buf, size_t len, int *type, uint32_t *seq,
                                     uint64_t *nonce);
/* Attach a socket filter that drops probes (for sockets handed to the application). */
RNDZ_INTERNAL int rndz__probe_filter_drop(int fd);
/* Attach a reuseport steering program to the group of `fd`: probes go to socket index
 * probe_idx, everything else to other_idx. */
RNDZ_INTERNAL int rndz__probe_steer(int fd, unsigned probe_idx, unsigned other_idx);
/* This host's candidate addresses for a socket bound to `local` (its port, its family; a
 * dual-stack socket gets IPv4 and IPv6 ones). Loopback, link-local and unspecified addresses
 * are left out. Returns the count. */
RNDZ_INTERNAL size_t rndz__local_cands(const struct sockaddr_storage *local, bool dual,
                                       rndz__ext *e);

/* True if `a` lies in the subnet of one of this host's interfaces (a peer on our own LAN). */
RNDZ_INTERNAL bool rndz__addr_on_local_subnet(const struct sockaddr_storage *a);

#endif
