/*
 * server.h - the daemon: `strata serve`.
 *
 * Owns: start-up (config, store open and recovery, TLS context, listening
 * sockets bound as root, privilege drop), the network threads in two
 * pools - MX (smtp.listen; `threads`) and user-facing (IMAP, POP3,
 * submission; `threads.user`) - so a flood on port 25 never shares an
 * event loop with users (one event_base per thread, every listener of a
 * pool opened once per thread of that pool with SO_REUSEPORT so the kernel
 * spreads connections), the admin HTTP endpoint (evhttp on the main
 * thread: /metrics, /health), and signals:
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

/* Runs until SIGTERM/SIGINT (or a start-up failure, logged).  `config_path`
 * and `overrides` are kept for SIGHUP and must stay valid until it returns.
 * `s` stays the caller's: the caller frees it after server_run returns
 * (settings loaded by SIGHUP are freed here).  Must be called before any
 * other thread or event_base exists in the process (it enables libevent's
 * pthreads support and may switch to the unprivileged user).  Writes nothing
 * to stdout.  Returns the process exit code: 0 after a clean shutdown, 1 on
 * a start-up failure or a forced exit. */
int server_run(struct settings *s, const char *config_path, char *const *overrides, size_t n_over);

#endif
