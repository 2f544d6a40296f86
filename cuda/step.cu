/*
 * step.cu: one step of the CUDA backend (backend.h semantics).
 *
 * Plan.  The host checks the entries with the CPU backend's rules (shared,
 * backend.c), gives
 * the sequences the KV pages their new tokens need, and writes one packed
 * descriptor (token ids, positions, slots, attention items, logits rows,
 * sampling settings, page-table updates) into pinned memory; one
 * asynchronous copy sends it to the device.  The forward pass is then a
 * fixed sequence of kernels and cuBLAS products on one stream (per layer:
 * q/k/v product, bias+RoPE+KV append of the prefill tokens, attention (the
 * decode kernel does the bias+RoPE+KV append of its decode tokens itself:
 * one launch less per layer, none at all in a pure-decode step), o product,
 * residual+norm+router top-k, expert grouping, gather, gate_up+SwiGLU, down,
 * combine+norm),
 * then the lm_head product for the rows that are sampled and the sampling
 * kernel.  The host waits once, at the end, to read the sampled tokens.
 *
 * Pure-decode steps (every entry one token, no logits wanted) run as a CUDA
 * graph captured once per batch bucket: the batch is padded to the bucket
 * with rows of slot -1 that write no KV, route to no expert and are never
 * sampled, and everything that changes between steps is read from the
 * descriptor, so the same graph replays for every step of that bucket.
 *
 * Steps with more than t_max tokens are cut into sub-steps that take the
 * next tokens of each entry in order; attention of a later sub-step reads
 * the earlier ones from the cache, so the result is that of one big step.
 * When the caller wants all logits, each sub-step's rows go through lm_head
 * in chunks of lr rows and are copied out after the sampling.
 *
 * Entries with a forced token or wanting log-probabilities take the general
 * path.  Their logits rows come first; the sampling overwrites the rows it
 * samples, so they are copied aside LOGPROB_GROUP_ROWS at a time, sampled,
 * and the copies go through the log-probability kernel (a forced row is not
 * sampled: its token is given).  The outputs are read back with the tokens.
 */
#include <math.h>
#include <stdlib.h>

#include "backend_cuda.cuh"
#include "dense.cuh"

/* The descriptor's size is a whole number of these (the alignment cudaMalloc gives). */
#define DESC_SIZE_UNIT 256

/* Offsets of the descriptor arrays for the given counts (samples first: 8-byte aligned). */
DescLayout
desc_layout(int T, int NI, int R, int U)
{
	DescLayout	dl;
	size_t		off = 0;

	dl.samp = off;
	off += (size_t) R * sizeof(SampleRow);
	dl.tok_id = off;
	off += (size_t) T * sizeof(int32_t);
	dl.tok_pos = off;
	off += (size_t) T * sizeof(int32_t);
	dl.tok_slot = off;
	off += (size_t) T * sizeof(int32_t);
	dl.item_tok0 = off;
	off += (size_t) NI * sizeof(int32_t);
	dl.item_ntok = off;
	off += (size_t) NI * sizeof(int32_t);
	dl.out_row = off;
	off += (size_t) R * sizeof(int32_t);
	dl.n_upd = off;
	off += sizeof(int32_t);
	dl.upd_index = off;
	off += (size_t) U * sizeof(int32_t);
	dl.upd_page = off;
	off += (size_t) U * sizeof(int32_t);
	dl.total = (off + DESC_SIZE_UNIT - 1) / DESC_SIZE_UNIT * DESC_SIZE_UNIT;
	return dl;
}

/* Host pointers into the pinned descriptor. */
struct HostDesc
{
	SampleRow  *samp;
	int32_t    *tok_id;
	int32_t    *tok_pos;
	int32_t    *tok_slot;
	int32_t    *item_tok0;
	int32_t    *item_ntok;
	int32_t    *out_row;
	int32_t    *n_upd;
	int32_t    *upd_index;
	int32_t    *upd_page;
};

