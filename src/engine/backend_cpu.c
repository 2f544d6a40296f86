/*
 * backend_cpu.c: the reference CPU backend (the forward pass of
 * docs/architecture.md, all in fp32).
 *
 * Plan of a step.  The entries' tokens are laid out as one matrix of T rows
 * (entry after entry), so that every weight row is read once per step and
 * used for all T tokens: that is what makes batching pay on a CPU too.  Per
 * layer:
 *   RMSNorm -> q,k,v (one dispatch over the rows of the three matrices)
 *   -> RoPE -> attention with sinks, reading earlier positions from the slot's
 *   KV cache and this step's positions from the fresh k/v rows -> append k/v
 *   to the cache -> o-projection + residual -> RMSNorm -> router, top-k,
 *   softmax over the k -> experts grouped by expert (gate_up rows, SwiGLU,
 *   down rows; each MXFP4 row decoded once per step) -> weighted sum + residual.
 * Then the final norm and lm_head only for the rows whose logits are wanted
 * (all rows when the caller asks for logits, else the last row of each
 * sampled entry), and the sampler.
 *
 * Numerics: weights are bf16/MXFP4 widened exactly to fp32; activations, the
 * residual stream, the KV cache and every accumulation are fp32.  Each
 * (row, token) dot product is computed by the same code in the same order
 * whatever the batch, so a sequence's logits are bitwise identical alone,
 * batched with others, or prefilled in chunks.
 *
 * KV cache: paged (kv_pages.h), CPU_KV_PAGE positions per page; a page holds
 * K and V rows of Hkv*D floats for every layer of its positions, sliding
 * layers included (a shared prefix page must serve every layer), and is
 * allocated the first time it is handed out.  Attention for a step reads the
 * cache for positions before the entry and this step's fresh rows for its
 * own.  kv_cache_tokens caps the total number of cached tokens over all
 * slots.  Since every product is computed the same way whatever the chunking
 * (above), cached keys and values do not depend on it: prefix pages can be
 * shared at any page boundary.
 *
 * An entry may come with a forced token (scoring) and may ask for
 * log-probabilities; both are handled next to the sampling, on the logits
 * row the sampler would read.
 *
 * Kernels: dense bf16 products take 4 weight rows at a time against each
 * token (16 bf16 read as 8 uint32 give the even elements as u << 16 and the
 * odd ones as u & 0xffff0000, exact fp32, with x reordered to match); MXFP4
 * expert rows are decoded to fp32 once per step and reused for every token
 * routed to them.  Hot loops are compiled for AVX2+FMA and for the baseline
 * (target_clones); results are bitwise reproducible on one machine, and
 * differ across machines only by fp32 rounding.
 *
 * Threads: a small pool (opts.threads or gptoss_num_threads()) runs the
 * matrix products, the attention (token, head) pairs, the expert rows and the
 * sampling of several entries as parallel loops over independent items; the
 * caller's thread works too, and loops too small to pay for a wake-up run on
 * the caller alone.
 */
#include "backend.h"
#include "logprobs.h"
#include "mxfp4.h"
#include "rope.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Thread pool                                                              */
/* ------------------------------------------------------------------------ */

/* A parallel loop body: handles items [begin, end) on worker `thread`. */
typedef void (*pool_fn) (void *ctx, int64_t begin, int64_t end, int thread);

typedef struct thread_pool
{
	int			n_threads;		/* workers + the calling thread */
	pthread_t  *workers;		/* [n_threads - 1] */
	int			n_started;		/* workers actually running */
	pthread_mutex_t mu;
	pthread_cond_t wake;		/* a new loop was posted, or stop */
	pthread_cond_t done;		/* the last busy worker finished */
	uint64_t	generation;		/* bumped per posted loop */
	int			stop;
	int			busy;			/* workers still inside the current loop */
	pool_fn		fn;
	void	   *ctx;
	int64_t		n_items;
	int64_t		grain;			/* items claimed at a time */
	atomic_llong next;			/* first unclaimed item */
} thread_pool;

typedef struct worker_arg
{
	thread_pool *pool;
	int			thread;
} worker_arg;

/* Claims chunks of the current loop until none is left. */
static void
pool_run_chunks(thread_pool *pool, int thread)
{
	for (;;)
	{
		int64_t		begin = atomic_fetch_add(&pool->next, pool->grain);

		if (begin >= pool->n_items)
			break;
		pool->fn(pool->ctx, begin,
				 begin + pool->grain < pool->n_items ? begin + pool->grain : pool->n_items,
				 thread);
	}
}

/* Worker thread: waits for a loop, helps run it, reports completion. */
static void *
pool_worker(void *arg)
{
	worker_arg *wa = arg;
	thread_pool *pool = wa->pool;
	uint64_t	seen = 0;

	pthread_mutex_lock(&pool->mu);
	for (;;)
	{
		while (!pool->stop && pool->generation == seen)
			pthread_cond_wait(&pool->wake, &pool->mu);
		if (pool->stop)
			break;
		seen = pool->generation;
		pthread_mutex_unlock(&pool->mu);
		pool_run_chunks(pool, wa->thread);
		pthread_mutex_lock(&pool->mu);
		if (--pool->busy == 0)
			pthread_cond_signal(&pool->done);
	}
	pthread_mutex_unlock(&pool->mu);
	return NULL;
}

/* Stops and joins the workers and frees the pool. */
static void
pool_free(thread_pool *pool, worker_arg *args)
{
	if (!pool)
		return;
	pthread_mutex_lock(&pool->mu);
	pool->stop = 1;
	pthread_cond_broadcast(&pool->wake);
	pthread_mutex_unlock(&pool->mu);
	for (int i = 0; i < pool->n_started; i++)
		pthread_join(pool->workers[i], NULL);
	pthread_mutex_destroy(&pool->mu);
	pthread_cond_destroy(&pool->wake);
	pthread_cond_destroy(&pool->done);
	free(pool->workers);
	free(args);
	free(pool);
}

/* Starts n_threads - 1 workers; *args_out keeps their arguments alive. */
static thread_pool *
pool_create(int n_threads, worker_arg **args_out, gptoss_error *err)
{
	thread_pool *pool = calloc(1, sizeof(thread_pool));
	worker_arg *args = calloc(n_threads, sizeof(worker_arg));

	*args_out = args;
	if (!pool || !args)
	{
		free(pool);
		free(args);
		gptoss_errorf(err, "cpu backend: out of memory for the thread pool");
		return NULL;
	}
	pool->n_threads = n_threads;
	pool->workers = calloc(n_threads, sizeof(pthread_t));
	pthread_mutex_init(&pool->mu, NULL);
	pthread_cond_init(&pool->wake, NULL);
	pthread_cond_init(&pool->done, NULL);
	if (!pool->workers)
	{
		pool_free(pool, args);
		gptoss_errorf(err, "cpu backend: out of memory for the thread pool");
		return NULL;
	}
	for (int i = 1; i < n_threads; i++)
	{
		args[i].pool = pool;
		args[i].thread = i;
		if (pthread_create(&pool->workers[i - 1], NULL, pool_worker, &args[i]) != 0)
		{
			pool_free(pool, args);
			gptoss_errorf(err, "cpu backend: cannot start worker thread %d", i);
			return NULL;
		}
		pool->n_started++;
	}
	return pool;
}

