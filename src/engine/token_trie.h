/*
 * token_trie.h: the tokenizer's ordinary tokens as a byte trie, walked
 * against a JSON matcher state to find the tokens that may come next.
 *
 * A token is allowed when the matcher accepts all its bytes and the state it
 * leads to can still be finished within a given number of bytes.  Tokens
 * that share a prefix share the work of matching it, and a subtree whose
 * prefix is rejected is skipped whole.  String content, where nearly every
 * token is allowed, does not walk the trie: which tokens stay inside a
 * string, how many characters they add, and where the others close it is a
 * property of the vocabulary alone, computed once when the trie is built.
 *
 * Masks are bit arrays over the model's vocabulary: bit (id % 32) of word
 * (id / 32) is set when the token may be sampled.
 */
#ifndef GPTOSS_TOKEN_TRIE_H
#define GPTOSS_TOKEN_TRIE_H

#include "json_grammar.h"
#include "tokenizer.h"

typedef struct gptoss_token_trie gptoss_token_trie;

/* Words of a mask over vocab ids. */
static inline int
gptoss_mask_words(int vocab)
{
	return (vocab + 31) / 32;
}

static inline void
gptoss_mask_set(uint32_t *mask, int32_t id)
{
	mask[id >> 5] |= 1u << (id & 31);
}

static inline bool
gptoss_mask_test(const uint32_t *mask, int32_t id)
{
	return (mask[id >> 5] >> (id & 31)) & 1u;
}

/*
 * Builds the trie of tok's ordinary tokens with masks of vocab bits (the
 * model's vocabulary, at least the tokenizer's).  NULL with err set on
 * failure (out of memory, or a byte without a one-byte token).
 */
gptoss_token_trie *gptoss_token_trie_build(const gptoss_tokenizer *tok, int vocab, gptoss_error *err);
void		gptoss_token_trie_free(gptoss_token_trie *tt);

/* Mask size in bits. */
int			gptoss_token_trie_vocab(const gptoss_token_trie *tt);

/* Scratch space for one thread computing masks. */
typedef struct gptoss_token_trie_scratch gptoss_token_trie_scratch;

gptoss_token_trie_scratch *gptoss_token_trie_scratch_new(const gptoss_token_trie *tt);
void		gptoss_token_trie_scratch_free(gptoss_token_trie_scratch *sc);

/*
 * Sets in mask (cleared first) the ordinary tokens whose bytes s accepts and
 * after which the cheapest completion costs at most max_rest.  Returns true
 * when it allows any token.
 */
bool		gptoss_token_trie_json_mask(const gptoss_token_trie *tt, const gptoss_json_grammar *g,
										const gptoss_json_state *s, int max_rest, uint32_t *mask,
										gptoss_token_trie_scratch *sc);

/*
 * Tokenizes bytes greedily (longest token first) into out (cap ids); returns
 * the count, or -1 when cap is too small.  Always succeeds otherwise: every
 * byte has a one-byte token.
 */
int			gptoss_token_trie_tokenize(const gptoss_token_trie *tt, const char *bytes, int n,
									   int32_t *out, int cap);

/* Tokens gptoss_token_trie_tokenize makes of bytes. */
int			gptoss_token_trie_count(const gptoss_token_trie *tt, const char *bytes, int n);

#endif							/* GPTOSS_TOKEN_TRIE_H */
