/*
 * attention_decode.cu: attention of decode items (one token each; G <=
 * ATTN_WARPS query heads per KV head, head dim in ATTN_HEAD_DIMS).  The
 * block's rows all share one position, so the warps split the key tiles
 * among themselves (and, for short contexts, the rows), each keeping the
 * online-softmax state of its rows; lanes load their key's K row straight
 * into registers and the tile's V rows into the warp's own shared memory,
 * with no block barrier inside the loop.  The warps' partial states (max,
 * sum, output) are merged at the end.  A batch-1 decode has only Hkv blocks
 * per layer, so this is what keeps a layer's attention from walking its
 * tiles one by one.
 *
 * Fused bias + RoPE + KV append (launch_attention_rope, what the step uses):
 * a decode block takes its token's q/k/v product row instead of q, rotates
 * its query heads into shared memory and its KV head's new key, and appends
 * that key and the new value to the cache itself, which saves the rope_kv
 * launch of the decode tokens (a batch-1 step then has none per layer).
 * The blocks that split one KV head's group (gridDim.z) each write the same
 * bits to the same cache row, a benign duplicate; each block then reads the
 * row back like any other key, since __syncthreads makes the block's own
 * global writes visible to its threads.  Reading it back rather than using
 * the registers keeps the key loop untouched, so every score and sum is
 * computed exactly as in the two-kernel form (launch_attention with decode
 * = 1 after launch_rope_kv; the kernel tests compare the two bit for bit).
 */
#include "attention.cuh"

/*
 * Merges row r of a decode block from the partial states its tile workers
 * left in part ([ATTN_WARPS][ATTN_WARPS][D + 2]: o, then m and l, by warp
 * and row), joins the sink and writes the row as bf16 to out.  Run by one
 * warp.  The warps that held row r are those of row group r % row_groups,
 * one per tile offset.
 */
template <int D>
static __device__ __forceinline__ void
decode_merge_row(const float *part, int r, int tile_workers, int row_groups, float sink,
				 __nv_bfloat16 *out)
{
	constexpr int DPL = (D + 31) / 32;	/* head dims per lane */
	const int	lane = threadIdx.x & 31;
	float		big = sink;
	float		den;

	for (int t = 0; t < tile_workers; t++)
		big = fmaxf(big, part[((size_t) (r % row_groups + t * row_groups) * ATTN_WARPS + r) * (D + 2) + D]);
	den = expf(sink - big);
	for (int t = 0; t < tile_workers; t++)
	{
		const float *pr = part + ((size_t) (r % row_groups + t * row_groups) * ATTN_WARPS + r) * (D + 2);

		if (pr[D] != -INFINITY)
			den += pr[D + 1] * expf(pr[D] - big);
	}
#pragma unroll
	for (int dd = 0; dd < DPL; dd++)
	{
		int			d = lane + 32 * dd;
		float		acc = 0.0f;

		if (d >= D)
			continue;
		for (int t = 0; t < tile_workers; t++)
		{
			const float *pr = part + ((size_t) (r % row_groups + t * row_groups) * ATTN_WARPS + r) * (D + 2);

			if (pr[D] != -INFINITY)
				acc += pr[d] * expf(pr[D] - big);
		}
		out[d] = __float2bfloat16_rn(acc / den);
	}
}

/*
 * Fused prologue of a decode block: bias + RoPE of its GB query heads from
 * h0 into q_s ([GB][D]), and of KV head g's new key, which goes with the new
 * value to the cache row of the token's position.  rope_pair and the v
 * expression are rope_kv_kernel's, so q, k and v are its bits.
 */
