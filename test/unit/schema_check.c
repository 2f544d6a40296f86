/*
 * schema_check.c: the tests' own validator (see schema_check.h), written
 * from the JSON Schema semantics of each keyword.
 */
#include "schema_check.h"

#include <stdio.h>
#include <string.h>

/* Unicode characters of a UTF-8 string (bytes that do not continue a character). */
static size_t
utf8_chars(const char *s, size_t n)
{
	size_t		chars = 0;

	for (size_t i = 0; i < n; i++)
		if (((unsigned char) s[i] & 0xC0) != 0x80)
			chars++;
	return chars;
}

/* True when value has JSON Schema type name. */
static bool
has_type(json_t *v, const char *t)
{
	if (!strcmp(t, "object"))
		return json_is_object(v);
	if (!strcmp(t, "array"))
		return json_is_array(v);
	if (!strcmp(t, "string"))
		return json_is_string(v);
	if (!strcmp(t, "integer"))
		return json_is_integer(v);
	if (!strcmp(t, "number"))
		return json_is_number(v);
	if (!strcmp(t, "boolean"))
		return json_is_boolean(v);
	if (!strcmp(t, "null"))
		return json_is_null(v);
	return false;
}

/* Validates value against schema. */
bool
schema_check(json_t *value, json_t *schema, char *why, size_t cap)
{
	json_t	   *kw;

	if (json_is_true(schema))
		return true;
	if (!json_is_object(schema))
	{
		snprintf(why, cap, "schema is not an object");
		return false;
	}
	if ((kw = json_object_get(schema, "type")) != NULL)
	{
		bool		ok = false;

		if (json_is_string(kw))
			ok = has_type(value, json_string_value(kw));
		else
		{
			size_t		i;
			json_t	   *t;

			json_array_foreach(kw, i, t)
				ok = ok || has_type(value, json_string_value(t));
		}
		if (!ok)
		{
			char	   *v = json_dumps(value, JSON_ENCODE_ANY | JSON_COMPACT);

			snprintf(why, cap, "%s: wrong type", v ? v : "?");
			free(v);
			return false;
		}
	}
	if ((kw = json_object_get(schema, "const")) != NULL && !json_equal(kw, value))
	{
		snprintf(why, cap, "not the const value");
		return false;
	}
	if ((kw = json_object_get(schema, "enum")) != NULL)
	{
		bool		found = false;
		size_t		i;
		json_t	   *e;

		json_array_foreach(kw, i, e)
			found = found || json_equal(e, value);
		if (!found)
		{
			snprintf(why, cap, "not in the enum");
			return false;
		}
	}
	if ((kw = json_object_get(schema, "anyOf")) != NULL)
	{
		bool		found = false;
		size_t		i;
		json_t	   *alt;
		char		inner[256];

		json_array_foreach(kw, i, alt)
			found = found || schema_check(value, alt, inner, sizeof(inner));
		if (!found)
		{
			snprintf(why, cap, "no anyOf alternative matches (last: %s)", inner);
			return false;
		}
	}
	if (json_is_string(value) && (kw = json_object_get(schema, "maxLength")) != NULL &&
		utf8_chars(json_string_value(value), json_string_length(value)) > (size_t) json_integer_value(kw))
	{
		snprintf(why, cap, "string longer than maxLength %lld", (long long) json_integer_value(kw));
		return false;
	}
	if (json_is_array(value))
	{
		size_t		n = json_array_size(value);
		json_t	   *items = json_object_get(schema, "items");

		if ((kw = json_object_get(schema, "minItems")) != NULL && n < (size_t) json_integer_value(kw))
		{
			snprintf(why, cap, "array of %zu items is below minItems", n);
			return false;
		}
		if ((kw = json_object_get(schema, "maxItems")) != NULL && n > (size_t) json_integer_value(kw))
		{
			snprintf(why, cap, "array of %zu items is above maxItems", n);
			return false;
		}
		if (items != NULL)
			for (size_t i = 0; i < n; i++)
				if (!schema_check(json_array_get(value, i), items, why, cap))
					return false;
	}
	if (json_is_object(value))
	{
		json_t	   *props = json_object_get(schema, "properties");
		json_t	   *extra = json_object_get(schema, "additionalProperties");
		const char *key;
		json_t	   *v;
		size_t		i;
		json_t	   *r;

		json_array_foreach(json_object_get(schema, "required"), i, r)
			if (json_object_get(value, json_string_value(r)) == NULL)
			{
				snprintf(why, cap, "required property \"%s\" missing", json_string_value(r));
				return false;
			}
		json_object_foreach(value, key, v)
		{
			json_t	   *sub = props ? json_object_get(props, key) : NULL;

			if (sub == NULL && extra != NULL)
				sub = extra;
			if (sub != NULL && !schema_check(v, sub, why, cap))
				return false;
		}
	}
	return true;
}

/* Parses and validates a document. */
bool
schema_check_text(const char *text, const char *schema, char *why, size_t cap)
{
	json_error_t jerr;
	json_t	   *doc = json_loads(text, JSON_DECODE_ANY, &jerr);
	json_t	   *sch = json_loads(schema, JSON_DECODE_ANY, &jerr);
	bool		ok;

	if (sch == NULL)
	{
		snprintf(why, cap, "schema does not parse");
		json_decref(doc);
		return false;
	}
	if (doc == NULL)
	{
		snprintf(why, cap, "document does not parse: %s", jerr.text);
		json_decref(sch);
		return false;
	}
	ok = schema_check(doc, sch, why, cap);
	json_decref(doc);
	json_decref(sch);
	return ok;
}
