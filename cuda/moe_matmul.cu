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
 * memory.  Per piece a lane loads one uint4 of packed fp4 codes and one scale
 * word (moe_layout.cuh), decodes them into fp16 A fragments with shifts and
 * masks, and multiplies them (mma.sync m16n8k16, fp32 accumulate) with the B
 * fragments of up to tiles_per_pass 8-token tiles, loaded as 16-byte vectors
 * from the fragment-layout activations (L1/L2 resident: every warp of the
 * expert reads the same ones).  Splitting the input dimension across warps is
 * what lets a batch-1 decode keep enough loads in flight: a warp walks 11
 * pieces instead of 45.  The weights of an expert are read from memory once
 * per pass over its tokens: once per step for decode batches (up to
 * 8*tiles_per_pass tokens per expert), which is what makes batched decoding
 * cheap.  From 3 to 16 tokens a step the streaming decode variant (one warp
 * per row tile, moe_stream_kernel) does the same arithmetic faster.
 * mma prefill variant (more tokens per expert): a block of MOE_PF_WARPS warps
 * side by side along the rows computes 8 row tiles x 8 token tiles (128
 * rows x 64 tokens) per pass, a warp 2 row tiles x all 8 token tiles, so
 * each A fragment is decoded once, by one warp, for 16 mma.  The block's
 * pieces of weights, scales and activations stream through shared memory
 * in a MOE_PF_STAGES-deep cp.async pipeline (each byte crosses L2 once per
 * block), and the range totals wait in shared memory, which keeps a thread
 * under the 168 registers of 3 blocks per SM.  Passes with all 8 token
 * tiles and row tiles present (most of a long prompt) run a copy of the
 * inner loop without tile checks.  Measured on the H200 (bench/NOTES-cuda.md
 * runs 25-29): 2048-token prefill 19,800 -> 21,800 tok/s; the kernel was
 * still issue-bound (~12 instructions per mma: fp4 decode, per-block scale
 * FMAs, addressing), not tensor-bound, which is why the scales are now
 * folded into the fragments (two FMAs and a zeroed temporary less per mma):
 * 21,800 -> 25,100 tok/s, and batch-128 decode 10,900 -> 11,900 (run 30).
 * What was left is instructions per FMA, which wgmma cuts (sm_90a): one
 * m64n128k16 covers 131,072 FMAs where an m16n8k16 mma.sync covers 2,048.
 * wgmma prefill variant (the default where the build has sm_90a code for
 * the device; backend_cuda.cu): a block of MOE_WG_WARPS warps (two
 * warpgroups), a warp one row tile, computes 8 row tiles x 16 token tiles
 * (128 rows x 128 tokens) per pass.  A is the warp's decoded fp4 fragments
 * (exactly the mma.sync A layout) from registers, B (128 tokens x 16
 * inputs) comes from shared memory: the producers of a prefill step
 * (moe_gather, gate_up's epilogue) write its activations in the tile layout
 * (moe_layout.cuh), which is the wgmma B operand itself, so a stage is
 * 16-byte copies of whole tiles.  A warp's A fragments are double-buffered
 * per MX block with wgmma.wait_group 1, so that it decodes block n + 1 while
 * the tensor cores multiply block n; a MOE_WG_STAGES-deep ring keeps the
 * stage of piece c - 1 alive for the group still reading it.  Every pass
 * runs on wgmma, short ones included (their absent tiles meet stale shared
 * memory, and the epilogue drops those results): a second, mma.sync path
 * would hand the accumulators of still-running wgmma across a branch that
 * ptxas cannot prove warp-uniform, and ptxas then serialises every wgmma of
 * the kernel (warning C7518).  Measured on the H200 (2048-token prefill,
 * bench_backend): 25,300 -> 34,100 tok/s; first layer (Nsight Compute)
 * gate_up 1.60 -> 1.08 ms, down 842 -> 525 us, 4.3 cycles per issued
 * instruction instead of mma's 5.9 at 12.5 % occupancy instead of 17.8 %
 * (187 registers, one block per SM).  The forms tried before it
 * (bench/NOTES-cuda.md): the fragment layout restaged into the swizzle
 * 22,400; 64 tokens a pass with 2 row tiles a warp, 2 or 3 blocks per SM
 * or 256 rows a block, 30,900-31,600.  128 tokens a pass won because each
 * decoded A fragment feeds twice the FMAs: half the fp4-decode instructions
 * per FMA, for a longer stale tail on an expert's last pass.  A probe
 * showed wgmma bitwise equal to mma.sync over the same k16 steps (run 31).
 * Every variant does the same arithmetic for a (row tile, token tile) pair:
 * the fragments carry their MX block's scale (folded in by one exact fp16
 * multiply, moe_layout.cuh), the mma of each of the four input ranges
 * accumulate in order, and the four range sums are added in range order;
 * the epilogue multiplies by the row tile's 2^G.  So a token's result does not depend on the
 * variant, i.e. on how many tokens the step routes to its experts.
 * Epilogues.  gate_up: the tile's rows are 8 gates and the 8 matching ups
 * (regrouped at upload), so a lane holds gate and up of one feature and
 * token: add the biases, clamp, SwiGLU, and store fp16 directly in the
 * layout that the down product reads (the tile layout in wgmma prefill
 * steps, else the fragment layout).  down: add the bias and store
 * fp32 rows y[sorted row][H] for the combine kernel.
 * Each token's result depends only on its own column of the products and
 * the variant, not on which other tokens share the step.
 */
#include "kernels.cuh"

