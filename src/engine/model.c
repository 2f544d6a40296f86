/*
 * model.c: config.json parsing, the gpt-oss tensor table and the checkpoint
 * loader.
 *
 * Plan: parse config.json with jansson into gptoss_config, rejecting values
 * the engine cannot run with an error that names the field.  From the config
 * build the table of every tensor the checkpoint must hold (checkpoint.h;
 * docs/architecture.md, Checkpoint).  Then find the safetensors files (the
 * shards named by model.safetensors.index.json, else one
 * model.safetensors), mmap each one
 * read-only, parse its header with the strict parser of safetensors.c, and
 * resolve every table entry to a tensor of exactly the expected dtype and
 * shape; the weight views of gptoss_model point straight into the mappings.
 * Nothing is copied, so a 13 GB checkpoint "loads" in the time it takes to
 * map it; madvise(WILLNEED) starts the page-cache reads in the background.
 */
#include "model.h"
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <jansson.h>

/* E2M1 code -> value: bit 3 sign, bits 2..1 exponent, bit 0 mantissa (docs/architecture.md, MXFP4). */
const float gptoss_fp4_values[16] = {
	+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
	-0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f
};

/* Upper bounds that keep every size product far inside int64_t. */
#define MAX_HIDDEN		(1 << 16)
#define MAX_INTERMEDIATE (1 << 18)
#define MAX_VOCAB		(1 << 22)
#define MAX_HEADS		1024
#define MAX_HEAD_DIM	1024
#define MAX_EXPERTS		4096

/* ---------------------------------------------------------------- config */

/*
 * Reads an integer field.  Integral JSON reals (2880.0) are accepted since
 * some tools write them.  Returns 1 when found, 0 when absent (or null), -1
 * on a type error.
 */
static int
config_int(const char *path, json_t *obj, const char *key, int *out, gptoss_error *err)
{
	json_t	   *v = json_object_get(obj, key);
	double		d;

	if (!v || json_is_null(v))
		return 0;
	if (json_is_integer(v))
		d = (double) json_integer_value(v);
	else if (json_is_real(v))
		d = json_real_value(v);
	else
		return gptoss_errorf(err, "%s: %s must be an integer", path, key);
	if (d != floor(d) || d < -2147483648.0 || d > 2147483647.0)
		return gptoss_errorf(err, "%s: %s must be an integer", path, key);
	*out = (int) d;
	return 1;
}

/* Reads a number field; same return convention as config_int. */
static int
config_num(const char *path, json_t *obj, const char *key, double *out, gptoss_error *err)
{
	json_t	   *v = json_object_get(obj, key);

	if (!v || json_is_null(v))
		return 0;
	if (!json_is_number(v))
		return gptoss_errorf(err, "%s: %s must be a number", path, key);
	*out = json_number_value(v);
	return 1;
}

/* Reads a required integer field in [lo, hi]. */
static int
config_required_int(const char *path, json_t *obj, const char *key, int lo, int hi,
					int *out, gptoss_error *err)
{
	int			r = config_int(path, obj, key, out, err);

	if (r < 0)
		return -1;
	if (r == 0)
		return gptoss_errorf(err, "%s: missing %s", path, key);
	if (*out < lo || *out > hi)
		return gptoss_errorf(err, "%s: %s (%d) must be between %d and %d", path, key, *out, lo, hi);
	return 0;
}

/* Reads an optional integer field in [lo, hi], keeping *out when absent. */
static int
config_optional_int(const char *path, json_t *obj, const char *key, int lo, int hi,
					int *out, gptoss_error *err)
{
	int			r = config_int(path, obj, key, out, err);

	if (r < 0)
		return -1;
	if (r == 1 && (*out < lo || *out > hi))
		return gptoss_errorf(err, "%s: %s (%d) must be between %d and %d", path, key, *out, lo, hi);
	return 0;
}

/* Reads an optional positive finite number, keeping *out when absent. */
static int
config_positive(const char *path, json_t *obj, const char *key, float *out, gptoss_error *err)
{
	double		d;
	int			r = config_num(path, obj, key, &d, err);

	if (r < 0)
		return -1;
	if (r == 1)
	{
		if (!(d > 0) || !isfinite(d) || d > 3.0e38)
			return gptoss_errorf(err, "%s: %s (%g) must be a positive number", path, key, d);
		*out = (float) d;
	}
	return 0;
}

/* Reads an optional boolean field, keeping *out when absent. */
static int
config_bool(const char *path, json_t *obj, const char *key, bool *out, gptoss_error *err)
{
	json_t	   *v = json_object_get(obj, key);

	if (!v || json_is_null(v))
		return 0;
	if (!json_is_boolean(v))
		return gptoss_errorf(err, "%s: %s must be true or false", path, key);
	*out = json_is_true(v);
	return 0;
}

/*
 * Reads a token id that may be an int or a list of ints (the first one
 * counts, as for the stop set the engine takes from the tokenizer anyway).
 */
static int
config_token_id(const char *path, json_t *root, const char *key, int vocab, int *out,
				gptoss_error *err)
{
	json_t	   *v = json_object_get(root, key);
	json_int_t	id;

	if (!v || json_is_null(v))
		return 0;
	if (json_is_array(v))
	{
		if (json_array_size(v) == 0)
			return gptoss_errorf(err, "%s: %s is an empty list", path, key);
		v = json_array_get(v, 0);
	}
	if (!json_is_integer(v))
		return gptoss_errorf(err, "%s: %s must be an integer or a list of integers", path, key);
	id = json_integer_value(v);
	if (id < 0 || id >= vocab)
		return gptoss_errorf(err, "%s: %s (%lld) must be a token id below vocab_size (%d)",
							 path, key, (long long) id, vocab);
	*out = (int) id;
	return 0;
}

