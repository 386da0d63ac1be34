/* probe.c: see probe.h. */
#include "probe.h"
#include "relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <string.h>
#include <sys/socket.h>

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
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, UDP_HDR + 8, 0, 6), /* shorter than a magic: keep */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, UDP_HDR),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, RNDZ_PROBE_MAGIC_HI, 0, 4),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, UDP_HDR + 4),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, RNDZ_PROBE_MAGIC_LO, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, RNDZ_RELAY_MAGIC_LO, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0),          /* a probe or a relay message: drop */
        BPF_STMT(BPF_RET | BPF_K, 0xffffffffu) /* anything else: keep */
    };
    struct sock_fprog prog;
    memset(&prog, 0, sizeof prog); /* no uninitialised padding reaches the kernel */
    prog.len = (unsigned short)RNDZ_ARRAY_LEN(code);
    prog.filter = code;
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0 ? -errno : 0;
}

bool rndz__probe_filtered(const uint8_t *buf, size_t n) {
    if (n < 8) return false;
    uint32_t hi, lo;
    memcpy(&hi, buf, 4);
    memcpy(&lo, buf + 4, 4);
    hi = ntohl(hi);
    lo = ntohl(lo);
    return hi == RNDZ_PROBE_MAGIC_HI && (lo == RNDZ_PROBE_MAGIC_LO || lo == RNDZ_RELAY_MAGIC_LO);
}

void rndz__probe_drain(int fd) {
    for (int i = 0; i < 256; i++) { /* bounded: the filter is on, nothing new joins them */
        uint8_t b[8];
        ssize_t n = recv(fd, b, sizeof b, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n < 0) continue; /* an error reported (and cleared) by this call */
        if (!rndz__probe_filtered(b, (size_t)n)) return;
        (void)recv(fd, b, sizeof b, MSG_DONTWAIT);
    }
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

void rndz__probe_send(int fd, int type, uint32_t seq, uint64_t nonce,
                      const struct sockaddr_storage *to) {
    uint8_t b[RNDZ_PROBE_LEN];
    rndz__probe_encode(b, type, seq, nonce);
    sendto(fd, b, sizeof b, MSG_DONTWAIT, (const struct sockaddr *)to,
           rndz__addr_len((const struct sockaddr *)to));
}
