/*
 * test_engine.c: the request engine, in two parts.
 *
 * 1. A fake backend whose next token is a hash of everything fed into the
 *    slot so far (and of the seed when sampling).  It checks every step the
 *    scheduler builds (slots, positions continuing the cache, chunk sizes,
 *    the token budget, decode entries first, sampling only on the chunk that
 *    completes a prompt), so any mistake in what the scheduler feeds changes
 *    the tokens; comparing batched runs with runs alone then proves the
 *    batching.  It also scripts harmony streams, stop tokens and failures.
 * 2. The real tiny synthetic model on the CPU backend (synthesised into a
 *    temporary directory with the tokenizer from GPTOSS_TOKENIZER): greedy
 *    determinism, batched == alone (also for a request joining mid-flight and
 *    for seeded sampling), cancel, the length clamp, too-long prompts, stop
 *    strings and raw text.
 */
#include "engine.h"
#include "harmony.h"
#include "step_rates.h"
#include "synth.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const gptoss_tokenizer *g_tok;

/* ---------------------------------------------------------------------------
 * The fake backend
 */

#define FAKE_SLOTS 4
#define FAKE_CTX 1200

typedef struct fake_backend
{
	gptoss_backend base;
	int32_t		hist[FAKE_SLOTS][FAKE_CTX];	/* tokens fed into each slot */
	int			len[FAKE_SLOTS];
	int			generated[FAKE_SLOTS];	/* tokens sampled in the slot since it started */
	int32_t		last_sampled[FAKE_SLOTS];	/* what a decode entry must feed next */
	int			releases;		/* release calls */
	int			steps;
	int			fail_at_step;	/* step number that fails, 0 = never */
	int			max_step_tokens;	/* budget the scheduler must respect */
	int			prefill_chunk;
	const int32_t *script;		/* when set: the i-th sampled token of a slot is script[i] */
	int			n_script;
	int32_t		stop_at_token;	/* token emitted as the stop_after-th token (0: never) */
	int			stop_after;
	int			violations;		/* scheduler rule violations seen */
} fake_backend;

/* Word-like ordinary tokens: ids 1000..2999 of o200k. */
static int32_t
fake_next(const fake_backend *f, int slot, const gptoss_step_seq *e)
{
	uint64_t	h = 0x5eed;

	if (f->script)
	{
		int			i = f->generated[slot];

		return i < f->n_script ? f->script[i] : 1000;
	}
	if (f->stop_after > 0 && f->generated[slot] + 1 == f->stop_after)
		return f->stop_at_token;
	for (int i = 0; i < f->len[slot]; i++)
		h = gptoss_mix64(h ^ (uint64_t) f->hist[slot][i]);
	if (e->sampling.temperature > 0)
		h = gptoss_mix64(h ^ e->sampling.seed);
	return 1000 + (int32_t) (h % 2000);
}

#define VIOLATION(f, ...) \
	do { (f)->violations++; fprintf(stderr, "scheduler rule: " __VA_ARGS__); fprintf(stderr, "\n"); } while (0)

static int
fake_step(gptoss_backend *be, const gptoss_step_seq *seqs, int n_seqs, int32_t *next_tokens,
		  float *logits, gptoss_error *err)
{
	fake_backend *f = (fake_backend *) be;
	bool		used[FAKE_SLOTS] = {false};
	bool		seen_prefill = false;
	int			total = 0,
				n_decode = 0;

	(void) logits;
	f->steps++;
	if (f->fail_at_step == f->steps)
		return gptoss_errorf(err, "fake device lost at step %d", f->steps);
	if (n_seqs < 1)
		VIOLATION(f, "empty step");
	for (int i = 0; i < n_seqs; i++)
	{
		const gptoss_step_seq *e = &seqs[i];
		bool		decode;

		if (e->slot < 0 || e->slot >= FAKE_SLOTS || used[e->slot])
		{
			VIOLATION(f, "bad or repeated slot %d", e->slot);
			return gptoss_errorf(err, "bad slot");
		}
		used[e->slot] = true;
		if (e->pos != f->len[e->slot])
			VIOLATION(f, "slot %d: pos %d but %d cached", e->slot, e->pos, f->len[e->slot]);
		if (e->n_tokens < 1 || e->pos + e->n_tokens > be->opts.max_context)
		{
			VIOLATION(f, "slot %d: %d tokens at %d", e->slot, e->n_tokens, e->pos);
			return gptoss_errorf(err, "bad chunk");
		}
		decode = f->generated[e->slot] > 0;
		if (decode && (e->n_tokens != 1 || !e->sample))
			VIOLATION(f, "decode entry of slot %d feeds %d tokens", e->slot, e->n_tokens);
		if (decode && e->tokens[0] != f->last_sampled[e->slot])
			VIOLATION(f, "slot %d feeds %d, not its last sampled token %d", e->slot,
					  e->tokens[0], f->last_sampled[e->slot]);
		if (decode && seen_prefill)
			VIOLATION(f, "decode entry after a prefill entry");
		if (!decode)
		{
			seen_prefill = true;
			if (e->n_tokens > f->prefill_chunk)
				VIOLATION(f, "prefill chunk of %d > %d", e->n_tokens, f->prefill_chunk);
			/* Prompts are cut at fixed places, whatever else is in the step. */
			if (e->pos % f->prefill_chunk != 0)
				VIOLATION(f, "prefill chunk of slot %d starts at %d, not a multiple of %d",
						  e->slot, e->pos, f->prefill_chunk);
		}
		n_decode += decode;
		total += e->n_tokens;
		memcpy(f->hist[e->slot] + e->pos, e->tokens, (size_t) e->n_tokens * sizeof(int32_t));
		f->len[e->slot] += e->n_tokens;
		if (e->sample)
		{
			next_tokens[i] = fake_next(f, e->slot, e);
			f->last_sampled[e->slot] = next_tokens[i];
			f->generated[e->slot]++;
		}
	}
	if (total > f->max_step_tokens && total > n_decode)
		VIOLATION(f, "step of %d tokens over the budget %d", total, f->max_step_tokens);
	return 0;
}

static void
fake_release(gptoss_backend *be, int slot)
{
	fake_backend *f = (fake_backend *) be;

	f->len[slot] = 0;
	f->generated[slot] = 0;
	f->releases++;
}

static void
fake_get_info(gptoss_backend *be, gptoss_backend_info *info)
{
	memset(info, 0, sizeof(*info));
	snprintf(info->device_name, sizeof(info->device_name), "fake");
	info->kv_cache_tokens = (int64_t) be->opts.max_seqs * be->opts.max_context;
}

static void
fake_free(gptoss_backend *be)
{
	(void) be;
}

static gptoss_model fake_model;

