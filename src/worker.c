/*
 * worker.c: the gptoss background worker.
 *
 * One worker owns one engine (model, tokenizer, compute backend, scheduler).  It
 * starts in state `starting`, loads the model (`loading`, with the engine's
 * progress published in shared memory and the log) and then is `ready` or,
 * when the model cannot be loaded, `failed` with the reason.  A failed worker
 * stays alive and idle so that requests fail fast with that reason instead of
 * the postmaster restarting a worker that can only fail again.
 *
 * The main loop, once ready:
 *   1. when a session signalled an event: admit SUBMITTED request slots
 *      (attach the request segment, submit its prompt ids) and drop
 *      CANCELLED ones (the engine frees their sequence and KV cache at once);
 *   2. push pending frames into the request queues (never blocking: a session
 *      that reads slowly only delays its own request);
 *   3. run one batched engine step when any request is active and deliver
 *      what it produced: streamed text, or the final answer;
 *   4. publish statistics; sleep on the latch only when there is no work.
 *
 * Nothing on this loop costs more than a bounded amount per request: the
 * sessions tokenize and render prompts (prompt.c) and check their length,
 * so admitting a request copies its ids and nothing more, and results go out
 * as the engine makes text final (no comparing of whole texts).
 *
 * Signals: the CPU compute backend runs threads; they must never run PostgreSQL's
 * signal handlers, so every engine call that may start or run threads is
 * made with signals blocked (threads inherit the mask) and pending signals
 * are taken between steps.  SIGTERM (shutdown, pg_terminate_backend) ends the
 * worker with proc_exit(1) so that the postmaster restarts it after
 * bgw_restart_time; a fatal engine error does the same.  The exit callback
 * fails every request the worker held, so waiting sessions get an ERROR at
 * once.
 */
#include "postgres.h"

#include <pthread.h>
#include <signal.h>

#include "lib/ilist.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "engine.h"

#include "gptoss.h"

/* How often the compute backend's memory figures are refreshed in the stats (ms). */
#define INFO_REFRESH_MS 200

/* Hints of a failed load: a model directory problem, or a device that cannot be used. */
#define HINT_MODEL_PATH "Check gptoss.model_path and the server log; after fixing the model directory, restart the worker with pg_terminate_backend() or restart the server."
#define HINT_DEVICE "Set gptoss.device to cpu (or auto, which falls back to the CPU) and restart the server, or make a CUDA device usable to the server."

/* Loading progress is logged at every LOAD_LOG_STEP of the whole. */
#define LOAD_LOG_STEP 0.1

/* Latch wait of the main loop: while requests wait for cache room, and when idle (ms). */
#define WAIT_ACTIVE_MS 10L
#define WAIT_IDLE_MS 1000L

/*
 * The longest loop iteration (the work between two latch waits: admitting,
 * one engine step, delivering) is kept per second for the last
 * LOOP_WINDOW_S seconds, and their maximum published as max_step_ms_1min.
 * An iteration is measured in CPU time of the loop's thread: that counts the
 * work the loop does itself (what one request could make it do) and not the
 * time a busy machine kept the process off a core.
 */
#define LOOP_WINDOW_S 60

/* A request this worker serves, indexed by its request slot. */
typedef struct WorkerJob
{
	bool		in_use;
	uint64		request_id;
	dsm_segment *seg;
	shm_mq_handle *mqh;
	int64		engine_id;		/* id in the engine, or -1 */
	Oid			role;			/* fair admission keys (the request slot's) */
	int			session;
	int64		submit_step;	/* the worker's steps when the session submitted it */
	bool		stream;
	bool		final_queued;	/* the last frame is in the outbox */
	bool		final_error;	/* that frame is an error */
	bool		receiver_gone;	/* the session detached from the queue */
	StringInfoData outbox;		/* frames not yet in the queue: (uint32 len, frame)... */
	Size		outbox_head;	/* offset of the first unsent frame */
	size_t		text_sent;		/* bytes of the engine's text already queued */
	int			text_restarts;	/* the engine's text_restarts when text_sent was counted */
	size_t		reasoning_sent;
	GptossJobView view;			/* the job; its strings and ids stay in the segment */
	MemoryContext cxt;
	dlist_node	node;			/* in engine_jobs while engine_id >= 0 */
} WorkerJob;

static volatile sig_atomic_t got_sigterm = false;

static int	worker_index;
static GptossWorkerShared *me;
static gptoss_engine *engine = NULL;
static WorkerJob *jobs;		/* [nslots], by request slot */
static dlist_head engine_jobs = DLIST_STATIC_INIT(engine_jobs);
static MemoryContext worker_cxt;
static sigset_t engine_sigmask;
static pthread_t main_thread;
static double next_progress_log;
static int64 last_engine_steps;
static int64 steps_base;		/* stats.steps when this process's engine started */
static int64 last_engine_step_sequences;
static TimestampTz last_info_refresh;
static double loop_ms_max[LOOP_WINDOW_S];	/* by second modulo LOOP_WINDOW_S */
static int64 loop_ms_second[LOOP_WINDOW_S];	/* the second each entry is about */

