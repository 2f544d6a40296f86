/*
 * bench_backend.c: times the CUDA backend directly (no engine, tokenizer or
 * scheduler), on the GPU machine.
 *
 *   bench_backend MODEL_DIR BATCHES PROMPT_LEN GEN GRAPHS
 *   e.g. bench_backend /tmp/20b 1,8,32,64,128 128 128 1
 *
 * Per batch size B: B random prompts of PROMPT_LEN tokens are prefilled in
 * steps of at most 2048 tokens (the engine's default step budget), then
 * GEN-1 greedy decode steps of all B sequences follow.  Prints one JSON line
 * per batch: prefill and decode tokens/s, the first decode step (which
 * captures the CUDA graph of its bucket when GRAPHS=1) separately, and the
 * median decode step.  Each batch size runs once untimed first (cuBLAS loads
 * its kernels for new shapes on first use), then timed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "model.h"

/* qsort order for doubles. */
static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a, y = *(const double *) b;

	return (x > y) - (x < y);
}

int
main(int argc, char **argv)
{
	gptoss_error err = {0};
	gptoss_model *model = NULL;
	gptoss_backend_opts opts;
	gptoss_backend *be;
	int			batches[32], n_batches = 0, max_batch = 1;
	int			P, G;
	char	   *list, *tok;

	if (argc < 6)
	{
		fprintf(stderr, "usage: bench_backend MODEL_DIR BATCHES PROMPT_LEN GEN GRAPHS\n");
		return 2;
	}
	list = strdup(argv[2]);
	for (tok = strtok(list, ","); tok && n_batches < 32; tok = strtok(NULL, ","))
	{
		batches[n_batches] = atoi(tok);
		if (batches[n_batches] > max_batch)
			max_batch = batches[n_batches];
		n_batches++;
	}
	free(list);
	P = atoi(argv[3]);
	G = atoi(argv[4]);
	if (gptoss_model_load(argv[1], &model, NULL, NULL, &err) < 0)
	{
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}
	memset(&opts, 0, sizeof(opts));
	opts.max_seqs = max_batch;
	opts.max_context = P + G + 1;
	opts.gpu_memory_fraction = 0.9;
	opts.cuda_graphs = atoi(argv[5]);
	be = gptoss_backend_cuda_create(model, &opts, NULL, NULL, &err);
	if (!be)
	{
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}

	for (int run = 0; run < 2 * n_batches; run++)
	{
		int			B = batches[run / 2];
		int			timed = run % 2;
		int32_t    *prompts = malloc(sizeof(int32_t) * (size_t) B * P);
		int32_t    *next = malloc(sizeof(int32_t) * B);
		int32_t    *last = malloc(sizeof(int32_t) * B);
		gptoss_step_seq *ss = calloc(B, sizeof(gptoss_step_seq));
		double	   *step_s = malloc(sizeof(double) * (G > 1 ? G : 1));
		double		t0, t_prefill, t_first = 0, t_rest = 0;
		int			done = 0;

		for (size_t i = 0; i < (size_t) B * P; i++)
			prompts[i] = (int32_t) (gptoss_mix64(i * 7919 + (uint64_t) B) % 199990u);
		/* prefill: whole prompts, at most 2048 tokens per step */
		t0 = gptoss_now();
		while (done < B)
		{
			int			n = 0, tokens = 0;

			while (done + n < B && (n == 0 || tokens + P <= 2048))
			{
				gptoss_step_seq *s = &ss[n];

				memset(s, 0, sizeof(*s));
				s->slot = done + n;
				s->tokens = prompts + (size_t) (done + n) * P;
				s->n_tokens = P;
				s->sample = 1;
				s->sampling.top_p = 1.0f;
				tokens += P;
				n++;
			}
			if (be->step(be, ss, n, next + done, NULL, &err) < 0)
			{
				fprintf(stderr, "prefill: %s\n", err.msg);
				return 1;
			}
			done += n;
		}
		t_prefill = gptoss_now() - t0;
		/* decode */
		for (int g = 1; g < G; g++)
		{
			double		ts = gptoss_now();

			for (int b = 0; b < B; b++)
			{
				last[b] = next[b];
				memset(&ss[b], 0, sizeof(ss[b]));
				ss[b].slot = b;
				ss[b].pos = P + g - 1;
				ss[b].tokens = &last[b];
				ss[b].n_tokens = 1;
				ss[b].sample = 1;
				ss[b].sampling.top_p = 1.0f;
			}
			if (be->step(be, ss, B, next, NULL, &err) < 0)
			{
				fprintf(stderr, "decode: %s\n", err.msg);
				return 1;
			}
			step_s[g - 1] = gptoss_now() - ts;
			if (g == 1)
				t_first = step_s[0];
			else
				t_rest += step_s[g - 1];
		}
		if (G > 2)
			qsort(step_s + 1, G - 2, sizeof(double), cmp_double);
		if (timed)
			printf("{\"batch\":%d,\"prompt_len\":%d,\"gen\":%d,\"graphs\":%d,\"prefill_tok_s\":%.1f,"
			   "\"decode_tok_s\":%.1f,\"first_decode_ms\":%.3f,\"median_decode_ms\":%.3f}\n",
			   B, P, G, opts.cuda_graphs, (double) B * P / t_prefill,
			   G > 2 ? (double) B * (G - 2) / t_rest : 0.0, t_first * 1000.0,
			   G > 2 ? step_s[1 + (G - 2) / 2] * 1000.0 : 0.0);
		fflush(stdout);
		for (int b = 0; b < B; b++)
			be->release(be, b);
		free(prompts);
		free(next);
		free(last);
		free(ss);
		free(step_s);
	}
	be->free(be);
	gptoss_model_free(model);
	return 0;
}
