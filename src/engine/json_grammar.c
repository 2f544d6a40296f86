/*
 * json_grammar.c: the grammar graph of a JSON Schema and its byte matcher.
 *
 * Nodes live in one array and refer to each other by index; object keys and
 * literal sets (enum, const, true/false/null) are byte tries in a second
 * array.  A thread's frames record, per open value, the node and a phase
 * (which byte may come next), plus a counter and a trie position.  Frames
 * below the innermost one are always in the phase that follows their child
 * value ("after a value": ',' or the closing bracket), so a thread's shortest
 * completion is the sum of what each frame still needs: the innermost from
 * its phase, the others from "after a value".  These per-phase costs come
 * from each node's shortest value length, computed once in
 * gptoss_json_grammar_finish.
 *
 * Costs count pieces (json_grammar.h): a key or a literal costs what the
 * piece-cost function says for its text (or for the rest of it inside a
 * partly matched key or literal), every other byte 1.
 *
 * Numbers and literals end without a closing byte: their frame stays open
 * while it may still grow and is popped when a byte arrives that does not
 * continue it, and that byte then goes to the enclosing value.  JSON never
 * lets a complete number or literal be followed by a byte that could also
 * continue it, so this is deterministic.  anyOf forks a thread per
 * alternative at the value's first byte; threads that reject a byte die and
 * identical threads merge.
 */
#include "json_grammar.h"
#include "utf8.h"

#include <stdlib.h>
#include <string.h>

#define COST_INF (1 << 28)

/* Phases of a frame. */
enum
{
	PH_START,					/* before the value's first byte */
	PH_OBJ_FIRST,				/* after '{' */
	PH_OBJ_KEY,					/* inside a listed key: aux = key trie node, count = first allowed property */
	PH_MAP_KEY,					/* inside a free key: lex = string lexer state */
	PH_OBJ_COLON,				/* after the key: count = property (OBJECT) */
	PH_OBJ_VALUE,				/* after ':', lex = space used: count = property (OBJECT) */
	PH_OBJ_NEXT,				/* after a value: count = next candidate property (OBJECT) */
	PH_OBJ_COMMA,				/* after ',', lex = space used: count = first allowed property */
	PH_ARR_FIRST,				/* after '[' */
	PH_ARR_NEXT,				/* after an item: count = items */
	PH_ARR_ITEM,				/* after ',', lex = space used: count = items before this one */
	PH_STR,						/* string content: lex = lexer state, count = characters */
	PH_NUM_MINUS,				/* after '-' */
	PH_NUM_ZERO,				/* after a leading 0 */
	PH_NUM_INT,					/* in the integer digits: count = digits */
	PH_NUM_DOT,					/* after '.' */
	PH_NUM_FRAC,				/* in the fraction digits: count = digits */
	PH_LIT						/* inside a literal: aux = literal trie node */
};

/*
 * String lexer states: plain, after a backslash, with k continuation bytes
 * left, or (the lead byte itself, C2..F4) right after a lead byte, whose
 * second byte has its own range (utf8.h).
 */
enum
{
	LX_PLAIN,
	LX_ESC,
	LX_CONT1,
	LX_CONT2,
	LX_CONT3
};

/* Bytes still needed to end an escape or a UTF-8 sequence in lexer state st. */
static inline int
lex_pending(uint8_t st)
{
	if (st >= 0x80)
		return gptoss_utf8_lead_length(st) - 1;
	return st == LX_PLAIN ? 0 : st == LX_ESC ? 1 : st - LX_CONT1 + 1;
}

typedef struct json_property
{
	char	   *key;			/* JSON text of the key, quotes included */
	int			key_len;
	int		   *key_rest;		/* [key_len + 1] cost of key[d..] */
	int			value;
	bool		required;
} json_property;

/* A node of a key or literal trie. */
typedef struct trie_node
{
	int			first_child;
	int			next_sibling;
	int			depth;			/* bytes from the root */
	int			prop;			/* key tries: property whose key ends here, else -1 */
	int			min_rest;		/* cost to the cheapest end of a text below */
	uint64_t	props;			/* key tries: properties whose key passes here */
	uint8_t		byte;
	bool		terminal;		/* a whole text ends here */
} trie_node;

/* A text of a LITERALS node. */
typedef struct literal_text
{
	char	   *text;
	int			len;
} literal_text;

typedef struct json_node
{
	gptoss_json_kind kind;
	int			min_len;		/* bytes of the shortest value */
	bool		generic;		/* part of the shared "any value" graph */
	/* OBJECT */
	gptoss_buffer props;		/* json_property, in schema order */
	int		   *req_cost;		/* [n_props + 1] bytes of the required properties from p on, commas included */
	int		   *comma_cost;		/* [n_props + 1] shortest rest after ',' with candidates from p */
	int		   *first_req;		/* [n_props + 1] first required property >= p, or n_props */
	uint64_t   *allowed;		/* [n_props + 1] properties that may come next from p */
	/* OBJECT keys, LITERALS texts */
	int			trie;
	gptoss_buffer texts;		/* LITERALS: literal_text */
	/* MAP value, ARRAY items */
	int			child;
	int			min_items;
	int			max_items;		/* -1: unbounded */
	/* STRING */
	int			max_length;		/* -1: unbounded */
	/* ANY_OF */
	gptoss_buffer alts;			/* int: the alternatives' nodes */
} json_node;

struct gptoss_json_grammar
{
	gptoss_buffer nodes;		/* json_node */
	gptoss_buffer tries;		/* trie_node */
	int			root;
	int			any_value;		/* shared generic value node, or -1 */
	int			max_text;		/* longest key or literal text */
	gptoss_json_piece_cost_fn piece_cost;	/* NULL: bytes */
	void	   *piece_ctx;
};

/* Counts and items of the arrays above, which grow in gptoss_buffers. */
#define n_nodes(g)		GPTOSS_BUFFER_COUNT(&(g)->nodes, json_node)
#define node_at(g, i)	GPTOSS_BUFFER_AT(&(g)->nodes, json_node, i)
#define n_tries(g)		GPTOSS_BUFFER_COUNT(&(g)->tries, trie_node)
#define trie_at(g, i)	GPTOSS_BUFFER_AT(&(g)->tries, trie_node, i)
#define n_props(n)		GPTOSS_BUFFER_COUNT(&(n)->props, json_property)
#define prop_at(n, i)	GPTOSS_BUFFER_AT(&(n)->props, json_property, i)
#define n_lits(n)		GPTOSS_BUFFER_COUNT(&(n)->texts, literal_text)
#define lit_at(n, i)	GPTOSS_BUFFER_AT(&(n)->texts, literal_text, i)
#define n_alts(n)		GPTOSS_BUFFER_COUNT(&(n)->alts, int)
#define alt_at(n, i)	(*GPTOSS_BUFFER_AT(&(n)->alts, int, i))

