#!/usr/bin/python3
"""bench/scale.py - one node at full size (`make bench-scale`).

Owns: the scale benchmark: 50,000 accounts and 1,000,000 messages on one
node with the embedded default (SQLite + local directories), measured
against the same node at 1,000 accounts with the same mail per account.

Two nodes (sizes): the baseline and the full size.  The figures that are
judged by how much worse they get with size are measured in pairs,
alternating the sizes (small, full; full, small; ...), so that a slow
stretch of a noisy machine falls on both alike:

  1. each node, from fresh state: `strata user import` of the accounts
     (one shared SHA512-CRYPT hash, so logins cost the same at both sizes),
     then the untimed bulk of its messages over SMTP, by bench/smtp_load
     --mix realistic (sizes log-normal 2 KiB..2 MiB, median 8 KiB; text,
     alternative and mixed MIME with base64 attachments) at 32
     connections, to random accounts;
  2. paired: `--rounds` timed delivery windows per size ("delivery
     throughput at that size"), the same number of messages at both sizes,
     which bring each node to its full count.  Each window starts the
     node, waits for the tier thread's first placement pass (5 s after
     start), syncs and waits (at most SETTLE_MAX_S) for the kernel's
     write-back of everything before, and stops the node after.  The
     medians of the windows' rates and percentiles are judged;
  3. bytes of index.db per message (the WAL folded in);
  4. paired: `--starts` start-ups per size, from exec to the SMTP banner and
     /health answering (polled every START_POLL_S); the median is judged;
  5. paired: IMAP_ROUNDS rounds of 1,000 IMAP sessions per size, each on a
     freshly started node after its first placement pass: LOGIN, SELECT
     INBOX and UID FETCH of one random message's body, 8 at a time, over
     IMAP_POOL accounts drawn at random (see imap_pool); p50/p99 of each
     step over the samples of all rounds;
  then each node alone:
  6. idle RSS once the first placement pass has run;
  7. 10,000 idle IMAP connections (logged in, INBOX selected, in IDLE;
     from 100 loopback source addresses): RSS per connection;
  8. `strata tier rebuild` (when the build has it) and `strata store
     verify`, timed.

Targets (the issue's): start in 2 s or less, idle RSS at or under 200 MB,
at or under 10 KB per idle IMAP connection, index at or under 300 bytes per
message, and no figure more than 20% worse than at 1,000 accounts.

Safety and bounds: loopback only (127.0.0.1 and 127.77.x.y sources); every
phase has a count and a deadline; the daemon is stopped in a finally block.
Disk: about 20 KB per message (17 GB at the full size): --messages and
--accounts scale it down (the report says what was run).  --keep keeps
the state; --reuse DIR measures such a kept state again with another build
(no import, no bulk load: only the timed windows are delivered on top, so
the message count grows by --window each time).  Run as root (the
daemon drops to the strata user) or as any user (then it stays that user).

Output: JSON in bench/results/scale-<date>.json and a Markdown table on
stdout for docs/BENCHMARKS.md.
"""

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DOMAIN = "scale.example"
PASSWORD = "scalepass"
SEED = 20261129
START_WAIT_S = 120
START_POLL_S = 0.002  # readiness poll while starting: a coarser step would blur a 30 ms start-up
IMAP_POOL = 1000      # accounts the IMAP latency sessions log in to, at both sizes
IMAP_ROUNDS = 2       # paired rounds of 1,000 IMAP sessions per size
SETTLE_MAX_S = 300    # longest wait for the write-back of the bulk load before the timed window


