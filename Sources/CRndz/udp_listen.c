/* udp_listen.c: the UDP listener (BRIEF, "Clients"; the connector is udp_connect.c).
 *
 * Listener: one socket per server, connected to it, plus one unconnected "peer" socket, all
 * bound to the same local port. Linux hands a datagram to the connected socket whose remote
 * matches and everything else to the unconnected one. A background thread pings every server
 * and answers Fsync{P, B} with Rsync{P} to the server and the same bytes to B (the punch that
 * opens our NAT toward B).

 * Pings, loss detection and re-registration: srvlink.h; the thread, the registered/closed
 * state and the queue of peers with its readiness fd: listener.h.
 *
 * Verified paths (ext.h, punch.h): the connector's Isync carries its local candidates and a
 * session nonce. A listener that sees them in the Fsync answers with its own candidates in
 * Rsync (instead of the v1 punch) and both sides probe every candidate of the other until an
 * ack proves a path both ways. The listener's probes and acks go through a fourth socket on
 * the same port: a reuseport program in the kernel steers every probe datagram to it, so the
 * application's peer socket never sees one. With a v1 peer or server the extension fields are
 * missing and both sides behave as rndz 0.1.5. */
#include "client.h"
#include "srvset.h"
#include "ifaddr.h"
#include "listener.h"
#include "nat.h"
#include "pmp.h"
#include "predict.h"
#include "punch.h"
#include "relay_peer.h"
#include "srvlink.h"

#include <poll.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Connect sessions a listener runs at once; the oldest gives way. */
#define MAX_SESSIONS 32
/* A listener answers a session's probes for at least this long after it began: the peer's
 * connect timeout may be longer than ours (its default is 10 s). */
#define SESSION_LINGER_MS 30000
/* Peers reported by next_peer, waiting to be taken. */
#define PEER_QUEUE 64
/* Datagrams read from one socket per readiness event at most. */
#define READ_BATCH 64
/* The NAT check of our port after registering (nat.h): each ask resent this often, this many
 * times. */
#define NAT_RETRY_MS 300
#define NAT_TRIES 4
/* With port prediction under way the relay waits at least this long (as the connector). */
#define PREDICT_RELAY_MS 4000
/* Per-peer sockets made ahead, one per address a session's peer probes from (its private
 * and its public address, say; with port prediction, each of its sockets whose probe got
 * through: a few of its 256), at most this many. */
#define PRE_MAX 4

typedef struct srv_sock {
    int fd;
    rndz__io io;
    struct rndz_udp_listener *l;
    size_t idx;
    rndz__srvlink link;
    bool kept; /* one of the servers our id is registered with (srvset.h) */
    bool ever; /* registered with it before: a take-over now is of our own id (our NAT moved) */
} srv_sock;

struct session;
/* Port prediction of one session (predict.h): easy, probes from the probe socket; hard,
 * RNDZ_PREDICT_SOCKETS sockets of its own, each in the loop. */
typedef struct lspray_ref {
    struct session *se;
    int k;
} lspray_ref;

typedef struct lspray {
    struct session *owner; /* NULL: free. One per listener, never freed: an event of an epoll
                            * batch may name a socket of it after the session let it go */
    rndz__predict pr;
    struct sockaddr_storage peer;
    int fds[RNDZ_PREDICT_SOCKETS];
    rndz__io io[RNDZ_PREDICT_SOCKETS];
    lspray_ref ref[RNDZ_PREDICT_SOCKETS];
} lspray;

/* A socket made ahead for a peer (see pre_socket). */
typedef struct pre_ref {
    struct session *se;
    int k;
} pre_ref;

typedef struct session {
    bool used;
    char peer_id[RNDZ_MAX_ID + 1];
    rndz__punch p;
    uint64_t started, ended, last_ack_sent;
    /* per-peer sockets (after the first accept): the peer is handed out once the connector
     * chose its path: a confirm (direct) or "use" through the relay */
    bool handed;
    bool confirmed;
    rndz__rpeer rp; /* rp.role 0: no relay offered */
    uint64_t relay_at;
    rndz__io rio;
    struct rndz_udp_listener *l;
    lspray *sp; /* NULL: no prediction */
    bool decided; /* both NATs were known and acted on */
    /* per-peer sockets: the shared port connected to each address the peer probed from,
     * made before our ack goes (see pre_socket); -1: none */
    int pre_fd[PRE_MAX];
    struct sockaddr_storage pre_addr[PRE_MAX];
    rndz__io pre_io[PRE_MAX];
    pre_ref pre_ref[PRE_MAX];
} session;

struct rndz_udp_listener {
    rndz__client c;
    srv_sock srv[RNDZ_MAX_SERVERS];
    int peer_fd;
    int probe_fd; /* -1: the kernel cannot steer probes; act as a v1 listener */
    rndz__io probe_io;
    rndz__ext my_cands;
    session sessions[MAX_SESSIONS];
    rndz__lsn base;
    atomic_bool per_peer; /* rndz_udp_listener_accept was called */
    /* the NAT check of our port (nat.h): 0 to do, 1 server nat_srv asked, 2 its other address
     * asked, 3 done */
    int nat_state, nat_tries;
    size_t nat_srv; /* the server whose pings ask (state 1): the first of our id's ranking
                     * that is kept and not down */
    bool started; /* the first tick chose the servers to keep */
    int nat; /* RNDZ_NAT_* */
    uint64_t nat_next;
    struct sockaddr_storage nat_seen;
    int nat_fd; /* on our port, connected to the server's other address */
    rndz__io nat_io;
    /* the port mapping at the gateway (pmp.h), with port_mapping */
    int pmp_fd; /* connected to the gateway's port-mapping port */
    rndz__io pmp_io;
    rndz__pmp pmp;
    size_t ncands_own; /* my_cands without the mapped one */
    lspray spray; /* the one port prediction at a time (session.sp points to it) */
};

/* End a prediction: its sockets close (all but `keep`), the storage stays for the next. */
static void spray_free(rndz_udp_listener *l, lspray *sp, int keep) {
    if (!sp) return;
    for (int k = 0; k < RNDZ_PREDICT_SOCKETS; k++) {
        if (sp->fds[k] >= 0 && k != keep) {
            rndz__loop_del(&l->base.loop, &sp->io[k]);
            close(sp->fds[k]);
        }
        sp->fds[k] = -1;
    }
    sp->owner = NULL;
}

/* A socket of its own for a peer reached directly: on the shared port, connected to it, so
 * the kernel hands it that peer's datagrams (a connected socket beats the group); probes
 * and relay messages filtered. -1 on failure (logged). */
