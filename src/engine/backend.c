/*
 * backend.c: picks the backend implementation for a device name, and holds
 * the argument checks that every backend shares.
 *
 * "cpu" and "cuda" ask for one backend explicitly; "auto" (or NULL/empty)
 * takes CUDA when this build has it and a device is usable, else the CPU.
 * The checks live here so that both backends accept exactly the same model
 * options and step entries (the CUDA backend once refused a zeroed, i.e.
 * greedy, gptoss_sampling that the CPU backend took).
 */
#include "backend.h"

#include <math.h>
#include <string.h>
#include <strings.h>

/*
 * Rewrites err, the CUDA backend's failure on a machine where no device
 * answers, so that it says that first; CUDA's own words (a driver too old for
 * the runtime, no device) follow as the detail.
 */
static void
no_usable_cuda_device(gptoss_error *err)
{
	char		reason[sizeof(err->msg)];

	if (err == NULL)
		return;
	memcpy(reason, err->msg, sizeof(reason));
	gptoss_errorf(err, "no usable CUDA device found (%.900s)", reason);
}

/* Creates the backend named by device: "cpu", "cuda" or "auto". */
gptoss_backend *
gptoss_backend_create(const char *device, const gptoss_model *model,
					  const gptoss_backend_opts *opts,
					  gptoss_progress_fn progress, void *progress_arg,
					  gptoss_error *err)
{
	if (!device || !*device || strcasecmp(device, "auto") == 0)
		device = gptoss_cuda_available() ? "cuda" : "cpu";
	if (strcasecmp(device, "cpu") == 0)
		return gptoss_backend_cpu_create(model, opts, err);
	if (strcasecmp(device, "cuda") == 0)
	{
		gptoss_backend *be = gptoss_backend_cuda_create(model, opts, progress, progress_arg, err);

		if (be == NULL && !gptoss_cuda_available())
			no_usable_cuda_device(err);
		return be;
	}
	gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
					   "unknown device \"%s\" (expected cpu, cuda or auto)", device);
	return NULL;
}

/* Checks the model and opts every backend relies on; 0 or -1 with err. */
int
gptoss_backend_check_model(const gptoss_model *model, const gptoss_backend_opts *opts, const char *who,
						   gptoss_error *err)
{
	const gptoss_config *c;

	if (!model || !model->layers || !model->embedding || !model->lm_head || !model->final_norm)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "%s: model has no weights", who);
	c = &model->config;
	if (c->hidden_size <= 0 || c->hidden_size % 32 != 0 || c->intermediate_size <= 0 ||
		c->intermediate_size % 32 != 0)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "%s: hidden_size %d and intermediate_size %d must be positive multiples of 32",
								  who, c->hidden_size, c->intermediate_size);
	if (c->num_layers <= 0 || c->num_layers > GPTOSS_MAX_LAYERS || c->num_heads <= 0 ||
		c->num_kv_heads <= 0 || c->num_heads % c->num_kv_heads != 0)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "%s: bad layer/head counts (layers %d, heads %d, kv heads %d)",
								  who, c->num_layers, c->num_heads, c->num_kv_heads);
	if (c->num_experts <= 0 || c->experts_per_token <= 0 || c->experts_per_token > c->num_experts)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "%s: bad expert counts (%d experts, %d per token)",
								  who, c->num_experts, c->experts_per_token);
	if (c->vocab_size <= 0 || c->sliding_window <= 0)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "%s: bad vocab_size %d or sliding_window %d",
								  who, c->vocab_size, c->sliding_window);
	for (int l = 0; l < c->num_layers; l++)
	{
		const gptoss_layer_weights *w = &model->layers[l];

		if (!w->attn_norm || !w->q_weight || !w->q_bias || !w->k_weight || !w->k_bias ||
			!w->v_weight || !w->v_bias || !w->o_weight || !w->o_bias || !w->sinks ||
			!w->mlp_norm || !w->router_weight || !w->router_bias || !w->gate_up_blocks ||
			!w->gate_up_scales || !w->gate_up_bias || !w->down_blocks || !w->down_scales ||
			!w->down_bias)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "%s: layer %d lacks a weight", who, l);
	}
	if (!opts || opts->max_seqs < 1 || opts->max_context < 1)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "%s: max_seqs (%d) and max_context (%d) must be >= 1",
								  who, opts ? opts->max_seqs : 0, opts ? opts->max_context : 0);
	if (c->max_position_embeddings > 0 && opts->max_context > c->max_position_embeddings)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "%s: max_context %d exceeds the model's max_position_embeddings %d",
								  who, opts->max_context, c->max_position_embeddings);
	return 0;
}

