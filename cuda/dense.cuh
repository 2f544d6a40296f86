/*
 * dense.cuh: the dense bf16 products (q/k/v, o, lm_head) through cuBLASLt.
 */
#ifndef GPTOSS_CUDA_DENSE_CUH
#define GPTOSS_CUDA_DENSE_CUH

#include <cublasLt.h>
#include "common.cuh"

/* token rows the buffers are rounded to, and the width the algorithm is chosen for */
#define DENSE_COLS 128

/* cuBLASLt workspace shared by every product (one stream) */
#define DENSE_WORKSPACE_BYTES (32u << 20)

/* One product shape and the one algorithm every call of it uses. */
typedef struct DenseProduct
{
	int			N;				/* output features (weight rows) */
	int			K;				/* input features (weight columns) */
	int			max_cols;		/* token rows of the widest call (multiple of DENSE_COLS) */
	cublasLtMatmulAlgo_t algo;
} DenseProduct;

/*
 * Chooses the algorithm of y[T][N] = x[T][K] . w[N][K]^T for steps of up to
 * max_rows token rows (a multiple of DENSE_COLS).  -1 with err on failure.
 */
int			build_dense_product(cublasLtHandle_t lt, int N, int K, int max_rows, DenseProduct *p,
								gptoss_error *err);

/*
 * y[T][N] = x[T][K] . w[N][K]^T (bf16 in, fp32 out and accumulate) with p's
 * algorithm: x and y must hold T rounded up to DENSE_COLS rows.  -1 with err
 * on failure.
 */
int			dense_gemm(cublasLtHandle_t lt, const DenseProduct *p, void *workspace,
					   const __nv_bfloat16 *w, const __nv_bfloat16 *x, int T, float *y,
					   cudaStream_t stream, gptoss_error *err, const char *what);

#endif							/* GPTOSS_CUDA_DENSE_CUH */
