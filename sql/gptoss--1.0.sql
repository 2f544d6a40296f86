/* sql/gptoss--1.0.sql: the SQL API of gptoss (README.md, SQL API) */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION gptoss" to load this file. \quit

-- The model reads and writes UTF-8; in a database of another encoding an
-- answer could hold characters the database cannot store (or, in SQL_ASCII,
-- bytes nobody can interpret), so such a database is refused up front.
DO $$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION 'gptoss requires a database whose encoding is UTF8, not %',
            pg_catalog.getdatabaseencoding()
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'The model reads and writes UTF-8 text; answers in a database of another encoding could not always be stored.',
                  HINT = 'Create the database with ENCODING ''UTF8'' (from TEMPLATE template0 when template1 has another encoding).';
    END IF;
END
$$;

-- Generation runs in the background worker; a call costs milliseconds to
-- seconds, hence the high COST.  gptoss_generate, gptoss_chat and
-- gptoss_generate_json are PARALLEL RESTRICTED: their per-row calls are
-- evaluated above any Gather, where the GptossBatch node runs many rows' calls
-- at once; the others are PARALLEL SAFE.

CREATE FUNCTION gptoss_generate(prompt text, params jsonb DEFAULT '{}')
RETURNS text
AS 'MODULE_PATHNAME', 'gptoss_generate'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED COST 100000;

COMMENT ON FUNCTION gptoss_generate(text, jsonb) IS
'answer a prompt (harmony user message; with raw, continue the text)';

CREATE FUNCTION gptoss_generate_many(prompts text[], params jsonb DEFAULT '{}')
RETURNS text[]
AS 'MODULE_PATHNAME', 'gptoss_generate_many'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE COST 1000000;

COMMENT ON FUNCTION gptoss_generate_many(text[], jsonb) IS
'answer many prompts at once, batched in the worker; answers in prompt order (NULL for NULL)';

CREATE FUNCTION gptoss_generate_stream(prompt text, params jsonb DEFAULT '{}')
RETURNS SETOF text
AS 'MODULE_PATHNAME', 'gptoss_generate_stream'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE COST 100000 ROWS 64;

COMMENT ON FUNCTION gptoss_generate_stream(text, jsonb) IS
'like gptoss_generate, returning the answer in pieces as they are generated';

CREATE FUNCTION gptoss_chat(messages jsonb, params jsonb DEFAULT '{}')
RETURNS jsonb
AS 'MODULE_PATHNAME', 'gptoss_chat'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED COST 100000;

COMMENT ON FUNCTION gptoss_chat(jsonb, jsonb) IS
'OpenAI-style chat completion: messages in, a chat.completion object out';

CREATE FUNCTION gptoss_classify(input text, labels text[], params jsonb DEFAULT '{}')
RETURNS text
AS 'MODULE_PATHNAME', 'gptoss_classify'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE COST 100000;

COMMENT ON FUNCTION gptoss_classify(text, text[], jsonb) IS
'the most probable of the labels as the answer to input (scored, not sampled; instructions should name the labels)';

CREATE FUNCTION gptoss_classify_scores(input text, labels text[], params jsonb DEFAULT '{}')
RETURNS jsonb
AS 'MODULE_PATHNAME', 'gptoss_classify_scores'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE COST 100000;

COMMENT ON FUNCTION gptoss_classify_scores(text, text[], jsonb) IS
'the probability of each label as the answer to input: {"label": p, ...}, summing to 1';

CREATE FUNCTION gptoss_generate_json(prompt text, schema jsonb, params jsonb DEFAULT '{}')
RETURNS jsonb
AS 'MODULE_PATHNAME', 'gptoss_generate_json'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED COST 100000;

COMMENT ON FUNCTION gptoss_generate_json(text, jsonb, jsonb) IS
'answer a prompt with a JSON document valid for the JSON Schema (structured output)';

CREATE FUNCTION gptoss_tokenize(text)
RETURNS int[]
AS 'MODULE_PATHNAME', 'gptoss_tokenize'
LANGUAGE C STRICT STABLE PARALLEL SAFE COST 1000;

COMMENT ON FUNCTION gptoss_tokenize(text) IS
'o200k_harmony token ids of a text (special-token text stays plain text)';

