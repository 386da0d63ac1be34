/* tcp_connect.c: the TCP connector (BRIEF, "Clients"; the listener is tcp_listen.c).
 *
 * Connect to a server, Isync (with its RTT to the server, for the listener's plan,
 * synplan.h), read the Redirect, then connect from the same local port to the address given
 * and to the listener's advertised ones, retrying until the deadline. */
#include "client.h"
#include "srvset.h"
#include "ifaddr.h"
#include "relay_peer.h"

#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* After a refused connect (the peer's port not open toward us yet), try again this soon. */
#define PEER_RETRY_MS 200
/* The listener's advertised addresses are tried this long after the one the server saw (as
 * happy eyeballs does, RFC 8305): long enough for a working path to answer, short enough
 * that peers behind one NAT (where the first cannot work) connect quickly. */
#define CANDIDATE_DELAY_MS 250

/* Wait for a non-blocking connect to finish by `deadline`. 0, or a negative error. */
static int wait_connected(int fd, uint64_t deadline) {
    for (;;) {
        uint64_t now = rndz__now_ms();
        if (now >= deadline) return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int pr = poll(&p, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR) continue;
        if (pr < 0) return -errno;
        if (pr == 0) return -ETIMEDOUT;
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        return -err;
    }
}

static int connect_by(rndz__client *c, const struct sockaddr_storage *to, uint64_t deadline) {
    int fd = rndz__client_bind(c, SOCK_STREAM);
    if (fd < 0) return fd;
    int rc = 0;
    if (connect(fd, (const struct sockaddr *)to, rndz__addr_len((const struct sockaddr *)to)) < 0)
        rc = errno == EINPROGRESS ? wait_connected(fd, deadline) : -errno;
    if (rc) {
        close(fd);
        return rc;
    }
    return fd;
}

/* Ask one server where `target` is. 1 with *peer filled, 0 if the server does not know it
 * (2: but has it registered over UDP), or a negative error. *srv_fd keeps the server connection open (the caller closes it). */
static int ask_server(rndz__client *c, size_t i, const char *target, size_t tlen,
                      uint64_t deadline, const rndz__ext *mine, struct sockaddr_storage *peer,
                      rndz__ext *theirs, int *srv_fd) {
    int fd = connect_by(c, &c->servers[i], deadline);
    if (fd < 0) return fd == -ETIMEDOUT ? RNDZ_E_TIMEDOUT : fd;
    *srv_fd = fd;
    /* Our RTT to the server (the handshake's, by the kernel): the listener times its
     * coordinated SYN with it (synplan.h). */
    rndz__ext with_rtt = *mine;
    with_rtt.rtt_ms = rndz__sock_tcp_rtt_ms(fd);
    int rc = rndz__client_send_frame(fd, c, RNDZ_REQ_ISYNC, target, tlen, &with_rtt);
    if (rc) return rc;
    rndz_framer f;
    rndz_framer_init(&f);
    uint8_t buf[512];
    for (;;) {
        uint64_t now = rndz__now_ms();
        if (now >= deadline) return RNDZ_E_TIMEDOUT;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR) continue;
        if (pr < 0) return -errno;
        if (pr == 0) return RNDZ_E_TIMEDOUT;
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0) return -ECONNRESET;
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            return -errno;
        }
        size_t off = 0;
        while (off < (size_t)n) {
            int used = rndz_framer_feed(&f, buf + off, (size_t)n - off);
            if (used < 0) return used;
            off += (size_t)used;
            const uint8_t *body;
            size_t blen;
            while (rndz_framer_next(&f, &body, &blen) == 1) {
                rndz_msg m;
                if (rndz_msg_decode(body, blen, 1, &m) || m.cmd != RNDZ_RSP_REDIRECT ||
                    m.peer_id_len != tlen || memcmp(m.peer_id, target, tlen) != 0)
                    continue;
                if (m.addr_len == 0)
                    return rndz__ext_decode(body, blen, theirs) == 0 && theirs->elsewhere ? 2 : 0;
                rc = rndz__client_peer_addr(c, m.addr, m.addr_len, peer);
                if (rndz__ext_decode(body, blen, theirs) || !theirs->has_nonce ||
                    theirs->nonce != mine->nonce)
                    memset(theirs, 0, sizeof *theirs); /* a v1 listener or server */
                return rc ? rc : 1;
            }
        }
    }
}

