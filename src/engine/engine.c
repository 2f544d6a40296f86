/*
 * engine.c: requests, the scheduler (continuous batching) and result text.
 *
 * The engine keeps every request it knows in one array sorted by id (ids only
 * grow, so appending keeps the order and lookups are a binary search).  A
 * request is QUEUED until a KV-cache slot is free and the cache has room for
 * its whole sequence (prompt + clamped max_tokens, reserved up front so a
 * running sequence never runs out of cache), RUNNING while it holds a slot,
 * and DONE once it has a finish reason.
 *
 * One call of gptoss_engine_step is one backend step over a batch built as:
 *   1. every running sequence that has finished its prompt feeds its last
 *      generated token (one decode token each, sampled);
 *   2. sequences still in their prompt, oldest first, feed their next chunk
 *      (prompts are cut at multiples of prefill_chunk) while it fits the
 *      step's token budget (max_step_tokens); only the chunk that completes
 *      a prompt samples.
 * New requests take free slots at the start of every step, so they join a
 * running batch without waiting for it to drain.
 *
 * Each sampled token goes through the stop checks (stop tokens, stop strings,
 * the length clamp) and into the request's text: in harmony mode the content
 * of the last `final` message (through the harmony parser), in raw mode the
 * decoded continuation without special tokens.  The visible text only ever
 * grows while a request runs: the tail that could still turn into a stop
 * string is held back until it cannot.
 *
 * Prefix cache (backends with a paged KV cache, backend.h): at admission a
 * request attaches the longest chain of registered pages matching its
 * prompt, cut to a multiple of share_tokens (the page size, or its least
 * common multiple with prefill_chunk when the backend's cached keys depend
 * on the chunking: then a shared prefix was computed in exactly the chunks
 * the request would have used) and leaving at least one prompt token to
 * compute; after each step it registers the full pages of its prompt that
 * lie within whole share_tokens units.  Reservations still count a shared
 * prefix once per request, so sharing saves computation, not admission
 * room; pages nobody references stay cached until the allocator evicts them.
 *
 * Score requests (classification) run in two phases.  The request prefills
 * its prompt up to the last page boundary before its last token (the
 * shared part) in a slot of its own, pins those pages and gives the slot
 * back; then one label sequence per continuation (an internal request,
 * queued like any other) attaches the pinned pages, prefills the rest of the
 * prompt and feeds the continuation one forced token per step, summing the
 * log-probabilities the backend reports for the forced tokens.  When the
 * last label sequence ends, the request finishes and unpins its pages.
 * Without a paged cache every label sequence computes the whole prompt.
 *
 * Constrained requests (a response_format, a reasoning budget) carry a
 * gptoss_constraint: before each step it says what the request may sample
 * (anything, one forced token, or a token mask that the backend applies
 * before sampling), and after the step it takes the token.  A forced token
 * replaces whatever the backend sampled, so forcing costs no mask.
 *
 * The engine is not thread-safe: one thread drives it.
 */
#include "engine.h"
#include "constraint.h"
#include "harmony.h"
#include "json_schema.h"
#include "step_rates.h"
#include "task_pool.h"

#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_MAX_SEQS 8
#define DEFAULT_MAX_CONTEXT 4096
/* Windows (wall-clock seconds) of the stats' recent token rates and recent mean batch size. */
#define RATE_WINDOW_S 10
#define BATCH_WINDOW_S 60

typedef enum request_state
{
	REQ_QUEUED,
	REQ_RUNNING,
	REQ_DONE
} request_state;

typedef enum request_kind
{
	REQ_GENERATE,				/* a generation (the caller's) */
	REQ_SCORE,					/* a score request (the caller's): prefix phase, then its labels */
	REQ_LABEL					/* internal: one continuation of a score request, forced */
} request_kind;

typedef struct request
{
	int64_t		id;
	request_kind kind;
	request_state state;
	int32_t    *prompt;			/* [n_prompt] rendered prompt ids */
	int			n_prompt;
	int			prefill_end;	/* prompt tokens computed in the slot: n_prompt, or a score request's shared part */
	int32_t    *tokens;			/* [max_new] generated (label: forced) ids */
	int			n_tokens;
	int			max_new;		/* max_tokens clamped to what the context leaves */
	int64_t		reserve;		/* KV tokens reserved from admission to the end */
	bool		reserved;		/* reserve is counted in kv_reserved */
	int			slot;			/* KV-cache slot while it holds one, else -1 */
	int			n_cached;		/* tokens in the slot's cache = position of the next fed token */
	bool		prefix_caching; /* attach and register shared prompt pages */
	bool		logprobs;
	int			top_logprobs;
	gptoss_token_logprobs *lp;	/* [max_new] with logprobs; label: [1] the last forced token's */
	int		   *lp_serial;		/* [max_new] with logprobs: final message serial of the token's text, or -1 */
	int		   *text_tokens;	/* [n_text_tokens] tokens whose text is returned, set when finished */
	int			n_text_tokens;
	/* REQ_SCORE */
	int			n_labels;
	int32_t   **label_ids;		/* [n_labels][label_len[i]] continuation tokens */
	int		   *label_len;		/* [n_labels] */
	double	   *scores;			/* [n_labels] summed log-probabilities */
	int			labels_done;
	int32_t    *fork_pages;		/* [n_fork_pages] pinned pages of the shared prefix */
	int			n_fork_pages;
	bool		forked;			/* label sequences created */
	int64_t		first_label_id; /* its label sequences have the n_labels ids from here */
	/* REQ_LABEL */
	struct request *parent;
	int			label;
	double		score;			/* log-probabilities of the forced tokens so far */
	gptoss_sampling sampling;
	char	  **stop;			/* [n_stop] owned copies of the stop strings */
	int			n_stop;
	bool		raw;
	bool		ignore_eos;
	int			min_tokens;		/* stop tokens count only from this many tokens on */
	bool		include_reasoning;
	gptoss_finish_reason finish;
	char	   *error;			/* message when finish = ERROR */
	gptoss_constraint *con;		/* response_format / reasoning budget, or NULL */
	char	   *con_error;		/* the constraint failed in this step: the request ends after it */
	gptoss_harmony_parser parser;	/* harmony mode: generated messages */
	gptoss_utf8_text raw_text;	/* raw mode: the continuation */
	int			final_serial;	/* parser.final_serial that text belongs to */
	int			text_restarts;	/* times text started over (a new final message) */
	gptoss_buffer text;			/* visible text, NUL-terminated */
	size_t		scanned;		/* source text bytes already searched for stop strings */
	int64_t		stop_checks;	/* stop string comparisons made (work counter) */
	/* fair admission (label sequences take their score request's keys) */
	uint64_t	owner;			/* gptoss_engine_set_owner; 0 by default */
	uint64_t	session;
	int64_t		submit_step;	/* stats.steps when it was queued */
	int64_t		admit_step;		/* stats.steps when it was admitted, -1 before */
	int64_t		admit_tick;		/* admission order (eng->admit_ticks), 0 before */
} request;

/* A group of queued requests in admit_requests: one session, or one owner's sessions. */
typedef struct admit_group
{
	uint64_t	key;
	int			running;		/* slots its requests hold */
	int64_t		last;			/* admit_tick of its latest admitted request (0: none) */
	int			first,
				end;			/* owner: its sessions; session: its candidates */
	int			next;			/* session: its next candidate */
} admit_group;

struct gptoss_engine
{
	gptoss_model *model;
	gptoss_tokenizer *tok;
	gptoss_backend *backend;
	bool		owns_parts;		/* free model and backend with the engine */
	bool		owns_tokenizer;	/* and the tokenizer (not one borrowed through opts) */
	int			max_seqs;
	int			max_context;
	int64_t		kv_capacity;	/* cache tokens over all slots */
	int64_t		kv_reserved;	/* sum over running requests of prompt + max_new */
	int			prefill_chunk;
	int			max_step_tokens;
	request   **reqs;			/* [n_reqs] every known request, ascending id */
	int			n_reqs;
	int			cap_reqs;
	request   **slots;			/* [max_seqs] running request of each slot, or NULL */
	gptoss_step_seq *batch;		/* [max_seqs] entries of the step being built */
	request   **batch_reqs;		/* [max_seqs] request of each entry */
	int32_t    *next_tokens;	/* [max_seqs] sampled ids of the step */
	int32_t    *forced;			/* [max_seqs] forced id of each entry, or -1 */
	gptoss_constraint_env *cenv;	/* built with the first constrained request */
	uint32_t   *masks;			/* [max_seqs][mask_words] token masks of the step's entries */
	int			mask_words;
	gptoss_task_pool *mask_pool;	/* computes the step's masks in parallel */
	gptoss_token_trie_scratch **mask_scratch;	/* [workers of mask_pool] */
	int		   *constrained;	/* [max_seqs] entries whose constraint is asked this step */
	double	   *mask_cpu;		/* [workers of mask_pool] CPU seconds of each worker's masks */
	int64_t		next_id;
	uint64_t	seed_counter;
	int			max_seqs_per_owner;	/* slots one owner may hold; 0 = max_seqs */
	int64_t		admit_ticks;	/* admissions so far */
	request   **admit_cands;	/* admit_requests scratch: queued requests, [cap_admit] */
	int		   *admit_pos;		/* their arrival positions */
	admit_group *admit_owners;
	admit_group *admit_sessions;
	int			cap_admit;
	int			share_tokens;	/* prefix-cache granularity; 0: the backend's cache is not paged */
	int32_t    *match_pages;	/* [max_context / page + 1] scratch of prefix lookups */
	bool		failed;			/* a backend step failed: the backend is unusable */
	char		failure[1024];
	gptoss_engine_stats stats;
	gptoss_step_rates rates;	/* recent steps' work, for the rates (step_rates.h) */
};

