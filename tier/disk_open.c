/*
 * disk_open.c - opening the disk tier: the directory, the manifest compared with what
 * this daemon runs, the blocks file sized to the capacity, and on a warm start the scan
 * of every slot's header into the index; in memory mode, its slots' allocation.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "disk_impl.h"
#include "kvp_status.h"

#define MANIFEST_MAX 4096

static int fail(int rc, char *why, size_t whylen, const char *fmt, const char *path)
{
	if (why)
		snprintf(why, whylen, fmt, path, strerror(errno));
	return rc;
}

/* The file's manifest in buf ("" when there is none); -1 on a read error. */
static int read_manifest(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	buf[0] = '\0';
	if (fd < 0)
		return errno == ENOENT ? 0 : -1;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return 0;
}

/* Why the manifest found differs from the one wanted: its first line that differs. */
static void explain(const char *dir, const char *found, const char *want, char *why,
		    size_t whylen)
{
	const char *f = found, *w = want;

	if (!found[0]) {
		snprintf(why, whylen, "%s holds no disk tier yet", dir);
		return;
	}
	while (*f && *w) {
		size_t fl = strcspn(f, "\n"), wl = strcspn(w, "\n");

		if (fl != wl || memcmp(f, w, fl) != 0) {
			snprintf(why, whylen, "%s was written for \"%.*s\", this daemon has \"%.*s\"",
				 dir, (int)(fl < 200 ? fl : 200), f, (int)(wl < 200 ? wl : 200), w);
			return;
		}
		f += fl + (f[fl] == '\n');
		w += wl + (w[wl] == '\n');
	}
	snprintf(why, whylen, "%s has a manifest this daemon does not read", dir);
}

static int write_manifest(const char *path, const char *text)
{
	char tmp[4096 + 16];
	size_t len = strlen(text);
	int fd, ok;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
		return -1;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	ok = write(fd, text, len) == (ssize_t)len && fsync(fd) == 0;
	ok = close(fd) == 0 && ok;
	if (!ok || rename(tmp, path) != 0) {
		unlink(tmp);
		return -1;
	}
	return 0;
}

/* Every slot's header: the valid ones into the index (the newest copy of a block when
 * there are two), the rest free. */
static int scan(struct kvp_disk *d)
{
	uint8_t *head = malloc(d->head_bytes);
	struct slot_hdr h;

	if (!head)
		return KVP_ENOMEM;
	for (uint32_t i = d->n_slots; i-- > 0;) {
		ssize_t r = pread(d->fd, head, d->head_bytes, (off_t)i * (off_t)d->slot_bytes);
		struct kvp_disk_meta m;
		struct entry *old, *e;

		if (r != (ssize_t)d->head_bytes ||
		    !slot_decode(head, d->cfg.block_tokens, d->cfg.block_bytes, &h, d->scratch) ||
		    h.fingerprint != d->fingerprint) {
			d->free_slots[d->n_free++] = i;
			continue;
		}
		m = (struct kvp_disk_meta){ .key = h.key, .parent = h.parent, .root = h.root };
		old = disk_find(d, h.key, h.root);
		if (old && old->seq > h.seq) {
			d->free_slots[d->n_free++] = i;
			continue;
		}
		if (old)
			disk_drop(d, old);
		e = disk_new_entry(d, &m, tokens_checksum(d->scratch, d->cfg.block_tokens), i, h.seq);
		if (!e) {
			free(head);
			return KVP_ENOMEM;
		}
		d->st.used++;
		disk_link(d, e, d->scratch);
		if (h.seq >= d->next_seq)
			d->next_seq = h.seq + 1;
	}
	free(head);
	return KVP_OK;
}

static int alloc_index(struct kvp_disk *d)
{
	size_t nb = 16;

	while (nb < d->n_slots)
		nb *= 2;
	d->mask = nb - 1;
	d->by_slot = calloc(d->n_slots, sizeof(*d->by_slot));
	d->free_slots = calloc(d->n_slots, sizeof(*d->free_slots));
	d->buckets = calloc(nb, sizeof(*d->buckets));
	d->pbuckets = calloc(nb, sizeof(*d->pbuckets));
	d->scratch = calloc(d->cfg.block_tokens, sizeof(*d->scratch));
	d->pass_tokens = calloc(d->cfg.block_tokens, sizeof(*d->pass_tokens));
	d->lru.prev = d->lru.next = &d->lru;
	d->queue_tail = &d->queue;
	return d->by_slot && d->free_slots && d->buckets && d->pbuckets && d->scratch &&
			       d->pass_tokens
		       ? KVP_OK
		       : KVP_ENOMEM;
}

