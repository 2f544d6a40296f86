/*
 * enrich.c: enrichments: gptoss_enrich() and its management functions, the
 * triggers, and the batch processing that the statement trigger (sync mode)
 * and the per-database worker (enrich_worker.c) share.  See enrich.h for the
 * catalog and the flow.
 *
 * Rights.  Only the table's owner creates or manages an enrichment, and the
 * work (reading the prompt, writing the answer) runs as that owner whoever
 * fired the trigger, with SECURITY_RESTRICTED_OPERATION as PostgreSQL's own
 * maintenance commands do.  The catalog tables belong to the extension and are
 * touched as the bootstrap superuser, only through the fixed statements below.
 * Every statement runs with search_path = pg_catalog; the prompt expression
 * was analysed once at creation and is deparsed with qualified names, so no
 * session's search_path changes what runs.
 *
 * Failures.  A batch is one statement per step (read prompts, generate, lock,
 * write); when a step fails, it is retried row by row in subtransactions, so
 * that one bad row (a prompt expression that raises, text that does not
 * convert, a prompt too long for the context, an answer that is not JSON)
 * fails alone and the others go on.  Errors that are not the row's fault (no
 * model worker, full request queue) defer the rows instead of failing them.
 * Cancels and shutdowns are re-thrown.
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/analyze.h"
#include "parser/parse_coerce.h"
#include "parser/parser.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/resowner.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"

#include "gptoss.h"
#include "enrich.h"
#include "pipeline.h"

PG_FUNCTION_INFO_V1(gptoss_enrich);
PG_FUNCTION_INFO_V1(gptoss_enrich_drop);
PG_FUNCTION_INFO_V1(gptoss_enrich_pause);
PG_FUNCTION_INFO_V1(gptoss_enrich_resume);
PG_FUNCTION_INFO_V1(gptoss_enrich_retry_failed);
PG_FUNCTION_INFO_V1(gptoss_enrich_trigger);
PG_FUNCTION_INFO_V1(gptoss_enrich_on_drop);

/* Default of the max_attempts param. */
#define ENRICH_DEFAULT_MAX_ATTEMPTS 3

/* Keys read per fetch while queueing the backfill (one inbox row each). */
#define ENRICH_BACKFILL_FETCH 10000

/* Most keys in one inbox row, and inbox rows moved into the queue at once. */
#define ENRICH_INBOX_CHUNK 65536
#define ENRICH_INBOX_MOVE 16

/* Longest statement whose plan a backend keeps (bytes, with the NUL). */
#define ENRICH_PLAN_KEY 2048

/* Names of the transition tables of the enrichment triggers. */
#define ENRICH_NEW_TABLE "gptoss_new"
#define ENRICH_OLD_TABLE "gptoss_old"

/* A role switch with search_path pinned to pg_catalog (see role_enter). */
typedef struct EnrichRole
{
	Oid			saved_user;
	int			saved_sec;
	int			guc_level;
} EnrichRole;

/* Becomes role (the table owner, or the superuser for the catalog) with search_path = pg_catalog. */
static void
role_enter(EnrichRole *r, Oid role)
{
	GetUserIdAndSecContext(&r->saved_user, &r->saved_sec);
	SetUserIdAndSecContext(role, r->saved_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	r->guc_level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

/* Undoes role_enter (an ERROR in between is undone by the (sub)transaction's abort). */
static void
role_leave(EnrichRole *r)
{
	AtEOXact_GUC(true, r->guc_level);
	SetUserIdAndSecContext(r->saved_user, r->saved_sec);
}

/* A statement's saved plan, by its text (which names the enrichment, its table and schema). */
typedef struct SavedPlan
{
	char		sql[ENRICH_PLAN_KEY];
	SPIPlanPtr	plan;
} SavedPlan;

/* This backend's saved plans: a trigger runs the same few statements for every statement it follows. */
static HTAB *saved_plans = NULL;

/*
 * Runs a statement through SPI; returns SPI_processed.  Its plan is saved
 * for the next time (the plan cache replans it after DDL); statements longer
 * than ENRICH_PLAN_KEY are planned each time.
 */
static uint64
run_sql(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls)
{
	SavedPlan  *entry = NULL;
	int			rc;

	if (strlen(sql) < ENRICH_PLAN_KEY)
	{
		bool		found;

		if (saved_plans == NULL)
		{
			HASHCTL		ctl;

			ctl.keysize = ENRICH_PLAN_KEY;
			ctl.entrysize = sizeof(SavedPlan);
			saved_plans = hash_create("gptoss enrichment plans", 64, &ctl, HASH_ELEM | HASH_STRINGS);
		}
		entry = hash_search(saved_plans, sql, HASH_FIND, &found);
		if (entry == NULL)
		{
			SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

			if (plan == NULL)
				elog(ERROR, "gptoss enrichment: SPI_prepare failed (%d): %s", SPI_result, sql);
			SPI_keepplan(plan);
			entry = hash_search(saved_plans, sql, HASH_ENTER, &found);
			entry->plan = plan;
		}
		rc = SPI_execute_plan(entry->plan, values, nulls, false, 0);
	}
	else
		rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);
	if (rc < 0)
		elog(ERROR, "gptoss enrichment: SPI failed (%d): %s", rc, sql);
	return SPI_processed;
}

/* The extension's schema, quoted; NULL when the extension is not installed in this database. */
char *
enrich_schema(void)
{
	EnrichRole	r;
	char	   *schema = NULL;

	role_enter(&r, BOOTSTRAP_SUPERUSERID);
	run_sql("SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
			" WHERE e.extname = 'gptoss'", 0, NULL, NULL, NULL);
	if (SPI_processed == 1)
		schema = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	role_leave(&r);
	return schema;
}

/* Rows a batch holds: gptoss.batch_window, as gptoss_generate_many keeps in flight. */
int
enrich_batch_size(void)
{
	return gptoss_batch_window > 0 ? gptoss_batch_window : gptoss_default_window();
}

/* OPERATOR(schema.=) of the default equality of type typid. */
static char *
equality_operator(Oid typid)
{
	TypeCacheEntry *tce = lookup_type_cache(typid, TYPECACHE_EQ_OPR);
	HeapTuple	tup;
	Form_pg_operator op;
	char	   *result;

	if (!OidIsValid(tce->eq_opr))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("could not identify an equality operator for type %s", format_type_be(typid))));
	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(tce->eq_opr));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", tce->eq_opr);
	op = (Form_pg_operator) GETSTRUCT(tup);
	result = psprintf("OPERATOR(%s.%s)", quote_identifier(get_namespace_name(op->oprnamespace)),
					  NameStr(op->oprname));
	ReleaseSysCache(tup);
	return result;
}

/* The primary key columns of rel, in key order, into attnums; returns their count (55000 when none). */
static int
primary_key_columns(Relation rel, AttrNumber *attnums)
{
	Oid			pkindex = RelationGetPrimaryKeyIndex(rel);
	HeapTuple	idxtup;
	Form_pg_index idx;
	int			npk;

	if (!OidIsValid(pkindex))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s has no primary key", RelationGetRelationName(rel))));
	idxtup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pkindex));
	if (!HeapTupleIsValid(idxtup))
		elog(ERROR, "cache lookup failed for index %u", pkindex);
	idx = (Form_pg_index) GETSTRUCT(idxtup);
	npk = idx->indnkeyatts;
	for (int j = 0; j < npk; j++)
		attnums[j] = idx->indkey.values[j];
	ReleaseSysCache(idxtup);
	return npk;
}

/* Fills the table-derived fields of e: names, primary key, target type. */
static void
describe_table(Enrichment *e)
{
	Relation	rel = table_open(e->relid, AccessShareLock);
	AttrNumber	attnums[INDEX_MAX_KEYS];

	e->owner = rel->rd_rel->relowner;
	e->rel = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
										RelationGetRelationName(rel));
	e->alias = pstrdup(quote_identifier(RelationGetRelationName(rel)));
	e->target = pstrdup(quote_identifier(get_attname(e->relid, e->attnum, false)));
	e->target_type = get_atttype(e->relid, e->attnum);
	e->npk = primary_key_columns(rel, attnums);
	e->pk_attnums = palloc(sizeof(AttrNumber) * e->npk);
	e->pk_cols = palloc(sizeof(char *) * e->npk);
	e->pk_types = palloc(sizeof(char *) * e->npk);
	e->pk_eq = palloc(sizeof(char *) * e->npk);
	for (int j = 0; j < e->npk; j++)
	{
		AttrNumber	att = attnums[j];
		Oid			typid = get_atttype(e->relid, att);

		e->pk_attnums[j] = att;
		e->pk_cols[j] = pstrdup(quote_identifier(get_attname(e->relid, att, false)));
		e->pk_types[j] = format_type_be_qualified(typid);
		e->pk_eq[j] = equality_operator(typid);
	}
	table_close(rel, AccessShareLock);
}