/* A fresh fake backend and an engine over it. */
static gptoss_engine *
fake_engine(fake_backend *f, int max_seqs, int max_context, int prefill_chunk, int max_step_tokens)
{
	gptoss_engine_opts opts;
	gptoss_error err = {0};
	gptoss_engine *eng;

	memset(f, 0, sizeof(*f));
	f->base.name = "fake";
	f->base.model = &fake_model;
	f->base.opts.max_seqs = max_seqs;
	f->base.opts.max_context = max_context;
	f->base.step = fake_step;
	f->base.release = fake_release;
	f->base.get_info = fake_get_info;
	f->base.free = fake_free;
	f->prefill_chunk = prefill_chunk;
	f->max_step_tokens = max_step_tokens;
	memset(&opts, 0, sizeof(opts));
	opts.prefill_chunk = prefill_chunk;
	opts.max_step_tokens = max_step_tokens;
	fake_model.config.vocab_size = 201088;
	eng = gptoss_engine_create_from(&fake_model, (gptoss_tokenizer *) g_tok, &f->base, &opts, &err);
	if (eng == NULL)
	{
		fprintf(stderr, "engine over the fake backend: %s\n", err.msg);
		exit(1);
	}
	return eng;
}

/* A prompt of n ordinary ids derived from seed. */
static int32_t *
make_prompt(int n, uint64_t seed)
{
	int32_t    *ids = malloc((size_t) n * sizeof(int32_t));

	for (int i = 0; i < n; i++)
	{
		seed = gptoss_mix64(seed);
		ids[i] = (int32_t) (seed % 199998);
	}
	return ids;
}

/* A finished request's tokens (malloc'ed copy) and count. */
typedef struct outcome
{
	int32_t    *tokens;
	int			n;
	char	   *text;
	gptoss_finish_reason finish;
} outcome;

static outcome
take_result(gptoss_engine *eng, int64_t id)
{
	gptoss_result res;
	outcome		o = {0};

	if (gptoss_engine_result(eng, id, &res) < 0)
	{
		CHECK(0, "no result for %lld", (long long) id);
		return o;
	}
	o.n = res.n_tokens;
	o.tokens = malloc((size_t) (res.n_tokens + 1) * sizeof(int32_t));
	memcpy(o.tokens, res.tokens, (size_t) res.n_tokens * sizeof(int32_t));
	o.text = strdup(res.text);
	o.finish = res.finish_reason;
	gptoss_engine_release(eng, id);
	return o;
}

static void
outcome_free(outcome *o)
{
	free(o->tokens);
	free(o->text);
}

static bool
same_outcome(const outcome *a, const outcome *b)
{
	return a->n == b->n && a->finish == b->finish &&
		memcmp(a->tokens, b->tokens, (size_t) a->n * sizeof(int32_t)) == 0 &&
		strcmp(a->text, b->text) == 0;
}

static gptoss_gen_params
raw_params(int max_tokens)
{
	gptoss_gen_params p;

	gptoss_gen_params_default(&p);
	p.raw = true;
	p.temperature = 0;
	p.max_tokens = max_tokens;
	return p;
}

/* Batched requests (with one joining mid-flight) give the same tokens as each alone. */
static void
test_fake_batching(void)
{
	static const int lens[] = {600, 10, 300, 5, 1000, 257};
	enum { N = 6 };
	fake_backend f;
	gptoss_engine *eng;
	outcome		alone[N],
				batched[N];
	int64_t		ids[N];
	gptoss_error err = {0};
	int32_t    *prompts[N];

	for (int i = 0; i < N; i++)
		prompts[i] = make_prompt(lens[i], 100 + (uint64_t) i);

	for (int i = 0; i < N; i++)
	{
		gptoss_gen_params p = raw_params(20 + 7 * i);

		eng = fake_engine(&f, FAKE_SLOTS, FAKE_CTX, 256, 512);
		if (i % 2)
		{
			p.temperature = 1.0f;
			p.has_seed = true;
			p.seed = 77 + (uint64_t) i;
		}
		ids[i] = gptoss_engine_submit(eng, prompts[i], lens[i], &p, &err);
		CHECK(ids[i] >= 0, "submit: %s", err.msg);
		run_to_end(eng);
		alone[i] = take_result(eng, ids[i]);
		CHECK(alone[i].n == p.max_tokens && alone[i].finish == GPTOSS_FINISH_LENGTH,
			  "alone %d: %d tokens, finish %d", i, alone[i].n, alone[i].finish);
		CHECK(f.violations == 0, "violations alone");
		gptoss_engine_free(eng);
	}

	/* Five together (one more than the slots), the sixth after three steps. */
	eng = fake_engine(&f, FAKE_SLOTS, FAKE_CTX, 256, 512);
	for (int i = 0; i < N; i++)
	{
		gptoss_gen_params p = raw_params(20 + 7 * i);

		if (i % 2)
		{
			p.temperature = 1.0f;
			p.has_seed = true;
			p.seed = 77 + (uint64_t) i;
		}
		if (i == N - 1)
			for (int s = 0; s < 3; s++)
				CHECK(gptoss_engine_step(eng, &err) >= 0, "step: %s", err.msg);
		ids[i] = gptoss_engine_submit(eng, prompts[i], lens[i], &p, &err);
		CHECK(ids[i] >= 0, "submit: %s", err.msg);
	}
	{
		gptoss_engine_stats st;

		gptoss_engine_get_stats(eng, &st);
		CHECK(st.active == FAKE_SLOTS && st.queued == 2, "active %d queued %d", st.active, st.queued);
	}
	run_to_end(eng);
	for (int i = 0; i < N; i++)
	{
		batched[i] = take_result(eng, ids[i]);
		CHECK(same_outcome(&alone[i], &batched[i]), "request %d differs batched", i);
		outcome_free(&alone[i]);
		outcome_free(&batched[i]);
		free(prompts[i]);
	}
	CHECK(f.violations == 0, "%d scheduler violations", f.violations);
	CHECK(f.releases == N, "every finished request releases its slot (%d)", f.releases);
	{
		gptoss_engine_stats st;

		gptoss_engine_get_stats(eng, &st);
		CHECK(st.requests_total == N && st.requests_finished == N && st.active == 0 &&
			  st.queued == 0 && st.steps == f.steps && st.step_sequences >= st.steps,
			  "stats total %lld finished %lld steps %lld/%d", (long long) st.requests_total,
			  (long long) st.requests_finished, (long long) st.steps, f.steps);
		CHECK(st.prompt_tokens == 600 + 10 + 300 + 5 + 1000 + 257, "prompt tokens %lld",
			  (long long) st.prompt_tokens);
		/* every step ran within the last minute (a fake backend is fast) */
		CHECK(fabs(st.mean_batch_size_1min - (double) st.step_sequences / (double) st.steps) < 1e-9,
			  "mean_batch_size_1min %.3f is the mean since start %.3f", st.mean_batch_size_1min,
			  (double) st.step_sequences / (double) st.steps);
	}
	gptoss_engine_free(eng);
}

