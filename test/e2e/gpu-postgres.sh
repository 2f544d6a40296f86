#!/usr/bin/env bash
# test/e2e/gpu-postgres.sh: gptoss end to end on the GPU machine, through
# PostgreSQL.  That machine has CUDA but no PostgreSQL packages, no psql, no
# pgbench and no package registry, so everything comes from the carried
# folders .gpu-pg (a relocatable PostgreSQL 15, its server headers and
# libpq's headers) and .gpu-deps (PCRE2/jansson debs, the tokenizer).
#
# Phases (each timed; a failure names its phase and keeps the server log):
#   env     source test/reference/gpu-env.sh (libraries, tokenizer, build flags)
#   pg      bash .gpu-pg/start.sh $PGROOT: unpack the server, initdb, capture PG_* / LIBPQ_*
#   engine  make USE_CUDA=1 build/libgptoss_engine.a bin/gptoss
#   ext     gptoss.so without pg_config (src/*.c against $PG_INCLUDE, linked with the
#           engine archive, PCRE2, jansson and the CUDA libraries), installed with
#           gptoss.control and sql/gptoss--1.0.sql into the carried server
#   model   bin/gptoss synth --preset 20b into $MODEL (skipped when a model dir is
#           given or a complete one is already there)
#   server  postgresql.conf (shared_preload_libraries, gptoss.*), start, CREATE EXTENSION,
#           wait for gptoss_status() state 'ready'
#   enrich  only with ENRICH_BENCH=1, instead of load: bench/enrich_bench.c (enrichment
#           rows/s, sync and async, against the naive row trigger and gptoss_generate_many;
#           COPY of 10,000 rows into an enriched vs a plain table); ENRICH_ARGS overrides its
#           options; results in enrich.md / enrich.jsonl
#   serve   only with SERVE_BENCH=1, instead of load: issue 13's serving-shaped cases through
#           SQL (gptoss_loadgen --serve: N requests dealt to SERVE_SESSIONS sessions, each
#           session's share in one GptossBatch statement, all in flight at once; greedy, raw,
#           ignore_eos; lengths drawn as `gptoss bench --requests` draws them). SERVE_CASES picks
#           them: a = 1,000 log-normal (sigma 1, seed 42, clipped to [4, 2048], means 215/194),
#           b = 500 x 2,000/100, c = 1,000 x 128/4, d = 500 x 4,000/200. Each case runs on a
#           server restarted with the engine run's settings (max_batch_size min(N, 1024) + 1,
#           since one role holds at most max_batch_size - 1 seats; max_context = the longest
#           request; prefill_chunk 2048; max_step_tokens min(N, 1024) + 2048; max_requests
#           N + SERVE_SESSIONS). With SERVE_ENGINE=1 the same case also runs through
#           `bin/gptoss bench --requests` first (server stopped: one process owns the GPU).
#           Results in serve.jsonl and summary.md
#   load    test/loadgen/gptoss_loadgen: 1 and 64 sessions (~128-token prompts, 128
#           generated tokens, greedy, ignore_eos, raw), each on a freshly restarted
#           server, then a --check run (texts under batching equal texts alone)
#   batch   with BATCH_BENCH=1: bench/batch-bench.sh --server (one SELECT over ROWS rows with
#           the GptossBatch node, without it, and through gptoss_generate_many)
#
# Usage (on the GPU machine, from the repository root, as root):
#   bash test/e2e/gpu-postgres.sh [MODEL_DIR]
# Results go to $OUT (the device tool's folder) or build/e2e-out: results.jsonl,
# summary.md, status.json, stats.txt, server-log-tail.txt, e2e.log.
# Environment: SESSIONS ("1 64"; empty: no load runs), REQUESTS (4 per session), PROMPT_LEN (128), GEN (128),
#   MIXED_GEN ("64 192": also run each multi-session count with request lengths spread over
#   64..192, so that sessions drift apart and prompts arrive while others decode),
#   CHECK_SESSIONS (16; 0 skips the check), MAX_BATCH (64), MAX_CONTEXT (4096),
#   BATCH_BENCH (0; 1 runs the batch phase, with ROWS and OFF_ROWS of bench/batch-bench.sh),
#   SERVE_BENCH (0; 1 runs the serve phase instead of load), SERVE_CASES ("a b c d"),
#   SERVE_SESSIONS (64), SERVE_ENGINE (0; 1 also runs each case through gptoss bench),
#   DEVICE (cuda), USE_CUDA (1), PGROOT (/tmp/pg), MODEL_OUT (/tmp/m20b), RESTART (1),
#   TIME_LIMIT (570 s: the long steps run under timeout so that a run stays inside the
#   device tool's 600 s and still leaves its logs behind).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