/* Views of one layout over the host mirror and the device copy. */
static void
desc_views(CudaBackend *be, const DescLayout &dl, HostDesc *h, StepView *sv)
{
	char	   *hb = be->desc_host;
	char	   *db = be->desc_dev;

	h->samp = (SampleRow *) (hb + dl.samp);
	h->tok_id = (int32_t *) (hb + dl.tok_id);
	h->tok_pos = (int32_t *) (hb + dl.tok_pos);
	h->tok_slot = (int32_t *) (hb + dl.tok_slot);
	h->item_tok0 = (int32_t *) (hb + dl.item_tok0);
	h->item_ntok = (int32_t *) (hb + dl.item_ntok);
	h->out_row = (int32_t *) (hb + dl.out_row);
	h->n_upd = (int32_t *) (hb + dl.n_upd);
	h->upd_index = (int32_t *) (hb + dl.upd_index);
	h->upd_page = (int32_t *) (hb + dl.upd_page);
	sv->samp = (const SampleRow *) (db + dl.samp);
	sv->tok_id = (const int32_t *) (db + dl.tok_id);
	sv->tok_pos = (const int32_t *) (db + dl.tok_pos);
	sv->tok_slot = (const int32_t *) (db + dl.tok_slot);
	sv->item_tok0 = (const int32_t *) (db + dl.item_tok0);
	sv->item_ntok = (const int32_t *) (db + dl.item_ntok);
	sv->out_row = (const int32_t *) (db + dl.out_row);
	sv->n_upd = (const int32_t *) (db + dl.n_upd);
	sv->upd_index = (const int32_t *) (db + dl.upd_index);
	sv->upd_page = (const int32_t *) (db + dl.upd_page);
}

/* Pages slot must gain to hold `end` positions. */
static int
pages_missing(const CudaBackend *be, int slot, int end)
{
	return gptoss_kv_pages_missing(be->base.kv_pages, slot, end);
}

/*
 * Gives slot pages up to position end-1 (validate_step made sure they
 * exist), recording the page-table updates; returns their count.
 */
static int
grow_slot(CudaBackend *be, int slot, int end, int32_t *upd_index, int32_t *upd_page)
{
	int			added = gptoss_kv_pages_grow(be->base.kv_pages, slot, end, NULL);
	int			n_pages;
	const int32_t *pages = gptoss_kv_pages_table(be->base.kv_pages, slot, &n_pages);

	for (int i = 0; i < added; i++)
	{
		upd_index[i] = slot * be->kv.max_pages + n_pages - added + i;
		upd_page[i] = pages[n_pages - added + i];
	}
	be->synced[slot] = n_pages;
	return added;
}

/*
 * Uploads the page-table entries of pages a slot was given outside a step
 * (a shared prefix attached by the engine) before the step's kernels read
 * them; the copy is ordered on the stream ahead of them.
 */
static int
sync_attached_pages(CudaBackend *be, const gptoss_step_seq *seqs, int n_seqs, gptoss_error *err)
{
	for (int i = 0; i < n_seqs; i++)
	{
		int			slot = seqs[i].slot;
		int			n_pages;
		const int32_t *pages = gptoss_kv_pages_table(be->base.kv_pages, slot, &n_pages);

		if (be->synced[slot] >= n_pages)
			continue;
		CUDA_TRY(cudaMemcpyAsync(be->page_table + (size_t) slot * be->kv.max_pages + be->synced[slot],
								 pages + be->synced[slot], (size_t) (n_pages - be->synced[slot]) * 4,
								 cudaMemcpyHostToDevice, be->stream), err, "page table upload");
		be->synced[slot] = n_pages;
	}
	return 0;
}

/* The sampling settings of entry i. */
static SampleRow
sample_row(const gptoss_step_seq *s, int i)
{
	SampleRow	r;

	r.seed = s->sampling.seed;
	r.pos = (int64_t) s->pos + s->n_tokens;
	r.temperature = s->sampling.temperature;
	r.top_p = s->sampling.top_p;
	r.top_k = s->sampling.top_k;
	r.entry = i;
	return r;
}

/* Cached tokens of slot (for gptoss_backend_check_step). */
static int
cached_len(const gptoss_backend *base, int slot)
{
	return gptoss_kv_pages_len(base->kv_pages, slot);
}