/* Parses rope_scaling: absent/null or rope_type "default" mean plain RoPE. */
static int
config_rope_scaling(const char *path, json_t *root, gptoss_config *cfg, gptoss_error *err)
{
	json_t	   *rs = json_object_get(root, "rope_scaling");
	json_t	   *type;
	const char *type_name;
	static const char *const unsupported[] = {"attention_factor", "mscale", "mscale_all_dim"};

	cfg->rope_factor = 1.0f;
	cfg->rope_beta_fast = 32.0f;
	cfg->rope_beta_slow = 1.0f;
	/* HF's YaRN falls back to max_position_embeddings when the key is absent. */
	cfg->rope_original_max_pos = cfg->max_position_embeddings;
	/* HF treats an absent "truncate" as true (floor/ceil of the ramp bounds). */
	cfg->rope_truncate = true;
	if (!rs || json_is_null(rs))
		return 0;
	if (!json_is_object(rs))
		return gptoss_errorf(err, "%s: rope_scaling must be an object", path);
	type = json_object_get(rs, "rope_type");
	if (!type)
		type = json_object_get(rs, "type");		/* older HF key */
	if (!json_is_string(type))
		return gptoss_errorf(err, "%s: rope_scaling.rope_type must be a string", path);
	type_name = json_string_value(type);
	if (strcmp(type_name, "default") == 0)
		return 0;
	if (strcmp(type_name, "yarn") != 0)
		return gptoss_errorf(err, "%s: rope_scaling.rope_type \"%.32s\" is not supported "
							 "(only yarn)", path, type_name);
	for (size_t i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++)
		if (json_object_get(rs, unsupported[i]))
			return gptoss_errorf(err, "%s: rope_scaling.%s is not supported (gpt-oss uses the "
								 "default YaRN attention factor)", path, unsupported[i]);
	if (config_positive(path, rs, "factor", &cfg->rope_factor, err) != 0 ||
		config_positive(path, rs, "beta_fast", &cfg->rope_beta_fast, err) != 0 ||
		config_positive(path, rs, "beta_slow", &cfg->rope_beta_slow, err) != 0 ||
		config_optional_int(path, rs, "original_max_position_embeddings", 1, INT32_MAX,
							&cfg->rope_original_max_pos, err) != 0 ||
		config_bool(path, rs, "truncate", &cfg->rope_truncate, err) != 0)
		return -1;
	if (!json_object_get(rs, "factor"))
		return gptoss_errorf(err, "%s: rope_scaling.factor is missing", path);
	if (cfg->rope_factor < 1.0f)
		return gptoss_errorf(err, "%s: rope_scaling.factor (%g) must be >= 1", path,
							 cfg->rope_factor);
	if (cfg->rope_beta_fast < cfg->rope_beta_slow)
		return gptoss_errorf(err, "%s: rope_scaling.beta_fast (%g) must be >= beta_slow (%g)",
							 path, cfg->rope_beta_fast, cfg->rope_beta_slow);
	return 0;
}

/* Parses layer_types, or alternates sliding (even l) / full (odd l) when absent. */
static int
config_layer_types(const char *path, json_t *root, gptoss_config *cfg, gptoss_error *err)
{
	json_t	   *types = json_object_get(root, "layer_types");

	if (!types || json_is_null(types))
	{
		for (int l = 0; l < cfg->num_layers; l++)
			cfg->layer_sliding[l] = (l % 2 == 0);
		return 0;
	}
	if (!json_is_array(types))
		return gptoss_errorf(err, "%s: layer_types must be a list", path);
	if (json_array_size(types) != (size_t) cfg->num_layers)
		return gptoss_errorf(err, "%s: layer_types has %zu entries, num_hidden_layers is %d",
							 path, json_array_size(types), cfg->num_layers);
	for (int l = 0; l < cfg->num_layers; l++)
	{
		const char *s = json_string_value(json_array_get(types, l));

		if (s && strcmp(s, "sliding_attention") == 0)
			cfg->layer_sliding[l] = true;
		else if (s && strcmp(s, "full_attention") == 0)
			cfg->layer_sliding[l] = false;
		else
			return gptoss_errorf(err, "%s: layer_types[%d] must be \"sliding_attention\" or "
								 "\"full_attention\"", path, l);
	}
	return 0;
}

