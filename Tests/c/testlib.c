/* testlib.c: see testlib.h. It also holds the one definition of the checks (check.h). */
#define TL_CHECK_IMPLEMENTATION
#include "testlib.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *tl_name = "test";

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "\nWATCHDOG: test program took too long, aborting\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(3);
}

static void *noop_thread(void *arg) { return arg; }

void tl_init(const char *name, unsigned watchdog_s) {
    /* Start and join one thread first, so helper threads that sanitizers start with the
     * first pthread_create (TSan) exist before any test takes a thread-count baseline. */
    pthread_t t;
    if (pthread_create(&t, NULL, noop_thread, NULL) == 0) pthread_join(t, NULL);
    /* joined, it may still be listed in /proc/self/task a moment: let it go before any test
     * counts threads */
    for (int i = 0; i < 100 && tl_count_threads() > 1; i++) tl_sleep_ms(1);
    tl_name = name;
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *env = getenv("RNDZ_TEST_TIMEOUT");
    if (env && atoi(env) > 0) watchdog_s = (unsigned)atoi(env);
    else watchdog_s *= tl_slow();
    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN);
    alarm(watchdog_s);
}

unsigned tl_slow(void) {
    static int slow = -1;
    if (slow < 0) {
        const char *pl = getenv("LD_PRELOAD");
        const char *env = getenv("RNDZ_TEST_SLOW");
        slow = env && atoi(env) > 0 ? atoi(env) : (pl && strstr(pl, "vgpreload")) ? 8 : 1;
    }
    return (unsigned)slow;
}

unsigned tl_ms(unsigned ms) { return ms * tl_slow(); }

int tl_finish(void) {
    alarm(0);
    return tl_summary(tl_name);
}

void tl_note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", tl_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* --- hex --------------------------------------------------------------------------------- */

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

long tl_hex(const char *hex, uint8_t *out, size_t cap) {
    size_t n = 0;
    int hi = -1;
    for (const char *p = hex; *p; p++) {
        if (*p == ' ' || *p == '\t') continue;
        int v = hexval(*p);
        if (v < 0) return -1;
        if (hi < 0) {
            hi = v;
        } else {
            if (n >= cap) return -1;
            out[n++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
    }
    return hi < 0 ? (long)n : -1;
}

/* --- time -------------------------------------------------------------------------------- */

uint64_t tl_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void tl_sleep_ms(unsigned ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* --- sockets ----------------------------------------------------------------------------- */

static void die(const char *what) {
    fprintf(stderr, "%s: fatal: %s: %s\n", tl_name, what, strerror(errno));
    exit(2);
}

void tl_set_timeout(int fd, unsigned timeout_ms) {
    struct timeval tv = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) die("SO_RCVTIMEO");
}

int tl_udp_socket_at(const char *addr, unsigned timeout_ms) {
    struct sockaddr_storage ss;
    socklen_t sl;
    if (rndz_addr_parse(addr, &ss, &sl) != 0) {
        fprintf(stderr, "%s: fatal: bad address %s\n", tl_name, addr);
        exit(2);
    }
    int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0) die("bind");
    tl_set_timeout(fd, timeout_ms);
    return fd;
}

int tl_udp_socket(int family, unsigned timeout_ms) {
    return tl_udp_socket_at(family == AF_INET6 ? "[::1]:0" : "127.0.0.1:0", timeout_ms);
}

int tl_port(int fd) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) return -1;
    return tl_addr_port(&ss);
}

int tl_addr_port(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return -1;
}

const char *tl_addr_text(const struct sockaddr_storage *ss, char *buf, size_t cap) {
    if (rndz_addr_format((const struct sockaddr *)ss, buf, cap) < 0) snprintf(buf, cap, "?");
    return buf;
}

const char *tl_local_text(int fd, char *buf, size_t cap) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    memset(&ss, 0, sizeof ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) die("getsockname");
    return tl_addr_text(&ss, buf, cap);
}

long tl_sendto_sa(int fd, const void *data, size_t len, const struct sockaddr_storage *to) {
    socklen_t sl = to->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                             : sizeof(struct sockaddr_in);
    return (long)sendto(fd, data, len, 0, (const struct sockaddr *)to, sl);
}

