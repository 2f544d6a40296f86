/*
 * bench/soak.c: soak and chaos driver for gptoss (bench/soak.sh runs it).
 *
 * N libpq clients, driven from one thread with poll(), each sending one
 * call after another, of a random kind: gptoss_generate, gptoss_generate_many
 * (4 prompts), gptoss_chat, gptoss_generate_stream in the select list,
 * gptoss_tokenize, gptoss_generate_json, gptoss_classify, and a plain SELECT
 * over an 8-row table that the GptossBatch node runs.  Every call is greedy
 * (temperature 0) on one of 16 prompts, so its answer is known in advance: a
 * warm-up runs each (kind, prompt) alone first and records the answer and
 * the number of worker requests it takes (the gptoss_stats requests_total
 * delta).  A share of calls gets a PQcancel at a random time.  Every
 * KILL_EVERY seconds the worker gets SIGTERM, and once (at SIGKILL_AT) SIGKILL,
 * which makes the postmaster reset shared memory and drop every session: the
 * clients reconnect.  Every SAMPLE seconds the RSS of the postmaster and of
 * the worker (/proc/PID/status VmRSS, the worker's pid from gptoss_stats) go
 * to the CSV time series.
 *
 * Intervals: the run is cut at each kill.  At a cut the clients stop sending,
 * every call in flight ends, the worker goes idle (no active or queued
 * request, counters stable) and gptoss_stats is read; then the clients go on
 * and the kill follows 1 to 3 s later, under load.  So every call starts and
 * ends inside one interval, and each interval but the first begins with one
 * kill.  Per interval:
 *
 *   lost        a call that neither returned nor raised an error by the end
 *               of its interval (the drain waits up to --drain-timeout).
 *   wrong       a call that returned an answer other than the one its
 *               (kind, prompt) gives alone: another call's answer, a row or
 *               stream piece twice, a missing row.
 *   duplicated  the worker accepted more requests than the clients sent:
 *               delta requests_total > sum of the requests of every call sent
 *               (each call counted with its warm-up number of requests).
 *   dropped     the worker finished fewer requests than clients received:
 *               delta (requests_total - failed - cancelled) < requests of
 *               the calls that returned.
 *
 * The interval that begins with the SIGKILL is reconciled at the clients only
 * (shared memory, and with it gptoss_stats, starts over).  Exit status: 0
 * when no call was lost, wrong, duplicated or dropped and no unexpected error
 * happened; 3 otherwise; 1 on a setup error.
 *
 *   gptoss_soak --dsn DSN --postmaster-pid PID [--clients 128] [--duration 1800]
 *               [--kill-every 300] [--sigkill-at 1050] [--sample 2] [--cancel-pct 10]
 *               [--seed 1] [--drain-timeout 120] --csv FILE --intervals FILE --json FILE
 *
 * Prints the per-interval table (markdown) on stdout.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#define N_PROMPTS		16
#define MANY_PROMPTS	4
#define MAX_INTERVALS	64
#define STATS_SQL \
	"SELECT coalesce(sum(requests_total), 0)::bigint, coalesce(sum(requests_failed), 0)::bigint, " \
	"coalesce(sum(requests_cancelled), 0)::bigint, coalesce(sum(requests_active), 0)::bigint, " \
	"coalesce(sum(requests_queued), 0)::bigint, coalesce(max(pid), 0), " \
	"coalesce(bool_and(state = 'ready'), false) FROM gptoss_stats"
#define BATCH_SQL \
	"SELECT id, gptoss_generate(body, '{\"raw\": true, \"max_tokens\": 12, \"temperature\": 0}') FROM soak_docs"
#define JSON_SCHEMA \
	"{\"type\": \"object\", \"properties\": {\"colour\": {\"enum\": [\"red\", \"green\", \"blue\"]}}, " \
	"\"required\": [\"colour\"], \"additionalProperties\": false}"

typedef enum
{
	K_GENERATE, K_MANY, K_CHAT, K_STREAM, K_TOKENIZE, K_JSON, K_CLASSIFY, K_BATCH, N_KINDS
} Kind;

static const char *const kind_names[N_KINDS] = {
	"generate", "generate_many", "chat", "stream", "tokenize", "generate_json", "classify", "batch"
};
static const int kind_weight[N_KINDS] = {20, 10, 15, 15, 10, 10, 10, 10};

/* How a call ended. */
typedef enum
{
	O_OK,			/* returned its expected answer */
	O_WRONG,		/* returned something else */
	O_CANCELLED,	/* 57014 after our PQcancel */
	O_SPURIOUS,		/* 57014 without a PQcancel of ours */
	O_EXITED,		/* 55000: the worker exited while running it */
	O_NOT_READY,	/* 55000: the worker was not ready within gptoss.queue_wait */
	O_FULL,			/* 53000: no request slot */
	O_CONN_LOST,	/* the session was dropped (SIGKILL's reset) */
	O_OTHER,		/* any other error */
	O_LOST,			/* no answer by the end of the interval */
	N_OUTCOMES
} Outcome;

