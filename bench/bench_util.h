/*
 * bench_util.h: helpers shared by the libpq benchmark drivers
 * (bench/soak.c, bench/enrich_bench.c). Each driver defines BENCH_PROGRAM,
 * the name its error messages start with, before including this header.
 */
#ifndef GPTOSS_BENCH_UTIL_H
#define GPTOSS_BENCH_UTIL_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Prints an error and exits (a benchmark driver has nothing to save). */
static void
die(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	fprintf(stderr, "%s: ", BENCH_PROGRAM);
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

/* Monotonic wall-clock seconds. */
static double
monotonic_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#endif							/* GPTOSS_BENCH_UTIL_H */
