/* server_udp.c: the v1 rendezvous server over UDP (BRIEF, "Server, UDP").
 *   Ping from X at A    -> remember X -> A; Pong to A.
 *   Isync{T} from X at A -> T known: remember X -> A, Fsync{X, A} to T (nothing back to X);
 *                           else Redirect{T, ""} to A.
 *   Rsync{T} from X at A -> T known: Redirect{X, A} to T.
 *   Bye from X at A      -> forget X, if X is registered at A (0.1.5: from anywhere).
 *   Anything else        -> dropped and counted. */
#include "server.h"

#include <string.h>
#include <sys/socket.h>

/* Expire at most this many ids per loop turn, so a mass expiry never stalls the loop. */
#define EXPIRE_STEP 1024

static void send_response(rndz_server *s, const rndz_msg *m, const struct sockaddr_storage *to) {
    uint8_t out[RNDZ_MAX_MSG];
    int n = rndz_msg_encode(m, out, sizeof out);
    if (n < 0) {
        RNDZ_LOG(RNDZ_LOG_DEBUG, "udp: response not encodable: %s", rndz_strerror(n));
        return;
    }
    RNDZ_STAT_ADD(s, udp_tx, 1); /* counted first, so a client holding the reply sees it */
    if (sendto(s->udp_fd, out, (size_t)n, MSG_DONTWAIT, (const struct sockaddr *)to,
               rndz__addr_len((const struct sockaddr *)to)) != n) {
        atomic_fetch_sub_explicit(&s->c.udp_tx, 1, memory_order_relaxed);
        RNDZ_LOG(RNDZ_LOG_DEBUG, "udp: sendto failed: %s", rndz_strerror(-errno));
    }
}

void rndz__server_udp_handle(rndz_server *s, const uint8_t *buf, size_t len,
                             const struct sockaddr_storage *from, uint64_t now) {
    rndz_msg req;
    int rc = rndz_msg_decode(buf, len, 0, &req);
    if (rc) {
        RNDZ_STAT_ADD(s, udp_malformed, 1);
        RNDZ_LOG(RNDZ_LOG_TRACE, "udp: dropped datagram: %s", rndz_strerror(rc));
        return;
    }
    rndz__registry *reg = &s->udp_reg;
    char text[RNDZ_ADDRSTRLEN];
    rndz__reg_entry *t;
    switch (req.cmd) {
    case RNDZ_REQ_PING: {
        if (!rndz__reg_put(reg, req.id, req.id_len, (const struct sockaddr *)from, NULL, now))
            return;
        RNDZ_STAT_SET(s, udp_peers, reg->count);
        rndz_msg pong = {.cmd = RNDZ_RSP_PONG, .id = req.id, .id_len = req.id_len};
        send_response(s, &pong, from);
        break;
    }
    case RNDZ_REQ_ISYNC:
        t = rndz__reg_get(reg, req.peer_id, req.peer_id_len);
        if (t) {
            struct sockaddr_storage to = t->addr; /* put may move t */
            rndz__reg_put(reg, req.id, req.id_len, (const struct sockaddr *)from, NULL, now);
            RNDZ_STAT_SET(s, udp_peers, reg->count);
            int n = rndz_addr_format((const struct sockaddr *)from, text, sizeof text);
            if (n < 0) return;
            rndz_msg f = {RNDZ_RSP_FSYNC, req.peer_id, req.peer_id_len, req.id, req.id_len,
                          text, (size_t)n};
            send_response(s, &f, &to);
        } else {
            rndz_msg r = {RNDZ_RSP_REDIRECT, req.id, req.id_len, req.peer_id, req.peer_id_len,
                          "", 0};
            send_response(s, &r, from);
        }
        break;
    case RNDZ_REQ_RSYNC:
        t = rndz__reg_get(reg, req.peer_id, req.peer_id_len);
        if (t) {
            int n = rndz_addr_format((const struct sockaddr *)from, text, sizeof text);
            if (n < 0) return;
            rndz_msg r = {RNDZ_RSP_REDIRECT, req.peer_id, req.peer_id_len, req.id, req.id_len,
                          text, (size_t)n};
            send_response(s, &r, &t->addr);
        }
        break;
    case RNDZ_REQ_BYE:
        /* Only from the address the id is registered at: anyone else could otherwise drop
         * any id (rndz 0.1.5 honours a Bye from anywhere). */
        t = rndz__reg_get(reg, req.id, req.id_len);
        if (t && rndz__addr_equal((const struct sockaddr *)&t->addr,
                                  (const struct sockaddr *)from))
            rndz__reg_del(reg, t);
        else if (t)
            RNDZ_STAT_ADD(s, udp_malformed, 1);
        RNDZ_STAT_SET(s, udp_peers, reg->count);
        break;
    default:
        RNDZ_STAT_ADD(s, udp_malformed, 1); /* Fsync is not a request a server takes */
        break;
    }
}

void rndz__server_udp_readable(void *ctx, uint32_t events) {
    rndz_server *s = ctx;
    uint8_t buf[RNDZ_MAX_MSG + 1]; /* one more byte: to see (and refuse) oversize datagrams */
    uint64_t now = rndz__now_ms();
    /* Bounded, so a flood on UDP cannot starve timers and TCP. */
    for (int i = 0; i < 256; i++) {
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(s->udp_fd, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC,
                             (struct sockaddr *)&from, &fl);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                RNDZ_LOG(RNDZ_LOG_DEBUG, "udp: recvfrom: %s", rndz_strerror(-errno));
            if (errno == EAGAIN) return;
            continue;
        }
        RNDZ_STAT_ADD(s, udp_rx, 1);
        if ((size_t)n > RNDZ_MAX_MSG) {
            RNDZ_STAT_ADD(s, udp_malformed, 1);
            continue;
        }
        rndz__server_udp_handle(s, buf, (size_t)n, &from, now);
    }
}

uint64_t rndz__server_udp_tick(rndz_server *s, uint64_t now) {
    uint64_t next; /* looking at the oldest entry is O(1): no need to cache its deadline */
    size_t n = rndz__reg_expire(&s->udp_reg, now, s->o.udp_expiry_ms, EXPIRE_STEP, &next);
    if (n) {
        RNDZ_STAT_ADD(s, udp_expired, n);
        RNDZ_STAT_SET(s, udp_peers, s->udp_reg.count);
        RNDZ_LOG(RNDZ_LOG_DEBUG, "udp: expired %zu ids", n);
    }
    return next;
}
