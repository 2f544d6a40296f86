/*
 * tokenizer.c: o200k_harmony byte-level BPE, loaded from tokenizer.json.
 *
 * Plan.
 *   Loading.  tokenizer.json is 27 MB, four fifths of it the "merges" list that
 *   byte-level BPE over ranks never needs (a token's rank is its id).  So the
 *   file is read into memory, a small structural scanner finds the members we
 *   use (model.type, model.vocab, added_tokens) without building the rest, and
 *   jansson parses exactly those values.  Every vocab key is the GPT-2
 *   bytes_to_unicode spelling of the token's bytes: each code point maps back
 *   to one byte.  All token bytes (and the special tokens' text) go into one
 *   blob indexed by id, and the ordinary tokens into an open-addressing hash
 *   table of byte strings -> rank.
 *
 *   Encoding.  The text is split with the o200k pattern (PCRE2, UTF + UCP,
 *   JIT).  PCRE2's \s also matches U+180E, which the Unicode White_Space
 *   property (what tiktoken's Rust regex uses for \s) excludes since Unicode
 *   6.3, so the pattern spells \s as that explicit class.  The pattern is
 *   compiled with PCRE2_MATCH_INVALID_UTF: matches never cover invalid UTF-8,
 *   and any bytes between two matches (only invalid sequences can be left
 *   there, since every valid character starts some alternative) form their
 *   own piece and go through the same byte-level BPE.  A piece that is itself
 *   a token is emitted directly; otherwise it starts as single bytes and the
 *   adjacent pair whose concatenation has the lowest rank is merged (leftmost
 *   on ties) until no pair is a token.  The merge loop keeps the parts as a
 *   linked list over byte positions and the candidate pairs in a binary heap
 *   ordered by (rank, position) with lazy invalidation, so a piece of n bytes
 *   costs O(n log n) instead of the O(n^2) of rescanning.
 *
 *   Special tokens are never produced by encoding: their text is ordinary
 *   text.  Decoding concatenates token bytes; special tokens give their text
 *   or are skipped.
 *
 * A loaded tokenizer is read-only, so any number of threads may encode and
 * decode with it at once (each encode call owns its PCRE2 match data and work
 * buffers).
 */
#include "tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Ids above this are rejected as a garbled file (the real vocabulary ends at 200018). */
#define MAX_TOKEN_ID (1 << 24)

/* Unicode White_Space, spelled out for use inside a PCRE2 character class. */
#define WS "\\x{09}-\\x{0d}\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"

/* The o200k split pattern (tokenizer.json's pre_tokenizer) with \s and \S written as explicit classes. */
static const char o200k_pattern[] =
	"[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
	"|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
	"|\\p{N}{1,3}"
	"| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n/]*"
	"|[" WS "]*[\\r\\n]+"
	"|[" WS "]+(?![^" WS "])"
	"|[" WS "]+";

/* What an id is. */
enum token_kind
{
	KIND_UNASSIGNED = 0,
	KIND_ORDINARY,
	KIND_SPECIAL
};

/* One slot of the bytes -> rank hash table. */
typedef struct rank_slot
{
	uint32_t	hash;			/* hash of the token's bytes */
	int32_t		id;				/* ordinary token id (= rank), -1 when empty */
} rank_slot;

struct gptoss_tokenizer
{
	int			n_ids;			/* highest assigned id + 1 */
	uint8_t    *id_kind;		/* [n_ids] enum token_kind */
	uint32_t   *id_offset;		/* [n_ids] start of the token's bytes in blob */
	uint32_t   *id_len;			/* [n_ids] length of the token's bytes */
	char	   *blob;			/* [blob_len] bytes of every token, special text included */
	size_t		blob_len;
	rank_slot  *table;			/* [table_mask + 1] ordinary tokens by their bytes */
	uint32_t	table_mask;
	int32_t		byte_id[256];	/* id of each single-byte token */
	size_t		max_token_bytes;	/* longest ordinary token */
	pcre2_code *split_re;		/* compiled o200k pattern (JIT when available) */
};

/* ------------------------------------------------------------------------ */
/* Hashing */

