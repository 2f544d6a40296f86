/*
 * test_tokenizer.c: the o200k_harmony tokenizer against reference ids and
 * against an independent in-test BPE.
 *
 * Needs the real tokenizer.json (GPTOSS_TOKENIZER, default build/tokenizer.json).
 * Checks, in order: load errors; id ranges and special tokens; known ids;
 * exact ids for every text of test/fixtures/tokenizer_ids.json (written by
 * test/reference/tokenizer_ref.py with tiktoken and HF tokenizers; required
 * when GPTOSS_REQUIRE_FIXTURES=1); round trips of every fixture text; the
 * merge loop against a simple O(n^2) BPE on single-piece inputs; special-token
 * text staying text; Unicode whitespace splitting; invalid UTF-8; decode
 * errors; the stream decoder.  Finally it prints load time and encode speed
 * (never asserted).
 */
#include "tmpname.h"
#include "tokenizer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int	n_failed;
static int	n_checked;

#define CHECK(cond, ...) \
	do { \
		n_checked++; \
		if (!(cond)) \
		{ \
			n_failed++; \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
			fprintf(stderr, __VA_ARGS__); \
			fputc('\n', stderr); \
		} \
	} while (0)

/* Environment variable or a default. */
static const char *
env_or(const char *name, const char *def)
{
	const char *v = getenv(name);

	return v && *v ? v : def;
}

/* Deterministic xorshift for test inputs. */
static uint64_t rng_state = 0x243f6a8885a308d3ULL;

static uint32_t
rng_next(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t) (rng_state >> 16);
}

/* Encodes or fails the test; returns the count (ids malloc'ed, caller frees). */
static int
encode(const gptoss_tokenizer *tok, const char *text, size_t len, int32_t **ids)
{
	gptoss_error err = {0};
	int			n = gptoss_tokenizer_encode(tok, text, len, ids, &err);

	CHECK(n >= 0, "encode failed: %s", err.msg);
	return n;
}

/* True when decode(encode(text)) gives text back byte for byte, all ids ordinary. */
static bool
round_trips(const gptoss_tokenizer *tok, const char *text, size_t len)
{
	int32_t    *ids;
	int			n = encode(tok, text, len, &ids);
	gptoss_error err = {0};
	size_t		out_len = 0;
	char	   *out;
	bool		ok = n >= 0;

	for (int i = 0; ok && i < n; i++)
		ok = gptoss_tokenizer_is_valid(tok, ids[i]) && !gptoss_tokenizer_is_special(tok, ids[i]);
	out = ok ? gptoss_tokenizer_decode(tok, ids, n, false, &out_len, &err) : NULL;
	ok = out && out_len == len && memcmp(out, text, len) == 0 && out[len] == '\0';
	free(out);
	free(ids);
	return ok;
}

/* Encodes the concatenation of parts and checks it equals the parts encoded one by one. */
static bool
splits_as(const gptoss_tokenizer *tok, const char *const *parts, int n_parts)
{
	char		whole[1024] = "";
	int32_t    *ids,
			   *part_ids;
	int			n,
				at = 0;
	bool		ok = true;

	for (int p = 0; p < n_parts; p++)
		strcat(whole, parts[p]);
	n = encode(tok, whole, strlen(whole), &ids);
	for (int p = 0; p < n_parts; p++)
	{
		int			m = encode(tok, parts[p], strlen(parts[p]), &part_ids);

		ok = ok && at + m <= n && memcmp(ids + at, part_ids, (size_t) m * sizeof(int32_t)) == 0;
		at += m;
		free(part_ids);
	}
	free(ids);
	return ok && at == n;
}

/* ------------------------------------------------------------------------ */
/* Load errors */

/* Writes text to a fresh temporary file and returns its path in buf. */
static void
write_temp(char *buf, size_t size, const char *text)
{
	int			fd;

	fd = tmp_make_file(buf, size, "gptoss_tok_");
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t) strlen(text))
		CHECK(false, "cannot write temp file");
	if (fd >= 0)
		close(fd);
}

/* Loading text as tokenizer.json fails with a message containing expect. */
static void
check_load_fails(const char *text, const char *expect)
{
	char		path[512];
	gptoss_error err = {0};
	gptoss_tokenizer *tok;

	write_temp(path, sizeof(path), text);
	tok = gptoss_tokenizer_load(path, &err);
	CHECK(tok == NULL, "loading %.60s should fail", text);
	CHECK(strstr(err.msg, expect) != NULL, "error for %.60s: got \"%s\", want \"%s\"",
		  text, err.msg, expect);
	gptoss_tokenizer_free(tok);
	unlink(path);
}

