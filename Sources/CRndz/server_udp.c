/* server_udp.c: the rendezvous server over UDP (BRIEF, "Server, UDP"): what is UDP's alone.
 * The protocol is server_proto.c's; here: the ids as addresses in the shared peer table
 * (peertab.h), datagrams in batches (recvmmsg) and replies in batches (sendmmsg), and expiry
 * in small steps. Every datagram's destination address comes with it (IP_PKTINFO,
 * IPV6_PKTINFO), and what goes back to its sender, or to a peer that registered through it,
 * leaves from that address: a server on a wildcard address of a host with several addresses
 * answers from the one each client wrote to (rndz__origin). */
#include "server.h"

#include <arpa/inet.h>
#include <string.h>
#include <unistd.h>

/* Expiry runs every SWEEP_MS and visits enough entries that a full pass over the table takes
 * a quarter of the expiry time: an id expires at most 25% late, and no step is long. */
#define SWEEP_MS 10
/* recvmmsg batches served per readiness event at most, so a flood cannot starve the timers
 * and TCP (worker 0 serves both). */
#define ROUNDS_PER_WAKE 8

int rndz__server_udp_pktinfo(int fd, int family) {
    int on = 1;
    /* An IPv6 socket reports IPv4 datagrams (dual stack) as IPV6_PKTINFO with the address in
     * IPv4-mapped form: one control message per datagram either way. */
    int rc = family == AF_INET ? setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on)
                               : setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof on);
    return rc < 0 ? -errno : 0;
}

/* Send what is queued for socket k, from index `from` on; returns the index past them. */
static unsigned flush_run(rndz__worker *w, unsigned from) {
    unsigned end = from;
    while (end < w->nout && w->out_k[end] == w->out_k[from]) end++;
    int fd = w->usock[w->out_k[from]].fd;
    unsigned done = from;
    while (done < end) {
        int n = sendmmsg(fd, w->out + done, end - done, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            /* EAGAIN (socket buffer full) or an error for the first datagram: drop it, go on
             * with the rest, as a plain sendto would have. */
            RNDZ_LOG(RNDZ_LOG_DEBUG, "udp: sendmmsg: %s", rndz_strerror(-errno));
            done++;
            continue;
        }
        RNDZ_WSTAT_ADD(w, udp_tx, (uint64_t)n);
        done += (unsigned)n;
    }
    return end;
}

void rndz__worker_flush(rndz__worker *w) {
    for (unsigned i = 0; i < w->nout;) i = flush_run(w, i);
    w->nout = 0;
}

/* Is `x` (IPv6, or IPv4 as ::ffff:a.b.c.d) an address a reply may come from: not a
 * broadcast, multicast or unspecified one? */
bool rndz__pktinfo_unicast(const struct in6_addr *x) {
    if (!IN6_IS_ADDR_V4MAPPED(x)) return !IN6_IS_ADDR_MULTICAST(x) && !IN6_IS_ADDR_UNSPECIFIED(x);
    uint32_t v = (uint32_t)x->s6_addr[12] << 24 | (uint32_t)x->s6_addr[13] << 16 |
                 (uint32_t)x->s6_addr[14] << 8 | x->s6_addr[15];
    return v != INADDR_BROADCAST && (v >> 28) != 0xe && v != INADDR_ANY;
}

size_t rndz__pktinfo_ctl(rndz__pktinfo_buf *ctl, const struct sockaddr_storage *src,
                         unsigned ifindex) {
    memset(ctl, 0, sizeof *ctl);
    struct cmsghdr *c = (struct cmsghdr *)ctl->buf;
    if (src->ss_family == AF_INET) {
        struct in_pktinfo pi = {.ipi_spec_dst = ((const struct sockaddr_in *)src)->sin_addr};
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof pi);
        memcpy(CMSG_DATA(c), &pi, sizeof pi);
        return CMSG_SPACE(sizeof pi);
    }
    struct in6_pktinfo pi = {.ipi6_addr = ((const struct sockaddr_in6 *)src)->sin6_addr,
                             .ipi6_ifindex = ifindex};
    c->cmsg_level = IPPROTO_IPV6;
    c->cmsg_type = IPV6_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof pi);
    memcpy(CMSG_DATA(c), &pi, sizeof pi);
    return CMSG_SPACE(sizeof pi);
}

/* The control message that makes a datagram leave from o->src. */
static void build_ctl(rndz__origin *o) { o->ctllen = rndz__pktinfo_ctl(&o->ctl, &o->src, o->ifindex); }

