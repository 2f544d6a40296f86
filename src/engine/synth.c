/*
 * synth.c: deterministic random-weight gpt-oss checkpoints in the Hugging
 * Face layout, for tests and benchmarks without the real weights.
 *
 * Plan: the tensor table of safetensors.h gives every tensor's name, dtype
 * and shape.  The tensors are split into shards of roughly equal size (one
 * model.safetensors for small models; for 20b and 120b the released 3 and 15
 * shards plus model.safetensors.index.json).  Each shard file gets its header
 * and is extended to its final size; then a pool of threads takes 4 MiB
 * chunks of tensor data from a shared counter, generates them and pwrite()s
 * them in place, so memory stays at one chunk per thread even for 120b.
 * Consecutive chunks come from different shards, so that writes into
 * different files run in parallel.
 *
 * Every value is a pure function of (seed, tensor index, element index)
 * through splitmix64, so the bytes do not depend on the thread count, the
 * chunking or the sharding.  Distributions keep a random model numerically
 * tame in fp32 and bf16 over many layers: dense weights have std
 * 1/sqrt(fan_in) (so a matmul keeps unit-scale activations), the embedding
 * and sinks are unit scale, norms are 1 plus small noise, biases are small,
 * MXFP4 nibbles are uniform over the 16 codes with E8M0 scales whose
 * exponents are randomly rounded so the dequantized rms is 1/sqrt(fan_in)
 * in expectation too.  The two products that write into the residual stream
 * (o_proj and the experts' down) are scaled down by a further 1/sqrt(2L), as
 * GPT-2 initialises them: with unit-scale writes each of L layers moved the
 * stream as much as the embedding, so a rounding-level difference that flips
 * one router choice changed the next-token argmax (HF's own bf16 run agreed
 * with its fp32 run on 30% of positions of a 20b-shape model).
 */
#include "model.h"
#include "checkpoint.h"
#include "synth.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <jansson.h>

#define CHUNK_BYTES		(4u << 20)	/* generation/write unit, a multiple of 8 */
/*
 * Shard size target: the smallest count of 4.6 GB pieces reproduces the
 * released shard counts (20b: 3, 120b: 15) and keeps tiny models in one file.
 */
#define SHARD_TARGET_BYTES 4.6e9
#define GOLDEN			0x9e3779b97f4a7c15ull
/* RMS of an E2M1 value with a uniformly random 4-bit code: sqrt(68.5 / 8). */
#define FP4_UNIFORM_RMS	2.9261749776799064

/* ------------------------------------------------------------- presets */

/* Fills the settings every preset shares (gpt-oss-20b's). */
static void
preset_common(gptoss_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->vocab_size = 201088;
	cfg->swiglu_limit = 7.0f;
	cfg->rms_norm_eps = 1e-5f;
	cfg->rope_theta = 150000.0f;
	cfg->rope_factor = 32.0f;
	cfg->rope_beta_fast = 32.0f;
	cfg->rope_beta_slow = 1.0f;
	cfg->rope_truncate = false;
	cfg->eos_token_id = 200002;
	cfg->pad_token_id = 199999;
}

/* Sets the small-model shapes shared by the tiny presets (same rope scheme, scaled down). */
static void
preset_small(gptoss_config *cfg, int hidden, int layers, int heads, int kv_heads, int experts,
			 int intermediate, int window)
{
	preset_common(cfg);
	cfg->hidden_size = hidden;
	cfg->num_layers = layers;
	cfg->num_heads = heads;
	cfg->num_kv_heads = kv_heads;
	cfg->head_dim = 16;
	cfg->num_experts = experts;
	cfg->experts_per_token = 2;
	cfg->intermediate_size = intermediate;
	cfg->sliding_window = window;
	cfg->rope_original_max_pos = 128;
	cfg->initial_context_length = 128;
	cfg->max_position_embeddings = 4096;
}

/* Fills cfg with the preset's configuration. */
int
gptoss_synth_config(gptoss_synth_preset preset, gptoss_config *cfg, gptoss_error *err)
{
	switch (preset)
	{
		case GPTOSS_SYNTH_TINY:
			preset_small(cfg, 64, 4, 4, 2, 8, 64, 8);
			break;
		case GPTOSS_SYNTH_TINY_ODD:
			preset_small(cfg, 96, 3, 6, 2, 6, 160, 6);
			break;
		case GPTOSS_SYNTH_TINY_MOE:
			/* every E- and K-sized buffer and launch of the 120b, at tiny cost */
			preset_small(cfg, 64, 4, 4, 2, 128, 64, 8);
			cfg->experts_per_token = 4;
			break;
		case GPTOSS_SYNTH_20B:
		case GPTOSS_SYNTH_120B:
			preset_common(cfg);
			cfg->hidden_size = 2880;
			cfg->num_layers = preset == GPTOSS_SYNTH_20B ? 24 : 36;
			cfg->num_heads = 64;
			cfg->num_kv_heads = 8;
			cfg->head_dim = 64;
			cfg->num_experts = preset == GPTOSS_SYNTH_20B ? 32 : 128;
			cfg->experts_per_token = 4;
			cfg->intermediate_size = 2880;
			cfg->sliding_window = 128;
			cfg->rope_original_max_pos = 4096;
			cfg->initial_context_length = 4096;
			cfg->max_position_embeddings = 131072;
			break;
		default:
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "unknown synth preset %d",
									  (int) preset);
	}
	for (int l = 0; l < cfg->num_layers; l++)
		cfg->layer_sliding[l] = (l % 2 == 0);
	return 0;
}

