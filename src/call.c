/*
 * call.c: the session side of a request (the call API of gptoss.h).
 *
 * A call writes its job into a new DSM segment (protocol.c), takes a free
 * request slot in shared memory (waiting up to gptoss.queue_wait, capped by
 * gptoss.max_queue_wait, for one), wakes the worker and then reads result
 * frames from the segment's queue.  Every wait is interruptible and on one
 * wait event set: the latch (set by the worker's queue writes, by the
 * broadcast of a freed request slot, and by signals), postmaster death, and
 * WL_SOCKET_CLOSED on the client socket to notice a disconnected client;
 * CHECK_FOR_INTERRUPTS after each wakeup (cancel, statement_timeout,
 * terminate).  Each wakeup (at least every GPTOSS_POLL_MS) also checks that
 * the worker that took the request is still the one running, so a worker
 * that exits fails its waiting sessions within a fraction of a second.
 *
 * Every request segment takes one of the server's dynamic shared memory
 * segments (64 + 5 * MaxBackends in PostgreSQL 15, for the whole cluster),
 * which a few sessions with large batch windows can use up.  A call that
 * finds none does not fail at once: gptoss_call_try_start returns NULL, as
 * for a busy request slot, so a pipeline finishes its own requests first
 * and goes on with a smaller window; gptoss_call_start waits up to
 * gptoss.queue_wait for one, ahead of those refilling windows, then raises
 * 53000.
 *
 * Whatever way the call ends, the segment is detached (explicitly, or by the
 * resource owner on ERROR, or at process exit on FATAL) and its on_dsm_detach
 * callback gives the slot up: a request the worker has not taken is simply
 * dropped, a running one is marked CANCELLED and the worker frees its
 * sequence (and KV cache) at its next iteration.
 */
#include "postgres.h"

/*
 * libpq-be.h includes <gssapi/gssapi.h> when the server was built with
 * GSSAPI, and Debian's postgresql-server-dev-15 does not depend on
 * libkrb5-dev.  We only need Port.sock, and Port keeps its layout without
 * ENABLE_GSS (its gss member becomes a void pointer), so GSSAPI is switched
 * off for this file when its header is missing.
 */
#if defined(ENABLE_GSS) && defined(__has_include)
#if !__has_include(<gssapi/gssapi.h>) && !__has_include(<gssapi.h>)
#undef ENABLE_GSS
#endif
#endif
#include "catalog/pg_authid.h"
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "gptoss.h"

struct GptossCall
{
	dsm_segment *seg;
	shm_mq_handle *mqh;
	int			slot;			/* request slot, -1 until one is taken */
	int			worker;
	uint64		request_id;
	TimestampTz started;
	bool		done_seen;		/* the slot was DONE at the last check */
};

/*
 * How often a session waiting for a dynamic shared memory segment looks
 * again: segments of other users (parallel queries, DSA areas) free up
 * without a broadcast on slot_freed.
 */
#define SEGMENT_POLL_MS 10

/* Calls of this backend that found no dynamic shared memory segment free. */
static uint64 segment_shortages = 0;

/* Latch, postmaster death and (for client sessions) the client socket; built once. */
static WaitEventSet *call_wait_set = NULL;

/* Builds the wait event set of this session on first use. */
static WaitEventSet *
get_wait_set(void)
{
	if (call_wait_set == NULL)
	{
		bool		watch_socket = MyProcPort != NULL && MyProcPort->sock != PGINVALID_SOCKET &&
			WaitEventSetCanReportClosed();
		WaitEventSet *set = CreateWaitEventSet(TopMemoryContext, watch_socket ? 3 : 2);

		AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		if (watch_socket)
			AddWaitEventToSet(set, WL_SOCKET_CLOSED, MyProcPort->sock, NULL, NULL);
		call_wait_set = set;
	}
	return call_wait_set;
}

/*
 * Waits up to timeout_ms for the latch, then serves interrupts.  A closed
 * client socket ends the session as PostgreSQL does for a lost connection.
 */
