/*
 * bench_serve.c: `gptoss bench --requests N`, a serving-shaped benchmark.
 *
 * All N requests are submitted before the first step (random token prompts,
 * greedy, ignore_eos, each generating exactly its output length), and the
 * engine runs them with continuous batching, as a server would with N
 * clients that all send at once.  Reported as serving benchmarks report it:
 *   total tok/s  = (input + output tokens) / (last token - first submission)
 *   output tok/s = output tokens / the same time
 *   TTFT         = first token - first submission, per request
 *   ITL          = gap between a request's consecutive tokens (a step that
 *                  gives a request k tokens counts k gaps of 1/k of it)
 *   mean batch   = sequences per engine step
 * Times are taken after each engine step, so they are step granular.
 *
 * Log-normal lengths: serve_lengths.c (shared with the SQL load generator,
 * so SQL runs can submit the same requests); the report gives the totals
 * actually drawn.
 *
 * `gptoss bench --arrivals K`: does a long prompt joining a running batch
 * stall its decode steps?  `running` sequences decode throughout; after a
 * warm-up (their prompts, one arrival, a few decode steps) the measured
 * window starts, and before every arrive_every-th step a new request with a
 * random arrival_len-token prompt arrives (generating one token), K in all.
 * The window lasts K * arrive_every steps, longer only while an arrival still
 * waits for its token, so runs with different prefill chunks do the same
 * work.  Reported: the running sequences' inter-token latency (every step
 * gives each of them one token, so its samples are the gaps between step
 * ends), the step times with and without prompt tokens, and the arrivals'
 * time to first token (from submission, in ms and in steps).
 */
#include "bench_serve.h"
#include "serve_lengths.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int
serve_workload_draw(serve_workload *w, int n_requests, int input_mean, int output_mean,
					bool lognormal, uint64_t seed)
{
	memset(w, 0, sizeof(*w));
	w->n_requests = n_requests;
	w->seed = seed;
	w->lengths = lognormal ? "lognormal" : "fixed";
	w->input_len = malloc((size_t) n_requests * sizeof(int32_t));
	w->output_len = malloc((size_t) n_requests * sizeof(int32_t));
	if (!w->input_len || !w->output_len)
	{
		serve_workload_free(w);
		return -1;
	}
	serve_lengths_draw(n_requests, input_mean, output_mean, lognormal, seed, w->input_len,
					   w->output_len);
	return 0;
}

void
serve_workload_free(serve_workload *w)
{
	free(w->input_len);
	free(w->output_len);
	w->input_len = w->output_len = NULL;
}

int
serve_workload_max_context(const serve_workload *w)
{
	int			m = 0;

	for (int i = 0; i < w->n_requests; i++)
		if (w->input_len[i] + w->output_len[i] > m)
			m = w->input_len[i] + w->output_len[i];
	return m;
}

/* qsort order of doubles. */
static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a,
				y = *(const double *) b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile p (0-100] of sorted v[n]; 0 when n is 0. */
static double
percentile(const double *v, size_t n, double p)
{
	size_t		k;

	if (n == 0)
		return 0.0;
	k = (size_t) ceil(p / 100.0 * (double) n);
	return v[k > 0 ? k - 1 : 0];
}

/* Mean of v[n]; 0 when n is 0. */
static double
mean_of(const double *v, size_t n)
{
	double		s = 0;

	for (size_t i = 0; i < n; i++)
		s += v[i];
	return n ? s / (double) n : 0.0;
}

/* Per-request progress of a run. */
typedef struct serve_state
{
	int64_t    *ids;			/* [n] engine request ids */
	int		   *seen;			/* [n] tokens seen so far */
	double	   *last;			/* [n] time of the latest token */
	int		   *pending;		/* [n_pending] requests not finished yet */
	int			n_pending;
	double	   *ttft;			/* [n] seconds */
	double	   *itl;			/* [n_itl] seconds */
	size_t		n_itl;
	int64_t		input_tokens;
	int64_t		output_tokens;
	double		t_last;
} serve_state;

