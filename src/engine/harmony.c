/*
 * harmony.c: rendering harmony prompts and parsing generated harmony tokens.
 *
 * Rendering appends to a growing id buffer: special tokens by id, text pieces
 * (role names, message contents, the system message) through
 * gptoss_tokenizer_encode, which never produces special tokens.  The layout
 * follows openai/harmony's renderer for a conversation without tools:
 *
 *   <|start|>system<|message|>{system content}<|end|>
 *   <|start|>developer<|message|># Instructions\n\n{instructions}<|end|>     (optional)
 *   <|start|>user<|message|>{text}<|end|>
 *   <|start|>assistant<|channel|>final<|message|>{text}<|end|>               (history)
 *   <|start|>assistant
 *
 * Parsing is a three-state machine over generated ids (header, content,
 * between messages).  The header is kept as text, special markers included,
 * and split into role/channel/recipient/content type when <|message|> opens
 * the content.  Content bytes of `final` and `analysis` messages go into
 * gptoss_utf8_text buffers, which only ever hold valid UTF-8 so that callers
 * (PostgreSQL text in particular) can use them as they grow.
 */
#include "harmony.h"
#include "utf8.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const SYSTEM_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI.";
static const char *const KNOWLEDGE_CUTOFF = "Knowledge cutoff: 2024-06";
static const char *const CHANNELS_LINE =
	"# Valid channels: analysis, commentary, final. Channel must be included for every message.";

const char *const gptoss_reasoning_names[] = {"low", "medium", "high", NULL};

/* "low", "medium", "high" */
const char *
gptoss_reasoning_name(gptoss_reasoning r)
{
	if (r < GPTOSS_REASONING_LOW || r > GPTOSS_REASONING_HIGH)
		return gptoss_reasoning_names[GPTOSS_REASONING_MEDIUM];
	return gptoss_reasoning_names[r];
}

/* <|return|> ends the answer, <|call|> a tool call; <|end|> only closes a message. */
bool
gptoss_harmony_is_stop_token(int32_t id)
{
	return id == GPTOSS_TOK_RETURN || id == GPTOSS_TOK_CALL;
}

/* ---------------------------------------------------------------------------
 * Rendering
 */

/*
 * Prompt ids accumulate in a gptoss_buffer of int32_t; a prompt is capped
 * at PROMPT_MAX_IDS ids so that its length fits an int.
 */
#define PROMPT_MAX_IDS 0x3fffffff

/* The ordinary encoder of a rendering, and what it polls while encoding. */
typedef struct text_encoder
{
	const gptoss_tokenizer *tok;
	const gptoss_interrupt *intr;	/* or NULL */
} text_encoder;

/* Number of ids in an id buffer. */
static inline int
n_ids_of(const gptoss_buffer *b)
{
	return (int) (b->len / sizeof(int32_t));
}

/* Appends n ids, failing with TOO_LONG past PROMPT_MAX_IDS. */
static int
push_ids(gptoss_buffer *b, const int32_t *ids, int n, gptoss_error *err)
{
	if (n > PROMPT_MAX_IDS - n_ids_of(b))
		return gptoss_errorf_code(err, GPTOSS_ERR_TOO_LONG, "prompt has too many tokens");
	return gptoss_buffer_append(b, ids, (size_t) n * sizeof(int32_t), err);
}

/* Appends one special token id. */
static int
push_special(gptoss_buffer *b, int32_t id, gptoss_error *err)
{
	return push_ids(b, &id, 1, err);
}

/* Encodes len bytes of text with the ordinary encoder and appends the ids. */
static int
push_text(gptoss_buffer *b, const text_encoder *enc, const char *text, size_t len,
		  gptoss_error *err)
{
	int32_t    *ids = NULL;
	int			n,
				rc;

	if (len == 0)
		return 0;
	n = gptoss_tokenizer_encode_interruptible(enc->tok, text, len, enc->intr, &ids, err);
	if (n < 0)
		return -1;
	rc = push_ids(b, ids, n, err);
	free(ids);
	return rc;
}

