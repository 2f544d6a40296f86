/*
 * module.c: module entry point: GUCs, shared memory hooks, the registration
 * of the background workers and the tokenizer every session inherits.
 *
 * Everything here runs in the postmaster (through shared_preload_libraries)
 * or in a session loading the library; neither touches the model weights or
 * CUDA.  Only the workers, once forked, create an engine (worker.c).  The
 * postmaster loads the tokenizer (prompt.c) so that sessions tokenize
 * prompts themselves without loading it each (docs/architecture.md).
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "gptoss.h"
#include "enrich.h"

PG_MODULE_MAGIC;

/* True when _PG_init ran from shared_preload_libraries. */
bool		gptoss_preloaded = false;

char	   *gptoss_model_path = NULL;
int			gptoss_device = GPTOSS_DEVICE_AUTO;
char	   *gptoss_devices = NULL;
int			gptoss_max_batch_size = 64;
int			gptoss_max_context = 8192;
double		gptoss_gpu_memory_fraction = 0.9;
int			gptoss_kv_cache_tokens = 0;
bool		gptoss_cuda_graphs = true;
int			gptoss_threads = 0;
int			gptoss_prefill_chunk = 0;
int			gptoss_max_step_tokens = 0;
int			gptoss_max_requests = 256;
int			gptoss_queue_wait = 10000;
int			gptoss_max_queue_wait = 60000;
int			gptoss_max_sequences_per_role = 0;
int			gptoss_max_tokens_limit = 0;

static const struct config_enum_entry device_options[] = {
	{"auto", GPTOSS_DEVICE_AUTO, false},
	{"cuda", GPTOSS_DEVICE_CUDA, false},
	{"cpu", GPTOSS_DEVICE_CPU, false},
	{NULL, 0, false}
};

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);

/* Name of a gptoss.device value. */
const char *
gptoss_device_name(int device)
{
	switch (device)
	{
		case GPTOSS_DEVICE_CUDA:
			return "cuda";
		case GPTOSS_DEVICE_CPU:
			return "cpu";
		default:
			return "auto";
	}
}

/* Parses a comma-separated list of device indices; -1 when malformed. */
int
gptoss_parse_devices(const char *list, int *out, int max_out)
{
	const char *p = list ? list : "";
	int			n = 0;

	while (*p == ' ')
		p++;
	if (*p == '\0')
	{
		if (max_out > 0)
			out[0] = 0;
		return 1;
	}
	for (;;)
	{
		char	   *end;
		long		v;

		while (*p == ' ')
			p++;
		if (*p < '0' || *p > '9')
			return -1;
		v = strtol(p, &end, 10);
		if (v < 0 || v > 1023 || n >= max_out)
			return -1;
		for (int i = 0; i < n; i++)
			if (out[i] == (int) v)
				return -1;
		out[n++] = (int) v;
		p = end;
		while (*p == ' ')
			p++;
		if (*p == '\0')
			return n;
		if (*p != ',')
			return -1;
		p++;
	}
}

/* One worker per listed GPU; a single one, device 0, for the CPU. */
int
gptoss_worker_devices(int *devices)
{
	int			n;

	devices[0] = 0;
	if (gptoss_device == GPTOSS_DEVICE_CPU)
		return 1;
	n = gptoss_parse_devices(gptoss_devices, devices, GPTOSS_MAX_WORKERS);
	return n > 0 ? n : 1;
}

/* Number of workers: one per device. */
int
gptoss_worker_count(void)
{
	int			devices[GPTOSS_MAX_WORKERS];

	return gptoss_worker_devices(devices);
}

/* Basename of gptoss.model_path, trailing slashes ignored. */
char *
gptoss_model_name(void)
{
	char	   *path = pstrdup(gptoss_model_path ? gptoss_model_path : "");
	size_t		len = strlen(path);
	char	   *slash;

	while (len > 1 && path[len - 1] == '/')
		path[--len] = '\0';
	slash = strrchr(path, '/');
	return slash ? pstrdup(slash + 1) : path;
}

/* gptoss.queue_wait, at most gptoss.max_queue_wait. */
int
gptoss_effective_queue_wait(void)
{
	return Min(gptoss_queue_wait, gptoss_max_queue_wait);
}

/* GUC check hook: gptoss.devices must be a list of distinct indices. */
static bool
check_devices(char **newval, void **extra, GucSource source)
{
	int			devices[GPTOSS_MAX_WORKERS];

	if (gptoss_parse_devices(*newval, devices, GPTOSS_MAX_WORKERS) < 0)
	{
		GUC_check_errdetail("gptoss.devices must be a comma-separated list of at most %d distinct device indices.",
							GPTOSS_MAX_WORKERS);
		return false;
	}
	return true;
}

