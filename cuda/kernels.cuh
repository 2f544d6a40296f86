/*
 * kernels.cuh: the device data structures of the CUDA backend and the
 * launcher of every kernel (one operation per .cu file).
 *
 * Shapes use the model's names: T tokens in the step (rows), H hidden size,
 * Hq/Hkv query/KV heads, D head dim, E experts, K experts per token,
 * I expert intermediate size, V vocabulary, L layers.  Activations are
 * row-major [T, ...].  Every launcher enqueues on the given stream and
 * returns the launch's cudaError_t; none synchronises.
 */
#ifndef GPTOSS_CUDA_KERNELS_CUH
#define GPTOSS_CUDA_KERNELS_CUH

#include "common.cuh"
#include "logprobs.h"
#include "moe_layout.cuh"

#define KV_PAGE 16				/* tokens per KV-cache page */
#define ATTN_TILE 32			/* keys per attention tile (two pages) */
#define ATTN_WARPS 8			/* warps per attention block */
#define ATTN_ROWS_PER_WARP 4	/* (token, head) rows per warp in the prefill kernel */
#define ATTN_MAX_HEAD_DIM 128
#define MAX_HIDDEN 3072			/* hidden sizes the row kernels hold in registers/shared memory */
#define ROUTER_MAX_EXPERTS 1024	/* experts per layer (router and moe_route keep per-expert arrays in shared memory) */
#define ROUTER_MAX_K 32			/* experts per token: the router's warp 0 picks them, one lane each */
#define ROUTER_CLUSTER_MAX_T 4	/* steps of at most this many rows route each row with a cluster of blocks */
#define ROUTER_ROWS_MIN_T 256	/* steps of at least this many rows route many rows a block */

/* Sampling settings of one logits row, as uploaded with the step. */
struct SampleRow
{
	uint64_t	seed;
	int64_t		pos;			/* absolute position of the token being produced */
	float		temperature;	/* 0 = greedy */
	float		top_p;			/* (0, 1] */
	int			top_k;			/* 0 = off */
	int			entry;			/* index into out_tokens; -1: nothing to sample */
};

/* A logits row whose log-probabilities are wanted, as uploaded with the step. */
struct LogprobRow
{
	int			entry;			/* step entry: index into out_tokens and the outputs */
	int			forced;			/* the produced token when >= 0, else out_tokens[entry] */
	int			top_k;			/* alternatives wanted, 0 .. GPTOSS_MAX_TOP_LOGPROBS */
	int			pad;
};

/*
 * One step's inputs on the device (pointers into the uploaded descriptor).
 * Padding rows (CUDA-graph buckets larger than the batch) have slot -1: they
 * write no KV, route to no expert and are never sampled.
 */
struct StepView
{
	const int32_t *tok_id;		/* [T] token ids (0 for padding) */
	const int32_t *tok_pos;		/* [T] absolute positions */
	const int32_t *tok_slot;	/* [T] KV slot, -1 for padding */
	const int32_t *item_tok0;	/* [NI] first token row of an attention item */
	const int32_t *item_ntok;	/* [NI] its token count (one entry, consecutive positions); 0 = padding */
	const int32_t *out_row;		/* [R] token row whose logits become logits row r */
	const SampleRow *samp;		/* [R] */
	const int32_t *n_upd;		/* [1] page-table updates carried by this step */
	const int32_t *upd_index;	/* [U] flat index into the page table */
	const int32_t *upd_page;	/* [U] page id to store there */
};

/* The paged KV cache (bf16), all layers. */
struct KvCacheView
{
	__nv_bfloat16 *k;			/* [L][n_pages][Hkv][KV_PAGE][D] keys after RoPE */
	__nv_bfloat16 *v;			/* [L][n_pages][Hkv][KV_PAGE][D] */
	const int32_t *page_table;	/* [max_seqs][max_pages] page of (slot, position / KV_PAGE) */
	int			n_pages;
	int			max_pages;		/* pages per slot = ceil(max_context / KV_PAGE) */
	int			n_kv_heads;		/* Hkv */
	int			head_dim;		/* D */
};

