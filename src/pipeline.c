/*
 * pipeline.c: submit many generation jobs, collect their results in
 * submission order (see pipeline.h for the interface).
 *
 * The jobs sit in a ring of window entries: submit appends at the tail, next
 * returns the head.  Each entry holds its open call until the response is
 * complete; then the call ends at once (its request slot is free for anyone)
 * and the response waits in the entry until it is collected.  Every wait
 * polls all open calls, so a finished request never holds its slot while the
 * pipeline waits for another one.  The worker never blocks on an unread
 * request (it keeps frames in an outbox), so the requests behind the head
 * keep generating.
 *
 * A submit that finds no request slot or no dynamic shared memory segment
 * free (the server has 64 + 5 * MaxBackends of them, for every session's
 * requests) collects its own finished requests and waits for its open ones,
 * so the window shrinks for a while instead of the statement failing; only
 * a pipeline with nothing in flight waits as a single call does.  Submits
 * that waited for a segment are logged once, when the pipeline is freed.
 */
#include "postgres.h"

#include "utils/memutils.h"

#include "pipeline.h"

/* The default window takes at most 1/WINDOW_SLOT_SHARE of the request slots. */
#define WINDOW_SLOT_SHARE 2

typedef struct PipelineEntry
{
	GptossCall *call;			/* open call, NULL once complete */
	gptoss_gen_params params;	/* scalars of the job */
	GptossResponse resp;
} PipelineEntry;

struct GptossPipeline
{
	MemoryContext cxt;
	int			window;
	int			flags;
	int			head;			/* ring index of the oldest pending entry */
	int			count;			/* pending entries */
	int			open;			/* entries whose call is open */
	int			segment_waits;	/* submits that found no DSM segment free */
	PipelineEntry *ring;		/* window entries */
};

/* min(max_batch_size x workers, max_requests / 2), at least 1. */
int
gptoss_default_window(void)
{
	return Max(1, Min(gptoss_max_batch_size * gptoss_worker_count(),
					  gptoss_max_requests / WINDOW_SLOT_SHARE));
}

/* Creates an empty pipeline in the current memory context. */
GptossPipeline *
gptoss_pipeline_create(int window, int flags)
{
	GptossPipeline *p = palloc0(sizeof(GptossPipeline));

	Assert(window >= 1);
	p->cxt = CurrentMemoryContext;
	p->window = window;
	p->flags = flags;
	p->ring = palloc0(sizeof(PipelineEntry) * window);
	return p;
}

/* True when another job fits into the window. */
bool
gptoss_pipeline_has_room(GptossPipeline *p)
{
	return p->count < p->window;
}

/* Jobs submitted and not yet collected. */
int
gptoss_pipeline_pending(GptossPipeline *p)
{
	return p->count;
}

/* Folds what arrived into every open call; ends the complete ones.  Returns how many ended. */
static int
poll_open_calls(GptossPipeline *p)
{
	int			ended = 0;

	for (int k = 0; k < p->count && p->open > 0; k++)
	{
		PipelineEntry *e = &p->ring[(p->head + k) % p->window];
		MemoryContext old;
		bool		done;

		if (e->call == NULL)
			continue;
		old = MemoryContextSwitchTo(p->cxt);
		done = gptoss_call_poll(e->call, &e->resp);
		MemoryContextSwitchTo(old);
		if (done)
		{
			gptoss_call_end(e->call);
			e->call = NULL;
			p->open--;
			ended++;
		}
	}
	return ended;
}

/* The job's parameters without its borrowed strings. */
static gptoss_gen_params
scalar_params(const gptoss_gen_params *params)
{
	gptoss_gen_params s = *params;

	memset(s.stop, 0, sizeof(s.stop));
	s.n_stop = 0;
	s.instructions = NULL;
	s.current_date = NULL;
	s.response_format = NULL;
	return s;
}

