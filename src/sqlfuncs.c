/*
 * sqlfuncs.c: the generation and tokenizer SQL functions.
 *
 * Each function validates its input here, in the backend (so bad params fail
 * with 22023 before anything reaches the worker), converts text to UTF-8,
 * runs the request through the worker (request.c) and converts the answer
 * back to the server encoding.  params is a jsonb object; every key falls
 * back to the USERSET GUC of the same name (gptoss.max_tokens, ...), and a
 * JSON null means "use the default", as in the OpenAI API.
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
#include "utils/numeric.h"

#include "engine.h"

#include "gptoss.h"

/* Longest accepted list of stop strings. */
#define MAX_STOP_STRINGS 64

PG_FUNCTION_INFO_V1(gptoss_generate);
PG_FUNCTION_INFO_V1(gptoss_generate_many);
PG_FUNCTION_INFO_V1(gptoss_generate_stream);
PG_FUNCTION_INFO_V1(gptoss_chat);
PG_FUNCTION_INFO_V1(gptoss_tokenize);
PG_FUNCTION_INFO_V1(gptoss_detokenize);

/* Parsed params beyond the flat GptossParams: strings, in UTF-8. */
typedef struct ParsedParams
{
	GptossParams p;
	char	   *instructions;
	char	  **stop;
	int			n_stop;
} ParsedParams;

/* Raises 22023 naming the key. */
static void
invalid_param(const char *key, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid gptoss parameter \"%s\": %s", key, what)));
}

/* The params keys of design.md section 4. */
static const char *const param_keys[] = {
	"max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
	"reasoning_effort", "instructions", "raw", "ignore_eos", "include_reasoning"
};

/* True for a known params key. */
static bool
is_param_key(const char *key)
{
	for (int i = 0; i < lengthof(param_keys); i++)
		if (strcmp(key, param_keys[i]) == 0)
			return true;
	return false;
}

/* Raises 22023 for a key that is not a params key. */
static void
unknown_param(const char *key)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown gptoss parameter \"%s\"", key),
			 errhint("Valid keys are max_tokens, temperature, top_p, top_k, seed, stop, reasoning_effort, instructions, raw, ignore_eos and include_reasoning.")));
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
 * Parses a JSON number that must be an integer; saturates at the int64 range
 * when saturate is set, else fails on overflow.  Returns false when it is not
 * an integer (or overflows without saturate).
 */
static bool
json_integer(const JsonbValue *v, bool saturate, int64 *out)
{
	char	   *s = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	char	   *end;
	long long	val;

	errno = 0;
	val = strtoll(s, &end, 10);
	if (end == s)
		return false;
	if (*end == '.')
	{
		for (char *p = end + 1; *p; p++)
			if (*p != '0')
				return false;
	}
	else if (*end != '\0')
		return false;
	if (errno == ERANGE && !saturate)
		return false;
	*out = (int64) val;
	return true;
}

/* Parses a finite JSON number. */
static bool
json_double(const JsonbValue *v, double *out)
{
	char	   *s = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	double		d = strtod(s, NULL);

	if (!isfinite(d))
		return false;
	*out = d;
	return true;
}

/* Adds one stop string (non-empty) to pp. */
static void
add_stop(ParsedParams *pp, const JsonbValue *v)
{
	if (v->type != jbvString)
		invalid_param("stop", "must be a string or an array of strings");
	if (v->val.string.len == 0)
		invalid_param("stop", "stop strings must not be empty");
	if (pp->n_stop >= MAX_STOP_STRINGS)
		invalid_param("stop", psprintf("at most %d stop strings are allowed", MAX_STOP_STRINGS));
	if (pp->stop == NULL)
		pp->stop = palloc(sizeof(char *) * MAX_STOP_STRINGS);
	pp->stop[pp->n_stop++] = json_string_utf8(v);
}