/* Sets e->prompt and e->input_cols from the analysed prompt expression. */
static void
describe_prompt(Enrichment *e, const char *prompt_expr)
{
	Node	   *expr = stringToNode(prompt_expr);
	Bitmapset  *attrs = NULL;
	int			k = -1;

	e->prompt = deparse_expression(expr, deparse_context_for(get_rel_name(e->relid), e->relid),
								   false, false);
	pull_varattnos(expr, 1, &attrs);
	e->input_cols = palloc(sizeof(char *) * Max(1, bms_num_members(attrs)));
	e->ninputs = 0;
	while ((k = bms_next_member(attrs, k)) >= 0)
	{
		AttrNumber	att = k + FirstLowInvalidHeapAttributeNumber;

		e->input_cols[e->ninputs++] = pstrdup(quote_identifier(get_attname(e->relid, att, false)));
	}
}

/* Loads enrichment id; NULL when it does not exist and missing_ok. */
Enrichment *
enrich_load(int id, bool missing_ok)
{
	Enrichment *e;
	EnrichRole	r;
	char	   *schema = enrich_schema();
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(id)};
	TupleDesc	td;
	HeapTuple	tup;
	bool		isnull;
	char	   *prompt_expr;

	if (schema == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extension \"gptoss\" is not installed in this database")));
	role_enter(&r, BOOTSTRAP_SUPERUSERID);
	run_sql(psprintf("SELECT relid, attnum, prompt_expr, params, mode = 'async', max_attempts, paused"
					 " FROM %s.gptoss_enrichment WHERE id = $1", schema),
			1, types, values, NULL);
	if (SPI_processed == 0)
	{
		role_leave(&r);
		if (missing_ok)
			return NULL;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("gptoss enrichment %d does not exist", id)));
	}
	td = SPI_tuptable->tupdesc;
	tup = SPI_tuptable->vals[0];
	e = palloc0(sizeof(Enrichment));
	e->id = id;
	e->schema = schema;
	e->relid = DatumGetObjectId(SPI_getbinval(tup, td, 1, &isnull));
	e->attnum = DatumGetInt16(SPI_getbinval(tup, td, 2, &isnull));
	prompt_expr = SPI_getvalue(tup, td, 3);
	e->params = DatumGetJsonbPCopy(SPI_getbinval(tup, td, 4, &isnull));
	e->async = DatumGetBool(SPI_getbinval(tup, td, 5, &isnull));
	e->max_attempts = DatumGetInt32(SPI_getbinval(tup, td, 6, &isnull));
	e->paused = DatumGetBool(SPI_getbinval(tup, td, 7, &isnull));
	describe_table(e);
	describe_prompt(e, prompt_expr);
	role_leave(&r);
	return e;
}

/* ---------------------------------------------------------------------------
 * Keys and statement arguments
 */

/* An empty key batch for up to n rows of npk key columns. */
static EnrichKeys *
keys_new(int npk, int n)
{
	EnrichKeys *keys = palloc0(sizeof(EnrichKeys));

	keys->npk = npk;
	keys->cols = palloc(sizeof(Datum *) * npk);
	for (int j = 0; j < npk; j++)
		keys->cols[j] = palloc(sizeof(Datum) * Max(1, n));
	return keys;
}

/* Appends the current SPI result's rows (npk text columns) to keys, up to capacity rows. */
static void
keys_append_spi(EnrichKeys *keys, int capacity)
{
	TupleDesc	td = SPI_tuptable->tupdesc;

	for (uint64 i = 0; i < SPI_processed && keys->n < capacity; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];

		for (int j = 0; j < keys->npk; j++)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(tup, td, j + 1, &isnull);

			if (isnull)
				elog(ERROR, "gptoss enrichment: NULL primary key value");
			keys->cols[j][keys->n] = PointerGetDatum(DatumGetTextPCopy(d));
		}
		keys->n++;
	}
}

/* text[] of the datums at positions idx[0..m) of vals (NULL entries where isnull[i]). */
static Datum
text_array(Datum *vals, const bool *isnull, const int *idx, int m)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(1, m));
	bool	   *nulls = palloc(sizeof(bool) * Max(1, m));
	int			dims[1] = {m};
	int			lbs[1] = {1};

	for (int i = 0; i < m; i++)
	{
		int			k = idx ? idx[i] : i;

		nulls[i] = isnull != NULL && isnull[k];
		elems[i] = nulls[i] ? (Datum) 0 : vals[k];
	}
	if (m == 0)
		return PointerGetDatum(construct_empty_array(TEXTOID));
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Arguments $1..$npk: the key columns of rows idx[0..m) as text arrays,
 * followed by extra (text datums per row, NULL where extra_null) when given.
 */
static int
key_args(EnrichKeys *keys, const int *idx, int m, Datum *extra, const bool *extra_null,
		 Oid *types, Datum *values)
{
	int			nargs = 0;

	for (int j = 0; j < keys->npk; j++)
	{
		types[nargs] = TEXTARRAYOID;
		values[nargs++] = text_array(keys->cols[j], NULL, idx, m);
	}
	if (extra != NULL)
	{
		types[nargs] = TEXTARRAYOID;
		values[nargs++] = text_array(extra, extra_null, idx, m);
	}
	return nargs;
}

/* "unnest($first::text[], ...) WITH ORDINALITY AS alias(gptoss_k1, ..., [extra,] gptoss_i)" */
static char *
unnest_keys(Enrichment *e, int first, const char *alias, const char *extra)
{
	StringInfoData buf;
	int			nargs = e->npk + (extra ? 1 : 0);

	initStringInfo(&buf);
	appendStringInfoString(&buf, "unnest(");
	for (int j = 0; j < nargs; j++)
		appendStringInfo(&buf, "%s$%d::text[]", j ? ", " : "", first + j);
	appendStringInfo(&buf, ") WITH ORDINALITY AS %s(", alias);
	for (int j = 0; j < e->npk; j++)
		appendStringInfo(&buf, "gptoss_k%d, ", j + 1);
	if (extra)
		appendStringInfo(&buf, "%s, ", extra);
	appendStringInfoString(&buf, "gptoss_i)");
	return buf.data;
}

/* "tbl.pk1 OPERATOR(=) alias.gptoss_k1::type1 AND ..." */
static char *
key_match(Enrichment *e, const char *alias)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int j = 0; j < e->npk; j++)
		appendStringInfo(&buf, "%s%s.%s %s %s.gptoss_k%d::%s", j ? " AND " : "",
						 e->alias, e->pk_cols[j], e->pk_eq[j], alias, j + 1, e->pk_types[j]);
	return buf.data;
}

/* "ARRAY[alias.gptoss_k1, ...]": a queue key from unnest_keys' columns. */
static char *
key_array(Enrichment *e, const char *alias)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "ARRAY[");
	for (int j = 0; j < e->npk; j++)
		appendStringInfo(&buf, "%s%s.gptoss_k%d", j ? ", " : "", alias, j + 1);
	appendStringInfoChar(&buf, ']');
	return buf.data;
}

/* ---------------------------------------------------------------------------
 * Subtransactions: one failing row must not take the batch down
 */

/* Errors that must end the statement rather than fail a row. */
static bool
must_rethrow(int sqlerrcode)
{
	return ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_OPERATOR_INTERVENTION ||
		ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_TRANSACTION_ROLLBACK ||
		sqlerrcode == ERRCODE_OUT_OF_MEMORY;
}

/* Errors that are not the row's fault: the row is deferred, its attempts not counted. */
static bool
is_transient(int sqlerrcode)
{
	return sqlerrcode == ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE ||
		sqlerrcode == ERRCODE_INSUFFICIENT_RESOURCES;
}

/* An error caught from a subtransaction. */
typedef struct CaughtError
{
	int			sqlerrcode;
	char	   *message;
} CaughtError;

/*
 * Runs fn(arg) in a subtransaction.  Returns true when it succeeded; else
 * fills *err and returns false, the subtransaction rolled back.
 */
static bool
try_subxact(void (*fn) (void *), void *arg, CaughtError *err)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile bool ok = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		if (must_rethrow(edata->sqlerrcode))
			ReThrowError(edata);
		err->sqlerrcode = edata->sqlerrcode;
		err->message = psprintf("%s: %s", unpack_sql_state(edata->sqlerrcode), edata->message);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/* ---------------------------------------------------------------------------
 * Batched generation
 *
 * Through the pipeline that gptoss_generate_many and the GptossBatch node use
 * (pipeline.h), so that enrichments share the worker's batch and its
 * admission with every session.  With GPTOSS_PIPELINE_ROW_ERRORS a row whose
 * generation fails for its own input (54000, XX000) comes back as a failed
 * result; a prompt that cannot be rendered, or whose text does not convert,
 * fails alone too.  Any other error ends the pipeline (its requests are
 * dropped with its subtransaction) and applies to the rows not answered yet.
 */

typedef struct GenState
{
	Jsonb	   *params;			/* generation params with on_error "null" */
	int			n;
	text	  **prompts;		/* NULL: no request */
	text	  **answers;
	char	  **errors;
	int		   *order;			/* row of each submitted job, in submission order */
	int64		completion_tokens;
	GptossJob	job;			/* gen_build: the job of row */
	int			row;
	bool		built;
	int			sqlerrcode;
	char	   *message;
} GenState;

/* Builds the job of row st->row (false in st->built when its prompt cannot be rendered). */
static void
gen_build(void *arg)
{
	GenState   *st = arg;

	st->built = gptoss_generate_job(PointerGetDatum(st->prompts[st->row]), JsonbPGetDatum(st->params),
									&st->job, &st->sqlerrcode, &st->message);
}

