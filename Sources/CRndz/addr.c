/* addr.c: parse, resolve and format socket addresses ("1.2.3.4:5", "[2001:db8::1]:5"). */
#include "internal.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

socklen_t rndz__addr_len(const struct sockaddr *sa) {
    if (!sa) return 0;
    if (sa->sa_family == AF_INET) return sizeof(struct sockaddr_in);
    if (sa->sa_family == AF_INET6) return sizeof(struct sockaddr_in6);
    return 0;
}

void rndz__addr_unmap(struct sockaddr_storage *ss) {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (ss->ss_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) return;
    struct sockaddr_in s4 = {.sin_family = AF_INET, .sin_port = s6->sin6_port};
    memcpy(&s4.sin_addr, &s6->sin6_addr.s6_addr[12], 4);
    memset(ss, 0, sizeof *ss);
    memcpy(ss, &s4, sizeof s4);
}

void rndz__addr_map(struct sockaddr_storage *ss) {
    if (ss->ss_family != AF_INET) return;
    struct sockaddr_in s4;
    memcpy(&s4, ss, sizeof s4);
    struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_port = s4.sin_port};
    s6.sin6_addr.s6_addr[10] = 0xff;
    s6.sin6_addr.s6_addr[11] = 0xff;
    memcpy(&s6.sin6_addr.s6_addr[12], &s4.sin_addr, 4);
    memset(ss, 0, sizeof *ss);
    memcpy(ss, &s6, sizeof s6);
}

bool rndz__addr_equal(const struct sockaddr *a, const struct sockaddr *b) {
    struct sockaddr_storage x = {0}, y = {0};
    memcpy(&x, a, rndz__addr_len(a));
    memcpy(&y, b, rndz__addr_len(b));
    rndz__addr_unmap(&x);
    rndz__addr_unmap(&y);
    if (x.ss_family != y.ss_family) return false;
    if (x.ss_family == AF_INET) {
        const struct sockaddr_in *p = (void *)&x, *q = (void *)&y;
        return p->sin_port == q->sin_port && p->sin_addr.s_addr == q->sin_addr.s_addr;
    }
    if (x.ss_family == AF_INET6) {
        const struct sockaddr_in6 *p = (void *)&x, *q = (void *)&y;
        return p->sin6_port == q->sin6_port &&
               memcmp(&p->sin6_addr, &q->sin6_addr, sizeof p->sin6_addr) == 0 &&
               p->sin6_scope_id == q->sin6_scope_id;
    }
    return false;
}

/* Split "host:port" / "[host]:port" into host (copied, NUL-terminated) and port. */
static int split_host_port(const char *text, char *host, size_t cap, uint16_t *port,
                           bool *bracketed) {
    if (!text) return RNDZ_E_BADADDR;
    size_t n = strlen(text);
    if (n == 0 || n > 300) return RNDZ_E_BADADDR;
    const char *colon;
    const char *h = text;
    size_t hlen;
    *bracketed = text[0] == '[';
    if (*bracketed) {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':') return RNDZ_E_BADADDR;
        h = text + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (!colon) return RNDZ_E_BADADDR;
        hlen = (size_t)(colon - text);
        if (memchr(text, ':', hlen)) return RNDZ_E_BADADDR; /* bare IPv6 needs brackets */
    }
    if (hlen == 0 || hlen >= cap) return RNDZ_E_BADADDR;
    memcpy(host, h, hlen);
    host[hlen] = 0;
    const char *p = colon + 1;
    if (!*p || strlen(p) > 5) return RNDZ_E_BADADDR;
    unsigned long v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9') return RNDZ_E_BADADDR;
        v = v * 10 + (unsigned long)(*p - '0');
    }
    if (v > 65535) return RNDZ_E_BADADDR;
    *port = (uint16_t)v;
    return 0;
}

static int parse_numeric(const char *host, bool bracketed, uint16_t port,
                         struct sockaddr_storage *out, socklen_t *len) {
    memset(out, 0, sizeof *out);
    if (!bracketed) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)out;
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1) return RNDZ_E_BADADDR;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        if (len) *len = sizeof *s4;
        return 0;
    }
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)out;
    char buf[INET6_ADDRSTRLEN + 1];
    const char *pct = strchr(host, '%');
    size_t alen = pct ? (size_t)(pct - host) : strlen(host);
    if (alen >= sizeof buf) return RNDZ_E_BADADDR;
    memcpy(buf, host, alen);
    buf[alen] = 0;
    if (inet_pton(AF_INET6, buf, &s6->sin6_addr) != 1) return RNDZ_E_BADADDR;
    if (pct) {
        char *end;
        unsigned long scope = strtoul(pct + 1, &end, 10);
        if (!pct[1] || *end || scope > UINT32_MAX) return RNDZ_E_BADADDR;
        s6->sin6_scope_id = (uint32_t)scope;
    }
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    if (len) *len = sizeof *s6;
    return 0;
}

int rndz_addr_parse(const char *text, struct sockaddr_storage *out, socklen_t *len) {
    if (!out) return -EINVAL;
    char host[256];
    uint16_t port;
    bool br;
    int rc = split_host_port(text, host, sizeof host, &port, &br);
    if (rc) return rc;
    return parse_numeric(host, br, port, out, len);
}