/* Cache index of (layer, page, kv head, offset in page, dim 0) in kv.k / kv.v. */
static __device__ __forceinline__ size_t
kv_index(const KvCacheView &kv, int layer, int page, int head, int off)
{
	return ((((size_t) layer * kv.n_pages + page) * kv.n_kv_heads + head) * KV_PAGE + off) *
		kv.head_dim;
}

/*
 * Bias + RoPE of the pair (c0, c0 + half) of a q/k/v product row (rope.h:
 * half-split pairs, cs = (C, S) of the position).  The one definition that
 * rope_kv_kernel and the fused decode attention share, so that both write
 * the same bits.  The roundings are pinned (no contraction choice left to
 * the compiler, which could differ between the two kernels): a*C - b*S is
 * fma(a, C, -(b*S)) and b*C + a*S is fma(b, C, a*S), what nvcc 13 made of
 * the plain expressions before, so results did not change.
 */
static __device__ __forceinline__ float2
rope_pair(const float *__restrict__ row, const float *__restrict__ bias, int c0, int half,
		  float2 cs)
{
	float		a = row[c0] + bias[c0];
	float		b = row[c0 + half] + bias[c0 + half];

	return make_float2(__fmaf_rn(a, cs.x, -__fmul_rn(b, cs.y)),
					   __fmaf_rn(b, cs.x, __fmul_rn(a, cs.y)));
}

/*
 * The inputs of bias + RoPE + KV append: what a decode attention launch
 * that does them itself (launch_attention_rope) reads instead of q.
 */
struct QkvRope
{
	const float *qkv;			/* [T][(Hq + 2*Hkv) * D] q/k/v product, before the biases */
	const float *bias;			/* [(Hq + 2*Hkv) * D] */
	const float2 *table;		/* [positions][D/2] (C, S) pairs of rope.h */
};

/* One MXFP4 expert matrix of a layer in the device layout of moe_layout.cuh. */
struct MoeMatrix
{
	const uint4 *blocks;		/* [E][rtiles][kc][32] 16-byte fp4 fragments per lane */
	const uint32_t *scales;		/* [E][rtiles][kc][8] multiplier exponent fields per row group */
	const float *tile_scale;	/* [E][rtiles] 2^G: the epilogue's factor (moe_layout.cuh, Scales) */
	const float *bias;			/* [E][rows] */
	int			rows;			/* 2I (gate_up, gate/up interleaved) or H (down) */
	int			cols;			/* H or I (input features) */
	int			rtiles;			/* 16-row tiles: ceil(I/8) for gate_up, ceil(H/16) for down */
	int			kc;				/* 64-column chunks: ceil(cols/64) */
};

/* Grouping of the step's (token, k) assignments by expert (device arrays). */
struct MoeRoute
{
	int32_t    *count;			/* [E] assignments per expert */
	int32_t    *offset;			/* [E] first row of the expert in the sorted order (multiple of 8) */
	int32_t    *active;			/* [E] experts with assignments, ascending; n_active valid */
	int32_t    *n_active;		/* [1] */
	int32_t    *assign_row;		/* [T*K] sorted row of assignment (t, k); -1 for padding tokens */
};

/* embed.cu: x = embedding[token]; xb = bf16(rmsnorm(x) * norm_w); applies page-table updates. */
cudaError_t launch_embed_norm(const StepView &sv, int T, const __nv_bfloat16 *embedding,
							  const float *norm_w, int H, float eps, float *x,
							  __nv_bfloat16 *xb, int32_t *page_table, cudaStream_t stream);

/*
 * rope_kv.cu: for the tokens of attention items [0, n_items) of sv (at most
 * item_tokens each): adds q/k/v biases, rotates q and k, writes q (fp32) and
 * k/v into the cache.
 */