static int direct_socket(rndz_udp_listener *l, const struct sockaddr_storage *addr) {
    struct sockaddr_storage peer = *addr;
    if (l->c.local.ss_family == AF_INET6) rndz__addr_map(&peer);
    int fd = rndz__client_bind(&l->c, SOCK_DGRAM);
    if (fd >= 0) rndz__probe_filter_drop(fd); /* before the connect: no probe is ever queued */
    if (fd >= 0 && connect(fd, (const struct sockaddr *)&peer,
                           rndz__addr_len((const struct sockaddr *)&peer)) < 0) {
        int e = -errno;
        close(fd);
        fd = e;
    }
    if (fd < 0) {
        RNDZ_LOG(RNDZ_LOG_WARN, "udp listener: no socket for a peer: %s", rndz_strerror(fd));
        return -1;
    }
    rndz__sock_set_nonblock(fd, false);
    return fd;
}

/* Let go of the session's socket made ahead in slot k: closed, or (give) the caller's. */
static void pre_drop(rndz_udp_listener *l, session *se, int k, bool give) {
    rndz__loop_del(&l->base.loop, &se->pre_io[k]);
    if (!give) close(se->pre_fd[k]);
    se->pre_fd[k] = -1;
}

/* Close the session's sockets made ahead, all but `keep` (its fd is then the caller's). */
static void pre_close(rndz_udp_listener *l, session *se, int keep) {
    for (int k = 0; k < PRE_MAX; k++)
        if (se->pre_fd[k] >= 0) pre_drop(l, se, k, k == keep);
}

/* The slot of the session's socket made ahead for `addr` (one at most), or -1. */
static int pre_find(const session *se, const struct sockaddr_storage *addr) {
    for (int k = 0; k < PRE_MAX; k++)
        if (se->pre_fd[k] >= 0 && rndz__addr_equal((const struct sockaddr *)&se->pre_addr[k],
                                                    (const struct sockaddr *)addr))
            return k;
    return -1;
}

/* Close the sockets made ahead for `addr` of every unhanded session but `keep` (NULL: all):
 * the peer connects again from the same port, and two sockets with one address pair would
 * leave it to the kernel which one gets its datagrams. */
static void pre_evict(rndz_udp_listener *l, const session *keep,
                      const struct sockaddr_storage *addr) {
    for (size_t i = 0; i < MAX_SESSIONS; i++) {
        session *o = &l->sessions[i];
        int k;
        if (o != keep && o->used && !o->handed && (k = pre_find(o, addr)) >= 0)
            pre_drop(l, o, k, false);
    }
}

/* An unused session slot: no sockets. */
static void session_clear(session *se) {
    memset(se, 0, sizeof *se);
    se->rp.fd = -1;
    for (int k = 0; k < PRE_MAX; k++) se->pre_fd[k] = -1;
}

static void session_free(rndz_udp_listener *l, session *se) {
    pre_close(l, se, -1);
    if (se->rp.fd >= 0) rndz__loop_del(&l->base.loop, &se->rio);
    rndz__rpeer_close(&se->rp);
    spray_free(l, se->sp, -1);
    se->sp = NULL;
    se->used = false;
}

/* Queue a peer; with per-peer sockets, on a socket of its own (fd, or a new direct one). */
static void push_peer(rndz_udp_listener *l, const rndz_peer_info *info, int fd) {
    if (fd < 0 && atomic_load(&l->per_peer)) {
        pre_evict(l, NULL, &info->addr); /* (this session is handed: not its own) */
        fd = direct_socket(l, &info->addr);
    }
    rndz__lsn_item item = {.fd = fd, .info = *info};
    rndz__addr_unmap(&item.info.addr);
    if (!rndz__lsn_push(&l->base, &item) && fd >= 0) close(fd); /* full: the oldest goes */
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
    session_free(l, oldest);
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

/* Start port prediction for a session toward `peer` (the address the server saw). */
static void spray_start(rndz_udp_listener *l, session *se, bool hard,
                        const struct sockaddr_storage *peer, uint64_t now) {
    lspray *sp = &l->spray;
    if (sp->owner) return; /* one at a time */
    sp->owner = se;
    for (int k = 0; k < RNDZ_PREDICT_SOCKETS; k++) sp->fds[k] = -1;
    sp->peer = *peer;
    rndz__predict_init(&sp->pr, hard ? RNDZ_PREDICT_HARD : RNDZ_PREDICT_EASY, now,
                       l->c.timeout_ms, ntohs(rndz__addr_port(peer)), rndz__random());
    se->sp = sp;
}

/* Both NATs known (nat.h): both destination-dependent: only the relay helps, at once; one:
 * port prediction (the hard side needs sockets of its own to hand out). */
static void session_decide(rndz_udp_listener *l, session *se, const rndz__ext *ext,
                           const struct sockaddr_storage *peer, uint64_t now) {
    if (!ext->nat || !l->nat) return; /* not yet */
    se->decided = true;
    /* a mapping at our gateway makes us reachable from anywhere: not the hard side */
    bool me_hard = l->nat == RNDZ_NAT_ENDPOINT_DEPENDENT && l->pmp.state != RNDZ_PMP_MAPPED;
    bool they_hard = ext->nat == RNDZ_NAT_ENDPOINT_DEPENDENT;
    if (me_hard && they_hard) {
        if (se->rp.role && se->rp.fd < 0) se->relay_at = now;
        return;
    }
    /* (with a mapping, the connector reaches it whatever its NAT: no prediction either) */
    if (!(me_hard && ext->nat == RNDZ_NAT_ENDPOINT_INDEPENDENT && atomic_load(&l->per_peer)) &&
        !(they_hard && l->nat == RNDZ_NAT_ENDPOINT_INDEPENDENT &&
          l->pmp.state != RNDZ_PMP_MAPPED))
        return;
    /* one prediction at a time: what a forged request can make us send stays bounded
     * (SECURITY.md, "Port prediction") */
    if (l->spray.owner) {
        RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: a port prediction is under way; peer %s gets "
                 "none", se->peer_id);
        return;
    }
    spray_start(l, se, me_hard, peer, now);
    uint64_t later = now + (l->c.relay_after_ms > PREDICT_RELAY_MS ? l->c.relay_after_ms
                                                                   : PREDICT_RELAY_MS);
    if (se->sp && se->rp.role && se->rp.fd < 0 && se->relay_at > now && se->relay_at < later &&
        ext->relay != 2 && l->c.relay != RNDZ_RELAY_ONLY)
        se->relay_at = later;
    RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: %s behind a destination-dependent NAT: predicting "
             "ports", me_hard ? "we are" : "the peer is");
}

