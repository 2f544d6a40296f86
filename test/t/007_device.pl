# gptoss.device on a machine without a usable GPU (CI): auto falls back to the
# CPU backend and says so in the log; cuda fails clearly (state failed with a
# reason naming CUDA, 55000 at once) instead of crashing or hanging.  On a
# machine with a GPU, auto picks CUDA and the fallback checks are skipped.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;

# 1. auto
my $node = gptoss_node('device_auto', conf => { 'gptoss.device' => 'auto' });
my $backend = $node->safe_psql('postgres', "SELECT gptoss_status()->>'backend'");
SKIP:
{
	skip 'a CUDA device is present: auto chose cuda', 2 if $backend eq 'cuda';
	is($backend, 'cpu', 'auto without a GPU: cpu backend');
	like(slurp_file($node->logfile), qr/no usable CUDA device, using the CPU backend/,
		'auto without a GPU: the fallback is logged');
}
is($node->safe_psql('postgres',
	q{SELECT length(gptoss_generate('hi', '{"raw": true, "temperature": 0, "max_tokens": 3}')) > 0}),
	't', 'auto: generation works');
$node->stop;

# 2. cuda, explicitly
$node = gptoss_node('device_cuda', conf => { 'gptoss.device' => 'cuda' }, no_wait => 1);
ok(defined poll_until(60, sub {
	$node->safe_psql('postgres', "SELECT gptoss_status()->>'state'") =~ /^(ready|failed)$/ }),
	'cuda: worker settles');
my $state = $node->safe_psql('postgres', "SELECT gptoss_status()->>'state'");
SKIP:
{
	skip 'a CUDA device is present: cuda loaded', 5 if $state eq 'ready';
	is($state, 'failed', 'cuda without a GPU: state failed');
	like($node->safe_psql('postgres', "SELECT gptoss_status()->>'error'"),
		qr/^no usable CUDA device found \(.+\)$/,
		'cuda without a GPU: the error says no device was found, with the CUDA reason');
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT gptoss_generate('hi')");
	like($err, qr/ERROR:  55000:/, 'cuda without a GPU: generate raises 55000');
	like($err, qr/HINT:  .*gptoss\.device/, 'cuda without a GPU: the hint is about gptoss.device');
	unlike($err, qr/gptoss\.model_path/, 'cuda without a GPU: no hint about gptoss.model_path');
}
$node->stop;

done_testing();
