/* ext.c: see ext.h. */
#include "ext.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <linux/filter.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static int rd_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    *v = 0;
    for (int s = 0; s < 64; s += 7) {
        if (*p >= end) return -1;
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << s;
        if (!(b & 0x80)) return 0;
    }
    return -1;
}

bool rndz__ext_present(const rndz__ext *e) {
    return e->ncands > 0 || e->has_nonce || e->rtt_ms;
}

int rndz__ext_decode(const uint8_t *buf, size_t len, rndz__ext *out) {
    memset(out, 0, sizeof *out);
    const uint8_t *p = buf, *end = buf + len;
    while (p < end) {
        uint64_t tag, v;
        if (rd_varint(&p, end, &tag)) return RNDZ_E_TRUNCATED;
        unsigned field = (unsigned)(tag >> 3), wt = (unsigned)(tag & 7);
        switch (wt) {
        case 0:
            if (rd_varint(&p, end, &v)) return RNDZ_E_TRUNCATED;
            if (field == 19) out->rtt_ms = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
            break;
        case 1:
            if (end - p < 8) return RNDZ_E_TRUNCATED;
            if (field == 18) {
                uint64_t n = 0;
                for (int i = 7; i >= 0; i--) n = n << 8 | p[i]; /* fixed64 is little endian */
                out->nonce = n;
                out->has_nonce = true;
            }
            p += 8;
            break;
        case 2:
            if (rd_varint(&p, end, &v) || v > (uint64_t)(end - p)) return RNDZ_E_TRUNCATED;
            if (field == 17 && out->ncands < RNDZ_MAX_CANDS && v > 0 && v < RNDZ_ADDRSTRLEN) {
                memcpy(out->cands[out->ncands], p, v);
                out->cands[out->ncands][v] = 0;
                out->ncands++;
            }
            p += v;
            break;
        case 5:
            if (end - p < 4) return RNDZ_E_TRUNCATED;
            p += 4;
            break;
        default: return RNDZ_E_WIRETYPE;
        }
    }
    return 0;
}

int rndz__ext_append(const rndz__ext *e, uint8_t *buf, size_t n, size_t cap) {
    size_t need = 0;
    for (size_t i = 0; i < e->ncands; i++) need += 3 + strlen(e->cands[i]);
    if (e->has_nonce) need += 2 + 8;
    if (e->rtt_ms) need += 2 + 5;
    if (n + need > RNDZ_MAX_MSG) return RNDZ_E_TOOBIG;
    if (n + need > cap) return RNDZ_E_NOSPACE;
    for (size_t i = 0; i < e->ncands; i++) {
        size_t l = strlen(e->cands[i]); /* < 64: one-byte length */
        buf[n++] = (17 << 3 | 2) | 0x80; /* field 17 takes a two-byte tag: 0x8a 0x01 */
        buf[n++] = 1;
        buf[n++] = (uint8_t)l;
        memcpy(buf + n, e->cands[i], l);
        n += l;
    }
    if (e->has_nonce) {
        buf[n++] = (18 << 3 | 1) | 0x80; /* two-byte tag: 0x91 0x01 */
        buf[n++] = 1;
        for (int i = 0; i < 8; i++) buf[n++] = (uint8_t)(e->nonce >> (8 * i));
    }
    if (e->rtt_ms) {
        buf[n++] = (19 << 3 | 0) | 0x80; /* two-byte tag: 0x98 0x01 */
        buf[n++] = 1;
        for (uint32_t v = e->rtt_ms;; v >>= 7) {
            buf[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
            if (v <= 0x7f) break;
        }
    }
    return (int)n;
}

void rndz__probe_encode(uint8_t out[RNDZ_PROBE_LEN], int type, uint32_t seq, uint64_t nonce) {
    uint32_t hi = htonl(RNDZ_PROBE_MAGIC_HI), lo = htonl(RNDZ_PROBE_MAGIC_LO), s = htonl(seq);
    memcpy(out, &hi, 4);
    memcpy(out + 4, &lo, 4);
    out[8] = (uint8_t)type;
    out[9] = out[10] = out[11] = 0;
    memcpy(out + 12, &s, 4);
    for (int i = 0; i < 8; i++) out[16 + i] = (uint8_t)(nonce >> (56 - 8 * i));
}

int rndz__probe_decode(const uint8_t *buf, size_t len, int *type, uint32_t *seq,
                       uint64_t *nonce) {
    if (len != RNDZ_PROBE_LEN) return 0;
    uint32_t hi, lo, s;
    memcpy(&hi, buf, 4);
    memcpy(&lo, buf + 4, 4);
    if (ntohl(hi) != RNDZ_PROBE_MAGIC_HI || ntohl(lo) != RNDZ_PROBE_MAGIC_LO) return 0;
    if (buf[8] < RNDZ_PROBE || buf[8] > RNDZ_PROBE_CONFIRM) return 0;
    if (buf[9] | buf[10] | buf[11]) return 0; /* reserved, always 0: a garbled probe */
    *type = buf[8];
    memcpy(&s, buf + 12, 4);
    *seq = ntohl(s);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n = n << 8 | buf[16 + i];
    *nonce = n;
    return 1;
}

/* Classic BPF. A socket filter on a UDP socket sees the datagram from its UDP header (8
 * bytes) on; a reuseport program sees it from the payload on. Both check the magic: the drop
 * filter returns 0 (drop) for a probe, the steering program the socket index to deliver to.
 * Lengths are checked first, so a short datagram never ends the program by a failed load. */
#define UDP_HDR 8
int rndz__probe_filter_drop(int fd) {
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, UDP_HDR + RNDZ_PROBE_LEN, 0, 5), /* not a probe's
                                                                              length: keep */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, UDP_HDR),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, RNDZ_PROBE_MAGIC_HI, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, UDP_HDR + 4),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, RNDZ_PROBE_MAGIC_LO, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0),          /* a probe: drop */
        BPF_STMT(BPF_RET | BPF_K, 0xffffffffu) /* anything else: keep */
    };
    struct sock_fprog prog;
    memset(&prog, 0, sizeof prog); /* no uninitialised padding reaches the kernel */
    prog.len = (unsigned short)RNDZ_ARRAY_LEN(code);
    prog.filter = code;
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0 ? -errno : 0;
}

int rndz__probe_steer(int fd, unsigned probe_idx, unsigned other_idx) {
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, RNDZ_PROBE_LEN, 0, 4),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, RNDZ_PROBE_MAGIC_HI, 0, 2),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 4),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, RNDZ_PROBE_MAGIC_LO, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, other_idx),
        BPF_STMT(BPF_RET | BPF_K, probe_idx),
    };
    struct sock_fprog prog;
    memset(&prog, 0, sizeof prog);
    prog.len = (unsigned short)RNDZ_ARRAY_LEN(code);
    prog.filter = code;
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof prog) < 0 ? -errno
                                                                                       : 0;
}

size_t rndz__local_cands(const struct sockaddr_storage *local, bool dual, rndz__ext *e) {
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) < 0) return e->ncands;
    uint16_t port = local->ss_family == AF_INET ? ((const struct sockaddr_in *)local)->sin_port
                                                : ((const struct sockaddr_in6 *)local)->sin6_port;
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
