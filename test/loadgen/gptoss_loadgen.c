/*
 * gptoss_loadgen.c: a concurrent SQL load generator for gptoss.
 *
 * Plan: open N libpq sessions (plus one monitoring session), wait until
 * gptoss_status()->>'state' is 'ready', snapshot the gptoss_stats view, then
 * drive every session from one thread: each session sends
 * SELECT gptoss_generate($1, $2::jsonb) with PQsendQueryParams, poll() waits
 * on all sockets at once, PQconsumeInput/PQgetResult collect the answers,
 * and a finished session sends its next request at once, until each has run
 * R requests.  The monitoring session samples requests_active every 100 ms,
 * so the report also shows how many sequences were in flight on average.
 * After the run (and once the worker is idle again) a second stats snapshot
 * gives the exact completion and prompt token counts of the run as deltas,
 * and the mean batch size.
 *
 * Output lengths: every request asks for --max-tokens, or with --min-tokens
 * for a length spread evenly over [min, max] (a hash of the request index),
 * so that sessions drift apart and new prompts arrive while others decode,
 * as in real traffic, instead of all 64 sessions finishing and refilling in
 * the same step.
 *
 * Prompts: --prompt (one text for all), --prompt-file (one prompt per line,
 * used in turn) or, by default, --prompt-len words drawn from a list of
 * common English words that are single tokens in o200k (so the prompt is
 * about that many tokens); request i of the run gets its own random word
 * sequence, so no two requests share a prompt.
 *
 * --check: every distinct prompt first runs alone (serially, one request at
 * a time), then the concurrent run repeats them all at once and every text
 * must equal its serial text byte for byte.  With greedy decoding (or a
 * fixed seed) batching must not change any output.
 *
 * Output: one JSON line on stdout; errors on stderr.  Exit status: 0 ok,
 * 1 error (bad option, connection, failed query, timeout), 3 mismatches in
 * --check mode (the JSON line is still printed).
 *
 * --serve N: the serving-shaped run of `gptoss bench --requests N`, through
 * SQL.  The N requests (lengths from src/cli/serve_lengths.c: fixed, or
 * log-normal with the same draw as the CLI, so both runs submit identical
 * requests) are dealt round-robin to the sessions (64 unless --sessions),
 * and every session submits its whole share at once in ONE statement,
 *   SELECT gptoss_generate(p, params || {max_tokens: m}) FROM unnest(prompts, lengths)
 * which the GptossBatch node runs with gptoss.batch_window set to the share,
 * so all N requests are in flight from the start (given gptoss.max_requests
 * >= N).  The node rather than gptoss_generate_many: it is the path the
 * README recommends for bulk work (a plain query over rows), and it takes
 * params per row, which per-request output lengths need (generate_many has
 * one params for all its prompts).  Prompts are input_len single-token words
 * (raw mode, so the prompt is exactly its tokens); gptoss_tokenize checks
 * every prompt's length before the run.  Greedy, raw, ignore_eos: each
 * request generates exactly its output length.  Reported: the drawn
 * totals, the tokenized prompt total, gptoss_stats's prompt and completion
 * token deltas, completion tok/s and total (prompt + completion) tok/s over
 * the wall time from the first statement sent to the last one finished,
 * and the run's mean batch.  TTFT is not measured: a plain SQL call returns
 * the whole answer (and the node returns rows in input order), so the
 * client never sees a first token.  --dry-run prints the draw only.
 *
 * --exec SQL turns it into a minimal psql for machines without one (the GPU
 * machine): it runs the statements, prints the rows of the last one
 * tab-separated and exits (after waiting for 'ready' with --wait-ready).
 *
 * Build: test/loadgen/build.sh (gcc plus libpq's flags).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "serve_lengths.h"

#define MONITOR_INTERVAL_S	0.1		/* requests_active sampling period */
#define IDLE_WAIT_S			30.0	/* how long the worker may take to go idle after the run */
#define GENERATE_SQL		"SELECT gptoss_generate($1, $2::jsonb)"

/* --serve: one session's share in one statement ($1 prompts, $2 output lengths, $3 SERVE_PARAMS). */
#define SERVE_SQL \
	"SELECT gptoss_generate(p, $3::jsonb || jsonb_build_object('max_tokens', m)) " \
	"FROM unnest($1::text[], $2::int[]) AS r(p, m)"
/* --serve: every request's params but max_tokens (greedy, plain continuation, exact length). */
#define SERVE_PARAMS		"{\"temperature\": 0, \"raw\": true, \"ignore_eos\": true}"
/* --serve: token count of a share's prompts, and how many differ from their drawn length ($2). */
#define TOKENIZE_SQL \
	"SELECT coalesce(sum(t), 0)::bigint, count(*) FILTER (WHERE t <> n)::bigint " \
	"FROM unnest($1::text[], $2::int[]) AS r(p, n), LATERAL cardinality(gptoss_tokenize(p)) AS t"
/* --serve: the worker's limits that decide whether the run can go as drawn. */
#define LIMITS_SQL \
	"SELECT (l->>'max_context')::int, (l->>'max_requests')::int, (l->>'max_batch_size')::int " \
	"FROM (SELECT gptoss_status()->'limits' AS l) s"

/*
 * The stats query sums over workers.  mean_batch_size is a lifetime mean
 * (step_sequences / steps); when the view also has a `steps` column the
 * run's own mean follows exactly from the two snapshots, read here through
 * to_jsonb so that the query works with either form of the view.
 */
#define STATS_SQL \
	"SELECT coalesce(sum(completion_tokens), 0)::bigint, coalesce(sum(prompt_tokens), 0)::bigint, " \
	"coalesce(sum(requests_active), 0)::bigint, coalesce(sum(requests_queued), 0)::bigint, " \
	"coalesce(sum(requests_failed), 0)::bigint, coalesce(sum(requests_total), 0)::bigint, " \
	"coalesce(avg(mean_batch_size), 0)::float8, " \
	"sum((to_jsonb(s)->>'steps')::bigint), " \
	"sum(mean_batch_size * (to_jsonb(s)->>'steps')::float8) " \
	"FROM gptoss_stats s"

/* Single-token English words (with their leading space) for synthetic prompts. */
static const char *const prompt_words[] = {
	"the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
	"on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
	"had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
	"been", "if", "more", "when", "will", "would", "who", "so", "no", "time", "people", "water",
	"house", "light", "world", "river", "table", "music", "paper", "market", "garden", "city",
	"book", "money", "story", "night", "school", "number", "friend", "family", "system", "data",
	"model", "value", "small", "large", "quick", "brown", "green", "simple", "early", "happy"
};
#define N_PROMPT_WORDS (int) (sizeof(prompt_words) / sizeof(prompt_words[0]))

