/*
 * sqlfuncs.c: the generation and tokenizer SQL functions.
 *
 * Each function validates its input here, in the session (bad params fail
 * with 22023 before anything reaches a worker), converts text to UTF-8,
 * tokenizes and renders the prompt (prompt.c), runs the job through a
 * worker (call.c) and converts the answer back to the server encoding.
 * gptoss_tokenize and gptoss_detokenize never reach a worker.  params is a
 * jsonb object parsed by the parameter table (sqlparams.c): every key falls
 * back to its GUC default, and a JSON null means "use the default".
 */
#include "postgres.h"

#include <float.h>
#include <math.h>
#include <limits.h>
#include <time.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/float.h"
#include "utils/numeric.h"

#include "harmony.h"
#include "params.h"

#include "gptoss.h"
#include "pipeline.h"

PG_FUNCTION_INFO_V1(gptoss_generate);
PG_FUNCTION_INFO_V1(gptoss_generate_many);
PG_FUNCTION_INFO_V1(gptoss_generate_stream);
PG_FUNCTION_INFO_V1(gptoss_chat);
PG_FUNCTION_INFO_V1(gptoss_classify);
PG_FUNCTION_INFO_V1(gptoss_classify_scores);
PG_FUNCTION_INFO_V1(gptoss_tokenize);
PG_FUNCTION_INFO_V1(gptoss_detokenize);

/* Raises 22023 naming the key. */
static void
invalid_param(const char *key, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid gptoss parameter \"%s\": %s", key, what)));
}

/* Converts server-encoded bytes to a palloc'ed NUL-terminated UTF-8 string. */
static char *
to_utf8(const char *s, int len)
{
	char	   *conv = pg_server_to_any(s, len, PG_UTF8);

	if (conv == s)
		return pnstrdup(s, len);
	return conv;
}

/*
 * Converts UTF-8 text from the worker to a server-encoded text datum.  NUL is
 * valid UTF-8 but cannot be stored in text: it becomes U+FFFD.
 */
static text *
from_utf8(const char *s, int len)
{
	StringInfoData clean;
	char	   *conv;
	text	   *result;

	if (memchr(s, '\0', len) != NULL)
	{
		initStringInfo(&clean);
		for (int i = 0; i < len; i++)
		{
			if (s[i] == '\0')
				appendStringInfoString(&clean, "\xEF\xBF\xBD");
			else
				appendStringInfoChar(&clean, s[i]);
		}
		s = clean.data;
		len = clean.len;
	}
	conv = pg_any_to_server(s, len, PG_UTF8);
	result = cstring_to_text_with_len(conv, conv == s ? len : (int) strlen(conv));
	return result;
}

/* Text of a JSON string value as a UTF-8 C string. */
static char *
json_string_utf8(const JsonbValue *v)
{
	return to_utf8(v->val.string.val, v->val.string.len);
}

/*
 * A job over the rendered prompt (or messages) with parsed params; the
 * prompt ids are palloc'ed.  With on_error "null", a prompt that cannot be
 * rendered for this row returns false with its error in *sqlerrcode and
 * *message; otherwise that raises.
 */
static bool
build_job(GptossJob *job, const gptoss_gen_params *params, const char *prompt,
		  const gptoss_chat_message *messages, int n_messages, int *sqlerrcode, char **message)
{
	memset(job, 0, sizeof(*job));
	job->params = *params;
	if (params->on_error == GPTOSS_ON_ERROR_NULL)
		job->prompt = gptoss_render_or_fail(prompt, messages, n_messages, params, &job->n_prompt,
											sqlerrcode, message);
	else
		job->prompt = gptoss_render(prompt, messages, n_messages, params, &job->n_prompt);
	return job->prompt != NULL;
}

