/* fuzz.h: shared by the fuzz targets in Tests/fuzz/ (libFuzzer entry points; replay.c runs
 * them without libFuzzer). A failed property prints what broke and aborts, so libFuzzer
 * saves the input and the replay driver fails. */
#ifndef RNDZ_FUZZ_H
#define RNDZ_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond, ...)                                                                 \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: property failed: %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fputc('\n', stderr);                                                              \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

#endif