SESSIONS=${SESSIONS-"1 64"}
REQUESTS=${REQUESTS:-4}
PROMPT_LEN=${PROMPT_LEN:-128}
GEN=${GEN:-128}
MIXED_GEN=${MIXED_GEN:-}
CHECK_SESSIONS=${CHECK_SESSIONS:-16}
MAX_BATCH=${MAX_BATCH:-64}
MAX_CONTEXT=${MAX_CONTEXT:-4096}
DEVICE=${DEVICE:-cuda}
USE_CUDA=${USE_CUDA:-1}
PGROOT=${PGROOT:-/tmp/pg}
MODEL_OUT=${MODEL_OUT:-/tmp/m20b}
RESTART=${RESTART:-1}
TIME_LIMIT=${TIME_LIMIT:-570}
DEADLINE=$(($(date +%s) + TIME_LIMIT))
RESULTS_DIR=${OUT:-$ROOT/build/e2e-out}
mkdir -p "$RESULTS_DIR"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
exec > >(tee "$RESULTS_DIR/e2e.log") 2>&1

PHASE=init
PHASE_T0=$(date +%s.%N)
SERVER_STARTED=0
TIMINGS=()
log() { printf '== [%s] %s\n' "$(date +%T)" "$*"; }
fail() { printf 'gpu-postgres.sh: FAILED in phase %s: %s\n' "$PHASE" "$*" >&2; exit 1; }
# Starts a timed phase (closing the previous one).
phase() {
	local t; t=$(date +%s.%N)
	[ "$PHASE" = init ] || TIMINGS+=("$PHASE $(awk -v a="$PHASE_T0" -v b="$t" 'BEGIN { printf "%.1f", b - a }')")
	PHASE=$1; PHASE_T0=$t
	log "phase $1"
}
as_pg() { su pg -c "$*"; }
# Seconds left before TIME_LIMIT (fails when they are spent).
left() {
	local s=$((DEADLINE - $(date +%s)))
	[ "$s" -gt 5 ] || fail "time limit of $TIME_LIMIT s reached"
	echo "$s"
}
# Runs a command under the time left; its exit status otherwise.
limited() {
	local s rc
	s=$(left) || exit 1
	if timeout "$s" "$@"; then return 0; else rc=$?; fi
	[ "$rc" != 124 ] || fail "time limit of $TIME_LIMIT s reached during: $*"
	return "$rc"
}
on_exit() {
	local rc=$?
	if [ -f "$PGROOT/log" ]; then tail -n 200 "$PGROOT/log" > "$RESULTS_DIR/server-log-tail.txt" || true; fi
	if [ "$SERVER_STARTED" = 1 ]; then as_pg "$PG_BIN/pg_ctl -D $PGROOT/data -m fast -w stop" >/dev/null 2>&1 || true; fi
	if [ "$rc" != 0 ]; then
		echo "gpu-postgres.sh: exit status $rc in phase $PHASE (server log tail: $RESULTS_DIR/server-log-tail.txt)" >&2
	fi
}
trap on_exit EXIT

