/*
 * params.c: the table of generation parameters, their setters and the one
 * validator (see params.h for what is derived from the table and how to add
 * a parameter).
 *
 * Numbers are checked in double precision and then as the field stores them,
 * so that a value a float cannot hold (top_p 1e-50 becomes 0) fails the same
 * way as the stored value would: one check, one message.
 */
#include "params.h"
#include "engine.h"
#include "json_schema.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(gptoss_reasoning) == sizeof(int), "ENUM fields are ints");

#define FIELD(f) offsetof(gptoss_gen_params, f)
#define NO_AUX 0

static int	check_response_format(const char *text, size_t len, gptoss_error *err);

const char *const gptoss_on_error_names[] = {"error", "null", NULL};

const gptoss_param GPTOSS_PARAMS[] = {
	{.name = "max_tokens", .type = GPTOSS_PARAM_INT, .offset = FIELD(max_tokens),
	 .min = 1, .max = INT_MAX, .guc_doc = "Default max_tokens of a generation."},
	{.name = "min_tokens", .type = GPTOSS_PARAM_INT, .offset = FIELD(min_tokens),
	 .min = 0, .max = INT_MAX},
	{.name = "temperature", .type = GPTOSS_PARAM_FLOAT, .offset = FIELD(temperature),
	 .min = 0, .max = FLT_MAX, .guc_doc = "Default sampling temperature (0: greedy)."},
	{.name = "top_p", .type = GPTOSS_PARAM_FLOAT, .offset = FIELD(top_p),
	 .min = 0, .min_exclusive = true, .max = 1, .guc_doc = "Default nucleus sampling mass, in (0, 1]."},
	{.name = "top_k", .type = GPTOSS_PARAM_INT, .offset = FIELD(top_k),
	 .min = 0, .max = INT_MAX, .guc_doc = "Default top-k cut of sampling (0: off)."},
	{.name = "seed", .type = GPTOSS_PARAM_SEED, .offset = FIELD(seed), .aux_offset = FIELD(has_seed)},
	{.name = "stop", .type = GPTOSS_PARAM_STRINGS, .offset = FIELD(stop), .aux_offset = FIELD(n_stop),
	 .max_count = GPTOSS_MAX_STOP, .max_len = GPTOSS_MAX_STOP_LEN},
	{.name = "reasoning_effort", .cli_name = "reasoning", .type = GPTOSS_PARAM_ENUM,
	 .offset = FIELD(reasoning_effort), .names = gptoss_reasoning_names,
	 .guc_doc = "Default reasoning effort of the system message: low, medium or high."},
	{.name = "instructions", .type = GPTOSS_PARAM_STRING, .offset = FIELD(instructions)},
	{.name = "raw", .type = GPTOSS_PARAM_BOOL, .offset = FIELD(raw)},
	{.name = "ignore_eos", .type = GPTOSS_PARAM_BOOL, .offset = FIELD(ignore_eos)},
	{.name = "include_reasoning", .type = GPTOSS_PARAM_BOOL, .offset = FIELD(include_reasoning)},
	{.name = "max_reasoning_tokens", .type = GPTOSS_PARAM_INT, .offset = FIELD(max_reasoning_tokens),
	 .aux_offset = FIELD(has_max_reasoning_tokens), .min = 0, .max = INT_MAX},
	{.name = "response_format", .type = GPTOSS_PARAM_JSON, .offset = FIELD(response_format),
	 .check_json = check_response_format},
	{.name = "on_error", .type = GPTOSS_PARAM_ENUM, .offset = FIELD(on_error),
	 .names = gptoss_on_error_names, .sql_only = true},
	{.name = "prefix_caching", .type = GPTOSS_PARAM_BOOL, .offset = FIELD(prefix_caching),
	 .guc_doc = "Share the KV cache of identical prompt prefixes between requests (results are the same on or off)."},
	{.name = "logprobs", .type = GPTOSS_PARAM_BOOL, .offset = FIELD(logprobs)},
	{.name = "top_logprobs", .type = GPTOSS_PARAM_INT, .offset = FIELD(top_logprobs),
	 .min = 0, .max = GPTOSS_MAX_TOP_LOGPROBS, .strict_max = true},
};

const int	GPTOSS_N_PARAMS = (int) (sizeof(GPTOSS_PARAMS) / sizeof(GPTOSS_PARAMS[0]));

