/*
 * common.c: error formatting, clock and thread-count helpers.
 */
#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int
errorv(gptoss_error *err, gptoss_errcode code, const char *fmt, va_list ap)
{
	if (err)
	{
		err->code = code;
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	}
	return -1;
}

/* Writes a printf-style message into err with code INTERNAL; returns -1. */
int
gptoss_errorf(gptoss_error *err, const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	errorv(err, GPTOSS_ERR_INTERNAL, fmt, ap);
	va_end(ap);
	return -1;
}

/* Writes a printf-style message into err with the given code; returns -1. */
int
gptoss_errorf_code(gptoss_error *err, gptoss_errcode code, const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	errorv(err, code, fmt, ap);
	va_end(ap);
	return -1;
}

/* Monotonic wall clock in seconds. */
double
gptoss_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

/* GPTOSS_THREADS when set and positive, else the number of online cores. */
int
gptoss_num_threads(void)
{
	const char *env = getenv("GPTOSS_THREADS");
	long		n;

	if (env && (n = strtol(env, NULL, 10)) > 0 && n <= 1024)
		return (int) n;
	n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int) (n > 256 ? 256 : n) : 1;
}