/* Returns whether a and b agree to 1e-9. */
static int
near(double a, double b)
{
	return fabs(a - b) < 1e-9;
}

/*
 * Recent rates are over the steps that did the work, in a window of
 * wall-clock seconds: decode-only time leaves prefill at 0 (not old prefill
 * tokens over decode time), idle time counts for nothing, and the ring
 * forgets what is older than its minute.
 */
static void
test_step_rates(void)
{
	gptoss_step_rates r;
	gptoss_rate_summary s;

	gptoss_step_rates_init(&r);
	gptoss_step_rates_read(&r, 100.0, 10, &s);
	CHECK(s.prefill_tok_s == 0 && s.decode_tok_s == 0 && s.mean_batch_size == 0, "empty ring");

	/* second 100: one prefill step of 1000 tokens in 0.5 s */
	gptoss_step_rates_add(&r, 100.5, 0.5, 1000, 0, 1);
	/* second 101: twenty decode steps of 4 sequences, 0.05 s each */
	for (int i = 0; i < 20; i++)
		gptoss_step_rates_add(&r, 101.0 + 0.05 * i, 0.05, 0, 4, 4);
	gptoss_step_rates_read(&r, 101.99, 10, &s);
	CHECK(near(s.prefill_tok_s, 2000.0), "prefill over prefill time: %.3f", s.prefill_tok_s);
	CHECK(near(s.decode_tok_s, 80.0), "decode over decode time: %.3f", s.decode_tok_s);
	CHECK(near(s.mean_batch_size, 81.0 / 21.0), "mean batch %.3f", s.mean_batch_size);

	/* seconds 105 to 109: decode only; the prefill of second 100 leaves the 10 s window at 110 */
	for (int i = 0; i < 50; i++)
		gptoss_step_rates_add(&r, 105.0 + 0.1 * i, 0.1, 0, 8, 8);
	gptoss_step_rates_read(&r, 109.99, 10, &s);
	CHECK(near(s.prefill_tok_s, 2000.0), "prefill still in the window: %.3f", s.prefill_tok_s);
	gptoss_step_rates_read(&r, 110.0, 10, &s);
	CHECK(s.prefill_tok_s == 0, "no prefill in the last 10 s reads 0, not %.3f", s.prefill_tok_s);
	CHECK(near(s.decode_tok_s, (80.0 + 400.0) / (1.0 + 5.0)), "decode rate of seconds 101 to 110: %.3f",
		  s.decode_tok_s);

	/* a step that did both counts its time for both */
	gptoss_step_rates_add(&r, 110.5, 0.25, 100, 4, 5);
	gptoss_step_rates_read(&r, 110.9, 1, &s);
	CHECK(near(s.prefill_tok_s, 400.0) && near(s.decode_tok_s, 16.0) && near(s.mean_batch_size, 5.0),
		  "mixed step: prefill %.3f decode %.3f batch %.3f", s.prefill_tok_s, s.decode_tok_s,
		  s.mean_batch_size);

	/* idle time does not dilute: the minute's batch size counts steps, not seconds */
	gptoss_step_rates_read(&r, 150.0, 60, &s);
	CHECK(near(s.mean_batch_size, (1.0 + 80.0 + 400.0 + 5.0) / (1 + 20 + 50 + 1)),
		  "mean batch of the minute %.3f", s.mean_batch_size);
	CHECK(near(s.prefill_tok_s, 1100.0 / 0.75), "prefill of the minute %.3f", s.prefill_tok_s);

	/* a minute later the ring has forgotten it all; second 160 reuses second 100's bucket */
	gptoss_step_rates_add(&r, 160.5, 0.5, 10, 0, 2);
	gptoss_step_rates_read(&r, 171.0, 60, &s);
	CHECK(near(s.prefill_tok_s, 20.0) && near(s.mean_batch_size, 2.0),
		  "after a minute only second 160 counts: prefill %.3f batch %.3f", s.prefill_tok_s,
		  s.mean_batch_size);
}

/* Steps of the engine's queue a request spent waiting for its slot, or -1 while it waits. */
static int64_t
queue_steps(gptoss_engine *eng, int64_t id)
{
	gptoss_result res;

	if (gptoss_engine_result(eng, id, &res) < 0 || res.admit_step < 0)
		return -1;
	return res.admit_step - res.submit_step;
}

/*
 * Fair admission: free slots go round-robin over owners (fewest slots held
 * first), within an owner over its sessions; max_seqs_per_owner keeps a slot
 * for another owner, which is then admitted at the next step while the first
 * owner's long requests run; without the cap it waits for one of them.
 */