static void
wait_latch(long timeout_ms)
{
	WaitEvent	event;

	if (WaitEventSetWait(get_wait_set(), timeout_ms, &event, 1, PG_WAIT_EXTENSION) == 1 &&
		(event.events & WL_SOCKET_CLOSED))
	{
		ClientConnectionLost = true;
		InterruptPending = true;
	}
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * Whether the current user may read why the model or tokenizer failed to
 * load: those reasons name the model directory, which only the readers of
 * gptoss_status() (pg_monitor, as gptoss.model_path is superuser-only) see.
 */
bool
gptoss_may_see_load_errors(void)
{
	return has_privs_of_role(GetUserId(), ROLE_PG_MONITOR);
}

/* Raises 55000 with worker w's reason for not serving (to pg_monitor members). */
void
gptoss_raise_worker_failed(int w)
{
	GptossWorkerShared snap;

	if (!gptoss_may_see_load_errors())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("gptoss model is not available"),
				 errdetail("The model failed to load; the reason is in gptoss_status(), for members of pg_monitor, and in the server log."),
				 errcontext("gptoss worker %d", w)));
	gptoss_worker_snapshot(w, &snap);
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("gptoss model is not available: %s", snap.error),
			 errhint("%s", snap.error_hint),
			 errcontext("gptoss worker %d", w)));
}

/* Raised when worker w, which held the request, is gone. */
static void
raise_worker_exited(int w)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("gptoss worker exited while processing the request"),
			 errhint("The worker restarts by itself; retry once gptoss_status() reports ready."),
			 errcontext("gptoss worker %d", w)));
}

/*
 * Picks the worker for a new request: the one with the fewest request slots
 * among those that have not failed.  Returns -1 when every worker failed.
 * Caller holds the lock.
 */
static int
choose_worker(void)
{
	int			load[GPTOSS_MAX_WORKERS];
	int			best = -1;

	for (int w = 0; w < gptoss_shared->nworkers; w++)
		load[w] = 0;
	for (int i = 0; i < gptoss_shared->nslots; i++)
	{
		GptossRequestSlot *s = &gptoss_shared->slots[i];

		if (s->state != GPTOSS_SLOT_FREE && s->worker >= 0 && s->worker < gptoss_shared->nworkers)
			load[s->worker]++;
	}
	for (int w = 0; w < gptoss_shared->nworkers; w++)
	{
		GptossWorkerShared *ws = &gptoss_shared->workers[w];
		GptossWorkerState state;

		SpinLockAcquire(&ws->mutex);
		state = ws->state;
		SpinLockRelease(&ws->mutex);
		if (state == GPTOSS_WORKER_FAILED)
			continue;
		if (best < 0 || load[w] < load[best])
			best = w;
	}
	return best;
}

/* True when some request slot is free now (lock not held; a hint only). */
static bool
any_slot_free(void)
{
	bool		found = false;

	LWLockAcquire(gptoss_shared->lock, LW_SHARED);
	for (int i = 0; i < gptoss_shared->nslots && !found; i++)
		found = gptoss_shared->slots[i].state == GPTOSS_SLOT_FREE;
	LWLockRelease(gptoss_shared->lock);
	return found;
}

/* Raises worker 0's reason when every worker failed (nothing can serve). */
static void
check_some_worker_serves(void)
{
	int			worker;

	LWLockAcquire(gptoss_shared->lock, LW_SHARED);
	worker = choose_worker();
	LWLockRelease(gptoss_shared->lock);
	if (worker < 0)
		gptoss_raise_worker_failed(0);
}

/*
 * on_dsm_detach callback of a request segment: gives the slot up.  Runs on
 * every way out of a call, so the worker always learns that nobody waits.
 * It reads the request id from the segment: the GptossCall may be gone.
 */
static void
release_slot(dsm_segment *seg, Datum arg)
{
	GptossRequestSlot *s = &gptoss_shared->slots[DatumGetInt32(arg)];
	uint64		request_id = gptoss_job_request_id(seg);
	bool		freed = false;
	int			wake = -1;

	LWLockAcquire(gptoss_shared->lock, LW_EXCLUSIVE);
	if (s->request_id == request_id)
	{
		switch (s->state)
		{
			case GPTOSS_SLOT_SUBMITTED:
			case GPTOSS_SLOT_DONE:
				s->state = GPTOSS_SLOT_FREE;
				s->owner_pgprocno = -1;
				freed = true;
				break;
			case GPTOSS_SLOT_RUNNING:
				s->state = GPTOSS_SLOT_CANCELLED;
				s->owner_pgprocno = -1;
				wake = s->worker;
				break;
			case GPTOSS_SLOT_FREE:
			case GPTOSS_SLOT_CANCELLED:
				break;
		}
	}
	LWLockRelease(gptoss_shared->lock);
	if (freed)
		ConditionVariableBroadcast(&gptoss_shared->slot_freed);
	if (wake >= 0)
		gptoss_wake_worker(wake);
}

/*
 * Writes job into a new request segment and attaches its queue as receiver;
 * NULL when the server has no segment left.
 */
