/* nat.c: the NAT check (rndz.h, rndz_nat_check): how the NAT in front of us maps, allocates
 * and filters, from what rendezvous servers see (their Pong says the address they saw, ext.h
 * field 24, and names their other addresses, field 25), hairpinning, and whether the default
 * gateway speaks a port-mapping protocol.
 *
 * Every ask is a Ping with the query field (23) set: "tell me what you saw, do not register
 * me", resent every 200 ms, 4 times at most, until answered. Sends go in order, so a NAT that
 * allocates ports in sequence allocates them in the order of the asks. */
#include "client.h"
#include "nat.h"
#include "probe.h"

#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define RETRY_MS 200
#define TRIES 4
#define CHECK_CAP_MS 3000
#define FILTER_WAIT_MS 700
#define HAIRPIN_WAIT_MS 300
#define PMP_WAIT_MS 250
#define PMP_PORT 5351
#define ALLOC_SOCKETS 4 /* the first one and three more, for the allocation pattern */
#define FILTER_SOCK ALLOC_SOCKETS /* one more, that never wrote to the server's other address */
#define NSOCK (ALLOC_SOCKETS + 1)

typedef struct ask {
    int sock, dest;
    uint32_t query;
    uint64_t sent, next;
    int tries;
    bool done, other; /* answered; from another address than asked */
    struct sockaddr_storage seen, from;
    size_t nalt;
    char alt[RNDZ_MAX_ALT][RNDZ_ADDRSTRLEN];
    uint32_t rtt;
} ask;

typedef struct check {
    rndz__client c;
    int fd[NSOCK];
    struct sockaddr_storage local[NSOCK];
    size_t ndest;
    struct sockaddr_storage dest[RNDZ_NAT_MAX_DEST];
} check;

const char *rndz_nat_mapping_name(int m) {
    return m == RNDZ_NAT_ENDPOINT_INDEPENDENT ? "endpoint-independent"
           : m == RNDZ_NAT_ENDPOINT_DEPENDENT ? "endpoint-dependent" : "unknown";
}

const char *rndz_nat_allocation_name(int a) {
    return a == RNDZ_NAT_PORT_PRESERVING ? "preserving"
           : a == RNDZ_NAT_PORT_SEQUENTIAL ? "sequential"
           : a == RNDZ_NAT_PORT_RANDOM ? "random" : "unknown";
}

/* A Ping with the query field, signed when we have a credential (to any server address). */
static void send_ask(check *k, ask *a, uint64_t now) {
    rndz__ext e;
    memset(&e, 0, sizeof e);
    e.query = a->query;
    e.pad = RNDZ__Q_PAD;
    uint8_t buf[RNDZ_MAX_MSG];
    int n = rndz__client_request(&k->c, RNDZ_REQ_PING, NULL, 0, &e, false, NULL, buf, sizeof buf);
    const struct sockaddr_storage *to = &k->dest[a->dest];
    if (n > 0)
        sendto(k->fd[a->sock], buf, (size_t)n, MSG_DONTWAIT, (const struct sockaddr *)to,
               rndz__addr_len((const struct sockaddr *)to));
    if (!a->sent) a->sent = now;
    a->next = now + RETRY_MS;
    a->tries++;
}

/* A datagram on socket `s` from `from`: the Pong of which ask? */
static void on_answer(check *k, ask *asks, size_t n, int s, const uint8_t *buf, size_t len,
                      const struct sockaddr_storage *from, uint64_t now) {
    rndz_msg m;
    rndz__ext e;
    if (rndz_msg_decode(buf, len, 1, &m) || m.cmd != RNDZ_RSP_PONG) return;
    if (rndz__ext_decode(buf, len, &e) || !e.observed[0]) return;
    for (size_t i = 0; i < n; i++) {
        ask *a = &asks[i];
        if (a->done || a->sock != s) continue;
        bool same = rndz__addr_equal((const struct sockaddr *)from,
                                     (const struct sockaddr *)&k->dest[a->dest]);
        if (!same && !(a->query & RNDZ__Q_OTHER)) continue;
        if (rndz_addr_parse(e.observed, &a->seen, NULL)) return;
        rndz__addr_unmap(&a->seen);
        a->done = true;
        a->other = !same;
        a->from = *from;
        a->rtt = now > a->sent ? (uint32_t)(now - a->sent) : 1;
        a->nalt = e.nalt;
        memcpy(a->alt, e.alt, sizeof a->alt);
        return;
    }
}

