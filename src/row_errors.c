/*
 * row_errors.c: generations that failed for one row and gave NULL
 * (params on_error "null"), reported once per statement.
 *
 * With on_error "null", a generation that fails for its own input (prompt
 * too long for the context 54000, an engine error for that one sequence
 * XX000) gives NULL and the statement goes on; errors that concern the
 * statement or the server (bad parameters 22023, queue full 53000, worker not
 * available 55000, cancel 57014) still raise.  Each such NULL is counted
 * here, and when a statement's executor ends, one WARNING says how many rows
 * got NULL, with the first error as DETAIL.  A statement that fails itself
 * reports nothing: the transaction's abort drops the count.
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/executor.h"
#include "utils/elog.h"
#include "utils/memutils.h"

#include "gptoss.h"

static int64 row_error_count = 0;
static int	first_sqlerrcode = 0;
static char *first_message = NULL;	/* in TopMemoryContext */

static ExecutorEnd_hook_type prev_executor_end = NULL;

/* True for the errors that on_error "null" turns into a NULL result. */
bool
gptoss_row_error_nullable(int sqlerrcode)
{
	return sqlerrcode == ERRCODE_PROGRAM_LIMIT_EXCEEDED || sqlerrcode == ERRCODE_INTERNAL_ERROR;
}

/* Counts one generation that gave NULL instead of raising sqlerrcode. */
void
gptoss_row_error_note(int sqlerrcode, const char *message)
{
	if (row_error_count++ == 0)
	{
		first_sqlerrcode = sqlerrcode;
		first_message = MemoryContextStrdup(TopMemoryContext, message);
	}
}

/* Forgets the count (reported, or its statement failed). */
static void
reset_row_errors(void)
{
	row_error_count = 0;
	first_sqlerrcode = 0;
	if (first_message != NULL)
		pfree(first_message);
	first_message = NULL;
}

/* ExecutorEnd hook: one WARNING for the rows that got NULL. */
static void
row_errors_executor_end(QueryDesc *queryDesc)
{
	if (prev_executor_end)
		prev_executor_end(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);

	if (row_error_count > 0)
	{
		int64		n = row_error_count;
		int			code = first_sqlerrcode;
		char	   *message = pstrdup(first_message);

		reset_row_errors();
		ereport(WARNING,
				(errmsg_plural("%lld gptoss generation failed and gave NULL (on_error \"null\")",
							   "%lld gptoss generations failed and gave NULL (on_error \"null\")",
							   n, (long long) n),
				 errdetail("The first failure: %s (SQLSTATE %s).", message, unpack_sql_state(code))));
	}
}

/* Transaction callback: a failed statement reports nothing. */
static void
row_errors_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		reset_row_errors();
}

/* Installs the executor hook and the transaction callback (from _PG_init). */
void
gptoss_row_errors_init(void)
{
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = row_errors_executor_end;
	RegisterXactCallback(row_errors_xact_callback, NULL);
}