static const char *const outcome_names[N_OUTCOMES] = {
	"ok", "wrong", "cancelled", "spurious_cancel", "worker_exited", "not_ready", "queue_full",
	"conn_lost", "other_error", "lost"
};

typedef struct
{
	const char *dsn;
	int			postmaster_pid;
	int			clients;
	double		duration;
	double		kill_every;
	double		sigkill_at;
	double		sample;
	int			cancel_pct;
	unsigned	seed;
	double		drain_timeout;
	const char *csv;
	const char *intervals;
	const char *json;
} Options;

/* gptoss_stats summed over workers. */
typedef struct
{
	long long	total, failed, cancelled, active, queued;
	int			pid;
	int			ready;
	int			ok;				/* the query worked */
} Stats;

/* One client session and its call in flight. */
typedef struct
{
	PGconn	   *conn;
	PGcancel   *cancel;
	double		reconnect_at;	/* when disconnected: next attempt */
	int			busy;
	Kind		kind;
	int			prompt;
	double		sent_at;
	double		cancel_at;		/* < 0: no cancel planned */
	int			cancel_sent;
	int			interval;
	/* the answer as it arrives, serialized */
	char	   *answer;
	size_t		answer_len;
	size_t		answer_cap;
	Outcome		error_outcome;	/* set by an error result; O_OK when none */
} Client;

/* Counts of one interval. */
typedef struct
{
	double		start_s, end_s;
	const char *kill;			/* "", "SIGTERM", "SIGKILL" */
	int			killed_pid;
	long long	sent[N_KINDS];
	long long	out[N_KINDS][N_OUTCOMES];
	long long	req_ok;			/* worker requests of the calls that returned */
	long long	req_other;		/* worker requests of the calls that did not (at most) */
	long long	cancels_sent;
	Stats		s0, s1;
	int			drained;
} Interval;

static Options opt = {
	.dsn = "", .clients = 128, .duration = 1800, .kill_every = 300, .sigkill_at = 1050,
	.sample = 2, .cancel_pct = 10, .seed = 1, .drain_timeout = 120
};
static char *prompts[N_PROMPTS];
static char *expected[N_KINDS][N_PROMPTS];
static int	nominal[N_KINDS][N_PROMPTS];	/* worker requests per call */
static Client *clients;
static Interval iv[MAX_INTERVALS];
static int	n_iv;
static PGconn *mon;
static double t0;
static uint64_t rng_state;
static FILE *csv;
static char other_errors[5][256];
static int	n_other_errors;

