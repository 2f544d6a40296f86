#!/usr/bin/env bash
# test/fuzz/run.sh SECONDS FUZZER...: runs each libFuzzer binary (built by
# `make fuzz`) for SECONDS on a corpus in $FUZZ_WORK/corpus_NAME (FUZZ_WORK
# defaults to build/fuzz), seeded on the first run, and prints one line per
# fuzzer: executions, seconds, crashes.  Exits non-zero when a fuzzer finds a
# crash (its input is kept as $FUZZ_WORK/crash-*), or when there is nothing
# to run.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=$1
shift
[ $# -gt 0 ] || { echo "fuzz/run.sh: no fuzzers given" >&2; exit 1; }
export GPTOSS_TOKENIZER=${GPTOSS_TOKENIZER:-$PWD/build/tokenizer.json}
work=${FUZZ_WORK:-build/fuzz}
mkdir -p "$work"

# seed_corpus NAME DIR: a few valid inputs for the fuzzer NAME to start from.
seed_corpus() {
	case "$1" in
		fuzz_safetensors)
			# a minimal valid file: 8-byte header length, the JSON header, 8 data bytes
			local header='{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":"v"}}'
			perl -e 'print pack("Q<", length $ARGV[0]), $ARGV[0], "\0" x 8' "$header" > "$2/minimal"
			if [ -f build/tiny/model.safetensors ]; then
				head -c 20000 build/tiny/model.safetensors > "$2/tiny_head"
			fi
			;;
		fuzz_tokenizer)
			printf 'Hello, world! 123 <|start|>user' > "$2/ascii"
			printf 'caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xe4\xb8\xad\xe6\x96\x87\n\t  x' > "$2/utf8"
			printf 'bad \xff\xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 \xe2\x82' > "$2/invalid"
			;;
	esac
}

failed=0
for bin in "$@"; do
	name=$(basename "$bin")
	corpus=$work/corpus_$name
	if [ ! -d "$corpus" ]; then
		mkdir -p "$corpus"
		seed_corpus "$name" "$corpus"
	fi
	log=$work/$name.log
	rc=0
	"$bin" -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$work/" \
		"$corpus" > "$log" 2>&1 || rc=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
	if [ "$rc" -eq 0 ]; then
		echo "$name: ${runs:-?} runs in ${took:-?} s, 0 crashes"
	else
		echo "$name: CRASH (exit $rc) after ${runs:-?} runs; log $log:"
		tail -40 "$log"
		failed=1
	fi
done
exit $failed
