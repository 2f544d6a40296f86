/*
 * sqljson.c: gptoss_generate_json, structured output as jsonb.
 *
 * The schema argument becomes the request's response_format (OpenAI's
 * json_schema shape), so the worker constrains the answer to documents valid
 * for it (src/engine/constraint.h) and the reasoning budget defaults to half
 * of max_tokens.  The schema is compiled here first, so an unsupported
 * keyword fails in the session with 22023 naming it.  The answer is a whole
 * document by construction; it goes through jsonb_in like any jsonb input.
 * params on_error "null" works as in gptoss_generate.
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "json_schema.h"

#include "gptoss.h"

PG_FUNCTION_INFO_V1(gptoss_generate_json);

/* gptoss_generate_json(prompt text, schema jsonb, params jsonb) returns jsonb */
Datum
gptoss_generate_json(PG_FUNCTION_ARGS)
{
	text	   *prompt = PG_GETARG_TEXT_PP(0);
	Jsonb	   *schema = PG_GETARG_JSONB_P(1);
	Jsonb	   *params = PG_GETARG_JSONB_P(2);
	gptoss_gen_params p;
	gptoss_error err;
	gptoss_json_grammar *g;
	const gptoss_param *row = gptoss_param_find("response_format", strlen("response_format"));
	JsonbValue	key;
	char	   *schema_json;
	char	   *prompt_utf8;
	StringInfoData rf;
	GptossJob	job;
	GptossResponse resp;
	char	   *answer;

	gptoss_check_preloaded();
	key.type = jbvString;
	key.val.string.val = "response_format";
	key.val.string.len = strlen("response_format");
	if (JB_ROOT_IS_OBJECT(params) &&
		findJsonbValueFromContainer(&params->root, JB_FOBJECT, &key) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid gptoss parameter \"response_format\": gptoss_generate_json takes the schema as its second argument")));
	gptoss_parse_params(params, &p);

	schema_json = JsonbToCString(NULL, &schema->root, VARSIZE(schema));
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

	prompt_utf8 = pg_server_to_any(VARDATA_ANY(prompt), VARSIZE_ANY_EXHDR(prompt), PG_UTF8);
	if (prompt_utf8 == VARDATA_ANY(prompt))
		prompt_utf8 = pnstrdup(VARDATA_ANY(prompt), VARSIZE_ANY_EXHDR(prompt));
	memset(&job, 0, sizeof(job));
	job.params = p;
	if (p.on_error == GPTOSS_ON_ERROR_NULL)
	{
		int			code;
		char	   *message;

		job.prompt = gptoss_render_or_fail(prompt_utf8, NULL, 0, &p, &job.n_prompt, &code, &message);
		if (job.prompt == NULL)
		{
			gptoss_row_error_note(code, message);
			PG_RETURN_NULL();
		}
	}
	else
		job.prompt = gptoss_render(prompt_utf8, NULL, 0, &p, &job.n_prompt);
	gptoss_execute(&job, &resp);
	if (resp.row_error_code != 0)
	{
		/* on_error "null": counted for the statement's WARNING */
		gptoss_row_error_note(resp.row_error_code, resp.row_error_message);
		PG_RETURN_NULL();
	}

	answer = pg_any_to_server(resp.text.data, resp.text.len, PG_UTF8);
	if (answer == resp.text.data)
		answer = pnstrdup(resp.text.data, resp.text.len);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(answer)));
}
