/*
 * safetensors.h: a strict parser for one safetensors file image (8-byte
 * little-endian header length, a JSON header, then the raw tensor bytes).
 * It works on any in-memory buffer, so the loader (model.c) runs it on an
 * mmap'ed file and the fuzzer on arbitrary bytes.  It knows nothing about
 * gpt-oss; checkpoint.h says which tensors a gpt-oss checkpoint holds.
 */
#ifndef GPTOSS_SAFETENSORS_H
#define GPTOSS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include "common.h"

#define GPTOSS_ST_MAX_DIMS 8
/* The reference safetensors implementation refuses headers above 100 MB. */
#define GPTOSS_ST_MAX_HEADER 100000000ull

typedef enum gptoss_st_dtype
{
	GPTOSS_ST_BOOL,
	GPTOSS_ST_U8,
	GPTOSS_ST_I8,
	GPTOSS_ST_F8_E5M2,
	GPTOSS_ST_F8_E4M3,
	GPTOSS_ST_F8_E8M0,
	GPTOSS_ST_I16,
	GPTOSS_ST_U16,
	GPTOSS_ST_F16,
	GPTOSS_ST_BF16,
	GPTOSS_ST_I32,
	GPTOSS_ST_U32,
	GPTOSS_ST_F32,
	GPTOSS_ST_I64,
	GPTOSS_ST_U64,
	GPTOSS_ST_F64,
	GPTOSS_ST_N_DTYPES
} gptoss_st_dtype;

/* One tensor entry of a parsed header. */
typedef struct gptoss_st_tensor
{
	char	   *name;
	gptoss_st_dtype dtype;
	int			ndim;
	int64_t		shape[GPTOSS_ST_MAX_DIMS];	/* [ndim] */
	uint64_t	offset;			/* first data byte, counted from the start of the file */
	uint64_t	nbytes;			/* numel * dtype size */
} gptoss_st_tensor;

/* A parsed safetensors header; the tensors refer to the buffer it was parsed from. */
typedef struct gptoss_st_file
{
	gptoss_st_tensor *tensors;	/* [n_tensors], sorted by name */
	int			n_tensors;
	uint64_t	data_start;		/* 8 + header length */
} gptoss_st_file;

/*
 * Parses and validates a whole safetensors file image buf[0..size): header
 * length within the file and under GPTOSS_ST_MAX_HEADER, JSON object without
 * duplicate keys, known dtypes, shapes, offsets inside the data section and
 * matching dtype x shape, no two tensors overlapping.  what names the file
 * in error messages.  On success fills *out (free with gptoss_st_free).
 */
int			gptoss_st_parse(const uint8_t *buf, size_t size, const char *what,
							gptoss_st_file *out, gptoss_error *err);
void		gptoss_st_free(gptoss_st_file *file);

/* The tensor called name, or NULL. */
const gptoss_st_tensor *gptoss_st_find(const gptoss_st_file *file, const char *name);

/* "BF16", "U8", ... */
const char *gptoss_st_dtype_name(gptoss_st_dtype dtype);

/* Bytes per element. */
size_t		gptoss_st_dtype_size(gptoss_st_dtype dtype);

#endif							/* GPTOSS_SAFETENSORS_H */
