/*
 * common.h: error reporting, bf16 conversion and small helpers shared by
 * every part of the gptoss engine.  The engine never includes PostgreSQL
 * headers; it reports failures through gptoss_error and a -1 return so that
 * callers (CLI, background worker) decide how to surface them.
 */
#ifndef GPTOSS_COMMON_H
#define GPTOSS_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define GPTOSS_HD __host__ __device__
#else
#define GPTOSS_HD
#endif

#define GPTOSS_VERSION "1.0"

/*
 * CPU hot loops (CPU backend, sampler) are compiled twice with CPU_KERNEL:
 * for x86-64-v3 (AVX2 + FMA) and for the baseline, picked at load time.
 */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define CPU_KERNEL __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CPU_KERNEL
#endif
/* helpers of kernels must inline into each clone to get its instructions, at any -O */
#define KERNEL_INLINE static inline __attribute__((always_inline))

/* What kind of failure; callers map these to exit codes or SQLSTATEs. */
typedef enum gptoss_errcode
{
	GPTOSS_ERR_INTERNAL = 1,	/* engine, I/O or device failure */
	GPTOSS_ERR_INVALID,			/* bad argument or parameter (22023) */
	GPTOSS_ERR_TOO_LONG,		/* prompt does not fit the context (54000) */
	GPTOSS_ERR_BUSY,			/* no capacity right now (53000) */
	GPTOSS_ERR_INTERRUPTED		/* a gptoss_interrupt asked to stop */
} gptoss_errcode;

/* A failure description; msg is empty when no error happened. */
typedef struct gptoss_error
{
	gptoss_errcode code;
	char		msg[1024];
} gptoss_error;

/* Writes a printf-style message into err (when not NULL), code INTERNAL; returns -1. */
int			gptoss_errorf(gptoss_error *err, const char *fmt,...)
			__attribute__((format(printf, 2, 3)));

/* Same with an explicit code; returns -1. */
int			gptoss_errorf_code(gptoss_error *err, gptoss_errcode code, const char *fmt,...)
			__attribute__((format(printf, 3, 4)));

/*
 * Lets a caller stop a long computation (tokenizing a huge text) without
 * unwinding through engine code: the engine polls should_stop every so often
 * and, when it returns nonzero, frees what it built and fails with
 * GPTOSS_ERR_INTERRUPTED.  The PostgreSQL session looks at InterruptPending.
 */
typedef struct gptoss_interrupt
{
	int			(*should_stop) (void *arg);
	void	   *arg;
} gptoss_interrupt;

typedef uint16_t gptoss_bf16;

/* bf16 -> fp32 is exact: the bf16 bits are the high half of the fp32 bits. */
static inline GPTOSS_HD float
gptoss_bf16_to_f32(gptoss_bf16 v)
{
	union { uint32_t u; float f; } x;
	x.u = (uint32_t) v << 16;
	return x.f;
}

/* fp32 -> bf16 with round-to-nearest-even (NaN stays NaN). */
static inline GPTOSS_HD gptoss_bf16
gptoss_f32_to_bf16(float f)
{
	union { uint32_t u; float f; } x;
	x.f = f;
	if ((x.u & 0x7fffffffu) > 0x7f800000u)
		return (gptoss_bf16) ((x.u >> 16) | 0x40);
	return (gptoss_bf16) ((x.u + 0x7fffu + ((x.u >> 16) & 1u)) >> 16);
}

/*
 * A growable byte buffer, the one every engine part appends to (generated
 * text, rendered prompt ids, token ids of an encode).  Capacity doubles as
 * needed and data[len] is kept 0, so a buffer of text is a C string.  A
 * zeroed buffer is empty; the owner frees data (gptoss_buffer_free or free).
 */
typedef struct gptoss_buffer
{
	char	   *data;			/* [cap] bytes; data[len] = 0 once allocated */
	size_t		len;			/* bytes in use */
	size_t		cap;			/* bytes allocated */
} gptoss_buffer;

/* A buffer that holds an array of type: its item count, and a pointer to item i. */
#define GPTOSS_BUFFER_COUNT(b, type)	((int) ((b)->len / sizeof(type)))
#define GPTOSS_BUFFER_AT(b, type, i)	((type *) (b)->data + (i))

/* Makes room for extra more bytes (plus the terminating 0); returns 0, or -1 with err set. */
int			gptoss_buffer_reserve(gptoss_buffer *b, size_t extra, gptoss_error *err);

/* Appends n bytes; returns 0, or -1 with err set when out of memory. */
int			gptoss_buffer_append(gptoss_buffer *b, const void *bytes, size_t n, gptoss_error *err);

/* Empties the buffer, keeping its memory. */
void		gptoss_buffer_reset(gptoss_buffer *b);

/* Frees the buffer's memory and empties it. */
void		gptoss_buffer_free(gptoss_buffer *b);

/* Monotonic wall clock in seconds. */
double		gptoss_now(void);

/* CPU time of the calling thread in seconds. */
double		gptoss_thread_cpu_time(void);

/* Number of worker threads the CPU code uses (GPTOSS_THREADS or online cores). */
int			gptoss_num_threads(void);

#endif							/* GPTOSS_COMMON_H */
