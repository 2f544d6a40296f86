/*
 * test_json_output.c: structured output and the reasoning budget end to end,
 * on the random tiny model (CPU backend).
 *
 * A random-weight model follows no format, so every document it produces is
 * the constraint's work: for each schema feature, many seeds at temperature
 * 1 must all give a final text that the independent validator accepts
 * (schema_check.c), within max_tokens, with no sampled token outside its
 * mask.  Also: raw mode, max_tokens at and below the shortest document, the
 * reasoning budget (with and without a schema), the response format in the
 * prompt, and the parameter checks.
 */
#include "engine.h"
#include "harmony.h"

#include <jansson.h>
#include "schema_check.h"
#include "synth.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SEEDS_PER_SCHEMA 24
#define BATCH 8
#define CONTEXT 512

static const char *SCHEMAS[][2] = {
	{"object", "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},"
		"\"age\":{\"type\":\"integer\"},\"score\":{\"type\":\"number\"},\"ok\":{\"type\":\"boolean\"},"
		"\"none\":{\"type\":\"null\"}},\"required\":[\"name\",\"age\",\"ok\"],\"additionalProperties\":false}"},
	{"string", "{\"type\":\"string\"}"},
	{"enum", "{\"type\":\"object\",\"properties\":{\"color\":{\"type\":\"string\",\"enum\":[\"red\",\"green\",\"blue\"]},"
		"\"size\":{\"enum\":[1,2,\"XL\",null]}},\"required\":[\"color\",\"size\"],\"additionalProperties\":false}"},
	{"array", "{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":2,\"maxItems\":5}"},
	{"nested", "{\"type\":\"object\",\"properties\":{\"customer\":{\"type\":\"object\",\"properties\":"
		"{\"name\":{\"type\":\"string\",\"maxLength\":20},\"address\":{\"type\":\"object\",\"properties\":"
		"{\"city\":{\"type\":\"string\",\"maxLength\":10},\"zip\":{\"type\":\"string\",\"maxLength\":5}},"
		"\"required\":[\"city\"],\"additionalProperties\":false}},\"required\":[\"name\",\"address\"],"
		"\"additionalProperties\":false},\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":6},"
		"\"maxItems\":3}},\"required\":[\"customer\",\"tags\"],\"additionalProperties\":false}"},
	{"anyof", "{\"type\":\"object\",\"properties\":{\"value\":{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"string\",\"maxLength\":4},"
		"{\"type\":\"null\"},{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"boolean\"}},\"required\":[\"a\"]}]}},"
		"\"required\":[\"value\"]}"},
	{"const", "{\"type\":\"object\",\"properties\":{\"v\":{\"const\":\"x1\"},\"w\":{\"const\":[1,{\"k\":null}]}},"
		"\"required\":[\"v\",\"w\"]}"},
	{"json_object", NULL},
	{"invoice", NULL},		/* test/fixtures/invoice.schema.json, read by main */
};

static gptoss_engine *eng;
static char *invoice_text;		/* the invoice schema, compact */

/* A response_format for a schema (NULL: json_object). */
static char *
response_format_of(const char *schema)
{
	size_t		n = (schema ? strlen(schema) : 0) + 128;
	char	   *rf = malloc(n);

	if (schema)
		snprintf(rf, n, "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"out\",\"strict\":true,\"schema\":%s}}",
				 schema);
	else
		snprintf(rf, n, "{\"type\":\"json_object\"}");
	return rf;
}

/* Submits a prompt; returns the id or -1 with err. */
static int64_t
submit(const char *prompt, const gptoss_gen_params *p, gptoss_error *err)
{
	int32_t    *ids = NULL;
	int			n = 0;
	int64_t		id;

	if (gptoss_render_prompt(gptoss_engine_tokenizer(eng), prompt, NULL, 0, p, NULL, &ids, &n, err) < 0)
		return -1;
	id = gptoss_engine_submit(eng, ids, n, p, err);
	free(ids);
	return id;
}

/* Steps until nothing runs. */
static void
drain(void)
{
	gptoss_error err = {0};

	while (gptoss_engine_active(eng) > 0)
		if (gptoss_engine_step(eng, &err) < 0)
		{
			CHECK(0, "step: %s", err.msg);
			return;
		}
}

/* Index of the first occurrence of the three ids a, b, c in tokens, or -1. */
static int
find3(const int32_t *tokens, int n, int32_t a, int32_t b, int32_t c)
{
	for (int i = 0; i + 2 < n; i++)
		if (tokens[i] == a && tokens[i + 1] == b && tokens[i + 2] == c)
			return i;
	return -1;
}

