/* tcp_listen.c: the TCP listener (BRIEF, "Clients"; the connector is tcp_connect.c).
 *
 * Listener: a listening socket plus one connection per server, all from the same local port.
 * The background thread keeps each server connection registered (Ping every keepalive,
 * reconnect with backoff when it breaks or goes silent), and on Fsync{P, B} starts a connect
 * from the same port to B, then sends Rsync{P}. That connect's SYN opens our NAT toward B; if
 * B's SYN crosses it (TCP simultaneous open, the only way through routers that drop
 * conntrack-invalid packets) the connection forms on that socket, so it is handed to accept
 * just like a connection the listening socket accepted (the rndz 0.1.5 way, which works when
 * nothing in between filters).
 *
 * When the SYN goes is synplan.h's plan: at the coordinated moment (half the relayed round
 * trip after the Fsync, when the connector's leaves), and again while refused.
 *
 * The server connections' pings, silence and reconnect backoff: srvlink.h; the thread, the
 * registered/closed state and the accept queue with its readiness fd: listener.h. */
#include "client.h"
#include "srvset.h"
#include "ifaddr.h"
#include "listener.h"
#include "relay_peer.h"
#include "srvlink.h"
#include "synplan.h"

#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PUNCH 64
/* Relay sessions a listener joins at once (one per connect that was offered a relay). */
#define MAX_RELAYS 32
#define ACCEPT_QUEUE 128
/* Peer connections accepted per readiness event at most, and the listen backlog. */
#define ACCEPT_BATCH 16
#define BACKLOG 128
/* Bytes read from a server connection per readiness event. */
#define READ_CHUNK 4096

typedef struct tsrv {
    int fd;
    rndz__io io;
    struct rndz_tcp_listener *l;
    size_t idx;
    rndz__srvlink link;
    rndz_framer framer;
    uint64_t connect_at, ping_at; /* for RTT samples: connect started, Ping sent (0: none) */
    uint32_t rtt_ms;              /* to this server: smoothed, 0 until measured */
    bool kept;                    /* one of the servers our id is registered with (srvset.h) */
    bool ever; /* registered with it before: a take-over now is of our own old connection */
} tsrv;

/* SYNs toward one address of a connecting peer, timed by a plan (synplan.h). */
typedef struct punch {
    bool used;
    int fd; /* the current attempt's socket, -1: none */
    rndz__io io;
    struct rndz_tcp_listener *l;
    struct sockaddr_storage peer;
    rndz__synplan plan;
    uint64_t wake;
    uint64_t group; /* the punches of one Fsync (one per address of the peer) */
} punch;

/* The relay of one connect (relay_peer.h): joined at `at` unless a direct connection of its
 * punch group came first; handed to accept once the connector says "use". */
typedef struct trelay {
    bool used, connected;
    rndz__rpeer rp;
    rndz__io io;
    struct rndz_tcp_listener *l;
    uint64_t at, deadline, group;
    char peer_id[RNDZ_MAX_ID + 1];
} trelay;

struct rndz_tcp_listener {
    rndz__client c;
    int listen_fd;
    rndz__io listen_io;
    tsrv srv[RNDZ_MAX_SERVERS];
    punch punches[MAX_PUNCH];
    trelay relays[MAX_RELAYS];
    rndz__lsn base;
    rndz__ext my_cands; /* our LAN / IPv6 addresses with the listening port */
    uint64_t groups; /* punch groups started */
    bool started;    /* the first tick chose the servers to keep */
};

static int send_frame(int fd, const rndz__client *c, rndz_cmd cmd, const char *peer,
                      size_t peer_len) {
    return rndz__client_send_frame(fd, c, cmd, peer, peer_len, NULL);
}

static void relay_free(trelay *r) {
    if (r->rp.fd >= 0) rndz__loop_del(&r->l->base.loop, &r->io);
    rndz__rpeer_close(&r->rp);
    r->used = false;
}

/* A direct connection of punch group `group` (0: from `from`, any group) came: the relay
 * would be joined in vain. */
static void relay_forget(rndz_tcp_listener *l, uint64_t group) {
    for (size_t i = 0; i < MAX_RELAYS; i++)
        if (l->relays[i].used && l->relays[i].group == group && l->relays[i].rp.fd < 0)
            relay_free(&l->relays[i]);
}

