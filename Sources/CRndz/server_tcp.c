/* server_tcp.c: the rendezvous server over TCP (BRIEF, "Server, TCP"): what is TCP's alone.
 * The protocol is server_proto.c's; here: connections and frames.
 *
 * One connection per client, frames of a 2-byte big-endian length and a body of at most
 * 1500 bytes. An id registered over TCP belongs to the connection that registered it (the
 * registry, registry.h): a response for it goes down that connection. A bad frame, EOF, an
 * error, a Bye, a refused request or tcp_idle_ms of silence drop the connection, and its
 * registration with it (only if it still belongs to it). Accept enforces the connection caps.
 * Nothing blocks: replies that do not fit the socket wait in a small per-connection buffer;
 * a connection whose buffer overflows (a peer that does not read) is dropped. */
#include "server.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A client that lets this much of our output pile up is not reading: drop it. */
#define OUT_MAX 16384
/* Accept at most this many connections per readiness event, so a connection storm cannot
 * starve the rest of the loop. */
#define ACCEPT_BATCH 64
/* Idle connections closed per tick at most (the rest at the next tick): no tick is long. */
#define IDLE_BATCH 1024
/* The listen backlog: connections the kernel completes while the loop is busy. */
#define BACKLOG 4096
/* Bytes read from a connection per readiness event. */
#define READ_CHUNK 4096

typedef struct conn {
    rndz__io io;
    rndz_server *s;
    struct conn *prev, *next; /* idle order: head is the longest silent */
    struct conn *dead_next;
    rndz__reg_entry *reg; /* the registration this connection owns, if any */
    struct sockaddr_storage remote;
    uint64_t last_rx;
    uint8_t *out; /* pending output */
    size_t out_len;
    bool dead, want_out;
    uint32_t ip_slot; /* its place in the per-address connection count (limit.h) */
    rndz_framer framer;
} conn;

/* A listening socket, on listen address k. */
typedef struct lsock {
    rndz_server *s;
    int fd; /* -1: none */
    rndz__io io;
} lsock;

typedef struct tcp_state {
    lsock ls[RNDZ_MAX_LISTEN];
    rndz__registry reg;
    conn *oldest, *newest;
    conn *dead; /* closed during this loop turn; freed at the next tick */
    size_t nconns;
    int reserve_fd;          /* spare descriptor, given up to shed connections at EMFILE */
    uint64_t emfile_logged; /* rate limit for the "out of descriptors" message */
} tcp_state;

static void idle_unlink(tcp_state *t, conn *c) {
    if (c->prev) c->prev->next = c->next;
    else t->oldest = c->next;
    if (c->next) c->next->prev = c->prev;
    else t->newest = c->prev;
    c->prev = c->next = NULL;
}

static void idle_append(tcp_state *t, conn *c) {
    c->prev = t->newest;
    c->next = NULL;
    if (t->newest) t->newest->next = c;
    else t->oldest = c;
    t->newest = c;
}

static void conn_close(conn *c, const char *why) {
    if (c->dead) return;
    rndz_server *s = c->s;
    tcp_state *t = s->tcp;
    char text[RNDZ_ADDRSTRLEN] = "?";
    rndz_addr_format((struct sockaddr *)&c->remote, text, sizeof text);
    RNDZ_LOG(RNDZ_LOG_DEBUG, "tcp: closing %s: %s", text, why);
    if (c->reg && c->reg->owner == c) {
        pthread_rwlock_wrlock(&s->tcp_reg_lock);
        rndz__reg_del(&t->reg, c->reg);
        pthread_rwlock_unlock(&s->tcp_reg_lock);
    }
    c->reg = NULL;
    rndz__limit_tcp_close(&s->core.lim, c->ip_slot);
    c->ip_slot = 0;
    rndz__loop_del(&s->loop, &c->io);
    close(c->io.fd);
    c->io.fd = -1;
    c->dead = true;
    idle_unlink(t, c);
    c->dead_next = t->dead;
    t->dead = c;
    t->nconns--;
    RNDZ_STAT_SET(s, tcp_conns, t->nconns);
    RNDZ_STAT_SET(s, tcp_peers, t->reg.count);
}

