/*
 * test_backend_cpu.c: the CPU backend against an independent reference.
 *
 * The reference below is written from the forward pass of
 * docs/architecture.md alone, in double
 * precision, with naive loops: it recomputes attention over the whole prefix
 * for every position (no cache, no ring), decodes MXFP4 with its own table
 * and derives the YaRN frequencies itself.  The model is random and lives in
 * memory, with a small shape where nothing is a power of two (hidden 96,
 * 6 query heads over 2 KV heads, 6 experts, intermediate 160, vocab 1003,
 * window 5), so wrong strides, GQA grouping or interleaving show up.
 *
 * Three more shapes cover one KV head for four query heads with K = 3,
 * head_dim 6 (dot products with scalar tails) with K = 1, and gpt-oss-120b's
 * 128 experts with K = 4.
 *
 * Checks: logits within 1e-4 relative of the reference with the same argmax
 * at every position; a batch of 3 sequences mixing prefill chunks and decode
 * tokens gives bitwise the logits of each sequence run alone; chunked prefill
 * equals one-shot prefill; sequences longer than the sliding window (and a
 * negative control showing the window matters); thread counts agree; the YaRN
 * constants of docs/architecture.md, RoPE and YaRN; input errors are reported and leave the backend
 * usable; the KV-cache bookkeeping.
 */
#include "backend.h"
#include "rope.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>



/* ------------------------------------------------------------ test model */

typedef struct test_model
{
	gptoss_model model;
	gptoss_layer_weights layers[8];
	void	   *allocs[256];
	int			n_allocs;
} test_model;

/* Allocation owned by tm. */
static void *
tm_alloc(test_model *tm, size_t bytes)
{
	void	   *p = calloc(1, bytes);

	if (!p || tm->n_allocs == 256)
	{
		printf("out of memory\n");
		exit(1);
	}
	tm->allocs[tm->n_allocs++] = p;
	return p;
}

/* n bf16 values: mean + std * normal. */
static const gptoss_bf16 *
rand_bf16(test_model *tm, size_t n, double mean, double std)
{
	gptoss_bf16 *p = tm_alloc(tm, n * sizeof(gptoss_bf16));

	for (size_t i = 0; i < n; i++)
		p[i] = gptoss_f32_to_bf16((float) (mean + std * rnd_normal()));
	return p;
}

/* n random bytes (MXFP4 nibbles). */
static const uint8_t *
rand_blocks(test_model *tm, size_t n)
{
	uint8_t    *p = tm_alloc(tm, n);

	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t) (rnd() * 256);
	return p;
}

/* n E8M0 scales in [lo, hi]. */
static const uint8_t *
rand_scales(test_model *tm, size_t n, int lo, int hi)
{
	uint8_t    *p = tm_alloc(tm, n);

	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t) (lo + (int) (rnd() * (hi - lo + 1)));
	return p;
}

/* The small odd shape used throughout. */
static void
test_config(gptoss_config *c)
{
	memset(c, 0, sizeof(*c));
	c->hidden_size = 96;
	c->num_layers = 3;
	c->num_heads = 6;
	c->num_kv_heads = 2;
	c->head_dim = 16;
	c->num_experts = 6;
	c->experts_per_token = 2;
	c->intermediate_size = 160;
	c->vocab_size = 1003;
	c->sliding_window = 5;
	c->max_position_embeddings = 131072;
	c->initial_context_length = 4096;
	c->swiglu_limit = 7.0f;
	c->rms_norm_eps = 1e-5f;
	c->rope_theta = 150000.0f;
	c->rope_factor = 32.0f;
	c->rope_beta_fast = 32.0f;
	c->rope_beta_slow = 1.0f;
	c->rope_original_max_pos = 4096;
	c->rope_truncate = false;
	for (int l = 0; l < c->num_layers; l++)
		c->layer_sliding[l] = (l % 2 == 0);
	c->eos_token_id = 7;
	c->pad_token_id = 8;
}