static void
test_fake_fairness(void)
{
	fake_backend f;
	gptoss_engine *eng = fake_engine(&f, FAKE_SLOTS, FAKE_CTX, 256, 512);
	int32_t    *prompt = make_prompt(12, 21);
	gptoss_gen_params p = raw_params(6);
	gptoss_error err = {0};
	int64_t		a[8],
				b[2],
				late;
	gptoss_engine_stats st;

	/* owner 1: six requests of session 10, then two of session 11; owner 2: two of session 20 */
	for (int i = 0; i < 8; i++)
	{
		a[i] = gptoss_engine_submit(eng, prompt, 12, &p, &err);
		CHECK(gptoss_engine_set_owner(eng, a[i], 1, i < 6 ? 10 : 11) == 0, "set_owner a%d", i);
	}
	for (int i = 0; i < 2; i++)
	{
		b[i] = gptoss_engine_submit(eng, prompt, 12, &p, &err);
		CHECK(gptoss_engine_set_owner(eng, b[i], 2, 20) == 0, "set_owner b%d", i);
	}
	CHECK(gptoss_engine_step(eng, &err) >= 0, "step: %s", err.msg);
	/* a0 (first come), b0 (owner 2 holds none), a6 (session 11 holds none), b1 */
	CHECK(queue_steps(eng, a[0]) == 0 && queue_steps(eng, b[0]) == 0 &&
		  queue_steps(eng, a[6]) == 0 && queue_steps(eng, b[1]) == 0,
		  "admitted first: a0 %lld b0 %lld a6 %lld b1 %lld", (long long) queue_steps(eng, a[0]),
		  (long long) queue_steps(eng, b[0]), (long long) queue_steps(eng, a[6]),
		  (long long) queue_steps(eng, b[1]));
	CHECK(queue_steps(eng, a[1]) == -1 && queue_steps(eng, a[7]) == -1, "the rest waits");
	CHECK(gptoss_engine_set_owner(eng, a[0], 3, 3) == -1, "an admitted request keeps its keys");
	run_to_end(eng);
	CHECK(f.violations == 0, "violations");
	for (int i = 0; i < 8; i++)
		gptoss_engine_release(eng, a[i]);
	for (int i = 0; i < 2; i++)
		gptoss_engine_release(eng, b[i]);

	/* one owner's long requests fill the batch; another owner's short one comes later */
	for (int cap = 0; cap <= FAKE_SLOTS - 1; cap += FAKE_SLOTS - 1)
	{
		gptoss_gen_params lp = raw_params(40);
		int64_t		hog[8];

		gptoss_engine_set_max_seqs_per_owner(eng, cap);
		for (int i = 0; i < 8; i++)
		{
			hog[i] = gptoss_engine_submit(eng, prompt, 12, &lp, &err);
			gptoss_engine_set_owner(eng, hog[i], 1, 10 + (uint64_t) i % 2);
		}
		for (int s = 0; s < 3; s++)
			gptoss_engine_step(eng, &err);
		gptoss_engine_get_stats(eng, &st);
		CHECK(st.active == (cap ? cap : FAKE_SLOTS), "cap %d: %d running", cap, st.active);
		late = gptoss_engine_submit(eng, prompt, 12, &p, &err);
		gptoss_engine_set_owner(eng, late, 2, 20);
		gptoss_engine_step(eng, &err);
		if (cap)
			CHECK(queue_steps(eng, late) == 0, "with the cap the late owner joins the next step (%lld)",
				  (long long) queue_steps(eng, late));
		else
			CHECK(queue_steps(eng, late) == -1, "without it, it waits for a slot");
		run_to_end(eng);
		if (!cap)
			CHECK(queue_steps(eng, late) >= 30, "waited %lld steps", (long long) queue_steps(eng, late));
		for (int i = 0; i < 8; i++)
			gptoss_engine_release(eng, hog[i]);
		gptoss_engine_release(eng, late);
	}
	CHECK(f.violations == 0, "violations");
	free(prompt);
	gptoss_engine_free(eng);
}

/* Unseeded sampling differs between requests; the same seed repeats. */
static void
test_fake_seeds(void)
{
	fake_backend f;
	gptoss_engine *eng = fake_engine(&f, FAKE_SLOTS, FAKE_CTX, 256, 512);
	int32_t    *prompt = make_prompt(20, 5);
	gptoss_gen_params p = raw_params(8);
	gptoss_error err = {0};
	int64_t		ids[4];
	outcome		o[4];

	p.temperature = 0.7f;
	ids[0] = gptoss_engine_submit(eng, prompt, 20, &p, &err);
	ids[1] = gptoss_engine_submit(eng, prompt, 20, &p, &err);
	p.has_seed = true;
	p.seed = 9;
	ids[2] = gptoss_engine_submit(eng, prompt, 20, &p, &err);
	ids[3] = gptoss_engine_submit(eng, prompt, 20, &p, &err);
	run_to_end(eng);
	for (int i = 0; i < 4; i++)
		o[i] = take_result(eng, ids[i]);
	CHECK(!same_outcome(&o[0], &o[1]), "unseeded requests get different seeds");
	CHECK(same_outcome(&o[2], &o[3]), "the same seed gives the same tokens");
	for (int i = 0; i < 4; i++)
		outcome_free(&o[i]);
	free(prompt);
	gptoss_engine_free(eng);
}

/* Cancel ends a running request and frees its slot for a queued one at once. */
static void
test_fake_cancel(void)
{
	fake_backend f;
	gptoss_engine *eng = fake_engine(&f, 2, FAKE_CTX, 16, 512);
	int32_t    *prompt = make_prompt(30, 8);
	gptoss_gen_params p = raw_params(50);
	gptoss_error err = {0};
	int64_t		a,
				b,
				c;
	gptoss_result res;
	gptoss_engine_stats st;

	a = gptoss_engine_submit(eng, prompt, 30, &p, &err);
	b = gptoss_engine_submit(eng, prompt, 30, &p, &err);
	c = gptoss_engine_submit(eng, prompt, 30, &p, &err);
	for (int i = 0; i < 3; i++)
		gptoss_engine_step(eng, &err);
	gptoss_engine_get_stats(eng, &st);
	CHECK(st.active == 2 && st.queued == 1, "active %d queued %d", st.active, st.queued);

	gptoss_engine_result(eng, a, &res);
	/* 30-token prompts in chunks of 16: two steps of prefill, then one decode step. */
	CHECK(res.finish_reason == GPTOSS_FINISH_NONE && res.n_tokens == 2,
		  "running result: finish %d, %d tokens", res.finish_reason, res.n_tokens);
	gptoss_engine_release(eng, a);
	CHECK(f.releases == 1, "releasing a running request frees its slot (releases %d)", f.releases);
	CHECK(gptoss_engine_result(eng, a, &res) == -1, "released request is forgotten");
	gptoss_engine_step(eng, &err);
	gptoss_engine_get_stats(eng, &st);
	CHECK(st.active == 2 && st.queued == 0 && st.requests_cancelled == 1,
		  "queued request took the slot: active %d queued %d", st.active, st.queued);
	gptoss_engine_result(eng, c, &res);
	CHECK(res.n_tokens == 0 && res.finish_reason == GPTOSS_FINISH_NONE, "c started its prompt");
	gptoss_engine_step(eng, &err);
	gptoss_engine_result(eng, c, &res);
	CHECK(res.n_tokens == 1, "c sampled its first token (%d)", res.n_tokens);

	/* Releasing a running request cancels it; unknown ids are ignored. */
	gptoss_engine_release(eng, b);
	CHECK(gptoss_engine_result(eng, b, &res) == -1, "released request is forgotten");
	CHECK(f.releases == 2, "release frees the slot (releases %d)", f.releases);
	gptoss_engine_release(eng, 12345);
	run_to_end(eng);
	gptoss_engine_result(eng, c, &res);
	CHECK(res.finish_reason == GPTOSS_FINISH_LENGTH && res.n_tokens == 50, "c finishes");
	CHECK(f.violations == 0, "violations");
	free(prompt);
	gptoss_engine_free(eng);
}

