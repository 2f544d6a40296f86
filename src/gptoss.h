/*
 * gptoss.h: shared declarations of the gptoss PostgreSQL extension.
 *
 * The extension is glue between SQL and the engine (src/engine, no PostgreSQL
 * headers).  One background worker per device owns an engine; backends talk
 * to it through shared memory:
 *
 *   - the main segment holds a GptossShared: per-worker state (pid, latch,
 *     load progress, model details, statistics) and a fixed array of request
 *     slots (gptoss.max_requests);
 *   - each request brings its own DSM segment: a GptossRequestHeader, the
 *     payload (prompt, messages, stop strings, ids; no size cap) and a shm_mq
 *     on which the worker streams frames back to the backend (text pieces,
 *     the finish record, token ids or an error).
 *
 * A slot's state is changed only under GptossShared->lock:
 *
 *   FREE --backend--> SUBMITTED --worker--> RUNNING --worker--> DONE --backend--> FREE
 *   SUBMITTED --backend gives up--> FREE
 *   RUNNING --backend gives up--> CANCELLED --worker drops the sequence--> FREE
 *   RUNNING --worker exits--> DONE (worker_exited)
 *
 * so a slot is reused only when neither side still looks at it.  A SUBMITTED
 * request survives a worker restart: the next worker process takes it.  The
 * backend gives up from an on_dsm_detach callback of its request segment,
 * which runs on every path out of a request: normal end, ERROR (cancel,
 * statement timeout) and FATAL (client gone, terminate).
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

#define GPTOSS_MAX_WORKERS 16
#define GPTOSS_ERROR_LEN 1024
#define GPTOSS_REQUEST_MAGIC 0x67707432	/* "gpt2" */

/* Size of the worker-to-backend queue in each request segment. */
#define GPTOSS_MQ_SIZE ((Size) 65536)

/* How often a waiting backend re-checks the worker (ms). */
#define GPTOSS_POLL_MS 100

/* ---------------------------------------------------------------------------
 * GUCs (gptoss.c)
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
extern int	gptoss_default_max_tokens;
extern double gptoss_default_temperature;
extern double gptoss_default_top_p;
extern int	gptoss_default_top_k;
extern int	gptoss_default_reasoning_effort;
extern int	gptoss_max_tokens_limit;

/* "auto", "cuda" or "cpu" */
extern const char *gptoss_device_name(int device);

/* Device indices of gptoss.devices (empty list: device 0); returns the count. */
extern int	gptoss_parse_devices(const char *list, int *out, int max_out);

/* Number of workers the configuration asks for (1 on cpu). */
extern int	gptoss_worker_count(void);

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

/* Counters of one worker; cumulative ones survive worker restarts. */
typedef struct GptossWorkerStats
{
	int64		requests_total;		/* generation requests accepted */
	int64		requests_failed;	/* ended with an error */
	int64		requests_cancelled; /* abandoned by their backend */
	int64		prompt_tokens;
	int64		completion_tokens;
	int64		steps;
	int64		step_sequences; /* sum over steps of sequences in the step */
	int			active;			/* sequences in the batch now */
	int			queued;			/* accepted, waiting for a batch slot */
	double		prefill_tok_s;
	double		decode_tok_s;
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
	pg_atomic_uint32 events;	/* bumped by backends on submit and cancel */
} GptossWorkerShared;

typedef enum GptossSlotState
{
	GPTOSS_SLOT_FREE = 0,
	GPTOSS_SLOT_SUBMITTED,
	GPTOSS_SLOT_RUNNING,
	GPTOSS_SLOT_CANCELLED,
	GPTOSS_SLOT_DONE
} GptossSlotState;

typedef struct GptossSlot
{
	GptossSlotState state;
	int			worker;			/* index of the worker that serves it */
	uint64		request_id;		/* unique over the server's life */
	uint64		generation;		/* worker generation that admitted it */
	int			owner_pgprocno; /* backend waiting for the result */
	dsm_handle	handle;			/* the request segment */
	bool		worker_exited;	/* DONE because the worker went away */
} GptossSlot;

