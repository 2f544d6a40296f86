/*
 * test_fixtures.c: the CPU backend against HF transformers' float32 logits.
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
 */
#define _XOPEN_SOURCE 700
#include "backend.h"

#include <ftw.h>
#include <glob.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define REL_TOL 1e-3

static int	n_pass,
			n_fail;

#define CHECK(cond, ...) \
	do { \
		if (cond) n_pass++; \
		else { n_fail++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } \
	} while (0)

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

/* Compares one prompt; returns the worst relative error seen. */
static double
check_prompt(gptoss_backend *be, json_t *pr, const char *file, int index)
{
	int			v = be->model->config.vocab_size;
	json_t	   *jids = json_object_get(pr, "ids");
	int			n = (int) json_array_size(jids);
	int32_t    *ids = malloc(sizeof(int32_t) * (n + 16));
	float	   *logits = malloc(sizeof(float) * (size_t) n * v);
	json_t	   *probe_ids = json_object_get(pr, "probe_ids");
	json_t	   *probe_logits = json_object_get(pr, "probe_logits");
	json_t	   *top10 = json_object_get(pr, "top10");
	json_t	   *greedy = json_object_get(pr, "greedy");
	gptoss_step_seq s = {0};
	gptoss_error err = {0};
	double		worst = 0,
				worst_lse = 0;
	int			argmax_bad = -1,
				top_bad = -1,
				greedy_ok = 1;

	for (int i = 0; i < n; i++)
		ids[i] = (int32_t) json_integer_value(json_array_get(jids, i));
	s.slot = 0;
	s.pos = 0;
	s.n_tokens = n;
	s.tokens = ids;
	be->release(be, 0);
	if (be->step(be, &s, 1, NULL, logits, &err) < 0)
	{
		CHECK(0, "%s prompt %d: step failed: %s", file, index, err.msg);
		free(ids);
		free(logits);
		return INFINITY;
	}
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
			double		mx = row[gptoss_argmax(row, v)],
						sum = 0;
			json_t	   *lse = json_array_get(json_object_get(pr, "lse"), p);

			for (int i = 0; i < v; i++)
				sum += exp((double) row[i] - mx);
			if (lse)
				worst_lse = fmax(worst_lse, fabs(mx + log(sum) - json_number_value(lse)));
			else if (p == n - 1)
				worst_lse = fmax(worst_lse, fabs(mx + log(sum) - json_number_value(json_object_get(pr, "lse_last"))));
		}
	}
	CHECK(argmax_bad < 0, "%s prompt %d: argmax differs at position %d", file, index, argmax_bad);
	CHECK(worst <= REL_TOL, "%s prompt %d: relative error %.3g over the probe and top-10 logits",
		  file, index, worst);
	CHECK(top_bad < 0, "%s prompt %d: top-10 ids differ at position %d", file, index, top_bad);
	CHECK(worst_lse <= 1e-3, "%s prompt %d: logsumexp differs by %.3g", file, index, worst_lse);

	/* greedy continuation through decode steps */
	be->release(be, 0);
	s.n_tokens = n;
	s.sample = 1;				/* temperature 0: greedy */
	for (size_t g = 0; g < json_array_size(greedy); g++)
	{
		int32_t		next = -1;

		if (be->step(be, &s, 1, &next, NULL, &err) < 0)
		{
			CHECK(0, "%s prompt %d: decode step failed: %s", file, index, err.msg);
			greedy_ok = 0;
			break;
		}
		if (next != (int32_t) json_integer_value(json_array_get(greedy, g)))
		{
			printf("  %s prompt %d: greedy token %zu is %d, HF %d\n", file, index, g, next,
				   (int) json_integer_value(json_array_get(greedy, g)));
			greedy_ok = 0;
			break;
		}
		ids[n + g] = next;
		s.pos = n + (int) g;
		s.n_tokens = 1;
		s.tokens = &ids[n + g];
	}
	CHECK(greedy_ok && json_array_size(greedy) > 0, "%s prompt %d: greedy continuation differs", file, index);
	printf("%s prompt %d (%d tokens): max relative error %.2e, logsumexp diff %.2e\n",
		   file, index, n, worst, worst_lse);
	free(ids);
	free(logits);
	return worst;
}

/* Synthesises the fixture's preset, loads it and checks all its prompts. */
static void
check_fixture(const char *file)
{
	json_error_t jerr;
	json_t	   *fx = json_load_file(file, 0, &jerr);
	const char *name;
	gptoss_synth_preset preset;
	gptoss_config cfg;
	gptoss_error err = {0};
	char		dir[] = "/tmp/gptoss_fixture_XXXXXX";
	gptoss_model *model = NULL;
	gptoss_backend *be = NULL;
	gptoss_backend_opts opts = {0};
	json_t	   *prompts;
	int			max_len = 0;

	if (!fx)
	{
		CHECK(0, "%s: %s (line %d)", file, jerr.text, jerr.line);
		return;
	}
	name = json_string_value(json_object_get(fx, "config_name"));
	prompts = json_object_get(fx, "prompts");
	if (!name || gptoss_synth_preset_from_name(name, &preset) < 0 ||
		gptoss_synth_config(preset, &cfg, &err) < 0)
	{
		CHECK(0, "%s: unknown config_name \"%s\" %s", file, name ? name : "(none)", err.msg);
		json_decref(fx);
		return;
	}
	CHECK(check_config(fx, &cfg, file), "%s: config matches the synth preset", file);
	if (!mkdtemp(dir))
	{
		CHECK(0, "mkdtemp failed");
		json_decref(fx);
		return;
	}
	if (gptoss_synth_write(&cfg, dir, (uint64_t) jint(fx, "synth_seed", 0), NULL, NULL, NULL, &err) < 0 ||
		gptoss_model_load(dir, &model, NULL, NULL, &err) < 0)
	{
		CHECK(0, "%s: synth/load of preset %s failed: %s", file, name, err.msg);
		goto done;
	}
	CHECK(check_weight_probe(fx, model, file), "%s: synthesised weights match the fixture", file);
	for (size_t i = 0; i < json_array_size(prompts); i++)
	{
		int			len = (int) json_array_size(json_object_get(json_array_get(prompts, i), "ids")) +
			(int) json_array_size(json_object_get(json_array_get(prompts, i), "greedy"));

		max_len = len > max_len ? len : max_len;
	}
	opts.max_seqs = 1;
	opts.max_context = max_len + 1;
	be = gptoss_backend_cpu_create(model, &opts, &err);
	if (!be)
	{
		CHECK(0, "%s: backend: %s", file, err.msg);
		goto done;
	}
	CHECK(json_array_size(prompts) > 0, "%s has prompts", file);
	for (size_t i = 0; i < json_array_size(prompts); i++)
		check_prompt(be, json_array_get(prompts, i), file, (int) i);

done:
	if (be)
		be->free(be);
	if (model)
		gptoss_model_free(model);
	nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
	json_decref(fx);
}

int
main(void)
{
	const char *fdir = getenv("GPTOSS_FIXTURES");
	const char *require = getenv("GPTOSS_REQUIRE_FIXTURES");
	char		pattern[4096];
	glob_t		g;

	snprintf(pattern, sizeof(pattern), "%s/model_*.json", fdir && *fdir ? fdir : "test/fixtures");
	if (glob(pattern, 0, NULL, &g) != 0 || g.gl_pathc == 0)
	{
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
		check_fixture(g.gl_pathv[i]);
	globfree(&g);
	printf("%d passed, %d failed\n", n_pass, n_fail);
	return n_fail ? 1 : 0;
}
