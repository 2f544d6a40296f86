/*
 * enrich.h: enrichments, columns that fill themselves (enrich.c, enrich_worker.c).
 *
 * An enrichment fills target_column of a table with the answer to prompt_sql,
 * an expression over the row.  Its catalog lives in the extension's schema:
 *
 *   gptoss_enrichment    one row per enrichment (table, column, analysed prompt
 *                        expression, generation params, mode, max_attempts)
 *   gptoss_enrich_inbox  keys of inserted rows, one row per statement (or per
 *                        ENRICH_INBOX_CHUNK rows): cheap for a large COPY; the
 *                        worker moves them into the queue before it takes a batch
 *   gptoss_enrich_queue  rows waiting for a generation: (enrichment, primary
 *                        key as text[]), with attempts, next try and last error
 *   gptoss_enrich_log    rows filled and tokens generated, per batch
 *
 * An AFTER INSERT row trigger collects each inserted row's key (no transition
 * table: a COPY does not copy every whole row) and the AFTER INSERT statement
 * trigger takes them; the AFTER UPDATE statement trigger finds the rows whose
 * prompt inputs changed from its transition tables.  In sync mode the
 * statement trigger generates and writes them before the statement returns;
 * in async mode it queues them.  One worker per database ("gptoss enrich worker", started by the
 * "gptoss enrich launcher") takes queued rows in batches: the backfill, the
 * async rows, and the failed or superseded rows of either mode.
 *
 * Both paths share enrich_process_keys(): read the current prompts, generate
 * them as one batch, lock the rows whose prompt is still the one generated
 * (SKIP LOCKED, so the worker never waits on a user's transaction), write the
 * answers, and report each row's outcome so that the caller can keep the
 * queue right (failed rows retried with backoff, changed rows queued again).
 */
#ifndef GPTOSS_ENRICH_H
#define GPTOSS_ENRICH_H

#include "postgres.h"

#include "access/attnum.h"
#include "utils/jsonb.h"

/* Databases the launcher tracks at once. */
#define ENRICH_MAX_DATABASES 64

/* What happened to one row of a batch. */
typedef enum EnrichOutcome
{
	ENRICH_WRITTEN,				/* answer written */
	ENRICH_GONE,				/* the row no longer exists */
	ENRICH_FAILED,				/* generation or write failed: error recorded */
	ENRICH_SUPERSEDED			/* changed or locked meanwhile: generate again later */
} EnrichOutcome;

/* An enrichment, loaded with what its SQL needs (identifiers already quoted). */
typedef struct Enrichment
{
	int			id;
	Oid			relid;
	AttrNumber	attnum;
	Oid			owner;			/* the table's owner: the work runs as this role */
	bool		async;
	bool		paused;
	int			max_attempts;
	Jsonb	   *params;			/* generation params (enrichment keys removed) */
	Oid			target_type;	/* TEXTOID or JSONBOID */
	char	   *schema;			/* extension schema, quoted */
	char	   *rel;			/* schema-qualified table name */
	char	   *alias;			/* the table's name: prompt_sql may qualify columns with it */
	char	   *target;			/* target column */
	char	   *prompt;			/* prompt expression, deparsed with qualified names */
	int			npk;
	AttrNumber *pk_attnums;
	char	  **pk_cols;
	char	  **pk_types;		/* qualified type names */
	char	  **pk_eq;			/* OPERATOR(schema.=) of each key column's type */
	int			ninputs;
	char	  **input_cols;		/* columns the prompt reads */
} Enrichment;

/* A batch of rows: primary keys as text, column by column. */
typedef struct EnrichKeys
{
	int			n;
	int			npk;
	Datum	  **cols;			/* cols[j][i]: text of key column j of row i */
} EnrichKeys;

/* Per-row result of enrich_process_keys. */
typedef struct EnrichResult
{
	EnrichOutcome outcome;
	char	   *error;			/* FAILED: the message */
} EnrichResult;

/* Loads enrichment id (NULL when missing_ok and it does not exist). */
extern Enrichment *enrich_load(int id, bool missing_ok);

/*
 * Generates and writes the rows of keys; fills results[] and returns the
 * completion tokens generated.  Runs inside the caller's transaction.
 */
extern int64 enrich_process_keys(Enrichment *e, EnrichKeys *keys, EnrichResult *results);

/* Records a batch's outcomes in the queue and the log (from_queue: rows came from the queue). */
extern void enrich_record(Enrichment *e, EnrichKeys *keys, EnrichResult *results,
						  bool from_queue, int64 tokens);

/* Moves the inbox of enrichment e into the queue; returns the keys moved. */
extern int64 enrich_move_inbox(Enrichment *e);

/* Keys of the queue's next batch of enrichment e (locked FOR UPDATE SKIP LOCKED). */
extern EnrichKeys *enrich_take_batch(Enrichment *e, int limit);

/* Quoted extension schema, or NULL when the extension is not installed here. */
extern char *enrich_schema(void);

/* Rows a batch holds: the request window of gptoss_generate_many. */
extern int	enrich_batch_size(void);

/* ---- enrich_worker.c ---- */

/* Registers the launcher and the shared memory (from _PG_init). */
extern void enrich_init(void);

/* After this transaction commits, make sure a worker serves this database and wake it. */
extern void enrich_wake_after_commit(void);

/* Entry points of the launcher and the per-database workers. */
extern PGDLLEXPORT void gptoss_enrich_launcher_main(Datum main_arg);
extern PGDLLEXPORT void gptoss_enrich_worker_main(Datum main_arg);

#endif							/* GPTOSS_ENRICH_H */