/* Checks the fields that are only descriptive but would mean a different model. */
static int
config_check_model_kind(const char *path, json_t *root, gptoss_error *err)
{
	json_t	   *v = json_object_get(root, "model_type");
	json_t	   *q = json_object_get(root, "quantization_config");
	bool		flag;

	if (v && !(json_is_string(v) && strcmp(json_string_value(v), "gpt_oss") == 0))
		return gptoss_errorf(err, "%s: model_type must be \"gpt_oss\"", path);
	if (q && !json_is_null(q))
	{
		json_t	   *m = json_object_get(q, "quant_method");

		if (!json_is_object(q) || !json_is_string(m) ||
			strcmp(json_string_value(m), "mxfp4") != 0)
			return gptoss_errorf(err, "%s: quantization_config.quant_method must be \"mxfp4\" "
								 "(experts are read as MXFP4 blocks and scales)", path);
	}
	flag = false;
	if (config_bool(path, root, "tie_word_embeddings", &flag, err) != 0)
		return -1;
	if (flag)
		return gptoss_errorf(err, "%s: tie_word_embeddings true is not supported (gpt-oss has "
							 "a separate lm_head)", path);
	flag = true;
	if (config_bool(path, root, "attention_bias", &flag, err) != 0)
		return -1;
	if (!flag)
		return gptoss_errorf(err, "%s: attention_bias false is not supported (gpt-oss has "
							 "q/k/v/o biases)", path);
	return 0;
}

/* Reads the experts-per-token count from either key; both must agree. */
static int
config_experts_per_token(const char *path, json_t *root, gptoss_config *cfg, gptoss_error *err)
{
	int			a = 0,
				b = 0;
	int			ra = config_int(path, root, "num_experts_per_tok", &a, err);
	int			rb;

	if (ra < 0)
		return -1;
	rb = config_int(path, root, "experts_per_token", &b, err);
	if (rb < 0)
		return -1;
	if (!ra && !rb)
		return gptoss_errorf(err, "%s: missing num_experts_per_tok (or experts_per_token)", path);
	if (ra && rb && a != b)
		return gptoss_errorf(err, "%s: num_experts_per_tok (%d) and experts_per_token (%d) "
							 "disagree", path, a, b);
	cfg->experts_per_token = ra ? a : b;
	if (cfg->experts_per_token < 1 || cfg->experts_per_token > cfg->num_experts)
		return gptoss_errorf(err, "%s: num_experts_per_tok (%d) must be between 1 and "
							 "num_local_experts (%d)", path, cfg->experts_per_token,
							 cfg->num_experts);
	return 0;
}

/* Fills cfg from a parsed config.json; path prefixes the messages. */
static int
config_from_json(const char *path, json_t *root, gptoss_config *cfg, gptoss_error *err)
{
	memset(cfg, 0, sizeof(*cfg));
	if (!json_is_object(root))
		return gptoss_errorf(err, "%s: not a JSON object", path);
	if (config_check_model_kind(path, root, err) != 0)
		return -1;
	if (config_required_int(path, root, "hidden_size", 32, MAX_HIDDEN, &cfg->hidden_size, err) ||
		config_required_int(path, root, "num_hidden_layers", 1, GPTOSS_MAX_LAYERS,
							&cfg->num_layers, err) ||
		config_required_int(path, root, "num_attention_heads", 1, MAX_HEADS, &cfg->num_heads, err) ||
		config_required_int(path, root, "num_key_value_heads", 1, MAX_HEADS,
							&cfg->num_kv_heads, err) ||
		config_required_int(path, root, "num_local_experts", 1, MAX_EXPERTS,
							&cfg->num_experts, err) ||
		config_required_int(path, root, "intermediate_size", 32, MAX_INTERMEDIATE,
							&cfg->intermediate_size, err) ||
		config_required_int(path, root, "vocab_size", 1, MAX_VOCAB, &cfg->vocab_size, err))
		return -1;
	if (config_experts_per_token(path, root, cfg, err) != 0)
		return -1;
	if (cfg->hidden_size % 32 != 0)
		return gptoss_errorf(err, "%s: hidden_size (%d) must be a multiple of 32 (MXFP4 blocks)",
							 path, cfg->hidden_size);
	if (cfg->intermediate_size % 32 != 0)
		return gptoss_errorf(err, "%s: intermediate_size (%d) must be a multiple of 32 (MXFP4 "
							 "blocks)", path, cfg->intermediate_size);
	if (cfg->num_heads % cfg->num_kv_heads != 0)
		return gptoss_errorf(err, "%s: num_key_value_heads (%d) must divide num_attention_heads "
							 "(%d)", path, cfg->num_kv_heads, cfg->num_heads);

	/* head_dim defaults to hidden/heads, as in HF. */
	if (!json_object_get(root, "head_dim") || json_is_null(json_object_get(root, "head_dim")))
	{
		if (cfg->hidden_size % cfg->num_heads != 0)
			return gptoss_errorf(err, "%s: head_dim is missing and num_attention_heads (%d) does "
								 "not divide hidden_size (%d)", path, cfg->num_heads,
								 cfg->hidden_size);
		cfg->head_dim = cfg->hidden_size / cfg->num_heads;
	}
	else if (config_required_int(path, root, "head_dim", 2, MAX_HEAD_DIM, &cfg->head_dim, err))
		return -1;
	if (cfg->head_dim % 2 != 0)
		return gptoss_errorf(err, "%s: head_dim (%d) must be even (RoPE pairs)", path,
							 cfg->head_dim);

	/* Defaults for the rest are GptOssConfig's (HF transformers). */
	cfg->sliding_window = 128;
	cfg->max_position_embeddings = 131072;
	cfg->initial_context_length = 4096;
	cfg->swiglu_limit = 7.0f;
	cfg->rms_norm_eps = 1e-5f;
	cfg->rope_theta = 150000.0f;
	/* harmony's <|return|> and <|endoftext|>: every gpt-oss vocabulary has them */
	cfg->eos_token_id = 200002 < cfg->vocab_size ? 200002 : cfg->vocab_size - 1;
	cfg->pad_token_id = 199999 < cfg->vocab_size ? 199999 : cfg->vocab_size - 1;
	if (config_optional_int(path, root, "sliding_window", 1, INT32_MAX, &cfg->sliding_window, err) ||
		config_optional_int(path, root, "max_position_embeddings", 1, INT32_MAX,
							&cfg->max_position_embeddings, err) ||
		config_optional_int(path, root, "initial_context_length", 1, INT32_MAX,
							&cfg->initial_context_length, err) ||
		config_positive(path, root, "swiglu_limit", &cfg->swiglu_limit, err) ||
		config_positive(path, root, "rms_norm_eps", &cfg->rms_norm_eps, err) ||
		config_positive(path, root, "rope_theta", &cfg->rope_theta, err) ||
		config_token_id(path, root, "eos_token_id", cfg->vocab_size, &cfg->eos_token_id, err) ||
		config_token_id(path, root, "pad_token_id", cfg->vocab_size, &cfg->pad_token_id, err))
		return -1;
	if (cfg->rope_theta <= 1.0f)
		return gptoss_errorf(err, "%s: rope_theta (%g) must be > 1", path, cfg->rope_theta);
	if (config_rope_scaling(path, root, cfg, err) != 0)
		return -1;
	/* gptoss synth marks its checkpoints: their answers are noise, not language. */
	cfg->random_weights = json_is_true(json_object_get(root, "gptoss_random_weights"));
	return config_layer_types(path, root, cfg, err);
}