/* Missing file, garbage, truncation and semantically broken vocabularies are all clean errors. */
static void
test_load_errors(void)
{
	gptoss_error err = {0};
	gptoss_tokenizer *tok = gptoss_tokenizer_load("/nonexistent/dir/tokenizer.json", &err);
	char		vocab[256 * 16 + 256];
	char		path[512];
	int			at;

	CHECK(tok == NULL && strstr(err.msg, "/nonexistent/dir/tokenizer.json") &&
		  strstr(err.msg, "No such file"), "missing file: %s", err.msg);
	tok = gptoss_tokenizer_load("/tmp", &err);
	CHECK(tok == NULL && strstr(err.msg, "not a regular file"), "directory: %s", err.msg);
	tok = gptoss_tokenizer_load("", &err);
	CHECK(tok == NULL && err.code == GPTOSS_ERR_INVALID, "empty path: %s", err.msg);
	check_load_fails("", "not a JSON object");
	check_load_fails("this is not json", "not a JSON object");
	check_load_fails("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0", "not a JSON object");
	check_load_fails("[1, 2, 3]", "not a JSON object");
	check_load_fails("{\"version\": \"1.0\"}", "no \"model\"");
	check_load_fails("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "BPE");
	check_load_fails("{\"model\": {\"type\": \"BPE\"}}", "no model.vocab");
	check_load_fails("{\"model\": {\"type\": \"BPE\", \"vocab\": [1]}}", "not an object");
	check_load_fails("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0,}}}", "not valid JSON");
	check_load_fails("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}}}", "no valid id");
	check_load_fails("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}}}", "no valid id");
	check_load_fails("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}}}", "appears twice");
	check_load_fails("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"\\u4e2d\": 0}}}", "not a byte-level token");
	check_load_fails("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}}}", "no token for byte");

	/* A complete 256-byte vocabulary loads; a broken added_tokens entry does not. */
	at = sprintf(vocab, "{\"added_tokens\": %%s, \"model\": {\"type\": \"BPE\", \"vocab\": {");
	for (int b = 0, n_remapped = 0; b < 256; b++)
	{
		bool		as_itself = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
		int			cp = as_itself ? b : 256 + n_remapped++;

		at += sprintf(vocab + at, "%s\"\\u%04x\": %d", b ? ", " : "", cp, b);
	}
	strcpy(vocab + at, "}}}");
	{
		char		doc[sizeof(vocab) + 128];

		snprintf(doc, sizeof(doc), vocab, "[{\"id\": 300, \"content\": \"<|x|>\"}]");
		write_temp(path, sizeof(path), doc);
		tok = gptoss_tokenizer_load(path, &err);
		CHECK(tok != NULL, "byte-only vocabulary should load: %s", err.msg);
		if (tok)
		{
			int32_t    *ids;
			int			n = encode(tok, "hi", 2, &ids);

			CHECK(gptoss_tokenizer_vocab_size(tok) == 301, "vocab size %d", gptoss_tokenizer_vocab_size(tok));
			CHECK(gptoss_tokenizer_is_special(tok, 300), "special id");
			CHECK(!gptoss_tokenizer_is_valid(tok, 299), "299 unassigned");
			CHECK(n == 2 && ids[0] == 'h' && ids[1] == 'i', "byte-only encode");
			free(ids);
			gptoss_tokenizer_free(tok);
		}
		unlink(path);
		snprintf(doc, sizeof(doc), vocab, "[{\"id\": 300}]");
		check_load_fails(doc, "added_tokens[0]");
		snprintf(doc, sizeof(doc), vocab, "{\"id\": 300}");
		check_load_fails(doc, "not an array");
	}
}

/* ------------------------------------------------------------------------ */
/* Ids, specials, known tokens */

/* Id ranges, special lookups and token_bytes. */
static void
test_ids(const gptoss_tokenizer *tok)
{
	static const struct
	{
		const char *text;
		int32_t		id;
	}			specials[] = {
		{"<|startoftext|>", GPTOSS_TOK_STARTOFTEXT}, {"<|endoftext|>", GPTOSS_TOK_ENDOFTEXT},
		{"<|return|>", GPTOSS_TOK_RETURN}, {"<|constrain|>", GPTOSS_TOK_CONSTRAIN},
		{"<|channel|>", GPTOSS_TOK_CHANNEL}, {"<|start|>", GPTOSS_TOK_START},
		{"<|end|>", GPTOSS_TOK_END}, {"<|message|>", GPTOSS_TOK_MESSAGE},
		{"<|call|>", GPTOSS_TOK_CALL}, {"<|reserved_200000|>", 200000},
		{"<|endofprompt|>", 200018},
	};
	int			n_special = 0;
	size_t		len = 0;
	const char *b;

	CHECK(gptoss_tokenizer_vocab_size(tok) == 200019, "vocab size %d", gptoss_tokenizer_vocab_size(tok));
	for (int32_t id = -5; id < 201100; id++)
	{
		bool		want_valid = id >= 0 && id <= 200018;

		if (gptoss_tokenizer_is_valid(tok, id) != want_valid)
		{
			CHECK(false, "is_valid(%d)", id);
			break;
		}
		n_special += gptoss_tokenizer_is_special(tok, id);
	}
	CHECK(n_special == 21, "%d specials", n_special);
	CHECK(!gptoss_tokenizer_is_valid(tok, INT32_MAX) && !gptoss_tokenizer_is_valid(tok, INT32_MIN),
		  "extreme ids");
	CHECK(!gptoss_tokenizer_is_special(tok, 199997) && gptoss_tokenizer_is_special(tok, 199998),
		  "special boundary");
	for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); i++)
	{
		CHECK(gptoss_tokenizer_is_special(tok, specials[i].id), "is_special(%s)", specials[i].text);
		b = gptoss_tokenizer_token_bytes(tok, specials[i].id, &len);
		CHECK(b && len == strlen(specials[i].text) && memcmp(b, specials[i].text, len) == 0,
			  "token_bytes(%d)", specials[i].id);
	}
	CHECK(!gptoss_tokenizer_is_special(tok, 200500), "unregistered special");
	CHECK(gptoss_tokenizer_token_bytes(tok, 200500, &len) == NULL, "token_bytes unassigned");
	CHECK(gptoss_tokenizer_token_bytes(tok, -1, &len) == NULL, "token_bytes negative");
	CHECK(gptoss_tokenizer_token_bytes(tok, 201088, &len) == NULL, "token_bytes past the end");
	/* Ordinary token bytes: every single byte is a token of length 1. */
	for (int byte = 0; byte < 256; byte++)
	{
		int32_t    *ids;
		char		c = (char) byte;
		int			n = encode(tok, &c, 1, &ids);

		b = n == 1 ? gptoss_tokenizer_token_bytes(tok, ids[0], &len) : NULL;
		CHECK(b && len == 1 && b[0] == c, "single byte 0x%02x", byte);
		free(ids);
	}
}

