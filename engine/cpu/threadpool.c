/*
 * threadpool.c - persistent compute threads with low dispatch latency.
 *
 * Two kinds of run. kvp_threadpool_run: fn(arg, ith, n) once on each thread, the caller
 * as ith 0, and it returns when every worker is done:
 *
 *   caller (ith 0)                          worker ith (1 .. n-1)
 *   fn, arg = ...                           loop:
 *   pending = n - 1                           spin while gen == seen (pause, ~0.2 ms)
 *   gen += 2         ───────────────────▶     then futex_wait(gen, seen) (sleepers++)
 *   if sleepers: futex_wake(gen)              seen = gen; if stop: exit
 *   fn(arg, 0, n)                             fn(arg, ith, n)
 *   spin while pending, then               ◀─ if --pending == 0: done++,
 *   futex_wait(done) (waiting = 1)               futex_wake(done) if waiting
 *
 * kvp_threadpool_run_tasks: fn(arg, t, ntasks) for t = 0..ntasks-1, each task taken by
 * whichever thread comes for it first (the caller included), and it returns when every
 * task is done, not every thread: a worker that a busy machine left without a core
 * costs the tasks it had started, not the whole run, and an uneven split evens out.
 * Its gen is odd; the tasks are claimed from one word, claim = gen << 32 | ntasks << 16
 * | next (a compare-and-swap that fails once another run has begun), and finished
 * counts the tasks done; the last one bumps done as above.
 *
 * gen, claim and done are each on their own cache line. Every load and store on them is
 * seq_cst, so "publish, then check the other side's flag" pairs (gen / sleepers,
 * pending-- or finished++ / waiting) cannot both miss: either the waker sees the
 * sleeper or the sleeper's futex_wait sees the changed word. A worker learns a run's
 * kind from the gen it saw, so one that wakes late never mistakes the next run's kind.
 * Spinning yields the CPU now and then, so an oversubscribed pool (more threads than
 * cores) still progresses.
 *
 * Scratch: one growable 64-byte aligned buffer per thread (kvp_threadpool_scratch).
 */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "cpu_impl.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#define KVP_POOL_MAX_THREADS 1024
#define KVP_POOL_SPIN_NS 200000 /* how long a waiter spins before it sleeps */

#define KVP_POOL_ALLOC(sz) malloc(sz)
#define KVP_POOL_FREE(p) free(p)

struct pool_slot {
	void *buf;              /* (cap) bytes, 64-byte aligned */
	size_t cap;
	char pad[64 - sizeof(void *) - sizeof(size_t)];
};

struct kvp_threadpool {
	int n;                                  /* threads including the caller */
	pthread_t *threads;                     /* (n - 1) workers */
	struct pool_slot *slots;                /* (n + 1) per-thread scratch, then the
						   caller's own (KVP_POOL_CALLER_SLOT) */
	void (*fn)(void *arg, int ith, int nth);
	void *arg;
	_Alignas(64) _Atomic uint32_t gen;      /* futex: + 2 a run; odd for tasks */
	_Atomic int sleepers;
	_Atomic int stop;
	_Alignas(64) _Atomic uint64_t claim;    /* tasks: gen << 32 | ntasks << 16 | next */
	_Atomic uint32_t finished;              /* tasks of this run done */
	_Alignas(64) _Atomic int pending;       /* workers still running this gen */
	_Atomic uint32_t done;                  /* futex: bumped when the run is done */
	_Atomic int waiting;                    /* the caller sleeps on done */
};

struct worker_arg {
	struct kvp_threadpool *tp;
	int ith;
};