cudaError_t launch_rope_kv(const StepView &sv, int n_items, int item_tokens, int layer,
						   const float *qkv, const float *qkv_bias, const float2 *rope, int Hq,
						   int Hkv, int D, float *q, KvCacheView kv, cudaStream_t stream);

/*
 * attention.cu: causal (optionally sliding) GQA attention with sinks over the
 * paged cache.  decode = 1 when every item is a single token; otherwise items
 * hold up to attention_tokens_per_item(Hq, Hkv, D, 0) tokens.
 */
cudaError_t launch_attention(const StepView &sv, int n_items, int decode, int layer, int window,
							 const float *q, KvCacheView kv, const float *sinks, int Hq,
							 __nv_bfloat16 *att, cudaStream_t stream);

/* attention.cu: whether decode items of this shape can take launch_attention_rope. */
bool		attention_fuses_rope(int Hq, int Hkv, int D);

/*
 * attention.cu: attention of decode items (one token each) that first does
 * their bias + RoPE + KV append itself (what launch_rope_kv and then
 * launch_attention with decode = 1 do, bit for bit); only for shapes where
 * attention_fuses_rope holds.
 */
cudaError_t launch_attention_rope(const StepView &sv, int n_items, int layer, int window,
								  QkvRope rope, KvCacheView kv, const float *sinks, int Hq,
								  __nv_bfloat16 *att, cudaStream_t stream);

/* attention.cu: tokens per attention item for the kernel that launch_attention picks. */
int			attention_tokens_per_item(int Hq, int Hkv, int D, int decode);

/* attention.cu: one-time per-device setup (shared-memory limit of the decode kernel). */
cudaError_t attention_prepare(void);

/* router.cu: one-time per-device setup (shared-memory limit of the many-rows form). */
cudaError_t router_prepare(void);

/*
 * router.cu: x += proj + bias; xn = rmsnorm(x) * norm_w (fp32); then fp32
 * router logits W xn + b, top-K (ties: lower expert) and softmax over the K.
 * A row's results are the same bits whichever of the three launch forms (a
 * cluster per row up to ROUTER_CLUSTER_MAX_T rows, one block per row, then
 * many rows a block for long steps) the step's T selects.
 */
cudaError_t launch_norm_router(const StepView &sv, int T, float *x, const float *proj,
							   const float *bias, const float *norm_w, float eps, float *xn,
							   const __nv_bfloat16 *w, const float *b, int H, int E, int K,
							   int32_t *topk_idx, float *topk_w, cudaStream_t stream);

/* moe_route.cu: counts, padded offsets, active list and sorted rows of the assignments. */
cudaError_t launch_moe_route(int T, int K, int E, const int32_t *topk_idx, MoeRoute route,
							 cudaStream_t stream);

/*
 * The MoE prefill kernel (moe_matmul.cu): wgmma where the device runs this
 * build's sm_90a code, else mma; GPTOSS_MOE_PREFILL=mma|wgmma overrides it,
 * read once at backend creation.  Both give the same result bits.
 */
enum MoePrefill
{
	MOE_PREFILL_MMA,			/* mma.sync, fragment-layout activations */
	MOE_PREFILL_WGMMA,			/* wgmma m64n128k16 (sm_90a), tile-layout activations */
	MOE_PREFILL_VARIANTS
};

/* moe_matmul.cu: the GPTOSS_MOE_PREFILL name of each variant. */
extern const char *const moe_prefill_names[MOE_PREFILL_VARIANTS];

/* moe_matmul.cu: sets *available to whether the current device runs the wgmma variant (sm_90a code). */
cudaError_t moe_wgmma_available(bool *available);

/* Whether a step's expert activations (x_frag, act_frag) are in the tile layout rather than the fragment layout. */
static inline bool
moe_tile_layout(int tiles_per_pass, MoePrefill prefill)
{
	return tiles_per_pass == 8 && prefill == MOE_PREFILL_WGMMA;
}

