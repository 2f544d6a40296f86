/*
 * safetensors.c: strict parser for a safetensors file image.
 *
 * Layout: bytes 0..7 hold the header length n (little-endian u64), bytes
 * 8..8+n a JSON object mapping tensor names to {dtype, shape, data_offsets}
 * (plus an optional "__metadata__" object of strings), and the rest is the
 * data section that data_offsets index into.  The parser never trusts the
 * file: every number is range-checked before it is used in arithmetic, so a
 * corrupt or hostile file yields an error message naming the file and the
 * offending entry instead of an out-of-bounds pointer later.  The parsed
 * tensors keep only offsets; the caller adds them to its mapping.
 */
#include "safetensors.h"

#include <stdlib.h>
#include <string.h>
#include <jansson.h>

static const char *const dtype_names[GPTOSS_ST_N_DTYPES] = {
	"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16",
	"BF16", "I32", "U32", "F32", "I64", "U64", "F64"
};

static const size_t dtype_sizes[GPTOSS_ST_N_DTYPES] = {
	1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8
};

/* "BF16", "U8", ... for a dtype. */
const char *
gptoss_st_dtype_name(gptoss_st_dtype dtype)
{
	return (unsigned) dtype < GPTOSS_ST_N_DTYPES ? dtype_names[dtype] : "?";
}

/* Bytes per element of a dtype. */
size_t
gptoss_st_dtype_size(gptoss_st_dtype dtype)
{
	return (unsigned) dtype < GPTOSS_ST_N_DTYPES ? dtype_sizes[dtype] : 0;
}

/* Looks a dtype string up; -1 when it is not one we know. */
static int
dtype_from_name(const char *s, gptoss_st_dtype *out)
{
	for (int i = 0; i < GPTOSS_ST_N_DTYPES; i++)
		if (strcmp(s, dtype_names[i]) == 0)
		{
			*out = (gptoss_st_dtype) i;
			return 0;
		}
	return -1;
}

/* Reads a JSON integer that must lie in [0, 2^62]; -1 otherwise. */
static int
json_to_u62(const json_t *v, uint64_t *out)
{
	json_int_t	x;

	if (!json_is_integer(v))
		return -1;
	x = json_integer_value(v);
	if (x < 0 || (uint64_t) x > (1ull << 62))
		return -1;
	*out = (uint64_t) x;
	return 0;
}

