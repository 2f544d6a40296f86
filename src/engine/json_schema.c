/*
 * json_schema.c: compiling JSON Schema into a JSON grammar (json_grammar.h).
 *
 * The schema is parsed with jansson and walked recursively; each schema
 * becomes one grammar node.  Where a schema allows more than the grammar
 * can produce the grammar produces a subset, which still validates: objects
 * with listed properties produce only those (in the listed order, the
 * optional ones maybe left out) even when additionalProperties allows
 * others.  Errors name the keyword and its place as a JSON pointer
 * ("/properties/address/items").
 */
#include "json_schema.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keywords that only annotate. */
static const char *const ANNOTATIONS[] = {"title", "description", "$schema", "default", "examples"};

/* Keywords that shape the document. */
static const char *const KEYWORDS[] = {
	"type", "properties", "required", "additionalProperties", "items", "minItems",
	"maxItems", "maxLength", "enum", "const", "anyOf"
};

/* Nesting of schemas followed before giving up (the grammar allows less anyway). */
#define MAX_SCHEMA_NESTING 64

typedef struct compiler
{
	gptoss_json_grammar *g;
	gptoss_error *err;
	char		path[512];		/* JSON pointer of the schema being compiled */
	size_t		path_len;
} compiler;

static int	compile(compiler *c, json_t *schema, int nesting);

/* Fails with a message about the current place. */
static int
fail(compiler *c, const char *what)
{
	return gptoss_errorf_code(c->err, GPTOSS_ERR_INVALID, "%s at %s", what,
							  c->path_len ? c->path : "the schema root");
}

/* Appends "/segment" to the path; returns the old length to restore. */
static size_t
path_push(compiler *c, const char *segment)
{
	size_t		old = c->path_len;
	int			n = snprintf(c->path + old, sizeof(c->path) - old, "/%s", segment);

	if (n > 0)
		c->path_len = old + (size_t) n < sizeof(c->path) ? old + (size_t) n : sizeof(c->path) - 1;
	return old;
}

static void
path_pop(compiler *c, size_t old)
{
	c->path_len = old;
	c->path[old] = '\0';
}

/* True when name is in list. */
static bool
in_list(const char *name, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(name, list[i]) == 0)
			return true;
	return false;
}

/* Compiles a sub-schema found under segment(s) of the path. */
static int
compile_at(compiler *c, json_t *schema, const char *seg1, const char *seg2, int nesting)
{
	size_t		old = path_push(c, seg1);
	int			node;

	if (seg2 != NULL)
		path_push(c, seg2);
	node = compile(c, schema, nesting + 1);
	if (node >= 0)
		path_pop(c, old);
	return node;
}

/* A non-negative integer keyword, or dflt when absent; -2 after an error. */
static int
count_keyword(compiler *c, json_t *schema, const char *key, int dflt)
{
	json_t	   *v = json_object_get(schema, key);
	char		msg[128];

	if (v == NULL)
		return dflt;
	if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 0x7fffffff)
	{
		snprintf(msg, sizeof(msg), "\"%s\" must be a non-negative integer", key);
		fail(c, msg);
		return -2;
	}
	return (int) json_integer_value(v);
}

/* True when value v is of JSON Schema type name. */
static bool
value_has_type(json_t *v, const char *type)
{
	if (strcmp(type, "object") == 0)
		return json_is_object(v);
	if (strcmp(type, "array") == 0)
		return json_is_array(v);
	if (strcmp(type, "string") == 0)
		return json_is_string(v);
	if (strcmp(type, "integer") == 0)
		return json_is_integer(v);
	if (strcmp(type, "number") == 0)
		return json_is_number(v);
	if (strcmp(type, "boolean") == 0)
		return json_is_boolean(v);
	if (strcmp(type, "null") == 0)
		return json_is_null(v);
	return false;
}

/* True when v matches the schema's "type" (a name or an array of names; absent matches all). */
static bool
value_matches_type(json_t *v, json_t *type)
{
	size_t		i;
	json_t	   *t;

	if (type == NULL)
		return true;
	if (json_is_string(type))
		return value_has_type(v, json_string_value(type));
	json_array_foreach(type, i, t)
		if (json_is_string(t) && value_has_type(v, json_string_value(t)))
		return true;
	return false;
}