/* Submits every prompt and collects every answer through one pipeline. */
static void
gen_run(void *arg)
{
	GenState   *st = arg;
	GptossPipeline *pipeline = gptoss_pipeline_create(enrich_batch_size(), GPTOSS_PIPELINE_ROW_ERRORS);
	int			submitted = 0;
	int			collected = 0;
	CaughtError err;

	for (int i = 0; i <= st->n; i++)
	{
		/* collect in order while the window is full, and everything at the end */
		while (gptoss_pipeline_pending(pipeline) > 0 &&
			   (i == st->n || !gptoss_pipeline_has_room(pipeline)))
		{
			GptossPipelineResult r;
			int			row = st->order[collected++];

			gptoss_pipeline_next(pipeline, &r);
			if (r.failed)
				st->errors[row] = psprintf("%s: %s", unpack_sql_state(r.sqlerrcode), r.message);
			else
			{
				st->answers[row] = DatumGetTextPP(gptoss_generate_result(&r.resp));
				st->completion_tokens += r.resp.completion_tokens;
			}
			gptoss_pipeline_result_free(&r);
		}
		if (i == st->n || st->prompts[i] == NULL)
			continue;
		st->row = i;
		if (!try_subxact(gen_build, st, &err))
			st->errors[i] = err.message;
		else if (!st->built)
			st->errors[i] = psprintf("%s: %s", unpack_sql_state(st->sqlerrcode), st->message);
		else
		{
			gptoss_pipeline_submit(pipeline, &st->job);
			pfree(unconstify(int32 *, st->job.prompt));
			st->order[submitted++] = i;
		}
	}
	gptoss_pipeline_free(pipeline);
}

/*
 * Answers prompts[0..n) (NULL: skipped) with params.  Fills answers[] or
 * errors[] (with deferred[] for errors that are not the row's fault); returns
 * the completion tokens.
 */
static int64
generate_batch(Jsonb *params, int n, text **prompts, text **answers, char **errors, bool *deferred)
{
	GenState	st;
	CaughtError err;
	Datum		row_errors = DirectFunctionCall1(jsonb_in, CStringGetDatum("{\"on_error\": \"null\"}"));

	memset(&st, 0, sizeof(st));
	st.params = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(params), row_errors));
	st.n = n;
	st.prompts = prompts;
	st.answers = answers;
	st.errors = errors;
	st.order = palloc(sizeof(int) * Max(1, n));
	if (!try_subxact(gen_run, &st, &err))
	{
		for (int i = 0; i < n; i++)
			if (prompts[i] != NULL && answers[i] == NULL && errors[i] == NULL)
			{
				errors[i] = err.message;
				deferred[i] = is_transient(err.sqlerrcode);
			}
	}
	return st.completion_tokens;
}

/* ---------------------------------------------------------------------------
 * Processing a batch of keys
 */

typedef struct BatchState
{
	Enrichment *e;
	EnrichKeys *keys;
	int		   *idx;			/* rows of the current statement */
	int			m;
	Datum	   *values;			/* prompts or answers per row (text) */
	bool	   *isnull;
	bool	   *found;			/* read: the row exists */
	bool	   *locked;			/* lock: the row is ours to write */
	Datum		jsonb_text;		/* jsonb check: the answer */
} BatchState;

/* Runs sql with the keys of rows idx[0..m) of b, and their values[] as the extra column when with_values. */
static void
run_batch_sql(BatchState *b, const char *sql, bool with_values)
{
	Oid			types[FUNC_MAX_ARGS];
	Datum		values[FUNC_MAX_ARGS];
	int			nargs = key_args(b->keys, b->idx, b->m, with_values ? b->values : NULL,
								 with_values ? b->isnull : NULL, types, values);

	run_sql(sql, nargs, types, values, NULL);
}

/* Reads the current prompt of rows idx[0..m) into values/isnull/found. */
static void
read_prompts(void *arg)
{
	BatchState *b = arg;
	Enrichment *e = b->e;
	char	   *sql;

	sql = psprintf("SELECT gptoss_r.gptoss_prompt, gptoss_r.gptoss_found IS NOT NULL FROM %s"
				   " LEFT JOIN LATERAL (SELECT true AS gptoss_found, (%s)::text AS gptoss_prompt"
				   " FROM ONLY %s AS %s WHERE %s) AS gptoss_r ON true ORDER BY gptoss_k.gptoss_i",
				   unnest_keys(e, 1, "gptoss_k", NULL), e->prompt, e->rel, e->alias,
				   key_match(e, "gptoss_k"));
	run_batch_sql(b, sql, false);
	if (SPI_processed != (uint64) b->m)
		elog(ERROR, "gptoss enrichment: read %llu prompts for %d keys",
			 (unsigned long long) SPI_processed, b->m);
	for (int i = 0; i < b->m; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		int			k = b->idx[i];
		bool		n1,
					n2;
		Datum		p = SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &n1);

		b->found[k] = DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &n2));
		b->isnull[k] = n1;
		b->values[k] = n1 ? (Datum) 0 : PointerGetDatum(DatumGetTextPCopy(p));
	}
}

/* Locks rows idx[0..m) whose prompt is still values[] (SKIP LOCKED); sets locked[]. */
static void
lock_rows(void *arg)
{
	BatchState *b = arg;
	Enrichment *e = b->e;
	char	   *sql;

	sql = psprintf("SELECT gptoss_k.gptoss_i FROM %s JOIN ONLY %s AS %s ON %s"
				   " WHERE (%s)::text IS NOT DISTINCT FROM gptoss_k.gptoss_p"
				   " FOR UPDATE OF %s SKIP LOCKED",
				   unnest_keys(e, 1, "gptoss_k", "gptoss_p"), e->rel, e->alias,
				   key_match(e, "gptoss_k"), e->prompt, e->alias);
	run_batch_sql(b, sql, true);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int64		ord = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));

		b->locked[b->idx[ord - 1]] = true;
	}
}

/* Writes values[] (the answers) into the target column of rows idx[0..m). */
static void
write_answers(void *arg)
{
	BatchState *b = arg;
	Enrichment *e = b->e;
	char	   *sql;

	sql = psprintf("UPDATE ONLY %s AS %s SET %s = gptoss_v.gptoss_a%s FROM %s WHERE %s",
				   e->rel, e->alias, e->target,
				   e->target_type == JSONBOID ? "::jsonb" : "",
				   unnest_keys(e, 1, "gptoss_v", "gptoss_a"), key_match(e, "gptoss_v"));
	run_batch_sql(b, sql, true);
}

/* Parses b->jsonb_text as jsonb (raises when it is not valid JSON). */
static void
check_jsonb(void *arg)
{
	BatchState *b = arg;

	(void) DirectFunctionCall1(jsonb_in, CStringGetDatum(TextDatumGetCString(b->jsonb_text)));
}

/*
 * Runs step over rows idx[0..m): as one statement, and when that fails, row by
 * row; a row that fails alone gets FAILED with its error.
 */
static void
run_step(BatchState *b, void (*step) (void *), int *idx, int m, EnrichResult *results)
{
	CaughtError err;

	if (m == 0)
		return;
	b->idx = idx;
	b->m = m;
	if (try_subxact(step, b, &err))
		return;
	for (int i = 0; i < m; i++)
	{
		b->idx = &idx[i];
		b->m = 1;
		if (!try_subxact(step, b, &err))
		{
			results[idx[i]].outcome = ENRICH_FAILED;
			results[idx[i]].error = err.message;
		}
	}
}

/* Rows of results with the given outcome; returns their count. */
static int
rows_with(EnrichResult *results, int n, EnrichOutcome outcome, int *idx)
{
	int			m = 0;

	for (int i = 0; i < n; i++)
		if (results[i].outcome == outcome)
			idx[m++] = i;
	return m;
}

