/* test_bridge.c: rndz_bridge (pairs of stream sockets joined end to end on one thread) through
 * the public API, on socketpairs and loopback TCP.
 *
 * - 4 MiB each way at once, 8 pairs at once, byte for byte (a pattern per pair);
 * - a half-close passes through: one side ends, the other reads EOF after all the data and
 *   can still answer; the pair ends once both did (count back to 0, descriptors closed);
 * - a reset (a close with unread data) ends the pair;
 * - idle_ms ends a silent pair;
 * - bad arguments: -EINVAL, and the descriptors are closed all the same;
 * - datagram sockets: 1000 datagrams each way, each as it was (sizes 1..1400), in order
 *   (a local socketpair loses none), and idle_ms ends the pair. */
#include "testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { N = 4 << 20, PAIRS = 8 };

typedef struct flow {
    int fd;
    uint8_t seed;
    size_t n;
    bool ok;
    pthread_t t;
} flow;

static void *writer(void *arg) {
    flow *f = arg;
    static __thread uint8_t buf[65536];
    size_t sent = 0;
    f->ok = true;
    while (sent < f->n) {
        size_t k = f->n - sent < sizeof buf ? f->n - sent : sizeof buf;
        for (size_t i = 0; i < k; i++) buf[i] = (uint8_t)((sent + i) * 7 + f->seed);
        ssize_t w = send(f->fd, buf, k, MSG_NOSIGNAL);
        if (w <= 0) {
            f->ok = false;
            break;
        }
        sent += (size_t)w;
    }
    shutdown(f->fd, SHUT_WR);
    return NULL;
}

/* Read to EOF, checking the pattern; returns the count, or (size_t)-1 on a wrong byte. */
static size_t reader(int fd, uint8_t seed) {
    uint8_t buf[65536];
    size_t got = 0;
    tl_set_timeout(fd, tl_ms(10000));
    for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r <= 0) return got;
        for (ssize_t i = 0; i < r; i++)
            if (buf[i] != (uint8_t)((got + (size_t)i) * 7 + seed)) return (size_t)-1;
        got += (size_t)r;
    }
}

typedef struct rd {
    int fd;
    uint8_t seed;
    size_t got;
    pthread_t t;
} rd;

static void *reader_main(void *arg) {
    rd *r = arg;
    r->got = reader(r->fd, r->seed);
    return NULL;
}

static void test_bulk_and_half_close(rndz_bridge *b) {
    tl_case("bridge: 4 MiB each way, 8 pairs at once, then half-closes");
    int x[PAIRS][2], y[PAIRS][2];
    for (int i = 0; i < PAIRS; i++) {
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, x[i]) == 0);
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, y[i]) == 0);
        CHECK_RC(rndz_bridge_add(b, x[i][1], y[i][1], 0), 0);
    }
    CHECK_EQ_INT((long)rndz_bridge_count(b), PAIRS);
    flow fw[PAIRS][2];
    rd r[PAIRS][2];
    for (int i = 0; i < PAIRS; i++) {
        fw[i][0] = (flow){.fd = x[i][0], .seed = (uint8_t)(2 * i), .n = N};
        fw[i][1] = (flow){.fd = y[i][0], .seed = (uint8_t)(2 * i + 1), .n = N};
        r[i][0] = (rd){.fd = y[i][0], .seed = (uint8_t)(2 * i)};
        r[i][1] = (rd){.fd = x[i][0], .seed = (uint8_t)(2 * i + 1)};
        for (int k = 0; k < 2; k++) {
            CHECK(pthread_create(&fw[i][k].t, NULL, writer, &fw[i][k]) == 0);
            CHECK(pthread_create(&r[i][k].t, NULL, reader_main, &r[i][k]) == 0);
        }
    }
    for (int i = 0; i < PAIRS; i++)
        for (int k = 0; k < 2; k++) {
            pthread_join(fw[i][k].t, NULL);
            pthread_join(r[i][k].t, NULL);
            CHECK(fw[i][k].ok);
            CHECK_EQ_INT((long)r[i][k].got, N); /* all of it, in order, then EOF */
        }
    /* both directions ended: the pairs are gone */
    uint64_t t0 = tl_now_ms();
    while (rndz_bridge_count(b) && tl_now_ms() - t0 < tl_ms(3000)) tl_sleep_ms(10);
    CHECK_EQ_INT((long)rndz_bridge_count(b), 0);
    for (int i = 0; i < PAIRS; i++) close(x[i][0]), close(y[i][0]);
}

