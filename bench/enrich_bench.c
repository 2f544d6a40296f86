/*
 * bench/enrich_bench.c: throughput of enrichments against the naive row
 * trigger, through libpq (the GPU machine has no psql).
 *
 * On a fresh database with gptoss ready, it builds N prompts of about W
 * tokens (W common single-token words, deterministic), then inserts them
 * (INSERT ... SELECT) into tables filled four ways, each measured as rows/s,
 * completion tok/s and the worker's mean batch over the run (gptoss_stats):
 *
 *   naive     BEFORE INSERT FOR EACH ROW trigger: NEW.summary := gptoss_generate(...)
 *   sync      gptoss_enrich(..., 'sync'): the INSERT returns with the rows filled
 *   async     gptoss_enrich(..., 'async'): from the INSERT until nothing is pending
 *   many      SELECT gptoss_generate_many(all prompts): the batched reference
 *
 * Then the COPY of C rows (client side, COPY FROM STDIN) into a plain table
 * and into an async-enriched one (the enrichment paused, so that the
 * generation of the rows copied before does not compete for the CPU: what is
 * measured is the cost of queueing), alternating, median of R runs.  Each
 * round starts once the enrichment worker has moved the previous round's
 * inbox into the queue, so that its work does not overlap a timed COPY.
 * Where the server runs on this machine, the backend's CPU time per COPY
 * (/proc/PID/schedstat) is reported as well: it does not move with the
 * load of other processes as the wall time does.  --copy-only 1 skips the
 * four generation runs.
 *
 *   enrich_bench --dsn DSN [--rows 1000] [--naive-rows 1000] [--words 128]
 *                [--max-tokens 128] [--copy-rows 10000] [--copy-runs 3]
 *                [--copy-only 0]
 *
 * Prints a markdown table and one JSON line per measurement.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "libpq-fe.h"

#define BENCH_PROGRAM "enrich_bench"
#include "bench_util.h"

static PGconn *conn;

/* Runs sql; returns its result (tuples or command), or exits with the error. */
static PGresult *
run(const char *fmt,...)
{
	char		sql[8192];
	va_list		ap;
	PGresult   *res;

	va_start(ap, fmt);
	vsnprintf(sql, sizeof(sql), fmt, ap);
	va_end(ap);
	res = PQexec(conn, sql);
	if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)
		die("query failed: %s  query: %s", PQerrorMessage(conn), sql);
	return res;
}

/* First value of a one-value query, as a double. */
static double
value(const char *fmt, const char *arg)
{
	PGresult   *res = run(fmt, arg);
	double		v = atof(PQgetvalue(res, 0, 0));

	PQclear(res);
	return v;
}

/* What gptoss_stats says over all workers. */
typedef struct Stats
{
	double		completion_tokens;
	double		steps;
	double		step_sequences;
} Stats;

/* Reads gptoss_stats. */
static Stats
stats(void)
{
	PGresult   *res = run("SELECT sum(completion_tokens), sum(steps), sum(mean_batch_size * steps) FROM gptoss_stats");
	Stats		s;

	s.completion_tokens = atof(PQgetvalue(res, 0, 0));
	s.steps = atof(PQgetvalue(res, 0, 1));
	s.step_sequences = atof(PQgetvalue(res, 0, 2));
	PQclear(res);
	return s;
}

/* Prints one measurement: markdown row and JSON line. */
static void
report(const char *what, int rows, double secs, Stats a, Stats b)
{
	double		tokens = b.completion_tokens - a.completion_tokens;
	double		steps = b.steps - a.steps;
	double		batch = steps > 0 ? (b.step_sequences - a.step_sequences) / steps : 0;

	printf("| %s | %d | %.2f | %.1f | %.0f | %.1f |\n", what, rows, secs, rows / secs, tokens / secs, batch);
	fprintf(stderr, "{\"run\": \"%s\", \"rows\": %d, \"wall_s\": %.3f, \"rows_s\": %.2f, \"tok_s\": %.1f, \"mean_batch\": %.2f}\n",
			what, rows, secs, rows / secs, tokens / secs, batch);
	fflush(stdout);
}

