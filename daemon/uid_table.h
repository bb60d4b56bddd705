/*
 * uid_table.h - what each uid holds across all its connections: how many connections,
 * and how many blocks under their leases. The per-uid limits (--max-connections-per-uid,
 * --max-leased-blocks-per-uid) are checked against it.
 *
 *   open addressing, linear probing, capacity a power of two kept at least twice the
 *   entries; an entry goes (backward-shift deletion, no tombstones) as soon as its uid
 *   holds nothing.
 *
 * Threading: the event loop thread only. Memory: uid_table_get grows the table and
 * returns NULL when that fails (the table stays as it was).
 */
#ifndef KVP_UID_TABLE_H
#define KVP_UID_TABLE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct uid_entry {
	uid_t uid;
	uint32_t conns;       /* connections open */
	uint64_t leased;      /* blocks under the leases of those connections */
	int used;
};

struct uid_table {
	struct uid_entry *e;  /* (cap) */
	size_t cap, n;
};

/* The entry of uid, added (zeroed) if missing; NULL when out of memory. */
struct uid_entry *uid_table_get(struct uid_table *t, uid_t uid);
/* The entry of uid, or NULL. */
struct uid_entry *uid_table_find(const struct uid_table *t, uid_t uid);
/* Remove e when it holds nothing (conns and leased 0); otherwise keep it. */
void uid_table_release(struct uid_table *t, struct uid_entry *e);
void uid_table_free(struct uid_table *t);

#endif