[ "$(id -u)" = 0 ] || fail "run as root (start.sh creates the server's user pg)"
[ -f .gpu-pg/start.sh ] || fail ".gpu-pg is missing: carry it (prepared with ../shared/tools/gpu-postgres/pack.sh .gpu-pg)"
ls .gpu-deps/*.deb >/dev/null 2>&1 || fail ".gpu-deps is missing: carry it (prepared with test/reference/pack-gpu-deps.sh)"
if command -v nvidia-smi >/dev/null; then
	nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

phase env
# shellcheck source=/dev/null
source test/reference/gpu-env.sh
[ -s build/tokenizer.json ] || fail "build/tokenizer.json was not unpacked from .gpu-deps"

phase pg
# A server of an earlier run on this (warm) machine is stopped before start.sh wipes $PGROOT.
if [ -f "$PGROOT/data/postmaster.pid" ] && [ -x "$PGROOT/pg/bin/pg_ctl" ]; then
	su pg -c "$PGROOT/pg/bin/pg_ctl -D $PGROOT/data -m immediate -w stop" >/dev/null 2>&1 || true
fi
pg_vars=$(bash .gpu-pg/start.sh "$PGROOT") || fail "bash .gpu-pg/start.sh $PGROOT failed"
eval "$pg_vars"
for v in PG_BIN PG_INCLUDE PG_LIB PG_SHARE LIBPQ_CFLAGS LIBPQ_LIBS; do
	[ -n "${!v:-}" ] || fail "start.sh did not print $v"
done
[ -f "$PG_INCLUDE/postgres.h" ] || fail "no postgres.h in PG_INCLUDE=$PG_INCLUDE"
EXT_DIR=$PG_SHARE
[ "$(basename "$PG_SHARE")" = extension ] || EXT_DIR=$PG_SHARE/extension
log "PG_BIN=$PG_BIN PG_INCLUDE=$PG_INCLUDE PG_LIB=$PG_LIB EXT_DIR=$EXT_DIR"

phase engine
CUDA_LIBS=()
if [ "$USE_CUDA" = 1 ]; then
	NVCC=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null) || fail "nvcc not found"
	CUDA_HOME=$(dirname "$(dirname "$NVCC")")
	CUDA_LIBS=(-L"$CUDA_HOME/lib64" "-Wl,-rpath,$CUDA_HOME/lib64" -lcudart -lcublasLt -lstdc++)
fi
limited make -j"$(nproc)" USE_CUDA="$USE_CUDA" build/libgptoss_engine.a bin/gptoss || fail "engine build failed"

phase ext
# What PGXS would do, without pg_config: PostgreSQL's own code generation flags
# (-fwrapv, -fno-strict-aliasing, -fexcess-precision=standard) matter for its headers.
EXT_BUILD=build/e2e-ext
rm -rf "$EXT_BUILD"; mkdir -p "$EXT_BUILD"
EXT_CFLAGS=(-std=gnu11 -O2 -g -fPIC -D_GNU_SOURCE -fno-strict-aliasing -fwrapv -fexcess-precision=standard
	-Wall -Wmissing-prototypes -Wpointer-arith -Wdeclaration-after-statement -Werror=vla -Wformat-security
	-Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare -Wno-format-truncation
	-Wno-stringop-truncation -Isrc -Isrc/engine -I"$PG_INCLUDE")
# shellcheck disable=SC2206  # the flags from gpu-env.sh are several words
EXT_CFLAGS+=(${GPTOSS_EXTRA_CFLAGS:-})
for src in src/*.c; do
	obj=$EXT_BUILD/$(basename "${src%.c}").o
	gcc "${EXT_CFLAGS[@]}" -c -o "$obj" "$src" || fail "compiling $src"
done
# shellcheck disable=SC2086
gcc -shared -o "$EXT_BUILD/gptoss.so" "$EXT_BUILD"/*.o build/libgptoss_engine.a \
	${GPTOSS_EXTRA_LDFLAGS:-} -lpcre2-8 -ljansson -lm -lpthread "${CUDA_LIBS[@]}" || fail "linking gptoss.so"
# Unresolved symbols other than the server's own would only show at load time.
missing=$(LD_LIBRARY_PATH="$PG_BIN/../lib" ldd -r "$EXT_BUILD/gptoss.so" 2>&1 | grep 'not found' | grep -v 'undefined symbol' || true)
[ -z "$missing" ] || fail "gptoss.so needs libraries that are not found: $missing"
mkdir -p "$PG_LIB" "$EXT_DIR"
install -m 755 "$EXT_BUILD/gptoss.so" "$PG_LIB/gptoss.so"
install -m 644 gptoss.control sql/gptoss--1.0.sql "$EXT_DIR/"
LOADGEN=$(bash test/loadgen/build.sh build/gptoss_loadgen) || fail "building the load generator"

phase model
if [ -n "${1:-}" ]; then
	MODEL=$(cd "$1" && pwd) || fail "no model directory $1"
elif [ -f "$MODEL_OUT/.synth-complete" ]; then
	MODEL=$MODEL_OUT
	log "reusing $MODEL"
else
	rm -rf "$MODEL_OUT"
	limited bin/gptoss synth --preset 20b --out "$MODEL_OUT" --tokenizer build/tokenizer.json \
		|| fail "synth --preset 20b failed"
	touch "$MODEL_OUT/.synth-complete"
	MODEL=$MODEL_OUT
fi
[ -f "$MODEL/config.json" ] || fail "no config.json in $MODEL"
chmod -R a+rX "$MODEL" 2>/dev/null || log "note: could not chmod $MODEL (the server runs as user pg and must read it)"
du -sh "$MODEL"

phase server
SERVE_BENCH=${SERVE_BENCH:-0}
SERVE_CASES=${SERVE_CASES:-"a b c d"}
SERVE_SESSIONS=${SERVE_SESSIONS:-64}
SERVE_ENGINE=${SERVE_ENGINE:-0}
max_sessions=$CHECK_SESSIONS
for n in $SESSIONS; do [ "$n" -gt "$max_sessions" ] && max_sessions=$n; done
[ "$SERVE_BENCH" != 1 ] || [ "$SERVE_SESSIONS" -le "$max_sessions" ] || max_sessions=$SERVE_SESSIONS
[ "$MAX_BATCH" -ge "$max_sessions" ] || log "note: MAX_BATCH=$MAX_BATCH < $max_sessions sessions: the rest queue"
cat >> "$PGROOT/data/postgresql.conf" <<CONF
listen_addresses = ''
max_connections = $((max_sessions + 20))
shared_preload_libraries = 'gptoss'
gptoss.model_path = '$MODEL'
gptoss.device = '$DEVICE'
gptoss.max_batch_size = $MAX_BATCH
gptoss.max_context = $MAX_CONTEXT
CONF
as_pg "$PG_BIN/pg_ctl -D $PGROOT/data -l $PGROOT/log -w start" >/dev/null || fail "the server did not start"
SERVER_STARTED=1
DSN="host=$PGROOT port=${PGPORT:-5432} user=postgres dbname=postgres"
sql() { limited "$LOADGEN" --dsn "$DSN" --ready-timeout "$(left)" "$@"; }
sql --exec "CREATE EXTENSION IF NOT EXISTS gptoss" || fail "CREATE EXTENSION gptoss failed"
sql --wait-ready --exec "SELECT jsonb_pretty(gptoss_status())" > "$RESULTS_DIR/status.json" \
	|| fail "the gptoss worker did not become ready"
log "ready: $(grep -E '"(backend|load_seconds)"' "$RESULTS_DIR/status.json" | tr -d ' \n')"

# Restarts the server, so the next measurement starts with fresh worker counters.
restart_server() {
	as_pg "$PG_BIN/pg_ctl -D $PGROOT/data -l $PGROOT/log -m fast -w restart" >/dev/null || fail "restart failed"
	sql --wait-ready --exec "SELECT 1" >/dev/null || fail "the gptoss worker did not become ready after a restart"
}

if [ "$SERVE_BENCH" = 1 ]; then
	# Serving-shaped cases through SQL instead of the load runs (see the header; bench/RESULTS.md).
	phase serve
	SERVE_RESULTS=$RESULTS_DIR/serve.jsonl
	: > "$SERVE_RESULTS"
	for c in $SERVE_CASES; do
		case $c in
			a) n=1000; lengths=(--lengths lognormal --input-len 215 --output-len 194) ;;
			b) n=500; lengths=(--input-len 2000 --output-len 100) ;;
			c) n=1000; lengths=(--input-len 128 --output-len 4) ;;
			d) n=500; lengths=(--input-len 4000 --output-len 200) ;;
			*) fail "SERVE_CASES: unknown case $c (a, b, c or d)" ;;
		esac
		longest=$("$LOADGEN" --serve "$n" "${lengths[@]}" --dry-run | sed -n 's/.*"longest": \([0-9]*\).*/\1/p')
		[ -n "$longest" ] || fail "case $c: no longest request from gptoss_loadgen --dry-run"
		seqs=$((n < 1024 ? n : 1024))
		# one statement each: ALTER SYSTEM cannot run in the implicit transaction of several
		for setting in "max_batch_size = $((seqs + 1))" "max_context = $longest" "prefill_chunk = 2048" \
			"max_step_tokens = $((seqs + 2048))" "max_requests = $((n + SERVE_SESSIONS))"; do
			sql --exec "ALTER SYSTEM SET gptoss.$setting" >/dev/null || fail "case $c: ALTER SYSTEM SET gptoss.$setting failed"
		done
		# every request in flight holds a dynamic shared memory segment, and PostgreSQL 15
		# allows 64 + 5 x MaxBackends of them: room for all n requests at once (with fewer the
		# statements wait for segments and run with smaller windows)
		sql --exec "ALTER SYSTEM SET max_connections = $(((n + SERVE_SESSIONS) / 5 + 20))" >/dev/null ||
			fail "case $c: ALTER SYSTEM SET max_connections failed"
		if [ "$SERVE_ENGINE" = 1 ]; then
			as_pg "$PG_BIN/pg_ctl -D $PGROOT/data -m fast -w stop" >/dev/null || fail "stopping the server failed"
			SERVER_STARTED=0
			log "serve: case $c through the engine (gptoss bench --requests $n ${lengths[*]})"
			limited bin/gptoss bench --model "$MODEL" --device "$DEVICE" --requests "$n" "${lengths[@]}" \
				| sed "s/^{/{\"label\":\"case $c engine\",/" | tee -a "$SERVE_RESULTS" \
				|| fail "case $c: gptoss bench failed"
			as_pg "$PG_BIN/pg_ctl -D $PGROOT/data -l $PGROOT/log -w start" >/dev/null || fail "the server did not start"
			SERVER_STARTED=1
			sql --wait-ready --exec "SELECT 1" >/dev/null || fail "the gptoss worker did not become ready"
		else
			restart_server
		fi
		log "serve: case $c through SQL ($n requests, ${lengths[*]}, $SERVE_SESSIONS sessions, context $longest)"
		sql --serve "$n" "${lengths[@]}" --sessions "$SERVE_SESSIONS" --label "case $c sql" \
			| tee -a "$SERVE_RESULTS" || fail "case $c: the SQL serving run failed"
	done
	sql --exec "SELECT row_to_json(s) FROM gptoss_stats s" > "$RESULTS_DIR/stats.txt" || fail "reading gptoss_stats"
	phase summary
	{ echo "# serving-shaped cases through SQL on the GPU machine ($(date -u +%F)), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
	  echo "- model: $MODEL; $SERVE_SESSIONS sessions; cases: $SERVE_CASES; phases (s): ${TIMINGS[*]}"
	  echo "- tok/s columns: completion (output) and total (prompt + completion) tokens over the wall time;"
	  echo "  TTFT only through the engine (a plain SQL call returns the whole answer)"; echo
	  python3 - "$SERVE_RESULTS" <<'PY' || echo "(python3 missing: see serve.jsonl)"
import json, sys
print("| run | requests | prompt + completion tokens (drawn) | wall s | output tok/s | total tok/s | TTFT mean ms | mean batch |")
print("|---|---:|---|---:|---:|---:|---:|---:|")
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    r = json.loads(line)
    if "drawn_input_tokens" in r:  # gptoss_loadgen --serve
        tokens = f"{r['prompt_tokens']} + {r['completion_tokens']} ({r['drawn_input_tokens']} + {r['drawn_output_tokens']})"
        out, ttft, batch = r["tok_s"], "-", r["mean_batch_size"]
    else:  # gptoss bench --requests
        tokens = f"{r['input_tokens']} + {r['output_tokens']}"
        out, ttft, batch = r["output_tok_s"], f"{r['ttft_ms_mean']:.0f}", r["mean_batch"]
    print(f"| {r['label']} | {r['requests']} | {tokens} | {r['wall_s']:.2f} | {out:.1f} | {r['total_tok_s']:.1f} | {ttft} | {batch:.1f} |")
PY
	} > "$RESULTS_DIR/summary.md"
	cat "$RESULTS_DIR/summary.md"
	exit 0
