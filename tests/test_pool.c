/*
 * test_pool.c - the block pool against a trivial model (an array of states and
 * reference counts), with the invariant checked after every operation; host block
 * memory, whole blocks in and out by id, and kvp_pool_attach_device where no device
 * can be had (test_cuda covers device pools on a GPU).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "kvp_device.h"
#include "kvp_store.h"

static uint64_t rng_state = 0x1234567887654321ull;

static uint32_t rnd(uint32_t n)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state % n);
}

Test(pool, rejects_bad_capacity)
{
	struct kvp_pool *p;

	cr_assert_eq(kvp_pool_create(0, &p), KVP_EINVAL);
	cr_assert_eq(kvp_pool_create((1u << 31) + 1, &p), KVP_EINVAL);
}

Test(pool, lifecycle_and_illegal_transitions)
{
	struct kvp_pool *p;
	uint32_t a, b;

	cr_assert_eq(kvp_pool_create(2, &p), KVP_OK);
	cr_assert_eq(kvp_pool_alloc(p, &a), KVP_OK);
	cr_assert_eq(kvp_pool_alloc(p, &b), KVP_OK);
	cr_assert_neq(a, b);
	cr_assert_eq(kvp_pool_alloc(p, &b), KVP_EFULL);
	cr_assert_eq(kvp_pool_evict(p, a), KVP_EINVAL, "a referenced block cannot be evicted");
	cr_assert_eq(kvp_pool_unref(p, a), KVP_OK);
	cr_assert_eq(kvp_pool_state(p, a), KVP_BLOCK_CACHED);
	cr_assert_eq(kvp_pool_unref(p, a), KVP_EINVAL, "no reference left to drop");
	cr_assert_eq(kvp_pool_ref(p, a), KVP_OK);
	cr_assert_eq(kvp_pool_ref(p, a), KVP_OK);
	cr_assert_eq(kvp_pool_refs(p, a), 2);
	cr_assert_eq(kvp_pool_put(p, a), KVP_EINVAL, "put needs exactly one reference");
	cr_assert_eq(kvp_pool_unref(p, a), KVP_OK);
	cr_assert_eq(kvp_pool_unref(p, a), KVP_OK);
	cr_assert_eq(kvp_pool_evict(p, a), KVP_OK);
	cr_assert_eq(kvp_pool_ref(p, a), KVP_EINVAL, "a free block cannot be referenced");
	cr_assert_eq(kvp_pool_put(p, b), KVP_OK);
	cr_assert_eq(kvp_pool_ref(p, 7), KVP_EINVAL, "out of range id");
	struct kvp_pool_counts n = kvp_pool_counts(p);
	cr_assert_eq(n.free, 2);
	cr_assert_eq(kvp_pool_check(p), KVP_OK);
	kvp_pool_destroy(p);
}

Test(pool, random_operations_match_model)
{
	enum { CAP = 97, STEPS = 200000 };
	struct kvp_pool *p;
	uint8_t state[CAP] = { 0 };
	uint32_t refs[CAP] = { 0 };

	cr_assert_eq(kvp_pool_create(CAP, &p), KVP_OK);
	for (int step = 0; step < STEPS; step++) {
		uint32_t id = rnd(CAP), got;
		int rc, expect;

		switch (rnd(5)) {
		case 0: {
			int any_free = 0;
			for (int i = 0; i < CAP; i++)
				any_free |= state[i] == KVP_BLOCK_FREE;
			rc = kvp_pool_alloc(p, &got);
			cr_assert_eq(rc, any_free ? KVP_OK : KVP_EFULL);
			if (rc == KVP_OK) {
				cr_assert_eq(state[got], KVP_BLOCK_FREE, "alloc gave a busy block");
				state[got] = KVP_BLOCK_REFERENCED;
				refs[got] = 1;
			}
			break;
		}
		case 1:
			expect = state[id] == KVP_BLOCK_FREE ? KVP_EINVAL : KVP_OK;
			cr_assert_eq(kvp_pool_ref(p, id), expect);
			if (expect == KVP_OK) {
				state[id] = KVP_BLOCK_REFERENCED;
				refs[id]++;
			}
			break;
		case 2:
			expect = state[id] == KVP_BLOCK_REFERENCED ? KVP_OK : KVP_EINVAL;
			cr_assert_eq(kvp_pool_unref(p, id), expect);
			if (expect == KVP_OK && --refs[id] == 0)
				state[id] = KVP_BLOCK_CACHED;
			break;
		case 3:
			expect = state[id] == KVP_BLOCK_REFERENCED && refs[id] == 1 ? KVP_OK : KVP_EINVAL;
			cr_assert_eq(kvp_pool_put(p, id), expect);
			if (expect == KVP_OK) {
				state[id] = KVP_BLOCK_FREE;
				refs[id] = 0;
			}
			break;
		case 4:
			expect = state[id] == KVP_BLOCK_CACHED ? KVP_OK : KVP_EINVAL;
			cr_assert_eq(kvp_pool_evict(p, id), expect);
			if (expect == KVP_OK)
				state[id] = KVP_BLOCK_FREE;
			break;
		}
		cr_assert_eq(kvp_pool_check(p), KVP_OK, "invariant broken at step %d", step);
		cr_assert_eq(kvp_pool_state(p, id), state[id]);
		cr_assert_eq(kvp_pool_refs(p, id), refs[id]);
	}
	kvp_pool_destroy(p);
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static bool populate_supported(void)
{
	const size_t page = (size_t)sysconf(_SC_PAGESIZE);
	void *probe = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	bool ok;

	cr_assert_neq(probe, MAP_FAILED);
	ok = madvise(probe, page, MADV_POPULATE_WRITE) == 0 || errno != EINVAL;
	munmap(probe, page);
	return ok;
}

/* Resident pages of [p, p + len) (4 KiB pages). */
static size_t resident_pages(const uint8_t *p, size_t len)
{
	static unsigned char vec[(96u << 20) / 4096];
	size_t n = len / 4096, k = 0;

	cr_assert_leq(n, sizeof(vec));
	cr_assert_eq(mincore((void *)p, len, vec), 0, "mincore: %s", strerror(errno));
	for (size_t i = 0; i < n; i++)
		k += vec[i] & 1;
	return k;
}

