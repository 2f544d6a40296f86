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

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_MAX_SEQS 8
#define DEFAULT_MAX_CONTEXT 4096
#define DEFAULT_PREFILL_CHUNK 256
#define DEFAULT_MAX_STEP_TOKENS 2048
/* Time constant (seconds of stepping) of the recent token rates in the stats. */
#define RATE_WINDOW_S 10.0

typedef enum request_state
{
	REQ_QUEUED,
	REQ_RUNNING,
	REQ_DONE
} request_state;

typedef struct request
{
	int64_t		id;
	request_state state;
	int32_t    *prompt;			/* [n_prompt] rendered prompt ids */
	int			n_prompt;
	int32_t    *tokens;			/* [max_new] generated ids */
	int			n_tokens;
	int			max_new;		/* max_tokens clamped to what the context leaves */
	int			slot;			/* KV-cache slot while RUNNING, else -1 */
	int			n_cached;		/* tokens in the slot's cache = position of the next fed token */
	gptoss_sampling sampling;
	char	  **stop;			/* [n_stop] owned copies of the stop strings */
	int			n_stop;
	bool		raw;
	bool		ignore_eos;
	bool		include_reasoning;
	gptoss_finish_reason finish;
	char	   *error;			/* message when finish = ERROR */
	gptoss_constraint *con;		/* response_format / reasoning budget, or NULL */
	char	   *con_error;		/* the constraint failed in this step: the request ends after it */
	gptoss_harmony_parser parser;	/* harmony mode: generated messages */
	gptoss_utf8_text raw_text;	/* raw mode: the continuation */
	int			final_serial;	/* parser.final_serial that text belongs to */
	gptoss_buffer text;			/* visible text, NUL-terminated */
	size_t		scanned;		/* source text bytes already searched for stop strings */
} request;

struct gptoss_engine
{
	gptoss_model *model;
	gptoss_tokenizer *tok;
	gptoss_backend *backend;
	bool		owns_parts;		/* free model, tokenizer and backend with the engine */
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
	int64_t		next_id;
	uint64_t	seed_counter;
	bool		failed;			/* a backend step failed: the backend is unusable */
	char		failure[1024];
	gptoss_engine_stats stats;
	double		rate_prefill_tokens;	/* decayed token and time sums for the rates */
	double		rate_decode_tokens;
	double		rate_time;
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
	if (eng->max_seqs < 1 || eng->max_context < 2)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "backend has %d slots of %d tokens; need at least 1 slot of 2 tokens",
								  eng->max_seqs, eng->max_context);
	memset(&info, 0, sizeof(info));
	eng->backend->get_info(eng->backend, &info);
	eng->kv_capacity = info.kv_cache_tokens > 0 ? info.kv_cache_tokens
		: (int64_t) eng->max_seqs * eng->max_context;
	eng->prefill_chunk = opts->prefill_chunk > 0 ? opts->prefill_chunk : DEFAULT_PREFILL_CHUNK;
	eng->max_step_tokens = opts->max_step_tokens > 0 ? opts->max_step_tokens : DEFAULT_MAX_STEP_TOKENS;
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

	if (gptoss_model_load(opts->model_path, &model, progress, progress_arg, err) < 0)
	{
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
		gptoss_tokenizer_free(tok);
		return NULL;
	}
	eng = gptoss_engine_create_from(model, tok, backend, opts, err);
	if (eng == NULL)
	{
		backend->free(backend);
		gptoss_model_free(model);
		gptoss_tokenizer_free(tok);
		return NULL;
	}
	eng->owns_parts = true;
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
	free(eng->slots);
	free(eng->batch);
	free(eng->batch_reqs);
	free(eng->next_tokens);
	free(eng->forced);
	free(eng->masks);
	gptoss_constraint_env_free(eng->cenv);
	if (eng->owns_parts)
	{
		eng->backend->free(eng->backend);
		gptoss_model_free(eng->model);
		gptoss_tokenizer_free(eng->tok);
	}
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
gptoss_engine_render(const gptoss_engine *eng, const char *prompt,
					 const gptoss_chat_message *messages, int n_messages,
					 const gptoss_gen_params *p, int32_t **ids, int *n_ids,
					 gptoss_error *err)
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
		n = gptoss_tokenizer_encode(eng->tok, prompt, strlen(prompt), ids, err);
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
		rc = gptoss_harmony_render_with_format(eng->tok, messages, n_messages, p->reasoning_effort,
											   p->instructions, p->current_date, section, ids,
											   n_ids, err);
		free(section);
		return rc;
	}
	return gptoss_harmony_render(eng->tok, messages, n_messages, p->reasoning_effort,
								 p->instructions, p->current_date, ids, n_ids, err);
}

