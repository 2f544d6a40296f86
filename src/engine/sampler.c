/*
 * sampler.c: next-token selection (greedy, temperature, top_k, top_p).
 *
 * The distribution is defined over the tokens ordered by descending
 * probability, ties broken by lower id (a total order): keep the first top_k,
 * then the shortest prefix whose mass reaches top_p of what is left, and pick
 * the first token of that prefix whose cumulative mass exceeds u times the
 * prefix mass, u = gptoss_sample_uniform(seed, pos).
 *
 * A full sort of 201088 tokens per sampled token would cost more than a tiny
 * model's forward pass, so the order is materialised lazily: every token goes
 * into a bucket keyed by the high bits of its float weight (a monotone key for
 * positive floats, so buckets are totally ordered), with per-bucket counts and
 * masses.  Each question ("where does the cumulative count reach k", "where
 * does the cumulative mass reach a target") skips whole buckets by their
 * totals and sorts only the one bucket in which the answer lies.  The result
 * is the same token a full sort would give.
 */
#define _GNU_SOURCE				/* qsort_r */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

/* Weights lie in [0, 1]; bits >> 18 keeps exponent + 5 mantissa bits. */
#define BUCKET_SHIFT 18
#define N_BUCKETS ((0x3F800000u >> BUCKET_SHIFT) + 1)

typedef struct sample_state
{
	const float *w;				/* [vocab] exp(logit/T - max), in [0, 1] */
	int32_t    *ids;			/* [vocab] scratch: one bucket's ids, sorted */
	int			vocab;
	double		mass[N_BUCKETS];	/* sum of w per bucket */
	int			count[N_BUCKETS];	/* tokens per bucket */
} sample_state;

/* Where a prefix search stopped: the token, its 1-based rank and the mass up to it. */
typedef struct prefix_hit
{
	int			id;
	int			rank;
	double		mass;
} prefix_hit;

/* Index of the largest value, lowest index on ties; NaN never wins. */
int
gptoss_argmax(const float *v, int n)
{
	int			best = -1;
	float		best_v = 0;

	if (n <= 0)
		return -1;
	for (int i = 0; i < n; i++)
	{
		if (v[i] != v[i])
			continue;
		if (best < 0 || v[i] > best_v)
		{
			best = i;
			best_v = v[i];
		}
	}
	return best < 0 ? 0 : best;
}

/* Bucket of a weight: monotone in w for w >= 0. */
static inline int
bucket_of(float w)
{
	union { float f; uint32_t u; } x;

	x.f = w;
	return (int) (x.u >> BUCKET_SHIFT);
}

/* qsort_r order inside a bucket: weight descending, then id ascending. */
static int
cmp_weight_desc(const void *a, const void *b, void *arg)
{
	const float *w = arg;
	int32_t		ia = *(const int32_t *) a;
	int32_t		ib = *(const int32_t *) b;

	if (w[ia] != w[ib])
		return w[ia] > w[ib] ? -1 : 1;
	return (ia > ib) - (ia < ib);
}

/*
 * First token (in the total order) at which the cumulative count reaches
 * limit, or the cumulative mass reaches target (exceeds it when strict).
 */
static prefix_hit
find_prefix(sample_state *st, int limit, double target, int strict)
{
	prefix_hit	hit = {-1, 0, 0.0};
	double		cum = 0.0;
	int			rank = 0;

	for (int b = N_BUCKETS - 1; b >= 0; b--)
	{
		int			n = 0;
		double		after;

		if (st->count[b] == 0)
			continue;
		after = cum + st->mass[b];
		if (rank + st->count[b] < limit && (strict ? !(after > target) : !(after >= target)))
		{
			cum = after;
			rank += st->count[b];
			continue;
		}
		/* the answer is in this bucket: sort it and walk */
		for (int i = 0; i < st->vocab; i++)
			if (bucket_of(st->w[i]) == b)
				st->ids[n++] = i;
		qsort_r(st->ids, n, sizeof(int32_t), cmp_weight_desc, (void *) st->w);
		for (int j = 0; j < n; j++)
		{
			cum += st->w[st->ids[j]];
			rank++;
			hit.id = st->ids[j];
			hit.rank = rank;
			hit.mass = cum;
			if (rank >= limit || (strict ? cum > target : cum >= target))
				return hit;
		}
	}
	return hit;
}

/* Greedy, or temperature/top_k/top_p sampling at u = uniform(seed, pos). */
int
gptoss_sample(const float *logits, int vocab, const gptoss_sampling *s,
			  int64_t pos, void *scratch)
{
	sample_state state;			/* about 48 KB of bucket totals */
	sample_state *st = &state;
	float	   *w = scratch;
	float		max_z = -INFINITY;
	float		temperature = s->temperature;
	double		total = 0.0;
	int			n_keep = vocab;
	double		mass_keep;
	double		u;
	prefix_hit	hit;

	if (vocab <= 0)
		return -1;
	if (!(temperature > 0) || s->top_k == 1)
		return gptoss_argmax(logits, vocab);

	for (int i = 0; i < vocab; i++)
	{
		float		z = logits[i] / temperature;

		if (z > max_z)
			max_z = z;
	}
	/* infinite or all-NaN logits leave no proper distribution: take the argmax */
	if (!isfinite(max_z))
		return gptoss_argmax(logits, vocab);

	memset(st->mass, 0, sizeof(st->mass));
	memset(st->count, 0, sizeof(st->count));
	st->w = w;
	st->ids = (int32_t *) ((char *) scratch + (size_t) vocab * sizeof(float));
	st->vocab = vocab;
	for (int i = 0; i < vocab; i++)
	{
		float		z = logits[i] / temperature;
		float		wi = (z == z) ? expf(z - max_z) : 0.0f;
		int			b = bucket_of(wi);

		w[i] = wi;
		st->mass[b] += wi;
		st->count[b]++;
		total += wi;
	}

	/* top_k: the first k tokens of the order */
	mass_keep = total;
	if (s->top_k > 0 && s->top_k < vocab)
	{
		hit = find_prefix(st, s->top_k, INFINITY, 0);
		n_keep = hit.rank;
		mass_keep = hit.mass;
	}
	/* top_p: the shortest prefix of those whose mass reaches top_p of theirs */
	if (s->top_p > 0 && s->top_p < 1)
	{
		hit = find_prefix(st, n_keep, (double) s->top_p * mass_keep, 0);
		n_keep = hit.rank;
		mass_keep = hit.mass;
	}
	/* invert the renormalised CDF of the kept prefix */
	u = gptoss_sample_uniform(s->seed, pos);
	hit = find_prefix(st, n_keep, u * mass_keep, 1);
	return hit.id;
}
