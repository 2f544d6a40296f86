/*
 * backend_cuda.cu: creation of the CUDA backend (device checks, memory
 * sizing, weight upload), KV-slot release, info and teardown.  The step
 * itself is in step.cu.
 *
 * Weights are uploaded once.  Experts stay MXFP4 (same bytes, re-laid out
 * on the GPU for the tensor-core kernels, see moe_layout.cuh); the dense
 * matrices stay bf16 as stored (q, k and v concatenated into one matrix so
 * one product serves all three); norms, biases and sinks become fp32.
 *
 * Memory.  Everything is allocated here, so the peak is known at creation:
 * weights + activation buffers (t_max token rows) + logits buffer + cuBLAS
 * workspace + KV cache.  The KV cache is paged (KV_PAGE tokens per page,
 * all layers of a position in the same page slot; page ids, slot tables and
 * the prefix cache in base.kv_pages, kv_pages.h) and its size comes from
 * opts.kv_cache_tokens, or when that is 0 from max_seqs * max_context capped
 * by what gpu_memory_fraction of the device leaves.  max_seqs spare pages
 * cover partly filled last pages, so the token capacity reported to the
 * scheduler can always be met.  When the weights or the requested cache do
 * not fit, creation fails with the byte counts needed and available.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.cuh"
#include "dense.cuh"

extern "C" {
#include "rope.h"
}

/*
 * Prompt rows a forward pass holds beside one decode row per slot: a step of
 * the engine at prefill_chunk 2048 runs as one pass (longer steps are split,
 * and a split-off remainder of decode rows costs a whole decode step).
 */
#define STEP_PROMPT_ROWS 2048
#define GIB (1024.0 * 1024.0 * 1024.0)
/* Device memory left out of the budget (of what is free at creation), for allocations the sizing does not count. */
#define FREE_MEM_RESERVE_BYTES (256ll << 20)

/* Allocates device memory, remembers it for free() and counts it in *counter. */
static int
dev_alloc(CudaBackend *be, void **ptr, size_t bytes, int64_t *counter, gptoss_error *err,
		  const char *what)
{
	cudaError_t rc;

	*ptr = NULL;
	if (bytes == 0)
		bytes = 16;
	if (be->n_allocs == be->cap_allocs)
	{
		int			cap = be->cap_allocs ? 2 * be->cap_allocs : 256;
		void	  **grown = (void **) realloc(be->allocs, cap * sizeof(void *));

		if (!grown)
			return gptoss_errorf(err, "cuda backend: out of host memory");
		be->allocs = grown;
		be->cap_allocs = cap;
	}
	rc = cudaMalloc(ptr, bytes);
	if (rc != cudaSuccess)
	{
		cudaGetLastError();
		return gptoss_errorf(err, "CUDA error in cudaMalloc(%s, %.1f MiB): %s", what,
							 bytes / 1048576.0, cudaGetErrorString(rc));
	}
	be->allocs[be->n_allocs++] = *ptr;
	*counter += (int64_t) bytes;
	return 0;
}

/* Uploads n bf16 values from the checkpoint. */
static int
upload_bf16(CudaBackend *be, __nv_bfloat16 **dst, const gptoss_bf16 *src, size_t n,
			gptoss_error *err, const char *what)
{
	if (dev_alloc(be, (void **) dst, n * 2, &be->weight_bytes, err, what) < 0)
		return -1;
	CUDA_TRY(cudaMemcpy(*dst, src, n * 2, cudaMemcpyHostToDevice), err, what);
	return 0;
}

/* Uploads n bf16 values widened to fp32 (tmp holds n floats). */
static int
upload_f32(CudaBackend *be, float **dst, const gptoss_bf16 *src, size_t n, float *tmp,
		   gptoss_error *err, const char *what)
{
	for (size_t i = 0; i < n; i++)
		tmp[i] = gptoss_bf16_to_f32(src[i]);
	if (dev_alloc(be, (void **) dst, n * 4, &be->weight_bytes, err, what) < 0)
		return -1;
	CUDA_TRY(cudaMemcpy(*dst, tmp, n * 4, cudaMemcpyHostToDevice), err, what);
	return 0;
}

/* Bytes of one expert matrix in the device layout (blocks + scales + fp32 bias). */
static size_t
moe_matrix_bytes(int E, int rows, int cols, int gate_up)
{
	size_t		rtiles = moe_row_tiles(rows, gate_up);
	size_t		kc = div_up(cols, 64);

	return (size_t) E * rtiles * kc * (MOE_PIECE_BLOCK_BYTES + MOE_PIECE_SCALE_BYTES) +
		(size_t) E * rtiles * sizeof(float) + (size_t) E * rows * sizeof(float);
}

