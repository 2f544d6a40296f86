-- Classification, log-probabilities and the prefix cache (tiny random model).
SHOW gptoss.prefix_caching;

-- a label from the list, and probabilities over exactly the labels, summing to 1
SELECT gptoss_classify('Where is my parcel?', ARRAY['billing', 'shipping', 'returns'],
       '{"instructions": "Answer billing, shipping or returns."}')
       = ANY (ARRAY['billing', 'shipping', 'returns']) AS is_a_label;
WITH s AS (
  SELECT gptoss_classify_scores('Where is my parcel?', ARRAY['billing', 'shipping', 'returns'],
         '{"instructions": "Answer billing, shipping or returns."}') AS j)
SELECT (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(j) k) AS labels,
       round((SELECT sum(v::numeric) FROM jsonb_each_text(j) e(k, v)), 9) AS total,
       (SELECT bool_and(v::float8 > 0 AND v::float8 < 1) FROM jsonb_each_text(j) e(k, v)) AS in_range
FROM s;

-- the pick is the most probable label; multi-token labels; raw mode
WITH s AS (
  SELECT gptoss_classify_scores('The weather today is', ARRAY['sunny', 'raining heavily all day', 'cold'],
         '{"raw": true}') AS j)
SELECT gptoss_classify('The weather today is', ARRAY['sunny', 'raining heavily all day', 'cold'], '{"raw": true}')
       = (SELECT k FROM jsonb_each_text(j) e(k, v) ORDER BY v::float8 DESC LIMIT 1) AS picks_the_best
FROM s;

-- deterministic: the same scores every time
SELECT gptoss_classify_scores('abc', ARRAY['x', 'y']) = gptoss_classify_scores('abc', ARRAY['x', 'y']) AS repeatable;

-- STRICT: a NULL input or label array gives NULL
SELECT gptoss_classify(NULL, ARRAY['a', 'b']) IS NULL AS null_input;
SELECT gptoss_classify_scores('x', NULL) IS NULL AS null_labels;

-- bad labels and params
SELECT gptoss_classify('x', ARRAY['a', '']);
SELECT gptoss_classify('x', ARRAY['yes', 'no', 'yes']);
SELECT gptoss_classify('x', ARRAY['a', NULL]);
SELECT gptoss_classify_scores('x', ARRAY[]::text[]);

-- Keys that only steer generation are 22023 naming the key and why; the keys
-- that shape the prompt (instructions, reasoning_effort, raw), prefix_caching
-- and on_error are taken.
SELECT k, try_sql(format($$SELECT gptoss_classify('x', ARRAY['a', 'b'], '{"%s": %s}')$$, k, v)) AS classify
FROM (VALUES ('max_tokens', '5'), ('min_tokens', '1'), ('stop', '["."]'), ('ignore_eos', 'true'),
             ('max_reasoning_tokens', '0'), ('include_reasoning', 'true'), ('temperature', '0'),
             ('top_p', '0.5'), ('top_k', '3'), ('seed', '1'), ('response_format', '{"type": "json_object"}'),
             ('logprobs', 'true'), ('top_logprobs', '2')) AS t(k, v);