/*
 * A response_format object: its shape and its schema must compile
 * (json_schema.h); messages name the key as every parameter's do.
 */
static int
check_response_format(const char *text, size_t len, gptoss_error *err)
{
	gptoss_json_grammar *g = NULL;
	gptoss_error inner = {0};
	const char *msg;

	if (gptoss_response_format_parse(text, len, &g, NULL, &inner) == 0)
	{
		gptoss_json_grammar_free(g);
		return 0;
	}
	msg = strncmp(inner.msg, "response_format: ", 17) == 0 ? inner.msg + 17 : inner.msg;
	return gptoss_errorf_code(err, inner.code, "invalid gptoss parameter \"response_format\": %s", msg);
}

/* The field of param in p. */
static void *
field_of(struct gptoss_gen_params *p, size_t offset)
{
	return (char *) p + offset;
}

/* The row of key, or NULL. */
const gptoss_param *
gptoss_param_find(const char *key, size_t len)
{
	for (int i = 0; i < GPTOSS_N_PARAMS; i++)
		if (strlen(GPTOSS_PARAMS[i].name) == len && memcmp(GPTOSS_PARAMS[i].name, key, len) == 0)
			return &GPTOSS_PARAMS[i];
	return NULL;
}

/* The row of CLI option opt: its cli_name, or its key with '-' for '_'. */
const gptoss_param *
gptoss_param_find_cli(const char *opt)
{
	for (int i = 0; i < GPTOSS_N_PARAMS; i++)
	{
		const gptoss_param *param = &GPTOSS_PARAMS[i];
		const char *name = param->cli_name ? param->cli_name : param->name;
		size_t		n = strlen(name);

		if (param->sql_only || strlen(opt) != n)
			continue;
		for (size_t k = 0; k <= n; k++)
		{
			char		c = name[k] == '_' ? '-' : name[k];

			if (c != opt[k])
				break;
			if (c == '\0')
				return param;
		}
	}
	return NULL;
}

/* "max_tokens, temperature, ... and include_reasoning" */
char *
gptoss_param_key_list(char *buf, size_t size)
{
	size_t		at = 0;

	buf[0] = '\0';
	for (int i = 0; i < GPTOSS_N_PARAMS && at < size; i++)
	{
		const char *sep = i == 0 ? "" : (i == GPTOSS_N_PARAMS - 1 ? " and " : ", ");
		int			n = snprintf(buf + at, size - at, "%s%s", sep, GPTOSS_PARAMS[i].name);

		if (n < 0)
			break;
		at += (size_t) n;
	}
	return buf;
}

/* Raises the error of param with a reason; returns -1. */
static int
invalid(const gptoss_param *param, gptoss_error *err, const char *why)
{
	return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "invalid gptoss parameter \"%s\": %s",
							  param->name, why);
}

/* Wrong-type error of param. */
int
gptoss_param_type_error(const gptoss_param *param, gptoss_error *err)
{
	switch (param->type)
	{
		case GPTOSS_PARAM_INT:
			return invalid(param, err, "must be an integer");
		case GPTOSS_PARAM_FLOAT:
			return invalid(param, err, "must be a number");
		case GPTOSS_PARAM_SEED:
			return invalid(param, err, "must be an integer in the 64-bit range");
		case GPTOSS_PARAM_BOOL:
			return invalid(param, err, "must be a boolean");
		case GPTOSS_PARAM_ENUM:
		case GPTOSS_PARAM_STRING:
			return invalid(param, err, "must be a string");
		case GPTOSS_PARAM_STRINGS:
			return invalid(param, err, "must be a string or an array of strings");
		case GPTOSS_PARAM_JSON:
			return invalid(param, err, "must be a JSON object");
	}
	return invalid(param, err, "has an unknown type");
}

/* Checks a number against param's range; v is already finite. */
static int
check_range(const gptoss_param *param, double v, gptoss_error *err)
{
	char		why[128];

	if (param->min_exclusive ? v > param->min : v >= param->min)
	{
		if (v <= param->max || (param->type == GPTOSS_PARAM_INT && !param->strict_max))
			return 0;
		if (param->max == FLT_MAX)
			return invalid(param, err, "is too large");
	}
	if (param->min_exclusive)
		snprintf(why, sizeof(why), "must be greater than %g and at most %g", param->min, param->max);
	else if (param->max == FLT_MAX || param->max == INT_MAX)
		snprintf(why, sizeof(why), "must be at least %g", param->min);
	else
		snprintf(why, sizeof(why), "must be at least %g and at most %g", param->min, param->max);
	return invalid(param, err, why);
}