/* Fills t from one header entry {dtype, shape, data_offsets}; data_size bounds the offsets. */
static int
parse_entry(const char *what, const char *name, json_t *entry, uint64_t data_start,
			uint64_t data_size, gptoss_st_tensor *t, gptoss_error *err)
{
	json_t	   *dtype = json_object_get(entry, "dtype");
	json_t	   *shape = json_object_get(entry, "shape");
	json_t	   *offsets = json_object_get(entry, "data_offsets");
	uint64_t	numel = 1,
				begin,
				end;

	if (!json_is_object(entry))
		return gptoss_errorf(err, "%s: tensor %s: header entry is not a JSON object", what, name);
	if (!json_is_string(dtype))
		return gptoss_errorf(err, "%s: tensor %s: missing or non-string \"dtype\"", what, name);
	if (dtype_from_name(json_string_value(dtype), &t->dtype) != 0)
		return gptoss_errorf(err, "%s: tensor %s: unknown dtype \"%.32s\"", what, name,
							 json_string_value(dtype));
	if (!json_is_array(shape))
		return gptoss_errorf(err, "%s: tensor %s: missing or non-array \"shape\"", what, name);
	if (json_array_size(shape) > GPTOSS_ST_MAX_DIMS)
		return gptoss_errorf(err, "%s: tensor %s: %zu dimensions (at most %d supported)",
							 what, name, json_array_size(shape), GPTOSS_ST_MAX_DIMS);
	t->ndim = (int) json_array_size(shape);
	for (int d = 0; d < t->ndim; d++)
	{
		uint64_t	dim;

		if (json_to_u62(json_array_get(shape, d), &dim) != 0)
			return gptoss_errorf(err, "%s: tensor %s: shape[%d] is not a non-negative integer",
								 what, name, d);
		t->shape[d] = (int64_t) dim;
		if (dim != 0 && numel > (1ull << 62) / dim)
			return gptoss_errorf(err, "%s: tensor %s: element count overflows", what, name);
		numel *= dim;
	}
	if (numel > (1ull << 62) / 8)
		return gptoss_errorf(err, "%s: tensor %s: element count overflows", what, name);
	t->nbytes = numel * gptoss_st_dtype_size(t->dtype);

	if (!json_is_array(offsets) || json_array_size(offsets) != 2 ||
		json_to_u62(json_array_get(offsets, 0), &begin) != 0 ||
		json_to_u62(json_array_get(offsets, 1), &end) != 0)
		return gptoss_errorf(err, "%s: tensor %s: \"data_offsets\" must be [begin, end] of "
							 "non-negative integers", what, name);
	if (begin > end || end > data_size)
		return gptoss_errorf(err, "%s: tensor %s: data_offsets [%llu, %llu] outside the data "
							 "section (%llu bytes)", what, name, (unsigned long long) begin,
							 (unsigned long long) end, (unsigned long long) data_size);
	if (end - begin != t->nbytes)
		return gptoss_errorf(err, "%s: tensor %s: data_offsets span %llu bytes but %s x shape "
							 "needs %llu", what, name, (unsigned long long) (end - begin),
							 gptoss_st_dtype_name(t->dtype), (unsigned long long) t->nbytes);
	t->offset = data_start + begin;
	return 0;
}

/* qsort order: by data offset (then size, so empty tensors sort first). */
static int
cmp_by_offset(const void *a, const void *b)
{
	const gptoss_st_tensor *x = *(const gptoss_st_tensor *const *) a;
	const gptoss_st_tensor *y = *(const gptoss_st_tensor *const *) b;

	if (x->offset != y->offset)
		return x->offset < y->offset ? -1 : 1;
	if (x->nbytes != y->nbytes)
		return x->nbytes < y->nbytes ? -1 : 1;
	return 0;
}

/* qsort/bsearch order: by name. */
static int
cmp_by_name(const void *a, const void *b)
{
	return strcmp(((const gptoss_st_tensor *) a)->name, ((const gptoss_st_tensor *) b)->name);
}

/* Rejects two tensors whose byte ranges intersect (empty tensors never do). */
static int
check_overlaps(const char *what, gptoss_st_file *file, gptoss_error *err)
{
	const gptoss_st_tensor **order;
	const gptoss_st_tensor *prev = NULL;

	if (file->n_tensors < 2)
		return 0;
	order = malloc(sizeof(*order) * (size_t) file->n_tensors);
	if (!order)
		return gptoss_errorf(err, "%s: out of memory", what);
	for (int i = 0; i < file->n_tensors; i++)
		order[i] = &file->tensors[i];
	qsort(order, (size_t) file->n_tensors, sizeof(*order), cmp_by_offset);
	for (int i = 0; i < file->n_tensors; i++)
	{
		const gptoss_st_tensor *t = order[i];

		if (t->nbytes == 0)
			continue;
		if (prev && t->offset < prev->offset + prev->nbytes)
		{
			gptoss_errorf(err, "%s: tensors %s and %s overlap in the data section",
						  what, prev->name, t->name);
			free(order);
			return -1;
		}
		prev = t;
	}
	free(order);
	return 0;
}

/* Checks "__metadata__": an object whose values are all strings. */
static int
check_metadata(const char *what, json_t *meta, gptoss_error *err)
{
	const char *key;
	json_t	   *value;

	if (!json_is_object(meta))
		return gptoss_errorf(err, "%s: \"__metadata__\" is not a JSON object", what);
	json_object_foreach(meta, key, value)
	{
		if (!json_is_string(value))
			return gptoss_errorf(err, "%s: __metadata__ value for \"%.64s\" is not a string",
								 what, key);
	}
	return 0;
}

