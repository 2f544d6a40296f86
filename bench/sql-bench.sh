#!/usr/bin/env bash
# bench/sql-bench.sh: SQL-level throughput of gptoss on this machine (CPU
# backend unless told otherwise), through PostgreSQL itself.
#
# Starts a throwaway cluster (as test/demo.sh does) with gptoss preloaded,
# then measures SELECT gptoss_generate(prompt, params) under concurrency:
#   - the load generator (test/loadgen) with 1, 8 and 32 sessions (default);
#   - pgbench with a custom script (32 clients, random ~PROMPT_LEN-word prompts);
#   - a correctness run: 8 sessions in --check mode (greedy texts under
#     batching must equal each prompt's text when run alone).
# Every measurement starts on a freshly restarted server, so the worker's
# lifetime mean batch size in gptoss_stats is the measurement's own.
# Prints the JSON lines and a markdown table (also kept in $OUTDIR).
#
# Usage: bench/sql-bench.sh [MODEL_DIR]        (default build/tiny, made by test/setup.sh)
# Environment: SESSIONS ("1 8 32"), PROMPT_LEN (128 words ~ 128 tokens), GEN (128 tokens),
#   TOKENS_PER_SESSION (1024: requests per session = TOKENS_PER_SESSION / GEN, at least 1),
#   PGBENCH_CLIENTS (32), PGBENCH_TX (4 per client), DEVICE (cpu), PORT (54431),
#   OUTDIR (build/sql-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SESSIONS=${SESSIONS:-"1 8 32"}
PROMPT_LEN=${PROMPT_LEN:-128}
GEN=${GEN:-128}
TOKENS_PER_SESSION=${TOKENS_PER_SESSION:-1024}
PGBENCH_CLIENTS=${PGBENCH_CLIENTS:-32}
PGBENCH_TX=${PGBENCH_TX:-4}
DEVICE=${DEVICE:-cpu}
PORT=${PORT:-54431}
OUTDIR=${OUTDIR:-$ROOT/build/sql-bench}
log() { printf '== %s\n' "$*" >&2; }

if [ -n "${1:-}" ]; then
	MODEL=$(cd "$1" && pwd)
else
	[ -f build/tiny/config.json ] || bash test/setup.sh
	MODEL=$ROOT/build/tiny
fi
[ -f "$MODEL/config.json" ] || { echo "sql-bench.sh: no model in $MODEL (config.json missing)" >&2; exit 1; }
PGBIN=$(pg_config --bindir)
[ -f "$(pg_config --pkglibdir)/gptoss.so" ] \
	|| { echo "sql-bench.sh: gptoss.so is not installed (run test/setup.sh as root)" >&2; exit 1; }
command -v pgbench >/dev/null || { echo "sql-bench.sh: pgbench not found (postgresql-client)" >&2; exit 1; }

LOADGEN=$(bash test/loadgen/build.sh)
mkdir -p "$OUTDIR"
RESULTS=$OUTDIR/results.jsonl
: > "$RESULTS"

DATA=$(mktemp -d /tmp/gptoss-sqlbench.XXXXXX)
RUN=()
if [ "$(id -u)" = 0 ]; then
	chown postgres "$DATA"
	chmod o+rx "$ROOT" "$ROOT/build" "$MODEL"
	RUN=(runuser -u postgres --)
fi
cleanup() { "${RUN[@]}" "$PGBIN/pg_ctl" -D "$DATA/pg" -m fast stop >/dev/null 2>&1 || true; rm -rf "$DATA"; }
trap cleanup EXIT

max_sessions=$PGBENCH_CLIENTS
for n in $SESSIONS; do [ "$n" -gt "$max_sessions" ] && max_sessions=$n; done
"${RUN[@]}" "$PGBIN/initdb" -D "$DATA/pg" -A trust >/dev/null
cat >> "$DATA/pg/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DATA'
max_connections = $((max_sessions + 20))
shared_preload_libraries = 'gptoss'
gptoss.model_path = '$MODEL'
gptoss.device = '$DEVICE'
gptoss.max_batch_size = $((max_sessions > 64 ? max_sessions : 64))
gptoss.max_context = 2048
CONF
"${RUN[@]}" "$PGBIN/pg_ctl" -D "$DATA/pg" -l "$DATA/log" -w start >/dev/null
DSN="host=$DATA port=$PORT dbname=postgres user=postgres"
psql() { "${RUN[@]}" "$PGBIN/psql" -X -q -At -h "$DATA" -p "$PORT" -d postgres -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql -c "CREATE EXTENSION IF NOT EXISTS gptoss" >/dev/null

# Restarts the server (fresh worker counters) and waits until the model is loaded.
restart() {
	"${RUN[@]}" "$PGBIN/pg_ctl" -D "$DATA/pg" -l "$DATA/log" -m fast -w restart >/dev/null
	local state=
	for _ in $(seq 1 600); do
		state=$(psql -c "SELECT gptoss_status()->>'state'" 2>/dev/null || true)
		case $state in
			ready) return 0 ;;
			failed) psql -c "SELECT gptoss_status()->>'error'" >&2; exit 1 ;;
		esac
		sleep 0.2
	done
	echo "sql-bench.sh: worker not ready after 120 s (state '$state')" >&2
	tail -20 "$DATA/log" >&2
	exit 1
}

