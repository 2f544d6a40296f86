#!/usr/bin/env bash
# bench/soak.sh: soak and chaos run (issue 10 item 6).  Builds the CPU-only
# extension, installs it into a private copy of PostgreSQL 15 (so that the
# system installation, shared by every worktree and test, is not touched and
# no lock is held for the length of the run), synthesises the tiny model,
# starts a throwaway cluster with gptoss preloaded and runs bench/soak.c
# against it: N clients of mixed calls with random cancels, the worker killed
# with SIGTERM every KILL_EVERY seconds and once with SIGKILL, RSS sampled,
# requests reconciled per interval.  Then draws the plot.
#
#   bash bench/soak.sh [--duration S] [--kill-every S] [--sigkill-at S] [--clients N]
#                      [--out DIR] [-- soak options...]
#
# Defaults: 1800 s, a SIGTERM every 300 s, the SIGKILL at 3.5 × KILL_EVERY,
# 128 clients, output in build/soak (soak.csv, intervals.csv, summary.md,
# summary.json, server.log, soak-rss.svg).  Smoke test:
#   bash bench/soak.sh --duration 120 --kill-every 30
# Environment: SOAK_ROOT (private installation, default /tmp/gptoss-soakroot),
# SOAK_PORT (default 54391), USE_CUDA (default 0: the CPU backend).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=1800
KILL_EVERY=300
SIGKILL_AT=
CLIENTS=128
OUT=$ROOT/build/soak
while [ $# -gt 0 ]; do
	case "$1" in
		--duration) DURATION=$2; shift 2 ;;
		--kill-every) KILL_EVERY=$2; shift 2 ;;
		--sigkill-at) SIGKILL_AT=$2; shift 2 ;;
		--clients) CLIENTS=$2; shift 2 ;;
		--out) OUT=$2; shift 2 ;;
		--) shift; break ;;
		*) echo "soak.sh: unknown option $1" >&2; exit 2 ;;
	esac
done
SIGKILL_AT=${SIGKILL_AT:-$((KILL_EVERY * 7 / 2))}
SOAK_ROOT=${SOAK_ROOT:-/tmp/gptoss-soakroot}
PORT=${SOAK_PORT:-54391}
export USE_CUDA=${USE_CUDA:-0}
PG_BIN_SYS=$(pg_config --bindir)
PG_LIB_SYS=$(dirname "$PG_BIN_SYS")           # /usr/lib/postgresql/15
PG_SHARE_SYS=$(pg_config --sharedir)           # /usr/share/postgresql/15
PGBIN=$SOAK_ROOT$PG_BIN_SYS

log() { printf '== %s\n' "$*" >&2; }

log "building (USE_CUDA=$USE_CUDA) and bin/gptoss_soak"
bash test/fetch-tokenizer.sh
make -j2 all bin/gptoss_soak >&2

log "private PostgreSQL in $SOAK_ROOT"
rm -rf "$SOAK_ROOT"
mkdir -p "$SOAK_ROOT$(dirname "$PG_LIB_SYS")" "$SOAK_ROOT$(dirname "$PG_SHARE_SYS")"
cp -a "$PG_LIB_SYS" "$SOAK_ROOT$PG_LIB_SYS"
cp -a "$PG_SHARE_SYS" "$SOAK_ROOT$PG_SHARE_SYS"
make install DESTDIR="$SOAK_ROOT" >&2
SO=$SOAK_ROOT$(pg_config --pkglibdir)/gptoss.so
[ -f "$SO" ] || { echo "soak.sh: $SO was not installed" >&2; exit 1; }

mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gptoss-soak.XXXXXX)
log "tiny model and cluster in $WORK"
bin/gptoss synth --preset tiny --out "$WORK/tiny" --tokenizer build/tokenizer.json >&2
chmod -R a+rX "$WORK"
RUN=()
if [ "$(id -u)" = 0 ]; then
	chown postgres "$WORK"
	RUN=(runuser -u postgres --)
fi
cleanup() {
	"${RUN[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
	cp "$WORK/server.log" "$OUT/server.log" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

"${RUN[@]}" "$PGBIN/initdb" -D "$WORK/pg" -A trust >/dev/null
cat >> "$WORK/pg/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
max_connections = $((CLIENTS + 20))
shared_preload_libraries = 'gptoss'
gptoss.model_path = '$WORK/tiny'
gptoss.device = 'cpu'
restart_after_crash = on
log_line_prefix = '%m [%p] %b '
CONF
"${RUN[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/server.log" -w start >/dev/null
DSN="host=$WORK port=$PORT dbname=postgres user=postgres"
PM_PID=$(head -1 "$WORK/pg/postmaster.pid")

"${RUN[@]}" "$PGBIN/psql" -X -q -h "$WORK" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 <<'SQL'
CREATE EXTENSION gptoss;
DO $$
BEGIN
  FOR i IN 1..600 LOOP
    EXIT WHEN gptoss_status()->>'state' IN ('ready', 'failed');
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;
SQL
# The private server must run the private build, not the system one.
WPID=$("${RUN[@]}" "$PGBIN/psql" -X -At -h "$WORK" -p "$PORT" -d postgres -c "SELECT pid FROM gptoss_stats LIMIT 1")
grep -q "$SO" "/proc/$WPID/maps" || { echo "soak.sh: worker $WPID has not mapped $SO" >&2; grep gptoss "/proc/$WPID/maps" >&2; exit 1; }
log "postmaster $PM_PID ($PGBIN/postgres), worker $WPID maps $SO"

{
	echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src sql bench || echo ' (with local changes)')"
	echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r), load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "command: bash bench/soak.sh --duration $DURATION --kill-every $KILL_EVERY --sigkill-at $SIGKILL_AT --clients $CLIENTS${*:+ -- $*}"
} > "$OUT/run.txt"
cat "$OUT/run.txt" >&2

log "soak: $CLIENTS clients, $DURATION s"
rc=0
bin/gptoss_soak --dsn "$DSN" --postmaster-pid "$PM_PID" --clients "$CLIENTS" --duration "$DURATION" \
	--kill-every "$KILL_EVERY" --sigkill-at "$SIGKILL_AT" --csv "$OUT/soak.csv" \
	--intervals "$OUT/intervals.csv" --json "$OUT/summary.json" "$@" > "$OUT/summary.md" || rc=$?
cat "$OUT/summary.md"
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/run.txt"
{ echo; python3 bench/plot_soak.py "$OUT/soak.csv" "$OUT/soak-rss.svg"; } | tee -a "$OUT/summary.md"
log "results in $OUT (exit status $rc)"
exit $rc
