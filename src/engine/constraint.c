/*
 * constraint.c: the harmony path into the final channel, the reasoning
 * budget, and the JSON document inside it (see constraint.h).
 *
 * Token budget.  The grammar's costs are set to tokens: a completion's
 * pieces (single bytes, whole keys and literals) cost the tokens the trie's
 * longest-match tokenization gives them, and a forced completion is
 * tokenized piece by piece, so it takes exactly its cost in tokens.  Let D be
 * the cost of the cheapest document.  Before the final message the
 * constraint keeps path(phase) + D < left, where path(phase) is the number
 * of tokens from the current phase to the final message's content; a choice
 * that would break it is masked out, and once it is tight the path is
 * forced.  Inside the document it keeps shortest(state) < left after every
 * free token, and forces a cheapest completion once shortest(state) >= left.
 * So the document always fits, given max_new >= path + D at the start.
 * Tokenized as one text the cheapest document may take fewer tokens than D
 * (tokens that span pieces, such as "\":\""): a request whose max_new is
 * below path + D but not below path + that count is forced from its first
 * token (the path, then that tokenization); only a max_new below even that is
 * an error.
 */
#include "constraint.h"

#include <stdlib.h>
#include <string.h>

/* Where the request is on the harmony path (after the prompt's <|start|>assistant). */
typedef enum path_phase
{
	PATH_HEADER,				/* expects <|channel|> */
	PATH_CHANNEL,				/* expects analysis or final */
	PATH_ANALYSIS_OPEN,			/* after analysis: expects <|message|> */
	PATH_ANALYSIS,				/* analysis content: text or <|end|> */
	PATH_AFTER_END,				/* expects <|start|> */
	PATH_ROLE,					/* expects assistant */
	PATH_FINAL_OPEN,			/* after final: expects <|message|> */
	PATH_FINAL,					/* final content (the document) */
	PATH_DONE					/* after <|return|> */
} path_phase;

/* Tokens from each phase to the final message's content on the shortest way. */
static const int PATH_LEN[] = {3, 2, 7, 6, 5, 4, 1, 0, 0};

struct gptoss_constraint_env
{
	const gptoss_tokenizer *tok;
	gptoss_token_trie *trie;
	int			vocab;
	int			words;
	uint32_t   *analysis_mask;	/* [words] ordinary tokens and <|end|> */
	int32_t		tok_assistant;
	int32_t		tok_analysis;
	int32_t		tok_final;
};

struct gptoss_constraint
{
	gptoss_constraint_env *env;
	gptoss_json_grammar *g;		/* NULL: budget only */
	path_phase	phase;
	int			budget;			/* free tokens before the final message; < 0: none */
	int			used;			/* free tokens taken before the final message */
	int			doc_cost;		/* tokens of the cheapest document (0 without a grammar) */
	gptoss_json_state js;		/* document so far */
	gptoss_buffer queue;		/* int32_t: forced tokens of a completion, [n_queue] in use */
	int			n_queue;
	int			q_pos;			/* next queued token; the queue is active while q_pos < n_queue */
	int32_t		last_forced;	/* token the last gptoss_constraint_next forced, or -1 */
	int			max_text;		/* longest key or literal of the grammar */
	bool		force_all;		/* max_new only holds the cheapest document: force everything */
};

/* Id of a word that must encode as one ordinary token. */
static int32_t
single_token(const gptoss_tokenizer *tok, const char *word, gptoss_error *err)
{
	int32_t    *ids = NULL;
	int			n = gptoss_tokenizer_encode(tok, word, strlen(word), &ids, err);
	int32_t		id = n == 1 ? ids[0] : -1;

	free(ids);
	if (n >= 0 && id < 0)
		gptoss_errorf(err, "tokenizer encodes \"%s\" as %d tokens, not one", word, n);
	return id;
}

