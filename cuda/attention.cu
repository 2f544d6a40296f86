/*
 * attention.cu: attention of one layer over the paged bf16 KV cache, for
 * decode tokens and prefill chunks alike, with GQA, sinks and the sliding
 * window of sliding layers.
 *
 * Plan.  Block (item, g) takes one attention item (1..QT consecutive tokens
 * of one sequence, listed by the host) and KV head g, i.e. the rows
 * (token, query head of group g): ATTN_WARPS warps x ATTN_ROWS_PER_WARP rows.
 * Keys are walked in tiles of ATTN_TILE positions (two pages) from the
 * first position any row may see to the last token's position; each tile's
 * K and V are loaded once into shared memory and used by every row of the
 * block, which is what makes GQA and prefill chunks cheap.  Within a tile a
 * lane owns one key: it computes q.k (q rows in shared memory, K rows padded
 * to an odd word stride against bank conflicts), masks it (causal, window),
 * and the warp does an online softmax (running max and rescaled sums, exact
 * in fp32); for P.V each lane owns head dims lane, lane+32, ...
 * At the end the sink joins the softmax as one more logit with no value:
 * o = sum_j e^(s_j-M) v_j / (sum_j e^(s_j-M) + e^(S-M)), M = max(S, max_j s_j).
 * Output is bf16 [T][Hq*D], the input of the o-projection.
 * The new tokens' own K/V were written by rope_kv before this kernel runs.
 *
 * Decode items (one token, G <= ATTN_WARPS query heads per KV head, head
 * dim 16, 32, 64 or 128) use attention_decode_kernel instead: there the block's rows all share one
 * position, so the warps split the key tiles among themselves (and, for
 * short contexts, the rows), each keeping the online-softmax state of its
 * rows; lanes load their key's K row straight into registers and the tile's
 * V rows into the warp's own shared memory, with no block barrier inside
 * the loop.  The warps' partial states (max, sum, output) are merged at the
 * end.  A batch-1 decode has only Hkv blocks per layer, so this is what
 * keeps a layer's attention from walking its tiles one by one.
 *
 * Prefill items use attention_prefill_tc_kernel when the head dim is 16,
 * 32, 64 or 128 and G <= 8: flash attention on the tensor cores (mma.sync
 * m16n8k16, fp16 operands, fp32 accumulation).  A block of 4 warps takes 64
 * rows (64/G tokens x G heads, so K/V tiles serve all heads of the group),
 * 16 per warp; per tile of 64 keys, K and V are converted bf16 -> fp16 (exact
 * in range) into shared memory, S = Q K^T comes from 32 mma per warp (Q, pre-
 * scaled by 1/sqrt(D), stays in registers as fp16 fragments), is masked and
 * goes through the online softmax in registers, and the probabilities are
 * reused directly as the A fragments of O += P V (V fragments via
 * ldmatrix.trans).  Rows sharing a group's 4 lanes reduce max and sum with
 * two shuffles.  The CUDA-core attention_kernel covers the other shapes.
 */
#include "kernels.cuh"

#define ATTN_DPL (ATTN_MAX_HEAD_DIM / 32)	/* head dims per lane, at most */
#define RW ATTN_ROWS_PER_WARP

/* Cache index of (layer, page, kv head, offset, dim 0). */
static __device__ __forceinline__ size_t
attn_kv_index(const KvCacheView &kv, int layer, int page, int head, int off)
{
	return ((((size_t) layer * kv.n_pages + page) * kv.n_kv_heads + head) * KV_PAGE + off) *
		kv.head_dim;
}