/* Uploads one expert matrix: raw bytes to staging, re-layout kernel into place. */
static int
upload_moe(CudaBackend *be, MoeMatrix *m, const uint8_t *blocks, const uint8_t *scales,
		   const gptoss_bf16 *bias, int rows, int cols, int gate_up, uint8_t *staging,
		   float *tmp, gptoss_error *err)
{
	int			E = be->cfg->num_experts;
	size_t		nb = (size_t) cols / 32;
	size_t		block_bytes = (size_t) E * rows * nb * 16;
	size_t		scale_bytes = (size_t) E * rows * nb;
	void	   *p;

	m->rows = rows;
	m->cols = cols;
	m->rtiles = moe_row_tiles(rows, gate_up);
	m->kc = div_up(cols, 64);
	if (dev_alloc(be, &p, (size_t) E * m->rtiles * m->kc * MOE_PIECE_BLOCK_BYTES, &be->weight_bytes,
				  err, "expert blocks") < 0)
		return -1;
	m->blocks = (const uint4 *) p;
	if (dev_alloc(be, &p, (size_t) E * m->rtiles * m->kc * MOE_PIECE_SCALE_BYTES, &be->weight_bytes,
				  err, "expert scales") < 0)
		return -1;
	m->scales = (const uint32_t *) p;
	if (dev_alloc(be, &p, (size_t) E * m->rtiles * sizeof(float), &be->weight_bytes, err,
				  "expert tile scales") < 0)
		return -1;
	m->tile_scale = (const float *) p;
	CUDA_TRY(cudaMemcpyAsync(staging, blocks, block_bytes, cudaMemcpyHostToDevice, be->stream),
			 err, "expert upload");
	CUDA_TRY(cudaMemcpyAsync(staging + block_bytes, scales, scale_bytes, cudaMemcpyHostToDevice,
							 be->stream), err, "expert upload");
	CUDA_TRY(launch_mxfp4_relayout(staging, staging + block_bytes, E, rows, cols, gate_up,
								   (uint4 *) m->blocks, (uint32_t *) m->scales,
								   (float *) m->tile_scale, be->stream),
			 err, "mxfp4_relayout");
	/* the staging buffer is reused by the next matrix */
	CUDA_TRY(cudaStreamSynchronize(be->stream), err, "expert upload");
	return upload_f32(be, (float **) &m->bias, bias, (size_t) E * rows, tmp, err, "expert bias");
}

/* Uploads every weight, reporting progress per layer. */
static int
upload_weights(CudaBackend *be, gptoss_progress_fn progress, void *progress_arg,
			   gptoss_error *err)
{
	const gptoss_model *model = be->base.model;
	const gptoss_config *c = be->cfg;
	int			H = c->hidden_size;
	int			I = c->intermediate_size;
	int			E = c->num_experts;
	int			D = c->head_dim;
	int			nq = c->num_heads * D;
	int			nkv = c->num_kv_heads * D;
	size_t		tmp_n = (size_t) E * 2 * I;
	size_t		staging_bytes = (size_t) E * 2 * I * (H / 32) * 17;
	float	   *tmp;
	uint8_t    *staging = NULL;
	int			rc = -1;

	if ((size_t) E * H * (I / 32) * 17 > staging_bytes)
		staging_bytes = (size_t) E * H * (I / 32) * 17;
	if ((size_t) E * H > tmp_n)
		tmp_n = (size_t) E * H;
	if ((size_t) nq + 2 * nkv > tmp_n)
		tmp_n = (size_t) nq + 2 * nkv;
	if ((size_t) H > tmp_n)
		tmp_n = H;
	tmp = (float *) malloc(tmp_n * sizeof(float));
	if (!tmp)
		return gptoss_errorf(err, "cuda backend: out of host memory");
	if (cudaMalloc((void **) &staging, staging_bytes) != cudaSuccess)
	{
		cudaGetLastError();
		gptoss_errorf(err, "CUDA error in cudaMalloc(staging, %.1f MiB): out of memory",
					  staging_bytes / 1048576.0);
		goto done;
	}

	if (progress)
		progress(progress_arg, 0.0, "uploading weights");
	if (upload_bf16(be, &be->embedding, model->embedding, (size_t) c->vocab_size * H, err,
					"embedding") < 0 ||
		upload_bf16(be, &be->lm_head, model->lm_head, (size_t) c->vocab_size * H, err,
					"lm_head") < 0 ||
		upload_f32(be, &be->final_norm, model->final_norm, H, tmp, err, "final norm") < 0)
		goto done;

	for (int l = 0; l < c->num_layers; l++)
	{
		const gptoss_layer_weights *w = &model->layers[l];
		LayerWeights *d = &be->layers[l];
		size_t		qkv_rows = (size_t) nq + 2 * nkv;

		if (dev_alloc(be, (void **) &d->qkv_w, qkv_rows * H * 2, &be->weight_bytes, err, "qkv") < 0)
			goto done;
		if (cudaMemcpy(d->qkv_w, w->q_weight, (size_t) nq * H * 2, cudaMemcpyHostToDevice) != cudaSuccess ||
			cudaMemcpy(d->qkv_w + (size_t) nq * H, w->k_weight, (size_t) nkv * H * 2,
					   cudaMemcpyHostToDevice) != cudaSuccess ||
			cudaMemcpy(d->qkv_w + (size_t) (nq + nkv) * H, w->v_weight, (size_t) nkv * H * 2,
					   cudaMemcpyHostToDevice) != cudaSuccess)
		{
			gptoss_errorf(err, "CUDA error in qkv upload: %s", cudaGetErrorString(cudaGetLastError()));
			goto done;
		}
		for (int i = 0; i < nq; i++)
			tmp[i] = gptoss_bf16_to_f32(w->q_bias[i]);
		for (int i = 0; i < nkv; i++)
		{
			tmp[nq + i] = gptoss_bf16_to_f32(w->k_bias[i]);
			tmp[nq + nkv + i] = gptoss_bf16_to_f32(w->v_bias[i]);
		}
		if (dev_alloc(be, (void **) &d->qkv_b, qkv_rows * 4, &be->weight_bytes, err, "qkv bias") < 0)
			goto done;
		if (cudaMemcpy(d->qkv_b, tmp, qkv_rows * 4, cudaMemcpyHostToDevice) != cudaSuccess)
		{
			gptoss_errorf(err, "CUDA error in qkv bias upload: %s", cudaGetErrorString(cudaGetLastError()));
			goto done;
		}
		if (upload_f32(be, &d->attn_norm, w->attn_norm, H, tmp, err, "attn norm") < 0 ||
			upload_bf16(be, &d->o_w, w->o_weight, (size_t) H * nq, err, "o_proj") < 0 ||
			upload_f32(be, &d->o_b, w->o_bias, H, tmp, err, "o bias") < 0 ||
			upload_f32(be, &d->sinks, w->sinks, c->num_heads, tmp, err, "sinks") < 0 ||
			upload_f32(be, &d->mlp_norm, w->mlp_norm, H, tmp, err, "mlp norm") < 0 ||
			upload_bf16(be, &d->router_w, w->router_weight, (size_t) E * H, err, "router") < 0 ||
			upload_f32(be, &d->router_b, w->router_bias, E, tmp, err, "router bias") < 0 ||
			upload_moe(be, &d->gate_up, w->gate_up_blocks, w->gate_up_scales, w->gate_up_bias,
					   2 * I, H, 1, staging, tmp, err) < 0 ||
			upload_moe(be, &d->down, w->down_blocks, w->down_scales, w->down_bias, H, I, 0,
					   staging, tmp, err) < 0)
			goto done;
		if (progress)
			progress(progress_arg, (double) (l + 1) / c->num_layers, "uploading weights");
	}
	rc = 0;
done:
	if (staging)
		cudaFree(staging);
	free(tmp);
	return rc;
}

