/*
 * engine.h: the request-level engine that the CLI, the benchmarks and the
 * PostgreSQL worker drive.
 *
 * An engine owns the model, one backend, the tokenizer and the scheduler.
 * Callers submit requests (text prompt or chat messages, or pre-tokenized
 * ids) with generation parameters, call gptoss_engine_step() in a loop, and
 * read per-request progress: newly decoded text for streaming, then the
 * finished result.  Continuous batching: a request submitted between steps
 * joins the next step; prompts are prefilled in chunks mixed with decode
 * tokens of running requests.
 *
 * Prefix cache: when the backend's KV cache is paged (backend.h), a request
 * whose prompt starts with pages another request already computed (same
 * tokens from position 0) starts from those pages instead of recomputing
 * them; pages are shared at multiples of the page size, or of the prefill
 * chunk when the backend's cached keys depend on the chunking, so results
 * are the same with the cache on or off.
 *
 * Scoring (classification): a score request computes, for each of several
 * continuations, the sum of the log-probabilities of its tokens after the
 * prompt.  The prompt's pages are computed once and shared by one internal
 * sequence per continuation, which feeds the continuation's tokens forced
 * (teacher forcing) instead of sampling.
 */
#ifndef GPTOSS_ENGINE_H
#define GPTOSS_ENGINE_H

#include <stdbool.h>
#include "backend.h"
#include "chat.h"
#include "params.h"
#include "tokenizer.h"

typedef enum gptoss_finish_reason
{
	GPTOSS_FINISH_NONE = 0,		/* still running */
	GPTOSS_FINISH_STOP,			/* <|return|>/<|call|>, eos in raw mode, or a stop string */
	GPTOSS_FINISH_LENGTH,		/* max_tokens or the context ran out */
	GPTOSS_FINISH_CANCELLED,
	GPTOSS_FINISH_ERROR
} gptoss_finish_reason;

/* "stop", "length", "cancelled", "error" or "" */
const char *gptoss_finish_reason_name(gptoss_finish_reason r);

/*
 * Generation parameters of one request.  Each field the caller may set has a
 * row in GPTOSS_PARAMS (params.c), which gives its range and how it is parsed.
 */
/* params on_error: a failed generation raises its error, or gives NULL. */
typedef enum gptoss_on_error
{
	GPTOSS_ON_ERROR_RAISE = 0,	/* "error" */
	GPTOSS_ON_ERROR_NULL		/* "null" */
} gptoss_on_error;

extern const char *const gptoss_on_error_names[];

typedef struct gptoss_gen_params
{
	int			max_tokens;		/* >= 1; clamped to what the context leaves */
	int			min_tokens;		/* >= 0; a stop token ends generation only from this many tokens on */
	float		temperature;	/* >= 0; 0 = greedy */
	float		top_p;			/* (0, 1] */
	int			top_k;			/* >= 0; 0 = off */
	bool		has_seed;
	uint64_t	seed;			/* used when has_seed; else a fresh random seed */
	const char *stop[GPTOSS_MAX_STOP];	/* [n_stop] stop strings (borrowed) */
	int			n_stop;
	gptoss_reasoning reasoning_effort;
	const char *instructions;	/* developer message, or NULL (borrowed) */
	const char *current_date;	/* "YYYY-MM-DD" for the system message, or NULL */
	bool		raw;			/* plain continuation of the prompt text */
	bool		ignore_eos;		/* do not stop on stop tokens */
	bool		include_reasoning;	/* collect the analysis channel text */
	bool		prefix_caching; /* share KV pages of identical prompt prefixes (default on) */
	bool		logprobs;		/* record each generated token's log-probability */
	int			top_logprobs;	/* with logprobs: alternatives per token, 0 .. GPTOSS_MAX_TOP_LOGPROBS */
	const char *response_format;	/* OpenAI response_format object as JSON text, or NULL
									 * (borrowed; see json_schema.h) */
	gptoss_on_error on_error;	/* how a SQL session reports a generation that fails for its
								 * own input (the engine does not use it) */
	bool		has_max_reasoning_tokens;
	int			max_reasoning_tokens;	/* >= 0 when has_max_reasoning_tokens; else unlimited,
										 * or max_tokens / 2 with a response_format */
} gptoss_gen_params;

/* OpenAI defaults: max_tokens 256, temperature 1, top_p 1, top_k 0, medium; prefix caching on. */
void		gptoss_gen_params_default(gptoss_gen_params *p);

/*
 * Chunked prefill defaults.  A step carries every running sequence's decode
 * token plus prompt chunks of at most GPTOSS_DEFAULT_PREFILL_CHUNK tokens.
 * On the H200 (bench/RESULTS.md) a 20b decode step at batch 64 takes ~9 ms
 * and prefill runs at ~19,000 tok/s, so a 256-token chunk adds ~13 ms to the
 * steps it joins (~2.5x a decode step, against ~13x for a whole 2048-token
 * prompt), and a 2048-token prompt pays ~8 decode steps more before its
 * first token; 512 would halve that cost but double the stall.  The CUDA
 * prefix cache shares whole chunks, so a smaller chunk also shares finer.
 * `gptoss bench --arrivals` measures the trade.
 */
