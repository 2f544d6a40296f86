/*
 * chat.h: the conversation types shared by the harmony renderer and the
 * engine's request API (a chat message, the reasoning effort), kept apart
 * so that harmony.h does not depend on the whole engine.
 */
#ifndef GPTOSS_CHAT_H
#define GPTOSS_CHAT_H

typedef enum gptoss_reasoning
{
	GPTOSS_REASONING_LOW,
	GPTOSS_REASONING_MEDIUM,
	GPTOSS_REASONING_HIGH
} gptoss_reasoning;

/* "low", "medium", "high", NULL: names of the gptoss_reasoning values (harmony.c). */
extern const char *const gptoss_reasoning_names[];

typedef struct gptoss_chat_message
{
	const char *role;			/* system, developer, user, assistant */
	const char *content;
} gptoss_chat_message;

#endif							/* GPTOSS_CHAT_H */
