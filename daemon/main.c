/*
 * main.c - kvprefixd: options (the command line over /etc/kvprefix/kvprefixd.conf, see
 * kvp_config.h), then the server. Only main() exits.
 */
#include "kvp_config.h"
#include "kvp_daemon.h"

int main(int argc, char **argv)
{
	struct kvp_config cfg;
	int rc = kvp_config_parse(argc, argv, &cfg);

	if (rc == KVP_CONFIG_DONE)
		return 0;
	if (rc != 0)
		return rc;
	kvp_server_set_argv(argc, argv);   /* SIGHUP re-reads the file with the same flags */
	return kvp_server_run(&cfg);
}