/* Below this many multiply-adds a loop runs on the caller alone: waking workers costs more. */
#define POOL_SERIAL_WORK (1 << 17)

/*
 * Runs fn over [0, n_items) in chunks of grain on all threads and returns
 * when done; work (about how many multiply-adds) decides whether threads pay.
 */
static void
pool_parallel_for(thread_pool *pool, pool_fn fn, void *ctx, int64_t n_items, int64_t grain,
				  int64_t work)
{
	if (n_items <= 0)
		return;
	if (grain < 1)
		grain = 1;
	if (pool->n_threads <= 1 || n_items <= grain || work < POOL_SERIAL_WORK)
	{
		fn(ctx, 0, n_items, 0);
		return;
	}
	pthread_mutex_lock(&pool->mu);
	pool->fn = fn;
	pool->ctx = ctx;
	pool->n_items = n_items;
	pool->grain = grain;
	atomic_store(&pool->next, 0);
	pool->busy = pool->n_threads - 1;
	pool->generation++;
	pthread_cond_broadcast(&pool->wake);
	pthread_mutex_unlock(&pool->mu);

	pool_run_chunks(pool, 0);

	pthread_mutex_lock(&pool->mu);
	while (pool->busy > 0)
		pthread_cond_wait(&pool->done, &pool->mu);
	pthread_mutex_unlock(&pool->mu);
}

/* Splits n_items into about 4 chunks per thread, at least min_grain items each. */
static int64_t
pool_grain(const thread_pool *pool, int64_t n_items, int64_t min_grain)
{
	int64_t		g = n_items / (4 * (int64_t) pool->n_threads);

	return g < min_grain ? min_grain : g;
}

/* ------------------------------------------------------------------------ */
/* fp32 kernels                                                             */
/* ------------------------------------------------------------------------ */

/*
 * 8-lane vectors through GCC/Clang vector extensions.  Loops that matter are
 * compiled twice (CPU_KERNEL): for x86-64-v3 (AVX2 + FMA) and for the
 * baseline, picked at load time.  Vectors are passed by pointer only, so no
 * function has a vector-ABI signature.
 */
typedef float v8f __attribute__((vector_size(32)));
typedef uint32_t v8u32 __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

/* Lane sum in a fixed order: ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)). */
KERNEL_INLINE float
hsum8(const v8f *a)
{
	v4f			lo,
				hi,
				s;

	memcpy(&lo, a, sizeof(lo));
	memcpy(&hi, (const char *) a + sizeof(lo), sizeof(hi));
	s = lo + hi;
	return (s[0] + s[2]) + (s[1] + s[3]);
}

/* sum a[i] * b[i]: one 8-lane accumulator, fixed-order lane sum, then the tail in order. */
KERNEL_INLINE float
dot_f32(const float *a, const float *b, int n)
{
	v8f			acc = {0};
	int			i = 0;
	float		sum;

	for (; i + 8 <= n; i += 8)
	{
		v8f			va,
					vb;

		memcpy(&va, a + i, sizeof(va));
		memcpy(&vb, b + i, sizeof(vb));
		acc += va * vb;
	}
	sum = hsum8(&acc);
	for (; i < n; i++)
		sum += a[i] * b[i];
	return sum;
}

/*
 * x reordered for dot4_bf16: each block of 16 becomes its 8 even elements
 * then its 8 odd ones (a tail shorter than 16 stays as it is).
 */
static void
permute_even_odd(const float *x, float *xp, int n)
{
	int			i = 0;

	for (; i + 16 <= n; i += 16)
		for (int l = 0; l < 8; l++)
		{
			xp[i + l] = x[i + 2 * l];
			xp[i + 8 + l] = x[i + 2 * l + 1];
		}
	for (; i < n; i++)
		xp[i] = x[i];
}

/*
 * Dot products of 4 bf16 rows with xp (x after permute_even_odd).  16 bf16
 * read as 8 little-endian uint32 give the even elements as u << 16 and the
 * odd ones as u & 0xffff0000, each already an exact fp32: no widening
 * shuffles.  Each row gets exactly the arithmetic of its own accumulators,
 * so a row's result does not depend on its neighbours (padding a short group
 * by repeating a row is harmless) nor on how many tokens share the rows.
 */
KERNEL_INLINE void
dot4_bf16(const gptoss_bf16 *const w[4], const float *xp, int n, float out[4])
{
	/* named accumulators: an array of vectors ends up zeroed in memory with rep stos */
	v8f			e0 = {0}, e1 = {0}, e2 = {0}, e3 = {0};
	v8f			o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0};
	const v8u32 high = {0xffff0000u, 0xffff0000u, 0xffff0000u, 0xffff0000u,
		0xffff0000u, 0xffff0000u, 0xffff0000u, 0xffff0000u};
	int			i = 0;

#define DOT4_ROW(j, ev, od) \
	do { \
		v8u32		u_, lo_, hi_; \
		v8f			fe_, fo_; \
		memcpy(&u_, w[j] + i, sizeof(u_)); \
		lo_ = u_ << 16; \
		hi_ = u_ & high; \
		memcpy(&fe_, &lo_, sizeof(fe_)); \
		memcpy(&fo_, &hi_, sizeof(fo_)); \
		ev += fe_ * xe; \
		od += fo_ * xo; \
	} while (0)

	for (; i + 16 <= n; i += 16)
	{
		v8f			xe,
					xo;

		memcpy(&xe, xp + i, sizeof(xe));
		memcpy(&xo, xp + i + 8, sizeof(xo));
		DOT4_ROW(0, e0, o0);
		DOT4_ROW(1, e1, o1);
		DOT4_ROW(2, e2, o2);
		DOT4_ROW(3, e3, o3);
	}
#undef DOT4_ROW
	e0 += o0;
	e1 += o1;
	e2 += o2;
	e3 += o3;
	out[0] = hsum8(&e0);
	out[1] = hsum8(&e1);
	out[2] = hsum8(&e2);
	out[3] = hsum8(&e3);
	for (; i < n; i++)
		for (int j = 0; j < 4; j++)
			out[j] += gptoss_bf16_to_f32(w[j][i]) * xp[i];
}

/* Same for 4 fp32 rows (decoded MXFP4). */
KERNEL_INLINE void
dot4_f32(const float *const w[4], const float *x, int n, float out[4])
{
	v8f			a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
	int			i = 0;

	for (; i + 8 <= n; i += 8)
	{
		v8f			xv,
					w0,
					w1,
					w2,
					w3;

		memcpy(&xv, x + i, sizeof(xv));
		memcpy(&w0, w[0] + i, sizeof(w0));
		memcpy(&w1, w[1] + i, sizeof(w1));
		memcpy(&w2, w[2] + i, sizeof(w2));
		memcpy(&w3, w[3] + i, sizeof(w3));
		a0 += w0 * xv;
		a1 += w1 * xv;
		a2 += w2 * xv;
		a3 += w3 * xv;
	}
	out[0] = hsum8(&a0);
	out[1] = hsum8(&a1);
	out[2] = hsum8(&a2);
	out[3] = hsum8(&a3);
	for (; i < n; i++)
		for (int j = 0; j < 4; j++)
			out[j] += w[j][i] * x[i];
}