/* Random weights of cfg's shapes; scales chosen so that activations are O(1) and the clamp bites. */
static void
build_model(test_model *tm, const gptoss_config *cfg, uint64_t seed)
{
	const gptoss_config *c = cfg;
	size_t		h = c->hidden_size,
				d = c->head_dim,
				qd = (size_t) c->num_heads * d,
				kvd = (size_t) c->num_kv_heads * d,
				e = c->num_experts,
				in = c->intermediate_size,
				v = c->vocab_size;
	double		wstd = 1.0 / sqrt((double) h);

	memset(tm, 0, sizeof(*tm));
	rng_state = seed * 0x9E3779B97F4A7C15ULL + 1;
	tm->model.config = *cfg;
	tm->model.embedding = rand_bf16(tm, v * h, 0.0, 1.0);
	tm->model.final_norm = rand_bf16(tm, h, 1.0, 0.1);
	tm->model.lm_head = rand_bf16(tm, v * h, 0.0, wstd);
	tm->model.layers = tm->layers;
	for (int l = 0; l < c->num_layers; l++)
	{
		gptoss_layer_weights *w = &tm->layers[l];

		w->attn_norm = rand_bf16(tm, h, 1.0, 0.1);
		w->q_weight = rand_bf16(tm, qd * h, 0.0, wstd);
		w->q_bias = rand_bf16(tm, qd, 0.0, 0.1);
		w->k_weight = rand_bf16(tm, kvd * h, 0.0, wstd);
		w->k_bias = rand_bf16(tm, kvd, 0.0, 0.1);
		w->v_weight = rand_bf16(tm, kvd * h, 0.0, wstd);
		w->v_bias = rand_bf16(tm, kvd, 0.0, 0.1);
		w->o_weight = rand_bf16(tm, h * qd, 0.0, 1.0 / sqrt((double) qd));
		w->o_bias = rand_bf16(tm, h, 0.0, 0.1);
		w->sinks = rand_bf16(tm, c->num_heads, 0.0, 1.0);
		w->mlp_norm = rand_bf16(tm, h, 1.0, 0.1);
		w->router_weight = rand_bf16(tm, e * h, 0.0, wstd);
		w->router_bias = rand_bf16(tm, e, 0.0, 0.2);
		w->gate_up_blocks = rand_blocks(tm, e * 2 * in * (h / 32) * 16);
		w->gate_up_scales = rand_scales(tm, e * 2 * in * (h / 32), 121, 125);
		w->gate_up_bias = rand_bf16(tm, e * 2 * in, 0.0, 0.5);
		w->down_blocks = rand_blocks(tm, e * h * (in / 32) * 16);
		w->down_scales = rand_scales(tm, e * h * (in / 32), 119, 122);
		w->down_bias = rand_bf16(tm, e * h, 0.0, 0.1);
	}
}

static void
free_model(test_model *tm)
{
	for (int i = 0; i < tm->n_allocs; i++)
		free(tm->allocs[i]);
	tm->n_allocs = 0;
}

/* ------------------------------------------------ the double reference */

static const double ref_fp4[16] = {
	0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0
};

static double
bf(gptoss_bf16 v)
{
	return (double) gptoss_bf16_to_f32(v);
}

/* W[e][r][col] of an MXFP4 tensor with n_in inputs, straight from docs/architecture.md, MXFP4. */
static double
ref_mxfp4(const uint8_t *blocks, const uint8_t *scales, int e, int rows, int r, int n_in, int col)
{
	size_t		row = (size_t) e * rows + r;
	uint8_t		byte = blocks[(row * (n_in / 32) + col / 32) * 16 + (col % 32) / 2];
	int			nib = (col & 1) ? byte >> 4 : byte & 15;

	return ldexp(ref_fp4[nib], (int) scales[row * (n_in / 32) + col / 32] - 127);
}

/* rmsnorm in double. */
static void
ref_rmsnorm(const double *x, const gptoss_bf16 *w, double eps, double *y, int n)
{
	double		ss = 0;

	for (int i = 0; i < n; i++)
		ss += x[i] * x[i];
	for (int i = 0; i < n; i++)
		y[i] = x[i] / sqrt(ss / n + eps) * bf(w[i]);
}

/* YaRN frequencies and concentration, written out from the spec (with HF's clamp of low/high). */
static void
ref_yarn(const gptoss_config *c, double *f, double *m)
{
	int			d = c->head_dim;
	double		theta = c->rope_theta,
				s = c->rope_factor,
				l0 = c->rope_original_max_pos;
	double		low = d * log(l0 / (c->rope_beta_fast * 2 * M_PI)) / (2 * log(theta));
	double		high = d * log(l0 / (c->rope_beta_slow * 2 * M_PI)) / (2 * log(theta));

	if (c->rope_truncate)
	{
		low = floor(low);
		high = ceil(high);
	}
	low = fmax(low, 0.0);
	high = fmin(high, d - 1.0);
	for (int i = 0; i < d / 2; i++)
	{
		double		base = pow(theta, 2.0 * i / d);
		double		ramp = fmin(fmax((i - low) / (high - low), 0.0), 1.0);

		f[i] = (1.0 / (s * base)) * ramp + (1.0 / base) * (1.0 - ramp);
	}
	*m = 0.1 * log(s) + 1.0;
}

/*
 * Logits [n][V] of tokens[0..n) by the spec, everything recomputed from
 * scratch.  window_override > 0 replaces the sliding window (negative control).
 */
