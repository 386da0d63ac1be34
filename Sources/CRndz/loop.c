/* loop.c: the epoll event loop shared by the server and the clients' background threads. */
#include "loop.h"

#include <limits.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

int rndz__loop_init(rndz__loop *l) {
    memset(l, 0, sizeof *l);
    l->wakefd = -1;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) return -errno;
    l->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->wakefd < 0) {
        int rc = -errno;
        close(l->epfd);
        return rc;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) < 0) {
        int rc = -errno;
        rndz__loop_close(l);
        return rc;
    }
    atomic_init(&l->stopping, false);
    return 0;
}

void rndz__loop_close(rndz__loop *l) {
    if (l->wakefd >= 0) close(l->wakefd);
    if (l->epfd >= 0) close(l->epfd);
    l->wakefd = l->epfd = -1;
}

int rndz__loop_add(rndz__loop *l, rndz__io *io, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = io};
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, io->fd, &ev) < 0 ? -errno : 0;
}

int rndz__loop_mod(rndz__loop *l, rndz__io *io, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = io};
    return epoll_ctl(l->epfd, EPOLL_CTL_MOD, io->fd, &ev) < 0 ? -errno : 0;
}

void rndz__loop_del(rndz__loop *l, rndz__io *io) {
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL);
}

void rndz__loop_stop(rndz__loop *l) {
    atomic_store(&l->stopping, true);
    uint64_t one = 1;
    ssize_t n = write(l->wakefd, &one, sizeof one);
    (void)n; /* EAGAIN means a wake-up is already pending */
}

int rndz__loop_run(rndz__loop *l, rndz__tick_fn tick, void *ctx) {
    struct epoll_event evs[64];
    while (!atomic_load(&l->stopping)) {
        uint64_t now = rndz__now_ms();
        uint64_t next = tick ? tick(ctx, now) : UINT64_MAX;
        int timeout = -1;
        if (next != UINT64_MAX) {
            uint64_t now2 = rndz__now_ms();
            timeout = next <= now2 ? 0 : (next - now2 > INT_MAX ? INT_MAX : (int)(next - now2));
        }
        if (atomic_load(&l->stopping)) break;
        int n = epoll_wait(l->epfd, evs, (int)RNDZ_ARRAY_LEN(evs), timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        for (int i = 0; i < n; i++) {
            rndz__io *io = evs[i].data.ptr;
            if (!io) {
                uint64_t v;
                ssize_t r = read(l->wakefd, &v, sizeof v);
                (void)r;
                continue;
            }
            if (io->fn) io->fn(io->ctx, evs[i].events); /* (cleared: a session reused) */
        }
    }
    return 0;
}
