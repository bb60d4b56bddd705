/*
 * uid_table.c - per-uid connection and lease counts (uid_table.h).
 */
#include "uid_table.h"

#include <stdlib.h>

#define UID_TABLE_MIN 16

static size_t slot_of(uid_t uid, size_t cap)
{
	uint64_t h = (uint64_t)uid * 0x9E3779B97F4A7C15ull;

	return (size_t)(h >> 32) & (cap - 1);
}

static struct uid_entry *probe(const struct uid_table *t, uid_t uid)
{
	for (size_t i = slot_of(uid, t->cap);; i = (i + 1) & (t->cap - 1))
		if (!t->e[i].used || t->e[i].uid == uid)
			return &t->e[i];
}

/* Rehash into twice the room; 0, or -1 when out of memory (t unchanged). */
static int grow(struct uid_table *t)
{
	size_t cap = t->cap ? t->cap * 2 : UID_TABLE_MIN;
	struct uid_table next = { .e = calloc(cap, sizeof(*next.e)), .cap = cap, .n = t->n };

	if (!next.e)
		return -1;
	for (size_t i = 0; i < t->cap; i++)
		if (t->e[i].used)
			*probe(&next, t->e[i].uid) = t->e[i];
	free(t->e);
	*t = next;
	return 0;
}

struct uid_entry *uid_table_find(const struct uid_table *t, uid_t uid)
{
	struct uid_entry *e;

	if (!t->cap)
		return NULL;
	e = probe(t, uid);
	return e->used ? e : NULL;
}

struct uid_entry *uid_table_get(struct uid_table *t, uid_t uid)
{
	struct uid_entry *e = uid_table_find(t, uid);

	if (e)
		return e;
	if ((t->n + 1) * 2 > t->cap && grow(t) != 0)
		return NULL;
	e = probe(t, uid);
	*e = (struct uid_entry){ .uid = uid, .used = 1 };
	t->n++;
	return e;
}

void uid_table_release(struct uid_table *t, struct uid_entry *e)
{
	size_t i, j;

	if (!e || e->conns || e->leased)
		return;
	/* backward-shift: move later entries of the run into the hole when their home
	 * slot does not lie (cyclically) between the hole and them */
	i = (size_t)(e - t->e);
	e->used = 0;
	t->n--;
	for (j = (i + 1) & (t->cap - 1); t->e[j].used; j = (j + 1) & (t->cap - 1)) {
		size_t home = slot_of(t->e[j].uid, t->cap);

		if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
			t->e[i] = t->e[j];
			t->e[j].used = 0;
			i = j;
		}
	}
}

void uid_table_free(struct uid_table *t)
{
	free(t->e);
	*t = (struct uid_table){ 0 };
}