/* Generates and writes the rows of keys; see enrich.h. */
int64
enrich_process_keys(Enrichment *e, EnrichKeys *keys, EnrichResult *results)
{
	int			n = keys->n;
	BatchState	b;
	EnrichRole	r;
	int		   *idx = palloc(sizeof(int) * Max(1, n));
	text	  **prompts = palloc0(sizeof(text *) * Max(1, n));
	text	  **answers = palloc0(sizeof(text *) * Max(1, n));
	char	  **errors = palloc0(sizeof(char *) * Max(1, n));
	bool	   *deferred = palloc0(sizeof(bool) * Max(1, n));
	int64		tokens;
	int			m;

	memset(&b, 0, sizeof(b));
	b.e = e;
	b.keys = keys;
	b.values = palloc0(sizeof(Datum) * Max(1, n));
	b.isnull = palloc0(sizeof(bool) * Max(1, n));
	b.found = palloc0(sizeof(bool) * Max(1, n));
	b.locked = palloc0(sizeof(bool) * Max(1, n));
	/* ENRICH_WRITTEN marks the rows still on their way until the write */
	for (int i = 0; i < n; i++)
	{
		results[i].outcome = ENRICH_WRITTEN;
		results[i].error = NULL;
	}

	/* 1. the current prompts, read as the owner */
	role_enter(&r, e->owner);
	m = rows_with(results, n, ENRICH_WRITTEN, idx);
	run_step(&b, read_prompts, idx, m, results);
	role_leave(&r);
	for (int i = 0; i < n; i++)
	{
		if (results[i].outcome != ENRICH_WRITTEN)
			continue;
		if (!b.found[i])
			results[i].outcome = ENRICH_GONE;
		else if (!b.isnull[i])
			prompts[i] = DatumGetTextPP(b.values[i]);
	}

	/*
	 * 2. one batch of generations, as the owner: they count for the owner's
	 * fair share of the worker (claim_slot), and the reason of a model that
	 * failed to load is recorded only if the owner may read it
	 * (gptoss_may_see_load_errors), whichever process runs the batch
	 */
	role_enter(&r, e->owner);
	tokens = generate_batch(e->params, n, prompts, answers, errors, deferred);
	role_leave(&r);

	/* 3. lock the rows whose prompt did not change meanwhile, as the owner */
	role_enter(&r, e->owner);
	for (int i = 0; i < n; i++)
	{
		if (errors[i] != NULL)
		{
			results[i].outcome = deferred[i] ? ENRICH_SUPERSEDED : ENRICH_FAILED;
			results[i].error = errors[i];
		}
	}
	m = rows_with(results, n, ENRICH_WRITTEN, idx);
	run_step(&b, lock_rows, idx, m, results);
	for (int i = 0; i < n; i++)
	{
		if (results[i].outcome != ENRICH_WRITTEN)
			continue;
		if (!b.locked[i])
		{
			results[i].outcome = ENRICH_SUPERSEDED;
			continue;
		}
		/* from here on values[] holds the answer */
		b.isnull[i] = answers[i] == NULL;
		b.values[i] = answers[i] ? PointerGetDatum(answers[i]) : (Datum) 0;
		if (e->target_type == JSONBOID && answers[i] != NULL)
		{
			CaughtError err;

			b.jsonb_text = b.values[i];
			if (!try_subxact(check_jsonb, &b, &err))
			{
				results[i].outcome = ENRICH_FAILED;
				results[i].error = psprintf("the answer is not valid JSON (%s)", err.message);
			}
		}
	}

	/* 4. write the answers */
	m = rows_with(results, n, ENRICH_WRITTEN, idx);
	run_step(&b, write_answers, idx, m, results);
	role_leave(&r);
	return tokens;
}

/* ---------------------------------------------------------------------------
 * Queue bookkeeping (as the superuser: the catalog is the extension's)
 */

/* The error message of each row of the batch as a text datum (0 where none). */
static Datum *
error_datums(EnrichResult *results, int n)
{
	Datum	   *d = palloc0(sizeof(Datum) * Max(1, n));

	for (int i = 0; i < n; i++)
		if (results[i].error)
			d[i] = CStringGetTextDatum(results[i].error);
	return d;
}

/* Nulls where a row has no error. */
static bool *
error_nulls(EnrichResult *results, int n)
{
	bool	   *nulls = palloc0(sizeof(bool) * Max(1, n));

	for (int i = 0; i < n; i++)
		nulls[i] = results[i].error == NULL;
	return nulls;
}

/*
 * Queues rows idx[0..m) of keys; with errors, as failed once (attempts 1,
 * the error, a retry after backoff).  Rows already queued stay as they are.
 */
static void
queue_insert(Enrichment *e, EnrichKeys *keys, int *idx, int m, Datum *errors, bool *errnull,
			 int attempts)
{
	Oid			types[FUNC_MAX_ARGS];
	Datum		values[FUNC_MAX_ARGS];
	int			nargs;
	char	   *sql;

	if (m == 0)
		return;
	nargs = key_args(keys, idx, m, errors, errnull, types, values);
	types[nargs] = INT4OID;
	values[nargs++] = Int32GetDatum(e->id);
	types[nargs] = INT4OID;
	values[nargs++] = Int32GetDatum(attempts);
	sql = psprintf("INSERT INTO %s.gptoss_enrich_queue (enrichment, key, attempts, last_error, failed_at, next_try)"
				   " SELECT $%d, %s, $%d, %s, %s, now() + make_interval(secs => $%d)"
				   " FROM %s ON CONFLICT (enrichment, key) DO NOTHING",
				   e->schema, nargs - 1, key_array(e, "gptoss_k"), nargs,
				   errors ? "gptoss_k.gptoss_e" : "NULL",
				   errors ? "now()" : "NULL", nargs,
				   unnest_keys(e, 1, "gptoss_k", errors ? "gptoss_e" : NULL));
	run_sql(sql, nargs, types, values, NULL);
}

/*
 * Runs head, a DELETE ... USING or an UPDATE ... FROM of e's queue as q,
 * joined to rows idx[0..m) of keys as gptoss_k; with errors, gptoss_k.gptoss_e
 * is the row's error (or NULL).
 */
static void
queue_apply(Enrichment *e, EnrichKeys *keys, int *idx, int m, Datum *errors, bool *errnull,
			const char *head)
{
	Oid			types[FUNC_MAX_ARGS];
	Datum		values[FUNC_MAX_ARGS];
	int			nargs;

	if (m == 0)
		return;
	nargs = key_args(keys, idx, m, errors, errnull, types, values);
	types[nargs] = INT4OID;
	values[nargs++] = Int32GetDatum(e->id);
	run_sql(psprintf("%s %s WHERE q.enrichment = $%d AND q.key = %s",
					 head, unnest_keys(e, 1, "gptoss_k", errors ? "gptoss_e" : NULL), nargs,
					 key_array(e, "gptoss_k")),
			nargs, types, values, NULL);
}

/* Removes rows idx[0..m) of keys from the queue. */
static void
queue_delete(Enrichment *e, EnrichKeys *keys, int *idx, int m)
{
	queue_apply(e, keys, idx, m, NULL, NULL,
				psprintf("DELETE FROM %s.gptoss_enrich_queue q USING", e->schema));
}

/* Updates the queue entries of rows idx[0..m) of keys with the SET list set (see queue_apply). */
static void
queue_update(Enrichment *e, EnrichKeys *keys, int *idx, int m, Datum *errors, bool *errnull,
			 const char *set)
{
	queue_apply(e, keys, idx, m, errors, errnull,
				psprintf("UPDATE %s.gptoss_enrich_queue q SET %s FROM", e->schema, set));
}

/* True when e has rows in the queue. */
static bool
queue_has_rows(Enrichment *e)
{
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(e->id)};

	run_sql(psprintf("SELECT 1 FROM %s.gptoss_enrich_queue WHERE enrichment = $1 LIMIT 1", e->schema),
			1, types, values, NULL);
	return SPI_processed > 0;
}

/* Queues all rows of keys (the async UPDATE trigger, a paused enrichment, the backfill). */
static void
queue_all(Enrichment *e, EnrichKeys *keys)
{
	EnrichRole	r;

	role_enter(&r, BOOTSTRAP_SUPERUSERID);
	queue_insert(e, keys, NULL, keys->n, NULL, NULL, 0);
	role_leave(&r);
}

/*
 * Puts rows [first, first + n) of keys into the inbox as one row: their key
 * columns one row after the other in one text[].
 */
static void
inbox_insert(Enrichment *e, EnrichKeys *keys, int first, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * (Size) Max(1, n) * keys->npk);
	Oid			types[3] = {INT4OID, INT4OID, TEXTARRAYOID};
	Datum		values[3];
	EnrichRole	r;

	for (int i = 0; i < n; i++)
		for (int j = 0; j < keys->npk; j++)
			elems[i * keys->npk + j] = keys->cols[j][first + i];
	values[0] = Int32GetDatum(e->id);
	values[1] = Int32GetDatum(n);
	values[2] = PointerGetDatum(construct_array(elems, n * keys->npk, TEXTOID, -1, false, TYPALIGN_INT));
	role_enter(&r, BOOTSTRAP_SUPERUSERID);
	run_sql(psprintf("INSERT INTO %s.gptoss_enrich_inbox (enrichment, nrows, keys) VALUES ($1, $2, $3)",
					 e->schema), 3, types, values, NULL);
	role_leave(&r);
	pfree(elems);
}

/* Moves the inbox of enrichment e into the queue; see enrich.h. */
int64
enrich_move_inbox(Enrichment *e)
{
	EnrichRole	r;
	Oid			types[2] = {INT4OID, INT4OID};
	Datum		values[2] = {Int32GetDatum(e->id), Int32GetDatum(e->npk)};
	int64		n;

	role_enter(&r, BOOTSTRAP_SUPERUSERID);
	/*
	 * Each inbox row's keys are unnested once and regrouped by key: a slice
	 * per key would read the whole array again for every key.
	 */
	n = (int64) run_sql(psprintf("WITH moved AS (DELETE FROM %s.gptoss_enrich_inbox WHERE id IN"
								 " (SELECT id FROM %s.gptoss_enrich_inbox WHERE enrichment = $1 ORDER BY id"
								 " LIMIT %d FOR UPDATE SKIP LOCKED) RETURNING keys, queued_at)"
								 " INSERT INTO %s.gptoss_enrich_queue (enrichment, key, queued_at)"
								 " SELECT $1, k.key, m.queued_at FROM moved m,"
								 " LATERAL (SELECT array_agg(u.k ORDER BY u.i) AS key"
								 " FROM unnest(m.keys) WITH ORDINALITY AS u(k, i) GROUP BY (u.i - 1) / $2) AS k"
								 " ON CONFLICT (enrichment, key) DO NOTHING",
								 e->schema, e->schema, ENRICH_INBOX_MOVE, e->schema),
						2, types, values, NULL);
	role_leave(&r);
	return n;
}

