/*
 * moe_matmul.cu: the two MXFP4 expert products of a MoE layer, batched over
 * all tokens routed to each expert, on the tensor cores.
 *
 * Plan.  Block (x, y) handles active expert y (of the step's active list)
 * and MOE_WARPS consecutive 16-row tiles of its matrix; each warp owns one
 * tile and walks the input dimension in 64-column pieces.  Per piece a lane
 * loads one uint4 of packed fp4 codes and one scale word (moe_layout.cuh),
 * decodes them into fp16 A fragments with shifts and masks, and multiplies
 * them (mma.sync m16n8k16, fp32 accumulate) with the B fragments of up to
 * tiles_per_pass 8-token tiles, loaded as 16-byte vectors from the
 * fragment-layout activations (L1/L2 resident: every warp of the expert
 * reads the same ones).  Each 32-column MX block is accumulated separately
 * and then scaled by its E8M0 factor, so the scale never touches fp16.
 * The weights of an expert are thus read from memory once per pass over its
 * tokens: once per step for decode batches (up to 8*tiles_per_pass tokens
 * per expert), which is what makes batched decoding cheap.
 *
 * Epilogues.  gate_up: the tile's rows are 8 gates and the 8 matching ups
 * (regrouped at upload), so a lane holds gate and up of one feature and
 * token: add the biases, clamp, SwiGLU, and store fp16 directly in the
 * fragment layout that the down product reads.  down: add the bias and store
 * fp32 rows y[sorted row][H] for the combine kernel.
 * Each token's result depends only on its own column of the products, so it
 * is the same whatever other tokens share the step.
 */
#include "kernels.cuh"

#define MOE_WARPS 4				/* 16-row tiles per block */
#define MOE_UNROLL 4			/* 64-column pieces whose weights are loaded ahead */

enum
{
	MOE_GATE_UP = 0,
	MOE_DOWN = 1
};

/* Everything a launch needs (passed by value). */
struct MoeMatmulArgs
{
	MoeMatrix	w;
	MoeRoute	route;
	const uint4 *x;				/* fragment-layout input: [rows/8][w.kc][32][2] uint4 */
	__half	   *act;			/* gate_up: fragment-layout output [rows/8][act_kc][32][16] */
	int			act_kc;
	float		limit;			/* swiglu_limit */
	float	   *y;				/* down: [rows][H] */
};

/* c += a (16x16 fp16, row) * b (16x8 fp16, col), fp32 accumulate. */
static __device__ __forceinline__ void
mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
				 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
				 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
				 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* One warp: a 16-row tile of expert e's matrix times NT token tiles per pass. */