/* "stop", "length", "cancelled", "error" or "" */
const char *
gptoss_finish_reason_name(gptoss_finish_reason r)
{
	switch (r)
	{
		case GPTOSS_FINISH_STOP:
			return "stop";
		case GPTOSS_FINISH_LENGTH:
			return "length";
		case GPTOSS_FINISH_CANCELLED:
			return "cancelled";
		case GPTOSS_FINISH_ERROR:
			return "error";
		case GPTOSS_FINISH_NONE:
			break;
	}
	return "";
}

/* OpenAI defaults: max_tokens 256, temperature 1, top_p 1, top_k 0, medium effort. */
void
gptoss_gen_params_default(gptoss_gen_params *p)
{
	memset(p, 0, sizeof(*p));
	p->max_tokens = 256;
	p->temperature = 1.0f;
	p->top_p = 1.0f;
	p->top_k = 0;
	p->reasoning_effort = GPTOSS_REASONING_MEDIUM;
	p->prefix_caching = true;
}

/* ---------------------------------------------------------------------------
 * Creation
 */

/* Fills the engine's limits from the backend it drives. */
static int
engine_setup(gptoss_engine *eng, const gptoss_engine_opts *opts, gptoss_error *err)
{
	gptoss_backend_info info;

	eng->max_seqs = eng->backend->opts.max_seqs;
	eng->max_context = eng->backend->opts.max_context;
	gptoss_step_rates_init(&eng->rates);
	if (eng->max_seqs < 1 || eng->max_context < 2)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "backend has %d slots of %d tokens; need at least 1 slot of 2 tokens",
								  eng->max_seqs, eng->max_context);
	memset(&info, 0, sizeof(info));
	eng->backend->get_info(eng->backend, &info);
	eng->kv_capacity = info.kv_cache_tokens > 0 ? info.kv_cache_tokens
		: (int64_t) eng->max_seqs * eng->max_context;
	eng->prefill_chunk = opts->prefill_chunk > 0 ? opts->prefill_chunk : GPTOSS_DEFAULT_PREFILL_CHUNK;
	eng->max_step_tokens = opts->max_step_tokens > 0 ? opts->max_step_tokens : GPTOSS_DEFAULT_MAX_STEP_TOKENS;
	/*
	 * Room for every decode token plus at least one whole prefill chunk:
	 * prompts are only ever cut at multiples of prefill_chunk (see
	 * build_batch), so a chunk that never fits would never run.
	 */
	if (eng->max_step_tokens < eng->max_seqs + eng->prefill_chunk)
		eng->max_step_tokens = eng->max_seqs + eng->prefill_chunk;
	eng->slots = calloc((size_t) eng->max_seqs, sizeof(*eng->slots));
	eng->batch = calloc((size_t) eng->max_seqs, sizeof(*eng->batch));
	eng->batch_reqs = calloc((size_t) eng->max_seqs, sizeof(*eng->batch_reqs));
	eng->next_tokens = calloc((size_t) eng->max_seqs, sizeof(*eng->next_tokens));
	eng->forced = calloc((size_t) eng->max_seqs, sizeof(*eng->forced));
	if (!eng->slots || !eng->batch || !eng->batch_reqs || !eng->next_tokens || !eng->forced)
		return gptoss_errorf(err, "out of memory for the scheduler (%d slots)", eng->max_seqs);
	if (eng->backend->kv_pages)
	{
		int			page = gptoss_kv_pages_page_tokens(eng->backend->kv_pages);
		int			a = page,
					b = eng->prefill_chunk;

		/* least common multiple of the page and the chunk, when chunking matters */
		while (b != 0)
		{
			int			t = a % b;

			a = b;
			b = t;
		}
		eng->share_tokens = eng->backend->kv_chunk_invariant ? page : page / a * eng->prefill_chunk;
		eng->match_pages = malloc(((size_t) eng->max_context / page + 1) * sizeof(int32_t));
		if (!eng->match_pages)
			return gptoss_errorf(err, "out of memory for the prefix cache");
	}
	return 0;
}

/* Builds an engine over existing parts; they are borrowed (see engine.h). */
gptoss_engine *
gptoss_engine_create_from(gptoss_model *model, gptoss_tokenizer *tok, gptoss_backend *backend,
						  const gptoss_engine_opts *opts, gptoss_error *err)
{
	gptoss_engine *eng;
	gptoss_engine_opts defaults;

	if (model == NULL || tok == NULL || backend == NULL)
	{
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "engine needs a model, a tokenizer and a backend");
		return NULL;
	}
	if (opts == NULL)
	{
		memset(&defaults, 0, sizeof(defaults));
		opts = &defaults;
	}
	eng = calloc(1, sizeof(*eng));
	if (eng == NULL)
	{
		gptoss_errorf(err, "out of memory creating the engine");
		return NULL;
	}
	eng->model = model;
	eng->tok = tok;
	eng->backend = backend;
	if (engine_setup(eng, opts, err) < 0)
	{
		gptoss_engine_free(eng);
		return NULL;
	}
	return eng;
}

/* Loads the model, the tokenizer and the backend, then builds the engine. */
gptoss_engine *
gptoss_engine_create(const gptoss_engine_opts *opts, gptoss_progress_fn progress,
					 void *progress_arg, gptoss_error *err)
{
	gptoss_model *model = NULL;
	gptoss_tokenizer *tok = NULL;
	gptoss_backend *backend = NULL;
	gptoss_backend_opts bopts;
	gptoss_engine *eng;
	char	   *tok_path;
	size_t		path_len;
	int			max_pos;

	if (opts == NULL || opts->model_path == NULL || opts->model_path[0] == '\0')
	{
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "model_path: no model directory given");
		return NULL;
	}
	if (opts->prefill_chunk < 0 || opts->max_step_tokens < 0)
	{
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "%s: must be >= 0",
						   opts->prefill_chunk < 0 ? "prefill_chunk" : "max_step_tokens");
		return NULL;
	}
	if (opts->backend.max_seqs < 0 || opts->backend.max_context < 0)
	{
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "%s: must be >= 0",
						   opts->backend.max_seqs < 0 ? "max_seqs" : "max_context");
		return NULL;
	}

	/* A missing directory is reported as such, not as a missing tokenizer.json. */
	if (gptoss_model_dir_check(opts->model_path, err) < 0)
		return NULL;
	if (opts->tokenizer != NULL)
		tok = (gptoss_tokenizer *) opts->tokenizer;
	else
	{
		path_len = strlen(opts->model_path) + sizeof("/tokenizer.json");
		tok_path = malloc(path_len);
		if (tok_path == NULL)
		{
			gptoss_errorf(err, "out of memory");
			return NULL;
		}
		snprintf(tok_path, path_len, "%s/tokenizer.json", opts->model_path);
		tok = gptoss_tokenizer_load(tok_path, err);
		free(tok_path);
		if (tok == NULL)
			return NULL;
	}

	if (gptoss_model_load(opts->model_path, &model, progress, progress_arg, err) < 0)
	{
		if (opts->tokenizer == NULL)
			gptoss_tokenizer_free(tok);
		return NULL;
	}

	/* Defaults: 8 slots; a context of 4096 tokens, never past the model's positions. */
	bopts = opts->backend;
	max_pos = model->config.max_position_embeddings;
	if (bopts.max_seqs == 0)
		bopts.max_seqs = DEFAULT_MAX_SEQS;
	if (bopts.max_context == 0)
		bopts.max_context = DEFAULT_MAX_CONTEXT;
	if (max_pos > 0 && bopts.max_context > max_pos)
		bopts.max_context = max_pos;

	backend = gptoss_backend_create(opts->device ? opts->device : "auto", model, &bopts,
									progress, progress_arg, err);
	if (backend == NULL)
	{
		gptoss_model_free(model);
		if (opts->tokenizer == NULL)
			gptoss_tokenizer_free(tok);
		return NULL;
	}
	eng = gptoss_engine_create_from(model, tok, backend, opts, err);
	if (eng == NULL)
	{
		backend->free(backend);
		gptoss_model_free(model);
		if (opts->tokenizer == NULL)
			gptoss_tokenizer_free(tok);
		return NULL;
	}
	eng->owns_parts = true;
	eng->owns_tokenizer = opts->tokenizer == NULL;
	return eng;
}

/* Frees one request and everything it owns. */
static void
request_free(request *r)
{
	if (r == NULL)
		return;
	free(r->prompt);
	free(r->tokens);
	for (int i = 0; i < r->n_stop; i++)
		free(r->stop[i]);
	free(r->stop);
	free(r->error);
	gptoss_buffer_free(&r->text);
	free(r->lp);
	free(r->lp_serial);
	free(r->text_tokens);
	for (int i = 0; i < r->n_labels; i++)
		free(r->label_ids[i]);
	free(r->label_ids);
	free(r->label_len);
	free(r->scores);
	free(r->fork_pages);
	gptoss_constraint_free(r->con);
	free(r->con_error);
	gptoss_harmony_parser_free(&r->parser);
	gptoss_utf8_text_free(&r->raw_text);
	free(r);
}

