/* server_udp.c: the v1 rendezvous server over UDP (BRIEF, "Server, UDP").
 *   Ping from X at A    -> remember X -> A; Pong to A.
 *   Isync{T} from X at A -> T known: remember X -> A, Fsync{X, A} to T (nothing back to X);
 *                           else Redirect{T, ""} to A.
 *   Rsync{T} from X at A -> T known: Redirect{X, A} to T.
 *   Bye from X at A      -> forget X, if X is registered at A (0.1.5: from anywhere).
 *   Anything else        -> dropped and counted.
 * Before that, every request passes rndz__server_admit (id length; with a secret, its proof
 * and freshness), and Isync/Rsync the limits (limit.h): per source, and per target.
 * Datagrams come in batches (recvmmsg) and replies go out in batches (sendmmsg). */
#include "ext.h"
#include "server.h"

#include <string.h>

/* Expiry runs every SWEEP_MS and visits enough entries that a full pass over the table takes
 * a quarter of the expiry time: an id expires at most 25% late, and no step is long. */
#define SWEEP_MS 10

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
        RNDZ_WSTAT_ADD(w, tx, (uint64_t)n);
        done += (unsigned)n;
    }
    w->nout = 0;
}

/* Queue a response; `ext` (may be NULL): extension fields copied from the request, so a
 * listener and a connector that probe learn each other's candidates (ext.h). */
