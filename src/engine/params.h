/*
 * params.h: the generation parameters, described once.
 *
 * GPTOSS_PARAMS (params.c) is the one table of the generation parameters.
 * Each row gives the JSON key (SQL params jsonb; the CLI option is the key
 * with '-' for '_' unless the row names another), the type, the range, the
 * field of gptoss_gen_params it fills and whether a GUC gptoss.<key> holds
 * its default.  Everything else is derived from the rows:
 *   - the SQL side (src/params.c): the jsonb parser, the hint that lists the
 *     keys, the GUC defaults;
 *   - the request segment (src/protocol.c): scalar fields travel in the
 *     copied struct, strings are written and read back row by row;
 *   - the CLI's generate options (src/cli/main.c);
 *   - the one validator, gptoss_gen_params_check, which the engine runs on
 *     every submit and the setters run on every value (so a value gets the
 *     same message from SQL, the CLI and the engine).
 * Messages name the key: `invalid gptoss parameter "top_p": must be ...`.
 *
 * Adding a parameter:
 *   1. add its field to gptoss_gen_params (engine.h) and its default to
 *      gptoss_gen_params_default (engine.c);
 *   2. add a row to GPTOSS_PARAMS (params.c);
 *   3. make the engine use it (engine.c, sampler, ...).
 * Scalars (INT, FLOAT, BOOL, SEED, ENUM) and strings (STRING: one string,
 * STRINGS: an array of strings such as stop, with count and length caps) need
 * nothing more.  A parameter of a new kind, such as a JSON object
 * (response_format), adds a gptoss_param_type, its setter branch in params.c
 * (given the value as JSON text, parsed with jansson), one case in the jsonb
 * parser (src/params.c: pass JsonbToCString of the value) and, when it holds
 * pointers, its case in src/protocol.c's string pass (write the text as one
 * item, point the field at it when reading back).
 */
#ifndef GPTOSS_PARAMS_H
#define GPTOSS_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include "common.h"

/* Caps on stop strings (SQL and CLI alike); matching cost is bounded by them. */
#define GPTOSS_MAX_STOP 64
#define GPTOSS_MAX_STOP_LEN 256

typedef enum gptoss_param_type
{
	GPTOSS_PARAM_INT,			/* int field (+ bool present flag when aux_offset is set);
								 * integral JSON number, clamped above INT_MAX */
	GPTOSS_PARAM_FLOAT,			/* float field; checked in double precision and as stored */
	GPTOSS_PARAM_SEED,			/* uint64_t field + bool present flag; any 64-bit integer */
	GPTOSS_PARAM_BOOL,			/* bool field */
	GPTOSS_PARAM_ENUM,			/* int field; the index of one of names */
	GPTOSS_PARAM_STRING,		/* const char * field (borrowed, NUL-terminated) */
	GPTOSS_PARAM_STRINGS,		/* const char *[max_count] field + int count (borrowed) */
	GPTOSS_PARAM_JSON			/* const char * field: a JSON object's text (borrowed), checked
								 * by the row's check_json */
} gptoss_param_type;

typedef struct gptoss_param
{
	const char *name;			/* JSON key; GUC gptoss.<name> */
	const char *cli_name;		/* CLI option when not name with '-' for '_', else NULL */
	gptoss_param_type type;
	size_t		offset;			/* field in gptoss_gen_params */
	size_t		aux_offset;		/* SEED, INT: bool present flag (INT: 0 = none); STRINGS: int count */
	double		min;			/* INT, FLOAT: lower bound */
	double		max;			/* INT, FLOAT: upper bound (INT: values above are clamped) */
	bool		min_exclusive;	/* FLOAT: the lower bound itself is invalid */
	const char *const *names;	/* ENUM: NULL-terminated value names */
	int			max_count;		/* STRINGS: most strings */
	int			max_len;		/* STRINGS: most bytes per string */
	const char *guc_doc;		/* description of GUC gptoss.<name> holding the default, or NULL */
	bool		sql_only;		/* a SQL session's policy, not a generation setting: no CLI option */
	int			(*check_json) (const char *text, size_t len, gptoss_error *err);	/* JSON */
} gptoss_param;

extern const gptoss_param GPTOSS_PARAMS[];
extern const int GPTOSS_N_PARAMS;

struct gptoss_gen_params;

/* The row of key (len bytes), or NULL. */
const gptoss_param *gptoss_param_find(const char *key, size_t len);

/* The row whose CLI option is opt (without "--"), or NULL. */
const gptoss_param *gptoss_param_find_cli(const char *opt);

/* Writes "a, b, ... and z" (the keys) into buf; returns buf. */
char	   *gptoss_param_key_list(char *buf, size_t size);

/*
 * Setters: check one value against its row and store it.  Each returns 0, or
 * -1 with err set (GPTOSS_ERR_INVALID, message naming the key).
 *   number: INT, FLOAT, SEED given as the text of a number ("2", "2.0", "1e3")
 *   bool:   BOOL
 *   string: STRING and ENUM set the value, STRINGS appends one (s must stay
 *           valid and be NUL-terminated at len while p is used)
 */
int			gptoss_param_set_number(struct gptoss_gen_params *p, const gptoss_param *param,
									const char *text, gptoss_error *err);
int			gptoss_param_set_bool(struct gptoss_gen_params *p, const gptoss_param *param,
								  bool value, gptoss_error *err);
int			gptoss_param_set_string(struct gptoss_gen_params *p, const gptoss_param *param,
									const char *s, size_t len, gptoss_error *err);
/* JSON: the object's JSON text (s's lifetime rule applies). */
int			gptoss_param_set_json(struct gptoss_gen_params *p, const gptoss_param *param,
								  const char *text, size_t len, gptoss_error *err);

/* The error for a value of the wrong type ("must be an integer", ...); returns -1. */
int			gptoss_param_type_error(const gptoss_param *param, gptoss_error *err);

/* Checks every field of p against the table (the engine's validator); 0 or -1. */
int			gptoss_gen_params_check(const struct gptoss_gen_params *p, gptoss_error *err);

#endif							/* GPTOSS_PARAMS_H */