static long futex(_Atomic uint32_t *word, int op, uint32_t val)
{
	return syscall(SYS_futex, (uint32_t *)word, op, val, NULL, NULL, 0);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Spin until *word != seen or the spin budget is spent; returns the last value read. */
static uint32_t spin_while_equal(_Atomic uint32_t *word, uint32_t seen)
{
	uint64_t t0 = 0;
	for (unsigned i = 1;; i++) {
		uint32_t v = atomic_load_explicit(word, memory_order_acquire);
		if (v != seen)
			return v;
		cpu_relax();
		if ((i & 255) == 0) {
			uint64_t t = now_ns();
			if (t0 == 0)
				t0 = t;
			else if (t - t0 > KVP_POOL_SPIN_NS)
				return v;
			sched_yield();
		}
	}
}

/* The run is done: the caller, if it sleeps, is woken. */
static void run_done(struct kvp_threadpool *tp)
{
	atomic_fetch_add(&tp->done, 1);
	if (atomic_load(&tp->waiting))
		futex(&tp->done, FUTEX_WAKE_PRIVATE, 1);
}

/* Take tasks of run g until none is left (or another run has begun). */
static void run_tasks(struct kvp_threadpool *tp, uint32_t g)
{
	uint64_t c = atomic_load(&tp->claim);

	for (;;) {
		const uint32_t next = (uint32_t)(c & 0xffff), ntasks = (uint32_t)(c >> 16) & 0xffff;

		if ((uint32_t)(c >> 32) != g || next >= ntasks)
			return;
		if (!atomic_compare_exchange_weak(&tp->claim, &c, c + 1))
			continue;   /* c holds the word now */
		/* task next is ours: the run cannot end, nor fn and arg change, before it does */
		tp->fn(tp->arg, (int)next, (int)ntasks);
		if (atomic_fetch_add(&tp->finished, 1) + 1 == ntasks)
			run_done(tp);
		c = atomic_load(&tp->claim);
	}
}

static void *worker_main(void *p)
{
	struct worker_arg *wa = p;
	struct kvp_threadpool *tp = wa->tp;
	int ith = wa->ith;
	uint32_t seen = 0;

	free(wa);
	for (;;) {
		uint32_t g = spin_while_equal(&tp->gen, seen);
		if (g == seen) {
			atomic_fetch_add(&tp->sleepers, 1);
			while ((g = atomic_load(&tp->gen)) == seen)
				futex(&tp->gen, FUTEX_WAIT_PRIVATE, seen);
			atomic_fetch_sub(&tp->sleepers, 1);
		}
		seen = g;
		if (atomic_load(&tp->stop))
			break;
		if (g & 1) {
			run_tasks(tp, g);
			continue;
		}
		tp->fn(tp->arg, ith, tp->n);
		if (atomic_fetch_sub(&tp->pending, 1) == 1)
			run_done(tp);
	}
	return NULL;
}

/* Publish run gen g (the next even value, or the next odd one for tasks). */
static uint32_t next_gen(const struct kvp_threadpool *tp, bool tasks)
{
	return ((atomic_load(&tp->gen) >> 1) + 1) << 1 | (tasks ? 1u : 0u);
}

static void wake_workers(struct kvp_threadpool *tp, uint32_t g)
{
	atomic_store(&tp->gen, g);
	if (atomic_load(&tp->sleepers) > 0)
		futex(&tp->gen, FUTEX_WAKE_PRIVATE, INT_MAX);
}

int kvp_threadpool_create(int n_threads, struct kvp_threadpool **out)
{
	struct kvp_threadpool *tp;
	int i, err = KVP_ENOMEM;

	*out = NULL;
	if (n_threads < 1 || n_threads > KVP_POOL_MAX_THREADS)
		return KVP_EINVAL;
	tp = KVP_POOL_ALLOC(sizeof(*tp));
	if (!tp)
		return KVP_ENOMEM;
	memset(tp, 0, sizeof(*tp));
	tp->n = n_threads;
	tp->slots = KVP_POOL_ALLOC(sizeof(*tp->slots) * ((size_t)n_threads + 1));
	if (!tp->slots)
		goto out_free_tp;
	memset(tp->slots, 0, sizeof(*tp->slots) * ((size_t)n_threads + 1));
	tp->threads = KVP_POOL_ALLOC(sizeof(*tp->threads) * (size_t)n_threads);
	if (!tp->threads)
		goto out_free_slots;
	for (i = 1; i < n_threads; i++) {
		struct worker_arg *wa = KVP_POOL_ALLOC(sizeof(*wa));
		if (!wa) {
			err = KVP_ENOMEM;
			goto out_stop;
		}
		wa->tp = tp;
		wa->ith = i;
		if (pthread_create(&tp->threads[i - 1], NULL, worker_main, wa) != 0) {
			KVP_POOL_FREE(wa);
			err = KVP_EIO;
			goto out_stop;
		}
	}
	*out = tp;
	return KVP_OK;

out_stop:
	atomic_store(&tp->stop, 1);
	wake_workers(tp, next_gen(tp, false));
	while (--i >= 1)
		pthread_join(tp->threads[i - 1], NULL);
	KVP_POOL_FREE(tp->threads);
out_free_slots:
	KVP_POOL_FREE(tp->slots);
out_free_tp:
	KVP_POOL_FREE(tp);
	return err;
}

void kvp_threadpool_destroy(struct kvp_threadpool *tp)
{
	if (!tp)
		return;
	atomic_store(&tp->stop, 1);
	wake_workers(tp, next_gen(tp, false));
	for (int i = 1; i < tp->n; i++)
		pthread_join(tp->threads[i - 1], NULL);
	for (int i = 0; i <= tp->n; i++)
		free(tp->slots[i].buf);
	KVP_POOL_FREE(tp->threads);
	KVP_POOL_FREE(tp->slots);
	KVP_POOL_FREE(tp);
}

int kvp_threadpool_size(const struct kvp_threadpool *tp)
{
	return tp ? tp->n : 1;
}

/* Wait until the run is over: over() true, checked around each look at done. */
static void wait_run(struct kvp_threadpool *tp, bool (*over)(struct kvp_threadpool *tp))
{
	uint32_t d;

	if (over(tp))
		return;
	d = atomic_load(&tp->done);
	if (over(tp))
		return;
	spin_while_equal(&tp->done, d);
	if (over(tp))
		return;
	atomic_store(&tp->waiting, 1);
	for (;;) {
		d = atomic_load(&tp->done);
		if (over(tp))
			break;
		futex(&tp->done, FUTEX_WAIT_PRIVATE, d);
	}
	atomic_store(&tp->waiting, 0);
}

static bool workers_done(struct kvp_threadpool *tp)
{
	return atomic_load(&tp->pending) == 0;
}

static bool tasks_done(struct kvp_threadpool *tp)
{
	return atomic_load(&tp->finished) == (uint32_t)(atomic_load(&tp->claim) >> 16 & 0xffff);
}

void kvp_threadpool_run(struct kvp_threadpool *tp, void (*fn)(void *arg, int ith, int nth),
			void *arg)
{
	if (tp->n == 1) {
		fn(arg, 0, 1);
		return;
	}
	tp->fn = fn;
	tp->arg = arg;
	atomic_store(&tp->pending, tp->n - 1);
	wake_workers(tp, next_gen(tp, false));
	fn(arg, 0, tp->n);
	wait_run(tp, workers_done);
}

void kvp_threadpool_run_tasks(struct kvp_threadpool *tp,
			      void (*fn)(void *arg, int t, int ntasks), void *arg, int ntasks)
{
	uint32_t g;

	assert(ntasks >= 0 && ntasks <= KVP_POOL_MAX_TASKS);
	if (tp->n == 1 || ntasks <= 1) {
		for (int t = 0; t < ntasks; t++)
			fn(arg, t, ntasks);
		return;
	}
	g = next_gen(tp, true);
	tp->fn = fn;
	tp->arg = arg;
	atomic_store(&tp->finished, 0);
	atomic_store(&tp->claim, (uint64_t)g << 32 | (uint64_t)ntasks << 16);
	wake_workers(tp, g);
	run_tasks(tp, g);
	wait_run(tp, tasks_done);
}

void *kvp_threadpool_scratch(struct kvp_threadpool *tp, int ith, size_t bytes)
{
	struct pool_slot *s = &tp->slots[ith == KVP_POOL_CALLER_SLOT ? tp->n : ith];
	if (s->cap >= bytes)
		return s->buf;
	size_t cap = (bytes + 65535) & ~(size_t)65535;
	void *p = aligned_alloc(64, cap);
	if (!p)
		return NULL;
	free(s->buf);
	s->buf = p;
	s->cap = cap;
	return p;
}

void kvp_cpu_parallel(struct kvp_threadpool *tp, void (*fn)(void *arg, int ith, int nth),
		      void *arg)
{
	if (tp)
		kvp_threadpool_run_tasks(tp, fn, arg, tp->n);
	else
		fn(arg, 0, 1);
}
