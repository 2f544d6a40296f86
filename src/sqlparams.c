/*
 * sqlparams.c: the session side of the parameter table (GPTOSS_PARAMS,
 * src/engine/params.h): the GUC defaults and the params jsonb parser.
 *
 * Nothing here names a parameter: every row with a guc_doc gets a USERSET
 * GUC gptoss.<key> whose boot value is the engine's default and whose range
 * is the row's; the jsonb parser maps each JSON value to the row's setter,
 * which checks it (the engine's validator, one message style: 22023 naming
 * the key).  A JSON null keeps the default, as in the OpenAI API.
 */
#include "postgres.h"

#include <float.h>
#include <limits.h>

#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "gptoss.h"

/* Rows that can have a GUC, at most (a check hook per row index, see below). */
#define MAX_PARAM_GUCS 32

/* Storage of the GUC defaults, by row index; the row's type says which array. */
static int	guc_int[MAX_PARAM_GUCS];
static double guc_real[MAX_PARAM_GUCS];
static bool guc_bool[MAX_PARAM_GUCS];

/* Enum options of ENUM rows, built from the row's names. */
static struct config_enum_entry *guc_enum_options[MAX_PARAM_GUCS];

/* Raises 22023 with the engine's message. */
static void
raise_invalid(const gptoss_error *err)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s", err->msg)));
}

/*
 * A FLOAT GUC is checked by the row's own check (an exclusive lower bound
 * cannot be said with a GUC's min).  Check hooks get no variable name, so
 * each row index has its hook.
 */
static bool
check_real_guc(int row, double value)
{
	gptoss_gen_params p;
	gptoss_error err;
	char		text[64];

	snprintf(text, sizeof(text), "%.17g", value);
	memset(&err, 0, sizeof(err));
	gptoss_gen_params_default(&p);
	if (gptoss_param_set_number(&p, &GPTOSS_PARAMS[row], text, &err) < 0)
	{
		GUC_check_errdetail("%s", err.msg);
		return false;
	}
	return true;
}

#define REAL_HOOK(i) \
	static bool check_real_guc_##i(double *newval, void **extra, GucSource source) \
	{ return check_real_guc(i, *newval); }
REAL_HOOK(0) REAL_HOOK(1) REAL_HOOK(2) REAL_HOOK(3) REAL_HOOK(4) REAL_HOOK(5) REAL_HOOK(6)
REAL_HOOK(7) REAL_HOOK(8) REAL_HOOK(9) REAL_HOOK(10) REAL_HOOK(11) REAL_HOOK(12) REAL_HOOK(13)
REAL_HOOK(14) REAL_HOOK(15) REAL_HOOK(16) REAL_HOOK(17) REAL_HOOK(18) REAL_HOOK(19) REAL_HOOK(20)
REAL_HOOK(21) REAL_HOOK(22) REAL_HOOK(23) REAL_HOOK(24) REAL_HOOK(25) REAL_HOOK(26) REAL_HOOK(27)
REAL_HOOK(28) REAL_HOOK(29) REAL_HOOK(30) REAL_HOOK(31)

static GucRealCheckHook real_hooks[MAX_PARAM_GUCS] = {
	check_real_guc_0, check_real_guc_1, check_real_guc_2, check_real_guc_3, check_real_guc_4,
	check_real_guc_5, check_real_guc_6, check_real_guc_7, check_real_guc_8, check_real_guc_9,
	check_real_guc_10, check_real_guc_11, check_real_guc_12, check_real_guc_13, check_real_guc_14,
	check_real_guc_15, check_real_guc_16, check_real_guc_17, check_real_guc_18, check_real_guc_19,
	check_real_guc_20, check_real_guc_21, check_real_guc_22, check_real_guc_23, check_real_guc_24,
	check_real_guc_25, check_real_guc_26, check_real_guc_27, check_real_guc_28, check_real_guc_29,
	check_real_guc_30, check_real_guc_31
};

