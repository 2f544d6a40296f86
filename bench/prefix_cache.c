/*
 * prefix_cache.c: measures the prefix cache on an enrichment-like workload,
 * through the engine (no server): rows that share one long instruction
 * (a developer message of --instruction-tokens tokens) and differ in a short
 * text of --row-tokens tokens, all submitted at once, run with the cache off
 * and then on.  Each row generates --gen tokens (greedy, ignore_eos), or with
 * --classify scores three labels.  Prints one JSON line per setting: wall
 * time to all results, prompt tokens submitted, prompt tokens computed, cache
 * hits, and whether every result equals the cache-off result.
 *
 *   bin/bench_prefix_cache --model DIR [--device cpu|cuda] [--rows 1000]
 *       [--instruction-tokens 500] [--row-tokens 50] [--gen 16] [--classify]
 *       [--batch 64] [--context 2048] [--prefill-chunk 256]
 */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const words[] = {
	"invoice", "customer", "parcel", "delivery", "refund", "account", "address", "order",
	"payment", "warehouse", "label", "return", "charge", "message", "support", "product",
	"answer", "shipping", "category", "urgent", "Monday", "Lisbon", "jacket", "size",
};
#define N_WORDS ((int) (sizeof(words) / sizeof(words[0])))

/* Text of words drawn from seed with exactly n tokens (or fewer when the tokenizer merges oddly). */
static char *
text_of_tokens(const gptoss_tokenizer *tok, int n, uint64_t seed)
{
	size_t		cap = (size_t) n * 16 + 64,
				len = 0;
	char	   *s = malloc(cap);
	gptoss_error err = {0};

	s[0] = '\0';
	for (;;)
	{
		int32_t    *ids = NULL;
		int			got;
		const char *w;

		seed = gptoss_mix64(seed);
		w = words[seed % N_WORDS];
		if (len + strlen(w) + 2 >= cap)
			break;
		len += (size_t) snprintf(s + len, cap - len, "%s%s", len ? " " : "", w);
		got = gptoss_tokenizer_encode(tok, s, len, &ids, &err);
		free(ids);
		if (got >= n)
			break;
	}
	return s;
}

/* One request's outcome: generated ids or label scores, for the equality check. */
typedef struct row_result
{
	int32_t    *tokens;
	int			n;
	double		scores[3];
} row_result;

/* Runs every row once; fills results and prints the figures. */
static int
run(gptoss_engine *eng, char **rows, int n_rows, const char *instruction, int gen, bool classify,
	bool caching, row_result *results, const row_result *reference)
{
	static const char *const labels[] = {"billing", "shipping", "returns"};
	gptoss_gen_params p;
	gptoss_engine_stats st0,
				st1;
	gptoss_error err = {0};
	int64_t    *ids = malloc((size_t) n_rows * sizeof(int64_t));
	double		t0,
				t1;
	int			same = 1;

	gptoss_gen_params_default(&p);
	p.instructions = instruction;
	p.temperature = 0;
	p.max_tokens = gen;
	p.ignore_eos = true;
	p.prefix_caching = caching;
	gptoss_engine_get_stats(eng, &st0);
	t0 = gptoss_now();
	for (int i = 0; i < n_rows; i++)
	{
		if (classify)
			ids[i] = gptoss_engine_submit_classify(eng, rows[i], labels, 3, &p, &err);
		else
		{
			int32_t    *prompt = NULL;
			int			n = 0;

			ids[i] = -1;
			if (gptoss_render_prompt(gptoss_engine_tokenizer(eng), rows[i], NULL, 0, &p, NULL, &prompt, &n, &err) == 0)
				ids[i] = gptoss_engine_submit(eng, prompt, n, &p, &err);
			free(prompt);
		}
		if (ids[i] < 0)
		{
			fprintf(stderr, "bench_prefix_cache: submit: %s\n", err.msg);
			return -1;
		}
	}
	while (gptoss_engine_active(eng) > 0)
		if (gptoss_engine_step(eng, &err) < 0)
		{
			fprintf(stderr, "bench_prefix_cache: step: %s\n", err.msg);
			return -1;
		}
	t1 = gptoss_now();
	gptoss_engine_get_stats(eng, &st1);
	for (int i = 0; i < n_rows; i++)
	{
		gptoss_result res;
		row_result *r = &results[i];

		gptoss_engine_result(eng, ids[i], &res);
		r->n = res.n_tokens;
		r->tokens = malloc((size_t) (res.n_tokens + 1) * sizeof(int32_t));
		memcpy(r->tokens, res.tokens, (size_t) res.n_tokens * sizeof(int32_t));
		for (int l = 0; l < res.n_scores && l < 3; l++)
			r->scores[l] = res.scores[l];
		if (reference)
			same &= r->n == reference[i].n &&
				memcmp(r->tokens, reference[i].tokens, (size_t) r->n * sizeof(int32_t)) == 0 &&
				memcmp(r->scores, reference[i].scores, sizeof(r->scores)) == 0;
		gptoss_engine_release(eng, ids[i]);
	}
	printf("{\"prefix_caching\": %s, \"mode\": \"%s\", \"rows\": %d, \"seconds\": %.3f, "
		   "\"rows_per_s\": %.2f, \"prompt_tokens\": %lld, \"prefill_tokens_computed\": %lld, "
		   "\"prefix_cache_hit_tokens\": %lld, \"same_as_cache_off\": %s}\n",
		   caching ? "true" : "false", classify ? "classify" : "generate", n_rows, t1 - t0,
		   n_rows / (t1 - t0), (long long) (st1.prompt_tokens - st0.prompt_tokens),
		   (long long) (st1.prefill_tokens - st0.prefill_tokens),
		   (long long) (st1.prefix_cache_hit_tokens - st0.prefix_cache_hit_tokens),
		   reference ? (same ? "true" : "false") : "null");
	fflush(stdout);
	free(ids);
	return reference && !same ? 1 : 0;
}