static bool same_origin(const rndz__origin *o, unsigned k, const struct sockaddr_storage *src,
                        unsigned ifindex) {
    return o->has_src && o->k == k && o->ifindex == ifindex &&
           rndz__addr_equal((const struct sockaddr *)&o->src, (const struct sockaddr *)src);
}

/* Can we send from `a`: is it an address of this host (a datagram's header destination may
 * be a broadcast address, or one that has since gone away)? Asked once per new origin. */
static bool is_ours(const struct sockaddr_storage *a, unsigned ifindex) {
    struct sockaddr_storage b = *a;
    rndz__addr_unmap(&b);
    rndz__addr_set_port(&b, 0);
    if (b.ss_family == AF_INET6) ((struct sockaddr_in6 *)&b)->sin6_scope_id = ifindex;
    int fd = socket(b.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    bool ok = bind(fd, (struct sockaddr *)&b, rndz__addr_len((struct sockaddr *)&b)) == 0;
    close(fd);
    return ok;
}

/* The origin index of (socket k, destination src), interned (server.h). A full table, or a
 * source we cannot send from: k, socket k unpinned. */
static uint8_t intern_origin(rndz_server *s, unsigned k, const struct sockaddr_storage *src,
                             unsigned ifindex) {
    unsigned n = atomic_load_explicit(&s->norigins, memory_order_acquire);
    for (unsigned i = 0; i < n; i++)
        if (same_origin(&s->origins[i], k, src, ifindex)) return (uint8_t)i;
    pthread_mutex_lock(&s->origins_mu);
    n = atomic_load_explicit(&s->norigins, memory_order_relaxed);
    unsigned i = 0;
    while (i < n && !same_origin(&s->origins[i], k, src, ifindex)) i++;
    if (i == n && n < RNDZ_MAX_ORIGINS && !is_ours(src, ifindex)) {
        i = k;
    } else if (i == n && n < RNDZ_MAX_ORIGINS) {
        rndz__origin *o = &s->origins[n];
        memset(o, 0, sizeof *o);
        o->k = (uint8_t)k;
        o->has_src = true;
        o->ifindex = ifindex;
        o->src = *src;
        build_ctl(o);
        atomic_store_explicit(&s->norigins, n + 1, memory_order_release);
    } else if (i == n) {
        i = k; /* more origins than the table holds: answer as before, unpinned */
    }
    pthread_mutex_unlock(&s->origins_mu);
    return (uint8_t)i;
}

bool rndz__pktinfo_dst(const struct msghdr *h, uint8_t raw[16], unsigned *ifindex) {
    bool found = false;
    *ifindex = 0;
    if (h->msg_flags & MSG_CTRUNC) return false; /* a control message cut short */
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR((struct msghdr *)h, c)) {
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO &&
            c->cmsg_len >= CMSG_LEN(sizeof(struct in_pktinfo))) {
            struct in_pktinfo pi;
            memcpy(&pi, CMSG_DATA(c), sizeof pi);
            memset(raw, 0, 10);
            raw[10] = raw[11] = 0xff;
            /* the kernel's own choice of reply source: the destination for a unicast
             * datagram, the interface's address for a broadcast one */
            memcpy(raw + 12, &pi.ipi_spec_dst, 4);
            found = true;
        } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO &&
                   c->cmsg_len >= CMSG_LEN(sizeof(struct in6_pktinfo))) {
            struct in6_pktinfo pi;
            memcpy(&pi, CMSG_DATA(c), sizeof pi);
            memcpy(raw, &pi.ipi6_addr, 16);
            if (IN6_IS_ADDR_LINKLOCAL(&pi.ipi6_addr)) *ifindex = pi.ipi6_ifindex;
            found = true;
        }
    }
    return found;
}

/* The origin of a received datagram: its socket, and its destination address from the
 * control message (none: the kernel picks the reply's source). */
static uint8_t origin_of(rndz__worker *w, unsigned k, const struct msghdr *h) {
    uint8_t raw[16]; /* the destination, IPv4 as ::ffff:a.b.c.d */
    unsigned ifindex;
    if (!rndz__pktinfo_dst(h, raw, &ifindex)) return (uint8_t)k;
    if (w->last_origin.valid && w->last_origin.k == k && !ifindex &&
        memcmp(w->last_origin.dst, raw, 16) == 0)
        return w->last_origin.origin;
    struct sockaddr_storage dst;
    memset(&dst, 0, sizeof dst);
    struct sockaddr_in6 *d6 = (struct sockaddr_in6 *)&dst;
    d6->sin6_family = AF_INET6;
    memcpy(&d6->sin6_addr, raw, 16);
    uint8_t o = (uint8_t)k;
    if (rndz__pktinfo_unicast(&d6->sin6_addr)) {
        /* an IPv4 socket gets IP_PKTINFO only: its destinations are IPv4 */
        if (w->s->local[k].ss_family == AF_INET) rndz__addr_unmap(&dst);
        o = intern_origin(w->s, k, &dst, ifindex);
    }
    if (!ifindex) {
        w->last_origin.valid = true;
        w->last_origin.k = (uint8_t)k;
        w->last_origin.origin = o;
        memcpy(w->last_origin.dst, raw, 16);
    }
    return o;
}

