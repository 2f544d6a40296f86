#!/usr/bin/env bash
# bench/batch-bench.sh: one statement over many rows, three ways, through
# PostgreSQL:
#   on    SELECT gptoss_generate(body, P) FROM docs       (GptossBatch node, default window)
#   off   the same with gptoss.batch_window = 0           (row by row; OFF_ROWS rows, LIMIT)
#   many  SELECT gptoss_generate_many(array_agg(body ORDER BY id), P) FROM docs
# with P = {"max_tokens": GEN, "temperature": 0, "raw": true, "ignore_eos": true}
# over ROWS rows of ~PROMPT_LEN-token prompts (single-token words, every row
# different).  tok/s = completion tokens / statement wall time; completion
# tokens and the mean batch size of the statement's steps come from the
# gptoss_stats counters before and after it.  The row-by-row run reads fewer
# rows (its tok/s does not depend on the row count, and 1,000 rows at batch 1
# would take minutes).
#
# Every SQL statement goes through test/loadgen's --exec (libpq), so the same
# script runs where there is no psql (the GPU machine).
#
# Usage:
#   bench/batch-bench.sh [MODEL_DIR]    CPU by default: a throwaway cluster, as sql-bench.sh
#                                       (MODEL_DIR default build/tiny, made by test/setup.sh)
#   DSN=... LOADGEN=... bench/batch-bench.sh --server
#                                       against a running server with gptoss ready
#                                       (test/e2e/gpu-postgres.sh with BATCH_BENCH=1)
# Environment: ROWS (1000), OFF_ROWS (100), PROMPT_LEN (128), GEN (128), DEVICE (cpu),
#   MAX_BATCH (64), PORT (54432), OUTDIR (build/batch-bench).
# Prints one JSON line per run and a markdown table (also kept in $OUTDIR).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROWS=${ROWS:-1000}
OFF_ROWS=${OFF_ROWS:-100}
PROMPT_LEN=${PROMPT_LEN:-128}
GEN=${GEN:-128}
DEVICE=${DEVICE:-cpu}
MAX_BATCH=${MAX_BATCH:-64}
PORT=${PORT:-54432}
OUTDIR=${OUTDIR:-$ROOT/build/batch-bench}
log() { printf '== %s\n' "$*" >&2; }

mkdir -p "$OUTDIR"
RESULTS=$OUTDIR/results.jsonl
: > "$RESULTS"

if [ "${1:-}" = --server ]; then
	[ -n "${DSN:-}" ] && [ -x "${LOADGEN:-}" ] || { echo "batch-bench.sh --server needs DSN and LOADGEN" >&2; exit 1; }
else
	if [ -n "${1:-}" ]; then
		MODEL=$(cd "$1" && pwd)
	else
		[ -f build/tiny/config.json ] || bash test/setup.sh
		MODEL=$ROOT/build/tiny
	fi
	[ -f "$MODEL/config.json" ] || { echo "batch-bench.sh: no model in $MODEL" >&2; exit 1; }
	PGBIN=$(pg_config --bindir)
	[ -f "$(pg_config --pkglibdir)/gptoss.so" ] \
		|| { echo "batch-bench.sh: gptoss.so is not installed (run test/setup.sh as root)" >&2; exit 1; }
	LOADGEN=$(bash test/loadgen/build.sh)
	DATA=$(mktemp -d /tmp/gptoss-batchbench.XXXXXX)
	RUN=()
	if [ "$(id -u)" = 0 ]; then
		chown postgres "$DATA"
		chmod o+rx "$ROOT" "$ROOT/build" "$MODEL"
		RUN=(runuser -u postgres --)
	fi
	cleanup() { "${RUN[@]}" "$PGBIN/pg_ctl" -D "$DATA/pg" -m fast stop >/dev/null 2>&1 || true; rm -rf "$DATA"; }
	trap cleanup EXIT
	"${RUN[@]}" "$PGBIN/initdb" -D "$DATA/pg" -A trust >/dev/null
	cat >> "$DATA/pg/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DATA'
shared_preload_libraries = 'gptoss'
gptoss.model_path = '$MODEL'
gptoss.device = '$DEVICE'
gptoss.max_batch_size = $MAX_BATCH
gptoss.max_context = 2048
CONF
	"${RUN[@]}" "$PGBIN/pg_ctl" -D "$DATA/pg" -l "$DATA/log" -w start >/dev/null
	DSN="host=$DATA port=$PORT dbname=postgres user=postgres"
fi

# Runs SQL (one or more statements) and prints the last one's rows.
sql() { "$LOADGEN" --dsn "$DSN" --exec "$1"; }