/*
 * Keys of the rows of an INSERT statement, read from its transition table:
 * the INSERT trigger of an enrichment created before the row trigger replaced
 * the transition table (gptoss_enrich_drop and gptoss_enrich again move it to
 * the row trigger).
 */
static EnrichKeys *
inserted_keys(Enrichment *e, TriggerData *trigdata)
{
	Tuplestorestate *ts = trigdata->tg_newtable;
	TupleDesc	desc = RelationGetDescr(trigdata->tg_relation);
	TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	FmgrInfo   *out = palloc(sizeof(FmgrInfo) * e->npk);
	EnrichKeys *keys;
	int			capacity = 1024;
	int			ptr;

	for (int j = 0; j < e->npk; j++)
	{
		Oid			typout;
		bool		varlena;

		getTypeOutputInfo(TupleDescAttr(desc, e->pk_attnums[j] - 1)->atttypid, &typout, &varlena);
		fmgr_info(typout, &out[j]);
	}
	keys = keys_new(e->npk, capacity);
	ptr = tuplestore_alloc_read_pointer(ts, EXEC_FLAG_REWIND);
	tuplestore_select_read_pointer(ts, ptr);
	tuplestore_rescan(ts);
	while (tuplestore_gettupleslot(ts, true, false, slot))
	{
		if (keys->n == capacity)
		{
			capacity *= 2;
			for (int j = 0; j < e->npk; j++)
				keys->cols[j] = repalloc(keys->cols[j], sizeof(Datum) * capacity);
		}
		for (int j = 0; j < e->npk; j++)
		{
			bool		isnull;
			Datum		d = slot_getattr(slot, e->pk_attnums[j], &isnull);

			if (isnull)
				elog(ERROR, "gptoss enrichment: NULL primary key value");
			keys->cols[j][keys->n] = CStringGetTextDatum(OutputFunctionCall(&out[j], d));
		}
		keys->n++;
	}
	ExecDropSingleTupleTableSlot(slot);
	return keys;
}

/* Records a batch's outcomes in the queue and the log; see enrich.h. */
void
enrich_record(Enrichment *e, EnrichKeys *keys, EnrichResult *results, bool from_queue, int64 tokens)
{
	int			n = keys->n;
	int		   *idx = palloc(sizeof(int) * Max(1, n));
	Datum	   *errors = error_datums(results, n);
	bool	   *errnull = error_nulls(results, n);
	int			m;
	int			written = rows_with(results, n, ENRICH_WRITTEN, idx);
	EnrichRole	r;

	role_enter(&r, BOOTSTRAP_SUPERUSERID);
	if (written > 0 || tokens > 0)
	{
		Oid			ltypes[3] = {INT4OID, INT8OID, INT8OID};
		Datum		lvalues[3] = {Int32GetDatum(e->id), Int64GetDatum(written), Int64GetDatum(tokens)};

		run_sql(psprintf("INSERT INTO %s.gptoss_enrich_log (enrichment, rows, tokens) VALUES ($1, $2, $3)",
						 e->schema), 3, ltypes, lvalues, NULL);
	}
	if (!from_queue)
	{
		/* sync trigger: rows written need no queued generation any more (an earlier failure) */
		if (written > 0 && queue_has_rows(e))
			queue_delete(e, keys, idx, written);
		/* failed rows are retried by the worker; superseded ones generated again */
		m = rows_with(results, n, ENRICH_FAILED, idx);
		queue_insert(e, keys, idx, m, errors, errnull, 1);
		m = rows_with(results, n, ENRICH_SUPERSEDED, idx);
		queue_insert(e, keys, idx, m, errors, errnull, 0);
		role_leave(&r);
		return;
	}

	/* written or gone: off the queue */
	m = 0;
	for (int i = 0; i < n; i++)
		if (results[i].outcome == ENRICH_WRITTEN || results[i].outcome == ENRICH_GONE)
			idx[m++] = i;
	queue_delete(e, keys, idx, m);

	/* failed: one more attempt counted, retried after 2^attempts seconds (at most 5 minutes) */
	m = rows_with(results, n, ENRICH_FAILED, idx);
	queue_update(e, keys, idx, m, errors, errnull,
				 "attempts = q.attempts + 1, last_error = gptoss_k.gptoss_e, failed_at = now(),"
				 " next_try = now() + make_interval(secs => least(300, 2 ^ q.attempts))");

	/*
	 * Superseded (changed or locked meanwhile): again after a second, so that
	 * a row held by a long transaction is not generated over and over.
	 * Deferred (no model worker, queue full): again after a few seconds.
	 * Attempts unchanged in both cases.
	 */
	m = rows_with(results, n, ENRICH_SUPERSEDED, idx);
	queue_update(e, keys, idx, m, errors, errnull,
				 "last_error = coalesce(gptoss_k.gptoss_e, q.last_error),"
				 " failed_at = CASE WHEN gptoss_k.gptoss_e IS NULL THEN q.failed_at ELSE now() END,"
				 " next_try = now() + CASE WHEN gptoss_k.gptoss_e IS NULL THEN interval '1 second'"
				 " ELSE interval '5 seconds' END");
	role_leave(&r);
}

/* Keys of the next batch of e's queue, locked; see enrich.h. */
EnrichKeys *
enrich_take_batch(Enrichment *e, int limit)
{
	EnrichRole	r;
	EnrichKeys *keys;
	Oid			types[3] = {INT4OID, INT4OID, INT4OID};
	Datum		values[3] = {Int32GetDatum(e->id), Int32GetDatum(e->max_attempts), Int32GetDatum(limit)};
	StringInfoData cols;

	initStringInfo(&cols);
	for (int j = 0; j < e->npk; j++)
		appendStringInfo(&cols, "%skey[%d]", j ? ", " : "", j + 1);
	role_enter(&r, BOOTSTRAP_SUPERUSERID);
	run_sql(psprintf("SELECT %s FROM %s.gptoss_enrich_queue WHERE enrichment = $1 AND attempts < $2"
					 " AND next_try <= now() ORDER BY queued_at LIMIT $3 FOR UPDATE SKIP LOCKED",
					 cols.data, e->schema),
			3, types, values, NULL);
	keys = keys_new(e->npk, (int) SPI_processed);
	keys_append_spi(keys, (int) SPI_processed);
	role_leave(&r);
	return keys;
}

/* ---------------------------------------------------------------------------
 * Keys of inserted rows, collected row by row
 *
 * An INSERT or COPY hands each row to the enrichment's AFTER INSERT FOR EACH
 * ROW trigger, which only appends the row's key columns (as text) to this
 * backend's list; the statement's AFTER INSERT FOR EACH STATEMENT trigger,
 * which PostgreSQL fires after the statement's row triggers, takes them.  A
 * transition table would do the same at the price of a copy of every whole
 * row (bench/RESULTS.md).  Keys are kept per enrichment and subtransaction:
 * a subtransaction's abort drops its keys with the rows they name, its
 * commit hands them to its parent.  Keys that no statement trigger took (a
 * row routed into an enriched partition through its parent fires only the
 * partition's row triggers) go into the inbox just before the commit, so
 * that no committed row is left out.
 */

/* Keys collected for one enrichment in one subtransaction. */
typedef struct CollectedKeys
{
	int			enrichment;
	Oid			relid;			/* the table whose row trigger collected them */
	SubTransactionId subxid;
	MemoryContext cxt;			/* holds this entry and its keys */
	int			npk;
	AttrNumber	pk_attnums[INDEX_MAX_KEYS];
	FmgrInfo	out[INDEX_MAX_KEYS];	/* output function of each key column */
	EnrichKeys *keys;
	int			capacity;
	struct CollectedKeys *next;
} CollectedKeys;

/* This transaction's collected keys (in collected_cxt, emptied at its end). */
static CollectedKeys *collected = NULL;
static MemoryContext collected_cxt = NULL;

static void collected_xact_callback(XactEvent event, void *arg);
static void collected_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
									   SubTransactionId parentSubid, void *arg);

/* The link to enrichment id's entry for rows of relid in subxid (pointing at NULL when there is none). */
static CollectedKeys **
collected_link(int id, Oid relid, SubTransactionId subxid)
{
	CollectedKeys **link = &collected;

	while (*link != NULL &&
		   !((*link)->enrichment == id && (*link)->relid == relid && (*link)->subxid == subxid))
		link = &(*link)->next;
	return link;
}

