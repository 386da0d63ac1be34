/* fuzz_server_tcp.c: the TCP server's connections, frames and request handling (through the
 * protocol core, server_proto.c), fed byte streams on up to 8 connections.
 *
 * Built from the C sources: it calls the internal rndz__server_tcp_adopt (a socketpair end
 * taken as an accepted connection from a given address), rndz__server_tcp_input (bytes that
 * arrived on it, at a simulated clock) and rndz__server_tcp_tick (idle connections, freeing),
 * declared in Sources/CRndz/server.h. Each input gets a fresh server (TCP only, 127.0.0.1:0,
 * never started), so every input replays the same way on its own and leaks show up per input.
 *
 * Input: a config byte, then records, each 2 header bytes + data, separated by SEP (4 bytes).
 *   config bits 0-1: tcp_idle_ms default (30000), 1, 1000, 30000
 *          bit 4:    a secret (authenticated ids)
 *          bits 5-6: limits: default, tight (1/s, burst 1), off, max_id_len 4
 *   header byte 0 (ctl) bits 0-2: the connection (8 slots; a closed one is opened again, from
 *                                  one of 4 source addresses: slot % 4)
 *                       bits 3-5: advance the clock by 0 ms .. 60001 ms
 *                       bit 6:    run the tick (idle connections, freeing) first
 *   header byte 1 (auth) bit 3: the data is raw stream bytes (any framing, several frames,
 *                       partial ones, oversize lengths); else it is one message body, signed
 *                       per bits 0-2 as in fuzz_server_udp.c, then framed
 *                       bits 0-1: 0 as it is; 1 signed fresh by its id; 2 the previous record's
 *                       body again (a replay); 3 signed with a stale ts. bit 2: another id's
 *                       credential
 * Properties, after every record:
 *   - every frame the server sent decodes as a Response with no id (TCP responses carry
 *     none), of at most RNDZ_MAX_MSG bytes;
 *   - a Bye ends its connection; a request over its source's rate is answered with nothing;
 *   - a record makes the server send at most one frame per frame it completed (a shadow
 *     framer per connection frames our bytes as the server does);
 *   - an oversize frame length ends the connection, and so does an undecodable body;
 *   - with a secret, a framed request not freshly signed with its own id's credential is
 *     answered with nothing, registers nothing, and ends its connection;
 *   - tcp_peers never exceeds tcp_conns.
 * At the end the server is destroyed (LeakSanitizer checks each input). */
#include "server.h"

#include "fuzz_server.h"

#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const uint8_t SEP[4] = {0xff, 0xfe, 0xfd, 0xfc};
static const uint32_t STEP_MS[8] = {0, 1, 10, 1000, 10000, 30000, 59999, 60001};
static const uint32_t IDLE_MS[4] = {0, 1, 1000, 30000};
static const char *const SRC[4] = {"127.0.0.2:4000", "127.0.0.3:4001", "[2001:db8::7]:4002",
                                   "127.0.0.2:4003"};
#define NCONN 8

typedef struct slot {
    void *conn;        /* the server's connection, NULL: closed */
    int fd;            /* our end, -1: none */
    rndz_framer f;     /* frames the server sent us */
    rndz_framer shadow; /* the bytes we sent it, framed as the server frames them */
} slot;

/* Feed what we send on a connection to its shadow framer: the frames it completes; *over: an
 * oversize length came after them (the server ends the connection there). */
static unsigned shadow_frames(slot *sl, const uint8_t *p, size_t n, bool *over) {
    unsigned k = 0;
    size_t off = 0;
    *over = false;
    while (off < n) {
        int used = rndz_framer_feed(&sl->shadow, p + off, n - off);
        if (used < 0) {
            *over = true;
            return k;
        }
        off += (size_t)used;
        const uint8_t *b;
        size_t bl;
        while (rndz_framer_next(&sl->shadow, &b, &bl) == 1) k++;
    }
    return k;
}

static unsigned drain(slot *sl) {
    if (sl->fd < 0) return 0;
    unsigned got = 0;
    uint8_t buf[4096];
    for (;;) {
        ssize_t n = recv(sl->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0) break;
        size_t off = 0;
        while (off < (size_t)n) {
            int used = rndz_framer_feed(&sl->f, buf + off, (size_t)n - off);
            FUZZ_CHECK(used >= 0, "the server sent a malformed frame: %s", rndz_err_name(used));
            off += (size_t)used;
            const uint8_t *body;
            size_t blen;
            while (rndz_framer_next(&sl->f, &body, &blen) == 1) {
                got++;
                FUZZ_CHECK(blen <= RNDZ_MAX_MSG, "sent %zu bytes", blen);
                rndz_msg m;
                int rc = rndz_msg_decode(body, blen, 1, &m);
                FUZZ_CHECK(rc == 0, "sent a frame that is no Response: %s", rndz_err_name(rc));
                FUZZ_CHECK(m.id_len == 0, "a TCP response carries an id");
            }
        }
    }
    return got;
}

