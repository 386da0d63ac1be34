/* test_listener.c: the listeners' shared skeleton (Sources/CRndz/listener.c): the queue of
 * peers, its readiness fd (readable exactly while something is queued or after close), the
 * full-queue policies, close waking waiters, and queued connections closed on free. */
#include "listener.h"

#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <unistd.h>
#include "unit.h"

static bool readable(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static rndz__lsn_item item(int fd, uint16_t tag) {
    rndz__lsn_item it = {.fd = fd};
    it.info.rtt_ms = tag;
    return it;
}

static void test_ready_fd(void) {
    rndz__lsn b;
    CHECK(rndz__lsn_init(&b, 4, true) == 0);
    CHECK(b.ready_fd >= 0);
    CHECK(!readable(b.ready_fd));
    rndz__lsn_item out;
    CHECK(rndz__lsn_pop(&b, 0, &out) == RNDZ_E_TIMEDOUT);
    rndz__lsn_item a = item(-1, 1), c = item(-1, 2);
    CHECK(rndz__lsn_push(&b, &a));
    CHECK(readable(b.ready_fd));
    CHECK(rndz__lsn_push(&b, &c));
    CHECK(readable(b.ready_fd));
    CHECK(rndz__lsn_pop(&b, 0, &out) == 0 && out.info.rtt_ms == 1);
    CHECK(readable(b.ready_fd)); /* one left */
    CHECK(rndz__lsn_pop(&b, 0, &out) == 0 && out.info.rtt_ms == 2);
    CHECK(!readable(b.ready_fd));
    /* full with drop_oldest: the oldest goes, the newest four stay, in order */
    for (uint16_t i = 10; i < 16; i++) {
        rndz__lsn_item x = item(-1, i);
        CHECK(rndz__lsn_push(&b, &x));
    }
    for (uint16_t i = 12; i < 16; i++) CHECK(rndz__lsn_pop(&b, 0, &out) == 0 && out.info.rtt_ms == i);
    CHECK(!readable(b.ready_fd));
    /* registered */
    CHECK(rndz__lsn_wait_registered(&b, 0) == RNDZ_E_TIMEDOUT);
    CHECK(rndz__lsn_set_registered(&b));
    CHECK(!rndz__lsn_set_registered(&b));
    CHECK(rndz__lsn_wait_registered(&b, 0) == 0);
    /* close: readable for good, every call says closed, pushes are refused */
    CHECK(rndz__lsn_push(&b, &a));
    CHECK(rndz__lsn_close(&b));
    CHECK(!rndz__lsn_close(&b));
    CHECK(readable(b.ready_fd));
    CHECK(rndz__lsn_pop(&b, 1000, &out) == RNDZ_E_CLOSED);
    CHECK(readable(b.ready_fd));
    CHECK(rndz__lsn_wait_registered(&b, 1000) == RNDZ_E_CLOSED);
    CHECK(!rndz__lsn_push(&b, &c));
    rndz__lsn_free(&b);
}

static void test_refuse_and_free(void) {
    rndz__lsn b;
    CHECK(rndz__lsn_init(&b, 2, false) == 0);
    int fds[3];
    for (int i = 0; i < 3; i++) fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
    rndz__lsn_item x0 = item(fds[0], 0), x1 = item(fds[1], 1), x2 = item(fds[2], 2);
    CHECK(rndz__lsn_push(&b, &x0));
    CHECK(rndz__lsn_push(&b, &x1));
    CHECK(!rndz__lsn_push(&b, &x2)); /* full: refused, the caller keeps its fd */
    CHECK(fcntl(fds[2], F_GETFD) >= 0);
    close(fds[2]);
    rndz__lsn_free(&b); /* closes what nobody took */
    CHECK(fcntl(fds[0], F_GETFD) < 0);
    CHECK(fcntl(fds[1], F_GETFD) < 0);
}

static uint64_t tick_count;
static uint64_t count_tick(void *ctx, uint64_t now) {
    (void)ctx;
    tick_count++;
    return now + 5;
}

static void test_thread(void) {
    rndz__lsn b;
    CHECK(rndz__lsn_init(&b, 2, false) == 0);
    CHECK(rndz__lsn_start(&b, count_tick, NULL) == 0);
    usleep(50 * 1000);
    CHECK(rndz__lsn_close(&b)); /* stops and joins the thread */
    uint64_t n = tick_count;
    CHECK(n >= 2);
    usleep(20 * 1000);
    CHECK(tick_count == n);
    rndz__lsn_free(&b);
}

int main(void) {
    test_ready_fd();
    test_refuse_and_free();
    test_thread();
    return tl_summary("test_listener");
}
