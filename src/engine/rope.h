/*
 * rope.h: rotary position embedding of gpt-oss (YaRN "ntk-by-parts").
 *
 * gptoss_rope_init derives, from the config alone, the D/2 inverse
 * frequencies f_i and the concentration m (docs/architecture.md, RoPE and YaRN).  Everything
 * is computed in double; the CPU backend turns one position into cos/sin on
 * the fly, the CUDA backend builds a table on the host with gptoss_rope_table
 * and uploads it.  Both apply the rotation the same way:
 *
 *   half-split pairs (x[i], x[i + D/2]), i in [0, D/2):
 *     x'[i]       = x[i]       * C_i - x[i + D/2] * S_i
 *     x'[i + D/2] = x[i + D/2] * C_i + x[i]       * S_i
 *   with C_i = m * cos(p * f_i), S_i = m * sin(p * f_i) for absolute position p.
 *
 * Table layout (gptoss_rope_table, plain floats, no padding):
 *   table[(p * (D/2) + i) * 2 + 0] = C_i at position p
 *   table[(p * (D/2) + i) * 2 + 1] = S_i at position p
 * i.e. [n_pos][D/2][2] (cos, sin) pairs, usable as float2 on the device.
 *
 * YaRN, as HF transformers computes it (matches OpenAI's reference when
 * truncate is false and low/high lie inside [0, D-1]):
 *   base_i   = theta^(2i/D),  extrap_i = 1/base_i,  interp_i = 1/(s * base_i)
 *   low      = D * ln(L0 / (beta_fast * 2 pi)) / (2 ln theta)
 *   high     = D * ln(L0 / (beta_slow * 2 pi)) / (2 ln theta)
 *   truncate: low = floor(low), high = ceil(high); then low = max(low, 0),
 *   high = min(high, D - 1); high += 0.001 when equal
 *   ramp_i   = clamp((i - low) / (high - low), 0, 1)
 *   f_i      = interp_i * ramp_i + extrap_i * (1 - ramp_i)
 *   m        = 0.1 ln(s) + 1 (1 when s <= 1)
 * A factor s <= 1 (no rope_scaling) gives plain RoPE: f_i = 1/base_i, m = 1.
 */
#ifndef GPTOSS_ROPE_H
#define GPTOSS_ROPE_H

#include "model.h"

#define GPTOSS_ROPE_MAX_HALF 256	/* head_dim up to 512 */

typedef struct gptoss_rope
{
	int			half_dim;		/* D/2 */
	int			yarn;			/* 1 when YaRN scaling applies (factor > 1) */
	double		factor;			/* s */
	double		low;			/* ramp start, in frequency-index units */
	double		high;			/* ramp end */
	double		concentration;	/* m, multiplies cos and sin */
	double		inv_freq[GPTOSS_ROPE_MAX_HALF];	/* [D/2] f_i */
} gptoss_rope;

/* Derives the inverse frequencies and the concentration from cfg. */
int			gptoss_rope_init(gptoss_rope *rope, const gptoss_config *cfg, gptoss_error *err);

/* C_i and S_i (already times m) at absolute position pos: cos_out, sin_out [D/2]. */
void		gptoss_rope_cos_sin(const gptoss_rope *rope, int64_t pos, float *cos_out, float *sin_out);

/* Fills table [n_pos][D/2][2] for positions 0 .. n_pos-1 (layout above). */
void		gptoss_rope_table(const gptoss_rope *rope, int64_t n_pos, float *table);

/* Rotates one head vector x[2 * half_dim] in place with C/S of its position. */
static inline void
gptoss_rope_rotate(float *x, const float *cos_v, const float *sin_v, int half_dim)
{
	for (int i = 0; i < half_dim; i++)
	{
		float		a = x[i];
		float		b = x[i + half_dim];

		x[i] = a * cos_v[i] - b * sin_v[i];
		x[i + half_dim] = b * cos_v[i] + a * sin_v[i];
	}
}

#endif							/* GPTOSS_ROPE_H */
