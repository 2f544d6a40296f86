/*
 * sample.cu: next-token selection on the GPU with the semantics of
 * sampler.c, one block of 1024 threads per logits row.
 *
 * Greedy (temperature 0 or top_k 1): argmax, lowest id on ties, NaN never
 * wins.  Otherwise the weights w_i = exp(l_i/T - max) replace the logits in
 * place, and the tokens are taken in the total order "w descending, id
 * ascending": keep the first top_k, then the shortest prefix whose mass
 * reaches top_p of the kept mass, and return the first token whose
 * cumulative mass exceeds u times the prefix mass, u =
 * gptoss_sample_uniform(seed, pos).  Each of these questions ("where does the
 * cumulative count reach k / the cumulative mass reach a target") is a radix
 * select over the float bits of w (positive floats order like their bits):
 * four passes of 8 bits, each a shared-memory histogram of counts and masses
 * of the tokens still in play, scanned from the largest digit down; ties of
 * equal w are then resolved by id with a select over the id bits.  Masses
 * are fixed point (units of 2^-40) in 64-bit integers, so every sum is exact
 * and independent of thread timing: same seed and logits, same token.
 */
#include "kernels.cuh"

#define SAMPLE_THREADS 1024
#define HIST_COPIES 4			/* histogram copies, against atomic contention */
#define MASS_ONE 1099511627776.0	/* 2^40 */
#define MASS_INFINITE 0xFFFFFFFFFFFFFFFFull

/* Shared state of one row's block. */
struct SampleShared
{
	unsigned int count[HIST_COPIES][256];	/* tokens per digit */
	unsigned long long mass[HIST_COPIES][256];	/* fixed-point mass per digit */
	float		fred[32];		/* per-warp partials of float reductions */
	int			ired[32];		/* per-warp partial argmax ids */
	unsigned long long ured[32];	/* per-warp partials of mass sums */
	int			chosen;			/* digit picked by the scan */
	long long	rank_before;	/* tokens ahead of the chosen digit's tokens */
	unsigned long long cum_before;	/* their mass */
	unsigned int bucket_count;	/* tokens in the chosen digit */
	long long	need;			/* position wanted inside an exact-value tie group */
	int			id;				/* selected token */
};

/* Where a prefix search stopped: token, 1-based rank, cumulative mass through it. */
struct PrefixHit
{
	int			id;
	long long	rank;
	unsigned long long cum;
};

/* Fixed-point mass of a weight in [0, 1]. */
static __device__ __forceinline__ unsigned long long
mass_of(float w)
{
	return (unsigned long long) ((double) w * MASS_ONE);
}

/* Whether a cumulative mass has reached the target. */
static __device__ __forceinline__ bool
mass_reached(unsigned long long cum, unsigned long long target, int strict)
{
	return strict ? cum > target : cum >= target;
}

/* Index of the largest value (lowest index on ties, NaN skipped; 0 if all NaN). */
static __device__ int
block_argmax(const float *v, int n, SampleShared &sh)
{
	float		best_v = 0.0f;
	int			best_i = -1;

	/* 16-byte loads, four in flight per thread: the row is 800 KB at V = 201088 */
	if (n % 4 == 0 && ((uintptr_t) v & 15) == 0)
	{
		const float4 *v4 = (const float4 *) v;

#pragma unroll 4
		for (int i = threadIdx.x; i < n / 4; i += blockDim.x)
		{
			float4		x = v4[i];
			float		e[4] = {x.x, x.y, x.z, x.w};

#pragma unroll
			for (int c = 0; c < 4; c++)
				if (e[c] == e[c] && (best_i < 0 || e[c] > best_v || (e[c] == best_v && 4 * i + c < best_i)))
				{
					best_v = e[c];
					best_i = 4 * i + c;
				}
		}
	}
	else
		for (int i = threadIdx.x; i < n; i += blockDim.x)
		{
			float		x = v[i];

			if (x != x)
				continue;
			if (best_i < 0 || x > best_v)
			{
				best_v = x;
				best_i = i;
			}
		}
	block_best(&best_v, &best_i, sh.fred, sh.ired);
	return best_i < 0 ? 0 : best_i;
}

/*
 * Radix select over the float bits of w, 8 bits per pass, largest digit
 * first: the weight of the first token of the order at which the
 * cumulative count reaches limit or the cumulative mass reaches target
 * (exceeds it when strict).  Leaves in sh the count and mass of the tokens
 * of larger weight (rank_before, cum_before) and how many tokens have
 * exactly that weight (bucket_count).
 */