/* Checks a step's entries before any state changes; total tokens or -1 with err. */
int64_t
gptoss_backend_check_step(const gptoss_backend *be, const gptoss_step_seq *seqs, int n_seqs,
						  const int32_t *next_tokens, gptoss_cached_len_fn cached_len,
						  unsigned *slot_stamp, unsigned *stamp, gptoss_error *err)
{
	const gptoss_config *c = &be->model->config;
	const gptoss_backend_opts *o = &be->opts;
	int64_t		total = 0;

	if (n_seqs < 0 || (n_seqs > 0 && !seqs))
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "step: bad entry list (%d entries)", n_seqs);
	(*stamp)++;
	for (int i = 0; i < n_seqs; i++)
	{
		const gptoss_step_seq *s = &seqs[i];
		int			len;

		if (s->slot < 0 || s->slot >= o->max_seqs)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
									  "step: entry %d: slot %d out of range [0, %d)", i, s->slot, o->max_seqs);
		if (slot_stamp[s->slot] == *stamp)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
									  "step: entry %d: slot %d appears twice in one step", i, s->slot);
		slot_stamp[s->slot] = *stamp;
		if (s->n_tokens < 1 || !s->tokens)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
									  "step: entry %d: needs at least one token (n_tokens %d)", i, s->n_tokens);
		len = cached_len(be, s->slot);
		if (s->pos != len)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
									  "step: entry %d: pos %d but slot %d holds %d cached tokens",
									  i, s->pos, s->slot, len);
		if ((int64_t) s->pos + s->n_tokens > o->max_context)
			return gptoss_errorf_code(err, GPTOSS_ERR_TOO_LONG,
									  "step: entry %d: position %lld exceeds the context of %d tokens",
									  i, (long long) s->pos + s->n_tokens, o->max_context);
		for (int j = 0; j < s->n_tokens; j++)
			if (s->tokens[j] < 0 || s->tokens[j] >= c->vocab_size)
				return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
										  "step: entry %d: token id %d at index %d is outside [0, %d)",
										  i, (int) s->tokens[j], j, c->vocab_size);
		if (s->sample)
		{
			if (!next_tokens)
				return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
										  "step: entry %d asks to sample but next_tokens is NULL", i);
			if (!(s->sampling.temperature >= 0) || !isfinite(s->sampling.temperature))
				return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
										  "step: entry %d: temperature %g must be finite and >= 0",
										  i, s->sampling.temperature);
			/* greedy ignores top_p, so a zeroed gptoss_sampling means greedy */
			if (s->sampling.temperature > 0 && !(s->sampling.top_p > 0 && s->sampling.top_p <= 1))
				return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
										  "step: entry %d: top_p %g must be in (0, 1]", i, s->sampling.top_p);
			if (s->sampling.top_k < 0)
				return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
										  "step: entry %d: top_k %d must be >= 0", i, s->sampling.top_k);
			if (s->forced && (*s->forced < 0 || *s->forced >= c->vocab_size))
				return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
										  "step: entry %d: forced token id %d is outside [0, %d)",
										  i, (int) *s->forced, c->vocab_size);
			if (s->logprobs && (s->top_logprobs < 0 || s->top_logprobs > GPTOSS_MAX_TOP_LOGPROBS))
				return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
										  "step: entry %d: top_logprobs %d must be in [0, %d]",
										  i, s->top_logprobs, GPTOSS_MAX_TOP_LOGPROBS);
		}
		total += s->n_tokens;
	}
	if (total > INT32_MAX / 64)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "step: %lld tokens in one step", (long long) total);
	return total;
}
