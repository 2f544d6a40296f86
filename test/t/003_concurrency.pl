# Concurrency: 32 sessions generate at once (pgbench, one prompt per client)
# and every one gets its complete, correct answer: each prompt's greedy raw
# output equals its output when run alone.  The worker batches them:
# gptoss_stats.mean_batch_size is well above 1.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $clients = 32;
my $node = gptoss_node('concurrency',
	conf => { 'gptoss.max_batch_size' => $clients, max_connections => 64 });

my $params = '{"raw": true, "temperature": 0, "max_tokens": 24, "ignore_eos": true}';
$node->safe_psql('postgres', 'CREATE TABLE answers (client int, answer text)');

# Every client asks its own prompt twice; all 32 run at the same time.
$node->pgbench(
	"--no-vacuum --client=$clients --jobs=4 --transactions=2",
	0,
	[qr{processed: 64/64}],
	[qr{^$}],
	'32 concurrent sessions',
	{
		'003_generate' => qq{INSERT INTO answers SELECT :client_id, gptoss_generate('Prompt number ' || :client_id || ' says', '$params');\n}
	});

my $s = stats($node);
cmp_ok($s->{mean_batch_size}, '>', 8, "mean batch size $s->{mean_batch_size} well above 1");
# the run took well under a minute: the last minute's mean is the same batching
cmp_ok($s->{mean_batch_size_1min}, '>', 8, "mean batch size of the last minute $s->{mean_batch_size_1min} too");
cmp_ok($s->{decode_tok_s}, '>', 0, "decode rate $s->{decode_tok_s} tok/s over the decode steps");
is($s->{requests_failed}, 0, 'no request failed');
is($s->{requests_active}, 0, 'batch empty afterwards');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT client) FROM answers WHERE answer IS NOT NULL'),
	"64|$clients", 'every transaction got an answer');

# Each answer equals the same prompt run alone.
my $mismatch = 0;
for my $c (0 .. $clients - 1)
{
	my $alone = $node->safe_psql('postgres',
		"SELECT gptoss_generate('Prompt number ' || $c || ' says', '$params')");
	my $batched = $node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE answer = \$q\$$alone\$q\$), count(*) FROM answers WHERE client = $c");
	if ($batched ne '2|2')
	{
		$mismatch++;
		diag("client $c: batched answers differ from the answer alone ($batched)");
	}
}
is($mismatch, 0, 'all 64 batched answers equal the answers computed alone');

# The 32 prompts really are different requests with different answers.
cmp_ok($node->safe_psql('postgres', 'SELECT count(DISTINCT answer) FROM answers'), '>', 1,
	'prompts give different answers');

# Chat requests batch as well and agree with their single runs.
my $chat = q{SELECT gptoss_chat(jsonb_build_array(jsonb_build_object('role', 'user', 'content', 'Question ' || :client_id)), '{"temperature": 0, "max_tokens": 8, "ignore_eos": true}')->'usage'};
$node->safe_psql('postgres', 'CREATE TABLE usages (client int, usage jsonb)');
$node->pgbench(
	"--no-vacuum --client=16 --jobs=4 --transactions=1",
	0,
	[qr{processed: 16/16}],
	[qr{^$}],
	'16 concurrent chats',
	{ '003_chat' => "INSERT INTO usages $chat;\n" =~ s/SELECT/SELECT :client_id,/r });
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM usages WHERE (usage->>'completion_tokens')::int = 8 AND (usage->>'total_tokens')::int = (usage->>'prompt_tokens')::int + 8}),
	16, 'every chat completed with its usage');

$node->stop;
done_testing();