/* Checks every entry before any state changes (backend.c), then KV tokens and pages; total tokens or -1. */
static int64_t
validate_step(CudaBackend *be, const gptoss_step_seq *seqs, int n_seqs, const int32_t *next_tokens,
			  gptoss_error *err)
{
	int64_t		total = gptoss_backend_check_step(&be->base, seqs, n_seqs, next_tokens, cached_len,
												  be->slot_stamp, &be->stamp, err);
	int64_t		pages = 0;
	int64_t		used = 0;

	if (total < 0)
		return -1;
	/* tokens the slots computed; shared prefix pages are covered by the page check */
	for (int s = 0; s < be->base.opts.max_seqs; s++)
		used += gptoss_kv_pages_len(be->base.kv_pages, s) - gptoss_kv_pages_shared(be->base.kv_pages, s);
	for (int i = 0; i < n_seqs; i++)
		pages += pages_missing(be, seqs[i].slot, seqs[i].pos + seqs[i].n_tokens);
	if (used + total > be->kv_capacity || pages > gptoss_kv_pages_available(be->base.kv_pages))
		return gptoss_errorf_code(err, GPTOSS_ERR_BUSY,
								  "step: KV cache full (%lld of %lld tokens used, %lld more needed)",
								  (long long) used, (long long) be->kv_capacity, (long long) total);
	return total;
}

/*
 * Enqueues the forward pass of T rows, the lm_head of R rows and their
 * sampling.  Attention items [0, n_decode) are single tokens of one-token
 * entries (decode kernel); items [n_decode, n_items) belong to longer chunks
 * (prefill kernel).  A one-token entry thus always takes the same kernel,
 * alone or next to prefills, and gets the same result.  The decode items
 * get their bias + RoPE + KV append inside the decode kernel when the shape
 * allows (attention_fuses_rope; bitwise what rope_kv would write), so
 * rope_kv runs over the prefill items only (not at all when none).
 */
