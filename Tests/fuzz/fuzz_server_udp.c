/* fuzz_server_udp.c: the UDP server's request handling, fed whole datagrams.
 *
 * Built from the C sources: it calls the internal rndz__server_udp_handle (one datagram, replies
 * sent at once) and rndz__server_udp_tick (the expiry the event loop runs), declared in
 * Sources/CRndz/server.h. The server is never started: the fuzzer drives it directly, at a
 * simulated clock. Each input gets a fresh server (rndz_server_create on 127.0.0.1:0, UDP only,
 * one worker), so every input replays the same way on its own and leaks show up per input.
 *
 * Input: a config byte, then records, each 2 header bytes + a datagram, separated by SEP (4
 * bytes, below).
 *   config bits 0-1: max_peers 1, 1024, 2048, 4096 (one to four table shards; the default, a
 *                    million, makes a server too slow to create per input)
 *          bits 2-3: udp_expiry_ms default (60000), 1, 1000, 30000
 *          bit 4:    a secret (authenticated ids)
 *          bits 5-6: limits: default, tight (1/s, burst 1), off, max_id_len 4
 *   header byte 0 (ctl) bits 0-2: the sender, among 8 loopback sources
 *                       bits 3-5: advance the clock by 0 ms .. 60001 ms
 *                       bit 6:    run the expiry tick (as the event loop does) first
 *   header byte 1 (auth) bits 0-1: 0 send the datagram as it is; 1 sign it (fresh ts, its
 *                       id's credential); 2 send the previous record's datagram again, byte
 *                       for byte (a replay); 3 sign it with a stale ts
 *                       bit 2: sign with another id's credential
 * A datagram over RNDZ_MAX_MSG bytes is dropped, as the socket reader drops it. Signing uses
 * rndz_msg_sign with credentials of the fixed fuzz secret (a v1 server skips the field).
 *
 * The sources are loopback only: UDP sockets this program binds once (port 0) on
 * 127.0.0.2-6, so nothing else listens there and every reply the server sends lands here;
 * plus [::1] and the IPv4-mapped form of source 0, which an IPv4 server cannot send to.
 * Properties, after every datagram:
 *   - every datagram the server sent (stats udp_tx) arrived at one of our sinks: it sends
 *     nowhere else; and only to sources that sent it something in this input;
 *   - each decodes as a Response of at most RNDZ_MAX_MSG bytes;
 *   - one request makes the server send at most one datagram; an undecodable one, none;
 *   - a Pong or a not-found Redirect (the replies that go to an unverified sender) is never
 *     larger than the request: no amplification toward a spoofed source;
 *   - the udp_peers statistic never exceeds the number of registering requests;
 *   - with a secret, a request that is not freshly signed with its own id's credential
 *     (unsigned, stale, another id's credential, a replay) makes the server send nothing and
 *     registers nothing.
 * At the end the server is destroyed (LeakSanitizer checks each input).
 */
#include "server.h"

#include "fuzz_server.h"

#include <arpa/inet.h>
#include <sys/epoll.h>
#include <string.h>
#include <unistd.h>

static const uint8_t SEP[4] = {0xff, 0xfe, 0xfd, 0xfc};
static const uint32_t STEP_MS[8] = {0, 1, 10, 1000, 10000, 30000, 59999, 60001};
static const uint64_t MAX_PEERS[4] = {1, 1024, 2048, 4096}; /* 1, 1, 2, 4 shards */
static const uint32_t EXPIRY_MS[4] = {0, 1, 1000, 30000};

#define NSRC 8
static struct sockaddr_storage src[NSRC];
static int sink[NSRC]; /* the socket bound at src[i], or -1 (not a sendable address) */
static int sinks_ep;   /* epoll over the sinks: one call finds which have datagrams */

static int bind_sink(const char *text, struct sockaddr_storage *out) {
    struct sockaddr_storage a;
    socklen_t alen;
    FUZZ_CHECK(rndz_addr_parse(text, &a, &alen) == 0, "parse %s", text);
    int fd = socket(a.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&a, alen) < 0) {
        close(fd);
        return -1;
    }
    socklen_t l = sizeof *out;
    FUZZ_CHECK(getsockname(fd, (struct sockaddr *)out, &l) == 0, "getsockname");
    return fd;
}

