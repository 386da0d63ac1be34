/* testlib.h: tiny helpers shared by the C test programs (Tests/c/test_*.c).
 *
 * Assertions (check.h, shared with the unit tests) print file:line and the values and count
 * failures; tl_finish() prints a summary and returns the exit status. Socket helpers make raw
 * UDP sockets on loopback (port 0 only) with a receive timeout; the server helpers start our
 * server on loopback or a wildcard address, port 0, and note where clients send; the client
 * helpers make options, registered listeners and connectors on threads. The vectors file is
 * read from $RNDZ_VECTORS.
 * Only the public API (<rndz.h>) is used here and in the tests.
 */
#ifndef RNDZ_TESTLIB_H
#define RNDZ_TESTLIB_H

#include <rndz.h>

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* --- assertions ------------------------------------------------------------------------ */

/* CHECK, CHECK_EQ_INT, CHECK_RC, CHECK_EQ_MEM, CHECK_EQ_STR, CHECK_EQ_SN, tl_case(): the
 * check style every C test program shares (check.h; the unit tests use it too). */
#include "check.h"

/* Start a test program: names it in the summary and arms a watchdog (seconds; the
 * environment variable RNDZ_TEST_TIMEOUT overrides it, e.g. under valgrind). */
void tl_init(const char *name, unsigned watchdog_s);
/* Slowdown factor for timeouts: 8 under valgrind (detected through LD_PRELOAD), else 1;
 * RNDZ_TEST_SLOW overrides. tl_ms(ms) = ms * tl_slow(). */
unsigned tl_slow(void);
unsigned tl_ms(unsigned ms);
/* Print "name: N checks, M failed" (tl_summary) and return the exit status (0 = all passed). */
int tl_finish(void);
/* Print a line prefixed with the test name (to stderr). */
void tl_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* --- hex ------------------------------------------------------------------------------- */

/* Parse hex digits (spaces and tabs ignored) into out. Returns the byte count, or -1 on a bad
 * digit, an odd count or overflow of cap. */
long tl_hex(const char *hex, uint8_t *out, size_t cap);
/* (tl_tohex, the other way, is in check.h.) */

/* --- time ------------------------------------------------------------------------------ */

uint64_t tl_now_ms(void);
void tl_sleep_ms(unsigned ms);

/* --- sockets --------------------------------------------------------------------------- */

/* A UDP socket bound to 127.0.0.1:0 (AF_INET) or [::1]:0 (AF_INET6) with SO_RCVTIMEO of
 * timeout_ms. Aborts the program if the socket cannot be made. */
int tl_udp_socket(int family, unsigned timeout_ms);
/* Same, bound to an explicit numeric address text ("[::]:0", ...). */
int tl_udp_socket_at(const char *addr, unsigned timeout_ms);
void tl_set_timeout(int fd, unsigned timeout_ms);
/* Local port of a socket (host order). */
int tl_port(int fd);
/* Local address of a socket as text ("127.0.0.1:12345"). */
const char *tl_local_text(int fd, char *buf, size_t cap);
/* Send to a numeric text address. Returns sendto's result (aborts on a bad address). */
long tl_sendto(int fd, const void *data, size_t len, const char *to);
/* Send to a sockaddr. */
long tl_sendto_sa(int fd, const void *data, size_t len, const struct sockaddr_storage *to);
/* Send a request to `to` (checked: all of it went) and wait up to timeout_ms for a reply on
 * the same socket; returns its length, or -1 on timeout. from may be NULL. */
long tl_udp_request(int fd, const void *req, size_t n, const char *to, void *reply, size_t cap,
                    struct sockaddr_storage *from, unsigned timeout_ms);
/* Receive with the socket's timeout. Returns the length, or -1 on timeout/error. from may be
 * NULL. */
long tl_recv(int fd, void *buf, size_t cap, struct sockaddr_storage *from);
/* Receive with an explicit timeout (poll); -1 on timeout. */
long tl_recv_wait(int fd, void *buf, size_t cap, struct sockaddr_storage *from,
                  unsigned timeout_ms);
/* True if a datagram is queued on fd right now (nothing is consumed). */
bool tl_pending(int fd);
/* True if nothing arrives on fd within ms. */
bool tl_silent(int fd, unsigned ms);
/* Text form of a sockaddr (via rndz_addr_format). */
const char *tl_addr_text(const struct sockaddr_storage *ss, char *buf, size_t cap);
int tl_addr_port(const struct sockaddr_storage *ss);
/* Number of open file descriptors of this process (/proc/self/fd). */
int tl_count_fds(void);
/* Number of threads of this process (/proc/self/task). */
int tl_count_threads(void);
/* The thread count once it has come down to `want` (a joined thread can linger in
 * /proc/self/task for a moment after pthread_join returns), or after 1 s, whatever it is. */
int tl_threads_settled(int want);
/* Whether IPv6 loopback works here. */
bool tl_have_ipv6(void);

/* --- protobuf bytes built by hand (independent of the library's encoder) --------------- */

/* A v1 message's bytes: field 1 = id (omitted if empty), then command field `field` with a
 * submessage holding 1 = peer (if non-empty) and 2 = addr (if non-empty). Returns the length.
 * Works for Requests and Responses alike (the caller picks the field number). */
size_t tl_v1_bytes(uint8_t *out, size_t cap, const char *id, int field, const char *peer,
                   const char *addr);

/* --- a connector on a thread ----------------------------------------------------------- */

