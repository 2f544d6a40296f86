/*
 * test_classify.c: the KV page bookkeeping and prefix cache, token
 * log-probabilities and label scoring.
 *
 * 1. kv_pages alone: allocation, registration, prefix matching (tokens and
 *    parent checked), reference counts, LRU eviction deepest page first.
 * 2. The tiny synthetic model on the CPU backend (synthesised into a
 *    temporary directory with the tokenizer from GPTOSS_TOKENIZER):
 *    - prefix cache on and off give identical results (greedy and seeded,
 *      alone and batched) while the cache saves prefill tokens;
 *    - logprobs and top_logprobs of generated tokens equal the log-softmax of
 *      the logits of a full recomputation;
 *    - label scores equal the summed log-probabilities of a full
 *      recomputation, with the cache on or off, alone or batched, with more
 *      labels than slots, and bad labels are rejected.
 */
#include "engine.h"
#include "harmony.h"
#include "synth.h"
#include "testutil.h"
#include "tmpname.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------
 * kv_pages
 */

static void
test_kv_pages(void)
{
	gptoss_error err = {0};
	gptoss_kv_pages *kp = gptoss_kv_pages_create(6, 4, 3, 32, &err);
	int32_t		toks[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
	int32_t		other[12] = {1, 2, 3, 4, 5, 6, 7, 99, 9, 10, 11, 12};
	int32_t		pages[8];
	int32_t		first[3];
	int			n;
	const int32_t *table;

	CHECK(kp != NULL, "create: %s", err.msg);
	if (!kp)
		return;
	CHECK(gptoss_kv_pages_grow(kp, 0, 10, &err) == 3, "slot 0 gets 3 pages for 10 positions");
	gptoss_kv_pages_advance(kp, 0, 10);
	CHECK(gptoss_kv_pages_len(kp, 0) == 10, "length 10");
	CHECK(gptoss_kv_pages_match(kp, toks, 12, 8, pages) == 0, "nothing registered yet");
	gptoss_kv_pages_publish(kp, 0, toks, 10);
	CHECK(gptoss_kv_pages_match(kp, toks, 12, 8, pages) == 2, "two full pages registered");
	CHECK(gptoss_kv_pages_match(kp, toks, 7, 8, pages) == 1, "a partial page does not match");
	CHECK(gptoss_kv_pages_match(kp, other, 12, 8, pages) == 1, "a different second page stops the chain");
	CHECK(gptoss_kv_pages_match(kp, toks, 12, 1, pages) == 1, "max_pages caps the match");
	table = gptoss_kv_pages_table(kp, 0, &n);
	memcpy(first, table, sizeof(first));
	CHECK(gptoss_kv_pages_available(kp) == 3 && gptoss_kv_pages_in_use(kp) == 3, "3 in use, 3 free");

	/* a second slot shares the two pages; the first one leaves */
	n = gptoss_kv_pages_match(kp, toks, 12, 8, pages);
	gptoss_kv_pages_attach(kp, 1, pages, n, 1);
	CHECK(gptoss_kv_pages_len(kp, 1) == 8, "attached slot starts at 8");
	gptoss_kv_pages_release(kp, 0);
	CHECK(gptoss_kv_pages_in_use(kp) == 2 && gptoss_kv_pages_available(kp) == 4,
		  "shared pages stay in use after the first slot leaves (in use %lld)",
		  (long long) gptoss_kv_pages_in_use(kp));
	/* the attached slot goes on and registers its third page after the shared chain */
	CHECK(gptoss_kv_pages_grow(kp, 1, 12, &err) == 1, "slot 1 grows one page");
	gptoss_kv_pages_advance(kp, 1, 4);
	gptoss_kv_pages_publish(kp, 1, toks, 12);
	CHECK(gptoss_kv_pages_match(kp, toks, 12, 8, pages) == 3, "three pages after slot 1 published");
	gptoss_kv_pages_release(kp, 1);
	CHECK(gptoss_kv_pages_in_use(kp) == 0 && gptoss_kv_pages_available(kp) == 6, "all cached or free");

	/* eviction: free pages first, then cached ones, deepest first */
	CHECK(gptoss_kv_pages_grow(kp, 2, 12, &err) == 3, "slot 2 takes the 3 free pages");
	CHECK(gptoss_kv_pages_match(kp, toks, 12, 8, pages) == 3, "cache intact while free pages last");
	CHECK(gptoss_kv_pages_grow(kp, 2, 16, &err) == 1, "slot 2 evicts one cached page");
	CHECK(gptoss_kv_pages_match(kp, toks, 12, 8, pages) == 2, "the deepest page went first");
	CHECK(gptoss_kv_pages_grow(kp, 2, 24, &err) == 2, "slot 2 evicts the rest");
	CHECK(gptoss_kv_pages_match(kp, toks, 12, 8, pages) == 0, "nothing cached any more");
	CHECK(gptoss_kv_pages_grow(kp, 2, 28, &err) < 0 && err.code == GPTOSS_ERR_BUSY, "exhausted: BUSY");
	gptoss_kv_pages_release(kp, 2);

	/*
	 * A page id reused after eviction never completes an old chain: register
	 * [A, B], keep B pinned while A is evicted and its id reused for other
	 * tokens at position 0; B must not follow the new page.
	 */
	{
		int32_t		diff[8] = {50, 51, 52, 53, 5, 6, 7, 8};
		int32_t		chain[2];

		gptoss_kv_pages_grow(kp, 0, 8, &err);
		gptoss_kv_pages_advance(kp, 0, 8);
		gptoss_kv_pages_publish(kp, 0, toks, 8);
		CHECK(gptoss_kv_pages_match(kp, toks, 8, 8, chain) == 2, "chain of two");
		gptoss_kv_pages_pin(kp, chain + 1, 1);
		gptoss_kv_pages_release(kp, 0);
		CHECK(gptoss_kv_pages_in_use(kp) == 1, "the pin keeps B in use");
		/* slot 2 takes the 4 free pages, so slot 1's first page evicts A */
		CHECK(gptoss_kv_pages_grow(kp, 2, 16, &err) == 4, "slot 2 takes the free pages");
		CHECK(gptoss_kv_pages_grow(kp, 1, 4, &err) == 1, "slot 1 takes one page");
		table = gptoss_kv_pages_table(kp, 1, &n);
		CHECK(table[0] == chain[0], "A's page id is reused");
		gptoss_kv_pages_advance(kp, 1, 4);
		gptoss_kv_pages_publish(kp, 1, diff, 4);
		gptoss_kv_pages_unpin(kp, chain + 1, 1);
		CHECK(gptoss_kv_pages_match(kp, toks, 8, 8, pages) == 0, "A's tokens are gone");
		CHECK(gptoss_kv_pages_match(kp, diff, 8, 8, pages) == 1,
			  "the page in A's reused id does not lead to B");
		gptoss_kv_pages_release(kp, 1);
		gptoss_kv_pages_release(kp, 2);
	}
	gptoss_kv_pages_free(kp);
}

/* ---------------------------------------------------------------------------
 * The tiny model
 */

/* A finished generation: generated ids and text (malloc'ed copies). */
typedef struct outcome
{
	int32_t    *tokens;
	int			n;
	char	   *text;
} outcome;

static outcome
take_result(gptoss_engine *eng, int64_t id)
{
	gptoss_result res;
	outcome		o = {0};

	if (gptoss_engine_result(eng, id, &res) < 0 || res.finish_reason == GPTOSS_FINISH_NONE)
	{
		CHECK(0, "no finished result for %lld", (long long) id);
		return o;
	}
	o.n = res.n_tokens;
	o.tokens = malloc((size_t) (res.n_tokens + 1) * sizeof(int32_t));
	memcpy(o.tokens, res.tokens, (size_t) res.n_tokens * sizeof(int32_t));
	o.text = strdup(res.text);
	gptoss_engine_release(eng, id);
	return o;
}

static int
same_outcome(const outcome *a, const outcome *b)
{
	return a->n == b->n && memcmp(a->tokens, b->tokens, (size_t) a->n * sizeof(int32_t)) == 0 &&
		strcmp(a->text, b->text) == 0;
}

static void
outcome_free(outcome *o)
{
	free(o->tokens);
	free(o->text);
}

/* Full logits of ids[0, n) computed from scratch in backend slot 0 (the engine is idle). */
static float *
full_logits(gptoss_engine *eng, const int32_t *ids, int n)
{
	gptoss_backend *be = gptoss_engine_backend(eng);
	int			vocab = gptoss_engine_model(eng)->config.vocab_size;
	float	   *logits = malloc((size_t) n * (size_t) vocab * sizeof(float));
	gptoss_step_seq e = {0};
	gptoss_error err = {0};

	e.slot = 0;
	e.n_tokens = n;
	e.tokens = ids;
	CHECK(be->step(be, &e, 1, NULL, logits, &err) == 0, "reference step: %s", err.msg);
	be->release(be, 0);
	return logits;
}

static const char instructions[] =
	"You label customer messages. Answer with exactly one word from the list: billing, shipping, "
	"returns, other. Do not explain. Messages about money, invoices or charges are billing; about "
	"parcels, couriers or delivery dates are shipping; about sending items back are returns.";

static const char *const messages[] = {
	"I was charged twice for my order.",
	"Where is my parcel? It was due on Monday.",
	"How do I send back a jacket that does not fit?",
	"Do you have a store in Lisbon?",
	"The invoice shows the wrong address.",
};
#define N_MESSAGES 5

/* Generations with a long shared instruction: cache on == cache off, alone and batched. */
static void
test_prefix_cache(gptoss_engine *eng)
{
	outcome		off[N_MESSAGES],
				on[N_MESSAGES],
				batched[N_MESSAGES];
	int64_t		ids[N_MESSAGES];
	gptoss_engine_stats st0,
				st1,
				st2;

	for (int seeded = 0; seeded < 2; seeded++)
	{
		gptoss_gen_params p;

		gptoss_gen_params_default(&p);
		p.instructions = instructions;
		p.max_tokens = 8;
		p.temperature = seeded ? 1.0f : 0.0f;
		p.has_seed = seeded;
		p.seed = 77;
		p.prefix_caching = false;
		gptoss_engine_get_stats(eng, &st0);
		for (int i = 0; i < N_MESSAGES; i++)
		{
			int64_t		id = submit_text(eng, messages[i], &p);

			run_to_end(eng);
			off[i] = take_result(eng, id);
		}
		gptoss_engine_get_stats(eng, &st1);
		CHECK(st1.prefix_cache_hit_tokens == st0.prefix_cache_hit_tokens, "cache off: no hits");

		p.prefix_caching = true;
		for (int i = 0; i < N_MESSAGES; i++)
		{
			int64_t		id = submit_text(eng, messages[i], &p);

			run_to_end(eng);
			on[i] = take_result(eng, id);
			CHECK(same_outcome(&on[i], &off[i]), "%s message %d: cache on differs from off",
				  seeded ? "seeded" : "greedy", i);
		}
		gptoss_engine_get_stats(eng, &st2);
		CHECK(st2.prefix_cache_hit_tokens > st1.prefix_cache_hit_tokens,
			  "cache on: hits (%lld)", (long long) (st2.prefix_cache_hit_tokens - st1.prefix_cache_hit_tokens));
		CHECK(st2.prefill_tokens - st1.prefill_tokens < st1.prefill_tokens - st0.prefill_tokens,
			  "cache on computes fewer prompt tokens (%lld vs %lld)",
			  (long long) (st2.prefill_tokens - st1.prefill_tokens),
			  (long long) (st1.prefill_tokens - st0.prefill_tokens));

		/* all at once (more than the 4 slots), sharing pages that are still in use */
		for (int i = 0; i < N_MESSAGES; i++)
			ids[i] = submit_text(eng, messages[i], &p);
		run_to_end(eng);
		for (int i = 0; i < N_MESSAGES; i++)
		{
			batched[i] = take_result(eng, ids[i]);
			CHECK(same_outcome(&batched[i], &off[i]), "%s message %d: batched with the cache differs",
				  seeded ? "seeded" : "greedy", i);
		}
		for (int i = 0; i < N_MESSAGES; i++)
		{
			outcome_free(&off[i]);
			outcome_free(&on[i]);
			outcome_free(&batched[i]);
		}
	}
}

/* Logprobs of generated tokens equal the log-softmax of a full recomputation's logits. */
static void
test_logprobs(gptoss_engine *eng)
{
	int			vocab = gptoss_engine_model(eng)->config.vocab_size;
	gptoss_gen_params p;
	gptoss_error err = {0};
	gptoss_result res;
	int32_t    *prompt = NULL,
			   *seq;
	int			n_prompt = 0;
	int64_t		id;
	float	   *logits;
	double		worst = 0;
	int			tops_ok = 1;

	gptoss_gen_params_default(&p);
	p.raw = true;
	p.max_tokens = 10;
	p.temperature = 1.0f;
	p.has_seed = true;
	p.seed = 5;
	p.logprobs = true;
	p.top_logprobs = 5;
	gptoss_render_prompt(gptoss_engine_tokenizer(eng), "The capital of France is", NULL, 0, &p, NULL, &prompt, &n_prompt, &err);
	id = gptoss_engine_submit(eng, prompt, n_prompt, &p, &err);
	run_to_end(eng);
	gptoss_engine_result(eng, id, &res);
	CHECK(res.logprobs != NULL && res.n_tokens > 0, "logprobs returned");
	seq = malloc((size_t) (n_prompt + res.n_tokens) * sizeof(int32_t));
	memcpy(seq, prompt, (size_t) n_prompt * sizeof(int32_t));
	memcpy(seq + n_prompt, res.tokens, (size_t) res.n_tokens * sizeof(int32_t));
	logits = full_logits(eng, seq, n_prompt + res.n_tokens - 1);
	for (int k = 0; k < res.n_tokens && res.logprobs; k++)
	{
		const float *row = logits + (size_t) (n_prompt - 1 + k) * vocab;
		double		lse = gptoss_logsumexp(row, vocab);
		double		want = (double) row[res.tokens[k]] - lse;
		const gptoss_token_logprobs *lp = &res.logprobs[k];

		if (fabs(lp->logprob - want) > worst)
			worst = fabs(lp->logprob - want);
		tops_ok &= lp->n_top == 5;
		for (int j = 0; j < lp->n_top; j++)
		{
			/* descending, and no id outside the top beats the last one */
			tops_ok &= fabs(lp->top_logprobs[j] - ((double) row[lp->top_ids[j]] - lse)) < 1e-5;
			if (j > 0)
				tops_ok &= lp->top_logprobs[j] <= lp->top_logprobs[j - 1];
		}
		for (int v = 0; v < vocab; v++)
		{
			int			listed = 0;

			for (int j = 0; j < lp->n_top; j++)
				listed |= lp->top_ids[j] == v;
			if (!listed && (double) row[v] - lse > lp->top_logprobs[lp->n_top - 1] + 1e-6)
				tops_ok = 0;
		}
	}
	CHECK(worst < 1e-5, "sampled-token logprob vs recomputation: max error %g", worst);
	CHECK(tops_ok, "top_logprobs are the 5 most probable ids, descending");
	/* raw mode: every ordinary generated token makes the text */
	CHECK(res.n_text_tokens > 0 && res.text_tokens[0] == 0, "text tokens of a raw generation (%d)",
		  res.n_text_tokens);
	gptoss_engine_release(eng, id);

	/* greedy: the produced token is the first alternative */
	p.temperature = 0;
	p.top_logprobs = 1;
	id = gptoss_engine_submit(eng, prompt, n_prompt, &p, &err);
	run_to_end(eng);
	gptoss_engine_result(eng, id, &res);
	for (int k = 0; k < res.n_tokens; k++)
		CHECK(res.logprobs[k].top_ids[0] == res.tokens[k] &&
			  res.logprobs[k].top_logprobs[0] == res.logprobs[k].logprob, "greedy token %d is the top", k);
	gptoss_engine_release(eng, id);

	/*
	 * Harmony: the text tokens are the content tokens of the final message.
	 * A reasoning budget of 0 makes the engine open the final channel at
	 * once, so even the random model answers; the text tokens' bytes must
	 * make exactly the returned text.
	 */
	{
		gptoss_gen_params h;
		gptoss_utf8_text joined;
		int64_t		hid;
		int			specials = 0;

		gptoss_gen_params_default(&h);
		h.max_tokens = 24;
		h.temperature = 0;
		h.has_max_reasoning_tokens = true;
		h.max_reasoning_tokens = 0;
		h.logprobs = true;
		hid = submit_text(eng, "Say something.", &h);
		run_to_end(eng);
		gptoss_engine_result(eng, hid, &res);
		memset(&joined, 0, sizeof(joined));
		for (int i = 0; i < res.n_text_tokens; i++)
		{
			size_t		n = 0;
			const char *b = gptoss_tokenizer_token_bytes(gptoss_engine_tokenizer(eng),
														 res.tokens[res.text_tokens[i]], &n);

			specials += gptoss_tokenizer_is_special(gptoss_engine_tokenizer(eng), res.tokens[res.text_tokens[i]]);
			gptoss_utf8_text_push(&joined, b, n, &err);
		}
		gptoss_utf8_text_flush(&joined, &err);
		CHECK(res.text_len > 0 && res.n_text_tokens > 0, "final text with a reasoning budget of 0 (%zu bytes)",
			  res.text_len);
		CHECK(specials == 0 && joined.text.len == res.text_len &&
			  memcmp(joined.text.data, res.text, res.text_len) == 0,
			  "harmony text tokens spell the final text [%s] vs [%s]", joined.text.data ? joined.text.data : "",
			  res.text);
		gptoss_utf8_text_free(&joined);
		gptoss_engine_release(eng, hid);
	}

	/* parameter errors */
	p.top_logprobs = 21;
	CHECK(gptoss_engine_submit(eng, prompt, n_prompt, &p, &err) < 0 && err.code == GPTOSS_ERR_INVALID,
		  "top_logprobs 21 rejected");
	p.top_logprobs = 2;
	p.logprobs = false;
	CHECK(gptoss_engine_submit(eng, prompt, n_prompt, &p, &err) < 0 && err.code == GPTOSS_ERR_INVALID,
		  "top_logprobs without logprobs rejected");
	free(prompt);
	free(seq);
	free(logits);
}

/* Reference label scores: full recomputation of prompt + label + <|return|> for each label. */
static void
reference_scores(gptoss_engine *eng, const char *input, const char *const *labels, int n_labels,
				 const gptoss_gen_params *p, double *scores)
{
	const gptoss_tokenizer *tok = gptoss_engine_tokenizer(eng);
	int			vocab = gptoss_engine_model(eng)->config.vocab_size;
	gptoss_error err = {0};
	int32_t    *ids = NULL,
			   *fin = NULL;
	int			n = 0,
				n_fin;

	gptoss_render_prompt(gptoss_engine_tokenizer(eng), input, NULL, 0, p, NULL, &ids, &n, &err);
	n_fin = gptoss_tokenizer_encode(tok, "final", 5, &fin, &err);
	ids = realloc(ids, (size_t) (n + n_fin + 2 + 64) * sizeof(int32_t));
	if (!p->raw)
	{
		ids[n++] = GPTOSS_TOK_CHANNEL;
		memcpy(ids + n, fin, (size_t) n_fin * sizeof(int32_t));
		n += n_fin;
		ids[n++] = GPTOSS_TOK_MESSAGE;
	}
	for (int l = 0; l < n_labels; l++)
	{
		int32_t    *lab = NULL;
		int			m = gptoss_tokenizer_encode(tok, labels[l], strlen(labels[l]), &lab, &err);
		float	   *logits;

		memcpy(ids + n, lab, (size_t) m * sizeof(int32_t));
		ids[n + m] = GPTOSS_TOK_RETURN;
		logits = full_logits(eng, ids, n + m);
		scores[l] = 0;
		for (int j = 0; j <= m; j++)
		{
			const float *row = logits + (size_t) (n - 1 + j) * vocab;

			scores[l] += (double) row[ids[n + j]] - gptoss_logsumexp(row, vocab);
		}
		free(logits);
		free(lab);
	}
	free(ids);
	free(fin);
}

/* Submits a classification and returns its id (-1 on failure, err filled). */
static int64_t
classify(gptoss_engine *eng, const char *input, const char *const *labels, int n,
		 const gptoss_gen_params *p, gptoss_error *err)
{
	return gptoss_engine_submit_classify(eng, input, labels, n, p, err);
}

/* Label scores equal the reference, cache on or off, alone or batched; bad labels rejected. */
static void
test_classify(gptoss_engine *eng)
{
	static const char *const labels[] = {"billing", "shipping", "returns", "other", "not sure at all", "Lisbon"};
	enum { L = 6 };				/* more labels than the engine's 4 slots */
	gptoss_gen_params p;
	gptoss_error err = {0};
	gptoss_result res;
	double		ref[N_MESSAGES][L];
	double		got[L];
	int64_t		ids[N_MESSAGES + 1];
	gptoss_engine_stats st0,
				st1;

	gptoss_gen_params_default(&p);
	p.instructions = instructions;
	for (int raw = 0; raw < 2; raw++)
	{
		p.raw = raw;
		for (int i = 0; i < N_MESSAGES; i++)
			reference_scores(eng, messages[i], labels, L, &p, ref[i]);
		for (int cache = 0; cache < 2; cache++)
		{
			double		worst = 0;

			p.prefix_caching = cache;
			gptoss_engine_get_stats(eng, &st0);
			for (int i = 0; i < N_MESSAGES; i++)
			{
				int64_t		id = classify(eng, messages[i], labels, L, &p, &err);

				CHECK(id >= 0, "classify: %s", err.msg);
				run_to_end(eng);
				gptoss_engine_result(eng, id, &res);
				CHECK(res.finish_reason == GPTOSS_FINISH_STOP && res.n_scores == L, "scores of message %d", i);
				for (int l = 0; l < res.n_scores; l++)
					if (fabs(res.scores[l] - ref[i][l]) > worst)
						worst = fabs(res.scores[l] - ref[i][l]);
				gptoss_engine_release(eng, id);
			}
			gptoss_engine_get_stats(eng, &st1);
			CHECK(worst < 1e-4, "%s, cache %s: label scores vs recomputation: max error %g",
				  raw ? "raw" : "harmony", cache ? "on" : "off", worst);
			/* raw prompts share nothing (no system message or instructions) */
			CHECK(cache && !raw ? st1.prefix_cache_hit_tokens > st0.prefix_cache_hit_tokens
				  : st1.prefix_cache_hit_tokens == st0.prefix_cache_hit_tokens,
				  "cache %s: hits %lld", cache ? "on" : "off",
				  (long long) (st1.prefix_cache_hit_tokens - st0.prefix_cache_hit_tokens));
		}
	}

	/* all messages at once next to a generation: the same scores (bitwise) as alone */
	p.raw = false;
	p.prefix_caching = true;
	for (int i = 0; i < N_MESSAGES; i++)
	{
		ids[i] = classify(eng, messages[i], labels, L, &p, &err);
		CHECK(ids[i] >= 0, "classify %d: %s", i, err.msg);
	}
	{
		gptoss_gen_params g;

		gptoss_gen_params_default(&g);
		g.max_tokens = 20;
		g.temperature = 0;
		ids[N_MESSAGES] = submit_text(eng, "Write a haiku.", &g);
	}
	run_to_end(eng);
	for (int i = 0; i < N_MESSAGES; i++)
	{
		int64_t		alone = classify(eng, messages[i], labels, L, &p, &err);
		gptoss_result res_alone;
		int			same = 1;
		double		probs[L],
					sum = 0;
		int			best;

		gptoss_engine_result(eng, ids[i], &res);
		CHECK(res.n_scores == L, "batched message %d: finish %d, %d scores", i, res.finish_reason,
			  res.n_scores);
		if (res.n_scores != L)
			continue;
		memcpy(got, res.scores, sizeof(got));
		run_to_end(eng);
		gptoss_engine_result(eng, alone, &res_alone);
		for (int l = 0; l < L && res_alone.scores; l++)
			same &= res_alone.scores[l] == got[l];
		CHECK(same, "message %d: batched scores differ from alone", i);
		best = gptoss_label_probs(got, L, probs);
		for (int l = 0; l < L; l++)
		{
			sum += probs[l];
			CHECK(got[l] <= got[best], "label %d beats the pick", l);
		}
		CHECK(fabs(sum - 1) < 1e-12, "probabilities sum to 1 (%.15g)", sum);
		gptoss_engine_release(eng, alone);
		gptoss_engine_release(eng, ids[i]);
	}
	gptoss_engine_release(eng, ids[N_MESSAGES]);

	/*
	 * Many score requests at once: each pins its prefix pages until its
	 * labels end, so labels must run before later requests pin theirs (the
	 * cache holds 68 pages; 15 pinned prefixes of 8 pages, not shared with
	 * the cache off, would not fit).
	 */
	{
		enum { M = 15 };
		int64_t		many[M];
		int			ok = 1;

		p.prefix_caching = false;
		for (int i = 0; i < N_MESSAGES; i++)
			reference_scores(eng, messages[i], labels, L, &p, ref[i]);
		for (int i = 0; i < M; i++)
			many[i] = classify(eng, messages[i % N_MESSAGES], labels, L, &p, &err);
		run_to_end(eng);
		for (int i = 0; i < M; i++)
		{
			gptoss_engine_result(eng, many[i], &res);
			ok &= res.n_scores == L;
			if (res.n_scores == L)
				for (int l = 0; l < L; l++)
					ok &= fabs(res.scores[l] - ref[i % N_MESSAGES][l]) < 1e-4;
			gptoss_engine_release(eng, many[i]);
		}
		CHECK(ok, "15 score requests at once all finish with the reference scores");
		p.prefix_caching = true;
	}

	/* ties go to the first label; equal scores share the probability */
	{
		double		s[3] = {-1.0, -0.5, -0.5},
					pr[3];

		CHECK(gptoss_label_probs(s, 3, pr) == 1 && pr[1] == pr[2], "tie broken by label order");
	}

	/* a cancelled score request leaves nothing behind */
	{
		gptoss_backend_info info;
		int64_t		id = classify(eng, messages[0], labels, L, &p, &err);

		for (int k = 0; k < 3; k++)
			gptoss_engine_step(eng, &err);
		gptoss_engine_release(eng, id);
		run_to_end(eng);
		CHECK(gptoss_engine_active(eng) == 0, "nothing active after releasing a score request");
		gptoss_engine_backend(eng)->get_info(gptoss_engine_backend(eng), &info);
		CHECK(info.kv_cache_used_tokens == 0, "KV cache empty after release (%lld)",
			  (long long) info.kv_cache_used_tokens);
	}

	/* bad labels */
	{
		const char *const empty[] = {"a", ""};
		const char *const dup[] = {"yes", "no", "yes"};

		CHECK(classify(eng, "x", empty, 2, &p, &err) < 0 && err.code == GPTOSS_ERR_INVALID, "empty label");
		CHECK(classify(eng, "x", dup, 3, &p, &err) < 0 && err.code == GPTOSS_ERR_INVALID &&
			  strstr(err.msg, "twice") != NULL, "duplicate label: %s", err.msg);
		CHECK(classify(eng, "x", dup, 0, &p, &err) < 0 && err.code == GPTOSS_ERR_INVALID, "no labels");
		p.logprobs = true;
		CHECK(classify(eng, "x", dup, 2, &p, &err) < 0 && err.code == GPTOSS_ERR_INVALID, "logprobs");
	}
}

/* Synthesises the tiny model and runs the engine tests on it. */
static void
run_tiny(void)
{
	char		dir[512];
	gptoss_error err = {0};
	gptoss_engine_opts opts;
	gptoss_engine *eng;

	if (make_tiny_model(dir, sizeof(dir), "gptoss_test_classify") < 0)
		return;
	memset(&opts, 0, sizeof(opts));
	opts.model_path = dir;
	opts.device = "cpu";
	opts.backend.max_seqs = 4;
	opts.backend.max_context = 256;
	opts.prefill_chunk = 32;	/* several chunks per prompt, shared at any 16-token page */
	eng = gptoss_engine_create(&opts, NULL, NULL, &err);
	CHECK(eng != NULL, "engine_create: %s", err.msg);
	if (eng)
	{
		test_prefix_cache(eng);
		test_logprobs(eng);
		test_classify(eng);
		gptoss_engine_free(eng);
	}
	remove_test_dir(dir);
}

int
main(void)
{
	test_kv_pages();
	run_tiny();
	printf("test_classify: %d passed, %d failed\n", n_pass, n_fail);
	return n_fail ? 1 : 0;
}
