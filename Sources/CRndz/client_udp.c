/* client_udp.c: the UDP listener and the UDP connector (BRIEF, "Clients").
 *
 * Listener: one socket per server, connected to it, plus one unconnected "peer" socket, all
 * bound to the same local port. Linux hands a datagram to the connected socket whose remote
 * matches and everything else to the unconnected one. A background thread pings every server
 * and answers Fsync{P, B} with Rsync{P} to the server and the same bytes to B (the punch that
 * opens our NAT toward B).
 *
 * Connector: one unconnected socket; Isync{T} to every server each round until a server
 * answers Redirect{T, B} (connect the socket to B and hand it over) or every server said the
 * target is unknown (RNDZ_E_NOTFOUND) or the time is up (RNDZ_E_TIMEDOUT). */
#include "client.h"
#include "loop.h"

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

typedef struct srv_sock {
    int fd;
    rndz__io io;
    struct rndz_udp_listener *l;
    size_t idx;
    uint64_t next_ping;
    bool answered;
} srv_sock;

struct rndz_udp_listener {
    rndz__client c;
    srv_sock srv[RNDZ_MAX_SERVERS];
    int peer_fd;
    rndz__loop loop;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool registered;
};

static int send_request(int fd, const rndz__client *c, rndz_cmd cmd, const char *peer,
                        size_t peer_len, const struct sockaddr_storage *to) {
    uint8_t buf[RNDZ_MAX_MSG];
    int n = rndz__encode(cmd, c->id, c->id_len, peer, peer_len, NULL, 0, buf, sizeof buf);
    if (n < 0) return n;
    ssize_t w = to ? sendto(fd, buf, (size_t)n, MSG_DONTWAIT, (const struct sockaddr *)to,
                            rndz__addr_len((const struct sockaddr *)to))
                   : send(fd, buf, (size_t)n, MSG_DONTWAIT);
    return w < 0 ? -errno : 0;
}

static void on_fsync(rndz_udp_listener *l, srv_sock *s, const rndz_msg *m) {
    struct sockaddr_storage peer;
    char peer_id[RNDZ_MAX_ID + 1];
    size_t plen = m->peer_id_len < RNDZ_MAX_ID ? m->peer_id_len : RNDZ_MAX_ID;
    memcpy(peer_id, m->peer_id, plen);
    peer_id[plen] = 0;
    if (rndz__client_peer_addr(&l->c, m->addr, m->addr_len, &peer)) {
        RNDZ_LOG(RNDZ_LOG_WARN, "udp listener: Fsync with a bad address dropped");
        return;
    }
    char text[RNDZ_ADDRSTRLEN];
    rndz_addr_format((struct sockaddr *)&peer, text, sizeof text);
    RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: peer %s at %s wants to connect", peer_id, text);
    /* First the punch (the Rsync bytes, as v1 sends them) that opens our NAT toward the peer,
     * then Rsync to the server, which redirects the peer to us: the punch is then on its way
     * before the peer even learns our address. */
    int rc = send_request(l->peer_fd, &l->c, RNDZ_REQ_RSYNC, m->peer_id, m->peer_id_len, &peer);
    if (rc) RNDZ_LOG(RNDZ_LOG_DEBUG, "udp listener: punch to %s: %s", text, rndz_strerror(rc));
    rc = send_request(s->fd, &l->c, RNDZ_REQ_RSYNC, m->peer_id, m->peer_id_len, NULL);
    if (rc) RNDZ_LOG(RNDZ_LOG_DEBUG, "udp listener: Rsync to server: %s", rndz_strerror(rc));
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
            if (!s->answered) {
                s->answered = true;
                s->next_ping = rndz__now_ms() + rndz__client_jitter(l->c.keepalive_ms);
                RNDZ_LOG(RNDZ_LOG_INFO, "udp listener: registered with %s",
                         l->c.server_text[s->idx]);
            }
            pthread_mutex_lock(&l->mu);
            l->registered = true;
            pthread_cond_broadcast(&l->cv);
            pthread_mutex_unlock(&l->mu);
        } else if (m.cmd == RNDZ_RSP_FSYNC) {
            on_fsync(l, s, &m);
        }
    }
}