static double *
ref_forward(const gptoss_model *model, const int32_t *tokens, int n, int window_override)
{
	const gptoss_config *c = &model->config;
	int			h = c->hidden_size,
				d = c->head_dim,
				hq = c->num_heads,
				hkv = c->num_kv_heads,
				ne = c->num_experts,
				kk = c->experts_per_token,
				in = c->intermediate_size,
				v = c->vocab_size;
	int			window = window_override > 0 ? window_override : c->sliding_window;
	double	   *x = calloc((size_t) n * h, sizeof(double));
	double	   *t = calloc((size_t) n * h, sizeof(double));
	double	   *q = calloc((size_t) n * hq * d, sizeof(double));
	double	   *k = calloc((size_t) n * hkv * d, sizeof(double));
	double	   *vv = calloc((size_t) n * hkv * d, sizeof(double));
	double	   *o = calloc((size_t) hq * d, sizeof(double));
	double	   *sc = calloc((size_t) n + 1, sizeof(double));
	double	   *gu = calloc((size_t) 2 * in, sizeof(double));
	double	   *act = calloc((size_t) in, sizeof(double));
	double	   *logits = calloc((size_t) n * v, sizeof(double));
	double		f[GPTOSS_ROPE_MAX_HALF],
				m;

	ref_yarn(c, f, &m);
	for (int p = 0; p < n; p++)
		for (int i = 0; i < h; i++)
			x[(size_t) p * h + i] = bf(model->embedding[(size_t) tokens[p] * h + i]);

	for (int l = 0; l < c->num_layers; l++)
	{
		const gptoss_layer_weights *w = &model->layers[l];

		/* attention */
		for (int p = 0; p < n; p++)
		{
			double	   *tp = t + (size_t) p * h;

			ref_rmsnorm(x + (size_t) p * h, w->attn_norm, c->rms_norm_eps, tp, h);
			for (int r = 0; r < hq * d; r++)
			{
				double		s = bf(w->q_bias[r]);

				for (int i = 0; i < h; i++)
					s += bf(w->q_weight[(size_t) r * h + i]) * tp[i];
				q[(size_t) p * hq * d + r] = s;
			}
			for (int r = 0; r < hkv * d; r++)
			{
				double		sk = bf(w->k_bias[r]),
							sv = bf(w->v_bias[r]);

				for (int i = 0; i < h; i++)
				{
					sk += bf(w->k_weight[(size_t) r * h + i]) * tp[i];
					sv += bf(w->v_weight[(size_t) r * h + i]) * tp[i];
				}
				k[(size_t) p * hkv * d + r] = sk;
				vv[(size_t) p * hkv * d + r] = sv;
			}
			/* rope: half-split pairs, both cos and sin times m */
			for (int head = 0; head < hq + hkv; head++)
			{
				double	   *vec = head < hq ? q + ((size_t) p * hq + head) * d
					: k + ((size_t) p * hkv + head - hq) * d;

				for (int i = 0; i < d / 2; i++)
				{
					double		cs = m * cos(p * f[i]),
								sn = m * sin(p * f[i]);
					double		a = vec[i],
								b = vec[i + d / 2];

					vec[i] = a * cs - b * sn;
					vec[i + d / 2] = b * cs + a * sn;
				}
			}
		}
		for (int p = 0; p < n; p++)
		{
			for (int head = 0; head < hq; head++)
			{
				int			g = head / (hq / hkv);
				int			lo = c->layer_sliding[l] ? p - window + 1 : 0;
				double		sink = bf(w->sinks[head]),
							mx = sink,
							den = 0;

				if (lo < 0)
					lo = 0;
				for (int j = lo; j <= p; j++)
				{
					double		s = 0;

					for (int i = 0; i < d; i++)
						s += q[((size_t) p * hq + head) * d + i] * k[((size_t) j * hkv + g) * d + i];
					sc[j] = s / sqrt((double) d);
					mx = fmax(mx, sc[j]);
				}
				for (int j = lo; j <= p; j++)
					den += exp(sc[j] - mx);
				den += exp(sink - mx);
				for (int i = 0; i < d; i++)
				{
					double		s = 0;

					for (int j = lo; j <= p; j++)
						s += exp(sc[j] - mx) / den * vv[((size_t) j * hkv + g) * d + i];
					o[(size_t) head * d + i] = s;
				}
			}
			for (int r = 0; r < h; r++)
			{
				double		s = bf(w->o_bias[r]);

				for (int i = 0; i < hq * d; i++)
					s += bf(w->o_weight[(size_t) r * hq * d + i]) * o[i];
				t[(size_t) p * h + r] = s;	/* t reused as the attention output */
			}
		}
		for (size_t i = 0; i < (size_t) n * h; i++)
			x[i] += t[i];

		/* mixture of experts */
		for (int p = 0; p < n; p++)
		{
			double		tp[1024],
						g[128],		/* router logits: at most 128 experts (gpt-oss-120b) */
						moe[1024] = {0};
			int			sel[8];
			double		wsum = 0,
						wk[8];

			ref_rmsnorm(x + (size_t) p * h, w->mlp_norm, c->rms_norm_eps, tp, h);
			for (int e = 0; e < ne; e++)
			{
				g[e] = bf(w->router_bias[e]);
				for (int i = 0; i < h; i++)
					g[e] += bf(w->router_weight[(size_t) e * h + i]) * tp[i];
			}
			for (int j = 0; j < kk; j++)
			{
				int			best = -1;

				for (int e = 0; e < ne; e++)
				{
					int			used = 0;

					for (int u = 0; u < j; u++)
						used |= sel[u] == e;
					if (!used && (best < 0 || g[e] > g[best]))
						best = e;
				}
				sel[j] = best;
			}
			for (int j = 0; j < kk; j++)
				wsum += exp(g[sel[j]] - g[sel[0]]);
			for (int j = 0; j < kk; j++)
				wk[j] = exp(g[sel[j]] - g[sel[0]]) / wsum;
			for (int j = 0; j < kk; j++)
			{
				int			e = sel[j];

				for (int r = 0; r < 2 * in; r++)
				{
					double		s = bf(w->gate_up_bias[(size_t) e * 2 * in + r]);

					for (int i = 0; i < h; i++)
						s += ref_mxfp4(w->gate_up_blocks, w->gate_up_scales, e, 2 * in, r, h, i) * tp[i];
					gu[r] = s;
				}
				for (int i = 0; i < in; i++)
				{
					double		gate = fmin(gu[2 * i], c->swiglu_limit);
					double		up = fmax(fmin(gu[2 * i + 1], c->swiglu_limit), -c->swiglu_limit);

					act[i] = gate / (1.0 + exp(-1.702 * gate)) * (up + 1.0);
				}
				for (int r = 0; r < h; r++)
				{
					double		s = bf(w->down_bias[(size_t) e * h + r]);

					for (int i = 0; i < in; i++)
						s += ref_mxfp4(w->down_blocks, w->down_scales, e, h, r, in, i) * act[i];
					moe[r] += wk[j] * s;
				}
			}
			for (int r = 0; r < h; r++)
				x[(size_t) p * h + r] += moe[r];
		}
	}
	for (int p = 0; p < n; p++)
	{
		double		tp[1024];

		ref_rmsnorm(x + (size_t) p * h, model->final_norm, c->rms_norm_eps, tp, h);
		for (int r = 0; r < v; r++)
		{
			double		s = 0;

			for (int i = 0; i < h; i++)
				s += bf(model->lm_head[(size_t) r * h + i]) * tp[i];
			logits[(size_t) p * v + r] = s;
		}
	}
	free(x);
	free(t);
	free(q);
	free(k);
	free(vv);
	free(o);
	free(sc);
	free(gu);
	free(act);
	return logits;
}

