/* srvset.h: server sets. Each id lives on a few of the servers a client knows, chosen by
 * rendezvous (highest-random-weight) hashing, so that every client that knows the same servers
 * (in any order) picks the same few for an id, and adding or losing a server moves only that
 * server's share of ids. No coordination between servers.
 *
 * The hash (README, "Server sets"; vectors in Tests/vectors/hrw.txt):
 *     weight(server, id) = the first 8 bytes, big-endian, of SHA-256(name || 0x00 || id)
 * where name is the server's address in rndz's canonical text form ("192.0.2.1:8888",
 * "[2001:db8::1]:8888": rndz_addr_format of the resolved address, IPv4-mapped addresses as
 * IPv4). Servers are ranked by weight, highest first; equal weights by name (strcmp). An id is
 * registered with the first K of its ranking (rndz_client_options.servers_per_id, default 2;
 * all when N <= K) and asked for there.
 *
 * Failover (rndz__srvset_pick, a pure function of what the links know): the servers a
 * listener keeps are the first of the ranking that are up until K are up; those ranked above
 * are kept too (they are pinged, so one that comes back is used again). */
#ifndef RNDZ_SRVSET_H
#define RNDZ_SRVSET_H

#include "internal.h"

#define RNDZ_SERVERS_PER_ID_DEFAULT 2

RNDZ_INTERNAL uint64_t rndz__hrw_weight(const char *name, const char *id, size_t len);
/* order[0..n) = the indices of names[0..n) ranked for id (RNDZ_ADDRSTRLEN-sized strings). */
RNDZ_INTERNAL void rndz__hrw_rank(const char *id, size_t len, const char (*names)[RNDZ_ADDRSTRLEN],
                                  size_t n, uint8_t *order);
/* Which servers to keep (keep[i], by server index), given the ranking `order`, k, and which
 * are down (down[i]): walking the ranking, every server is kept until k kept ones are not
 * down. Returns how many kept servers are up (< k when too few are). */
RNDZ_INTERNAL size_t rndz__srvset_pick(const uint8_t *order, size_t n, size_t k, const bool *down,
                                       bool *keep);

#endif
