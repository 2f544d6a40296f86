/*
 * token_trie.c: the vocabulary's byte trie and allowed-token masks.
 *
 * The trie is stored in preorder: one entry per node with its byte, depth,
 * token id (or -1) and the size of its subtree.  Walking it is a single pass
 * over the array that keeps one matcher state per depth: entry i's state is
 * its parent's (depth - 1) after its byte, and a rejected byte skips the
 * whole subtree.  Tokens sorted by their bytes give this preorder directly.
 *
 * String content tables.  From the plain state of string content every
 * token either stays inside the string (adding some characters and maybe
 * ending inside an escape or a UTF-8 sequence), closes it at a known byte
 * (with its characters before that quote and the bytes after it), or is not
 * string content.  "stay[c]" holds the tokens that stay inside with at most c
 * characters, so a string with room for c more characters allows stay[c] and
 * costs one copy.  Closing tokens are grouped by what follows the quote (a
 * few hundred distinct tails such as ",", "}", "\":"): each tail is matched
 * once after the closing quote, and a closing token is allowed when its tail
 * is and its characters fit.
 */
#include "token_trie.h"

#include <stdlib.h>
#include <string.h>

/* One trie node in preorder. */
typedef struct trie_entry
{
	int32_t		token;			/* token ending here, or -1 */
	uint32_t	skip;			/* entries in the subtree, this one included */
	uint16_t	depth;			/* 1 for the first byte of a token */
	uint8_t		byte;
} trie_entry;

/* A token that closes string content. */
typedef struct exit_token
{
	int32_t		token;
	int32_t		tail;			/* index of its bytes after the quote in the tail table */
	int32_t		chars;			/* characters before the quote */
} exit_token;

struct gptoss_token_trie
{
	int			vocab;			/* mask bits */
	int			words;
	trie_entry *nodes;			/* [n_nodes] preorder */
	int			n_nodes;
	int			max_len;		/* longest token in bytes */
	int32_t		root_child[256];	/* entry of each first byte, -1 if none */
	/* string content tables */
	uint32_t   *stay;			/* [max_chars + 1][words] */
	int			max_chars;
	int32_t    *open_end;		/* [n_open_end] tokens that stay inside but end in an escape or a UTF-8 sequence */
	uint8_t    *open_end_bytes;	/* [n_open_end] bytes still needed after them */
	int			n_open_end;
	exit_token *exits;			/* [n_exits] */
	int			n_exits;
	char	  **tails;			/* [n_tails] distinct bytes after a closing quote */
	int		   *tail_len;
	int			n_tails;
};

struct gptoss_token_trie_scratch
{
	gptoss_json_state *states;	/* [max_len + 1] one per trie depth */
	uint8_t    *tail_ok;		/* [n_tails] */
	uint32_t   *thread_mask;	/* [words] one thread's mask when there are several */
};

/* A token's bytes, for sorting. */
typedef struct token_bytes
{
	const char *bytes;
	int			len;
	int32_t		id;
} token_bytes;

/* Byte-wise order of (x, xlen) and (y, ylen), a prefix first, then of the ids. */
static int
cmp_bytes_id(const char *x, int xlen, int32_t xid, const char *y, int ylen, int32_t yid)
{
	int			c = memcmp(x, y, (size_t) (xlen < ylen ? xlen : ylen));

	if (c != 0)
		return c;
	if (xlen != ylen)
		return xlen < ylen ? -1 : 1;
	return xid < yid ? -1 : xid > yid;
}

/* Byte-wise order, a prefix first. */
static int
cmp_token_bytes(const void *a, const void *b)
{
	const token_bytes *x = a;
	const token_bytes *y = b;

	return cmp_bytes_id(x->bytes, x->len, x->id, y->bytes, y->len, y->id);
}

/* A closing token with its tail, for grouping by tail. */
typedef struct exit_work
{
	int32_t		token;
	int32_t		chars;
	const char *tail;
	int			tail_len;
} exit_work;

/* Order of tails (then tokens). */
static int
cmp_exit_work(const void *a, const void *b)
{
	const exit_work *x = a;
	const exit_work *y = b;

	return cmp_bytes_id(x->tail, x->tail_len, x->token, y->tail, y->tail_len, y->token);
}