/* max_tokens is clamped to the context (LENGTH); a prompt filling the context is TOO_LONG. */
static void
test_fake_limits(void)
{
	fake_backend f;
	gptoss_engine *eng = fake_engine(&f, 2, 64, 16, 64);
	int32_t    *prompt = make_prompt(64, 3);
	gptoss_gen_params p = raw_params(100);
	gptoss_error err = {0};
	gptoss_result res;
	int64_t		id;

	id = gptoss_engine_submit(eng, prompt, 60, &p, &err);
	run_to_end(eng);
	gptoss_engine_result(eng, id, &res);
	CHECK(res.finish_reason == GPTOSS_FINISH_LENGTH && res.n_tokens == 4 &&
		  res.prompt_tokens == 60 && res.completion_tokens == 4,
		  "clamped: finish %d, %d tokens", res.finish_reason, res.n_tokens);
	CHECK(f.violations == 0, "no chunk past the context");

	CHECK(gptoss_engine_submit(eng, prompt, 64, &p, &err) == -1 && err.code == GPTOSS_ERR_TOO_LONG &&
		  strstr(err.msg, "64") != NULL, "too long: %s", err.msg);
	CHECK(gptoss_engine_submit(eng, prompt, 63, &p, &err) >= 0, "63 of 64 leaves one token");
	free(prompt);
	gptoss_engine_free(eng);
}

/* Every bad parameter is refused, naming its key. */
static void
test_fake_params(void)
{
	fake_backend f;
	gptoss_engine *eng = fake_engine(&f, 2, 64, 16, 64);
	int32_t		prompt[2] = {10, 20};
	int32_t		bad_ids[2] = {10, 201088};
	char	   *empty_stop[] = {""};
	gptoss_gen_params p;
	gptoss_error err = {0};
	static const char *const keys[] = {"max_tokens", "temperature", "top_p", "top_p", "top_k",
	"stop", "temperature"};

	for (int k = 0; k < 7; k++)
	{
		p = raw_params(5);
		switch (k)
		{
			case 0:
				p.max_tokens = 0;
				break;
			case 1:
				p.temperature = -0.5f;
				break;
			case 2:
				p.top_p = 0;
				break;
			case 3:
				p.top_p = 1.5f;
				break;
			case 4:
				p.top_k = -1;
				break;
			case 5:
				memcpy(p.stop, empty_stop, 1 * sizeof(p.stop[0]));
				p.n_stop = 1;
				break;
			case 6:
				p.temperature = 0.0f / 0.0f;
				break;
		}
		CHECK(gptoss_engine_submit(eng, prompt, 2, &p, &err) == -1 &&
			  err.code == GPTOSS_ERR_INVALID && strstr(err.msg, keys[k]) != NULL,
			  "case %d: %s", k, err.msg);
	}
	p = raw_params(5);
	CHECK(gptoss_engine_submit(eng, bad_ids, 2, &p, &err) == -1 && err.code == GPTOSS_ERR_INVALID,
		  "token outside the vocabulary: %s", err.msg);
	CHECK(gptoss_engine_submit(eng, prompt, 0, &p, &err) == -1 && err.code == GPTOSS_ERR_INVALID,
		  "empty prompt: %s", err.msg);
	CHECK(gptoss_engine_active(eng) == 0, "nothing was queued");
	gptoss_engine_free(eng);
}

/*
 * Stop strings: the text ends right before the first occurrence, and while
 * the request runs its visible text only grows (a possible stop prefix is
 * held back).
 */
static void
test_fake_stop_strings(void)
{
	fake_backend f;
	gptoss_engine *eng = fake_engine(&f, 2, FAKE_CTX, 256, 512);
	int32_t    *prompt = make_prompt(12, 21);
	gptoss_gen_params p = raw_params(60);
	gptoss_error err = {0};
	outcome		full;
	int64_t		id;
	char		stop[8];
	char	   *stops[2];
	size_t		cut;
	char	   *seen = calloc(1, 1);
	gptoss_result res;

	id = gptoss_engine_submit(eng, prompt, 12, &p, &err);
	run_to_end(eng);
	full = take_result(eng, id);
	CHECK(strlen(full.text) > 40, "fake text long enough (%zu)", strlen(full.text));

	/* Stop at a 4-byte string taken from the middle of the text. */
	memcpy(stop, full.text + strlen(full.text) / 2, 4);
	stop[4] = '\0';
	cut = (size_t) (strstr(full.text, stop) - full.text);
	stops[0] = "never appears \x01";
	stops[1] = stop;
	memcpy(p.stop, stops, 2 * sizeof(p.stop[0]));
	p.n_stop = 2;
	id = gptoss_engine_submit(eng, prompt, 12, &p, &err);
	while (gptoss_engine_active(eng) > 0)
	{
		gptoss_engine_step(eng, &err);
		gptoss_engine_result(eng, id, &res);
		CHECK(res.text_len >= strlen(seen) && strncmp(res.text, seen, strlen(seen)) == 0,
			  "visible text only grows");
		CHECK(strstr(res.text, stop) == NULL, "stop string never visible");
		free(seen);
		seen = strndup(res.text, res.text_len);
	}
	gptoss_engine_result(eng, id, &res);
	CHECK(res.finish_reason == GPTOSS_FINISH_STOP, "finish %d", res.finish_reason);
	CHECK(res.text_len == cut && strncmp(res.text, full.text, cut) == 0 && strlen(res.text) == cut,
		  "text cut before the stop string: %zu vs %zu", res.text_len, cut);
	CHECK(res.n_tokens < full.n, "generation stopped early (%d < %d)", res.n_tokens, full.n);
	gptoss_engine_release(eng, id);
	outcome_free(&full);
	free(seen);
	free(prompt);
	gptoss_engine_free(eng);
}

/*
 * The most and longest stop strings cost the same per token at the start
 * and at the end of a long generation: matching looks at a tail window only.
 */