static void setup(void) {
    rndz_set_log(fuzz_quiet_log, NULL, RNDZ_LOG_TRACE); /* run every log statement's formatting */
    static const char *const v4[] = {"127.0.0.2:0", "127.0.0.3:0", "127.0.0.2:0", "127.0.0.4:0",
                                     NULL,          NULL,          "127.0.0.5:0", "127.0.0.6:0"};
    for (int i = 0; i < NSRC; i++) {
        sink[i] = -1;
        if (!v4[i]) continue;
        sink[i] = bind_sink(v4[i], &src[i]);
        FUZZ_CHECK(sink[i] >= 0, "bind %s", v4[i]);
    }
    /* 4: source 0 in IPv4-mapped IPv6 form (the same peer, as a dual-stack socket sees it). */
    struct sockaddr_in *s0 = (struct sockaddr_in *)&src[0];
    struct sockaddr_in6 *m = (struct sockaddr_in6 *)&src[4];
    memset(m, 0, sizeof *m);
    m->sin6_family = AF_INET6;
    m->sin6_port = s0->sin_port;
    m->sin6_addr.s6_addr[10] = m->sin6_addr.s6_addr[11] = 0xff;
    memcpy(&m->sin6_addr.s6_addr[12], &s0->sin_addr, 4);
    /* 5: [::1] at a port we hold (if IPv6 works here), else at port 9 (discard) of ::1. An
     * IPv4 server cannot send there either way; it exercises IPv6 text in Fsync/Redirect. */
    sink[5] = bind_sink("[::1]:0", &src[5]); /* drained too: must stay empty */
    if (sink[5] < 0) FUZZ_CHECK(rndz_addr_parse("[::1]:9", &src[5], NULL) == 0, "[::1]:9");
    sinks_ep = epoll_create1(EPOLL_CLOEXEC);
    FUZZ_CHECK(sinks_ep >= 0, "epoll_create1");
    for (int i = 0; i < NSRC; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (sink[i] >= 0)
            FUZZ_CHECK(epoll_ctl(sinks_ep, EPOLL_CTL_ADD, sink[i], &ev) == 0, "epoll_ctl");
    }
}

static bool same_addr(int i, int j) {
    return rndz__addr_equal((const struct sockaddr *)&src[i], (const struct sockaddr *)&src[j]);
}

/* Take what arrived at the sinks (waiting up to timeout_ms for something) and check it.
 * Returns the number of datagrams. */
static unsigned drain_once(int timeout_ms, int from, size_t req_len, const bool *has_sent) {
    unsigned got = 0;
    uint8_t buf[65536];
    struct epoll_event ev[NSRC];
    int nev = epoll_wait(sinks_ep, ev, NSRC, timeout_ms);
    for (int k = 0; k < nev; k++) {
        int i = (int)ev[k].data.u32;
        for (;;) {
            ssize_t n = recv(sink[i], buf, sizeof buf, MSG_DONTWAIT);
            if (n < 0) break;
            got++;
            FUZZ_CHECK(i != 5, "the server sent to [::1] from an IPv4 socket");
            FUZZ_CHECK(has_sent[i], "sent to source %d, which sent nothing in this input", i);
            FUZZ_CHECK((size_t)n <= RNDZ_MAX_MSG, "sent %zd bytes", n);
            rndz_msg m;
            int rc = rndz_msg_decode(buf, (size_t)n, 1, &m);
            FUZZ_CHECK(rc == 0, "sent a datagram that is no Response: %s", rndz_err_name(rc));
            if (same_addr(i, from) && (m.cmd == RNDZ_RSP_PONG ||
                                       (m.cmd == RNDZ_RSP_REDIRECT && m.addr_len == 0)))
                FUZZ_CHECK((size_t)n <= req_len, "reply of %zd bytes to a %zu-byte request", n,
                           req_len);
        }
    }
    return got;
}

/* Collect `want` datagrams. Loopback delivery is normally done when sendmmsg returns, but on a
 * busy machine the kernel may finish it a little later (in ksoftirqd): wait up to a second. */
