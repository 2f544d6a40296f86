/* sql/gptoss--1.0.sql: the SQL API of gptoss (README.md, SQL API) */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION gptoss" to load this file. \quit

-- Generation runs in the background worker; a call costs milliseconds to
-- seconds, hence the high COST.  gptoss_generate and gptoss_chat are PARALLEL
-- RESTRICTED: their per-row calls are evaluated above any Gather, where the
-- GptossBatch node runs many rows' calls at once; the others are PARALLEL
-- SAFE.

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
    OUT max_step_ms_1min double precision)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'gptoss_stats'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE ROWS 1;

CREATE VIEW gptoss_stats AS
    SELECT * FROM gptoss_stats();

COMMENT ON VIEW gptoss_stats IS
'per worker: requests (total, active = sequences in flight, queued, failed, cancelled), tokens, recent rates, mean batch size over steps, KV cache, memory, uptime, longest worker loop iteration (admit, step, deliver) of the last minute in ms';

-- Monitoring is for pg_monitor; generation is for everyone.
REVOKE ALL ON FUNCTION gptoss_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION gptoss_stats() FROM PUBLIC;
REVOKE ALL ON gptoss_stats FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gptoss_status() TO pg_monitor;
GRANT EXECUTE ON FUNCTION gptoss_stats() TO pg_monitor;
GRANT SELECT ON gptoss_stats TO pg_monitor;
