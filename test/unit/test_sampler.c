/*
 * test_sampler.c: gptoss_sample and gptoss_argmax.
 *
 * The sampler avoids sorting the vocabulary; a naive reference here sorts
 * everything (probability descending, id ascending), cuts top_k then top_p,
 * and inverts the CDF at the same uniform draw: both must pick the same token
 * for every seed, on the real vocabulary size and on logits full of ties.
 * Statistical checks: frequencies over many seeds match softmax(logits/T)
 * (chi-square), and the top_k / top_p renormalised distributions too.
 */
#include "sampler.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>



/* ------------------------------------------------------ naive reference */

static const float *sort_w;

/* probability descending, id ascending */
static int
cmp_ref(const void *a, const void *b)
{
	int			ia = *(const int *) a,
				ib = *(const int *) b;

	if (sort_w[ia] != sort_w[ib])
		return sort_w[ia] > sort_w[ib] ? -1 : 1;
	return ia - ib;
}

/*
 * Full-sort sampler.  Writes the kept set size to *n_keep and the sorted ids to
 * order (when not NULL, [vocab]); returns the token for draw u.
 */
static int
ref_sample(const float *logits, int vocab, const gptoss_sampling *s, double u, int *n_keep_out, int *order_out)
{
	float	   *w = malloc(sizeof(float) * vocab);
	int		   *order = malloc(sizeof(int) * vocab);
	float		mx = -INFINITY;
	int			n_keep = vocab,
				pick = -1;
	double		mass = 0,
				cum = 0;

	for (int i = 0; i < vocab; i++)
		mx = fmaxf(mx, logits[i] / s->temperature);
	for (int i = 0; i < vocab; i++)
	{
		w[i] = expf(logits[i] / s->temperature - mx);
		order[i] = i;
	}
	sort_w = w;
	qsort(order, vocab, sizeof(int), cmp_ref);
	if (s->top_k > 0 && s->top_k < vocab)
		n_keep = s->top_k;
	for (int j = 0; j < n_keep; j++)
		mass += w[order[j]];
	if (s->top_p < 1)
	{
		for (int j = 0; j < n_keep; j++)
		{
			cum += w[order[j]];
			if (cum >= s->top_p * mass)
			{
				n_keep = j + 1;
				mass = cum;
				break;
			}
		}
	}
	cum = 0;
	for (int j = 0; j < n_keep; j++)
	{
		cum += w[order[j]];
		pick = order[j];
		if (cum > u * mass)
			break;
	}
	if (n_keep_out)
		*n_keep_out = n_keep;
	if (order_out)
		memcpy(order_out, order, sizeof(int) * vocab);
	free(w);
	free(order);
	return pick;
}

/* ------------------------------------------------------------------ tests */

static void
test_argmax(void)
{
	float		v[6] = {1, 3, -2, 3, NAN, 0};
	float		nan_only[2] = {NAN, NAN};
	char		scratch[6 * 8];
	gptoss_sampling greedy = {0, 1, 0, 42};

	CHECK(gptoss_argmax(v, 6) == 1, "argmax tie -> lowest id (got %d)", gptoss_argmax(v, 6));
	v[0] = NAN;
	CHECK(gptoss_argmax(v, 6) == 1, "NaN never wins");
	CHECK(gptoss_argmax(nan_only, 2) == 0, "all NaN -> 0");
	CHECK(gptoss_sample(v, 6, &greedy, 0, scratch) == 1, "temperature 0 is argmax");

	/* against a plain loop: every length, values with many ties, NaN and -inf sprinkled in */
	{
		float		a[41];
		int			bad = 0;

		for (int trial = 0; trial < 3000; trial++)
		{
			int			n = 1 + trial % 41;
			int			want = -1;

			for (int i = 0; i < n; i++)
			{
				double		r = rnd();

				a[i] = r < 0.1 ? NAN : r < 0.2 ? -INFINITY : (float) (int) (rnd() * 4);
				if (trial % 7 == 0)
					a[i] = r < 0.5 ? NAN : -INFINITY;
			}
			for (int i = 0; i < n; i++)
				if (a[i] == a[i] && (want < 0 || a[i] > a[want]))
					want = i;
			if (gptoss_argmax(a, n) != (want < 0 ? 0 : want))
				bad++;
		}
		CHECK(bad == 0, "argmax differs from a plain loop in %d of 3000 arrays", bad);
	}
}