/* Frees the engine, its requests and (when it loaded them) model, tokenizer and backend. */
void
gptoss_engine_free(gptoss_engine *eng)
{
	if (eng == NULL)
		return;
	for (int i = 0; i < eng->n_reqs; i++)
		request_free(eng->reqs[i]);
	free(eng->reqs);
	free(eng->admit_cands);
	free(eng->admit_pos);
	free(eng->admit_owners);
	free(eng->admit_sessions);
	free(eng->slots);
	free(eng->batch);
	free(eng->batch_reqs);
	free(eng->next_tokens);
	free(eng->match_pages);
	free(eng->forced);
	free(eng->masks);
	free(eng->constrained);
	if (eng->mask_pool != NULL)
	{
		for (int i = 0; i < gptoss_task_pool_workers(eng->mask_pool); i++)
			gptoss_token_trie_scratch_free(eng->mask_scratch[i]);
		gptoss_task_pool_free(eng->mask_pool);
	}
	free(eng->mask_scratch);
	free(eng->mask_cpu);
	gptoss_constraint_env_free(eng->cenv);
	if (eng->owns_parts)
	{
		eng->backend->free(eng->backend);
		gptoss_model_free(eng->model);
	}
	if (eng->owns_tokenizer)
		gptoss_tokenizer_free(eng->tok);
	free(eng);
}

const gptoss_model *
gptoss_engine_model(const gptoss_engine *eng)
{
	return eng->model;
}

const gptoss_tokenizer *
gptoss_engine_tokenizer(const gptoss_engine *eng)
{
	return eng->tok;
}

gptoss_backend *
gptoss_engine_backend(gptoss_engine *eng)
{
	return eng->backend;
}

/* ---------------------------------------------------------------------------
 * Rendering and submission
 */

/* Renders a prompt in raw or harmony form (see engine.h). */
int
gptoss_render_prompt(const gptoss_tokenizer *tok, const char *prompt,
					 const gptoss_chat_message *messages, int n_messages,
					 const gptoss_gen_params *p, const gptoss_interrupt *intr,
					 int32_t **ids, int *n_ids, gptoss_error *err)
{
	gptoss_chat_message user;
	int			n;

	*ids = NULL;
	*n_ids = 0;
	if (p == NULL)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "no generation parameters");
	if (p->raw)
	{
		if (messages != NULL)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
									  "raw: raw mode continues a prompt text, not chat messages");
		if (prompt == NULL)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "prompt: missing");
		n = gptoss_tokenizer_encode_interruptible(tok, prompt, strlen(prompt), intr, ids, err);
		if (n < 0)
			return -1;
		*n_ids = n;
		return 0;
	}
	if (messages == NULL)
	{
		if (prompt == NULL)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "prompt: missing");
		user.role = "user";
		user.content = prompt;
		messages = &user;
		n_messages = 1;
	}
	if (p->response_format != NULL)
	{
		/* the schema goes into the developer message, as harmony shows response formats */
		gptoss_json_grammar *g = NULL;
		char	   *section = NULL;
		int			rc;

		if (gptoss_response_format_parse(p->response_format, strlen(p->response_format), &g,
										 &section, err) < 0)
			return -1;
		gptoss_json_grammar_free(g);
		rc = gptoss_harmony_render_with_format(tok, messages, n_messages, p->reasoning_effort,
											   p->instructions, p->current_date, section, intr,
											   ids, n_ids, err);
		free(section);
		return rc;
	}
	return gptoss_harmony_render(tok, messages, n_messages, p->reasoning_effort,
								 p->instructions, p->current_date, intr, ids, n_ids, err);
}

/*
 * What constrained decoding needs, built with the first constrained request:
 * the token trie, mask buffers, and a pool of threads (one scratch each) that
 * computes the step's masks in parallel.
 */
static int
start_constraints(gptoss_engine *eng, gptoss_error *err)
{
	int			workers = gptoss_num_threads();

	eng->cenv = gptoss_constraint_env_build(eng->tok, eng->model->config.vocab_size, err);
	if (eng->cenv == NULL)
		return -1;
	eng->mask_words = gptoss_constraint_env_mask_words(eng->cenv);
	eng->masks = malloc((size_t) eng->max_seqs * eng->mask_words * sizeof(uint32_t));
	eng->constrained = malloc((size_t) eng->max_seqs * sizeof(int));
	if (workers > eng->max_seqs)
		workers = eng->max_seqs;
	if (workers > 16)
		workers = 16;
	eng->mask_pool = gptoss_task_pool_create(workers < 1 ? 1 : workers, err);
	if (eng->masks == NULL || eng->constrained == NULL || eng->mask_pool == NULL)
		return gptoss_errorf(err, "out of memory for token masks");
	workers = gptoss_task_pool_workers(eng->mask_pool);
	eng->mask_scratch = calloc((size_t) workers, sizeof(*eng->mask_scratch));
	eng->mask_cpu = calloc((size_t) workers, sizeof(double));
	if (eng->mask_scratch == NULL || eng->mask_cpu == NULL)
		return gptoss_errorf(err, "out of memory for token masks");
	for (int i = 0; i < workers; i++)
		if ((eng->mask_scratch[i] = gptoss_constraint_env_scratch(eng->cenv)) == NULL)
			return gptoss_errorf(err, "out of memory for token masks");
	return 0;
}

/*
 * The constraint of a request: its response_format grammar and its reasoning
 * budget (default: half of max_tokens with a grammar, else none); NULL in
 * *con when it has neither.
 */
static int
make_constraint(gptoss_engine *eng, const gptoss_gen_params *p, int max_new,
				gptoss_constraint **con, gptoss_error *err)
{
	gptoss_json_grammar *g = NULL;
	int			budget;

	*con = NULL;
	if (p->response_format != NULL &&
		gptoss_response_format_parse(p->response_format, strlen(p->response_format), &g, NULL, err) < 0)
		return -1;
	budget = p->has_max_reasoning_tokens ? p->max_reasoning_tokens : g != NULL ? p->max_tokens / 2 : -1;
	if (p->raw)
		budget = -1;			/* no channels in raw mode */
	if (g == NULL && budget < 0)
		return 0;
	if (eng->cenv == NULL && start_constraints(eng, err) < 0)
	{
		gptoss_json_grammar_free(g);
		return -1;
	}
	*con = gptoss_constraint_create(eng->cenv, g, p->raw, budget, p->max_tokens, max_new, err);
	return *con ? 0 : -1;
}

/* A seed for requests without one: /dev/urandom, else the clock mixed with a counter. */
static uint64_t
fresh_seed(gptoss_engine *eng)
{
	uint64_t	seed = 0;
	int			fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	bool		ok = false;

	if (fd >= 0)
	{
		ok = read(fd, &seed, sizeof(seed)) == (ssize_t) sizeof(seed);
		close(fd);
	}
	if (!ok)
	{
		double		t = gptoss_now();
		uint64_t	bits;

		memcpy(&bits, &t, sizeof(bits));
		seed = gptoss_mix64(bits ^ ((uint64_t) getpid() << 32));
	}
	return gptoss_mix64(seed ^ gptoss_mix64(++eng->seed_counter));
}

/* Adds r to the id-ordered request array. */
static int
append_request(gptoss_engine *eng, request *r, gptoss_error *err)
{
	if (eng->n_reqs == eng->cap_reqs)
	{
		int			cap = eng->cap_reqs ? eng->cap_reqs * 2 : 64;
		request   **reqs = realloc(eng->reqs, (size_t) cap * sizeof(*reqs));

		if (reqs == NULL)
			return gptoss_errorf(err, "out of memory queueing a request");
		eng->reqs = reqs;
		eng->cap_reqs = cap;
	}
	eng->reqs[eng->n_reqs++] = r;
	return 0;
}

/*
 * Checks a prompt's ids and returns the room a sequence has (the context,
 * and the whole KV cache for one sequence), or -1 with err.
 */
static int64_t
check_prompt(const gptoss_engine *eng, const int32_t *ids, int n_ids, gptoss_error *err)
{
	int			vocab = eng->model->config.vocab_size;
	int64_t		room;

	if (n_ids < 1 || ids == NULL)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "prompt: renders to no tokens");
	for (int i = 0; i < n_ids; i++)
		if (ids[i] < 0 || ids[i] >= vocab)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
									  "prompt: token %d at index %d is outside the model vocabulary (%d)",
									  ids[i], i, vocab);
	room = eng->max_context;
	if (room > eng->kv_capacity)
		room = eng->kv_capacity;
	if (n_ids >= room)
		return gptoss_errorf_code(err, GPTOSS_ERR_TOO_LONG,
								  "prompt is %d tokens but the context holds %lld tokens: no room to generate",
								  n_ids, (long long) room);
	return room;
}

/* A new queued request of kind over a copy of ids, room for max_new tokens; NULL when out of memory. */
static request *
new_request(request_kind kind, const int32_t *ids, int n_ids, int max_new)
{
	request    *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return NULL;
	r->kind = kind;
	r->state = REQ_QUEUED;
	r->slot = -1;
	r->admit_step = -1;
	r->n_prompt = n_ids;
	r->prefill_end = n_ids;
	r->max_new = max_new;
	r->reserve = (int64_t) n_ids + max_new;
	gptoss_harmony_parser_init(&r->parser);
	r->prompt = malloc((size_t) n_ids * sizeof(int32_t));
	r->tokens = malloc((size_t) (max_new > 0 ? max_new : 1) * sizeof(int32_t));
	if (!r->prompt || !r->tokens || gptoss_buffer_reserve(&r->text, 0, NULL) < 0)
	{
		request_free(r);
		return NULL;
	}
	memcpy(r->prompt, ids, (size_t) n_ids * sizeof(int32_t));
	return r;
}