/* Parses an integral number ("2", "2.0", "1e3"); *overflow when beyond int64. */
static bool
parse_integer(const char *text, int64_t *out, bool *overflow)
{
	char	   *end;
	long long	v;
	double		d;

	*overflow = false;
	errno = 0;
	v = strtoll(text, &end, 10);
	if (end != text && *end == '\0')
	{
		*overflow = errno == ERANGE;
		*out = (int64_t) v;
		return true;
	}
	/* A fraction or an exponent: integral when the double has no fraction. */
	errno = 0;
	d = strtod(text, &end);
	if (end == text || *end != '\0' || !isfinite(d) || d != floor(d))
		return false;
	if (d >= 9223372036854775808.0 || d < -9223372036854775808.0)
	{
		*overflow = true;
		*out = d > 0 ? INT64_MAX : INT64_MIN;
		return true;
	}
	*out = (int64_t) d;
	return true;
}

/* Sets an INT, FLOAT or SEED parameter from the text of a number. */
int
gptoss_param_set_number(struct gptoss_gen_params *p, const gptoss_param *param,
						const char *text, gptoss_error *err)
{
	int64_t		i;
	bool		overflow;
	double		d;
	char	   *end;

	switch (param->type)
	{
		case GPTOSS_PARAM_INT:
			if (!parse_integer(text, &i, &overflow))
				return gptoss_param_type_error(param, err);
			if (check_range(param, (double) i, err) < 0)
				return -1;
			*(int *) field_of(p, param->offset) = i > param->max ? (int) param->max : (int) i;
			if (param->aux_offset != 0)
				*(bool *) field_of(p, param->aux_offset) = true;
			return 0;
		case GPTOSS_PARAM_SEED:
			if (!parse_integer(text, &i, &overflow) || overflow)
				return gptoss_param_type_error(param, err);
			*(uint64_t *) field_of(p, param->offset) = (uint64_t) i;
			*(bool *) field_of(p, param->aux_offset) = true;
			return 0;
		case GPTOSS_PARAM_FLOAT:
			d = strtod(text, &end);
			if (end == text || *end != '\0' || !isfinite(d))
				return gptoss_param_type_error(param, err);
			/* the value asked for, then the value the float field keeps */
			if (check_range(param, d, err) < 0 || check_range(param, (double) (float) d, err) < 0)
				return -1;
			*(float *) field_of(p, param->offset) = (float) d;
			return 0;
		default:
			return gptoss_param_type_error(param, err);
	}
}

/* Sets a BOOL parameter. */
int
gptoss_param_set_bool(struct gptoss_gen_params *p, const gptoss_param *param, bool value,
					  gptoss_error *err)
{
	if (param->type != GPTOSS_PARAM_BOOL)
		return gptoss_param_type_error(param, err);
	*(bool *) field_of(p, param->offset) = value;
	return 0;
}

/* "must be \"low\", \"medium\" or \"high\"" for an ENUM row. */
static int
enum_error(const gptoss_param *param, gptoss_error *err)
{
	char		why[256] = "must be ";
	size_t		at = strlen(why);
	int			n = 0;

	while (param->names[n] != NULL)
		n++;
	for (int k = 0; k < n && at < sizeof(why); k++)
		at += (size_t) snprintf(why + at, sizeof(why) - at, "%s\"%s\"",
								k == 0 ? "" : (k == n - 1 ? " or " : ", "), param->names[k]);
	return invalid(param, err, why);
}

/* Checks one string of a STRINGS row. */
static int
check_list_string(const gptoss_param *param, const char *s, size_t len, gptoss_error *err)
{
	char		why[128];

	if (s == NULL || len == 0)
	{
		snprintf(why, sizeof(why), "%s strings must not be empty", param->name);
		return invalid(param, err, why);
	}
	if (len > (size_t) param->max_len)
	{
		snprintf(why, sizeof(why), "%s strings must be at most %d bytes (got %zu)",
				 param->name, param->max_len, len);
		return invalid(param, err, why);
	}
	return 0;
}