static int32_t tok_final;
static int32_t tok_analysis;

/* Every schema, many seeds: all outputs validate. */
static void
test_schemas(void)
{
	int			total = 0,
				valid = 0;
	gptoss_engine_stats st;

	for (size_t s = 0; s < sizeof(SCHEMAS) / sizeof(SCHEMAS[0]); s++)
	{
		const char *schema = SCHEMAS[s][1] ? SCHEMAS[s][1] : "{\"type\":\"object\"}";
		char	   *rf = response_format_of(SCHEMAS[s][1]);

		for (int s0 = 0; s0 < SEEDS_PER_SCHEMA; s0 += BATCH)
		{
			int64_t		ids[BATCH];
			int			max_tokens[BATCH];

			for (int b = 0; b < BATCH; b++)
			{
				gptoss_gen_params p;
				gptoss_error err = {0};

				gptoss_gen_params_default(&p);
				p.temperature = 1.0f;
				p.has_seed = true;
				p.seed = 1000 * s + s0 + b;
				/* tight to roomy budgets: forced completions and free text both get exercised */
				max_tokens[b] = 40 + 23 * ((s0 + b) % 6);
				p.max_tokens = max_tokens[b];
				p.raw = (s0 + b) % 8 == 7;
				p.response_format = rf;
				ids[b] = submit("Extract the data as JSON.", &p, &err);
				CHECK(ids[b] >= 0, "%s seed %d: submit: %s", SCHEMAS[s][0], s0 + b, err.msg);
			}
			drain();
			for (int b = 0; b < BATCH; b++)
			{
				gptoss_result res;
				char		why[256];

				if (ids[b] < 0 || gptoss_engine_result(eng, ids[b], &res) < 0)
					continue;
				total++;
				CHECK(res.finish_reason == GPTOSS_FINISH_STOP || res.finish_reason == GPTOSS_FINISH_LENGTH,
					  "%s seed %d: finish %s %s", SCHEMAS[s][0], s0 + b,
					  gptoss_finish_reason_name(res.finish_reason), res.error);
				CHECK(res.n_tokens <= max_tokens[b], "%s: %d tokens > max_tokens %d", SCHEMAS[s][0],
					  res.n_tokens, max_tokens[b]);
				if (schema_check_text(res.text, schema, why, sizeof(why)))
					valid++;
				else
					CHECK(0, "%s seed %d (max_tokens %d): invalid output %s: %s", SCHEMAS[s][0], s0 + b,
						  max_tokens[b], res.text, why);
				gptoss_engine_release(eng, ids[b]);
			}
		}
		free(rf);
	}
	gptoss_engine_get_stats(eng, &st);
	printf("structured output: %d of %d documents valid (%zu schemas x %d seeds, temperature 1); "
		   "%lld masks in %.3f s of CPU (%.1f us each), %lld violations\n",
		   valid, total, sizeof(SCHEMAS) / sizeof(SCHEMAS[0]), SEEDS_PER_SCHEMA, (long long) st.masks,
		   st.mask_seconds, st.masks ? st.mask_seconds / st.masks * 1e6 : 0.0,
		   (long long) st.mask_violations);
	CHECK(total == (int) (sizeof(SCHEMAS) / sizeof(SCHEMAS[0])) * SEEDS_PER_SCHEMA && valid == total,
		  "valid %d of %d", valid, total);
	CHECK(st.mask_violations == 0, "%lld sampled tokens outside their mask", (long long) st.mask_violations);
}

/* max_tokens below the shortest document fails; at it, the shortest document comes out. */
static void
test_shortest(void)
{
	const char *schema = SCHEMAS[8][1];	/* invoice */
	char	   *rf = response_format_of(schema);
	gptoss_gen_params p;
	gptoss_error err = {0};
	int			need = -1;

	gptoss_gen_params_default(&p);
	p.response_format = rf;
	p.has_seed = true;
	p.seed = 7;
	for (int m = 1; m < 200; m++)
	{
		int64_t		id;

		p.max_tokens = m;
		memset(&err, 0, sizeof(err));
		id = submit("x", &p, &err);
		if (id >= 0)
		{
			gptoss_result res;
			char		why[256];

			need = m;
			drain();
			CHECK(gptoss_engine_result(eng, id, &res) == 0 && schema_check_text(res.text, schema, why, sizeof(why)),
				  "max_tokens %d (the least): invalid %s", m, res.text);
			CHECK(res.n_tokens == m, "at the least max_tokens %d the answer took %d tokens", m, res.n_tokens);
			gptoss_engine_release(eng, id);
			break;
		}
		CHECK(err.code == GPTOSS_ERR_INVALID && strstr(err.msg, "max_tokens is below the shortest valid document"),
			  "max_tokens %d: %s", m, err.msg);
	}
	printf("invoice schema: the least max_tokens is %d\n", need);
	CHECK(need > 3, "no max_tokens worked");
	free(rf);
}

