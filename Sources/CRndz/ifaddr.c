/* ifaddr.c: see ifaddr.h. */
#include "ifaddr.h"

#include <ifaddrs.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <string.h>

size_t rndz__local_cands(const struct sockaddr_storage *local, bool dual, rndz__ext *e) {
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) < 0) return e->ncands;
    uint16_t port = rndz__addr_port(local);
    for (int pass = 0; pass < 2; pass++) { /* IPv4 first, then IPv6 */
        for (struct ifaddrs *i = ifs; i && e->ncands < RNDZ_MAX_CANDS; i = i->ifa_next) {
            if (!i->ifa_addr || !(i->ifa_flags & IFF_UP) || (i->ifa_flags & IFF_LOOPBACK))
                continue;
            struct sockaddr_storage ss = {0};
            int fam = i->ifa_addr->sa_family;
            if (fam != (pass == 0 ? AF_INET : AF_INET6)) continue;
            if (fam == AF_INET) {
                if (local->ss_family != AF_INET && !dual) continue;
                struct sockaddr_in s4;
                memcpy(&s4, i->ifa_addr, sizeof s4);
                uint32_t a = ntohl(s4.sin_addr.s_addr);
                if ((a >> 24) == 127 || (a >> 16) == 0xa9fe || a == 0) continue;
                s4.sin_port = port;
                memcpy(&ss, &s4, sizeof s4);
            } else {
                if (local->ss_family != AF_INET6) continue;
                struct sockaddr_in6 s6;
                memcpy(&s6, i->ifa_addr, sizeof s6);
                if (IN6_IS_ADDR_LINKLOCAL(&s6.sin6_addr) || IN6_IS_ADDR_LOOPBACK(&s6.sin6_addr) ||
                    IN6_IS_ADDR_UNSPECIFIED(&s6.sin6_addr) || IN6_IS_ADDR_V4MAPPED(&s6.sin6_addr))
                    continue;
                s6.sin6_port = port;
                s6.sin6_scope_id = 0;
                memcpy(&ss, &s6, sizeof s6);
            }
            rndz_addr_format((struct sockaddr *)&ss, e->cands[e->ncands], RNDZ_ADDRSTRLEN);
            e->ncands++;
        }
    }
    freeifaddrs(ifs);
    return e->ncands;
}

bool rndz__addr_on_local_subnet(const struct sockaddr_storage *a) {
    struct sockaddr_storage x = *a;
    rndz__addr_unmap(&x);
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) < 0) return false;
    bool on = false;
    for (struct ifaddrs *i = ifs; i && !on; i = i->ifa_next) {
        if (!i->ifa_addr || !i->ifa_netmask || i->ifa_addr->sa_family != x.ss_family) continue;
        const uint8_t *ip, *mine, *mask;
        size_t len;
        if (x.ss_family == AF_INET) {
            ip = (const uint8_t *)&((const struct sockaddr_in *)&x)->sin_addr;
            mine = (const uint8_t *)&((const struct sockaddr_in *)i->ifa_addr)->sin_addr;
            mask = (const uint8_t *)&((const struct sockaddr_in *)i->ifa_netmask)->sin_addr;
            len = 4;
        } else {
            ip = ((const struct sockaddr_in6 *)&x)->sin6_addr.s6_addr;
            mine = ((const struct sockaddr_in6 *)i->ifa_addr)->sin6_addr.s6_addr;
            mask = ((const struct sockaddr_in6 *)i->ifa_netmask)->sin6_addr.s6_addr;
            len = 16;
        }
        bool same = true;
        for (size_t k = 0; k < len && same; k++) same = ((ip[k] ^ mine[k]) & mask[k]) == 0;
        on = same;
    }
    freeifaddrs(ifs);
    return on;
}