def log(msg):
    print("scale: %s" % msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha512_crypt(password):
    out = subprocess.run(["openssl", "passwd", "-6", "-salt", "strataScale", password],
                         capture_output=True, text=True, check=True).stdout.strip()
    return "{SHA512-CRYPT}" + out


def rss_kib(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Node:
    """One strata serve on its own state directory."""

    def __init__(self, binary, workdir, name, reuse=False):
        self.binary = binary
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=reuse)
        os.chmod(self.dir, 0o755)
        self.state = os.path.join(self.dir, "state")
        self.smtp = free_port()
        self.imap = free_port()
        self.admin = free_port()
        self.proc = None
        self.opts = {
            "state_dir": self.state,
            "smtp.listen": "127.0.0.1:%d" % self.smtp,
            "imap.listen": "127.0.0.1:%d" % self.imap,
            "admin.listen": "127.0.0.1:%d" % self.admin,
            "threads": "2",
            "log.level": "warning",
            "hostname": "mx.scale.example",
            "imap.max_connections": "20000",
            "guard.user.max_connections": "20000",
            "guard.allow": "127.0.0.0/8",   # this benchmark measures size, not the guard
            "store.backup_interval": "0",
            "tier.interval": "1h",
        }

    def args(self):
        out = []
        for k, v in self.opts.items():
            out += ["-o", "%s=%s" % (k, v)]
        return out

    def cli(self, *args, timeout=3600, input=None):
        p = subprocess.run([self.binary] + self.args() + list(args), capture_output=True, timeout=timeout,
                           input=input)
        if p.returncode != 0:
            raise RuntimeError("strata %s: %s" % (" ".join(args), p.stderr.decode(errors="replace")[-2000:]))
        return p

    def start(self):
        t0 = time.monotonic()
        self.log = open(os.path.join(self.dir, "serve.log"), "ab")
        self.proc = subprocess.Popen([self.binary] + self.args() + ["serve"], stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=raise_nofile)
        deadline = t0 + START_WAIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("strata serve exited %d during start-up" % self.proc.returncode)
            if self.ready():
                return time.monotonic() - t0
            time.sleep(START_POLL_S)
        raise RuntimeError("strata serve not ready after %d s" % START_WAIT_S)

    def ready(self):
        try:
            with socket.create_connection(("127.0.0.1", self.smtp), timeout=1) as s:
                if not s.recv(512).startswith(b"220"):
                    return False
            with urllib.request.urlopen("http://127.0.0.1:%d/health" % self.admin, timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.log.close()


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def import_accounts(node, n):
    path = os.path.join(node.dir, "accounts.csv")
    h = sha512_crypt(PASSWORD)
    with open(path, "w") as f:
        for i in range(n):
            f.write("user%d@%s,%s\n" % (i, DOMAIN, h))
    node.cli("domain", "add", DOMAIN)
    t0 = time.monotonic()
    node.cli("user", "import", path)
    return time.monotonic() - t0


def smtp_load(node, accounts, messages, seed, concurrency=32):
    exe = os.path.join(ROOT, "build", "bench", "smtp_load")
    out = subprocess.run([exe, "--port", str(node.smtp), "--concurrency", str(concurrency),
                          "--messages", str(messages), "--accounts", str(accounts), "--domain", DOMAIN,
                          "--mix", "realistic", "--seed", str(seed), "--duration-max", "3600",
                          "--timeout", "120"], capture_output=True, text=True, timeout=3700)
    if out.returncode != 0:
        raise RuntimeError("smtp_load: %s" % out.stderr[-2000:])
    return json.loads(out.stdout)


def index_bytes(node):
    db = os.path.join(node.state, "index.db")
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        n = con.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        tables = {}
        try:
            for name, size in con.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
                tables[name] = size
        except sqlite3.OperationalError:
            pass        # no dbstat in this SQLite build
    finally:
        con.close()
    size = os.path.getsize(db)
    return n, size, tables


# ---- IMAP -------------------------------------------------------------------------

class ImapError(Exception):
    pass


async def imap_cmd(reader, writer, tag, text):
    writer.write(("%s %s\r\n" % (tag, text)).encode())
    await writer.drain()
    while True:
        line = await reader.readline()
        if not line:
            raise ImapError("connection closed after %s" % text)
        if line.startswith(tag.encode() + b" "):
            if not line.startswith(tag.encode() + b" OK"):
                raise ImapError(line.decode(errors="replace").strip())
            return


async def idle_session(port, user, src, started, stop, sem):
    async with sem:     # at most so many logging in at once; released once idling
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0), limit=1 << 16)
        await reader.readline()
        await imap_cmd(reader, writer, "a", "LOGIN %s %s" % (user, PASSWORD))
        await imap_cmd(reader, writer, "b", "SELECT INBOX")
        writer.write(b"c IDLE\r\n")
        await writer.drain()
        line = await reader.readline()
        if not line.startswith(b"+"):
            raise ImapError("IDLE: %r" % line)
    started.append(1)
    try:
        await stop.wait()
        writer.write(b"DONE\r\n")
        await writer.drain()
    finally:
        writer.close()