/* rndz_udp_connect() run on a background thread, so the test can play the other roles. */
typedef struct tl_connect_job {
    rndz_client_options o;
    const char *servers[8];
    char server_text[8][RNDZ_ADDRSTRLEN];
    char id[300], target[300];
    int rc; /* the fd or the error */
    struct sockaddr_storage peer;
    socklen_t peer_len;
    uint64_t elapsed_ms;
    pthread_t thread;
} tl_connect_job;
/* Start rndz_udp_connect(id, servers, target) with round_ms/timeout_ms (0 = default). */
void tl_connect_start(tl_connect_job *j, const char *id, const char *const *servers, size_t n,
                      const char *target, uint32_t round_ms, uint32_t timeout_ms);
/* The same in two steps, to change j->o (e.g. local_addr) before it runs. */
void tl_connect_prepare(tl_connect_job *j, const char *id, const char *const *servers, size_t n,
                        const char *target, uint32_t round_ms, uint32_t timeout_ms);
void tl_connect_run(tl_connect_job *j);
/* Join it and return its result (an fd the caller closes, or an error). */
int tl_connect_join(tl_connect_job *j);

/* True if buf is exactly the v1 bytes `want` followed only by extension fields (field
 * numbers 16 and up, which v1 decoders skip): what our clients and server send where rndz
 * 0.1.5 sends `want`. */
bool tl_v1_with_ext(const uint8_t *buf, size_t n, const uint8_t *want, size_t wn);

/* True if these bytes decode as a v1 Request or Response (a protocol packet, not data). */
bool tl_is_protocol(const uint8_t *buf, size_t len);
/* Receive the next datagram that is not a v1 protocol packet (skipping those, and counting
 * them in *skipped if not NULL). -1 on timeout. */
long tl_recv_data(int fd, void *buf, size_t cap, struct sockaddr_storage *from,
                  unsigned timeout_ms, int *skipped);
/* Receive the next datagram that skip() does not take, within timeout_ms (-1 on timeout).
 * skip() sees every datagram (it may answer it) and returns true to pass over it. */
typedef bool (*tl_skip_fn)(int fd, const uint8_t *buf, size_t len,
                           const struct sockaddr_storage *from, void *user);
long tl_recv_skip(int fd, void *buf, size_t cap, struct sockaddr_storage *from,
                  unsigned timeout_ms, tl_skip_fn skip, void *user);

/* --- our server on loopback ------------------------------------------------------------ */

typedef struct tl_server {
    rndz_server *s;
    struct sockaddr_storage sa;  /* the address it is bound to */
    int port;
    char text[RNDZ_ADDRSTRLEN];  /* where clients send: its address, 127.0.0.1:P if it is
                                  * bound to a wildcard (0.0.0.0 or [::]) */
    char text6[RNDZ_ADDRSTRLEN]; /* [::1]:P, for IPv6 clients of a [::] or [::1] server */
} tl_server;

/* rndz_server_options_init(), listening on `listen` (loopback or a wildcard, port 0). */
void tl_server_options(rndz_server_options *o, const char *listen);
/* Create and start a server with these options and note its address, checking each step.
 * False if a step failed (then nothing is left to stop). */
bool tl_server_start(tl_server *v, const rndz_server_options *o);
/* tl_server_start() with the default options, listening on `listen`. */
bool tl_server_open(tl_server *v, const char *listen);
void tl_server_stop(tl_server *v);
/* Its counters (a checked read). */
rndz_server_stats tl_server_stats(tl_server *v);
/* Poll its counters until the one at TL_STAT(field) is `want` (at_least: >= want) or ms
 * pass; returns the last read (the last read is checked). */
#define TL_STAT(field) offsetof(rndz_server_stats, field)
rndz_server_stats tl_server_await(tl_server *v, size_t stat, uint64_t want, bool at_least,
                                  unsigned ms);

/* --- our clients --------------------------------------------------------------------------- */

/* rndz_client_options_init() with id and servers. */
void tl_client_options(rndz_client_options *o, const char *id, const char *const *servers,
                       size_t n);
/* A listener with options o, registered within 3 s (both steps checked); NULL if it could not
 * be made. */
rndz_udp_listener *tl_udp_listener(const rndz_client_options *o);
rndz_tcp_listener *tl_tcp_listener(const rndz_client_options *o);

/* rndz_tcp_connect() on a background thread: fill o and target, then run and join. */
typedef struct tl_tcp_job {
    rndz_client_options o;
    const char *target;
    int rc; /* the fd or the error */
    struct sockaddr_storage peer;
    uint64_t elapsed_us;
    pthread_t thread;
} tl_tcp_job;
void tl_tcp_job_run(tl_tcp_job *j);
int tl_tcp_job_join(tl_tcp_job *j);

/* --- leaks --------------------------------------------------------------------------------- */

/* What a test holds when it starts; tl_mark_check() checks it holds no more at the end (open
 * descriptors, and threads if marked with threads). */
typedef struct tl_mark {
    int fds, threads; /* threads -1: not checked */
} tl_mark;
tl_mark tl_mark_now(bool threads);
void tl_mark_check(const tl_mark *m);
/* Resident memory of this process in KiB (VmRSS), -1 if unknown. */
long tl_rss_kb(void);

/* --- vectors --------------------------------------------------------------------------- */

typedef struct tl_vector {
    char name[64];
    char transport[8]; /* "udp" or "tcp" */
    char direction[64];
    uint8_t bytes[2048];
    size_t len;
    bool is_probe;
    bool reply_none;   /* probe: the reference server answered nothing */
    uint8_t reply[2048];
    size_t reply_len;
} tl_vector;

/* Load every vector of $RNDZ_VECTORS (default Tests/vectors/rndz-v1-vectors.txt). Aborts on a
 * missing or malformed file. Returns the count; *out is static storage. */
size_t tl_vectors(const tl_vector **out);
/* The vector with this name; aborts if absent. */
const tl_vector *tl_vector_get(const char *name);

#endif
