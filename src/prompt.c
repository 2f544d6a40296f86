/*
 * prompt.c: tokenizing and rendering prompts in the calling session.
 *
 * Sessions turn prompts into token ids themselves, so the worker's step loop
 * never does per-request CPU work (a huge prompt or gptoss_tokenize of a
 * huge text costs only its own session; docs/architecture.md).  The
 * tokenizer (o200k_harmony, a 27 MB vocabulary and the PCRE2 split pattern)
 * is loaded once, in the postmaster, by _PG_init: every session inherits it
 * copy-on-write, with no load time and no memory of its own.  A session
 * without it (the postmaster could not load it, or EXEC_BACKEND) loads it on
 * first use.
 *
 * Tokenizing a long text stays cancellable without unwinding through engine
 * code: the engine polls should_stop, which looks at InterruptPending, frees
 * what it built and returns; CHECK_FOR_INTERRUPTS then raises here.
 *
 * A prompt that cannot fit the context is refused with 54000: from its byte
 * length alone when more bytes than the context times the longest token
 * could ever be (before tokenizing it), else from its token count.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/memutils.h"

#include "gptoss.h"

/* The tokenizer inherited from the postmaster or loaded by this session. */
static gptoss_tokenizer *session_tokenizer = NULL;

/* Loads model_path/tokenizer.json; NULL with err set. */
static gptoss_tokenizer *
load_tokenizer(gptoss_error *err)
{
	char		path[MAXPGPATH];

	if (gptoss_model_path == NULL || gptoss_model_path[0] == '\0')
	{
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "gptoss.model_path is not set");
		return NULL;
	}
	if (gptoss_model_dir_check(gptoss_model_path, err) < 0)
		return NULL;
	snprintf(path, sizeof(path), "%s/tokenizer.json", gptoss_model_path);
	return gptoss_tokenizer_load(path, err);
}

/* Resident set size of this process in bytes (0 when unknown). */
static int64
resident_bytes(void)
{
	FILE	   *f = fopen("/proc/self/statm", "r");
	long		pages = 0;
	long		rss = 0;

	if (f == NULL)
		return 0;
	if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
		rss = 0;
	fclose(f);
	return (int64) rss * sysconf(_SC_PAGESIZE);
}

/* Loads the tokenizer in the postmaster and logs what it cost. */
void
gptoss_preload_tokenizer(void)
{
	gptoss_error err;
	double		t0 = gptoss_now();
	int64		rss0 = resident_bytes();

	memset(&err, 0, sizeof(err));
	session_tokenizer = load_tokenizer(&err);
	if (session_tokenizer == NULL)
	{
		ereport(LOG,
				(errmsg("gptoss: could not load the tokenizer in the postmaster: %s", err.msg),
				 errdetail("Sessions load it on first use, or report why they cannot.")));
		return;
	}
	ereport(LOG,
			(errmsg("gptoss: tokenizer loaded in the postmaster in %.0f ms (%.1f MB resident)",
					(gptoss_now() - t0) * 1000.0,
					(double) (resident_bytes() - rss0) / (1024.0 * 1024.0))));
}

/* The tokenizer the postmaster loaded, or NULL (the worker's engine borrows it). */
const gptoss_tokenizer *
gptoss_inherited_tokenizer(void)
{
	return session_tokenizer;
}

/* Raises 55000: the workers' reason when they all failed, else the tokenizer's (to pg_monitor members). */
static void
raise_no_tokenizer(const gptoss_error *err)
{
	for (int w = 0; w < gptoss_shared->nworkers; w++)
	{
		GptossWorkerShared snap;

		gptoss_worker_snapshot(w, &snap);
		if (snap.state == GPTOSS_WORKER_FAILED)
			continue;
		if (!gptoss_may_see_load_errors())
		{
			/* the reason names the model directory: the log has it, the client not */
			ereport(LOG_SERVER_ONLY,
					(errmsg("gptoss tokenizer is not available: %s", err->msg)));
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("gptoss tokenizer is not available"),
					 errdetail("The tokenizer failed to load; the reason is in the server log, and shown to members of pg_monitor.")));
		}
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("gptoss tokenizer is not available: %s", err->msg),
				 errhint("Check gptoss.model_path and its tokenizer.json.")));
	}
	gptoss_raise_worker_failed(0);
}

/* The session's tokenizer; loads it when it was not inherited. */
const gptoss_tokenizer *
gptoss_session_tokenizer(void)
{
	gptoss_check_preloaded();
	if (session_tokenizer == NULL)
	{
		gptoss_error err;

		memset(&err, 0, sizeof(err));
		session_tokenizer = load_tokenizer(&err);
		if (session_tokenizer == NULL)
			raise_no_tokenizer(&err);
	}
	return session_tokenizer;
}

/* gptoss_interrupt callback: stop when an interrupt waits and may be served. */
static int
interrupt_pending(void *arg)
{
	return InterruptPending && INTERRUPTS_CAN_BE_PROCESSED();
}

static const gptoss_interrupt session_interrupt = {interrupt_pending, NULL};

/*
 * Serves the interrupt that stopped the engine; returns when it did not end
 * the statement (a benign interrupt), so the caller starts over.
 */
static void
serve_interrupt(void)
{
	CHECK_FOR_INTERRUPTS();
}

