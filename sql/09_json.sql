--
-- Structured output: gptoss_generate_json, params response_format and
-- max_reasoning_tokens.  The tiny model is random, so every document below is
-- the constraint's work: the checks are on validity and shape, not content.
--

-- An extraction over a table.
CREATE TEMP TABLE invoices (id int, body text);
INSERT INTO invoices
SELECT i, 'Invoice ' || i || ' from vendor number ' || i || ', total ' || (i * 10) || ' EUR.'
FROM generate_series(1, 12) i;

CREATE TEMP TABLE extracted AS
SELECT id, gptoss_generate_json('Extract the invoice data from: ' || body,
    '{"type": "object",
      "properties": {"vendor": {"type": "string", "maxLength": 20},
                     "total": {"type": "number"},
                     "currency": {"enum": ["EUR", "USD", "GBP"]},
                     "paid": {"type": "boolean"},
                     "lines": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
                     "note": {"type": ["string", "null"], "maxLength": 8}},
      "required": ["vendor", "total", "currency", "paid", "lines"],
      "additionalProperties": false}',
    jsonb_build_object('seed', id, 'max_tokens', 40 + 10 * id)) AS doc
FROM invoices;

-- Every document has the required keys (and only listed ones), each of its type.
SELECT count(*) AS docs,
       count(*) FILTER (WHERE jsonb_typeof(doc) = 'object') AS objects,
       count(*) FILTER (WHERE doc ?& '{vendor,total,currency,paid,lines}'
                          AND NOT EXISTS (SELECT 1 FROM jsonb_object_keys(doc) k
                                          WHERE k NOT IN ('vendor', 'total', 'currency', 'paid', 'lines', 'note'))) AS keys_ok,
       count(*) FILTER (WHERE jsonb_typeof(doc->'vendor') = 'string' AND length(doc->>'vendor') <= 20) AS vendor_ok,
       count(*) FILTER (WHERE jsonb_typeof(doc->'total') = 'number') AS total_ok,
       count(*) FILTER (WHERE doc->>'currency' IN ('EUR', 'USD', 'GBP')) AS currency_ok,
       count(*) FILTER (WHERE jsonb_typeof(doc->'paid') = 'boolean') AS paid_ok,
       count(*) FILTER (WHERE jsonb_typeof(doc->'lines') = 'array' AND jsonb_array_length(doc->'lines') <= 3
                          AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(doc->'lines') e
                                          WHERE jsonb_typeof(e) <> 'number' OR e::text ~ '[.eE]')) AS lines_ok,
       count(*) FILTER (WHERE NOT doc ? 'note' OR jsonb_typeof(doc->'note') = 'null'
                          OR (jsonb_typeof(doc->'note') = 'string' AND length(doc->>'note') <= 8)) AS note_ok
FROM extracted;

-- Typed columns straight from the documents.
SELECT count(*) AS typed FROM extracted
WHERE (doc->>'total')::numeric IS NOT NULL AND (doc->>'paid')::boolean IS NOT NULL;

-- Same seed, same document.
SELECT gptoss_generate_json('x', '{"type": "array", "items": {"type": "integer"}}', '{"seed": 3, "max_tokens": 40}')
     = gptoss_generate_json('x', '{"type": "array", "items": {"type": "integer"}}', '{"seed": 3, "max_tokens": 40}') AS deterministic;

