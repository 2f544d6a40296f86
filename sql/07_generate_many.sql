--
-- gptoss_generate_many: many prompts in one call, batched in the worker.
-- Answers come back in prompt order and equal what gptoss_generate gives for
-- each prompt alone (greedy decoding does not depend on the batch).
--
CREATE TEMP TABLE docs (id int, body text);
INSERT INTO docs
SELECT i, 'Document number ' || i || ' talks about ' || (ARRAY['databases', 'the sea', 'music', 'rain'])[1 + i % 4]
FROM generate_series(1, 12) i;
INSERT INTO docs VALUES (13, NULL);

CREATE TEMP TABLE steps_before AS SELECT sum(steps) AS steps FROM gptoss_stats;
CREATE TEMP TABLE many AS
SELECT a.id, a.answer
FROM (SELECT array_agg(id ORDER BY id) AS ids, array_agg(body ORDER BY id) AS bodies FROM docs) s,
     unnest(s.ids, gptoss_generate_many(s.bodies, '{"raw": true, "temperature": 0, "max_tokens": 8, "ignore_eos": true}'))
       AS a(id, answer);

SELECT count(*) AS answers, count(answer) AS non_null, bool_and(answer IS NULL) FILTER (WHERE id = 13) AS null_for_null
FROM many;

-- 12 prompts x 8 tokens ran batched: far fewer worker steps than the 96
-- (plus prefill) that one-at-a-time generation takes.
SELECT (SELECT sum(steps) FROM gptoss_stats) - steps < 48 AS batched FROM steps_before;

-- Each answer equals the prompt run alone.
SELECT bool_and(m.answer = gptoss_generate(d.body, '{"raw": true, "temperature": 0, "max_tokens": 8, "ignore_eos": true}'))
       AS same_as_alone
FROM many m JOIN docs d USING (id)
WHERE d.body IS NOT NULL;

-- Edge cases: empty array, NULL array (STRICT), bad params, two dimensions.
SELECT gptoss_generate_many('{}'::text[]) AS empty;
SELECT gptoss_generate_many(NULL::text[]) IS NULL AS null_array;
SELECT try_sql($$SELECT gptoss_generate_many(ARRAY['x'], '{"max_tokens": 0}')$$);
SELECT try_sql($$SELECT gptoss_generate_many(ARRAY[['a', 'b'], ['c', 'd']])$$);