/* Adds the compact JSON text of v to a LITERALS node. */
static int
add_literal(compiler *c, int lit, json_t *v)
{
	char	   *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
	int			rc;

	if (text == NULL)
		return gptoss_errorf(c->err, "out of memory compiling a JSON schema");
	rc = gptoss_json_literals_add(c->g, lit, text, strlen(text), c->err);
	free(text);
	return rc;
}

/* enum / const: the listed values that also match "type". */
static int
compile_literals(compiler *c, json_t *schema)
{
	json_t	   *type = json_object_get(schema, "type");
	json_t	   *en = json_object_get(schema, "enum");
	json_t	   *cn = json_object_get(schema, "const");
	int			lit = gptoss_json_add_literals(c->g, c->err);
	int			n = 0;
	size_t		i;
	json_t	   *v;

	if (lit < 0)
		return -1;
	if (en != NULL && !json_is_array(en))
		return fail(c, "\"enum\" must be an array");
	if (cn != NULL)
	{
		if (en != NULL)
		{
			/* both: the const value, if the enum lists it */
			bool		listed = false;

			json_array_foreach(en, i, v)
				listed = listed || json_equal(v, cn);
			if (!listed)
				return fail(c, "\"const\" is not one of \"enum\": no value is valid");
		}
		if (value_matches_type(cn, type))
		{
			if (add_literal(c, lit, cn) < 0)
				return -1;
			n++;
		}
	}
	else
		json_array_foreach(en, i, v)
			if (value_matches_type(v, type))
		{
			if (add_literal(c, lit, v) < 0)
				return -1;
			n++;
		}
	if (n == 0)
		return fail(c, cn != NULL ? "\"const\" does not match \"type\": no value is valid"
					: "\"enum\" has no value that matches \"type\": no value is valid");
	return lit;
}