/* Gives r the next id and queues it; counts it in the stats unless it is internal. */
static int64_t
queue_request(gptoss_engine *eng, request *r, gptoss_error *err)
{
	r->id = eng->next_id;
	r->submit_step = eng->stats.steps;
	if (append_request(eng, r, err) < 0)
	{
		request_free(r);
		return -1;
	}
	eng->next_id++;
	if (r->kind != REQ_LABEL)
	{
		eng->stats.requests_total++;
		eng->stats.prompt_tokens += r->n_prompt;
	}
	return r->id;
}

/* Queues a request over rendered prompt ids. */
int64_t
gptoss_engine_submit(gptoss_engine *eng, const int32_t *ids, int n_ids,
					 const gptoss_gen_params *p, gptoss_error *err)
{
	request    *r;
	int64_t		room;
	int			max_new;

	if (eng->failed)
		return gptoss_errorf(err, "engine stopped after a backend failure: %s", eng->failure);
	if (gptoss_gen_params_check(p, err) < 0)
		return -1;
	room = check_prompt(eng, ids, n_ids, err);
	if (room < 0)
		return -1;
	max_new = p->max_tokens;
	if (max_new > room - n_ids)
		max_new = (int) (room - n_ids);
	r = new_request(REQ_GENERATE, ids, n_ids, max_new);
	if (r == NULL)
		goto oom;
	r->sampling.temperature = p->temperature;
	r->sampling.top_p = p->top_p;
	r->sampling.top_k = p->top_k;
	r->sampling.seed = p->has_seed ? p->seed : fresh_seed(eng);
	r->raw = p->raw;
	r->ignore_eos = p->ignore_eos;
	r->min_tokens = p->min_tokens;
	r->include_reasoning = p->include_reasoning;
	r->prefix_caching = p->prefix_caching;
	r->logprobs = p->logprobs;
	r->top_logprobs = p->top_logprobs;
	if (r->logprobs)
	{
		r->lp = calloc((size_t) max_new, sizeof(*r->lp));
		r->lp_serial = calloc((size_t) max_new, sizeof(int));
		if (!r->lp || !r->lp_serial)
			goto oom;
	}
	if (make_constraint(eng, p, r->max_new, &r->con, err) < 0)
	{
		request_free(r);
		return -1;
	}
	r->stop = p->n_stop > 0 ? calloc((size_t) p->n_stop, sizeof(char *)) : NULL;
	if (p->n_stop > 0 && !r->stop)
		goto oom;
	for (int i = 0; i < p->n_stop; i++)
	{
		r->stop[i] = strdup(p->stop[i]);
		if (r->stop[i] == NULL)
			goto oom;
		r->n_stop = i + 1;
	}
	return queue_request(eng, r, err);

oom:
	request_free(r);
	return gptoss_errorf(err, "out of memory queueing a request of %d prompt tokens", n_ids);
}

/* Queues a score request: a prefix phase, then one label sequence per continuation. */
int64_t
gptoss_engine_submit_score(gptoss_engine *eng, const int32_t *ids, int n_ids,
						   const int32_t *const *conts, const int *cont_lens, int n_conts,
						   const gptoss_gen_params *p, gptoss_error *err)
{
	request    *r;
	int64_t		room;
	int			vocab = eng->model->config.vocab_size;

	if (eng->failed)
		return gptoss_errorf(err, "engine stopped after a backend failure: %s", eng->failure);
	if (gptoss_gen_params_check(p, err) < 0)
		return -1;
	if (p->logprobs)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "logprobs: not supported when scoring labels");
	if (p->response_format != NULL)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "response_format: not supported when scoring labels");
	room = check_prompt(eng, ids, n_ids, err);
	if (room < 0)
		return -1;
	if (n_conts < 1 || !conts || !cont_lens)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "labels: at least one label is needed");
	for (int i = 0; i < n_conts; i++)
	{
		if (cont_lens[i] < 1 || !conts[i])
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "labels: label %d has no tokens", i + 1);
		for (int j = 0; j < cont_lens[i]; j++)
			if (conts[i][j] < 0 || conts[i][j] >= vocab)
				return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
										  "labels: token %d of label %d is outside the model vocabulary (%d)",
										  conts[i][j], i + 1, vocab);
		/* the label sequence holds the prompt and all but the last forced token */
		if (n_ids + cont_lens[i] - 1 >= room)
			return gptoss_errorf_code(err, GPTOSS_ERR_TOO_LONG,
									  "prompt and label %d are %d tokens but the context holds %lld tokens",
									  i + 1, n_ids + cont_lens[i], (long long) room);
	}
	r = new_request(REQ_SCORE, ids, n_ids, 0);
	if (r == NULL)
		goto oom;
	r->prefix_caching = p->prefix_caching;
	/* the shared part: whole pages before the last prompt token, which each label feeds itself */
	if (eng->backend->kv_pages)
	{
		int			page = gptoss_kv_pages_page_tokens(eng->backend->kv_pages);

		r->prefill_end = (n_ids - 1) / page * page;
	}
	else
		r->prefill_end = 0;
	r->reserve = r->prefill_end;
	r->n_labels = n_conts;
	r->label_ids = calloc((size_t) n_conts, sizeof(int32_t *));
	r->label_len = calloc((size_t) n_conts, sizeof(int));
	r->scores = calloc((size_t) n_conts, sizeof(double));
	if (!r->label_ids || !r->label_len || !r->scores)
		goto oom;
	for (int i = 0; i < n_conts; i++)
	{
		r->label_ids[i] = malloc((size_t) cont_lens[i] * sizeof(int32_t));
		if (!r->label_ids[i])
			goto oom;
		memcpy(r->label_ids[i], conts[i], (size_t) cont_lens[i] * sizeof(int32_t));
		r->label_len[i] = cont_lens[i];
	}
	return queue_request(eng, r, err);

oom:
	request_free(r);
	return gptoss_errorf(err, "out of memory queueing a score request of %d labels", n_conts);
}

/* Renders, tokenizes and queues a classification (see engine.h). */
int64_t
gptoss_engine_submit_classify(gptoss_engine *eng, const char *input, const char *const *labels,
							  int n_labels, const gptoss_gen_params *p, gptoss_error *err)
{
	static const char final_channel[] = "final";
	int32_t    *ids = NULL;
	int			n_ids = 0;
	int32_t   **conts = NULL;
	int		   *lens = NULL;
	int32_t    *channel = NULL;
	int64_t		id = -1;

	if (n_labels < 1 || labels == NULL)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "labels: at least one label is needed");
	for (int i = 0; i < n_labels; i++)
	{
		if (labels[i] == NULL || labels[i][0] == '\0')
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "labels: label %d is empty", i + 1);
		for (int j = 0; j < i; j++)
			if (strcmp(labels[i], labels[j]) == 0)
				return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "labels: \"%s\" appears twice",
										  labels[i]);
	}
	if (gptoss_render_prompt(eng->tok, input, NULL, 0, p, NULL, &ids, &n_ids, err) < 0)
		return -1;
	if (!p->raw)
	{
		/* the answer opens in the final channel: <|channel|>final<|message|> */
		int			n_channel = gptoss_tokenizer_encode(eng->tok, final_channel, strlen(final_channel),
														&channel, err);
		int32_t    *grown;

		if (n_channel < 0)
			goto out;
		grown = realloc(ids, (size_t) (n_ids + n_channel + 2) * sizeof(int32_t));
		if (!grown)
		{
			gptoss_errorf(err, "out of memory rendering a classification");
			goto out;
		}
		ids = grown;
		ids[n_ids++] = GPTOSS_TOK_CHANNEL;
		memcpy(ids + n_ids, channel, (size_t) n_channel * sizeof(int32_t));
		n_ids += n_channel;
		ids[n_ids++] = GPTOSS_TOK_MESSAGE;
	}
	conts = calloc((size_t) n_labels, sizeof(int32_t *));
	lens = calloc((size_t) n_labels, sizeof(int));
	if (!conts || !lens)
	{
		gptoss_errorf(err, "out of memory rendering a classification");
		goto out;
	}
	for (int i = 0; i < n_labels; i++)
	{
		int32_t    *label;
		int			n = gptoss_tokenizer_encode(eng->tok, labels[i], strlen(labels[i]), &label, err);

		if (n < 0)
			goto out;
		conts[i] = realloc(label, (size_t) (n + 1) * sizeof(int32_t));
		if (!conts[i])
		{
			free(label);
			gptoss_errorf(err, "out of memory rendering a classification");
			goto out;
		}
		conts[i][n] = GPTOSS_TOK_RETURN;
		lens[i] = n + 1;
	}
	id = gptoss_engine_submit_score(eng, ids, n_ids, (const int32_t *const *) conts, lens, n_labels,
									p, err);
out:
	if (conts)
		for (int i = 0; i < n_labels; i++)
			free(conts[i]);
	free(conts);
	free(lens);
	free(channel);
	free(ids);
	return id;
}

/* Probabilities of the labels (softmax of their scores) and the index of the best, first on ties. */
int
gptoss_label_probs(const double *scores, int n, double *probs)
{
	int			best = 0;
	double		sum = 0.0;

	for (int i = 1; i < n; i++)
		if (scores[i] > scores[best])
			best = i;
	if (probs == NULL)
		return best;
	for (int i = 0; i < n; i++)
	{
		probs[i] = isfinite(scores[best]) ? exp(scores[i] - scores[best]) : (i == best ? 1.0 : 0.0);
		sum += probs[i];
	}
	for (int i = 0; i < n; i++)
		probs[i] /= sum;
	return best;
}