/* bf16 row -> fp32 (exact). */
static inline void
bf16_row_to_f32(const gptoss_bf16 *src, float *dst, int n)
{
	for (int i = 0; i < n; i++)
		dst[i] = gptoss_bf16_to_f32(src[i]);
}

/* y = x / sqrt(mean(x^2) + eps) * w  for one row of n. */
static void
rmsnorm_row(const float *x, const gptoss_bf16 *w, float eps, float *y, int n)
{
	float		ss = dot_f32(x, x, n);
	float		inv = 1.0f / sqrtf(ss / (float) n + eps);

	for (int i = 0; i < n; i++)
		y[i] = gptoss_bf16_to_f32(w[i]) * (x[i] * inv);
}

/* ------------------------------------------------------------------------ */
/* Backend state                                                            */
/* ------------------------------------------------------------------------ */

/* Positions per KV page (the CUDA backend's page size too). */
#define CPU_KV_PAGE 16

typedef struct cpu_backend
{
	gptoss_backend base;
	const gptoss_config *cfg;
	gptoss_rope rope;
	thread_pool *pool;
	worker_arg *pool_args;
	int			n_threads;
	int			failed;			/* an internal error happened: only free() is allowed */

	/* KV cache: page bookkeeping in base.kv_pages */
	float	  **page_data;		/* [n_pages] NULL until first used, else [L][2][CPU_KV_PAGE][Hkv*D] (K then V) */
	int			n_pages;
	int64_t		kv_capacity;	/* max total cached tokens */
	int64_t		kv_bytes;		/* bytes allocated for the cache */
	unsigned   *slot_stamp;		/* [max_seqs] duplicate-slot check per step */
	unsigned	stamp;

	/* per-thread scratch */
	float	  **thread_buf;		/* [n_threads] each [thread_buf_len] */
	int64_t		thread_buf_len;

	/* step buffers, grown on demand; T = tokens of the step */
	int			cap_tokens;		/* rows allocated for the T-sized buffers */
	float	   *x;				/* [T, H] residual stream */
	float	   *xn;				/* [T, H] normed input of a block */
	float	   *xperm;			/* [T, max(H, Hq*D)] input of a dense product, permuted */
	float	   *q;				/* [T, Hq*D] */
	float	   *k;				/* [T, Hkv*D] */
	float	   *v;				/* [T, Hkv*D] */
	float	   *att;			/* [T, Hq*D] attention output */
	float	   *proj;			/* [T, H] o-projection output */
	float	   *router;			/* [T, E] router logits */
	float	   *rope_cs;		/* [T, 2, D/2] cos then sin per token */
	int		   *tok_pos;		/* [T] absolute position */
	int		   *tok_entry;		/* [T] entry index */
	int		   *sel_expert;		/* [T, K] selected experts */
	float	   *sel_weight;		/* [T, K] their softmax weights */
	int		   *sel_assign;		/* [T, K] assignment row of (token, k) */
	int		   *assign_token;	/* [T*K] token of assignment row a (grouped by expert) */
	float	   *gate_up;		/* [T*K, 2I] */
	float	   *act;			/* [T*K, I] */
	float	   *expert_out;		/* [T*K, H] */
	int		   *expert_count;	/* [E] */
	int		   *expert_start;	/* [E] first assignment row of expert e */
	int		   *active_experts; /* [E] experts used this step */
	int			cap_entries;
	int		   *entry_base;		/* [n_seqs] first row of entry i */
	int		   *sample_entry;	/* [n_seqs] entries that sample, in order */
	const float **sample_row;	/* [n_seqs] their logits rows */
	int			cap_out;		/* rows allocated for out_norm */
	float	   *out_norm;		/* [n_out, H] final-normed rows that need logits, permuted */
	int			cap_sampled;	/* rows allocated for out_logits */
	float	   *out_logits;		/* [n_sampled, V] when the caller passes no logits buffer */
	int		   *out_rows;		/* [T] token row of each output row */
	void	  **sample_scratch; /* [n_threads] 12 * V bytes each: gptoss_sample, then a masked row */
	int64_t		step_bytes;		/* bytes of all step buffers */
	int64_t		peak_bytes;
} cpu_backend;

/* ------------------------------------------------------------------------ */
/* Parallel jobs                                                            */
/* ------------------------------------------------------------------------ */

/* Up to 3 dense bf16 matrices whose rows form one loop (q, k, v share a pass). */
typedef struct dense_job
{
	int			n_seg;
	const gptoss_bf16 *w[3];	/* [rows[s], in] */
	const gptoss_bf16 *bias[3]; /* [rows[s]] or NULL */
	float	   *y[3];			/* [n_tok, rows[s]] */
	int			rows[3];
	int			in;
	const float *x;				/* [n_tok, in] */
	const float *xp;			/* [n_tok, in] x after permute_even_odd */
	int			n_tok;
	cpu_backend *be;
} dense_job;

/* Rows [begin, end) of the concatenated segments: y[t][r] = w[r]·x[t] + b[r], 4 rows at a time. */
CPU_KERNEL static void
dense_task(void *ctx, int64_t begin, int64_t end, int thread)
{
	dense_job  *job = ctx;
	int64_t		seg_start = 0;

	(void) thread;
	for (int s = 0; s < job->n_seg; s++)
	{
		int64_t		lo = begin > seg_start ? begin : seg_start;
		int64_t		hi = end < seg_start + job->rows[s] ? end : seg_start + job->rows[s];

		for (int64_t gr = lo; gr < hi; gr += 4)
		{
			int			r0 = (int) (gr - seg_start);
			int			nr = hi - gr < 4 ? (int) (hi - gr) : 4;
			const gptoss_bf16 *w[4];
			float		b[4],
						out[4];

			for (int j = 0; j < 4; j++)
			{
				int			r = r0 + (j < nr ? j : nr - 1);

				w[j] = job->w[s] + (size_t) r * job->in;
				b[j] = job->bias[s] ? gptoss_bf16_to_f32(job->bias[s][r]) : 0.0f;
			}
			for (int t = 0; t < job->n_tok; t++)
			{
				float	   *yt = job->y[s] + (size_t) t * job->rows[s] + r0;

				dot4_bf16(w, job->xp + (size_t) t * job->in, job->in, out);
				for (int j = 0; j < nr; j++)
					yt[j] = out[j] + b[j];
			}
		}
		seg_start += job->rows[s];
	}
}

/* Runs a dense_job over all its rows. */
static void
run_dense(cpu_backend *be, dense_job *job)
{
	int64_t		total = 0;

	job->be = be;
	for (int s = 0; s < job->n_seg; s++)
		total += job->rows[s];
	for (int t = 0; t < job->n_tok; t++)
		permute_even_odd(job->x + (size_t) t * job->in, be->xperm + (size_t) t * job->in, job->in);
	job->xp = be->xperm;
	pool_parallel_for(be->pool, dense_task, job, total, pool_grain(be->pool, total, 16),
					  total * job->in * (int64_t) job->n_tok);
}

