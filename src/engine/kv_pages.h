/*
 * kv_pages.h: the bookkeeping of a paged KV cache, shared by the backends:
 * page allocation, per-slot page tables, reference counts and the prefix
 * cache.  Only ids live here; each backend keeps the pages' K/V data in its
 * own memory (host arrays, device buffers), indexed by these ids.
 *
 * The cache is cut into pages of page_tokens positions (all layers of those
 * positions).  A slot's table lists, in position order, the pages that hold
 * its positions.  A page is free, in use (referenced by slots or pinned by a
 * request), or cached: referenced by nobody but still registered under the
 * tokens it holds, ready to be shared again.  Cached pages are evicted least
 * recently released first when an allocation finds no free page.
 *
 * Prefix cache: a full page is registered under its tokens and its parent
 * (the registered page holding the positions before it, none for position
 * 0), so a chain of registered pages from position 0 names a token prefix
 * exactly.  Lookups compare the tokens and the parent's registration serial
 * (never reused), so neither a hash collision nor a reused page id can match
 * the wrong prefix.  A slot's positions are only ever written past its
 * length, so a page that is registered or shared is never written again.
 */
#ifndef GPTOSS_KV_PAGES_H
#define GPTOSS_KV_PAGES_H

#include "common.h"

typedef struct gptoss_kv_pages gptoss_kv_pages;

/* n_pages pages of page_tokens positions; max_seqs slots of up to max_context positions. */
gptoss_kv_pages *gptoss_kv_pages_create(int n_pages, int page_tokens, int max_seqs,
										int max_context, gptoss_error *err);
void		gptoss_kv_pages_free(gptoss_kv_pages *kp);

int			gptoss_kv_pages_page_tokens(const gptoss_kv_pages *kp);

/* Cached positions of slot (its next position). */
int			gptoss_kv_pages_len(const gptoss_kv_pages *kp, int slot);

/* Positions of slot it took over from shared pages (attach) rather than computed. */
int			gptoss_kv_pages_shared(const gptoss_kv_pages *kp, int slot);

/* slot's page ids in position order; *n_pages receives their count. */
const int32_t *gptoss_kv_pages_table(const gptoss_kv_pages *kp, int slot, int *n_pages);

/* Pages slot must gain to hold positions [0, end). */
int			gptoss_kv_pages_missing(const gptoss_kv_pages *kp, int slot, int end);

/* Pages an allocation can get now: free ones plus cached ones (evictable). */
int64_t		gptoss_kv_pages_available(const gptoss_kv_pages *kp);

/* Pages referenced by slots or pinned. */
int64_t		gptoss_kv_pages_in_use(const gptoss_kv_pages *kp);

/*
 * Gives slot the pages it lacks for positions [0, end), evicting cached pages
 * when no page is free.  Returns the number of pages added (they are the last
 * entries of the slot's table), or -1 with err when the cache is exhausted.
 */
int			gptoss_kv_pages_grow(gptoss_kv_pages *kp, int slot, int end, gptoss_error *err);

/* Records that slot's positions [len, len + n) now hold keys and values. */
void		gptoss_kv_pages_advance(gptoss_kv_pages *kp, int slot, int n);

/* Drops slot's references; its registered pages stay cached. */
void		gptoss_kv_pages_release(gptoss_kv_pages *kp, int slot);

/*
 * Longest registered chain of full pages matching tokens[0, n_tokens) from
 * position 0, at most max_pages pages; their ids go to pages[].  Returns the
 * number of pages matched.  Nothing changes (see attach).
 */
int			gptoss_kv_pages_match(const gptoss_kv_pages *kp, const int32_t *tokens, int n_tokens,
								  int max_pages, int32_t *pages);

/*
 * Makes the empty slot start with pages[0, n) (taking a reference to each):
 * its length becomes n * page_tokens.  With publishable set the slot goes on
 * registering its later full pages (see publish) after the last of these,
 * which must then be registered.
 */
void		gptoss_kv_pages_attach(gptoss_kv_pages *kp, int slot, const int32_t *pages, int n,
								   int publishable);

/*
 * Registers slot's full pages that lie within tokens[0, n_tokens) (the
 * slot's tokens from position 0, n_tokens <= its length), from where the last
 * call stopped.  A page whose prefix is registered already (another slot
 * computed the same tokens) is not registered twice; the chain goes on
 * through the registered one.
 */
void		gptoss_kv_pages_publish(gptoss_kv_pages *kp, int slot, const int32_t *tokens, int n_tokens);

/* Takes (pin) or drops (unpin) one reference to each of pages[0, n) outside any slot. */
void		gptoss_kv_pages_pin(gptoss_kv_pages *kp, const int32_t *pages, int n);
void		gptoss_kv_pages_unpin(gptoss_kv_pages *kp, const int32_t *pages, int n);

#endif							/* GPTOSS_KV_PAGES_H */
