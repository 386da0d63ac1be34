/* udp_connect.c: the UDP connector (BRIEF, "Clients"; the listener is udp_listen.c).
 *
 * One unconnected socket; Isync{T} to every server, in paced rounds, until a server answers
 * Redirect{T, B} or every server said the target is unknown (RNDZ_E_NOTFOUND; RNDZ_E_TRANSPORT
 * when one of them has it registered over TCP) or the time is
 * up (RNDZ_E_TIMEDOUT). With a listener that probes (its Redirect carries our session nonce
 * back, ext.h), a path is verified both ways before the socket is handed over (punch.h);
 * with a v1 listener the socket is connected to the address the server gave, as rndz 0.1.5
 * does. */
#include "client.h"
#include "srvlink.h"
#include "srvset.h"
#include "ifaddr.h"
#include "nat.h"
#include "predict.h"
#include "punch.h"
#include "relay_peer.h"

#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Isync rounds start this fast and double up to round_ms: a lost Isync (or Fsync, Rsync,
 * Redirect) then costs a fraction of a second, and a server is not hammered. */
#define FIRST_ROUND_MS 200
/* Server sets: a stand-in's "not found" counts this long after a listener's server would count
 * as down (the listener's ping after that, a round trip). */
#define FAILOVER_GRACE_MS 1500
/* The confirm is sent this many times at once: it is the listener's only news that its ack
 * arrived, and a retry later would hit the application's socket filter. */
#define CONFIRM_COPIES 3
/* The NAT check after the Redirect: the server's other address is asked this often, this
 * many times. */
#define NAT_RETRY_MS 300
#define NAT_TRIES 4
/* With port prediction under way, the relay waits at least this long (a pass of probes takes
 * about 0.8 s; four passes 2 s): the direct path it finds is worth the wait. */
#define PREDICT_RELAY_MS 4000

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

/* Port prediction (predict.h) on the connector's side: easy, the probes go from fd to ports
 * of the peer's address; hard, from RNDZ_PREDICT_SOCKETS sockets of their own. */
typedef struct spray {
    rndz__predict pr;
    struct sockaddr_storage peer; /* the address the server saw for the peer */
    int fds[RNDZ_PREDICT_SOCKETS]; /* hard: -1 until opened */
    int winner;                    /* hard: the socket that verified, -1 */
} spray;

static void spray_close(spray *sp, int keep) {
    if (!sp || sp->pr.role != RNDZ_PREDICT_HARD) return;
    for (int i = 0; i < RNDZ_PREDICT_SOCKETS; i++) {
        if (sp->fds[i] >= 0 && i != keep) close(sp->fds[i]);
        sp->fds[i] = -1;
    }
}

/* Send what the prediction asks for at `now`; returns when it wants to run next. */
static uint64_t spray_tick(spray *sp, const rndz__client *c, int fd, uint64_t nonce, uint64_t now) {
    rndz__predict_send out[64];
    uint64_t next;
    size_t n = rndz__predict_tick(&sp->pr, now, out, RNDZ_ARRAY_LEN(out), &next);
    for (size_t i = 0; i < n; i++) {
        if (sp->pr.role == RNDZ_PREDICT_EASY) {
            struct sockaddr_storage to = sp->peer;
            rndz__addr_set_port(&to, htons(out[i].port)); /* predict.h: host order */
            rndz__probe_send(fd, RNDZ_PROBE, RNDZ_PREDICT_SEQ | (uint32_t)i, nonce, &to);
            continue;
        }
        uint32_t k = out[i].index;
        if (out[i].open) sp->fds[k] = rndz__client_fresh(c, SOCK_DGRAM);
        if (sp->fds[k] >= 0)
            rndz__probe_send(sp->fds[k], RNDZ_PROBE, RNDZ_PREDICT_SEQ | k, nonce, &sp->peer);
    }
    return next;
}