/* A fresh target table t (id, body, summary). */
static void
fresh_table(const char *t)
{
	PQclear(run("DROP TABLE IF EXISTS %s", t));
	PQclear(run("CREATE TABLE %s (id int PRIMARY KEY, body text, summary text)", t));
}

/* Copies rows of src out and returns them as COPY text. */
static char *
copy_out(const char *src, size_t *len)
{
	char		sql[256];
	PGresult   *res;
	size_t		cap = 1 << 20;
	char	   *buf = malloc(cap);
	char	   *line;
	int			n;

	snprintf(sql, sizeof(sql), "COPY (SELECT id, body FROM %s ORDER BY id) TO STDOUT", src);
	res = PQexec(conn, sql);
	if (PQresultStatus(res) != PGRES_COPY_OUT)
		die("COPY TO STDOUT: %s", PQerrorMessage(conn));
	PQclear(res);
	*len = 0;
	while ((n = PQgetCopyData(conn, &line, 0)) > 0)
	{
		if (*len + n > cap)
			buf = realloc(buf, cap = 2 * (*len + n));
		memcpy(buf + *len, line, n);
		*len += n;
		PQfreemem(line);
	}
	PQclear(PQgetResult(conn));
	return buf;
}

/* CPU seconds the server process pid has run; -1 where its /proc entry cannot be read (another machine). */
static double
backend_cpu_s(int pid)
{
	char		path[64];
	FILE	   *f;
	unsigned long long ns;
	int			ok;

	snprintf(path, sizeof(path), "/proc/%d/schedstat", pid);
	f = fopen(path, "r");
	if (f == NULL)
		return -1;
	ok = fscanf(f, "%llu", &ns) == 1;
	fclose(f);
	return ok ? ns * 1e-9 : -1;
}

/* COPY data into table t from the client; returns seconds, and the backend's CPU seconds in *cpu (-1: unknown). */
static double
copy_in(const char *t, const char *data, size_t len, double *cpu)
{
	char		sql[256];
	PGresult   *res;
	double		cpu0 = backend_cpu_s(PQbackendPID(conn));
	double		t0 = monotonic_s();
	double		secs;

	snprintf(sql, sizeof(sql), "COPY %s (id, body) FROM STDIN", t);
	res = PQexec(conn, sql);
	if (PQresultStatus(res) != PGRES_COPY_IN)
		die("COPY FROM STDIN: %s", PQerrorMessage(conn));
	PQclear(res);
	if (PQputCopyData(conn, data, (int) len) != 1 || PQputCopyEnd(conn, NULL) != 1)
		die("COPY data: %s", PQerrorMessage(conn));
	res = PQgetResult(conn);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		die("COPY: %s", PQerrorMessage(conn));
	PQclear(res);
	PQclear(PQgetResult(conn));
	secs = monotonic_s() - t0;
	*cpu = cpu0 < 0 ? -1 : backend_cpu_s(PQbackendPID(conn)) - cpu0;
	return secs;
}