[ "$(sql "SELECT to_regproc('gptoss_status') IS NOT NULL")" = t ] || sql "CREATE EXTENSION gptoss" >/dev/null
"$LOADGEN" --dsn "$DSN" --wait-ready --exec "SELECT 1" >/dev/null
DEVICE_NAME=$(sql "SELECT gptoss_status()->'device'->>'name'")
WINDOW=$(sql "SHOW gptoss.batch_window")
log "device: $DEVICE_NAME; gptoss.batch_window = $WINDOW"

# docs: ROWS rows of PROMPT_LEN words drawn (by a hash of row and position)
# from words that are single tokens in o200k, as the load generator does.
words="'the','of','and','to','in','is','that','for','it','as','was','with','be','by','on','not','he','this','are','or','his','from','at','which','but','have','an','had','they','you','were','their','one','all','we','can','her','has','there','been','if','more','when','will','would','who','so','no','time','people','water','house','light','world','river','table','music','paper','market','garden','city','book','money','story','night','school','number','friend','family','system','data','model','value','small','large','quick','brown','green','simple','early','happy'"
sql "DROP TABLE IF EXISTS docs;
CREATE TABLE docs AS
SELECT i AS id, (SELECT string_agg(w[1 + (hashint8(i::bigint * 100003 + j) & 2147483647) % cardinality(w)], ' ')
                 FROM generate_series(1, $PROMPT_LEN) j) AS body
FROM generate_series(1, $ROWS) i, (SELECT ARRAY[$words] AS w) words;
ANALYZE docs" >/dev/null
log "docs: $ROWS rows, ~$(sql "SELECT round(avg(cardinality(gptoss_tokenize(body)))) FROM (SELECT body FROM docs LIMIT 20) s") tokens each"

P="{\"max_tokens\": $GEN, \"temperature\": 0, \"raw\": true, \"ignore_eos\": true}"
STATS="SELECT sum(completion_tokens) || ' ' || sum(steps) || ' ' || sum(mean_batch_size * steps) FROM gptoss_stats"

# Warm-up (first steps of a fresh worker).
sql "SELECT gptoss_generate_many(array_agg(body), '$P') FROM (SELECT body FROM docs LIMIT 64) s" >/dev/null

# Runs one measured statement; label, rows, SQL.
measure() {
	local label=$1 rows=$2 stmt=$3 before after t0 t1
	log "$label: $rows rows"
	before=$(sql "$STATS")
	t0=$(date +%s.%N)
	sql "$stmt" >/dev/null
	t1=$(date +%s.%N)
	after=$(sql "$STATS")
	read -r c0 s0 q0 <<<"$before"
	read -r c1 s1 q1 <<<"$after"
	awk -v label="$label" -v rows="$rows" -v c="$((c1 - c0))" -v s="$((s1 - s0))" -v q0="$q0" -v q1="$q1" \
		-v t0="$t0" -v t1="$t1" -v window="$WINDOW" -v dev="$DEVICE_NAME" 'BEGIN {
		wall = t1 - t0
		printf "{\"label\": \"%s\", \"rows\": %d, \"batch_window\": %d, \"completion_tokens\": %d, \"wall_s\": %.3f, \"tok_s\": %.1f, \"steps\": %d, \"mean_batch\": %.2f, \"device\": \"%s\"}\n",
			label, rows, window, c, wall, c / wall, s, (s > 0 ? (q1 - q0) / s : 0), dev
	}' | tee -a "$RESULTS"
}

measure "node on" "$ROWS" "SELECT gptoss_generate(body, '$P') FROM docs"
measure "node off" "$OFF_ROWS" "SET gptoss.batch_window = 0; SELECT gptoss_generate(body, '$P') FROM docs LIMIT $OFF_ROWS"
measure "generate_many" "$ROWS" "SELECT gptoss_generate_many(array_agg(body ORDER BY id), '$P') FROM docs"

python3 - "$RESULTS" <<'PY' | tee "$OUTDIR/table.md" || cat "$RESULTS"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {r["label"]: r for r in rows}
print("| run | rows | completion tokens | wall s | tok/s | mean batch |")
print("|---|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['label']} | {r['rows']} | {r['completion_tokens']} | {r['wall_s']:.2f} | {r['tok_s']:.1f} | {r['mean_batch']:.2f} |")
on, off, many = by["node on"]["tok_s"], by["node off"]["tok_s"], by["generate_many"]["tok_s"]
print()
print(f"node on / generate_many = {on / many:.1%}; node on / node off = {on / off:.1f}x "
      f"(batch_window {rows[0]['batch_window']}, device {rows[0]['device']})")
PY
