/*
 * batch_scan.c: the GptossBatch custom scan node, which runs the per-row
 * gptoss_generate / gptoss_chat / gptoss_generate_json calls of a query many
 * rows at a time.
 *
 * A scalar function in a target list is called row after row, so
 * SELECT gptoss_generate(body) FROM docs would keep one sequence in the
 * worker's batch.  The planner hook below finds the plan nodes whose target
 * list calls those functions and puts a GptossBatch node above each:
 *
 *     Custom Scan (GptossBatch)      evaluates the calls, the rest of the tlist
 *       ->  Seq Scan on docs         now outputs the calls' arguments instead
 *
 * The node reads rows ahead from its child, sends a request per call and row
 * into a pipeline of gptoss.batch_window requests (pipeline.h), and returns
 * the rows in input order with the results filled in while the requests of
 * the next rows keep running.
 *
 * Why a planner hook and not path hooks: which plan node evaluates which
 * target-list expression is only settled by create_plan and
 * set_plan_references (the final projection is applied to whichever path
 * wins, and LIMIT or ORDER BY can postpone expensive expressions to a Result
 * above a Sort).  Rewriting the finished plan sees exactly those nodes, in
 * the main query, subqueries, CTEs and below ModifyTable alike, and leaves
 * path costing untouched: the node changes when calls run, not what the
 * query reads.
 *
 * What batches: calls evaluated unconditionally in a projecting node's
 * target list (scans, joins, Agg/Group/WindowAgg output, projection
 * Results, Gather), directly or inside function calls, operators and casts,
 * with arguments that are neither volatile nor contain another call.  What
 * stays row-by-row: calls in WHERE, in RETURNING, inside CASE / COALESCE /
 * AND / OR (they may not run for every row), inside aggregate or window
 * function arguments, in SRF projections, in the inner input of a merge join
 * (it needs mark/restore), below a Gather, and in SCROLL cursors.
 *
 * Under a LIMIT directly above (count and offset known when execution
 * starts), the node reads at most offset + count rows, so LIMIT k runs
 * exactly k generations.  Elsewhere it may start up to a window of
 * generations that nobody reads; a shutdown (a cursor's fetch ending, a
 * LIMIT further up being reached) ends them at once, and the rows already
 * read ahead are sent again when execution resumes.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/explain.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "nodes/extensible.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "optimizer/planner.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "gptoss.h"
#include "pipeline.h"

#define BATCH_NODE_NAME "GptossBatch"

/* The functions the node batches. */
typedef enum BatchCallKind
{
	CALL_NONE = 0,
	CALL_GENERATE,
	CALL_CHAT,
	CALL_JSON
} BatchCallKind;

/* Most arguments of a batched function (gptoss_generate_json's prompt, schema, params). */
#define MAX_CALL_ARGS 3

/* Arguments of each kind of call. */
static const int call_nargs[] = {0, 2, 2, 3};

int			gptoss_batch_window = 1;

static planner_hook_type prev_planner_hook = NULL;

/* ---------------------------------------------------------------------------
 * Planning
 */

/* One call found in a target list while splitting it. */
typedef struct SplitCall
{
	BatchCallKind kind;
	FuncExpr   *call;			/* the original call */
	AttrNumber	args[MAX_CALL_ARGS];	/* child output columns of the arguments */
	Var		   *result;			/* its replacement in the node's target list */
} SplitCall;

/* State of splitting one target list between the child and the node. */
typedef struct SplitContext
{
	List	   *child_tlist;	/* what the child computes now */
	List	   *calls;			/* SplitCall, in evaluation order */
	bool		ok;				/* false: leave the target list alone */
} SplitContext;

/* State of rewriting one statement. */
typedef struct RewriteContext
{
	int			next_plan_node_id;
} RewriteContext;

/* Where a plan sits, as far as wrapping it matters. */
typedef struct PlanPosition
{
	bool		needs_mark;		/* inner input of a merge join: must support mark/restore */
	bool		under_gather;	/* runs in parallel workers too */
	Limit	   *limit;			/* a LIMIT directly above */
} PlanPosition;

/* True when a pg_proc.probin names this library. */
static bool
is_gptoss_library(const char *probin)
{
	const char *base = strrchr(probin, '/');
	size_t		len;

	base = base ? base + 1 : probin;
	len = strlen(base);
	if (len > 3 && strcmp(base + len - 3, ".so") == 0)
		len -= 3;
	return len == 6 && strncmp(base, "gptoss", 6) == 0;
}

