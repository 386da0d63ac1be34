/* ifaddr.h: this host's interface addresses: the candidates a peer advertises (ext.h field
 * 17) and whether an address is on one of our own subnets. */
#ifndef RNDZ_IFADDR_H
#define RNDZ_IFADDR_H

#include "ext.h"

/* This host's candidate addresses for a socket bound to `local` (its port, its family; a
 * dual-stack socket gets IPv4 and IPv6 ones). Loopback, link-local and unspecified addresses
 * are left out. Returns the count. */
RNDZ_INTERNAL size_t rndz__local_cands(const struct sockaddr_storage *local, bool dual,
                                       rndz__ext *e);

/* True if `a` lies in the subnet of one of this host's interfaces (a peer on our own LAN). */
RNDZ_INTERNAL bool rndz__addr_on_local_subnet(const struct sockaddr_storage *a);

#endif