/* Activation, logits, descriptor and table bytes for the chosen t_max and lr. */
static size_t
buffer_bytes_needed(const gptoss_config *c, const gptoss_backend_opts *o, int t_max, int lr)
{
	size_t		H = c->hidden_size;
	size_t		nq = (size_t) c->num_heads * c->head_dim;
	size_t		nqkv = nq + 2 * (size_t) c->num_kv_heads * c->head_dim;
	size_t		K = c->experts_per_token;
	size_t		moe_rows = (size_t) t_max * K + 8 * (size_t) c->num_experts;
	size_t		per_row = H * 4 + H * 2 + nqkv * 4 + nq * 4 + nq * 2 + H * 4 + H * 4 + K * 8 + 4;
	size_t		bytes = (size_t) t_max * per_row;
	DescLayout	dl = desc_layout(t_max, t_max, o->max_seqs, t_max + o->max_seqs);

	bytes += moe_rows * ((size_t) div_up(c->hidden_size, 64) * 64 * 2 +
						 (size_t) div_up(c->intermediate_size, 64) * 64 * 2 + H * 4);
	bytes += (size_t) lr * (H * 2 + (size_t) c->vocab_size * 4);
	bytes += (size_t) o->max_context * c->head_dim / 2 * 8;	/* rope table */
	bytes += (size_t) o->max_seqs * div_up(o->max_context, KV_PAGE) * 4;	/* page table */
	bytes += (size_t) LOGPROB_GROUP_ROWS * c->vocab_size * 4 +
		(size_t) o->max_seqs * (sizeof(LogprobRow) + sizeof(gptoss_token_logprobs));	/* logprobs */
	bytes += dl.total + DENSE_WORKSPACE_BYTES + (size_t) c->num_experts * 16 + 64 * 1024;
	return bytes;
}