/* A new, empty entry for enrichment id in subtransaction subxid, for rows of rel. */
static CollectedKeys *
collected_new(int id, SubTransactionId subxid, Relation rel)
{
	MemoryContext cxt;
	CollectedKeys *c;

	if (collected_cxt == NULL)
	{
		collected_cxt = AllocSetContextCreate(TopMemoryContext, "gptoss enrichment keys",
											  ALLOCSET_DEFAULT_SIZES);
		RegisterXactCallback(collected_xact_callback, NULL);
		RegisterSubXactCallback(collected_subxact_callback, NULL);
	}
	cxt = AllocSetContextCreate(collected_cxt, "gptoss enrichment keys of a statement",
								ALLOCSET_DEFAULT_SIZES);
	c = MemoryContextAllocZero(cxt, sizeof(CollectedKeys));
	c->enrichment = id;
	c->relid = RelationGetRelid(rel);
	c->subxid = subxid;
	c->cxt = cxt;
	c->npk = primary_key_columns(rel, c->pk_attnums);
	for (int j = 0; j < c->npk; j++)
	{
		Oid			typout;
		bool		varlena;

		getTypeOutputInfo(TupleDescAttr(RelationGetDescr(rel), c->pk_attnums[j] - 1)->atttypid,
						  &typout, &varlena);
		fmgr_info_cxt(typout, &c->out[j], cxt);
	}
	c->capacity = 1024;
	c->keys = MemoryContextAllocZero(cxt, sizeof(EnrichKeys));
	c->keys->npk = c->npk;
	c->keys->cols = MemoryContextAlloc(cxt, sizeof(Datum *) * c->npk);
	for (int j = 0; j < c->npk; j++)
		c->keys->cols[j] = MemoryContextAlloc(cxt, sizeof(Datum) * c->capacity);
	c->next = collected;
	collected = c;
	return c;
}

/* Appends the key of the row in slot to enrichment id's keys of this subtransaction. */
static void
collect_key(int id, Relation rel, TupleTableSlot *slot)
{
	SubTransactionId subxid = GetCurrentSubTransactionId();
	CollectedKeys *c = *collected_link(id, RelationGetRelid(rel), subxid);
	MemoryContext old;

	if (c == NULL)
		c = collected_new(id, subxid, rel);
	old = MemoryContextSwitchTo(c->cxt);
	if (c->keys->n == c->capacity)
	{
		c->capacity *= 2;
		for (int j = 0; j < c->npk; j++)
			c->keys->cols[j] = repalloc(c->keys->cols[j], sizeof(Datum) * c->capacity);
	}
	for (int j = 0; j < c->npk; j++)
	{
		bool		isnull;
		Datum		d = slot_getattr(slot, c->pk_attnums[j], &isnull);

		if (isnull)
			elog(ERROR, "gptoss enrichment: NULL primary key value");
		c->keys->cols[j][c->keys->n] = CStringGetTextDatum(OutputFunctionCall(&c->out[j], d));
	}
	c->keys->n++;
	MemoryContextSwitchTo(old);
}

/* Frees entry c, which is no longer on the list. */
static void
collected_free(CollectedKeys *c)
{
	MemoryContextDelete(c->cxt);
}

/*
 * Takes enrichment id's keys of rows of relid collected in this
 * subtransaction off the list: one entry (NULL when there is none).  Free it
 * with collected_free once its keys are stored.
 */
static CollectedKeys *
collected_take(int id, Oid relid)
{
	CollectedKeys **link = collected_link(id, relid, GetCurrentSubTransactionId());
	CollectedKeys *c = *link;

	if (c != NULL)
	{
		*link = c->next;
		c->next = NULL;
	}
	return c;
}

/* Puts keys into e's inbox, ENRICH_INBOX_CHUNK keys an inbox row. */
static void
inbox_insert_all(Enrichment *e, EnrichKeys *keys)
{
	for (int first = 0; first < keys->n; first += ENRICH_INBOX_CHUNK)
		inbox_insert(e, keys, first, Min(ENRICH_INBOX_CHUNK, keys->n - first));
}

/* Before the commit: keys that no statement trigger took go into the inbox (see above). */
static void
queue_leftover_keys(void)
{
	/* no statement runs at this point: the queueing needs a snapshot of its own */
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	if (enrich_schema() != NULL)
	{
		while (collected != NULL)
		{
			CollectedKeys *c = collected;
			Enrichment *e = enrich_load(c->enrichment, true);

			collected = c->next;
			/*
			 * Not for an enrichment dropped since, nor one of another table
			 * (a trigger created by hand), nor when the key changed.
			 */
			if (e != NULL && e->relid == c->relid && e->npk == c->npk && c->keys->n > 0)
			{
				inbox_insert_all(e, c->keys);
				enrich_wake_after_commit();
			}
			collected_free(c);
		}
	}
	SPI_finish();
	PopActiveSnapshot();
}

/* Transaction end: leftover keys are queued before the commit, and every key forgotten after. */
static void
collected_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			if (collected != NULL)
				queue_leftover_keys();
			break;
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
			break;
		default:
			collected = NULL;
			MemoryContextReset(collected_cxt);
			break;
	}
}

/* Subtransaction end: an abort drops its keys, a commit hands them to the parent. */
static void
collected_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						   SubTransactionId parentSubid, void *arg)
{
	CollectedKeys **link = &collected;

	if (event != SUBXACT_EVENT_ABORT_SUB && event != SUBXACT_EVENT_COMMIT_SUB)
		return;
	while (*link != NULL)
	{
		CollectedKeys *c = *link;

		if (c->subxid != mySubid)
			link = &c->next;
		else if (event == SUBXACT_EVENT_COMMIT_SUB)
		{
			c->subxid = parentSubid;
			link = &c->next;
		}
		else
		{
			*link = c->next;
			collected_free(c);
		}
	}
}

/* ---------------------------------------------------------------------------
 * The trigger
 */

/* Keys of the rows of this UPDATE whose prompt inputs changed (as the owner). */
static EnrichKeys *
changed_keys(Enrichment *e)
{
	StringInfoData sql;
	EnrichRole	r;
	EnrichKeys *keys;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT ");
	for (int j = 0; j < e->npk; j++)
		appendStringInfo(&sql, "%sgptoss_n.%s::text", j ? ", " : "", e->pk_cols[j]);
	/* a changed key counts as a new row */
	appendStringInfoString(&sql, " FROM " ENRICH_NEW_TABLE " AS gptoss_n LEFT JOIN " ENRICH_OLD_TABLE " AS gptoss_o ON ");
	for (int j = 0; j < e->npk; j++)
		appendStringInfo(&sql, "%sgptoss_n.%s %s gptoss_o.%s", j ? " AND " : "",
						 e->pk_cols[j], e->pk_eq[j], e->pk_cols[j]);
	appendStringInfo(&sql, " WHERE gptoss_o.%s IS NULL", e->pk_cols[0]);
	/* the prompt is built from the inputs' text, so their text is what counts */
	for (int j = 0; j < e->ninputs; j++)
		appendStringInfo(&sql, " OR gptoss_n.%s::text IS DISTINCT FROM gptoss_o.%s::text",
						 e->input_cols[j], e->input_cols[j]);
	role_enter(&r, e->owner);
	run_sql(sql.data, 0, NULL, NULL, NULL);
	keys = keys_new(e->npk, (int) SPI_processed);
	keys_append_spi(keys, (int) SPI_processed);
	role_leave(&r);
	return keys;
}

/*
 * gptoss_enrich_trigger(): the triggers of an enrichment (their argument: the
 * enrichment id).  AFTER INSERT FOR EACH ROW: collects the row's key.  AFTER
 * INSERT / UPDATE FOR EACH STATEMENT: the statement's rows, the inserted ones
 * (the collected keys, or the transition table of an enrichment created
 * before the row trigger existed) or the updated ones whose prompt inputs
 * changed.  Async or paused: they are queued.  Sync: they are generated as one
 * batch and written before the statement returns; rows that fail are queued
 * for the worker.
 */
Datum
gptoss_enrich_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Enrichment *e;
	EnrichKeys *keys;
	CollectedKeys *inserted = NULL;
	int			id;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		trigdata->tg_trigger->tgnargs != 1 ||
		(TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) && !TRIGGER_FIRED_BY_INSERT(trigdata->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("gptoss_enrich_trigger must be an AFTER INSERT FOR EACH ROW or an AFTER ... FOR EACH STATEMENT trigger with an enrichment id")));
	id = pg_strtoint32(trigdata->tg_trigger->tgargs[0]);
	if (TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
	{
		collect_key(id, trigdata->tg_relation, trigdata->tg_trigslot);
		return PointerGetDatum(NULL);
	}
	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) && trigdata->tg_newtable == NULL)
		inserted = collected_take(id, RelationGetRelid(trigdata->tg_relation));

	SPI_connect();
	if (SPI_register_trigger_data(trigdata) != SPI_OK_TD_REGISTER)
		elog(ERROR, "gptoss enrichment: could not register the transition tables");
	e = enrich_load(id, true);
	if (e == NULL)
	{
		/* the enrichment was dropped in this transaction */
		SPI_finish();
		if (inserted)
			collected_free(inserted);
		return PointerGetDatum(NULL);
	}
	if (e->relid != RelationGetRelid(trigdata->tg_relation))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("gptoss enrichment %d does not belong to table %s",
						id, RelationGetRelationName(trigdata->tg_relation))));

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		keys = changed_keys(e);
	else if (trigdata->tg_newtable != NULL)
		keys = inserted_keys(e, trigdata);
	else if (inserted != NULL)
	{
		if (inserted->npk != e->npk)
			elog(ERROR, "gptoss enrichment %d: the primary key of table %s changed during the statement",
				 id, RelationGetRelationName(trigdata->tg_relation));
		keys = inserted->keys;
	}
	else
		keys = keys_new(e->npk, 0);
	if (keys->n > 0)
	{
		if (e->async || e->paused)
		{
			/* inserted rows are new: the inbox takes them in bulk; changed ones go to the queue */
			if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
				queue_all(e, keys);
			else
				inbox_insert_all(e, keys);
			enrich_wake_after_commit();
		}
		else
		{
			EnrichResult *results = palloc(sizeof(EnrichResult) * keys->n);
			int64		tokens = enrich_process_keys(e, keys, results);

			enrich_record(e, keys, results, false, tokens);
			for (int i = 0; i < keys->n; i++)
				if (results[i].outcome == ENRICH_FAILED || results[i].outcome == ENRICH_SUPERSEDED)
				{
					enrich_wake_after_commit();
					break;
				}
		}
	}
	SPI_finish();
	if (inserted)
		collected_free(inserted);
	return PointerGetDatum(NULL);
}