/* Text of one chat message's content: a string, null, or an array of text parts. */
static char *
message_content(JsonbValue *v, int index)
{
	StringInfoData buf;
	JsonbIterator *it;
	JsonbValue	part;
	JsonbIteratorToken tok;
	int			n = 0;

	if (v->type == jbvString)
		return json_string_utf8(v);
	if (v->type == jbvNull)
		return pstrdup("");
	if (v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid gptoss messages[%d].content: must be a string or an array of text parts", index)));

	initStringInfo(&buf);
	it = JsonbIteratorInit(v->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &part, true)) != WJB_DONE)
	{
		JsonbValue	type_val;
		JsonbValue	text_val;

		if (tok != WJB_ELEM)
			continue;
		if (part.type != jbvBinary || !JsonContainerIsObject(part.val.binary.data) ||
			getKeyJsonValueFromContainer(part.val.binary.data, "type", 4, &type_val) == NULL ||
			type_val.type != jbvString ||
			type_val.val.string.len != 4 || memcmp(type_val.val.string.val, "text", 4) != 0 ||
			getKeyJsonValueFromContainer(part.val.binary.data, "text", 4, &text_val) == NULL ||
			text_val.type != jbvString)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid gptoss messages[%d].content[%d]: must be {\"type\": \"text\", \"text\": \"...\"}",
							index, n)));
		appendStringInfoString(&buf, json_string_utf8(&text_val));
		n++;
	}
	return buf.data;
}

/* Parses OpenAI chat messages. */
static gptoss_chat_message *
parse_messages(Jsonb *messages, int *n_out)
{
	static const char *const roles[] = {"system", "developer", "user", "assistant"};
	gptoss_chat_message *out;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			n = 0;
	int			count;

	if (!JB_ROOT_IS_ARRAY(messages) || JB_ROOT_IS_SCALAR(messages))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("gptoss messages must be a JSON array of message objects")));
	count = JB_ROOT_COUNT(messages);
	if (count == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("gptoss messages must not be empty")));

	out = palloc0(sizeof(gptoss_chat_message) * count);
	it = JsonbIteratorInit(&messages->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		JsonbValue	role;
		JsonbValue	content;
		char	   *r;
		bool		known = false;

		if (tok != WJB_ELEM)
			continue;
		if (v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid gptoss messages[%d]: must be an object with role and content", n)));
		if (getKeyJsonValueFromContainer(v.val.binary.data, "role", 4, &role) == NULL ||
			role.type != jbvString)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid gptoss messages[%d].role: must be a string", n)));
		r = pnstrdup(role.val.string.val, role.val.string.len);
		for (int k = 0; k < lengthof(roles); k++)
			if (strcmp(r, roles[k]) == 0)
				known = true;
		if (!known)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid gptoss messages[%d].role \"%s\": must be system, developer, user or assistant",
							n, r)));
		if (getKeyJsonValueFromContainer(v.val.binary.data, "content", 7, &content) == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid gptoss messages[%d]: content is missing", n)));
		out[n].role = r;
		out[n].content = message_content(&content, n);
		n++;
	}
	*n_out = n;
	return out;
}

/* Raises 22023 when params ask for log-probabilities outside gptoss_chat. */
static void
reject_logprobs(const gptoss_gen_params *p)
{
	if (p->logprobs || p->top_logprobs > 0)
		invalid_param(p->logprobs ? "logprobs" : "top_logprobs",
					  "only gptoss_chat returns log-probabilities");
}

/* Builds the job of one prompt with parsed params (see gptoss.h). */
bool
gptoss_prompt_job(GptossJob *job, const gptoss_gen_params *params, text *prompt,
				  int *sqlerrcode, char **message)
{
	reject_logprobs(params);
	return build_job(job, params, to_utf8(VARDATA_ANY(prompt), VARSIZE_ANY_EXHDR(prompt)), NULL, 0,
					 sqlerrcode, message);
}

/* Builds the job of gptoss_generate(prompt, params) (see gptoss.h). */
bool
gptoss_generate_job(Datum prompt, Datum params, GptossJob *job, int *sqlerrcode, char **message)
{
	gptoss_gen_params p;

	gptoss_check_preloaded();
	gptoss_parse_params(DatumGetJsonbP(params), &p);
	return gptoss_prompt_job(job, &p, DatumGetTextPP(prompt), sqlerrcode, message);
}