static void slot_close(slot *sl) {
    if (sl->fd >= 0) close(sl->fd);
    sl->fd = -1;
    sl->conn = NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bool ready;
    if (!ready) rndz_set_log(fuzz_quiet_log, NULL, RNDZ_LOG_TRACE), ready = true;
    if (size < 1) return 0;
    rndz_server_options o;
    rndz_server_options_init(&o);
    o.listen_addr = "127.0.0.1:0";
    o.enable_udp = 0;
    o.workers = 1;
    o.max_peers = 16; /* no UDP here; keeps the replay table small */
    o.max_tcp_conns = 64;
    o.tcp_idle_ms = IDLE_MS[data[0] & 3];
    bool secret = fuzz_server_config(&o, data[0]);
    rndz_server *srv;
    int rc = rndz_server_create(&o, &srv);
    FUZZ_CHECK(rc == 0, "rndz_server_create: %s", rndz_strerror(rc));
    slot sl[NCONN];
    struct sockaddr_storage src[4];
    for (int i = 0; i < 4; i++) FUZZ_CHECK(rndz_addr_parse(SRC[i], &src[i], NULL) == 0, "src");
    for (int i = 0; i < NCONN; i++) sl[i] = (slot){.conn = NULL, .fd = -1};

    uint64_t now = rndz__now_ms();
    uint8_t prev[RNDZ_MAX_MSG];
    size_t prev_len = 0;
    /* the previous body was signed fresh, and the server did not see it as a request of its
     * own (it went after a partial frame): sent again, it is no replay */
    bool prev_fresh = false;
    const uint8_t *p = data + 1, *end = data + size;
    while (p < end) {
        uint8_t ctl = *p++;
        uint8_t auth = p < end ? *p++ : 0;
        const uint8_t *q = memmem(p, (size_t)(end - p), SEP, sizeof SEP);
        const uint8_t *dend = q ? q : end;
        size_t len = (size_t)(dend - p);
        const uint8_t *dat = p;
        p = q ? q + sizeof SEP : end;
        int i = ctl & 7;
        now += STEP_MS[(ctl >> 3) & 7];
        if (ctl & 0x40) {
            rndz__server_tcp_tick(srv, now);
            /* what went idle is closed: our ends see EOF */
            for (int k = 0; k < NCONN; k++) {
                if (sl[k].fd < 0) continue;
                drain(&sl[k]);
                uint8_t b;
                if (recv(sl[k].fd, &b, 1, MSG_DONTWAIT | MSG_PEEK) == 0) slot_close(&sl[k]);
            }
        }
        if (!sl[i].conn) {
            slot_close(&sl[i]);
            int sv[2];
            FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0,
                       "socketpair");
            sl[i].conn = rndz__server_tcp_adopt(srv, sv[0], &src[i % 4], now);
            if (!sl[i].conn) close(sv[0]);
            sl[i].fd = sv[1];
            rndz_framer_init(&sl[i].f);
            rndz_framer_init(&sl[i].shadow);
            if (!sl[i].conn) {
                slot_close(&sl[i]);
                continue;
            }
        }
        uint8_t buf[2 + RNDZ_MAX_MSG + 4096];
        size_t n;
        bool authentic = false, framed = !(auth & 8);
        /* a framed request is one frame of its own only if no partial frame came before */
        bool clean = sl[i].shadow.have == 0;
        rndz_server_stats before, after;
        rndz_server_stats_get(srv, &before);
        if (!framed) {
            n = len < sizeof buf ? len : sizeof buf;
            memcpy(buf, dat, n);
        } else {
            if (len > RNDZ_MAX_MSG) continue;
            uint8_t body[RNDZ_MAX_MSG];
            if ((auth & 3) == 2) {
                memcpy(body, prev, prev_len);
                len = prev_len;
                authentic = prev_fresh;
            } else {
                memcpy(body, dat, len);
                len = fuzz_sign(body, len, auth, &authentic);
            }
            memcpy(prev, body, len);
            prev_len = len;
            prev_fresh = authentic && !clean;
            memcpy(buf + 2, body, len);
            n = (size_t)rndz__frame_seal(buf, len);
        }
        bool over;
        unsigned frames = shadow_frames(&sl[i], buf, n, &over);
        /* Its own heap copy of exactly n bytes, so ASan sees any read past it. */
        uint8_t *heap = malloc(n ? n : 1);
        FUZZ_CHECK(heap != NULL, "malloc");
        if (n) memcpy(heap, buf, n);
        bool open = rndz__server_tcp_input(sl[i].conn, heap, n, now);
        free(heap);
        rndz_server_stats_get(srv, &after);
        unsigned sent = 0;
        for (int k = 0; k < NCONN; k++) sent += drain(&sl[k]);
        if (over) FUZZ_CHECK(!open, "an oversize frame left its connection open");
        FUZZ_CHECK(sent <= frames, "%u frames fed, %u sent", frames, sent);
        framed = framed && clean;
        rndz_msg m;
        int dec = framed ? rndz_msg_decode(buf + 2, n - 2, 0, &m) : 0;
        if (framed && dec) FUZZ_CHECK(!open, "an undecodable request left its connection open");
        if (framed && !dec && m.cmd == RNDZ_REQ_BYE) FUZZ_CHECK(!open, "a Bye left its connection open");
        if (framed && after.sync_limited > before.sync_limited)
            FUZZ_CHECK(sent == 0, "a request over its source's rate was answered");
        if (framed && secret && !authentic) {
            FUZZ_CHECK(sent == 0, "a request not signed fresh by its id was answered");
            FUZZ_CHECK(!open, "a request not signed fresh by its id left its connection open");
            FUZZ_CHECK(after.tcp_peers <= before.tcp_peers, "it registered an id");
        }
        FUZZ_CHECK(after.tcp_peers <= after.tcp_conns, "tcp_peers %llu > tcp_conns %llu",
                   (unsigned long long)after.tcp_peers, (unsigned long long)after.tcp_conns);
        if (!open) {
            sl[i].conn = NULL; /* freed at the next tick; our end sees EOF */
            slot_close(&sl[i]);
        }
    }
    for (int k = 0; k < NCONN; k++) slot_close(&sl[k]);
    rndz_server_destroy(srv);
    return 0;
}