/* ---------------------------------------------------------------------------
 * gptoss_enrich() and the management functions
 */

/* Raises 42501 unless the current user owns table relid. */
static void
check_owner(Oid relid)
{
	if (!pg_class_ownercheck(relid, GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of table %s", get_rel_name(relid))));
}

/*
 * Parses and analyses prompt_sql as an expression over the table (alias: its
 * name); returns the expression coerced to text, as nodeToString.
 */
static char *
analyse_prompt(Oid relid, AttrNumber target, const char *prompt_sql)
{
	char	   *relname = get_rel_name(relid);
	char	   *sql = psprintf("SELECT (%s\n) FROM ONLY %s AS %s", prompt_sql,
							   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), relname),
							   quote_identifier(relname));
	List	   *raw = raw_parser(sql, RAW_PARSE_DEFAULT);
	RawStmt    *rs;
	SelectStmt *sel;
	Query	   *query;
	Node	   *expr;
	Oid			type;
	Bitmapset  *attrs = NULL;
	int			k = -1;

	if (list_length(raw) != 1 || !IsA(linitial_node(RawStmt, raw)->stmt, SelectStmt))
		goto not_one;
	rs = linitial_node(RawStmt, raw);
	sel = (SelectStmt *) rs->stmt;
	if (list_length(sel->targetList) != 1 || list_length(sel->fromClause) != 1 ||
		sel->whereClause || sel->groupClause || sel->havingClause || sel->windowClause ||
		sel->valuesLists || sel->sortClause || sel->limitCount || sel->limitOffset ||
		sel->lockingClause || sel->withClause || sel->op != SETOP_NONE || sel->distinctClause ||
		sel->intoClause)
		goto not_one;

	query = parse_analyze_fixedparams(rs, sql, NULL, 0, NULL);
	if (query->hasAggs || query->hasWindowFuncs || query->hasTargetSRFs ||
		list_length(query->targetList) != 1)
		goto not_one;
	expr = (Node *) linitial_node(TargetEntry, query->targetList)->expr;
	type = exprType(expr);
	expr = coerce_to_target_type(NULL, expr, type, TEXTOID, -1, COERCION_IMPLICIT,
								 COERCE_IMPLICIT_CAST, -1);
	if (expr == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("prompt_sql must be an expression of type text, not %s", format_type_be(type))));

	pull_varattnos(expr, 1, &attrs);
	while ((k = bms_next_member(attrs, k)) >= 0)
	{
		AttrNumber	att = k + FirstLowInvalidHeapAttributeNumber;

		if (att <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_SYNTAX_ERROR),
					 errmsg("prompt_sql must name the columns it reads, not the whole row or system columns")));
		if (att == target)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_COLUMN_REFERENCE),
					 errmsg("prompt_sql must not read the target column")));
	}
	return nodeToString(expr);

not_one:
	ereport(ERROR,
			(errcode(ERRCODE_SYNTAX_ERROR),
			 errmsg("prompt_sql must be exactly one expression over the table's columns")));
	return NULL;				/* keep compiler quiet */
}

/* Reads key from params: an integer >= 1 (22023 otherwise); dflt when absent or null. */
static int
param_int(Jsonb *params, const char *key, int dflt)
{
	JsonbValue *v = getKeyJsonValueFromContainer(&params->root, key, strlen(key), NULL);
	Datum		d;
	int32		i;

	if (v == NULL || v->type == jbvNull)
		return dflt;
	if (v->type != jbvNumeric)
		goto bad;
	d = DirectFunctionCall1(numeric_int4, NumericGetDatum(v->val.numeric));
	i = DatumGetInt32(d);
	if (i < 1 || DatumGetBool(DirectFunctionCall2(numeric_ne, NumericGetDatum(v->val.numeric),
												  DirectFunctionCall1(int4_numeric, d))))
		goto bad;
	return i;
bad:
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid gptoss parameter \"%s\": must be an integer of at least 1", key)));
	return dflt;
}

/* Reads boolean key from params (22023 for another type); dflt when absent or null. */
static bool
param_bool(Jsonb *params, const char *key, bool dflt)
{
	JsonbValue *v = getKeyJsonValueFromContainer(&params->root, key, strlen(key), NULL);

	if (v == NULL || v->type == jbvNull)
		return dflt;
	if (v->type != jbvBool)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid gptoss parameter \"%s\": must be a boolean", key)));
	return v->val.boolean;
}

/* params without the enrichment's own keys. */
static Jsonb *
generation_params(Jsonb *params)
{
	Datum		d = JsonbPGetDatum(params);

	d = DirectFunctionCall2(jsonb_delete, d, CStringGetTextDatum("max_attempts"));
	d = DirectFunctionCall2(jsonb_delete, d, CStringGetTextDatum("backfill"));
	return DatumGetJsonbP(d);
}

/* Queues the rows of e's table whose target is NULL (as the owner reads, the superuser queues). */
static void
queue_backfill(Enrichment *e)
{
	StringInfoData sql;
	EnrichRole	r;
	Portal		portal;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT ");
	for (int j = 0; j < e->npk; j++)
		appendStringInfo(&sql, "%s%s.%s::text", j ? ", " : "", e->alias, e->pk_cols[j]);
	appendStringInfo(&sql, " FROM ONLY %s AS %s WHERE %s.%s IS NULL", e->rel, e->alias, e->alias, e->target);
	role_enter(&r, e->owner);
	portal = SPI_cursor_open_with_args(NULL, sql.data, 0, NULL, NULL, NULL, true, 0);
	role_leave(&r);
	for (;;)
	{
		EnrichKeys *keys;

		role_enter(&r, e->owner);
		SPI_cursor_fetch(portal, true, ENRICH_BACKFILL_FETCH);
		keys = keys_new(e->npk, (int) SPI_processed);
		keys_append_spi(keys, (int) SPI_processed);
		role_leave(&r);
		if (keys->n == 0)
			break;
		inbox_insert(e, keys, 0, keys->n);
	}
	SPI_cursor_close(portal);
}

/*
 * gptoss_enrich(tbl regclass, target_column name, prompt_sql text, params
 * jsonb, mode text) returns int: creates an enrichment, returns its id.
 */
