/*
 * backend_cuda_disabled.c: the CUDA entry points of a CPU-only build
 * (USE_CUDA=0 or no nvcc): no device is ever available.
 */
#include "backend.h"

/* A CPU-only build has no CUDA device. */
int
gptoss_cuda_available(void)
{
	return 0;
}

/* Reports that this build cannot use CUDA. */
gptoss_backend *
gptoss_backend_cuda_create(const gptoss_model *model, const gptoss_backend_opts *opts,
						   gptoss_progress_fn progress, void *progress_arg,
						   gptoss_error *err)
{
	(void) model;
	(void) opts;
	(void) progress;
	(void) progress_arg;
	gptoss_errorf(err, "this build has no CUDA support: built with USE_CUDA=0 or without nvcc");
	return NULL;
}