/* Blocks file sized, manifest in place; *cold when what was there is not used. */
static int open_files(struct kvp_disk *d, const struct kvp_disk_config *cfg, bool *cold,
		      char *why, size_t whylen)
{
	char mpath[4096], bpath[4096], want[MANIFEST_MAX], found[MANIFEST_MAX];
	const off_t size = (off_t)d->n_slots * (off_t)d->slot_bytes;

	if ((size_t)snprintf(mpath, sizeof(mpath), "%s/manifest", cfg->dir) >= sizeof(mpath) ||
	    (size_t)snprintf(bpath, sizeof(bpath), "%s/blocks", cfg->dir) >= sizeof(bpath) ||
	    manifest_text(want, sizeof(want), cfg->model, cfg->block_tokens, cfg->kv_dtype,
			  cfg->block_bytes, d->slot_bytes)) {
		errno = ENAMETOOLONG;
		return fail(KVP_EINVAL, why, whylen, "disk tier %s: %s", cfg->dir);
	}
	if (mkdir(cfg->dir, 0700) != 0 && errno != EEXIST)
		return fail(KVP_EIO, why, whylen, "cannot create the disk tier's directory %s: %s",
			    cfg->dir);
	if (read_manifest(mpath, found, sizeof(found)) != 0)
		return fail(KVP_EIO, why, whylen, "cannot read %s: %s", mpath);
	*cold = strcmp(found, want) != 0;
	if (*cold && why)
		explain(cfg->dir, found, want, why, whylen);
	else if (why)
		why[0] = '\0';
	d->fd = open(bpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (d->fd < 0)
		return fail(KVP_EIO, why, whylen, "cannot open %s: %s", bpath);
	if (*cold) {
		/* nothing of the old slots may be read as this model's: gone before the new
		 * manifest says they are */
		if ((unlink(mpath) != 0 && errno != ENOENT) || ftruncate(d->fd, 0) != 0)
			return fail(KVP_EIO, why, whylen, "cannot reset the disk tier in %s: %s",
				    cfg->dir);
	}
	if (ftruncate(d->fd, size) != 0)
		return fail(KVP_EIO, why, whylen, "cannot size %s: %s", bpath);
	if (*cold && write_manifest(mpath, want) != 0)
		return fail(KVP_EIO, why, whylen, "cannot write %s: %s", mpath);
	return KVP_OK;
}

int kvp_disk_open(const struct kvp_disk_config *cfg, struct kvp_disk **out, char *why,
		  size_t whylen)
{
	struct kvp_disk *d;
	bool cold = true;
	int rc;

	if (why && whylen)
		why[0] = '\0';
	if (!cfg->model || !cfg->kv_dtype || cfg->block_tokens == 0 ||
	    cfg->block_tokens > KVP_BLOCK_TOKENS_MAX || cfg->block_bytes == 0)
		return KVP_EINVAL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return KVP_ENOMEM;
	d->fd = -1;
	d->cfg = *cfg;
	d->cfg.dir = d->cfg.model = d->cfg.kv_dtype = NULL;   /* the caller's, open only */
	d->fingerprint = tier_fingerprint(cfg->model, cfg->block_tokens, cfg->kv_dtype,
					  cfg->block_bytes);
	d->head_bytes = slot_head_bytes(cfg->block_tokens);
	d->slot_bytes = slot_bytes(cfg->block_tokens, cfg->block_bytes);
	if (cfg->capacity_bytes / d->slot_bytes == 0 ||
	    cfg->capacity_bytes / d->slot_bytes > UINT32_MAX) {
		if (why)
			snprintf(why, whylen, "a disk tier of %llu bytes holds no block of %zu bytes",
				 (unsigned long long)cfg->capacity_bytes, d->slot_bytes);
		free(d);
		return KVP_EINVAL;
	}
	d->n_slots = (uint32_t)(cfg->capacity_bytes / d->slot_bytes);
	if (d->cfg.staging_bytes < d->head_bytes + cfg->block_bytes)
		d->cfg.staging_bytes = d->head_bytes + cfg->block_bytes;
	rc = alloc_index(d);
	if (rc == KVP_OK && cfg->dir) {
		rc = open_files(d, cfg, &cold, why, whylen);
	} else if (rc == KVP_OK) {   /* memory mode: the slots in an allocation of its own */
		d->mem = malloc((size_t)d->n_slots * d->slot_bytes);
		rc = d->mem ? KVP_OK : KVP_ENOMEM;
	}
	if (rc == KVP_OK && pthread_mutex_init(&d->mu, NULL) != 0)
		rc = KVP_ENOMEM;
	else if (rc == KVP_OK && (pthread_cond_init(&d->wake, NULL) != 0 ||
				  pthread_cond_init(&d->idle, NULL) != 0))
		rc = KVP_ENOMEM;   /* (conds are not destroyed: a failed init holds nothing) */
	if (rc == KVP_OK) {
		if (cold)
			for (uint32_t i = d->n_slots; i-- > 0;)
				d->free_slots[d->n_free++] = i;
		else
			rc = scan(d);
		d->st.warm_blocks = d->st.used;
	}
	if (rc == KVP_OK && pthread_create(&d->thread, NULL, disk_io_main, d) != 0)
		rc = KVP_ENOMEM;
	if (rc) {
		disk_free(d);
		return rc;
	}
	*out = d;
	return KVP_OK;
}
