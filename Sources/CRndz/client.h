/* client.h: what the UDP and TCP clients (udp_listen.c, udp_connect.c, tcp_listen.c,
 * tcp_connect.c) share: validated options, resolved servers, the local address every socket
 * of one client binds to, and the requests they send. */
#ifndef RNDZ_CLIENT_H
#define RNDZ_CLIENT_H

#include "ext.h"
#include "internal.h"

#define RNDZ_MAX_SERVERS 16

typedef struct rndz__client {
    char id[RNDZ_MAX_ID + 1];
    size_t id_len;
    size_t n_servers;
    struct sockaddr_storage servers[RNDZ_MAX_SERVERS]; /* in the local socket's family */
    char server_text[RNDZ_MAX_SERVERS][RNDZ_ADDRSTRLEN];
    /* Server sets (srvset.h): the servers ranked for our id, and how many hold it. */
    uint8_t rank[RNDZ_MAX_SERVERS];
    size_t per_id;
    struct sockaddr_storage local; /* port filled in once the first socket is bound */
    rndz__sockopts so;
    uint32_t keepalive_ms, round_ms, timeout_ms;
    uint32_t tcp_rto_max_ms; /* for connections handed over; 0: the kernel's default */
    int relay;               /* RNDZ_RELAY_* */
    bool port_mapping;
    uint32_t relay_after_ms;
    bool signing; /* a credential was given: requests to servers carry an Auth field */
    uint8_t credential[RNDZ_CREDENTIAL_LEN];
} rndz__client;


/* Validate options, resolve every server (a name to each of its addresses), rank them for
 * our id, pick the local address. */
RNDZ_INTERNAL int rndz__client_init(rndz__client *c, const rndz_client_options *o);
/* A socket on the client's local address with a port of its own (not shared): the relay's,
 * port prediction's, the NAT check's. The fd or an error. */
RNDZ_INTERNAL int rndz__client_fresh(const rndz__client *c, int socktype);
/* Bind one more socket to the client's local address (the first one fixes the port). */
RNDZ_INTERNAL int rndz__client_bind(rndz__client *c, int socktype);
/* A connection leaves rndz for the application: give it the retransmission cap the options
 * ask for (default: the kernel's). */
RNDZ_INTERNAL void rndz__client_handover(const rndz__client *c, int fd);
/* The plain connects on top of the *_info ones: run connect_info and, if it returned a
 * connection, store the peer's address in *peer (may be NULL). Returns the fd or error. */
typedef int (*rndz__connect_info_fn)(const rndz_client_options *o, const char *target,
                                     rndz_peer_info *info);
RNDZ_INTERNAL int rndz__client_connect_plain(rndz__connect_info_fn connect_info,
                                             const rndz_client_options *o, const char *target,
                                             struct sockaddr_storage *peer, socklen_t *peer_len);
/* Parse a peer address from the wire into the local socket's family. */
RNDZ_INTERNAL int rndz__client_peer_addr(const rndz__client *c, const char *text, size_t len,
                                         struct sockaddr_storage *out);
/* Which server (index) an address is, or -1. */
RNDZ_INTERNAL int rndz__client_server_index(const rndz__client *c,
                                            const struct sockaddr_storage *from);
/* Sign an encoded request of n bytes in buf (capacity cap) with the client's credential, if it
 * has one and the request goes to a server (`to` NULL: a socket connected to a server);
 * punches to peers are left unsigned. n < 0 is passed through, so calls chain after an
 * encode. Returns the new length or an error. */
RNDZ_INTERNAL int rndz__client_sign(const rndz__client *c, uint8_t *buf, int n, size_t cap,
                                    const struct sockaddr_storage *to);
/* Encode a request from this client: cmd, the peer id, extension fields (ext may be NULL),
 * signed when it goes to a server (`to` NULL: a socket connected to a server); `frame`: as a
 * TCP frame, with its 2-byte length. Returns the length in buf or an error. */
RNDZ_INTERNAL int rndz__client_request(const rndz__client *c, rndz_cmd cmd, const char *peer,
                                       size_t peer_len, const rndz__ext *ext, bool frame,
                                       const struct sockaddr_storage *to, uint8_t *buf,
                                       size_t cap);
/* Send a request as a datagram on `fd` (to `to`, or connected when NULL). 0 or an error. */
RNDZ_INTERNAL int rndz__client_send(int fd, const rndz__client *c, rndz_cmd cmd,
                                    const char *peer, size_t peer_len,
                                    const struct sockaddr_storage *to, const rndz__ext *ext);
/* Send a request as a frame on a connection to a server. 0 or an error. */
RNDZ_INTERNAL int rndz__client_send_frame(int fd, const rndz__client *c, rndz_cmd cmd,
                                          const char *peer, size_t peer_len,
                                          const rndz__ext *ext);
/* A listener's Pong from server i (msg, len), the one that registered it (`registering`):
 * warn when the server says this registration took our id over from another address. */
RNDZ_INTERNAL void rndz__client_on_pong(const rndz__client *c, size_t i, const uint8_t *msg,
                                        size_t len, bool registering, const char *who);
/* Copy an id from the wire into a NUL-terminated buffer of RNDZ_MAX_ID + 1 bytes. */
RNDZ_INTERNAL void rndz__copy_id(char *dst, const char *src, size_t len);

#endif
