/*
 * pipeline.c: submit many generation requests, collect their results in
 * submission order (see pipeline.h for the interface).
 *
 * The open calls sit in a ring of window entries: submit appends at the
 * tail, next waits for the head.  The worker never blocks on a backend that
 * has not read its frames yet (it keeps them in an outbox), so the requests
 * behind the head keep generating while the head is awaited.
 */
#include "postgres.h"

#include "utils/memutils.h"

#include "pipeline.h"

struct GptossPipeline
{
	MemoryContext cxt;
	int			window;
	int			head;			/* ring index of the oldest pending call */
	int			count;			/* pending calls */
	GptossCall **calls;			/* ring of window entries */
	GptossParams *params;		/* the parameters of each call's request */
};

/* min(max_batch_size x workers, max_requests / 2), at least 1. */
int
gptoss_default_window(void)
{
	return Max(1, Min(gptoss_max_batch_size * gptoss_worker_count(), gptoss_max_requests / 2));
}

/* Creates an empty pipeline in the current memory context. */
GptossPipeline *
gptoss_pipeline_create(int window, int flags)
{
	GptossPipeline *p = palloc0(sizeof(GptossPipeline));

	Assert(window >= 1);
	p->cxt = CurrentMemoryContext;
	p->window = window;
	p->calls = palloc0(sizeof(GptossCall *) * window);
	p->params = palloc0(sizeof(GptossParams) * window);
	return p;
}

/* True when another request fits into the window. */
bool
gptoss_pipeline_has_room(GptossPipeline *p)
{
	return p->count < p->window;
}

/* Requests submitted and not yet collected. */
int
gptoss_pipeline_pending(GptossPipeline *p)
{
	return p->count;
}

/* Starts req and appends its call to the ring. */
void
gptoss_pipeline_submit(GptossPipeline *p, const GptossRequest *req)
{
	MemoryContext old;

	if (p->count >= p->window)
		elog(ERROR, "gptoss pipeline window of %d requests is full", p->window);
	old = MemoryContextSwitchTo(p->cxt);
	p->calls[(p->head + p->count) % p->window] = gptoss_call_start(req);
	p->params[(p->head + p->count) % p->window] = req->params;
	MemoryContextSwitchTo(old);
	p->count++;
}

/* Waits for the head call to complete and returns its response. */
void
gptoss_pipeline_next(GptossPipeline *p, GptossPipelineResult *out)
{
	GptossCall *call;

	if (p->count == 0)
		elog(ERROR, "gptoss pipeline has no pending request");
	call = p->calls[p->head];
	memset(out, 0, sizeof(*out));
	out->params = p->params[p->head];
	initStringInfo(&out->resp.text);
	initStringInfo(&out->resp.reasoning);
	while (gptoss_call_next(call, &out->resp))
		;
	gptoss_call_end(call);
	p->calls[p->head] = NULL;
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
	if (r->resp.ids)
		pfree(r->resp.ids);
	memset(r, 0, sizeof(*r));
}

/* Ends every pending call; their slots are given back at once. */
void
gptoss_pipeline_reset(GptossPipeline *p)
{
	while (p->count > 0)
	{
		GptossCall *call = p->calls[p->head];

		p->calls[p->head] = NULL;
		p->head = (p->head + 1) % p->window;
		p->count--;
		gptoss_call_end(call);
	}
	p->head = 0;
}

/* Ends every pending call and frees the pipeline. */
void
gptoss_pipeline_free(GptossPipeline *p)
{
	gptoss_pipeline_reset(p);
	pfree(p->calls);
	pfree(p->params);
	pfree(p);
}
