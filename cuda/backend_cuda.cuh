/*
 * backend_cuda.cuh: the state of the CUDA backend, shared by
 * backend_cuda.cu (creation, weight upload, KV sizing, info, release, free)
 * and step.cu (one step: descriptor, forward pass, sampling, CUDA graphs).
 */
#ifndef GPTOSS_CUDA_BACKEND_CUH
#define GPTOSS_CUDA_BACKEND_CUH

#include "dense.cuh"
#include "kernels.cuh"

#define MAX_GRAPH_BUCKETS 64
#define LOGPROB_GROUP_ROWS 16	/* logits rows copied aside per round when log-probabilities are wanted */

/* One layer's weights on the device. */
struct LayerWeights
{
	float	   *attn_norm;		/* [H] input_layernorm */
	__nv_bfloat16 *qkv_w;		/* [(Hq+2Hkv)*D, H] q rows, then k rows, then v rows */
	float	   *qkv_b;			/* [(Hq+2Hkv)*D] */
	__nv_bfloat16 *o_w;			/* [H, Hq*D] */
	float	   *o_b;			/* [H] */
	float	   *sinks;			/* [Hq] */
	float	   *mlp_norm;		/* [H] post_attention_layernorm */
	__nv_bfloat16 *router_w;	/* [E, H] */
	float	   *router_b;		/* [E] */
	MoeMatrix	gate_up;		/* 2I x H, gate/up regrouped per tile */
	MoeMatrix	down;			/* H x I */
};

/* Activation buffers, sized for t_max token rows. */
struct Activations
{
	float	   *x;				/* [t_max, H] residual stream */
	__nv_bfloat16 *xb;			/* [t_max, H] normed, bf16: q/k/v and lm_head input */
	float	   *qkv;			/* [t_max, (Hq+2Hkv)*D] product without bias */
	float	   *q;				/* [t_max, Hq*D] after bias and RoPE */
	__nv_bfloat16 *att;			/* [t_max, Hq*D] attention output */
	float	   *proj;			/* [t_max, H] o-projection without bias */
	float	   *xn;				/* [t_max, H] normed, fp32: router and expert input */
	int32_t    *topk_idx;		/* [t_max, K] */
	float	   *topk_w;			/* [t_max, K] */
	__half	   *x_frag;			/* [moe_rows/8][kc_h][32][16] expert input, fragment (or tile) layout */
	__half	   *act_frag;		/* [moe_rows/8][kc_i][32][16] SwiGLU output, fragment (or tile) layout */
	float	   *y;				/* [moe_rows, H] expert outputs with bias */
	MoeRoute	route;			/* count/offset/active [E], n_active [1], assign_row [t_max*K] */
	__nv_bfloat16 *lm_in;		/* [lr, H] rows whose logits are computed */
	float	   *logits;			/* [lr, V] */
	int32_t    *iota;			/* [t_max] 0, 1, 2, ... (row lists for logits chunks) */
	int32_t    *out_tokens;		/* [max_seqs] sampled token per step entry */
};

/* Byte offsets of the arrays of one step descriptor (see StepView). */
struct DescLayout
{
	size_t		samp;
	size_t		tok_id;
	size_t		tok_pos;
	size_t		tok_slot;
	size_t		item_tok0;
	size_t		item_ntok;
	size_t		out_row;
	size_t		n_upd;
	size_t		upd_index;
	size_t		upd_page;
	size_t		total;
};

struct CudaBackend
{
	gptoss_backend base;
	const gptoss_config *cfg;
	int			failed;			/* a CUDA error happened: only free() is allowed */
	int			device;
	cudaStream_t stream;
	cublasLtHandle_t cublaslt;
	void	   *dense_ws;		/* [DENSE_WORKSPACE_BYTES] cuBLASLt workspace */
	DenseProduct qkv_product;	/* [(Hq+2Hkv)*D, H] x t_max rows */
	DenseProduct o_product;		/* [H, Hq*D] x t_max rows */
	DenseProduct lm_product;	/* [V, H] x lr rows */

	/* weights */
	__nv_bfloat16 *embedding;	/* [V, H] */
	__nv_bfloat16 *lm_head;		/* [V, H] */
	float	   *final_norm;		/* [H] */
	LayerWeights *layers;		/* [L] host array of device pointers */
	float2	   *rope;			/* [max_context][D/2] (C, S) pairs */
	int			kc_h;			/* 64-column chunks of H */
	int			kc_i;			/* 64-column chunks of I */
	MoePrefill	moe_prefill;	/* the MoE prefill kernel (wgmma where it runs; GPTOSS_MOE_PREFILL) */

	/* KV cache */
	KvCacheView kv;
	int32_t    *page_table;		/* device [max_seqs][max_pages] */
	int		   *synced;			/* [max_seqs] leading entries of a slot's device page table that are current */
	int64_t		kv_capacity;	/* tokens promised to the scheduler */
	unsigned   *slot_stamp;		/* [max_seqs] duplicate-slot check */
	unsigned	stamp;

	/* activations and step descriptor */
	Activations act;
	int			t_max;			/* token rows per forward pass (multiple of DENSE_COLS) */
	int			moe_rows;		/* t_max*K + 8*E: expert-sorted rows incl. padding */
	int			lr;				/* logits rows per product (multiple of DENSE_COLS) */
	char	   *desc_host;		/* pinned [desc_bytes] */
	char	   *desc_dev;		/* [desc_bytes] */
	size_t		desc_bytes;
	int32_t    *tokens_host;	/* pinned [max_seqs] */

	/* log-probabilities: rows wanting them, a copy of their logits the sampling cannot touch, outputs */
	LogprobRow *lp_rows;		/* [max_seqs] */
	LogprobRow *lp_rows_host;	/* pinned [max_seqs] */
	float	   *lp_logits;		/* [LOGPROB_GROUP_ROWS, V] */
	gptoss_token_logprobs *lp_out;	/* [max_seqs] by step entry */
	gptoss_token_logprobs *lp_out_host; /* pinned [max_seqs] */

	/* token masks of constrained entries (logit_mask.cu) */
	int			mask_words;		/* words per mask */
	uint32_t   *masks_host;		/* pinned [max_seqs][mask_words] by step entry */
	uint32_t   *masks_dev;		/* [max_seqs][mask_words] */
	int32_t    *mask_on_host;	/* pinned [max_seqs] 1 where the entry's mask applies */
	int32_t    *mask_on_dev;	/* [max_seqs] */
	int			mask_on_dirty;	/* the device flags may hold a 1 */

	/* CUDA graphs of pure-decode steps, by batch bucket */
	int			n_buckets;
	int			buckets[MAX_GRAPH_BUCKETS];	/* ascending batch sizes */
	cudaGraphExec_t graphs[MAX_GRAPH_BUCKETS];

	/* memory accounting */
	int64_t		weight_bytes;
	int64_t		kv_bytes;
	int64_t		buffer_bytes;	/* activations, descriptor, tables, workspace */
	int64_t		peak_bytes;
	int64_t		total_mem;
	char		device_name[128];
	void	  **allocs;			/* every cudaMalloc, for free() */
	int			n_allocs;
	int			cap_allocs;
};

/* step.cu: the step entry point (backend.h semantics). */
int			cuda_step(gptoss_backend *base, const gptoss_step_seq *seqs, int n_seqs,
					  int32_t *next_tokens, float *logits, gptoss_error *err);

/* step.cu: descriptor layout for T tokens, NI attention items, R logits rows, U page updates. */
DescLayout	desc_layout(int T, int NI, int R, int U);

#endif							/* GPTOSS_CUDA_BACKEND_CUH */
