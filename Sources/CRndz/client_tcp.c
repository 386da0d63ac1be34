/* client_tcp.c: the TCP listener and the TCP connector (BRIEF, "Clients").
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
 * Connector: connect to a server, Isync (with its RTT to the server, for the plan), read the
 * Redirect, then connect from the same local port to the address given, retrying until the
 * deadline. */
#include "client.h"
#include "ext.h"
#include "punch.h"
#include "synplan.h"
#include "loop.h"

#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Reconnect backoff: ~1 s first (a restarting server is usually back within seconds), doubled
 * up to 30 s (a server that is down for long is not hammered). */
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 30000
/* A server connection that shows nothing for this many keepalive intervals is dead (a Pong
 * answers every Ping, so two missed answers in a row is not loss, it is a broken path). */
#define SILENT_INTERVALS 3
#define MAX_PUNCH 64
#define ACCEPT_QUEUE 128
/* Connector: after a refused connect (the peer's port not open toward us yet), try again this
 * soon. */
#define PEER_RETRY_MS 200
/* The listener's advertised addresses are tried this long after the one the server saw (as
 * happy eyeballs does, RFC 8305): long enough for a working path to answer, short enough
 * that peers behind one NAT (where the first cannot work) connect quickly. */
#define CANDIDATE_DELAY_MS 250

enum { SRV_DOWN, SRV_CONNECTING, SRV_UP };