static GptossCall *
create_call(const GptossJob *job)
{
	GptossCall *call = palloc0(sizeof(GptossCall));
	shm_mq	   *mq;

	call->slot = -1;
	call->request_id = pg_atomic_fetch_add_u64(&gptoss_shared->next_request_id, 1);
	call->seg = gptoss_job_write(job, call->request_id, &mq);
	if (call->seg == NULL)
	{
		pfree(call);
		return NULL;
	}
	shm_mq_set_receiver(mq, MyProc);
	call->mqh = shm_mq_attach(mq, call->seg, NULL);
	call->started = GetCurrentTimestamp();
	return call;
}

/* qsort order of role oids. */
static int
cmp_oid(const void *a, const void *b)
{
	Oid			x = *(const Oid *) a;
	Oid			y = *(const Oid *) b;

	return x < y ? -1 : x > y;
}

/*
 * True when role may take a free request slot (lock held): any of them
 * while two or more are free; the last one only while the role holds fewer
 * than nslots / (other roles holding slots + 2), the share it would have if
 * one more role came (at least one: a role holding none may take it).  A role over its share therefore never takes the last
 * free slot: it stays for a role under its share, and the hog is the one
 * that waits (and gets 53000 after gptoss.queue_wait).
 */
static bool
may_take_slot(Oid role)
{
	int			nslots = gptoss_shared->nslots;
	int			nfree = 0,
				held = 0,
				nothers = 0,
				others = 0;
	Oid		   *roles;

	for (int i = 0; i < nslots; i++)
		nfree += gptoss_shared->slots[i].state == GPTOSS_SLOT_FREE;
	if (nfree != 1)
		return nfree > 1;
	roles = palloc(sizeof(Oid) * nslots);
	for (int i = 0; i < nslots; i++)
	{
		GptossRequestSlot *s = &gptoss_shared->slots[i];

		if (s->state == GPTOSS_SLOT_FREE)
			continue;
		if (s->role == role)
			held++;
		else
			roles[nothers++] = s->role;
	}
	qsort(roles, nothers, sizeof(Oid), cmp_oid);
	for (int i = 0; i < nothers; i++)
		others += i == 0 || roles[i] != roles[i - 1];
	pfree(roles);
	return held < Max(1, nslots / (others + 2));
}

/*
 * Takes a free request slot for call and hands it to the least loaded
 * worker; false when no slot is free (or only the last one, which a role
 * over its share leaves to others).  Raises when every worker failed.
 */
static bool
claim_slot(GptossCall *call)
{
	int			worker;
	int			slot = -1;
	Oid			role = GetUserId();
	int64		steps = 0;
	bool		allowed;

	LWLockAcquire(gptoss_shared->lock, LW_EXCLUSIVE);
	worker = choose_worker();
	if (worker >= 0)
	{
		GptossWorkerShared *ws = &gptoss_shared->workers[worker];

		SpinLockAcquire(&ws->mutex);
		steps = ws->stats.steps;
		SpinLockRelease(&ws->mutex);
	}
	allowed = worker >= 0 && may_take_slot(role);
	for (int i = 0; allowed && i < gptoss_shared->nslots; i++)
	{
		GptossRequestSlot *s = &gptoss_shared->slots[i];

		if (s->state != GPTOSS_SLOT_FREE)
			continue;
		s->state = GPTOSS_SLOT_SUBMITTED;
		s->worker = worker;
		s->request_id = call->request_id;
		s->generation = 0;
		s->owner_pgprocno = MyProc->pgprocno;
		s->role = role;
		s->session = MyProcPid;
		s->submit_step = steps;
		s->handle = dsm_segment_handle(call->seg);
		s->worker_exited = false;
		slot = i;
		break;
	}
	LWLockRelease(gptoss_shared->lock);
	if (worker < 0)
		gptoss_raise_worker_failed(0);
	if (slot < 0)
		return false;

	/* From here on, detaching the segment gives the slot back. */
	call->slot = slot;
	call->worker = worker;
	on_dsm_detach(call->seg, release_slot, Int32GetDatum(slot));
	gptoss_wake_worker(worker);
	return true;
}

/* Raises 53000: no request slot freed within the queue wait. */
static void
raise_queue_full(int waited_ms)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
			 errmsg("gptoss request queue is full"),
			 errdetail("All %d request slots stayed busy for %d ms (gptoss.queue_wait, at most gptoss.max_queue_wait).",
					   gptoss_shared->nslots, waited_ms),
			 errhint("Raise gptoss.max_requests or gptoss.queue_wait.")));
}

