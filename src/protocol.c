/*
 * protocol.c: the request segment and the result frames (see protocol.h),
 * each encoder beside its decoder.
 *
 * The string parameters are written and read row by row of GPTOSS_PARAMS, so
 * a new string parameter needs no change here; the scalar ones travel in the
 * copied gptoss_gen_params.  The worker trusts the segment no further than
 * its sizes: every read is bounds-checked and a malformed job fails its
 * request, not the worker.
 */
#include "postgres.h"

#include "storage/shm_toc.h"

#include "protocol.h"

/* ---------------------------------------------------------------------------
 * String parameters: items of a uint32 length, the bytes and a NUL
 */

/* Bytes of one item of len bytes. */
static Size
item_size(Size len)
{
	return sizeof(uint32) + len + 1;
}

/* Writes one item at *dest (when dest is not NULL) and returns its size. */
static Size
put_item(char **dest, const char *s)
{
	uint32		len = (uint32) strlen(s);

	if (dest != NULL)
	{
		memcpy(*dest, &len, sizeof(len));
		memcpy(*dest + sizeof(len), s, len + 1);
		*dest += item_size(len);
	}
	return item_size(len);
}

/* Reads one item; false when the bytes left do not hold one. */
static bool
get_item(const char **cursor, const char *end, const char **s)
{
	uint32		len;

	if (end - *cursor < (ptrdiff_t) sizeof(uint32))
		return false;
	memcpy(&len, *cursor, sizeof(len));
	if ((Size) (end - *cursor) < item_size(len) || (*cursor)[sizeof(len) + len] != '\0')
		return false;
	*s = *cursor + sizeof(len);
	*cursor += item_size(len);
	return true;
}

/*
 * Writes p's string parameters at dest (or only counts them when dest is
 * NULL); returns their size.  STRING rows write a presence byte first.
 */
static Size
put_strings(const gptoss_gen_params *p, char *dest)
{
	Size		size = 0;

	for (int i = 0; i < GPTOSS_N_PARAMS; i++)
	{
		const gptoss_param *param = &GPTOSS_PARAMS[i];
		const char *field = (const char *) p + param->offset;

		if (param->type == GPTOSS_PARAM_STRING || param->type == GPTOSS_PARAM_JSON)
		{
			const char *s = *(const char *const *) field;

			if (dest != NULL)
				*dest++ = s != NULL;
			size += 1;
			if (s != NULL)
				size += put_item(dest ? &dest : NULL, s);
		}
		else if (param->type == GPTOSS_PARAM_STRINGS)
		{
			const char *const *list = (const char *const *) field;
			int			count = *(const int *) ((const char *) p + param->aux_offset);

			for (int k = 0; k < count; k++)
				size += put_item(dest ? &dest : NULL, list[k]);
		}
	}
	return size;
}

/* Points p's string parameters into the segment; false when malformed. */
static bool
get_strings(gptoss_gen_params *p, const char *cursor, const char *end)
{
	for (int i = 0; i < GPTOSS_N_PARAMS; i++)
	{
		const gptoss_param *param = &GPTOSS_PARAMS[i];
		char	   *field = (char *) p + param->offset;

		if (param->type == GPTOSS_PARAM_STRING || param->type == GPTOSS_PARAM_JSON)
		{
			bool		present;

			if (cursor >= end)
				return false;
			present = *cursor++ != 0;
			*(const char **) field = NULL;
			if (present && !get_item(&cursor, end, (const char **) field))
				return false;
		}
		else if (param->type == GPTOSS_PARAM_STRINGS)
		{
			const char **list = (const char **) field;
			int			count = *(int *) ((char *) p + param->aux_offset);

			if (count < 0 || count > param->max_count)
				return false;
			for (int k = 0; k < count; k++)
				if (!get_item(&cursor, end, &list[k]))
					return false;
		}
	}
	return cursor == end;
}

/* ---------------------------------------------------------------------------
 * The request segment
 */

/*
 * Creates and fills the segment of job; NULL when the server has no dynamic
 * shared memory segment left (64 + 5 * MaxBackends in PostgreSQL 15), so that
 * the caller can wait for one instead of failing its statement.
 */
