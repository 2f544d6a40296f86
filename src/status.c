/*
 * status.c: gptoss_status() (jsonb) and the rows of the gptoss_stats view.
 *
 * Both read what the workers publish in shared memory (worker.c); neither
 * talks to a worker, so they answer at once in every state, including while
 * the model loads or after it failed to load.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "common.h"

#include "gptoss.h"

PG_FUNCTION_INFO_V1(gptoss_status);
PG_FUNCTION_INFO_V1(gptoss_stats);

/* Number of SUBMITTED (not yet accepted) slots of each worker. */
static void
count_submitted(int *out)
{
	for (int w = 0; w < GPTOSS_MAX_WORKERS; w++)
		out[w] = 0;
	LWLockAcquire(gptoss_shared->lock, LW_SHARED);
	for (int i = 0; i < gptoss_shared->nslots; i++)
	{
		GptossRequestSlot *s = &gptoss_shared->slots[i];

		if (s->state == GPTOSS_SLOT_SUBMITTED && s->worker >= 0 && s->worker < GPTOSS_MAX_WORKERS)
			out[s->worker]++;
	}
	LWLockRelease(gptoss_shared->lock);
}

/* Appends "key": value pairs for one worker (no braces). */
static void
append_worker_json(StringInfo buf, const GptossWorkerShared *w, int index)
{
	const GptossModelInfo *m = &w->info;

	appendStringInfo(buf, "\"state\": \"%s\"", gptoss_worker_state_name(w->state));
	appendStringInfo(buf, ", \"worker\": %d", index);
	if (w->pid != 0)
		appendStringInfo(buf, ", \"pid\": %d", (int) w->pid);
	else
		appendStringInfoString(buf, ", \"pid\": null");
	appendStringInfo(buf, ", \"progress\": %.4f", w->progress);
	if (w->state == GPTOSS_WORKER_LOADING && w->progress_what[0] != '\0')
	{
		appendStringInfoString(buf, ", \"loading\": ");
		escape_json(buf, w->progress_what);
	}
	if (w->state == GPTOSS_WORKER_FAILED)
	{
		appendStringInfoString(buf, ", \"error\": ");
		escape_json(buf, w->error);
	}
	appendStringInfoString(buf, ", \"model_path\": ");
	escape_json(buf, gptoss_model_path ? gptoss_model_path : "");
	appendStringInfoString(buf, ", \"requested_device\": ");
	escape_json(buf, gptoss_device_name(gptoss_device));
	if (w->pid != 0 && w->started_at != 0)
		appendStringInfo(buf, ", \"uptime_s\": %.3f",
						 (double) (GetCurrentTimestamp() - w->started_at) / USECS_PER_SEC);
	if (w->state != GPTOSS_WORKER_READY)
		return;

	appendStringInfoString(buf, ", \"model\": ");
	escape_json(buf, m->model_name);
	appendStringInfo(buf, ", \"random_weights\": %s", m->random_weights ? "true" : "false");
	appendStringInfoString(buf, ", \"backend\": ");
	escape_json(buf, m->backend);
	appendStringInfoString(buf, ", \"device\": {\"name\": ");
	escape_json(buf, m->device_name);
	appendStringInfo(buf, ", \"index\": %d, \"memory_total_bytes\": " INT64_FORMAT
					 ", \"memory_used_bytes\": " INT64_FORMAT "}",
					 m->device_index, m->memory_total_bytes, m->memory_used_bytes);
	appendStringInfo(buf,
					 ", \"config\": {\"hidden_size\": %d, \"num_hidden_layers\": %d, "
					 "\"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d, "
					 "\"num_local_experts\": %d, \"num_experts_per_tok\": %d, "
					 "\"intermediate_size\": %d, \"vocab_size\": %d, \"sliding_window\": %d, "
					 "\"max_position_embeddings\": %d, \"initial_context_length\": %d, "
					 "\"rope_theta\": %g, \"rope_scaling_factor\": %g, \"swiglu_limit\": %g}",
					 m->hidden_size, m->num_layers, m->num_heads, m->num_kv_heads, m->head_dim,
					 m->num_experts, m->experts_per_token, m->intermediate_size,
					 m->model_vocab_size, m->sliding_window, m->max_position_embeddings,
					 m->initial_context_length, m->rope_theta, m->rope_factor, m->swiglu_limit);
	appendStringInfo(buf, ", \"parameters\": {\"total\": " INT64_FORMAT
					 ", \"per_token\": " INT64_FORMAT "}",
					 m->n_params, m->n_active_params);
	/* The loader accepts only this layout (model.h): MXFP4 experts, bf16 elsewhere. */
	appendStringInfo(buf, ", \"weights\": {\"formats\": {\"experts\": \"mxfp4\", "
					 "\"attention\": \"bf16\", \"router\": \"bf16\", \"embedding\": \"bf16\", "
					 "\"lm_head\": \"bf16\", \"norms\": \"bf16\"}, "
					 "\"checkpoint_bytes\": " INT64_FORMAT ", \"resident_bytes\": " INT64_FORMAT "}",
					 m->tensor_bytes, m->weight_bytes);
	appendStringInfo(buf, ", \"kv_cache\": {\"capacity_tokens\": " INT64_FORMAT
					 ", \"used_tokens\": " INT64_FORMAT ", \"bytes\": " INT64_FORMAT "}",
					 m->kv_cache_tokens, m->kv_cache_used_tokens, m->kv_cache_bytes);
	/* max_context is what the worker uses: the setting, clamped to the model's positions */
	appendStringInfo(buf, ", \"limits\": {\"max_batch_size\": %d, \"max_context\": %d, "
					 "\"max_context_setting\": %d, \"max_requests\": %d}",
					 m->max_batch_size, m->max_context, gptoss_max_context, gptoss_shared->nslots);
	appendStringInfo(buf, ", \"tokenizer\": {\"vocab_size\": %d}", m->vocab_size);
	appendStringInfo(buf, ", \"load_seconds\": %.3f", m->load_seconds);
}

