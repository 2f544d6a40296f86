/*
 * pipeline.h: submit many generation jobs, collect their results in
 * submission order.
 *
 * One statement that has many prompts to answer (gptoss_generate_many, the
 * GptossBatch scan node, enrichment) keeps a window of requests in the
 * workers at once, so that they share the worker's batch, and consumes the
 * answers in the order it submitted them:
 *
 *     GptossPipeline *p = gptoss_pipeline_create(window, 0);   or GPTOSS_PIPELINE_ROW_ERRORS
 *     GptossPipelineResult r;
 *
 *     for (i = 0; i < n; i++)
 *     {
 *         while (!gptoss_pipeline_has_room(p))
 *         {
 *             gptoss_pipeline_next(p, &r);          oldest first
 *             ... use r.resp, or r.sqlerrcode and r.message when r.failed ...
 *             gptoss_pipeline_result_free(&r);
 *         }
 *         gptoss_pipeline_submit(p, &jobs[i]);      the job may be freed after
 *     }
 *     while (gptoss_pipeline_pending(p) > 0)
 *         ... gptoss_pipeline_next(p, &r) as above ...
 *     gptoss_pipeline_free(p);
 *
 * The pipeline and its results live in the memory context current at
 * create (free a result with gptoss_pipeline_result_free, or let the context
 * go).  A job is copied into its request segment at submit.
 *
 * Backpressure, not errors: when no request slot is free, submit first
 * collects the finished results of the pipeline's own requests (which frees
 * their slots) and otherwise sleeps until a request progresses or a slot is
 * freed; a window larger than gptoss.max_requests only slows the caller down,
 * and the caller never waits on results that only it would read.  Only with
 * nothing of its own in flight does submit wait for another session's slot
 * (gptoss.queue_wait, then 53000, as a single call).
 *
 * An error (cancel, statement_timeout, a worker error that is not a per-row
 * failure) ends every request of the pipeline through the request segments'
 * resource owner; gptoss_pipeline_reset ends them explicitly (an executor
 * node shut down).
 */
#ifndef GPTOSS_PIPELINE_H
#define GPTOSS_PIPELINE_H

#include "gptoss.h"

typedef struct GptossPipeline GptossPipeline;

/*
 * gptoss_pipeline_create flag: every job fails per row (result.failed) on the
 * errors that on_error "null" covers, whatever its params say.  Without it,
 * only jobs with on_error "null" do.
 */
#define GPTOSS_PIPELINE_ROW_ERRORS 0x01

/* One collected result. */
typedef struct GptossPipelineResult
{
	gptoss_gen_params params;	/* its job's parameters (scalars; string fields cleared) */
	GptossResponse resp;		/* the complete response, unless failed */
	bool		failed;			/* failed for its own input (54000, XX000; see protocol.h) */
	int			sqlerrcode;		/* when failed */
	char	   *message;		/* when failed */
} GptossPipelineResult;

/* A pipeline keeping at most window (>= 1) jobs submitted and not yet collected. */
extern GptossPipeline *gptoss_pipeline_create(int window, int flags);

/* True when another job fits into the window. */
extern bool gptoss_pipeline_has_room(GptossPipeline *p);

/* Jobs submitted and not yet returned by gptoss_pipeline_next. */
extern int	gptoss_pipeline_pending(GptossPipeline *p);

/* Sends job to a worker (the window must have room); see above for how it waits. */
extern void gptoss_pipeline_submit(GptossPipeline *p, const GptossJob *job);

/*
 * Queues a result that failed before it could be sent (a prompt that cannot
 * be rendered, gptoss_render_or_fail): it comes back from next in its turn.
 */
extern void gptoss_pipeline_submit_failed(GptossPipeline *p, const gptoss_gen_params *params,
										  int sqlerrcode, const char *message);

/* Waits for the oldest pending job and returns its result. */
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
