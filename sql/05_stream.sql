--
-- gptoss_generate_stream: the answer in pieces as they are generated.  It is
-- called in the select list: a set-returning function in FROM is run to its
-- end into a tuplestore before the first row comes out.
--
SELECT count(*) > 1 AS several_pieces,
       string_agg(piece, '') = gptoss_generate('Hello world', '{"raw": true, "temperature": 0, "max_tokens": 12, "ignore_eos": true}') AS same_text
FROM (SELECT gptoss_generate_stream('Hello world', '{"raw": true, "temperature": 0, "max_tokens": 12, "ignore_eos": true}') AS piece) s;

-- In the select list the pieces leave as they come (ProjectSet); in FROM a
-- Function Scan would collect them all first.
EXPLAIN (COSTS OFF) SELECT gptoss_generate_stream('Hello world');

-- Through a cursor the first pieces come before the generation ends; closing
-- the cursor early drops the request.
BEGIN;
DECLARE c CURSOR FOR
    SELECT gptoss_generate_stream('Hello world', '{"raw": true, "temperature": 0, "max_tokens": 400, "ignore_eos": true}');
FETCH 2 FROM c \g /dev/null
CLOSE c;
COMMIT;

-- Errors surface at the first fetch.
SELECT try_sql($$SELECT gptoss_generate_stream('x', '{"bogus": 1}')$$);
SELECT try_sql($$SELECT gptoss_generate_stream(repeat('lorem ipsum ', 9000), '{"raw": true}')$$);
