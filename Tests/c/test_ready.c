/* test_ready.c: the listeners' readiness descriptors (rndz_udp_listener_ready_fd,
 * rndz_tcp_listener_ready_fd), as an event loop uses them: poll says readable exactly when
 * next_peer / accept would return at once, and for good once the listener is closed. */
#include "testlib.h"

#include <errno.h>
#include <poll.h>
#include <unistd.h>

static bool readable(int fd, unsigned ms) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, (int)ms) == 1 && (p.revents & POLLIN);
}

static void test_udp(const char *const *servers) {
    tl_case("udp listener");
    rndz_client_options o;
    tl_client_options(&o, "ul", servers, 1);
    rndz_udp_listener *l = tl_udp_listener(&o);
    if (!l) return;
    int rfd = rndz_udp_listener_ready_fd(l);
    CHECK(rfd >= 0);
    CHECK_EQ_INT(rndz_udp_listener_ready_fd(l), rfd); /* borrowed: the same each time */
    CHECK(rfd != rndz_udp_listener_fd(l));
    CHECK(!readable(rfd, 0));
    tl_connect_job j;
    tl_connect_start(&j, "uc", servers, 1, "ul", 0, tl_ms(3000));
    CHECK(readable(rfd, tl_ms(3000))); /* woken by the peer, no thread waits in next_peer */
    rndz_peer_info info;
    CHECK_RC(rndz_udp_listener_next_peer(l, 0, &info), 0);
    CHECK_EQ_STR(info.id, "uc");
    CHECK(!readable(rfd, 0)); /* nothing left */
    CHECK_RC(rndz_udp_listener_next_peer(l, 0, &info), RNDZ_E_TIMEDOUT);
    int fd = tl_connect_join(&j);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    rndz_udp_listener_destroy(l);
    CHECK_RC(rndz_udp_listener_ready_fd(NULL), -EINVAL);
}

static void test_tcp(const char *const *servers) {
    tl_case("tcp listener");
    rndz_client_options o;
    tl_client_options(&o, "tl", servers, 1);
    rndz_tcp_listener *l = tl_tcp_listener(&o);
    if (!l) return;
    int rfd = rndz_tcp_listener_ready_fd(l);
    CHECK(rfd >= 0);
    CHECK(!readable(rfd, 0));
    tl_tcp_job j;
    tl_client_options(&j.o, "tc", servers, 1);
    j.o.timeout_ms = tl_ms(3000);
    j.target = "tl";
    tl_tcp_job_run(&j);
    CHECK(readable(rfd, tl_ms(3000)));
    int afd = rndz_tcp_listener_accept(l, 0, NULL, NULL);
    CHECK(afd >= 0);
    int cfd = tl_tcp_job_join(&j);
    CHECK(cfd >= 0);
    if (cfd >= 0) close(cfd);
    if (afd >= 0) close(afd);
    CHECK(!readable(rfd, 0));
    /* close wakes an event loop for good, and accept then says closed */
    CHECK_RC(rndz_tcp_listener_close(l), 0);
    CHECK(readable(rfd, 0));
    CHECK(readable(rfd, 0));
    CHECK_RC(rndz_tcp_listener_accept(l, tl_ms(1000), NULL, NULL), RNDZ_E_CLOSED);
    rndz_tcp_listener_destroy(l);
    CHECK_RC(rndz_tcp_listener_ready_fd(NULL), -EINVAL);
}

int main(void) {
    tl_init("test_ready", 60);
    tl_mark m = tl_mark_now(true);
    tl_server v;
    if (!tl_server_open(&v, "127.0.0.1:0")) return tl_finish();
    const char *servers[] = {v.text};
    test_udp(servers);
    test_tcp(servers);
    tl_server_stop(&v);
    tl_case("nothing left behind");
    tl_mark_check(&m);
    return tl_finish();
}