static __device__ uint32_t
select_weight(const float *w, int V, long long limit, unsigned long long target, int strict,
			  SampleShared &sh)
{
	uint32_t	prefix = 0;
	uint32_t	pmask = 0;
	int			copy = (threadIdx.x >> 5) % HIST_COPIES;

	if (threadIdx.x == 0)
	{
		sh.rank_before = 0;
		sh.cum_before = 0;
	}
	for (int shift = 24; shift >= 0; shift -= 8)
	{
		for (int i = threadIdx.x; i < HIST_COPIES * 256; i += blockDim.x)
		{
			(&sh.count[0][0])[i] = 0;
			(&sh.mass[0][0])[i] = 0;
		}
		__syncthreads();
		for (int i = threadIdx.x; i < V; i += blockDim.x)
		{
			float		wi = w[i];
			uint32_t	b = __float_as_uint(wi);
			int			d;
			unsigned long long mi;

			if ((b & pmask) != prefix)
				continue;
			d = (b >> shift) & 255;
			atomicAdd(&sh.count[copy][d], 1u);
			mi = mass_of(wi);
			if (mi)
				atomicAdd(&sh.mass[copy][d], mi);
		}
		__syncthreads();
		if (threadIdx.x < 256)
			for (int c = 1; c < HIST_COPIES; c++)
			{
				sh.count[0][threadIdx.x] += sh.count[c][threadIdx.x];
				sh.mass[0][threadIdx.x] += sh.mass[c][threadIdx.x];
			}
		__syncthreads();
		if (threadIdx.x == 0)
		{
			long long	rank = sh.rank_before;
			unsigned long long cum = sh.cum_before;
			int			chosen = -1;
			int			last = -1;

			for (int d = 255; d >= 0; d--)
			{
				unsigned int c = sh.count[0][d];

				if (c == 0)
					continue;
				last = d;
				if (rank + c >= limit || mass_reached(cum + sh.mass[0][d], target, strict))
				{
					chosen = d;
					break;
				}
				rank += c;
				cum += sh.mass[0][d];
			}
			if (chosen < 0)
			{
				/* never reached: end on the last token (cannot happen for valid limits) */
				chosen = last;
				rank -= sh.count[0][last];
				cum -= sh.mass[0][last];
			}
			sh.chosen = chosen;
			sh.rank_before = rank;
			sh.cum_before = cum;
			sh.bucket_count = sh.count[0][chosen];
		}
		__syncthreads();
		prefix |= (uint32_t) sh.chosen << shift;
		pmask |= 255u << shift;
	}
	return prefix;
}

/*
 * Id of the sh.need-th token (1-based, by id) among the tokens of weight
 * bits `bits`, into sh.id: a radix select over the id bits (one scan when
 * the weight is unique).
 */
static __device__ void
select_tied_id(const float *w, int V, uint32_t bits, SampleShared &sh)
{
	int			id_bits = 1;

	while ((1 << id_bits) < V)
		id_bits++;
	if (sh.bucket_count == 1)
	{
		for (int i = threadIdx.x; i < V; i += blockDim.x)
			if (__float_as_uint(w[i]) == bits)
				sh.id = i;
	}
	else
	{
		uint32_t	id_prefix = 0;
		uint32_t	id_mask = 0;

		for (int shift = ((id_bits - 1) / 8) * 8; shift >= 0; shift -= 8)
		{
			for (int i = threadIdx.x; i < 256; i += blockDim.x)
				sh.count[0][i] = 0;
			__syncthreads();
			for (int i = threadIdx.x; i < V; i += blockDim.x)
				if (__float_as_uint(w[i]) == bits && ((uint32_t) i & id_mask) == id_prefix)
					atomicAdd(&sh.count[0][(i >> shift) & 255], 1u);
			__syncthreads();
			if (threadIdx.x == 0)
			{
				long long	need = sh.need;
				int			d = 0;

				for (; d < 255; d++)
				{
					if (need <= (long long) sh.count[0][d])
						break;
					need -= sh.count[0][d];
				}
				sh.need = need;
				sh.chosen = d;
			}
			__syncthreads();
			id_prefix |= (uint32_t) sh.chosen << shift;
			id_mask |= 255u << shift;
		}
		if (threadIdx.x == 0)
			sh.id = (int) id_prefix;
	}
}