/* Checks that the model directory exists before any file in it is opened. */
int
gptoss_model_dir_check(const char *dir, gptoss_error *err)
{
	struct stat st;

	if (!dir || !*dir)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "model directory is not set");
	if (stat(dir, &st) != 0)
		return gptoss_errorf(err, "model directory %s: %s", dir, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return gptoss_errorf(err, "model directory %s: not a directory", dir);
	return 0;
}

/* Parses and validates dir/config.json into cfg. */
int
gptoss_config_load(const char *dir, gptoss_config *cfg, gptoss_error *err)
{
	char		path[4096];
	json_t	   *root;
	json_error_t jerr;
	int			rc;

	if (gptoss_model_dir_check(dir, err) < 0)
		return -1;
	if (snprintf(path, sizeof(path), "%s/config.json", dir) >= (int) sizeof(path))
		return gptoss_errorf(err, "model directory path too long");
	if (access(path, R_OK) != 0)
		return gptoss_errorf(err, "%s: %s", path, strerror(errno));
	root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return gptoss_errorf(err, "%s: invalid JSON: %s (line %d)", path, jerr.text, jerr.line);
	rc = config_from_json(path, root, cfg, err);
	json_decref(root);
	return rc;
}

/* ---------------------------------------------------------- tensor table */

/* Appends one table entry with the given name, role, dtype and shape. */
static void
table_add(gptoss_tensor_spec *t, int *n, int layer, const char *suffix, gptoss_tensor_role role,
		  gptoss_st_dtype dtype, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
	gptoss_tensor_spec *s = &t[(*n)++];
	int64_t		numel = 1;

	memset(s, 0, sizeof(*s));
	if (layer >= 0)
		snprintf(s->name, sizeof(s->name), "model.layers.%d.%s", layer, suffix);
	else
		snprintf(s->name, sizeof(s->name), "%s", suffix);
	s->role = role;
	s->layer = layer;
	s->dtype = dtype;
	s->ndim = ndim;
	s->shape[0] = d0;
	s->shape[1] = d1;
	s->shape[2] = d2;
	s->shape[3] = d3;
	for (int d = 0; d < ndim; d++)
		numel *= s->shape[d];
	s->nbytes = numel * (int64_t) gptoss_st_dtype_size(dtype);
	if (role == GPTOSS_T_GATE_UP_BLOCKS || role == GPTOSS_T_DOWN_BLOCKS)
		s->n_params = 2 * numel;
	else if (role == GPTOSS_T_GATE_UP_SCALES || role == GPTOSS_T_DOWN_SCALES)
		s->n_params = 0;
	else
		s->n_params = numel;
}