/* Ids the spec names (harmony prompts depend on them). */
static void
test_known_ids(const gptoss_tokenizer *tok)
{
	static const struct
	{
		const char *text;
		int32_t		id;
	}			known[] = {{"assistant", 173781}, {"analysis", 35644}, {"final", 17196}};

	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
	{
		int32_t    *ids;
		int			n = encode(tok, known[i].text, strlen(known[i].text), &ids);

		CHECK(n == 1 && ids[0] == known[i].id, "%s -> %d tokens, first %d, want %d",
			  known[i].text, n, n > 0 ? ids[0] : -1, known[i].id);
		free(ids);
	}
}

/* ------------------------------------------------------------------------ */
/* Fixtures */

/* Compares ids with the reference fixture and round-trips every text. */
static void
test_fixtures(const gptoss_tokenizer *tok)
{
	const char *texts_path = env_or("GPTOSS_TOKENIZER_TEXTS", "test/fixtures/tokenizer_texts.json");
	const char *ids_path = env_or("GPTOSS_TOKENIZER_FIXTURE", "test/fixtures/tokenizer_ids.json");
	const char *require = getenv("GPTOSS_REQUIRE_FIXTURES");
	json_error_t jerr;
	json_t	   *texts = json_load_file(texts_path, JSON_ALLOW_NUL, &jerr);
	json_t	   *fix,
			   *fix_texts,
			   *fix_ids,
			   *v;
	size_t		i;
	int			n_match = 0,
				n_round = 0;

	CHECK(json_is_array(texts) && json_array_size(texts) >= 120, "%s: %s", texts_path, jerr.text);
	json_array_foreach(texts, i, v)
	{
		bool		ok = json_is_string(v) &&
			round_trips(tok, json_string_value(v), json_string_length(v));

		CHECK(ok, "round trip of text %zu", i);
		n_round += ok;
	}
	printf("round trips: %d/%zu fixture texts\n", n_round, json_array_size(texts));

	if (access(ids_path, F_OK) != 0)
	{
		CHECK(!(require && strcmp(require, "1") == 0),
			  "reference fixture %s is missing (GPTOSS_REQUIRE_FIXTURES=1)", ids_path);
		printf("SKIP reference ids: %s absent (run test/reference/tokenizer_ref.py)\n", ids_path);
		json_decref(texts);
		return;
	}
	fix = json_load_file(ids_path, JSON_ALLOW_NUL, &jerr);
	fix_texts = json_object_get(fix, "texts");
	fix_ids = json_object_get(fix, "ids");
	CHECK(json_is_array(fix_texts) && json_is_array(fix_ids) &&
		  json_array_size(fix_texts) == json_array_size(fix_ids), "%s malformed: %s", ids_path, jerr.text);
	CHECK(json_equal(fix_texts, texts), "%s was made from other texts than %s: regenerate it",
		  ids_path, texts_path);
	json_array_foreach(fix_texts, i, v)
	{
		json_t	   *want = json_array_get(fix_ids, i);
		int32_t    *ids;
		int			n = encode(tok, json_string_value(v), json_string_length(v), &ids);
		int			first_diff = 0;
		bool		same;

		while (first_diff < n && (size_t) first_diff < json_array_size(want) &&
			   json_integer_value(json_array_get(want, (size_t) first_diff)) == ids[first_diff])
			first_diff++;
		same = n >= 0 && first_diff == n && (size_t) n == json_array_size(want);
		CHECK(same, "text %zu \"%.40s\": %d ids (want %zu), first difference at id %d",
			  i, json_string_value(v), n, json_array_size(want), first_diff);
		n_match += same;
		free(ids);
	}
	printf("reference ids: %d/%zu texts identical\n", n_match, json_array_size(fix_texts));
	json_decref(fix);
	json_decref(texts);
}

