/*
 * gptoss.h: shared declarations of the gptoss PostgreSQL extension.
 *
 * The extension is glue between SQL and the engine (src/engine, no PostgreSQL
 * headers).  Sessions parse parameters and tokenize and render prompts
 * themselves (prompt.c); one background worker per device owns an engine
 * and runs the decode steps.  They meet in shared memory:
 *
 *   - the main segment holds a GptossShared: per-worker state (pid, latch,
 *     load progress, model details, statistics) and a fixed array of request
 *     slots (gptoss.max_requests), one per call in flight;
 *   - each call brings its own DSM segment (protocol.h): the job (prompt ids
 *     and parameters, no size cap) and a shm_mq on which the worker streams
 *     result frames back to the session.
 *
 * In the extension "slot" always means a request slot; the engine's places
 * in a batch are its KV-cache slots, which the extension never handles.  A
 * request slot's state changes only under GptossShared->lock:
 *
 *   FREE --session--> SUBMITTED --worker--> RUNNING --worker--> DONE --session--> FREE
 *   SUBMITTED --session gives up--> FREE
 *   RUNNING --session gives up--> CANCELLED --worker drops the sequence--> FREE
 *   RUNNING --worker exits--> DONE (worker_exited)
 *
 * so a slot is reused only when neither side still looks at it.  A SUBMITTED
 * request survives a worker restart: the next worker process takes it.  The
 * session gives up from an on_dsm_detach callback of its request segment,
 * which runs on every path out of a call: normal end, ERROR (cancel,
 * statement timeout) and FATAL (client gone, terminate).  docs/architecture.md
 * tells the whole request path.
 */
#ifndef GPTOSS_H
#define GPTOSS_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/dsm.h"
#include "storage/lwlock.h"
#include "storage/shm_mq.h"
#include "storage/spin.h"
#include "lib/stringinfo.h"
#include "utils/jsonb.h"

#include "engine.h"

#define GPTOSS_MAX_WORKERS 16
#define GPTOSS_ERROR_LEN 1024
/* How often a waiting session re-checks the worker (ms). */
#define GPTOSS_POLL_MS 100

/* ---------------------------------------------------------------------------
 * GUCs and configuration (module.c)
 */
typedef enum GptossDevice
{
	GPTOSS_DEVICE_AUTO,
	GPTOSS_DEVICE_CUDA,
	GPTOSS_DEVICE_CPU
} GptossDevice;

extern bool gptoss_preloaded;
extern char *gptoss_model_path;
extern int	gptoss_device;
extern char *gptoss_devices;
extern int	gptoss_max_batch_size;
extern int	gptoss_max_context;
extern double gptoss_gpu_memory_fraction;
extern int	gptoss_kv_cache_tokens;
extern bool gptoss_cuda_graphs;
extern int	gptoss_threads;
extern int	gptoss_prefill_chunk;
extern int	gptoss_max_step_tokens;
extern int	gptoss_max_requests;
extern int	gptoss_queue_wait;
extern int	gptoss_max_queue_wait;
extern int	gptoss_max_sequences_per_role;
extern int	gptoss_max_tokens_limit;

/* "auto", "cuda" or "cpu" */
extern const char *gptoss_device_name(int device);

/* Device indices of gptoss.devices (empty list: device 0); returns the count, -1 when malformed. */
extern int	gptoss_parse_devices(const char *list, int *out, int max_out);

/* The device index of each worker (one, index 0, on cpu); returns the worker count. */
extern int	gptoss_worker_devices(int *devices);

/* Number of workers the configuration asks for (1 on cpu). */
extern int	gptoss_worker_count(void);

/* The model's name: the basename of gptoss.model_path (palloc'ed). */
extern char *gptoss_model_name(void);

/* How long a call may wait for a request slot: gptoss.queue_wait capped by gptoss.max_queue_wait (ms). */
extern int	gptoss_effective_queue_wait(void);

/* ERROR 55000 unless the library was loaded through shared_preload_libraries. */
extern void gptoss_check_preloaded(void);

/* ---------------------------------------------------------------------------
 * Shared memory (shmem.c)
 */
typedef enum GptossWorkerState
{
	GPTOSS_WORKER_STARTING = 0, /* no worker process yet, or restarting */
	GPTOSS_WORKER_LOADING,
	GPTOSS_WORKER_READY,
	GPTOSS_WORKER_FAILED
} GptossWorkerState;

