#!/usr/bin/env bash
# test/run-all.sh: the whole test suite (what `make test-all` and .ci/run run):
# engine unit tests (plain and under ASan/UBSan), short fuzzer runs, the CLI
# checks in test/unit/*.sh, pg_regress on a temporary instance, and the TAP
# tests.  PostgreSQL refuses to run as root,
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

echo "== engine unit tests under ASan/UBSan (build/asan; fails on an uninstrumented object)"
make -j"$(nproc)" unit-asan

echo "== fuzzers (build/fuzz, ${FUZZ_SECONDS:=20} s each)"
make -j"$(nproc)" fuzz-run FUZZ_SECONDS="$FUZZ_SECONDS"

echo "== CLI checks (test/unit/*.sh)"
shopt -s nullglob
cli_checks=(test/unit/*.sh)
shopt -u nullglob
[ ${#cli_checks[@]} -gt 0 ] || { echo "no CLI checks found in test/unit/*.sh" >&2; exit 1; }
for t in "${cli_checks[@]}"; do
	echo "== $t"
	bash "$t"
done

echo "== pg_regress and TAP tests (as postgres)"
# hand the tree to postgres for these tests and back to its owner afterwards (git refuses a
# repository owned by another user)
owner=$(stat -c %u:%g "$ROOT")
trap 'chown -R "$owner" "$ROOT"' EXIT
chown -R postgres "$ROOT"
# With TAP_TESTS = 1, PGXS's installcheck runs pg_regress and then the TAP tests in test/t, on
# the tiny model (the Makefile's default GPTOSS_TEST_MODEL).
su postgres -c "make installcheck" \
	|| { cat regression.diffs 2>/dev/null | head -200; exit 1; }
echo "== all tests passed"
