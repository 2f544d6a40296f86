/*
 * schema_check.h: an independent validator for the JSON Schema subset that
 * structured output supports, for the tests.  It works on parsed jansson
 * values and knows nothing of the grammar or the matcher, so a document the
 * matcher wrongly accepts fails here.
 */
#ifndef GPTOSS_SCHEMA_CHECK_H
#define GPTOSS_SCHEMA_CHECK_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* True when value is valid for schema; otherwise why gets the first reason. */
bool		schema_check(json_t *value, json_t *schema, char *why, size_t cap);

/*
 * Parses text as one strict JSON document and validates it against schema
 * (JSON text); why gets the reason on failure.
 */
bool		schema_check_text(const char *text, const char *schema, char *why, size_t cap);

#endif							/* GPTOSS_SCHEMA_CHECK_H */