/* ---------------------------------------------------------------- helpers */

/* max |a - b| / max |b| over a row. */
static double
row_rel_err(const float *a, const double *b, int n)
{
	double		num = 0,
				den = 0;

	for (int i = 0; i < n; i++)
	{
		num = fmax(num, fabs(a[i] - b[i]));
		den = fmax(den, fabs(b[i]));
	}
	return num / (den > 0 ? den : 1);
}

static int
argmax_d(const double *v, int n)
{
	int			best = 0;

	for (int i = 1; i < n; i++)
		if (v[i] > v[best])
			best = i;
	return best;
}

static gptoss_backend *
make_backend(const gptoss_model *m, int max_seqs, int max_context, int threads)
{
	gptoss_backend_opts o = {0};
	gptoss_error err = {0};
	gptoss_backend *be;

	o.max_seqs = max_seqs;
	o.max_context = max_context;
	o.threads = threads;
	be = gptoss_backend_create("cpu", m, &o, NULL, NULL, &err);
	if (!be)
	{
		printf("backend create failed: %s\n", err.msg);
		exit(1);
	}
	return be;
}

/* Runs tokens through slot 0 in chunks of the given sizes; logits of all positions into out [n][V]. */
static int
run_chunked(gptoss_backend *be, int slot, const int32_t *tokens, int n, const int *chunks, int n_chunks,
			float *out)
{
	gptoss_error err = {0};
	int			pos = 0;
	int			ci = 0;

	while (pos < n)
	{
		gptoss_step_seq s = {0};
		int			len = n_chunks > 0 ? chunks[ci++ % n_chunks] : n;

		if (len > n - pos)
			len = n - pos;
		s.slot = slot;
		s.pos = pos;
		s.n_tokens = len;
		s.tokens = tokens + pos;
		if (be->step(be, &s, 1, NULL, out + (size_t) pos * be->model->config.vocab_size, &err) < 0)
		{
			printf("step failed: %s\n", err.msg);
			return -1;
		}
		pos += len;
	}
	return 0;
}

/* ------------------------------------------------------------------ tests */