/* ---------------------------------------------------------------------------
 * Building
 */

/* An empty grammar. */
gptoss_json_grammar *
gptoss_json_grammar_new(void)
{
	gptoss_json_grammar *g = calloc(1, sizeof(*g));

	if (g != NULL)
	{
		g->root = -1;
		g->any_value = -1;
	}
	return g;
}

/* Frees a grammar and its nodes. */
void
gptoss_json_grammar_free(gptoss_json_grammar *g)
{
	if (g == NULL)
		return;
	for (int i = 0; i < n_nodes(g); i++)
	{
		json_node  *n = node_at(g, i);

		for (int j = 0; j < n_props(n); j++)
		{
			free(prop_at(n, j)->key);
			free(prop_at(n, j)->key_rest);
		}
		gptoss_buffer_free(&n->props);
		for (int j = 0; j < n_lits(n); j++)
			free(lit_at(n, j)->text);
		gptoss_buffer_free(&n->texts);
		free(n->req_cost);
		free(n->comma_cost);
		free(n->first_req);
		free(n->allowed);
		gptoss_buffer_free(&n->alts);
	}
	gptoss_buffer_free(&g->nodes);
	gptoss_buffer_free(&g->tries);
	free(g);
}

/* A new trie root. */
static int
new_trie_node(gptoss_json_grammar *g, uint8_t byte, int depth, gptoss_error *err)
{
	trie_node	t = {0};

	t.first_child = -1;
	t.next_sibling = -1;
	t.prop = -1;
	t.depth = depth;
	t.byte = byte;
	if (gptoss_buffer_append(&g->tries, &t, sizeof(t), err) < 0)
		return -1;
	return n_tries(g) - 1;
}

/* Child of trie node t for byte c, or -1. */
static inline int
trie_child(const gptoss_json_grammar *g, int t, uint8_t c)
{
	for (int k = trie_at(g, t)->first_child; k >= 0; k = trie_at(g, k)->next_sibling)
		if (trie_at(g, k)->byte == c)
			return k;
	return -1;
}

/* Inserts text under root; returns the node where it ends. */
static int
trie_insert(gptoss_json_grammar *g, int root, const char *text, size_t len, gptoss_error *err)
{
	int			t = root;

	for (size_t i = 0; i < len; i++)
	{
		int			k = trie_child(g, t, (uint8_t) text[i]);

		if (k < 0)
		{
			k = new_trie_node(g, (uint8_t) text[i], trie_at(g, t)->depth + 1, err);
			if (k < 0)
				return -1;
			trie_at(g, k)->next_sibling = trie_at(g, t)->first_child;
			trie_at(g, t)->first_child = k;
		}
		t = k;
	}
	return t;
}

/* A new node of the given kind. */
static int
add_node(gptoss_json_grammar *g, gptoss_json_kind kind, gptoss_error *err)
{
	json_node	n = {0};

	if (n_nodes(g) >= 65535)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "schema: too many values (at most 65535)");
	n.kind = kind;
	n.trie = -1;
	n.child = -1;
	n.max_items = -1;
	n.max_length = -1;
	n.min_len = COST_INF;
	if (gptoss_buffer_append(&g->nodes, &n, sizeof(n), err) < 0)
		return -1;
	return n_nodes(g) - 1;
}

/* A new node with its own trie (OBJECT keys, LITERALS texts). */
static int
add_trie_owner(gptoss_json_grammar *g, gptoss_json_kind kind, gptoss_error *err)
{
	int			n = add_node(g, kind, err);
	int			root;

	if (n < 0)
		return -1;
	root = new_trie_node(g, 0, 0, err);
	if (root < 0)
		return -1;
	node_at(g, n)->trie = root;
	return n;
}

/* OBJECT with no properties yet. */
int
gptoss_json_add_object(gptoss_json_grammar *g, gptoss_error *err)
{
	return add_trie_owner(g, GPTOSS_JSON_OBJECT, err);
}

/* MAP: any keys, values of node value. */
int
gptoss_json_add_map(gptoss_json_grammar *g, int value, gptoss_error *err)
{
	int			n = add_node(g, GPTOSS_JSON_MAP, err);

	if (n >= 0)
		node_at(g, n)->child = value;
	return n;
}

/* ARRAY of items with bounds on their count. */
int
gptoss_json_add_array(gptoss_json_grammar *g, int items, int min_items, int max_items,
					  gptoss_error *err)
{
	int			n;

	if (min_items < 0 || min_items > 65535 || max_items > 65535)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "minItems/maxItems: at most 65535 items are supported");
	n = add_node(g, GPTOSS_JSON_ARRAY, err);
	if (n >= 0)
	{
		node_at(g, n)->child = items;
		node_at(g, n)->min_items = min_items;
		node_at(g, n)->max_items = max_items;
	}
	return n;
}

/* STRING with an optional maximum length in characters. */
int
gptoss_json_add_string(gptoss_json_grammar *g, int max_length, gptoss_error *err)
{
	int			n;

	if (max_length > 65535)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "maxLength: at most 65535 is supported (got %d)", max_length);
	n = add_node(g, GPTOSS_JSON_STRING, err);
	if (n >= 0)
		node_at(g, n)->max_length = max_length;
	return n;
}

/* INTEGER or NUMBER. */
int
gptoss_json_add_number(gptoss_json_grammar *g, bool integer, gptoss_error *err)
{
	return add_node(g, integer ? GPTOSS_JSON_INTEGER : GPTOSS_JSON_NUMBER, err);
}

/* LITERALS with no texts yet. */
int
gptoss_json_add_literals(gptoss_json_grammar *g, gptoss_error *err)
{
	return add_trie_owner(g, GPTOSS_JSON_LITERALS, err);
}

/* ANY_OF with no alternatives yet. */
int
gptoss_json_add_any_of(gptoss_json_grammar *g, gptoss_error *err)
{
	return add_node(g, GPTOSS_JSON_ANY_OF, err);
}

