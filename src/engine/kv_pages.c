/*
 * kv_pages.c: page allocation, slot page tables, reference counts and the
 * prefix cache of a paged KV cache (see kv_pages.h).
 *
 * Free pages sit on a stack.  Cached pages (registered, unreferenced) sit on
 * a doubly linked LRU list: released pages join at the tail, allocation
 * evicts from the head.  Registered pages are found through a chained hash
 * table keyed by (parent page, parent serial, tokens); every registration
 * takes a fresh serial, and an evicted page loses its serial, so an entry
 * whose parent was evicted (and the id reused) can never be reached again.
 */
#include "kv_pages.h"
#include "sampler.h"

#include <stdlib.h>

struct gptoss_kv_pages
{
	int			n_pages;
	int			page_tokens;
	int			max_seqs;
	int			max_pages;		/* table entries per slot: ceil(max_context / page_tokens) */
	int32_t    *refs;			/* [n_pages] references (slots and pins) */
	int32_t    *free_stack;		/* [n_pages] */
	int			n_free;
	int64_t		n_cached;		/* pages on the LRU list */

	/* slots */
	int32_t    *table;			/* [max_seqs][max_pages] page ids in position order */
	int		   *slot_pages;		/* [max_seqs] entries of table in use */
	int		   *slot_len;		/* [max_seqs] cached positions */
	int		   *slot_shared;	/* [max_seqs] positions attached rather than computed */
	int		   *slot_published; /* [max_seqs] pages publish has seen; -1: never publish */
	int32_t    *chain_page;		/* [max_seqs] registered page of the prefix published so far, or -1 */
	uint64_t   *chain_serial;	/* [max_seqs] its serial (0 with chain_page -1) */

	/* registered pages */
	uint64_t   *serial;			/* [n_pages] registration serial, 0 = not registered */
	uint64_t   *key;			/* [n_pages] hash of (parent, parent_serial, tokens) */
	int32_t    *parent;			/* [n_pages] -1 at position 0 */
	uint64_t   *parent_serial;	/* [n_pages] */
	int32_t    *tokens;			/* [n_pages][page_tokens] */
	int32_t    *bucket;			/* [n_buckets] first page of each hash chain, or -1 */
	int32_t    *bucket_next;	/* [n_pages] next page in the same chain */
	uint64_t	n_buckets;		/* power of two */
	uint64_t	next_serial;

	/* LRU list of cached pages */
	int32_t    *lru_prev;		/* [n_pages] */
	int32_t    *lru_next;		/* [n_pages] */
	int32_t		lru_head;		/* oldest, evicted first */
	int32_t		lru_tail;
};

/* Hash of a page's identity: its parent link and its tokens. */
static uint64_t
page_key(int32_t parent, uint64_t parent_serial, const int32_t *tokens, int n)
{
	uint64_t	h = gptoss_mix64(((uint64_t) (uint32_t) parent << 32) ^ parent_serial);

	for (int i = 0; i < n; i++)
		h = gptoss_mix64(h ^ (uint32_t) tokens[i]);
	return h;
}

