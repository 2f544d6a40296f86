# Waiting for a request slot (issue 10, item 4): the wait watches the client
# socket, so a session whose client went away stops waiting at once instead
# of after gptoss.queue_wait; and gptoss.max_queue_wait (superuser) bounds
# the gptoss.queue_wait any user sets.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = gptoss_node('slot_wait',
	conf => { 'gptoss.max_requests' => 1, 'gptoss.max_context' => 4096 });
my $one = q{SELECT gptoss_generate('hi', '{"raw": true, "max_tokens": 1, "ignore_eos": true}') IS NOT NULL};

# One long generation holds the only request slot.
my $holder = start_async($node, 'holder',
	q{SELECT gptoss_generate('Tell me a long story', '{"raw": true, "max_tokens": 100000, "ignore_eos": true}')});
ok(defined poll_until(30, sub { stats($node)->{requests_active} == 1 }), 'the only slot is busy');

# A waiter whose client goes away while it waits for the slot.
my $waiter = start_async($node, 'waiter', "SET gptoss.queue_wait = '60s'; $one");
my $pid = backend_pid($node, 'waiter');
ok(defined poll_until(30, sub {
	$node->safe_psql('postgres', "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $pid") eq 'Extension' }),
	'waiter waits for a slot');
my $t0 = time;
$waiter->{run}->kill_kill;
my $gone = poll_until(30, sub {
	$node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid") == 0 });
ok(defined $gone, 'the waiting session ended when its client went away');
diag(sprintf('session ended %.2f s after its client', time - $t0));
cmp_ok(time - $t0, '<', 10, 'long before gptoss.queue_wait (60 s)');

# gptoss.max_queue_wait caps what a user asks for.
$node->safe_psql('postgres', q{CREATE ROLE alice LOGIN; ALTER SYSTEM SET gptoss.max_queue_wait = '1s'; SELECT pg_reload_conf()});
my ($ret, $out, $err) = $node->psql('postgres', 'SET gptoss.max_queue_wait = 0', extra_params => [ '-U', 'alice' ]);
like($err, qr/permission denied to set parameter "gptoss.max_queue_wait"/, 'only a superuser sets gptoss.max_queue_wait');
$t0 = time;
($ret, $out, $err) = $node->psql('postgres', "SET gptoss.queue_wait = '1h'; \\set VERBOSITY verbose\n$one",
	extra_params => [ '-U', 'alice' ], on_error_stop => 1);
my $waited = time - $t0;
like($err, qr/ERROR:  53000: gptoss request queue is full/, 'queue full after the capped wait');
cmp_ok($waited, '>=', 0.9, sprintf('waited gptoss.max_queue_wait (%.2f s)', $waited));
cmp_ok($waited, '<', 10, 'not gptoss.queue_wait');

$node->safe_psql('postgres', "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'holder'");
wait_async($holder, 30);

# A long tokenization in a session is cancellable (the engine polls for
# interrupts; nothing is left allocated: the session goes on).
my $tok = start_async($node, 'tokenize',
	q{SELECT cardinality(gptoss_tokenize(repeat('lorem ipsum ', 200 * 1024 * 1024 / 12)))});
my $tok_pid = backend_pid($node, 'tokenize');
usleep(1_500_000);
$t0 = time;
$node->safe_psql('postgres', "SELECT pg_cancel_backend($tok_pid)");
ok(defined wait_async($tok, 30), 'cancelled tokenize ended');
like($tok->{err}, qr/canceling statement due to user request/, 'tokenize cancelled: 57014');
diag(sprintf('tokenize ended %.2f s after the cancel', time - $t0));
cmp_ok(time - $t0, '<', 5, 'the cancel took effect while tokenizing');
$node->stop;
done_testing();
