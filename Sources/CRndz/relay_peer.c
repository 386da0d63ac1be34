/* relay_peer.c: see relay_peer.h. */
#include "relay_peer.h"
#include "probe.h"

#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

bool rndz__rpeer_init(rndz__rpeer *r, const rndz__client *c, const rndz__ext *e,
                      const struct sockaddr_storage *server, int role, int socktype) {
    memset(r, 0, sizeof *r);
    r->fd = -1;
    if (c->relay == RNDZ_RELAY_NEVER || !e->has_token || !e->relay_addr[0] || !e->has_nonce)
        return false;
    struct sockaddr_storage a;
    socklen_t al;
    if (rndz_addr_parse(e->relay_addr, &a, &al)) return false;
    if (rndz__addr_is_any(&a)) {
        uint16_t port = rndz__addr_port(&a);
        a = *server;
        rndz__addr_set_port(&a, port);
    }
    /* in the family of our sockets (a v4 relay for a dual-stack client: mapped) */
    rndz__addr_unmap(&a);
    if (c->local.ss_family == AF_INET6) rndz__addr_map(&a);
    else if (a.ss_family != AF_INET) return false;
    r->addr = a;
    r->role = role;
    r->socktype = socktype;
    r->nonce = e->nonce;
    memcpy(r->token, e->token, sizeof r->token);
    return true;
}

