/* listener.c: the skeleton the UDP and TCP listeners share (listener.h). */
#include "listener.h"

#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

void rndz__deadline_in(struct timespec *ts, uint32_t ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) ts->tv_sec++, ts->tv_nsec -= 1000000000L;
}

int rndz__lsn_init(rndz__lsn *b, size_t cap, bool drop_oldest) {
    memset(b, 0, sizeof *b);
    b->loop.epfd = b->loop.wakefd = -1;
    b->ready_fd = -1;
    b->cap = cap;
    b->drop_oldest = drop_oldest;
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (!(b->q = calloc(cap, sizeof *b->q))) return -ENOMEM;
    if ((b->ready_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) return -errno;
    return rndz__loop_init(&b->loop);
}

static void *lsn_thread(void *arg) {
    rndz__lsn *b = arg;
    int rc = rndz__loop_run(&b->loop, b->tick, b->tick_ctx);
    if (rc) RNDZ_LOG(RNDZ_LOG_ERROR, "listener loop failed: %s", rndz_strerror(rc));
    return NULL;
}

int rndz__lsn_start(rndz__lsn *b, rndz__tick_fn tick, void *ctx) {
    b->tick = tick;
    b->tick_ctx = ctx;
    int rc = pthread_create(&b->thread, NULL, lsn_thread, b);
    if (rc) return -rc;
    b->thread_started = true;
    return 0;
}

/* With mu held: make ready_fd readable exactly while something is queued or closed. */
static void update_ready(rndz__lsn *b) {
    bool want = b->qlen > 0 || b->closed;
    if (want == b->signalled || b->ready_fd < 0) return;
    uint64_t v = 1;
    ssize_t n = want ? write(b->ready_fd, &v, sizeof v) : read(b->ready_fd, &v, sizeof v);
    if (n == (ssize_t)sizeof v) b->signalled = want;
}

bool rndz__lsn_set_registered(rndz__lsn *b) {
    pthread_mutex_lock(&b->mu);
    bool first = !b->registered;
    b->registered = true;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    return first;
}

bool rndz__lsn_push(rndz__lsn *b, const rndz__lsn_item *item) {
    pthread_mutex_lock(&b->mu);
    if (b->closed || (b->qlen == b->cap && !b->drop_oldest)) {
        pthread_mutex_unlock(&b->mu);
        return false;
    }
    if (b->qlen == b->cap) { /* nobody takes them: the oldest goes */
        if (b->q[b->qhead].fd >= 0) close(b->q[b->qhead].fd);
        b->qhead = (b->qhead + 1) % b->cap;
        b->qlen--;
    }
    b->q[(b->qhead + b->qlen++) % b->cap] = *item;
    update_ready(b);
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    return true;
}

int rndz__lsn_pop(rndz__lsn *b, uint32_t timeout_ms, rndz__lsn_item *out) {
    struct timespec until;
    rndz__deadline_in(&until, timeout_ms == UINT32_MAX ? 0 : timeout_ms);
    int rc = 0;
    pthread_mutex_lock(&b->mu);
    while (!b->qlen && !b->closed && rc == 0)
        rc = timeout_ms == UINT32_MAX ? pthread_cond_wait(&b->cv, &b->mu)
                                      : pthread_cond_timedwait(&b->cv, &b->mu, &until);
    if (b->closed || !b->qlen) {
        rc = b->closed ? RNDZ_E_CLOSED : RNDZ_E_TIMEDOUT;
    } else {
        *out = b->q[b->qhead];
        b->qhead = (b->qhead + 1) % b->cap;
        b->qlen--;
        rc = 0;
        update_ready(b);
    }
    pthread_mutex_unlock(&b->mu);
    return rc;
}

int rndz__lsn_wait_registered(rndz__lsn *b, uint32_t timeout_ms) {
    struct timespec until;
    rndz__deadline_in(&until, timeout_ms);
    int rc = 0;
    pthread_mutex_lock(&b->mu);
    while (!b->registered && !b->closed && rc == 0)
        rc = pthread_cond_timedwait(&b->cv, &b->mu, &until);
    rc = b->closed ? RNDZ_E_CLOSED : b->registered ? 0 : RNDZ_E_TIMEDOUT;
    pthread_mutex_unlock(&b->mu);
    return rc;
}

bool rndz__lsn_close(rndz__lsn *b) {
    pthread_mutex_lock(&b->mu);
    bool first = !b->closed;
    b->closed = true;
    update_ready(b);
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    if (!first) return false; /* the first close stops and joins the thread */
    if (b->loop.wakefd >= 0) rndz__loop_stop(&b->loop);
    if (b->thread_started) pthread_join(b->thread, NULL);
    b->thread_started = false;
    return first;
}

void rndz__lsn_free(rndz__lsn *b) {
    if (b->q)
        for (size_t i = 0; i < b->qlen; i++) {
            int fd = b->q[(b->qhead + i) % b->cap].fd;
            if (fd >= 0) close(fd);
        }
    free(b->q);
    b->q = NULL;
    b->qlen = 0;
    if (b->ready_fd >= 0) close(b->ready_fd);
    b->ready_fd = -1;
    rndz__loop_close(&b->loop);
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
}
