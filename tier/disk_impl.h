/*
 * disk_impl.h - private to tier/: the disk tier's structures, shared by disk.c (the
 * index, the thread, the owner's calls) and disk_open.c (open: the manifest, the scan
 * of a warm start).
 */
#ifndef KVP_DISK_IMPL_H
#define KVP_DISK_IMPL_H

#include <pthread.h>

#include "disk_format.h"
#include "kvp_disk.h"

struct entry {
	struct kvp_key key, parent, root;
	uint64_t tok_sum;
	uint64_t seq;
	uint32_t slot;
	uint32_t children;           /* entries whose parent this is */
	uint32_t readers;            /* fetches in flight */
	bool writing, dead, on_lru;
	struct entry *hnext;         /* by key.lo */
	struct entry *pnext;         /* by parent.lo */
	struct entry *prev, *next;   /* LRU, least recent first */
};

enum job_kind { JOB_WRITE, JOB_READ, JOB_WIPE, JOB_ZERO };

struct job {
	enum job_kind kind;
	struct entry *e;
	uint8_t *buf;                /* write: head + KV; read: head */
	uint32_t slot;               /* zero: the slot whose header goes */
	size_t len;
	void *dst;                   /* read */
	struct kvp_key key, parent, root;
	uint32_t *tokens;            /* read: the tokens asked for */
	void (*done)(void *arg, int status);
	void *arg;
	int status;
	struct job *next;
};

struct kvp_disk {
	struct kvp_disk_config cfg;
	int fd;                      /* the blocks file; -1 in memory mode */
	uint8_t *mem;                /* memory mode: the slots (n_slots x slot_bytes) */
	size_t head_bytes, slot_bytes;
	uint32_t n_slots;
	struct entry **by_slot;      /* (n_slots) the entry holding each slot, or NULL */
	uint32_t *free_slots, n_free;
	struct entry **buckets, **pbuckets;
	size_t mask;
	struct entry lru;            /* sentinel */
	uint64_t next_seq;
	uint64_t fingerprint;        /* tier_fingerprint of what the daemon runs */
	size_t staged;               /* bytes of writes queued or running */
	uint32_t *scratch;           /* (block_tokens) the tier's thread's */
	uint32_t *pass_tokens;       /* (block_tokens) the owner's, for evicted */
	struct kvp_disk_stats st;
	/* the thread */
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t wake, idle;
	struct job *queue, **queue_tail, *done;
	bool busy, stop;
};

/* disk.c */
struct entry *disk_find(struct kvp_disk *d, struct kvp_key key, struct kvp_key root);
/* A new entry holding slot (not yet in the index). NULL without memory. */
struct entry *disk_new_entry(struct kvp_disk *d, const struct kvp_disk_meta *m, uint64_t tok_sum,
			uint32_t slot, uint64_t seq);
/* Into the index: by key, by parent, children counted both ways, onto the LRU; the
 * watch told, with the block's tokens. */
void disk_link(struct kvp_disk *d, struct entry *e, const uint32_t *tokens);
void disk_drop(struct kvp_disk *d, struct entry *e);
void *disk_io_main(void *arg);
/* The file closed and every allocation freed (no thread running, no lock held). */
void disk_free(struct kvp_disk *d);

#endif
