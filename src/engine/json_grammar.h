/*
 * json_grammar.h: the grammar of the JSON documents one JSON Schema admits,
 * and a byte-level pushdown matcher over it.
 *
 * A grammar is a graph of value nodes (object with listed properties, map of
 * free keys, array, string, integer, number, a set of literal texts, anyOf).
 * json_schema.c builds it from a schema; constrained decoding walks it one
 * byte at a time.  The documents are compact JSON with at most one space
 * after each ':' and ',', objects list their properties in schema order,
 * strings use no \u escapes, and numbers have at most
 * GPTOSS_JSON_MAX_DIGITS digits and no exponent: every byte sequence the
 * matcher accepts can be finished, and from any state the cheapest finishing
 * text is known (gptoss_json_state_shortest), which is what lets a
 * generation always end with a valid document.
 *
 * Costs.  A finishing text is made of pieces: single bytes (cost 1) and
 * whole key or literal texts (or their rest after a partial match), which
 * cost what a piece-cost function says; without one a piece costs its
 * length, so costs are bytes.  Constrained decoding sets the number of
 * tokens the tokenizer needs for the piece, so a cost is the number of
 * tokens that writing the finishing text piece by piece takes.
 *
 * The matcher state is a small set of threads (more than one only while
 * anyOf alternatives are still ambiguous), each a stack of frames, one per
 * open value.  States are plain values: copy them with
 * gptoss_json_state_copy.
 */
#ifndef GPTOSS_JSON_GRAMMAR_H
#define GPTOSS_JSON_GRAMMAR_H

#include <stdbool.h>
#include "common.h"

#define GPTOSS_JSON_MAX_DEPTH 24	/* open values in one thread */
#define GPTOSS_JSON_MAX_THREADS 4	/* anyOf alternatives followed at once */
#define GPTOSS_JSON_MAX_PROPS 64	/* listed properties of one object */
#define GPTOSS_JSON_MAX_DIGITS 16	/* digits of a number (integer and fraction) */

typedef enum gptoss_json_kind
{
	GPTOSS_JSON_OBJECT,			/* listed properties, schema order, no others */
	GPTOSS_JSON_MAP,			/* any keys, every value of one node */
	GPTOSS_JSON_ARRAY,
	GPTOSS_JSON_STRING,
	GPTOSS_JSON_INTEGER,
	GPTOSS_JSON_NUMBER,
	GPTOSS_JSON_LITERALS,		/* one of a set of JSON texts (enum, const, true, null ...) */
	GPTOSS_JSON_ANY_OF
} gptoss_json_kind;

typedef struct gptoss_json_grammar gptoss_json_grammar;

/* An empty grammar; NULL when out of memory. */
gptoss_json_grammar *gptoss_json_grammar_new(void);
void		gptoss_json_grammar_free(gptoss_json_grammar *g);

/*
 * Builders (json_schema.c).  Each returns a node index, or -1 with err set.
 * max_length < 0 and max_items < 0 mean unbounded.
 */
int			gptoss_json_add_object(gptoss_json_grammar *g, gptoss_error *err);
int			gptoss_json_add_map(gptoss_json_grammar *g, int value, gptoss_error *err);
int			gptoss_json_add_array(gptoss_json_grammar *g, int items, int min_items, int max_items,
								  gptoss_error *err);
int			gptoss_json_add_string(gptoss_json_grammar *g, int max_length, gptoss_error *err);
int			gptoss_json_add_number(gptoss_json_grammar *g, bool integer, gptoss_error *err);
int			gptoss_json_add_literals(gptoss_json_grammar *g, gptoss_error *err);
int			gptoss_json_add_any_of(gptoss_json_grammar *g, gptoss_error *err);

/* Any JSON value (one shared node per grammar). */
int			gptoss_json_add_any_value(gptoss_json_grammar *g, gptoss_error *err);

/* Adds a property to an OBJECT node; key is its JSON text with the quotes. */
int			gptoss_json_object_add(gptoss_json_grammar *g, int object, const char *key, size_t key_len,
								   int value, bool required, gptoss_error *err);

/* Adds one JSON text to a LITERALS node (duplicates are ignored). */
int			gptoss_json_literals_add(gptoss_json_grammar *g, int literals, const char *text, size_t len,
									 gptoss_error *err);

/* Adds an alternative to an ANY_OF node. */
int			gptoss_json_any_of_add(gptoss_json_grammar *g, int any_of, int alternative,
								   gptoss_error *err);

/*
 * Makes root the document node and computes the shortest lengths.  Fails
 * (GPTOSS_ERR_INVALID) for a value that admits no document (an empty enum, an
 * anyOf without alternatives, minItems > maxItems) or nesting deeper than
 * the matcher's stack.
 */