SELECT try_sql($$SELECT gptoss_classify_scores('x', ARRAY['a', 'b'], '{"seed": 1}')$$) AS scores;
SELECT try_sql($$SELECT gptoss_classify('x', ARRAY['a', 'b'], '{"instructions": "Answer a or b.", "reasoning_effort": "high",
                  "raw": false, "prefix_caching": false, "on_error": "error"}')$$) AS taken;
-- reasoning_effort is part of the system message, so it can change the scores
SELECT count(DISTINCT gptoss_classify_scores('The weather today is', ARRAY['sunny', 'cold'],
                                             jsonb_build_object('reasoning_effort', e))::text) AS distinct_scores
FROM unnest(ARRAY['low', 'medium', 'high']) e;

-- on_error "null": an input that cannot be scored gives NULL (one WARNING)
-- instead of an ERROR.  Too long for the context: seen in the session; the
-- prompt fits but the prompt and a label do not: seen by the worker.
CREATE TEMP TABLE near_full AS
SELECT (SELECT rtrim(repeat('word ', k)) FROM generate_series(400, 600) k
        WHERE cardinality(gptoss_tokenize(rtrim(repeat('word ', k)))) >= 505 ORDER BY k LIMIT 1) AS body;
SELECT try_sql($$SELECT gptoss_classify(body, ARRAY['yes', repeat('very long label ', 5)], '{"raw": true}') FROM near_full$$);
SELECT gptoss_classify(body, ARRAY['yes', repeat('very long label ', 5)], '{"raw": true, "on_error": "null"}') IS NULL AS worker_null
FROM near_full;
SELECT gptoss_classify_scores(repeat('word ', 3000), ARRAY['a', 'b'], '{"on_error": "null"}') IS NULL AS session_null;
SELECT try_sql($$SELECT gptoss_classify_scores(repeat('word ', 3000), ARRAY['a', 'b'])$$);

-- logprobs: only gptoss_chat, top_logprobs needs logprobs and is at most 20
SELECT gptoss_generate('x', '{"logprobs": true}');
SELECT gptoss_chat('[{"role": "user", "content": "x"}]', '{"top_logprobs": 2}');
SELECT gptoss_chat('[{"role": "user", "content": "x"}]', '{"logprobs": true, "top_logprobs": 21}');
SELECT gptoss_chat('[{"role": "user", "content": "x"}]', '{"logprobs": "yes"}');

-- without logprobs, no logprobs member; with it, one entry per token of the content:
-- greedy tokens are their own first alternative, entries carry token, logprob, bytes,
-- and the tokens' bytes spell the content (unless the model made invalid UTF-8, shown as U+FFFD)
SELECT c->'choices'->0->'logprobs' IS NULL AS none_by_default
FROM gptoss_chat('[{"role": "user", "content": "Say hi"}]', '{"temperature": 0, "max_tokens": 4}') c;
WITH c AS (
  SELECT gptoss_chat('[{"role": "user", "content": "Say hi"}]',
         '{"temperature": 0, "max_tokens": 12, "max_reasoning_tokens": 0, "logprobs": true, "top_logprobs": 3}') AS j),
e AS (
  SELECT t.ord, t.v FROM c, jsonb_array_elements(j->'choices'->0->'logprobs'->'content') WITH ORDINALITY t(v, ord))
SELECT count(*) > 0 AS has_tokens,
       bool_and((v->>'logprob')::float8 <= 0) AS logprobs_negative,
       bool_and(jsonb_array_length(v->'top_logprobs') = 3) AS three_alternatives,
       bool_and(v->'top_logprobs'->0->>'token' = v->>'token'
                AND (v->'top_logprobs'->0->>'logprob')::float8 = (v->>'logprob')::float8) AS greedy_is_top,
       bool_and((v->'top_logprobs'->0->>'logprob')::float8 >= (v->'top_logprobs'->1->>'logprob')::float8
                AND (v->'top_logprobs'->1->>'logprob')::float8 >= (v->'top_logprobs'->2->>'logprob')::float8) AS sorted,
       bool_and(jsonb_typeof(v->'bytes') = 'array') AS has_bytes,
       (SELECT decode(coalesce(string_agg(lpad(to_hex(x.b::int), 2, '0'), '' ORDER BY e2.ord, x.k), ''), 'hex')
        FROM e e2, jsonb_array_elements_text(e2.v->'bytes') WITH ORDINALITY x(b, k))
       = convert_to((SELECT j->'choices'->0->'message'->>'content' FROM c), 'UTF8')
       OR (SELECT j->'choices'->0->'message'->>'content' FROM c) LIKE '%' || U&'\FFFD' || '%' AS bytes_spell_content
FROM e;

-- prefix cache: identical results on and off, and the cache is hit
CREATE TEMP TABLE cache_runs (mode text, answer text, scores jsonb);
SET gptoss.prefix_caching = off;
INSERT INTO cache_runs
SELECT 'off', gptoss_generate(m, '{"temperature": 0, "max_tokens": 8, "ignore_eos": true, "instructions": "You route support tickets. Read the message, decide which team owns it, and reply with one word. Billing handles invoices and charges; shipping handles parcels and couriers; returns handles items sent back."}'),
       gptoss_classify_scores(m, ARRAY['billing', 'shipping', 'returns'], '{"instructions": "You route support tickets. Read the message, decide which team owns it, and reply with one word. Billing handles invoices and charges; shipping handles parcels and couriers; returns handles items sent back."}')
FROM unnest(ARRAY['I was charged twice', 'My parcel is late', 'Can I send this back?']) m;
SELECT prefix_cache_hit_tokens AS hits_before FROM gptoss_stats \gset
SET gptoss.prefix_caching = on;
INSERT INTO cache_runs
SELECT 'on', gptoss_generate(m, '{"temperature": 0, "max_tokens": 8, "ignore_eos": true, "instructions": "You route support tickets. Read the message, decide which team owns it, and reply with one word. Billing handles invoices and charges; shipping handles parcels and couriers; returns handles items sent back."}'),
       gptoss_classify_scores(m, ARRAY['billing', 'shipping', 'returns'], '{"instructions": "You route support tickets. Read the message, decide which team owns it, and reply with one word. Billing handles invoices and charges; shipping handles parcels and couriers; returns handles items sent back."}')
FROM unnest(ARRAY['I was charged twice', 'My parcel is late', 'Can I send this back?']) m;
SELECT (SELECT array_agg(answer ORDER BY ctid) FROM cache_runs WHERE mode = 'off')
       = (SELECT array_agg(answer ORDER BY ctid) FROM cache_runs WHERE mode = 'on') AS same_answers,
       (SELECT array_agg(scores ORDER BY ctid) FROM cache_runs WHERE mode = 'off')
       = (SELECT array_agg(scores ORDER BY ctid) FROM cache_runs WHERE mode = 'on') AS same_scores;
SELECT prefix_cache_hit_tokens > :hits_before AS cache_hit FROM gptoss_stats;
-- per call, the params key wins over the setting
SELECT gptoss_generate('x', '{"prefix_caching": false, "max_tokens": 1}') IS NOT NULL AS per_call_key;
SELECT gptoss_generate('x', '{"prefix_caching": 1}');
RESET gptoss.prefix_caching;