static void enqueue_info(rndz_tcp_listener *l, int fd, const rndz_peer_info *info) {
    rndz__sock_set_nonblock(fd, false);
    rndz__client_handover(&l->c, fd);
    rndz__lsn_item item = {.fd = fd, .info = *info};
    rndz__addr_unmap(&item.info.addr);
    if (!rndz__lsn_push(&l->base, &item)) {
        RNDZ_LOG(RNDZ_LOG_WARN, "tcp listener: accept queue full; connection dropped");
        close(fd);
    }
}

static void enqueue(rndz_tcp_listener *l, int fd, const struct sockaddr_storage *peer) {
    rndz__sock_set_nonblock(fd, false);
    rndz__client_handover(&l->c, fd);
    rndz__lsn_item item = {.fd = fd};
    item.info.addr = *peer;
    rndz__addr_unmap(&item.info.addr);
    if (!rndz__lsn_push(&l->base, &item)) {
        RNDZ_LOG(RNDZ_LOG_WARN, "tcp listener: accept queue full; connection dropped");
        close(fd);
    }
}

/* --- punches ---------------------------------------------------------------------------- */

static void punch_close_fd(punch *p) {
    if (p->fd < 0) return;
    rndz__loop_del(&p->l->base.loop, &p->io);
    close(p->fd);
    p->fd = -1;
}

static void punch_free(punch *p) {
    punch_close_fd(p);
    p->used = false;
}

static void punch_free_group(rndz_tcp_listener *l, uint64_t group) {
    for (size_t i = 0; i < MAX_PUNCH; i++)
        if (l->punches[i].used && l->punches[i].group == group) punch_free(&l->punches[i]);
}

static void punch_free_group(rndz_tcp_listener *l, uint64_t group);

static void punch_event(void *ctx, uint32_t events) {
    punch *p = ctx;
    /* An event of one epoll batch can come after an earlier handler of the batch freed or
     * reused this slot: only a socket that is there and says so counts. */
    if (!p->used || p->fd < 0) return;
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) err = errno;
    char text[RNDZ_ADDRSTRLEN];
    rndz_addr_format((struct sockaddr *)&p->peer, text, sizeof text);
    if (err) {
        /* Refused or reset (a router that answers early SYNs, an ICMP reject): the plan
         * decides whether to try again, at its pace (listener_tick runs it next). */
        RNDZ_LOG(RNDZ_LOG_DEBUG, "tcp listener: punch to %s (attempt %d): %s", text,
                 p->plan.attempts, rndz_strerror(-err));
        punch_close_fd(p);
        p->wake = 0;
        return;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getpeername(p->fd, (struct sockaddr *)&ss, &sl) < 0) return; /* still connecting */
    (void)events;
    /* The SYNs crossed: this is the peer's connection. */
    RNDZ_LOG(RNDZ_LOG_INFO, "tcp listener: connected to %s by simultaneous open (attempt %d)",
             text, p->plan.attempts);
    rndz__loop_del(&p->l->base.loop, &p->io);
    enqueue(p->l, p->fd, &p->peer);
    p->fd = -1;
    p->used = false;
    punch_free_group(p->l, p->group); /* the peer's other addresses are not needed now */
    relay_forget(p->l, p->group);
}

/* Send a SYN: a new socket on the shared port, connecting to the peer. */
static void punch_connect(punch *p) {
    rndz_tcp_listener *l = p->l;
    int fd = rndz__client_bind(&l->c, SOCK_STREAM);
    if (fd < 0) {
        RNDZ_LOG(RNDZ_LOG_WARN, "tcp listener: punch socket: %s", rndz_strerror(fd));
        return;
    }
    const struct sockaddr *to = (const struct sockaddr *)&p->peer;
    if (connect(fd, to, rndz__addr_len(to)) < 0 && errno != EINPROGRESS) {
        int err = errno;
        RNDZ_LOG(RNDZ_LOG_DEBUG, "tcp listener: punch connect: %s", rndz_strerror(-err));
        close(fd);
        if (err == ENETUNREACH || err == EHOSTUNREACH || err == EAFNOSUPPORT)
            p->plan.attempts = RNDZ_SYNPLAN_MAX_ATTEMPTS; /* no way there: the plan ends */
        return;
    }
    p->fd = fd;
    p->io = (rndz__io){fd, punch_event, p};
    if (rndz__loop_add(&l->base.loop, &p->io, EPOLLOUT)) {
        close(fd);
        p->fd = -1;
    }
}

