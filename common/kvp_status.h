/*
 * kvp_status.h - the one error convention of kvprefix.
 *
 * Every function that can fail returns 0 (KVP_OK) or a negative enum kvp_status.
 * The same codes travel on the wire, negated (an ERROR frame carries -status), so a
 * client sees exactly what the daemon saw. kvp_strerror() never returns NULL.
 * Thread-safe: everything here is constant data.
 */
#ifndef KVP_STATUS_H
#define KVP_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

/* Symbols exported from the shared client library; everything else stays hidden. */
#if defined(KVP_BUILDING_LIB)
#define KVP_API __attribute__((visibility("default")))
#else
#define KVP_API
#endif

enum kvp_status {
	KVP_OK = 0,
	KVP_ENOMEM = -1,       /* an allocation failed; nothing was changed unless the
	                          function's header says what was kept (kvp_cache_insert) */
	KVP_EINVAL = -2,       /* an argument or field is out of range */
	KVP_EPROTO = -3,       /* a frame is malformed (bad magic, type, layout) */
	KVP_ETOOBIG = -4,      /* a length is over its configured limit */
	KVP_EFULL = -5,        /* the pool has no free or evictable block */
	KVP_ENOTFOUND = -6,    /* no such lease, block or key */
	KVP_EVERSION = -7,     /* protocol version not supported */
	KVP_EIO = -8,          /* a system call failed; see errno or the log */
	KVP_ECLOSED = -9,      /* the peer closed the connection */
	KVP_ETIMEDOUT = -10,   /* a deadline passed */
	KVP_EBUSY = -11,       /* a limit on concurrent work was reached */
	KVP_EPERM = -12,       /* not allowed for this peer */
	KVP_EUNSUPPORTED = -13,/* the daemon does not offer this (mode, frame type) */
	KVP_ESHUTDOWN = -14,   /* the daemon is stopping */
	KVP_EEXIST = -15,      /* the thing being added already exists */
	KVP_EINTERNAL = -16,   /* an invariant check failed: a bug, reported not hidden */
};

/* Human-readable text for a status (positive or negative), never NULL. */
KVP_API const char *kvp_strerror(int status);

#ifdef __cplusplus
}
#endif
#endif
