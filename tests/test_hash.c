/*
 * test_hash.c - the hash spec of docs/hashing.md: known answers, chaining, namespaces.
 *
 * The known-answer vectors are written here AND must appear in docs/hashing.md, so the
 * document and the code cannot drift apart silently. Independently of hash.c, every
 * block key is also recomputed from a hand-built byte buffer with the xxHash library's
 * own XXH3_128bits (not inlined), for every block size path hash.c has.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "kvp_index.h"

#ifndef KVP_DOCS_DIR
#error "KVP_DOCS_DIR must name the docs/ directory"
#endif

/* ---- helpers ----------------------------------------------------------------------- */

static void key_hex(struct kvp_key k, char out[33])
{
	snprintf(out, 33, "%016llx%016llx", (unsigned long long)k.hi, (unsigned long long)k.lo);
}

static void assert_key(struct kvp_key k, const char *want, const char *what)
{
	char got[33];

	key_hex(k, got);
	cr_assert_str_eq(got, want, "%s: got %s, want %s", what, got, want);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng(void)
{
	/* xorshift64*: deterministic, so failures reproduce */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1Dull;
}

/* The reference: the layout of docs/hashing.md built byte by byte, hashed by the
 * library (xxhash.h without XXH_INLINE_ALL: the shared object's XXH3_128bits). */
static struct kvp_key ref_block_key(struct kvp_key parent, const uint32_t *t, uint32_t n)
{
	size_t len = 16 + 4 * (size_t)n;
	unsigned char *buf = malloc(len);
	XXH128_hash_t h;
	struct kvp_key k;

	cr_assert_not_null(buf);
	for (int i = 0; i < 8; i++) {
		buf[i] = (unsigned char)(parent.hi >> (56 - 8 * i));
		buf[8 + i] = (unsigned char)(parent.lo >> (56 - 8 * i));
	}
	for (uint32_t i = 0; i < n; i++) {
		buf[16 + 4 * i + 0] = (unsigned char)t[i];
		buf[16 + 4 * i + 1] = (unsigned char)(t[i] >> 8);
		buf[16 + 4 * i + 2] = (unsigned char)(t[i] >> 16);
		buf[16 + 4 * i + 3] = (unsigned char)(t[i] >> 24);
	}
	h = XXH3_128bits(buf, len);
	free(buf);
	k.lo = h.low64;
	k.hi = h.high64;
	return k;
}

static struct kvp_key ref_ns_root(const char *model, uint32_t tenant, const char *adapter)
{
	unsigned char buf[512];
	size_t n = 0, lm = strlen(model), la = strlen(adapter);
	XXH128_hash_t h;
	struct kvp_key k;

	cr_assert(14 + 12 + lm + la <= sizeof(buf));
	memcpy(buf, "kvprefix/ns/v1", 14);
	n = 14;
	for (int i = 0; i < 4; i++)
		buf[n++] = (unsigned char)(lm >> (8 * i));
	memcpy(buf + n, model, lm);
	n += lm;
	for (int i = 0; i < 4; i++)
		buf[n++] = (unsigned char)(tenant >> (8 * i));
	for (int i = 0; i < 4; i++)
		buf[n++] = (unsigned char)(la >> (8 * i));
	memcpy(buf + n, adapter, la);
	n += la;
	h = XXH3_128bits(buf, n);
	k.lo = h.low64;
	k.hi = h.high64;
	return k;
}

/* ---- known answers ------------------------------------------------------------------ */

#define KAT_ROOT "1cc8e78ef089d0cd094f0d90a1a0fb3c"
#define KAT_ROOT_EMPTY "7eef301254d1ecdca1a01f27fad6341d"
#define KAT_ROOT_ADAPTER "bc224a7a783106d3fe53a57eea42ff5d"
#define KAT_ROOT_TENANT "cb3c79ccb0c2fb63996989b63004390b"
#define KAT_B4_K0 "43da313b6d462a78279d85a1d5ab3a7d"
#define KAT_B4_K1 "21169c41a08a9338f1ba71c2f23adb55"
#define KAT_B16_K0 "e02b33cfbf595810f7b333c899575ae3"
#define KAT_B16_K1 "e29d7ab82efa5586f7a6e92c0f74d2be"
#define KAT_B1_K0 "d4e99ad37dae6931c683112585bc8da9"
#define KAT_B3_ZERO "185da03525d975c3051a595ce92e6113"

static const char *const kat_all[] = {
	KAT_ROOT, KAT_ROOT_EMPTY, KAT_ROOT_ADAPTER, KAT_ROOT_TENANT, KAT_B4_K0,
	KAT_B4_K1, KAT_B16_K0, KAT_B16_K1, KAT_B1_K0, KAT_B3_ZERO,
};

Test(hash_kat, namespace_roots)
{
	assert_key(kvp_ns_root("llama-test", 1000, ""), KAT_ROOT, "root(llama-test,1000,\"\")");
	assert_key(kvp_ns_root("llama-test", 1000, NULL), KAT_ROOT, "NULL adapter");
	assert_key(kvp_ns_root("", 0, ""), KAT_ROOT_EMPTY, "root(\"\",0,\"\")");
	assert_key(kvp_ns_root(NULL, 0, NULL), KAT_ROOT_EMPTY, "root(NULL,0,NULL)");
	assert_key(kvp_ns_root("llama-test", 1000, "lora-a"), KAT_ROOT_ADAPTER, "adapter");
	assert_key(kvp_ns_root("llama-test", 1001, ""), KAT_ROOT_TENANT, "tenant 1001");
}

Test(hash_kat, block_keys)
{
	struct kvp_key root = kvp_ns_root("llama-test", 1000, "");
	const uint32_t b4[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	const uint32_t b1[1] = { 42 };
	const uint32_t b3[3] = { 0xffffffffu, 0x80000000u, 128255 };
	const struct kvp_key zero = { 0, 0 };
	uint32_t b16[32];
	struct kvp_key k[2], k0;

	k0 = kvp_block_key(root, b4, 4);
	assert_key(k0, KAT_B4_K0, "B=4 k0");
	assert_key(kvp_block_key(k0, b4 + 4, 4), KAT_B4_K1, "B=4 k1");
	kvp_chain_keys(root, b4, 2, 4, k);
	assert_key(k[0], KAT_B4_K0, "chain B=4 k0");
	assert_key(k[1], KAT_B4_K1, "chain B=4 k1");

	for (uint32_t i = 0; i < 32; i++)
		b16[i] = i;
	k0 = kvp_block_key(root, b16, 16);
	assert_key(k0, KAT_B16_K0, "B=16 k0");
	assert_key(kvp_block_key(k0, b16 + 16, 16), KAT_B16_K1, "B=16 k1");
	kvp_chain_keys(root, b16, 2, 16, k);
	assert_key(k[0], KAT_B16_K0, "chain B=16 k0");
	assert_key(k[1], KAT_B16_K1, "chain B=16 k1");

	assert_key(kvp_block_key(root, b1, 1), KAT_B1_K0, "B=1 k0");
	assert_key(kvp_block_key(zero, b3, 3), KAT_B3_ZERO, "B=3 under zero parent");
}

Test(hash_kat, vectors_match_the_reference_computation)
{
	/* The same vectors from hand-built buffers and the library's XXH3_128bits. */
	struct kvp_key root = ref_ns_root("llama-test", 1000, "");
	const uint32_t b4[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };

	assert_key(root, KAT_ROOT, "reference root");
	assert_key(ref_ns_root("", 0, ""), KAT_ROOT_EMPTY, "reference empty root");
	assert_key(ref_ns_root("llama-test", 1000, "lora-a"), KAT_ROOT_ADAPTER, "ref adapter");
	assert_key(ref_block_key(root, b4, 4), KAT_B4_K0, "reference B=4 k0");
	assert_key(ref_block_key(ref_block_key(root, b4, 4), b4 + 4, 4), KAT_B4_K1,
		   "reference B=4 k1");
}

Test(hash_kat, docs_contain_the_vectors)
{
	const char *path = KVP_DOCS_DIR "/hashing.md";
	FILE *f = fopen(path, "rb");
	char *text;
	long len;

	cr_assert_not_null(f, "cannot open %s", path);
	cr_assert_eq(fseek(f, 0, SEEK_END), 0);
	len = ftell(f);
	cr_assert(len > 0);
	rewind(f);
	text = malloc((size_t)len + 1);
	cr_assert_not_null(text);
	cr_assert_eq(fread(text, 1, (size_t)len, f), (size_t)len);
	text[len] = '\0';
	fclose(f);
	for (size_t i = 0; i < sizeof(kat_all) / sizeof(kat_all[0]); i++)
		cr_assert_not_null(strstr(text, kat_all[i]), "%s lacks vector %s", path,
				   kat_all[i]);
	/* and the layout it promises */
	cr_assert_not_null(strstr(text, "kvprefix/ns/v1"));
	free(text);
}

/* ---- against the reference, every path ---------------------------------------------- */

Test(hash, block_key_equals_reference_for_all_sizes)
{
	/* 1..64 covers the short buffer path, B=16's in-place path, B=32's constant path
	 * and the first long sizes (57+ tokens); then a few large ones up to the maximum. */
	static const uint32_t large[] = { 100, 255, 256, 1000, 1024, 4095, 4096 };
	uint32_t *t = malloc(KVP_BLOCK_TOKENS_MAX * sizeof(*t));

	cr_assert_not_null(t);
	for (uint32_t n = 0; n <= 64 + sizeof(large) / sizeof(large[0]); n++) {
		uint32_t b = n <= 64 ? n : large[n - 65];

		for (int rep = 0; rep < 8; rep++) {
			struct kvp_key parent = { rng(), rng() };

			for (uint32_t i = 0; i < b; i++)
				t[i] = (uint32_t)rng();
			cr_assert(kvp_key_eq(kvp_block_key(parent, t, b),
					     ref_block_key(parent, t, b)),
				  "B=%u differs from the reference", b);
		}
	}
	free(t);
}

Test(hash, ns_root_equals_reference)
{
	static const char *const models[] = { "", "m", "llama-3-8b@sha256:0123", "ab" };
	static const char *const adapters[] = { "", "a", "lora/xyz" };

	for (size_t i = 0; i < 4; i++)
		for (size_t j = 0; j < 3; j++)
			for (uint32_t t = 0; t < 3; t++) {
				uint32_t tenant = t == 2 ? 0xffffffffu : t;

				cr_assert(kvp_key_eq(kvp_ns_root(models[i], tenant, adapters[j]),
						     ref_ns_root(models[i], tenant, adapters[j])));
			}
}

/* ---- properties ------------------------------------------------------------------------ */

Test(hash, chain_equals_iterated_block_keys)
{
	static const uint32_t sizes[] = { 1, 2, 3, 4, 7, 15, 16, 17, 31, 32, 33, 56, 57, 64,
					  128, 512, 4096 };
	uint32_t *t = malloc(3 * KVP_BLOCK_TOKENS_MAX * sizeof(*t) + 64);
	struct kvp_key *out = malloc(300 * sizeof(*out));

	cr_assert(t && out);
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		uint32_t b = sizes[s];
		size_t nb = b >= 512 ? 3 : 300 / b + 1;
		struct kvp_key root = kvp_ns_root("chain", (uint32_t)s, NULL), k = root;

		if (nb > 300)
			nb = 300;
		for (size_t i = 0; i < nb * b; i++)
			t[i] = (uint32_t)rng() % 50000u;
		kvp_chain_keys(root, t, nb, b, out);
		for (size_t i = 0; i < nb; i++) {
			k = kvp_block_key(k, t + i * b, b);
			cr_assert(kvp_key_eq(k, out[i]), "B=%u block %zu", b, i);
		}
		/* zero blocks writes nothing */
		out[0] = root;
		kvp_chain_keys(root, t, 0, b, out + 1);
		cr_assert(kvp_key_eq(out[0], root));
	}
	free(t);
	free(out);
}

Test(hash, chain_depends_on_every_earlier_block)
{
	uint32_t t[64];
	struct kvp_key a[16], b[16];
	struct kvp_key root = kvp_ns_root("m", 1, "");

	for (uint32_t i = 0; i < 64; i++)
		t[i] = i * 7;
	kvp_chain_keys(root, t, 16, 4, a);
	t[5] ^= 1;      /* block 1 */
	kvp_chain_keys(root, t, 16, 4, b);
	cr_assert(kvp_key_eq(a[0], b[0]));
	for (int i = 1; i < 16; i++)
		cr_assert(!kvp_key_eq(a[i], b[i]), "block %d did not change", i);
}

Test(hash, namespaces_separate)
{
	struct kvp_key base = kvp_ns_root("llama", 7, "lora");
	uint32_t t[4] = { 1, 2, 3, 4 };

	cr_assert(!kvp_key_eq(base, kvp_ns_root("llamb", 7, "lora")), "model");
	cr_assert(!kvp_key_eq(base, kvp_ns_root("llama", 8, "lora")), "tenant");
	cr_assert(!kvp_key_eq(base, kvp_ns_root("llama", 7, "lorb")), "adapter");
	cr_assert(!kvp_key_eq(base, kvp_ns_root("llama", 7, "")), "no adapter");
	/* the length prefixes keep the fields apart */
	cr_assert(!kvp_key_eq(kvp_ns_root("ab", 7, ""), kvp_ns_root("a", 7, "b")));
	cr_assert(!kvp_key_eq(kvp_ns_root("", 7, "x"), kvp_ns_root("x", 7, "")));
	/* and so do the first blocks under them */
	cr_assert(!kvp_key_eq(kvp_block_key(base, t, 4),
			      kvp_block_key(kvp_ns_root("llama", 8, "lora"), t, 4)));
}

Test(hash, deterministic_and_position_independent)
{
	uint32_t *a = malloc(4096 * sizeof(*a)), *b = malloc((4096 + 3) * sizeof(*b));
	struct kvp_key root = kvp_ns_root("det", 3, "x");

	cr_assert(a && b);
	for (uint32_t i = 0; i < 4096; i++)
		a[i] = b[i + 3] = (uint32_t)rng();
	for (uint32_t n = 1; n <= 4096; n = n * 2 + 1) {
		struct kvp_key k1 = kvp_block_key(root, a, n);

		cr_assert(kvp_key_eq(k1, kvp_block_key(root, a, n)));
		cr_assert(kvp_key_eq(k1, kvp_block_key(root, b + 3, n)), "n=%u", n);
	}
	cr_assert(kvp_key_eq(kvp_ns_root("det", 3, "x"), root));
	free(a);
	free(b);
}

Test(hash, token_order_and_width_matter)
{
	const uint32_t x[4] = { 1, 2, 3, 4 }, y[4] = { 2, 1, 3, 4 };
	const uint32_t hi[1] = { 0x00010000u }, lo[1] = { 0x00000001u };
	struct kvp_key root = kvp_ns_root("w", 0, NULL);

	cr_assert(!kvp_key_eq(kvp_block_key(root, x, 4), kvp_block_key(root, y, 4)));
	cr_assert(!kvp_key_eq(kvp_block_key(root, hi, 1), kvp_block_key(root, lo, 1)));
	cr_assert(!kvp_key_eq(kvp_block_key(root, x, 3), kvp_block_key(root, x, 4)));
}