async def hold_idle(node, accounts, n, settle_s=5):
    """Opens n IDLE sessions; returns (RSS before, RSS with them) in KiB."""
    before = rss_kib(node.proc.pid)
    stop = asyncio.Event()
    started = []
    sem = asyncio.Semaphore(200)
    rnd = random.Random(SEED)

    async def one(i):
        src = "127.77.%d.%d" % (i // 100 % 250, 1 + i % 100)
        await idle_session(node.imap, "user%d@%s" % (rnd.randrange(accounts), DOMAIN), src, started, stop, sem)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    deadline = time.monotonic() + 600
    while len(started) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            stop.set()
            raise failed[0].exception()
    if len(started) < n:
        stop.set()
        raise RuntimeError("only %d of %d IDLE sessions started" % (len(started), n))
    await asyncio.sleep(settle_s)
    during = rss_kib(node.proc.pid)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return before, during


def percentile(v, p):
    if not v:
        return 0.0
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100.0 * len(v)))]


def imap_pool(accounts):
    """The accounts the IMAP latency sessions log in to: IMAP_POOL drawn at
    random (all of them at a size with fewer), the same number at both
    sizes, so that both see the same share of logins answered by the
    verified-password cache (with 2,000 sessions over all of 50,000
    accounts nearly every login would verify a SHA512-CRYPT hash, over
    1,000 accounts most would not: a difference of the benchmark, not of
    the index's size)."""
    rnd = random.Random(SEED + 1)
    return rnd.sample(range(accounts), min(IMAP_POOL, accounts))


def imap_latency(node, pool, seed, sessions=1000, concurrency=8):
    """LOGIN / SELECT / UID FETCH one random body, over accounts of the pool.
    Returns the samples of each step (ms) and the errors."""
    import imaplib
    rnd = random.Random(seed)
    users = ["user%d@%s" % (rnd.choice(pool), DOMAIN) for _ in range(sessions)]
    lat = {"login": [], "select": [], "fetch": [], "session": []}
    lock = threading.Lock()
    errors = []
    it = iter(range(sessions))

    def worker():
        r = random.Random(threading.get_ident())
        while True:
            with lock:
                i = next(it, None)
            if i is None:
                return
            try:
                t0 = time.monotonic()
                m = imaplib.IMAP4("127.0.0.1", node.imap, timeout=60)
                m.login(users[i], PASSWORD)
                t1 = time.monotonic()
                typ, data = m.select("INBOX", readonly=True)
                t2 = time.monotonic()
                n = int(data[0])
                t3 = t2
                if n > 0:
                    typ, data = m.fetch(str(r.randrange(1, n + 1)), "(BODY.PEEK[])")
                    if typ != "OK":
                        raise ImapError("FETCH %s" % typ)
                    t3 = time.monotonic()
                m.logout()
                with lock:
                    lat["login"].append((t1 - t0) * 1000)
                    lat["select"].append((t2 - t1) * 1000)
                    if n > 0:
                        lat["fetch"].append((t3 - t2) * 1000)
                    lat["session"].append((time.monotonic() - t0) * 1000)
            except Exception as e:   # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(1800)
    return {"samples": lat, "errors": errors, "seconds": time.monotonic() - t0}


