/*
 * tmpname.c: the unit tests' temporary directories and files.
 */
#define _XOPEN_SOURCE 700
#include "tmpname.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Writes "$TMPDIR/prefix" followed by mkdtemp's six-letter pattern into buf. */
static int
make_template(char *buf, size_t size, const char *prefix)
{
	const char *base = getenv("TMPDIR");
	int			n = snprintf(buf, size, "%s/%s", base && *base ? base : "/tmp", prefix);

	if (n < 0 || (size_t) n + 7 > size)
		return -1;
	memset(buf + n, 'X', 6);
	buf[n + 6] = '\0';
	return 0;
}

/* Creates a directory named prefix plus a random suffix. */
int
tmp_make_dir(char *buf, size_t size, const char *prefix)
{
	if (make_template(buf, size, prefix) < 0 || mkdtemp(buf) == NULL)
		return -1;
	return 0;
}

/* Creates a file named prefix plus a random suffix; returns its descriptor. */
int
tmp_make_file(char *buf, size_t size, const char *prefix)
{
	if (make_template(buf, size, prefix) < 0)
		return -1;
	return mkstemp(buf);
}
