/*
 * bench_serve.h: the serving-shaped benchmarks of `gptoss bench`:
 *   --requests N: N requests submitted at once, lengths fixed or log-normal,
 *                 latency and throughput as a serving benchmark reports them;
 *   --arrivals K: K long prompts arriving while other sequences decode, the
 *                 decoding sequences' inter-token latency (does a joining
 *                 prompt stall them?) and the arrivals' time to first token.
 */
#ifndef GPTOSS_CLI_BENCH_SERVE_H
#define GPTOSS_CLI_BENCH_SERVE_H

#include "engine.h"

/* What a serving run submits. */
typedef struct serve_workload
{
	int			n_requests;
	int32_t    *input_len;		/* [n_requests] prompt tokens of each request */
	int32_t    *output_len;		/* [n_requests] tokens each request generates */
	uint64_t	seed;			/* prompt token ids */
	const char *lengths;		/* "fixed" or "lognormal", for the report */
} serve_workload;

/* Engine settings the report repeats (what the run was configured with). */
typedef struct serve_settings
{
	int			max_seqs;
	int			max_context;
	int			prefill_chunk;
	int			max_step_tokens;
} serve_settings;

/*
 * Fills w's lengths: every request input_mean/output_mean tokens, or with
 * lognormal draws from a log-normal distribution (sigma 1, clipped to
 * [4, 2048], mu chosen so that the clipped distribution has those means).
 * The arrays are malloc'ed (serve_workload_free).  Returns 0 or -1 (out of memory).
 */
int			serve_workload_draw(serve_workload *w, int n_requests, int input_mean, int output_mean,
								bool lognormal, uint64_t seed);
void		serve_workload_free(serve_workload *w);

/* Longest prompt + generation of the workload. */
int			serve_workload_max_context(const serve_workload *w);

/* Runs the workload through eng and prints one JSON line on stdout; 0 or -1 with err. */
int			serve_run(gptoss_engine *eng, const serve_workload *w, const serve_settings *s,
					  gptoss_error *err);

/* What an inter-token latency run does (bench --arrivals). */
typedef struct itl_workload
{
	int			running;		/* sequences decoding throughout the run */
	int			prompt_len;		/* prompt tokens of each running sequence */
	int			arrivals;		/* prompts arriving while they decode */
	int			arrival_len;	/* prompt tokens of each arrival (it generates one token) */
	int			arrive_every;	/* engine steps between two arrivals */
	uint64_t	seed;			/* prompt token ids */
} itl_workload;

/*
 * Context every sequence of the run fits in when prompts are cut into
 * prefill_chunk-token chunks: the running sequences decode through the
 * warm-up and the measured steps.
 */
int			itl_workload_max_context(const itl_workload *w, int prefill_chunk);

/*
 * Runs w through eng (running + arrivals slots, itl_workload_max_context)
 * and prints one JSON line on stdout; 0 or -1 with err.
 */
int			itl_run(gptoss_engine *eng, const itl_workload *w, gptoss_error *err);

#endif							/* GPTOSS_CLI_BENCH_SERVE_H */
