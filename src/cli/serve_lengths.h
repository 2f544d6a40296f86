/*
 * serve_lengths.h: the request lengths of the serving-shaped benchmarks.
 *
 * `gptoss bench --requests` (bench_serve.c) and the SQL load generator's
 * serving mode (test/loadgen/gptoss_loadgen.c) both draw their lengths here,
 * so an engine run and a SQL run with the same counts, means and seed
 * submit identical requests.  Plain C (libc and libm only), so the load
 * generator compiles it without the engine.
 *
 * Log-normal lengths follow the shape of ShareGPT conversations (heavy
 * tail): sigma 1, clipped to [4, 2048], with mu solved so that the clipped
 * distribution's mean is the requested one; the draws are deterministic in
 * the seed.
 */
#ifndef GPTOSS_CLI_SERVE_LENGTHS_H
#define GPTOSS_CLI_SERVE_LENGTHS_H

#include <stdbool.h>
#include <stdint.h>

#define SERVE_LOGNORMAL_SIGMA 1.0
#define SERVE_LENGTH_MIN 4
#define SERVE_LENGTH_MAX 2048

/*
 * Fills input_len[n] and output_len[n]: every request input_mean/output_mean
 * tokens, or with lognormal draws from the clipped log-normal distribution
 * of those means (request i's input, then its output, from one stream
 * seeded with seed).  Log-normal means must lie strictly between
 * SERVE_LENGTH_MIN and SERVE_LENGTH_MAX.
 */
void		serve_lengths_draw(int n, int input_mean, int output_mean, bool lognormal, uint64_t seed,
							   int32_t *input_len, int32_t *output_len);

#endif							/* GPTOSS_CLI_SERVE_LENGTHS_H */