/* The text datum gptoss_generate returns for resp. */
Datum
gptoss_generate_result(const GptossResponse *resp)
{
	return PointerGetDatum(from_utf8(resp->text.data, resp->text.len));
}

/* Runs job into resp; false when it failed for this row (see gptoss.h). */
bool
gptoss_run_job(GptossJob *job, GptossResponse *resp)
{
	gptoss_execute(job, resp);
	if (resp->row_error_code == 0)
		return true;
	gptoss_row_error_note(resp->row_error_code, resp->row_error_message);
	return false;
}

/* gptoss_generate(prompt text, params jsonb) returns text */
Datum
gptoss_generate(PG_FUNCTION_ARGS)
{
	GptossJob	job;
	GptossResponse resp;
	int			code;
	char	   *message;

	if (!gptoss_generate_job(PG_GETARG_DATUM(0), PG_GETARG_DATUM(1), &job, &code, &message))
	{
		gptoss_row_error_note(code, message);
		PG_RETURN_NULL();
	}
	if (!gptoss_run_job(&job, &resp))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(gptoss_generate_result(&resp));
}

/*
 * gptoss_generate_many(prompts text[], params jsonb) returns text[]: the
 * answers of all prompts, in order (NULL for a NULL prompt, and with
 * on_error "null" for a prompt whose generation failed).
 *
 * The prompts go through a pipeline (pipeline.h) of gptoss.batch_window
 * requests (its boot value when the GUC is 0), so one call fills the
 * worker's batch.  An error or a cancel ends the statement; the open calls
 * end with their segments.
 */
Datum
gptoss_generate_many(PG_FUNCTION_ARGS)
{
	ArrayType  *prompts = PG_GETARG_ARRAYTYPE_P(0);
	gptoss_gen_params params;
	Datum	   *items;
	bool	   *nulls;
	int			n;
	Datum	   *answers;
	bool	   *answer_nulls;
	GptossPipeline *pipeline;
	int			collected = 0;
	int			dims[1];
	int			lbs[1] = {1};

	gptoss_check_preloaded();
	if (ARR_NDIM(prompts) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("gptoss_generate_many expects a one-dimensional array of prompts")));
	gptoss_parse_params(PG_GETARG_JSONB_P(1), &params);
	reject_logprobs(&params);
	deconstruct_array(prompts, TEXTOID, -1, false, TYPALIGN_INT, &items, &nulls, &n);
	if (n == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(TEXTOID));

	answers = palloc0(sizeof(Datum) * n);
	answer_nulls = palloc(sizeof(bool) * n);
	memcpy(answer_nulls, nulls, sizeof(bool) * n);
	pipeline = gptoss_pipeline_create(gptoss_batch_window > 0 ? gptoss_batch_window : gptoss_default_window(), 0);
	for (int i = 0; i <= n; i++)
	{
		/* Collect in order while the window is full, and everything at the end. */
		while (gptoss_pipeline_pending(pipeline) > 0 &&
			   (i == n || !gptoss_pipeline_has_room(pipeline)))
		{
			GptossPipelineResult r;

			while (nulls[collected])
				collected++;
			gptoss_pipeline_next(pipeline, &r);
			if (r.failed)
			{
				gptoss_row_error_note(r.sqlerrcode, r.message);
				answer_nulls[collected++] = true;
			}
			else
				answers[collected++] = gptoss_generate_result(&r.resp);
			gptoss_pipeline_result_free(&r);
		}
		if (i < n && !nulls[i])
		{
			GptossJob	job;
			text	   *t = DatumGetTextPP(items[i]);
			int			code;
			char	   *message;

			if (build_job(&job, &params, to_utf8(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)), NULL, 0,
						  &code, &message))
			{
				gptoss_pipeline_submit(pipeline, &job);
				pfree(unconstify(int32 *, job.prompt));
			}
			else
				gptoss_pipeline_submit_failed(pipeline, &params, code, message);
		}
	}
	gptoss_pipeline_free(pipeline);
	dims[0] = n;
	PG_RETURN_ARRAYTYPE_P(construct_md_array(answers, answer_nulls, 1, dims, lbs,
											 TEXTOID, -1, false, TYPALIGN_INT));
}

