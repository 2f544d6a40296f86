/*
 * moe_matmul.cu: the two MXFP4 expert products of a MoE layer, batched over
 * all tokens routed to each expert, on the tensor cores.
 *
 * Plan.  Block (x, y) handles active expert y (of the step's active list).
 * Decode variant (up to 32 tokens per pass): block x takes row_tiles (1, 2
 * or 4) 16-row tiles; its MOE_KSPLIT warps split the input dimension
 * (64-column pieces) in four fixed ranges, each warp multiplying its range of
 * every row tile of the block with the same activation fragments, and the
 * four partial sums of a row tile are added in a fixed order through shared
 * memory.  Prefill variant (64 tokens per pass): each warp owns a row tile
 * and walks the whole input dimension, so the four warps of a block read the
 * same activation fragments (shared through L1).  It sums the same four
 * input ranges separately and adds them in the decode variant's order, so
 * every variant gives a token bitwise the same result: the output of a token
 * does not depend on how many tokens the step routes to its experts.
 * Per piece a lane loads one uint4 of packed fp4 codes and one scale word
 * (moe_layout.cuh), decodes them into fp16 A fragments with shifts and masks,
 * and multiplies them (mma.sync m16n8k16, fp32 accumulate) with the B
 * fragments of up to tiles_per_pass 8-token tiles, loaded as 16-byte vectors
 * from the fragment-layout activations (L1/L2 resident: every warp of the
 * expert reads the same ones).  Each 32-column MX block is accumulated
 * separately and then scaled by its E8M0 factor, so the scale never touches
 * fp16.  Splitting the input dimension across warps is what lets a batch-1
 * decode keep enough loads in flight: a warp walks 11 pieces instead of 45.
 * The weights of an expert are read from memory once per pass over its
 * tokens: once per step for decode batches (up to 8*tiles_per_pass tokens
 * per expert), which is what makes batched decoding cheap.
 *
 * Epilogues.  gate_up: the tile's rows are 8 gates and the 8 matching ups
 * (regrouped at upload), so a lane holds gate and up of one feature and
 * token: add the biases, clamp, SwiGLU, and store fp16 directly in the
 * fragment layout that the down product reads.  down: add the bias and store
 * fp32 rows y[sorted row][H] for the combine kernel.
 * Each token's result depends only on its own column of the products and
 * the variant, not on which other tokens share the step.
 */
#include "kernels.cuh"

#define MOE_KSPLIT 4			/* warps per block, each a quarter of the input pieces */
#define MOE_UNROLL 4			/* 64-column pieces whose weights are loaded ahead */
/*
 * Resident blocks per SM asked of the prefill variant (caps it at 168
 * registers): its four range sums need 255 registers otherwise, 2 blocks per
 * SM; 3 blocks with a few spills ran a 2048-token prefill at 18,555 tok/s vs
 * 15,477 (H200, bench/RESULTS.md, CUDA run 16).
 */
#define MOE_PREFILL_BLOCKS 3

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

