/*
 * moe_route.cu: groups the step's (token, k) expert assignments by expert on
 * the device, so that the expert kernels read each selected expert's weights
 * once for all of its tokens, with no host round trip.
 *
 * moe_route_kernel (one block): counts assignments per expert, gives each
 * expert a run of rows in a sorted order whose runs start at multiples of 8
 * (one mma token tile never mixes experts), lists the active experts in
 * ascending order, and gives every assignment its row.  Rows inside an
 * expert's run come in atomic order; that changes no result, since each row
 * is computed independently.
 * moe_gather_kernel (one block per assignment): writes the token's normed
 * activations, as fp16, at its row of the fragment layout (moe_layout.cuh),
 * or of the tile layout in the prefill steps of the variants that read it.
 * Padding columns and rows of that buffer are never written: they stay as
 * zeroed at creation or as finite values of earlier steps (of either layout:
 * a padding column meets zero weight codes, a padding row's results are
 * never stored).
 */
#include "kernels.cuh"

#define ROUTE_THREADS 1024

/* Counts, offsets, active list and rows of all assignments. */
__global__ void __launch_bounds__(ROUTE_THREADS)
moe_route_kernel(int n_assign, int E, const int32_t *__restrict__ topk_idx, MoeRoute route)
{
	chain_begin();
	__shared__ int count[ROUTER_MAX_EXPERTS];
	__shared__ int offset[ROUTER_MAX_EXPERTS];
	__shared__ int fill[ROUTER_MAX_EXPERTS];

	for (int e = threadIdx.x; e < E; e += blockDim.x)
	{
		count[e] = 0;
		fill[e] = 0;
	}
	__syncthreads();
	for (int i = threadIdx.x; i < n_assign; i += blockDim.x)
	{
		int			e = topk_idx[i];

		if (e >= 0)
			atomicAdd(&count[e], 1);
	}
	__syncthreads();
	if (threadIdx.x == 0)
	{
		int			next = 0;
		int			n_active = 0;

		for (int e = 0; e < E; e++)
		{
			offset[e] = next;
			next += (count[e] + 7) & ~7;
			if (count[e] > 0)
				route.active[n_active++] = e;
		}
		*route.n_active = n_active;
	}
	__syncthreads();
	for (int e = threadIdx.x; e < E; e += blockDim.x)
	{
		route.count[e] = count[e];
		route.offset[e] = offset[e];
	}
	for (int i = threadIdx.x; i < n_assign; i += blockDim.x)
	{
		int			e = topk_idx[i];

		route.assign_row[i] = e >= 0 ? offset[e] + atomicAdd(&fill[e], 1) : -1;
	}
}

/* Launches the single-block grouping of T*K assignments. */
cudaError_t
launch_moe_route(int T, int K, int E, const int32_t *topk_idx, MoeRoute route,
				 cudaStream_t stream)
{
	if (E > ROUTER_MAX_EXPERTS)
		return cudaErrorInvalidValue;
	return launch_chained(moe_route_kernel, 1, ROUTE_THREADS, 0, stream, T * K, E, topk_idx, route);
}

/* Assignment blockIdx.x = t*K + k: its token's row of xn, as fp16, at its sorted row (TILES: of the tile layout). */
template <bool TILES>
__global__ void
moe_gather_kernel(int K, const float *__restrict__ xn, int H, int kc,
				  const int32_t *__restrict__ assign_row, __half *__restrict__ x_frag)
{
	chain_begin();
	int			a = blockIdx.x;
	int			row = assign_row[a];
	const float *src = xn + (size_t) (a / K) * H;

	if (row < 0)
		return;
	/* columns 2i and 2i+1 are adjacent halfs of the layout */
#pragma unroll 4
	for (int i = threadIdx.x; i < H / 2; i += blockDim.x)
	{
		float2		v = *(const float2 *) (src + 2 * i);

		v.x = fminf(fmaxf(v.x, -65504.0f), 65504.0f);
		v.y = fminf(fmaxf(v.y, -65504.0f), 65504.0f);
		*(__half2 *) (x_frag + (TILES ? tile_index(row, 2 * i, kc) : frag_index(row, 2 * i, kc))) =
			__floats2half2_rn(v.x, v.y);
	}
}

/* Launches one block per assignment. */
cudaError_t
launch_moe_gather(int T, int K, const float *xn, int H, int kc, MoeRoute route, bool tile_layout,
				  __half *x_frag, cudaStream_t stream)
{
	if (T * K <= 0)
		return cudaSuccess;
	return launch_chained(tile_layout ? moe_gather_kernel<true> : moe_gather_kernel<false>, T * K, 512, 0,
						  stream, K, xn, H, kc, route.assign_row, x_frag);
}
