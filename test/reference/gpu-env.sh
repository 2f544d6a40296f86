# test/reference/gpu-env.sh: sourced on the GPU machine (no package registry
# there) to unpack the carried Debian libraries (.gpu-deps/*.deb: PCRE2,
# jansson) and the compressed tokenizer, and to export the build flags that
# point the Makefile at them.  Prepare .gpu-deps here with test/reference/pack-gpu-deps.sh.
GPU_DEPS=/tmp/gptoss-deps
mkdir -p "$GPU_DEPS"
for f in .gpu-deps/*.deb; do dpkg -x "$f" "$GPU_DEPS"; done
mkdir -p build
[ -f build/tokenizer.json ] || gunzip -c .gpu-deps/tokenizer.json.gz > build/tokenizer.json
export GPTOSS_EXTRA_CFLAGS="-I$GPU_DEPS/usr/include"
export GPTOSS_EXTRA_LDFLAGS="-L$GPU_DEPS/usr/lib/x86_64-linux-gnu -Wl,-rpath,$GPU_DEPS/usr/lib/x86_64-linux-gnu"
export GPTOSS_TOKENIZER=$PWD/build/tokenizer.json
export PYTHONUNBUFFERED=1
