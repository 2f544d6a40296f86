/*
 * fuzz_tokenizer.c: libFuzzer target for the tokenizer.
 *
 * Every input is arbitrary bytes (valid UTF-8 or not).  It must encode
 * without error into ordinary ids only, decode back to exactly the input,
 * and stream-decode (token by token) to the input as well.  The tokenizer is
 * loaded once from GPTOSS_TOKENIZER.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc/engine \
 *       test/fuzz/fuzz_tokenizer.c src/engine/tokenizer.c src/engine/common.c \
 *       -lpcre2-8 -ljansson -o /tmp/fuzz_tokenizer
 *   GPTOSS_TOKENIZER=build/tokenizer.json /tmp/fuzz_tokenizer -max_total_time=180
 */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static gptoss_tokenizer *tok;

/* Reports a broken property and stops the fuzzer with a crash it records. */
static void
fail(const char *what, const gptoss_error *err)
{
	fprintf(stderr, "fuzz_tokenizer: %s%s%s\n", what, err ? ": " : "", err ? err->msg : "");
	abort();
}

/* Loads the tokenizer once, before the first input. */
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *path = getenv("GPTOSS_TOKENIZER");
	gptoss_error err = {0};

	(void) argc;
	(void) argv;
	tok = gptoss_tokenizer_load(path ? path : "build/tokenizer.json", &err);
	if (!tok)
		fail("cannot load the tokenizer (set GPTOSS_TOKENIZER)", &err);
	return 0;
}

/* encode and decode one input; the result must reproduce it. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	gptoss_error err = {0};
	int32_t    *ids;
	char	   *text;
	size_t		len = 0;
	int			n = gptoss_tokenizer_encode(tok, (const char *) data, size, &ids, &err);

	if (n < 0)
		fail("encode failed", &err);
	for (int i = 0; i < n; i++)
		if (!gptoss_tokenizer_is_valid(tok, ids[i]) || gptoss_tokenizer_is_special(tok, ids[i]))
			fail("encode produced an invalid or special id", NULL);
	text = gptoss_tokenizer_decode(tok, ids, n, false, &len, &err);
	if (!text)
		fail("decode failed", &err);
	if (len != size || memcmp(text, data, size) != 0)
		fail("decode(encode(x)) != x", NULL);

	free(text);
	free(ids);
	return 0;
}