long tl_sendto(int fd, const void *data, size_t len, const char *to) {
    struct sockaddr_storage ss;
    if (rndz_addr_parse(to, &ss, NULL) != 0) {
        fprintf(stderr, "%s: fatal: bad address %s\n", tl_name, to);
        exit(2);
    }
    return tl_sendto_sa(fd, data, len, &ss);
}

long tl_udp_request(int fd, const void *req, size_t n, const char *to, void *reply, size_t cap,
                    struct sockaddr_storage *from, unsigned timeout_ms) {
    CHECK_EQ_INT(tl_sendto(fd, req, n, to), (long)n);
    return tl_recv_wait(fd, reply, cap, from, timeout_ms);
}

long tl_recv(int fd, void *buf, size_t cap, struct sockaddr_storage *from) {
    struct sockaddr_storage tmp;
    socklen_t sl = sizeof tmp;
    memset(&tmp, 0, sizeof tmp);
    ssize_t n;
    do {
        n = recvfrom(fd, buf, cap, 0, (struct sockaddr *)&tmp, &sl);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return -1;
    if (from) *from = tmp;
    return (long)n;
}

long tl_recv_wait(int fd, void *buf, size_t cap, struct sockaddr_storage *from,
                  unsigned timeout_ms) {
    uint64_t deadline = tl_now_ms() + timeout_ms;
    for (;;) {
        uint64_t now = tl_now_ms();
        int left = now >= deadline ? 0 : (int)(deadline - now);
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        struct sockaddr_storage tmp;
        socklen_t sl = sizeof tmp;
        memset(&tmp, 0, sizeof tmp);
        ssize_t n = recvfrom(fd, buf, cap, MSG_DONTWAIT, (struct sockaddr *)&tmp, &sl);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n < 0) return -1;
        if (from) *from = tmp;
        return (long)n;
    }
}

bool tl_pending(int fd) {
    uint8_t b[1];
    return recv(fd, b, sizeof b, MSG_DONTWAIT | MSG_PEEK | MSG_TRUNC) >= 0;
}

bool tl_silent(int fd, unsigned ms) {
    uint8_t buf[2048];
    return tl_recv_wait(fd, buf, sizeof buf, NULL, ms) < 0;
}

/* Entries of a directory (not . and ..), -1 if it cannot be read. */
static int count_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

int tl_count_fds(void) {
    int n = count_dir("/proc/self/fd");
    return n < 0 ? -1 : n - 1; /* the DIR's own fd */
}

int tl_count_threads(void) { return count_dir("/proc/self/task"); }

int tl_threads_settled(int want) {
    uint64_t t0 = tl_now_ms();
    int n;
    while ((n = tl_count_threads()) > want && tl_now_ms() - t0 < tl_ms(1000)) tl_sleep_ms(2);
    return n;
}