/* Command-line settings. */
typedef struct
{
	const char *dsn;			/* libpq connection string ("" = environment) */
	int			sessions;		/* concurrent connections */
	int			requests;		/* requests per session */
	int			warmup;			/* unmeasured concurrent rounds before the run */
	const char *prompt;			/* fixed prompt, or NULL */
	const char *prompt_file;	/* one prompt per line, or NULL */
	int			prompt_len;		/* words per synthetic prompt */
	uint64_t	prompt_seed;	/* seed of the synthetic prompts */
	int			max_tokens;
	int			min_tokens;		/* > 0: request lengths spread over [min_tokens, max_tokens] */
	double		temperature;
	double		top_p;			/* < 0: not sent */
	long long	seed;			/* sent when has_seed */
	int			has_seed;
	int			raw;
	int			ignore_eos;
	const char *params;			/* verbatim params jsonb, replaces the ones above */
	int			check;
	double		ready_timeout;	/* seconds to wait for state 'ready' */
	const char *label;			/* copied into the JSON line */
	const char *exec_sql;		/* --exec: run this and print the rows instead */
	int			wait_ready;		/* --exec: wait for state 'ready' first */
	int			serve;			/* --serve: requests of the serving run (0: session mode) */
	int			input_len;		/* --serve: prompt tokens (the mean when log-normal) */
	int			output_len;		/* --serve: generated tokens (the mean when log-normal) */
	int			lognormal;		/* --serve: log-normal lengths, not fixed */
	uint64_t	length_seed;	/* --serve: seed of the log-normal draw */
	int			dry_run;		/* --serve: print the draw and exit */
} Options;

/* One snapshot of the gptoss_stats view, summed over workers. */
typedef struct
{
	long long	completion_tokens;
	long long	prompt_tokens;
	long long	active;
	long long	queued;
	long long	failed;
	long long	total;
	double		mean_batch_size;	/* lifetime mean (averaged over workers) */
	int			has_steps;			/* the view has a steps column */
	long long	steps;
	double		step_sequences;		/* mean_batch_size * steps, summed over workers */
} Stats;

/* One client session and its request in flight. */
typedef struct
{
	PGconn	   *conn;
	int			index;			/* session number */
	int			sent;			/* requests sent so far in this phase */
	int			limit;			/* requests to send in this phase */
	int			busy;			/* a request is in flight */
	int			flushing;		/* the query is not fully sent yet (wait for POLLOUT) */
	int			request;		/* global index of the request in flight */
	double		sent_at;		/* monotonic seconds */
	char	   *text;			/* result of the request in flight */
} Session;

/* The serving run's requests (--serve) and each session's share, as SQL array literals. */
typedef struct
{
	int			n;				/* requests */
	int32_t    *input_len;		/* [n] prompt tokens of each request */
	int32_t    *output_len;		/* [n] tokens each request generates */
	long long	input_total;
	long long	output_total;
	int			longest;		/* most prompt + generated tokens of one request */
	int		   *count;			/* [sessions] requests of session s (those with i % sessions == s) */
	char	  **prompts;		/* [sessions] text[] literal of its prompts */
	char	  **inputs;			/* [sessions] int[] literal of their input lengths */
	char	  **outputs;		/* [sessions] int[] literal of their output lengths */
} ServeWorkload;

/* Everything one run produces. */
typedef struct
{
	double	   *latency_ms;		/* [n_latency] per finished request */
	int			n_latency;
	char	  **texts;			/* [total requests] generated text per global request index */
	double		active_sum;		/* sum of requests_active samples */
	int			active_samples;
} RunResult;

static Options opt;
static char **prompts;			/* [n_prompts] distinct prompt texts */
static int n_prompts;
static char *params_verbatim;	/* --params, or NULL */
static char *params_rest;		/* the params jsonb after its max_tokens (from the options) */
static ServeWorkload serve;		/* --serve */

