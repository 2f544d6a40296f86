/*
 * request.c: the backend side of a request.
 *
 * A call creates a DSM segment holding the request (header + payload, no
 * size cap) and a shm_mq for the answer, takes a free slot in shared memory
 * (waiting up to gptoss.queue_wait for one), wakes the worker and then waits
 * on its latch for frames.  Every wait is interruptible: CHECK_FOR_INTERRUPTS
 * after each wakeup (cancel, statement_timeout, terminate), postmaster death,
 * and WL_SOCKET_CLOSED on the client socket to notice a disconnected client.
 * Each wakeup (at least every GPTOSS_POLL_MS) also checks that the worker that
 * took the request is still the one running, so a worker that exits fails its
 * waiting backends within a fraction of a second instead of leaving them hung.
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
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "gptoss.h"

struct GptossCall
{
	dsm_segment *seg;
	shm_mq_handle *mqh;
	int			slot;
	int			worker;
	uint64		request_id;
	TimestampTz started;
	bool		done_seen;		/* the slot was DONE at the last check */
};

/* Latch, postmaster death and (for client backends) the client socket; built once. */
static WaitEventSet *call_wait_set = NULL;

/* Builds the wait event set of this backend on first use. */
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

/* Raises 55000 with worker w's reason for not serving. */
static void
raise_worker_failed(int w)
{
	GptossWorkerShared snap;

	gptoss_worker_snapshot(w, &snap);
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("gptoss model is not available: %s", snap.error),
			 errhint("%s", snap.error_hint)));
}

/*
 * Picks the worker for a new request: the one with the fewest slots among
 * those that have not failed.  Returns -1 when every worker failed.  Caller
 * holds the lock.
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
		GptossSlot *s = &gptoss_shared->slots[i];

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

/*
 * on_dsm_detach callback of a request segment: gives the slot up.  Runs on
 * every way out of a call, so the worker always learns that nobody waits.
 */