/* State of a gptoss_generate_stream scan. */
typedef struct StreamState
{
	GptossCall *call;			/* NULL once closed */
	GptossResponse resp;		/* resp.text_taken: bytes already returned */
} StreamState;

/* Closes the call of a stream that ends early (LIMIT, cursor closed). */
static void
stream_shutdown(Datum arg)
{
	StreamState *st = (StreamState *) DatumGetPointer(arg);

	if (st->call != NULL)
	{
		gptoss_call_end(st->call);
		st->call = NULL;
	}
}

/*
 * gptoss_generate_stream(prompt text, params jsonb) returns setof text: the
 * answer in pieces as the worker produces them.  Called in the select list
 * through a cursor (or by any client reading rows as they come), the pieces
 * arrive while the model generates.  Pieces end on character boundaries.  In
 * chat mode the answer is the last final message; when the model starts a
 * new one, its text follows what was already streamed.
 */
Datum
gptoss_generate_stream(PG_FUNCTION_ARGS)
{
	FuncCallContext *funcctx;
	StreamState *st;

	if (SRF_IS_FIRSTCALL())
	{
		ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
		MemoryContext old;
		GptossJob	job;
		int			code;
		char	   *message;

		gptoss_check_preloaded();
		funcctx = SRF_FIRSTCALL_INIT();
		old = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		st = palloc0(sizeof(StreamState));
		funcctx->user_fctx = st;
		gptoss_response_init(&st->resp);
		if (!gptoss_generate_job(PG_GETARG_DATUM(0), PG_GETARG_DATUM(1), &job, &code, &message))
		{
			/* on_error "null": no pieces */
			gptoss_row_error_note(code, message);
			MemoryContextSwitchTo(old);
			SRF_RETURN_DONE(funcctx);
		}
		job.stream = true;
		st->resp.keep_row_error = job.params.on_error == GPTOSS_ON_ERROR_NULL;
		st->call = gptoss_call_start(&job);
		if (rsinfo != NULL && IsA(rsinfo, ReturnSetInfo) && rsinfo->econtext != NULL)
			RegisterExprContextCallback(rsinfo->econtext, stream_shutdown, PointerGetDatum(st));
		MemoryContextSwitchTo(old);
	}
	funcctx = SRF_PERCALL_SETUP();
	st = funcctx->user_fctx;

	while (st->call != NULL)
	{
		MemoryContext old;
		GptossResponse *resp = &st->resp;

		if (resp->text.len > resp->text_taken)
		{
			text	   *piece = from_utf8(resp->text.data + resp->text_taken,
										  resp->text.len - resp->text_taken);

			resp->text_taken = resp->text.len;
			SRF_RETURN_NEXT(funcctx, PointerGetDatum(piece));
		}
		if (resp->finished)
		{
			/* on_error "null": the pieces already returned stay, nothing follows */
			if (resp->row_error_code != 0)
				gptoss_row_error_note(resp->row_error_code, resp->row_error_message);
			break;
		}
		old = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		(void) gptoss_call_next(st->call, resp);
		MemoryContextSwitchTo(old);
	}
	stream_shutdown(PointerGetDatum(st));
	SRF_RETURN_DONE(funcctx);
}

/* Adds s as a JSON string value (from UTF-8) to buf. */
static void
append_json_text(StringInfo buf, const char *s, int len)
{
	text	   *t = from_utf8(s, len);

	escape_json(buf, text_to_cstring(t));
}

/*
 * Adds "token" (the token's bytes as text, invalid UTF-8 made U+FFFD) and
 * "bytes" (its UTF-8 bytes) of token id to buf.
 */
