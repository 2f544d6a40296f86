#!/usr/bin/env bash
# test/unit/cli_bench_itl.sh: `gptoss bench --arrivals` on the tiny model (CPU
# backend): long prompts arriving while other sequences decode.  The JSON
# line's keys, the step schedule (window length, steps carrying prompt chunks,
# steps to the first token) for one chunk and for the engine's chunking, the
# effective step limits, latency order, that a whole prompt in one step is
# the long stall chunking removes, and option errors.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${GPTOSS_TEST_MODEL:-build/tiny}
bin=bin/gptoss
. test/unit/lib/json_checks.sh

# 4 sequences decode; 3 prompts of 1,024 tokens arrive 12 steps apart: 36 steps in the window
run="$bin bench --model $model --device cpu --threads 1 --arrivals 3 --running 4 --prompt-len 16 --arrival-len 1024 --arrive-every 12"
chunked=$($run)
whole=$($run --prefill-chunk 1024)
floor=$($run --max-step-tokens 100)

keys="arrival_len,arrivals,arrive_every,decode_step_ms_p50,decode_tok_s,device,itl_ms_max,itl_ms_mean,itl_ms_p50,itl_ms_p99,max_context,max_seqs,max_step_tokens,mode,peak_mem_bytes,prefill_chunk,prefill_step_ms_p50,prefill_steps,prompt_len,running,steps,ttft_ms_max,ttft_ms_mean,ttft_ms_p50,ttft_ms_p99,ttft_steps_max,wall_s"
check "itl line has its keys and repeats the workload" \
	"join(',', sort keys %\$j) eq '$keys'"' && $j->{mode} eq "itl" && $j->{device} =~ /^CPU/ && $j->{running} == 4 && $j->{prompt_len} == 16 && $j->{arrivals} == 3 && $j->{arrival_len} == 1024 && $j->{arrive_every} == 12' \
	"$chunked"
check "engine chunking (256): 4 chunk steps per arrival, a slot for each arrival" \
	'$j->{prefill_chunk} == 256 && $j->{max_step_tokens} == 2048 && $j->{steps} == 36 && $j->{prefill_steps} == 12 && $j->{ttft_steps_max} == 4 && $j->{max_seqs} == 7 && $j->{max_context} >= 1025' \
	"$chunked"
check "one chunk: each arrival prefilled in one step" \
	'$j->{prefill_chunk} == 1024 && $j->{steps} == 36 && $j->{prefill_steps} == 3 && $j->{ttft_steps_max} == 1' "$whole"
check "the step budget reported is the engine's floor (slots + chunk)" \
	'$j->{prefill_chunk} == 256 && $j->{max_step_tokens} == 7 + 256 && $j->{prefill_steps} == 12' "$floor"
for line in "$chunked" "$whole"; do
	check "latency order, decode rate = running tokens over wall time" \
		'$j->{itl_ms_p50} > 0 && $j->{itl_ms_p50} <= $j->{itl_ms_p99} && $j->{itl_ms_p99} <= $j->{itl_ms_max} && $j->{ttft_ms_p50} > 0 && $j->{ttft_ms_p50} <= $j->{ttft_ms_p99} && $j->{ttft_ms_p99} <= $j->{ttft_ms_max} && $j->{decode_step_ms_p50} > 0 && $j->{wall_s} > 0 && abs($j->{decode_tok_s} - 4 * 36 / $j->{wall_s}) <= 0.02 * $j->{decode_tok_s} + 1' \
		"$line"
done
# a 1,024-token step costs ~4 of the 256-token ones on any machine: a wide margin for a busy box
check "a whole prompt in one step stalls decoding longer than a chunk does" \
	'$j->{itl_ms_max} > 1.5 * '"$(perl -MJSON::PP -e 'print decode_json($ARGV[0])->{prefill_step_ms_p50}' "$chunked")" \
	"$whole"

for bad in "--arrivals 2 --requests 4" "--arrivals 2 --batch 4" "--arrivals 2 --gen 4" "--running 4" \
	"--arrive-every 4" "--arrivals 0" "--arrivals 2 --arrival-len 0" "--arrivals 2 --max-context 100"; do
	if $bin bench --model "$model" --device cpu $bad >/dev/null 2>&1; then
		echo "FAILED: bench $bad was accepted"; fails=$((fails + 1))
	else
		echo "ok: bench $bad is refused"
	fi
done

json_checks_done cli_bench_itl
