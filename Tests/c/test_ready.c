/* test_ready.c: the listeners' readiness descriptors (rndz_udp_listener_ready_fd,
 * rndz_tcp_listener_ready_fd), as an event loop uses them: poll says readable exactly when
 * next_peer / accept would return at once, and for good once the listener is closed. */
#include "testlib.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <unistd.h>

static bool readable(int fd, unsigned ms) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, (int)ms) == 1 && (p.revents & POLLIN);
}

typedef struct tcp_job {
    rndz_client_options o;
    const char *servers[1];
    int rc;
    pthread_t t;
} tcp_job;

static void *tcp_connect_thread(void *arg) {
    tcp_job *j = arg;
    j->rc = rndz_tcp_connect(&j->o, "tl", NULL, NULL);
    return NULL;
}

int main(void) {
    tl_init("test_ready", 60);
    rndz_server_options so;
    rndz_server_options_init(&so);
    so.listen_addr = "127.0.0.1:0";
    so.workers = 1;
    rndz_server *s;
    if (!CHECK_RC(rndz_server_create(&so, &s), 0)) return tl_finish();
    CHECK_RC(rndz_server_start(s), 0);
    struct sockaddr_storage sa;
    char text[RNDZ_ADDRSTRLEN];
    rndz_server_local_addr(s, &sa, NULL);
    rndz_addr_format((struct sockaddr *)&sa, text, sizeof text);
    const char *servers[] = {text};

    tl_case("udp listener");
    rndz_client_options o;
    rndz_client_options_init(&o);
    o.servers = servers;
    o.n_servers = 1;
    o.id = "ul";
    rndz_udp_listener *ul = NULL;
    CHECK_RC(rndz_udp_listener_create(&o, &ul), 0);
    CHECK_RC(rndz_udp_listener_wait_registered(ul, tl_ms(3000)), 0);
    int rfd = rndz_udp_listener_ready_fd(ul);
    CHECK(rfd >= 0);
    CHECK_EQ_INT(rndz_udp_listener_ready_fd(ul), rfd); /* borrowed: the same each time */
    CHECK(rfd != rndz_udp_listener_fd(ul));
    CHECK(!readable(rfd, 0));
    tl_connect_job j;
    tl_connect_start(&j, "uc", servers, 1, "ul", 0, tl_ms(3000));
    CHECK(readable(rfd, tl_ms(3000))); /* woken by the peer, no thread waits in next_peer */
    rndz_peer_info info;
    CHECK_RC(rndz_udp_listener_next_peer(ul, 0, &info), 0);
    CHECK_EQ_STR(info.id, "uc");
    CHECK(!readable(rfd, 0)); /* nothing left */
    CHECK_RC(rndz_udp_listener_next_peer(ul, 0, &info), RNDZ_E_TIMEDOUT);
    int cfd = tl_connect_join(&j);
    CHECK(cfd >= 0);
    if (cfd >= 0) close(cfd);
    rndz_udp_listener_destroy(ul);
    CHECK_RC(rndz_udp_listener_ready_fd(NULL), -EINVAL);

    tl_case("tcp listener");
    o.id = "tl";
    rndz_tcp_listener *tl = NULL;
    CHECK_RC(rndz_tcp_listener_create(&o, &tl), 0);
    CHECK_RC(rndz_tcp_listener_wait_registered(tl, tl_ms(3000)), 0);
    rfd = rndz_tcp_listener_ready_fd(tl);
    CHECK(rfd >= 0);
    CHECK(!readable(rfd, 0));
    tcp_job tj;
    rndz_client_options_init(&tj.o);
    tj.servers[0] = text;
    tj.o.servers = tj.servers;
    tj.o.n_servers = 1;
    tj.o.id = "tc";
    tj.o.timeout_ms = tl_ms(3000);
    pthread_create(&tj.t, NULL, tcp_connect_thread, &tj);
    CHECK(readable(rfd, tl_ms(3000)));
    struct sockaddr_storage peer;
    int afd = rndz_tcp_listener_accept(tl, 0, &peer, NULL);
    CHECK(afd >= 0);
    pthread_join(tj.t, NULL);
    CHECK(tj.rc >= 0);
    if (tj.rc >= 0) close(tj.rc);
    if (afd >= 0) close(afd);
    CHECK(!readable(rfd, 0));
    /* close wakes an event loop for good, and accept then says closed */
    CHECK_RC(rndz_tcp_listener_close(tl), 0);
    CHECK(readable(rfd, 0));
    CHECK(readable(rfd, 0));
    CHECK_RC(rndz_tcp_listener_accept(tl, tl_ms(1000), NULL, NULL), RNDZ_E_CLOSED);
    rndz_tcp_listener_destroy(tl);
    rndz_server_destroy(s);
    return tl_finish();
}
