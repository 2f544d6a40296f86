# Enrichment across restarts: an immediate server restart (pg_ctl restart -m
# immediate, a crash for PostgreSQL) in the middle of an async backfill loses
# nothing and duplicates nothing: the launcher starts the database's worker
# again by itself and the queue resumes where it stopped.  Without a free
# background worker slot the launcher logs a WARNING and retries.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use GptossTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $params = '{"raw": true, "temperature": 0, "max_tokens": 24, "ignore_eos": true}';
my $rows = 300;
my $node = gptoss_node('enrich_restart', conf => { 'gptoss.max_batch_size' => 16 });

$node->safe_psql('postgres', qq{
	CREATE TABLE docs (id int PRIMARY KEY, body text, summary text);
	INSERT INTO docs SELECT g, 'Backfilled document ' || g, NULL FROM generate_series(1, $rows) g;
	INSERT INTO docs VALUES (0, 'already filled', 'kept');
	SELECT gptoss_enrich('docs', 'summary', \$\$'Summarize: ' || body\$\$, '$params');
});
is($node->safe_psql('postgres', 'SELECT pending FROM gptoss_enrichments'), $rows,
	'the backfill queues the rows with a NULL target');

sub view { return $node->safe_psql('postgres', "SELECT $_[0] FROM gptoss_enrichments"); }

# Restart while about a third is done.
ok(defined poll_until(120, sub { view('done') >= $rows / 3 }), 'backfill under way');
my $done_before = view('done');
cmp_ok($done_before, '<', $rows, "restart with $done_before of $rows done");
my $old_worker = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'gptoss enrich worker'});
PostgreSQL::Test::Utils::system_or_bail('pg_ctl', '-w', '-D', $node->data_dir, '-l', $node->logfile,
	'-m', 'immediate', 'restart');
$node->_update_pid(1);
wait_ready($node);

ok(defined poll_until(120, sub {
	$node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'gptoss enrich worker'}) eq '1' }),
	'the launcher starts the worker again after the restart');
isnt($node->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'gptoss enrich worker'}),
	$old_worker, 'a new worker process');
ok(defined poll_until(180, sub { view('pending') eq '0' }), 'the backfill completes');
is(view('done'), $rows, 'done counts each row once: nothing lost, nothing duplicated');
is($node->safe_psql('postgres', 'SELECT count(*), count(summary) FROM docs'), ($rows + 1) . '|' . ($rows + 1),
	'every row filled, no row added');
is($node->safe_psql('postgres', 'SELECT summary FROM docs WHERE id = 0'), 'kept', 'a filled row was left alone');
# (gptoss_generate_many gives what gptoss_generate gives, see 07_generate_many; it is faster here)
is($node->safe_psql('postgres', qq{
	SELECT count(*) FROM (SELECT array_agg(id ORDER BY id) AS ids, array_agg('Summarize: ' || body ORDER BY id) AS prompts
	                        FROM docs WHERE id > 0) s,
	       unnest(s.ids, gptoss_generate_many(s.prompts, '$params')) AS a(id, answer)
	  JOIN docs d ON d.id = a.id
	 WHERE d.summary IS DISTINCT FROM a.answer}),
	0, 'every value equals the generation of its prompt');
is($node->safe_psql('postgres', 'SELECT count(*) FROM gptoss_enrich_queue'), 0, 'queue empty');
$node->stop;

# No background worker slot (the model worker, the launcher and the logical replication
# launcher take all three): the launcher warns and retries; with slots back the rows are filled.
my $tight = gptoss_node('enrich_no_slot', conf => { max_worker_processes => 3 });
$tight->safe_psql('postgres', qq{
	CREATE TABLE docs (id int PRIMARY KEY, body text, summary text);
	SELECT gptoss_enrich('docs', 'summary', 'body', '$params');
	INSERT INTO docs SELECT g, 'row ' || g FROM generate_series(1, 5) g});
ok(defined poll_until(30, sub { $tight->log_contains('WARNING:  gptoss enrich launcher: no background worker slot free') }),
	'the launcher warns when max_worker_processes is exhausted');
is($tight->safe_psql('postgres', 'SELECT pending FROM gptoss_enrichments'), 5, 'the rows wait in the queue');
$tight->append_conf('postgresql.conf', 'max_worker_processes = 8');
$tight->restart;
wait_ready($tight);
ok(defined poll_until(60, sub { $tight->safe_psql('postgres', 'SELECT pending FROM gptoss_enrichments') eq '0' }),
	'with slots free the rows are filled');
is($tight->safe_psql('postgres', 'SELECT count(summary) FROM docs'), 5, 'all five');
$tight->stop;

done_testing();