/* Connect from our port to every address; the first that completes wins. The address the
 * server saw goes first; the others (the listener's LAN and IPv6 addresses) join after
 * CANDIDATE_DELAY_MS, so where the first works at once the listener does not also accept a
 * second connection that we would drop. A refused or failed attempt is made again after
 * PEER_RETRY_MS (the peer's SYN may not have left yet, or an RST raced it), until the
 * deadline. With a relay offered (rp->role), its connection starts at relay_at alongside:
 * whichever completes first wins (the relay's once the listener joined too: then "use" goes
 * to the listener, relay_peer.h). Returns the fd and the winner's index (n: the relay). */
static int connect_any(rndz__client *c, const struct sockaddr_storage *to, size_t n,
                       uint64_t deadline, size_t *winner, int *attempts, rndz__rpeer *rp,
                       uint64_t relay_at) {
    bool relay_connected = false;
    int fds[RNDZ_MAX_CANDS + 1];
    uint64_t retry_at[RNDZ_MAX_CANDS + 1];
    uint64_t t0 = rndz__now_ms();
    for (size_t i = 0; i < n; i++) fds[i] = -1, retry_at[i] = i ? t0 + CANDIDATE_DELAY_MS : 0;
    int result = RNDZ_E_PEERFAIL;
    for (;;) {
        uint64_t now = rndz__now_ms();
        if (now >= deadline) break;
        struct pollfd pf[RNDZ_MAX_CANDS + 2];
        uint64_t wake = deadline;
        for (size_t i = 0; i < n; i++) {
            if (fds[i] < 0 && now >= retry_at[i]) {
                int fd = rndz__client_bind(c, SOCK_STREAM);
                if (fd < 0) {
                    result = fd;
                    goto out; /* closes what is open */
                }
                (*attempts)++;
                if (connect(fd, (const struct sockaddr *)&to[i],
                            rndz__addr_len((const struct sockaddr *)&to[i])) < 0 &&
                    errno != EINPROGRESS) {
                    /* no route to it from here: this candidate is out for good */
                    bool hopeless = errno == ENETUNREACH || errno == EHOSTUNREACH ||
                                    errno == EAFNOSUPPORT;
                    close(fd);
                    retry_at[i] = hopeless ? UINT64_MAX : now + PEER_RETRY_MS;
                } else {
                    fds[i] = fd;
                }
            }
            if (fds[i] < 0 && retry_at[i] < wake) wake = retry_at[i];
            pf[i] = (struct pollfd){.fd = fds[i], .events = POLLOUT}; /* -1: ignored */
        }
        if (rp->role && rp->fd < 0 && now >= relay_at) {
            int rc = rndz__rpeer_open(rp, c, now);
            if (rc) {
                RNDZ_LOG(RNDZ_LOG_WARN, "tcp connect: relay: %s", rndz_strerror(rc));
                rndz__rpeer_close(rp);
                rp->role = 0;
            } else {
                RNDZ_LOG(RNDZ_LOG_INFO, "tcp connect: no direct connection yet; trying the relay");
            }
        }
        if (rp->role && rp->fd < 0 && relay_at < wake) wake = relay_at;
        pf[n] = (struct pollfd){.fd = rp->fd, .events = relay_connected ? POLLIN : POLLOUT};
        int pr = poll(pf, (nfds_t)n + 1, (int)(wake > now ? wake - now : 0));
        if (pr < 0 && errno != EINTR) {
            result = -errno;
            break;
        }
        for (size_t i = 0; i < n && pr > 0; i++) {
            if (fds[i] < 0 || !pf[i].revents) continue;
            int err = 0;
            socklen_t el = sizeof err;
            getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &el);
            if (err == 0) {
                *winner = i;
                int fd = fds[i];
                for (size_t k = 0; k < n; k++)
                    if (k != i && fds[k] >= 0) close(fds[k]);
                rndz__rpeer_close(rp); /* the relay drops the listener's side too */
                return fd;
            }
            char text[RNDZ_ADDRSTRLEN];
            rndz_addr_format((const struct sockaddr *)&to[i], text, sizeof text);
            RNDZ_LOG(RNDZ_LOG_DEBUG, "tcp connect: %s: %s", text, rndz_strerror(-err));
            close(fds[i]);
            fds[i] = -1;
            retry_at[i] = rndz__now_ms() + PEER_RETRY_MS;
        }
        /* the relay after the direct attempts: a direct connection that completed in the
         * same round wins before "use" goes to the listener */
        if (pr > 0 && rp->fd >= 0 && pf[n].revents) {
            int rc = relay_connected ? rndz__rpeer_readable(rp, rndz__now_ms())
                                     : rndz__rpeer_connected(rp);
            relay_connected = true;
            if (rc) {
                RNDZ_LOG(RNDZ_LOG_DEBUG, "tcp connect: relay: %s", rndz_strerror(rc));
                rndz__rpeer_close(rp);
                rp->role = 0;
            } else if (rp->done) { /* both joined, "use" sent: the relay it is */
                for (size_t k = 0; k < n; k++)
                    if (fds[k] >= 0) close(fds[k]);
                *winner = n;
                return rndz__rpeer_take(rp, c);
            }
        }
    }
