/*
 * common.c: error formatting, the growable buffer, clock and thread-count
 * helpers.
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

/* Makes room for extra more bytes plus the terminating 0, doubling the capacity. */
int
gptoss_buffer_reserve(gptoss_buffer *b, size_t extra, gptoss_error *err)
{
	size_t		need;

	if (extra > SIZE_MAX / 2 - 1 - b->len)
		return gptoss_errorf(err, "out of memory: a buffer of %zu bytes cannot grow by %zu", b->len, extra);
	need = b->len + extra + 1;
	if (need > b->cap)
	{
		size_t		cap = b->cap ? b->cap : 64;
		char	   *data;

		while (cap < need)
			cap *= 2;
		data = realloc(b->data, cap);
		if (data == NULL)
			return gptoss_errorf(err, "out of memory growing a buffer to %zu bytes", cap);
		b->data = data;
		b->cap = cap;
		b->data[b->len] = '\0';
	}
	return 0;
}

/* Appends n bytes and keeps the data 0-terminated. */
int
gptoss_buffer_append(gptoss_buffer *b, const void *bytes, size_t n, gptoss_error *err)
{
	if (gptoss_buffer_reserve(b, n, err) < 0)
		return -1;
	if (n > 0)
		memcpy(b->data + b->len, bytes, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

/* Empties the buffer; its memory stays for the next appends. */
void
gptoss_buffer_reset(gptoss_buffer *b)
{
	b->len = 0;
	if (b->data)
		b->data[0] = '\0';
}

/* Frees the memory and leaves an empty buffer. */
void
gptoss_buffer_free(gptoss_buffer *b)
{
	free(b->data);
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

/* Monotonic wall clock in seconds. */
double
gptoss_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

/* CPU time of the calling thread in seconds. */
double
gptoss_thread_cpu_time(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
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