bool tl_have_ipv6(void) {
    int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* --- hand-built protobuf ----------------------------------------------------------------- */

static size_t put_varint(uint8_t *out, size_t o, uint64_t v) {
    while (v >= 0x80) {
        out[o++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[o++] = (uint8_t)v;
    return o;
}

static size_t put_str(uint8_t *out, size_t o, int field, const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (!n) return o;
    o = put_varint(out, o, (uint64_t)field << 3 | 2);
    o = put_varint(out, o, n);
    memcpy(out + o, s, n);
    return o + n;
}

size_t tl_v1_bytes(uint8_t *out, size_t cap, const char *id, int field, const char *peer,
                   const char *addr) {
    uint8_t sub[1024];
    size_t idn = id ? strlen(id) : 0, pn = peer ? strlen(peer) : 0, an = addr ? strlen(addr) : 0;
    if (idn + pn + an + 32 > cap || pn + an + 16 > sizeof sub) {
        fprintf(stderr, "%s: fatal: tl_v1_bytes: too long\n", tl_name);
        exit(2);
    }
    size_t sn = put_str(sub, 0, 1, peer);
    sn = put_str(sub, sn, 2, addr);
    size_t o = put_str(out, 0, 1, id);
    o = put_varint(out, o, (uint64_t)field << 3 | 2);
    o = put_varint(out, o, sn);
    memcpy(out + o, sub, sn);
    return o + sn;
}

/* --- a connector on a thread ------------------------------------------------------------ */

static void *connect_thread(void *arg) {
    tl_connect_job *j = arg;
    uint64_t t0 = tl_now_ms();
    j->peer_len = 0;
    j->rc = rndz_udp_connect(&j->o, j->target, &j->peer, &j->peer_len);
    j->elapsed_ms = tl_now_ms() - t0;
    return NULL;
}

void tl_connect_start(tl_connect_job *j, const char *id, const char *const *servers, size_t n,
                      const char *target, uint32_t round_ms, uint32_t timeout_ms) {
    tl_connect_prepare(j, id, servers, n, target, round_ms, timeout_ms);
    tl_connect_run(j);
}

void tl_connect_run(tl_connect_job *j) {
    if (pthread_create(&j->thread, NULL, connect_thread, j) != 0) die("pthread_create");
}

void tl_connect_prepare(tl_connect_job *j, const char *id, const char *const *servers, size_t n,
                        const char *target, uint32_t round_ms, uint32_t timeout_ms) {
    memset(j, 0, sizeof *j);
    if (n > 8) n = 8;
    for (size_t i = 0; i < n; i++) {
        snprintf(j->server_text[i], sizeof j->server_text[i], "%s", servers[i]);
        j->servers[i] = j->server_text[i];
    }
    snprintf(j->id, sizeof j->id, "%s", id);
    snprintf(j->target, sizeof j->target, "%s", target);
    rndz_client_options_init(&j->o);
    j->o.id = j->id;
    j->o.servers = j->servers;
    j->o.n_servers = n;
    if (round_ms) j->o.round_ms = round_ms;
    if (timeout_ms) j->o.timeout_ms = timeout_ms;
}

int tl_connect_join(tl_connect_job *j) {
    pthread_join(j->thread, NULL);
    return j->rc;
}

static bool rd_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    *v = 0;
    for (int s = 0; s < 64; s += 7) {
        if (*p >= end) return false;
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << s;
        if (!(b & 0x80)) return true;
    }
    return false;
}

bool tl_v1_with_ext(const uint8_t *buf, size_t n, const uint8_t *want, size_t wn) {
    if (n < wn || memcmp(buf, want, wn) != 0) return false;
    const uint8_t *p = buf + wn, *end = buf + n;
    while (p < end) {
        uint64_t tag, v;
        if (!rd_varint(&p, end, &tag) || (tag >> 3) < 16) return false;
        switch (tag & 7) {
        case 0: if (!rd_varint(&p, end, &v)) return false; break;
        case 1: if (end - p < 8) return false; p += 8; break;
        case 2: if (!rd_varint(&p, end, &v) || v > (uint64_t)(end - p)) return false; p += v; break;
        case 5: if (end - p < 4) return false; p += 4; break;
        default: return false;
        }
    }
    return true;
}

bool tl_is_protocol(const uint8_t *buf, size_t len) {
    rndz_msg m;
    return rndz_msg_decode(buf, len, 0, &m) == 0 || rndz_msg_decode(buf, len, 1, &m) == 0;
}

long tl_recv_skip(int fd, void *buf, size_t cap, struct sockaddr_storage *from,
                  unsigned timeout_ms, tl_skip_fn skip, void *user) {
    struct sockaddr_storage tmp;
    if (!from) from = &tmp;
    uint64_t deadline = tl_now_ms() + timeout_ms;
    for (;;) {
        uint64_t now = tl_now_ms();
        if (now >= deadline) return -1;
        long n = tl_recv_wait(fd, buf, cap, from, (unsigned)(deadline - now));
        if (n < 0) return -1;
        if (!skip(fd, buf, (size_t)n, from, user)) return n;
    }
}

static bool skip_protocol(int fd, const uint8_t *buf, size_t len,
                          const struct sockaddr_storage *from, void *user) {
    (void)fd, (void)from;
    int *skipped = user;
    if (!tl_is_protocol(buf, len)) return false;
    if (skipped) (*skipped)++;
    return true;
}

long tl_recv_data(int fd, void *buf, size_t cap, struct sockaddr_storage *from,
                  unsigned timeout_ms, int *skipped) {
    return tl_recv_skip(fd, buf, cap, from, timeout_ms, skip_protocol, skipped);
}

/* --- our server on loopback ---------------------------------------------------------------- */

void tl_server_options(rndz_server_options *o, const char *listen) {
    rndz_server_options_init(o);
    o->listen_addr = listen;
}

static bool is_wildcard(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET)
        return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
    const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    return IN6_IS_ADDR_UNSPECIFIED(a);
}

bool tl_server_start(tl_server *v, const rndz_server_options *o) {
    memset(v, 0, sizeof *v);
    if (!CHECK_RC(rndz_server_create(o, &v->s), 0)) {
        v->s = NULL;
        return false;
    }
    CHECK_RC(rndz_server_local_addr(v->s, &v->sa, NULL), 0);
    v->port = tl_addr_port(&v->sa);
    CHECK(v->port > 0);
    if (is_wildcard(&v->sa)) snprintf(v->text, sizeof v->text, "127.0.0.1:%d", v->port);
    else tl_addr_text(&v->sa, v->text, sizeof v->text);
    snprintf(v->text6, sizeof v->text6, "[::1]:%d", v->port);
    if (CHECK_RC(rndz_server_start(v->s), 0)) return true;
    tl_server_stop(v);
    return false;
}

bool tl_server_open(tl_server *v, const char *listen) {
    rndz_server_options o;
    tl_server_options(&o, listen);
    return tl_server_start(v, &o);
}

void tl_server_stop(tl_server *v) {
    rndz_server_destroy(v->s);
    v->s = NULL;
}

rndz_server_stats tl_server_stats(tl_server *v) {
    rndz_server_stats st;
    memset(&st, 0, sizeof st);
    CHECK_RC(rndz_server_stats_get(v->s, &st), 0);
    return st;
}

rndz_server_stats tl_server_await(tl_server *v, size_t stat, uint64_t want, bool at_least,
                                  unsigned ms) {
    uint64_t end = tl_now_ms() + ms;
    for (;;) {
        rndz_server_stats st;
        memset(&st, 0, sizeof st);
        int rc = rndz_server_stats_get(v->s, &st);
        uint64_t got;
        memcpy(&got, (const char *)&st + stat, sizeof got);
        if (got == want || (at_least && got > want) || tl_now_ms() >= end) {
            CHECK_RC(rc, 0); /* the read returned is checked, once */
            return st;
        }
        tl_sleep_ms(2);
    }
}

/* --- our clients ------------------------------------------------------------------------------ */

void tl_client_options(rndz_client_options *o, const char *id, const char *const *servers,
                       size_t n) {
    rndz_client_options_init(o);
    o->id = id;
    o->servers = servers;
    o->n_servers = n;
}

rndz_udp_listener *tl_udp_listener(const rndz_client_options *o) {
    rndz_udp_listener *l = NULL;
    if (!CHECK_RC(rndz_udp_listener_create(o, &l), 0)) return NULL;
    CHECK_RC(rndz_udp_listener_wait_registered(l, tl_ms(3000)), 0);
    return l;
}

rndz_tcp_listener *tl_tcp_listener(const rndz_client_options *o) {
    rndz_tcp_listener *l = NULL;
    if (!CHECK_RC(rndz_tcp_listener_create(o, &l), 0)) return NULL;
    CHECK_RC(rndz_tcp_listener_wait_registered(l, tl_ms(3000)), 0);
    return l;
}

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void *tcp_job_thread(void *arg) {
    tl_tcp_job *j = arg;
    uint64_t t0 = now_us();
    j->rc = rndz_tcp_connect(&j->o, j->target, &j->peer, NULL);
    j->elapsed_us = now_us() - t0;
    return NULL;
}

void tl_tcp_job_run(tl_tcp_job *j) {
    if (pthread_create(&j->thread, NULL, tcp_job_thread, j) != 0) die("pthread_create");
}

int tl_tcp_job_join(tl_tcp_job *j) {
    pthread_join(j->thread, NULL);
    return j->rc;
}

/* --- leaks ------------------------------------------------------------------------------------ */

tl_mark tl_mark_now(bool threads) {
    return (tl_mark){tl_count_fds(), threads ? tl_count_threads() : -1};
}

void tl_mark_check(const tl_mark *m) {
    CHECK_EQ_INT(tl_count_fds(), m->fds);
    if (m->threads < 0) return;
    /* fewer is no leak: a thread that had ended but was not yet gone from /proc/self/task
     * when the mark was taken (the kernel lists a joined thread a moment longer) */
    int n = tl_threads_settled(m->threads);
    if (!CHECK(n <= m->threads))
        fprintf(stderr, "  %d threads left, %d when the mark was taken\n", n, m->threads);
}

long tl_rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kb) == 1) break;
    if (f) fclose(f);
    return kb;
}