/* An object with listed properties, or a map. */
static int
compile_object(compiler *c, json_t *schema, int nesting)
{
	json_t	   *props = json_object_get(schema, "properties");
	json_t	   *req = json_object_get(schema, "required");
	json_t	   *extra = json_object_get(schema, "additionalProperties");
	const char *key;
	json_t	   *sub;
	size_t		i;
	json_t	   *r;
	int			node;

	if (props != NULL && !json_is_object(props))
		return fail(c, "\"properties\" must be an object");
	if (req != NULL && !json_is_array(req))
		return fail(c, "\"required\" must be an array of property names");
	if (extra != NULL && !json_is_boolean(extra) && !json_is_object(extra))
		return fail(c, "\"additionalProperties\" must be a boolean or a schema");
	json_array_foreach(req, i, r)
	{
		char		msg[300];

		if (!json_is_string(r))
			return fail(c, "\"required\" must be an array of property names");
		if (props == NULL || json_object_get(props, json_string_value(r)) == NULL)
		{
			snprintf(msg, sizeof(msg), "\"required\" names \"%.200s\", which is not in \"properties\"",
					 json_string_value(r));
			return fail(c, msg);
		}
	}
	/* additionalProperties as a schema is checked even where no extra property is produced */
	if (json_is_object(extra))
	{
		int			value = compile_at(c, extra, "additionalProperties", NULL, nesting);

		if (value < 0)
			return -1;
		if (props == NULL || json_object_size(props) == 0)
			return gptoss_json_add_map(c->g, value, c->err);
	}
	if ((props == NULL || json_object_size(props) == 0) && !json_is_false(extra))
	{
		int			any = gptoss_json_add_any_value(c->g, c->err);

		return any < 0 ? -1 : gptoss_json_add_map(c->g, any, c->err);
	}
	node = gptoss_json_add_object(c->g, c->err);
	if (node < 0)
		return -1;
	json_object_foreach(props, key, sub)
	{
		json_t	   *key_value = json_string(key);
		char	   *key_text = key_value ? json_dumps(key_value, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
		bool		required = false;
		int			value,
					rc;

		json_decref(key_value);
		if (key_text == NULL)
			return gptoss_errorf(c->err, "out of memory compiling a JSON schema");
		json_array_foreach(req, i, r)
			required = required || strcmp(json_string_value(r), key) == 0;
		value = compile_at(c, sub, "properties", key, nesting);
		rc = value < 0 ? -1 : gptoss_json_object_add(c->g, node, key_text, strlen(key_text), value,
													  required, c->err);
		free(key_text);
		if (rc < 0)
			return -1;
	}
	return node;
}

/* One "type" name with the keywords that apply to it. */
static int
compile_typed(compiler *c, json_t *schema, const char *type, int nesting)
{
	int			lit;

	if (strcmp(type, "object") == 0)
		return compile_object(c, schema, nesting);
	if (strcmp(type, "array") == 0)
	{
		json_t	   *items = json_object_get(schema, "items");
		int			min_items = count_keyword(c, schema, "minItems", 0);
		int			max_items = count_keyword(c, schema, "maxItems", -1);
		int			item;

		if (min_items == -2 || max_items == -2)
			return -1;
		if (items != NULL && !json_is_object(items) && !json_is_boolean(items))
			return fail(c, "\"items\" must be a schema (tuple forms are not supported)");
		item = items != NULL ? compile_at(c, items, "items", NULL, nesting)
			: gptoss_json_add_any_value(c->g, c->err);
		if (item < 0)
			return -1;
		if (max_items >= 0 && min_items > max_items)
			return fail(c, "\"minItems\" is above \"maxItems\": no array is valid");
		return gptoss_json_add_array(c->g, item, min_items, max_items, c->err);
	}
	if (strcmp(type, "string") == 0)
	{
		int			max_length = count_keyword(c, schema, "maxLength", -1);

		if (max_length == -2)
			return -1;
		if (max_length > 65535)
			return fail(c, "\"maxLength\" above 65535 is not supported");
		return gptoss_json_add_string(c->g, max_length, c->err);
	}
	if (strcmp(type, "integer") == 0 || strcmp(type, "number") == 0)
		return gptoss_json_add_number(c->g, type[0] == 'i', c->err);
	if (strcmp(type, "boolean") == 0 || strcmp(type, "null") == 0)
	{
		lit = gptoss_json_add_literals(c->g, c->err);
		if (lit < 0)
			return -1;
		if (type[0] == 'n')
			return gptoss_json_literals_add(c->g, lit, "null", 4, c->err) < 0 ? -1 : lit;
		if (gptoss_json_literals_add(c->g, lit, "true", 4, c->err) < 0 ||
			gptoss_json_literals_add(c->g, lit, "false", 5, c->err) < 0)
			return -1;
		return lit;
	}
	{
		char		msg[200];

		snprintf(msg, sizeof(msg), "unsupported \"type\" \"%.100s\"", type);
		return fail(c, msg);
	}
}

/* The type a schema without "type" is about, from its keywords; NULL = any value. */
static const char *
implied_type(json_t *schema)
{
	if (json_object_get(schema, "properties") || json_object_get(schema, "required") ||
		json_object_get(schema, "additionalProperties"))
		return "object";
	if (json_object_get(schema, "items") || json_object_get(schema, "minItems") ||
		json_object_get(schema, "maxItems"))
		return "array";
	if (json_object_get(schema, "maxLength"))
		return "string";
	return NULL;
}

/* One schema to a node. */
static int
compile(compiler *c, json_t *schema, int nesting)
{
	const char *key;
	json_t	   *v;
	json_t	   *type;
	json_t	   *any_of;

	if (nesting > MAX_SCHEMA_NESTING)
		return fail(c, "schema nests too deeply");
	if (json_is_true(schema))
		return gptoss_json_add_any_value(c->g, c->err);
	if (json_is_false(schema))
		return fail(c, "schema false admits no value");
	if (!json_is_object(schema))
		return fail(c, "a schema must be an object or a boolean");
	json_object_foreach(schema, key, v)
	{
		char		msg[300];

		if (in_list(key, KEYWORDS, sizeof(KEYWORDS) / sizeof(KEYWORDS[0])) ||
			in_list(key, ANNOTATIONS, sizeof(ANNOTATIONS) / sizeof(ANNOTATIONS[0])))
			continue;
		snprintf(msg, sizeof(msg), "unsupported JSON Schema keyword \"%.200s\"", key);
		return fail(c, msg);
	}

	type = json_object_get(schema, "type");
	any_of = json_object_get(schema, "anyOf");
	if (any_of == NULL && (json_object_get(schema, "enum") || json_object_get(schema, "const")))
		return compile_literals(c, schema);
	if (any_of != NULL)
	{
		int			node;
		size_t		i;

		json_object_foreach(schema, key, v)
			if (strcmp(key, "anyOf") != 0 &&
				!in_list(key, ANNOTATIONS, sizeof(ANNOTATIONS) / sizeof(ANNOTATIONS[0])))
		{
			char		msg[300];

			snprintf(msg, sizeof(msg), "\"anyOf\" cannot be combined with \"%.200s\"", key);
			return fail(c, msg);
		}
		if (!json_is_array(any_of) || json_array_size(any_of) == 0)
			return fail(c, "\"anyOf\" must be a non-empty array of schemas");
		node = gptoss_json_add_any_of(c->g, c->err);
		if (node < 0)
			return -1;
		json_array_foreach(any_of, i, v)
		{
			char		index[24];
			int			alt;

			snprintf(index, sizeof(index), "%zu", i);
			alt = compile_at(c, v, "anyOf", index, nesting);
			if (alt < 0 || gptoss_json_any_of_add(c->g, node, alt, c->err) < 0)
				return -1;
		}
		return node;
	}

	if (type == NULL)
	{
		const char *implied = implied_type(schema);

		return implied ? compile_typed(c, schema, implied, nesting)
			: gptoss_json_add_any_value(c->g, c->err);
	}
	if (json_is_string(type))
		return compile_typed(c, schema, json_string_value(type), nesting);
	if (json_is_array(type) && json_array_size(type) > 0)
	{
		int			node = gptoss_json_add_any_of(c->g, c->err);
		size_t		i;

		if (node < 0)
			return -1;
		json_array_foreach(type, i, v)
		{
			int			alt;

			if (!json_is_string(v))
				return fail(c, "\"type\" must be a type name or an array of them");
			alt = compile_typed(c, schema, json_string_value(v), nesting);
			if (alt < 0 || gptoss_json_any_of_add(c->g, node, alt, c->err) < 0)
				return -1;
		}
		return node;
	}
	return fail(c, "\"type\" must be a type name or an array of them");
}

/* A grammar from a parsed schema. */
static gptoss_json_grammar *
compile_value(json_t *schema, gptoss_error *err)
{
	compiler	c;
	int			root;

	memset(&c, 0, sizeof(c));
	c.err = err;
	c.g = gptoss_json_grammar_new();
	if (c.g == NULL)
	{
		gptoss_errorf(err, "out of memory compiling a JSON schema");
		return NULL;
	}
	root = compile(&c, schema, 0);
	if (root < 0 || gptoss_json_grammar_finish(c.g, root, err) < 0)
	{
		gptoss_json_grammar_free(c.g);
		return NULL;
	}
	return c.g;
}

/* Compiles a schema given as JSON text. */
gptoss_json_grammar *
gptoss_json_schema_compile(const char *schema, size_t len, gptoss_error *err)
{
	json_error_t jerr;
	json_t	   *root = json_loadb(schema, len, JSON_DECODE_ANY, &jerr);
	gptoss_json_grammar *g;

	if (root == NULL)
	{
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "schema is not valid JSON: %s", jerr.text);
		return NULL;
	}
	g = compile_value(root, err);
	json_decref(root);
	return g;
}

