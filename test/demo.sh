#!/usr/bin/env bash
# test/demo.sh: the main job end to end on a generated model.  Builds and
# installs the extension, synthesises a tiny random gpt-oss model, starts a
# throwaway PostgreSQL cluster with gptoss preloaded, creates a small docs
# table and runs SELECT id, gptoss_generate(body) FROM docs.  A random model
# writes no harmony "final" message, so the demo also shows raw continuations.
# Usage: test/demo.sh [MODEL_DIR]   (default: the generated build/tiny)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bash test/setup.sh
MODEL=${1:-$ROOT/build/tiny}
PGBIN=$(pg_config --bindir)
DATA=$(mktemp -d)
PORT=${GPTOSS_DEMO_PORT:-54329}
RUN=()
if [ "$(id -u)" = 0 ]; then
	chown postgres "$DATA"
	chmod o+rx "$ROOT" "$ROOT/build"
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
gptoss.device = 'auto'
CONF
"${RUN[@]}" "$PGBIN/pg_ctl" -D "$DATA/pg" -l "$DATA/log" -w start >/dev/null
psql() { "${RUN[@]}" "$PGBIN/psql" -X -q -h "$DATA" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 "$@"; }

psql <<'SQL'
CREATE EXTENSION gptoss;
DO $$
BEGIN
  FOR i IN 1..600 LOOP
    EXIT WHEN gptoss_status()->>'state' IN ('ready', 'failed');
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;
\echo '-- gptoss_status()'
SELECT jsonb_pretty(gptoss_status() - 'config');
CREATE TABLE docs (id int PRIMARY KEY, body text);
INSERT INTO docs VALUES
  (1, 'PostgreSQL is a powerful, open source object-relational database system.'),
  (2, 'The quick brown fox jumps over the lazy dog.'),
  (3, 'Summarise: gpt-oss-20b is a mixture-of-experts language model.');
\echo '-- SELECT id, gptoss_generate(body) FROM docs   (chat format: a random model writes no final answer)'
SELECT id, gptoss_generate(body, '{"max_tokens": 32, "temperature": 0}') AS answer FROM docs;
\echo '-- raw continuations'
SELECT id, gptoss_generate(body, '{"raw": true, "max_tokens": 16, "temperature": 0}') AS continuation FROM docs;
\echo '-- the same rows batched in one call: gptoss_generate_many'
SELECT a.id, a.continuation
FROM (SELECT array_agg(id ORDER BY id) AS ids, array_agg(body ORDER BY id) AS bodies FROM docs) s,
     unnest(s.ids, gptoss_generate_many(s.bodies, '{"raw": true, "max_tokens": 16, "temperature": 0}'))
       AS a(id, continuation);
\echo '-- gptoss_stats'
\x on
SELECT * FROM gptoss_stats;
SQL
