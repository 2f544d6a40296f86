/*
 * sampler.h: next-token selection from logits.
 *
 * Randomness is counter based: the uniform draw for a sampled token depends
 * only on (seed, position of the token being produced), so a request gives the
 * same output whether it runs alone or batched, and the CPU and CUDA backends
 * draw the same numbers.
 */
#ifndef GPTOSS_SAMPLER_H
#define GPTOSS_SAMPLER_H

#include "common.h"

typedef struct gptoss_sampling
{
	float		temperature;	/* 0 = greedy (argmax, lowest id on ties) */
	float		top_p;			/* (0, 1]; 1 = off */
	int			top_k;			/* 0 = off */
	uint64_t	seed;
} gptoss_sampling;

/* splitmix64 finaliser. */
static inline GPTOSS_HD uint64_t
gptoss_mix64(uint64_t z)
{
	z += 0x9e3779b97f4a7c15ULL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Uniform draw in [0, 1) for the token produced at absolute position pos. */
static inline GPTOSS_HD double
gptoss_sample_uniform(uint64_t seed, int64_t pos)
{
	uint64_t	r = gptoss_mix64(seed ^ gptoss_mix64((uint64_t) pos));

	return (double) (r >> 11) * (1.0 / 9007199254740992.0);
}

/*
 * Picks a token from logits[vocab]: greedy when temperature == 0, else
 * softmax(logits / T) restricted to the top_k largest, then to the smallest
 * prefix (by descending probability) whose mass reaches top_p, renormalised,
 * and inverted at u = gptoss_sample_uniform(seed, pos).
 * scratch must hold 2 * vocab floats/ints worth of bytes (8 * vocab bytes).
 */
int			gptoss_sample(const float *logits, int vocab, const gptoss_sampling *s,
						  int64_t pos, void *scratch);

/*
 * Copies logits[vocab] to out with -inf wherever allowed (a bit per id: bit
 * id % 32 of word id / 32) is clear, so that sampling out picks only allowed
 * ids with the probabilities renormalised over them.
 */
void		gptoss_mask_logits(const float *logits, const uint32_t *allowed, int vocab, float *out);

/* Index of the largest value (lowest index on ties). */
int			gptoss_argmax(const float *v, int n);

#endif							/* GPTOSS_SAMPLER_H */