/* Send every ask (in order) and resend until answered, out of tries, or `deadline`. */
static void run_asks(check *k, ask *asks, size_t n, uint64_t deadline) {
    uint8_t buf[RNDZ_MAX_MSG + 1];
    for (;;) {
        uint64_t now = rndz__now_ms(), next = deadline;
        bool open = false;
        for (size_t i = 0; i < n; i++) {
            ask *a = &asks[i];
            if (a->done || a->tries > TRIES) continue;
            if (now >= a->next) {
                if (a->tries == TRIES) {
                    a->tries++; /* the last one had its time */
                    continue;
                }
                send_ask(k, a, now);
            }
            open = true;
            if (a->next < next) next = a->next;
        }
        if (!open || now >= deadline) return;
        struct pollfd pf[NSOCK];
        for (int s = 0; s < NSOCK; s++) pf[s] = (struct pollfd){k->fd[s], POLLIN, 0};
        int pr = poll(pf, NSOCK, (int)(next > now ? next - now : 0));
        if (pr < 0 && errno != EINTR) return;
        for (int s = 0; s < NSOCK && pr > 0; s++) {
            if (!(pf[s].revents & POLLIN)) continue;
            for (int r = 0; r < 16; r++) {
                struct sockaddr_storage from;
                socklen_t fl = sizeof from;
                ssize_t got = recvfrom(k->fd[s], buf, sizeof buf, MSG_DONTWAIT,
                                       (struct sockaddr *)&from, &fl);
                if (got < 0) break;
                on_answer(k, asks, n, s, buf, (size_t)got, &from, rndz__now_ms());
            }
        }
    }
}

/* Add a destination (in the sockets' family) unless known or full. */
static void add_dest(check *k, const struct sockaddr_storage *d) {
    struct sockaddr_storage a = *d;
    rndz__addr_unmap(&a);
    if (k->c.local.ss_family == AF_INET6) rndz__addr_map(&a);
    else if (a.ss_family != AF_INET) return;
    for (size_t i = 0; i < k->ndest; i++)
        if (rndz__addr_equal((struct sockaddr *)&k->dest[i], (struct sockaddr *)&a)) return;
    if (k->ndest < RNDZ_NAT_MAX_DEST) k->dest[k->ndest++] = a;
}

/* Is `a` (without port) an address of this host? */
static bool ours(const struct sockaddr_storage *a) {
    struct sockaddr_storage b = *a;
    rndz__addr_unmap(&b);
    rndz__addr_set_port(&b, 0);
    int fd = socket(b.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    bool ok = bind(fd, (struct sockaddr *)&b, rndz__addr_len((struct sockaddr *)&b)) == 0;
    close(fd);
    return ok;
}

/* The allocation pattern of public ports `p` (in the order the NAT allocated them) for local
 * ports `l` of their sockets (first destination of each). */
int rndz__nat_classify(const uint16_t *p, size_t n, const uint16_t *firsts_public,
                       const uint16_t *firsts_local, size_t nfirst, int *step) {
    *step = 0;
    if (nfirst >= 2) {
        size_t kept = 0;
        for (size_t i = 0; i < nfirst; i++) kept += firsts_public[i] == firsts_local[i];
        if (kept == nfirst) return RNDZ_NAT_PORT_PRESERVING;
    }
    if (n < 3) return RNDZ_NAT_PORT_UNKNOWN;
    /* the step most gaps share */
    int best = 0, best_count = 0;
    for (size_t i = 1; i < n; i++) {
        int d = (int16_t)(uint16_t)(p[i] - p[i - 1]), count = 0;
        for (size_t j = 1; j < n; j++) count += (int16_t)(uint16_t)(p[j] - p[j - 1]) == d;
        if (count > best_count) best = d, best_count = count;
    }
    /* sequential: a small step (other traffic through the NAT may take a port in between:
     * three gaps in four are enough) */
    if (best >= 1 && best <= RNDZ__NAT_MAX_STEP && 4 * best_count >= 3 * (int)(n - 1)) {
        *step = best;
        return RNDZ_NAT_PORT_SEQUENTIAL;
    }
    return RNDZ_NAT_PORT_RANDOM;
}

bool rndz__nat_gateway(struct sockaddr_storage *gw) {
    FILE *f = fopen("/proc/net/route", "r");
    if (!f) return false;
    char line[256];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        char ifname[64];
        unsigned dst, g, flags;
        if (sscanf(line, "%63s %x %x %x", ifname, &dst, &g, &flags) == 4 && dst == 0 &&
            (flags & 0x2) && g) {
            memset(gw, 0, sizeof *gw);
            struct sockaddr_in *s = (struct sockaddr_in *)gw;
            s->sin_family = AF_INET;
            s->sin_port = htons(PMP_PORT);
            s->sin_addr.s_addr = g; /* the file holds it in network order */
            found = true;
        }
    }
    fclose(f);
    return found;
}

