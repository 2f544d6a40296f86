# Enrichment, async mode: what the loading transaction queues.  The row
# trigger collects each inserted row's key and the statement trigger writes
# them to the inbox (src/enrich.c), so: a COPY of N rows queues exactly those
# N keys (single and composite keys); a rolled-back COPY, or one rolled back
# to a savepoint, queues nothing; rows inserted in a subtransaction that
# aborts are not queued, the others of the same statement are; an UPDATE of
# already enriched rows queues the rows whose prompt inputs changed; rows
# routed into an enriched partition through its parent (no statement trigger
# of the partition fires) are queued at the commit; an enrichment whose
# INSERT trigger still has a transition table (created before the row
# trigger) keeps queueing its rows.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = gptoss_node('enrich_copy');
my $params = '{"raw": true, "temperature": 0, "max_tokens": 1, "ignore_eos": true}';

sub sql { return $node->safe_psql('postgres', $_[0]); }

# The view's counters of table t's enrichment: "pending|done|failed".
sub counters
{
	return sql("SELECT pending || '|' || done || '|' || failed FROM gptoss_enrichments WHERE table_name = '$_[0]'::regclass");
}

# Waits until the worker has moved every inbox row into the queue.
sub inbox_moved
{
	return defined poll_until(60, sub { sql('SELECT count(*) FROM gptoss_enrich_inbox') eq '0' });
}

# "queued|missing|extra" for table t: its queue entries, the rows of t
# matching where that have none, and the entries naming no row of t
# matching where.  key: the queue key of a row of t.
sub queue_vs
{
	my ($t, $where, $key) = @_;
	return sql(qq{
		WITH q AS (SELECT q.key FROM gptoss_enrich_queue q JOIN gptoss_enrichments e ON e.id = q.enrichment
		            WHERE e.table_name = '$t'::regclass),
		     r AS (SELECT $key AS key FROM $t WHERE $where)
		SELECT (SELECT count(*) FROM q) || '|' || (SELECT count(*) FROM r WHERE key NOT IN (SELECT key FROM q))
		       || '|' || (SELECT count(*) FROM q WHERE key NOT IN (SELECT key FROM r))});
}

# A paused enrichment keeps its queue as the loading transactions left it.
sql(qq{
	CREATE TABLE docs (id int PRIMARY KEY, title text, body text, summary text);
	SELECT gptoss_enrich_pause(gptoss_enrich('docs', 'summary', \$\$title || ': ' || body\$\$, '$params'))});
is(sql(q{SELECT string_agg(regexp_replace(tgname, '[0-9]+', 'N') || ' ' || tgtype, ', ' ORDER BY tgname)
          FROM pg_trigger WHERE tgrelid = 'docs'::regclass}),
	'gptoss_enrich_N_insert 4, gptoss_enrich_N_insert_row 5, gptoss_enrich_N_update 16',
	'an AFTER INSERT row trigger and statement trigger (no transition table), and the UPDATE trigger');

# 1. COPY of N rows queues exactly N keys.
my $n = 3000;
my $dir = PostgreSQL::Test::Utils::tempdir();
PostgreSQL::Test::Utils::append_to_file("$dir/docs.csv",
	join('', map { "$_,Title $_,Body $_\n" } 1 .. $n));
PostgreSQL::Test::Utils::append_to_file("$dir/more.csv",
	join('', map { "$_,More $_,Body $_\n" } 100001 .. 100000 + $n));
sql("COPY docs (id, title, body) FROM '$dir/docs.csv' (FORMAT csv)");
is(sql('SELECT sum(nrows) FROM gptoss_enrich_inbox'), $n, "COPY of $n rows: $n keys in the inbox");
is(counters('docs'), "$n|0|0", "the view counts them pending");
ok(inbox_moved(), 'the worker moves them into the queue');
is(queue_vs('docs', 'true', 'ARRAY[id::text]'), "$n|0|0", 'the queue holds exactly the copied rows');
is(counters('docs'), "$n|0|0", 'still pending after the move');