/* Which of the batched functions funcid is, if any. */
static BatchCallKind
call_kind(Oid funcid)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	BatchCallKind kind = CALL_NONE;
	Form_pg_proc proc;

	if (!HeapTupleIsValid(tup))
		return CALL_NONE;
	proc = (Form_pg_proc) GETSTRUCT(tup);
	if (proc->prolang == ClanguageId && !proc->proretset)
	{
		bool		src_null;
		bool		bin_null;
		Datum		src = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_prosrc, &src_null);
		Datum		bin = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_probin, &bin_null);

		if (!src_null && !bin_null && is_gptoss_library(TextDatumGetCString(bin)))
		{
			char	   *name = TextDatumGetCString(src);

			if (strcmp(name, "gptoss_generate") == 0)
				kind = CALL_GENERATE;
			else if (strcmp(name, "gptoss_chat") == 0)
				kind = CALL_CHAT;
			else if (strcmp(name, "gptoss_generate_json") == 0)
				kind = CALL_JSON;
			if (proc->pronargs != call_nargs[kind])
				kind = CALL_NONE;
		}
	}
	ReleaseSysCache(tup);
	return kind;
}

/* The kind of node when it is a call of a batched function. */
static BatchCallKind
node_call_kind(Node *node)
{
	FuncExpr   *fe;

	if (node == NULL || !IsA(node, FuncExpr))
		return CALL_NONE;
	fe = (FuncExpr *) node;
	if (fe->funcretset || (fe->funcresulttype != TEXTOID && fe->funcresulttype != JSONBOID))
		return CALL_NONE;
	return call_kind(fe->funcid);
}

/* expression_tree_walker callback: true at the first batched call. */
static bool
contains_call_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (node_call_kind(node) != CALL_NONE)
		return true;
	return expression_tree_walker(node, contains_call_walker, context);
}

/* True when node calls a batched function anywhere. */
static bool
contains_call(Node *node)
{
	return contains_call_walker(node, NULL);
}

/*
 * True for expression nodes that evaluate every argument for every row, so a
 * call below them runs exactly as often batched as row-by-row.
 */
static bool
evaluates_all_args(Node *node)
{
	switch (nodeTag(node))
	{
		case T_FuncExpr:
			return !((FuncExpr *) node)->funcretset;
		case T_OpExpr:
			return !((OpExpr *) node)->opretset;
		case T_DistinctExpr:
		case T_NullIfExpr:
		case T_RelabelType:
		case T_CoerceViaIO:
		case T_CoerceToDomain:
		case T_CollateExpr:
		case T_ArrayExpr:
		case T_RowExpr:
		case T_FieldSelect:
			return true;
		default:
			return false;
	}
}

/* A Var of the node's scan tuple (custom_scan_tlist) for column attno of type like expr. */
static Var *
scan_var(Index varno, AttrNumber attno, Node *expr)
{
	return makeVar(varno, attno, exprType(expr), exprTypmod(expr), exprCollation(expr), 0);
}

/*
 * Returns a reference to expr as a column of the child's output, adding the
 * column unless an equal non-volatile one is there.
 */
static Node *
child_column(SplitContext *cx, Node *expr)
{
	TargetEntry *tle;
	ListCell   *lc;

	if (!contain_volatile_functions(expr))
	{
		foreach(lc, cx->child_tlist)
		{
			tle = lfirst_node(TargetEntry, lc);
			if (equal(tle->expr, expr))
				return (Node *) scan_var(INDEX_VAR, tle->resno, expr);
		}
	}
	tle = makeTargetEntry((Expr *) copyObject(expr), list_length(cx->child_tlist) + 1, NULL, false);
	cx->child_tlist = lappend(cx->child_tlist, tle);
	return (Node *) scan_var(INDEX_VAR, tle->resno, expr);
}