static void conn_flush(conn *c) {
    while (c->out_len) {
        ssize_t n = send(c->io.fd, c->out, c->out_len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            conn_close(c, "send failed");
            return;
        }
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    bool want = c->out_len > 0;
    if (want != c->want_out) {
        c->want_out = want;
        rndz__loop_mod(&c->s->loop, &c->io, EPOLLIN | (want ? EPOLLOUT : 0));
    }
    if (!want) {
        free(c->out);
        c->out = NULL;
    }
}

/* Send the response of `a` down c. */
static void conn_send(conn *c, const rndz__action *a) {
    if (c->dead) return;
    uint8_t frame[2 + RNDZ_MAX_MSG];
    int n = rndz__proto_encode(a, frame + 2, RNDZ_MAX_MSG);
    if (n >= 0) n = rndz__frame_seal(frame, (size_t)n);
    if (n < 0) return;
    if (c->out_len + (size_t)n > OUT_MAX) {
        conn_close(c, "not reading its replies");
        return;
    }
    if (!c->out) {
        c->out = malloc(OUT_MAX);
        if (!c->out) {
            conn_close(c, "out of memory");
            return;
        }
    }
    memcpy(c->out + c->out_len, frame, (size_t)n);
    c->out_len += (size_t)n;
    conn_flush(c);
}

/* The directory of ids for one request: the registry, the source its connection. */
static int dir_put(void *ctx, const char *id, size_t len, uint64_t now) {
    conn *c = ctx;
    tcp_state *t = c->s->tcp;
    rndz__reg_entry *e = rndz__reg_get(&t->reg, id, len);
    int taken = e && e->owner && e->owner != c;
    if (taken) ((conn *)e->owner)->reg = NULL; /* taken over */
    pthread_rwlock_wrlock(&c->s->tcp_reg_lock);
    if (c->reg && c->reg != e && c->reg->owner == c) rndz__reg_del(&t->reg, c->reg);
    c->reg = rndz__reg_put(&t->reg, id, len, (struct sockaddr *)&c->remote, c, now);
    pthread_rwlock_unlock(&c->s->tcp_reg_lock);
    RNDZ_STAT_SET(c->s, tcp_peers, t->reg.count); /* before any reply goes out */
    return taken;
}

static bool dir_get(void *ctx, const char *id, size_t len, bool not_source, rndz__dest *out) {
    conn *c = ctx;
    rndz__reg_entry *e = rndz__reg_get(&((tcp_state *)c->s->tcp)->reg, id, len);
    if (!e || !e->owner || (not_source && e->owner == c)) return false;
    out->conn = e->owner;
    return true;
}

static int dir_del(void *ctx, const char *id, size_t len) {
    (void)ctx, (void)id, (void)len; /* the connection ends, and its registration with it */
    return 0;
}

static bool dir_other(void *ctx, const char *id, size_t len) {
    conn *c = ctx;
    struct sockaddr_storage where;
    return rndz__pt_get(&c->s->peers, id, len, false, &where, NULL);
}

bool rndz__server_tcp_has(rndz_server *s, const char *id, size_t len) {
    pthread_rwlock_rdlock(&s->tcp_reg_lock);
    tcp_state *t = s->tcp;
    rndz__reg_entry *e = t ? rndz__reg_get(&t->reg, id, len) : NULL;
    bool has = e && e->owner;
    pthread_rwlock_unlock(&s->tcp_reg_lock);
    return has;
}

static void conn_handle(conn *c, const uint8_t *body, size_t len, uint64_t now) {
    rndz_server *s = c->s;
    const rndz__dir dir = {dir_put, dir_get, dir_del, dir_other, c};
    const rndz__src src = {&c->remote, true};
    rndz__action a;
    rndz__proto_serve(&s->core, &dir, body, len, &src, now, &a);
    if (a.stat >= 0) RNDZ_STAT_IDX_ADD(s, a.stat, 1);
    if (a.stat2 >= 0) RNDZ_STAT_IDX_ADD(s, a.stat2, 1);
    if (a.stat >= 0) rndz__proto_log_refusal(&s->core, "tcp", &a, &c->remote, now);
    if (a.respond) conn_send(a.to_source ? c : a.dest.conn, &a);
    if (a.close) conn_close(c, a.why);
    RNDZ_STAT_SET(s, tcp_peers, ((tcp_state *)s->tcp)->reg.count);
}

/* Bytes that arrived on c at `now`: frames, each served. */
static void conn_input(conn *c, const uint8_t *buf, size_t n, uint64_t now) {
    tcp_state *t = c->s->tcp;
    c->last_rx = now;
    idle_unlink(t, c);
    idle_append(t, c);
    size_t off = 0;
    while (off < n && !c->dead) {
        int used = rndz_framer_feed(&c->framer, buf + off, n - off);
        if (used < 0) {
            RNDZ_STAT_ADD(c->s, tcp_malformed, 1);
            conn_close(c, "oversize frame");
            return;
        }
        off += (size_t)used;
        const uint8_t *body;
        size_t blen;
        while (!c->dead && rndz_framer_next(&c->framer, &body, &blen) == 1)
            conn_handle(c, body, blen, now);
    }
}

static void conn_event(void *ctx, uint32_t events) {
    conn *c = ctx;
    if (c->dead) return;
    if (events & EPOLLOUT) conn_flush(c);
    if (c->dead || !(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    uint8_t buf[READ_CHUNK];
    ssize_t n = recv(c->io.fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) {
        conn_close(c, "closed by peer");
        return;
    }
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) conn_close(c, "recv failed");
        return;
    }
    conn_input(c, buf, (size_t)n, rndz__now_ms());
}

/* A new connection from `from` on fd (its place `slot` in the per-address count, which it
 * gives back when it goes). NULL on failure: the caller still owns fd. */
static conn *conn_open(rndz_server *s, int fd, const struct sockaddr_storage *from,
                       uint32_t slot, uint64_t now) {
    tcp_state *t = s->tcp;
    conn *c = calloc(1, sizeof *c);
    if (!c) {
        rndz__limit_tcp_close(&s->core.lim, slot);
        return NULL;
    }
    c->ip_slot = slot;
    c->s = s;
    c->remote = *from;
    c->last_rx = now;
    c->io = (rndz__io){fd, conn_event, c};
    rndz_framer_init(&c->framer);
    if (rndz__loop_add(&s->loop, &c->io, EPOLLIN)) {
        rndz__limit_tcp_close(&s->core.lim, slot);
        free(c);
        return NULL;
    }
    idle_append(t, c);
    t->nconns++;
    RNDZ_STAT_SET(s, tcp_conns, t->nconns);
    return c;
}

static void tcp_accept(void *ctx, uint32_t events) {
    lsock *l = ctx;
    rndz_server *s = l->s;
    tcp_state *t = s->tcp;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        int fd = accept4(l->fd, (struct sockaddr *)&from, &fl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) return;
            if (errno == EMFILE || errno == ENFILE) {
                /* Out of descriptors: the pending connection would wake us forever. Give up
                 * the reserve descriptor, accept and close at once, and say so. */
                uint64_t now = rndz__now_ms();
                if (now - t->emfile_logged >= 1000 || !t->emfile_logged) {
                    RNDZ_LOG(RNDZ_LOG_ERROR, "tcp: out of file descriptors (%d connections); "
                             "refusing new ones; raise the limit (ulimit -n)", (int)t->nconns);
                    t->emfile_logged = now;
                }
                if (t->reserve_fd >= 0) {
                    close(t->reserve_fd);
                    int x = accept(l->fd, NULL, NULL);
                    if (x >= 0) close(x);
                    t->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                }
                return;
            }
            RNDZ_LOG(RNDZ_LOG_WARN, "tcp: accept: %s", rndz_strerror(-errno));
            return;
        }
        rndz__addr_unmap(&from);
        /* Over a cap: accept and close at once (left in the backlog it would wake us
         * forever); the client sees the connection reset. */
        uint32_t slot = rndz__limit_tcp_open(&s->core.lim, &from);
        if (!slot) {
            RNDZ_STAT_ADD(s, tcp_refused, 1);
            close(fd);
            continue;
        }
        if (!conn_open(s, fd, &from, slot, rndz__now_ms())) close(fd);
    }
}

