#!/usr/bin/env bash
# test/unit/cli_first_run.sh: what bin/gptoss tells a first-time user on the
# tiny model: why generate printed an empty answer (random weights), that a
# checkpoint synthesised without --tokenizer cannot be loaded yet, that a
# missing model directory is missing (not its tokenizer), and that
# --device cuda without a usable GPU says so.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${GPTOSS_TEST_MODEL:-build/tiny}
bin=bin/gptoss
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0

ok() { echo "ok: $1"; }
bad() { echo "FAILED: $1"; fails=$((fails + 1)); }
# expect NAME STATUS REGEX: the last command's exit status and stderr ($tmp/err)
expect() {
	if [ "$rc" -eq "$2" ] && grep -Eq "$3" "$tmp/err"; then ok "$1"
	else bad "$1 (exit $rc, stderr: $(head -c 400 "$tmp/err"))"; fi
}
run() { rc=0; "$@" > "$tmp/out" 2> "$tmp/err" || rc=$?; }

run $bin generate --model "$model" --device cpu --prompt hi --max-tokens 8 --temperature 0
expect "generate on a random model: exit 0 and says there is no final answer" 0 \
	'no final answer: the model wrote no harmony "final" message in 8 tokens'
expect "generate on a random model: names the random weights and --raw" 0 'random weights.*--raw'
[ "$(cat "$tmp/out")" = "" ] && ok "generate on a random model: stdout is the empty answer" \
	|| bad "generate on a random model printed [$(cat "$tmp/out")]"

run $bin generate --model "$model" --device cpu --prompt hi --max-tokens 8 --temperature 0 --raw
if [ "$rc" -eq 0 ] && ! grep -q "final answer" "$tmp/err"; then ok "generate --raw: no note"
else bad "generate --raw: exit $rc, stderr $(cat "$tmp/err")"; fi

run $bin synth --preset tiny --out "$tmp/notok"
expect "synth without --tokenizer: exit 0, says tokenizer.json is needed and how to get it" 0 \
	"$tmp/notok has no tokenizer.json yet.*--tokenizer FILE"
grep -q '"gptoss_random_weights": true' "$tmp/notok/config.json" \
	&& ok "synth marks config.json as random weights" || bad "config.json lacks gptoss_random_weights"
run $bin generate --model "$tmp/notok" --device cpu --prompt hi
expect "the tokenizer-less checkpoint fails to load, naming tokenizer.json" 1 "$tmp/notok/tokenizer.json"

run $bin generate --model "$tmp/nonexistent" --device cpu --prompt hi
expect "a missing model directory is reported as the directory" 1 \
	"model directory $tmp/nonexistent: No such file or directory"
grep -q tokenizer "$tmp/err" && bad "missing directory still mentions the tokenizer" \
	|| ok "missing directory: no word about the tokenizer"

run $bin generate --model "$model" --device cuda --prompt hi --max-tokens 1
if [ "$rc" -eq 0 ]; then
	ok "--device cuda: a CUDA device is usable here (nothing to check)"
else
	expect "--device cuda without a usable GPU says so, with CUDA's reason" 1 \
		'^gptoss: no usable CUDA device found \(.+\)$'
fi

[ $fails -eq 0 ] || { echo "cli_first_run: $fails checks failed"; exit 1; }
echo "cli_first_run: all passed"
