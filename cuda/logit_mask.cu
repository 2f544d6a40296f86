/*
 * logit_mask.cu: token masks of constrained requests, applied to the logits
 * rows before sampling.
 *
 * A masked step entry e has mask_on[e] = 1 and its mask (one bit per token
 * id, gptoss_mask_words(V) words, backend.h) at masks[e]; every other row
 * is left alone.  Disallowed logits become -inf, which sample.cu treats as
 * weight 0 (and argmax never picks while a finite logit exists), so the
 * sampled token is the one the CPU backend picks from the same masked row.
 * One block per logits row; the 32 threads of a warp read the same mask word.
 */
#include "kernels.cuh"

#define MASK_THREADS 256

/* Sets logits[r][i] = -inf where entry samp[r].entry's mask bit i is clear. */
static __global__ void
logit_mask_kernel(const SampleRow *samp, const int32_t *mask_on, const uint32_t *masks, int words,
				  float *logits, int V)
{
	int			r = blockIdx.x;
	int			e = samp[r].entry;
	const uint32_t *m;
	float	   *row;

	if (e < 0 || !mask_on[e])
		return;
	m = masks + (size_t) e * words;
	row = logits + (size_t) r * V;
	for (int i = threadIdx.x; i < V; i += blockDim.x)
		if (!((m[i >> 5] >> (i & 31)) & 1u))
			row[i] = -INFINITY;
}

/* Masks the R logits rows of a step (rows of entries without a mask are untouched). */
cudaError_t
launch_logit_mask(const StepView &sv, int R, const int32_t *mask_on, const uint32_t *masks,
				  float *logits, int V, cudaStream_t stream)
{
	if (R <= 0)
		return cudaSuccess;
	logit_mask_kernel<<<R, MASK_THREADS, 0, stream>>>(sv.samp, mask_on, masks, (V + 31) / 32, logits, V);
	return cudaGetLastError();
}
