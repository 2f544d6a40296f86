/*
 * step_rates.h: the engine's recent rates, over the work that was done.
 *
 * Each step adds its time, its prefill and decode token counts and its
 * sequence count to the bucket of the wall-clock second it ended in (a ring
 * of GPTOSS_RATE_SECONDS one-second buckets).  A rate is then the tokens of
 * a kind over the seconds of the steps that computed that kind, within the
 * last window seconds: a decode-only minute leaves prefill at 0 rather than
 * at the old prefill tokens spread over the decode steps' time, and idle time
 * counts for neither.  A step that did both counts its time for both.
 */
#ifndef GPTOSS_STEP_RATES_H
#define GPTOSS_STEP_RATES_H

#include <stdint.h>

#define GPTOSS_RATE_SECONDS 60

typedef struct gptoss_rate_bucket
{
	int64_t		second;			/* whole second of gptoss_now() it counts; -1: empty */
	double		prefill_tokens;
	double		prefill_seconds;	/* step time of steps with prefill tokens */
	double		decode_tokens;
	double		decode_seconds; /* step time of steps with decode tokens */
	int64_t		steps;
	int64_t		step_sequences;
} gptoss_rate_bucket;

typedef struct gptoss_step_rates
{
	gptoss_rate_bucket buckets[GPTOSS_RATE_SECONDS];
} gptoss_step_rates;

typedef struct gptoss_rate_summary
{
	double		prefill_tok_s;	/* 0 without prefill work in the window */
	double		decode_tok_s;	/* 0 without decode work in the window */
	double		mean_batch_size;	/* sequences per step; 0 without steps in the window */
} gptoss_rate_summary;

/* Empties the ring. */
void		gptoss_step_rates_init(gptoss_step_rates *r);

/* Adds a step that ended at now (seconds) and took seconds, with its token and sequence counts. */
void		gptoss_step_rates_add(gptoss_step_rates *r, double now, double seconds,
								  int prefill_tokens, int decode_tokens, int sequences);

/* Sums the steps of the last window seconds (1 to GPTOSS_RATE_SECONDS) before now into out. */
void		gptoss_step_rates_read(const gptoss_step_rates *r, double now, int window,
								   gptoss_rate_summary *out);

#endif							/* GPTOSS_STEP_RATES_H */
