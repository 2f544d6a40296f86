/*
 * rope_kv.cu: from the q/k/v product to the attention inputs.  One block per
 * token row: adds the q/k/v biases, rotates q and k with the position's
 * (C, S) pairs from the host-built YaRN table (rope.h: half-split pairs
 * (i, i + D/2), C and S already times the concentration), writes q in fp32
 * for the attention kernel, and appends k and v as bf16 to the sequence's
 * page of the KV cache.  Padding rows (slot -1) write no cache.
 */
#include "kernels.cuh"

#define ROPE_THREADS 512

/* Bias + RoPE for token blockIdx.x, q out, k/v into the cache. */
__global__ void __launch_bounds__(ROPE_THREADS)
rope_kv_kernel(const int32_t *__restrict__ tok_pos, const int32_t *__restrict__ tok_slot,
			   int layer, const float *__restrict__ qkv, const float *__restrict__ bias,
			   const float2 *__restrict__ rope, int Hq, int Hkv, int D, float *__restrict__ q,
			   KvCacheView kv)
{
	chain_begin();
	int			t = blockIdx.x;
	int			half = D / 2;
	int			pos = tok_pos[t];
	int			slot = tok_slot[t];
	int			n_cols = (Hq + 2 * Hkv) * D;
	const float *row = qkv + (size_t) t * n_cols;
	const float2 *cs = rope + (size_t) pos * half;
	int			page = -1;
	int			off = pos % KV_PAGE;

	if (slot >= 0)
		page = kv.page_table[(size_t) slot * kv.max_pages + pos / KV_PAGE];

	/* rotated pairs of the q heads, then of the k heads (unrolled: loads of several pairs in flight) */
#pragma unroll 4
	for (int p = threadIdx.x; p < (Hq + Hkv) * half; p += blockDim.x)
	{
		int			head = p / half;
		int			i = p % half;
		int			c0 = head * D + i;
		float		a = row[c0] + bias[c0];
		float		b = row[c0 + half] + bias[c0 + half];
		float2		r = cs[i];
		float		out_a = a * r.x - b * r.y;
		float		out_b = b * r.x + a * r.y;

		if (head < Hq)
		{
			q[(size_t) t * Hq * D + c0] = out_a;
			q[(size_t) t * Hq * D + c0 + half] = out_b;
		}
		else if (page >= 0)
		{
			size_t		k0 = kv_index(kv, layer, page, head - Hq, off);

			kv.k[k0 + i] = __float2bfloat16_rn(out_a);
			kv.k[k0 + i + half] = __float2bfloat16_rn(out_b);
		}
	}
	if (page < 0)
		return;
#pragma unroll 2
	for (int p = threadIdx.x; p < Hkv * D; p += blockDim.x)
	{
		int			c = (Hq + Hkv) * D + p;

		kv.v[kv_index(kv, layer, page, p / D, off) + p % D] = __float2bfloat16_rn(row[c] + bias[c]);
	}
}

/* Launches one block per token row. */
cudaError_t
launch_rope_kv(const StepView &sv, int T, int layer, const float *qkv, const float *qkv_bias,
			   const float2 *rope, int Hq, int Hkv, int D, float *q, KvCacheView kv,
			   cudaStream_t stream)
{
	if (T <= 0)
		return cudaSuccess;
	return launch_chained(rope_kv_kernel, T, ROPE_THREADS, 0, stream, sv.tok_pos, sv.tok_slot,
							  layer, qkv, qkv_bias, rope, Hq, Hkv, D, q, kv);
}
