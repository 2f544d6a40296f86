/*
 * test_fixtures.c: the CPU (or CUDA) backend against HF transformers' logits.
 *
 * Each test/fixtures/model_*.json was written by test/reference/model_ref.py
 * on a machine with PyTorch, from a `gptoss synth` checkpoint whose preset and
 * seed the fixture names.  Here the same checkpoint is synthesised again into
 * a temporary directory, loaded, and run through the CPU backend: every prompt
 * as one prefill step with all logits, then a greedy continuation through
 * decode steps.  Required: identical argmax at every position, probe logits
 * and top-10 logits within 1e-3 relative, logsumexp within 1e-3, the same
 * top-10 ids (up to near-ties) and the same 12 greedy tokens.
 *
 * The fixture also records the config and a few raw weight values, so a
 * changed synth preset or generator is reported as a stale fixture rather
 * than as a numerical failure.  GPTOSS_FIXTURES overrides the directory;
 * with GPTOSS_REQUIRE_FIXTURES=1 a missing fixture is a failure.
 *
 * For full-size (20b) fixtures, which are too big for CI and whose reference
 * may be bf16, the environment changes what runs (test/reference/check-20b.sh):
 *   GPTOSS_FIXTURE_FILES=a.json,b.json  these fixtures instead of the directory;
 *   GPTOSS_FIXTURE_MODEL=DIR            this existing checkpoint instead of a synth;
 *   GPTOSS_FIXTURE_DEVICE=cpu|cuda      the backend (default cpu);
 *   GPTOSS_FIXTURE_MAX_PROMPTS=N        only each fixture's first N prompts;
 *   GPTOSS_FIXTURE_CUDA_GRAPHS=0|1      CUDA decode graphs (default 1, as the worker);
 *   GPTOSS_FIXTURE_STATS=1              statistics instead of requirements: top-1
 *       agreement over all positions and over those whose HF top-2 margin exceeds
 *       GPTOSS_FIXTURE_MARGIN (default 0.05), the last position's top-10 relative
 *       error and logsumexp difference, and how many greedy continuations are
 *       identical (else the first differing index).  Only failures to run
 *       (load, step, stale fixture) fail; after the pass/fail line comes one
 *       JSON line per fixture, starting {"fixture_stats":, for the bench log.
 */
#define _XOPEN_SOURCE 700
#include "tmpname.h"
#include "backend.h"
#include "synth.h"
#include "testutil.h"

#include <ftw.h>
#include <glob.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REL_TOL 1e-3
#define MAX_LISTED 5			/* disagreeing positions printed per prompt in stats mode */


/* What the environment asks for (see the header). */
typedef struct fixture_opts
{
	const char *device;			/* "cpu" or "cuda" */
	const char *model_dir;		/* existing checkpoint, or NULL: synthesise the preset */
	int			stats;			/* 1: report agreement instead of requiring it */
	int			max_prompts;	/* first N prompts of each fixture; 0 = all */
	double		margin;			/* HF top-2 gap above which a position counts as clear */
	int			cuda_graphs;	/* CUDA: capture decode steps */
} fixture_opts;

/* Stats mode: what one fixture's prompts add up to. */
typedef struct fixture_stats
{
	int			positions;		/* prompt positions compared */
	int			agree;			/* ... with the same argmax */
	int			clear_positions;	/* positions whose HF top-2 margin exceeds opts.margin */
	int			clear_agree;	/* ... with the same argmax */
	double		last_top10_rel_err; /* worst over prompts, last position, HF's top-10 ids */
	int			last_top10_overlap; /* fewest of HF's last-position top-10 ids in ours */
	double		lse_last_diff;	/* worst |logsumexp difference| at the last position */
	double		lse_diff;		/* worst over every position the fixture records */
	int			greedy_prompts;
	int			greedy_identical;
	int			greedy_tokens;	/* longest continuation compared */
	json_t	   *first_mismatch; /* [prompts]: first differing greedy index, -1 if none */
	double		prefill_s;		/* seconds in prefill steps with logits */
	double		greedy_s;		/* seconds in greedy continuations */
} fixture_stats;