/* Run a punch's plan at `now`; false once the punch is over (and freed). */
static bool punch_run(punch *p, uint64_t now) {
    if (now < p->wake) return true;
    int state = p->fd < 0 ? RNDZ_SYN_NONE : RNDZ_SYN_BUSY;
    if (rndz__synplan_step(&p->plan, now, state, &p->wake) == RNDZ_SYN_START) punch_connect(p);
    if (p->wake == UINT64_MAX) { /* the plan is over: a socket still at it has lost */
        punch_free(p);
        return false;
    }
    return true;
}

/* Start punching toward `peer` (one address of the peer of punch group `group`), the
 * coordinated SYN `delay_ms` from now. */
static void start_punch(rndz_tcp_listener *l, const struct sockaddr_storage *peer, uint64_t now,
                        uint32_t delay_ms, uint64_t group) {
    punch *p = NULL;
    for (size_t i = 0; i < MAX_PUNCH && !p; i++)
        if (!l->punches[i].used) p = &l->punches[i];
    if (!p) { /* all busy: reuse the one that ends soonest */
        p = &l->punches[0];
        for (size_t i = 1; i < MAX_PUNCH; i++)
            if (l->punches[i].plan.deadline < p->plan.deadline) p = &l->punches[i];
        punch_free(p);
    }
    p->used = true;
    p->fd = -1;
    p->l = l;
    p->peer = *peer;
    p->wake = 0;
    p->group = group;
    rndz__synplan_init(&p->plan, now, delay_ms, now + l->c.timeout_ms);
    punch_run(p, now);
}

static void relay_event(void *ctx, uint32_t events) {
    trelay *r = ctx;
    if (!r->used || r->rp.fd < 0) return;
    rndz_tcp_listener *l = r->l;
    (void)events;
    int rc;
    if (!r->connected) {
        rc = rndz__rpeer_connected(&r->rp);
        r->connected = true;
        if (!rc) rndz__loop_mod(&l->base.loop, &r->io, EPOLLIN);
    } else {
        rc = rndz__rpeer_readable(&r->rp, rndz__now_ms());
    }
    if (rc) {
        RNDZ_LOG(RNDZ_LOG_DEBUG, "tcp listener: relay for %s: %s", r->peer_id, rndz_strerror(rc));
        relay_free(r);
        return;
    }
    if (!r->rp.done) return;
    /* the connector chose the relay: the stream is the peer's from here on */
    rndz_peer_info info = {.verified = 1, .relayed = 1, .addr = r->rp.addr};
    memcpy(info.id, r->peer_id, sizeof info.id);
    RNDZ_LOG(RNDZ_LOG_INFO, "tcp listener: peer %s connected through the relay", r->peer_id);
    rndz__loop_del(&l->base.loop, &r->io);
    int fd = rndz__rpeer_take(&r->rp, &l->c);
    r->used = false;
    enqueue_info(l, fd, &info);
}

/* Run a relay slot at `now`; returns when it next wants to run. */
static uint64_t relay_run(trelay *r, uint64_t now) {
    if (now >= r->deadline) {
        relay_free(r);
        return UINT64_MAX;
    }
    if (r->rp.fd < 0 && now >= r->at) {
        int rc = rndz__rpeer_open(&r->rp, &r->l->c, now);
        r->io = (rndz__io){r->rp.fd, relay_event, r};
        if (!rc) rc = rndz__loop_add(&r->l->base.loop, &r->io, EPOLLOUT);
        if (rc) {
            RNDZ_LOG(RNDZ_LOG_WARN, "tcp listener: relay: %s", rndz_strerror(rc));
            rndz__rpeer_close(&r->rp);
            r->used = false;
            return UINT64_MAX;
        }
    }
    return r->rp.fd < 0 ? r->at : r->deadline;
}