@contextlib.contextmanager
def steady(node):
    """The node started and in steady state: its tier thread's first
    placement pass done (5 s after start).  Yields the seconds waited for
    it; stops the node after."""
    node.start()
    try:
        yield wait_first_pass(node)
    finally:
        node.stop()


def imap_round(node, res, pool, i):
    """One round of IMAP sessions on a node in steady state, nothing else
    running."""
    with steady(node):
        r = imap_latency(node, pool, SEED + 100 + i)
    res["imap_rounds"].append(r)
    log("%s: IMAP round %d: session p99 %.1f ms, %d errors" %
        (node.name, i + 1, percentile(r["samples"]["session"], 99), len(r["errors"])))


def summarize_imap(res):
    """Percentiles over the samples of every round."""
    rounds = res.pop("imap_rounds")
    out = {}
    for step in ("login", "select", "fetch", "session"):
        v = [x for r in rounds for x in r["samples"][step]]
        out[step] = {"p50": percentile(v, 50), "p99": percentile(v, 99), "n": len(v)}
    errors = [e for r in rounds for e in r["errors"]]
    out["errors"] = len(errors)
    out["first_error"] = errors[0] if errors else ""
    out["rounds"] = len(rounds)
    out["sessions_per_s"] = sum(len(r["samples"]["session"]) for r in rounds) / sum(r["seconds"] for r in rounds)
    res["imap_latency"] = out