static json_t *summaries;		/* stats mode: one JSON object per fixture */

/* nftw callback: removes one entry. */
static int
remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void) sb;
	(void) flag;
	(void) ftw;
	return remove(path);
}

/* Integer member of obj, or def. */
static long
jint(json_t *obj, const char *key, long def)
{
	json_t	   *v = json_object_get(obj, key);

	return json_is_number(v) ? (long) json_number_value(v) : def;
}

/* Integer environment variable, or def when unset or empty. */
static int
env_int(const char *name, int def)
{
	const char *v = getenv(name);

	return v && *v ? atoi(v) : def;
}

/* The fixture's recorded config must be the preset's. */
static int
check_config(json_t *fx, const gptoss_config *c, const char *file)
{
	json_t	   *jc = json_object_get(fx, "config");
	struct
	{
		const char *key;
		int			have;
	}			keys[] = {
		{"hidden_size", c->hidden_size}, {"num_hidden_layers", c->num_layers},
		{"num_attention_heads", c->num_heads}, {"num_key_value_heads", c->num_kv_heads},
		{"head_dim", c->head_dim}, {"num_local_experts", c->num_experts},
		{"num_experts_per_tok", c->experts_per_token}, {"intermediate_size", c->intermediate_size},
		{"vocab_size", c->vocab_size}, {"sliding_window", c->sliding_window}
	};
	int			ok = 1;

	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (jint(jc, keys[i].key, -1) != keys[i].have)
		{
			printf("%s: stale fixture: %s is %ld in the fixture, %d in the synth preset\n",
				   file, keys[i].key, jint(jc, keys[i].key, -1), keys[i].have);
			ok = 0;
		}
	return ok;
}

/* The synthesised weights must be those the fixture was made from. */
static int
check_weight_probe(json_t *fx, const gptoss_model *m, const char *file)
{
	json_t	   *wp = json_object_get(fx, "weight_probe");
	struct
	{
		const char *key;
		const gptoss_bf16 *bf;
		const uint8_t *u8;
	}			probes[] = {
		{"embed_tokens", m->embedding, NULL}, {"lm_head", m->lm_head, NULL},
		{"layer0_q_bias", m->layers[0].q_bias, NULL},
		{"layer0_gate_up_blocks", NULL, m->layers[0].gate_up_blocks},
		{"layer0_gate_up_scales", NULL, m->layers[0].gate_up_scales}
	};
	int			ok = 1;

	if (!json_is_object(wp))
		return 1;
	for (size_t p = 0; p < sizeof(probes) / sizeof(probes[0]); p++)
	{
		json_t	   *arr = json_object_get(wp, probes[p].key);

		for (size_t i = 0; i < json_array_size(arr); i++)
		{
			double		want = json_number_value(json_array_get(arr, i));
			double		have = probes[p].bf ? gptoss_bf16_to_f32(probes[p].bf[i]) : probes[p].u8[i];

			if (want != have)
			{
				printf("%s: stale fixture: %s[%zu] is %g in the fixture, %g in the synthesised model "
					   "(the synth generator changed: regenerate with test/reference/make-fixtures.sh)\n",
					   file, probes[p].key, i, want, have);
				ok = 0;
				break;
			}
		}
	}
	return ok;
}

/* Top-10 ids of a row (logit descending, id ascending). */
static void
top_ids(const float *row, int v, int *out, int k)
{
	for (int j = 0; j < k; j++)
	{
		int			best = -1;

		for (int i = 0; i < v; i++)
		{
			int			taken = 0;

			for (int u = 0; u < j; u++)
				taken |= out[u] == i;
			if (!taken && (best < 0 || row[i] > row[best]))
				best = i;
		}
		out[j] = best;
	}
}

