# Fuzzing (Tests/fuzz/README.md), included by the Makefile.
#   make fuzz-replay                 every seed and regression input through every target
#                                    (plain $(CC), no libFuzzer; part of `make check`)
#   make fuzz FUZZ_SECONDS=600       build the libFuzzer targets with clang and run each in turn
#   make fuzz-build                  only build them
#   make fuzz-coverage               source coverage the corpora reach (seeds + what fuzz found)
#   make fuzz-cli FUZZ_SECONDS=600   rndz-cli's argument parsing (Tests/fuzz/cli_args.py; it
#                                    runs the built binary: $RNDZ_CLI, or build it first)
FUZZ_TARGETS  = fuzz_wire fuzz_frame fuzz_addr fuzz_server_udp fuzz_server_tcp fuzz_relay
FUZZ_CC      ?= $(firstword $(wildcard /opt/swift/usr/bin/clang) clang)
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_NICE    ?=
FUZZ_SAN      = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
# The toolchain's own linker when it has one (the system's gold warns about sanitizer symbols).
FUZZ_LD      ?= $(if $(wildcard $(dir $(FUZZ_CC))ld.lld),-fuse-ld=lld)
FUZZ_INC      = -std=c11 -D_GNU_SOURCE $(WARN) -Iinclude -ISources/CRndz -ITests/fuzz
FUZZ_DEPS     = Tests/fuzz/fuzz.h Tests/fuzz/fuzz_server.h $(HDRS)

FUZZ_REPLAY   = $(FUZZ_TARGETS:%=$(BUILD)/fuzz/replay_%)
FUZZ_BINS     = $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/%)

.PHONY: fuzz fuzz-build fuzz-lib fuzz-replay fuzz-cli fuzz-coverage

# The replay drivers link the static library: fuzz_server_udp calls internal functions.
$(FUZZ_REPLAY): $(BUILD)/fuzz/replay_%: Tests/fuzz/%.c Tests/fuzz/replay.c $(FUZZ_DEPS) \
                $(BUILD)/librndz.a
	@mkdir -p $(dir $@)
	$(CC) $(FUZZ_INC) $(CFLAGS) Tests/fuzz/$*.c Tests/fuzz/replay.c $(BUILD)/librndz.a \
	    -lpthread -o $@

fuzz-replay: $(FUZZ_REPLAY)
	@fail=0; for t in $(FUZZ_TARGETS); do \
	  if out=$$($(VALGRIND) $(BUILD)/fuzz/replay_$$t Tests/fuzz/corpus/$$t Tests/fuzz/regressions/$$t); \
	  then echo "PASS fuzz-replay $$t ($${out#*: })"; else echo "FAIL fuzz-replay $$t"; fail=1; fi; \
	done; exit $$fail

# libFuzzer builds: the library's objects again (the Makefile's own rules, in a build dir of
# their own), with clang and coverage instrumentation.
fuzz-lib:
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD)/lib CC=$(FUZZ_CC) \
	    CFLAGS="-O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link" $(FUZZ_BUILD)/lib/librndz.a

$(FUZZ_BINS): $(FUZZ_BUILD)/%: Tests/fuzz/%.c $(FUZZ_DEPS) $(SRCS) | fuzz-lib
	$(FUZZ_CC) $(FUZZ_INC) -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer $(FUZZ_LD) \
	    Tests/fuzz/$*.c $(FUZZ_BUILD)/lib/librndz.a -lpthread -o $@

fuzz-build: $(FUZZ_BINS)

# One target at a time (never two fuzzers at once), FUZZ_SECONDS each; a table at the end.
fuzz: fuzz-build
	FUZZ_BUILD=$(FUZZ_BUILD) FUZZ_NICE="$(FUZZ_NICE)" \
	    Tests/fuzz/run $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-coverage:
	FUZZ_CC=$(FUZZ_CC) FUZZ_BUILD=$(FUZZ_BUILD) Tests/fuzz/coverage $(FUZZ_TARGETS)

fuzz-cli:
	$(FUZZ_NICE) python3 Tests/fuzz/cli_args.py --seconds $(FUZZ_SECONDS)
