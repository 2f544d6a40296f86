/*
 * shmem.c: the shared state of gptoss: per-worker status and the request
 * slots (see gptoss.h for the slot protocol).  What travels in a request's
 * own segment is in protocol.c.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"

#include "gptoss.h"

GptossShared *gptoss_shared = NULL;

/* Bytes of the shared state for gptoss.max_requests slots. */
Size
gptoss_shmem_size(void)
{
	return add_size(offsetof(GptossShared, slots),
					mul_size(sizeof(GptossRequestSlot), gptoss_max_requests));
}

/* Creates the shared state (postmaster) or finds it (EXEC_BACKEND children). */
void
gptoss_shmem_init(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	gptoss_shared = ShmemInitStruct("gptoss", gptoss_shmem_size(), &found);
	if (!found)
	{
		int			devices[GPTOSS_MAX_WORKERS];

		memset(gptoss_shared, 0, gptoss_shmem_size());
		gptoss_shared->lock = &(GetNamedLWLockTranche("gptoss"))->lock;
		gptoss_shared->nworkers = gptoss_worker_devices(devices);
		gptoss_shared->nslots = gptoss_max_requests;
		pg_atomic_init_u64(&gptoss_shared->next_request_id, 1);
		ConditionVariableInit(&gptoss_shared->slot_freed);
		pg_atomic_init_u32(&gptoss_shared->segment_waiters, 0);
		for (int i = 0; i < GPTOSS_MAX_WORKERS; i++)
		{
			GptossWorkerShared *w = &gptoss_shared->workers[i];

			SpinLockInit(&w->mutex);
			w->device_index = i < gptoss_shared->nworkers ? devices[i] : -1;
			w->pid = 0;
			w->pgprocno = -1;
			w->state = GPTOSS_WORKER_STARTING;
			pg_atomic_init_u32(&w->events, 0);
		}
		for (int i = 0; i < gptoss_shared->nslots; i++)
		{
			gptoss_shared->slots[i].state = GPTOSS_SLOT_FREE;
			gptoss_shared->slots[i].owner_pgprocno = -1;
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Sets the latch of the process with pgprocno (no-op for -1). */
void
gptoss_set_proc_latch(int pgprocno)
{
	if (pgprocno >= 0)
		SetLatch(&ProcGlobal->allProcs[pgprocno].procLatch);
}

/* Bumps worker w's event counter and sets its latch when it runs. */
void
gptoss_wake_worker(int w)
{
	GptossWorkerShared *ws = &gptoss_shared->workers[w];
	int			pgprocno;

	pg_atomic_fetch_add_u32(&ws->events, 1);
	SpinLockAcquire(&ws->mutex);
	pgprocno = ws->pid != 0 ? ws->pgprocno : -1;
	SpinLockRelease(&ws->mutex);
	gptoss_set_proc_latch(pgprocno);
}

/* Copies worker w's shared state under its mutex. */
void
gptoss_worker_snapshot(int w, GptossWorkerShared *out)
{
	GptossWorkerShared *ws = &gptoss_shared->workers[w];

	SpinLockAcquire(&ws->mutex);
	memcpy(out, ws, sizeof(*out));
	SpinLockRelease(&ws->mutex);
}

/* Name of a worker state. */
const char *
gptoss_worker_state_name(GptossWorkerState state)
{
	switch (state)
	{
		case GPTOSS_WORKER_LOADING:
			return "loading";
		case GPTOSS_WORKER_READY:
			return "ready";
		case GPTOSS_WORKER_FAILED:
			return "failed";
		case GPTOSS_WORKER_STARTING:
			break;
	}
	return "starting";
}
