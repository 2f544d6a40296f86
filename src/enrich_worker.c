/*
 * enrich_worker.c: the enrichment launcher and the per-database workers.
 *
 * The launcher ("gptoss enrich launcher", a static background worker
 * connected to no database, so it reads only pg_database) keeps one
 * "gptoss enrich worker" running per database that has enrichments.  Shared
 * memory holds one entry per database:
 *
 *   PROBE   not known yet (after a server start every database is probed:
 *           a worker starts, finds no enrichment and exits)
 *   ACTIVE  has enrichments: a worker runs; one that exits is started again
 *   IDLE    has none: no worker until gptoss_enrich() or a trigger wakes it
 *
 * so that the workers come back by themselves after any restart.  When no
 * background worker slot is free (max_worker_processes) the launcher logs a
 * WARNING and tries again.  A session that queues rows or creates an
 * enrichment marks its database ACTIVE and wakes the launcher and the worker
 * when its transaction commits (not before: the worker would not see the rows).
 *
 * A worker loops over the enrichments of its database that have rows ready
 * (not paused, attempts left, next try due) and processes one batch of each
 * per round, one transaction per batch: take the keys (FOR UPDATE SKIP
 * LOCKED), generate and write them (enrich_process_keys), record the outcomes.
 * Before that it moves the keys that INSERT statements left in the inbox
 * into the queue, in a short transaction of its own.
 * It exits when its database has no enrichment left.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "gptoss.h"
#include "enrich.h"

/* How long the launcher and an idle worker sleep between looks (ms). */
#define ENRICH_NAP_MS 1000

/* Delay before a worker that exited while its database has enrichments starts again (ms). */
#define ENRICH_RESTART_MS 1000

/* Delay before the launcher retries when no background worker slot was free (ms). */
#define ENRICH_NO_SLOT_RETRY_MS 5000

/* How often a worker folds old log rows (ms). */
#define ENRICH_LOG_FOLD_MS 60000

typedef enum EnrichDbState
{
	ENRICH_DB_FREE = 0,			/* entry unused */
	ENRICH_DB_PROBE,
	ENRICH_DB_ACTIVE,
	ENRICH_DB_IDLE
} EnrichDbState;

typedef struct EnrichDatabase
{
	Oid			dboid;
	EnrichDbState state;
	uint32		wakes;			/* bumped by each wakeup, so a worker never idles past one */
	int			worker_pgprocno;	/* -1 when no worker runs */
} EnrichDatabase;

typedef struct EnrichShared
{
	slock_t		mutex;			/* protects everything below */
	int			launcher_pgprocno;
	EnrichDatabase dbs[ENRICH_MAX_DATABASES];
} EnrichShared;

static EnrichShared *enrich_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* This transaction asked for a wakeup at commit. */
static bool wake_at_commit = false;

/* Requests the shared memory of the launcher. */
static void
enrich_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(EnrichShared)));
}

/* Creates or attaches the launcher's shared memory. */
static void
enrich_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	enrich_shared = ShmemInitStruct("gptoss enrich", sizeof(EnrichShared), &found);
	if (!found)
	{
		memset(enrich_shared, 0, sizeof(EnrichShared));
		SpinLockInit(&enrich_shared->mutex);
		enrich_shared->launcher_pgprocno = -1;
		for (int i = 0; i < ENRICH_MAX_DATABASES; i++)
			enrich_shared->dbs[i].worker_pgprocno = -1;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Entry of database dboid, created in state when missing (NULL when full); caller holds the mutex. */
static EnrichDatabase *
database_entry(Oid dboid, EnrichDbState state)
{
	EnrichDatabase *free_entry = NULL;

	for (int i = 0; i < ENRICH_MAX_DATABASES; i++)
	{
		EnrichDatabase *d = &enrich_shared->dbs[i];

		if (d->state != ENRICH_DB_FREE && d->dboid == dboid)
			return d;
		if (d->state == ENRICH_DB_FREE && free_entry == NULL)
			free_entry = d;
	}
	if (free_entry != NULL && state != ENRICH_DB_FREE)
	{
		free_entry->dboid = dboid;
		free_entry->state = state;
		free_entry->worker_pgprocno = -1;
	}
	return free_entry;
}

/* Transaction callback: after a commit that queued rows, mark the database active and wake. */
static void
enrich_xact_callback(XactEvent event, void *arg)
{
	EnrichDatabase *d;
	int			launcher = -1;
	int			worker = -1;

	if (!wake_at_commit)
		return;
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		wake_at_commit = false;
		return;
	}
	if (event != XACT_EVENT_COMMIT)
		return;
	wake_at_commit = false;
	SpinLockAcquire(&enrich_shared->mutex);
	d = database_entry(MyDatabaseId, ENRICH_DB_ACTIVE);
	if (d != NULL)
	{
		d->state = ENRICH_DB_ACTIVE;
		d->wakes++;
		worker = d->worker_pgprocno;
	}
	launcher = enrich_shared->launcher_pgprocno;
	SpinLockRelease(&enrich_shared->mutex);
	if (d == NULL)
		ereport(WARNING,
				(errmsg("gptoss enrich launcher tracks at most %d databases; rows of this one wait",
						ENRICH_MAX_DATABASES)));
	gptoss_set_proc_latch(worker);
	gptoss_set_proc_latch(launcher);
}