static void
append_token_json(StringInfo buf, int32 id)
{
	const gptoss_tokenizer *tok = gptoss_session_tokenizer();
	gptoss_utf8_text t;
	gptoss_error err;
	size_t		n = 0;
	const char *bytes = gptoss_tokenizer_token_bytes(tok, id, &n);

	memset(&t, 0, sizeof(t));
	memset(&err, 0, sizeof(err));
	if (bytes == NULL)
		n = 0;
	if ((n > 0 && gptoss_utf8_text_push(&t, bytes, n, &err) < 0) ||
		gptoss_utf8_text_flush(&t, &err) < 0)
	{
		gptoss_utf8_text_free(&t);
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("%s", err.msg)));
	}
	appendStringInfoString(buf, "\"token\": ");
	append_json_text(buf, t.text.data ? t.text.data : "", (int) t.text.len);
	gptoss_utf8_text_free(&t);
	appendStringInfoString(buf, ", \"bytes\": [");
	for (size_t i = 0; i < n; i++)
		appendStringInfo(buf, "%s%d", i ? ", " : "", (int) (unsigned char) bytes[i]);
	appendStringInfoChar(buf, ']');
}

/* Adds OpenAI's logprobs object ({"content": [...]}) of the response's text tokens to buf. */
static void
append_logprobs_json(StringInfo buf, const GptossResponse *resp)
{
	const GptossLogprobFrame *frames = (const GptossLogprobFrame *) resp->logprobs.data;

	appendStringInfoString(buf, "{\"content\": [");
	for (int i = 0; i < resp->n_logprobs; i++)
	{
		GptossLogprobFrame f;

		memcpy(&f, &frames[i], sizeof(f));
		appendStringInfoString(buf, i ? ", {" : "{");
		append_token_json(buf, f.token);
		appendStringInfo(buf, ", \"logprob\": %s, \"top_logprobs\": [",
						 float8out_internal((double) f.lp.logprob));
		for (int k = 0; k < f.lp.n_top; k++)
		{
			appendStringInfoString(buf, k ? ", {" : "{");
			append_token_json(buf, f.lp.top_ids[k]);
			appendStringInfo(buf, ", \"logprob\": %s}", float8out_internal((double) f.lp.top_logprobs[k]));
		}
		appendStringInfoString(buf, "]}");
	}
	appendStringInfoString(buf, "]}");
}

/* Builds the job of gptoss_chat(messages, params) (see gptoss.h). */
bool
gptoss_chat_job(Datum messages, Datum params, GptossJob *job, int *sqlerrcode, char **message)
{
	gptoss_gen_params p;
	gptoss_chat_message *msgs;
	int			n_msgs;

	gptoss_check_preloaded();
	gptoss_parse_params(DatumGetJsonbP(params), &p);
	if (p.raw)
		invalid_param("raw", "gptoss_chat always uses the chat format; use gptoss_generate for raw text");
	msgs = parse_messages(DatumGetJsonbP(messages), &n_msgs);
	return build_job(job, &p, NULL, msgs, n_msgs, sqlerrcode, message);
}

