--
-- gptoss_tokenize / gptoss_detokenize (o200k_harmony)
--
SELECT gptoss_tokenize('Hello, world!');
SELECT gptoss_detokenize('{13225,11,2375,0}');
SELECT gptoss_detokenize(gptoss_tokenize('Hello, world!')) = 'Hello, world!' AS roundtrip;

-- Text that looks like a special token is ordinary text, never 200006.
SELECT gptoss_tokenize('<|start|>');
SELECT 200006 = ANY (gptoss_tokenize('<|start|>user<|message|>hi<|end|>')) AS has_special_id;
SELECT gptoss_detokenize(gptoss_tokenize('<|start|>user<|message|>hi<|end|>'));

-- Special ids detokenize to their text.
SELECT gptoss_detokenize('{200006,173781,200008}');

-- Empty and NULL input (the functions are STRICT).
SELECT gptoss_tokenize('');
SELECT gptoss_detokenize('{}') = '' AS empty_text;
SELECT gptoss_tokenize(NULL) IS NULL AS null_text, gptoss_detokenize(NULL) IS NULL AS null_ids;

-- Non-ASCII text round-trips; whitespace is significant.
SELECT gptoss_detokenize(gptoss_tokenize('naïve café, 日本語 🙂')) = 'naïve café, 日本語 🙂' AS unicode_roundtrip;
SELECT gptoss_tokenize(' hello'), gptoss_tokenize('hello'), gptoss_tokenize(E'hello\n');

-- Tokens that hold part of a character decode to U+FFFD.
SELECT gptoss_tokenize('𓀀') AS byte_tokens;
SELECT md5(gptoss_detokenize((gptoss_tokenize('𓀀'))[1:3])) = md5('�') AS replacement_char,
       gptoss_detokenize(gptoss_tokenize('𓀀')) = '𓀀' AS whole_char;

-- Long input.
SELECT array_length(gptoss_tokenize(repeat('hello world ', 10000)), 1) AS long_tokens;

-- Ids that are not tokens of the tokenizer: negative, past the model
-- vocabulary, or inside it but unassigned.
SELECT try_sql($$SELECT gptoss_detokenize('{-1}')$$);
SELECT try_sql($$SELECT gptoss_detokenize('{201088}')$$);
SELECT try_sql($$SELECT gptoss_detokenize('{200019}')$$);
SELECT try_sql($$SELECT gptoss_detokenize('{1,2,2147483647}')$$);
SELECT try_sql($$SELECT gptoss_detokenize('{1,NULL}')$$);
SELECT try_sql($$SELECT gptoss_detokenize('{{1},{2}}')$$);