/* Appends <|start|>{role}[<|channel|>{channel}]<|message|>{content}<|end|>. */
static int
push_message(gptoss_buffer *b, const text_encoder *enc, const char *role,
			 const char *channel, const char *content, size_t content_len,
			 gptoss_error *err)
{
	if (push_special(b, GPTOSS_TOK_START, err) < 0 ||
		push_text(b, enc, role, strlen(role), err) < 0)
		return -1;
	if (channel != NULL &&
		(push_special(b, GPTOSS_TOK_CHANNEL, err) < 0 ||
		 push_text(b, enc, channel, strlen(channel), err) < 0))
		return -1;
	if (push_special(b, GPTOSS_TOK_MESSAGE, err) < 0 ||
		push_text(b, enc, content, content_len, err) < 0 ||
		push_special(b, GPTOSS_TOK_END, err) < 0)
		return -1;
	return 0;
}

/* Appends a NUL-terminated string to a message content being composed. */
static int
str_append_cstr(gptoss_buffer *s, const char *text, gptoss_error *err)
{
	return gptoss_buffer_append(s, text, strlen(text), err);
}

/*
 * Appends <|start|>developer<|message|># Instructions\n\n{instructions}<|end|>,
 * with a "# Response Formats" section after them (or alone) when
 * response_format is not NULL.
 */
static int
push_developer(gptoss_buffer *b, const text_encoder *enc, const char *instructions,
			   size_t len, const char *response_format, gptoss_error *err)
{
	gptoss_buffer s = {0};
	int			rc = 0;

	if (len > 0 || response_format == NULL)
	{
		rc = str_append_cstr(&s, "# Instructions\n\n", err);
		if (rc == 0 && len > 0)
			rc = gptoss_buffer_append(&s, instructions, len, err);
	}
	if (rc == 0 && response_format != NULL)
	{
		rc = str_append_cstr(&s, len > 0 ? "\n\n# Response Formats\n\n" : "# Response Formats\n\n", err);
		if (rc == 0)
			rc = str_append_cstr(&s, response_format, err);
	}
	if (rc == 0)
		rc = push_message(b, enc, "developer", NULL, s.data, s.len, err);
	free(s.data);
	return rc;
}

/* Appends the system message with the model identity, dates, effort and channels. */
static int
push_system(gptoss_buffer *b, const text_encoder *enc, gptoss_reasoning effort,
			const char *current_date, gptoss_error *err)
{
	gptoss_buffer s = {0};
	int			rc;

	rc = str_append_cstr(&s, SYSTEM_IDENTITY, err);
	if (rc == 0)
		rc = str_append_cstr(&s, "\n", err);
	if (rc == 0)
		rc = str_append_cstr(&s, KNOWLEDGE_CUTOFF, err);
	if (rc == 0 && current_date != NULL)
	{
		rc = str_append_cstr(&s, "\nCurrent date: ", err);
		if (rc == 0)
			rc = str_append_cstr(&s, current_date, err);
	}
	if (rc == 0)
		rc = str_append_cstr(&s, "\n\nReasoning: ", err);
	if (rc == 0)
		rc = str_append_cstr(&s, gptoss_reasoning_name(effort), err);
	if (rc == 0)
		rc = str_append_cstr(&s, "\n\n", err);
	if (rc == 0)
		rc = str_append_cstr(&s, CHANNELS_LINE, err);
	if (rc == 0)
		rc = push_message(b, enc, "system", NULL, s.data, s.len, err);
	free(s.data);
	return rc;
}

/* True for the chat roles whose content becomes developer instructions. */
static bool
is_instruction_role(const char *role)
{
	return strcmp(role, "system") == 0 || strcmp(role, "developer") == 0;
}

/* Checks roles and contents before anything is rendered. */
static int
check_messages(const gptoss_chat_message *messages, int n_messages, gptoss_error *err)
{
	if (n_messages < 0 || (n_messages > 0 && messages == NULL))
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "messages: invalid message array");
	for (int i = 0; i < n_messages; i++)
	{
		const char *role = messages[i].role;

		if (role == NULL)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
									  "messages[%d]: missing \"role\"", i);
		if (!is_instruction_role(role) && strcmp(role, "user") != 0 &&
			strcmp(role, "assistant") != 0)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
									  "messages[%d]: unsupported role \"%.64s\" (expected system, developer, user or assistant)",
									  i, role);
		if (messages[i].content == NULL)
			return gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
									  "messages[%d]: missing \"content\"", i);
	}
	return 0;
}

