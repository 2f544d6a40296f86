/*
 * test_params.c: the parameter table (params.c): parsing and checking one
 * value per row, the caps on stop strings, the validator over a whole
 * gptoss_gen_params and the names derived from the rows.
 */
#include "engine.h"

#include <float.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "testutil.h"

/* The row of key. */
static const gptoss_param *
row(const char *key)
{
	return gptoss_param_find(key, strlen(key));
}

/* Sets key from number text; returns the setter's result, err.msg on failure. */
static int
set_number(gptoss_gen_params *p, const char *key, const char *text, gptoss_error *err)
{
	memset(err, 0, sizeof(*err));
	return gptoss_param_set_number(p, row(key), text, err);
}

/* Numbers: integers, clamping, ranges, float precision. */
static void
test_numbers(void)
{
	gptoss_gen_params p;
	gptoss_error err;

	gptoss_gen_params_default(&p);
	CHECK(set_number(&p, "max_tokens", "2.0", &err) == 0 && p.max_tokens == 2, "integral 2.0");
	CHECK(set_number(&p, "max_tokens", "1e3", &err) == 0 && p.max_tokens == 1000, "1e3");
	CHECK(set_number(&p, "max_tokens", "1e30", &err) == 0 && p.max_tokens == INT_MAX,
		  "huge max_tokens clamps (%d)", p.max_tokens);
	CHECK(set_number(&p, "max_tokens", "2.5", &err) == -1 &&
		  strcmp(err.msg, "invalid gptoss parameter \"max_tokens\": must be an integer") == 0,
		  "2.5: %s", err.msg);
	CHECK(set_number(&p, "max_tokens", "0", &err) == -1 && err.code == GPTOSS_ERR_INVALID &&
		  strcmp(err.msg, "invalid gptoss parameter \"max_tokens\": must be at least 1") == 0,
		  "0: %s", err.msg);
	CHECK(set_number(&p, "top_k", "-1", &err) == -1 && strstr(err.msg, "must be at least 0"),
		  "top_k -1: %s", err.msg);

	/* top_p: (0, 1], checked as asked and as a float keeps it. */
	CHECK(set_number(&p, "top_p", "0.5", &err) == 0 && p.top_p == 0.5f, "top_p 0.5");
	CHECK(set_number(&p, "top_p", "0", &err) == -1 &&
		  strcmp(err.msg, "invalid gptoss parameter \"top_p\": must be greater than 0 and at most 1") == 0,
		  "top_p 0: %s", err.msg);
	{
		char		zero_msg[sizeof(err.msg)];

		strcpy(zero_msg, err.msg);
		CHECK(set_number(&p, "top_p", "1e-50", &err) == -1 && strcmp(err.msg, zero_msg) == 0,
			  "top_p 1e-50 fails like 0: %s", err.msg);
	}
	CHECK(p.top_p == 0.5f, "a failed set keeps the value");
	CHECK(set_number(&p, "temperature", "1e39", &err) == -1 && strstr(err.msg, "is too large"),
		  "temperature 1e39: %s", err.msg);
	CHECK(set_number(&p, "temperature", "inf", &err) == -1 && strstr(err.msg, "must be a number"),
		  "temperature inf: %s", err.msg);
	CHECK(set_number(&p, "temperature", "0", &err) == 0 && p.temperature == 0.0f, "greedy");

	/* seed: any 64-bit integer, wrapping negative values. */
	CHECK(set_number(&p, "seed", "-1", &err) == 0 && p.has_seed && p.seed == UINT64_MAX, "seed -1");
	CHECK(set_number(&p, "seed", "1e30", &err) == -1 && strstr(err.msg, "64-bit range"),
		  "seed 1e30: %s", err.msg);

	/* A number for a row of another type is a type error. */
	CHECK(set_number(&p, "raw", "1", &err) == -1 && strstr(err.msg, "must be a boolean"),
		  "raw 1: %s", err.msg);
}