/* After this transaction commits, make sure a worker serves this database and wake it. */
void
enrich_wake_after_commit(void)
{
	if (enrich_shared != NULL)
		wake_at_commit = true;
}

/* Registers the launcher, the shared memory and the commit callback (from _PG_init). */
void
enrich_init(void)
{
	BackgroundWorker worker;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = enrich_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = enrich_shmem_startup;
	RegisterXactCallback(enrich_xact_callback, NULL);

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "gptoss");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "gptoss_enrich_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "gptoss enrich launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "gptoss enrich launcher");
	RegisterBackgroundWorker(&worker);
}

/* ---------------------------------------------------------------------------
 * Launcher
 */

/* What the launcher knows of the worker of one database entry (local to the launcher). */
typedef struct LauncherSlot
{
	BackgroundWorkerHandle *handle;
	TimestampTz start_after;
} LauncherSlot;

/* Databases that accept connections (pg_database); returns the count. */
static int
list_databases(Oid *out, int max)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	int			n = 0;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datallowconn && !db->datistemplate && n < max)
			out[n++] = db->oid;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return n;
}

/* Starts the worker of database entry i; false when no slot is free. */
static bool
start_worker(int i, Oid dboid, LauncherSlot *slot)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "gptoss");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "gptoss_enrich_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "gptoss enrich worker for database %u", dboid);
	snprintf(worker.bgw_type, BGW_MAXLEN, "gptoss enrich worker");
	worker.bgw_main_arg = Int32GetDatum(i);
	worker.bgw_notify_pid = MyProcPid;
	return RegisterDynamicBackgroundWorker(&worker, &slot->handle);
}

/* One pass of the launcher: forget vanished databases, (re)start the workers that should run. */
static void
launcher_pass(LauncherSlot *slots, bool probe)
{
	Oid			dbs[ENRICH_MAX_DATABASES];
	int			ndbs = list_databases(dbs, ENRICH_MAX_DATABASES);
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&enrich_shared->mutex);
	for (int i = 0; i < ENRICH_MAX_DATABASES; i++)
	{
		EnrichDatabase *d = &enrich_shared->dbs[i];
		bool		exists = false;

		if (d->state == ENRICH_DB_FREE)
			continue;
		for (int k = 0; k < ndbs; k++)
			exists |= dbs[k] == d->dboid;
		if (!exists && slots[i].handle == NULL)
			d->state = ENRICH_DB_FREE;
	}
	if (probe)
		for (int k = 0; k < ndbs; k++)
			(void) database_entry(dbs[k], ENRICH_DB_PROBE);
	SpinLockRelease(&enrich_shared->mutex);

	for (int i = 0; i < ENRICH_MAX_DATABASES; i++)
	{
		EnrichDbState state;
		Oid			dboid;
		pid_t		pid;

		SpinLockAcquire(&enrich_shared->mutex);
		state = enrich_shared->dbs[i].state;
		dboid = enrich_shared->dbs[i].dboid;
		SpinLockRelease(&enrich_shared->mutex);

		if (slots[i].handle != NULL)
		{
			if (GetBackgroundWorkerPid(slots[i].handle, &pid) != BGWH_STOPPED)
				continue;
			pfree(slots[i].handle);
			slots[i].handle = NULL;
			slots[i].start_after = TimestampTzPlusMilliseconds(now, ENRICH_RESTART_MS);
		}
		if (state != ENRICH_DB_PROBE && state != ENRICH_DB_ACTIVE)
			continue;
		/* a worker that exited while its database has enrichments is started again after a pause */
		if (state == ENRICH_DB_ACTIVE && now < slots[i].start_after)
			continue;
		if (!start_worker(i, dboid, &slots[i]))
		{
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("gptoss enrich launcher: no background worker slot free for database %u", dboid),
					 errhint("Raise max_worker_processes; the launcher tries again in %d seconds.",
							 ENRICH_NO_SLOT_RETRY_MS / 1000)));
			slots[i].handle = NULL;
			slots[i].start_after = TimestampTzPlusMilliseconds(now, ENRICH_NO_SLOT_RETRY_MS);
			if (state == ENRICH_DB_PROBE)
			{
				SpinLockAcquire(&enrich_shared->mutex);
				enrich_shared->dbs[i].state = ENRICH_DB_ACTIVE;
				SpinLockRelease(&enrich_shared->mutex);
			}
		}
	}
}