/* logsumexp of a row, in double. */
static double
row_lse(const float *row, int v)
{
	double		mx = row[gptoss_argmax(row, v)],
				sum = 0;

	for (int i = 0; i < v; i++)
		sum += exp((double) row[i] - mx);
	return mx + log(sum);
}

/* Gap between a row's largest and second largest logit. */
static double
row_margin(const float *row, int v)
{
	int			best = gptoss_argmax(row, v);
	double		second = -INFINITY;

	for (int i = 0; i < v; i++)
		if (i != best && row[i] > second)
			second = row[i];
	return row[best] - second;
}

/* HF's top-2 gap at position p: the recorded margin, else from its top-10; NAN if neither. */
static double
hf_margin(json_t *pr, int p)
{
	json_t	   *margin = json_object_get(pr, "margin");
	json_t	   *tp = json_array_get(json_object_get(pr, "top10"), p);

	if (json_is_array(margin))
		return json_number_value(json_array_get(margin, p));
	if (json_array_size(tp) >= 2)
		return json_number_value(json_array_get(json_array_get(tp, 0), 1)) -
			json_number_value(json_array_get(json_array_get(tp, 1), 1));
	return NAN;
}

/* Relative error of row at the (id, logit) pairs: max abs difference over max |logit|. */
static double
pairs_rel_err(const float *row, json_t *pairs)
{
	double		num = 0,
				den = 0;

	for (size_t i = 0; i < json_array_size(pairs); i++)
	{
		json_t	   *pair = json_array_get(pairs, i);
		int			id = (int) json_integer_value(json_array_get(pair, 0));
		double		want = json_number_value(json_array_get(pair, 1));

		num = fmax(num, fabs(row[id] - want));
		den = fmax(den, fabs(want));
	}
	return num / (den > 0 ? den : 1);
}

/* Prefills ids[0..n) into slot 0 in one step, writing all n rows of logits. */
static int
prefill_logits(gptoss_backend *be, const int32_t *ids, int n, float *logits, gptoss_error *err)
{
	gptoss_step_seq s = {0};

	s.slot = 0;
	s.pos = 0;
	s.n_tokens = n;
	s.tokens = ids;
	be->release(be, 0);
	return be->step(be, &s, 1, NULL, logits, err);
}

/*
 * Greedy continuation through backend steps (temperature 0): the prompt again
 * as one sampling prefill, then one decode step per token, compared with
 * HF's tokens.  ids needs room for n + json_array_size(greedy) tokens.
 * *first_mismatch gets the first differing index, or -1.  Returns -1 when a
 * step fails.
 */
static int
run_greedy(gptoss_backend *be, int32_t *ids, int n, json_t *greedy, int *first_mismatch,
		   const char *file, int index, gptoss_error *err)
{
	gptoss_step_seq s = {0};

	*first_mismatch = -1;
	be->release(be, 0);
	s.slot = 0;
	s.pos = 0;
	s.n_tokens = n;
	s.tokens = ids;
	s.sample = 1;				/* temperature 0: greedy */
	for (size_t g = 0; g < json_array_size(greedy); g++)
	{
		int32_t		next = -1;

		if (be->step(be, &s, 1, &next, NULL, err) < 0)
			return -1;
		if (next != (int32_t) json_integer_value(json_array_get(greedy, g)))
		{
			printf("  %s prompt %d: greedy token %zu is %d, HF %d\n", file, index, g, next,
				   (int) json_integer_value(json_array_get(greedy, g)));
			*first_mismatch = (int) g;
			return 0;
		}
		ids[n + g] = next;
		s.pos = n + (int) g;
		s.n_tokens = 1;
		s.tokens = &ids[n + g];
	}
	return 0;
}

/*
 * Requires agreement at every position of one prompt; returns the worst
 * relative error and sets *lse_out to the worst logsumexp difference.
 */