/* Bytes of the weights on the device (computed from the shapes, before uploading). */
static size_t
weight_bytes_needed(const gptoss_config *c)
{
	size_t		H = c->hidden_size;
	size_t		nq = (size_t) c->num_heads * c->head_dim;
	size_t		nkv = (size_t) c->num_kv_heads * c->head_dim;
	size_t		per_layer = (nq + 2 * nkv) * H * 2 + (nq + 2 * nkv) * 4 + H * nq * 2 + H * 4 +
		c->num_heads * 4 + 2 * H * 4 + (size_t) c->num_experts * H * 2 + c->num_experts * 4 +
		moe_matrix_bytes(c->num_experts, 2 * c->intermediate_size, c->hidden_size, 1) +
		moe_matrix_bytes(c->num_experts, c->hidden_size, c->intermediate_size, 0);

	return 2 * (size_t) c->vocab_size * H * 2 + H * 4 + per_layer * c->num_layers;
}

/* Chooses the KV capacity (tokens and pages) that kv_budget bytes allow; nothing is allocated. */
static int
plan_kv(CudaBackend *be, int64_t kv_budget, gptoss_error *err)
{
	const gptoss_config *c = be->cfg;
	const gptoss_backend_opts *o = &be->base.opts;
	int64_t		page_bytes = (int64_t) c->num_layers * 2 * c->num_kv_heads * KV_PAGE * c->head_dim * 2;
	int64_t		n_pages;
	int64_t		cap;

	if (o->kv_cache_tokens > 0)
	{
		cap = o->kv_cache_tokens;
		n_pages = (cap + KV_PAGE - 1) / KV_PAGE + o->max_seqs;
		if (n_pages * page_bytes > kv_budget)
			return gptoss_errorf(err,
								 "cuda backend: a KV cache of %lld tokens needs %.2f GiB of device memory "
								 "but only %.2f GiB are left after weights and buffers "
								 "(raise gpu_memory_fraction or lower kv_cache_tokens)",
								 (long long) cap, n_pages * page_bytes / GIB,
								 kv_budget > 0 ? kv_budget / GIB : 0.0);
	}
	else
	{
		int64_t		fit_pages = kv_budget > 0 ? kv_budget / page_bytes : 0;
		int64_t		fit_tokens = (fit_pages - o->max_seqs) * KV_PAGE;

		cap = (int64_t) o->max_seqs * o->max_context;
		if (fit_tokens < o->max_context)
			return gptoss_errorf(err,
								 "cuda backend: a KV cache for one sequence of %d tokens needs %.2f GiB of "
								 "device memory but only %.2f GiB are left after weights and buffers "
								 "(raise gpu_memory_fraction or lower max_context)",
								 o->max_context,
								 (div_up(o->max_context, KV_PAGE) + o->max_seqs) * page_bytes / GIB,
								 kv_budget > 0 ? kv_budget / GIB : 0.0);
		if (cap > fit_tokens)
			cap = fit_tokens;
		n_pages = (cap + KV_PAGE - 1) / KV_PAGE + o->max_seqs;
	}
	if (n_pages > INT32_MAX / 2)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "cuda backend: KV cache of %lld pages is too large",
								  (long long) n_pages);
	be->kv_capacity = cap;
	be->base.opts.kv_cache_tokens = cap;
	be->kv.n_pages = (int) n_pages;
	return 0;
}

