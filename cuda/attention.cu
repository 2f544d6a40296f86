/*
 * attention.cu: the attention launches of a layer: picks the kernel for the
 * step's items and shape (attention.cuh lists them) and sizes the items;
 * decode items of shapes the decode kernel takes can have it do their bias +
 * RoPE + KV append too (launch_attention_rope).
 */
#include "attention.cuh"

/* Tokens per attention item for the kernel launch_attention will pick. */
int
attention_tokens_per_item(int Hq, int Hkv, int D, int decode)
{
	int			G = Hq / Hkv;

	if (decode)
		return 1;
	if (attention_prefill_fits(D, G))
		return FA_ROWS / G;
	return ATTN_WARPS * ATTN_ROWS_PER_WARP / G;
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

	if (D > ATTN_MAX_HEAD_DIM || D % 8 != 0)
		return cudaErrorInvalidValue;
	if (n_items <= 0)
		return cudaSuccess;
	if (decode && attention_decode_fits(D, G))
		return launch_attention_decode(sv, n_items, layer, window, q, QkvRope {}, kv, sinks, Hq,
									   att, stream);
	if (attention_prefill_fits(D, G))
		return launch_attention_prefill(sv, n_items, layer, window, q, kv, sinks, Hq, att, stream);
	return launch_attention_general(sv, n_items, layer, window, q, kv, sinks, Hq, att, stream);
}

/*
 * Whether the decode kernel, and with it its fused form, takes the shape
 * (its head dims also pass launch_attention's checks).
 */
bool
attention_fuses_rope(int Hq, int Hkv, int D)
{
	return attention_decode_fits(D, Hq / Hkv);
}

/* Launches the decode kernel's fused form: items x KV heads (x query-head splits) blocks. */
cudaError_t
launch_attention_rope(const StepView &sv, int n_items, int layer, int window, QkvRope rope,
					  KvCacheView kv, const float *sinks, int Hq, __nv_bfloat16 *att,
					  cudaStream_t stream)
{
	if (!attention_fuses_rope(Hq, kv.n_kv_heads, kv.head_dim) || rope.qkv == NULL)
		return cudaErrorInvalidValue;
	if (n_items <= 0)
		return cudaSuccess;
	return launch_attention_decode(sv, n_items, layer, window, NULL, rope, kv, sinks, Hq, att,
								   stream);
}

/* One-time per-device setup: only the decode kernels need any. */
cudaError_t
attention_prepare(void)
{
	return attention_decode_prepare();
}