/* Checks generation parameters, naming the offending key. */
static int
check_params(const gptoss_gen_params *p, gptoss_error *err)
{
	if (p == NULL)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "no generation parameters");
	if (p->max_tokens < 1)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "max_tokens: must be >= 1 (got %d)", p->max_tokens);
	if (!(p->temperature >= 0.0f) || isinf(p->temperature))
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "temperature: must be a finite number >= 0 (got %g)",
								  (double) p->temperature);
	if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "top_p: must be in (0, 1] (got %g)", (double) p->top_p);
	if (p->top_k < 0)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "top_k: must be >= 0 (got %d)", p->top_k);
	if (p->n_stop < 0 || (p->n_stop > 0 && p->stop == NULL))
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "stop: invalid stop string array");
	for (int i = 0; i < p->n_stop; i++)
		if (p->stop[i] == NULL || p->stop[i][0] == '\0')
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
									  "stop: stop strings must be non-empty (entry %d)", i);
	if (p->reasoning_effort != GPTOSS_REASONING_LOW &&
		p->reasoning_effort != GPTOSS_REASONING_MEDIUM &&
		p->reasoning_effort != GPTOSS_REASONING_HIGH)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "reasoning_effort: invalid value");
	if (p->has_max_reasoning_tokens && p->max_reasoning_tokens < 0)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "max_reasoning_tokens: must be >= 0 (got %d)", p->max_reasoning_tokens);
	if (p->response_format != NULL && p->n_stop > 0)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "stop: cannot be combined with response_format (a stop string would cut the document)");
	if (p->response_format != NULL && p->ignore_eos)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "ignore_eos: cannot be combined with response_format (the document ends the answer)");
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
	if (eng->cenv == NULL)
	{
		eng->cenv = gptoss_constraint_env_build(eng->tok, eng->model->config.vocab_size, err);
		if (eng->cenv == NULL)
		{
			gptoss_json_grammar_free(g);
			return -1;
		}
		eng->mask_words = gptoss_constraint_env_mask_words(eng->cenv);
		eng->masks = malloc((size_t) eng->max_seqs * eng->mask_words * sizeof(uint32_t));
		if (eng->masks == NULL)
		{
			gptoss_json_grammar_free(g);
			gptoss_constraint_env_free(eng->cenv);
			eng->cenv = NULL;
			return gptoss_errorf(err, "out of memory for token masks");
		}
	}
	*con = gptoss_constraint_create(eng->cenv, g, p->raw, budget, max_new, err);
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