/* What to change when the server runs out of dynamic shared memory segments. */
const char *
gptoss_segment_hint(void)
{
	return "Raise max_connections (PostgreSQL allows 64 + 5 * MaxBackends dynamic shared memory segments) or lower gptoss.batch_window, the number of requests each statement keeps in flight.";
}

/* Raises 53000: every dynamic shared memory segment stayed in use for the queue wait. */
static void
raise_no_segment(int waited_ms)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
			 errmsg("no dynamic shared memory segment is free for a gptoss request"),
			 errdetail("All %d dynamic shared memory segments of the server stayed in use for %d ms (gptoss.queue_wait, at most gptoss.max_queue_wait).",
					   64 + 5 * MaxBackends, waited_ms),
			 errhint("%s", gptoss_segment_hint())));
}

/* Cleanup of wait_for_segment, also on ERROR and FATAL: this session waits no more. */
static void
stop_waiting_for_segment(int code, Datum arg)
{
	pg_atomic_fetch_sub_u32(&gptoss_shared->segment_waiters, 1);
}

/*
 * Creates job's call once a dynamic shared memory segment frees up, waiting
 * until deadline (raises 53000 then).  While this session waits,
 * gptoss_call_try_start returns NULL everywhere, so pipelines that have
 * requests in flight stop refilling their windows and the next segment that
 * frees up is this session's instead of the prize of a race it would lose
 * to whoever is running when it frees up.
 */
static GptossCall *
wait_for_segment(const GptossJob *job, TimestampTz deadline, int queue_wait)
{
	GptossCall *call;

	segment_shortages++;
	pg_atomic_fetch_add_u32(&gptoss_shared->segment_waiters, 1);
	PG_ENSURE_ERROR_CLEANUP(stop_waiting_for_segment, (Datum) 0);
	{
		for (;;)
		{
			long		remaining;

			/* Registered before trying, so that a segment freed meanwhile sets the latch. */
			ConditionVariablePrepareToSleep(&gptoss_shared->slot_freed);
			call = create_call(job);
			if (call != NULL)
				break;
			remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
			if (remaining <= 0)
			{
				ConditionVariableCancelSleep();
				raise_no_segment(queue_wait);
			}
			wait_latch(Min(remaining, SEGMENT_POLL_MS));
		}
		ConditionVariableCancelSleep();
	}
	PG_END_ENSURE_ERROR_CLEANUP(stop_waiting_for_segment, (Datum) 0);
	stop_waiting_for_segment(0, (Datum) 0);
	/* The pipelines that held back for this session may refill their windows now. */
	ConditionVariableBroadcast(&gptoss_shared->slot_freed);
	return call;
}

/* Calls of this backend so far that found no dynamic shared memory segment free. */
uint64
gptoss_call_segment_shortages(void)
{
	return segment_shortages;
}

/* Sends job, waiting for a request segment and a free request slot (see gptoss.h). */
GptossCall *
gptoss_call_start(const GptossJob *job)
{
	GptossCall *call;
	int			queue_wait = gptoss_effective_queue_wait();
	TimestampTz deadline;

	gptoss_check_preloaded();
	/* Fail fast, before any allocation, when no worker can serve. */
	check_some_worker_serves();

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), queue_wait);
	call = create_call(job);
	if (call == NULL)
		call = wait_for_segment(job, deadline, queue_wait);
	for (;;)
	{
		long		remaining;

		/* Registered before looking, so that a slot freed meanwhile sets the latch. */
		ConditionVariablePrepareToSleep(&gptoss_shared->slot_freed);
		if (claim_slot(call))
			break;
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
		{
			ConditionVariableCancelSleep();
			raise_queue_full(queue_wait);
		}
		wait_latch(Min(remaining, GPTOSS_POLL_MS));
	}
	ConditionVariableCancelSleep();
	return call;
}

/*
 * Sends job when a request slot and a request segment are free now; NULL
 * otherwise, and also while a session in gptoss_call_start waits for a
 * segment (it gets the next one).
 */
GptossCall *
gptoss_call_try_start(const GptossJob *job)
{
	GptossCall *call;

	gptoss_check_preloaded();
	check_some_worker_serves();
	if (pg_atomic_read_u32(&gptoss_shared->segment_waiters) > 0)
	{
		segment_shortages++;
		return NULL;
	}
	if (!any_slot_free())
		return NULL;
	call = create_call(job);
	if (call == NULL)
	{
		segment_shortages++;
		return NULL;
	}
	if (!claim_slot(call))
	{
		/* Another session took the last slot meanwhile. */
		dsm_detach(call->seg);
		pfree(call);
		return NULL;
	}
	return call;
}