/* Creates the bookkeeping for n_pages pages, every page free. */
gptoss_kv_pages *
gptoss_kv_pages_create(int n_pages, int page_tokens, int max_seqs, int max_context,
					   gptoss_error *err)
{
	gptoss_kv_pages *kp;
	size_t		np;

	if (n_pages < 1 || page_tokens < 1 || max_seqs < 1 || max_context < 1)
	{
		gptoss_errorf_code(err, GPTOSS_ERR_INVALID,
						   "KV pages: invalid sizes (%d pages of %d tokens, %d slots of %d tokens)",
						   n_pages, page_tokens, max_seqs, max_context);
		return NULL;
	}
	kp = calloc(1, sizeof(*kp));
	if (kp == NULL)
		goto oom;
	np = (size_t) n_pages;
	kp->n_pages = n_pages;
	kp->page_tokens = page_tokens;
	kp->max_seqs = max_seqs;
	kp->max_pages = (max_context + page_tokens - 1) / page_tokens;
	kp->n_buckets = 1;
	while (kp->n_buckets < np)
		kp->n_buckets <<= 1;
	kp->refs = calloc(np, sizeof(int32_t));
	kp->free_stack = malloc(np * sizeof(int32_t));
	kp->table = malloc((size_t) max_seqs * kp->max_pages * sizeof(int32_t));
	kp->slot_pages = calloc((size_t) max_seqs, sizeof(int));
	kp->slot_len = calloc((size_t) max_seqs, sizeof(int));
	kp->slot_shared = calloc((size_t) max_seqs, sizeof(int));
	kp->slot_published = calloc((size_t) max_seqs, sizeof(int));
	kp->chain_page = malloc((size_t) max_seqs * sizeof(int32_t));
	kp->chain_serial = calloc((size_t) max_seqs, sizeof(uint64_t));
	kp->serial = calloc(np, sizeof(uint64_t));
	kp->key = calloc(np, sizeof(uint64_t));
	kp->parent = malloc(np * sizeof(int32_t));
	kp->parent_serial = calloc(np, sizeof(uint64_t));
	kp->tokens = malloc(np * page_tokens * sizeof(int32_t));
	kp->bucket = malloc(kp->n_buckets * sizeof(int32_t));
	kp->bucket_next = malloc(np * sizeof(int32_t));
	kp->lru_prev = malloc(np * sizeof(int32_t));
	kp->lru_next = malloc(np * sizeof(int32_t));
	if (!kp->refs || !kp->free_stack || !kp->table || !kp->slot_pages || !kp->slot_len || !kp->slot_shared ||
		!kp->slot_published || !kp->chain_page || !kp->chain_serial || !kp->serial || !kp->key ||
		!kp->parent || !kp->parent_serial || !kp->tokens || !kp->bucket || !kp->bucket_next ||
		!kp->lru_prev || !kp->lru_next)
		goto oom;
	/* page 0 on top of the stack, so pages are handed out in id order */
	for (int i = 0; i < n_pages; i++)
		kp->free_stack[i] = n_pages - 1 - i;
	kp->n_free = n_pages;
	for (uint64_t b = 0; b < kp->n_buckets; b++)
		kp->bucket[b] = -1;
	for (int s = 0; s < max_seqs; s++)
		kp->chain_page[s] = -1;
	kp->lru_head = kp->lru_tail = -1;
	kp->next_serial = 1;
	return kp;

oom:
	gptoss_kv_pages_free(kp);
	gptoss_errorf(err, "out of memory for the KV page tables (%d pages)", n_pages);
	return NULL;
}

/* Frees the bookkeeping. */
void
gptoss_kv_pages_free(gptoss_kv_pages *kp)
{
	if (kp == NULL)
		return;
	free(kp->refs);
	free(kp->free_stack);
	free(kp->table);
	free(kp->slot_pages);
	free(kp->slot_len);
	free(kp->slot_shared);
	free(kp->slot_published);
	free(kp->chain_page);
	free(kp->chain_serial);
	free(kp->serial);
	free(kp->key);
	free(kp->parent);
	free(kp->parent_serial);
	free(kp->tokens);
	free(kp->bucket);
	free(kp->bucket_next);
	free(kp->lru_prev);
	free(kp->lru_next);
	free(kp);
}

int
gptoss_kv_pages_page_tokens(const gptoss_kv_pages *kp)
{
	return kp->page_tokens;
}

/* Cached positions of slot. */
int
gptoss_kv_pages_len(const gptoss_kv_pages *kp, int slot)
{
	return kp->slot_len[slot];
}

/* Attached positions of slot. */
int
gptoss_kv_pages_shared(const gptoss_kv_pages *kp, int slot)
{
	return kp->slot_shared[slot];
}

/* slot's page table. */
const int32_t *
gptoss_kv_pages_table(const gptoss_kv_pages *kp, int slot, int *n_pages)
{
	*n_pages = kp->slot_pages[slot];
	return kp->table + (size_t) slot * kp->max_pages;
}

/* Pages slot lacks for positions [0, end). */
int
gptoss_kv_pages_missing(const gptoss_kv_pages *kp, int slot, int end)
{
	int			need = (end + kp->page_tokens - 1) / kp->page_tokens - kp->slot_pages[slot];

	return need > 0 ? need : 0;
}

/* Free plus evictable pages. */
int64_t
gptoss_kv_pages_available(const gptoss_kv_pages *kp)
{
	return kp->n_free + kp->n_cached;
}

/* Pages neither free nor cached. */
int64_t
gptoss_kv_pages_in_use(const gptoss_kv_pages *kp)
{
	return kp->n_pages - kp->n_free - kp->n_cached;
}