/* Prints an error and exits. */
static void
die(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	fprintf(stderr, "gptoss_soak: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

/* Monotonic seconds since the start. */
static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9 - t0;
}

/* xorshift64*: uniform 64-bit numbers. */
static uint64_t
rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

/* Uniform double in [0, 1). */
static double
rnd01(void)
{
	return (rnd() >> 11) * (1.0 / 9007199254740992.0);
}

/* Appends n bytes to c's answer. */
static void
answer_add(Client *c, const char *s, size_t n)
{
	if (c->answer_len + n + 1 > c->answer_cap)
	{
		c->answer_cap = (c->answer_len + n + 1) * 2;
		c->answer = realloc(c->answer, c->answer_cap);
		if (c->answer == NULL)
			die("out of memory");
	}
	memcpy(c->answer + c->answer_len, s, n);
	c->answer_len += n;
	c->answer[c->answer_len] = '\0';
}

/*
 * Serializes a result into c's answer: the stream's pieces concatenated (its
 * chunking depends on timing), otherwise every value, 0x1f between columns
 * and 0x1e after each row.
 */
static void
answer_result(Client *c, const PGresult *res)
{
	for (int r = 0; r < PQntuples(res); r++)
	{
		for (int f = 0; f < PQnfields(res); f++)
		{
			if (f > 0 && c->kind != K_STREAM)
				answer_add(c, "\x1f", 1);
			if (PQgetisnull(res, r, f))
				answer_add(c, "<NULL>", 6);
			else
				answer_add(c, PQgetvalue(res, r, f), PQgetlength(res, r, f));
		}
		if (c->kind != K_STREAM)
			answer_add(c, "\x1e", 1);
	}
}

/* max_tokens of prompt i: 8 to 32, so that sequences drift apart. */
static int
max_tokens(int i)
{
	return 8 + (i % 4) * 8;
}

/*
 * The statement and parameters of call (kind, prompt); params point into
 * buf.  Returns the number of parameters.
 */
static int
call_sql(Kind kind, int p, const char **sql, const char *params[3], char *buf, size_t bufsize)
{
	int			n = 0;
	size_t		at = 0;

	switch (kind)
	{
		case K_GENERATE:
		case K_STREAM:
			*sql = kind == K_GENERATE ? "SELECT gptoss_generate($1, $2::jsonb)"
				: "SELECT gptoss_generate_stream($1, $2::jsonb)";
			params[n++] = prompts[p];
			params[n++] = buf;
			snprintf(buf, bufsize, "{\"raw\": true, \"max_tokens\": %d, \"temperature\": 0}", max_tokens(p));
			break;
		case K_MANY:
			*sql = "SELECT t FROM unnest(gptoss_generate_many($1::text[], $2::jsonb)) WITH ORDINALITY u(t, n) ORDER BY n";
			at += snprintf(buf + at, bufsize - at, "{");
			for (int j = 0; j < MANY_PROMPTS; j++)
				at += snprintf(buf + at, bufsize - at, "%s\"%s\"", j ? "," : "", prompts[(p + j) % N_PROMPTS]);
			at += snprintf(buf + at, bufsize - at, "}") + 1;
			params[n++] = buf;
			params[n++] = buf + at;
			snprintf(buf + at, bufsize - at, "{\"raw\": true, \"max_tokens\": %d, \"temperature\": 0}", max_tokens(p));
			break;
		case K_CHAT:
			/* the completion's id and timestamp differ per call: compare its choices */
			*sql = "SELECT gptoss_chat($1::jsonb, $2::jsonb)->'choices'";
			at += snprintf(buf, bufsize, "[{\"role\": \"user\", \"content\": \"%s\"}]", prompts[p]) + 1;
			params[n++] = buf;
			params[n++] = buf + at;
			snprintf(buf + at, bufsize - at, "{\"max_tokens\": %d, \"temperature\": 0}", max_tokens(p));
			break;
		case K_TOKENIZE:
			*sql = "SELECT gptoss_tokenize($1)";
			params[n++] = prompts[p];
			break;
		case K_JSON:
			*sql = "SELECT gptoss_generate_json($1, $2::jsonb, '{\"max_tokens\": 48, \"temperature\": 0}')";
			params[n++] = prompts[p];
			params[n++] = JSON_SCHEMA;
			break;
		case K_CLASSIFY:
			*sql = "SELECT gptoss_classify($1, ARRAY['billing', 'shipping', 'returns', 'other'])";
			params[n++] = prompts[p];
			break;
		case K_BATCH:
			*sql = BATCH_SQL;
			break;
		case N_KINDS:
			break;
	}
	return n;
}

/* Reads gptoss_stats on the monitoring session (reconnecting when it is gone). */
static Stats
read_stats(void)
{
	Stats		s;
	PGresult   *res;

	memset(&s, 0, sizeof(s));
	if (mon == NULL || PQstatus(mon) != CONNECTION_OK)
	{
		if (mon != NULL)
			PQfinish(mon);
		mon = PQconnectdb(opt.dsn);
		if (PQstatus(mon) != CONNECTION_OK)
		{
			PQfinish(mon);
			mon = NULL;
			return s;
		}
	}
	res = PQexec(mon, STATS_SQL);
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
	{
		s.total = atoll(PQgetvalue(res, 0, 0));
		s.failed = atoll(PQgetvalue(res, 0, 1));
		s.cancelled = atoll(PQgetvalue(res, 0, 2));
		s.active = atoll(PQgetvalue(res, 0, 3));
		s.queued = atoll(PQgetvalue(res, 0, 4));
		s.pid = atoi(PQgetvalue(res, 0, 5));
		s.ready = PQgetvalue(res, 0, 6)[0] == 't';
		s.ok = 1;
	}
	PQclear(res);
	return s;
}

/* Runs one statement on the monitoring session; exits when it fails. */
static void
mon_exec(const char *sql)
{
	PGresult   *res = PQexec(mon, sql);

	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
		die("%s: %s", sql, PQerrorMessage(mon));
	PQclear(res);
}

/* Waits until the worker is ready (or exits after timeout seconds). */
static Stats
wait_ready(double timeout)
{
	double		until = now_s() + timeout;

	for (;;)
	{
		Stats		s = read_stats();

		if (s.ok && s.ready && s.pid > 0)
			return s;
		if (now_s() > until)
			die("the worker is not ready after %.0f s", timeout);
		usleep(100000);
	}
}

/* Waits until the worker has nothing active or queued and its counters stand still. */
static Stats
wait_idle(double timeout)
{
	double		until = now_s() + timeout;
	Stats		prev;

	memset(&prev, 0, sizeof(prev));
	for (;;)
	{
		Stats		s = read_stats();

		if (s.ok && prev.ok && s.active == 0 && s.queued == 0 && s.total == prev.total &&
			s.failed == prev.failed && s.cancelled == prev.cancelled)
			return s;
		if (now_s() > until)
		{
			fprintf(stderr, "gptoss_soak: worker not idle after %.0f s (active %lld, queued %lld)\n",
					timeout, s.active, s.queued);
			return s;
		}
		prev = s;
		usleep(200000);
	}
}

/* Resident set size of pid in kB (VmRSS), or -1. */
static long
rss_kb(int pid)
{
	char		path[64];
	char		line[256];
	long		kb = -1;
	FILE	   *f;

	if (pid <= 0)
		return -1;
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	f = fopen(path, "r");
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "VmRSS:", 6) == 0)
			kb = atol(line + 6);
	fclose(f);
	return kb;
}