/* Cached K (kind 0) or V (kind 1) row of layer at position pos of a slot with page table pages. */
KERNEL_INLINE float *
kv_row(const cpu_backend *be, const int32_t *pages, int layer, int kind, int pos)
{
	size_t		kvd = (size_t) be->cfg->num_kv_heads * be->cfg->head_dim;

	return be->page_data[pages[pos / CPU_KV_PAGE]] +
		(((size_t) layer * 2 + kind) * CPU_KV_PAGE + pos % CPU_KV_PAGE) * kvd;
}

/* Attention of one layer over all (token, head) pairs of the step. */
typedef struct attn_job
{
	cpu_backend *be;
	const gptoss_step_seq *seqs;
	int			layer;
	int			sliding;
	float		scale;
	const gptoss_bf16 *sinks;	/* [Hq] */
} attn_job;

/* Attention with a sink for pairs [begin, end) of token * Hq + head. */
CPU_KERNEL static void
attn_task(void *ctx, int64_t begin, int64_t end, int thread)
{
	attn_job   *job = ctx;
	cpu_backend *be = job->be;
	const gptoss_config *c = be->cfg;
	int			d = c->head_dim;
	int			hq = c->num_heads;
	int			kvd = c->num_kv_heads * d;
	int			group = c->num_heads / c->num_kv_heads;
	float	   *scores = be->thread_buf[thread];

	for (int64_t item = begin; item < end; item++)
	{
		int			t = (int) (item / hq);
		int			h = (int) (item % hq);
		int			g = h / group;
		int			e = be->tok_entry[t];
		int			p = be->tok_pos[t];
		int			pos0 = job->seqs[e].pos;
		int			base = be->entry_base[e];
		int			n_pages;
		const int32_t *pages = gptoss_kv_pages_table(be->base.kv_pages, job->seqs[e].slot, &n_pages);
		const float *q = be->q + (size_t) t * hq * d + (size_t) h * d;
		float	   *out = be->att + (size_t) t * hq * d + (size_t) h * d;
		int			lo = job->sliding ? p - c->sliding_window + 1 : 0;
		float		sink = gptoss_bf16_to_f32(job->sinks[h]);
		float		m = sink;
		float		den = 0.0f;

		if (lo < 0)
			lo = 0;
		for (int j = lo; j <= p; j++)
		{
			const float *kj;

			if (j >= pos0)
				kj = be->k + (size_t) (base + j - pos0) * kvd;
			else
				kj = kv_row(be, pages, job->layer, 0, j);
			scores[j - lo] = dot_f32(q, kj + (size_t) g * d, d) * job->scale;
			if (scores[j - lo] > m)
				m = scores[j - lo];
		}
		for (int j = lo; j <= p; j++)
		{
			scores[j - lo] = expf(scores[j - lo] - m);
			den += scores[j - lo];
		}
		den += expf(sink - m);
		for (int i = 0; i < d; i++)
			out[i] = 0.0f;
		for (int j = lo; j <= p; j++)
		{
			const float *vj;
			float		a = scores[j - lo] / den;

			if (j >= pos0)
				vj = be->v + (size_t) (base + j - pos0) * kvd;
			else
				vj = kv_row(be, pages, job->layer, 1, j);
			vj += (size_t) g * d;
			for (int i = 0; i < d; i++)
				out[i] += a * vj[i];
		}
	}
}

/* Expert rows: gate_up (phase 0) or down (phase 1) of the active experts. */
typedef struct expert_job
{
	cpu_backend *be;
	const gptoss_layer_weights *lw;
	int			n_active;
	int			phase;
} expert_job;

/*
 * Rows [begin, end) of (active expert index * rows_per_expert + row): decodes
 * up to 4 rows of one expert, then serves every token assigned to it.
 */
CPU_KERNEL static void
expert_task(void *ctx, int64_t begin, int64_t end, int thread)
{
	expert_job *job = ctx;
	cpu_backend *be = job->be;
	const gptoss_config *c = be->cfg;
	int			hdim = c->hidden_size;
	int			idim = c->intermediate_size;
	int			rows = job->phase == 0 ? 2 * idim : hdim;
	int			in = job->phase == 0 ? hdim : idim;
	int			nb = in / 32;
	const uint8_t *blocks = job->phase == 0 ? job->lw->gate_up_blocks : job->lw->down_blocks;
	const uint8_t *scales = job->phase == 0 ? job->lw->gate_up_scales : job->lw->down_scales;
	const gptoss_bf16 *bias = job->phase == 0 ? job->lw->gate_up_bias : job->lw->down_bias;
	float	   *out_base = job->phase == 0 ? be->gate_up : be->expert_out;
	float	   *wbuf = be->thread_buf[thread];

	for (int64_t item = begin; item < end;)
	{
		int			e = be->active_experts[item / rows];
		int			r0 = (int) (item % rows);
		int			nr = 4;
		int			a0 = be->expert_start[e];
		int			a1 = a0 + be->expert_count[e];
		const float *w[4];
		float		b[4],
					out[4];

		if (nr > end - item)
			nr = (int) (end - item);
		if (nr > rows - r0)
			nr = rows - r0;
		for (int j = 0; j < 4; j++)
		{
			size_t		row_index = (size_t) e * rows + r0 + (j < nr ? j : nr - 1);

			w[j] = wbuf + (size_t) (j < nr ? j : nr - 1) * in;
			if (j < nr)
				gptoss_mxfp4_decode_row(blocks + row_index * nb * 16, scales + row_index * nb, nb,
										wbuf + (size_t) j * in);
			b[j] = gptoss_bf16_to_f32(bias[row_index]);
		}
		for (int a = a0; a < a1; a++)
		{
			const float *x = job->phase == 0 ? be->xn + (size_t) be->assign_token[a] * hdim
				: be->act + (size_t) a * idim;
			float	   *y = out_base + (size_t) a * rows + r0;

			dot4_f32(w, x, in, out);
			for (int j = 0; j < nr; j++)
				y[j] = out[j] + b[j];
		}
		item += nr;
	}
}

/* lm_head rows [begin, end) for the n_out output rows. */
typedef struct logits_job
{
	cpu_backend *be;
	int			n_out;
	float	   *logits;			/* [n_out, V] */
} logits_job;

/* logits[o][r] = lm_head[r] · out_norm[o] for vocab rows [begin, end), 4 rows at a time. */
CPU_KERNEL static void
logits_task(void *ctx, int64_t begin, int64_t end, int thread)
{
	logits_job *job = ctx;
	cpu_backend *be = job->be;
	int			hdim = be->cfg->hidden_size;
	int64_t		vocab = be->cfg->vocab_size;

	(void) thread;
	for (int64_t r0 = begin; r0 < end; r0 += 4)
	{
		int			nr = end - r0 < 4 ? (int) (end - r0) : 4;
		const gptoss_bf16 *w[4];
		float		out[4];

		for (int j = 0; j < 4; j++)
			w[j] = be->base.model->lm_head + (size_t) (r0 + (j < nr ? j : nr - 1)) * hdim;
		for (int o = 0; o < job->n_out; o++)
		{
			float	   *y = job->logits + o * vocab + r0;

			dot4_bf16(w, be->out_norm + (size_t) o * hdim, hdim, out);
			/* spelled out: as a loop GCC turns this 16-byte copy into a memcpy call */
			y[0] = out[0];
			if (nr > 1)
				y[1] = out[1];
			if (nr > 2)
				y[2] = out[2];
			if (nr > 3)
				y[3] = out[3];
		}
	}
}

