/*
 * logprobs.cu: log-probabilities on the device, with the semantics of
 * logprobs.c: per logits row, the log-softmax at temperature 1 of the raw
 * logits at the produced token (sampled or forced) and the top_k (<= 20)
 * most probable ids, value descending and id ascending on ties; NaN logits
 * are skipped.  One block per row: a max and a double-precision sum of
 * exponentials give the log-sum-exp; each thread keeps a sorted top-k of
 * its strided share of the row, and k block-wide argmax rounds over the
 * threads' current heads merge them.
 */
#include "kernels.cuh"

#define LOGPROB_THREADS 512

/* Log-probabilities of row blockIdx.x of logits into out[rows[blockIdx.x].entry]. */
__global__ void __launch_bounds__(LOGPROB_THREADS)
logprobs_kernel(const LogprobRow *__restrict__ rows, const float *__restrict__ logits, int V,
				const int32_t *__restrict__ out_tokens, gptoss_token_logprobs *__restrict__ out)
{
	__shared__ float fscratch[32];
	__shared__ double dscratch[32];
	__shared__ float win_v[32];
	__shared__ int win_i[32];
	const LogprobRow lr = rows[blockIdx.x];
	const float *row = logits + (size_t) blockIdx.x * V;
	gptoss_token_logprobs *o = &out[lr.entry];
	int			k = lr.top_k < GPTOSS_MAX_TOP_LOGPROBS ? lr.top_k : GPTOSS_MAX_TOP_LOGPROBS;
	float		top_v[GPTOSS_MAX_TOP_LOGPROBS];
	int			top_i[GPTOSS_MAX_TOP_LOGPROBS];
	int			n = 0;
	int			head = 0;
	float		m = -INFINITY;
	double		sum = 0.0;
	double		lse;

	if (k > V)
		k = V;
	for (int i = threadIdx.x; i < V; i += blockDim.x)
	{
		float		v = row[i];

		if (v > m)
			m = v;
		/* ids ascend within a thread: a strictly larger value is needed to enter */
		if (v == v && k > 0 && (n < k || v > top_v[n - 1]))
		{
			int			j = n < k ? n++ : n - 1;

			while (j > 0 && v > top_v[j - 1])
			{
				top_v[j] = top_v[j - 1];
				top_i[j] = top_i[j - 1];
				j--;
			}
			top_v[j] = v;
			top_i[j] = i;
		}
	}
	m = block_max(m, fscratch);
	if (isfinite(m))
	{
		for (int i = threadIdx.x; i < V; i += blockDim.x)
		{
			float		v = row[i];

			if (v == v)
				sum += exp((double) v - (double) m);
		}
		sum = block_sum(sum, dscratch);
		lse = (double) m + log(sum);
	}
	else
		lse = (double) m;

	/* k rounds: the best current head over all threads wins and advances */
	for (int r = 0; r < k; r++)
	{
		float		v = head < n ? top_v[head] : -INFINITY;
		int			id = head < n ? top_i[head] : -1;

		block_best(&v, &id, win_v, win_i);
		if (id < 0)
		{
			k = r;				/* fewer non-NaN entries than asked */
			break;
		}
		if (head < n && top_i[head] == id)
			head++;
		if (threadIdx.x == 0)
		{
			o->top_ids[r] = id;
			o->top_logprobs[r] = (float) ((double) v - lse);
		}
	}
	if (threadIdx.x == 0)
	{
		int			token = lr.forced >= 0 ? lr.forced : out_tokens[lr.entry];

		o->n_top = k;
		o->logprob = (float) ((double) row[token] - lse);
	}
}

/* Launches one block per row. */
cudaError_t
launch_logprobs(const LogprobRow *rows, int n, const float *logits, int V, const int32_t *out_tokens,
				gptoss_token_logprobs *out, cudaStream_t stream)
{
	if (n <= 0)
		return cudaSuccess;
	logprobs_kernel<<<n, LOGPROB_THREADS, 0, stream>>>(rows, logits, V, out_tokens, out);
	return cudaGetLastError();
}