/* Records what the step just run gave each pending request; releases finished ones.  0 or -1. */
static int
serve_collect(gptoss_engine *eng, const serve_workload *w, serve_state *st, double t0, double now,
			  gptoss_error *err)
{
	int			kept = 0;

	for (int k = 0; k < st->n_pending; k++)
	{
		int			i = st->pending[k];
		gptoss_result res;

		if (gptoss_engine_result(eng, st->ids[i], &res) < 0)
			return gptoss_errorf(err, "request %d vanished", i);
		if (res.n_tokens > st->seen[i])
		{
			if (st->seen[i] == 0)
				st->ttft[i] = now - t0;
			else
			{
				double		gap = (now - st->last[i]) / (res.n_tokens - st->seen[i]);

				for (int j = st->seen[i]; j < res.n_tokens; j++)
					st->itl[st->n_itl++] = gap;
			}
			st->seen[i] = res.n_tokens;
			st->last[i] = now;
			st->t_last = now;
		}
		if (res.finish_reason == GPTOSS_FINISH_NONE)
		{
			st->pending[kept++] = i;
			continue;
		}
		if (res.finish_reason == GPTOSS_FINISH_ERROR)
			return gptoss_errorf(err, "request %d failed: %s", i, res.error);
		if (res.completion_tokens != w->output_len[i] || res.prompt_tokens != w->input_len[i])
			return gptoss_errorf(err, "request %d ran %d + %d tokens instead of %d + %d", i,
								 res.prompt_tokens, res.completion_tokens, w->input_len[i],
								 w->output_len[i]);
		st->input_tokens += res.prompt_tokens;
		st->output_tokens += res.completion_tokens;
		gptoss_engine_release(eng, st->ids[i]);
		st->ids[i] = -1;
	}
	st->n_pending = kept;
	return 0;
}

/* Frees a run's bookkeeping. */
static void
serve_state_free(serve_state *st)
{
	free(st->ids);
	free(st->seen);
	free(st->last);
	free(st->pending);
	free(st->ttft);
	free(st->itl);
}

/* Prints the run's JSON line. */
static void
serve_report(gptoss_engine *eng, const serve_workload *w, const serve_settings *s, serve_state *st,
			 double wall, double mean_batch, int64_t steps)
{
	gptoss_backend *be = gptoss_engine_backend(eng);
	gptoss_backend_info info;

	memset(&info, 0, sizeof(info));
	be->get_info(be, &info);
	qsort(st->ttft, (size_t) w->n_requests, sizeof(double), cmp_double);
	qsort(st->itl, st->n_itl, sizeof(double), cmp_double);
	printf("{\"mode\":\"serve\",\"device\":\"%s\",\"requests\":%d,\"lengths\":\"%s\","
		   "\"input_tokens\":%lld,\"output_tokens\":%lld,\"wall_s\":%.3f,"
		   "\"total_tok_s\":%.1f,\"output_tok_s\":%.1f,"
		   "\"ttft_ms_mean\":%.2f,\"ttft_ms_p50\":%.2f,\"ttft_ms_p99\":%.2f,"
		   "\"itl_ms_mean\":%.3f,\"itl_ms_p50\":%.3f,\"itl_ms_p99\":%.3f,"
		   "\"mean_batch\":%.1f,\"steps\":%lld,\"max_seqs\":%d,\"max_context\":%d,"
		   "\"prefill_chunk\":%d,\"max_step_tokens\":%d,\"peak_mem_bytes\":%lld,\"weight_bytes\":%lld}\n",
		   info.device_name, w->n_requests, w->lengths,
		   (long long) st->input_tokens, (long long) st->output_tokens, wall,
		   wall > 0 ? (double) (st->input_tokens + st->output_tokens) / wall : 0.0,
		   wall > 0 ? (double) st->output_tokens / wall : 0.0,
		   mean_of(st->ttft, (size_t) w->n_requests) * 1e3,
		   percentile(st->ttft, (size_t) w->n_requests, 50) * 1e3,
		   percentile(st->ttft, (size_t) w->n_requests, 99) * 1e3,
		   mean_of(st->itl, st->n_itl) * 1e3, percentile(st->itl, st->n_itl, 50) * 1e3,
		   percentile(st->itl, st->n_itl, 99) * 1e3,
		   mean_batch, (long long) steps, s->max_seqs, s->max_context, s->prefill_chunk,
		   s->max_step_tokens, (long long) info.peak_memory_bytes, (long long) info.weight_bytes);
	fflush(stdout);
}