/* A relay offered with a Fsync: remember it for group `group`. true if taken. */
static bool relay_offer(rndz_tcp_listener *l, const rndz__ext *ext, const tsrv *s,
                        const rndz_msg *m, uint64_t group, uint64_t now) {
    trelay *r = NULL;
    for (size_t i = 0; i < MAX_RELAYS && !r; i++)
        if (!l->relays[i].used) r = &l->relays[i];
    if (!r) return false;
    if (!rndz__rpeer_init(&r->rp, &l->c, ext, &l->c.servers[s->idx], RNDZ_RELAY_ROLE_LISTENER,
                          SOCK_STREAM))
        return false;
    r->used = true;
    r->connected = false;
    r->l = l;
    r->group = group;
    r->at = ext->relay == 2 || l->c.relay == RNDZ_RELAY_ONLY ? now : now + l->c.relay_after_ms;
    r->deadline = now + l->c.timeout_ms + l->c.relay_after_ms;
    rndz__copy_id(r->peer_id, m->peer_id, m->peer_id_len);
    return true;
}

/* A round-trip sample to a server. A lower one is taken at once (a sample is only ever
 * inflated: by a lost packet, or a Pong that answers an older Ping); a higher one moves the
 * estimate by 1/8, so a path that really got slower is followed. */
static void srv_rtt_sample(tsrv *s, uint64_t sent, uint64_t now) {
    uint32_t r = now > sent ? (uint32_t)(now - sent) : 1;
    s->rtt_ms = !s->rtt_ms || r < s->rtt_ms ? r : (7 * s->rtt_ms + r) / 8;
}

/* --- server connections ----------------------------------------------------------------- */

static void srv_close_fd(tsrv *s) {
    if (s->fd < 0) return;
    rndz__loop_del(&s->l->base.loop, &s->io);
    close(s->fd);
    s->fd = -1;
}

static void srv_down(tsrv *s, uint64_t now, const char *why) {
    srv_close_fd(s);
    bool was_down = s->link.state == RNDZ_LINK_DOWN;
    uint32_t delay = rndz__link_down(&s->link, now);
    if (!was_down)
        RNDZ_LOG(RNDZ_LOG_INFO, "tcp listener: server %s: %s; again in %u ms",
                 s->l->c.server_text[s->idx], why, delay);
}

static void on_frame(tsrv *s, const uint8_t *body, size_t len, uint64_t now) {
    rndz_tcp_listener *l = s->l;
    rndz_msg m;
    if (rndz_msg_decode(body, len, 1, &m)) return;
    if (m.cmd == RNDZ_RSP_PONG) {
        bool registering = rndz__link_on_pong(&s->link, now);
        rndz__client_on_pong(&l->c, s->idx, body, len, registering && !s->ever, "tcp listener");
        s->ever |= registering;
        if (s->ping_at) srv_rtt_sample(s, s->ping_at, now);
        s->ping_at = 0;
        if (rndz__lsn_set_registered(&l->base))
            RNDZ_LOG(RNDZ_LOG_INFO, "tcp listener: registered with %s", l->c.server_text[s->idx]);
    } else if (m.cmd == RNDZ_RSP_FSYNC) {
        struct sockaddr_storage peer;
        if (rndz__client_peer_addr(&l->c, m.addr, m.addr_len, &peer)) return;
        char text[RNDZ_ADDRSTRLEN];
        rndz_addr_format((struct sockaddr *)&peer, text, sizeof text);
        RNDZ_LOG(RNDZ_LOG_INFO, "tcp listener: peer %.*s at %s wants to connect",
                 (int)(m.peer_id_len > 64 ? 64 : m.peer_id_len), m.peer_id, text);
        rndz__ext ext;
        if (rndz__ext_decode(body, len, &ext)) memset(&ext, 0, sizeof ext);
        /* The connector's SYN leaves when our Rsync, relayed, reaches it: the coordinated
         * SYN goes then (synplan.h). A v1 connector sends no RTT: ours stands for both. */
        uint32_t delay = rndz__synplan_delay(s->rtt_ms, ext.rtt_ms);
        RNDZ_LOG(RNDZ_LOG_DEBUG,
                 "tcp listener: SYN in %u ms (rtt to the server: ours %u ms, the peer's %u ms)",
                 delay, s->rtt_ms, ext.rtt_ms);
        uint64_t group = ++l->groups;
        start_punch(l, &peer, now, delay, group);
        int rc;
        if (ext.has_nonce) {
            /* A connector that tries candidates: SYNs toward each of its addresses too (a peer
             * behind our own NAT is reached on its LAN address), and ours in the Rsync. */
            for (size_t k = 0; k < ext.ncands; k++) {
                struct sockaddr_storage a;
                /* A private address only when it is on one of our own subnets (the connector
                 * then shares our LAN), as the connector does with ours. */
                if (rndz__client_peer_addr(&l->c, ext.cands[k], strlen(ext.cands[k]), &a) == 0 &&
                    !rndz__addr_equal((struct sockaddr *)&a, (struct sockaddr *)&peer) &&
                    (!rndz__addr_is_private(&a) || rndz__addr_on_local_subnet(&a)))
                    start_punch(l, &a, now, delay, group);
            }
            rndz__ext mine = l->my_cands;
            mine.has_nonce = true;
            mine.nonce = ext.nonce;
            mine.rtt_ms = 0;
            if (relay_offer(l, &ext, s, &m, group, now))
                mine.relay = l->c.relay == RNDZ_RELAY_ONLY ? 2 : 1;
            rc = rndz__client_send_frame(s->fd, &l->c, RNDZ_REQ_RSYNC, m.peer_id, m.peer_id_len,
                                         &mine);
        } else {
            rc = send_frame(s->fd, &l->c, RNDZ_REQ_RSYNC, m.peer_id, m.peer_id_len);
        }
        if (rc) srv_down(s, now, rndz_strerror(rc));
    }
}