/* The trie, the scratch space and the path's ids. */
gptoss_constraint_env *
gptoss_constraint_env_build(const gptoss_tokenizer *tok, int vocab, gptoss_error *err)
{
	gptoss_constraint_env *env = calloc(1, sizeof(*env));
	int			n_ids = gptoss_tokenizer_vocab_size(tok);

	if (env == NULL)
	{
		gptoss_errorf(err, "out of memory for constrained decoding");
		return NULL;
	}
	env->tok = tok;
	env->vocab = vocab;
	env->words = gptoss_mask_words(vocab);
	env->trie = gptoss_token_trie_build(tok, vocab, err);
	if (env->trie == NULL)
		goto fail;
	env->analysis_mask = calloc((size_t) env->words, sizeof(uint32_t));
	if (env->analysis_mask == NULL)
	{
		gptoss_errorf(err, "out of memory for constrained decoding");
		goto fail;
	}
	for (int32_t id = 0; id < n_ids; id++)
		if (gptoss_tokenizer_is_valid(tok, id) && !gptoss_tokenizer_is_special(tok, id))
			gptoss_mask_set(env->analysis_mask, id);
	gptoss_mask_set(env->analysis_mask, GPTOSS_TOK_END);
	if ((env->tok_assistant = single_token(tok, "assistant", err)) < 0 ||
		(env->tok_analysis = single_token(tok, "analysis", err)) < 0 ||
		(env->tok_final = single_token(tok, "final", err)) < 0)
		goto fail;
	return env;
fail:
	gptoss_constraint_env_free(env);
	return NULL;
}

void
gptoss_constraint_env_free(gptoss_constraint_env *env)
{
	if (env == NULL)
		return;
	gptoss_token_trie_free(env->trie);
	free(env->analysis_mask);
	free(env);
}

/* Words of a mask. */
int
gptoss_constraint_env_mask_words(const gptoss_constraint_env *env)
{
	return env->words;
}

/* Scratch space for one calling thread. */
gptoss_token_trie_scratch *
gptoss_constraint_env_scratch(const gptoss_constraint_env *env)
{
	return gptoss_token_trie_scratch_new(env->trie);
}

/* A piece's cost: the tokens of its longest-match tokenization. */
static int
token_cost(const char *text, int len, void *ctx)
{
	return gptoss_token_trie_count(ctx, text, len);
}

/*
 * Fills the queue with a cheapest completion of the document, tokenized
 * piece by piece (so it takes exactly its cost), or as one text when whole;
 * returns its length or -1.
 */
static int
queue_completion(gptoss_constraint *c, bool whole, gptoss_error *err)
{
	int			rest = gptoss_json_state_shortest(c->g, &c->js);
	/* a piece is at most one key or literal: cost <= bytes <= cost * max_text */
	int			cap = rest * (c->max_text > 1 ? c->max_text : 1) + 1;
	char	   *bytes = malloc((size_t) cap);
	int		   *ends = malloc((size_t) (rest + 1) * sizeof(int));
	int			len,
				n_pieces,
				n = 0;

	if (bytes == NULL || ends == NULL)
	{
		free(bytes);
		free(ends);
		return gptoss_errorf(err, "out of memory completing a JSON document (%d tokens)", rest);
	}
	len = gptoss_json_state_completion(c->g, &c->js, bytes, cap, ends, rest + 1, &n_pieces);
	if (len >= 0 && gptoss_buffer_reserve(&c->queue, (size_t) rest * sizeof(int32_t), NULL) < 0)
		len = -1;
	if (whole && len >= 0)
	{
		/* one piece: the whole text */
		ends[0] = len;
		n_pieces = len > 0 ? 1 : 0;
	}
	for (int k = 0, start = 0; len >= 0 && k < n_pieces; start = ends[k++])
	{
		int			got = gptoss_token_trie_tokenize(c->env->trie, bytes + start, ends[k] - start,
													 GPTOSS_BUFFER_AT(&c->queue, int32_t, n), rest - n);

		if (got < 0)
			len = -1;
		else
			n += got;
	}
	free(bytes);
	free(ends);
	if (len < 0 || (whole ? n > rest : n != rest))
		return gptoss_errorf(err, "internal error: no completion of the JSON document (%d tokens for a cost of %d)",
							 n, rest);
	c->n_queue = n;
	c->q_pos = 0;
	return n;
}

/* The next queued token. */
static inline int32_t
queue_head(const gptoss_constraint *c)
{
	return *GPTOSS_BUFFER_AT(&c->queue, int32_t, c->q_pos);
}