/* Index of request id in eng->reqs, or -1. */
static int
find_request(const gptoss_engine *eng, int64_t id)
{
	int			lo = 0,
				hi = eng->n_reqs - 1;

	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;
		int64_t		mid_id = eng->reqs[mid]->id;

		if (mid_id == id)
			return mid;
		if (mid_id < id)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return -1;
}

/* ---------------------------------------------------------------------------
 * Text, stop checks and finishing
 */

/* Longest stop string length. */
static size_t
max_stop_len(const request *r)
{
	size_t		m = 0;

	for (int i = 0; i < r->n_stop; i++)
	{
		size_t		n = strlen(r->stop[i]);

		if (n > m)
			m = n;
	}
	return m;
}

/* Length of the longest suffix of s[0, len) that is a proper prefix of a stop string. */
static size_t
stop_holdback(request *r, const char *s, size_t len)
{
	size_t		hold = 0;

	for (int i = 0; i < r->n_stop; i++)
	{
		size_t		n = strlen(r->stop[i]);
		size_t		k = n - 1 < len ? n - 1 : len;

		for (; k > hold; k--, r->stop_checks++)
			if (memcmp(s + len - k, r->stop[i], k) == 0)
			{
				hold = k;
				break;
			}
	}
	return hold;
}

/*
 * Brings the visible text up to date with the source text (final channel or
 * raw continuation).  Returns 1 when a stop string was found (the visible
 * text then ends right before it), 0 otherwise, -1 on failure.  With
 * complete set nothing is held back.
 *
 * Only a tail window is ever compared: the bytes added since the last call
 * plus the longest stop string less one (a match may straddle them), and
 * for the hold-back the last longest - 1 bytes.  A token's matching work is
 * therefore bounded by the stop strings (at most GPTOSS_MAX_STOP of
 * GPTOSS_MAX_STOP_LEN bytes), whatever the length of the text so far.
 */
static int
update_text(request *r, bool complete, gptoss_error *err)
{
	const gptoss_utf8_text *src = r->raw ? &r->raw_text : &r->parser.final;
	const char *s = src->text.data ? src->text.data : "";
	size_t		len = src->text.len;
	size_t		visible = len;
	size_t		longest = max_stop_len(r);
	size_t		from;
	bool		stopped = false;

	if (!r->raw && r->final_serial != r->parser.final_serial)
	{
		/* A new final message began: the answer is now its content. */
		r->final_serial = r->parser.final_serial;
		if (r->text.len > 0)
			r->text_restarts++;
		gptoss_buffer_reset(&r->text);
		r->scanned = 0;
	}
	if (longest > 0)
	{
		from = r->scanned + 1 > longest ? r->scanned + 1 - longest : 0;
		for (int i = 0; i < r->n_stop; i++)
		{
			size_t		n = strlen(r->stop[i]);

			for (size_t at = from; at + n <= len && at < visible; at++, r->stop_checks++)
				if (memcmp(s + at, r->stop[i], n) == 0)
				{
					visible = at;
					stopped = true;
					break;
				}
		}
		r->scanned = len;
		if (!stopped && !complete)
			visible = len - stop_holdback(r, s, len);
	}
	if (visible > r->text.len &&
		gptoss_buffer_append(&r->text, s + r->text.len, visible - r->text.len, err) < 0)
		return -1;
	return stopped ? 1 : 0;
}

/* Takes r out of its slot and forgets its cache (unless the backend is broken). */
static void
leave_slot(gptoss_engine *eng, request *r)
{
	if (r->slot < 0)
		return;
	if (!eng->failed)
		eng->backend->release(eng->backend, r->slot);
	eng->slots[r->slot] = NULL;
	r->slot = -1;
}

/* Gives back r's KV reservation. */
static void
unreserve(gptoss_engine *eng, request *r)
{
	if (r->reserved)
		eng->kv_reserved -= r->reserve;
	r->reserved = false;
}

/*
 * Records which generated tokens make the returned text (with logprobs):
 * the tokens of the last final message (raw: every ordinary token), up to
 * the end of the visible text.
 */
static int
collect_text_tokens(gptoss_engine *eng, request *r, gptoss_error *err)
{
	size_t		at = 0;

	r->text_tokens = malloc((size_t) (r->n_tokens > 0 ? r->n_tokens : 1) * sizeof(int));
	if (!r->text_tokens)
		return gptoss_errorf(err, "out of memory collecting log-probabilities");
	r->n_text_tokens = 0;
	for (int i = 0; i < r->n_tokens && at < r->text.len; i++)
	{
		size_t		n = 0;

		if (r->lp_serial[i] != r->final_serial)
			continue;
		gptoss_tokenizer_token_bytes(eng->tok, r->tokens[i], &n);
		r->text_tokens[r->n_text_tokens++] = i;
		at += n;
	}
	return 0;
}

static void finish_score_labels(gptoss_engine *eng, request *r, gptoss_finish_reason reason);

/*
 * Marks r done with reason and frees its slot.  With complete_text the held
 * back tail becomes visible (and unfinished characters U+FFFD); a request cut
 * by a stop string keeps its text as it is.
 */
static int
finish_request(gptoss_engine *eng, request *r, gptoss_finish_reason reason,
			   bool complete_text, gptoss_error *err)
{
	int			rc = 0;

	if (r->state == REQ_DONE)
		return 0;
	leave_slot(eng, r);
	unreserve(eng, r);
	r->state = REQ_DONE;
	r->finish = reason;
	if (r->kind == REQ_SCORE)
		finish_score_labels(eng, r, reason);
	if (r->kind == REQ_LABEL)
	{
		/* a label sequence reports to its score request, and its failure is the request's */
		request    *parent = r->parent;

		if (reason == GPTOSS_FINISH_STOP)
		{
			parent->scores[r->label] = r->score;
			if (++parent->labels_done == parent->n_labels)
				return finish_request(eng, parent, GPTOSS_FINISH_STOP, false, err);
		}
		else if (reason == GPTOSS_FINISH_ERROR && parent->state != REQ_DONE)
		{
			free(parent->error);
			parent->error = r->error ? strdup(r->error) : NULL;
			finish_request(eng, parent, GPTOSS_FINISH_ERROR, false, NULL);
		}
		return 0;
	}
	switch (reason)
	{
		case GPTOSS_FINISH_STOP:
		case GPTOSS_FINISH_LENGTH:
			eng->stats.requests_finished++;
			break;
		case GPTOSS_FINISH_CANCELLED:
			eng->stats.requests_cancelled++;
			break;
		case GPTOSS_FINISH_ERROR:
		case GPTOSS_FINISH_NONE:
			eng->stats.requests_failed++;
			break;
	}
	if (complete_text)
	{
		if (r->raw)
			rc = gptoss_utf8_text_flush(&r->raw_text, err);
		else
			rc = gptoss_harmony_parser_finish(&r->parser, err);
		if (rc == 0)
			rc = update_text(r, true, err) < 0 ? -1 : 0;
	}
	if (rc == 0 && r->logprobs && (reason == GPTOSS_FINISH_STOP || reason == GPTOSS_FINISH_LENGTH))
		rc = collect_text_tokens(eng, r, err);
	return rc;
}

/* Ends a score request's label sequences still queued or running, and unpins its shared pages. */
static void
finish_score_labels(gptoss_engine *eng, request *r, gptoss_finish_reason reason)
{
	for (int i = 0; i < eng->n_reqs; i++)
	{
		request    *l = eng->reqs[i];

		if (l->kind == REQ_LABEL && l->parent == r && l->state != REQ_DONE)
		{
			leave_slot(eng, l);
			unreserve(eng, l);
			l->state = REQ_DONE;
			l->finish = reason == GPTOSS_FINISH_STOP ? GPTOSS_FINISH_CANCELLED : reason;
		}
	}
	if (r->n_fork_pages > 0 && !eng->failed)
		gptoss_kv_pages_unpin(eng->backend->kv_pages, r->fork_pages, r->n_fork_pages);
	r->n_fork_pages = 0;
}

/* Ends r with an error message. */
static void
fail_request(gptoss_engine *eng, request *r, const char *msg)
{
	if (r->state == REQ_DONE)
		return;
	free(r->error);
	r->error = strdup(msg);
	finish_request(eng, r, GPTOSS_FINISH_ERROR, false, NULL);
}

/* True when id ends generation for r (before the ignore_eos check). */
static bool
is_stop_token(const request *r, int32_t id)
{
	if (r->raw)
		return id == GPTOSS_TOK_RETURN || id == GPTOSS_TOK_ENDOFTEXT;
	return gptoss_harmony_is_stop_token(id);
}