#define GPTOSS_DEFAULT_PREFILL_CHUNK 256
#define GPTOSS_DEFAULT_MAX_STEP_TOKENS 2048

typedef struct gptoss_engine_opts
{
	const char *model_path;
	const char *device;			/* "auto", "cpu", "cuda" */
	gptoss_backend_opts backend;	/* max_seqs, max_context, ... */
	int			prefill_chunk;	/* max prompt tokens per sequence per step; 0 = default */
	int			max_step_tokens;	/* max tokens per step over all sequences; 0 = default */
	const gptoss_tokenizer *tokenizer;	/* borrowed instead of loading model_path's, or NULL */
} gptoss_engine_opts;

typedef struct gptoss_engine gptoss_engine;

/* Loads the model, tokenizer (model_path/tokenizer.json) and backend. */
gptoss_engine *gptoss_engine_create(const gptoss_engine_opts *opts,
									gptoss_progress_fn progress, void *progress_arg,
									gptoss_error *err);
void		gptoss_engine_free(gptoss_engine *eng);

/*
 * Builds an engine over a model, tokenizer and backend the caller created
 * (a test's fake backend, for instance).  They are borrowed: the caller frees
 * them after gptoss_engine_free.  opts->model_path, device and backend are
 * not used (the backend's own opts give the slots and the context).
 */
gptoss_engine *gptoss_engine_create_from(gptoss_model *model, gptoss_tokenizer *tok,
										 gptoss_backend *backend,
										 const gptoss_engine_opts *opts, gptoss_error *err);

const gptoss_model *gptoss_engine_model(const gptoss_engine *eng);
const gptoss_tokenizer *gptoss_engine_tokenizer(const gptoss_engine *eng);
gptoss_backend *gptoss_engine_backend(gptoss_engine *eng);

/*
 * Renders a request's prompt with tok: raw mode encodes prompt as-is;
 * otherwise the harmony system message, optional developer instructions and
 * either one user message (prompt) or the chat messages (when messages !=
 * NULL), ending with <|start|>assistant.  *ids is malloc'ed.  A long
 * rendering polls intr (may be NULL) and stops with GPTOSS_ERR_INTERRUPTED
 * when it asks to.  Needs no engine: the PostgreSQL extension renders in the
 * calling session.
 */
int			gptoss_render_prompt(const gptoss_tokenizer *tok, const char *prompt,
								 const gptoss_chat_message *messages, int n_messages,
								 const gptoss_gen_params *p, const gptoss_interrupt *intr,
								 int32_t **ids, int *n_ids, gptoss_error *err);

/*
 * Queues a request over rendered prompt ids (copied).  Returns a request id
 * (>= 0) or -1 with err set: GPTOSS_ERR_TOO_LONG when the prompt leaves no
 * room to generate in the context, GPTOSS_ERR_INVALID for bad params.
 */
int64_t		gptoss_engine_submit(gptoss_engine *eng, const int32_t *ids, int n_ids,
								 const gptoss_gen_params *p, gptoss_error *err);

/*
 * Queues a classification: input is rendered like a generate prompt (raw, or
 * harmony with the params' instructions) and, in harmony mode, followed by
 * the opening of the final answer (<|channel|>final<|message|>, no
 * reasoning); each label's score is the log-probability of its tokens
 * followed by <|return|> (raw: by <|return|> too).  The labels are not
 * shown to the model: instructions should name them.  Empty or duplicate
 * labels are GPTOSS_ERR_INVALID.  Returns a request id or -1 with err.
 */
int64_t		gptoss_engine_submit_classify(gptoss_engine *eng, const char *input,
										  const char *const *labels, int n_labels,
										  const gptoss_gen_params *p, gptoss_error *err);

/*
 * Queues a score request over rendered prompt ids: for each continuation
 * conts[i][0, cont_lens[i]) (at least one token each), the sum of the
 * log-probabilities of its tokens after the prompt.  Ids are copied.
 */
int64_t		gptoss_engine_submit_score(gptoss_engine *eng, const int32_t *ids, int n_ids,
									   const int32_t *const *conts, const int *cont_lens,
									   int n_conts, const gptoss_gen_params *p, gptoss_error *err);

/*
 * Turns label scores (log-probabilities) into probabilities summing to 1
 * (probs may be NULL) and returns the index of the most probable label, the
 * first one on ties.
 */
int			gptoss_label_probs(const double *scores, int n, double *probs);

