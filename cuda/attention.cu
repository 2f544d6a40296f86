/*
 * attention.cu: attention of one layer over the paged bf16 KV cache, for
 * decode tokens and prefill chunks alike, with GQA, sinks and the sliding
 * window of sliding layers.
 *
 * Plan.  Block (item, g) takes one attention item (1..QT consecutive tokens
 * of one sequence, listed by the host) and KV head g, i.e. the rows
 * (token, query head of group g): ATTN_WARPS warps x rows_per_warp rows.
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
 */
#include "kernels.cuh"

#define ATTN_DPL (ATTN_MAX_HEAD_DIM / 32)	/* head dims per lane, at most */

/* Cache index of (layer, page, kv head, offset, dim 0). */
static __device__ __forceinline__ size_t
attn_kv_index(const KvCacheView &kv, int layer, int page, int head, int off)
{
	return ((((size_t) layer * kv.n_pages + page) * kv.n_kv_heads + head) * KV_PAGE + off) *
		kv.head_dim;
}

/* Rows (token, head) of item blockIdx.x and KV head blockIdx.y. */
template <int RW>
__global__ void __launch_bounds__(ATTN_WARPS * 32)
attention_kernel(const int32_t *__restrict__ item_tok0, const int32_t *__restrict__ item_ntok,
				 const int32_t *__restrict__ tok_pos, const int32_t *__restrict__ tok_slot,
				 int layer, int window, const float *__restrict__ q, KvCacheView kv,
				 const float *__restrict__ sinks, int Hq, __nv_bfloat16 *__restrict__ att)
{
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

/* Launches items x KV heads blocks; rows_per_warp is 1 (decode) or 4 (prefill). */
cudaError_t
launch_attention(const StepView &sv, int n_items, int rows_per_warp, int layer, int window,
				 const float *q, KvCacheView kv, const float *sinks, int Hq, __nv_bfloat16 *att,
				 cudaStream_t stream)
{
	int			D = kv.head_dim;
	dim3		grid(n_items, kv.n_kv_heads);
	size_t		smem = (size_t) ATTN_WARPS * rows_per_warp * D * sizeof(float) +
		(size_t) ATTN_TILE * (2 * D + 2) * sizeof(__nv_bfloat16);

	if (D > ATTN_MAX_HEAD_DIM || D % 2 != 0)
		return cudaErrorInvalidValue;
	if (n_items <= 0)
		return cudaSuccess;
	if (rows_per_warp == 1)
		attention_kernel<1><<<grid, ATTN_WARPS * 32, smem, stream>>>(
			sv.item_tok0, sv.item_ntok, sv.tok_pos, sv.tok_slot, layer, window, q, kv, sinks, Hq, att);
	else
		attention_kernel<4><<<grid, ATTN_WARPS * 32, smem, stream>>>(
			sv.item_tok0, sv.item_ntok, sv.tok_pos, sv.tok_slot, layer, window, q, kv, sinks, Hq, att);
	return cudaGetLastError();
}
