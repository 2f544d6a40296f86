/*
 * testutil.h: what the engine's unit tests share: pass/fail counters with a
 * CHECK macro that reports file and line, and a small seedable generator of
 * random test data (xorshift64*), so every test draws fresh non-zero inputs.
 */
#ifndef GPTOSS_TESTUTIL_H
#define GPTOSS_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>

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

#endif							/* GPTOSS_TESTUTIL_H */
