# Configuration failures answer fast and clearly: a missing or invalid model
# (state failed with the reason; 55000 at once), the library not preloaded
# (55000), and a full request queue (53000 after gptoss.queue_wait).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use File::Path qw(make_path);
use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

# Runs $sql, expecting an error; returns (stderr, seconds).
sub fails
{
	my ($node, $sql) = @_;
	my $t0 = time;
	my ($ret, $out, $err) = $node->psql('postgres', $sql, on_error_stop => 1);
	isnt($ret, 0, "fails: $sql");
	return ($err, time - $t0);
}

# 1. A model directory that does not exist.
my $missing = PostgreSQL::Test::Utils::tempdir() . '/no_such_model';
my $node = gptoss_node('missing_model',
	conf => { 'gptoss.model_path' => "'$missing'" }, no_wait => 1);
ok(defined poll_until(60, sub {
	$node->safe_psql('postgres', "SELECT gptoss_status()->>'state'") eq 'failed' }),
	'missing model: state failed');
like($node->safe_psql('postgres', "SELECT gptoss_status()->>'error'"),
	qr/could not load model from "\Q$missing\E"/, 'missing model: status names the reason');
my ($err, $secs) = fails($node, "SELECT gptoss_generate('hi')");
like($err, qr/ERROR:  gptoss model is not available: could not load model/, 'generate: 55000 with the reason');
cmp_ok($secs, '<', 2, 'generate fails at once');
($err) = fails($node, "\\set VERBOSITY verbose\nSELECT gptoss_tokenize('hi')");
like($err, qr/ERROR:  55000:/, 'tokenize: SQLSTATE 55000');
($err) = fails($node, q{SELECT gptoss_chat('[{"role": "user", "content": "hi"}]')});
like($err, qr/gptoss model is not available/, 'chat: 55000');
# The reason names the model directory: a role outside pg_monitor gets the
# error without it (generation and the session's tokenizer alike), a
# pg_monitor member and the superuser get it whole.
$node->safe_psql('postgres', 'CREATE ROLE plain; CREATE ROLE monitor IN ROLE pg_monitor');
for my $sql ("SELECT gptoss_generate('hi')", "SELECT gptoss_tokenize('hi')",
	q{SELECT gptoss_chat('[{"role": "user", "content": "hi"}]')})
{
	($err) = fails($node, "SET ROLE plain;\n\\set VERBOSITY verbose\n$sql");
	like($err, qr/ERROR:  55000: gptoss model is not available\n/, "plain role: 55000 ($sql)");
	like($err, qr/DETAIL:  .*gptoss_status\(\), for members of pg_monitor/, "plain role: where the reason is ($sql)");
	unlike($err, qr/no_such_model|\Q$missing\E|could not load/, "plain role: no model directory ($sql)");
	($err) = fails($node, "SET ROLE monitor;\n$sql");
	like($err, qr/ERROR:  gptoss model is not available: could not load model from "\Q$missing\E"/,
		"pg_monitor member: the reason ($sql)");
}
($err) = fails($node, "SET ROLE plain;\n\\set VERBOSITY verbose\nSELECT gptoss_status()");
like($err, qr/ERROR:  42501:/, 'plain role: gptoss_status() is refused');
like($node->safe_psql('postgres', "SET ROLE monitor; SELECT gptoss_status()->>'error'"),
	qr/could not load model from "\Q$missing\E"/, 'pg_monitor member: gptoss_status() has the reason');
# An asynchronous enrichment records its rows' errors in gptoss_enrichments.last_error, which
# the table's owner reads: the enrichment worker generates as the owner, so a plain owner's
# last_error has no model directory, a pg_monitor owner's has the reason.
for my $owner ('plain', 'monitor')
{
	$node->safe_psql('postgres', qq{
		CREATE TABLE ${owner}_docs (id int PRIMARY KEY, body text, summary text);
		ALTER TABLE ${owner}_docs OWNER TO $owner;
		SET ROLE $owner;
		SELECT gptoss_enrich('${owner}_docs', 'summary', 'body', '{"max_tokens": 2}');
		RESET ROLE;
		INSERT INTO ${owner}_docs VALUES (1, 'hello');
	});
	my $sql = "SET ROLE $owner; SELECT last_error FROM gptoss_enrichments WHERE table_name = '${owner}_docs'::regclass";
	ok(defined poll_until(60, sub { $node->safe_psql('postgres', $sql) ne '' }),
		"enrichment of a $owner-owned table records an error");
	my $last = $node->safe_psql('postgres', $sql);
	like($last, qr/^55000: gptoss model is not available/, "$owner owner: last_error is 55000");
	if ($owner eq 'plain')
	{
		unlike($last, qr/no_such_model|\Q$missing\E|could not load/, 'plain owner: last_error has no model directory');
	}
	else
	{
		like($last, qr/could not load model from "\Q$missing\E"/, 'pg_monitor owner: last_error has the reason');
	}
}
like(PostgreSQL::Test::Utils::slurp_file($node->logfile),
	qr/could not load model from "\Q$missing\E"/, 'the server log has the reason');
