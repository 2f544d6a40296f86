/*
 * router.cu: closes the attention block and routes the token.  For each
 * token row:
 *   x += proj + o_bias                 (the o-projection comes without bias)
 *   xn = RMSNorm(x) * post_attention_layernorm   (fp32, kept in registers
 *        and shared memory, written for the experts)
 *   router logits = W_r xn + b_r, top-K, softmax over the K.
 * One launch instead of two saves a kernel boundary per layer, which is a
 * visible share of a batch-1 decode step.  The norm is the CPU backend's
 * formula y = w * (x * (1 / sqrt(mean(x^2) + eps))).  Router products are
 * fp32 rather than cuBLAS bf16, because the top-k choice is discrete: a
 * rounding-level change can swap an expert.  The top K are picked as the CPU
 * backend does (repeated maximum, lower expert first on ties).  Padding
 * tokens are normed but get expert -1 and weight 0.
 *
 * Two launch forms, one kernel:
 *   - decode-sized steps (T <= ROUTER_CLUSTER_MAX_T): a row is handled by a
 *     thread-block cluster of ROUTER_CLUSTER blocks on as many SMs.  With one
 *     block per row a single SM read the whole router matrix (184 KB for the
 *     20b) and the kernel took ~10 us per layer at 0.4% of DRAM bandwidth;
 *     the cluster splits it over (normally) 8 SMs.  Every block recomputes the
 *     residual and norm of the row (2880 floats from L2, cheaper than a
 *     second exchange), computes its share of the logits and stores them
 *     into rank 0's shared memory (distributed shared memory); rank 0 picks
 *     the top K and writes x and xn.
 *   - larger steps (prefill): one block per row (ranks = 1); the rows
 *     already fill the GPU and the cluster's repeated row reads would only
 *     add L2 traffic.
 * Batch invariance: both forms run the same block size and the same code
 * for every sum, so a row's bits never depend on the form: the sum of
 * squares is block_sum over ROUTER_THREADS threads (thread i holds elements
 * i, i + ROUTER_THREADS, ... in that order), and an expert's logit is
 * ((s0 + s1) + s2) + s3 of ROUTER_PARTS fixed slices of its row, slice 0
 * with the bias added, each slice summed by one warp (lane l holds vectors
 * l, l + 32, ... of the slice; warp_sum).  The form only decides which warp
 * of which block computes a slice.
 * Latency: the router weights and biases do not depend on the previous
 * kernel, but chain_begin() still comes first (common.cuh: completion stays
 * transitive); a warp's first item's weights and every row load are issued
 * right after it, before the norm's block reduction, so they share one
 * memory round trip (in the cluster form of the 20b, 32 experts x 4 slices
 * = one item per warp: all its weights).  In the one-block form a warp has
 * several items; the next one's loads are in flight while one is summed.
 */
#include <cooperative_groups.h>

#include "kernels.cuh"

#define ROUTER_THREADS 512		/* both forms: the order of the norm's sum depends on it */
#define ROUTER_WARPS (ROUTER_THREADS / 32)
#define ROUTER_PER_THREAD (MAX_HIDDEN / ROUTER_THREADS)	/* row values per thread */
#define ROUTER_CLUSTER 8		/* blocks per row in the decode form (the portable maximum) */
#define ROUTER_BLOCKS_PER_SM 2	/* registers capped so: the decode form's 32 x 8 blocks are all resident */
#define ROUTER_PARTS 4			/* slices of an expert's row: 32 experts x 4 = one per warp of a cluster */
#define ROUTER_SLICE_VEC (MAX_HIDDEN / 8 / ROUTER_PARTS / 32)	/* 16-byte vectors per lane per slice */

static_assert(MAX_HIDDEN % ROUTER_THREADS == 0, "row values per thread must be whole");
static_assert(MAX_HIDDEN % (8 * ROUTER_PARTS * 32) == 0, "slice vectors per lane must be whole");

/* Vectors (8 bf16) in one slice of a router row of H values; the last slice may be shorter. */
static __device__ __forceinline__ int
slice_len(int H)
{
	return div_up(H / 8, ROUTER_PARTS);
}

/*
 * Issues the loads of one work item (expert item / ROUTER_PARTS, slice item %
 * ROUTER_PARTS): the lane's vectors of the slice of the bf16 [E][H] router
 * matrix into wv, and the expert's bias (slice 0 only, else 0) into bias_v.
 */
