/*
 * test_json_grammar.c: JSON Schema compilation, the byte matcher, shortest
 * completions and token masks.
 *
 * For each supported schema feature: hand-written documents the matcher must
 * accept or reject; random byte walks through the matcher (each byte drawn
 * from those it allows), finished with its shortest completion, whose
 * documents must pass the independent validator (schema_check.c) and whose
 * completion must be exactly as long as the matcher claims; and token masks
 * compared with a brute-force check of every token of the vocabulary.
 * Unsupported schemas must fail with an error naming the keyword.
 */
#include "json_grammar.h"
#include "json_schema.h"
#include "schema_check.h"
#include "testutil.h"
#include "token_trie.h"

#include <stdlib.h>
#include <string.h>

typedef struct schema_case
{
	const char *name;
	const char *schema;
	const char *valid[6];
	const char *invalid[8];
} schema_case;

static const schema_case CASES[] = {
	{"object", "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},"
		"\"required\":[\"a\"],\"additionalProperties\":false}",
		{"{\"a\":1}", "{\"a\":-12,\"b\":\"x\"}", "{\"a\": 0, \"b\": \"\"}"},
		{"{}", "{\"b\":\"x\",\"a\":1}", "{\"a\":1,}", "{\"a\":01}", "{\"a\":1,\"c\":2}", "{\"a\":  1}", "{ \"a\":1}"}},
	{"string-maxlength", "{\"type\":\"string\",\"maxLength\":3}",
		{"\"\"", "\"abc\"", "\"\xc3\xa9\xc3\xa9\xc3\xa9\"", "\"a\\n\\\"\""},
		{"\"abcd\"", "\"a\nb\"", "\"\\u0041\"", "\"\xc3\"", "\"\xed\xa0\x80\"", "abc"}},
	{"enum", "{\"enum\":[\"red\",\"green\",\"re\",7,null]}",
		{"\"red\"", "\"re\"", "7", "null"},
		{"\"r\"", "\"blue\"", "8", "77", "\"green"}},
	{"integer-number", "{\"type\":\"object\",\"properties\":{\"i\":{\"type\":\"integer\"},\"n\":{\"type\":\"number\"}},"
		"\"required\":[\"i\",\"n\"]}",
		{"{\"i\":-0,\"n\":3.25}", "{\"i\":1234567890123456,\"n\":0.5}", "{\"i\":7,\"n\":-12}"},
		{"{\"i\":1.5,\"n\":1}", "{\"i\":12345678901234567,\"n\":1}", "{\"i\":1,\"n\":1.}", "{\"i\":1,\"n\":1e5}",
		"{\"i\":1,\"n\":.5}", "{\"i\":1,\"n\":1234567890.1234567}"}},
	{"boolean-null", "{\"type\":\"array\",\"items\":{\"type\":[\"boolean\",\"null\"]},\"minItems\":1,\"maxItems\":3}",
		{"[true]", "[false,null]", "[null, true, false]"},
		{"[]", "[true,true,true,true]", "[1]", "[tru]", "[true,]"}},
	{"array-items", "{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"number\"}},"
		"\"required\":[\"x\"],\"additionalProperties\":false},\"minItems\":2}",
		{"[{\"x\":1},{\"x\":2}]", "[{\"x\":1}, {\"x\":2}, {\"x\":3.5}]"},
		{"[{\"x\":1}]", "[{\"x\":1},{}]", "[{\"x\":1},{\"x\":2}"}},
	{"nested", "{\"type\":\"object\",\"properties\":{\"customer\":{\"type\":\"object\",\"properties\":"
		"{\"name\":{\"type\":\"string\"},\"address\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},"
		"\"required\":[\"city\"]}},\"required\":[\"name\",\"address\"]},\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}}},"
		"\"required\":[\"customer\"]}",
		{"{\"customer\":{\"name\":\"A\",\"address\":{\"city\":\"B\"}}}",
		"{\"customer\":{\"name\":\"A\",\"address\":{\"city\":\"B\"}},\"tags\":[]}"},
		{"{\"customer\":{\"name\":\"A\"}}", "{\"tags\":[]}"}},
	{"anyof", "{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"k\":{\"const\":\"a\"},\"v\":{\"type\":\"integer\"}},"
		"\"required\":[\"k\",\"v\"]},{\"type\":\"object\",\"properties\":{\"k\":{\"const\":\"b\"},\"w\":{\"type\":\"string\",\"maxLength\":2}},"
		"\"required\":[\"k\"]},{\"type\":\"null\"}]}",
		{"{\"k\":\"a\",\"v\":3}", "{\"k\":\"b\"}", "{\"k\":\"b\",\"w\":\"xy\"}", "null"},
		{"{\"k\":\"a\"}", "{\"k\":\"a\",\"w\":\"x\"}", "{\"k\":\"b\",\"v\":1}", "{\"k\":\"c\"}"}},
	{"const", "{\"type\":\"object\",\"properties\":{\"version\":{\"const\":2},\"kind\":{\"const\":{\"x\":[1,\"y\"]}}},"
		"\"required\":[\"version\",\"kind\"]}",
		{"{\"version\":2,\"kind\":{\"x\":[1,\"y\"]}}"},
		{"{\"version\":3,\"kind\":{\"x\":[1,\"y\"]}}", "{\"version\":2,\"kind\":{\"x\":[1, \"y\"]}}"}},
	{"json-object", "{\"type\":\"object\"}",
		{"{}", "{\"a\":[1,{\"b\":null}],\"c\":\"d\"}", "{\"\":-0.5, \"x\":true}"},
		{"[]", "{\"a\"}", "{\"a\":}", "\"x\""}},
	{"map", "{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}",
		{"{}", "{\"x\":1,\"y\":2}"},
		{"{\"x\":\"1\"}"}},
	{"annotations", "{\"$schema\":\"https://json-schema.org/draft/2020-12/schema\",\"title\":\"T\",\"description\":\"d\","
		"\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"boolean\",\"default\":true,\"examples\":[false]}},"
		"\"required\":[\"a\"]}",
		{"{\"a\":true}"},
		{"{}"}},
	{"optional-order", "{\"type\":\"object\",\"properties\":{\"p\":{\"type\":\"integer\"},\"q\":{\"type\":\"integer\"},"
		"\"r\":{\"type\":\"integer\"},\"s\":{\"type\":\"integer\"}},\"required\":[\"r\"]}",
		{"{\"r\":1}", "{\"p\":1,\"r\":2}", "{\"q\":1,\"r\":2,\"s\":3}", "{\"p\":0,\"q\":0,\"r\":0,\"s\":0}"},
		{"{\"s\":1}", "{\"r\":1,\"q\":2}", "{\"p\":1}"}},
};

