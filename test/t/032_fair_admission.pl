# Fair admission (issue 10, item 3): while one role runs four
# gptoss_generate_many calls of 200 prompts x 300 tokens (more than the 64
# request slots and the 16 batch seats), another role's 4-token chat is
# admitted into the batch within 2 engine steps of its submission and never
# gets 53000.  The wait is read from the worker's step counters (the
# request's usage.queue_steps), not from the clock; its wall time against
# its best solo time is printed only.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = gptoss_node('fair_admission',
	conf => { 'gptoss.max_requests' => 64, 'gptoss.max_batch_size' => 16 });
$node->safe_psql('postgres', 'CREATE ROLE hog; CREATE ROLE small');

# queue_steps and the statement's own wall time (ms) of one small chat
my $small = q{SET ROLE small; SELECT gptoss_chat('[{"role": "user", "content": "Hi"}]',
	'{"temperature": 0, "max_tokens": 4, "ignore_eos": true}')#>>'{usage,queue_steps}',
	round(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)};

sub small_call
{
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$small");
	my ($steps, $ms) = split /\|/, $out;
	return ($ret, $err, $steps, $ms);
}

my @solo;
for (1 .. 3)
{
	my ($ret, $err, $steps, $ms) = small_call();
	is($ret, 0, 'solo chat') or diag($err);
	push @solo, $ms;
}
my ($best_solo) = sort { $a <=> $b } @solo;

my $hog_sql = q{SET ROLE hog; SET gptoss.queue_wait = '60s';
	SELECT count(*) FROM unnest(gptoss_generate_many(
		array(SELECT 'Prompt number ' || i FROM generate_series(1, 200) i),
		'{"raw": true, "temperature": 0, "max_tokens": 300, "ignore_eos": true}'))};
my @hogs = map { start_async($node, "hog$_", $hog_sql) } 1 .. 4;
ok(defined poll_until(60, sub {
	my $s = stats($node);
	$s->{requests_active} >= 15 && $s->{requests_queued} >= 16 }),
	'the hog fills the batch and queues more');
is($node->safe_psql('postgres', q{SELECT count(*) FROM gptoss_stats WHERE requests_active > 15}), 0,
	'one role holds at most max_batch_size - 1 seats');

my (@steps, @wall);
for my $i (1 .. 3)
{
	my $queued = stats($node)->{requests_queued};
	cmp_ok($queued, '>', 0, "call $i: the hog's requests wait for seats ($queued queued)");
	my ($ret, $err, $steps, $ms) = small_call();
	is($ret, 0, "call $i under load succeeds");
	unlike($err, qr/53000/, "call $i: no 53000");
	cmp_ok($steps, '<=', 2, "call $i: admitted within 2 engine steps (waited $steps)");
	push @steps, $steps;
	push @wall, $ms;
}
diag(sprintf('small chat: best solo %d ms; under load %s ms, admitted after %s engine steps',
		$best_solo, join('/', @wall), join('/', @steps)));

# The hog was only slowed down: none of its statements failed before the cancel.
for my $h (@hogs)
{
	ok($h->{run}->pumpable, "$h->{appname} still runs");
}
$node->safe_psql('postgres', q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'hog%'});
for my $h (@hogs)
{
	ok(defined wait_async($h, 60), "$h->{appname} cancelled");
	unlike($h->{err}, qr/53000|queue is full/, "$h->{appname} never got 53000");
}
$node->stop;
done_testing();
