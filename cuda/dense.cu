/*
 * dense.cu: the dense bf16 products (q/k/v, o, lm_head) through cuBLASLt.
 *
 * Weights are [N, K] row-major bf16 as in the checkpoint, activations
 * [T, K] row-major bf16, outputs [T, N] row-major fp32 with fp32
 * accumulation (CUBLAS_COMPUTE_32F).  In cuBLAS's column-major terms that is
 * Y^T (N x T) = W (as K x N, transposed) * X^T (K x T).  Biases are added by
 * the kernel that consumes the product, so no extra pass over Y is needed.
 *
 * Batch invariance.  Left to itself cuBLAS picks its algorithm (tile shape,
 * split-K) from the problem shape, so the same token row summed in a 1-token
 * step and in a 2048-token step could round differently, and a
 * rounding-level change flips near-tied router choices later on.  Each
 * product therefore takes one algorithm, chosen once at backend creation
 * (the heuristic's first for DENSE_COLS columns, what cuBLAS runs for a
 * decode step anyway), and every step runs it over all its rows in one call.
 * With the tile shape and the split of K fixed, an output tile's sums do not
 * depend on how many columns the call has: a column's result depends only
 * on its input column (test_kernels checks each row of a wide call against
 * the row alone, bit for bit).  An algorithm that cannot run the widest
 * step in one call (a split-K one) runs in calls of DENSE_COLS columns.
 * Padded columns (T rounded up to DENSE_COLS) are computed and ignored.
 *
 * Cost (H200, bench/RESULTS.md run 43): one call over 2,048 columns instead
 * of 16 calls of 128 takes q/k/v from 168 to 107 us and o from 173 to 100 us
 * (prefill 2048: 34,878 -> 36,853 tok/s); decode steps are unchanged.  The
 * heuristic's first choices for 2,048 columns are 20-30 % faster there but
 * 2-3x slower at 128 columns (batch-1 decode 421 -> 277 tok/s), and a
 * product may take only one of them.
 */
#include "dense.cuh"

/* The descriptors of one call over cols columns. */
typedef struct DenseCall
{
	cublasLtMatmulDescOpaque_t op;
	cublasLtMatrixLayoutOpaque_t w;	/* K x N column-major, used transposed */
	cublasLtMatrixLayoutOpaque_t x;	/* K x cols */
	cublasLtMatrixLayoutOpaque_t y;	/* N x cols, fp32 */
} DenseCall;

/* Fills c for an N x K weight times cols columns. */
static cublasStatus_t
describe_call(int N, int K, int cols, DenseCall *c)
{
	cublasOperation_t ta = CUBLAS_OP_T;
	cublasOperation_t tb = CUBLAS_OP_N;
	cublasStatus_t st;

	if ((st = cublasLtMatmulDescInit(&c->op, CUBLAS_COMPUTE_32F, CUDA_R_32F)) != CUBLAS_STATUS_SUCCESS ||
		(st = cublasLtMatmulDescSetAttribute(&c->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta)) !=
		CUBLAS_STATUS_SUCCESS ||
		(st = cublasLtMatmulDescSetAttribute(&c->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb)) !=
		CUBLAS_STATUS_SUCCESS ||
		(st = cublasLtMatrixLayoutInit(&c->w, CUDA_R_16BF, K, N, K)) != CUBLAS_STATUS_SUCCESS ||
		(st = cublasLtMatrixLayoutInit(&c->x, CUDA_R_16BF, K, cols, K)) != CUBLAS_STATUS_SUCCESS)
		return st;
	return cublasLtMatrixLayoutInit(&c->y, CUDA_R_32F, N, cols, N);
}

/* The heuristic's first algorithm for cols columns within the workspace. */
static cublasStatus_t
first_algo(cublasLtHandle_t lt, int N, int K, int cols, cublasLtMatmulAlgo_t *algo)
{
	DenseCall	c;
	cublasLtMatmulPreferenceOpaque_t pref;
	cublasLtMatmulHeuristicResult_t result;
	size_t		ws = DENSE_WORKSPACE_BYTES;
	int			found = 0;
	cublasStatus_t st;

	if ((st = describe_call(N, K, cols, &c)) != CUBLAS_STATUS_SUCCESS ||
		(st = cublasLtMatmulPreferenceInit(&pref)) != CUBLAS_STATUS_SUCCESS ||
		(st = cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
												   sizeof ws)) != CUBLAS_STATUS_SUCCESS ||
		(st = cublasLtMatmulAlgoGetHeuristic(lt, &c.op, &c.w, &c.x, &c.y, &c.y, &pref, 1, &result,
											 &found)) != CUBLAS_STATUS_SUCCESS)
		return st;
	if (found < 1 || result.state != CUBLAS_STATUS_SUCCESS)
		return CUBLAS_STATUS_NOT_SUPPORTED;
	*algo = result.algo;
	return CUBLAS_STATUS_SUCCESS;
}

/* Whether algo runs cols columns within the workspace. */
static bool
algo_runs(cublasLtHandle_t lt, int N, int K, int cols, const cublasLtMatmulAlgo_t *algo)
{
	DenseCall	c;
	cublasLtMatmulHeuristicResult_t check;

	return describe_call(N, K, cols, &c) == CUBLAS_STATUS_SUCCESS &&
		cublasLtMatmulAlgoCheck(lt, &c.op, &c.w, &c.x, &c.y, &c.y, algo, &check) == CUBLAS_STATUS_SUCCESS &&
		check.workspaceSize <= DENSE_WORKSPACE_BYTES;
}

/* Chooses p's one algorithm for steps of up to max_rows rows. */
int
build_dense_product(cublasLtHandle_t lt, int N, int K, int max_rows, DenseProduct *p, gptoss_error *err)
{
	cublasStatus_t st = first_algo(lt, N, K, DENSE_COLS, &p->algo);

	if (st != CUBLAS_STATUS_SUCCESS)
		return gptoss_errorf(err, "CUDA error in cuBLASLt algorithm choice (%d x %d): %s", N, K,
							 cublasLtGetStatusString(st));
	p->N = N;
	p->K = K;
	p->max_cols = algo_runs(lt, N, K, max_rows, &p->algo) ? max_rows : DENSE_COLS;
	return 0;
}

/* y[T][N] = x[T][K] . w[N][K]^T in fp32, in calls of up to p->max_cols rows. */
int
dense_gemm(cublasLtHandle_t lt, const DenseProduct *p, void *workspace, const __nv_bfloat16 *w,
		   const __nv_bfloat16 *x, int T, float *y, cudaStream_t stream, gptoss_error *err,
		   const char *what)
{
	const float one = 1.0f;
	const float zero = 0.0f;
	int			rows = div_up(T, DENSE_COLS) * DENSE_COLS;

	for (int t0 = 0; t0 < rows; t0 += p->max_cols)
	{
		int			cols = rows - t0 < p->max_cols ? rows - t0 : p->max_cols;
		float	   *y0 = y + (size_t) t0 * p->N;
		DenseCall	c;
		cublasStatus_t st;

		if ((st = describe_call(p->N, p->K, cols, &c)) == CUBLAS_STATUS_SUCCESS)
			st = cublasLtMatmul(lt, &c.op, &one, w, &c.w, x + (size_t) t0 * p->K, &c.x, &zero, y0, &c.y,
								y0, &c.y, &p->algo, workspace, DENSE_WORKSPACE_BYTES, stream);
		if (st != CUBLAS_STATUS_SUCCESS)
			return gptoss_errorf(err, "CUDA error in %s: cuBLASLt %s", what, cublasLtGetStatusString(st));
	}
	return 0;
}
