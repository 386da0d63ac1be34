/* test_addr.c: address parse/format/resolve, error names and texts, version. */
#include "testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Parse, check family/host/port/scope, then format back and compare with `canon`. */
static void good(const char *text, int family, const char *host, int port, uint32_t scope,
                 const char *canon) {
    tl_case("parse %s", text);
    struct sockaddr_storage ss;
    memset(&ss, 0x5a, sizeof ss);
    socklen_t sl = 0;
    int rc = rndz_addr_parse(text, &ss, &sl);
    if (!CHECK_RC(rc, 0)) return;
    CHECK_EQ_INT(ss.ss_family, family);
    char h[INET6_ADDRSTRLEN] = "";
    if (family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        CHECK_EQ_INT(sl, sizeof *s4);
        inet_ntop(AF_INET, &s4->sin_addr, h, sizeof h);
        CHECK_EQ_INT(ntohs(s4->sin_port), port);
        static const char zero[8] = {0};
        CHECK_EQ_MEM(s4->sin_zero, 8, zero, 8); /* no garbage left in the struct */
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        CHECK_EQ_INT(sl, sizeof *s6);
        inet_ntop(AF_INET6, &s6->sin6_addr, h, sizeof h);
        CHECK_EQ_INT(ntohs(s6->sin6_port), port);
        CHECK_EQ_INT(s6->sin6_scope_id, scope);
        CHECK_EQ_INT(s6->sin6_flowinfo, 0);
    }
    CHECK_EQ_STR(h, host);
    char buf[RNDZ_ADDRSTRLEN];
    int n = rndz_addr_format((struct sockaddr *)&ss, buf, sizeof buf);
    CHECK_RC(n, (int)strlen(canon));
    if (n >= 0) CHECK_EQ_STR(buf, canon);
    /* len may be NULL */
    CHECK_RC(rndz_addr_parse(text, &ss, NULL), 0);
    /* the resolver takes numeric text as is */
    CHECK_RC(rndz_addr_resolve(text, AF_UNSPEC, &ss, &sl), 0);
    n = rndz_addr_format((struct sockaddr *)&ss, buf, sizeof buf);
    if (n >= 0) CHECK_EQ_STR(buf, canon);
}

static void bad(const char *text) {
    tl_case("parse bad \"%s\"", text ? text : "(null)");
    struct sockaddr_storage ss;
    socklen_t sl;
    CHECK_RC(rndz_addr_parse(text, &ss, &sl), RNDZ_E_BADADDR);
}

static void test_parse(void) {
    good("1.2.3.4:5678", AF_INET, "1.2.3.4", 5678, 0, "1.2.3.4:5678");
    good("127.0.0.1:0", AF_INET, "127.0.0.1", 0, 0, "127.0.0.1:0");
    good("0.0.0.0:65535", AF_INET, "0.0.0.0", 65535, 0, "0.0.0.0:65535");
    good("255.255.255.255:1", AF_INET, "255.255.255.255", 1, 0, "255.255.255.255:1");
    good("10.0.0.1:00080", AF_INET, "10.0.0.1", 80, 0, "10.0.0.1:80");
    good("[::1]:8888", AF_INET6, "::1", 8888, 0, "[::1]:8888");
    good("[::]:0", AF_INET6, "::", 0, 0, "[::]:0");
    good("[2001:db8::1]:5678", AF_INET6, "2001:db8::1", 5678, 0, "[2001:db8::1]:5678");
    good("[2001:DB8:0:0:0:0:0:1]:65535", AF_INET6, "2001:db8::1", 65535, 0,
         "[2001:db8::1]:65535");
    good("[fe80::1%2]:9", AF_INET6, "fe80::1", 9, 2, "[fe80::1%2]:9");
    good("[fe80::abcd%4294967295]:1", AF_INET6, "fe80::abcd", 1, 4294967295u,
         "[fe80::abcd%4294967295]:1");
    /* IPv4-mapped: parsed as IPv6, written in IPv4 form */
    good("[::ffff:1.2.3.4]:5", AF_INET6, "::ffff:1.2.3.4", 5, 0, "1.2.3.4:5");
    good("[::ffff:7f00:1]:80", AF_INET6, "::ffff:127.0.0.1", 80, 0, "127.0.0.1:80");

    bad(NULL);
    bad("");
    bad("1.2.3.4");              /* no port */
    bad("1.2.3.4:");             /* empty port */
    bad("1.2.3.4:65536");        /* port too big */
    bad("1.2.3.4:99999");
    bad("1.2.3.4:123456");
    bad("1.2.3.4:-1");
    bad("1.2.3.4:+80");
    bad("1.2.3.4:8x");
    bad("1.2.3.4: 80");
    bad("1.2.3.4:0x50");
    bad(":80");                  /* empty host */
    bad("[]:80");
    bad("::1:80");               /* bare IPv6 needs brackets */
    bad("2001:db8::1:80");
    bad("[::1]");                /* no port */
    bad("[::1]:");
    bad("[::1]80");
    bad("[::1]:65536");
    bad("[::1");
    bad("::1]:80");
    bad("[1.2.3.4]:80");         /* IPv4 in brackets */
    bad("[::1]:80x");
    bad("[fe80::1%]:80");        /* empty scope */
    bad("[fe80::1%x]:80");       /* scope names are not numeric */
    bad("[::g]:80");
    bad("1.2.3:80");
    bad("1.2.3.4.5:80");
    bad("256.1.1.1:80");
    bad("localhost:80");         /* parse does no name lookup */
    bad("garbage");
    bad(" 1.2.3.4:80");
    bad("1.2.3.4:80 ");
    bad("1.2.3.4:80\n");
    tl_case("%s", "");
}