/* ------------------------------------------------------------------------ */
/* The merge loop against a direct O(n^2) BPE */

/* One ordinary token, for the sorted lookup of the reference BPE. */
typedef struct ref_token
{
	const char *bytes;
	size_t		len;
	int32_t		id;
} ref_token;

static ref_token *ref_tokens;
static size_t n_ref_tokens;

/* Orders tokens by (length, bytes). */
static int
ref_cmp(const void *a, const void *b)
{
	const ref_token *x = a,
			   *y = b;

	if (x->len != y->len)
		return x->len < y->len ? -1 : 1;
	return memcmp(x->bytes, y->bytes, x->len);
}

/* Rank of bytes via binary search over all ordinary tokens, or -1. */
static int32_t
ref_rank(const char *bytes, size_t len)
{
	ref_token	key = {bytes, len, 0};
	ref_token  *hit = bsearch(&key, ref_tokens, n_ref_tokens, sizeof(ref_token), ref_cmp);

	return hit ? hit->id : -1;
}

/*
 * Reference BPE of one piece: part boundaries in an array, the rank of each
 * adjacent pair cached, a linear scan for the leftmost lowest rank per merge.
 */
static int
ref_bpe(const char *piece, int n, int32_t *out)
{
	int		   *start = malloc(sizeof(int) * (size_t) (n + 1));
	int32_t    *pair = malloc(sizeof(int32_t) * (size_t) (n + 1));
	int			parts = n,
				n_out = 0;

	for (int i = 0; i <= n; i++)
		start[i] = i;
	for (int i = 0; i + 1 < parts; i++)
		pair[i] = ref_rank(piece + start[i], (size_t) (start[i + 2] - start[i]));
	for (;;)
	{
		int			best = -1;

		for (int i = 0; i + 1 < parts; i++)
			if (pair[i] >= 0 && (best < 0 || pair[i] < pair[best]))
				best = i;
		if (best < 0)
			break;
		memmove(start + best + 1, start + best + 2, sizeof(int) * (size_t) (parts - best - 1));
		memmove(pair + best, pair + best + 1, sizeof(int32_t) * (size_t) (parts - best - 1));
		parts--;
		if (best > 0)
			pair[best - 1] = ref_rank(piece + start[best - 1], (size_t) (start[best + 1] - start[best - 1]));
		if (best + 1 < parts)
			pair[best] = ref_rank(piece + start[best], (size_t) (start[best + 2] - start[best]));
	}
	for (int i = 0; i < parts; i++)
		out[n_out++] = ref_rank(piece + start[i], (size_t) (start[i + 1] - start[i]));
	free(start);
	free(pair);
	return n_out;
}