def wait_first_pass(node, timeout=300):
    """Idle memory is measured in steady state: after the tier thread's first
    placement pass (5 s after start), which reads every message reference and
    frees what it used, and whose end sets the tier gauges.  Returns the
    seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % node.admin, timeout=5) as r:
                body = r.read().decode()
        except OSError:
            body = ""
        for line in body.splitlines():
            if line.startswith("strata_tier_0_bytes ") and float(line.split()[1]) > 0:
                return round(time.monotonic() - t0, 1)
        time.sleep(0.5)
    raise RuntimeError("no tier placement pass within %d s of start" % timeout)


def dirty_kib():
    with open("/proc/meminfo") as f:
        v = {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.startswith(("Dirty:", "Writeback:"))}
    return v.get("Dirty", 0) + v.get("Writeback", 0)


def settle():
    """Before the timed window, at both sizes: lets the kernel finish writing back the bulk
    load (17 GB at full size), so the window measures delivery at that size, not delivery
    competing with the write-back of the load before it.  Returns the seconds it took."""
    t0 = time.monotonic()
    os.sync()
    while dirty_kib() > 64 * 1024 and time.monotonic() - t0 < SETTLE_MAX_S:
        time.sleep(0.5)
    return round(time.monotonic() - t0, 1)


def has_tier_rebuild(binary):
    p = subprocess.run([binary, "tier"], capture_output=True, text=True)
    return "tier rebuild" in (p.stdout + p.stderr)


def load(node, res, accounts, bulk):
    """Imports the accounts and delivers the untimed bulk of the mail."""
    res["import_s"] = import_accounts(node, accounts)
    log("%s: %d accounts imported in %.1f s" % (node.name, accounts, res["import_s"]))
    node.start()
    try:
        if bulk:
            t0 = time.monotonic()
            r = smtp_load(node, accounts, bulk, SEED)
            log("%s: %d messages loaded in %.0f s (%.0f/s), %d failed" %
                (node.name, r["accepted"], time.monotonic() - t0, r["rate"], r["failed"]))
            res["bulk"] = r
    finally:
        node.stop()


def delivery_round(node, res, accounts, count, seed):
    """One timed window on a node in steady state, the write-back of
    everything before settled."""
    with steady(node):
        settle_s = settle()
        r = smtp_load(node, accounts, count, seed)
    res["delivery_rounds"].append({"rate": r["rate"], "p50_ms": r["latency_ms"]["p50"],
                                   "p99_ms": r["latency_ms"]["p99"], "failed": r["failed"],
                                   "messages": r["accepted"], "settle_s": settle_s})
    log("%s: timed window of %d messages at %.0f/s, p99 %.1f ms" %
        (node.name, r["accepted"], r["rate"], r["latency_ms"]["p99"]))


def paired(pairs, rounds, step):
    """Runs step(node, res, i) at both sizes `rounds` times, alternating which
    goes first (small, full; full, small; ...), so that a slow stretch of a
    noisy machine falls on both sizes alike."""
    for i in range(rounds):
        for node, res in (pairs if i % 2 == 0 else pairs[::-1]):
            step(node, res, i)


def summarize_delivery(res):
    rounds = res["delivery_rounds"]
    res["delivery"] = {"rate": statistics.median([r["rate"] for r in rounds]),
                       "p50_ms": statistics.median([r["p50_ms"] for r in rounds]),
                       "p99_ms": statistics.median([r["p99_ms"] for r in rounds]),
                       "failed": sum(r["failed"] for r in rounds),
                       "messages": sum(r["messages"] for r in rounds), "rounds": len(rounds)}


def start_round(node, res, i):
    res["start_s"]["runs"].append(node.start())
    node.stop()


def measure_rest(binary, node, res, accounts, idle_conns):
    """Everything measured on one node alone, after the paired phases."""
    with steady(node) as first_pass_s:
        res["first_pass_s"] = first_pass_s
        time.sleep(2)
        res["idle_rss_kib"] = rss_kib(node.proc.pid)
        log("%s: start %.3f s, idle RSS %d KiB" % (node.name, res["start_s"]["median"], res["idle_rss_kib"]))
        before, during = asyncio.run(hold_idle(node, accounts, idle_conns))
        res["idle_imap"] = {"connections": idle_conns, "rss_before_kib": before, "rss_during_kib": during,
                            "kib_per_connection": (during - before) / idle_conns}
        log("%s: %d IDLE sessions: %.2f KiB each" % (node.name, idle_conns, (during - before) / idle_conns))
    t0 = time.monotonic()
    node.cli("store", "verify")
    res["store_verify_s"] = time.monotonic() - t0
    if has_tier_rebuild(binary):
        t0 = time.monotonic()
        node.cli("tier", "rebuild")
        res["tier_rebuild_s"] = time.monotonic() - t0
        log("%s: tier rebuild %.1f s" % (node.name, res["tier_rebuild_s"]))


def measure_both(binary, workdir, sizes, rounds, per_round, starts, reuse):
    """sizes: [(name, accounts, messages, idle connections)], small first.
    Builds both nodes (unless reused), then the paired phases (delivery
    windows, start-ups), then the rest one node at a time."""
    pairs = []
    for name, accounts, messages, idle_conns in sizes:
        node = Node(binary, workdir, name, reuse)
        res = {"accounts": accounts, "messages": messages, "reused": reuse, "idle_conns": idle_conns,
               "delivery_rounds": [], "start_s": {"runs": []}, "imap_rounds": []}
        if not reuse:
            load(node, res, accounts, max(0, messages - rounds * per_round))
        pairs.append((node, res))
    try:
        paired(pairs, rounds, lambda node, res, i: delivery_round(node, res, res["accounts"], per_round,
                                                                  SEED + 7 + i))
        for node, res in pairs:
            summarize_delivery(res)
            n, size, tables = index_bytes(node)
            res["index"] = {"messages": n, "bytes": size, "bytes_per_message": size / max(n, 1),
                            "tables": tables}
            log("%s: index %d bytes for %d messages (%.0f B/msg)" % (node.name, size, n, size / max(n, 1)))
        paired(pairs, starts, start_round)
        paired(pairs, IMAP_ROUNDS, lambda node, res, i: imap_round(node, res, imap_pool(res["accounts"]), i))
        for node, res in pairs:
            summarize_imap(res)
            log("%s: IMAP session p50 %.1f ms p99 %.1f ms, %d errors" %
                (node.name, res["imap_latency"]["session"]["p50"], res["imap_latency"]["session"]["p99"],
                 res["imap_latency"]["errors"]))
        for node, res in pairs:
            res["start_s"]["median"] = statistics.median(res["start_s"]["runs"])
            measure_rest(binary, node, res, res["accounts"], res["idle_conns"])
    finally:
        for node, _ in pairs:
            node.stop()
    return [res for _, res in pairs]


def verdict(small, full):
    checks = []

    def check(label, value, target, ok):
        checks.append({"check": label, "value": value, "target": target, "ok": bool(ok)})

    check("start-up (s)", full["start_s"]["median"], "<= 2", full["start_s"]["median"] <= 2.0)
    check("idle RSS (MiB)", full["idle_rss_kib"] / 1024, "<= 200", full["idle_rss_kib"] <= 200 * 1024)
    check("RSS per idle IMAP connection (KiB)", full["idle_imap"]["kib_per_connection"], "<= 10",
          full["idle_imap"]["kib_per_connection"] <= 10)
    check("index bytes per message", full["index"]["bytes_per_message"], "<= 300",
          full["index"]["bytes_per_message"] <= 300)
    for label, f in (("start-up", lambda r: r["start_s"]["median"]),
                     ("IMAP session p99", lambda r: r["imap_latency"]["session"]["p99"]),
                     ("delivery p99", lambda r: r["delivery"]["p99_ms"])):
        a, b = f(small), f(full)
        check("%s vs %d accounts" % (label, small["accounts"]), b / a if a else 0, "<= 1.2", a == 0 or b / a <= 1.2)
    a, b = small["delivery"]["rate"], full["delivery"]["rate"]
    check("delivery rate vs %d accounts" % small["accounts"], b / a if a else 0, ">= 0.8", a == 0 or b / a >= 0.8)
    return checks


def markdown(result):
    s, f = result["small"], result["full"]
    rows = [
        ("accounts / messages", "%d / %d" % (s["accounts"], s["messages"]), "%d / %d" % (f["accounts"], f["messages"])),
        ("start-up, median of %d (s)" % len(s["start_s"]["runs"]), "%.3f" % s["start_s"]["median"],
         "%.3f" % f["start_s"]["median"]),
        ("idle RSS (MiB)", "%.1f" % (s["idle_rss_kib"] / 1024), "%.1f" % (f["idle_rss_kib"] / 1024)),
        ("RSS per idle IMAP connection (KiB)", "%.2f" % s["idle_imap"]["kib_per_connection"],
         "%.2f" % f["idle_imap"]["kib_per_connection"]),
        ("index bytes per message", "%.0f" % s["index"]["bytes_per_message"], "%.0f" % f["index"]["bytes_per_message"]),
        ("delivery (msg/s, median of %d windows of %d)" % (s["delivery"]["rounds"], result["delivery_per_round"]),
         "%.0f" % s["delivery"]["rate"], "%.0f" % f["delivery"]["rate"]),
        ("delivery p50 / p99 (ms), medians of the windows", "%.1f / %.1f" % (s["delivery"]["p50_ms"], s["delivery"]["p99_ms"]),
         "%.1f / %.1f" % (f["delivery"]["p50_ms"], f["delivery"]["p99_ms"])),
    ]
    for step in ("login", "select", "fetch", "session"):
        rows.append(("IMAP %s p50 / p99 (ms)" % step,
                     "%.1f / %.1f" % (s["imap_latency"][step]["p50"], s["imap_latency"][step]["p99"]),
                     "%.1f / %.1f" % (f["imap_latency"][step]["p50"], f["imap_latency"][step]["p99"])))
    rows.append(("`strata store verify` (s)", "%.1f" % s["store_verify_s"], "%.1f" % f["store_verify_s"]))
    if "tier_rebuild_s" in f:
        rows.append(("`strata tier rebuild` (s)", "%.1f" % s["tier_rebuild_s"], "%.1f" % f["tier_rebuild_s"]))
    out = ["| figure | %d accounts | %d accounts |" % (s["accounts"], f["accounts"]), "|---|---|---|"]
    out += ["| %s | %s | %s |" % r for r in rows]
    out += ["", "| window | first | %d accounts msg/s, p50 / p99 ms | %d accounts msg/s, p50 / p99 ms |"
            % (s["accounts"], f["accounts"]), "|---|---|---|---|"]
    for i, (a, b) in enumerate(zip(s["delivery_rounds"], f["delivery_rounds"])):
        out.append("| %d | %s | %.0f, %.1f / %.1f | %.0f, %.1f / %.1f |" %
                   (i + 1, "small" if i % 2 == 0 else "full", a["rate"], a["p50_ms"], a["p99_ms"],
                    b["rate"], b["p50_ms"], b["p99_ms"]))
    out += ["", "| check | value | target | met |", "|---|---|---|---|"]
    for c in result["checks"]:
        out.append("| %s | %.2f | %s | %s |" % (c["check"], c["value"], c["target"], "yes" if c["ok"] else "**no**"))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strata", default=os.path.join(ROOT, "build", "strata"))
    ap.add_argument("--accounts", type=int, default=50000)
    ap.add_argument("--messages", type=int, default=1000000)
    ap.add_argument("--small-accounts", type=int, default=1000)
    ap.add_argument("--window", type=int, default=15000,
                    help="messages timed at each size, split over --rounds windows")
    ap.add_argument("--rounds", type=int, default=3, help="timed delivery windows per size, alternating sizes")
    ap.add_argument("--starts", type=int, default=7, help="start-ups timed per size, alternating sizes")
    ap.add_argument("--idle", type=int, default=10000, help="idle IMAP connections")
    ap.add_argument("--workdir", default=None, help="where the state goes (default: a new dir in /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the state directories")
    ap.add_argument("--reuse", default=None, metavar="DIR",
                    help="measure the kept state of an earlier run (its strata-scale-* directory) again: "
                         "no import, no bulk load; implies --keep")
    args = ap.parse_args()
    if args.accounts < 1 or args.messages < args.accounts or args.small_accounts < 1:
        ap.error("need accounts >= 1 and messages >= accounts")
    if args.rounds < 1 or args.starts < 1 or args.window < args.rounds:
        ap.error("need --rounds >= 1, --starts >= 1 and --window >= --rounds")
    per_account = args.messages / args.accounts
    small_messages = int(args.small_accounts * per_account)
    if args.reuse:
        workdir = args.reuse
        args.keep = True
        for name in ("small", "full"):
            if not os.path.exists(os.path.join(workdir, name, "state", "index.db")):
                ap.error("--reuse %s: no %s/state/index.db there" % (workdir, name))
    else:
        workdir = tempfile.mkdtemp(prefix="strata-scale-", dir=args.workdir or "/var/tmp")
        os.chmod(workdir, 0o755)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv), "uname": " ".join(os.uname()), "cpus": os.cpu_count()}
    rounds = args.rounds
    per_round = args.window // rounds
    if per_round * rounds * 4 > small_messages * 3:
        per_round = max(1, small_messages * 3 // (4 * rounds))   # the small node keeps a bulk of its own
    result["delivery_rounds"] = rounds
    result["delivery_per_round"] = per_round
    try:
        result["small"], result["full"] = measure_both(
            args.strata, workdir,
            [("small", args.small_accounts, small_messages, min(args.idle, 2000)),
             ("full", args.accounts, args.messages, args.idle)],
            rounds, per_round, args.starts, bool(args.reuse))
        result["checks"] = verdict(result["small"], result["full"])
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", "scale-%s%s.json" % (result["date"][:10], "-reuse" if args.reuse else ""))
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    log("results in %s" % os.path.relpath(path, ROOT))
    print(markdown(result))
    return 0 if all(c["ok"] for c in result["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
