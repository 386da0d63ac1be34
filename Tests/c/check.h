/* check.h: the one check style of every C test program, the C tests (testlib.h) and the unit
 * tests (Tests/unit/unit.h) alike.
 *
 *   CHECK(cond)                 cond is true
 *   CHECK_EQ_INT(a, b)          integers; prints both values
 *   CHECK_RC(a, b)              return codes; prints both with rndz_err_name()
 *   CHECK_EQ_MEM(a, an, b, bn)  byte strings; prints both in hex
 *   CHECK_EQ_STR(a, b)          C strings (NULL never equals)
 *   CHECK_EQ_SN(s, n, cstr)     a counted string equal to a C string
 *
 * Each is an expression: it counts one check, returns whether it held, and on a failure
 * prints "file:line: FAIL [case]: what" to stderr (the [case] part only after tl_case()).
 * tl_summary(name) prints "name: N checks, M failed" and returns the exit status.
 *
 * One program defines TL_CHECK_IMPLEMENTATION before including this header, once: testlib.c
 * for the C tests, unit.h for each unit test (a single translation unit).
 */
#ifndef RNDZ_CHECK_H
#define RNDZ_CHECK_H

#include <rndz.h>

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

extern int tl_failures;
extern int tl_checks;

/* Name the case currently running, shown with every failure ("" clears it). */
void tl_case(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print "name: N checks, M failed" to stdout; 0 if all passed, else 1. */
int tl_summary(const char *name);
/* Format bytes as "0a 02 63 31" into buf (truncated with "..." if cap is short). */
const char *tl_tohex(const void *data, size_t len, char *buf, size_t cap);

bool tl_check(bool ok, const char *file, int line, const char *expr);
bool tl_check_eq_int(long long a, long long b, const char *file, int line, const char *ea,
                     const char *eb);
bool tl_check_eq_rc(long long a, long long b, const char *file, int line, const char *ea,
                    const char *eb);
bool tl_check_eq_mem(const void *a, size_t alen, const void *b, size_t blen, const char *file,
                     int line, const char *ea, const char *eb);
bool tl_check_eq_str(const char *a, const char *b, const char *file, int line, const char *ea,
                     const char *eb);

#define CHECK(c) tl_check(!!(c), __FILE__, __LINE__, #c)
#define CHECK_EQ_INT(a, b) tl_check_eq_int((long long)(a), (long long)(b), __FILE__, __LINE__, #a, #b)
/* Like CHECK_EQ_INT but prints rndz_err_name() of both sides. */
#define CHECK_RC(a, b) tl_check_eq_rc((long long)(a), (long long)(b), __FILE__, __LINE__, #a, #b)
#define CHECK_EQ_MEM(a, alen, b, blen)                                                       \
    tl_check_eq_mem((a), (alen), (b), (blen), __FILE__, __LINE__, #a, #b)
#define CHECK_EQ_STR(a, b) tl_check_eq_str((a), (b), __FILE__, __LINE__, #a, #b)
/* A counted string (not NUL-terminated) equal to a C string. */
#define CHECK_EQ_SN(s, n, cstr) CHECK_EQ_MEM((s), (n), (cstr), strlen(cstr))

#endif

#if defined(TL_CHECK_IMPLEMENTATION) && !defined(RNDZ_CHECK_IMPLEMENTED)
#define RNDZ_CHECK_IMPLEMENTED

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

int tl_failures;
int tl_checks;
static char tl_case_name[160];

void tl_case(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tl_case_name, sizeof tl_case_name, fmt, ap);
    va_end(ap);
}

int tl_summary(const char *name) {
    printf("%s: %d checks, %d failed\n", name, tl_checks, tl_failures);
    fflush(stdout);
    return tl_failures ? 1 : 0;
}

const char *tl_tohex(const void *data, size_t len, char *buf, size_t cap) {
    const uint8_t *d = data;
    size_t o = 0;
    buf[0] = 0;
    for (size_t i = 0; i < len; i++) {
        if (o + 8 >= cap) {
            snprintf(buf + o, cap - o, "...");
            break;
        }
        o += (size_t)snprintf(buf + o, cap - o, i ? " %02x" : "%02x", d[i]);
    }
    return buf;
}

static void tl_fail_head(const char *file, int line) {
    tl_failures++;
    fprintf(stderr, "%s:%d: FAIL", file, line);
    if (tl_case_name[0]) fprintf(stderr, " [%s]", tl_case_name);
    fputs(": ", stderr);
}

bool tl_check(bool ok, const char *file, int line, const char *expr) {
    tl_checks++;
    if (ok) return true;
    tl_fail_head(file, line);
    fprintf(stderr, "%s\n", expr);
    return false;
}

bool tl_check_eq_int(long long a, long long b, const char *file, int line, const char *ea,
                     const char *eb) {
    tl_checks++;
    if (a == b) return true;
    tl_fail_head(file, line);
    fprintf(stderr, "%s == %s: got %lld, want %lld\n", ea, eb, a, b);
    return false;
}

bool tl_check_eq_rc(long long a, long long b, const char *file, int line, const char *ea,
                    const char *eb) {
    tl_checks++;
    if (a == b) return true;
    tl_fail_head(file, line);
    fprintf(stderr, "%s == %s: got %lld (%s), want %lld (%s)\n", ea, eb, a,
            a < 0 && a > -100000 ? rndz_err_name((int)a) : "-", b,
            b < 0 && b > -100000 ? rndz_err_name((int)b) : "-");
    return false;
}

bool tl_check_eq_mem(const void *a, size_t alen, const void *b, size_t blen, const char *file,
                     int line, const char *ea, const char *eb) {
    tl_checks++;
    if (alen == blen && (alen == 0 || memcmp(a, b, alen) == 0)) return true;
    char ha[512], hb[512];
    tl_fail_head(file, line);
    fprintf(stderr, "%s == %s:\n    got  (%zu) %s\n    want (%zu) %s\n", ea, eb, alen,
            tl_tohex(a, alen, ha, sizeof ha), blen, tl_tohex(b, blen, hb, sizeof hb));
    return false;
}

bool tl_check_eq_str(const char *a, const char *b, const char *file, int line, const char *ea,
                     const char *eb) {
    tl_checks++;
    if (a && b && strcmp(a, b) == 0) return true;
    tl_fail_head(file, line);
    fprintf(stderr, "%s == %s: got \"%s\", want \"%s\"\n", ea, eb, a ? a : "(null)",
            b ? b : "(null)");
    return false;
}

#endif
