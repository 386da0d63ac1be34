# rndz: the shipped C library (no Swift runtime), its install, and the test entry points.
#   make                     build build/librndz.so
#   make install PREFIX=DIR  install lib, header, pkg-config file, and rndz-cli (linked with
#                            the Swift runtime inside: runs without a toolchain), its man page
#                            and an example systemd unit (install-lib: the C part only)
#   make check               C tests against a staged install, through pkg-config
#   make soak                1 GB of random and mutated datagrams against the server (SOAK_MB)
#   make test                everything: C tests, Swift tests, the NAT lab
PREFIX    ?= /usr/local
CC        ?= cc
VERSION    = 0.3.0
ABI_MAJOR  = 0
BUILD     ?= build
CFLAGS    ?= -O2 -g
WARN       = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter
RNDZ_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) -fPIC -fvisibility=hidden -Iinclude -ISources/CRndz

SRCS   = $(sort $(wildcard Sources/CRndz/*.c))
OBJS   = $(SRCS:Sources/CRndz/%.c=$(BUILD)/obj/%.o)
HDRS   = include/rndz.h $(wildcard Sources/CRndz/*.h)
SONAME = librndz.so.$(ABI_MAJOR)
LIB    = $(BUILD)/librndz.so.$(VERSION)
STAGE  = $(abspath $(BUILD)/stage)

.PHONY: all install install-lib install-cli install-check check test swift-test natlab clean header-check lib-check readme-check demo bench relay-bench forward-bench unit soak
all: $(LIB) $(BUILD)/librndz.a

$(BUILD)/obj/%.o: Sources/CRndz/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(RNDZ_CFLAGS) $(CFLAGS) -c $< -o $@

$(LIB): $(OBJS) mk/rndz.map
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=mk/rndz.map -Wl,-z,defs \
	    $(CFLAGS) -o $@ $(OBJS) -lpthread
	ln -sf librndz.so.$(VERSION) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/librndz.so

$(BUILD)/librndz.a: $(OBJS)
	rm -f $@ && ar rcs $@ $(OBJS)

install: install-lib install-cli

# rndz-cli for machines without a Swift toolchain: the Swift standard library linked in
# (ldd lists no libswift), its man page, and an example systemd unit for the server.
SWIFT     ?= $(firstword $(wildcard /opt/swift/usr/bin/swift) swift)
CLI_STATIC = .build/release/rndz-cli
install-cli:
	$(SWIFT) build -c release --static-swift-stdlib --product rndz-cli
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
	    $(DESTDIR)$(PREFIX)/share/rndz
	install -m 0755 $(CLI_STATIC) $(DESTDIR)$(PREFIX)/bin/rndz-cli
	sed -e 's|@VERSION@|$(VERSION)|' mk/rndz-cli.1 > $(DESTDIR)$(PREFIX)/share/man/man1/rndz-cli.1
	sed -e 's|@PREFIX@|$(PREFIX)|' mk/rndz-server.service \
	    > $(DESTDIR)$(PREFIX)/share/rndz/rndz-server.service

# make install into a scratch prefix, then run the CLI with no toolchain on PATH and nothing
# but the system's libraries in reach; the man page must render.
install-check:
	scripts/install-check

install-lib: all
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 0755 $(LIB) $(DESTDIR)$(PREFIX)/lib/
	ln -sf librndz.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(PREFIX)/lib/librndz.so
	install -m 0644 include/rndz.h $(DESTDIR)$(PREFIX)/include/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' mk/rndz.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/rndz.pc

# The header compiles on its own, strictly.
header-check:
	printf '#include <rndz.h>\nint main(void){return rndz_version()==0;}\n' > $(BUILD)/hdr.c
	$(CC) -std=c11 -Wall -Wextra -Werror -pedantic -Iinclude -c $(BUILD)/hdr.c -o $(BUILD)/hdr.o

# The shipped library needs no Swift runtime and exports only rndz_* symbols.
lib-check: $(LIB)
	@if readelf -d $(LIB) | grep -i 'libswift'; then echo "FAIL: $(LIB) links Swift"; exit 1; fi
	@readelf -d $(LIB) | grep -q 'SONAME.*\[$(SONAME)\]' || { echo "FAIL: SONAME"; exit 1; }
	@bad=$$(nm -D --defined-only $(LIB) | awk '$$3 !~ /^rndz_/ && $$2 != "A" {print $$3}'); \
	 if [ -n "$$bad" ]; then echo "FAIL: exported non-rndz symbols: $$bad"; exit 1; fi
	@echo "lib-check: ok (SONAME $(SONAME), no libswift, only rndz_* exported)"

# C tests: built against a staged `make install`, through pkg-config, as a user would.
C_TESTS = $(sort $(wildcard Tests/c/test_*.c))
# The README's C examples: compiled strictly (no test helpers) and run, so they cannot rot.
C_EXAMPLES = $(sort $(wildcard examples/*.c))
check: all header-check lib-check readme-check unit fuzz-replay
	rm -rf $(STAGE) && $(MAKE) --no-print-directory install-lib PREFIX=$(STAGE) >/dev/null
	@mkdir -p $(BUILD)/ctests
	@set -e; for t in $(C_TESTS); do \
	  n=$$(basename $$t .c); \
	  PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig $(CC) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g \
	    -ITests/c $$t Tests/c/testlib.c -o $(BUILD)/ctests/$$n \
	    $$(PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig pkg-config --cflags --libs rndz) -lpthread; \
	done
	@set -e; for t in $(C_EXAMPLES); do \
	  PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig $(CC) -std=c11 -Wall -Wextra -Werror -pedantic -g \
	    $$t -o $(BUILD)/ctests/example_$$(basename $$t .c) \
	    $$(PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig pkg-config --cflags --libs rndz); \
	done
	@fail=0; for t in $(C_EXAMPLES); do \
	  n=example_$$(basename $$t .c); \
	  if LD_LIBRARY_PATH=$(STAGE)/lib $(VALGRIND) $(BUILD)/ctests/$$n >/dev/null; \
	  then echo "PASS $$n"; else echo "FAIL $$n"; fail=1; fi; \
	done; \
	for t in $(C_TESTS); do \
	  n=$$(basename $$t .c); \
	  if RNDZ_VECTORS=Tests/vectors/rndz-v1-vectors.txt LD_LIBRARY_PATH=$(STAGE)/lib \
	     $(VALGRIND) $(BUILD)/ctests/$$n; then echo "PASS $$n"; else echo "FAIL $$n"; fail=1; fi; \
	done; exit $$fail

# Unit tests of internal modules, linked with the static library and the internal headers.
UNIT_TESTS = $(sort $(wildcard Tests/unit/test_*.c))
unit: $(BUILD)/librndz.a
	@mkdir -p $(BUILD)/unit
	@fail=0; for t in $(UNIT_TESTS); do \
	  n=$$(basename $$t .c); \
	  $(CC) $(RNDZ_CFLAGS) $(CFLAGS) $$t $(BUILD)/librndz.a -lpthread -o $(BUILD)/unit/$$n || exit 1; \
	  if $(VALGRIND) $(BUILD)/unit/$$n; then echo "PASS $$n"; else echo "FAIL $$n"; fail=1; fi; \
	done; exit $$fail

# The soak (SECURITY.md): SOAK_MB of random and mutated datagrams (default 1 GB) against a
# server with and one without a secret; memory must stay flat and both keep answering.
# `make check` runs the same with 50 MB (inside test_security).
SOAK_MB ?= 1024
soak: all
	rm -rf $(STAGE) && $(MAKE) --no-print-directory install-lib PREFIX=$(STAGE) >/dev/null
	@mkdir -p $(BUILD)/ctests
	PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig $(CC) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g \
	    -ITests/c Tests/c/test_security.c Tests/c/testlib.c -o $(BUILD)/ctests/test_security \
	    $$(PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig pkg-config --cflags --libs rndz) -lpthread
	RNDZ_VECTORS=Tests/vectors/rndz-v1-vectors.txt LD_LIBRARY_PATH=$(STAGE)/lib \
	    $(VALGRIND) $(BUILD)/ctests/test_security soak $(SOAK_MB)

# The build of the package and its tests must print no warning (deprecations included): on a
# fresh clone (CI) every file is compiled, so every warning shows; an incremental build only
# sees the files it recompiles.
swift-test:
	@mkdir -p $(BUILD)
	swift build --build-tests > $(BUILD)/swift-build.log 2>&1; rc=$$?; cat $(BUILD)/swift-build.log; \
	    [ $$rc -eq 0 ] || exit $$rc; \
	    if grep -E ' warning: ' $(BUILD)/swift-build.log; then \
	        echo "swift-test: the build printed the warnings above: none are allowed"; exit 1; fi
	swift test

# Everything CI runs: C tests, Swift tests, the installed CLI, the NAT lab.
test: check swift-test install-check natlab

# The relay benchmark: the server's relay against a plain batched UDP forwarding loop.
relay-bench: all
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Iinclude bench/relay-bench.c \
	    -o $(BUILD)/relay-bench -L$(BUILD) -lrndz -lpthread -Wl,-rpath,$(abspath $(BUILD))
	$(BUILD)/relay-bench $(RELAY_BENCH_ARGS)

# The forward benchmark: rndz_bridge (expose/forward) against a plain TCP copy loop.
forward-bench: all
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Iinclude bench/forward-bench.c \
	    -o $(BUILD)/forward-bench -L$(BUILD) -lrndz -lpthread -Wl,-rpath,$(abspath $(BUILD))
	$(BUILD)/forward-bench $(FORWARD_BENCH_ARGS)

# The server benchmark: rndz against a plain batched UDP echo loop, same load generator.
bench: all
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Iinclude bench/rndz-bench.c \
	    -o $(BUILD)/rndz-bench -L$(BUILD) -lrndz -lpthread -Wl,-rpath,$(abspath $(BUILD))
	$(BUILD)/rndz-bench $(BENCH_ARGS)

demo:
	scripts/demo
	scripts/demo --tcp

# The README's C example is examples/pair.c, verbatim (and `check` compiles and runs it).
readme-check:
	@awk '/^```c$$/{on=1;next} /^```$$/{if(on){exit}} on' README.md > $(BUILD)/readme_example.c
	@cmp -s $(BUILD)/readme_example.c examples/pair.c || \
	  { echo "FAIL readme-check: README's C example differs from examples/pair.c"; \
	    diff $(BUILD)/readme_example.c examples/pair.c | head; exit 1; }
	@echo "PASS readme-check"

clean:
	rm -rf $(BUILD)

# The NAT lab: rndz-cli and a C peer (librndz.so) through real kernel NATs in network
# namespaces (root; nftables). Skips loudly without root unless CI=1 / RNDZ_NATLAB_REQUIRED=1.
natlab:
	Tests/natlab/run

# Fuzz targets and their replay (part of check); sanitizer and valgrind runs.
include mk/fuzz.mk mk/sanitizers.mk