int rndz__addr_resolve_all(const char *text, int family, struct sockaddr_storage *out,
                           size_t max) {
    if (!out || !max) return -EINVAL;
    if (family != AF_UNSPEC && family != AF_INET && family != AF_INET6) return -EAFNOSUPPORT;
    char host[256];
    uint16_t port;
    bool br;
    int rc = split_host_port(text, host, sizeof host, &port, &br);
    if (rc) return rc;
    if (parse_numeric(host, br, port, &out[0], NULL) == 0)
        return family == AF_UNSPEC || out[0].ss_family == family ? 1 : RNDZ_E_RESOLVE;
    if (br) return RNDZ_E_BADADDR;
    struct addrinfo hints = {.ai_family = family, .ai_socktype = SOCK_DGRAM}, *res = NULL;
    int gai = getaddrinfo(host, NULL, &hints, &res);
    if (gai != 0 || !res) {
        RNDZ_LOG(RNDZ_LOG_DEBUG, "resolve %s: %s", host, gai_strerror(gai));
        return RNDZ_E_RESOLVE;
    }
    /* The first answer's family only: a host with an A and an AAAA record is one server,
     * not two. Past `max`, the lowest addresses (so every client keeps the same ones,
     * whatever order the resolver gives). */
    size_t n = 0;
    int fam = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
        if (fam && ai->ai_family != fam) continue;
        fam = ai->ai_family;
        struct sockaddr_storage a;
        memset(&a, 0, sizeof a);
        memcpy(&a, ai->ai_addr, ai->ai_addrlen);
        rndz__addr_set_port(&a, htons(port));
        bool dup = false;
        for (size_t k = 0; k < n && !dup; k++)
            dup = rndz__addr_equal((struct sockaddr *)&out[k], (struct sockaddr *)&a);
        if (dup) continue;
        if (n < max) {
            out[n++] = a;
            continue;
        }
        if (max == 1) continue; /* one address asked: the resolver's first */
        size_t hi = 0; /* replace the highest kept address if this one is lower */
        for (size_t k = 1; k < n; k++)
            if (memcmp(&out[k], &out[hi], sizeof a) > 0) hi = k;
        if (memcmp(&a, &out[hi], sizeof a) < 0) out[hi] = a;
    }
    freeaddrinfo(res);
    return n ? (int)n : RNDZ_E_RESOLVE;
}

int rndz_addr_resolve(const char *text, int family, struct sockaddr_storage *out,
                      socklen_t *len) {
    if (!out) return -EINVAL;
    int rc = rndz__addr_resolve_all(text, family, out, 1);
    if (rc < 0) return rc;
    if (len) *len = rndz__addr_len((struct sockaddr *)out);
    return 0;
}

int rndz_addr_format(const struct sockaddr *sa, char *buf, size_t cap) {
    if (!sa || !buf || cap == 0) return -EINVAL;
    struct sockaddr_storage ss = {0};
    socklen_t sl = rndz__addr_len(sa);
    if (!sl) return -EAFNOSUPPORT;
    memcpy(&ss, sa, sl);
    rndz__addr_unmap(&ss);
    char host[INET6_ADDRSTRLEN];
    int n;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const void *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
        n = snprintf(buf, cap, "%s:%u", host, ntohs(s4->sin_port));
    } else {
        const struct sockaddr_in6 *s6 = (const void *)&ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
        if (s6->sin6_scope_id)
            n = snprintf(buf, cap, "[%s%%%u]:%u", host, s6->sin6_scope_id, ntohs(s6->sin6_port));
        else
            n = snprintf(buf, cap, "[%s]:%u", host, ntohs(s6->sin6_port));
    }
    if (n < 0 || (size_t)n >= cap) return RNDZ_E_NOSPACE;
    return n;
}

bool rndz__addr_is_private(const struct sockaddr_storage *a) {
    struct sockaddr_storage x = *a;
    rndz__addr_unmap(&x);
    if (x.ss_family == AF_INET) {
        uint32_t v = ntohl(((struct sockaddr_in *)&x)->sin_addr.s_addr);
        return (v >> 24) == 10 || (v >> 20) == 0xac1 || (v >> 16) == 0xc0a8 ||
               (v >> 22) == (100u << 2 | 1u); /* 100.64.0.0/10 */
    }
    if (x.ss_family == AF_INET6)
        return (((struct sockaddr_in6 *)&x)->sin6_addr.s6_addr[0] & 0xfe) == 0xfc;
    return false;
}

uint16_t rndz__addr_port(const struct sockaddr_storage *a) {
    if (a->ss_family == AF_INET) return ((const struct sockaddr_in *)a)->sin_port;
    if (a->ss_family == AF_INET6) return ((const struct sockaddr_in6 *)a)->sin6_port;
    return 0;
}

void rndz__addr_set_port(struct sockaddr_storage *a, uint16_t port) {
    if (a->ss_family == AF_INET) ((struct sockaddr_in *)a)->sin_port = port;
    else if (a->ss_family == AF_INET6) ((struct sockaddr_in6 *)a)->sin6_port = port;
}

bool rndz__addr_is_any(const struct sockaddr_storage *a) {
    struct sockaddr_storage u = *a;
    rndz__addr_unmap(&u);
    if (u.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&u)->sin_addr.s_addr == htonl(INADDR_ANY);
    return u.ss_family == AF_INET6 &&
           IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)&u)->sin6_addr);
}
