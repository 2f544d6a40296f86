# Worker failures: SIGTERM (pg_terminate_backend) of the worker makes
# waiting backends fail at once, and the postmaster restarts the worker,
# which loads the model again; SIGKILL of the worker makes the postmaster
# restart the whole cluster (its rule for crashed children), after which
# sessions reconnect and generate again.  Through both, gptoss_stats counts
# each request once: the ones the SIGTERM killed (running, or waiting in the
# worker for a batch seat) as failed, so that requests_total = completed +
# requests_failed + requests_cancelled.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = gptoss_node('restart',
	conf => {
		'gptoss.max_context' => 4096,
		restart_after_crash => 'on',
		# two batch seats per role: a third request of the role waits in the worker
		'gptoss.max_sequences_per_role' => 2
	});

my $long = q{SELECT gptoss_generate('Tell me a long story', '{"raw": true, "temperature": 0, "max_tokens": 100000, "ignore_eos": true}')};
my $short = q{SELECT gptoss_generate('Hello world', '{"raw": true, "temperature": 0, "max_tokens": 12, "ignore_eos": true}')};
my $expected_short = $node->safe_psql('postgres', $short);
my $worker_pid = stats($node)->{pid};
ok($worker_pid > 0, 'worker running');

# SIGTERM while three backends wait, two generating and one queued in the
# worker: all get an ERROR quickly.
my @waiting = map { start_async($node, "waiting_$_", $long) } 1 .. 3;
ok(defined poll_until(30, sub {
	my $s = stats($node);
	return $s->{requests_active} == 2 && $s->{requests_queued} == 1;
}), 'two generations running, one queued');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($worker_pid)");
for my $h (@waiting)
{
	my $elapsed = wait_async($h, 10);
	ok(defined $elapsed && $elapsed < 1.0,
		sprintf('%s: ended %.3f s after the worker was terminated', $h->{appname}, $elapsed // -1));
	like($h->{err}, qr/ERROR:  gptoss worker exited while processing the request/,
		"$h->{appname}: clear error");
}

# The postmaster restarts the worker (bgw_restart_time) and it loads again.
ok(defined poll_until(60, sub {
	my $s = stats($node);
	return $s->{pid} ne '' && $s->{pid} != $worker_pid && $s->{state} eq 'ready';
}), 'worker restarted with a new pid and ready');
my $new_pid = stats($node)->{pid};
is($node->safe_psql('postgres', $short), $expected_short, 'generation works after the restart');
check_request_totals($node, 'after SIGTERM', 2, 3, 0);
ok($node->log_contains("gptoss worker 0: terminating"), 'termination logged');

# A call made while the worker is down waits for it and then succeeds.
$node->safe_psql('postgres', "SELECT pg_terminate_backend($new_pid)");
ok(defined poll_until(10, sub { stats($node)->{pid} ne $new_pid }), 'worker gone');
is($node->safe_psql('postgres', "SET gptoss.queue_wait = '60s'; $short"),
	$expected_short, 'call during the restart waits for the worker');
$new_pid = stats($node)->{pid};
check_request_totals($node, 'after a call during the restart', 3, 3, 0);

# SIGKILL: the postmaster treats it as a crash and restarts every process.
my $h = start_async($node, 'crash_victim', $long);
ok(defined poll_until(30, sub { stats($node)->{requests_active} == 1 }), 'generation running before SIGKILL');
kill 'KILL', $new_pid;
ok(defined wait_async($h, 30), 'session ended by the crash restart');
like($h->{err}, qr/server closed the connection|terminating connection|connection to server was lost/,
	'session lost its connection');
ok(defined poll_until(60, sub {
	my $state = eval { $node->safe_psql('postgres', "SELECT gptoss_status()->>'state'") };
	return defined $state && $state eq 'ready';
}), 'cluster back and worker ready after SIGKILL');
isnt(stats($node)->{pid}, $new_pid, 'a new worker process');
is($node->safe_psql('postgres', $short), $expected_short, 'generation works after the crash restart');
# the crash restart reinitialized shared memory: the counters start again
check_request_totals($node, 'after the crash restart', 1, 0, 0);
ok($node->log_contains('all server processes terminated; reinitializing'), 'postmaster reinitialized');

$node->stop;
done_testing();
