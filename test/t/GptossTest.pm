# GptossTest.pm: helpers shared by the gptoss TAP tests.
#
# Every node runs the tiny synthetic model named by $ENV{GPTOSS_TEST_MODEL}
# (test/setup.sh writes it to build/tiny) on the CPU, with a small context so
# that tests stay fast on two cores.
package GptossTest;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT = qw(model_dir gptoss_node wait_ready stats start_async wait_async
  poll_until backend_pid check_request_totals);

# The model directory from the environment; stops the run when missing.
sub model_dir
{
	my $dir = $ENV{GPTOSS_TEST_MODEL};
	BAIL_OUT('set GPTOSS_TEST_MODEL to the tiny model directory (see test/setup.sh)')
	  unless defined $dir && -d $dir;
	return $dir;
}

# Creates and starts a node running gptoss; %opts: conf => {name => value
# or undef to leave out}, no_extension => 1, no_wait => 1.
sub gptoss_node
{
	my ($name, %opts) = @_;
	my %conf = (
		shared_preload_libraries => "'gptoss'",
		'gptoss.model_path' => "'" . model_dir() . "'",
		'gptoss.device' => 'cpu',
		'gptoss.max_context' => 512,
		'gptoss.threads' => 2,
		%{ $opts{conf} // {} });
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf',
		join("\n", map { "$_ = $conf{$_}" } grep { defined $conf{$_} } sort keys %conf));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION gptoss') unless $opts{no_extension};
	wait_ready($node) unless $opts{no_wait};
	return $node;
}

# Waits until the worker reports ready (dies after the default timeout).
sub wait_ready
{
	my ($node) = @_;
	$node->poll_query_until('postgres', "SELECT gptoss_status()->>'state' = 'ready'")
	  or die 'gptoss worker did not become ready: '
	  . $node->safe_psql('postgres', 'SELECT gptoss_status()');
	return;
}

# The gptoss_stats row of worker 0 as a hash.
sub stats
{
	my ($node) = @_;
	my @cols = qw(pid state requests_total requests_active requests_queued
	  requests_failed requests_cancelled completion_tokens mean_batch_size
	  mean_batch_size_1min decode_tok_s);
	my $row = $node->safe_psql('postgres',
		'SELECT ' . join(', ', @cols) . ' FROM gptoss_stats WHERE worker = 0');
	my %h;
	@h{@cols} = split /\|/, $row, -1;
	return \%h;
}

# Waits until worker 0 holds no request, then checks that each request it
# took ended in exactly one way (see GptossWorkerStats in gptoss.h):
# requests_total = completed + requests_failed + requests_cancelled, where
# completed is the number of answers the test got; and that failed and
# cancelled are $failed and $cancelled.
sub check_request_totals
{
	my ($node, $what, $completed, $failed, $cancelled) = @_;
	my $s;
	ok(defined poll_until(10, sub {
		$s = stats($node);
		return $s->{requests_active} == 0 && $s->{requests_queued} == 0;
	}), "$what: nothing in flight");
	is($s->{requests_total}, $completed + $s->{requests_failed} + $s->{requests_cancelled},
		"$what: requests_total ($s->{requests_total}) = $completed completed + "
		  . "requests_failed ($s->{requests_failed}) + requests_cancelled ($s->{requests_cancelled})");
	is($s->{requests_failed}, $failed, "$what: requests_failed");
	is($s->{requests_cancelled}, $cancelled, "$what: requests_cancelled");
	return;
}

# Polls $check->() every 20 ms until it returns true or $timeout seconds
# pass; returns the elapsed seconds, or undef on timeout.
sub poll_until
{
	my ($timeout, $check) = @_;
	my $t0 = time;
	while (1)
	{
		return time - $t0 if $check->();
		return undef if time - $t0 > $timeout;
		usleep(20_000);
	}
}

# Starts psql running $sql in the background, tagged with application_name.
sub start_async
{
	my ($node, $appname, $sql) = @_;
	my %h = (out => '', err => '', appname => $appname);
	$h{run} = IPC::Run::start(
		[
			'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres') . " application_name=$appname",
			'-c', $sql
		],
		'<', \undef, '>', \$h{out}, '2>', \$h{err});
	return \%h;
}

# Waits up to $timeout seconds for a background psql to end; returns the
# elapsed seconds, or undef when it is still running.
sub wait_async
{
	my ($h, $timeout) = @_;
	my $t0 = time;
	while ($h->{run}->pumpable)
	{
		$h->{run}->pump_nb;
		return undef if time - $t0 > $timeout;
		usleep(10_000);
	}
	$h->{run}->finish;
	chomp $h->{out};
	return time - $t0;
}

# Pid of the backend serving the background psql tagged $appname (waits for it).
sub backend_pid
{
	my ($node, $appname) = @_;
	my $pid;
	poll_until(
		30,
		sub {
			$pid = $node->safe_psql('postgres',
				"SELECT pid FROM pg_stat_activity WHERE application_name = '$appname'");
			return $pid ne '';
		}) // die "no backend for $appname";
	return $pid;
}

1;
