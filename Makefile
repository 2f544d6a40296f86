# gptoss: PostgreSQL extension (PGXS) + engine library + bin/gptoss CLI.
#
#   make                 build gptoss.so and bin/gptoss (CUDA objects when nvcc is found)
#   make USE_CUDA=0      CPU-only build
#   make unit            engine unit tests (needs build/tokenizer.json and build/tiny, see test/setup.sh)
#   make installcheck    pg_regress suite on a temporary instance, then the TAP tests in test/t
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
CUDA_LIBS = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublasLt -lcublas -lstdc++
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
endif

$(OBJS): $(ENGINE_LIB)
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

# Engine unit tests: test/unit/test_X.c -> test/unit/test_X (each a main()).
UNIT_SRCS = $(wildcard test/unit/test_*.c)
UNIT_BINS = $(UNIT_SRCS:.c=)
UNIT_COMMON = $(filter-out $(UNIT_SRCS),$(wildcard test/unit/*.c))

test/unit/test_%: test/unit/test_%.c $(UNIT_COMMON) $(wildcard test/unit/*.h) $(ENGINE_LIB)
	$(CC) $(ENGINE_CFLAGS) -Itest/unit -o $@ $< $(UNIT_COMMON) $(ENGINE_LIB) $(ENGINE_LIBS) $(CUDA_LIBS)

.PHONY: unit test-all demo
unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; ./$$t; done

test-all:
	bash test/run-all.sh

demo:
	bash test/demo.sh
