/* client.c: option handling shared by the UDP and TCP clients. */
#include "client.h"
#include "srvset.h"
#include "auth.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Every default, in one place: fills the fields left 0, for rndz_client_options_init and for
 * options a caller zeroed by hand (rndz.h: 0 = the default). */
static void client_defaults(rndz_client_options *o) {
    /* as rndz 0.1.5; well inside conntrack's 30 s UDP timeout */
    if (!o->keepalive_ms) o->keepalive_ms = 10000;
    /* the pace Isync rounds double up to: a lost datagram costs at most 1 s, not 5 */
    if (!o->round_ms) o->round_ms = 1000;
    if (!o->timeout_ms) o->timeout_ms = 10000;
    /* A direct path verifies within a round trip or two; under 20% loss per link, 2 s of
     * probes (at 0, 0.1, 0.3, 0.7, 1.5 s) fail about 7% of the time, and the relay then
     * still has most of the default 10 s timeout. */
    if (!o->relay_after_ms) o->relay_after_ms = 2000;
}

void rndz_client_options_init(rndz_client_options *o) {
    if (!o) return;
    memset(o, 0, sizeof *o);
    client_defaults(o);
}

/* Ids must be non-empty UTF-8 that fits a message; check UTF-8 by round-tripping a Ping. */
static int check_id(const char *id, size_t *len) {
    if (!id) return RNDZ_E_BADID;
    size_t n = strlen(id);
    if (n == 0 || n > RNDZ_MAX_ID) return RNDZ_E_BADID;
    uint8_t buf[RNDZ_MAX_MSG];
    rndz_msg m;
    int enc = rndz__encode(RNDZ_REQ_PING, id, n, NULL, 0, NULL, 0, buf, sizeof buf);
    if (enc < 0 || rndz_msg_decode(buf, (size_t)enc, 0, &m) != 0) return RNDZ_E_BADID;
    *len = n;
    return 0;
}

int rndz__client_init(rndz__client *c, const rndz_client_options *o) {
    memset(c, 0, sizeof *c);
    if (!o) return -EINVAL;
    int rc = check_id(o->id, &c->id_len);
    if (rc) return rc;
    memcpy(c->id, o->id, c->id_len);
    if (!o->servers || o->n_servers == 0) return RNDZ_E_NOSERVER;
    if (o->n_servers > RNDZ_MAX_SERVERS) return -E2BIG;
    if (o->credential) {
        memcpy(c->credential, o->credential, RNDZ_CREDENTIAL_LEN);
        c->signing = true;
    }
    rndz_client_options d = *o;
    client_defaults(&d);
    c->keepalive_ms = d.keepalive_ms;
    c->round_ms = d.round_ms;
    c->timeout_ms = d.timeout_ms;
    if (o->relay < RNDZ_RELAY_AUTO || o->relay > RNDZ_RELAY_ONLY) return -EINVAL;
    c->relay = o->relay;
    c->port_mapping = o->port_mapping != 0;
    c->relay_after_ms = d.relay_after_ms;
    /* The kernel refuses caps outside 1..120 s; say so now rather than at the first connect. */
    if (o->tcp_rto_max_ms && (o->tcp_rto_max_ms < 1000 || o->tcp_rto_max_ms > 120000))
        return -EINVAL;
    c->tcp_rto_max_ms = o->tcp_rto_max_ms;
    bool any6 = false;
    size_t n = 0;
    for (size_t i = 0; i < o->n_servers; i++) {
        if (!o->servers[i]) return RNDZ_E_BADADDR;
        /* a name whose answer holds several addresses is that many servers (a server set) */
        struct sockaddr_storage all[RNDZ_MAX_SERVERS];
        rc = rndz__addr_resolve_all(o->servers[i], AF_UNSPEC, all, RNDZ_MAX_SERVERS);
        if (rc < 0) return rc;
        for (int k = 0; k < rc; k++) {
            rndz__addr_unmap(&all[k]);
            bool dup = false;
            for (size_t j = 0; j < n && !dup; j++)
                dup = rndz__addr_equal((struct sockaddr *)&c->servers[j], (struct sockaddr *)&all[k]);
            if (dup) continue;
            if (n == RNDZ_MAX_SERVERS) return -E2BIG;
            c->servers[n] = all[k];
            rndz_addr_format((struct sockaddr *)&c->servers[n], c->server_text[n], RNDZ_ADDRSTRLEN);
            any6 |= c->servers[n].ss_family == AF_INET6;
            n++;
        }
    }
    c->n_servers = n;
    c->per_id = o->servers_per_id ? o->servers_per_id : RNDZ_SERVERS_PER_ID_DEFAULT;
    if (c->per_id > n) c->per_id = n;
    rndz__hrw_rank(c->id, c->id_len, (const char (*)[RNDZ_ADDRSTRLEN])c->server_text, n, c->rank);
    if (o->local_addr) {
        rc = rndz_addr_parse(o->local_addr, &c->local, NULL);
        if (rc) return rc;
    } else {
        rndz_addr_parse(any6 ? "[::]:0" : "0.0.0.0:0", &c->local, NULL);
    }
    /* An IPv6 socket reaches IPv4 servers through mapped addresses (dual stack). */
    for (size_t i = 0; i < c->n_servers; i++) {
        if (c->local.ss_family == AF_INET6) rndz__addr_map(&c->servers[i]);
        else if (c->servers[i].ss_family != AF_INET) return -EAFNOSUPPORT;
    }
    c->so = (rndz__sockopts){.reuse = true,
                             .v6only = c->local.ss_family == AF_INET6 ? 0 : -1,
                             .config = o->sock_config,
                             .config_user = o->sock_config_user};
    return 0;
}