/* SIGTERM: ask the main loop to exit. */
static void
worker_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

/* Blocks every asynchronous signal; *old receives the previous mask. */
static void
block_signals(sigset_t *old)
{
	pthread_sigmask(SIG_BLOCK, &engine_sigmask, old);
}

/* Restores the mask saved by block_signals (pending signals run now). */
static void
restore_signals(const sigset_t *old)
{
	pthread_sigmask(SIG_SETMASK, old, NULL);
}

/* Sets the worker's state (and error text) and reports it in pg_stat_activity. */
static void
set_state(GptossWorkerState state, const char *error)
{
	SpinLockAcquire(&me->mutex);
	me->state = state;
	if (error)
		strlcpy(me->error, error, sizeof(me->error));
	SpinLockRelease(&me->mutex);
	pgstat_report_activity(STATE_RUNNING, gptoss_worker_state_name(state));
}

/* Enters the failed state with why and what to change (the hint callers get). */
static void
set_failed(const char *error, const char *hint)
{
	SpinLockAcquire(&me->mutex);
	strlcpy(me->error_hint, hint, sizeof(me->error_hint));
	SpinLockRelease(&me->mutex);
	set_state(GPTOSS_WORKER_FAILED, error);
}

/* Maps an engine error code to a SQLSTATE. */
static int
engine_sqlstate(gptoss_errcode code)
{
	switch (code)
	{
		case GPTOSS_ERR_INVALID:
			return ERRCODE_INVALID_PARAMETER_VALUE;
		case GPTOSS_ERR_TOO_LONG:
			return ERRCODE_PROGRAM_LIMIT_EXCEEDED;
		case GPTOSS_ERR_BUSY:
			return ERRCODE_INSUFFICIENT_RESOURCES;
		case GPTOSS_ERR_INTERRUPTED:
			return ERRCODE_QUERY_CANCELED;
		case GPTOSS_ERR_INTERNAL:
			break;
	}
	return ERRCODE_INTERNAL_ERROR;
}

/* ---------------------------------------------------------------------------
 * Frames and the outbox
 */

/* Adds one to a request counter of this worker's published statistics. */
static void
count_request(int64 *counter)
{
	SpinLockAcquire(&me->mutex);
	(*counter)++;
	SpinLockRelease(&me->mutex);
}

/*
 * Queues an error frame; it ends the request, counted failed now (before
 * the session can read it).
 */
static void
queue_error(WorkerJob *r, int sqlerrcode, const char *msg)
{
	gptoss_frame_put_error(&r->outbox, sqlerrcode, msg);
	r->final_queued = true;
	r->final_error = true;
	count_request(&me->stats.requests_failed);
}

/* Queues the finish frame; it ends the request. */
static void
queue_finish(WorkerJob *r, int finish_reason, int prompt_tokens, int completion_tokens,
			 int queue_steps)
{
	gptoss_frame_put_finish(&r->outbox, finish_reason, prompt_tokens, completion_tokens,
							queue_steps);
	r->final_queued = true;
}

/*
 * Moves outbox frames into the queue without blocking.  Returns true when
 * the outbox is empty.  A detached queue means the session is gone: the
 * frames are dropped.
 */
static bool
flush_outbox(WorkerJob *r)
{
	while (r->outbox_head < (Size) r->outbox.len)
	{
		uint32		len;
		shm_mq_result res;

		memcpy(&len, r->outbox.data + r->outbox_head, sizeof(len));
		res = shm_mq_send(r->mqh, len, r->outbox.data + r->outbox_head + sizeof(len), true, true);
		if (res == SHM_MQ_WOULD_BLOCK)
			return false;
		if (res == SHM_MQ_DETACHED)
		{
			r->receiver_gone = true;
			r->outbox_head = r->outbox.len;
			break;
		}
		r->outbox_head += sizeof(len) + len;
	}
	resetStringInfo(&r->outbox);
	r->outbox_head = 0;
	return true;
}

/* ---------------------------------------------------------------------------
 * Request lifecycle
 */

/* Adds a finished or dropped request's tokens to the counters. */
static void
count_tokens(int64 prompt_tokens, int64 completion_tokens)
{
	SpinLockAcquire(&me->mutex);
	me->stats.prompt_tokens += prompt_tokens;
	me->stats.completion_tokens += completion_tokens;
	SpinLockRelease(&me->mutex);
}

/* Takes r's sequence out of the engine (cancelling it when unfinished). */
static void
drop_from_engine(WorkerJob *r)
{
	gptoss_result res;

	if (r->engine_id < 0)
		return;
	if (gptoss_engine_result(engine, r->engine_id, &res) == 0)
		count_tokens(res.prompt_tokens, res.completion_tokens);
	gptoss_engine_release(engine, r->engine_id);
	r->engine_id = -1;
	dlist_delete(&r->node);
}

