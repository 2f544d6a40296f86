# Enrichment, async mode: the statement only queues its rows and the
# "gptoss enrich worker" of the database fills them in batches.  A 500-row
# COPY and an INSERT ... SELECT are fully enriched with the values
# gptoss_generate gives; a row updated while queued is generated once, from
# its latest value; a row whose source changes during its generation is
# generated again rather than overwritten with the stale answer; failures are
# recorded and retried up to max_attempts; pause, resume and drop; rights: only
# the owner creates an enrichment, and the work runs with the owner's rights.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = gptoss_node('enrich_async', conf => { 'gptoss.max_batch_size' => 32 });
my $params = '{"raw": true, "temperature": 0, "max_tokens": 3, "ignore_eos": true}';
my $prompt = q{'Summary of ' || title || ': ' || body};

$node->safe_psql('postgres', qq{
	CREATE TABLE docs (id int PRIMARY KEY, title text, body text, summary text);
	SELECT gptoss_enrich('docs', 'summary', \$\$$prompt\$\$,
	                     '{"raw": true, "temperature": 0, "max_tokens": 3, "ignore_eos": true, "max_attempts": 2}');
});

# Rows whose summary differs from gptoss_generate of their prompt (or is missing).
sub mismatches
{
	my ($where) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT count(*) FROM docs WHERE $where AND summary IS DISTINCT FROM gptoss_generate($prompt, '$params')});
}

sub requests { return stats($node)->{requests_total}; }

sub view { return $node->safe_psql('postgres', "SELECT $_[0] FROM gptoss_enrichments WHERE table_name = 'docs'::regclass"); }

# Waits until the docs enrichment has nothing pending.
sub drained
{
	return defined poll_until(120, sub { view('pending') eq '0' });
}

# 1. COPY of 500 rows: queued at once, filled by the worker.
my $csv_file = PostgreSQL::Test::Utils::tempdir() . '/docs.csv';
PostgreSQL::Test::Utils::append_to_file($csv_file,
	join('', map { "$_,Title $_,Body of document $_ about " . (qw(rain music ships code))[$_ % 4] . "\n" } 1 .. 500));
my $r0 = requests();
$node->safe_psql('postgres', "COPY docs (id, title, body) FROM '$csv_file' (FORMAT csv)");
is(view('pending + done'), 500, 'when COPY returns every row is queued or done');
ok(drained(), 'the worker drains the queue');
is($node->safe_psql('postgres', 'SELECT count(summary) FROM docs'), 500, 'all 500 rows filled');
is(requests() - $r0, 500, 'one generation per row');
cmp_ok(stats($node)->{mean_batch_size}, '>', 4, 'generated in batches (mean batch ' . stats($node)->{mean_batch_size} . ')');
is(mismatches('true'), 0, 'every value equals gptoss_generate(prompt_sql, params)');
is(view('done || \'|\' || failed'), '500|0', 'view: 500 done, none failed');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'gptoss enrich worker' AND datname = 'postgres'}),
	1, 'one enrichment worker serves the database');

# 2. INSERT ... SELECT
$node->safe_psql('postgres', q{
	INSERT INTO docs (id, title, body) SELECT g, 'Item ' || g, 'Text number ' || g FROM generate_series(501, 600) g});
ok(drained(), 'INSERT ... SELECT drained');
is(mismatches('id > 500'), 0, 'INSERT ... SELECT rows filled with the right values');

# 3. Changed twice while queued (paused): one generation, from the latest value.
$node->safe_psql('postgres', q{SELECT gptoss_enrich_pause(id) FROM gptoss_enrichments WHERE table_name = 'docs'::regclass});
$node->safe_psql('postgres', q{INSERT INTO docs (id, title, body) VALUES (2001, 'Q', 'first version')});
$node->safe_psql('postgres', q{UPDATE docs SET body = 'second version' WHERE id = 2001});
$node->safe_psql('postgres', q{UPDATE docs SET body = 'third version' WHERE id = 2001});
sleep(2);
is(view('paused || \'|\' || pending'), 'true|1', 'paused: the row waits, queued once');
is($node->safe_psql('postgres', 'SELECT summary IS NULL FROM docs WHERE id = 2001'), 't', 'not generated while paused');
$r0 = requests();
$node->safe_psql('postgres', q{SELECT gptoss_enrich_resume(id) FROM gptoss_enrichments WHERE table_name = 'docs'::regclass});
ok(drained(), 'resumed: drained');
is(requests() - $r0, 1, 'generated once');
is(mismatches('id = 2001'), 0, 'from the latest value');

# 4. A failing row is retried up to max_attempts and recorded; the others go on.
my $long = 'word ' x 1000;
$node->safe_psql('postgres', qq{
	INSERT INTO docs (id, title, body) VALUES (3001, 'ok', 'fine'), (3002, 'bad', '$long'), (3003, 'ok', 'fine too')});
