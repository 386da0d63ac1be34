/* fuzz_addr.c: address text (rndz_addr_parse / rndz_addr_format), and the log level parser.
 *
 * 1. The input, copied and NUL-terminated, is parsed. If it parses: the reported length fits
 *    the family, formatting it succeeds, and parsing the text again gives the same address
 *    (IPv4-mapped IPv6 comes back as IPv4, as documented). Formatting into a buffer one byte
 *    short says NOSPACE and writes nothing past it (ASan, exact-size heap buffer).
 * 2. The input's first bytes, as a raw sockaddr_in6 or sockaddr_in (byte 0 picks the family),
 *    are formatted; the text must parse back to the same address, port and scope.
 * 3. rndz_log_level_parse on the same text returns a level 0..4 or a negative error.
 * rndz_addr_resolve is not fuzzed: it would send name lookups to the network.
 */
#include <rndz.h>

#include "fuzz.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

/* Normal form for comparison: IPv4-mapped IPv6 -> IPv4; only family, address, port and (v6)
 * scope kept. */
static struct sockaddr_storage normal(const struct sockaddr_storage *in) {
    struct sockaddr_storage out;
    memset(&out, 0, sizeof out);
    if (in->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)in;
        struct sockaddr_in *b = (void *)&out;
        b->sin_family = AF_INET;
        b->sin_port = a->sin_port;
        b->sin_addr = a->sin_addr;
    } else if (in->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)in;
        if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
            struct sockaddr_in *b = (void *)&out;
            b->sin_family = AF_INET;
            b->sin_port = a->sin6_port;
            memcpy(&b->sin_addr, &a->sin6_addr.s6_addr[12], 4);
        } else {
            struct sockaddr_in6 *b = (void *)&out;
            b->sin6_family = AF_INET6;
            b->sin6_port = a->sin6_port;
            b->sin6_addr = a->sin6_addr;
            b->sin6_scope_id = a->sin6_scope_id;
        }
    } else {
        FUZZ_CHECK(0, "unexpected family %d", in->ss_family);
    }
    return out;
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    struct sockaddr_storage x = normal(a), y = normal(b);
    return memcmp(&x, &y, sizeof x) == 0;
}

/* Format `ss`, check the short-buffer behaviour, parse the text back and compare. */
static void format_roundtrip(const struct sockaddr_storage *ss) {
    char text[RNDZ_ADDRSTRLEN];
    int n = rndz_addr_format((const struct sockaddr *)ss, text, sizeof text);
    FUZZ_CHECK(n > 0 && n < RNDZ_ADDRSTRLEN, "format returned %d", n);
    FUZZ_CHECK(strlen(text) == (size_t)n, "format length %d, text \"%s\"", n, text);

    char *tight = malloc((size_t)n);
    FUZZ_CHECK(tight != NULL, "malloc");
    int rc = rndz_addr_format((const struct sockaddr *)ss, tight, (size_t)n);
    FUZZ_CHECK(rc == RNDZ_E_NOSPACE, "format into %d bytes returned %d", n, rc);
    free(tight);

    struct sockaddr_storage back;
    socklen_t blen = 0;
    rc = rndz_addr_parse(text, &back, &blen);
    FUZZ_CHECK(rc == 0, "formatted text \"%s\" does not parse: %d", text, rc);
    FUZZ_CHECK(same_addr(ss, &back), "\"%s\" parses to another address", text);
}

static void parse_text(const char *text) {
    struct sockaddr_storage ss;
    socklen_t len = 0;
    int rc = rndz_addr_parse(text, &ss, &len);
    FUZZ_CHECK(rc == 0 || rc == RNDZ_E_BADADDR, "parse returned %d", rc);
    struct sockaddr_storage ss2;
    FUZZ_CHECK(rndz_addr_parse(text, &ss2, NULL) == rc, "parse differs with len == NULL");
    if (rc) return;
    FUZZ_CHECK(memcmp(&ss, &ss2, sizeof ss) == 0, "parse result differs with len == NULL");
    FUZZ_CHECK((ss.ss_family == AF_INET && len == sizeof(struct sockaddr_in)) ||
                   (ss.ss_family == AF_INET6 && len == sizeof(struct sockaddr_in6)),
               "family %d with length %u", ss.ss_family, (unsigned)len);
    format_roundtrip(&ss);
}

static void format_raw(const uint8_t *data, size_t size) {
    if (size < 1) return;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (data[0] & 1) {
        struct sockaddr_in6 s6;
        memset(&s6, 0, sizeof s6);
        size_t n = size - 1 < sizeof s6 ? size - 1 : sizeof s6;
        memcpy(&s6, data + 1, n);
        s6.sin6_family = AF_INET6;
        memcpy(&ss, &s6, sizeof s6);
    } else {
        struct sockaddr_in s4;
        memset(&s4, 0, sizeof s4);
        size_t n = size - 1 < sizeof s4 ? size - 1 : sizeof s4;
        memcpy(&s4, data + 1, n);
        s4.sin_family = AF_INET;
        memcpy(&ss, &s4, sizeof s4);
    }
    format_roundtrip(&ss);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    FUZZ_CHECK(text != NULL, "malloc");
    if (size) memcpy(text, data, size);
    text[size] = 0;
    parse_text(text);
    int lvl = rndz_log_level_parse(text);
    FUZZ_CHECK(lvl < 0 || lvl <= RNDZ_LOG_TRACE, "log level %d", lvl);
    free(text);
    format_raw(data, size);
    return 0;
}