/* Fills prompt[n] with random ordinary token ids drawn from the stream *seed. */
static void
random_prompt(int32_t *prompt, int n, uint64_t *seed)
{
	for (int j = 0; j < n; j++)
	{
		*seed = gptoss_mix64(*seed);
		prompt[j] = (int32_t) (*seed % GPTOSS_TOK_STARTOFTEXT);
	}
}

int
serve_run(gptoss_engine *eng, const serve_workload *w, const serve_settings *s, gptoss_error *err)
{
	int			n = w->n_requests;
	size_t		total_out = 0;
	int			max_in = 1;
	int32_t    *prompt;
	serve_state st;
	gptoss_engine_stats before,
				after;
	gptoss_gen_params p;
	uint64_t	seed = w->seed;
	double		t0;
	int			rc = 0;

	if (n < 1)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "no requests to run");
	memset(&st, 0, sizeof(st));
	for (int i = 0; i < n; i++)
	{
		total_out += (size_t) w->output_len[i];
		if (w->input_len[i] > max_in)
			max_in = w->input_len[i];
	}
	prompt = malloc((size_t) max_in * sizeof(int32_t));
	st.ids = malloc((size_t) n * sizeof(int64_t));
	st.seen = calloc((size_t) n, sizeof(int));
	st.last = calloc((size_t) n, sizeof(double));
	st.pending = malloc((size_t) n * sizeof(int));
	st.ttft = calloc((size_t) n, sizeof(double));
	st.itl = malloc((total_out > 0 ? total_out : 1) * sizeof(double));
	if (!prompt || !st.ids || !st.seen || !st.last || !st.pending || !st.ttft || !st.itl)
	{
		free(prompt);
		serve_state_free(&st);
		return gptoss_errorf(err, "out of memory for %d requests", n);
	}
	for (int i = 0; i < n; i++)
		st.ids[i] = -1;
	gptoss_gen_params_default(&p);
	p.raw = true;
	p.ignore_eos = true;
	p.temperature = 0;
	gptoss_engine_get_stats(eng, &before);

	t0 = gptoss_now();
	for (int i = 0; i < n && rc == 0; i++)
	{
		random_prompt(prompt, w->input_len[i], &seed);
		p.max_tokens = w->output_len[i];
		st.ids[i] = gptoss_engine_submit(eng, prompt, w->input_len[i], &p, err);
		if (st.ids[i] < 0)
			rc = -1;
		else
			st.pending[st.n_pending++] = i;
	}
	while (rc == 0 && st.n_pending > 0)
	{
		if (gptoss_engine_step(eng, err) < 0)
			rc = -1;
		else
			rc = serve_collect(eng, w, &st, t0, gptoss_now(), err);
		if (rc == 0 && st.n_pending > 0 && gptoss_engine_active(eng) == 0)
			rc = gptoss_errorf(err, "%d requests never finished", st.n_pending);
	}
	gptoss_engine_get_stats(eng, &after);
	if (rc == 0)
	{
		int64_t		steps = after.steps - before.steps;

		serve_report(eng, w, s, &st, st.t_last - t0,
					 steps > 0 ? (double) (after.step_sequences - before.step_sequences) / steps : 0.0,
					 steps);
	}
	for (int i = 0; i < n; i++)
		if (st.ids[i] >= 0)
			gptoss_engine_release(eng, st.ids[i]);
	free(prompt);
	serve_state_free(&st);
	return rc;
}