/* Takes page p off the LRU list. */
static void
lru_remove(gptoss_kv_pages *kp, int32_t p)
{
	int32_t		prev = kp->lru_prev[p];
	int32_t		next = kp->lru_next[p];

	if (prev >= 0)
		kp->lru_next[prev] = next;
	else
		kp->lru_head = next;
	if (next >= 0)
		kp->lru_prev[next] = prev;
	else
		kp->lru_tail = prev;
	kp->n_cached--;
}

/* Appends page p to the LRU list (most recently released). */
static void
lru_append(gptoss_kv_pages *kp, int32_t p)
{
	kp->lru_prev[p] = kp->lru_tail;
	kp->lru_next[p] = -1;
	if (kp->lru_tail >= 0)
		kp->lru_next[kp->lru_tail] = p;
	else
		kp->lru_head = p;
	kp->lru_tail = p;
	kp->n_cached++;
}

/* Removes page p from the hash table; it is no longer registered. */
static void
unregister_page(gptoss_kv_pages *kp, int32_t p)
{
	int32_t    *link = &kp->bucket[kp->key[p] & (kp->n_buckets - 1)];

	while (*link != p)
		link = &kp->bucket_next[*link];
	*link = kp->bucket_next[p];
	kp->serial[p] = 0;
}

/* Takes a reference to page p (a cached page leaves the LRU list). */
static void
ref_page(gptoss_kv_pages *kp, int32_t p)
{
	if (kp->refs[p]++ == 0 && kp->serial[p] != 0)
		lru_remove(kp, p);
}

/* Drops a reference to page p: unreferenced, it becomes cached (registered) or free. */
static void
unref_page(gptoss_kv_pages *kp, int32_t p)
{
	if (--kp->refs[p] > 0)
		return;
	if (kp->serial[p] != 0)
		lru_append(kp, p);
	else
		kp->free_stack[kp->n_free++] = p;
}

/* A free page, or the least recently released cached one; -1 when neither exists. */
static int32_t
alloc_page(gptoss_kv_pages *kp)
{
	int32_t		p;

	if (kp->n_free > 0)
		p = kp->free_stack[--kp->n_free];
	else if (kp->lru_head >= 0)
	{
		p = kp->lru_head;
		lru_remove(kp, p);
		unregister_page(kp, p);
	}
	else
		return -1;
	kp->refs[p] = 1;
	return p;
}

/* Adds the pages slot lacks for positions [0, end). */
int
gptoss_kv_pages_grow(gptoss_kv_pages *kp, int slot, int end, gptoss_error *err)
{
	int			need = gptoss_kv_pages_missing(kp, slot, end);
	int32_t    *table = kp->table + (size_t) slot * kp->max_pages;

	if (kp->slot_pages[slot] + need > kp->max_pages)
		return gptoss_errorf_code(err, GPTOSS_ERR_TOO_LONG,
								  "KV pages: %d positions exceed the context of a slot", end);
	for (int i = 0; i < need; i++)
	{
		int32_t		p = alloc_page(kp);

		if (p < 0)
			return gptoss_errorf_code(err, GPTOSS_ERR_BUSY,
									  "KV cache full: no free or cached page left (%d pages)",
									  kp->n_pages);
		table[kp->slot_pages[slot]++] = p;
	}
	return need;
}

/* Advances slot's length. */
void
gptoss_kv_pages_advance(gptoss_kv_pages *kp, int slot, int n)
{
	kp->slot_len[slot] += n;
}

/* Drops slot's references, last page first so deeper pages are evicted before their prefixes. */
void
gptoss_kv_pages_release(gptoss_kv_pages *kp, int slot)
{
	int32_t    *table = kp->table + (size_t) slot * kp->max_pages;

	for (int i = kp->slot_pages[slot] - 1; i >= 0; i--)
		unref_page(kp, table[i]);
	kp->slot_pages[slot] = 0;
	kp->slot_len[slot] = 0;
	kp->slot_shared[slot] = 0;
	kp->slot_published[slot] = 0;
	kp->chain_page[slot] = -1;
	kp->chain_serial[slot] = 0;
}

/* The registered page with this parent link and these tokens, or -1. */
static int32_t
find_page(const gptoss_kv_pages *kp, int32_t parent, uint64_t parent_serial, const int32_t *tokens)
{
	uint64_t	key = page_key(parent, parent_serial, tokens, kp->page_tokens);

	for (int32_t p = kp->bucket[key & (kp->n_buckets - 1)]; p >= 0; p = kp->bucket_next[p])
		if (kp->key[p] == key && kp->parent[p] == parent && kp->parent_serial[p] == parent_serial &&
			memcmp(kp->tokens + (size_t) p * kp->page_tokens, tokens,
				   (size_t) kp->page_tokens * sizeof(int32_t)) == 0)
			return p;
	return -1;
}

