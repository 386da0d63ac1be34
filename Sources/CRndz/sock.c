/* sock.c: sockets that share one local port (SO_REUSEADDR + SO_REUSEPORT). */
#include "internal.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int rndz__sock_set_nonblock(int fd, bool on) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) return -errno;
    fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, fl) < 0 ? -errno : 0;
}

int rndz__sock_local(int fd, struct sockaddr_storage *out, socklen_t *len) {
    socklen_t sl = sizeof *out;
    if (getsockname(fd, (struct sockaddr *)out, &sl) < 0) return -errno;
    rndz__addr_unmap(out);
    if (len) *len = rndz__addr_len((struct sockaddr *)out);
    return 0;
}

int rndz__sock_bind(int socktype, const struct sockaddr *local, const rndz__sockopts *o) {
    socklen_t sl = rndz__addr_len(local);
    if (!sl) return -EAFNOSUPPORT;
    int family = local->sa_family;
    int fd = socket(family, socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1, rc = 0;
    if (o && o->reuse_addr && !o->reuse &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) {
        rc = -errno;
        goto fail;
    }
    if (o && o->reuse) {
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
            rc = -errno;
            goto fail;
        }
    }
    if (family == AF_INET6 && o && o->v6only >= 0) {
        int v = o->v6only;
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v, sizeof v) < 0) {
            rc = -errno;
            goto fail;
        }
    }
    if (o && o->config) {
        rc = o->config(fd, family, socktype, o->config_user);
        if (rc > 0) rc = 0;
        if (rc < 0) goto fail;
    }
    if (bind(fd, local, sl) < 0) {
        rc = -errno;
        goto fail;
    }
    return fd;
fail:
    close(fd);
    return rc;
}

/* Linux 6.15 added TCP_RTO_MAX_MS; older C libraries do not name it. */
#ifndef TCP_RTO_MAX_MS
#define TCP_RTO_MAX_MS 44
#endif

/* The kernel's default cap, read once: the value a connection gets back after rndz's own. */
static int default_rto_max_ms(void) {
    static int cached; /* 0: not read yet; racing readers read the same value */
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v) return v;
    v = 120000; /* TCP_RTO_MAX */
    FILE *f = fopen("/proc/sys/net/ipv4/tcp_rto_max_ms", "re");
    if (f) {
        int got;
        if (fscanf(f, "%d", &got) == 1 && got >= 1000) v = got;
        fclose(f);
    }
    __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    return v;
}

int rndz__sock_tcp_rto_max(int fd, uint32_t ms) {
    int v = ms ? (int)(ms > 120000 ? 120000 : ms < 1000 ? 1000 : ms) : default_rto_max_ms();
    if (setsockopt(fd, IPPROTO_TCP, TCP_RTO_MAX_MS, &v, sizeof v) < 0) return -errno;
    return 0;
}

/* The C library's struct tcp_info may be longer than the running kernel's: a field counts
 * when the kernel filled it. */
#define TI_HAS(tl, field) ((tl) >= offsetof(struct tcp_info, field) + sizeof(uint32_t))

uint32_t rndz__sock_tcp_rtt_ms(int fd) {
    struct tcp_info ti;
    socklen_t tl = sizeof ti;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) < 0 || !TI_HAS(tl, tcpi_rtt)) return 0;
    return (ti.tcpi_rtt + 999) / 1000;
}

void rndz__sock_tcp_log(int fd, const char *who) {
    struct tcp_info ti;
    socklen_t tl = sizeof ti;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) < 0 || !TI_HAS(tl, tcpi_total_retrans))
        return;
    RNDZ_LOG(RNDZ_LOG_DEBUG, "%s: rtt %u us, rto %u ms, %u retransmitted in the handshake", who,
             ti.tcpi_rtt, ti.tcpi_rto / 1000, ti.tcpi_total_retrans);
}
