/* client_udp.c: the UDP listener and the UDP connector (BRIEF, "Clients").
 *
 * Listener: one socket per server, connected to it, plus one unconnected "peer" socket, all
 * bound to the same local port. Linux hands a datagram to the connected socket whose remote
 * matches and everything else to the unconnected one. A background thread pings every server
 * and answers Fsync{P, B} with Rsync{P} to the server and the same bytes to B (the punch that
 * opens our NAT toward B).
 *
 * Connector: one unconnected socket; Isync{T} to every server, in paced rounds, until a
 * server answers Redirect{T, B} or every server said the target is unknown (RNDZ_E_NOTFOUND)
 * or the time is up (RNDZ_E_TIMEDOUT).
 *
 * Verified paths (ext.h, punch.h): the connector's Isync carries its local candidates and a
 * session nonce. A listener that sees them in the Fsync answers with its own candidates in
 * Rsync (instead of the v1 punch) and both sides probe every candidate of the other until an
 * ack proves a path both ways. The listener's probes and acks go through a fourth socket on
 * the same port: a reuseport program in the kernel steers every probe datagram to it, so the
 * application's peer socket never sees one. With a v1 peer or server the extension fields are
 * missing and both sides behave as rndz 0.1.5. */
#include "client.h"
#include "loop.h"
#include "punch.h"

#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Until a server first answers, ping it this often: a lost first ping then costs one second,
 * not a whole keepalive interval. */
#define FIRST_PING_RETRY_MS 1000

/* A server that has not answered for this many keepalive intervals is taken as lost (or
 * restarted, having forgotten us): ping it at the fast first-ping pace until it answers. */
#define LOST_INTERVALS 3
/* Connect sessions a listener runs at once; the oldest gives way. */
#define MAX_SESSIONS 32
/* A listener answers a session's probes for at least this long after it began: the peer's
 * connect timeout may be longer than ours (its default is 10 s). */
#define SESSION_LINGER_MS 30000
/* Peers reported by next_peer, waiting to be taken. */
#define PEER_QUEUE 64
/* Isync rounds start this fast and double up to round_ms: a lost Isync (or Fsync, Rsync,
 * Redirect) then costs a fraction of a second, and a server is not hammered. */
#define FIRST_ROUND_MS 200
/* The confirm is sent this many times at once: it is the listener's only news that its ack
 * arrived, and a retry later would hit the application's socket filter. */
#define CONFIRM_COPIES 3

typedef struct srv_sock {
    int fd;
    rndz__io io;
    struct rndz_udp_listener *l;
    size_t idx;
    uint64_t next_ping, last_pong;
    bool answered;
} srv_sock;

typedef struct session {
    bool used;
    char peer_id[RNDZ_MAX_ID + 1];
    rndz__punch p;
    uint64_t started, ended, last_ack_sent;
} session;

struct rndz_udp_listener {
    rndz__client c;
    srv_sock srv[RNDZ_MAX_SERVERS];
    int peer_fd;
    int probe_fd; /* -1: the kernel cannot steer probes; act as a v1 listener */
    rndz__io probe_io;
    rndz__ext my_cands;
    session sessions[MAX_SESSIONS];
    rndz__loop loop;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool registered, closed;
    rndz_peer_info q[PEER_QUEUE];
    size_t qhead, qlen;
};

static int send_request(int fd, const rndz__client *c, rndz_cmd cmd, const char *peer,
                        size_t peer_len, const struct sockaddr_storage *to,
                        const rndz__ext *ext) {
    uint8_t buf[RNDZ_MAX_MSG];
    int n = rndz__encode(cmd, c->id, c->id_len, peer, peer_len, NULL, 0, buf, sizeof buf);
    if (n >= 0 && ext) n = rndz__ext_append(ext, buf, (size_t)n, sizeof buf);
    n = rndz__client_sign(c, buf, n, sizeof buf, to); /* last: it covers every other byte */
    if (n < 0) return n;
    ssize_t w = to ? sendto(fd, buf, (size_t)n, MSG_DONTWAIT, (const struct sockaddr *)to,
                            rndz__addr_len((const struct sockaddr *)to))
                   : send(fd, buf, (size_t)n, MSG_DONTWAIT);
    return w < 0 ? -errno : 0;
}

