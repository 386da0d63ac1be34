/* test_nat.c: rndz_nat_check end to end on loopback, through the public API.
 *
 * Loopback has no NAT: a server on two addresses (127.0.0.1 and 127.0.0.2) sees one address
 * for both (endpoint-independent, port preserved), names its second address in its answer
 * (the check asks it too), answers from its other address on request (no NAT: that Pong
 * arrives, so filtering is endpoint-independent), and registers nobody. A silent server
 * gives RNDZ_E_TIMEDOUT in time. Loopback only: the gateway test is left out. */
#include "testlib.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* A server on 127.0.0.1 and 127.0.0.2, one port. */
static bool start_two_addresses(tl_server *v) {
    const char *listens[] = {"127.0.0.1:0", "127.0.0.2:0"};
    rndz_server_options so;
    tl_server_options(&so, listens[0]);
    so.listen_addrs = listens;
    so.n_listen_addrs = 2;
    return tl_server_start(v, &so);
}

static void test_loopback(void) {
    tl_case("nat check against a server on two loopback addresses");
    tl_server v;
    if (!start_two_addresses(&v)) return;
    rndz_client_options o;
    tl_client_options(&o, "nat-check", (const char *const[]){v.text}, 1);
    o.id = NULL; /* none needed */
    rndz_nat_report r;
    uint64_t t0 = tl_now_ms();
    int rc = rndz_nat_check(&o, RNDZ_NAT_NO_PORT_MAPPING, &r);
    uint64_t took = tl_now_ms() - t0;
    CHECK_RC(rc, 0);
    if (rc == 0) {
        CHECK_EQ_INT((long)r.n_dest, 2); /* the one given and the one it named */
        char a[RNDZ_ADDRSTRLEN], want[RNDZ_ADDRSTRLEN];
        snprintf(want, sizeof want, "127.0.0.2:%d", v.port);
        CHECK_EQ_STR(tl_addr_text(&r.dest[1], a, sizeof a), want);
        for (size_t i = 0; i < r.n_dest; i++) {
            CHECK(r.observed[i].ss_family == AF_INET);
            CHECK_EQ_INT(tl_addr_port(&r.observed[i]), tl_addr_port(&r.local));
        }
        CHECK_EQ_INT(r.mapping, RNDZ_NAT_ENDPOINT_INDEPENDENT);
        CHECK_EQ_INT(r.allocation, RNDZ_NAT_PORT_PRESERVING);
        CHECK_EQ_INT(r.behind_nat, 0);
        CHECK_EQ_INT(r.filtering, RNDZ_NAT_ENDPOINT_INDEPENDENT);
        CHECK_EQ_INT(r.hairpin, -1);
        CHECK_EQ_INT(r.port_mapping, -1);
        CHECK(took < 2000);
    }
    rndz_server_stats st = tl_server_stats(&v);
    CHECK_EQ_INT(st.udp_peers, 0); /* a check registers nobody */
    /* ... as the Prometheus text says too; a short buffer gets the length it needs */
    char text[16384];
    int need = rndz_server_metrics(v.s, text, sizeof text);
    CHECK(need > 0 && (size_t)need < sizeof text);
    CHECK(strstr(text, "# TYPE rndz_udp_peers gauge\nrndz_udp_peers 0\n") != NULL);
    CHECK(strstr(text, "# TYPE rndz_udp_rx_total counter\n") != NULL);
    char small[10];
    CHECK_EQ_INT(rndz_server_metrics(v.s, small, sizeof small), need);
    CHECK_EQ_INT((int)strlen(small), (int)sizeof small - 1);
    tl_server_stop(&v);
}

static void test_silent(void) {
    tl_case("nat check against a silent server: timed out, in time");
    int quiet = tl_udp_socket(AF_INET, 100); /* bound, never answers */
    char text[RNDZ_ADDRSTRLEN];
    tl_local_text(quiet, text, sizeof text);
    rndz_client_options o;
    tl_client_options(&o, "x", (const char *const[]){text}, 1);
    o.timeout_ms = 1000;
    rndz_nat_report r;
    uint64_t t0 = tl_now_ms();
    CHECK_EQ_INT(rndz_nat_check(&o, RNDZ_NAT_NO_PORT_MAPPING, &r), RNDZ_E_TIMEDOUT);
    uint64_t took = tl_now_ms() - t0;
    CHECK(took >= 500 && took < 2500); /* 4 tries 200 ms apart, then it gives up */
    close(quiet);
}

/* A listener's own NAT check (the first step rides on its pings) asks the first server of
 * its id's ranking; when that one is down, the next that answers (server sets). */
static atomic_int nat_known;
static void nat_log(rndz_log_level level, const char *m, void *user) {
    (void)level, (void)user;
    if (strstr(m, "our NAT maps endpoint-independent")) atomic_store(&nat_known, 1);
}

static void test_listener_first_server_down(void) {
    tl_case("a listener's NAT check moves on from a down server");
    tl_server v;
    if (!start_two_addresses(&v)) return;
    int quiet = tl_udp_socket(AF_INET, 100);
    char qt[RNDZ_ADDRSTRLEN];
    tl_local_text(quiet, qt, sizeof qt);
    const char *two[] = {qt, v.text};
    char id[32] = "";
    for (int n = 0; n < 100 && !id[0]; n++) { /* an id that ranks the silent one first */
        char c[32];
        snprintf(c, sizeof c, "natl-%d", n);
        size_t order[2];
        CHECK_RC(rndz_server_rank(c, two, 2, order), 0);
        if (order[0] == 0) snprintf(id, sizeof id, "%s", c);
    }
    rndz_set_log(nat_log, NULL, RNDZ_LOG_INFO);
    rndz_client_options o;
    tl_client_options(&o, id, two, 2);
    rndz_udp_listener *l = NULL;
    CHECK_RC(rndz_udp_listener_create(&o, &l), 0);
    uint64_t t0 = tl_now_ms();
    while (!atomic_load(&nat_known) && tl_now_ms() - t0 < tl_ms(8000)) tl_sleep_ms(20);
    uint64_t took = tl_now_ms() - t0;
    CHECK(atomic_load(&nat_known));
    /* the first server counts as down after 3 s (srvlink.h), then a ping and a round trip */
    CHECK(took >= 2900 && took < tl_ms(5000));
    printf("test_nat: listener, first server silent: its NAT known after %llu ms\n",
           (unsigned long long)took);
    rndz_udp_listener_destroy(l);
    rndz_set_log(NULL, NULL, RNDZ_LOG_WARN);
    close(quiet);
    tl_server_stop(&v);
}

int main(void) {
    tl_init("test_nat", 60);
    tl_mark m = tl_mark_now(true);
    test_loopback();
    test_silent();
    test_listener_first_server_down();
    tl_mark_check(&m);
    return tl_finish();
}