/* A datagram on the hard side's socket k: a probe gets an ack, an ack verifies. */
static void spray_read(spray *sp, int k, uint64_t nonce, rndz__punch *p, uint64_t now) {
    uint8_t buf[RNDZ_PROBE_LEN + 1];
    struct sockaddr_storage from;
    socklen_t fl = sizeof from;
    ssize_t r = recvfrom(sp->fds[k], buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
    int type;
    uint32_t seq;
    uint64_t got;
    if (r < 0 || !rndz__probe_decode(buf, (size_t)r, &type, &seq, &got) || got != nonce) return;
    if (type == RNDZ_PROBE) rndz__probe_send(sp->fds[k], RNDZ_PROBE_ACK, seq, nonce, &from);
    if (type != RNDZ_PROBE_ACK || p->state != RNDZ_PUNCH_RUNNING) return;
    p->winner = rndz__punch_adopt(p, &from);
    p->rtt_ms = now > sp->pr.start ? (uint32_t)(now - sp->pr.start) : 1;
    p->state = RNDZ_PUNCH_VERIFIED;
    sp->winner = k;
}

/* The NAT check after the Redirect and what follows from it (nat.h, predict.h). */
typedef struct natq {
    int state;                    /* 0 nothing to ask, 1 to ask the other address, 2 done */
    struct sockaddr_storage seen; /* what the server that answered saw */
    struct sockaddr_storage alt;  /* its other address */
    uint64_t next;
    int tries;
    int their_nat;
    char mapped[RNDZ_ADDRSTRLEN]; /* the listener's candidate that is a gateway mapping */
    struct sockaddr_storage peer, server;
    const char *target;
    size_t tlen;
    rndz__ext *mine;
    bool spraying;
    spray sp;
} natq;

/* Our mapping is known: one side destination-dependent and the other not: predict ports;
 * both: the relay at once. Either way the listener learns ours through the server (an Isync
 * of the same session, forwarded as a Fsync). Returns the new relay time. */
static uint64_t natq_decide(natq *q, const rndz__client *c, int fd, int mine, rndz__rpeer *rp,
                            uint64_t relay_at, uint64_t now, uint64_t deadline) {
    q->state = 2;
    q->mine->nat = (uint32_t)mine;
    RNDZ_LOG(RNDZ_LOG_DEBUG, "udp connect: our NAT maps %s, the peer's %s",
             rndz_nat_mapping_name(mine), rndz_nat_mapping_name(q->their_nat));
    if (q->mapped[0]) return relay_at; /* the listener's gateway mapping takes any of us */
    bool me_hard = mine == RNDZ_NAT_ENDPOINT_DEPENDENT;
    bool they_hard = q->their_nat == RNDZ_NAT_ENDPOINT_DEPENDENT;
    bool me_easy = mine == RNDZ_NAT_ENDPOINT_INDEPENDENT;
    bool they_easy = q->their_nat == RNDZ_NAT_ENDPOINT_INDEPENDENT;
    if (!(me_hard && they_hard) && !(me_hard && they_easy) && !(they_hard && me_easy))
        return relay_at;
    int rc = rndz__client_send(fd, c, RNDZ_REQ_ISYNC, q->target, q->tlen, &q->server, q->mine);
    if (rc) RNDZ_LOG(RNDZ_LOG_DEBUG, "udp connect: Isync with our NAT: %s", rndz_strerror(rc));
    if (me_hard && they_hard) return rp->role ? now : relay_at;
    rndz__predict_init(&q->sp.pr, me_hard ? RNDZ_PREDICT_HARD : RNDZ_PREDICT_EASY, now,
                       (uint32_t)(deadline > now ? deadline - now : 0),
                       ntohs(rndz__addr_port(&q->peer)), rndz__random());
    q->sp.peer = q->peer;
    q->sp.winner = -1;
    for (int k = 0; k < RNDZ_PREDICT_SOCKETS; k++) q->sp.fds[k] = -1;
    q->spraying = true;
    RNDZ_LOG(RNDZ_LOG_INFO, "udp connect: %s behind a destination-dependent NAT: predicting ports",
             me_hard ? "we are" : "the peer is");
    uint64_t later = now + (c->relay_after_ms > PREDICT_RELAY_MS ? c->relay_after_ms
                                                                 : PREDICT_RELAY_MS);
    /* a relay planned for later waits for the prediction (not one asked for at once) */
    return rp->role && relay_at != UINT64_MAX && relay_at > now && relay_at < later ? later
                                                                                     : relay_at;
}

/* Ask the server's other address what it sees (a Ping that does not register). */
static void natq_ask(natq *q, const rndz__client *c, int fd, uint64_t now) {
    rndz__ext e;
    memset(&e, 0, sizeof e);
    e.query = RNDZ__Q_OBSERVED | RNDZ__Q_NOREG;
    e.pad = RNDZ__Q_PAD;
    uint8_t buf[RNDZ_MAX_MSG];
    int n = rndz__client_request(c, RNDZ_REQ_PING, NULL, 0, &e, false, NULL, buf, sizeof buf);
    if (n > 0)
        sendto(fd, buf, (size_t)n, MSG_DONTWAIT, (const struct sockaddr *)&q->alt,
               rndz__addr_len((const struct sockaddr *)&q->alt));
    q->next = now + NAT_RETRY_MS;
    q->tries++;
}

/* The connect session after the Redirect, with a listener that probes: probe its candidates,
 * answer its probes, until one path answers; with a relay offered (rp->fd < 0 until then),
 * join it at relay_at, and from then on the relay is the path (relay_peer.h); with one side
 * behind a destination-dependent NAT, `sp` predicts ports. Returns the fd that carries the
 * peer (fd, a prediction socket, or the relay's socket) or an error; fills info. */
static int probe_peer(int fd, const rndz__client *c, rndz__punch *p, uint64_t start,
                      rndz_peer_info *info, rndz__rpeer *rp, uint64_t relay_at, natq *q) {
    uint8_t buf[RNDZ_MAX_MSG + 1];
    bool relaying = false;
    spray *sp = NULL;
    bool hard = false;
    static __thread struct pollfd pf[2 + RNDZ_PREDICT_SOCKETS];
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
                RNDZ_LOG(RNDZ_LOG_INFO, "udp connect: %s; joining the relay",
                         now - start < 50 ? "a direct path is impossible" : "no direct path yet");
            }
        }
        if (q->state == 1 && now >= q->next) {
            if (q->tries >= NAT_TRIES) {
                relay_at = natq_decide(q, c, fd, RNDZ_NAT_UNKNOWN, rp, relay_at, now, p->deadline);
            } else {
                natq_ask(q, c, fd, now);
            }
        }
        if (q->spraying && !sp) {
            sp = &q->sp;
            hard = sp->pr.role == RNDZ_PREDICT_HARD;
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
            if (sp) {
                uint64_t snext = spray_tick(sp, c, fd, p->nonce, now);
                if (snext < next) next = snext;
            }
            if (rp->role && relay_at < next) next = relay_at;
            if (q->state == 1 && q->next < next) next = q->next;
        }
        nfds_t nf = 0;
        pf[nf++] = (struct pollfd){.fd = fd, .events = POLLIN};
        pf[nf++] = (struct pollfd){.fd = relaying ? rp->fd : -1, .events = POLLIN};
        if (hard && !relaying)
            for (int k = 0; k < RNDZ_PREDICT_SOCKETS; k++)
                pf[nf++] = (struct pollfd){.fd = sp->fds[k], .events = POLLIN};
        int pr = poll(pf, nf, next == UINT64_MAX ? 0 : (int)(next > now ? next - now : 0));
        if (pr < 0 && errno != EINTR) return -errno;
        if (pr <= 0) continue;
        if (relaying && (pf[1].revents & (POLLIN | POLLERR))) {
            int rc = rndz__rpeer_readable(rp, rndz__now_ms());
            if (rc) return rc;
        }
        for (nfds_t k = 2; k < nf && p->state == RNDZ_PUNCH_RUNNING; k++)
            if (pf[k].revents & POLLIN) spray_read(sp, (int)(k - 2), p->nonce, p, rndz__now_ms());
        if (!(pf[0].revents & POLLIN)) continue;
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t r = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        int type;
        uint32_t seq;
        uint64_t nonce;
        if (r > 0 && q->state == 1 &&
            rndz__addr_equal((struct sockaddr *)&from, (struct sockaddr *)&q->alt)) {
            /* the other address's answer: what it saw for this port */
            rndz_msg m;
            rndz__ext e;
            struct sockaddr_storage seen;
            if (rndz_msg_decode(buf, (size_t)r, 1, &m) == 0 && m.cmd == RNDZ_RSP_PONG &&
                rndz__ext_decode(buf, (size_t)r, &e) == 0 && e.observed[0] &&
                rndz_addr_parse(e.observed, &seen, NULL) == 0) {
                rndz__addr_unmap(&seen);
                int mapping = rndz__addr_equal((struct sockaddr *)&seen, (struct sockaddr *)&q->seen)
                                  ? RNDZ_NAT_ENDPOINT_INDEPENDENT : RNDZ_NAT_ENDPOINT_DEPENDENT;
                relay_at = natq_decide(q, c, fd, mapping, rp, relay_at, rndz__now_ms(), p->deadline);
            }
            continue;
        }
        if (r < 0 || !rndz__probe_decode(buf, (size_t)r, &type, &seq, &nonce) || nonce != p->nonce)
            continue; /* late server answers and the like */
        if (type == RNDZ_PROBE) rndz__probe_send(fd, RNDZ_PROBE_ACK, seq, nonce, &from);
        else if (type == RNDZ_PROBE_ACK && !relaying && (seq & RNDZ_PREDICT_SEQ) && sp) {
            /* a predicted port answered: that is the peer's mapping toward us */
            p->winner = rndz__punch_adopt(p, &from);
            uint64_t t = rndz__now_ms();
            p->rtt_ms = t > sp->pr.start ? (uint32_t)(t - sp->pr.start) : 1;
            p->state = RNDZ_PUNCH_VERIFIED;
        } else if (type == RNDZ_PROBE_ACK && !relaying) {
            rndz__punch_on_ack(p, &from, seq, rndz__now_ms());
        }
    }
    uint64_t now = rndz__now_ms();
    info->verified = 1;
    info->elapsed_ms = (uint32_t)(now - start);
    if (relaying) {
        spray_close(sp, -1);
        info->addr = rp->addr;
        info->rtt_ms = rp->rtt_ms;
        info->relayed = 1;
        return rndz__rpeer_take(rp, c);
    }
    rndz__rpeer_close(rp);
    const struct sockaddr_storage *w = &p->cand[p->winner];
    /* the socket that carries it: fd, or on the hard side the prediction's winner */
    int out = hard && sp->winner >= 0 ? sp->fds[sp->winner] : fd;
    spray_close(sp, hard ? sp->winner : -1);
    /* Keep probes from the application (those queued already too: the listener hands its
     * socket out only once our confirm came, so nothing of its application's is queued yet),
     * tell the listener its ack arrived (its proof of the path), pin the socket to the
     * winner. */
    rndz__probe_filter_drop(out);
    rndz__probe_drain(out);
    for (int k = 0; k < CONFIRM_COPIES; k++) rndz__probe_send(out, RNDZ_PROBE_CONFIRM, 0, p->nonce, w);
    if (connect(out, (const struct sockaddr *)w, rndz__addr_len((const struct sockaddr *)w)) < 0)
        return -errno;
    info->addr = *w;
    info->rtt_ms = p->rtt_ms;
    info->advertised = p->winner != 0; /* candidate 0 is the address the server saw */
    struct sockaddr_storage m;
    info->mapped = q->mapped[0] && rndz_addr_parse(q->mapped, &m, NULL) == 0 &&
                   rndz__addr_equal((const struct sockaddr *)&m, (const struct sockaddr *)w);
    /* prediction ran: whichever socket verified, a path through a destination-dependent NAT
     * exists only thanks to it (the plain punch cannot cross one) */
    info->predicted = sp != NULL;
    return out;
}

