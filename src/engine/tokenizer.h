/*
 * tokenizer.h: o200k_harmony byte-level BPE.
 *
 * Loaded from a Hugging Face tokenizer.json: model.vocab gives each token's
 * bytes (GPT-2 byte-to-unicode spelling) and its rank = id; added_tokens gives
 * the special tokens.  Text is split with the o200k pattern (PCRE2, UTF+UCP,
 * JIT) and each piece is merged by lowest rank.  Encoding never produces
 * special tokens: only the harmony renderer inserts them by id.
 */
#ifndef GPTOSS_TOKENIZER_H
#define GPTOSS_TOKENIZER_H

#include <stdbool.h>
#include "common.h"

/* Harmony special token ids. */
#define GPTOSS_TOK_STARTOFTEXT	199998
#define GPTOSS_TOK_ENDOFTEXT	199999
#define GPTOSS_TOK_RETURN		200002
#define GPTOSS_TOK_CONSTRAIN	200003
#define GPTOSS_TOK_CHANNEL		200005
#define GPTOSS_TOK_START		200006
#define GPTOSS_TOK_END			200007
#define GPTOSS_TOK_MESSAGE		200008
#define GPTOSS_TOK_CALL			200012

typedef struct gptoss_tokenizer gptoss_tokenizer;

/* Loads tokenizer.json; NULL with err set on failure. */
gptoss_tokenizer *gptoss_tokenizer_load(const char *path, gptoss_error *err);
void		gptoss_tokenizer_free(gptoss_tokenizer *tok);

/* Number of ids (ordinary + special; the highest id + 1). */
int			gptoss_tokenizer_vocab_size(const gptoss_tokenizer *tok);

/* True when id is an assigned token (ordinary or special). */
bool		gptoss_tokenizer_is_valid(const gptoss_tokenizer *tok, int32_t id);

/* True when id is a special (added) token. */
bool		gptoss_tokenizer_is_special(const gptoss_tokenizer *tok, int32_t id);

/* Byte length of the longest token (bounds the bytes a token count can cover). */
size_t		gptoss_tokenizer_max_token_bytes(const gptoss_tokenizer *tok);

/*
 * Encodes len bytes of UTF-8 text as ordinary tokens (special-token text is
 * plain text).  *ids is malloc'ed (caller frees).  Invalid UTF-8 is encoded
 * byte-wise.  Returns the count, or -1 with err set.
 */
int			gptoss_tokenizer_encode(const gptoss_tokenizer *tok, const char *text, size_t len,
									int32_t **ids, gptoss_error *err);

/*
 * The same, polling intr (may be NULL) every GPTOSS_ENCODE_POLL_PIECES pieces;
 * fails with GPTOSS_ERR_INTERRUPTED (nothing left allocated) when it asks to stop.
 */
#define GPTOSS_ENCODE_POLL_PIECES 4096
int			gptoss_tokenizer_encode_interruptible(const gptoss_tokenizer *tok, const char *text,
												  size_t len, const gptoss_interrupt *intr,
												  int32_t **ids, gptoss_error *err);

/*
 * Bytes of one token: ordinary tokens give their bytes, special tokens their
 * text ("<|end|>").  Returns a pointer owned by the tokenizer (not
 * NUL-terminated) and its length in *len, or NULL for an invalid id.
 */
const char *gptoss_tokenizer_token_bytes(const gptoss_tokenizer *tok, int32_t id, size_t *len);

/*
 * Decodes ids into a malloc'ed NUL-terminated string (length in *len when not
 * NULL).  skip_special drops special tokens instead of writing their text.
 * Returns NULL with err set for an invalid id.
 */
char	   *gptoss_tokenizer_decode(const gptoss_tokenizer *tok, const int32_t *ids, int n,
									bool skip_special, size_t *len, gptoss_error *err);

#endif							/* GPTOSS_TOKENIZER_H */