/* Adds a text to a LITERALS node. */
int
gptoss_json_literals_add(gptoss_json_grammar *g, int literals, const char *text, size_t len,
						 gptoss_error *err)
{
	int			t = trie_insert(g, node_at(g, literals)->trie, text, len, err);
	literal_text lit;

	if (t < 0)
		return -1;
	if (trie_at(g, t)->terminal)
		return 0;
	lit.text = malloc(len + 1);
	if (lit.text == NULL)
		return gptoss_errorf(err, "out of memory building a JSON grammar");
	memcpy(lit.text, text, len);
	lit.text[len] = '\0';
	lit.len = (int) len;
	if (gptoss_buffer_append(&node_at(g, literals)->texts, &lit, sizeof(lit), err) < 0)
	{
		free(lit.text);
		return -1;
	}
	trie_at(g, t)->terminal = true;
	if ((int) len > g->max_text)
		g->max_text = (int) len;
	return 0;
}

/* Adds a property (key text with quotes) to an OBJECT node. */
int
gptoss_json_object_add(gptoss_json_grammar *g, int object, const char *key, size_t key_len,
					   int value, bool required, gptoss_error *err)
{
	json_node  *n = node_at(g, object);
	json_property p;
	int			t;

	if (n_props(n) >= GPTOSS_JSON_MAX_PROPS)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "properties: at most %d properties per object are supported",
								  GPTOSS_JSON_MAX_PROPS);
	t = trie_insert(g, n->trie, key, key_len, err);
	if (t < 0)
		return -1;
	if (trie_at(g, t)->terminal)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "properties: duplicate key %.*s",
								  (int) key_len, key);
	p.key = malloc(key_len + 1);
	if (p.key == NULL)
		return gptoss_errorf(err, "out of memory building a JSON grammar");
	memcpy(p.key, key, key_len);
	p.key[key_len] = '\0';
	p.key_len = (int) key_len;
	p.key_rest = NULL;
	p.value = value;
	p.required = required;
	if (gptoss_buffer_append(&n->props, &p, sizeof(p), err) < 0)
	{
		free(p.key);
		return -1;
	}
	trie_at(g, t)->terminal = true;
	trie_at(g, t)->prop = n_props(n) - 1;
	if ((int) key_len > g->max_text)
		g->max_text = (int) key_len;
	return 0;
}

/* Adds an alternative to an ANY_OF node. */
int
gptoss_json_any_of_add(gptoss_json_grammar *g, int any_of, int alternative, gptoss_error *err)
{
	return gptoss_buffer_append(&node_at(g, any_of)->alts, &alternative, sizeof(alternative), err);
}

/* The shared "any JSON value" node: anyOf of a map of it, an array of it, string, number, literals. */
int
gptoss_json_add_any_value(gptoss_json_grammar *g, gptoss_error *err)
{
	static const char *const words[] = {"true", "false", "null"};
	int			any,
				map,
				arr,
				str,
				num,
				lit;

	if (g->any_value >= 0)
		return g->any_value;
	if ((any = gptoss_json_add_any_of(g, err)) < 0 ||
		(map = gptoss_json_add_map(g, any, err)) < 0 ||
		(arr = gptoss_json_add_array(g, any, 0, -1, err)) < 0 ||
		(str = gptoss_json_add_string(g, -1, err)) < 0 ||
		(num = gptoss_json_add_number(g, false, err)) < 0 ||
		(lit = gptoss_json_add_literals(g, err)) < 0)
		return -1;
	for (int i = 0; i < 3; i++)
		if (gptoss_json_literals_add(g, lit, words[i], strlen(words[i]), err) < 0)
			return -1;
	if (gptoss_json_any_of_add(g, any, map, err) < 0 ||
		gptoss_json_any_of_add(g, any, arr, err) < 0 ||
		gptoss_json_any_of_add(g, any, str, err) < 0 ||
		gptoss_json_any_of_add(g, any, num, err) < 0 ||
		gptoss_json_any_of_add(g, any, lit, err) < 0)
		return -1;
	for (int n = any; n <= lit; n++)
		node_at(g, n)->generic = true;
	g->any_value = any;
	return any;
}

/* ---------------------------------------------------------------------------
 * Shortest lengths
 */

/* a + b, saturating at COST_INF. */
static inline int
cost_add(int a, int b)
{
	return a >= COST_INF - b ? COST_INF : a + b;
}

/* a * b for small non-negative values, saturating. */
static inline int
cost_mul(int a, int b)
{
	if (a == 0 || b == 0)
		return 0;
	return a >= COST_INF / b ? COST_INF : a * b;
}

/* Cost of a piece of text. */
static int
piece_cost(const gptoss_json_grammar *g, const char *text, int len)
{
	if (len <= 0)
		return 0;
	return g->piece_cost ? g->piece_cost(text, len, g->piece_ctx) : len;
}

/*
 * Trie tables: key masks bottom-up (children have higher indices than
 * parents); min_rest of literal tries and the key rest costs from the texts.
 */
static int
finish_tries(gptoss_json_grammar *g, gptoss_error *err)
{
	for (int t = n_tries(g) - 1; t >= 0; t--)
	{
		trie_node  *n = trie_at(g, t);

		n->min_rest = COST_INF;
		n->props = n->prop >= 0 ? (uint64_t) 1 << n->prop : 0;
		for (int k = n->first_child; k >= 0; k = trie_at(g, k)->next_sibling)
			n->props |= trie_at(g, k)->props;
	}
	for (int i = 0; i < n_nodes(g); i++)
	{
		json_node  *n = node_at(g, i);

		for (int j = 0; j < n_lits(n); j++)
		{
			int			t = n->trie;

			for (int d = 0; d <= lit_at(n, j)->len && t >= 0; d++)
			{
				int			c = piece_cost(g, lit_at(n, j)->text + d, lit_at(n, j)->len - d);

				if (c < trie_at(g, t)->min_rest)
					trie_at(g, t)->min_rest = c;
				if (d < lit_at(n, j)->len)
					t = trie_child(g, t, (uint8_t) lit_at(n, j)->text[d]);
			}
		}
		for (int j = 0; j < n_props(n); j++)
		{
			json_property *p = prop_at(n, j);

			if (p->key_rest == NULL)
			{
				p->key_rest = malloc((size_t) (p->key_len + 1) * sizeof(int));
				if (p->key_rest == NULL)
					return gptoss_errorf(err, "out of memory building a JSON grammar");
			}
			for (int d = 0; d <= p->key_len; d++)
				p->key_rest[d] = piece_cost(g, p->key + d, p->key_len - d);
		}
	}
	return 0;
}