/* Prints an error message and exits with status 1. */
static void
die(const char *fmt, ...)
{
	va_list		ap;

	fputs("gptoss_loadgen: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* malloc that never returns NULL. */
static void *
xmalloc(size_t n)
{
	void	   *p = malloc(n ? n : 1);

	if (!p)
		die("out of memory (%zu bytes)", n);
	return p;
}

/* strdup that never returns NULL. */
static char *
xstrdup(const char *s)
{
	size_t		n = strlen(s) + 1;

	return memcpy(xmalloc(n), s, n);
}

/* Monotonic clock in seconds. */
static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

/* splitmix64 step: the prompt generator (deterministic across machines). */
static uint64_t
splitmix64(uint64_t *state)
{
	uint64_t	z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Builds a prompt of `words` random common words; request i always gets the same one. */
static char *
build_word_prompt(int words, uint64_t seed, int i)
{
	uint64_t	state = seed * 0x100000001b3ull + (uint64_t) i;
	size_t		cap = (size_t) words * 8 + 1;
	char	   *s = xmalloc(cap);
	size_t		len = 0;

	s[0] = '\0';
	for (int w = 0; w < words; w++)
	{
		const char *word = prompt_words[splitmix64(&state) % N_PROMPT_WORDS];
		size_t		wl = strlen(word);

		if (len + wl + 2 > cap)
		{
			char	   *bigger;

			cap = 2 * cap + wl + 2;
			bigger = realloc(s, cap);
			if (!bigger)
				die("out of memory");
			s = bigger;
		}
		if (w > 0)
			s[len++] = ' ';
		memcpy(s + len, word, wl);
		len += wl;
		s[len] = '\0';
	}
	return s;
}

/* Reads the non-empty lines of a file as prompts. */
static void
load_prompt_file(const char *path)
{
	FILE	   *f = fopen(path, "r");
	char	   *line = NULL;
	size_t		cap = 0;
	ssize_t		n;
	int			alloc = 16;

	if (!f)
		die("cannot open prompt file %s: %s", path, strerror(errno));
	prompts = xmalloc(sizeof(char *) * alloc);
	while ((n = getline(&line, &cap, f)) >= 0)
	{
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (n == 0)
			continue;
		if (n_prompts == alloc)
		{
			char	  **bigger;

			alloc *= 2;
			bigger = realloc(prompts, sizeof(char *) * alloc);
			if (!bigger)
				die("out of memory");
			prompts = bigger;
		}
		prompts[n_prompts++] = xstrdup(line);
	}
	free(line);
	fclose(f);
	if (n_prompts == 0)
		die("prompt file %s has no non-empty line", path);
}

/*
 * Fills prompts[] for `total` requests (the measured ones first, then the
 * warm-up ones): fixed, from a file, or one synthetic prompt per request.
 */
static void
build_prompts(int total)
{
	if (opt.prompt)
	{
		n_prompts = 1;
		prompts = xmalloc(sizeof(char *));
		prompts[0] = xstrdup(opt.prompt);
	}
	else if (opt.prompt_file)
		load_prompt_file(opt.prompt_file);
	else
	{
		n_prompts = total;
		prompts = xmalloc(sizeof(char *) * total);
		for (int i = 0; i < total; i++)
			prompts[i] = build_word_prompt(opt.prompt_len, opt.prompt_seed, i);
	}
}

/* The prompt of global request i. */
static const char *
prompt_of(int i)
{
	return prompts[i % n_prompts];
}

/* max_tokens of global request i (see the header comment). */
static int
max_tokens_of(int i)
{
	uint64_t	state = opt.prompt_seed * 0x9E3779B97F4A7C15ull + (uint64_t) i;

	if (opt.min_tokens <= 0)
		return opt.max_tokens;
	return opt.min_tokens + (int) (splitmix64(&state) % (uint64_t) (opt.max_tokens - opt.min_tokens + 1));
}

/* The params argument of global request i (valid until the next call). */
static const char *
params_of(int i)
{
	static char buf[600];

	if (params_verbatim)
		return params_verbatim;
	snprintf(buf, sizeof(buf), "{\"max_tokens\": %d%s", max_tokens_of(i), params_rest);
	return buf;
}

/* Builds the params jsonb text from the options (or takes --params verbatim). */
static void
build_params(void)
{
	char		buf[512];
	int			n;

	if (opt.params)
	{
		params_verbatim = xstrdup(opt.params);
		return;
	}
	n = snprintf(buf, sizeof(buf), ", \"temperature\": %.17g", opt.temperature);
	if (opt.top_p >= 0)
		n += snprintf(buf + n, sizeof(buf) - n, ", \"top_p\": %.17g", opt.top_p);
	if (opt.has_seed)
		n += snprintf(buf + n, sizeof(buf) - n, ", \"seed\": %lld", opt.seed);
	if (opt.raw)
		n += snprintf(buf + n, sizeof(buf) - n, ", \"raw\": true");
	if (opt.ignore_eos)
		n += snprintf(buf + n, sizeof(buf) - n, ", \"ignore_eos\": true");
	snprintf(buf + n, sizeof(buf) - n, "}");
	params_rest = xstrdup(buf);
}

/* Writes s as a JSON string literal. */
static void
print_json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
	{
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p < 0x20)
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

/* Message of a failed result: SQLSTATE and primary text, without the trailing newline. */
static char *
result_error(const PGresult *res, PGconn *conn)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(conn);
	size_t		n = strlen(msg) + 32;
	char	   *s = xmalloc(n);

	snprintf(s, n, "%s%s%s", state ? "[" : "", state ? state : "", state ? "] " : "");
	strncat(s, msg, n - strlen(s) - 1);
	for (size_t len = strlen(s); len > 0 && (s[len - 1] == '\n' || s[len - 1] == ' ');)
		s[--len] = '\0';
	return s;
}

/* Opens one blocking connection, or exits with libpq's message. */
static PGconn *
connect_or_die(const char *what)
{
	PGconn	   *conn = PQconnectdb(opt.dsn);

	if (PQstatus(conn) != CONNECTION_OK)
	{
		char	   *msg = result_error(NULL, conn);

		die("%s: cannot connect (dsn \"%s\"): %s", what, opt.dsn, msg);
	}
	return conn;
}

/* Runs a query synchronously and returns its tuples, or exits with the server's error. */
static PGresult *
exec_or_die(PGconn *conn, const char *sql, int nparams, const char *const *values)
{
	PGresult   *res = PQexecParams(conn, sql, nparams, NULL, values, NULL, NULL, 0);

	if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)
		die("query failed: %s\n  query: %s", result_error(res, conn), sql);
	return res;
}

/* Parses a snapshot of gptoss_stats from the STATS_SQL row. */
static Stats
parse_stats(PGresult *res)
{
	Stats		s;

	memset(&s, 0, sizeof(s));
	if (PQntuples(res) != 1 || PQnfields(res) != 9)
		die("gptoss_stats: unexpected result shape (%d rows, %d columns)", PQntuples(res),
			PQnfields(res));
	s.completion_tokens = atoll(PQgetvalue(res, 0, 0));
	s.prompt_tokens = atoll(PQgetvalue(res, 0, 1));
	s.active = atoll(PQgetvalue(res, 0, 2));
	s.queued = atoll(PQgetvalue(res, 0, 3));
	s.failed = atoll(PQgetvalue(res, 0, 4));
	s.total = atoll(PQgetvalue(res, 0, 5));
	s.mean_batch_size = atof(PQgetvalue(res, 0, 6));
	s.has_steps = !PQgetisnull(res, 0, 7) && !PQgetisnull(res, 0, 8);
	if (s.has_steps)
	{
		s.steps = atoll(PQgetvalue(res, 0, 7));
		s.step_sequences = atof(PQgetvalue(res, 0, 8));
	}
	return s;
}

/*
 * The mean batch size over a run, from two snapshots (*scope "run"), or the
 * lifetime mean when the view has no steps column (*scope "lifetime").
 */
static double
run_mean_batch(const Stats *before, const Stats *after, const char **scope)
{
	if (after->has_steps && before->has_steps && after->steps > before->steps)
	{
		*scope = "run";
		return (after->step_sequences - before->step_sequences) /
			(double) (after->steps - before->steps);
	}
	*scope = "lifetime";
	return after->mean_batch_size;
}

/* Takes a gptoss_stats snapshot on a blocking connection. */
static Stats
read_stats(PGconn *conn)
{
	PGresult   *res = exec_or_die(conn, STATS_SQL, 0, NULL);
	Stats		s = parse_stats(res);

	PQclear(res);
	return s;
}

/* Waits until the (first) worker reports state 'ready'; exits on 'failed' or timeout. */
static void
wait_ready(PGconn *conn)
{
	double		deadline = now_s() + opt.ready_timeout;
	char		last[64] = "";

	for (;;)
	{
		PGresult   *res = exec_or_die(conn,
									  "SELECT s->>'state', coalesce(s->>'error', ''), "
									  "coalesce(s->>'loading', '') FROM gptoss_status() s", 0, NULL);
		const char *state = PQgetvalue(res, 0, 0);

		if (strcmp(state, "ready") == 0)
		{
			PQclear(res);
			return;
		}
		if (strcmp(state, "failed") == 0)
			die("the gptoss worker failed: %s", PQgetvalue(res, 0, 1));
		if (strcmp(state, last) != 0)
		{
			fprintf(stderr, "gptoss_loadgen: waiting for the worker (state %s%s%s)\n", state,
					PQgetvalue(res, 0, 2)[0] ? ": " : "", PQgetvalue(res, 0, 2));
			snprintf(last, sizeof(last), "%s", state);
		}
		PQclear(res);
		if (now_s() > deadline)
			die("the gptoss worker is not ready after %.0f s (state %s)", opt.ready_timeout, last);
		usleep(200 * 1000);
	}
}

/* Waits (bounded) until no request is active or queued, and returns that snapshot. */
static Stats
wait_idle(PGconn *conn)
{
	double		deadline = now_s() + IDLE_WAIT_S;
	Stats		s;

	for (;;)
	{
		s = read_stats(conn);
		if ((s.active == 0 && s.queued == 0) || now_s() > deadline)
			return s;
		usleep(20 * 1000);
	}
}

/* Sends session s's next request (global index `request`; with --serve, its share's statement). */
static void
send_request(Session *s, int request)
{
	const char *values[3];
	int			flush;
	int			sent;

	if (opt.serve)
	{
		/* the session's whole share: request is the session's index */
		values[0] = serve.prompts[request];
		values[1] = serve.outputs[request];
		values[2] = SERVE_PARAMS;
		sent = PQsendQueryParams(s->conn, SERVE_SQL, 3, NULL, values, NULL, NULL, 0);
	}
	else
	{
		values[0] = prompt_of(request);
		values[1] = params_of(request);
		sent = PQsendQueryParams(s->conn, GENERATE_SQL, 2, NULL, values, NULL, NULL, 0);
	}
	if (!sent)
		die("session %d: cannot send request: %s", s->index, result_error(NULL, s->conn));
	flush = PQflush(s->conn);
	if (flush < 0)
		die("session %d: cannot send request: %s", s->index, result_error(NULL, s->conn));
	s->flushing = flush == 1;
	s->busy = 1;
	s->request = request;
	s->sent_at = now_s();
	s->sent++;
	free(s->text);
	s->text = NULL;
}

/*
 * Reads what arrived on session s.  Returns 1 when its request finished
 * (s->text set; with --serve, to "" once its share's rows are all there), 0
 * while it is still running; exits on a failed query.
 */
static int
collect(Session *s)
{
	PGresult   *res;

	if (!PQconsumeInput(s->conn))
		die("session %d: connection lost: %s", s->index, result_error(NULL, s->conn));
	while (!PQisBusy(s->conn))
	{
		res = PQgetResult(s->conn);
		if (!res)
		{
			if (!s->text)
				die("session %d request %d: no result", s->index, s->request);
			s->busy = 0;
			return 1;
		}
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
			die("session %d request %d failed: %s", s->index, s->request, result_error(res, s->conn));
		if (opt.serve)
		{
			if (PQntuples(res) != serve.count[s->index] || PQnfields(res) != 1)
				die("session %d: expected %d answers, got %d rows of %d columns", s->index,
					serve.count[s->index], PQntuples(res), PQnfields(res));
			for (int r = 0; r < PQntuples(res); r++)
				if (PQgetisnull(res, r, 0))
					die("session %d: answer %d is NULL", s->index, r);
			free(s->text);
			s->text = xstrdup("");
			PQclear(res);
			continue;
		}
		if (PQntuples(res) != 1 || PQnfields(res) != 1)
			die("session %d request %d: expected one value, got %d rows of %d columns", s->index,
				s->request, PQntuples(res), PQnfields(res));
		free(s->text);
		s->text = xstrdup(PQgetisnull(res, 0, 0) ? "" : PQgetvalue(res, 0, 0));
		PQclear(res);
	}
	return 0;
}

/* Handles the monitoring session's sample if one arrived; returns 1 when it is idle again. */
static int
collect_monitor(PGconn *mon, RunResult *rr)
{
	PGresult   *res;

	if (!PQconsumeInput(mon))
		die("monitor: connection lost: %s", result_error(NULL, mon));
	while (!PQisBusy(mon))
	{
		res = PQgetResult(mon);
		if (!res)
			return 1;
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
			die("monitor: gptoss_stats failed: %s", result_error(res, mon));
		rr->active_sum += (double) parse_stats(res).active;
		rr->active_samples++;
		PQclear(res);
	}
	return 0;
}

/*
 * Runs `per_session` requests on every session concurrently; request r of
 * session i has global index first + i * per_session + r.  Latencies and
 * texts go into rr when it is not NULL (warm-up rounds pass NULL).
 */
static double
run_concurrent(Session *ss, int n, int per_session, int first, PGconn *mon, RunResult *rr)
{
	struct pollfd *pfd = xmalloc(sizeof(struct pollfd) * (n + 1));
	int			remaining = n;
	int			mon_busy = 0;
	double		t0 = now_s();
	double		next_sample = t0 + MONITOR_INTERVAL_S / 2;	/* mid-interval samples */

	for (int i = 0; i < n; i++)
	{
		ss[i].sent = 0;
		ss[i].limit = per_session;
		send_request(&ss[i], first + i * per_session);
	}
	while (remaining > 0)
	{
		double		t = now_s();
		int			timeout_ms = -1;
		int			nfd = 0;

		if (rr && mon && !mon_busy && t >= next_sample)
		{
			if (!PQsendQuery(mon, STATS_SQL))
				die("monitor: cannot send: %s", result_error(NULL, mon));
			mon_busy = 1;
			next_sample = t + MONITOR_INTERVAL_S;
		}
		if (rr && mon && !mon_busy)
			timeout_ms = (int) ceil((next_sample - t) * 1000.0);
		for (int i = 0; i < n; i++)
		{
			pfd[i].fd = PQsocket(ss[i].conn);
			pfd[i].events = ss[i].busy ? (POLLIN | (ss[i].flushing ? POLLOUT : 0)) : 0;
			pfd[i].revents = 0;
		}
		nfd = n;
		if (rr && mon)
		{
			pfd[n].fd = PQsocket(mon);
			pfd[n].events = mon_busy ? POLLIN : 0;
			pfd[n].revents = 0;
			nfd = n + 1;
		}
		if (poll(pfd, nfd, timeout_ms) < 0)
		{
			if (errno == EINTR)
				continue;
			die("poll: %s", strerror(errno));
		}
		for (int i = 0; i < n; i++)
		{
			Session    *s = &ss[i];

			if (!s->busy || pfd[i].revents == 0)
				continue;
			if (s->flushing)
			{
				int			flush = PQflush(s->conn);

				if (flush < 0)
					die("session %d: cannot send request: %s", s->index, result_error(NULL, s->conn));
				s->flushing = flush == 1;
			}
			if (!(pfd[i].revents & (POLLIN | POLLERR | POLLHUP)) || !collect(s))
				continue;
			if (rr)
			{
				rr->latency_ms[rr->n_latency++] = (now_s() - s->sent_at) * 1000.0;
				free(rr->texts[s->request]);
				rr->texts[s->request] = s->text;
				s->text = NULL;
			}
			if (s->sent < s->limit)
				send_request(s, first + i * per_session + s->sent);
			else
				remaining--;
		}
		if (rr && mon && mon_busy && pfd[n].revents)
			mon_busy = !collect_monitor(mon, rr);
	}
	/* Drain a sample still in flight so the monitoring session can be reused. */
	while (mon_busy)
	{
		struct pollfd one = {PQsocket(mon), POLLIN, 0};

		if (poll(&one, 1, -1) < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		mon_busy = !collect_monitor(mon, rr);
	}
	free(pfd);
	return now_s() - t0;
}

/* Runs every distinct prompt of the measured requests alone, one after another; returns their texts. */
static char **
run_serial_references(PGconn *conn, int total)
{
	int			n = n_prompts < total ? n_prompts : total;
	char	  **ref = xmalloc(sizeof(char *) * n);

	for (int p = 0; p < n; p++)
	{
		const char *values[2] = {prompts[p], params_of(p)};
		PGresult   *res = PQexecParams(conn, GENERATE_SQL, 2, NULL, values, NULL, NULL, 0);

		if (PQresultStatus(res) != PGRES_TUPLES_OK)
			die("serial request %d failed: %s", p, result_error(res, conn));
		ref[p] = xstrdup(PQgetisnull(res, 0, 0) ? "" : PQgetvalue(res, 0, 0));
		PQclear(res);
	}
	return ref;
}

/* --exec: runs the SQL text (one or more statements) and prints the last result's rows. */
static int
exec_and_print(void)
{
	PGconn	   *conn = connect_or_die("session");
	PGresult   *res;

	if (opt.wait_ready)
		wait_ready(conn);
	res = PQexec(conn, opt.exec_sql);
	if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)
		die("%s", result_error(res, conn));
	for (int r = 0; r < PQntuples(res); r++)
	{
		for (int c = 0; c < PQnfields(res); c++)
			printf("%s%s", c ? "\t" : "", PQgetisnull(res, r, c) ? "" : PQgetvalue(res, r, c));
		putchar('\n');
	}
	PQclear(res);
	PQfinish(conn);
	return fflush(stdout) == 0 ? 0 : 1;
}

/* Compares the concurrent texts with the serial ones; reports each mismatch on stderr. */
static int
count_mismatches(char **texts, int total, char **ref)
{
	int			mismatches = 0;

	for (int i = 0; i < total; i++)
	{
		const char *a = ref[i % n_prompts];
		const char *b = texts[i];
		size_t		k = 0;

		if (strcmp(a, b) == 0)
			continue;
		while (a[k] && a[k] == b[k])
			k++;
		if (mismatches < 10)
			fprintf(stderr, "gptoss_loadgen: mismatch: request %d (session %d, prompt %d): first "
					"difference at byte %zu (serial %zu bytes, concurrent %zu bytes)\n",
					i, i / opt.requests, i % n_prompts, k, strlen(a), strlen(b));
		mismatches++;
	}
	return mismatches;
}

/* qsort comparator for doubles. */
static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a, y = *(const double *) b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile q (0..100) of sorted values. */
static double
percentile(const double *sorted, int n, double q)
{
	int			rank = (int) ceil(q / 100.0 * n);

	if (n == 0)
		return 0.0;
	if (rank < 1)
		rank = 1;
	return sorted[rank - 1];
}

/* A growing string (SQL array literals). */
typedef struct
{
	char	   *s;
	size_t		len;
	size_t		cap;
} Buf;

/* Appends n bytes of s to b. */
static void
buf_add(Buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap)
	{
		char	   *bigger;

		b->cap = 2 * (b->len + n + 1);
		bigger = realloc(b->s, b->cap);
		if (!bigger)
			die("out of memory (%zu bytes)", b->cap);
		b->s = bigger;
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = '\0';
}

/* Appends s to b as one double-quoted element of an array literal. */
static void
buf_add_array_element(Buf *b, const char *s)
{
	buf_add(b, b->len > 1 ? ",\"" : "\"", b->len > 1 ? 2 : 1);
	for (const char *p = s; *p; p++)
	{
		if (*p == '"' || *p == '\\')
			buf_add(b, "\\", 1);
		buf_add(b, p, 1);
	}
	buf_add(b, "\"", 1);
}

/* Appends an integer element to the array literal b. */
static void
buf_add_int_element(Buf *b, int v)
{
	char		num[16];
	int			n = snprintf(num, sizeof(num), "%s%d", b->len > 1 ? "," : "", v);

	buf_add(b, num, (size_t) n);
}

/* Draws the serving run's lengths (the CLI's draw) and its totals. */
static void
serve_draw(void)
{
	int			n = opt.serve;

	serve.n = n;
	serve.input_len = xmalloc(sizeof(int32_t) * n);
	serve.output_len = xmalloc(sizeof(int32_t) * n);
	serve_lengths_draw(n, opt.input_len, opt.output_len, opt.lognormal, opt.length_seed,
					   serve.input_len, serve.output_len);
	for (int i = 0; i < n; i++)
	{
		serve.input_total += serve.input_len[i];
		serve.output_total += serve.output_len[i];
		if (serve.input_len[i] + serve.output_len[i] > serve.longest)
			serve.longest = serve.input_len[i] + serve.output_len[i];
	}
}

/*
 * Builds every session's share: request i goes to session i % sessions, its
 * prompt is input_len[i] random single-token words (request i's own).
 */
static void
serve_build_shares(int sessions)
{
	Buf		   *prompts = calloc(sessions, sizeof(Buf));
	Buf		   *inputs = calloc(sessions, sizeof(Buf));
	Buf		   *outputs = calloc(sessions, sizeof(Buf));

	if (!prompts || !inputs || !outputs)
		die("out of memory");
	serve.count = xmalloc(sizeof(int) * sessions);
	for (int s = 0; s < sessions; s++)
	{
		serve.count[s] = 0;
		buf_add(&prompts[s], "{", 1);
		buf_add(&inputs[s], "{", 1);
		buf_add(&outputs[s], "{", 1);
	}
	for (int i = 0; i < serve.n; i++)
	{
		int			s = i % sessions;
		char	   *prompt = build_word_prompt(serve.input_len[i], opt.prompt_seed, i);

		buf_add_array_element(&prompts[s], prompt);
		free(prompt);
		buf_add_int_element(&inputs[s], serve.input_len[i]);
		buf_add_int_element(&outputs[s], serve.output_len[i]);
		serve.count[s]++;
	}
	serve.prompts = xmalloc(sizeof(char *) * sessions);
	serve.inputs = xmalloc(sizeof(char *) * sessions);
	serve.outputs = xmalloc(sizeof(char *) * sessions);
	for (int s = 0; s < sessions; s++)
	{
		buf_add(&prompts[s], "}", 1);
		buf_add(&inputs[s], "}", 1);
		buf_add(&outputs[s], "}", 1);
		serve.prompts[s] = prompts[s].s;
		serve.inputs[s] = inputs[s].s;
		serve.outputs[s] = outputs[s].s;
	}
	free(prompts);
	free(inputs);
	free(outputs);
}

/* Writes the workload's fields of the JSON line (no braces). */
static void
serve_print_workload(void)
{
	printf("\"requests\": %d, \"lengths\": \"%s\", \"input_len\": %d, \"output_len\": %d, "
		   "\"length_seed\": %llu, \"drawn_input_tokens\": %lld, \"drawn_output_tokens\": %lld, "
		   "\"longest\": %d", serve.n, opt.lognormal ? "lognormal" : "fixed", opt.input_len,
		   opt.output_len, (unsigned long long) opt.length_seed, serve.input_total,
		   serve.output_total, serve.longest);
}

/* Dies unless the planner runs a share's statement through the GptossBatch node. */
static void
serve_check_plan(PGconn *conn)
{
	const char *values[3] = {serve.prompts[0], serve.outputs[0], SERVE_PARAMS};
	PGresult   *res = exec_or_die(conn, "EXPLAIN (COSTS OFF) " SERVE_SQL, 3, values);
	int			found = 0;

	for (int r = 0; r < PQntuples(res); r++)
		found |= strstr(PQgetvalue(res, r, 0), "GptossBatch") != NULL;
	PQclear(res);
	if (!found)
		die("the serving statement does not use the GptossBatch node (it would run row by row): "
			"is gptoss.batch_window 0 in the server's configuration?");
}

/*
 * Tokenizes every session's prompts (in parallel, one statement per session,
 * on blocking connections) and dies when one does not have its drawn length;
 * returns the token total.
 */
static long long
serve_check_prompts(Session *ss, int sessions)
{
	long long	tokens = 0;
	long long	wrong = 0;

	for (int s = 0; s < sessions; s++)
	{
		const char *values[2] = {serve.prompts[s], serve.inputs[s]};

		if (!PQsendQueryParams(ss[s].conn, TOKENIZE_SQL, 2, NULL, values, NULL, NULL, 0))
			die("session %d: cannot send: %s", s, result_error(NULL, ss[s].conn));
	}
	for (int s = 0; s < sessions; s++)
	{
		PGresult   *res;

		while ((res = PQgetResult(ss[s].conn)) != NULL)
		{
			if (PQresultStatus(res) != PGRES_TUPLES_OK)
				die("session %d: tokenizing the prompts failed: %s", s, result_error(res, ss[s].conn));
			tokens += atoll(PQgetvalue(res, 0, 0));
			wrong += atoll(PQgetvalue(res, 0, 1));
			PQclear(res);
		}
	}
	if (wrong > 0)
		die("%lld prompts do not tokenize to their drawn length (%lld tokens for %lld drawn): "
			"the model's tokenizer lacks the single-token words of the prompts", wrong, tokens,
			serve.input_total);
	return tokens;
}

/* Reads the worker's limits; dies when the longest request does not fit the context. */
static void
serve_check_limits(PGconn *conn, int *max_context, int *max_requests, int *max_batch)
{
	PGresult   *res = exec_or_die(conn, LIMITS_SQL, 0, NULL);

	*max_context = atoi(PQgetvalue(res, 0, 0));
	*max_requests = atoi(PQgetvalue(res, 0, 1));
	*max_batch = atoi(PQgetvalue(res, 0, 2));
	PQclear(res);
	if (serve.longest > *max_context)
		die("the longest request needs %d tokens of context, the worker has %d "
			"(raise gptoss.max_context)", serve.longest, *max_context);
	if (*max_requests < serve.n)
		fprintf(stderr, "gptoss_loadgen: warning: gptoss.max_requests = %d < %d requests: not all "
				"of them can be in flight at once\n", *max_requests, serve.n);
}

/* --serve: the serving-shaped run (see the header comment); returns the exit status. */
static int
serve_main(void)
{
	int			sessions = opt.sessions < opt.serve ? opt.sessions : opt.serve;
	int			max_context, max_requests, max_batch;
	long long	tokenized, completion, prompt_tokens;
	PGconn	   *ctl;
	PGconn	   *mon;
	Session    *ss;
	Stats		before, after;
	RunResult	rr;
	double		wall, mean_batch;
	const char *batch_scope;

	serve_draw();
	if (opt.dry_run)
	{
		printf("{\"mode\": \"serve-draw\", ");
		serve_print_workload();
		printf("}\n");
		return fflush(stdout) == 0 ? 0 : 1;
	}
	serve_build_shares(sessions);
	ctl = connect_or_die("control session");
	wait_ready(ctl);
	serve_check_limits(ctl, &max_context, &max_requests, &max_batch);
	serve_check_plan(ctl);
	ss = xmalloc(sizeof(Session) * sessions);
	for (int s = 0; s < sessions; s++)
	{
		char		set[64];

		memset(&ss[s], 0, sizeof(Session));
		ss[s].index = s;
		ss[s].conn = connect_or_die("client session");
		/* the whole share in flight at once (65536: the GUC's maximum) */
		snprintf(set, sizeof(set), "SET gptoss.batch_window = %d",
				 serve.count[s] < 65536 ? serve.count[s] : 65536);
		PQclear(exec_or_die(ss[s].conn, set, 0, NULL));
	}
	tokenized = serve_check_prompts(ss, sessions);
	for (int s = 0; s < sessions; s++)
		if (PQsetnonblocking(ss[s].conn, 1) != 0)
			die("session %d: cannot switch to non-blocking mode", s);
	mon = connect_or_die("monitor session");

	memset(&rr, 0, sizeof(rr));
	rr.latency_ms = xmalloc(sizeof(double) * sessions);
	rr.texts = xmalloc(sizeof(char *) * sessions);
	for (int s = 0; s < sessions; s++)
		rr.texts[s] = NULL;
	before = read_stats(ctl);
	wall = run_concurrent(ss, sessions, 1, 0, mon, &rr);
	after = wait_idle(ctl);

	if (after.failed != before.failed)
		die("gptoss_stats counts %lld failed requests during the run", after.failed - before.failed);
	completion = after.completion_tokens - before.completion_tokens;
	prompt_tokens = after.prompt_tokens - before.prompt_tokens;
	if (after.total - before.total != serve.n)
		fprintf(stderr, "gptoss_loadgen: warning: gptoss_stats counts %lld requests for the run's "
				"%d (another client is using the server?)\n", after.total - before.total, serve.n);
	if (completion != serve.output_total || prompt_tokens != serve.input_total)
		fprintf(stderr, "gptoss_loadgen: warning: the worker counts %lld prompt + %lld completion "
				"tokens, the draw %lld + %lld\n", prompt_tokens, completion, serve.input_total,
				serve.output_total);
	mean_batch = run_mean_batch(&before, &after, &batch_scope);

	qsort(rr.latency_ms, rr.n_latency, sizeof(double), cmp_double);
	printf("{\"mode\": \"serve\", \"label\": ");
	print_json_string(stdout, opt.label);
	printf(", \"sessions\": %d, ", sessions);
	serve_print_workload();
	printf(", \"tokenized_prompt_tokens\": %lld, \"prompt_tokens\": %lld, \"completion_tokens\": %lld, "
		   "\"wall_s\": %.3f, \"tok_s\": %.2f, \"total_tok_s\": %.2f, \"req_s\": %.3f, "
		   "\"statement_ms_min\": %.1f, \"statement_ms_max\": %.1f, \"ttft_ms_mean\": null, "
		   "\"mean_batch_size\": %.3f, \"mean_batch_size_scope\": \"%s\", \"active_mean\": ",
		   tokenized, prompt_tokens, completion, wall,
		   wall > 0 ? (double) completion / wall : 0.0,
		   wall > 0 ? (double) (prompt_tokens + completion) / wall : 0.0,
		   wall > 0 ? serve.n / wall : 0.0,
		   rr.latency_ms[0], rr.latency_ms[rr.n_latency - 1], mean_batch, batch_scope);
	if (rr.active_samples > 0)
		printf("%.3f", rr.active_sum / rr.active_samples);
	else
		printf("null");
	printf(", \"max_batch_size\": %d, \"max_requests\": %d, \"max_context\": %d, \"params\": ",
		   max_batch, max_requests, max_context);
	print_json_string(stdout, SERVE_PARAMS);
	printf("}\n");
	fflush(stdout);

	for (int s = 0; s < sessions; s++)
		PQfinish(ss[s].conn);
	PQfinish(mon);
	PQfinish(ctl);
	return 0;
}

/* Prints the usage text. */
static void
usage(FILE *f)
{
	fputs("usage: gptoss_loadgen [options]\n"
		  "  --dsn STR            libpq connection string (default: PG* environment)\n"
		  "  --sessions N         concurrent sessions (default 1)\n"
		  "  --requests R         requests per session (default 1)\n"
		  "  --warmup W           unmeasured concurrent rounds first (default 0)\n"
		  "  --prompt TEXT        the same prompt for every request\n"
		  "  --prompt-file FILE   prompts, one per line, used in turn\n"
		  "  --prompt-len N       otherwise: N random common words per request (default 128)\n"
		  "  --prompt-seed S      seed of the random prompts (default 1)\n"
		  "  --max-tokens N       (default 128)\n"
		  "  --min-tokens N       each request asks for N..max-tokens (spread), not always max\n"
		  "  --temperature T      (default 0: greedy)\n"
		  "  --top-p P, --seed S, --raw, --ignore-eos\n"
		  "  --params JSON        params jsonb verbatim (replaces the five options above)\n"
		  "  --check              run each prompt alone first; concurrent texts must be identical\n"
		  "  --ready-timeout S    seconds to wait for gptoss_status() state 'ready' (default 600)\n"
		  "  --label STR          copied into the JSON output\n"
		  "  --exec SQL           only run SQL and print its rows tab-separated (no load)\n"
		  "  --wait-ready         with --exec: wait for state 'ready' first\n"
		  "serving mode (the prompt and generation options above do not apply):\n"
		  "  --serve N            N requests at once, dealt to --sessions (default 64), each\n"
		  "                       session's share in one statement; greedy, raw, ignore_eos\n"
		  "  --input-len N        prompt tokens (default 128; the mean when log-normal)\n"
		  "  --output-len N       generated tokens (default 128; the mean when log-normal)\n"
		  "  --lengths fixed|lognormal  log-normal: sigma 1, clipped to [4, 2048], the draw of\n"
		  "                       gptoss bench --requests (default fixed)\n"
		  "  --length-seed S      seed of the log-normal draw (default 42, as gptoss bench)\n"
		  "  --dry-run            print the drawn totals and the longest request, connect to nothing\n", f);
}

/* Parses a positive (or non-negative when min is 0) integer option. */
static int
parse_int(const char *name, const char *s, int min)
{
	char	   *end;
	long		v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || end == s || v < min || v > 1000000000)
		die("--%s: expected an integer >= %d, got \"%s\"", name, min, s);
	return (int) v;
}

