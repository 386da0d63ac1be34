/* bridge.c: pairs of stream sockets joined end to end on one event thread (rndz.h,
 * rndz_bridge_*): what rndz-cli's expose and forward use to carry each forwarded connection,
 * so that many connections cost no thread each and no byte passes through user space.
 *
 * Each direction of a pair moves bytes with splice(2) through a pipe of its own (socket ->
 * pipe -> socket, all in the kernel); a full pipe stops reading its source until the other
 * side drains it, so memory stays bounded (the pipes' 64 KiB each). A source that ends
 * (FIN) ends the other side's write direction once the pipe is empty (shutdown(SHUT_WR)): a
 * half-close passes through. The pair ends, both sockets closed, when both directions ended,
 * on any error (a reset), or when idle_ms passed without a byte either way.
 *
 * Two connected datagram sockets (UDP) are joined datagram for datagram instead (batches of
 * recvmmsg/sendmmsg through a buffer; a datagram the other side's send buffer cannot take is
 * dropped, as the network would): no end but idle_ms, and an ICMP error ("port unreachable",
 * ECONNREFUSED) does not end it either: the far end may come back. */
#include "listener.h"
#include "loop.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PIPE_CAP 65536
#define SWEEP_MS 1000

struct bpair;

typedef struct bdir {
    int src, dst;
    int pipe_r, pipe_w;
    size_t inpipe; /* bytes in the pipe */
    bool eof, shut;
} bdir;

typedef struct bside {
    struct bpair *p;
    int fd;
    rndz__io io;
    uint32_t events;
} bside;

#define DGRAM_BATCH 32

typedef struct bpair {
    struct rndz_bridge *b;
    bool dgram;
    bside side[2];
    bdir dir[2]; /* 0: side 0 -> side 1; 1: side 1 -> side 0 */
    uint64_t last, idle_ms;
    bool dead;
    struct bpair *next;
} bpair;

struct rndz_bridge {
    rndz__loop loop;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu; /* the list of pairs (adds come from any thread) */
    bpair *pairs;
    atomic_size_t alive;
    uint64_t next_sweep;
};

static void pair_close(bpair *p) {
    if (p->dead) return;
    p->dead = true;
    for (int k = 0; k < 2; k++) {
        rndz__loop_del(&p->b->loop, &p->side[k].io);
        close(p->side[k].fd);
        close(p->dir[k].pipe_r);
        close(p->dir[k].pipe_w);
    }
    atomic_fetch_sub(&p->b->alive, 1);
}