/*
 * Fair admission.  Each request has an owner key and a session key, both
 * opaque and 0 unless set here before the next step (the PostgreSQL worker
 * passes the role and the session that submitted it).  When requests wait
 * for a slot, the next free slot goes to the owner holding the fewest slots
 * (ties: the one admitted to longest ago), within it to the session chosen
 * the same way, and within the session to its oldest request; an owner
 * never holds more than max_seqs_per_owner slots (0: no cap, the default).
 * With one owner and one session, requests are admitted in arrival order.
 * Returns -1 for an unknown or already admitted request.
 */
int			gptoss_engine_set_owner(gptoss_engine *eng, int64_t id, uint64_t owner,
									uint64_t session);
void		gptoss_engine_set_max_seqs_per_owner(gptoss_engine *eng, int max_seqs_per_owner);

/*
 * The step limits in force: the prefill chunk and the step's token budget
 * after defaults and the budget's floor (room for every slot's decode token
 * plus one chunk).
 */
void		gptoss_engine_step_limits(const gptoss_engine *eng, int *prefill_chunk,
									  int *max_step_tokens);

/* Runs one batched step over all active requests; returns the number still active, or -1. */
int			gptoss_engine_step(gptoss_engine *eng, gptoss_error *err);

/* Requests queued or running. */
int			gptoss_engine_active(const gptoss_engine *eng);

/*
 * Progress and result of one request (valid until gptoss_engine_release).
 * Text is final as it appears: text[0, text_len) never changes while
 * text_restarts stays the same (the tail that could still become a stop
 * string is held back); when the model starts a new final message,
 * text_restarts grows and text holds only the new message.  Reasoning only
 * ever grows.  A caller streaming the text keeps how many bytes it sent and
 * the restart count it saw; nothing needs comparing.
 */
typedef struct gptoss_result
{
	gptoss_finish_reason finish_reason;		/* NONE while running */
	const char *text;			/* final channel text (raw: the continuation), NUL-terminated */
	size_t		text_len;		/* bytes of text, all final */
	int			text_restarts;	/* times text started over with a new final message */
	const char *reasoning;		/* analysis text when include_reasoning, else "" */
	size_t		reasoning_len;
	const int32_t *tokens;		/* generated ids */
	int			n_tokens;
	int			prompt_tokens;
	int			completion_tokens;
	int64_t		stop_checks;	/* stop string comparisons so far (bounded per token) */
	int64_t		submit_step;	/* engine steps run before the request was queued */
	int64_t		admit_step;		/* engine steps run before it took its place in the batch
								 * (it joined step admit_step + 1); -1 while it waits */
	const char *error;			/* message when finish_reason = ERROR */
	/* with logprobs: one entry per generated token, and which tokens make the returned text */
	const gptoss_token_logprobs *logprobs;	/* [n_tokens], or NULL */
	const int  *text_tokens;	/* [n_text_tokens] indexes into tokens, once finished */
	int			n_text_tokens;
	/* score requests: the log-probability of each continuation, once finished */
	const double *scores;		/* [n_scores], or NULL */
	int			n_scores;
} gptoss_result;

/* Fills res for request id; returns -1 for an unknown id. */
int			gptoss_engine_result(const gptoss_engine *eng, int64_t id, gptoss_result *res);

/* Forgets a finished (or cancels and forgets a running) request. */
void		gptoss_engine_release(gptoss_engine *eng, int64_t id);

typedef struct gptoss_engine_stats
{
	int64_t		requests_total;
	int64_t		requests_finished;
	int64_t		requests_cancelled;
	int64_t		requests_failed;
	int64_t		prompt_tokens;
	int64_t		completion_tokens;
	int64_t		steps;
	int64_t		step_sequences;	/* sum over steps of sequences in the step */
	int64_t		prefill_tokens; /* prompt tokens computed (not taken from the prefix cache) */
	int64_t		prefix_cache_hit_tokens;	/* prompt tokens taken from the prefix cache */
	double		prefill_tok_s;	/* prefill tokens per second of steps that prefilled, last 10 s */
	double		decode_tok_s;	/* decode tokens per second of steps that decoded, last 10 s */
	double		mean_batch_size_1min;	/* sequences per step over the last 60 s */
	int			active;			/* sequences in the batch */
	int			queued;			/* waiting for a slot */
	int64_t		masks;			/* token masks computed for constrained requests */
	double		mask_seconds;	/* CPU time (all threads) deciding what constrained requests may sample */
	double		mask_wall_seconds;	/* wall time of that, which the step waits for */
	int64_t		mask_violations;	/* sampled tokens a mask did not allow (replaced; 0 unless
									 * a backend ignores masks or the logits had no finite value) */
} gptoss_engine_stats;

void		gptoss_engine_get_stats(const gptoss_engine *eng, gptoss_engine_stats *st);

#endif							/* GPTOSS_ENGINE_H */