/* Middle value of three or more (sorts v). */
static double
median(double *v, int n)
{
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++)
			if (v[j] < v[i])
			{
				double		x = v[i];

				v[i] = v[j];
				v[j] = x;
			}
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The four generation runs (naive, sync, async, generate_many) over the first rows of bench_src. */
static void
generation_runs(int rows, int naive_rows, const char *params)
{
	Stats		a,
				b;
	double		t0,
				secs;

	printf("| run | rows | wall s | rows/s | completion tok/s | mean batch |\n|---|---:|---:|---:|---:|---:|\n");

	/* naive row trigger */
	if (naive_rows > 0)
	{
		fresh_table("bench_naive");
		PQclear(run("CREATE OR REPLACE FUNCTION bench_naive_fill() RETURNS trigger LANGUAGE plpgsql AS"
					" $f$BEGIN NEW.summary := gptoss_generate(NEW.body, '%s'); RETURN NEW; END$f$", params));
		PQclear(run("CREATE TRIGGER fill BEFORE INSERT ON bench_naive FOR EACH ROW EXECUTE FUNCTION bench_naive_fill()"));
		a = stats();
		t0 = monotonic_s();
		PQclear(run("INSERT INTO bench_naive (id, body) SELECT id, body FROM bench_src WHERE id <= %d", naive_rows));
		secs = monotonic_s() - t0;
		b = stats();
		report("naive row trigger", naive_rows, secs, a, b);
	}

	/* sync enrichment */
	fresh_table("bench_sync");
	PQclear(run("SELECT gptoss_enrich('bench_sync', 'summary', 'body', '%s', 'sync')", params));
	a = stats();
	t0 = monotonic_s();
	PQclear(run("INSERT INTO bench_sync (id, body) SELECT id, body FROM bench_src WHERE id <= %d", rows));
	secs = monotonic_s() - t0;
	b = stats();
	report("enrichment, sync", rows, secs, a, b);

	/* async enrichment: from the INSERT until nothing is pending */
	fresh_table("bench_async");
	PQclear(run("SELECT gptoss_enrich('bench_async', 'summary', 'body', '%s', 'async')", params));
	a = stats();
	t0 = monotonic_s();
	PQclear(run("INSERT INTO bench_async (id, body) SELECT id, body FROM bench_src WHERE id <= %d", rows));
	for (;;)
	{
		PGresult   *res = run("SELECT pending FROM gptoss_enrichments WHERE table_name = 'bench_async'::regclass");
		int			pending = atoi(PQgetvalue(res, 0, 0));

		PQclear(res);
		if (pending == 0)
			break;
		{
			struct timespec ts = {0, 20 * 1000 * 1000};

			nanosleep(&ts, NULL);
		}
	}
	secs = monotonic_s() - t0;
	b = stats();
	report("enrichment, async", rows, secs, a, b);
	if (value("SELECT count(*) FROM bench_async WHERE summary IS NULL OR summary <> (SELECT summary FROM bench_sync s WHERE s.id = bench_async.id)%s", "") != 0)
		die("async and sync answers differ");

	/* the batched reference */
	a = stats();
	t0 = monotonic_s();
	PQclear(run("SELECT gptoss_generate_many(array_agg(body ORDER BY id), '%s') FROM bench_src WHERE id <= %d", params, rows));
	secs = monotonic_s() - t0;
	b = stats();
	report("gptoss_generate_many", rows, secs, a, b);
}

