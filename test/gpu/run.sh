#!/usr/bin/env bash
# test/gpu/run.sh: builds gptoss with CUDA on the GPU machine, checks the CUDA
# backend and times it; everything it prints also goes to $OUT/run.log.
#
#   bash test/gpu/run.sh [quick|full|profile|bench|invariance|serve|prefix|json|itl|big]
#
# quick:   build; kernel tests (test_kernels); CUDA vs CPU backend on the tiny
#          and tiny-odd synth models (test_backend); compute-sanitizer memcheck
#          on a short run; CLI logits/generate/bench on tiny.
# full:    quick, then on the 20b synth checkpoint: the benchmarks (below) and
#          CUDA vs CPU top-1 and batched vs unbatched greedy (test_backend).
# bench:   build, 20b synth, benchmarks: bench_backend (the backend alone,
#          CUDA graphs on and off) and `gptoss bench` at batch 1,8,32,64,128
#          (128-token prompts, 128 generated) and prefill 512/2048.
# invariance: kernel tests, test_backend on tiny, tiny-odd and 20b (these
#          include the bitwise batch-invariance checks), then bench_backend
#          decode (graphs) and prefill 2048 and `gptoss bench` prefill 2048.
# prefix:  the prefix-cache/logprobs/label-score checks on tiny
#          (test_prefix_logprobs), then on the 20b synth checkpoint
#          bench_prefix_cache: 1,000 rows sharing a 500-token instruction with
#          50-token texts, cache off then on (generate 16 tokens; classify).
#          PREFIX_ROWS changes the row count; GPTOSS_SKIP_TINY=1 skips the tiny
#          checks in this mode and in json (test/gpu/session.sh ran them).
# serve:   build, 20b synth, the serving-shaped runs of `gptoss bench
#          --requests` (issue 13 cases a-d), engine decode at 256-1024
#          sequences and the per-kernel profile of batch-256 decode.
# itl:     build, 20b synth, then issue 13's chunked-prefill check: 64 sequences
#          decode while 8 prompts of 2,048 tokens arrive 16 steps apart (`gptoss
#          bench --arrivals 8`), prefilled whole (--prefill-chunk 2048: before), in
#          512-, 256- (the engine default: after) and 128-token chunks, and at the
#          default with arrivals 4 steps apart (two prompts share steps); the
#          running sequences' inter-token latency and the arrivals' TTFT go to
#          $OUT/bench.jsonl (~15 s a run).
# json:    kernel tests, tiny backend test (masked sampling, CUDA vs CPU, included),
#          a structured-output generate on tiny, then on 20b decode at batch 64
#          (128-token prompts, 256 generated), every sequence constrained by
#          test/fixtures/invoice.schema.json vs none (target: <= 10% slower).
# profile: kernel tests, tiny backend test, benchmarks, then per-kernel GPU
#          time (Nsight Compute) of batch-1 decode, batch-64 decode and a
#          2048-token prefill ($OUT/profile.txt).
# big:     gpt-oss-120b on one GPU (issue 13 item 5), inside BIG_LIMIT seconds (530)
#          from the start, each step under its own timeout: test_backend on
#          tiny-moe (128 experts, top 4: every check); the 120b synth checkpoint
#          in /dev/shm/gptoss-models (61 GiB; the disk is 64 GiB), removed at
#          exit; test_backend on it (--big-model: CUDA vs CPU on 32 prompt
#          positions and 8 decode steps); `gptoss bench` at batch 1,64,256
#          (128-token prompts, 128 generated) and prefill 2048; weights on the
#          device against 62 GiB; then, if time is left, the per-kernel profile
#          of batch-1 decode ($OUT/profile.txt).
# The GPU machine has no jansson/PCRE2 and no tokenizer: carry .gpu-deps (the
# Debian packages and tokenizer.json.gz); they are unpacked under /tmp here.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gptoss-gpu-out}
mode=${1:-quick}
prefix_rows=${PREFIX_ROWS:-1000}
models=/tmp/gptoss-models
bin=build/gpu
mkdir -p "$OUT" "$models" "$bin"
exec > >(tee -a "$OUT/run.log") 2>&1
tok=${GPTOSS_TOKENIZER:-build/tokenizer.json}
status=0
deps=/tmp/gptoss-deps
if [ ! -f /usr/include/jansson.h ] && [ -d .gpu-deps ]; then
	mkdir -p "$deps"
	for f in .gpu-deps/*.deb; do dpkg -x "$f" "$deps"; done
	export GPTOSS_EXTRA_CFLAGS="-I$deps/usr/include"
	export GPTOSS_EXTRA_LDFLAGS="-L$deps/usr/lib/x86_64-linux-gnu"
	export LD_LIBRARY_PATH="$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ ! -f "$tok" ] && [ -f .gpu-deps/tokenizer.json.gz ]; then
	mkdir -p "$(dirname "$tok")"
	gunzip -c .gpu-deps/tokenizer.json.gz >"$tok"
fi
extra_ld=${GPTOSS_EXTRA_LDFLAGS:-}

section() { echo; echo "== $* ($(date +%T))"; }
fail() { echo "FAILED: $*"; status=1; }

section "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) (+ working tree), mode $mode"

section "build"
if ! make -j16 USE_CUDA=1 build/libgptoss_engine.a bin/gptoss bin/bench_prefix_cache >"$bin/build.log" 2>&1; then
	tail -40 "$bin/build.log"; echo "FAILED: build"; exit 1
fi
nvcc -O2 -std=c++17 -Isrc/engine -Icuda -gencode=arch=compute_90a,code=sm_90a \
	-o "$bin/test_kernels" test/gpu/test_kernels.cu build/libgptoss_engine.a \
	$extra_ld -lcublasLt -ljansson -lpcre2-8 || { echo "FAILED: test_kernels build"; exit 1; }
gcc -std=gnu11 -O2 -Wall -Wextra -Isrc/engine -o "$bin/test_backend" test/gpu/test_backend.c \
	build/libgptoss_engine.a -L/usr/local/cuda/lib64 -lcudart -lcublasLt -lstdc++ \
	$extra_ld -ljansson -lpcre2-8 -lm -lpthread || { echo "FAILED: test_backend build"; exit 1; }
gcc -std=gnu11 -O2 -Wall -Wextra -Isrc/engine -o "$bin/test_prefix_logprobs" test/gpu/test_prefix_logprobs.c \
	build/libgptoss_engine.a -L/usr/local/cuda/lib64 -lcudart -lcublasLt -lstdc++ \
	$extra_ld -ljansson -lpcre2-8 -lm -lpthread || { echo "FAILED: test_prefix_logprobs build"; exit 1; }
gcc -std=gnu11 -O2 -Wall -Wextra -Isrc/engine -o "$bin/bench_backend" test/gpu/bench_backend.c \
	build/libgptoss_engine.a -L/usr/local/cuda/lib64 -lcudart -lcublasLt -lstdc++ \
	$extra_ld -ljansson -lpcre2-8 -lm -lpthread || { echo "FAILED: bench_backend build"; exit 1; }
echo "built"

tests_tiny() {
	section "kernel tests"
	"$bin/test_kernels" || fail "test_kernels"
	for preset in tiny tiny-odd; do
		bin/gptoss synth --preset $preset --out "$models/$preset" --tokenizer "$tok" >/dev/null ||
			fail "synth $preset"
	done
	section "backend tests: tiny"
	"$bin/test_backend" "$models/tiny" 100 24 || fail "test_backend tiny"
	section "prefix cache, logprobs, label scores: tiny (CUDA vs CPU, cache on vs off)"
	"$bin/test_prefix_logprobs" "$models/tiny" || fail "test_prefix_logprobs tiny"
}

tests_quick_rest() {
	section "backend tests: tiny-odd"
	"$bin/test_backend" "$models/tiny-odd" 77 24 || fail "test_backend tiny-odd"

	section "compute-sanitizer memcheck (tiny, short)"
	compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
		"$bin/test_backend" "$models/tiny" 20 4 --no-cpu-decode >"$bin/memcheck.log" 2>&1
	rc=$?
	grep -E "ERROR SUMMARY|FAIL|Invalid|out of bounds" "$bin/memcheck.log" | head -20
	[ $rc -eq 0 ] || fail "memcheck (exit $rc)"

	section "CLI on tiny"
	a=$(bin/gptoss logits --model "$models/tiny" --tokens 11,22,33,44,55,66,77,88,99,111 --device cuda) || fail "logits cuda"
	b=$(bin/gptoss logits --model "$models/tiny" --tokens 11,22,33,44,55,66,77,88,99,111 --device cpu) || fail "logits cpu"
	echo "cuda: ${a:0:160}"; echo "cpu:  ${b:0:160}"
	[ "$(echo "$a" | python3 -c 'import json,sys; print(json.load(sys.stdin)["argmax"])')" = \
	  "$(echo "$b" | python3 -c 'import json,sys; print(json.load(sys.stdin)["argmax"])')" ] || fail "CLI logits argmax differ"
	bin/gptoss generate --model "$models/tiny" --device cuda --raw --prompt "Hello there" \
		--max-tokens 12 --temperature 0 --ignore-eos --json || fail "generate cuda"
	bin/gptoss bench --model "$models/tiny" --device cuda --batch 1,8 --prompt-len 64 --gen 32 || fail "bench tiny"
}

synth_20b() {
	section "20b synth checkpoint"
	if [ ! -f "$models/20b/config.json" ]; then
		t0=$SECONDS
		bin/gptoss synth --preset 20b --out "$models/20b" --tokenizer "$tok" >/dev/null || fail "synth 20b"
		echo "synth 20b: $((SECONDS - t0)) s"
	fi
}

benches() {
	section "bench_backend: 20b decode, CUDA graphs on"
	timeout 150 "$bin/bench_backend" "$models/20b" 1,8,32,64,128 128 128 1 | tee -a "$OUT/bench.jsonl" || fail "bench_backend graphs"
	section "bench_backend: 20b decode, CUDA graphs off"
	timeout 100 "$bin/bench_backend" "$models/20b" 1,64 128 32 0 | tee -a "$OUT/bench.jsonl" || fail "bench_backend no graphs"
	section "bench_backend: 20b prefill"
	for n in 512 2048; do
		timeout 60 "$bin/bench_backend" "$models/20b" 1 $n 2 1 | tee -a "$OUT/bench.jsonl" || fail "bench_backend prefill $n"
	done
	section "gptoss bench: 20b decode"
	cmd="bin/gptoss bench --model $models/20b --device cuda --batch 1,8,32,64,128 --prompt-len 128 --gen 128"
	echo "$cmd"; timeout 200 $cmd | tee -a "$OUT/bench.jsonl" || fail "bench decode"
	section "gptoss bench: 20b prefill"
	for n in 512 2048; do
		cmd="bin/gptoss bench --model $models/20b --device cuda --batch 1 --prompt-len $n --gen 2"
		echo "$cmd"; timeout 120 $cmd | tee -a "$OUT/bench.jsonl" || fail "bench prefill $n"
	done
}

profile() {
	local name=$1; shift
	section "profile: $name"
	timeout "${PROFILE_LIMIT:-240}" ncu --metrics gpu__time_duration.sum --clock-control none --csv \
		--log-file "$bin/ncu_$name.csv" "$@" >/dev/null 2>"$bin/ncu_$name.err" || fail "ncu $name"
	tail -3 "$bin/ncu_$name.err"
	python3 test/gpu/ncu_summary.py "$bin/ncu_$name.csv" "$name" | tee -a "$OUT/profile.txt"
}

serving() {
	local g="bin/gptoss bench --model $models/20b --device cuda"
	section "serving runs (gptoss bench --requests)"
	for args in "--requests 1000 --input-len 215 --output-len 194 --lengths lognormal" \
		"--requests 500 --input-len 2000 --output-len 100" \
		"--requests 1000 --input-len 128 --output-len 4" \
		"--requests 500 --input-len 4000 --output-len 200" ${GPTOSS_SERVE_EXTRA:+"$GPTOSS_SERVE_EXTRA"}; do
		echo "$g $args"
		timeout 300 $g $args | tee -a "$OUT/serve.jsonl" || fail "serve $args"
	done
}

itl_runs() {
	local g="bin/gptoss bench --model $models/20b --device cuda --arrivals 8 --running 64 --arrival-len 2048"
	section "inter-token latency while 2048-token prompts arrive (gptoss bench --arrivals)"
	for args in "--prefill-chunk 2048" "--prefill-chunk 512" "--prefill-chunk 256" "--prefill-chunk 128" \
		"--prefill-chunk 256 --arrive-every 4"; do
		echo "$g $args"
		timeout 60 $g $args | tee -a "$OUT/bench.jsonl" || fail "itl $args"
	done
}

structured_output() {
	section "structured output on tiny (CUDA)"
	bin/gptoss generate --model "$models/tiny" --device cuda --prompt "Extract the invoice" \
		--json-schema test/fixtures/invoice.schema.json --max-tokens 200 --seed 3 --temperature 1 |
		tee "$bin/json_tiny.txt" || fail "generate --json-schema"
	python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$bin/json_tiny.txt" || fail "output is not JSON"
	section "gptoss bench: 20b decode at batch 64, constrained vs not"
	for schema in "" "--json-schema test/fixtures/invoice.schema.json"; do
		cmd="bin/gptoss bench --model $models/20b --device cuda --batch 64 --prompt-len 128 --gen 256 $schema"
		echo "$cmd"; timeout 200 $cmd | tee -a "$OUT/bench.jsonl" || fail "bench $schema"
	done
}

# Seconds a big-mode step may take: its own limit, capped by what BIG_LIMIT leaves (at least 1: timeout 0 would never stop).
big_lim() {
	local left=$((${BIG_LIMIT:-530} - SECONDS))
	[ "$left" -lt 1 ] && left=1
	[ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}

# gpt-oss-120b on one GPU: correctness on a few positions, decode and prefill speed, weight bytes.
big_120b() {
	local shm=/dev/shm/gptoss-models m=/dev/shm/gptoss-models/120b need avail t0 cmd
	trap 'rm -rf /dev/shm/gptoss-models' EXIT

	section "backend tests: tiny-moe (128 experts, top 4)"
	bin/gptoss synth --preset tiny-moe --out "$models/tiny-moe" --tokenizer "$tok" >/dev/null ||
		fail "synth tiny-moe"
	timeout "$(big_lim 60)" "$bin/test_backend" "$models/tiny-moe" 100 24 || fail "test_backend tiny-moe"

	section "120b synth checkpoint in $shm"
	# 65,248,815,744 tensor bytes plus headers and the tokenizer, with room to spare
	need=$((66 * 1000 * 1000 * 1000))
	avail=$(df -B1 --output=avail /dev/shm | tail -1)
	if [ "${avail:-0}" -lt "$need" ]; then
		echo "/dev/shm has $avail bytes free: remounting it with size=100g"
		mount -o remount,size=100g /dev/shm || { fail "/dev/shm too small ($avail bytes)"; return; }
	fi
	df -h /dev/shm; free -g | head -2; echo "cores: $(nproc)"
	mkdir -p "$shm"
	t0=$SECONDS
	if ! timeout "$(big_lim 180)" bin/gptoss synth --preset 120b --out "$m" --tokenizer "$tok" >/dev/null; then
		fail "synth 120b"; return
	fi
	echo "synth 120b: $((SECONDS - t0)) s, $(du -sb "$m" | cut -f1) bytes in $(ls "$m" | grep -c safetensors$) files"
	free -g | head -2

	section "backend tests: 120b (CUDA vs CPU on 32 positions + 8 decode steps, CUDA-only checks)"
	timeout "$(big_lim 180)" "$bin/test_backend" "$m" 32 8 --top1 --big-model || fail "test_backend 120b"

	section "gptoss bench: 120b decode"
	cmd="bin/gptoss bench --model $m --device cuda --batch 1,64,256 --prompt-len 128 --gen 128"
	echo "$cmd"; timeout "$(big_lim 180)" $cmd | tee "$bin/big.jsonl" || fail "bench 120b decode"
	section "gptoss bench: 120b prefill 2048"
	cmd="bin/gptoss bench --model $m --device cuda --batch 1 --prompt-len 2048 --gen 2"
	echo "$cmd"; timeout "$(big_lim 90)" $cmd | tee -a "$bin/big.jsonl" || fail "bench 120b prefill 2048"
	sed 's/^{/{"model":"120b",/' "$bin/big.jsonl" >>"$OUT/bench.jsonl"

	section "120b: weights on the device, decode at one sequence"
	python3 - "$bin/big.jsonl" <<-'PY' || fail "120b weights above 62 GiB (or no bench line)"
	import json, sys
	lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
	w = max((l["weight_bytes"] for l in lines), default=0)
	print(f"weights on the device: {w} bytes = {w / 2**30:.2f} GiB (target <= 62 GiB)")
	for l in lines:
	    print(f"batch {l['batch']:>3} prompt {l['prompt_len']:>4}: prefill {l['prefill_tok_s']:>9.1f} tok/s, "
	          f"decode {l['decode_tok_s']:>8.1f} tok/s, peak {l['peak_mem_bytes'] / 2**30:.2f} GiB")
	one = [l["decode_tok_s"] for l in lines if l["batch"] == 1 and l["gen"] > 2]
	if one:
	    print(f"one sequence: {one[0]:.1f} tok/s (target >= 350)")
	sys.exit(0 if 0 < w <= 62 * 2**30 else 1)
	PY

	if [ "$(big_lim 1000)" -ge 150 ]; then
		PROFILE_LIMIT=$(big_lim 240) profile decode_b1_120b "$bin/bench_backend" "$m" 1 16 6 1
	else
		echo "(no time left for the batch-1 decode profile)"
	fi
	rm -rf "$shm"
}

case "$mode" in
	big)
		big_120b ;;
	json)
		[ -n "${GPTOSS_SKIP_TINY:-}" ] || tests_tiny
		synth_20b; structured_output ;;
	quick)
		tests_tiny; tests_quick_rest ;;
	full)
		tests_tiny; tests_quick_rest; synth_20b; benches
		section "backend tests: 20b (CUDA vs CPU, batched vs unbatched)"
		timeout 300 "$bin/test_backend" "$models/20b" 12 6 --top1 || fail "test_backend 20b" ;;
	bench)
		synth_20b; benches ;;
	invariance)
		tests_tiny
		section "backend tests: tiny-odd"
		"$bin/test_backend" "$models/tiny-odd" 77 24 || fail "test_backend tiny-odd"
		synth_20b
		section "backend tests: 20b (CUDA vs CPU, batch invariance)"
		timeout 300 "$bin/test_backend" "$models/20b" 12 6 --top1 || fail "test_backend 20b"
		section "bench_backend: 20b decode, CUDA graphs on"
		timeout 150 "$bin/bench_backend" "$models/20b" 1,8,32,64,128 128 128 1 | tee -a "$OUT/bench.jsonl" || fail "bench_backend graphs"
		section "bench_backend: 20b prefill 2048"
		timeout 60 "$bin/bench_backend" "$models/20b" 1 2048 2 1 | tee -a "$OUT/bench.jsonl" || fail "bench_backend prefill 2048"
		cmd="bin/gptoss bench --model $models/20b --device cuda --batch 1 --prompt-len 2048 --gen 2"
		echo "$cmd"; timeout 120 $cmd | tee -a "$OUT/bench.jsonl" || fail "bench prefill 2048" ;;
	prefix)
		[ -n "${GPTOSS_SKIP_TINY:-}" ] || tests_tiny
		synth_20b
		for args in "--gen 16" "--classify"; do
			section "bench_prefix_cache: 20b, $prefix_rows rows, 500-token instruction, 50-token rows, $args"
			cmd="bin/bench_prefix_cache --model $models/20b --device cuda --rows $prefix_rows --instruction-tokens 500 --row-tokens 50 --batch 64 --context 2048 $args"
			echo "$cmd"; timeout 280 $cmd | tee -a "$OUT/bench.jsonl" || fail "bench_prefix_cache $args"
		done ;;
	serve)
		synth_20b; serving
		section "gptoss bench: 20b decode at 256-1024 sequences"
		cmd="bin/gptoss bench --model $models/20b --device cuda --batch 256,512,1024 --prompt-len 128 --gen 128"
		echo "$cmd"; timeout 200 $cmd | tee -a "$OUT/bench.jsonl" || fail "bench decode 256-1024"
		profile decode_b256 "$bin/bench_backend" "$models/20b" 256 8 3 1 ;;
	itl)
		synth_20b; itl_runs ;;
	profile)
		tests_tiny; synth_20b; benches
		profile decode_b1 "$bin/bench_backend" "$models/20b" 1 16 6 1
		profile decode_b64 "$bin/bench_backend" "$models/20b" 64 16 4 1
		profile prefill_2048 "$bin/bench_backend" "$models/20b" 1 2048 2 1 ;;
	*)
		echo "unknown mode $mode"; exit 2 ;;
esac

section "done"
[ $status -eq 0 ] && echo "ALL PASSED" || echo "SOME CHECKS FAILED"
exit $status