static double
compare_exact(const float *logits, int v, int n, json_t *pr, const char *file, int index,
			  double *lse_out)
{
	json_t	   *probe_ids = json_object_get(pr, "probe_ids");
	json_t	   *probe_logits = json_object_get(pr, "probe_logits");
	json_t	   *top10 = json_object_get(pr, "top10");
	double		worst = 0,
				worst_lse = 0;
	int			argmax_bad = -1,
				top_bad = -1;

	for (int p = 0; p < n; p++)
	{
		const float *row = logits + (size_t) p * v;
		json_t	   *pl = json_array_get(probe_logits, p);
		json_t	   *tp = json_array_get(top10, p);
		double		num = 0,
					den = 0;
		int			mine[10];

		if (argmax_bad < 0 &&
			gptoss_argmax(row, v) != (int) json_integer_value(json_array_get(json_object_get(pr, "argmax"), p)))
			argmax_bad = p;
		for (size_t i = 0; i < json_array_size(probe_ids); i++)
		{
			int			id = (int) json_integer_value(json_array_get(probe_ids, i));
			double		want = json_number_value(json_array_get(pl, i));

			num = fmax(num, fabs(row[id] - want));
			den = fmax(den, fabs(want));
		}
		for (size_t i = 0; i < json_array_size(tp); i++)
		{
			json_t	   *pair = json_array_get(tp, i);
			int			id = (int) json_integer_value(json_array_get(pair, 0));
			double		want = json_number_value(json_array_get(pair, 1));

			num = fmax(num, fabs(row[id] - want));
			den = fmax(den, fabs(want));
		}
		worst = fmax(worst, num / (den > 0 ? den : 1));
		/* our top-10 ids are theirs, except where a logit sits within tolerance of their 10th */
		if (json_array_size(tp) == 10)
		{
			double		tenth = json_number_value(json_array_get(json_array_get(tp, 9), 1));

			top_ids(row, v, mine, 10);
			for (int j = 0; j < 10; j++)
			{
				int			found = 0;

				for (int u = 0; u < 10; u++)
					found |= mine[j] == (int) json_integer_value(json_array_get(json_array_get(tp, u), 0));
				if (!found && fabs(row[mine[j]] - tenth) > REL_TOL * fmax(den, 1.0) && top_bad < 0)
					top_bad = p;
			}
		}
		{
			json_t	   *lse = json_array_get(json_object_get(pr, "lse"), p);

			if (lse)
				worst_lse = fmax(worst_lse, fabs(row_lse(row, v) - json_number_value(lse)));
			else if (p == n - 1)
				worst_lse = fmax(worst_lse, fabs(row_lse(row, v) -
												 json_number_value(json_object_get(pr, "lse_last"))));
		}
	}
	CHECK(argmax_bad < 0, "%s prompt %d: argmax differs at position %d", file, index, argmax_bad);
	CHECK(worst <= REL_TOL, "%s prompt %d: relative error %.3g over the probe and top-10 logits",
		  file, index, worst);
	CHECK(top_bad < 0, "%s prompt %d: top-10 ids differ at position %d", file, index, top_bad);
	CHECK(worst_lse <= 1e-3, "%s prompt %d: logsumexp differs by %.3g", file, index, worst_lse);
	*lse_out = worst_lse;
	return worst;
}

