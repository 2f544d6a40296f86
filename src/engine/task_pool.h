/*
 * task_pool.h: a few threads that run the items of a loop in parallel, for
 * host-side work between backend steps (the token masks of constrained
 * requests).  The calling thread works too; gptoss_task_pool_run returns
 * when every item is done.
 */
#ifndef GPTOSS_TASK_POOL_H
#define GPTOSS_TASK_POOL_H

#include "common.h"

/* Work on item (0 .. n_items-1) by worker (0 .. workers-1; 0 is the caller). */
typedef void (*gptoss_task_fn) (void *ctx, int item, int worker);

typedef struct gptoss_task_pool gptoss_task_pool;

/* A pool of workers (the caller included); NULL with err set. */
gptoss_task_pool *gptoss_task_pool_create(int workers, gptoss_error *err);
void		gptoss_task_pool_free(gptoss_task_pool *pool);

/* Workers of the pool, the caller included. */
int			gptoss_task_pool_workers(const gptoss_task_pool *pool);

/* Runs fn on every item, spread over the workers; returns when all are done. */
void		gptoss_task_pool_run(gptoss_task_pool *pool, int n_items, gptoss_task_fn fn, void *ctx);

#endif							/* GPTOSS_TASK_POOL_H */
