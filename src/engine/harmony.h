/*
 * harmony.h: the harmony chat format of gpt-oss (as openai/harmony renders it).
 *
 * Rendering turns a conversation into prompt token ids: special tokens are
 * inserted by id and every text piece goes through the ordinary encoder, so
 * user text that looks like "<|start|>" stays text.  Parsing follows the
 * generated tokens one at a time, tracks each message's header (role,
 * channel, recipient, content type) and collects the content of the `final`
 * and `analysis` channels as valid UTF-8 text, ready to stream.
 */
#ifndef GPTOSS_HARMONY_H
#define GPTOSS_HARMONY_H

#include <stdbool.h>

#include "chat.h"
#include "tokenizer.h"

/* "low", "medium", "high" */
const char *gptoss_reasoning_name(gptoss_reasoning r);

/*
 * Renders a harmony prompt: the system message (identity, knowledge cutoff,
 * current_date when not NULL, reasoning effort, channels), a developer message
 * "# Instructions\n\n..." when instructions (or leading system/developer chat
 * messages) are given, the conversation (user as is, assistant history as a
 * `final` message), then <|start|>assistant.  Chat messages with role
 * "system" or "developer" at the start of the conversation join the
 * instructions (separated by a blank line); later ones become developer
 * messages of their own.  *ids is malloc'ed.  Returns 0, or -1 with err set
 * (GPTOSS_ERR_INVALID for an unknown role or a missing content,
 * GPTOSS_ERR_INTERRUPTED when intr, polled while encoding, asked to stop).
 */
int			gptoss_harmony_render(const gptoss_tokenizer *tok,
								  const gptoss_chat_message *messages, int n_messages,
								  gptoss_reasoning effort, const char *instructions,
								  const char *current_date, const gptoss_interrupt *intr,
								  int32_t **ids, int *n_ids, gptoss_error *err);

/*
 * The same with a response format: response_format (when not NULL) is the
 * entry of a "# Response Formats" section at the end of the developer
 * message ("## name\n\n// description\n{schema}", see json_schema.h), as
 * harmony renders structured output requests.
 */
int			gptoss_harmony_render_with_format(const gptoss_tokenizer *tok,
											  const gptoss_chat_message *messages, int n_messages,
											  gptoss_reasoning effort, const char *instructions,
											  const char *current_date, const char *response_format,
											  const gptoss_interrupt *intr,
											  int32_t **ids, int *n_ids, gptoss_error *err);

/* True for the tokens that end an assistant turn: <|return|> and <|call|>. */
bool		gptoss_harmony_is_stop_token(int32_t id);

/*
 * A growing valid-UTF-8 string fed with arbitrary bytes: complete characters
 * are appended as they arrive, an incomplete trailing sequence waits for the
 * next bytes, and every invalid byte sequence becomes U+FFFD (one per maximal
 * ill-formed subpart, as Python's errors="replace").  data is NUL-terminated.
 */
typedef struct gptoss_utf8_text
{
	gptoss_buffer text;			/* valid UTF-8, 0-terminated */
	unsigned char pending[4];	/* [n_pending] bytes of an unfinished character */
	int			n_pending;
	int			need;			/* total length of the pending character */
} gptoss_utf8_text;

/* Appends n bytes; returns 0, or -1 with err set when out of memory. */
int			gptoss_utf8_text_push(gptoss_utf8_text *t, const char *bytes, size_t n,
								  gptoss_error *err);
/* Ends the text: an unfinished character becomes U+FFFD.  Returns 0 or -1. */
int			gptoss_utf8_text_flush(gptoss_utf8_text *t, gptoss_error *err);
/* Empties the text (keeps its buffer). */
void		gptoss_utf8_text_reset(gptoss_utf8_text *t);
void		gptoss_utf8_text_free(gptoss_utf8_text *t);

/* Where the parser is within the token stream. */
typedef enum gptoss_harmony_state
{
	GPTOSS_HARMONY_HEADER,		/* after <|start|>: role, channel, recipient ... */
	GPTOSS_HARMONY_CONTENT,		/* after <|message|>: message content */
	GPTOSS_HARMONY_BETWEEN		/* after <|end|>/<|return|>/<|call|>: waiting for <|start|> */
} gptoss_harmony_state;

#define GPTOSS_HARMONY_HEADER_MAX 512

typedef struct gptoss_harmony_parser
{
	gptoss_harmony_state state;
	char		header[GPTOSS_HARMONY_HEADER_MAX];	/* raw header text of the current message */
	int			header_len;
	/* Parsed header of the current (or last) message. */
	char		role[64];
	char		channel[64];
	char		recipient[128];
	char		content_type[64];
	int			n_messages;		/* messages whose content ended */
	int			final_serial;	/* bumped whenever a new `final` message starts */
	bool		in_final;		/* current content belongs to a `final` message */
	bool		in_analysis;	/* current content belongs to an `analysis` message */
	int32_t		last_terminator;	/* token that ended the last message, or -1 */
	gptoss_utf8_text final;		/* content of the last `final` message */
	gptoss_utf8_text analysis;	/* contents of all `analysis` messages, joined by "\n" */
} gptoss_harmony_parser;

/*
 * Starts a parser for the tokens generated after a prompt that ended with
 * <|start|>assistant: the first message's header is already open with role
 * "assistant".
 */
void		gptoss_harmony_parser_init(gptoss_harmony_parser *p);
void		gptoss_harmony_parser_free(gptoss_harmony_parser *p);

/* Feeds one generated token.  Returns 0, or -1 with err set (out of memory). */
int			gptoss_harmony_parser_push(gptoss_harmony_parser *p, const gptoss_tokenizer *tok,
									   int32_t id, gptoss_error *err);

/* Ends the stream: unfinished characters of the collected texts become U+FFFD. */
int			gptoss_harmony_parser_finish(gptoss_harmony_parser *p, gptoss_error *err);

#endif							/* GPTOSS_HARMONY_H */
