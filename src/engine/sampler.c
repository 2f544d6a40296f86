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
 * model's forward pass, so the order is found by radix selection instead.  The
 * weights w = exp(logit/T - max) lie in [0, 1], where the float bit pattern is
 * a monotone key.  One vectorised pass computes the weights and a histogram
 * (count and mass) of the key's top bits.  Each question ("where does the
 * cumulative count reach k", "where does the cumulative mass reach a
 * target") walks the buckets from the top, skipping whole buckets by their
 * totals; inside the one bucket that holds the answer it histograms the next
 * 10 bits, then the last 10, and walks the tokens of the final key (equal
 * weights) in id order.  No sort, and the same token a full sort would give.
 *
 * The exponential is a vectorised Cody-Waite reduction with the degree-6
 * minimax polynomial of Cephes' expf (within about 1 ulp of expf), exact at 0
 * so the top token weighs 1, and correct down through the subnormals.
 */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

/*
 * Index of the largest value, lowest index on ties; NaN never wins.  One
 * vector pass (it runs over the whole vocabulary for every greedy token):
 * each lane keeps its maximum and where it first saw it (a NaN compares false
 * and is skipped); the lanes are merged at the end, lowest index on ties.
 */
int
gptoss_argmax(const float *v, int n)
{
	v4f			mv = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
	v4i			mi = {-1, -1, -1, -1};
	v4i			cur = {0, 1, 2, 3};
	const v4i	four = {4, 4, 4, 4};
	float		m = -INFINITY;
	int			best = -1;
	int			i = 0;

	if (n <= 0)
		return -1;
	for (; i + 4 <= n; i += 4)
	{
		v4f			x;
		v4i			gt;

		memcpy(&x, v + i, sizeof(x));
		gt = x > mv;
		mv = (v4f) ((gt & (v4i) x) | (~gt & (v4i) mv));
		mi = (gt & cur) | (~gt & mi);
		cur += four;
	}
	for (int l = 0; l < 4; l++)
		if (mi[l] >= 0 && (best < 0 || mv[l] > m || (mv[l] == m && mi[l] < best)))
		{
			m = mv[l];
			best = mi[l];
		}
	for (; i < n; i++)
		if (v[i] > m)
		{
			m = v[i];
			best = i;
		}
	if (best >= 0)
		return best;
	/* nothing above -inf: the first -inf, or 0 when all are NaN */
	for (i = 0; i < n; i++)
		if (v[i] == -INFINITY)
			return i;
	return 0;
}

/* Radix levels over the 32-bit key of a weight in [0, 1]. */
#define L1_SHIFT 20				/* level 1: exponent and 3 mantissa bits */
#define L1_BUCKETS ((0x3F800000u >> L1_SHIFT) + 1)
#define LOW_BITS 10				/* levels 2 and 3: 10 bits each */
#define LOW_BUCKETS (1 << LOW_BITS)

typedef struct sample_state
{
	const float *w;				/* [vocab] exp(logit/T - max), in [0, 1] */
	int32_t    *ids;			/* [vocab] scratch: ids of one bucket, in id order */
	int			vocab;
	double		mass[L1_BUCKETS];	/* sum of w per level-1 bucket */
	int			count[L1_BUCKETS];	/* tokens per level-1 bucket */
} sample_state;

/* Where a prefix search stopped: the token, its 1-based rank and the mass up to it. */
typedef struct prefix_hit
{
	int			id;
	int			rank;
	double		mass;
} prefix_hit;

/* The monotone key of a weight. */
KERNEL_INLINE uint32_t
key_of(float w)
{
	uint32_t	u;

	memcpy(&u, &w, sizeof(u));
	return u;
}

/* (mask ? a : b) lane-wise, a macro so that no function takes vectors by value. */
#define SELECT8(mask, a, b) ((v8f) (((mask) & (v8i) (a)) | (~(mask) & (v8i) (b))))