out:
    for (size_t i = 0; i < n; i++)
        if (fds[i] >= 0) close(fds[i]);
    rndz__rpeer_close(rp);
    return result;
}

int rndz_tcp_connect(const rndz_client_options *o, const char *target,
                     struct sockaddr_storage *peer_out, socklen_t *peer_len) {
    return rndz__client_connect_plain(rndz_tcp_connect_info, o, target, peer_out, peer_len);
}

int rndz_tcp_connect_info(const rndz_client_options *o, const char *target,
                          rndz_peer_info *info) {
    if (info) memset(info, 0, sizeof *info);
    rndz__client c;
    int rc = rndz__client_init(&c, o);
    if (rc) return rc;
    size_t tlen;
    if (!target || (tlen = strlen(target)) == 0 || tlen > RNDZ_MAX_ID) return RNDZ_E_BADID;
    uint64_t start = rndz__now_ms(), deadline = start + c.timeout_ms;
    struct sockaddr_storage to[RNDZ_MAX_CANDS + 1];
    rndz__ext mine, theirs;
    memset(&mine, 0, sizeof mine);
    memset(&theirs, 0, sizeof theirs);
    mine.has_nonce = true;
    mine.nonce = (uint64_t)rndz__random() << 32 | rndz__random();
    mine.relay = c.relay == RNDZ_RELAY_NEVER ? 0 : c.relay == RNDZ_RELAY_ONLY ? 2 : 1;
    /* Our candidates carry our port: fix it now (binding a first socket does). */
    int first = rndz__client_bind(&c, SOCK_STREAM);
    if (first < 0) return first;
    close(first);
    rndz__local_cands(&c.local, c.local.ss_family == AF_INET6, &mine);
    int srv_fd = -1, found = 0;
    size_t found_at = 0;
    size_t not_found = 0, refused = 0, elsewhere = 0;
    rc = RNDZ_E_TIMEDOUT;
    /* Server sets (srvset.h): the target's servers in its ranking, until one knows it or
     * per_id said they do not (a silent or refusing one passes to the next). */
    uint8_t trank[RNDZ_MAX_SERVERS];
    rndz__hrw_rank(target, tlen, (const char (*)[RNDZ_ADDRSTRLEN])c.server_text, c.n_servers, trank);
    for (size_t r = 0; r < c.n_servers && !found && not_found < c.per_id; r++) {
        size_t i = trank[r];
        if (srv_fd >= 0) close(srv_fd);
        srv_fd = -1;
        /* Each server likely to be asked (those still needed, and one stand-in) gets an equal
         * share of the time left, so one that accepts and never answers, or drops our SYNs,
         * cannot keep the next of the ranking from being asked. */
        uint64_t now = rndz__now_ms();
        size_t need = c.per_id - not_found + 1;
        size_t left = c.n_servers - r < need ? c.n_servers - r : need;
        uint64_t share = now < deadline ? (deadline - now) / left : 0;
        int r2 = ask_server(&c, i, target, tlen, now + share, &mine, &to[0], &theirs, &srv_fd);
        if (r2 == 1) found = 1, found_at = i;
        else if (r2 == 0 || r2 == 2) not_found++, elsewhere += r2 == 2;
        else {
            if (r2 == -ECONNREFUSED) refused++;
            RNDZ_LOG(RNDZ_LOG_DEBUG, "tcp connect: server %s: %s", c.server_text[i],
                     rndz_strerror(r2));
            rc = r2;
        }
    }
    if (!found) {
        if (srv_fd >= 0) close(srv_fd);
        if (not_found >= c.per_id) return elsewhere ? RNDZ_E_TRANSPORT : RNDZ_E_NOTFOUND;
        /* every server refused the connection: say so (nothing listens on that TCP port),
         * rather than that nobody answered */
        if (refused == c.n_servers) return -ECONNREFUSED;
        return rc == RNDZ_E_TIMEDOUT || rc == -ECONNREFUSED ? RNDZ_E_TIMEDOUT : rc;
    }
    /* The address the server saw, then the listener's own (LAN, IPv6) when it sent them. */
    size_t n = 1;
    /* TCP has no probes to prove a path before use, so a private address is tried only when
     * it is on one of our own subnets (a peer behind the same NAT): elsewhere a connect to it
     * can reach something else entirely. */
    for (size_t k = 0; k < theirs.ncands && n < RNDZ_ARRAY_LEN(to); k++)
        if (rndz__client_peer_addr(&c, theirs.cands[k], strlen(theirs.cands[k]), &to[n]) == 0 &&
            !rndz__addr_equal((struct sockaddr *)&to[n], (struct sockaddr *)&to[0]) &&
            (!rndz__addr_is_private(&to[n]) || rndz__addr_on_local_subnet(&to[n])))
            n++;
    /* The relay, when the server offered one (both asked): alongside the direct attempts
     * from relay_after_ms on, or at once if either side said a direct path is impossible
     * (then no direct attempt is made). */
    rndz__rpeer rp;
    uint64_t relay_at = UINT64_MAX;
    if (rndz__rpeer_init(&rp, &c, &theirs, &c.servers[found_at], RNDZ_RELAY_ROLE_CONNECTOR,
                         SOCK_STREAM)) {
        bool at_once = c.relay == RNDZ_RELAY_ONLY || theirs.relay == 2;
        relay_at = at_once ? rndz__now_ms() : rndz__now_ms() + c.relay_after_ms;
        if (at_once) n = 0;
    } else {
        rp.role = 0;
    }
    size_t winner = 0;
    int attempts = 0;
    int fd = connect_any(&c, to, n, deadline, &winner, &attempts, &rp, relay_at);
    close(srv_fd);
    if (fd < 0) return fd == RNDZ_E_PEERFAIL || fd == -ETIMEDOUT ? RNDZ_E_PEERFAIL : fd;
    rndz__sock_set_nonblock(fd, false);
    rndz__client_handover(&c, fd);
    uint64_t elapsed = rndz__now_ms() - start;
    uint32_t rtt_ms = rndz__sock_tcp_rtt_ms(fd); /* the kernel's, after the handshake */
    bool relayed = winner == n;
    const struct sockaddr_storage *via = relayed ? &rp.addr : &to[winner];
    if (info) {
        info->addr = *via;
        rndz__addr_unmap(&info->addr);
        info->rtt_ms = rtt_ms;
        info->elapsed_ms = elapsed > UINT32_MAX ? UINT32_MAX : (uint32_t)elapsed;
        info->verified = 1;
        info->relayed = relayed;
        info->lan = !relayed && rndz__addr_is_private(&info->addr);
        info->advertised = !relayed && winner > 0;
    }
    char text[RNDZ_ADDRSTRLEN];
    rndz_addr_format((const struct sockaddr *)via, text, sizeof text);
    RNDZ_LOG(RNDZ_LOG_INFO, "tcp connect: %s is at %s%s%s (after %llu ms, rtt %u ms, %d attempt%s)",
             target, relayed ? "relay " : "", text,
             !relayed && winner ? ", an address it advertised" : "", (unsigned long long)elapsed,
             rtt_ms, attempts, attempts == 1 ? "" : "s");
    return fd;
}
