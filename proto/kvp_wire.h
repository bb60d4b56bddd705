/*
 * kvp_wire.h - the constants of kvprefixd's wire protocol, in one place: the frame
 * header's magic and versions (1; 2 adds ADMIN; 3 adds the model's sizes to the HELLO
 * reply; 4 adds FLEET), the frame types, the flag bits and limits of each
 * request, the finish codes of a generation and the ADMIN ops.
 *
 * Installed beside kvprefix.h (the client library includes it) and used by the frame
 * codec (kvp_proto.h), so a value is written once for the daemon, the library and
 * whoever writes a client of their own. docs/protocol.md is the normative description
 * of every field these name; a change here is a protocol change.
 *
 * Constants only: no functions, no structs, nothing to link.
 */
#ifndef KVP_WIRE_H
#define KVP_WIRE_H

/* ---- the frame header -------------------------------------------------------------- */

#define KVP_PROTO_MAGIC 0x3150564Bu  /* the bytes "KVP1" read as a little-endian u32 */
#define KVP_PROTO_VERSION 1u         /* the version of ordinary frames */
#define KVP_PROTO_VERSION_MAX 4u     /* the highest version spoken */
#define KVP_PROTO_VERSION_ADMIN 2u   /* the first version with KVP_T_ADMIN */
#define KVP_PROTO_VERSION_SIZES 3u   /* the first whose HELLO reply has vocab and context */
#define KVP_PROTO_VERSION_FLEET 4u   /* the first version with KVP_T_FLEET */
#define KVP_HDR_SIZE 16u             /* bytes of a frame header */

enum kvp_frame_type {
	KVP_T_HELLO = 0x01,
	KVP_T_LOOKUP = 0x02,
	KVP_T_INSERT = 0x03,
	KVP_T_RELEASE = 0x04,
	KVP_T_STATS = 0x05,
	KVP_T_PING = 0x06,
	KVP_T_GENERATE = 0x07,
	KVP_T_ADMIN = 0x09,           /* version 2 and up, like its reply KVP_T_ADMIN | KVP_T_REPLY */
	KVP_T_FLEET = 0x0A,           /* version 4 and up: a prefix's length on each engine */
	KVP_T_REPLY = 0x80,           /* or-ed into a request type */
	KVP_T_GENERATE_DONE = 0x88,   /* reply only: the last frame of a GENERATE */
	KVP_T_ERROR = 0xFF,
};

/* ---- limits of strings ------------------------------------------------------------- */

#define KVP_ERROR_MSG_MAX 1024u   /* longest ERROR message text */
#define KVP_NAME_MAX 255u         /* longest adapter / salt / model name */

/* ---- HELLO ---------------------------------------------------------------------------- */

#define KVP_HELLO_INDEX_ONLY 0x1u   /* reply flag: the daemon runs without an engine */

/* ---- LOOKUP / INSERT -------------------------------------------------------------------- */

#define KVP_F_PIN 0x1u              /* pin the resulting blocks under a new lease */
#define KVP_F_KEEP 0x2u             /* INSERT only (reserved in LOOKUP): keep the blocks */

/* INSERT's KVP_F_KEEP and GENERATE's KVP_GEN_KEEP: u32 keep_s (1 .. KVP_KEEP_MAX_S, a
 * week) and u32 priority (lower is given up first) follow the tokens. */
#define KVP_KEEP_MAX_S 604800u

/* ---- GENERATE ----------------------------------------------------------------------------- */

#define KVP_GEN_LOGITS 0x1u         /* return the logits of the last prompt position */
#define KVP_GEN_KEEP 0x2u           /* keep the prompt's blocks (as INSERT's KVP_F_KEEP) */
#define KVP_GEN_FLAGS_KNOWN (KVP_GEN_LOGITS | KVP_GEN_KEEP)
#define KVP_STOP_MAX 64u            /* stop token ids in one request */
#define KVP_GEN_MAX_NEW (1u << 20)  /* largest max_new */

/* GENERATE_DONE finish codes: why a generation ended. */
#define KVP_FINISH_LENGTH 0u        /* max_new tokens were generated */
#define KVP_FINISH_STOP 1u          /* the last token generated is one of the stop ids */
#define KVP_FINISH_CONTEXT 2u       /* the model's context is full */

/* ---- ADMIN (version 2 and up) ----------------------------------------------------------- */

#define KVP_ADMIN_CLEAR 1u          /* evict every unpinned cached block of a namespace */
#define KVP_ADMIN_EVICT 2u          /* evict the unpinned blocks at and below a cached prefix */
#define KVP_ADMIN_PIN 3u            /* pin a cached prefix until UNPIN or the daemon stops */
#define KVP_ADMIN_UNPIN 4u          /* undo one PIN of the same prefix */
#define KVP_ADMIN_CONFIG 5u         /* list, show or set the daemon's options */
#define KVP_ADMIN_EXPLAIN 6u        /* what became of each block of a prompt (miss causes) */
#define KVP_ADMIN_F_TENANT 0x1u     /* act on the namespace of `tenant`, not the connection's */
#define KVP_ADMIN_F_ALL 0x2u        /* CLEAR: every namespace */
#define KVP_ADMIN_FLAGS_KNOWN (KVP_ADMIN_F_TENANT | KVP_ADMIN_F_ALL)
#define KVP_ADMIN_TEXT_MAX 4096u          /* longest text of a request */
#define KVP_ADMIN_REPLY_TEXT_MAX 65536u   /* longest text of a reply */

#endif