/* Stats mode: adds one prompt's agreement to st and prints it. */
static void
compare_stats(const float *logits, int v, int n, json_t *pr, const fixture_opts *o,
			  fixture_stats *st, const char *file, int index)
{
	json_t	   *argmax = json_object_get(pr, "argmax");
	json_t	   *lse = json_object_get(pr, "lse");
	json_t	   *top_last = json_object_get(pr, "top10_last");
	const float *last = logits + (size_t) (n - 1) * v;
	int			agree = 0,
				clear = 0,
				clear_agree = 0,
				listed = 0,
				overlap = 0,
				mine[10];
	double		lse_worst = 0,
				lse_last,
				rel_last;

	for (int p = 0; p < n; p++)
	{
		const float *row = logits + (size_t) p * v;
		int			ours = gptoss_argmax(row, v);
		int			theirs = (int) json_integer_value(json_array_get(argmax, p));
		double		hm = hf_margin(pr, p);

		agree += ours == theirs;
		if (hm > o->margin)
		{
			clear++;
			clear_agree += ours == theirs;
		}
		if (ours != theirs && listed++ < MAX_LISTED)
			printf("  %s prompt %d position %d: argmax %d (our margin %.4f), HF %d (HF margin %.4f); "
				   "our logit of HF's token is %.4f below ours\n",
				   file, index, p, ours, row_margin(row, v), theirs, hm, row[ours] - row[theirs]);
		if (json_array_size(lse) == (size_t) n)
			lse_worst = fmax(lse_worst, fabs(row_lse(row, v) - json_number_value(json_array_get(lse, p))));
	}
	lse_last = fabs(row_lse(last, v) - json_number_value(json_object_get(pr, "lse_last")));
	rel_last = pairs_rel_err(last, top_last);
	top_ids(last, v, mine, 10);
	for (size_t i = 0; i < json_array_size(top_last); i++)
		for (int j = 0; j < 10; j++)
			overlap += mine[j] == (int) json_integer_value(json_array_get(json_array_get(top_last, i), 0));

	st->positions += n;
	st->agree += agree;
	st->clear_positions += clear;
	st->clear_agree += clear_agree;
	st->last_top10_rel_err = fmax(st->last_top10_rel_err, rel_last);
	st->lse_last_diff = fmax(st->lse_last_diff, lse_last);
	st->lse_diff = fmax(st->lse_diff, fmax(lse_worst, lse_last));
	if (st->last_top10_overlap < 0 || overlap < st->last_top10_overlap)
		st->last_top10_overlap = overlap;
	printf("%s prompt %d (%d tokens): top-1 agreement %d/%d, at HF margin > %g %d/%d; last position: "
		   "top-10 relative error %.2e, %d of HF's top-10 ids in ours, logsumexp diff %.2e; "
		   "worst logsumexp diff %.2e\n",
		   file, index, n, agree, n, o->margin, clear_agree, clear, rel_last, overlap, lse_last,
		   fmax(lse_worst, lse_last));
}

/* Compares one prompt: logits of every position, then the greedy continuation. */
static void
check_prompt(gptoss_backend *be, json_t *pr, const fixture_opts *o, fixture_stats *st,
			 const char *file, int index)
{
	int			v = be->model->config.vocab_size;
	json_t	   *jids = json_object_get(pr, "ids");
	json_t	   *greedy = json_object_get(pr, "greedy");
	int			n = (int) json_array_size(jids);
	int32_t    *ids = malloc(sizeof(int32_t) * (n + json_array_size(greedy) + 1));
	float	   *logits = malloc(sizeof(float) * (size_t) n * v);
	gptoss_error err = {0};
	int			first_mismatch = -1;
	double		worst = 0,
				worst_lse = 0,
				t0;

	if (!ids || !logits || n == 0)
	{
		CHECK(0, "%s prompt %d: %s", file, index, n == 0 ? "no ids" : "out of memory");
		goto done;
	}
	for (int i = 0; i < n; i++)
		ids[i] = (int32_t) json_integer_value(json_array_get(jids, i));
	t0 = gptoss_now();
	if (prefill_logits(be, ids, n, logits, &err) < 0)
	{
		CHECK(0, "%s prompt %d: step failed: %s", file, index, err.msg);
		goto done;
	}
	st->prefill_s += gptoss_now() - t0;
	if (o->stats)
		compare_stats(logits, v, n, pr, o, st, file, index);
	else
		worst = compare_exact(logits, v, n, pr, file, index, &worst_lse);

	t0 = gptoss_now();
	if (run_greedy(be, ids, n, greedy, &first_mismatch, file, index, &err) < 0)
	{
		CHECK(0, "%s prompt %d: decode step failed: %s", file, index, err.msg);
		goto done;
	}
	st->greedy_s += gptoss_now() - t0;
	if (o->stats)
	{
		st->greedy_prompts++;
		st->greedy_identical += first_mismatch < 0;
		if ((int) json_array_size(greedy) > st->greedy_tokens)
			st->greedy_tokens = (int) json_array_size(greedy);
		json_array_append_new(st->first_mismatch, json_integer(first_mismatch));
		printf("%s prompt %d: greedy continuation of %zu tokens %s (prefill %.2f s, greedy %.2f s so far)\n",
			   file, index, json_array_size(greedy), first_mismatch < 0 ? "identical" : "differs",
			   st->prefill_s, st->greedy_s);
	}
	else
	{
		CHECK(first_mismatch < 0 && json_array_size(greedy) > 0,
			  "%s prompt %d: greedy continuation differs", file, index);
		printf("%s prompt %d (%d tokens): max relative error %.2e, logsumexp diff %.2e\n",
			   file, index, n, worst, worst_lse);
	}
done:
	free(ids);
	free(logits);
}

