/*
 * testutil.c: counters and the random generator shared by the unit tests.
 */
#include "testutil.h"

#include <math.h>

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