/* Backend vs the double reference, over a sequence 4x longer than the window. */
static void
test_against_reference(const test_model *tm)
{
	const gptoss_config *c = &tm->model.config;
	int			n = 21;
	int32_t		tokens[21];
	float	   *got = malloc(sizeof(float) * n * c->vocab_size);
	double	   *ref,
			   *ref_nowin;
	gptoss_backend *be = make_backend(&tm->model, 2, 64, 2);
	double		worst = 0,
				worst_nowin = 0;
	int			argmax_ok = 1;

	for (int i = 0; i < n; i++)
		tokens[i] = (int32_t) (rnd() * c->vocab_size);
	ref = ref_forward(&tm->model, tokens, n, 0);
	ref_nowin = ref_forward(&tm->model, tokens, n, 1000);
	CHECK(run_chunked(be, 0, tokens, n, NULL, 0, got) == 0, "one-shot prefill");
	for (int p = 0; p < n; p++)
	{
		double		e = row_rel_err(got + (size_t) p * c->vocab_size, ref + (size_t) p * c->vocab_size, c->vocab_size);
		double		e2 = row_rel_err(got + (size_t) p * c->vocab_size, ref_nowin + (size_t) p * c->vocab_size, c->vocab_size);

		worst = fmax(worst, e);
		worst_nowin = fmax(worst_nowin, e2);
		if (gptoss_argmax(got + (size_t) p * c->vocab_size, c->vocab_size) !=
			argmax_d(ref + (size_t) p * c->vocab_size, c->vocab_size))
			argmax_ok = 0;
	}
	printf("reference: max relative error %.3g over %d positions (window ignored: %.3g)\n",
		   worst, n, worst_nowin);
	CHECK(worst <= 1e-4, "relative error %.3g vs the double reference exceeds 1e-4", worst);
	CHECK(argmax_ok, "argmax differs from the reference at some position");
	/* negative control: the window changes the answer, so the comparison above tests it */
	CHECK(worst_nowin > 1e-3, "ignoring the sliding window changed nothing (%.3g)", worst_nowin);

	/* the same with chunked prefill of uneven sizes, some longer than the window */
	{
		int			chunks[] = {1, 3, 7, 2, 9};
		float	   *chunked = malloc(sizeof(float) * n * c->vocab_size);

		be->release(be, 0);
		CHECK(run_chunked(be, 0, tokens, n, chunks, 5, chunked) == 0, "chunked prefill");
		CHECK(memcmp(chunked, got, sizeof(float) * n * c->vocab_size) == 0,
			  "chunked prefill differs from one-shot prefill");
		be->release(be, 0);
		/* one token at a time (pure decode) on the other slot */
		{
			int			one[] = {1};

			CHECK(run_chunked(be, 1, tokens, n, one, 1, chunked) == 0, "token-by-token");
			CHECK(memcmp(chunked, got, sizeof(float) * n * c->vocab_size) == 0,
				  "token-by-token decode differs from one-shot prefill");
		}
		free(chunked);
	}
	be->free(be);

	/* thread counts give identical results */
	for (int threads = 1; threads <= 3; threads += 2)
	{
		float	   *other = malloc(sizeof(float) * n * c->vocab_size);
		gptoss_backend *b2 = make_backend(&tm->model, 1, 64, threads);

		CHECK(run_chunked(b2, 0, tokens, n, NULL, 0, other) == 0, "threads %d", threads);
		CHECK(memcmp(other, got, sizeof(float) * n * c->vocab_size) == 0,
			  "%d threads give different logits", threads);
		b2->free(b2);
		free(other);
	}
	free(ref);
	free(ref_nowin);
	free(got);
}