/* Stats mode: the fixture's JSON summary line, kept for the end of the output. */
static void
add_summary(json_t *fx, const char *file, const char *name, gptoss_backend *be,
			const fixture_opts *o, const fixture_stats *st, double load_s)
{
	json_t	   *ref = json_object_get(fx, "reference");
	gptoss_backend_info info = {0};
	const char *slash = strrchr(file, '/');
	json_t	   *sum;

	be->get_info(be, &info);
	printf("%s on %s (%s): top-1 agreement %d/%d (%.2f%%), at HF margin > %g %d/%d (%.2f%%); "
		   "greedy continuations identical %d/%d\n",
		   file, be->name, info.device_name, st->agree, st->positions,
		   st->positions ? 100.0 * st->agree / st->positions : 0.0, o->margin, st->clear_agree,
		   st->clear_positions, st->clear_positions ? 100.0 * st->clear_agree / st->clear_positions : 0.0,
		   st->greedy_identical, st->greedy_prompts);
	sum = json_pack("{s:s, s:s, s:s, s:s, s:s?, s:s?, s:s?, s:i, s:i, s:i, s:f, s:f, s:i, s:i, s:f,"
					" s:f, s:f, s:i, s:f, s:i, s:i, s:i, s:O, s:{s:f, s:f, s:f}}",
					"fixture_stats", slash ? slash + 1 : file,
					"config", name,
					"backend", be->name,
					"device_name", info.device_name,
					"reference_dtype", json_string_value(json_object_get(ref, "dtype")),
					"reference_experts", json_string_value(json_object_get(ref, "expert_weights")),
					"reference_device", json_string_value(json_object_get(ref, "device")),
					"prompts", st->greedy_prompts,
					"positions", st->positions,
					"top1_agree", st->agree,
					"top1_agree_frac", st->positions ? (double) st->agree / st->positions : 0.0,
					"margin_threshold", o->margin,
					"clear_positions", st->clear_positions,
					"clear_agree", st->clear_agree,
					"clear_agree_frac", st->clear_positions ? (double) st->clear_agree / st->clear_positions : 0.0,
					"last_top10_rel_err_max", st->last_top10_rel_err,
					"lse_last_diff_max", st->lse_last_diff,
					"last_top10_overlap_min", st->last_top10_overlap,
					"lse_diff_max", st->lse_diff,
					"greedy_tokens", st->greedy_tokens,
					"greedy_identical", st->greedy_identical,
					"greedy_prompts", st->greedy_prompts,
					"greedy_first_mismatch", st->first_mismatch,
					"seconds", "load", load_s, "prefill", st->prefill_s, "greedy", st->greedy_s);
	if (sum)
		json_array_append_new(summaries, sum);
	else
		CHECK(0, "%s: could not build the summary", file);
}

