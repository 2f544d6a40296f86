# Every request takes one of the server's dynamic shared memory segments, and
# PostgreSQL 15 allows 64 + 5 * MaxBackends of them in the whole cluster.
# With a small max_connections, three GptossBatch statements whose windows
# and rows each exceed that number finish with every row answered (they wait
# for their own requests instead of failing with "too many dynamic shared
# memory segments"), with the rows of a small window, and single calls beside
# them get segments too; the statements log that they waited.  A call that
# can get no segment at all, because stream cursors of its own session hold
# every one, fails after gptoss.queue_wait with a clear 53000, and one that
# waits longer is cancelled by statement_timeout; neither leaves a waiter
# behind that would keep later statements from filling their windows.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = gptoss_node('batch_dsm_segments',
	conf => {
		max_connections => 8,
		autovacuum_max_workers => 1,
		max_worker_processes => 4,
		'gptoss.max_requests' => 1024,
		'gptoss.max_batch_size' => 16
	});

# dsm.c's PG_DYNSHMEM_FIXED_SLOTS + PG_DYNSHMEM_SLOTS_PER_BACKEND * MaxBackends
my $max_backends = $node->safe_psql('postgres',
	q{SELECT sum(setting::int) FROM pg_settings WHERE name IN
	  ('max_connections', 'autovacuum_max_workers', 'max_worker_processes', 'max_wal_senders')})
  + 1;
my $segments = 64 + 5 * $max_backends;
note("the server has $segments dynamic shared memory segments");
my $rows_per_session = $segments + 30;
my $window = 2 * $segments;

$node->safe_psql('postgres', qq{
	CREATE TABLE docs AS
	SELECT i AS id, 'Document number ' || i AS body
	FROM generate_series(1, 3 * $rows_per_session) i;
});
my $params = '{"raw": true, "temperature": 0, "max_tokens": 2, "ignore_eos": true}';
my @selects = map { "SELECT id, gptoss_generate(body, '$params') FROM docs WHERE id % 3 = $_" } 0 .. 2;
my $singles = "SELECT id, gptoss_generate(body, '$params') FROM docs WHERE id <= 20";

my @expected = map { $node->safe_psql('postgres', "SET gptoss.batch_window = 4; $_") } @selects;
my $expected_singles = $node->safe_psql('postgres', "SET gptoss.batch_window = 0; $singles");
like($node->safe_psql('postgres', "SET gptoss.batch_window = $window; EXPLAIN (COSTS OFF) $selects[0]"),
	qr/Batch Window: $window/, "the node plans with a window of $window");

my $log_offset = -s $node->logfile;
my @sessions = map {
	start_async($node, "big_window_$_",
		"SET gptoss.queue_wait = '30s'; SET gptoss.batch_window = $window; $selects[$_]")
} 0 .. 2;
my $single = start_async($node, 'single_calls',
	"SET gptoss.queue_wait = '30s'; SET gptoss.batch_window = 0; $singles");
for my $k (0 .. 2)
{
	ok(defined wait_async($sessions[$k], 300), "session $k finished");
	is($sessions[$k]->{err}, '', "session $k: no error (no 53000)");
	is($sessions[$k]->{out}, $expected[$k],
		"session $k: all $rows_per_session rows, as with batch_window = 4");
}
ok(defined wait_async($single, 300), 'the single calls beside them finished');
is($single->{err}, '', 'single calls: no error');
is($single->{out}, $expected_singles, 'single calls: the rows of batch_window = 0');
like(slurp_file($node->logfile, $log_offset),
	qr/requests of the statement waited for a dynamic shared memory segment/,
	'a statement logged that it waited for segments');

# One session opens stream cursors until no segment is left: each keeps its
# call, and so its segment, open until the cursor is read to the end.
sub cursors_script
{
	my ($settings) = @_;
	my $script = "\\set VERBOSITY verbose\nBEGIN;\n$settings\n";
	for my $i (1 .. $segments + 10)
	{
		$script .= "DECLARE c$i CURSOR FOR SELECT gptoss_generate_stream('Document $i', "
		  . "'{\"raw\": true, \"temperature\": 0, \"max_tokens\": 8, \"ignore_eos\": true}');\n"
		  . "FETCH 1 FROM c$i;\n";
	}
	return $script . "COMMIT;\n";
}
my ($ret, $out, $err) = $node->psql('postgres', cursors_script("SET gptoss.queue_wait = '300ms';"),
	on_error_stop => 1);
isnt($ret, 0, 'cursors holding every segment: the next call fails');
like($err, qr/ERROR:  53000: no dynamic shared memory segment is free for a gptoss request/,
	'with 53000 and a clear message');
like($err, qr/DETAIL:  All $segments dynamic shared memory segments of the server stayed in use for 300 ms/,
	'its detail counts the segments and the wait');
like($err, qr/HINT:  Raise max_connections .* or lower gptoss\.batch_window/, 'its hint says what to change');
my $opened = () = $out =~ /^/mg;
cmp_ok($opened, '<=', $segments, "at most $segments calls got a segment");
cmp_ok($opened, '>=', $segments - 10, "and nearly all did ($opened)");


my $t0 = time;
($ret, $out, $err) = $node->psql('postgres',
	cursors_script("SET gptoss.queue_wait = '60s'; SET statement_timeout = '2s';"),
	on_error_stop => 1);
my $elapsed = time - $t0;
like($err, qr/ERROR:  57014: canceling statement due to statement timeout/,
	'a call waiting for a segment is interruptible: statement_timeout cancels it');
cmp_ok($elapsed, '<', 30, sprintf('long before gptoss.queue_wait (%.1f s)', $elapsed));

is($node->safe_psql('postgres', "SELECT gptoss_generate('Document 1', '$params') IS NOT NULL"),
	't', 'once the cursors are gone, calls get segments again');
$log_offset = -s $node->logfile;
my $small = "SELECT id, gptoss_generate(body, '$params') FROM docs WHERE id <= 100";
is($node->safe_psql('postgres', "SET gptoss.batch_window = 200; $small"),
	$node->safe_psql('postgres', "SET gptoss.batch_window = 4; $small"),
	'a window of 100 requests runs as before');
unlike(slurp_file($node->logfile, $log_offset), qr/waited for a dynamic shared memory segment/,
	'without waiting for segments: the failed waits left no waiter behind');

$node->stop;
done_testing();
