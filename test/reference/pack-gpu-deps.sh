#!/usr/bin/env bash
# test/reference/pack-gpu-deps.sh: gathers into .gpu-deps/ (git-ignored; carry
# it in device calls) the Debian libraries the engine links against and the
# gzip'ed tokenizer, since the GPU machine has no package registry.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .gpu-deps
(cd .gpu-deps && apt-get download -qq libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 \
	libpcre2-posix3 libjansson-dev libjansson4)
[ -f build/tokenizer.json ] || bash test/setup.sh
gzip -9c build/tokenizer.json > .gpu-deps/tokenizer.json.gz
du -sh .gpu-deps