/* Replaces one call by a reference to its result; its arguments become child columns. */
static Node *
split_call(FuncExpr *call, BatchCallKind kind, SplitContext *cx)
{
	SplitCall  *sc = palloc0(sizeof(SplitCall));
	int			i = 0;
	ListCell   *lc;

	if (list_length(call->args) != call_nargs[kind])
	{
		cx->ok = false;
		return (Node *) call;
	}
	foreach(lc, call->args)
	{
		Node	   *arg = lfirst(lc);

		/* Arguments are evaluated ahead of the call: only when that cannot change them. */
		if (contains_call(arg) || contain_volatile_functions(arg))
		{
			cx->ok = false;
			return (Node *) call;
		}
		sc->args[i++] = castNode(Var, child_column(cx, arg))->varattno;
	}
	sc->kind = kind;
	sc->call = call;
	/* varattno is set once the child's columns are known (make_batch_scan). */
	sc->result = makeVar(INDEX_VAR, 0, call->funcresulttype, -1, call->funccollid, 0);
	cx->calls = lappend(cx->calls, sc);
	return (Node *) sc->result;
}

/*
 * expression_tree_mutator callback: splits an expression of the wrapped
 * node's target list into what the child computes (call-free parts and call
 * arguments, as columns) and what the batch node evaluates (the calls, the
 * expressions above them, and volatile functions and operators over child
 * columns, so that these run when the row is returned, not when it is read
 * ahead).  Anything else (aggregates, subplans, CASE) goes to the child
 * whole.
 */
static Node *
split_mutator(Node *node, SplitContext *cx)
{
	BatchCallKind kind;

	if (node == NULL || !cx->ok)
		return node;
	if (IsA(node, List))
		return expression_tree_mutator(node, split_mutator, cx);
	if (IsA(node, Const))
		return copyObject(node);
	kind = node_call_kind(node);
	if (kind != CALL_NONE)
		return split_call((FuncExpr *) node, kind, cx);
	if (!contains_call(node))
	{
		/* Volatile operators run when the row is returned; all else in the child. */
		if (contain_volatile_functions(node) && evaluates_all_args(node))
			return expression_tree_mutator(node, split_mutator, cx);
		return child_column(cx, node);
	}
	if (!evaluates_all_args(node))
	{
		cx->ok = false;
		return node;
	}
	return expression_tree_mutator(node, split_mutator, cx);
}

/* True for plan nodes that evaluate their target list once per output row. */
static bool
projects_rows(Plan *plan)
{
	switch (nodeTag(plan))
	{
		case T_SeqScan:
		case T_SampleScan:
		case T_IndexScan:
		case T_IndexOnlyScan:
		case T_BitmapHeapScan:
		case T_TidScan:
		case T_TidRangeScan:
		case T_SubqueryScan:
		case T_FunctionScan:
		case T_TableFuncScan:
		case T_ValuesScan:
		case T_CteScan:
		case T_NamedTuplestoreScan:
		case T_WorkTableScan:
		case T_ForeignScan:
		case T_NestLoop:
		case T_MergeJoin:
		case T_HashJoin:
		case T_Agg:
		case T_Group:
		case T_WindowAgg:
		case T_Gather:
		case T_GatherMerge:
			return true;
		case T_Result:
			/* Without an input a Result returns one row: nothing to batch. */
			return plan->lefttree != NULL;
		default:
			return false;
	}
}

static CustomScanMethods batch_scan_methods;