/* exp(x) for x <= 0 lane-wise; NaN and x < -104 (below the smallest subnormal) give 0. */
KERNEL_INLINE void
exp8(v8f *out, const v8f *xin)
{
	const v8f	log2e = {1.44269504f, 1.44269504f, 1.44269504f, 1.44269504f,
		1.44269504f, 1.44269504f, 1.44269504f, 1.44269504f};
	const v8f	half = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
	const v8f	ln2_hi = {0.693359375f, 0.693359375f, 0.693359375f, 0.693359375f,
		0.693359375f, 0.693359375f, 0.693359375f, 0.693359375f};
	const v8f	ln2_lo = {-2.12194440e-4f, -2.12194440e-4f, -2.12194440e-4f, -2.12194440e-4f,
		-2.12194440e-4f, -2.12194440e-4f, -2.12194440e-4f, -2.12194440e-4f};
	const v8f	lowest = {-104.0f, -104.0f, -104.0f, -104.0f, -104.0f, -104.0f, -104.0f, -104.0f};
	const v8f	zero = {0};
	const v8f	one = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
	const v8f	two_m64 = {0x1p-64f, 0x1p-64f, 0x1p-64f, 0x1p-64f, 0x1p-64f, 0x1p-64f, 0x1p-64f, 0x1p-64f};
	const v8i	bias = {127, 127, 127, 127, 127, 127, 127, 127};
	const v8i	deep = {-126, -126, -126, -126, -126, -126, -126, -126};
	const v8i	k64 = {64, 64, 64, 64, 64, 64, 64, 64};
	v8f			x = *xin;
	v8i			valid = (x == x) & (x >= lowest);
	v8i			n,
				small,
				bits;
	v8f			nf,
				r,
				p,
				scale;

	x = SELECT8(valid, x, zero);
	/* n = round(x / ln 2): x <= 0, so truncating x*log2e - 0.5 rounds half up */
	n = __builtin_convertvector(x * log2e - half, v8i);
	nf = __builtin_convertvector(n, v8f);
	r = x - nf * ln2_hi;
	r = r - nf * ln2_lo;
	p = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r
		  + 4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f) * (r * r) + r + one;
	/* times 2^n, in two steps below 2^-126 so subnormals come out right */
	small = n < deep;
	bits = (n + (small & k64) + bias) << 23;
	memcpy(&scale, &bits, sizeof(scale));
	p = p * scale;
	p = p * SELECT8(small, two_m64, one);
	*out = SELECT8(valid, p, zero);
}

/*
 * w[i] = exp(logits[i]/T - max_z), then the level-1 histogram: two
 * interleaved histograms keep consecutive tokens of one bucket from
 * serialising on it.
 */
CPU_KERNEL static void
weigh(const float *logits, int n, float temperature, float max_z, float *w,
	  double *mass, int *count, double *mass2, int *count2)
{
	const v8f	one = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
	int			i = 0;

	for (; i < n; i += 8)
	{
		v8f			x,
					wv;

		if (i + 8 <= n)
			memcpy(&x, logits + i, sizeof(x));
		else
		{
			/* the tail goes through the same vector code, padded */
			float		pad[8] = {0};

			for (int j = 0; j < n - i; j++)
				pad[j] = logits[i + j];
			memcpy(&x, pad, sizeof(x));
		}
		x = x / temperature - max_z;
		exp8(&wv, &x);
		wv = SELECT8(wv > one, one, wv);
		if (i + 8 <= n)
			memcpy(w + i, &wv, sizeof(wv));
		else
			for (int j = 0; j < n - i; j++)
				w[i + j] = wv[j];
	}
	for (i = 0; i + 2 <= n; i += 2)
	{
		uint32_t	b0 = key_of(w[i]) >> L1_SHIFT;
		uint32_t	b1 = key_of(w[i + 1]) >> L1_SHIFT;

		mass[b0] += w[i];
		count[b0]++;
		mass2[b1] += w[i + 1];
		count2[b1]++;
	}
	if (i < n)
	{
		mass[key_of(w[i]) >> L1_SHIFT] += w[i];
		count[key_of(w[i]) >> L1_SHIFT]++;
	}
}