/* Parses and validates a whole safetensors file image. */
int
gptoss_st_parse(const uint8_t *buf, size_t size, const char *what,
				gptoss_st_file *out, gptoss_error *err)
{
	uint64_t	header_len = 0;
	json_t	   *root;
	json_error_t jerr;
	const char *key;
	json_t	   *value;
	size_t		n_entries;
	gptoss_st_file file = {0};

	memset(out, 0, sizeof(*out));
	if (size < 8)
		return gptoss_errorf(err, "%s: file too small (%zu bytes) to be a safetensors file",
							 what, size);
	for (int i = 7; i >= 0; i--)
		header_len = (header_len << 8) | buf[i];
	if (header_len < 2 || header_len > GPTOSS_ST_MAX_HEADER)
		return gptoss_errorf(err, "%s: header length %llu is not sane (not a safetensors file?)",
							 what, (unsigned long long) header_len);
	if (header_len > size - 8)
		return gptoss_errorf(err, "%s: header length %llu exceeds the file size %zu "
							 "(truncated file?)", what, (unsigned long long) header_len, size);
	if (buf[8] != '{')
		return gptoss_errorf(err, "%s: header does not start with '{' (not a safetensors file?)",
							 what);
	root = json_loadb((const char *) buf + 8, (size_t) header_len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return gptoss_errorf(err, "%s: header is not valid JSON: %s (at byte %d)",
							 what, jerr.text, jerr.position);
	if (!json_is_object(root))
	{
		json_decref(root);
		return gptoss_errorf(err, "%s: header is not a JSON object", what);
	}

	file.data_start = 8 + header_len;
	n_entries = json_object_size(root);
	file.tensors = calloc(n_entries ? n_entries : 1, sizeof(*file.tensors));
	if (!file.tensors)
	{
		json_decref(root);
		return gptoss_errorf(err, "%s: out of memory", what);
	}
	json_object_foreach(root, key, value)
	{
		gptoss_st_tensor *t = &file.tensors[file.n_tensors];

		if (strcmp(key, "__metadata__") == 0)
		{
			if (check_metadata(what, value, err) != 0)
				goto fail;
			continue;
		}
		if (key[0] == '\0')
		{
			gptoss_errorf(err, "%s: a tensor has an empty name", what);
			goto fail;
		}
		if (parse_entry(what, key, value, file.data_start, (uint64_t) size - file.data_start,
						t, err) != 0)
			goto fail;
		t->name = strdup(key);
		if (!t->name)
		{
			gptoss_errorf(err, "%s: out of memory", what);
			goto fail;
		}
		file.n_tensors++;
	}
	json_decref(root);
	root = NULL;
	if (check_overlaps(what, &file, err) != 0)
		goto fail;
	qsort(file.tensors, (size_t) file.n_tensors, sizeof(*file.tensors), cmp_by_name);
	*out = file;
	return 0;

fail:
	json_decref(root);
	gptoss_st_free(&file);
	return -1;
}

/* Frees what gptoss_st_parse allocated. */
void
gptoss_st_free(gptoss_st_file *file)
{
	if (!file)
		return;
	for (int i = 0; i < file->n_tensors; i++)
		free(file->tensors[i].name);
	free(file->tensors);
	memset(file, 0, sizeof(*file));
}

/* Binary search by name in the sorted tensor list. */
const gptoss_st_tensor *
gptoss_st_find(const gptoss_st_file *file, const char *name)
{
	gptoss_st_tensor key = {0};

	if (!file->tensors)
		return NULL;
	key.name = (char *) name;
	return bsearch(&key, file->tensors, (size_t) file->n_tensors, sizeof(key), cmp_by_name);
}
