/*
 * backend.c: picks the backend implementation for a device name.
 *
 * "cpu" and "cuda" ask for one backend explicitly; "auto" (or NULL/empty)
 * takes CUDA when this build has it and a device is usable, else the CPU.
 */
#include "backend.h"

#include <strings.h>

/* Creates the backend named by device: "cpu", "cuda" or "auto". */
gptoss_backend *
gptoss_backend_create(const char *device, const gptoss_model *model,
					  const gptoss_backend_opts *opts,
					  gptoss_progress_fn progress, void *progress_arg,
					  gptoss_error *err)
{
	if (!device || !*device || strcasecmp(device, "auto") == 0)
		device = gptoss_cuda_available() ? "cuda" : "cpu";
	if (strcasecmp(device, "cpu") == 0)
		return gptoss_backend_cpu_create(model, opts, err);
	if (strcasecmp(device, "cuda") == 0)
		return gptoss_backend_cuda_create(model, opts, progress, progress_arg, err);
	gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
					   "unknown device \"%s\" (expected cpu, cuda or auto)", device);
	return NULL;
}
