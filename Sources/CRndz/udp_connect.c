/* udp_connect.c: the UDP connector (BRIEF, "Clients"; the listener is udp_listen.c).
 *
 * One unconnected socket; Isync{T} to every server, in paced rounds, until a server answers
 * Redirect{T, B} or every server said the target is unknown (RNDZ_E_NOTFOUND) or the time is
 * up (RNDZ_E_TIMEDOUT). With a listener that probes (its Redirect carries our session nonce
 * back, ext.h), a path is verified both ways before the socket is handed over (punch.h);
 * with a v1 listener the socket is connected to the address the server gave, as rndz 0.1.5
 * does. */
#include "client.h"
#include "ifaddr.h"
#include "punch.h"
#include "relay_peer.h"

#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Isync rounds start this fast and double up to round_ms: a lost Isync (or Fsync, Rsync,
 * Redirect) then costs a fraction of a second, and a server is not hammered. */
#define FIRST_ROUND_MS 200
/* The confirm is sent this many times at once: it is the listener's only news that its ack
 * arrived, and a retry later would hit the application's socket filter. */
#define CONFIRM_COPIES 3

/* After connect(), datagrams that arrived before it are still queued: the punch from the
 * peer, a second server's Redirect, late probe acks. Drop those that are protocol messages,
 * so the caller's first read is the peer's data; stop at the first datagram that is not. */
static void drain_protocol(int fd, bool relayed) {
    uint8_t buf[RNDZ_MAX_MSG + 1];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT | MSG_PEEK);
        if (n < 0) return;
        rndz_msg m;
        int type;
        uint32_t seq;
        uint64_t nonce;
        const uint8_t *tok;
        if (relayed) { /* only the relay's messages and the listener's late "ack" */
            if (!rndz__relay_decode(buf, (size_t)n, &type, &nonce, &tok)) return;
        } else if (rndz_msg_decode(buf, (size_t)n, 0, &m) != 0 &&
            rndz_msg_decode(buf, (size_t)n, 1, &m) != 0 &&
            !rndz__probe_decode(buf, (size_t)n, &type, &seq, &nonce))
            return;
        if (recv(fd, buf, sizeof buf, MSG_DONTWAIT) < 0) return;
    }
}

/* The connect session after the Redirect, with a listener that probes: probe its candidates,
 * answer its probes, until one path answers; with a relay offered (rp->fd < 0 until then),
 * join it at relay_at, and from then on the relay is the path (relay_peer.h). Returns the fd
 * that carries the peer (fd, or the relay's socket) or an error; fills info. */