/* Main of the launcher. */
void
gptoss_enrich_launcher_main(Datum main_arg)
{
	LauncherSlot slots[ENRICH_MAX_DATABASES];
	bool		probe = true;

	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_activity(STATE_RUNNING, "watching databases");

	memset(slots, 0, sizeof(slots));
	SpinLockAcquire(&enrich_shared->mutex);
	enrich_shared->launcher_pgprocno = MyProc->pgprocno;
	SpinLockRelease(&enrich_shared->mutex);

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		launcher_pass(slots, probe);
		probe = false;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 ENRICH_NAP_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* ---------------------------------------------------------------------------
 * Per-database worker
 */

/* Starts a transaction with a snapshot and SPI for one unit of the worker's work. */
static void
begin_work(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
}

/* Commits what begin_work started. */
static void
end_work(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/* Enrichment ids with rows ready; *any is false when the database has no enrichment at all. */
static List *
ready_enrichments(bool *any)
{
	List	   *ids = NIL;
	char	   *schema;

	begin_work();
	schema = enrich_schema();
	*any = false;
	if (schema != NULL)
	{
		int			rc = SPI_execute(psprintf("SELECT e.id, NOT e.paused AND EXISTS (SELECT 1 FROM %s.gptoss_enrich_queue q"
											  " WHERE q.enrichment = e.id AND q.attempts < e.max_attempts"
											  " AND q.next_try <= now())"
											  " OR EXISTS (SELECT 1 FROM %s.gptoss_enrich_inbox i WHERE i.enrichment = e.id)"
											  " FROM %s.gptoss_enrichment e ORDER BY e.id",
											  schema, schema, schema), true, 0);

		if (rc != SPI_OK_SELECT)
			elog(ERROR, "gptoss enrich worker: could not list enrichments");
		*any = SPI_processed > 0;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			HeapTuple	tup = SPI_tuptable->vals[i];

			if (DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull)))
			{
				MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

				ids = lappend_int(ids, DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull)));
				MemoryContextSwitchTo(old);
			}
		}
	}
	end_work();
	return ids;
}

/* Moves the inbox of enrichment id into its queue, in a transaction of its own; returns the keys moved. */
static int
move_inbox(int id)
{
	Enrichment *e;
	int64		n = 0;

	begin_work();
	e = enrich_load(id, true);
	if (e != NULL)
		n = enrich_move_inbox(e);
	end_work();
	return (int) Min(n, INT_MAX);
}

/* Runs one batch of enrichment id in its own transaction; returns the rows taken. */
static int
process_batch(int id)
{
	Enrichment *e;
	EnrichKeys *keys;
	EnrichResult *results;
	int64		tokens;
	int			n;

	begin_work();
	pgstat_report_activity(STATE_RUNNING, psprintf("enrichment %d", id));
	e = enrich_load(id, true);
	if (e == NULL || e->paused)
		n = 0;
	else
	{
		keys = enrich_take_batch(e, enrich_batch_size());
		n = keys->n;
		if (n > 0)
		{
			results = palloc(sizeof(EnrichResult) * n);
			tokens = enrich_process_keys(e, keys, results);
			enrich_record(e, keys, results, true, tokens);
		}
	}
	end_work();
	pgstat_report_activity(STATE_IDLE, NULL);
	return n;
}

/*
 * After a batch failed as a whole (its table gone, its prompt no longer
 * valid): counts an attempt for the rows it would take, so that nothing loops.
 */
