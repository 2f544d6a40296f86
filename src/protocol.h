/*
 * protocol.h: what travels between a session and a worker, each encoder
 * beside its decoder (protocol.c).
 *
 * A call's DSM segment is laid out with shm_toc (keys below):
 *   GPTOSS_KEY_JOB      GptossJobHeader: request id, the scalar generation
 *                       parameters, sizes of the other entries
 *   GPTOSS_KEY_PROMPT   int32 prompt ids[n_prompt], rendered by the session
 *   GPTOSS_KEY_STRINGS  the string parameters (stop, ...), row by row of
 *                       GPTOSS_PARAMS, each a uint32 length, the bytes, a NUL
 *   GPTOSS_KEY_QUEUE    shm_mq of result frames, worker -> session
 *   GPTOSS_KEY_LABELS   score jobs (classification): int32 lens[n_labels],
 *                       then every label's ids, concatenated
 *
 * Result frames are one shm_mq message each; the first byte says which:
 *   'T' text bytes to append       'R' reasoning bytes to append
 *   'S' the text starts over (the model began a new final message)
 *   'F' GptossFinishFrame          'E' GptossErrorFrame followed by the message
 *   'L' double scores[n_labels] (score jobs, before 'F')
 *   'P' GptossLogprobFrame, one per token of the returned text (with
 *       logprobs, before 'F')
 * Text and reasoning arrive as the engine makes them final, so a reader
 * appends and never compares.
 */
#ifndef GPTOSS_PROTOCOL_H
#define GPTOSS_PROTOCOL_H

#include "postgres.h"

#include "lib/stringinfo.h"
#include "storage/dsm.h"
#include "storage/shm_mq.h"

#include "engine.h"

/* Identifies a gptoss request segment to shm_toc_attach. */
#define GPTOSS_TOC_MAGIC UINT64CONST(0x6770746f73730001)

#define GPTOSS_KEY_JOB		1
#define GPTOSS_KEY_PROMPT	2
#define GPTOSS_KEY_STRINGS	3
#define GPTOSS_KEY_QUEUE	4
#define GPTOSS_KEY_LABELS	5

/* Size of the worker-to-session queue in each request segment. */
#define GPTOSS_QUEUE_SIZE ((Size) 65536)

/* What a session asks a worker to run: a rendered prompt and its parameters. */
typedef struct GptossJob
{
	const int32 *prompt;		/* [n_prompt] rendered prompt ids */
	int			n_prompt;
	gptoss_gen_params params;	/* strings point into session memory */
	bool		stream;			/* send text as it becomes final, not only at the end */
	int			n_labels;		/* > 0: a score job over these continuations */
	const int32 *label_lens;	/* [n_labels] */
	const int32 *label_ids;		/* [sum of label_lens] */
} GptossJob;

/* The job's fixed part in the segment. */
typedef struct GptossJobHeader
{
	uint64		request_id;
	bool		stream;
	int32		n_prompt;
	Size		strings_size;
	int32		n_labels;
	int32		n_label_ids;
	gptoss_gen_params params;	/* pointer fields are rebuilt by the reader */
} GptossJobHeader;

/* A job as the worker reads it back; strings point into the segment. */
typedef struct GptossJobView
{
	uint64		request_id;
	bool		stream;
	const int32 *prompt;
	int			n_prompt;
	gptoss_gen_params params;
	int			n_labels;		/* score jobs */
	const int32 *label_lens;
	const int32 *label_ids;
	shm_mq	   *queue;
} GptossJobView;

/*
 * Session: creates the segment of job (id request_id), with the session as
 * the queue's receiver; *queue is the queue to attach.  NULL when every
 * dynamic shared memory segment of the server is in use.
 */
extern dsm_segment *gptoss_job_write(const GptossJob *job, uint64 request_id, shm_mq **queue);

/* Worker: reads a job back from its segment; false (why set) when malformed. */
extern bool gptoss_job_read(dsm_segment *seg, GptossJobView *view, const char **why);

/* Request id stored in a request segment (0 when it has none). */
extern uint64 gptoss_job_request_id(dsm_segment *seg);

#define GPTOSS_FRAME_TEXT		'T'
#define GPTOSS_FRAME_REASONING	'R'
#define GPTOSS_FRAME_RESTART	'S'
#define GPTOSS_FRAME_FINISH		'F'
#define GPTOSS_FRAME_ERROR		'E'
#define GPTOSS_FRAME_SCORES		'L'
#define GPTOSS_FRAME_LOGPROB	'P'

typedef struct GptossFinishFrame
{
	int32		finish_reason;	/* gptoss_finish_reason */
	int32		prompt_tokens;
	int32		completion_tokens;
	int32		queue_steps;	/* engine steps between submission and admission into the batch */
} GptossFinishFrame;

/* One token of the returned text with its log-probabilities. */
typedef struct GptossLogprobFrame
{
	int32		token;
	gptoss_token_logprobs lp;
} GptossLogprobFrame;

typedef struct GptossErrorFrame
{
	int32		sqlerrcode;		/* MAKE_SQLSTATE value */
} GptossErrorFrame;

/* What came back; text and reasoning are valid UTF-8. */
typedef struct GptossResponse
{
	StringInfoData text;
	StringInfoData reasoning;
	int			text_taken;		/* bytes of text a streaming reader took; a restart sets 0 */
	int			finish_reason;	/* gptoss_finish_reason */
	int			prompt_tokens;
	int			completion_tokens;
	int			queue_steps;	/* engine steps it waited for a place in the batch */
	bool		finished;
	double	   *scores;			/* score jobs: [n_scores] label log-probabilities */
	int			n_scores;
	StringInfoData logprobs;	/* GptossLogprobFrame records, n_logprobs of them */
	int			n_logprobs;
	/* With keep_row_error, an error frame that on_error "null" may turn into
	 * NULL (gptoss_row_error_nullable) finishes the response instead of
	 * raising; row_error_code is then its SQLSTATE (0: none). */
	bool		keep_row_error;
	int			row_error_code;
	char	   *row_error_message;
} GptossResponse;

/* True for the errors (54000, XX000) that on_error "null" turns into NULL (row_errors.c). */
extern bool gptoss_row_error_nullable(int sqlerrcode);

/* Empty response (in the current memory context). */
extern void gptoss_response_init(GptossResponse *resp);

/*
 * Worker: frames are queued in an outbox, a StringInfo of (uint32 length,
 * frame) records, and moved into the shm_mq without blocking.
 */
extern void gptoss_frame_put(StringInfo outbox, char type, const void *body, Size len);
extern void gptoss_frame_put_finish(StringInfo outbox, int finish_reason, int prompt_tokens,
									int completion_tokens, int queue_steps);
extern void gptoss_frame_put_error(StringInfo outbox, int sqlerrcode, const char *msg);

/*
 * Session: folds one frame into resp; raises the worker's error frames
 * (naming the worker), but see keep_row_error.
 */
extern void gptoss_frame_apply(GptossResponse *resp, const char *data, Size nbytes, int worker);

#endif							/* GPTOSS_PROTOCOL_H */