/* What the worker learned about its model and device once loaded. */
typedef struct GptossModelInfo
{
	char		backend[16];	/* "cpu" or "cuda" */
	char		device_name[128];
	char		model_name[128];	/* basename of the model directory */
	int			device_index;
	int64		memory_total_bytes;
	int64		memory_used_bytes;
	int64		weight_bytes;
	int64		kv_cache_bytes;
	int64		kv_cache_tokens;
	int64		kv_cache_used_tokens;
	int64		n_params;
	int64		n_active_params;
	int64		tensor_bytes;
	int			max_batch_size;
	int			max_context;	/* effective: GUC clamped to the model */
	int			vocab_size;		/* tokenizer ids */
	/* config.json */
	int			hidden_size;
	int			num_layers;
	int			num_heads;
	int			num_kv_heads;
	int			head_dim;
	int			num_experts;
	int			experts_per_token;
	int			intermediate_size;
	int			model_vocab_size;
	int			sliding_window;
	int			max_position_embeddings;
	int			initial_context_length;
	double		rope_theta;
	double		rope_factor;
	double		swiglu_limit;
	double		load_seconds;
	bool		random_weights; /* a gptoss synth checkpoint: no real answers */
} GptossModelInfo;

/*
 * Counters of one worker; cumulative ones survive worker restarts (not a
 * crash restart of the cluster, which starts them again from zero).
 *
 * Requests: requests_total counts each request a worker process took from
 * its slot, and each ends in exactly one way:
 *   completed  its answer (finish frame) reached its session's queue; no
 *              counter of its own;
 *   failed     it ended with an error for its session, counted when the
 *              error was queued (the engine refused or failed it, an engine
 *              step failed) or the segment could not be read, or the worker
 *              exited (SIGTERM, ERROR) while holding it unanswered;
 *   cancelled  its session gave it up before its answer reached the queue
 *              (cancel, statement_timeout, backend exit, client gone).
 * So at any time
 *   requests_total = completed + requests_failed + requests_cancelled
 *                    + requests the worker holds with no error queued,
 * and once the worker holds none (active = queued = 0 and no answer waits
 * for a slow reader), requests_total - requests_failed - requests_cancelled
 * is the number of completed requests.  Requests refused before a worker
 * took them (queue full, worker failed or not ready, cancelled while
 * SUBMITTED) are in none of these; the stats view's requests_queued
 * includes such SUBMITTED slots.
 */
typedef struct GptossWorkerStats
{
	int64		requests_total;		/* requests taken by the worker */
	int64		requests_failed;	/* ended with an error (see above) */
	int64		requests_cancelled; /* given up by their session first */
	int64		prompt_tokens;
	int64		completion_tokens;
	int64		steps;
	int64		step_sequences; /* sum over steps of sequences in the step */
	int			active;			/* sequences in the batch now */
	int			queued;			/* accepted, waiting for a place in the batch */
	double		prefill_tok_s;
	double		decode_tok_s;
	double		mean_batch_size_1min;	/* sequences per step over the last minute */
	double		max_step_ms_1min;	/* longest loop iteration (admit, step, deliver) in the last minute */
	int64		prefix_cache_hit_tokens;	/* prompt tokens taken from the prefix cache */
} GptossWorkerStats;

typedef struct GptossWorkerShared
{
	slock_t		mutex;			/* protects every field below */
	int			device_index;
	pid_t		pid;			/* 0 when no worker process runs */
	int			pgprocno;		/* the worker's PGPROC, for its latch */
	uint64		generation;		/* bumped each time a worker process starts */
	GptossWorkerState state;
	double		progress;		/* loading: fraction in [0, 1] */
	char		progress_what[64];
	char		error[GPTOSS_ERROR_LEN];	/* failed: why */
	char		error_hint[256];	/* failed: which setting to look at */
	TimestampTz started_at;
	GptossModelInfo info;		/* valid when state == READY */
	GptossWorkerStats stats;
	pg_atomic_uint32 events;	/* bumped by sessions on submit and cancel */
} GptossWorkerShared;

typedef enum GptossRequestSlotState
{
	GPTOSS_SLOT_FREE = 0,
	GPTOSS_SLOT_SUBMITTED,
	GPTOSS_SLOT_RUNNING,
	GPTOSS_SLOT_CANCELLED,
	GPTOSS_SLOT_DONE
} GptossRequestSlotState;