/* A pool of nblocks blocks of bb bytes in *p, host memory attached; its first byte.
 * Skips the test on a kernel that cannot make memory resident. */
static uint8_t *attached_pool(size_t nblocks, size_t bb, struct kvp_pool **p)
{
	if (!populate_supported())
		cr_skip_test("this kernel has no MADV_POPULATE_WRITE (Linux 5.14): pools fault in as used");
	cr_assert_eq(sysconf(_SC_PAGESIZE), 4096, "the test counts 4 KiB pages");
	cr_assert_eq(kvp_pool_create((uint32_t)nblocks, p), KVP_OK);
	cr_assert_eq(kvp_pool_attach_memory(*p, bb), KVP_OK);
	return kvp_pool_block_data(*p, 0);
}

/* Host block memory is resident once attached (and zero): a request's first write to a
 * block is never a page fault. */
Test(pool, attached_memory_is_resident_and_zero)
{
	const size_t bb = 64 * 1024, nblocks = 64, pages = nblocks * bb / 4096;
	struct kvp_pool *p;
	uint8_t *data = attached_pool(nblocks, bb, &p);

	cr_assert_eq(resident_pages(data, nblocks * bb), pages,
		     "not every page is resident after attach");
	for (size_t i = 0; i < nblocks * bb; i += 4093)
		cr_assert_eq(data[i], 0, "byte %zu", i);
	kvp_pool_destroy(p);
}

/* Past its first 64 MiB, a pool is made resident by a thread of its own; destroy stops
 * one still at work. */