typedef struct GptossShared
{
	LWLock	   *lock;			/* protects slots[] */
	int			nworkers;
	int			nslots;
	pg_atomic_uint64 next_request_id;
	ConditionVariable slot_freed;	/* broadcast whenever a slot becomes FREE */
	GptossWorkerShared workers[GPTOSS_MAX_WORKERS];
	GptossSlot	slots[FLEXIBLE_ARRAY_MEMBER];
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
 * Request segments (shmem.c): header, payload and result frames
 */
typedef enum GptossRequestKind
{
	GPTOSS_REQ_GENERATE = 1,	/* prompt text */
	GPTOSS_REQ_CHAT,			/* chat messages */
	GPTOSS_REQ_TOKENIZE,		/* text -> ids */
	GPTOSS_REQ_DETOKENIZE		/* ids -> text */
} GptossRequestKind;

/* Generation parameters as they travel (a flat copy of params jsonb + GUC defaults). */
typedef struct GptossParams
{
	int32		max_tokens;
	float4		temperature;
	float4		top_p;
	int32		top_k;
	bool		has_seed;
	uint64		seed;
	int32		reasoning_effort;	/* gptoss_reasoning */
	bool		raw;
	bool		ignore_eos;
	bool		include_reasoning;
	bool		stream;			/* send text as it is generated, not only at the end */
} GptossParams;

/*
 * Start of a request segment.  The payload is a sequence of items, each a
 * uint32 length followed by that many bytes and a NUL:
 *   GENERATE:   prompt, [instructions], stop strings...
 *   CHAT:       (role, content) x n_messages, [instructions], stop strings...
 *   TOKENIZE:   text
 *   DETOKENIZE: one item holding n_ids int32 ids
 */
typedef struct GptossRequestHeader
{
	uint32		magic;
	GptossRequestKind kind;
	uint64		request_id;
	int			slot;
	GptossParams params;
	bool		has_instructions;
	int32		n_messages;
	int32		n_stop;
	int32		n_ids;
	Size		payload_offset;
	Size		payload_size;
	Size		mq_offset;
	Size		mq_size;
} GptossRequestHeader;

/*
 * Frames from the worker, one shm_mq message each; the first byte says which:
 *   'T' text bytes to append       'R' reasoning bytes to append
 *   'S' reset text and reasoning (the answer restarted)
 *   'I' int32 token ids to append  'F' GptossFinishFrame
 *   'E' GptossErrorFrame header followed by the message
 */
#define GPTOSS_FRAME_TEXT		'T'
#define GPTOSS_FRAME_REASONING	'R'
#define GPTOSS_FRAME_RESET		'S'
#define GPTOSS_FRAME_IDS		'I'
#define GPTOSS_FRAME_FINISH		'F'
#define GPTOSS_FRAME_ERROR		'E'

typedef struct GptossFinishFrame
{
	int32		finish_reason;	/* gptoss_finish_reason */
	int32		prompt_tokens;
	int32		completion_tokens;
} GptossFinishFrame;

typedef struct GptossErrorFrame
{
	int32		sqlerrcode;		/* MAKE_SQLSTATE value */
} GptossErrorFrame;

/* Bytes one payload item of len bytes takes. */
extern Size gptoss_payload_item_size(Size len);

/* Writes one payload item at *dest and advances *dest past it. */
extern void gptoss_payload_put(char **dest, const char *data, uint32 len);

/* Reads the next payload item; false when the payload is exhausted or malformed. */
extern bool gptoss_payload_get(const char **cursor, const char *end,
							   const char **data, uint32 *len);

/* ---------------------------------------------------------------------------
 * Backend side of a request (request.c)
 */
typedef struct GptossChatMessage
{
	char	   *role;			/* UTF-8 */
	char	   *content;		/* UTF-8 */
} GptossChatMessage;

/* A request as built by a SQL function; strings are UTF-8. */
typedef struct GptossRequest
{
	GptossRequestKind kind;
	GptossParams params;
	const char *text;			/* GENERATE prompt or TOKENIZE text */
	size_t		text_len;
	GptossChatMessage *messages;	/* CHAT */
	int			n_messages;
	const char *instructions;	/* or NULL */
	char	  **stop;
	int			n_stop;
	const int32 *ids;			/* DETOKENIZE */
	int			n_ids;
} GptossRequest;

/* What came back; text and reasoning are valid UTF-8. */
typedef struct GptossResponse
{
	StringInfoData text;
	StringInfoData reasoning;
	int32	   *ids;
	int			n_ids;
	int			finish_reason;
	int			prompt_tokens;
	int			completion_tokens;
	int			resets;			/* RESET frames seen (the answer restarted) */
	bool		finished;
} GptossResponse;

typedef struct GptossCall GptossCall;

/* Sends req to a worker; the call stays open until gptoss_call_end. */
extern GptossCall *gptoss_call_start(const GptossRequest *req);

/*
 * Waits for the next frame and folds it into resp; returns false once the
 * response is complete.  Raises the worker's error, or 55000 when the worker
 * goes away.
 */
extern bool gptoss_call_next(GptossCall *call, GptossResponse *resp);

/* Closes the call: frees the slot (the worker drops an unfinished request). */
extern void gptoss_call_end(GptossCall *call);

/* Runs req to completion. */
extern void gptoss_execute(const GptossRequest *req, GptossResponse *resp);

/* ---------------------------------------------------------------------------
 * Background worker (worker.c)
 */
extern PGDLLEXPORT void gptoss_worker_main(Datum main_arg);

#endif							/* GPTOSS_H */
