/*
 * moe_layout.cuh: the device layouts that let the expert kernels feed the
 * tensor cores (mma.sync m16n8k16, fp16 in, fp32 accumulate) straight from
 * 16-byte coalesced loads, with no shared memory.
 *
 * Weights.  A 16-row x 64-column piece of an expert matrix is what one warp
 * multiplies per step of its loop: four k-steps of 16 columns.  For each
 * k-step a lane needs the 8 values of its A fragment (rows g and g+8, columns
 * 2t, 2t+1, 2t+8, 2t+9 of the k-step, g = lane/4, t = lane%4); those 8 fp4
 * codes are packed into one 32-bit word, so a lane loads one uint4 per piece.
 * Inside the word the codes sit where the decoder (fp4x8_to_f16x2) needs
 * them: register j (j = 0..3 of the fragment, two values each) takes its low
 * value's magnitude bits at FP4_MAG_SHIFT[j] and sign at FP4_SIGN_SHIFT[j],
 * its high value's 16 bits higher.  Decoding is then one to four shift/mask
 * operations per register and gives fp16 values equal to the E2M1 value times
 * 2^-14 (subnormal fp16 for the 0.5 code, exact).
 * Scales.  Each 32-column MX block's E8M0 scale 2^(s-127) is folded into its
 * fp16 A fragment by one exact fp16 multiply, so the mma accumulate whole
 * input ranges with no per-block scaling.  fp16 holds code * 2^x exactly for
 * every code when x = s - 127 - G is in [MOE_X_MIN, MOE_X_MAX] (0.5 * 2^x at
 * least the smallest subnormal 2^-24; the multiplier 2^(x+14) a normal
 * fp16), a 25-binade window; G is chosen per (expert, row tile) so that
 * the largest scale s_max of its nonzero blocks gets x = MOE_X_MAX, and the
 * epilogue multiplies by tile_scale = 2^G in fp32.  A nonzero block more than
 * 24 binades below the largest of its tile is flushed to zero (its values
 * are then below 2^-24 of the tile's largest); a zero block needs no scale.
 * The scales of a piece are one 32-bit word per row group g: the fp16
 * exponent fields of the multipliers (0: the block is zero or flushed) of
 * (row g, block 0), (row g, block 1), (row g+8, block 0), (row g+8, block 1),
 * block 0 being the piece's first 32 columns.
 * gate_up rows are regrouped per 16-row tile: rows 0-7 are the gates of
 * features 8*tile .. 8*tile+7 (file rows 2f), rows 8-15 their ups (2f+1), so
 * that one lane holds gate and up of the same feature and token.
 * Rows and columns past the matrix are zero codes.
 *
 * Activations ("fragment layout"): the B operand of the same mma for 8 tokens
 * (rows of the expert-sorted order) x 64 columns is 32 lanes x 16 halfs, lane
 * g*4+t holding token g's columns (2t, 2t+1, 2t+8, 2t+9) of each k-step.
 * A matrix of R rows (R a multiple of 8) and kc chunks is [R/8][kc][32][16]
 * halfs.
 *
 * Activations ("tile layout", prefill steps of the wgmma variant only):
 * the same 1024 bytes per (8-token tile, 64-column chunk), arranged as the
 * K-major wgmma B operand in the 128-byte swizzle, so that a prefill block
 * stages a piece with 16-byte copies of whole tiles: token n's 64 columns
 * are the 128-byte row n, whose 16-byte chunk q (columns 8q..8q+7) sits at
 * chunk q ^ n.  Same size and the same fp16 values as the fragment layout,
 * only permuted inside each 1024 bytes; a step writes and reads one of the
 * two (moe_tile_layout in kernels.cuh).
 */
#ifndef GPTOSS_CUDA_MOE_LAYOUT_CUH
#define GPTOSS_CUDA_MOE_LAYOUT_CUH

#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define MOE_HD __host__ __device__
#else
#define MOE_HD
#endif