static void queue_response_ext(rndz__worker *w, const rndz_msg *m,
                               const struct sockaddr_storage *to, const rndz__ext *ext) {
    if (w->nout == RNDZ_BATCH) rndz__worker_flush(w);
    unsigned i = w->nout;
    int n = rndz_msg_encode(m, w->out_buf[i], RNDZ_MAX_MSG);
    if (n >= 0 && ext && rndz__ext_present(ext))
        n = rndz__ext_append(ext, w->out_buf[i], (size_t)n, RNDZ_MAX_MSG);
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

static void queue_response(rndz__worker *w, const rndz_msg *m,
                           const struct sockaddr_storage *to) {
    queue_response_ext(w, m, to, NULL);
}

void rndz__worker_udp_handle(rndz__worker *w, const uint8_t *buf, size_t len,
                             const struct sockaddr_storage *from, uint64_t now) {
    rndz_server *s = w->s;
    rndz_msg req;
    int rc = rndz_msg_decode(buf, len, 0, &req);
    if (rc) {
        RNDZ_WSTAT_ADD(w, malformed, 1);
        RNDZ_LOG(RNDZ_LOG_TRACE, "udp: dropped datagram: %s", rndz_strerror(rc));
        return;
    }
    switch (rndz__server_admit(s, buf, len, &req)) {
    case RNDZ__ADMIT_OK: break;
    case RNDZ__ADMIT_ID: RNDZ_WSTAT_ADD(w, id_refused, 1); return;
    case RNDZ__ADMIT_REPLAY: RNDZ_WSTAT_ADD(w, auth_replayed, 1); return;
    default: RNDZ_WSTAT_ADD(w, auth_failed, 1); return;
    }
    rndz__peertab *pt = &s->peers;
    char text[RNDZ_ADDRSTRLEN];
    struct sockaddr_storage to;
    switch (req.cmd) {
    case RNDZ_REQ_PING: {
        if (rndz__pt_put(pt, req.id, req.id_len, from, now)) {
            RNDZ_WSTAT_ADD(w, refused, 1); /* table full: no Pong, the client retries */
            return;
        }
        rndz_msg pong = {.cmd = RNDZ_RSP_PONG, .id = req.id, .id_len = req.id_len};
        queue_response(w, &pong, from);
        break;
    }
    case RNDZ_REQ_ISYNC:
        if (!rndz__limit_sync(&s->lim, from, now)) { /* before anything is sent anywhere */
            RNDZ_WSTAT_ADD(w, sync_limited, 1);
            return;
        }
        if (rndz__pt_get(pt, req.peer_id, req.peer_id_len, s->v6, &to)) {
            if (!rndz__limit_fsync(&s->lim, req.peer_id, req.peer_id_len, now)) {
                RNDZ_WSTAT_ADD(w, fsync_limited, 1);
                return;
            }
            if (rndz__pt_put(pt, req.id, req.id_len, from, now)) RNDZ_WSTAT_ADD(w, refused, 1);
            int n = rndz_addr_format((const struct sockaddr *)from, text, sizeof text);
            if (n < 0) return;
            rndz_msg f = {RNDZ_RSP_FSYNC, req.peer_id, req.peer_id_len, req.id, req.id_len,
                          text, (size_t)n};
            rndz__ext ext;
            bool has_ext = rndz__ext_decode(buf, len, &ext) == 0;
            queue_response_ext(w, &f, &to, has_ext ? &ext : NULL);
        } else {
            rndz_msg r = {RNDZ_RSP_REDIRECT, req.id, req.id_len, req.peer_id, req.peer_id_len,
                          "", 0};
            queue_response(w, &r, from);
        }
        break;
    case RNDZ_REQ_RSYNC:
        if (!rndz__limit_sync(&s->lim, from, now)) {
            RNDZ_WSTAT_ADD(w, sync_limited, 1);
            return;
        }
        if (rndz__pt_get(pt, req.peer_id, req.peer_id_len, s->v6, &to)) {
            if (!rndz__limit_fsync(&s->lim, req.peer_id, req.peer_id_len, now)) {
                RNDZ_WSTAT_ADD(w, fsync_limited, 1);
                return;
            }
            int n = rndz_addr_format((const struct sockaddr *)from, text, sizeof text);
            if (n < 0) return;
            rndz_msg r = {RNDZ_RSP_REDIRECT, req.peer_id, req.peer_id_len, req.id, req.id_len,
                          text, (size_t)n};
            rndz__ext ext;
            bool has_ext = rndz__ext_decode(buf, len, &ext) == 0;
            queue_response_ext(w, &r, &to, has_ext ? &ext : NULL);
        }
        break;
    case RNDZ_REQ_BYE:
        /* Only from the address the id is registered at: anyone else could otherwise drop
         * any id (rndz 0.1.5 honours a Bye from anywhere). */
        if (rndz__pt_del(pt, req.id, req.id_len, from) < 0) RNDZ_WSTAT_ADD(w, malformed, 1);
        break;
    default:
        RNDZ_WSTAT_ADD(w, malformed, 1); /* Fsync is not a request a server takes */
        break;
    }
}

void rndz__server_udp_handle(rndz_server *s, const uint8_t *buf, size_t len,
                             const struct sockaddr_storage *from, uint64_t now) {
    rndz__worker_udp_handle(s->w[0], buf, len, from, now);
    rndz__worker_flush(s->w[0]);
}

void rndz__server_udp_readable(void *ctx, uint32_t events) {
    rndz__worker *w = ctx;
    /* A bounded number of batches per wake-up, so a flood cannot starve timers and TCP. */
    for (int round = 0; round < 8; round++) {
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
        RNDZ_WSTAT_ADD(w, rx, (uint64_t)n);
        for (int i = 0; i < n; i++) {
            /* one byte more than the largest message fits: a full buffer (or MSG_TRUNC) is an
             * oversize datagram */
            if ((w->in[i].msg_hdr.msg_flags & MSG_TRUNC) || w->in[i].msg_len > RNDZ_MAX_MSG) {
                RNDZ_WSTAT_ADD(w, malformed, 1);
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
        RNDZ_WSTAT_ADD(w, expired, removed);
        RNDZ_LOG(RNDZ_LOG_DEBUG, "udp: expired %zu ids", removed);
    }
    /* An empty table is looked at again now and then: other workers may fill it without
     * waking this one. */
    uint64_t idle = pass_ms < 1000 ? pass_ms : 1000;
    w->next_sweep = now + (left ? SWEEP_MS : idle);
    return w->next_sweep;
}