/* Renders a whole conversation into prompt ids (see harmony.h). */
int
gptoss_harmony_render(const gptoss_tokenizer *tok,
					  const gptoss_chat_message *messages, int n_messages,
					  gptoss_reasoning effort, const char *instructions,
					  const char *current_date, const gptoss_interrupt *intr,
					  int32_t **ids, int *n_ids, gptoss_error *err)
{
	return gptoss_harmony_render_with_format(tok, messages, n_messages, effort, instructions,
											 current_date, NULL, intr, ids, n_ids, err);
}

/* Renders a conversation with an optional response format section (see harmony.h). */
int
gptoss_harmony_render_with_format(const gptoss_tokenizer *tok,
								  const gptoss_chat_message *messages, int n_messages,
								  gptoss_reasoning effort, const char *instructions,
								  const char *current_date, const char *response_format,
								  const gptoss_interrupt *intr,
								  int32_t **ids, int *n_ids, gptoss_error *err)
{
	gptoss_buffer b = {0};
	gptoss_buffer dev = {0};
	text_encoder enc = {tok, intr};
	int			first_turn = 0;

	*ids = NULL;
	*n_ids = 0;
	if (check_messages(messages, n_messages, err) < 0)
		return -1;
	if (effort != GPTOSS_REASONING_LOW && effort != GPTOSS_REASONING_MEDIUM &&
		effort != GPTOSS_REASONING_HIGH)
		return gptoss_errorf_code(err, GPTOSS_ERR_INVALID, "reasoning_effort: invalid value");

	/* Leading system/developer chat messages join the instructions (as HF's template does). */
	if (instructions != NULL && instructions[0] != '\0' &&
		str_append_cstr(&dev, instructions, err) < 0)
		goto fail;
	for (; first_turn < n_messages && is_instruction_role(messages[first_turn].role); first_turn++)
	{
		const char *content = messages[first_turn].content;

		if (content[0] == '\0')
			continue;
		if ((dev.len > 0 && str_append_cstr(&dev, "\n\n", err) < 0) ||
			str_append_cstr(&dev, content, err) < 0)
			goto fail;
	}

	if (push_system(&b, &enc, effort, current_date, err) < 0)
		goto fail;
	if ((dev.len > 0 || response_format != NULL) &&
		push_developer(&b, &enc, dev.data, dev.len, response_format, err) < 0)
		goto fail;
	for (int i = first_turn; i < n_messages; i++)
	{
		const char *role = messages[i].role;
		const char *content = messages[i].content;
		int			rc;

		if (is_instruction_role(role))
			rc = push_developer(&b, &enc, content, strlen(content), NULL, err);
		else if (strcmp(role, "assistant") == 0)
			rc = push_message(&b, &enc, "assistant", "final", content, strlen(content), err);
		else
			rc = push_message(&b, &enc, "user", NULL, content, strlen(content), err);
		if (rc < 0)
			goto fail;
	}
	if (push_special(&b, GPTOSS_TOK_START, err) < 0 ||
		push_text(&b, &enc, "assistant", strlen("assistant"), err) < 0)
		goto fail;

	free(dev.data);
	*ids = (int32_t *) b.data;
	*n_ids = n_ids_of(&b);
	return 0;

fail:
	free(dev.data);
	free(b.data);
	return -1;
}

/* ---------------------------------------------------------------------------
 * Valid UTF-8 text from arbitrary bytes
 */

/* Appends bytes known to be valid UTF-8. */
static int
utf8_append_valid(gptoss_utf8_text *t, const unsigned char *bytes, size_t n, gptoss_error *err)
{
	return gptoss_buffer_append(&t->text, bytes, n, err);
}

/* Appends U+FFFD REPLACEMENT CHARACTER. */
static int
utf8_append_replacement(gptoss_utf8_text *t, gptoss_error *err)
{
	static const unsigned char fffd[3] = {0xef, 0xbf, 0xbd};

	return utf8_append_valid(t, fffd, 3, err);
}

/* Whether b may follow the pending bytes of an unfinished character. */
static bool
utf8_continues(const gptoss_utf8_text *t, unsigned char b)
{
	if (t->n_pending == 1)
		return gptoss_utf8_second_byte_ok(t->pending[0], b);
	return gptoss_utf8_is_continuation(b);
}