uint64_t rndz__server_tcp_tick(rndz_server *s, uint64_t now) {
    tcp_state *t = s->tcp;
    while (t->dead) {
        conn *c = t->dead;
        t->dead = c->dead_next;
        free(c->out);
        free(c);
    }
    /* Idle connections, oldest first; bounded per turn like UDP expiry. */
    for (int i = 0; i < IDLE_BATCH && t->oldest && t->oldest->last_rx + s->o.tcp_idle_ms <= now; i++)
        conn_close(t->oldest, "idle");
    while (t->dead) { /* closed just now: nothing can refer to them any more this turn */
        conn *c = t->dead;
        t->dead = c->dead_next;
        free(c->out);
        free(c);
    }
    return t->oldest ? t->oldest->last_rx + s->o.tcp_idle_ms : UINT64_MAX;
}

int rndz__server_tcp_open(rndz_server *s, unsigned k, const rndz__sockopts *so) {
    tcp_state *t = s->tcp;
    int rc;
    if (!t) {
        if (!(t = calloc(1, sizeof *t))) return -ENOMEM;
        s->tcp = t;
        for (unsigned i = 0; i < RNDZ_MAX_LISTEN; i++) t->ls[i].fd = -1;
        t->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if ((rc = rndz__reg_init(&t->reg))) return rc;
    }
    rndz__sockopts o = *so;
    o.reuse = false;
    o.reuse_addr = true; /* restart at once despite TIME_WAIT; no REUSEPORT: a second
                          * server on the same port must fail, not share it */
    rc = rndz__sock_bind(SOCK_STREAM, (struct sockaddr *)&s->local[k], &o);
    if (rc < 0) return rc;
    lsock *l = &t->ls[k];
    *l = (lsock){s, rc, {rc, tcp_accept, l}};
    /* Accepted connections inherit the cap: a lost Fsync or Redirect is resent within a
     * second, not after a backed-off timeout (where the kernel has TCP_RTO_MAX_MS). */
    rndz__sock_tcp_rto_max(l->fd, RNDZ__TCP_RTO_CAP_MS);
    if (listen(l->fd, BACKLOG) < 0) return -errno;
    socklen_t bl = sizeof s->local[k];
    if (getsockname(l->fd, (struct sockaddr *)&s->local[k], &bl) < 0) return -errno;
    return rndz__loop_add(&s->loop, &l->io, EPOLLIN);
}