static int
forward(CudaBackend *be, const StepView &sv, int T, int n_decode, int n_items, int R, int R_lp,
		gptoss_error *err)
{
	const gptoss_config *c = be->cfg;
	Activations *a = &be->act;
	cudaStream_t s = be->stream;
	int			H = c->hidden_size;
	int			K = c->experts_per_token;
	int			E = c->num_experts;
	int			D = c->head_dim;
	int			Hq = c->num_heads;
	int			Hkv = c->num_kv_heads;
	float		eps = c->rms_norm_eps;
	int			max_active = T * K < E ? T * K : E;
	int			per_expert = div_up(T * K, E);
	int			tiles_per_pass = per_expert <= 8 ? 1 : per_expert <= 16 ? 2 : per_expert <= 32 ? 4 : 8;

	/*
	 * MoE decode variant at one token tile per pass.  The streaming one
	 * (row_tiles 0) from 3 to 16 tokens a step (H200: batch 4 / 8 / 16 1,147
	 * / 1,649 / 2,839 vs 1,105 / 1,594 / 2,699 tok/s; at batch 1 its 1,440
	 * gate_up warps are too few: 400 vs 422).  Two row tiles per block near
	 * 8 tokens per expert, where the shared activation loads pay (batch 64:
	 * 8,206-8,253 vs 8,107); else one.
	 */
	int			row_tiles = tiles_per_pass != 1 ? 1 : T * K > 8 && per_expert <= 2 ? 0 :
		per_expert >= 7 ? 2 : 1;
	int			fuse_rope = attention_fuses_rope(Hq, Hkv, D);
	int			per_item = attention_tokens_per_item(Hq, Hkv, D, 0);
	StepView	sv_prefill = sv;

	sv_prefill.item_tok0 += n_decode;
	sv_prefill.item_ntok += n_decode;

	CUDA_TRY(launch_embed_norm(sv, T, be->embedding, be->layers[0].attn_norm, H, eps, a->x, a->xb,
							   be->page_table, s), err, "embed_norm");
	for (int l = 0; l < c->num_layers; l++)
	{
		const LayerWeights *w = &be->layers[l];
		const float *next_norm = l + 1 < c->num_layers ? be->layers[l + 1].attn_norm : be->final_norm;
		int			window = c->layer_sliding[l] ? c->sliding_window : 0;

		if (dense_gemm(be->cublaslt, &be->qkv_product, be->dense_ws, w->qkv_w, a->xb, T, a->qkv, s, err,
					   "qkv product") < 0)
			return -1;
		/* no item has more than per_item tokens (decode items one) */
		CUDA_TRY(launch_rope_kv(fuse_rope ? sv_prefill : sv, fuse_rope ? n_items - n_decode : n_items,
								per_item, l, a->qkv, w->qkv_b, be->rope, Hq, Hkv, D, a->q, be->kv, s),
				 err, "rope_kv");
		if (fuse_rope)
		{
			QkvRope		rope = {a->qkv, w->qkv_b, be->rope};

			CUDA_TRY(launch_attention_rope(sv, n_decode, l, window, rope, be->kv, w->sinks, Hq,
										   a->att, s), err, "attention");
		}
		else
			CUDA_TRY(launch_attention(sv, n_decode, 1, l, window, a->q, be->kv, w->sinks, Hq,
									  a->att, s), err, "attention");
		CUDA_TRY(launch_attention(sv_prefill, n_items - n_decode, 0, l, window, a->q, be->kv,
								  w->sinks, Hq, a->att, s), err, "attention");
		if (dense_gemm(be->cublaslt, &be->o_product, be->dense_ws, w->o_w, a->att, T, a->proj, s, err,
					   "o product") < 0)
			return -1;
		CUDA_TRY(launch_norm_router(sv, T, a->x, a->proj, w->o_b, w->mlp_norm, eps, a->xn,
									w->router_w, w->router_b, H, E, K, a->topk_idx, a->topk_w, s),
				 err, "norm_router");
		CUDA_TRY(launch_moe_route(T, K, E, a->topk_idx, a->route, s), err, "moe_route");
		CUDA_TRY(launch_moe_gather(T, K, a->xn, H, be->kc_h, a->route, moe_tile_layout(tiles_per_pass, be->moe_prefill),
								   a->x_frag, s), err, "moe_gather");
		CUDA_TRY(launch_moe_gate_up(max_active, tiles_per_pass, row_tiles, be->moe_prefill, w->gate_up, a->route,
									a->x_frag, c->swiglu_limit, a->act_frag, be->kc_i, s), err, "moe_gate_up");
		CUDA_TRY(launch_moe_down(max_active, tiles_per_pass, row_tiles, be->moe_prefill, w->down, a->route,
								 a->act_frag, a->y, s), err, "moe_down");
		CUDA_TRY(launch_moe_combine_norm(T, K, a->x, a->y, a->route, a->topk_w, next_norm, H, eps,
										 a->xb, s), err, "moe_combine_norm");
	}
	if (R > 0)
	{
		CUDA_TRY(launch_gather_rows(sv.out_row, R, a->xb, H, a->lm_in, s), err, "gather_rows");
		if (dense_gemm(be->cublaslt, &be->lm_product, be->dense_ws, be->lm_head, a->lm_in, R, a->logits,
					   s, err, "lm_head product") < 0)
			return -1;
		/*
		 * Rows [0, R_lp) want log-probabilities (of the raw logits): copy
		 * aside, mask, sample, then the logprob kernel on the copies.
		 */
		for (int g0 = 0; g0 < R_lp; g0 += LOGPROB_GROUP_ROWS)
		{
			int			g = R_lp - g0 < LOGPROB_GROUP_ROWS ? R_lp - g0 : LOGPROB_GROUP_ROWS;
			StepView	sv_group = sv;
			size_t		V = c->vocab_size;

			sv_group.samp += g0;
			CUDA_TRY(cudaMemcpyAsync(be->lp_logits, a->logits + g0 * V, g * V * sizeof(float),
									 cudaMemcpyDeviceToDevice, s), err, "logprob rows copy");
			CUDA_TRY(launch_logit_mask(sv_group, g, be->mask_on_dev, be->masks_dev, a->logits + g0 * V,
									   c->vocab_size, s), err, "logit_mask");
			CUDA_TRY(launch_sample(sv_group, g, a->logits + g0 * V, c->vocab_size, a->out_tokens, s),
					 err, "sample");
			CUDA_TRY(launch_logprobs(be->lp_rows + g0, g, be->lp_logits, c->vocab_size, a->out_tokens,
									 be->lp_out, s), err, "logprobs");
		}
		if (R > R_lp)
		{
			StepView	sv_rest = sv;
			float	   *rest = a->logits + (size_t) R_lp * c->vocab_size;

			sv_rest.samp += R_lp;
			CUDA_TRY(launch_logit_mask(sv_rest, R - R_lp, be->mask_on_dev, be->masks_dev, rest,
									   c->vocab_size, s), err, "logit_mask");
			CUDA_TRY(launch_sample(sv_rest, R - R_lp, rest, c->vocab_size, a->out_tokens, s), err, "sample");
		}
	}
	return 0;
}