CREATE FUNCTION gptoss_detokenize(int[])
RETURNS text
AS 'MODULE_PATHNAME', 'gptoss_detokenize'
LANGUAGE C STRICT STABLE PARALLEL SAFE COST 1000;

COMMENT ON FUNCTION gptoss_detokenize(int[]) IS
'text of o200k_harmony token ids';

CREATE FUNCTION gptoss_status()
RETURNS jsonb
AS 'MODULE_PATHNAME', 'gptoss_status'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

COMMENT ON FUNCTION gptoss_status() IS
'state of the gptoss worker (starting, loading, ready, failed) and what it loaded';

CREATE FUNCTION gptoss_stats(
    OUT worker int,
    OUT pid int,
    OUT device text,
    OUT state text,
    OUT requests_total bigint,
    OUT requests_active int,
    OUT requests_queued int,
    OUT requests_failed bigint,
    OUT requests_cancelled bigint,
    OUT prompt_tokens bigint,
    OUT completion_tokens bigint,
    OUT prefill_tok_s double precision,
    OUT decode_tok_s double precision,
    OUT mean_batch_size double precision,
    OUT steps bigint,
    OUT kv_cache_used bigint,
    OUT kv_cache_capacity bigint,
    OUT gpu_memory_used bigint,
    OUT uptime interval,
    OUT max_step_ms_1min double precision,
    OUT prefix_cache_hit_tokens bigint,
    OUT mean_batch_size_1min double precision)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'gptoss_stats'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE ROWS 1;

CREATE VIEW gptoss_stats AS
    SELECT * FROM gptoss_stats();

COMMENT ON VIEW gptoss_stats IS
'per worker: requests (total, active = sequences in flight, queued, failed, cancelled), tokens, recent rates (tokens per second of the steps that did that work, last 10 s), mean batch size over steps (since start, and of the last minute), KV cache, memory, uptime, longest worker loop iteration (admit, step, deliver) of the last minute in ms';

-- Monitoring is for pg_monitor; generation is for everyone.
REVOKE ALL ON FUNCTION gptoss_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION gptoss_stats() FROM PUBLIC;
REVOKE ALL ON gptoss_stats FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gptoss_status() TO pg_monitor;
GRANT EXECUTE ON FUNCTION gptoss_stats() TO pg_monitor;
GRANT SELECT ON gptoss_stats TO pg_monitor;

-- Enrichments: columns that fill themselves (src/enrich.c, src/enrich_worker.c).
-- The catalog belongs to the extension; users see and manage enrichments of
-- the tables they own through the view and the functions below.

CREATE TABLE gptoss_enrichment (
    id serial PRIMARY KEY,
    relid oid NOT NULL,
    attnum smallint NOT NULL,
    prompt_sql text NOT NULL,
    prompt_expr text NOT NULL,
    params jsonb NOT NULL,
    mode text NOT NULL CHECK (mode IN ('sync', 'async')),
    max_attempts int NOT NULL CHECK (max_attempts >= 1),
    paused boolean NOT NULL DEFAULT false,
    created timestamptz NOT NULL DEFAULT now(),
    UNIQUE (relid, attnum)
);

COMMENT ON TABLE gptoss_enrichment IS
'enrichments: the table and column they fill, the analysed prompt expression (prompt_expr) and the generation params';

CREATE TABLE gptoss_enrich_queue (
    enrichment int NOT NULL,
    key text[] NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now(),
    attempts int NOT NULL DEFAULT 0,
    next_try timestamptz NOT NULL DEFAULT now(),
    last_error text,
    failed_at timestamptz,
    PRIMARY KEY (enrichment, key)
);

COMMENT ON TABLE gptoss_enrich_queue IS
'rows waiting for a generation, by primary key (as text); failed ones keep their error and attempts';

CREATE TABLE gptoss_enrich_inbox (
    id bigserial PRIMARY KEY,
    enrichment int NOT NULL,
    nrows int NOT NULL,
    keys text[] NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now()
);

-- Uncompressed: a statement's keys are written once and read once, and compressing them cost a
-- large COPY more than storing them (bench/RESULTS.md).
ALTER TABLE gptoss_enrich_inbox ALTER COLUMN keys SET STORAGE EXTERNAL;

COMMENT ON TABLE gptoss_enrich_inbox IS
'keys of inserted rows, one row per statement (the key columns of each row in turn); the worker moves them into the queue';