/* Parses a number option. */
static double
parse_double(const char *name, const char *s)
{
	char	   *end;
	double		v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || *end || end == s || !isfinite(v))
		die("--%s: expected a number, got \"%s\"", name, s);
	return v;
}

/* Fills opt from argv. */
static void
parse_options(int argc, char **argv)
{
	enum
	{
		O_DSN = 256, O_SESSIONS, O_REQUESTS, O_WARMUP, O_PROMPT, O_PROMPT_FILE, O_PROMPT_LEN,
		O_PROMPT_SEED, O_MAX_TOKENS, O_MIN_TOKENS, O_TEMPERATURE, O_TOP_P, O_SEED, O_RAW, O_IGNORE_EOS,
		O_PARAMS, O_CHECK, O_READY_TIMEOUT, O_LABEL, O_EXEC, O_WAIT_READY, O_SERVE, O_INPUT_LEN,
		O_OUTPUT_LEN, O_LENGTHS, O_LENGTH_SEED, O_DRY_RUN, O_HELP
	};
	static const struct option longopts[] = {
		{"dsn", required_argument, NULL, O_DSN},
		{"sessions", required_argument, NULL, O_SESSIONS},
		{"requests", required_argument, NULL, O_REQUESTS},
		{"warmup", required_argument, NULL, O_WARMUP},
		{"prompt", required_argument, NULL, O_PROMPT},
		{"prompt-file", required_argument, NULL, O_PROMPT_FILE},
		{"prompt-len", required_argument, NULL, O_PROMPT_LEN},
		{"prompt-seed", required_argument, NULL, O_PROMPT_SEED},
		{"max-tokens", required_argument, NULL, O_MAX_TOKENS},
		{"min-tokens", required_argument, NULL, O_MIN_TOKENS},
		{"temperature", required_argument, NULL, O_TEMPERATURE},
		{"top-p", required_argument, NULL, O_TOP_P},
		{"seed", required_argument, NULL, O_SEED},
		{"raw", no_argument, NULL, O_RAW},
		{"ignore-eos", no_argument, NULL, O_IGNORE_EOS},
		{"params", required_argument, NULL, O_PARAMS},
		{"check", no_argument, NULL, O_CHECK},
		{"ready-timeout", required_argument, NULL, O_READY_TIMEOUT},
		{"label", required_argument, NULL, O_LABEL},
		{"exec", required_argument, NULL, O_EXEC},
		{"wait-ready", no_argument, NULL, O_WAIT_READY},
		{"serve", required_argument, NULL, O_SERVE},
		{"input-len", required_argument, NULL, O_INPUT_LEN},
		{"output-len", required_argument, NULL, O_OUTPUT_LEN},
		{"lengths", required_argument, NULL, O_LENGTHS},
		{"length-seed", required_argument, NULL, O_LENGTH_SEED},
		{"dry-run", no_argument, NULL, O_DRY_RUN},
		{"help", no_argument, NULL, O_HELP},
		{NULL, 0, NULL, 0}
	};
	int			c;
	int			longindex = 0;
	int			sessions_given = 0;
	const char *session_option = NULL;	/* an option of the session mode that was given */
	const char *serve_option = NULL;	/* an option of the serving mode that was given */

	opt.dsn = "";
	opt.sessions = 1;
	opt.requests = 1;
	opt.prompt_len = 128;
	opt.prompt_seed = 1;
	opt.max_tokens = 128;
	opt.top_p = -1;
	opt.ready_timeout = 600;
	opt.label = "";
	opt.input_len = 128;
	opt.output_len = 128;
	opt.length_seed = 42;
	while ((c = getopt_long(argc, argv, "", longopts, &longindex)) != -1)
	{
		switch (c)
		{
			case O_DSN: opt.dsn = optarg; break;
			case O_SESSIONS:
				opt.sessions = parse_int("sessions", optarg, 1);
				sessions_given = 1;
				break;
			case O_REQUESTS: opt.requests = parse_int("requests", optarg, 1); break;
			case O_WARMUP: opt.warmup = parse_int("warmup", optarg, 0); break;
			case O_PROMPT: opt.prompt = optarg; break;
			case O_PROMPT_FILE: opt.prompt_file = optarg; break;
			case O_PROMPT_LEN: opt.prompt_len = parse_int("prompt-len", optarg, 1); break;
			case O_PROMPT_SEED: opt.prompt_seed = (uint64_t) parse_int("prompt-seed", optarg, 0); break;
			case O_MAX_TOKENS: opt.max_tokens = parse_int("max-tokens", optarg, 1); break;
			case O_MIN_TOKENS: opt.min_tokens = parse_int("min-tokens", optarg, 1); break;
			case O_TEMPERATURE: opt.temperature = parse_double("temperature", optarg); break;
			case O_TOP_P: opt.top_p = parse_double("top-p", optarg); break;
			case O_SEED:
				opt.seed = parse_int("seed", optarg, 0);
				opt.has_seed = 1;
				break;
			case O_RAW: opt.raw = 1; break;
			case O_IGNORE_EOS: opt.ignore_eos = 1; break;
			case O_PARAMS: opt.params = optarg; break;
			case O_CHECK: opt.check = 1; break;
			case O_READY_TIMEOUT: opt.ready_timeout = parse_double("ready-timeout", optarg); break;
			case O_LABEL: opt.label = optarg; break;
			case O_EXEC: opt.exec_sql = optarg; break;
			case O_WAIT_READY: opt.wait_ready = 1; break;
			case O_SERVE: opt.serve = parse_int("serve", optarg, 1); break;
			case O_INPUT_LEN:
				opt.input_len = parse_int("input-len", optarg, 1);
				serve_option = "--input-len";
				break;
			case O_OUTPUT_LEN:
				opt.output_len = parse_int("output-len", optarg, 1);
				serve_option = "--output-len";
				break;
			case O_LENGTHS:
				if (strcmp(optarg, "lognormal") != 0 && strcmp(optarg, "fixed") != 0)
					die("--lengths: expected fixed or lognormal, got \"%s\"", optarg);
				opt.lognormal = strcmp(optarg, "lognormal") == 0;
				serve_option = "--lengths";
				break;
			case O_LENGTH_SEED:
				opt.length_seed = (uint64_t) parse_int("length-seed", optarg, 0);
				serve_option = "--length-seed";
				break;
			case O_DRY_RUN:
				opt.dry_run = 1;
				serve_option = "--dry-run";
				break;
			case O_HELP: usage(stdout); exit(0);
			default: usage(stderr); exit(1);
		}
		switch (c)
		{
			case O_REQUESTS: case O_WARMUP: case O_PROMPT: case O_PROMPT_FILE: case O_PROMPT_LEN:
			case O_MAX_TOKENS: case O_MIN_TOKENS: case O_TEMPERATURE: case O_TOP_P: case O_SEED:
			case O_RAW: case O_IGNORE_EOS: case O_PARAMS: case O_CHECK:
				session_option = longopts[longindex].name;
				break;
		}
	}
	if (optind < argc)
		die("unexpected argument \"%s\" (see --help)", argv[optind]);
	if (opt.serve)
	{
		if (session_option)
			die("--%s does not go with --serve (see --help)", session_option);
		if (opt.exec_sql)
			die("--exec does not go with --serve");
		if (!sessions_given)
			opt.sessions = 64;
		if (opt.lognormal && (opt.input_len <= SERVE_LENGTH_MIN || opt.input_len >= SERVE_LENGTH_MAX ||
							  opt.output_len <= SERVE_LENGTH_MIN || opt.output_len >= SERVE_LENGTH_MAX))
			die("log-normal mean lengths must lie between %d and %d tokens", SERVE_LENGTH_MIN,
				SERVE_LENGTH_MAX);
		return;
	}
	if (serve_option)
		die("%s goes with --serve", serve_option);
	if (opt.prompt && opt.prompt_file)
		die("--prompt and --prompt-file exclude each other");
	if (opt.min_tokens > opt.max_tokens)
		die("--min-tokens must not exceed --max-tokens");
	if (opt.min_tokens > 0 && (opt.params || opt.check))
		die("--min-tokens excludes --params and --check");
	if (opt.temperature < 0)
		die("--temperature must be >= 0");
	if (opt.check && !opt.params && opt.temperature != 0 && !opt.has_seed)
		die("--check compares outputs: it needs --temperature 0 or a --seed");
}

