/*
 * synth.h: deterministic random-weight gpt-oss checkpoints in the Hugging
 * Face layout (synth.c), for tests and benchmarks without the real weights.
 */
#ifndef GPTOSS_SYNTH_H
#define GPTOSS_SYNTH_H

#include <stdint.h>
#include "common.h"
#include "model.h"

/* Synthetic checkpoint presets. */
typedef enum gptoss_synth_preset
{
	GPTOSS_SYNTH_TINY,
	GPTOSS_SYNTH_20B,
	GPTOSS_SYNTH_120B,
	GPTOSS_SYNTH_TINY_ODD,		/* tiny with non-power-of-two sizes */
	GPTOSS_SYNTH_TINY_MOE		/* tiny with gpt-oss-120b's expert counts (128, top 4) */
} gptoss_synth_preset;

/* "tiny", "tiny-odd", "tiny-moe", "20b", "120b" -> preset; -1 for an unknown name. */
int			gptoss_synth_preset_from_name(const char *name, gptoss_synth_preset *out);

/* Fills cfg with the preset's configuration. */
int			gptoss_synth_config(gptoss_synth_preset preset, gptoss_config *cfg, gptoss_error *err);

/*
 * Writes a deterministic random-weight checkpoint of cfg's shapes in the HF
 * layout (config.json, safetensors shards and index) into out_dir, and copies
 * tokenizer_file into it when not NULL.
 */
int			gptoss_synth_write(const gptoss_config *cfg, const char *out_dir, uint64_t seed,
							   const char *tokenizer_file,
							   gptoss_progress_fn progress, void *progress_arg,
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

#endif							/* GPTOSS_SYNTH_H */