/*
 * A prompt that leaves less of the context than the shortest document fails
 * with TOO_LONG (the prompt's failure: on_error "null" covers it), whatever
 * max_tokens says; leaving just enough gives a document.  A max_tokens below
 * the document stays a parameter error.
 */
static void
test_context_left(void)
{
	char	   *rf = response_format_of(SCHEMAS[8][1]);
	int32_t    *ids = malloc(sizeof(int32_t) * CONTEXT);
	gptoss_gen_params p;
	gptoss_error err = {0};
	int			need = -1;

	gptoss_gen_params_default(&p);
	p.response_format = rf;
	p.raw = true;
	p.has_seed = true;
	p.seed = 7;
	p.max_tokens = 200;
	for (int i = 0; i < CONTEXT; i++)
		ids[i] = tok_final;
	for (int left = 1; left < 200 && need < 0; left++)
	{
		int64_t		id;

		memset(&err, 0, sizeof(err));
		id = gptoss_engine_submit(eng, ids, CONTEXT - left, &p, &err);
		if (id >= 0)
		{
			need = left;
			drain();
			gptoss_engine_release(eng, id);
		}
		else
			CHECK(err.code == GPTOSS_ERR_TOO_LONG && strstr(err.msg, "prompt leaves"),
				  "%d tokens left: %s", left, err.msg);
	}
	CHECK(need > 1, "no prompt length worked");
	p.max_tokens = need - 1;
	memset(&err, 0, sizeof(err));
	CHECK(gptoss_engine_submit(eng, ids, CONTEXT - need, &p, &err) < 0 && err.code == GPTOSS_ERR_INVALID &&
		  strstr(err.msg, "max_tokens is below the shortest valid document"), "max_tokens %d: %s", need - 1, err.msg);
	free(ids);
	free(rf);
}

/* The budget closes the analysis channel and opens the final one; 0 skips reasoning. */
static void
test_budget(void)
{
	for (int budget = 0; budget <= 20; budget += 5)
		for (int with_schema = 0; with_schema < 2; with_schema++)
			for (int seed = 0; seed < 4; seed++)
			{
				gptoss_gen_params p;
				gptoss_error err = {0};
				gptoss_result res;
				char	   *rf = with_schema ? response_format_of(SCHEMAS[0][1]) : NULL;
				int64_t		id;
				int			open_final,
							analysis_tokens = 0;
				bool		in_analysis = false;

				gptoss_gen_params_default(&p);
				p.has_seed = true;
				p.seed = 50 + seed;
				p.max_tokens = 120;
				p.has_max_reasoning_tokens = true;
				p.max_reasoning_tokens = budget;
				p.response_format = rf;
				id = submit("Think, then answer.", &p, &err);
				CHECK(id >= 0, "budget %d: %s", budget, err.msg);
				drain();
				if (id < 0 || gptoss_engine_result(eng, id, &res) < 0)
				{
					free(rf);
					continue;
				}
				open_final = find3(res.tokens, res.n_tokens, GPTOSS_TOK_CHANNEL, tok_final, GPTOSS_TOK_MESSAGE);
				for (int i = 0; i < res.n_tokens && (open_final < 0 || i < open_final); i++)
				{
					if (in_analysis && res.tokens[i] != GPTOSS_TOK_END)
						analysis_tokens++;
					if (res.tokens[i] == GPTOSS_TOK_MESSAGE && i > 0 && res.tokens[i - 1] == tok_analysis)
						in_analysis = true;
					if (res.tokens[i] == GPTOSS_TOK_END)
						in_analysis = false;
				}
				CHECK(open_final >= 0, "budget %d: the final channel never opened", budget);
				CHECK(analysis_tokens <= budget, "budget %d: %d analysis tokens", budget, analysis_tokens);
				if (budget == 0)
					CHECK(open_final == 0, "budget 0: final opens at token %d", open_final);
				if (with_schema)
				{
					char		why[256];

					CHECK(schema_check_text(res.text, SCHEMAS[0][1], why, sizeof(why)),
						  "budget %d: invalid %s: %s", budget, res.text, why);
				}
				gptoss_engine_release(eng, id);
				free(rf);
			}
}