int
main(int argc, char **argv)
{
	const char *dsn = "";
	int			rows = 1000,
				naive_rows = 1000,
				words = 128,
				max_tokens = 128,
				copy_rows = 10000,
				copy_runs = 3,
				copy_only = 0;
	char		params[256];

	for (int i = 1; i + 1 < argc; i += 2)
	{
		if (strcmp(argv[i], "--dsn") == 0)
			dsn = argv[i + 1];
		else if (strcmp(argv[i], "--rows") == 0)
			rows = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--naive-rows") == 0)
			naive_rows = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--words") == 0)
			words = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--max-tokens") == 0)
			max_tokens = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--copy-rows") == 0)
			copy_rows = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--copy-runs") == 0)
			copy_runs = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--copy-only") == 0)
			copy_only = atoi(argv[i + 1]);
		else
			die("unknown option %s", argv[i]);
	}
	if (argc % 2 != 1 || rows < 1 || naive_rows < 0 || words < 1 || max_tokens < 1 || copy_runs < 1 || copy_runs > 15 || copy_only < 0 || copy_only > 1)
		die("usage: enrich_bench --dsn DSN [--rows N] [--naive-rows N] [--words W] [--max-tokens T] [--copy-rows C] [--copy-runs R] [--copy-only 0|1]");
	conn = PQconnectdb(dsn);
	if (PQstatus(conn) != CONNECTION_OK)
		die("cannot connect: %s", PQerrorMessage(conn));
	snprintf(params, sizeof(params), "{\"max_tokens\": %d, \"temperature\": 0, \"raw\": true, \"ignore_eos\": true}", max_tokens);

	/* prompts: deterministic words (single tokens in o200k), about `words` tokens each */
	PQclear(run("SET client_min_messages = warning"));
	PQclear(run("DROP TABLE IF EXISTS bench_src"));
	PQclear(run("CREATE TABLE bench_src AS SELECT g AS id, 'Summarize:' || (SELECT string_agg(' ' || w[1 + abs(hashint8(g::bigint * 1000 + k)) %% array_length(w, 1)], '')"
				" FROM generate_series(1, %d) k) AS body"
				" FROM generate_series(1, %d) g, (SELECT '{the,of,and,to,in,is,that,for,it,as,was,with,be,by,on,not,he,this,are,or,his,from,at,which,but,have,an,had,they,you,were,their,one,all,we,can,her,has,there,been,if,more,when,will,would,who,so,no,time,people,water,house,light,world,river,table,music,paper,market,garden,city,book,money,story,night,school,number,friend,family,system,data,model,value,small,large,quick,brown,green,simple,early,happy}'::text[] AS w) ws",
				words, rows > copy_rows ? rows : copy_rows));
	printf("prompts: ~%.0f tokens (gptoss_tokenize of the first), max_tokens %d, greedy, raw, ignore_eos\n\n",
		   value("SELECT array_length(gptoss_tokenize(body), 1) FROM bench_src WHERE id = %s", "1"), max_tokens);
	if (!copy_only)
		generation_runs(rows, naive_rows, params);

	/* COPY into a plain table and into an (async, paused) enriched one */
	if (copy_rows > 0)
	{
		size_t		len;
		char	   *data;
		double		plain[15],
					enriched[15],
					plain_cpu[15],
					enriched_cpu[15];

		PQclear(run("DROP TABLE IF EXISTS bench_copy_src"));
		PQclear(run("CREATE TABLE bench_copy_src AS SELECT * FROM bench_src WHERE id <= %d", copy_rows));
		data = copy_out("bench_copy_src", &len);
		fresh_table("bench_copy_plain");
		fresh_table("bench_copy_enriched");
		PQclear(run("SELECT gptoss_enrich_pause(gptoss_enrich('bench_copy_enriched', 'summary', 'body', '%s'))", params));
		for (int r = 0; r < copy_runs; r++)
		{
			/* the worker has moved the last round's keys into the queue */
			while (value("SELECT count(*) FROM gptoss_enrich_inbox%s", "") > 0)
			{
				struct timespec ts = {0, 20 * 1000 * 1000};

				nanosleep(&ts, NULL);
			}
			PQclear(run("TRUNCATE bench_copy_plain, bench_copy_enriched"));
			PQclear(run("DELETE FROM gptoss_enrich_queue%s", ""));
			PQclear(run("CHECKPOINT"));
			plain[r] = copy_in("bench_copy_plain", data, len, &plain_cpu[r]);
			enriched[r] = copy_in("bench_copy_enriched", data, len, &enriched_cpu[r]);
		}
		if (value("SELECT pending FROM gptoss_enrichments WHERE table_name = 'bench_copy_enriched'::regclass%s", "") != copy_rows)
			die("the enriched COPY did not queue every row");
		printf("\nCOPY of %d rows (%.1f MB), median of %d: plain %.1f ms, enriched (async) %.1f ms: ratio %.2f\n",
			   copy_rows, len / 1e6, copy_runs, median(plain, copy_runs) * 1e3, median(enriched, copy_runs) * 1e3,
			   median(enriched, copy_runs) / median(plain, copy_runs));
		fprintf(stderr, "{\"run\": \"copy\", \"rows\": %d, \"plain_ms\": %.1f, \"enriched_ms\": %.1f}\n",
				copy_rows, median(plain, copy_runs) * 1e3, median(enriched, copy_runs) * 1e3);
		if (plain_cpu[0] >= 0)
		{
			printf("backend CPU, median of %d: plain %.1f ms, enriched (async) %.1f ms: ratio %.2f\n",
				   copy_runs, median(plain_cpu, copy_runs) * 1e3, median(enriched_cpu, copy_runs) * 1e3,
				   median(enriched_cpu, copy_runs) / median(plain_cpu, copy_runs));
			fprintf(stderr, "{\"run\": \"copy_cpu\", \"rows\": %d, \"plain_ms\": %.1f, \"enriched_ms\": %.1f}\n",
					copy_rows, median(plain_cpu, copy_runs) * 1e3, median(enriched_cpu, copy_runs) * 1e3);
		}
		PQclear(run("SELECT gptoss_enrich_drop(id) FROM gptoss_enrichments WHERE table_name = 'bench_copy_enriched'::regclass%s", ""));
		free(data);
	}
	PQfinish(conn);
	return 0;
}
