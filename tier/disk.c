/*
 * disk.c - the disk tier (kvp_disk.h): the index of the blocks in DIR/blocks, its LRU,
 * the slots, and the thread that reads and writes them.
 *
 *   owner thread                               the tier's thread
 *   ────────────                               ─────────────────
 *   put: slot taken (free, else the LRU        pwrite header + tokens + KV
 *     leaf's), bytes staged, entry "writing"   ─▶ done list, notify()
 *   poll: entry readable ◀──────────────────
 *   fetch: entry read by one more reader       preadv header + KV into dst; header,
 *                                                tokens and XXH3 of the KV checked
 *   poll: done(arg, status) ◀───────────────   ─▶ done list, notify()
 *
 * An entry is on the LRU iff no other entry names it as parent (children == 0), no
 * read or write of it is in flight, and it has not been dropped. A dropped entry still
 * busy ("dead") leaves the index at once and gives its slot back when its I/O is done.
 * One entry per (key, root): a second block with the same key in a namespace (a
 * collision) is not kept.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "disk_impl.h"
#include "kvp_status.h"

/* ---- index ------------------------------------------------------------------------- */

static struct entry **bucket(struct kvp_disk *d, struct kvp_key k)
{
	return &d->buckets[k.lo & d->mask];
}

struct entry *disk_find(struct kvp_disk *d, struct kvp_key key, struct kvp_key root)
{
	for (struct entry *e = *bucket(d, key); e; e = e->hnext)
		if (kvp_key_eq(e->key, key) && kvp_key_eq(e->root, root))
			return e;
	return NULL;
}

static bool evictable(const struct entry *e)
{
	return e->children == 0 && e->readers == 0 && !e->writing && !e->dead;
}

static void lru_unlink(struct entry *e)
{
	if (!e->on_lru)
		return;
	e->prev->next = e->next;
	e->next->prev = e->prev;
	e->on_lru = false;
}

/* Put e at the recent end of the LRU if it belongs there, off it if not. */
static void lru_update(struct kvp_disk *d, struct entry *e, bool touch)
{
	if (e->on_lru && !touch && evictable(e))
		return;
	lru_unlink(e);
	if (!evictable(e))
		return;
	e->prev = d->lru.prev;
	e->next = &d->lru;
	d->lru.prev->next = e;
	d->lru.prev = e;
	e->on_lru = true;
}

void disk_link(struct kvp_disk *d, struct entry *e, const uint32_t *tokens)
{
	struct entry **pb = &d->pbuckets[e->parent.lo & d->mask], *p;

	e->hnext = *bucket(d, e->key);
	*bucket(d, e->key) = e;
	e->pnext = *pb;
	*pb = e;
	e->children = 0;
	for (struct entry *c = d->pbuckets[e->key.lo & d->mask]; c; c = c->pnext)
		if (kvp_key_eq(c->parent, e->key) && kvp_key_eq(c->root, e->root))
			e->children++;
	p = disk_find(d, e->parent, e->root);
	if (p && p != e) {
		p->children++;
		lru_update(d, p, false);
	}
	lru_update(d, e, true);
	if (d->cfg.watch) {
		const struct kvp_disk_meta m = { .key = e->key, .parent = e->parent,
						 .root = e->root, .tokens = tokens };

		d->cfg.watch(d->cfg.watch_arg, &m, true);
	}
}

/* Take e out of the index (probes no longer see it); its slot stays its own. */
static void unlink_entry(struct kvp_disk *d, struct entry *e)
{
	struct entry **pp, *p;

	if (d->cfg.watch) {
		const struct kvp_disk_meta m = { .key = e->key, .parent = e->parent,
						 .root = e->root };

		d->cfg.watch(d->cfg.watch_arg, &m, false);
	}
	for (pp = bucket(d, e->key); *pp != e; pp = &(*pp)->hnext)
		;
	*pp = e->hnext;
	for (pp = &d->pbuckets[e->parent.lo & d->mask]; *pp != e; pp = &(*pp)->pnext)
		;
	*pp = e->pnext;
	lru_unlink(e);
	p = disk_find(d, e->parent, e->root);
	if (p && p != e) {
		p->children--;
		lru_update(d, p, false);
	}
}

static void free_slot(struct kvp_disk *d, struct entry *e)
{
	d->by_slot[e->slot] = NULL;
	d->free_slots[d->n_free++] = e->slot;
	d->st.used--;
	free(e);
}