/* Sampling of the entries that asked for a token. */
typedef struct sample_job
{
	cpu_backend *be;
	const gptoss_step_seq *seqs;
	int32_t    *next_tokens;
	int			n_sampled;
} sample_job;

/*
 * Samples (or takes the forced token of) entries [begin, end) of
 * be->sample_entry with this thread's scratch, and fills their logprobs.
 */
static void
sample_task(void *ctx, int64_t begin, int64_t end, int thread)
{
	sample_job *job = ctx;
	cpu_backend *be = job->be;
	int			vocab = be->cfg->vocab_size;

	for (int64_t k = begin; k < end; k++)
	{
		const gptoss_step_seq *s = &job->seqs[be->sample_entry[k]];
		const float *row = be->sample_row[k];
		int32_t		token;

		if (s->forced)
			token = *s->forced;
		else
		{
			if (s->allowed)
			{
				/* the masked copy goes after the sampler's 8 * vocab bytes */
				float	   *masked = (float *) ((char *) be->sample_scratch[thread] + (size_t) vocab * 8);

				gptoss_mask_logits(row, s->allowed, vocab, masked);
				row = masked;
			}
			token = gptoss_sample(row, vocab, &s->sampling, (int64_t) s->pos + s->n_tokens,
								  be->sample_scratch[thread]);
		}
		/* log-probabilities of the raw logits, not of the masked row */
		if (s->logprobs)
			gptoss_logprobs_row(be->sample_row[k], vocab, token, s->top_logprobs, s->logprobs);
		job->next_tokens[be->sample_entry[k]] = token;
	}
}

/* ------------------------------------------------------------------------ */
/* Buffers                                                                  */
/* ------------------------------------------------------------------------ */

/* realloc that also counts the step buffer bytes; returns 0 or -1. */
static int
grow(cpu_backend *be, void **p, size_t old_bytes, size_t new_bytes)
{
	void	   *n = realloc(*p, new_bytes ? new_bytes : 1);

	if (!n)
		return -1;
	*p = n;
	be->step_bytes += (int64_t) new_bytes - (int64_t) old_bytes;
	return 0;
}

/*
 * Makes the step buffers hold n_tok tokens, n_entries entries, n_out normed
 * output rows and n_sampled rows of internal logits.
 */
static int
ensure_step_buffers(cpu_backend *be, int n_tok, int n_entries, int n_out, int n_sampled,
					gptoss_error *err)
{
	const gptoss_config *c = be->cfg;
	size_t		hdim = c->hidden_size;
	size_t		qd = (size_t) c->num_heads * c->head_dim;
	size_t		kvd = (size_t) c->num_kv_heads * c->head_dim;
	size_t		kk = c->experts_per_token;
	size_t		idim = c->intermediate_size;
	size_t		vocab = c->vocab_size;

	if (n_tok > be->cap_tokens)
	{
		size_t		o = be->cap_tokens,
					n = n_tok;
		int			fail = 0;

#define GROW(field, per_tok) \
		fail |= grow(be, (void **) &be->field, o * (per_tok) * sizeof(*be->field), n * (per_tok) * sizeof(*be->field))
		GROW(x, hdim);
		GROW(xn, hdim);
		GROW(xperm, qd > hdim ? qd : hdim);
		GROW(q, qd);
		GROW(k, kvd);
		GROW(v, kvd);
		GROW(att, qd);
		GROW(proj, hdim);
		GROW(router, (size_t) c->num_experts);
		GROW(rope_cs, (size_t) c->head_dim);
		GROW(tok_pos, 1);
		GROW(tok_entry, 1);
		GROW(sel_expert, kk);
		GROW(sel_weight, kk);
		GROW(sel_assign, kk);
		GROW(assign_token, kk);
		GROW(gate_up, kk * 2 * idim);
		GROW(act, kk * idim);
		GROW(expert_out, kk * hdim);
		GROW(out_rows, 1);
#undef GROW
		if (fail)
			return gptoss_errorf(err, "cpu backend: out of memory for a step of %d tokens", n_tok);
		be->cap_tokens = n_tok;
	}
	if (n_entries > be->cap_entries)
	{
		if (grow(be, (void **) &be->entry_base, (size_t) be->cap_entries * sizeof(int),
				 (size_t) n_entries * sizeof(int)) ||
			grow(be, (void **) &be->sample_entry, (size_t) be->cap_entries * sizeof(int),
				 (size_t) n_entries * sizeof(int)) ||
			grow(be, (void **) &be->sample_row, (size_t) be->cap_entries * sizeof(float *),
				 (size_t) n_entries * sizeof(float *)))
			return gptoss_errorf(err, "cpu backend: out of memory for %d entries", n_entries);
		be->cap_entries = n_entries;
	}
	if (n_out > be->cap_out)
	{
		if (grow(be, (void **) &be->out_norm, (size_t) be->cap_out * hdim * sizeof(float),
				 (size_t) n_out * hdim * sizeof(float)))
			return gptoss_errorf(err, "cpu backend: out of memory for %d output rows", n_out);
		be->cap_out = n_out;
	}
	if (n_sampled > be->cap_sampled)
	{
		if (grow(be, (void **) &be->out_logits, (size_t) be->cap_sampled * vocab * sizeof(float),
				 (size_t) n_sampled * vocab * sizeof(float)))
			return gptoss_errorf(err, "cpu backend: out of memory for %d rows of logits", n_sampled);
		be->cap_sampled = n_sampled;
	}
	return 0;
}

/* Bytes of one KV page: K and V rows of every layer for CPU_KV_PAGE positions. */
static size_t
kv_page_bytes(const gptoss_config *c)
{
	return (size_t) c->num_layers * 2 * CPU_KV_PAGE * c->num_kv_heads * c->head_dim * sizeof(float);
}

/* Gives slot the pages for positions [0, need), allocating the memory of pages used for the first time. */
static int
slot_reserve(cpu_backend *be, int slot, int need, gptoss_error *err)
{
	int			added = gptoss_kv_pages_grow(be->base.kv_pages, slot, need, err);
	int			n_pages;
	const int32_t *pages = gptoss_kv_pages_table(be->base.kv_pages, slot, &n_pages);

	if (added < 0)
		return -1;
	for (int i = n_pages - added; i < n_pages; i++)
	{
		if (be->page_data[pages[i]])
			continue;
		be->page_data[pages[i]] = malloc(kv_page_bytes(be->cfg));
		if (!be->page_data[pages[i]])
			return gptoss_errorf(err, "cpu backend: out of memory growing the KV cache to %d positions", need);
		be->kv_bytes += (int64_t) kv_page_bytes(be->cfg);
	}
	return 0;
}

/*
 * Tokens cached over all slots; with own set, only those the slots computed
 * (shared prefix pages are held by the engine's reservations, and the page
 * check covers them).
 */
