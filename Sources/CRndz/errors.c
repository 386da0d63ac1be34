/* errors.c: the error table, rndz_strerror(), rndz_err_name(), version. */
#include "internal.h"

#include <errno.h>
#include <string.h>

unsigned rndz_version(void) { return RNDZ_VERSION_NUMBER; }
const char *rndz_version_string(void) { return RNDZ_VERSION_STRING; }

/* The errno values rndz returns as -errno, with names (strerror() is not thread-safe enough
 * to hand out, and its text is locale dependent). */
#define RNDZ_OS_ERRNO_MAP(XX)                                                                 \
    XX(EPERM) XX(ENOENT) XX(EINTR) XX(EIO) XX(EBADF) XX(EAGAIN) XX(ENOMEM) XX(EACCES)        \
    XX(EFAULT) XX(EBUSY) XX(EEXIST) XX(EINVAL) XX(ENFILE) XX(EMFILE) XX(ENOSPC) XX(EPIPE)    \
    XX(ENOSYS) XX(ENOTSOCK) XX(EMSGSIZE) XX(EPROTONOSUPPORT) XX(EOPNOTSUPP)                  \
    XX(EAFNOSUPPORT) XX(EADDRINUSE) XX(EADDRNOTAVAIL) XX(ENETDOWN) XX(ENETUNREACH)           \
    XX(ECONNABORTED) XX(ECONNRESET) XX(ENOBUFS) XX(EISCONN) XX(ENOTCONN) XX(ETIMEDOUT)       \
    XX(ECONNREFUSED) XX(EHOSTUNREACH) XX(EALREADY) XX(EINPROGRESS) XX(ECANCELED)

const char *rndz_strerror(int err) {
    switch (err) {
    case 0: return "success";
#define XX(name, val, s) case RNDZ_E_##name: return s;
    RNDZ_ERRNO_MAP(XX)
#undef XX
    }
    /* OS errors: a fixed English text per code (strerror_r output is locale dependent). */
    switch (-err) {
    case EPERM: return "operation not permitted";
    case ENOENT: return "no such file or directory";
    case EINTR: return "interrupted system call";
    case EBADF: return "bad file descriptor";
    case EAGAIN: return "resource temporarily unavailable";
    case ENOMEM: return "out of memory";
    case EACCES: return "permission denied";
    case EINVAL: return "invalid argument";
    case ENFILE: return "too many open files in system";
    case EMFILE: return "too many open files";
    case EPIPE: return "broken pipe";
    case EMSGSIZE: return "message too long";
    case EAFNOSUPPORT: return "address family not supported";
    case EADDRINUSE: return "address already in use";
    case EADDRNOTAVAIL: return "address not available";
    case ENETUNREACH: return "network is unreachable";
    case ECONNRESET: return "connection reset by peer";
    case ECONNREFUSED: return "connection refused";
    case EHOSTUNREACH: return "no route to host";
    case ETIMEDOUT: return "connection timed out";
    case ENOTCONN: return "socket is not connected";
    case ECANCELED: return "operation canceled";
    case EINPROGRESS: return "operation in progress";
    case ENOBUFS: return "no buffer space available";
    default: return "unknown error";
    }
}

const char *rndz_err_name(int err) {
    switch (err) {
    case 0: return "OK";
#define XX(name, val, s) case RNDZ_E_##name: return "RNDZ_E_" #name;
    RNDZ_ERRNO_MAP(XX)
#undef XX
#define XX(e) case -e: return #e;
    RNDZ_OS_ERRNO_MAP(XX)
#undef XX
    default: return "UNKNOWN";
    }
}