/* Allocates the KV cache planned by plan_kv and the activation buffers. */
static int
build_buffers(CudaBackend *be, gptoss_error *err)
{
	const gptoss_config *c = be->cfg;
	const gptoss_backend_opts *o = &be->base.opts;
	int			H = c->hidden_size;
	int			K = c->experts_per_token;
	int			E = c->num_experts;
	int			nq = c->num_heads * c->head_dim;
	int			nqkv = nq + 2 * c->num_kv_heads * c->head_dim;
	int64_t		page_bytes = (int64_t) c->num_layers * 2 * c->num_kv_heads * KV_PAGE * c->head_dim * 2;
	int64_t		n_pages = be->kv.n_pages;
	int32_t    *iota;
	Activations *a = &be->act;
	void	   *p;

	be->kv.max_pages = div_up(o->max_context, KV_PAGE);
	be->kv.n_kv_heads = c->num_kv_heads;
	be->kv.head_dim = c->head_dim;
	if (dev_alloc(be, &p, (size_t) n_pages * page_bytes / 2, &be->kv_bytes, err, "KV cache K") < 0)
		return -1;
	be->kv.k = (__nv_bfloat16 *) p;
	if (dev_alloc(be, &p, (size_t) n_pages * page_bytes / 2, &be->kv_bytes, err, "KV cache V") < 0)
		return -1;
	be->kv.v = (__nv_bfloat16 *) p;
	if (dev_alloc(be, (void **) &be->page_table, (size_t) o->max_seqs * be->kv.max_pages * 4,
				  &be->buffer_bytes, err, "page table") < 0)
		return -1;
	CUDA_TRY(cudaMemset(be->page_table, 0, (size_t) o->max_seqs * be->kv.max_pages * 4), err, "page table");
	be->kv.page_table = be->page_table;

	be->base.kv_pages = gptoss_kv_pages_create((int) n_pages, KV_PAGE, o->max_seqs, o->max_context, err);
	if (!be->base.kv_pages)
		return -1;

	/* activations (zeroed: padding rows and columns must hold finite values) */
#define ALLOC_ACT(field, bytes) \
	do { \
		if (dev_alloc(be, (void **) &a->field, (bytes), &be->buffer_bytes, err, #field) < 0) \
			return -1; \
		CUDA_TRY(cudaMemset(a->field, 0, (bytes)), err, #field); \
	} while (0)
	ALLOC_ACT(x, (size_t) be->t_max * H * 4);
	ALLOC_ACT(xb, (size_t) be->t_max * H * 2);
	ALLOC_ACT(qkv, (size_t) be->t_max * nqkv * 4);
	ALLOC_ACT(q, (size_t) be->t_max * nq * 4);
	ALLOC_ACT(att, (size_t) be->t_max * nq * 2);
	ALLOC_ACT(proj, (size_t) be->t_max * H * 4);
	ALLOC_ACT(xn, (size_t) be->t_max * H * 4);
	ALLOC_ACT(topk_idx, (size_t) be->t_max * K * 4);
	ALLOC_ACT(topk_w, (size_t) be->t_max * K * 4);
	ALLOC_ACT(x_frag, (size_t) be->moe_rows * be->kc_h * 64 * 2);
	ALLOC_ACT(act_frag, (size_t) be->moe_rows * be->kc_i * 64 * 2);
	ALLOC_ACT(y, (size_t) be->moe_rows * H * 4);
	ALLOC_ACT(route.count, (size_t) E * 4);
	ALLOC_ACT(route.offset, (size_t) E * 4);
	ALLOC_ACT(route.active, (size_t) E * 4);
	ALLOC_ACT(route.n_active, 4);
	ALLOC_ACT(route.assign_row, (size_t) be->t_max * K * 4);
	ALLOC_ACT(lm_in, (size_t) be->lr * H * 2);
	ALLOC_ACT(logits, (size_t) be->lr * c->vocab_size * 4);
	ALLOC_ACT(iota, (size_t) be->t_max * 4);
	ALLOC_ACT(out_tokens, (size_t) o->max_seqs * 4);
#undef ALLOC_ACT
	iota = (int32_t *) malloc((size_t) be->t_max * 4);
	if (!iota)
		return gptoss_errorf(err, "cuda backend: out of host memory");
	for (int i = 0; i < be->t_max; i++)
		iota[i] = i;
	if (cudaMemcpy(a->iota, iota, (size_t) be->t_max * 4, cudaMemcpyHostToDevice) != cudaSuccess)
	{
		free(iota);
		return gptoss_errorf(err, "CUDA error in iota upload: %s", cudaGetErrorString(cudaGetLastError()));
	}
	free(iota);

	/* step descriptor: device copy and pinned host mirror */
	be->desc_bytes = desc_layout(be->t_max, be->t_max, o->max_seqs, be->t_max + o->max_seqs).total;
	if (dev_alloc(be, (void **) &be->desc_dev, be->desc_bytes, &be->buffer_bytes, err, "descriptor") < 0)
		return -1;
	CUDA_TRY(cudaMallocHost((void **) &be->desc_host, be->desc_bytes), err, "cudaMallocHost");
	CUDA_TRY(cudaMallocHost((void **) &be->tokens_host, (size_t) o->max_seqs * 4), err, "cudaMallocHost");

	/* token masks of constrained requests: zeroed flags mean no entry is masked */
	be->mask_words = (c->vocab_size + 31) / 32;
	if (dev_alloc(be, (void **) &be->masks_dev, (size_t) o->max_seqs * be->mask_words * 4,
				  &be->buffer_bytes, err, "token masks") < 0 ||
		dev_alloc(be, (void **) &be->mask_on_dev, (size_t) o->max_seqs * 4, &be->buffer_bytes, err,
				  "token mask flags") < 0)
		return -1;
	CUDA_TRY(cudaMemset(be->mask_on_dev, 0, (size_t) o->max_seqs * 4), err, "token mask flags");
	CUDA_TRY(cudaMallocHost((void **) &be->masks_host, (size_t) o->max_seqs * be->mask_words * 4), err,
			 "cudaMallocHost");
	CUDA_TRY(cudaMallocHost((void **) &be->mask_on_host, (size_t) o->max_seqs * 4), err, "cudaMallocHost");

	if (dev_alloc(be, (void **) &be->lp_rows, (size_t) o->max_seqs * sizeof(LogprobRow), &be->buffer_bytes,
				  err, "logprob rows") < 0 ||
		dev_alloc(be, (void **) &be->lp_logits, (size_t) LOGPROB_GROUP_ROWS * c->vocab_size * 4,
				  &be->buffer_bytes, err, "logprob logits") < 0 ||
		dev_alloc(be, (void **) &be->lp_out, (size_t) o->max_seqs * sizeof(gptoss_token_logprobs),
				  &be->buffer_bytes, err, "logprob outputs") < 0)
		return -1;
	CUDA_TRY(cudaMallocHost((void **) &be->lp_rows_host, (size_t) o->max_seqs * sizeof(LogprobRow)), err,
			 "cudaMallocHost");
	CUDA_TRY(cudaMallocHost((void **) &be->lp_out_host, (size_t) o->max_seqs * sizeof(gptoss_token_logprobs)),
			 err, "cudaMallocHost");
	return 0;
}

/* Builds the host RoPE table for positions 0 .. max_context-1 and uploads it. */
static int
build_rope(CudaBackend *be, gptoss_error *err)
{
	gptoss_rope rope;
	size_t		n = (size_t) be->base.opts.max_context * be->cfg->head_dim / 2;
	float	   *table;
	cudaError_t rc;

	if (gptoss_rope_init(&rope, be->cfg, err) < 0)
		return -1;
	if (dev_alloc(be, (void **) &be->rope, n * 8, &be->buffer_bytes, err, "rope table") < 0)
		return -1;
	table = (float *) malloc(n * 2 * sizeof(float));
	if (!table)
		return gptoss_errorf(err, "cuda backend: out of host memory");
	gptoss_rope_table(&rope, be->base.opts.max_context, table);
	rc = cudaMemcpy(be->rope, table, n * 8, cudaMemcpyHostToDevice);
	free(table);
	CUDA_TRY(rc, err, "rope table upload");
	return 0;
}

/*
 * The MoE prefill kernel: wgmma where the device runs this build's sm_90a
 * code (H100, H200), else mma.  GPTOSS_MOE_PREFILL=mma|wgmma overrides
 * the choice, so that one build can time both (they give the same bits);
 * wgmma where it cannot run is an error.
 */
static int
pick_moe_prefill(CudaBackend *be, gptoss_error *err)
{
	const char *name = getenv("GPTOSS_MOE_PREFILL");
	bool		wgmma;
	cudaError_t rc = moe_wgmma_available(&wgmma);

	if (rc != cudaSuccess)
	{
		cudaGetLastError();
		return gptoss_errorf(err, "CUDA error in the MoE prefill kernel probe: %s", cudaGetErrorString(rc));
	}
	be->moe_prefill = wgmma ? MOE_PREFILL_WGMMA : MOE_PREFILL_MMA;
	if (!name || !*name)
		return 0;
	for (int v = 0; v < MOE_PREFILL_VARIANTS; v++)
		if (strcmp(name, moe_prefill_names[v]) == 0)
		{
			if (v == MOE_PREFILL_WGMMA && !wgmma)
				return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
										  "cuda backend: GPTOSS_MOE_PREFILL=wgmma, but this build has no sm_90a code for this device");
			be->moe_prefill = (MoePrefill) v;
			return 0;
		}
	return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "cuda backend: GPTOSS_MOE_PREFILL=%s is neither mma nor wgmma",
							  name);
}

/* Decode batch buckets captured as CUDA graphs: 1, 2, 4, 8, 16, 24, ... up to max_seqs. */
static void
build_buckets(CudaBackend *be)
{
	int			max_seqs = be->base.opts.max_seqs;
	int			b = 1;

	be->n_buckets = 0;
	while (be->n_buckets < MAX_GRAPH_BUCKETS - 1 && b < max_seqs)
	{
		be->buckets[be->n_buckets++] = b;
		b = b < 8 ? 2 * b : b < 64 ? b + 8 : b < 128 ? b + 16 : b < 256 ? b + 32 : b + 64;
	}
	be->buckets[be->n_buckets++] = max_seqs;
}

/* Forgets slot's cached tokens; its pages go back to the pool (registered ones stay cached). */
static void
cuda_release(gptoss_backend *base, int slot)
{
	CudaBackend *be = (CudaBackend *) base;

	if (slot < 0 || slot >= base->opts.max_seqs || !base->kv_pages)
		return;
	gptoss_kv_pages_release(base->kv_pages, slot);
	be->synced[slot] = 0;
}

/* Device, memory and cache figures. */
static void
cuda_get_info(gptoss_backend *base, gptoss_backend_info *info)
{
	CudaBackend *be = (CudaBackend *) base;
	int64_t		used = be->weight_bytes + be->kv_bytes + be->buffer_bytes;

	memset(info, 0, sizeof(*info));
	snprintf(info->device_name, sizeof(info->device_name), "%s", be->device_name);
	info->weight_bytes = be->weight_bytes;
	info->kv_cache_bytes = be->kv_bytes;
	info->memory_used_bytes = used;
	info->memory_total_bytes = be->total_mem;
	info->kv_cache_tokens = be->kv_capacity;
	info->kv_cache_used_tokens = 0;
	if (base->kv_pages)
		for (int s = 0; s < base->opts.max_seqs; s++)
			info->kv_cache_used_tokens += gptoss_kv_pages_len(base->kv_pages, s);
	info->peak_memory_bytes = be->peak_bytes > used ? be->peak_bytes : used;
}

/* Frees graphs, handles, device and host memory. */
static void
cuda_free(gptoss_backend *base)
{
	CudaBackend *be = (CudaBackend *) base;

	if (!be)
		return;
	for (int i = 0; i < be->n_buckets; i++)
		if (be->graphs[i])
			cudaGraphExecDestroy(be->graphs[i]);
	if (be->cublaslt)
		cublasLtDestroy(be->cublaslt);
	if (be->stream)
		cudaStreamDestroy(be->stream);
	for (int i = 0; i < be->n_allocs; i++)
		cudaFree(be->allocs[i]);
	if (be->desc_host)
		cudaFreeHost(be->desc_host);
	if (be->tokens_host)
		cudaFreeHost(be->tokens_host);
	if (be->lp_rows_host)
		cudaFreeHost(be->lp_rows_host);
	if (be->lp_out_host)
		cudaFreeHost(be->lp_out_host);
	if (be->masks_host)
		cudaFreeHost(be->masks_host);
	if (be->mask_on_host)
		cudaFreeHost(be->mask_on_host);
	cudaGetLastError();			/* nothing above may leave an error behind */
	gptoss_kv_pages_free(base->kv_pages);
	free(be->synced);
	free(be->slot_stamp);
	free(be->layers);
	free(be->allocs);
	free(be);
}

/* Checks the shapes and options this backend supports. */
static int
check_model(const gptoss_model *model, const gptoss_backend_opts *opts, gptoss_error *err)
{
	const gptoss_config *c;

	if (gptoss_backend_check_model(model, opts, "cuda backend", err) < 0)
		return -1;
	c = &model->config;
	if (c->hidden_size > MAX_HIDDEN)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "cuda backend: hidden_size %d exceeds %d",
								  c->hidden_size, MAX_HIDDEN);
	if (c->num_heads / c->num_kv_heads > ATTN_ROWS_PER_WARP * ATTN_WARPS)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "cuda backend: %d query heads per kv head (at most %d)",
								  c->num_heads / c->num_kv_heads, ATTN_ROWS_PER_WARP * ATTN_WARPS);
	if (c->head_dim <= 0 || c->head_dim % 8 != 0 || c->head_dim > ATTN_MAX_HEAD_DIM)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "cuda backend: head_dim %d must be a multiple of 8 and at most %d",
								  c->head_dim, ATTN_MAX_HEAD_DIM);
	if (c->num_experts > ROUTER_MAX_EXPERTS || c->experts_per_token > ROUTER_MAX_K)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "cuda backend: unsupported expert counts (%d experts, %d per token; at most %d and %d)",
								  c->num_experts, c->experts_per_token, ROUTER_MAX_EXPERTS,
								  ROUTER_MAX_K);
	if (opts->max_seqs > 65536)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "cuda backend: max_seqs %d is too large",
								  opts->max_seqs);
	return 0;
}

