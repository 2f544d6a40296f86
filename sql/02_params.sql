--
-- params validation: every unknown key, wrong JSON type or invalid value is
-- 22023 and names the key.
--
-- unknown keys
SELECT try_sql($$SELECT gptoss_generate('x', '{"foo": 1}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"max_token": 5}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"foo": null}')$$);
-- params must be an object
SELECT try_sql($$SELECT gptoss_generate('x', '[]')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '1')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '"raw"')$$);
-- max_tokens
SELECT try_sql($$SELECT gptoss_generate('x', '{"max_tokens": "5"}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"max_tokens": 2.5}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"max_tokens": true}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"max_tokens": 0}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"max_tokens": -3}')$$);
-- min_tokens
SELECT try_sql($$SELECT gptoss_generate('x', '{"min_tokens": -1}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"min_tokens": 1.5}')$$);
-- temperature
SELECT try_sql($$SELECT gptoss_generate('x', '{"temperature": "hot"}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"temperature": [1]}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"temperature": -0.1}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"temperature": 1e400}')$$);
-- top_p
SELECT try_sql($$SELECT gptoss_generate('x', '{"top_p": "all"}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"top_p": 0}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"top_p": 1.5}')$$);
-- top_k
SELECT try_sql($$SELECT gptoss_generate('x', '{"top_k": "5"}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"top_k": 2.5}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"top_k": -1}')$$);
-- seed
SELECT try_sql($$SELECT gptoss_generate('x', '{"seed": "42"}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"seed": 4.2}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"seed": 1e30}')$$);
-- stop
SELECT try_sql($$SELECT gptoss_generate('x', '{"stop": 1}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"stop": [1]}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"stop": {"a": "b"}}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"stop": [""]}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"stop": ""}')$$);
SELECT try_sql(format('SELECT gptoss_generate(%L, %L)', 'x',
       jsonb_build_object('stop', (SELECT jsonb_agg(i::text) FROM generate_series(1, 65) i))));
-- at most 256 bytes each (64 of 256 bytes are fine)
SELECT try_sql(format('SELECT gptoss_generate(%L, %L)', 'x',
       jsonb_build_object('stop', repeat('s', 257))));
SELECT try_sql(format('SELECT gptoss_generate(%L, %L)', 'x',
       jsonb_build_object('raw', true, 'max_tokens', 2,
                          'stop', (SELECT jsonb_agg(repeat(chr(65 + i % 26), 256)) FROM generate_series(1, 64) i))));
-- top_p is checked as the float it becomes: 1e-50 is 0
SELECT try_sql($$SELECT gptoss_generate('x', '{"top_p": 1e-50}')$$);
-- reasoning_effort
SELECT try_sql($$SELECT gptoss_generate('x', '{"reasoning_effort": "extreme"}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"reasoning_effort": 2}')$$);
-- instructions
SELECT try_sql($$SELECT gptoss_generate('x', '{"instructions": 1}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"instructions": ["a"]}')$$);
-- booleans
SELECT try_sql($$SELECT gptoss_generate('x', '{"raw": "yes"}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"raw": 1}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"ignore_eos": 0}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"include_reasoning": "true"}')$$);
-- the same checks guard gptoss_chat; raw makes no sense there
SELECT try_sql($$SELECT gptoss_chat('[{"role": "user", "content": "x"}]', '{"top_k": -1}')$$);
SELECT try_sql($$SELECT gptoss_chat('[{"role": "user", "content": "x"}]', '{"raw": true}')$$);

-- Valid values: JSON null keeps the default; integral numbers are integers;
-- a single stop string is accepted; a huge max_tokens is clamped, not an error.
SELECT try_sql($$SELECT gptoss_generate('x', '{"max_tokens": null, "stop": null, "seed": null, "raw": true}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"max_tokens": 2.0, "top_k": 5, "top_p": 0.5, "temperature": 0.7, "seed": -1, "raw": true}')$$);
SELECT (gptoss_chat('[{"role": "user", "content": "x"}]', '{"min_tokens": 6, "max_tokens": 6}')->'usage'->>'completion_tokens')::int AS min_tokens_6;
SELECT try_sql($$SELECT gptoss_generate('x', '{"max_tokens": 2, "stop": "zz", "reasoning_effort": "low", "instructions": "Be brief.", "ignore_eos": false, "include_reasoning": true}')$$);
SELECT try_sql($$SELECT gptoss_generate(repeat(' hello', 505), '{"max_tokens": 1e30, "raw": true, "stop": ["a"]}')$$);

-- GUC defaults are validated too.
SELECT try_sql('SET gptoss.top_p = 0');
SELECT try_sql('SET gptoss.top_p = 1e-50');
SELECT try_sql('SET gptoss.temperature = -1');
SELECT try_sql('SET gptoss.max_tokens = 0');
SELECT try_sql('SET gptoss.reasoning_effort = extreme');
SELECT try_sql('SET gptoss.model_path = ''/tmp''');
SELECT try_sql('SET gptoss.no_such_setting = 1');