/* Move what can move in one direction now. false: the pair broke. */
static bool pump(bdir *d) {
    for (;;) {
        bool moved = false;
        if (d->inpipe) {
            ssize_t n = splice(d->pipe_r, NULL, d->dst, NULL, d->inpipe,
                               SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
            if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
            if (n > 0) d->inpipe -= (size_t)n, moved = true;
        }
        if (!d->eof && d->inpipe < PIPE_CAP) {
            ssize_t n = splice(d->src, NULL, d->pipe_w, NULL, PIPE_CAP - d->inpipe,
                               SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
            if (n == 0) d->eof = true;
            else if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
            else if (n > 0) d->inpipe += (size_t)n, moved = true;
        }
        if (d->eof && !d->inpipe && !d->shut) {
            shutdown(d->dst, SHUT_WR); /* the half-close passes through */
            d->shut = true;
        }
        if (!moved) return true;
    }
}

static void watch(bpair *p) {
    for (int k = 0; k < 2; k++) {
        bside *s = &p->side[k];
        const bdir *out = &p->dir[k], *in = &p->dir[1 - k]; /* k reads `out`, writes `in` */
        uint32_t ev = 0;
        if (!out->eof && out->inpipe < PIPE_CAP) ev |= EPOLLIN;
        if (in->inpipe) ev |= EPOLLOUT;
        if (ev != s->events) {
            rndz__loop_mod(&p->b->loop, &s->io, ev);
            s->events = ev;
        }
    }
}

/* Datagrams waiting on side k go to the other side, as they are. false: the pair broke. */
static bool pump_dgram(bpair *p, int k) {
    static __thread uint8_t bufs[DGRAM_BATCH][2048];
    struct mmsghdr m[DGRAM_BATCH];
    struct iovec iov[DGRAM_BATCH];
    for (int round = 0; round < 8; round++) {
        for (int i = 0; i < DGRAM_BATCH; i++) {
            iov[i] = (struct iovec){bufs[i], sizeof bufs[i]};
            m[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(p->side[k].fd, m, DGRAM_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) return errno == EAGAIN || errno == EINTR || errno == ECONNREFUSED;
        for (int i = 0; i < n; i++) iov[i].iov_len = m[i].msg_len;
        int done = 0;
        while (done < n) {
            int w = sendmmsg(p->side[1 - k].fd, m + done, (unsigned)(n - done), MSG_DONTWAIT);
            if (w < 0) {
                if (errno == EINTR) continue;
                done++; /* full or refused: this one is dropped */
                continue;
            }
            done += w;
        }
        p->last = rndz__now_ms();
        if (n < DGRAM_BATCH) return true;
    }
    return true;
}

static void side_event(void *ctx, uint32_t events) {
    bside *s = ctx;
    bpair *p = s->p;
    if (p->dead) return;
    if (p->dgram) {
        int k = (int)(s - p->side);
        if (!pump_dgram(p, k)) pair_close(p);
        return;
    }
    size_t before = p->dir[0].inpipe + p->dir[1].inpipe;
    bool eof0 = p->dir[0].eof, eof1 = p->dir[1].eof;
    if (!pump(&p->dir[0]) || !pump(&p->dir[1])) {
        pair_close(p);
        return;
    }
    if (before != p->dir[0].inpipe + p->dir[1].inpipe || eof0 != p->dir[0].eof ||
        eof1 != p->dir[1].eof)
        p->last = rndz__now_ms();
    if (p->dir[0].shut && p->dir[1].shut) {
        pair_close(p); /* both directions ended */
        return;
    }
    /* a reset or hang-up with nothing left to move: epoll reports it whatever we ask */
    if ((events & (EPOLLERR | EPOLLHUP)) && !p->dir[0].inpipe && !p->dir[1].inpipe &&
        (events & EPOLLERR || (p->dir[0].eof && p->dir[1].eof))) {
        pair_close(p);
        return;
    }
    watch(p);
}

static uint64_t bridge_tick(void *ctx, uint64_t now) {
    struct rndz_bridge *b = ctx;
    if (now < b->next_sweep) return b->next_sweep;
    b->next_sweep = now + SWEEP_MS;
    pthread_mutex_lock(&b->mu);
    for (bpair **pp = &b->pairs; *pp;) {
        bpair *p = *pp;
        if (!p->dead && p->idle_ms && now >= p->last + p->idle_ms) pair_close(p);
        if (p->dead) {
            *pp = p->next;
            free(p);
        } else {
            pp = &p->next;
        }
    }
    pthread_mutex_unlock(&b->mu);
    return b->next_sweep;
}

static void *bridge_main(void *arg) {
    struct rndz_bridge *b = arg;
    rndz__loop_run(&b->loop, bridge_tick, b);
    return NULL;
}

int rndz_bridge_create(rndz_bridge **out) {
    if (!out) return -EINVAL;
    *out = NULL;
    struct rndz_bridge *b = calloc(1, sizeof *b);
    if (!b) return -ENOMEM;
    b->loop.epfd = b->loop.wakefd = -1;
    pthread_mutex_init(&b->mu, NULL);
    int rc = rndz__loop_init(&b->loop);
    if (!rc && (rc = -pthread_create(&b->thread, NULL, bridge_main, b)) == 0) b->started = true;
    if (rc) {
        rndz__loop_close(&b->loop);
        pthread_mutex_destroy(&b->mu);
        free(b);
        return rc;
    }
    *out = b;
    return 0;
}

int rndz_bridge_add(rndz_bridge *b, int a, int c, uint32_t idle_ms) {
    if (!b || a < 0 || c < 0 || a == c) {
        if (a >= 0) close(a);
        if (c >= 0 && c != a) close(c);
        return -EINVAL;
    }
    bpair *p = calloc(1, sizeof *p);
    if (!p) {
        close(a);
        close(c);
        return -ENOMEM;
    }
    int fds[2][2] = {{-1, -1}, {-1, -1}};
    int rc = 0;
    for (int k = 0; k < 2 && !rc; k++)
        if (pipe2(fds[k], O_NONBLOCK | O_CLOEXEC) < 0) rc = -errno;
    if (rc) {
        for (int k = 0; k < 2; k++)
            if (fds[k][0] >= 0) close(fds[k][0]), close(fds[k][1]);
        free(p);
        close(a);
        close(c);
        return rc;
    }
    int ends[2] = {a, c};
    int ta = 0, tc = 0;
    socklen_t tl = sizeof ta;
    getsockopt(a, SOL_SOCKET, SO_TYPE, &ta, &tl);
    tl = sizeof tc;
    getsockopt(c, SOL_SOCKET, SO_TYPE, &tc, &tl);
    p->dgram = ta == SOCK_DGRAM && tc == SOCK_DGRAM;
    p->b = b;
    p->idle_ms = idle_ms;
    p->last = rndz__now_ms();
    for (int k = 0; k < 2; k++) {
        rndz__sock_set_nonblock(ends[k], true);
        fcntl(fds[k][0], F_SETPIPE_SZ, PIPE_CAP);
        p->dir[k] = (bdir){.src = ends[k], .dst = ends[1 - k], .pipe_r = fds[k][0],
                           .pipe_w = fds[k][1]};
        p->side[k] = (bside){.p = p, .fd = ends[k], .events = EPOLLIN};
        p->side[k].io = (rndz__io){ends[k], side_event, &p->side[k]};
    }
    atomic_fetch_add(&b->alive, 1);
    pthread_mutex_lock(&b->mu);
    p->next = b->pairs;
    b->pairs = p;
    /* from here the loop thread may see events: the pair is complete */
    for (int k = 0; k < 2 && !rc; k++) rc = rndz__loop_add(&b->loop, &p->side[k].io, EPOLLIN);
    if (rc) pair_close(p); /* freed by the next sweep; the fds were ours */
    pthread_mutex_unlock(&b->mu);
    return rc;
}

size_t rndz_bridge_count(rndz_bridge *b) { return b ? atomic_load(&b->alive) : 0; }

void rndz_bridge_destroy(rndz_bridge *b) {
    if (!b) return;
    rndz__loop_stop(&b->loop);
    if (b->started) pthread_join(b->thread, NULL);
    while (b->pairs) {
        bpair *p = b->pairs;
        b->pairs = p->next;
        pair_close(p);
        free(p);
    }
    rndz__loop_close(&b->loop);
    pthread_mutex_destroy(&b->mu);
    free(b);
}