/*
 * Runs call (kind, p) alone on the monitoring session: records its answer
 * and how many worker requests it took.
 */
static void
warm_up_call(Kind kind, int p)
{
	char		buf[4096];
	const char *sql;
	const char *params[3];
	int			n = call_sql(kind, p, &sql, params, buf, sizeof(buf));
	Stats		a = wait_idle(60);
	Stats		b;
	PGresult   *res = PQexecParams(mon, sql, n, NULL, params, NULL, NULL, 0);
	Client		c;

	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		die("warm-up %s of prompt %d failed: %s", kind_names[kind], p, PQerrorMessage(mon));
	memset(&c, 0, sizeof(c));
	c.kind = kind;
	answer_add(&c, "", 0);
	answer_result(&c, res);
	PQclear(res);
	b = wait_idle(60);
	expected[kind][p] = c.answer;
	nominal[kind][p] = (int) (b.total - a.total);
	if (b.failed != a.failed || b.cancelled != a.cancelled)
		die("warm-up %s of prompt %d: the worker counted a failure or cancel", kind_names[kind], p);
}

/* Builds the prompts and table, checks the batch plan, and runs every call alone. */
static void
warm_up(void)
{
	static const char *const words[] = {
		"river", "table", "music", "paper", "market", "garden", "city", "book",
		"money", "story", "night", "school", "number", "friend", "family", "system"
	};
	char		sql[4096];
	PGresult   *res;
	int			batch_node = 0;

	for (int i = 0; i < N_PROMPTS; i++)
	{
		char		p[256];

		snprintf(p, sizeof(p), "Soak prompt %d: the %s and the %s of the %s", i, words[i],
				 words[(i * 7 + 3) % N_PROMPTS], words[(i * 5 + 1) % N_PROMPTS]);
		prompts[i] = strdup(p);
	}
	mon_exec("CREATE TABLE soak_docs (id int PRIMARY KEY, body text)");
	for (int i = 0; i < 8; i++)
	{
		snprintf(sql, sizeof(sql), "INSERT INTO soak_docs VALUES (%d, '%s')", i, prompts[i]);
		mon_exec(sql);
	}
	res = PQexec(mon, "EXPLAIN " BATCH_SQL);
	for (int r = 0; PQresultStatus(res) == PGRES_TUPLES_OK && r < PQntuples(res); r++)
		if (strstr(PQgetvalue(res, r, 0), "GptossBatch"))
			batch_node = 1;
	PQclear(res);
	if (!batch_node)
		die("the batch statement does not run through the GptossBatch node");

	for (int k = 0; k < N_KINDS; k++)
		for (int p = 0; p < (k == K_BATCH ? 1 : N_PROMPTS); p++)
			warm_up_call((Kind) k, p);
	for (int p = 1; p < N_PROMPTS; p++)
	{
		expected[K_BATCH][p] = expected[K_BATCH][0];
		nominal[K_BATCH][p] = nominal[K_BATCH][0];
	}
	fprintf(stderr, "gptoss_soak: warm-up done; worker requests per call:");
	for (int k = 0; k < N_KINDS; k++)
		fprintf(stderr, " %s %d", kind_names[k], nominal[k][0]);
	fprintf(stderr, "\n");
}

/* Notice processor of the client sessions: the crash reset's WARNINGs are expected, not shown. */
static void
quiet_notice(void *arg, const char *message)
{
	(void) arg;
	(void) message;
}

/* Connects client c (non-fatal: a failed attempt is retried later). */
static void
client_connect(Client *c)
{
	c->conn = PQconnectdb(opt.dsn);
	if (PQstatus(c->conn) != CONNECTION_OK || PQsetnonblocking(c->conn, 1) != 0)
	{
		PQfinish(c->conn);
		c->conn = NULL;
		c->reconnect_at = now_s() + 0.25 + 0.5 * rnd01();
		return;
	}
	PQsetNoticeProcessor(c->conn, quiet_notice, NULL);
	c->cancel = PQgetCancel(c->conn);
}

/* Drops client c's session. */
static void
client_disconnect(Client *c)
{
	if (c->cancel)
		PQfreeCancel(c->cancel);
	c->cancel = NULL;
	if (c->conn)
		PQfinish(c->conn);
	c->conn = NULL;
	c->reconnect_at = now_s() + 0.25 + 0.5 * rnd01();
}

/* Picks a kind by weight. */
static Kind
pick_kind(void)
{
	int			total = 0;
	int			r;

	for (int k = 0; k < N_KINDS; k++)
		total += kind_weight[k];
	r = (int) (rnd() % total);
	for (int k = 0; k < N_KINDS; k++)
	{
		if (r < kind_weight[k])
			return (Kind) k;
		r -= kind_weight[k];
	}
	return K_GENERATE;
}

