/*
 * dense.cu: the dense bf16 products (q/k/v, o, lm_head) through cuBLAS.
 *
 * Weights are [N, K] row-major bf16 as in the checkpoint, activations
 * [T, K] row-major bf16, outputs [T, N] row-major fp32 with fp32
 * accumulation (CUBLAS_COMPUTE_32F).  In cuBLAS's column-major terms that is
 * Y^T (N x T) = W (as K x N, transposed) * X^T (K x T).  Biases are added by
 * the kernel that consumes the product, so no extra pass over Y is needed.
 *
 * A warp-per-row GEMV of our own for decode batches (T <= 8) was measured
 * slower than cuBLAS on H200 (bench/NOTES-cuda.md), so cuBLAS serves all T.
 */
#include "dense.cuh"

/* y[T][N] = x[T][K] . w[N][K]^T in fp32. */
int
dense_gemm(cublasHandle_t handle, const __nv_bfloat16 *w, int N, int K, const __nv_bfloat16 *x,
		   int T, float *y, gptoss_error *err, const char *what)
{
	const float one = 1.0f;
	const float zero = 0.0f;
	cublasStatus_t st;

	if (T <= 0)
		return 0;
	st = cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &one, w, CUDA_R_16BF, K, x,
					  CUDA_R_16BF, K, &zero, y, CUDA_R_32F, N, CUBLAS_COMPUTE_32F,
					  CUBLAS_GEMM_DEFAULT);
	if (st != CUBLAS_STATUS_SUCCESS)
		return gptoss_errorf(err, "CUDA error in %s: cuBLAS %s", what, cublasGetStatusString(st));
	return 0;
}