static void srv_event(void *ctx, uint32_t events) {
    tsrv *s = ctx;
    rndz_tcp_listener *l = s->l;
    uint64_t now = rndz__now_ms();
    if (s->link.state == RNDZ_LINK_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            srv_down(s, now, rndz_strerror(-err));
            return;
        }
        rndz__link_on_connected(&s->link, now);
        /* The handshake's RTT, by the kernel (not inflated by a retransmitted SYN). */
        uint32_t r = rndz__sock_tcp_rtt_ms(s->fd);
        srv_rtt_sample(s, r ? now - r : s->connect_at, now);
        rndz_framer_init(&s->framer);
        rndz__loop_mod(&l->base.loop, &s->io, EPOLLIN);
        return;
    }
    uint8_t buf[READ_CHUNK];
    ssize_t n = recv(s->fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        srv_down(s, now, n == 0 ? "connection closed" : rndz_strerror(-errno));
        return;
    }
    if (n < 0) return;
    rndz__link_on_rx(&s->link, now);
    size_t off = 0;
    while (off < (size_t)n && s->link.state == RNDZ_LINK_UP) {
        int used = rndz_framer_feed(&s->framer, buf + off, (size_t)n - off);
        if (used < 0) {
            srv_down(s, now, "bad frame");
            return;
        }
        off += (size_t)used;
        const uint8_t *body;
        size_t blen;
        while (s->link.state == RNDZ_LINK_UP && rndz_framer_next(&s->framer, &body, &blen) == 1)
            on_frame(s, body, blen, now);
    }
}

static void srv_connect(tsrv *s, uint64_t now) {
    rndz_tcp_listener *l = s->l;
    int fd = rndz__client_bind(&l->c, SOCK_STREAM);
    if (fd < 0) {
        srv_down(s, now, rndz_strerror(fd));
        return;
    }
    const struct sockaddr *to = (const struct sockaddr *)&l->c.servers[s->idx];
    s->fd = fd;
    s->connect_at = now;
    s->ping_at = 0;
    s->io = (rndz__io){fd, srv_event, s};
    if (connect(fd, to, rndz__addr_len(to)) < 0 && errno != EINPROGRESS) {
        srv_down(s, now, rndz_strerror(-errno));
        return;
    }
    if (rndz__loop_add(&l->base.loop, &s->io, EPOLLOUT)) srv_down(s, now, "epoll");
}

static void on_accept(void *ctx, uint32_t events) {
    rndz_tcp_listener *l = ctx;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        int fd = accept4(l->listen_fd, (struct sockaddr *)&from, &fl, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                RNDZ_LOG(RNDZ_LOG_WARN, "tcp listener: accept: %s", rndz_strerror(-errno));
            return;
        }
        /* The peer's SYN came in first (no NAT in between, or a connector on our LAN): the
         * punch toward it has nothing left to do. */
        for (size_t k = 0; k < MAX_PUNCH; k++) {
            punch *p = &l->punches[k];
            if (p->used && rndz__addr_equal((struct sockaddr *)&p->peer, (struct sockaddr *)&from)) {
                relay_forget(l, p->group);
                punch_free_group(l, p->group);
            }
        }
        enqueue(l, fd, &from);
    }
}