# 2. Rolled back: a whole COPY, a COPY rolled back to a savepoint, an INSERT in a
# subtransaction that fails inside a statement whose other rows stay.
sql("BEGIN; COPY docs (id, title, body) FROM '$dir/more.csv' (FORMAT csv); ROLLBACK");
is(counters('docs'), "$n|0|0", 'a rolled-back COPY queues nothing');
sql(qq{
	BEGIN;
	SAVEPOINT a;
	COPY docs (id, title, body) FROM '$dir/more.csv' (FORMAT csv);
	ROLLBACK TO a;
	INSERT INTO docs (id, title, body) VALUES (200001, 'kept', 'after the savepoint');
	COMMIT});
is(counters('docs'), ($n + 1) . '|0|0', 'a COPY rolled back to a savepoint queues nothing; the row after it is queued');
# The side rows: inserted in a subtransaction that fails after the nested INSERT
# (its keys were already written to the inbox) or during it, in a row trigger
# that follows the enrichment's (its keys were only collected).
sql(q{
	CREATE TABLE audit (id int);
	CREATE FUNCTION docs_side() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF NEW.id % 2 = 0 AND NEW.id BETWEEN 300000 AND 300009 THEN
			BEGIN
				INSERT INTO docs (id, title, body) VALUES (NEW.id + 1000000, 'side', NEW.id % 4);
				RAISE EXCEPTION 'undo the side row';
			EXCEPTION WHEN raise_exception THEN
				INSERT INTO audit VALUES (NEW.id);
			END;
		END IF;
		RETURN NULL;
	END$$;
	CREATE FUNCTION docs_fail() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF NEW.title = 'side' AND NEW.body = '0' THEN
			RAISE EXCEPTION 'the side row fails in its statement';
		END IF;
		RETURN NULL;
	END$$;
	CREATE TRIGGER a_side AFTER INSERT ON docs FOR EACH ROW EXECUTE FUNCTION docs_side();
	CREATE TRIGGER z_fail AFTER INSERT ON docs FOR EACH ROW EXECUTE FUNCTION docs_fail();
	INSERT INTO docs (id, title, body) SELECT g, 't', 'b' FROM generate_series(300000, 300009) g;
	DROP TRIGGER a_side ON docs;
	DROP TRIGGER z_fail ON docs});
is(sql('SELECT count(*) FROM audit'), 5, 'the side inserts ran and were rolled back');
is(counters('docs'), ($n + 11) . '|0|0', 'the statement\'s 10 rows are queued, the rolled-back side rows are not');
sql(q{BEGIN;
	INSERT INTO docs (id, title, body) VALUES (400001, 'a', 'b');
	INSERT INTO docs (id, title, body) SELECT g, 'a', 'b' FROM generate_series(400002, 400003) g;
	COMMIT});
ok(inbox_moved(), 'moved');
is(queue_vs('docs', 'true', 'ARRAY[id::text]'), ($n + 14) . '|0|0', 'every committed row is queued, nothing else');

# 3. UPDATE of enriched rows: only the rows whose prompt inputs changed are queued again.
sql(q{DELETE FROM docs WHERE id > 20});
sql(q{SELECT gptoss_enrich_resume(id) FROM gptoss_enrichments WHERE table_name = 'docs'::regclass});
ok(defined poll_until(120, sub { counters('docs') =~ /^0\|/ }), 'resumed: the 20 rows left are filled (the others are gone)');
is(sql('SELECT count(summary) FROM docs'), 20, 'all 20 filled');
sql(q{SELECT gptoss_enrich_pause(id) FROM gptoss_enrichments WHERE table_name = 'docs'::regclass});
my $done = (split /\|/, counters('docs'))[1];
sql(q{UPDATE docs SET body = body || ' (edited)' WHERE id <= 3});
sql(q{UPDATE docs SET summary = 'by hand' WHERE id = 4});
is(counters('docs'), "3|$done|0", 'an UPDATE of 3 inputs queues 3 rows; writing the target queues none');
is(queue_vs('docs', 'id <= 3', 'ARRAY[id::text]'), '3|0|0', 'the updated rows');
sql(q{SELECT gptoss_enrich_resume(id) FROM gptoss_enrichments WHERE table_name = 'docs'::regclass});
ok(defined poll_until(60, sub { counters('docs') =~ /^0\|/ }), 'the updated rows are filled again');
is(sql(qq{SELECT count(*) FROM docs WHERE id <= 3 AND summary = gptoss_generate(title || ': ' || body, '$params')}),
	3, 'from their new values');