Test(pool, a_large_pool_becomes_resident_in_the_background)
{
	const size_t bb = 64 * 1024, nblocks = 1536, pages = nblocks * bb / 4096;   /* 96 MiB */
	struct kvp_pool *p;
	uint8_t *data = attached_pool(nblocks, bb, &p);
	size_t got = 0;

	cr_assert_eq(resident_pages(data, KVP_POOL_RESIDENT_AT_ATTACH),
		     KVP_POOL_RESIDENT_AT_ATTACH / 4096,
		     "the first 64 MiB are not resident when attach returns");
	/* the thread runs at nice 19: on a machine busy with other tests it gets little */
	for (int i = 0; i < 6000 && (got = resident_pages(data, nblocks * bb)) < pages; i++)
		usleep(10000);
	cr_assert_eq(got, pages, "%zu of %zu pages resident after 60 s", got, pages);
	kvp_pool_destroy(p);
	cr_assert_eq(kvp_pool_create(8192, &p), KVP_OK);   /* 512 MiB, destroyed at once */
	cr_assert_eq(kvp_pool_attach_memory(p, bb), KVP_OK);
	kvp_pool_destroy(p);
}

/* The nice value of another thread of this process with a nice value other than
 * mine, or INT_MIN when none has (field 19 of /proc/self/task/TID/stat). */
static int other_thread_nice(void)
{
	char path[300], buf[512];
	const int mine = getpriority(PRIO_PROCESS, (id_t)gettid());
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int found = INT_MIN;

	cr_assert_not_null(d);
	while (found == INT_MIN && (e = readdir(d))) {
		FILE *f;
		char *rp;
		int nice;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/stat", e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;   /* the thread ended */
		rp = fgets(buf, sizeof(buf), f) ? strrchr(buf, ')') : NULL;
		fclose(f);
		/* after "pid (comm)": state, then fields 4 .. 19 */
		if (rp && sscanf(rp + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %d",
				 &nice) == 1 && nice != mine)
			found = nice;
	}
	closedir(d);
	return found;
}

/* The thread that makes a pool resident runs at nice 19, so that a fresh daemon's first
 * requests get the cores first. */
Test(pool, the_background_population_runs_at_the_lowest_priority)
{
	struct kvp_pool *p;
	int nice = INT_MIN;

	if (!populate_supported())
		cr_skip_test("this kernel has no MADV_POPULATE_WRITE (Linux 5.14): no thread");
	cr_assert_eq(kvp_pool_create(8192, &p), KVP_OK);
	cr_assert_eq(kvp_pool_attach_memory(p, 128 * 1024), KVP_OK);   /* 1 GiB */
	for (int i = 0; i < 2000 && nice == INT_MIN; i++) {
		nice = other_thread_nice();
		if (nice == INT_MIN)
			usleep(500);
	}
	kvp_pool_destroy(p);
	cr_assert_eq(nice, 19, "no thread of the pool's at nice 19 (found %d)", nice);
}

Test(pool, attached_memory_is_per_block_and_stable)
{
	struct kvp_pool *p;
	uint32_t a, b;

	cr_assert_eq(kvp_pool_create(8, &p), KVP_OK);
	cr_assert_null(kvp_pool_block_data(p, 0), "index-only pools have no bytes");
	cr_assert_eq(kvp_pool_attach_memory(p, 4096 + 64), KVP_OK);
	cr_assert_eq(kvp_pool_attach_memory(p, 64), KVP_EINVAL, "attach once");
	cr_assert_eq(kvp_pool_block_bytes(p), 4096 + 64);
	cr_assert_eq(kvp_pool_alloc(p, &a), KVP_OK);
	cr_assert_eq(kvp_pool_alloc(p, &b), KVP_OK);
	uint8_t *da = kvp_pool_block_data(p, a), *db = kvp_pool_block_data(p, b);
	cr_assert_eq((uintptr_t)da % 64, 0);
	cr_assert_geq((size_t)(db > da ? db - da : da - db), 4096 + 64, "blocks do not overlap");
	memset(da, 0xAB, 4096 + 64);
	memset(db, 0xCD, 4096 + 64);
	cr_assert_eq(da[4096 + 63], 0xAB);
	cr_assert_null(kvp_pool_block_data(p, 8), "out of range");
	kvp_pool_destroy(p);
}

