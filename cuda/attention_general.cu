/*
 * attention_general.cu: the CUDA-core attention kernel, for the shapes the
 * decode and tensor-core prefill kernels do not take (attention.cuh).
 *
 * Block (item, g) holds the rows (token, query head of group g) of its item:
 * ATTN_WARPS warps x ATTN_ROWS_PER_WARP rows.  Keys are walked in tiles of
 * ATTN_TILE positions (two pages); each tile's K and V are loaded once into
 * shared memory and used by every row of the block, which is what makes GQA
 * and prefill chunks cheap.  Within a tile a lane owns one key: it computes
 * q.k (q rows in shared memory, K rows padded to an odd word stride against
 * bank conflicts), masks it (causal, window), and the warp does the online
 * softmax; for P.V each lane owns head dims lane, lane+32, ...
 */
#include "attention.cuh"

#define ATTN_DPL (ATTN_MAX_HEAD_DIM / 32)	/* head dims per lane, at most */
#define RW ATTN_ROWS_PER_WARP

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
	const float scale = 1.0f / sqrtf((float) D);
	float	   *q_s = smem;	/* [ATTN_WARPS*RW][D] */
	__nv_bfloat16 *k_s = (__nv_bfloat16 *) (q_s + ATTN_WARPS * RW * D);	/* [ATTN_TILE][D+2] */
	__nv_bfloat16 *v_s = k_s + ATTN_TILE * (D + 2);	/* [ATTN_TILE][D] */
	AttnItem	it;
	int			rows;
	float		m[RW];
	float		l[RW];
	float		o[RW][ATTN_DPL];

	it = attn_item(item_tok0, item_ntok, tok_pos, tok_slot, window);
	if (it.n_tok <= 0)
		return;
	rows = it.n_tok * G;

	for (int i = threadIdx.x; i < rows * D; i += blockDim.x)
	{
		int			r = i / D;
		int			h = g * G + r % G;

		q_s[i] = q[((size_t) (it.tok0 + r / G) * Hq + h) * D + i % D];
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

	for (int tile = it.k_lo / ATTN_TILE; tile <= it.k_hi / ATTN_TILE; tile++)
	{
		__syncthreads();		/* previous tile fully used (and q_s written) */
		for (int i = threadIdx.x; i < ATTN_TILE * (D / 2); i += blockDim.x)
		{
			int			jj = i / (D / 2);
			int			dp = i % (D / 2);
			int			key = tile * ATTN_TILE + jj;
			__nv_bfloat162 kv2 = __floats2bfloat162_rn(0.0f, 0.0f);
			__nv_bfloat162 vv2 = kv2;

			if (key >= it.k_lo && key <= it.k_hi)
			{
				size_t		src = attn_key_index(kv, layer, it.slot, g, key) + 2 * dp;

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
			qpos = it.p0 + r / G;
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
		float		f;
		float		den;
		__nv_bfloat16 *out;

		if (r >= rows)
			continue;
		h = g * G + r % G;
		attn_join_sink(m[i], warp_sum(l[i]), sinks[h], &f, &den);
		out = att + ((size_t) (it.tok0 + r / G) * Hq + h) * D;
#pragma unroll
		for (int dd = 0; dd < ATTN_DPL; dd++)
		{
			int			d = lane + 32 * dd;

			if (d < D)
				out[d] = __float2bfloat16_rn(o[i][dd] * f / den);
		}
	}
}

/* Launches items x KV heads blocks of ATTN_WARPS warps. */
cudaError_t
launch_attention_general(const StepView &sv, int n_items, int layer, int window, const float *q,
						 KvCacheView kv, const float *sinks, int Hq, __nv_bfloat16 *att,
						 cudaStream_t stream)
{
	int			D = kv.head_dim;
	dim3		grid(n_items, kv.n_kv_heads);

	return launch_chained(attention_kernel, grid, ATTN_WARPS * 32,
						  (size_t) ATTN_WARPS * RW * D * sizeof(float) +
						  (size_t) ATTN_TILE * (2 * D + 2) * sizeof(__nv_bfloat16),
						  stream, sv.item_tok0, sv.item_ntok, sv.tok_pos, sv.tok_slot, layer, window,
						  q, kv, sinks, Hq, att);
}
