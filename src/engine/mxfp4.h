/*
 * mxfp4.h: decoding of MXFP4 weight rows (OCP MX: FP4 E2M1 values in blocks
 * of 32 sharing one E8M0 power-of-two scale); docs/architecture.md, MXFP4.
 *
 * A row of an [E, out, in/32, 16] tensor is in/32 blocks of 16 bytes; byte j
 * of a block holds element 2j in its low nibble and 2j+1 in its high nibble.
 * Element value = gptoss_fp4_values[nibble] * 2^(scale - 127).  Multiplying by
 * a power of two is exact, so decoding to fp32 loses nothing.
 */
#ifndef GPTOSS_MXFP4_H
#define GPTOSS_MXFP4_H

#include "model.h"

/* 2^(s - 127) as a float: the bit pattern s << 23, except s = 0 (subnormal). */
static inline __attribute__((always_inline)) float
gptoss_e8m0_to_f32(uint8_t s)
{
	union { uint32_t u; float f; } x;

	if (s == 0)
		return 0x1p-127f;
	x.u = (uint32_t) s << 23;	/* s = 255 gives +inf, as ldexp(1, 128) does */
	return x.f;
}

/*
 * Decodes one row: blocks [n_blocks][16], scales [n_blocks] -> out [n_blocks * 32].
 * Always inlined, so a caller compiled for wider vectors decodes with them.
 */
static inline __attribute__((always_inline)) void
gptoss_mxfp4_decode_row(const uint8_t *blocks, const uint8_t *scales, int n_blocks, float *out)
{
	for (int b = 0; b < n_blocks; b++)
	{
		float		scale = gptoss_e8m0_to_f32(scales[b]);
		const uint8_t *blk = blocks + (size_t) b * 16;
		float	   *o = out + (size_t) b * 32;

		for (int j = 0; j < 16; j++)
		{
			o[2 * j] = gptoss_fp4_values[blk[j] & 15] * scale;
			o[2 * j + 1] = gptoss_fp4_values[blk[j] >> 4] * scale;
		}
	}
}

#endif							/* GPTOSS_MXFP4_H */