/* Builds the GptossBatch node above plan from a successful split of its target list. */
static CustomScan *
make_batch_scan(Plan *plan, List *tlist, SplitContext *cx, Limit *limit, int plan_node_id)
{
	CustomScan *cs = makeNode(CustomScan);
	List	   *scan_tlist = NIL;
	List	   *calls = NIL;
	int			nchild = list_length(cx->child_tlist);
	int			k = 0;
	ListCell   *lc;

	/* The scan tuple: the child's columns, then one result per call. */
	foreach(lc, cx->child_tlist)
	{
		TargetEntry *tle = lfirst_node(TargetEntry, lc);

		scan_tlist = lappend(scan_tlist,
							 makeTargetEntry((Expr *) scan_var(OUTER_VAR, tle->resno, (Node *) tle->expr),
											 tle->resno, NULL, false));
	}
	foreach(lc, cx->calls)
	{
		SplitCall  *sc = lfirst(lc);
		FuncExpr   *shown = copyObject(sc->call);
		List	   *spec = list_make1_int(sc->kind);

		/* What EXPLAIN VERBOSE shows for the result column. */
		shown->args = NIL;
		for (int a = 0; a < call_nargs[sc->kind]; a++)
		{
			TargetEntry *arg = list_nth(cx->child_tlist, sc->args[a] - 1);

			shown->args = lappend(shown->args, scan_var(OUTER_VAR, sc->args[a], (Node *) arg->expr));
			spec = lappend_int(spec, sc->args[a]);
		}
		k++;
		sc->result->varattno = nchild + k;
		scan_tlist = lappend(scan_tlist, makeTargetEntry((Expr *) shown, nchild + k, NULL, false));
		calls = lappend(calls, spec);
	}

	cs->scan.plan.startup_cost = plan->startup_cost;
	cs->scan.plan.total_cost = plan->total_cost;
	cs->scan.plan.plan_rows = plan->plan_rows;
	cs->scan.plan.plan_width = plan->plan_width;
	cs->scan.plan.parallel_aware = false;
	cs->scan.plan.parallel_safe = false;
	cs->scan.plan.plan_node_id = plan_node_id;
	cs->scan.plan.targetlist = tlist;
	cs->scan.plan.extParam = bms_copy(plan->extParam);
	cs->scan.plan.allParam = bms_copy(plan->allParam);

	/*
	 * The child runs as the node's custom_plans member; it is also the
	 * lefttree so that EXPLAIN resolves the OUTER_VAR references of
	 * custom_scan_tlist against the child's output.  The executor only
	 * starts custom_plans.
	 */
	cs->scan.plan.lefttree = plan;
	cs->scan.scanrelid = 0;
	cs->custom_plans = list_make1(plan);
	cs->custom_scan_tlist = scan_tlist;
	cs->custom_private = calls;
	if (limit != NULL)
		cs->custom_exprs = list_make2(copyObject(limit->limitOffset), copyObject(limit->limitCount));
	cs->methods = &batch_scan_methods;
	return cs;
}

/* Wraps *slot in a GptossBatch node when its target list has calls to batch. */
static void
maybe_wrap(Plan **slot, PlanPosition pos, RewriteContext *rc)
{
	Plan	   *plan = *slot;
	SplitContext cx = {NIL, NIL, true};
	List	   *tlist = NIL;
	ListCell   *lc;

	if (pos.needs_mark || pos.under_gather || !projects_rows(plan) ||
		!contains_call((Node *) plan->targetlist))
		return;
	foreach(lc, plan->targetlist)
	{
		TargetEntry *tle = flatCopyTargetEntry(lfirst_node(TargetEntry, lc));

		tle->expr = (Expr *) split_mutator((Node *) tle->expr, &cx);
		tlist = lappend(tlist, tle);
	}
	if (!cx.ok || cx.calls == NIL)
		return;
	*slot = (Plan *) make_batch_scan(plan, tlist, &cx, pos.limit, rc->next_plan_node_id++);
	plan->targetlist = cx.child_tlist;
}

/* Pointers to the child plans of plan. */
static List *
child_slots(Plan *plan)
{
	List	   *slots = NIL;
	ListCell   *lc;

	if (plan->lefttree != NULL)
		slots = lappend(slots, &plan->lefttree);
	if (plan->righttree != NULL)
		slots = lappend(slots, &plan->righttree);
	switch (nodeTag(plan))
	{
		case T_Append:
			foreach(lc, ((Append *) plan)->appendplans)
				slots = lappend(slots, &lfirst(lc));
			break;
		case T_MergeAppend:
			foreach(lc, ((MergeAppend *) plan)->mergeplans)
				slots = lappend(slots, &lfirst(lc));
			break;
		case T_SubqueryScan:
			slots = lappend(slots, &((SubqueryScan *) plan)->subplan);
			break;
		case T_CustomScan:
			/* A GptossBatch's lefttree is its custom plan: visit it once. */
			if (((CustomScan *) plan)->methods != &batch_scan_methods)
				foreach(lc, ((CustomScan *) plan)->custom_plans)
					slots = lappend(slots, &lfirst(lc));
			break;
		case T_BitmapAnd:
			foreach(lc, ((BitmapAnd *) plan)->bitmapplans)
				slots = lappend(slots, &lfirst(lc));
			break;
		case T_BitmapOr:
			foreach(lc, ((BitmapOr *) plan)->bitmapplans)
				slots = lappend(slots, &lfirst(lc));
			break;
		default:
			break;
	}
	return slots;
}