/* Compares encode with the reference BPE on one single-piece input. */
static bool
matches_ref_bpe(const gptoss_tokenizer *tok, const char *piece, int n)
{
	int32_t    *want = malloc(sizeof(int32_t) * (size_t) (n + 1));
	int32_t    *ids;
	int			n_want = ref_bpe(piece, n, want);
	int			got = encode(tok, piece, (size_t) n, &ids);
	bool		same = got == n_want && memcmp(ids, want, sizeof(int32_t) * (size_t) got) == 0;

	free(want);
	free(ids);
	return same;
}

/*
 * Inputs the split pattern keeps whole (lowercase letters, one lowercase
 * Cyrillic word, continuation bytes that are invalid UTF-8) go through both
 * BPEs; small alphabets provoke equal-rank ties.
 */
static void
test_bpe_against_reference(const gptoss_tokenizer *tok)
{
	static const char *alphabets[] = {"abcdefghijklmnopqrstuvwxyz", "ab", "aeiou", "xyz"};
	char		buf[3001];
	int			n_same = 0,
				n_cases = 0;
	size_t		len;

	n_ref_tokens = 0;
	ref_tokens = malloc(sizeof(ref_token) * (size_t) gptoss_tokenizer_vocab_size(tok));
	for (int32_t id = 0; id < gptoss_tokenizer_vocab_size(tok); id++)
		if (gptoss_tokenizer_is_valid(tok, id) && !gptoss_tokenizer_is_special(tok, id))
		{
			ref_tokens[n_ref_tokens].bytes = gptoss_tokenizer_token_bytes(tok, id, &len);
			ref_tokens[n_ref_tokens].len = len;
			ref_tokens[n_ref_tokens++].id = id;
		}
	qsort(ref_tokens, n_ref_tokens, sizeof(ref_token), ref_cmp);

	for (int c = 0; c < 1200; c++)
	{
		const char *alpha = alphabets[c % 4];
		int			n = 1 + (int) (rng_next() % (c < 1100 ? 40 : 3000));
		int			k = (int) strlen(alpha);

		if (c % 5 == 4)
		{
			/* Runs of UTF-8 continuation bytes: invalid, so one piece of their own. */
			for (int i = 0; i < n; i++)
				buf[i] = (char) (0x80 + rng_next() % 64);
		}
		else
			for (int i = 0; i < n; i++)
				buf[i] = alpha[rng_next() % (uint32_t) k];
		n_cases++;
		n_same += matches_ref_bpe(tok, buf, n);
	}
	{
		static const char cyr[] = "электроэнцефалографистка";

		n_cases++;
		n_same += matches_ref_bpe(tok, cyr, (int) strlen(cyr));
	}
	CHECK(n_same == n_cases, "heap BPE differs from reference BPE on %d of %d inputs",
		  n_cases - n_same, n_cases);
	printf("merge loop vs reference BPE: %d/%d inputs identical\n", n_same, n_cases);
	free(ref_tokens);
}

/* ------------------------------------------------------------------------ */
/* Special-token text, whitespace, invalid UTF-8 */

/* Text that spells special tokens encodes as ordinary tokens and decodes back. */
static void
test_special_text_is_text(const gptoss_tokenizer *tok)
{
	static const char *texts[] = {
		"<|start|>", "<|endoftext|>", "<|start|>user<|message|>Hello<|end|>",
		"<|return|><|call|><|channel|><|constrain|>", "<|reserved_200013|>",
	};

	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
	{
		int32_t    *ids;
		int			n = encode(tok, texts[i], strlen(texts[i]), &ids);
		bool		special = false;

		for (int k = 0; k < n; k++)
			special |= gptoss_tokenizer_is_special(tok, ids[k]) || ids[k] >= 199998;
		CHECK(n > 1 && !special, "%s produced a special token", texts[i]);
		CHECK(round_trips(tok, texts[i], strlen(texts[i])), "round trip %s", texts[i]);
		free(ids);
	}
}