/* Server sets: is "not found" the answer? When per_id servers said so: at once if they are
 * the first per_id of the target's ranking; if stand-ins (asked because one of those was
 * silent) are among them, only once a listener would have failed over to them (its server
 * down for RNDZ_LINK_DOWN_MS, srvlink.h), so a slow first server is not taken for a lost one. */
static bool not_found_yet(const rndz__client *c, const uint8_t *trank, const bool *not_found,
                          size_t n_not_found, uint64_t elapsed) {
    if (n_not_found < c->per_id) return false;
    bool firsts = true;
    for (size_t r = 0; r < c->per_id; r++) firsts &= not_found[trank[r]];
    return firsts || elapsed >= RNDZ_LINK_DOWN_MS + FAILOVER_GRACE_MS;
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
    bool not_found[RNDZ_MAX_SERVERS] = {0}, heard[RNDZ_MAX_SERVERS] = {0};
    size_t n_not_found = 0;
    /* Server sets (srvset.h): the target's servers, in its ranking. The first per_id are
     * asked; each of those that stays silent a round adds the next of the ranking (where its
     * listener went when that one was down). "Not found" from per_id of them is the answer. */
    uint8_t trank[RNDZ_MAX_SERVERS];
    rndz__hrw_rank(target, tlen, (const char (*)[RNDZ_ADDRSTRLEN])c.server_text, c.n_servers, trank);
    size_t n_ask = c.per_id;
    unsigned rounds = 0;
    bool elsewhere = false; /* a server has it over TCP (RNDZ_E_TRANSPORT) */
    uint64_t start = rndz__now_ms(), deadline = start + c.timeout_ms;
    uint64_t next_round = start;
    uint32_t round = FIRST_ROUND_MS < c.round_ms ? FIRST_ROUND_MS : c.round_ms;
    uint8_t buf[RNDZ_MAX_MSG + 1];
    for (;;) {
        uint64_t now = rndz__now_ms();
        if (now >= deadline) {
            rc = RNDZ_E_TIMEDOUT;
            break;
        }
        if (n_not_found && not_found_yet(&c, trank, not_found, n_not_found, now - start)) {
            rc = elsewhere ? RNDZ_E_TRANSPORT : RNDZ_E_NOTFOUND;
            break;
        }
        if (now >= next_round) {
            /* Servers that said "not found" are asked again: while others stay silent, the
             * target may register with one of them. */
            if (rounds++ > 0) {
                size_t silent = 0;
                for (size_t r = 0; r < n_ask; r++) silent += !heard[trank[r]];
                if (c.per_id + silent > n_ask)
                    n_ask = c.per_id + silent < c.n_servers ? c.per_id + silent : c.n_servers;
            }
            for (size_t r = 0; r < n_ask; r++) {
                size_t i = trank[r];
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
        heard[si] = true;
        if (m.addr_len == 0) {
            if (!not_found[si]) {
                not_found[si] = true;
                n_not_found++;
            }
            rndz__ext hint;
            if (rndz__ext_decode(buf, (size_t)n, &hint) == 0 && hint.elsewhere) elsewhere = true;
            if (not_found_yet(&c, trank, not_found, n_not_found, rndz__now_ms() - start)) {
                rc = elsewhere ? RNDZ_E_TRANSPORT : RNDZ_E_NOTFOUND;
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
            /* Our NAT (nat.h), told after the Redirect: the server that answered says what
             * it saw (field 24) and names its other addresses (25); one of those, asked from
             * this port, sees the same address or another. */
            static __thread natq nq;
            memset(&nq, 0, sizeof nq);
            nq.their_nat = (int)theirs.nat;
            memcpy(nq.mapped, theirs.mapped, sizeof nq.mapped);
            nq.peer = peer;
            nq.server = from;
            nq.target = target;
            nq.tlen = tlen;
            nq.mine = &mine;
            if (theirs.observed[0] && rndz_addr_parse(theirs.observed, &nq.seen, NULL) == 0) {
                rndz__addr_unmap(&nq.seen);
                for (size_t k = 0; k < theirs.nalt && !nq.state; k++) {
                    struct sockaddr_storage a;
                    if (rndz_addr_parse(theirs.alt[k], &a, NULL)) continue;
                    struct sockaddr_storage f = from;
                    rndz__addr_unmap(&f);
                    rndz__addr_unmap(&a);
                    if (rndz__addr_equal((struct sockaddr *)&a, (struct sockaddr *)&f)) continue;
                    if (c.local.ss_family == AF_INET6) rndz__addr_map(&a);
                    else if (a.ss_family != AF_INET) continue;
                    nq.alt = a;
                    nq.state = 1; /* ask it */
                }
            }
            spray *spp = NULL;
            int got = probe_peer(fd, &c, &p, start, &info, &rp, relay_at, &nq);
            spp = nq.spraying ? &nq.sp : NULL;
            if (got < 0) spray_close(spp, -1);
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
        RNDZ_LOG(RNDZ_LOG_INFO, "udp connect: %s at %s%s%s, %s, rtt %u ms, after %u ms", target,
                 info.relayed ? "relay " : "", info.predicted ? "(predicted) " : "", text,
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