/* A step mixing prefill chunks and decode tokens of 3 sequences equals each alone. */
static void
test_batched(const test_model *tm)
{
	const gptoss_config *c = &tm->model.config;
	int			v = c->vocab_size;
	enum { NSEQ = 3 };
	int			len[NSEQ] = {11, 4, 16};
	int32_t		tok[NSEQ][16];
	float	   *alone[NSEQ];
	float	   *batched[NSEQ];
	int			pos[NSEQ] = {0};
	/* per step, tokens each sequence feeds (0 = not in this step) */
	int			plan[][NSEQ] = {
		{5, 3, 0}, {1, 1, 6}, {4, 0, 1}, {1, 0, 7}, {0, 0, 1}, {0, 0, 1}
	};
	gptoss_backend *be = make_backend(&tm->model, 4, 32, 2);
	gptoss_error err = {0};
	int			ok = 1,
				greedy_ok = 1;

	for (int s = 0; s < NSEQ; s++)
	{
		gptoss_backend *b1 = make_backend(&tm->model, 1, 32, 1);

		for (int i = 0; i < len[s]; i++)
			tok[s][i] = (int32_t) (rnd() * v);
		alone[s] = malloc(sizeof(float) * len[s] * v);
		batched[s] = malloc(sizeof(float) * len[s] * v);
		run_chunked(b1, 0, tok[s], len[s], NULL, 0, alone[s]);
		b1->free(b1);
	}
	for (size_t st = 0; st < sizeof(plan) / sizeof(plan[0]); st++)
	{
		gptoss_step_seq seqs[NSEQ];
		int32_t		next[NSEQ];
		int			n = 0,
					rows = 0,
					map[NSEQ];
		float	   *logits;

		for (int s = 0; s < NSEQ; s++)
			if (plan[st][s] > 0)
			{
				memset(&seqs[n], 0, sizeof(seqs[n]));
				seqs[n].slot = s == 1 ? 3 : s;	/* slots need not be dense */
				seqs[n].pos = pos[s];
				seqs[n].n_tokens = plan[st][s];
				seqs[n].tokens = tok[s] + pos[s];
				seqs[n].sample = 1;		/* greedy */
				map[n++] = s;
				rows += plan[st][s];
			}
		logits = malloc(sizeof(float) * rows * v);
		if (be->step(be, seqs, n, next, logits, &err) < 0)
		{
			CHECK(0, "batched step %zu failed: %s", st, err.msg);
			free(logits);
			break;
		}
		rows = 0;
		for (int i = 0; i < n; i++)
		{
			int			s = map[i];

			memcpy(batched[s] + (size_t) pos[s] * v, logits + (size_t) rows * v,
				   sizeof(float) * seqs[i].n_tokens * v);
			rows += seqs[i].n_tokens;
			pos[s] += seqs[i].n_tokens;
			if (next[i] != gptoss_argmax(alone[s] + (size_t) (pos[s] - 1) * v, v))
				greedy_ok = 0;
		}
		free(logits);
	}
	for (int s = 0; s < NSEQ; s++)
	{
		CHECK(pos[s] == len[s], "plan covers sequence %d", s);
		if (memcmp(batched[s], alone[s], sizeof(float) * len[s] * v) != 0)
			ok = 0;
	}
	CHECK(ok, "batched logits differ from each sequence alone");
	CHECK(greedy_ok, "greedy next tokens differ from the argmax of the logits");

	/* without a logits buffer only sampled rows are computed: same tokens */
	{
		gptoss_backend_info info;
		gptoss_step_seq seqs[NSEQ] = {0};
		int32_t		next[NSEQ] = {-1, -1, -1};
		int32_t		extra[NSEQ];

		be->get_info(be, &info);
		CHECK(info.kv_cache_used_tokens == len[0] + len[1] + len[2],
			  "kv used %lld, expected %d", (long long) info.kv_cache_used_tokens, len[0] + len[1] + len[2]);
		CHECK(info.kv_cache_tokens == 4 * 32, "kv capacity %lld", (long long) info.kv_cache_tokens);
		CHECK(info.kv_cache_bytes > 0 && info.memory_used_bytes >= info.kv_cache_bytes, "memory figures");
		for (int s = 0; s < NSEQ; s++)
		{
			extra[s] = (int32_t) (rnd() * v);
			seqs[s].slot = s == 1 ? 3 : s;
			seqs[s].pos = len[s];
			seqs[s].n_tokens = 1;
			seqs[s].tokens = &extra[s];
			seqs[s].sample = s != 1;
			if (s == 0)
			{
				/* a sampled token: the same draw as sampling the alone logits */
				seqs[s].sampling.temperature = 0.8f;
				seqs[s].sampling.top_p = 0.9f;
				seqs[s].sampling.seed = 1234;
			}
		}
		CHECK(be->step(be, seqs, NSEQ, next, NULL, &err) == 0, "decode step without logits: %s", err.msg);
		CHECK(next[1] == -1, "unsampled entry got a token");
		for (int s = 0; s < NSEQ; s += 2)
		{
			gptoss_backend *b1 = make_backend(&tm->model, 1, 32, 1);
			float	   *lg = malloc(sizeof(float) * (len[s] + 1) * v);
			int32_t		all[17];

			memcpy(all, tok[s], sizeof(int32_t) * len[s]);
			all[len[s]] = extra[s];
			void	   *scratch = malloc((size_t) v * 8);

			run_chunked(b1, 0, all, len[s] + 1, NULL, 0, lg);
			CHECK(next[s] == gptoss_sample(lg + (size_t) len[s] * v, v, &seqs[s].sampling, len[s] + 1, scratch),
				  "sequence %d: sampled %d without logits buffer", s, next[s]);
			free(scratch);
			b1->free(b1);
			free(lg);
		}
		be->release(be, 3);
		be->get_info(be, &info);
		CHECK(info.kv_cache_used_tokens == len[0] + len[2] + 2, "kv used after release %lld",
			  (long long) info.kv_cache_used_tokens);
	}
	be->free(be);
	for (int s = 0; s < NSEQ; s++)
	{
		free(alone[s]);
		free(batched[s]);
	}
}