typedef struct reject_case
{
	const char *schema;
	const char *message;		/* expected in the error */
} reject_case;

static const reject_case REJECTS[] = {
	{"{\"type\":\"string\",\"pattern\":\"^a\"}", "\"pattern\""},
	{"{\"type\":\"string\",\"format\":\"date\"}", "\"format\""},
	{"{\"type\":\"string\",\"minLength\":2}", "\"minLength\""},
	{"{\"oneOf\":[{\"type\":\"string\"}]}", "\"oneOf\""},
	{"{\"allOf\":[{\"type\":\"string\"}]}", "\"allOf\""},
	{"{\"$ref\":\"#/$defs/a\"}", "\"$ref\""},
	{"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\",\"minimum\":0}}}", "\"minimum\" at /properties/a"},
	{"{\"type\":\"array\",\"prefixItems\":[]}", "\"prefixItems\""},
	{"{\"type\":\"object\",\"properties\":{\"a\":{}},\"required\":[\"b\"]}", "\"b\""},
	{"{\"type\":\"date\"}", "\"date\""},
	{"{\"enum\":[]}", "enum"},
	{"{\"type\":\"string\",\"enum\":[1,2]}", "enum"},
	{"{\"type\":\"array\",\"minItems\":3,\"maxItems\":2}", "minItems"},
	{"{\"anyOf\":[{\"type\":\"string\"}],\"type\":\"string\"}", "\"type\""},
	{"false", "false"},
	{"{\"type\":\"string\",\"maxLength\":-1}", "maxLength"},
	{"[1]", "schema"},
	{"{\"type\":\"object\", \"properties\": {", "not valid JSON"},
};

static const gptoss_token_trie *g_trie;
static int	masks_checked;
static int	string_masks_checked;
static const gptoss_tokenizer *g_tok;

/* Feeds a whole text; true when all bytes are accepted and the result is a whole document. */
static bool
matches(const gptoss_json_grammar *g, const char *text)
{
	gptoss_json_state s;

	gptoss_json_state_init(g, &s);
	return gptoss_json_state_feed_bytes(g, &s, text, strlen(text)) && gptoss_json_state_accepting(g, &s);
}