template <int D>
static __device__ __forceinline__ void
decode_rope_kv(const QkvRope &rope, const AttnItem &it, int layer, int g, int h0, int GB, int Hq,
			   const KvCacheView &kv, float *q_s)
{
	constexpr int half = D / 2;
	const int	Hkv = kv.n_kv_heads;
	const float *row = rope.qkv + (size_t) it.tok0 * (Hq + 2 * Hkv) * D;
	const float2 *cs = rope.table + (size_t) it.p0 * half;
	size_t		at = attn_key_index(kv, layer, it.slot, g, it.p0);

	/* pairs of row r < GB: query head h0 + r; pairs of r = GB: the key */
	for (int p = threadIdx.x; p < (GB + 1) * half; p += blockDim.x)
	{
		int			r = p / half;
		int			i = p % half;
		float2		o = rope_pair(row, rope.bias, (r < GB ? h0 + r : Hq + g) * D + i, half, cs[i]);

		if (r < GB)
		{
			q_s[r * D + i] = o.x;
			q_s[r * D + i + half] = o.y;
		}
		else
		{
			kv.k[at + i] = __float2bfloat16_rn(o.x);
			kv.k[at + i + half] = __float2bfloat16_rn(o.y);
		}
	}
	for (int d = threadIdx.x; d < D; d += blockDim.x)
	{
		int			c = (Hq + Hkv + g) * D + d;

		kv.v[at + d] = __float2bfloat16_rn(row[c] + rope.bias[c]);
	}
}

/*
 * Decode rows of item blockIdx.x (one token) and KV head blockIdx.y: query
 * heads [blockIdx.z * GB, (blockIdx.z + 1) * GB) of the group, GB = G /
 * gridDim.z (small batches split a group over several blocks so that more
 * SMs work).  The 8 warps are split into TS tile workers x RS row groups
 * (TS*RS = 8): many tiles -> every warp walks its own tiles with all GB
 * rows; few tiles (short contexts) -> warps share a tile and split the rows,
 * so a one-tile context still uses all warps.  Warp w has row group w % RS
 * and tile offset w / RS.  TS depends on the context length only, so a row
 * is summed the same way whatever GB is.  The head dim is a template
 * parameter so that a lane's K row and output stay in as few registers as
 * the head needs (sized for 128 at run time it took 192 registers: one block
 * per SM, 45 us per layer at batch 64).  rope.qkv set: the fused form
 * (decode_rope_kv makes q and the new K/V; q is not read); else q holds the
 * rotated queries and the cache the new K/V already.
 */
