/* server_relay.c: the relay's sockets (relay.h has its logic): one UDP socket and one TCP
 * listening socket on relay_addr, served by worker 0's loop.
 *
 * UDP: datagrams in batches (recvmmsg); each is forwarded in place (its receive buffer is
 * the send buffer) to the other side of its session, from the relay address that side wrote
 * to (IP_PKTINFO), in one sendmmsg per batch.
 * TCP: a connection first sends a join (44 bytes); once both sides of a session joined, each
 * gets a state message (20 bytes) and from then on the relay copies bytes both ways, unchanged,
 * through a buffer per direction: a full send buffer on one side pauses reads on the other,
 * so memory stays bounded; a half-close passes through (shutdown(SHUT_WR)); either side's
 * error or close ends both. A connection that does not join within JOIN_MS is closed. */
#include "server.h"

#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Largest datagram relayed; larger ones are dropped (relay_limited). Above any path MTU. */
#define RELAY_DGRAM 4096
#define RELAY_BATCH 64
#define JOIN_MS 10000
#define TCP_BUF 65536
#define SWEEP_MS 100

typedef struct tconn {
    struct relay_srv *r;
    int fd;
    rndz__io io;
    struct sockaddr_storage peer;
    uint64_t opened;
    uint8_t join[RNDZ_RELAY_JOIN_LEN];
    size_t have;
    bool joined, ready;
    uint32_t sess;
    struct tconn *other;
    /* bytes read from this connection, not yet written to the other */
    uint8_t *buf;
    size_t off, len;
    bool eof;        /* this side sent FIN (and it went on to the other once drained) */
    bool shut;       /* we shut down the other's write side */
    uint64_t paused_until; /* over a rate: no reads until then */
    uint32_t events;
    bool dead;
    struct tconn *next;
} tconn;

typedef struct relay_srv {
    rndz_server *s;
    uint32_t nconns, max_conns; /* TCP connections open, and at most */
    uint64_t accept_paused_until; /* out of descriptors: accepts wait */
    int ufd, tfd;
    rndz__io uio, tio;
    rndz__relay udp, tcp;
    tconn *conns;
    uint64_t next_sweep;
    unsigned nout;
    struct mmsghdr in[RELAY_BATCH];
    struct iovec in_iov[RELAY_BATCH];
    struct sockaddr_storage in_addr[RELAY_BATCH];
    rndz__pktinfo_buf in_ctl[RELAY_BATCH];
    uint8_t in_buf[RELAY_BATCH][RELAY_DGRAM + 1];
    struct mmsghdr out[2 * RELAY_BATCH];
    struct iovec out_iov[2 * RELAY_BATCH];
    struct sockaddr_storage out_addr[2 * RELAY_BATCH];
    rndz__pktinfo_buf out_ctl[2 * RELAY_BATCH];
    uint8_t ans[2 * RELAY_BATCH][RNDZ_RELAY_CTL_LEN];
} relay_srv;

#define STAT(r, name, n) RNDZ_STAT_ADD((r)->s, name, n)

static void set_gauge(relay_srv *r) {
    RNDZ_STAT_SET(r->s, relay_sessions, (uint64_t)r->udp.active + r->tcp.active);
}

/* ---- UDP ---- */

static void flush(relay_srv *r) {
    unsigned done = 0;
    while (done < r->nout) {
        int n = sendmmsg(r->ufd, r->out + done, r->nout - done, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            done++; /* a full buffer or an error for this one: drop it, go on */
            continue;
        }
        done += (unsigned)n;
    }
    r->nout = 0;
}

static void queue(relay_srv *r, const void *data, size_t len, const struct sockaddr_storage *to,
                  const rndz__relay_via *via) {
    unsigned i = r->nout++;
    struct sockaddr_storage *dst = &r->out_addr[i];
    *dst = *to;
    int family = r->s->relay_local.ss_family;
    rndz__addr_unmap(dst);
    if (family == AF_INET6) rndz__addr_map(dst);
    r->out_iov[i] = (struct iovec){(void *)data, len};
    r->out[i].msg_hdr = (struct msghdr){.msg_name = dst,
                                        .msg_namelen = rndz__addr_len((struct sockaddr *)dst),
                                        .msg_iov = &r->out_iov[i], .msg_iovlen = 1};
    if (via && via->set) {
        r->out[i].msg_hdr.msg_control = r->out_ctl[i].buf;
        r->out[i].msg_hdr.msg_controllen = rndz__pktinfo_ctl(&r->out_ctl[i], &via->addr, via->ifindex);
    }
}