/* Cost of a piece under the current cost model (NULL: bytes). */
static int	(*g_cost) (const char *text, int len, void *ctx);

/*
 * Checks that completion(s) costs shortest(s) (its pieces' costs add up to
 * it) and ends in an accepting state; returns its length.
 */
static int
check_completion(const gptoss_json_grammar *g, const gptoss_json_state *s, char *out, int cap,
				 const char *ctx)
{
	int			rest = gptoss_json_state_shortest(g, s);
	int			ends[4096];
	int			n_pieces = 0;
	int			len = gptoss_json_state_completion(g, s, out, cap, ends, 4096, &n_pieces);
	int			cost = 0;
	gptoss_json_state t;

	for (int k = 0, start = 0; len >= 0 && k < n_pieces; start = ends[k++])
		cost += g_cost ? g_cost(out + start, ends[k] - start, (void *) g_trie) : ends[k] - start;
	CHECK(len >= 0 && cost == rest, "%s: completion costs %d (%d bytes), shortest says %d", ctx, cost,
		  len, rest);
	if (len < 0)
		return -1;
	gptoss_json_state_copy(&t, s);
	CHECK(gptoss_json_state_feed_bytes(g, &t, out, (size_t) len) && gptoss_json_state_accepting(g, &t),
		  "%s: completion %.*s not accepted", ctx, len, out);
	return len;
}

/* Compares the trie mask with a check of every token. */
static void
check_mask(const gptoss_json_grammar *g, const gptoss_json_state *s, int max_rest,
		   gptoss_token_trie_scratch *sc, const char *ctx)
{
	int			vocab = gptoss_token_trie_vocab(g_trie);
	int			words = gptoss_mask_words(vocab);
	uint32_t   *mask = calloc((size_t) words, sizeof(uint32_t));
	int			n_ids = gptoss_tokenizer_vocab_size(g_tok);
	int			mismatches = 0;
	int			allowed = 0;
	int			first_bad = -1;

	int32_t		room[GPTOSS_JSON_MAX_THREADS];

	gptoss_token_trie_json_mask(g_trie, g, s, max_rest, mask, sc);
	masks_checked++;
	string_masks_checked += gptoss_json_state_in_plain_string(g, s, room);
	for (int32_t id = 0; id < n_ids; id++)
	{
		bool		expect = false;

		if (gptoss_tokenizer_is_valid(g_tok, id) && !gptoss_tokenizer_is_special(g_tok, id))
		{
			size_t		len;
			const char *bytes = gptoss_tokenizer_token_bytes(g_tok, id, &len);
			gptoss_json_state t;

			gptoss_json_state_copy(&t, s);
			expect = gptoss_json_state_feed_bytes(g, &t, bytes, len) &&
				gptoss_json_state_shortest(g, &t) <= max_rest;
		}
		allowed += expect;
		if (expect != gptoss_mask_test(mask, id))
		{
			if (first_bad < 0)
				first_bad = id;
			mismatches++;
		}
	}
	for (int32_t id = n_ids; id < vocab; id++)
		if (gptoss_mask_test(mask, id))
			mismatches++;
	CHECK(mismatches == 0, "%s: mask differs from brute force on %d tokens (first id %d, %d allowed)",
		  ctx, mismatches, first_bad, allowed);
	free(mask);
}

/*
 * Random walks: each byte drawn from those the matcher allows (stopping at
 * random or at a length), then the shortest completion; the document must
 * validate.  Some states along the way get their token mask checked.
 */