/* Largest plan_node_id in the tree under plan. */
static int
max_plan_node_id(Plan *plan)
{
	int			max = plan->plan_node_id;
	ListCell   *lc;

	foreach(lc, child_slots(plan))
		max = Max(max, max_plan_node_id(*(Plan **) lfirst(lc)));
	return max;
}

/* Rewrites the tree under *slot bottom-up; pos says where *slot sits. */
static void
rewrite_plan(Plan **slot, PlanPosition pos, RewriteContext *rc)
{
	Plan	   *plan = *slot;
	ListCell   *lc;

	if (plan == NULL)
		return;
	foreach(lc, child_slots(plan))
	{
		Plan	  **child = lfirst(lc);
		PlanPosition cpos = {false, pos.under_gather, NULL};

		if (IsA(plan, Gather) || IsA(plan, GatherMerge))
			cpos.under_gather = true;
		else if (IsA(plan, MergeJoin) && child == &plan->righttree)
			cpos.needs_mark = true;
		else if (IsA(plan, Result))
			cpos.needs_mark = pos.needs_mark;	/* a projection passes mark/restore down */
		else if (IsA(plan, Limit) && child == &plan->lefttree &&
				 ((Limit *) plan)->limitOption == LIMIT_OPTION_COUNT &&
				 ((Limit *) plan)->limitCount != NULL)
			cpos.limit = (Limit *) plan;
		rewrite_plan(child, cpos, rc);
	}
	maybe_wrap(slot, pos, rc);
}

/* Puts GptossBatch nodes into every plan tree of stmt. */
static void
rewrite_statement(PlannedStmt *stmt)
{
	RewriteContext rc;
	PlanPosition top = {false, false, NULL};
	ListCell   *lc;

	rc.next_plan_node_id = max_plan_node_id(stmt->planTree);
	foreach(lc, stmt->subplans)
		if (lfirst(lc) != NULL)
			rc.next_plan_node_id = Max(rc.next_plan_node_id, max_plan_node_id(lfirst(lc)));
	rc.next_plan_node_id++;

	rewrite_plan(&stmt->planTree, top, &rc);
	foreach(lc, stmt->subplans)
		rewrite_plan((Plan **) &lfirst(lc), top, &rc);
}

/* planner_hook: plans as usual, then batches the generation calls. */
static PlannedStmt *
batch_planner(Query *parse, const char *query_string, int cursorOptions,
			  ParamListInfo boundParams)
{
	PlannedStmt *stmt;

	if (prev_planner_hook)
		stmt = prev_planner_hook(parse, query_string, cursorOptions, boundParams);
	else
		stmt = standard_planner(parse, query_string, cursorOptions, boundParams);

	/* A SCROLL cursor needs backward scans, which the node does not offer. */
	if (gptoss_batch_window > 0 && (cursorOptions & CURSOR_OPT_SCROLL) == 0)
		rewrite_statement(stmt);
	return stmt;
}

/* ---------------------------------------------------------------------------
 * Execution
 */

/* One call of the node's target list. */
typedef struct BatchCallSpec
{
	BatchCallKind kind;
	AttrNumber	args[MAX_CALL_ARGS];	/* child output columns of its arguments */
} BatchCallSpec;

/* A row read from the child and not yet returned. */
typedef struct BatchRow
{
	TupleTableSlot *slot;		/* copy of the child's row (made on first use) */
} BatchRow;

typedef struct BatchScanState
{
	CustomScanState css;
	PlanState  *child;
	int			ncalls;
	BatchCallSpec *calls;
	int			nchild;			/* columns of the child's output */
	int			window;			/* requests in flight */
	GptossPipeline *pipeline;
	/* rows read ahead, in a ring: ring[head] is returned next */
	BatchRow   *ring;
	int			ring_size;
	int			head;
	int			count;			/* rows in the ring */
	int			submitted;		/* ring rows (from head) whose requests are in the pipeline */
	bool		child_done;
	/* LIMIT directly above */
	ExprState  *offset_expr;
	ExprState  *count_expr;
	bool		bound_known;
	int64		bound;			/* rows to read at most, -1: all */
	int64		rows_read;
	int64		requests;		/* requests sent (EXPLAIN ANALYZE) */
	MemoryContext request_cxt;	/* requests being built */
	MemoryContext result_cxt;	/* results of the row returned last */
} BatchScanState;