static void
record_batch_failure(int id, const char *message)
{
	char	   *schema;

	begin_work();
	schema = enrich_schema();
	if (schema != NULL)
	{
		Oid			types[3] = {INT4OID, TEXTOID, INT4OID};
		Datum		values[3] = {Int32GetDatum(id), CStringGetTextDatum(message),
		Int32GetDatum(enrich_batch_size())};

		SPI_execute_with_args(psprintf("UPDATE %s.gptoss_enrich_queue q SET attempts = q.attempts + 1,"
									   " last_error = $2, failed_at = now(),"
									   " next_try = now() + make_interval(secs => least(300, 2 ^ q.attempts))"
									   " WHERE q.enrichment = $1 AND q.key IN (SELECT key FROM %s.gptoss_enrich_queue"
									   " r WHERE r.enrichment = $1 AND r.next_try <= now() ORDER BY queued_at LIMIT $3"
									   " FOR UPDATE SKIP LOCKED)", schema, schema),
							  3, types, values, NULL, false, 0);
	}
	end_work();
}

/* Folds log rows older than two minutes into one row per enrichment (they only count for done). */
static void
fold_log(void)
{
	char	   *schema;

	begin_work();
	schema = enrich_schema();
	if (schema != NULL)
		SPI_execute(psprintf("WITH old AS (DELETE FROM %s.gptoss_enrich_log WHERE at < now() - interval '2 minutes'"
							 " RETURNING *) INSERT INTO %s.gptoss_enrich_log (enrichment, at, rows, tokens)"
							 " SELECT enrichment, max(at), sum(rows), sum(tokens) FROM old GROUP BY enrichment",
							 schema, schema), false, 0);
	end_work();
}

/* Runs fn(id) catching its ERROR: logged, transaction aborted; returns false on error, with the message. */
static bool
run_guarded(int (*fn) (int), int id, int *result, char **message)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;

	PG_TRY();
	{
		*result = fn(id);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		*message = psprintf("%s: %s", unpack_sql_state(edata->sqlerrcode), edata->message);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/* fold_log as an int function for run_guarded. */
static int
fold_log_guarded(int unused)
{
	fold_log();
	return 0;
}

/* Main of the worker of one database (main_arg: its entry in shared memory). */
void
gptoss_enrich_worker_main(Datum main_arg)
{
	int			entry = DatumGetInt32(main_arg);
	EnrichDatabase *d = &enrich_shared->dbs[entry];
	Oid			dboid;
	TimestampTz last_fold = GetCurrentTimestamp();

	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();

	SpinLockAcquire(&enrich_shared->mutex);
	dboid = d->dboid;
	d->worker_pgprocno = MyProc->pgprocno;
	SpinLockRelease(&enrich_shared->mutex);
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("gptoss enrich worker");

	for (;;)
	{
		uint32		wakes;
		bool		any;
		int			taken = 0;
		List	   *ids;
		ListCell   *lc;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		SpinLockAcquire(&enrich_shared->mutex);
		wakes = d->wakes;
		SpinLockRelease(&enrich_shared->mutex);
		ResetLatch(MyLatch);

		ids = ready_enrichments(&any);
		if (!any)
		{
			bool		idle = false;

			/* nothing here: idle unless a wakeup came in meanwhile */
			SpinLockAcquire(&enrich_shared->mutex);
			if (d->wakes == wakes)
			{
				d->state = ENRICH_DB_IDLE;
				d->worker_pgprocno = -1;
				idle = true;
			}
			SpinLockRelease(&enrich_shared->mutex);
			if (idle)
				proc_exit(0);
			continue;
		}
		SpinLockAcquire(&enrich_shared->mutex);
		d->state = ENRICH_DB_ACTIVE;
		SpinLockRelease(&enrich_shared->mutex);

		foreach(lc, ids)
		{
			int			id = lfirst_int(lc);
			int			n = 0;
			char	   *message = NULL;

			/* rows inserted since the last round join the queue first (even when paused) */
			if (run_guarded(move_inbox, id, &n, &message))
				taken += n;
			if (run_guarded(process_batch, id, &n, &message))
				taken += n;
			else
			{
				/* a batch that fails as a whole counts an attempt for its rows */
				record_batch_failure(id, message);
				pg_usleep(ENRICH_NAP_MS * 1000L);
			}
		}
		list_free(ids);

		if (TimestampDifferenceExceeds(last_fold, GetCurrentTimestamp(), ENRICH_LOG_FOLD_MS))
		{
			int			unused;
			char	   *message;

			(void) run_guarded(fold_log_guarded, 0, &unused, &message);
			last_fold = GetCurrentTimestamp();
		}
		if (taken == 0)
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 ENRICH_NAP_MS, PG_WAIT_EXTENSION);
	}
}