void rndz__server_tcp_close(rndz_server *s) {
    tcp_state *t = s->tcp;
    if (!t) return;
    for (unsigned k = 0; k < RNDZ_MAX_LISTEN; k++) {
        if (t->ls[k].fd < 0) continue;
        rndz__loop_del(&s->loop, &t->ls[k].io);
        close(t->ls[k].fd);
    }
    while (t->oldest) conn_close(t->oldest, "server stopping");
    rndz__server_tcp_tick(s, 0);
    if (t->reserve_fd >= 0) close(t->reserve_fd);
    pthread_rwlock_wrlock(&s->tcp_reg_lock);
    s->tcp = NULL;
    pthread_rwlock_unlock(&s->tcp_reg_lock);
    rndz__reg_free(&t->reg);
    free(t);
}

void *rndz__server_tcp_adopt(rndz_server *s, int fd, const struct sockaddr_storage *remote,
                             uint64_t now) {
    if (!s->tcp) return NULL;
    uint32_t slot = rndz__limit_tcp_open(&s->core.lim, remote);
    if (!slot) {
        RNDZ_STAT_ADD(s, tcp_refused, 1);
        return NULL;
    }
    return conn_open(s, fd, remote, slot, now);
}

bool rndz__server_tcp_input(void *conn_, const uint8_t *buf, size_t len, uint64_t now) {
    conn *c = conn_;
    if (!c->dead) conn_input(c, buf, len, now);
    return !c->dead;
}