static int64_t
kv_used_tokens(const cpu_backend *be, int own)
{
	int64_t		used = 0;

	for (int s = 0; s < be->base.opts.max_seqs; s++)
		used += gptoss_kv_pages_len(be->base.kv_pages, s) -
			(own ? gptoss_kv_pages_shared(be->base.kv_pages, s) : 0);
	return used;
}

/* ------------------------------------------------------------------------ */
/* The step                                                                 */
/* ------------------------------------------------------------------------ */

/* Cached tokens of slot (for gptoss_backend_check_step). */
static int
cached_len(const gptoss_backend *base, int slot)
{
	return gptoss_kv_pages_len(base->kv_pages, slot);
}

/* Checks every entry before any state changes (backend.c), then the KV capacity; total tokens or -1. */
static int64_t
validate_step(cpu_backend *be, const gptoss_step_seq *seqs, int n_seqs,
			  const int32_t *next_tokens, gptoss_error *err)
{
	int64_t		total = gptoss_backend_check_step(&be->base, seqs, n_seqs, next_tokens, cached_len,
												  be->slot_stamp, &be->stamp, err);
	int64_t		used;
	int64_t		pages = 0;

	if (total < 0)
		return -1;
	used = kv_used_tokens(be, 1);
	for (int i = 0; i < n_seqs; i++)
		pages += gptoss_kv_pages_missing(be->base.kv_pages, seqs[i].slot, seqs[i].pos + seqs[i].n_tokens);
	if (used + total > be->kv_capacity || pages > gptoss_kv_pages_available(be->base.kv_pages))
		return gptoss_errorf_code(err, GPTOSS_ERR_BUSY,
								  "step: KV cache full (%lld of %lld tokens used, %lld more needed)",
								  (long long) used, (long long) be->kv_capacity, (long long) total);
	return total;
}

/* Attention block of layer l for all T rows (x updated in place). */
static void
attention_block(cpu_backend *be, const gptoss_step_seq *seqs, int n_seqs, int n_tok, int l)
{
	const gptoss_config *c = be->cfg;
	const gptoss_layer_weights *lw = &be->base.model->layers[l];
	int			hdim = c->hidden_size;
	int			d = c->head_dim;
	int			hq = c->num_heads;
	int			hkv = c->num_kv_heads;
	int			kvd = hkv * d;
	int			half = d / 2;
	dense_job	qkv = {0};
	dense_job	oproj = {0};
	attn_job	aj = {0};
	int64_t		attn_work = 0;

	for (int t = 0; t < n_tok; t++)
		rmsnorm_row(be->x + (size_t) t * hdim, lw->attn_norm, c->rms_norm_eps, be->xn + (size_t) t * hdim, hdim);

	qkv.n_seg = 3;
	qkv.w[0] = lw->q_weight, qkv.bias[0] = lw->q_bias, qkv.y[0] = be->q, qkv.rows[0] = hq * d;
	qkv.w[1] = lw->k_weight, qkv.bias[1] = lw->k_bias, qkv.y[1] = be->k, qkv.rows[1] = kvd;
	qkv.w[2] = lw->v_weight, qkv.bias[2] = lw->v_bias, qkv.y[2] = be->v, qkv.rows[2] = kvd;
	qkv.in = hdim;
	qkv.x = be->xn;
	qkv.n_tok = n_tok;
	run_dense(be, &qkv);

	for (int t = 0; t < n_tok; t++)
	{
		const float *cs = be->rope_cs + (size_t) t * d;

		for (int h = 0; h < hq; h++)
			gptoss_rope_rotate(be->q + ((size_t) t * hq + h) * d, cs, cs + half, half);
		for (int h = 0; h < hkv; h++)
			gptoss_rope_rotate(be->k + ((size_t) t * hkv + h) * d, cs, cs + half, half);
	}

	aj.be = be;
	aj.seqs = seqs;
	aj.layer = l;
	aj.sliding = c->layer_sliding[l];
	aj.scale = 1.0f / sqrtf((float) d);
	aj.sinks = lw->sinks;
	for (int t = 0; t < n_tok; t++)
	{
		int			lo = aj.sliding ? be->tok_pos[t] - c->sliding_window + 1 : 0;

		attn_work += (int64_t) (be->tok_pos[t] - (lo > 0 ? lo : 0) + 1) * hq * d * 2;
	}
	pool_parallel_for(be->pool, attn_task, &aj, (int64_t) n_tok * hq,
					  pool_grain(be->pool, (int64_t) n_tok * hq, 1), attn_work);

	/* append this step's keys and values to each slot's cache */
	for (int i = 0; i < n_seqs; i++)
	{
		int			n_pages;
		const int32_t *pages = gptoss_kv_pages_table(be->base.kv_pages, seqs[i].slot, &n_pages);

		for (int j = 0; j < seqs[i].n_tokens; j++)
		{
			int			p = seqs[i].pos + j;
			size_t		src = (size_t) (be->entry_base[i] + j) * kvd;

			memcpy(kv_row(be, pages, l, 0, p), be->k + src, kvd * sizeof(float));
			memcpy(kv_row(be, pages, l, 1, p), be->v + src, kvd * sizeof(float));
		}
	}

	oproj.n_seg = 1;
	oproj.w[0] = lw->o_weight, oproj.bias[0] = lw->o_bias, oproj.y[0] = be->proj, oproj.rows[0] = hdim;
	oproj.in = hq * d;
	oproj.x = be->att;
	oproj.n_tok = n_tok;
	run_dense(be, &oproj);
	for (size_t i = 0; i < (size_t) n_tok * hdim; i++)
		be->x[i] += be->proj[i];
}