typedef struct GptossRequestSlot
{
	GptossRequestSlotState state;
	int			worker;			/* index of the worker that serves it */
	uint64		request_id;		/* unique over the server's life */
	uint64		generation;		/* worker generation that admitted it */
	int			owner_pgprocno; /* session waiting for the result */
	Oid			role;			/* GetUserId() of the submitting session */
	int			session;		/* its pid: fair admission goes round-robin over roles, then sessions */
	int64		submit_step;	/* the worker's engine steps when the request was submitted */
	dsm_handle	handle;			/* the request segment */
	bool		worker_exited;	/* DONE because the worker went away */
} GptossRequestSlot;

typedef struct GptossShared
{
	LWLock	   *lock;			/* protects slots[] */
	int			nworkers;
	int			nslots;
	pg_atomic_uint64 next_request_id;
	ConditionVariable slot_freed;	/* broadcast whenever a slot becomes FREE */
	pg_atomic_uint32 segment_waiters;	/* sessions in gptoss_call_start waiting for a DSM segment */
	GptossWorkerShared workers[GPTOSS_MAX_WORKERS];
	GptossRequestSlot slots[FLEXIBLE_ARRAY_MEMBER];
} GptossShared;

extern GptossShared *gptoss_shared;

extern Size gptoss_shmem_size(void);
extern void gptoss_shmem_init(void);

/* Wakes worker w (its latch), after bumping its event counter. */
extern void gptoss_wake_worker(int w);

/* Sets the latch of the process with pgprocno (no-op for -1). */
extern void gptoss_set_proc_latch(int pgprocno);

/* Copies worker w's shared state (taken under its mutex). */
extern void gptoss_worker_snapshot(int w, GptossWorkerShared *out);

/* "starting", "loading", "ready" or "failed" */
extern const char *gptoss_worker_state_name(GptossWorkerState state);

/* ---------------------------------------------------------------------------
 * Calls (call.c): the session side of a request
 *
 * A call sends one GptossJob (protocol.h) to a worker through its own
 * request segment and a request slot, then reads result frames into a
 * GptossResponse.  Blocking entry points wait on the session's latch,
 * interruptibly (CHECK_FOR_INTERRUPTS, postmaster death, a client that went
 * away); the non-blocking ones let one session keep many calls in flight:
 *
 *   call = gptoss_call_try_start(&job);       NULL while no request slot (or no
 *                                             request segment) is free
 *   done = gptoss_call_poll(call, &resp);     folds the frames available now
 *   gptoss_call_wait();                       sleeps until a call progressed or a
 *                                             request slot was freed
 *   gptoss_call_end(call);                    always; gives the slot back
 *
 * gptoss_call_start and gptoss_call_next are the blocking forms.  Every
 * call of a session must end with gptoss_call_end (an ERROR ends them through
 * the resource owner, which detaches their segments).
 */
#include "protocol.h"

typedef struct GptossCall GptossCall;

/*
 * Sends job to a worker, waiting up to gptoss.queue_wait for a dynamic shared
 * memory segment and a free request slot (53000 past it).
 */
extern GptossCall *gptoss_call_start(const GptossJob *job);

/*
 * Sends job when a request slot and a dynamic shared memory segment are free
 * now and no session waits in gptoss_call_start for a segment; NULL otherwise
 * (nothing allocated).
 */
extern GptossCall *gptoss_call_try_start(const GptossJob *job);

/* Calls of this backend so far that found no dynamic shared memory segment free. */
extern uint64 gptoss_call_segment_shortages(void);

/* errhint text for a server out of dynamic shared memory segments. */
extern const char *gptoss_segment_hint(void);

/*
 * Folds the frames available now into resp without waiting; returns true once
 * the response is complete.  Raises the worker's error, or 55000 when the
 * worker went away.
 */
extern bool gptoss_call_poll(GptossCall *call, GptossResponse *resp);

/* Waits for the next frame and folds it into resp; returns false once complete. */
extern bool gptoss_call_next(GptossCall *call, GptossResponse *resp);

/*
 * Sleeps until one of this session's calls may have progressed or a request
 * slot was freed (or GPTOSS_POLL_MS passed), then CHECK_FOR_INTERRUPTS.
 */
extern void gptoss_call_wait(void);

/* Closes the call: frees the request slot (the worker drops an unfinished request). */
extern void gptoss_call_end(GptossCall *call);

/* Whether the current user may read load errors, which name the model directory (pg_monitor). */
extern bool gptoss_may_see_load_errors(void);

/* Raises 55000 with worker w's reason for not serving (its load error, to pg_monitor members). */
extern void gptoss_raise_worker_failed(int w);

/*
 * Runs job to completion into resp (initialised here).  With params on_error
 * "null", an error the worker reports for this one job is left in
 * resp->row_error_code instead of raising (protocol.h).
 */
