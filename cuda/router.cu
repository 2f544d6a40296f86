/*
 * router.cu: closes the attention block and routes the token: one block of
 * ROUTER_THREADS per token row does
 *   x += proj + o_bias                 (the o-projection comes without bias)
 *   xn = RMSNorm(x) * post_attention_layernorm   (fp32, kept in registers
 *        and shared memory, written for the experts)
 *   router logits = W_r xn + b_r, top-K, softmax over the K.
 * One launch instead of two saves a kernel boundary per layer, which is a
 * visible share of a batch-1 decode step.  The norm is the CPU backend's
 * formula y = w * (x * (1 / sqrt(mean(x^2) + eps))).  Router products are
 * fp32 (a lane reads its part of the expert's bf16 row as 16-byte vectors,
 * all before the first use, and the warp reduces in a fixed order) rather
 * than cuBLAS bf16, because the top-k choice is discrete: a rounding-level
 * change can swap an expert.  Warp 0 picks the top K as the CPU backend does
 * (repeated maximum, lower expert first on ties; each lane holds the experts
 * lane, lane+32, ...).  Padding tokens are normed but get expert -1.
 */
#include "kernels.cuh"

#define ROUTER_THREADS 1024
#define ROUTER_VEC (MAX_HIDDEN / 256)	/* 16-byte vectors per lane per row */
#define ROUTER_MAX_H (32 * 8 * ROUTER_VEC)
#define ROUTER_PER_THREAD (ROUTER_MAX_H / ROUTER_THREADS)

/* Residual add, norm, router logits, top-K and their softmax for token blockIdx.x. */
__global__ void __launch_bounds__(ROUTER_THREADS)
norm_router_kernel(const int32_t *__restrict__ tok_slot, float *__restrict__ x,
				   const float *__restrict__ proj, const float *__restrict__ bias,
				   const float *__restrict__ norm_w, float eps, float *__restrict__ xn,
				   const __nv_bfloat16 *__restrict__ w, const float *__restrict__ b, int H,
				   int E, int K, int32_t *__restrict__ topk_idx, float *__restrict__ topk_w)
{
	chain_begin();
	__shared__ float logits[ROUTER_MAX_EXPERTS];
	__shared__ __align__(16) float x_s[ROUTER_MAX_H];
	__shared__ float scratch[32];
	__shared__ int sel[ROUTER_MAX_K];
	int			t = blockIdx.x;
	int			lane = threadIdx.x & 31;
	int			warp = threadIdx.x >> 5;
	int			n_vec = H / 8;
	size_t		base = (size_t) t * H;
	const float4 *x4 = (const float4 *) x_s;
	float		v[ROUTER_PER_THREAD];
	float		ss = 0.0f;
	float		inv;

#pragma unroll
	for (int j = 0; j < ROUTER_PER_THREAD; j++)
	{
		int			i = threadIdx.x + j * ROUTER_THREADS;

		v[j] = i < H ? x[base + i] + (proj[base + i] + bias[i]) : 0.0f;
		ss += v[j] * v[j];
	}
	inv = rms_inverse(ss, H, eps, scratch);
#pragma unroll
	for (int j = 0; j < ROUTER_PER_THREAD; j++)
	{
		int			i = threadIdx.x + j * ROUTER_THREADS;

		if (i < H)
		{
			float		y = norm_w[i] * (v[j] * inv);

			x[base + i] = v[j];
			xn[base + i] = y;
			x_s[i] = y;
		}
	}
	if (tok_slot[t] < 0)
	{
		if (threadIdx.x < K)
		{
			topk_idx[(size_t) t * K + threadIdx.x] = -1;
			topk_w[(size_t) t * K + threadIdx.x] = 0.0f;
		}
		return;
	}
	__syncthreads();
	for (int e = warp; e < E; e += blockDim.x / 32)
	{
		const uint4 *row = (const uint4 *) (w + (size_t) e * H);
		uint4		wv[ROUTER_VEC];
		float		s = 0.0f;

#pragma unroll
		for (int j = 0; j < ROUTER_VEC; j++)
			if (lane + 32 * j < n_vec)
				wv[j] = row[lane + 32 * j];
#pragma unroll
		for (int j = 0; j < ROUTER_VEC; j++)
		{
			int			i = lane + 32 * j;

			if (i < n_vec)
			{
				const __nv_bfloat162 *w2 = (const __nv_bfloat162 *) &wv[j];
				float4		xa = x4[2 * i];
				float4		xc = x4[2 * i + 1];
				float2		w0 = __bfloat1622float2(w2[0]);
				float2		w1 = __bfloat1622float2(w2[1]);
				float2		w2f = __bfloat1622float2(w2[2]);
				float2		w3 = __bfloat1622float2(w2[3]);

				s += w0.x * xa.x + w0.y * xa.y + w1.x * xa.z + w1.y * xa.w +
					w2f.x * xc.x + w2f.y * xc.y + w3.x * xc.z + w3.y * xc.w;
			}
		}
		s = warp_sum(s);
		if (lane == 0)
			logits[e] = s + b[e];
	}
	__syncthreads();
	if (warp == 0)
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

/* Launches one block per token row. */
cudaError_t
launch_norm_router(const StepView &sv, int T, float *x, const float *proj, const float *bias,
				   const float *norm_w, float eps, float *xn, const __nv_bfloat16 *w,
				   const float *b, int H, int E, int K, int32_t *topk_idx, float *topk_w,
				   cudaStream_t stream)
{
	if (E > ROUTER_MAX_EXPERTS || K > ROUTER_MAX_K || H % 8 != 0 || H > ROUTER_MAX_H)
		return cudaErrorInvalidValue;
	if (T <= 0)
		return cudaSuccess;
	return launch_chained(norm_router_kernel, T, ROUTER_THREADS, 0, stream, sv.tok_slot, x, proj,
							  bias, norm_w, eps, xn, w, b, H, E, K, topk_idx, topk_w);
}
