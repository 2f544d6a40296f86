/*
 * embed.cu: the start of a step.  One block per token row, the row held in
 * registers (common.cuh): copies the token's bf16 embedding row into the
 * fp32 residual stream x and writes the first layer's RMSNorm of it as bf16
 * (the input of the q/k/v product).  Block 0 also applies the step's
 * page-table updates (new KV pages of the step's sequences), which the first
 * attention layer needs; kernels on one stream run in order, so they are in
 * place before any KV write or read.
 */
#include "kernels.cuh"

/* x[t] = embedding[tok_id[t]]; xb[t] = bf16(norm_w * x[t] / rms(x[t])). */
__global__ void __launch_bounds__(ROW_THREADS)
embed_norm_kernel(const int32_t *__restrict__ tok_id, const __nv_bfloat16 *__restrict__ embedding,
				  const float *__restrict__ norm_w, int H, float eps, float *__restrict__ x,
				  __nv_bfloat16 *__restrict__ xb, const int32_t *__restrict__ n_upd,
				  const int32_t *__restrict__ upd_index, const int32_t *__restrict__ upd_page,
				  int32_t *__restrict__ page_table)
{
	chain_begin();
	__shared__ float scratch[32];
	size_t		base = (size_t) blockIdx.x * H;
	const __nv_bfloat16 *src = embedding + (size_t) tok_id[blockIdx.x] * H;
	float		v[ROW_PER_THREAD];
	float		ss = 0.0f;

	if (blockIdx.x == 0)
		for (int i = threadIdx.x; i < *n_upd; i += blockDim.x)
			page_table[upd_index[i]] = upd_page[i];
#pragma unroll
	for (int j = 0; j < ROW_PER_THREAD; j++)
	{
		int			i = threadIdx.x + j * ROW_THREADS;

		v[j] = i < H ? __bfloat162float(src[i]) : 0.0f;
		ss += v[j] * v[j];
	}
	store_row_and_norm(v, ss, norm_w, H, eps, base, x, xb, scratch);
}

/* Launches one block per token row. */
cudaError_t
launch_embed_norm(const StepView &sv, int T, const __nv_bfloat16 *embedding, const float *norm_w,
				  int H, float eps, float *x, __nv_bfloat16 *xb, int32_t *page_table,
				  cudaStream_t stream)
{
	if (H > ROW_MAX)
		return cudaErrorInvalidValue;
	if (T <= 0)
		return cudaSuccess;
	return launch_chained(embed_norm_kernel, T, ROW_THREADS, 0, stream, sv.tok_id, embedding,
							  norm_w, H, eps, x, xb, sv.n_upd, sv.upd_index, sv.upd_page,
							  page_table);
}
