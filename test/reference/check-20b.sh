#!/usr/bin/env bash
# test/reference/check-20b.sh: the CUDA backend, and the CPU backend on one
# prompt, against HF transformers on a full 20b-shape synth checkpoint.  Runs
# ON the GPU machine (PyTorch + transformers there; no registry needed):
#
#   OUT=/some/dir bash test/reference/check-20b.sh
#
# Stages, each timed:
#   1. build bin/gptoss and test/unit/test_fixtures with CUDA;
#   2. `gptoss synth --preset 20b --seed 0` into $M20B (default /tmp/m20b)
#      unless a complete one is there;
#   3. model_ref.py: 4 prompts of 160 tokens (640 positions, longer than the
#      128-token window) with 32-token greedy continuations, --top-only, into
#      $OUT/model_20b.json.  Float32 when the GPU has >= 100 GB; else float32
#      arithmetic with the expert weights held in bf16 (model_ref.py
#      --bf16-experts: exact weights, 84 GB would not fit); a failed run falls
#      back to the next of float32, bf16-experts, bfloat16 (HF entirely in bf16).
#      REF_DTYPE=float32|bf16-experts|bfloat16 forces one, without fallback;
#      REF_DEVICE=cpu runs HF on the host (slow); REF_JSON=file skips this
#      stage and compares against an earlier fixture;
#   4. test_fixtures in statistics mode with the CUDA backend, all prompts;
#   5. the same with the CPU backend on the first prompt only (CPU_PROMPTS,
#      at most CPU_TIMEOUT seconds, default 200; 0 skips it);
#   6. with BF16_BASELINE=1: HF itself in bfloat16 against the reference
#      (compare_refs.py), i.e. how far rounding alone moves this model.
# $OUT receives check-20b.log (everything printed), build-20b.log,
# model_20b.json, fixtures-20b-{cuda,cpu}.txt and the JSON summary lines
# summary-20b-{cuda,cpu}.json.  Exit status: 1 when a stage failed to run;
# agreement figures never fail it (read the summaries).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-/tmp/check-20b-out}
M=${M20B:-/tmp/m20b}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/check-20b.log") 2>&1
. test/reference/gpu-env.sh
status=0
t_start=$(date +%s.%N)
t_stage=$t_start

# Prints the time the previous stage took, then the next stage's title.
stage() {
	local now
	now=$(date +%s.%N)
	awk -v a="$t_stage" -v b="$now" -v c="$t_start" -v t="$*" \
		'BEGIN { printf "   (%.1f s)\n== %s (at %.1f s)\n", b - a, t, b - c }'
	t_stage=$now
}
fail() { echo "FAILED: $*"; status=1; }

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mem_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | tr -dc 0-9)

stage "build"
if ! make -j16 USE_CUDA=1 bin/gptoss test/unit/test_fixtures >"$OUT/build-20b.log" 2>&1; then
	tail -40 "$OUT/build-20b.log"
	echo "FAILED: build"
	exit 1
fi

stage "synth 20b into $M"
if [ -f "$M.complete" ] && [ -f "$M/config.json" ]; then
	echo "reusing $M"
else
	rm -rf "$M" "$M.complete"
	if ! bin/gptoss synth --preset 20b --out "$M" --seed 0 --tokenizer build/tokenizer.json >/dev/null; then
		echo "FAILED: synth"
		exit 1
	fi
	touch "$M.complete"
fi
du -sh "$M"

ref=${REF_JSON:-$OUT/model_20b.json}
if [ -z "${REF_JSON:-}" ]; then
	stage "HF transformers reference"
	mode=${REF_DTYPE:-auto}
	if [ "$mode" = auto ]; then
		if [ "${mem_mib:-0}" -ge 100000 ]; then mode=float32; else mode=bf16-experts; fi
	fi
	run_ref() {
		local dtype_args
		case "$1" in
		float32) dtype_args=(--dtype float32) ;;
		bf16-experts) dtype_args=(--dtype float32 --bf16-experts) ;;
		bfloat16) dtype_args=(--dtype bfloat16) ;;
		*) echo "unknown REF_DTYPE $1"; return 2 ;;
		esac
		echo "reference: $1 on ${REF_DEVICE:-cuda}"
		python3 test/reference/model_ref.py "$M" "$ref" --device "${REF_DEVICE:-cuda}" \
			--config-name 20b --synth-seed 0 --seed 0 --n-prompts 4 --prompt-lens 160 --greedy 32 \
			--skip-float64-check --top-only "${dtype_args[@]}"
	}
	# each failure falls back to the next, less memory-hungry reference
	case "$mode" in
	float32) chain="float32 bf16-experts bfloat16" ;;
	bf16-experts) chain="bf16-experts bfloat16" ;;
	*) chain=$mode ;;
	esac
	[ -n "${REF_DTYPE:-}" ] && chain=$mode
	rm -f "$ref"
	for try in $chain; do
		[ "$try" = "$mode" ] || stage "HF transformers reference, again as $try"
		run_ref "$try" && break
		rm -f "$ref"
	done
	[ -s "$ref" ] || fail "model_ref.py"
fi
if [ ! -s "$ref" ]; then
	echo "FAILED: no reference fixture $ref"
	exit 1
fi

# Runs test_fixtures in statistics mode on backend $1; the rest goes to env
# before the command (more VAR=value, or a wrapper such as `timeout 200`).
compare() {
	local device=$1
	shift
	env GPTOSS_FIXTURE_STATS=1 GPTOSS_FIXTURE_FILES="$ref" GPTOSS_FIXTURE_MODEL="$M" \
		GPTOSS_FIXTURE_DEVICE="$device" "$@" ./test/unit/test_fixtures |
		tee "$OUT/fixtures-20b-$device.txt"
	local rc=${PIPESTATUS[0]}
	grep '^{"fixture_stats"' "$OUT/fixtures-20b-$device.txt" >"$OUT/summary-20b-$device.json"
	return "$rc"
}

stage "CUDA backend vs HF (statistics)"
compare cuda || fail "test_fixtures on cuda"

cpu_timeout=${CPU_TIMEOUT:-200}
if [ "$cpu_timeout" -gt 0 ]; then
	stage "CPU backend vs HF (statistics, ${CPU_PROMPTS:-1} prompt(s), at most $cpu_timeout s)"
	compare cpu GPTOSS_FIXTURE_MAX_PROMPTS="${CPU_PROMPTS:-1}" timeout "$cpu_timeout"
	rc=$?
	[ $rc -eq 124 ] && echo "(the CPU backend did not finish within CPU_TIMEOUT=$cpu_timeout s)"
	[ $rc -ne 0 ] && fail "test_fixtures on cpu (exit $rc)"
fi

if [ "${BF16_BASELINE:-0}" = 1 ]; then
	stage "HF transformers in bfloat16 vs the reference"
	python3 test/reference/model_ref.py "$M" "$OUT/model_20b_bf16.json" --device "${REF_DEVICE:-cuda}" \
		--config-name 20b --synth-seed 0 --seed 0 --n-prompts 4 --prompt-lens 160 --greedy 32 \
		--skip-float64-check --top-only --dtype bfloat16 &&
		python3 test/reference/compare_refs.py "$ref" "$OUT/model_20b_bf16.json" |
		tee "$OUT/summary-20b-hf-bf16.json" || fail "bf16 baseline"
fi

stage "done"
for f in "$OUT"/summary-20b-*.json; do
	echo "$f: $(cat "$f")"
done
exit $status