/* Builds the tensor table of a gpt-oss checkpoint for cfg (docs/architecture.md, Checkpoint). */
int
gptoss_tensor_table(const gptoss_config *cfg, gptoss_tensor_spec **out, int *n_out,
					gptoss_error *err)
{
	const int64_t H = cfg->hidden_size,
				V = cfg->vocab_size,
				E = cfg->num_experts,
				I = cfg->intermediate_size;
	const int64_t QD = (int64_t) cfg->num_heads * cfg->head_dim,
				KVD = (int64_t) cfg->num_kv_heads * cfg->head_dim;
	gptoss_tensor_spec *t = calloc((size_t) (19 * cfg->num_layers + 3), sizeof(*t));
	int			n = 0;

	if (!t)
		return gptoss_errorf(err, "out of memory building the tensor table");
	table_add(t, &n, -1, "model.embed_tokens.weight", GPTOSS_T_EMBEDDING, GPTOSS_ST_BF16, 2, V, H, 0, 0);
	for (int l = 0; l < cfg->num_layers; l++)
	{
		table_add(t, &n, l, "input_layernorm.weight", GPTOSS_T_ATTN_NORM, GPTOSS_ST_BF16, 1, H, 0, 0, 0);
		table_add(t, &n, l, "self_attn.q_proj.weight", GPTOSS_T_Q_WEIGHT, GPTOSS_ST_BF16, 2, QD, H, 0, 0);
		table_add(t, &n, l, "self_attn.q_proj.bias", GPTOSS_T_Q_BIAS, GPTOSS_ST_BF16, 1, QD, 0, 0, 0);
		table_add(t, &n, l, "self_attn.k_proj.weight", GPTOSS_T_K_WEIGHT, GPTOSS_ST_BF16, 2, KVD, H, 0, 0);
		table_add(t, &n, l, "self_attn.k_proj.bias", GPTOSS_T_K_BIAS, GPTOSS_ST_BF16, 1, KVD, 0, 0, 0);
		table_add(t, &n, l, "self_attn.v_proj.weight", GPTOSS_T_V_WEIGHT, GPTOSS_ST_BF16, 2, KVD, H, 0, 0);
		table_add(t, &n, l, "self_attn.v_proj.bias", GPTOSS_T_V_BIAS, GPTOSS_ST_BF16, 1, KVD, 0, 0, 0);
		table_add(t, &n, l, "self_attn.o_proj.weight", GPTOSS_T_O_WEIGHT, GPTOSS_ST_BF16, 2, H, QD, 0, 0);
		table_add(t, &n, l, "self_attn.o_proj.bias", GPTOSS_T_O_BIAS, GPTOSS_ST_BF16, 1, H, 0, 0, 0);
		table_add(t, &n, l, "self_attn.sinks", GPTOSS_T_SINKS, GPTOSS_ST_BF16, 1, cfg->num_heads, 0, 0, 0);
		table_add(t, &n, l, "post_attention_layernorm.weight", GPTOSS_T_MLP_NORM, GPTOSS_ST_BF16, 1, H, 0, 0, 0);
		table_add(t, &n, l, "mlp.router.weight", GPTOSS_T_ROUTER_WEIGHT, GPTOSS_ST_BF16, 2, E, H, 0, 0);
		table_add(t, &n, l, "mlp.router.bias", GPTOSS_T_ROUTER_BIAS, GPTOSS_ST_BF16, 1, E, 0, 0, 0);
		table_add(t, &n, l, "mlp.experts.gate_up_proj_blocks", GPTOSS_T_GATE_UP_BLOCKS, GPTOSS_ST_U8, 4,
				  E, 2 * I, H / 32, 16);
		table_add(t, &n, l, "mlp.experts.gate_up_proj_scales", GPTOSS_T_GATE_UP_SCALES, GPTOSS_ST_U8, 3,
				  E, 2 * I, H / 32, 0);
		table_add(t, &n, l, "mlp.experts.gate_up_proj_bias", GPTOSS_T_GATE_UP_BIAS, GPTOSS_ST_BF16, 2,
				  E, 2 * I, 0, 0);
		table_add(t, &n, l, "mlp.experts.down_proj_blocks", GPTOSS_T_DOWN_BLOCKS, GPTOSS_ST_U8, 4,
				  E, H, I / 32, 16);
		table_add(t, &n, l, "mlp.experts.down_proj_scales", GPTOSS_T_DOWN_SCALES, GPTOSS_ST_U8, 3,
				  E, H, I / 32, 0);
		table_add(t, &n, l, "mlp.experts.down_proj_bias", GPTOSS_T_DOWN_BIAS, GPTOSS_ST_BF16, 2, E, H, 0, 0);
	}
	table_add(t, &n, -1, "model.norm.weight", GPTOSS_T_FINAL_NORM, GPTOSS_ST_BF16, 1, H, 0, 0, 0);
	table_add(t, &n, -1, "lm_head.weight", GPTOSS_T_LM_HEAD, GPTOSS_ST_BF16, 2, V, H, 0, 0);
	*out = t;
	*n_out = n;
	return 0;
}

/* Whether a role's parameters belong to one expert (counted K/E per token). */
static bool
role_is_expert(gptoss_tensor_role role)
{
	return role == GPTOSS_T_GATE_UP_BLOCKS || role == GPTOSS_T_GATE_UP_BIAS ||
		role == GPTOSS_T_DOWN_BLOCKS || role == GPTOSS_T_DOWN_BIAS;
}

/* Totals of one tensor table: params, per-token params and bytes. */
static void
table_sizes(const gptoss_config *cfg, const gptoss_tensor_spec *t, int n,
			int64_t *n_params, int64_t *n_active, int64_t *bytes)
{
	int64_t		params = 0,
				active = 0,
				total_bytes = 0;

	for (int i = 0; i < n; i++)
	{
		params += t[i].n_params;
		total_bytes += t[i].nbytes;
		if (t[i].role == GPTOSS_T_EMBEDDING)
			continue;			/* a row lookup, not a matmul */
		if (role_is_expert(t[i].role))
			active += t[i].n_params / cfg->num_experts * cfg->experts_per_token;
		else
			active += t[i].n_params;
	}
	if (n_params)
		*n_params = params;
	if (n_active)
		*n_active = active;
	if (bytes)
		*bytes = total_bytes;
}