static void on_fsync(rndz_udp_listener *l, srv_sock *s, const rndz_msg *m, const uint8_t *raw,
                     size_t raw_len) {
    struct sockaddr_storage peer;
    char peer_id[RNDZ_MAX_ID + 1];
    rndz__copy_id(peer_id, m->peer_id, m->peer_id_len);
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
            session_clear(se);
            se->l = l;
            se->used = true;
            se->started = now;
            rndz__copy_id(se->peer_id, m->peer_id, m->peer_id_len);
            rndz__punch_init(&se->p, ext.nonce, now, l->c.timeout_ms);
            rndz__punch_add(&se->p, &peer, rndz__addr_is_private(&peer));
            add_cands(&l->c, &se->p, &ext);
            RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: peer %s at %s (+%zu candidates) wants to "
                     "connect; probing", peer_id, text, ext.ncands);
            /* a relay only with sockets of our own to hand out */
            se->relay_at = UINT64_MAX;
            if (atomic_load(&l->per_peer) &&
                rndz__rpeer_init(&se->rp, &l->c, &ext, &l->c.servers[s->idx],
                                 RNDZ_RELAY_ROLE_LISTENER, SOCK_DGRAM))
                se->relay_at = ext.relay == 2 || l->c.relay == RNDZ_RELAY_ONLY
                                   ? now : now + l->c.relay_after_ms;
            else
                se->rp.role = 0;
            session_decide(l, se, &ext, &peer, now);
        } else if (!se->decided && ext.nat) {
            session_decide(l, se, &ext, &peer, now); /* the connector's NAT came later */
        }
        rndz__ext mine = l->my_cands;
        mine.has_nonce = true;
        mine.nonce = ext.nonce;
        if (se->rp.role) mine.relay = l->c.relay == RNDZ_RELAY_ONLY ? 2 : 1;
        /* our NAT (with a mapping at the gateway we count as easy), unless we are the hard
         * side with no sockets to hand out */
        if (l->pmp.state == RNDZ_PMP_MAPPED)
            mine.nat = RNDZ_NAT_ENDPOINT_INDEPENDENT;
        else if (l->nat != RNDZ_NAT_ENDPOINT_DEPENDENT || atomic_load(&l->per_peer))
            mine.nat = (uint32_t)l->nat;
        int rc = rndz__client_send(s->fd, &l->c, RNDZ_REQ_RSYNC, m->peer_id, m->peer_id_len, NULL,
                              &mine);
        if (rc) RNDZ_LOG(RNDZ_LOG_DEBUG, "udp listener: Rsync to server: %s", rndz_strerror(rc));
        return;
    }
    RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: peer %s at %s wants to connect", peer_id, text);
    /* v1: first the punch (the Rsync bytes, as v1 sends them) that opens our NAT toward the
     * peer, then Rsync to the server, which redirects the peer to us: the punch is then on
     * its way before the peer even learns our address. */
    int rc = rndz__client_send(l->peer_fd, &l->c, RNDZ_REQ_RSYNC, m->peer_id, m->peer_id_len, &peer,
                          NULL);
    if (rc) RNDZ_LOG(RNDZ_LOG_DEBUG, "udp listener: punch to %s: %s", text, rndz_strerror(rc));
    rc = rndz__client_send(s->fd, &l->c, RNDZ_REQ_RSYNC, m->peer_id, m->peer_id_len, NULL, NULL);
    if (rc) RNDZ_LOG(RNDZ_LOG_DEBUG, "udp listener: Rsync to server: %s", rndz_strerror(rc));
    rndz_peer_info info = {.addr = peer, .lan = rndz__addr_is_private(&peer)};
    rndz__copy_id(info.id, m->peer_id, m->peer_id_len);
    push_peer(l, &info, -1);
}

/* --- the NAT check of our port (nat.h), once registered: server nat_srv says what it sees and
 * names its other addresses; one of those, asked from our port too, sees the same address
 * (endpoint-independent) or another (endpoint-dependent) */

static void nat_done(rndz_udp_listener *l, int nat) {
    if (l->nat_fd >= 0) {
        rndz__loop_del(&l->base.loop, &l->nat_io);
        close(l->nat_fd);
        l->nat_fd = -1;
    }
    l->nat = nat;
    l->nat_state = 3;
    RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: our NAT maps %s", rndz_nat_mapping_name(nat));
}

/* Ask the server's other address (state 2) from our port. */
static void nat_ask(rndz_udp_listener *l, uint64_t now) {
    rndz__ext q;
    memset(&q, 0, sizeof q);
    q.query = RNDZ__Q_OBSERVED | RNDZ__Q_NOREG;
    q.pad = RNDZ__Q_PAD;
    rndz__client_send(l->nat_fd, &l->c, RNDZ_REQ_PING, NULL, 0, NULL, &q);
    l->nat_next = now + NAT_RETRY_MS;
    l->nat_tries++;
}

static void nat_readable(void *ctx, uint32_t events);

/* A Pong with what the server saw: from server nat_srv (state 1) or its other address (2). */
static void nat_pong(rndz_udp_listener *l, const uint8_t *buf, size_t n) {
    rndz__ext e;
    struct sockaddr_storage seen;
    if (rndz__ext_decode(buf, n, &e) || !e.observed[0] ||
        rndz_addr_parse(e.observed, &seen, NULL))
        return;
    rndz__addr_unmap(&seen);
    if (l->nat_state == 2) {
        nat_done(l, rndz__addr_equal((struct sockaddr *)&seen, (struct sockaddr *)&l->nat_seen)
                        ? RNDZ_NAT_ENDPOINT_INDEPENDENT : RNDZ_NAT_ENDPOINT_DEPENDENT);
        return;
    }
    l->nat_seen = seen;
    for (size_t i = 0; i < e.nalt; i++) {
        struct sockaddr_storage alt;
        if (rndz_addr_parse(e.alt[i], &alt, NULL)) continue;
        rndz__addr_unmap(&alt);
        struct sockaddr_storage srv = l->c.servers[l->nat_srv];
        rndz__addr_unmap(&srv);
        if (rndz__addr_equal((struct sockaddr *)&alt, (struct sockaddr *)&srv)) continue;
        if (l->c.local.ss_family == AF_INET6) rndz__addr_map(&alt);
        else if (alt.ss_family != AF_INET) continue;
        int fd = rndz__client_bind(&l->c, SOCK_DGRAM);
        if (fd < 0) break;
        l->nat_io = (rndz__io){fd, nat_readable, l};
        if (connect(fd, (struct sockaddr *)&alt, rndz__addr_len((struct sockaddr *)&alt)) < 0 ||
            rndz__loop_add(&l->base.loop, &l->nat_io, EPOLLIN)) {
            close(fd);
            break;
        }
        l->nat_fd = fd;
        l->nat_state = 2;
        l->nat_tries = 0;
        nat_ask(l, rndz__now_ms());
        return;
    }
    nat_done(l, RNDZ_NAT_UNKNOWN); /* a server on one address cannot tell */
}