/* OBJECT tables from the current min_len of the values. */
static int
object_tables(gptoss_json_grammar *g, json_node *n, gptoss_error *err)
{
	int			np = n_props(n);

	if (n->req_cost == NULL)
	{
		n->req_cost = calloc(np + 1, sizeof(int));
		n->comma_cost = calloc(np + 1, sizeof(int));
		n->first_req = calloc(np + 1, sizeof(int));
		n->allowed = calloc(np + 1, sizeof(uint64_t));
		if (!n->req_cost || !n->comma_cost || !n->first_req || !n->allowed)
			return gptoss_errorf(err, "out of memory building a JSON grammar");
	}
	n->req_cost[np] = 0;
	n->first_req[np] = np;
	for (int p = np - 1; p >= 0; p--)
	{
		const json_property *pr = prop_at(n, p);

		n->req_cost[p] = n->req_cost[p + 1];
		n->first_req[p] = n->first_req[p + 1];
		if (pr->required)
		{
			n->req_cost[p] = cost_add(n->req_cost[p],
									  cost_add(pr->key_rest[0] + 2, node_at(g, pr->value)->min_len));
			n->first_req[p] = p;
		}
	}
	for (int p = 0; p <= np; p++)
	{
		int			last = n->first_req[p] < np ? n->first_req[p] : np - 1;
		int			best = COST_INF;

		n->allowed[p] = 0;
		for (int j = p; j <= last; j++)
		{
			int			c = cost_add(cost_add(prop_at(n, j)->key_rest[0] + 1, node_at(g, prop_at(n, j)->value)->min_len),
									 n->req_cost[j + 1]);

			n->allowed[p] |= (uint64_t) 1 << j;
			if (c < best)
				best = c;
		}
		n->comma_cost[p] = cost_add(best, 1);
	}
	return 0;
}

/* Shortest value length of node n from its children's current values. */
static int
node_min_len(const gptoss_json_grammar *g, const json_node *n)
{
	int			m;

	switch (n->kind)
	{
		case GPTOSS_JSON_OBJECT:
			/* '{' + required properties (the first without a comma) + '}' */
			return n->req_cost[0] > 0 ? cost_add(n->req_cost[0], 1) : 2;
		case GPTOSS_JSON_MAP:
			return 2;
		case GPTOSS_JSON_ARRAY:
			m = node_at(g, n->child)->min_len;
			return n->min_items == 0 ? 2 : cost_add(1, cost_mul(n->min_items, cost_add(m, 1)));
		case GPTOSS_JSON_STRING:
			return 2;
		case GPTOSS_JSON_INTEGER:
		case GPTOSS_JSON_NUMBER:
			return 1;
		case GPTOSS_JSON_LITERALS:
			return trie_at(g, n->trie)->min_rest;
		case GPTOSS_JSON_ANY_OF:
			m = COST_INF;
			for (int a = 0; a < n_alts(n); a++)
				if (node_at(g, alt_at(n, a))->min_len < m)
					m = node_at(g, alt_at(n, a))->min_len;
			return m;
	}
	return COST_INF;
}

/* Frames a value of node n needs at most along its required nesting (0 when unbounded). */
static int
nesting(const gptoss_json_grammar *g, int node, int depth)
{
	const json_node *n = node_at(g, node);
	int			need = 1;

	if (n->generic || depth > GPTOSS_JSON_MAX_DEPTH)
		return 1;
	switch (n->kind)
	{
		case GPTOSS_JSON_OBJECT:
			for (int j = 0; j < n_props(n); j++)
			{
				int			d = 1 + nesting(g, prop_at(n, j)->value, depth + 1);

				if (d > need)
					need = d;
			}
			break;
		case GPTOSS_JSON_MAP:
		case GPTOSS_JSON_ARRAY:
			need = 1 + nesting(g, n->child, depth + 1);
			break;
		case GPTOSS_JSON_ANY_OF:
			need = 0;
			for (int a = 0; a < n_alts(n); a++)
			{
				int			d = nesting(g, alt_at(n, a), depth);

				if (d > need)
					need = d;
			}
			break;
		default:
			break;
	}
	return need;
}

/* Every cost: tries, then shortest lengths relaxed to a fixed point (generic nodes form a cycle). */
static int
compute_costs(gptoss_json_grammar *g, gptoss_error *err)
{
	bool		changed = true;

	if (finish_tries(g, err) < 0)
		return -1;
	for (int i = 0; i < n_nodes(g); i++)
		node_at(g, i)->min_len = COST_INF;
	for (int round = 0; changed && round <= n_nodes(g) + 1; round++)
	{
		changed = false;
		for (int i = 0; i < n_nodes(g); i++)
		{
			json_node  *n = node_at(g, i);
			int			m;

			if (n->kind == GPTOSS_JSON_OBJECT && object_tables(g, n, err) < 0)
				return -1;
			m = node_min_len(g, n);
			if (m < n->min_len)
			{
				n->min_len = m;
				changed = true;
			}
		}
	}
	for (int i = 0; i < n_nodes(g); i++)
	{
		if (node_at(g, i)->kind == GPTOSS_JSON_OBJECT && object_tables(g, node_at(g, i), err) < 0)
			return -1;
		if (node_at(g, i)->min_len >= COST_INF)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
									  "schema: a value admits no JSON document (an empty enum?)");
	}
	return 0;
}

/* Fixes the root and computes every node's shortest length. */
int
gptoss_json_grammar_finish(gptoss_json_grammar *g, int root, gptoss_error *err)
{
	if (root < 0 || root >= n_nodes(g))
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "schema: no root value");
	for (int i = 0; i < n_nodes(g); i++)
	{
		json_node  *n = node_at(g, i);

		if (n->kind == GPTOSS_JSON_ANY_OF && n_alts(n) == 0)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "anyOf: no alternatives");
		if (n->kind == GPTOSS_JSON_ARRAY && n->max_items >= 0 && n->min_items > n->max_items)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
									  "minItems: %d is above maxItems %d", n->min_items, n->max_items);
	}
	if (compute_costs(g, err) < 0)
		return -1;
	if (nesting(g, root, 1) > GPTOSS_JSON_MAX_DEPTH)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
								  "schema: nests deeper than %d levels", GPTOSS_JSON_MAX_DEPTH);
	g->root = root;
	return 0;
}