/*
 * U+00A0, U+3000 and U+2003 are whitespace for the pattern (Unicode
 * White_Space): between letters a run of them leaves its last one to prefix
 * the next word, like ASCII spaces.  U+180E is not White_Space (PCRE2's \s
 * would say it is): after two spaces it joins the second one like
 * punctuation, where a whitespace U+180E would make "  \u180e" one piece.
 */
static void
test_unicode_whitespace(const gptoss_tokenizer *tok)
{
	static const char *ascii[] = {"a", "  ", " b"};
	static const char *nbsp[] = {"word", "\u00a0\u00a0", "\u00a0next"};
	static const char *ideo[] = {"\u5168\u89d2", "\u3000\u3000", "\u3000\u30b9\u30da\u30fc\u30b9"};
	static const char *em[] = {"em", "\u2003", "\u2003space"};
	static const char *mongol[] = {"a", " ", " \u180e"};
	static const char *tail[] = {"x", "\u3000\u00a0\n"};
	static const char *crlf[] = {"line", "\r\n", "next"};

	CHECK(splits_as(tok, ascii, 3), "ASCII spaces split");
	CHECK(splits_as(tok, nbsp, 3), "U+00A0 is whitespace");
	CHECK(splits_as(tok, ideo, 3), "U+3000 is whitespace");
	CHECK(splits_as(tok, em, 3), "U+2003 is whitespace");
	CHECK(splits_as(tok, mongol, 3), "U+180E is not whitespace");
	CHECK(splits_as(tok, tail, 2), "trailing Unicode whitespace with newline");
	CHECK(splits_as(tok, crlf, 3), "CRLF");
}

/* Invalid UTF-8 never crashes, encodes byte-level and round-trips. */
static void
test_invalid_utf8(const gptoss_tokenizer *tok)
{
	static const char *cases[] = {
		"\xff", "\xfe\xff", "abc\x80" "def", "\xe4\xbd", "\xe4\xbd" "abc", "\xc0\xaf", "\xed\xa0\x80",
		"\xf4\x90\x80\x80", "\xf5\x80", "\xf0\x9f\x98", "ok \xf0\x9f\x98 ok", "\x80\x80\x80\x80",
		"caf\xe9 na\xefve", "\xef\xbb\xbf" "bom", "a\xc3", "\xc3\x28", "  \xff  ", "\n\xff\n",
	};
	static const char *around[] = {"abc", "\xff", "def"};
	static const char *around2[] = {"hello", "\xe4\xbd", " world"};
	char		buf[256];
	int			n_ok = 0;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		CHECK(round_trips(tok, cases[i], strlen(cases[i])), "invalid UTF-8 case %zu", i);
	CHECK(round_trips(tok, "a\0b\0\0c", 6), "NUL bytes");
	CHECK(splits_as(tok, around, 3), "invalid byte is its own piece");
	CHECK(splits_as(tok, around2, 3), "truncated sequence is its own piece");
	for (int c = 0; c < 3000; c++)
	{
		size_t		n = rng_next() % sizeof(buf);

		for (size_t i = 0; i < n; i++)
			buf[i] = c % 2 ? (char) rng_next() : "ab \n\xc3\xa9\xe4\xbd\xa0\xf0\x9f\x98\x80"[rng_next() % 14];
		n_ok += round_trips(tok, buf, n);
	}
	CHECK(n_ok == 3000, "random bytes: %d/3000 round trips", n_ok);
}

/* ------------------------------------------------------------------------ */
/* Decoding */