/* Device bytes of one 16-row x 64-column piece: a uint4 of fp4 codes per lane, a multiplier word per row group. */
#define MOE_PIECE_BLOCK_BYTES (32 * 16)
#define MOE_PIECE_SCALE_BYTES (8 * 4)

/* The window of scale exponents x = s - 127 - G that fp16 fragments hold exactly (see Scales above). */
#define MOE_X_MIN (-23)
#define MOE_X_MAX 1

/* The fp16 exponent field of a block's multiplier 2^(x+14), or 0 (zero multiplier) outside the window. */
static inline MOE_HD uint32_t
moe_scale_field(int s, int G)
{
	int			x = s - 127 - G;

	return x >= MOE_X_MIN && x <= MOE_X_MAX ? (uint32_t) (x + 14 + 15) : 0u;
}

/* 16-row tiles of an expert matrix: gate_up tiles hold 8 features (gate and up rows), down tiles 16 rows. */
static inline MOE_HD int
moe_row_tiles(int rows, int gate_up)
{
	return gate_up ? (rows / 2 + 7) / 8 : (rows + 15) / 16;
}

/* Bit positions of register j's magnitude (3 bits) and sign in a packed word (low half). */
#define FP4_MAG_SHIFT(j)  ((j) == 0 ? 0 : (j) == 1 ? 3 : (j) == 2 ? 6 : 9)
#define FP4_SIGN_SHIFT(j) ((j) == 0 ? 13 : (j) == 1 ? 14 : (j) == 2 ? 12 : 15)

/* Index (in halfs) of element (row, col) of a fragment-layout matrix with kc column chunks. */
static inline MOE_HD size_t
frag_index(int row, int col, int kc)
{
	int			tile = row >> 3;
	int			n = row & 7;
	int			chunk = col >> 6;
	int			c = col & 63;
	int			kstep = c >> 4;
	int			cc = c & 15;
	int			t = (cc & 7) >> 1;
	int			upper = cc >> 3;
	int			lane = n * 4 + t;

	return (((size_t) tile * kc + chunk) * 32 + lane) * 16 + kstep * 4 + upper * 2 + (cc & 1);
}

/* Index (in halfs) of element (row, col) of a tile-layout matrix with kc column chunks. */
static inline MOE_HD size_t
tile_index(int row, int col, int kc)
{
	int			n = row & 7;
	int			c = col & 63;

	return (((size_t) (row >> 3) * kc + (col >> 6)) * 8 + n) * 64 + (((c >> 3) ^ n) << 3) + (c & 7);
}

/* Puts fp4 code `code` as value v (0 low, 1 high) of fragment register j into a packed word. */
static inline MOE_HD uint32_t
fp4_pack(uint32_t word, int j, int v, unsigned code)
{
	word |= (uint32_t) (code & 7u) << (16 * v + FP4_MAG_SHIFT(j));
	word |= (uint32_t) (code >> 3) << (16 * v + FP4_SIGN_SHIFT(j));
	return word;
}

/* Row offset inside a 16-row tile and column offset inside a k-step of fragment value (j, v). */
static inline MOE_HD int
frag_a_row(int lane, int j)
{
	return (lane >> 2) + ((j & 1) ? 8 : 0);
}

static inline MOE_HD int
frag_a_col(int lane, int j, int v)
{
	return ((j & 2) ? 8 : 0) + 2 * (lane & 3) + v;
}

#ifdef __CUDACC__
/* Unpacks one packed word into the 4 fp16x2 registers of an A fragment (values * 2^-14). */
static __device__ __forceinline__ void
fp4x8_to_f16x2(uint32_t w, uint32_t a[4])
{
	a[0] = ((w << 9) & 0x0E000E00u) | ((w << 2) & 0x80008000u);
	a[1] = ((w << 6) & 0x0E000E00u) | ((w << 1) & 0x80008000u);
	a[2] = (w << 3) & 0x8E008E00u;
	a[3] = w & 0x8E008E00u;
}
#endif

#endif							/* GPTOSS_CUDA_MOE_LAYOUT_CUH */