static void push_peer(rndz_udp_listener *l, const rndz_peer_info *info) {
    pthread_mutex_lock(&l->mu);
    if (l->qlen == PEER_QUEUE) { /* nobody reads them: the oldest goes */
        l->qhead = (l->qhead + 1) % PEER_QUEUE;
        l->qlen--;
    }
    l->q[(l->qhead + l->qlen++) % PEER_QUEUE] = *info;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static void copy_id(char *dst, const char *src, size_t len) {
    if (len > RNDZ_MAX_ID) len = RNDZ_MAX_ID;
    memcpy(dst, src, len);
    dst[len] = 0;
}

static session *find_session(rndz_udp_listener *l, uint64_t nonce) {
    for (size_t i = 0; i < MAX_SESSIONS; i++)
        if (l->sessions[i].used && l->sessions[i].p.nonce == nonce) return &l->sessions[i];
    return NULL;
}

static session *new_session(rndz_udp_listener *l) {
    session *oldest = &l->sessions[0];
    for (size_t i = 0; i < MAX_SESSIONS; i++) {
        if (!l->sessions[i].used) return &l->sessions[i];
        if (l->sessions[i].started < oldest->started) oldest = &l->sessions[i];
    }
    return oldest;
}

/* Add the candidates of an extension (text from the wire) to a punch. */
static void add_cands(const rndz__client *c, rndz__punch *p, const rndz__ext *e) {
    for (size_t i = 0; i < e->ncands; i++) {
        struct sockaddr_storage a;
        if (rndz__client_peer_addr(c, e->cands[i], strlen(e->cands[i]), &a) == 0)
            rndz__punch_add(p, &a, rndz__addr_is_private(&a));
    }
}

static void on_fsync(rndz_udp_listener *l, srv_sock *s, const rndz_msg *m, const uint8_t *raw,
                     size_t raw_len) {
    struct sockaddr_storage peer;
    char peer_id[RNDZ_MAX_ID + 1];
    copy_id(peer_id, m->peer_id, m->peer_id_len);
    if (rndz__client_peer_addr(&l->c, m->addr, m->addr_len, &peer)) {
        RNDZ_LOG(RNDZ_LOG_WARN, "udp listener: Fsync with a bad address dropped");
        return;
    }
    char text[RNDZ_ADDRSTRLEN];
    rndz_addr_format((struct sockaddr *)&peer, text, sizeof text);
    rndz__ext ext;
    uint64_t now = rndz__now_ms();
    if (l->probe_fd >= 0 && rndz__ext_decode(raw, raw_len, &ext) == 0 && ext.has_nonce) {
        /* A peer that probes: answer with our candidates, then probe each of its own. */
        session *se = find_session(l, ext.nonce);
        if (!se) {
            se = new_session(l);
            memset(se, 0, sizeof *se);
            se->used = true;
            se->started = now;
            copy_id(se->peer_id, m->peer_id, m->peer_id_len);
            rndz__punch_init(&se->p, ext.nonce, now, l->c.timeout_ms);
            rndz__punch_add(&se->p, &peer, rndz__addr_is_private(&peer));
            add_cands(&l->c, &se->p, &ext);
            RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: peer %s at %s (+%zu candidates) wants to "
                     "connect; probing", peer_id, text, ext.ncands);
        }
        rndz__ext mine = l->my_cands;
        mine.has_nonce = true;
        mine.nonce = ext.nonce;
        int rc = send_request(s->fd, &l->c, RNDZ_REQ_RSYNC, m->peer_id, m->peer_id_len, NULL,
                              &mine);
        if (rc) RNDZ_LOG(RNDZ_LOG_DEBUG, "udp listener: Rsync to server: %s", rndz_strerror(rc));
        return;
    }
    RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: peer %s at %s wants to connect", peer_id, text);
    /* v1: first the punch (the Rsync bytes, as v1 sends them) that opens our NAT toward the
     * peer, then Rsync to the server, which redirects the peer to us: the punch is then on
     * its way before the peer even learns our address. */
    int rc = send_request(l->peer_fd, &l->c, RNDZ_REQ_RSYNC, m->peer_id, m->peer_id_len, &peer,
                          NULL);
    if (rc) RNDZ_LOG(RNDZ_LOG_DEBUG, "udp listener: punch to %s: %s", text, rndz_strerror(rc));
    rc = send_request(s->fd, &l->c, RNDZ_REQ_RSYNC, m->peer_id, m->peer_id_len, NULL, NULL);
    if (rc) RNDZ_LOG(RNDZ_LOG_DEBUG, "udp listener: Rsync to server: %s", rndz_strerror(rc));
    rndz_peer_info info = {.addr = peer, .lan = rndz__addr_is_private(&peer)};
    rndz__addr_unmap(&info.addr);
    copy_id(info.id, m->peer_id, m->peer_id_len);
    push_peer(l, &info);
}