/* A constraint for one request. */
gptoss_constraint *
gptoss_constraint_create(gptoss_constraint_env *env, gptoss_json_grammar *grammar, bool raw,
						 int reasoning_budget, int max_tokens, int max_new, gptoss_error *err)
{
	gptoss_constraint *c = calloc(1, sizeof(*c));

	if (c == NULL)
	{
		gptoss_json_grammar_free(grammar);
		gptoss_errorf(err, "out of memory for a constrained request");
		return NULL;
	}
	c->env = env;
	c->g = grammar;
	c->phase = raw ? PATH_FINAL : PATH_HEADER;
	c->budget = reasoning_budget;
	c->last_forced = -1;
	if (grammar != NULL)
	{
		int			doc_tokens;
		int			need;

		if (gptoss_json_grammar_set_piece_cost(grammar, token_cost, env->trie, err) < 0)
			goto fail;
		c->doc_cost = gptoss_json_grammar_min_length(grammar);
		c->max_text = gptoss_json_grammar_max_text(grammar);
		gptoss_json_state_init(grammar, &c->js);
		doc_tokens = queue_completion(c, true, err);
		if (doc_tokens < 0)
			goto fail;
		c->n_queue = 0;			/* only measured: nothing is forced yet */
		need = doc_tokens + PATH_LEN[c->phase];
		c->force_all = max_new < c->doc_cost + PATH_LEN[c->phase];
		if (max_new < need && max_tokens >= need)
		{
			gptoss_errorf_code(err, GPTOSS_ERR_TOO_LONG,
							   "prompt leaves %d tokens of the context, below the shortest valid document (%d tokens needed)",
							   max_new, need);
			goto fail;
		}
		if (max_new < need)
		{
			if (raw)
				gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								   "max_tokens is below the shortest valid document (%d tokens needed, %d allowed)",
								   need, max_tokens);
			else
				gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								   "max_tokens is below the shortest valid document (%d tokens needed: %d for the document, %d to open the final channel; %d allowed)",
								   need, doc_tokens, PATH_LEN[c->phase], max_tokens);
			goto fail;
		}
	}
	return c;
fail:
	gptoss_constraint_free(c);
	return NULL;
}

void
gptoss_constraint_free(gptoss_constraint *c)
{
	if (c == NULL)
		return;
	gptoss_json_grammar_free(c->g);
	gptoss_buffer_free(&c->queue);
	free(c);
}

/* The path's next token from a phase before the final content. */
static int32_t
path_token(const gptoss_constraint *c)
{
	switch (c->phase)
	{
		case PATH_HEADER:
			return GPTOSS_TOK_CHANNEL;
		case PATH_CHANNEL:
			return c->env->tok_final;
		case PATH_ANALYSIS_OPEN:
		case PATH_FINAL_OPEN:
			return GPTOSS_TOK_MESSAGE;
		case PATH_ANALYSIS:
			return GPTOSS_TOK_END;
		case PATH_AFTER_END:
			return GPTOSS_TOK_START;
		case PATH_ROLE:
			return c->env->tok_assistant;
		case PATH_FINAL:
		case PATH_DONE:
			break;
	}
	return GPTOSS_TOK_RETURN;
}

/* Forces id. */
static int
force(gptoss_constraint *c, int32_t id, int32_t *forced)
{
	*forced = id;
	c->last_forced = id;
	return GPTOSS_NEXT_FORCED;
}

/* What may come next (see constraint.h). */
int
gptoss_constraint_next(gptoss_constraint *c, int left, uint32_t *mask_buf,
					   const uint32_t **mask, int32_t *forced, gptoss_token_trie_scratch *scratch,
					   gptoss_error *err)
{
	gptoss_constraint_env *env = c->env;
	bool		close_now;
	int			rest;

	*mask = NULL;
	*forced = -1;
	c->last_forced = -1;
	if (c->q_pos < c->n_queue)
		return force(c, queue_head(c), forced);
	if (c->phase == PATH_DONE)
		return GPTOSS_NEXT_FREE;
	if (c->phase != PATH_FINAL)
	{
		close_now = c->force_all || (c->budget >= 0 && c->used >= c->budget) ||
			(c->g != NULL && PATH_LEN[c->phase] + c->doc_cost >= left);
		if (c->phase == PATH_ANALYSIS && !close_now)
		{
			*mask = env->analysis_mask;
			return GPTOSS_NEXT_MASK;
		}
		if (c->phase == PATH_CHANNEL && !close_now &&
			(c->g == NULL || PATH_LEN[PATH_ANALYSIS_OPEN] + c->doc_cost < left))
		{
			memset(mask_buf, 0, (size_t) env->words * sizeof(uint32_t));
			gptoss_mask_set(mask_buf, env->tok_analysis);
			gptoss_mask_set(mask_buf, env->tok_final);
			*mask = mask_buf;
			return GPTOSS_NEXT_MASK;
		}
		return force(c, path_token(c), forced);
	}
	if (c->g == NULL)
		return GPTOSS_NEXT_FREE;
	if (gptoss_json_state_closed(&c->js))
		return force(c, GPTOSS_TOK_RETURN, forced);
	if (c->force_all)
	{
		/* the document as one text: its tokenization is the shortest there is */
		if (queue_completion(c, true, err) < 1)
			return -1;
		return force(c, queue_head(c), forced);
	}
	rest = gptoss_json_state_shortest(c->g, &c->js);
	if (rest < left &&
		gptoss_token_trie_json_mask(env->trie, c->g, &c->js, left - 1, mask_buf, scratch))
	{
		if (gptoss_json_state_accepting(c->g, &c->js))
			gptoss_mask_set(mask_buf, GPTOSS_TOK_RETURN);
		*mask = mask_buf;
		return GPTOSS_NEXT_MASK;
	}
	/* no room for anything but a shortest completion (or nothing else fits) */
	if (rest == 0)
		return force(c, GPTOSS_TOK_RETURN, forced);
	if (queue_completion(c, false, err) < 1)
		return -1;
	return force(c, queue_head(c), forced);
}