/* The chat.completion jsonb datum gptoss_chat returns for resp (params of its job). */
Datum
gptoss_chat_result(const gptoss_gen_params *params, const GptossResponse *resp)
{
	StringInfoData buf;
	uint8		rnd[12];

	if (!pg_strong_random(rnd, sizeof(rnd)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random completion id")));

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"id\": \"chatcmpl-");
	for (int i = 0; i < (int) sizeof(rnd); i++)
		appendStringInfo(&buf, "%02x", rnd[i]);
	appendStringInfo(&buf, "\", \"object\": \"chat.completion\", \"created\": %lld, \"model\": ",
					 (long long) time(NULL));
	escape_json(&buf, gptoss_model_name());
	appendStringInfoString(&buf, ", \"choices\": [{\"index\": 0, \"message\": {\"role\": \"assistant\", \"content\": ");
	append_json_text(&buf, resp->text.data, resp->text.len);
	if (params->include_reasoning)
	{
		appendStringInfoString(&buf, ", \"reasoning_content\": ");
		append_json_text(&buf, resp->reasoning.data, resp->reasoning.len);
	}
	appendStringInfo(&buf, "}, \"finish_reason\": \"%s\"",
					 gptoss_finish_reason_name(resp->finish_reason));
	if (params->logprobs)
	{
		appendStringInfoString(&buf, ", \"logprobs\": ");
		append_logprobs_json(&buf, resp);
	}
	appendStringInfoString(&buf, "}], ");
	appendStringInfo(&buf, "\"usage\": {\"prompt_tokens\": %d, \"completion_tokens\": %d, \"total_tokens\": %d, \"queue_steps\": %d}}",
					 resp->prompt_tokens, resp->completion_tokens,
					 resp->prompt_tokens + resp->completion_tokens, resp->queue_steps);
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}

/* gptoss_chat(messages jsonb, params jsonb) returns jsonb (an OpenAI chat.completion) */
Datum
gptoss_chat(PG_FUNCTION_ARGS)
{
	GptossJob	job;
	GptossResponse resp;

	int			code;
	char	   *message;

	if (!gptoss_chat_job(PG_GETARG_DATUM(0), PG_GETARG_DATUM(1), &job, &code, &message))
	{
		gptoss_row_error_note(code, message);
		PG_RETURN_NULL();
	}
	if (!gptoss_run_job(&job, &resp))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(gptoss_chat_result(&job.params, &resp));
}

/* Keys gptoss_classify takes: what shapes the prompt, the prefix cache, and on_error. */
static const char *const classify_keys[] = {"instructions", "reasoning_effort", "raw", "prefix_caching", "on_error"};

/* Why gptoss_classify takes no other key (a key not listed: not used when scoring labels). */
static const struct
{
	const char *key;
	const char *why;
}			classify_unused[] = {
	{"max_tokens", "nothing is generated, each label is scored as the whole answer"},
	{"min_tokens", "nothing is generated, each label is scored as the whole answer"},
	{"stop", "nothing is generated, each label is scored as the whole answer"},
	{"ignore_eos", "nothing is generated, each label is scored as the whole answer"},
	{"max_reasoning_tokens", "the answer starts at once, without reasoning"},
	{"include_reasoning", "the answer starts at once, without reasoning"},
	{"temperature", "labels are ranked by their probability, not sampled"},
	{"top_p", "labels are ranked by their probability, not sampled"},
	{"top_k", "labels are ranked by their probability, not sampled"},
	{"seed", "labels are ranked by their probability, not sampled"},
	{"response_format", "the labels are the only answers (gptoss_generate_json answers with a document)"},
	{"logprobs", "gptoss_classify_scores returns the labels' probabilities"},
	{"top_logprobs", "gptoss_classify_scores returns the labels' probabilities"},
};

/* Raises 22023 for params keys that only make sense when generating, saying why. */
static void
check_classify_keys(Jsonb *params, const char *function)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (!JB_ROOT_IS_OBJECT(params))
		return;					/* gptoss_parse_params says why */
	it = JsonbIteratorInit(&params->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *key;
		bool		taken = false;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(v.val.string.val, v.val.string.len);
		for (int i = 0; i < lengthof(classify_keys); i++)
			taken |= strcmp(key, classify_keys[i]) == 0;
		if (!taken && gptoss_param_find(v.val.string.val, v.val.string.len) != NULL)
		{
			const char *why = "not used when scoring labels";

			for (int i = 0; i < lengthof(classify_unused); i++)
				if (strcmp(key, classify_unused[i].key) == 0)
					why = classify_unused[i].why;
			invalid_param(key, psprintf("not used by %s: %s", function, why));
		}
	}
}

/*
 * Runs the score job of gptoss_classify(input, labels, params): the input
 * rendered like a generate prompt and, in harmony mode, followed by
 * <|channel|>final<|message|> (the start of the answer, after
 * <|start|>assistant); each label's tokens followed by <|return|>.  Fills the
 * labels (server encoding) and their probabilities; returns the index of the
 * most probable label (the first on ties), or -1 when the input failed for
 * this row under on_error "null" (counted for the statement's WARNING).
 */