/* Decode steps run after the warm-up arrival, before the measured window. */
#define ITL_WARM_DECODE_STEPS 4

/* Steps a prompt of n tokens takes in chunks of at most chunk tokens. */
static int64_t
chunks_of(int n, int chunk)
{
	return ((int64_t) n + chunk - 1) / chunk;
}

/*
 * Most steps of the measured window: the arrival schedule, then every
 * arrival's chunks one after another (the oldest prompt's chunk always fits
 * a step's budget, so some arrival always advances).
 */
static int64_t
itl_window_bound(const itl_workload *w, int chunk)
{
	return (int64_t) w->arrivals * (w->arrive_every + chunks_of(w->arrival_len, chunk));
}

int
itl_workload_max_context(const itl_workload *w, int prefill_chunk)
{
	/* warm-up: the running prompts one after another, one arrival, the decode steps */
	int64_t		warm = w->running * chunks_of(w->prompt_len, prefill_chunk) +
		chunks_of(w->arrival_len, prefill_chunk) + ITL_WARM_DECODE_STEPS;
	int64_t		need = w->prompt_len + warm + itl_window_bound(w, prefill_chunk) + 1;

	if (need < (int64_t) w->arrival_len + 1)
		need = (int64_t) w->arrival_len + 1;
	return need > INT_MAX ? INT_MAX : (int) need;
}

/* Progress and samples of an inter-token latency run. */
typedef struct itl_state
{
	int64_t    *running_ids;	/* [running] engine request ids */
	int		   *seen;			/* [running] tokens seen so far */
	double	   *last;			/* [running] time of the latest token */
	int64_t    *arrival_ids;	/* [arrivals] engine request ids; -1 before and after */
	double	   *submitted;		/* [arrivals] submission time */
	int64_t    *submit_step;	/* [arrivals] window step it joined */
	double	   *ttft;			/* [arrivals] seconds */
	int			answered;		/* arrivals that got their token */
	int64_t		ttft_steps_max; /* most steps an arrival took to its token */
	double	   *itl;			/* [n_itl] seconds */
	size_t		n_itl;
	double	   *decode_steps;	/* [n_decode_steps] seconds of steps without prompt tokens */
	size_t		n_decode_steps;
	double	   *prefill_steps;	/* [n_prefill_steps] seconds of steps with prompt tokens */
	size_t		n_prefill_steps;
	int32_t    *prompt;			/* [max(prompt_len, arrival_len)] scratch */
	uint64_t	seed;			/* stream of the prompts' token ids */
} itl_state;

/* Frees an inter-token latency run's bookkeeping. */
static void
itl_state_free(itl_state *st)
{
	free(st->running_ids);
	free(st->seen);
	free(st->last);
	free(st->arrival_ids);
	free(st->submitted);
	free(st->submit_step);
	free(st->ttft);
	free(st->itl);
	free(st->decode_steps);
	free(st->prefill_steps);
	free(st->prompt);
}

/* Submits a greedy raw request over a fresh random n-token prompt; its id, or -1 with err. */
static int64_t
itl_submit(gptoss_engine *eng, itl_state *st, int n, int max_tokens, gptoss_error *err)
{
	gptoss_gen_params p;

	gptoss_gen_params_default(&p);
	p.raw = true;
	p.ignore_eos = true;
	p.temperature = 0;
	p.max_tokens = max_tokens;
	random_prompt(st->prompt, n, &st->seed);
	return gptoss_engine_submit(eng, st->prompt, n, &p, err);
}

/* Runs one engine step that must find work; 0 or -1 with err. */
static int
itl_step(gptoss_engine *eng, gptoss_error *err)
{
	int			active = gptoss_engine_step(eng, err);

	if (active < 0)
		return -1;
	if (active == 0)
		return gptoss_errorf(err, "the running sequences ended during the run");
	return 0;
}

