/*
 * server.h - the daemon: `strata serve`.
 *
 * Owns: start-up (config, store open and recovery, TLS context, listening
 * sockets bound as root, privilege drop), the network threads (one
 * event_base each, every listener opened once per thread with SO_REUSEPORT
 * so the kernel spreads connections), the admin HTTP endpoint (evhttp on
 * the main thread: /metrics, /health), and signals:
 *   SIGTERM/SIGINT - stop accepting, finish or abort in-flight transactions
 *                    (never a half-written visible message), drain the queue,
 *                    exit 0;
 *   SIGHUP         - reload the config file; reloadable keys take effect for
 *                    new sessions, others are reported as needing a restart.
 */
#ifndef STRATA_SERVER_H
#define STRATA_SERVER_H

#include <stddef.h>

#include "config.h"

/* Runs until SIGTERM.  `config_path` and `overrides` are kept for SIGHUP.
 * Returns the process exit code. */
int server_run(struct settings *s, const char *config_path, char *const *overrides, size_t n_over);

#endif