/* Rows (token, head) of item blockIdx.x and KV head blockIdx.y. */
__global__ void __launch_bounds__(ATTN_WARPS * 32)
attention_kernel(const int32_t *__restrict__ item_tok0, const int32_t *__restrict__ item_ntok,
				 const int32_t *__restrict__ tok_pos, const int32_t *__restrict__ tok_slot,
				 int layer, int window, const float *__restrict__ q, KvCacheView kv,
				 const float *__restrict__ sinks, int Hq, __nv_bfloat16 *__restrict__ att)
{
	chain_begin();
	extern __shared__ float smem[];
	const int	D = kv.head_dim;
	const int	G = Hq / kv.n_kv_heads;
	const int	lane = threadIdx.x & 31;
	const int	warp = threadIdx.x >> 5;
	const int	g = blockIdx.y;
	const int	nq = item_ntok[blockIdx.x];
	const float scale = 1.0f / sqrtf((float) D);
	float	   *q_s = smem;	/* [ATTN_WARPS*RW][D] */
	__nv_bfloat16 *k_s = (__nv_bfloat16 *) (q_s + ATTN_WARPS * RW * D);	/* [ATTN_TILE][D+2] */
	__nv_bfloat16 *v_s = k_s + ATTN_TILE * (D + 2);	/* [ATTN_TILE][D] */
	int			tok0;
	int			slot;
	int			p0;
	int			rows;
	int			k_lo;
	int			k_hi;
	float		m[RW];
	float		l[RW];
	float		o[RW][ATTN_DPL];

	if (nq <= 0)
		return;
	tok0 = item_tok0[blockIdx.x];
	slot = tok_slot[tok0];
	p0 = tok_pos[tok0];
	rows = nq * G;
	k_lo = window > 0 ? max(0, p0 - window + 1) : 0;
	k_hi = p0 + nq - 1;

	for (int i = threadIdx.x; i < rows * D; i += blockDim.x)
	{
		int			r = i / D;
		int			h = g * G + r % G;

		q_s[i] = q[((size_t) (tok0 + r / G) * Hq + h) * D + i % D];
	}
#pragma unroll
	for (int i = 0; i < RW; i++)
	{
		m[i] = -INFINITY;
		l[i] = 0.0f;
#pragma unroll
		for (int dd = 0; dd < ATTN_DPL; dd++)
			o[i][dd] = 0.0f;
	}

	for (int tile = k_lo / ATTN_TILE; tile <= k_hi / ATTN_TILE; tile++)
	{
		__syncthreads();		/* previous tile fully used (and q_s written) */
		for (int i = threadIdx.x; i < ATTN_TILE * (D / 2); i += blockDim.x)
		{
			int			jj = i / (D / 2);
			int			dp = i % (D / 2);
			int			key = tile * ATTN_TILE + jj;
			__nv_bfloat162 kv2 = __floats2bfloat162_rn(0.0f, 0.0f);
			__nv_bfloat162 vv2 = kv2;

			if (key >= k_lo && key <= k_hi)
			{
				int			page = kv.page_table[(size_t) slot * kv.max_pages + key / KV_PAGE];
				size_t		src = attn_kv_index(kv, layer, page, g, key % KV_PAGE) + 2 * dp;

				kv2 = *(const __nv_bfloat162 *) (kv.k + src);
				vv2 = *(const __nv_bfloat162 *) (kv.v + src);
			}
			*(__nv_bfloat162 *) (k_s + jj * (D + 2) + 2 * dp) = kv2;
			*(__nv_bfloat162 *) (v_s + jj * D + 2 * dp) = vv2;
		}
		__syncthreads();

#pragma unroll
		for (int i = 0; i < RW; i++)
		{
			int			r = warp + ATTN_WARPS * i;
			int			qpos;
			int			key = tile * ATTN_TILE + lane;
			int			lo;
			int			valid;
			float		s = -INFINITY;
			float		tile_max;
			float		m_new;
			float		corr;
			float		p;

			if (r >= rows)
				continue;
			qpos = p0 + r / G;
			lo = window > 0 ? qpos - window + 1 : 0;
			valid = key <= qpos && key >= lo;
			if (valid)
			{
				const float *qr = q_s + r * D;
				const __nv_bfloat162 *kr = (const __nv_bfloat162 *) (k_s + lane * (D + 2));
				float		dot = 0.0f;

				for (int d = 0; d < D / 2; d++)
				{
					float2		kf = __bfloat1622float2(kr[d]);

					dot += qr[2 * d] * kf.x + qr[2 * d + 1] * kf.y;
				}
				s = dot * scale;
			}
			tile_max = warp_max(s);
			if (tile_max == -INFINITY)
				continue;
			m_new = fmaxf(m[i], tile_max);
			corr = expf(m[i] - m_new);
			p = valid ? expf(s - m_new) : 0.0f;
			l[i] = l[i] * corr + p;
#pragma unroll
			for (int dd = 0; dd < ATTN_DPL; dd++)
				o[i][dd] *= corr;
			for (int jj = 0; jj < ATTN_TILE; jj++)
			{
				float		pj = __shfl_sync(0xffffffffu, p, jj);

				if (pj == 0.0f)
					continue;
#pragma unroll
				for (int dd = 0; dd < ATTN_DPL; dd++)
				{
					int			d = lane + 32 * dd;

					if (d < D)
						o[i][dd] += pj * __bfloat162float(v_s[jj * D + d]);
				}
			}
			m[i] = m_new;
		}
	}

#pragma unroll
	for (int i = 0; i < RW; i++)
	{
		int			r = warp + ATTN_WARPS * i;
		int			h;
		float		sink;
		float		big;
		float		f;
		float		den;
		__nv_bfloat16 *out;

		if (r >= rows)
			continue;
		h = g * G + r % G;
		sink = sinks[h];
		den = warp_sum(l[i]);
		big = fmaxf(m[i], sink);
		f = expf(m[i] - big);
		den = den * f + expf(sink - big);
		out = att + ((size_t) (tok0 + r / G) * Hq + h) * D;
#pragma unroll
		for (int dd = 0; dd < ATTN_DPL; dd++)
		{
			int			d = lane + 32 * dd;

			if (d < D)
				out[d] = __float2bfloat16_rn(o[i][dd] * f / den);
		}
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
 * per SM, 45 us per layer at batch 64).
 */
template <int D>
__global__ void __launch_bounds__(ATTN_WARPS * 32)
attention_decode_kernel(const int32_t *__restrict__ item_tok0, const int32_t *__restrict__ item_ntok,
						const int32_t *__restrict__ tok_pos, const int32_t *__restrict__ tok_slot,
						int layer, int window, const float *__restrict__ q, KvCacheView kv,
						const float *__restrict__ sinks, int Hq, __nv_bfloat16 *__restrict__ att)
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
	int			tok;
	int			slot;
	int			pos;
	int			k_lo;
	int			n_tiles;
	int			tile_workers;
	int			row_groups;
	int			rg;
	float		m[ATTN_WARPS];
	float		l[ATTN_WARPS];
	float		o[ATTN_WARPS][DPL];

	if (item_ntok[blockIdx.x] <= 0)
		return;
	tok = item_tok0[blockIdx.x];
	slot = tok_slot[tok];
	pos = tok_pos[tok];
	k_lo = window > 0 ? max(0, pos - window + 1) : 0;
	n_tiles = pos / ATTN_TILE - k_lo / ATTN_TILE + 1;
	tile_workers = n_tiles >= 8 ? 8 : n_tiles >= 4 ? 4 : n_tiles >= 2 ? 2 : 1;
	row_groups = ATTN_WARPS / tile_workers;
	rg = warp % row_groups;
	for (int i = threadIdx.x; i < GB * D; i += blockDim.x)
		q_s[i] = q[((size_t) tok * Hq + h0) * D + i];
#pragma unroll
	for (int ri = 0; ri < ATTN_WARPS; ri++)
	{
		m[ri] = -INFINITY;
		l[ri] = 0.0f;
#pragma unroll
		for (int dd = 0; dd < DPL; dd++)
			o[ri][dd] = 0.0f;
	}
	__syncthreads();

	for (int tile = k_lo / ATTN_TILE + warp / row_groups; tile <= pos / ATTN_TILE; tile += tile_workers)
	{
		int			key = tile * ATTN_TILE + lane;
		int			valid = key >= k_lo && key <= pos;
		uint4		kr[D / 8];
		float		p_r[ATTN_WARPS];

		if (valid)
		{
			int			page = kv.page_table[(size_t) slot * kv.max_pages + key / KV_PAGE];
			size_t		src = attn_kv_index(kv, layer, page, g, key % KV_PAGE);

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

			if (tile * ATTN_TILE + jj < k_lo || tile * ATTN_TILE + jj > pos)
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
	{
		int			h = h0 + warp;
		float		sink = sinks[h];
		float		big = sink;
		float		den;
		__nv_bfloat16 *out = att + ((size_t) tok * Hq + h) * D;

		/* the warps that held row `warp`: row group warp % row_groups, every tile offset */
		for (int t = 0; t < tile_workers; t++)
			big = fmaxf(big, part[((size_t) (warp % row_groups + t * row_groups) * ATTN_WARPS + warp) * (D + 2) + D]);
		den = expf(sink - big);
		for (int t = 0; t < tile_workers; t++)
		{
			const float *pr = part + ((size_t) (warp % row_groups + t * row_groups) * ATTN_WARPS + warp) * (D + 2);

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
				const float *pr = part + ((size_t) (warp % row_groups + t * row_groups) * ATTN_WARPS + warp) * (D + 2);

				if (pr[D] != -INFINITY)
					acc += pr[d] * expf(pr[D] - big);
			}
			out[d] = __float2bfloat16_rn(acc / den);
		}
	}
}

#define FA_WARPS 4				/* warps per tensor-core prefill block */
#define FA_ROWS (FA_WARPS * 16)	/* (token, head) rows per block */
#define FA_KEYS 64				/* keys per tile */

/* c += a (16x16 fp16, row) * b (16x8 fp16, col), fp32 accumulate. */
static __device__ __forceinline__ void
fa_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
				 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
				 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
				 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two floats -> packed fp16x2 bits (low half = a). */
static __device__ __forceinline__ uint32_t
pack_half2(float a, float b)
{
	__half2		h = __floats2half2_rn(a, b);

	return *(uint32_t *) &h;
}

/* 8 bf16 (uint4) -> 8 fp16 (uint4). */
static __device__ __forceinline__ uint4
bf16x8_to_f16x8(uint4 v)
{
	const __nv_bfloat162 *b = (const __nv_bfloat162 *) &v;
	uint4		out;
	uint32_t   *o = (uint32_t *) &out;

#pragma unroll
	for (int i = 0; i < 4; i++)
	{
		float2		f = __bfloat1622float2(b[i]);

		o[i] = pack_half2(f.x, f.y);
	}
	return out;
}

/* Rows (token, head) of prefill item blockIdx.x, KV head blockIdx.y, on the tensor cores. */
template <int D>
__global__ void __launch_bounds__(FA_WARPS * 32)
attention_prefill_tc_kernel(const int32_t *__restrict__ item_tok0, const int32_t *__restrict__ item_ntok,
							const int32_t *__restrict__ tok_pos, const int32_t *__restrict__ tok_slot,
							int layer, int window, const float *__restrict__ q, KvCacheView kv,
							const float *__restrict__ sinks, int Hq, __nv_bfloat16 *__restrict__ att)
{
	chain_begin();
	__shared__ __align__(16) __half k_s[FA_KEYS][D + 8];
	__shared__ __align__(16) __half v_s[FA_KEYS][D + 8];
	const int	lane = threadIdx.x & 31;
	const int	warp = threadIdx.x >> 5;
	const int	gq = lane >> 2;
	const int	t4 = lane & 3;
	const int	G = Hq / kv.n_kv_heads;
	const int	kvh = blockIdx.y;
	const int	nq = item_ntok[blockIdx.x];
	const float scale = 1.0f / sqrtf((float) D);
	int			tok0;
	int			slot;
	int			p0;
	int			rows;
	int			k_lo;
	int			k_hi;
	int			r[2];
	int			qpos[2];
	int			lo[2];
	uint32_t	qf[D / 16][4];
	float		o[D / 8][4];
	float		m[2] = {-INFINITY, -INFINITY};
	float		l[2] = {0.0f, 0.0f};

	if (nq <= 0)
		return;
	tok0 = item_tok0[blockIdx.x];
	slot = tok_slot[tok0];
	p0 = tok_pos[tok0];
	rows = nq * G;
	k_lo = window > 0 ? max(0, p0 - window + 1) : 0;
	k_hi = p0 + nq - 1;
	for (int i = 0; i < 2; i++)
	{
		r[i] = warp * 16 + gq + 8 * i;
		qpos[i] = r[i] < rows ? p0 + r[i] / G : -1;
		lo[i] = window > 0 ? qpos[i] - window + 1 : 0;
	}

	/* Q fragments, pre-scaled, fp16 */
#pragma unroll
	for (int ks = 0; ks < D / 16; ks++)
#pragma unroll
		for (int j = 0; j < 4; j++)
		{
			int			rr = r[j & 1];
			int			col = ks * 16 + ((j & 2) ? 8 : 0) + 2 * t4;
			float2		v = make_float2(0.0f, 0.0f);

			if (rr < rows)
				v = *(const float2 *) (q + ((size_t) (tok0 + rr / G) * Hq + kvh * G + rr % G) * D + col);
			qf[ks][j] = pack_half2(v.x * scale, v.y * scale);
		}
#pragma unroll
	for (int nd = 0; nd < D / 8; nd++)
		o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;

	for (int tile = k_lo / FA_KEYS; tile <= k_hi / FA_KEYS; tile++)
	{
		float		s[FA_KEYS / 8][4];
		float		mx[2];
		float		corr[2];

		__syncthreads();		/* the previous tile is no longer read */
		for (int i = threadIdx.x; i < FA_KEYS * (D / 8); i += blockDim.x)
		{
			int			kl = i / (D / 8);
			int			c = i % (D / 8);
			int			key = tile * FA_KEYS + kl;
			uint4		kk = make_uint4(0, 0, 0, 0);
			uint4		vv = kk;

			if (key >= k_lo && key <= k_hi)
			{
				int			page = kv.page_table[(size_t) slot * kv.max_pages + key / KV_PAGE];
				size_t		src = attn_kv_index(kv, layer, page, kvh, key % KV_PAGE) + 8 * c;

				kk = bf16x8_to_f16x8(*(const uint4 *) (kv.k + src));
				vv = bf16x8_to_f16x8(*(const uint4 *) (kv.v + src));
			}
			*(uint4 *) &k_s[kl][8 * c] = kk;
			*(uint4 *) &v_s[kl][8 * c] = vv;
		}
		__syncthreads();

		/* S = Q K^T for 16 rows x 64 keys */
#pragma unroll
		for (int j = 0; j < FA_KEYS / 8; j++)
		{
			s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
			for (int ks = 0; ks < D / 16; ks++)
			{
				uint32_t	b0 = *(const uint32_t *) &k_s[8 * j + gq][ks * 16 + 2 * t4];
				uint32_t	b1 = *(const uint32_t *) &k_s[8 * j + gq][ks * 16 + 8 + 2 * t4];

				fa_mma(s[j], qf[ks], b0, b1);
			}
		}
		/* mask, row max over the 4 lanes of the row group */
		mx[0] = mx[1] = -INFINITY;
#pragma unroll
		for (int j = 0; j < FA_KEYS / 8; j++)
#pragma unroll
			for (int c = 0; c < 4; c++)
			{
				int			i = c >> 1;
				int			key = tile * FA_KEYS + 8 * j + 2 * t4 + (c & 1);

				if (!(key <= qpos[i] && key >= lo[i]))
					s[j][c] = -INFINITY;
				mx[i] = fmaxf(mx[i], s[j][c]);
			}
#pragma unroll
		for (int i = 0; i < 2; i++)
		{
			float		m_new;

			mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
			mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
			m_new = fmaxf(m[i], mx[i]);
			corr[i] = m_new == -INFINITY ? 1.0f : expf(m[i] - m_new);
			m[i] = m_new;
			l[i] *= corr[i];
		}
#pragma unroll
		for (int j = 0; j < FA_KEYS / 8; j++)
#pragma unroll
			for (int c = 0; c < 4; c++)
			{
				int			i = c >> 1;

				s[j][c] = m[i] == -INFINITY ? 0.0f : expf(s[j][c] - m[i]);
				l[i] += s[j][c];
			}
#pragma unroll
		for (int nd = 0; nd < D / 8; nd++)
		{
			o[nd][0] *= corr[0];
			o[nd][1] *= corr[0];
			o[nd][2] *= corr[1];
			o[nd][3] *= corr[1];
		}
		/* O += P V: P's accumulators are the A fragments */
#pragma unroll
		for (int kk = 0; kk < FA_KEYS / 16; kk++)
		{
			uint32_t	a[4];
			uint32_t	vrow = (uint32_t) __cvta_generic_to_shared(&v_s[16 * kk + (lane & 15)][0]);

			a[0] = pack_half2(s[2 * kk][0], s[2 * kk][1]);
			a[1] = pack_half2(s[2 * kk][2], s[2 * kk][3]);
			a[2] = pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
			a[3] = pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
			for (int nd = 0; nd < D / 8; nd++)
			{
				uint32_t	b0,
							b1;

				asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
							 : "=r"(b0), "=r"(b1) : "r"(vrow + nd * 16));
				fa_mma(o[nd], a, b0, b1);
			}
		}
	}

	/* sums over the row group, sink, normalise, store */
#pragma unroll
	for (int i = 0; i < 2; i++)
	{
		int			h;
		float		sink;
		float		big;
		float		f;
		float		den;
		__nv_bfloat16 *out;

		l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
		l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
		if (r[i] >= rows)
			continue;
		h = kvh * G + r[i] % G;
		sink = sinks[h];
		big = fmaxf(m[i], sink);
		f = expf(m[i] - big);
		den = l[i] * f + expf(sink - big);
		out = att + ((size_t) (tok0 + r[i] / G) * Hq + h) * D;
#pragma unroll
		for (int nd = 0; nd < D / 8; nd++)
			*(__nv_bfloat162 *) (out + nd * 8 + 2 * t4) =
				__floats2bfloat162_rn(o[nd][2 * i] * f / den, o[nd][2 * i + 1] * f / den);
	}
}