static void
release_slot(dsm_segment *seg, Datum arg)
{
	int			slot = DatumGetInt32(arg);
	GptossRequestHeader *hdr = (GptossRequestHeader *) dsm_segment_address(seg);
	GptossSlot *s = &gptoss_shared->slots[slot];
	bool		freed = false;
	int			wake = -1;

	LWLockAcquire(gptoss_shared->lock, LW_EXCLUSIVE);
	if (s->request_id == hdr->request_id)
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
 * Lays out the request payload (see GptossRequestHeader): with dest NULL only
 * counts its bytes; returns the size.  Strings go straight into the segment,
 * so a long prompt is copied once.
 */
static Size
build_payload(const GptossRequest *req, char *dest)
{
	Size		size = 0;

#define ITEM(data, len) \
	do { \
		size = add_size(size, gptoss_payload_item_size(len)); \
		if (dest) \
			gptoss_payload_put(&dest, (data), (uint32) (len)); \
	} while (0)

	switch (req->kind)
	{
		case GPTOSS_REQ_GENERATE:
		case GPTOSS_REQ_TOKENIZE:
			ITEM(req->text, req->text_len);
			break;
		case GPTOSS_REQ_CHAT:
			for (int i = 0; i < req->n_messages; i++)
			{
				ITEM(req->messages[i].role, strlen(req->messages[i].role));
				ITEM(req->messages[i].content, strlen(req->messages[i].content));
			}
			break;
		case GPTOSS_REQ_DETOKENIZE:
			ITEM((const char *) req->ids, req->n_ids * sizeof(int32));
			break;
	}
	if (req->kind == GPTOSS_REQ_GENERATE || req->kind == GPTOSS_REQ_CHAT)
	{
		if (req->instructions != NULL)
			ITEM(req->instructions, strlen(req->instructions));
		for (int i = 0; i < req->n_stop; i++)
			ITEM(req->stop[i], strlen(req->stop[i]));
	}
#undef ITEM
	return size;
}

/* Sends req to a worker: segment, slot, wakeup. */
GptossCall *
gptoss_call_start(const GptossRequest *req)
{
	GptossCall *call;
	Size		payload_size;
	GptossRequestHeader *hdr;
	Size		hdr_size = MAXALIGN(sizeof(GptossRequestHeader));
	Size		total;
	char	   *base;
	shm_mq	   *mq;
	TimestampTz deadline;
	int			slot = -1;
	int			worker = -1;

	gptoss_check_preloaded();
	/* Payload items carry 32-bit lengths; no context holds anything near this. */
	if (req->text_len > MaxAllocSize / 2)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("gptoss request text is too large (%zu bytes)", req->text_len)));

	/* Fail fast, before any allocation, when no worker can serve. */
	LWLockAcquire(gptoss_shared->lock, LW_SHARED);
	worker = choose_worker();
	LWLockRelease(gptoss_shared->lock);
	if (worker < 0)
		raise_worker_failed(0);

	payload_size = build_payload(req, NULL);
	total = add_size(add_size(hdr_size, MAXALIGN(payload_size)), GPTOSS_MQ_SIZE);

	call = palloc0(sizeof(GptossCall));
	call->seg = dsm_create(total, 0);
	base = dsm_segment_address(call->seg);
	hdr = (GptossRequestHeader *) base;
	memset(hdr, 0, sizeof(*hdr));
	hdr->magic = GPTOSS_REQUEST_MAGIC;
	hdr->kind = req->kind;
	hdr->request_id = pg_atomic_fetch_add_u64(&gptoss_shared->next_request_id, 1);
	hdr->params = req->params;
	hdr->has_instructions = req->instructions != NULL;
	hdr->n_messages = req->n_messages;
	hdr->n_stop = req->n_stop;
	hdr->n_ids = req->n_ids;
	hdr->payload_offset = hdr_size;
	hdr->payload_size = payload_size;
	hdr->mq_offset = hdr_size + MAXALIGN(payload_size);
	hdr->mq_size = GPTOSS_MQ_SIZE;
	(void) build_payload(req, base + hdr->payload_offset);

	mq = shm_mq_create(base + hdr->mq_offset, hdr->mq_size);
	shm_mq_set_receiver(mq, MyProc);
	call->mqh = shm_mq_attach(mq, call->seg, NULL);
	call->request_id = hdr->request_id;
	call->started = GetCurrentTimestamp();

	/* Take a free slot, waiting up to gptoss.queue_wait for one. */
	deadline = TimestampTzPlusMilliseconds(call->started, gptoss_queue_wait);
	ConditionVariablePrepareToSleep(&gptoss_shared->slot_freed);
	for (;;)
	{
		long		remaining;

		LWLockAcquire(gptoss_shared->lock, LW_EXCLUSIVE);
		worker = choose_worker();
		if (worker >= 0)
		{
			for (int i = 0; i < gptoss_shared->nslots; i++)
			{
				GptossSlot *s = &gptoss_shared->slots[i];

				if (s->state != GPTOSS_SLOT_FREE)
					continue;
				s->state = GPTOSS_SLOT_SUBMITTED;
				s->worker = worker;
				s->request_id = hdr->request_id;
				s->generation = 0;
				s->owner_pgprocno = MyProc->pgprocno;
				s->handle = dsm_segment_handle(call->seg);
				s->worker_exited = false;
				slot = i;
				break;
			}
		}
		LWLockRelease(gptoss_shared->lock);
		if (slot >= 0)
			break;
		if (worker < 0)
		{
			ConditionVariableCancelSleep();
			raise_worker_failed(0);
		}
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
		{
			ConditionVariableCancelSleep();
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
					 errmsg("gptoss request queue is full"),
					 errdetail("All %d request slots stayed busy for gptoss.queue_wait (%d ms).",
							   gptoss_shared->nslots, gptoss_queue_wait),
					 errhint("Raise gptoss.max_requests or gptoss.queue_wait.")));
		}
		(void) ConditionVariableTimedSleep(&gptoss_shared->slot_freed,
										   Min(remaining, GPTOSS_POLL_MS),
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();

	/* From here on, detaching the segment gives the slot back. */
	hdr->slot = slot;
	on_dsm_detach(call->seg, release_slot, Int32GetDatum(slot));
	call->slot = slot;
	call->worker = worker;
	gptoss_wake_worker(worker);
	return call;
}

/* Appends n int32 ids to resp. */
static void
append_ids(GptossResponse *resp, const char *data, Size nbytes)
{
	int			n = (int) (nbytes / sizeof(int32));

	if (n == 0)
		return;
	if (resp->ids == NULL)
		resp->ids = palloc(nbytes);
	else
		resp->ids = repalloc(resp->ids, (resp->n_ids + n) * sizeof(int32));
	memcpy(resp->ids + resp->n_ids, data, (Size) n * sizeof(int32));
	resp->n_ids += n;
}