static int probe_peer(int fd, const rndz__client *c, rndz__punch *p, uint64_t start,
                      rndz_peer_info *info, rndz__rpeer *rp, uint64_t relay_at) {
    uint8_t buf[RNDZ_MAX_MSG + 1];
    bool relaying = false;
    for (;;) {
        uint64_t now = rndz__now_ms(), next = UINT64_MAX;
        if (!relaying && rp->role && now >= relay_at) {
            int rc = rndz__rpeer_open(rp, c, now);
            if (rc) {
                RNDZ_LOG(RNDZ_LOG_WARN, "udp connect: relay: %s", rndz_strerror(rc));
                rndz__rpeer_close(rp);
                rp->role = 0; /* no relay after all: go on direct */
            } else {
                relaying = true;
                RNDZ_LOG(RNDZ_LOG_INFO, "udp connect: no direct path yet; joining the relay");
            }
        }
        if (relaying) {
            if (rp->done) break;
            next = rndz__rpeer_tick(rp, now);
            if (now >= p->deadline) return RNDZ_E_PEERFAIL;
            if (p->deadline < next) next = p->deadline;
        }
        rndz__punch_send sends[RNDZ_MAX_CANDS + 1];
        uint64_t pnext;
        size_t n = rndz__punch_tick(p, now, sends, RNDZ_ARRAY_LEN(sends), &pnext);
        if (!relaying) {
            /* committed to the relay: no more probes, and no direct path is taken */
            for (size_t k = 0; k < n; k++)
                rndz__probe_send(fd, RNDZ_PROBE, sends[k].seq, p->nonce, &p->cand[sends[k].cand]);
            if (p->state == RNDZ_PUNCH_FAILED) return RNDZ_E_PEERFAIL;
            if (p->state == RNDZ_PUNCH_VERIFIED) break;
            next = pnext;
            if (rp->role && relay_at < next) next = relay_at;
        }
        struct pollfd pfd[2] = {{.fd = fd, .events = POLLIN}, {.fd = rp->fd, .events = POLLIN}};
        int pr = poll(pfd, relaying ? 2 : 1,
                      next == UINT64_MAX ? 0 : (int)(next > now ? next - now : 0));
        if (pr < 0 && errno != EINTR) return -errno;
        if (pr <= 0) continue;
        if (relaying && (pfd[1].revents & (POLLIN | POLLERR))) {
            int rc = rndz__rpeer_readable(rp, rndz__now_ms());
            if (rc) return rc;
        }
        if (!(pfd[0].revents & POLLIN)) continue;
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t r = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        int type;
        uint32_t seq;
        uint64_t nonce;
        if (r < 0 || !rndz__probe_decode(buf, (size_t)r, &type, &seq, &nonce) || nonce != p->nonce)
            continue; /* late server answers and the like */
        if (type == RNDZ_PROBE) rndz__probe_send(fd, RNDZ_PROBE_ACK, seq, nonce, &from);
        else if (type == RNDZ_PROBE_ACK && !relaying) rndz__punch_on_ack(p, &from, seq, rndz__now_ms());
    }
    uint64_t now = rndz__now_ms();
    info->verified = 1;
    info->elapsed_ms = (uint32_t)(now - start);
    if (relaying) {
        info->addr = rp->addr;
        info->rtt_ms = rp->rtt_ms;
        info->relayed = 1;
        return rndz__rpeer_take(rp, c);
    }
    rndz__rpeer_close(rp);
    const struct sockaddr_storage *w = &p->cand[p->winner];
    /* Tell the listener its ack arrived (its proof of the path), then keep probes from the
     * application and pin the socket to the winner. */
    for (int k = 0; k < CONFIRM_COPIES; k++) rndz__probe_send(fd, RNDZ_PROBE_CONFIRM, 0, p->nonce, w);
    rndz__probe_filter_drop(fd);
    if (connect(fd, (const struct sockaddr *)w, rndz__addr_len((const struct sockaddr *)w)) < 0)
        return -errno;
    info->addr = *w;
    info->rtt_ms = p->rtt_ms;
    info->advertised = p->winner != 0; /* candidate 0 is the address the server saw */
    return fd;
}

