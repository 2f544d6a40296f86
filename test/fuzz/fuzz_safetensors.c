/*
 * fuzz_safetensors.c: libFuzzer target for the safetensors header parser.
 *
 * The input is a whole safetensors file image.  When the parser accepts it,
 * every tensor it reports must lie inside the image (its first and last data
 * bytes are read, so AddressSanitizer sees any out-of-bounds offset), must be
 * findable by name, and must not overlap the header.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc/engine \
 *     test/fuzz/fuzz_safetensors.c src/engine/safetensors.c src/engine/common.c \
 *     -ljansson -o build/fuzz_safetensors
 *   mkdir -p build/fuzz_corpus && head -c 20000 build/tiny/model.safetensors \
 *     > build/fuzz_corpus/tiny_head
 *   build/fuzz_safetensors -max_total_time=180 build/fuzz_corpus
 */
#include "safetensors.h"

#include <stdlib.h>
#include <string.h>

/* Touches a byte so the sanitizer checks the address. */
static volatile uint8_t sink;

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One fuzz input: parse, then check what the parser promised. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	gptoss_st_file file;
	gptoss_error err = {0};
	/* A private copy sized exactly, so reads past the image hit the redzone. */
	uint8_t    *image = malloc(size ? size : 1);

	if (!image)
		return 0;
	memcpy(image, data, size);
	if (gptoss_st_parse(image, size, "fuzz", &file, &err) == 0)
	{
		for (int i = 0; i < file.n_tensors; i++)
		{
			const gptoss_st_tensor *t = &file.tensors[i];

			if (t->offset < file.data_start || t->offset + t->nbytes > size ||
				gptoss_st_find(&file, t->name) != t)
				abort();
			if (t->nbytes > 0)
				sink = image[t->offset] ^ image[t->offset + t->nbytes - 1];
		}
		gptoss_st_free(&file);
	}
	else if (err.msg[0] == '\0')
		abort();				/* every failure must say why */
	free(image);
	return 0;
}