/* Server sets (srvset.h): stay connected to the servers the ranking of our id keeps, given
 * which of them are down; leave (Bye, close) one no longer kept, connect to one newly kept. */
static void keep_servers(rndz_tcp_listener *l, uint64_t now) {
    bool down[RNDZ_MAX_SERVERS], keep[RNDZ_MAX_SERVERS];
    for (size_t i = 0; i < l->c.n_servers; i++)
        down[i] = l->srv[i].kept && rndz__link_is_down(&l->srv[i].link, now);
    rndz__srvset_pick(l->c.rank, l->c.n_servers, l->c.per_id, down, keep);
    for (size_t i = 0; i < l->c.n_servers; i++) {
        tsrv *s = &l->srv[i];
        if (keep[i] == s->kept) continue;
        s->kept = keep[i];
        if (keep[i]) {
            if (l->started)
                RNDZ_LOG(RNDZ_LOG_INFO, "tcp listener: registering with %s too (a server of "
                         "our id's set is down)", l->c.server_text[i]);
        } else {
            if (s->link.state == RNDZ_LINK_UP) send_frame(s->fd, &l->c, RNDZ_REQ_BYE, NULL, 0);
            srv_close_fd(s);
            RNDZ_LOG(RNDZ_LOG_INFO, "tcp listener: leaving %s (our id's own servers answer)",
                     l->c.server_text[i]);
        }
        /* down, due now: a kept one connects at the next tick */
        rndz__link_init(&s->link, true, l->c.keepalive_ms, rndz__random());
    }
    l->started = true;
}

static uint64_t listener_tick(void *ctx, uint64_t now) {
    rndz_tcp_listener *l = ctx;
    uint64_t next = UINT64_MAX;
    keep_servers(l, now);
    for (size_t i = 0; i < l->c.n_servers; i++) {
        tsrv *s = &l->srv[i];
        if (!s->kept) continue;
        unsigned act = rndz__link_tick(&s->link, now);
        /* after the tick, which starts the link's clock: wake when it would count as down */
        uint64_t down_at = rndz__link_down_at(&s->link);
        if (down_at > now && down_at < next) next = down_at;
        if (act & RNDZ_LINK_LOST) {
            srv_close_fd(s);
            RNDZ_LOG(RNDZ_LOG_INFO, "tcp listener: server %s: server silent; again in %llu ms",
                     l->c.server_text[i], (unsigned long long)(s->link.retry_at - now));
        }
        if (act & RNDZ_LINK_CONNECT) srv_connect(s, now);
        if (act & RNDZ_LINK_PING) {
            rndz__ext q; /* asks whether it took the id over (a warning when it did) */
            memset(&q, 0, sizeof q);
            q.query = RNDZ__Q_TAKEN;
            int rc = rndz__client_send_frame(s->fd, &l->c, RNDZ_REQ_PING, NULL, 0, &q);
            if (rc) srv_down(s, now, rndz_strerror(rc));
            else if (!s->ping_at) s->ping_at = now; /* a Pong may answer an older one */
        }
        uint64_t t = rndz__link_wake(&s->link);
        if (t < next) next = t;
    }
    for (size_t i = 0; i < MAX_PUNCH; i++) {
        punch *p = &l->punches[i];
        if (p->used && punch_run(p, now) && p->wake < next) next = p->wake;
    }
    for (size_t i = 0; i < MAX_RELAYS; i++) {
        if (!l->relays[i].used) continue;
        uint64_t t = relay_run(&l->relays[i], now);
        if (t < next) next = t;
    }
    return next;
}