static void
test_fake_stop_cost(void)
{
	fake_backend f;
	gptoss_engine *eng = fake_engine(&f, 1, FAKE_CTX, 256, 512);
	int32_t    *prompt = make_prompt(12, 33);
	int			n_gen = FAKE_CTX - 20;
	gptoss_gen_params p = raw_params(n_gen);
	gptoss_error err = {0};
	char		stops[GPTOSS_MAX_STOP][GPTOSS_MAX_STOP_LEN + 1];
	int64_t		checks_at[4] = {0};
	int			marks[4] = {100, 200, n_gen - 100, n_gen};
	int			next_mark = 0;
	gptoss_result res;
	int64_t		id;

	/* Never matching, but sharing long prefixes with each other. */
	for (int i = 0; i < GPTOSS_MAX_STOP; i++)
	{
		memset(stops[i], '\x01', GPTOSS_MAX_STOP_LEN);
		stops[i][GPTOSS_MAX_STOP_LEN - 1] = (char) (2 + i);
		stops[i][GPTOSS_MAX_STOP_LEN] = '\0';
		p.stop[i] = stops[i];
	}
	p.n_stop = GPTOSS_MAX_STOP;
	p.ignore_eos = true;
	id = gptoss_engine_submit(eng, prompt, 12, &p, &err);
	CHECK(id >= 0, "submit: %s", err.msg);
	while (gptoss_engine_active(eng) > 0 && next_mark < 4)
	{
		gptoss_engine_step(eng, &err);
		gptoss_engine_result(eng, id, &res);
		if (res.n_tokens >= marks[next_mark])
			checks_at[next_mark++] = res.stop_checks;
	}
	CHECK(next_mark == 4 && res.n_tokens == n_gen, "ran %d tokens", res.n_tokens);
	{
		int64_t		early = checks_at[1] - checks_at[0];
		int64_t		late = checks_at[3] - checks_at[2];

		printf("stop matching: %lld comparisons over tokens 100..200, %lld over the last 100 (text %zu bytes)\n",
			   (long long) early, (long long) late, res.text_len);
		CHECK(early > 0 && late > 0, "stop strings were compared");
		CHECK(late <= early + early / 10, "cost per token does not grow with the text: %lld then %lld",
			  (long long) early, (long long) late);
		/* per token: the new bytes and a window per stop string, and the hold-back per stop string */
		CHECK(late <= 100LL * GPTOSS_MAX_STOP * 3 * GPTOSS_MAX_STOP_LEN,
			  "bounded by the caps: %lld", (long long) late);
	}
	gptoss_engine_release(eng, id);
	free(prompt);
	gptoss_engine_free(eng);
}

/* Stop tokens: harmony stops on <|return|>/<|call|> not <|end|>; raw on eos; ignore_eos runs on. */
static void
test_fake_stop_tokens(void)
{
	static const struct
	{
		bool		raw;
		bool		ignore_eos;
		int			min_tokens;
		int32_t		token;
		bool		stops;
	}			cases[] = {
		{false, false, 0, GPTOSS_TOK_RETURN, true},
		{false, false, 0, GPTOSS_TOK_CALL, true},
		{false, false, 0, GPTOSS_TOK_END, false},
		{false, true, 0, GPTOSS_TOK_RETURN, false},
		{true, false, 0, GPTOSS_TOK_RETURN, true},
		{true, false, 0, GPTOSS_TOK_ENDOFTEXT, true},
		{true, true, 0, GPTOSS_TOK_ENDOFTEXT, false},
		/* the stop token is the 4th token: it counts from min_tokens 4 on */
		{true, false, 4, GPTOSS_TOK_ENDOFTEXT, true},
		{true, false, 5, GPTOSS_TOK_ENDOFTEXT, false},
		{false, false, 5, GPTOSS_TOK_RETURN, false},
	};

	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
	{
		fake_backend f;
		gptoss_engine *eng = fake_engine(&f, 2, FAKE_CTX, 256, 512);
		int32_t    *prompt = make_prompt(7, 2);
		gptoss_gen_params p = raw_params(10);
		gptoss_error err = {0};
		gptoss_result res;
		int64_t		id;

		p.raw = cases[c].raw;
		p.ignore_eos = cases[c].ignore_eos;
		p.min_tokens = cases[c].min_tokens;
		f.stop_at_token = cases[c].token;
		f.stop_after = 4;
		id = gptoss_engine_submit(eng, prompt, 7, &p, &err);
		run_to_end(eng);
		gptoss_engine_result(eng, id, &res);
		if (cases[c].stops)
			CHECK(res.finish_reason == GPTOSS_FINISH_STOP && res.n_tokens == 4 &&
				  res.tokens[3] == cases[c].token, "case %zu: finish %d after %d", c,
				  res.finish_reason, res.n_tokens);
		else
			CHECK(res.finish_reason == GPTOSS_FINISH_LENGTH && res.n_tokens == 10,
				  "case %zu: finish %d after %d", c, res.finish_reason, res.n_tokens);
		free(prompt);
		gptoss_engine_free(eng);
	}
}

/* Appends special id or the encoding of text to a script. */
static int
script_add(int32_t *script, int n, int32_t special, const char *text)
{
	int32_t    *ids = NULL;
	gptoss_error err = {0};
	int			k;

	if (text == NULL)
	{
		script[n] = special;
		return n + 1;
	}
	k = gptoss_tokenizer_encode(g_tok, text, strlen(text), &ids, &err);
	memcpy(script + n, ids, (size_t) k * sizeof(int32_t));
	free(ids);
	return n + k;
}

/* Harmony mode: the text is the final channel; reasoning on request; stop strings apply to it. */
static void
test_fake_harmony(void)
{
	int32_t		script[256];
	int			n = 0;
	fake_backend f;
	gptoss_engine *eng;
	gptoss_gen_params p;
	gptoss_error err = {0};
	gptoss_result res;
	int32_t    *ids = NULL;
	int			n_ids = 0;
	int64_t		id;
	char	   *stops[] = {"Paris."};

	n = script_add(script, n, GPTOSS_TOK_CHANNEL, NULL);
	n = script_add(script, n, 0, "analysis");
	n = script_add(script, n, GPTOSS_TOK_MESSAGE, NULL);
	n = script_add(script, n, 0, "The user wants the capital. Say Paris.");
	n = script_add(script, n, GPTOSS_TOK_END, NULL);
	n = script_add(script, n, GPTOSS_TOK_START, NULL);
	n = script_add(script, n, 0, "assistant");
	n = script_add(script, n, GPTOSS_TOK_CHANNEL, NULL);
	n = script_add(script, n, 0, "final");
	n = script_add(script, n, GPTOSS_TOK_MESSAGE, NULL);
	n = script_add(script, n, 0, "The capital of France is Paris. Anything else?");
	n = script_add(script, n, GPTOSS_TOK_RETURN, NULL);

	eng = fake_engine(&f, 2, FAKE_CTX, 256, 512);
	f.script = script;
	f.n_script = n;
	gptoss_gen_params_default(&p);
	p.include_reasoning = true;
	CHECK(gptoss_render_prompt(gptoss_engine_tokenizer(eng), "What is the capital of France?", NULL, 0, &p, NULL, &ids, &n_ids,
							   &err) == 0, "render: %s", err.msg);
	id = gptoss_engine_submit(eng, ids, n_ids, &p, &err);
	run_to_end(eng);
	gptoss_engine_result(eng, id, &res);
	CHECK(res.finish_reason == GPTOSS_FINISH_STOP && res.n_tokens == n, "finish %d after %d/%d",
		  res.finish_reason, res.n_tokens, n);
	CHECK(strcmp(res.text, "The capital of France is Paris. Anything else?") == 0, "text [%s]",
		  res.text);
	CHECK(strcmp(res.reasoning, "The user wants the capital. Say Paris.") == 0, "reasoning [%s]",
		  res.reasoning);
	gptoss_engine_release(eng, id);

	/* Without include_reasoning no analysis; a stop string cuts the final text only. */
	p.include_reasoning = false;
	memcpy(p.stop, stops, 1 * sizeof(p.stop[0]));
	p.n_stop = 1;
	id = gptoss_engine_submit(eng, ids, n_ids, &p, &err);
	run_to_end(eng);
	gptoss_engine_result(eng, id, &res);
	CHECK(res.finish_reason == GPTOSS_FINISH_STOP && strcmp(res.text, "The capital of France is ") == 0 &&
		  strcmp(res.reasoning, "") == 0 && res.n_tokens < n, "stopped text [%s]", res.text);
	gptoss_engine_release(eng, id);

	/* Cut by max_tokens inside the analysis: no final message, text "". */
	p.n_stop = 0;
	p.max_tokens = 5;
	id = gptoss_engine_submit(eng, ids, n_ids, &p, &err);
	run_to_end(eng);
	gptoss_engine_result(eng, id, &res);
	CHECK(res.finish_reason == GPTOSS_FINISH_LENGTH && strcmp(res.text, "") == 0,
		  "no final: [%s]", res.text);
	gptoss_engine_release(eng, id);

	/* Raw mode takes no chat messages. */
	p.raw = true;
	{
		gptoss_chat_message m = {"user", "x"};
		int32_t    *none = NULL;
		int			n_none = 0;

		CHECK(gptoss_render_prompt(gptoss_engine_tokenizer(eng), NULL, &m, 1, &p, NULL, &none, &n_none, &err) == -1 &&
			  err.code == GPTOSS_ERR_INVALID, "raw with messages: %s", err.msg);
	}
	free(ids);
	gptoss_engine_free(eng);
}