/* gptoss_status() returns jsonb: the state of the (first) worker and what it loaded */
Datum
gptoss_status(PG_FUNCTION_ARGS)
{
	StringInfoData buf;
	GptossWorkerShared w;
	int			nworkers;

	gptoss_check_preloaded();
	nworkers = gptoss_shared->nworkers;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	gptoss_worker_snapshot(0, &w);
	append_worker_json(&buf, &w, 0);
	appendStringInfo(&buf, ", \"versions\": {\"gptoss\": \"%s\", \"postgresql\": \"%s\"}",
					 GPTOSS_VERSION, PG_VERSION);
	if (nworkers > 1)
	{
		appendStringInfoString(&buf, ", \"workers\": [");
		for (int i = 0; i < nworkers; i++)
		{
			if (i > 0)
				appendStringInfoString(&buf, ", ");
			gptoss_worker_snapshot(i, &w);
			appendStringInfoChar(&buf, '{');
			append_worker_json(&buf, &w, i);
			appendStringInfoChar(&buf, '}');
		}
		appendStringInfoChar(&buf, ']');
	}
	appendStringInfoChar(&buf, '}');
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

#define STATS_COLS 22

/* gptoss_stats() returns setof record: one row per worker (the gptoss_stats view) */
Datum
gptoss_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			submitted[GPTOSS_MAX_WORKERS];
	TimestampTz now = GetCurrentTimestamp();

	gptoss_check_preloaded();
	InitMaterializedSRF(fcinfo, 0);
	count_submitted(submitted);

	for (int i = 0; i < gptoss_shared->nworkers; i++)
	{
		GptossWorkerShared w;
		Datum		values[STATS_COLS];
		bool		nulls[STATS_COLS];
		int			c = 0;
		bool		ready;

		gptoss_worker_snapshot(i, &w);
		ready = w.state == GPTOSS_WORKER_READY;
		memset(nulls, 0, sizeof(nulls));

		values[c++] = Int32GetDatum(i);
		if (w.pid != 0)
			values[c++] = Int32GetDatum((int32) w.pid);
		else
			nulls[c++] = true;
		if (ready)
			values[c++] = CStringGetTextDatum(psprintf("%s:%d", w.info.backend, w.info.device_index));
		else
			nulls[c++] = true;
		values[c++] = CStringGetTextDatum(gptoss_worker_state_name(w.state));
		values[c++] = Int64GetDatum(w.stats.requests_total);
		values[c++] = Int32GetDatum(w.stats.active);
		values[c++] = Int32GetDatum(w.stats.queued + submitted[i]);
		values[c++] = Int64GetDatum(w.stats.requests_failed);
		values[c++] = Int64GetDatum(w.stats.requests_cancelled);
		values[c++] = Int64GetDatum(w.stats.prompt_tokens);
		values[c++] = Int64GetDatum(w.stats.completion_tokens);
		values[c++] = Float8GetDatum(w.stats.prefill_tok_s);
		values[c++] = Float8GetDatum(w.stats.decode_tok_s);
		values[c++] = Float8GetDatum(w.stats.steps > 0
									 ? (double) w.stats.step_sequences / (double) w.stats.steps
									 : 0.0);
		values[c++] = Int64GetDatum(w.stats.steps);
		if (ready)
		{
			values[c++] = Int64GetDatum(w.info.kv_cache_used_tokens);
			values[c++] = Int64GetDatum(w.info.kv_cache_tokens);
		}
		else
		{
			nulls[c++] = true;
			nulls[c++] = true;
		}
		if (ready && strcmp(w.info.backend, "cuda") == 0)
			values[c++] = Int64GetDatum(w.info.memory_used_bytes);
		else
			nulls[c++] = true;
		if (w.pid != 0 && w.started_at != 0)
			values[c++] = IntervalPGetDatum(DatumGetIntervalP(DirectFunctionCall2(timestamp_mi,
																				TimestampTzGetDatum(now),
																				TimestampTzGetDatum(w.started_at))));
		else
			nulls[c++] = true;
		values[c++] = Float8GetDatum(w.stats.max_step_ms_1min);
		values[c++] = Int64GetDatum(w.stats.prefix_cache_hit_tokens);
		values[c++] = Float8GetDatum(w.stats.mean_batch_size_1min);
		Assert(c == STATS_COLS);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