/* The preorder entries from tokens sorted by bytes. */
static int
build_nodes(gptoss_token_trie *tt, const token_bytes *toks, int n_toks, gptoss_error *err)
{
	gptoss_buffer nodes = {0};	/* trie_entry */
	int32_t    *open;			/* [max_len + 1] entry at each depth of the current path */
	const token_bytes *prev = NULL;
	int			n = 0;

	open = malloc((size_t) (tt->max_len + 1) * sizeof(int32_t));
	if (open == NULL ||
		gptoss_buffer_reserve(&nodes, ((size_t) n_toks * 2 + 256) * sizeof(trie_entry), NULL) < 0)
	{
		free(open);
		return gptoss_errorf(err, "out of memory building the token trie");
	}
	for (int i = 0; i < n_toks; i++)
	{
		const token_bytes *t = &toks[i];
		int			common = 0;

		if (prev != NULL)
			while (common < prev->len && common < t->len && prev->bytes[common] == t->bytes[common])
				common++;
		if (prev != NULL && common == t->len)
			continue;			/* same bytes as the previous token: the first id keeps them */
		/* close the entries of the previous path below the common prefix */
		if (prev != NULL)
			for (int d = prev->len; d > common; d--)
				GPTOSS_BUFFER_AT(&nodes, trie_entry, open[d])->skip = (uint32_t) (n - open[d]);
		for (int d = common + 1; d <= t->len; d++)
		{
			trie_entry	e = {.token = -1, .depth = (uint16_t) d, .byte = (uint8_t) t->bytes[d - 1]};

			if (gptoss_buffer_append(&nodes, &e, sizeof(e), NULL) < 0)
			{
				free(open);
				gptoss_buffer_free(&nodes);
				return gptoss_errorf(err, "out of memory building the token trie");
			}
			open[d] = n++;
			if (d == 1)
				tt->root_child[e.byte] = open[d];
		}
		GPTOSS_BUFFER_AT(&nodes, trie_entry, open[t->len])->token = t->id;
		prev = t;
	}
	if (prev != NULL)
		for (int d = prev->len; d >= 1; d--)
			GPTOSS_BUFFER_AT(&nodes, trie_entry, open[d])->skip = (uint32_t) (n - open[d]);
	free(open);
	tt->nodes = (trie_entry *) nodes.data;
	tt->n_nodes = n;
	return 0;
}

