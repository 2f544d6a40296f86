/*
 * attention_prefill.cu: attention of prefill items on the tensor cores, for
 * head dims in ATTN_HEAD_DIMS and G <= 8: flash attention with mma.sync
 * m16n8k16, fp16 operands, fp32 accumulation.  A block of FA_WARPS warps
 * takes FA_ROWS rows (FA_ROWS/G tokens x G heads, so K/V tiles serve all
 * heads of the group), 16 per warp; per tile of FA_KEYS(D) keys, K and V are
 * converted bf16 -> fp16 (exact in range) into shared memory, S = Q K^T
 * comes from 32 mma per warp (Q, pre-scaled by 1/sqrt(D), stays in
 * registers as fp16 fragments), is masked and goes through the online
 * softmax in registers, and the probabilities are reused directly as the A
 * fragments of O += P V (V fragments via ldmatrix.trans).  Rows sharing a
 * group's 4 lanes reduce max and sum with two shuffles.
 *
 * The next tile's K and V are copied (cp.async, as stored: bf16) while the
 * current one is used, and each thread converts the vectors it copied, so
 * the load latency hides behind the tile's mma instead of stalling every
 * block between tiles.  A row's arithmetic does not depend on which rows
 * share its block (an item's extra keys are masked and add exact zeros), so
 * the grouping (FA_WARPS) changes no bits.  H200, run 48, prefill 2048 /
 * 4096 tokens against the synchronous 4-warp kernel (38,369 / 35,828
 * tok/s): 4 warps, 3 blocks an SM 38,403 / 35,983; 4 warps at 128
 * registers 38,810 / 36,593; 8 warps at 128 registers (2 blocks an SM)
 * 39,104 / 36,921; 8 warps, 1 block an SM 37,380 / 34,536.
 */
#include "attention.cuh"

/* keys per tile: 64, 32 for D = 128 (the fp16 tile and its bf16 copy stay within 48 KB of shared memory) */
#define FA_KEYS(D) ((D) <= 64 ? 64 : 32)

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

/* 16-byte vectors of a K (or V) tile each thread copies */
#define FA_TILE_VECS(D) ((FA_KEYS(D) * ((D) / 8) + FA_WARPS * 32 - 1) / (FA_WARPS * 32))

/*
 * Starts the copy of this thread's vectors of tile `tile` of the item's keys
 * for KV head kvh into k_raw and v_raw (bf16, zero outside [k_lo, k_hi]),
 * as one cp.async group.
 */
template <int D>
static __device__ __forceinline__ void
request_tile(const KvCacheView &kv, int layer, const AttnItem &it, int kvh, int tile,
			 __nv_bfloat16 (*k_raw)[D], __nv_bfloat16 (*v_raw)[D])
{
#pragma unroll
	for (int n = 0; n < FA_TILE_VECS(D); n++)
	{
		int			i = threadIdx.x + n * FA_WARPS * 32;
		int			kl = i / (D / 8);
		int			c = 8 * (i % (D / 8));
		int			key = tile * FA_KEYS(D) + kl;

		if (i >= FA_KEYS(D) * (D / 8))
			break;
		if (key >= it.k_lo && key <= it.k_hi)
		{
			size_t		src = attn_key_index(kv, layer, it.slot, kvh, key) + c;

			cp_async16(&k_raw[kl][c], kv.k + src);
			cp_async16(&v_raw[kl][c], kv.v + src);
		}
		else
		{
			*(uint4 *) &k_raw[kl][c] = make_uint4(0, 0, 0, 0);
			*(uint4 *) &v_raw[kl][c] = make_uint4(0, 0, 0, 0);
		}
	}
	cp_async_commit();
}