static CustomExecMethods batch_exec_methods;

/* CreateCustomScanState callback. */
static Node *
batch_create_state(CustomScan *cscan)
{
	BatchScanState *st = (BatchScanState *) newNode(sizeof(BatchScanState), T_CustomScanState);

	st->css.methods = &batch_exec_methods;
	return (Node *) st;
}

/* BeginCustomScan: starts the child and reads the plan's call list. */
static void
batch_begin(CustomScanState *node, EState *estate, int eflags)
{
	BatchScanState *st = (BatchScanState *) node;
	CustomScan *cs = (CustomScan *) node->ss.ps.plan;
	int			i = 0;
	ListCell   *lc;

	st->child = ExecInitNode(linitial(cs->custom_plans), estate, eflags);
	node->custom_ps = list_make1(st->child);
	st->nchild = ExecGetResultType(st->child)->natts;
	st->ncalls = list_length(cs->custom_private);
	st->calls = palloc0(sizeof(BatchCallSpec) * st->ncalls);
	foreach(lc, cs->custom_private)
	{
		List	   *c = lfirst(lc);

		st->calls[i].kind = (BatchCallKind) linitial_int(c);
		for (int a = 0; a < call_nargs[st->calls[i].kind]; a++)
			st->calls[i].args[a] = (AttrNumber) list_nth_int(c, a + 1);
		i++;
	}
	if (cs->custom_exprs != NIL)
	{
		st->offset_expr = ExecInitExpr(linitial(cs->custom_exprs), &node->ss.ps);
		st->count_expr = ExecInitExpr(lsecond(cs->custom_exprs), &node->ss.ps);
	}
	/* A plan made while batching was on still runs when it is off now: one at a time. */
	st->window = Max(gptoss_batch_window, 1);
	st->ring_size = st->window;
	st->ring = palloc0(sizeof(BatchRow) * st->ring_size);
	st->bound = -1;
	st->request_cxt = AllocSetContextCreate(CurrentMemoryContext, "gptoss batch requests",
											ALLOCSET_DEFAULT_SIZES);
	st->result_cxt = AllocSetContextCreate(CurrentMemoryContext, "gptoss batch results",
										   ALLOCSET_DEFAULT_SIZES);
	if (eflags & EXEC_FLAG_EXPLAIN_ONLY)
		return;
	/* Room for at least one row's calls. */
	st->pipeline = gptoss_pipeline_create(Max(st->window, st->ncalls), 0);
}

/* Evaluates the LIMIT above (offset + count) once per scan. */
static void
compute_bound(BatchScanState *st)
{
	ExprContext *econtext = st->css.ss.ps.ps_ExprContext;
	int64		offset = 0;
	bool		isnull;
	Datum		val;

	st->bound_known = true;
	st->bound = -1;
	if (st->count_expr == NULL)
		return;
	val = ExecEvalExprSwitchContext(st->count_expr, econtext, &isnull);
	/* NULL or a negative count: LIMIT ALL, or the Limit node raises. */
	if (isnull || DatumGetInt64(val) < 0)
		return;
	st->bound = DatumGetInt64(val);
	if (st->offset_expr != NULL)
	{
		val = ExecEvalExprSwitchContext(st->offset_expr, econtext, &isnull);
		if (!isnull && DatumGetInt64(val) > 0)
			offset = DatumGetInt64(val);
	}
	if (st->bound > PG_INT64_MAX - offset)
		st->bound = -1;
	else
		st->bound += offset;
}

/* True when one more row's requests fit into the pipeline. */
static bool
row_fits(BatchScanState *st)
{
	int			pending = gptoss_pipeline_pending(st->pipeline);

	return pending == 0 || pending + st->ncalls <= st->window;
}

/* True when call c of the row has a NULL argument (STRICT: NULL result, no request). */
static bool
call_is_null(BatchScanState *st, TupleTableSlot *slot, int c)
{
	bool		isnull;

	for (int a = 0; a < call_nargs[st->calls[c].kind]; a++)
	{
		(void) slot_getattr(slot, st->calls[c].args[a], &isnull);
		if (isnull)
			return true;
	}
	return false;
}

