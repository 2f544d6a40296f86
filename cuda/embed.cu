/*
 * embed.cu: the start of a step.  One block per token row: copies the
 * token's bf16 embedding row into the fp32 residual stream x and writes the
 * first layer's RMSNorm of it as bf16 (the input of the q/k/v product).
 * Block 0 also applies the step's page-table updates (new KV pages of the
 * step's sequences), which the first attention layer needs; kernels on one
 * stream run in order, so they are in place before any KV write or read.
 */
#include "kernels.cuh"

#define EMBED_THREADS 256

/* x[t] = embedding[tok_id[t]]; xb[t] = bf16(norm_w * x[t] / rms(x[t])). */
__global__ void __launch_bounds__(EMBED_THREADS)
embed_norm_kernel(const int32_t *__restrict__ tok_id, const __nv_bfloat16 *__restrict__ embedding,
				  const float *__restrict__ norm_w, int H, float eps, float *__restrict__ x,
				  __nv_bfloat16 *__restrict__ xb, const int32_t *__restrict__ n_upd,
				  const int32_t *__restrict__ upd_index, const int32_t *__restrict__ upd_page,
				  int32_t *__restrict__ page_table)
{
	__shared__ float scratch[32];
	int			t = blockIdx.x;
	const __nv_bfloat16 *src = embedding + (size_t) tok_id[t] * H;
	float	   *xr = x + (size_t) t * H;
	float		ss = 0.0f;
	float		inv;

	if (t == 0)
		for (int i = threadIdx.x; i < *n_upd; i += blockDim.x)
			page_table[upd_index[i]] = upd_page[i];
	for (int i = threadIdx.x; i < H; i += blockDim.x)
	{
		float		v = __bfloat162float(src[i]);

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
launch_embed_norm(const StepView &sv, int T, const __nv_bfloat16 *embedding, const float *norm_w,
				  int H, float eps, float *x, __nv_bfloat16 *xb, int32_t *page_table,
				  cudaStream_t stream)
{
	if (T <= 0)
		return cudaSuccess;
	embed_norm_kernel<<<T, EMBED_THREADS, 0, stream>>>(sv.tok_id, embedding, norm_w, H, eps, x, xb,
													   sv.n_upd, sv.upd_index, sv.upd_page,
													   page_table);
	return cudaGetLastError();
}