/* Prefixes err's message with "response_format: ". */
static void
prefix_error(gptoss_error *err)
{
	char		msg[sizeof(err->msg)];

	if (err == NULL)
		return;
	snprintf(msg, sizeof(msg), "response_format: %.1000s", err->msg);
	memcpy(err->msg, msg, sizeof(msg));
}

/* The "# Response Formats" entry of a json_schema format. */
static char *
prompt_section_of(const char *name, const char *description, json_t *schema)
{
	char	   *text = json_dumps(schema, JSON_COMPACT | JSON_ENCODE_ANY);
	char	   *out;
	size_t		n;

	if (text == NULL)
		return NULL;
	n = strlen(name) + strlen(text) + (description ? strlen(description) + 4 : 0) + 8;
	out = malloc(n);
	if (out != NULL)
	{
		if (description != NULL)
			snprintf(out, n, "## %s\n\n// %s\n%s", name, description, text);
		else
			snprintf(out, n, "## %s\n\n%s", name, text);
	}
	free(text);
	return out;
}

/* Parses a response_format object (see json_schema.h). */
int
gptoss_response_format_parse(const char *text, size_t len, gptoss_json_grammar **grammar,
							 char **prompt_section, gptoss_error *err)
{
	json_error_t jerr;
	json_t	   *rf = json_loadb(text, len, 0, &jerr);
	json_t	   *type;
	const char *key;
	json_t	   *v;
	const char *kind;
	int			rc = -1;

	*grammar = NULL;
	if (prompt_section)
		*prompt_section = NULL;
	if (rf == NULL || !json_is_object(rf))
	{
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "response_format: must be a JSON object");
		goto out;
	}
	type = json_object_get(rf, "type");
	kind = json_is_string(type) ? json_string_value(type) : "";
	json_object_foreach(rf, key, v)
		if (strcmp(key, "type") != 0 && !(strcmp(key, "json_schema") == 0 && strcmp(kind, "json_schema") == 0))
	{
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "response_format: unexpected key \"%.200s\"", key);
		goto out;
	}
	if (strcmp(kind, "text") == 0)
		rc = 0;
	else if (strcmp(kind, "json_object") == 0)
	{
		gptoss_json_grammar *g = gptoss_json_grammar_new();
		int			any,
					map;

		if (g == NULL)
		{
			gptoss_errorf(err, "out of memory compiling a JSON schema");
			goto out;
		}
		if ((any = gptoss_json_add_any_value(g, err)) < 0 ||
			(map = gptoss_json_add_map(g, any, err)) < 0 ||
			gptoss_json_grammar_finish(g, map, err) < 0)
		{
			gptoss_json_grammar_free(g);
			goto out;
		}
		*grammar = g;
		rc = 0;
	}
	else if (strcmp(kind, "json_schema") == 0)
	{
		json_t	   *js = json_object_get(rf, "json_schema");
		json_t	   *schema,
				   *name,
				   *desc,
				   *strict;

		if (!json_is_object(js))
		{
			gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
							   "response_format: \"json_schema\" must be an object with a \"schema\"");
			goto out;
		}
		json_object_foreach(js, key, v)
			if (strcmp(key, "name") != 0 && strcmp(key, "schema") != 0 &&
				strcmp(key, "description") != 0 && strcmp(key, "strict") != 0)
		{
			gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
							   "response_format: unexpected key \"json_schema.%.200s\"", key);
			goto out;
		}
		schema = json_object_get(js, "schema");
		name = json_object_get(js, "name");
		desc = json_object_get(js, "description");
		strict = json_object_get(js, "strict");
		if (schema == NULL || (name && !json_is_string(name)) || (desc && !json_is_string(desc)) ||
			(strict && !json_is_boolean(strict)))
		{
			gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
							   "response_format: \"json_schema\" needs \"schema\"; \"name\" and \"description\" are strings, \"strict\" a boolean");
			goto out;
		}
		*grammar = compile_value(schema, err);
		if (*grammar == NULL)
		{
			prefix_error(err);
			goto out;
		}
		if (prompt_section)
		{
			*prompt_section = prompt_section_of(name ? json_string_value(name) : "response",
												desc ? json_string_value(desc) : NULL, schema);
			if (*prompt_section == NULL)
			{
				gptoss_json_grammar_free(*grammar);
				*grammar = NULL;
				gptoss_errorf(err, "out of memory compiling a JSON schema");
				goto out;
			}
		}
		rc = 0;
	}
	else
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
						   "response_format: \"type\" must be \"json_schema\", \"json_object\" or \"text\"");
out:
	json_decref(rf);
	return rc;
}