/*
 * Counts how r ended when the worker lets go of it, unless that is counted
 * already; with queue_error, every request in requests_total ends in exactly
 * one of the end counters (see GptossWorkerStats).  An error frame was
 * counted failed when queued.  A finish frame that reached the queue counts
 * as completed, which has no counter of its own (requests_total less the
 * others), so a request that got no final frame, or whose finish frame did
 * not reach its session, is counted now: cancelled when the session gave it
 * up first (session_gone: its slot is CANCELLED; or its queue is detached),
 * else failed (the worker is exiting, and the session gets an error).
 */
static void
count_end(const WorkerJob *r, bool session_gone)
{
	bool		delivered = r->final_queued && r->outbox.len == 0 && !r->receiver_gone;

	if (delivered || r->final_error)
		return;
	count_request(session_gone || r->receiver_gone ? &me->stats.requests_cancelled :
				  &me->stats.requests_failed);
}

/*
 * Ends the worker's part of slot s (lock held): a running request becomes
 * DONE for its session to collect (with worker_exited when the worker is
 * going away, so that the session raises an error) and its session is woken;
 * a cancelled one is freed.  Returns whether the slot was freed.
 */
static bool
end_slot_locked(GptossRequestSlot *s, bool worker_exited)
{
	if (s->state == GPTOSS_SLOT_RUNNING)
	{
		s->state = GPTOSS_SLOT_DONE;
		s->worker_exited = worker_exited;
		gptoss_set_proc_latch(s->owner_pgprocno);
	}
	else if (s->state == GPTOSS_SLOT_CANCELLED)
	{
		s->state = GPTOSS_SLOT_FREE;
		return true;
	}
	return false;
}

/*
 * Forgets r, counting how it ended: detaches its segment and hands its slot
 * back (DONE for the session to collect, or FREE when the session already
 * gave up).  session_gone: its slot was found CANCELLED.
 */
static void
complete_request(int slot, WorkerJob *r, bool session_gone)
{
	GptossRequestSlot *s = &gptoss_shared->slots[slot];
	bool		freed = false;

	drop_from_engine(r);
	count_end(r, session_gone);
	dsm_detach(r->seg);

	LWLockAcquire(gptoss_shared->lock, LW_EXCLUSIVE);
	if (s->request_id == r->request_id)
		freed = end_slot_locked(s, false);
	LWLockRelease(gptoss_shared->lock);
	if (freed)
		ConditionVariableBroadcast(&gptoss_shared->slot_freed);

	MemoryContextDelete(r->cxt);
	memset(r, 0, sizeof(*r));
	r->engine_id = -1;
}

/* Submits an admitted job's prompt to the engine; failures end it with their error frame. */
static void
start_job(WorkerJob *r, const GptossJobView *view)
{
	gptoss_error err;
	int64		id;

	memset(&err, 0, sizeof(err));
	if (view->n_labels > 0)
	{
		const int32 **conts = palloc(sizeof(int32 *) * view->n_labels);
		const int32 *at = view->label_ids;

		for (int i = 0; i < view->n_labels; i++)
		{
			conts[i] = at;
			at += view->label_lens[i];
		}
		id = gptoss_engine_submit_score(engine, view->prompt, view->n_prompt,
										(const int32_t *const *) conts, view->label_lens,
										view->n_labels, &view->params, &err);
		pfree(conts);
	}
	else
		id = gptoss_engine_submit(engine, view->prompt, view->n_prompt, &view->params, &err);
	if (id < 0)
	{
		queue_error(r, engine_sqlstate(err.code), err.msg);
		return;
	}
	r->engine_id = id;
	(void) gptoss_engine_set_owner(engine, id, r->role, (uint64) r->session);
	dlist_push_tail(&engine_jobs, &r->node);
}

/*
 * Attaches slot's request segment, reads its job and takes the slot
 * (SUBMITTED -> RUNNING), counting it in requests_total.  Called with the
 * lock held, so the session cannot drop the segment meanwhile.
 */
