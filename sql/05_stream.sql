--
-- gptoss_generate_stream: the answer in pieces as they are generated.
--
SELECT count(*) > 1 AS several_pieces,
       string_agg(piece, '') = gptoss_generate('Hello world', '{"raw": true, "temperature": 0, "max_tokens": 12, "ignore_eos": true}') AS same_text
FROM gptoss_generate_stream('Hello world', '{"raw": true, "temperature": 0, "max_tokens": 12, "ignore_eos": true}') piece;

-- Through a cursor the first pieces come before the generation ends; closing
-- the cursor early drops the request.
BEGIN;
DECLARE c CURSOR FOR
    SELECT gptoss_generate_stream('Hello world', '{"raw": true, "temperature": 0, "max_tokens": 400, "ignore_eos": true}');
FETCH 2 FROM c \g /dev/null
CLOSE c;
COMMIT;

-- Errors surface at the first fetch.
SELECT try_sql($$SELECT * FROM gptoss_generate_stream('x', '{"bogus": 1}')$$);
SELECT try_sql($$SELECT * FROM gptoss_generate_stream(repeat('lorem ipsum ', 9000), '{"raw": true}')$$);