/* Writes one row tile's results (acc already holds all four input ranges). */
template <int MODE, int NT>
static __device__ __forceinline__ void
moe_epilogue(const MoeMatmulArgs &args, const float acc[NT][4], int e, int tile, int row0, int n_e,
			 int n_tiles, int tc, int g, int t4)
{
	/* the fp4 codes were decoded as value * 2^-14 */
	if (MODE == MOE_GATE_UP)
	{
		int			f = tile * 8 + g;
		int			n_feat = args.w.rows / 2;
		const float *bias = args.w.bias + (size_t) e * args.w.rows;
		float		bg;
		float		bu;

		if (f >= n_feat)
			return;
		bg = bias[2 * f];
		bu = bias[2 * f + 1];
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

/*
 * acc[r] += pieces [c_begin, c_end) of row tile r (r < rt_valid; tile r's
 * pieces follow tile 0's at w_stride / s_stride) times NT token tiles (from
 * tile tc).  The activation fragments of a piece are loaded once and used
 * for all RT row tiles.  PRELOAD: all activation fragments of a piece are
 * loaded before its products (more loads in flight; measured faster for the
 * 64-token prefill passes, slower for the small decode passes,
 * bench/NOTES-cuda.md).  The arithmetic of one (row tile, token tile) pair
 * does not depend on RT: per piece two mma from zero, scaled, added.
 */
template <int RT, int NT, int PRELOAD>
static __device__ __forceinline__ void
moe_range(float (&acc)[RT][NT][4], const uint4 *wp, const uint32_t *sp, size_t w_stride,
		  size_t s_stride, int rt_valid, const uint4 *xp, int kc, int c_begin, int c_end, int tc,
		  int n_tiles)
{
	constexpr int U = RT >= 4 ? MOE_UNROLL / 2 : MOE_UNROLL;	/* pieces loaded ahead */

	for (int c0 = c_begin; c0 < c_end; c0 += U)
	{
		uint4		wv[U][RT];
		uint32_t	sv[U][RT];

#pragma unroll
		for (int u = 0; u < U; u++)
#pragma unroll
			for (int r = 0; r < RT; r++)
				if (c0 + u < c_end && r < rt_valid)
				{
					wv[u][r] = __ldg(wp + r * w_stride + (size_t) (c0 + u) * 32);
					sv[u][r] = __ldg(sp + r * s_stride + (size_t) (c0 + u) * 8);
				}
#pragma unroll
		for (int u = 0; u < U; u++)
		{
			uint4		bv[NT][2];

			if (c0 + u >= c_end)
				continue;
#pragma unroll
			for (int j = 0; j < NT; j++)
				if (tc + j < n_tiles)
				{
					const uint4 *p = xp + ((size_t) (tc + j) * kc + c0 + u) * 64;

					bv[j][0] = __ldg(p);
					if (PRELOAD)
						bv[j][1] = __ldg(p + 1);
				}
#pragma unroll
			for (int h = 0; h < 2; h++)
			{
				if (!PRELOAD && h == 1)
#pragma unroll
					for (int j = 0; j < NT; j++)
						if (tc + j < n_tiles)
							bv[j][1] = __ldg(xp + ((size_t) (tc + j) * kc + c0 + u) * 64 + 1);
#pragma unroll
				for (int r = 0; r < RT; r++)
				{
					uint32_t	a0[4];
					uint32_t	a1[4];
					float		s_lo;
					float		s_hi;

					if (r >= rt_valid)
						continue;
					s_lo = e8m0_to_f32((sv[u][r] >> (8 * h)) & 255u);
					s_hi = e8m0_to_f32((sv[u][r] >> (8 * (2 + h))) & 255u);
					fp4x8_to_f16x2(h ? wv[u][r].z : wv[u][r].x, a0);
					fp4x8_to_f16x2(h ? wv[u][r].w : wv[u][r].y, a1);
#pragma unroll
					for (int j = 0; j < NT; j++)
						if (tc + j < n_tiles)
						{
							uint4		b = bv[j][h];
							float		part[4] = {0.0f, 0.0f, 0.0f, 0.0f};

							mma_16816(part, a0, b.x, b.y);
							mma_16816(part, a1, b.z, b.w);
							acc[r][j][0] += part[0] * s_lo;
							acc[r][j][1] += part[1] * s_lo;
							acc[r][j][2] += part[2] * s_hi;
							acc[r][j][3] += part[3] * s_hi;
						}
				}
			}
		}
	}
}

/* Expert blockIdx.y of a MoE launch, as one lane of a block starting at row tile `tile` sees it. */
struct MoeBlock
{
	int			e;				/* expert */
	int			n_e;			/* its tokens */
	int			row0;			/* its first sorted row */
	int			n_tiles;		/* its 8-token tiles */
	const uint4 *wp;			/* this lane's first weight fragment of row tile `tile` */
	const uint32_t *sp;			/* this lane's first scale word of it */
	const uint4 *xp;			/* this lane's first activation fragment of the expert */
};

/* Looks up expert blockIdx.y (blockIdx.y < n_active) and this lane's pointers into its data. */
static __device__ __forceinline__ MoeBlock
moe_block(const MoeMatmulArgs &args, int tile, int lane)
{
	MoeBlock	b;
	size_t		piece0;

	b.e = args.route.active[blockIdx.y];
	b.n_e = args.route.count[b.e];
	b.row0 = args.route.offset[b.e];
	b.n_tiles = (b.n_e + 7) >> 3;
	piece0 = ((size_t) b.e * args.w.rtiles + tile) * args.w.kc;
	b.wp = args.w.blocks + piece0 * 32 + lane;
	b.sp = args.w.scales + piece0 * 8 + (lane >> 2);
	b.xp = args.x + (size_t) (b.row0 >> 3) * args.w.kc * 64 + lane * 2;
	return b;
}

/*
 * Decode variant: block x takes row tiles [RT*x, RT*x + RT) of one expert;
 * its warps take the four input ranges of all of them, then warp r adds the
 * four partial sums of row tile r in range order and writes it.  RT > 1
 * loads each activation fragment once for RT row tiles (the activations, not
 * the weights, were most of the bytes a batch-64 step moved through L2).
 */
template <int MODE, int RT, int NT>
static __device__ __forceinline__ void
moe_decode_body(const MoeMatmulArgs &args)
{
	__shared__ float red[MOE_KSPLIT][RT][NT][4][32];
	const int	lane = threadIdx.x & 31;
	const int	g = lane >> 2;
	const int	t4 = lane & 3;
	const int	warp = threadIdx.x >> 5;
	const int	tile0 = blockIdx.x * RT;
	const int	kc = args.w.kc;
	const int	rt_valid = min(RT, args.w.rtiles - tile0);
	MoeBlock	b;

	if ((int) blockIdx.y >= *args.route.n_active)
		return;
	b = moe_block(args, tile0, lane);
	for (int tc = 0; tc < b.n_tiles; tc += NT)
	{
		float		acc[RT][NT][4];

#pragma unroll
		for (int r = 0; r < RT; r++)
#pragma unroll
			for (int j = 0; j < NT; j++)
				acc[r][j][0] = acc[r][j][1] = acc[r][j][2] = acc[r][j][3] = 0.0f;
		moe_range<RT, NT, 0>(acc, b.wp, b.sp, (size_t) kc * 32, (size_t) kc * 8, rt_valid, b.xp, kc,
							 warp * kc / MOE_KSPLIT, (warp + 1) * kc / MOE_KSPLIT, tc, b.n_tiles);
#pragma unroll
		for (int r = 0; r < RT; r++)
#pragma unroll
			for (int j = 0; j < NT; j++)
#pragma unroll
				for (int c = 0; c < 4; c++)
					red[warp][r][j][c][lane] = acc[r][j][c];
		__syncthreads();
		for (int r = warp; r < rt_valid; r += MOE_KSPLIT)
		{
			float		sum[NT][4];

#pragma unroll
			for (int j = 0; j < NT; j++)
#pragma unroll
				for (int c = 0; c < 4; c++)
				{
					sum[j][c] = red[0][r][j][c][lane];
#pragma unroll
					for (int w = 1; w < MOE_KSPLIT; w++)
						sum[j][c] += red[w][r][j][c][lane];
				}
			moe_epilogue<MODE, NT>(args, sum, b.e, tile0 + r, b.row0, b.n_e, b.n_tiles, tc, g, t4);
		}
		__syncthreads();	/* red is reused by the next pass */
	}
}

/*
 * Prefill variant: each warp owns a row tile and walks the whole input in
 * the same four ranges, summed in the same order as the decode variant's
 * warps, so a token's result does not depend on the variant (i.e. on the
 * step's token count); the four warps of a block read the same activation
 * fragments (shared through L1).
 */
template <int MODE, int NT>
static __device__ __forceinline__ void
moe_prefill_body(const MoeMatmulArgs &args)
{
	const int	lane = threadIdx.x & 31;
	const int	g = lane >> 2;
	const int	t4 = lane & 3;
	const int	warp = threadIdx.x >> 5;
	const int	tile = blockIdx.x * MOE_KSPLIT + warp;
	const int	kc = args.w.kc;
	MoeBlock	b;

	if ((int) blockIdx.y >= *args.route.n_active || tile >= args.w.rtiles)
		return;
	b = moe_block(args, tile, lane);
	for (int tc = 0; tc < b.n_tiles; tc += NT)
	{
		float		acc[1][NT][4];

#pragma unroll
		for (int j = 0; j < NT; j++)
			acc[0][j][0] = acc[0][j][1] = acc[0][j][2] = acc[0][j][3] = 0.0f;
		moe_range<1, NT, 1>(acc, b.wp, b.sp, 0, 0, 1, b.xp, kc, 0, kc / MOE_KSPLIT, tc, b.n_tiles);
		for (int r = 1; r < MOE_KSPLIT; r++)
		{
			float		part[1][NT][4];

#pragma unroll
			for (int j = 0; j < NT; j++)
				part[0][j][0] = part[0][j][1] = part[0][j][2] = part[0][j][3] = 0.0f;
			moe_range<1, NT, 1>(part, b.wp, b.sp, 0, 0, 1, b.xp, kc, r * kc / MOE_KSPLIT,
								(r + 1) * kc / MOE_KSPLIT, tc, b.n_tiles);
#pragma unroll
			for (int j = 0; j < NT; j++)
#pragma unroll
				for (int c = 0; c < 4; c++)
					acc[0][j][c] += part[0][j][c];
		}
		moe_epilogue<MODE, NT>(args, acc[0], b.e, tile, b.row0, b.n_e, b.n_tiles, tc, g, t4);
	}
}

/* The decode variant (the block's warps split the input dimension of RT row tiles). */
template <int MODE, int RT, int NT>
__global__ void __launch_bounds__(MOE_KSPLIT * 32)
moe_matmul_kernel(MoeMatmulArgs args)
{
	chain_begin();
	moe_decode_body<MODE, RT, NT>(args);
}

/* The prefill variant (a row tile per warp), register-capped for MOE_PREFILL_BLOCKS blocks per SM. */
template <int MODE>
__global__ void __launch_bounds__(MOE_KSPLIT * 32, MOE_PREFILL_BLOCKS)
moe_prefill_kernel(MoeMatmulArgs args)
{
	chain_begin();
	moe_prefill_body<MODE, 8>(args);
}

/* Launches the decode variant <MODE, RT, NT>. */
template <int MODE, int RT, int NT>
static cudaError_t
launch_decode(int max_active, const MoeMatmulArgs &args, cudaStream_t stream)
{
	dim3		grid(div_up(args.w.rtiles, RT), max_active);

	return launch_chained(moe_matmul_kernel<MODE, RT, NT>, grid, MOE_KSPLIT * 32, 0, stream,
						  args);
}

/* Launches the decode variant <MODE, rt, NT>. */
template <int MODE, int NT>
static cudaError_t
launch_decode_rt(int max_active, int rt, const MoeMatmulArgs &args, cudaStream_t stream)
{
	switch (rt)
	{
		case 1:
			return launch_decode<MODE, 1, NT>(max_active, args, stream);
		case 2:
			return launch_decode<MODE, 2, NT>(max_active, args, stream);
		default:
			return launch_decode<MODE, 4, NT>(max_active, args, stream);
	}
}

/* Picks the variant for tiles_per_pass (the prefill variant at 8) and row_tiles, and launches it. */
template <int MODE>
static cudaError_t
launch_moe_matmul(int max_active, int tiles_per_pass, int rt, const MoeMatmulArgs &args,
				  cudaStream_t stream)
{
	if (max_active <= 0)
		return cudaSuccess;
	switch (tiles_per_pass)
	{
		case 1:
			return launch_decode_rt<MODE, 1>(max_active, rt, args, stream);
		case 2:
			return launch_decode_rt<MODE, 2>(max_active, rt, args, stream);
		case 4:
			return launch_decode_rt<MODE, 4>(max_active, rt, args, stream);
		default:
			return launch_chained(moe_prefill_kernel<MODE>,
								  dim3(div_up(args.w.rtiles, MOE_KSPLIT), max_active),
								  MOE_KSPLIT * 32, 0, stream, args);
	}
}

/* gate_up product + SwiGLU for every active expert. */
cudaError_t
launch_moe_gate_up(int max_active, int tiles_per_pass, int row_tiles, MoeMatrix w, MoeRoute route,
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
	return launch_moe_matmul<MOE_GATE_UP>(max_active, tiles_per_pass, row_tiles, args, stream);
}

/* down product + bias for every active expert. */
cudaError_t
launch_moe_down(int max_active, int tiles_per_pass, int row_tiles, MoeMatrix w, MoeRoute route,
				const __half *act_frag, float *y, cudaStream_t stream)
{
	MoeMatmulArgs args = {};

	args.w = w;
	args.route = route;
	args.x = (const uint4 *) act_frag;
	args.y = y;
	return launch_moe_matmul<MOE_DOWN>(max_active, tiles_per_pass, row_tiles, args, stream);
}
