--
-- CREATE EXTENSION gptoss in a database whose encoding is not UTF8 is refused
-- with SQLSTATE 0A000 and the reason.
--
SELECT current_database() AS regress_db \gset
CREATE DATABASE gptoss_latin1 TEMPLATE template0 ENCODING 'LATIN1' LOCALE 'C';
CREATE DATABASE gptoss_sql_ascii TEMPLATE template0 ENCODING 'SQL_ASCII' LOCALE 'C';
\set SHOW_CONTEXT never
\c gptoss_latin1
CREATE EXTENSION gptoss;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS gptoss_extensions FROM pg_extension WHERE extname = 'gptoss';
\c gptoss_sql_ascii
CREATE EXTENSION gptoss;
\echo :LAST_ERROR_SQLSTATE
\c :regress_db
\set SHOW_CONTEXT errors
DROP DATABASE gptoss_latin1;
DROP DATABASE gptoss_sql_ascii;