/* A failing backend step ends every active request with its message. */
static void
test_fake_failure(void)
{
	fake_backend f;
	gptoss_engine *eng = fake_engine(&f, 2, FAKE_CTX, 256, 512);
	int32_t    *prompt = make_prompt(10, 1);
	gptoss_gen_params p = raw_params(20);
	gptoss_error err = {0};
	gptoss_result res;
	int64_t		ids[3];

	f.fail_at_step = 4;
	for (int i = 0; i < 3; i++)
		ids[i] = gptoss_engine_submit(eng, prompt, 10, &p, &err);
	for (int i = 0; i < 3; i++)
		CHECK(gptoss_engine_step(eng, &err) >= 0, "step %d: %s", i, err.msg);
	CHECK(gptoss_engine_step(eng, &err) == -1 && strstr(err.msg, "fake device lost") != NULL,
		  "failing step returns -1: %s", err.msg);
	for (int i = 0; i < 3; i++)
	{
		gptoss_engine_result(eng, ids[i], &res);
		CHECK(res.finish_reason == GPTOSS_FINISH_ERROR && strstr(res.error, "fake device lost") != NULL,
			  "request %d: finish %d error [%s]", i, res.finish_reason, res.error);
	}
	CHECK(gptoss_engine_active(eng) == 0, "nothing active after the failure");
	CHECK(gptoss_engine_submit(eng, prompt, 10, &p, &err) == -1, "submit after failure refused");
	CHECK(gptoss_engine_step(eng, &err) == -1, "step after failure refused");
	free(prompt);
	gptoss_engine_free(eng);
}

/* ---------------------------------------------------------------------------
 * The real tiny model
 */

/*
 * Greedy continuation computed without the scheduler: every token is the
 * argmax of the last row of a full prefill of prompt + tokens so far, run
 * directly on the backend's slot 0 (the engine is idle).
 */
static int32_t *
reference_greedy(gptoss_engine *eng, const char *prompt, int n_gen)
{
	gptoss_backend *be = gptoss_engine_backend(eng);
	int			vocab = gptoss_engine_model(eng)->config.vocab_size;
	gptoss_gen_params p = raw_params(1);
	gptoss_error err = {0};
	int32_t    *ids = NULL,
			   *seq,
			   *out = calloc((size_t) n_gen, sizeof(int32_t));
	int			n = 0;
	float	   *logits;

	gptoss_render_prompt(gptoss_engine_tokenizer(eng), prompt, NULL, 0, &p, NULL, &ids, &n, &err);
	seq = malloc((size_t) (n + n_gen) * sizeof(int32_t));
	memcpy(seq, ids, (size_t) n * sizeof(int32_t));
	logits = malloc((size_t) (n + n_gen) * (size_t) vocab * sizeof(float));
	for (int k = 0; k < n_gen; k++)
	{
		gptoss_step_seq e = {0};
		int32_t		next = -1;

		e.slot = 0;
		e.pos = 0;
		e.n_tokens = n + k;
		e.tokens = seq;
		e.sample = 0;
		if (be->step(be, &e, 1, &next, logits, &err) < 0)
		{
			CHECK(0, "reference step: %s", err.msg);
			break;
		}
		be->release(be, 0);
		seq[n + k] = out[k] = gptoss_argmax(logits + (size_t) (n + k - 1) * (size_t) vocab, vocab);
	}
	free(ids);
	free(seq);
	free(logits);
	return out;
}

/* Runs one request alone to the end. */
static outcome
run_alone(gptoss_engine *eng, const char *prompt, const gptoss_gen_params *p)
{
	int64_t		id = submit_text(eng, prompt, p);

	run_to_end(eng);
	return take_result(eng, id);
}

