/*
 * logprobs.c: log-softmax of one logits row at a token, and its top-k.
 *
 * The log-sum-exp is taken around the row maximum and summed in double, so
 * the result is within float rounding of the exact value whatever the
 * vocabulary size.  Top-k keeps a small sorted array (k <= 20): one pass over
 * the row, an insertion only for values that beat the current k-th.
 */
#include "logprobs.h"

#include <math.h>

/* log(sum(exp(logits))) around the maximum. */
double
gptoss_logsumexp(const float *logits, int vocab)
{
	float		m = -INFINITY;
	double		sum = 0.0;

	for (int i = 0; i < vocab; i++)
		if (logits[i] > m)
			m = logits[i];
	if (!isfinite(m))
		return m;
	for (int i = 0; i < vocab; i++)
		if (logits[i] == logits[i])
			sum += exp((double) logits[i] - (double) m);
	return (double) m + log(sum);
}

/* The produced token's log-probability and the top_k alternatives. */
void
gptoss_logprobs_row(const float *logits, int vocab, int32_t token, int top_k,
					gptoss_token_logprobs *out)
{
	double		lse = gptoss_logsumexp(logits, vocab);
	int			n = 0;

	if (top_k > GPTOSS_MAX_TOP_LOGPROBS)
		top_k = GPTOSS_MAX_TOP_LOGPROBS;
	if (top_k > vocab)
		top_k = vocab;
	out->logprob = (float) ((double) logits[token] - lse);
	/* ids ascend through the pass, so an equal value never displaces an earlier id */
	for (int i = 0; i < vocab && top_k > 0; i++)
	{
		float		v = logits[i];
		int			j;

		if (v != v || (n == top_k && !(v > out->top_logprobs[n - 1])))
			continue;
		j = n < top_k ? n++ : n - 1;
		while (j > 0 && v > out->top_logprobs[j - 1])
		{
			out->top_logprobs[j] = out->top_logprobs[j - 1];
			out->top_ids[j] = out->top_ids[j - 1];
			j--;
		}
		out->top_logprobs[j] = v;
		out->top_ids[j] = i;
	}
	for (int j = 0; j < n; j++)
		out->top_logprobs[j] = (float) ((double) out->top_logprobs[j] - lse);
	out->n_top = n;
}
