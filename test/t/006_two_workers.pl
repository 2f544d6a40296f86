# Several workers: gptoss.devices = '0,1' registers one worker per device.
# Without a GPU, device auto falls back to the CPU, so two CPU workers serve
# the same model; requests spread over both, answers stay exact, and the
# status and stats describe each worker.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = gptoss_node('two_workers',
	conf => { 'gptoss.device' => 'auto', 'gptoss.devices' => "'0,1'", 'gptoss.threads' => 1 },
	no_wait => 1);
ok(defined poll_until(60, sub {
	$node->safe_psql('postgres', "SELECT count(*) FROM gptoss_stats WHERE state = 'ready'") == 2 }),
	'both workers ready');
if ($node->safe_psql('postgres', "SELECT gptoss_status()->>'backend'") ne 'cpu')
{
	$node->stop;
	plan skip_all => 'runs only where device auto falls back to the CPU';
}

is($node->safe_psql('postgres', 'SELECT worker, device FROM gptoss_stats ORDER BY worker'),
	"0|cpu:0\n1|cpu:1", 'one stats row per worker');
is($node->safe_psql('postgres',
		"SELECT jsonb_array_length(s->'workers'), s#>>'{workers,1,state}', s#>>'{workers,1,device,index}' FROM gptoss_status() s"),
	'2|ready|1', 'status lists both workers');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'gptoss worker'"),
	2, 'two worker processes');

my $params = '{"raw": true, "temperature": 0, "max_tokens": 16, "ignore_eos": true}';
my %alone;
$alone{$_} = $node->safe_psql('postgres', "SELECT gptoss_generate('Prompt $_', '$params')") for 1 .. 8;

my @runs = map { start_async($node, "client_$_", "SELECT gptoss_generate('Prompt $_', '$params')") } 1 .. 8;
for my $i (1 .. 8)
{
	ok(defined wait_async($runs[ $i - 1 ], 60), "client $i finished");
	is($runs[ $i - 1 ]->{out}, $alone{$i}, "client $i: same answer as alone");
}
is($node->safe_psql('postgres', 'SELECT count(*) FROM gptoss_stats WHERE requests_total > 0'), 2,
	'both workers served requests');

# Terminating one worker leaves the other serving.
my $pid1 = $node->safe_psql('postgres', 'SELECT pid FROM gptoss_stats WHERE worker = 1');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid1)");
ok(defined poll_until(10, sub {
	$node->safe_psql('postgres', 'SELECT pid IS DISTINCT FROM ' . $pid1 . ' FROM gptoss_stats WHERE worker = 1') eq 't' }),
	'worker 1 went away');
is($node->safe_psql('postgres', "SELECT gptoss_generate('Prompt 1', '$params')"), $alone{1},
	'worker 0 still serves');
ok(defined poll_until(60, sub {
	$node->safe_psql('postgres', "SELECT count(*) FROM gptoss_stats WHERE state = 'ready'") == 2 }),
	'worker 1 back');

$node->stop;
done_testing();