static void
test_tiny(gptoss_engine *eng)
{
	static const char *const prompts[] = {
		"hello", "The quick brown fox jumps over the lazy dog.",
		"Once upon a time, in a land far away, there lived a", "1, 2, 3, 4,", "Summarize: PostgreSQL",
	};
	enum { N = 5 };
	gptoss_gen_params ps[N];
	outcome		alone[N],
				batched[N],
				again;
	int64_t		ids[N];
	gptoss_error err = {0};
	gptoss_result res;

	for (int i = 0; i < N; i++)
	{
		gptoss_gen_params_default(&ps[i]);
		ps[i].max_tokens = 12;
		ps[i].raw = i % 2 == 0;
		ps[i].temperature = 0;
		if (i >= 3)
		{
			/* seeded sampling */
			ps[i].temperature = 1.0f;
			ps[i].has_seed = true;
			ps[i].seed = 1234 + (uint64_t) i;
		}
		alone[i] = run_alone(eng, prompts[i], &ps[i]);
		CHECK(alone[i].n >= 1, "tiny %d generated nothing", i);
	}

	/* Greedy decoding through the scheduler equals argmax over full recomputation. */
	{
		int32_t    *ref = reference_greedy(eng, prompts[0], alone[0].n);

		CHECK(memcmp(ref, alone[0].tokens, (size_t) alone[0].n * sizeof(int32_t)) == 0,
			  "engine greedy tokens differ from the full-recompute argmax");
		free(ref);
	}

	/* Greedy is deterministic. */
	again = run_alone(eng, prompts[0], &ps[0]);
	CHECK(same_outcome(&again, &alone[0]), "greedy run repeats");
	outcome_free(&again);

	/* Four together, the fifth joins mid-flight. */
	for (int i = 0; i < 4; i++)
		ids[i] = submit_text(eng, prompts[i], &ps[i]);
	for (int s = 0; s < 3; s++)
		gptoss_engine_step(eng, &err);
	ids[4] = submit_text(eng, prompts[4], &ps[4]);
	run_to_end(eng);
	for (int i = 0; i < N; i++)
	{
		batched[i] = take_result(eng, ids[i]);
		CHECK(same_outcome(&alone[i], &batched[i]), "tiny request %d differs when batched", i);
	}

	/* Raw text is the decoded continuation (special tokens dropped, made valid UTF-8). */
	{
		gptoss_utf8_text t = {0};

		for (int k = 0; k < alone[0].n; k++)
		{
			size_t		len = 0;
			const char *b = gptoss_tokenizer_is_special(g_tok, alone[0].tokens[k]) ? NULL
				: gptoss_tokenizer_token_bytes(g_tok, alone[0].tokens[k], &len);

			if (b)
				gptoss_utf8_text_push(&t, b, len, &err);
		}
		gptoss_utf8_text_flush(&t, &err);
		CHECK(strcmp(t.text.data ? t.text.data : "", alone[0].text) == 0, "raw text [%s] vs decode [%s]",
			  alone[0].text, t.text.data);
		gptoss_utf8_text_free(&t);
	}

	/* Stop string taken from the greedy text. */
	{
		gptoss_gen_params p = ps[0];
		outcome		cut;
		char		stop[4];
		char	   *stops[] = {stop};
		size_t		len = strlen(alone[0].text);

		p.max_tokens = 40;
		again = run_alone(eng, prompts[0], &p);
		len = strlen(again.text);
		if (len >= 6)
		{
			memcpy(stop, again.text + len / 2, 3);
			stop[3] = '\0';
			memcpy(p.stop, stops, 1 * sizeof(p.stop[0]));
			p.n_stop = 1;
			cut = run_alone(eng, prompts[0], &p);
			CHECK(cut.finish == GPTOSS_FINISH_STOP &&
				  strlen(cut.text) == (size_t) (strstr(again.text, stop) - again.text) &&
				  strncmp(cut.text, again.text, strlen(cut.text)) == 0,
				  "stop [%s]: [%s] from [%s]", stop, cut.text, again.text);
			outcome_free(&cut);
		}
		else
			CHECK(0, "greedy raw text too short for a stop-string test: [%s]", again.text);
		outcome_free(&again);
	}

	/* Clamp and too long (the engine's context is 256). */
	{
		gptoss_gen_params p = ps[0];
		int32_t    *prompt = make_prompt(256, 4);
		int64_t		id;

		p.max_tokens = 1000;
		id = gptoss_engine_submit(eng, prompt, 250, &p, &err);
		run_to_end(eng);
		gptoss_engine_result(eng, id, &res);
		CHECK(res.finish_reason == GPTOSS_FINISH_LENGTH && res.n_tokens == 6,
			  "clamp: finish %d after %d", res.finish_reason, res.n_tokens);
		gptoss_engine_release(eng, id);
		CHECK(gptoss_engine_submit(eng, prompt, 256, &p, &err) == -1 &&
			  err.code == GPTOSS_ERR_TOO_LONG, "too long: %s", err.msg);
		free(prompt);
	}

	/* Cancel a running request: the slot frees (the KV cache is empty again). */
	{
		gptoss_backend_info info;
		int64_t		id = submit_text(eng, prompts[1], &ps[1]);

		gptoss_engine_step(eng, &err);
		gptoss_engine_step(eng, &err);
		gptoss_engine_release(eng, id);
		CHECK(gptoss_engine_result(eng, id, &res) == -1, "released");
		CHECK(gptoss_engine_active(eng) == 0, "no active request after cancel");
		memset(&info, 0, sizeof(info));
		gptoss_engine_backend(eng)->get_info(gptoss_engine_backend(eng), &info);
		CHECK(info.kv_cache_used_tokens == 0, "KV cache used after cancel: %lld",
			  (long long) info.kv_cache_used_tokens);
		gptoss_engine_release(eng, id);
	}

	for (int i = 0; i < N; i++)
	{
		outcome_free(&alone[i]);
		outcome_free(&batched[i]);
	}
}

/* Synthesises the tiny model into a temporary directory and runs test_tiny on it. */
static void
run_tiny(void)
{
	char		dir[512];
	gptoss_error err = {0};
	gptoss_engine_opts opts;
	gptoss_engine *eng;
	double		t0 = gptoss_now();

	if (make_tiny_model(dir, sizeof(dir), "gptoss_test_engine") < 0)
		return;
	memset(&opts, 0, sizeof(opts));
	opts.model_path = dir;
	opts.device = "cpu";
	opts.backend.max_seqs = 4;
	opts.backend.max_context = 256;
	opts.prefill_chunk = 16;	/* several chunks per prompt, mixed with decode tokens */
	eng = gptoss_engine_create(&opts, NULL, NULL, &err);
	CHECK(eng != NULL, "engine_create: %s", err.msg);
	if (eng)
	{
		test_tiny(eng);
		gptoss_engine_free(eng);
	}
	/* A missing model directory is a clear error. */
	opts.model_path = "/nonexistent/gptoss";
	CHECK(gptoss_engine_create(&opts, NULL, NULL, &err) == NULL && err.msg[0] != '\0',
		  "missing model dir");

	remove_test_dir(dir);
	printf("test_engine: tiny model part took %.1f s\n", gptoss_now() - t0);
}

int
main(void)
{
	gptoss_tokenizer *tok;

	tok = load_test_tokenizer("test_engine");
	if (tok == NULL)
		return 1;
	g_tok = tok;
	test_step_rates();
	test_fake_batching();
	test_fake_seeds();
	test_fake_fairness();
	test_fake_cancel();
	test_fake_limits();
	test_fake_params();
	test_fake_stop_strings();
	test_fake_stop_cost();
	test_fake_stop_tokens();
	test_fake_harmony();
	test_fake_failure();
	run_tiny();
	gptoss_tokenizer_free(tok);
	printf("test_engine: %d passed, %d failed\n", n_pass, n_fail);
	return n_fail ? 1 : 0;
}