/* Queue the response of `a` to `to` (a peer's address in any form), from origin o: on its
 * socket, with its source address. */
static void queue_response(rndz__worker *w, const rndz__action *a,
                           const struct sockaddr_storage *to, uint8_t o) {
    if (w->nout == RNDZ_BATCH) rndz__worker_flush(w);
    unsigned i = w->nout;
    int n = rndz__proto_encode(a, w->out_buf[i], RNDZ_MAX_MSG);
    if (n < 0) {
        RNDZ_LOG(RNDZ_LOG_DEBUG, "udp: response not encodable: %s", rndz_strerror(n));
        return;
    }
    const rndz__origin *org = &w->s->origins[o];
    int family = w->s->local[org->k].ss_family;
    struct sockaddr_storage *dst = &w->out_addr[i];
    socklen_t al = rndz__addr_len((const struct sockaddr *)to);
    if (to->ss_family == family) {
        memcpy(dst, to, al); /* a reply: already in the socket's form */
    } else {
        *dst = *to;
        rndz__addr_unmap(dst);
        if (family == AF_INET6) rndz__addr_map(dst);
        else if (dst->ss_family != AF_INET) return; /* an IPv6 peer, an IPv4-only socket */
        al = rndz__addr_len((const struct sockaddr *)dst);
    }
    w->out_iov[i] = (struct iovec){w->out_buf[i], (size_t)n};
    w->out[i].msg_hdr = (struct msghdr){.msg_name = dst, .msg_namelen = al,
                                        .msg_iov = &w->out_iov[i], .msg_iovlen = 1};
    if (org->has_src) {
        memcpy(w->out_ctl[i].buf, org->ctl.buf, org->ctllen);
        w->out[i].msg_hdr.msg_control = w->out_ctl[i].buf;
        w->out[i].msg_hdr.msg_controllen = org->ctllen;
    }
    w->out_k[i] = org->k;
    w->nout++;
}

/* For a NAT check's filtering test: another of the server's specific addresses of the same
 * family than the one a request reached (its socket, unpinned: bound to that address, it is
 * the source), or the request's own origin if there is none. */
static uint8_t other_origin(const rndz_server *s, uint8_t origin) {
    unsigned k = s->origins[origin].k;
    for (unsigned k2 = 0; k2 < s->nlocal; k2++)
        if (k2 != k && s->local[k2].ss_family == s->local[k].ss_family &&
            !rndz__addr_is_any(&s->local[k2]))
            return (uint8_t)k2;
    return origin;
}

/* The directory of ids for one datagram: the peer table; the source is its address and
 * origin. */
typedef struct udp_dir {
    rndz_server *s;
    const struct sockaddr_storage *from;
    uint8_t origin;
} udp_dir;

static int dir_put(void *ctx, const char *id, size_t len, uint64_t now) {
    udp_dir *d = ctx;
    return rndz__pt_put(&d->s->peers, id, len, d->from, now, d->origin);
}

static bool dir_get(void *ctx, const char *id, size_t len, bool not_source, rndz__dest *out) {
    (void)not_source; /* datagrams: the source is an address, not a holder */
    udp_dir *d = ctx;
    return rndz__pt_get(&d->s->peers, id, len, false, &out->addr, &out->origin);
}

static int dir_del(void *ctx, const char *id, size_t len) {
    udp_dir *d = ctx;
    return rndz__pt_del(&d->s->peers, id, len, d->from);
}

static bool dir_other(void *ctx, const char *id, size_t len) {
    return rndz__server_tcp_has(((udp_dir *)ctx)->s, id, len);
}