/*
 * First token of the order at which the cumulative count reaches limit or
 * the cumulative mass reaches target (exceeds it when strict).
 */
static __device__ PrefixHit
find_prefix(const float *w, int V, long long limit, unsigned long long target, int strict,
			SampleShared &sh)
{
	uint32_t	bits = select_weight(w, V, limit, target, strict, sh);
	unsigned long long m = mass_of(__uint_as_float(bits));
	PrefixHit	hit;

	/* the tokens of weight exactly `bits` (mass m each) are ordered by id: how many are taken */
	if (threadIdx.x == 0)
	{
		long long	j = limit - sh.rank_before;
		unsigned long long cb = sh.cum_before;

		if (m > 0 && target != MASS_INFINITE)
		{
			long long	jm;

			if (strict)
				jm = target >= cb ? (long long) ((target - cb) / m) + 1 : 1;
			else
				jm = target > cb ? (long long) ((target - cb) / m + ((target - cb) % m != 0)) : 1;
			if (jm < j)
				j = jm;
		}
		if (j < 1)
			j = 1;
		if (j > (long long) sh.bucket_count)
			j = sh.bucket_count;
		sh.need = j;
		sh.id = -1;
	}
	__syncthreads();
	select_tied_id(w, V, bits, sh);
	__syncthreads();
	hit.id = sh.id;
	hit.rank = sh.rank_before + sh.need;
	hit.cum = sh.cum_before + (unsigned long long) sh.need * m;
	__syncthreads();
	return hit;
}

/* Picks the token of logits row blockIdx.x into out_tokens[entry]. */
__global__ void __launch_bounds__(SAMPLE_THREADS)
sample_kernel(const SampleRow *__restrict__ samp, float *__restrict__ logits, int V,
			  int32_t *__restrict__ out_tokens)
{
	chain_begin();
	__shared__ SampleShared sh;
	const SampleRow sr = samp[blockIdx.x];
	float	   *row = logits + (size_t) blockIdx.x * V;
	int			token;

	if (sr.entry < 0)
		return;
	if (!(sr.temperature > 0.0f) || sr.top_k == 1)
		token = block_argmax(row, V, sh);
	else
	{
		float		temp = sr.temperature;
		float		max_z = -INFINITY;

		for (int i = threadIdx.x; i < V; i += blockDim.x)
			max_z = fmaxf(max_z, row[i] / temp);
		max_z = block_max(max_z, sh.fred);
		if (!isfinite(max_z))
			token = block_argmax(row, V, sh);
		else
		{
			unsigned long long total = 0;
			long long	n_keep = V;
			unsigned long long mass_keep;
			PrefixHit	hit;
			double		u;

			__syncthreads();
			for (int i = threadIdx.x; i < V; i += blockDim.x)
			{
				float		z = row[i] / temp;
				float		wi = (z == z) ? expf(z - max_z) : 0.0f;

				row[i] = wi;
				total += mass_of(wi);
			}
			mass_keep = block_sum(total, sh.ured);
			__syncthreads();
			if (sr.top_k > 0 && sr.top_k < V)
			{
				hit = find_prefix(row, V, sr.top_k, MASS_INFINITE, 0, sh);
				n_keep = hit.rank;
				mass_keep = hit.cum;
			}
			if (sr.top_p > 0.0f && sr.top_p < 1.0f)
			{
				hit = find_prefix(row, V, n_keep,
								  (unsigned long long) ceil((double) sr.top_p * (double) mass_keep), 0, sh);
				n_keep = hit.rank;
				mass_keep = hit.cum;
			}
			u = gptoss_sample_uniform(sr.seed, sr.pos);
			hit = find_prefix(row, V, n_keep, (unsigned long long) floor(u * (double) mass_keep), 1, sh);
			token = hit.id;
		}
	}
	if (threadIdx.x == 0)
		out_tokens[sr.entry] = token;
}

/* Launches one block per logits row. */
cudaError_t
launch_sample(const StepView &sv, int R, float *logits, int V, int32_t *out_tokens,
			  cudaStream_t stream)
{
	if (R <= 0)
		return cudaSuccess;
	return launch_chained(sample_kernel, R, SAMPLE_THREADS, 0, stream, sv.samp, logits, V,
							  out_tokens);
}