/* Folds one frame into resp; raises the worker's error frames. */
static void
apply_frame(GptossResponse *resp, const char *data, Size nbytes)
{
	if (nbytes < 1)
		elog(ERROR, "gptoss: empty frame from worker");
	switch (data[0])
	{
		case GPTOSS_FRAME_TEXT:
			appendBinaryStringInfo(&resp->text, data + 1, nbytes - 1);
			break;
		case GPTOSS_FRAME_REASONING:
			appendBinaryStringInfo(&resp->reasoning, data + 1, nbytes - 1);
			break;
		case GPTOSS_FRAME_RESET:
			resetStringInfo(&resp->text);
			resetStringInfo(&resp->reasoning);
			resp->resets++;
			break;
		case GPTOSS_FRAME_IDS:
			append_ids(resp, data + 1, nbytes - 1);
			break;
		case GPTOSS_FRAME_FINISH:
			{
				GptossFinishFrame f;

				if (nbytes != 1 + sizeof(f))
					elog(ERROR, "gptoss: malformed finish frame from worker");
				memcpy(&f, data + 1, sizeof(f));
				resp->finish_reason = f.finish_reason;
				resp->prompt_tokens = f.prompt_tokens;
				resp->completion_tokens = f.completion_tokens;
				resp->finished = true;
				break;
			}
		case GPTOSS_FRAME_ERROR:
			{
				GptossErrorFrame f;

				if (nbytes < 1 + sizeof(f))
					elog(ERROR, "gptoss: malformed error frame from worker");
				memcpy(&f, data + 1, sizeof(f));
				ereport(ERROR,
						(errcode(f.sqlerrcode),
						 errmsg("%.*s", (int) (nbytes - 1 - sizeof(f)), data + 1 + sizeof(f))));
				break;
			}
		default:
			elog(ERROR, "gptoss: unknown frame type %d from worker", data[0]);
	}
}

/* Raised when the worker that held the request is gone. */
static void
raise_worker_exited(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("gptoss worker exited while processing the request"),
			 errhint("The worker restarts by itself; retry once gptoss_status() reports ready.")));
}

/*
 * Looks at the slot and the worker when no frame is waiting: raises when the
 * worker failed or exited, or when the request waited too long to be taken.
 */
static void
check_call(GptossCall *call)
{
	GptossSlot	s;
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
				raise_worker_failed(call->worker);
			if (snap.state != GPTOSS_WORKER_READY &&
				TimestampDifferenceExceeds(call->started, GetCurrentTimestamp(), gptoss_queue_wait))
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("gptoss worker is not ready (state %s, %.0f%% loaded)",
								gptoss_worker_state_name(snap.state), snap.progress * 100.0),
						 errhint("Wait until gptoss_status() reports ready, or raise gptoss.queue_wait.")));
			break;
		case GPTOSS_SLOT_RUNNING:
			gptoss_worker_snapshot(call->worker, &snap);
			if (snap.pid == 0 || snap.generation != s.generation)
				raise_worker_exited();
			break;
		case GPTOSS_SLOT_DONE:
			/* The worker flushed its frames before marking DONE: read once more, then give up. */
			if (call->done_seen)
				raise_worker_exited();
			call->done_seen = true;
			break;
		case GPTOSS_SLOT_FREE:
		case GPTOSS_SLOT_CANCELLED:
			elog(ERROR, "gptoss: request slot %d is in state %d while waiting", call->slot, (int) s.state);
	}
}

/* Waits for the next frame and folds it into resp; false once complete. */
bool
gptoss_call_next(GptossCall *call, GptossResponse *resp)
{
	WaitEventSet *set = get_wait_set();

	if (resp->finished)
		return false;
	for (;;)
	{
		Size		nbytes;
		void	   *data;
		shm_mq_result res;
		WaitEvent	event;

		res = shm_mq_receive(call->mqh, &nbytes, &data, true);
		if (res == SHM_MQ_SUCCESS)
		{
			apply_frame(resp, data, nbytes);
			return !resp->finished;
		}
		if (res == SHM_MQ_DETACHED)
			raise_worker_exited();

		check_call(call);
		if (call->done_seen)
			continue;

		if (WaitEventSetWait(set, GPTOSS_POLL_MS, &event, 1, PG_WAIT_EXTENSION) == 1 &&
			(event.events & WL_SOCKET_CLOSED))
		{
			/* The client went away: end the session as PostgreSQL does for a lost connection. */
			ClientConnectionLost = true;
			InterruptPending = true;
		}
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/* Detaches the segment; release_slot gives the slot back. */
void
gptoss_call_end(GptossCall *call)
{
	dsm_detach(call->seg);
	pfree(call);
}

/* Runs req to completion. */
void
gptoss_execute(const GptossRequest *req, GptossResponse *resp)
{
	GptossCall *call;

	memset(resp, 0, sizeof(*resp));
	initStringInfo(&resp->text);
	initStringInfo(&resp->reasoning);
	call = gptoss_call_start(req);
	while (gptoss_call_next(call, resp))
		;
	gptoss_call_end(call);
}