PARAMS="--max-tokens $GEN --temperature 0 --raw --ignore-eos"
for n in $SESSIONS; do
	requests=$((TOKENS_PER_SESSION / GEN)); [ "$requests" -ge 1 ] || requests=1
	restart
	log "loadgen: $n sessions x $requests requests ($PROMPT_LEN-word prompts, $GEN tokens)"
	# shellcheck disable=SC2086  # PARAMS holds several options
	"$LOADGEN" --dsn "$DSN" --sessions "$n" --requests "$requests" --prompt-len "$PROMPT_LEN" \
		$PARAMS --label "loadgen" | tee -a "$RESULTS"
done

# pgbench: each transaction one generate call on a fresh random prompt of
# PROMPT_LEN words from the load generator's word list; :r makes prompts unique.
restart
words="'the','of','and','to','in','is','that','for','it','as','was','with','be','by','on','not','he','this','are','or','his','from','at','which','but','have','an','had','they','you','were','their','one','all','we','can','her','has','there','been','if','more','when','will','would','who','so','no','time','people','water','house','light','world','river','table','music','paper','market','garden','city','book','money','story','night','school','number','friend','family','system','data','model','value','small','large','quick','brown','green','simple','early','happy'"
cat > "$DATA/pgbench.sql" <<SQL
\\set r random(1, 1000000000)
SELECT gptoss_generate(:r || ' ' || (SELECT string_agg((ARRAY[$words])[1 + floor(random() * $(tr ',' '\n' <<<"$words" | wc -l))::int], ' ') FROM generate_series(1, $((PROMPT_LEN - 4)))), '{"max_tokens": $GEN, "temperature": 0, "raw": true, "ignore_eos": true}');
SQL
chmod a+r "$DATA/pgbench.sql"
before=$(psql -c "SELECT sum(completion_tokens) || ' ' || sum(prompt_tokens) FROM gptoss_stats")
log "pgbench: $PGBENCH_CLIENTS clients x $PGBENCH_TX transactions"
pgb_out=$( (cd "$DATA" && "${RUN[@]}" "$PGBIN/pgbench" -n -h "$DATA" -p "$PORT" -U postgres \
	-c "$PGBENCH_CLIENTS" -j 2 -t "$PGBENCH_TX" -f "$DATA/pgbench.sql" -l --log-prefix="$DATA/pgb" postgres) 2>&1) \
	|| { echo "$pgb_out" >&2; echo "sql-bench.sh: pgbench failed" >&2; exit 1; }
echo "$pgb_out" >&2
read -r after_c after_p mean_batch < <(psql -c "SELECT sum(completion_tokens) || ' ' || sum(prompt_tokens) || ' ' || avg(mean_batch_size) FROM gptoss_stats")
tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$pgb_out" | head -1)
failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$pgb_out" | head -1)
[ "${failed:-0}" = 0 ] || { echo "sql-bench.sh: $failed pgbench transactions failed" >&2; exit 1; }
read -r before_c before_p <<<"$before"
tx=$((PGBENCH_CLIENTS * PGBENCH_TX))
# Per-transaction log lines: client, transaction, latency (us), script, epoch s, us;
# sorted latencies give nearest-rank percentiles.
awk '{ print $3 / 1000.0 }' "$DATA"/pgb.* | sort -g | awk -v tps="$tps" -v tx="$tx" \
	-v comp=$((after_c - before_c)) -v prom=$((after_p - before_p)) -v mb="$mean_batch" -v clients="$PGBENCH_CLIENTS" '
	{ lat[++n] = $1 }
	END {
		if (n != tx) { printf "pgbench logged %d transactions, expected %d\n", n, tx > "/dev/stderr"; exit 1 }
		p50 = lat[int((50 * n + 99) / 100)]; p95 = lat[int((95 * n + 99) / 100)]
		printf "{\"label\": \"pgbench\", \"sessions\": %d, \"requests\": %d, \"completion_tokens\": %d, \"prompt_tokens\": %d, \"wall_s\": %.3f, \"tok_s\": %.2f, \"req_s\": %.3f, \"latency_ms_p50\": %.1f, \"latency_ms_p95\": %.1f, \"latency_ms_max\": %.1f, \"mean_batch_size\": %.3f, \"mean_batch_size_scope\": \"lifetime\"}\n",
			clients, n, comp, prom, n / tps, comp / n * tps, tps, p50, p95, lat[n], mb
	}' | tee -a "$RESULTS"

restart
log "check: 8 sessions, greedy texts under batching vs alone"
# shellcheck disable=SC2086
"$LOADGEN" --dsn "$DSN" --sessions 8 --requests 1 --prompt-len "$PROMPT_LEN" $PARAMS --check \
	--label "check" | tee -a "$RESULTS"

# The markdown table of every JSON line.
python3 - "$RESULTS" <<'PY' | tee "$OUTDIR/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| client | sessions | requests | completion tokens | wall s | tok/s | p50 ms | p95 ms | mean batch | in flight (sampled) | mismatches |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    act = r.get("active_mean")
    mm = r["mismatches"] if r.get("checked") else "-"
    # A check run's lifetime mean includes its serial phase: not a batch size of the run.
    mb = "-" if r.get("checked") else f"{r['mean_batch_size']:.2f}"
    print(f"| {r['label']} | {r['sessions']} | {r['requests']} | {r['completion_tokens']} | {r['wall_s']:.2f} | "
          f"{r['tok_s']:.1f} | {r['latency_ms_p50']:.0f} | {r['latency_ms_p95']:.0f} | {mb} | "
          f"{'-' if act is None else f'{act:.1f}'} | {mm} |")
PY