static int
run_classify(FunctionCallInfo fcinfo, const char *function, Datum **labels_out, double **probs_out,
			 int *n_out)
{
	text	   *input = PG_GETARG_TEXT_PP(0);
	ArrayType  *labels = PG_GETARG_ARRAYTYPE_P(1);
	Jsonb	   *params = PG_GETARG_JSONB_P(2);
	gptoss_gen_params p;
	GptossJob	job;
	GptossResponse resp;
	Datum	   *items;
	bool	   *nulls;
	char	  **utf8;
	int			n;
	int32	   *lens;
	StringInfoData ids;
	int32	   *prompt;
	int			n_prompt;
	double	   *probs;
	int			code;
	char	   *message;

	gptoss_check_preloaded();
	if (ARR_NDIM(labels) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s expects a one-dimensional array of labels", function)));
	check_classify_keys(params, function);
	gptoss_parse_params(params, &p);
	deconstruct_array(labels, TEXTOID, -1, false, TYPALIGN_INT, &items, &nulls, &n);
	if (n == 0)
		invalid_param("labels", "at least one label is needed");
	utf8 = palloc(sizeof(char *) * n);
	lens = palloc(sizeof(int32) * n);
	initStringInfo(&ids);
	for (int i = 0; i < n; i++)
	{
		text	   *t;
		int32	   *label_ids = NULL;
		int32		end_of_answer = GPTOSS_TOK_RETURN;
		int			m;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("gptoss label %d is NULL", i + 1)));
		t = DatumGetTextPP(items[i]);
		utf8[i] = to_utf8(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
		if (utf8[i][0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid gptoss labels: label %d is empty", i + 1)));
		for (int k = 0; k < i; k++)
			if (strcmp(utf8[i], utf8[k]) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid gptoss labels: \"%s\" appears twice", text_to_cstring(t))));
		m = gptoss_encode_text(utf8[i], strlen(utf8[i]), &label_ids);
		appendBinaryStringInfo(&ids, (const char *) label_ids, sizeof(int32) * m);
		free(label_ids);
		appendBinaryStringInfo(&ids, (const char *) &end_of_answer, sizeof(int32));
		lens[i] = m + 1;
	}

	if (!build_job(&job, &p, to_utf8(VARDATA_ANY(input), VARSIZE_ANY_EXHDR(input)), NULL, 0, &code, &message))
	{
		gptoss_row_error_note(code, message);
		return -1;
	}
	prompt = (int32 *) job.prompt;	/* palloc'ed by build_job: grown below */
	n_prompt = job.n_prompt;
	if (!p.raw)
	{
		int32	   *channel = NULL;
		int			m = gptoss_encode_text("final", 5, &channel);

		prompt = repalloc(prompt, sizeof(int32) * (n_prompt + m + 2));
		prompt[n_prompt++] = GPTOSS_TOK_CHANNEL;
		memcpy(prompt + n_prompt, channel, sizeof(int32) * m);
		n_prompt += m;
		prompt[n_prompt++] = GPTOSS_TOK_MESSAGE;
		free(channel);
	}
	job.prompt = prompt;
	job.n_prompt = n_prompt;
	job.n_labels = n;
	job.label_lens = lens;
	job.label_ids = (const int32 *) ids.data;
	if (!gptoss_run_job(&job, &resp))
		return -1;
	if (resp.n_scores != n)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("gptoss worker returned %d label scores for %d labels", resp.n_scores, n)));
	probs = palloc(sizeof(double) * n);
	*labels_out = items;
	*probs_out = probs;
	*n_out = n;
	return gptoss_label_probs(resp.scores, n, probs);
}

/* gptoss_classify(input text, labels text[], params jsonb) returns text: the most probable label */
Datum
gptoss_classify(PG_FUNCTION_ARGS)
{
	Datum	   *labels;
	double	   *probs;
	int			n;
	int			best = run_classify(fcinfo, "gptoss_classify", &labels, &probs, &n);

	if (best < 0)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(labels[best]);
}