/* One chunk of an entry inside a sub-step. */
struct Chunk
{
	int			entry;			/* index into the step's entries */
	int			first;			/* first token of the entry in this chunk */
	int			take;			/* tokens of the entry in this chunk */
	int			row0;			/* its first token row in the sub-step */
};

/* Copies all T rows' logits of a sub-step to the caller's buffer (entry order). */
static int
copy_logits(CudaBackend *be, const Chunk *chunks, int n_chunks, int T, const int64_t *entry_row,
			float *logits, gptoss_error *err)
{
	const gptoss_config *c = be->cfg;
	Activations *a = &be->act;
	size_t		V = c->vocab_size;

	for (int r0 = 0; r0 < T; r0 += be->lr)
	{
		int			cnt = T - r0 < be->lr ? T - r0 : be->lr;

		CUDA_TRY(launch_gather_rows(a->iota + r0, cnt, a->xb, c->hidden_size, a->lm_in, be->stream),
				 err, "gather_rows");
		if (dense_gemm(be->cublaslt, &be->lm_product, be->dense_ws, be->lm_head, a->lm_in, cnt,
					   a->logits, be->stream, err, "lm_head product") < 0)
			return -1;
		for (int k = 0; k < n_chunks; k++)
		{
			int			lo = chunks[k].row0 > r0 ? chunks[k].row0 : r0;
			int			hi = chunks[k].row0 + chunks[k].take < r0 + cnt ? chunks[k].row0 + chunks[k].take : r0 + cnt;
			int64_t		dst_row;

			if (lo >= hi)
				continue;
			dst_row = entry_row[chunks[k].entry] + chunks[k].first + (lo - chunks[k].row0);
			CUDA_TRY(cudaMemcpyAsync(logits + (size_t) dst_row * V, a->logits + (size_t) (lo - r0) * V,
									 (size_t) (hi - lo) * V * sizeof(float), cudaMemcpyDeviceToHost,
									 be->stream), err, "logits copy");
		}
	}
	return 0;
}

/* Whether entry s has its logits row go through the logprob kernel. */
static int
wants_logprobs(const gptoss_step_seq *s)
{
	return s->sample && (s->forced || s->logprobs);
}

/* Reads the sampled tokens (and log-probabilities) back (the step's one wait) and hands them out. */
static int
finish_step(CudaBackend *be, const gptoss_step_seq *seqs, int n_seqs, int32_t *next_tokens,
			gptoss_error *err)
{
	int			any = 0;
	int			any_lp = 0;

	for (int i = 0; i < n_seqs; i++)
	{
		any |= seqs[i].sample;
		any_lp |= wants_logprobs(&seqs[i]);
	}
	if (any)
		CUDA_TRY(cudaMemcpyAsync(be->tokens_host, be->act.out_tokens, (size_t) n_seqs * 4,
								 cudaMemcpyDeviceToHost, be->stream), err, "token copy");
	if (any_lp)
		CUDA_TRY(cudaMemcpyAsync(be->lp_out_host, be->lp_out, (size_t) n_seqs * sizeof(gptoss_token_logprobs),
								 cudaMemcpyDeviceToHost, be->stream), err, "logprobs copy");
	CUDA_TRY(cudaStreamSynchronize(be->stream), err, "step");
	for (int i = 0; i < n_seqs; i++)
	{
		if (!seqs[i].sample)
			continue;
		next_tokens[i] = seqs[i].forced ? *seqs[i].forced : be->tokens_host[i];
		if (seqs[i].logprobs)
			*seqs[i].logprobs = be->lp_out_host[i];
	}
	return 0;
}