/* Recomputes the costs with a piece-cost function. */
int
gptoss_json_grammar_set_piece_cost(gptoss_json_grammar *g, gptoss_json_piece_cost_fn fn, void *ctx,
								   gptoss_error *err)
{
	g->piece_cost = fn;
	g->piece_ctx = ctx;
	return compute_costs(g, err);
}

/* Cost of the cheapest document. */
int
gptoss_json_grammar_min_length(const gptoss_json_grammar *g)
{
	return node_at(g, g->root)->min_len;
}

/* Longest key or literal text. */
int
gptoss_json_grammar_max_text(const gptoss_json_grammar *g)
{
	return g->max_text;
}

/* ---------------------------------------------------------------------------
 * Matching
 */

/*
 * One string-content byte in lexer state st: -1 invalid, 0 stays inside (new
 * state in *next, *begun = 1 when a character starts here), 1 closing quote.
 * Escapes are the short ones only (no \u): every character has one spelling
 * and the JSON never carries a NUL or a lone surrogate.
 */
static inline int
lex_step(uint8_t st, uint8_t c, uint8_t *next, int *begun)
{
	int			rest;

	*begun = 0;
	if (st == LX_PLAIN)
	{
		if (c == '"')
			return 1;
		*begun = 1;
		if (c == '\\')
			*next = LX_ESC;
		else if (c < 0x20)
			return -1;
		else if (c < 0x80)
			*next = LX_PLAIN;
		else if (gptoss_utf8_lead_length(c) >= 2)
			*next = c;
		else
			return -1;
		return 0;
	}
	if (st == LX_ESC)
	{
		if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' &&
			c != 'r' && c != 't')
			return -1;
		*next = LX_PLAIN;
		return 0;
	}
	if (st >= 0x80)
	{
		/* the byte after a lead */
		if (!gptoss_utf8_second_byte_ok(st, c))
			return -1;
		rest = gptoss_utf8_lead_length(st) - 2;
	}
	else
	{
		if (!gptoss_utf8_is_continuation(c))
			return -1;
		rest = st - LX_CONT1;
	}
	*next = rest == 0 ? LX_PLAIN : (uint8_t) (LX_CONT1 + rest - 1);
	return 0;
}

/* Lexes bytes from the plain state (see json_grammar.h). */
int
gptoss_json_lex_string(const char *bytes, int n, int *chars, int *pending)
{
	uint8_t		st = LX_PLAIN;

	*chars = 0;
	*pending = 0;
	for (int i = 0; i < n; i++)
	{
		int			begun;
		int			r = lex_step(st, (uint8_t) bytes[i], &st, &begun);

		if (r < 0)
			return -1;
		if (r == 1)
			return i;
		*chars += begun;
	}
	*pending = lex_pending(st);
	return n;
}

/* Copies the live frames of a thread. */
static inline void
copy_thread(gptoss_json_thread *dst, const gptoss_json_thread *src)
{
	dst->depth = src->depth;
	memcpy(dst->f, src->f, (size_t) src->depth * sizeof(gptoss_json_frame));
}

/* Opens a value of node on top of w; false when the stack is full. */
static inline bool
push(gptoss_json_thread *w, int node)
{
	gptoss_json_frame *f;

	if (w->depth >= GPTOSS_JSON_MAX_DEPTH)
		return false;
	f = &w->f[w->depth++];
	f->node = (uint16_t) node;
	f->phase = PH_START;
	f->lex = 0;
	f->count = 0;
	f->aux = 0;
	return true;
}

/* Byte c where a key may open: a free key of a MAP, or a listed one with candidates from property p. */
static inline int
open_key(const gptoss_json_grammar *g, const json_node *n, gptoss_json_frame *f, uint8_t c, int p)
{
	int			k;

	if (c != '"')
		return 0;
	if (n->kind == GPTOSS_JSON_MAP)
	{
		f->phase = PH_MAP_KEY;
		f->lex = LX_PLAIN;
		return 1;
	}
	k = trie_child(g, n->trie, '"');
	if (k < 0 || (trie_at(g, k)->props & n->allowed[p]) == 0)
		return 0;
	f->phase = PH_OBJ_KEY;
	f->aux = (uint16_t) k;
	f->count = (uint16_t) p;
	return 1;
}

/* '}' after property p - 1 (or the '{'): closes the object when nothing required is left. */
static inline int
close_object(const json_node *n, gptoss_json_thread *w, int p)
{
	if (n->kind == GPTOSS_JSON_OBJECT && n->first_req[p] < n_props(n))
		return 0;
	w->depth--;
	return 1;
}

/* ']' after items items: closes the array when there are enough. */
static inline int
close_array(const json_node *n, gptoss_json_thread *w, int items)
{
	if (items < n->min_items)
		return 0;
	w->depth--;
	return 1;
}

/* The one space allowed after ',' or ':' (lex = space used); true when c is it. */
static inline bool
take_space(gptoss_json_frame *f, uint8_t c)
{
	if (c != ' ' || f->lex)
		return false;
	f->lex = 1;
	return true;
}

/*
 * Feeds byte c to thread in; writes the resulting threads (0, 1, or several
 * after an anyOf) to out[0 .. cap) and returns their count.
 */
