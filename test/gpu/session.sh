#!/usr/bin/env bash
# test/gpu/session.sh: the GPU checks and benchmarks of one device call, in
# priority order, each under its own time limit and all inside SESSION_LIMIT
# seconds (default 540), so that the logs come back before the tool's 600 s:
#   1. run.sh quick: build, kernel tests, CUDA vs CPU backend tests (masks,
#      logprobs, prefix cache: test_prefix_logprobs), compute-sanitizer memcheck
#      (the 20b synth checkpoint is written meanwhile, in the background)
#   2. test/e2e/gpu-postgres.sh on that checkpoint: (a) BATCH_BENCH (GptossBatch
#      node vs row by row vs gptoss_generate_many), (b) ENRICH_BENCH
#   3. run.sh json (mask cost at batch 64 on 20b), run.sh prefix (prefix cache)
# Sizes (environment): ROWS (512), OFF_ROWS (24), ENRICH_ARGS (512 rows, 32 naive,
# 64 tokens), PREFIX_ROWS (500).  Carry .gpu-deps and .gpu-pg (see run.sh and
# test/e2e/gpu-postgres.sh).  $OUT gets session.log, bench.jsonl and
# results.tgz (every step's logs and result files, refreshed after each step).
set -uo pipefail
cd "$(dirname "$0")/../.."
FINAL=${OUT:-/tmp/gptoss-gpu-out}
mkdir -p "$FINAL"
WORK=/tmp/gptoss-session
rm -rf "$WORK"; mkdir -p "$WORK"
exec > >(tee -a "$FINAL/session.log") 2>&1
DEADLINE=$(($(date +%s) + ${SESSION_LIMIT:-540}))
MODEL=/tmp/gptoss-models/20b
export ROWS=${ROWS:-512} OFF_ROWS=${OFF_ROWS:-24}
ENRICH_ARGS=${ENRICH_ARGS:---rows 512 --naive-rows 32 --words 128 --max-tokens 64 --copy-rows 10000 --copy-runs 3}
PREFIX_ROWS=${PREFIX_ROWS:-500}
summary=()

# Seconds a step may take: its own limit, capped by what is left (keeping 15 s for the archive).
lim() {
	local left=$((DEADLINE - $(date +%s) - 15))
	[ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}
# Runs one step "name limit command...", records its status and time, archives the results.
step() {
	local name=$1 limit t0 rc
	limit=$(lim "$2"); shift 2
	if [ "$limit" -lt 20 ]; then
		summary+=("$name: SKIPPED (no time left)"); return
	fi
	echo "#### step $name (limit $limit s, $(date +%T))"
	t0=$SECONDS
	timeout "$limit" "$@"; rc=$?
	summary+=("$name: $([ $rc -eq 0 ] && echo PASS || echo "FAIL (exit $rc$([ $rc -eq 124 ] && echo ', time limit'))") in $((SECONDS - t0)) s")
	cp -r build/gpu/*.log "$WORK/" 2>/dev/null
	tar czf "$FINAL/results.tgz" -C "$WORK" . 2>/dev/null
}
OUT=$WORK/quick step quick 200 bash test/gpu/run.sh quick
# The 20b checkpoint, written once: every later step reads it.
export LD_LIBRARY_PATH=/tmp/gptoss-deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
step synth 150 bash -c "t0=\$SECONDS; bin/gptoss synth --preset 20b --out $MODEL --tokenizer build/tokenizer.json \
	>/dev/null && touch $MODEL/.synth-complete && echo \"synth 20b: \$((SECONDS - t0)) s\""
OUT=$WORK/e2e-batch step e2e-batch 200 env BATCH_BENCH=1 SESSIONS= CHECK_SESSIONS=0 \
	TIME_LIMIT="$(($(lim 200) - 10))" bash test/e2e/gpu-postgres.sh "$MODEL"
OUT=$WORK/e2e-enrich step e2e-enrich 150 env ENRICH_BENCH=1 ENRICH_ARGS="$ENRICH_ARGS" \
	TIME_LIMIT="$(($(lim 150) - 10))" bash test/e2e/gpu-postgres.sh "$MODEL"
OUT=$WORK/json step json 90 env GPTOSS_SKIP_TINY=1 bash test/gpu/run.sh json
OUT=$WORK/prefix step prefix 120 env GPTOSS_SKIP_TINY=1 PREFIX_ROWS="$PREFIX_ROWS" bash test/gpu/run.sh prefix
cat "$WORK"/*/bench.jsonl > "$FINAL/bench.jsonl" 2>/dev/null
echo "#### summary ($(date +%T))"
printf '%s\n' "${summary[@]}"
tar czf "$FINAL/results.tgz" -C "$WORK" . 2>/dev/null