typedef struct tsrv {
    int fd;
    int state;
    rndz__io io;
    struct rndz_tcp_listener *l;
    size_t idx;
    rndz_framer framer;
    uint64_t next_ping, retry_at, last_rx;
    uint64_t connect_at, ping_at; /* for RTT samples: connect started, Ping sent (0: none) */
    uint32_t rtt_ms;              /* to this server: smoothed, 0 until measured */
    uint32_t backoff;
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

typedef struct queued {
    int fd;
    struct sockaddr_storage peer;
} queued;

struct rndz_tcp_listener {
    rndz__client c;
    int listen_fd;
    rndz__io listen_io;
    tsrv srv[RNDZ_MAX_SERVERS];
    punch punches[MAX_PUNCH];
    rndz__loop loop;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool registered, closed;
    rndz__ext my_cands; /* our LAN / IPv6 addresses with the listening port */
    queued q[ACCEPT_QUEUE];
    size_t qhead, qlen;
    uint64_t groups; /* punch groups started */
};

static int send_frame_ext(int fd, const rndz__client *c, rndz_cmd cmd, const char *peer,
                          size_t peer_len, const rndz__ext *ext) {
    uint8_t buf[2 + RNDZ_MAX_MSG];
    rndz_msg m = {cmd, c->id, c->id_len, peer, peer_len, NULL, 0};
    int n = rndz_frame_encode(&m, buf, sizeof buf);
    if (n >= 0 && ext) { /* candidates ride after the v1 fields (ext.h); fix the length */
        n = rndz__ext_append(ext, buf + 2, (size_t)n - 2, RNDZ_MAX_MSG);
        if (n >= 0) {
            buf[0] = (uint8_t)(n >> 8);
            buf[1] = (uint8_t)n;
            n += 2;
        }
    }
    n = rndz__client_sign_frame(c, buf, n, sizeof buf); /* signing stays last */
    if (n < 0) return n;
    /* Frames are tiny next to a socket buffer: a short write means the connection is stuck. */
    ssize_t w = send(fd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0) return -errno;
    return w == n ? 0 : -EAGAIN;
}

static int send_frame(int fd, const rndz__client *c, rndz_cmd cmd, const char *peer,
                      size_t peer_len) {
    return send_frame_ext(fd, c, cmd, peer, peer_len, NULL);
}

static void enqueue(rndz_tcp_listener *l, int fd, const struct sockaddr_storage *peer) {
    rndz__sock_set_nonblock(fd, false);
    rndz__client_handover(&l->c, fd);
    pthread_mutex_lock(&l->mu);
    if (l->qlen == ACCEPT_QUEUE || l->closed) {
        pthread_mutex_unlock(&l->mu);
        RNDZ_LOG(RNDZ_LOG_WARN, "tcp listener: accept queue full; connection dropped");
        close(fd);
        return;
    }
    queued *q = &l->q[(l->qhead + l->qlen++) % ACCEPT_QUEUE];
    q->fd = fd;
    q->peer = *peer;
    rndz__addr_unmap(&q->peer);
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

/* --- punches ---------------------------------------------------------------------------- */

static void punch_close_fd(punch *p) {
    if (p->fd < 0) return;
    rndz__loop_del(&p->l->loop, &p->io);
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
    rndz__loop_del(&p->l->loop, &p->io);
    enqueue(p->l, p->fd, &p->peer);
    p->fd = -1;
    p->used = false;
    punch_free_group(p->l, p->group); /* the peer's other addresses are not needed now */
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
    if (rndz__loop_add(&l->loop, &p->io, EPOLLOUT)) {
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

/* A round-trip sample to a server. A lower one is taken at once (a sample is only ever
 * inflated: by a lost packet, or a Pong that answers an older Ping); a higher one moves the
 * estimate by 1/8, so a path that really got slower is followed. */
static void srv_rtt_sample(tsrv *s, uint64_t sent, uint64_t now) {
    uint32_t r = now > sent ? (uint32_t)(now - sent) : 1;
    s->rtt_ms = !s->rtt_ms || r < s->rtt_ms ? r : (7 * s->rtt_ms + r) / 8;
}

/* --- server connections ----------------------------------------------------------------- */

static void srv_down(tsrv *s, uint64_t now, const char *why) {
    rndz_tcp_listener *l = s->l;
    if (s->fd >= 0) {
        rndz__loop_del(&l->loop, &s->io);
        close(s->fd);
        s->fd = -1;
    }
    if (s->state != SRV_DOWN)
        RNDZ_LOG(RNDZ_LOG_INFO, "tcp listener: server %s: %s; again in %u ms",
                 l->c.server_text[s->idx], why, s->backoff);
    s->state = SRV_DOWN;
    s->retry_at = now + s->backoff;
    s->backoff = s->backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : s->backoff * 2;
}

static void on_frame(tsrv *s, const uint8_t *body, size_t len, uint64_t now) {
    rndz_tcp_listener *l = s->l;
    rndz_msg m;
    if (rndz_msg_decode(body, len, 1, &m)) return;
    if (m.cmd == RNDZ_RSP_PONG) {
        s->backoff = BACKOFF_MIN_MS;
        if (s->ping_at) srv_rtt_sample(s, s->ping_at, now);
        s->ping_at = 0;
        pthread_mutex_lock(&l->mu);
        if (!l->registered)
            RNDZ_LOG(RNDZ_LOG_INFO, "tcp listener: registered with %s", l->c.server_text[s->idx]);
        l->registered = true;
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
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
            rc = send_frame_ext(s->fd, &l->c, RNDZ_REQ_RSYNC, m.peer_id, m.peer_id_len, &mine);
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
    if (s->state == SRV_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            srv_down(s, now, rndz_strerror(-err));
            return;
        }
        s->state = SRV_UP;
        s->last_rx = now;
        /* The handshake's RTT, by the kernel (not inflated by a retransmitted SYN). */
        uint32_t r = rndz__sock_tcp_rtt_ms(s->fd);
        srv_rtt_sample(s, r ? now - r : s->connect_at, now);
        s->next_ping = now; /* register at once */
        rndz_framer_init(&s->framer);
        rndz__loop_mod(&l->loop, &s->io, EPOLLIN);
        return;
    }
    uint8_t buf[4096];
    ssize_t n = recv(s->fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        srv_down(s, now, n == 0 ? "connection closed" : rndz_strerror(-errno));
        return;
    }
    if (n < 0) return;
    s->last_rx = now;
    size_t off = 0;
    while (off < (size_t)n && s->state == SRV_UP) {
        int used = rndz_framer_feed(&s->framer, buf + off, (size_t)n - off);
        if (used < 0) {
            srv_down(s, now, "bad frame");
            return;
        }
        off += (size_t)used;
        const uint8_t *body;
        size_t blen;
        while (s->state == SRV_UP && rndz_framer_next(&s->framer, &body, &blen) == 1)
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
    s->state = SRV_CONNECTING;
    s->connect_at = now;
    s->ping_at = 0;
    s->io = (rndz__io){fd, srv_event, s};
    if (connect(fd, to, rndz__addr_len(to)) < 0 && errno != EINPROGRESS) {
        srv_down(s, now, rndz_strerror(-errno));
        return;
    }
    if (rndz__loop_add(&l->loop, &s->io, EPOLLOUT)) srv_down(s, now, "epoll");
}

static void on_accept(void *ctx, uint32_t events) {
    rndz_tcp_listener *l = ctx;
    for (int i = 0; i < 16; i++) {
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
            if (p->used && rndz__addr_equal((struct sockaddr *)&p->peer, (struct sockaddr *)&from))
                punch_free_group(l, p->group);
        }
        enqueue(l, fd, &from);
    }
}

static uint64_t listener_tick(void *ctx, uint64_t now) {
    rndz_tcp_listener *l = ctx;
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < l->c.n_servers; i++) {
        tsrv *s = &l->srv[i];
        if (s->state == SRV_DOWN && now >= s->retry_at) srv_connect(s, now);
        if (s->state == SRV_UP) {
            uint64_t silent_limit = (uint64_t)SILENT_INTERVALS * l->c.keepalive_ms + 1000;
            if (now - s->last_rx > silent_limit) {
                srv_down(s, now, "server silent");
            } else if (now >= s->next_ping) {
                int rc = send_frame(s->fd, &l->c, RNDZ_REQ_PING, NULL, 0);
                if (rc) srv_down(s, now, rndz_strerror(rc));
                else {
                    s->next_ping = now + rndz__client_jitter(l->c.keepalive_ms);
                    if (!s->ping_at) s->ping_at = now; /* a Pong may answer an older one */
                }
            }
        }
        uint64_t t = s->state == SRV_DOWN   ? s->retry_at
                     : s->state == SRV_UP ? s->next_ping
                                            : UINT64_MAX;
        if (s->state == SRV_UP) {
            uint64_t dead = s->last_rx + (uint64_t)SILENT_INTERVALS * l->c.keepalive_ms + 1001;
            if (dead < t) t = dead;
        }
        if (t < next) next = t;
    }
    for (size_t i = 0; i < MAX_PUNCH; i++) {
        punch *p = &l->punches[i];
        if (p->used && punch_run(p, now) && p->wake < next) next = p->wake;
    }
    return next;
}

static void *listener_thread(void *arg) {
    rndz_tcp_listener *l = arg;
    int rc = rndz__loop_run(&l->loop, listener_tick, l);
    if (rc) RNDZ_LOG(RNDZ_LOG_ERROR, "tcp listener loop failed: %s", rndz_strerror(rc));
    return NULL;
}

int rndz_tcp_listener_create(const rndz_client_options *o, rndz_tcp_listener **out) {
    if (!out) return -EINVAL;
    *out = NULL;
    rndz_tcp_listener *l = calloc(1, sizeof *l);
    if (!l) return -ENOMEM;
    l->listen_fd = -1;
    l->loop.epfd = l->loop.wakefd = -1;
    for (size_t i = 0; i < RNDZ_MAX_SERVERS; i++) l->srv[i].fd = -1;
    for (size_t i = 0; i < MAX_PUNCH; i++) l->punches[i].fd = -1, l->punches[i].used = false;
    rndz__client_sync_init(&l->mu, &l->cv);
    int rc = rndz__client_init(&l->c, o);
    if (rc) goto fail;
    if ((rc = rndz__loop_init(&l->loop))) goto fail;
    if ((rc = rndz__client_bind(&l->c, SOCK_STREAM)) < 0) goto fail;
    l->listen_fd = rc;
    if (listen(l->listen_fd, 128) < 0) {
        rc = -errno;
        goto fail;
    }
    rndz__local_cands(&l->c.local, l->c.local.ss_family == AF_INET6, &l->my_cands);
    l->listen_io = (rndz__io){l->listen_fd, on_accept, l};
    if ((rc = rndz__loop_add(&l->loop, &l->listen_io, EPOLLIN))) goto fail;
    for (size_t i = 0; i < l->c.n_servers; i++) {
        l->srv[i].l = l;
        l->srv[i].idx = i;
        l->srv[i].state = SRV_DOWN;
        l->srv[i].backoff = BACKOFF_MIN_MS;
        l->srv[i].retry_at = 0; /* connect at the first tick */
    }
    if ((rc = pthread_create(&l->thread, NULL, listener_thread, l))) {
        rc = -rc;
        goto fail;
    }
    l->thread_started = true;
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
    return rndz__client_wait_registered(&l->mu, &l->cv, &l->registered, &l->closed, timeout_ms);
}

int rndz_tcp_listener_accept(rndz_tcp_listener *l, uint32_t timeout_ms,
                             struct sockaddr_storage *peer, socklen_t *peer_len) {
    if (!l) return -EINVAL;
    pthread_mutex_lock(&l->mu);
    rndz__client_wait_queue(&l->mu, &l->cv, &l->qlen, &l->closed, timeout_ms);
    if (l->closed) {
        pthread_mutex_unlock(&l->mu);
        return RNDZ_E_CLOSED;
    }
    if (!l->qlen) {
        pthread_mutex_unlock(&l->mu);
        return RNDZ_E_TIMEDOUT;
    }
    queued q = l->q[l->qhead];
    l->qhead = (l->qhead + 1) % ACCEPT_QUEUE;
    l->qlen--;
    pthread_mutex_unlock(&l->mu);
    if (peer) *peer = q.peer;
    if (peer_len) *peer_len = rndz__addr_len((struct sockaddr *)&q.peer);
    return q.fd;
}

int rndz_tcp_listener_close(rndz_tcp_listener *l) {
    if (!l) return -EINVAL;
    pthread_mutex_lock(&l->mu);
    bool was = l->closed;
    l->closed = true;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    if (was) return 0;
    if (l->loop.wakefd >= 0) rndz__loop_stop(&l->loop);
    if (l->thread_started) pthread_join(l->thread, NULL);
    l->thread_started = false;
    for (size_t i = 0; i < l->c.n_servers; i++)
        if (l->srv[i].state == SRV_UP) send_frame(l->srv[i].fd, &l->c, RNDZ_REQ_BYE, NULL, 0);
    return 0;
}

void rndz_tcp_listener_destroy(rndz_tcp_listener *l) {
    if (!l) return;
    rndz_tcp_listener_close(l);
    for (size_t i = 0; i < RNDZ_MAX_SERVERS; i++)
        if (l->srv[i].fd >= 0) close(l->srv[i].fd);
    for (size_t i = 0; i < MAX_PUNCH; i++)
        if (l->punches[i].fd >= 0) close(l->punches[i].fd);
    for (size_t i = 0; i < l->qlen; i++) close(l->q[(l->qhead + i) % ACCEPT_QUEUE].fd);
    if (l->listen_fd >= 0) close(l->listen_fd);
    rndz__loop_close(&l->loop);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

/* --- connector -------------------------------------------------------------------------- */

/* Wait for a non-blocking connect to finish by `deadline`. 0, or a negative error. */
static int wait_connected(int fd, uint64_t deadline) {
    for (;;) {
        uint64_t now = rndz__now_ms();
        if (now >= deadline) return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int pr = poll(&p, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR) continue;
        if (pr < 0) return -errno;
        if (pr == 0) return -ETIMEDOUT;
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        return -err;
    }
}

static int connect_by(rndz__client *c, const struct sockaddr_storage *to, uint64_t deadline) {
    int fd = rndz__client_bind(c, SOCK_STREAM);
    if (fd < 0) return fd;
    int rc = 0;
    if (connect(fd, (const struct sockaddr *)to, rndz__addr_len((const struct sockaddr *)to)) < 0)
        rc = errno == EINPROGRESS ? wait_connected(fd, deadline) : -errno;
    if (rc) {
        close(fd);
        return rc;
    }
    return fd;
}

/* Ask one server where `target` is. 1 with *peer filled, 0 if the server does not know it,
 * or a negative error. *srv_fd keeps the server connection open (the caller closes it). */
static int ask_server(rndz__client *c, size_t i, const char *target, size_t tlen,
                      uint64_t deadline, const rndz__ext *mine, struct sockaddr_storage *peer,
                      rndz__ext *theirs, int *srv_fd) {
    int fd = connect_by(c, &c->servers[i], deadline);
    if (fd < 0) return fd == -ETIMEDOUT ? RNDZ_E_TIMEDOUT : fd;
    *srv_fd = fd;
    /* Our RTT to the server (the handshake's, by the kernel): the listener times its
     * coordinated SYN with it (synplan.h). */
    rndz__ext with_rtt = *mine;
    with_rtt.rtt_ms = rndz__sock_tcp_rtt_ms(fd);
    int rc = send_frame_ext(fd, c, RNDZ_REQ_ISYNC, target, tlen, &with_rtt);
    if (rc) return rc;
    rndz_framer f;
    rndz_framer_init(&f);
    uint8_t buf[512];
    for (;;) {
        uint64_t now = rndz__now_ms();
        if (now >= deadline) return RNDZ_E_TIMEDOUT;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR) continue;
        if (pr < 0) return -errno;
        if (pr == 0) return RNDZ_E_TIMEDOUT;
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0) return -ECONNRESET;
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            return -errno;
        }
        size_t off = 0;
        while (off < (size_t)n) {
            int used = rndz_framer_feed(&f, buf + off, (size_t)n - off);
            if (used < 0) return used;
            off += (size_t)used;
            const uint8_t *body;
            size_t blen;
            while (rndz_framer_next(&f, &body, &blen) == 1) {
                rndz_msg m;
                if (rndz_msg_decode(body, blen, 1, &m) || m.cmd != RNDZ_RSP_REDIRECT ||
                    m.peer_id_len != tlen || memcmp(m.peer_id, target, tlen) != 0)
                    continue;
                if (m.addr_len == 0) return 0;
                rc = rndz__client_peer_addr(c, m.addr, m.addr_len, peer);
                if (rndz__ext_decode(body, blen, theirs) || !theirs->has_nonce ||
                    theirs->nonce != mine->nonce)
                    memset(theirs, 0, sizeof *theirs); /* a v1 listener or server */
                return rc ? rc : 1;
            }
        }
    }
}

/* Connect from our port to every address; the first that completes wins. The address the
 * server saw goes first; the others (the listener's LAN and IPv6 addresses) join after
 * CANDIDATE_DELAY_MS, so where the first works at once the listener does not also accept a
 * second connection that we would drop. A refused or failed attempt is made again after
 * PEER_RETRY_MS (the peer's SYN may not have left yet, or an RST raced it), until the
 * deadline. Returns the fd and the winner's index. */
static int connect_any(rndz__client *c, const struct sockaddr_storage *to, size_t n,
                       uint64_t deadline, size_t *winner, int *attempts) {
    int fds[RNDZ_MAX_CANDS + 1];
    uint64_t retry_at[RNDZ_MAX_CANDS + 1];
    uint64_t t0 = rndz__now_ms();
    for (size_t i = 0; i < n; i++) fds[i] = -1, retry_at[i] = i ? t0 + CANDIDATE_DELAY_MS : 0;
    int result = RNDZ_E_PEERFAIL;
    for (;;) {
        uint64_t now = rndz__now_ms();
        if (now >= deadline) break;
        struct pollfd pf[RNDZ_MAX_CANDS + 1];
        uint64_t wake = deadline;
        for (size_t i = 0; i < n; i++) {
            if (fds[i] < 0 && now >= retry_at[i]) {
                int fd = rndz__client_bind(c, SOCK_STREAM);
                if (fd < 0) return fd;
                (*attempts)++;
                if (connect(fd, (const struct sockaddr *)&to[i],
                            rndz__addr_len((const struct sockaddr *)&to[i])) < 0 &&
                    errno != EINPROGRESS) {
                    /* no route to it from here: this candidate is out for good */
                    bool hopeless = errno == ENETUNREACH || errno == EHOSTUNREACH ||
                                    errno == EAFNOSUPPORT;
                    close(fd);
                    retry_at[i] = hopeless ? UINT64_MAX : now + PEER_RETRY_MS;
                } else {
                    fds[i] = fd;
                }
            }
            if (fds[i] < 0 && retry_at[i] < wake) wake = retry_at[i];
            pf[i] = (struct pollfd){.fd = fds[i], .events = POLLOUT}; /* -1: ignored */
        }
        int pr = poll(pf, (nfds_t)n, (int)(wake > now ? wake - now : 0));
        if (pr < 0 && errno != EINTR) {
            result = -errno;
            break;
        }
        for (size_t i = 0; i < n && pr > 0; i++) {
            if (fds[i] < 0 || !pf[i].revents) continue;
            int err = 0;
            socklen_t el = sizeof err;
            getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &el);
            if (err == 0) {
                *winner = i;
                int fd = fds[i];
                for (size_t k = 0; k < n; k++)
                    if (k != i && fds[k] >= 0) close(fds[k]);
                return fd;
            }
            char text[RNDZ_ADDRSTRLEN];
            rndz_addr_format((const struct sockaddr *)&to[i], text, sizeof text);
            RNDZ_LOG(RNDZ_LOG_DEBUG, "tcp connect: %s: %s", text, rndz_strerror(-err));
            close(fds[i]);
            fds[i] = -1;
            retry_at[i] = rndz__now_ms() + PEER_RETRY_MS;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (fds[i] >= 0) close(fds[i]);
    return result;
}

int rndz_tcp_connect(const rndz_client_options *o, const char *target,
                     struct sockaddr_storage *peer_out, socklen_t *peer_len) {
    rndz_peer_info info;
    return rndz__client_peer_out(rndz_tcp_connect_info(o, target, &info), &info, peer_out,
                                 peer_len);
}

int rndz_tcp_connect_info(const rndz_client_options *o, const char *target,
                          rndz_peer_info *info) {
    if (info) memset(info, 0, sizeof *info);
    rndz__client c;
    int rc = rndz__client_init(&c, o);
    if (rc) return rc;
    size_t tlen;
    if (!target || (tlen = strlen(target)) == 0 || tlen > RNDZ_MAX_ID) return RNDZ_E_BADID;
    uint64_t start = rndz__now_ms(), deadline = start + c.timeout_ms;
    struct sockaddr_storage to[RNDZ_MAX_CANDS + 1];
    rndz__ext mine, theirs;
    memset(&mine, 0, sizeof mine);
    memset(&theirs, 0, sizeof theirs);
    mine.has_nonce = true;
    mine.nonce = (uint64_t)rndz__random() << 32 | rndz__random();
    /* Our candidates carry our port: fix it now (binding a first socket does). */
    int first = rndz__client_bind(&c, SOCK_STREAM);
    if (first < 0) return first;
    close(first);
    rndz__local_cands(&c.local, c.local.ss_family == AF_INET6, &mine);
    int srv_fd = -1, found = 0;
    size_t not_found = 0;
    rc = RNDZ_E_TIMEDOUT;
    for (size_t i = 0; i < c.n_servers && !found; i++) {
        if (srv_fd >= 0) close(srv_fd);
        srv_fd = -1;
        /* Each server gets an equal share of the time left, so one that accepts and never
         * answers cannot keep the others from being asked. */
        uint64_t now = rndz__now_ms();
        uint64_t share = now < deadline ? (deadline - now) / (c.n_servers - i) : 0;
        int r = ask_server(&c, i, target, tlen, now + share, &mine, &to[0], &theirs, &srv_fd);
        if (r == 1) found = 1;
        else if (r == 0) not_found++;
        else {
            RNDZ_LOG(RNDZ_LOG_DEBUG, "tcp connect: server %s: %s", c.server_text[i],
                     rndz_strerror(r));
            rc = r;
        }
    }
    if (!found) {
        if (srv_fd >= 0) close(srv_fd);
        if (not_found == c.n_servers) return RNDZ_E_NOTFOUND;
        return rc == RNDZ_E_TIMEDOUT || rc == -ECONNREFUSED ? RNDZ_E_TIMEDOUT : rc;
    }
    /* The address the server saw, then the listener's own (LAN, IPv6) when it sent them. */
    size_t n = 1;
    /* TCP has no probes to prove a path before use, so a private address is tried only when
     * it is on one of our own subnets (a peer behind the same NAT): elsewhere a connect to it
     * can reach something else entirely. */
    for (size_t k = 0; k < theirs.ncands && n < RNDZ_ARRAY_LEN(to); k++)
        if (rndz__client_peer_addr(&c, theirs.cands[k], strlen(theirs.cands[k]), &to[n]) == 0 &&
            !rndz__addr_equal((struct sockaddr *)&to[n], (struct sockaddr *)&to[0]) &&
            (!rndz__addr_is_private(&to[n]) || rndz__addr_on_local_subnet(&to[n])))
            n++;
    size_t winner = 0;
    int attempts = 0;
    int fd = connect_any(&c, to, n, deadline, &winner, &attempts);
    close(srv_fd);
    if (fd < 0) return fd == RNDZ_E_PEERFAIL || fd == -ETIMEDOUT ? RNDZ_E_PEERFAIL : fd;
    rndz__sock_set_nonblock(fd, false);
    rndz__client_handover(&c, fd);
    uint64_t elapsed = rndz__now_ms() - start;
    uint32_t rtt_ms = rndz__sock_tcp_rtt_ms(fd); /* the kernel's, after the handshake */
    if (info) {
        info->addr = to[winner];
        rndz__addr_unmap(&info->addr);
        info->rtt_ms = rtt_ms;
        info->elapsed_ms = elapsed > UINT32_MAX ? UINT32_MAX : (uint32_t)elapsed;
        info->verified = 1;
        info->lan = rndz__addr_is_private(&info->addr);
        info->advertised = winner > 0;
    }
    char text[RNDZ_ADDRSTRLEN];
    rndz_addr_format((struct sockaddr *)&to[winner], text, sizeof text);
    RNDZ_LOG(RNDZ_LOG_INFO, "tcp connect: %s is at %s%s (after %llu ms, rtt %u ms, %d attempt%s)",
             target, text, winner ? ", an address it advertised" : "", (unsigned long long)elapsed,
             rtt_ms, attempts, attempts == 1 ? "" : "s");
    return fd;
}
