#include "kvp_status.h"

const char *kvp_strerror(int status)
{
	if (status > 0)
		status = -status;
	switch ((enum kvp_status)status) {
	case KVP_OK: return "success";
	case KVP_ENOMEM: return "out of memory";
	case KVP_EINVAL: return "invalid argument";
	case KVP_EPROTO: return "malformed frame";
	case KVP_ETOOBIG: return "length over limit";
	case KVP_EFULL: return "block pool full of pinned blocks";
	case KVP_ENOTFOUND: return "not found";
	case KVP_EVERSION: return "unsupported protocol version";
	case KVP_EIO: return "I/O error";
	case KVP_ECLOSED: return "connection closed";
	case KVP_ETIMEDOUT: return "timed out";
	case KVP_EBUSY: return "limit on concurrent work reached";
	case KVP_EPERM: return "permission denied";
	case KVP_EUNSUPPORTED: return "not supported";
	case KVP_ESHUTDOWN: return "daemon shutting down";
	case KVP_EEXIST: return "already exists";
	case KVP_EINTERNAL: return "internal invariant violated";
	}
	return "unknown status";
}