/* Loads (or synthesises) the fixture's checkpoint and checks its prompts. */
static void
check_fixture(const char *file, const fixture_opts *o)
{
	json_error_t jerr;
	json_t	   *fx = json_load_file(file, 0, &jerr);
	const char *name;
	gptoss_synth_preset preset;
	gptoss_config cfg;
	gptoss_error err = {0};
	char		dir[512];
	int			made_dir = 0;
	gptoss_model *model = NULL;
	gptoss_backend *be = NULL;
	gptoss_backend_opts opts = {0};
	fixture_stats st = {0};
	json_t	   *prompts;
	int			n_prompts,
				max_len = 0;
	double		t0 = gptoss_now(),
				load_s;

	if (!fx)
	{
		CHECK(0, "%s: %s (line %d)", file, jerr.text, jerr.line);
		return;
	}
	name = json_string_value(json_object_get(fx, "config_name"));
	prompts = json_object_get(fx, "prompts");
	n_prompts = (int) json_array_size(prompts);
	if (o->max_prompts > 0 && n_prompts > o->max_prompts)
		n_prompts = o->max_prompts;
	if (!name || gptoss_synth_preset_from_name(name, &preset) < 0 ||
		gptoss_synth_config(preset, &cfg, &err) < 0)
	{
		CHECK(0, "%s: unknown config_name \"%s\" %s", file, name ? name : "(none)", err.msg);
		json_decref(fx);
		return;
	}
	CHECK(check_config(fx, &cfg, file), "%s: config matches the synth preset", file);
	if (o->model_dir)
	{
		if (gptoss_model_load(o->model_dir, &model, NULL, NULL, &err) < 0)
		{
			CHECK(0, "%s: load of %s failed: %s", file, o->model_dir, err.msg);
			goto done;
		}
	}
	else if (tmp_make_dir(dir, sizeof(dir), "gptoss_fixture_") < 0)
	{
		CHECK(0, "mkdtemp failed");
		goto done;
	}
	else
	{
		made_dir = 1;
		if (gptoss_synth_write(&cfg, dir, (uint64_t) jint(fx, "synth_seed", 0), NULL, NULL, NULL, &err) < 0 ||
			gptoss_model_load(dir, &model, NULL, NULL, &err) < 0)
		{
			CHECK(0, "%s: synth/load of preset %s failed: %s", file, name, err.msg);
			goto done;
		}
	}
	if (o->model_dir && (!check_config(fx, &model->config, file) || !check_weight_probe(fx, model, file)))
	{
		/* another checkpoint: its logits would say nothing, and a 20b run costs minutes */
		CHECK(0, "%s: %s is not the checkpoint the fixture was made from", file, o->model_dir);
		goto done;
	}
	CHECK(check_weight_probe(fx, model, file), "%s: synthesised weights match the fixture", file);
	for (int i = 0; i < n_prompts; i++)
	{
		int			len = (int) json_array_size(json_object_get(json_array_get(prompts, i), "ids")) +
			(int) json_array_size(json_object_get(json_array_get(prompts, i), "greedy"));

		max_len = len > max_len ? len : max_len;
	}
	opts.max_seqs = 1;
	opts.max_context = max_len + 1;
	opts.cuda_graphs = o->cuda_graphs;
	be = gptoss_backend_create(o->device, model, &opts, NULL, NULL, &err);
	if (!be)
	{
		CHECK(0, "%s: backend: %s", file, err.msg);
		goto done;
	}
	load_s = gptoss_now() - t0;
	CHECK(n_prompts > 0, "%s has prompts", file);
	st.last_top10_overlap = -1;
	st.first_mismatch = json_array();
	for (int i = 0; i < n_prompts; i++)
		check_prompt(be, json_array_get(prompts, i), o, &st, file, i);
	if (o->stats)
		add_summary(fx, file, name, be, o, &st, load_s);
	json_decref(st.first_mismatch);

done:
	if (be)
		be->free(be);
	if (model)
		gptoss_model_free(model);
	if (made_dir)
		nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
	json_decref(fx);
}