/* Defines GUC gptoss.<key> for each row with a default. */
void
gptoss_define_param_gucs(void)
{
	gptoss_gen_params defaults;

	StaticAssertStmt(lengthof(real_hooks) == MAX_PARAM_GUCS, "one check hook per row");
	if (GPTOSS_N_PARAMS > MAX_PARAM_GUCS)
		elog(ERROR, "gptoss: %d parameters, at most %d supported", GPTOSS_N_PARAMS, MAX_PARAM_GUCS);
	gptoss_gen_params_default(&defaults);
	for (int i = 0; i < GPTOSS_N_PARAMS; i++)
	{
		const gptoss_param *param = &GPTOSS_PARAMS[i];
		const char *field = (const char *) &defaults + param->offset;
		char	   *name;

		if (param->guc_doc == NULL)
			continue;
		name = psprintf("gptoss.%s", param->name);
		switch (param->type)
		{
			case GPTOSS_PARAM_INT:
				DefineCustomIntVariable(name, param->guc_doc, NULL, &guc_int[i],
										*(const int *) field, (int) param->min, (int) param->max,
										PGC_USERSET, 0, NULL, NULL, NULL);
				break;
			case GPTOSS_PARAM_FLOAT:
				DefineCustomRealVariable(name, param->guc_doc, NULL, &guc_real[i],
										 *(const float *) field, param->min, param->max,
										 PGC_USERSET, 0, real_hooks[i], NULL, NULL);
				break;
			case GPTOSS_PARAM_BOOL:
				DefineCustomBoolVariable(name, param->guc_doc, NULL, &guc_bool[i],
										 *(const bool *) field, PGC_USERSET, 0, NULL, NULL, NULL);
				break;
			case GPTOSS_PARAM_ENUM:
				{
					int			n = 0;

					while (param->names[n] != NULL)
						n++;
					guc_enum_options[i] = MemoryContextAllocZero(TopMemoryContext,
																 sizeof(struct config_enum_entry) * (n + 1));
					for (int k = 0; k < n; k++)
					{
						guc_enum_options[i][k].name = param->names[k];
						guc_enum_options[i][k].val = k;
					}
					DefineCustomEnumVariable(name, param->guc_doc, NULL, &guc_int[i],
											 *(const int *) field, guc_enum_options[i],
											 PGC_USERSET, 0, NULL, NULL, NULL);
					break;
				}
			case GPTOSS_PARAM_SEED:
			case GPTOSS_PARAM_STRING:
			case GPTOSS_PARAM_STRINGS:
			case GPTOSS_PARAM_JSON:
				elog(ERROR, "gptoss: parameter \"%s\" cannot have a GUC default", param->name);
		}
	}
}

/* The engine's defaults, overridden by the GUC defaults. */
static void
params_from_gucs(gptoss_gen_params *p)
{
	gptoss_gen_params_default(p);
	for (int i = 0; i < GPTOSS_N_PARAMS; i++)
	{
		const gptoss_param *param = &GPTOSS_PARAMS[i];
		char	   *field = (char *) p + param->offset;

		if (param->guc_doc == NULL)
			continue;
		switch (param->type)
		{
			case GPTOSS_PARAM_INT:
			case GPTOSS_PARAM_ENUM:
				*(int *) field = guc_int[i];
				break;
			case GPTOSS_PARAM_FLOAT:
				*(float *) field = (float) guc_real[i];
				break;
			case GPTOSS_PARAM_BOOL:
				*(bool *) field = guc_bool[i];
				break;
			default:
				break;
		}
	}
}

/* Converts a JSON string to palloc'ed NUL-terminated UTF-8. */
static char *
json_string_utf8(const JsonbValue *v, size_t *len)
{
	char	   *conv = pg_server_to_any(v->val.string.val, v->val.string.len, PG_UTF8);

	if (conv == v->val.string.val)
		conv = pnstrdup(v->val.string.val, v->val.string.len);
	*len = strlen(conv);
	return conv;
}