static void srv_readable(void *ctx, uint32_t events) {
    srv_sock *s = ctx;
    rndz_udp_listener *l = s->l;
    uint8_t buf[RNDZ_MAX_MSG + 1];
    for (int i = 0; i < 64; i++) {
        ssize_t n = recv(s->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN) return;
            /* ECONNREFUSED: an ICMP error from the server (down or restarting); keep going */
            RNDZ_LOG(RNDZ_LOG_DEBUG, "udp listener: server %s: %s", l->c.server_text[s->idx],
                     rndz_strerror(-errno));
            continue;
        }
        rndz_msg m;
        if (rndz_msg_decode(buf, (size_t)n, 1, &m)) continue;
        if (m.cmd == RNDZ_RSP_PONG) {
            uint64_t now = rndz__now_ms();
            s->last_pong = now;
            if (!s->answered) {
                s->answered = true;
                s->next_ping = now + rndz__client_jitter(l->c.keepalive_ms);
                RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: registered with %s",
                         l->c.server_text[s->idx]);
            }
            pthread_mutex_lock(&l->mu);
            l->registered = true;
            pthread_cond_broadcast(&l->cv);
            pthread_mutex_unlock(&l->mu);
        } else if (m.cmd == RNDZ_RSP_FSYNC) {
            on_fsync(l, s, &m, buf, (size_t)n);
        }
    }
}

static void send_probe(int fd, int type, uint32_t seq, uint64_t nonce,
                       const struct sockaddr_storage *to) {
    uint8_t b[RNDZ_PROBE_LEN];
    rndz__probe_encode(b, type, seq, nonce);
    sendto(fd, b, sizeof b, MSG_DONTWAIT, (const struct sockaddr *)to,
           rndz__addr_len((const struct sockaddr *)to));
}

static void session_verified(rndz_udp_listener *l, session *se, uint64_t now) {
    rndz_peer_info info = {.rtt_ms = se->p.rtt_ms, .verified = 1,
                           .elapsed_ms = (uint32_t)(now - se->started)};
    info.addr = se->p.cand[se->p.winner];
    rndz__addr_unmap(&info.addr);
    info.lan = rndz__addr_is_private(&info.addr);
    memcpy(info.id, se->peer_id, sizeof info.id < sizeof se->peer_id ? sizeof info.id
                                                                      : sizeof se->peer_id);
    char text[RNDZ_ADDRSTRLEN];
    rndz_addr_format((struct sockaddr *)&info.addr, text, sizeof text);
    RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: peer %s verified at %s, rtt %u ms", se->peer_id, text,
             info.rtt_ms);
    se->ended = now;
    push_peer(l, &info);
}