ok(defined poll_until(60, sub { view('failed') eq '1' && view('pending') eq '0' }),
	'the failing row ends failed after its attempts');
is(mismatches('id IN (3001, 3003)'), 0, 'the other rows are filled');
is($node->safe_psql('postgres', 'SELECT attempts FROM gptoss_enrich_queue'), 2, 'max_attempts (2) attempts made');
like(view('last_error'), qr/^54000: /, 'the error is recorded');

# 5. Source changed while its answer is being generated: the stale answer is not written.
$node->safe_psql('postgres', q{
	CREATE TABLE slow (id int PRIMARY KEY, body text, answer text);
	SELECT gptoss_enrich('slow', 'answer', 'body',
	                     '{"raw": true, "temperature": 0, "max_tokens": 400, "ignore_eos": true}');
	INSERT INTO slow VALUES (1, 'the first body')});
ok(defined poll_until(30, sub { stats($node)->{requests_active} == 1 }), 'the generation is running');
$r0 = requests();
$node->safe_psql('postgres', q{UPDATE slow SET body = 'the second body' WHERE id = 1});
ok(defined poll_until(120, sub {
	$node->safe_psql('postgres', q{SELECT pending FROM gptoss_enrichments WHERE table_name = 'slow'::regclass}) eq '0' }),
	'slow enrichment drained');
is(requests() - $r0, 1, 'the changed row was generated again');
is($node->safe_psql('postgres', q{
	SELECT answer = gptoss_generate('the second body', '{"raw": true, "temperature": 0, "max_tokens": 400, "ignore_eos": true}') FROM slow}),
	't', 'its answer is the one of the new value');

# 6. Rights: only the owner creates an enrichment; the work runs as the owner.
$node->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;
	CREATE TABLE secret (id int PRIMARY KEY, word text);
	INSERT INTO secret VALUES (1, 'hidden');
	ALTER TABLE secret OWNER TO alice;
	CREATE TABLE notes (id int PRIMARY KEY, body text, out text, extra text);
	ALTER TABLE notes OWNER TO alice;
	GRANT INSERT ON notes TO bob});
my ($ret, $out, $err) = $node->psql('postgres',
	q{SET ROLE bob; SELECT gptoss_enrich('notes', 'out', 'body')});
like($err, qr/must be owner of table notes/, 'a role that does not own the table cannot create an enrichment');
$node->safe_psql('postgres', q{
	SET ROLE alice;
	SELECT gptoss_enrich('notes', 'out', $$body || (SELECT word FROM secret WHERE id = 1)$$,
	                     '{"raw": true, "temperature": 0, "max_tokens": 3, "ignore_eos": true}', 'sync')});
($ret, $out, $err) = $node->psql('postgres', q{SET ROLE bob; INSERT INTO notes (id, body) VALUES (1, 'note ')});
is($ret, 0, 'bob (INSERT only) inserts into the sync-enriched table') or diag($err);
is($node->safe_psql('postgres', q{
	SELECT out = gptoss_generate('note hidden', '{"raw": true, "temperature": 0, "max_tokens": 3, "ignore_eos": true}') FROM notes}),
	't', 'the row was filled with a prompt only the owner can read');
($ret, $out, $err) = $node->psql('postgres', q{SET ROLE bob; SELECT count(*) FROM gptoss_enrichments});
is($out, '0', 'bob sees no enrichment of tables he does not own');

# 7. Drop: the triggers and the queue go; DROP TABLE drops the enrichment; the worker exits.
$node->safe_psql('postgres', q{
	SELECT gptoss_enrich_pause(id) FROM gptoss_enrichments WHERE table_name = 'docs'::regclass;
	INSERT INTO docs (id, title, body) VALUES (4001, 'x', 'y')});
is(view('pending'), 1, 'a row queued before the drop');
$node->safe_psql('postgres', q{SELECT gptoss_enrich_drop(id) FROM gptoss_enrichments WHERE table_name = 'docs'::regclass});
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs'::regclass}), 0, 'triggers dropped');
is($node->safe_psql('postgres', q{SELECT count(*) FROM gptoss_enrich_queue q JOIN gptoss_enrichment e ON e.id = q.enrichment WHERE e.relid = 'docs'::regclass}),
	0, 'queue emptied');
$node->safe_psql('postgres', 'DROP TABLE slow; DROP TABLE notes');
is($node->safe_psql('postgres', 'SELECT count(*) FROM gptoss_enrichment'), 0, 'DROP TABLE dropped the other enrichments');
is($node->safe_psql('postgres', 'SELECT count(*) FROM gptoss_enrich_queue'), 0, 'and their queue');
ok(defined poll_until(30, sub {
	$node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'gptoss enrich worker'}) eq '0' }),
	'the worker exits when its database has no enrichment left');

$node->stop;
done_testing();