/* Bad inputs give errors, change nothing, and the backend keeps working. */
static void
test_errors(const test_model *tm)
{
	const gptoss_config *c = &tm->model.config;
	int			v = c->vocab_size;
	gptoss_backend *be = make_backend(&tm->model, 2, 12, 2);
	gptoss_error err = {0};
	int32_t		toks[13] = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17};
	int32_t		bad[2] = {3, 0};
	int32_t		next[2];
	gptoss_step_seq s = {0};
	gptoss_step_seq two[2] = {{0}};
	float	   *ref = malloc(sizeof(float) * 13 * v);
	float	   *got = malloc(sizeof(float) * 13 * v);

	s.slot = 0;
	s.pos = 0;
	s.n_tokens = 2;
	s.tokens = bad;
	bad[1] = v;
	CHECK(be->step(be, &s, 1, NULL, NULL, &err) < 0 && err.code == GPTOSS_ERR_INVALID,
		  "token id = vocab accepted");
	printf("  expected error: %s\n", err.msg);
	bad[1] = -1;
	CHECK(be->step(be, &s, 1, NULL, NULL, &err) < 0 && err.code == GPTOSS_ERR_INVALID,
		  "negative token id accepted");
	s.tokens = toks;
	s.slot = 2;
	CHECK(be->step(be, &s, 1, NULL, NULL, &err) < 0 && err.code == GPTOSS_ERR_INVALID,
		  "slot = max_seqs accepted");
	printf("  expected error: %s\n", err.msg);
	s.slot = -1;
	CHECK(be->step(be, &s, 1, NULL, NULL, &err) < 0, "negative slot accepted");
	s.slot = 0;
	s.pos = 1;
	CHECK(be->step(be, &s, 1, NULL, NULL, &err) < 0 && err.code == GPTOSS_ERR_INVALID,
		  "pos beyond the cached length accepted");
	printf("  expected error: %s\n", err.msg);
	s.pos = 0;
	s.n_tokens = 13;
	CHECK(be->step(be, &s, 1, NULL, NULL, &err) < 0 && err.code == GPTOSS_ERR_TOO_LONG,
		  "pos + n_tokens > max_context accepted");
	s.n_tokens = 0;
	CHECK(be->step(be, &s, 1, NULL, NULL, &err) < 0, "n_tokens 0 accepted");
	s.n_tokens = 2;
	s.sample = 1;
	CHECK(be->step(be, &s, 1, NULL, NULL, &err) < 0, "sample without next_tokens accepted");
	s.sampling.temperature = -1;
	CHECK(be->step(be, &s, 1, next, NULL, &err) < 0, "negative temperature accepted");
	s.sampling.temperature = 1;
	s.sampling.top_p = 0;
	CHECK(be->step(be, &s, 1, next, NULL, &err) < 0, "top_p 0 accepted");
	s.sample = 0;
	two[0] = s;
	two[1] = s;
	CHECK(be->step(be, two, 2, NULL, NULL, &err) < 0, "the same slot twice in a step accepted");
	/* a valid entry next to an invalid one: nothing happens to either */
	two[1].slot = 1;
	two[1].tokens = bad;
	CHECK(be->step(be, two, 2, NULL, NULL, &err) < 0, "mixed valid/invalid step accepted");

	/* nothing was cached by the failed steps: the slots still start at 0 */
	{
		gptoss_backend *fresh = make_backend(&tm->model, 1, 12, 1);

		run_chunked(fresh, 0, toks, 12, NULL, 0, ref);
		fresh->free(fresh);
	}
	CHECK(run_chunked(be, 0, toks, 12, NULL, 0, got) == 0, "valid step after errors");
	CHECK(memcmp(ref, got, sizeof(float) * 12 * v) == 0, "failed steps left state behind");
	/* the context is full now */
	s.pos = 12;
	s.n_tokens = 1;
	s.sample = 0;
	CHECK(be->step(be, &s, 1, NULL, NULL, &err) < 0 && err.code == GPTOSS_ERR_TOO_LONG,
		  "step past max_context accepted");
	be->release(be, 0);
	CHECK(run_chunked(be, 0, toks, 12, NULL, 0, got) == 0, "slot reused after release");
	CHECK(memcmp(ref, got, sizeof(float) * 12 * v) == 0, "reused slot differs from a fresh one");
	be->free(be);

	/* a KV cache capped below max_seqs * max_context reports BUSY, not a crash */
	{
		gptoss_backend_opts o = {0};
		gptoss_backend *small;

		o.max_seqs = 2;
		o.max_context = 12;
		o.kv_cache_tokens = 10;
		o.threads = 1;
		small = gptoss_backend_cpu_create(&tm->model, &o, &err);
		CHECK(small != NULL, "create with kv_cache_tokens: %s", err.msg);
		if (small)
		{
			s.slot = 0;
			s.pos = 0;
			s.n_tokens = 8;
			s.tokens = toks;
			CHECK(small->step(small, &s, 1, NULL, NULL, &err) == 0, "8 tokens fit");
			s.slot = 1;
			s.n_tokens = 3;
			CHECK(small->step(small, &s, 1, NULL, NULL, &err) < 0 && err.code == GPTOSS_ERR_BUSY,
				  "KV cache over capacity accepted");
			small->release(small, 0);
			CHECK(small->step(small, &s, 1, NULL, NULL, &err) == 0, "fits after release: %s", err.msg);
			small->free(small);
		}
	}
	/* creation errors */
	{
		gptoss_backend_opts o = {0};
		gptoss_model broken = tm->model;

		o.max_seqs = 0;
		o.max_context = 8;
		CHECK(gptoss_backend_cpu_create(&tm->model, &o, &err) == NULL, "max_seqs 0 accepted");
		o.max_seqs = 1;
		CHECK(gptoss_backend_create("tpu", &tm->model, &o, NULL, NULL, &err) == NULL, "device tpu accepted");
		broken.config.hidden_size = 100;
		CHECK(gptoss_backend_cpu_create(&broken, &o, &err) == NULL, "hidden 100 (not /32) accepted");
		if (!gptoss_cuda_available())
		{
			gptoss_backend *au = gptoss_backend_create("auto", &tm->model, &o, NULL, NULL, &err);

			CHECK(au != NULL && strcmp(au->name, "cpu") == 0, "auto picks cpu without CUDA");
			if (au)
				au->free(au);
		}
	}
	free(ref);
	free(got);
}

