/*
 * test_model.c: config parsing, the safetensors parser, the checkpoint loader
 * and the synthetic-checkpoint writer.
 *
 * Plan: compute the 20b/120b parameter and byte totals from the config math
 * and compare them with the exact numbers of the model spec (section 9);
 * synthesize the tiny, tiny-odd and tiny-moe presets into a temporary directory, load
 * them back and check the config, the tensor views, the MXFP4 decoding of a
 * sample of weights against a decoding written here from the spec, the value
 * statistics, and determinism (same seed -> same bytes, whatever the
 * sharding).  Then break checkpoints in every way a user could (missing
 * files, bad config fields, truncated or corrupt safetensors, wrong shapes,
 * missing tensors, a broken shard index) and require a clean error whose
 * message names the culprit.
 */
#define _GNU_SOURCE
#include "tmpname.h"
#include "model.h"
#include "checkpoint.h"
#include "synth.h"
#include "testutil.h"

#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <jansson.h>

static char tmp_root[256];

/* nftw callback: removes one entry. */
static int
remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void) st;
	(void) flag;
	(void) ftw;
	return remove(path);
}

/* Removes a directory tree. */
static void
remove_tree(const char *dir)
{
	nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A path under the temporary root (static ring of buffers). */
static const char *
tmp_path(const char *fmt,...)
{
	static char bufs[8][512];
	static int	next;
	char	   *buf = bufs[next++ % 8];
	char		name[256];
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	snprintf(buf, 512, "%s/%s", tmp_root, name);
	return buf;
}

/* Reads a whole file; NULL on failure. */
static uint8_t *
read_file(const char *path, size_t *size)
{
	FILE	   *f = fopen(path, "rb");
	uint8_t    *buf;
	long		n;

	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(n > 0 ? (size_t) n : 1);
	if (buf && fread(buf, 1, (size_t) n, f) != (size_t) n)
	{
		free(buf);
		buf = NULL;
	}
	fclose(f);
	*size = (size_t) n;
	return buf;
}

/* Writes a whole file; 0 on success. */
static int
write_file(const char *path, const void *data, size_t size)
{
	FILE	   *f = fopen(path, "wb");
	int			ok;

	if (!f)
		return -1;
	ok = fwrite(data, 1, size, f) == size;
	return fclose(f) == 0 && ok ? 0 : -1;
}

/* Loads dir and expects failure with a message containing every given substring. */
static void
expect_load_error(const char *what, const char *dir, const char *sub1, const char *sub2)
{
	gptoss_model *model = (gptoss_model *) 1;
	gptoss_error err = {0};
	int			rc = gptoss_model_load(dir, &model, NULL, NULL, &err);

	CHECK(rc == -1, "%s: load succeeded", what);
	CHECK(model == NULL, "%s: model not reset to NULL", what);
	CHECK(sub1 == NULL || strstr(err.msg, sub1), "%s: message \"%s\" lacks \"%s\"", what, err.msg, sub1);
	CHECK(sub2 == NULL || strstr(err.msg, sub2), "%s: message \"%s\" lacks \"%s\"", what, err.msg, sub2);
	if (rc == 0)
		gptoss_model_free(model);
}

/* ------------------------------------------------------------ sizes */

/* Parameter totals from closed-form per-part formulas (docs/architecture.md, Sizes). */
static void
formula_sizes(const gptoss_config *c, int64_t *total, int64_t *active, int64_t *bytes)
{
	int64_t		H = c->hidden_size,
				V = c->vocab_size,
				E = c->num_experts,
				I = c->intermediate_size,
				L = c->num_layers;
	int64_t		qd = (int64_t) c->num_heads * c->head_dim,
				kvd = (int64_t) c->num_kv_heads * c->head_dim;
	int64_t		attn = qd * H + qd + 2 * (kvd * H + kvd) + H * qd + H + c->num_heads;
	int64_t		router = E * H + E;
	int64_t		expert = 2 * I * H + 2 * I + H * I + H;
	int64_t		norms = 2 * H;
	int64_t		scale_bytes = E * (2 * I * H / 32 + H * I / 32);
	int64_t		bf16 = 2 * V * H + H + L * (attn + router + norms + E * (2 * I + H));

	*total = 2 * V * H + H + L * (attn + router + E * expert + norms);
	*active = V * H + H + L * (attn + router + c->experts_per_token * expert + norms);
	*bytes = 2 * bf16 + L * (E * (2 * I * H + H * I) / 2 + scale_bytes);
}

/* The published totals for the real shapes, and the formula for the tiny ones. */
static void
test_sizes(void)
{
	gptoss_config c;
	gptoss_error err = {0};
	int64_t		total,
				active,
				bytes,
				ft,
				fa,
				fb;

	CHECK(gptoss_synth_config(GPTOSS_SYNTH_20B, &c, &err) == 0, "%s", err.msg);
	gptoss_config_sizes(&c, &total, &active, &bytes);
	CHECK(total == 20914757184LL, "20b total %lld", (long long) total);
	CHECK(active == 3608307264LL, "20b active %lld", (long long) active);
	CHECK(bytes == 13761264768LL, "20b bytes %lld", (long long) bytes);

	CHECK(gptoss_synth_config(GPTOSS_SYNTH_120B, &c, &err) == 0, "%s", err.msg);
	gptoss_config_sizes(&c, &total, &active, &bytes);
	CHECK(total == 116829156672LL, "120b total %lld", (long long) total);
	CHECK(active == 5132849472LL, "120b active %lld", (long long) active);
	CHECK(bytes == 65248815744LL, "120b bytes %lld", (long long) bytes);

	for (int p = 0; p <= GPTOSS_SYNTH_TINY_MOE; p++)
	{
		CHECK(gptoss_synth_config((gptoss_synth_preset) p, &c, &err) == 0, "%s", err.msg);
		gptoss_config_sizes(&c, &total, &active, &bytes);
		formula_sizes(&c, &ft, &fa, &fb);
		CHECK(total == ft && active == fa && bytes == fb,
			  "preset %d: table %lld/%lld/%lld formula %lld/%lld/%lld", p, (long long) total,
			  (long long) active, (long long) bytes, (long long) ft, (long long) fa, (long long) fb);
	}
}

/* The preset table and name lookup. */
static void
test_presets(void)
{
	gptoss_config c;
	gptoss_synth_preset p = GPTOSS_SYNTH_TINY;
	gptoss_error err = {0};
	static const char *const names[] = {"tiny", "tiny-odd", "tiny-moe", "20b", "120b"};
	static const gptoss_synth_preset want[] = {
		GPTOSS_SYNTH_TINY, GPTOSS_SYNTH_TINY_ODD, GPTOSS_SYNTH_TINY_MOE, GPTOSS_SYNTH_20B,
		GPTOSS_SYNTH_120B
	};

	for (int i = 0; i < 5; i++)
		CHECK(gptoss_synth_preset_from_name(names[i], &p) == 0 && p == want[i], "%s", names[i]);
	CHECK(gptoss_synth_preset_from_name("7b", &p) == -1, "unknown name accepted");
	CHECK(gptoss_synth_preset_from_name(NULL, &p) == -1, "NULL name accepted");
	CHECK(gptoss_synth_config((gptoss_synth_preset) 99, &c, &err) == -1 &&
		  strstr(err.msg, "preset"), "bad preset: %s", err.msg);

	gptoss_synth_config(GPTOSS_SYNTH_20B, &c, &err);
	CHECK(c.hidden_size == 2880 && c.num_layers == 24 && c.num_heads == 64 &&
		  c.num_kv_heads == 8 && c.head_dim == 64 && c.num_experts == 32 &&
		  c.experts_per_token == 4 && c.intermediate_size == 2880 && c.vocab_size == 201088 &&
		  c.sliding_window == 128 && c.max_position_embeddings == 131072 &&
		  c.initial_context_length == 4096 && c.rope_original_max_pos == 4096 &&
		  c.rope_factor == 32.0f && c.rope_beta_fast == 32.0f && c.rope_beta_slow == 1.0f &&
		  !c.rope_truncate && c.rope_theta == 150000.0f && c.swiglu_limit == 7.0f &&
		  c.rms_norm_eps == 1e-5f && c.eos_token_id == 200002 && c.pad_token_id == 199999 &&
		  c.layer_sliding[0] && !c.layer_sliding[1] && c.layer_sliding[22] && !c.layer_sliding[23],
		  "20b preset differs from the released config.json");
	gptoss_synth_config(GPTOSS_SYNTH_120B, &c, &err);
	CHECK(c.num_layers == 36 && c.num_experts == 128 && c.layer_sliding[34] &&
		  !c.layer_sliding[35], "120b preset differs from the released config.json");
	gptoss_synth_config(GPTOSS_SYNTH_TINY_ODD, &c, &err);
	CHECK(c.hidden_size == 96 && c.num_layers == 3 && c.num_heads == 6 && c.num_kv_heads == 2 &&
		  c.head_dim == 16 && c.num_experts == 6 && c.experts_per_token == 2 &&
		  c.intermediate_size == 160 && c.sliding_window == 6 && c.vocab_size == 201088,
		  "tiny-odd preset");
	gptoss_synth_config(GPTOSS_SYNTH_TINY_MOE, &c, &err);
	CHECK(c.hidden_size == 64 && c.num_layers == 4 && c.num_experts == 128 &&
		  c.experts_per_token == 4 && c.intermediate_size == 64, "tiny-moe preset");
}

/* ------------------------------------------------------ synth + load */

/* Field-by-field comparison of two configs; reports the first difference. */
static void
check_same_config(const char *what, const gptoss_config *a, const gptoss_config *b)
{
#define SAME(f) CHECK(a->f == b->f, "%s: field " #f " differs", what)
	SAME(hidden_size); SAME(num_layers); SAME(num_heads); SAME(num_kv_heads); SAME(head_dim);
	SAME(num_experts); SAME(experts_per_token); SAME(intermediate_size); SAME(vocab_size);
	SAME(sliding_window); SAME(max_position_embeddings); SAME(initial_context_length);
	SAME(swiglu_limit); SAME(rms_norm_eps); SAME(rope_theta); SAME(rope_factor);
	SAME(rope_beta_fast); SAME(rope_beta_slow); SAME(rope_original_max_pos); SAME(rope_truncate);
	SAME(eos_token_id); SAME(pad_token_id);
#undef SAME
	CHECK(memcmp(a->layer_sliding, b->layer_sliding, sizeof(a->layer_sliding)) == 0,
		  "%s: layer_sliding differs", what);
}

/* Progress callback that checks fractions stay in [0,1] and never go back. */
typedef struct progress_log
{
	int			calls;
	double		last;
	int			bad;
} progress_log;

/* Records one progress report. */
static void
log_progress(void *arg, double fraction, const char *what)
{
	progress_log *p = arg;

	if (fraction < 0 || fraction > 1 || fraction < p->last || !what || !*what)
		p->bad++;
	p->last = fraction;
	p->calls++;
}

/* Dequantizes W[e][r][c] of an MXFP4 tensor exactly as docs/architecture.md, MXFP4, writes it. */
static float
spec_mxfp4(const uint8_t *blocks, const uint8_t *scales, int rows, int cols, int e, int r, int c)
{
	static const float lut[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};
	size_t		row = (size_t) e * rows + r;
	uint8_t		byte = blocks[(row * (cols / 32) + c / 32) * 16 + (c % 32) / 2];
	int			nib = (c & 1) ? byte >> 4 : byte & 15;

	return ldexpf(lut[nib], scales[row * (cols / 32) + c / 32] - 127);
}

/* Mean and std of n bf16 values. */
static void
bf16_stats(const gptoss_bf16 *v, size_t n, double *mean, double *std, int *nonfinite)
{
	double		s = 0,
				s2 = 0;

	*nonfinite = 0;
	for (size_t i = 0; i < n; i++)
	{
		double		x = gptoss_bf16_to_f32(v[i]);

		if (!isfinite(x))
			(*nonfinite)++;
		s += x;
		s2 += x * x;
	}
	*mean = s / (double) n;
	*std = sqrt(s2 / (double) n - *mean * *mean);
}

/* Checks a bf16 tensor's mean and std against what the writer intends. */
static void
check_bf16_law(const char *what, const gptoss_bf16 *v, size_t n, double mean, double std)
{
	double		m,
				s;
	int			bad;

	bf16_stats(v, n, &m, &s, &bad);
	CHECK(bad == 0, "%s: %d non-finite values", what, bad);
	CHECK(fabs(m - mean) < 0.1 * std + 4 * std / sqrt((double) n) + 1e-3,
		  "%s: mean %g, want %g", what, m, mean);
	CHECK(fabs(s - std) < 0.1 * std + 4 * std / sqrt((double) n), "%s: std %g, want %g", what, s, std);
}

/*
 * Checks the expert weights of one layer: a sample of elements against the
 * spec decoding (and the engine's LUT), the dequantized std against
 * 1/sqrt(fan_in) (times 1/sqrt(2L) for down, which writes into the residual
 * stream), and that all 16 codes occur about equally.
 */
static void
check_experts(const char *what, const gptoss_config *c, const gptoss_layer_weights *w)
{
	const int	E = c->num_experts,
				H = c->hidden_size,
				I = c->intermediate_size;
	struct
	{
		const uint8_t *blocks,
				   *scales;
		int			rows,
					cols;
	}			m[2] = {{w->gate_up_blocks, w->gate_up_scales, 2 * I, H},
						{w->down_blocks, w->down_scales, H, I}};
	uint64_t	rng = 12345;
	double		residual_scale = 1 / sqrt(2.0 * c->num_layers);

	for (int k = 0; k < 2; k++)
	{
		double		s2 = 0;
		size_t		n = (size_t) E * m[k].rows * m[k].cols;
		size_t		counts[16] = {0};
		int			mismatches = 0;

		for (int t = 0; t < 200; t++)
		{
			int			e,
						r,
						col;
			size_t		row;
			uint8_t		byte;
			float		engine;

			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			e = (int) ((rng >> 33) % (uint64_t) E);
			r = (int) ((rng >> 20) % (uint64_t) m[k].rows);
			col = (int) ((rng >> 4) % (uint64_t) m[k].cols);
			row = (size_t) e * m[k].rows + r;
			byte = m[k].blocks[(row * (m[k].cols / 32) + col / 32) * 16 + (col % 32) / 2];
			engine = ldexpf(gptoss_fp4_values[(col & 1) ? byte >> 4 : byte & 15],
							m[k].scales[row * (m[k].cols / 32) + col / 32] - 127);
			if (engine != spec_mxfp4(m[k].blocks, m[k].scales, m[k].rows, m[k].cols, e, r, col))
				mismatches++;
		}
		CHECK(mismatches == 0, "%s[%d]: %d LUT mismatches against the E2M1 table", what, k, mismatches);
		for (size_t i = 0; i < n / 2; i++)
		{
			counts[m[k].blocks[i] & 15]++;
			counts[m[k].blocks[i] >> 4]++;
		}
		for (int code = 0; code < 16; code++)
			CHECK(fabs((double) counts[code] / (double) n - 1.0 / 16) < 0.01,
				  "%s[%d]: code %d frequency %g", what, k, code, (double) counts[code] / (double) n);
		for (int e = 0; e < E; e++)
			for (int r = 0; r < m[k].rows; r++)
				for (int col = 0; col < m[k].cols; col++)
				{
					double		x = spec_mxfp4(m[k].blocks, m[k].scales, m[k].rows, m[k].cols, e, r, col);

					s2 += x * x;
				}
		/* the exponent rounding makes the mean square exact in expectation */
		{
			double		want = 1 / sqrt((double) m[k].cols) * (k == 1 ? residual_scale : 1.0);

			CHECK(fabs(sqrt(s2 / (double) n) / want - 1.0) < 0.05,
				  "%s[%d]: dequantized rms %g, want %g", what, k, sqrt(s2 / (double) n), want);
		}
	}
}

/* Loads dir and checks it against preset: config, views, sizes, values. */
static void
check_loaded(const char *what, const char *dir, gptoss_synth_preset preset, int n_files)
{
	gptoss_config want;
	gptoss_model *model = NULL;
	gptoss_error err = {0};
	progress_log plog = {0};
	int64_t		total,
				active,
				bytes;

	gptoss_synth_config(preset, &want, &err);
	gptoss_config_sizes(&want, &total, &active, &bytes);
	CHECK(gptoss_model_load(dir, &model, log_progress, &plog, &err) == 0, "%s: %s", what, err.msg);
	if (!model)
		return;
	check_same_config(what, &want, &model->config);
	CHECK(model->n_mappings == n_files, "%s: %d mappings, want %d", what, model->n_mappings, n_files);
	CHECK(model->n_params == total && model->n_active_params == active &&
		  model->tensor_bytes == bytes, "%s: sizes %lld/%lld/%lld", what, (long long) model->n_params,
		  (long long) model->n_active_params, (long long) model->tensor_bytes);
	CHECK(plog.calls >= 3 && plog.bad == 0 && plog.last == 1.0, "%s: progress calls %d bad %d last %g",
		  what, plog.calls, plog.bad, plog.last);
	CHECK(strcmp(model->path, dir) == 0, "%s: path %s", what, model->path);

	/* Every view points inside a mapping, and the whole mapping is accounted for. */
	{
		const void *views[19 * GPTOSS_MAX_LAYERS + 3];
		int			nv = 0,
					outside = 0;

		views[nv++] = model->embedding;
		views[nv++] = model->final_norm;
		views[nv++] = model->lm_head;
		for (int l = 0; l < model->config.num_layers; l++)
		{
			const gptoss_layer_weights *w = &model->layers[l];
			const void *lv[] = {w->attn_norm, w->q_weight, w->q_bias, w->k_weight, w->k_bias,
				w->v_weight, w->v_bias, w->o_weight, w->o_bias, w->sinks, w->mlp_norm,
				w->router_weight, w->router_bias, w->gate_up_blocks, w->gate_up_scales,
			w->gate_up_bias, w->down_blocks, w->down_scales, w->down_bias};

			for (int k = 0; k < 19; k++)
				views[nv++] = lv[k];
		}
		for (int i = 0; i < nv; i++)
		{
			int			inside = 0;

			for (int m = 0; m < model->n_mappings; m++)
				if ((const uint8_t *) views[i] >= (const uint8_t *) model->mappings[m].addr &&
					(const uint8_t *) views[i] < (const uint8_t *) model->mappings[m].addr +
					model->mappings[m].size)
					inside = 1;
			outside += !inside;
		}
		CHECK(nv == 19 * model->config.num_layers + 3 && outside == 0,
			  "%s: %d views, %d outside the mappings", what, nv, outside);
	}

	/* Values follow the intended laws. */
	{
		const gptoss_config *c = &model->config;
		const gptoss_layer_weights *w0 = &model->layers[0];
		size_t		H = (size_t) c->hidden_size,
					qd = (size_t) c->num_heads * c->head_dim;

		check_bf16_law("embedding", model->embedding, (size_t) c->vocab_size * H, 0, 1);
		check_bf16_law("lm_head", model->lm_head, (size_t) c->vocab_size * H, 0, 1 / sqrt((double) H));
		check_bf16_law("final_norm", model->final_norm, H, 1, 0.05);
		check_bf16_law("q_proj", w0->q_weight, qd * H, 0, 1 / sqrt((double) H));
		/* o_proj writes into the residual stream: a further 1/sqrt(2L), as GPT-2 */
		check_bf16_law("o_proj", w0->o_weight, qd * H, 0,
					   1 / sqrt((double) qd) / sqrt(2.0 * c->num_layers));
		check_bf16_law("router", w0->router_weight, (size_t) c->num_experts * H, 0, 1 / sqrt((double) H));
		check_bf16_law("gate_up_bias", w0->gate_up_bias,
					   (size_t) c->num_experts * 2 * c->intermediate_size, 0, 0.02);
		for (int l = 0; l < c->num_layers; l++)
			check_experts(what, c, &model->layers[l]);
	}
	gptoss_model_free(model);
}

/* Compares every tensor of two loaded models byte for byte. */
static int
same_tensor_bytes(const gptoss_model *a, const gptoss_model *b)
{
	gptoss_tensor_spec *specs;
	int			n;
	const uint8_t *pa[19 * GPTOSS_MAX_LAYERS + 3],
			   *pb[19 * GPTOSS_MAX_LAYERS + 3];
	int			k = 0;

	if (gptoss_tensor_table(&a->config, &specs, &n, NULL) != 0)
		return 0;
	pa[k] = (const uint8_t *) a->embedding;
	pb[k++] = (const uint8_t *) b->embedding;
	for (int l = 0; l < a->config.num_layers; l++)
	{
		const gptoss_layer_weights *x = &a->layers[l],
				   *y = &b->layers[l];
		const void *lx[] = {x->attn_norm, x->q_weight, x->q_bias, x->k_weight, x->k_bias,
			x->v_weight, x->v_bias, x->o_weight, x->o_bias, x->sinks, x->mlp_norm,
			x->router_weight, x->router_bias, x->gate_up_blocks, x->gate_up_scales,
		x->gate_up_bias, x->down_blocks, x->down_scales, x->down_bias};
		const void *ly[] = {y->attn_norm, y->q_weight, y->q_bias, y->k_weight, y->k_bias,
			y->v_weight, y->v_bias, y->o_weight, y->o_bias, y->sinks, y->mlp_norm,
			y->router_weight, y->router_bias, y->gate_up_blocks, y->gate_up_scales,
		y->gate_up_bias, y->down_blocks, y->down_scales, y->down_bias};

		for (int t = 0; t < 19; t++)
		{
			pa[k] = lx[t];
			pb[k++] = ly[t];
		}
	}
	pa[k] = (const uint8_t *) a->final_norm;
	pb[k++] = (const uint8_t *) b->final_norm;
	pa[k] = (const uint8_t *) a->lm_head;
	pb[k++] = (const uint8_t *) b->lm_head;
	for (int i = 0; i < n; i++)
		if (memcmp(pa[i], pb[i], (size_t) specs[i].nbytes) != 0)
		{
			fprintf(stderr, "tensor %s differs\n", specs[i].name);
			free(specs);
			return 0;
		}
	free(specs);
	return k == n;
}

/* Writes preset into dir (n_shards as gptoss_synth_write_shards takes it). */
static int
synth(gptoss_synth_preset preset, const char *dir, uint64_t seed, int n_shards, const char *tok)
{
	gptoss_config c;
	gptoss_error err = {0};

	gptoss_synth_config(preset, &c, &err);
	if (gptoss_synth_write_shards(&c, dir, seed, tok, n_shards, NULL, NULL, &err) != 0)
	{
		fprintf(stderr, "synth %s: %s\n", dir, err.msg);
		return -1;
	}
	return 0;
}

/* Synthesizes tiny, tiny-odd and tiny-moe, loads them back and checks everything. */
static void
test_synth_roundtrip(void)
{
	gptoss_config c;
	gptoss_error err = {0};
	progress_log plog = {0};
	size_t		na,
				nb;
	uint8_t    *a,
			   *b;
	gptoss_model *single = NULL,
			   *sharded = NULL;
	struct stat st;

	gptoss_synth_config(GPTOSS_SYNTH_TINY, &c, &err);
	CHECK(gptoss_synth_write(&c, tmp_path("tiny"), 7, tmp_path("tok.json"), log_progress, &plog,
							 &err) == 0, "%s", err.msg);
	CHECK(plog.calls >= 2 && plog.bad == 0 && plog.last == 1.0, "synth progress %d/%d/%g",
		  plog.calls, plog.bad, plog.last);
	CHECK(stat(tmp_path("tiny/model.safetensors.index.json"), &st) != 0, "tiny must be one file");
	CHECK(stat(tmp_path("tiny/generation_config.json"), &st) == 0, "generation_config.json");
	a = read_file(tmp_path("tiny/tokenizer.json"), &na);
	CHECK(a && na == 17 && memcmp(a, "{\"tokenizer\": 1}\n", 17) == 0, "tokenizer not copied");
	free(a);
	check_loaded("tiny", tmp_path("tiny"), GPTOSS_SYNTH_TINY, 1);

	CHECK(synth(GPTOSS_SYNTH_TINY_ODD, tmp_path("odd"), 7, 0, NULL) == 0, "tiny-odd");
	CHECK(stat(tmp_path("odd/tokenizer.json"), &st) != 0, "tokenizer.json written without a source");
	check_loaded("tiny-odd", tmp_path("odd"), GPTOSS_SYNTH_TINY_ODD, 1);
	CHECK(synth(GPTOSS_SYNTH_TINY_MOE, tmp_path("moe"), 7, 0, NULL) == 0, "tiny-moe");
	check_loaded("tiny-moe", tmp_path("moe"), GPTOSS_SYNTH_TINY_MOE, 1);

	/* Same seed: identical bytes; another seed: different bytes. */
	CHECK(synth(GPTOSS_SYNTH_TINY, tmp_path("tiny_again"), 7, 0, NULL) == 0, "tiny again");
	a = read_file(tmp_path("tiny/model.safetensors"), &na);
	b = read_file(tmp_path("tiny_again/model.safetensors"), &nb);
	CHECK(a && b && na == nb && memcmp(a, b, na) == 0, "same seed gave different files");
	free(b);
	CHECK(synth(GPTOSS_SYNTH_TINY, tmp_path("tiny_seed8"), 8, 0, NULL) == 0, "tiny seed 8");
	b = read_file(tmp_path("tiny_seed8/model.safetensors"), &nb);
	CHECK(a && b && na == nb && memcmp(a + 4096, b + 4096, na - 4096) != 0,
		  "another seed gave the same data");
	free(a);
	free(b);

	/* Sharded: same tensor bytes as the single file, index and HF file names. */
	CHECK(synth(GPTOSS_SYNTH_TINY, tmp_path("tiny3"), 7, 3, NULL) == 0, "tiny in 3 shards");
	CHECK(stat(tmp_path("tiny3/model-00000-of-00002.safetensors"), &st) == 0 &&
		  stat(tmp_path("tiny3/model-00002-of-00002.safetensors"), &st) == 0 &&
		  stat(tmp_path("tiny3/model.safetensors"), &st) != 0, "shard file names");
	check_loaded("tiny3", tmp_path("tiny3"), GPTOSS_SYNTH_TINY, 3);
	CHECK(gptoss_model_load(tmp_path("tiny"), &single, NULL, NULL, &err) == 0, "%s", err.msg);
	CHECK(gptoss_model_load(tmp_path("tiny3"), &sharded, NULL, NULL, &err) == 0, "%s", err.msg);
	if (single && sharded)
		CHECK(same_tensor_bytes(single, sharded), "sharding changed tensor bytes");
	gptoss_model_free(single);
	gptoss_model_free(sharded);

	/* index.json total_size is the tensor byte total */
	{
		json_t	   *idx = json_load_file(tmp_path("tiny3/model.safetensors.index.json"), 0, NULL);
		int64_t		bytes;

		gptoss_config_sizes(&c, NULL, NULL, &bytes);
		CHECK(idx && json_integer_value(json_object_get(json_object_get(idx, "metadata"),
														"total_size")) == bytes, "total_size");
		CHECK(idx && json_object_size(json_object_get(idx, "weight_map")) == (size_t) (19 * 4 + 3),
			  "weight_map size");
		json_decref(idx);
	}

	/* Rewriting a sharded dir as one file removes the index that would shadow it. */
	CHECK(synth(GPTOSS_SYNTH_TINY, tmp_path("tiny3"), 9, 1, NULL) == 0, "rewrite");
	CHECK(stat(tmp_path("tiny3/model.safetensors.index.json"), &st) != 0, "stale index kept");
	check_loaded("tiny3 rewritten", tmp_path("tiny3"), GPTOSS_SYNTH_TINY, 1);
}

/* FNV-1a 64 of a byte range. */
static uint64_t
fnv1a64(const uint8_t *p, size_t n)
{
	uint64_t	h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

/*
 * The tensor bytes of the seed-0 tiny checkpoints are pinned: the HF
 * reference fixtures (test/fixtures/model_tiny*.json) were computed from
 * exactly these bytes, so a change to the generator must come with new
 * fixtures (test/reference/make-fixtures.sh) and new hashes here.
 */
static void
test_synth_pinned(void)
{
	static const struct
	{
		gptoss_synth_preset preset;
		const char *dir;
		uint64_t	hash;
	}			pinned[] = {
		{GPTOSS_SYNTH_TINY, "pin_tiny", 0x38412f9add6695daull},
		{GPTOSS_SYNTH_TINY_ODD, "pin_odd", 0x5592f1535350f0b2ull},
	};

	for (int k = 0; k < 2; k++)
	{
		char		path[600];
		size_t		size;
		uint8_t    *file;
		gptoss_st_file header;
		gptoss_error err = {0};

		/* bytes must not depend on the thread count either */
		setenv("GPTOSS_THREADS", k == 0 ? "3" : "1", 1);
		CHECK(synth(pinned[k].preset, tmp_path("%s", pinned[k].dir), 0, 0, NULL) == 0, "synth");
		unsetenv("GPTOSS_THREADS");
		snprintf(path, sizeof(path), "%s/model.safetensors", tmp_path("%s", pinned[k].dir));
		file = read_file(path, &size);
		CHECK(file && gptoss_st_parse(file, size, path, &header, &err) == 0, "%s", err.msg);
		if (file && header.tensors)
		{
			uint64_t	h = fnv1a64(file + header.data_start, size - header.data_start);

			CHECK(h == pinned[k].hash, "%s: data hash 0x%016llx, pinned 0x%016llx", pinned[k].dir,
				  (unsigned long long) h, (unsigned long long) pinned[k].hash);
		}
		gptoss_st_free(&header);
		free(file);
		remove_tree(tmp_path("%s", pinned[k].dir));
	}
}

/* Synth refuses bad arguments and shapes the loader would refuse. */
static void
test_synth_errors(void)
{
	gptoss_config c;
	gptoss_error err = {0};

	gptoss_synth_config(GPTOSS_SYNTH_TINY, &c, &err);
	CHECK(gptoss_synth_write(&c, tmp_path("no/such/parent"), 1, NULL, NULL, NULL, &err) == -1 &&
		  strstr(err.msg, "no/such/parent"), "missing parent: %s", err.msg);
	CHECK(gptoss_synth_write(&c, tmp_path("tiny_bad_tok"), 1, tmp_path("no_tokenizer.json"), NULL,
							 NULL, &err) == -1 && strstr(err.msg, "no_tokenizer.json"),
		  "missing tokenizer: %s", err.msg);
	c.hidden_size = 48;
	CHECK(gptoss_synth_write(&c, tmp_path("tiny_bad"), 1, NULL, NULL, NULL, &err) == -1 &&
		  strstr(err.msg, "hidden_size (48)"), "bad shape: %s", err.msg);
}

/* -------------------------------------------------------- bad configs */

typedef void (*config_edit) (json_t *root);

/* Writes the tiny config.json edited by edit into dir/cfgN and loads it. */
static int
load_edited_config(int n, config_edit edit, gptoss_config *out, gptoss_error *err)
{
	json_t	   *root = json_load_file(tmp_path("tiny/config.json"), 0, NULL);
	const char *dir = tmp_path("cfg%d", n);
	char		path[600];

	mkdir(dir, 0755);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	edit(root);
	json_dump_file(root, path, JSON_INDENT(2));
	json_decref(root);
	return gptoss_config_load(dir, out, err);
}

#define EDIT(fn, body) static void fn(json_t *r) { body; }
EDIT(e_kv3, json_object_set_new(r, "num_key_value_heads", json_integer(3)))
EDIT(e_hidden48, json_object_set_new(r, "hidden_size", json_integer(48)))
EDIT(e_inter40, json_object_set_new(r, "intermediate_size", json_integer(40)))
EDIT(e_headdim15, json_object_set_new(r, "head_dim", json_integer(15)))
EDIT(e_topk9, json_object_set_new(r, "num_experts_per_tok", json_integer(9));
	 json_object_set_new(r, "experts_per_token", json_integer(9)))
EDIT(e_topk_disagree, json_object_set_new(r, "num_experts_per_tok", json_integer(3)))
EDIT(e_topk_missing, json_object_del(r, "num_experts_per_tok"); json_object_del(r, "experts_per_token"))
EDIT(e_quant, json_object_set_new(json_object_get(r, "quantization_config"), "quant_method",
								  json_string("bitsandbytes")))
EDIT(e_layers300, json_object_set_new(r, "num_hidden_layers", json_integer(300)))
EDIT(e_model_type, json_object_set_new(r, "model_type", json_string("llama")))
EDIT(e_vocab_neg, json_object_set_new(r, "vocab_size", json_integer(-1)))
EDIT(e_hidden_missing, json_object_del(r, "hidden_size"))
EDIT(e_hidden_string, json_object_set_new(r, "hidden_size", json_string("abc")))
EDIT(e_hidden_frac, json_object_set_new(r, "hidden_size", json_real(64.5)))
EDIT(e_types_len, json_array_remove(json_object_get(r, "layer_types"), 0))
EDIT(e_types_value, json_array_set_new(json_object_get(r, "layer_types"), 1, json_string("global")))
EDIT(e_rope_type, json_object_set_new(json_object_get(r, "rope_scaling"), "rope_type",
									  json_string("linear")))
EDIT(e_rope_factor, json_object_set_new(json_object_get(r, "rope_scaling"), "factor", json_real(0.5)))
EDIT(e_rope_mscale, json_object_set_new(json_object_get(r, "rope_scaling"), "mscale", json_real(1.0)))
EDIT(e_rope_betas, json_object_set_new(json_object_get(r, "rope_scaling"), "beta_slow", json_real(64)))
EDIT(e_eos_big, json_object_set_new(r, "eos_token_id", json_integer(300000)))
EDIT(e_eps_neg, json_object_set_new(r, "rms_norm_eps", json_real(-1e-5)))
EDIT(e_window0, json_object_set_new(r, "sliding_window", json_integer(0)))
EDIT(e_tied, json_object_set_new(r, "tie_word_embeddings", json_true()))
EDIT(e_no_bias, json_object_set_new(r, "attention_bias", json_false()))
EDIT(e_heads_missing_hd, json_object_del(r, "head_dim"); json_object_set_new(r, "num_attention_heads",
																			json_integer(5));
	 json_object_set_new(r, "num_key_value_heads", json_integer(1)))

/* Accepted variants. */
EDIT(a_eos_list, json_object_set_new(r, "eos_token_id", json_pack("[i,i]", 200012, 1)))
EDIT(a_only_experts_per_token, json_object_del(r, "num_experts_per_tok"))
EDIT(a_no_layer_types, json_object_del(r, "layer_types"))
EDIT(a_no_rope_scaling, json_object_del(r, "rope_scaling"))
EDIT(a_no_truncate, json_object_del(json_object_get(r, "rope_scaling"), "truncate");
	 json_object_del(json_object_get(r, "rope_scaling"), "original_max_position_embeddings"))
EDIT(a_no_head_dim, json_object_del(r, "head_dim"))
EDIT(a_real_ints, json_object_set_new(r, "hidden_size", json_real(64.0)))
EDIT(a_unknown_keys, json_object_set_new(r, "some_future_key", json_pack("{s:[i]}", "x", 1));
	 json_object_del(r, "quantization_config"); json_object_del(r, "model_type"))
EDIT(a_types_all_full, for (int l = 0; l < 4; l++)
	 json_array_set_new(json_object_get(r, "layer_types"), (size_t) l, json_string("full_attention")))
EDIT(a_old_rope_key, json_object_del(json_object_get(r, "rope_scaling"), "rope_type");
	 json_object_set_new(json_object_get(r, "rope_scaling"), "type", json_string("yarn")))

/* Every unsupported value fails with the field named; every tolerated variant loads. */
static void
test_bad_configs(void)
{
	static const struct
	{
		config_edit edit;
		const char *sub1;
		const char *sub2;
	}			bad[] = {
		{e_kv3, "config.json: num_key_value_heads (3) must divide num_attention_heads (4)", NULL},
		{e_hidden48, "hidden_size (48) must be a multiple of 32", NULL},
		{e_inter40, "intermediate_size (40) must be a multiple of 32", NULL},
		{e_headdim15, "head_dim (15) must be even", NULL},
		{e_topk9, "num_experts_per_tok (9)", "num_local_experts (8)"},
		{e_topk_disagree, "num_experts_per_tok (3) and experts_per_token (2) disagree", NULL},
		{e_topk_missing, "missing num_experts_per_tok", NULL},
		{e_quant, "quantization_config.quant_method", "mxfp4"},
		{e_layers300, "num_hidden_layers (300)", NULL},
		{e_model_type, "model_type", "gpt_oss"},
		{e_vocab_neg, "vocab_size (-1)", NULL},
		{e_hidden_missing, "missing hidden_size", NULL},
		{e_hidden_string, "hidden_size must be an integer", NULL},
		{e_hidden_frac, "hidden_size must be an integer", NULL},
		{e_types_len, "layer_types has 3 entries, num_hidden_layers is 4", NULL},
		{e_types_value, "layer_types[1]", NULL},
		{e_rope_type, "rope_scaling.rope_type \"linear\"", NULL},
		{e_rope_factor, "rope_scaling.factor", NULL},
		{e_rope_mscale, "rope_scaling.mscale", NULL},
		{e_rope_betas, "beta_fast", "beta_slow"},
		{e_eos_big, "eos_token_id (300000)", NULL},
		{e_eps_neg, "rms_norm_eps", NULL},
		{e_window0, "sliding_window (0)", NULL},
		{e_tied, "tie_word_embeddings", NULL},
		{e_no_bias, "attention_bias", NULL},
		{e_heads_missing_hd, "head_dim is missing", NULL},
	};
	gptoss_config c,
				want;
	gptoss_error err;
	int			n = 0;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
	{
		memset(&err, 0, sizeof(err));
		CHECK(load_edited_config(n++, bad[i].edit, &c, &err) == -1, "bad config %zu accepted", i);
		CHECK(strstr(err.msg, bad[i].sub1), "bad config %zu: \"%s\" lacks \"%s\"", i, err.msg, bad[i].sub1);
		CHECK(!bad[i].sub2 || strstr(err.msg, bad[i].sub2), "bad config %zu: \"%s\" lacks \"%s\"",
			  i, err.msg, bad[i].sub2);
	}

	/* Not JSON, and JSON that is not an object. */
	{
		const char *dir = tmp_path("cfg_notjson");
		char		path[600];

		mkdir(dir, 0755);
		snprintf(path, sizeof(path), "%s/config.json", dir);
		write_file(path, "{\"hidden_size\": 64,", 19);
		CHECK(gptoss_config_load(dir, &c, &err) == -1 && strstr(err.msg, "config.json: invalid JSON"),
			  "truncated JSON: %s", err.msg);
		write_file(path, "[1, 2]", 6);
		CHECK(gptoss_config_load(dir, &c, &err) == -1 && strstr(err.msg, "not a JSON object"),
			  "array config: %s", err.msg);
		write_file(path, "{\"a\": 1, \"a\": 2}", 16);
		CHECK(gptoss_config_load(dir, &c, &err) == -1 && strstr(err.msg, "duplicate"),
			  "duplicate keys: %s", err.msg);
	}

	gptoss_synth_config(GPTOSS_SYNTH_TINY, &want, &err);
	CHECK(load_edited_config(n++, a_eos_list, &c, &err) == 0 && c.eos_token_id == 200012,
		  "eos list: %s", err.msg);
	CHECK(load_edited_config(n++, a_only_experts_per_token, &c, &err) == 0 && c.experts_per_token == 2,
		  "experts_per_token alone: %s", err.msg);
	CHECK(load_edited_config(n++, a_no_layer_types, &c, &err) == 0 && c.layer_sliding[0] &&
		  !c.layer_sliding[1] && c.layer_sliding[2] && !c.layer_sliding[3], "no layer_types: %s", err.msg);
	CHECK(load_edited_config(n++, a_no_rope_scaling, &c, &err) == 0 && c.rope_factor == 1.0f &&
		  c.rope_truncate && c.rope_original_max_pos == c.max_position_embeddings,
		  "no rope_scaling: %s", err.msg);
	CHECK(load_edited_config(n++, a_no_truncate, &c, &err) == 0 && c.rope_truncate &&
		  c.rope_factor == 32.0f && c.rope_original_max_pos == 4096, "no truncate: %s", err.msg);
	CHECK(load_edited_config(n++, a_no_head_dim, &c, &err) == 0 && c.head_dim == 16,
		  "no head_dim: %s", err.msg);
	CHECK(load_edited_config(n++, a_real_ints, &c, &err) == 0 && c.hidden_size == 64,
		  "integral real: %s", err.msg);
	CHECK(load_edited_config(n++, a_unknown_keys, &c, &err) == 0, "unknown keys: %s", err.msg);
	check_same_config("unknown keys", &want, &c);
	CHECK(load_edited_config(n++, a_types_all_full, &c, &err) == 0 && !c.layer_sliding[0] &&
		  !c.layer_sliding[2], "all full: %s", err.msg);
	CHECK(load_edited_config(n++, a_old_rope_key, &c, &err) == 0 && c.rope_factor == 32.0f,
		  "rope_scaling.type: %s", err.msg);
}

/* The released 20b and 120b config.json files load. */
static void
test_release_configs(void)
{
	static const char cfg20b[] =
		"{\"architectures\":[\"GptOssForCausalLM\"],\"attention_bias\":true,"
		"\"attention_dropout\":0.0,\"eos_token_id\":200002,\"experts_per_token\":4,"
		"\"head_dim\":64,\"hidden_act\":\"silu\",\"hidden_size\":2880,"
		"\"initial_context_length\":4096,\"initializer_range\":0.02,\"intermediate_size\":2880,"
		"\"layer_types\":[%s],\"max_position_embeddings\":131072,\"model_type\":\"gpt_oss\","
		"\"num_attention_heads\":64,\"num_experts_per_tok\":4,\"num_hidden_layers\":%d,"
		"\"num_key_value_heads\":8,\"num_local_experts\":%d,\"output_router_logits\":false,"
		"\"pad_token_id\":199999,\"quantization_config\":{\"modules_to_not_convert\":"
		"[\"model.layers.*.self_attn\",\"model.layers.*.mlp.router\",\"model.embed_tokens\","
		"\"lm_head\"],\"quant_method\":\"mxfp4\"},\"rms_norm_eps\":1e-05,\"rope_scaling\":"
		"{\"beta_fast\":32.0,\"beta_slow\":1.0,\"factor\":32.0,"
		"\"original_max_position_embeddings\":4096,\"rope_type\":\"yarn\",\"truncate\":false},"
		"\"rope_theta\":150000,\"router_aux_loss_coef\":0.9,\"sliding_window\":128,"
		"\"swiglu_limit\":7.0,\"tie_word_embeddings\":false,\"transformers_version\":"
		"\"4.55.0.dev0\",\"use_cache\":true,\"vocab_size\":201088}";
	const struct
	{
		gptoss_synth_preset preset;
		int			layers,
					experts;
	}			rel[2] = {{GPTOSS_SYNTH_20B, 24, 32}, {GPTOSS_SYNTH_120B, 36, 128}};

	for (int k = 0; k < 2; k++)
	{
		char		types[2048] = "",
					text[8192],
					path[600];
		const char *dir = tmp_path("release%d", k);
		gptoss_config c,
					want;
		gptoss_error err = {0};

		for (int l = 0; l < rel[k].layers; l++)
			strcat(types, l % 2 ? "\"full_attention\"," : "\"sliding_attention\",");
		types[strlen(types) - 1] = '\0';
		snprintf(text, sizeof(text), cfg20b, types, rel[k].layers, rel[k].experts);
		mkdir(dir, 0755);
		snprintf(path, sizeof(path), "%s/config.json", dir);
		write_file(path, text, strlen(text));
		CHECK(gptoss_config_load(dir, &c, &err) == 0, "release config %d: %s", k, err.msg);
		gptoss_synth_config(rel[k].preset, &want, &err);
		check_same_config(k ? "120b release config" : "20b release config", &want, &c);
	}
}

/* ------------------------------------------------- bad safetensors */

typedef void (*header_edit) (json_t *header);

/*
 * Makes dir with the tiny config.json and a model.safetensors whose header
 * edit changed, followed by the tiny data section and 16 bytes of slack.
 */
static const char *
make_edited_checkpoint(const char *name, header_edit edit)
{
	const char *dir = tmp_path("%s", name);
	char		path[600];
	size_t		size;
	uint8_t    *file = read_file(tmp_path("tiny/model.safetensors"), &size);
	uint64_t	hlen = 0;
	json_t	   *header;
	char	   *text;
	size_t		tlen;
	FILE	   *f;

	mkdir(dir, 0755);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	copy_file(tmp_path("tiny/config.json"), path);
	for (int i = 7; i >= 0; i--)
		hlen = (hlen << 8) | file[i];
	header = json_loadb((const char *) file + 8, hlen, 0, NULL);
	edit(header);
	text = json_dumps(header, JSON_COMPACT);
	tlen = (strlen(text) + 7) & ~(size_t) 7;	/* pad with spaces to keep the data 8-aligned */
	text = realloc(text, tlen + 1);
	memset(text + strlen(text), ' ', tlen - strlen(text));
	text[tlen] = '\0';
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	f = fopen(path, "wb");
	for (int b = 0; b < 8; b++)
		fputc((int) ((tlen >> (8 * b)) & 0xff), f);
	fwrite(text, 1, tlen, f);
	fwrite(file + 8 + hlen, 1, size - 8 - hlen, f);
	fwrite("\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 1, 16, f);
	fclose(f);
	free(text);
	json_decref(header);
	free(file);
	return dir;
}

/* Makes dir with the tiny config.json and the tiny model.safetensors patched by a byte edit. */
static const char *
make_patched_checkpoint(const char *name, size_t keep, size_t patch_at, const void *patch,
						size_t patch_len)
{
	const char *dir = tmp_path("%s", name);
	char		path[600];
	size_t		size;
	uint8_t    *file = read_file(tmp_path("tiny/model.safetensors"), &size);

	mkdir(dir, 0755);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	copy_file(tmp_path("tiny/config.json"), path);
	if (patch)
		memcpy(file + patch_at, patch, patch_len);
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	write_file(path, file, keep < size ? keep : size);
	free(file);
	return dir;
}

/* The header entry of tensor name. */
static json_t *
entry(json_t *h, const char *name)
{
	return json_object_get(h, name);
}

EDIT(h_kproj_shape, json_object_set_new(entry(r, "model.layers.3.self_attn.k_proj.weight"), "shape",
										json_pack("[i,i]", 64, 32)))
EDIT(h_offsets_out, json_object_set_new(entry(r, "lm_head.weight"), "data_offsets",
										json_pack("[I,I]", (json_int_t) 1 << 40,
												  ((json_int_t) 1 << 40) + 25739264)))
EDIT(h_offsets_size, json_object_set_new(entry(r, "model.norm.weight"), "shape", json_pack("[i]", 63)))
EDIT(h_dtype, json_object_set_new(entry(r, "model.layers.1.mlp.experts.down_proj_scales"), "dtype",
								  json_string("I8")))
EDIT(h_dtype_unknown, json_object_set_new(entry(r, "model.layers.1.mlp.experts.down_proj_scales"),
										  "dtype", json_string("Q4_K")))
EDIT(h_missing, json_object_del(r, "model.layers.2.mlp.router.bias"))
EDIT(h_extra, json_object_set_new(r, "model.layers.0.self_attn.rotary_emb.inv_freq",
								  json_pack("{s:s,s:[i],s:[i,i]}", "dtype", "F32", "shape", 0,
											"data_offsets", 0, 0)))
EDIT(h_overlap, json_object_set(entry(r, "model.layers.0.self_attn.v_proj.bias"), "data_offsets",
								json_object_get(entry(r, "model.layers.0.self_attn.k_proj.bias"),
												"data_offsets")))
EDIT(h_bad_metadata, json_object_set_new(r, "__metadata__", json_pack("{s:i}", "format", 1)))
/* points sinks at an odd offset in the slack make_edited_checkpoint appends */
EDIT(h_odd_offset, json_object_set_new(entry(r, "model.layers.0.self_attn.sinks"), "data_offsets",
									   json_pack("[I,I]", (json_int_t) 51804896 + 1,
												 (json_int_t) 51804896 + 1 + 8)))

/* A checkpoint with one tensor wrong in each way fails naming the tensor (or the file). */
static void
test_bad_safetensors(void)
{
	uint8_t		huge[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
	uint8_t		big[8] = {0x00, 0x00, 0x00, 0x05, 0, 0, 0, 0};	/* 80 MiB > file */
	char		path[600];
	const char *dir;

	expect_load_error("missing dir", tmp_path("does_not_exist"), "does_not_exist",
					  "No such file");
	mkdir(tmp_path("empty"), 0755);
	expect_load_error("missing config", tmp_path("empty"), "config.json", "No such file");
	snprintf(path, sizeof(path), "%s/config.json", tmp_path("noweights"));
	mkdir(tmp_path("noweights"), 0755);
	copy_file(tmp_path("tiny/config.json"), path);
	expect_load_error("no weights", tmp_path("noweights"), "no model.safetensors", NULL);
	snprintf(path, sizeof(path), "%s/model.safetensors", tmp_path("noweights"));
	write_file(path, "", 0);
	expect_load_error("empty file", tmp_path("noweights"), "model.safetensors", "too small");

	dir = make_patched_checkpoint("truncated", 30000000, 0, NULL, 0);
	expect_load_error("truncated", dir, "model.safetensors", "outside the data section");
	dir = make_patched_checkpoint("truncated_header", 1000, 0, NULL, 0);
	expect_load_error("truncated header", dir, "exceeds the file size", NULL);
	dir = make_patched_checkpoint("garbage_len", (size_t) -1, 0, huge, 8);
	expect_load_error("garbage length", dir, "header length", "not sane");
	dir = make_patched_checkpoint("big_len", (size_t) -1, 0, big, 8);
	expect_load_error("big length", dir, "header length 83886080 exceeds the file size", NULL);
	dir = make_patched_checkpoint("not_json", (size_t) -1, 40, "\x01\x02garbage", 9);
	expect_load_error("header not JSON", dir, "header is not valid JSON", NULL);
	dir = make_patched_checkpoint("not_brace", (size_t) -1, 8, "[", 1);
	expect_load_error("header not an object", dir, "does not start with '{'", NULL);

	dir = make_edited_checkpoint("wrong_shape", h_kproj_shape);
	expect_load_error("wrong shape", dir, "model.layers.3.self_attn.k_proj.weight has shape [64, 32], "
					  "expected [32, 64]", NULL);
	dir = make_edited_checkpoint("offsets_out", h_offsets_out);
	expect_load_error("offsets out of range", dir, "lm_head.weight", "outside the data section");
	dir = make_edited_checkpoint("offsets_size", h_offsets_size);
	expect_load_error("offsets vs shape", dir, "model.norm.weight", "needs 126");
	dir = make_edited_checkpoint("wrong_dtype", h_dtype);
	expect_load_error("wrong dtype", dir, "model.layers.1.mlp.experts.down_proj_scales has dtype I8, "
					  "expected U8", NULL);
	dir = make_edited_checkpoint("unknown_dtype", h_dtype_unknown);
	expect_load_error("unknown dtype", dir, "unknown dtype \"Q4_K\"", NULL);
	dir = make_edited_checkpoint("missing_tensor", h_missing);
	expect_load_error("missing tensor", dir, "missing tensor model.layers.2.mlp.router.bias", NULL);
	dir = make_edited_checkpoint("extra_tensor", h_extra);
	expect_load_error("extra tensor", dir, "unexpected tensor model.layers.0.self_attn.rotary_emb.inv_freq",
					  NULL);
	dir = make_edited_checkpoint("overlap", h_overlap);
	expect_load_error("overlap", dir, "overlap", "v_proj.bias");
	dir = make_edited_checkpoint("bad_metadata", h_bad_metadata);
	expect_load_error("bad metadata", dir, "__metadata__", NULL);
	dir = make_edited_checkpoint("odd_offset", h_odd_offset);
	expect_load_error("misaligned", dir, "model.layers.0.self_attn.sinks", "aligned");
}

/* Shard index problems: missing shard, incomplete or hostile weight_map. */
static void
test_bad_index(void)
{
	char		path[600];
	json_t	   *idx;
	json_t	   *wm;

	CHECK(synth(GPTOSS_SYNTH_TINY, tmp_path("idx_missing"), 3, 3, NULL) == 0, "synth");
	snprintf(path, sizeof(path), "%s/model-00001-of-00002.safetensors", tmp_path("idx_missing"));
	unlink(path);
	expect_load_error("missing shard", tmp_path("idx_missing"), "model-00001-of-00002.safetensors",
					  "No such file");

	CHECK(synth(GPTOSS_SYNTH_TINY, tmp_path("idx_edit"), 3, 3, NULL) == 0, "synth");
	snprintf(path, sizeof(path), "%s/model.safetensors.index.json", tmp_path("idx_edit"));
	idx = json_load_file(path, 0, NULL);
	wm = json_object_get(idx, "weight_map");
	json_object_del(wm, "model.layers.1.self_attn.sinks");
	json_dump_file(idx, path, 0);
	expect_load_error("index lacks a tensor", tmp_path("idx_edit"),
					  "weight_map has no entry for tensor model.layers.1.self_attn.sinks", NULL);
	json_object_set_new(wm, "model.layers.1.self_attn.sinks", json_string("../tiny/model.safetensors"));
	json_dump_file(idx, path, 0);
	expect_load_error("index escapes the dir", tmp_path("idx_edit"), "not a file name", NULL);
	json_object_set_new(wm, "model.layers.1.self_attn.sinks",
						json_string("model-00000-of-00002.safetensors"));
	json_dump_file(idx, path, 0);
	expect_load_error("index points to the wrong shard", tmp_path("idx_edit"),
					  "model-00000-of-00002.safetensors", "missing tensor model.layers.1.self_attn.sinks");
	json_object_set_new(wm, "model.layers.1.self_attn.sinks",
						json_string("model-00001-of-00002.safetensors"));
	json_object_set_new(wm, "model.layers.99.self_attn.sinks",
						json_string("model-00001-of-00002.safetensors"));
	json_dump_file(idx, path, 0);
	expect_load_error("index names an unknown tensor", tmp_path("idx_edit"),
					  "unexpected tensor model.layers.99.self_attn.sinks", NULL);
	json_decref(idx);
	write_file(path, "{\"weight_map\": [", 16);
	expect_load_error("index not JSON", tmp_path("idx_edit"), "model.safetensors.index.json",
					  "invalid JSON");
}

/* ------------------------------------------------ parser on buffers */

/* Parses a file image made of header text and data_len zero bytes. */
static int
parse_image(const char *header, size_t data_len, gptoss_st_file *out, gptoss_error *err)
{
	size_t		hlen = strlen(header);
	uint8_t    *buf = calloc(1, 8 + hlen + data_len);
	int			rc;

	for (int b = 0; b < 8; b++)
		buf[b] = (uint8_t) ((hlen >> (8 * b)) & 0xff);
	memcpy(buf + 8, header, hlen);
	rc = gptoss_st_parse(buf, 8 + hlen + data_len, "img", out, err);
	free(buf);
	return rc;
}

/* Direct parser cases, including ones a checkpoint edit cannot express. */
static void
test_parser(void)
{
	static const struct
	{
		const char *header;
		size_t		data;
		const char *sub;		/* NULL: must parse */
	}			cases[] = {
		{"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
		 "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[2,6]}}", 6, NULL},
		{"{\"__metadata__\":{\"format\":\"pt\"}}", 0, NULL},
		{"{\"e\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[0,0]}}  ", 0, NULL},
		{"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
		 "\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}", 4, "duplicate"},
		{"{\"a\":{\"dtype\":\"U8\",\"shape\":[-2],\"data_offsets\":[0,2]}}", 2, "shape[0]"},
		{"{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, "dimensions"},
		{"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,0]}}", 2, "outside"},
		{"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0]}}", 2, "data_offsets"},
		{"{\"a\":{\"dtype\":\"U8\",\"shape\":[2]}}", 2, "data_offsets"},
		{"{\"a\":{\"shape\":[2],\"data_offsets\":[0,2]}}", 2, "dtype"},
		{"{\"a\":{\"dtype\":\"U8\",\"shape\":2,\"data_offsets\":[0,2]}}", 2, "shape"},
		{"{\"a\":[1]}", 0, "not a JSON object"},
		{"{\"\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, "empty name"},
		{"{\"a\":{\"dtype\":\"U8\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,2]}}", 2,
		 "overflows"},
		{"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,99999999999999999999]}}", 2,
		 "not valid JSON"},
		{"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}} x", 2, "not valid JSON"},
		{"{\"a\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]},"
		 "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}", 4, "overlap"},
		{"{", 0, "not sane"},
		{"{}", 0, NULL},
		{"{} ", 0, NULL},
		{"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],\"extra\":1}}", 2, NULL},
	};
	gptoss_st_file f;
	gptoss_error err;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
	{
		memset(&err, 0, sizeof(err));
		if (!cases[i].sub)
		{
			CHECK(parse_image(cases[i].header, cases[i].data, &f, &err) == 0, "case %zu: %s", i, err.msg);
			gptoss_st_free(&f);
		}
		else
			CHECK(parse_image(cases[i].header, cases[i].data, &f, &err) == -1 &&
				  strstr(err.msg, cases[i].sub) && strstr(err.msg, "img"),
				  "case %zu: \"%s\" lacks \"%s\"", i, err.msg, cases[i].sub);
	}
	CHECK(parse_image(cases[0].header, 6, &f, &err) == 0, "%s", err.msg);
	CHECK(f.n_tensors == 2 && gptoss_st_find(&f, "b") && gptoss_st_find(&f, "b")->dtype == GPTOSS_ST_BF16 &&
		  gptoss_st_find(&f, "b")->offset == f.data_start + 2 && gptoss_st_find(&f, "b")->nbytes == 4 &&
		  gptoss_st_find(&f, "b")->shape[1] == 2 && !gptoss_st_find(&f, "c"), "parsed fields");
	gptoss_st_free(&f);
	CHECK(gptoss_st_parse((const uint8_t *) "1234567", 7, "img", &f, &err) == -1 &&
		  strstr(err.msg, "too small"), "%s", err.msg);
	CHECK(gptoss_st_dtype_size(GPTOSS_ST_BF16) == 2 && strcmp(gptoss_st_dtype_name(GPTOSS_ST_U8), "U8") == 0,
		  "dtype table");
}

/* Runs every test in a private temporary directory. */
int
main(void)
{
	if (tmp_make_dir(tmp_root, sizeof(tmp_root), "gptoss_test_model.") < 0)
	{
		perror("mkdtemp");
		return 1;
	}
	write_file(tmp_path("tok.json"), "{\"tokenizer\": 1}\n", 17);

	test_sizes();
	test_presets();
	test_parser();
	test_synth_roundtrip();
	test_synth_pinned();
	test_synth_errors();
	test_bad_configs();
	test_release_configs();
	test_bad_safetensors();
	test_bad_index();

	remove_tree(tmp_root);
	printf("test_model: %d passed, %d failed\n", n_pass, n_fail);
	return n_fail ? 1 : 0;
}