/* Takes one sampled token of r: text, stop token, stop strings, length. */
static int
accept_token(gptoss_engine *eng, request *r, int32_t id, gptoss_error *err)
{
	int			stopped;

	r->tokens[r->n_tokens++] = id;
	eng->stats.completion_tokens++;
	if (r->raw)
	{
		size_t		n = 0;
		const char *bytes = NULL;

		if (!gptoss_tokenizer_is_special(eng->tok, id))
			bytes = gptoss_tokenizer_token_bytes(eng->tok, id, &n);
		if (bytes != NULL && gptoss_utf8_text_push(&r->raw_text, bytes, n, err) < 0)
			return -1;
		if (r->logprobs)
			r->lp_serial[r->n_tokens - 1] = bytes != NULL ? r->final_serial : -1;
	}
	else
	{
		if (gptoss_harmony_parser_push(&r->parser, eng->tok, id, err) < 0)
			return -1;
		/* a content token of a final message counts for the text of that message */
		if (r->logprobs)
			r->lp_serial[r->n_tokens - 1] =
				r->parser.in_final && r->parser.state == GPTOSS_HARMONY_CONTENT &&
				!gptoss_tokenizer_is_special(eng->tok, id) ? r->parser.final_serial : -1;
	}

	if (!r->ignore_eos && r->n_tokens >= r->min_tokens && is_stop_token(r, id))
		return finish_request(eng, r, GPTOSS_FINISH_STOP, true, err);
	stopped = update_text(r, false, err);
	if (stopped < 0)
		return -1;
	if (stopped)
		return finish_request(eng, r, GPTOSS_FINISH_STOP, false, err);
	if (r->n_tokens >= r->max_new)
		return finish_request(eng, r, GPTOSS_FINISH_LENGTH, true, err);
	return 0;
}

/* ---------------------------------------------------------------------------
 * Cancel, release, results
 */

/* Frees the finished label sequences of parent (of every score request when parent is NULL). */
static void
drop_labels(gptoss_engine *eng, const request *parent)
{
	int			kept = 0;

	for (int i = 0; i < eng->n_reqs; i++)
	{
		request    *r = eng->reqs[i];

		if (r->kind == REQ_LABEL && r->state == REQ_DONE && (parent == NULL || r->parent == parent))
			request_free(r);
		else
			eng->reqs[kept++] = r;
	}
	eng->n_reqs = kept;
}

/* Forgets a request, cancelling it first when it is still queued or running. */
void
gptoss_engine_release(gptoss_engine *eng, int64_t id)
{
	int			i = find_request(eng, id);
	request    *r;

	if (i < 0)
		return;
	r = eng->reqs[i];
	finish_request(eng, r, GPTOSS_FINISH_CANCELLED, false, NULL);
	if (r->kind == REQ_SCORE)
		drop_labels(eng, r);
	request_free(r);
	memmove(eng->reqs + i, eng->reqs + i + 1, (size_t) (eng->n_reqs - i - 1) * sizeof(*eng->reqs));
	eng->n_reqs--;
}

/* Fills res with r's progress or result. */
int
gptoss_engine_result(const gptoss_engine *eng, int64_t id, gptoss_result *res)
{
	int			i = find_request(eng, id);
	const request *r;

	if (i < 0)
		return -1;
	r = eng->reqs[i];
	memset(res, 0, sizeof(*res));
	res->finish_reason = r->finish;
	res->text = r->text.data;
	res->text_len = r->text.len;
	res->text_restarts = r->text_restarts;
	res->stop_checks = r->stop_checks;
	res->submit_step = r->submit_step;
	res->admit_step = r->admit_step;
	if (r->include_reasoning && r->parser.analysis.text.data != NULL)
	{
		res->reasoning = r->parser.analysis.text.data;
		res->reasoning_len = r->parser.analysis.text.len;
	}
	else
	{
		res->reasoning = "";
		res->reasoning_len = 0;
	}
	res->tokens = r->tokens;
	res->n_tokens = r->n_tokens;
	res->prompt_tokens = r->n_prompt;
	res->completion_tokens = r->n_tokens;
	res->error = r->error ? r->error : "";
	if (r->logprobs)
	{
		res->logprobs = r->lp;
		res->text_tokens = r->text_tokens;
		res->n_text_tokens = r->text_tokens ? r->n_text_tokens : 0;
	}
	if (r->kind == REQ_SCORE && r->finish == GPTOSS_FINISH_STOP)
	{
		res->scores = r->scores;
		res->n_scores = r->n_labels;
	}
	return 0;
}

/* Sets the fairness keys of a request that waits for admission. */
int
gptoss_engine_set_owner(gptoss_engine *eng, int64_t id, uint64_t owner, uint64_t session)
{
	int			i = find_request(eng, id);

	if (i < 0 || eng->reqs[i]->state != REQ_QUEUED)
		return -1;
	eng->reqs[i]->owner = owner;
	eng->reqs[i]->session = session;
	return 0;
}

/* Caps the slots one owner holds (0: no cap). */
void
gptoss_engine_set_max_seqs_per_owner(gptoss_engine *eng, int max_seqs_per_owner)
{
	eng->max_seqs_per_owner = max_seqs_per_owner > 0 ? max_seqs_per_owner : 0;
}

/* Requests queued or running. */
int
gptoss_engine_active(const gptoss_engine *eng)
{
	int			n = 0;

	for (int i = 0; i < eng->n_reqs; i++)
		if (eng->reqs[i]->state != REQ_DONE)
			n++;
	return n;
}

/* ---------------------------------------------------------------------------
 * The step
 */

/*
 * Starts r in its new slot from shared pages: a label sequence from its
 * score request's pinned prefix, any other request from the longest cached
 * prefix of its prompt (prefix cache), cut to a multiple of share_tokens and
 * leaving at least one token to compute when the prompt's end samples.
 */
static void
attach_prefix(gptoss_engine *eng, request *r)
{
	gptoss_kv_pages *kp = eng->backend->kv_pages;
	int			page,
				limit,
				n;

	if (kp == NULL)
		return;
	page = gptoss_kv_pages_page_tokens(kp);
	if (r->kind == REQ_LABEL)
	{
		if (r->parent->n_fork_pages > 0)
		{
			gptoss_kv_pages_attach(kp, r->slot, r->parent->fork_pages, r->parent->n_fork_pages, 0);
			r->n_cached = r->parent->n_fork_pages * page;
		}
		return;
	}
	if (!r->prefix_caching)
		return;
	limit = r->kind == REQ_GENERATE ? r->n_prompt - 1 : r->prefill_end;
	limit = limit / eng->share_tokens * eng->share_tokens;
	n = gptoss_kv_pages_match(kp, r->prompt, limit, limit / page, eng->match_pages);
	n = n * page / eng->share_tokens * eng->share_tokens / page;
	if (n == 0)
		return;
	gptoss_kv_pages_attach(kp, r->slot, eng->match_pages, n, 1);
	r->n_cached = n * page;
	eng->stats.prefix_cache_hit_tokens += r->n_cached;
}

/*
 * Admits r when a slot is free (*slot: where the search for one resumes) and
 * the KV cache has room for its reservation; false when it must wait.
 */
static bool
admit_one(gptoss_engine *eng, request *r, int *slot)
{
	if (r->kind == REQ_SCORE && r->prefill_end == 0)
	{
		/* nothing to share: straight to the label sequences */
		r->state = REQ_RUNNING;
		return true;
	}
	while (*slot < eng->max_seqs && eng->slots[*slot] != NULL)
		(*slot)++;
	if (*slot == eng->max_seqs || eng->kv_reserved + r->reserve > eng->kv_capacity)
		return false;
	eng->kv_reserved += r->reserve;
	r->reserved = true;
	eng->slots[*slot] = r;
	r->slot = *slot;
	r->n_cached = 0;
	r->state = REQ_RUNNING;
	attach_prefix(eng, r);
	return true;
}