/* Invalid ids are errors; skip_special drops special tokens. */
static void
test_decode(const gptoss_tokenizer *tok)
{
	static const int32_t bad[] = {-1, 201088, 200500, 200019, 201087, INT32_MAX, INT32_MIN};
	int32_t		ids[3];
	int32_t    *hello;
	gptoss_error err;
	size_t		len = 99;
	char	   *s;
	int			n;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
	{
		ids[0] = 17196;
		ids[1] = bad[i];
		memset(&err, 0, sizeof(err));
		s = gptoss_tokenizer_decode(tok, ids, 2, false, &len, &err);
		CHECK(s == NULL && err.code == GPTOSS_ERR_INVALID && strstr(err.msg, "not a token id"),
			  "decode of id %d: %s", bad[i], err.msg);
		free(s);
	}
	s = gptoss_tokenizer_decode(tok, NULL, 0, false, &len, &err);
	CHECK(s && len == 0 && s[0] == '\0', "empty decode");
	free(s);

	n = encode(tok, "Hello", 5, &hello);
	{
		int32_t		msg[8] = {GPTOSS_TOK_START, 173781, GPTOSS_TOK_MESSAGE};

		memcpy(msg + 3, hello, sizeof(int32_t) * (size_t) n);
		msg[3 + n] = GPTOSS_TOK_END;
		s = gptoss_tokenizer_decode(tok, msg, 4 + n, false, &len, &err);
		CHECK(s && strcmp(s, "<|start|>assistant<|message|>Hello<|end|>") == 0 && len == strlen(s),
			  "decode with specials: %s", s ? s : err.msg);
		free(s);
		s = gptoss_tokenizer_decode(tok, msg, 4 + n, true, NULL, &err);
		CHECK(s && strcmp(s, "assistantHello") == 0, "decode skipping specials: %s", s ? s : err.msg);
		free(s);
	}
	free(hello);
}

/* ------------------------------------------------------------------------ */
/* Speed (printed, never asserted) */

/* Reads a file into a malloc'ed buffer, or NULL. */
static char *
slurp(const char *path, size_t *len)
{
	FILE	   *f = fopen(path, "rb");
	char	   *buf;
	long		size;

	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	size = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t) size + 1);
	if (fread(buf, 1, (size_t) size, f) != (size_t) size)
	{
		free(buf);
		buf = NULL;
	}
	fclose(f);
	*len = (size_t) size;
	return buf;
}

/* Repeats sample into a buffer of about target bytes. */
static char *
repeat_to(const char *sample, size_t sample_len, size_t target, size_t *len)
{
	size_t		reps = target / sample_len + 1;
	char	   *buf = malloc(reps * sample_len);

	for (size_t r = 0; r < reps; r++)
		memcpy(buf + r * sample_len, sample, sample_len);
	*len = reps * sample_len;
	return buf;
}

/* Encodes text once and prints MB/s. */
static void
bench_one(const gptoss_tokenizer *tok, const char *name, const char *text, size_t len)
{
	int32_t    *ids;
	double		t0 = gptoss_now();
	int			n = encode(tok, text, len, &ids);
	double		dt = gptoss_now() - t0;

	printf("encode %-12s %8.2f MB/s  (%zu bytes, %d tokens, %.1f bytes/token)\n",
		   name, (double) len / dt / 1e6, len, n, n > 0 ? (double) len / n : 0.0);
	free(ids);
}

/* English prose, C code, CJK text and one very long word. */
static void
bench_encode(const gptoss_tokenizer *tok)
{
	static const char cjk[] =
		"\xe6\x98\xa5\xe7\x9c\xa0\xe4\xb8\x8d\xe8\xa7\x89\xe6\x99\x93\xef\xbc\x8c\xe5\xa4\x84\xe5\xa4\x84\xe9\x97\xbb\xe5\x95\xbc\xe9\xb8\x9f\xe3\x80\x82"
		"\xe5\xa4\x9c\xe6\x9d\xa5\xe9\xa3\x8e\xe9\x9b\xa8\xe5\xa3\xb0\xef\xbc\x8c\xe8\x8a\xb1\xe8\x90\xbd\xe7\x9f\xa5\xe5\xa4\x9a\xe5\xb0\x91\xe3\x80\x82"
		"\xe6\x95\xb0\xe6\x8d\xae\xe5\xba\x93\xe7\xae\xa1\xe7\x90\x86\xe7\xb3\xbb\xe7\xbb\x9f\xe6\x98\xaf\xe4\xb8\x80\xe7\xa7\x8d\xe7\x94\xa8\xe4\xba\x8e\xe5\xad\x98\xe5\x82\xa8\xe5\x92\x8c\xe6\x9f\xa5\xe8\xaf\xa2\xe6\x95\xb0\xe6\x8d\xae\xe7\x9a\x84\xe8\xbd\xaf\xe4\xbb\xb6\xe3\x80\x82"
		"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe6\x96\x87\xe7\xab\xa0\xe3\x82\x82\xe6\xb7\xb7\xe3\x81\x9c\xe3\x81\xa6\xe3\x81\x84\xe3\x81\xbe\xe3\x81\x99\xe3\x80\x82"
		"\xed\x95\x9c\xea\xb5\xad\xec\x96\xb4 \xeb\xac\xb8\xec\x9e\xa5\xeb\x8f\x84 \xec\x9e\x88\xec\x8a\xb5\xeb\x8b\x88\xeb\x8b\xa4.\n";
	size_t		len,
				n;
	char	   *prose = slurp("/usr/share/common-licenses/GPL-3", &len);
	char	   *text;

	if (prose)
	{
		text = repeat_to(prose, len, 1 << 20, &n);
		bench_one(tok, "English", text, n);
		free(text);
		free(prose);
	}
	else
		printf("encode English: /usr/share/common-licenses/GPL-3 not found, skipped\n");
	prose = slurp("src/engine/tokenizer.c", &len);
	if (prose)
	{
		text = repeat_to(prose, len, 1 << 20, &n);
		bench_one(tok, "C code", text, n);
		free(text);
		free(prose);
	}
	text = repeat_to(cjk, sizeof(cjk) - 1, 1 << 20, &n);
	bench_one(tok, "CJK", text, n);
	free(text);
	text = malloc(200000);
	for (int i = 0; i < 200000; i++)
		text[i] = "abcdefghijklmnopqrstuvwxyz"[rng_next() % 26];
	bench_one(tok, "200k-letter word", text, 200000);
	memset(text, ' ', 200000);
	bench_one(tok, "200k spaces", text, 200000);
	free(text);
}

