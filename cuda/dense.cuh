/*
 * dense.cuh: the cuBLAS dense product used for q/k/v, o and lm_head.
 */
#ifndef GPTOSS_CUDA_DENSE_CUH
#define GPTOSS_CUDA_DENSE_CUH

#include <cublas_v2.h>
#include "common.cuh"

/* token rows of every cuBLAS call (one shape, one algorithm: batch-invariant rows) */
#define DENSE_COLS 128

/*
 * y[T][N] = x[T][K] . w[N][K]^T (bf16 in, fp32 out and accumulate), issued as
 * calls of DENSE_COLS rows: x and y must hold T rounded up to DENSE_COLS rows.
 * -1 with err on failure.
 */
int			dense_gemm(cublasHandle_t handle, const __nv_bfloat16 *w, int N, int K,
					   const __nv_bfloat16 *x, int T, float *y, gptoss_error *err,
					   const char *what);

#endif							/* GPTOSS_CUDA_DENSE_CUH */