/* Sends the requests of one row into the pipeline. */
static void
submit_row(BatchScanState *st, TupleTableSlot *slot)
{
	for (int c = 0; c < st->ncalls; c++)
	{
		GptossJob	job;
		MemoryContext old;
		bool		isnull;
		Datum		a[MAX_CALL_ARGS];
		bool		built = false;
		int			code;
		char	   *message;

		if (call_is_null(st, slot, c))
			continue;
		for (int i = 0; i < call_nargs[st->calls[c].kind]; i++)
			a[i] = slot_getattr(slot, st->calls[c].args[i], &isnull);
		old = MemoryContextSwitchTo(st->request_cxt);
		switch (st->calls[c].kind)
		{
			case CALL_GENERATE:
				built = gptoss_generate_job(a[0], a[1], &job, &code, &message);
				break;
			case CALL_CHAT:
				built = gptoss_chat_job(a[0], a[1], &job, &code, &message);
				break;
			case CALL_JSON:
				built = gptoss_generate_json_job(a[0], a[1], a[2], &job, &code, &message);
				break;
			case CALL_NONE:
				elog(ERROR, "gptoss batch node without a call");
		}
		if (built)
			gptoss_pipeline_submit(st->pipeline, &job);
		else
			gptoss_pipeline_submit_failed(st->pipeline, &job.params, code, message);
		MemoryContextSwitchTo(old);
		MemoryContextReset(st->request_cxt);
		st->requests++;
	}
}

/*
 * Tops the pipeline up: first the rows already read whose requests were
 * ended by a shutdown, then new rows from the child, while the window has
 * room and the LIMIT above allows.
 */
static void
fill(BatchScanState *st)
{
	if (!st->bound_known)
		compute_bound(st);
	while (st->submitted < st->count && row_fits(st))
	{
		submit_row(st, st->ring[(st->head + st->submitted) % st->ring_size].slot);
		st->submitted++;
	}
	while (st->submitted == st->count && st->count < st->ring_size && !st->child_done &&
		   (st->bound < 0 || st->rows_read < st->bound) && row_fits(st))
	{
		TupleTableSlot *in = ExecProcNode(st->child);
		BatchRow   *row;

		if (TupIsNull(in))
		{
			st->child_done = true;
			break;
		}
		st->rows_read++;
		row = &st->ring[(st->head + st->count) % st->ring_size];
		if (row->slot == NULL)
			row->slot = MakeSingleTupleTableSlot(ExecGetResultType(st->child), &TTSOpsMinimalTuple);
		ExecCopySlot(row->slot, in);
		st->count++;
		submit_row(st, row->slot);
		st->submitted++;
	}
}

/* The result datum of call c of the row at the head (waits for it). */
static Datum
collect_call(BatchScanState *st, TupleTableSlot *slot, int c, bool *isnull)
{
	GptossPipelineResult r;
	Datum		result = (Datum) 0;

	*isnull = call_is_null(st, slot, c);
	if (*isnull)
		return (Datum) 0;
	gptoss_pipeline_next(st->pipeline, &r);
	if (r.failed)
	{
		/* on_error "null" */
		gptoss_row_error_note(r.sqlerrcode, r.message);
		*isnull = true;
	}
	else if (st->calls[c].kind == CALL_GENERATE)
		result = gptoss_generate_result(&r.resp);
	else if (st->calls[c].kind == CALL_CHAT)
		result = gptoss_chat_result(&r.params, &r.resp);
	else
		result = gptoss_generate_json_result(&r.resp);
	gptoss_pipeline_result_free(&r);
	return result;
}