static void
walk_case(const schema_case *sc_case, const gptoss_json_grammar *g, int walks, int mask_checks,
		  gptoss_token_trie_scratch *sc)
{
	char		doc[4096];
	char		why[256];
	int			masks_done = 0;
	int			tight_done = 0;	/* string states checked with little room to finish */
	int32_t		room[GPTOSS_JSON_MAX_THREADS];

	for (int w = 0; w < walks; w++)
	{
		gptoss_json_state s,
					next;
		int			len = 0;
		int			stop_at = 1 + (int) (rnd() * 60);
		char		ctx[128];
		int			c_len;

		gptoss_json_state_init(g, &s);
		while (len < stop_at && !gptoss_json_state_closed(&s))
		{
			uint8_t		ok[256];
			int			n_ok = 0;

			for (int c = 0; c < 256; c++)
				if (gptoss_json_state_feed(g, &s, (uint8_t) c, &next))
					ok[n_ok++] = (uint8_t) c;
			CHECK(n_ok > 0 || gptoss_json_state_accepting(g, &s), "%s: dead end after %.*s",
				  sc_case->name, len, doc);
			if (n_ok == 0)
				break;
			/* favour printable ASCII so that walks look like documents, but reach every byte */
			{
				uint8_t		c = ok[(int) (rnd() * n_ok)];

				for (int tries = 0; tries < 3 && (c >= 0x80 || c < 0x20); tries++)
					c = ok[(int) (rnd() * n_ok)];
				gptoss_json_state_feed(g, &s, c, &next);
				gptoss_json_state_copy(&s, &next);
				doc[len++] = (char) c;
			}
			if ((masks_done < mask_checks && rnd() < 0.08) ||
				(tight_done < 2 && gptoss_json_state_in_plain_string(g, &s, room) && rnd() < 0.2))
			{
				int			rest = gptoss_json_state_shortest(g, &s);
				bool		tight = masks_done >= mask_checks;
				int			slack = tight ? (int) (rnd() * 3) : rnd() < 0.5 ? (int) (rnd() * 6) : 1000;

				tight_done += tight;

				snprintf(ctx, sizeof(ctx), "%s mask after %.*s (max_rest %d)", sc_case->name,
						 len > 60 ? 60 : len, doc, rest + slack);
				check_mask(g, &s, rest + slack, sc, ctx);
				masks_done++;
			}
		}
		snprintf(ctx, sizeof(ctx), "%s walk %d", sc_case->name, w);
		c_len = check_completion(g, &s, doc + len, (int) sizeof(doc) - len - 1, ctx);
		if (c_len < 0)
			continue;
		doc[len + c_len] = '\0';
		CHECK(schema_check_text(doc, sc_case->schema, why, sizeof(why)),
			  "%s: walk produced %s, which is invalid: %s", sc_case->name, doc, why);
	}
}

/* Token cost of a piece: its longest-match tokens. */
static int
token_cost(const char *text, int len, void *ctx)
{
	return gptoss_token_trie_count(ctx, text, len);
}

/* Every case: compile, fixed documents, walks; in bytes, then in tokens. */
static void
test_cases(void)
{
	gptoss_token_trie_scratch *sc = gptoss_token_trie_scratch_new(g_trie);

	for (size_t i = 0; i < sizeof(CASES) / sizeof(CASES[0]); i++)
	{
		const schema_case *c = &CASES[i];
		gptoss_error err = {0};
		gptoss_json_grammar *g = gptoss_json_schema_compile(c->schema, strlen(c->schema), &err);
		char		why[256];

		CHECK(g != NULL, "%s: compile failed: %s", c->name, err.msg);
		if (g == NULL)
			continue;
		for (int k = 0; k < 6 && c->valid[k]; k++)
		{
			CHECK(schema_check_text(c->valid[k], c->schema, why, sizeof(why)),
				  "%s: test document %s is not valid itself: %s", c->name, c->valid[k], why);
			CHECK(matches(g, c->valid[k]), "%s: %s rejected", c->name, c->valid[k]);
		}
		for (int k = 0; k < 8 && c->invalid[k]; k++)
			CHECK(!matches(g, c->invalid[k]), "%s: %s accepted", c->name, c->invalid[k]);
		g_cost = NULL;
		walk_case(c, g, 150, 3, sc);
		CHECK(gptoss_json_grammar_set_piece_cost(g, token_cost, (void *) g_trie, &err) == 0,
			  "%s: token costs: %s", c->name, err.msg);
		g_cost = token_cost;
		walk_case(c, g, 100, 2, sc);
		gptoss_json_grammar_free(g);
	}
	gptoss_token_trie_scratch_free(sc);
}

/* Unsupported or impossible schemas fail with a message naming the keyword. */
static void
test_rejects(void)
{
	for (size_t i = 0; i < sizeof(REJECTS) / sizeof(REJECTS[0]); i++)
	{
		gptoss_error err = {0};
		gptoss_json_grammar *g = gptoss_json_schema_compile(REJECTS[i].schema, strlen(REJECTS[i].schema),
															&err);

		CHECK(g == NULL, "%s: compiled", REJECTS[i].schema);
		gptoss_json_grammar_free(g);
		CHECK(err.code == GPTOSS_ERR_INVALID && strstr(err.msg, REJECTS[i].message) != NULL,
			  "%s: error \"%s\" (code %d) does not mention %s", REJECTS[i].schema, err.msg, err.code,
			  REJECTS[i].message);
	}
}