extern void gptoss_execute(const GptossJob *job, GptossResponse *resp);

/* ---------------------------------------------------------------------------
 * Prompts in the session (prompt.c): tokenizer, rendering, length checks
 */

/* Postmaster (_PG_init): loads the tokenizer every session inherits; a failure only logs. */
extern void gptoss_preload_tokenizer(void);

/* The tokenizer inherited from the postmaster, or NULL. */
extern const gptoss_tokenizer *gptoss_inherited_tokenizer(void);

/* The session's tokenizer (inherited, else loaded now); 55000 when it cannot be loaded. */
extern const gptoss_tokenizer *gptoss_session_tokenizer(void);

/*
 * Renders a prompt (raw text, or harmony over prompt or messages) into
 * palloc'ed ids; 54000 when it cannot fit the context (checked from its bytes
 * before tokenizing, then from its tokens), interruptible while tokenizing.
 */
extern int32 *gptoss_render(const char *prompt, const gptoss_chat_message *messages,
							int n_messages, const gptoss_gen_params *params, int *n_ids);

/*
 * As gptoss_render, but a failure of this one prompt (54000 cannot fit the
 * context, XX000 the engine could not render it) returns NULL with
 * *sqlerrcode and *message set; bad parameters (22023) still raise.
 */
extern int32 *gptoss_render_or_fail(const char *prompt, const gptoss_chat_message *messages,
									int n_messages, const gptoss_gen_params *params, int *n_ids,
									int *sqlerrcode, char **message);

/* Encodes text into malloc'ed ids (caller frees), interruptibly; returns the count. */
extern int	gptoss_encode_text(const char *text, size_t len, int32 **ids);

/* ---------------------------------------------------------------------------
 * Parameters in the session (sqlparams.c)
 */

/* Defines the GUC gptoss.<key> of every parameter row that has a default. */
extern void gptoss_define_param_gucs(void);

/*
 * Parses params jsonb (NULL: defaults) over the GUC defaults into p; strings
 * are palloc'ed UTF-8.  22023 naming the key for anything invalid.
 */
extern void gptoss_parse_params(Jsonb *params, gptoss_gen_params *p);

/* ---------------------------------------------------------------------------
 * Background worker (worker.c)
 */
extern PGDLLEXPORT void gptoss_worker_main(Datum main_arg);

/* ---------------------------------------------------------------------------
 * Jobs and results of the per-row generation functions (sqlfuncs.c), for
 * callers that run them outside the function call (batch_scan.c).  The
 * builders raise 22023 for bad input, as the functions do; they return false
 * (with the error's SQLSTATE and message) only under on_error "null", for a
 * prompt that cannot be rendered into the context.
 */
extern bool gptoss_generate_job(Datum prompt, Datum params, GptossJob *job,
								int *sqlerrcode, char **message);
extern Datum gptoss_generate_result(const GptossResponse *resp);
extern bool gptoss_chat_job(Datum messages, Datum params, GptossJob *job,
							int *sqlerrcode, char **message);
extern Datum gptoss_chat_result(const gptoss_gen_params *params, const GptossResponse *resp);
extern bool gptoss_generate_json_job(Datum prompt, Datum schema, Datum params, GptossJob *job,
									 int *sqlerrcode, char **message);
extern Datum gptoss_generate_json_result(const GptossResponse *resp);

/* The job of one prompt (server encoding) with parsed params, as gptoss_generate builds it. */
extern bool gptoss_prompt_job(GptossJob *job, const gptoss_gen_params *params, text *prompt,
							  int *sqlerrcode, char **message);

/*
 * Runs job into resp; false when it failed for this row under on_error
 * "null" (counted for the statement's WARNING).
 */
extern bool gptoss_run_job(GptossJob *job, GptossResponse *resp);

/* ---------------------------------------------------------------------------
 * The GptossBatch scan node (batch_scan.c)
 */
extern int	gptoss_batch_window;

/* Defines gptoss.batch_window (from define_gucs, after max_batch_size and max_requests). */
extern void gptoss_batch_define_gucs(void);

/* Installs the planner hook and registers the node (from _PG_init). */
extern void gptoss_batch_init(void);

/* ---------------------------------------------------------------------------
 * Generations that gave NULL under params on_error "null" (row_errors.c)
 */

/* Counts one generation that gave NULL; its statement ends with one WARNING. */
extern void gptoss_row_error_note(int sqlerrcode, const char *message);

/* Installs the executor hook that reports them (from gptoss_batch_init). */
extern void gptoss_row_errors_init(void);

#endif							/* GPTOSS_H */