static __device__ __forceinline__ void
load_slice(const __nv_bfloat16 *__restrict__ w, const float *__restrict__ b, int H, int item,
		   int lane, uint4 (&wv)[ROUTER_SLICE_VEC], float *bias_v)
{
	int			e = item / ROUTER_PARTS;
	int			first = (item % ROUTER_PARTS) * slice_len(H);
	int			n_vec = H / 8;
	const uint4 *row = (const uint4 *) (w + (size_t) e * H);

#pragma unroll
	for (int j = 0; j < ROUTER_SLICE_VEC; j++)
	{
		int			i = lane + 32 * j;

		if (i < slice_len(H) && first + i < n_vec)
			wv[j] = row[first + i];
	}
	*bias_v = item % ROUTER_PARTS == 0 ? b[e] : 0.0f;
}

/* Sum of one slice's products with xn (x4: the normed row in shared memory), the same in every lane. */
static __device__ __forceinline__ float
dot_slice(const uint4 (&wv)[ROUTER_SLICE_VEC], const float4 *x4, int H, int item, int lane)
{
	int			first = (item % ROUTER_PARTS) * slice_len(H);
	int			n_vec = H / 8;
	float		s = 0.0f;

#pragma unroll
	for (int j = 0; j < ROUTER_SLICE_VEC; j++)
	{
		int			i = lane + 32 * j;
		int			vi = first + i;

		if (i < slice_len(H) && vi < n_vec)
		{
			const __nv_bfloat162 *w2 = (const __nv_bfloat162 *) &wv[j];
			float4		xa = x4[2 * vi];
			float4		xc = x4[2 * vi + 1];
			float2		w0 = __bfloat1622float2(w2[0]);
			float2		w1 = __bfloat1622float2(w2[1]);
			float2		w2f = __bfloat1622float2(w2[2]);
			float2		w3 = __bfloat1622float2(w2[3]);

			s += w0.x * xa.x + w0.y * xa.y + w1.x * xa.z + w1.y * xa.w +
				w2f.x * xc.x + w2f.y * xc.y + w3.x * xc.z + w3.y * xc.w;
		}
	}
	return warp_sum(s);
}

/*
 * Residual add, norm, router logits, top-K and their softmax for token row
 * blockIdx.x / ranks; this block is rank blockIdx.x % ranks of the row's
 * ranks blocks (a cluster when ranks > 1).  Work items (expert, slice) go
 * to the row's warps round-robin: warp w of rank r takes r + ranks * w,
 * then steps by ranks * ROUTER_WARPS.
 */