/* Parameter and byte totals of cfg's checkpoint, from its tensor table. */
void
gptoss_config_sizes(const gptoss_config *cfg, int64_t *n_params, int64_t *n_active_params,
					int64_t *tensor_bytes)
{
	gptoss_tensor_spec *t;
	int			n;

	if (gptoss_tensor_table(cfg, &t, &n, NULL) != 0)
	{
		/* out of memory: report zeros rather than garbage */
		table_sizes(cfg, NULL, 0, n_params, n_active_params, tensor_bytes);
		return;
	}
	table_sizes(cfg, t, n, n_params, n_active_params, tensor_bytes);
	free(t);
}

/* ---------------------------------------------------------------- loader */

/* One safetensors file of the checkpoint while loading. */
typedef struct shard
{
	char	   *file;			/* name inside the checkpoint directory */
	gptoss_st_file header;		/* parsed header; offsets are into the mapping */
} shard;

/* Loader state, freed as a whole on success and on every error path. */
typedef struct loader
{
	const char *dir;
	gptoss_model *model;
	shard	   *shards;			/* [n_shards], model->mappings[i] is shard i's mapping */
	int			n_shards;
	const char **tensor_shard_file;	/* [n_specs] file name per expected tensor */
	json_t	   *index;			/* parsed index.json, or NULL for a single file */
	gptoss_tensor_spec *specs;	/* [n_specs] */
	int			n_specs;
	gptoss_progress_fn progress;
	void	   *progress_arg;
} loader;

/* Reports progress when the caller asked for it. */
static void
report(loader *ld, double fraction, const char *what)
{
	if (ld->progress)
		ld->progress(ld->progress_arg, fraction, what);
}

/* Whether a shard file name from the index stays inside the checkpoint directory. */
static bool
shard_name_ok(const char *name)
{
	return name[0] != '\0' && strchr(name, '/') == NULL && strcmp(name, ".") != 0 &&
		strcmp(name, "..") != 0;
}

/* Returns the shard index for file, adding it to ld->shards when new; -1 on OOM. */
static int
shard_lookup(loader *ld, const char *file, gptoss_error *err)
{
	shard	   *grown;

	for (int i = 0; i < ld->n_shards; i++)
		if (strcmp(ld->shards[i].file, file) == 0)
			return i;
	grown = realloc(ld->shards, sizeof(*grown) * (size_t) (ld->n_shards + 1));
	if (!grown)
		return gptoss_errorf(err, "out of memory");
	ld->shards = grown;
	memset(&ld->shards[ld->n_shards], 0, sizeof(shard));
	ld->shards[ld->n_shards].file = strdup(file);
	if (!ld->shards[ld->n_shards].file)
		return gptoss_errorf(err, "out of memory");
	return ld->n_shards++;
}

/* qsort/bsearch on an array of spec pointers by name. */
static int
cmp_spec_name(const void *a, const void *b)
{
	return strcmp((*(const gptoss_tensor_spec *const *) a)->name,
				  (*(const gptoss_tensor_spec *const *) b)->name);
}

/* Whether name is one of the expected tensors (sorted holds pointers sorted by name). */
static bool
spec_known(const gptoss_tensor_spec **sorted, int n, const char *name)
{
	gptoss_tensor_spec key;
	const gptoss_tensor_spec *keyp = &key;

	snprintf(key.name, sizeof(key.name), "%s", name);
	if (strlen(name) >= sizeof(key.name))
		return false;
	return bsearch(&keyp, sorted, (size_t) n, sizeof(*sorted), cmp_spec_name) != NULL;
}

/*
 * Decides which file holds each expected tensor: the weight_map of
 * model.safetensors.index.json when present, else model.safetensors.
 */
static int
resolve_files(loader *ld, const gptoss_tensor_spec **sorted, gptoss_error *err)
{
	char		path[4096];
	json_error_t jerr;
	json_t	   *wm;
	const char *key;
	json_t	   *value;

	ld->tensor_shard_file = calloc((size_t) ld->n_specs, sizeof(*ld->tensor_shard_file));
	if (!ld->tensor_shard_file)
		return gptoss_errorf(err, "out of memory");
	snprintf(path, sizeof(path), "%s/model.safetensors.index.json", ld->dir);
	if (access(path, F_OK) != 0)
	{
		snprintf(path, sizeof(path), "%s/model.safetensors", ld->dir);
		if (access(path, F_OK) != 0)
			return gptoss_errorf(err, "%s: no model.safetensors or model.safetensors.index.json",
								 ld->dir);
		for (int i = 0; i < ld->n_specs; i++)
			ld->tensor_shard_file[i] = "model.safetensors";
		return shard_lookup(ld, "model.safetensors", err) < 0 ? -1 : 0;
	}

	ld->index = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
	if (!ld->index)
		return gptoss_errorf(err, "%s: invalid JSON: %s (line %d)", path, jerr.text, jerr.line);
	wm = json_object_get(ld->index, "weight_map");
	if (!json_is_object(wm))
		return gptoss_errorf(err, "%s: missing \"weight_map\" object", path);
	/*
	 * A name we do not expect means a different model (or a different
	 * export, e.g. dequantized experts): refuse rather than silently ignore
	 * weights the forward pass would then not use.
	 */
	json_object_foreach(wm, key, value)
	{
		if (!spec_known(sorted, ld->n_specs, key))
			return gptoss_errorf(err, "%s: unexpected tensor %.200s (not part of a gpt-oss "
								 "checkpoint with this config.json)", path, key);
		if (!json_is_string(value) || !shard_name_ok(json_string_value(value)))
			return gptoss_errorf(err, "%s: weight_map entry for %.200s is not a file name in "
								 "the checkpoint directory", path, key);
	}
	for (int i = 0; i < ld->n_specs; i++)
	{
		json_t	   *file = json_object_get(wm, ld->specs[i].name);

		if (!file)
			return gptoss_errorf(err, "%s: weight_map has no entry for tensor %s", path,
								 ld->specs[i].name);
		ld->tensor_shard_file[i] = json_string_value(file);
		if (shard_lookup(ld, ld->tensor_shard_file[i], err) < 0)
			return -1;
	}
	return 0;
}

