/*
 * checkpoint.h: the table of tensors a gpt-oss checkpoint must contain for a
 * given configuration (HF names, dtypes, shapes).  The loader (model.c)
 * validates against it, the synthetic writer (synth.c) writes from it and
 * the parameter counts are computed from it, so the three never disagree.
 */
#ifndef GPTOSS_CHECKPOINT_H
#define GPTOSS_CHECKPOINT_H

#include <stdint.h>
#include "common.h"
#include "model.h"
#include "safetensors.h"

/* What a checkpoint tensor is, so loader and writer can treat it by role. */
typedef enum gptoss_tensor_role
{
	GPTOSS_T_EMBEDDING,
	GPTOSS_T_ATTN_NORM,
	GPTOSS_T_Q_WEIGHT,
	GPTOSS_T_Q_BIAS,
	GPTOSS_T_K_WEIGHT,
	GPTOSS_T_K_BIAS,
	GPTOSS_T_V_WEIGHT,
	GPTOSS_T_V_BIAS,
	GPTOSS_T_O_WEIGHT,
	GPTOSS_T_O_BIAS,
	GPTOSS_T_SINKS,
	GPTOSS_T_MLP_NORM,
	GPTOSS_T_ROUTER_WEIGHT,
	GPTOSS_T_ROUTER_BIAS,
	GPTOSS_T_GATE_UP_BLOCKS,
	GPTOSS_T_GATE_UP_SCALES,
	GPTOSS_T_GATE_UP_BIAS,
	GPTOSS_T_DOWN_BLOCKS,
	GPTOSS_T_DOWN_SCALES,
	GPTOSS_T_DOWN_BIAS,
	GPTOSS_T_FINAL_NORM,
	GPTOSS_T_LM_HEAD
} gptoss_tensor_role;

/* One tensor a gpt-oss checkpoint of a given config must contain. */
typedef struct gptoss_tensor_spec
{
	char		name[80];		/* HF name, e.g. model.layers.3.self_attn.k_proj.weight */
	gptoss_tensor_role role;
	int			layer;			/* 0 .. L-1, or -1 for the global tensors */
	gptoss_st_dtype dtype;		/* BF16, or U8 for MXFP4 blocks and scales */
	int			ndim;
	int64_t		shape[4];		/* [ndim] */
	int64_t		nbytes;
	int64_t		n_params;		/* values it holds: 2 per MXFP4 block byte, 0 for scales */
} gptoss_tensor_spec;

/*
 * Builds the full tensor table for cfg: the embedding,
 * 19 tensors per layer, the final norm and lm_head, in that order.  The
 * caller frees *out.  Returns -1 only when out of memory.
 */
int			gptoss_tensor_table(const gptoss_config *cfg, gptoss_tensor_spec **out, int *n_out,
								gptoss_error *err);

#endif							/* GPTOSS_CHECKPOINT_H */
