/*
 * gather_rows.cu: copies the final-normed rows whose logits are wanted
 * (the last token of each sampled entry, or a chunk of all rows when the
 * caller asks for logits) into a contiguous matrix for the lm_head product,
 * so that a prefill computes logits for one row per sequence, not for every
 * prompt token.  One block per output row, 16-byte copies when H allows.
 */
#include "kernels.cuh"

/* out[r] = xb[rows[r]]. */
__global__ void
gather_rows_kernel(const int32_t *__restrict__ rows, const __nv_bfloat16 *__restrict__ xb, int H,
				   __nv_bfloat16 *__restrict__ out)
{
	chain_begin();
	int			r = blockIdx.x;
	const __nv_bfloat16 *src = xb + (size_t) rows[r] * H;
	__nv_bfloat16 *dst = out + (size_t) r * H;

	if (H % 8 == 0)
		for (int i = threadIdx.x; i < H / 8; i += blockDim.x)
			((uint4 *) dst)[i] = ((const uint4 *) src)[i];
	else
		for (int i = threadIdx.x; i < H; i += blockDim.x)
			dst[i] = src[i];
}

/* Launches one block per output row. */
cudaError_t
launch_gather_rows(const int32_t *rows, int R, const __nv_bfloat16 *xb, int H, __nv_bfloat16 *out,
				   cudaStream_t stream)
{
	if (R <= 0)
		return cudaSuccess;
	return launch_chained(gather_rows_kernel, R, 128, 0, stream, rows, xb, H, out);
}
