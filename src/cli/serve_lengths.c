/*
 * serve_lengths.c: the request lengths of the serving-shaped benchmarks (see
 * serve_lengths.h).
 */
#include "serve_lengths.h"

#include <math.h>

#include "sampler.h"

/* Standard normal distribution function. */
static double
normal_cdf(double x)
{
	return 0.5 * erfc(-x / M_SQRT2);
}

/* Mean of exp(mu + sigma Z) clipped to [lo, hi]. */
static double
clipped_lognormal_mean(double mu, double sigma, double lo, double hi)
{
	double		a = (log(lo) - mu) / sigma;
	double		b = (log(hi) - mu) / sigma;
	double		inside = exp(mu + sigma * sigma / 2) * (normal_cdf(b - sigma) - normal_cdf(a - sigma));

	return lo * normal_cdf(a) + hi * (1.0 - normal_cdf(b)) + inside;
}

/* mu whose clipped log-normal has the given mean (the mean grows with mu: bisection). */
static double
solve_mu(double mean, double sigma, double lo, double hi)
{
	double		left = log(lo) - 10 * sigma;
	double		right = log(hi) + 10 * sigma;

	for (int i = 0; i < 200; i++)
	{
		double		mid = 0.5 * (left + right);

		if (clipped_lognormal_mean(mid, sigma, lo, hi) < mean)
			left = mid;
		else
			right = mid;
	}
	return 0.5 * (left + right);
}

/* Next standard normal draw of the stream *state (Box-Muller, cosine branch). */
static double
next_normal(uint64_t *state)
{
	double		u1,
				u2;

	*state = gptoss_mix64(*state);
	u1 = ((double) (*state >> 11) + 0.5) * (1.0 / 9007199254740992.0);
	*state = gptoss_mix64(*state);
	u2 = (double) (*state >> 11) * (1.0 / 9007199254740992.0);
	return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* One clipped log-normal length. */
static int32_t
draw_length(uint64_t *state, double mu)
{
	double		x = exp(mu + SERVE_LOGNORMAL_SIGMA * next_normal(state));

	if (x < SERVE_LENGTH_MIN)
		x = SERVE_LENGTH_MIN;
	if (x > SERVE_LENGTH_MAX)
		x = SERVE_LENGTH_MAX;
	return (int32_t) lround(x);
}

void
serve_lengths_draw(int n, int input_mean, int output_mean, bool lognormal, uint64_t seed,
				   int32_t *input_len, int32_t *output_len)
{
	if (lognormal)
	{
		double		mu_in = solve_mu(input_mean, SERVE_LOGNORMAL_SIGMA, SERVE_LENGTH_MIN,
									 SERVE_LENGTH_MAX);
		double		mu_out = solve_mu(output_mean, SERVE_LOGNORMAL_SIGMA, SERVE_LENGTH_MIN,
									  SERVE_LENGTH_MAX);
		uint64_t	state = seed;

		for (int i = 0; i < n; i++)
		{
			input_len[i] = draw_length(&state, mu_in);
			output_len[i] = draw_length(&state, mu_out);
		}
	}
	else
		for (int i = 0; i < n; i++)
		{
			input_len[i] = input_mean;
			output_len[i] = output_mean;
		}
}