/* Drop e: gone from the index now, its slot free now or when its I/O finishes. */
void disk_drop(struct kvp_disk *d, struct entry *e)
{
	unlink_entry(d, e);
	if (e->readers || e->writing) {
		e->dead = true;
		return;
	}
	free_slot(d, e);
}

static off_t slot_off(const struct kvp_disk *d, uint32_t slot)
{
	return (off_t)slot * (off_t)d->slot_bytes;
}

/* Memory mode: a block dropped to make room goes to the tier below (its slot is
 * written and not busy, so its bytes are whole). */
static void pass_down(struct kvp_disk *d, const struct entry *e)
{
	const uint8_t *slot = d->mem ? d->mem + slot_off(d, e->slot) : NULL;
	struct slot_hdr h;
	struct kvp_disk_meta m;

	if (!slot || !d->cfg.evicted ||
	    !slot_decode(slot, d->cfg.block_tokens, d->cfg.block_bytes, &h, d->pass_tokens))
		return;
	m = (struct kvp_disk_meta){ .key = h.key, .parent = h.parent, .root = h.root,
				    .tokens = d->pass_tokens };
	d->cfg.evicted(d->cfg.evicted_arg, &m, slot + d->head_bytes);
}

/* A slot for a new block: a free one, else the least recently used leaf's. */
static int take_slot(struct kvp_disk *d, uint32_t *slot)
{
	struct entry *victim;

	if (d->n_free == 0) {
		if (d->lru.next == &d->lru)
			return KVP_EFULL;
		victim = d->lru.next;
		unlink_entry(d, victim);
		pass_down(d, victim);
		free_slot(d, victim);
		d->st.evictions++;
	}
	*slot = d->free_slots[--d->n_free];
	d->st.used++;
	return KVP_OK;
}

struct entry *disk_new_entry(struct kvp_disk *d, const struct kvp_disk_meta *m, uint64_t tok_sum,
			       uint32_t slot, uint64_t seq)
{
	struct entry *e = calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	e->key = m->key;
	e->parent = m->parent;
	e->root = m->root;
	e->tok_sum = tok_sum;
	e->seq = seq;
	e->slot = slot;
	d->by_slot[slot] = e;
	return e;
}

/* ---- the tier's thread --------------------------------------------------------------- */