static void send_join(rndz__rpeer *r) {
    uint8_t b[RNDZ_RELAY_JOIN_LEN];
    rndz__relay_encode(b, RNDZ_RELAY_JOIN, r->role, 0, r->token);
    send(r->fd, b, sizeof b, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static void send_ctl(rndz__rpeer *r, int type) {
    uint8_t b[RNDZ_RELAY_CTL_LEN];
    rndz__relay_encode(b, type, 0, r->nonce, NULL);
    send(r->fd, b, sizeof b, MSG_DONTWAIT | MSG_NOSIGNAL);
}

int rndz__rpeer_open(rndz__rpeer *r, const rndz__client *c, uint64_t now) {
    /* our local address with any port: the relay path needs no hole of its own */
    int fd = rndz__client_fresh(c, r->socktype);
    if (fd < 0) return fd;
    r->fd = fd;
    int rc = connect(fd, (struct sockaddr *)&r->addr, rndz__addr_len((struct sockaddr *)&r->addr));
    if (rc < 0 && !(r->socktype == SOCK_STREAM && errno == EINPROGRESS)) return -errno;
    r->next_send = now;
    r->wait_ms = RNDZ_RELAY_FIRST_RETRY_MS;
    if (r->socktype == SOCK_DGRAM) rndz__rpeer_tick(r, now);
    return 0;
}

int rndz__rpeer_connected(rndz__rpeer *r) {
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) return -errno;
    if (err) return -err;
    send_join(r); /* 44 bytes into a fresh socket's buffer: it goes whole */
    return 0;
}

uint64_t rndz__rpeer_tick(rndz__rpeer *r, uint64_t now) {
    if (r->fd < 0 || r->socktype != SOCK_DGRAM || r->done) return UINT64_MAX;
    bool using = r->state == RNDZ_RELAY_READY;
    if (using && r->role == RNDZ_RELAY_ROLE_LISTENER) return UINT64_MAX; /* waits for "use" */
    if (now >= r->next_send) {
        if (using) send_ctl(r, RNDZ_RELAY_USE);
        else send_join(r);
        if (!r->sent_at) r->sent_at = now;
        r->next_send = now + r->wait_ms;
        r->wait_ms = r->wait_ms * 2 < RNDZ_RELAY_RETRY_CAP_MS ? r->wait_ms * 2
                                                               : RNDZ_RELAY_RETRY_CAP_MS;
    }
    return r->next_send;
}

/* A state, "use" or "ack" for our session, as the relay or the peer sent it. */
static void on_ctl(rndz__rpeer *r, int type, int arg, uint64_t nonce, uint64_t now) {
    if (type == RNDZ_RELAY_STATE && nonce == r->nonce && arg > r->state) {
        r->state = arg;
        if (arg == RNDZ_RELAY_READY && r->role == RNDZ_RELAY_ROLE_CONNECTOR) {
            /* both joined: "use" now, timed from here */
            r->wait_ms = RNDZ_RELAY_FIRST_RETRY_MS;
            r->next_send = now;
            r->sent_at = 0;
            if (r->socktype == SOCK_STREAM) {
                send_ctl(r, RNDZ_RELAY_USE); /* reliable: once */
                r->done = true;
            } else {
                rndz__rpeer_tick(r, now);
            }
        }
    } else if (type == RNDZ_RELAY_USE && r->role == RNDZ_RELAY_ROLE_LISTENER &&
               nonce == r->nonce) {
        r->state = RNDZ_RELAY_READY; /* the relay forwarded it: both are in, even if our
                                      * "ready" was lost */
        /* the socket is the application's right after: no later "use" gets an answer, so
         * the ack goes three times (as the connector's confirm of a direct path) */
        if (r->socktype == SOCK_DGRAM)
            for (int k = 0; k < 3; k++) send_ctl(r, RNDZ_RELAY_USE_ACK);
        r->done = true;
    } else if (type == RNDZ_RELAY_USE_ACK && r->role == RNDZ_RELAY_ROLE_CONNECTOR &&
               nonce == r->nonce && r->state == RNDZ_RELAY_READY && !r->done) {
        r->done = true;
        r->rtt_ms = r->sent_at && now > r->sent_at ? (uint32_t)(now - r->sent_at) : 1;
    }
}

int rndz__rpeer_readable(rndz__rpeer *r, uint64_t now) {
    uint8_t b[RNDZ_RELAY_JOIN_LEN + 1];
    int arg;
    uint64_t nonce;
    const uint8_t *tok;
    if (r->socktype == SOCK_STREAM) {
        /* exactly one 20-byte message at a time, never a byte of the application's */
        ssize_t n = recv(r->fd, b, RNDZ_RELAY_CTL_LEN, MSG_DONTWAIT | MSG_PEEK);
        if (n == 0) return RNDZ_E_PEERFAIL;
        if (n < 0) return errno == EAGAIN || errno == EINTR ? 0 : -errno;
        if (n < RNDZ_RELAY_CTL_LEN) return 0;
        int type = rndz__relay_decode(b, (size_t)n, &arg, &nonce, &tok);
        if (!type) return RNDZ_E_PEERFAIL;
        if (recv(r->fd, b, RNDZ_RELAY_CTL_LEN, MSG_DONTWAIT) != RNDZ_RELAY_CTL_LEN)
            return RNDZ_E_PEERFAIL;
        on_ctl(r, type, arg, nonce, now);
        return 0;
    }
    for (int i = 0; i < 16 && !r->done; i++) {
        ssize_t n = recv(r->fd, b, sizeof b, MSG_DONTWAIT | MSG_PEEK);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return 0;
            if (errno == ECONNREFUSED) continue; /* an ICMP error: the join is resent */
            return -errno;
        }
        int type = rndz__relay_decode(b, (size_t)n, &arg, &nonce, &tok);
        if (!type && r->state == RNDZ_RELAY_READY && r->role == RNDZ_RELAY_ROLE_CONNECTOR) {
            /* the application's first datagram: the listener took the path, so its "ack"
             * was lost; the datagram stays queued for the application */
            r->done = true;
            r->rtt_ms = r->sent_at && now > r->sent_at ? (uint32_t)(now - r->sent_at) : 1;
            return 0;
        }
        recv(r->fd, b, sizeof b, MSG_DONTWAIT);
        if (type) on_ctl(r, type, arg, nonce, now);
    }
    return 0;
}

int rndz__rpeer_take(rndz__rpeer *r, const rndz__client *c) {
    int fd = r->fd;
    r->fd = -1;
    if (r->socktype == SOCK_DGRAM) {
        rndz__probe_filter_drop(fd);
        rndz__probe_drain(fd); /* e.g. the other copies of the "use" ack, queued before it */
    }
    else rndz__client_handover(c, fd);
    rndz__sock_set_nonblock(fd, false);
    return fd;
}

void rndz__rpeer_close(rndz__rpeer *r) {
    if (r->fd >= 0) close(r->fd);
    r->fd = -1;
}