/* The YaRN constants of gpt-oss-20b, and the clamp of HF for a tiny config. */
static void
test_yarn(void)
{
	gptoss_config c;
	gptoss_rope r;
	gptoss_error err = {0};
	struct
	{
		int			i;
		double		f;
	}			want[] = {{0, 1.0}, {8, 0.0508133}, {9, 0.0317057}, {17, 1.29319e-4}, {31, 3.02351e-7}};
	double		f[GPTOSS_ROPE_MAX_HALF],
				m;
	float		cs[32],
				sn[32],
				table[3 * 32 * 2];

	test_config(&c);
	c.head_dim = 64;
	c.rope_original_max_pos = 4096;
	CHECK(gptoss_rope_init(&r, &c, &err) == 0, "rope init: %s", err.msg);
	for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++)
		CHECK(fabs(r.inv_freq[want[k].i] / want[k].f - 1) < 1e-5, "f_%d = %.7g, want %.7g",
			  want[k].i, r.inv_freq[want[k].i], want[k].f);
	CHECK(fabs(r.concentration - 1.3465736) < 1e-6, "m = %.8f", r.concentration);
	CHECK(fabs(r.low - 8.092779) < 1e-5 && fabs(r.high - 17.398025) < 1e-5,
		  "low %.6f high %.6f", r.low, r.high);
	/* the table and the per-position values agree, positions wrap nowhere */
	gptoss_rope_table(&r, 3, table);
	gptoss_rope_cos_sin(&r, 2, cs, sn);
	CHECK(table[(2 * 32 + 5) * 2] == cs[5] && table[(2 * 32 + 5) * 2 + 1] == sn[5],
		  "rope table layout");
	CHECK(fabs(table[0] - 1.3465736) < 1e-6 && table[1] == 0.0f, "position 0 is (m, 0)");

	/* a tiny shape where HF clamps low below 0 */
	test_config(&c);
	c.rope_original_max_pos = 128;
	CHECK(gptoss_rope_init(&r, &c, &err) == 0, "tiny rope init");
	ref_yarn(&c, f, &m);
	CHECK(r.low == 0.0, "low clamped to 0 (got %g)", r.low);
	for (int i = 0; i < c.head_dim / 2; i++)
		CHECK(fabs(r.inv_freq[i] / f[i] - 1) < 1e-12, "tiny f_%d %.9g vs %.9g", i, r.inv_freq[i], f[i]);
	/* truncate floors/ceils the bounds */
	test_config(&c);
	c.head_dim = 64;
	c.rope_truncate = true;
	gptoss_rope_init(&r, &c, &err);
	CHECK(r.low == 8.0 && r.high == 18.0, "truncate: low %g high %g", r.low, r.high);
	/* no scaling: plain rope */
	c.rope_factor = 1.0f;
	gptoss_rope_init(&r, &c, &err);
	CHECK(r.concentration == 1.0 && fabs(r.inv_freq[1] - pow(150000.0, -2.0 / 64)) < 1e-15, "plain rope");
	c.head_dim = 15;
	CHECK(gptoss_rope_init(&r, &c, &err) < 0, "odd head_dim accepted");
}

int
main(void)
{
	gptoss_config cfg;
	test_model *tm = malloc(sizeof(test_model));

	test_yarn();
	test_config(&cfg);
	build_model(tm, &cfg, 1);
	test_against_reference(tm);
	test_batched(tm);
	test_errors(tm);
	free_model(tm);

	/* a second shape: one KV head (group 4), K = 3, window longer than some prompts */
	test_config(&cfg);
	cfg.hidden_size = 64;
	cfg.num_layers = 2;
	cfg.num_heads = 4;
	cfg.num_kv_heads = 1;
	cfg.head_dim = 8;
	cfg.num_experts = 5;
	cfg.experts_per_token = 3;
	cfg.intermediate_size = 96;
	cfg.vocab_size = 517;
	cfg.sliding_window = 7;
	cfg.layer_sliding[0] = false;
	cfg.layer_sliding[1] = true;
	build_model(tm, &cfg, 2);
	test_against_reference(tm);
	free_model(tm);

	/* a third: head_dim 6 and Hq*D = 18, so every dot product has a scalar tail; K = 1 */
	test_config(&cfg);
	cfg.hidden_size = 32;
	cfg.num_layers = 2;
	cfg.num_heads = 3;
	cfg.num_kv_heads = 3;
	cfg.head_dim = 6;
	cfg.num_experts = 3;
	cfg.experts_per_token = 1;
	cfg.intermediate_size = 32;
	cfg.vocab_size = 301;
	cfg.sliding_window = 3;
	build_model(tm, &cfg, 3);
	test_against_reference(tm);
	free_model(tm);

	/* a fourth: gpt-oss-120b's expert counts (128 experts, top 4), most experts unused per step */
	test_config(&cfg);
	cfg.hidden_size = 64;
	cfg.num_layers = 2;
	cfg.num_heads = 4;
	cfg.num_kv_heads = 2;
	cfg.num_experts = 128;
	cfg.experts_per_token = 4;
	cfg.intermediate_size = 64;
	cfg.vocab_size = 409;
	build_model(tm, &cfg, 4);
	test_against_reference(tm);
	free_model(tm);
	free(tm);

	printf("%d passed, %d failed\n", n_pass, n_fail);
	return n_fail ? 1 : 0;
}