Datum
gptoss_enrich(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *column;
	char	   *prompt_sql;
	Jsonb	   *params;
	Jsonb	   *gen_params;
	char	   *mode;
	AttrNumber	attnum;
	Oid			atttype;
	char	   *prompt_expr;
	int			max_attempts;
	bool		backfill;
	char	   *schema;
	EnrichRole	r;
	Relation	rel;
	bool		has_pk;
	int			id;
	Enrichment *e;
	gptoss_gen_params parsed;

	for (int i = 0; i < 5; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("the arguments of gptoss_enrich must not be null")));
	relid = PG_GETARG_OID(0);
	column = NameStr(*PG_GETARG_NAME(1));
	prompt_sql = text_to_cstring(PG_GETARG_TEXT_PP(2));
	params = PG_GETARG_JSONB_P(3);
	mode = text_to_cstring(PG_GETARG_TEXT_PP(4));

	gptoss_check_preloaded();
	if (strcmp(mode, "sync") != 0 && strcmp(mode, "async") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("gptoss enrichment mode must be \"sync\" or \"async\", not \"%s\"", mode)));

	/* the table: owned by the caller, a plain table with a primary key */
	rel = table_open(relid, ShareRowExclusiveLock);
	if (rel->rd_rel->relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", RelationGetRelationName(rel))));
	check_owner(relid);
	has_pk = OidIsValid(RelationGetPrimaryKeyIndex(rel));
	table_close(rel, NoLock);
	if (!has_pk)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s has no primary key", get_rel_name(relid)),
				 errdetail("An enrichment finds its rows by their primary key.")));

	/* the target column: text or jsonb */
	attnum = get_attnum(relid, column);
	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist", column, get_rel_name(relid))));
	atttype = get_atttype(relid, attnum);
	if (atttype != TEXTOID && atttype != JSONBOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" is of type %s, but an enrichment fills text or jsonb columns",
						column, format_type_be(atttype))));

	/* params: the enrichment's own keys, then the generation params as gptoss_generate checks them */
	if (!JB_ROOT_IS_OBJECT(params))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("gptoss params must be a JSON object")));
	max_attempts = param_int(params, "max_attempts", ENRICH_DEFAULT_MAX_ATTEMPTS);
	backfill = param_bool(params, "backfill", true);
	gen_params = generation_params(params);
	gptoss_parse_params(gen_params, &parsed);

	prompt_expr = analyse_prompt(relid, attnum, prompt_sql);

	SPI_connect();
	schema = enrich_schema();
	if (schema == NULL)
		elog(ERROR, "gptoss enrichment: extension schema not found");
	role_enter(&r, BOOTSTRAP_SUPERUSERID);
	{
		Oid			types[2] = {OIDOID, INT2OID};
		Datum		values[2] = {ObjectIdGetDatum(relid), Int16GetDatum(attnum)};

		run_sql(psprintf("SELECT 1 FROM %s.gptoss_enrichment WHERE relid = $1 AND attnum = $2", schema),
				2, types, values, NULL);
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("column \"%s\" of table %s already has an enrichment", column, get_rel_name(relid))));
	}
	{
		Oid			types[7] = {OIDOID, INT2OID, TEXTOID, TEXTOID, JSONBOID, TEXTOID, INT4OID};
		Datum		values[7] = {ObjectIdGetDatum(relid), Int16GetDatum(attnum),
			CStringGetTextDatum(prompt_sql), CStringGetTextDatum(prompt_expr),
			JsonbPGetDatum(gen_params), CStringGetTextDatum(mode), Int32GetDatum(max_attempts)};
		bool		isnull;

		run_sql(psprintf("INSERT INTO %s.gptoss_enrichment (relid, attnum, prompt_sql, prompt_expr, params, mode, max_attempts)"
						 " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id", schema),
				7, types, values, NULL);
		id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	role_leave(&r);

	/* the triggers, created by the caller (the owner) */
	{
		char	   *qrel = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
													  get_rel_name(relid));

		run_sql(psprintf("CREATE TRIGGER gptoss_enrich_%d_insert_row AFTER INSERT ON %s"
						 " FOR EACH ROW EXECUTE FUNCTION %s.gptoss_enrich_trigger('%d')",
						 id, qrel, schema, id), 0, NULL, NULL, NULL);
		run_sql(psprintf("CREATE TRIGGER gptoss_enrich_%d_insert AFTER INSERT ON %s"
						 " FOR EACH STATEMENT EXECUTE FUNCTION %s.gptoss_enrich_trigger('%d')",
						 id, qrel, schema, id), 0, NULL, NULL, NULL);
		run_sql(psprintf("CREATE TRIGGER gptoss_enrich_%d_update AFTER UPDATE ON %s"
						 " REFERENCING OLD TABLE AS " ENRICH_OLD_TABLE " NEW TABLE AS " ENRICH_NEW_TABLE
						 " FOR EACH STATEMENT EXECUTE FUNCTION %s.gptoss_enrich_trigger('%d')",
						 id, qrel, schema, id), 0, NULL, NULL, NULL);
	}

	e = enrich_load(id, false);
	if (backfill)
		queue_backfill(e);
	SPI_finish();
	enrich_wake_after_commit();
	PG_RETURN_INT32(id);
}

/* Loads enrichment id for a management function: it exists (42704) and the caller owns its table (42501). */
static Enrichment *
managed_enrichment(int id)
{
	Enrichment *e;

	e = enrich_load(id, false);
	check_owner(e->relid);
	return e;
}

/* Runs a catalog statement (each %s: the schema; $1: the enrichment id) as the superuser; returns rows processed. */
static uint64
catalog_sql(Enrichment *e, const char *fmt)
{
	EnrichRole	r;
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(e->id)};
	uint64		n;

	role_enter(&r, BOOTSTRAP_SUPERUSERID);
	n = run_sql(psprintf(fmt, e->schema, e->schema), 1, types, values, NULL);
	role_leave(&r);
	return n;
}

/* Deletes enrichment ids matching where (over gptoss_enrichment), with their queue and log. */
static void
delete_enrichments(const char *schema, const char *where, int nargs, Oid *types, Datum *values)
{
	EnrichRole	r;
	SPITupleTable *deleted;

	role_enter(&r, BOOTSTRAP_SUPERUSERID);
	run_sql(psprintf("DELETE FROM %s.gptoss_enrichment WHERE %s RETURNING id", schema, where),
			nargs, types, values, NULL);
	deleted = SPI_tuptable;
	for (uint64 i = 0, n = SPI_processed; i < n; i++)
	{
		Oid			idtype[1] = {INT4OID};
		bool		isnull;
		Datum		id[1];

		id[0] = SPI_getbinval(deleted->vals[i], deleted->tupdesc, 1, &isnull);
		/* the inbox before the queue, in the order the worker locks them */
		run_sql(psprintf("DELETE FROM %s.gptoss_enrich_inbox WHERE enrichment = $1", schema), 1, idtype, id, NULL);
		run_sql(psprintf("DELETE FROM %s.gptoss_enrich_queue WHERE enrichment = $1", schema), 1, idtype, id, NULL);
		run_sql(psprintf("DELETE FROM %s.gptoss_enrich_log WHERE enrichment = $1", schema), 1, idtype, id, NULL);
	}
	role_leave(&r);
}

/* gptoss_enrich_drop(id int): drops the enrichment, its triggers and its queue. */
Datum
gptoss_enrich_drop(PG_FUNCTION_ARGS)
{
	int			id = PG_GETARG_INT32(0);
	Enrichment *e;
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(id)};

	SPI_connect();
	e = managed_enrichment(id);
	run_sql(psprintf("DROP TRIGGER IF EXISTS gptoss_enrich_%d_insert_row ON %s", id, e->rel), 0, NULL, NULL, NULL);
	run_sql(psprintf("DROP TRIGGER IF EXISTS gptoss_enrich_%d_insert ON %s", id, e->rel), 0, NULL, NULL, NULL);
	run_sql(psprintf("DROP TRIGGER IF EXISTS gptoss_enrich_%d_update ON %s", id, e->rel), 0, NULL, NULL, NULL);
	delete_enrichments(e->schema, "id = $1", 1, types, values);
	SPI_finish();
	PG_RETURN_VOID();
}

/* gptoss_enrich_pause(id int): the worker leaves its rows queued; new rows are queued, not generated. */
Datum
gptoss_enrich_pause(PG_FUNCTION_ARGS)
{
	Enrichment *e;

	SPI_connect();
	e = managed_enrichment(PG_GETARG_INT32(0));
	catalog_sql(e, "UPDATE %s.gptoss_enrichment SET paused = true WHERE id = $1");
	SPI_finish();
	PG_RETURN_VOID();
}

/* gptoss_enrich_resume(id int): the worker takes its queued rows again. */
Datum
gptoss_enrich_resume(PG_FUNCTION_ARGS)
{
	Enrichment *e;

	SPI_connect();
	e = managed_enrichment(PG_GETARG_INT32(0));
	catalog_sql(e, "UPDATE %s.gptoss_enrichment SET paused = false WHERE id = $1");
	SPI_finish();
	enrich_wake_after_commit();
	PG_RETURN_VOID();
}

/* gptoss_enrich_retry_failed(id int) returns bigint: queues the failed rows again with fresh attempts. */
Datum
gptoss_enrich_retry_failed(PG_FUNCTION_ARGS)
{
	Enrichment *e;
	uint64		n;

	SPI_connect();
	e = managed_enrichment(PG_GETARG_INT32(0));
	n = catalog_sql(e, "UPDATE %s.gptoss_enrich_queue q SET attempts = 0, next_try = now()"
					" FROM %s.gptoss_enrichment e WHERE e.id = $1 AND q.enrichment = e.id"
					" AND q.attempts >= e.max_attempts");
	SPI_finish();
	enrich_wake_after_commit();
	PG_RETURN_INT64((int64) n);
}

/*
 * gptoss_enrich_on_drop(): sql_drop event trigger: a dropped table (or
 * target column) takes its enrichments with it.
 */
Datum
gptoss_enrich_on_drop(PG_FUNCTION_ARGS)
{
	char	   *schema;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("gptoss_enrich_on_drop must be called as an event trigger")));
	SPI_connect();
	schema = enrich_schema();
	if (schema != NULL)
	{
		uint64		n;
		SPITupleTable *dropped;

		run_sql("SELECT objid, objsubid FROM pg_event_trigger_dropped_objects()"
				" WHERE classid = 'pg_class'::regclass AND object_type IN ('table', 'table column')",
				0, NULL, NULL, NULL);
		n = SPI_processed;
		dropped = SPI_tuptable;
		for (uint64 i = 0; i < n; i++)
		{
			bool		isnull;
			Oid			types[2] = {OIDOID, INT4OID};
			Datum		values[2];

			values[0] = SPI_getbinval(dropped->vals[i], dropped->tupdesc, 1, &isnull);
			values[1] = SPI_getbinval(dropped->vals[i], dropped->tupdesc, 2, &isnull);
			delete_enrichments(schema, "relid = $1 AND ($2 = 0 OR attnum = $2)", 2, types, values);
		}
	}
	SPI_finish();
	PG_RETURN_VOID();
}
