/*
 * bench_dense.cu: which cuBLASLt algorithm should carry the dense products
 * (q/k/v, o, lm_head), on the GPU machine.
 *
 * Batch invariance needs one algorithm for every step size: a token row's
 * product must round the same in a 1-token step and in a 2,048-token one.
 * Today dense_gemm issues T/128 cuBLAS calls of 128 columns.  Here each
 * algorithm the heuristic offers for the 128-column problem is timed at 128
 * columns and run once over T columns (one wide call), and each wide result
 * is compared bit for bit with the 128-column calls on the same inputs: an
 * algorithm is usable only if they agree.  The heuristic's first choices for
 * the T-column problem are checked the same way.  Random bf16 weights and inputs.
 *
 *   nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a \
 *        -o build/gpu/bench_dense test/gpu/bench_dense.cu -lcublasLt -lcublas
 *   build/gpu/bench_dense [T [candidates]]   (T a multiple of 128, default 2048)
 *
 * One JSON line per algorithm (bench/RESULTS.md run 43).
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
	fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); return 1; } } while (0)
#define CKB(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { \
	fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cublasGetStatusString(s_)); return 1; } } while (0)

#define COLS 128
#define WS_BYTES (32u << 20)

static cublasLtHandle_t lt;
static void *ws;
static cudaStream_t stream;

/* The descriptors of y[n][N] = x[n][K] . w[N][K]^T (bf16 in, fp32 out). */
struct Problem
{
	cublasLtMatmulDesc_t op;
	cublasLtMatrixLayout_t a, b, c;
};

/* Creates the descriptors for an N x K weight and n columns. */
static void
build_problem(int N, int K, int n, Problem *p)
{
	cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;

	cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
	cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
	cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
	cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, K, N, K);
	cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, K, n, K);
	cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, N, n, N);
}

/* Destroys what build_problem created. */
static void
free_problem(Problem *p)
{
	cublasLtMatrixLayoutDestroy(p->a);
	cublasLtMatrixLayoutDestroy(p->b);
	cublasLtMatrixLayoutDestroy(p->c);
	cublasLtMatmulDescDestroy(p->op);
}

/* y[n][N] = x[n][K] . w[N][K]^T with a given Lt algorithm. */
static cublasStatus_t
lt_gemm(const cublasLtMatmulAlgo_t *algo, const __nv_bfloat16 *w, int N, int K,
		const __nv_bfloat16 *x, int n, float *y)
{
	Problem		p;
	float		one = 1.0f, zero = 0.0f;
	cublasStatus_t st;

	build_problem(N, K, n, &p);
	st = cublasLtMatmul(lt, p.op, &one, w, p.a, x, p.b, &zero, y, p.c, y, p.c, algo, ws, WS_BYTES, stream);
	free_problem(&p);
	return st;
}

/* Up to max algorithms the heuristic proposes for n columns. */
static int
heuristics(int N, int K, int n, int max, std::vector<cublasLtMatmulHeuristicResult_t> &out)
{
	Problem		p;
	cublasLtMatmulPreference_t pref;
	size_t		wsb = WS_BYTES;
	int			got = 0;

	out.resize(max);
	build_problem(N, K, n, &p);
	cublasLtMatmulPreferenceCreate(&pref);
	cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
	cublasLtMatmulAlgoGetHeuristic(lt, p.op, p.a, p.b, p.c, p.c, pref, max, out.data(), &got);
	out.resize(got);
	cublasLtMatmulPreferenceDestroy(pref);
	free_problem(&p);
	return got;
}

/* The configuration attributes that tell algorithms apart, as one line. */
static void
describe(const cublasLtMatmulAlgo_t *algo, char *buf, size_t len)
{
	int			id = 0, tile = 0, splitk = 0, red = 0, swz = 0, custom = 0, stages = 0, cluster = 0;
	size_t		sz;

	cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &sz);
	cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &sz);
	cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &sz);
	cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof red, &sz);
	cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swz, sizeof swz, &sz);
	cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &custom, sizeof custom, &sz);
	cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &sz);
	cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof cluster, &sz);
	snprintf(buf, len, "id %d tile %d splitk %d red %d swz %d custom %d stages %d cluster %d",
			 id, tile, splitk, red, swz, custom, stages, cluster);
}

/* Mean microseconds of reps runs of fn (after one warm-up). */
template <typename F>
static float
time_us(F fn, int reps)
{
	cudaEvent_t e0, e1;
	float		ms = 0;

	if (fn() != CUBLAS_STATUS_SUCCESS)
		return -1;
	cudaEventCreate(&e0);
	cudaEventCreate(&e1);
	cudaEventRecord(e0, stream);
	for (int i = 0; i < reps; i++)
		fn();
	cudaEventRecord(e1, stream);
	cudaEventSynchronize(e1);
	cudaEventElapsedTime(&ms, e0, e1);
	cudaEventDestroy(e0);
	cudaEventDestroy(e1);
	return ms * 1000.0f / reps;
}