/* Finish reason of request id (GPTOSS_FINISH_ERROR with *res's error for an unknown one). */
static gptoss_finish_reason
itl_result(gptoss_engine *eng, int64_t id, gptoss_result *res)
{
	if (gptoss_engine_result(eng, id, res) < 0)
	{
		res->error = "request vanished";
		return GPTOSS_FINISH_ERROR;
	}
	return res->finish_reason;
}

/*
 * Warm-up outside the measured window: every running sequence through its
 * prompt, one arrival through its prompt (the long prefill's first
 * allocations), then a few decode steps (the decode batch's graphs).
 */
static int
itl_warm_up(gptoss_engine *eng, const itl_workload *w, itl_state *st, int max_context,
			gptoss_error *err)
{
	gptoss_result res;
	int64_t		id;
	int			decoding = 0;

	for (int i = 0; i < w->running; i++)
	{
		st->running_ids[i] = itl_submit(eng, st, w->prompt_len, max_context - w->prompt_len, err);
		if (st->running_ids[i] < 0)
			return -1;
	}
	while (decoding < w->running)
	{
		if (itl_step(eng, err) < 0)
			return -1;
		decoding = 0;
		for (int i = 0; i < w->running; i++)
			decoding += itl_result(eng, st->running_ids[i], &res) == GPTOSS_FINISH_NONE &&
				res.n_tokens > 0;
	}
	id = itl_submit(eng, st, w->arrival_len, 1, err);
	if (id < 0)
		return -1;
	do
	{
		if (itl_step(eng, err) < 0)
		{
			gptoss_engine_release(eng, id);
			return -1;
		}
	} while (itl_result(eng, id, &res) == GPTOSS_FINISH_NONE);
	gptoss_engine_release(eng, id);
	if (res.finish_reason == GPTOSS_FINISH_ERROR)
		return gptoss_errorf(err, "warm-up arrival failed: %s", res.error);
	for (int k = 0; k < ITL_WARM_DECODE_STEPS; k++)
		if (itl_step(eng, err) < 0)
			return -1;
	return 0;
}

/* Records the step just run (ending at now) for the running sequences and the arrivals.  0 or -1. */
static int
itl_collect(gptoss_engine *eng, const itl_workload *w, itl_state *st, int64_t step, double now,
			gptoss_error *err)
{
	gptoss_result res;

	for (int i = 0; i < w->running; i++)
	{
		if (itl_result(eng, st->running_ids[i], &res) != GPTOSS_FINISH_NONE)
			return gptoss_errorf(err, "running sequence %d ended (%s) during the window", i,
								 res.finish_reason == GPTOSS_FINISH_ERROR ? res.error
								 : gptoss_finish_reason_name(res.finish_reason));
		if (res.n_tokens > st->seen[i])
		{
			double		gap = (now - st->last[i]) / (res.n_tokens - st->seen[i]);

			for (int j = st->seen[i]; j < res.n_tokens; j++)
				st->itl[st->n_itl++] = gap;
			st->seen[i] = res.n_tokens;
			st->last[i] = now;
		}
	}
	for (int k = 0; k < w->arrivals; k++)
	{
		gptoss_finish_reason fr;

		if (st->arrival_ids[k] < 0)
			continue;
		fr = itl_result(eng, st->arrival_ids[k], &res);
		if (fr == GPTOSS_FINISH_NONE)
			continue;
		if (fr == GPTOSS_FINISH_ERROR)
			return gptoss_errorf(err, "arrival %d failed: %s", k, res.error);
		st->ttft[k] = now - st->submitted[k];
		if (step + 1 - st->submit_step[k] > st->ttft_steps_max)
			st->ttft_steps_max = step + 1 - st->submit_step[k];
		gptoss_engine_release(eng, st->arrival_ids[k]);
		st->arrival_ids[k] = -1;
		st->answered++;
	}
	return 0;
}