dsm_segment *
gptoss_job_write(const GptossJob *job, uint64 request_id, shm_mq **queue)
{
	shm_toc_estimator e;
	Size		prompt_size = mul_size(sizeof(int32), job->n_prompt);
	Size		strings_size = put_strings(&job->params, NULL);
	int			n_label_ids = 0;
	Size		labels_size;
	dsm_segment *seg;
	shm_toc    *toc;
	GptossJobHeader *hdr;
	char	   *prompt;
	char	   *strings;
	shm_mq	   *mq;

	for (int i = 0; i < job->n_labels; i++)
		n_label_ids += job->label_lens[i];
	labels_size = mul_size(sizeof(int32), (Size) job->n_labels + n_label_ids);
	shm_toc_initialize_estimator(&e);
	shm_toc_estimate_chunk(&e, sizeof(GptossJobHeader));
	shm_toc_estimate_chunk(&e, prompt_size);
	shm_toc_estimate_chunk(&e, strings_size);
	shm_toc_estimate_chunk(&e, GPTOSS_QUEUE_SIZE);
	shm_toc_estimate_keys(&e, 4);
	if (job->n_labels > 0)
	{
		shm_toc_estimate_chunk(&e, labels_size);
		shm_toc_estimate_keys(&e, 1);
	}

	seg = dsm_create(shm_toc_estimate(&e), DSM_CREATE_NULL_IF_MAXSEGMENTS);
	if (seg == NULL)
		return NULL;
	toc = shm_toc_create(GPTOSS_TOC_MAGIC, dsm_segment_address(seg), dsm_segment_map_length(seg));

	hdr = shm_toc_allocate(toc, sizeof(GptossJobHeader));
	memset(hdr, 0, sizeof(*hdr));
	hdr->request_id = request_id;
	hdr->stream = job->stream;
	hdr->n_prompt = job->n_prompt;
	hdr->strings_size = strings_size;
	hdr->n_labels = job->n_labels;
	hdr->n_label_ids = n_label_ids;
	hdr->params = job->params;
	shm_toc_insert(toc, GPTOSS_KEY_JOB, hdr);

	if (job->n_labels > 0)
	{
		int32	   *labels = shm_toc_allocate(toc, labels_size);

		memcpy(labels, job->label_lens, sizeof(int32) * job->n_labels);
		memcpy(labels + job->n_labels, job->label_ids, sizeof(int32) * n_label_ids);
		shm_toc_insert(toc, GPTOSS_KEY_LABELS, labels);
	}

	prompt = shm_toc_allocate(toc, prompt_size);
	memcpy(prompt, job->prompt, prompt_size);
	shm_toc_insert(toc, GPTOSS_KEY_PROMPT, prompt);

	strings = shm_toc_allocate(toc, strings_size);
	(void) put_strings(&job->params, strings);
	shm_toc_insert(toc, GPTOSS_KEY_STRINGS, strings);

	mq = shm_mq_create(shm_toc_allocate(toc, GPTOSS_QUEUE_SIZE), GPTOSS_QUEUE_SIZE);
	shm_toc_insert(toc, GPTOSS_KEY_QUEUE, mq);
	*queue = mq;
	return seg;
}

/* The segment's table of contents, or NULL when it is not a request segment. */
static shm_toc *
job_toc(dsm_segment *seg)
{
	if (dsm_segment_map_length(seg) < sizeof(uint64))
		return NULL;
	return shm_toc_attach(GPTOSS_TOC_MAGIC, dsm_segment_address(seg));
}

/* Request id of a request segment, or 0. */
uint64
gptoss_job_request_id(dsm_segment *seg)
{
	shm_toc    *toc = job_toc(seg);
	GptossJobHeader *hdr = toc ? shm_toc_lookup(toc, GPTOSS_KEY_JOB, true) : NULL;

	return hdr ? hdr->request_id : 0;
}

/* Reads a job back; strings and prompt stay in the segment. */
bool
gptoss_job_read(dsm_segment *seg, GptossJobView *view, const char **why)
{
	shm_toc    *toc = job_toc(seg);
	GptossJobHeader *hdr;
	const char *strings;

	memset(view, 0, sizeof(*view));
	*why = "not a gptoss request segment";
	if (toc == NULL)
		return false;
	hdr = shm_toc_lookup(toc, GPTOSS_KEY_JOB, true);
	view->prompt = shm_toc_lookup(toc, GPTOSS_KEY_PROMPT, true);
	strings = shm_toc_lookup(toc, GPTOSS_KEY_STRINGS, true);
	view->queue = shm_toc_lookup(toc, GPTOSS_KEY_QUEUE, true);
	*why = "malformed gptoss request segment";
	if (hdr == NULL || view->prompt == NULL || strings == NULL || view->queue == NULL ||
		hdr->n_prompt < 0 ||
		(Size) hdr->n_prompt * sizeof(int32) > dsm_segment_map_length(seg) ||
		hdr->strings_size > dsm_segment_map_length(seg))
		return false;
	view->request_id = hdr->request_id;
	view->stream = hdr->stream;
	view->n_prompt = hdr->n_prompt;
	view->params = hdr->params;
	/* current_date only shapes the rendering, which the session did */
	view->params.current_date = NULL;
	if (!get_strings(&view->params, strings, strings + hdr->strings_size))
		return false;
	if (hdr->n_labels > 0)
	{
		const int32 *labels = shm_toc_lookup(toc, GPTOSS_KEY_LABELS, true);
		int64		total = 0;

		if (labels == NULL || hdr->n_labels < 0 || hdr->n_label_ids < 0 ||
			((Size) hdr->n_labels + hdr->n_label_ids) * sizeof(int32) > dsm_segment_map_length(seg))
			return false;
		for (int i = 0; i < hdr->n_labels; i++)
		{
			if (labels[i] < 1)
				return false;
			total += labels[i];
		}
		if (total != hdr->n_label_ids)
			return false;
		view->n_labels = hdr->n_labels;
		view->label_lens = labels;
		view->label_ids = labels + hdr->n_labels;
	}
	return true;
}