int			gptoss_json_grammar_finish(gptoss_json_grammar *g, int root, gptoss_error *err);

/* Cost of a piece of text (>= 1 for len >= 1, at most len). */
typedef int (*gptoss_json_piece_cost_fn) (const char *text, int len, void *ctx);

/* Recomputes every cost with fn (NULL: bytes). */
int			gptoss_json_grammar_set_piece_cost(gptoss_json_grammar *g, gptoss_json_piece_cost_fn fn,
											   void *ctx, gptoss_error *err);

/* Cost of the cheapest valid document. */
int			gptoss_json_grammar_min_length(const gptoss_json_grammar *g);

/* Bytes of the longest key or literal text (a completion piece is at most that long). */
int			gptoss_json_grammar_max_text(const gptoss_json_grammar *g);

/* One open value of a thread. */
typedef struct gptoss_json_frame
{
	uint16_t	node;
	uint8_t		phase;
	uint8_t		lex;			/* string lexer state, or the one-space flag */
	uint16_t	count;			/* characters, items, digits, or a property index */
	uint16_t	aux;			/* key or literal trie node */
} gptoss_json_frame;

typedef struct gptoss_json_thread
{
	int			depth;
	gptoss_json_frame f[GPTOSS_JSON_MAX_DEPTH];	/* [depth], f[depth - 1] is the innermost */
} gptoss_json_thread;

typedef struct gptoss_json_state
{
	int			n;				/* live threads; 0 = rejected */
	gptoss_json_thread t[GPTOSS_JSON_MAX_THREADS];
} gptoss_json_state;

/* The state before the first byte. */
void		gptoss_json_state_init(const gptoss_json_grammar *g, gptoss_json_state *s);

/* Copies the live part of a state. */
void		gptoss_json_state_copy(gptoss_json_state *dst, const gptoss_json_state *src);

/* out = in after byte c; returns false (out->n = 0) when c is not allowed. */
bool		gptoss_json_state_feed(const gptoss_json_grammar *g, const gptoss_json_state *in,
								   uint8_t c, gptoss_json_state *out);

/* Feeds n bytes in place; false (and s rejected) at the first byte not allowed. */
bool		gptoss_json_state_feed_bytes(const gptoss_json_grammar *g, gptoss_json_state *s,
										 const char *bytes, size_t n);

/* Cost of the cheapest continuation that ends a valid document. */
int			gptoss_json_state_shortest(const gptoss_json_grammar *g, const gptoss_json_state *s);

/* True when the bytes so far are a whole valid document. */
bool		gptoss_json_state_accepting(const gptoss_json_grammar *g, const gptoss_json_state *s);

/* True when the document is whole and cannot go on (a closed object, array or string). */
bool		gptoss_json_state_closed(const gptoss_json_state *s);

/*
 * Writes a cheapest completion (of cost gptoss_json_state_shortest) into buf
 * (cap bytes) as pieces: piece k ends at piece_end[k] (at most max_pieces).
 * Returns its length in bytes with *n_pieces set, or -1 when it does not fit.
 */
int			gptoss_json_state_completion(const gptoss_json_grammar *g, const gptoss_json_state *s,
										 char *buf, int cap, int *piece_end, int max_pieces,
										 int *n_pieces);

/*
 * The string lexer of the innermost frame when every thread is inside string
 * content in its plain state (not after a backslash, not inside a UTF-8
 * sequence): *room gets, per thread, how many more characters the string may
 * take (INT32_MAX when unbounded).  Returns false otherwise.  Token masks use
 * it to treat string content with precomputed tables.
 */
bool		gptoss_json_state_in_plain_string(const gptoss_json_grammar *g, const gptoss_json_state *s,
											  int32_t room[GPTOSS_JSON_MAX_THREADS]);

/* The one-thread state of thread i of s. */
void		gptoss_json_state_thread(const gptoss_json_state *s, int i, gptoss_json_state *out);

/*
 * String lexing shared with the token tables: the character count and the
 * lexer state after bytes inside string content, starting in the plain
 * state.  Returns the offset of an unescaped closing quote (its index in
 * bytes), n when the bytes stay inside the string, or -1 when they are not
 * valid string content.  *chars gets the characters begun before the quote
 * (or in all n bytes), *pending the bytes still needed to end an escape or a
 * UTF-8 sequence at the end.
 */
int			gptoss_json_lex_string(const char *bytes, int n, int *chars, int *pending);

#endif							/* GPTOSS_JSON_GRAMMAR_H */