/* The sampler picks exactly what a full sort would, for many seeds. */
static void
test_matches_reference(int vocab, int n_draws, int ties, double logit_std)
{
	float	   *logits = malloc(sizeof(float) * vocab);
	void	   *scratch = malloc((size_t) vocab * 8);
	struct
	{
		float		t;
		float		p;
		int			k;
	}			cfg[] = {{1.0f, 1.0f, 0}, {0.7f, 0.9f, 0}, {1.3f, 1.0f, 40}, {0.5f, 0.5f, 200},
		{2.0f, 0.95f, 3}, {1.0f, 0.999f, 0}};
	int			mismatches = 0,
				total = 0;

	for (int i = 0; i < vocab; i++)
		logits[i] = ties ? (float) (int) (rnd() * 6) : (float) (logit_std * rnd_normal());
	for (size_t c = 0; c < sizeof(cfg) / sizeof(cfg[0]); c++)
		for (int d = 0; d < n_draws; d++)
		{
			gptoss_sampling s = {cfg[c].t, cfg[c].p, cfg[c].k, 1000 + (uint64_t) d};
			int64_t		pos = d * 7 + 3;
			int			got = gptoss_sample(logits, vocab, &s, pos, scratch);
			int			want = ref_sample(logits, vocab, &s, gptoss_sample_uniform(s.seed, pos), NULL, NULL);

			total++;
			if (got != want)
			{
				if (mismatches < 5)
					printf("  vocab %d T %.2f top_p %.3f top_k %d seed %d: got %d want %d\n",
						   vocab, cfg[c].t, cfg[c].p, cfg[c].k, d, got, want);
				mismatches++;
			}
		}
	CHECK(mismatches == 0, "vocab %d%s: %d of %d draws differ from the full-sort reference",
		  vocab, ties ? " (ties)" : "", mismatches, total);
	free(logits);
	free(scratch);
}

/* Chi-square of observed counts against expected probabilities (cells with tiny expectation merged). */
static double
chi_square(const int *counts, const double *probs, int n, int draws, int *dof)
{
	double		chi = 0,
				rest_obs = 0,
				rest_exp = 0;

	*dof = -1;
	for (int i = 0; i < n; i++)
	{
		double		e = probs[i] * draws;

		if (e < 5)
		{
			rest_obs += counts[i];
			rest_exp += e;
			continue;
		}
		chi += (counts[i] - e) * (counts[i] - e) / e;
		(*dof)++;
	}
	if (rest_exp >= 5)
	{
		chi += (rest_obs - rest_exp) * (rest_obs - rest_exp) / rest_exp;
		(*dof)++;
	}
	return chi;
}