int rndz__nat_pmp_reply(const uint8_t *b, size_t n) {
    /* NAT-PMP: version 0, opcode 128 + 0, result, epoch, address (12 bytes) */
    if (n >= 8 && b[0] == 0 && b[1] == 128) return 1;
    /* PCP: version 2, R bit + opcode 0 (ANNOUNCE), 24-byte header at least */
    if (n >= 24 && b[0] == 2 && b[1] == 0x80) return 2;
    return 0;
}

/* Ask the default gateway in both protocols; which answered. */
static int port_mapping(void) {
    struct sockaddr_storage gw;
    if (!rndz__nat_gateway(&gw)) return -1;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int found = 0;
    if (connect(fd, (struct sockaddr *)&gw, sizeof(struct sockaddr_in)) == 0) {
        struct sockaddr_in me;
        socklen_t ml = sizeof me;
        getsockname(fd, (struct sockaddr *)&me, &ml);
        uint8_t pmp[2] = {0, 0}; /* NAT-PMP: external address request */
        uint8_t pcp[24] = {2, 0}; /* PCP ANNOUNCE: lifetime 0, our address (IPv4-mapped) */
        pcp[18] = pcp[19] = 0xff;
        memcpy(pcp + 20, &me.sin_addr, 4);
        send(fd, pmp, sizeof pmp, 0);
        send(fd, pcp, sizeof pcp, 0);
        uint64_t end = rndz__now_ms() + PMP_WAIT_MS;
        while (!found) {
            uint64_t now = rndz__now_ms();
            if (now >= end) break;
            struct pollfd pf = {fd, POLLIN, 0};
            if (poll(&pf, 1, (int)(end - now)) <= 0) continue;
            uint8_t b[1100];
            ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
            if (n > 0) found = rndz__nat_pmp_reply(b, (size_t)n);
        }
    }
    close(fd);
    return found;
}

/* Hairpinning: a datagram from another socket to our own public address `pub` reaches
 * socket fd? */
static int hairpin(check *k, int fd, const struct sockaddr_storage *pub) {
    struct sockaddr_storage to = *pub;
    if (k->c.local.ss_family == AF_INET6) rndz__addr_map(&to);
    int h = rndz__client_fresh(&k->c, SOCK_DGRAM);
    if (h < 0) return -1;
    uint64_t nonce = (uint64_t)rndz__random() << 32 | rndz__random();
    rndz__probe_send(h, RNDZ_PROBE, 0, nonce, &to);
    uint64_t end = rndz__now_ms() + HAIRPIN_WAIT_MS;
    int result = 0;
    while (!result) {
        uint64_t now = rndz__now_ms();
        if (now >= end) break;
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, (int)(end - now)) <= 0) continue;
        uint8_t b[RNDZ_MAX_MSG + 1];
        ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
        int type;
        uint32_t seq;
        uint64_t got;
        if (n > 0 && rndz__probe_decode(b, (size_t)n, &type, &seq, &got) && got == nonce)
            result = 1;
    }
    close(h);
    return result;
}

