--
-- The GptossBatch node: per-row gptoss_generate / gptoss_chat calls run many
-- rows at a time.  Each shape is planned with the node (EXPLAIN) and its
-- rows, in order, equal those of gptoss.batch_window = 0 (one row at a time,
-- no node); greedy decoding does not depend on the batch.
--
SHOW gptoss.batch_window;

CREATE TABLE docs (id int, body text, params jsonb);
INSERT INTO docs
SELECT i, 'Document number ' || i || ' talks about ' || (ARRAY['databases', 'the sea', 'music', 'rain'])[1 + i % 4],
       '{"raw": true, "temperature": 0, "max_tokens": 6, "ignore_eos": true}'
FROM generate_series(1, 50) i;
UPDATE docs SET body = NULL WHERE id IN (7, 31);
-- Rows come back in input order, whatever the physical order of the table.
UPDATE docs SET id = 51 - id;

-- same_rows(query): runs query into a table with batching off and on, and
-- compares the rows in the order the query returned them.
CREATE FUNCTION same_rows(q text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    off_rows text[];
    on_rows text[];
    batch_window text := current_setting('gptoss.batch_window');
BEGIN
    DROP TABLE IF EXISTS rows_off, rows_on;
    PERFORM set_config('gptoss.batch_window', '0', true);
    EXECUTE 'CREATE TEMP TABLE rows_off AS ' || q;
    PERFORM set_config('gptoss.batch_window', batch_window, true);
    EXECUTE 'CREATE TEMP TABLE rows_on AS ' || q;
    SELECT array_agg(whole_row::text ORDER BY ctid) INTO off_rows FROM rows_off whole_row;
    SELECT array_agg(whole_row::text ORDER BY ctid) INTO on_rows FROM rows_on whole_row;
    IF off_rows IS NOT DISTINCT FROM on_rows THEN
        RETURN format('same %s rows, %s NULL', coalesce(cardinality(on_rows), 0),
                      (SELECT count(*) FROM rows_on whole_row WHERE NOT whole_row IS NOT NULL));
    END IF;
    RETURN format('DIFFERENT: off %s, on %s', off_rows, on_rows);
END
$$;

-- SELECT over a table, NULL prompts giving NULL without a request.
EXPLAIN (COSTS OFF) SELECT id, gptoss_generate(body, params) FROM docs;
SELECT same_rows('SELECT id, gptoss_generate(body, params) AS g FROM docs');

-- Calls inside expressions, several calls per row, volatile functions elsewhere in the row.
EXPLAIN (COSTS OFF, VERBOSE)
SELECT id, upper(gptoss_generate(body, params)) || '/' || length(gptoss_generate('Q: ' || body, params)) FROM docs;
SELECT same_rows($$SELECT id, upper(gptoss_generate(body, params)) || '/' || length(gptoss_generate('Q: ' || body, params)) AS g FROM docs$$);
SELECT same_rows($$SELECT id, gptoss_generate(body, params) AS g, random() >= 0 AS r FROM docs$$);

-- Subquery, CTE, join, UNION ALL, aggregate output.
EXPLAIN (COSTS OFF) SELECT * FROM (SELECT id, gptoss_generate(body, params) AS g FROM docs OFFSET 0) s WHERE g <> '';
SELECT same_rows('SELECT * FROM (SELECT id, gptoss_generate(body, params) AS g FROM docs OFFSET 0) s WHERE g <> ''''');
SELECT same_rows('WITH c AS MATERIALIZED (SELECT id, gptoss_generate(body, params) AS g FROM docs) SELECT * FROM c');
EXPLAIN (COSTS OFF) SELECT d.id, gptoss_generate(e.body || d.body, d.params) FROM docs d JOIN docs e ON e.id = d.id + 1 WHERE d.id % 5 = 0;
SELECT same_rows('SELECT d.id, gptoss_generate(e.body || d.body, d.params) AS g FROM docs d JOIN docs e ON e.id = d.id + 1 WHERE d.id % 5 = 0');
SELECT same_rows('SELECT gptoss_generate(body, params) AS g FROM docs UNION ALL SELECT gptoss_generate(body || ''!'', params) FROM docs');
EXPLAIN (COSTS OFF) SELECT id % 3 AS k, gptoss_generate(string_agg(body, ' ' ORDER BY id), min(params::text)::jsonb) FROM docs GROUP BY 1 ORDER BY 1;
SELECT same_rows($$SELECT id % 3 AS k, gptoss_generate(string_agg(body, ' ' ORDER BY id), min(params::text)::jsonb) AS g FROM docs GROUP BY 1 ORDER BY 1$$);

-- A correlated LATERAL subquery: the node is rescanned for every outer row.
EXPLAIN (COSTS OFF)
SELECT d.id, x.g FROM docs d, LATERAL (SELECT gptoss_generate(e.body, e.params) AS g FROM docs e WHERE e.id BETWEEN d.id AND d.id + 2) x WHERE d.id % 10 = 1;
SELECT same_rows('SELECT d.id, x.g FROM docs d, LATERAL (SELECT gptoss_generate(e.body, e.params) AS g FROM docs e WHERE e.id BETWEEN d.id AND d.id + 2) x WHERE d.id % 10 = 1');

-- A cursor read one row at a time: every fetch ends the requests in flight
-- (the node is shut down) and the next one sends the rows read ahead again.
CREATE FUNCTION fetched_one_by_one(q text) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    c refcursor;
    whole_row record;
    result text[] := '{}';
BEGIN
    OPEN c FOR EXECUTE q;
    LOOP
        FETCH c INTO whole_row;
        EXIT WHEN NOT FOUND;
        result := result || whole_row::text;
    END LOOP;
    CLOSE c;
    RETURN result;
END
$$;
SET gptoss.batch_window = 0;
CREATE TEMP TABLE fetched_off AS
SELECT fetched_one_by_one('SELECT id, gptoss_generate(body, params) AS g FROM docs WHERE id > 42') AS a;
RESET gptoss.batch_window;
SELECT fetched_one_by_one('SELECT id, gptoss_generate(body, params) AS g FROM docs WHERE id > 42') = a AS cursor_same,
       cardinality(a) AS rows
FROM fetched_off;

-- gptoss_chat, and its result inside an expression.
EXPLAIN (COSTS OFF)
SELECT id, gptoss_chat(jsonb_build_array(jsonb_build_object('role', 'user', 'content', body)), '{"max_tokens": 4, "temperature": 0}')->'choices'->0->'finish_reason' FROM docs;
SELECT same_rows($$SELECT id, gptoss_chat(jsonb_build_array(jsonb_build_object('role', 'user', 'content', body)), '{"max_tokens": 4, "temperature": 0}')->'choices'->0->'message' AS m FROM docs$$);

-- LIMIT and OFFSET directly above: exactly offset + count generations.
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT id, gptoss_generate(body, params) FROM docs LIMIT 3;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT id, gptoss_generate(body, params) FROM docs LIMIT 2 OFFSET 4;
PREPARE limited(bigint) AS SELECT id, gptoss_generate(body, params) FROM docs ORDER BY id LIMIT $1;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE limited(4);
SELECT same_rows('SELECT id, gptoss_generate(body, params) AS g FROM docs ORDER BY id LIMIT 4');
SELECT same_rows('SELECT id, gptoss_generate(body, params) AS g FROM docs LIMIT 5 OFFSET 40');

-- CREATE TABLE AS, INSERT ... SELECT and UPDATE write the same values.
SET gptoss.batch_window = 0;
CREATE TABLE written_off AS SELECT id, gptoss_generate(body, params) AS g FROM docs;
INSERT INTO written_off SELECT id + 100, gptoss_generate('Again: ' || body, params) FROM docs;
CREATE TABLE updated_off AS SELECT * FROM docs;
UPDATE updated_off SET body = gptoss_generate(body, params) WHERE id > 10;
RESET gptoss.batch_window;
EXPLAIN (COSTS OFF) CREATE TABLE written_on AS SELECT id, gptoss_generate(body, params) AS g FROM docs;
CREATE TABLE written_on AS SELECT id, gptoss_generate(body, params) AS g FROM docs;
EXPLAIN (COSTS OFF) INSERT INTO written_on SELECT id + 100, gptoss_generate('Again: ' || body, params) FROM docs;
INSERT INTO written_on SELECT id + 100, gptoss_generate('Again: ' || body, params) FROM docs;
CREATE TABLE updated_on AS SELECT * FROM docs;
EXPLAIN (COSTS OFF) UPDATE updated_on SET body = gptoss_generate(body, params) WHERE id > 10;
UPDATE updated_on SET body = gptoss_generate(body, params) WHERE id > 10;
SELECT count(*) AS rows, count(*) FILTER (WHERE a.g IS NOT DISTINCT FROM b.g) AS equal
FROM written_off a FULL JOIN written_on b USING (id);
SELECT count(*) AS rows, count(*) FILTER (WHERE a.body IS NOT DISTINCT FROM b.body) AS equal,
       count(*) FILTER (WHERE a.body IS DISTINCT FROM d.body) AS changed
FROM updated_off a FULL JOIN updated_on b USING (id) JOIN docs d USING (id);

-- 48 prompts x 6 tokens ran batched: far fewer worker steps than one at a time (288 + prefill).
CREATE TEMP TABLE steps_before AS SELECT sum(steps) AS steps FROM gptoss_stats;
CREATE TEMP TABLE batched AS SELECT id, gptoss_generate(body, params) AS g FROM docs;
SELECT (SELECT sum(steps) FROM gptoss_stats) - steps < 100 AS batched FROM steps_before;

-- A bad params value on one row is the same ERROR 22023 as row by row.
UPDATE docs SET params = '{"max_tokens": 0}' WHERE id = 30;
SET gptoss.batch_window = 0;
SELECT try_sql('SELECT id, gptoss_generate(body, params) FROM docs');
RESET gptoss.batch_window;
SELECT try_sql('SELECT id, gptoss_generate(body, params) FROM docs');

-- What stays row by row: calls in WHERE, under CASE, in aggregate arguments,
-- with volatile or nested-call arguments, without an input row.
EXPLAIN (COSTS OFF) SELECT id FROM docs WHERE gptoss_generate(body, params) = 'x';
EXPLAIN (COSTS OFF) SELECT id, CASE WHEN id > 3 THEN gptoss_generate(body, params) END FROM docs;
EXPLAIN (COSTS OFF) SELECT string_agg(gptoss_generate(body, params), ',') FROM docs;
EXPLAIN (COSTS OFF) SELECT gptoss_generate(body || random(), params) FROM docs;
EXPLAIN (COSTS OFF) SELECT gptoss_generate(gptoss_generate(body, params), params) FROM docs;
EXPLAIN (COSTS OFF) SELECT gptoss_generate('hello', '{}');

-- gptoss.batch_window = 0 plans as before.
SET gptoss.batch_window = 0;
EXPLAIN (COSTS OFF) SELECT id, gptoss_generate(body, params) FROM docs;
RESET gptoss.batch_window;

-- The generation functions are evaluated above any Gather.
SELECT proname, proparallel FROM pg_proc WHERE proname IN ('gptoss_generate', 'gptoss_chat', 'gptoss_generate_json') ORDER BY 1;

-- on_error "null": a generation that fails for its own row (here prompts too
-- long for the context, 54000) gives NULL and the statement goes on, with one
-- WARNING that counts them; batched and row by row alike.
CREATE TABLE long_docs AS
SELECT i AS id, CASE WHEN i IN (3, 7) THEN repeat('word ', 3000) ELSE 'Row number ' || i END AS body
FROM generate_series(1, 10) i;
EXPLAIN (COSTS OFF)
SELECT id, gptoss_generate(body, '{"raw": true, "temperature": 0, "max_tokens": 4, "ignore_eos": true, "on_error": "null"}') FROM long_docs;
SELECT id, gptoss_generate(body, '{"raw": true, "temperature": 0, "max_tokens": 4, "ignore_eos": true, "on_error": "null"}') IS NULL AS failed
FROM long_docs;
SET gptoss.batch_window = 0;
SELECT id, gptoss_generate(body, '{"raw": true, "temperature": 0, "max_tokens": 4, "ignore_eos": true, "on_error": "null"}') IS NULL AS failed
FROM long_docs;
RESET gptoss.batch_window;
SELECT same_rows($$SELECT id, gptoss_generate(body, '{"raw": true, "temperature": 0, "max_tokens": 4, "ignore_eos": true, "on_error": "null"}') AS g FROM long_docs$$);
SELECT array_positions(gptoss_generate_many(array_agg(body ORDER BY id), '{"raw": true, "max_tokens": 4, "on_error": "null"}'), NULL)
FROM long_docs;
-- (the chat prompt's token count depends on the date in its system message)
SET client_min_messages = error;
SELECT id, gptoss_chat(jsonb_build_array(jsonb_build_object('role', 'user', 'content', body)), '{"max_tokens": 2, "on_error": "null"}') IS NULL AS failed
FROM long_docs WHERE id BETWEEN 2 AND 4;
RESET client_min_messages;
UPDATE long_docs SET body = gptoss_generate(body, '{"raw": true, "max_tokens": 4, "on_error": "null"}') WHERE id <= 5;
SELECT id, body IS NULL AS failed FROM long_docs WHERE id <= 5 ORDER BY id;
-- The default raises; parameter errors and bad on_error values raise either way.
SELECT try_sql($$SELECT gptoss_generate(repeat('word ', 3000), '{"raw": true, "max_tokens": 4}')$$);
SELECT try_sql($$SELECT gptoss_generate(body, '{"max_tokens": 0, "on_error": "null"}') FROM long_docs$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"on_error": "ignore"}')$$);

DROP TABLE docs, long_docs, written_off, written_on, updated_off, updated_on;
DROP FUNCTION same_rows(text), fetched_one_by_one(text);
