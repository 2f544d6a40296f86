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
 * Two launch forms of one kernel template (RANKS blocks per row, DEPTH work
 * items of a warp in flight); each form has its own register bound:
 *   - the smallest steps (T <= ROUTER_CLUSTER_MAX_T): a row is handled by a
 *     thread-block cluster of ROUTER_CLUSTER blocks on (normally) as many
 *     SMs.  With one block per row a single SM read the whole router matrix
 *     (184 KB for the 20b) and the kernel took ~10 us per layer at 0.4% of
 *     DRAM bandwidth; the cluster splits it over 8 SMs.  Every block
 *     recomputes the residual and norm of the row (2880 floats from L2,
 *     cheaper than a second exchange), computes its share of the logits and
 *     stores them into rank 0's shared memory (distributed shared memory);
 *     rank 0 picks the top K and writes x and xn.
 *   - larger steps: one block per row (RANKS = 1).
 * Why the threshold is 4 rows: H200 bench_backend decode, tok/s, against
 * the earlier kernel (one block of 1024 threads per row, one warp per
 * expert, all of a lane's 12 weight vectors loaded at once after the norm):
 * batch 1: 404 -> 421.7 with the cluster (step time: -4.3 us a layer),
 * batch 8: 1,684 -> 1,632 (+6.3 us a layer) and batch 32: ~5,244 -> 4,929:
 * the cluster's cost grows by ~1.5 us a row (presumably 8 blocks re-reading
 * the row, two cluster barriers, 8 SMs of one GPC to find per row), which
 * evens out its gain near T = 4 (unmeasured between 1 and 8).  At batch
 * 64 / 128 the cluster was worse still: 7,968 / 11,127 against 8,431 /
 * 12,032.
 * The one-block form first kept only the next item in flight under a
 * 64-register cap (two blocks per SM): 8 dependent rounds of weight loads
 * per warp for the 20b's 8 items, measured 8,034 / 11,412 at batch 64 / 128
 * and 24,443 against 25,136 tok/s in a 2048-token prefill.  It now keeps
 * DEPTH = 6 items (72 registers of weights; 116 in all) in flight with no
 * cap (one block per SM, as the earlier kernel's 1024 threads): 6/8 of the
 * matrix (138 KB an SM) arrives in the round trip of the row loads, and
 * the last 2 items are issued as items 0 and 1 are summed, to land under
 * the sums of the 4 still queued (each ~46 KB of shared-memory reads, ~360
 * cycles, per block).  That is at most the earlier kernel's two round trips
 * (row, then weights), the first shared with the row; DEPTH = 8 (all at
 * once) spills at 128 registers, 4 (90 registers) leaves less cover.
 * Measured against the earlier kernel in one build on one H200 (runs
 * 35-36): batch 1 / 2 / 4 409 -> 420-422, 688 -> 703, 1,084 -> 1,103; batch
 * 8 / 32 / 64 / 128 1,606 / 4,942 / 8,057-8,103 / 11,474-11,490 ->
 * 1,595 / 4,902 / 8,058-8,060 / 11,455-11,463; prefill 2048 25,712 ->
 * 25,571.  (The figures above from other runs came from a machine ~5 %
 * faster at batch 64-128.)
 * Batch invariance: both forms run the same block size and the same code
 * for every sum, so a row's bits never depend on the form: the sum of
 * squares is block_sum over ROUTER_THREADS threads (thread i holds elements
 * i, i + ROUTER_THREADS, ... in that order), and an expert's logit is
 * ((s0 + s1) + s2) + s3 of ROUTER_PARTS fixed slices of its row, slice 0
 * with the bias added, each slice summed by one warp (lane l holds vectors
 * l, l + 32, ... of the slice; warp_sum).  The form only decides which warp
 * of which block computes a slice, and when its weights are loaded.
 * Latency: the router weights and biases do not depend on the previous
 * kernel, but chain_begin() still comes first (common.cuh: completion stays
 * transitive); a warp's first DEPTH items' weights and every row load are
 * issued right after it, before the norm's block reduction, so they share
 * one memory round trip (in the cluster form of the 20b, 32 experts x 4
 * slices = one item per warp: all its weights).
 */
#include <cooperative_groups.h>

#include "kernels.cuh"

#define ROUTER_THREADS 512		/* both forms: the order of the norm's sum depends on it */
#define ROUTER_WARPS (ROUTER_THREADS / 32)
#define ROUTER_PER_THREAD (MAX_HIDDEN / ROUTER_THREADS)	/* row values per thread */
#define ROUTER_CLUSTER 8		/* blocks per row in the cluster form (the portable maximum) */
#define ROUTER_CLUSTER_BLOCKS_PER_SM 2	/* cluster form: 64 registers, as measured at batch 1 */
#define ROUTER_CLUSTER_DEPTH 2	/* cluster form: items of a warp in flight (the 20b has one a warp) */
#define ROUTER_ROW_DEPTH 6		/* one-block form: items of a warp in flight (the 20b has eight a warp) */
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
 * blockIdx.x / RANKS; this block is rank blockIdx.x % RANKS of the row's
 * RANKS blocks (a cluster when RANKS > 1).  Work items (expert, slice) go
 * to the row's warps round-robin: warp w of rank r takes r + RANKS * w,
 * then steps by RANKS * ROUTER_WARPS.  A warp keeps DEPTH items' weights in
 * registers (slot d of its ring holds its items d, d + DEPTH, ...): the
 * first DEPTH are issued with the row loads, and a slot is refilled as soon
 * as its item is summed, so DEPTH - 1 items stay in flight meanwhile.
 */
template <int RANKS, int DEPTH>
__global__ void __launch_bounds__(ROUTER_THREADS, RANKS > 1 ? ROUTER_CLUSTER_BLOCKS_PER_SM : 1)
norm_router_kernel(const int32_t *__restrict__ tok_slot, float *__restrict__ x,
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
	int			t = blockIdx.x / RANKS;
	int			rank = blockIdx.x % RANKS;
	int			lane = threadIdx.x & 31;
	int			warp = threadIdx.x >> 5;
	int			n_items = E * ROUTER_PARTS;
	int			first_item = rank + RANKS * warp;
	int			stride = RANKS * ROUTER_WARPS;
	size_t		base = (size_t) t * H;
	const float4 *x4 = (const float4 *) x_s;
	float	   *dst = partial;
	uint4		wv[DEPTH][ROUTER_SLICE_VEC];
	float		bias_v[DEPTH];
	float		v[ROUTER_PER_THREAD];
	float		nw[ROUTER_PER_THREAD];
	float		ss = 0.0f;
	float		inv;
	int			slot;

	chain_begin();
	if (RANKS > 1)
		__cluster_barrier_arrive_relaxed();	/* "started"; the wait comes before the first store into rank 0 */
#pragma unroll
	for (int d = 0; d < DEPTH; d++)
	{
		bias_v[d] = 0.0f;
		if (first_item + d * stride < n_items)
			load_slice(w, b, H, first_item + d * stride, lane, wv[d], &bias_v[d]);
	}
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
	if (RANKS > 1)
	{
		__cluster_barrier_wait();
		dst = cooperative_groups::this_cluster().map_shared_rank(partial, 0);
	}
	for (int round = first_item; round < n_items; round += DEPTH * stride)
	{
#pragma unroll
		for (int d = 0; d < DEPTH; d++)
		{
			int			item = round + d * stride;
			int			next = item + DEPTH * stride;

			if (item < n_items)
			{
				float		s = dot_slice(wv[d], x4, H, item, lane);

				if (lane == 0)
					dst[item] = s + bias_v[d];
				if (next < n_items)
					load_slice(w, b, H, next, lane, wv[d], &bias_v[d]);
			}
		}
	}
	/* rank 0's slice sums complete; every rank has read x, so rank 0 may overwrite it */
	if (RANKS > 1)
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
 * (at most 32 blocks, a quarter of an H200's 132 SMs), else one block per row.
 */
cudaError_t
launch_norm_router(const StepView &sv, int T, float *x, const float *proj, const float *bias,
				   const float *norm_w, float eps, float *xn, const __nv_bfloat16 *w,
				   const float *b, int H, int E, int K, int32_t *topk_idx, float *topk_w,
				   cudaStream_t stream)
{
	if (E > ROUTER_MAX_EXPERTS || K > ROUTER_MAX_K || H % 8 != 0 || H > MAX_HIDDEN)
		return cudaErrorInvalidValue;
	if (T <= 0)
		return cudaSuccess;
	if (T <= ROUTER_CLUSTER_MAX_T)
		return launch_chained_clusters(norm_router_kernel<ROUTER_CLUSTER, ROUTER_CLUSTER_DEPTH>,
									   T * ROUTER_CLUSTER, ROUTER_THREADS, 0, ROUTER_CLUSTER, stream,
									   sv.tok_slot, x, proj, bias, norm_w, eps, xn, w, b, H, E, K,
									   topk_idx, topk_w);
	return launch_chained(norm_router_kernel<1, ROUTER_ROW_DEPTH>, T, ROUTER_THREADS, 0, stream,
						  sv.tok_slot, x, proj, bias, norm_w, eps, xn, w, b, H, E, K, topk_idx,
						  topk_w);
}
