#!/usr/bin/env bash
# test/reference/make-fixtures.sh: regenerates the committed reference
# fixtures on a GPU machine with PyTorch, HF transformers, tokenizers and
# tiktoken: tokenizer ids for test/fixtures/tokenizer_texts.json, and float32
# HF GptOssForCausalLM logits for the tiny and tiny-odd synthetic models.
# Writes into ${OUT:-test/fixtures}.
set -euo pipefail
cd "$(dirname "$0")/../.."
. test/reference/gpu-env.sh
DEST=${OUT:-test/fixtures}
make -j16 USE_CUDA=0 bin/gptoss >/dev/null
python3 test/reference/tokenizer_ref.py build/tokenizer.json test/fixtures/tokenizer_texts.json "$DEST/tokenizer_ids.json"
for preset in tiny tiny-odd; do
	rm -rf "/tmp/ref-$preset"
	bin/gptoss synth --preset "$preset" --out "/tmp/ref-$preset" --seed 0 --tokenizer build/tokenizer.json
	python3 test/reference/model_ref.py "/tmp/ref-$preset" "$DEST/model_${preset//-/_}.json" --device cuda
done
ls -la "$DEST"