static void nat_readable(void *ctx, uint32_t events) {
    rndz_udp_listener *l = ctx;
    (void)events;
    uint8_t buf[RNDZ_MAX_MSG + 1];
    for (int i = 0; i < 8 && l->nat_fd >= 0; i++) {
        ssize_t n = recv(l->nat_fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN) return;
            continue;
        }
        rndz_msg m;
        if (rndz_msg_decode(buf, (size_t)n, 1, &m) == 0 && m.cmd == RNDZ_RSP_PONG)
            nat_pong(l, buf, (size_t)n);
    }
}

/* --- the port mapping (pmp.h) */

/* The mapped address joins (or leaves) the candidates we advertise. */
static void pmp_candidates(rndz_udp_listener *l) {
    l->pmp.changed = false;
    l->my_cands.ncands = l->ncands_own;
    l->my_cands.mapped[0] = 0;
    if (l->pmp.state != RNDZ_PMP_MAPPED || l->my_cands.ncands >= RNDZ_MAX_CANDS) return;
    char *t = l->my_cands.cands[l->my_cands.ncands];
    snprintf(t, RNDZ_ADDRSTRLEN, "%u.%u.%u.%u:%u", l->pmp.ext_ip[0], l->pmp.ext_ip[1],
             l->pmp.ext_ip[2], l->pmp.ext_ip[3], l->pmp.ext_port);
    l->my_cands.ncands++;
    memcpy(l->my_cands.mapped, t, RNDZ_ADDRSTRLEN); /* connectors can tell which it is */
    RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: the gateway maps %s to our port (%s)", t,
             l->pmp.pcp ? "PCP" : "NAT-PMP");
}

static void pmp_readable(void *ctx, uint32_t events) {
    rndz_udp_listener *l = ctx;
    (void)events;
    uint8_t b[1100];
    for (int i = 0; i < 8; i++) {
        ssize_t n = recv(l->pmp_fd, b, sizeof b, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN) return;
            continue; /* ECONNREFUSED: nobody listens there; the tries run out */
        }
        rndz__pmp_input(&l->pmp, b, (size_t)n, rndz__now_ms());
    }
    if (l->pmp.changed) pmp_candidates(l);
}

static uint64_t pmp_tick(rndz_udp_listener *l, uint64_t now) {
    if (l->pmp_fd < 0) return UINT64_MAX;
    uint8_t b[60];
    uint64_t wake;
    size_t n = rndz__pmp_next(&l->pmp, now, b, &wake);
    if (n) send(l->pmp_fd, b, n, MSG_DONTWAIT);
    if (l->pmp.changed) pmp_candidates(l);
    return wake;
}

/* A socket toward the IPv4 default gateway's port-mapping port; the mapping is asked by the
 * first tick. Nothing (no gateway, IPv6 only): no mapping. */
static void pmp_setup(rndz_udp_listener *l) {
    struct sockaddr_storage gw;
    if (!l->c.port_mapping || !rndz__nat_gateway(&gw)) return;
    if (l->c.local.ss_family == AF_INET6) rndz__addr_map(&gw);
    int fd = rndz__client_fresh(&l->c, SOCK_DGRAM);
    if (fd < 0) return;
    struct sockaddr_storage me;
    socklen_t ml = sizeof me;
    l->pmp_io = (rndz__io){fd, pmp_readable, l};
    if (connect(fd, (struct sockaddr *)&gw, rndz__addr_len((struct sockaddr *)&gw)) < 0 ||
        getsockname(fd, (struct sockaddr *)&me, &ml) < 0 ||
        rndz__loop_add(&l->base.loop, &l->pmp_io, EPOLLIN)) {
        close(fd);
        return;
    }
    rndz__addr_unmap(&me);
    if (me.ss_family != AF_INET) {
        rndz__loop_del(&l->base.loop, &l->pmp_io);
        close(fd);
        return;
    }
    uint8_t nonce[12];
    for (int i = 0; i < 12; i += 4) {
        uint32_t r = rndz__random();
        memcpy(nonce + i, &r, 4);
    }
    struct sockaddr_storage shared;
    socklen_t sl = sizeof shared;
    if (getsockname(l->peer_fd, (struct sockaddr *)&shared, &sl) < 0) shared = l->c.local;
    rndz__pmp_init(&l->pmp, (const uint8_t *)&((struct sockaddr_in *)&me)->sin_addr,
                   ntohs(rndz__addr_port(&shared)), nonce); /* pmp.h: host order */
    l->pmp_fd = fd;
}

/* Run the check's second step: resend, give up. (The first rides on the pings to server nat_srv,
 * which carry the question while it is open: a v1 server answers them as any ping, without
 * what it saw, and after NAT_TRIES such Pongs we stop asking.) */
static uint64_t nat_tick(rndz_udp_listener *l, uint64_t now) {
    if (l->nat_state != 2) return UINT64_MAX;
    if (now >= l->nat_next) {
        if (l->nat_tries >= NAT_TRIES) {
            nat_done(l, RNDZ_NAT_UNKNOWN);
            return UINT64_MAX;
        }
        nat_ask(l, now);
    }
    return l->nat_next;
}

static void srv_readable(void *ctx, uint32_t events) {
    srv_sock *s = ctx;
    rndz_udp_listener *l = s->l;
    uint8_t buf[RNDZ_MAX_MSG + 1];
    for (int i = 0; i < READ_BATCH; i++) {
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
            bool registering = rndz__link_on_pong(&s->link, rndz__now_ms());
            if (registering)
                RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: registered with %s",
                         l->c.server_text[s->idx]);
            rndz__client_on_pong(&l->c, s->idx, buf, (size_t)n, registering && !s->ever,
                                 "udp listener");
            s->ever |= registering;
            rndz__lsn_set_registered(&l->base);
            if (l->nat_state == 1 && s->idx == l->nat_srv) {
                rndz__ext e;
                if (rndz__ext_decode(buf, (size_t)n, &e) == 0 && e.observed[0])
                    nat_pong(l, buf, (size_t)n);
                else if (++l->nat_tries >= NAT_TRIES)
                    nat_done(l, RNDZ_NAT_UNKNOWN); /* a v1 server: it cannot tell */
            }
        } else if (m.cmd == RNDZ_RSP_FSYNC) {
            on_fsync(l, s, &m, buf, (size_t)n);
        }
    }
}