/* Sends a new random call on client c. */
static void
client_send(Client *c)
{
	char		buf[4096];
	const char *sql;
	const char *params[3];
	int			n;

	c->kind = pick_kind();
	c->prompt = (int) (rnd() % N_PROMPTS);
	n = call_sql(c->kind, c->prompt, &sql, params, buf, sizeof(buf));
	if (!PQsendQueryParams(c->conn, sql, n, NULL, params, NULL, NULL, 0))
	{
		client_disconnect(c);
		return;
	}
	c->busy = 1;
	c->sent_at = now_s();
	c->cancel_at = (int) (rnd() % 100) < opt.cancel_pct ? c->sent_at + 2.0 * rnd01() : -1;
	c->cancel_sent = 0;
	c->interval = n_iv - 1;
	c->answer_len = 0;
	answer_add(c, "", 0);
	c->error_outcome = O_OK;
	iv[c->interval].sent[c->kind]++;
}

/* Records how client c's call ended. */
static void
client_done(Client *c, Outcome o)
{
	Interval   *in = &iv[c->interval];

	if (o == O_OK && strcmp(c->answer, expected[c->kind][c->prompt]) != 0)
	{
		o = O_WRONG;
		fprintf(stderr, "gptoss_soak: WRONG answer to %s of prompt %d at %.1f s\n",
				kind_names[c->kind], c->prompt, now_s());
	}
	in->out[c->kind][o]++;
	if (o == O_OK)
		in->req_ok += nominal[c->kind][c->prompt];
	else
		in->req_other += nominal[c->kind][c->prompt];
	c->busy = 0;
}

/* Classifies an error result. */
static Outcome
classify_error(Client *c, const PGresult *res)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *msg = PQresultErrorMessage(res);

	if (PQstatus(c->conn) != CONNECTION_OK || state == NULL || strncmp(state, "57P", 3) == 0)
		return O_CONN_LOST;
	if (strcmp(state, "57014") == 0)
		return c->cancel_sent ? O_CANCELLED : O_SPURIOUS;
	if (strcmp(state, "53000") == 0)
		return O_FULL;
	if (strcmp(state, "55000") == 0 && strstr(msg, "worker exited"))
		return O_EXITED;
	if (strcmp(state, "55000") == 0 && strstr(msg, "not ready"))
		return O_NOT_READY;
	if (n_other_errors < 5)
		snprintf(other_errors[n_other_errors++], sizeof(other_errors[0]), "%s %s: %s",
				 kind_names[c->kind], state, msg);
	return O_OTHER;
}

/* Reads what arrived for client c; ends its call when the last result is in. */
static void
client_input(Client *c)
{
	if (!PQconsumeInput(c->conn))
	{
		client_done(c, O_CONN_LOST);
		client_disconnect(c);
		return;
	}
	while (!PQisBusy(c->conn))
	{
		PGresult   *res = PQgetResult(c->conn);

		if (res == NULL)
		{
			client_done(c, c->error_outcome);
			if (PQstatus(c->conn) != CONNECTION_OK)
				client_disconnect(c);
			return;
		}
		if (PQresultStatus(res) == PGRES_TUPLES_OK)
			answer_result(c, res);
		else if (c->error_outcome == O_OK)
			c->error_outcome = classify_error(c, res);
		PQclear(res);
		if (PQstatus(c->conn) != CONNECTION_OK)
		{
			client_done(c, c->error_outcome == O_OK ? O_CONN_LOST : c->error_outcome);
			client_disconnect(c);
			return;
		}
	}
}

/* Writes one CSV sample. */
static void
sample(const char *event, Stats s)
{
	long long	done = 0;
	int			inflight = 0,
				connected = 0;

	for (int i = 0; i < n_iv; i++)
		for (int k = 0; k < N_KINDS; k++)
			for (int o = 0; o < N_OUTCOMES; o++)
				done += iv[i].out[k][o];
	for (int i = 0; i < opt.clients; i++)
	{
		inflight += clients[i].busy;
		connected += clients[i].conn != NULL;
	}
	fprintf(csv, "%.1f,%d,%s,%d,%ld,%d,%ld,%lld,%d,%d,%lld,%lld\n",
			now_s(), n_iv - 1, event, opt.postmaster_pid, rss_kb(opt.postmaster_pid), s.pid,
			rss_kb(s.pid), done, inflight, connected, s.total, s.active);
	fflush(csv);
}

/*
 * One pass of the client loop: cancels that are due, reconnects, new calls
 * (unless paused), and whatever arrived within timeout_ms.
 */
