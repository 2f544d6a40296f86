/*
 * rope.c: YaRN inverse frequencies, concentration and cos/sin tables.
 *
 * The formulas are in rope.h.  Everything is evaluated in double and rounded
 * to float only when a cos/sin value is handed out, so that a table built on
 * the host for the GPU and the CPU backend's per-position values are the same
 * floats.
 */
#include "rope.h"

#include <math.h>

/* Fills rope from cfg; rejects head dims the struct cannot hold. */
int
gptoss_rope_init(gptoss_rope *rope, const gptoss_config *cfg, gptoss_error *err)
{
	int			d = cfg->head_dim;
	double		theta = cfg->rope_theta;

	memset(rope, 0, sizeof(*rope));
	if (d <= 0 || d % 2 != 0 || d / 2 > GPTOSS_ROPE_MAX_HALF)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "rope: head_dim %d must be even and at most %d",
								  d, 2 * GPTOSS_ROPE_MAX_HALF);
	if (!(theta > 1.0) || !isfinite(theta))
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "rope: rope_theta %g must be > 1", theta);
	rope->half_dim = d / 2;
	rope->factor = cfg->rope_factor > 1.0f ? cfg->rope_factor : 1.0;
	rope->yarn = rope->factor > 1.0;
	rope->concentration = rope->yarn ? 0.1 * log(rope->factor) + 1.0 : 1.0;

	if (rope->yarn)
	{
		double		l0 = cfg->rope_original_max_pos;
		double		beta_fast = cfg->rope_beta_fast > 0 ? cfg->rope_beta_fast : 32.0;
		double		beta_slow = cfg->rope_beta_slow > 0 ? cfg->rope_beta_slow : 1.0;

		if (!(l0 > 0))
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
									  "rope: YaRN needs original_max_position_embeddings > 0");
		/* dimension index at which a frequency completes beta turns over L0 */
		rope->low = d * log(l0 / (beta_fast * 2.0 * M_PI)) / (2.0 * log(theta));
		rope->high = d * log(l0 / (beta_slow * 2.0 * M_PI)) / (2.0 * log(theta));
		if (cfg->rope_truncate)
		{
			rope->low = floor(rope->low);
			rope->high = ceil(rope->high);
		}
		if (rope->low < 0)
			rope->low = 0;
		if (rope->high > d - 1)
			rope->high = d - 1;
		if (rope->low == rope->high)
			rope->high += 0.001;
	}

	for (int i = 0; i < rope->half_dim; i++)
	{
		double		base_i = pow(theta, 2.0 * i / d);
		double		extrap = 1.0 / base_i;

		if (rope->yarn)
		{
			double		interp = 1.0 / (rope->factor * base_i);
			double		ramp = (i - rope->low) / (rope->high - rope->low);

			ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
			rope->inv_freq[i] = interp * ramp + extrap * (1.0 - ramp);
		}
		else
			rope->inv_freq[i] = extrap;
	}
	return 0;
}

/* m*cos(pos*f_i), m*sin(pos*f_i) for i in [0, D/2). */
void
gptoss_rope_cos_sin(const gptoss_rope *rope, int64_t pos, float *cos_out, float *sin_out)
{
	for (int i = 0; i < rope->half_dim; i++)
	{
		double		angle = (double) pos * rope->inv_freq[i];

		cos_out[i] = (float) (rope->concentration * cos(angle));
		sin_out[i] = (float) (rope->concentration * sin(angle));
	}
}

/* Table [n_pos][D/2][2] of (cos, sin) pairs, positions from 0. */
void
gptoss_rope_table(const gptoss_rope *rope, int64_t n_pos, float *table)
{
	int			h = rope->half_dim;

	for (int64_t p = 0; p < n_pos; p++)
		for (int i = 0; i < h; i++)
		{
			double		angle = (double) p * rope->inv_freq[i];

			table[(p * h + i) * 2 + 0] = (float) (rope->concentration * cos(angle));
			table[(p * h + i) * 2 + 1] = (float) (rope->concentration * sin(angle));
		}
}