int rndz_udp_connect_info(const rndz_client_options *o, const char *target,
                          rndz_peer_info *info_out) {
    rndz_peer_info info;
    memset(&info, 0, sizeof info);
    rndz__client c;
    int rc = rndz__client_init(&c, o);
    if (rc) return rc;
    size_t tlen;
    if (!target || (tlen = strlen(target)) == 0 || tlen > RNDZ_MAX_ID) return RNDZ_E_BADID;
    int fd = rndz__client_bind(&c, SOCK_DGRAM);
    if (fd < 0) return fd;
    /* Our session: local candidates and a nonce ride in the Isync (v1 servers and peers skip
     * them). */
    rndz__ext mine;
    memset(&mine, 0, sizeof mine);
    rndz__local_cands(&c.local, c.local.ss_family == AF_INET6, &mine);
    mine.has_nonce = true;
    mine.nonce = (uint64_t)rndz__random() << 32 | rndz__random();
    mine.relay = c.relay == RNDZ_RELAY_NEVER ? 0 : c.relay == RNDZ_RELAY_ONLY ? 2 : 1;
    bool not_found[RNDZ_MAX_SERVERS] = {0};
    size_t n_not_found = 0;
    uint64_t start = rndz__now_ms(), deadline = start + c.timeout_ms, next_round = start;
    uint32_t round = FIRST_ROUND_MS < c.round_ms ? FIRST_ROUND_MS : c.round_ms;
    uint8_t buf[RNDZ_MAX_MSG + 1];
    for (;;) {
        uint64_t now = rndz__now_ms();
        if (now >= deadline) {
            rc = RNDZ_E_TIMEDOUT;
            break;
        }
        if (now >= next_round) {
            /* Servers that said "not found" are asked again: while others stay silent, the
             * target may register with one of them. */
            for (size_t i = 0; i < c.n_servers; i++) {
                int src = rndz__client_send(fd, &c, RNDZ_REQ_ISYNC, target, tlen, &c.servers[i], &mine);
                if (src) RNDZ_LOG(RNDZ_LOG_DEBUG, "udp connect: Isync to %s: %s",
                                  c.server_text[i], rndz_strerror(src));
            }
            next_round = now + round;
            round = round * 2 < c.round_ms ? round * 2 : c.round_ms;
        }
        uint64_t wake = next_round < deadline ? next_round : deadline;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, (int)(wake - now));
        if (pr < 0 && errno != EINTR) {
            rc = -errno;
            break;
        }
        if (pr <= 0) continue;
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        if (n < 0) continue;
        /* A server bound to a wildcard address answers from a specific one: with a single
         * server, any answer is its answer. */
        int si = rndz__client_server_index(&c, &from);
        if (si < 0 && c.n_servers == 1) si = 0;
        rndz_msg m;
        if (si < 0 || rndz_msg_decode(buf, (size_t)n, 1, &m) || m.cmd != RNDZ_RSP_REDIRECT ||
            m.peer_id_len != tlen || memcmp(m.peer_id, target, tlen) != 0)
            continue; /* not an answer to our question */
        if (m.addr_len == 0) {
            if (!not_found[si]) {
                not_found[si] = true;
                n_not_found++;
            }
            if (n_not_found == c.n_servers) {
                rc = RNDZ_E_NOTFOUND;
                break;
            }
            continue;
        }
        struct sockaddr_storage peer;
        if (rndz__client_peer_addr(&c, m.addr, m.addr_len, &peer)) continue;
        rndz__ext theirs;
        if (rndz__ext_decode(buf, (size_t)n, &theirs) == 0 && theirs.has_nonce &&
            theirs.nonce == mine.nonce) {
            /* The listener probes: verify a path before handing anything over. */
            rndz__punch p;
            rndz__punch_init(&p, mine.nonce, rndz__now_ms(), (uint32_t)(deadline - rndz__now_ms()));
            rndz__punch_add(&p, &peer, rndz__addr_is_private(&peer));
            for (size_t k = 0; k < theirs.ncands; k++) {
                struct sockaddr_storage a;
                if (rndz__client_peer_addr(&c, theirs.cands[k], strlen(theirs.cands[k]), &a) == 0)
                    rndz__punch_add(&p, &a, rndz__addr_is_private(&a));
            }
            /* The relay, when the server offered one (both sides asked): at once if either
             * side said a direct path is impossible, else after relay_after_ms. */
            rndz__rpeer rp;
            uint64_t relay_at = UINT64_MAX;
            if (rndz__rpeer_init(&rp, &c, &theirs, &from, RNDZ_RELAY_ROLE_CONNECTOR, SOCK_DGRAM)) {
                relay_at = c.relay == RNDZ_RELAY_ONLY || theirs.relay == 2
                               ? rndz__now_ms() : rndz__now_ms() + c.relay_after_ms;
            } else {
                rp.role = 0;
            }
            int got = probe_peer(fd, &c, &p, start, &info, &rp, relay_at);
            if (got < 0) {
                rndz__rpeer_close(&rp);
                rc = got;
                break;
            }
            if (got != fd) {
                close(fd); /* relayed: the shared-port socket is not needed */
                fd = got;
            }
        } else {
            /* v1: the address the server gave, unverified, as rndz 0.1.5 does */
            if (connect(fd, (struct sockaddr *)&peer, rndz__addr_len((struct sockaddr *)&peer)) < 0) {
                rc = -errno;
                break;
            }
            info.addr = peer;
            info.elapsed_ms = (uint32_t)(rndz__now_ms() - start);
        }
        drain_protocol(fd, info.relayed);
        rndz__sock_set_nonblock(fd, false);
        rndz__addr_unmap(&info.addr);
        info.lan = rndz__addr_is_private(&info.addr);
        rndz__copy_id(info.id, target, tlen);
        char text[RNDZ_ADDRSTRLEN];
        rndz_addr_format((struct sockaddr *)&info.addr, text, sizeof text);
        RNDZ_LOG(RNDZ_LOG_INFO, "udp connect: %s at %s%s, %s, rtt %u ms, after %u ms", target,
                 info.relayed ? "relay " : "", text,
                 info.verified ? "verified" : "unverified (v1 peer)", info.rtt_ms,
                 info.elapsed_ms);
        if (info_out) *info_out = info;
        return fd;
    }
    close(fd);
    return rc;
}

int rndz_udp_connect(const rndz_client_options *o, const char *target,
                     struct sockaddr_storage *peer_out, socklen_t *peer_len) {
    return rndz__client_connect_plain(rndz_udp_connect_info, o, target, peer_out, peer_len);
}
