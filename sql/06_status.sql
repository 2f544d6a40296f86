--
-- gptoss_status(), the gptoss_stats view and privileges.
--
SELECT s->>'state' AS state,
       s->>'backend' AS backend,
       s->>'model' AS model,
       s->>'model_path' LIKE '%/tiny' AS model_path,
       (s->>'progress')::float8 AS progress,
       s ? 'error' AS has_error,
       (s->>'pid')::int > 0 AS has_pid,
       s->'device' ? 'name' AS device_name,
       s->'device' ? 'memory_total_bytes' AS device_memory,
       s->'config'->>'num_hidden_layers' AS layers,
       s->'config'->>'vocab_size' AS vocab,
       (s->'parameters'->>'total')::bigint > 0 AS params,
       s->'weights'->'formats'->>'experts' AS experts_format,
       (s->'kv_cache'->>'capacity_tokens')::bigint > 0 AS kv_capacity,
       s->'limits'->>'max_context' AS max_context,
       s->'limits'->>'max_context_setting' AS max_context_setting,
       s->'tokenizer'->>'vocab_size' AS tokenizer_vocab,
       s->'versions' ? 'gptoss' AS gptoss_version,
       s->'versions' ? 'postgresql' AS pg_version
FROM gptoss_status() s;

-- gptoss_stats: one row per worker; exactly one column names "active".
SELECT array_agg(column_name::text ORDER BY ordinal_position) AS columns
FROM information_schema.columns WHERE table_name = 'gptoss_stats';
SELECT count(*) AS active_columns
FROM information_schema.columns WHERE table_name = 'gptoss_stats' AND column_name LIKE '%active%';
-- The stream closed early in 05_stream is cancelled asynchronously: wait (at
-- most 10 s) until the worker has dropped it and refreshed its figures.
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT requests_active = 0 AND requests_cancelled >= 1 AND kv_cache_used = 0
                   FROM gptoss_stats WHERE worker = 0);
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
SELECT worker, pid > 0 AS has_pid, device, state,
       requests_total > 0 AS requests_total, requests_active, requests_queued,
       requests_failed > 0 AS some_failed, requests_cancelled >= 1 AS some_cancelled,
       prompt_tokens > 0 AS prompt_tokens, completion_tokens > 0 AS completion_tokens,
       prefill_tok_s > 0 AS prefill_rate, decode_tok_s > 0 AS decode_rate,
       mean_batch_size >= 1 AS mean_batch_size,
       kv_cache_used, kv_cache_capacity > 0 AS kv_capacity,
       gpu_memory_used IS NULL AS no_gpu, uptime > '0'::interval AS uptime
FROM gptoss_stats;

-- Monitoring is for pg_monitor, generation for everyone.
CREATE ROLE regress_gptoss_user;
SET ROLE regress_gptoss_user;
SELECT try_sql('SELECT gptoss_status()');
SELECT try_sql('SELECT * FROM gptoss_stats');
SELECT try_sql('SELECT * FROM gptoss_stats()');
SELECT try_sql('SHOW gptoss.model_path');
SELECT gptoss_tokenize('hi');
SELECT gptoss_generate('hi', '{"raw": true, "temperature": 0, "max_tokens": 2}') IS NOT NULL AS can_generate;
SELECT gptoss_chat('[{"role": "user", "content": "hi"}]', '{"max_tokens": 1}')->>'object' AS can_chat;
SELECT try_sql('SET gptoss.max_tokens = 10');
SELECT try_sql('SET gptoss.max_tokens_limit = 10');
RESET ROLE;
GRANT pg_monitor TO regress_gptoss_user;
SET ROLE regress_gptoss_user;
SELECT gptoss_status()->>'state' AS state;
SELECT count(*) AS workers FROM gptoss_stats;
RESET ROLE;
DROP ROLE regress_gptoss_user;

-- The regression model comes from gptoss synth, and the status says its weights are random.
SELECT gptoss_status()->'random_weights' AS random_weights;
