/*
 * model.h: gpt-oss configuration, checkpoint loading and the weight views.
 *
 * A checkpoint is a Hugging Face directory: config.json plus model.safetensors
 * or the shards named by model.safetensors.index.json.  Files are mmap'ed
 * read-only and every weight pointer below points into the mapping; nothing
 * is copied.  Shapes follow the file layout ([out, in] row-major for dense
 * weights, [E, out, in/32, 16] for MXFP4 blocks).
 */
#ifndef GPTOSS_MODEL_H
#define GPTOSS_MODEL_H

#include <stdbool.h>
#include "common.h"

#define GPTOSS_MAX_LAYERS 256

typedef struct gptoss_config
{
	int			hidden_size;		/* H */
	int			num_layers;			/* L */
	int			num_heads;			/* Hq */
	int			num_kv_heads;		/* Hkv; Hq % Hkv == 0 */
	int			head_dim;			/* D (even) */
	int			num_experts;		/* E */
	int			experts_per_token;	/* K <= E */
	int			intermediate_size;	/* I, per expert */
	int			vocab_size;			/* V */
	int			sliding_window;		/* keys p-window+1 .. p on sliding layers */
	int			max_position_embeddings;
	int			initial_context_length;
	float		swiglu_limit;		/* 7.0 */
	float		rms_norm_eps;		/* 1e-5 */
	float		rope_theta;			/* 150000 */
	/* YaRN (rope_scaling); factor 1 with no rope_scaling means plain RoPE */
	float		rope_factor;		/* s = 32 */
	float		rope_beta_fast;		/* 32 */
	float		rope_beta_slow;		/* 1 */
	int			rope_original_max_pos;	/* L0 = 4096 */
	bool		rope_truncate;		/* floor/ceil of the ramp bounds */
	bool		layer_sliding[GPTOSS_MAX_LAYERS];	/* per layer: sliding window? */
	int			eos_token_id;		/* 200002 */
	int			pad_token_id;		/* 199999 */
	bool		random_weights;		/* config.json says gptoss_random_weights (gptoss synth) */
} gptoss_config;

/* Per-layer weight views into the mapped checkpoint. */
typedef struct gptoss_layer_weights
{
	const gptoss_bf16 *attn_norm;		/* [H] input_layernorm */
	const gptoss_bf16 *q_weight;		/* [Hq*D, H] */
	const gptoss_bf16 *q_bias;			/* [Hq*D] */
	const gptoss_bf16 *k_weight;		/* [Hkv*D, H] */
	const gptoss_bf16 *k_bias;			/* [Hkv*D] */
	const gptoss_bf16 *v_weight;		/* [Hkv*D, H] */
	const gptoss_bf16 *v_bias;			/* [Hkv*D] */
	const gptoss_bf16 *o_weight;		/* [H, Hq*D] */
	const gptoss_bf16 *o_bias;			/* [H] */
	const gptoss_bf16 *sinks;			/* [Hq] */
	const gptoss_bf16 *mlp_norm;		/* [H] post_attention_layernorm */
	const gptoss_bf16 *router_weight;	/* [E, H] */
	const gptoss_bf16 *router_bias;		/* [E] */
	const uint8_t *gate_up_blocks;		/* [E, 2I, H/32, 16] MXFP4, rows interleave gate/up */
	const uint8_t *gate_up_scales;		/* [E, 2I, H/32] E8M0 */
	const gptoss_bf16 *gate_up_bias;	/* [E, 2I] */
	const uint8_t *down_blocks;			/* [E, H, I/32, 16] MXFP4 */
	const uint8_t *down_scales;			/* [E, H, I/32] E8M0 */
	const gptoss_bf16 *down_bias;		/* [E, H] */
} gptoss_layer_weights;

typedef struct gptoss_mapping
{
	void	   *addr;
	size_t		size;
} gptoss_mapping;

typedef struct gptoss_model
{
	gptoss_config config;
	char	   *path;				/* checkpoint directory */
	const gptoss_bf16 *embedding;	/* [V, H] */
	const gptoss_bf16 *final_norm;	/* [H] */
	const gptoss_bf16 *lm_head;		/* [V, H] */
	gptoss_layer_weights *layers;	/* [L] */
	gptoss_mapping *mappings;		/* one per safetensors file */
	int			n_mappings;
	int64_t		n_params;			/* total parameters (MXFP4 counted per value) */
	int64_t		n_active_params;	/* per token: K experts, no embedding */
	int64_t		tensor_bytes;		/* sum of all tensors' data bytes */
} gptoss_model;

/* Called during long work; fraction in [0,1]. */
typedef void (*gptoss_progress_fn) (void *arg, double fraction, const char *what);

/* Checks that dir names an existing directory; returns 0, or -1 with err naming it. */
int			gptoss_model_dir_check(const char *dir, gptoss_error *err);

/* Parses and validates dir/config.json into cfg. */
int			gptoss_config_load(const char *dir, gptoss_config *cfg, gptoss_error *err);

/*
 * Loads a checkpoint directory: maps the safetensors files and validates every
 * tensor's name, dtype and shape against the config.  On success *out owns the
 * mappings; free with gptoss_model_free.
 */
int			gptoss_model_load(const char *dir, gptoss_model **out,
							  gptoss_progress_fn progress, void *progress_arg,
							  gptoss_error *err);
void		gptoss_model_free(gptoss_model *model);

/*
 * Totals implied by cfg's tensor shapes, without any file: parameters (MXFP4
 * counted per value, scales not counted), parameters used per token (K of E
 * experts, no embedding) and checkpoint tensor bytes.  Any pointer may be NULL.
 */
void		gptoss_config_sizes(const gptoss_config *cfg, int64_t *n_params,
								int64_t *n_active_params, int64_t *tensor_bytes);

/* MXFP4 E2M1 code -> value table (index = 4-bit code). */
extern const float gptoss_fp4_values[16];

#endif							/* GPTOSS_MODEL_H */