/* Mixture-of-experts block of layer l for all T rows (x updated in place). */
static void
moe_block(cpu_backend *be, int n_tok, int l)
{
	const gptoss_config *c = be->cfg;
	const gptoss_layer_weights *lw = &be->base.model->layers[l];
	int			hdim = c->hidden_size;
	int			idim = c->intermediate_size;
	int			n_exp = c->num_experts;
	int			kk = c->experts_per_token;
	float		limit = c->swiglu_limit;
	dense_job	rj = {0};
	expert_job	ej = {0};
	int			n_active = 0;
	int			n_assign = 0;

	for (int t = 0; t < n_tok; t++)
		rmsnorm_row(be->x + (size_t) t * hdim, lw->mlp_norm, c->rms_norm_eps, be->xn + (size_t) t * hdim, hdim);

	rj.n_seg = 1;
	rj.w[0] = lw->router_weight, rj.bias[0] = lw->router_bias, rj.y[0] = be->router, rj.rows[0] = n_exp;
	rj.in = hdim;
	rj.x = be->xn;
	rj.n_tok = n_tok;
	run_dense(be, &rj);

	/* top-k on the raw logits (ties: lower expert first), softmax over the k */
	memset(be->expert_count, 0, n_exp * sizeof(int));
	for (int t = 0; t < n_tok; t++)
	{
		const float *g = be->router + (size_t) t * n_exp;
		int		   *sel = be->sel_expert + (size_t) t * kk;
		float	   *wt = be->sel_weight + (size_t) t * kk;
		float		sum = 0.0f;

		for (int k = 0; k < kk; k++)
		{
			int			best = -1;

			for (int e = 0; e < n_exp; e++)
			{
				int			taken = 0;

				for (int j = 0; j < k; j++)
					taken |= sel[j] == e;
				if (!taken && (best < 0 || g[e] > g[best]))
					best = e;
			}
			sel[k] = best;
		}
		for (int k = 0; k < kk; k++)
		{
			wt[k] = expf(g[sel[k]] - g[sel[0]]);
			sum += wt[k];
		}
		for (int k = 0; k < kk; k++)
		{
			wt[k] /= sum;
			be->expert_count[sel[k]]++;
		}
	}

	/* group (token, k) assignments by expert, tokens in order within an expert */
	for (int e = 0; e < n_exp; e++)
	{
		be->expert_start[e] = n_assign;
		n_assign += be->expert_count[e];
		if (be->expert_count[e] > 0)
			be->active_experts[n_active++] = e;
		be->expert_count[e] = 0;
	}
	for (int t = 0; t < n_tok; t++)
		for (int k = 0; k < kk; k++)
		{
			int			e = be->sel_expert[(size_t) t * kk + k];
			int			a = be->expert_start[e] + be->expert_count[e]++;

			be->assign_token[a] = t;
			be->sel_assign[(size_t) t * kk + k] = a;
		}

	ej.be = be;
	ej.lw = lw;
	ej.n_active = n_active;
	ej.phase = 0;
	pool_parallel_for(be->pool, expert_task, &ej, (int64_t) n_active * 2 * idim,
					  pool_grain(be->pool, (int64_t) n_active * 2 * idim, 8),
					  (int64_t) n_assign * 2 * idim * hdim);

	/* clamped SwiGLU: gate = even rows, up = odd rows */
	for (int a = 0; a < n_assign; a++)
	{
		const float *h = be->gate_up + (size_t) a * 2 * idim;
		float	   *out = be->act + (size_t) a * idim;

		for (int j = 0; j < idim; j++)
		{
			float		gate = h[2 * j];
			float		up = h[2 * j + 1];

			gate = gate > limit ? limit : gate;
			up = up > limit ? limit : up < -limit ? -limit : up;
			out[j] = gate * (1.0f / (1.0f + expf(-1.702f * gate))) * (up + 1.0f);
		}
	}

	ej.phase = 1;
	pool_parallel_for(be->pool, expert_task, &ej, (int64_t) n_active * hdim,
					  pool_grain(be->pool, (int64_t) n_active * hdim, 8),
					  (int64_t) n_assign * hdim * idim);

	/* x += sum_k w_k * y_k */
	for (int t = 0; t < n_tok; t++)
	{
		float	   *xt = be->x + (size_t) t * hdim;

		for (int i = 0; i < hdim; i++)
		{
			float		s = 0.0f;

			for (int k = 0; k < kk; k++)
				s += be->sel_weight[(size_t) t * kk + k] *
					be->expert_out[(size_t) be->sel_assign[(size_t) t * kk + k] * hdim + i];
			xt[i] += s;
		}
	}
}

/* One forward step over all entries (see backend.h). */
static int
cpu_step(gptoss_backend *base, const gptoss_step_seq *seqs, int n_seqs,
		 int32_t *next_tokens, float *logits, gptoss_error *err)
{
	cpu_backend *be = (cpu_backend *) base;
	const gptoss_model *model = base->model;
	const gptoss_config *c = be->cfg;
	int			hdim = c->hidden_size;
	int			d = c->head_dim;
	int64_t		vocab = c->vocab_size;
	int64_t		total;
	int			n_tok;
	int			n_out = 0;
	float	   *out_logits;
	logits_job	lj = {0};
	sample_job	sj = {0};

	if (be->failed)
		return gptoss_errorf(err, "cpu backend: unusable after an earlier internal error");
	total = validate_step(be, seqs, n_seqs, next_tokens, err);
	if (total < 0)
		return -1;
	if (total == 0)
		return 0;
	n_tok = (int) total;

	/* which rows need logits */
	for (int i = 0; i < n_seqs; i++)
		n_out += logits ? seqs[i].n_tokens : (seqs[i].sample ? 1 : 0);
	if (ensure_step_buffers(be, n_tok, n_seqs, n_out, logits ? 0 : n_out, err) < 0)
		goto fail;
	for (int i = 0; i < n_seqs; i++)
		if (slot_reserve(be, seqs[i].slot, seqs[i].pos + seqs[i].n_tokens, err) < 0)
			goto fail;

	/* token rows: embedding, positions, rope cos/sin */
	{
		int			row = 0;

		for (int i = 0; i < n_seqs; i++)
		{
			be->entry_base[i] = row;
			for (int j = 0; j < seqs[i].n_tokens; j++, row++)
			{
				float	   *cs = be->rope_cs + (size_t) row * d;

				be->tok_pos[row] = seqs[i].pos + j;
				be->tok_entry[row] = i;
				bf16_row_to_f32(model->embedding + (size_t) seqs[i].tokens[j] * hdim,
								be->x + (size_t) row * hdim, hdim);
				gptoss_rope_cos_sin(&be->rope, be->tok_pos[row], cs, cs + d / 2);
			}
		}
	}

	for (int l = 0; l < c->num_layers; l++)
	{
		attention_block(be, seqs, n_seqs, n_tok, l);
		moe_block(be, n_tok, l);
	}

	/* final norm and lm_head on the rows that need logits */
	n_out = 0;
	for (int i = 0; i < n_seqs; i++)
	{
		if (logits)
			for (int j = 0; j < seqs[i].n_tokens; j++)
				be->out_rows[n_out++] = be->entry_base[i] + j;
		else if (seqs[i].sample)
			be->out_rows[n_out++] = be->entry_base[i] + seqs[i].n_tokens - 1;
	}
	for (int o = 0; o < n_out; o++)
	{
		rmsnorm_row(be->x + (size_t) be->out_rows[o] * hdim, model->final_norm, c->rms_norm_eps,
					be->xn, hdim);
		permute_even_odd(be->xn, be->out_norm + (size_t) o * hdim, hdim);
	}
	out_logits = logits ? logits : be->out_logits;
	lj.be = be;
	lj.n_out = n_out;
	lj.logits = out_logits;
	if (n_out > 0)
		pool_parallel_for(be->pool, logits_task, &lj, vocab, pool_grain(be->pool, vocab, 256),
						  vocab * hdim * n_out);

	/* sample (entries in parallel), and advance the slots */
	n_out = 0;
	sj.be = be;
	sj.seqs = seqs;
	sj.next_tokens = next_tokens;
	for (int i = 0; i < n_seqs; i++)
	{
		if (logits)
			n_out += seqs[i].n_tokens;
		if (seqs[i].sample)
		{
			be->sample_entry[sj.n_sampled] = i;
			be->sample_row[sj.n_sampled++] = out_logits +
				(size_t) (logits ? n_out - 1 : n_out++) * vocab;
		}
		gptoss_kv_pages_advance(be->base.kv_pages, seqs[i].slot, seqs[i].n_tokens);
	}
	pool_parallel_for(be->pool, sample_task, &sj, sj.n_sampled, 1, (int64_t) sj.n_sampled * vocab * 16);
	{
		int64_t		used = be->kv_bytes + be->step_bytes;

		if (used > be->peak_bytes)
			be->peak_bytes = used;
	}
	return 0;

fail:
	be->failed = 1;
	return -1;
}

