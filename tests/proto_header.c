/*
 * proto_header.c - the frame header of the codec (proto/kvp_proto.h): magic, versions 1
 * and 2 (ADMIN only in 2), flags, every type byte in every version, payload limit, short
 * input.
 *
 * One of the proto_*.c files of test_proto; proto_test_util.h has what they share.
 */
#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>

#include "kvp_proto.h"
#include "proto_test_util.h"

/* ---- header ----------------------------------------------------------------------------------- */

static uint8_t *hdr_bytes(uint8_t version, uint8_t type, uint16_t flags, uint32_t req_id,
			  uint32_t len)
{
	uint8_t b[KVP_HDR_SIZE];
	struct kvp_frame_hdr h = { version, type, flags, req_id, len };

	kvp_hdr_encode(b, &h);
	return pt_exact(b, sizeof(b));
}

Test(header, layout_is_byte_exact)
{
	uint8_t *b = hdr_bytes(1, KVP_T_LOOKUP, 0, 0x11223344u, 0x0A0B0C0Du);
	static const uint8_t want[] = { 'K', 'V', 'P', '1', 1, 2, 0, 0,
					0x44, 0x33, 0x22, 0x11, 0x0D, 0x0C, 0x0B, 0x0A };

	pt_assert_bytes(b, KVP_HDR_SIZE, want, sizeof(want), "header");
	free(b);
}

Test(header, every_type_byte)
{
	for (unsigned v = 1; v <= 4; v++) {
		for (unsigned t = 0; t < 256; t++) {
			uint8_t *b = hdr_bytes((uint8_t)v, (uint8_t)t, 0, 9, 0);
			struct kvp_frame_hdr h;
			bool req = (t >= 0x01 && t <= 0x07) || t == 0x09 || t == 0x0A;
			bool known = (t >= 0x01 && t <= 0x07) || (t >= 0x81 && t <= 0x88) ||
				     t == 0xFF || (v >= 2 && (t == 0x09 || t == 0x89)) ||
				     (v >= 4 && (t == 0x0A || t == 0x8A));

			cr_assert_eq(kvp_frame_is_request((uint8_t)t), req, "type 0x%02x", t);
			cr_assert_eq(kvp_frame_type_valid((uint8_t)v, (uint8_t)t), known,
				     "version %u type 0x%02x", v, t);
			cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 0, &h), known ? 0 : KVP_EPROTO,
				     "version %u type 0x%02x", v, t);
			cr_assert_eq(h.version, v);
			cr_assert_eq(h.type, t);
			cr_assert_eq(h.req_id, 9);
			free(b);
		}
	}
	/* No type exists in a version the codec does not speak. */
	for (unsigned t = 0; t < 256; t++) {
		cr_assert(!kvp_frame_type_valid(0, (uint8_t)t));
		cr_assert(!kvp_frame_type_valid(5, (uint8_t)t));
	}
}

Test(header, admin_from_version_2_on)
{
	static const uint8_t admin[] = { KVP_T_ADMIN, KVP_T_ADMIN | KVP_T_REPLY };
	struct kvp_frame_hdr h;

	cr_assert_eq(KVP_T_ADMIN, 0x09);
	cr_assert_eq(KVP_PROTO_VERSION, 1);
	cr_assert_eq(KVP_PROTO_VERSION_MAX, 4);
	cr_assert_eq(KVP_PROTO_VERSION_FLEET, 4);
	cr_assert_eq(KVP_PROTO_VERSION_ADMIN, 2);
	cr_assert_eq(KVP_PROTO_VERSION_SIZES, 3);
	cr_assert(kvp_frame_is_request(KVP_T_ADMIN));
	cr_assert(!kvp_frame_is_request(KVP_T_ADMIN | KVP_T_REPLY));
	for (size_t i = 0; i < sizeof(admin); i++) {
		uint8_t *b = hdr_bytes(1, admin[i], 0, 44, 18);

		/* in a version-1 header: an unknown type, with req_id and version kept */
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), KVP_EPROTO,
			     "type 0x%02x in version 1", admin[i]);
		cr_assert_eq(h.version, 1);
		cr_assert_eq(h.req_id, 44);
		free(b);
		b = hdr_bytes(2, admin[i], 0, 45, 18);
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), 0);
		cr_assert_eq(h.version, 2);
		cr_assert_eq(h.type, admin[i]);
		cr_assert_eq(h.req_id, 45);
		cr_assert_eq(h.len, 18);
		free(b);
		/* version 3 is version 2 plus the HELLO reply's sizes: ADMIN too */
		b = hdr_bytes(3, admin[i], 0, 46, 18);
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), 0);
		cr_assert_eq(h.version, 3);
		free(b);
		/* in version 5: the version is refused first */
		b = hdr_bytes(5, admin[i], 0, 47, 18);
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), KVP_EVERSION);
		cr_assert_eq(h.req_id, 47);
		free(b);
	}
}

