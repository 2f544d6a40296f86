/*
 * constraint.h: what one request may sample next, for structured output and
 * the reasoning budget.
 *
 * In harmony mode the answer follows the path
 *   <|channel|>analysis<|message|>...<|end|><|start|>assistant   (any number of times)
 *   <|channel|>final<|message|>{document}<|return|>
 * A constraint tracks where the request is on that path.  Before the final
 * message it allows only the path's tokens (free text and <|end|> inside an
 * analysis message) and, when the reasoning budget is spent or the tokens
 * left only just hold the way into the final channel plus the shortest
 * document, forces the path's next token.  Inside the final message it allows
 * the tokens that keep the text a prefix of a valid document (token_trie.h)
 * whose shortest completion still fits in the tokens left; when it no longer
 * would, it forces a shortest completion.  After a closed document only
 * <|return|> may follow.  In raw mode the document starts at once.
 *
 * A constraint without a grammar enforces only the reasoning budget and
 * leaves the final message free.
 */
#ifndef GPTOSS_CONSTRAINT_H
#define GPTOSS_CONSTRAINT_H

#include "json_grammar.h"
#include "token_trie.h"

/* Per-engine data shared by all constraints: the token trie and the path's token ids. */
typedef struct gptoss_constraint_env gptoss_constraint_env;

/* Builds the trie of tok's vocabulary with masks of vocab bits. */
gptoss_constraint_env *gptoss_constraint_env_build(const gptoss_tokenizer *tok, int vocab,
												   gptoss_error *err);
void		gptoss_constraint_env_free(gptoss_constraint_env *env);

/* Words of a mask. */
int			gptoss_constraint_env_mask_words(const gptoss_constraint_env *env);

/* Scratch space for one thread calling gptoss_constraint_next (free with gptoss_token_trie_scratch_free). */
gptoss_token_trie_scratch *gptoss_constraint_env_scratch(const gptoss_constraint_env *env);

typedef struct gptoss_constraint gptoss_constraint;

/*
 * A constraint for one request that may generate max_new tokens: its
 * max_tokens, or less when the context leaves less after the prompt.  grammar
 * (may be NULL) becomes the constraint's and is freed with it, also on
 * failure.  reasoning_budget < 0: no budget.  When max_new cannot hold the
 * shortest valid document (plus the three tokens that open the final channel
 * in harmony mode), fails with GPTOSS_ERR_INVALID if max_tokens is what is
 * too small, else with GPTOSS_ERR_TOO_LONG (the prompt left too little of the
 * context: a failure of this prompt, not of the parameters).
 */
gptoss_constraint *gptoss_constraint_create(gptoss_constraint_env *env, gptoss_json_grammar *grammar,
											bool raw, int reasoning_budget, int max_tokens,
											int max_new, gptoss_error *err);
void		gptoss_constraint_free(gptoss_constraint *c);

typedef enum gptoss_next_kind
{
	GPTOSS_NEXT_FREE,			/* any token */
	GPTOSS_NEXT_FORCED,			/* exactly *forced */
	GPTOSS_NEXT_MASK			/* the tokens set in *mask */
} gptoss_next_kind;

/*
 * What may come next with left >= 1 tokens still allowed.  For MASK, *mask
 * points into mask_buf (the caller's, gptoss_constraint_env_mask_words
 * words) or at a shared constant mask.  scratch is the calling thread's:
 * different constraints may be asked at once from different threads.
 * Returns -1 with err on failure.
 */
int			gptoss_constraint_next(gptoss_constraint *c, int left, uint32_t *mask_buf,
								   const uint32_t **mask, int32_t *forced,
								   gptoss_token_trie_scratch *scratch, gptoss_error *err);

/* Takes the token that was sampled (or forced).  Returns -1, state unchanged, when it is not allowed. */
int			gptoss_constraint_accept(gptoss_constraint *c, int32_t id);

/*
 * A token that is always allowed now: the next one on the shortest way to the
 * end (used when a sampled token was not allowed, e.g. after NaN logits).
 * Returns -1 with err on failure.
 */
int32_t		gptoss_constraint_repair(gptoss_constraint *c, gptoss_error *err);

#endif							/* GPTOSS_CONSTRAINT_H */
