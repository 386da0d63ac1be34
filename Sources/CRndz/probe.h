/* probe.h: the probes peers exchange to verify a path (punch.h runs them), and the kernel
 * programs that keep them from the application's sockets.
 *
 *   Peer to peer, only between peers that both sent extensions (ext.h): 24 bytes
 *     magic[8] "\xd5rndzPRB", type[1] (1 probe, 2 ack, 3 confirm), 0[3], seq[4] BE, nonce[8] BE.
 *   A socket filter keyed on the magic drops them on sockets handed to the application; a
 *   reuseport program steers them to the listener's own probe socket. */
#ifndef RNDZ_PROBE_H
#define RNDZ_PROBE_H

#include "internal.h"

#define RNDZ_PROBE_LEN 24
#define RNDZ_PROBE_MAGIC_HI 0xd5726e64u /* "\xd5rnd" */
#define RNDZ_PROBE_MAGIC_LO 0x7a505242u /* "zPRB" */

/* probe: "are you there?"; ack: "yes" (answers a probe, same seq); confirm: "your ack
 * reached me: the path works both ways" (the connector, once, when it picks the path). */
enum { RNDZ_PROBE = 1, RNDZ_PROBE_ACK = 2, RNDZ_PROBE_CONFIRM = 3 };

RNDZ_INTERNAL void rndz__probe_encode(uint8_t out[RNDZ_PROBE_LEN], int type, uint32_t seq,
                                      uint64_t nonce);
/* 1 and the fields if buf is a probe, else 0. */
RNDZ_INTERNAL int rndz__probe_decode(const uint8_t *buf, size_t len, int *type, uint32_t *seq,
                                     uint64_t *nonce);
/* Attach a socket filter that drops probes and relay control messages (relay.h: the same
 * first four bytes), for sockets handed to the application. */
RNDZ_INTERNAL int rndz__probe_filter_drop(int fd);
/* Would the filter of rndz__probe_filter_drop drop this datagram (its first n bytes)? */
RNDZ_INTERNAL bool rndz__probe_filtered(const uint8_t *buf, size_t n);
/* Read and discard what the filter would have dropped from the head of fd's queue (it came
 * before the filter was attached), up to the first other datagram, which stays. */
RNDZ_INTERNAL void rndz__probe_drain(int fd);
/* Attach a reuseport steering program to the group of `fd`: probes go to socket index
 * probe_idx, everything else to other_idx. */
RNDZ_INTERNAL int rndz__probe_steer(int fd, unsigned probe_idx, unsigned other_idx);
/* Encode and send one probe to `to` (best effort: a lost probe is retried by the plan). */
RNDZ_INTERNAL void rndz__probe_send(int fd, int type, uint32_t seq, uint64_t nonce,
                                    const struct sockaddr_storage *to);

#endif