/* Hand the session's peer out: direct (the winner; on `own`, a prediction socket already
 * connected to it, or -1) or relayed (the relay's socket). */
static void session_report(rndz_udp_listener *l, session *se, uint64_t now, bool relayed,
                           int own) {
    rndz_peer_info info = {.rtt_ms = se->p.rtt_ms, .verified = 1,
                           .elapsed_ms = (uint32_t)(now - se->started)};
    int fd = own;
    info.predicted = se->sp && !relayed; /* (see udp_connect.c) */
    spray_free(l, se->sp, -2); /* (own, if any, was taken out of the spray already) */
    se->sp = NULL;
    if (relayed) {
        info.addr = se->rp.addr;
        info.rtt_ms = 0; /* not measured on this side */
        info.relayed = 1;
        rndz__loop_del(&l->base.loop, &se->rio);
        fd = rndz__rpeer_take(&se->rp, &l->c);
    } else {
        info.addr = se->p.cand[se->p.winner];
        if (se->rp.fd >= 0) rndz__loop_del(&l->base.loop, &se->rio);
        rndz__rpeer_close(&se->rp); /* joined in vain: the connector went direct */
    }
    /* the socket made ahead for the winner's address is the peer's (whatever the peer sent
     * since its confirm is queued on it) */
    int keep = !relayed && fd < 0 ? pre_find(se, &info.addr) : -1;
    if (keep >= 0) fd = se->pre_fd[keep];
    pre_close(l, se, keep);
    if (keep >= 0) {
        rndz__probe_filter_drop(fd);
        rndz__probe_drain(fd); /* probes that came before the filter (the confirm's copies) */
        rndz__sock_set_nonblock(fd, false);
    }
    info.lan = !relayed && rndz__addr_is_private(&info.addr);
    memcpy(info.id, se->peer_id, sizeof info.id < sizeof se->peer_id ? sizeof info.id
                                                                      : sizeof se->peer_id);
    char text[RNDZ_ADDRSTRLEN];
    struct sockaddr_storage shown = info.addr;
    rndz__addr_unmap(&shown);
    rndz_addr_format((struct sockaddr *)&shown, text, sizeof text);
    RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: peer %s %s %s, rtt %u ms", se->peer_id,
             relayed ? "relayed through" : "verified at", text, info.rtt_ms);
    se->ended = now;
    se->handed = true;
    push_peer(l, &info, fd);
}

/* The punch verified a path. Without per-peer sockets the peer is reported at once (it
 * shares the port's socket); with them, only once the connector chose it (its confirm): it
 * might still choose the relay, and its confirm says which address its datagrams come from
 * (the per-peer socket is connected to that one). */
static void session_verified(rndz_udp_listener *l, session *se, uint64_t now) {
    if (se->handed) return;
    if (!atomic_load(&l->per_peer) || se->confirmed) {
        session_report(l, se, now, false, -1);
        return;
    }
    se->ended = now;
}

/* A prediction socket of the hard side is readable: probes get acks; the connector's confirm
 * names this socket's path (it is handed out, connected to the connector). */