/* The relay address a datagram reached, for the answers and forwards to its sender. */
static void via_of(relay_srv *r, const struct msghdr *h, rndz__relay_via *v) {
    uint8_t raw[16];
    v->set = false;
    if (!rndz__pktinfo_dst(h, raw, &v->ifindex)) return;
    struct sockaddr_in6 *d6 = (struct sockaddr_in6 *)&v->addr;
    memset(&v->addr, 0, sizeof v->addr);
    d6->sin6_family = AF_INET6;
    memcpy(&d6->sin6_addr, raw, 16);
    if (!rndz__pktinfo_unicast(&d6->sin6_addr)) return;
    if (r->s->relay_local.ss_family == AF_INET) rndz__addr_unmap(&v->addr);
    v->set = true;
}

static void log_drop(const rndz__relay_out *o, const struct sockaddr_storage *from) {
    if (!o->why || !rndz__log_enabled(RNDZ_LOG_DEBUG)) return;
    char text[RNDZ_ADDRSTRLEN];
    rndz_addr_format((const struct sockaddr *)from, text, sizeof text);
    RNDZ_LOG(RNDZ_LOG_DEBUG, "relay: dropped from %s: %s", text, o->why);
}

static void udp_readable(void *ctx, uint32_t events) {
    relay_srv *r = ctx;
    (void)events;
    for (int round = 0; round < 8; round++) {
        for (unsigned i = 0; i < RELAY_BATCH; i++) {
            r->in_iov[i] = (struct iovec){r->in_buf[i], sizeof r->in_buf[i]};
            r->in[i].msg_hdr = (struct msghdr){.msg_name = &r->in_addr[i],
                                               .msg_namelen = sizeof r->in_addr[i],
                                               .msg_iov = &r->in_iov[i], .msg_iovlen = 1,
                                               .msg_control = r->in_ctl[i].buf,
                                               .msg_controllen = sizeof r->in_ctl[i].buf};
        }
        int n = recvmmsg(r->ufd, r->in, RELAY_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        uint64_t now = rndz__now_ms();
        uint64_t fwd = 0, bytes = 0;
        STAT(r, relay_rx, (uint64_t)n);
        for (int i = 0; i < n; i++) {
            size_t len = r->in[i].msg_len;
            if ((r->in[i].msg_hdr.msg_flags & MSG_TRUNC) || len > RELAY_DGRAM) {
                STAT(r, relay_limited, 1);
                continue;
            }
            rndz__relay_via via;
            via_of(r, &r->in[i].msg_hdr, &via);
            rndz__relay_out o;
            rndz__relay_input(&r->udp, &r->in_addr[i], &via, NULL, r->in_buf[i], len, now, &o);
            if (o.stat >= 0) {
                RNDZ_STAT_IDX_ADD(r->s, o.stat, 1);
                log_drop(&o, &r->in_addr[i]);
            }
            if (o.forward) {
                queue(r, r->in_buf[i], len, &o.to, &o.to_via);
                fwd++;
                bytes += len;
            }
            if (o.ctl_len) {
                memcpy(r->ans[r->nout], o.ctl, o.ctl_len);
                queue(r, r->ans[r->nout], o.ctl_len, &r->in_addr[i], &via);
            }
            if (o.notify) {
                memcpy(r->ans[r->nout], o.ctl, o.ctl_len);
                queue(r, r->ans[r->nout], o.ctl_len, &o.notify_to, &o.notify_via);
            }
        }
        if (fwd) { /* counted before they go: a peer never sees a datagram uncounted */
            STAT(r, relay_tx, fwd);
            STAT(r, relay_bytes, bytes);
        }
        flush(r);
        set_gauge(r);
        if (n < RELAY_BATCH) break;
    }
}

/* ---- TCP ---- */

static void tconn_watch(tconn *c) {
    uint32_t ev = 0;
    uint64_t now = rndz__now_ms();
    /* read while joining, and while the other side has room for what we read */
    if (!c->eof && now >= c->paused_until &&
        (!c->joined || (c->ready && c->other && c->len == 0)))
        ev |= EPOLLIN;
    if (c->ready && c->other && c->other->len) ev |= EPOLLOUT;
    if (ev != c->events) {
        rndz__loop_mod(c->r->s->w[0]->loop, &c->io, ev);
        c->events = ev;
    }
}

static void tconn_kill(tconn *c, const char *why) {
    if (c->dead) return;
    c->dead = true;
    RNDZ_LOG(RNDZ_LOG_DEBUG, "relay: TCP connection closed: %s", why);
    rndz__loop_del(c->r->s->w[0]->loop, &c->io);
    close(c->fd);
    c->fd = -1;
    if (c->joined) {
        void *other = NULL;
        rndz__relay_end(&c->r->tcp, c->sess, c, &other);
        STAT(c->r, relay_expired, 1);
        set_gauge(c->r);
    }
    tconn *o = c->other;
    c->other = NULL;
    if (o) {
        o->other = NULL;
        o->joined = false; /* the session is gone */
        tconn_kill(o, "the other side closed");
    }
}

/* Write what `from` read to its other side. */
static void pump(tconn *from) {
    tconn *to = from->other;
    while (from->len) {
        ssize_t w = send(to->fd, from->buf + from->off, from->len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            tconn_kill(to, "send failed");
            return;
        }
        from->off += (size_t)w;
        from->len -= (size_t)w;
        STAT(from->r, relay_bytes, (uint64_t)w);
    }
    if (!from->len) from->off = 0;
    if (!from->len && from->eof && !from->shut) {
        shutdown(to->fd, SHUT_WR); /* the half-close passes through */
        from->shut = true;
        if (to->shut) tconn_kill(from, "both sides ended");
    }
}

static void tconn_join(tconn *c, uint64_t now) {
    relay_srv *r = c->r;
    rndz__relay_out o;
    rndz__relay_input(&r->tcp, &c->peer, NULL, c, c->join, sizeof c->join, now, &o);
    if (o.stat >= 0) {
        RNDZ_STAT_IDX_ADD(r->s, o.stat, 1);
        log_drop(&o, &c->peer);
    }
    if (!o.ctl_len) {
        tconn_kill(c, o.why ? o.why : "not a join");
        return;
    }
    c->joined = true;
    c->sess = o.sess;
    set_gauge(r);
    if (!o.notify) return; /* the state message waits until the other side joins */
    tconn *other = o.notify_conn;
    c->other = other;
    other->other = c;
    /* both in: each gets "ready" (20 bytes fit any fresh socket buffer), then bytes flow */
    uint8_t ready[RNDZ_RELAY_CTL_LEN];
    memcpy(ready, o.ctl, sizeof ready); /* the second joiner's answer: "ready" */
    tconn *both[2] = {c, other};
    for (int k = 0; k < 2; k++) {
        if (send(both[k]->fd, ready, sizeof ready, MSG_DONTWAIT | MSG_NOSIGNAL) != sizeof ready) {
            tconn_kill(both[k], "ready not sent");
            return;
        }
        both[k]->ready = true;
        if (!both[k]->buf && !(both[k]->buf = malloc(TCP_BUF))) {
            tconn_kill(both[k], "out of memory");
            return;
        }
    }
    tconn_watch(other);
}

static void tconn_io(void *ctx, uint32_t events) {
    tconn *c = ctx;
    relay_srv *r = c->r;
    uint64_t now = rndz__now_ms();
    if (events & EPOLLOUT && c->other && c->other->len) pump(c->other);
    if (c->dead) return;
    if (events & EPOLLERR) { /* reset: epoll reports it whatever we ask, so end it now */
        tconn_kill(c, "connection reset");
        return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (!c->joined) {
            ssize_t n = recv(c->fd, c->join + c->have, sizeof c->join - c->have, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                tconn_kill(c, "closed before joining");
                return;
            }
            if (n > 0 && (c->have += (size_t)n) == sizeof c->join) tconn_join(c, now);
            if (c->dead) return;
        } else if (c->ready && c->other && !c->len && !c->eof) {
            ssize_t n = recv(c->fd, c->buf, TCP_BUF, MSG_DONTWAIT);
            if (n == 0) {
                c->eof = true;
            } else if (n < 0) {
                if (errno != EAGAIN && errno != EINTR) {
                    tconn_kill(c, "receive failed");
                    return;
                }
            } else {
                STAT(r, relay_rx, 1);
                STAT(r, relay_tx, 1);
                c->off = 0;
                c->len = (size_t)n;
                /* over a rate: these bytes go, and the reads wait until they are paid for */
                uint64_t wait = rndz__relay_charge(&r->tcp, c->sess, (size_t)n, now);
                if (wait) {
                    STAT(r, relay_limited, 1);
                    c->paused_until = now + wait;
                }
            }
            pump(c);
            if (c->dead) return;
        } else if (!c->ready && (events & (EPOLLHUP | EPOLLERR))) {
            tconn_kill(c, "closed while waiting for the other side");
            return;
        } else if (events & EPOLLHUP) {
            /* both directions down (our shutdown and its FIN) with nothing left to read:
             * reported whatever we ask, so it must end here */
            if (c->other && c->len) pump(c);
            tconn_kill(c, "hung up");
            return;
        }
    }
    tconn_watch(c);
    if (c->other) tconn_watch(c->other);
}

static void tcp_acceptable(void *ctx, uint32_t events) {
    relay_srv *r = ctx;
    (void)events;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        int fd = accept4(r->tfd, (struct sockaddr *)&from, &fl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* the queue stays readable: stop listening a moment, or this spins */
                rndz__loop_mod(r->s->w[0]->loop, &r->tio, 0);
                r->accept_paused_until = rndz__now_ms() + 100;
            }
            return;
        }
        if (r->nconns >= r->max_conns) { /* joined or not, that is all we hold */
            STAT(r, relay_refused, 1);
            close(fd);
            continue;
        }
        tconn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->r = r;
        c->fd = fd;
        c->peer = from;
        c->opened = rndz__now_ms();
        c->io = (rndz__io){fd, tconn_io, c};
        c->events = EPOLLIN;
        if (rndz__loop_add(r->s->w[0]->loop, &c->io, EPOLLIN)) {
            close(fd);
            free(c);
            continue;
        }
        c->next = r->conns;
        r->conns = c;
        r->nconns++;
    }
}