#define MOE_KSPLIT 4			/* warps per block, each a quarter of the input pieces */
#define MOE_UNROLL 4			/* 64-column pieces whose weights are loaded ahead */
/*
 * mma prefill variant: warps per block (side by side along the rows, so no two
 * warps decode the same weights), row tiles per warp, token tiles per pass,
 * pieces in flight and resident blocks per SM (which caps the registers at
 * 65536 / (32 * MOE_PF_WARPS * MOE_PF_BLOCKS) = 170).  Measured alternatives
 * (H200, 2048-token prefill, before the full-pass copy): this 18,400 tok/s;
 * 8 warps of one row tile, 3 or 2 blocks per SM 16,600 / 15,800; 16 token
 * tiles per pass, 2 blocks 11,800; 4 stages 16,000.
 */
#define MOE_PF_WARPS 4
#define MOE_PF_WARP_ROWS 2
#define MOE_PF_TOKEN_TILES 8
#define MOE_PF_STAGES 3
#define MOE_PF_BLOCKS 3
#define MOE_PF_ROW_TILES (MOE_PF_WARPS * MOE_PF_WARP_ROWS)	/* row tiles per block */
/*
 * wgmma prefill variant: warps per block (two warpgroups, a warp one row
 * tile), token tiles per pass (the N = 128 of m64n128k16) and pieces in the
 * shared-memory ring (MOE_WG_STAGES - 2 load ahead; one block per SM).
 */
#define MOE_WG_WARPS 8
#define MOE_WG_TOKEN_TILES 16
#define MOE_WG_STAGES 4

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

/* Writes one row tile's results (acc already holds all four input ranges); TILES: act in the tile layout. */
template <int MODE, int NT, bool TILES = false>
static __device__ __forceinline__ void
moe_epilogue(const MoeMatmulArgs &args, const float acc[NT][4], int e, int tile, int row0, int n_e,
			 int n_tiles, int tc, int g, int t4)
{
	/* the fragments held value * 2^(s - 127 - G): 2^G restores the scale */
	const float ts = args.w.tile_scale[(size_t) e * args.w.rtiles + tile];

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
				gate = acc[j][c] * ts + bg;
				up = acc[j][2 + c] * ts + bu;
				gate = fminf(gate, args.limit);
				up = fmaxf(fminf(up, args.limit), -args.limit);
				a = gate * (1.0f / (1.0f + expf(-1.702f * gate))) * (up + 1.0f);
				args.act[TILES ? tile_index(row0 + n, f, args.act_kc) : frag_index(row0 + n, f, args.act_kc)] =
					__float2half_rn(a);
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
					yr[o0] = acc[j][c] * ts + b0;
				if (o1 < n_out)
					yr[o1] = acc[j][2 + c] * ts + b1;
			}
	}
}

/*
 * One MX block (32 columns: two k-steps) of a row tile times one token tile,
 * added to acc: the arithmetic every variant shares, so that a token's
 * result does not depend on the variant.  The block's scale is already in
 * its A fragments (mx_block_decode).
 */
static __device__ __forceinline__ void
mx_block_mma(float acc[4], const uint32_t a0[4], const uint32_t a1[4], uint4 b)
{
	mma_16816(acc, a0, b.x, b.y);
	mma_16816(acc, a1, b.z, b.w);
}

/* Multiplies the fp16 pair in a by m (exact: moe_layout.cuh, Scales). */
static __device__ __forceinline__ uint32_t
hmul2_bits(uint32_t a, uint32_t m)
{
	uint32_t	out;

	asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(out) : "r"(a), "r"(m));
	return out;
}

/*
 * Decodes MX block h (0, 1) of a lane's piece into its A fragments, each
 * value times its block's multiplier: registers 0 and 2 hold row g, 1 and 3
 * row g + 8.
 */
static __device__ __forceinline__ void
mx_block_decode(uint4 wv, uint32_t sv, int h, uint32_t a0[4], uint32_t a1[4])
{
	uint32_t	f_lo = (sv >> (8 * h)) & 255u;
	uint32_t	f_hi = (sv >> (8 * (2 + h))) & 255u;
	uint32_t	m_lo = (f_lo << 10) | (f_lo << 26);	/* fp16x2 (2^(x+14), 2^(x+14)) */
	uint32_t	m_hi = (f_hi << 10) | (f_hi << 26);

	fp4x8_to_f16x2(h ? wv.z : wv.x, a0);
	fp4x8_to_f16x2(h ? wv.w : wv.y, a1);
#pragma unroll
	for (int i = 0; i < 4; i++)
	{
		a0[i] = hmul2_bits(a0[i], i & 1 ? m_hi : m_lo);
		a1[i] = hmul2_bits(a1[i], i & 1 ? m_hi : m_lo);
	}
}

/*
 * acc[r] += pieces [c_begin, c_end) of row tile r (r < rt_valid; tile r's
 * pieces follow tile 0's at w_stride / s_stride) times NT token tiles (from
 * tile tc).  The activation fragments of a piece are loaded once and used
 * for all RT row tiles; the second half of them only when the first is used
 * (loading both first was measured slower for these small passes,
 * bench/NOTES-cuda.md run 15).
 */
template <int RT, int NT>
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
			if (c0 + u >= c_end)
				continue;
