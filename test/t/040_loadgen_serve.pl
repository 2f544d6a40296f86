# The load generator's serving mode (test/loadgen, --serve N): N requests
# dealt to S sessions, each session's share in one statement through the
# GptossBatch node, greedy, raw, ignore_eos.  Checks the JSON line's keys and
# arithmetic, that the worker generated exactly the drawn tokens from prompts
# of exactly the drawn lengths, that a log-normal run submits the lengths of
# `gptoss bench --requests` (the same draw, src/cli/serve_lengths.c), and
# that a run which cannot go as drawn (context too short, statement not
# batched) fails instead of measuring something else.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

my $root = "$FindBin::RealBin/../..";
my $cli = $ENV{GPTOSS_CLI} // "$root/bin/gptoss";
BAIL_OUT("CLI not found at $cli (build it with make, or set GPTOSS_CLI)") unless -x $cli;
my $loadgen = "$PostgreSQL::Test::Utils::tmp_check/gptoss_loadgen";
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'bash', "$root/test/loadgen/build.sh", $loadgen ], '>', \$out, '2>', \$err)
	  or BAIL_OUT("building the load generator failed: $err");
}

my $node = gptoss_node('serve', conf => { 'gptoss.max_context' => 2048 });
my $dsn = $node->connstr('postgres');