static void expired_conn(void *ctx, void *conn) {
    (void)ctx;
    tconn *c = conn;
    c->joined = false; /* its session is being ended by the sweep */
    tconn_kill(c, "idle");
}

uint64_t rndz__server_relay_tick(rndz_server *s, uint64_t now) {
    relay_srv *r = s->relay;
    if (!r) return UINT64_MAX;
    if (now >= r->next_sweep) {
        size_t n = rndz__relay_expire(&r->udp, now, 256, NULL, NULL);
        n += rndz__relay_expire(&r->tcp, now, 256, expired_conn, r);
        if (n) STAT(r, relay_expired, n);
        set_gauge(r);
        r->next_sweep = now + SWEEP_MS;
    }
    uint64_t next = r->next_sweep;
    if (r->accept_paused_until) {
        if (now >= r->accept_paused_until) {
            r->accept_paused_until = 0;
            rndz__loop_mod(s->w[0]->loop, &r->tio, EPOLLIN);
        } else if (r->accept_paused_until < next) {
            next = r->accept_paused_until;
        }
    }
    /* connections: joins that take too long, paused reads to resume; the dead are freed */
    for (tconn **p = &r->conns; *p;) {
        tconn *c = *p;
        if (!c->dead && !c->joined && now >= c->opened + JOIN_MS) tconn_kill(c, "no join in time");
        if (!c->dead && c->ready && c->paused_until) {
            if (now >= c->paused_until) {
                c->paused_until = 0;
                tconn_watch(c);
            } else if (c->paused_until < next) {
                next = c->paused_until;
            }
        }
        if (c->dead) {
            *p = c->next;
            free(c->buf);
            free(c);
            r->nconns--;
        } else {
            p = &c->next;
        }
    }
    return next;
}