/* The listener's probe socket: probes get acks (only for sessions a server announced: we
 * are no reflector), acks and confirms verify a session. */
static void probe_readable(void *ctx, uint32_t events) {
    rndz_udp_listener *l = ctx;
    for (int i = 0; i < 64; i++) {
        uint8_t b[RNDZ_PROBE_LEN + 1];
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(l->probe_fd, b, sizeof b, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        if (n < 0) {
            if (errno == EAGAIN) return;
            continue;
        }
        int type;
        uint32_t seq;
        uint64_t nonce;
        if (!rndz__probe_decode(b, (size_t)n, &type, &seq, &nonce)) continue;
        session *se = find_session(l, nonce);
        if (!se) continue;
        uint64_t now = rndz__now_ms();
        if (type == RNDZ_PROBE) {
            send_probe(l->probe_fd, RNDZ_PROBE_ACK, seq, nonce, &from);
            se->last_ack_sent = now;
            continue;
        }
        if (se->p.state == RNDZ_PUNCH_VERIFIED) continue;
        if (type == RNDZ_PROBE_ACK) {
            rndz__punch_on_ack(&se->p, &from, seq, now);
        } else { /* confirm: the connector picked this path; our ack proved it */
            rndz__punch_add(&se->p, &from, rndz__addr_is_private(&from));
            for (size_t k = 0; k < se->p.ncand; k++)
                if (rndz__addr_equal((struct sockaddr *)&se->p.cand[k], (struct sockaddr *)&from))
                    se->p.winner = (int)k;
            uint64_t since = se->last_ack_sent ? now - se->last_ack_sent : 0;
            se->p.rtt_ms = since ? (uint32_t)since : 1;
            se->p.state = RNDZ_PUNCH_VERIFIED;
        }
        if (se->p.state == RNDZ_PUNCH_VERIFIED) session_verified(l, se, now);
    }
}

static uint64_t sessions_tick(rndz_udp_listener *l, uint64_t now) {
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < MAX_SESSIONS; i++) {
        session *se = &l->sessions[i];
        if (!se->used) continue;
        rndz__punch_send sends[RNDZ_MAX_CANDS + 1];
        uint64_t wake;
        int before = se->p.state;
        size_t n = rndz__punch_tick(&se->p, now, sends, RNDZ_ARRAY_LEN(sends), &wake);
        for (size_t k = 0; k < n; k++)
            send_probe(l->probe_fd, RNDZ_PROBE, sends[k].seq, se->p.nonce, &se->p.cand[sends[k].cand]);
        if (before == RNDZ_PUNCH_RUNNING && se->p.state == RNDZ_PUNCH_VERIFIED)
            session_verified(l, se, now); /* the LAN grace ended */
        if (before == RNDZ_PUNCH_RUNNING && se->p.state == RNDZ_PUNCH_FAILED) {
            RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: no path to peer %s", se->peer_id);
            se->ended = now;
        }
        /* A finished session keeps answering the peer's probes until the peer's own deadline
         * could have passed: we may have verified through an ack of ours while every ack we
         * sent was lost, and the peer still probes. */
        if (se->p.state != RNDZ_PUNCH_RUNNING) {
            uint64_t window = l->c.timeout_ms > SESSION_LINGER_MS ? l->c.timeout_ms
                                                                  : SESSION_LINGER_MS;
            uint64_t linger = se->started + window + 2000;
            if (linger < se->ended + 2000) linger = se->ended + 2000;
            if (now >= linger) se->used = false;
            else wake = linger;
        }
        if (wake < next) next = wake;
    }
    return next;
}