static unsigned drain(unsigned want, int from, size_t req_len, const bool *has_sent) {
    unsigned got = drain_once(0, from, req_len, has_sent);
    for (int waited = 0; got < want && waited < 1000; waited += 10)
        got += drain_once(10, from, req_len, has_sent);
    return got;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bool ready;
    if (!ready) setup(), ready = true;
    if (size < 1) return 0;
    rndz_server_options o;
    rndz_server_options_init(&o);
    o.listen_addr = "127.0.0.1:0";
    o.enable_tcp = 0;
    o.workers = 1;
    o.max_tcp_conns = 16; /* no TCP here; keeps the replay table small */
    o.max_peers = MAX_PEERS[data[0] & 3];
    o.udp_expiry_ms = EXPIRY_MS[(data[0] >> 2) & 3];
    bool secret = fuzz_server_config(&o, data[0]);
    rndz_server *srv;
    int rc = rndz_server_create(&o, &srv);
    FUZZ_CHECK(rc == 0, "rndz_server_create: %s", rndz_strerror(rc));

    uint64_t now = rndz__now_ms();
    rndz_server_stats st;
    rndz_server_stats_get(srv, &st);
    uint64_t tx = st.udp_tx, peers = st.udp_peers, registering = 0;
    bool has_sent[NSRC] = {false};
    uint8_t prev[RNDZ_MAX_MSG];
    size_t prev_len = 0;

    const uint8_t *p = data + 1, *end = data + size;
    while (p < end) {
        uint8_t ctl = *p++;
        uint8_t auth = p < end ? *p++ : 0;
        const uint8_t *q = memmem(p, (size_t)(end - p), SEP, sizeof SEP);
        const uint8_t *dend = q ? q : end;
        size_t len = (size_t)(dend - p);
        p = q ? q + sizeof SEP : end;
        int from = ctl & 7;
        now += STEP_MS[(ctl >> 3) & 7];
        if (ctl & 0x40) {
            rndz__server_udp_tick(srv->w[0], now);
            rndz_server_stats_get(srv, &st);
            peers = st.udp_peers; /* expiry may have removed some */
        }
        for (int i = 0; i < NSRC; i++) has_sent[i] = has_sent[i] || same_addr(i, from);
        if (len > RNDZ_MAX_MSG) continue; /* the socket reader drops it */
        uint8_t dg[RNDZ_MAX_MSG];
        bool authentic = false;
        if ((auth & 3) == 2) {
            memcpy(dg, prev, prev_len);
            len = prev_len;
        } else {
            memcpy(dg, dend - len, len);
            len = fuzz_sign(dg, len, auth, &authentic);
        }
        memcpy(prev, dg, len);
        prev_len = len;
        rndz_msg req;
        int dec = rndz_msg_decode(dg, len, 0, &req);
        if (dec == 0 && (req.cmd == RNDZ_REQ_PING || req.cmd == RNDZ_REQ_ISYNC)) registering++;
        /* Its own heap copy of exactly `len` bytes, so ASan sees any read past it. */
        uint8_t *heap = malloc(len ? len : 1);
        FUZZ_CHECK(heap != NULL, "malloc");
        if (len) memcpy(heap, dg, len);
        rndz__server_udp_handle(srv, heap, len, &src[from], now);
        free(heap);

        rndz_server_stats_get(srv, &st);
        uint64_t sent = st.udp_tx - tx;
        FUZZ_CHECK(sent <= 1, "one request, %llu datagrams sent", (unsigned long long)sent);
        FUZZ_CHECK(dec == 0 || sent == 0, "an undecodable datagram (%s) was answered",
                   rndz_err_name(dec));
        if (secret && !authentic) {
            FUZZ_CHECK(sent == 0, "a request not signed fresh by its id (auth mode %d%s) was "
                       "answered", auth & 3, auth & 4 ? ", other id" : "");
            FUZZ_CHECK(st.udp_peers == peers, "a request not signed fresh by its id changed "
                       "the registrations (%llu -> %llu)", (unsigned long long)peers,
                       (unsigned long long)st.udp_peers);
        }
        unsigned got = sent ? drain((unsigned)sent, from, len, has_sent) : 0;
        FUZZ_CHECK(got == sent, "udp_tx grew by %llu, %u datagrams arrived",
                   (unsigned long long)sent, got);
        tx = st.udp_tx;
        peers = st.udp_peers;
        FUZZ_CHECK(st.udp_peers <= registering, "udp_peers %llu after %llu registrations",
                   (unsigned long long)st.udp_peers, (unsigned long long)registering);
    }
    rndz_server_destroy(srv);
    return 0;
}
