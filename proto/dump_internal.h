/*
 * dump_internal.h - libkvprefix's frame trace: with KVP_TRACE_FRAMES set, every frame a
 * client sends or receives is written to stderr in hex, the way docs/protocol.md writes
 * its examples, so that a reader can replay an example with the tools and compare the
 * bytes. Private to proto/ (and the tests).
 */
#ifndef KVP_DUMP_INTERNAL_H
#define KVP_DUMP_INTERNAL_H

#include <stdbool.h>
#include <stdio.h>
#include <sys/uio.h>

/* True when the environment asks for the trace: KVP_TRACE_FRAMES set, not "" or "0". */
bool kvp_trace_frames_wanted(void);

/*
 * Write one whole frame, header first, gathered from iov[0 .. iovcnt), to f: a comment
 * line "# kvprefix > kvprefixd: TYPE (0xNN), version V, req_id N, L payload bytes" (the
 * other way round when !sent), then the 16 header bytes on one line and the payload 16
 * bytes a line, each byte as two hex digits and a space. Nothing is checked: the bytes
 * are written as they are (a frame under 16 bytes is said to be short). Errors writing
 * f are ignored.
 */
void kvp_frame_dump(FILE *f, bool sent, const struct iovec *iov, int iovcnt);

#endif