static uint64_t listener_tick(void *ctx, uint64_t now) {
    rndz_udp_listener *l = ctx;
    uint64_t next = sessions_tick(l, now);
    for (size_t i = 0; i < l->c.n_servers; i++) {
        srv_sock *s = &l->srv[i];
        uint64_t lost_after = (uint64_t)LOST_INTERVALS * l->c.keepalive_ms + 1000;
        if (s->answered && now - s->last_pong > lost_after) {
            s->answered = false; /* lost or restarted: register again, fast */
            RNDZ_LOG(RNDZ_LOG_WARN, "udp listener: server %s stopped answering; registering "
                     "again", l->c.server_text[i]);
        }
        if (now >= s->next_ping) {
            int rc = send_request(s->fd, &l->c, RNDZ_REQ_PING, NULL, 0, NULL, NULL);
            if (rc) RNDZ_LOG(RNDZ_LOG_DEBUG, "udp listener: ping %s: %s", l->c.server_text[i],
                             rndz_strerror(rc));
            uint32_t wait = s->answered ? rndz__client_jitter(l->c.keepalive_ms)
                                        : (l->c.keepalive_ms < FIRST_PING_RETRY_MS
                                               ? l->c.keepalive_ms
                                               : FIRST_PING_RETRY_MS);
            s->next_ping = now + wait;
        }
        if (s->next_ping < next) next = s->next_ping;
        if (s->answered && s->last_pong + lost_after + 1 < next) next = s->last_pong + lost_after + 1;
    }
    return next;
}

static void *listener_thread(void *arg) {
    rndz_udp_listener *l = arg;
    int rc = rndz__loop_run(&l->loop, listener_tick, l);
    if (rc) RNDZ_LOG(RNDZ_LOG_ERROR, "udp listener loop failed: %s", rndz_strerror(rc));
    return NULL;
}

