# The extension and the CLI (bin/gptoss) drive the same engine: greedy
# generation, token counts and tokenization must agree exactly between SQL
# and the command line.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use Encode qw(encode);
use GptossTest;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

my $cli = $ENV{GPTOSS_CLI} // "$FindBin::RealBin/../../bin/gptoss";
BAIL_OUT("CLI not found at $cli (build it with make, or set GPTOSS_CLI)") unless -x $cli;
my $model = model_dir();
my $node = gptoss_node('cli');

# Runs the CLI; returns its stdout (dies on failure).
sub cli
{
	my ($stdin, @args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, @args ], '<', \$stdin, '>', \$out, '2>', \$err)
	  or die "gptoss @args failed: $err";
	return $out;
}

# UTF-8 bytes of a SQL text expression, as hex (exact, whatever the server encoding).
sub sql_hex
{
	my ($expr) = @_;
	return $node->safe_psql('postgres', "SELECT encode(convert_to($expr, 'UTF8'), 'hex')");
}

# Prompts are UTF-8 byte strings (no "use utf8"), passed to psql and the CLI as they are.
my @prompts = ('Hello world', 'The quick brown fox', 'Once upon a time',
	'SELECT * FROM', "naïve café, 日本語", "line one\nline two", '<|start|>user<|message|>');

for my $p (@prompts)
{
	my $lit = $node->safe_psql('postgres', 'SELECT quote_literal($q$' . $p . '$q$)');

	# Raw greedy continuation.
	my $r = decode_json(cli('', 'generate', '--model', $model, '--device', 'cpu', '--prompt', $p,
		'--raw', '--temperature', '0', '--max-tokens', '16', '--ignore-eos', '--json'));
	is(sql_hex("gptoss_generate($lit, '{\"raw\": true, \"temperature\": 0, \"max_tokens\": 16, \"ignore_eos\": true}')"),
		unpack('H*', encode('UTF-8', $r->{text})), "raw greedy text agrees: $p");

	# Chat mode: same rendering (prompt tokens), same length handling.
	my $c = decode_json(cli('', 'generate', '--model', $model, '--device', 'cpu', '--prompt', $p,
		'--temperature', '0', '--max-tokens', '8', '--json'));
	my $usage = $node->safe_psql('postgres',
		"SELECT c#>>'{usage,prompt_tokens}', c#>>'{usage,completion_tokens}', c#>>'{choices,0,finish_reason}' "
		  . "FROM gptoss_chat(jsonb_build_array(jsonb_build_object('role', 'user', 'content', $lit)), '{\"temperature\": 0, \"max_tokens\": 8}') c");
	is($usage, join('|', $c->{usage}{prompt_tokens}, $c->{usage}{completion_tokens}, $c->{finish_reason}),
		"chat usage and finish reason agree: $p");
	is(sql_hex("gptoss_generate($lit, '{\"temperature\": 0, \"max_tokens\": 8}')"),
		unpack('H*', encode('UTF-8', $c->{text})), "chat answer agrees: $p");

	# Tokenizer.
	my $ids = decode_json(cli($p, 'tokenize', '--model', $model));
	is($node->safe_psql('postgres', "SELECT array_to_json(gptoss_tokenize($lit))"),
		'[' . join(',', @$ids) . ']', "tokenize agrees: $p");
}

$node->stop;
done_testing();
