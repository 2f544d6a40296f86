/*
 * pipeline.h: submit many generation requests, collect their results in
 * submission order.
 *
 * One statement that has many prompts to answer (gptoss_generate_many, the
 * GptossBatch scan node, enrichment) keeps a window of requests in the
 * workers at once, so that they share the worker's batch, and consumes the
 * answers in the order it submitted them:
 *
 *     GptossPipeline *p = gptoss_pipeline_create(window, 0);
 *     GptossPipelineResult r;
 *
 *     for (i = 0; i < n; i++)
 *     {
 *         while (!gptoss_pipeline_has_room(p))
 *         {
 *             gptoss_pipeline_next(p, &r);     (oldest first)
 *             ... use r.resp ...
 *             gptoss_pipeline_result_free(&r);
 *         }
 *         gptoss_pipeline_submit(p, &requests[i]);
 *     }
 *     while (gptoss_pipeline_pending(p) > 0)
 *         ... gptoss_pipeline_next(p, &r) as above ...
 *     gptoss_pipeline_free(p);
 *
 * The pipeline lives in the memory context current at create; results are
 * allocated in the context current at gptoss_pipeline_next.  Requests are
 * copied into their request segments at submit, so the caller may free a
 * request right after submitting it.
 *
 * Submitting takes a request slot as a single call does (waiting up to
 * gptoss.queue_wait for one).  An error (cancel, statement_timeout, a worker
 * error) ends every request of the pipeline through the request segments'
 * resource owner; gptoss_pipeline_reset ends them explicitly (an executor
 * node being shut down).
 */
#ifndef GPTOSS_PIPELINE_H
#define GPTOSS_PIPELINE_H

#include "gptoss.h"

typedef struct GptossPipeline GptossPipeline;

/* One collected result. */
typedef struct GptossPipelineResult
{
	GptossParams params;		/* the parameters of its request */
	GptossResponse resp;		/* the complete response */
} GptossPipelineResult;

/* A pipeline keeping at most window (>= 1) requests submitted and not yet collected; flags 0. */
extern GptossPipeline *gptoss_pipeline_create(int window, int flags);

/* True when another request fits into the window. */
extern bool gptoss_pipeline_has_room(GptossPipeline *p);

/* Requests submitted and not yet returned by gptoss_pipeline_next. */
extern int	gptoss_pipeline_pending(GptossPipeline *p);

/* Sends req to a worker (the window must have room). */
extern void gptoss_pipeline_submit(GptossPipeline *p, const GptossRequest *req);

/* Waits for the oldest pending request and returns its result. */
extern void gptoss_pipeline_next(GptossPipeline *p, GptossPipelineResult *out);

/* Frees what a result holds. */
extern void gptoss_pipeline_result_free(GptossPipelineResult *r);

/* Ends every pending request (the workers drop them) and empties the pipeline. */
extern void gptoss_pipeline_reset(GptossPipeline *p);

/* Resets and frees the pipeline. */
extern void gptoss_pipeline_free(GptossPipeline *p);

/* gptoss.batch_window's boot value: min(max_batch_size x workers, max_requests / 2), at least 1. */
extern int	gptoss_default_window(void);

#endif							/* GPTOSS_PIPELINE_H */