/* Whole blocks in and out of a host pool by id: the bytes block_data points at, no
 * neighbour touched, the pool's accounting untouched; bad ids and pools without memory
 * refused, and a refused call changes nothing. */
Test(pool, host_block_read_write)
{
	enum { CAP = 5 };
	const size_t bb = 4096 + 80;
	struct kvp_pool *p;
	uint32_t id[CAP];
	uint8_t *in = malloc(bb), *out = malloc(bb);

	cr_assert(in && out);
	cr_assert_eq(kvp_pool_create(4, &p), KVP_OK);
	cr_assert_not(kvp_pool_on_device(p), "an index-only pool has no device memory");
	cr_assert_eq(kvp_pool_block_read(p, 0, out), KVP_EINVAL, "index-only: no bytes to read");
	cr_assert_eq(kvp_pool_block_write(p, 0, in), KVP_EINVAL, "index-only: nowhere to write");
	kvp_pool_destroy(p);

	cr_assert_eq(kvp_pool_create(CAP, &p), KVP_OK);
	cr_assert_eq(kvp_pool_attach_memory(p, bb), KVP_OK);
	cr_assert_not(kvp_pool_on_device(p), "host memory");
	for (int i = 0; i < CAP; i++)
		cr_assert_eq(kvp_pool_alloc(p, &id[i]), KVP_OK);
	struct kvp_pool_counts before = kvp_pool_counts(p);
	for (int i = 0; i < CAP; i++) {
		for (size_t b = 0; b < bb; b++)
			in[b] = (uint8_t)(b * 7 + (size_t)id[i] * 31 + 1);
		cr_assert_eq(kvp_pool_block_write(p, id[i], in), KVP_OK);
		cr_assert(memcmp(kvp_pool_block_data(p, id[i]), in, bb) == 0,
			  "block %u: the written bytes are where block_data points", id[i]);
	}
	for (int i = 0; i < CAP; i++) {
		memset(out, 0, bb);
		cr_assert_eq(kvp_pool_block_read(p, id[i], out), KVP_OK);
		for (size_t b = 0; b < bb; b++)
			cr_assert_eq(out[b], (uint8_t)(b * 7 + (size_t)id[i] * 31 + 1),
				     "block %u byte %zu: a neighbour's write reached it", id[i], b);
	}
	/* bad ids: refused, nothing read or written */
	memset(in, 0xEE, bb);
	memset(out, 0x11, bb);
	cr_assert_eq(kvp_pool_block_write(p, CAP, in), KVP_EINVAL);
	cr_assert_eq(kvp_pool_block_write(p, UINT32_MAX, in), KVP_EINVAL);
	cr_assert_eq(kvp_pool_block_read(p, CAP, out), KVP_EINVAL);
	cr_assert_eq(out[0], 0x11, "a refused read wrote dst");
	cr_assert_eq(kvp_pool_block_read(p, id[CAP - 1], out), KVP_OK);
	cr_assert_neq(out[0], 0xEE, "a refused write reached a block");
	/* copies are not state changes */
	struct kvp_pool_counts after = kvp_pool_counts(p);
	cr_assert(memcmp(&before, &after, sizeof(before)) == 0);
	cr_assert_eq(kvp_pool_check(p), KVP_OK);
	/* a block's bytes outlive its state: evicted and taken again, they are still there */
	cr_assert_eq(kvp_pool_unref(p, id[2]), KVP_OK);
	cr_assert_eq(kvp_pool_evict(p, id[2]), KVP_OK);
	cr_assert_eq(kvp_pool_block_read(p, id[2], out), KVP_OK);
	cr_assert_eq(out[5], (uint8_t)(5 * 7 + (size_t)id[2] * 31 + 1));
	cr_assert_eq(kvp_pool_check(p), KVP_OK);
	kvp_pool_destroy(p);
	free(in);
	free(out);
}