/* Takes the sampled token (see constraint.h). */
int
gptoss_constraint_accept(gptoss_constraint *c, int32_t id)
{
	bool		was_forced = c->last_forced >= 0 && c->last_forced == id;
	path_phase	before = c->phase;
	path_phase	next = c->phase;
	gptoss_constraint_env *env = c->env;

	c->last_forced = -1;
	switch (c->phase)
	{
		case PATH_HEADER:
			if (id != GPTOSS_TOK_CHANNEL)
				return -1;
			next = PATH_CHANNEL;
			break;
		case PATH_CHANNEL:
			if (id == env->tok_analysis)
				next = PATH_ANALYSIS_OPEN;
			else if (id == env->tok_final)
				next = PATH_FINAL_OPEN;
			else
				return -1;
			break;
		case PATH_ANALYSIS_OPEN:
		case PATH_FINAL_OPEN:
			if (id != GPTOSS_TOK_MESSAGE)
				return -1;
			next = c->phase == PATH_ANALYSIS_OPEN ? PATH_ANALYSIS : PATH_FINAL;
			break;
		case PATH_ANALYSIS:
			if (id == GPTOSS_TOK_END)
				next = PATH_AFTER_END;
			else if (!gptoss_mask_test(env->analysis_mask, id))
				return -1;
			break;
		case PATH_AFTER_END:
			if (id != GPTOSS_TOK_START)
				return -1;
			next = PATH_ROLE;
			break;
		case PATH_ROLE:
			if (id != env->tok_assistant)
				return -1;
			next = PATH_HEADER;
			break;
		case PATH_FINAL:
			if (c->g == NULL)
				break;
			if (id == GPTOSS_TOK_RETURN)
			{
				if (!gptoss_json_state_accepting(c->g, &c->js))
					return -1;
				next = PATH_DONE;
			}
			else
			{
				gptoss_json_state s;
				size_t		len;
				const char *bytes;

				if (id < 0 || id >= env->vocab || !gptoss_mask_test(env->analysis_mask, id) ||
					id == GPTOSS_TOK_END)
					return -1;
				bytes = gptoss_tokenizer_token_bytes(env->tok, id, &len);
				gptoss_json_state_copy(&s, &c->js);
				if (bytes == NULL || !gptoss_json_state_feed_bytes(c->g, &s, bytes, len))
					return -1;
				gptoss_json_state_copy(&c->js, &s);
			}
			break;
		case PATH_DONE:
			break;
	}
	if (c->q_pos < c->n_queue)
	{
		if (queue_head(c) == id)
			c->q_pos++;
		else
			c->n_queue = c->q_pos = 0;
	}
	if (before != PATH_FINAL && before != PATH_DONE && !was_forced)
		c->used++;
	c->phase = next;
	return 0;
}

/* The next token on the shortest way to the end. */
int32_t
gptoss_constraint_repair(gptoss_constraint *c, gptoss_error *err)
{
	int32_t		id;

	c->last_forced = -1;
	if (c->q_pos < c->n_queue)
		id = queue_head(c);
	else if (c->phase != PATH_FINAL && c->phase != PATH_DONE)
		id = path_token(c);
	else if (c->g == NULL || c->phase == PATH_DONE || gptoss_json_state_shortest(c->g, &c->js) == 0)
		id = GPTOSS_TOK_RETURN;
	else
	{
		if (queue_completion(c, false, err) < 1)
			return -1;
		id = queue_head(c);
	}
	c->last_forced = id;
	return id;
}