static void
pump(int paused, int timeout_ms)
{
	struct pollfd *fds = calloc(opt.clients, sizeof(struct pollfd));
	double		t = now_s();

	for (int i = 0; i < opt.clients; i++)
	{
		Client	   *c = &clients[i];
		int			flush = 0;

		fds[i].fd = -1;
		if (c->conn == NULL)
		{
			if (t >= c->reconnect_at)
				client_connect(c);
			if (c->conn == NULL)
				continue;
		}
		if (c->busy && !c->cancel_sent && c->cancel_at >= 0 && t >= c->cancel_at)
		{
			char		err[256];

			if (!PQcancel(c->cancel, err, sizeof(err)))
				fprintf(stderr, "gptoss_soak: PQcancel: %s\n", err);
			c->cancel_sent = 1;
			iv[c->interval].cancels_sent++;
		}
		if (!c->busy && !paused)
			client_send(c);
		if (c->conn == NULL)
			continue;
		if (c->busy && (flush = PQflush(c->conn)) < 0)
		{
			client_done(c, O_CONN_LOST);
			client_disconnect(c);
			continue;
		}
		fds[i].fd = PQsocket(c->conn);
		fds[i].events = POLLIN | (c->busy && flush == 1 ? POLLOUT : 0);
	}
	if (poll(fds, opt.clients, timeout_ms) < 0 && errno != EINTR)
		die("poll: %s", strerror(errno));
	for (int i = 0; i < opt.clients; i++)
		if (fds[i].fd >= 0 && (fds[i].revents & (POLLIN | POLLOUT | POLLERR | POLLHUP)) && clients[i].busy)
			client_input(&clients[i]);
	free(fds);
}

/* Ends the current interval: stop sending, let every call end, read the worker's counters. */
static void
close_interval(double *next_sample)
{
	Interval   *in = &iv[n_iv - 1];
	double		until = now_s() + opt.drain_timeout;
	int			busy;

	do
	{
		busy = 0;
		pump(1, 20);
		for (int i = 0; i < opt.clients; i++)
			busy += clients[i].busy;
		if (now_s() >= *next_sample)
		{
			sample("", read_stats());
			*next_sample += opt.sample;
		}
	} while (busy > 0 && now_s() < until);
	in->drained = busy == 0;
	for (int i = 0; i < opt.clients; i++)
		if (clients[i].busy)
		{
			fprintf(stderr, "gptoss_soak: LOST: %s of prompt %d sent at %.1f s has no answer at %.1f s\n",
					kind_names[clients[i].kind], clients[i].prompt, clients[i].sent_at, now_s());
			client_done(&clients[i], O_LOST);
			client_disconnect(&clients[i]);
		}
	in->s1 = wait_idle(opt.drain_timeout);
	in->end_s = now_s();
}

/* Opens interval n_iv: reads the counters it starts from. */
static void
open_interval(const char *kill)
{
	Interval   *in;

	if (n_iv == MAX_INTERVALS)
		die("too many intervals");
	in = &iv[n_iv++];
	memset(in, 0, sizeof(*in));
	in->kill = kill;
	in->s0 = n_iv > 1 ? iv[n_iv - 2].s1 : wait_idle(60);
	in->start_s = now_s();
}

/* Sums an interval's outcome o over kinds. */
static long long
outcome_sum(const Interval *in, Outcome o)
{
	long long	n = 0;

	for (int k = 0; k < N_KINDS; k++)
		n += in->out[k][o];
	return n;
}

/* Whether interval in fails a check; prints its table row. */
static int
report_interval(int i, FILE *ivcsv)
{
	Interval   *in = &iv[i];
	long long	sent = 0,
				ended = 0;
	long long	dt = in->s1.total - in->s0.total;
	long long	df = in->s1.failed - in->s0.failed;
	long long	dc = in->s1.cancelled - in->s0.cancelled;
	int			stats_ok = strcmp(in->kill, "SIGKILL") != 0 && in->s0.ok && in->s1.ok;
	long long	finished = dt - df - dc;
	int			duplicated = stats_ok && dt > in->req_ok + in->req_other;
	int			dropped = stats_ok && finished < in->req_ok;
	int			bad;

	for (int k = 0; k < N_KINDS; k++)
	{
		sent += in->sent[k];
		for (int o = 0; o < N_OUTCOMES; o++)
			ended += in->out[k][o];
	}
	bad = duplicated || dropped || sent != ended || outcome_sum(in, O_LOST) > 0 ||
		outcome_sum(in, O_WRONG) > 0 || outcome_sum(in, O_OTHER) > 0 || !in->drained;
	printf("| %d | %.0f–%.0f | %s | %lld | %lld | %lld | %lld | %lld | %lld | %lld | %lld | %lld | %lld |",
		   i, in->start_s, in->end_s, in->kill[0] ? in->kill : "–", sent, outcome_sum(in, O_OK),
		   outcome_sum(in, O_CANCELLED), outcome_sum(in, O_EXITED) + outcome_sum(in, O_NOT_READY),
		   outcome_sum(in, O_FULL), outcome_sum(in, O_CONN_LOST),
		   outcome_sum(in, O_OTHER) + outcome_sum(in, O_SPURIOUS),
		   outcome_sum(in, O_LOST), outcome_sum(in, O_WRONG), in->req_ok);
	if (stats_ok)
		printf(" %lld / %lld / %lld | %lld ≥ %lld, %lld ≤ %lld | %s |\n", dt, df, dc, finished, in->req_ok,
			   dt, in->req_ok + in->req_other, bad ? "**FAIL**" : "ok");
	else
		printf(" (reset) | clients only | %s |\n", bad ? "**FAIL**" : "ok");
	fprintf(ivcsv, "%d,%.1f,%.1f,%s,%d,%lld,%lld,%lld,%lld,%lld,%lld,%d,%lld,%lld,%lld,%lld,%d", i,
			in->start_s, in->end_s, in->kill[0] ? in->kill : "none", in->killed_pid, sent, ended,
			in->req_ok, in->req_other,
			in->cancels_sent, dt, stats_ok, df, dc, finished, (long long) (duplicated + dropped), bad);
	for (int o = 0; o < N_OUTCOMES; o++)
		fprintf(ivcsv, ",%lld", outcome_sum(in, (Outcome) o));
	fprintf(ivcsv, "\n");
	return bad;
}