__global__ void __launch_bounds__(ROUTER_THREADS, ROUTER_BLOCKS_PER_SM)
norm_router_kernel(int ranks, const int32_t *__restrict__ tok_slot, float *__restrict__ x,
				   const float *__restrict__ proj, const float *__restrict__ bias,
				   const float *__restrict__ norm_w, float eps, float *__restrict__ xn,
				   const __nv_bfloat16 *__restrict__ w, const float *__restrict__ b, int H,
				   int E, int K, int32_t *__restrict__ topk_idx, float *__restrict__ topk_w)
{
	__shared__ float partial[ROUTER_MAX_EXPERTS * ROUTER_PARTS];	/* rank 0: [E][ROUTER_PARTS] slice sums */
	__shared__ float logits[ROUTER_MAX_EXPERTS];
	__shared__ __align__(16) float x_s[MAX_HIDDEN];
	__shared__ float scratch[32];
	__shared__ int sel[ROUTER_MAX_K];
	int			t = blockIdx.x / ranks;
	int			rank = blockIdx.x % ranks;
	int			lane = threadIdx.x & 31;
	int			warp = threadIdx.x >> 5;
	int			n_items = E * ROUTER_PARTS;
	int			first_item = rank + ranks * warp;
	size_t		base = (size_t) t * H;
	const float4 *x4 = (const float4 *) x_s;
	float	   *dst = partial;
	uint4		wv[ROUTER_SLICE_VEC];
	float		bias_v = 0.0f;
	float		v[ROUTER_PER_THREAD];
	float		nw[ROUTER_PER_THREAD];
	float		ss = 0.0f;
	float		inv;
	int			slot;

	chain_begin();
	if (ranks > 1)
		__cluster_barrier_arrive_relaxed();	/* "started"; the wait comes before the first store into rank 0 */
	if (first_item < n_items)
		load_slice(w, b, H, first_item, lane, wv, &bias_v);
	slot = tok_slot[t];
#pragma unroll
	for (int j = 0; j < ROUTER_PER_THREAD; j++)
	{
		int			i = threadIdx.x + j * ROUTER_THREADS;

		v[j] = i < H ? x[base + i] + (proj[base + i] + bias[i]) : 0.0f;
		nw[j] = i < H ? norm_w[i] : 0.0f;
		ss += v[j] * v[j];
	}
	inv = rms_inverse(ss, H, eps, scratch);
#pragma unroll
	for (int j = 0; j < ROUTER_PER_THREAD; j++)
	{
		int			i = threadIdx.x + j * ROUTER_THREADS;

		if (i < H)
		{
			float		y = nw[j] * (v[j] * inv);

			x_s[i] = y;
			if (rank == 0)
				xn[base + i] = y;
		}
	}
	__syncthreads();
	if (ranks > 1)
	{
		__cluster_barrier_wait();
		dst = cooperative_groups::this_cluster().map_shared_rank(partial, 0);
	}
	for (int item = first_item; item < n_items; item += ranks * ROUTER_WARPS)
	{
		int			next = item + ranks * ROUTER_WARPS;
		uint4		wv_next[ROUTER_SLICE_VEC];
		float		bias_next = 0.0f;
		float		s;

		if (next < n_items)		/* in flight while this item is summed (one-block form: 8 items a warp) */
			load_slice(w, b, H, next, lane, wv_next, &bias_next);
		s = dot_slice(wv, x4, H, item, lane);
		if (lane == 0)
			dst[item] = s + bias_v;
#pragma unroll
		for (int j = 0; j < ROUTER_SLICE_VEC; j++)
			wv[j] = wv_next[j];
		bias_v = bias_next;
	}
	/* rank 0's slice sums complete; every rank has read x, so rank 0 may overwrite it */
	if (ranks > 1)
		cooperative_groups::this_cluster().sync();
	else
		__syncthreads();
	if (rank > 0)
		return;
#pragma unroll
	for (int j = 0; j < ROUTER_PER_THREAD; j++)
	{
		int			i = threadIdx.x + j * ROUTER_THREADS;

		if (i < H)
			x[base + i] = v[j];
	}
	if (warp > 0)
		return;
	if (slot < 0)
	{
		if (lane < K)
		{
			topk_idx[(size_t) t * K + lane] = -1;
			topk_w[(size_t) t * K + lane] = 0.0f;
		}
		return;
	}
	for (int e = lane; e < E; e += 32)
	{
		const float *p = &partial[e * ROUTER_PARTS];
		float		s = p[0];

#pragma unroll
		for (int q = 1; q < ROUTER_PARTS; q++)
			s += p[q];
		logits[e] = s;
	}
	__syncwarp();
	{
		float		sum = 0.0f;
		float		mine = 0.0f;

		for (int k = 0; k < K; k++)
		{
			float		best_v = 0.0f;
			int			best = -1;

			for (int e = lane; e < E; e += 32)
			{
				int			taken = 0;

				for (int j = 0; j < k; j++)
					taken |= sel[j] == e;
				if (!taken && (best < 0 || logits[e] > best_v))
				{
					best = e;
					best_v = logits[e];
				}
			}
			warp_best(&best_v, &best);
			if (lane == 0)
				sel[k] = best;
			__syncwarp();
		}
		for (int k = 0; k < K; k++)
		{
			float		wk = expf(logits[sel[k]] - logits[sel[0]]);

			sum += wk;
			if (k == lane)
				mine = wk;
		}
		if (lane < K)
		{
			topk_idx[(size_t) t * K + lane] = sel[lane];
			topk_w[(size_t) t * K + lane] = mine / sum;
		}
	}
}

/*
 * Launches ROUTER_CLUSTER blocks per row in clusters for T <= ROUTER_CLUSTER_MAX_T
 * (up to 256 blocks: ROUTER_BLOCKS_PER_SM on each of the 132 SMs of an H200,
 * so about every row's cluster runs at once), else one block per row.
 */
cudaError_t
launch_norm_router(const StepView &sv, int T, float *x, const float *proj, const float *bias,
				   const float *norm_w, float eps, float *xn, const __nv_bfloat16 *w,
				   const float *b, int H, int E, int K, int32_t *topk_idx, float *topk_w,
				   cudaStream_t stream)
{
	int			ranks = T <= ROUTER_CLUSTER_MAX_T ? ROUTER_CLUSTER : 1;

	if (E > ROUTER_MAX_EXPERTS || K > ROUTER_MAX_K || H % 8 != 0 || H > MAX_HIDDEN)
		return cudaErrorInvalidValue;
	if (T <= 0)
		return cudaSuccess;
	return launch_chained_clusters(norm_router_kernel, T * ranks, ROUTER_THREADS, 0, ranks, stream,
								   ranks, sv.tok_slot, x, proj, bias, norm_w, eps, xn, w, b, H, E,
								   K, topk_idx, topk_w);
}