template <int D>
__global__ void __launch_bounds__(ATTN_WARPS * 32)
attention_decode_kernel(const int32_t *__restrict__ item_tok0, const int32_t *__restrict__ item_ntok,
						const int32_t *__restrict__ tok_pos, const int32_t *__restrict__ tok_slot,
						int layer, int window, const float *__restrict__ q, QkvRope rope,
						KvCacheView kv, const float *__restrict__ sinks, int Hq,
						__nv_bfloat16 *__restrict__ att)
{
	constexpr int DPL = (D + 31) / 32;	/* head dims per lane */

	chain_begin();
	extern __shared__ float smem[];
	const int	G = Hq / kv.n_kv_heads;
	const int	GB = G / gridDim.z;	/* rows of this block */
	const int	h0 = blockIdx.y * G + blockIdx.z * GB;	/* its first query head */
	const int	lane = threadIdx.x & 31;
	const int	warp = threadIdx.x >> 5;
	const int	g = blockIdx.y;
	const float scale = 1.0f / sqrtf((float) D);
	float	   *q_s = smem;	/* [GB][D] */
	float	   *part = q_s + ATTN_WARPS * D;	/* [ATTN_WARPS][G][D + 2]: o, then m and l */
	__nv_bfloat16 *v_s = (__nv_bfloat16 *) (part + ATTN_WARPS * ATTN_WARPS * (D + 2));	/* [ATTN_WARPS][ATTN_TILE][D] */
	__nv_bfloat16 *v_w = v_s + (size_t) warp * ATTN_TILE * D;
	AttnItem	it;				/* one token: k_hi = p0 */
	int			n_tiles;
	int			tile_workers;
	int			row_groups;
	int			rg;
	float		m[ATTN_WARPS];
	float		l[ATTN_WARPS];
	float		o[ATTN_WARPS][DPL];

	it = attn_item(item_tok0, item_ntok, tok_pos, tok_slot, window);
	if (it.n_tok <= 0)
		return;
	n_tiles = it.p0 / ATTN_TILE - it.k_lo / ATTN_TILE + 1;
	tile_workers = n_tiles >= 8 ? 8 : n_tiles >= 4 ? 4 : n_tiles >= 2 ? 2 : 1;
	row_groups = ATTN_WARPS / tile_workers;
	rg = warp % row_groups;
	if (rope.qkv)
		decode_rope_kv<D>(rope, it, layer, g, h0, GB, Hq, kv, q_s);
	else
		for (int i = threadIdx.x; i < GB * D; i += blockDim.x)
			q_s[i] = q[((size_t) it.tok0 * Hq + h0) * D + i];
#pragma unroll
	for (int ri = 0; ri < ATTN_WARPS; ri++)
	{
		m[ri] = -INFINITY;
		l[ri] = 0.0f;
#pragma unroll
		for (int dd = 0; dd < DPL; dd++)
			o[ri][dd] = 0.0f;
	}
	__syncthreads();			/* q_s, and the fused form's K/V row, visible to all warps */

	for (int tile = it.k_lo / ATTN_TILE + warp / row_groups; tile <= it.p0 / ATTN_TILE; tile += tile_workers)
	{
		int			key = tile * ATTN_TILE + lane;
		int			valid = key >= it.k_lo && key <= it.p0;
		uint4		kr[D / 8];
		float		p_r[ATTN_WARPS];

		if (valid)
		{
			size_t		src = attn_key_index(kv, layer, it.slot, g, key);

#pragma unroll
			for (int c = 0; c < D / 8; c++)
				if (c < D / 8)
				{
					kr[c] = *(const uint4 *) (kv.k + src + 8 * c);
					*(uint4 *) (v_w + lane * D + 8 * c) = *(const uint4 *) (kv.v + src + 8 * c);
				}
		}
		else
#pragma unroll
			for (int c = 0; c < D / 8; c++)
				if (c < D / 8)
				{
					kr[c] = make_uint4(0, 0, 0, 0);
					*(uint4 *) (v_w + lane * D + 8 * c) = kr[c];
				}
		__syncwarp();
#pragma unroll
		for (int ri = 0; ri < ATTN_WARPS; ri++)
		{
			int			r = rg + ri * row_groups;
			float		s = -INFINITY;
			float		tile_max;
			float		m_new;
			float		corr;

			p_r[ri] = 0.0f;
			if (r >= GB)
				continue;
			if (valid)
			{
				const float *qr = q_s + r * D;
				float		dot = 0.0f;

#pragma unroll
				for (int c = 0; c < D / 8; c++)
					if (c < D / 8)
					{
						const __nv_bfloat162 *k2 = (const __nv_bfloat162 *) &kr[c];

#pragma unroll
						for (int e = 0; e < 4; e++)
						{
							float2		kf = __bfloat1622float2(k2[e]);

							dot += qr[8 * c + 2 * e] * kf.x + qr[8 * c + 2 * e + 1] * kf.y;
						}
					}
				s = dot * scale;
			}
			tile_max = warp_max(s);
			if (tile_max == -INFINITY)
				continue;
			m_new = fmaxf(m[ri], tile_max);
			corr = expf(m[ri] - m_new);
			p_r[ri] = valid ? expf(s - m_new) : 0.0f;
			l[ri] = l[ri] * corr + p_r[ri];
#pragma unroll
			for (int dd = 0; dd < DPL; dd++)
				o[ri][dd] *= corr;
			m[ri] = m_new;
		}
		for (int jj = 0; jj < ATTN_TILE; jj++)
		{
			float		vv[DPL];

			if (tile * ATTN_TILE + jj < it.k_lo || tile * ATTN_TILE + jj > it.p0)
				continue;
#pragma unroll
			for (int dd = 0; dd < DPL; dd++)
				vv[dd] = lane + 32 * dd < D ? __bfloat162float(v_w[jj * D + lane + 32 * dd]) : 0.0f;
#pragma unroll
			for (int ri = 0; ri < ATTN_WARPS; ri++)
			{
				float		pj;

				if (rg + ri * row_groups >= GB)
					break;
				pj = __shfl_sync(0xffffffffu, p_r[ri], jj);
#pragma unroll
				for (int dd = 0; dd < DPL; dd++)
					o[ri][dd] += pj * vv[dd];
			}
		}
		__syncwarp();
	}

	/* each warp's partial state of its rows -> shared memory; warp r merges row r */
#pragma unroll
	for (int ri = 0; ri < ATTN_WARPS; ri++)
	{
		int			r = rg + ri * row_groups;
		float	   *pr;
		float		lsum;

		if (r >= GB)
			break;
		pr = part + ((size_t) warp * ATTN_WARPS + r) * (D + 2);
		lsum = warp_sum(l[ri]);
#pragma unroll
		for (int dd = 0; dd < DPL; dd++)
			if (lane + 32 * dd < D)
				pr[lane + 32 * dd] = o[ri][dd];
		if (lane == 0)
		{
			pr[D] = m[ri];
			pr[D + 1] = lsum;
		}
	}
	__syncthreads();
	if (warp < GB)
		decode_merge_row<D>(part, warp, tile_workers, row_groups, sinks[h0 + warp],
							att + ((size_t) it.tok0 * Hq + (h0 + warp)) * D);
}