static void relay_limits(const rndz_server_options *o, rndz__relay_limits *l) {
    l->max_sessions = o->relay_max_sessions;
    l->rate = o->relay_rate;
    l->total_rate = o->relay_total_rate;
    l->idle_ms = o->relay_idle_ms;
}

int rndz__server_relay_open(rndz_server *s, const rndz__sockopts *base) {
    relay_srv *r = calloc(1, sizeof *r);
    if (!r) return -ENOMEM;
    r->s = s;
    r->ufd = r->tfd = -1;
    /* two per session, and as many again joining */
    r->max_conns = s->o.relay_max_sessions > UINT32_MAX / 4 ? UINT32_MAX
                                                             : 4 * s->o.relay_max_sessions;
    s->relay = r;
    rndz__relay_key_init(&s->relay_key);
    rndz__relay_limits lim;
    relay_limits(&s->o, &lim);
    uint64_t now = rndz__now_ms();
    int rc = rndz__relay_init(&r->udp, &s->relay_key, &lim, now);
    if (!rc) rc = rndz__relay_init(&r->tcp, &s->relay_key, &lim, now);
    if (rc) return rc;
    rndz__sockopts so = *base;
    so.reuse = false;
    so.reuse_addr = true;
    so.v6only = s->relay_local.ss_family == AF_INET6 ? (s->o.ipv6_only ? 1 : 0) : -1;
    /* UDP picks the port (port 0: any), TCP must get the same: if a TCP socket holds it,
     * try another (only a port we picked) */
    struct sockaddr_storage want = s->relay_local;
    bool any_port = rndz__addr_port(&want) == 0;
    int fd;
    for (int attempt = 0;; attempt++) {
        s->relay_local = want;
        if ((fd = rndz__sock_bind(SOCK_DGRAM, (struct sockaddr *)&s->relay_local, &so)) < 0)
            return fd;
        socklen_t bl = sizeof s->relay_local;
        if (getsockname(fd, (struct sockaddr *)&s->relay_local, &bl) < 0) {
            rc = -errno;
            close(fd);
            return rc;
        }
        s->relay_len = bl;
        r->tfd = rndz__sock_bind(SOCK_STREAM, (struct sockaddr *)&s->relay_local, &so);
        if (r->tfd >= 0) break;
        close(fd);
        if (r->tfd != -EADDRINUSE || !any_port || attempt == 15) return r->tfd;
    }
    r->ufd = fd;
    /* The address each datagram reached matters only on a wildcard address (a specific one
     * is every reply's source anyway): there, and only there, ask for it. */
    if (rndz__addr_is_any(&s->relay_local) &&
        (rc = rndz__server_udp_pktinfo(fd, s->relay_local.ss_family)))
        return rc;
    r->uio = (rndz__io){fd, udp_readable, r};
    if ((rc = rndz__loop_add(s->w[0]->loop, &r->uio, EPOLLIN))) return rc;
    if (listen(r->tfd, 1024) < 0) return -errno;
    r->tio = (rndz__io){r->tfd, tcp_acceptable, r};
    if ((rc = rndz__loop_add(s->w[0]->loop, &r->tio, EPOLLIN))) return rc;
    /* what peers are told: the address as bound (a wildcard host: the server's own) */
    rndz_addr_format((struct sockaddr *)&s->relay_local, s->core.relay_text,
                     sizeof s->core.relay_text);
    s->core.relay_key = &s->relay_key;
    return 0;
}

void rndz__server_relay_close(rndz_server *s) {
    relay_srv *r = s->relay;
    if (!r) return;
    s->core.relay_key = NULL;
    while (r->conns) {
        tconn *c = r->conns;
        r->conns = c->next;
        if (!c->dead) {
            rndz__loop_del(s->w[0]->loop, &c->io);
            close(c->fd);
        }
        free(c->buf);
        free(c);
    }
    if (r->ufd >= 0) {
        rndz__loop_del(s->w[0]->loop, &r->uio);
        close(r->ufd);
    }
    if (r->tfd >= 0) {
        rndz__loop_del(s->w[0]->loop, &r->tio);
        close(r->tfd);
    }
    rndz__relay_free(&r->udp);
    rndz__relay_free(&r->tcp);
    rndz__wipe(&s->relay_key, sizeof s->relay_key);
    free(r);
    s->relay = NULL;
}
