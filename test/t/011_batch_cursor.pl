# The batch node under a cursor and under a concurrent update:
#  - FETCH in pieces returns the rows of batch_window = 0, in order, and every
#    fetch ends the requests read ahead (nothing stays in the worker between
#    fetches);
#  - an UPDATE that waits for a concurrent update of one row re-runs the
#    call for that row on its new version (EvalPlanQual).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = gptoss_node('batch_cursor', conf => { 'gptoss.max_batch_size' => 16 });

# Row 1 finishes fast; rows 2-12 are still generating when it is fetched.
my $short = '{"raw": true, "temperature": 0, "max_tokens": 10, "ignore_eos": true}';
my $long = '{"raw": true, "temperature": 0, "max_tokens": 300, "ignore_eos": true}';
$node->safe_psql('postgres', qq{
	CREATE TABLE docs AS
	SELECT i AS id, 'Document number ' || i AS body,
	       CASE WHEN i = 1 THEN '$short' ELSE '$long' END::jsonb AS params
	FROM generate_series(1, 12) i;
});
my $select = 'SELECT id, gptoss_generate(body, params) FROM docs';
my $expected = $node->safe_psql('postgres', "SET gptoss.batch_window = 0; $select");
isnt($expected, '', 'the rows one at a time');

sub in_flight
{
	my $s = stats($node);
	return $s->{requests_active} + $s->{requests_queued};
}

my $bg = $node->background_psql('postgres');
$bg->query_safe('BEGIN');
$bg->query_safe("DECLARE c CURSOR FOR $select");
my $before = stats($node);
my @got = ($bg->query_safe('FETCH 1 FROM c'));
my $elapsed = poll_until(5, sub { in_flight() == 0 });
ok(defined $elapsed && $elapsed < 1.0,
	sprintf('after FETCH 1 nothing is in flight (%.3f s)', $elapsed // -1));
cmp_ok(stats($node)->{requests_cancelled} - $before->{requests_cancelled},
	'>=', 8, 'the rows read ahead were cancelled when the fetch ended');
push @got, $bg->query_safe('FETCH 4 FROM c');
is(in_flight(), 0, 'after FETCH 4 nothing is in flight');
push @got, $bg->query_safe('FETCH ALL FROM c');
$bg->query_safe('COMMIT');
is(join("\n", @got), $expected, 'FETCH 1, 4, ALL: the rows of batch_window = 0, in order');

# EvalPlanQual: the UPDATE reads rows ahead, then waits on row 5, which a
# concurrent transaction changes; the row is rechecked and its call re-run.
$node->safe_psql('postgres', qq{
	CREATE TABLE notes (id int PRIMARY KEY, body text, summary text);
	INSERT INTO notes SELECT i, 'Note number ' || i, NULL FROM generate_series(1, 10) i;
});
my $update = "UPDATE notes SET summary = gptoss_generate(body, '$short')";
like($node->safe_psql('postgres', "EXPLAIN (COSTS OFF) $update"),
	qr/Update on notes\n\s+->  Custom Scan \(GptossBatch\)/, 'the UPDATE runs through the batch node');
$bg->query_safe('BEGIN');
$bg->query_safe(q{UPDATE notes SET body = 'A changed note' WHERE id = 5});
my $h = start_async($node, 'epq_update', $update);
ok(defined poll_until(30, sub {
	$node->safe_psql('postgres',
		q{SELECT wait_event_type FROM pg_stat_activity WHERE application_name = 'epq_update'}) eq 'Lock' }),
	'the batched UPDATE waits for the concurrent update of row 5');
$bg->query_safe('COMMIT');
ok(defined wait_async($h, 60), 'the UPDATE finished');
is($h->{err}, '', 'without error');
is($node->safe_psql('postgres', 'SELECT body FROM notes WHERE id = 5'), 'A changed note',
	'row 5 has the concurrent body');
is($node->safe_psql('postgres', qq{SET gptoss.batch_window = 0;
	SELECT count(*) FROM notes WHERE summary IS NOT DISTINCT FROM gptoss_generate(body, '$short')}),
	10, 'every summary is the answer for the row\'s current body, row 5 included');

$bg->quit;
$node->stop;
done_testing();