static void listener_close(rndz_udp_listener *l) {
    for (size_t i = 0; i < RNDZ_MAX_SERVERS; i++)
        if (l->srv[i].fd >= 0) close(l->srv[i].fd);
    if (l->peer_fd >= 0) close(l->peer_fd);
    if (l->probe_fd >= 0) close(l->probe_fd);
    rndz__loop_close(&l->loop);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

/* The probe socket joins the peer socket's reuseport group as index 1 (the peer socket is
 * index 0: both are bound before any server socket, and a server socket that leaves the group
 * later only moves sockets behind them); a program in the group sends every probe datagram
 * to index 1. Without it (an old kernel), probes would reach the application: then we stay a
 * v1 listener. */
static int setup_probes(rndz_udp_listener *l) {
    int fd = rndz__client_bind(&l->c, SOCK_DGRAM);
    if (fd < 0) return fd; /* e.g. the socket-configuration callback said no */
    int rc = rndz__probe_steer(l->peer_fd, 1, 0);
    if (rc) {
        RNDZ_LOG(RNDZ_LOG_WARN, "udp listener: cannot steer probes (%s): peers connect the v1 "
                 "way, unverified", rndz_strerror(rc));
        close(fd);
        return 0;
    }
    l->probe_fd = fd;
    l->probe_io = (rndz__io){fd, probe_readable, l};
    if ((rc = rndz__loop_add(&l->loop, &l->probe_io, EPOLLIN))) return rc;
    rndz__local_cands(&l->c.local, l->c.local.ss_family == AF_INET6, &l->my_cands);
    return 0;
}

int rndz_udp_listener_create(const rndz_client_options *o, rndz_udp_listener **out) {
    if (!out) return -EINVAL;
    *out = NULL;
    rndz_udp_listener *l = calloc(1, sizeof *l);
    if (!l) return -ENOMEM;
    l->peer_fd = l->probe_fd = -1;
    l->loop.epfd = l->loop.wakefd = -1;
    for (size_t i = 0; i < RNDZ_MAX_SERVERS; i++) l->srv[i].fd = -1;
    rndz__client_sync_init(&l->mu, &l->cv);
    int rc = rndz__client_init(&l->c, o);
    if (rc) goto fail;
    if ((rc = rndz__loop_init(&l->loop))) goto fail;
    /* The peer socket first: it fixes the port and is index 0 of the reuseport group. */
    if ((rc = rndz__client_bind(&l->c, SOCK_DGRAM)) < 0) goto fail;
    l->peer_fd = rc;
    if ((rc = setup_probes(l))) goto fail;
    for (size_t i = 0; i < l->c.n_servers; i++) {
        srv_sock *s = &l->srv[i];
        if ((rc = rndz__client_bind(&l->c, SOCK_DGRAM)) < 0) goto fail;
        s->fd = rc;
        s->l = l;
        s->idx = i;
        if (connect(s->fd, (struct sockaddr *)&l->c.servers[i],
                    rndz__addr_len((struct sockaddr *)&l->c.servers[i])) < 0) {
            rc = -errno;
            goto fail;
        }
        s->io = (rndz__io){s->fd, srv_readable, s};
        if ((rc = rndz__loop_add(&l->loop, &s->io, EPOLLIN))) goto fail;
    }
    /* The peer socket is the caller's: hand it over blocking, like any fresh socket. */
    rndz__sock_set_nonblock(l->peer_fd, false);
    rc = pthread_create(&l->thread, NULL, listener_thread, l);
    if (rc) {
        rc = -rc;
        goto fail;
    }
    l->thread_started = true;
    *out = l;
    return 0;
fail:
    listener_close(l);
    return rc;
}

int rndz_udp_listener_next_peer(rndz_udp_listener *l, uint32_t timeout_ms,
                                rndz_peer_info *info) {
    if (!l) return -EINVAL;
    pthread_mutex_lock(&l->mu);
    rndz__client_wait_queue(&l->mu, &l->cv, &l->qlen, &l->closed, timeout_ms);
    if (!l->qlen) {
        int rc = l->closed ? RNDZ_E_CLOSED : RNDZ_E_TIMEDOUT;
        pthread_mutex_unlock(&l->mu);
        return rc;
    }
    if (info) *info = l->q[l->qhead];
    l->qhead = (l->qhead + 1) % PEER_QUEUE;
    l->qlen--;
    pthread_mutex_unlock(&l->mu);
    return 0;
}

int rndz_udp_listener_fd(rndz_udp_listener *l) { return l ? l->peer_fd : -EINVAL; }

int rndz_udp_listener_local_addr(rndz_udp_listener *l, struct sockaddr_storage *out,
                                 socklen_t *len) {
    if (!l || !out) return -EINVAL;
    return rndz__sock_local(l->peer_fd, out, len);
}

int rndz_udp_listener_wait_registered(rndz_udp_listener *l, uint32_t timeout_ms) {
    if (!l) return -EINVAL;
    return rndz__client_wait_registered(&l->mu, &l->cv, &l->registered, &l->closed, timeout_ms);
}

void rndz_udp_listener_destroy(rndz_udp_listener *l) {
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->closed = true;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    rndz__loop_stop(&l->loop);
    if (l->thread_started) pthread_join(l->thread, NULL);
    for (size_t i = 0; i < l->c.n_servers; i++)
        if (l->srv[i].fd >= 0)
            send_request(l->srv[i].fd, &l->c, RNDZ_REQ_BYE, NULL, 0, NULL, NULL);
    listener_close(l);
}

/* --- connector -------------------------------------------------------------------------- */

/* After connect(), datagrams that arrived before it are still queued: the punch from the
 * peer, a second server's Redirect, late probe acks. Drop those that are protocol messages,
 * so the caller's first read is the peer's data; stop at the first datagram that is not. */
static void drain_protocol(int fd) {
    uint8_t buf[RNDZ_MAX_MSG + 1];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT | MSG_PEEK);
        if (n < 0) return;
        rndz_msg m;
        int type;
        uint32_t seq;
        uint64_t nonce;
        if (rndz_msg_decode(buf, (size_t)n, 0, &m) != 0 &&
            rndz_msg_decode(buf, (size_t)n, 1, &m) != 0 &&
            !rndz__probe_decode(buf, (size_t)n, &type, &seq, &nonce))
            return;
        if (recv(fd, buf, sizeof buf, MSG_DONTWAIT) < 0) return;
    }
}