/* Writes the summary: the table on stdout, the interval CSV and the JSON file. */
static int
report(void)
{
	FILE	   *ivcsv = fopen(opt.intervals, "w");
	FILE	   *js = fopen(opt.json, "w");
	int			failed = 0;
	long long	tot[N_OUTCOMES] = {0};
	long long	sent = 0,
				req = 0,
				cancels = 0;

	if (ivcsv == NULL || js == NULL)
		die("cannot write %s or %s", opt.intervals, opt.json);
	fprintf(ivcsv, "interval,start_s,end_s,kill,killed_pid,calls_sent,calls_ended,req_ok,req_other_max,cancels_sent,"
			"stats_total_delta,stats_reconciled,stats_failed_delta,stats_cancelled_delta,stats_finished_delta,"
			"duplicated_or_dropped,bad");
	for (int o = 0; o < N_OUTCOMES; o++)
		fprintf(ivcsv, ",%s", outcome_names[o]);
	fprintf(ivcsv, "\n");
	printf("| interval | s | kill at start | calls | ok | cancelled | worker exited / not ready | 53000 | "
		   "conn lost | other | lost | wrong | requests answered | stats Δ total / failed / cancelled | "
		   "finished ≥ answered, total ≤ sent | |\n");
	printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
	for (int i = 0; i < n_iv; i++)
	{
		failed |= report_interval(i, ivcsv);
		for (int k = 0; k < N_KINDS; k++)
		{
			sent += iv[i].sent[k];
			for (int o = 0; o < N_OUTCOMES; o++)
				tot[o] += iv[i].out[k][o];
		}
		req += iv[i].req_ok;
		cancels += iv[i].cancels_sent;
	}
	printf("\nCalls by kind (all intervals):\n\n| kind | sent |");
	for (int o = 0; o < N_OUTCOMES; o++)
		printf(" %s |", outcome_names[o]);
	printf("\n|---|---|");
	for (int o = 0; o < N_OUTCOMES; o++)
		printf("---|");
	printf("\n");
	for (int k = 0; k < N_KINDS; k++)
	{
		long long	s = 0;

		for (int i = 0; i < n_iv; i++)
			s += iv[i].sent[k];
		printf("| %s | %lld |", kind_names[k], s);
		for (int o = 0; o < N_OUTCOMES; o++)
		{
			long long	n = 0;

			for (int i = 0; i < n_iv; i++)
				n += iv[i].out[k][o];
			printf(" %lld |", n);
		}
		printf("\n");
	}
	for (int i = 0; i < n_other_errors; i++)
		printf("\nunexpected error: %s", other_errors[i]);
	printf("\n%s\n", failed ? "RESULT: FAIL" : "RESULT: ok (nothing lost, wrong, duplicated or dropped)");

	fprintf(js, "{\"clients\": %d, \"duration_s\": %.0f, \"intervals\": %d, \"calls\": %lld, "
			"\"requests_answered\": %lld, \"cancels_sent\": %lld", opt.clients, opt.duration, n_iv, sent, req, cancels);
	for (int o = 0; o < N_OUTCOMES; o++)
		fprintf(js, ", \"%s\": %lld", outcome_names[o], tot[o]);
	fprintf(js, ", \"failed\": %s}\n", failed ? "true" : "false");
	fclose(ivcsv);
	fclose(js);
	return failed;
}

