# Enrichment, sync mode: the statement returns with its rows filled.  A
# 500-row COPY and an INSERT ... SELECT are enriched in batches (the worker's
# mean batch is well above 1) and every value equals gptoss_generate of the
# prompt expression with the same params.  An UPDATE regenerates only the rows
# whose prompt inputs changed; the fill's own UPDATE regenerates nothing.  A
# row whose generation fails does not fail the statement: it is queued with
# its error, retried by the worker up to max_attempts, and filled once fixed.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = gptoss_node('enrich_sync', conf => { 'gptoss.max_batch_size' => 32 });
my $params = '{"raw": true, "temperature": 0, "max_tokens": 3, "ignore_eos": true}';
my $prompt = q{'Summary of ' || title || ': ' || body};

$node->safe_psql('postgres', qq{
	CREATE TABLE docs (id int PRIMARY KEY, title text, body text, note text, summary text);
	SELECT gptoss_enrich('docs', 'summary', \$\$$prompt\$\$, '$params', 'sync');
});

# Rows whose summary differs from gptoss_generate of their prompt (or is missing).
sub mismatches
{
	my ($where) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT count(*) FROM docs WHERE $where AND summary IS DISTINCT FROM gptoss_generate($prompt, '$params')});
}

sub requests { return stats($node)->{requests_total}; }

# 1. COPY of 500 rows: filled when COPY returns, batched.
my $csv = join('', map { "$_,Title $_,Body of document $_ about " . (qw(rain music ships code))[$_ % 4] . "\n" } 1 .. 500);
my $csv_file = PostgreSQL::Test::Utils::tempdir() . '/docs.csv';
PostgreSQL::Test::Utils::append_to_file($csv_file, $csv);
my $before = stats($node);
my ($ret, $out, $err) = $node->psql('postgres', "COPY docs (id, title, body) FROM '$csv_file' (FORMAT csv)");
is($ret, 0, 'COPY of 500 rows succeeded') or diag($err);
is($node->safe_psql('postgres', 'SELECT count(*), count(summary) FROM docs'), '500|500',
	'every copied row is filled when COPY returns');
my $after = stats($node);
is($after->{requests_total} - $before->{requests_total}, 500, 'one generation per row');
cmp_ok($after->{mean_batch_size}, '>', 4, "generated in batches (mean batch $after->{mean_batch_size})");
is(mismatches('true'), 0, 'every value equals gptoss_generate(prompt_sql, params)');
is($node->safe_psql('postgres', 'SELECT done, pending, failed FROM gptoss_enrichments'), '500|0|0',
	'gptoss_enrichments counts 500 done');

# 2. INSERT ... SELECT
$node->safe_psql('postgres', q{
	INSERT INTO docs (id, title, body)
	SELECT g, 'Item ' || g, 'Text number ' || g FROM generate_series(501, 600) g});
is($node->safe_psql('postgres', 'SELECT count(summary) FROM docs WHERE id > 500'), 100,
	'INSERT ... SELECT rows filled');
is(mismatches('id > 500'), 0, 'INSERT ... SELECT values equal gptoss_generate');

# 3. UPDATE: only rows whose inputs changed are generated again.
my $r0 = requests();
$node->safe_psql('postgres', 'UPDATE docs SET note = $$seen$$ WHERE id <= 100');
is(requests() - $r0, 0, 'an UPDATE of a column the prompt does not read generates nothing');
$node->safe_psql('postgres', 'UPDATE docs SET body = body WHERE id <= 100');
is(requests() - $r0, 0, 'an UPDATE that leaves the inputs as they were generates nothing');
my $old = $node->safe_psql('postgres', 'SELECT summary FROM docs WHERE id = 7');
$node->safe_psql('postgres', q{UPDATE docs SET body = 'A new body for seven' WHERE id IN (7, 8)});
is(requests() - $r0, 2, 'an UPDATE of an input generates the changed rows only');
isnt($node->safe_psql('postgres', 'SELECT summary FROM docs WHERE id = 7'), $old, 'the summary changed');
is(mismatches('id IN (7, 8)'), 0, 'updated rows equal gptoss_generate of their new prompt');
is(mismatches('true'), 0, 'all 600 rows still match');

# 4. A failing row: the statement succeeds, the others are filled, the error is recorded.
my $long = 'word ' x 1000;
($ret, $out, $err) = $node->psql('postgres', qq{
	INSERT INTO docs (id, title, body) VALUES (1001, 'ok', 'short'), (1002, 'too long', '$long'), (1003, 'ok', 'also short')});
is($ret, 0, 'INSERT with one failing row succeeds') or diag($err);
is($node->safe_psql('postgres', 'SELECT count(summary) FROM docs WHERE id IN (1001, 1003)'), 2,
	'the other rows of the statement are filled');
is($node->safe_psql('postgres', 'SELECT summary IS NULL FROM docs WHERE id = 1002'), 't', 'the failing row is not');
ok(defined poll_until(60, sub {
	$node->safe_psql('postgres', 'SELECT failed FROM gptoss_enrichments') eq '1' }),
	'the worker retries it up to max_attempts, then counts it failed');
is($node->safe_psql('postgres', q{SELECT attempts, key FROM gptoss_enrich_queue}), '3|{1002}',
	'its queue entry holds 3 attempts');
like($node->safe_psql('postgres', 'SELECT last_error FROM gptoss_enrichments'),
	qr/^54000: .*context/, 'last_error shows the error with its SQLSTATE');

# Fixed, then queued again with gptoss_enrich_retry_failed: filled by the worker.
$node->safe_psql('postgres', q{
	ALTER TABLE docs DISABLE TRIGGER USER;
	UPDATE docs SET body = 'now short' WHERE id = 1002;
	ALTER TABLE docs ENABLE TRIGGER USER});
is($node->safe_psql('postgres', 'SELECT gptoss_enrich_retry_failed(id) FROM gptoss_enrichments'), 1,
	'retry_failed queues the row again');
ok(defined poll_until(60, sub {
	$node->safe_psql('postgres', 'SELECT summary IS NOT NULL FROM docs WHERE id = 1002') eq 't' }),
	'the worker fills it');
is(mismatches('id = 1002'), 0, 'with the right value');
is($node->safe_psql('postgres', 'SELECT pending, failed FROM gptoss_enrichments'), '0|0', 'nothing left');

# A failed row fixed by an UPDATE is filled by the trigger, and its queue entry goes.
$node->safe_psql('postgres', "INSERT INTO docs (id, title, body) VALUES (1004, 'too long', '$long')");
is($node->safe_psql('postgres', 'SELECT count(*) FROM gptoss_enrich_queue'), 1, 'a failing row is queued');
$node->safe_psql('postgres', q{UPDATE docs SET body = 'short again' WHERE id = 1004});
is(mismatches('id = 1004'), 0, 'fixed by an UPDATE, the row is filled');
is($node->safe_psql('postgres', 'SELECT count(*) FROM gptoss_enrich_queue'), 0, 'and its queue entry is gone');

# The enrichment worker is a separate background process type.
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'gptoss enrich launcher'}),
	1, 'one launcher');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'gptoss worker'}),
	1, 'one model worker');

$node->stop;
done_testing();
