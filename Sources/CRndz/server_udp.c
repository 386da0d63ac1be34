/* server_udp.c: the rendezvous server over UDP (BRIEF, "Server, UDP"): what is UDP's alone.
 * The protocol is server_proto.c's; here: the ids as addresses in the shared peer table
 * (peertab.h), datagrams in batches (recvmmsg) and replies in batches (sendmmsg), and expiry
 * in small steps. */
#include "server.h"

#include <string.h>

/* Expiry runs every SWEEP_MS and visits enough entries that a full pass over the table takes
 * a quarter of the expiry time: an id expires at most 25% late, and no step is long. */
#define SWEEP_MS 10
/* recvmmsg batches served per readiness event at most, so a flood cannot starve the timers
 * and TCP (worker 0 serves both). */
#define ROUNDS_PER_WAKE 8

void rndz__worker_flush(rndz__worker *w) {
    unsigned done = 0;
    while (done < w->nout) {
        int n = sendmmsg(w->udp_fd, w->out + done, w->nout - done, MSG_DONTWAIT);
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
    w->nout = 0;
}

/* Queue the response of `a` to `to`. */
static void queue_response(rndz__worker *w, const rndz__action *a,
                           const struct sockaddr_storage *to) {
    if (w->nout == RNDZ_BATCH) rndz__worker_flush(w);
    unsigned i = w->nout;
    int n = rndz__proto_encode(a, w->out_buf[i], RNDZ_MAX_MSG);
    if (n < 0) {
        RNDZ_LOG(RNDZ_LOG_DEBUG, "udp: response not encodable: %s", rndz_strerror(n));
        return;
    }
    socklen_t al = rndz__addr_len((const struct sockaddr *)to);
    memcpy(&w->out_addr[i], to, al);
    w->out_iov[i] = (struct iovec){w->out_buf[i], (size_t)n};
    w->out[i].msg_hdr = (struct msghdr){.msg_name = &w->out_addr[i], .msg_namelen = al,
                                        .msg_iov = &w->out_iov[i], .msg_iovlen = 1};
    w->nout++;
}

/* The directory of ids for one datagram: the peer table, the source its address. */
typedef struct udp_dir {
    rndz_server *s;
    const struct sockaddr_storage *from;
} udp_dir;

static int dir_put(void *ctx, const char *id, size_t len, uint64_t now) {
    udp_dir *d = ctx;
    return rndz__pt_put(&d->s->peers, id, len, d->from, now);
}

static bool dir_get(void *ctx, const char *id, size_t len, bool not_source, rndz__dest *out) {
    (void)not_source; /* datagrams: the source is an address, not a holder */
    udp_dir *d = ctx;
    return rndz__pt_get(&d->s->peers, id, len, d->s->v6, &out->addr);
}

static int dir_del(void *ctx, const char *id, size_t len) {
    udp_dir *d = ctx;
    return rndz__pt_del(&d->s->peers, id, len, d->from);
}

void rndz__worker_udp_handle(rndz__worker *w, const uint8_t *buf, size_t len,
                             const struct sockaddr_storage *from, uint64_t now) {
    udp_dir d = {w->s, from};
    const rndz__dir dir = {dir_put, dir_get, dir_del, &d};
    const rndz__src src = {from, false};
    rndz__action a;
    rndz__proto_serve(&w->s->core, &dir, buf, len, &src, now, &a);
    if (a.stat >= 0) RNDZ_WSTAT_IDX_ADD(w, a.stat, 1);
    if (a.stat2 >= 0) RNDZ_WSTAT_IDX_ADD(w, a.stat2, 1);
    if (a.why && a.stat >= 0) RNDZ_LOG(RNDZ_LOG_TRACE, "udp: dropped a request: %s", a.why);
    if (a.respond) queue_response(w, &a, a.to_source ? from : &a.dest.addr);
}

void rndz__server_udp_handle(rndz_server *s, const uint8_t *buf, size_t len,
                             const struct sockaddr_storage *from, uint64_t now) {
    rndz__worker_udp_handle(s->w[0], buf, len, from, now);
    rndz__worker_flush(s->w[0]);
}

void rndz__server_udp_readable(void *ctx, uint32_t events) {
    rndz__worker *w = ctx;
    for (int round = 0; round < ROUNDS_PER_WAKE; round++) {
        for (unsigned i = 0; i < RNDZ_BATCH; i++) {
            w->in_iov[i] = (struct iovec){w->in_buf[i], sizeof w->in_buf[i]};
            w->in[i].msg_hdr = (struct msghdr){.msg_name = &w->in_addr[i],
                                               .msg_namelen = sizeof w->in_addr[i],
                                               .msg_iov = &w->in_iov[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(w->udp_fd, w->in, RNDZ_BATCH, MSG_DONTWAIT, NULL);
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
            rndz__worker_udp_handle(w, w->in_buf[i], w->in[i].msg_len, &w->in_addr[i], now);
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