/* moe_route.cu: copies xn rows (fp16) into the fragment (or tile) layout at their sorted rows. */
cudaError_t launch_moe_gather(int T, int K, const float *xn, int H, int kc, MoeRoute route,
							  bool tile_layout, __half *x_frag, cudaStream_t stream);

/*
 * moe_matmul.cu: for every active expert, its rows of the MXFP4 matrix times
 * its tokens.  gate_up: bias, clamped SwiGLU, fp16 result in the fragment
 * layout of the down matrix (act_frag, act_kc chunks).  down: bias, fp32 rows
 * y [sorted row][H].  max_active bounds the grid (min(E, T*K)); tiles_per_pass
 * is 1, 2, 4 or 8 (8-token tiles computed per pass over the weights; 8 is the
 * prefill variant, `prefill` which of them); row_tiles (1, 2 or 4) is how
 * many 16-row weight tiles a decode block takes, 0 (at one tile per pass)
 * the streaming variant of one warp per row tile.  x_frag and act_frag are in
 * the tile layout where moe_tile_layout(tiles_per_pass, prefill) says so.
 * No choice changes any result bit.
 */
cudaError_t launch_moe_gate_up(int max_active, int tiles_per_pass, int row_tiles, MoePrefill prefill,
							   MoeMatrix w, MoeRoute route, const __half *x_frag, float limit,
							   __half *act_frag, int act_kc, cudaStream_t stream);
cudaError_t launch_moe_down(int max_active, int tiles_per_pass, int row_tiles, MoePrefill prefill,
							MoeMatrix w, MoeRoute route, const __half *act_frag, float *y,
							cudaStream_t stream);

/* moe_combine.cu: x += sum_k w_k * y[row(t,k)]; xb = bf16(rmsnorm(x) * norm_w). */
cudaError_t launch_moe_combine_norm(int T, int K, float *x, const float *y, MoeRoute route,
									const float *topk_w, const float *norm_w, int H, float eps,
									__nv_bfloat16 *xb, cudaStream_t stream);

/* gather_rows.cu: out[r] = xb[out_row[r]] for the logits rows. */
cudaError_t launch_gather_rows(const int32_t *rows, int R, const __nv_bfloat16 *xb, int H,
							   __nv_bfloat16 *out, cudaStream_t stream);

/* logit_mask.cu: -inf at the ids a masked entry's bit mask leaves out (mask_on [entries], masks [entries][words]). */
cudaError_t launch_logit_mask(const StepView &sv, int R, const int32_t *mask_on, const uint32_t *masks,
							  float *logits, int V, cudaStream_t stream);

/* sample.cu: per logits row, greedy or temperature/top-k/top-p sampling (logits overwritten). */
cudaError_t launch_sample(const StepView &sv, int R, float *logits, int V, int32_t *out_tokens,
						  cudaStream_t stream);

/*
 * logprobs.cu: for row r of logits [n, V], the log-softmax of the produced
 * token and the top_k alternatives (logprobs.h semantics) into
 * out[rows[r].entry]; reads out_tokens for sampled rows, so it runs after
 * the sampling, on rows the sampling did not overwrite.
 */
cudaError_t launch_logprobs(const LogprobRow *rows, int n, const float *logits, int V,
							const int32_t *out_tokens, gptoss_token_logprobs *out,
							cudaStream_t stream);

/* mxfp4_layout.cu: original [E][rows][cols/32][16] blocks + scales -> MoeMatrix layout. */
cudaError_t launch_mxfp4_relayout(const uint8_t *blocks, const uint8_t *scales, int E, int rows,
								  int cols, int gate_up, uint4 *out_blocks, uint32_t *out_scales,
								  float *out_tile_scale, cudaStream_t stream);

#endif							/* GPTOSS_CUDA_KERNELS_CUH */