# Runs the load generator against the node; returns (exit status, stdout, stderr).
sub loadgen
{
	my ($env, @args) = @_;
	my ($out, $err) = ('', '');
	local %ENV = (%ENV, %$env);
	IPC::Run::run([ $loadgen, '--dsn', $dsn, @args ], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

my @keys = sort qw(mode label sessions requests lengths input_len output_len length_seed
  drawn_input_tokens drawn_output_tokens longest tokenized_prompt_tokens prompt_tokens
  completion_tokens wall_s tok_s total_tok_s req_s statement_ms_min statement_ms_max
  ttft_ms_mean mean_batch_size mean_batch_size_scope active_mean max_batch_size
  max_requests max_context params);

# Fixed lengths: 40 requests of 32 prompt tokens generating 16 each, over 4 sessions.
my ($rc, $out, $err) = loadgen({}, qw(--serve 40 --sessions 4 --input-len 32 --output-len 16
	  --label fixed));
is($rc, 0, 'fixed: the serving run succeeds') or diag($err);
my $j = decode_json($out);
is(join(',', sort keys %$j), join(',', @keys), 'fixed: the JSON line has the serving keys');
is($j->{mode}, 'serve', 'fixed: mode');
is($j->{sessions}, 4, 'fixed: 4 sessions');
is($j->{requests}, 40, 'fixed: 40 requests');
is($j->{drawn_input_tokens}, 40 * 32, 'fixed: drawn prompt tokens');
is($j->{drawn_output_tokens}, 40 * 16, 'fixed: drawn output tokens');
is($j->{tokenized_prompt_tokens}, 40 * 32, 'fixed: the prompts tokenize to their drawn lengths');
is($j->{prompt_tokens}, 40 * 32, 'fixed: the worker counts the drawn prompt tokens');
is($j->{completion_tokens}, 40 * 16, 'fixed: completion tokens = requests x output length (ignore_eos)');
ok($j->{wall_s} > 0 && abs($j->{tok_s} - 640 / $j->{wall_s}) <= 0.01 * $j->{tok_s} + 0.01,
	'fixed: tok_s is completion tokens over wall time');
ok(abs($j->{total_tok_s} - 1920 / $j->{wall_s}) <= 0.01 * $j->{total_tok_s} + 0.01,
	'fixed: total_tok_s is prompt + completion tokens over wall time');
ok($j->{statement_ms_min} <= $j->{statement_ms_max}
	  && $j->{statement_ms_max} <= 1000 * $j->{wall_s} + 1,
	'fixed: statement times within the wall time');
is($j->{ttft_ms_mean}, undef, 'fixed: no TTFT through plain SQL');
is($j->{mean_batch_size_scope}, 'run', 'fixed: the mean batch is the run\'s own');
# all 40 are in flight at once: the steps batch many of them
ok($j->{mean_batch_size} > 4 && $j->{mean_batch_size} <= 40,
	"fixed: mean batch $j->{mean_batch_size} shows the requests batched");
unlike($err, qr/warning/, 'fixed: no warning');

# Log-normal lengths: the draw of `gptoss bench --requests` with the same counts, means and seed.
my ($cli_out, $cli_err) = ('', '');
IPC::Run::run(
	[
		$cli, 'bench', '--model', model_dir(), '--device', 'cpu', '--threads', '1',
		'--requests', '40', '--lengths', 'lognormal', '--input-len', '100', '--output-len', '50'
	],
	'>', \$cli_out, '2>', \$cli_err) or die "gptoss bench failed: $cli_err";
my $engine = decode_json($cli_out);
($rc, $out, $err) = loadgen({}, qw(--serve 40 --sessions 4 --lengths lognormal --input-len 100
	  --output-len 50 --label lognormal));
is($rc, 0, 'lognormal: the serving run succeeds') or diag($err);
$j = decode_json($out);
is($j->{lengths}, 'lognormal', 'lognormal: lengths');
is($j->{length_seed}, 42, 'lognormal: the CLI\'s default seed');
is($j->{drawn_input_tokens}, $engine->{input_tokens},
	"lognormal: drawn prompt tokens equal gptoss bench's ($engine->{input_tokens})");
is($j->{drawn_output_tokens}, $engine->{output_tokens},
	"lognormal: drawn output tokens equal gptoss bench's ($engine->{output_tokens})");
is($j->{prompt_tokens}, $j->{drawn_input_tokens}, 'lognormal: the worker counts the drawn prompt tokens');
is($j->{completion_tokens}, $j->{drawn_output_tokens},
	'lognormal: the worker generates the drawn output tokens');
ok($j->{longest} <= 2048 && $j->{longest} > 100, "lognormal: longest request $j->{longest}");
note("CPU, tiny model: SQL $j->{total_tok_s} total tok/s, $j->{tok_s} completion tok/s, mean batch "
	  . "$j->{mean_batch_size}; engine $engine->{total_tok_s} / $engine->{output_tok_s}, mean batch "
	  . "$engine->{mean_batch}");

# Fewer requests than sessions: one session per request.
($rc, $out, $err) = loadgen({}, qw(--serve 3 --sessions 8 --input-len 8 --output-len 4));
is($rc, 0, 'few requests: the run succeeds') or diag($err);
$j = decode_json($out);
is($j->{sessions}, 3, 'few requests: 3 sessions for 3 requests');
is($j->{completion_tokens}, 12, 'few requests: 12 completion tokens');

# A request longer than the worker's context fails before anything runs.
($rc, $out, $err) = loadgen({}, qw(--serve 2 --input-len 3000 --output-len 10));
is($rc, 1, 'too long: exit status 1');
like($err, qr/needs 3010 tokens of context, the worker has 2048/, 'too long: names both lengths');

# A statement that would run row by row (the node turned off) is refused.
($rc, $out, $err) = loadgen({ PGOPTIONS => '-c gptoss.batch_window=0' }, qw(--serve 4 --sessions 2
	  --input-len 8 --output-len 4));
is($rc, 1, 'no batch node: exit status 1');
like($err, qr/does not use the GptossBatch node/, 'no batch node: says why');

# Session-mode options do not mix with the serving mode.
($rc, $out, $err) = loadgen({}, qw(--serve 4 --max-tokens 8));
is($rc, 1, 'mixed modes: exit status 1');
like($err, qr/--max-tokens does not go with --serve/, 'mixed modes: names the option');

$node->stop;
done_testing();