/* should_stop callback: asks to stop once it has been polled *arg times. */
static int
stop_after(void *arg)
{
	int		   *polls_left = arg;

	return --*polls_left <= 0;
}

/* A long encoding polls its interrupt and stops cleanly; a NULL interrupt never stops it. */
static void
test_interruptible(const gptoss_tokenizer *tok)
{
	size_t		len = (size_t) GPTOSS_ENCODE_POLL_PIECES * 12 * 3;
	char	   *text = malloc(len + 1);
	int			polls_left = 2;
	gptoss_interrupt intr = {stop_after, &polls_left};
	gptoss_error err = {0};
	int32_t    *ids = NULL;
	int			n;

	for (size_t i = 0; i < len; i += 12)
		memcpy(text + i, "lorem ipsum ", 12);
	text[len] = '\0';
	n = gptoss_tokenizer_encode_interruptible(tok, text, len, &intr, &ids, &err);
	CHECK(n == -1 && err.code == GPTOSS_ERR_INTERRUPTED && ids == NULL,
		  "interrupted at the second poll: n %d code %d", n, (int) err.code);
	CHECK(polls_left == 0, "polled twice (%d left)", polls_left);
	polls_left = 1000;
	n = gptoss_tokenizer_encode_interruptible(tok, text, len, &intr, &ids, &err);
	/* "lorem ipsum " splits into two pieces ("lorem", " ipsum"). */
	CHECK(n > 0 && 1000 - polls_left == (int) (len / 12 * 2 / GPTOSS_ENCODE_POLL_PIECES),
		  "a patient interrupt sees one poll per %d pieces (%d tokens, %d polls)",
		  GPTOSS_ENCODE_POLL_PIECES, n, 1000 - polls_left);
	free(ids);
	free(text);
}

int
main(void)
{
	const char *path = env_or("GPTOSS_TOKENIZER", "build/tokenizer.json");
	gptoss_error err = {0};
	double		t0 = gptoss_now();
	gptoss_tokenizer *tok = gptoss_tokenizer_load(path, &err);
	double		load_s = gptoss_now() - t0;

	if (!tok)
	{
		fprintf(stderr, "FAIL: cannot load %s: %s (set GPTOSS_TOKENIZER)\n", path, err.msg);
		return 1;
	}
	printf("loaded %s in %.3f s\n", path, load_s);
	test_load_errors();
	test_ids(tok);
	test_known_ids(tok);
	test_fixtures(tok);
	test_bpe_against_reference(tok);
	test_special_text_is_text(tok);
	test_unicode_whitespace(tok);
	test_invalid_utf8(tok);
	test_decode(tok);
	test_interruptible(tok);
	bench_encode(tok);
	gptoss_tokenizer_free(tok);
	printf("%s: %d checks, %d failed\n", n_failed ? "FAIL" : "PASS", n_checked, n_failed);
	return n_failed ? 1 : 0;
}