static int
feed_thread(const gptoss_json_grammar *g, const gptoss_json_thread *in, uint8_t c,
			gptoss_json_thread *out, int cap)
{
	gptoss_json_thread *w = &out[0];

	if (cap <= 0)
		return 0;
	copy_thread(w, in);
	for (;;)
	{
		gptoss_json_frame *f;
		const json_node *n;
		uint8_t		nl;
		int			begun,
					r,
					k;

		if (w->depth == 0)
			return 0;
		f = &w->f[w->depth - 1];
		n = node_at(g, f->node);
		switch (f->phase)
		{
			case PH_START:
				switch (n->kind)
				{
					case GPTOSS_JSON_ANY_OF:
						{
							gptoss_json_thread base;
							int			produced = 0;

							copy_thread(&base, w);
							for (int a = 0; a < n_alts(n) && produced < cap; a++)
							{
								base.f[base.depth - 1].node = (uint16_t) alt_at(n, a);
								produced += feed_thread(g, &base, c, out + produced, cap - produced);
							}
							return produced;
						}
					case GPTOSS_JSON_OBJECT:
					case GPTOSS_JSON_MAP:
						if (c != '{')
							return 0;
						f->phase = PH_OBJ_FIRST;
						return 1;
					case GPTOSS_JSON_ARRAY:
						if (c != '[')
							return 0;
						f->phase = PH_ARR_FIRST;
						return 1;
					case GPTOSS_JSON_STRING:
						if (c != '"')
							return 0;
						f->phase = PH_STR;
						f->lex = LX_PLAIN;
						return 1;
					case GPTOSS_JSON_INTEGER:
					case GPTOSS_JSON_NUMBER:
						if (c == '-')
							f->phase = PH_NUM_MINUS;
						else if (c == '0')
							f->phase = PH_NUM_ZERO;
						else if (c >= '1' && c <= '9')
							f->phase = PH_NUM_INT;
						else
							return 0;
						f->count = c == '-' ? 0 : 1;
						return 1;
					case GPTOSS_JSON_LITERALS:
						k = trie_child(g, n->trie, c);
						if (k < 0)
							return 0;
						f->phase = PH_LIT;
						f->aux = (uint16_t) k;
						return 1;
				}
				return 0;

			case PH_OBJ_FIRST:
				if (c == '}')
					return close_object(n, w, 0);
				return open_key(g, n, f, c, 0);

			case PH_OBJ_KEY:
				k = trie_child(g, f->aux, c);
				if (k < 0 || (trie_at(g, k)->props & n->allowed[f->count]) == 0)
					return 0;
				if (trie_at(g, k)->terminal)
				{
					f->phase = PH_OBJ_COLON;
					f->count = (uint16_t) trie_at(g, k)->prop;
				}
				else
					f->aux = (uint16_t) k;
				return 1;

			case PH_MAP_KEY:
				r = lex_step(f->lex, c, &nl, &begun);
				if (r < 0)
					return 0;
				if (r == 1)
					f->phase = PH_OBJ_COLON;
				else
					f->lex = nl;
				return 1;

			case PH_OBJ_COLON:
				if (c != ':')
					return 0;
				f->phase = PH_OBJ_VALUE;
				f->lex = 0;
				return 1;

			case PH_OBJ_VALUE:
				if (take_space(f, c))
					return 1;
				f->phase = PH_OBJ_NEXT;
				if (n->kind == GPTOSS_JSON_OBJECT)
				{
					int			value = prop_at(n, f->count)->value;

					f->count++;
					if (!push(w, value))
						return 0;
				}
				else if (!push(w, n->child))
					return 0;
				continue;		/* the byte starts the value */

			case PH_OBJ_NEXT:
				if (c == ',')
				{
					if (n->kind == GPTOSS_JSON_OBJECT && f->count >= n_props(n))
						return 0;
					f->phase = PH_OBJ_COMMA;
					f->lex = 0;
					return 1;
				}
				if (c == '}')
					return close_object(n, w, f->count);
				return 0;

			case PH_OBJ_COMMA:
				if (take_space(f, c))
					return 1;
				return open_key(g, n, f, c, f->count);

			case PH_ARR_FIRST:
				if (c == ']')
					return close_array(n, w, 0);
				if (n->max_items == 0)
					return 0;
				f->phase = PH_ARR_NEXT;
				f->count = 1;
				if (!push(w, n->child))
					return 0;
				continue;

			case PH_ARR_NEXT:
				if (c == ',')
				{
					if ((n->max_items >= 0 && f->count >= n->max_items) || f->count >= 65535)
						return 0;
					f->phase = PH_ARR_ITEM;
					f->lex = 0;
					return 1;
				}
				if (c == ']')
					return close_array(n, w, f->count);
				return 0;

			case PH_ARR_ITEM:
				if (take_space(f, c))
					return 1;
				f->phase = PH_ARR_NEXT;
				f->count++;
				if (!push(w, n->child))
					return 0;
				continue;

			case PH_STR:
				r = lex_step(f->lex, c, &nl, &begun);
				if (r < 0)
					return 0;
				if (r == 1)
				{
					w->depth--;
					return 1;
				}
				if (begun)
				{
					if ((n->max_length >= 0 && f->count >= n->max_length) || f->count >= 65535)
						return 0;
					f->count++;
				}
				f->lex = nl;
				return 1;

			case PH_NUM_MINUS:
				if (c == '0')
					f->phase = PH_NUM_ZERO;
				else if (c >= '1' && c <= '9')
					f->phase = PH_NUM_INT;
				else
					return 0;
				f->count = 1;
				return 1;

			case PH_NUM_ZERO:
			case PH_NUM_INT:
			case PH_NUM_FRAC:
				if (c >= '0' && c <= '9' && f->phase != PH_NUM_ZERO)
				{
					if (f->count >= GPTOSS_JSON_MAX_DIGITS)
						return 0;
					f->count++;
					return 1;
				}
				if (c == '.' && f->phase != PH_NUM_FRAC && n->kind == GPTOSS_JSON_NUMBER)
				{
					if (f->count >= GPTOSS_JSON_MAX_DIGITS)
						return 0;
					f->phase = PH_NUM_DOT;
					return 1;
				}
				w->depth--;		/* the number ended; the byte goes to the enclosing value */
				continue;

			case PH_NUM_DOT:
				if (c < '0' || c > '9')
					return 0;
				f->phase = PH_NUM_FRAC;
				f->count++;
				return 1;

			case PH_LIT:
				k = trie_child(g, f->aux, c);
				if (k >= 0)
				{
					f->aux = (uint16_t) k;
					return 1;
				}
				if (!trie_at(g, f->aux)->terminal)
					return 0;
				w->depth--;		/* the literal ended */
				continue;
		}
		return 0;
	}
}

/* True when threads a and b are identical. */
static inline bool
same_thread(const gptoss_json_thread *a, const gptoss_json_thread *b)
{
	return a->depth == b->depth &&
		memcmp(a->f, b->f, (size_t) a->depth * sizeof(gptoss_json_frame)) == 0;
}

/* The state before the first byte: one thread at the root's start. */
void
gptoss_json_state_init(const gptoss_json_grammar *g, gptoss_json_state *s)
{
	s->n = 1;
	s->t[0].depth = 0;
	push(&s->t[0], g->root);
}

/* Copies the live part of a state. */
void
gptoss_json_state_copy(gptoss_json_state *dst, const gptoss_json_state *src)
{
	dst->n = src->n;
	for (int i = 0; i < src->n; i++)
		copy_thread(&dst->t[i], &src->t[i]);
}

