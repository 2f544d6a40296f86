#!/usr/bin/env bash
# test/loadgen/build.sh: compiles the libpq load generator gptoss_loadgen (with
# src/cli/serve_lengths.c, the length draw it shares with `gptoss bench --requests`).
#
#   bash test/loadgen/build.sh [OUTPUT]        (default build/gptoss_loadgen)
#
# libpq flags, in this order: LIBPQ_CFLAGS / LIBPQ_LIBS from the environment
# (on the GPU machine they come from .gpu-pg/start.sh), else pkg-config
# libpq, else /usr/include/postgresql and -lpq.  On a Debian machine without
# libpq's headers it installs libpq-dev when run as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUTPUT=${1:-build/gptoss_loadgen}
CC=${CC:-gcc}

if [ -z "${LIBPQ_CFLAGS:-}${LIBPQ_LIBS:-}" ]; then
	if ! pkg-config --exists libpq 2>/dev/null && [ ! -f /usr/include/postgresql/libpq-fe.h ]; then
		if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
			echo "== installing libpq-dev" >&2
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libpq-dev >&2 \
				|| { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libpq-dev >&2; }
		else
			echo "build.sh: libpq headers not found: install libpq-dev or set LIBPQ_CFLAGS and LIBPQ_LIBS" >&2
			exit 1
		fi
	fi
	if pkg-config --exists libpq 2>/dev/null; then
		LIBPQ_CFLAGS=$(pkg-config --cflags libpq)
		LIBPQ_LIBS=$(pkg-config --libs libpq)
	else
		LIBPQ_CFLAGS=-I/usr/include/postgresql
		LIBPQ_LIBS=-lpq
	fi
fi

mkdir -p "$(dirname "$OUTPUT")"
# shellcheck disable=SC2086  # the flag variables hold several words
"$CC" -std=gnu11 -O2 -Wall -Wextra -Isrc/cli -Isrc/engine -o "$OUTPUT" test/loadgen/gptoss_loadgen.c \
	src/cli/serve_lengths.c $LIBPQ_CFLAGS $LIBPQ_LIBS -lm
echo "$OUTPUT"
