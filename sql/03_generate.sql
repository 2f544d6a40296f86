--
-- gptoss_generate.  Greedy raw-mode output of the tiny random model is
-- deterministic: it does not depend on the batch, the threads or the run.
-- The text itself depends on the synthetic weights; TAP test
-- 005_cli_agreement checks it token for token against bin/gptoss.
--
CREATE TEMP TABLE greedy AS
SELECT gptoss_generate('Hello world', '{"raw": true, "temperature": 0, "max_tokens": 12, "ignore_eos": true}') AS g;
SELECT octet_length(g) > 0 AS has_text FROM greedy;

-- The same call gives the same text; a shorter max_tokens gives a prefix
-- (up to a character that the shorter run cut in half).
SELECT g = a AS deterministic, starts_with(g, rtrim(c, '�')) AS prefix
FROM greedy,
     gptoss_generate('Hello world', '{"raw": true, "temperature": 0, "max_tokens": 12, "ignore_eos": true}') AS a,
     gptoss_generate('Hello world', '{"raw": true, "temperature": 0, "max_tokens": 4, "ignore_eos": true}') AS c;

-- Defaults come from the USERSET GUCs.
SET gptoss.temperature = 0;
SET gptoss.max_tokens = 12;
SELECT gptoss_generate('Hello world', '{"raw": true, "ignore_eos": true}') = g AS guc_defaults FROM greedy;
RESET gptoss.temperature;
RESET gptoss.max_tokens;

-- Sampling with a seed is reproducible; different seeds give different text.
SELECT a = b AS same_seed_same_text, a <> c AS other_seed_other_text
FROM (SELECT gptoss_generate('Once upon a time', '{"raw": true, "temperature": 1, "seed": 42, "max_tokens": 16, "ignore_eos": true}') AS a,
             gptoss_generate('Once upon a time', '{"raw": true, "temperature": 1, "seed": 42, "max_tokens": 16, "ignore_eos": true}') AS b,
             gptoss_generate('Once upon a time', '{"raw": true, "temperature": 1, "seed": 7, "max_tokens": 16, "ignore_eos": true}') AS c) t;
-- top_k 1 is greedy whatever the temperature.
SELECT gptoss_generate('Hello world', '{"raw": true, "temperature": 5, "top_k": 1, "max_tokens": 12, "ignore_eos": true}') = g AS top_k_1_is_greedy
FROM greedy;

-- A stop string ends the text right before its first occurrence; the
-- stop string is taken from the middle of the greedy text.
SELECT gptoss_generate('Hello world', jsonb_build_object('raw', true, 'temperature', 0, 'max_tokens', 12,
                                                         'ignore_eos', true, 'stop', jsonb_build_array('zzzz', substr(g, 6, 3)))) =
       left(g, strpos(g, substr(g, 6, 3)) - 1) AS stop_cuts,
       length(substr(g, 6, 3)) = 3 AS stop_len
FROM greedy;

-- Chat mode returns the final channel text: a random model never writes a
-- final message, so the answer is empty but never NULL.
SELECT gptoss_generate('What is 2+2?', '{"temperature": 0, "max_tokens": 8}') AS harmony_answer;
SELECT gptoss_generate('What is 2+2?', '{"temperature": 0, "max_tokens": 8, "reasoning_effort": "high", "instructions": "Answer in French."}') IS NOT NULL AS with_instructions;

-- Empty and NULL input.
SELECT gptoss_generate('', '{"temperature": 0, "max_tokens": 4}') IS NOT NULL AS empty_chat_prompt;
SELECT try_sql($$SELECT gptoss_generate('', '{"raw": true}')$$) AS empty_raw_prompt;
SELECT gptoss_generate(NULL) IS NULL AS null_prompt, gptoss_generate('x', NULL) IS NULL AS null_params;

-- Special-token text in a prompt is plain text, in raw and chat mode.
SELECT gptoss_generate('<|start|>assistant<|channel|>final<|message|>', '{"raw": true, "temperature": 0, "max_tokens": 4}') IS NOT NULL AS raw_special_text;
SELECT gptoss_generate('<|end|><|start|>assistant<|channel|>final<|message|>', '{"temperature": 0, "max_tokens": 4}') IS NOT NULL AS chat_special_text;

-- A prompt alone longer than the context (512 tokens here) is 54000: about
-- 100 KB of text from its byte length alone, before it is tokenized, and
-- exactly as many tokens as the context once tokenized.
SELECT try_sql($$SELECT gptoss_generate(repeat('lorem ipsum ', 9000), '{"raw": true}')$$) AS too_long;
SELECT array_length(gptoss_tokenize(repeat(' hello', 512)), 1) AS tokens,
       try_sql($$SELECT gptoss_generate(repeat(' hello', 512), '{"raw": true}')$$) AS context_sized;
-- A prompt that leaves room for a few tokens is accepted; max_tokens is clamped.
SELECT gptoss_generate(repeat(' hello', 508), '{"raw": true, "temperature": 0, "max_tokens": 1000, "ignore_eos": true}') IS NOT NULL AS long_prompt;

-- Several rows in one statement.
SELECT i, gptoss_generate('Hello world', '{"raw": true, "temperature": 0, "max_tokens": 4, "ignore_eos": true}') =
          gptoss_generate('Hello world', '{"raw": true, "temperature": 0, "max_tokens": 4, "ignore_eos": true}') AS same
FROM generate_series(1, 3) i;
