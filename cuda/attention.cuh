/*
 * attention.cuh: what the attention kernels share.  Attention of one layer
 * runs over the paged bf16 KV cache, for decode tokens and prefill chunks
 * alike, with GQA, sinks and the sliding window of sliding layers.
 *
 * The host lists attention items: 1..n consecutive tokens of one sequence
 * (one for decode).  Block (item, g) = (blockIdx.x, blockIdx.y) takes one
 * item and KV head g, i.e. the rows (token, query head of group g), and
 * walks the keys from the first position any of its rows may see to the
 * last token's position, keeping an online softmax per row (running max and
 * rescaled sums, fp32).  At the end the sink joins the softmax as one more
 * logit with no value:
 *   o = sum_j e^(s_j-M) v_j / (sum_j e^(s_j-M) + e^(S-M)), M = max(S, max_j s_j).
 * Output is bf16 [T][Hq*D], the input of the o-projection.  The new tokens'
 * own K/V were written by rope_kv before any of these kernels runs, except
 * in the decode kernel's fused form (launch_attention_rope), which does the
 * bias + RoPE + KV append of its decode tokens itself, one launch less.
 *
 * Three kernels, one per file; attention.cu picks one per launch:
 *   attention_decode.cu   decode items, G <= ATTN_WARPS, head dim in ATTN_HEAD_DIMS
 *   attention_prefill.cu  prefill items on the tensor cores, head dim in
 *                         ATTN_HEAD_DIMS and G <= 8
 *   attention_general.cu  every other shape, on the CUDA cores
 * The prefill and general kernels share one signature (AttentionKernel);
 * the decode kernel adds the fused form's inputs (QkvRope).
 */
#ifndef GPTOSS_CUDA_ATTENTION_CUH
#define GPTOSS_CUDA_ATTENTION_CUH

#include "kernels.cuh"

/*
 * The head dims that have their own instance of the decode and tensor-core
 * prefill kernels (a template parameter, so that per-lane arrays are sized
 * for the head): ATTN_HEAD_DIMS(X) expands X(d) for each.
 */
#define ATTN_HEAD_DIMS(X) X(16) X(32) X(64) X(128)

#define FA_WARPS 8				/* warps per tensor-core prefill block */
#define FA_MIN_BLOCKS 2			/* tensor-core prefill blocks an SM must hold (caps registers at 128) */
#define FA_ROWS (FA_WARPS * 16)	/* (token, head) rows per tensor-core prefill block */

/* The signature of the prefill and general kernels. */
typedef void (*AttentionKernel) (const int32_t *, const int32_t *, const int32_t *, const int32_t *,
								 int, int, const float *, KvCacheView, const float *, int,
								 __nv_bfloat16 *);

/* The attention item of block blockIdx.x: its tokens and the keys its rows may see. */
struct AttnItem
{
	int			n_tok;			/* tokens in the item; 0 = padding (nothing else is set) */
	int			tok0;			/* its first token row */
	int			slot;			/* the sequence's KV slot */
	int			p0;				/* position of the first token */
	int			k_lo;			/* first key any row may see (sliding window) */
	int			k_hi;			/* last key: the last token's position */
};

/* Looks up the item of block blockIdx.x (window > 0: sliding window of that many keys). */
static __device__ __forceinline__ AttnItem
attn_item(const int32_t *__restrict__ item_tok0, const int32_t *__restrict__ item_ntok,
		  const int32_t *__restrict__ tok_pos, const int32_t *__restrict__ tok_slot, int window)
{
	AttnItem	it;

	it.n_tok = item_ntok[blockIdx.x];
	if (it.n_tok <= 0)
		return it;
	it.tok0 = item_tok0[blockIdx.x];
	it.slot = tok_slot[it.tok0];
	it.p0 = tok_pos[it.tok0];
	it.k_lo = window > 0 ? max(0, it.p0 - window + 1) : 0;
	it.k_hi = it.p0 + it.n_tok - 1;
	return it;
}

/* Cache index of dim 0 of key position `key` of a slot, through the page table. */
static __device__ __forceinline__ size_t
attn_key_index(const KvCacheView &kv, int layer, int slot, int head, int key)
{
	int			page = kv.page_table[(size_t) slot * kv.max_pages + key / KV_PAGE];

	return kv_index(kv, layer, page, head, key % KV_PAGE);
}

/*
 * Joins the sink logit to a row's softmax state (max m, sum l of e^(s_j-m)):
 * the row's output is o * f / den.
 */
static __device__ __forceinline__ void
attn_join_sink(float m, float l, float sink, float *f, float *den)
{
	float		big = fmaxf(m, sink);

	*f = expf(m - big);
	*den = l * *f + expf(sink - big);
}

/* attention_decode.cu: whether the decode kernel takes this shape. */
bool		attention_decode_fits(int D, int G);

/*
 * attention_decode.cu: launches the decode kernel (every item one token);
 * rope.qkv set: the fused form, which makes q and the new K/V itself.
 */
cudaError_t launch_attention_decode(const StepView &sv, int n_items, int layer, int window,
									const float *q, QkvRope rope, KvCacheView kv,
									const float *sinks, int Hq, __nv_bfloat16 *att,
									cudaStream_t stream);

/* attention_decode.cu: shared-memory settings of the decode kernels on the current device. */
cudaError_t attention_decode_prepare(void);

/* attention_prefill.cu: whether the tensor-core prefill kernel takes this shape. */
bool		attention_prefill_fits(int D, int G);

/* attention_prefill.cu: launches the tensor-core prefill kernel. */
cudaError_t launch_attention_prefill(const StepView &sv, int n_items, int layer, int window,
									 const float *q, KvCacheView kv, const float *sinks, int Hq,
									 __nv_bfloat16 *att, cudaStream_t stream);

/* attention_general.cu: launches the CUDA-core kernel (any shape launch_attention accepts). */
cudaError_t launch_attention_general(const StepView &sv, int n_items, int layer, int window,
									 const float *q, KvCacheView kv, const float *sinks, int Hq,
									 __nv_bfloat16 *att, cudaStream_t stream);

#endif							/* GPTOSS_CUDA_ATTENTION_CUH */