int rndz_tcp_listener_create(const rndz_client_options *o, rndz_tcp_listener **out) {
    if (!out) return -EINVAL;
    *out = NULL;
    rndz_tcp_listener *l = calloc(1, sizeof *l);
    if (!l) return -ENOMEM;
    l->listen_fd = -1;
    for (size_t i = 0; i < RNDZ_MAX_SERVERS; i++) l->srv[i].fd = -1;
    for (size_t i = 0; i < MAX_PUNCH; i++) l->punches[i].fd = -1, l->punches[i].used = false;
    for (size_t i = 0; i < MAX_RELAYS; i++) l->relays[i].rp.fd = -1;
    int rc = rndz__lsn_init(&l->base, ACCEPT_QUEUE, false);
    if (rc) goto fail;
    if ((rc = rndz__client_init(&l->c, o))) goto fail;
    if ((rc = rndz__client_bind(&l->c, SOCK_STREAM)) < 0) goto fail;
    l->listen_fd = rc;
    if (listen(l->listen_fd, BACKLOG) < 0) {
        rc = -errno;
        goto fail;
    }
    rndz__local_cands(&l->c.local, l->c.local.ss_family == AF_INET6, &l->my_cands);
    l->listen_io = (rndz__io){l->listen_fd, on_accept, l};
    if ((rc = rndz__loop_add(&l->base.loop, &l->listen_io, EPOLLIN))) goto fail;
    for (size_t i = 0; i < l->c.n_servers; i++) {
        l->srv[i].l = l;
        l->srv[i].idx = i;
        /* down, due now: connects at the first tick */
        rndz__link_init(&l->srv[i].link, true, l->c.keepalive_ms, rndz__random());
    }
    if ((rc = rndz__lsn_start(&l->base, listener_tick, l))) goto fail;
    *out = l;
    return 0;
fail:
    rndz_tcp_listener_destroy(l);
    return rc;
}

int rndz_tcp_listener_local_addr(rndz_tcp_listener *l, struct sockaddr_storage *out,
                                 socklen_t *len) {
    if (!l || !out) return -EINVAL;
    return rndz__sock_local(l->listen_fd, out, len);
}

int rndz_tcp_listener_wait_registered(rndz_tcp_listener *l, uint32_t timeout_ms) {
    if (!l) return -EINVAL;
    return rndz__lsn_wait_registered(&l->base, timeout_ms);
}

int rndz_tcp_listener_accept_info(rndz_tcp_listener *l, uint32_t timeout_ms,
                                  rndz_peer_info *info) {
    if (!l) return -EINVAL;
    rndz__lsn_item item;
    int rc = rndz__lsn_pop(&l->base, timeout_ms, &item);
    if (rc) return rc;
    if (info) *info = item.info;
    return item.fd;
}

int rndz_tcp_listener_accept(rndz_tcp_listener *l, uint32_t timeout_ms,
                             struct sockaddr_storage *peer, socklen_t *peer_len) {
    rndz_peer_info info;
    int fd = rndz_tcp_listener_accept_info(l, timeout_ms, &info);
    if (fd < 0) return fd;
    if (peer) *peer = info.addr;
    if (peer_len) *peer_len = rndz__addr_len((struct sockaddr *)&info.addr);
    return fd;
}

int rndz_tcp_listener_ready_fd(rndz_tcp_listener *l) { return l ? l->base.ready_fd : -EINVAL; }

int rndz_tcp_listener_close(rndz_tcp_listener *l) {
    if (!l) return -EINVAL;
    if (!rndz__lsn_close(&l->base)) return 0;
    for (size_t i = 0; i < l->c.n_servers; i++)
        if (l->srv[i].kept && l->srv[i].link.state == RNDZ_LINK_UP)
            send_frame(l->srv[i].fd, &l->c, RNDZ_REQ_BYE, NULL, 0);
    return 0;
}

void rndz_tcp_listener_destroy(rndz_tcp_listener *l) {
    if (!l) return;
    rndz_tcp_listener_close(l);
    for (size_t i = 0; i < RNDZ_MAX_SERVERS; i++)
        if (l->srv[i].fd >= 0) close(l->srv[i].fd);
    for (size_t i = 0; i < MAX_PUNCH; i++)
        if (l->punches[i].fd >= 0) close(l->punches[i].fd);
    for (size_t i = 0; i < MAX_RELAYS; i++) rndz__rpeer_close(&l->relays[i].rp);
    if (l->listen_fd >= 0) close(l->listen_fd);
    rndz__lsn_free(&l->base);
    free(l);
}