/* Maps a preset name to the preset. */
int
gptoss_synth_preset_from_name(const char *name, gptoss_synth_preset *out)
{
	static const struct
	{
		const char *name;
		gptoss_synth_preset preset;
	}			names[] = {
		{"tiny", GPTOSS_SYNTH_TINY}, {"tiny-odd", GPTOSS_SYNTH_TINY_ODD},
		{"tiny-moe", GPTOSS_SYNTH_TINY_MOE}, {"20b", GPTOSS_SYNTH_20B}, {"120b", GPTOSS_SYNTH_120B}
	};

	for (size_t i = 0; name && i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(name, names[i].name) == 0)
		{
			*out = names[i].preset;
			return 0;
		}
	return -1;
}

/* ------------------------------------------------------------ json files */

/*
 * A JSON number for a float field: the shortest decimal that reads back as
 * the same float (1e-05, not 9.99999975e-06), integral values as integers
 * when asked (rope_theta 150000 as HF writes it).
 */
static json_t *
json_float(float v, bool integral_as_int)
{
	char		text[32];
	double		d = (double) v;

	if (integral_as_int && v == floorf(v) && fabsf(v) < 1e15f)
		return json_integer((json_int_t) v);
	for (int digits = 6; digits <= 9; digits++)
	{
		snprintf(text, sizeof(text), "%.*g", digits, (double) v);
		if ((float) strtod(text, NULL) == v)
		{
			d = strtod(text, NULL);
			break;
		}
	}
	return json_real(d);
}