static bool
admit_slot(int slot, GptossRequestSlot *s)
{
	WorkerJob  *r = &jobs[slot];
	dsm_segment *seg;
	const char *why = "could not attach the request segment";
	MemoryContext old;

	count_request(&me->stats.requests_total);

	/*
	 * The session keeps the segment until the slot leaves SUBMITTED, so it
	 * exists; a segment that cannot be mapped or read ends the request like
	 * a worker that went away would (the session gets an ERROR rather than
	 * waiting).
	 */
	memset(r, 0, sizeof(*r));
	seg = dsm_attach(s->handle);
	if (seg != NULL)
	{
		dsm_pin_mapping(seg);
		if (!gptoss_job_read(seg, &r->view, &why) || r->view.request_id != s->request_id)
		{
			dsm_detach(seg);
			seg = NULL;
		}
	}
	if (seg == NULL)
	{
		ereport(LOG, (errmsg("gptoss worker %d: could not read request %llu: %s",
							 worker_index, (unsigned long long) s->request_id, why)));
		count_request(&me->stats.requests_failed);
		s->state = GPTOSS_SLOT_DONE;
		s->worker_exited = true;
		gptoss_set_proc_latch(s->owner_pgprocno);
		return false;
	}

	r->cxt = AllocSetContextCreate(worker_cxt, "gptoss request", ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(r->cxt);
	r->in_use = true;
	r->request_id = s->request_id;
	r->role = s->role;
	r->session = s->session;
	r->submit_step = s->submit_step;
	r->seg = seg;
	r->engine_id = -1;
	r->stream = r->view.stream;
	shm_mq_set_sender(r->view.queue, MyProc);
	r->mqh = shm_mq_attach(r->view.queue, seg, NULL);
	initStringInfo(&r->outbox);
	MemoryContextSwitchTo(old);

	s->state = GPTOSS_SLOT_RUNNING;
	s->generation = me->generation;
	return true;
}

/* Admits SUBMITTED slots and drops CANCELLED ones of this worker. */
static void
scan_slots(void)
{
	int			nslots = gptoss_shared->nslots;
	int		   *admitted = palloc(sizeof(int) * nslots);
	int		   *cancelled = palloc(sizeof(int) * nslots);
	int			n_admitted = 0,
				n_cancelled = 0;
	bool		freed = false;

	LWLockAcquire(gptoss_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < nslots; i++)
	{
		GptossRequestSlot *s = &gptoss_shared->slots[i];

		if (s->worker != worker_index)
			continue;
		if (s->state == GPTOSS_SLOT_SUBMITTED)
		{
			if (admit_slot(i, s))
				admitted[n_admitted++] = i;
		}
		else if (s->state == GPTOSS_SLOT_CANCELLED)
		{
			if (jobs[i].in_use && jobs[i].request_id == s->request_id)
				cancelled[n_cancelled++] = i;
			else
			{
				/* Not ours (a previous worker process took it): nothing to drop. */
				s->state = GPTOSS_SLOT_FREE;
				freed = true;
			}
		}
	}
	LWLockRelease(gptoss_shared->lock);
	if (freed)
		ConditionVariableBroadcast(&gptoss_shared->slot_freed);

	for (int i = 0; i < n_cancelled; i++)
		complete_request(cancelled[i], &jobs[cancelled[i]], true);
	for (int i = 0; i < n_admitted; i++)
		start_job(&jobs[admitted[i]], &jobs[admitted[i]].view);
	pfree(admitted);
	pfree(cancelled);
}

/*
 * Queues what the engine produced for r: streamed text as it grows, and the
 * answer and finish record once it is done.
 */
static void
deliver(WorkerJob *r)
{
	gptoss_result res;

	if (gptoss_engine_result(engine, r->engine_id, &res) < 0)
	{
		queue_error(r, ERRCODE_INTERNAL_ERROR, "gptoss engine lost the request");
		dlist_delete(&r->node);
		r->engine_id = -1;
		return;
	}
	if (r->stream || res.finish_reason != GPTOSS_FINISH_NONE)
	{
		/* Engine text is final as it appears; it only starts over with a new final message. */
		if (res.text_restarts != r->text_restarts)
		{
			gptoss_frame_put(&r->outbox, GPTOSS_FRAME_RESTART, NULL, 0);
			r->text_restarts = res.text_restarts;
			r->text_sent = 0;
		}
		if (res.text_len > r->text_sent)
		{
			gptoss_frame_put(&r->outbox, GPTOSS_FRAME_TEXT, res.text + r->text_sent,
							 res.text_len - r->text_sent);
			r->text_sent = res.text_len;
		}
		if (res.reasoning_len > r->reasoning_sent)
		{
			gptoss_frame_put(&r->outbox, GPTOSS_FRAME_REASONING, res.reasoning + r->reasoning_sent,
							 res.reasoning_len - r->reasoning_sent);
			r->reasoning_sent = res.reasoning_len;
		}
	}
	if (res.finish_reason == GPTOSS_FINISH_NONE)
		return;

	if (res.finish_reason == GPTOSS_FINISH_ERROR)
		queue_error(r, ERRCODE_INTERNAL_ERROR, res.error);
	else
	{
		/* label scores and the returned text's log-probabilities come before the finish frame */
		if (res.scores != NULL)
			gptoss_frame_put(&r->outbox, GPTOSS_FRAME_SCORES, res.scores,
							 sizeof(double) * res.n_scores);
		for (int i = 0; res.logprobs != NULL && i < res.n_text_tokens; i++)
		{
			GptossLogprobFrame f;

			f.token = res.tokens[res.text_tokens[i]];
			f.lp = res.logprobs[res.text_tokens[i]];
			gptoss_frame_put(&r->outbox, GPTOSS_FRAME_LOGPROB, &f, sizeof(f));
		}
		/* steps the worker ran from the session's submission to the step the request joined */
		queue_finish(r, res.finish_reason, res.prompt_tokens, res.completion_tokens,
					 (int) Max(0, steps_base + res.admit_step - r->submit_step));
	}
	drop_from_engine(r);
}

/*
 * Runs one engine step and delivers its results; a failing step ends the
 * worker.  Returns false when the step computed nothing (every request
 * waits for KV-cache room), so the caller does not spin.
 */
static bool
run_step(void)
{
	gptoss_error err;
	gptoss_engine_stats before;
	gptoss_engine_stats after;
	sigset_t	old;
	int			rc;
	dlist_mutable_iter iter;

	memset(&err, 0, sizeof(err));
	gptoss_engine_get_stats(engine, &before);
	block_signals(&old);
	rc = gptoss_engine_step(engine, &err);
	restore_signals(&old);
	if (rc < 0)
	{
		/* The compute backend is unusable now: fail every request, then let the postmaster restart us. */
		dlist_foreach_modify(iter, &engine_jobs)
		{
			WorkerJob *r = dlist_container(WorkerJob, node, iter.cur);

			queue_error(r, ERRCODE_INTERNAL_ERROR, err.msg);
			(void) flush_outbox(r);
		}
		ereport(LOG,
				(errmsg("gptoss worker %d: engine step failed: %s", worker_index, err.msg),
				 errdetail("The worker exits and is restarted by the postmaster.")));
		proc_exit(1);
	}
	dlist_foreach_modify(iter, &engine_jobs)
	{
		WorkerJob *r = dlist_container(WorkerJob, node, iter.cur);

		deliver(r);
	}
	gptoss_engine_get_stats(engine, &after);
	return after.steps != before.steps;
}

/* Pushes pending frames and completes requests whose last frame went out. */
static void
flush_all(void)
{
	for (int i = 0; i < gptoss_shared->nslots; i++)
	{
		WorkerJob *r = &jobs[i];

		if (!r->in_use)
			continue;
		if (flush_outbox(r) && r->final_queued)
			complete_request(i, r, false);
		else if (r->receiver_gone && r->engine_id >= 0)
			complete_request(i, r, false);
	}
}

/* Records how long one loop iteration took. */
static void
note_loop_time(double seconds)
{
	int64		second = (int64) gptoss_now();
	int			at = (int) (second % LOOP_WINDOW_S);
	double		ms = seconds * 1000.0;

	if (loop_ms_second[at] != second)
	{
		loop_ms_second[at] = second;
		loop_ms_max[at] = 0;
	}
	if (ms > loop_ms_max[at])
		loop_ms_max[at] = ms;
}

/* The longest loop iteration of the last LOOP_WINDOW_S seconds (ms). */
static double
max_loop_ms(void)
{
	int64		second = (int64) gptoss_now();
	double		m = 0;

	for (int i = 0; i < LOOP_WINDOW_S; i++)
		if (loop_ms_second[i] > second - LOOP_WINDOW_S && loop_ms_max[i] > m)
			m = loop_ms_max[i];
	return m;
}

/* Copies engine counters and compute backend figures into shared memory. */
static void
publish_stats(bool force_info)
{
	gptoss_engine_stats es;
	gptoss_backend *be = gptoss_engine_backend(engine);
	gptoss_backend_info bi;
	TimestampTz now = GetCurrentTimestamp();
	bool		refresh = force_info ||
		TimestampDifferenceExceeds(last_info_refresh, now, INFO_REFRESH_MS);

	gptoss_engine_get_stats(engine, &es);
	if (refresh)
	{
		memset(&bi, 0, sizeof(bi));
		be->get_info(be, &bi);
		last_info_refresh = now;
	}
	SpinLockAcquire(&me->mutex);
	me->stats.steps += es.steps - last_engine_steps;
	me->stats.step_sequences += es.step_sequences - last_engine_step_sequences;
	me->stats.active = es.active;
	me->stats.queued = es.queued;
	me->stats.prefill_tok_s = es.prefill_tok_s;
	me->stats.decode_tok_s = es.decode_tok_s;
	me->stats.mean_batch_size_1min = es.mean_batch_size_1min;
	me->stats.max_step_ms_1min = max_loop_ms();
	me->stats.prefix_cache_hit_tokens = es.prefix_cache_hit_tokens;
	if (refresh)
	{
		me->info.kv_cache_used_tokens = bi.kv_cache_used_tokens;
		me->info.memory_used_bytes = bi.memory_used_bytes;
		me->info.memory_total_bytes = bi.memory_total_bytes;
	}
	SpinLockRelease(&me->mutex);
	last_engine_steps = es.steps;
	last_engine_step_sequences = es.step_sequences;
}

/* ---------------------------------------------------------------------------
 * Start, load, exit
 */

/*
 * Ends this worker's claim on the request slots: requests it was running get
 * DONE with worker_exited (their sessions raise an error), cancelled ones are
 * freed.  Used when the worker exits and when a restarted one takes over.
 */
static void
release_taken_slots(void)
{
	bool		freed = false;

	LWLockAcquire(gptoss_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < gptoss_shared->nslots; i++)
	{
		GptossRequestSlot *s = &gptoss_shared->slots[i];

		if (s->worker == worker_index && end_slot_locked(s, true))
			freed = true;
	}
	LWLockRelease(gptoss_shared->lock);
	if (freed)
		ConditionVariableBroadcast(&gptoss_shared->slot_freed);
}

/*
 * At exit: counts how each request the worker still holds ended (count_end):
 * cancelled when its session already gave it up, else failed (its session
 * gets an error), unless counted already.
 */
static void
count_held_requests(void)
{
	LWLockAcquire(gptoss_shared->lock, LW_SHARED);
	for (int i = 0; i < gptoss_shared->nslots; i++)
	{
		GptossRequestSlot *s = &gptoss_shared->slots[i];
		WorkerJob  *r = &jobs[i];

		if (!r->in_use)
			continue;
		count_end(r, s->request_id == r->request_id && s->state == GPTOSS_SLOT_CANCELLED);
		r->in_use = false;
	}
	LWLockRelease(gptoss_shared->lock);
}

/*
 * Exit callback: counts and fails every request this worker took so their
 * sessions stop waiting, and marks the worker as gone.  Requests it had not
 * taken yet stay SUBMITTED for the restarted worker (their sessions wait for
 * it at most gptoss.queue_wait) and are not counted yet.
 */
static void
worker_exit(int code, Datum arg)
{
	/* An ERROR may have left our lock held; we are leaving anyway. */
	LWLockReleaseAll();
	count_held_requests();

	SpinLockAcquire(&me->mutex);
	me->pid = 0;
	me->pgprocno = -1;
	me->state = GPTOSS_WORKER_STARTING;
	me->progress = 0;
	me->stats.active = 0;
	me->stats.queued = 0;
	SpinLockRelease(&me->mutex);

	release_taken_slots();
}

/*
 * Engine progress callback while loading: publishes the fraction, logs every
 * 10%, and lets a pending SIGTERM end a long load (on the main thread only).
 */
static void
load_progress(void *arg, double fraction, const char *what)
{
	SpinLockAcquire(&me->mutex);
	me->progress = fraction;
	strlcpy(me->progress_what, what ? what : "", sizeof(me->progress_what));
	SpinLockRelease(&me->mutex);

	if (!pthread_equal(pthread_self(), main_thread))
		return;
	if (fraction >= next_progress_log)
	{
		ereport(LOG,
				(errmsg("gptoss worker %d: loading model: %.0f%% (%s)",
						worker_index, fraction * 100.0, what ? what : "")));
		while (next_progress_log <= fraction)
			next_progress_log += LOAD_LOG_STEP;
	}
	/* Take pending signals now; a shutdown need not wait for the whole load. */
	{
		sigset_t	blocked;

		pthread_sigmask(SIG_UNBLOCK, &engine_sigmask, &blocked);
		pthread_sigmask(SIG_SETMASK, &blocked, NULL);
	}
	if (got_sigterm)
		proc_exit(1);
}

/* Records what was loaded in shared memory. */
static void
publish_model_info(double load_seconds)
{
	const gptoss_model *model = gptoss_engine_model(engine);
	gptoss_backend *be = gptoss_engine_backend(engine);
	const gptoss_tokenizer *tok = gptoss_engine_tokenizer(engine);
	const gptoss_config *c = &model->config;
	gptoss_backend_info bi;
	GptossModelInfo info;
	char	   *name = gptoss_model_name();

	memset(&bi, 0, sizeof(bi));
	be->get_info(be, &bi);
	memset(&info, 0, sizeof(info));
	strlcpy(info.backend, be->name, sizeof(info.backend));
	strlcpy(info.device_name, bi.device_name, sizeof(info.device_name));
	strlcpy(info.model_name, name, sizeof(info.model_name));
	info.device_index = me->device_index;
	info.memory_total_bytes = bi.memory_total_bytes;
	info.memory_used_bytes = bi.memory_used_bytes;
	info.weight_bytes = bi.weight_bytes;
	info.kv_cache_bytes = bi.kv_cache_bytes;
	info.kv_cache_tokens = bi.kv_cache_tokens;
	info.kv_cache_used_tokens = bi.kv_cache_used_tokens;
	info.random_weights = c->random_weights;
	info.n_params = model->n_params;
	info.n_active_params = model->n_active_params;
	info.tensor_bytes = model->tensor_bytes;
	info.max_batch_size = be->opts.max_seqs;
	info.max_context = be->opts.max_context;
	info.vocab_size = gptoss_tokenizer_vocab_size(tok);
	info.hidden_size = c->hidden_size;
	info.num_layers = c->num_layers;
	info.num_heads = c->num_heads;
	info.num_kv_heads = c->num_kv_heads;
	info.head_dim = c->head_dim;
	info.num_experts = c->num_experts;
	info.experts_per_token = c->experts_per_token;
	info.intermediate_size = c->intermediate_size;
	info.model_vocab_size = c->vocab_size;
	info.sliding_window = c->sliding_window;
	info.max_position_embeddings = c->max_position_embeddings;
	info.initial_context_length = c->initial_context_length;
	info.rope_theta = c->rope_theta;
	info.rope_factor = c->rope_factor;
	info.swiglu_limit = c->swiglu_limit;
	info.load_seconds = load_seconds;

	SpinLockAcquire(&me->mutex);
	me->info = info;
	me->progress = 1.0;
	SpinLockRelease(&me->mutex);
	pfree(name);
}

/* Loads the engine; false (state failed, reason logged) when it cannot. */
static bool
load_engine(void)
{
	gptoss_engine_opts opts;
	gptoss_error err;
	sigset_t	old;
	double		t0 = gptoss_now();

	if (gptoss_model_path == NULL || gptoss_model_path[0] == '\0')
	{
		set_failed("gptoss.model_path is not set", HINT_MODEL_PATH);
		ereport(LOG, (errmsg("gptoss worker %d: gptoss.model_path is not set", worker_index)));
		return false;
	}

	memset(&opts, 0, sizeof(opts));
	opts.model_path = gptoss_model_path;
	opts.device = gptoss_device_name(gptoss_device);
	opts.backend.max_seqs = gptoss_max_batch_size;
	opts.backend.max_context = gptoss_max_context;
	opts.backend.kv_cache_tokens = gptoss_kv_cache_tokens;
	opts.backend.gpu_memory_fraction = gptoss_gpu_memory_fraction;
	opts.backend.device_index = me->device_index;
	opts.backend.cuda_graphs = gptoss_cuda_graphs ? 1 : 0;
	opts.backend.threads = gptoss_threads;
	opts.prefill_chunk = gptoss_prefill_chunk;
	opts.max_step_tokens = gptoss_max_step_tokens;
	/* The postmaster's tokenizer, inherited: no second copy in the worker. */
	opts.tokenizer = gptoss_inherited_tokenizer();

	/* auto means CUDA when a device answers; say so when it falls back. */
	if (gptoss_device == GPTOSS_DEVICE_AUTO)
	{
		opts.device = gptoss_cuda_available() ? "cuda" : "cpu";
		if (strcmp(opts.device, "cpu") == 0)
			ereport(LOG,
					(errmsg("gptoss worker %d: no usable CUDA device, using the CPU backend",
							worker_index)));
	}

	ereport(LOG,
			(errmsg("gptoss worker %d: loading model from \"%s\" (device %s, index %d)",
					worker_index, gptoss_model_path, opts.device, me->device_index)));
	memset(&err, 0, sizeof(err));
	next_progress_log = LOAD_LOG_STEP;
	block_signals(&old);
	engine = gptoss_engine_create(&opts, load_progress, NULL, &err);
	restore_signals(&old);
	if (engine == NULL)
	{
		char		msg[GPTOSS_ERROR_LEN];

		/* gptoss.device = cuda on a machine where no device answers: the model is fine */
		if (strcmp(opts.device, "cuda") == 0 && !gptoss_cuda_available())
		{
			strlcpy(msg, err.msg, sizeof(msg));
			set_failed(msg, HINT_DEVICE);
		}
		else
		{
			snprintf(msg, sizeof(msg), "could not load model from \"%s\": %s",
					 gptoss_model_path, err.msg);
			set_failed(msg, HINT_MODEL_PATH);
		}
		ereport(LOG, (errmsg("gptoss worker %d: %s", worker_index, msg)));
		return false;
	}
	publish_model_info(gptoss_now() - t0);
	return true;
}

/* Registers this process as worker w and resets slots a previous process left. */
static void
register_self(void)
{
	SpinLockAcquire(&me->mutex);
	me->pid = MyProcPid;
	me->pgprocno = MyProc->pgprocno;
	me->generation++;
	me->state = GPTOSS_WORKER_LOADING;
	me->progress = 0;
	me->progress_what[0] = '\0';
	me->error[0] = '\0';
	me->started_at = GetCurrentTimestamp();
	memset(&me->info, 0, sizeof(me->info));
	me->stats.active = 0;
	me->stats.queued = 0;
	me->stats.prefill_tok_s = 0;
	me->stats.decode_tok_s = 0;
	me->stats.mean_batch_size_1min = 0;
	me->stats.max_step_ms_1min = 0;
	SpinLockRelease(&me->mutex);

	release_taken_slots();
}

/*
 * Caps the batch seats of one role: max_batch_size - 1, so that a role with
 * nothing running always finds a seat, or gptoss.max_sequences_per_role
 * when lower.
 */
static void
apply_role_cap(void)
{
	int			seats = gptoss_engine_backend(engine)->opts.max_seqs;
	int			cap = seats > 1 ? seats - 1 : 1;

	if (gptoss_max_sequences_per_role > 0 && gptoss_max_sequences_per_role < cap)
		cap = gptoss_max_sequences_per_role;
	gptoss_engine_set_max_seqs_per_owner(engine, cap);
}

/* Handles SIGTERM and SIGHUP between iterations. */
static void
handle_signals(void)
{
	CHECK_FOR_INTERRUPTS();
	if (got_sigterm)
	{
		ereport(LOG, (errmsg("gptoss worker %d: terminating", worker_index)));
		proc_exit(1);
	}
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		if (engine != NULL)
			apply_role_cap();
	}
}