/* Encodes text into malloc'ed ids, interruptibly. */
int
gptoss_encode_text(const char *text, size_t len, int32 **ids)
{
	const gptoss_tokenizer *tok = gptoss_session_tokenizer();

	for (;;)
	{
		gptoss_error err;
		int			n;

		memset(&err, 0, sizeof(err));
		n = gptoss_tokenizer_encode_interruptible(tok, text, len, &session_interrupt, ids, &err);
		if (n >= 0)
			return n;
		if (err.code != GPTOSS_ERR_INTERRUPTED)
			ereport(ERROR,
					(errcode(err.code == GPTOSS_ERR_INVALID ? ERRCODE_INVALID_PARAMETER_VALUE
							 : ERRCODE_INTERNAL_ERROR),
					 errmsg("%s", err.msg)));
		serve_interrupt();
	}
}

/*
 * Tokens the context holds: the smallest over the ready workers of their
 * context and KV cache, else gptoss.max_context (no worker ready yet).
 */
static int
context_tokens(void)
{
	int			best = 0;

	for (int w = 0; w < gptoss_shared->nworkers; w++)
	{
		GptossWorkerShared snap;
		int64		room;

		gptoss_worker_snapshot(w, &snap);
		if (snap.state != GPTOSS_WORKER_READY)
			continue;
		room = snap.info.max_context;
		if (snap.info.kv_cache_tokens > 0 && snap.info.kv_cache_tokens < room)
			room = snap.info.kv_cache_tokens;
		if (best == 0 || room < best)
			best = (int) room;
	}
	return best > 0 ? best : gptoss_max_context;
}

/*
 * A prompt that cannot be rendered for this row (54000 too long, XX000 the
 * engine failed): raises, or with fail_code set fills it and *fail_message
 * and returns NULL.
 */
static int32 *
render_failed(int sqlerrcode, char *message, const char *detail, int *fail_code, char **fail_message)
{
	if (fail_code == NULL)
		ereport(ERROR,
				(errcode(sqlerrcode),
				 errmsg("%s", message),
				 detail ? errdetail("%s", detail) : 0));
	*fail_code = sqlerrcode;
	*fail_message = message;
	return NULL;
}

/* gptoss_render and gptoss_render_or_fail (fail_code NULL: raise). */
static int32 *
render(const char *prompt, const gptoss_chat_message *messages, int n_messages,
	   const gptoss_gen_params *params, int *n_ids, int *fail_code, char **fail_message)
{
	const gptoss_tokenizer *tok = gptoss_session_tokenizer();
	int			room = context_tokens();
	size_t		bytes = 0;
	double		most_bytes = (double) room * (double) gptoss_tokenizer_max_token_bytes(tok);
	int32	   *ids;
	int32	   *result;
	int			n;

	/* Every ordinary token covers at most max_token_bytes of text. */
	if (prompt != NULL)
		bytes = strlen(prompt);
	for (int i = 0; i < n_messages; i++)
		bytes += strlen(messages[i].content);
	if ((double) bytes > most_bytes)
		return render_failed(ERRCODE_PROGRAM_LIMIT_EXCEEDED,
							 psprintf("prompt of %zu bytes cannot fit the context of %d tokens", bytes, room),
							 psprintf("No token is longer than %zu bytes.",
									  gptoss_tokenizer_max_token_bytes(tok)),
							 fail_code, fail_message);

	for (;;)
	{
		gptoss_error err;

		memset(&err, 0, sizeof(err));
		if (gptoss_render_prompt(tok, prompt, messages, n_messages, params, &session_interrupt,
								 &ids, &n, &err) == 0)
			break;
		if (err.code == GPTOSS_ERR_INTERRUPTED)
		{
			serve_interrupt();
			continue;
		}
		if (err.code == GPTOSS_ERR_INVALID)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s", err.msg)));
		return render_failed(err.code == GPTOSS_ERR_TOO_LONG ? ERRCODE_PROGRAM_LIMIT_EXCEEDED :
							 ERRCODE_INTERNAL_ERROR,
							 pstrdup(err.msg), NULL, fail_code, fail_message);
	}
	if (n >= room)
	{
		free(ids);
		return render_failed(ERRCODE_PROGRAM_LIMIT_EXCEEDED,
							 psprintf("prompt is %d tokens but the context holds %d tokens: no room to generate",
									  n, room),
							 NULL, fail_code, fail_message);
	}
	PG_TRY();
	{
		result = palloc(sizeof(int32) * Max(n, 1));
		memcpy(result, ids, sizeof(int32) * n);
	}
	PG_FINALLY();
	{
		free(ids);
	}
	PG_END_TRY();
	*n_ids = n;
	return result;
}

/* Renders a prompt into palloc'ed ids (see gptoss.h). */
int32 *
gptoss_render(const char *prompt, const gptoss_chat_message *messages, int n_messages,
			  const gptoss_gen_params *params, int *n_ids)
{
	return render(prompt, messages, n_messages, params, n_ids, NULL, NULL);
}

/* As gptoss_render; a row-level failure returns NULL (see gptoss.h). */
int32 *
gptoss_render_or_fail(const char *prompt, const gptoss_chat_message *messages, int n_messages,
					  const gptoss_gen_params *params, int *n_ids, int *sqlerrcode, char **message)
{
	return render(prompt, messages, n_messages, params, n_ids, sqlerrcode, message);
}