/* Returns 1 when a CUDA device can be used (0 without a driver or device). */
int
gptoss_cuda_available(void)
{
	int			n = 0;

	if (cudaGetDeviceCount(&n) != cudaSuccess)
	{
		cudaGetLastError();
		return 0;
	}
	return n > 0;
}

/* Creates the CUDA backend: checks, sizing, upload, buffers. */
gptoss_backend *
gptoss_backend_cuda_create(const gptoss_model *model, const gptoss_backend_opts *opts,
						   gptoss_progress_fn progress, void *progress_arg, gptoss_error *err)
{
	CudaBackend *be;
	const gptoss_config *c;
	cudaDeviceProp prop;
	size_t		free_mem = 0;
	size_t		total_mem = 0;
	double		fraction;
	int			n_dev = 0;
	int64_t		budget;
	int64_t		need_weights;
	int64_t		need_buffers;
	cublasStatus_t st;

	if (check_model(model, opts, err) < 0)
		return NULL;
	c = &model->config;
	if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev <= 0)
	{
		cudaError_t rc = cudaGetLastError();

		gptoss_errorf(err, "CUDA error in cudaGetDeviceCount: %s",
					  n_dev <= 0 && rc == cudaSuccess ? "no CUDA device" : cudaGetErrorString(rc));
		return NULL;
	}
	if (opts->device_index < 0 || opts->device_index >= n_dev)
	{
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "cuda backend: device %d does not exist (%d devices)",
						   opts->device_index, n_dev);
		return NULL;
	}
	be = (CudaBackend *) calloc(1, sizeof(CudaBackend));
	if (!be)
	{
		gptoss_errorf(err, "cuda backend: out of host memory");
		return NULL;
	}
	be->base.name = "cuda";
	be->base.model = model;
	be->base.opts = *opts;
	be->base.step = cuda_step;
	be->base.release = cuda_release;
	be->base.get_info = cuda_get_info;
	be->base.free = cuda_free;
	be->cfg = c;
	be->device = opts->device_index;
	be->layers = (LayerWeights *) calloc(c->num_layers, sizeof(LayerWeights));
	be->synced = (int *) calloc(opts->max_seqs, sizeof(int));
	be->slot_stamp = (unsigned *) calloc(opts->max_seqs, sizeof(unsigned));
	if (!be->layers || !be->synced || !be->slot_stamp)
	{
		gptoss_errorf(err, "cuda backend: out of host memory");
		goto fail;
	}

