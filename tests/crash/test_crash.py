"""kill -9 at random moments under concurrent SMTP and IMAP load; after every
restart the index, the blob files and everything the clients were told
(250, APPEND/COPY/MOVE/STORE/EXPUNGE OK) must agree.  See README.md for the
invariants, the knobs (STRATA_CRASH_*) and how to replay a seed."""
import os
import random
import shutil
import sys
import time

import pytest

import harness
from crashlib import (CRASH_TIERS, Checker, ImapLoad, Model, SmtpLoad, bounded_join, content_problem, env_float, env_int,
                      imap_fetch_body, new_server, seeds, sigkill)

DOMAIN = "crash.example"
SMTP_ONLY = "dave@" + DOMAIN
IMAP_USERS = ["alice@" + DOMAIN, "bob@" + DOMAIN, "carol@" + DOMAIN]
USERS = IMAP_USERS + [SMTP_ONLY]
QUOTA_USER = IMAP_USERS[2]      # a small quota: over-quota refusals in the same batches as deliveries
QUOTA_BYTES = 6000000
SMTP_CLIENTS = 3
SMTP_CAP = 60           # transactions per SMTP client per iteration
IMAP_CAP = 80           # commands per IMAP client per iteration


def say(capsys, text):
    with capsys.disabled():
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