/* Index of the first request whose id is >= id. */
static int
first_request_from(const gptoss_engine *eng, int64_t id)
{
	int			lo = 0,
				hi = eng->n_reqs;

	while (lo < hi)
	{
		int			mid = lo + (hi - lo) / 2;

		if (eng->reqs[mid]->id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/*
 * Grows the admission scratch arrays to hold n requests; false when out of
 * memory (nothing is admitted then, and the next step tries again).
 */
static bool
admit_scratch(gptoss_engine *eng, int n)
{
	int			cap = eng->cap_admit ? eng->cap_admit : 64;
	void	   *p;

	if (n <= eng->cap_admit)
		return true;
	while (cap < n)
		cap *= 2;
	if ((p = realloc(eng->admit_cands, (size_t) cap * sizeof(*eng->admit_cands))) == NULL)
		return false;
	eng->admit_cands = p;
	if ((p = realloc(eng->admit_pos, (size_t) cap * sizeof(*eng->admit_pos))) == NULL)
		return false;
	eng->admit_pos = p;
	if ((p = realloc(eng->admit_owners, (size_t) cap * sizeof(*eng->admit_owners))) == NULL)
		return false;
	eng->admit_owners = p;
	if ((p = realloc(eng->admit_sessions, (size_t) cap * sizeof(*eng->admit_sessions))) == NULL)
		return false;
	eng->admit_sessions = p;
	eng->cap_admit = cap;
	return true;
}

/* qsort order of candidates: owner, session, then arrival. */
static int
cmp_cand(const void *a, const void *b)
{
	const request *x = *(request *const *) a;
	const request *y = *(request *const *) b;

	if (x->owner != y->owner)
		return x->owner < y->owner ? -1 : 1;
	if (x->session != y->session)
		return x->session < y->session ? -1 : 1;
	/* admit_tick holds the arrival position while a request is a candidate */
	return x->admit_tick < y->admit_tick ? -1 : x->admit_tick > y->admit_tick;
}

/* Index of the group with key in groups[lo, hi) (ascending keys), or -1. */
static int
find_group(const admit_group *groups, int lo, int hi, uint64_t key)
{
	while (lo < hi)
	{
		int			mid = lo + (hi - lo) / 2;

		if (groups[mid].key == key)
			return mid;
		if (groups[mid].key < key)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

/*
 * True when group a goes before b: fewer slots held, then admitted longest
 * ago, then the earlier next candidate (arrival position head_a, head_b).
 */
static bool
group_before(const admit_group *a, int head_a, const admit_group *b, int head_b)
{
	if (a->running != b->running)
		return a->running < b->running;
	if (a->last != b->last)
		return a->last < b->last;
	return head_a < head_b;
}

/*
 * Lists the queued requests in arrival order (a score request's label
 * sequences take its place, so that its pinned prefix is released before
 * later requests pin theirs), their arrival position in admit_tick.
 * Returns the count, or -1 when out of memory.
 */
static int
admit_candidates(gptoss_engine *eng)
{
	int			n = 0;

	if (!admit_scratch(eng, eng->n_reqs))
		return -1;
	for (int i = 0; i < eng->n_reqs; i++)
	{
		request    *r = eng->reqs[i];

		if (r->kind == REQ_LABEL)
			continue;
		if (r->kind == REQ_SCORE && r->forked && r->state == REQ_RUNNING)
		{
			for (int j = first_request_from(eng, r->first_label_id); j < eng->n_reqs; j++)
			{
				request    *l = eng->reqs[j];

				if (l->kind != REQ_LABEL || l->parent != r)
					break;
				if (l->state == REQ_QUEUED)
				{
					l->admit_tick = n;
					eng->admit_cands[n++] = l;
				}
			}
			continue;
		}
		if (r->state == REQ_QUEUED)
		{
			r->admit_tick = n;
			eng->admit_cands[n++] = r;
		}
	}
	return n;
}

/*
 * Groups the n candidates (sorted) by owner and session, and counts the
 * slots each group holds and when it was last admitted to.  Returns the
 * number of owners.
 */
static int
admit_groups(gptoss_engine *eng, int n)
{
	admit_group *owners = eng->admit_owners;
	admit_group *sessions = eng->admit_sessions;
	int			n_owners = 0,
				n_sessions = 0;

	for (int i = 0; i < n; i++)
	{
		const request *r = eng->admit_cands[i];

		bool		new_owner = n_owners == 0 || owners[n_owners - 1].key != r->owner;

		eng->admit_pos[i] = (int) r->admit_tick;
		if (new_owner)
		{
			memset(&owners[n_owners], 0, sizeof(admit_group));
			owners[n_owners].key = r->owner;
			owners[n_owners].first = n_sessions;
			n_owners++;
		}
		if (new_owner || sessions[n_sessions - 1].key != r->session)
		{
			memset(&sessions[n_sessions], 0, sizeof(admit_group));
			sessions[n_sessions].key = r->session;
			sessions[n_sessions].first = sessions[n_sessions].next = i;
			n_sessions++;
			owners[n_owners - 1].end = n_sessions;
		}
		sessions[n_sessions - 1].end = i + 1;
		owners[n_owners - 1].next++;	/* an owner's next: how many of its candidates wait */
		eng->admit_cands[i]->admit_tick = 0;
	}
	for (int i = 0; i < eng->n_reqs; i++)
	{
		const request *r = eng->reqs[i];
		int			o,
					s;

		if (r->admit_tick == 0 || (o = find_group(owners, 0, n_owners, r->owner)) < 0)
			continue;
		owners[o].running += r->slot >= 0;
		if (r->admit_tick > owners[o].last)
			owners[o].last = r->admit_tick;
		if ((s = find_group(sessions, owners[o].first, owners[o].end, r->session)) < 0)
			continue;
		sessions[s].running += r->slot >= 0;
		if (r->admit_tick > sessions[s].last)
			sessions[s].last = r->admit_tick;
	}
	return n_owners;
}

/*
 * Gives free slots to queued requests, fairly among owners and, within an
 * owner, among its sessions: the next admission goes to the owner holding
 * the fewest slots (then the one admitted to longest ago, then the one whose
 * request came first), below max_seqs_per_owner; within it to the session
 * chosen the same way; within the session to its oldest request.  With one
 * owner and one session this is plain arrival order.  Admission stops at
 * the first chosen request that does not fit (no free slot, or no KV room
 * for its reservation): a large request is not overtaken by later small
 * ones.
 */
static void
admit_requests(gptoss_engine *eng)
{
	int			slot = 0;
	int			cap = eng->max_seqs_per_owner > 0 ? eng->max_seqs_per_owner : eng->max_seqs;
	int			n,
				n_owners;

	n = admit_candidates(eng);
	if (n <= 0)
		return;
	qsort(eng->admit_cands, (size_t) n, sizeof(*eng->admit_cands), cmp_cand);
	n_owners = admit_groups(eng, n);
	for (;;)
	{
		admit_group *o = NULL;
		admit_group *s = NULL;
		int			o_head = 0,
					s_head = 0;
		request    *r;

		for (int i = 0; i < n_owners; i++)
		{
			admit_group *g = &eng->admit_owners[i];
			int			head = INT_MAX;

			if (g->next == 0 || g->running >= cap)
				continue;
			for (int j = g->first; j < g->end; j++)
				if (eng->admit_sessions[j].next < eng->admit_sessions[j].end &&
					eng->admit_pos[eng->admit_sessions[j].next] < head)
					head = eng->admit_pos[eng->admit_sessions[j].next];
			if (o == NULL || group_before(g, head, o, o_head))
			{
				o = g;
				o_head = head;
			}
		}
		if (o == NULL)
			return;
		for (int j = o->first; j < o->end; j++)
		{
			admit_group *g = &eng->admit_sessions[j];

			if (g->next < g->end &&
				(s == NULL || group_before(g, eng->admit_pos[g->next], s, s_head)))
			{
				s = g;
				s_head = eng->admit_pos[g->next];
			}
		}
		r = eng->admit_cands[s->next];
		if (!admit_one(eng, r, &slot))
			return;
		s->next++;
		o->next--;
		r->admit_tick = ++eng->admit_ticks;
		r->admit_step = eng->stats.steps;
		s->last = o->last = r->admit_tick;
		s->running += r->slot >= 0;
		o->running += r->slot >= 0;
	}
}

/*
 * Score requests whose shared prefix is computed: pin its pages, give the
 * slot back and queue one label sequence per continuation (out of memory:
 * the request fails).
 */
static void
fork_score_requests(gptoss_engine *eng)
{
	for (int i = 0; i < eng->n_reqs; i++)
	{
		request    *r = eng->reqs[i];

		if (r->kind != REQ_SCORE || r->state != REQ_RUNNING || r->forked ||
			r->n_cached < r->prefill_end)
			continue;
		r->forked = true;
		if (r->slot >= 0)
		{
			int			n_pages;
			const int32_t *pages = gptoss_kv_pages_table(eng->backend->kv_pages, r->slot, &n_pages);

			n_pages = r->prefill_end / gptoss_kv_pages_page_tokens(eng->backend->kv_pages);
			r->fork_pages = malloc((size_t) n_pages * sizeof(int32_t));
			if (!r->fork_pages)
			{
				fail_request(eng, r, "out of memory forking a score request");
				continue;
			}
			memcpy(r->fork_pages, pages, (size_t) n_pages * sizeof(int32_t));
			gptoss_kv_pages_pin(eng->backend->kv_pages, r->fork_pages, n_pages);
			r->n_fork_pages = n_pages;
			leave_slot(eng, r);
		}
		r->first_label_id = eng->next_id;
		for (int l = 0; l < r->n_labels; l++)
		{
			request    *seq = new_request(REQ_LABEL, r->prompt, r->n_prompt, r->label_len[l]);

			if (seq == NULL)
			{
				fail_request(eng, r, "out of memory forking a score request");
				break;
			}
			seq->parent = r;
			seq->label = l;
			seq->owner = r->owner;
			seq->session = r->session;
			/* the shared prefix is reserved by the score request itself */
			seq->reserve = (int64_t) r->n_prompt - r->prefill_end + r->label_len[l];
			seq->lp = calloc(1, sizeof(*seq->lp));
			if (!seq->lp)
			{
				request_free(seq);
				fail_request(eng, r, "out of memory forking a score request");
				break;
			}
			if (queue_request(eng, seq, NULL) < 0)
			{
				fail_request(eng, r, "out of memory forking a score request");
				break;
			}
		}
	}
}

/* Sets what entry e of r produces: nothing, a sampled token, or r's next forced label token; and its logprobs. */
static void
set_output(request *r, gptoss_step_seq *e, int sample)
{
	e->sample = sample;
	e->sampling = r->sampling;
	e->allowed = NULL;
	e->forced = NULL;
	e->logprobs = NULL;
	e->top_logprobs = 0;
	if (!sample)
		return;
	if (r->kind == REQ_LABEL)
	{
		e->forced = &r->parent->label_ids[r->label][r->n_tokens];
		e->logprobs = r->lp;
	}
	else if (r->logprobs)
	{
		e->logprobs = &r->lp[r->n_tokens];
		e->top_logprobs = r->top_logprobs;
	}
}

/* Fills eng->batch: decode tokens first, then prompt chunks within the budget.  Returns the count. */
static int
build_batch(gptoss_engine *eng, int *n_prefill_tokens, int *n_decode_tokens)
{
	int			n = 0;
	int			budget = eng->max_step_tokens;

	*n_prefill_tokens = *n_decode_tokens = 0;
	for (int s = 0; s < eng->max_seqs; s++)
	{
		request    *r = eng->slots[s];
		gptoss_step_seq *e;

		if (r == NULL || r->kind == REQ_SCORE || r->n_cached < r->prefill_end)
			continue;
		e = &eng->batch[n];
		e->slot = s;
		e->pos = r->n_cached;
		e->n_tokens = 1;
		e->tokens = &r->tokens[r->n_tokens - 1];
		set_output(r, e, 1);
		eng->batch_reqs[n++] = r;
		budget--;
		(*n_decode_tokens)++;
	}
	/* Prompts in arrival order (reqs is sorted by id). */
	for (int i = 0; i < eng->n_reqs && budget > 0; i++)
	{
		request    *r = eng->reqs[i];
		gptoss_step_seq *e;
		int			chunk;

		if (r->state != REQ_RUNNING || r->slot < 0 || r->n_cached >= r->prefill_end)
			continue;
		chunk = r->prefill_end - r->n_cached;
		if (chunk > eng->prefill_chunk)
			chunk = eng->prefill_chunk;
		/*
		 * A chunk that does not fit waits for the next step rather than being
		 * cut to the leftover budget: a prompt is then split at the same
		 * places whatever else runs, so its arithmetic (and with it greedy
		 * output) does not depend on the batch.
		 */
		if (chunk > budget)
			continue;
		e = &eng->batch[n];
		e->slot = r->slot;
		e->pos = r->n_cached;
		e->n_tokens = chunk;
		e->tokens = r->prompt + r->n_cached;
		set_output(r, e, r->kind != REQ_SCORE && r->n_cached + chunk == r->prefill_end);
		eng->batch_reqs[n++] = r;
		budget -= chunk;
		*n_prefill_tokens += chunk;
	}
	return n;
}

/* Ends every queued and running request with the backend's error. */
static void
fail_all(gptoss_engine *eng, const char *msg)
{
	eng->failed = true;
	snprintf(eng->failure, sizeof(eng->failure), "%s", msg);
	for (int i = 0; i < eng->n_reqs; i++)
		fail_request(eng, eng->reqs[i], msg);
}

/*
 * Registers r's prompt pages computed so far in the prefix cache: whole
 * share_tokens units of the part prefilled in the slot.
 */
static void
publish_prompt(gptoss_engine *eng, request *r)
{
	int			end = r->prefill_end / eng->share_tokens * eng->share_tokens;

	if (end > r->n_cached)
		end = r->n_cached;
	gptoss_kv_pages_publish(eng->backend->kv_pages, r->slot, r->prompt, end);
}

/* Asks one entry's constraint what it may pick (a pool task; entries are independent). */
static void
constrain_entry(void *ctx, int item, int worker)
{
	gptoss_engine *eng = ctx;
	int			i = eng->constrained[item];
	request    *r = eng->batch_reqs[i];
	uint32_t   *buf = eng->masks + (size_t) i * eng->mask_words;
	const uint32_t *mask = NULL;
	gptoss_error cerr = {0};
	int			kind;
	double		t0 = gptoss_thread_cpu_time();

	kind = gptoss_constraint_next(r->con, r->max_new - r->n_tokens, buf, &mask, &eng->forced[i],
								  eng->mask_scratch[worker], &cerr);
	eng->mask_cpu[worker] += gptoss_thread_cpu_time() - t0;
	if (kind < 0)
	{
		free(r->con_error);
		r->con_error = strdup(cerr.msg[0] ? cerr.msg : "constrained decoding failed");
	}
	else if (kind == GPTOSS_NEXT_MASK)
		eng->batch[i].allowed = mask;
	else if (eng->forced[i] >= 0 && eng->batch[i].logprobs)
		eng->batch[i].forced = &eng->forced[i];	/* its log-probability is the forced token's */
}

/*
 * Asks the constraint of every sampled entry what it may pick: a mask for
 * the backend, or a forced token, in parallel over the mask pool.  A request
 * whose constraint fails ends with the error after the step (its entry
 * still runs: the slot stays consistent with the batch).
 */
static void
constrain_batch(gptoss_engine *eng, int n)
{
	double		t0 = gptoss_now();
	int			n_constrained = 0;

	for (int i = 0; i < n; i++)
	{
		eng->forced[i] = -1;
		if (eng->batch[i].sample && eng->batch_reqs[i]->con != NULL)
			eng->constrained[n_constrained++] = i;
	}
	if (n_constrained == 0)
		return;
	gptoss_task_pool_run(eng->mask_pool, n_constrained, constrain_entry, eng);
	for (int k = 0; k < n_constrained; k++)
		eng->stats.masks += eng->batch[eng->constrained[k]].allowed != NULL;
	for (int w = 0; w < gptoss_task_pool_workers(eng->mask_pool); w++)
	{
		eng->stats.mask_seconds += eng->mask_cpu[w];
		eng->mask_cpu[w] = 0;
	}
	eng->stats.mask_wall_seconds += gptoss_now() - t0;
}

/* The token a constrained request takes: the forced one, the sampled one, or a repair. */
static int32_t
constrained_token(gptoss_engine *eng, request *r, int32_t forced, int32_t sampled, gptoss_error *err)
{
	int32_t		id = forced >= 0 ? forced : sampled;

	if (gptoss_constraint_accept(r->con, id) == 0)
		return id;
	eng->stats.mask_violations++;
	/* not allowed (only possible when the logits had no finite value): take the shortest way on */
	id = gptoss_constraint_repair(r->con, err);
	if (id < 0)
		return -1;
	if (gptoss_constraint_accept(r->con, id) < 0)
		return gptoss_errorf(err, "internal error: constrained decoding has no allowed token");
	return id;
}

/* Reports the prefill chunk and the step's token budget in force. */
void
gptoss_engine_step_limits(const gptoss_engine *eng, int *prefill_chunk, int *max_step_tokens)
{
	*prefill_chunk = eng->prefill_chunk;
	*max_step_tokens = eng->max_step_tokens;
}

/* Runs one batched step over all active requests. */
int
gptoss_engine_step(gptoss_engine *eng, gptoss_error *err)
{
	int			n,
				n_prefill,
				n_decode;
	int			vocab = eng->model->config.vocab_size;
	double		t0,
				t1;

	if (eng->failed)
		return gptoss_errorf(err, "engine stopped after a backend failure: %s", eng->failure);
	admit_requests(eng);
	/*
	 * Score requests whose prefix is ready hand over to their label
	 * sequences, which join now; a request admitted with its whole prefix
	 * cached hands over at once too (its labels join next step).
	 */
	fork_score_requests(eng);
	admit_requests(eng);
	fork_score_requests(eng);
	n = build_batch(eng, &n_prefill, &n_decode);
	if (n == 0)
		return gptoss_engine_active(eng);
	constrain_batch(eng, n);

	t0 = gptoss_now();
	if (eng->backend->step(eng->backend, eng->batch, n, eng->next_tokens, NULL, err) < 0)
	{
		fail_all(eng, err ? err->msg : "backend step failed");
		return -1;
	}
	t1 = gptoss_now();
	gptoss_step_rates_add(&eng->rates, t1, t1 - t0, n_prefill, n_decode, n);
	eng->stats.steps++;
	eng->stats.step_sequences += n;
	eng->stats.prefill_tokens += n_prefill;

	for (int i = 0; i < n; i++)
	{
		request    *r = eng->batch_reqs[i];
		const gptoss_step_seq *e = &eng->batch[i];
		int32_t		id = eng->next_tokens[i];

		r->n_cached += e->n_tokens;
		if (r->prefix_caching && eng->share_tokens > 0 && r->n_cached - e->n_tokens < r->prefill_end)
			publish_prompt(eng, r);
		if (!e->sample)
			continue;
		if (id < 0 || id >= vocab)
		{
			char		msg[128];

			snprintf(msg, sizeof(msg), "backend produced token id %d outside the vocabulary (%d)",
					 id, vocab);
			fail_all(eng, msg);
			return gptoss_errorf(err, "%s", msg);
		}
		if (r->con_error != NULL)
		{
			fail_request(eng, r, r->con_error);
			continue;
		}
		if (r->con != NULL)
		{
			gptoss_error cerr = {0};

			id = constrained_token(eng, r, eng->forced[i], id, &cerr);
			if (id < 0)
			{
				fail_request(eng, r, cerr.msg);
				continue;
			}
		}
		if (r->kind == REQ_LABEL)
		{
			/* a forced label token: add its log-probability; the last one ends the label */
			r->tokens[r->n_tokens++] = id;
			r->score += r->lp->logprob;
			if (r->n_tokens == r->max_new)
				finish_request(eng, r, GPTOSS_FINISH_STOP, false, NULL);
		}
		else if (accept_token(eng, r, id, err) < 0)
			fail_request(eng, r, err ? err->msg : "out of memory");
	}
	drop_labels(eng, NULL);
	return gptoss_engine_active(eng);
}

/* Fills st with counters, recent rates and the batch occupancy. */
void
gptoss_engine_get_stats(const gptoss_engine *eng, gptoss_engine_stats *st)
{
	double		now = gptoss_now();
	gptoss_rate_summary recent;

	*st = eng->stats;
	gptoss_step_rates_read(&eng->rates, now, RATE_WINDOW_S, &recent);
	st->prefill_tok_s = recent.prefill_tok_s;
	st->decode_tok_s = recent.decode_tok_s;
	gptoss_step_rates_read(&eng->rates, now, BATCH_WINDOW_S, &recent);
	st->mean_batch_size_1min = recent.mean_batch_size;
	st->active = 0;
	st->queued = 0;
	for (int i = 0; i < eng->n_reqs; i++)
	{
		if (eng->reqs[i]->slot >= 0)
			st->active++;
		else if (eng->reqs[i]->state == REQ_QUEUED)
			st->queued++;
	}
}
