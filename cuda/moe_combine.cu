/*
 * moe_combine.cu: closes the MoE block and opens the next layer.  One block
 * per token row: x += sum over k (in k order) of w_k * y[row of (t, k)],
 * where y already holds each expert's output with its bias, then
 * xb = bf16(RMSNorm(x) * norm_w) with the next layer's input_layernorm (or
 * the final norm after the last layer).  A fixed summation order per token
 * keeps results independent of the batch; padding tokens (no experts) only
 * get normed.
 */
#include "kernels.cuh"

#define COMBINE_THREADS 256
#define COMBINE_MAX_K 32

/* Weighted sum of the token's expert rows into x, then the norm into xb. */
__global__ void __launch_bounds__(COMBINE_THREADS)
moe_combine_norm_kernel(int K, float *__restrict__ x, const float *__restrict__ y,
						const int32_t *__restrict__ assign_row, const float *__restrict__ topk_w,
						const float *__restrict__ norm_w, int H, float eps,
						__nv_bfloat16 *__restrict__ xb)
{
	__shared__ float scratch[32];
	__shared__ int rows[COMBINE_MAX_K];
	__shared__ float weights[COMBINE_MAX_K];
	int			t = blockIdx.x;
	float	   *xr = x + (size_t) t * H;
	float		ss = 0.0f;
	float		inv;

	for (int k = threadIdx.x; k < K; k += blockDim.x)
	{
		rows[k] = assign_row[(size_t) t * K + k];
		weights[k] = topk_w[(size_t) t * K + k];
	}
	__syncthreads();
	for (int i = threadIdx.x; i < H; i += blockDim.x)
	{
		float		s = 0.0f;
		float		v;

		for (int k = 0; k < K; k++)
			if (rows[k] >= 0)
				s += weights[k] * y[(size_t) rows[k] * H + i];
		v = xr[i] + s;
		xr[i] = v;
		ss += v * v;
	}
	ss = block_sum(ss, scratch);
	inv = 1.0f / sqrtf(ss / (float) H + eps);
	for (int i = threadIdx.x; i < H; i += blockDim.x)
		xb[(size_t) t * H + i] = __float2bfloat16_rn(norm_w[i] * (xr[i] * inv));
}

/* Launches one block per token row. */
cudaError_t
launch_moe_combine_norm(int T, int K, float *x, const float *y, MoeRoute route,
						const float *topk_w, const float *norm_w, int H, float eps,
						__nv_bfloat16 *xb, cudaStream_t stream)
{
	if (K > COMBINE_MAX_K)
		return cudaErrorInvalidValue;
	if (T <= 0)
		return cudaSuccess;
	moe_combine_norm_kernel<<<T, COMBINE_THREADS, 0, stream>>>(K, x, y, route.assign_row, topk_w,
															   norm_w, H, eps, xb);
	return cudaGetLastError();
}
