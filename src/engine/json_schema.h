/*
 * json_schema.h: JSON Schema (the subset structured output supports) to a
 * JSON grammar, and OpenAI's response_format object.
 *
 * Supported: type (one name or an array of names) object, array, string,
 * integer, number, boolean, null; properties, required,
 * additionalProperties (false, true or a schema); items, minItems, maxItems;
 * maxLength; enum; const; anyOf; the empty schema (any value).  The
 * annotations title, description, $schema, default and examples are
 * ignored.  Any other keyword is an error (GPTOSS_ERR_INVALID) that names it
 * and where it is.
 */
#ifndef GPTOSS_JSON_SCHEMA_H
#define GPTOSS_JSON_SCHEMA_H

#include "json_grammar.h"

/* Compiles a JSON Schema given as JSON text; NULL with err set. */
gptoss_json_grammar *gptoss_json_schema_compile(const char *schema, size_t len, gptoss_error *err);

/*
 * Parses a response_format object ({"type": "json_schema", "json_schema":
 * {"name", "schema", "description", "strict"}}, {"type": "json_object"} or
 * {"type": "text"}).  *grammar gets the grammar (NULL for "text");
 * *prompt_section, when not NULL, a malloc'ed text for the developer
 * message's "# Response Formats" section ("## name\n\n// description\n
 * {schema}"), or NULL when the format has no schema to show.  Returns 0 or -1
 * with err set.
 */
int			gptoss_response_format_parse(const char *text, size_t len, gptoss_json_grammar **grammar,
										 char **prompt_section, gptoss_error *err);

#endif							/* GPTOSS_JSON_SCHEMA_H */