/* Largest non-NaN value (-inf when none), 8 lanes at a time. */
CPU_KERNEL static float
max_value(const float *v, int n)
{
	v8f			mv = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
		-INFINITY, -INFINITY, -INFINITY, -INFINITY};
	float		m = -INFINITY;
	int			i = 0;

	for (; i + 8 <= n; i += 8)
	{
		v8f			x;

		memcpy(&x, v + i, sizeof(x));
		mv = SELECT8(x > mv, x, mv);
	}
	for (int l = 0; l < 8; l++)
		m = mv[l] > m ? mv[l] : m;
	for (; i < n; i++)
		m = v[i] > m ? v[i] : m;
	return m;
}

/* Ids (ascending) of the tokens whose level-1 bucket is b; returns how many. */
CPU_KERNEL static int
collect_bucket(const float *w, int n, int b, int32_t *ids)
{
	const v8i	target = {b, b, b, b, b, b, b, b};
	int			found = 0;
	int			i = 0;

	for (; i + 8 <= n; i += 8)
	{
		v8i			k,
					hit;

		memcpy(&k, w + i, sizeof(k));
		hit = (k >> L1_SHIFT) == target;	/* keys are below 2^31: the shift is logical */
		if (!(hit[0] | hit[1] | hit[2] | hit[3] | hit[4] | hit[5] | hit[6] | hit[7]))
			continue;
		for (int l = 0; l < 8; l++)
			if (hit[l])
				ids[found++] = i + l;
	}
	for (; i < n; i++)
		if ((int) (key_of(w[i]) >> L1_SHIFT) == b)
			ids[found++] = i;
	return found;
}

/*
 * From the top bucket down, skips buckets while neither the count limit nor
 * the mass target is reached when including them; returns the bucket holding
 * the answer with cum and rank covering the buckets above it.  If rounding
 * leaves no bucket reaching the target, the last non-empty one is returned.
 */
static int
descend(const double *mass, const int *count, int n_buckets, int limit, double target,
		int strict, double *cum, int *rank)
{
	int			last = -1;
	double		last_cum = *cum;
	int			last_rank = *rank;

	for (int b = n_buckets - 1; b >= 0; b--)
	{
		double		after;

		if (count[b] == 0)
			continue;
		after = *cum + mass[b];
		if (*rank + count[b] >= limit || (strict ? after > target : after >= target))
			return b;
		last = b;
		last_cum = *cum;
		last_rank = *rank;
		*cum = after;
		*rank += count[b];
	}
	*cum = last_cum;
	*rank = last_rank;
	return last;
}

/* Histogram of ids[0..n) by the key bits (key >> shift) & (LOW_BUCKETS - 1). */
static void
low_histogram(const sample_state *st, const int32_t *ids, int n, int shift,
			  double *mass, int *count)
{
	memset(mass, 0, sizeof(double) * LOW_BUCKETS);
	memset(count, 0, sizeof(int) * LOW_BUCKETS);
	for (int j = 0; j < n; j++)
	{
		uint32_t	b = (key_of(st->w[ids[j]]) >> shift) & (LOW_BUCKETS - 1);

		mass[b] += st->w[ids[j]];
		count[b]++;
	}
}

