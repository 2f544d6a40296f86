/*
 * utf8.h: the UTF-8 byte rules (RFC 3629) shared by the tokenizer's stream
 * decoder and harmony's valid-text buffers: which bytes lead a character
 * and how long it is, and which bytes may follow.
 */
#ifndef GPTOSS_UTF8_H
#define GPTOSS_UTF8_H

#include <stdbool.h>

/* Length of the character a lead byte starts: 1 to 4, or 0 when b cannot lead one. */
static inline int
gptoss_utf8_lead_length(unsigned char b)
{
	if (b < 0x80)
		return 1;
	if (b >= 0xc2 && b <= 0xdf)
		return 2;
	if (b >= 0xe0 && b <= 0xef)
		return 3;
	if (b >= 0xf0 && b <= 0xf4)
		return 4;
	return 0;
}

/* True for a continuation byte, 80..BF. */
static inline bool
gptoss_utf8_is_continuation(unsigned char b)
{
	return b >= 0x80 && b <= 0xbf;
}

/*
 * Whether b may be the second byte after lead: 80..BF, except after E0
 * (A0..BF, no overlongs), ED (80..9F, no surrogates), F0 (90..BF, no
 * overlongs) and F4 (80..8F, nothing above U+10FFFF).
 */
static inline bool
gptoss_utf8_second_byte_ok(unsigned char lead, unsigned char b)
{
	switch (lead)
	{
		case 0xe0:
			return b >= 0xa0 && b <= 0xbf;
		case 0xed:
			return b >= 0x80 && b <= 0x9f;
		case 0xf0:
			return b >= 0x90 && b <= 0xbf;
		case 0xf4:
			return b >= 0x80 && b <= 0x8f;
	}
	return gptoss_utf8_is_continuation(b);
}

#endif							/* GPTOSS_UTF8_H */
