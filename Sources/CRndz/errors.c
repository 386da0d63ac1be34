/* errors.c: the error table, rndz_strerror(), rndz_err_name(), version. */
#include "internal.h"

#include <string.h>

unsigned rndz_version(void) { return RNDZ_VERSION_NUMBER; }
const char *rndz_version_string(void) { return RNDZ_VERSION_STRING; }

const char *rndz_strerror(int err) {
    switch (err) {
    case 0: return "success";
#define XX(name, val, s) case RNDZ_E_##name: return s;
    RNDZ_ERRNO_MAP(XX)
#undef XX
    }
    /* OS errors (-errno): glibc's fixed English text, static and thread-safe (strerror() is
     * neither guaranteed thread-safe nor locale independent). */
    const char *d = err < 0 && err > -4096 ? strerrordesc_np(-err) : NULL;
    return d ? d : "unknown error";
}

const char *rndz_err_name(int err) {
    switch (err) {
    case 0: return "OK";
#define XX(name, val, s) case RNDZ_E_##name: return "RNDZ_E_" #name;
    RNDZ_ERRNO_MAP(XX)
#undef XX
    }
    const char *n = err < 0 && err > -4096 ? strerrorname_np(-err) : NULL;
    return n ? n : "UNKNOWN";
}