/* Keeps the ids whose key bits at shift equal b, in order; returns how many. */
static int
low_filter(const sample_state *st, int32_t *ids, int n, int shift, int b)
{
	int			kept = 0;

	for (int j = 0; j < n; j++)
		if ((int) ((key_of(st->w[ids[j]]) >> shift) & (LOW_BUCKETS - 1)) == b)
			ids[kept++] = ids[j];
	return kept;
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
	double		mass[LOW_BUCKETS];
	int			count[LOW_BUCKETS];
	int			b,
				n;

	b = descend(st->mass, st->count, L1_BUCKETS, limit, target, strict, &cum, &rank);
	n = collect_bucket(st->w, st->vocab, b, st->ids);
	/* level 2, then level 3: the tokens left share one key, so one weight */
	for (int shift = L1_SHIFT - LOW_BITS; shift >= 0; shift -= LOW_BITS)
	{
		low_histogram(st, st->ids, n, shift, mass, count);
		b = descend(mass, count, LOW_BUCKETS, limit, target, strict, &cum, &rank);
		n = low_filter(st, st->ids, n, shift, b);
	}
	for (int j = 0; j < n; j++)
	{
		cum += st->w[st->ids[j]];
		rank++;
		hit.id = st->ids[j];
		hit.rank = rank;
		hit.mass = cum;
		if (rank >= limit || (strict ? cum > target : cum >= target))
			break;
	}
	return hit;
}

/* Greedy, or temperature/top_k/top_p sampling at u = uniform(seed, pos). */
int
gptoss_sample(const float *logits, int vocab, const gptoss_sampling *s,
			  int64_t pos, void *scratch)
{
	sample_state state;			/* about 12 KB of bucket totals */
	double		mass2[L1_BUCKETS];
	int			count2[L1_BUCKETS];
	float		temperature = s->temperature;
	float		max_z;
	double		total = 0.0;
	int			n_keep = vocab;
	double		mass_keep;
	double		u;
	prefix_hit	hit;

	if (vocab <= 0)
		return -1;
	if (!(temperature > 0) || s->top_k == 1)
		return gptoss_argmax(logits, vocab);
	/* dividing by T > 0 is monotone, so the largest logit gives the largest z */
	max_z = max_value(logits, vocab) / temperature;
	/* infinite or all-NaN logits leave no proper distribution: take the argmax */
	if (!isfinite(max_z))
		return gptoss_argmax(logits, vocab);

	memset(state.mass, 0, sizeof(state.mass));
	memset(state.count, 0, sizeof(state.count));
	memset(mass2, 0, sizeof(mass2));
	memset(count2, 0, sizeof(count2));
	state.w = scratch;
	state.ids = (int32_t *) ((char *) scratch + (size_t) vocab * sizeof(float));
	state.vocab = vocab;
	weigh(logits, vocab, temperature, max_z, scratch, state.mass, state.count, mass2, count2);
	for (int b = 0; b < (int) L1_BUCKETS; b++)
	{
		state.mass[b] += mass2[b];
		state.count[b] += count2[b];
		total += state.mass[b];
	}

	/* top_k: the first k tokens of the order */
	mass_keep = total;
	if (s->top_k > 0 && s->top_k < vocab)
	{
		hit = find_prefix(&state, s->top_k, INFINITY, 0);
		n_keep = hit.rank;
		mass_keep = hit.mass;
	}
	/* top_p: the shortest prefix of those whose mass reaches top_p of theirs */
	if (s->top_p > 0 && s->top_p < 1)
	{
		hit = find_prefix(&state, n_keep, (double) s->top_p * mass_keep, 0);
		n_keep = hit.rank;
		mass_keep = hit.mass;
	}
	/* invert the renormalised CDF of the kept prefix */
	u = gptoss_sample_uniform(s->seed, pos);
	hit = find_prefix(&state, n_keep, u * mass_keep, 1);
	return hit.id;
}

/* Disallowed logits become -inf (a whole word at a time where all 32 agree). */
void
gptoss_mask_logits(const float *logits, const uint32_t *allowed, int vocab, float *out)
{
	for (int w = 0; w * 32 < vocab; w++)
	{
		uint32_t	bits = allowed[w];
		int			base = w * 32;
		int			n = vocab - base < 32 ? vocab - base : 32;

		if (bits == 0)
			for (int j = 0; j < n; j++)
				out[base + j] = -INFINITY;
		else if (bits == 0xffffffffu)
			memcpy(out + base, logits + base, (size_t) n * sizeof(float));
		else
			for (int j = 0; j < n; j++)
				out[base + j] = (bits >> j) & 1u ? logits[base + j] : -INFINITY;
	}
}