/* Whether the tensor-core prefill kernel handles this shape. */
static int
prefill_on_tensor_cores(int D, int G)
{
	return (D == 16 || D == 32 || D == 64 || D == 128) && G <= 8;
}

/* Tokens per attention item for the kernel launch_attention will pick. */
int
attention_tokens_per_item(int Hq, int Hkv, int D, int decode)
{
	int			G = Hq / Hkv;

	if (decode)
		return 1;
	if (prefill_on_tensor_cores(D, G))
		return FA_ROWS / G;
	return ATTN_WARPS * ATTN_ROWS_PER_WARP / G;
}

/* The signature every attention kernel shares. */
typedef void (*AttentionKernel) (const int32_t *, const int32_t *, const int32_t *, const int32_t *,
								 int, int, const float *, KvCacheView, const float *, int,
								 __nv_bfloat16 *);

/* The decode kernel for head dim D, or NULL (other head dims use attention_kernel). */
static AttentionKernel
decode_kernel_for(int D)
{
	return D == 16 ? attention_decode_kernel<16> :
		D == 32 ? attention_decode_kernel<32> :
		D == 64 ? attention_decode_kernel<64> :
		D == 128 ? attention_decode_kernel<128> : NULL;
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
 * small batch still has about 512 blocks (a batch-1 decode otherwise ran 8
 * blocks on 132 SMs); each split re-reads the group's K/V, from L2.
 */
static int
decode_row_splits(int n_items, int Hkv, int G)
{
	int			z = G;

	while (z > 1 && (G % z != 0 || (long) n_items * Hkv * z > 512))
		z--;
	return z;
}

/*
 * Launches items x KV heads blocks.  decode: every item is one token (the
 * decode kernel when the group fits the warps); otherwise items of up to
 * attention_tokens_per_item tokens (tensor-core kernel when the shape
 * allows, else the CUDA-core one).
 */
cudaError_t
launch_attention(const StepView &sv, int n_items, int decode, int layer, int window,
				 const float *q, KvCacheView kv, const float *sinks, int Hq, __nv_bfloat16 *att,
				 cudaStream_t stream)
{
	int			D = kv.head_dim;
	int			G = Hq / kv.n_kv_heads;
	dim3		grid(n_items, kv.n_kv_heads);

	if (D > ATTN_MAX_HEAD_DIM || D % 8 != 0)
		return cudaErrorInvalidValue;
	if (n_items <= 0)
		return cudaSuccess;
	if (decode && G <= ATTN_WARPS && decode_kernel_for(D))
	{
		grid.z = decode_row_splits(n_items, kv.n_kv_heads, G);
		return launch_chained(decode_kernel_for(D), grid, ATTN_WARPS * 32, decode_smem_bytes(D),
							  stream, sv.item_tok0, sv.item_ntok, sv.tok_pos, sv.tok_slot, layer,
							  window, q, kv, sinks, Hq, att);
	}
	if (prefill_on_tensor_cores(D, G))
	{
		AttentionKernel kernel =
			D == 16 ? attention_prefill_tc_kernel<16> :
			D == 32 ? attention_prefill_tc_kernel<32> :
			D == 64 ? attention_prefill_tc_kernel<64> : attention_prefill_tc_kernel<128>;

		return launch_chained(kernel, grid, FA_WARPS * 32, 0, stream, sv.item_tok0, sv.item_ntok,
							  sv.tok_pos, sv.tok_slot, layer, window, q, kv, sinks, Hq, att);
	}
	return launch_chained(attention_kernel, grid, ATTN_WARPS * 32,
						  (size_t) ATTN_WARPS * RW * D * sizeof(float) +
						  (size_t) ATTN_TILE * (2 * D + 2) * sizeof(__nv_bfloat16),
						  stream, sv.item_tok0, sv.item_ntok, sv.tok_pos, sv.tok_slot, layer, window,
						  q, kv, sinks, Hq, att);
}

/*
 * Allows the decode kernels their shared memory (> 48 KB for large heads) on
 * the current device, and asks for the largest shared-memory carveout so that
 * several blocks fit on an SM.
 */
cudaError_t
attention_prepare(void)
{
	const int	dims[4] = {16, 32, 64, 128};

	for (int i = 0; i < 4; i++)
	{
		cudaError_t rc = cudaFuncSetAttribute(decode_kernel_for(dims[i]),
											  cudaFuncAttributeMaxDynamicSharedMemorySize,
											  (int) decode_smem_bytes(dims[i]));

		if (rc == cudaSuccess)
			rc = cudaFuncSetAttribute(decode_kernel_for(dims[i]),
									  cudaFuncAttributePreferredSharedMemoryCarveout,
									  cudaSharedmemCarveoutMaxShared);
		if (rc != cudaSuccess)
			return rc;
	}
	return cudaSuccess;
}
