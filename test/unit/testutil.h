/*
 * testutil.h: what the engine's unit tests share: pass/fail counters with a
 * CHECK macro that reports file and line, and a small seedable generator of
 * random test data (xorshift64*), so every test draws fresh non-zero inputs,
 * and two helpers of the engine tests.
 */
#ifndef GPTOSS_TESTUTIL_H
#define GPTOSS_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>

#include "engine.h"

extern int	n_pass;
extern int	n_fail;

#define CHECK(cond, ...) \
	do { \
		if (cond) n_pass++; \
		else { n_fail++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } \
	} while (0)

/* State of the test generator; assign to reseed. */
extern uint64_t rng_state;

/* Uniform in [0, 1). */
double		rnd(void);

/* Standard normal (Box-Muller). */
double		rnd_normal(void);

/* The tokenizer of the tests: $GPTOSS_TOKENIZER, or build/tokenizer.json. */
const char *test_tokenizer_path(void);

/* Loads that tokenizer; NULL after a message naming the test who. */
gptoss_tokenizer *load_test_tokenizer(const char *who);

/* Steps eng until nothing is active (bounded); a failed step is a failed CHECK. */
void		run_to_end(gptoss_engine *eng);

/* Copies a file (a tokenizer into a model directory); returns 0 or -1. */
int			copy_file(const char *from, const char *to);

/*
 * Synthesises the tiny model, with the tests' tokenizer, into a new temporary
 * directory named prefix plus a suffix (its path to dir, size bytes); returns
 * 0, or -1 after a failed CHECK.
 */
int			make_tiny_model(char *dir, size_t size, const char *prefix);

/* Removes a directory tree a test made (a message when it cannot). */
void		remove_test_dir(const char *dir);

/* Renders prompt (harmony or raw, as p says) and submits it; returns the id, or -1 after a failed CHECK. */
int64_t		submit_text(gptoss_engine *eng, const char *prompt, const gptoss_gen_params *p);

#endif							/* GPTOSS_TESTUTIL_H */