/* out = in after byte c. */
bool
gptoss_json_state_feed(const gptoss_json_grammar *g, const gptoss_json_state *in, uint8_t c,
					   gptoss_json_state *out)
{
	int			n = 0;

	for (int i = 0; i < in->n && n < GPTOSS_JSON_MAX_THREADS; i++)
		n += feed_thread(g, &in->t[i], c, &out->t[n], GPTOSS_JSON_MAX_THREADS - n);
	if (n > 1)
	{
		int			kept = 1;

		for (int i = 1; i < n; i++)
		{
			bool		dup = false;

			for (int j = 0; j < kept && !dup; j++)
				dup = same_thread(&out->t[i], &out->t[j]);
			if (!dup)
			{
				if (kept != i)
					copy_thread(&out->t[kept], &out->t[i]);
				kept++;
			}
		}
		n = kept;
	}
	out->n = n;
	return n > 0;
}

/* Feeds n bytes in place. */
bool
gptoss_json_state_feed_bytes(const gptoss_json_grammar *g, gptoss_json_state *s,
							 const char *bytes, size_t n)
{
	gptoss_json_state tmp;

	for (size_t i = 0; i < n; i++)
	{
		if (!gptoss_json_state_feed(g, s, (uint8_t) bytes[i], &tmp))
		{
			s->n = 0;
			return false;
		}
		gptoss_json_state_copy(s, &tmp);
	}
	return s->n > 0;
}

/* Bytes frame f still needs (its children already complete unless it is innermost). */
static int
frame_rest(const gptoss_json_grammar *g, const gptoss_json_frame *f)
{
	const json_node *n = node_at(g, f->node);
	int			m;

	switch (f->phase)
	{
		case PH_START:
			return n->min_len;
		case PH_OBJ_FIRST:
			return n->kind == GPTOSS_JSON_MAP ? 1 : n->min_len - 1;
		case PH_OBJ_KEY:
			{
				uint64_t	cand = trie_at(g, f->aux)->props & n->allowed[f->count];
				int			best = COST_INF;
				int			depth = trie_at(g, f->aux)->depth;

				while (cand)
				{
					int			j = __builtin_ctzll(cand);
					int			c = cost_add(cost_add(prop_at(n, j)->key_rest[depth] + 1,
													  node_at(g, prop_at(n, j)->value)->min_len),
											 cost_add(n->req_cost[j + 1], 1));

					if (c < best)
						best = c;
					cand &= cand - 1;
				}
				return best;
			}
		case PH_MAP_KEY:
			return cost_add(3 + lex_pending(f->lex), node_at(g, n->child)->min_len);
		case PH_OBJ_COLON:
		case PH_OBJ_VALUE:
			m = f->phase == PH_OBJ_COLON ? 1 : 0;
			if (n->kind == GPTOSS_JSON_MAP)
				return cost_add(m + 1, node_at(g, n->child)->min_len);
			return cost_add(cost_add(m + 1, node_at(g, prop_at(n, f->count)->value)->min_len),
							n->req_cost[f->count + 1]);
		case PH_OBJ_NEXT:
			return n->kind == GPTOSS_JSON_MAP ? 1 : cost_add(n->req_cost[f->count], 1);
		case PH_OBJ_COMMA:
			if (n->kind == GPTOSS_JSON_MAP)
				return cost_add(4, node_at(g, n->child)->min_len);
			return n->comma_cost[f->count];
		case PH_ARR_FIRST:
			return n->min_len - 1;
		case PH_ARR_NEXT:
		case PH_ARR_ITEM:
			{
				int			item = node_at(g, n->child)->min_len;
				int			done = f->count + (f->phase == PH_ARR_ITEM ? 1 : 0);
				int			more = done >= n->min_items ? 0 : n->min_items - done;
				int			rest = cost_add(cost_mul(more, cost_add(item, 1)), 1);

				/* after ',' one more item comes whatever min_items says */
				return f->phase == PH_ARR_ITEM ? cost_add(rest, item) : rest;
			}
		case PH_STR:
			return 1 + lex_pending(f->lex);
		case PH_NUM_MINUS:
		case PH_NUM_DOT:
			return 1;
		case PH_NUM_ZERO:
		case PH_NUM_INT:
		case PH_NUM_FRAC:
			return 0;
		case PH_LIT:
			return trie_at(g, f->aux)->min_rest;
	}
	return COST_INF;
}

/* Bytes of the shortest completion of one thread. */
static int
thread_shortest(const gptoss_json_grammar *g, const gptoss_json_thread *t)
{
	int			sum = 0;

	for (int i = 0; i < t->depth; i++)
		sum = cost_add(sum, frame_rest(g, &t->f[i]));
	return sum;
}

/* Shortest completion over the threads. */
int
gptoss_json_state_shortest(const gptoss_json_grammar *g, const gptoss_json_state *s)
{
	int			best = COST_INF;

	for (int i = 0; i < s->n; i++)
	{
		int			c = thread_shortest(g, &s->t[i]);

		if (c < best)
			best = c;
	}
	return best;
}

/* A thread is a whole document: closed, or a number/literal that may end here. */
static bool
thread_accepting(const gptoss_json_grammar *g, const gptoss_json_thread *t)
{
	const gptoss_json_frame *f;

	if (t->depth == 0)
		return true;
	if (t->depth > 1)
		return false;
	f = &t->f[0];
	return f->phase == PH_NUM_ZERO || f->phase == PH_NUM_INT || f->phase == PH_NUM_FRAC ||
		(f->phase == PH_LIT && trie_at(g, f->aux)->terminal);
}

/* True when some thread is a whole document. */
bool
gptoss_json_state_accepting(const gptoss_json_grammar *g, const gptoss_json_state *s)
{
	for (int i = 0; i < s->n; i++)
		if (thread_accepting(g, &s->t[i]))
			return true;
	return false;
}

/* True when some thread closed the document. */
bool
gptoss_json_state_closed(const gptoss_json_state *s)
{
	for (int i = 0; i < s->n; i++)
		if (s->t[i].depth == 0)
			return true;
	return false;
}

/* Feeds a piece to cur; true when its cost lowers the cheapest completion by exactly that cost. */
static bool
try_piece(const gptoss_json_grammar *g, const gptoss_json_state *cur, int rest, const char *text,
		  int len, gptoss_json_state *next)
{
	gptoss_json_state_copy(next, cur);
	return gptoss_json_state_feed_bytes(g, next, text, (size_t) len) &&
		gptoss_json_state_shortest(g, next) == rest - piece_cost(g, text, len);
}

