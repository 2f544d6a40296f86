--
-- Enrichments: what gptoss_enrich checks when it creates one, and the
-- management functions' errors.  The filling itself (sync and async, restarts,
-- failures) is tested in test/t/020_enrich_sync.pl and the other 02x tests.
--
CREATE TABLE enrich_docs (id int PRIMARY KEY, body text, title varchar(40), n int,
                          summary text, meta jsonb, extra text);
CREATE TABLE enrich_nopk (body text, summary text);
INSERT INTO enrich_docs (id, body, title, n) VALUES (1, 'first', 'One', 1), (2, 'second', 'Two', 2);

-- the table needs a primary key: 55000
SELECT try_sql($$SELECT gptoss_enrich('enrich_nopk', 'summary', 'body')$$);
-- the target column must exist: 42703
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'nosuch', 'body')$$);
-- and be text or jsonb: 42804
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'n', 'body')$$);
-- prompt_sql: unknown column 42703, bad syntax 42601, not one text expression 42601
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'nosuch || body')$$);
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'body ||')$$);
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'body /*')$$);
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'body, title')$$);
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'body) FROM enrich_nopk; SELECT (1')$$);
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'n + 1')$$);
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'count(*)::text')$$);
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'enrich_docs::text')$$);
-- the prompt must not read the column it fills
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'body || summary')$$);
-- params: the same errors as gptoss_generate (22023), and the enrichment's own keys
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'body', '{"max_tokens": 0}')$$);
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'body', '{"nosuch": 1}')$$);
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'body', '[1]')$$);
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'body', '{"max_attempts": 0}')$$);
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'body', '{"max_attempts": 1.5}')$$);
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'body', '{"backfill": "no"}')$$);
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'body', '{}', 'later')$$);
-- nothing was created by the failed calls
SELECT count(*) AS enrichments FROM gptoss_enrichments;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'enrich_docs'::regclass;

-- a valid one (async, no backfill: the rows stay as they are), with its triggers
SELECT gptoss_enrich('enrich_docs', 'summary', $$'Summarize ' || title || ': ' || body$$,
                     '{"max_tokens": 4, "temperature": 0, "raw": true, "max_attempts": 5, "backfill": false}') AS id
\gset
SELECT table_name, column_name, mode, paused, pending, done, failed, last_error FROM gptoss_enrichments;
SELECT regexp_replace(tgname, '[0-9]+', 'N') AS tgname, tgtype FROM pg_trigger WHERE tgrelid = 'enrich_docs'::regclass ORDER BY tgname;
-- the stored params never contain the enrichment's own keys
SELECT params, max_attempts FROM gptoss_enrichment WHERE id = :id;
-- a second enrichment of the same column: 42710
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'summary', 'body')$$);
-- another column of the same table is fine; jsonb targets too
SELECT gptoss_enrich('enrich_docs', 'meta', 'body', '{"backfill": false}', 'sync') > :id AS created;

-- management: pause, resume, retry_failed on an id that exists; 42704 otherwise
SELECT gptoss_enrich_pause(:id);
SELECT paused FROM gptoss_enrichments WHERE id = :id;
SELECT gptoss_enrich_resume(:id);
SELECT paused FROM gptoss_enrichments WHERE id = :id;
SELECT gptoss_enrich_retry_failed(:id);
SELECT try_sql('SELECT gptoss_enrich_pause(999999)');
SELECT try_sql('SELECT gptoss_enrich_resume(999999)');
SELECT try_sql('SELECT gptoss_enrich_drop(999999)');
SELECT try_sql('SELECT gptoss_enrich_retry_failed(999999)');

-- only the owner: 42501 for another role, which also does not see it in the view
CREATE ROLE enrich_other;
SET ROLE enrich_other;
SELECT try_sql($$SELECT gptoss_enrich('enrich_docs', 'extra', 'body')$$);
SELECT try_sql(format('SELECT gptoss_enrich_pause(%s)', :id));
SELECT try_sql(format('SELECT gptoss_enrich_drop(%s)', :id));
SELECT count(*) AS visible FROM gptoss_enrichments;
SELECT try_sql('SELECT count(*) FROM gptoss_enrich_queue');
RESET ROLE;
DROP ROLE enrich_other;

-- drop removes the triggers; DROP TABLE removes the other enrichment
SELECT gptoss_enrich_drop(:id);
SELECT regexp_replace(tgname, '[0-9]+', 'N') AS tgname, tgtype FROM pg_trigger WHERE tgrelid = 'enrich_docs'::regclass ORDER BY tgname;
SELECT column_name FROM gptoss_enrichments;
DROP TABLE enrich_docs;
SELECT count(*) AS enrichments FROM gptoss_enrichment;
DROP TABLE enrich_nopk;