/* Applies one JSON value to its row; false when the JSON type does not fit the row. */
static bool
apply_value(gptoss_gen_params *p, const gptoss_param *param, JsonbValue *v, gptoss_error *err,
			int *rc)
{
	size_t		len;
	char	   *s;

	*rc = 0;
	switch (v->type)
	{
		case jbvNumeric:
			if (param->type != GPTOSS_PARAM_INT && param->type != GPTOSS_PARAM_FLOAT &&
				param->type != GPTOSS_PARAM_SEED)
				return false;
			s = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
			*rc = gptoss_param_set_number(p, param, s, err);
			return true;
		case jbvBool:
			if (param->type != GPTOSS_PARAM_BOOL)
				return false;
			*rc = gptoss_param_set_bool(p, param, v->val.boolean, err);
			return true;
		case jbvString:
			if (param->type != GPTOSS_PARAM_STRING && param->type != GPTOSS_PARAM_ENUM &&
				param->type != GPTOSS_PARAM_STRINGS)
				return false;
			s = json_string_utf8(v, &len);
			*rc = gptoss_param_set_string(p, param, s, len, err);
			return true;
		case jbvBinary:
			if (param->type == GPTOSS_PARAM_JSON && JsonContainerIsObject(v->val.binary.data))
			{
				/* the object's JSON text, in UTF-8 for the engine */
				s = JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
				s = pg_server_to_any(s, strlen(s), PG_UTF8);
				*rc = gptoss_param_set_json(p, param, s, strlen(s), err);
				return true;
			}
			if (param->type != GPTOSS_PARAM_STRINGS || !JsonContainerIsArray(v->val.binary.data))
				return false;
			{
				JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
				JsonbValue	elem;
				JsonbIteratorToken tok;

				while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
				{
					if (tok != WJB_ELEM)
						continue;
					if (elem.type != jbvString)
						return false;
					s = json_string_utf8(&elem, &len);
					if ((*rc = gptoss_param_set_string(p, param, s, len, err)) < 0)
						return true;
				}
				return true;
			}
		default:
			return false;
	}
}

/* Raises 22023 for a key that is not a parameter, listing the keys. */
static void
unknown_param(const char *key)
{
	char		keys[1024];

	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown gptoss parameter \"%s\"", key),
			 errhint("Valid keys are %s.", gptoss_param_key_list(keys, sizeof(keys)))));
}

/* Parses params over the GUC defaults (see gptoss.h). */
void
gptoss_parse_params(Jsonb *params, gptoss_gen_params *p)
{
	params_from_gucs(p);
	if (params != NULL)
	{
		JsonbIterator *it;
		JsonbValue	v;
		JsonbIteratorToken tok;

		if (!JB_ROOT_IS_OBJECT(params))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("gptoss params must be a JSON object")));
		it = JsonbIteratorInit(&params->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			const gptoss_param *param;
			gptoss_error err;
			int			rc;

			if (tok != WJB_KEY)
				continue;
			param = gptoss_param_find(v.val.string.val, v.val.string.len);
			if (param == NULL)
				unknown_param(pnstrdup(v.val.string.val, v.val.string.len));
			tok = JsonbIteratorNext(&it, &v, true);
			Assert(tok == WJB_VALUE);
			/* null keeps the default, as in the OpenAI API */
			if (v.type == jbvNull)
				continue;
			memset(&err, 0, sizeof(err));
			if (!apply_value(p, param, &v, &err, &rc))
				(void) gptoss_param_type_error(param, &err);
			else if (rc == 0)
				continue;
			raise_invalid(&err);
		}
	}
	/* The administrator's cap clamps (finish_reason length), it does not fail. */
	if (gptoss_max_tokens_limit > 0 && p->max_tokens > gptoss_max_tokens_limit)
		p->max_tokens = gptoss_max_tokens_limit;

	/* The whole set, as the engine will check it (rules between parameters too). */
	{
		gptoss_error err;

		memset(&err, 0, sizeof(err));
		if (gptoss_gen_params_check(p, &err) < 0)
			raise_invalid(&err);
	}
}
