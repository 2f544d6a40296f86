# Cancellation: pg_cancel_backend, statement_timeout, client disconnect and
# pg_terminate_backend during a long generation free the sequence at the
# worker's next step (visible in gptoss_stats within a second), and other
# sessions are not disturbed; each cancelled request counts once, as
# cancelled.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;

# A long context so that a generation runs for many seconds.
my $node = gptoss_node('cancel', conf => { 'gptoss.max_context' => 4096 });

my $long = q{SELECT gptoss_generate('Tell me a long story', '{"raw": true, "temperature": 0, "max_tokens": 100000, "ignore_eos": true}')};
my $short = q{SELECT gptoss_generate('Hello world', '{"raw": true, "temperature": 0, "max_tokens": 12, "ignore_eos": true}')};
my $expected_short = $node->safe_psql('postgres', $short);
isnt($expected_short, '', 'short generation alone');

# Starts the long generation in the background and waits until it runs.
sub start_long
{
	my ($appname, $prefix) = @_;
	my $before = stats($node);
	my $h = start_async($node, $appname, ($prefix // '') . $long);
	my $pid = backend_pid($node, $appname);
	ok(defined poll_until(30, sub { stats($node)->{requests_active} == 1 }),
		"$appname: generation running");
	return ($h, $pid, $before);
}

# Asserts that the sequence left the batch within a second and was counted.
sub check_freed
{
	my ($what, $before) = @_;
	my $elapsed = poll_until(5, sub { stats($node)->{requests_active} == 0 });
	ok(defined $elapsed && $elapsed < 1.0,
		sprintf('%s: requests_active back to 0 in %.3f s', $what, $elapsed // -1));
	my $after = stats($node);
	is($after->{requests_cancelled}, $before->{requests_cancelled} + 1,
		"$what: requests_cancelled rose by one");
	is($after->{requests_queued}, 0, "$what: nothing queued");
}

# pg_cancel_backend, while another session generates.
my ($h, $pid, $before) = start_long('long_cancel');
is($node->safe_psql('postgres', $short), $expected_short,
	'another session generates correctly meanwhile');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
check_freed('pg_cancel_backend', $before);
ok(defined wait_async($h, 10), 'cancelled session returned');
like($h->{err}, qr/canceling statement due to user request/, 'cancel error reported');

# The cancelled session's backend is still usable.
is($node->safe_psql('postgres', $short), $expected_short, 'generation works after cancel');

# statement_timeout: the backend gives up by itself.
$before = stats($node);
$h = start_async($node, 'long_timeout', "SET statement_timeout = '1500ms'; $long");
ok(defined poll_until(30, sub { stats($node)->{requests_active} == 1 }),
	'statement_timeout: generation running');
ok(defined wait_async($h, 10), 'statement_timeout: session returned');
like($h->{err}, qr/canceling statement due to statement timeout/, 'statement timeout reported');
check_freed('statement_timeout', $before);

# Client disconnect: kill psql; the backend notices the closed socket.
($h, $pid, $before) = start_long('long_disconnect');
$h->{run}->signal('KILL');
$h->{run}->finish;
check_freed('client disconnect', $before);
ok(defined poll_until(5, sub {
	$node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid") == 0 }),
	'client disconnect: backend exited');
ok($node->log_contains('connection to client lost'), 'client disconnect logged');

# pg_terminate_backend of the client backend (FATAL path).
($h, $pid, $before) = start_long('long_terminate');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
check_freed('pg_terminate_backend', $before);
ok(defined wait_async($h, 10), 'terminated session returned');
like($h->{err}, qr/terminating connection due to administrator command/, 'terminate reported');

# Cancelling one of several concurrent generations leaves the others intact.  The others
# generate 400 tokens, so that all four are in flight for long enough to be seen (each poll
# runs a psql; at 60 tokens the window was sometimes missed on a loaded 2-core machine).
($h, $pid, $before) = start_long('long_mixed');
my $long_short = q{SELECT gptoss_generate('Hello world', '{"raw": true, "temperature": 0, "max_tokens": 400, "ignore_eos": true}')};
my $expected_long_short = $node->safe_psql('postgres', $long_short);
my @others = map { start_async($node, "other_$_", $long_short) } 1 .. 3;
ok(defined poll_until(30, sub { stats($node)->{requests_active} == 4 }), 'four generations in the batch');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
for my $o (@others)
{
	ok(defined wait_async($o, 60), "$o->{appname}: finished");
	is($o->{out}, $expected_long_short, "$o->{appname}: complete and correct answer");
}
ok(defined wait_async($h, 10), 'mixed: cancelled session returned');
ok(defined poll_until(5, sub { stats($node)->{requests_active} == 0 }), 'mixed: batch empty');

# Each request ended once: 7 answers, 5 cancelled (cancel, timeout, disconnect,
# terminate, mixed), none failed.
check_request_totals($node, 'after the cancels', 7, 0, 5);

# The worker never restarted through all this.
is($node->safe_psql('postgres', q{SELECT count(*) FROM gptoss_stats WHERE uptime > '0' AND state = 'ready'}),
	1, 'worker still ready');
ok(!$node->log_contains('terminated by signal'), 'no process crashed');

$node->stop;
done_testing();