/* Tries the literal texts a value of node may start with (anyOf: its alternatives'). */
static bool
try_start_units(const gptoss_json_grammar *g, const gptoss_json_state *cur, int rest, int node,
				int nesting, gptoss_json_state *next, const char **piece, int *piece_len)
{
	const json_node *n = node_at(g, node);

	if (n->kind == GPTOSS_JSON_LITERALS)
		for (int j = 0; j < n_lits(n); j++)
			if (try_piece(g, cur, rest, lit_at(n, j)->text, lit_at(n, j)->len, next))
			{
				*piece = lit_at(n, j)->text;
				*piece_len = lit_at(n, j)->len;
				return true;
			}
	if (n->kind == GPTOSS_JSON_ANY_OF && nesting < GPTOSS_JSON_MAX_DEPTH)
		for (int a = 0; a < n_alts(n); a++)
			if (try_start_units(g, cur, rest, alt_at(n, a), nesting + 1, next, piece, piece_len))
				return true;
	return false;
}

/*
 * The whole-text pieces (keys, literals, or their rests) that may come next
 * in cur: the first whose cost is an exact step down goes to next.
 */
static bool
try_units(const gptoss_json_grammar *g, const gptoss_json_state *cur, int rest,
		  gptoss_json_state *next, const char **piece, int *piece_len)
{
	for (int i = 0; i < cur->n; i++)
	{
		const gptoss_json_thread *t = &cur->t[i];
		const gptoss_json_frame *f;
		const json_node *n;
		uint64_t	keys = 0;
		int			from = 0;

		if (t->depth == 0)
			continue;
		f = &t->f[t->depth - 1];
		n = node_at(g, f->node);
		switch (f->phase)
		{
			case PH_START:
				if (try_start_units(g, cur, rest, f->node, 0, next, piece, piece_len))
					return true;
				break;
			case PH_ARR_FIRST:
			case PH_ARR_ITEM:
			case PH_OBJ_VALUE:
				/* the value is opened by its first byte: its literals may come next */
				{
					int			child = f->phase != PH_OBJ_VALUE || n->kind == GPTOSS_JSON_MAP ? n->child
						: prop_at(n, f->count)->value;

					if (try_start_units(g, cur, rest, child, 0, next, piece, piece_len))
						return true;
				}
				break;
			case PH_OBJ_FIRST:
			case PH_OBJ_COMMA:
				if (n->kind == GPTOSS_JSON_OBJECT && (f->phase == PH_OBJ_FIRST || f->count < n_props(n)))
					keys = n->allowed[f->phase == PH_OBJ_FIRST ? 0 : f->count];
				break;
			case PH_OBJ_KEY:
				keys = trie_at(g, f->aux)->props & n->allowed[f->count];
				from = trie_at(g, f->aux)->depth;
				break;
			case PH_LIT:
				for (int j = 0; j < n_lits(n); j++)
				{
					int			d = trie_at(g, f->aux)->depth;

					if (lit_at(n, j)->len > d &&
						try_piece(g, cur, rest, lit_at(n, j)->text + d, lit_at(n, j)->len - d, next))
					{
						*piece = lit_at(n, j)->text + d;
						*piece_len = lit_at(n, j)->len - d;
						return true;
					}
				}
				break;
		}
		while (keys)
		{
			const json_property *p = prop_at(n, __builtin_ctzll(keys));

			keys &= keys - 1;
			if (try_piece(g, cur, rest, p->key + from, p->key_len - from, next))
			{
				*piece = p->key + from;
				*piece_len = p->key_len - from;
				return true;
			}
		}
	}
	return false;
}

/*
 * A cheapest completion, piece by piece: from each state some single byte
 * (cost 1) or some key or literal piece lowers the cheapest cost by exactly
 * its own cost (that is what makes the cost the cheapest); take the lowest
 * such byte, else the first such piece.
 */
int
gptoss_json_state_completion(const gptoss_json_grammar *g, const gptoss_json_state *s,
							 char *buf, int cap, int *piece_end, int max_pieces, int *n_pieces)
{
	gptoss_json_state cur,
				next;
	int			len = 0;
	int			rest = gptoss_json_state_shortest(g, s);

	*n_pieces = 0;
	if (s->n == 0 || rest >= COST_INF)
		return -1;
	gptoss_json_state_copy(&cur, s);
	while (rest > 0 || !gptoss_json_state_accepting(g, &cur))
	{
		const char *piece = NULL;
		int			piece_len = 0;
		uint8_t		byte;
		int			c;

		for (c = 0; c < 256; c++)
			if (gptoss_json_state_feed(g, &cur, (uint8_t) c, &next) &&
				gptoss_json_state_shortest(g, &next) == rest - 1)
				break;
		if (c < 256)
		{
			byte = (uint8_t) c;
			piece = (const char *) &byte;
			piece_len = 1;
		}
		else if (!try_units(g, &cur, rest, &next, &piece, &piece_len))
			return -1;
		if (len + piece_len > cap || *n_pieces >= max_pieces)
			return -1;
		memcpy(buf + len, piece, (size_t) piece_len);
		len += piece_len;
		piece_end[(*n_pieces)++] = len;
		gptoss_json_state_copy(&cur, &next);
		rest = gptoss_json_state_shortest(g, &cur);
	}
	return len;
}

/* Innermost frames all in plain string content: the room each string has left. */
bool
gptoss_json_state_in_plain_string(const gptoss_json_grammar *g, const gptoss_json_state *s,
								  int32_t room[GPTOSS_JSON_MAX_THREADS])
{
	if (s->n == 0)
		return false;
	for (int i = 0; i < s->n; i++)
	{
		const gptoss_json_thread *t = &s->t[i];
		const gptoss_json_frame *f;
		const json_node *n;

		if (t->depth == 0)
			return false;
		f = &t->f[t->depth - 1];
		n = node_at(g, f->node);
		if (f->phase == PH_MAP_KEY && f->lex == LX_PLAIN)
			room[i] = INT32_MAX;
		else if (f->phase == PH_STR && f->lex == LX_PLAIN)
			room[i] = n->max_length >= 0 ? n->max_length - f->count : 65535 - f->count;
		else
			return false;
	}
	return true;
}

/* The one-thread state of thread i. */
void
gptoss_json_state_thread(const gptoss_json_state *s, int i, gptoss_json_state *out)
{
	out->n = 1;
	copy_thread(&out->t[0], &s->t[i]);
}