int rndz_nat_check(const rndz_client_options *o, unsigned flags, rndz_nat_report *out) {
    if (!o || !out) return -EINVAL;
    memset(out, 0, sizeof *out);
    out->hairpin = -1;
    out->port_mapping = -1;
    rndz_client_options opts = *o;
    if (!opts.id) opts.id = "rndz-nat-check";
    check *k = calloc(1, sizeof *k);
    if (!k) return -ENOMEM;
    for (int s = 0; s < NSOCK; s++) k->fd[s] = -1;
    int rc = rndz__client_init(&k->c, &opts);
    if (rc) goto done;
    /* socket 0 on the client's local address (its port, if one was given); the others on
     * fresh ports of the same address */
    for (int s = 0; s < NSOCK; s++) {
        rndz__sockopts so = k->c.so;
        so.reuse = false;
        k->fd[s] = rc = s ? rndz__client_fresh(&k->c, SOCK_DGRAM)
                          : rndz__sock_bind(SOCK_DGRAM, (struct sockaddr *)&k->c.local, &so);
        if (rc < 0) goto done;
        socklen_t ll = sizeof k->local[s];
        getsockname(k->fd[s], (struct sockaddr *)&k->local[s], &ll);
    }
    rc = 0;
    out->local = k->local[0];
    rndz__addr_unmap(&out->local);
    for (size_t i = 0; i < k->c.n_servers; i++) add_dest(k, &k->c.servers[i]);
    uint64_t cap = k->c.timeout_ms < CHECK_CAP_MS ? k->c.timeout_ms : CHECK_CAP_MS;
    uint64_t deadline = rndz__now_ms() + cap;

    /* 1. socket 0 asks every server given, then every other address they name */
    ask asks[RNDZ_NAT_MAX_DEST * ALLOC_SOCKETS + 1];
    memset(asks, 0, sizeof asks);
    size_t na = 0, given = k->ndest;
    for (size_t d = 0; d < given; d++)
        asks[na++] = (ask){.sock = 0, .dest = (int)d, .query = RNDZ__Q_OBSERVED | RNDZ__Q_NOREG};
    run_asks(k, asks, na, deadline);
    for (size_t i = 0; i < na; i++)
        for (size_t j = 0; asks[i].done && j < asks[i].nalt; j++) {
            struct sockaddr_storage a;
            if (rndz_addr_parse(asks[i].alt[j], &a, NULL) == 0) add_dest(k, &a);
        }
    for (size_t d = given; d < k->ndest; d++)
        asks[na++] = (ask){.sock = 0, .dest = (int)d, .query = RNDZ__Q_OBSERVED | RNDZ__Q_NOREG};
    if (na > given) run_asks(k, asks + given, na - given, rndz__now_ms() + cap);
    out->n_dest = k->ndest;
    size_t answered = 0;
    int first = -1;
    for (size_t i = 0; i < na; i++) {
        out->dest[asks[i].dest] = k->dest[asks[i].dest];
        rndz__addr_unmap(&out->dest[asks[i].dest]);
        if (!asks[i].done) continue;
        out->observed[asks[i].dest] = asks[i].seen;
        out->rtt_ms[asks[i].dest] = asks[i].rtt;
        answered++;
        if (first < 0) first = (int)i;
    }
    if (!answered) {
        rc = RNDZ_E_TIMEDOUT;
        goto done;
    }
    const struct sockaddr_storage *pub = &asks[first].seen;
    out->behind_nat = !ours(pub);

    /* 2. mapping: one public address for every destination, or one each */
    out->mapping = RNDZ_NAT_UNKNOWN;
    if (answered >= 2) {
        out->mapping = RNDZ_NAT_ENDPOINT_INDEPENDENT;
        for (size_t i = 0; i < na; i++)
            if (asks[i].done && !rndz__addr_equal((struct sockaddr *)&asks[i].seen,
                                                  (struct sockaddr *)pub))
                out->mapping = RNDZ_NAT_ENDPOINT_DEPENDENT;
    }
    uint16_t local0 = ntohs(rndz__addr_port(&k->local[0])); /* ports in host order below */
    if (out->mapping == RNDZ_NAT_ENDPOINT_INDEPENDENT && ntohs(rndz__addr_port(pub)) == local0)
        out->allocation = RNDZ_NAT_PORT_PRESERVING;

    /* 3. allocation: three more ports, each to two destinations, in order */
    if (out->mapping == RNDZ_NAT_ENDPOINT_DEPENDENT) {
        int d0 = -1, d1 = -1;
        for (size_t i = 0; i < na; i++)
            if (asks[i].done) {
                if (d0 < 0) d0 = asks[i].dest;
                else if (d1 < 0) d1 = asks[i].dest;
            }
        ask more[2 * (ALLOC_SOCKETS - 1)];
        memset(more, 0, sizeof more);
        size_t nm = 0;
        for (int s = 1; s < ALLOC_SOCKETS; s++) {
            more[nm++] = (ask){.sock = s, .dest = d0, .query = RNDZ__Q_OBSERVED | RNDZ__Q_NOREG};
            more[nm++] = (ask){.sock = s, .dest = d1, .query = RNDZ__Q_OBSERVED | RNDZ__Q_NOREG};
        }
        run_asks(k, more, nm, rndz__now_ms() + cap);
        uint16_t ports[2 + 2 * ALLOC_SOCKETS], fp[ALLOC_SOCKETS], fl[ALLOC_SOCKETS];
        size_t np = 0, nf = 0;
        for (size_t i = 0; i < na; i++)
            if (asks[i].done && (asks[i].dest == d0 || asks[i].dest == d1))
                ports[np++] = ntohs(rndz__addr_port(&asks[i].seen));
        fp[nf] = ntohs(rndz__addr_port(pub)), fl[nf++] = local0;
        for (size_t i = 0; i < nm; i++) {
            if (!more[i].done) continue;
            ports[np++] = ntohs(rndz__addr_port(&more[i].seen));
            if (more[i].dest == d0)
                fp[nf] = ntohs(rndz__addr_port(&more[i].seen)),
                fl[nf++] = ntohs(rndz__addr_port(&k->local[more[i].sock]));
        }
        out->allocation = rndz__nat_classify(ports, np, fp, fl, nf, &out->port_step);
    }

    /* 4. filtering: a Pong from the server's other address (if it has one), to a socket that
     * never wrote to that address (else the NAT lets it in as an answer) */
    for (size_t i = 0; i < na; i++) {
        if (!asks[i].done || !asks[i].nalt) continue;
        bool other = false;
        for (size_t j = 0; j < asks[i].nalt; j++) {
            struct sockaddr_storage a;
            if (rndz_addr_parse(asks[i].alt[j], &a, NULL) == 0 &&
                !rndz__addr_equal((struct sockaddr *)&a, (struct sockaddr *)&out->dest[asks[i].dest]))
                other = true;
        }
        if (!other) continue;
        ask f = {.sock = FILTER_SOCK, .dest = asks[i].dest,
                 .query = RNDZ__Q_OBSERVED | RNDZ__Q_NOREG | RNDZ__Q_OTHER, .tries = TRIES - 3};
        run_asks(k, &f, 1, rndz__now_ms() + FILTER_WAIT_MS);
        out->filtering = f.done ? (f.other ? RNDZ_NAT_ENDPOINT_INDEPENDENT : RNDZ_NAT_UNKNOWN)
                                : RNDZ_NAT_ENDPOINT_DEPENDENT;
        break;
    }

    /* 5. hairpinning, 6. port mapping */
    if (out->behind_nat && !(flags & RNDZ_NAT_NO_HAIRPIN)) out->hairpin = hairpin(k, k->fd[0], pub);
    if (!(flags & RNDZ_NAT_NO_PORT_MAPPING)) out->port_mapping = port_mapping();
done:
    for (int s = 0; s < NSOCK; s++)
        if (k->fd[s] >= 0) close(k->fd[s]);
    free(k);
    return rc;
}