static uint64_t listener_tick(void *ctx, uint64_t now) {
    rndz_udp_listener *l = ctx;
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < l->c.n_servers; i++) {
        srv_sock *s = &l->srv[i];
        if (now >= s->next_ping) {
            int rc = send_request(s->fd, &l->c, RNDZ_REQ_PING, NULL, 0, NULL);
            if (rc) RNDZ_LOG(RNDZ_LOG_DEBUG, "udp listener: ping %s: %s", l->c.server_text[i],
                             rndz_strerror(rc));
            uint32_t wait = s->answered ? rndz__client_jitter(l->c.keepalive_ms)
                                        : (l->c.keepalive_ms < FIRST_PING_RETRY_MS
                                               ? l->c.keepalive_ms
                                               : FIRST_PING_RETRY_MS);
            s->next_ping = now + wait;
        }
        if (s->next_ping < next) next = s->next_ping;
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
    rndz__loop_close(&l->loop);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

int rndz_udp_listener_create(const rndz_client_options *o, rndz_udp_listener **out) {
    if (!out) return -EINVAL;
    *out = NULL;
    rndz_udp_listener *l = calloc(1, sizeof *l);
    if (!l) return -ENOMEM;
    l->peer_fd = -1;
    l->loop.epfd = l->loop.wakefd = -1;
    for (size_t i = 0; i < RNDZ_MAX_SERVERS; i++) l->srv[i].fd = -1;
    pthread_mutex_init(&l->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cv, &ca);
    pthread_condattr_destroy(&ca);
    int rc = rndz__client_init(&l->c, o);
    if (rc) goto fail;
    if ((rc = rndz__loop_init(&l->loop))) goto fail;
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
    if ((rc = rndz__client_bind(&l->c, SOCK_DGRAM)) < 0) goto fail;
    l->peer_fd = rc;
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

int rndz_udp_listener_fd(rndz_udp_listener *l) { return l ? l->peer_fd : -EINVAL; }

int rndz_udp_listener_local_addr(rndz_udp_listener *l, struct sockaddr_storage *out,
                                 socklen_t *len) {
    if (!l || !out) return -EINVAL;
    return rndz__sock_local(l->peer_fd, out, len);
}

int rndz_udp_listener_wait_registered(rndz_udp_listener *l, uint32_t timeout_ms) {
    if (!l) return -EINVAL;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
    int rc = 0;
    pthread_mutex_lock(&l->mu);
    while (!l->registered && rc == 0) rc = pthread_cond_timedwait(&l->cv, &l->mu, &until);
    bool ok = l->registered;
    pthread_mutex_unlock(&l->mu);
    return ok ? 0 : RNDZ_E_TIMEDOUT;
}

void rndz_udp_listener_destroy(rndz_udp_listener *l) {
    if (!l) return;
    rndz__loop_stop(&l->loop);
    if (l->thread_started) pthread_join(l->thread, NULL);
    for (size_t i = 0; i < l->c.n_servers; i++)
        if (l->srv[i].fd >= 0) send_request(l->srv[i].fd, &l->c, RNDZ_REQ_BYE, NULL, 0, NULL);
    listener_close(l);
}

/* --- connector -------------------------------------------------------------------------- */

/* After connect(), datagrams that arrived before it are still queued: the punch from the
 * peer, a second server's Redirect. Drop those that are v1 protocol messages, so the caller's
 * first read is the peer's data; stop at the first datagram that is not. */
static void drain_protocol(int fd) {
    uint8_t buf[RNDZ_MAX_MSG + 1];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT | MSG_PEEK);
        if (n < 0) return;
        rndz_msg m;
        if (rndz_msg_decode(buf, (size_t)n, 0, &m) != 0 &&
            rndz_msg_decode(buf, (size_t)n, 1, &m) != 0)
            return;
        if (recv(fd, buf, sizeof buf, MSG_DONTWAIT) < 0) return;
    }
}

int rndz_udp_connect(const rndz_client_options *o, const char *target,
                     struct sockaddr_storage *peer_out, socklen_t *peer_len) {
    rndz__client c;
    int rc = rndz__client_init(&c, o);
    if (rc) return rc;
    size_t tlen;
    if (!target || (tlen = strlen(target)) == 0 || tlen > RNDZ_MAX_ID) return RNDZ_E_BADID;
    int fd = rndz__client_bind(&c, SOCK_DGRAM);
    if (fd < 0) return fd;
    bool not_found[RNDZ_MAX_SERVERS] = {0};
    size_t n_not_found = 0;
    uint64_t start = rndz__now_ms(), deadline = start + c.timeout_ms, next_round = start;
    uint8_t buf[RNDZ_MAX_MSG + 1];
    for (;;) {
        uint64_t now = rndz__now_ms();
        if (now >= deadline) {
            rc = RNDZ_E_TIMEDOUT;
            break;
        }
        if (now >= next_round) {
            for (size_t i = 0; i < c.n_servers; i++) {
                if (not_found[i]) continue;
                int src = send_request(fd, &c, RNDZ_REQ_ISYNC, target, tlen, &c.servers[i]);
                if (src) RNDZ_LOG(RNDZ_LOG_DEBUG, "udp connect: Isync to %s: %s",
                                  c.server_text[i], rndz_strerror(src));
            }
            next_round = now + c.round_ms;
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
        if (connect(fd, (struct sockaddr *)&peer, rndz__addr_len((struct sockaddr *)&peer)) < 0) {
            rc = -errno;
            break;
        }
        drain_protocol(fd);
        rndz__sock_set_nonblock(fd, false);
        if (peer_out) {
            *peer_out = peer;
            rndz__addr_unmap(peer_out);
            if (peer_len) *peer_len = rndz__addr_len((struct sockaddr *)peer_out);
        }
        char text[RNDZ_ADDRSTRLEN];
        rndz_addr_format((struct sockaddr *)&peer, text, sizeof text);
        RNDZ_LOG(RNDZ_LOG_INFO, "udp connect: %s is at %s (after %llu ms)", target, text,
                 (unsigned long long)(rndz__now_ms() - start));
        return fd;
    }
    close(fd);
    return rc;
}