/* The string content tables (see the file header). */
static int
build_string_tables(gptoss_token_trie *tt, const token_bytes *toks, int n_toks, gptoss_error *err)
{
	int32_t    *stay_chars = malloc((size_t) n_toks * sizeof(int32_t));
	exit_work  *work = malloc((size_t) n_toks * sizeof(exit_work));
	gptoss_buffer open_end = {0};	/* int32_t, then tt->open_end */
	gptoss_buffer open_end_bytes = {0};	/* uint8_t, then tt->open_end_bytes */
	int			n_work = 0;
	int			rc = -1;

	if (stay_chars == NULL || work == NULL)
		goto oom;
	tt->max_chars = 0;
	for (int i = 0; i < n_toks; i++)
	{
		int			chars,
					pending;
		int			r = gptoss_json_lex_string(toks[i].bytes, toks[i].len, &chars, &pending);

		stay_chars[i] = -1;
		if (r == toks[i].len)
		{
			stay_chars[i] = chars;
			if (chars > tt->max_chars)
				tt->max_chars = chars;
			if (pending > 0)
			{
				uint8_t		need = (uint8_t) pending;

				if (gptoss_buffer_append(&open_end, &toks[i].id, sizeof(int32_t), NULL) < 0 ||
					gptoss_buffer_append(&open_end_bytes, &need, 1, NULL) < 0)
					goto oom;
				tt->n_open_end++;
			}
		}
		else if (r >= 0)
		{
			work[n_work].token = toks[i].id;
			work[n_work].chars = chars;
			work[n_work].tail = toks[i].bytes + r + 1;
			work[n_work].tail_len = toks[i].len - r - 1;
			n_work++;
		}
	}
	tt->stay = calloc((size_t) (tt->max_chars + 1) * tt->words, sizeof(uint32_t));
	if (tt->stay == NULL)
		goto oom;
	for (int i = 0; i < n_toks; i++)
		if (stay_chars[i] >= 0)
			gptoss_mask_set(tt->stay + (size_t) stay_chars[i] * tt->words, toks[i].id);
	for (int c = 1; c <= tt->max_chars; c++)
	{
		uint32_t   *cur = tt->stay + (size_t) c * tt->words;
		const uint32_t *below = cur - tt->words;

		for (int w = 0; w < tt->words; w++)
			cur[w] |= below[w];
	}

	qsort(work, (size_t) n_work, sizeof(exit_work), cmp_exit_work);
	tt->exits = malloc((size_t) (n_work > 0 ? n_work : 1) * sizeof(exit_token));
	tt->tails = malloc((size_t) (n_work > 0 ? n_work : 1) * sizeof(char *));
	tt->tail_len = malloc((size_t) (n_work > 0 ? n_work : 1) * sizeof(int));
	if (tt->exits == NULL || tt->tails == NULL || tt->tail_len == NULL)
		goto oom;
	for (int i = 0; i < n_work; i++)
	{
		if (i == 0 || work[i].tail_len != work[i - 1].tail_len ||
			memcmp(work[i].tail, work[i - 1].tail, (size_t) work[i].tail_len) != 0)
		{
			char	   *copy = malloc((size_t) work[i].tail_len + 1);

			if (copy == NULL)
				goto oom;
			memcpy(copy, work[i].tail, (size_t) work[i].tail_len);
			tt->tails[tt->n_tails] = copy;
			tt->tail_len[tt->n_tails] = work[i].tail_len;
			tt->n_tails++;
		}
		tt->exits[i].token = work[i].token;
		tt->exits[i].chars = work[i].chars;
		tt->exits[i].tail = tt->n_tails - 1;
	}
	tt->n_exits = n_work;
	rc = 0;
	goto out;
oom:
	gptoss_errorf(err, "out of memory building the token trie");
out:
	tt->open_end = (int32_t *) open_end.data;
	tt->open_end_bytes = (uint8_t *) open_end_bytes.data;
	free(stay_chars);
	free(work);
	return rc;
}

/* Builds the trie and the string tables of tok's ordinary tokens. */
gptoss_token_trie *
gptoss_token_trie_build(const gptoss_tokenizer *tok, int vocab, gptoss_error *err)
{
	int			n_ids = gptoss_tokenizer_vocab_size(tok);
	token_bytes *toks;
	int			n_toks = 0;
	gptoss_token_trie *tt;

	if (vocab < n_ids)
	{
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
						   "token masks of %d bits cannot cover the tokenizer's %d ids", vocab, n_ids);
		return NULL;
	}
	tt = calloc(1, sizeof(*tt));
	toks = malloc((size_t) (n_ids > 0 ? n_ids : 1) * sizeof(token_bytes));
	if (tt == NULL || toks == NULL)
	{
		free(tt);
		free(toks);
		gptoss_errorf(err, "out of memory building the token trie");
		return NULL;
	}
	tt->vocab = vocab;
	tt->words = gptoss_mask_words(vocab);
	for (int b = 0; b < 256; b++)
		tt->root_child[b] = -1;
	for (int32_t id = 0; id < n_ids; id++)
	{
		size_t		len;
		const char *bytes;

		if (!gptoss_tokenizer_is_valid(tok, id) || gptoss_tokenizer_is_special(tok, id))
			continue;
		bytes = gptoss_tokenizer_token_bytes(tok, id, &len);
		if (bytes == NULL || len == 0 || len > 65535)
			continue;
		toks[n_toks].bytes = bytes;
		toks[n_toks].len = (int) len;
		toks[n_toks].id = id;
		if ((int) len > tt->max_len)
			tt->max_len = (int) len;
		n_toks++;
	}
	qsort(toks, (size_t) n_toks, sizeof(token_bytes), cmp_token_bytes);
	if (build_nodes(tt, toks, n_toks, err) < 0 ||
		build_string_tables(tt, toks, n_toks, err) < 0)
		goto fail;
	for (int b = 0; b < 256; b++)
		if (tt->root_child[b] < 0 || tt->nodes[tt->root_child[b]].token < 0)
		{
			gptoss_errorf(err, "tokenizer has no one-byte token for byte 0x%02x", b);
			goto fail;
		}
	free(toks);
	return tt;