#define CREATE_TRY(call, what) \
	do { \
		cudaError_t rc_ = (call); \
		if (rc_ != cudaSuccess) \
		{ \
			cudaGetLastError(); \
			gptoss_errorf(err, "CUDA error in %s: %s", (what), cudaGetErrorString(rc_)); \
			goto fail; \
		} \
	} while (0)
	CREATE_TRY(cudaSetDevice(be->device), "cudaSetDevice");
	CREATE_TRY(cudaGetDeviceProperties(&prop, be->device), "cudaGetDeviceProperties");
	CREATE_TRY(cudaMemGetInfo(&free_mem, &total_mem), "cudaMemGetInfo");
	snprintf(be->device_name, sizeof(be->device_name), "%.127s", prop.name);
	be->total_mem = (int64_t) total_mem;
	if (prop.major < 8)
	{
		gptoss_errorf(err, "cuda backend: %s (compute capability %d.%d) is too old; need 8.0 or newer",
					  prop.name, prop.major, prop.minor);
		goto fail;
	}

	/* sizes */
	/* row counts are multiples of DENSE_COLS: the dense products' buffers hold whole calls */
	be->t_max = div_up(opts->max_seqs + STEP_PROMPT_ROWS, DENSE_COLS) * DENSE_COLS;
	be->moe_rows = be->t_max * c->experts_per_token + 8 * c->num_experts;
	be->lr = div_up(opts->max_seqs > 64 ? opts->max_seqs : 64, DENSE_COLS) * DENSE_COLS;
	be->kc_h = div_up(c->hidden_size, 64);
	be->kc_i = div_up(c->intermediate_size, 64);
	if (pick_moe_prefill(be, err) < 0)
		goto fail;
	fraction = opts->gpu_memory_fraction > 0 && opts->gpu_memory_fraction <= 1 ? opts->gpu_memory_fraction : 0.9;
	be->base.opts.gpu_memory_fraction = fraction;
	budget = (int64_t) (fraction * (double) total_mem);
	if (budget > (int64_t) free_mem - FREE_MEM_RESERVE_BYTES)
		budget = (int64_t) free_mem - FREE_MEM_RESERVE_BYTES;
	need_weights = (int64_t) weight_bytes_needed(c);
	need_buffers = (int64_t) buffer_bytes_needed(c, opts, be->t_max, be->lr);
	if (need_weights + need_buffers > budget)
	{
		gptoss_errorf(err,
					  "cuda backend: the model needs %.2f GiB of device memory for weights and %.2f GiB "
					  "for buffers, but %s has %.2f GiB free of %.2f GiB and gpu_memory_fraction %.2f allows %.2f GiB",
					  need_weights / GIB, need_buffers / GIB, prop.name, free_mem / GIB,
					  total_mem / GIB, fraction, budget > 0 ? budget / GIB : 0.0);
		goto fail;
	}

	CREATE_TRY(cudaStreamCreateWithFlags(&be->stream, cudaStreamNonBlocking), "cudaStreamCreate");
	CREATE_TRY(attention_prepare(), "attention setup");
	CREATE_TRY(router_prepare(), "router setup");
	st = cublasLtCreate(&be->cublaslt);
	if (st != CUBLAS_STATUS_SUCCESS)
	{
		be->cublaslt = NULL;
		gptoss_errorf(err, "CUDA error in cublasLtCreate: %s", cublasLtGetStatusString(st));
		goto fail;
	}
	if (dev_alloc(be, &be->dense_ws, DENSE_WORKSPACE_BYTES, &be->buffer_bytes, err, "cuBLASLt workspace") < 0 ||
		build_dense_product(be->cublaslt, (c->num_heads + 2 * c->num_kv_heads) * c->head_dim, c->hidden_size,
							be->t_max, &be->qkv_product, err) < 0 ||
		build_dense_product(be->cublaslt, c->hidden_size, c->num_heads * c->head_dim, be->t_max,
							&be->o_product, err) < 0 ||
		build_dense_product(be->cublaslt, c->vocab_size, c->hidden_size, be->lr, &be->lm_product, err) < 0)
		goto fail;

	if (plan_kv(be, budget - need_weights - need_buffers, err) < 0 ||
		upload_weights(be, progress, progress_arg, err) < 0 || build_rope(be, err) < 0 ||
		build_buffers(be, err) < 0)
		goto fail;
	CREATE_TRY(cudaDeviceSynchronize(), "backend setup");
#undef CREATE_TRY
	build_buckets(be);
	be->peak_bytes = be->weight_bytes + be->kv_bytes + be->buffer_bytes;
	return &be->base;

fail:
	cuda_free(&be->base);
	return NULL;
}