# 4. Composite key, and a second enrichment of the same table: each queues every row.
sql(qq{
	CREATE TABLE pairs (a int, b text, body text, s1 text, s2 text, PRIMARY KEY (b, a));
	SELECT gptoss_enrich_pause(gptoss_enrich('pairs', 's1', 'body', '$params'));
	SELECT gptoss_enrich_pause(gptoss_enrich('pairs', 's2', 'body', '$params'))});
PostgreSQL::Test::Utils::append_to_file("$dir/pairs.csv", join('', map { "$_,k" . ($_ % 7) . ",body $_\n" } 1 .. 700));
sql("COPY pairs (a, b, body) FROM '$dir/pairs.csv' (FORMAT csv)");
ok(inbox_moved(), 'moved');
is(sql(q{SELECT string_agg(pending::text, ',') FROM gptoss_enrichments WHERE table_name = 'pairs'::regclass}),
	'700,700', 'both enrichments queue the 700 rows');
is(sql(q{SELECT count(DISTINCT (q.enrichment, q.key)) FROM gptoss_enrich_queue q
          JOIN pairs p ON q.key = ARRAY[p.b, p.a::text]}), 1400, 'under their (b, a) keys');

# 5. An enriched partition: rows routed through the parent are queued at the commit.
sql(qq{
	CREATE TABLE parted (id int, body text, summary text) PARTITION BY RANGE (id);
	CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (1000);
	ALTER TABLE parted_1 ADD PRIMARY KEY (id);
	SELECT gptoss_enrich_pause(gptoss_enrich('parted_1', 'summary', 'body', '$params'))});
sql(q{INSERT INTO parted SELECT g, 'b' FROM generate_series(1, 50) g});
sql(q{INSERT INTO parted_1 SELECT g, 'b' FROM generate_series(51, 60) g});
sql(q{BEGIN; INSERT INTO parted SELECT g, 'b' FROM generate_series(61, 70) g; ROLLBACK});
is(counters('parted_1'), '60|0|0', 'rows routed through the parent and rows inserted directly are queued, rolled back ones not');

# 6. An enrichment from before the row trigger (INSERT trigger with a transition table) still queues.
sql(qq{
	CREATE TABLE legacy (id int PRIMARY KEY, body text, summary text);
	SELECT gptoss_enrich_pause(gptoss_enrich('legacy', 'summary', 'body', '$params')) });
my $id = sql(q{SELECT id FROM gptoss_enrichments WHERE table_name = 'legacy'::regclass});
sql(qq{
	DROP TRIGGER gptoss_enrich_${id}_insert_row ON legacy;
	DROP TRIGGER gptoss_enrich_${id}_insert ON legacy;
	CREATE TRIGGER gptoss_enrich_${id}_insert AFTER INSERT ON legacy REFERENCING NEW TABLE AS gptoss_new
		FOR EACH STATEMENT EXECUTE FUNCTION gptoss_enrich_trigger('$id');
	INSERT INTO legacy SELECT g, 'b' FROM generate_series(1, 25) g});
is(counters('legacy'), '25|0|0', 'the transition-table trigger queues its 25 rows');
sql(qq{SELECT gptoss_enrich_drop($id)});
is(sql(q{SELECT count(*) FROM pg_trigger WHERE tgrelid = 'legacy'::regclass}), 0, 'and gptoss_enrich_drop drops it');

$node->stop;
done_testing();
