/*
 * task_pool.c: worker threads sleeping on a condition variable until a run
 * starts (a new generation number), then taking items from a shared atomic
 * counter until none is left; the last one to finish wakes the caller.
 */
#include "task_pool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

struct gptoss_task_pool
{
	int			workers;		/* threads + the caller */
	pthread_t  *threads;		/* [workers - 1] */
	int			n_started;
	pthread_mutex_t lock;
	pthread_cond_t wake;		/* a run started, or the pool is closing */
	pthread_cond_t done;		/* the helpers finished the run */
	unsigned	generation;		/* bumped per run */
	bool		closing;
	gptoss_task_fn fn;
	void	   *ctx;
	int			n_items;
	int			next_item;		/* atomic: next item to take */
	int			busy;			/* helpers still in the current run */
};

typedef struct worker_arg
{
	gptoss_task_pool *pool;
	int			index;
} worker_arg;

/* Takes items until none is left. */
static void
drain_items(gptoss_task_pool *pool, int worker)
{
	for (;;)
	{
		int			item = __atomic_fetch_add(&pool->next_item, 1, __ATOMIC_RELAXED);

		if (item >= pool->n_items)
			return;
		pool->fn(pool->ctx, item, worker);
	}
}

/* A helper thread: waits for runs and works on them. */
static void *
worker_main(void *arg)
{
	worker_arg *wa = arg;
	gptoss_task_pool *pool = wa->pool;
	int			index = wa->index;
	unsigned	seen = 0;

	free(wa);
	pthread_mutex_lock(&pool->lock);
	for (;;)
	{
		while (!pool->closing && pool->generation == seen)
			pthread_cond_wait(&pool->wake, &pool->lock);
		if (pool->closing)
			break;
		seen = pool->generation;
		pthread_mutex_unlock(&pool->lock);
		drain_items(pool, index);
		pthread_mutex_lock(&pool->lock);
		if (--pool->busy == 0)
			pthread_cond_signal(&pool->done);
	}
	pthread_mutex_unlock(&pool->lock);
	return NULL;
}

/* Starts workers - 1 helper threads. */
gptoss_task_pool *
gptoss_task_pool_create(int workers, gptoss_error *err)
{
	gptoss_task_pool *pool = calloc(1, sizeof(*pool));

	if (pool == NULL || workers < 1)
	{
		free(pool);
		gptoss_errorf(err, "task pool: out of memory or no workers");
		return NULL;
	}
	pool->workers = workers;
	pthread_mutex_init(&pool->lock, NULL);
	pthread_cond_init(&pool->wake, NULL);
	pthread_cond_init(&pool->done, NULL);
	pool->threads = calloc((size_t) workers, sizeof(pthread_t));
	if (pool->threads == NULL)
	{
		gptoss_task_pool_free(pool);
		gptoss_errorf(err, "task pool: out of memory");
		return NULL;
	}
	for (int i = 1; i < workers; i++)
	{
		worker_arg *wa = malloc(sizeof(*wa));

		if (wa == NULL)
			break;
		wa->pool = pool;
		wa->index = i;
		if (pthread_create(&pool->threads[pool->n_started], NULL, worker_main, wa) != 0)
		{
			free(wa);
			break;
		}
		pool->n_started++;
	}
	/* fewer threads than asked is not an error: the caller does the rest */
	pool->workers = pool->n_started + 1;
	return pool;
}

/* Stops and joins the helpers. */
void
gptoss_task_pool_free(gptoss_task_pool *pool)
{
	if (pool == NULL)
		return;
	pthread_mutex_lock(&pool->lock);
	pool->closing = true;
	pthread_cond_broadcast(&pool->wake);
	pthread_mutex_unlock(&pool->lock);
	for (int i = 0; i < pool->n_started; i++)
		pthread_join(pool->threads[i], NULL);
	pthread_mutex_destroy(&pool->lock);
	pthread_cond_destroy(&pool->wake);
	pthread_cond_destroy(&pool->done);
	free(pool->threads);
	free(pool);
}

int
gptoss_task_pool_workers(const gptoss_task_pool *pool)
{
	return pool->workers;
}

/* Runs fn over the items with every worker; returns when all are done. */
void
gptoss_task_pool_run(gptoss_task_pool *pool, int n_items, gptoss_task_fn fn, void *ctx)
{
	if (n_items <= 0)
		return;
	if (pool->n_started == 0 || n_items == 1)
	{
		for (int i = 0; i < n_items; i++)
			fn(ctx, i, 0);
		return;
	}
	pthread_mutex_lock(&pool->lock);
	pool->fn = fn;
	pool->ctx = ctx;
	pool->n_items = n_items;
	pool->next_item = 0;
	pool->busy = pool->n_started;
	pool->generation++;
	pthread_cond_broadcast(&pool->wake);
	pthread_mutex_unlock(&pool->lock);
	drain_items(pool, 0);
	pthread_mutex_lock(&pool->lock);
	while (pool->busy > 0)
		pthread_cond_wait(&pool->done, &pool->lock);
	pthread_mutex_unlock(&pool->lock);
}