/* Appends arbitrary bytes, keeping the text valid UTF-8. */
int
gptoss_utf8_text_push(gptoss_utf8_text *t, const char *bytes, size_t n, gptoss_error *err)
{
	const unsigned char *in = (const unsigned char *) bytes;

	/* Reserving up front also gives an empty text its NUL-terminated buffer. */
	if (gptoss_buffer_reserve(&t->text, n, err) < 0)
		return -1;
	for (size_t i = 0; i < n; i++)
	{
		unsigned char b = in[i];

		if (t->n_pending > 0)
		{
			if (utf8_continues(t, b))
			{
				t->pending[t->n_pending++] = b;
				if (t->n_pending == t->need)
				{
					t->n_pending = 0;
					if (utf8_append_valid(t, t->pending, (size_t) t->need, err) < 0)
						return -1;
				}
				continue;
			}
			/* The unfinished character is ill-formed; b starts afresh. */
			t->n_pending = 0;
			if (utf8_append_replacement(t, err) < 0)
				return -1;
		}
		t->need = gptoss_utf8_lead_length(b);
		if (t->need == 1)
		{
			if (utf8_append_valid(t, &b, 1, err) < 0)
				return -1;
		}
		else if (t->need == 0)
		{
			if (utf8_append_replacement(t, err) < 0)
				return -1;
		}
		else
		{
			t->pending[0] = b;
			t->n_pending = 1;
		}
	}
	return 0;
}

/* Ends the text: an unfinished character becomes U+FFFD. */
int
gptoss_utf8_text_flush(gptoss_utf8_text *t, gptoss_error *err)
{
	if (t->n_pending == 0)
		return gptoss_buffer_reserve(&t->text, 0, err);
	t->n_pending = 0;
	return utf8_append_replacement(t, err);
}

/* Empties the text. */
void
gptoss_utf8_text_reset(gptoss_utf8_text *t)
{
	gptoss_buffer_reset(&t->text);
	t->n_pending = 0;
}

/* Frees the text's buffer. */
void
gptoss_utf8_text_free(gptoss_utf8_text *t)
{
	gptoss_buffer_free(&t->text);
	memset(t, 0, sizeof(*t));
}

/* ---------------------------------------------------------------------------
 * Parsing generated tokens
 */

/* Starts in the header of an assistant message (the prompt ended with <|start|>assistant). */
void
gptoss_harmony_parser_init(gptoss_harmony_parser *p)
{
	memset(p, 0, sizeof(*p));
	p->state = GPTOSS_HARMONY_HEADER;
	p->header_len = snprintf(p->header, sizeof(p->header), "assistant");
	p->last_terminator = -1;
}

/* Frees the collected texts. */
void
gptoss_harmony_parser_free(gptoss_harmony_parser *p)
{
	gptoss_utf8_text_free(&p->final);
	gptoss_utf8_text_free(&p->analysis);
}

/* Appends raw bytes to the header text (a runaway header is cut at its cap). */
static void
header_append(gptoss_harmony_parser *p, const char *bytes, size_t n)
{
	size_t		room = sizeof(p->header) - 1 - (size_t) p->header_len;

	if (n > room)
		n = room;
	memcpy(p->header + p->header_len, bytes, n);
	p->header_len += (int) n;
	p->header[p->header_len] = '\0';
}

/* Copies header[start, end) into a field of size cap (cut to fit). */
static void
copy_field(char *field, size_t cap, const char *start, const char *end)
{
	size_t		n = (size_t) (end - start);

	if (n >= cap)
		n = cap - 1;
	memcpy(field, start, n);
	field[n] = '\0';
}

static const char CHANNEL_MARK[] = "<|channel|>";

/* End of the header word starting at s: a space or a <|channel|> marker ends it. */
static const char *
word_end(const char *s)
{
	while (*s && *s != ' ' && strncmp(s, CHANNEL_MARK, sizeof(CHANNEL_MARK) - 1) != 0)
		s++;
	return s;
}

/*
 * Splits the header text into role, channel, recipient and content type:
 * "assistant to=functions.f<|channel|>commentary <|constrain|>json" gives
 * role "assistant", channel "commentary", recipient "functions.f" and
 * content type "<|constrain|>json".
 */
