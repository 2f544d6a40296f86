#!/usr/bin/env bash
# test/run-all.sh: the whole test suite (what `make test-all` and .ci/run run):
# engine unit tests (plain and under ASan/UBSan), CLI checks, pg_regress on a
# temporary instance, and the TAP tests.  PostgreSQL refuses to run as root,
# so the server-side tests run as the postgres user on a tree it owns for the
# time of those tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export GPTOSS_TOKENIZER=$ROOT/build/tokenizer.json
export GPTOSS_REQUIRE_FIXTURES=1

bash test/setup.sh

echo "== engine unit tests"
make -j"$(nproc)" unit

echo "== engine unit tests under ASan/UBSan (CPU-only build in build/asan)"
rm -rf build/asan && mkdir -p build/asan
tar --exclude=./build --exclude=./bin --exclude=./.git --exclude='*.o' --exclude='*.a' --exclude='*.so' -cf - . | tar -xf - -C build/asan
(cd build/asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	make -j"$(nproc)" USE_CUDA=0 GPTOSS_EXTRA_CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	unit)

for t in test/unit/*.sh; do
	[ -e "$t" ] || continue
	echo "== $t"
	bash "$t"
done

echo "== pg_regress and TAP tests (as postgres)"
# hand the tree to postgres for these tests and back to its owner afterwards (git refuses a
# repository owned by another user)
owner=$(stat -c %u:%g "$ROOT")
trap 'chown -R "$owner" "$ROOT"' EXIT
chown -R postgres "$ROOT"
export GPTOSS_TEST_MODEL=$ROOT/build/tiny
# With TAP_TESTS = 1, PGXS's installcheck runs pg_regress and then the TAP tests in test/t.
su postgres -c "GPTOSS_TEST_MODEL=$GPTOSS_TEST_MODEL GPTOSS_TOKENIZER=$GPTOSS_TOKENIZER make installcheck" \
	|| { cat regression.diffs 2>/dev/null | head -200; exit 1; }
echo "== all tests passed"