int rndz__client_bind(rndz__client *c, int socktype) {
    if (rndz__addr_port(&c->local) == 0) {
        /* With SO_REUSEPORT, port 0 may give us a port that another process of the same user
         * holds with SO_REUSEPORT too (a server on this host, say): the kernel counts it as
         * shareable, and then the two receive each other's datagrams. A plain socket gets a
         * port nobody holds: take that one. */
        rndz__sockopts plain = c->so;
        plain.reuse = false;
        plain.config = NULL;
        int probe = rndz__sock_bind(socktype, (struct sockaddr *)&c->local, &plain);
        if (probe >= 0) {
            struct sockaddr_storage b;
            socklen_t bl = sizeof b;
            if (getsockname(probe, (struct sockaddr *)&b, &bl) == 0)
                rndz__addr_set_port(&c->local, rndz__addr_port(&b));
            close(probe);
        }
    }
    int fd = rndz__sock_bind(socktype, (struct sockaddr *)&c->local, &c->so);
    if (fd < 0) return fd;
    /* Every TCP socket connects under the 1 s cap (internal.h, RNDZ__TCP_RTO_CAP_MS);
     * rndz__client_handover sets what the application asked for. */
    if (socktype == SOCK_STREAM && rndz__sock_tcp_rto_max(fd, RNDZ__TCP_RTO_CAP_MS) == 0) {
        /* SYNs (and a simultaneous open's SYN-ACKs) now go each second, so the kernel's 6
         * retries would end an attempt after ~7 s, before our deadline, and in the middle of
         * a handshake the other side may already have finished (seen in the lab under 20%
         * loss: the peer's hello then met a RST). Let the kernel go on for the whole
         * timeout; rndz closes what it no longer needs. */
        int n = (int)(c->timeout_ms / RNDZ__TCP_RTO_CAP_MS) + 1;
        n = n > 127 ? 127 : n; /* the kernel's MAX_TCP_SYNCNT */
        setsockopt(fd, IPPROTO_TCP, TCP_SYNCNT, &n, sizeof n);
    }
    /* The first socket fixes the port; the following ones share it (and leave c alone: other
     * threads bind through it too, rndz_udp_listener_accept's). */
    struct sockaddr_storage b;
    socklen_t bl = sizeof b;
    if (getsockname(fd, (struct sockaddr *)&b, &bl) == 0 &&
        rndz__addr_port(&b) != rndz__addr_port(&c->local))
        rndz__addr_set_port(&c->local, rndz__addr_port(&b));
    return fd;
}

int rndz__client_peer_addr(const rndz__client *c, const char *text, size_t len,
                           struct sockaddr_storage *out) {
    char buf[RNDZ_ADDRSTRLEN];
    if (len == 0 || len >= sizeof buf) return RNDZ_E_BADADDR;
    memcpy(buf, text, len);
    buf[len] = 0;
    int rc = rndz_addr_parse(buf, out, NULL);
    if (rc) return rc;
    rndz__addr_unmap(out);
    if (c->local.ss_family == AF_INET6) rndz__addr_map(out);
    else if (out->ss_family != AF_INET) return -EAFNOSUPPORT;
    return 0;
}

int rndz__client_server_index(const rndz__client *c, const struct sockaddr_storage *from) {
    for (size_t i = 0; i < c->n_servers; i++)
        if (rndz__addr_equal((const struct sockaddr *)from, (const struct sockaddr *)&c->servers[i]))
            return (int)i;
    return -1;
}