CREATE TABLE gptoss_enrich_log (
    enrichment int NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    rows bigint NOT NULL,
    tokens bigint NOT NULL
);

CREATE INDEX ON gptoss_enrich_log (enrichment, at);

COMMENT ON TABLE gptoss_enrich_log IS
'rows filled and completion tokens per batch (older rows folded into one per enrichment)';

REVOKE ALL ON gptoss_enrichment, gptoss_enrich_queue, gptoss_enrich_inbox, gptoss_enrich_log FROM PUBLIC;
REVOKE ALL ON SEQUENCE gptoss_enrichment_id_seq, gptoss_enrich_inbox_id_seq FROM PUBLIC;

CREATE FUNCTION gptoss_enrich(tbl regclass, target_column name, prompt_sql text,
                              params jsonb DEFAULT '{}', mode text DEFAULT 'async')
RETURNS int
AS 'MODULE_PATHNAME', 'gptoss_enrich'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION gptoss_enrich(regclass, name, text, jsonb, text) IS
'fill target_column of tbl with the answer to prompt_sql (an expression over the row): sync (before the statement returns) or async (queued, filled by a background worker); returns the enrichment id';

CREATE FUNCTION gptoss_enrich_drop(id int) RETURNS void
AS 'MODULE_PATHNAME', 'gptoss_enrich_drop' LANGUAGE C STRICT VOLATILE;

CREATE FUNCTION gptoss_enrich_pause(id int) RETURNS void
AS 'MODULE_PATHNAME', 'gptoss_enrich_pause' LANGUAGE C STRICT VOLATILE;

CREATE FUNCTION gptoss_enrich_resume(id int) RETURNS void
AS 'MODULE_PATHNAME', 'gptoss_enrich_resume' LANGUAGE C STRICT VOLATILE;

CREATE FUNCTION gptoss_enrich_retry_failed(id int) RETURNS bigint
AS 'MODULE_PATHNAME', 'gptoss_enrich_retry_failed' LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION gptoss_enrich_retry_failed(int) IS
'queue the rows that used up their attempts again; returns how many';

CREATE FUNCTION gptoss_enrich_trigger() RETURNS trigger
AS 'MODULE_PATHNAME', 'gptoss_enrich_trigger' LANGUAGE C;

CREATE FUNCTION gptoss_enrich_on_drop() RETURNS event_trigger
AS 'MODULE_PATHNAME', 'gptoss_enrich_on_drop' LANGUAGE C;

CREATE EVENT TRIGGER gptoss_enrich_on_drop ON sql_drop
    EXECUTE FUNCTION gptoss_enrich_on_drop();

CREATE VIEW gptoss_enrichments AS
    SELECT e.id,
           e.relid::regclass AS table_name,
           a.attname AS column_name,
           e.mode,
           e.paused,
           (SELECT count(*) FROM gptoss_enrich_queue q
             WHERE q.enrichment = e.id AND q.attempts < e.max_attempts)
           + (SELECT coalesce(sum(i.nrows), 0) FROM gptoss_enrich_inbox i
             WHERE i.enrichment = e.id)::bigint AS pending,
           (SELECT coalesce(sum(l.rows), 0) FROM gptoss_enrich_log l
             WHERE l.enrichment = e.id)::bigint AS done,
           (SELECT count(*) FROM gptoss_enrich_queue q
             WHERE q.enrichment = e.id AND q.attempts >= e.max_attempts) AS failed,
           (SELECT q.last_error FROM gptoss_enrich_queue q
             WHERE q.enrichment = e.id AND q.last_error IS NOT NULL
             ORDER BY q.failed_at DESC LIMIT 1) AS last_error,
           (SELECT coalesce(sum(l.tokens), 0) FROM gptoss_enrich_log l
             WHERE l.enrichment = e.id AND l.at > now() - interval '1 minute')::double precision / 60 AS tok_s
      FROM gptoss_enrichment e
      JOIN pg_catalog.pg_attribute a ON a.attrelid = e.relid AND a.attnum = e.attnum
      JOIN pg_catalog.pg_class c ON c.oid = e.relid
     WHERE pg_catalog.pg_has_role(c.relowner, 'USAGE');

COMMENT ON VIEW gptoss_enrichments IS
'enrichments of the tables you own: rows pending, done and failed, the last error, completion tokens/s over the last minute';

GRANT SELECT ON gptoss_enrichments TO PUBLIC;