/* Strings, enums and the caps on stop strings. */
static void
test_strings(void)
{
	gptoss_gen_params p;
	gptoss_error err = {0};
	char		long_stop[GPTOSS_MAX_STOP_LEN + 2];

	gptoss_gen_params_default(&p);
	CHECK(gptoss_param_set_string(&p, row("reasoning_effort"), "high", 4, &err) == 0 &&
		  p.reasoning_effort == GPTOSS_REASONING_HIGH, "high");
	CHECK(gptoss_param_set_string(&p, row("reasoning_effort"), "Medium", 6, &err) == -1 &&
		  strcmp(err.msg, "invalid gptoss parameter \"reasoning_effort\": must be \"low\", \"medium\" or \"high\"") == 0,
		  "enum message: %s", err.msg);
	CHECK(p.on_error == GPTOSS_ON_ERROR_RAISE &&
		  gptoss_param_set_string(&p, row("on_error"), "null", 4, &err) == 0 &&
		  p.on_error == GPTOSS_ON_ERROR_NULL, "on_error null");
	CHECK(gptoss_param_set_string(&p, row("instructions"), "Be brief.", 9, &err) == 0 &&
		  strcmp(p.instructions, "Be brief.") == 0, "instructions");

	for (int i = 0; i < GPTOSS_MAX_STOP; i++)
		CHECK(gptoss_param_set_string(&p, row("stop"), "zz", 2, &err) == 0, "stop %d", i);
	CHECK(p.n_stop == GPTOSS_MAX_STOP, "%d stops", p.n_stop);
	CHECK(gptoss_param_set_string(&p, row("stop"), "zz", 2, &err) == -1 &&
		  strstr(err.msg, "at most 64 stop strings are allowed"), "65th stop: %s", err.msg);

	p.n_stop = 0;
	memset(long_stop, 'a', sizeof(long_stop));
	long_stop[GPTOSS_MAX_STOP_LEN] = '\0';
	CHECK(gptoss_param_set_string(&p, row("stop"), long_stop, GPTOSS_MAX_STOP_LEN, &err) == 0,
		  "a stop string of %d bytes", GPTOSS_MAX_STOP_LEN);
	long_stop[GPTOSS_MAX_STOP_LEN] = 'a';
	long_stop[GPTOSS_MAX_STOP_LEN + 1] = '\0';
	CHECK(gptoss_param_set_string(&p, row("stop"), long_stop, GPTOSS_MAX_STOP_LEN + 1, &err) == -1 &&
		  strstr(err.msg, "at most 256 bytes"), "257 bytes: %s", err.msg);
	CHECK(gptoss_param_set_string(&p, row("stop"), "", 0, &err) == -1 &&
		  strstr(err.msg, "must not be empty"), "empty stop: %s", err.msg);
}

/* The validator over a whole struct: what a caller of the engine API may set wrong. */
static void
test_validator(void)
{
	gptoss_gen_params p;
	gptoss_error err = {0};

	gptoss_gen_params_default(&p);
	CHECK(gptoss_gen_params_check(&p, &err) == 0, "defaults are valid: %s", err.msg);
	p.top_p = 0.0f;
	CHECK(gptoss_gen_params_check(&p, &err) == -1 && strstr(err.msg, "\"top_p\""), "top_p 0: %s", err.msg);
	gptoss_gen_params_default(&p);
	p.reasoning_effort = (gptoss_reasoning) 3;
	CHECK(gptoss_gen_params_check(&p, &err) == -1 && strstr(err.msg, "\"reasoning_effort\""),
		  "effort 3: %s", err.msg);
	gptoss_gen_params_default(&p);
	p.n_stop = GPTOSS_MAX_STOP + 1;
	CHECK(gptoss_gen_params_check(&p, &err) == -1 && strstr(err.msg, "\"stop\""), "too many stops");
	gptoss_gen_params_default(&p);
	p.stop[0] = "";
	p.n_stop = 1;
	CHECK(gptoss_gen_params_check(&p, &err) == -1 && strstr(err.msg, "must not be empty"),
		  "empty stop: %s", err.msg);
}

/* Names derived from the rows: the hint's key list and the CLI options. */
static void
test_names(void)
{
	char		keys[1024];

	gptoss_param_key_list(keys, sizeof(keys));
	CHECK(strncmp(keys, "max_tokens, ", 12) == 0 &&
		  strstr(keys, " and ") != NULL, "key list: %s", keys);
	for (int i = 0; i < GPTOSS_N_PARAMS; i++)
		CHECK(strstr(keys, GPTOSS_PARAMS[i].name) != NULL, "%s listed", GPTOSS_PARAMS[i].name);
	CHECK(gptoss_param_find_cli("max-tokens") == row("max_tokens"), "--max-tokens");
	CHECK(gptoss_param_find_cli("reasoning") == row("reasoning_effort"), "--reasoning");
	CHECK(gptoss_param_find_cli("reasoning-effort") == NULL, "only the CLI name");
	CHECK(gptoss_param_find_cli("max_tokens") == NULL, "CLI options use dashes");
	CHECK(row("on_error") != NULL && gptoss_param_find_cli("on-error") == NULL,
		  "on_error is a SQL session's policy, not a CLI option");
	CHECK(row("max_token") == NULL, "unknown key");
}

int
main(void)
{
	test_numbers();
	test_strings();
	test_validator();
	test_names();
	printf("test_params: %d passed, %d failed\n", n_pass, n_fail);
	return n_fail > 0;
}
