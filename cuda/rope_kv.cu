/*
 * rope_kv.cu: from the q/k/v product to the attention inputs of prefill
 * tokens.  One block per token row: adds the q/k/v biases, rotates q and k
 * with the position's (C, S) pairs from the host-built YaRN table (rope.h:
 * half-split pairs (i, i + D/2), C and S already times the concentration;
 * rope_pair in kernels.cuh), writes q in fp32 for the attention kernel, and
 * appends k and v as bf16 to the sequence's page of the KV cache.
 *
 * The blocks follow the attention items (block (i, j): token j of item i),
 * not the rows, because the step's decode tokens, which the decode
 * attention kernel rotates and appends itself (launch_attention_rope: one
 * launch less per layer), are the first items but not necessarily the
 * first rows.  Padding items (0 tokens) and rows of slot -1 write nothing.
 */
#include "kernels.cuh"

#define ROPE_THREADS 512

/* Bias + RoPE for token blockIdx.y of item blockIdx.x, q out, k/v into the cache. */
__global__ void __launch_bounds__(ROPE_THREADS)
rope_kv_kernel(const int32_t *__restrict__ item_tok0, const int32_t *__restrict__ item_ntok,
			   const int32_t *__restrict__ tok_pos, const int32_t *__restrict__ tok_slot,
			   int layer, const float *__restrict__ qkv, const float *__restrict__ bias,
			   const float2 *__restrict__ rope, int Hq, int Hkv, int D, float *__restrict__ q,
			   KvCacheView kv)
{
	int			half = D / 2;
	int			n_cols = (Hq + 2 * Hkv) * D;
	int			t;
	int			pos;
	int			slot;
	int			off;
	int			page = -1;
	const float *row;
	const float2 *cs;

	chain_begin();
	if ((int) blockIdx.y >= item_ntok[blockIdx.x])
		return;
	t = item_tok0[blockIdx.x] + blockIdx.y;
	pos = tok_pos[t];
	slot = tok_slot[t];
	off = pos % KV_PAGE;
	row = qkv + (size_t) t * n_cols;
	cs = rope + (size_t) pos * half;
	if (slot >= 0)
		page = kv.page_table[(size_t) slot * kv.max_pages + pos / KV_PAGE];

	/* rotated pairs of the q heads, then of the k heads (unrolled: loads of several pairs in flight) */
#pragma unroll 4
	for (int p = threadIdx.x; p < (Hq + Hkv) * half; p += blockDim.x)
	{
		int			head = p / half;
		int			i = p % half;
		int			c0 = head * D + i;
		float2		r = rope_pair(row, bias, c0, half, cs[i]);

		if (head < Hq)
		{
			q[(size_t) t * Hq * D + c0] = r.x;
			q[(size_t) t * Hq * D + c0 + half] = r.y;
		}
		else if (page >= 0)
		{
			size_t		k0 = kv_index(kv, layer, page, head - Hq, off);

			kv.k[k0 + i] = __float2bfloat16_rn(r.x);
			kv.k[k0 + i + half] = __float2bfloat16_rn(r.y);
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

/* Launches item_tokens blocks per item (those past an item's tokens return at once). */
cudaError_t
launch_rope_kv(const StepView &sv, int n_items, int item_tokens, int layer, const float *qkv,
			   const float *qkv_bias, const float2 *rope, int Hq, int Hkv, int D, float *q,
			   KvCacheView kv, cudaStream_t stream)
{
	if (n_items <= 0)
		return cudaSuccess;
	return launch_chained(rope_kv_kernel, dim3(n_items, item_tokens), ROPE_THREADS, 0, stream,
						  sv.item_tok0, sv.item_ntok, sv.tok_pos, sv.tok_slot, layer, qkv,
						  qkv_bias, rope, Hq, Hkv, D, q, kv);
}