void rndz__worker_udp_handle(rndz__worker *w, uint8_t origin, const uint8_t *buf, size_t len,
                             const struct sockaddr_storage *from, uint64_t now) {
    udp_dir d = {w->s, from, origin};
    const rndz__dir dir = {dir_put, dir_get, dir_del, dir_other, &d};
    const rndz__src src = {from, false};
    rndz__action a;
    rndz__proto_serve(&w->s->core, &dir, buf, len, &src, now, &a);
    if (a.stat >= 0) RNDZ_WSTAT_IDX_ADD(w, a.stat, 1);
    if (a.stat2 >= 0) RNDZ_WSTAT_IDX_ADD(w, a.stat2, 1);
    if (a.why && a.stat >= 0) {
        RNDZ_LOG(RNDZ_LOG_TRACE, "udp: dropped a request: %s", a.why);
        rndz__proto_log_refusal(&w->s->core, "udp", &a, from, now);
    }
    if (a.respond)
        queue_response(w, &a, a.to_source ? from : &a.dest.addr,
                       a.to_source ? (a.from_other ? other_origin(w->s, origin) : origin)
                                   : a.dest.origin);
}

void rndz__server_udp_handle(rndz_server *s, const uint8_t *buf, size_t len,
                             const struct sockaddr_storage *from, uint64_t now) {
    rndz__worker_udp_handle(s->w[0], 0, buf, len, from, now);
    rndz__worker_flush(s->w[0]);
}

void rndz__server_udp_readable(void *ctx, uint32_t events) {
    rndz__usock *u = ctx;
    rndz__worker *w = u->w;
    for (int round = 0; round < ROUNDS_PER_WAKE; round++) {
        for (unsigned i = 0; i < RNDZ_BATCH; i++) {
            w->in_iov[i] = (struct iovec){w->in_buf[i], sizeof w->in_buf[i]};
            w->in[i].msg_hdr = (struct msghdr){.msg_name = &w->in_addr[i],
                                               .msg_namelen = sizeof w->in_addr[i],
                                               .msg_iov = &w->in_iov[i], .msg_iovlen = 1,
                                               .msg_control = w->in_ctl[i].buf,
                                               .msg_controllen = sizeof w->in_ctl[i].buf};
        }
        int n = recvmmsg(u->fd, w->in, RNDZ_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                RNDZ_LOG(RNDZ_LOG_DEBUG, "udp: recvmmsg: %s", rndz_strerror(-errno));
            if (errno == EINTR) continue;
            break;
        }
        uint64_t now = rndz__now_ms();
        RNDZ_WSTAT_ADD(w, udp_rx, (uint64_t)n);
        for (int i = 0; i < n; i++) {
            /* one byte more than the largest message fits: a full buffer (or MSG_TRUNC) is an
             * oversize datagram */
            if ((w->in[i].msg_hdr.msg_flags & MSG_TRUNC) || w->in[i].msg_len > RNDZ_MAX_MSG) {
                RNDZ_WSTAT_ADD(w, udp_malformed, 1);
                continue;
            }
            uint8_t o = origin_of(w, u->k, &w->in[i].msg_hdr);
            rndz__worker_udp_handle(w, o, w->in_buf[i], w->in[i].msg_len, &w->in_addr[i], now);
        }
        rndz__worker_flush(w);
        if (n < RNDZ_BATCH) break;
    }
}

uint64_t rndz__server_udp_tick(rndz__worker *w, uint64_t now) {
    rndz_server *s = w->s;
    /* Worker 0 sweeps every shard: a step is small (a full pass is spread over a quarter of
     * the expiry time), and it keeps expiry independent of which worker gets traffic. */
    if (w->idx != 0) return UINT64_MAX;
    if (now < w->next_sweep) return w->next_sweep;
    rndz__peertab *pt = &s->peers;
    uint64_t pass_ms = s->o.udp_expiry_ms / 4 ? s->o.udp_expiry_ms / 4 : 1;
    size_t removed = 0;
    uint64_t left = 0;
    for (uint32_t sh = 0; sh < pt->nshards; sh++) {
        uint64_t count = __atomic_load_n(&pt->shards[sh].count, __ATOMIC_RELAXED);
        if (!count) continue;
        size_t budget = (size_t)(count * SWEEP_MS / pass_ms) + 8;
        removed += rndz__pt_sweep(pt, sh, now, s->o.udp_expiry_ms, budget);
        left += __atomic_load_n(&pt->shards[sh].count, __ATOMIC_RELAXED);
    }
    if (removed) {
        RNDZ_WSTAT_ADD(w, udp_expired, removed);
        RNDZ_LOG(RNDZ_LOG_DEBUG, "udp: expired %zu ids", removed);
    }
    /* An empty table is looked at again now and then: other workers may fill it without
     * waking this one. */
    uint64_t idle = pass_ms < 1000 ? pass_ms : 1000;
    w->next_sweep = now + (left ? SWEEP_MS : idle);
    return w->next_sweep;
}