/* Parses the command line. */
static void
parse_options(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"dsn", required_argument, NULL, 'd'},
		{"postmaster-pid", required_argument, NULL, 'p'},
		{"clients", required_argument, NULL, 'c'},
		{"duration", required_argument, NULL, 't'},
		{"kill-every", required_argument, NULL, 'k'},
		{"sigkill-at", required_argument, NULL, 'K'},
		{"sample", required_argument, NULL, 's'},
		{"cancel-pct", required_argument, NULL, 'x'},
		{"seed", required_argument, NULL, 'S'},
		{"drain-timeout", required_argument, NULL, 'D'},
		{"csv", required_argument, NULL, 'o'},
		{"intervals", required_argument, NULL, 'i'},
		{"json", required_argument, NULL, 'j'},
		{NULL, 0, NULL, 0}
	};
	int			ch;

	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1)
	{
		switch (ch)
		{
			case 'd': opt.dsn = optarg; break;
			case 'p': opt.postmaster_pid = atoi(optarg); break;
			case 'c': opt.clients = atoi(optarg); break;
			case 't': opt.duration = atof(optarg); break;
			case 'k': opt.kill_every = atof(optarg); break;
			case 'K': opt.sigkill_at = atof(optarg); break;
			case 's': opt.sample = atof(optarg); break;
			case 'x': opt.cancel_pct = atoi(optarg); break;
			case 'S': opt.seed = (unsigned) atoi(optarg); break;
			case 'D': opt.drain_timeout = atof(optarg); break;
			case 'o': opt.csv = optarg; break;
			case 'i': opt.intervals = optarg; break;
			case 'j': opt.json = optarg; break;
			default: die("unknown option (see the comment at the top of bench/soak.c)");
		}
	}
	if (opt.postmaster_pid <= 0 || opt.clients <= 0 || opt.duration <= 0 || opt.kill_every <= 0 ||
		opt.sample <= 0 || !opt.csv || !opt.intervals || !opt.json)
		die("--postmaster-pid, --csv, --intervals, --json are required; counts and times must be positive");
}

int
main(int argc, char **argv)
{
	double		next_sample,
				next_kill,
				kill_due = -1;
	int			sigkill_done = 0;
	int			closed = 0;		/* the last interval is closed already */
	const char *pending_kill = NULL;

	parse_options(argc, argv);
	t0 = 0;
	t0 = now_s();
	rng_state = 0x9E3779B97F4A7C15ULL ^ opt.seed;
	signal(SIGPIPE, SIG_IGN);
	csv = fopen(opt.csv, "w");
	if (csv == NULL)
		die("cannot write %s", opt.csv);
	fprintf(csv, "t_s,interval,event,postmaster_pid,postmaster_rss_kb,worker_pid,worker_rss_kb,"
			"calls_ended,calls_in_flight,clients_connected,stats_requests_total,stats_requests_active\n");

	mon = PQconnectdb(opt.dsn);
	if (PQstatus(mon) != CONNECTION_OK)
		die("connection failed: %s", PQerrorMessage(mon));
	wait_ready(120);
	warm_up();

	clients = calloc(opt.clients, sizeof(Client));
	for (int i = 0; i < opt.clients; i++)
		client_connect(&clients[i]);
	t0 += now_s();				/* the run's clock starts now */
	open_interval("");
	sample("start", read_stats());
	next_sample = opt.sample;
	next_kill = opt.kill_every;

	while (now_s() < opt.duration)
	{
		double		t;

		pump(0, 20);
		t = now_s();
		if (pending_kill && t >= kill_due)
		{
			Stats		s = read_stats();
			int			sig = strcmp(pending_kill, "SIGKILL") == 0 ? SIGKILL : SIGTERM;

			if (s.pid <= 0)
			{
				/* the worker is not back yet from the previous kill: try again shortly */
				kill_due = t + 0.5;
				continue;
			}
			if (kill(s.pid, sig) != 0)
				die("cannot send %s to the worker (pid %d): %s", pending_kill, s.pid, strerror(errno));
			iv[n_iv - 1].killed_pid = s.pid;
			fprintf(stderr, "gptoss_soak: %.1f s: %s to worker %d\n", t, pending_kill, s.pid);
			sample(pending_kill, s);
			pending_kill = NULL;
		}
		if (!pending_kill && (t >= next_kill || (!sigkill_done && opt.sigkill_at > 0 && t >= opt.sigkill_at)))
		{
			int			is_sigkill = !sigkill_done && opt.sigkill_at > 0 && t >= opt.sigkill_at;

			/* cut here: drain, read the counters, go on, kill under load 1 to 3 s later */
			close_interval(&next_sample);
			if (now_s() >= opt.duration)
			{
				closed = 1;
				break;
			}
			pending_kill = is_sigkill ? "SIGKILL" : "SIGTERM";
			if (is_sigkill)
				sigkill_done = 1;
			else
				next_kill += opt.kill_every;
			open_interval(pending_kill);
			kill_due = now_s() + 1.0 + 2.0 * rnd01();
		}
		if (t >= next_sample)
		{
			sample("", read_stats());
			next_sample += opt.sample;
		}
	}
	if (!closed)
		close_interval(&next_sample);
	sample("end", read_stats());
	fclose(csv);
	for (int i = 0; i < opt.clients; i++)
		client_disconnect(&clients[i]);
	PQfinish(mon);
	return report() ? 3 : 0;
}