int
main(int argc, char **argv)
{
	int			total;
	Session    *ss;
	PGconn	   *ctl;
	PGconn	   *mon;
	Stats		before, after;
	RunResult	rr;
	char	  **ref = NULL;
	int			mismatches = 0;
	double		wall;
	double		mean_batch;
	const char *batch_scope;
	long long	completion, prompt_tokens, expected;

	parse_options(argc, argv);
	if (opt.exec_sql)
		return exec_and_print();
	if (opt.serve)
		return serve_main();
	if ((long long) opt.sessions * opt.requests > 100000000)
		die("--sessions times --requests is too large");
	total = opt.sessions * opt.requests;
	build_prompts(total + opt.warmup * opt.sessions);
	build_params();

	ctl = connect_or_die("control session");
	wait_ready(ctl);
	mon = connect_or_die("monitor session");
	ss = xmalloc(sizeof(Session) * opt.sessions);
	for (int i = 0; i < opt.sessions; i++)
	{
		memset(&ss[i], 0, sizeof(Session));
		ss[i].index = i;
		ss[i].conn = connect_or_die("client session");
		if (PQsetnonblocking(ss[i].conn, 1) != 0)
			die("session %d: cannot switch to non-blocking mode", i);
	}
	if (opt.check)
		ref = run_serial_references(ctl, total);
	/* Warm-up requests have indices past the run's, so their prompts are not the run's. */
	for (int w = 0; w < opt.warmup; w++)
		run_concurrent(ss, opt.sessions, 1, total + w * opt.sessions, NULL, NULL);
	if (opt.warmup > 0)
		wait_idle(ctl);

	memset(&rr, 0, sizeof(rr));
	rr.latency_ms = xmalloc(sizeof(double) * total);
	rr.texts = xmalloc(sizeof(char *) * total);
	for (int i = 0; i < total; i++)
		rr.texts[i] = NULL;
	before = read_stats(ctl);
	wall = run_concurrent(ss, opt.sessions, opt.requests, 0, mon, &rr);
	after = wait_idle(ctl);

	if (after.failed != before.failed)
		die("gptoss_stats counts %lld failed requests during the run",
			after.failed - before.failed);
	completion = after.completion_tokens - before.completion_tokens;
	prompt_tokens = after.prompt_tokens - before.prompt_tokens;
	if (after.total - before.total != total)
		fprintf(stderr, "gptoss_loadgen: warning: gptoss_stats counts %lld requests for the run's "
				"%d (another client is using the server?)\n", after.total - before.total, total);
	expected = 0;
	for (int i = 0; i < total; i++)
		expected += max_tokens_of(i);
	if (opt.ignore_eos && !opt.params && completion != expected)
		fprintf(stderr, "gptoss_loadgen: warning: %lld completion tokens, expected %lld for %d "
				"requests with --ignore-eos (max_tokens clamped by the context?)\n", completion,
				expected, total);
	mean_batch = run_mean_batch(&before, &after, &batch_scope);
	if (opt.check)
		mismatches = count_mismatches(rr.texts, total, ref);

	qsort(rr.latency_ms, rr.n_latency, sizeof(double), cmp_double);
	printf("{\"label\": ");
	print_json_string(stdout, opt.label);
	printf(", \"sessions\": %d, \"requests\": %d, \"completion_tokens\": %lld, "
		   "\"prompt_tokens\": %lld, \"wall_s\": %.3f, \"tok_s\": %.2f, \"req_s\": %.3f, "
		   "\"latency_ms_p50\": %.1f, \"latency_ms_p95\": %.1f, \"latency_ms_max\": %.1f, "
		   "\"mean_batch_size\": %.3f, \"mean_batch_size_scope\": \"%s\", \"active_mean\": ",
		   opt.sessions, total, completion, prompt_tokens, wall,
		   wall > 0 ? (double) completion / wall : 0.0, wall > 0 ? total / wall : 0.0,
		   percentile(rr.latency_ms, rr.n_latency, 50), percentile(rr.latency_ms, rr.n_latency, 95),
		   rr.n_latency ? rr.latency_ms[rr.n_latency - 1] : 0.0, mean_batch, batch_scope);
	/* No sample when the run was shorter than half a sampling period. */
	if (rr.active_samples > 0)
		printf("%.3f", rr.active_sum / rr.active_samples);
	else
		printf("null");
	printf(", \"mismatches\": %d, \"checked\": %s, \"params\": ", mismatches,
		   opt.check ? "true" : "false");
	if (opt.min_tokens > 0)
	{
		char		shown[600];

		snprintf(shown, sizeof(shown), "{\"max_tokens\": \"%d..%d\"%s", opt.min_tokens,
				 opt.max_tokens, params_rest);
		print_json_string(stdout, shown);
	}
	else
		print_json_string(stdout, params_of(0));
	printf("}\n");
	fflush(stdout);

	for (int i = 0; i < opt.sessions; i++)
		PQfinish(ss[i].conn);
	PQfinish(mon);
	PQfinish(ctl);
	return mismatches > 0 ? 3 : 0;
}