fi

if [ "${ENRICH_BENCH:-0}" = 1 ]; then
	# Enrichment benchmark instead of the load runs (bench/enrich_bench.c; bench/RESULTS.md).
	phase enrich
	# shellcheck disable=SC2086  # the flag variables hold several words
	gcc -std=gnu11 -O2 -Wall -o build/enrich_bench bench/enrich_bench.c $LIBPQ_CFLAGS $LIBPQ_LIBS \
		|| fail "building bench/enrich_bench.c"
	# shellcheck disable=SC2086
	limited build/enrich_bench --dsn "$DSN" ${ENRICH_ARGS:---rows 1000 --naive-rows 200 --words 128 --max-tokens 128 --copy-rows 10000 --copy-runs 3} \
		> "$RESULTS_DIR/enrich.md" 2> "$RESULTS_DIR/enrich.jsonl" || { cat "$RESULTS_DIR/enrich.jsonl"; fail "enrich_bench failed"; }
	sql --exec "SELECT row_to_json(s) FROM gptoss_stats s" > "$RESULTS_DIR/stats.txt" || fail "reading gptoss_stats"
	phase summary
	{ echo "# enrichment on the GPU machine ($(date -u +%F)), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
	  echo "- model: $MODEL; max_batch_size $MAX_BATCH; max_context $MAX_CONTEXT; phases (s): ${TIMINGS[*]}"; echo
	  cat "$RESULTS_DIR/enrich.md"; } > "$RESULTS_DIR/summary.md"
	cat "$RESULTS_DIR/summary.md"
	exit 0