/* Sets a STRING or ENUM parameter, or appends to a STRINGS one. */
int
gptoss_param_set_string(struct gptoss_gen_params *p, const gptoss_param *param,
						const char *s, size_t len, gptoss_error *err)
{
	switch (param->type)
	{
		case GPTOSS_PARAM_STRING:
			*(const char **) field_of(p, param->offset) = s;
			return 0;
		case GPTOSS_PARAM_ENUM:
			for (int k = 0; param->names[k] != NULL; k++)
				if (strlen(param->names[k]) == len && memcmp(param->names[k], s, len) == 0)
				{
					*(int *) field_of(p, param->offset) = k;
					return 0;
				}
			return enum_error(param, err);
		case GPTOSS_PARAM_STRINGS:
			{
				const char **list = (const char **) field_of(p, param->offset);
				int		   *count = (int *) field_of(p, param->aux_offset);
				char		why[128];

				if (check_list_string(param, s, len, err) < 0)
					return -1;
				if (*count >= param->max_count)
				{
					snprintf(why, sizeof(why), "at most %d %s strings are allowed",
							 param->max_count, param->name);
					return invalid(param, err, why);
				}
				list[(*count)++] = s;
				return 0;
			}
		default:
			return gptoss_param_type_error(param, err);
	}
}

/* Checks one row's field as stored in p. */
static int
check_field(const struct gptoss_gen_params *p, const gptoss_param *param, gptoss_error *err)
{
	const void *field = (const char *) p + param->offset;

	switch (param->type)
	{
		case GPTOSS_PARAM_INT:
			return check_range(param, (double) *(const int *) field, err);
		case GPTOSS_PARAM_FLOAT:
			{
				double		v = (double) *(const float *) field;

				if (!isfinite(v))
					return gptoss_param_type_error(param, err);
				return check_range(param, v, err);
			}
		case GPTOSS_PARAM_ENUM:
			{
				int			v = *(const int *) field;
				int			n = 0;

				while (param->names[n] != NULL)
					n++;
				return v >= 0 && v < n ? 0 : enum_error(param, err);
			}
		case GPTOSS_PARAM_STRINGS:
			{
				const char *const *list = (const char *const *) field;
				int			count = *(const int *) ((const char *) p + param->aux_offset);
				char		why[128];

				if (count < 0 || count > param->max_count)
				{
					snprintf(why, sizeof(why), "at most %d %s strings are allowed",
							 param->max_count, param->name);
					return invalid(param, err, why);
				}
				for (int k = 0; k < count; k++)
					if (check_list_string(param, list[k], list[k] ? strlen(list[k]) : 0, err) < 0)
						return -1;
				return 0;
			}
		case GPTOSS_PARAM_JSON:
			{
				const char *text = *(const char *const *) field;

				if (text == NULL || param->check_json == NULL)
					return 0;
				return param->check_json(text, strlen(text), err);
			}
		case GPTOSS_PARAM_SEED:
		case GPTOSS_PARAM_BOOL:
		case GPTOSS_PARAM_STRING:
			return 0;
	}
	return 0;
}

/* Sets a JSON parameter from the object's JSON text, after the row's check. */
int
gptoss_param_set_json(struct gptoss_gen_params *p, const gptoss_param *param, const char *text,
					  size_t len, gptoss_error *err)
{
	if (param->type != GPTOSS_PARAM_JSON)
		return gptoss_param_type_error(param, err);
	if (param->check_json && param->check_json(text, len, err) < 0)
		return -1;
	*(const char **) field_of(p, param->offset) = text;
	return 0;
}

/* Rules between fields. */
static int
check_combinations(const struct gptoss_gen_params *p, gptoss_error *err)
{
	if (p->response_format != NULL && p->n_stop > 0)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "invalid gptoss parameter \"stop\": cannot be combined with response_format (a stop string would cut the document)");
	if (p->top_logprobs > 0 && !p->logprobs)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "invalid gptoss parameter \"top_logprobs\": needs \"logprobs\": true");
	if (p->response_format != NULL && p->ignore_eos)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "invalid gptoss parameter \"ignore_eos\": cannot be combined with response_format (the document ends the answer)");
	return 0;
}

/* The validator: every row of the table against p. */
int
gptoss_gen_params_check(const struct gptoss_gen_params *p, gptoss_error *err)
{
	if (p == NULL)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "no generation parameters");
	for (int i = 0; i < GPTOSS_N_PARAMS; i++)
		if (check_field(p, &GPTOSS_PARAMS[i], err) < 0)
			return -1;
	return check_combinations(p, err);
}
