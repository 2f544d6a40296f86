#!/usr/bin/env bash
# test/unit/cli_bench.sh: `gptoss bench` on the tiny model (CPU backend): the
# per-batch JSON lines and the serving run (--requests): token totals, the
# log-normal draw, latency order, option errors.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${GPTOSS_TEST_MODEL:-build/tiny}
bin=bin/gptoss
. test/unit/lib/json_checks.sh

classic=$($bin bench --model "$model" --device cpu --threads 1 --batch 2 --prompt-len 8 --gen 4)
check "per-batch line keeps its keys and names the device" \
	'join(",", sort keys %$j) eq "batch,decode_tok_s,device,gen,peak_mem_bytes,prefill_tok_s,prompt_len,ttft_ms,weight_bytes" && $j->{device} =~ /^CPU/ && $j->{batch} == 2' \
	"$classic"
# the CPU backend's weights are the mapped checkpoint: its tensor bytes (tiny: 51,804,896)
check "per-batch line reports the weight bytes, at most the peak" \
	'$j->{weight_bytes} > 50000000 && $j->{weight_bytes} <= $j->{peak_mem_bytes}' \
	"$classic"

# 20 fixed-length requests through 8 slots: all queued at once, run 8 at a time
fixed=$($bin bench --model "$model" --device cpu --threads 1 --requests 20 --input-len 16 --output-len 8 --max-seqs 8)
check "fixed lengths: token totals" \
	'$j->{mode} eq "serve" && $j->{requests} == 20 && $j->{input_tokens} == 320 && $j->{output_tokens} == 160 && $j->{weight_bytes} > 0' "$fixed"
check "fixed lengths: throughput is tokens over wall time" \
	'$j->{wall_s} > 0 && abs($j->{total_tok_s} - 480 / $j->{wall_s}) <= 0.01 * $j->{total_tok_s} + 0.1 && abs($j->{output_tok_s} - 160 / $j->{wall_s}) <= 0.01 * $j->{output_tok_s} + 0.1' "$fixed"
check "fixed lengths: latency order and batch bound" \
	'$j->{ttft_ms_p50} <= $j->{ttft_ms_p99} && $j->{itl_ms_p50} <= $j->{itl_ms_p99} && $j->{itl_ms_p50} > 0 && $j->{ttft_ms_p99} <= 1000 * $j->{wall_s} + 1 && $j->{mean_batch} > 1 && $j->{mean_batch} <= 8 && $j->{max_seqs} == 8 && $j->{max_context} == 24' "$fixed"

# log-normal: 64 draws around means 12 / 6 (sample mean sd ~16 %); the same seed draws the same
ln1=$($bin bench --model "$model" --device cpu --threads 1 --requests 64 --input-len 12 --output-len 6 --lengths lognormal)
ln2=$($bin bench --model "$model" --device cpu --threads 1 --requests 64 --input-len 12 --output-len 6 --lengths lognormal)
ln3=$($bin bench --model "$model" --device cpu --threads 1 --requests 64 --input-len 12 --output-len 6 --lengths lognormal --seed 7)
check "lognormal: means near the asked ones" \
	'$j->{lengths} eq "lognormal" && $j->{input_tokens} / 64 > 8 && $j->{input_tokens} / 64 < 18 && $j->{output_tokens} / 64 > 4.2 && $j->{output_tokens} / 64 < 9' "$ln1"
t1=$(perl -MJSON::PP -e 'my $j = decode_json($ARGV[0]); print "$j->{input_tokens}/$j->{output_tokens}"' "$ln1")
t2=$(perl -MJSON::PP -e 'my $j = decode_json($ARGV[0]); print "$j->{input_tokens}/$j->{output_tokens}"' "$ln2")
t3=$(perl -MJSON::PP -e 'my $j = decode_json($ARGV[0]); print "$j->{input_tokens}/$j->{output_tokens}"' "$ln3")
if [ "$t1" = "$t2" ] && [ "$t1" != "$t3" ]; then echo "ok: lognormal draw is deterministic in the seed ($t1, seed 7: $t3)"
else echo "FAILED: lognormal totals $t1 / $t2 / seed 7: $t3"; fails=$((fails + 1)); fi

for bad in "--requests 4 --lengths uniform" "--input-len 8" "--requests 4 --lengths lognormal --input-len 3000" "--requests 0"; do
	if $bin bench --model "$model" --device cpu $bad >/dev/null 2>&1; then
		echo "FAILED: bench $bad was accepted"; fails=$((fails + 1))
	else
		echo "ok: bench $bad is refused"
	fi
done

json_checks_done cli_bench