/* Fills a device bf16 buffer with uniform values in [-scale, scale). */
static int
fill_random(__nv_bfloat16 *d, size_t n, float scale, unsigned seed)
{
	std::vector<__nv_bfloat16> h(n);

	srand(seed);
	for (size_t i = 0; i < n; i++)
		h[i] = __float2bfloat16(scale * (2.0f * rand() / (float) RAND_MAX - 1.0f));
	CK(cudaMemcpy(d, h.data(), n * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
	return 0;
}

/* One product shape: every candidate's timings and its wide-vs-128 bit check. */
static int
bench_shape(const char *name, int N, int K, int T, int max_candidates, cublasHandle_t blas)
{
	__nv_bfloat16 *w, *x;
	float	   *y_wide, *y_cols;
	std::vector<cublasLtMatmulHeuristicResult_t> cand, wide_cand;
	size_t		n_narrow;
	size_t		ybytes = (size_t) T * N * sizeof(float);
	std::vector<float> h_wide((size_t) T * N), h_cols((size_t) T * N);
	const float one = 1.0f, zero = 0.0f;

	CK(cudaMalloc(&w, (size_t) N * K * 2));
	CK(cudaMalloc(&x, (size_t) T * K * 2));
	CK(cudaMalloc(&y_wide, ybytes));
	CK(cudaMalloc(&y_cols, ybytes));
	if (fill_random(w, (size_t) N * K, 0.05f, 1) || fill_random(x, (size_t) T * K, 1.0f, 2))
		return 1;

	/* today's path: cublasGemmEx in calls of 128 columns */
	{
		auto		loop = [&](int n) {
			cublasStatus_t st = CUBLAS_STATUS_SUCCESS;

			for (int t0 = 0; t0 < n && st == CUBLAS_STATUS_SUCCESS; t0 += COLS)
				st = cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, N, COLS, K, &one, w, CUDA_R_16BF, K,
								  x + (size_t) t0 * K, CUDA_R_16BF, K, &zero, y_cols + (size_t) t0 * N,
								  CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
			return st;
		};

		printf("{\"shape\":\"%s\",\"N\":%d,\"K\":%d,\"algo\":\"gemmex loop\",\"us_128\":%.2f,\"us_%d\":%.2f}\n",
			   name, N, K, time_us([&] { return loop(COLS); }, 50), T, time_us([&] { return loop(T); }, 10));
	}

	heuristics(N, K, COLS, max_candidates, cand);
	heuristics(N, K, T, 4, wide_cand);
	/* the heuristic's first choices for the wide problem, checked the same way */
	n_narrow = cand.size();
	cand.insert(cand.end(), wide_cand.begin(), wide_cand.end());
	for (size_t i = 0; i < cand.size(); i++)
	{
		const cublasLtMatmulAlgo_t *algo = &cand[i].algo;
		char		d[200];
		float		us128, us256, usT;
		long		differ = 0;

		describe(algo, d, sizeof d);
		us128 = time_us([&] { return lt_gemm(algo, w, N, K, x, COLS, y_cols); }, 50);
		us256 = time_us([&] { return lt_gemm(algo, w, N, K, x, 2 * COLS, y_wide); }, 20);
		usT = time_us([&] { return lt_gemm(algo, w, N, K, x, T, y_wide); }, 10);
		if (us128 >= 0 && usT >= 0)
		{
			for (int t0 = 0; t0 < T; t0 += COLS)
				lt_gemm(algo, w, N, K, x + (size_t) t0 * K, COLS, y_cols + (size_t) t0 * N);
			CK(cudaStreamSynchronize(stream));
			CK(cudaMemcpy(h_wide.data(), y_wide, ybytes, cudaMemcpyDeviceToHost));
			CK(cudaMemcpy(h_cols.data(), y_cols, ybytes, cudaMemcpyDeviceToHost));
			for (size_t j = 0; j < h_wide.size(); j++)
				differ += memcmp(&h_wide[j], &h_cols[j], sizeof(float)) != 0;
		}
		printf("{\"shape\":\"%s\",\"heuristic_for\":%d,\"candidate\":%zu,\"config\":\"%s\",\"us_128\":%.2f,\"us_256\":%.2f,"
			   "\"us_%d\":%.2f,\"wide_vs_128_differ\":%ld}\n", name, i < n_narrow ? COLS : T,
			   i < n_narrow ? i : i - n_narrow, d, us128, us256, T, usT, differ);
	}
	cudaFree(w);
	cudaFree(x);
	cudaFree(y_wide);
	cudaFree(y_cols);
	return 0;
}

int
main(int argc, char **argv)
{
	int			T = argc > 1 ? atoi(argv[1]) : 2048;
	int			max_candidates = argc > 2 ? atoi(argv[2]) : 16;
	cublasHandle_t blas;

	if (T < COLS || T % COLS)
	{
		fprintf(stderr, "T must be a positive multiple of %d\n", COLS);
		return 2;
	}
	CK(cudaStreamCreate(&stream));
	CK(cudaMalloc(&ws, WS_BYTES));
	CKB(cublasLtCreate(&lt));
	CKB(cublasCreate(&blas));
	CKB(cublasSetStream(blas, stream));
	CKB(cublasSetWorkspace(blas, ws, WS_BYTES));
	if (bench_shape("qkv", 5120, 2880, T, max_candidates, blas) ||
		bench_shape("o", 2880, 4096, T, max_candidates, blas))
		return 1;
	return 0;
}