/* --- vectors ----------------------------------------------------------------------------- */

#define TL_MAX_VECTORS 128
static tl_vector tl_vecs[TL_MAX_VECTORS];
static size_t tl_nvecs;
static bool tl_vecs_loaded;

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = 0;
    return s;
}

static void vec_fatal(const char *path, int line, const char *why) {
    fprintf(stderr, "%s: fatal: %s:%d: %s\n", tl_name, path, line, why);
    exit(2);
}

static void copy_field(char *dst, size_t cap, const char *src, const char *path, int line) {
    if (strlen(src) >= cap) vec_fatal(path, line, "field too long");
    strcpy(dst, src);
}

size_t tl_vectors(const tl_vector **out) {
    if (tl_vecs_loaded) {
        *out = tl_vecs;
        return tl_nvecs;
    }
    const char *path = getenv("RNDZ_VECTORS");
    if (!path || !*path) path = "Tests/vectors/rndz-v1-vectors.txt";
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "%s: fatal: cannot open vectors %s: %s (set RNDZ_VECTORS)\n", tl_name,
                path, strerror(errno));
        exit(2);
    }
    char line[8192];
    int lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        if (tl_nvecs == TL_MAX_VECTORS) vec_fatal(path, lineno, "too many vectors");
        tl_vector *v = &tl_vecs[tl_nvecs];
        memset(v, 0, sizeof *v);
        char *parts[5];
        int np = 0;
        for (char *p = s; np < 5;) {
            parts[np++] = p;
            char *bar = strchr(p, '|');
            if (!bar) break;
            *bar = 0;
            p = bar + 1;
        }
        for (int i = 0; i < np; i++) parts[i] = trim(parts[i]);
        char *hex;
        if (np == 4) { /* NAME | TRANSPORT | DIRECTION | HEX */
            copy_field(v->direction, sizeof v->direction, parts[2], path, lineno);
            hex = parts[3];
        } else if (np == 3) { /* probe: NAME | udp | REQ -> REPLY|none (comment) */
            v->is_probe = true;
            char *arrow = strstr(parts[2], "->");
            if (!arrow) vec_fatal(path, lineno, "probe without ->");
            *arrow = 0;
            hex = trim(parts[2]);
            char *reply = trim(arrow + 2);
            char *paren = strchr(reply, '(');
            if (paren) *paren = 0;
            reply = trim(reply);
            if (strcmp(reply, "none") == 0) {
                v->reply_none = true;
            } else {
                long rn = tl_hex(reply, v->reply, sizeof v->reply);
                if (rn < 0) vec_fatal(path, lineno, "bad reply hex");
                v->reply_len = (size_t)rn;
            }
        } else {
            vec_fatal(path, lineno, "expected 3 or 4 |-separated fields");
        }
        copy_field(v->name, sizeof v->name, parts[0], path, lineno);
        copy_field(v->transport, sizeof v->transport, parts[1], path, lineno);
        if (strcmp(v->transport, "udp") != 0 && strcmp(v->transport, "tcp") != 0)
            vec_fatal(path, lineno, "transport is not udp or tcp");
        long n = tl_hex(hex, v->bytes, sizeof v->bytes);
        if (n < 0) vec_fatal(path, lineno, "bad hex");
        v->len = (size_t)n;
        tl_nvecs++;
    }
    fclose(f);
    if (tl_nvecs == 0) vec_fatal(path, lineno, "no vectors");
    tl_vecs_loaded = true;
    *out = tl_vecs;
    return tl_nvecs;
}

const tl_vector *tl_vector_get(const char *name) {
    const tl_vector *v;
    size_t n = tl_vectors(&v);
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].name, name) == 0) return &v[i];
    fprintf(stderr, "%s: fatal: no vector named %s\n", tl_name, name);
    exit(2);
}
