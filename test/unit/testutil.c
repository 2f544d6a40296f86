/*
 * testutil.c: counters, the random generator and helpers shared by the unit
 * tests.
 */
#include "testutil.h"
#include "synth.h"
#include "tmpname.h"

#include <math.h>
#include <stdlib.h>

int			n_pass;
int			n_fail;
uint64_t	rng_state = 0x1234567887654321ULL;

/* xorshift64* in [0, 1). */
double
rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (double) ((rng_state * 0x2545F4914F6CDD1DULL) >> 11) * (1.0 / 9007199254740992.0);
}

/* Standard normal (Box-Muller). */
double
rnd_normal(void)
{
	double		u = rnd() + 1e-300;

	return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * rnd());
}

/* Copies a file; returns 0 or -1. */
int
copy_file(const char *from, const char *to)
{
	FILE	   *in = fopen(from, "rb"),
			   *out;
	char		buf[65536];
	size_t		n;

	if (in == NULL)
		return -1;
	out = fopen(to, "wb");
	if (out == NULL)
	{
		fclose(in);
		return -1;
	}
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
		fwrite(buf, 1, n, out);
	fclose(in);
	return fclose(out);
}

/* Renders (harmony or raw) and submits; returns the id, or -1 after a failed CHECK. */
int64_t
submit_text(gptoss_engine *eng, const char *prompt, const gptoss_gen_params *p)
{
	gptoss_error err = {0};
	int32_t    *ids = NULL;
	int			n = 0;
	int64_t		id;

	if (gptoss_render_prompt(gptoss_engine_tokenizer(eng), prompt, NULL, 0, p, NULL, &ids, &n, &err) < 0)
	{
		CHECK(0, "render: %s", err.msg);
		return -1;
	}
	id = gptoss_engine_submit(eng, ids, n, p, &err);
	CHECK(id >= 0, "submit: %s", err.msg);
	free(ids);
	return id;
}

/* $GPTOSS_TOKENIZER, or build/tokenizer.json. */
const char *
test_tokenizer_path(void)
{
	const char *path = getenv("GPTOSS_TOKENIZER");

	return path == NULL || path[0] == '\0' ? "build/tokenizer.json" : path;
}

/* Loads the tests' tokenizer; NULL after a message naming who. */
gptoss_tokenizer *
load_test_tokenizer(const char *who)
{
	const char *path = test_tokenizer_path();
	gptoss_error err = {0};
	gptoss_tokenizer *tok = gptoss_tokenizer_load(path, &err);

	if (tok == NULL)
		fprintf(stderr, "%s: cannot load the tokenizer (%s): %s\n"
				"set GPTOSS_TOKENIZER or run test/setup.sh\n", who, path, err.msg);
	return tok;
}

/* Steps until nothing is active (bounded). */
void
run_to_end(gptoss_engine *eng)
{
	gptoss_error err = {0};

	for (int i = 0; i < 100000 && gptoss_engine_active(eng) > 0; i++)
		if (gptoss_engine_step(eng, &err) < 0)
		{
			CHECK(0, "step failed: %s", err.msg);
			return;
		}
}

/* The tiny model and the tests' tokenizer in a new temporary directory. */
int
make_tiny_model(char *dir, size_t size, const char *prefix)
{
	char		path[1024];
	gptoss_config cfg;
	gptoss_error err = {0};

	if (tmp_make_dir(dir, size, prefix) < 0)
	{
		CHECK(0, "temporary directory %s", prefix);
		return -1;
	}
	if (gptoss_synth_config(GPTOSS_SYNTH_TINY, &cfg, &err) < 0 ||
		gptoss_synth_write(&cfg, dir, 1, NULL, NULL, NULL, &err) < 0)
	{
		CHECK(0, "synth: %s", err.msg);
		return -1;
	}
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	if (copy_file(test_tokenizer_path(), path) < 0)
	{
		CHECK(0, "copy tokenizer %s to %s", test_tokenizer_path(), path);
		return -1;
	}
	return 0;
}

/* rm -rf dir. */
void
remove_test_dir(const char *dir)
{
	char		cmd[1100];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
}