-- Scalars, enums, const, anyOf, nesting, any object.
SELECT jsonb_typeof(gptoss_generate_json('x', '{"type": "integer"}', '{"seed": 1}')) AS integer_type,
       length(gptoss_generate_json('x', '{"type": "string", "maxLength": 5}', '{"seed": 1}') #>> '{}') <= 5 AS max_length_ok,
       gptoss_generate_json('x', '{"enum": ["a", "b"]}', '{"seed": 1}') #>> '{}' IN ('a', 'b') AS enum_ok,
       gptoss_generate_json('x', '{"const": {"k": [1, true]}}') = '{"k": [1, true]}' AS const_ok,
       jsonb_typeof(gptoss_generate_json('x', '{"anyOf": [{"type": "null"}, {"type": "boolean"}]}', '{"seed": 2}')) IN ('null', 'boolean') AS any_of_ok,
       jsonb_typeof(gptoss_generate_json('x', '{"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "array", "minItems": 2, "items": {"type": "boolean"}}}, "required": ["b"]}}, "required": ["a"]}', '{"seed": 4}') #> '{a,b,1}') AS nested_type,
       jsonb_typeof(gptoss_generate_json('x', '{}', '{"seed": 5}')) IS NOT NULL AS any_value_ok;

-- response_format in gptoss_generate and gptoss_chat; a json_object is any object.
SELECT jsonb_typeof(gptoss_generate('x', '{"response_format": {"type": "json_object"}, "seed": 6, "max_tokens": 60}')::jsonb) AS generate_type;
SELECT jsonb_typeof((gptoss_chat('[{"role": "user", "content": "How many?"}]',
         '{"response_format": {"type": "json_schema", "json_schema": {"name": "count", "strict": true,
            "schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": false}}},
           "seed": 7, "max_tokens": 60}') #>> '{choices,0,message,content}')::jsonb -> 'n') AS chat_n_type;

-- max_reasoning_tokens 0: the answer starts at once (no reasoning).
SELECT gptoss_chat('[{"role": "user", "content": "Hi"}]',
         '{"max_reasoning_tokens": 0, "include_reasoning": true, "max_tokens": 8, "seed": 1}')
       #>> '{choices,0,message,reasoning_content}' AS reasoning;

-- The least max_tokens gives the shortest document; one less is 22023.
SELECT gptoss_generate_json('x', '{"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}',
                            '{"max_tokens": 8}') AS shortest;
SELECT try_sql($$SELECT gptoss_generate_json('x', '{"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}', '{"max_tokens": 7}')$$);

-- Unsupported schemas and bad combinations are 22023 naming the keyword or key.
SELECT try_sql($$SELECT gptoss_generate_json('x', '{"type": "string", "pattern": "^a"}')$$);
SELECT try_sql($$SELECT gptoss_generate_json('x', '{"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}')$$);
SELECT try_sql($$SELECT gptoss_generate_json('x', '{"oneOf": [{"type": "string"}]}')$$);
SELECT try_sql($$SELECT gptoss_generate_json('x', '{"type": "object", "required": ["a"]}')$$);
SELECT try_sql($$SELECT gptoss_generate_json('x', '{"type": "object"}', '{"response_format": {"type": "json_object"}}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"response_format": {"type": "xml"}}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"response_format": "json"}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"response_format": {"type": "json_object"}, "stop": ["}"]}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"max_reasoning_tokens": -1}')$$);
SELECT try_sql($$SELECT gptoss_generate('x', '{"max_reasoning_tokens": "many"}')$$);
SELECT gptoss_generate_json('x', NULL) IS NULL AS strict_null;

-- Per-row calls run in the GptossBatch node like gptoss_generate's, with the
-- same documents as one row at a time.
EXPLAIN (COSTS OFF)
SELECT id, gptoss_generate_json(body, '{"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}',
                                jsonb_build_object('seed', id, 'max_tokens', 40)) FROM invoices;
SET gptoss.batch_window = 0;
EXPLAIN (COSTS OFF)
SELECT id, gptoss_generate_json(body, '{"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}',
                                jsonb_build_object('seed', id, 'max_tokens', 40)) FROM invoices;
CREATE TEMP TABLE docs_off AS
SELECT id, gptoss_generate_json(body, '{"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}',
                                jsonb_build_object('seed', id, 'max_tokens', 40, 'temperature', 0)) AS doc FROM invoices;
RESET gptoss.batch_window;
CREATE TEMP TABLE docs_on AS
SELECT id, gptoss_generate_json(body, '{"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}',
                                jsonb_build_object('seed', id, 'max_tokens', 40, 'temperature', 0)) AS doc FROM invoices;
SELECT (SELECT array_agg(id ORDER BY ctid) FROM docs_off) = (SELECT array_agg(id ORDER BY ctid) FROM docs_on) AS same_order,
       count(*) AS docs, count(*) FILTER (WHERE docs_off.doc = docs_on.doc) AS same_docs
FROM docs_off JOIN docs_on USING (id);

-- A prompt that leaves less of the context (512 tokens here) than the
-- shortest document fails in the worker, which alone knows the document's
-- tokens: 54000 for that row, an ERROR by default and NULL with on_error
-- "null" (one WARNING), batched and row by row alike.  Row 3's prompt is 505
-- tokens; the constant below takes more than the 7 left.
CREATE TEMP TABLE near_full AS
SELECT i AS id,
       CASE WHEN i = 3 THEN (SELECT rtrim(repeat('word ', k)) FROM generate_series(400, 600) k
                             WHERE cardinality(gptoss_tokenize(rtrim(repeat('word ', k)))) >= 505 ORDER BY k LIMIT 1)
            ELSE 'Row ' || i END AS body
FROM generate_series(1, 5) i;
SELECT id, cardinality(gptoss_tokenize(body)) AS tokens FROM near_full WHERE id = 3;
SELECT try_sql($$SELECT id, gptoss_generate_json(body, '{"const": "the quick brown fox jumps over the lazy dog again"}',
                                                 '{"raw": true, "max_tokens": 40}') FROM near_full$$);
SELECT id, gptoss_generate_json(body, '{"const": "the quick brown fox jumps over the lazy dog again"}',
                                '{"raw": true, "max_tokens": 40, "on_error": "null"}') AS doc
FROM near_full;
SET gptoss.batch_window = 0;
SELECT try_sql($$SELECT id, gptoss_generate_json(body, '{"const": "the quick brown fox jumps over the lazy dog again"}',
                                                 '{"raw": true, "max_tokens": 40}') FROM near_full$$);
SELECT id, gptoss_generate_json(body, '{"const": "the quick brown fox jumps over the lazy dog again"}',
                                '{"raw": true, "max_tokens": 40, "on_error": "null"}') AS doc
FROM near_full;
RESET gptoss.batch_window;
-- A max_tokens below the document stays a parameter error, on_error or not.
SELECT try_sql($$SELECT gptoss_generate_json(body, '{"const": "the quick brown fox jumps over the lazy dog again"}',
                                             '{"raw": true, "max_tokens": 3, "on_error": "null"}') FROM near_full$$);
SELECT try_sql($$SELECT gptoss_generate_json('x', '{}', '{"logprobs": true}')$$);