/* Applies one params key. */
static void
apply_param(ParsedParams *pp, const char *key, JsonbValue *v)
{
	GptossParams *p = &pp->p;
	int64		i;
	double		d;

	if (strcmp(key, "max_tokens") == 0)
	{
		if (v->type != jbvNumeric || !json_integer(v, true, &i))
			invalid_param(key, "must be an integer");
		if (i < 1)
			invalid_param(key, "must be at least 1");
		p->max_tokens = (int32) Min(i, (int64) INT_MAX);
	}
	else if (strcmp(key, "temperature") == 0)
	{
		if (v->type != jbvNumeric || !json_double(v, &d))
			invalid_param(key, "must be a number");
		if (d < 0)
			invalid_param(key, "must be at least 0");
		if (d > FLT_MAX)
			invalid_param(key, "is too large");
		p->temperature = (float4) d;
	}
	else if (strcmp(key, "top_p") == 0)
	{
		if (v->type != jbvNumeric || !json_double(v, &d))
			invalid_param(key, "must be a number");
		if (!(d > 0 && d <= 1))
			invalid_param(key, "must be greater than 0 and at most 1");
		p->top_p = (float4) d;
	}
	else if (strcmp(key, "top_k") == 0)
	{
		if (v->type != jbvNumeric || !json_integer(v, true, &i))
			invalid_param(key, "must be an integer");
		if (i < 0)
			invalid_param(key, "must be at least 0");
		p->top_k = (int32) Min(i, (int64) INT_MAX);
	}
	else if (strcmp(key, "seed") == 0)
	{
		if (v->type != jbvNumeric || !json_integer(v, false, &i))
			invalid_param(key, "must be an integer in the 64-bit range");
		p->has_seed = true;
		p->seed = (uint64) i;
	}
	else if (strcmp(key, "stop") == 0)
	{
		if (v->type == jbvString)
			add_stop(pp, v);
		else if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
		{
			JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
			JsonbValue	elem;
			JsonbIteratorToken tok;

			while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
				if (tok == WJB_ELEM)
					add_stop(pp, &elem);
		}
		else
			invalid_param(key, "must be a string or an array of strings");
	}
	else if (strcmp(key, "reasoning_effort") == 0)
	{
		char	   *s;

		if (v->type != jbvString)
			invalid_param(key, "must be a string");
		s = pnstrdup(v->val.string.val, v->val.string.len);
		if (strcmp(s, "low") == 0)
			p->reasoning_effort = GPTOSS_REASONING_LOW;
		else if (strcmp(s, "medium") == 0)
			p->reasoning_effort = GPTOSS_REASONING_MEDIUM;
		else if (strcmp(s, "high") == 0)
			p->reasoning_effort = GPTOSS_REASONING_HIGH;
		else
			invalid_param(key, "must be \"low\", \"medium\" or \"high\"");
	}
	else if (strcmp(key, "instructions") == 0)
	{
		if (v->type != jbvString)
			invalid_param(key, "must be a string");
		pp->instructions = json_string_utf8(v);
	}
	else if (strcmp(key, "raw") == 0 || strcmp(key, "ignore_eos") == 0 ||
			 strcmp(key, "include_reasoning") == 0)
	{
		if (v->type != jbvBool)
			invalid_param(key, "must be a boolean");
		if (key[0] == 'r')
			p->raw = v->val.boolean;
		else if (key[0] == 'i' && key[1] == 'g')
			p->ignore_eos = v->val.boolean;
		else
			p->include_reasoning = v->val.boolean;
	}
	else
		unknown_param(key);
}

/* Parses params (NULL: all defaults) over the GUC defaults. */
static void
parse_params(Jsonb *params, ParsedParams *pp)
{
	memset(pp, 0, sizeof(*pp));
	pp->p.max_tokens = gptoss_default_max_tokens;
	pp->p.temperature = (float4) gptoss_default_temperature;
	pp->p.top_p = (float4) gptoss_default_top_p;
	pp->p.top_k = gptoss_default_top_k;
	pp->p.reasoning_effort = gptoss_default_reasoning_effort;

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
			char	   *key;

			if (tok != WJB_KEY)
				continue;
			key = pnstrdup(v.val.string.val, v.val.string.len);
			tok = JsonbIteratorNext(&it, &v, true);
			Assert(tok == WJB_VALUE);
			if (v.type == jbvNull)
			{
				/* null keeps the default, as in the OpenAI API; the key must still be known */
				if (!is_param_key(key))
					unknown_param(key);
				continue;
			}
			apply_param(pp, key, &v);
		}
	}

	/* The administrator's cap clamps (finish_reason length), it does not fail. */
	if (gptoss_max_tokens_limit > 0 && pp->p.max_tokens > gptoss_max_tokens_limit)
		pp->p.max_tokens = gptoss_max_tokens_limit;
}