/* Any step: sub-steps of at most t_max tokens, no graph. */
static int
general_step(CudaBackend *be, const gptoss_step_seq *seqs, int n_seqs, int32_t *next_tokens,
			 float *logits, gptoss_error *err)
{
	const gptoss_config *c = be->cfg;
	int			per_item;
	int		   *done = (int *) calloc(n_seqs, sizeof(int));
	int64_t    *entry_row = (int64_t *) calloc(n_seqs, sizeof(int64_t));
	Chunk	   *chunks = (Chunk *) calloc(n_seqs, sizeof(Chunk));
	int			rc = -1;
	int			first_sub = 1;

	if (!done || !entry_row || !chunks)
	{
		gptoss_errorf(err, "cuda backend: out of host memory");
		goto out;
	}
	for (int i = 0; i < n_seqs; i++)
		entry_row[i] = i ? entry_row[i - 1] + seqs[i - 1].n_tokens : 0;
	per_item = attention_tokens_per_item(c->num_heads, c->num_kv_heads, c->head_dim, 0);

	for (;;)
	{
		int			T = 0;
		int			NI = 0;
		int			n_decode = 0;
		int			R = 0;
		int			R_lp = 0;
		int			U = 0;
		int			n_chunks = 0;
		DescLayout	dl;
		HostDesc	h;
		StepView	sv;

		for (int i = 0; i < n_seqs && T < be->t_max; i++)
		{
			int			take = seqs[i].n_tokens - done[i];

			if (take <= 0)
				continue;
			if (take > be->t_max - T)
				take = be->t_max - T;
			chunks[n_chunks].entry = i;
			chunks[n_chunks].first = done[i];
			chunks[n_chunks].take = take;
			chunks[n_chunks].row0 = T;
			n_chunks++;
			T += take;
			NI += take == 1 ? 1 : div_up(take, per_item);
			R += done[i] + take == seqs[i].n_tokens && seqs[i].sample;
			R_lp += done[i] + take == seqs[i].n_tokens && wants_logprobs(&seqs[i]);
			U += pages_missing(be, seqs[i].slot, seqs[i].pos + done[i] + take);
		}
		if (T == 0)
			break;
		/* the pinned descriptor is rewritten: the previous copy must be done */
		if (!first_sub)
			CUDA_TRY(cudaStreamSynchronize(be->stream), err, "step");
		dl = desc_layout(T, NI, R, U);
		desc_views(be, dl, &h, &sv);
		/* logits rows: those wanting log-probabilities first (rows [0, R_lp)), then the others */
		{
			int			r_lp = 0,
						r_other = R_lp;

			for (int k = 0; k < n_chunks; k++)
			{
				const gptoss_step_seq *s = &seqs[chunks[k].entry];
				int			r;

				if (chunks[k].first + chunks[k].take != s->n_tokens || !s->sample)
					continue;
				r = wants_logprobs(s) ? r_lp++ : r_other++;
				h.out_row[r] = chunks[k].row0 + chunks[k].take - 1;
				h.samp[r] = sample_row(s, chunks[k].entry);
				if (!wants_logprobs(s))
					continue;
				if (s->forced)
					h.samp[r].entry = -1;	/* given, not sampled */
				be->lp_rows_host[r].entry = chunks[k].entry;
				be->lp_rows_host[r].forced = s->forced ? *s->forced : -1;
				be->lp_rows_host[r].top_k = s->logprobs ? s->top_logprobs : 0;
				be->lp_rows_host[r].pad = 0;
			}
		}
		U = 0;
		/* one-token chunks first (decode kernel), then the items of longer chunks */
		for (int k = 0; k < n_chunks; k++)
			if (chunks[k].take == 1)
			{
				h.item_tok0[n_decode] = chunks[k].row0;
				h.item_ntok[n_decode] = 1;
				n_decode++;
			}
		NI = n_decode;
		for (int k = 0; k < n_chunks; k++)
		{
			const gptoss_step_seq *s = &seqs[chunks[k].entry];
			int			pos0 = s->pos + chunks[k].first;

			for (int j = 0; j < chunks[k].take; j++)
			{
				h.tok_id[chunks[k].row0 + j] = s->tokens[chunks[k].first + j];
				h.tok_pos[chunks[k].row0 + j] = pos0 + j;
				h.tok_slot[chunks[k].row0 + j] = s->slot;
			}
			for (int j = 0; j < chunks[k].take && chunks[k].take > 1; j += per_item)
			{
				h.item_tok0[NI] = chunks[k].row0 + j;
				h.item_ntok[NI] = chunks[k].take - j < per_item ? chunks[k].take - j : per_item;
				NI++;
			}
			U += grow_slot(be, s->slot, pos0 + chunks[k].take, h.upd_index + U, h.upd_page + U);
		}
		*h.n_upd = U;
		CUDA_TRY(cudaMemcpyAsync(be->desc_dev, be->desc_host, dl.total, cudaMemcpyHostToDevice,
								 be->stream), err, "descriptor copy");
		if (R_lp > 0)
			CUDA_TRY(cudaMemcpyAsync(be->lp_rows, be->lp_rows_host, (size_t) R_lp * sizeof(LogprobRow),
									 cudaMemcpyHostToDevice, be->stream), err, "logprob rows copy");
		if (forward(be, sv, T, n_decode, NI, R, R_lp, err) < 0)
			goto out;
		if (logits && copy_logits(be, chunks, n_chunks, T, entry_row, logits, err) < 0)
			goto out;
		for (int k = 0; k < n_chunks; k++)
			done[chunks[k].entry] += chunks[k].take;
		first_sub = 0;
	}
	rc = finish_step(be, seqs, n_seqs, next_tokens, err);
out:
	free(done);
	free(entry_row);
	free(chunks);
	return rc;
}