/* Rows (token, head) of prefill item blockIdx.x, KV head blockIdx.y, on the tensor cores. */
template <int D>
__global__ void __launch_bounds__(FA_WARPS * 32, FA_MIN_BLOCKS)
attention_prefill_tc_kernel(const int32_t *__restrict__ item_tok0, const int32_t *__restrict__ item_ntok,
							const int32_t *__restrict__ tok_pos, const int32_t *__restrict__ tok_slot,
							int layer, int window, const float *__restrict__ q, KvCacheView kv,
							const float *__restrict__ sinks, int Hq, __nv_bfloat16 *__restrict__ att)
{
	chain_begin();
	__shared__ __align__(16) __half k_s[FA_KEYS(D)][D + 8];
	__shared__ __align__(16) __half v_s[FA_KEYS(D)][D + 8];
	__shared__ __align__(16) __nv_bfloat16 k_raw[FA_KEYS(D)][D];	/* the next tile as copied, bf16 */
	__shared__ __align__(16) __nv_bfloat16 v_raw[FA_KEYS(D)][D];
	const int	lane = threadIdx.x & 31;
	const int	warp = threadIdx.x >> 5;
	const int	gq = lane >> 2;
	const int	t4 = lane & 3;
	const int	G = Hq / kv.n_kv_heads;
	const int	kvh = blockIdx.y;
	const float scale = 1.0f / sqrtf((float) D);
	AttnItem	it;
	int			rows;
	int			r[2];
	int			qpos[2];
	int			lo[2];
	uint32_t	qf[D / 16][4];
	float		o[D / 8][4];
	float		m[2] = {-INFINITY, -INFINITY};
	float		l[2] = {0.0f, 0.0f};

	it = attn_item(item_tok0, item_ntok, tok_pos, tok_slot, window);
	if (it.n_tok <= 0)
		return;
	rows = it.n_tok * G;
	for (int i = 0; i < 2; i++)
	{
		r[i] = warp * 16 + gq + 8 * i;
		qpos[i] = r[i] < rows ? it.p0 + r[i] / G : -1;
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
				v = *(const float2 *) (q + ((size_t) (it.tok0 + rr / G) * Hq + kvh * G + rr % G) * D + col);
			qf[ks][j] = pack_half2(v.x * scale, v.y * scale);
		}
#pragma unroll
	for (int nd = 0; nd < D / 8; nd++)
		o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;

	/* the first tile is copied now; each later one is requested before the previous is used */
	request_tile<D>(kv, layer, it, kvh, it.k_lo / FA_KEYS(D), k_raw, v_raw);
	for (int tile = it.k_lo / FA_KEYS(D); tile <= it.k_hi / FA_KEYS(D); tile++)
	{
		float		s[FA_KEYS(D) / 8][4];
		float		mx[2];
		float		corr[2];

		__syncthreads();		/* the previous tile is no longer read */
		cp_async_wait<0>();		/* this thread's vectors of the tile are in k_raw, v_raw */
#pragma unroll
		for (int n = 0; n < FA_TILE_VECS(D); n++)
		{
			int			i = threadIdx.x + n * FA_WARPS * 32;
			int			kl = i / (D / 8);
			int			c = 8 * (i % (D / 8));

			if (i >= FA_KEYS(D) * (D / 8))
				break;
			*(uint4 *) &k_s[kl][c] = bf16x8_to_f16x8(*(const uint4 *) &k_raw[kl][c]);
			*(uint4 *) &v_s[kl][c] = bf16x8_to_f16x8(*(const uint4 *) &v_raw[kl][c]);
		}
		__syncthreads();
		if (tile < it.k_hi / FA_KEYS(D))
			request_tile<D>(kv, layer, it, kvh, tile + 1, k_raw, v_raw);

		/* S = Q K^T for 16 rows x FA_KEYS(D) keys */
#pragma unroll
		for (int j = 0; j < FA_KEYS(D) / 8; j++)
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
		for (int j = 0; j < FA_KEYS(D) / 8; j++)
#pragma unroll
			for (int c = 0; c < 4; c++)
			{
				int			i = c >> 1;
				int			key = tile * FA_KEYS(D) + 8 * j + 2 * t4 + (c & 1);

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
		for (int j = 0; j < FA_KEYS(D) / 8; j++)
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
		for (int kk = 0; kk < FA_KEYS(D) / 16; kk++)
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
		float		f;
		float		den;
		__nv_bfloat16 *out;

		l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
		l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
		if (r[i] >= rows)
			continue;
		h = kvh * G + r[i] % G;
		attn_join_sink(m[i], l[i], sinks[h], &f, &den);
		out = att + ((size_t) (it.tok0 + r[i] / G) * Hq + h) * D;
#pragma unroll
		for (int nd = 0; nd < D / 8; nd++)
			*(__nv_bfloat162 *) (out + nd * 8 + 2 * t4) =
				__floats2bfloat162_rn(o[nd][2 * i] * f / den, o[nd][2 * i + 1] * f / den);
	}
}

/* The tensor-core kernel for head dim D, or NULL. */
static AttentionKernel
prefill_kernel_for(int D)
{
	switch (D)
	{
#define PREFILL_KERNEL_CASE(d) case d: return attention_prefill_tc_kernel<d>;
		ATTN_HEAD_DIMS(PREFILL_KERNEL_CASE)
#undef PREFILL_KERNEL_CASE
	}
	return NULL;
}

/* Whether the tensor-core kernel takes this shape: the head dim has an instance, G <= 8. */
bool
attention_prefill_fits(int D, int G)
{
	return prefill_kernel_for(D) != NULL && G <= 8;
}

/* Launches items x KV heads blocks of FA_WARPS warps. */
cudaError_t
launch_attention_prefill(const StepView &sv, int n_items, int layer, int window, const float *q,
						 KvCacheView kv, const float *sinks, int Hq, __nv_bfloat16 *att,
						 cudaStream_t stream)
{
	dim3		grid(n_items, kv.n_kv_heads);

	return launch_chained(prefill_kernel_for(kv.head_dim), grid, FA_WARPS * 32, 0, stream,
						  sv.item_tok0, sv.item_ntok, sv.tok_pos, sv.tok_slot, layer, window, q, kv,
						  sinks, Hq, att);
}