/* Queues a request over rendered prompt ids. */
int64_t
gptoss_engine_submit(gptoss_engine *eng, const int32_t *ids, int n_ids,
					 const gptoss_gen_params *p, gptoss_error *err)
{
	request    *r;
	int			vocab = eng->model->config.vocab_size;
	int64_t		room;

	if (eng->failed)
		return gptoss_errorf(err, "engine stopped after a backend failure: %s", eng->failure);
	if (check_params(p, err) < 0)
		return -1;
	if (n_ids < 1 || ids == NULL)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "prompt: renders to no tokens");
	for (int i = 0; i < n_ids; i++)
		if (ids[i] < 0 || ids[i] >= vocab)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
									  "prompt: token %d at index %d is outside the model vocabulary (%d)",
									  ids[i], i, vocab);
	/* Room to generate: the context, and the whole KV cache for one sequence. */
	room = eng->max_context;
	if (room > eng->kv_capacity)
		room = eng->kv_capacity;
	if (n_ids >= room)
		return gptoss_errorf_code(err, GPTOSS_ERR_TOO_LONG,
								  "prompt is %d tokens but the context holds %lld tokens: no room to generate",
								  n_ids, (long long) room);

	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return gptoss_errorf(err, "out of memory queueing a request");
	r->id = eng->next_id;
	r->state = REQ_QUEUED;
	r->slot = -1;
	r->n_prompt = n_ids;
	r->max_new = p->max_tokens;
	if (r->max_new > room - n_ids)
		r->max_new = (int) (room - n_ids);
	r->sampling.temperature = p->temperature;
	r->sampling.top_p = p->top_p;
	r->sampling.top_k = p->top_k;
	r->sampling.seed = p->has_seed ? p->seed : fresh_seed(eng);
	r->raw = p->raw;
	r->ignore_eos = p->ignore_eos;
	r->include_reasoning = p->include_reasoning;
	gptoss_harmony_parser_init(&r->parser);
	if (make_constraint(eng, p, r->max_new, &r->con, err) < 0)
	{
		request_free(r);
		return -1;
	}
	r->prompt = malloc((size_t) n_ids * sizeof(int32_t));
	r->tokens = malloc((size_t) r->max_new * sizeof(int32_t));
	r->stop = p->n_stop > 0 ? calloc((size_t) p->n_stop, sizeof(char *)) : NULL;
	if (!r->prompt || !r->tokens || gptoss_buffer_reserve(&r->text, 0, NULL) < 0 ||
		(p->n_stop > 0 && !r->stop))
		goto oom;
	memcpy(r->prompt, ids, (size_t) n_ids * sizeof(int32_t));
	for (int i = 0; i < p->n_stop; i++)
	{
		r->stop[i] = strdup(p->stop[i]);
		if (r->stop[i] == NULL)
			goto oom;
		r->n_stop = i + 1;
	}
	if (append_request(eng, r, err) < 0)
	{
		request_free(r);
		return -1;
	}
	eng->next_id++;
	eng->stats.requests_total++;
	eng->stats.prompt_tokens += n_ids;
	return r->id;

