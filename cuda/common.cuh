/*
 * common.cuh: what every CUDA file of the backend shares: the engine's C
 * headers (with C linkage), the error convention and small device helpers.
 *
 * Error convention: no CUDA or cuBLAS failure ever aborts.  Launchers return
 * the cudaError_t of the launch (cudaGetLastError right after it); the
 * backend turns any failure into a -1 return with gptoss_error set to
 * "CUDA error in <what>: <cudaGetErrorString>".
 */
#ifndef GPTOSS_CUDA_COMMON_CUH
#define GPTOSS_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "common.h"
#include "model.h"
#include "sampler.h"
#include "backend.h"
}

/* Reports a failed CUDA call into err and returns -1 from the enclosing function. */
#define CUDA_TRY(call, err, what) \
	do { \
		cudaError_t cuda_try_rc_ = (call); \
		if (cuda_try_rc_ != cudaSuccess) \
			return gptoss_errorf((err), "CUDA error in %s: %s", (what), \
								 cudaGetErrorString(cuda_try_rc_)); \
	} while (0)

/*
 * Programmatic dependent launch (sm_90).  The step's kernels are launched
 * with launch_chained, which lets the next kernel's blocks be scheduled
 * while the current kernel still runs, so a kernel boundary no longer costs
 * a full launch gap.  Every kernel so launched starts with chain_begin():
 * wait until the previous kernel has completed and its writes are visible
 * (first, before any memory access or early return, so that completion
 * stays transitive along the chain), then let its own successor launch.
 * Without a programmatic predecessor the wait returns at once.
 */
static __device__ __forceinline__ void
chain_begin(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.wait;\n" ::: "memory");
	asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/*
 * Launches kernel<<<grid, block, smem, stream>>>(args...) as a chained (PDL)
 * launch in thread-block clusters of cluster blocks along x (1: no cluster
 * attribute).  Programmatic serialization and a cluster dimension may be
 * given together (CUTLASS launches its sm_90 cluster kernels so), also
 * under CUDA-graph capture.
 */
template <typename... Params, typename... Args>
static inline cudaError_t
launch_chained_clusters(void (*kernel) (Params...), dim3 grid, dim3 block, size_t smem,
						int cluster, cudaStream_t stream, Args... args)
{
	cudaLaunchAttribute attr[2];
	cudaLaunchConfig_t cfg = {};

	attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	attr[0].val.programmaticStreamSerializationAllowed = 1;
	attr[1].id = cudaLaunchAttributeClusterDimension;
	attr[1].val.clusterDim.x = cluster;
	attr[1].val.clusterDim.y = 1;
	attr[1].val.clusterDim.z = 1;
	cfg.gridDim = grid;
	cfg.blockDim = block;
	cfg.dynamicSmemBytes = smem;
	cfg.stream = stream;
	cfg.attrs = attr;
	cfg.numAttrs = cluster > 1 ? 2 : 1;
	return cudaLaunchKernelEx(&cfg, kernel, args...);
}

/* Launches kernel<<<grid, block, smem, stream>>>(args...) as a chained (PDL) launch. */
template <typename... Params, typename... Args>
static inline cudaError_t
launch_chained(void (*kernel) (Params...), dim3 grid, dim3 block, size_t smem,
			   cudaStream_t stream, Args... args)
{
	return launch_chained_clusters(kernel, grid, block, smem, 1, stream, args...);
}

/* Copies 16 bytes from global to shared memory, bypassing registers and L1 (cp.async, sm_80+). */
static __device__ __forceinline__ void
cp_async16(void *dst, const void *src)
{
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n"
				 :: "r"((unsigned) __cvta_generic_to_shared(dst)), "l"(src));
}

/* Closes the group of the cp.async copies issued so far by this thread. */
static __device__ __forceinline__ void
cp_async_commit(void)
{
	asm volatile("cp.async.commit_group;\n" ::);
}

/* Waits until at most N of this thread's cp.async groups are still in flight. */
template <int N>
static __device__ __forceinline__ void
cp_async_wait(void)
{
	asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
}