fail:
	free(toks);
	gptoss_token_trie_free(tt);
	return NULL;
}

/* Frees the trie and its tables. */
void
gptoss_token_trie_free(gptoss_token_trie *tt)
{
	if (tt == NULL)
		return;
	free(tt->nodes);
	free(tt->stay);
	free(tt->open_end);
	free(tt->open_end_bytes);
	free(tt->exits);
	for (int i = 0; i < tt->n_tails; i++)
		free(tt->tails[i]);
	free(tt->tails);
	free(tt->tail_len);
	free(tt);
}

/* Mask size in bits. */
int
gptoss_token_trie_vocab(const gptoss_token_trie *tt)
{
	return tt->vocab;
}

/* Scratch states for one walker. */
gptoss_token_trie_scratch *
gptoss_token_trie_scratch_new(const gptoss_token_trie *tt)
{
	gptoss_token_trie_scratch *sc = calloc(1, sizeof(*sc));

	if (sc == NULL)
		return NULL;
	sc->states = malloc((size_t) (tt->max_len + 1) * sizeof(gptoss_json_state));
	sc->tail_ok = malloc((size_t) (tt->n_tails > 0 ? tt->n_tails : 1));
	sc->thread_mask = malloc((size_t) tt->words * sizeof(uint32_t));
	if (sc->states == NULL || sc->tail_ok == NULL || sc->thread_mask == NULL)
	{
		gptoss_token_trie_scratch_free(sc);
		return NULL;
	}
	return sc;
}

void
gptoss_token_trie_scratch_free(gptoss_token_trie_scratch *sc)
{
	if (sc == NULL)
		return;
	free(sc->states);
	free(sc->tail_ok);
	free(sc->thread_mask);
	free(sc);
}

/* The whole trie against s; true when a token is allowed. */
static bool
walk_trie(const gptoss_token_trie *tt, const gptoss_json_grammar *g, const gptoss_json_state *s,
		  int max_rest, uint32_t *mask, gptoss_token_trie_scratch *sc)
{
	gptoss_json_state *st = sc->states;
	bool		allowed = false;

	gptoss_json_state_copy(&st[0], s);
	for (int i = 0; i < tt->n_nodes;)
	{
		const trie_entry *e = &tt->nodes[i];

		if (!gptoss_json_state_feed(g, &st[e->depth - 1], e->byte, &st[e->depth]))
		{
			i += (int) e->skip;
			continue;
		}
		if (e->token >= 0 && gptoss_json_state_shortest(g, &st[e->depth]) <= max_rest)
		{
			gptoss_mask_set(mask, e->token);
			allowed = true;
		}
		i++;
	}
	return allowed;
}

/*
 * Plain string content, one thread at a time: the stay table (without the
 * tokens whose open escape or UTF-8 sequence would not fit), plus the closing
 * tokens whose tails fit.
 */
