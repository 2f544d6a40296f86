# The worker's step loop never waits on one request's CPU work (issue 10,
# item 1): while a 100 MB gptoss_generate (refused from its byte length), a
# 400 MB gptoss_tokenize (run in its own session) and a generation with the
# most and longest stop strings run, a concurrent greedy stream produces the
# same text as alone, and the worker's own longest loop iteration of the
# last minute (gptoss_stats.max_step_ms_1min) stays under a second.  The
# stream's wall-clock gaps are printed, not asserted (a loaded CI box).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = gptoss_node('step_loop',
	conf => { 'gptoss.max_context' => 4096, 'gptoss.threads' => 1 });

# A greedy stream; each row carries the time it was produced.
my $stream = q{SELECT extract(epoch FROM clock_timestamp()), encode(convert_to(piece, 'UTF8'), 'hex')
  FROM (SELECT gptoss_generate_stream('Once upon a time',
          '{"raw": true, "temperature": 0, "max_tokens": 300, "ignore_eos": true}') AS piece) s};

# Runs the stream; returns its text and the gaps between pieces (ms).
sub run_stream
{
	my $out = $node->safe_psql('postgres', $stream);
	my ($text, $prev, @gaps) = ('', undef);
	for my $line (split /\n/, $out)
	{
		my ($t, $hex) = split /\|/, $line, 2;
		$text .= pack('H*', $hex);
		push @gaps, ($t - $prev) * 1000 if defined $prev;
		$prev = $t;
	}
	return ($text, \@gaps);
}

# Largest, median and 99th percentile of a list.
sub gap_summary
{
	my @s = sort { $a <=> $b } @{ $_[0] };
	return 'no gaps' unless @s;
	return sprintf('%d pieces, median %.1f ms, p99 %.1f ms, max %.1f ms',
		scalar @s + 1, $s[ int(@s / 2) ], $s[ int(@s * 0.99) ], $s[-1]);
}

my ($alone, $alone_gaps) = run_stream();
cmp_ok(length $alone, '>', 100, 'the stream alone produces text');
diag('stream alone: ' . gap_summary($alone_gaps));

# The loads, each in its own session.
my $t0 = time;
my $huge_prompt = start_async($node, 'huge_prompt',
	q{SELECT gptoss_generate(repeat('lorem ipsum ', 100 * 1024 * 1024 / 12))});
my $huge_tokenize = start_async($node, 'huge_tokenize',
	q{SELECT cardinality(gptoss_tokenize(repeat('lorem ipsum ', 400 * 1024 * 1024 / 12)))});
# 64 distinct stop strings of 256 bytes: the caps.
my $max_stops = start_async($node, 'max_stops',
	q{SELECT length(gptoss_generate('Tell me a long story', jsonb_build_object('raw', true,
	    'max_tokens', 2000, 'ignore_eos', true,
	    'stop', (SELECT jsonb_agg(lpad(i::text, 256, chr(65 + i % 26))) FROM generate_series(1, 64) i))))});

# Start the stream once the tokenizer is busy in its session.
ok(defined poll_until(60, sub {
	$node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'huge_tokenize' AND state = 'active'") == 1 }),
	'the 400 MB tokenize runs');
my ($loaded, $loaded_gaps) = run_stream();
is($loaded, $alone, 'the stream under load is identical to the stream alone');
diag('stream under load: ' . gap_summary($loaded_gaps));

ok(defined wait_async($huge_prompt, 300), '100 MB prompt finished');
like($huge_prompt->{err}, qr/ERROR:  prompt of \d+ bytes cannot fit the context of \d+ tokens/,
	'100 MB prompt refused from its byte length');
ok(defined wait_async($max_stops, 600), 'generation with 64 stop strings of 256 bytes finished');
like($max_stops->{out}, qr/^\d+$/, 'it produced an answer');
ok(defined wait_async($huge_tokenize, 900), '400 MB tokenize finished');
cmp_ok($huge_tokenize->{out}, '>', 50_000_000, "400 MB tokenized in its session ($huge_tokenize->{out} tokens)");
diag(sprintf('loads took %.1f s', time - $t0));

my $max_step = $node->safe_psql('postgres', 'SELECT max_step_ms_1min FROM gptoss_stats WHERE worker = 0');
diag("worker's longest loop iteration of the last minute: $max_step ms");
cmp_ok($max_step, '>', 0, 'the worker measured its steps');
# What this guards against costs seconds on the worker's thread (the 400 MB
# tokenize alone is ~10 s, the 100 MB prompt's tokens ~2.5 s); alone the
# longest iteration is ~4 ms (its first engine step's page faults), but once,
# under the whole suite on the 2-core box, one took 233 ms of CPU time.  The
# worker's phases never came near that in 14 instrumented runs under load;
# on this VM guest a thread's CPU clock was seen charged 18 ms for 2 ms of
# work (host stalls are billed to the running thread), so the bound is 1 s.
cmp_ok($max_step, '<', 1000, 'no worker step took a second or more');

$node->stop;
done_testing();