/* Sum over the 32 lanes of a warp (every lane gets the total, fixed order). */
template <typename T>
static __device__ __forceinline__ T
warp_sum(T v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

/* Maximum over the 32 lanes of a warp (NaN ignored, as fmaxf does). */
static __device__ __forceinline__ float
warp_max(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

/*
 * Sum over a whole block of blockDim.x threads (a multiple of 32, at most
 * 1024); every thread gets the total.  scratch holds 32 values.  The order
 * of additions depends only on blockDim, never on the data or the batch.
 */
template <typename T>
static __device__ __forceinline__ T
block_sum(T v, T *scratch)
{
	int			lane = threadIdx.x & 31;
	int			warp = threadIdx.x >> 5;
	int			n_warps = blockDim.x >> 5;

	v = warp_sum(v);
	__syncthreads();			/* scratch may still be read by a previous call */
	if (lane == 0)
		scratch[warp] = v;
	__syncthreads();
	v = lane < n_warps ? scratch[lane] : (T) 0;
	return warp_sum(v);
}

/* Maximum over a whole block (as block_sum; NaN ignored). */
static __device__ __forceinline__ float
block_max(float v, float *scratch)
{
	int			lane = threadIdx.x & 31;
	int			warp = threadIdx.x >> 5;
	int			n_warps = blockDim.x >> 5;

	v = warp_max(v);
	__syncthreads();
	if (lane == 0)
		scratch[warp] = v;
	__syncthreads();
	v = lane < n_warps ? scratch[lane] : -INFINITY;
	return warp_max(v);
}

/* Whether (v, i) ranks before (w, j): larger value first, lower id on ties. */
static __device__ __forceinline__ bool
ranks_before(float v, int i, float w, int j)
{
	return v > w || (v == w && i < j);
}

/*
 * Argmax over the 32 lanes of a warp: the (value, id) that ranks first, in
 * every lane.  id < 0 marks a lane that holds nothing (its value is
 * ignored); the result has id < 0 only when no lane held anything.
 */
static __device__ __forceinline__ void
warp_best(float *v, int *id)
{
	for (int off = 16; off > 0; off >>= 1)
	{
		float		ov = __shfl_xor_sync(0xffffffffu, *v, off);
		int			oi = __shfl_xor_sync(0xffffffffu, *id, off);

		if (oi >= 0 && (*id < 0 || ranks_before(ov, oi, *v, *id)))
		{
			*v = ov;
			*id = oi;
		}
	}
}

/* Argmax over a whole block (as warp_best); scratch_v and scratch_id hold 32 each. */
static __device__ __forceinline__ void
block_best(float *v, int *id, float *scratch_v, int *scratch_id)
{
	int			lane = threadIdx.x & 31;
	int			warp = threadIdx.x >> 5;
	int			n_warps = blockDim.x >> 5;

	warp_best(v, id);
	__syncthreads();			/* scratch may still be read by a previous call */
	if (lane == 0)
	{
		scratch_v[warp] = *v;
		scratch_id[warp] = *id;
	}
	__syncthreads();
	*v = lane < n_warps ? scratch_v[lane] : -INFINITY;
	*id = lane < n_warps ? scratch_id[lane] : -1;
	warp_best(v, id);
}

/*
 * 1 / sqrt(mean(x^2) + eps) of a row of H values spread over the block, from
 * each thread's share ss of the sum of squares; every thread gets it.  The
 * CPU backend's RMSNorm is w * (x * rms_inverse).
 */
static __device__ __forceinline__ float
rms_inverse(float ss, int H, float eps, float *scratch)
{
	return 1.0f / sqrtf(block_sum(ss, scratch) / (float) H + eps);
}

/*
 * Row kernels (norms, residual adds, combine) run one block of ROW_THREADS
 * per token row and keep the row in registers, ROW_PER_THREAD values per
 * thread: every load of a thread is issued before the first use, so a row
 * costs one memory round trip instead of one per loop iteration (what
 * dominates at decode batch sizes).  Rows up to ROW_THREADS * ROW_PER_THREAD.
 */
#define ROW_THREADS 512
#define ROW_PER_THREAD 8
#define ROW_MAX (ROW_THREADS * ROW_PER_THREAD)

/*
 * Ends a row kernel that produced residual row v: stores it into the fp32
 * stream x[base ..] and its RMSNorm (times norm_w) as bf16 into xb[base ..],
 * the input of the next product.  ss is this thread's sum of v[j]^2.
 */
static __device__ __forceinline__ void
store_row_and_norm(const float (&v)[ROW_PER_THREAD], float ss, const float *__restrict__ norm_w,
				   int H, float eps, size_t base, float *__restrict__ x,
				   __nv_bfloat16 *__restrict__ xb, float *scratch)
{
	float		inv = rms_inverse(ss, H, eps, scratch);

#pragma unroll
	for (int j = 0; j < ROW_PER_THREAD; j++)
	{
		int			i = threadIdx.x + j * ROW_THREADS;

		if (i < H)
		{
			x[base + i] = v[j];
			xb[base + i] = __float2bfloat16_rn(norm_w[i] * (v[j] * inv));
		}
	}
}

/* Ceiling division for sizes. */
static inline GPTOSS_HD int
div_up(int a, int b)
{
	return (a + b - 1) / b;
}

#endif							/* GPTOSS_CUDA_COMMON_CUH */
