/*
 * logprobs.h: log-probabilities of tokens from a row of logits: the log-softmax
 * at temperature 1 of the raw logits, and the most probable alternatives
 * (OpenAI's logprobs / top_logprobs).  The CPU backend and the engine's tests
 * use this code; the CUDA backend computes the same on the device.
 */
#ifndef GPTOSS_LOGPROBS_H
#define GPTOSS_LOGPROBS_H

#include "common.h"

#define GPTOSS_MAX_TOP_LOGPROBS 20

/* Log-probability of one produced token and its alternatives. */
typedef struct gptoss_token_logprobs
{
	float		logprob;		/* of the produced token */
	int			n_top;			/* entries of top_ids / top_logprobs */
	int32_t		top_ids[GPTOSS_MAX_TOP_LOGPROBS];	/* most probable first, lower id first on ties */
	float		top_logprobs[GPTOSS_MAX_TOP_LOGPROBS];
} gptoss_token_logprobs;

/* log(sum(exp(logits))) over vocab entries, accumulated in double; NaN entries are skipped. */
double		gptoss_logsumexp(const float *logits, int vocab);

/*
 * Fills out for token (0 <= token < vocab) and the top_k (0 .. 20) most
 * probable ids of logits[vocab].
 */
void		gptoss_logprobs_row(const float *logits, int vocab, int32_t token, int top_k,
								gptoss_token_logprobs *out);

#endif							/* GPTOSS_LOGPROBS_H */