static bool write_all(int fd, const uint8_t *p, size_t n, off_t off)
{
	while (n) {
		ssize_t w = pwrite(fd, p, n, off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		p += w;
		n -= (size_t)w;
		off += w;
	}
	return true;
}

/* Read the header into job->buf and the KV into job->dst, then check them against the
 * block asked for. */
static int run_read(struct kvp_disk *d, struct job *j)
{
	struct iovec iov[2] = { { j->buf, d->head_bytes }, { j->dst, d->cfg.block_bytes } };
	const size_t want = d->head_bytes + d->cfg.block_bytes;
	struct slot_hdr h;
	ssize_t r;

	if (d->mem) {
		memcpy(j->buf, d->mem + slot_off(d, j->e->slot), d->head_bytes);
		memcpy(j->dst, d->mem + slot_off(d, j->e->slot) + d->head_bytes, d->cfg.block_bytes);
		r = (ssize_t)want;
	} else {
		do
			r = preadv(d->fd, iov, 2, slot_off(d, j->e->slot));
		while (r < 0 && errno == EINTR);
	}
	if (r < 0)
		return KVP_EIO;
	if ((size_t)r < want)
		return KVP_ENOTFOUND;   /* a slot never written to its end */
	if (!slot_decode(j->buf, d->cfg.block_tokens, d->cfg.block_bytes, &h, d->scratch) ||
	    !kvp_key_eq(h.key, j->key) || !kvp_key_eq(h.parent, j->parent) ||
	    !kvp_key_eq(h.root, j->root) || h.fingerprint != d->fingerprint ||
	    memcmp(d->scratch, j->tokens, d->cfg.block_tokens * sizeof(uint32_t)) != 0 ||
	    kv_checksum(j->dst, d->cfg.block_bytes) != h.kv_sum)
		return KVP_ENOTFOUND;
	return KVP_OK;
}

static void run_job(struct kvp_disk *d, struct job *j)
{
	switch (j->kind) {
	case JOB_WRITE:
		if (d->mem) {
			memcpy(d->mem + slot_off(d, j->e->slot), j->buf, j->len);
			j->status = KVP_OK;
			break;
		}
		j->status = write_all(d->fd, j->buf, j->len, slot_off(d, j->e->slot)) ? KVP_OK
										       : KVP_EIO;
		break;
	case JOB_READ:
		j->status = run_read(d, j);
		break;
	case JOB_ZERO: {   /* one slot's header gone: a restart does not find its block */
		static const uint8_t zeros[KVP_SLOT_HDR];

		j->status = d->mem || write_all(d->fd, zeros, sizeof(zeros), slot_off(d, j->slot))
				    ? KVP_OK
				    : KVP_EIO;
		break;
	}
	case JOB_WIPE:
		/* every slot's header gone: a restart finds nothing of what was cleared */
		if (d->mem) {
			j->status = KVP_OK;   /* nothing outlives the process */
			break;
		}
		j->status = ftruncate(d->fd, 0) == 0 &&
					    ftruncate(d->fd, slot_off(d, d->n_slots)) == 0
				    ? KVP_OK
				    : KVP_EIO;
		break;
	}
}

/* The next job off the queue (under the mutex): the first, except that among the reads
 * queued one after another at its head the one lowest in the file goes first, so that
 * a prompt's blocks (demoted deepest first, so lying back to front) are read front to
 * back, as readahead expects. Reads touch no slot being written, so their order is
 * free; writes and wipes keep theirs. */
static struct job *take_next(struct kvp_disk *d)
{
	struct job **best = &d->queue, *j;

	for (struct job **pp = &d->queue; *pp && (*pp)->kind == JOB_READ; pp = &(*pp)->next)
		if ((*pp)->e->slot < (*best)->e->slot)
			best = pp;
	j = *best;
	*best = j->next;
	if (d->queue_tail == &j->next)
		d->queue_tail = best;
	return j;
}

void *disk_io_main(void *arg)
{
	struct kvp_disk *d = arg;

	pthread_mutex_lock(&d->mu);
	for (;;) {
		struct job *j;

		while (!d->queue && !d->stop) {
			d->busy = false;
			pthread_cond_broadcast(&d->idle);
			pthread_cond_wait(&d->wake, &d->mu);
		}
		if (!d->queue)
			break;
		j = take_next(d);
		d->busy = true;
		pthread_mutex_unlock(&d->mu);
		run_job(d, j);
		pthread_mutex_lock(&d->mu);
		j->next = d->done;
		d->done = j;
		if (d->cfg.notify)
			d->cfg.notify(d->cfg.notify_arg);
	}
	d->busy = false;
	pthread_cond_broadcast(&d->idle);
	pthread_mutex_unlock(&d->mu);
	return NULL;
}

static void queue_job(struct kvp_disk *d, struct job *j)
{
	j->next = NULL;
	pthread_mutex_lock(&d->mu);
	*d->queue_tail = j;
	d->queue_tail = &j->next;
	pthread_cond_signal(&d->wake);
	pthread_mutex_unlock(&d->mu);
}

/* ---- close ------------------------------------------------------------------------- */

void kvp_disk_drain(struct kvp_disk *d)
{
	pthread_mutex_lock(&d->mu);
	while (d->queue || d->busy)
		pthread_cond_wait(&d->idle, &d->mu);
	pthread_mutex_unlock(&d->mu);
}

static void free_job(struct job *j)
{
	free(j->buf);
	free(j->tokens);
	free(j);
}

void kvp_disk_close(struct kvp_disk *d)
{
	if (!d)
		return;
	kvp_disk_drain(d);
	pthread_mutex_lock(&d->mu);
	d->stop = true;
	pthread_cond_signal(&d->wake);
	pthread_mutex_unlock(&d->mu);
	pthread_join(d->thread, NULL);
	for (struct job *j = d->done, *n; j; j = n) {
		n = j->next;
		free_job(j);
	}
	if (d->fd >= 0)
		(void)fsync(d->fd);
	pthread_mutex_destroy(&d->mu);
	pthread_cond_destroy(&d->wake);
	pthread_cond_destroy(&d->idle);
	disk_free(d);
}

void disk_free(struct kvp_disk *d)
{
	if (d->fd >= 0)
		close(d->fd);
	free(d->mem);
	free(d->pass_tokens);
	for (uint32_t i = 0; d->by_slot && i < d->n_slots; i++)
		free(d->by_slot[i]);
	free(d->by_slot);
	free(d->free_slots);
	free(d->buckets);
	free(d->pbuckets);
	free(d->scratch);
	free(d);
}

/* ---- the owner's calls ------------------------------------------------------------------ */

int kvp_disk_put(struct kvp_disk *d, const struct kvp_disk_meta *m, const void *kv)
{
	const size_t len = d->head_bytes + d->cfg.block_bytes;
	uint64_t tok_sum = tokens_checksum(m->tokens, d->cfg.block_tokens);
	struct entry *e = disk_find(d, m->key, m->root);
	struct slot_hdr h;
	struct job *j;
	uint32_t slot;

	if (e) {
		if (kvp_key_eq(e->parent, m->parent) && e->tok_sum == tok_sum)
			return KVP_EEXIST;
		d->st.dropped++;   /* another block with this key: a collision, not kept */
		return KVP_EFULL;
	}
	if (d->staged + len > d->cfg.staging_bytes) {
		d->st.dropped++;
		return KVP_EFULL;
	}
	j = calloc(1, sizeof(*j));
	if (!j || !(j->buf = malloc(len))) {
		free(j);
		return KVP_ENOMEM;
	}
	if (take_slot(d, &slot)) {
		free(j->buf);
		free(j);
		d->st.dropped++;
		return KVP_EFULL;
	}
	e = disk_new_entry(d, m, tok_sum, slot, d->next_seq++);
	if (!e) {
		d->free_slots[d->n_free++] = slot;
		d->st.used--;
		free(j->buf);
		free(j);
		return KVP_ENOMEM;
	}
	e->writing = true;
	disk_link(d, e, m->tokens);
	h = (struct slot_hdr){ .block_tokens = d->cfg.block_tokens, .block_bytes = d->cfg.block_bytes,
			       .key = m->key, .parent = m->parent, .root = m->root, .seq = e->seq,
			       .kv_sum = kv_checksum(kv, d->cfg.block_bytes),
			       .fingerprint = d->fingerprint };
	slot_encode(j->buf, &h, m->tokens);
	memcpy(j->buf + d->head_bytes, kv, d->cfg.block_bytes);
	j->kind = JOB_WRITE;
	j->e = e;
	j->len = len;
	d->staged += len;
	queue_job(d, j);
	return KVP_OK;
}

uint32_t kvp_disk_probe(struct kvp_disk *d, struct kvp_key root, struct kvp_key parent0,
			const struct kvp_key *keys, const uint32_t *tokens, uint32_t n)
{
	struct kvp_key parent = parent0;
	uint32_t i = 0;

	for (; i < n; i++) {
		struct entry *e = disk_find(d, keys[i], root);

		if (!e || !kvp_key_eq(e->parent, parent) ||
		    e->tok_sum != tokens_checksum(tokens + (size_t)i * d->cfg.block_tokens,
						  d->cfg.block_tokens))
			break;
		lru_update(d, e, true);
		parent = keys[i];
	}
	return i;
}

int kvp_disk_fetch(struct kvp_disk *d, const struct kvp_disk_meta *m, void *dst,
		   void (*done)(void *arg, int status), void *arg)
{
	struct entry *e = disk_find(d, m->key, m->root);
	struct job *j;

	/* a block still being written is read after its write: the queue keeps their order */
	if (!e || !kvp_key_eq(e->parent, m->parent))
		return KVP_ENOTFOUND;
	j = calloc(1, sizeof(*j));
	if (!j || !(j->buf = malloc(d->head_bytes)) ||
	    !(j->tokens = malloc(d->cfg.block_tokens * sizeof(uint32_t)))) {
		if (j)
			free(j->buf);
		free(j);
		return KVP_ENOMEM;
	}
	memcpy(j->tokens, m->tokens, d->cfg.block_tokens * sizeof(uint32_t));
	j->kind = JOB_READ;
	j->e = e;
	j->dst = dst;
	j->key = m->key;
	j->parent = m->parent;
	j->root = m->root;
	j->done = done;
	j->arg = arg;
	e->readers++;
	lru_update(d, e, true);
	queue_job(d, j);
	return KVP_OK;
}

/* A finished job on the owner's side. */
static void complete(struct kvp_disk *d, struct job *j)
{
	struct entry *e = j->e;

	switch (j->kind) {
	case JOB_WRITE:
		d->staged -= j->len;
		e->writing = false;
		if (j->status == KVP_OK) {
			d->st.writes++;
			d->st.write_bytes += d->cfg.block_bytes;
		} else {
			d->st.write_errors++;
			if (!e->dead)
				unlink_entry(d, e);
			e->dead = true;
		}
		break;
	case JOB_READ:
		e->readers--;
		if (j->status == KVP_OK) {
			d->st.reads++;
			d->st.read_bytes += d->cfg.block_bytes;
		} else {
			if (j->status == KVP_ENOTFOUND)
				d->st.verify_failures++;
			else
				d->st.read_errors++;
			if (!e->dead)
				unlink_entry(d, e);   /* whatever the slot holds, not that block */
			e->dead = true;
		}
		break;
	case JOB_WIPE:
	case JOB_ZERO:
		break;
	}
	if (e && e->dead) {
		if (!e->readers && !e->writing)
			free_slot(d, e);
	} else if (e) {
		lru_update(d, e, false);
	}
	if (j->done)
		j->done(j->arg, j->status);
}

size_t kvp_disk_poll(struct kvp_disk *d)
{
	struct job *list, *rev = NULL;
	size_t n = 0;

	pthread_mutex_lock(&d->mu);
	list = d->done;
	d->done = NULL;
	pthread_mutex_unlock(&d->mu);
	while (list) {   /* in the order they finished */
		struct job *next = list->next;

		list->next = rev;
		rev = list;
		list = next;
	}
	while (rev) {
		struct job *next = rev->next;

		complete(d, rev);
		free_job(rev);
		rev = next;
		n++;
	}
	return n;
}

void kvp_disk_clear(struct kvp_disk *d)
{
	struct job *j = calloc(1, sizeof(*j));

	for (uint32_t i = 0; i < d->n_slots; i++)
		if (d->by_slot[i] && !d->by_slot[i]->dead)
			disk_drop(d, d->by_slot[i]);
	if (j) {   /* without memory the blocks are gone from the index, and stay on disk */
		j->kind = JOB_WIPE;
		queue_job(d, j);
	}
}

size_t kvp_disk_clear_ns(struct kvp_disk *d, struct kvp_key root)
{
	size_t n = 0;

	for (uint32_t i = 0; i < d->n_slots; i++) {
		struct entry *e = d->by_slot[i];
		struct job *j;

		if (!e || e->dead || !kvp_key_eq(e->root, root))
			continue;
		disk_drop(d, e);
		n++;
		/* queued before any later write of the slot: the thread keeps their order */
		if (!d->mem && (j = calloc(1, sizeof(*j)))) {
			j->kind = JOB_ZERO;
			j->slot = i;
			queue_job(d, j);
		}
	}
	return n;
}

size_t kvp_disk_evict_some(struct kvp_disk *d, size_t max)
{
	size_t n = 0;

	while (n < max && d->lru.next != &d->lru) {
		struct entry *victim = d->lru.next;

		unlink_entry(d, victim);
		pass_down(d, victim);
		free_slot(d, victim);
		n++;
	}
	return n;
}

void kvp_disk_get_stats(const struct kvp_disk *d, struct kvp_disk_stats *st)
{
	*st = d->st;
	st->slots = d->n_slots;
	st->slot_bytes = d->slot_bytes;
}

int kvp_disk_check(const struct kvp_disk *d)
{
	uint32_t used = 0, on_lru = 0, listed = 0;

	for (uint32_t i = 0; i < d->n_slots; i++) {
		const struct entry *e = d->by_slot[i];
		uint32_t children = 0;

		if (!e)
			continue;
		used++;
		if (e->slot != i || e->on_lru != (evictable(e)))
			return KVP_EINTERNAL;
		on_lru += e->on_lru;
		if (e->dead)
			continue;
		if (disk_find((struct kvp_disk *)d, e->key, e->root) != e)
			return KVP_EINTERNAL;
		for (uint32_t k = 0; k < d->n_slots; k++) {
			const struct entry *c = d->by_slot[k];

			if (c && !c->dead && c != e && kvp_key_eq(c->parent, e->key) &&
			    kvp_key_eq(c->root, e->root))
				children++;
		}
		if (children != e->children)
			return KVP_EINTERNAL;
	}
	for (const struct entry *e = d->lru.next; e != &d->lru; e = e->next)
		listed++;
	if (used != d->st.used || used + d->n_free != d->n_slots || listed != on_lru)
		return KVP_EINTERNAL;
	return KVP_OK;
}