/* gptoss_classify_scores(input text, labels text[], params jsonb) returns jsonb {"label": probability} */
Datum
gptoss_classify_scores(PG_FUNCTION_ARGS)
{
	Datum	   *labels;
	double	   *probs;
	int			n;
	StringInfoData buf;

	if (run_classify(fcinfo, "gptoss_classify_scores", &labels, &probs, &n) < 0)
		PG_RETURN_NULL();
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoString(&buf, ", ");
		escape_json(&buf, TextDatumGetCString(labels[i]));
		appendStringInfo(&buf, ": %s", float8out_internal(probs[i]));
	}
	appendStringInfoChar(&buf, '}');
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/*
 * An int4[] of n ids, built straight from the engine's buffer (a huge text
 * gives hundreds of megabytes of ids: no Datum array in between).
 */
static ArrayType *
ids_array(const int32 *ids, int n)
{
	Size		nbytes = ARR_OVERHEAD_NONULLS(1) + (Size) n * sizeof(int32);
	ArrayType  *result;

	if (n == 0)
		return construct_empty_array(INT4OID);
	if (!AllocSizeIsValid(nbytes))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("gptoss_tokenize result of %d tokens exceeds the maximum array size", n)));
	result = palloc(nbytes);
	SET_VARSIZE(result, nbytes);
	result->ndim = 1;
	result->dataoffset = 0;
	result->elemtype = INT4OID;
	ARR_DIMS(result)[0] = n;
	ARR_LBOUND(result)[0] = 1;
	memcpy(ARR_DATA_PTR(result), ids, (Size) n * sizeof(int32));
	return result;
}

/*
 * gptoss_tokenize(text) returns int[]: o200k_harmony ids, special-token text
 * is plain text.  Runs in the session; a long text stays cancellable.
 */
Datum
gptoss_tokenize(PG_FUNCTION_ARGS)
{
	text	   *t = PG_GETARG_TEXT_PP(0);
	int			len = VARSIZE_ANY_EXHDR(t);
	const char *utf8 = pg_server_to_any(VARDATA_ANY(t), len, PG_UTF8);
	int32	   *ids = NULL;
	int			n;
	ArrayType  *result = NULL;

	gptoss_check_preloaded();
	if (utf8 != VARDATA_ANY(t))
		len = strlen(utf8);
	n = gptoss_encode_text(utf8, len, &ids);
	PG_TRY();
	{
		result = ids_array(ids, n);
	}
	PG_FINALLY();
	{
		free(ids);
	}
	PG_END_TRY();
	PG_RETURN_ARRAYTYPE_P(result);
}

/*
 * gptoss_detokenize(int[]) returns text; 22023 for ids that are not tokens.
 * Token bytes may split characters: the result is made valid UTF-8 (U+FFFD).
 */
Datum
gptoss_detokenize(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	const gptoss_tokenizer *tok;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int32	   *ids;
	char	   *bytes;
	size_t		nbytes;
	gptoss_utf8_text out;
	gptoss_error err;
	text	   *result = NULL;

	gptoss_check_preloaded();
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("gptoss token ids must be a one-dimensional array")));
	tok = gptoss_session_tokenizer();
	deconstruct_array(arr, INT4OID, sizeof(int32), true, TYPALIGN_INT, &elems, &nulls, &n);
	ids = palloc(sizeof(int32) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("gptoss token ids must not contain nulls")));
		ids[i] = DatumGetInt32(elems[i]);
		if (!gptoss_tokenizer_is_valid(tok, ids[i]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("token id %d at position %d is not a token of the tokenizer (vocabulary of %d ids)",
							ids[i], i + 1, gptoss_tokenizer_vocab_size(tok))));
	}

	memset(&err, 0, sizeof(err));
	bytes = gptoss_tokenizer_decode(tok, ids, n, false, &nbytes, &err);
	if (bytes == NULL)
		ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("%s", err.msg)));
	memset(&out, 0, sizeof(out));
	PG_TRY();
	{
		if (gptoss_utf8_text_push(&out, bytes, nbytes, &err) < 0 ||
			gptoss_utf8_text_flush(&out, &err) < 0)
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("%s", err.msg)));
		result = from_utf8(out.text.data ? out.text.data : "", (int) out.text.len);
	}
	PG_FINALLY();
	{
		free(bytes);
		gptoss_utf8_text_free(&out);
	}
	PG_END_TRY();
	PG_RETURN_TEXT_P(result);
}