fi

phase load
RESULTS=$RESULTS_DIR/results.jsonl
: > "$RESULTS"
LOAD_OPTS=(--prompt-len "$PROMPT_LEN" --max-tokens "$GEN" --temperature 0 --raw --ignore-eos)
first=1
for n in $SESSIONS; do
	[ "$first" = 1 ] || [ "$RESTART" != 1 ] || restart_server
	first=0
	log "load: $n sessions x $REQUESTS requests (+1 warm-up round)"
	sql --sessions "$n" --requests "$REQUESTS" --warmup 1 "${LOAD_OPTS[@]}" --label "sessions=$n" \
		| tee -a "$RESULTS" || fail "load run with $n sessions failed"
	if [ -n "$MIXED_GEN" ] && [ "$n" -gt 1 ]; then
		[ "$RESTART" != 1 ] || restart_server
		read -r gen_lo gen_hi <<<"$MIXED_GEN"
		log "load: $n sessions x $REQUESTS requests, $gen_lo..$gen_hi generated tokens each"
		sql --sessions "$n" --requests "$REQUESTS" --warmup 1 --prompt-len "$PROMPT_LEN" \
			--min-tokens "$gen_lo" --max-tokens "$gen_hi" --temperature 0 --raw --ignore-eos \
			--label "sessions=$n gen $gen_lo-$gen_hi" | tee -a "$RESULTS" ||
			fail "mixed-length run with $n sessions failed"
	fi
