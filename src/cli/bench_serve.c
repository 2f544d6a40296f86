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
 * Log-normal lengths follow the shape of ShareGPT conversations (heavy
 * tail): sigma 1, clipped to [4, 2048], with mu solved so that the clipped
 * distribution's mean is the requested one; the draws are deterministic in
 * the seed and the report gives the totals actually drawn.
 */
#include "bench_serve.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define LOGNORMAL_SIGMA 1.0
#define LENGTH_MIN 4
#define LENGTH_MAX 2048

/* Standard normal distribution function. */
static double
normal_cdf(double x)
{
	return 0.5 * erfc(-x / M_SQRT2);
}

/* Mean of exp(mu + sigma Z) clipped to [lo, hi]. */
static double
clipped_lognormal_mean(double mu, double sigma, double lo, double hi)
{
	double		a = (log(lo) - mu) / sigma;
	double		b = (log(hi) - mu) / sigma;
	double		inside = exp(mu + sigma * sigma / 2) * (normal_cdf(b - sigma) - normal_cdf(a - sigma));

	return lo * normal_cdf(a) + hi * (1.0 - normal_cdf(b)) + inside;
}

/* mu whose clipped log-normal has the given mean (the mean grows with mu: bisection). */
static double
solve_mu(double mean, double sigma, double lo, double hi)
{
	double		left = log(lo) - 10 * sigma;
	double		right = log(hi) + 10 * sigma;

	for (int i = 0; i < 200; i++)
	{
		double		mid = 0.5 * (left + right);

		if (clipped_lognormal_mean(mid, sigma, lo, hi) < mean)
			left = mid;
		else
			right = mid;
	}
	return 0.5 * (left + right);
}

/* Next standard normal draw of the stream *state (Box-Muller, cosine branch). */
static double
next_normal(uint64_t *state)
{
	double		u1,
				u2;

	*state = gptoss_mix64(*state);
	u1 = ((double) (*state >> 11) + 0.5) * (1.0 / 9007199254740992.0);
	*state = gptoss_mix64(*state);
	u2 = (double) (*state >> 11) * (1.0 / 9007199254740992.0);
	return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* One clipped log-normal length. */
static int32_t
draw_length(uint64_t *state, double mu)
{
	double		x = exp(mu + LOGNORMAL_SIGMA * next_normal(state));

	if (x < LENGTH_MIN)
		x = LENGTH_MIN;
	if (x > LENGTH_MAX)
		x = LENGTH_MAX;
	return (int32_t) lround(x);
}

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
	if (lognormal)
	{
		double		mu_in = solve_mu(input_mean, LOGNORMAL_SIGMA, LENGTH_MIN, LENGTH_MAX);
		double		mu_out = solve_mu(output_mean, LOGNORMAL_SIGMA, LENGTH_MIN, LENGTH_MAX);
		uint64_t	state = seed;

		for (int i = 0; i < n_requests; i++)
		{
			w->input_len[i] = draw_length(&state, mu_in);
			w->output_len[i] = draw_length(&state, mu_out);
		}
	}
	else
		for (int i = 0; i < n_requests; i++)
		{
			w->input_len[i] = input_mean;
			w->output_len[i] = output_mean;
		}
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
		/* random ordinary token ids, different for every request */
		for (int j = 0; j < w->input_len[i]; j++)
		{
			seed = gptoss_mix64(seed);
			prompt[j] = (int32_t) (seed % GPTOSS_TOK_STARTOFTEXT);
		}
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