/* Frequencies follow softmax(logits/T), restricted and renormalised by top_k/top_p. */
static void
test_frequencies(void)
{
	enum { V = 12, DRAWS = 40000 };
	float		logits[V];
	char		scratch[V * 8];
	struct
	{
		float		t;
		float		p;
		int			k;
	}			cfg[] = {{1.0f, 1.0f, 0}, {0.6f, 1.0f, 0}, {1.5f, 1.0f, 5}, {1.0f, 0.7f, 0}, {0.8f, 0.8f, 6}};

	for (int i = 0; i < V; i++)
		logits[i] = (float) (0.8 * rnd_normal());
	for (size_t c = 0; c < sizeof(cfg) / sizeof(cfg[0]); c++)
	{
		gptoss_sampling s = {cfg[c].t, cfg[c].p, cfg[c].k, 0};
		int			counts[V] = {0},
					order[V],
					n_keep,
					outside = 0,
					dof;
		double		probs[V] = {0},
					mass = 0,
					mx = -INFINITY,
					chi;
		int			in_set[V] = {0};

		/* allowed set and renormalised probabilities from the reference */
		ref_sample(logits, V, &s, 0.5, &n_keep, order);
		for (int i = 0; i < V; i++)
			mx = fmax(mx, logits[i] / cfg[c].t);
		for (int j = 0; j < n_keep; j++)
		{
			in_set[order[j]] = 1;
			probs[order[j]] = exp(logits[order[j]] / cfg[c].t - mx);
			mass += probs[order[j]];
		}
		for (int i = 0; i < V; i++)
			probs[i] /= mass;
		for (int d = 0; d < DRAWS; d++)
		{
			int			tok;

			s.seed = (uint64_t) d * 2654435761ULL;
			tok = gptoss_sample(logits, V, &s, d % 97, scratch);
			if (tok < 0 || tok >= V || !in_set[tok])
				outside++;
			else
				counts[tok]++;
		}
		chi = chi_square(counts, probs, V, DRAWS, &dof);
		printf("frequencies T %.1f top_p %.1f top_k %d: kept %d, chi-square %.1f with %d dof\n",
			   cfg[c].t, cfg[c].p, cfg[c].k, n_keep, chi, dof);
		CHECK(outside == 0, "%d draws outside the top_k/top_p set", outside);
		/* p = 0.001 critical values of chi-square stay below 3 * dof + 12 for dof <= 11 */
		CHECK(chi < 3.0 * dof + 12, "chi-square %.1f too large for %d dof", chi, dof);
		CHECK(dof >= (n_keep > 1 ? 1 : 0), "enough cells");
	}
}

/* Seeds, positions, top_k = 1 and a tiny top_p. */
static void
test_determinism(void)
{
	enum { V = 201088 };
	float	   *logits = malloc(sizeof(float) * V);
	void	   *scratch = malloc((size_t) V * 8);
	int			argmax,
				same_seed = 1,
				k1 = 1,
				tiny_p = 1,
				distinct = 0,
				prev = -1;

	for (int i = 0; i < V; i++)
		logits[i] = (float) (2.0 * rnd_normal());
	argmax = gptoss_argmax(logits, V);
	for (int d = 0; d < 20; d++)
	{
		gptoss_sampling s = {1.0f, 1.0f, 0, 77};
		int			a = gptoss_sample(logits, V, &s, d, scratch);
		int			b = gptoss_sample(logits, V, &s, d, scratch);

		same_seed &= a == b;
		distinct += a != prev;
		prev = a;
		s.temperature = 0.3f + d * 0.2f;
		s.top_k = 1;
		k1 &= gptoss_sample(logits, V, &s, d, scratch) == argmax;
		s.top_k = 0;
		s.top_p = 1e-6f;
		tiny_p &= gptoss_sample(logits, V, &s, d, scratch) == argmax;
	}
	CHECK(same_seed, "same seed and position gave different tokens");
	CHECK(distinct > 10, "draws over positions hardly vary (%d changes)", distinct);
	CHECK(k1, "top_k = 1 is not greedy");
	CHECK(tiny_p, "tiny top_p is not greedy");

	/* speed on the real vocabulary */
	{
		gptoss_sampling cases[] = {{1.0f, 1.0f, 0, 5}, {1.0f, 0.9f, 0, 5}, {0.7f, 1.0f, 50, 5}};
		const char *names[] = {"T=1", "T=1 top_p=0.9", "T=0.7 top_k=50"};

		for (int c = 0; c < 3; c++)
		{
			double		t0 = gptoss_now();

			for (int d = 0; d < 50; d++)
				gptoss_sample(logits, V, &cases[c], d, scratch);
			printf("sample %-16s over %d tokens: %.3f ms\n", names[c], V, (gptoss_now() - t0) / 50 * 1e3);
		}
	}
	free(logits);
	free(scratch);
}

int
main(void)
{
	rng_state = 88172645463325252ULL;
	test_argmax();
	test_determinism();
	test_frequencies();
	test_matches_reference(201088, 4, 0, 2.0);
	test_matches_reference(5003, 200, 0, 3.0);
	test_matches_reference(3001, 200, 1, 0);
	test_matches_reference(257, 300, 0, 0.01);	/* nearly flat: one big bucket */
	test_matches_reference(4099, 100, 0, 40.0); /* weights down into subnormals and 0 */

	printf("%d passed, %d failed\n", n_pass, n_fail);
	return n_fail ? 1 : 0;
}