/* Prints the inter-token latency run's JSON line. */
static void
itl_report(gptoss_engine *eng, const itl_workload *w, itl_state *st, int64_t steps, double wall)
{
	gptoss_backend *be = gptoss_engine_backend(eng);
	gptoss_backend_info info;
	int			chunk,
				budget;
	size_t		k = (size_t) w->arrivals;

	memset(&info, 0, sizeof(info));
	be->get_info(be, &info);
	gptoss_engine_step_limits(eng, &chunk, &budget);
	qsort(st->itl, st->n_itl, sizeof(double), cmp_double);
	qsort(st->ttft, k, sizeof(double), cmp_double);
	qsort(st->decode_steps, st->n_decode_steps, sizeof(double), cmp_double);
	qsort(st->prefill_steps, st->n_prefill_steps, sizeof(double), cmp_double);
	printf("{\"mode\":\"itl\",\"device\":\"%s\",\"running\":%d,\"prompt_len\":%d,"
		   "\"arrivals\":%d,\"arrival_len\":%d,\"arrive_every\":%d,"
		   "\"steps\":%lld,\"prefill_steps\":%lld,\"wall_s\":%.3f,\"decode_tok_s\":%.1f,"
		   "\"itl_ms_mean\":%.3f,\"itl_ms_p50\":%.3f,\"itl_ms_p99\":%.3f,\"itl_ms_max\":%.3f,"
		   "\"decode_step_ms_p50\":%.3f,\"prefill_step_ms_p50\":%.3f,"
		   "\"ttft_ms_mean\":%.2f,\"ttft_ms_p50\":%.2f,\"ttft_ms_p99\":%.2f,\"ttft_ms_max\":%.2f,"
		   "\"ttft_steps_max\":%lld,\"max_seqs\":%d,\"max_context\":%d,"
		   "\"prefill_chunk\":%d,\"max_step_tokens\":%d,\"peak_mem_bytes\":%lld}\n",
		   info.device_name, w->running, w->prompt_len, w->arrivals, w->arrival_len,
		   w->arrive_every, (long long) steps, (long long) st->n_prefill_steps, wall,
		   wall > 0 ? (double) st->n_itl / wall : 0.0,
		   mean_of(st->itl, st->n_itl) * 1e3, percentile(st->itl, st->n_itl, 50) * 1e3,
		   percentile(st->itl, st->n_itl, 99) * 1e3, percentile(st->itl, st->n_itl, 100) * 1e3,
		   percentile(st->decode_steps, st->n_decode_steps, 50) * 1e3,
		   percentile(st->prefill_steps, st->n_prefill_steps, 50) * 1e3,
		   mean_of(st->ttft, k) * 1e3, percentile(st->ttft, k, 50) * 1e3,
		   percentile(st->ttft, k, 99) * 1e3, percentile(st->ttft, k, 100) * 1e3,
		   (long long) st->ttft_steps_max, be->opts.max_seqs, be->opts.max_context, chunk, budget,
		   (long long) info.peak_memory_bytes);
	fflush(stdout);
}

/* The measured window: arrivals on schedule, one step at a time.  0 or -1 with err. */
static int
itl_window(gptoss_engine *eng, const itl_workload *w, itl_state *st, int64_t max_steps,
		   gptoss_error *err)
{
	int64_t		schedule = (int64_t) w->arrivals * w->arrive_every;
	int64_t		step;
	double		start = gptoss_now(),
				now = start;

	for (int i = 0; i < w->running; i++)
		st->last[i] = start;
	for (step = 0; step < schedule || st->answered < w->arrivals; step++)
	{
		gptoss_engine_stats before,
					after;
		double		t0;

		if (step % w->arrive_every == 0 && step / w->arrive_every < w->arrivals)
		{
			int			k = (int) (step / w->arrive_every);

			st->submitted[k] = gptoss_now();
			st->submit_step[k] = step;
			st->arrival_ids[k] = itl_submit(eng, st, w->arrival_len, 1, err);
			if (st->arrival_ids[k] < 0)
				return -1;
		}
		if (step >= max_steps)
			return gptoss_errorf(err, "%d arrivals still wait for their token after %lld steps",
								 w->arrivals - st->answered, (long long) step);
		gptoss_engine_get_stats(eng, &before);
		t0 = gptoss_now();
		if (itl_step(eng, err) < 0)
			return -1;
		now = gptoss_now();
		gptoss_engine_get_stats(eng, &after);
		if (after.prefill_tokens > before.prefill_tokens)
			st->prefill_steps[st->n_prefill_steps++] = now - t0;
		else
			st->decode_steps[st->n_decode_steps++] = now - t0;
		if (itl_collect(eng, w, st, step, now, err) < 0)
			return -1;
	}
	itl_report(eng, w, st, step, now - start);
	return 0;
}

