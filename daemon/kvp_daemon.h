/*
 * kvp_daemon.h - configuration and entry point of the kvprefixd server.
 */
#ifndef KVP_DAEMON_H
#define KVP_DAEMON_H

#include <stdbool.h>
#include <stdint.h>

struct kvp_config {
	char socket_path[108];      /* sizeof(sockaddr_un.sun_path) */
	char index_name[256];       /* namespace name in index-only mode */
	bool index_only;
	uint32_t block_tokens;
	uint32_t capacity_blocks;
	int eviction;               /* enum kvp_evict_policy */
	uint32_t max_tokens;        /* tokens per LOOKUP / INSERT */
	uint32_t max_frame_bytes;   /* payload bytes per frame */
	uint32_t max_connections;
	uint32_t max_leases;        /* leases held by one connection */
	uint32_t max_inflight;      /* generations running for one connection */
	uint32_t idle_timeout_s;    /* close a connection silent this long (0: never) */
	uint32_t frame_timeout_s;   /* a frame must arrive whole this long after its first byte */
	uint32_t max_conns_per_uid; /* connections of one uid; 0: max_connections / 4 */
	uint32_t max_output_mb;     /* unsent reply bytes of all connections together */
	uint32_t max_leased_blocks; /* blocks under the leases of one connection */
	uint32_t max_leased_blocks_per_uid;  /* ... of all the connections of one uid */
	uint32_t stop_timeout_s;    /* a graceful stop waits this long for generations */
	uint32_t socket_mode;       /* permission bits of the socket file */
	/* engine mode */
	const char *model_path;     /* GGUF file; NULL in index-only mode */
	int threads;                /* compute threads */
	int kv_dtype;               /* enum kvp_kv_dtype */
	uint32_t pool_mb;           /* KV pool size when capacity_blocks is not given */
	uint32_t max_seqs;          /* generations the engine runs at once */
	uint32_t max_batch_tokens;  /* rows of one engine step */
	const char *disk_cache;     /* disk tier directory; NULL: none */
	uint32_t disk_cache_gb;     /* its size, GB (10^9 bytes) */
	uint32_t host_cache_mb;     /* host RAM tier, MB (10^6 bytes); 0 none */
	const char *redis;          /* Redis tier: redis://HOST:PORT or unix:PATH; NULL none */
	char redis_password[128];   /* its AUTH; "" none */
	uint32_t redis_ttl_s;       /* expiry of each block written there; 0 none */
	/* KV events (docs/kv-events.md) */
	const char *kv_events;      /* PUB endpoint; NULL: none */
	const char *kv_events_replay;   /* ROUTER endpoint for replays; NULL: none */
	uint32_t kv_events_buffer;  /* batches kept for replay */
	bool kv_events_array;       /* the older array encoding of events */
	char instance_id[256];      /* the topic's instance; "" the hostname */
	const char *kv_events_sub;  /* index-only: endpoints to subscribe to, comma-separated */
	const char *kv_events_sub_replay;   /* their replay endpoints, in the same order */
	bool capacity_given;        /* --capacity-blocks was on the command line */
	/* operations */
	int log_level;              /* enum kvp_log_level */
	char config_path[256];      /* the file read ("" when none) */
	char metrics_listen[256];   /* "" off; "HOST:PORT" or a Unix socket path */
	char salt_uids[256];        /* uids allowed a HELLO cache salt, "0,1000"; "" none */
	char admin_group[64];       /* group (name or gid) allowed ADMIN besides root; "" none */
	uint32_t tenant_quota_pct;  /* most of the pool one namespace may hold, %; 0: no quota */
	int backend;                /* enum kvp_daemon_backend */
};

/* --backend: where the engine runs. */
enum kvp_daemon_backend {
	KVP_DAEMON_BACKEND_AUTO = 0,   /* CUDA when a device is present, else the CPU */
	KVP_DAEMON_BACKEND_CPU = 1,
	KVP_DAEMON_BACKEND_CUDA = 2,
};

/* Run the event loop until SIGINT/SIGTERM. Returns the process exit code. */
int kvp_server_run(const struct kvp_config *cfg);

#endif