static void test_format(void) {
    char buf[RNDZ_ADDRSTRLEN];
    struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_port = htons(65535)};
    memset(&s6.sin6_addr, 0xff, 16);
    s6.sin6_scope_id = 4294967295u;
    tl_case("format the longest IPv6 text");
    int n = rndz_addr_format((struct sockaddr *)&s6, buf, sizeof buf);
    const char *want = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535";
    CHECK_RC(n, (int)strlen(want));
    CHECK_EQ_STR(buf, want);
    CHECK((size_t)n < RNDZ_ADDRSTRLEN);

    tl_case("format into a short buffer");
    struct sockaddr_in s4 = {.sin_family = AF_INET, .sin_port = htons(5678)};
    inet_pton(AF_INET, "1.2.3.4", &s4.sin_addr);
    char small[32];
    memset(small, 'Z', sizeof small);
    CHECK_RC(rndz_addr_format((struct sockaddr *)&s4, small, 12), RNDZ_E_NOSPACE);
    CHECK_EQ_INT(small[12], 'Z'); /* nothing past cap */
    CHECK_RC(rndz_addr_format((struct sockaddr *)&s4, small, 13), 12); /* "1.2.3.4:5678" */
    CHECK_EQ_STR(small, "1.2.3.4:5678");

    tl_case("format bad arguments");
    struct sockaddr_storage un = {0};
    un.ss_family = AF_UNIX;
    CHECK(rndz_addr_format((struct sockaddr *)&un, buf, sizeof buf) < 0);
    CHECK(rndz_addr_format(NULL, buf, sizeof buf) < 0);
    CHECK(rndz_addr_format((struct sockaddr *)&s4, NULL, 10) < 0);
    CHECK(rndz_addr_parse("1.2.3.4:5", NULL, NULL) < 0);
    tl_case("%s", "");
}

static void test_resolve(void) {
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    char buf[RNDZ_ADDRSTRLEN];
    tl_case("resolve localhost:80 AF_INET");
    int rc = rndz_addr_resolve("localhost:80", AF_INET, &ss, &sl);
    CHECK_RC(rc, 0);
    if (rc == 0) {
        CHECK_EQ_INT(ss.ss_family, AF_INET);
        CHECK_EQ_INT(sl, sizeof(struct sockaddr_in));
        rndz_addr_format((struct sockaddr *)&ss, buf, sizeof buf);
        CHECK_EQ_STR(buf, "127.0.0.1:80");
    }
    tl_case("resolve numeric");
    CHECK_RC(rndz_addr_resolve("10.1.2.3:4", AF_UNSPEC, &ss, &sl), 0);
    rndz_addr_format((struct sockaddr *)&ss, buf, sizeof buf);
    CHECK_EQ_STR(buf, "10.1.2.3:4");
    tl_case("resolve bad text");
    CHECK_RC(rndz_addr_resolve("localhost", AF_INET, &ss, &sl), RNDZ_E_BADADDR);
    CHECK_RC(rndz_addr_resolve("localhost:65536", AF_INET, &ss, &sl), RNDZ_E_BADADDR);
    CHECK_RC(rndz_addr_resolve("[localhost]:80", AF_INET, &ss, &sl), RNDZ_E_BADADDR);
    CHECK_RC(rndz_addr_resolve("", AF_INET, &ss, &sl), RNDZ_E_BADADDR);
    CHECK_RC(rndz_addr_resolve(":80", AF_INET, &ss, &sl), RNDZ_E_BADADDR);
    tl_case("%s", "");
}

