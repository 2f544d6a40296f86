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
 * Three launch forms.  Two of one kernel template (RANKS blocks per row, DEPTH
 * work items of a warp in flight), each with its own register bound:
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
 * The third, norm_router_rows_kernel, takes steps of ROUTER_ROWS_MIN_T rows
 * and more (prefill): there one block per row re-read the whole router
 * matrix for every row and waited on it, 155 us a layer for 2,048 rows
 * (H200, run 45).  It gives a block many rows and loads each weight once.
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
 * Batch invariance: all forms run the same block size and the same code
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

#define ROUTER_THREADS 512		/* every form: the order of the norm's sum depends on it */
#define ROUTER_WARPS (ROUTER_THREADS / 32)
#define ROUTER_PER_THREAD (MAX_HIDDEN / ROUTER_THREADS)	/* row values per thread */
#define ROUTER_CLUSTER 8		/* blocks per row in the cluster form (the portable maximum) */
#define ROUTER_CLUSTER_BLOCKS_PER_SM 2	/* cluster form: 64 registers, as measured at batch 1 */
#define ROUTER_CLUSTER_DEPTH 2	/* cluster form: items of a warp in flight (the 20b has one a warp) */
#define ROUTER_ROW_DEPTH 6		/* one-block form: items of a warp in flight (the 20b has eight a warp) */
#define ROUTER_PARTS 4			/* slices of an expert's row: 32 experts x 4 = one per warp of a cluster */
#define ROUTER_ROWS_MAX 32		/* many-rows form: rows a block at most (its static arrays) */
#define ROUTER_ROWS_GROUP 4		/* many-rows form: items whose weights a warp holds at once */
#define ROUTER_SLICE_VEC (MAX_HIDDEN / 8 / ROUTER_PARTS / 32)	/* 16-byte vectors per lane per slice */

static_assert(MAX_HIDDEN % ROUTER_THREADS == 0, "row values per thread must be whole");
static_assert(MAX_HIDDEN % (8 * ROUTER_PARTS * 32) == 0, "slice vectors per lane must be whole");
static_assert(ROUTER_WARPS % ROUTER_PARTS == 0, "a warp's items (stride ROUTER_WARPS) must share a slice");

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

/* One 16-byte vector of 8 bf16 weights times its 8 normed values (xa, xc), in a fixed order. */
static __device__ __forceinline__ float
dot8(const uint4 &wv, float4 xa, float4 xc)
{
	const __nv_bfloat162 *w2 = (const __nv_bfloat162 *) &wv;
	float2		w0 = __bfloat1622float2(w2[0]);
	float2		w1 = __bfloat1622float2(w2[1]);
	float2		w2f = __bfloat1622float2(w2[2]);
	float2		w3 = __bfloat1622float2(w2[3]);

	return w0.x * xa.x + w0.y * xa.y + w1.x * xa.z + w1.y * xa.w +
		w2f.x * xc.x + w2f.y * xc.y + w3.x * xc.z + w3.y * xc.w;
}

/* Whether lane's vector j of the slice of item exists, and its index in the row (*vi). */
static __device__ __forceinline__ bool
slice_vector(int H, int item, int lane, int j, int *vi)
{
	int			i = lane + 32 * j;

	*vi = (item % ROUTER_PARTS) * slice_len(H) + i;
	return i < slice_len(H) && *vi < H / 8;
}

/* Sum of one slice's products with xn (x4: the normed row in shared memory), the same in every lane. */
static __device__ __forceinline__ float
dot_slice(const uint4 (&wv)[ROUTER_SLICE_VEC], const float4 *x4, int H, int item, int lane)
{
	float		s = 0.0f;

#pragma unroll
	for (int j = 0; j < ROUTER_SLICE_VEC; j++)
	{
		int			vi;

		if (slice_vector(H, item, lane, j, &vi))
			s += dot8(wv[j], x4[2 * vi], x4[2 * vi + 1]);
	}
	return warp_sum(s);
}

/*
 * One warp: a row's logits from its slice sums (partial [E][ROUTER_PARTS],
 * added in slice order), the top K (repeated maximum, lower expert first on
 * ties) and their softmax, stored at out; a padding row (slot < 0) gets
 * expert -1 and weight 0.  logits [E] and sel [K] are the row's scratch.
 */