/* Value of option name in argv, or def. */
static const char *
opt(int argc, char **argv, const char *name, const char *def)
{
	for (int i = 1; i + 1 < argc; i++)
		if (strcmp(argv[i], name) == 0)
			return argv[i + 1];
	return def;
}

static bool
flag(int argc, char **argv, const char *name)
{
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], name) == 0)
			return true;
	return false;
}

int
main(int argc, char **argv)
{
	gptoss_engine_opts eopts;
	gptoss_error err = {0};
	gptoss_engine *eng;
	int			n_rows = atoi(opt(argc, argv, "--rows", "1000"));
	int			instr_tokens = atoi(opt(argc, argv, "--instruction-tokens", "500"));
	int			row_tokens = atoi(opt(argc, argv, "--row-tokens", "50"));
	int			gen = atoi(opt(argc, argv, "--gen", "16"));
	bool		classify = flag(argc, argv, "--classify");
	char	   *instruction;
	char	  **rows;
	row_result *off,
			   *on;
	int			rc;

	if (opt(argc, argv, "--model", NULL) == NULL || n_rows < 1 || gen < 1)
	{
		fprintf(stderr, "usage: bench_prefix_cache --model DIR [--device cpu|cuda] [--rows N] "
				"[--instruction-tokens N] [--row-tokens N] [--gen N] [--classify] [--batch N] "
				"[--context N] [--prefill-chunk N]\n");
		return 1;
	}
	memset(&eopts, 0, sizeof(eopts));
	eopts.model_path = opt(argc, argv, "--model", NULL);
	eopts.device = opt(argc, argv, "--device", "auto");
	eopts.backend.max_seqs = atoi(opt(argc, argv, "--batch", "64"));
	eopts.backend.max_context = atoi(opt(argc, argv, "--context", "2048"));
	eopts.backend.gpu_memory_fraction = 0.9;
	eopts.backend.cuda_graphs = 1;
	eopts.prefill_chunk = atoi(opt(argc, argv, "--prefill-chunk", "0"));
	eng = gptoss_engine_create(&eopts, NULL, NULL, &err);
	if (eng == NULL)
	{
		fprintf(stderr, "bench_prefix_cache: %s\n", err.msg);
		return 1;
	}
	instruction = text_of_tokens(gptoss_engine_tokenizer(eng), instr_tokens, 1);
	rows = malloc((size_t) n_rows * sizeof(char *));
	off = calloc((size_t) n_rows, sizeof(row_result));
	on = calloc((size_t) n_rows, sizeof(row_result));
	for (int i = 0; i < n_rows; i++)
		rows[i] = text_of_tokens(gptoss_engine_tokenizer(eng), row_tokens, 1000 + (uint64_t) i);
	rc = run(eng, rows, n_rows, instruction, gen, classify, false, off, NULL);
	if (rc == 0)
		rc = run(eng, rows, n_rows, instruction, gen, classify, true, on, off);
	for (int i = 0; i < n_rows; i++)
	{
		free(rows[i]);
		free(off[i].tokens);
		free(on[i].tokens);
	}
	free(rows);
	free(off);
	free(on);
	free(instruction);
	gptoss_engine_free(eng);
	return rc < 0 ? 1 : rc;
}
