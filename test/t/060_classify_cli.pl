# Label scores through SQL agree with the CLI's logits on the same tokens:
# for raw classification each label's score is the sum of the
# log-probabilities of its tokens and <|return|> after the input, which
# `gptoss logits` gives as logit - logsumexp at each position.  The
# probabilities of gptoss_classify_scores must be the softmax of those sums,
# and gptoss_classify must pick their argmax (the first label on ties).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use IPC::Run;
use JSON::PP;
use List::Util qw(max sum);
use PostgreSQL::Test::Utils;
use Test::More;

my $cli = $ENV{GPTOSS_CLI} // "$FindBin::RealBin/../../bin/gptoss";
BAIL_OUT("CLI not found at $cli (build it with make, or set GPTOSS_CLI)") unless -x $cli;
my $model = model_dir();
my $node = gptoss_node('classify');
my $vocab = 201088;
my $return_id = 200002;

# Runs the CLI; returns its stdout (dies on failure).
sub cli
{
	my ($stdin, @args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, @args ], '<', \$stdin, '>', \$out, '2>', \$err)
	  or die "gptoss @args failed: $err";
	return $out;
}

# Log-probability of token $next after the ids in @$prefix, from `gptoss logits`.
sub cli_logprob
{
	my ($prefix, $next) = @_;
	my $r = decode_json(cli('', 'logits', '--model', $model, '--device', 'cpu',
		'--tokens', join(',', @$prefix), '--top', $vocab));
	for my $pair (@{ $r->{top} })
	{
		return $pair->[1] - $r->{logsumexp} if $pair->[0] == $next;
	}
	die "token $next missing from the logits";
}

my @cases = (
	[ 'The capital of France is', [ ' Paris', ' London', ' a city in Europe' ] ],
	[ 'Invoice 1234: payment overdue.', [ 'billing', 'shipping', 'billing ', 'other' ] ],
);

for my $case (@cases)
{
	my ($input, $labels) = @$case;
	my $ids = decode_json(cli($input, 'tokenize', '--model', $model));
	my @scores;

	for my $label (@$labels)
	{
		my $lids = decode_json(cli($label, 'tokenize', '--model', $model));
		my @targets = (@$lids, $return_id);
		my $score = 0;

		for my $j (0 .. $#targets)
		{
			$score += cli_logprob([ @$ids, @targets[ 0 .. $j - 1 ] ], $targets[$j]);
		}
		push @scores, $score;
	}
	my $m = max(@scores);
	my @expected = map { exp($_ - $m) } @scores;
	my $total = sum(@expected);
	@expected = map { $_ / $total } @expected;
	my $best = 0;
	for my $i (1 .. $#scores) { $best = $i if $scores[$i] > $scores[$best]; }

	my $in_lit = $node->safe_psql('postgres', 'SELECT quote_literal($q$' . $input . '$q$)');
	my $arr = 'ARRAY[' . join(',', map { "\$q\$$_\$q\$" } @$labels) . ']';
	my $got = decode_json($node->safe_psql('postgres',
		"SELECT gptoss_classify_scores($in_lit, $arr, '{\"raw\": true}')"));
	my $worst = 0;
	for my $i (0 .. $#$labels)
	{
		my $d = abs(($got->{ $labels->[$i] } // -1) - $expected[$i]);
		$worst = $d if $d > $worst;
	}
	cmp_ok($worst, '<', 1e-6, "scores of '$input' agree with the CLI's logits (max difference $worst)");
	is($node->safe_psql('postgres', "SELECT gptoss_classify($in_lit, $arr, '{\"raw\": true}')"),
		$labels->[$best], "gptoss_classify picks the CLI's most probable label for '$input'");
}

$node->stop;
done_testing();