#pragma unroll
			for (int h = 0; h < 2; h++)
			{
				uint4		bv[NT];

#pragma unroll
				for (int j = 0; j < NT; j++)
					if (tc + j < n_tiles)
						bv[j] = __ldg(xp + ((size_t) (tc + j) * kc + c0 + u) * 64 + h);
#pragma unroll
				for (int r = 0; r < RT; r++)
				{
					uint32_t	a0[4];
					uint32_t	a1[4];

					if (r >= rt_valid)
						continue;
					mx_block_decode(wv[u][r], sv[u][r], h, a0, a1);
#pragma unroll
					for (int j = 0; j < NT; j++)
						if (tc + j < n_tiles)
							mx_block_mma(acc[r][j], a0, a1, bv[j]);
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
		moe_range<RT, NT>(acc, b.wp, b.sp, (size_t) kc * 32, (size_t) kc * 8, rt_valid, b.xp, kc,
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
 * Streaming decode variant (one token tile per pass): warp w of block x
 * owns row tile MOE_ST_WARPS*x + w of expert blockIdx.y alone and walks all
 * its pieces with MOE_ST_AHEAD pieces' weights and activation fragments in
 * flight in a register ring; no block-wide reduction, one wave of warps.
 * Each of the four input ranges is accumulated from zero in piece order and
 * added to the total in range order as it closes: the split variant's
 * arithmetic, bit for bit.  The weights and the route do not depend on the
 * previous kernel (the route was written two kernels back, and chain_begin
 * starts a kernel only after its predecessor's predecessor completed), so
 * the first pieces' weights are requested before the chain wait.  Measured
 * on the H200 (bench/NOTES-cuda.md runs 37-42): faster than the split
 * variant from 3 to 16 tokens a step (batch 4 / 8 / 16 +3.8 / +3.5 / +5.2 %),
 * slower at one token (a quarter of the warps: 1,440 for gate_up) and at 64.
 */
#define MOE_ST_WARPS 4			/* row tiles (one per warp) per block */
#define MOE_ST_AHEAD 4			/* pieces in flight per warp */

/* One piece of a streaming warp's operands, as a lane holds it. */
struct MoeStreamPiece
{
	uint4		w;				/* packed fp4 codes */
	uint32_t	s;				/* multiplier word */
	uint4		x[2];			/* activation fragment halves of the pass's token tile */
};

/* Requests piece c's weights (b: the lane's pointers). */
static __device__ __forceinline__ void
moe_stream_load_w(MoeStreamPiece *p, const MoeBlock &b, int c)
{
	p->w = __ldg(b.wp + (size_t) c * 32);
	p->s = __ldg(b.sp + (size_t) c * 8);
}

/* Requests piece c's activation fragments of token tile tc. */
static __device__ __forceinline__ void
moe_stream_load_x(MoeStreamPiece *p, const MoeBlock &b, int kc, int tc, int c)
{
	const uint4 *q = b.xp + ((size_t) tc * kc + c) * 64;

	p->x[0] = __ldg(q);
	p->x[1] = __ldg(q + 1);
}

/*
 * Adds every input range that ends at or before piece `done` to the totals
 * (RW row tiles x TT token tiles; total(r, j, c) is where each one lives),
 * in range order: total = range 0, then += ranges 1, 2, 3 (an empty range
 * adds its zero sum), the order of the split decode variant's reduction;
 * the streaming and both prefill variants fold through here.  Restarts the
 * range sum.
 */
template <int RW, int TT, typename Totals>
static __device__ __forceinline__ void
moe_fold_ranges(const Totals &total, float (&sum)[RW][TT][4], int *range, int done, int kc)
{
	while (*range < MOE_KSPLIT && (*range + 1) * kc / MOE_KSPLIT <= done)
	{
#pragma unroll
		for (int r = 0; r < RW; r++)
#pragma unroll
			for (int j = 0; j < TT; j++)
#pragma unroll
				for (int c = 0; c < 4; c++)
				{
					float	   &t = total(r, j, c);

					t = *range == 0 ? sum[r][j][c] : t + sum[r][j][c];
					sum[r][j][c] = 0.0f;
				}
		(*range)++;
	}
}

/* A warp's range totals in shared memory, [row tile][token tile][c][lane]. */
template <int TT>
struct MoeSharedTotals
{
	float		(*t)[TT][4][32];
	int			lane;

	__device__ float &operator()(int r, int j, int c) const
	{
		return t[r][j][c][lane];
	}
};

/* One row tile's range totals in registers, [token tile][c]. */
template <int TT>
struct MoeRegisterTotals
{
	float		(&t)[TT][4];

	__device__ float &operator()(int, int j, int c) const
	{
		return t[j][c];
	}
};

/* The streaming decode variant (see above). */
template <int MODE>
__global__ void __launch_bounds__(MOE_ST_WARPS * 32)
moe_stream_kernel(MoeMatmulArgs args)
{
	const int	lane = threadIdx.x & 31;
	const int	tile = blockIdx.x * MOE_ST_WARPS + (threadIdx.x >> 5);
	const int	kc = args.w.kc;
	const bool	valid = (int) blockIdx.y < *args.route.n_active && tile < args.w.rtiles;
	MoeStreamPiece ring[MOE_ST_AHEAD];
	MoeBlock	b = {};

	if (valid)
	{
		b = moe_block(args, tile, lane);
#pragma unroll
		for (int u = 0; u < MOE_ST_AHEAD; u++)
			if (u < kc)
				moe_stream_load_w(&ring[u], b, u);
	}
	chain_begin();
	if (!valid)
		return;
	for (int tc = 0; tc < b.n_tiles; tc++)
	{
		float		acc[1][1][4] = {};	/* the open range's sum */
		float		total[1][4];
		int			range = 0;

#pragma unroll
		for (int u = 0; u < MOE_ST_AHEAD; u++)
			if (u < kc)
			{
				if (tc > 0)
					moe_stream_load_w(&ring[u], b, u);
				moe_stream_load_x(&ring[u], b, kc, tc, u);
			}
		moe_fold_ranges(MoeRegisterTotals<1>{total}, acc, &range, 0, kc);
		for (int c0 = 0; c0 < kc; c0 += MOE_ST_AHEAD)
		{
#pragma unroll
			for (int u = 0; u < MOE_ST_AHEAD; u++)
			{
				const int	c = c0 + u;

				if (c >= kc)
					break;
#pragma unroll
				for (int h = 0; h < 2; h++)
				{
					uint32_t	a0[4];
					uint32_t	a1[4];

					mx_block_decode(ring[u].w, ring[u].s, h, a0, a1);
					mx_block_mma(acc[0][0], a0, a1, ring[u].x[h]);
				}
				if (c + MOE_ST_AHEAD < kc)
				{
					moe_stream_load_w(&ring[u], b, c + MOE_ST_AHEAD);
					moe_stream_load_x(&ring[u], b, kc, tc, c + MOE_ST_AHEAD);
				}
				moe_fold_ranges(MoeRegisterTotals<1>{total}, acc, &range, c + 1, kc);
			}
		}
		moe_epilogue<MODE, 1>(args, total, b.e, tile, b.row0, b.n_e, b.n_tiles, tc, lane >> 2,
							  lane & 3);
	}
}

/* One piece (64 input columns) of a prefill block's operands, staged in shared memory. */
struct MoePrefillStage
{
	uint4		x[MOE_PF_TOKEN_TILES][2][32];	/* activation fragments: [token tile][half][lane] */
	uint4		w[MOE_PF_ROW_TILES][32];	/* packed fp4 codes: [row tile][lane] */
	uint32_t	s[MOE_PF_ROW_TILES][8];	/* multiplier words: [row tile][row group] */
};

/* A prefill block's shared memory: the pipeline's stages, then each warp's range totals. */
struct MoePrefillSmem
{
	MoePrefillStage stage[MOE_PF_STAGES];
	float		total[MOE_PF_WARPS][MOE_PF_WARP_ROWS][MOE_PF_TOKEN_TILES][4][32];	/* [warp][r][j][c][lane] */
};

/*
 * Issues the copies of piece c into stage st: rt_valid row tiles of weights
 * and scales (w, s: the block's first row tile), tt_valid token tiles of
 * activations (x: the pass's first token tile; a lane's two 16-byte halves
 * are stored 512 bytes apart, so that a warp's reads of one half are
 * conflict-free).  Tiles past the data are not copied, and no warp reads them.
 */
static __device__ __forceinline__ void
moe_prefill_stage(MoePrefillStage *st, const uint4 *w, const uint32_t *s, const uint4 *x, int kc,
				  int c, int rt_valid, int tt_valid)
{
	const int	t = threadIdx.x;

	for (int i = t; i < MOE_PF_TOKEN_TILES * 64; i += MOE_PF_WARPS * 32)
		if ((i >> 6) < tt_valid)
			cp_async16(&st->x[i >> 6][i & 1][(i >> 1) & 31], x + ((size_t) (i >> 6) * kc + c) * 64 + (i & 63));
	for (int i = t; i < MOE_PF_ROW_TILES * 32; i += MOE_PF_WARPS * 32)
		if ((i >> 5) < rt_valid)
			cp_async16(&st->w[i >> 5][i & 31], w + ((size_t) (i >> 5) * kc + c) * 32 + (i & 31));
	for (int i = t; i < MOE_PF_ROW_TILES * 2; i += MOE_PF_WARPS * 32)
		if ((i >> 1) < rt_valid)
			cp_async16(&st->s[i >> 1][(i & 1) * 4], s + ((size_t) (i >> 1) * kc + c) * 8 + (i & 1) * 4);
}

/*
 * sum[r][j] += the staged piece for the warp's row tiles r < nr (from wr0)
 * and the pass's token tiles j < nt.  Each A fragment is decoded once and
 * used for all token tiles.  FULL: nr and nt are the maximum, so the tile
 * checks drop out (2048-token prefill 18,400 -> 21,800 tok/s: the checked
 * copy keeps a warp-synchronising branch around every mma).
 */
template <bool FULL>
static __device__ __forceinline__ void
moe_prefill_piece(float (&sum)[MOE_PF_WARP_ROWS][MOE_PF_TOKEN_TILES][4], const MoePrefillStage *st,
				  int wr0, int nr, int nt, int lane)
{
	uint4		wv[MOE_PF_WARP_ROWS];
	uint32_t	sv[MOE_PF_WARP_ROWS];

#pragma unroll
	for (int r = 0; r < MOE_PF_WARP_ROWS; r++)
		if (FULL || r < nr)
		{
			wv[r] = st->w[wr0 + r][lane];
			sv[r] = st->s[wr0 + r][lane >> 2];
		}
#pragma unroll
	for (int h = 0; h < 2; h++)
	{
		uint32_t	a0[MOE_PF_WARP_ROWS][4];
		uint32_t	a1[MOE_PF_WARP_ROWS][4];

#pragma unroll
		for (int r = 0; r < MOE_PF_WARP_ROWS; r++)
			if (FULL || r < nr)
				mx_block_decode(wv[r], sv[r], h, a0[r], a1[r]);
#pragma unroll
		for (int j = 0; j < MOE_PF_TOKEN_TILES; j++)
			if (FULL || j < nt)
			{
				uint4		b = st->x[j][h][lane];

#pragma unroll
				for (int r = 0; r < MOE_PF_WARP_ROWS; r++)
					if (FULL || r < nr)
						mx_block_mma(sum[r][j], a0[r], a1[r], b);
			}
	}
}

/*
 * mma prefill variant: block x takes row tiles [MOE_PF_ROW_TILES x, ...) of
 * expert blockIdx.y, warp w of them MOE_PF_WARP_ROWS from wr0, and walks the
 * expert's tokens in passes of MOE_PF_TOKEN_TILES token tiles.  Every piece
 * of a pass goes through the shared-memory pipeline (the stages of the next
 * MOE_PF_STAGES - 1 pieces load while one is multiplied); the range totals
 * wait in shared memory, which keeps the registers within the cap.
 */
template <int MODE>
__global__ void __launch_bounds__(MOE_PF_WARPS * 32, MOE_PF_BLOCKS)
moe_prefill_kernel(MoeMatmulArgs args)
{
	extern __shared__ uint4 moe_smem[];
	MoePrefillSmem *sm = (MoePrefillSmem *) moe_smem;
	const int	lane = threadIdx.x & 31;
	const int	warp = threadIdx.x >> 5;
	const int	wr0 = warp * MOE_PF_WARP_ROWS;
	const int	tile0 = blockIdx.x * MOE_PF_ROW_TILES;
	const int	kc = args.w.kc;
	const int	rt_valid = min(MOE_PF_ROW_TILES, args.w.rtiles - tile0);
	const int	nr = min(MOE_PF_WARP_ROWS, rt_valid - wr0);
	const MoeSharedTotals<MOE_PF_TOKEN_TILES> totals = {sm->total[warp], lane};
	MoeBlock	b;

	chain_begin();
	if ((int) blockIdx.y >= *args.route.n_active)
		return;
	b = moe_block(args, tile0, 0);	/* lane 0's pointers: the block's first weights and scales */
	for (int tt0 = 0; tt0 < b.n_tiles; tt0 += MOE_PF_TOKEN_TILES)
	{
		const uint4 *x = args.x + ((size_t) (b.row0 >> 3) + tt0) * kc * 64;
		const int	nt = min(MOE_PF_TOKEN_TILES, b.n_tiles - tt0);
		float		sum[MOE_PF_WARP_ROWS][MOE_PF_TOKEN_TILES][4];
		int			range = 0;

#pragma unroll
		for (int r = 0; r < MOE_PF_WARP_ROWS; r++)
#pragma unroll
			for (int j = 0; j < MOE_PF_TOKEN_TILES; j++)
#pragma unroll
				for (int c = 0; c < 4; c++)
					sum[r][j][c] = 0.0f;
		__syncthreads();		/* every warp is done with the previous pass's stages */
		for (int c = 0; c < MOE_PF_STAGES - 1; c++)
		{
			if (c < kc)
				moe_prefill_stage(&sm->stage[c], b.wp, b.sp, x, kc, c, rt_valid, nt);
			cp_async_commit();
		}
		moe_fold_ranges(totals, sum, &range, 0, kc);
		for (int c = 0; c < kc; c++)
		{
			cp_async_wait<MOE_PF_STAGES - 2>();		/* piece c has landed (this thread's part) */
			__syncthreads();	/* everyone's part, and piece c - 1's stage is free */
			if (c + MOE_PF_STAGES - 1 < kc)
				moe_prefill_stage(&sm->stage[(c + MOE_PF_STAGES - 1) % MOE_PF_STAGES], b.wp, b.sp, x, kc,
								  c + MOE_PF_STAGES - 1, rt_valid, nt);
			cp_async_commit();
			if (nr == MOE_PF_WARP_ROWS && nt == MOE_PF_TOKEN_TILES)
				moe_prefill_piece<true>(sum, &sm->stage[c % MOE_PF_STAGES], wr0, nr, nt, lane);
			else if (nr > 0)
				moe_prefill_piece<false>(sum, &sm->stage[c % MOE_PF_STAGES], wr0, nr, nt, lane);
			moe_fold_ranges(totals, sum, &range, c + 1, kc);
		}
#pragma unroll
		for (int r = 0; r < MOE_PF_WARP_ROWS; r++)
			if (r < nr)
			{
				float		acc[MOE_PF_TOKEN_TILES][4];

#pragma unroll
				for (int j = 0; j < MOE_PF_TOKEN_TILES; j++)
#pragma unroll
					for (int c = 0; c < 4; c++)
						acc[j][c] = sm->total[warp][r][j][c][lane];
				moe_epilogue<MODE, MOE_PF_TOKEN_TILES>(args, acc, b.e, tile0 + wr0 + r, b.row0, b.n_e,
													   b.n_tiles, tt0, lane >> 2, lane & 3);
			}
	}
}

/*
 * Whether this is the sm_90a compilation, the one with wgmma: the plain
 * sm_90 one (and any other) compiles the wgmma kernel as a trap, and the
 * backend runs the mma kernel there (moe_wgmma_available).
 */
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MOE_WGMMA 1
#else
#define MOE_WGMMA 0
#endif

/*
 * One piece (64 input columns) of a wgmma block's operands, staged in
 * shared memory; 1024-byte aligned because the 128-byte swizzle is a
 * function of the address bits within 1024 bytes.
 */
struct __align__(1024) MoeWgStage
{
	uint4		x[MOE_WG_TOKEN_TILES][64];	/* tile-layout image: [token tile][16-byte chunk] */
	uint4		w[MOE_WG_WARPS][32];	/* packed fp4 codes: [row tile][lane] */
	uint32_t	s[MOE_WG_WARPS][8];	/* multiplier words: [row tile][row group] */
};

/* A wgmma block's shared memory: the ring of stages, then each warp's range totals. */
struct MoeWgSmem
{
	MoeWgStage	stage[MOE_WG_STAGES];
	float		total[MOE_WG_WARPS][1][MOE_WG_TOKEN_TILES][4][32];	/* [warp][its row tile][j][c][lane] */
};

/* The device functions of the wgmma kernel, only in its sm_90a code. */
#if MOE_WGMMA
/*
 * Shared-memory matrix descriptor of a K-major wgmma operand in the
 * 128-byte swizzle (PTX "matrix descriptor": start address, leading offset
 * (unused by this layout: 1), stride between 8-row groups, all in 16-byte
 * units; mode 1 in bits 62-63).  smem may point inside a 1024-byte
 * aligned group, at the k16 step's 32-byte column.
 */
static __device__ __forceinline__ uint64_t
wgmma_desc_sw128(const void *smem, uint32_t group_stride)
{
	uint32_t	addr = (uint32_t) __cvta_generic_to_shared(smem);

	return (uint64_t) ((addr & 0x3FFFF) >> 4) | (uint64_t) 1 << 16 |
		(uint64_t) ((group_stride >> 4) & 0x3FFF) << 32 | (uint64_t) 1 << 62;
}

/*
 * d += a (the warpgroup's 64 x 16 fp16 rows: each warp's 16 rows in the
 * mma.sync A fragment layout) * B (16 x 128 tokens in shared memory, desc),
 * fp32; d holds the warp's 16 rows x 128 tokens as sixteen m16n8 C
 * fragments.  Asynchronous: the caller commits and waits before touching a
 * or d.
 */
static __device__ __forceinline__ void
wgmma_64x128x16(float *d, const uint32_t a[4], uint64_t desc)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
				 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
				 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
				 "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
				 "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
				 "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
				 "{%64,%65,%66,%67}, %68, p, 1, 1, 0;\n}\n"
				 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
				 "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
				 "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
				 "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
				 "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
				 "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
				 "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
				 "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
				 "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
				 "+f"(d[63])
				 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
}

/* Orders this warpgroup's register writes (A fragments, accumulators) before the wgmma that follow. */
static __device__ __forceinline__ void
wgmma_fence(void)
{
	asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

/* Closes the group of the wgmma issued so far by this warpgroup. */
static __device__ __forceinline__ void
wgmma_commit(void)
{
	asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

/* Waits until at most N of this warpgroup's wgmma groups are still running. */
template <int N>
static __device__ __forceinline__ void
wgmma_wait(void)
{
	asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory");
}

/* Pins the 32 registers of d here: the compiler may not read, move or reuse them across this point. */
static __device__ __forceinline__ void
wgmma_pin(float *d)
{
#pragma unroll
	for (int i = 0; i < 32; i++)
		asm volatile("" : "+f"(d[i])::"memory");
}

/* Keeps a wgmma's A fragment alive up to here (after the wait for its reader): its registers are not reused before. */
static __device__ __forceinline__ void
wgmma_keep(const uint32_t a[4])
{
	asm volatile("" :: "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]));
}

/*
 * Issues the copies of piece c into st: tt_valid token tiles of the pass
 * (x: its first tile, each tile a 1024-byte block of the tile layout) and
 * rt_valid row tiles of weights and scales (w, s: the block's first row
 * tile), the block's threads taking turns.  Tiles past the data are not
 * copied; what their stale shared memory meets is only token columns or
 * rows whose results are never stored.
 */
static __device__ __forceinline__ void
moe_wg_stage(MoeWgStage *st, const uint4 *w, const uint32_t *s, const uint4 *x, int kc, int c, int rt_valid,
			 int tt_valid)
{
	const int	t = threadIdx.x;
	constexpr int threads = MOE_WG_WARPS * 32;

	static_assert(MOE_WG_TOKEN_TILES * 64 % threads == 0, "whole rounds of activation copies");
#pragma unroll
	for (int k = 0; k < MOE_WG_TOKEN_TILES * 64 / threads; k++)
	{
		int			i = t + k * threads;

		if ((i >> 6) < tt_valid)
			cp_async16(&st->x[i >> 6][i & 63], x + ((size_t) (i >> 6) * kc + c) * 64 + (i & 63));
	}
	/* a warp per row tile: one 16-byte copy of weights per thread, 2 of scales per row tile */
	if ((t >> 5) < rt_valid)
		cp_async16(&st->w[t >> 5][t & 31], w + ((size_t) (t >> 5) * kc + c) * 32 + (t & 31));
	if (t < MOE_WG_WARPS * 2 && (t >> 1) < rt_valid)
		cp_async16(&st->s[t >> 1][(t & 1) * 4], s + ((size_t) (t >> 1) * kc + c) * 8 + (t & 1) * 4);
}

/*
 * sum += one staged piece for the warp's row tile (row tile `warp` of the
 * block) and all MOE_WG_TOKEN_TILES token tiles.  Absent tiles (past the
 * matrix's rows or the expert's tokens) are not staged: their rows or
 * columns multiply stale shared memory, and their results, each row and
 * column of a product on its own, are dropped by the epilogue.  Per MX
 * block h, the two wgmma of its k16 steps (the order of mx_block_mma, hence
 * the same bits) form one commit group reading A fragments from buffer
 * a[h].  The buffer's previous reader is the group before last (block h of
 * the previous piece): wait_group 1 leaves only the group just issued
 * running, so a warp decodes block h while the tensor cores multiply block
 * h - 1, across pieces too.
 */
static __device__ __forceinline__ void
moe_wg_piece(float (&sum)[MOE_WG_TOKEN_TILES][4], uint32_t (&a)[2][2][4], const MoeWgStage *st, int warp,
			 int lane)
{
	const uint4 wv = st->w[warp][lane];
	const uint32_t sv = st->s[warp][lane >> 2];

#pragma unroll
	for (int h = 0; h < 2; h++)
	{
		wgmma_wait<1>();
		wgmma_keep(a[h][0]);
		wgmma_keep(a[h][1]);
		mx_block_decode(wv, sv, h, a[h][0], a[h][1]);
		wgmma_fence();
#pragma unroll
		for (int k = 0; k < 2; k++)
			wgmma_64x128x16(&sum[0][0], a[h][k], wgmma_desc_sw128((const char *) st->x + 32 * (2 * h + k), 1024));
		wgmma_commit();
	}
}

#endif							/* MOE_WGMMA */

/*
 * wgmma prefill variant (tile-layout activations): block x takes row tiles
 * [MOE_WG_WARPS x, ...) of expert blockIdx.y, warp w row tile w of them,
 * and walks the expert's tokens in passes of MOE_WG_TOKEN_TILES token
 * tiles, every pass on wgmma, short ones included (the header says why).
 * Range sums fold into shared-memory totals as in moe_prefill_kernel, after
 * a full wait.  Only the sm_90a code has a body: the backend launches this
 * kernel only where the runtime loaded that code (moe_wgmma_available).
 */
template <int MODE>
__global__ void __launch_bounds__(MOE_WG_WARPS * 32, 1)
moe_prefill_wgmma_kernel(MoeMatmulArgs args)
{
#if MOE_WGMMA
	constexpr int ahead = MOE_WG_STAGES - 2;
	extern __shared__ uint4 moe_smem[];
	MoeWgSmem  *sm = (MoeWgSmem *) ((char *) moe_smem + (-(unsigned) __cvta_generic_to_shared(moe_smem) & 1023u));
	const int	lane = threadIdx.x & 31;
	const int	warp = threadIdx.x >> 5;
	const int	tile0 = blockIdx.x * MOE_WG_WARPS;
	const int	kc = args.w.kc;
	const int	rt_valid = min(MOE_WG_WARPS, args.w.rtiles - tile0);
	uint32_t	a[2][2][4] = {};	/* A fragments: [buffer = MX block][k16 step][register] */
	const MoeSharedTotals<MOE_WG_TOKEN_TILES> totals = {sm->total[warp], lane};
	MoeBlock	b;

	chain_begin();
	if ((int) blockIdx.y >= *args.route.n_active)
		return;
	b = moe_block(args, tile0, 0);	/* lane 0's pointers: the block's first weights and scales */
	for (int tt0 = 0; tt0 < b.n_tiles; tt0 += MOE_WG_TOKEN_TILES)
	{
		const uint4 *x = args.x + ((size_t) (b.row0 >> 3) + tt0) * kc * 64;
		const int	nt = min(MOE_WG_TOKEN_TILES, b.n_tiles - tt0);
		float		sum[1][MOE_WG_TOKEN_TILES][4];	/* [the warp's row tile][token tile][C register] */
		int			range = 0;

#pragma unroll
		for (int j = 0; j < MOE_WG_TOKEN_TILES; j++)
#pragma unroll
			for (int c = 0; c < 4; c++)
				sum[0][j][c] = 0.0f;
		__syncthreads();		/* every warp is done with the previous pass's stages */
		for (int c = 0; c < ahead; c++)
		{
			if (c < kc)
				moe_wg_stage(&sm->stage[c], b.wp, b.sp, x, kc, c, rt_valid, nt);
			cp_async_commit();
		}
		moe_fold_ranges(totals, sum, &range, 0, kc);
		for (int c = 0; c < kc; c++)
		{
			const MoeWgStage *st = &sm->stage[c % MOE_WG_STAGES];

			cp_async_wait<ahead - 1>();	/* piece c has landed (this thread's part) */
			/* ... and is visible to wgmma's (async proxy) reads */
			asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
			/*
			 * Everyone's part has landed, and every warp has waited for all
			 * but the last group of piece c - 1: piece c - 2's stage, the
			 * one refilled next, is free.
			 */
			__syncthreads();
			if (c + ahead < kc)
				moe_wg_stage(&sm->stage[(c + ahead) % MOE_WG_STAGES], b.wp, b.sp, x, kc, c + ahead, rt_valid, nt);
			cp_async_commit();
			moe_wg_piece(sum[0], a, st, warp, lane);
			if (range < MOE_KSPLIT && (range + 1) * kc / MOE_KSPLIT <= c + 1)	/* a fold is due */
			{
				wgmma_wait<0>();
				wgmma_pin(&sum[0][0][0]);
				wgmma_pin(&sum[0][0][0] + 32);
				moe_fold_ranges(totals, sum, &range, c + 1, kc);
			}
		}
		wgmma_wait<0>();		/* a no-op (the last fold waited), which ptxas cannot see across the loop exit */
		if (warp < rt_valid)
		{
			float		acc[MOE_WG_TOKEN_TILES][4];

#pragma unroll
			for (int j = 0; j < MOE_WG_TOKEN_TILES; j++)
#pragma unroll
				for (int c = 0; c < 4; c++)
					acc[j][c] = sm->total[warp][0][j][c][lane];
			moe_epilogue<MODE, MOE_WG_TOKEN_TILES, true>(args, acc, b.e, tile0 + warp, b.row0, b.n_e, b.n_tiles, tt0,
														 lane >> 2, lane & 3);
		}
	}
#else
	__trap();
#endif
}

/* Stores whether the code that the runtime loaded for this device, that of all of this file's kernels, is sm_90a's. */
__global__ void
moe_wgmma_probe_kernel(int *built)
{
	*built = MOE_WGMMA;
}

/* The decode variant (the block's warps split the input dimension of RT row tiles). */
template <int MODE, int RT, int NT>
__global__ void __launch_bounds__(MOE_KSPLIT * 32)
moe_matmul_kernel(MoeMatmulArgs args)
{
	chain_begin();
	moe_decode_body<MODE, RT, NT>(args);
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

/* Launches the streaming decode variant. */
template <int MODE>
static cudaError_t
launch_stream(int max_active, const MoeMatmulArgs &args, cudaStream_t stream)
{
	dim3		grid(div_up(args.w.rtiles, MOE_ST_WARPS), max_active);

	return launch_chained(moe_stream_kernel<MODE>, grid, MOE_ST_WARPS * 32, 0, stream, args);
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

/* Launches a prefill kernel of `rows` row tiles a block, allowing it `smem` bytes of shared memory first. */
static cudaError_t
launch_prefill_kernel(void (*kernel) (MoeMatmulArgs), bool *smem_allowed, size_t smem, int threads,
					  int rows, int max_active, const MoeMatmulArgs &args, cudaStream_t stream)
{
	cudaError_t rc;

	if (!*smem_allowed)
	{
		rc = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem);
		if (rc != cudaSuccess)
			return rc;
		*smem_allowed = true;
	}
	return launch_chained(kernel, dim3(div_up(args.w.rtiles, rows), max_active), threads, smem, stream,
						  args);
}

/* Launches prefill variant `prefill` (the wgmma one with the slack to align its stages to 1024 bytes). */
template <int MODE>
static cudaError_t
launch_prefill(int max_active, MoePrefill prefill, const MoeMatmulArgs &args, cudaStream_t stream)
{
	static bool smem_allowed[MOE_PREFILL_VARIANTS];

	if (prefill == MOE_PREFILL_WGMMA)
		return launch_prefill_kernel(moe_prefill_wgmma_kernel<MODE>, &smem_allowed[MOE_PREFILL_WGMMA],
									 sizeof(MoeWgSmem) + 1024, MOE_WG_WARPS * 32, MOE_WG_WARPS, max_active,
									 args, stream);
	return launch_prefill_kernel(moe_prefill_kernel<MODE>, &smem_allowed[MOE_PREFILL_MMA], sizeof(MoePrefillSmem),
								 MOE_PF_WARPS * 32, MOE_PF_ROW_TILES, max_active, args, stream);
}

/*
 * Picks the variant for tiles_per_pass (prefill variant `prefill` at 8) and
 * row_tiles (0 at one tile per pass: the streaming variant), and launches it.
 */
template <int MODE>
static cudaError_t
launch_moe_matmul(int max_active, int tiles_per_pass, int rt, MoePrefill prefill, const MoeMatmulArgs &args,
				  cudaStream_t stream)
{
	if (max_active <= 0)
		return cudaSuccess;
	switch (tiles_per_pass)
	{
		case 1:
			if (rt == 0)
				return launch_stream<MODE>(max_active, args, stream);
			return launch_decode_rt<MODE, 1>(max_active, rt, args, stream);
		case 2:
			return launch_decode_rt<MODE, 2>(max_active, rt, args, stream);
		case 4:
			return launch_decode_rt<MODE, 4>(max_active, rt, args, stream);
		default:
			return launch_prefill<MODE>(max_active, prefill, args, stream);
	}
}

const char *const moe_prefill_names[MOE_PREFILL_VARIANTS] = {"mma", "wgmma"};

/*
 * Whether the wgmma prefill kernel can run on the current device: whether
 * the runtime loaded this file's sm_90a code for it (H100, H200), asked of
 * a probe kernel of the same file.  The cubin's reported version (90) is
 * the same for sm_90 and sm_90a, so cudaFuncGetAttributes cannot tell.
 */
cudaError_t
moe_wgmma_available(bool *available)
{
	int		   *d_built;
	int			built = 0;
	cudaError_t rc;

	*available = false;
	rc = cudaMalloc(&d_built, sizeof(int));
	if (rc != cudaSuccess)
		return rc;
	moe_wgmma_probe_kernel<<<1, 1>>>(d_built);
	rc = cudaGetLastError();
	if (rc == cudaSuccess)
		rc = cudaMemcpy(&built, d_built, sizeof(int), cudaMemcpyDeviceToHost);
	cudaFree(d_built);
	*available = rc == cudaSuccess && built;
	return rc;
}

/* gate_up product + SwiGLU for every active expert. */
cudaError_t
launch_moe_gate_up(int max_active, int tiles_per_pass, int row_tiles, MoePrefill prefill, MoeMatrix w,
				   MoeRoute route, const __half *x_frag, float limit, __half *act_frag, int act_kc,
				   cudaStream_t stream)
{
	MoeMatmulArgs args = {};

	args.w = w;
	args.route = route;
	args.x = (const uint4 *) x_frag;
	args.act = act_frag;
	args.act_kc = act_kc;
	args.limit = limit;
	return launch_moe_matmul<MOE_GATE_UP>(max_active, tiles_per_pass, row_tiles, prefill, args, stream);
}

/* down product + bias for every active expert. */
cudaError_t
launch_moe_down(int max_active, int tiles_per_pass, int row_tiles, MoePrefill prefill, MoeMatrix w,
				MoeRoute route, const __half *act_frag, float *y, cudaStream_t stream)
{
	MoeMatmulArgs args = {};

	args.w = w;
	args.route = route;
	args.x = (const uint4 *) act_frag;
	args.y = y;
	return launch_moe_matmul<MOE_DOWN>(max_active, tiles_per_pass, row_tiles, prefill, args, stream);
}