/* ---------------------------------------------------------------------------
 * Result frames
 */

/* Empty response. */
void
gptoss_response_init(GptossResponse *resp)
{
	memset(resp, 0, sizeof(*resp));
	initStringInfo(&resp->text);
	initStringInfo(&resp->reasoning);
	initStringInfo(&resp->logprobs);
}

/* Queues one frame (type byte + body) as a (uint32 length, frame) record. */
void
gptoss_frame_put(StringInfo outbox, char type, const void *body, Size len)
{
	uint32		n = (uint32) (len + 1);

	appendBinaryStringInfo(outbox, (const char *) &n, sizeof(n));
	appendStringInfoChar(outbox, type);
	if (len > 0)
		appendBinaryStringInfo(outbox, body, len);
}

/* Queues the finish frame. */
void
gptoss_frame_put_finish(StringInfo outbox, int finish_reason, int prompt_tokens,
						int completion_tokens, int queue_steps)
{
	GptossFinishFrame f;

	f.finish_reason = finish_reason;
	f.prompt_tokens = prompt_tokens;
	f.completion_tokens = completion_tokens;
	f.queue_steps = queue_steps;
	gptoss_frame_put(outbox, GPTOSS_FRAME_FINISH, &f, sizeof(f));
}

/* Queues an error frame. */
void
gptoss_frame_put_error(StringInfo outbox, int sqlerrcode, const char *msg)
{
	GptossErrorFrame f;
	StringInfoData buf;

	f.sqlerrcode = sqlerrcode;
	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, (const char *) &f, sizeof(f));
	appendStringInfoString(&buf, msg);
	gptoss_frame_put(outbox, GPTOSS_FRAME_ERROR, buf.data, buf.len);
	pfree(buf.data);
}

/* Folds one frame into resp; raises the worker's error frames. */
void
gptoss_frame_apply(GptossResponse *resp, const char *data, Size nbytes, int worker)
{
	if (nbytes < 1)
		elog(ERROR, "gptoss: empty frame from worker %d", worker);
	switch (data[0])
	{
		case GPTOSS_FRAME_TEXT:
			appendBinaryStringInfo(&resp->text, data + 1, nbytes - 1);
			break;
		case GPTOSS_FRAME_REASONING:
			appendBinaryStringInfo(&resp->reasoning, data + 1, nbytes - 1);
			break;
		case GPTOSS_FRAME_RESTART:
			resetStringInfo(&resp->text);
			resp->text_taken = 0;
			break;
		case GPTOSS_FRAME_FINISH:
			{
				GptossFinishFrame f;

				if (nbytes != 1 + sizeof(f))
					elog(ERROR, "gptoss: malformed finish frame from worker %d", worker);
				memcpy(&f, data + 1, sizeof(f));
				resp->finish_reason = f.finish_reason;
				resp->prompt_tokens = f.prompt_tokens;
				resp->completion_tokens = f.completion_tokens;
				resp->queue_steps = f.queue_steps;
				resp->finished = true;
				break;
			}
		case GPTOSS_FRAME_SCORES:
			if ((nbytes - 1) % sizeof(double) != 0)
				elog(ERROR, "gptoss: malformed scores frame from worker %d", worker);
			resp->n_scores = (int) ((nbytes - 1) / sizeof(double));
			resp->scores = palloc(Max(nbytes - 1, sizeof(double)));
			memcpy(resp->scores, data + 1, nbytes - 1);
			break;
		case GPTOSS_FRAME_LOGPROB:
			if (nbytes != 1 + sizeof(GptossLogprobFrame))
				elog(ERROR, "gptoss: malformed logprob frame from worker %d", worker);
			appendBinaryStringInfo(&resp->logprobs, data + 1, nbytes - 1);
			resp->n_logprobs++;
			break;
		case GPTOSS_FRAME_ERROR:
			{
				GptossErrorFrame f;

				if (nbytes < 1 + sizeof(f))
					elog(ERROR, "gptoss: malformed error frame from worker %d", worker);
				memcpy(&f, data + 1, sizeof(f));
				if (resp->keep_row_error && gptoss_row_error_nullable(f.sqlerrcode))
				{
					resp->row_error_code = f.sqlerrcode;
					resp->row_error_message = psprintf("%.*s", (int) (nbytes - 1 - sizeof(f)),
													   data + 1 + sizeof(f));
					resp->finished = true;
					break;
				}
				ereport(ERROR,
						(errcode(f.sqlerrcode),
						 errmsg("%.*s", (int) (nbytes - 1 - sizeof(f)), data + 1 + sizeof(f)),
						 errcontext("gptoss worker %d", worker)));
				break;
			}
		default:
			elog(ERROR, "gptoss: unknown frame type %d from worker %d", data[0], worker);
	}
}