/* The signature of attention_decode_kernel (AttentionKernel plus the fused form's inputs). */
typedef void (*DecodeKernel) (const int32_t *, const int32_t *, const int32_t *, const int32_t *,
							  int, int, const float *, QkvRope, KvCacheView, const float *, int,
							  __nv_bfloat16 *);

/* The decode kernel for head dim D, or NULL (other head dims use attention_kernel). */
static DecodeKernel
decode_kernel_for(int D)
{
	switch (D)
	{
#define DECODE_KERNEL_CASE(d) case d: return attention_decode_kernel<d>;
		ATTN_HEAD_DIMS(DECODE_KERNEL_CASE)
#undef DECODE_KERNEL_CASE
	}
	return NULL;
}

/* Shared memory of the decode kernel for head dim D. */
static size_t
decode_smem_bytes(int D)
{
	return (size_t) ATTN_WARPS * D * sizeof(float) +
		(size_t) ATTN_WARPS * ATTN_WARPS * (D + 2) * sizeof(float) +
		(size_t) ATTN_WARPS * ATTN_TILE * D * sizeof(__nv_bfloat16);
}

/*
 * Query-head splits of a decode launch: blocks per (item, KV head) so that a
 * small batch still has about DECODE_TARGET_BLOCKS blocks (a batch-1 decode
 * otherwise ran 8 blocks on 132 SMs); each split re-reads the group's K/V,
 * from L2.
 */
#define DECODE_TARGET_BLOCKS 512

static int
decode_row_splits(int n_items, int Hkv, int G)
{
	int			z = G;

	while (z > 1 && (G % z != 0 || (long) n_items * Hkv * z > DECODE_TARGET_BLOCKS))
		z--;
	return z;
}

/* Whether the decode kernel takes this shape: the group fits the warps, the head dim has an instance. */
bool
attention_decode_fits(int D, int G)
{
	return G <= ATTN_WARPS && decode_kernel_for(D) != NULL;
}

/*
 * Launches items x KV heads x query-head splits blocks of ATTN_WARPS warps;
 * rope.qkv set: the fused form (q unused).
 */
cudaError_t
launch_attention_decode(const StepView &sv, int n_items, int layer, int window, const float *q,
						QkvRope rope, KvCacheView kv, const float *sinks, int Hq,
						__nv_bfloat16 *att, cudaStream_t stream)
{
	int			D = kv.head_dim;
	int			G = Hq / kv.n_kv_heads;
	dim3		grid(n_items, kv.n_kv_heads, decode_row_splits(n_items, kv.n_kv_heads, G));

	return launch_chained(decode_kernel_for(D), grid, ATTN_WARPS * 32, decode_smem_bytes(D),
						  stream, sv.item_tok0, sv.item_ntok, sv.tok_pos, sv.tok_slot, layer,
						  window, q, rope, kv, sinks, Hq, att);
}

/*
 * Allows the decode kernels their shared memory (> 48 KB for large heads) on
 * the current device, and asks for the largest shared-memory carveout so that
 * several blocks fit on an SM.
 */
cudaError_t
attention_decode_prepare(void)
{
#define HEAD_DIM_ENTRY(d) d,
	const int	dims[] = {ATTN_HEAD_DIMS(HEAD_DIM_ENTRY)};
#undef HEAD_DIM_ENTRY

	for (int D : dims)
	{
		cudaError_t rc = cudaFuncSetAttribute(decode_kernel_for(D),
											  cudaFuncAttributeMaxDynamicSharedMemorySize,
											  (int) decode_smem_bytes(D));

		if (rc == cudaSuccess)
			rc = cudaFuncSetAttribute(decode_kernel_for(D),
									  cudaFuncAttributePreferredSharedMemoryCarveout,
									  cudaSharedmemCarveoutMaxShared);
		if (rc != cudaSuccess)
			return rc;
	}
	return cudaSuccess;
}