/* The schema reaches the prompt; bad combinations are refused. */
static void
test_prompt_and_params(void)
{
	gptoss_gen_params p;
	gptoss_error err = {0};
	int32_t    *ids = NULL;
	int			n = 0;
	char	   *text;
	char	   *rf = response_format_of("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}}}");
	char	   *stops[] = {"}"};

	gptoss_gen_params_default(&p);
	p.response_format = rf;
	p.instructions = "Be terse.";
	CHECK(gptoss_render_prompt(gptoss_engine_tokenizer(eng), "hi", NULL, 0, &p, NULL, &ids, &n, &err) == 0, "render: %s", err.msg);
	text = gptoss_tokenizer_decode(gptoss_engine_tokenizer(eng), ids, n, false, NULL, &err);
	CHECK(text && strstr(text, "<|start|>developer<|message|># Instructions\n\nBe terse.\n\n# Response Formats\n\n"
						 "## out\n\n{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}}}<|end|>"),
		  "prompt: %s", text ? text : "?");
	free(text);
	free(ids);

	p.stop[0] = stops[0];
	p.n_stop = 1;
	CHECK(submit("x", &p, &err) < 0 && strstr(err.msg, "stop"), "stop with response_format: %s", err.msg);
	p.n_stop = 0;
	p.ignore_eos = true;
	CHECK(submit("x", &p, &err) < 0 && strstr(err.msg, "ignore_eos"), "ignore_eos: %s", err.msg);
	p.ignore_eos = false;
	p.has_max_reasoning_tokens = true;
	p.max_reasoning_tokens = -1;
	CHECK(submit("x", &p, &err) < 0 && strstr(err.msg, "max_reasoning_tokens"), "negative budget: %s", err.msg);
	p.max_reasoning_tokens = 0;
	p.response_format = "{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{\"type\":\"string\",\"format\":\"email\"}}}";
	CHECK(submit("x", &p, &err) < 0 && err.code == GPTOSS_ERR_INVALID && strstr(err.msg, "\"format\""),
		  "unsupported keyword: %s", err.msg);
	free(rf);
}

int
main(void)
{
	char		dir[512];
	gptoss_error err = {0};
	gptoss_engine_opts opts;
	double		t0 = gptoss_now();

	if (make_tiny_model(dir, sizeof(dir), "gptoss_test_json") < 0)
	{
		fprintf(stderr, "test_json_output: cannot make the tiny model\n");
		return 1;
	}
	memset(&opts, 0, sizeof(opts));
	opts.model_path = dir;
	opts.device = "cpu";
	opts.backend.max_seqs = BATCH;
	opts.backend.max_context = CONTEXT;
	eng = gptoss_engine_create(&opts, NULL, NULL, &err);
	if (eng == NULL)
	{
		fprintf(stderr, "test_json_output: engine: %s\n", err.msg);
		return 1;
	}
	{
		int32_t    *ids = NULL;
		const gptoss_tokenizer *tok = gptoss_engine_tokenizer(eng);

		CHECK(gptoss_tokenizer_encode(tok, "final", 5, &ids, &err) == 1, "final is one token");
		tok_final = ids ? ids[0] : -1;
		free(ids);
		ids = NULL;
		CHECK(gptoss_tokenizer_encode(tok, "analysis", 8, &ids, &err) == 1, "analysis is one token");
		tok_analysis = ids ? ids[0] : -1;
		free(ids);
	}
	{
		json_error_t jerr;
		json_t	   *inv = json_load_file("test/fixtures/invoice.schema.json", 0, &jerr);

		invoice_text = inv ? json_dumps(inv, JSON_COMPACT) : NULL;
		json_decref(inv);
		if (invoice_text == NULL)
		{
			fprintf(stderr, "test_json_output: test/fixtures/invoice.schema.json: %s\n", jerr.text);
			return 1;
		}
		SCHEMAS[8][1] = invoice_text;
	}
	test_prompt_and_params();
	test_shortest();
	test_context_left();
	test_budget();
	test_schemas();
	gptoss_engine_free(eng);
	free(invoice_text);
	remove_test_dir(dir);
	printf("test_json_output: %d passed, %d failed (%.1f s)\n", n_pass, n_fail, gptoss_now() - t0);
	return n_fail ? 1 : 0;
}