static void test_half_close_answer(rndz_bridge *b) {
    tl_case("bridge: one side ends, the other still answers");
    int x[2], y[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, x) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, y) == 0);
    CHECK_RC(rndz_bridge_add(b, x[1], y[1], 0), 0);
    CHECK_EQ_INT(send(x[0], "ask", 3, 0), 3);
    shutdown(x[0], SHUT_WR);
    char buf[16];
    tl_set_timeout(y[0], tl_ms(2000));
    CHECK_EQ_INT(recv(y[0], buf, sizeof buf, MSG_WAITALL), 3);
    CHECK_EQ_INT(recv(y[0], buf, sizeof buf, 0), 0); /* EOF after the data */
    CHECK_EQ_INT(send(y[0], "answer", 6, 0), 6); /* the other way still open */
    shutdown(y[0], SHUT_WR);
    tl_set_timeout(x[0], tl_ms(2000));
    CHECK_EQ_INT(recv(x[0], buf, sizeof buf, MSG_WAITALL), 6);
    CHECK(memcmp(buf, "answer", 6) == 0);
    CHECK_EQ_INT(recv(x[0], buf, sizeof buf, 0), 0);
    uint64_t t0 = tl_now_ms();
    while (rndz_bridge_count(b) && tl_now_ms() - t0 < tl_ms(3000)) tl_sleep_ms(10);
    CHECK_EQ_INT((long)rndz_bridge_count(b), 0); /* both ended: gone */
    close(x[0]);
    close(y[0]);
}

static void test_reset_and_idle(rndz_bridge *b) {
    tl_case("bridge: a reset ends the pair; so does idle_ms");
    size_t before = rndz_bridge_count(b);
    /* TCP on loopback: a close with unread data sends a RST */
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(l, (struct sockaddr *)&a, sizeof a) == 0 && listen(l, 4) == 0);
    socklen_t al = sizeof a;
    getsockname(l, (struct sockaddr *)&a, &al);
    int c1 = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(c1, (struct sockaddr *)&a, sizeof a) == 0);
    int s1 = accept(l, NULL, NULL);
    int y[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, y) == 0);
    CHECK_RC(rndz_bridge_add(b, s1, y[1], 0), 0);
    CHECK_EQ_INT(send(y[0], "unread", 6, 0), 6);
    tl_sleep_ms(50);
    close(c1); /* unread data: RST */
    tl_set_timeout(y[0], tl_ms(2000));
    char buf[8];
    CHECK(recv(y[0], buf, sizeof buf, 0) <= 0); /* the pair ended: our side sees the end */
    close(y[0]);
    close(l);
    /* idle */
    int x[2], z[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, x) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, z) == 0);
    CHECK_RC(rndz_bridge_add(b, x[1], z[1], 200), 0);
    tl_set_timeout(x[0], tl_ms(3000));
    uint64_t t0 = tl_now_ms();
    CHECK_EQ_INT(recv(x[0], buf, sizeof buf, 0), 0); /* closed for silence */
    CHECK(tl_now_ms() - t0 < tl_ms(2500));
    close(x[0]);
    close(z[0]);
    t0 = tl_now_ms();
    while (rndz_bridge_count(b) > before && tl_now_ms() - t0 < tl_ms(3000)) tl_sleep_ms(10);
    CHECK_EQ_INT((long)rndz_bridge_count(b), (long)before);
}

static void test_bad_args(rndz_bridge *b) {
    tl_case("bridge: bad arguments close what they were given");
    int x[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, x) == 0);
    CHECK_RC(rndz_bridge_add(b, x[1], x[1], 0), -EINVAL);
    CHECK(fcntl(x[1], F_GETFD) < 0); /* closed */
    close(x[0]);
    CHECK_RC(rndz_bridge_add(NULL, -1, -1, 0), -EINVAL);
}

static void test_datagrams(rndz_bridge *b) {
    tl_case("bridge: datagrams both ways, as they are");
    int x[2], y[2];
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, x) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, y) == 0);
    int big = 1 << 22;
    for (int k = 0; k < 2; k++) {
        setsockopt(x[k], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        setsockopt(y[k], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    }
    CHECK_RC(rndz_bridge_add(b, x[1], y[1], 300), 0);
    uint8_t out[1400], in[2048];
    int good = 0;
    tl_set_timeout(x[0], tl_ms(2000));
    tl_set_timeout(y[0], tl_ms(2000));
    for (int i = 0; i < 1000; i++) {
        size_t n = (size_t)(i % 1400) + 1;
        for (size_t k = 0; k < n; k++) out[k] = (uint8_t)(i + k);
        int from = i % 2 ? x[0] : y[0], to = i % 2 ? y[0] : x[0];
        CHECK_EQ_INT(send(from, out, n, 0), (long)n);
        long r = recv(to, in, sizeof in, 0);
        good += r == (long)n && memcmp(in, out, n) == 0;
    }
    CHECK_EQ_INT(good, 1000);
    /* silent: the pair ends within idle_ms and a sweep (1 s) */
    uint64_t t0 = tl_now_ms();
    while (rndz_bridge_count(b) && tl_now_ms() - t0 < tl_ms(3000)) tl_sleep_ms(20);
    CHECK_EQ_INT((long)rndz_bridge_count(b), 0);
    close(x[0]);
    close(y[0]);
}

int main(void) {
    tl_init("test_bridge", 120);
    tl_mark m = tl_mark_now(true);
    rndz_bridge *b = NULL;
    CHECK_RC(rndz_bridge_create(&b), 0);
    if (b) {
        test_bulk_and_half_close(b);
        test_half_close_answer(b);
        test_reset_and_idle(b);
        test_bad_args(b);
        test_datagrams(b);
        rndz_bridge_destroy(b);
    }
    rndz_bridge_destroy(NULL);
    tl_mark_check(&m);
    return tl_finish();
}