/* Longest registered chain matching tokens from position 0. */
int
gptoss_kv_pages_match(const gptoss_kv_pages *kp, const int32_t *tokens, int n_tokens,
					  int max_pages, int32_t *pages)
{
	int32_t		parent = -1;
	uint64_t	parent_serial = 0;
	int			n = 0;

	while (n < max_pages && (int64_t) (n + 1) * kp->page_tokens <= n_tokens)
	{
		int32_t		p = find_page(kp, parent, parent_serial, tokens + (size_t) n * kp->page_tokens);

		if (p < 0)
			break;
		pages[n++] = p;
		parent = p;
		parent_serial = kp->serial[p];
	}
	return n;
}

/* Starts the empty slot with pages[0, n). */
void
gptoss_kv_pages_attach(gptoss_kv_pages *kp, int slot, const int32_t *pages, int n, int publishable)
{
	int32_t    *table = kp->table + (size_t) slot * kp->max_pages;

	for (int i = 0; i < n; i++)
	{
		ref_page(kp, pages[i]);
		table[i] = pages[i];
	}
	kp->slot_pages[slot] = n;
	kp->slot_len[slot] = n * kp->page_tokens;
	kp->slot_shared[slot] = n * kp->page_tokens;
	kp->slot_published[slot] = publishable ? n : -1;
	kp->chain_page[slot] = n > 0 && publishable ? pages[n - 1] : -1;
	kp->chain_serial[slot] = n > 0 && publishable ? kp->serial[pages[n - 1]] : 0;
}

/* Registers page p under its parent link and tokens. */
static void
register_page(gptoss_kv_pages *kp, int32_t p, int32_t parent, uint64_t parent_serial,
			  const int32_t *tokens)
{
	uint64_t	b;

	kp->key[p] = page_key(parent, parent_serial, tokens, kp->page_tokens);
	kp->parent[p] = parent;
	kp->parent_serial[p] = parent_serial;
	memcpy(kp->tokens + (size_t) p * kp->page_tokens, tokens, (size_t) kp->page_tokens * sizeof(int32_t));
	kp->serial[p] = kp->next_serial++;
	b = kp->key[p] & (kp->n_buckets - 1);
	kp->bucket_next[p] = kp->bucket[b];
	kp->bucket[b] = p;
}

/* Registers slot's full pages within tokens[0, n_tokens). */
void
gptoss_kv_pages_publish(gptoss_kv_pages *kp, int slot, const int32_t *tokens, int n_tokens)
{
	const int32_t *table = kp->table + (size_t) slot * kp->max_pages;
	int			i = kp->slot_published[slot];

	if (i < 0)
		return;
	if (n_tokens > kp->slot_len[slot])
		n_tokens = kp->slot_len[slot];
	for (; (int64_t) (i + 1) * kp->page_tokens <= n_tokens; i++)
	{
		const int32_t *page_tokens = tokens + (size_t) i * kp->page_tokens;
		int32_t		parent = kp->chain_page[slot];
		uint64_t	parent_serial = kp->chain_serial[slot];
		int32_t		p;

		/* the chain is broken when a parent was evicted meanwhile */
		if (parent >= 0 && kp->serial[parent] != parent_serial)
		{
			kp->slot_published[slot] = -1;
			return;
		}
		p = find_page(kp, parent, parent_serial, page_tokens);
		if (p < 0)
		{
			p = table[i];
			register_page(kp, p, parent, parent_serial, page_tokens);
		}
		kp->chain_page[slot] = p;
		kp->chain_serial[slot] = kp->serial[p];
	}
	kp->slot_published[slot] = i;
}

/* Pins pages outside any slot. */
void
gptoss_kv_pages_pin(gptoss_kv_pages *kp, const int32_t *pages, int n)
{
	for (int i = 0; i < n; i++)
		ref_page(kp, pages[i]);
}

/* Drops pins. */
void
gptoss_kv_pages_unpin(gptoss_kv_pages *kp, const int32_t *pages, int n)
{
	for (int i = 0; i < n; i++)
		unref_page(kp, pages[i]);
}
