/*
 * tmpname.h: fresh temporary directories and files for the unit tests, under
 * $TMPDIR (or /tmp), named prefix plus a random suffix (mkdtemp / mkstemp).
 */
#ifndef GPTOSS_TMPNAME_H
#define GPTOSS_TMPNAME_H

#include <stddef.h>

/* Creates a directory; its path goes to buf (size bytes).  Returns 0 or -1. */
int			tmp_make_dir(char *buf, size_t size, const char *prefix);

/* Creates a file and returns its open descriptor (path in buf), or -1. */
int			tmp_make_file(char *buf, size_t size, const char *prefix);

#endif							/* GPTOSS_TMPNAME_H */