/* The connect session after the Redirect, with a listener that probes: probe its candidates,
 * answer its probes, until one path answers. Returns the fd connected to the winner, or an
 * error; fills info. */
static int probe_peer(int fd, const rndz__client *c, rndz__punch *p, uint64_t start,
                      rndz_peer_info *info) {
    uint8_t buf[RNDZ_MAX_MSG + 1];
    for (;;) {
        uint64_t now = rndz__now_ms(), next;
        rndz__punch_send sends[RNDZ_MAX_CANDS + 1];
        size_t n = rndz__punch_tick(p, now, sends, RNDZ_ARRAY_LEN(sends), &next);
        for (size_t k = 0; k < n; k++)
            send_probe(fd, RNDZ_PROBE, sends[k].seq, p->nonce, &p->cand[sends[k].cand]);
        if (p->state == RNDZ_PUNCH_FAILED) return RNDZ_E_PEERFAIL;
        if (p->state == RNDZ_PUNCH_VERIFIED) break;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, next == UINT64_MAX ? 0 : (int)(next > now ? next - now : 0));
        if (pr < 0 && errno != EINTR) return -errno;
        if (pr <= 0) continue;
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t r = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        int type;
        uint32_t seq;
        uint64_t nonce;
        if (r < 0 || !rndz__probe_decode(buf, (size_t)r, &type, &seq, &nonce) || nonce != p->nonce)
            continue; /* late server answers and the like */
        if (type == RNDZ_PROBE) send_probe(fd, RNDZ_PROBE_ACK, seq, nonce, &from);
        else if (type == RNDZ_PROBE_ACK) rndz__punch_on_ack(p, &from, seq, rndz__now_ms());
    }
    const struct sockaddr_storage *w = &p->cand[p->winner];
    /* Tell the listener its ack arrived (its proof of the path), then keep probes from the
     * application and pin the socket to the winner. */
    for (int k = 0; k < CONFIRM_COPIES; k++) send_probe(fd, RNDZ_PROBE_CONFIRM, 0, p->nonce, w);
    rndz__probe_filter_drop(fd);
    if (connect(fd, (const struct sockaddr *)w, rndz__addr_len((const struct sockaddr *)w)) < 0)
        return -errno;
    uint64_t now = rndz__now_ms();
    info->addr = *w;
    info->rtt_ms = p->rtt_ms;
    info->verified = 1;
    info->advertised = p->winner != 0; /* candidate 0 is the address the server saw */
    info->elapsed_ms = (uint32_t)(now - start);
    (void)c;
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
                int src = send_request(fd, &c, RNDZ_REQ_ISYNC, target, tlen, &c.servers[i], &mine);
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
            rc = probe_peer(fd, &c, &p, start, &info);
            if (rc < 0) break;
        } else {
            /* v1: the address the server gave, unverified, as rndz 0.1.5 does */
            if (connect(fd, (struct sockaddr *)&peer, rndz__addr_len((struct sockaddr *)&peer)) < 0) {
                rc = -errno;
                break;
            }
            info.addr = peer;
            info.elapsed_ms = (uint32_t)(rndz__now_ms() - start);
        }
        drain_protocol(fd);
        rndz__sock_set_nonblock(fd, false);
        rndz__addr_unmap(&info.addr);
        info.lan = rndz__addr_is_private(&info.addr);
        copy_id(info.id, target, tlen);
        char text[RNDZ_ADDRSTRLEN];
        rndz_addr_format((struct sockaddr *)&info.addr, text, sizeof text);
        RNDZ_LOG(RNDZ_LOG_INFO, "udp connect: %s at %s, %s, rtt %u ms, after %u ms", target, text,
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
    rndz_peer_info info;
    return rndz__client_peer_out(rndz_udp_connect_info(o, target, &info), &info, peer_out,
                                 peer_len);
}