/* Starts job in the entry at the tail. */
void
gptoss_pipeline_submit(GptossPipeline *p, const GptossJob *job)
{
	PipelineEntry *e;
	GptossCall *call;
	MemoryContext old;
	uint64		shortages = gptoss_call_segment_shortages();

	if (p->count >= p->window)
		elog(ERROR, "gptoss pipeline window of %d jobs is full", p->window);
	old = MemoryContextSwitchTo(p->cxt);
	for (;;)
	{
		call = gptoss_call_try_start(job);
		if (call != NULL)
			break;
		/* No free slot or segment: our own finished requests give theirs back first. */
		if (poll_open_calls(p) > 0)
			continue;
		if (p->open == 0)
		{
			/* Nothing of ours holds a slot: wait for another session's, as one call does. */
			call = gptoss_call_start(job);
			break;
		}
		gptoss_call_wait();
	}
	if (gptoss_call_segment_shortages() != shortages)
		p->segment_waits++;
	e = &p->ring[(p->head + p->count) % p->window];
	e->call = call;
	e->params = scalar_params(&job->params);
	gptoss_response_init(&e->resp);
	e->resp.keep_row_error = (p->flags & GPTOSS_PIPELINE_ROW_ERRORS) != 0 ||
		job->params.on_error == GPTOSS_ON_ERROR_NULL;
	MemoryContextSwitchTo(old);
	p->count++;
	p->open++;
}

/* Queues a result that failed before it could be sent. */
void
gptoss_pipeline_submit_failed(GptossPipeline *p, const gptoss_gen_params *params,
							  int sqlerrcode, const char *message)
{
	PipelineEntry *e;
	MemoryContext old;

	if (p->count >= p->window)
		elog(ERROR, "gptoss pipeline window of %d jobs is full", p->window);
	old = MemoryContextSwitchTo(p->cxt);
	e = &p->ring[(p->head + p->count) % p->window];
	e->call = NULL;
	e->params = scalar_params(params);
	gptoss_response_init(&e->resp);
	e->resp.finished = true;
	e->resp.row_error_code = sqlerrcode;
	e->resp.row_error_message = pstrdup(message);
	MemoryContextSwitchTo(old);
	p->count++;
}

/* Waits until the head entry is complete and hands its response over. */
void
gptoss_pipeline_next(GptossPipeline *p, GptossPipelineResult *out)
{
	PipelineEntry *e;

	if (p->count == 0)
		elog(ERROR, "gptoss pipeline has no pending job");
	e = &p->ring[p->head];
	for (;;)
	{
		(void) poll_open_calls(p);
		if (e->call == NULL)
			break;
		gptoss_call_wait();
	}
	memset(out, 0, sizeof(*out));
	out->params = e->params;
	out->resp = e->resp;
	if (e->resp.row_error_code != 0)
	{
		out->failed = true;
		out->sqlerrcode = e->resp.row_error_code;
		out->message = e->resp.row_error_message;
	}
	memset(e, 0, sizeof(*e));
	p->head = (p->head + 1) % p->window;
	p->count--;
}

/* Frees the buffers of a result. */
void
gptoss_pipeline_result_free(GptossPipelineResult *r)
{
	if (r->resp.text.data)
		pfree(r->resp.text.data);
	if (r->resp.reasoning.data)
		pfree(r->resp.reasoning.data);
	if (r->resp.row_error_message)
		pfree(r->resp.row_error_message);
	memset(r, 0, sizeof(*r));
}

/* Ends every open call and drops every pending entry; their slots are free at once. */
void
gptoss_pipeline_reset(GptossPipeline *p)
{
	while (p->count > 0)
	{
		PipelineEntry *e = &p->ring[p->head];

		if (e->call != NULL)
			gptoss_call_end(e->call);
		if (e->resp.text.data)
			pfree(e->resp.text.data);
		if (e->resp.reasoning.data)
			pfree(e->resp.reasoning.data);
		if (e->resp.row_error_message)
			pfree(e->resp.row_error_message);
		memset(e, 0, sizeof(*e));
		p->head = (p->head + 1) % p->window;
		p->count--;
	}
	p->head = 0;
	p->open = 0;
}

/*
 * Ends every open call and frees the pipeline.  Logs how many submits waited
 * for a dynamic shared memory segment, so that an operator learns why the
 * statement kept fewer requests in flight than asked.
 */
void
gptoss_pipeline_free(GptossPipeline *p)
{
	if (p->segment_waits > 0)
		ereport(LOG,
				(errmsg("gptoss: %d requests of the statement waited for a dynamic shared memory segment",
						p->segment_waits),
				 errdetail("Every dynamic shared memory segment of the server was in use, so fewer than the window of %d requests were in flight.",
						   p->window),
				 errhint("%s", gptoss_segment_hint())));
	gptoss_pipeline_reset(p);
	pfree(p->ring);
	pfree(p);
}