/* Reads the GPTOSS_FIXTURE_* options; -1 when one is invalid. */
static int
read_opts(fixture_opts *o)
{
	const char *device = getenv("GPTOSS_FIXTURE_DEVICE");
	const char *model = getenv("GPTOSS_FIXTURE_MODEL");
	const char *margin = getenv("GPTOSS_FIXTURE_MARGIN");

	o->device = device && *device ? device : "cpu";
	o->model_dir = model && *model ? model : NULL;
	o->stats = env_int("GPTOSS_FIXTURE_STATS", 0) == 1;
	o->max_prompts = env_int("GPTOSS_FIXTURE_MAX_PROMPTS", 0);
	o->margin = margin && *margin ? atof(margin) : 0.05;
	o->cuda_graphs = env_int("GPTOSS_FIXTURE_CUDA_GRAPHS", 1);
	if (strcmp(o->device, "cpu") != 0 && strcmp(o->device, "cuda") != 0)
	{
		printf("FAIL: GPTOSS_FIXTURE_DEVICE must be cpu or cuda, not \"%s\"\n", o->device);
		return -1;
	}
	if (o->max_prompts < 0 || !(o->margin >= 0))
	{
		printf("FAIL: GPTOSS_FIXTURE_MAX_PROMPTS must be >= 0 and GPTOSS_FIXTURE_MARGIN a number >= 0\n");
		return -1;
	}
	return 0;
}

int
main(void)
{
	const char *fdir = getenv("GPTOSS_FIXTURES");
	const char *files = getenv("GPTOSS_FIXTURE_FILES");
	const char *require = getenv("GPTOSS_REQUIRE_FIXTURES");
	char		pattern[4096];
	fixture_opts o;
	glob_t		g;

	if (read_opts(&o) < 0)
	{
		printf("0 passed, 1 failed\n");
		return 1;
	}
	summaries = json_array();
	if (files && *files)
	{
		char	   *list = strdup(files),
				   *save = NULL;

		for (char *f = strtok_r(list, ",", &save); f; f = strtok_r(NULL, ",", &save))
			check_fixture(f, &o);
		free(list);
	}
	else
	{
		snprintf(pattern, sizeof(pattern), "%s/model_*.json", fdir && *fdir ? fdir : "test/fixtures");
		if (glob(pattern, 0, NULL, &g) != 0 || g.gl_pathc == 0)
		{
			json_decref(summaries);
			if (require && strcmp(require, "1") == 0)
			{
				printf("FAIL: no fixture matches %s and GPTOSS_REQUIRE_FIXTURES=1\n", pattern);
				printf("0 passed, 1 failed\n");
				return 1;
			}
			printf("no fixture matches %s: nothing to compare (set GPTOSS_REQUIRE_FIXTURES=1 to fail)\n", pattern);
			printf("0 passed, 0 failed, 1 skipped\n");
			return 0;
		}
		for (size_t i = 0; i < g.gl_pathc; i++)
			check_fixture(g.gl_pathv[i], &o);
		globfree(&g);
	}
	printf("%d passed, %d failed\n", n_pass, n_fail);
	for (size_t i = 0; i < json_array_size(summaries); i++)
	{
		char	   *line = json_dumps(json_array_get(summaries, i), JSON_COMPACT | JSON_REAL_PRECISION(6));

		if (line)
			printf("%s\n", line);
		free(line);
	}
	json_decref(summaries);
	return n_fail ? 1 : 0;
}
