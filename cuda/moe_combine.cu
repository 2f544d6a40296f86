/*
 * moe_combine.cu: closes the MoE block and opens the next layer.  One block
 * per token row, the row held in registers (common.cuh): x += sum over k
 * (in k order) of w_k * y[row of (t, k)], where y already holds each
 * expert's output with its bias, then xb = bf16(RMSNorm(x) * norm_w) with the
 * next layer's input_layernorm (or the final norm after the last layer).
 * A fixed summation order per token keeps results independent of the batch;
 * padding tokens (no experts) only get normed.
 */
#include "kernels.cuh"

#define COMBINE_MAX_K 32

/* Weighted sum of the token's expert rows into x, then the norm into xb. */
__global__ void __launch_bounds__(ROW_THREADS)
moe_combine_norm_kernel(int K, float *__restrict__ x, const float *__restrict__ y,
						const int32_t *__restrict__ assign_row, const float *__restrict__ topk_w,
						const float *__restrict__ norm_w, int H, float eps,
						__nv_bfloat16 *__restrict__ xb)
{
	chain_begin();
	__shared__ float scratch[32];
	__shared__ int rows[COMBINE_MAX_K];
	__shared__ float weights[COMBINE_MAX_K];
	size_t		base = (size_t) blockIdx.x * H;
	float		s[ROW_PER_THREAD];
	float		v[ROW_PER_THREAD];
	float		ss = 0.0f;

	if (threadIdx.x < K)
	{
		rows[threadIdx.x] = assign_row[(size_t) blockIdx.x * K + threadIdx.x];
		weights[threadIdx.x] = topk_w[(size_t) blockIdx.x * K + threadIdx.x];
	}
#pragma unroll
	for (int j = 0; j < ROW_PER_THREAD; j++)
	{
		int			i = threadIdx.x + j * ROW_THREADS;

		v[j] = i < H ? x[base + i] : 0.0f;
		s[j] = 0.0f;
	}
	__syncthreads();
	for (int k = 0; k < K; k++)
	{
		const float *yr;

		if (rows[k] < 0)
			continue;
		yr = y + (size_t) rows[k] * H;
#pragma unroll
		for (int j = 0; j < ROW_PER_THREAD; j++)
		{
			int			i = threadIdx.x + j * ROW_THREADS;

			if (i < H)
				s[j] += weights[k] * yr[i];
		}
	}
#pragma unroll
	for (int j = 0; j < ROW_PER_THREAD; j++)
	{
		v[j] += s[j];
		ss += v[j] * v[j];
	}
	store_row_and_norm(v, ss, norm_w, H, eps, base, x, xb, scratch);
}

/* Launches one block per token row. */
cudaError_t
launch_moe_combine_norm(int T, int K, float *x, const float *y, MoeRoute route,
						const float *topk_w, const float *norm_w, int H, float eps,
						__nv_bfloat16 *xb, cudaStream_t stream)
{
	if (K > COMBINE_MAX_K || H > ROW_MAX)
		return cudaErrorInvalidValue;
	if (T <= 0)
		return cudaSuccess;
	return launch_chained(moe_combine_norm_kernel, T, ROW_THREADS, 0, stream, K, x, y,
							  route.assign_row, topk_w, norm_w, H, eps, xb);
}