class Campaign:
    def __init__(self, root, capsys):
        self.root, self.capsys = root, capsys
        self.iterations = env_int("STRATA_CRASH_ITERATIONS", 20)
        self.budget = env_float("STRATA_CRASH_SECONDS", 90)
        self.max_delay = env_float("STRATA_CRASH_MAX_DELAY", 1.5)
        self.epoch = env_int("STRATA_CRASH_EPOCH", 50)     # iterations per state directory
        self.startup_kills = env_float("STRATA_CRASH_STARTUP_KILLS", 0.15)   # share of iterations
        self.verbose = os.environ.get("STRATA_CRASH_VERBOSE") == "1"
        self.seed, self.rng = seeds()
        self.totals = {"iterations": 0, "acked": 0, "lost": 0, "orphans": 0, "epochs": 0,
                       "imap_checked": 0, "startup_kills": 0, "archived_max": 0}
        self.stats = {}
        self.srv = self.model = self.checker = None

    # -- one state directory ------------------------------------------------------
    def new_epoch(self):
        self.close_epoch()
        n = self.totals["epochs"]
        self.totals["epochs"] += 1
        self.srv = new_server(self.root, "epoch%d" % n, tiers=CRASH_TIERS)
        self.srv.start()
        self.srv.add_domain(DOMAIN)
        for u in USERS:
            self.srv.add_user(u, quota_bytes=QUOTA_BYTES if u == QUOTA_USER else None)
        self.model = Model(USERS, quota_accounts=[QUOTA_USER])
        self.checker = Checker(self.srv, self.model)
        self.verify("initial state")

    def close_epoch(self):
        if self.srv is None:
            return
        self.srv.stop()                     # SIGTERM: exit code 0, log checked
        self.verify("after a clean stop", running=False)
        self.fold()
        shutil.rmtree(self.srv.dir, ignore_errors=True)
        self.srv = None

    def fold(self):
        self.totals["acked"] += self.model.acked_pairs
        self.totals["lost"] += self.checker.lost
        self.totals["orphans"] += len(self.checker.orphans)
        for k, v in self.model.stats.items():
            self.stats[k] = self.stats.get(k, 0) + v

    # -- checks ---------------------------------------------------------------------
    def verify(self, when, running=True, irng=None):
        violations, st = self.checker.check()
        with self.model.lock:
            violations = list(self.model.errors) + violations
            self.model.errors.clear()
        if running and irng is not None and not violations:
            violations += self.imap_spot_check(irng)
        if violations:
            pytest.fail("crash campaign seed %d (replay: STRATA_CRASH_SEED=%d), %s, %d violations:\n  %s"
                        % (self.seed, self.seed, when, len(violations), "\n  ".join(violations[:40])),
                        pytrace=False)
        return st

    def imap_spot_check(self, irng):
        """Byte-identity through the protocols: a few certain locations read
        with IMAP BODY.PEEK[] and one with `strata mail cat`."""
        out = []
        with self.model.lock:
            pool = [(addr, mb, uid, key) for addr, acct in self.model.accounts.items()
                    for key, st in acct.keys.items() for (mb, uid) in st.must]
        for addr, mb, uid, key in irng.sample(pool, min(4, len(pool))):
            body = imap_fetch_body(self.srv, addr, mb, uid)
            problem = "no body" if body is None else content_problem(self.model.attempts.get(key), body, None)
            if problem:
                out.append("%s/%s uid %d via IMAP after restart: %s" % (addr, mb, uid, problem))
            self.totals["imap_checked"] += 1
        if pool:
            addr, mb, uid, key = irng.choice(pool)
            raw = self.srv.mail_cat(addr, uid, mb)
            problem = content_problem(self.model.attempts.get(key), raw, None)
            if problem:
                out.append("%s/%s uid %d via `strata mail cat`: %s" % (addr, mb, uid, problem))
        return out

    # -- one kill -------------------------------------------------------------------
    def iteration(self, it):
        it_seed = self.rng.getrandbits(32)
        irng = random.Random(it_seed)
        tag = "s%d.i%d" % (self.seed, it)
        threads = [SmtpLoad(self.srv, self.model, random.Random(irng.getrandbits(32)), "%s.m%d" % (tag, i),
                            USERS, SMTP_CAP) for i in range(SMTP_CLIENTS)]
        threads += [ImapLoad(self.srv, self.model, random.Random(irng.getrandbits(32)), "%s.%s" % (tag, u[0]),
                             u, IMAP_CAP) for u in IMAP_USERS]
        delay = irng.uniform(0, self.max_delay)
        for t in threads:
            t.start()
        time.sleep(delay)
        sigkill(self.srv)
        for t in threads:
            t.stop.set()
        hung = bounded_join(threads, 30 * harness.SLOW)
        if hung:
            pytest.fail("seed %d iteration %d: %d client threads still blocked 30 s after the kill"
                        % (self.seed, it, len(hung)), pytrace=False)
        when = "iteration %d (kill after %.3f s)" % (it, delay)
        if irng.random() < self.startup_kills:
            # kill it again while it recovers: recovery must be idempotent
            again = irng.uniform(0, 0.3)
            self.srv.start(wait=False)
            time.sleep(again)
            sigkill(self.srv)
            self.totals["startup_kills"] += 1
            when += ", again %.3f s into start-up" % again
        self.srv.start()
        self.srv.check_log()
        st = self.verify(when, irng=irng)
        self.totals["archived_max"] = max(self.totals["archived_max"], st["on_archive"])
        if self.verbose:
            say(self.capsys, "  %s: %d blobs (%d on the archive tier), %d message rows, %d new orphans, "
                "acked so far %d" % (when, st["blobs"], st["on_archive"], st["messages"], st["new_orphans"],
                                      self.model.acked_pairs))

    def run(self):
        say(self.capsys, "\ncrash campaign: seed %d (STRATA_CRASH_SEED=%d replays it), %d iterations, "
            "cap %.0f s, kill delay 0-%.2f s, binary %s" % (self.seed, self.seed, self.iterations,
                                                             self.budget, self.max_delay, harness.STRATA_BIN))
        start = time.monotonic()
        for it in range(self.iterations):
            if time.monotonic() - start > self.budget:
                say(self.capsys, "crash campaign: wall-clock cap of %.0f s reached" % self.budget)
                break
            if it % self.epoch == 0:
                self.new_epoch()
            self.iteration(it)
            self.totals["iterations"] += 1
        self.close_epoch()
        t = self.totals
        say(self.capsys, "crash campaign: seed %d: %d iterations (%d state dirs) in %.0f s; acknowledged "
            "(message, recipient) pairs %d, lost %d, orphan blobs %d, kills during start-up %d, IMAP re-reads %d; "
            "%s" % (self.seed, t["iterations"], t["epochs"], time.monotonic() - start, t["acked"], t["lost"],
                    t["orphans"], t["startup_kills"], t["imap_checked"], ", ".join("%s %d" % kv for kv in sorted(self.stats.items()))))
        return t


def test_kill9_campaign(crash_root, capsys):
    c = Campaign(crash_root, capsys)
    try:
        t = c.run()
    finally:
        if c.srv is not None and c.srv.proc is not None:
            sigkill(c.srv)
    assert t["iterations"] >= 1
    assert t["lost"] == 0
    assert t["acked"] > 0, "no message was ever acknowledged: the load did not run"
    if CRASH_TIERS:
        assert t["archived_max"] > 0, "the tier mover never moved a blob: the kills missed the moves"
