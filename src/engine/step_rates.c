/*
 * step_rates.c: recent token rates and batch sizes over one-second buckets
 * (see step_rates.h).
 */
#include "step_rates.h"

#include <math.h>
#include <string.h>

/* Empties the ring. */
void
gptoss_step_rates_init(gptoss_step_rates *r)
{
	memset(r, 0, sizeof(*r));
	for (int i = 0; i < GPTOSS_RATE_SECONDS; i++)
		r->buckets[i].second = -1;
}

/* Adds a step that ended at now (seconds) and took seconds, with its token and sequence counts. */
void
gptoss_step_rates_add(gptoss_step_rates *r, double now, double seconds,
					  int prefill_tokens, int decode_tokens, int sequences)
{
	int64_t		second = (int64_t) floor(now);
	gptoss_rate_bucket *b = &r->buckets[second % GPTOSS_RATE_SECONDS];

	if (b->second != second)
	{
		memset(b, 0, sizeof(*b));
		b->second = second;
	}
	if (prefill_tokens > 0)
	{
		b->prefill_tokens += prefill_tokens;
		b->prefill_seconds += seconds;
	}
	if (decode_tokens > 0)
	{
		b->decode_tokens += decode_tokens;
		b->decode_seconds += seconds;
	}
	b->steps++;
	b->step_sequences += sequences;
}

/* Sums the steps of the last window seconds (1 to GPTOSS_RATE_SECONDS) before now into out. */
void
gptoss_step_rates_read(const gptoss_step_rates *r, double now, int window,
					   gptoss_rate_summary *out)
{
	int64_t		second = (int64_t) floor(now);
	gptoss_rate_bucket sum;

	memset(&sum, 0, sizeof(sum));
	if (window > GPTOSS_RATE_SECONDS)
		window = GPTOSS_RATE_SECONDS;
	for (int i = 0; i < GPTOSS_RATE_SECONDS; i++)
	{
		const gptoss_rate_bucket *b = &r->buckets[i];

		if (b->second < 0 || b->second > second || b->second <= second - window)
			continue;
		sum.prefill_tokens += b->prefill_tokens;
		sum.prefill_seconds += b->prefill_seconds;
		sum.decode_tokens += b->decode_tokens;
		sum.decode_seconds += b->decode_seconds;
		sum.steps += b->steps;
		sum.step_sequences += b->step_sequences;
	}
	out->prefill_tok_s = sum.prefill_seconds > 0 ? sum.prefill_tokens / sum.prefill_seconds : 0.0;
	out->decode_tok_s = sum.decode_seconds > 0 ? sum.decode_tokens / sum.decode_seconds : 0.0;
	out->mean_batch_size = sum.steps > 0 ? (double) sum.step_sequences / (double) sum.steps : 0.0;
}