/* ERROR 55000 when the library was not preloaded (no shared memory, no worker). */
void
gptoss_check_preloaded(void)
{
	if (!gptoss_preloaded || gptoss_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("gptoss must be loaded via shared_preload_libraries"),
				 errhint("Add gptoss to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* Requests the shared memory and the lock (PG15: from shmem_request_hook). */
static void
gptoss_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(gptoss_shmem_size());
	RequestNamedLWLockTranche("gptoss", 1);
}

/* Creates or attaches the shared state. */
static void
gptoss_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	gptoss_shmem_init();
}

/* Registers one background worker per device. */
static void
register_workers(void)
{
	int			devices[GPTOSS_MAX_WORKERS];
	int			n = gptoss_worker_devices(devices);

	for (int i = 0; i < n; i++)
	{
		BackgroundWorker worker;

		memset(&worker, 0, sizeof(worker));
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		worker.bgw_start_time = BgWorkerStart_ConsistentState;
		worker.bgw_restart_time = 2;
		snprintf(worker.bgw_library_name, BGW_MAXLEN, "gptoss");
		snprintf(worker.bgw_function_name, BGW_MAXLEN, "gptoss_worker_main");
		if (gptoss_device == GPTOSS_DEVICE_CPU)
			snprintf(worker.bgw_name, BGW_MAXLEN, "gptoss worker %d (cpu)", i);
		else
			snprintf(worker.bgw_name, BGW_MAXLEN, "gptoss worker %d (%s device %d)",
					 i, gptoss_device_name(gptoss_device), devices[i]);
		snprintf(worker.bgw_type, BGW_MAXLEN, "gptoss worker");
		worker.bgw_main_arg = Int32GetDatum(i);
		worker.bgw_notify_pid = 0;
		RegisterBackgroundWorker(&worker);
	}
}

/* Defines the GUCs. */
static void
define_gucs(void)
{
	DefineCustomStringVariable("gptoss.model_path",
							   "Directory of the gpt-oss checkpoint (config.json, tokenizer.json, safetensors).",
							   NULL,
							   &gptoss_model_path,
							   "",
							   PGC_POSTMASTER,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomEnumVariable("gptoss.device",
							 "Compute device: auto (cuda when available, else cpu), cuda or cpu.",
							 NULL,
							 &gptoss_device,
							 GPTOSS_DEVICE_AUTO,
							 device_options,
							 PGC_POSTMASTER,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("gptoss.devices",
							   "Comma-separated GPU indices; one worker runs per listed GPU (empty: GPU 0).",
							   NULL,
							   &gptoss_devices,
							   "",
							   PGC_POSTMASTER,
							   0,
							   check_devices, NULL, NULL);

	DefineCustomIntVariable("gptoss.max_batch_size",
							"Sequences a worker runs at once (KV-cache slots).",
							NULL,
							&gptoss_max_batch_size,
							64, 1, 4096,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("gptoss.max_context",
							"Longest sequence (prompt plus generated tokens); at most the model's max_position_embeddings.",
							NULL,
							&gptoss_max_context,
							8192, 16, 1048576,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomRealVariable("gptoss.gpu_memory_fraction",
							 "Share of the GPU's memory a worker may use.",
							 NULL,
							 &gptoss_gpu_memory_fraction,
							 0.9, 0.05, 1.0,
							 PGC_POSTMASTER,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("gptoss.kv_cache_tokens",
							"Tokens of KV cache over all sequences (0: max_batch_size * max_context).",
							NULL,
							&gptoss_kv_cache_tokens,
							0, 0, INT_MAX,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("gptoss.cuda_graphs",
							 "Capture decode steps as CUDA graphs.",
							 NULL,
							 &gptoss_cuda_graphs,
							 true,
							 PGC_POSTMASTER,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("gptoss.threads",
							"CPU threads of a cpu worker (0: GPTOSS_THREADS or all cores).",
							NULL,
							&gptoss_threads,
							0, 0, 1024,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("gptoss.prefill_chunk",
							"Most prompt tokens of one sequence per step (0: engine default).",
							NULL,
							&gptoss_prefill_chunk,
							0, 0, INT_MAX,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("gptoss.max_step_tokens",
							"Most tokens per step over all sequences (0: engine default).",
							NULL,
							&gptoss_max_step_tokens,
							0, 0, INT_MAX,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("gptoss.max_requests",
							"Request slots in shared memory: requests running or queued in the workers at once.",
							NULL,
							&gptoss_max_requests,
							256, 1, 65536,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("gptoss.queue_wait",
							"How long a request may wait to be accepted by a worker (free slot, worker ready).",
							"Past it the request fails with 53000 (queue full) or 55000 (worker not ready).",
							&gptoss_queue_wait,
							10000, 0, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("gptoss.max_sequences_per_role",
							"Batch seats one role may hold in a worker (0: max_batch_size - 1).",
							"A role never holds more than max_batch_size - 1 seats, so another role always finds one; this caps it lower.",
							&gptoss_max_sequences_per_role,
							0, 0, INT_MAX,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("gptoss.max_queue_wait",
							"Upper bound on gptoss.queue_wait, for every user.",
							"A session whose gptoss.queue_wait is longer waits this long at most.",
							&gptoss_max_queue_wait,
							60000, 0, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	gptoss_define_param_gucs();

	DefineCustomIntVariable("gptoss.max_tokens_limit",
							"Cap on max_tokens for every request (0: only the context limits it).",
							"Larger requests are clamped and finish with reason length.",
							&gptoss_max_tokens_limit,
							0, 0, INT_MAX,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	gptoss_batch_define_gucs();

	MarkGUCPrefixReserved("gptoss");
}

/* Module load: everything happens only when preloaded by the postmaster. */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
	{
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("gptoss must be loaded via shared_preload_libraries"),
				 errdetail("Every gptoss function will raise an error.")));
		return;
	}
	gptoss_preloaded = true;

	define_gucs();

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = gptoss_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = gptoss_shmem_startup;

	register_workers();
	gptoss_preload_tokenizer();
	gptoss_batch_init();
	enrich_init();
}
