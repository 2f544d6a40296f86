# A window larger than the request slots slows a statement down, it does not
# fail it: with 8 slots, a short gptoss.queue_wait and a window of 64, the
# batch node and gptoss_generate_many collect their own finished results
# before waiting for a slot, so neither raises 53000 nor waits on results
# that only it would read.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = gptoss_node('batch_backpressure',
	conf => { 'gptoss.max_requests' => 8, 'gptoss.max_batch_size' => 4 });

$node->safe_psql('postgres', q{
	CREATE TABLE docs AS
	SELECT i AS id, 'Document number ' || i AS body FROM generate_series(1, 40) i;
});
my $params = '{"raw": true, "temperature": 0, "max_tokens": 8, "ignore_eos": true}';
my $select = "SELECT id, gptoss_generate(body, '$params') FROM docs";
my $many = "SELECT unnest(gptoss_generate_many(array_agg(body ORDER BY id), '$params')) FROM docs";

is($node->safe_psql('postgres', 'SHOW gptoss.batch_window'), '4',
	'the boot window is min(max_batch_size x workers, max_requests / 2)');
my $expected = $node->safe_psql('postgres', "SET gptoss.batch_window = 0; $select");
my $expected_many = $node->safe_psql('postgres',
	"SET gptoss.batch_window = 0; SELECT gptoss_generate(body, '$params') FROM docs ORDER BY id");

my $settings = "SET gptoss.queue_wait = '300ms'; SET gptoss.batch_window = 64;";
like($node->safe_psql('postgres', "$settings EXPLAIN (COSTS OFF) $select"),
	qr/Batch Window: 64/, 'the node plans with a window of 64');
my ($ret, $out, $err) = $node->psql('postgres', "$settings $select");
is($ret, 0, 'window 64 over 8 request slots: the SELECT succeeds');
is($err, '', 'without an error');
is($out, $expected, 'with the rows of batch_window = 0');

($ret, $out, $err) = $node->psql('postgres', "$settings $many");
is($ret, 0, 'gptoss_generate_many with window 64 over 8 slots succeeds');
is($out, $expected_many, 'with the answers of one row at a time');

# Another session holds slots meanwhile: the statement still only waits.
my $other = start_async($node, 'slot_holder',
	"SELECT gptoss_generate(body, '{\"raw\": true, \"temperature\": 0, \"max_tokens\": 200, \"ignore_eos\": true}') FROM docs LIMIT 6");
ok(defined poll_until(30, sub { stats($node)->{requests_active} >= 1 }), 'another session generates');
($ret, $out, $err) = $node->psql('postgres', "SET gptoss.batch_window = 64; $select");
is($ret, 0, 'the batched SELECT succeeds next to it');
is($out, $expected, 'with the same rows');
ok(defined wait_async($other, 120), 'the other session finished');
is($other->{err}, '', 'without error');

$node->stop;
done_testing();
