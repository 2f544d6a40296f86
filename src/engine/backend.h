/*
 * backend.h: the compute interface that the CPU and CUDA backends implement
 * and the scheduler drives.
 *
 * A step runs one forward pass over a batch of sequence chunks: each entry is
 * a contiguous run of tokens of one sequence starting at its current cache
 * length (a prefill chunk, or one decode token).  The backend appends their
 * keys and values to the sequence's KV-cache slot and, for entries with
 * sample = 1, picks the next token from the logits of the entry's last token.
 * Sequences of different lengths mix freely in one step.
 *
 * An entry that produces a token may instead be given it (forced: teacher
 * forcing, as label scoring does) and may ask for the log-probability of the
 * token produced and the most probable alternatives; both backends compute
 * them from the raw logits (log-softmax at temperature 1), so they describe
 * the model, not the sampling settings.
 *
 * The KV cache of both backends is paged, with its bookkeeping in kv_pages
 * (kv_pages.h): the engine shares pages of identical prompt prefixes between
 * slots through it (the prefix cache), and a slot's cached length is the
 * length kv_pages records.
 */
#ifndef GPTOSS_BACKEND_H
#define GPTOSS_BACKEND_H

#include "kv_pages.h"
#include "logprobs.h"
#include "model.h"
#include "sampler.h"

typedef struct gptoss_step_seq
{
	int			slot;			/* KV-cache slot, 0 .. max_seqs-1 */
	int			pos;			/* absolute position of tokens[0] = tokens already cached */
	int			n_tokens;		/* >= 1 */
	const int32_t *tokens;		/* [n_tokens] */
	int			sample;			/* 1: produce next_tokens[i] after the last token */
	gptoss_sampling sampling;	/* used when sample = 1 */
	const int32_t *forced;		/* sample = 1: NULL samples; else the token produced is *forced */
	gptoss_token_logprobs *logprobs;	/* sample = 1: NULL, or receives the produced token's log-probability */
	int			top_logprobs;	/* with logprobs: alternatives wanted, 0 .. GPTOSS_MAX_TOP_LOGPROBS */
	const uint32_t *allowed;	/* sample = 1: bit mask of the ids that may be picked
								 * (gptoss_mask_words(vocab) words), or NULL for all */
} gptoss_step_seq;

typedef struct gptoss_backend_opts
{
	int			max_seqs;		/* KV-cache slots (concurrent sequences) */
	int			max_context;	/* longest sequence (prompt + generation) */
	int64_t		kv_cache_tokens;	/* total cached tokens over all slots; 0 = max_seqs * max_context */
	double		gpu_memory_fraction;	/* CUDA: share of device memory to use */
	int			device_index;	/* CUDA device */
	int			cuda_graphs;	/* CUDA: capture decode steps */
	int			threads;		/* CPU: worker threads, 0 = gptoss_num_threads() */
} gptoss_backend_opts;

typedef struct gptoss_backend_info
{
	char		device_name[128];
	int64_t		weight_bytes;	/* weights resident on the device */
	int64_t		kv_cache_bytes;
	int64_t		memory_used_bytes;	/* everything the backend holds */
	int64_t		memory_total_bytes; /* device capacity, 0 if unknown */
	int64_t		kv_cache_tokens;	/* capacity in tokens */
	int64_t		kv_cache_used_tokens;
	int64_t		peak_memory_bytes;
} gptoss_backend_info;

typedef struct gptoss_backend gptoss_backend;

struct gptoss_backend
{
	const char *name;			/* "cpu" or "cuda" */
	const gptoss_model *model;
	gptoss_backend_opts opts;
	gptoss_kv_pages *kv_pages;	/* page bookkeeping of the KV cache, or NULL (no sharing) */
	/*
	 * 1 when a token's cached keys and values do not depend on how its prompt
	 * was cut into chunks (CPU: bitwise); 0 when they do (CUDA), so shared
	 * prefixes must end at multiples of the engine's prefill chunk.
	 */
	int			kv_chunk_invariant;

	/*
	 * Runs one step.  next_tokens[i] is written for entries with sample = 1.
	 * When logits is not NULL it receives the logits of every token of every
	 * entry, in entry order: (sum of n_tokens) rows of vocab_size floats.
	 * Returns 0, or -1 with err set; after a failure the backend must be freed.
	 */
	int			(*step) (gptoss_backend *be, const gptoss_step_seq *seqs, int n_seqs,
						 int32_t *next_tokens, float *logits, gptoss_error *err);
	/* Forgets slot's cached tokens so the slot can start a new sequence. */
	void		(*release) (gptoss_backend *be, int slot);
	/* Fills info. */
	void		(*get_info) (gptoss_backend *be, gptoss_backend_info *info);
	/* Frees everything the backend holds (not the model). */
	void		(*free) (gptoss_backend *be);
};

gptoss_backend *gptoss_backend_cpu_create(const gptoss_model *model,
										  const gptoss_backend_opts *opts,
										  gptoss_error *err);

/* Returns 1 when built with CUDA and a device is usable (never initialises more than needed). */
int			gptoss_cuda_available(void);

/* NULL with err set when not built with CUDA or the device cannot be used. */
gptoss_backend *gptoss_backend_cuda_create(const gptoss_model *model,
										   const gptoss_backend_opts *opts,
										   gptoss_progress_fn progress, void *progress_arg,
										   gptoss_error *err);

/* Picks "cpu", "cuda" or "auto" (cuda when available, else cpu). */
gptoss_backend *gptoss_backend_create(const char *device, const gptoss_model *model,
									  const gptoss_backend_opts *opts,
									  gptoss_progress_fn progress, void *progress_arg,
									  gptoss_error *err);

/*
 * Shared argument checks, so that every backend accepts and rejects the same
 * input with the same message.  who names the backend in messages
 * ("cpu backend").  Checks the model's shapes and weights that every
 * backend relies on and the opts (max_seqs, max_context); 0 or -1 with err
 * (GPTOSS_ERR_INVALID).  A backend adds its own limits after it.
 */
int			gptoss_backend_check_model(const gptoss_model *model, const gptoss_backend_opts *opts,
									   const char *who, gptoss_error *err);

/* A backend's count of cached tokens of slot (its next position). */
typedef int (*gptoss_cached_len_fn) (const gptoss_backend *be, int slot);

/*
 * Checks a step's entries before any state changes: entry list, slot range,
 * a slot at most once (slot_stamp [max_seqs] scratch, *stamp bumped per
 * call), pos == cached_len(slot), the context limit (GPTOSS_ERR_TOO_LONG),
 * token ids, and for sampled entries next_tokens and the sampling settings
 * (top_p only when temperature > 0: a zeroed gptoss_sampling is greedy).
 * Returns the step's total tokens, or -1 with err.  KV capacity is the
 * backend's own check.
 */
int64_t		gptoss_backend_check_step(const gptoss_backend *be, const gptoss_step_seq *seqs, int n_seqs,
									  const int32_t *next_tokens, gptoss_cached_len_fn cached_len,
									  unsigned *slot_stamp, unsigned *stamp, gptoss_error *err);

#endif							/* GPTOSS_BACKEND_H */