/* Entry point of a gptoss background worker. */
void
gptoss_worker_main(Datum main_arg)
{
	uint32		seen_events;

	worker_index = DatumGetInt32(main_arg);
	main_thread = pthread_self();
	sigfillset(&engine_sigmask);
	sigdelset(&engine_sigmask, SIGSEGV);
	sigdelset(&engine_sigmask, SIGBUS);
	sigdelset(&engine_sigmask, SIGFPE);
	sigdelset(&engine_sigmask, SIGILL);

	pqsignal(SIGTERM, worker_sigterm);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	if (gptoss_shared == NULL || worker_index < 0 || worker_index >= gptoss_shared->nworkers)
		ereport(ERROR, (errmsg("gptoss worker %d: shared state is missing", worker_index)));
	me = &gptoss_shared->workers[worker_index];
	worker_cxt = AllocSetContextCreate(TopMemoryContext, "gptoss worker", ALLOCSET_DEFAULT_SIZES);
	jobs = MemoryContextAllocZero(worker_cxt, sizeof(WorkerJob) * gptoss_shared->nslots);
	for (int i = 0; i < gptoss_shared->nslots; i++)
		jobs[i].engine_id = -1;

	register_self();
	before_shmem_exit(worker_exit, (Datum) 0);
	pgstat_report_activity(STATE_RUNNING, "loading");

	if (!load_engine())
	{
		/* Stay up and idle: sessions read the reason and fail fast. */
		for (;;)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 WAIT_IDLE_MS, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			handle_signals();
		}
	}

	{
		GptossWorkerShared snap;

		gptoss_worker_snapshot(worker_index, &snap);
		ereport(LOG,
				(errmsg("gptoss worker %d: model \"%s\" ready on %s (%s) in %.1f s: %lld parameters, context %d, batch %d, KV cache %lld tokens",
						worker_index, snap.info.model_name, snap.info.backend, snap.info.device_name,
						snap.info.load_seconds, (long long) snap.info.n_params,
						snap.info.max_context, snap.info.max_batch_size,
						(long long) snap.info.kv_cache_tokens)));
		if (snap.info.max_context != gptoss_max_context)
			ereport(LOG,
					(errmsg("gptoss worker %d: effective max_context is %d tokens, not gptoss.max_context = %d",
							worker_index, snap.info.max_context, gptoss_max_context),
					 errdetail("The model has %d positions (max_position_embeddings).",
							   snap.info.max_position_embeddings)));
	}
	apply_role_cap();
	SpinLockAcquire(&me->mutex);
	steps_base = me->stats.steps;
	SpinLockRelease(&me->mutex);
	set_state(GPTOSS_WORKER_READY, NULL);
	publish_stats(true);

	seen_events = pg_atomic_read_u32(&me->events) - 1;
	for (;;)
	{
		uint32		events;
		bool		active;
		bool		progressed = false;
		double		loop_cpu_start;

		ResetLatch(MyLatch);
		handle_signals();
		loop_cpu_start = gptoss_thread_cpu_time();

		events = pg_atomic_read_u32(&me->events);
		if (events != seen_events)
		{
			seen_events = events;
			scan_slots();
		}
		active = gptoss_engine_active(engine) > 0;
		if (active)
			progressed = run_step();

		/*
		 * Publish before handing results over, so that a session that got
		 * its answer sees statistics that include it; when the engine went
		 * idle, also refresh the memory figures (the freed cache).
		 */
		publish_stats(gptoss_engine_active(engine) == 0);
		flush_all();
		note_loop_time(gptoss_thread_cpu_time() - loop_cpu_start);

		if (!progressed)
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 active ? WAIT_ACTIVE_MS : WAIT_IDLE_MS, PG_WAIT_EXTENSION);
	}
}