/* Forgets slot's cached tokens; its pages go back to the pool (registered ones stay cached). */
static void
cpu_release(gptoss_backend *base, int slot)
{
	if (slot < 0 || slot >= base->opts.max_seqs)
		return;
	gptoss_kv_pages_release(base->kv_pages, slot);
}

/* Fills info: weights are the model's mapping, memory is what the backend allocated. */
static void
cpu_get_info(gptoss_backend *base, gptoss_backend_info *info)
{
	cpu_backend *be = (cpu_backend *) base;
	long		pages = sysconf(_SC_PHYS_PAGES);
	long		page_size = sysconf(_SC_PAGESIZE);
	int64_t		own = be->kv_bytes + be->step_bytes +
		(int64_t) be->n_threads * (be->thread_buf_len * (int64_t) sizeof(float) +
								   (int64_t) be->cfg->vocab_size * 8);

	memset(info, 0, sizeof(*info));
	snprintf(info->device_name, sizeof(info->device_name), "CPU (%d threads)", be->n_threads);
	info->weight_bytes = base->model->tensor_bytes;
	info->kv_cache_bytes = be->kv_bytes;
	info->memory_used_bytes = info->weight_bytes + own;
	info->memory_total_bytes = pages > 0 && page_size > 0 ? (int64_t) pages * page_size : 0;
	info->kv_cache_tokens = be->kv_capacity;
	info->kv_cache_used_tokens = kv_used_tokens(be, 0);
	info->peak_memory_bytes = info->weight_bytes +
		(be->peak_bytes > own ? be->peak_bytes : own);
}

/* Frees the cache, the buffers and the threads. */
static void
cpu_free(gptoss_backend *base)
{
	cpu_backend *be = (cpu_backend *) base;

	if (!be)
		return;
	pool_free(be->pool, be->pool_args);
	if (be->page_data)
		for (int i = 0; i < be->n_pages; i++)
			free(be->page_data[i]);
	free(be->page_data);
	gptoss_kv_pages_free(base->kv_pages);
	if (be->thread_buf)
		for (int i = 0; i < be->n_threads; i++)
			free(be->thread_buf[i]);
	free(be->thread_buf);
	free(be->slot_stamp);
	free(be->x);
	free(be->xn);
	free(be->xperm);
	free(be->q);
	free(be->k);
	free(be->v);
	free(be->att);
	free(be->proj);
	free(be->router);
	free(be->rope_cs);
	free(be->tok_pos);
	free(be->tok_entry);
	free(be->sel_expert);
	free(be->sel_weight);
	free(be->sel_assign);
	free(be->assign_token);
	free(be->gate_up);
	free(be->act);
	free(be->expert_out);
	free(be->expert_count);
	free(be->expert_start);
	free(be->active_experts);
	free(be->entry_base);
	free(be->out_norm);
	free(be->out_logits);
	free(be->out_rows);
	if (be->sample_scratch)
		for (int i = 0; i < be->n_threads; i++)
			free(be->sample_scratch[i]);
	free(be->sample_scratch);
	free(be->sample_entry);
	free(be->sample_row);
	free(be);
}

/* Creates the CPU backend over a loaded model. */
gptoss_backend *
gptoss_backend_cpu_create(const gptoss_model *model, const gptoss_backend_opts *opts,
						  gptoss_error *err)
{
	cpu_backend *be;
	const gptoss_config *c;
	int			n_threads;
	int			max_in;

	if (gptoss_backend_check_model(model, opts, "cpu backend", err) < 0)
		return NULL;
	c = &model->config;
	be = calloc(1, sizeof(cpu_backend));
	if (!be)
	{
		gptoss_errorf(err, "cpu backend: out of memory");
		return NULL;
	}
	be->base.name = "cpu";
	be->base.model = model;
	be->base.opts = *opts;
	be->base.step = cpu_step;
	be->base.release = cpu_release;
	be->base.get_info = cpu_get_info;
	be->base.free = cpu_free;
	be->cfg = c;
	if (gptoss_rope_init(&be->rope, c, err) < 0)
		goto fail;

	n_threads = opts->threads > 0 ? opts->threads : gptoss_num_threads();
	if (n_threads > 256)
		n_threads = 256;		/* the limit gptoss_num_threads() applies too */
	be->n_threads = n_threads;
	be->base.opts.threads = n_threads;
	be->kv_capacity = opts->kv_cache_tokens > 0 ? opts->kv_cache_tokens
		: (int64_t) opts->max_seqs * opts->max_context;
	be->base.opts.kv_cache_tokens = be->kv_capacity;
	be->base.kv_chunk_invariant = 1;

	/* every slot may end inside a page: one partial page each on top of the capacity */
	if ((be->kv_capacity + CPU_KV_PAGE - 1) / CPU_KV_PAGE + opts->max_seqs > INT32_MAX)
	{
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "cpu backend: kv_cache_tokens %lld is too large",
						   (long long) be->kv_capacity);
		goto fail;
	}
	be->n_pages = (int) ((be->kv_capacity + CPU_KV_PAGE - 1) / CPU_KV_PAGE + opts->max_seqs);
	be->base.kv_pages = gptoss_kv_pages_create(be->n_pages, CPU_KV_PAGE, opts->max_seqs,
											   opts->max_context, err);
	if (!be->base.kv_pages)
		goto fail;
	be->page_data = calloc(be->n_pages, sizeof(float *));
	be->slot_stamp = calloc(opts->max_seqs, sizeof(unsigned));
	be->expert_count = calloc(c->num_experts, sizeof(int));
	be->expert_start = calloc(c->num_experts, sizeof(int));
	be->active_experts = calloc(c->num_experts, sizeof(int));
	if (!be->page_data || !be->slot_stamp || !be->expert_count || !be->expert_start ||
		!be->active_experts)
		goto oom;

	/* per-thread scratch: 4 decoded expert rows, or one row of attention scores */
	max_in = c->hidden_size;
	if (c->num_heads * c->head_dim > max_in)
		max_in = c->num_heads * c->head_dim;
	if (c->intermediate_size > max_in)
		max_in = c->intermediate_size;
	be->thread_buf_len = 4 * max_in > opts->max_context ? 4 * max_in : opts->max_context;
	be->thread_buf = calloc(n_threads, sizeof(float *));
	be->sample_scratch = calloc(n_threads, sizeof(void *));
	if (!be->thread_buf || !be->sample_scratch)
		goto oom;
	for (int i = 0; i < n_threads; i++)
		if (!(be->thread_buf[i] = malloc(be->thread_buf_len * sizeof(float))) ||
			!(be->sample_scratch[i] = malloc((size_t) c->vocab_size * 12)))
			goto oom;

	be->pool = pool_create(n_threads, &be->pool_args, err);
	if (!be->pool)
		goto fail;
	return &be->base;

oom:
	gptoss_errorf(err, "cpu backend: out of memory");
fail:
	cpu_free(&be->base);
	return NULL;
}