int
itl_run(gptoss_engine *eng, const itl_workload *w, gptoss_error *err)
{
	gptoss_backend *be = gptoss_engine_backend(eng);
	int			chunk,
				budget;
	int64_t		max_steps;
	itl_state	st;
	int			rc;

	if (w->running < 1 || w->arrivals < 1 || w->arrive_every < 1 || w->prompt_len < 1 ||
		w->arrival_len < 1)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "empty inter-token latency workload");
	gptoss_engine_step_limits(eng, &chunk, &budget);
	if (be->opts.max_seqs < w->running + 1)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "%d slots leave no room for an arrival "
								  "next to %d running sequences", be->opts.max_seqs, w->running);
	if (be->opts.max_context < itl_workload_max_context(w, chunk))
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "the run needs a context of %d tokens, "
								  "not %d", itl_workload_max_context(w, chunk), be->opts.max_context);
	max_steps = itl_window_bound(w, chunk);
	memset(&st, 0, sizeof(st));
	st.seed = w->seed;
	st.running_ids = malloc((size_t) w->running * sizeof(int64_t));
	st.seen = calloc((size_t) w->running, sizeof(int));
	st.last = calloc((size_t) w->running, sizeof(double));
	st.arrival_ids = malloc((size_t) w->arrivals * sizeof(int64_t));
	st.submitted = calloc((size_t) w->arrivals, sizeof(double));
	st.submit_step = calloc((size_t) w->arrivals, sizeof(int64_t));
	st.ttft = calloc((size_t) w->arrivals, sizeof(double));
	st.itl = malloc((size_t) w->running * (size_t) max_steps * sizeof(double));
	st.decode_steps = malloc((size_t) max_steps * sizeof(double));
	st.prefill_steps = malloc((size_t) max_steps * sizeof(double));
	st.prompt = malloc((size_t) (w->prompt_len > w->arrival_len ? w->prompt_len : w->arrival_len) *
					   sizeof(int32_t));
	if (!st.running_ids || !st.seen || !st.last || !st.arrival_ids || !st.submitted ||
		!st.submit_step || !st.ttft || !st.itl || !st.decode_steps || !st.prefill_steps || !st.prompt)
	{
		itl_state_free(&st);
		return gptoss_errorf(err, "out of memory for %d running sequences over %lld steps",
							 w->running, (long long) max_steps);
	}
	for (int i = 0; i < w->running; i++)
		st.running_ids[i] = -1;
	for (int k = 0; k < w->arrivals; k++)
		st.arrival_ids[k] = -1;
	rc = itl_warm_up(eng, w, &st, be->opts.max_context, err);
	if (rc == 0)
	{
		gptoss_result res;

		for (int i = 0; i < w->running; i++)
		{
			itl_result(eng, st.running_ids[i], &res);
			st.seen[i] = res.n_tokens;
		}
		rc = itl_window(eng, w, &st, max_steps, err);
	}
	for (int i = 0; i < w->running; i++)
		if (st.running_ids[i] >= 0)
			gptoss_engine_release(eng, st.running_ids[i]);
	for (int k = 0; k < w->arrivals; k++)
		if (st.arrival_ids[k] >= 0)
			gptoss_engine_release(eng, st.arrival_ids[k]);
	itl_state_free(&st);
	return rc;
}
