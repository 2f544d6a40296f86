# One plain SELECT over 64 rows fills the worker's batch: the mean batch size
# of the steps it ran, from the step counters of gptoss_stats before and
# after, is at least 16 (one row at a time it is 1).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = gptoss_node('batch_mean');

$node->safe_psql('postgres', q{
	CREATE TABLE docs AS
	SELECT i AS id, 'Document number ' || i || ' is about ' || md5(i::text) AS body
	FROM generate_series(1, 64) i;
});
my $params = '{"raw": true, "temperature": 0, "max_tokens": 48, "ignore_eos": true}';

# Steps and sequence-steps (mean batch size x steps) over all workers.
sub step_counters
{
	my ($steps, $seqs) = split /\|/, $node->safe_psql('postgres',
		'SELECT sum(steps), sum(mean_batch_size * steps) FROM gptoss_stats');
	return ($steps, $seqs);
}

# Mean batch size of the steps that $sql ran (the worker is idle otherwise).
sub mean_batch
{
	my ($sql) = @_;
	my ($steps0, $seqs0) = step_counters();
	$node->safe_psql('postgres', $sql);
	my ($steps1, $seqs1) = step_counters();
	return ($steps1 - $steps0) > 0 ? ($seqs1 - $seqs0) / ($steps1 - $steps0) : 0;
}

my $select = "SELECT id, gptoss_generate(body, '$params') FROM docs";
is($node->safe_psql('postgres', 'SHOW gptoss.batch_window'), '64', 'window of 64 requests');

my $on = mean_batch($select);
cmp_ok($on, '>=', 16, sprintf('plain SELECT of 64 rows: mean batch %.1f', $on));
my $off = mean_batch("SET gptoss.batch_window = 0; $select");
cmp_ok($off, '<', 1.5, sprintf('with batch_window = 0: mean batch %.2f', $off));

$node->stop;
done_testing();