is($node->safe_psql('postgres', 'SELECT state, pid > 0 FROM gptoss_stats'), 'failed|t',
	'failed worker stays up (no crash loop)');
my $pid = stats($node)->{pid};
sleep 3;
is(stats($node)->{pid}, $pid, 'worker was not restarted');
$node->stop;

# 2. A directory without a valid checkpoint.
my $bad = PostgreSQL::Test::Utils::tempdir() . '/bad_model';
make_path($bad);
PostgreSQL::Test::Utils::append_to_file("$bad/config.json", '{"hidden_size": "big"}');
$node = gptoss_node('bad_model', conf => { 'gptoss.model_path' => "'$bad'" }, no_wait => 1);
ok(defined poll_until(60, sub {
	$node->safe_psql('postgres', "SELECT gptoss_status()->>'state'") eq 'failed' }),
	'invalid model: state failed');
like($node->safe_psql('postgres', "SELECT gptoss_status()->>'error'"),
	qr/could not load model from/, 'invalid model: reason reported');
$node->stop;

# 3. No gptoss.model_path at all.
$node = gptoss_node('no_model_path', conf => { 'gptoss.model_path' => undef }, no_wait => 1);
ok(defined poll_until(60, sub {
	$node->safe_psql('postgres', "SELECT gptoss_status()->>'state'") eq 'failed' }),
	'no model_path: state failed');
($err) = fails($node, "SELECT gptoss_generate('hi')");
like($err, qr/gptoss\.model_path is not set/, 'no model_path: reason in the error');
$node->stop;

# 4. Not in shared_preload_libraries: a WARNING, then 55000 everywhere.
$node = gptoss_node('not_preloaded',
	conf => { shared_preload_libraries => undef }, no_extension => 1, no_wait => 1);
my ($ret, $out);
($ret, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION gptoss');
is($ret, 0, 'extension can be created');
like($err, qr/WARNING:  gptoss must be loaded via shared_preload_libraries/, 'warning at load');
for my $sql ("SELECT gptoss_generate('hi')", "SELECT gptoss_tokenize('hi')",
	"SELECT gptoss_detokenize('{1}')", q{SELECT gptoss_chat('[{"role": "user", "content": "hi"}]')},
	'SELECT gptoss_status()', 'SELECT * FROM gptoss_stats')
{
	($err) = fails($node, "\\set VERBOSITY verbose\n$sql");
	like($err, qr/ERROR:  55000: gptoss must be loaded via shared_preload_libraries/, "55000: $sql");
}
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'gptoss%'"),
	0, 'no worker without preloading');
$node->stop;

# 5. A full queue: one request slot, held by a long generation.  Its
# gptoss.max_context of 8192 is past the tiny model's 4096 positions: the
# worker uses 4096, logs it, and gptoss_status() shows both.
$node = gptoss_node('queue_full',
	conf => { 'gptoss.max_requests' => 1, 'gptoss.max_context' => 8192 });
is($node->safe_psql('postgres',
	"SELECT s->'limits'->>'max_context', s->'limits'->>'max_context_setting', current_setting('gptoss.max_context') FROM gptoss_status() s"),
	'4096|8192|8192', 'gptoss_status(): effective max_context next to the setting');
like(slurp_file($node->logfile),
	qr/LOG:  gptoss worker 0: effective max_context is 4096 tokens, not gptoss.max_context = 8192/,
	'the effective max_context is logged at load');
my $long = start_async($node, 'holder',
	q{SELECT gptoss_generate('Tell me a long story', '{"raw": true, "max_tokens": 100000, "ignore_eos": true}')});
ok(defined poll_until(30, sub { stats($node)->{requests_active} == 1 }), 'the only slot is busy');
# gptoss_tokenize takes no slot: it runs in the session.
is($node->safe_psql('postgres', "SET gptoss.queue_wait = 300; SELECT gptoss_tokenize('hi')"), '{3686}',
	'tokenize runs in the session, without a slot');
my $one = q{SELECT gptoss_generate('hi', '{"raw": true, "max_tokens": 1, "ignore_eos": true}') IS NOT NULL};
($err, $secs) = fails($node, "SET gptoss.queue_wait = 300; \\set VERBOSITY verbose\n$one");
like($err, qr/ERROR:  53000: gptoss request queue is full/, 'queue full: 53000');
cmp_ok($secs, '>=', 0.3, sprintf('waited gptoss.queue_wait first (%.2f s)', $secs));
cmp_ok($secs, '<', 3, 'then gave up');
# A waiting request gets the slot as soon as it frees.
my $waiter = start_async($node, 'waiter', "SET gptoss.queue_wait = '30s'; $one");
sleep 1;
$node->safe_psql('postgres', "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'holder'");
ok(defined wait_async($waiter, 10), 'waiter finished');
is($waiter->{out}, 't', 'waiter served once the slot was free');
wait_async($long, 10);
# The refused request never reached the worker: counted nowhere.
check_request_totals($node, 'queue full', 1, 0, 1);
$node->stop;

done_testing();