/*
 * Looks at the slot and the worker when no frame is waiting: raises when the
 * worker failed or exited, or when the request waited too long to be taken.
 */
static void
check_call(GptossCall *call)
{
	GptossRequestSlot s;
	GptossWorkerShared snap;

	LWLockAcquire(gptoss_shared->lock, LW_SHARED);
	s = gptoss_shared->slots[call->slot];
	LWLockRelease(gptoss_shared->lock);
	if (s.request_id != call->request_id)
		elog(ERROR, "gptoss: request slot %d was taken over", call->slot);

	switch (s.state)
	{
		case GPTOSS_SLOT_SUBMITTED:
			/* A ready worker takes it at its next iteration; otherwise wait for the worker. */
			gptoss_worker_snapshot(call->worker, &snap);
			if (snap.state == GPTOSS_WORKER_FAILED)
				gptoss_raise_worker_failed(call->worker);
			if (snap.state != GPTOSS_WORKER_READY &&
				TimestampDifferenceExceeds(call->started, GetCurrentTimestamp(),
										   gptoss_effective_queue_wait()))
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("gptoss worker is not ready (state %s, %.0f%% loaded)",
								gptoss_worker_state_name(snap.state), snap.progress * 100.0),
						 errhint("Wait until gptoss_status() reports ready, or raise gptoss.queue_wait."),
						 errcontext("gptoss worker %d", call->worker)));
			break;
		case GPTOSS_SLOT_RUNNING:
			gptoss_worker_snapshot(call->worker, &snap);
			if (snap.pid == 0 || snap.generation != s.generation)
				raise_worker_exited(call->worker);
			break;
		case GPTOSS_SLOT_DONE:
			/* The worker flushed its frames before marking DONE: read once more, then give up. */
			if (call->done_seen)
				raise_worker_exited(call->worker);
			call->done_seen = true;
			break;
		case GPTOSS_SLOT_FREE:
		case GPTOSS_SLOT_CANCELLED:
			elog(ERROR, "gptoss: request slot %d is in state %d while waiting", call->slot, (int) s.state);
	}
}

/*
 * Folds the frames waiting in the queue into resp.  Returns how many; when
 * none waits, checks the worker (which raises when it is gone).
 */
static int
fold_frames(GptossCall *call, GptossResponse *resp)
{
	int			n = 0;

	while (!resp->finished)
	{
		Size		nbytes;
		void	   *data;
		shm_mq_result res = shm_mq_receive(call->mqh, &nbytes, &data, true);

		if (res == SHM_MQ_SUCCESS)
		{
			gptoss_frame_apply(resp, data, nbytes, call->worker);
			n++;
			continue;
		}
		if (res == SHM_MQ_DETACHED)
			raise_worker_exited(call->worker);
		if (n > 0)
			break;
		if (call->done_seen)
		{
			check_call(call);	/* raises: DONE and nothing more came */
			break;
		}
		check_call(call);
		if (!call->done_seen)
			break;
		/* DONE: the last frames are in the queue; read them */
	}
	return n;
}

/* Folds the frames available now; true once the response is complete. */
bool
gptoss_call_poll(GptossCall *call, GptossResponse *resp)
{
	if (!resp->finished)
		(void) fold_frames(call, resp);
	return resp->finished;
}

/* Waits for the next frames and folds them into resp; false once complete. */
bool
gptoss_call_next(GptossCall *call, GptossResponse *resp)
{
	while (!resp->finished)
	{
		if (fold_frames(call, resp) > 0)
			return !resp->finished;
		wait_latch(GPTOSS_POLL_MS);
	}
	return false;
}

/* Sleeps until a call progressed or a request slot was freed, then serves interrupts. */
void
gptoss_call_wait(void)
{
	ConditionVariablePrepareToSleep(&gptoss_shared->slot_freed);
	wait_latch(GPTOSS_POLL_MS);
	ConditionVariableCancelSleep();
}

/* Detaches the segment; release_slot gives the slot back. */
void
gptoss_call_end(GptossCall *call)
{
	dsm_detach(call->seg);
	pfree(call);
}

/* Runs job to completion (with on_error "null", a row error ends up in resp). */
void
gptoss_execute(const GptossJob *job, GptossResponse *resp)
{
	GptossCall *call;

	gptoss_response_init(resp);
	resp->keep_row_error = job->params.on_error == GPTOSS_ON_ERROR_NULL;
	call = gptoss_call_start(job);
	while (gptoss_call_next(call, resp))
		;
	gptoss_call_end(call);
}
