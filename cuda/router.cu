/*
 * router.cu: the MoE router of one layer for every token of the step.
 *
 * One block per token.  Warps take experts in turn and compute the fp32 dot
 * product of the token's normed activations with the expert's bf16 router
 * row (lanes stride the hidden dimension two columns at a time, then a fixed
 * warp reduction), plus the bias.  Kept in fp32 rather than run through
 * cuBLAS in bf16 because the top-k choice is discrete: a rounding-level
 * change can swap an expert.  Thread 0 then picks the top K as the CPU
 * backend does (repeated maximum, lower expert first on ties) and takes the
 * softmax over those K logits.  Padding tokens get expert -1.
 */
#include "kernels.cuh"

#define ROUTER_THREADS 256
#define ROUTER_MAX_EXPERTS 1024
#define ROUTER_MAX_K 32

/* Router logits, top-K and their softmax for token blockIdx.x. */
__global__ void __launch_bounds__(ROUTER_THREADS)
router_topk_kernel(const int32_t *__restrict__ tok_slot, const float *__restrict__ xn,
				   const __nv_bfloat16 *__restrict__ w, const float *__restrict__ b, int H,
				   int E, int K, int32_t *__restrict__ topk_idx, float *__restrict__ topk_w)
{
	__shared__ float logits[ROUTER_MAX_EXPERTS];
	int			t = blockIdx.x;
	int			lane = threadIdx.x & 31;
	int			warp = threadIdx.x >> 5;
	const float *x = xn + (size_t) t * H;

	if (tok_slot[t] < 0)
	{
		for (int k = threadIdx.x; k < K; k += blockDim.x)
		{
			topk_idx[(size_t) t * K + k] = -1;
			topk_w[(size_t) t * K + k] = 0.0f;
		}
		return;
	}
	for (int e = warp; e < E; e += blockDim.x / 32)
	{
		const __nv_bfloat162 *row = (const __nv_bfloat162 *) (w + (size_t) e * H);
		float		s = 0.0f;

		for (int i = lane; i < H / 2; i += 32)
		{
			float2		wv = __bfloat1622float2(row[i]);
			float2		xv = *(const float2 *) (x + 2 * i);

			s += wv.x * xv.x + wv.y * xv.y;
		}
		s = warp_sum(s);
		if (lane == 0)
			logits[e] = s + b[e];
	}
	__syncthreads();
	if (threadIdx.x == 0)
	{
		int			sel[ROUTER_MAX_K];
		float		wt[ROUTER_MAX_K];
		float		sum = 0.0f;

		for (int k = 0; k < K; k++)
		{
			int			best = -1;

			for (int e = 0; e < E; e++)
			{
				int			taken = 0;

				for (int j = 0; j < k; j++)
					taken |= sel[j] == e;
				if (!taken && (best < 0 || logits[e] > logits[best]))
					best = e;
			}
			sel[k] = best;
		}
		for (int k = 0; k < K; k++)
		{
			wt[k] = expf(logits[sel[k]] - logits[sel[0]]);
			sum += wt[k];
		}
		for (int k = 0; k < K; k++)
		{
			topk_idx[(size_t) t * K + k] = sel[k];
			topk_w[(size_t) t * K + k] = wt[k] / sum;
		}
	}
}

/* Launches one block per token. */
cudaError_t
launch_router_topk(const StepView &sv, int T, const float *xn, const __nv_bfloat16 *w,
				   const float *b, int H, int E, int K, int32_t *topk_idx, float *topk_w,
				   cudaStream_t stream)
{
	if (E > ROUTER_MAX_EXPERTS || K > ROUTER_MAX_K)
		return cudaErrorInvalidValue;
	if (T <= 0)
		return cudaSuccess;
	router_topk_kernel<<<T, ROUTER_THREADS, 0, stream>>>(sv.tok_slot, xn, w, b, H, E, K,
														   topk_idx, topk_w);
	return cudaGetLastError();
}
