--
-- gptoss_chat: an OpenAI chat.completion object.
--
CREATE TEMP TABLE chat AS
SELECT gptoss_chat('[{"role": "user", "content": "What is 2+2?"}]',
                   '{"temperature": 0, "max_tokens": 8, "ignore_eos": true}') AS c;

-- keys and types (id and created are volatile)
SELECT array_agg(k ORDER BY k) AS keys FROM chat, jsonb_object_keys(c) k;
SELECT c->>'object' AS object,
       c->>'id' ~ '^chatcmpl-[0-9a-f]{24}$' AS id_format,
       jsonb_typeof(c->'created') AS created_type,
       abs((c->>'created')::bigint - extract(epoch FROM now())::bigint) < 300 AS created_now,
       c->>'model' AS model
FROM chat;
SELECT jsonb_array_length(c->'choices') AS n_choices,
       c#>'{choices,0,index}' AS index,
       c#>>'{choices,0,message,role}' AS role,
       jsonb_typeof(c#>'{choices,0,message,content}') AS content_type,
       c#>'{choices,0,message}' ? 'reasoning_content' AS has_reasoning,
       c#>>'{choices,0,finish_reason}' AS finish_reason
FROM chat;
SELECT array_agg(k ORDER BY k) AS usage_keys,
       (c#>>'{usage,completion_tokens}')::int AS completion_tokens,
       (c#>>'{usage,total_tokens}')::int = (c#>>'{usage,prompt_tokens}')::int + (c#>>'{usage,completion_tokens}')::int AS total_ok
FROM chat, jsonb_object_keys(c->'usage') k GROUP BY c;

-- include_reasoning adds reasoning_content (a string).
SELECT jsonb_typeof(gptoss_chat('[{"role": "user", "content": "Hi"}]',
       '{"temperature": 0, "max_tokens": 4, "include_reasoning": true}')#>'{choices,0,message,reasoning_content}') AS reasoning_type;

-- Ids differ between calls.
SELECT count(DISTINCT gptoss_chat('[{"role": "user", "content": "Hi"}]', '{"max_tokens": 1}')->>'id') AS distinct_ids
FROM generate_series(1, 3);

-- Same conversation, same prompt tokens; system/developer messages and
-- instructions add tokens; history is part of the prompt.
SELECT (gptoss_chat('[{"role": "user", "content": "Hi"}]', '{"max_tokens": 1}')#>>'{usage,prompt_tokens}')::int AS user_only,
       (gptoss_chat('[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]', '{"max_tokens": 1}')#>>'{usage,prompt_tokens}')::int AS with_system,
       (gptoss_chat('[{"role": "user", "content": "Hi"}]', '{"max_tokens": 1, "instructions": "Be brief."}')#>>'{usage,prompt_tokens}')::int AS with_instructions,
       (gptoss_chat('[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]', '{"max_tokens": 1}')#>>'{usage,prompt_tokens}')::int AS with_history;
-- Content as an array of text parts is the same as the joined string.
SELECT gptoss_chat('[{"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]', '{"max_tokens": 1}')#>'{usage,prompt_tokens}' =
       gptoss_chat('[{"role": "user", "content": "Hello"}]', '{"max_tokens": 1}')#>'{usage,prompt_tokens}' AS parts_joined;

-- max_tokens bounds the completion (finish_reason length)...
SELECT c#>>'{choices,0,finish_reason}' AS finish_reason, c#>'{usage,completion_tokens}' AS completion_tokens
FROM (SELECT gptoss_chat('[{"role": "user", "content": "Hi"}]', '{"max_tokens": 5, "ignore_eos": true}') c) t;
-- ... max_tokens beyond the context is clamped to what the context leaves ...
SELECT c#>>'{choices,0,finish_reason}' AS finish_reason, c#>'{usage,total_tokens}' AS total_tokens
FROM (SELECT gptoss_chat(jsonb_build_array(jsonb_build_object('role', 'user', 'content', repeat(' hello', 440))),
                         '{"max_tokens": 100000, "ignore_eos": true, "temperature": 0}') c) t;
-- ... and so is max_tokens beyond gptoss.max_tokens_limit.
SET gptoss.max_tokens_limit = 3;
SELECT c#>>'{choices,0,finish_reason}' AS finish_reason, c#>'{usage,completion_tokens}' AS completion_tokens
FROM (SELECT gptoss_chat('[{"role": "user", "content": "Hi"}]', '{"max_tokens": 50, "ignore_eos": true}') c) t;
RESET gptoss.max_tokens_limit;

-- NULL input (STRICT)
SELECT gptoss_chat(NULL) IS NULL AS null_messages, gptoss_chat('[]', NULL) IS NULL AS null_params;

-- Bad messages: 22023
SELECT try_sql($$SELECT gptoss_chat('{"role": "user", "content": "x"}')$$);
SELECT try_sql($$SELECT gptoss_chat('"hello"')$$);
SELECT try_sql($$SELECT gptoss_chat('[]')$$);
SELECT try_sql($$SELECT gptoss_chat('["hello"]')$$);
SELECT try_sql($$SELECT gptoss_chat('[{"content": "x"}]')$$);
SELECT try_sql($$SELECT gptoss_chat('[{"role": 1, "content": "x"}]')$$);
SELECT try_sql($$SELECT gptoss_chat('[{"role": "user", "content": "x"}, {"role": "robot", "content": "x"}]')$$);
SELECT try_sql($$SELECT gptoss_chat('[{"role": "tool", "content": "x"}]')$$);
SELECT try_sql($$SELECT gptoss_chat('[{"role": "user"}]')$$);
SELECT try_sql($$SELECT gptoss_chat('[{"role": "user", "content": 5}]')$$);
SELECT try_sql($$SELECT gptoss_chat('[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]')$$);
SELECT try_sql($$SELECT gptoss_chat('[{"role": "user", "content": "x"}]', '{"max_tokens": 0}')$$);
-- A conversation longer than the context is 54000.
SELECT try_sql(format('SELECT gptoss_chat(%L)', jsonb_build_array(jsonb_build_object('role', 'user', 'content', repeat('lorem ipsum ', 9000)))));