/* A pure-decode step through the CUDA graph of its batch bucket. */
static int
graph_step(CudaBackend *be, const gptoss_step_seq *seqs, int n_seqs, int32_t *next_tokens,
		   gptoss_error *err)
{
	int			b = 0;
	int			B;
	int			U = 0;
	DescLayout	dl;
	HostDesc	h;
	StepView	sv;

	while (be->buckets[b] < n_seqs)
		b++;
	B = be->buckets[b];
	dl = desc_layout(B, B, B, B);
	desc_views(be, dl, &h, &sv);
	for (int t = 0; t < B; t++)
	{
		const gptoss_step_seq *s = t < n_seqs ? &seqs[t] : NULL;

		h.tok_id[t] = s ? s->tokens[0] : 0;
		h.tok_pos[t] = s ? s->pos : 0;
		h.tok_slot[t] = s ? s->slot : -1;
		h.item_tok0[t] = t;
		h.item_ntok[t] = s ? 1 : 0;
		h.out_row[t] = t;
		if (s && s->sample)
			h.samp[t] = sample_row(s, t);
		else
		{
			memset(&h.samp[t], 0, sizeof(SampleRow));
			h.samp[t].entry = -1;
		}
		if (s)
			U += grow_slot(be, s->slot, s->pos + 1, h.upd_index + U, h.upd_page + U);
	}
	*h.n_upd = U;
	CUDA_TRY(cudaMemcpyAsync(be->desc_dev, be->desc_host, dl.total, cudaMemcpyHostToDevice, be->stream),
			 err, "descriptor copy");
	if (!be->graphs[b])
	{
		cudaGraph_t graph = NULL;
		cudaError_t ce;
		int			rc;

		CUDA_TRY(cudaStreamBeginCapture(be->stream, cudaStreamCaptureModeThreadLocal), err,
				 "graph capture");
		rc = forward(be, sv, B, B, B, B, 0, err);
		ce = cudaStreamEndCapture(be->stream, &graph);
		if (rc < 0 || ce != cudaSuccess)
		{
			if (graph)
				cudaGraphDestroy(graph);
			cudaGetLastError();
			if (rc < 0)
				return -1;
			return gptoss_errorf(err, "CUDA error in graph capture: %s", cudaGetErrorString(ce));
		}
		ce = cudaGraphInstantiate(&be->graphs[b], graph, 0);
		cudaGraphDestroy(graph);
		if (ce != cudaSuccess)
		{
			be->graphs[b] = NULL;
			return gptoss_errorf(err, "CUDA error in graph instantiate: %s", cudaGetErrorString(ce));
		}
	}
	CUDA_TRY(cudaGraphLaunch(be->graphs[b], be->stream), err, "graph launch");
	return finish_step(be, seqs, n_seqs, next_tokens, err);
}