/* Writes root to path (sorted keys, indent 2, 9 significant digits: enough for a float). */
static int
write_json(const char *path, json_t *root, gptoss_error *err)
{
	int			rc;

	if (!root)
		return gptoss_errorf(err, "%s: out of memory", path);
	rc = json_dump_file(root, path, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
	json_decref(root);
	if (rc != 0)
		return gptoss_errorf(err, "%s: cannot write: %s", path, strerror(errno));
	return 0;
}

/* Builds the config.json object with every key HF writes for gpt-oss. */
static json_t *
config_json(const gptoss_config *cfg)
{
	json_t	   *root = json_object();
	json_t	   *types = json_array();
	json_t	   *rope = json_object();
	json_t	   *quant = json_object();
	json_t	   *skip = json_array();

	for (int l = 0; l < cfg->num_layers; l++)
		json_array_append_new(types, json_string(cfg->layer_sliding[l] ? "sliding_attention"
												 : "full_attention"));
	json_object_set_new(rope, "rope_type", json_string("yarn"));
	json_object_set_new(rope, "factor", json_float(cfg->rope_factor, false));
	json_object_set_new(rope, "beta_fast", json_float(cfg->rope_beta_fast, false));
	json_object_set_new(rope, "beta_slow", json_float(cfg->rope_beta_slow, false));
	json_object_set_new(rope, "original_max_position_embeddings",
						json_integer(cfg->rope_original_max_pos));
	json_object_set_new(rope, "truncate", json_boolean(cfg->rope_truncate));
	json_array_append_new(skip, json_string("model.layers.*.self_attn"));
	json_array_append_new(skip, json_string("model.layers.*.mlp.router"));
	json_array_append_new(skip, json_string("model.embed_tokens"));
	json_array_append_new(skip, json_string("lm_head"));
	json_object_set_new(quant, "modules_to_not_convert", skip);
	json_object_set_new(quant, "quant_method", json_string("mxfp4"));

	json_object_set_new(root, "architectures", json_pack("[s]", "GptOssForCausalLM"));
	json_object_set_new(root, "attention_bias", json_true());
	json_object_set_new(root, "attention_dropout", json_real(0.0));
	json_object_set_new(root, "eos_token_id", json_integer(cfg->eos_token_id));
	json_object_set_new(root, "experts_per_token", json_integer(cfg->experts_per_token));
	/* not an HF key: tells loaders (and gptoss_status()) that the weights are random */
	json_object_set_new(root, "gptoss_random_weights", json_true());
	json_object_set_new(root, "head_dim", json_integer(cfg->head_dim));
	json_object_set_new(root, "hidden_act", json_string("silu"));
	json_object_set_new(root, "hidden_size", json_integer(cfg->hidden_size));
	json_object_set_new(root, "initial_context_length", json_integer(cfg->initial_context_length));
	json_object_set_new(root, "initializer_range", json_real(0.02));
	json_object_set_new(root, "intermediate_size", json_integer(cfg->intermediate_size));
	json_object_set_new(root, "layer_types", types);
	json_object_set_new(root, "max_position_embeddings", json_integer(cfg->max_position_embeddings));
	json_object_set_new(root, "model_type", json_string("gpt_oss"));
	json_object_set_new(root, "num_attention_heads", json_integer(cfg->num_heads));
	json_object_set_new(root, "num_experts_per_tok", json_integer(cfg->experts_per_token));
	json_object_set_new(root, "num_hidden_layers", json_integer(cfg->num_layers));
	json_object_set_new(root, "num_key_value_heads", json_integer(cfg->num_kv_heads));
	json_object_set_new(root, "num_local_experts", json_integer(cfg->num_experts));
	json_object_set_new(root, "output_router_logits", json_false());
	json_object_set_new(root, "pad_token_id", json_integer(cfg->pad_token_id));
	json_object_set_new(root, "quantization_config", quant);
	json_object_set_new(root, "rms_norm_eps", json_float(cfg->rms_norm_eps, false));
	/* factor 1 is plain RoPE, which config.json spells as no rope_scaling */
	if (cfg->rope_factor != 1.0f)
		json_object_set_new(root, "rope_scaling", rope);
	else
		json_decref(rope);
	json_object_set_new(root, "rope_theta", json_float(cfg->rope_theta, true));
	json_object_set_new(root, "router_aux_loss_coef", json_real(0.9));
	json_object_set_new(root, "sliding_window", json_integer(cfg->sliding_window));
	json_object_set_new(root, "swiglu_limit", json_float(cfg->swiglu_limit, false));
	json_object_set_new(root, "tie_word_embeddings", json_false());
	json_object_set_new(root, "transformers_version", json_string("4.55.0.dev0"));
	json_object_set_new(root, "use_cache", json_true());
	json_object_set_new(root, "vocab_size", json_integer(cfg->vocab_size));
	return root;
}

/* Builds generation_config.json as released (stop ids that exist in the vocabulary). */
static json_t *
generation_config_json(const gptoss_config *cfg)
{
	json_t	   *root = json_object();
	json_t	   *eos = json_array();
	const int	extra_stops[] = {199999, 200012};	/* <|endoftext|>, <|call|> */

	json_array_append_new(eos, json_integer(cfg->eos_token_id));
	for (int i = 0; i < 2; i++)
		if (extra_stops[i] < cfg->vocab_size && extra_stops[i] != cfg->eos_token_id)
			json_array_append_new(eos, json_integer(extra_stops[i]));
	if (199998 < cfg->vocab_size)
		json_object_set_new(root, "bos_token_id", json_integer(199998));
	json_object_set_new(root, "do_sample", json_true());
	json_object_set_new(root, "eos_token_id", eos);
	json_object_set_new(root, "pad_token_id", json_integer(cfg->pad_token_id));
	json_object_set_new(root, "transformers_version", json_string("4.55.0.dev0"));
	return root;
}

/* ------------------------------------------------------- value generator */

/* splitmix64's output function: a bijective 64-bit mixer. */
static inline uint64_t
mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The random word number i of a tensor's stream (key identifies seed and tensor). */
static inline uint64_t
stream_word(uint64_t key, uint64_t i)
{
	return mix64(key + GOLDEN * (i + 1));
}

/* Approximately N(0,1): a centred, scaled sum of four 16-bit uniforms (bounded by +-3.46). */
static inline float
word_to_normal(uint64_t h)
{
	float		s = (float) (h & 0xffff) + (float) ((h >> 16) & 0xffff) +
		(float) ((h >> 32) & 0xffff) + (float) (h >> 48);

	return ((s + 2.0f) * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

/* How the values of one tensor are drawn. */
typedef struct value_law
{
	float		mean;
	float		std;			/* BF16 tensors */
	int			scale_exp;		/* U8 scales: lower exponent of the two used */
	double		scale_up_prob;	/* U8 scales: chance of scale_exp + 1 */
} value_law;

/* The distribution for a tensor's role in a model of n_layers (see the header comment for why). */
static value_law
law_for(const gptoss_tensor_spec *s, int n_layers)
{
	double		residual_scale = 1.0 / sqrt(2.0 * n_layers);

	value_law	law = {0.0f, 0.0f, 0, 0.0};
	double		x,
				frac;

	switch (s->role)
	{
		case GPTOSS_T_EMBEDDING:
		case GPTOSS_T_SINKS:
			law.std = 1.0f;
			break;
		case GPTOSS_T_ATTN_NORM:
		case GPTOSS_T_MLP_NORM:
		case GPTOSS_T_FINAL_NORM:
			law.mean = 1.0f;
			law.std = 0.05f;
			break;
		case GPTOSS_T_Q_WEIGHT:
		case GPTOSS_T_K_WEIGHT:
		case GPTOSS_T_V_WEIGHT:
		case GPTOSS_T_ROUTER_WEIGHT:
		case GPTOSS_T_LM_HEAD:
			law.std = (float) (1.0 / sqrt((double) s->shape[1]));
			break;
		case GPTOSS_T_O_WEIGHT:
			law.std = (float) (residual_scale / sqrt((double) s->shape[1]));
			break;
		case GPTOSS_T_Q_BIAS:
		case GPTOSS_T_K_BIAS:
		case GPTOSS_T_V_BIAS:
		case GPTOSS_T_O_BIAS:
		case GPTOSS_T_GATE_UP_BIAS:
		case GPTOSS_T_DOWN_BIAS:
			law.std = 0.02f;
			break;
		case GPTOSS_T_ROUTER_BIAS:
			law.std = 0.1f;
			break;
		case GPTOSS_T_GATE_UP_SCALES:
		case GPTOSS_T_DOWN_SCALES:
			/*
			 * Wanted multiplier 2^x = 1/(sqrt(fan_in) * FP4 rms), fan_in =
			 * blocks per row * 32.  Each block takes exponent floor(x) or
			 * floor(x)+1 with the probability q that makes the mean squared
			 * multiplier exact: (1-q) + 4q = 4^frac(x).
			 */
			x = log2(1.0 / (sqrt((double) s->shape[2] * 32.0) * FP4_UNIFORM_RMS));
			if (s->role == GPTOSS_T_DOWN_SCALES)
				x += log2(residual_scale);
			frac = x - floor(x);
			law.scale_exp = (int) floor(x);
			law.scale_up_prob = (pow(4.0, frac) - 1.0) / 3.0;
			break;
		case GPTOSS_T_GATE_UP_BLOCKS:
		case GPTOSS_T_DOWN_BLOCKS:
			break;				/* raw random bytes */
	}
	return law;
}

/* Generates bytes [begin, begin+len) of tensor s of a model of n_layers (begin and len multiples of 8). */
static void
generate(const gptoss_tensor_spec *s, int n_layers, uint64_t key, uint64_t begin, size_t len,
		 uint8_t *out)
{
	value_law	law = law_for(s, n_layers);

	if (s->dtype == GPTOSS_ST_BF16)
	{
		gptoss_bf16 *v = (gptoss_bf16 *) out;
		uint64_t	first = begin / 2;

		for (size_t i = 0; i < len / 2; i++)
			v[i] = gptoss_f32_to_bf16(law.mean + law.std *
									  word_to_normal(stream_word(key, first + i)));
	}
	else if (s->role == GPTOSS_T_GATE_UP_BLOCKS || s->role == GPTOSS_T_DOWN_BLOCKS)
	{
		for (size_t w = 0; w < len / 8; w++)
		{
			uint64_t	h = stream_word(key, begin / 8 + w);

			for (int b = 0; b < 8; b++)
				out[8 * w + (size_t) b] = (uint8_t) (h >> (8 * b));
		}
	}
	else
	{
		for (size_t i = 0; i < len; i++)
		{
			double		u = (double) (stream_word(key, begin + i) >> 11) * 0x1p-53;
			int			e = 127 + law.scale_exp + (u < law.scale_up_prob);

			out[i] = (uint8_t) (e < 1 ? 1 : e > 254 ? 254 : e);
		}
	}
}

/* ---------------------------------------------------------------- writer */

/* One unit of parallel work: a slice of one tensor at a file position. */
typedef struct work_item
{
	int			tensor;			/* index into the spec table */
	int			fd;
	uint64_t	begin;			/* byte offset within the tensor */
	size_t		len;
	uint64_t	file_offset;
} work_item;

/* State shared by the writer threads. */
typedef struct writer
{
	const gptoss_tensor_spec *specs;	/* [n_specs] */
	const uint64_t *keys;		/* [n_specs] per-tensor stream keys */
	int			n_layers;
	const work_item *items;		/* [n_items] */
	size_t		n_items;
	size_t		next_item;		/* atomic */
	uint64_t	bytes_done;		/* atomic */
	uint64_t	bytes_total;
	int			reported_percent;	/* last percentage passed to progress */
	int			failed_errno;	/* atomic; first write error */
	gptoss_progress_fn progress;
	void	   *progress_arg;
} writer;

/* One writer thread's arguments. */
typedef struct writer_thread
{
	writer	   *w;
	int			reports;		/* 1 on the calling thread: the only one that reports */
} writer_thread;

/* Writes all of buf at offset, retrying short writes; errno on failure. */
static int
pwrite_all(int fd, const uint8_t *buf, size_t len, uint64_t offset)
{
	while (len > 0)
	{
		ssize_t		n = pwrite(fd, buf, len, (off_t) offset);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? errno : EIO;
		buf += n;
		len -= (size_t) n;
		offset += (uint64_t) n;
	}
	return 0;
}

/* Thread body: take chunks until none are left or a write failed. */
static void *
writer_main(void *arg)
{
	writer_thread *t = arg;
	writer	   *w = t->w;
	uint8_t    *buf = malloc(CHUNK_BYTES);
	char		what[96];

	if (!buf)
	{
		__atomic_store_n(&w->failed_errno, ENOMEM, __ATOMIC_RELAXED);
		return NULL;
	}
	for (;;)
	{
		size_t		i = __atomic_fetch_add(&w->next_item, 1, __ATOMIC_RELAXED);
		const work_item *it;
		int			rc;
		uint64_t	done;

		if (i >= w->n_items || __atomic_load_n(&w->failed_errno, __ATOMIC_RELAXED))
			break;
		it = &w->items[i];
		generate(&w->specs[it->tensor], w->n_layers, w->keys[it->tensor], it->begin, it->len, buf);
		rc = pwrite_all(it->fd, buf, it->len, it->file_offset);
		if (rc != 0)
		{
			__atomic_store_n(&w->failed_errno, rc, __ATOMIC_RELAXED);
			break;
		}
		done = __atomic_add_fetch(&w->bytes_done, it->len, __ATOMIC_RELAXED);
		/* report each whole percent once, from the calling thread only */
		if (t->reports && w->progress &&
			(int) (100.0 * (double) done / (double) w->bytes_total) > w->reported_percent)
		{
			w->reported_percent = (int) (100.0 * (double) done / (double) w->bytes_total);
			snprintf(what, sizeof(what), "writing tensors: %llu/%llu MiB",
					 (unsigned long long) (done >> 20),
					 (unsigned long long) (w->bytes_total >> 20));
			w->progress(w->progress_arg, (double) done / (double) w->bytes_total, what);
		}
	}
	free(buf);
	return NULL;
}

/* Runs the writer threads (the caller is one of them) over all items. */
static int
run_writers(writer *w, gptoss_error *err)
{
	int			n_threads = gptoss_num_threads();
	pthread_t  *threads;
	writer_thread *args;
	int			started = 0;

	if ((size_t) n_threads > w->n_items)
		n_threads = w->n_items > 0 ? (int) w->n_items : 1;
	threads = calloc((size_t) n_threads, sizeof(*threads));
	args = calloc((size_t) n_threads, sizeof(*args));
	if (!threads || !args)
	{
		free(threads);
		free(args);
		return gptoss_errorf(err, "out of memory");
	}
	for (int i = 0; i < n_threads; i++)
	{
		args[i].w = w;
		args[i].reports = (i == 0);
	}
	/* Fewer threads than asked is fine: the shared counter spreads the work. */
	for (int i = 1; i < n_threads; i++)
	{
		if (pthread_create(&threads[i], NULL, writer_main, &args[i]) != 0)
			break;
		started = i;
	}
	writer_main(&args[0]);
	for (int i = 1; i <= started; i++)
		pthread_join(threads[i], NULL);
	free(threads);
	free(args);
	if (w->failed_errno)
		return gptoss_errorf(err, "writing tensor data failed: %s", strerror(w->failed_errno));
	return 0;
}

/* The output files and their tensors. */
typedef struct shard_plan
{
	int			n_shards;
	int		   *shard_of;		/* [n_specs] shard index per tensor */
	uint64_t   *data_offset;	/* [n_specs] offset inside its shard's data section */
	char	  **file_names;		/* [n_shards] */
	uint64_t   *data_start;		/* [n_shards] 8 + header length */
	uint64_t   *file_size;		/* [n_shards] */
	int		   *fds;			/* [n_shards], -1 when closed */
} shard_plan;

/* Frees a plan, closing any file still open. */
static void
plan_free(shard_plan *p)
{
	for (int i = 0; p->fds && i < p->n_shards; i++)
		if (p->fds[i] >= 0)
			close(p->fds[i]);
	for (int i = 0; p->file_names && i < p->n_shards; i++)
		free(p->file_names[i]);
	free(p->shard_of);
	free(p->data_offset);
	free(p->file_names);
	free(p->data_start);
	free(p->file_size);
	free(p->fds);
}

/*
 * Splits the tensors (in table order) into at most n contiguous groups of
 * about equal bytes: a tensor goes to the shard its middle byte falls in.
 * Shards left empty by huge tensors are dropped.
 */
static int
plan_shards(const gptoss_tensor_spec *specs, int n_specs, int n, shard_plan *p, gptoss_error *err)
{
	uint64_t	total = 0,
				before = 0;
	int			last = -1,
				count = 0;

	for (int i = 0; i < n_specs; i++)
		total += (uint64_t) specs[i].nbytes;
	p->shard_of = calloc((size_t) n_specs, sizeof(int));
	p->data_offset = calloc((size_t) n_specs, sizeof(uint64_t));
	if (!p->shard_of || !p->data_offset)
		return gptoss_errorf(err, "out of memory");
	for (int i = 0; i < n_specs; i++)
	{
		uint64_t	middle = before + (uint64_t) specs[i].nbytes / 2;
		int			s = total ? (int) ((double) middle / (double) total * n) : 0;

		if (s >= n)
			s = n - 1;
		if (s != last)			/* a new non-empty shard starts here */
		{
			count++;
			last = s;
		}
		p->shard_of[i] = count - 1;
		before += (uint64_t) specs[i].nbytes;
	}
	p->n_shards = count;
	p->file_names = calloc((size_t) count, sizeof(char *));
	p->data_start = calloc((size_t) count, sizeof(uint64_t));
	p->file_size = calloc((size_t) count, sizeof(uint64_t));
	p->fds = malloc(sizeof(int) * (size_t) count);
	if (!p->file_names || !p->data_start || !p->file_size || !p->fds)
		return gptoss_errorf(err, "out of memory");
	for (int s = 0; s < count; s++)
	{
		char		name[64];

		p->fds[s] = -1;
		if (count == 1)
			snprintf(name, sizeof(name), "model.safetensors");
		else
			snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", s, count - 1);
		p->file_names[s] = strdup(name);
		if (!p->file_names[s])
			return gptoss_errorf(err, "out of memory");
	}
	return 0;
}

/* Builds shard s's header (8-byte length + JSON padded with spaces to 8 bytes). */
static char *
shard_header(const gptoss_tensor_spec *specs, int n_specs, shard_plan *p, int s, size_t *len)
{
	json_t	   *root = json_object();
	uint64_t	offset = 0;
	char	   *text,
			   *out;
	size_t		n,
				padded;

	json_object_set_new(root, "__metadata__", json_pack("{s:s}", "format", "pt"));
	for (int i = 0; i < n_specs; i++)
	{
		json_t	   *shape;

		if (p->shard_of[i] != s)
			continue;
		shape = json_array();
		for (int d = 0; d < specs[i].ndim; d++)
			json_array_append_new(shape, json_integer(specs[i].shape[d]));
		p->data_offset[i] = offset;
		json_object_set_new(root, specs[i].name,
							json_pack("{s:s, s:o, s:[I,I]}", "dtype",
									  gptoss_st_dtype_name(specs[i].dtype), "shape", shape,
									  "data_offsets", (json_int_t) offset,
									  (json_int_t) (offset + (uint64_t) specs[i].nbytes)));
		offset += (uint64_t) specs[i].nbytes;
	}
	text = json_dumps(root, JSON_COMPACT);
	json_decref(root);
	if (!text)
		return NULL;
	n = strlen(text);
	padded = (n + 7) & ~(size_t) 7;
	out = malloc(8 + padded);
	if (out)
	{
		for (int b = 0; b < 8; b++)
			out[b] = (char) (((uint64_t) padded >> (8 * b)) & 0xff);
		memcpy(out + 8, text, n);
		memset(out + 8 + n, ' ', padded - n);
		p->data_start[s] = 8 + padded;
		p->file_size[s] = 8 + padded + offset;
		*len = 8 + padded;
	}
	free(text);
	return out;
}

/* Creates every shard file with its header, sized to its final length. */
static int
create_shards(const char *out_dir, const gptoss_tensor_spec *specs, int n_specs, shard_plan *p,
			  gptoss_error *err)
{
	char		path[4096];

	for (int s = 0; s < p->n_shards; s++)
	{
		size_t		len = 0;
		char	   *header = shard_header(specs, n_specs, p, s, &len);
		int			rc;

		snprintf(path, sizeof(path), "%s/%s", out_dir, p->file_names[s]);
		if (!header)
			return gptoss_errorf(err, "%s: out of memory building the header", path);
		p->fds[s] = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (p->fds[s] < 0)
		{
			free(header);
			return gptoss_errorf(err, "%s: %s", path, strerror(errno));
		}
		rc = pwrite_all(p->fds[s], (const uint8_t *) header, len, 0);
		free(header);
		if (rc == 0 && ftruncate(p->fds[s], (off_t) p->file_size[s]) != 0)
			rc = errno;
		if (rc != 0)
			return gptoss_errorf(err, "%s: %s", path, strerror(rc));
	}
	return 0;
}

/* Writes model.safetensors.index.json (total_size and weight_map). */
static int
write_index(const char *out_dir, const gptoss_tensor_spec *specs, int n_specs,
			const shard_plan *p, gptoss_error *err)
{
	char		path[4096];
	json_t	   *root = json_object();
	json_t	   *map = json_object();
	int64_t		total = 0;

	for (int i = 0; i < n_specs; i++)
	{
		json_object_set_new(map, specs[i].name, json_string(p->file_names[p->shard_of[i]]));
		total += specs[i].nbytes;
	}
	json_object_set_new(root, "metadata", json_pack("{s:I}", "total_size", (json_int_t) total));
	json_object_set_new(root, "weight_map", map);
	snprintf(path, sizeof(path), "%s/model.safetensors.index.json", out_dir);
	return write_json(path, root, err);
}

/* Copies src to dst byte for byte. */
static int
copy_file(const char *src, const char *dst, gptoss_error *err)
{
	char		buf[1 << 16];
	int			in,
				out;
	ssize_t		n;
	uint64_t	offset = 0;
	int			rc = 0;
	struct stat a,
				b;

	in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return gptoss_errorf(err, "tokenizer file %s: %s", src, strerror(errno));
	/* Copying a file onto itself would truncate it. */
	if (stat(dst, &b) == 0 && fstat(in, &a) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
	{
		close(in);
		return 0;
	}
	out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0)
	{
		close(in);
		return gptoss_errorf(err, "%s: %s", dst, strerror(errno));
	}
	while ((n = read(in, buf, sizeof(buf))) != 0)
	{
		int			werr;

		if (n < 0 && errno == EINTR)
			continue;
		werr = n < 0 ? errno : pwrite_all(out, (const uint8_t *) buf, (size_t) n, offset);
		if (werr != 0)
		{
			rc = gptoss_errorf(err, "copying %s to %s: %s", src, dst, strerror(werr));
			break;
		}
		offset += (uint64_t) n;
	}
	close(in);
	if (close(out) != 0 && rc == 0)
		rc = gptoss_errorf(err, "%s: %s", dst, strerror(errno));
	return rc;
}

/*
 * Splits every tensor into chunk-sized work items, dealt round-robin over the
 * shards: a write into a file holds that file's inode lock (tmpfs, ext4), so
 * threads writing consecutive chunks of one shard would take turns, while
 * threads on different shards copy in parallel (120b: 15 at a time).
 */
static work_item *
plan_work(const gptoss_tensor_spec *specs, int n_specs, const shard_plan *p, size_t *n_items)
{
	size_t		n = 0,
				k = 0;
	work_item  *by_shard,		/* each shard's items as one run, in table order */
			   *items;
	size_t	   *next,			/* [n_shards] next item of each run (first: fill, then deal) */
			   *end;			/* [n_shards] end of each run */

	next = calloc((size_t) p->n_shards, sizeof(size_t));
	end = calloc((size_t) p->n_shards, sizeof(size_t));
	if (!next || !end)
	{
		free(next);
		free(end);
		return NULL;
	}
	for (int i = 0; i < n_specs; i++)
	{
		size_t		chunks = ((size_t) specs[i].nbytes + CHUNK_BYTES - 1) / CHUNK_BYTES;

		n += chunks;
		end[p->shard_of[i]] += chunks;	/* counts for now */
	}
	for (int s = 0; s < p->n_shards; s++)
	{
		next[s] = s ? end[s - 1] : 0;
		end[s] += next[s];
	}
	by_shard = calloc(n ? n : 1, sizeof(*by_shard));
	items = calloc(n ? n : 1, sizeof(*items));
	if (!by_shard || !items)
	{
		free(by_shard);
		free(items);
		free(next);
		free(end);
		return NULL;
	}
	for (int i = 0; i < n_specs; i++)
		for (uint64_t b = 0; b < (uint64_t) specs[i].nbytes; b += CHUNK_BYTES)
		{
			uint64_t	left = (uint64_t) specs[i].nbytes - b;
			int			s = p->shard_of[i];
			work_item  *it = &by_shard[next[s]++];

			it->tensor = i;
			it->fd = p->fds[s];
			it->begin = b;
			it->len = left < CHUNK_BYTES ? (size_t) left : CHUNK_BYTES;
			it->file_offset = p->data_start[s] + p->data_offset[i] + b;
		}
	for (int s = 0; s < p->n_shards; s++)
		next[s] = s ? end[s - 1] : 0;
	while (k < n)
		for (int s = 0; s < p->n_shards; s++)
			if (next[s] < end[s])
				items[k++] = by_shard[next[s]++];
	free(by_shard);
	free(next);
	free(end);
	*n_items = n;
	return items;
}

/* Creates out_dir unless it already is a directory. */
static int
make_dir(const char *dir, gptoss_error *err)
{
	struct stat st;

	if (mkdir(dir, 0755) == 0)
		return 0;
	if (errno == EEXIST && stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
		return 0;
	return gptoss_errorf(err, "cannot create output directory %s: %s", dir,
						 errno == EEXIST ? "exists and is not a directory" : strerror(errno));
}

/* Writes config.json and generation_config.json, then checks the config loads back. */
static int
write_configs(const gptoss_config *cfg, const char *out_dir, gptoss_error *err)
{
	char		path[4096];
	gptoss_config check;

	snprintf(path, sizeof(path), "%s/config.json", out_dir);
	if (write_json(path, config_json(cfg), err) != 0)
		return -1;
	snprintf(path, sizeof(path), "%s/generation_config.json", out_dir);
	if (write_json(path, generation_config_json(cfg), err) != 0)
		return -1;
	/* Refuse shapes the loader would refuse before writing gigabytes of them. */
	if (gptoss_config_load(out_dir, &check, err) != 0)
	{
		unlink(path);
		snprintf(path, sizeof(path), "%s/config.json", out_dir);
		unlink(path);
		return -1;
	}
	return 0;
}

/* Writes a checkpoint split into n_shards files (0: by SHARD_TARGET_BYTES). */
int
gptoss_synth_write_shards(const gptoss_config *cfg, const char *out_dir, uint64_t seed,
						  const char *tokenizer_file, int n_shards,
						  gptoss_progress_fn progress, void *progress_arg, gptoss_error *err)
{
	gptoss_tensor_spec *specs = NULL;
	int			n_specs = 0;
	shard_plan	plan = {0};
	uint64_t   *keys = NULL;
	work_item  *items = NULL;
	writer		w = {0};
	char		path[4096];
	int64_t		total;
	int			rc = -1;

	if (!cfg || !out_dir || !*out_dir || n_shards < 0)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "synth: bad arguments");
	if (strlen(out_dir) > 3000)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "synth: output path too long");
	if (make_dir(out_dir, err) != 0 || write_configs(cfg, out_dir, err) != 0)
		return -1;
	if (gptoss_tensor_table(cfg, &specs, &n_specs, err) != 0)
		return -1;
	gptoss_config_sizes(cfg, NULL, NULL, &total);
	if (n_shards == 0)
		n_shards = (int) ceil((double) total / SHARD_TARGET_BYTES);
	if (n_shards < 1)
		n_shards = 1;
	keys = malloc(sizeof(*keys) * (size_t) n_specs);
	if (!keys)
	{
		gptoss_errorf(err, "out of memory");
		goto done;
	}
	for (int i = 0; i < n_specs; i++)
		keys[i] = mix64(seed * GOLDEN + mix64((uint64_t) i + 1));
	if (plan_shards(specs, n_specs, n_shards, &plan, err) != 0 ||
		create_shards(out_dir, specs, n_specs, &plan, err) != 0)
		goto done;

	/* Leave no stale layout that the loader would prefer over this one. */
	snprintf(path, sizeof(path), "%s/%s", out_dir,
			 plan.n_shards == 1 ? "model.safetensors.index.json" : "model.safetensors");
	unlink(path);
	if (plan.n_shards > 1 && write_index(out_dir, specs, n_specs, &plan, err) != 0)
		goto done;

	items = plan_work(specs, n_specs, &plan, &w.n_items);
	if (!items)
	{
		gptoss_errorf(err, "out of memory");
		goto done;
	}
	w.specs = specs;
	w.n_layers = cfg->num_layers;
	w.keys = keys;
	w.items = items;
	w.bytes_total = (uint64_t) total;
	w.progress = progress;
	w.progress_arg = progress_arg;
	if (run_writers(&w, err) != 0)
		goto done;
	for (int s = 0; s < plan.n_shards; s++)
	{
		int			fd = plan.fds[s];

		plan.fds[s] = -1;
		if (close(fd) != 0)
		{
			gptoss_errorf(err, "%s/%s: %s", out_dir, plan.file_names[s], strerror(errno));
			goto done;
		}
	}
	if (tokenizer_file)
	{
		snprintf(path, sizeof(path), "%s/tokenizer.json", out_dir);
		if (copy_file(tokenizer_file, path, err) != 0)
			goto done;
	}
	if (progress)
		progress(progress_arg, 1.0, "checkpoint written");
	rc = 0;
done:
	plan_free(&plan);
	free(items);
	free(keys);
	free(specs);
	return rc;
}

/* Writes a deterministic random-weight checkpoint of cfg's shapes. */
int
gptoss_synth_write(const gptoss_config *cfg, const char *out_dir, uint64_t seed,
				   const char *tokenizer_file, gptoss_progress_fn progress, void *progress_arg,
				   gptoss_error *err)
{
	return gptoss_synth_write_shards(cfg, out_dir, seed, tokenizer_file, 0, progress,
									 progress_arg, err);
}