/* response_format shapes and their prompt section. */
static void
test_response_format(void)
{
	gptoss_json_grammar *g = NULL;
	char	   *section = NULL;
	gptoss_error err = {0};
	const char *rf = "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"inv\",\"description\":\"An invoice\","
		"\"strict\":true,\"schema\":{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\"}},"
		"\"required\":[\"n\"],\"additionalProperties\":false}}}";

	CHECK(gptoss_response_format_parse(rf, strlen(rf), &g, &section, &err) == 0 && g && section,
		  "json_schema format: %s", err.msg);
	if (section)
		CHECK(strcmp(section, "## inv\n\n// An invoice\n{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\"}},"
					 "\"required\":[\"n\"],\"additionalProperties\":false}") == 0, "section: %s", section);
	if (g)
		CHECK(matches(g, "{\"n\":5}") && !matches(g, "{}"), "json_schema grammar");
	gptoss_json_grammar_free(g);
	free(section);

	CHECK(gptoss_response_format_parse("{\"type\":\"json_object\"}", 22, &g, &section, &err) == 0 && g &&
		  section == NULL, "json_object: %s", err.msg);
	if (g)
		CHECK(matches(g, "{\"a\":[1,2]}") && !matches(g, "[1]") && !matches(g, "5"), "json_object grammar");
	gptoss_json_grammar_free(g);

	CHECK(gptoss_response_format_parse("{\"type\":\"text\"}", 15, &g, &section, &err) == 0 && g == NULL,
		  "text: %s", err.msg);

	{
		static const char *const bad[][2] = {
			{"{\"type\":\"xml\"}", "\"type\""},
			{"{\"type\":\"json_schema\"}", "schema"},
			{"{\"type\":\"json_object\",\"schema\":{}}", "\"schema\""},
			{"{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{},\"nam\":\"x\"}}", "json_schema.nam"},
			{"{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{\"type\":\"string\",\"pattern\":\"x\"}}}",
			"response_format: unsupported JSON Schema keyword \"pattern\""},
			{"[]", "response_format"},
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		{
			memset(&err, 0, sizeof(err));
			CHECK(gptoss_response_format_parse(bad[i][0], strlen(bad[i][0]), &g, &section, &err) < 0 &&
				  err.code == GPTOSS_ERR_INVALID && strstr(err.msg, bad[i][1]),
				  "%s: error \"%s\" does not mention %s", bad[i][0], err.msg, bad[i][1]);
		}
	}
}

/* Greedy tokenization covers the bytes and uses long tokens. */
static void
test_tokenize(void)
{
	const char *text = "{\"customer\":{\"name\":\"\xc3\xa9t\xc3\xa9\"},\"total\":12.5}";
	int32_t		ids[128];
	int			n = gptoss_token_trie_tokenize(g_trie, text, (int) strlen(text), ids, 128);
	gptoss_error err = {0};
	char	   *back;

	CHECK(n > 0 && n < (int) strlen(text), "greedy tokens: %d for %zu bytes", n, strlen(text));
	back = n > 0 ? gptoss_tokenizer_decode(g_tok, ids, n, false, NULL, &err) : NULL;
	CHECK(back && strcmp(back, text) == 0, "greedy tokens decode back");
	free(back);
	CHECK(gptoss_token_trie_tokenize(g_trie, text, (int) strlen(text), ids, 2) == -1, "cap too small");
}

int
main(void)
{
	gptoss_error err = {0};
	gptoss_tokenizer *tok;
	gptoss_token_trie *trie;
	double		t0;

	tok = load_test_tokenizer("test_json_grammar");
	if (tok == NULL)
		return 1;
	rng_state = 0x5eed1234abcdULL;
	t0 = gptoss_now();
	trie = gptoss_token_trie_build(tok, 201088, &err);
	CHECK(trie != NULL, "trie: %s", err.msg);
	printf("token trie built in %.0f ms\n", (gptoss_now() - t0) * 1e3);
	if (trie == NULL)
		return 1;
	g_trie = trie;
	g_tok = tok;
	test_rejects();
	test_response_format();
	test_tokenize();
	test_cases();
	printf("token masks checked against every token: %d (%d inside strings)\n", masks_checked,
		   string_masks_checked);
	CHECK(masks_checked >= 30 && string_masks_checked >= 15, "too few masks checked");
	gptoss_token_trie_free(trie);
	gptoss_tokenizer_free(tok);
	printf("test_json_grammar: %d passed, %d failed\n", n_pass, n_fail);
	return n_fail ? 1 : 0;
}