/*
 * Sends the step's token masks (entries with sample = 1 and a mask) ahead of
 * the forward pass, on the same stream; the flags go only when some entry,
 * in this step or the last, is masked.
 */
static int
upload_masks(CudaBackend *be, const gptoss_step_seq *seqs, int n_seqs, gptoss_error *err)
{
	int			last = -1;
	size_t		words = (size_t) be->mask_words;

	for (int i = 0; i < n_seqs; i++)
	{
		be->mask_on_host[i] = seqs[i].sample && seqs[i].allowed != NULL;
		if (be->mask_on_host[i])
		{
			memcpy(be->masks_host + (size_t) i * words, seqs[i].allowed, words * 4);
			last = i;
		}
	}
	if (last < 0 && !be->mask_on_dirty)
		return 0;
	/* all flags: a later, larger step must not find an old 1 past this step's entries */
	for (int i = n_seqs; i < be->base.opts.max_seqs; i++)
		be->mask_on_host[i] = 0;
	CUDA_TRY(cudaMemcpyAsync(be->mask_on_dev, be->mask_on_host, (size_t) be->base.opts.max_seqs * 4,
							 cudaMemcpyHostToDevice, be->stream), err, "token mask flags copy");
	if (last >= 0)
		CUDA_TRY(cudaMemcpyAsync(be->masks_dev, be->masks_host, (size_t) (last + 1) * words * 4,
								 cudaMemcpyHostToDevice, be->stream), err, "token mask copy");
	be->mask_on_dirty = last >= 0;
	return 0;
}

/* Runs one step; see backend.h. */
int
cuda_step(gptoss_backend *base, const gptoss_step_seq *seqs, int n_seqs, int32_t *next_tokens,
		  float *logits, gptoss_error *err)
{
	CudaBackend *be = (CudaBackend *) base;
	int64_t		total;
	int			decode = 1;
	int			rc;

	if (be->failed)
		return gptoss_errorf(err, "cuda backend: unusable after an earlier CUDA error");
	total = validate_step(be, seqs, n_seqs, next_tokens, err);
	if (total <= 0)
		return total < 0 ? -1 : 0;
	for (int i = 0; i < n_seqs; i++)
		decode &= seqs[i].n_tokens == 1 && !wants_logprobs(&seqs[i]);
	if (upload_masks(be, seqs, n_seqs, err) < 0 || sync_attached_pages(be, seqs, n_seqs, err) < 0)
	{
		be->failed = 1;
		return -1;
	}
	if (decode && !logits && base->opts.cuda_graphs)
		rc = graph_step(be, seqs, n_seqs, next_tokens, err);
	else
		rc = general_step(be, seqs, n_seqs, next_tokens, logits, err);
	if (rc < 0)
	{
		be->failed = 1;
		return -1;
	}
	for (int i = 0; i < n_seqs; i++)
		gptoss_kv_pages_advance(base->kv_pages, seqs[i].slot, seqs[i].n_tokens);
	return 0;
}