static __device__ __forceinline__ void
pick_top_k(const float *partial, float *logits, int *sel, int slot, int E, int K, int lane, size_t out,
		   int32_t *__restrict__ topk_idx, float *__restrict__ topk_w)
{
	float		sum = 0.0f;
	float		mine = 0.0f;

	if (slot < 0)
	{
		if (lane < K)
		{
			topk_idx[out + lane] = -1;
			topk_w[out + lane] = 0.0f;
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
		topk_idx[out + lane] = sel[lane];
		topk_w[out + lane] = mine / sum;
	}
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
	pick_top_k(partial, logits, sel, slot, E, K, lane, (size_t) t * K, topk_idx, topk_w);
}

/*
 * The many-rows form: rows consecutive token rows from blockIdx.x * rows.
 * Dynamic shared memory holds the rows (residual, then normed: [rows][H]),
 * their slice sums ([rows][E][ROUTER_PARTS]) and logits ([rows][E]).  The
 * squares of all rows are reduced together, each row with block_sum's tree.
 * A warp's items (w, w + ROUTER_WARPS, ...) all cover slice w %
 * ROUTER_PARTS, so it holds ROUTER_ROWS_GROUP of them at once and reads
 * each normed vector from shared memory once for all of them; a weight is
 * loaded once per block instead of once per row.  Warp w then picks the top
 * K of rows w, w + ROUTER_WARPS, ...
 */
__global__ void __launch_bounds__(ROUTER_THREADS, 1)
norm_router_rows_kernel(const int32_t *__restrict__ tok_slot, float *__restrict__ x,
						const float *__restrict__ proj, const float *__restrict__ bias,
						const float *__restrict__ norm_w, float eps, float *__restrict__ xn,
						const __nv_bfloat16 *__restrict__ w, const float *__restrict__ b, int H,
						int E, int K, int T, int rows, int32_t *__restrict__ topk_idx,
						float *__restrict__ topk_w)
{
	extern __shared__ __align__(16) float router_rows_s[];
	__shared__ float scratch[ROUTER_ROWS_MAX][ROUTER_WARPS];
	__shared__ float inv_s[ROUTER_ROWS_MAX];
	__shared__ int sel[ROUTER_ROWS_MAX][ROUTER_MAX_K];
	float	   *xs = router_rows_s;	/* [rows][H] */
	float	   *partial = xs + (size_t) rows * H;	/* [rows][E * ROUTER_PARTS] */
	float	   *logits = partial + (size_t) rows * E * ROUTER_PARTS;	/* [rows][E] */
	int			lane = threadIdx.x & 31;
	int			warp = threadIdx.x >> 5;
	int			t0 = blockIdx.x * rows;
	int			n = T - t0 < rows ? T - t0 : rows;
	int			n_items = E * ROUTER_PARTS;
	size_t		base = (size_t) t0 * H;

	chain_begin();
	/* x + (proj + bias) of all n rows, contiguous in x and proj */
#pragma unroll 8
	for (int k = threadIdx.x; k < n * H; k += ROUTER_THREADS)
		xs[k] = x[base + k] + (proj[base + k] + bias[k % H]);
	__syncthreads();
	/* sums of squares: thread i's values i, i + ROUTER_THREADS, ... in order, as in block_sum */
	for (int r = 0; r < n; r++)
	{
		float		ss = 0.0f;

#pragma unroll
		for (int j = 0; j < ROUTER_PER_THREAD; j++)
		{
			int			i = threadIdx.x + j * ROUTER_THREADS;
			float		v = i < H ? xs[r * H + i] : 0.0f;

			ss += v * v;
		}
		ss = warp_sum(ss);
		if (lane == 0)
			scratch[r][warp] = ss;
	}
	__syncthreads();
	for (int r = warp; r < n; r += ROUTER_WARPS)
		inv_s[r] = 1.0f / sqrtf(warp_sum(lane < ROUTER_WARPS ? scratch[r][lane] : 0.0f) / (float) H + eps);
	__syncthreads();
	for (int r = 0; r < n; r++)
#pragma unroll
		for (int j = 0; j < ROUTER_PER_THREAD; j++)
		{
			int			i = threadIdx.x + j * ROUTER_THREADS;

			if (i < H)
			{
				float		v = xs[r * H + i];
				float		y = norm_w[i] * (v * inv_s[r]);

				x[base + (size_t) r * H + i] = v;
				xn[base + (size_t) r * H + i] = y;
				xs[r * H + i] = y;
			}
		}
	__syncthreads();
	for (int item0 = warp; item0 < n_items; item0 += ROUTER_ROWS_GROUP * ROUTER_WARPS)
	{
		uint4		wv[ROUTER_ROWS_GROUP][ROUTER_SLICE_VEC] = {};
		float		bias_v[ROUTER_ROWS_GROUP] = {};

#pragma unroll
		for (int g = 0; g < ROUTER_ROWS_GROUP; g++)
			if (item0 + g * ROUTER_WARPS < n_items)
				load_slice(w, b, H, item0 + g * ROUTER_WARPS, lane, wv[g], &bias_v[g]);
		for (int r = 0; r < n; r++)
		{
			const float4 *x4 = (const float4 *) (xs + (size_t) r * H);
			float		acc[ROUTER_ROWS_GROUP] = {};

#pragma unroll
			for (int j = 0; j < ROUTER_SLICE_VEC; j++)
			{
				int			vi;

				if (slice_vector(H, item0, lane, j, &vi))
				{
					float4		xa = x4[2 * vi];
					float4		xc = x4[2 * vi + 1];

#pragma unroll
					for (int g = 0; g < ROUTER_ROWS_GROUP; g++)
						acc[g] += dot8(wv[g][j], xa, xc);
				}
			}
#pragma unroll
			for (int g = 0; g < ROUTER_ROWS_GROUP; g++)
			{
				int			item = item0 + g * ROUTER_WARPS;
				float		sum = warp_sum(acc[g]);

				if (lane == 0 && item < n_items)
					partial[(size_t) r * n_items + item] = sum + bias_v[g];
			}
		}
	}
	__syncthreads();
	for (int r = warp; r < n; r += ROUTER_WARPS)
		pick_top_k(partial + (size_t) r * n_items, logits + (size_t) r * E, sel[r], tok_slot[t0 + r], E, K,
				   lane, (size_t) (t0 + r) * K, topk_idx, topk_w);
}

/* Dynamic shared memory of the many-rows form per row: the row, its slice sums and logits. */
static size_t
rows_smem_per_row(int H, int E)
{
	return ((size_t) H + (size_t) E * ROUTER_PARTS + E) * sizeof(float);
}

/* One-time per-device setup: the many-rows form may use all the shared memory a block can opt into. */
cudaError_t
router_prepare(void)
{
	int			dev,
				optin;
	cudaFuncAttributes attr;
	cudaError_t rc;

	if ((rc = cudaGetDevice(&dev)) != cudaSuccess ||
		(rc = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess)
		return rc;
	if ((rc = cudaFuncGetAttributes(&attr, norm_router_rows_kernel)) != cudaSuccess)
		return rc;
	return cudaFuncSetAttribute(norm_router_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
								optin - (int) attr.sharedSizeBytes);
}

/*
 * Launches ROUTER_CLUSTER blocks per row in clusters for T <= ROUTER_CLUSTER_MAX_T
 * (at most 32 blocks, a quarter of an H200's 132 SMs), one block per row up
 * to ROUTER_ROWS_MIN_T rows, and from there the many-rows form with about
 * one block per SM (as many rows a block as its shared memory holds, at
 * most ROUTER_ROWS_MAX).
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
	if (T >= ROUTER_ROWS_MIN_T)
	{
		cudaFuncAttributes attr;
		int			dev,
					n_sm,
					rows,
					fit;
		cudaError_t rc;

		if ((rc = cudaGetDevice(&dev)) != cudaSuccess ||
			(rc = cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess ||
			(rc = cudaFuncGetAttributes(&attr, norm_router_rows_kernel)) != cudaSuccess)
			return rc;
		fit = (int) (attr.maxDynamicSharedSizeBytes / rows_smem_per_row(H, E));
		rows = div_up(T, n_sm);
		rows = rows < fit ? rows : fit;
		rows = rows < ROUTER_ROWS_MAX ? rows : ROUTER_ROWS_MAX;
		if (rows >= 1)
			return launch_chained(norm_router_rows_kernel, div_up(T, rows), ROUTER_THREADS,
								  rows * rows_smem_per_row(H, E), stream, sv.tok_slot, x, proj, bias,
								  norm_w, eps, xn, w, b, H, E, K, T, rows, topk_idx, topk_w);
	}
	return launch_chained(norm_router_kernel<1, ROUTER_ROW_DEPTH>, T, ROUTER_THREADS, 0, stream,
						  sv.tok_slot, x, proj, bias, norm_w, eps, xn, w, b, H, E, K, topk_idx,
						  topk_w);
}