static void
parse_header(gptoss_harmony_parser *p)
{
	const char *s = p->header;
	const char *e;

	p->role[0] = p->channel[0] = p->recipient[0] = p->content_type[0] = '\0';
	e = s;
	while (*e && *e != ' ' && strncmp(e, "<|", 2) != 0)
		e++;
	copy_field(p->role, sizeof(p->role), s, e);
	s = e;
	while (*s)
	{
		if (*s == ' ')
		{
			s++;
			continue;
		}
		if (strncmp(s, CHANNEL_MARK, sizeof(CHANNEL_MARK) - 1) == 0)
		{
			s += sizeof(CHANNEL_MARK) - 1;
			e = word_end(s);
			copy_field(p->channel, sizeof(p->channel), s, e);
		}
		else if (strncmp(s, "to=", 3) == 0)
		{
			s += 3;
			e = word_end(s);
			copy_field(p->recipient, sizeof(p->recipient), s, e);
		}
		else
		{
			e = word_end(s);
			copy_field(p->content_type, sizeof(p->content_type), s, e);
		}
		s = e;
	}
}

/* <|message|>: the header is complete and the content starts. */
static int
open_content(gptoss_harmony_parser *p, gptoss_error *err)
{
	parse_header(p);
	p->state = GPTOSS_HARMONY_CONTENT;
	p->in_final = strcmp(p->channel, "final") == 0;
	p->in_analysis = strcmp(p->channel, "analysis") == 0;
	if (p->in_final)
	{
		/* The answer is the last final message: a new one replaces the text. */
		gptoss_utf8_text_reset(&p->final);
		p->final_serial++;
	}
	if (p->in_analysis && p->analysis.text.len > 0)
	{
		if (gptoss_utf8_text_flush(&p->analysis, err) < 0 ||
			gptoss_utf8_text_push(&p->analysis, "\n", 1, err) < 0)
			return -1;
	}
	return 0;
}

/* Ends the current message's content (or header) at a terminator. */
static int
close_message(gptoss_harmony_parser *p, int32_t terminator, gptoss_error *err)
{
	if (p->state == GPTOSS_HARMONY_CONTENT)
	{
		if (p->in_final && gptoss_utf8_text_flush(&p->final, err) < 0)
			return -1;
		if (p->in_analysis && gptoss_utf8_text_flush(&p->analysis, err) < 0)
			return -1;
		p->n_messages++;
	}
	p->in_final = p->in_analysis = false;
	p->last_terminator = terminator;
	p->state = GPTOSS_HARMONY_BETWEEN;
	return 0;
}

/* Feeds one generated token through the state machine. */
int
gptoss_harmony_parser_push(gptoss_harmony_parser *p, const gptoss_tokenizer *tok,
						   int32_t id, gptoss_error *err)
{
	const char *bytes;
	size_t		n = 0;

	switch (id)
	{
		case GPTOSS_TOK_START:
			if (close_message(p, id, err) < 0)
				return -1;
			p->state = GPTOSS_HARMONY_HEADER;
			p->header_len = 0;
			p->header[0] = '\0';
			return 0;
		case GPTOSS_TOK_END:
		case GPTOSS_TOK_RETURN:
		case GPTOSS_TOK_CALL:
			return close_message(p, id, err);
		case GPTOSS_TOK_MESSAGE:
			if (p->state == GPTOSS_HARMONY_HEADER)
				return open_content(p, err);
			return 0;
	}

	bytes = gptoss_tokenizer_token_bytes(tok, id, &n);
	if (bytes == NULL)
		return 0;				/* an id the tokenizer does not know carries no text */
	switch (p->state)
	{
		case GPTOSS_HARMONY_HEADER:
			/* Markers such as <|channel|> and <|constrain|> stay in the header text. */
			header_append(p, bytes, n);
			return 0;
		case GPTOSS_HARMONY_CONTENT:
			if (gptoss_tokenizer_is_special(tok, id))
				return 0;
			if (p->in_final)
				return gptoss_utf8_text_push(&p->final, bytes, n, err);
			if (p->in_analysis)
				return gptoss_utf8_text_push(&p->analysis, bytes, n, err);
			return 0;
		case GPTOSS_HARMONY_BETWEEN:
			/* Text outside any message (a model not following the format) is dropped. */
			return 0;
	}
	return 0;
}

/* Ends the stream: unfinished characters become U+FFFD. */
int
gptoss_harmony_parser_finish(gptoss_harmony_parser *p, gptoss_error *err)
{
	if (gptoss_utf8_text_flush(&p->final, err) < 0 ||
		gptoss_utf8_text_flush(&p->analysis, err) < 0)
		return -1;
	return 0;
}
