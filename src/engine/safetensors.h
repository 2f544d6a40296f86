/*
 * safetensors.h: the checkpoint internals shared by the loader (model.c), the
 * synthetic-checkpoint writer (synth.c), the unit tests and the fuzzer.
 *
 * Two things live here.  First, a strict parser for one safetensors file
 * image (8-byte little-endian header length, a JSON header, then the raw
 * tensor bytes) that works on any in-memory buffer, so the loader can run it
 * on an mmap'ed file and the fuzzer on arbitrary bytes.  Second, the table of
 * tensors a gpt-oss checkpoint must contain for a given configuration (HF
 * names, dtypes, shapes), from which the loader validates, the writer writes
 * and the parameter counts are computed, so the three can never disagree.
 */
#ifndef GPTOSS_SAFETENSORS_H
#define GPTOSS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include "common.h"
#include "model.h"

#define GPTOSS_ST_MAX_DIMS 8
/* The reference safetensors implementation refuses headers above 100 MB. */
#define GPTOSS_ST_MAX_HEADER 100000000ull

typedef enum gptoss_st_dtype
{
	GPTOSS_ST_BOOL,
	GPTOSS_ST_U8,
	GPTOSS_ST_I8,
	GPTOSS_ST_F8_E5M2,
	GPTOSS_ST_F8_E4M3,
	GPTOSS_ST_F8_E8M0,
	GPTOSS_ST_I16,
	GPTOSS_ST_U16,
	GPTOSS_ST_F16,
	GPTOSS_ST_BF16,
	GPTOSS_ST_I32,
	GPTOSS_ST_U32,
	GPTOSS_ST_F32,
	GPTOSS_ST_I64,
	GPTOSS_ST_U64,
	GPTOSS_ST_F64,
	GPTOSS_ST_N_DTYPES
} gptoss_st_dtype;

/* One tensor entry of a parsed header. */
typedef struct gptoss_st_tensor
{
	char	   *name;
	gptoss_st_dtype dtype;
	int			ndim;
	int64_t		shape[GPTOSS_ST_MAX_DIMS];	/* [ndim] */
	uint64_t	offset;			/* first data byte, counted from the start of the file */
	uint64_t	nbytes;			/* numel * dtype size */
} gptoss_st_tensor;

/* A parsed safetensors header; the tensors refer to the buffer it was parsed from. */
typedef struct gptoss_st_file
{
	gptoss_st_tensor *tensors;	/* [n_tensors], sorted by name */
	int			n_tensors;
	uint64_t	data_start;		/* 8 + header length */
} gptoss_st_file;

/*
 * Parses and validates a whole safetensors file image buf[0..size): header
 * length within the file and under GPTOSS_ST_MAX_HEADER, JSON object without
 * duplicate keys, known dtypes, shapes, offsets inside the data section and
 * matching dtype x shape, no two tensors overlapping.  what names the file
 * in error messages.  On success fills *out (free with gptoss_st_free).
 */
int			gptoss_st_parse(const uint8_t *buf, size_t size, const char *what,
							gptoss_st_file *out, gptoss_error *err);
void		gptoss_st_free(gptoss_st_file *file);

/* The tensor called name, or NULL. */
const gptoss_st_tensor *gptoss_st_find(const gptoss_st_file *file, const char *name);

/* "BF16", "U8", ... */
const char *gptoss_st_dtype_name(gptoss_st_dtype dtype);

/* Bytes per element. */
size_t		gptoss_st_dtype_size(gptoss_st_dtype dtype);

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
 * Builds the full tensor table of spec section 2.1 for cfg: the embedding,
 * 19 tensors per layer, the final norm and lm_head, in that order.  The
 * caller frees *out.  Returns -1 only when out of memory.
 */
int			gptoss_tensor_table(const gptoss_config *cfg, gptoss_tensor_spec **out, int *n_out,
								gptoss_error *err);

/*
 * gptoss_synth_write with an explicit number of safetensors shards
 * (n_shards >= 1; 1 writes a single model.safetensors, more write the HF
 * model-NNNNN-of-MMMMM files plus model.safetensors.index.json); n_shards = 0
 * picks the count gptoss_synth_write uses.  Tensor bytes do not depend on
 * the sharding.
 */
int			gptoss_synth_write_shards(const gptoss_config *cfg, const char *out_dir, uint64_t seed,
									  const char *tokenizer_file, int n_shards,
									  gptoss_progress_fn progress, void *progress_arg,
									  gptoss_error *err);

#endif							/* GPTOSS_SAFETENSORS_H */