/*
 * kvp_pool_attach_device where no device can be had: a build without CUDA refuses it
 * with KVP_EUNSUPPORTED; a CUDA build on a machine without a GPU fails to get device
 * memory (KVP_ENOMEM, or KVP_EIO / KVP_ENOTFOUND from the runtime). Either way the pool
 * is left as it was: no memory, not on the device, its accounting usable, and host
 * memory can still be attached.
 */
Test(pool, attach_device_without_a_device_fails_cleanly)
{
	char why[256] = "";
	struct kvp_pool *p;
	uint32_t a, b;
	uint8_t blk[256], out[256];
	int n = kvp_device_count(why, sizeof(why)), rc;

	if (n > 0)
		cr_skip_test("a CUDA device is present (%d): test_cuda covers device pools", n);
	cr_assert_eq(kvp_pool_create(6, &p), KVP_OK);
	cr_assert_eq(kvp_pool_alloc(p, &a), KVP_OK);
	rc = kvp_pool_attach_device(p, sizeof(blk));
	fprintf(stderr, "test_pool: kvp_pool_attach_device with no device (%s): %s\n", why,
		kvp_strerror(rc));
	cr_assert_lt(rc, 0, "a device pool with no device");
	if (!kvp_device_built())
		cr_assert_eq(rc, KVP_EUNSUPPORTED, "built without CUDA: %s", kvp_strerror(rc));
	else
		cr_assert(rc == KVP_ENOMEM || rc == KVP_EIO || rc == KVP_ENOTFOUND ||
			  rc == KVP_EUNSUPPORTED, "no device: %s", kvp_strerror(rc));
	cr_assert_not(kvp_pool_on_device(p));
	cr_assert_null(kvp_pool_block_data(p, a), "no memory after the failed attach");
	cr_assert_eq(kvp_pool_block_bytes(p), 0);
	cr_assert_eq(kvp_pool_block_read(p, a, out), KVP_EINVAL);
	/* the accounting still works */
	cr_assert_eq(kvp_pool_unref(p, a), KVP_OK);
	cr_assert_eq(kvp_pool_evict(p, a), KVP_OK);
	cr_assert_eq(kvp_pool_alloc(p, &b), KVP_OK);
	cr_assert_eq(kvp_pool_check(p), KVP_OK);
	/* and host memory attaches as to a fresh pool */
	cr_assert_eq(kvp_pool_attach_memory(p, sizeof(blk)), KVP_OK);
	cr_assert_not(kvp_pool_on_device(p));
	for (size_t i = 0; i < sizeof(blk); i++)
		blk[i] = (uint8_t)(i ^ 0x5A);
	cr_assert_eq(kvp_pool_block_write(p, b, blk), KVP_OK);
	cr_assert_eq(kvp_pool_block_read(p, b, out), KVP_OK);
	cr_assert(memcmp(blk, out, sizeof(blk)) == 0);
	cr_assert_lt(kvp_pool_attach_device(p, sizeof(blk)), 0, "memory is attached already");
	cr_assert_not(kvp_pool_on_device(p));
	cr_assert_eq(kvp_pool_block_read(p, b, out), KVP_OK);
	cr_assert(memcmp(blk, out, sizeof(blk)) == 0, "a refused attach touched the memory");
	cr_assert_eq(kvp_pool_put(p, b), KVP_OK);
	cr_assert_eq(kvp_pool_check(p), KVP_OK);
	kvp_pool_destroy(p);
}