/* Opens, maps and parses one shard into model->mappings[i]. */
static int
map_shard(loader *ld, int i, gptoss_error *err)
{
	char		path[4096];
	struct stat st;
	int			fd;
	void	   *addr;
	gptoss_mapping *m = &ld->model->mappings[i];

	snprintf(path, sizeof(path), "%s/%s", ld->dir, ld->shards[i].file);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return gptoss_errorf(err, "%s: %s", path, strerror(errno));
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
	{
		close(fd);
		return gptoss_errorf(err, "%s: not a regular file", path);
	}
	if (st.st_size < 8)
	{
		close(fd);
		return gptoss_errorf(err, "%s: file too small (%lld bytes) to be a safetensors file",
							 path, (long long) st.st_size);
	}
	addr = mmap(NULL, (size_t) st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (addr == MAP_FAILED)
		return gptoss_errorf(err, "%s: mmap failed: %s", path, strerror(errno));
	m->addr = addr;
	m->size = (size_t) st.st_size;
	ld->model->n_mappings = i + 1;
	/* Start reading the weights into the page cache while we validate. */
	madvise(addr, m->size, MADV_WILLNEED);
	if (gptoss_st_parse(addr, m->size, path, &ld->shards[i].header, err) != 0)
		return -1;
	return 0;
}

/* Formats a shape as "[a, b, c]". */
static void
format_shape(char *buf, size_t size, int ndim, const int64_t *shape)
{
	size_t		used = 0;

	used += (size_t) snprintf(buf, size, "[");
	for (int d = 0; d < ndim && used < size; d++)
		used += (size_t) snprintf(buf + used, size - used, "%s%lld", d ? ", " : "",
								  (long long) shape[d]);
	if (used < size)
		snprintf(buf + used, size - used, "]");
}

/* Points the model's view for spec s at data. */
static void
assign_view(gptoss_model *model, const gptoss_tensor_spec *s, const uint8_t *data)
{
	const gptoss_bf16 *bf = (const gptoss_bf16 *) data;
	gptoss_layer_weights *w = s->layer >= 0 ? &model->layers[s->layer] : NULL;

	switch (s->role)
	{
		case GPTOSS_T_EMBEDDING: model->embedding = bf; break;
		case GPTOSS_T_FINAL_NORM: model->final_norm = bf; break;
		case GPTOSS_T_LM_HEAD: model->lm_head = bf; break;
		case GPTOSS_T_ATTN_NORM: w->attn_norm = bf; break;
		case GPTOSS_T_Q_WEIGHT: w->q_weight = bf; break;
		case GPTOSS_T_Q_BIAS: w->q_bias = bf; break;
		case GPTOSS_T_K_WEIGHT: w->k_weight = bf; break;
		case GPTOSS_T_K_BIAS: w->k_bias = bf; break;
		case GPTOSS_T_V_WEIGHT: w->v_weight = bf; break;
		case GPTOSS_T_V_BIAS: w->v_bias = bf; break;
		case GPTOSS_T_O_WEIGHT: w->o_weight = bf; break;
		case GPTOSS_T_O_BIAS: w->o_bias = bf; break;
		case GPTOSS_T_SINKS: w->sinks = bf; break;
		case GPTOSS_T_MLP_NORM: w->mlp_norm = bf; break;
		case GPTOSS_T_ROUTER_WEIGHT: w->router_weight = bf; break;
		case GPTOSS_T_ROUTER_BIAS: w->router_bias = bf; break;
		case GPTOSS_T_GATE_UP_BLOCKS: w->gate_up_blocks = data; break;
		case GPTOSS_T_GATE_UP_SCALES: w->gate_up_scales = data; break;
		case GPTOSS_T_GATE_UP_BIAS: w->gate_up_bias = bf; break;
		case GPTOSS_T_DOWN_BLOCKS: w->down_blocks = data; break;
		case GPTOSS_T_DOWN_SCALES: w->down_scales = data; break;
		case GPTOSS_T_DOWN_BIAS: w->down_bias = bf; break;
	}
}

/* Finds expected tensor i in its shard and checks dtype, shape and alignment. */
static int
bind_tensor(loader *ld, int i, gptoss_error *err)
{
	const gptoss_tensor_spec *s = &ld->specs[i];
	int			si = shard_lookup(ld, ld->tensor_shard_file[i], err);
	const gptoss_st_tensor *t;
	char		got[160],
				want[160];

	if (si < 0)
		return -1;
	t = gptoss_st_find(&ld->shards[si].header, s->name);
	if (!t)
		return gptoss_errorf(err, "%s/%s: missing tensor %s", ld->dir, ld->shards[si].file, s->name);
	if (t->dtype != s->dtype)
		return gptoss_errorf(err, "%s/%s: tensor %s has dtype %s, expected %s", ld->dir,
							 ld->shards[si].file, s->name, gptoss_st_dtype_name(t->dtype),
							 gptoss_st_dtype_name(s->dtype));
	if (t->ndim != s->ndim || memcmp(t->shape, s->shape, sizeof(int64_t) * (size_t) s->ndim) != 0)
	{
		format_shape(got, sizeof(got), t->ndim, t->shape);
		format_shape(want, sizeof(want), s->ndim, s->shape);
		return gptoss_errorf(err, "%s/%s: tensor %s has shape %s, expected %s from config.json",
							 ld->dir, ld->shards[si].file, s->name, got, want);
	}
	/* bf16 views are read as uint16_t: an odd address would be undefined behaviour. */
	if (t->offset % gptoss_st_dtype_size(t->dtype) != 0)
		return gptoss_errorf(err, "%s/%s: tensor %s is not aligned to its %zu-byte elements",
							 ld->dir, ld->shards[si].file, s->name,
							 gptoss_st_dtype_size(t->dtype));
	assign_view(ld->model, s, (const uint8_t *) ld->model->mappings[si].addr + t->offset);
	return 0;
}

/* Rejects tensors in a shard that the config does not call for. */
static int
check_extras(loader *ld, const gptoss_tensor_spec **sorted, int si, gptoss_error *err)
{
	const gptoss_st_file *h = &ld->shards[si].header;

	for (int j = 0; j < h->n_tensors; j++)
		if (!spec_known(sorted, ld->n_specs, h->tensors[j].name))
			return gptoss_errorf(err, "%s/%s: unexpected tensor %.200s (not part of a gpt-oss "
								 "checkpoint with this config.json)", ld->dir,
								 ld->shards[si].file, h->tensors[j].name);
	return 0;
}

/* Frees the loader's temporary state (not the model). */
static void
loader_free(loader *ld)
{
	for (int i = 0; i < ld->n_shards; i++)
	{
		gptoss_st_free(&ld->shards[i].header);
		free(ld->shards[i].file);
	}
	free(ld->shards);
	free(ld->tensor_shard_file);
	free(ld->specs);
	json_decref(ld->index);
}

/* Maps every shard and binds every expected tensor (the body of gptoss_model_load). */
static int
load_checkpoint(loader *ld, gptoss_error *err)
{
	gptoss_model *model = ld->model;
	const gptoss_tensor_spec **sorted;
	char		what[512];
	int			rc = -1;

	if (gptoss_tensor_table(&model->config, &ld->specs, &ld->n_specs, err) != 0)
		return -1;
	sorted = malloc(sizeof(*sorted) * (size_t) ld->n_specs);
	if (!sorted)
		return gptoss_errorf(err, "out of memory");
	for (int i = 0; i < ld->n_specs; i++)
		sorted[i] = &ld->specs[i];
	qsort(sorted, (size_t) ld->n_specs, sizeof(*sorted), cmp_spec_name);

	if (resolve_files(ld, sorted, err) != 0)
		goto done;
	model->mappings = calloc((size_t) ld->n_shards, sizeof(*model->mappings));
	model->layers = calloc((size_t) model->config.num_layers, sizeof(*model->layers));
	if (!model->mappings || !model->layers)
	{
		gptoss_errorf(err, "out of memory");
		goto done;
	}
	for (int i = 0; i < ld->n_shards; i++)
	{
		snprintf(what, sizeof(what), "mapping shard %d/%d (%s)", i + 1, ld->n_shards,
				 ld->shards[i].file);
		report(ld, 0.8 * i / ld->n_shards, what);
		if (map_shard(ld, i, err) != 0 || check_extras(ld, sorted, i, err) != 0)
			goto done;
	}
	report(ld, 0.8, "validating tensors");
	for (int i = 0; i < ld->n_specs; i++)
		if (bind_tensor(ld, i, err) != 0)
			goto done;
	table_sizes(&model->config, ld->specs, ld->n_specs, &model->n_params,
				&model->n_active_params, &model->tensor_bytes);
	report(ld, 1.0, "checkpoint mapped");
	rc = 0;
done:
	free(sorted);
	return rc;
}

/* Loads and validates a checkpoint directory. */
int
gptoss_model_load(const char *dir, gptoss_model **out, gptoss_progress_fn progress,
				  void *progress_arg, gptoss_error *err)
{
	loader		ld = {0};
	int			rc;

	*out = NULL;
	ld.model = calloc(1, sizeof(*ld.model));
	if (!ld.model)
		return gptoss_errorf(err, "out of memory");
	ld.dir = dir;
	ld.progress = progress;
	ld.progress_arg = progress_arg;
	report(&ld, 0.0, "reading config.json");
	rc = gptoss_config_load(dir, &ld.model->config, err);
	if (rc == 0)
	{
		ld.model->path = strdup(dir);
		rc = ld.model->path ? load_checkpoint(&ld, err) : gptoss_errorf(err, "out of memory");
	}
	loader_free(&ld);
	if (rc != 0)
	{
		gptoss_model_free(ld.model);
		return -1;
	}
	*out = ld.model;
	return 0;
}

/* Unmaps the checkpoint and frees the model. */
void
gptoss_model_free(gptoss_model *model)
{
	if (!model)
		return;
	for (int i = 0; i < model->n_mappings; i++)
		if (model->mappings[i].addr)
			munmap(model->mappings[i].addr, model->mappings[i].size);
	free(model->mappings);
	free(model->layers);
	free(model->path);
	free(model);
}