oom:
	request_free(r);
	return gptoss_errorf(err, "out of memory queueing a request of %d prompt tokens", n_ids);
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
stop_holdback(const request *r, const char *s, size_t len)
{
	size_t		hold = 0;

	for (int i = 0; i < r->n_stop; i++)
	{
		size_t		n = strlen(r->stop[i]);
		size_t		k = n - 1 < len ? n - 1 : len;

		for (; k > hold; k--)
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
		gptoss_buffer_reset(&r->text);
		r->scanned = 0;
	}
	if (longest > 0)
	{
		from = r->scanned + 1 > longest ? r->scanned + 1 - longest : 0;
		for (int i = 0; i < r->n_stop; i++)
		{
			size_t		n = strlen(r->stop[i]);

			for (size_t at = from; at + n <= len && at < visible; at++)
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
	eng->kv_reserved -= r->n_prompt + r->max_new;
	r->slot = -1;
}

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
	r->state = REQ_DONE;
	r->finish = reason;
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
	return rc;
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
	}
	else if (gptoss_harmony_parser_push(&r->parser, eng->tok, id, err) < 0)
		return -1;

	if (!r->ignore_eos && is_stop_token(r, id))
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

/* Cancels a request: a queued one ends now, a running one also frees its slot now. */
void
gptoss_engine_cancel(gptoss_engine *eng, int64_t id)
{
	int			i = find_request(eng, id);

	if (i >= 0)
		finish_request(eng, eng->reqs[i], GPTOSS_FINISH_CANCELLED, false, NULL);
}

/* Forgets a request, cancelling it first when it is still queued or running. */
void
gptoss_engine_release(gptoss_engine *eng, int64_t id)
{
	int			i = find_request(eng, id);

	if (i < 0)
		return;
	finish_request(eng, eng->reqs[i], GPTOSS_FINISH_CANCELLED, false, NULL);
	request_free(eng->reqs[i]);
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
	return 0;
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

/* Gives free slots to queued requests, oldest first, while the KV cache has room. */
static void
admit_requests(gptoss_engine *eng)
{
	int			slot = 0;

	for (int i = 0; i < eng->n_reqs; i++)
	{
		request    *r = eng->reqs[i];
		int64_t		need;

		if (r->state != REQ_QUEUED)
			continue;
		while (slot < eng->max_seqs && eng->slots[slot] != NULL)
			slot++;
		if (slot == eng->max_seqs)
			return;
		/* Strict arrival order: a large request is not overtaken by later small ones. */
		need = r->n_prompt + r->max_new;
		if (eng->kv_reserved + need > eng->kv_capacity)
			return;
		eng->kv_reserved += need;
		eng->slots[slot] = r;
		r->slot = slot;
		r->n_cached = 0;
		r->state = REQ_RUNNING;
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

		if (r == NULL || r->n_cached < r->n_prompt)
			continue;
		e = &eng->batch[n];
		e->slot = s;
		e->pos = r->n_cached;
		e->n_tokens = 1;
		e->tokens = &r->tokens[r->n_tokens - 1];
		e->sample = 1;
		e->sampling = r->sampling;
		e->allowed = NULL;
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

		if (r->state != REQ_RUNNING || r->n_cached >= r->n_prompt)
			continue;
		chunk = r->n_prompt - r->n_cached;
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
		e->sample = r->n_cached + chunk == r->n_prompt;
		e->sampling = r->sampling;
		e->allowed = NULL;
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

/* Folds one step into the decayed rate sums. */
static void
update_rates(gptoss_engine *eng, double seconds, int prefill_tokens, int decode_tokens)
{
	double		keep = exp(-seconds / RATE_WINDOW_S);

	eng->rate_prefill_tokens = eng->rate_prefill_tokens * keep + prefill_tokens;
	eng->rate_decode_tokens = eng->rate_decode_tokens * keep + decode_tokens;
	eng->rate_time = eng->rate_time * keep + seconds;
}

/*
 * Asks the constraint of every sampled entry what it may pick: a mask for
 * the backend, or a forced token.  A request whose constraint fails ends
 * with the error after the step (its entry still runs: the slot stays
 * consistent with the batch).
 */
static void
constrain_batch(gptoss_engine *eng, int n)
{
	double		t0 = gptoss_now();

	for (int i = 0; i < n; i++)
	{
		request    *r = eng->batch_reqs[i];
		gptoss_step_seq *e = &eng->batch[i];
		uint32_t   *buf = eng->masks + (size_t) i * eng->mask_words;
		const uint32_t *mask = NULL;
		gptoss_error cerr = {0};
		int			kind;

		eng->forced[i] = -1;
		if (!e->sample || r->con == NULL)
			continue;
		kind = gptoss_constraint_next(r->con, r->max_new - r->n_tokens, buf, &mask,
									  &eng->forced[i], &cerr);
		if (kind < 0)
		{
			free(r->con_error);
			r->con_error = strdup(cerr.msg[0] ? cerr.msg : "constrained decoding failed");
		}
		else if (kind == GPTOSS_NEXT_MASK)
		{
			e->allowed = mask;
			eng->stats.masks++;
		}
	}
	eng->stats.mask_seconds += gptoss_now() - t0;
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

/* Runs one batched step over all active requests. */
int
gptoss_engine_step(gptoss_engine *eng, gptoss_error *err)
{
	int			n,
				n_prefill,
				n_decode;
	int			vocab = eng->model->config.vocab_size;
	double		t0;

	if (eng->failed)
		return gptoss_errorf(err, "engine stopped after a backend failure: %s", eng->failure);
	admit_requests(eng);
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
	update_rates(eng, gptoss_now() - t0, n_prefill, n_decode);
	eng->stats.steps++;
	eng->stats.step_sequences += n;

	for (int i = 0; i < n; i++)
	{
		request    *r = eng->batch_reqs[i];
		const gptoss_step_seq *e = &eng->batch[i];
		int32_t		id = eng->next_tokens[i];

		r->n_cached += e->n_tokens;
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
		if (accept_token(eng, r, id, err) < 0)
			fail_request(eng, r, err ? err->msg : "out of memory");
	}
	return gptoss_engine_active(eng);
}

/* Fills st with counters, recent rates and the batch occupancy. */
void
gptoss_engine_get_stats(const gptoss_engine *eng, gptoss_engine_stats *st)
{
	*st = eng->stats;
	st->prefill_tok_s = eng->rate_time > 0 ? eng->rate_prefill_tokens / eng->rate_time : 0.0;
	st->decode_tok_s = eng->rate_time > 0 ? eng->rate_decode_tokens / eng->rate_time : 0.0;
	st->active = 0;
	st->queued = 0;
	for (int i = 0; i < eng->n_reqs; i++)
	{
		if (eng->reqs[i]->state == REQ_RUNNING)
			st->active++;
		else if (eng->reqs[i]->state == REQ_QUEUED)
			st->queued++;
	}
}