Test(header, version_2_carries_every_ordinary_type)
{
	static const uint8_t types[] = { 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x81, 0x82,
					 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0xFF };

	for (size_t i = 0; i < sizeof(types); i++) {
		uint8_t *b = hdr_bytes(2, types[i], 0, 0x0102, 40);
		struct kvp_frame_hdr h;

		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), 0, "type 0x%02x", types[i]);
		cr_assert_eq(h.version, 2);
		cr_assert_eq(h.type, types[i]);
		cr_assert_eq(h.len, 40);
		/* the encoder writes the version it is given: a reply keeps its request's */
		{
			uint8_t out[KVP_HDR_SIZE];

			kvp_hdr_encode(out, &h);
			pt_assert_bytes(out, sizeof(out), b, KVP_HDR_SIZE, "version-2 header");
		}
		/* the other header checks are the same in version 2 */
		b[6] = 1;
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), KVP_EPROTO);
		b[6] = 0;
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 39, &h), KVP_ETOOBIG);
		b[0] = 'k';
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), KVP_EPROTO);
		free(b);
	}
}

Test(header, generate_types)
{
	/* GENERATE is a request; its token frame and DONE are replies, DONE reply-only. */
	cr_assert(kvp_frame_is_request(KVP_T_GENERATE));
	cr_assert(!kvp_frame_is_request(KVP_T_GENERATE | KVP_T_REPLY));
	cr_assert(!kvp_frame_is_request(KVP_T_GENERATE_DONE));
	cr_assert(!kvp_frame_is_request(KVP_T_GENERATE_DONE & ~KVP_T_REPLY), "no request 0x08");
	cr_assert_eq(KVP_T_GENERATE_DONE, 0x88);
	for (unsigned i = 0; i < 3; i++) {
		static const uint8_t types[3] = { 0x07, 0x87, 0x88 };
		uint8_t *b = hdr_bytes(1, types[i], 0, 0xABCD, 52);
		struct kvp_frame_hdr h;

		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), 0);
		cr_assert_eq(h.type, types[i]);
		cr_assert_eq(h.len, 52);
		free(b);
	}
}

Test(header, bad_magic)
{
	for (int i = 0; i < 4; i++) {
		uint8_t *b = hdr_bytes(1, KVP_T_PING, 0, 77, 0);
		struct kvp_frame_hdr h;

		b[i] ^= 0x20;   /* "kVP1", "KvP1", ... */
		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), KVP_EPROTO);
		cr_assert_eq(h.req_id, 77, "req_id is filled for the ERROR reply");
		free(b);
	}
	/* Bad magic wins over every other fault. */
	uint8_t *b = hdr_bytes(9, 0x42, 3, 5, 0xFFFFFFFFu);
	struct kvp_frame_hdr h;

	b[0] = 0;
	cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 16, &h), KVP_EPROTO);
	free(b);
}

Test(header, version)
{
	static const uint8_t bad[] = { 0, 5, 6, 0x81, 0xFF };

	for (size_t i = 0; i < sizeof(bad); i++) {
		uint8_t *b = hdr_bytes(bad[i], KVP_T_HELLO, 0, 31, 12);
		struct kvp_frame_hdr h;

		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), KVP_EVERSION);
		cr_assert_eq(h.version, bad[i]);
		cr_assert_eq(h.req_id, 31);
		free(b);
	}
}

Test(header, flags)
{
	static const uint16_t bad[] = { 1, 0x0100, 0x8000, 0xFFFF };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint8_t *b = hdr_bytes(1, KVP_T_STATS, bad[i], 8, 0);
		struct kvp_frame_hdr h;

		cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 1024, &h), KVP_EPROTO);
		cr_assert_eq(h.flags, bad[i]);
		cr_assert_eq(h.req_id, 8);
		free(b);
	}
}

Test(header, payload_limit)
{
	struct kvp_frame_hdr h;
	uint8_t *b = hdr_bytes(1, KVP_T_INSERT, 0, 3, 4096);

	cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 4096, &h), 0);
	cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 4095, &h), KVP_ETOOBIG);
	cr_assert_eq(h.len, 4096);
	cr_assert_eq(h.req_id, 3);
	free(b);
	b = hdr_bytes(1, KVP_T_INSERT, 0, 3, UINT32_MAX);
	cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, UINT32_MAX, &h), 0);
	cr_assert_eq(kvp_hdr_decode(b, KVP_HDR_SIZE, 0, &h), KVP_ETOOBIG);
	free(b);
}

Test(header, short_input_and_extra_input)
{
	uint8_t full[KVP_HDR_SIZE + 4];
	struct kvp_frame_hdr h = { 1, KVP_T_PING, 0, 1, 4 };

	kvp_hdr_encode(full, &h);
	memcpy(full + KVP_HDR_SIZE, "abcd", 4);
	for (size_t n = 0; n < KVP_HDR_SIZE; n++) {
		uint8_t *b = pt_exact(full, n);

		cr_assert_eq(kvp_hdr_decode(b, n, 1024, &h), KVP_EINVAL, "n=%zu", n);
		free(b);
	}
	/* Bytes after the header (the payload) are not the header's business. */
	uint8_t *b = pt_exact(full, sizeof(full));

	cr_assert_eq(kvp_hdr_decode(b, sizeof(full), 1024, &h), 0);
	cr_assert_eq(h.len, 4);
	free(b);
}
