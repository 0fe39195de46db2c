# ociblk top-level build.  Every module's .c files are picked up by wildcard, so adding a file
# needs no Makefile edit.  Tests: tests/unit/*.c and tests/crash/*.c each become one TAP binary;
# tests/integration/*.sh are TAP shell scripts; all run through prove.
CC      ?= gcc
BUILD   ?= build
SAN     ?=
CFLAGS_BASE := -std=gnu11 -O2 -g -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter \
	-D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -I. -pthread
PKGS    := libarchive ext2fs com_err json-c libcrypto libzstd liburing libxxhash
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
XEN_LIBS   := -lxengnttab -lxenevtchn -lxenstore
CFLAGS  += $(CFLAGS_BASE) $(PKG_CFLAGS) $(SAN)
LDLIBS  := $(PKG_LIBS) $(XEN_LIBS) -lpthread -lm
LDFLAGS += $(SAN)

MODULES := common layer-store cow image-import nbd blkback
LIB_SRCS := $(foreach m,$(MODULES),$(wildcard $(m)/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o)
CLI_SRCS := $(wildcard cli/*.c)
CLI_OBJS := $(CLI_SRCS:%.c=$(BUILD)/%.o)
TLIB_SRCS := $(wildcard tests/lib/*.c)
TLIB_OBJS := $(TLIB_SRCS:%.c=$(BUILD)/%.o)
UNIT_SRCS := $(wildcard tests/unit/*.c) $(wildcard tests/crash/*.c)
UNIT_BINS := $(UNIT_SRCS:%.c=$(BUILD)/%)
TOOL_SRCS := $(wildcard tests/tools/*.c)
TOOL_BINS := $(TOOL_SRCS:%.c=$(BUILD)/%)
INTEG     := $(sort $(wildcard tests/integration/*.sh))

.PHONY: all deps check check-unit check-integration check-xen check-asan fuzz fuzz-smoke demo bench clean
all: $(BUILD)/ociblk $(BUILD)/libociblk.a ociblk

ociblk: $(BUILD)/ociblk
	ln -sf $(BUILD)/ociblk ociblk

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libociblk.a: $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/ociblk: $(CLI_OBJS) $(BUILD)/libociblk.a
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJS) $(BUILD)/libociblk.a $(LDLIBS)

$(UNIT_BINS) $(TOOL_BINS): $(BUILD)/%: $(BUILD)/%.o $(TLIB_OBJS) $(BUILD)/libociblk.a
	$(CC) $(LDFLAGS) -o $@ $< $(TLIB_OBJS) $(BUILD)/libociblk.a $(LDLIBS)

tests: $(UNIT_BINS) $(TOOL_BINS)

deps:
	bash .ci/deps.sh

# OCIBLK_BUILD tells integration scripts where the binaries are.
check: all tests
	OCIBLK_BUILD=$(CURDIR)/$(BUILD) prove -j2 --timer $(UNIT_BINS) $(INTEG)

check-unit: all tests
	OCIBLK_BUILD=$(CURDIR)/$(BUILD) prove --timer $(UNIT_BINS)

# Real Xen: boots Xen + a Linux dom0 under QEMU (TCG) and PV guests served by `ociblk xen-backend`.
check-xen: all
	OCIBLK_BUILD=$(CURDIR)/$(BUILD) prove -v --timer tests/xen/check-xen.sh

# The real-Xen suite is left out here: it boots the same code under QEMU in `make check`, and an
# ASan binary inside the 768 MiB dom0 tests the emulator more than ociblk.
check-asan:
	$(MAKE) BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" check \
	  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 OCIBLK_SKIP_XEN=1

# libFuzzer targets: tests/fuzz/*.c, built with clang against the library built with clang.
FUZZ_SRCS := $(wildcard tests/fuzz/*.c)
FUZZ_BUILD := build-fuzz
fuzz:
	$(MAKE) CC=clang BUILD=$(FUZZ_BUILD) SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer" $(FUZZ_BUILD)/libociblk.a
	@set -e; for f in $(FUZZ_SRCS); do n=$$(basename $$f .c); \
	  clang $(CFLAGS_BASE) $(PKG_CFLAGS) -fsanitize=fuzzer,address,undefined -o $(FUZZ_BUILD)/fuzz-$$n $$f $(FUZZ_BUILD)/libociblk.a $(LDLIBS); done

fuzz-smoke: fuzz
	@set -e; for f in $(FUZZ_SRCS); do n=$$(basename $$f .c); echo "fuzz $$n"; \
	  mkdir -p $(FUZZ_BUILD)/corpus-$$n; \
	  $(FUZZ_BUILD)/fuzz-$$n -max_total_time=$${FUZZ_SECONDS:-20} -seed=$${FUZZ_SEED:-1} -rss_limit_mb=2048 $(FUZZ_BUILD)/corpus-$$n $$( [ -d tests/fuzz/seeds/$$n ] && echo tests/fuzz/seeds/$$n ); done

demo: all
	bash tests/demo.sh

bench: all tests
	bash bench/run.sh

clean:
	rm -rf build build-asan build-fuzz ociblk

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