int rndz__client_sign(const rndz__client *c, uint8_t *buf, int n, size_t cap,
                      const struct sockaddr_storage *to) {
    if (n < 0 || !c->signing || (to && rndz__client_server_index(c, to) < 0)) return n;
    uint8_t nonce[RNDZ_AUTH_NONCE_DEFAULT];
    rndz__auth_nonce(nonce, sizeof nonce);
    return rndz__auth_append(c->credential, rndz__auth_next_ts(), nonce, sizeof nonce, buf,
                             (size_t)n, cap);
}

int rndz__client_request(const rndz__client *c, rndz_cmd cmd, const char *peer,
                         size_t peer_len, const rndz__ext *ext, bool frame,
                         const struct sockaddr_storage *to, uint8_t *buf, size_t cap) {
    size_t off = frame ? 2 : 0;
    if (cap < off + RNDZ_MAX_MSG) return RNDZ_E_NOSPACE;
    int n = rndz__encode(cmd, c->id, c->id_len, peer, peer_len, NULL, 0, buf + off, RNDZ_MAX_MSG);
    /* extensions ride after the v1 fields (ext.h) */
    if (n >= 0 && ext) n = rndz__ext_append(ext, buf + off, (size_t)n, RNDZ_MAX_MSG);
    n = rndz__client_sign(c, buf + off, n, RNDZ_MAX_MSG, to); /* last: it covers every byte */
    if (n < 0 || !frame) return n;
    return rndz__frame_seal(buf, (size_t)n);
}

int rndz__client_send(int fd, const rndz__client *c, rndz_cmd cmd, const char *peer,
                      size_t peer_len, const struct sockaddr_storage *to, const rndz__ext *ext) {
    uint8_t buf[RNDZ_MAX_MSG];
    int n = rndz__client_request(c, cmd, peer, peer_len, ext, false, to, buf, sizeof buf);
    if (n < 0) return n;
    ssize_t w = to ? sendto(fd, buf, (size_t)n, MSG_DONTWAIT, (const struct sockaddr *)to,
                            rndz__addr_len((const struct sockaddr *)to))
                   : send(fd, buf, (size_t)n, MSG_DONTWAIT);
    return w < 0 ? -errno : 0;
}

int rndz__client_send_frame(int fd, const rndz__client *c, rndz_cmd cmd, const char *peer,
                            size_t peer_len, const rndz__ext *ext) {
    uint8_t buf[2 + RNDZ_MAX_MSG];
    int n = rndz__client_request(c, cmd, peer, peer_len, ext, true, NULL, buf, sizeof buf);
    if (n < 0) return n;
    /* Frames are tiny next to a socket buffer: a short write means the connection is stuck. */
    ssize_t w = send(fd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0) return -errno;
    return w == n ? 0 : -EAGAIN;
}

void rndz__copy_id(char *dst, const char *src, size_t len) {
    if (len > RNDZ_MAX_ID) len = RNDZ_MAX_ID;
    memcpy(dst, src, len);
    dst[len] = 0;
}

void rndz__client_handover(const rndz__client *c, int fd) {
    rndz__sock_tcp_rto_max(fd, c->tcp_rto_max_ms);
    rndz__sock_tcp_log(fd, "tcp: connection handed over");
}

int rndz__client_connect_plain(rndz__connect_info_fn connect_info,
                               const rndz_client_options *o, const char *target,
                               struct sockaddr_storage *peer, socklen_t *peer_len) {
    rndz_peer_info info;
    int fd = connect_info(o, target, &info);
    if (fd >= 0 && peer) {
        *peer = info.addr;
        if (peer_len) *peer_len = rndz__addr_len((const struct sockaddr *)peer);
    }
    return fd;
}

int rndz__client_fresh(const rndz__client *c, int socktype) {
    struct sockaddr_storage local = c->local;
    rndz__addr_set_port(&local, 0);
    rndz__sockopts so = c->so;
    so.reuse = false;
    return rndz__sock_bind(socktype, (struct sockaddr *)&local, &so);
}

void rndz__client_on_pong(const rndz__client *c, size_t i, const uint8_t *msg, size_t len,
                          bool registering, const char *who) {
    rndz__ext e;
    if (!registering || rndz__ext_decode(msg, len, &e) || !e.taken) return;
    /* Two listeners with one id take it from each other at every keepalive; connects reach
     * whichever pinged last. Said once, when we register (a later take-over of our own id,
     * e.g. after our NAT moved us to another port, is not another listener's). */
    RNDZ_LOG(RNDZ_LOG_WARN,
             "%s: id '%.*s' was in use at %s (by another socket); it now leads "
             "here, and connects to it reach whichever listener registered last: is another "
             "listener running with this id?",
             who, (int)(c->id_len > 64 ? 64 : c->id_len), c->id, c->server_text[i]);
}