static void
string_mask(const gptoss_token_trie *tt, const gptoss_json_grammar *g, const gptoss_json_state *s,
			const int32_t *room, int max_rest, uint32_t *mask, gptoss_token_trie_scratch *sc)
{
	for (int i = 0; i < s->n; i++)
	{
		int			c = room[i] < tt->max_chars ? room[i] : tt->max_chars;
		const uint32_t *stay = tt->stay + (size_t) c * tt->words;
		uint32_t   *out = s->n == 1 ? mask : sc->thread_mask;
		gptoss_json_state one,
					closed,
					cur,
					next;
		int			slack;

		gptoss_json_state_thread(s, i, &one);
		/* a token that stays inside adds the bytes its open sequence still needs */
		slack = max_rest - gptoss_json_state_shortest(g, &one);
		if (slack >= 0)
			memcpy(out, stay, (size_t) tt->words * sizeof(uint32_t));
		else
			memset(out, 0, (size_t) tt->words * sizeof(uint32_t));
		if (slack >= 0 && slack < 3)
			for (int k = 0; k < tt->n_open_end; k++)
				if (tt->open_end_bytes[k] > slack)
					out[tt->open_end[k] >> 5] &= ~(1u << (tt->open_end[k] & 31));
		if (gptoss_json_state_feed(g, &one, '"', &closed))
			for (int k = 0; k < tt->n_tails; k++)
			{
				bool		ok = true;

				gptoss_json_state_copy(&cur, &closed);
				for (int b = 0; b < tt->tail_len[k] && ok; b++)
				{
					ok = gptoss_json_state_feed(g, &cur, (uint8_t) tt->tails[k][b], &next);
					if (ok)
						gptoss_json_state_copy(&cur, &next);
				}
				sc->tail_ok[k] = ok && gptoss_json_state_shortest(g, &cur) <= max_rest;
			}
		else
			memset(sc->tail_ok, 0, (size_t) tt->n_tails);
		for (int k = 0; k < tt->n_exits; k++)
		{
			const exit_token *x = &tt->exits[k];

			if (sc->tail_ok[x->tail] && x->chars <= room[i])
				gptoss_mask_set(out, x->token);
		}
		if (out != mask)
			for (int w = 0; w < tt->words; w++)
				mask[w] |= out[w];
	}
}

/* Allowed ordinary tokens after s (see token_trie.h). */
bool
gptoss_token_trie_json_mask(const gptoss_token_trie *tt, const gptoss_json_grammar *g,
							const gptoss_json_state *s, int max_rest, uint32_t *mask,
							gptoss_token_trie_scratch *sc)
{
	int32_t		room[GPTOSS_JSON_MAX_THREADS];
	uint32_t	any = 0;

	memset(mask, 0, (size_t) tt->words * sizeof(uint32_t));
	if (s->n == 0)
		return false;
	if (gptoss_json_state_in_plain_string(g, s, room))
	{
		string_mask(tt, g, s, room, max_rest, mask, sc);
		for (int w = 0; w < tt->words; w++)
			any |= mask[w];
		return any != 0;
	}
	return walk_trie(tt, g, s, max_rest, mask, sc);
}

/* The longest token at bytes[0 .. n) (n >= 1): its id, and its length in *len. */
static int32_t
longest_token(const gptoss_token_trie *tt, const char *bytes, int n, int *len)
{
	int			node = tt->root_child[(uint8_t) bytes[0]];
	int32_t		best = tt->nodes[node].token;
	int			depth = 1;

	*len = 1;
	while (depth < n)
	{
		int			end = node + (int) tt->nodes[node].skip;
		int			child = -1;

		for (int c = node + 1; c < end; c += (int) tt->nodes[c].skip)
			if (tt->nodes[c].byte == (uint8_t) bytes[depth])
			{
				child = c;
				break;
			}
		if (child < 0)
			break;
		node = child;
		depth++;
		if (tt->nodes[node].token >= 0)
		{
			best = tt->nodes[node].token;
			*len = depth;
		}
	}
	return best;
}

/* Tokens of the longest-match tokenization. */
int
gptoss_token_trie_count(const gptoss_token_trie *tt, const char *bytes, int n)
{
	int			count = 0;

	for (int pos = 0, len; pos < n; pos += len)
	{
		longest_token(tt, bytes + pos, n - pos, &len);
		count++;
	}
	return count;
}

/* Longest-match tokenization over the trie. */
int
gptoss_token_trie_tokenize(const gptoss_token_trie *tt, const char *bytes, int n,
						   int32_t *out, int cap)
{
	int			count = 0;
	int			pos = 0;

	while (pos < n)
	{
		int			len;
		int32_t		id = longest_token(tt, bytes + pos, n - pos, &len);

		if (count >= cap)
			return -1;
		out[count++] = id;
		pos += len;
	}
	return count;
}
