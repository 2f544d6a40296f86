# A batched statement that ends early gives every request it has in flight
# back at once: pg_cancel_backend, statement_timeout and an ERROR in a later
# row each leave no sequence in the worker within a second.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = gptoss_node('batch_cancel',
	conf => { 'gptoss.max_batch_size' => 16, 'gptoss.max_context' => 1024 });

# 64 rows of long generations; in docs_error rows 1-3 finish fast and row 19
# has a bad parameter, read ahead once rows 1-3 were returned, while rows
# 4-18 are generating.
my $long = '{"raw": true, "temperature": 0, "max_tokens": 900, "ignore_eos": true}';
my $short = '{"raw": true, "temperature": 0, "max_tokens": 10, "ignore_eos": true}';
$node->safe_psql('postgres', qq{
	CREATE TABLE docs AS
	SELECT i AS id, 'Document number ' || i AS body, '$long'::jsonb AS params FROM generate_series(1, 64) i;
	CREATE TABLE docs_error AS
	SELECT i AS id, 'Document number ' || i AS body,
	       CASE WHEN i <= 3 THEN '$short' WHEN i = 19 THEN '{"max_tokens": 0}' ELSE '$long' END::jsonb AS params
	FROM generate_series(1, 64) i;
});
my $select = 'SELECT id, gptoss_generate(body, params) FROM docs';

is($node->safe_psql('postgres', 'SHOW gptoss.batch_window'), '16',
	'batch_window boots at min(max_batch_size x workers, max_requests / 2)');
like($node->safe_psql('postgres', "EXPLAIN (COSTS OFF) $select"),
	qr/Custom Scan \(GptossBatch\)/, 'the SELECT runs through the batch node');

# Sequences in the worker or waiting for it.
sub in_flight
{
	my $s = stats($node);
	return $s->{requests_active} + $s->{requests_queued};
}

# Asserts that nothing is left in flight within a second, and that the
# requests were cancelled, not run to their end.
sub check_freed
{
	my ($what, $before) = @_;
	my $elapsed = poll_until(5, sub { in_flight() == 0 });
	ok(defined $elapsed && $elapsed < 1.0,
		sprintf('%s: nothing in flight after %.3f s', $what, $elapsed // -1));
	my $after = stats($node);
	cmp_ok($after->{requests_cancelled} - $before->{requests_cancelled},
		'>=', 8, "$what: the requests in flight were cancelled");
	return;
}

# pg_cancel_backend while 15 rows generate (one role holds at most
# max_batch_size - 1 seats: the last is kept for another role).
my $seats = 15;
my $before = stats($node);
my $h = start_async($node, 'batch_cancel', $select);
my $pid = backend_pid($node, 'batch_cancel');
ok(defined poll_until(60, sub { stats($node)->{requests_active} >= $seats }),
	'cancel: 15 rows generating at once');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
check_freed('pg_cancel_backend', $before);
ok(defined wait_async($h, 10), 'cancel: session returned');
like($h->{err}, qr/canceling statement due to user request/, 'cancel: reported');

# statement_timeout during the batch.
$before = stats($node);
$h = start_async($node, 'batch_timeout', "SET statement_timeout = '3s'; $select");
ok(defined poll_until(60, sub { stats($node)->{requests_active} >= $seats }),
	'statement_timeout: 15 rows generating at once');
ok(defined wait_async($h, 30), 'statement_timeout: session returned');
like($h->{err}, qr/canceling statement due to statement timeout/, 'statement_timeout: reported');
check_freed('statement_timeout', $before);

# An ERROR on a row read ahead while others generate.
$before = stats($node);
$h = start_async($node, 'batch_error', 'SELECT id, gptoss_generate(body, params) FROM docs_error');
ok(defined wait_async($h, 60), 'later row error: session returned');
like($h->{err}, qr/invalid gptoss parameter "max_tokens": must be at least 1/,
	'later row error: the parameter error of row 19');
check_freed('later row error', $before);

# The session and the worker are fine afterwards.
is($node->safe_psql('postgres',
		"SELECT count(*) FROM (SELECT gptoss_generate(body, '$short') FROM docs LIMIT 20) s"),
	20, 'a batched statement runs after all this');
is($node->safe_psql('postgres', q{SELECT count(*) FROM gptoss_stats WHERE state = 'ready'}),
	1, 'worker still ready');
ok(!$node->log_contains('terminated by signal'), 'no process crashed');

$node->stop;
done_testing();