static void spray_readable(void *ctx, uint32_t events) {
    lspray_ref *ref = ctx;
    session *se = ref->se;
    rndz_udp_listener *l = se->l;
    (void)events;
    if (!se->used || se->sp != &l->spray || l->spray.owner != se) return; /* a stale event */
    int k = ref->k, fd = se->sp->fds[k];
    if (fd < 0) return;
    for (int i = 0; i < READ_BATCH && fd >= 0; i++) {
        uint8_t b[RNDZ_PROBE_LEN + 1];
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(fd, b, sizeof b, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        if (n < 0) return;
        int type;
        uint32_t seq;
        uint64_t nonce;
        if (!rndz__probe_decode(b, (size_t)n, &type, &seq, &nonce) || nonce != se->p.nonce) continue;
        if (type == RNDZ_PROBE) rndz__probe_send(fd, RNDZ_PROBE_ACK, seq, nonce, &from);
        if (type != RNDZ_PROBE_CONFIRM || se->handed) continue;
        /* the connector chose this socket's path */
        se->p.winner = rndz__punch_adopt(&se->p, &from);
        uint64_t now = rndz__now_ms();
        se->p.rtt_ms = now > se->sp->pr.start ? (uint32_t)(now - se->sp->pr.start) : 1;
        se->p.state = RNDZ_PUNCH_VERIFIED;
        se->confirmed = true;
        rndz__loop_del(&l->base.loop, &se->sp->io[k]);
        se->sp->fds[k] = -1;
        rndz__probe_filter_drop(fd);
        if (connect(fd, (struct sockaddr *)&from, rndz__addr_len((struct sockaddr *)&from)) < 0) {
            close(fd);
            fd = -1;
        } else {
            rndz__probe_drain(fd); /* the confirm's other copies, queued before the filter */
            rndz__sock_set_nonblock(fd, false);
        }
        session_report(l, se, now, false, fd);
        return;
    }
}

/* Send what the session's prediction asks for; returns when it next wants to run. */
static uint64_t spray_tick(rndz_udp_listener *l, session *se, uint64_t now) {
    lspray *sp = se->sp;
    rndz__predict_send out[64];
    uint64_t next;
    size_t n = rndz__predict_tick(&sp->pr, now, out, RNDZ_ARRAY_LEN(out), &next);
    for (size_t i = 0; i < n; i++) {
        if (sp->pr.role == RNDZ_PREDICT_EASY) {
            struct sockaddr_storage to = sp->peer;
            rndz__addr_set_port(&to, htons(out[i].port)); /* predict.h: host order */
            rndz__probe_send(l->probe_fd, RNDZ_PROBE, RNDZ_PREDICT_SEQ | (uint32_t)i,
                             se->p.nonce, &to);
            continue;
        }
        uint32_t k = out[i].index;
        if (out[i].open) {
            int fd = rndz__client_fresh(&l->c, SOCK_DGRAM);
            if (fd < 0) continue;
            sp->ref[k] = (lspray_ref){se, (int)k};
            sp->io[k] = (rndz__io){fd, spray_readable, &sp->ref[k]};
            if (rndz__loop_add(&l->base.loop, &sp->io[k], EPOLLIN)) {
                close(fd);
                continue;
            }
            sp->fds[k] = fd;
        }
        if (sp->fds[k] >= 0)
            rndz__probe_send(sp->fds[k], RNDZ_PROBE, RNDZ_PREDICT_SEQ | k, se->p.nonce, &sp->peer);
    }
    return next;
}

/* The relay's socket of a session is readable. */
static void relay_readable(void *ctx, uint32_t events) {
    session *se = ctx;
    rndz_udp_listener *l = se->l;
    (void)events;
    uint64_t now = rndz__now_ms();
    int rc = rndz__rpeer_readable(&se->rp, now);
    if (rc) {
        RNDZ_LOG(RNDZ_LOG_DEBUG, "udp listener: relay: %s", rndz_strerror(rc));
        return;
    }
    if (se->rp.done && !se->handed) session_report(l, se, now, true, -1);
}

static void pre_readable(void *ctx, uint32_t events);

/* Per-peer sockets: a socket of its own for the peer at `from`, made before our ack to its
 * probe goes, so that it exists before the peer can choose this path. The peer sends its
 * confirm and then at once its data: a socket made only when the confirm is read would miss
 * what came in between (it went to the shared socket; measured: about half of the first
 * datagrams lost on loopback). Connected, it takes everything `from` sends to our port (a
 * connected socket beats the group), probes included: pre_readable answers those until the
 * peer chose its path, and the socket is handed out with what came after the confirm. */
static void pre_socket(rndz_udp_listener *l, session *se, const struct sockaddr_storage *from) {
    if (!atomic_load(&l->per_peer) || se->handed) return;
    for (size_t i = 0; i < MAX_SESSIONS; i++) /* a newer session from there: it is the peer's */
        if (l->sessions[i].used && !l->sessions[i].handed && &l->sessions[i] != se &&
            l->sessions[i].started > se->started && pre_find(&l->sessions[i], from) >= 0)
            return;
    if (pre_find(se, from) >= 0) return;
    pre_evict(l, se, from); /* older sessions' */
    int free_k = -1;
    for (int k = 0; k < PRE_MAX && free_k < 0; k++)
        if (se->pre_fd[k] < 0) free_k = k;
    if (free_k < 0) return; /* a confirm from yet another address: a socket then (push_peer) */
    int fd = rndz__client_bind(&l->c, SOCK_DGRAM);
    if (fd >= 0 && connect(fd, (const struct sockaddr *)from,
                           rndz__addr_len((const struct sockaddr *)from)) < 0) {
        close(fd);
        fd = -1;
    }
    if (fd < 0) return;
    se->pre_fd[free_k] = fd;
    se->pre_addr[free_k] = *from;
    se->pre_ref[free_k] = (pre_ref){se, free_k};
    se->pre_io[free_k] = (rndz__io){fd, pre_readable, &se->pre_ref[free_k]};
    if (rndz__loop_add(&l->base.loop, &se->pre_io[free_k], EPOLLIN)) {
        close(fd);
        se->pre_fd[free_k] = -1;
    }
}

/* The connector chose the direct path from `from` (its confirm, or its data overtaking it). */
static void session_chosen(rndz_udp_listener *l, session *se, const struct sockaddr_storage *from,
                           uint64_t now) {
    se->p.winner = rndz__punch_adopt(&se->p, from);
    if (se->p.state != RNDZ_PUNCH_VERIFIED) {
        uint64_t since = se->last_ack_sent ? now - se->last_ack_sent : 0;
        se->p.rtt_ms = since ? (uint32_t)since : 1;
        se->p.state = RNDZ_PUNCH_VERIFIED;
    }
    se->confirmed = true;
    session_verified(l, se, now);
}

/* One probe, ack or confirm from `from` (read from the probe socket or a socket made ahead). */
static void probe_dgram(rndz_udp_listener *l, const uint8_t *b, size_t n,
                        const struct sockaddr_storage *from) {
    int type;
    uint32_t seq;
    uint64_t nonce;
    if (!rndz__probe_decode(b, n, &type, &seq, &nonce)) return;
    session *se = find_session(l, nonce);
    if (!se) return;
    uint64_t now = rndz__now_ms();
    if (type == RNDZ_PROBE) {
        pre_socket(l, se, from);
        rndz__probe_send(l->probe_fd, RNDZ_PROBE_ACK, seq, nonce, from);
        se->last_ack_sent = now;
        return;
    }
    if (type == RNDZ_PROBE_CONFIRM) {
        /* The connector picked its path, and `from` is where its datagrams come from
         * (which may differ from the address our own probes verified: another source
         * address toward another of our candidates). */
        if (!se->handed) session_chosen(l, se, from, now);
        return;
    }
    if (se->p.state == RNDZ_PUNCH_VERIFIED) return;
    if ((seq & RNDZ_PREDICT_SEQ) && se->sp) {
        /* a predicted port of the peer answered: its mapping toward us */
        se->p.winner = rndz__punch_adopt(&se->p, from);
        se->p.rtt_ms = now > se->sp->pr.start ? (uint32_t)(now - se->sp->pr.start) : 1;
        se->p.state = RNDZ_PUNCH_VERIFIED;
        session_verified(l, se, now);
        return;
    }
    rndz__punch_on_ack(&se->p, from, seq, now);
    if (se->p.state == RNDZ_PUNCH_VERIFIED) session_verified(l, se, now);
}

/* The listener's probe socket: probes get acks (only for sessions a server announced: we
 * are no reflector), acks and confirms verify a session. */
static void probe_readable(void *ctx, uint32_t events) {
    rndz_udp_listener *l = ctx;
    (void)events;
    for (int i = 0; i < READ_BATCH; i++) {
        uint8_t b[RNDZ_PROBE_LEN + 1];
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(l->probe_fd, b, sizeof b, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        if (n < 0) {
            if (errno == EAGAIN) return;
            continue;
        }
        probe_dgram(l, b, (size_t)n, &from);
    }
}

/* A socket made ahead for a peer: its probes, acks and confirm are read as the probe
 * socket's; anything else is the peer's data, sent only once it chose this path (its confirm
 * lost or overtaken): the path is chosen, and the data stays queued for the application. */
static void pre_readable(void *ctx, uint32_t events) {
    pre_ref *ref = ctx;
    session *se = ref->se;
    rndz_udp_listener *l = se->l;
    int k = ref->k;
    (void)events;
    for (int i = 0; i < READ_BATCH; i++) {
        if (!se->used || se->handed || se->pre_fd[k] < 0) return; /* a stale event, or handed */
        int fd = se->pre_fd[k];
        uint8_t b[RNDZ_PROBE_LEN + 1];
        ssize_t n = recv(fd, b, sizeof b, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            continue; /* e.g. a port unreachable, reported (and cleared) by this call */
        }
        int type;
        uint32_t seq;
        uint64_t nonce;
        struct sockaddr_storage from = se->pre_addr[k];
        if (rndz__probe_decode(b, (size_t)n, &type, &seq, &nonce)) {
            (void)recv(fd, b, sizeof b, MSG_DONTWAIT);
            probe_dgram(l, b, (size_t)n, &from);
            continue;
        }
        if (rndz__probe_filtered(b, (size_t)n)) { /* a relay message: not ours to read */
            (void)recv(fd, b, sizeof b, MSG_DONTWAIT);
            continue;
        }
        session_chosen(l, se, &from, rndz__now_ms()); /* the peer's data: it chose this path */
        return;
    }
}

static uint64_t sessions_tick(rndz_udp_listener *l, uint64_t now) {
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < MAX_SESSIONS; i++) {
        session *se = &l->sessions[i];
        if (!se->used) continue;
        if (!se->handed && se->rp.role && se->rp.fd < 0 && now >= se->relay_at) {
            /* no confirm yet: join the relay, in case the connector goes there */
            int rc = rndz__rpeer_open(&se->rp, &l->c, now);
            se->rio = (rndz__io){se->rp.fd, relay_readable, se};
            if (!rc) rc = rndz__loop_add(&l->base.loop, &se->rio, EPOLLIN);
            if (rc) {
                RNDZ_LOG(RNDZ_LOG_WARN, "udp listener: relay: %s", rndz_strerror(rc));
                rndz__rpeer_close(&se->rp);
                se->rp.role = 0;
            }
        }
        if (se->sp && now >= se->sp->pr.deadline) {
            spray_free(l, se->sp, -1); /* over: its sockets go at once */
            se->sp = NULL;
        }
        if (se->sp && !se->handed) {
            uint64_t sw = spray_tick(l, se, now);
            if (sw < next) next = sw;
        }
        if (se->rp.fd >= 0) {
            uint64_t rw = rndz__rpeer_tick(&se->rp, now);
            if (rw < next) next = rw;
        } else if (se->rp.role && !se->handed && se->relay_at < next) {
            next = se->relay_at;
        }
        rndz__punch_send sends[RNDZ_MAX_CANDS + 1];
        uint64_t wake;
        int before = se->p.state;
        size_t n = rndz__punch_tick(&se->p, now, sends, RNDZ_ARRAY_LEN(sends), &wake);
        for (size_t k = 0; k < n; k++)
            rndz__probe_send(l->probe_fd, RNDZ_PROBE, sends[k].seq, se->p.nonce, &se->p.cand[sends[k].cand]);
        if (before == RNDZ_PUNCH_RUNNING && se->p.state == RNDZ_PUNCH_VERIFIED)
            session_verified(l, se, now); /* the LAN grace ended */
        if (before == RNDZ_PUNCH_RUNNING && se->p.state == RNDZ_PUNCH_FAILED) {
            RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: no path to peer %s", se->peer_id);
            se->ended = now; /* (its sockets made ahead stay: the peer may still pick us) */
        }
        /* A finished session keeps answering the peer's probes until the peer's own deadline
         * could have passed: we may have verified through an ack of ours while every ack we
         * sent was lost, and the peer still probes. */
        /* Verified through an ack, no confirm and no "use" by the peer's deadline: its
         * confirms were lost; the direct path is the one it took. */
        if (!se->handed && se->p.state == RNDZ_PUNCH_VERIFIED && now >= se->p.deadline) {
            se->confirmed = true;
            session_verified(l, se, now);
        } else if (!se->handed && se->p.state == RNDZ_PUNCH_VERIFIED && se->p.deadline < wake) {
            wake = se->p.deadline;
        }
        if (se->p.state != RNDZ_PUNCH_RUNNING) {
            uint64_t window = l->c.timeout_ms > SESSION_LINGER_MS ? l->c.timeout_ms
                                                                  : SESSION_LINGER_MS;
            uint64_t linger = se->started + window + 2000;
            if (linger < se->ended + 2000) linger = se->ended + 2000;
            if (now >= linger) session_free(l, se);
            else wake = linger;
        }
        if (wake < next) next = wake;
    }
    return next;
}

/* Server sets (srvset.h): register with the servers the ranking of our id keeps, given which
 * of them are down; leave (Bye) one no longer kept, start afresh with one newly kept. */
static void keep_servers(rndz_udp_listener *l, uint64_t now) {
    bool down[RNDZ_MAX_SERVERS], keep[RNDZ_MAX_SERVERS];
    for (size_t i = 0; i < l->c.n_servers; i++)
        down[i] = l->srv[i].kept && rndz__link_is_down(&l->srv[i].link, now);
    rndz__srvset_pick(l->c.rank, l->c.n_servers, l->c.per_id, down, keep);
    for (size_t i = 0; i < l->c.n_servers; i++) {
        srv_sock *s = &l->srv[i];
        if (keep[i] == s->kept) continue;
        s->kept = keep[i];
        if (keep[i]) {
            rndz__link_init(&s->link, false, l->c.keepalive_ms, rndz__random());
            if (l->started)
                RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: registering with %s too (a server of "
                         "our id's set is down)", l->c.server_text[i]);
        } else {
            rndz__client_send(s->fd, &l->c, RNDZ_REQ_BYE, NULL, 0, NULL, NULL);
            RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: leaving %s (our id's own servers answer)",
                     l->c.server_text[i]);
        }
    }
    /* the NAT check's first step asks a server that answers: a down one moves it on */
    if (l->nat_state == 1 && (!l->srv[l->nat_srv].kept || down[l->nat_srv])) {
        for (size_t r = 0; r < l->c.n_servers; r++) {
            size_t i = l->c.rank[r];
            if (i != l->nat_srv && l->srv[i].kept && !down[i]) {
                l->nat_srv = i;
                l->nat_tries = 0;
                rndz__link_ping_now(&l->srv[i].link, now); /* ask it now, not at its keepalive */
                break;
            }
        }
    }
    l->started = true;
}

static uint64_t listener_tick(void *ctx, uint64_t now) {
    rndz_udp_listener *l = ctx;
    uint64_t next = sessions_tick(l, now);
    uint64_t nw = nat_tick(l, now);
    if (nw < next) next = nw;
    nw = pmp_tick(l, now);
    if (nw < next) next = nw;
    keep_servers(l, now);
    for (size_t i = 0; i < l->c.n_servers; i++) {
        srv_sock *s = &l->srv[i];
        if (!s->kept) continue;
        unsigned act = rndz__link_tick(&s->link, now);
        /* after the tick, which starts the link's clock: wake when it would count as down */
        uint64_t down_at = rndz__link_down_at(&s->link);
        if (down_at > now && down_at < next) next = down_at;
        if (act & RNDZ_LINK_LOST)
            RNDZ_LOG(RNDZ_LOG_WARN, "udp listener: server %s stopped answering; registering "
                     "again", l->c.server_text[i]);
        if (act & RNDZ_LINK_PING) {
            /* while our NAT check is open, server nat_srv's pings ask what it sees (nat.h) */
            /* and every ping asks whether it took the id over from another address */
            rndz__ext q;
            memset(&q, 0, sizeof q);
            bool ask = i == l->nat_srv && l->nat_state == 1;
            q.query = RNDZ__Q_TAKEN | (ask ? RNDZ__Q_OBSERVED : 0);
            q.pad = ask ? RNDZ__Q_PAD : 0;
            int rc = rndz__client_send(s->fd, &l->c, RNDZ_REQ_PING, NULL, 0, NULL, &q);
            if (rc) RNDZ_LOG(RNDZ_LOG_DEBUG, "udp listener: ping %s: %s", l->c.server_text[i],
                             rndz_strerror(rc));
        }
        uint64_t wake = rndz__link_wake(&s->link);
        if (wake < next) next = wake;
    }
    return next;
}

static void listener_close(rndz_udp_listener *l) {
    for (size_t i = 0; i < MAX_SESSIONS; i++) {
        rndz__rpeer_close(&l->sessions[i].rp);
        for (int k = 0; k < PRE_MAX; k++)
            if (l->sessions[i].pre_fd[k] >= 0) close(l->sessions[i].pre_fd[k]);
    }
    for (int k = 0; k < RNDZ_PREDICT_SOCKETS; k++)
        if (l->spray.fds[k] >= 0) close(l->spray.fds[k]);
    if (l->nat_fd >= 0) close(l->nat_fd);
    if (l->pmp_fd >= 0) close(l->pmp_fd);
    for (size_t i = 0; i < RNDZ_MAX_SERVERS; i++)
        if (l->srv[i].fd >= 0) close(l->srv[i].fd);
    if (l->peer_fd >= 0) close(l->peer_fd);
    if (l->probe_fd >= 0) close(l->probe_fd);
    rndz__lsn_free(&l->base);
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
    if ((rc = rndz__loop_add(&l->base.loop, &l->probe_io, EPOLLIN))) return rc;
    rndz__local_cands(&l->c.local, l->c.local.ss_family == AF_INET6, &l->my_cands);
    l->ncands_own = l->my_cands.ncands;
    return 0;
}

int rndz_udp_listener_create(const rndz_client_options *o, rndz_udp_listener **out) {
    if (!out) return -EINVAL;
    *out = NULL;
    rndz_udp_listener *l = calloc(1, sizeof *l);
    if (!l) return -ENOMEM;
    l->peer_fd = l->probe_fd = l->nat_fd = l->pmp_fd = -1;
    for (int k = 0; k < RNDZ_PREDICT_SOCKETS; k++) l->spray.fds[k] = -1;
    l->nat_state = 1; /* the first pings ask */
    for (size_t i = 0; i < MAX_SESSIONS; i++) session_clear(&l->sessions[i]);
    for (size_t i = 0; i < RNDZ_MAX_SERVERS; i++) l->srv[i].fd = -1;
    int rc = rndz__lsn_init(&l->base, PEER_QUEUE, true);
    if (rc) goto fail;
    if ((rc = rndz__client_init(&l->c, o))) goto fail;
    l->nat_srv = l->c.rank[0];
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
        rndz__link_init(&s->link, false, l->c.keepalive_ms, rndz__random());
        if (connect(s->fd, (struct sockaddr *)&l->c.servers[i],
                    rndz__addr_len((struct sockaddr *)&l->c.servers[i])) < 0) {
            rc = -errno;
            goto fail;
        }
        s->io = (rndz__io){s->fd, srv_readable, s};
        if ((rc = rndz__loop_add(&l->base.loop, &s->io, EPOLLIN))) goto fail;
    }
    /* The peer socket is the caller's: hand it over blocking, like any fresh socket. */
    rndz__sock_set_nonblock(l->peer_fd, false);
    pmp_setup(l);
    if ((rc = rndz__lsn_start(&l->base, listener_tick, l))) goto fail;
    *out = l;
    return 0;
fail:
    listener_close(l);
    return rc;
}