template <int MODE, int NT>
__global__ void __launch_bounds__(MOE_WARPS * 32)
moe_matmul_kernel(MoeMatmulArgs args)
{
	const int	lane = threadIdx.x & 31;
	const int	g = lane >> 2;
	const int	t4 = lane & 3;
	const int	tile = blockIdx.x * MOE_WARPS + (threadIdx.x >> 5);
	const int	kc = args.w.kc;
	int			e;
	int			n_e;
	int			row0;
	int			n_tiles;
	size_t		piece0;
	const uint4 *wp;
	const uint32_t *sp;
	const uint4 *xp;

	if ((int) blockIdx.y >= *args.route.n_active || tile >= args.w.rtiles)
		return;
	e = args.route.active[blockIdx.y];
	n_e = args.route.count[e];
	row0 = args.route.offset[e];
	n_tiles = (n_e + 7) >> 3;
	piece0 = ((size_t) e * args.w.rtiles + tile) * kc;
	wp = args.w.blocks + piece0 * 32 + lane;
	sp = args.w.scales + piece0 * 8 + g;
	xp = args.x + (size_t) (row0 >> 3) * kc * 64 + lane * 2;

	for (int tc = 0; tc < n_tiles; tc += NT)
	{
		float		acc[NT][4];

#pragma unroll
		for (int j = 0; j < NT; j++)
			acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

		for (int c0 = 0; c0 < kc; c0 += MOE_UNROLL)
		{
			uint4		wv[MOE_UNROLL];
			uint32_t	sv[MOE_UNROLL];

#pragma unroll
			for (int u = 0; u < MOE_UNROLL; u++)
				if (c0 + u < kc)
				{
					wv[u] = __ldg(wp + (size_t) (c0 + u) * 32);
					sv[u] = __ldg(sp + (size_t) (c0 + u) * 8);
				}
#pragma unroll
			for (int u = 0; u < MOE_UNROLL; u++)
			{
				uint4		bv[NT][2];

				if (c0 + u >= kc)
					continue;
#pragma unroll
				for (int j = 0; j < NT; j++)
					if (tc + j < n_tiles)
					{
						const uint4 *p = xp + ((size_t) (tc + j) * kc + c0 + u) * 64;

						bv[j][0] = __ldg(p);
						bv[j][1] = __ldg(p + 1);
					}
#pragma unroll
				for (int h = 0; h < 2; h++)
				{
					uint32_t	a0[4];
					uint32_t	a1[4];
					float		s_lo = e8m0_to_f32((sv[u] >> (8 * h)) & 255u);
					float		s_hi = e8m0_to_f32((sv[u] >> (8 * (2 + h))) & 255u);

					fp4x8_to_f16x2(h ? wv[u].z : wv[u].x, a0);
					fp4x8_to_f16x2(h ? wv[u].w : wv[u].y, a1);
#pragma unroll
					for (int j = 0; j < NT; j++)
						if (tc + j < n_tiles)
						{
							float		part[4] = {0.0f, 0.0f, 0.0f, 0.0f};

							mma_16816(part, a0, bv[j][h].x, bv[j][h].y);
							mma_16816(part, a1, bv[j][h].z, bv[j][h].w);
							acc[j][0] += part[0] * s_lo;
							acc[j][1] += part[1] * s_lo;
							acc[j][2] += part[2] * s_hi;
							acc[j][3] += part[3] * s_hi;
						}
				}
			}
		}

		/* the fp4 codes were decoded as value * 2^-14 */
		if (MODE == MOE_GATE_UP)
		{
			int			f = tile * 8 + g;
			int			n_feat = args.w.rows / 2;

			if (f < n_feat)
			{
				const float *bias = args.w.bias + (size_t) e * args.w.rows;
				float		bg = bias[2 * f];
				float		bu = bias[2 * f + 1];

#pragma unroll
				for (int j = 0; j < NT; j++)
#pragma unroll
					for (int c = 0; c < 2; c++)
					{
						int			n = (tc + j) * 8 + 2 * t4 + c;
						float		gate;
						float		up;
						float		a;

						if (tc + j >= n_tiles || n >= n_e)
							continue;
						gate = acc[j][c] * 16384.0f + bg;
						up = acc[j][2 + c] * 16384.0f + bu;
						gate = fminf(gate, args.limit);
						up = fmaxf(fminf(up, args.limit), -args.limit);
						a = gate * (1.0f / (1.0f + expf(-1.702f * gate))) * (up + 1.0f);
						args.act[frag_index(row0 + n, f, args.act_kc)] = __float2half_rn(a);
					}
			}
		}
		else
		{
			int			n_out = args.w.rows;
			int			o0 = tile * 16 + g;
			int			o1 = o0 + 8;
			const float *bias = args.w.bias + (size_t) e * n_out;
			float		b0 = o0 < n_out ? bias[o0] : 0.0f;
			float		b1 = o1 < n_out ? bias[o1] : 0.0f;

#pragma unroll
			for (int j = 0; j < NT; j++)
#pragma unroll
				for (int c = 0; c < 2; c++)
				{
					int			n = (tc + j) * 8 + 2 * t4 + c;
					float	   *yr;

					if (tc + j >= n_tiles || n >= n_e)
						continue;
					yr = args.y + (size_t) (row0 + n) * n_out;
					if (o0 < n_out)
						yr[o0] = acc[j][c] * 16384.0f + b0;
					if (o1 < n_out)
						yr[o1] = acc[j][2 + c] * 16384.0f + b1;
				}
		}
	}
}

/* Picks the instantiation for tiles_per_pass and launches it. */
template <int MODE>
static cudaError_t
launch_moe_matmul(int max_active, int tiles_per_pass, const MoeMatmulArgs &args,
				  cudaStream_t stream)
{
	dim3		grid(div_up(args.w.rtiles, MOE_WARPS), max_active);
	dim3		block(MOE_WARPS * 32);

	if (max_active <= 0)
		return cudaSuccess;
	switch (tiles_per_pass)
	{
		case 1:
			moe_matmul_kernel<MODE, 1><<<grid, block, 0, stream>>>(args);
			break;
		case 2:
			moe_matmul_kernel<MODE, 2><<<grid, block, 0, stream>>>(args);
			break;
		case 4:
			moe_matmul_kernel<MODE, 4><<<grid, block, 0, stream>>>(args);
			break;
		default:
			moe_matmul_kernel<MODE, 8><<<grid, block, 0, stream>>>(args);
			break;
	}
	return cudaGetLastError();
}

/* gate_up product + SwiGLU for every active expert. */
cudaError_t
launch_moe_gate_up(int max_active, int tiles_per_pass, MoeMatrix w, MoeRoute route,
				   const __half *x_frag, float limit, __half *act_frag, int act_kc,
				   cudaStream_t stream)
{
	MoeMatmulArgs args = {};

	args.w = w;
	args.route = route;
	args.x = (const uint4 *) x_frag;
	args.act = act_frag;
	args.act_kc = act_kc;
	args.limit = limit;
	return launch_moe_matmul<MOE_GATE_UP>(max_active, tiles_per_pass, args, stream);
}

/* down product + bias for every active expert. */
cudaError_t
launch_moe_down(int max_active, int tiles_per_pass, MoeMatrix w, MoeRoute route,
				const __half *act_frag, float *y, cudaStream_t stream)
{
	MoeMatmulArgs args = {};

	args.w = w;
	args.route = route;
	args.x = (const uint4 *) act_frag;
	args.y = y;
	return launch_moe_matmul<MOE_DOWN>(max_active, tiles_per_pass, args, stream);
}