/* ExecCustomScan: the next row, in input order, with its calls' results. */
static TupleTableSlot *
batch_exec(CustomScanState *node)
{
	BatchScanState *st = (BatchScanState *) node;
	TupleTableSlot *scan = node->ss.ss_ScanTupleSlot;
	ExprContext *econtext = node->ss.ps.ps_ExprContext;
	TupleTableSlot *row;
	MemoryContext old;

	ResetExprContext(econtext);
	MemoryContextReset(st->result_cxt);
	fill(st);
	if (st->count == 0)
		return ExecClearTuple(node->ss.ps.ps_ResultTupleSlot);

	row = st->ring[st->head].slot;
	slot_getallattrs(row);
	ExecClearTuple(scan);
	memcpy(scan->tts_values, row->tts_values, sizeof(Datum) * st->nchild);
	memcpy(scan->tts_isnull, row->tts_isnull, sizeof(bool) * st->nchild);
	old = MemoryContextSwitchTo(st->result_cxt);
	for (int c = 0; c < st->ncalls; c++)
		scan->tts_values[st->nchild + c] = collect_call(st, row, c, &scan->tts_isnull[st->nchild + c]);
	MemoryContextSwitchTo(old);
	ExecStoreVirtualTuple(scan);

	/* The row's slot stays valid until the next call refills the ring. */
	st->head = (st->head + 1) % st->ring_size;
	st->count--;
	st->submitted--;

	econtext->ecxt_scantuple = scan;
	if (node->ss.ps.ps_ProjInfo == NULL)
		return scan;
	return ExecProject(node->ss.ps.ps_ProjInfo);
}

/* Ends every request in flight; the rows read stay, to be sent again. */
static void
stop_requests(BatchScanState *st)
{
	if (st->pipeline != NULL)
		gptoss_pipeline_reset(st->pipeline);
	st->submitted = 0;
}

/* Forgets the rows read ahead. */
static void
drop_rows(BatchScanState *st)
{
	stop_requests(st);
	for (int i = 0; i < st->ring_size; i++)
		if (st->ring[i].slot != NULL)
			ExecClearTuple(st->ring[i].slot);
	st->head = 0;
	st->count = 0;
	st->child_done = false;
	st->rows_read = 0;
	st->bound_known = false;
}

/* EndCustomScan. */
static void
batch_end(CustomScanState *node)
{
	BatchScanState *st = (BatchScanState *) node;

	drop_rows(st);
	if (st->pipeline != NULL)
		gptoss_pipeline_free(st->pipeline);
	st->pipeline = NULL;
	for (int i = 0; i < st->ring_size; i++)
		if (st->ring[i].slot != NULL)
			ExecDropSingleTupleTableSlot(st->ring[i].slot);
	ExecEndNode(st->child);
}

/* ReScanCustomScan: starts over from the child's first row. */
static void
batch_rescan(CustomScanState *node)
{
	BatchScanState *st = (BatchScanState *) node;

	drop_rows(st);
	if (node->ss.ps.chgParam != NULL)
		UpdateChangedParamSet(st->child, node->ss.ps.chgParam);
	if (st->child->chgParam == NULL)
		ExecReScan(st->child);
}

/* ShutdownCustomScan: nobody reads further for now; free the workers' seats. */
static void
batch_shutdown(CustomScanState *node)
{
	stop_requests((BatchScanState *) node);
}

/* ExplainCustomScan: the window, and in ANALYZE the requests sent. */
static void
batch_explain(CustomScanState *node, List *ancestors, ExplainState *es)
{
	BatchScanState *st = (BatchScanState *) node;

	ExplainPropertyInteger("Batch Window", NULL, st->window, es);
	if (es->analyze)
		ExplainPropertyInteger("Requests", NULL, st->requests, es);
}

static CustomScanMethods batch_scan_methods = {
	.CustomName = BATCH_NODE_NAME,
	.CreateCustomScanState = batch_create_state,
};

static CustomExecMethods batch_exec_methods = {
	.CustomName = BATCH_NODE_NAME,
	.BeginCustomScan = batch_begin,
	.ExecCustomScan = batch_exec,
	.EndCustomScan = batch_end,
	.ReScanCustomScan = batch_rescan,
	.ShutdownCustomScan = batch_shutdown,
	.ExplainCustomScan = batch_explain,
};

/* Defines gptoss.batch_window; its boot value follows the worker settings read before it. */
void
gptoss_batch_define_gucs(void)
{
	int			boot = gptoss_default_window();

	DefineCustomIntVariable("gptoss.batch_window",
							"Generation requests one query keeps in flight for its rows (0: one row at a time).",
							"The boot value is min(gptoss.max_batch_size x workers, gptoss.max_requests / 2).",
							&gptoss_batch_window,
							boot, 0, 65536,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);
}

/* Registers the node and installs the planner hook. */
void
gptoss_batch_init(void)
{
	RegisterCustomScanMethods(&batch_scan_methods);
	prev_planner_hook = planner_hook;
	planner_hook = batch_planner;
	gptoss_row_errors_init();
}
