/*
 * sqljson.c: gptoss_generate_json, structured output as jsonb.
 *
 * The schema argument becomes the request's response_format (OpenAI's
 * json_schema shape), so the worker constrains the answer to documents valid
 * for it (src/engine/constraint.h) and the reasoning budget defaults to half
 * of max_tokens.  The schema is compiled here first, so an unsupported
 * keyword fails in the session with 22023 naming it.  The answer is a whole
 * document by construction; it goes through jsonb_in like any jsonb input.
 * params on_error "null" works as in gptoss_generate; the GptossBatch node
 * runs these calls many rows at a time through the job and result functions
 * below.
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "json_schema.h"

#include "gptoss.h"

PG_FUNCTION_INFO_V1(gptoss_generate_json);

/* Builds the job of gptoss_generate_json(prompt, schema, params) (see gptoss.h). */
bool
gptoss_generate_json_job(Datum prompt, Datum schema, Datum params, GptossJob *job,
						 int *sqlerrcode, char **message)
{
	Jsonb	   *schema_jb = DatumGetJsonbP(schema);
	Jsonb	   *params_jb = DatumGetJsonbP(params);
	gptoss_gen_params p;
	gptoss_error err;
	gptoss_json_grammar *g;
	const gptoss_param *row = gptoss_param_find("response_format", strlen("response_format"));
	JsonbValue	key;
	char	   *schema_json;
	StringInfoData rf;

	gptoss_check_preloaded();
	key.type = jbvString;
	key.val.string.val = "response_format";
	key.val.string.len = strlen("response_format");
	if (JB_ROOT_IS_OBJECT(params_jb) &&
		findJsonbValueFromContainer(&params_jb->root, JB_FOBJECT, &key) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid gptoss parameter \"response_format\": gptoss_generate_json takes the schema as its second argument")));
	gptoss_parse_params(params_jb, &p);

	schema_json = JsonbToCString(NULL, &schema_jb->root, VARSIZE(schema_jb));
	schema_json = pg_server_to_any(schema_json, strlen(schema_json), PG_UTF8);
	memset(&err, 0, sizeof(err));
	g = gptoss_json_schema_compile(schema_json, strlen(schema_json), &err);
	if (g == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid gptoss schema: %s", err.msg)));
	gptoss_json_grammar_free(g);

	initStringInfo(&rf);
	appendStringInfo(&rf, "{\"type\": \"json_schema\", \"json_schema\": {\"name\": \"output\", \"strict\": true, \"schema\": %s}}",
					 schema_json);
	if (row == NULL || gptoss_param_set_json(&p, row, rf.data, rf.len, &err) < 0 ||
		gptoss_gen_params_check(&p, &err) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s", err.msg[0] ? err.msg : "gptoss: no response_format parameter")));
	return gptoss_prompt_job(job, &p, DatumGetTextPP(prompt), sqlerrcode, message);
}

/* The jsonb datum gptoss_generate_json returns for resp. */
Datum
gptoss_generate_json_result(const GptossResponse *resp)
{
	char	   *answer = pg_any_to_server(resp->text.data, resp->text.len, PG_UTF8);

	if (answer == resp->text.data)
		answer = pnstrdup(resp->text.data, resp->text.len);
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(answer));
}

/* gptoss_generate_json(prompt text, schema jsonb, params jsonb) returns jsonb */
Datum
gptoss_generate_json(PG_FUNCTION_ARGS)
{
	GptossJob	job;
	GptossResponse resp;
	int			code;
	char	   *message;

	if (!gptoss_generate_json_job(PG_GETARG_DATUM(0), PG_GETARG_DATUM(1), PG_GETARG_DATUM(2), &job,
								  &code, &message))
	{
		gptoss_row_error_note(code, message);
		PG_RETURN_NULL();
	}
	if (!gptoss_run_job(&job, &resp))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(gptoss_generate_json_result(&resp));
}
