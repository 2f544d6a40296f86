/*
 * dense.cu: the dense bf16 products (q/k/v, o, lm_head) through cuBLAS.
 *
 * Weights are [N, K] row-major bf16 as in the checkpoint, activations
 * [T, K] row-major bf16, outputs [T, N] row-major fp32 with fp32
 * accumulation (CUBLAS_COMPUTE_32F).  In cuBLAS's column-major terms that is
 * Y^T (N x T) = W (as K x N, transposed) * X^T (K x T).  Biases are added by
 * the kernel that consumes the product, so no extra pass over Y is needed.
 *
 * Batch invariance.  cuBLAS picks its algorithm (tile shape, split-K,
 * stream-K) from the problem shape, so the same token row summed in a
 * 1-token step and in a 2048-token step can round differently, and a
 * rounding-level change flips near-tied router choices later on.  The
 * product is therefore always issued as calls of exactly DENSE_COLS token
 * rows (the last one padded with whatever the buffer holds there; padded
 * columns are computed and ignored, and a column of the result depends only
 * on its own input column).  Every call then has one shape, cuBLAS takes
 * one algorithm for it, and a row's result does not depend on how many
 * rows the step has.  The caller's x and y must hold T rounded up to a
 * multiple of DENSE_COLS rows.  Cost (H200, bench/RESULTS.md, CUDA run 16):
 * decode products compute 128 columns (memory-bound anyway: batch 1 2% slower,
 * batch 128 faster), a 2048-token prefill reads each weight 16 times (mostly
 * from L2); 128 beat 64 on prefill 2048 (15,461 vs 14,704 tok/s).
 *
 * A warp-per-row GEMV of our own for decode batches (T <= 8) was measured
 * slower than cuBLAS on H200 (bench/NOTES-cuda.md), so cuBLAS serves all T.
 */
#include "dense.cuh"

/* y[T][N] = x[T][K] . w[N][K]^T in fp32, in calls of DENSE_COLS rows. */
int
dense_gemm(cublasHandle_t handle, const __nv_bfloat16 *w, int N, int K, const __nv_bfloat16 *x,
		   int T, float *y, gptoss_error *err, const char *what)
{
	const float one = 1.0f;
	const float zero = 0.0f;

	for (int t0 = 0; t0 < T; t0 += DENSE_COLS)
	{
		cublasStatus_t st = cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, N, DENSE_COLS, K, &one, w,
										 CUDA_R_16BF, K, x + (size_t) t0 * K, CUDA_R_16BF, K, &zero,
										 y + (size_t) t0 * N, CUDA_R_32F, N, CUBLAS_COMPUTE_32F,
										 CUBLAS_GEMM_DEFAULT);

		if (st != CUBLAS_STATUS_SUCCESS)
			return gptoss_errorf(err, "CUDA error in %s: cuBLAS %s", what, cublasGetStatusString(st));
	}
	return 0;
}