/* Copies parsed params into a request. */
static void
fill_request(GptossRequest *req, const ParsedParams *pp)
{
	req->params = pp->p;
	req->instructions = pp->instructions;
	req->stop = pp->stop;
	req->n_stop = pp->n_stop;
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
static GptossChatMessage *
parse_messages(Jsonb *messages, int *n_out)
{
	static const char *const roles[] = {"system", "developer", "user", "assistant"};
	GptossChatMessage *out;
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

	out = palloc0(sizeof(GptossChatMessage) * count);
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

/* Runs a GENERATE request for prompt with params. */
static void
run_generate(text *prompt, Jsonb *params, GptossResponse *resp)
{
	ParsedParams pp;
	GptossRequest req;

	gptoss_check_preloaded();
	parse_params(params, &pp);
	memset(&req, 0, sizeof(req));
	req.kind = GPTOSS_REQ_GENERATE;
	fill_request(&req, &pp);
	req.text = to_utf8(VARDATA_ANY(prompt), VARSIZE_ANY_EXHDR(prompt));
	req.text_len = strlen(req.text);
	gptoss_execute(&req, resp);
}

/* gptoss_generate(prompt text, params jsonb) returns text */
Datum
gptoss_generate(PG_FUNCTION_ARGS)
{
	GptossResponse resp;

	run_generate(PG_GETARG_TEXT_PP(0), PG_GETARG_JSONB_P(1), &resp);
	PG_RETURN_TEXT_P(from_utf8(resp.text.data, resp.text.len));
}

/* Builds the GENERATE request of one prompt of gptoss_generate_many. */
static void
build_many_request(GptossRequest *req, const ParsedParams *pp, Datum prompt)
{
	text	   *t = DatumGetTextPP(prompt);

	memset(req, 0, sizeof(*req));
	req->kind = GPTOSS_REQ_GENERATE;
	fill_request(req, pp);
	req->text = to_utf8(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
	req->text_len = strlen(req->text);
}

/*
 * gptoss_generate_many(prompts text[], params jsonb) returns text[]: the
 * answers of all prompts, in order (NULL for a NULL prompt).
 *
 * A scalar function called once per row runs one sequence at a time, so a
 * single query never fills the worker's batch.  This one keeps a window of
 * requests in flight (up to the batch size of the workers, and at most half
 * of the request slots so other sessions still get in) and collects them in
 * order, so one statement over many rows runs batched.  An error or a cancel
 * ends the statement; the open requests are dropped with their segments.
 */
Datum
gptoss_generate_many(PG_FUNCTION_ARGS)
{
	ArrayType  *prompts = PG_GETARG_ARRAYTYPE_P(0);
	ParsedParams pp;
	Datum	   *items;
	bool	   *nulls;
	int			n;
	Datum	   *answers;
	GptossCall **calls;
	int			window;
	int			next = 0;
	int			dims[1];
	int			lbs[1] = {1};

	gptoss_check_preloaded();
	if (ARR_NDIM(prompts) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("gptoss_generate_many expects a one-dimensional array of prompts")));
	parse_params(PG_GETARG_JSONB_P(1), &pp);
	deconstruct_array(prompts, TEXTOID, -1, false, TYPALIGN_INT, &items, &nulls, &n);
	if (n == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(TEXTOID));

	window = Max(1, Min(gptoss_max_batch_size * gptoss_worker_count(), gptoss_max_requests / 2));
	answers = palloc0(sizeof(Datum) * n);
	calls = palloc0(sizeof(GptossCall *) * n);
	for (int i = 0; i < n; i++)
	{
		GptossResponse resp;

		/* Top the window up: requests i .. i + window - 1 are in flight. */
		for (; next < n && next < i + window; next++)
		{
			GptossRequest req;

			if (nulls[next])
				continue;
			build_many_request(&req, &pp, items[next]);
			calls[next] = gptoss_call_start(&req);
		}
		if (nulls[i])
			continue;
		memset(&resp, 0, sizeof(resp));
		initStringInfo(&resp.text);
		initStringInfo(&resp.reasoning);
		while (gptoss_call_next(calls[i], &resp))
			;
		gptoss_call_end(calls[i]);
		calls[i] = NULL;
		answers[i] = PointerGetDatum(from_utf8(resp.text.data, resp.text.len));
		pfree(resp.text.data);
		pfree(resp.reasoning.data);
	}
	dims[0] = n;
	PG_RETURN_ARRAYTYPE_P(construct_md_array(answers, nulls, 1, dims, lbs,
											 TEXTOID, -1, false, TYPALIGN_INT));
}

/* State of a gptoss_generate_stream scan. */
typedef struct StreamState
{
	GptossCall *call;			/* NULL once closed */
	GptossResponse resp;
	int			emitted;		/* bytes of resp.text already returned */
	int			resets;			/* resp.resets when emitted was counted */
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
		ParsedParams pp;
		GptossRequest req;
		text	   *prompt = PG_GETARG_TEXT_PP(0);

		gptoss_check_preloaded();
		funcctx = SRF_FIRSTCALL_INIT();
		old = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		parse_params(PG_GETARG_JSONB_P(1), &pp);
		pp.p.stream = true;
		memset(&req, 0, sizeof(req));
		req.kind = GPTOSS_REQ_GENERATE;
		fill_request(&req, &pp);
		req.text = to_utf8(VARDATA_ANY(prompt), VARSIZE_ANY_EXHDR(prompt));
		req.text_len = strlen(req.text);
		st = palloc0(sizeof(StreamState));
		initStringInfo(&st->resp.text);
		initStringInfo(&st->resp.reasoning);
		st->call = gptoss_call_start(&req);
		funcctx->user_fctx = st;
		if (rsinfo != NULL && IsA(rsinfo, ReturnSetInfo) && rsinfo->econtext != NULL)
			RegisterExprContextCallback(rsinfo->econtext, stream_shutdown, PointerGetDatum(st));
		MemoryContextSwitchTo(old);
	}
	funcctx = SRF_PERCALL_SETUP();
	st = funcctx->user_fctx;

	while (st->call != NULL)
	{
		MemoryContext old;
		bool		more;

		if (st->resets != st->resp.resets)
		{
			st->resets = st->resp.resets;
			st->emitted = 0;
		}
		if (st->resp.text.len > st->emitted)
		{
			text	   *piece = from_utf8(st->resp.text.data + st->emitted,
										  st->resp.text.len - st->emitted);

			st->emitted = st->resp.text.len;
			SRF_RETURN_NEXT(funcctx, PointerGetDatum(piece));
		}
		if (st->resp.finished)
			break;
		old = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		more = gptoss_call_next(st->call, &st->resp);
		MemoryContextSwitchTo(old);
		if (!more && st->resp.text.len == st->emitted && st->resets == st->resp.resets)
			break;
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

/* Basename of gptoss.model_path: the model's name in chat completions. */
static char *
model_name(void)
{
	char	   *path = pstrdup(gptoss_model_path ? gptoss_model_path : "");
	size_t		len = strlen(path);
	char	   *slash;

	while (len > 1 && path[len - 1] == '/')
		path[--len] = '\0';
	slash = strrchr(path, '/');
	return slash ? slash + 1 : path;
}

/* gptoss_chat(messages jsonb, params jsonb) returns jsonb (an OpenAI chat.completion) */
Datum
gptoss_chat(PG_FUNCTION_ARGS)
{
	Jsonb	   *messages = PG_GETARG_JSONB_P(0);
	ParsedParams pp;
	GptossRequest req;
	GptossResponse resp;
	StringInfoData buf;
	uint8		rnd[12];
	const char *finish;

	gptoss_check_preloaded();
	parse_params(PG_GETARG_JSONB_P(1), &pp);
	if (pp.p.raw)
		invalid_param("raw", "gptoss_chat always uses the chat format; use gptoss_generate for raw text");
	memset(&req, 0, sizeof(req));
	req.kind = GPTOSS_REQ_CHAT;
	fill_request(&req, &pp);
	req.messages = parse_messages(messages, &req.n_messages);
	gptoss_execute(&req, &resp);

	if (!pg_strong_random(rnd, sizeof(rnd)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random completion id")));
	finish = resp.finish_reason == GPTOSS_FINISH_LENGTH ? "length" : "stop";

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"id\": \"chatcmpl-");
	for (int i = 0; i < (int) sizeof(rnd); i++)
		appendStringInfo(&buf, "%02x", rnd[i]);
	appendStringInfo(&buf, "\", \"object\": \"chat.completion\", \"created\": %lld, \"model\": ",
					 (long long) time(NULL));
	escape_json(&buf, model_name());
	appendStringInfoString(&buf, ", \"choices\": [{\"index\": 0, \"message\": {\"role\": \"assistant\", \"content\": ");
	append_json_text(&buf, resp.text.data, resp.text.len);
	if (pp.p.include_reasoning)
	{
		appendStringInfoString(&buf, ", \"reasoning_content\": ");
		append_json_text(&buf, resp.reasoning.data, resp.reasoning.len);
	}
	appendStringInfo(&buf, "}, \"finish_reason\": \"%s\"}], ", finish);
	appendStringInfo(&buf, "\"usage\": {\"prompt_tokens\": %d, \"completion_tokens\": %d, \"total_tokens\": %d}}",
					 resp.prompt_tokens, resp.completion_tokens,
					 resp.prompt_tokens + resp.completion_tokens);

	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/* gptoss_tokenize(text) returns int[]: o200k_harmony ids, special-token text is plain text */
Datum
gptoss_tokenize(PG_FUNCTION_ARGS)
{
	text	   *t = PG_GETARG_TEXT_PP(0);
	GptossRequest req;
	GptossResponse resp;
	Datum	   *elems;
	ArrayType  *result;

	gptoss_check_preloaded();
	memset(&req, 0, sizeof(req));
	req.kind = GPTOSS_REQ_TOKENIZE;
	req.text = to_utf8(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
	req.text_len = strlen(req.text);
	gptoss_execute(&req, &resp);

	elems = palloc(sizeof(Datum) * Max(resp.n_ids, 1));
	for (int i = 0; i < resp.n_ids; i++)
		elems[i] = Int32GetDatum(resp.ids[i]);
	result = construct_array(elems, resp.n_ids, INT4OID, sizeof(int32), true, TYPALIGN_INT);
	PG_RETURN_ARRAYTYPE_P(result);
}

/* gptoss_detokenize(int[]) returns text; 22023 for ids that are not tokens */
Datum
gptoss_detokenize(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	GptossRequest req;
	GptossResponse resp;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int32	   *ids;

	gptoss_check_preloaded();
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("gptoss token ids must be a one-dimensional array")));
	deconstruct_array(arr, INT4OID, sizeof(int32), true, TYPALIGN_INT, &elems, &nulls, &n);
	ids = palloc(sizeof(int32) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("gptoss token ids must not contain nulls")));
		ids[i] = DatumGetInt32(elems[i]);
	}
	memset(&req, 0, sizeof(req));
	req.kind = GPTOSS_REQ_DETOKENIZE;
	req.ids = ids;
	req.n_ids = n;
	gptoss_execute(&req, &resp);
	PG_RETURN_TEXT_P(from_utf8(resp.text.data, resp.text.len));
}

/*
 * A GENERATE request for prompt (server encoding) with params, for batched
 * callers outside the SQL functions (enrichments).  Raises 22023 for bad
 * params, like gptoss_generate.
 */
void
gptoss_prompt_request(GptossRequest *req, Jsonb *params, text *prompt)
{
	ParsedParams *pp = palloc(sizeof(ParsedParams));

	parse_params(params, pp);
	memset(req, 0, sizeof(*req));
	req->kind = GPTOSS_REQ_GENERATE;
	fill_request(req, pp);
	req->text = to_utf8(VARDATA_ANY(prompt), VARSIZE_ANY_EXHDR(prompt));
	req->text_len = strlen(req->text);
}

/* The server-encoded text of an answer the worker sent in UTF-8. */
text *
gptoss_answer_text(const char *s, int len)
{
	return from_utf8(s, len);
}