/* Reads 1..7 bytes as the low bytes of a little-endian word. */
static inline uint64_t
load_tail(const unsigned char *p, size_t n)
{
	uint64_t	w = 0;

	for (size_t i = 0; i < n; i++)
		w |= (uint64_t) p[i] << (8 * i);
	return w;
}

/* 32-bit hash of a byte string, eight bytes per multiply; mixes high bits down for masking. */
static inline uint32_t
hash_bytes(const unsigned char *p, size_t n)
{
	uint64_t	h = 0x9e3779b97f4a7c15ULL ^ (uint64_t) n;

	while (n >= 8)
	{
		uint64_t	w;

		memcpy(&w, p, 8);
		h = (h ^ w) * 0xbf58476d1ce4e5b9ULL;
		h ^= h >> 31;
		p += 8;
		n -= 8;
	}
	if (n > 0)
		h = (h ^ load_tail(p, n)) * 0x94d049bb133111ebULL;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return (uint32_t) h;
}

/* Rank (= id) of the ordinary token with exactly these bytes, or -1. */
static inline int32_t
lookup_rank(const gptoss_tokenizer *tok, const unsigned char *p, size_t n)
{
	uint32_t	h = hash_bytes(p, n);

	for (uint32_t i = h & tok->table_mask;; i = (i + 1) & tok->table_mask)
	{
		const rank_slot *s = &tok->table[i];

		if (s->id < 0)
			return -1;
		if (s->hash == h && tok->id_len[s->id] == n &&
			memcmp(tok->blob + tok->id_offset[s->id], p, n) == 0)
			return s->id;
	}
}

/* ------------------------------------------------------------------------ */
/* Loading: a structural JSON scanner to find members without parsing them */

/* Skips JSON whitespace. */
static const char *
skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* p is at an opening quote: returns the position after the closing quote, or NULL. */
static const char *
skip_string(const char *p, const char *end)
{
	for (p++; p < end; p++)
	{
		if (*p == '\\')
			p++;
		else if (*p == '"')
			return p + 1;
	}
	return NULL;
}

/*
 * Returns the end of the JSON value starting at p, or NULL when it is
 * unterminated or unbalanced.  Scalars are delimited, not validated: values
 * this scanner skips are never used.
 */
