/*
 * dump.c - libkvprefix's frame trace (contract: dump_internal.h).
 */
#include "dump_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvp_le.h"
#include "kvp_wire.h"

#define DUMP_LINE 16   /* payload bytes a line */

bool kvp_trace_frames_wanted(void)
{
	const char *v = getenv("KVP_TRACE_FRAMES");

	return v && *v && strcmp(v, "0") != 0;
}

static const char *type_name(uint8_t type)
{
	static const char *const names[] = { "?", "HELLO", "LOOKUP", "INSERT", "RELEASE",
					     "STATS", "PING", "GENERATE", "?", "ADMIN" };
	uint8_t req = (uint8_t)(type & ~KVP_T_REPLY);

	if (type == KVP_T_ERROR)
		return "ERROR";
	if (type == KVP_T_GENERATE_DONE)
		return "GENERATE_DONE";
	if (type == (KVP_T_GENERATE | KVP_T_REPLY))
		return "GENERATE tokens";
	if (req >= sizeof(names) / sizeof(names[0]) || names[req][0] == '?')
		return "unknown";
	return (type & KVP_T_REPLY) ? (req == KVP_T_PING ? "PONG" : "reply") : names[req];
}

/* The first KVP_HDR_SIZE bytes of the frame, however iov cuts them; how many there are. */
static size_t gather_header(const struct iovec *iov, int iovcnt, uint8_t *hdr)
{
	size_t n = 0;

	for (int i = 0; i < iovcnt && n < KVP_HDR_SIZE; i++) {
		size_t take = iov[i].iov_len < KVP_HDR_SIZE - n ? iov[i].iov_len : KVP_HDR_SIZE - n;

		memcpy(hdr + n, iov[i].iov_base, take);
		n += take;
	}
	return n;
}

void kvp_frame_dump(FILE *f, bool sent, const struct iovec *iov, int iovcnt)
{
	const char *dir = sent ? "kvprefix > kvprefixd" : "kvprefixd > kvprefix";
	uint8_t hdr[KVP_HDR_SIZE];
	size_t at = 0, col = 0;

	if (gather_header(iov, iovcnt, hdr) < KVP_HDR_SIZE) {
		fprintf(f, "# %s: a short frame\n", dir);
	} else {
		const char *name = type_name(hdr[5]);

		if (strcmp(name, "reply") == 0)
			fprintf(f, "# %s: %s reply (0x%02x)", dir, type_name(hdr[5] & ~KVP_T_REPLY),
				hdr[5]);
		else
			fprintf(f, "# %s: %s (0x%02x)", dir, name, hdr[5]);
		fprintf(f, ", version %u, req_id %u, %u payload bytes\n", hdr[4],
			kvp_le_get_u32(hdr + 8), kvp_le_get_u32(hdr + 12));
	}
	for (int i = 0; i < iovcnt; i++) {
		const uint8_t *p = iov[i].iov_base;

		for (size_t k = 0; k < iov[i].iov_len; k++, at++) {
			bool last = at + 1 == KVP_HDR_SIZE ||
				    (at >= KVP_HDR_SIZE && (at - KVP_HDR_SIZE) % DUMP_LINE == DUMP_LINE - 1);

			fprintf(f, col ? " %02x" : "%02x", p[k]);
			col = last ? 0 : col + 1;
			if (last)
				fputc('\n', f);
		}
	}
	if (col)   /* a short last line */
		fputc('\n', f);
	fflush(f);
}