static void test_errors(void) {
    int count = 0;
#define XX(name, val, s)                                                                    \
    do {                                                                                    \
        tl_case("error %s", #name);                                                         \
        CHECK_EQ_INT(RNDZ_E_##name, val);                                                   \
        CHECK(val < -1000 && val > RNDZ_E_LAST_);                                           \
        CHECK_EQ_STR(rndz_strerror(val), s);                                                \
        CHECK_EQ_STR(rndz_err_name(val), "RNDZ_E_" #name);                                  \
        count++;                                                                            \
    } while (0);
    RNDZ_ERRNO_MAP(XX)
#undef XX
    tl_case("error table");
    CHECK_EQ_INT(count, 19);
    CHECK_EQ_INT(count, -1001 - RNDZ_E_LAST_); /* codes are dense, -1001 .. LAST_+1 */
    /* unknown codes */
    CHECK_EQ_STR(rndz_strerror(RNDZ_E_LAST_), "unknown error");
    CHECK_EQ_STR(rndz_strerror(-1000), "unknown error");
    CHECK_EQ_STR(rndz_strerror(-99999), "unknown error");
    CHECK_EQ_STR(rndz_strerror(12345), "unknown error");
    CHECK(rndz_err_name(-99999) != NULL);
    CHECK(rndz_err_name(RNDZ_E_LAST_) != NULL);
    CHECK(rndz_strerror(0) != NULL);
    /* OS errors */
    CHECK_EQ_STR(rndz_err_name(-ECONNREFUSED), "ECONNREFUSED");
    CHECK_EQ_STR(rndz_err_name(-EINVAL), "EINVAL");
    CHECK_EQ_STR(rndz_err_name(-EADDRINUSE), "EADDRINUSE");
    CHECK_EQ_STR(rndz_err_name(-EAFNOSUPPORT), "EAFNOSUPPORT");
    CHECK_EQ_STR(rndz_err_name(-ENOMEM), "ENOMEM");
    CHECK_EQ_STR(rndz_err_name(-EMFILE), "EMFILE");
    /* fixed English text, whatever the capitalisation */
    CHECK(strcasecmp(rndz_strerror(-ECONNREFUSED), "connection refused") == 0);
    CHECK(strcasecmp(rndz_strerror(-EINVAL), "invalid argument") == 0);
    CHECK(strcasecmp(rndz_strerror(-EADDRINUSE), "address already in use") == 0);
    /* Every OS error that has a name also has a description (the header: rndz_strerror
     * describes "any code returned by rndz (negative errno included)"). */
    for (int e = 1; e < 200; e++) {
        const char *name = rndz_err_name(-e);
        if (strcmp(name, "UNKNOWN") == 0) continue;
        tl_case("strerror(-%s)", name);
        CHECK(strcmp(rndz_strerror(-e), "unknown error") != 0);
        CHECK(strncmp(name, "RNDZ_E_", 7) != 0);
    }
    tl_case("%s", "");
}

static void test_version(void) {
    tl_case("version");
    CHECK_EQ_INT(rndz_version(), RNDZ_VERSION_NUMBER);
    CHECK_EQ_INT(rndz_version() >> 16, RNDZ_VERSION_MAJOR);
    CHECK_EQ_INT((rndz_version() >> 8) & 0xff, RNDZ_VERSION_MINOR);
    CHECK_EQ_INT(rndz_version() & 0xff, RNDZ_VERSION_PATCH);
    CHECK_EQ_STR(rndz_version_string(), RNDZ_VERSION_STRING);
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", RNDZ_VERSION_MAJOR, RNDZ_VERSION_MINOR,
             RNDZ_VERSION_PATCH);
    CHECK_EQ_STR(RNDZ_VERSION_STRING, want);

    tl_case("log level parse");
    CHECK_EQ_INT(rndz_log_level_parse("error"), RNDZ_LOG_ERROR);
    CHECK_EQ_INT(rndz_log_level_parse("warn"), RNDZ_LOG_WARN);
    CHECK_EQ_INT(rndz_log_level_parse("info"), RNDZ_LOG_INFO);
    CHECK_EQ_INT(rndz_log_level_parse("debug"), RNDZ_LOG_DEBUG);
    CHECK_EQ_INT(rndz_log_level_parse("trace"), RNDZ_LOG_TRACE);
    CHECK_EQ_INT(rndz_log_level_parse("3"), RNDZ_LOG_DEBUG);
    CHECK(rndz_log_level_parse("loud") < 0);
    CHECK(rndz_log_level_parse("5") < 0);
    CHECK(rndz_log_level_parse("") < 0);
    CHECK(rndz_log_level_parse(NULL) < 0);
    tl_case("%s", "");
}

int main(void) {
    tl_init("test_addr", 20);
    test_parse();
    test_format();
    test_resolve();
    test_errors();
    test_version();
    return tl_finish();
}