static const char *
skip_value(const char *p, const char *end)
{
	int			depth = 0;

	if (p >= end)
		return NULL;
	if (*p != '"' && *p != '{' && *p != '[')
	{
		while (p < end && *p != ',' && *p != '}' && *p != ']' &&
			   *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
			p++;
		return p;
	}
	while (p < end)
	{
		if (*p == '"')
		{
			p = skip_string(p, end);
			if (!p)
				return NULL;
			if (depth == 0)
				return p;
			continue;
		}
		if (*p == '{' || *p == '[')
			depth++;
		else if (*p == '}' || *p == ']')
		{
			if (--depth < 0)
				return NULL;
			if (depth == 0)
				return p + 1;
		}
		p++;
	}
	return NULL;
}

/*
 * In the JSON object spanning [p, end), finds member key (a plain key without
 * escapes) and returns its value's extent in *vstart and *vend.  Returns 1 when
 * found, 0 when absent, -1 when the object is malformed.
 */
static int
find_member(const char *p, const char *end, const char *key,
			const char **vstart, const char **vend)
{
	size_t		keylen = strlen(key);

	p = skip_ws(p, end);
	if (p >= end || *p != '{')
		return -1;
	p = skip_ws(p + 1, end);
	if (p < end && *p == '}')
		return 0;
	while (p < end)
	{
		const char *k = p,
				   *kend,
				   *v,
				   *vstop;

		if (*p != '"' || !(kend = skip_string(p, end)))
			return -1;
		p = skip_ws(kend, end);
		if (p >= end || *p != ':')
			return -1;
		v = skip_ws(p + 1, end);
		vstop = skip_value(v, end);
		if (!vstop || vstop == v)
			return -1;
		if ((size_t) (kend - k - 2) == keylen && memcmp(k + 1, key, keylen) == 0)
		{
			*vstart = v;
			*vend = vstop;
			return 1;
		}
		p = skip_ws(vstop, end);
		if (p < end && *p == '}')
			return 0;
		if (p >= end || *p != ',')
			return -1;
		p = skip_ws(p + 1, end);
	}
	return -1;
}

/* Parses the JSON value in [start, end) with jansson; NULL with err set on failure. */
static json_t *
parse_extent(const char *path, const char *what, const char *start, const char *end,
			 gptoss_error *err)
{
	json_error_t jerr;
	json_t	   *v = json_loadb(start, (size_t) (end - start), JSON_DECODE_ANY, &jerr);

	if (!v)
		gptoss_errorf(err, "tokenizer %s: %s is not valid JSON: %s (line %d)",
					  path, what, jerr.text, jerr.line);
	return v;
}

/* Reads a whole regular file into a malloc'ed buffer; NULL with err set on failure. */
static char *
read_file(const char *path, size_t *len, gptoss_error *err)
{
	int			fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	char	   *buf = NULL;
	size_t		got = 0;

	if (fd < 0)
	{
		gptoss_errorf(err, "cannot open tokenizer %s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
	{
		gptoss_errorf(err, "tokenizer %s is not a regular file", path);
		close(fd);
		return NULL;
	}
	buf = malloc((size_t) st.st_size + 1);
	if (!buf)
	{
		gptoss_errorf(err, "out of memory reading tokenizer %s (%lld bytes)", path,
					  (long long) st.st_size);
		close(fd);
		return NULL;
	}
	while (got < (size_t) st.st_size)
	{
		ssize_t		r = read(fd, buf + got, (size_t) st.st_size - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
		{
			gptoss_errorf(err, "cannot read tokenizer %s: %s", path,
						  r < 0 ? strerror(errno) : "file shrank while reading");
			free(buf);
			close(fd);
			return NULL;
		}
		got += (size_t) r;
	}
	close(fd);
	buf[got] = '\0';
	*len = got;
	return buf;
}

/*
 * Inverse of GPT-2 bytes_to_unicode: bytes 33-126, 161-172 and 174-255 are
 * spelled as themselves; the other 68 bytes, in increasing order, as
 * U+0100, U+0101, ...  unicode_byte[cp] is the byte for code point cp < 324,
 * or -1.
 */
static void
build_unicode_to_byte(int16_t unicode_byte[324])
{
	int			next = 0;

	for (int cp = 0; cp < 324; cp++)
		unicode_byte[cp] = -1;
	for (int b = 0; b < 256; b++)
	{
		bool		printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;

		unicode_byte[printable ? b : 256 + next++] = (int16_t) b;
	}
}

/*
 * Converts a vocab key (UTF-8 of GPT-2 code points) to the token's bytes in
 * out (room for keylen bytes); returns the byte count or -1 when a code point
 * is not a GPT-2 byte spelling.
 */
static int
key_to_bytes(const unsigned char *key, size_t keylen, const int16_t unicode_byte[324],
			 unsigned char *out)
{
	size_t		i = 0;
	int			n = 0;

	while (i < keylen)
	{
		unsigned	cp;

		if (key[i] < 0x80)
			cp = key[i++];
		else if ((key[i] & 0xe0) == 0xc0 && i + 1 < keylen)
		{
			cp = ((unsigned) (key[i] & 0x1f) << 6) | (key[i + 1] & 0x3f);
			i += 2;
		}
		else
			return -1;			/* every GPT-2 spelling is below U+0800 */
		if (cp >= 324 || unicode_byte[cp] < 0)
			return -1;
		out[n++] = (unsigned char) unicode_byte[cp];
	}
	return n;
}

/* Inserts ordinary token id (bytes already in the blob) into the rank table. */
static void
table_insert(gptoss_tokenizer *tok, int32_t id)
{
	const unsigned char *p = (const unsigned char *) tok->blob + tok->id_offset[id];
	uint32_t	h = hash_bytes(p, tok->id_len[id]);
	uint32_t	i = h & tok->table_mask;

	while (tok->table[i].id >= 0)
		i = (i + 1) & tok->table_mask;
	tok->table[i].hash = h;
	tok->table[i].id = id;
}

/* Reads model.vocab into the id arrays, the blob and the rank table; -1 with err set on failure. */
static int
load_vocab(gptoss_tokenizer *tok, json_t *vocab, json_t *added, const char *path,
		   gptoss_error *err)
{
	int16_t		unicode_byte[324];
	size_t		n_vocab = json_object_size(vocab);
	size_t		blob_cap = 0,
				table_size = 1024;
	int			max_id = -1;
	const char *key;
	json_t	   *val;
	size_t		i;

	build_unicode_to_byte(unicode_byte);
	if (n_vocab == 0)
		return gptoss_errorf(err, "tokenizer %s: model.vocab is empty", path);

	/* First pass: the id range and an upper bound of the blob size. */
	json_object_foreach(vocab, key, val)
	{
		json_int_t	id = json_is_integer(val) ? json_integer_value(val) : -1;

		if (id < 0 || id >= MAX_TOKEN_ID)
			return gptoss_errorf(err, "tokenizer %s: model.vocab entry \"%s\" has no valid id",
								 path, key);
		if (id > max_id)
			max_id = (int) id;
		blob_cap += strlen(key);
	}
	json_array_foreach(added, i, val)
	{
		json_t	   *jid = json_object_get(val, "id");
		json_t	   *jtext = json_object_get(val, "content");
		json_int_t	id = json_is_integer(jid) ? json_integer_value(jid) : -1;

		if (id < 0 || id >= MAX_TOKEN_ID || !json_is_string(jtext))
			return gptoss_errorf(err, "tokenizer %s: added_tokens[%zu] needs an id and a content",
								 path, i);
		if (id > max_id)
			max_id = (int) id;
		blob_cap += json_string_length(jtext);
	}
	if (blob_cap >= UINT32_MAX)
		return gptoss_errorf(err, "tokenizer %s: vocabulary too large", path);

	tok->n_ids = max_id + 1;
	tok->id_kind = calloc((size_t) tok->n_ids, sizeof(uint8_t));
	tok->id_offset = calloc((size_t) tok->n_ids, sizeof(uint32_t));
	tok->id_len = calloc((size_t) tok->n_ids, sizeof(uint32_t));
	tok->blob = malloc(blob_cap + 1);
	while (table_size < 2 * n_vocab)
		table_size *= 2;
	tok->table = malloc(table_size * sizeof(rank_slot));
	if (!tok->id_kind || !tok->id_offset || !tok->id_len || !tok->blob || !tok->table)
		return gptoss_errorf(err, "out of memory loading tokenizer %s", path);
	tok->table_mask = (uint32_t) (table_size - 1);
	for (i = 0; i < table_size; i++)
		tok->table[i].id = -1;

	/* Second pass: bytes of every ordinary token. */
	json_object_foreach(vocab, key, val)
	{
		int32_t		id = (int32_t) json_integer_value(val);
		size_t		keylen = strlen(key);
		int			n = key_to_bytes((const unsigned char *) key, keylen, unicode_byte,
									 (unsigned char *) tok->blob + tok->blob_len);

		if (n <= 0)
			return gptoss_errorf(err, "tokenizer %s: model.vocab key \"%s\" is not a byte-level token",
								 path, key);
		if (tok->id_kind[id] != KIND_UNASSIGNED)
			return gptoss_errorf(err, "tokenizer %s: id %d appears twice in model.vocab", path, id);
		tok->id_kind[id] = KIND_ORDINARY;
		tok->id_offset[id] = (uint32_t) tok->blob_len;
		tok->id_len[id] = (uint32_t) n;
		tok->blob_len += (size_t) n;
		if ((size_t) n > tok->max_token_bytes)
			tok->max_token_bytes = (size_t) n;
		if (lookup_rank(tok, (const unsigned char *) tok->blob + tok->id_offset[id], (size_t) n) >= 0)
			return gptoss_errorf(err, "tokenizer %s: model.vocab key \"%s\" duplicates another token's bytes",
								 path, key);
		table_insert(tok, id);
	}

	/* Special tokens: their text, stored like token bytes. */
	json_array_foreach(added, i, val)
	{
		int32_t		id = (int32_t) json_integer_value(json_object_get(val, "id"));
		json_t	   *jtext = json_object_get(val, "content");
		size_t		n = json_string_length(jtext);

		if (tok->id_kind[id] == KIND_ORDINARY)
			continue;			/* an added token that is also ordinary stays ordinary */
		if (tok->id_kind[id] == KIND_SPECIAL)
			return gptoss_errorf(err, "tokenizer %s: id %d appears twice in added_tokens", path, id);
		tok->id_kind[id] = KIND_SPECIAL;
		tok->id_offset[id] = (uint32_t) tok->blob_len;
		tok->id_len[id] = (uint32_t) n;
		memcpy(tok->blob + tok->blob_len, json_string_value(jtext), n);
		tok->blob_len += n;
	}

	/* Byte-level BPE starts from single bytes: all 256 must be tokens. */
	for (int b = 0; b < 256; b++)
	{
		unsigned char c = (unsigned char) b;

		tok->byte_id[b] = lookup_rank(tok, &c, 1);
		if (tok->byte_id[b] < 0)
			return gptoss_errorf(err, "tokenizer %s: model.vocab has no token for byte 0x%02x",
								 path, b);
	}
	return 0;
}

/* Compiles the split pattern (JIT when the platform allows); -1 with err set on failure. */
static int
build_split_regex(gptoss_tokenizer *tok, gptoss_error *err)
{
	int			errcode;
	PCRE2_SIZE	erroff;

	tok->split_re = pcre2_compile((PCRE2_SPTR) o200k_pattern, PCRE2_ZERO_TERMINATED,
								  PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF,
								  &errcode, &erroff, NULL);
	if (!tok->split_re)
	{
		PCRE2_UCHAR msg[256];

		pcre2_get_error_message(errcode, msg, sizeof(msg));
		return gptoss_errorf(err, "tokenizer split pattern does not compile at %zu: %s",
							 (size_t) erroff, (const char *) msg);
	}
	/* Without JIT (unsupported platform) pcre2_match interprets: slower, same result. */
	pcre2_jit_compile(tok->split_re, PCRE2_JIT_COMPLETE);
	return 0;
}

/* Loads tokenizer.json; NULL with err set on failure. */
gptoss_tokenizer *
gptoss_tokenizer_load(const char *path, gptoss_error *err)
{
	gptoss_tokenizer *tok = NULL;
	json_t	   *type = NULL,
			   *vocab = NULL,
			   *added = NULL;
	const char *model_s,
			   *model_e,
			   *s,
			   *e;
	size_t		len;
	char	   *text;
	int			rc;

	if (!path || !*path)
	{
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "no tokenizer path given");
		return NULL;
	}
	text = read_file(path, &len, err);
	if (!text)
		return NULL;

	rc = find_member(text, text + len, "model", &model_s, &model_e);
	if (rc <= 0)
	{
		gptoss_errorf(err, rc < 0 ? "tokenizer %s is not a JSON object (garbled or truncated file)"
					  : "tokenizer %s has no \"model\" member", path);
		goto fail;
	}
	rc = find_member(model_s, model_e, "type", &s, &e);
	if (rc < 0 || (rc > 0 && !(type = parse_extent(path, "model.type", s, e, err))))
	{
		if (rc < 0)
			gptoss_errorf(err, "tokenizer %s: \"model\" is not a JSON object", path);
		goto fail;
	}
	if (rc == 0 || !json_is_string(type) || strcmp(json_string_value(type), "BPE") != 0)
	{
		gptoss_errorf(err, "tokenizer %s: model.type must be \"BPE\"", path);
		goto fail;
	}
	rc = find_member(model_s, model_e, "vocab", &s, &e);
	if (rc <= 0)
	{
		gptoss_errorf(err, "tokenizer %s has no model.vocab", path);
		goto fail;
	}
	if (!(vocab = parse_extent(path, "model.vocab", s, e, err)))
		goto fail;
	if (!json_is_object(vocab))
	{
		gptoss_errorf(err, "tokenizer %s: model.vocab is not an object", path);
		goto fail;
	}
	rc = find_member(text, text + len, "added_tokens", &s, &e);
	if (rc < 0)
	{
		gptoss_errorf(err, "tokenizer %s is not a JSON object (garbled or truncated file)", path);
		goto fail;
	}
	added = rc > 0 ? parse_extent(path, "added_tokens", s, e, err) : json_array();
	if (!added)
		goto fail;
	if (!json_is_array(added))
	{
		gptoss_errorf(err, "tokenizer %s: added_tokens is not an array", path);
		goto fail;
	}

	tok = calloc(1, sizeof(*tok));
	if (!tok)
	{
		gptoss_errorf(err, "out of memory loading tokenizer %s", path);
		goto fail;
	}
	if (load_vocab(tok, vocab, added, path, err) < 0 || build_split_regex(tok, err) < 0)
		goto fail;
	json_decref(type);
	json_decref(vocab);
	json_decref(added);
	free(text);
	return tok;

fail:
	json_decref(type);
	json_decref(vocab);
	json_decref(added);
	free(text);
	gptoss_tokenizer_free(tok);
	return NULL;
}

/* Frees a tokenizer (NULL is fine). */
void
gptoss_tokenizer_free(gptoss_tokenizer *tok)
{
	if (!tok)
		return;
	pcre2_code_free(tok->split_re);
	free(tok->id_kind);
	free(tok->id_offset);
	free(tok->id_len);
	free(tok->blob);
	free(tok->table);
	free(tok);
}

/* Number of ids (ordinary + special; the highest id + 1). */
int
gptoss_tokenizer_vocab_size(const gptoss_tokenizer *tok)
{
	return tok->n_ids;
}

/* True when id is an assigned token (ordinary or special). */
bool
gptoss_tokenizer_is_valid(const gptoss_tokenizer *tok, int32_t id)
{
	return id >= 0 && id < tok->n_ids && tok->id_kind[id] != KIND_UNASSIGNED;
}

/* True when id is a special (added) token. */
bool
gptoss_tokenizer_is_special(const gptoss_tokenizer *tok, int32_t id)
{
	return id >= 0 && id < tok->n_ids && tok->id_kind[id] == KIND_SPECIAL;
}

/* Byte length of the longest ordinary token. */
size_t
gptoss_tokenizer_max_token_bytes(const gptoss_tokenizer *tok)
{
	return tok->max_token_bytes;
}

/* ------------------------------------------------------------------------ */
/* Encoding */

/* A candidate merge of the parts starting at left and right. */
typedef struct merge_cand
{
	int32_t		rank;			/* rank of the merged bytes */
	int32_t		left;			/* start of the left part */
	int32_t		right;			/* start of the right part */
	int32_t		right_end;		/* end of the right part when the candidate was made */
} merge_cand;

/* Per-call state: output ids and merge-loop buffers, grown as needed. */
typedef struct encode_work
{
	gptoss_buffer ids;			/* output, int32_t ids */
	int32_t    *next;			/* [piece_cap] start of the following part, by part start; -1 = merged away */
	int32_t    *prev;			/* [piece_cap] start of the preceding part, -1 for the first */
	int32_t    *part_rank;		/* [piece_cap] rank of the part starting here */
	merge_cand *heap;			/* [3 * piece_cap] min-heap by (rank, left) */
	size_t		piece_cap;
} encode_work;

/* Appends one id; -1 on allocation failure. */
static int
emit(encode_work *w, int32_t id)
{
	return gptoss_buffer_append(&w->ids, &id, sizeof(id), NULL);
}

/* Makes the merge buffers hold a piece of n bytes; -1 on allocation failure. */
static int
reserve_piece(encode_work *w, size_t n)
{
	int32_t    *next,
			   *prev,
			   *part_rank;
	merge_cand *heap;

	if (n <= w->piece_cap)
		return 0;
	n = n < 64 ? 64 : n + n / 2;
	next = realloc(w->next, n * sizeof(int32_t));
	if (next)
		w->next = next;
	prev = realloc(w->prev, n * sizeof(int32_t));
	if (prev)
		w->prev = prev;
	part_rank = realloc(w->part_rank, n * sizeof(int32_t));
	if (part_rank)
		w->part_rank = part_rank;
	heap = realloc(w->heap, 3 * n * sizeof(merge_cand));
	if (heap)
		w->heap = heap;
	if (!next || !prev || !part_rank || !heap)
		return -1;
	w->piece_cap = n;
	return 0;
}

/* Heap order: lower rank first, then the leftmost pair. */
static inline bool
cand_before(const merge_cand *a, const merge_cand *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

/* Restores the heap property downwards from slot i. */
static void
heap_sift_down(merge_cand *heap, size_t n, size_t i)
{
	merge_cand	c = heap[i];

	for (;;)
	{
		size_t		child = 2 * i + 1;

		if (child >= n)
			break;
		if (child + 1 < n && cand_before(&heap[child + 1], &heap[child]))
			child++;
		if (!cand_before(&heap[child], &c))
			break;
		heap[i] = heap[child];
		i = child;
	}
	heap[i] = c;
}

/* Adds a candidate to the heap. */
static void
heap_push(merge_cand *heap, size_t *n, merge_cand c)
{
	size_t		i = (*n)++;

	while (i > 0)
	{
		size_t		parent = (i - 1) / 2;

		if (!cand_before(&c, &heap[parent]))
			break;
		heap[i] = heap[parent];
		i = parent;
	}
	heap[i] = c;
}

/* Candidate for merging the parts at left and right (right < n), pushed when it is a token. */
static inline void
push_pair(const gptoss_tokenizer *tok, const unsigned char *piece, encode_work *w,
		  size_t *heap_n, int32_t left, int32_t right)
{
	int32_t		right_end = w->next[right];
	int32_t		rank = lookup_rank(tok, piece + left, (size_t) (right_end - left));

	if (rank >= 0)
		heap_push(w->heap, heap_n, (merge_cand) {rank, left, right, right_end});
}

/*
 * Byte-level BPE of one piece: repeatedly merges the adjacent pair of parts
 * whose concatenation has the lowest rank (leftmost on ties), then emits the
 * parts' ranks.  -1 on allocation failure.
 */
static int
encode_piece(const gptoss_tokenizer *tok, const unsigned char *piece, size_t n, encode_work *w)
{
	int32_t		whole = lookup_rank(tok, piece, n);
	size_t		heap_n = 0;
	int32_t		n32 = (int32_t) n;

	if (whole >= 0)
		return emit(w, whole);
	if (reserve_piece(w, n) < 0)
		return -1;

	/* Every byte is a part; every adjacent pair that is a token is a candidate. */
	for (int32_t i = 0; i < n32; i++)
	{
		w->next[i] = i + 1;
		w->prev[i] = i - 1;
		w->part_rank[i] = tok->byte_id[piece[i]];
	}
	for (int32_t i = 0; i + 1 < n32; i++)
	{
		int32_t		rank = lookup_rank(tok, piece + i, 2);

		if (rank >= 0)
			w->heap[heap_n++] = (merge_cand) {rank, i, i + 1, i + 2};
	}
	for (size_t i = heap_n / 2; i-- > 0;)
		heap_sift_down(w->heap, heap_n, i);

	while (heap_n > 0)
	{
		merge_cand	c = w->heap[0];
		int32_t		end;

		w->heap[0] = w->heap[--heap_n];
		heap_sift_down(w->heap, heap_n, 0);
		/* Stale when either part has merged with something else since. */
		if (w->next[c.left] != c.right || w->next[c.right] != c.right_end)
			continue;

		end = c.right_end;
		w->next[c.left] = end;
		w->next[c.right] = -1;
		w->part_rank[c.left] = c.rank;
		if (end < n32)
			w->prev[end] = c.left;
		if (w->prev[c.left] >= 0)
			push_pair(tok, piece, w, &heap_n, w->prev[c.left], c.left);
		if (end < n32)
			push_pair(tok, piece, w, &heap_n, c.left, end);
	}

	for (int32_t i = 0; i < n32; i = w->next[i])
		if (emit(w, w->part_rank[i]) < 0)
			return -1;
	return 0;
}

/* Encodes text as ordinary tokens (special-token text is plain text); returns the count or -1. */
int
gptoss_tokenizer_encode(const gptoss_tokenizer *tok, const char *text, size_t len,
						int32_t **ids, gptoss_error *err)
{
	return gptoss_tokenizer_encode_interruptible(tok, text, len, NULL, ids, err);
}

/* Encodes text, polling intr every GPTOSS_ENCODE_POLL_PIECES pieces. */
int
gptoss_tokenizer_encode_interruptible(const gptoss_tokenizer *tok, const char *text, size_t len,
									  const gptoss_interrupt *intr, int32_t **ids,
									  gptoss_error *err)
{
	unsigned	pieces = 0;

	const unsigned char *subject = (const unsigned char *) text;
	encode_work w = {0};
	pcre2_match_data *md;
	size_t		pos = 0;
	int			result = -1;

	*ids = NULL;
	if (!text && len > 0)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "encode: NULL text");
	if (len >= INT32_MAX)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "encode: text of %zu bytes is too long", len);
	md = pcre2_match_data_create_from_pattern(tok->split_re, NULL);
	if (!md)
		return gptoss_errorf(err, "encode: out of memory");

	while (pos < len)
	{
		int			rc = pcre2_match(tok->split_re, subject, len, pos, 0, md, NULL);
		size_t		ms,
					me;

		if (rc >= 0)
		{
			PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);

			ms = ov[0];
			me = ov[1];
		}
		else if (rc == PCRE2_ERROR_NOMATCH)
			ms = me = len;
		else
		{
			PCRE2_UCHAR msg[256];

			pcre2_get_error_message(rc, msg, sizeof(msg));
			gptoss_errorf(err, "encode: splitting text failed at byte %zu: %s",
						  pos, (const char *) msg);
			goto done;
		}
		/* Bytes no match covers are invalid UTF-8: a piece of their own. */
		if (ms > pos && encode_piece(tok, subject + pos, ms - pos, &w) < 0)
			goto oom;
		if (me > ms && encode_piece(tok, subject + ms, me - ms, &w) < 0)
			goto oom;
		if (me <= pos)
		{
			gptoss_errorf(err, "encode: split pattern made no progress at byte %zu", pos);
			goto done;
		}
		pos = me;
		if (intr != NULL && ++pieces % GPTOSS_ENCODE_POLL_PIECES == 0 && intr->should_stop(intr->arg))
		{
			gptoss_errorf_code(err, GPTOSS_ERR_INTERRUPTED, "encode: interrupted at byte %zu", pos);
			goto done;
		}
	}
	if (gptoss_buffer_reserve(&w.ids, 0, NULL) < 0)
		goto oom;
	result = (int) (w.ids.len / sizeof(int32_t));
	*ids = (int32_t *) w.ids.data;
	w.ids.data = NULL;
	goto done;

oom:
	result = gptoss_errorf(err, "encode: out of memory");
done:
	pcre2_match_data_free(md);
	free(w.ids.data);
	free(w.next);
	free(w.prev);
	free(w.part_rank);
	free(w.heap);
	return result;
}

/* ------------------------------------------------------------------------ */
/* Decoding */

/* Bytes of one token (special tokens: their text), or NULL for an invalid id. */
const char *
gptoss_tokenizer_token_bytes(const gptoss_tokenizer *tok, int32_t id, size_t *len)
{
	if (!gptoss_tokenizer_is_valid(tok, id))
		return NULL;
	*len = tok->id_len[id];
	return tok->blob + tok->id_offset[id];
}

/* Decodes ids into a malloc'ed NUL-terminated string; NULL with err set for an invalid id. */
char *
gptoss_tokenizer_decode(const gptoss_tokenizer *tok, const int32_t *ids, int n,
						bool skip_special, size_t *len, gptoss_error *err)
{
	size_t		total = 0,
				at = 0;
	char	   *out;

	if (n < 0 || (n > 0 && !ids))
	{
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "decode: bad token array");
		return NULL;
	}
	for (int i = 0; i < n; i++)
	{
		if (!gptoss_tokenizer_is_valid(tok, ids[i]))
		{
			gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
							   "decode: %d (at position %d) is not a token id of this tokenizer",
							   ids[i], i);
			return NULL;
		}
		if (!(skip_special && tok->id_kind[ids[i]] == KIND_SPECIAL))
			total += tok->id_len[ids[i]];
	}
	out = malloc(total + 1);
	if (!out)
	{
		gptoss_errorf(err, "decode: out of memory");
		return NULL;
	}
	for (int i = 0; i < n; i++)
	{
		if (skip_special && tok->id_kind[ids[i]] == KIND_SPECIAL)
			continue;
		memcpy(out + at, tok->blob + tok->id_offset[ids[i]], tok->id_len[ids[i]]);
		at += tok->id_len[ids[i]];
	}
	out[at] = '\0';
	if (len)
		*len = at;
	return out;
}