int rndz_udp_listener_next_peer(rndz_udp_listener *l, uint32_t timeout_ms,
                                rndz_peer_info *info) {
    if (!l) return -EINVAL;
    rndz__lsn_item item;
    int rc = rndz__lsn_pop(&l->base, timeout_ms, &item);
    if (rc == 0 && info) *info = item.info;
    if (rc == 0 && item.fd >= 0) close(item.fd); /* a per-peer socket nobody asked for */
    return rc;
}

int rndz_udp_listener_accept(rndz_udp_listener *l, uint32_t timeout_ms, rndz_peer_info *info) {
    if (!l) return -EINVAL;
    atomic_store(&l->per_peer, true);
    for (;;) {
        rndz__lsn_item item;
        int rc = rndz__lsn_pop(&l->base, timeout_ms, &item);
        if (rc) return rc;
        /* queued before the first accept: its socket now (datagrams that came before went
         * to rndz_udp_listener_fd()) */
        if (item.fd < 0) item.fd = direct_socket(l, &item.info.addr);
        if (item.fd < 0) continue;
        if (info) *info = item.info;
        return item.fd;
    }
}

int rndz_udp_listener_ready_fd(rndz_udp_listener *l) { return l ? l->base.ready_fd : -EINVAL; }

int rndz_udp_listener_fd(rndz_udp_listener *l) { return l ? l->peer_fd : -EINVAL; }

int rndz_udp_listener_local_addr(rndz_udp_listener *l, struct sockaddr_storage *out,
                                 socklen_t *len) {
    if (!l || !out) return -EINVAL;
    return rndz__sock_local(l->peer_fd, out, len);
}

int rndz_udp_listener_wait_registered(rndz_udp_listener *l, uint32_t timeout_ms) {
    if (!l) return -EINVAL;
    return rndz__lsn_wait_registered(&l->base, timeout_ms);
}

void rndz_udp_listener_destroy(rndz_udp_listener *l) {
    if (!l) return;
    rndz__lsn_close(&l->base);
    for (size_t i = 0; i < l->c.n_servers; i++)
        if (l->srv[i].fd >= 0 && l->srv[i].kept)
            rndz__client_send(l->srv[i].fd, &l->c, RNDZ_REQ_BYE, NULL, 0, NULL, NULL);
    uint8_t del[60];
    size_t n = l->pmp_fd >= 0 ? rndz__pmp_delete(&l->pmp, del) : 0;
    if (n) send(l->pmp_fd, del, n, MSG_DONTWAIT); /* the mapping goes with us */
    listener_close(l);
}