done
CHECK_RC=skipped
if [ "$CHECK_SESSIONS" -gt 0 ]; then
	log "check: $CHECK_SESSIONS prompts alone, then all at once; greedy texts must match"
	set +e
	sql --sessions "$CHECK_SESSIONS" --requests 1 "${LOAD_OPTS[@]}" --check --label "check" | tee -a "$RESULTS"
	CHECK_RC=${PIPESTATUS[0]}
	set -e
	case $CHECK_RC in
		0) log "check: all texts identical" ;;
		3) log "check: MISMATCHES (texts under batching differ from texts alone; see above)" ;;
		*) fail "check run failed (status $CHECK_RC)" ;;
	esac
fi
if [ "${BATCH_BENCH:-0}" = 1 ]; then
	phase batch
	[ "$RESTART" != 1 ] || restart_server
	limited env DSN="$DSN" LOADGEN="$ROOT/$LOADGEN" OUTDIR="$RESULTS_DIR/batch-bench" bash bench/batch-bench.sh --server \
		|| fail "bench/batch-bench.sh failed"
fi
sql --exec "SELECT row_to_json(s) FROM gptoss_stats s" > "$RESULTS_DIR/stats.txt" || fail "reading gptoss_stats"
phase summary

# summary.md: where it ran, how long each phase took, and the table of the runs.
{
	echo "# gptoss end to end on the GPU machine ($(date -u +%F))"
	echo
	echo "- GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo none)"
	echo "- model: $MODEL ($(du -sh "$MODEL" | cut -f1)); device $DEVICE; max_batch_size $MAX_BATCH; max_context $MAX_CONTEXT"
	echo "- prompts ~$PROMPT_LEN tokens (random words), $GEN generated tokens, greedy, ignore_eos, raw; $REQUESTS requests per session after one warm-up round"
	echo "- check run ($CHECK_SESSIONS sessions): status $CHECK_RC (0: texts identical, 3: mismatches)"
	echo "- phases (s): ${TIMINGS[*]}"
	echo
	python3 - "$RESULTS" <<'PY' || echo "(python3 missing: see results.jsonl)"
import json, sys
print("| run | sessions | requests | completion tokens | wall s | tok/s | p50 ms | p95 ms | mean batch | in flight (sampled) | mismatches |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    r = json.loads(line)
    mb = "-" if r["checked"] else f"{r['mean_batch_size']:.2f} ({r['mean_batch_size_scope']})"
    mm = r["mismatches"] if r["checked"] else "-"
    act = "-" if r["active_mean"] is None else f"{r['active_mean']:.1f}"
    print(f"| {r['label']} | {r['sessions']} | {r['requests']} | {r['completion_tokens']} | {r['wall_s']:.2f} | "
          f"{r['tok_s']:.1f} | {r['latency_ms_p50']:.0f} | {r['latency_ms_p95']:.0f} | {mb} | {act} | {mm} |")
PY
	if [ -f "$RESULTS_DIR/batch-bench/table.md" ]; then
		echo
		echo "One statement over many rows (bench/batch-bench.sh):"
		echo
		cat "$RESULTS_DIR/batch-bench/table.md"
	fi
} > "$RESULTS_DIR/summary.md"
cat "$RESULTS_DIR/summary.md"
log "results in $RESULTS_DIR"
