#!/usr/bin/python3
"""bench/run.py - `make bench`: Strata against Postfix + Dovecot, SMTP ingest
and IMAP/POP3 reading.

Owns: the `make bench` workload and docs/BENCHMARKS.md, bench/results/.

Two phases, each also selectable alone (--only strata|reference for one
stack of the ingest phase, --only read for the read phase):
  ingest  described below;
  read    one Strata and one Dovecot (IMAP + POP3 on loopback, plaintext
          logins, the same users from a passwd-file) hold the same seeded
          corpus; bench/imap_load drives 50 clients through five scenarios
          (fetch-bodies, fetch-meta, search, store, pop3-retr) against
          each, with an untimed warm-up pass per server and scenario, then
          several timed rounds alternating the servers; the report takes
          each server's median round (see "read phase" below).  Its raw
          results go to bench/results/read.json, and --only read rewrites
          just its section of docs/BENCHMARKS.md.

The ingest phase:

Workload: 4 KB messages, one recipient each, chosen at random among 1,000
accounts of bench.example, sent by bench/smtp_load over C persistent SMTP
connections (C = 1, 10, 50).  Both stacks run on this machine in the same
run, one after the other, each from fresh state for every concurrency:

  Strata      `strata serve` (threads=2).  A 250 is sent only after the
              message is durable and committed to the index, so "accepted"
              is also "visible": the script checks it by counting the rows
              of the messages table of index.db, opened read-only.
  Reference   Postfix (smtpd on a loopback port, queue files fsynced) hands
              each message over LMTP to Dovecot, which stores it in Maildir
              (fsynced) for 1,000 virtual users from a passwd-file.  The
              script counts delivered files in the Maildirs and takes the
              end-to-end rate from the first message sent to the last file
              delivered.

Durability: both stacks run with their durable defaults.  One extra Strata
run with store.fsync=no shows what durability costs; it is labelled as
giving up D.  One more c=50 Strata run under `perf record` (when perf is
installed) shows where the daemon's CPU time goes; its throughput is not
used for the comparison.

Order and measurement: all Strata runs first, then the reference's; every
run's state is kept until the end and deleted then, so that neither stack
pays for the other's deleted files (see the ext4 note in the report).  Each
stack's daemons run in a cgroup of their own, so their CPU time, children
included, is measured exactly.  Results go to docs/BENCHMARKS.md,
bench/results/ingest.png, bench/results/latency.png (bench/plot_latency.py)
and bench/results/ingest.json (raw numbers);
--from-json rewrites the first two from the last without running anything.

Safety and bounds: all traffic is on 127.0.0.1; each load run is bounded in
messages (or sessions) and seconds; every wait (start-up, delivery, shutdown) has a
deadline; every daemon this script starts is stopped in a finally block,
also on SIGINT/SIGTERM.  It must run as root (Postfix and Dovecot need it;
the daemons drop to their own users).  A system Postfix or Dovecot found
running is stopped first so that it does not compete for the two cores.
"""

import argparse
import base64
import datetime
import grp
import imaplib
import json
import os
import platform
import pwd
import random
import re
import resource
import shutil
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DOMAIN = "bench.example"
ACCOUNTS = 1000
PREFIX = "user"
SIZE = 4096
SEED = 20251128
PASSWORD_HASH = ("$6$strataBench$uLS5PwDxfNaMyRHi4t42U/PQn.zSmgJA//4qxZrv7CwQUSbPjCz"
                 "VBWs89PQ40sDVf.Z9DXHcHnrpuYq0KadbH/")  # SHA512-CRYPT of "benchpass"
CONCURRENCY = (1, 10, 50)
# concurrency -> (message cap, seconds cap) for the measured run
PLAN = {1: (2000, 15), 10: (10000, 15), 50: (20000, 15)}
WARMUP = (200, 10)
PORT_STRATA_SMTP = 2725
PORT_STRATA_ADMIN = 2726
PORT_POSTFIX = 2625
START_WAIT_S = 30
DELIVERY_WAIT_S = 120
STOP_WAIT_S = 20
TOTAL_BUDGET_S = 540  # the ingest phase (the read phase has READ_BUDGET_S)

TARGET_RATIO = 5.0
TARGET_P99_MS = 50.0


class BenchError(Exception):
    """A condition that makes the run meaningless; reported and fatal."""


def log(msg):
    print("bench: " + msg, flush=True)


def run_cmd(args, timeout=60, check=True, preexec_fn=None):
    """Runs a command to completion (bounded); returns CompletedProcess with
    the output in .stdout.  Output goes through a file, not a pipe, so a
    daemon that keeps the descriptor open does not hold up the wait."""
    with tempfile.TemporaryFile() as out:
        p = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                           timeout=timeout, preexec_fn=preexec_fn)
        out.seek(0)
        p.stdout = out.read().decode("utf-8", "replace")
    if check and p.returncode != 0:
        raise BenchError("%s failed (%d): %s"
                         % (" ".join(args), p.returncode, p.stdout.strip()[-2000:]))
    return p


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_pid_gone(pid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


def port_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_smtp_banner(port, seconds, alive=lambda: True):
    """Waits until 127.0.0.1:port answers with a 220 greeting."""
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError("server on port %d exited during start-up" % port)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                line = s.recv(512).decode("ascii", "replace")
                if line.startswith("220"):
                    s.sendall(b"QUIT\r\n")
                    return
                last = line.strip()
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise BenchError("no SMTP greeting on port %d within %ds (%s)" % (port, seconds, last))


def cpu_times():
    """System-wide (busy, iowait, total) jiffies from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle, iowait = v[3], v[4]
    total = sum(v[:8])
    return total - idle - iowait, iowait, total


def cpu_delta(before, after):
    busy = after[0] - before[0]
    iowait = after[1] - before[1]
    total = max(1, after[2] - before[2])
    return round(100.0 * busy / total, 1), round(100.0 * iowait / total, 1)


QUIET_BUSY_PCT = 50.0   # others may use at most this much of the machine's CPU ...
QUIET_WAIT_S = 30       # ... or we stop waiting for them after this long


def wait_quiet(max_wait_s=QUIET_WAIT_S):
    """Before a measured run: waits (bounded by max_wait_s) until the
    machine's CPUs were less than QUIET_BUSY_PCT busy over the last second,
    so that work outside the benchmark skews the two stacks as little as
    possible.  Returns (busy percent of the last second, seconds waited)."""
    t0 = time.monotonic()
    while True:
        a = cpu_times()
        time.sleep(1.0)
        busy = cpu_delta(a, cpu_times())[0]
        waited = time.monotonic() - t0
        if busy < QUIET_BUSY_PCT or waited >= max_wait_s:
            return busy, round(waited, 1)


class CpuGroup:
    """CPU time of one stack's daemons and every process they start, from a
    cgroup of its own (v1 cpuacct, else v2).  Degrades to "unknown" (None)
    where neither can be created."""

    ROOTS = (("/sys/fs/cgroup/cpuacct", "cpuacct.usage", 1e-9),
             ("/sys/fs/cgroup/unified", "cpu.stat", 1e-6),
             ("/sys/fs/cgroup", "cpu.stat", 1e-6))

    def __init__(self, name):
        self.path = None
        for root, stat, scale in self.ROOTS:
            if not os.path.exists(os.path.join(root, stat)):
                continue
            path = os.path.join(root, "%s-%d" % (name, os.getpid()))
            try:
                os.mkdir(path)
            except OSError:
                continue
            self.path, self.stat, self.scale = path, stat, scale
            break

    def enter(self):
        """For preexec_fn: moves the calling (child) process into the group."""
        if self.path:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def seconds(self):
        if not self.path:
            return None
        try:
            with open(os.path.join(self.path, self.stat)) as f:
                text = f.read()
        except OSError:
            return None
        if self.stat == "cpu.stat":
            m = re.search(r"^usage_usec (\d+)", text, re.M)
            return int(m.group(1)) * self.scale if m else None
        return int(text.split()[0]) * self.scale

    def remove(self):
        """Removes the group once the daemons have exited (bounded wait)."""
        if not self.path:
            return
        for _ in range(50):
            try:
                os.rmdir(self.path)
                break
            except OSError:
                time.sleep(0.1)
        self.path = None


def thread_cpu(pid):
    """{thread name: [CPU seconds, thread count]} for every thread of pid."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                stat = f.read()
        except OSError:
            continue  # the thread exited
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        entry = out.setdefault(name, [0.0, 0])
        entry[0] += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        entry[1] += 1
    return out


def thread_cpu_pct(before, after, seconds):
    """Per thread name: percent of one core between two thread_cpu() snapshots."""
    rows = []
    for name, (sec, count) in after.items():
        used = sec - before.get(name, [0.0, 0])[0]
        rows.append((name, count, round(100.0 * used / max(seconds, 1e-9), 1)))
    return sorted(rows, key=lambda r: -r[2])


def cpu_used(group, t0, seconds):
    """(percent of one core, seconds) used by `group` since t0, or (None, None)."""
    t1 = group.seconds()
    if t0 is None or t1 is None:
        return None, None
    return round(100.0 * (t1 - t0) / max(seconds, 1e-9), 1), t1 - t0


# ---- load generator -----------------------------------------------------

class Load:
    """Runs bench/smtp_load and returns its JSON summary."""

    def __init__(self, binary):
        self.binary = binary

    def run(self, port, concurrency, messages, seconds, seed):
        args = [self.binary, "--host", "127.0.0.1", "--port", str(port),
                "--concurrency", str(concurrency), "--messages", str(messages),
                "--duration-max", str(seconds), "--size", str(SIZE), "--domain", DOMAIN,
                "--accounts", str(ACCOUNTS), "--prefix", PREFIX, "--seed", str(seed),
                "--timeout", "30"]
        load_before = os.getloadavg()[0]
        cpu0 = cpu_times()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=seconds + 90)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1 = cpu_times()
        if p.returncode != 0:
            raise BenchError("smtp_load failed (%d): %s %s" % (p.returncode, p.stdout, p.stderr))
        res = json.loads(p.stdout)
        res["cpu_busy_pct"], res["cpu_iowait_pct"] = cpu_delta(cpu0, cpu1)
        res["loadavg_before"] = round(load_before, 2)
        used = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        res["client_cpu_pct"] = round(100.0 * used / max(res["elapsed"], 1e-9), 1)
        if res["failed"]:
            log("  %d of %d messages failed, last error: %s"
                % (res["failed"], res["attempted"], res["last_error"]))
        return res


# ---- Strata -------------------------------------------------------------

class Strata:
    """One `strata serve` with a fresh state directory and 1,000 accounts."""

    def __init__(self, binary, workdir, overrides=()):
        self.binary = binary
        self.state = os.path.join(workdir, "strata")
        self.logfile = os.path.join(workdir, "strata.log")
        self.overrides = list(overrides)
        self.proc = None
        self.log_fh = None
        self.cpu = CpuGroup("strata-bench-strata")

    def _opts(self):
        opts = ["-o", "state_dir=" + self.state]
        for o in self.overrides:
            opts += ["-o", o]
        return opts

    def setup(self):
        os.makedirs(self.state, mode=0o750)
        users = os.path.join(os.path.dirname(self.state), "strata-users.csv")
        with open(users, "w") as f:
            for i in range(ACCOUNTS):
                f.write("%s%d@%s,{SHA512-CRYPT}%s\n" % (PREFIX, i, DOMAIN, PASSWORD_HASH))
        run_cmd([self.binary] + self._opts() + ["domain", "add", DOMAIN])
        run_cmd([self.binary] + self._opts() + ["user", "import", users, "--create-domains"],
                timeout=300)
        # The admin commands run as root give the state directory to the
        # daemon's user themselves, as they do for an administrator.

    def start(self):
        for port in (PORT_STRATA_SMTP, PORT_STRATA_ADMIN):
            if not port_free(port):
                raise BenchError("port %d is in use" % port)
        self.log_fh = open(self.logfile, "ab")
        # Every connection of the load comes from 127.0.0.1, and the
        # connection guard lets one address hold 20 MX connections
        # (guard.mx.addr.concurrency): at 50 it would measure the guard, not
        # delivery (bench/flood.py measures the guard).  Postfix's per-client
        # limit (smtpd_client_connection_count_limit) is 50 by default.
        args = [self.binary, "serve"] + self._opts() + [
            "-o", "smtp.listen=127.0.0.1:%d" % PORT_STRATA_SMTP,
            "-o", "admin.listen=127.0.0.1:%d" % PORT_STRATA_ADMIN,
            "-o", "guard.allow=127.0.0.0/8", "-o", "threads=2"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log_fh,
                                     stderr=subprocess.STDOUT, preexec_fn=self.cpu.enter)
        wait_smtp_banner(PORT_STRATA_SMTP, START_WAIT_S, lambda: self.proc.poll() is None)

    @property
    def pid(self):
        return self.proc.pid

    def metrics(self):
        url = "http://127.0.0.1:%d/metrics" % PORT_STRATA_ADMIN
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode("utf-8", "replace")
        out = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
        return out

    def visible(self):
        """Messages in the index, counted through a read-only connection."""
        path = os.path.join(self.state, "index.db")
        db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
        try:
            return db.execute("SELECT count(*) FROM messages").fetchone()[0]
        finally:
            db.close()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                log("strata did not stop on SIGTERM within %ds; killing it" % STOP_WAIT_S)
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self.log_fh is not None:
            self.log_fh.close()
            self.log_fh = None
        self.cpu.remove()


# ---- Postfix + Dovecot --------------------------------------------------

def fill_template(name, values):
    with open(os.path.join(HERE, "reference", name)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("@%s@" % k, str(v))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise BenchError("template %s: unfilled %s" % (name, ", ".join(sorted(set(left)))))
    return text


class Reference:
    """Postfix smtpd -> LMTP -> Dovecot Maildir, in its own directories."""

    def __init__(self, workdir):
        self.dir = workdir
        self.pf_config = os.path.join(workdir, "postfix")
        self.pf_queue = os.path.join(workdir, "postfix-queue")
        self.pf_data = os.path.join(workdir, "postfix-data")
        self.dv_base = os.path.join(workdir, "dovecot-run")
        self.dv_state = os.path.join(workdir, "dovecot-state")
        self.dv_conf = os.path.join(workdir, "dovecot.conf")
        self.mail = os.path.join(workdir, "mail")
        self.users = os.path.join(workdir, "dovecot-users")
        self.lmtp_socket = os.path.join(self.dv_base, "lmtp-bench")
        self.pf_started = False
        self.dv_started = False
        try:
            # Dovecot stores the virtual users' mail as Debian's "mail" user.
            self.mail_uid = pwd.getpwnam("mail").pw_uid
            self.mail_gid = grp.getgrnam("mail").gr_gid
        except KeyError:
            raise BenchError("the system has no 'mail' user and group for Dovecot's Maildirs")
        self.cpu = CpuGroup("strata-bench-reference")

    def setup(self):
        for d in (self.pf_config, self.pf_queue, self.pf_data, self.dv_state, self.mail):
            os.makedirs(d, mode=0o755)
        os.chown(self.mail, self.mail_uid, self.mail_gid)
        self._setup_dovecot()
        self._setup_postfix()

    def _setup_dovecot(self):
        dom = os.path.join(self.mail, DOMAIN)
        os.makedirs(dom, mode=0o700)
        os.chown(dom, self.mail_uid, self.mail_gid)
        with open(self.users, "w") as f:
            for i in range(ACCOUNTS):
                home = os.path.join(dom, "%s%d" % (PREFIX, i))
                f.write("%s%d@%s:{SHA512-CRYPT}%s:%d:%d::%s::\n"
                        % (PREFIX, i, DOMAIN, PASSWORD_HASH, self.mail_uid, self.mail_gid, home))
                # Existing mailboxes, as on a running server: Maildir made up front.
                for sub in ("", "cur", "new", "tmp"):
                    p = os.path.join(home, sub)
                    os.mkdir(p, 0o700)
                    os.chown(p, self.mail_uid, self.mail_gid)
        os.chmod(self.users, 0o644)
        with open(self.dv_conf, "w") as f:
            f.write(fill_template("dovecot.conf.in", {
                "BASE_DIR": self.dv_base, "STATE_DIR": self.dv_state,
                "LOG_FILE": os.path.join(self.dir, "dovecot.log"), "MAIL_DIR": self.mail,
                "UID": self.mail_uid, "GID": self.mail_gid, "USERS_FILE": self.users,
                "LMTP_SOCKET_NAME": os.path.basename(self.lmtp_socket), "DOMAIN": DOMAIN}))

    def _setup_postfix(self):
        values = {"CONFIG_DIR": self.pf_config, "QUEUE_DIR": self.pf_queue,
                  "DATA_DIR": self.pf_data, "LOG_FILE": os.path.join(self.dir, "postfix.log"),
                  "DOMAIN": DOMAIN, "LMTP_SOCKET": self.lmtp_socket, "PROCESS_LIMIT": 100,
                  "SMTPD_LISTEN": "127.0.0.1:%d" % PORT_POSTFIX}
        for name in ("main.cf", "master.cf"):
            with open(os.path.join(self.pf_config, name), "w") as f:
                f.write(fill_template(name + ".in", values))
        vmailbox = os.path.join(self.pf_config, "vmailbox")
        with open(vmailbox, "w") as f:
            for i in range(ACCOUNTS):
                f.write("%s%d@%s %s/%s%d/\n" % (PREFIX, i, DOMAIN, DOMAIN, PREFIX, i))
        run_cmd(["postmap", "-c", self.pf_config, "hash:" + vmailbox])
        pf = pwd.getpwnam("postfix")
        os.chown(self.pf_data, pf.pw_uid, pf.pw_gid)
        os.chmod(self.pf_data, 0o700)

    def start(self):
        if not port_free(PORT_POSTFIX):
            raise BenchError("port %d is in use" % PORT_POSTFIX)
        self.dv_started = True  # before: a failed start may still leave a master
        self._run_logged(["dovecot", "-c", self.dv_conf], "dovecot.log")
        deadline = time.monotonic() + START_WAIT_S
        while not os.path.exists(self.lmtp_socket):
            if time.monotonic() > deadline:
                raise BenchError("dovecot did not create %s" % self.lmtp_socket)
            time.sleep(0.1)
        self.pf_started = True
        self._run_logged(["postfix", "-c", self.pf_config, "start"], "postfix.log")
        wait_smtp_banner(PORT_POSTFIX, START_WAIT_S)

    def _run_logged(self, args, logname):
        """Runs a start command; on failure the error names the daemon's log tail."""
        p = run_cmd(args, timeout=120, check=False, preexec_fn=self.cpu.enter)
        if p.returncode != 0:
            tail = ""
            try:
                with open(os.path.join(self.dir, logname), errors="replace") as f:
                    tail = "".join(f.readlines()[-5:])
            except OSError:
                pass
            raise BenchError("%s failed (%d): %s %s" % (" ".join(args), p.returncode,
                                                       p.stdout.strip(), tail.strip()))

    def _maildirs(self):
        dom = os.path.join(self.mail, DOMAIN)
        for i in range(ACCOUNTS):
            base = os.path.join(dom, "%s%d" % (PREFIX, i))
            yield os.path.join(base, "new")
            yield os.path.join(base, "cur")

    def delivered(self):
        n = 0
        for d in self._maildirs():
            try:
                with os.scandir(d) as it:
                    n += sum(1 for _ in it)
            except FileNotFoundError:
                pass
        return n

    def last_delivery(self):
        """Newest status-change time of a delivered file (the rename into new/)."""
        last = 0.0
        for d in self._maildirs():
            try:
                with os.scandir(d) as it:
                    for e in it:
                        last = max(last, e.stat(follow_symlinks=False).st_ctime)
            except FileNotFoundError:
                pass
        return last

    def queued(self):
        """Messages still in Postfix's queue (cheap: a few small directories)."""
        n = 0
        for q in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(os.path.join(self.pf_queue, q)):
                n += len(files)
        return n

    def wait_delivered(self, target, seconds):
        """Waits until `target` messages are in the Maildirs; returns the count seen.
        While Postfix still holds mail it watches the queue, not the 2,000
        Maildir directories, so that the wait itself takes little CPU from
        the delivery it waits for; the delivery time comes from the files."""
        deadline = time.monotonic() + seconds
        while self.queued() > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        n = self.delivered()
        while n < target and time.monotonic() < deadline:
            time.sleep(1.0)
            n = self.delivered()
        return n

    def stop(self):
        if self.pf_started:
            pid = read_pid(os.path.join(self.pf_queue, "pid", "master.pid"))
            run_cmd(["postfix", "-c", self.pf_config, "stop"], check=False)
            if pid and not wait_pid_gone(pid, STOP_WAIT_S):
                run_cmd(["postfix", "-c", self.pf_config, "abort"], check=False)
                if not wait_pid_gone(pid, 5):
                    os.kill(pid, signal.SIGKILL)
            self.pf_started = False
        if self.dv_started:
            pid = read_pid(os.path.join(self.dv_base, "master.pid"))
            run_cmd(["doveadm", "-c", self.dv_conf, "stop"], check=False)
            if pid and not wait_pid_gone(pid, STOP_WAIT_S):
                os.kill(pid, signal.SIGKILL)
                wait_pid_gone(pid, 5)
            self.dv_started = False
        self.cpu.remove()


def stop_system_instances():
    """Stops a Postfix or Dovecot that the package installation left running."""
    pid = read_pid("/var/spool/postfix/pid/master.pid")
    if pid and pid_alive(pid):
        log("stopping the system Postfix (pid %d) so it does not compete for CPU" % pid)
        run_cmd(["postfix", "stop"], check=False)
        wait_pid_gone(pid, STOP_WAIT_S)
    pid = read_pid("/run/dovecot/master.pid")
    if pid and pid_alive(pid):
        log("stopping the system Dovecot (pid %d) so it does not compete for CPU" % pid)
        run_cmd(["doveadm", "stop"], check=False)
        wait_pid_gone(pid, STOP_WAIT_S)


# ---- runs ---------------------------------------------------------------

def run_strata(binary, load, workroot, c, overrides=(), profile=None):
    """Fresh Strata, warm-up, measured run.  Returns a result dict."""
    work = tempfile.mkdtemp(prefix="strata-c%d-" % c, dir=workroot)
    os.chmod(work, 0o755)
    st = Strata(binary, work, overrides)
    perf = None
    try:
        st.setup()
        st.start()
        warm = load.run(PORT_STRATA_SMTP, c, WARMUP[0], WARMUP[1], SEED + c)
        quiet = wait_quiet()
        m0 = st.metrics()
        cpu0 = st.cpu.seconds()
        threads0 = thread_cpu(st.pid)
        if profile:
            perf = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-p", str(st.pid),
                                     "-o", profile], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        n, secs = PLAN[c]
        res = load.run(PORT_STRATA_SMTP, c, n, secs, SEED + 1000 + c)
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait(60)
            perf = None
        res["threads"] = thread_cpu_pct(threads0, thread_cpu(st.pid), res["elapsed"])
        m1 = st.metrics()
        visible = st.visible()
        expect = warm["accepted"] + res["accepted"]
        res["visible"] = visible
        res["accepted_total"] = expect
        res["visible_ok"] = visible == expect
        if visible != expect:
            log("  WARNING: %d messages accepted but %d visible in the index" % (expect, visible))
        res["e2e_rate"] = res["rate"]
        res["busy_before_pct"], res["quiet_wait_s"] = quiet
        res["server_cpu_pct"], used = cpu_used(st.cpu, cpu0, res["elapsed"])
        res["cpu_ms_per_msg"] = round(1000.0 * used / res["accepted"], 3) \
            if used is not None and res["accepted"] else None
        res["metrics"] = metric_deltas(m0, m1)
        return res
    finally:
        if perf and perf.poll() is None:
            perf.kill()
            perf.wait(10)
        st.stop()


def metric_deltas(m0, m1):
    def d(name):
        return m1.get(name, 0.0) - m0.get(name, 0.0)
    out = {"accepted": d("strata_smtp_messages_accepted_total"),
           "commits": d("strata_store_commits_total"),
           "fsyncs": d("strata_store_fsyncs_total")}
    for hist, key in (("strata_store_commit_batch_size", "batch_mean"),
                      ("strata_store_commit_duration_seconds", "commit_ms_mean"),
                      ("strata_smtp_accept_latency_seconds", "server_latency_ms_mean")):
        cnt = d(hist + "_count")
        mean = d(hist + "_sum") / cnt if cnt > 0 else None
        if mean is not None and key.endswith("_ms_mean"):
            mean *= 1000.0
        out[key] = round(mean, 2) if mean is not None else None
    return out


def run_reference(load, workroot, c):
    """Fresh Postfix + Dovecot, warm-up, measured run, wait for delivery."""
    work = tempfile.mkdtemp(prefix="reference-c%d-" % c, dir=workroot)
    os.chmod(work, 0o755)
    ref = Reference(work)
    try:
        ref.setup()
        ref.start()
        warm = load.run(PORT_POSTFIX, c, WARMUP[0], WARMUP[1], SEED + c)
        base = ref.wait_delivered(warm["accepted"], DELIVERY_WAIT_S)
        if base < warm["accepted"]:
            raise BenchError("reference: warm-up messages not delivered (%d of %d)"
                             % (base, warm["accepted"]))
        quiet = wait_quiet()
        cpu0 = ref.cpu.seconds()
        n, secs = PLAN[c]
        res = load.run(PORT_POSTFIX, c, n, secs, SEED + 1000 + c)
        res["busy_before_pct"], res["quiet_wait_s"] = quiet
        got = ref.wait_delivered(base + res["accepted"], DELIVERY_WAIT_S)
        t_end = time.time()
        res["delivered"] = got - base
        res["delivery_complete"] = res["delivered"] >= res["accepted"]
        last = ref.last_delivery() if res["delivery_complete"] else t_end
        span = max(last - res["start_unix"], res["elapsed"], 1e-9)
        res["e2e_elapsed"] = round(span, 3)
        res["e2e_rate"] = round(res["delivered"] / span, 2)
        res["server_cpu_pct"], used = cpu_used(ref.cpu, cpu0, span)
        res["cpu_ms_per_msg"] = round(1000.0 * used / res["delivered"], 3) \
            if used is not None and res["delivered"] else None
        if not res["delivery_complete"]:
            log("  WARNING: only %d of %d accepted messages delivered within %ds"
                % (res["delivered"], res["accepted"], DELIVERY_WAIT_S))
        return res
    finally:
        ref.stop()


# ---- profile ------------------------------------------------------------

# Kernel entry points whose inclusive time says where a mail server's time
# goes.  (User-space libraries are built without frame pointers, so their
# inclusive time is not reliable; their self time is in the "objects" view.)
HOT_PATHS = (
    ("file create/open (open, O_CREAT: inode allocation)", ("do_sys_openat2",)),
    ("fsync / fdatasync", ("do_fsync",)),
    ("rename", ("do_renameat2",)),
    ("unlink", ("do_unlinkat",)),
    ("write(2) to files and sockets", ("ksys_write",)),
    ("network send", ("tcp_sendmsg",)),
    ("network receive", ("tcp_recvmsg",)),
    ("context switches (schedule)", ("__schedule", "schedule")),
    ("futex (lock and condition waits)", ("do_futex",)),
    ("epoll (event loop)", ("do_epoll_wait",)),
)


def perf_lines(datafile, extra):
    p = run_cmd(["perf", "report", "-i", datafile, "--stdio", "-g", "none"] + extra,
                timeout=180, check=False)
    out = []
    for ln in p.stdout.splitlines():
        if not ln.strip() or ln.startswith("#"):
            continue
        ln = re.sub(r"(\s+-)+\s*$", "", ln.rstrip())
        if re.search(r"\[[k.]\] 0x[0-9a-f]+$", ln):
            continue  # unresolved frame: says nothing
        out.append(ln)
    return out


def perf_summary(datafile):
    """Self time by object and by symbol, and the share of inclusive time under
    each of HOT_PATHS, for the profiled run."""
    out = {"objects": perf_lines(datafile, ["--no-children", "--sort", "dso",
                                            "--percent-limit", "1"])[:12],
           "symbols": perf_lines(datafile, ["--no-children", "--sort", "dso,symbol",
                                            "--percent-limit", "1.5"])[:20]}
    incl = {}
    for ln in perf_lines(datafile, ["--children", "--sort", "symbol", "--percent-limit", "0.5"]):
        m = re.match(r"\s*([\d.]+)%\s+[\d.]+%\s+\[[k.]\]\s+(\S+)", ln)
        if m:
            incl.setdefault(m.group(2), float(m.group(1)))
    out["hot_paths"] = [(label, max(incl.get(sym, 0.0) for sym in syms))
                        for label, syms in HOT_PATHS]
    return out


# ---- read phase: IMAP and POP3 against Dovecot ---------------------------
#
# One Strata and one Dovecot hold the same seeded corpus (READ_USERS
# mailboxes of READ_PER_USER messages).  Strata gets it over SMTP (one
# connection per loader thread, each mailbox's messages in order, so UIDs
# follow the corpus); Dovecot gets it written straight into Maildir, as its
# LMTP would have stored it (LF line ends, Return-Path, Delivered-To and
# Received added, S= and W= sizes in the file name).  Both then see the
# same \Seen flags.  For every scenario, bench/imap_load makes one untimed
# warm-up pass against each server (Dovecot builds its index and cache
# there), then READ_ROUNDS timed runs each, alternating which server goes
# first; the report takes each server's median round by messages/s.
# The POP3 scenario comes last, since RETR may mark messages \Seen and
# UNSEEN must keep matching the corpus.

READ_USERS = 50
READ_PER_USER = 200
READ_WIDTH = 4
READ_SEED = 20251129
READ_ROUNDS = 5
READ_SCENARIOS = ("fetch-bodies", "fetch-meta", "search", "store", "pop3-retr")
# Sessions per client and run, so that each run lasts seconds, not milliseconds.
READ_ITERATIONS = {"fetch-bodies": 2, "fetch-meta": 3, "search": 3, "store": 1, "pop3-retr": 1}
# store: +FLAGS then -FLAGS on the first READ_STORE_MAX messages of each
# mailbox, one command per message (80 STOREs per client and session).
READ_STORE_MAX = 40
READ_RUN_MAX_S = 60          # imap_load stops starting sessions after this
# Latency at the same load: after the closed-loop rounds of a scenario, both
# servers are offered READ_PACED_LOAD x the sessions/s Dovecot reached in its
# median round (imap_load --interval-ms: each client starts its sessions on a
# fixed schedule, staggered across clients), READ_PACED_ROUNDS rounds each.
READ_PACED_LOAD = 0.5
READ_PACED_ROUNDS = 3
READ_PACED_ITERATIONS = {"fetch-bodies": 4, "fetch-meta": 6, "search": 4, "store": 2, "pop3-retr": 2}
READ_BUDGET_S = 1260         # the whole read phase, set-up and profiles included
READ_TARGET_RATIO = 2.0
READ_QUIET_WAIT_S = 8        # runs are short: wait less for a quiet machine than ingest does
PORT_STRATA_IMAP = 2743
PORT_STRATA_POP3 = 2710
PORT_DOVECOT_IMAP = 2643
PORT_DOVECOT_POP3 = 2610
PASSWORD = "benchpass"
SEARCH_FROM = "carol.finch"
SEARCH_SUBJECT = "quarterly"
SEARCH_BODY = "zephyrquartz"
SEEN_PERCENT = 70
# The headline command of each scenario, as imap_load names it.
READ_MAIN = {"fetch-bodies": "FETCH 1:* (RFC822.SIZE BODY.PEEK[])",
             "fetch-meta": "FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE)",
             "search": "SEARCH (5 forms)", "store": "STORE n +FLAGS/-FLAGS (\\Flagged)",
             "pop3-retr": "RETR n"}

WORDS = ("the of and to in is for on with as at by from this that be are was it an or "
         "we you they our your their will can would should could about after before "
         "project budget review team customer account order delivery schedule update "
         "network server storage backup release version report status issue ticket "
         "invoice payment contract proposal draft agenda minutes summary detail plan "
         "office travel hotel flight booking confirmation request approval deadline "
         "monday tuesday wednesday thursday friday weekend morning afternoon evening "
         "please thanks regards attached below above note question answer support "
         "price offer discount service quality data figure table chart result test "
         "north south east west city region market sales growth cost revenue margin "
         "family friend holiday photo garden kitchen music film book coffee lunch").split()
FIRST = ("Alice Bob Dave Erin Frank Grace Heidi Ivan Judy Mallory Niaj Olivia Peggy "
         "Rupert Sybil Trent Victor Walter Yvonne Zoe").split()
LAST = ("Adams Baker Clark Davis Evans Foster Green Hughes Irving Jones King Lewis "
        "Moore Nolan Owens Parker Quinn Reed Scott Turner").split()
# (display name, address); a few display names are not ASCII, as in real mail.
SENDERS = ([("%s %s" % (f, l), "%s.%s@%s" % (f.lower(), l.lower(), d))
            for f, l, d in zip(FIRST, LAST, ["mail.example", "corp.example", "isp.example",
                                              "shop.example"] * 5)]
           + [("Carol Finch", "carol.finch@partner.example"),
              ("Ren\u00e9e D\u00fcrr", "renee.durr@verein.example"),
              ("Jos\u00e9 Mu\u00f1oz", "jose.munoz@empresa.example"),
              ("\u5c71\u7530 \u592a\u90ce", "yamada@kaisha.example"),
              ("Newsletter", "news@lists.example"),
              ("Shop Orders", "orders@shop.example")])
SUBJECTS = ("Re: {w} {w} meeting notes", "Invoice {n} for {w} {w}", "Quarterly report: {w} {w}",
            "Your order {n} has shipped", "Weekly digest: {w} and {w}", "Fwd: {w} {w} {w}",
            "Quarterly {w} review, draft {n}", "Photos from the {w}", "{w} {w} schedule update",
            "R\u00e9union {w} \u2013 compte rendu", "Gr\u00fc\u00dfe aus dem {w}",
            "Quarterly figures \u2013 {w} r\u00e9sum\u00e9", "Re: Re: {w} question",
            "Reminder: {w} deadline {n}")


def encode_word(text, rng):
    """RFC 2047 encoded-word for a header value that is not ASCII, B or Q."""
    raw = text.encode("utf-8")
    if rng.random() < 0.5:
        return "=?UTF-8?B?%s?=" % base64.b64encode(raw).decode("ascii")
    out = []
    for b in raw:
        c = chr(b)
        if c == " ":
            out.append("_")
        elif c.isalnum() and b < 128:
            out.append(c)
        else:
            out.append("=%02X" % b)
    return "=?UTF-8?Q?%s?=" % "".join(out)


def header_text(text, rng):
    try:
        text.encode("ascii")
        return text
    except UnicodeEncodeError:
        return encode_word(text, rng)


def wrap_words(words, width=66):
    lines, cur = [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = w if not cur else cur + " " + w
    if cur:
        lines.append(cur)
    return lines


def text_lines(rng, size, token):
    """Plain text paragraphs of about `size` bytes; `token` is put into the
    first paragraph when given."""
    n = max(20, size // 6)
    words = rng.choices(WORDS, k=n)
    if token:
        words.insert(rng.randrange(min(len(words), 40)), token)
    lines = []
    for i in range(0, len(words), 60):
        lines.extend(wrap_words(words[i:i + 60]))
        lines.append("")
    return lines


def html_lines(lines):
    """The same text as simple HTML, quoted-printable safe: short ASCII
    lines without '=', so the encoded form equals the text."""
    out = ["<html><body>"]
    for ln in lines:
        out.append("<p>%s</p>" % ln if ln else "<br>")
    out.append("</body></html>")
    return out


def base64_lines(data):
    enc = base64.b64encode(data).decode("ascii")
    return [enc[i:i + 76] for i in range(0, len(enc), 76)]


def corpus_message(rng, user, index):
    """One message of the read corpus, CRLF line ends, as (bytes, facts)."""
    sender = rng.choice(SENDERS) if rng.random() > 0.1 else SENDERS[len(FIRST)]
    subj = rng.choice(SUBJECTS).replace("{n}", str(rng.randrange(1000, 99999)))
    while "{w}" in subj:
        subj = subj.replace("{w}", rng.choice(WORDS), 1)
    token = SEARCH_BODY if rng.random() < 0.12 else None
    sent = datetime.datetime(2026, 8, 1) + datetime.timedelta(seconds=rng.randrange(90 * 86400))
    date = "%s, %d %s %s +0100" % (("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[sent.weekday()],
                                   sent.day, ("Aug", "Sep", "Oct", "Nov")[sent.month - 8],
                                   sent.strftime("%Y %H:%M:%S"))
    hdr = ["From: %s <%s>" % (header_text(sender[0], rng), sender[1]),
           "To: <%s>" % user,
           "Subject: %s" % header_text(subj, rng),
           "Date: %s" % date,
           "Message-ID: <%d.%s.%d@corpus.bench.example>" % (READ_SEED, user.split("@")[0], index),
           "MIME-Version: 1.0"]
    text_size = int(min(40000, max(300, rng.lognormvariate(8.0, 0.8))))
    body_text = text_lines(rng, text_size, token)
    kind = rng.random()
    boundary = "=_bench_%d_%d" % (index, rng.randrange(1 << 30))
    if kind < 0.60:
        hdr += ["Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit"]
        body = body_text
    elif kind < 0.85:
        hdr.append('Content-Type: multipart/alternative; boundary="%s"' % boundary)
        body = (["This is a multi-part message in MIME format.", "",
                 "--" + boundary, "Content-Type: text/plain; charset=us-ascii",
                 "Content-Transfer-Encoding: 7bit", ""] + body_text +
                ["--" + boundary, "Content-Type: text/html; charset=utf-8",
                 "Content-Transfer-Encoding: quoted-printable", ""] + html_lines(body_text) +
                ["--" + boundary + "--", ""])
    else:
        att = rng.randbytes(int(min(400000, max(4000, rng.lognormvariate(10.6, 0.7)))))
        ctype, name = rng.choice((("application/pdf", "report.pdf"), ("image/jpeg", "photo.jpg"),
                                  ("application/pdf", "r\u00e9sum\u00e9.pdf")))
        try:
            name.encode("ascii")
            disp = 'attachment; filename="%s"' % name
        except UnicodeEncodeError:
            disp = "attachment; filename*=utf-8''%s" % urllib.parse.quote(name)
        hdr.append('Content-Type: multipart/mixed; boundary="%s"' % boundary)
        body = ["--" + boundary, "Content-Type: text/plain; charset=us-ascii",
                "Content-Transfer-Encoding: 7bit", ""] + body_text
        body += ["--" + boundary, "Content-Type: %s; name=\"%s\"" % (ctype, name.encode(
            "ascii", "replace").decode()), "Content-Transfer-Encoding: base64",
                 "Content-Disposition: " + disp, ""] + base64_lines(att)
        body += ["--" + boundary + "--", ""]
    data = ("\r\n".join(hdr + [""] + body) + "\r\n").encode("ascii")
    facts = {"from": SEARCH_FROM in sender[1], "subject": SEARCH_SUBJECT in subj.lower(),
             "body": token is not None, "seen": rng.randrange(100) < SEEN_PERCENT,
             "kind": "text" if kind < 0.60 else "alternative" if kind < 0.85 else "attachment"}
    return data, facts


def read_user(i):
    return "%s%0*d@%s" % (PREFIX, READ_WIDTH, i, DOMAIN)


def make_corpus():
    """{user: [(bytes, facts), ...]}, the same on every run (seeded)."""
    corpus = {}
    for u in range(READ_USERS):
        rng = random.Random(READ_SEED * 1000 + u)
        user = read_user(u)
        corpus[user] = [corpus_message(rng, user, i) for i in range(READ_PER_USER)]
    return corpus


def corpus_stats(corpus):
    sizes = sorted(len(m) for msgs in corpus.values() for m, _ in msgs)
    kinds = {}
    for msgs in corpus.values():
        for _, f in msgs:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    expect = {k: sum(1 for msgs in corpus.values() for _, f in msgs if f[k])
              for k in ("from", "subject", "body")}
    expect["unseen"] = sum(1 for msgs in corpus.values() for _, f in msgs if not f["seen"])
    return {"messages": len(sizes), "users": len(corpus), "bytes": sum(sizes),
            "size_p50": sizes[len(sizes) // 2], "size_mean": sum(sizes) // len(sizes),
            "size_p99": sizes[int(len(sizes) * 0.99)], "size_max": sizes[-1], "kinds": kinds,
            "expect_per_pass": {"FROM": expect["from"], "SUBJECT": expect["subject"],
                                "BODY": expect["body"], "UNSEEN": expect["unseen"],
                                "SINCE": len(sizes)}}


class ReadStrata(Strata):
    """Strata with IMAP and POP3 listeners and the read corpus's accounts."""

    def setup(self):
        os.makedirs(self.state, mode=0o750)
        users = os.path.join(os.path.dirname(self.state), "strata-read-users.csv")
        with open(users, "w") as f:
            for i in range(READ_USERS):
                f.write("%s,{SHA512-CRYPT}%s\n" % (read_user(i), PASSWORD_HASH))
        run_cmd([self.binary] + self._opts() + ["user", "import", users, "--create-domains"],
                timeout=300)

    def start(self):
        for port in (PORT_STRATA_SMTP, PORT_STRATA_ADMIN, PORT_STRATA_IMAP, PORT_STRATA_POP3):
            if not port_free(port):
                raise BenchError("port %d is in use" % port)
        self.log_fh = open(self.logfile, "ab")
        # The connection guard would rate-limit the benchmark's own logins
        # from 127.0.0.1 (Dovecot has no such limit): loopback bypasses it.
        args = [self.binary, "serve"] + self._opts() + [
            "-o", "smtp.listen=127.0.0.1:%d" % PORT_STRATA_SMTP,
            "-o", "admin.listen=127.0.0.1:%d" % PORT_STRATA_ADMIN,
            "-o", "imap.listen=127.0.0.1:%d" % PORT_STRATA_IMAP,
            "-o", "pop3.listen=127.0.0.1:%d" % PORT_STRATA_POP3,
            "-o", "guard.allow=127.0.0.0/8", "-o", "threads=2"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log_fh,
                                     stderr=subprocess.STDOUT, preexec_fn=self.cpu.enter)
        wait_smtp_banner(PORT_STRATA_SMTP, START_WAIT_S, lambda: self.proc.poll() is None)
        wait_banner(PORT_STRATA_IMAP, b"* OK", START_WAIT_S, lambda: self.proc.poll() is None)

    def load(self, corpus):
        """Delivers the corpus over SMTP (a few persistent connections, each
        mailbox in order on one of them), then sets the corpus's \\Seen flags."""
        users = sorted(corpus)
        errors = []

        def deliver(part):
            try:
                with smtplib.SMTP("127.0.0.1", PORT_STRATA_SMTP, timeout=60) as s:
                    for user in part:
                        for data, _ in corpus[user]:
                            s.sendmail("sender@corpus.bench.example", [user], data)
            except (OSError, smtplib.SMTPException) as e:
                errors.append("%s: %s" % (part[0] if part else "?", e))

        threads = [threading.Thread(target=deliver, args=(users[t::4],)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        if errors or any(t.is_alive() for t in threads):
            raise BenchError("loading the corpus into Strata failed: %s"
                             % ("; ".join(errors[:3]) or "timed out"))
        visible = self.visible()
        if visible != sum(len(v) for v in corpus.values()):
            raise BenchError("Strata holds %d messages after loading %d"
                             % (visible, sum(len(v) for v in corpus.values())))
        for user in users:
            seen = [str(i + 1) for i, (_, f) in enumerate(corpus[user]) if f["seen"]]
            imap_set_seen(PORT_STRATA_IMAP, user, seen)


def wait_banner(port, prefix, seconds, alive=lambda: True):
    """Waits until 127.0.0.1:port greets with a line starting with prefix."""
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError("server on port %d exited during start-up" % port)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                line = s.recv(512)
                if line.startswith(prefix):
                    return
                last = line.decode("ascii", "replace").strip()
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise BenchError("no greeting on port %d within %ds (%s)" % (port, seconds, last))


def imap_set_seen(port, user, uids):
    """Sets \\Seen on the given UIDs of user's INBOX (untimed set-up)."""
    if not uids:
        return
    try:
        m = imaplib.IMAP4("127.0.0.1", port, timeout=60)
        try:
            m.login(user, PASSWORD)
            m.select("INBOX")
            typ, data = m.uid("STORE", ",".join(uids), "+FLAGS.SILENT", "(\\Seen)")
            if typ != "OK":
                raise BenchError("STORE \\Seen for %s: %s" % (user, data))
        finally:
            m.logout()
    except (OSError, imaplib.IMAP4.error) as e:
        raise BenchError("setting \\Seen for %s failed: %s" % (user, e))


class ReadDovecot:
    """Dovecot with IMAP and POP3 on loopback over Maildirs written here."""

    def __init__(self, workdir):
        self.dir = workdir
        self.base = os.path.join(workdir, "dovecot-run")
        self.state = os.path.join(workdir, "dovecot-state")
        self.conf = os.path.join(workdir, "dovecot.conf")
        self.mail = os.path.join(workdir, "mail")
        self.users = os.path.join(workdir, "dovecot-users")
        self.started = False
        try:
            self.uid = pwd.getpwnam("mail").pw_uid
            self.gid = grp.getgrnam("mail").gr_gid
        except KeyError:
            raise BenchError("the system has no 'mail' user and group for Dovecot's Maildirs")
        self.cpu = CpuGroup("strata-bench-dovecot-read")

    def setup(self, corpus):
        for d in (self.state, self.mail):
            os.makedirs(d, mode=0o755)
        os.chown(self.mail, self.uid, self.gid)
        dom = os.path.join(self.mail, DOMAIN)
        self._mkdir(dom)
        with open(self.users, "w") as f:
            for user in sorted(corpus):
                home = os.path.join(dom, user.split("@")[0])
                f.write("%s:{SHA512-CRYPT}%s:%d:%d::%s::\n"
                        % (user, PASSWORD_HASH, self.uid, self.gid, home))
                self._write_maildir(home, user, corpus[user])
        os.chmod(self.users, 0o644)
        with open(self.conf, "w") as f:
            f.write(fill_template("dovecot-read.conf.in", {
                "BASE_DIR": self.base, "STATE_DIR": self.state,
                "LOG_FILE": os.path.join(self.dir, "dovecot.log"), "MAIL_DIR": self.mail,
                "UID": self.uid, "GID": self.gid, "USERS_FILE": self.users,
                "IMAP_PORT": PORT_DOVECOT_IMAP, "POP3_PORT": PORT_DOVECOT_POP3,
                "CORES": os.cpu_count() or 1}))

    def _mkdir(self, path):
        os.mkdir(path, 0o700)
        os.chown(path, self.uid, self.gid)

    def _write_maildir(self, home, user, msgs):
        """Stores msgs as Dovecot's LMTP delivery would have: LF line ends,
        Return-Path, Delivered-To and Received first, S= (file) and W=
        (CRLF) sizes in the name; \\Seen as the S flag."""
        for sub in ("", "cur", "new", "tmp"):
            self._mkdir(os.path.join(home, sub))
        t0 = int(time.time()) - len(msgs)
        stamp = email_date()
        for i, (data, facts) in enumerate(msgs):
            head = ("Return-Path: <sender@corpus.bench.example>\r\nDelivered-To: %s\r\n"
                    "Received: from corpus.bench.example\r\n\tby bench.example with LMTP\r\n"
                    "\tid %08x%08x\r\n\tfor <%s>; %s\r\n" % (user, i, t0 + i, user, stamp))
            crlf = head.encode("ascii") + data
            lf = crlf.replace(b"\r\n", b"\n")
            name = "%d.M%dP%d.bench,S=%d,W=%d:2,%s" % (t0 + i, i, os.getpid(), len(lf),
                                                       len(crlf), "S" if facts["seen"] else "")
            path = os.path.join(home, "cur", name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, lf)
            finally:
                os.close(fd)
            os.chown(path, self.uid, self.gid)

    def start(self):
        for port in (PORT_DOVECOT_IMAP, PORT_DOVECOT_POP3):
            if not port_free(port):
                raise BenchError("port %d is in use" % port)
        self.started = True  # before: a failed start may still leave a master
        p = run_cmd(["dovecot", "-c", self.conf], timeout=120, check=False,
                    preexec_fn=self.cpu.enter)
        if p.returncode != 0:
            raise BenchError("dovecot failed (%d): %s %s" % (p.returncode, p.stdout.strip(),
                                                            log_tail(self.dir, "dovecot.log")))
        wait_banner(PORT_DOVECOT_IMAP, b"* OK", START_WAIT_S)
        wait_banner(PORT_DOVECOT_POP3, b"+OK", START_WAIT_S)

    def stop(self):
        if self.started:
            pid = read_pid(os.path.join(self.base, "master.pid"))
            run_cmd(["doveadm", "-c", self.conf, "stop"], check=False)
            if pid and not wait_pid_gone(pid, STOP_WAIT_S):
                os.kill(pid, signal.SIGKILL)
                wait_pid_gone(pid, 5)
            self.started = False
        self.cpu.remove()


def email_date():
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())


def log_tail(directory, name, lines=5):
    try:
        with open(os.path.join(directory, name), errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()
    except OSError:
        return ""


class ReadLoad:
    """Runs bench/imap_load for one scenario and returns its JSON result."""

    def __init__(self, binary):
        self.binary = binary

    def run(self, scenario, port, iterations, interval_ms=0):
        since = time.strftime("%d-%b-%Y", time.gmtime(time.time() - 2 * 86400)).lstrip("0")
        args = [self.binary, "--host", "127.0.0.1", "--port", str(port),
                "--scenario", scenario, "--clients", str(READ_USERS),
                "--iterations", str(iterations), "--duration-max", str(READ_RUN_MAX_S),
                "--timeout", "60", "--prefix", PREFIX, "--width", str(READ_WIDTH),
                "--domain", DOMAIN, "--accounts", str(READ_USERS), "--password", PASSWORD,
                "--expect-messages", str(READ_PER_USER), "--store-max", str(READ_STORE_MAX),
                "--search-from", SEARCH_FROM,
                "--search-subject", SEARCH_SUBJECT, "--search-body", SEARCH_BODY,
                "--search-since", since]
        if interval_ms:
            args += ["--interval-ms", str(interval_ms)]
        load_before = os.getloadavg()[0]
        cpu0 = cpu_times()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=READ_RUN_MAX_S + 120)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            raise BenchError("imap_load failed (%d): %s %s" % (p.returncode, p.stdout, p.stderr))
        res = json.loads(p.stdout.splitlines()[0])
        res["cpu_busy_pct"], res["cpu_iowait_pct"] = cpu_delta(cpu0, cpu_times())
        res["loadavg_before"] = round(load_before, 2)
        used = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        res["client_cpu_pct"] = round(100.0 * used / max(res["elapsed"], 1e-9), 1)
        return res


def read_measure(load, server, scenario, port, iterations, interval_ms=0):
    """One timed run with the server's CPU time."""
    quiet = wait_quiet(READ_QUIET_WAIT_S)
    cpu0 = server.cpu.seconds()
    res = load.run(scenario, port, iterations, interval_ms)
    res["busy_before_pct"], res["quiet_wait_s"] = quiet
    res["server_cpu_pct"], used = cpu_used(server.cpu, cpu0, res["elapsed"])
    res["cpu_ms_per_msg"] = round(1000.0 * used / res["messages"], 4) \
        if used is not None and res["messages"] else None
    return res


def read_problems(res, expect):
    """Why a run cannot be taken at face value (empty when it can)."""
    out = []
    if res["errors"]:
        out.append("%d error(s) in %d session(s), e.g. %s"
                   % (res["errors"], res["failed_sessions"], res["last_error"]))
    if res["truncated"]:
        out.append("stopped at the %d s limit before finishing" % READ_RUN_MAX_S)
    if "matches" in res and not res["errors"] and not res["truncated"]:
        for form, n in sorted(res["matches"].items()):
            want = expect[form] * res["iterations"]
            if n != want:
                out.append("SEARCH %s matched %d messages, the corpus has %d" % (form, n, want))
    return out


def median_round(runs):
    """The run with the median messages/s (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["messages_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def median_p99_round(runs):
    """Paced runs offer the same load every round: the one with the median main-command p99."""
    ordered = sorted(runs, key=lambda r: r["latency_ms"]["p99"])
    return ordered[(len(ordered) - 1) // 2]


def paced_interval_ms(dovecot_round):
    """Per-client session interval that offers READ_PACED_LOAD x Dovecot's sessions/s."""
    rate = dovecot_round["sessions"] / max(dovecot_round["elapsed"], 1e-9)
    return max(1, int(round(1000.0 * READ_USERS / (READ_PACED_LOAD * max(rate, 1e-9)))))


def read_verdict(read, sc):
    """(met, ratio, Strata p99, Dovecot p99) of one scenario: throughput from the closed-loop
    median rounds, p99 at the same load when the paced rounds ran, else closed-loop."""
    runs = read["runs"].get(sc)
    if not runs or not runs["strata"] or not runs["dovecot"]:
        return False, 0.0, None, None
    s, d = median_round(runs["strata"]), median_round(runs["dovecot"])
    rate = ratio(s["messages_per_s"], d["messages_per_s"]) or 0.0
    paced = read.get("paced", {}).get(sc)
    if paced and paced["strata"] and paced["dovecot"]:
        sp, dp = median_p99_round(paced["strata"]), median_p99_round(paced["dovecot"])
        p99s, p99d = sp["latency_ms"]["p99"], dp["latency_ms"]["p99"]
    else:
        p99s, p99d = s["latency_ms"]["p99"], d["latency_ms"]["p99"]
    ok = rate >= READ_TARGET_RATIO and p99s <= p99d and sc not in read["problems"]
    return ok, rate, p99s, p99d


def read_profile(load, strata, scenario, iterations, datafile):
    """A separate Strata run of one scenario under perf: self time by symbol."""
    perf = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-p", str(strata.pid),
                             "-o", datafile], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        res = load.run(scenario, PORT_STRATA_IMAP if scenario != "pop3-retr"
                       else PORT_STRATA_POP3, iterations)
    finally:
        perf.send_signal(signal.SIGINT)
        try:
            perf.wait(60)
        except subprocess.TimeoutExpired:
            perf.kill()
            perf.wait(10)
    return {"messages_per_s": res["messages_per_s"],
            "objects": perf_lines(datafile, ["--no-children", "--sort", "dso",
                                             "--percent-limit", "2"])[:8],
            "symbols": perf_lines(datafile, ["--no-children", "--sort", "dso,symbol",
                                             "--percent-limit", "1.5"])[:16]}


def read_paced(out, load, servers, sc, stats):
    """Both servers at the same offered load (READ_PACED_LOAD x Dovecot's closed-loop rate)."""
    interval = paced_interval_ms(median_round(out["runs"][sc]["dovecot"]))
    it = READ_PACED_ITERATIONS[sc]
    paced = out.setdefault("paced", {})[sc] = {"interval_ms": interval, "iterations": it,
                                               "strata": [], "dovecot": []}
    for r in range(READ_PACED_ROUNDS):
        order = ("strata", "dovecot") if r % 2 == 0 else ("dovecot", "strata")
        for name in order:
            srv, imap_port, pop3_port = servers[name]
            port = pop3_port if sc == "pop3-retr" else imap_port
            res = read_measure(load, srv, sc, port, it, interval)
            res["round"] = r + 1
            paced[name].append(res)
            probs = read_problems(res, stats["expect_per_pass"])
            if probs:
                out["problems"].setdefault(sc, {}).setdefault(name, []).append(
                    "paced round %d: %s" % (r + 1, "; ".join(probs)))
            log("  read %-12s %-7s paced %d (a session every %d ms per client): %8.0f msg/s, "
                "p50 %.1f ms, p99 %.1f ms" % (sc, name, r + 1, interval, res["messages_per_s"],
                                              res["latency_ms"]["p50"], res["latency_ms"]["p99"]))


def run_read(strata_bin, load_bin, workroot, profile=True):
    """The whole read phase; returns its results."""
    work = tempfile.mkdtemp(prefix="read-", dir=workroot)
    os.chmod(work, 0o755)
    log("read: building the corpus (%d mailboxes x %d messages)" % (READ_USERS, READ_PER_USER))
    corpus = make_corpus()
    stats = corpus_stats(corpus)
    load = ReadLoad(load_bin)
    st = ReadStrata(strata_bin, os.path.join(work, "s"))
    os.makedirs(os.path.join(work, "s"), mode=0o755)
    dv = ReadDovecot(os.path.join(work, "d"))
    os.makedirs(dv.dir, mode=0o755)
    out = {"corpus": stats, "runs": {}, "warmup": {}, "problems": {}, "profiles": {},
           "rounds": READ_ROUNDS, "iterations": READ_ITERATIONS, "clients": READ_USERS}
    try:
        st.setup()
        st.start()
        t = time.monotonic()
        st.load(corpus)
        out["strata_load_s"] = round(time.monotonic() - t, 1)
        log("read: Strata loaded over SMTP in %.0f s" % out["strata_load_s"])
        t = time.monotonic()
        dv.setup(corpus)
        dv.start()
        out["dovecot_load_s"] = round(time.monotonic() - t, 1)
        del corpus
        servers = {"strata": (st, PORT_STRATA_IMAP, PORT_STRATA_POP3),
                   "dovecot": (dv, PORT_DOVECOT_IMAP, PORT_DOVECOT_POP3)}
        for sc in READ_SCENARIOS:
            it = READ_ITERATIONS[sc]
            out["runs"][sc] = {"strata": [], "dovecot": []}
            for name, (srv, imap_port, pop3_port) in servers.items():
                port = pop3_port if sc == "pop3-retr" else imap_port
                w = load.run(sc, port, 1)
                out["warmup"].setdefault(sc, {})[name] = w
                probs = read_problems(w, stats["expect_per_pass"])
                if probs:
                    out["problems"].setdefault(sc, {}).setdefault(name, []).append(
                        "warm-up: " + "; ".join(probs))
            for r in range(READ_ROUNDS):
                order = ("strata", "dovecot") if r % 2 == 0 else ("dovecot", "strata")
                for name in order:
                    srv, imap_port, pop3_port = servers[name]
                    port = pop3_port if sc == "pop3-retr" else imap_port
                    res = read_measure(load, srv, sc, port, it)
                    res["round"] = r + 1
                    out["runs"][sc][name].append(res)
                    probs = read_problems(res, stats["expect_per_pass"])
                    if probs:
                        out["problems"].setdefault(sc, {}).setdefault(name, []).append(
                            "round %d: %s" % (r + 1, "; ".join(probs)))
                    log("  read %-12s %-7s round %d: %8.0f msg/s, p50 %.1f ms, p99 %.1f ms%s"
                        % (sc, name, r + 1, res["messages_per_s"], res["latency_ms"]["p50"],
                           res["latency_ms"]["p99"], " (FLAGGED)" if probs else ""))
            read_paced(out, load, servers, sc, stats)
        if profile and shutil.which("perf"):
            for sc in READ_SCENARIOS:
                if read_verdict(out, sc)[0]:
                    continue
                log("read: profiling Strata on %s (target missed)" % sc)
                out["profiles"][sc] = read_profile(load, st, sc, READ_ITERATIONS[sc],
                                                   os.path.join(work, "perf-%s.data" % sc))
        return out
    finally:
        st.stop()
        dv.stop()


# ---- read phase: report -------------------------------------------------

READ_HEADING = "## Reading mail: IMAP and POP3"


def read_meta(strata_bin):
    pk = {}
    for pkg in ("dovecot-core", "dovecot-imapd", "dovecot-pop3d"):
        p = run_cmd(["dpkg-query", "-W", "-f=${Version}", pkg], check=False)
        pk[pkg] = p.stdout.strip() if p.returncode == 0 else "not installed"
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "loadavg": round(os.getloadavg()[0], 2), "nproc": os.cpu_count(),
            "packages": pk, "strata_version": strata_version(strata_bin),
            "revision": source_revision(), "command": command_line()}


def read_lines(read):
    """The "Reading mail" section of docs/BENCHMARKS.md, as a list of lines."""
    L = []
    add = L.append
    meta, corpus = read["meta"], read["corpus"]
    add(READ_HEADING)
    add("")
    add("Generated by `%s` on %s (the read phase of `make bench`; `bench/run.py --only read` "
        "runs it alone and rewrites only this section)." % (meta["command"], meta["date"]))
    add("")
    add("![read command latencies, p50 and p99](../bench/results/latency.png)")
    add("")
    kinds = corpus["kinds"]
    add("Corpus: %s mailboxes x %s messages (%s messages, %.0f MB), the same seeded set in "
        "both servers: %s plain text, %s multipart/alternative (text + quoted-printable "
        "HTML), %s multipart/mixed with a base64 attachment; RFC 2047 encoded subjects and "
        "sender names, RFC 2231 file names. Size p50 %s bytes, mean %s, p99 %s, max %s. "
        "Strata received it over SMTP (it adds a Received: header); Dovecot's Maildirs were "
        "written as its LMTP delivery stores mail (LF line ends, Return-Path, Delivered-To "
        "and Received: added, sizes in the file names) and indexed by Dovecot during the "
        "warm-up. %d%% of the messages are \\Seen on both."
        % (fmt(corpus["users"]), fmt(corpus["messages"] // max(corpus["users"], 1)),
           fmt(corpus["messages"]), corpus["bytes"] / 1e6, fmt(kinds.get("text", 0)),
           fmt(kinds.get("alternative", 0)), fmt(kinds.get("attachment", 0)),
           fmt(corpus["size_p50"]), fmt(corpus["size_mean"]), fmt(corpus["size_p99"]),
           fmt(corpus["size_max"]), SEEN_PERCENT))
    add("")
    add("Load: `bench/imap_load`, %d clients at once, each logged in as its own account "
        "and running its scenario several times, a new session each time (%s); a FETCH or RETR counts as many "
        "messages as it returns, a SEARCH as many as the mailbox holds, a STORE as one. "
        "For each scenario: one untimed warm-up pass against each server, then %d timed "
        "rounds, alternating which server goes first; the figures are each server's median "
        "round by messages/s. Latency is per command, from sending it to reading the last "
        "byte of its reply. Server CPU is the CPU time of all the server's processes "
        "(its cgroup) during the run, divided by the messages."
        % (read["clients"], ", ".join("%s %dx" % (sc, read["iterations"][sc])
                                      for sc in READ_SCENARIOS if sc in read["iterations"]),
           read["rounds"]))
    add("")
    add("Scenarios: `fetch-bodies` = connect, LOGIN, SELECT INBOX, `UID FETCH 1:* "
        "(RFC822.SIZE BODY.PEEK[])` (each body's literal must be exactly its RFC822.SIZE), "
        "LOGOUT; `fetch-meta` = `FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE)`; `search` = SEARCH "
        "FROM \"%s\", SUBJECT \"%s\", BODY \"%s\", UNSEEN, SINCE (two days ago), each checked "
        "against the corpus; `store` = `STORE n +FLAGS (\\Flagged)` then `-FLAGS` for each of "
        "the first %d messages, one command each, each answered by a FETCH with the new "
        "flags; `pop3-retr` = USER, PASS, STAT, RETR every message (the bytes must add up to "
        "STAT's), QUIT."
        % (SEARCH_FROM, SEARCH_SUBJECT, SEARCH_BODY, READ_STORE_MAX))
    add("")
    rows, verdicts = [], []
    for sc in READ_SCENARIOS:
        runs = read["runs"].get(sc)
        if not runs or not runs["strata"] or not runs["dovecot"]:
            rows.append("| %s | did not run | | | | | | | | |" % sc)
            verdicts.append(False)
            continue
        s, d = median_round(runs["strata"]), median_round(runs["dovecot"])
        ok, rate, _, _ = read_verdict(read, sc)
        verdicts.append(ok)
        rows.append("| %s | %s | %s | **%.2fx** | %s | %s | %s | %s | %s / %s | %s |"
                    % (sc, fmt(s["messages_per_s"]), fmt(d["messages_per_s"]), rate,
                       p50_p99(s["latency_ms"]), p50_p99(d["latency_ms"]),
                       p50_p99(s["commands_ms"].get("session")),
                       p50_p99(d["commands_ms"].get("session")),
                       fmt(s.get("cpu_ms_per_msg"), 3), fmt(d.get("cpu_ms_per_msg"), 3),
                       "met" if ok else "**missed**"))
    met = sum(verdicts)
    add("**Target %s.** The target is at least %.0fx Dovecot's messages/s on every line "
        "(the closed-loop table just below), with a main-command p99 at or under Dovecot's "
        "when both are offered the same load (\"At the same load\" after it): met on %d of "
        "%d lines%s."
        % ("met" if met == len(verdicts) else "missed", READ_TARGET_RATIO, met, len(verdicts),
           "" if not read["problems"] else "; a line with errors or wrong results counts as "
           "missed"))
    add("")
    add("| scenario | Strata msg/s | Dovecot msg/s | ratio | Strata p50 / p99 ms (closed loop) | "
        "Dovecot p50 / p99 ms (closed loop) | Strata session p50 / p99 ms | Dovecot session p50 / p99 ms | "
        "server CPU ms/msg Strata / Dovecot | target |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    L.extend(rows)
    add("")
    add("The first p50 / p99 columns are those of each scenario's main command (%s); the "
        "session columns time a whole session, connect to LOGOUT or QUIT, login included. "
        "The target's p99 is the main command's at the same load (next table); the closed-loop "
        "p99 here is shown for completeness."
        % "; ".join("%s: %s" % (sc, READ_MAIN[sc]) for sc in READ_SCENARIOS))
    add("")
    read_paced_lines(L, read)
    read_problem_lines(L, read)
    read_reading_lines(L, read)
    read_detail_lines(L, read)
    read_profile_lines(L, read)
    pk = meta["packages"]
    add("Versions and conditions: %s (source %s) with `threads=2`, IMAP and POP3 listeners on "
        "loopback, `guard.allow=127.0.0.0/8` (the connection guard would otherwise "
        "rate-limit the benchmark's own logins); Dovecot %s (imapd %s, pop3d %s) from Debian, "
        "bench/reference/dovecot-read.conf.in: Debian defaults, plaintext logins, "
        "passwd-file with the same SHA512-CRYPT hashes, login services in Dovecot's "
        "high-performance mode. Each with its default password caching: Strata remembers a "
        "verified password for `auth.cache_ttl` (1 h; docs/SECURITY.md), so after the warm-up "
        "pass its logins skip SHA512-crypt; Debian's Dovecot has `auth_cache_size = 0`, so each "
        "of its logins runs it. %d cores shared with other work: the 1-minute load average "
        "was %s when the phase started; compare ratios, not absolute figures."
        % (meta["strata_version"], meta["revision"], pk.get("dovecot-core"),
           pk.get("dovecot-imapd"), pk.get("dovecot-pop3d"), meta["nproc"], meta["loadavg"]))
    add("")
    return L


def p50_p99(lat):
    return "n/a" if not lat else "%s / %s" % (fmt(lat["p50"], 1), fmt(lat["p99"], 1))


def read_paced_lines(L, read):
    """The same-load table (imap_load --interval-ms)."""
    paced = read.get("paced")
    if not paced:
        return
    L.append("### At the same load")
    L.append("")
    L.append("The closed loop above measures how much each server can do: every client starts its "
             "next session the moment the last one ends, so a server that answers faster is "
             "offered more work at once, and each of its commands waits behind more of the "
             "others' (with 50 clients and 2 cores a command's latency there is mostly its share "
             "of the queue). Dovecot's closed-loop command latencies are low because its logins "
             "queue in its single auth process, which keeps few of its clients past LOGIN at any "
             "moment; its sessions take longer. Latency is compared at the same offered load: "
             "each client starts its sessions on a fixed schedule (`imap_load --interval-ms`, "
             "clients staggered evenly), so both servers get %.0f%% of the sessions per second "
             "that Dovecot completed in its median closed-loop round, whatever their speed; %d "
             "rounds each, alternating which server goes first, the median round by the main "
             "command's p99." % (100 * READ_PACED_LOAD, READ_PACED_ROUNDS))
    L.append("")
    L.append("| scenario | offered sessions/s (a session every ... per client) | messages/s Strata / "
             "Dovecot | Strata p50 / p99 ms | Dovecot p50 / p99 ms | Strata session p50 / p99 ms | "
             "Dovecot session p50 / p99 ms | p99 at or under Dovecot's |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---|")
    for sc in READ_SCENARIOS:
        p = paced.get(sc)
        if not p or not p["strata"] or not p["dovecot"]:
            continue
        sp, dp = median_p99_round(p["strata"]), median_p99_round(p["dovecot"])
        offered = READ_USERS * 1000.0 / p["interval_ms"]
        ok = sp["latency_ms"]["p99"] <= dp["latency_ms"]["p99"]
        L.append("| %s | %.1f (%d ms) | %s / %s | %s | %s | %s | %s | %s |"
                 % (sc, offered, p["interval_ms"], fmt(sp["messages_per_s"]),
                    fmt(dp["messages_per_s"]), p50_p99(sp["latency_ms"]), p50_p99(dp["latency_ms"]),
                    p50_p99(sp["commands_ms"].get("session")),
                    p50_p99(dp["commands_ms"].get("session")), "yes" if ok else "**no**"))
    L.append("")
    L.append("Every paced round, p99 of the main command (ms), Strata / Dovecot: %s."
             % "; ".join("%s %s" % (sc, ", ".join(
                 "%s / %s" % (fmt(a["latency_ms"]["p99"], 1), fmt(b["latency_ms"]["p99"], 1))
                 for a, b in zip(paced[sc]["strata"], paced[sc]["dovecot"])))
                 for sc in READ_SCENARIOS if sc in paced))
    L.append("")


def read_problem_lines(L, read):
    if not read["problems"]:
        L.append("Every run completed without a protocol error, every body had its announced "
                 "size, and every SEARCH matched exactly the corpus's messages.")
        L.append("")
        return
    L.append("**Runs flagged** (errors, wrong results or a run cut short; these lines do not "
             "count as met):")
    L.append("")
    for sc in [x for x in READ_SCENARIOS if x in read["problems"]]:
        for name, probs in sorted(read["problems"][sc].items()):
            for p in probs:
                L.append("* %s, %s: %s" % (sc, name, p))
    L.append("")


def read_reading_lines(L, read):
    """Facts from this run that explain the table."""
    facts = []
    for sc in READ_SCENARIOS:
        runs = read["runs"].get(sc)
        if not runs or not runs["strata"] or not runs["dovecot"]:
            continue
        s, d = median_round(runs["strata"]), median_round(runs["dovecot"])
        sc_cpu, dc_cpu = s.get("cpu_ms_per_msg"), d.get("cpu_ms_per_msg")
        if sc_cpu and dc_cpu:
            facts.append("%s: Strata used %.3f ms of CPU per message, Dovecot %.3f (%.1fx as "
                         "much); server CPU during the run %s of a core against %s; load "
                         "generator %s and %s of a core."
                         % (sc, sc_cpu, dc_cpu, dc_cpu / sc_cpu, pct(s.get("server_cpu_pct")),
                            pct(d.get("server_cpu_pct")), pct(s.get("client_cpu_pct")),
                            pct(d.get("client_cpu_pct"))))
    facts.extend(read_login_facts(read))
    facts.extend(read_stall_facts(read))
    if read["runs"].get("store", {}).get("strata") and read["runs"]["store"].get("dovecot"):
        facts.append("store: both servers make the same promise with their defaults. Strata "
                     "(imap.flag_fsync = no) commits each STORE to its index (WAL) before the "
                     "tagged OK without an fsync: an acknowledged flag change survives a crash "
                     "of the daemon, and a power loss can lose the last ones, never a message; "
                     "Dovecot with mail_fsync=optimized writes flag changes to its transaction "
                     "log without an fsync too. With imap.flag_fsync = yes Strata fsyncs each "
                     "STORE before its OK.")
    loads = [x["loadavg_before"] for sc in read["runs"].values() for runs in sc.values()
             for x in runs]
    if loads and max(loads) > read["meta"]["nproc"]:
        facts.append("The 1-minute load average reached %.1f on %d cores before some runs: "
                     "other work competed for the CPUs, so absolute figures are low and noisy; "
                     "the rounds alternate servers so that the ratios suffer less."
                     % (max(loads), read["meta"]["nproc"]))
    if facts:
        L.append("### Reading the numbers")
        L.append("")
        L.extend("* " + f for f in facts)
        L.append("")


def read_login_facts(read):
    """Where each server's sessions spend their time, for the fetch scenarios."""
    out = []
    for sc in ("fetch-bodies", "fetch-meta"):
        runs = read["runs"].get(sc)
        if not runs or not runs["strata"] or not runs["dovecot"]:
            continue
        share = {}
        for name in ("strata", "dovecot"):
            cm = median_round(runs[name])["commands_ms"]
            total = sum(v["mean"] * v["count"] for k, v in cm.items() if k != "session")
            login = cm.get("LOGIN", {})
            share[name] = (100.0 * login.get("mean", 0) * login.get("count", 0) / total
                           if total else 0.0, login.get("p50", 0.0))
        out.append("%s: LOGIN took %.0f%% of Strata's session time (p50 %.1f ms) and %.0f%% "
                   "of Dovecot's (p50 %.1f ms). With 50 clients starting together, Dovecot's "
                   "logins go through its one auth process and each session starts a new "
                   "imap process (Debian's defaults: auth process_limit 1, imap "
                   "service_count 1), so its logins queue and fewer of its clients FETCH at "
                   "the same moment: that keeps its FETCH latency low while its sessions "
                   "take longer; compare the session columns."
                   % (sc, share["strata"][0], share["strata"][1], share["dovecot"][0],
                      share["dovecot"][1]))
    return out


# imap_load's command names, in the order a session sends them.
READ_COMMAND_ORDER = ("connect", "LOGIN", "USER", "PASS", "SELECT", "STAT", "FETCH",
                      "SEARCH FROM", "SEARCH SUBJECT", "SEARCH BODY", "SEARCH UNSEEN",
                      "SEARCH SINCE", "STORE +FLAGS", "STORE -FLAGS", "RETR", "LOGOUT", "QUIT",
                      "session")


def read_stall_facts(read):
    """Commands whose latency is bimodal with a slow mode near 40 ms."""
    out = []
    for sc, cmd in (("pop3-retr", "RETR"), ("store", "STORE +FLAGS")):
        runs = read["runs"].get(sc)
        for name in ("strata", "dovecot"):
            if not runs or not runs.get(name):
                continue
            lat = median_round(runs[name])["commands_ms"].get(cmd)
            if lat and lat["p50"] < 5 and 35 <= lat["p90"] <= 60 and lat["mean"] > 4 * lat["p50"]:
                out.append("%s, %s: %s is bimodal, p50 %.1f ms but p90 %.1f ms and mean %.1f "
                           "ms. A slow mode at 40-50 ms is the signature of Nagle's algorithm "
                           "holding back a reply's last small segment until the client's "
                           "delayed ACK (40 ms on Linux); those stalls, not CPU, set the "
                           "session's pace."
                           % (sc, "Strata" if name == "strata" else "Dovecot", cmd, lat["p50"],
                              lat["p90"], lat["mean"]))
    return out


def read_detail_lines(L, read):
    L.append("### Every command (median rounds) and every round")
    L.append("")
    L.append("| scenario | command | Strata count | Strata p50 / p99 ms | Dovecot count | "
             "Dovecot p50 / p99 ms |")
    L.append("|---|---|---:|---:|---:|---:|")
    for sc in READ_SCENARIOS:
        runs = read["runs"].get(sc)
        if not runs or not runs["strata"] or not runs["dovecot"]:
            continue
        s, d = median_round(runs["strata"]), median_round(runs["dovecot"])
        names = sorted(set(s["commands_ms"]) | set(d["commands_ms"]),
                       key=lambda n: (READ_COMMAND_ORDER.index(n)
                                      if n in READ_COMMAND_ORDER else len(READ_COMMAND_ORDER), n))
        for n in names:
            a, b = s["commands_ms"].get(n), d["commands_ms"].get(n)
            L.append("| %s | %s | %s | %s | %s | %s |"
                     % (sc, n, fmt(a["count"]) if a else "-",
                        "%s / %s" % (fmt(a["p50"], 1), fmt(a["p99"], 1)) if a else "-",
                        fmt(b["count"]) if b else "-",
                        "%s / %s" % (fmt(b["p50"], 1), fmt(b["p99"], 1)) if b else "-"))
    L.append("")
    L.append("`session` is a whole session, connect to LOGOUT or QUIT; `connect` is the TCP "
             "connection up to the greeting.")
    L.append("")
    L.append("| scenario | server | msg/s by round | errors | machine CPU busy before each "
             "round | 1-min load before each round |")
    L.append("|---|---|---|---:|---|---|")
    for sc in READ_SCENARIOS:
        for name in ("strata", "dovecot"):
            runs = read["runs"].get(sc, {}).get(name) or []
            if not runs:
                continue
            L.append("| %s | %s | %s | %d | %s | %s |"
                     % (sc, "Strata" if name == "strata" else "Dovecot",
                        ", ".join(fmt(r["messages_per_s"]) for r in runs),
                        sum(r["errors"] for r in runs),
                        ", ".join(pct(r.get("busy_before_pct")) for r in runs),
                        ", ".join("%.1f" % r["loadavg_before"] for r in runs)))
    L.append("")


def read_profile_lines(L, read):
    if not read["profiles"]:
        return
    L.append("### Where Strata spends its time on the lines that miss")
    L.append("")
    L.append("`perf record -g -F 499` on the daemon during one more run of the scenario "
             "(not used for the figures); self time by object, then by symbol:")
    L.append("")
    for sc in [x for x in READ_SCENARIOS if x in read["profiles"]]:
        prof = read["profiles"][sc]
        L.append("%s (%s msg/s under the profiler):" % (sc, fmt(prof["messages_per_s"])))
        L.append("")
        for key in ("objects", "symbols"):
            L.append("```")
            L.extend(prof.get(key) or ["(no samples)"])
            L.append("```")
            L.append("")


def splice_read_section(path, lines):
    """Replaces (or adds, before "## Machine and versions") the read section
    of an existing report, leaving the rest of the page as it is."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmarks\n"
    section = "\n".join(lines).rstrip("\n") + "\n\n"
    start = text.find("\n" + READ_HEADING + "\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start + 1] + section + (text[end + 1:] if end >= 0 else "")
    else:
        at = text.find("\n## Machine and versions")
        if at >= 0:
            text = text[:at + 1] + section + text[at + 1:]
        else:
            text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")


# ---- machine ------------------------------------------------------------

def fsync_latency_ms(directory, rounds=200):
    """Median time of write(4 KB) + fdatasync on the benchmark's file system."""
    path = os.path.join(directory, "fsync-probe")
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"x" * 4096
        for _ in range(rounds):
            t = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            samples.append((time.perf_counter() - t) * 1000.0)
    finally:
        os.close(fd)
        os.unlink(path)
    samples.sort()
    return round(samples[len(samples) // 2], 3), round(samples[int(len(samples) * 0.99)], 3)


def machine_info(workroot):
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "model": "unknown",
            "loadavg": round(os.getloadavg()[0], 2)}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["model"] = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        kb = int(f.readline().split()[1])
        info["memory_gib"] = round(kb / 1024 / 1024, 1)
    p = run_cmd(["df", "--output=source,fstype", workroot], check=False)
    rows = p.stdout.split("\n")[1].split() if p.returncode == 0 else []
    info["device"], info["fs"] = (rows + ["?", "?"])[:2]
    dev = os.path.basename(info["device"])
    rot = "/sys/block/%s/queue/rotational" % re.sub(r"p?\d+$", "", dev) if dev.startswith("nvme") \
        else "/sys/block/%s/queue/rotational" % re.sub(r"\d+$", "", dev)
    try:
        with open(rot) as f:
            info["disk"] = "reported rotational" if f.read().strip() == "1" \
                else "reported non-rotational"
    except OSError:
        info["disk"] = "unknown"
    if info["fs"] == "ext4":
        try:
            with open("/sys/fs/ext4/%s/journal_task" % dev) as f:
                info["fs"] += " without a journal" if "none" in f.read() else " with a journal"
        except OSError:
            pass
    info["fsync_p50_ms"], info["fsync_p99_ms"] = fsync_latency_ms(workroot)
    return info


def package_versions():
    out = {}
    for pkg in ("postfix", "dovecot-core", "dovecot-lmtpd", "libsqlite3-0", "libevent-2.1-7"):
        p = run_cmd(["dpkg-query", "-W", "-f=${Version}", pkg], check=False)
        out[pkg] = p.stdout.strip() if p.returncode == 0 else "not installed"
    return out


def strata_version(binary):
    for args in ([binary, "--version"], [binary, "version"]):
        try:
            p = run_cmd(args, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if p.returncode == 0 and p.stdout.strip():
            return p.stdout.strip().splitlines()[0]
    return "unknown"


def command_line():
    """This script's command line, with paths shown relative to the source tree."""
    words = ["bench/run.py"]
    for a in sys.argv[1:]:
        if os.path.isabs(a) and a.startswith(ROOT + os.sep):
            a = os.path.relpath(a, ROOT)
        words.append(a)
    return " ".join(words)


def source_revision():
    try:
        p = run_cmd(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], timeout=10, check=False)
        rev = p.stdout.strip() if p.returncode == 0 else ""
        if rev:
            d = run_cmd(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                        timeout=10, check=False)
            return rev + (" with local changes" if d.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "unknown"


# ---- report -------------------------------------------------------------

def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [c for c in CONCURRENCY if c in results["strata"] and c in results["reference"]]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(cs, [results["strata"][c]["e2e_rate"] for c in cs], "o-", color="#1f77b4",
            label="Strata (accepted = visible in index)")
    ax.plot(cs, [results["reference"][c]["rate"] for c in cs], "s--", color="#ff7f0e",
            label="Postfix + Dovecot, accepted by Postfix")
    ax.plot(cs, [results["reference"][c]["e2e_rate"] for c in cs], "s-", color="#d62728",
            label="Postfix + Dovecot, delivered to Maildir")
    # Value labels: Strata's to the upper left, the reference's to the right,
    # so that close values at one connection do not overprint each other.
    for key, series, offset, ha in (("e2e_rate", results["strata"], (-7, 6), "right"),
                                    ("rate", results["reference"], (7, 3), "left"),
                                    ("e2e_rate", results["reference"], (7, -10), "left")):
        for c in cs:
            y = series[c][key]
            ax.annotate("%.0f" % y, (c, y), textcoords="offset points", xytext=offset,
                        ha=ha, fontsize=7)
    nf = results.get("strata_nofsync")
    if nf:
        ax.plot([50], [nf["e2e_rate"]], "x", color="#7f7f7f", markersize=9,
                label="Strata store.fsync=no (gives up D)")
    ax.set_xscale("log")
    ax.set_xlim(0.8, 75)
    ax.set_xticks(cs)
    ax.set_xticklabels([str(c) for c in cs])
    ax.set_xlabel("concurrent SMTP connections")
    ax.set_ylabel("messages / s (4 KB, durable)")
    ax.set_title("SMTP ingest, 1,000 accounts, %d cores" % os.cpu_count())
    ax.grid(True, which="both", alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    return ("{:,.%df}" % digits).format(v)


def pct(v):
    return "n/a" if v is None else "%.0f%%" % v


def ratio(a, b):
    return a / b if b else None


def verdict(results):
    s = results["strata"].get(50)
    r = results["reference"].get(50)
    if not s or not r:
        return "The c=50 runs did not complete; no verdict."
    rat = ratio(s["e2e_rate"], r["e2e_rate"])
    p99 = s["latency_ms"]["p99"]
    ok_rate = rat is not None and rat >= TARGET_RATIO
    ok_p99 = p99 <= TARGET_P99_MS
    head = "**Target met.**" if ok_rate and ok_p99 else "**Target missed.**"
    return ("%s The target at c=50 is at least %.0fx the reference's end-to-end rate with a p99 "
            "accept latency of at most %.0f ms. Strata: %s msg/s end to end, %.1fx the reference "
            "(%s msg/s) — %s; p99 %s ms — %s."
            % (head, TARGET_RATIO, TARGET_P99_MS, fmt(s["e2e_rate"]), rat or 0.0,
               fmt(r["e2e_rate"]), "met" if ok_rate else "missed", fmt(p99, 1),
               "met" if ok_p99 else "missed"))


def report_md(results, meta):
    L = []
    add = L.append
    add("# Benchmarks")
    add("")
    add("Generated by `make bench` (bench/run.py) on %s. Re-run it to refresh this page; "
        "the whole run takes a few minutes and stops by itself." % meta["date"])
    add("")
    add("## SMTP ingest: Strata vs Postfix + Dovecot")
    add("")
    add("Workload: %d-byte messages, one recipient each, chosen at random among %s accounts of "
        "`%s`, sent over 1, 10 and 50 persistent SMTP connections on loopback by "
        "`bench/smtp_load` (one MAIL/RCPT/DATA transaction after another per connection). "
        "Both stacks are durable: Strata answers 250 only once the message file, its directory "
        "and the index transaction are fsynced; Postfix fsyncs its queue file before its 250 and "
        "Dovecot fsyncs the Maildir file before its LMTP 250. Each stack starts from fresh state "
        "for every concurrency, takes %d warm-up messages, then a measured run capped at "
        "the message count or seconds below, whichever comes first. All Strata runs come first, "
        "then the reference's, and no state is deleted until the end, so that neither stack "
        "pays for the other's deleted files. Strata runs with `guard.allow=127.0.0.0/8`: every "
        "connection of the load comes from 127.0.0.1, and its connection guard lets one address "
        "hold 20 MX connections (the flood benchmark below measures the guard); Postfix's "
        "per-client limit is 50 by default."
        % (SIZE, fmt(ACCOUNTS), DOMAIN, WARMUP[0]))
    add("")
    add("* **Strata**: accepted = visible. After the run the script counts the rows of the "
        "`messages` table in `index.db` (read-only) and checks it equals the messages accepted.")
    add("* **Postfix + Dovecot**: *accepted* is Postfix's 250 rate; *end to end* is the messages "
        "delivered into the Maildirs divided by the time from the first message sent to the last "
        "file delivered.")
    add("* Latency is the accept latency: from sending the final `.` to receiving the reply.")
    add("")
    add(verdict(results))
    add("")
    add("![throughput vs concurrency](../bench/results/ingest.png)")
    add("")
    add("![accept latency percentiles, and read command latencies](../bench/results/latency.png)")
    add("")
    add("| connections | Strata msg/s (accepted = visible) | Postfix accepted msg/s | "
        "Postfix+Dovecot end-to-end msg/s | ratio (end to end) | Strata p50 / p99 ms | "
        "Postfix p50 / p99 ms |")
    add("|---:|---:|---:|---:|---:|---:|---:|")
    for c in CONCURRENCY:
        s, r = results["strata"].get(c), results["reference"].get(c)
        if not s or not r:
            add("| %d | %s | %s | | | | |" % (c, "failed" if not s else fmt(s["e2e_rate"]),
                                             "failed" if not r else fmt(r["rate"])))
            continue
        add("| %d | %s | %s | %s | %.1fx | %s / %s | %s / %s |"
            % (c, fmt(s["e2e_rate"]), fmt(r["rate"]), fmt(r["e2e_rate"]),
               ratio(s["e2e_rate"], r["e2e_rate"]) or 0.0,
               fmt(s["latency_ms"]["p50"], 1), fmt(s["latency_ms"]["p99"], 1),
               fmt(r["latency_ms"]["p50"], 1), fmt(r["latency_ms"]["p99"], 1)))
    add("")
    reading_section(L, results, meta)
    for c in CONCURRENCY:
        detail_table(L, c, results["strata"].get(c), results["reference"].get(c))
    durability_section(L, results)
    profile_section(L, results)
    if results.get("read"):
        L.extend(read_lines(results["read"]))
    machine_section(L, meta)
    return "\n".join(L) + "\n"


def reading_section(L, results, meta):
    """Facts computed from this run that explain the headline numbers."""
    s, r = results["strata"].get(50), results["reference"].get(50)
    nf, prof = results.get("strata_nofsync"), results.get("profile")
    facts = []
    if s and r and s.get("cpu_ms_per_msg") and r.get("cpu_ms_per_msg"):
        facts.append("At 50 connections Strata used %.2f ms of CPU per message, Postfix + Dovecot "
                     "%.2f ms per delivered message (%.1fx as much)."
                     % (s["cpu_ms_per_msg"], r["cpu_ms_per_msg"],
                        r["cpu_ms_per_msg"] / s["cpu_ms_per_msg"]))
    if s:
        busy = s["cpu_busy_pct"]
        facts.append("During Strata's 50-connection run the machine's CPUs were %s busy "
                     "(daemon %s of one core, load generator %s)%s."
                     % (pct(busy), pct(s.get("server_cpu_pct")), pct(s.get("client_cpu_pct")),
                        ": the run was CPU-bound, and anything else running on the machine "
                        "took cores from it" if busy >= 95 else ""))
    if s and s["e2e_rate"] > 0:
        facts.append("With 50 clients that each wait for their reply, mean latency is 50 / "
                     "throughput (Little's law): %.0f ms at %s msg/s (measured mean %.1f ms). "
                     "A p99 of %.0f ms at 50 connections therefore needs well over %s msg/s "
                     "with little variance: the latency target is a throughput target too."
                     % (50000.0 / s["e2e_rate"], fmt(s["e2e_rate"]), s["latency_ms"]["mean"],
                        TARGET_P99_MS, fmt(50000.0 / TARGET_P99_MS)))
    if s and nf:
        facts.append("Without fsync (giving up D) Strata went %.1fx as fast: that is what "
                     "durability costs on this disk." % (nf["e2e_rate"] / max(s["e2e_rate"], 1e-9)))
    if prof:
        top = max(prof["perf"]["hot_paths"], key=lambda x: x[1])
        kernel = next((ln for ln in prof["perf"].get("objects", []) if "kernel" in ln), None)
        facts.append("The profile puts %s of the daemon's CPU time in the kernel; the largest "
                     "system call path is %s (%.0f%% of samples)."
                     % (kernel.split("%")[0].strip() + "%" if kernel else "most",
                        top[0], top[1]))
    if s and r and s.get("busy_before_pct") is not None and r.get("busy_before_pct") is not None:
        gap_busy = abs(s["busy_before_pct"] - r["busy_before_pct"])
        gap_load = abs(s["loadavg_before"] - r["loadavg_before"])
        if gap_busy > 25 or gap_load > meta["machine"]["nproc"]:
            facts.append("**The two stacks' 50-connection runs saw different background load** "
                         "(CPU busy before the run: Strata %s, Postfix + Dovecot %s; 1-minute "
                         "load average %.1f and %.1f), so the ratio at 50 connections is "
                         "skewed towards the stack that ran on the quieter machine. Re-run on "
                         "an idle machine before quoting it."
                         % (pct(s["busy_before_pct"]), pct(r["busy_before_pct"]),
                            s["loadavg_before"], r["loadavg_before"]))
    loads = [meta["machine"]["loadavg"]] + [
        x["loadavg_before"] for stack in ("strata", "reference")
        for x in results[stack].values() if x]
    if max(loads) > meta["machine"]["nproc"]:
        facts.append("The 1-minute load average reached %.1f on %d cores during the run: other "
                     "work was competing for the CPUs, so these figures are below what an idle "
                     "machine gives, and noisier." % (max(loads), meta["machine"]["nproc"]))
    if not facts:
        return
    L.append("### Reading the numbers")
    L.append("")
    L.extend("* " + f for f in facts)
    L.append("")


def quiet_text(x):
    if not x or x.get("busy_before_pct") is None:
        return "n/a"
    return "%s%s" % (pct(x["busy_before_pct"]),
                     " after %.0f s" % x["quiet_wait_s"] if x["quiet_wait_s"] >= 2 else "")


def detail_table(L, c, s, r):
    add = L.append
    add("### %d connection%s" % (c, "" if c == 1 else "s"))
    add("")
    add("| stack | sent | accepted | failed | accepted msg/s | end-to-end msg/s | p50 ms | "
        "p90 ms | p99 ms | max ms | server CPU (% of a core) | server CPU ms/msg | "
        "load generator CPU | machine CPU busy / iowait |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, x in (("Strata", s), ("Postfix + Dovecot", r)):
        if not x:
            add("| %s | run failed | | | | | | | | | | | | |" % name)
            continue
        lat = x["latency_ms"]
        add("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s |"
            % (name, fmt(x["sent"]), fmt(x["accepted"]), fmt(x["failed"]), fmt(x["rate"]),
               fmt(x["e2e_rate"]), fmt(lat["p50"], 1), fmt(lat["p90"], 1), fmt(lat["p99"], 1),
               fmt(lat["max"], 1), pct(x.get("server_cpu_pct")),
               fmt(x.get("cpu_ms_per_msg"), 2), pct(x.get("client_cpu_pct")),
               pct(x["cpu_busy_pct"]), pct(x["cpu_iowait_pct"])))
    add("")
    notes = []
    if s:
        m = s["metrics"]
        notes.append("Strata: %s visible in the index after %s accepted in total (warm-up "
                     "included): %s. Group commit: %s commits, mean batch %s deliveries, mean "
                     "commit %s ms, %s fsyncs."
                     % (fmt(s["visible"]), fmt(s.get("accepted_total")),
                        "consistent" if s["visible_ok"] else "**MISMATCH**", fmt(m["commits"]),
                        fmt(m["batch_mean"], 1), fmt(m["commit_ms_mean"], 2), fmt(m["fsyncs"])))
    if r:
        notes.append("Postfix + Dovecot: %s of %s accepted messages delivered%s, last one %.1f s "
                     "after the first was sent."
                     % (fmt(r["delivered"]), fmt(r["accepted"]),
                        "" if r["delivery_complete"] else " (**delivery wait timed out**)",
                        r["e2e_elapsed"]))
    for n in notes:
        add("* " + n)
    if notes:
        add("")
    add("Caps for the measured run: %s messages or %d s. Machine CPU busy in the second "
        "before the measured run (after waiting up to %d s for it to fall below %.0f%%): "
        "Strata %s, Postfix + Dovecot %s; 1-minute load average: Strata %s, Postfix + "
        "Dovecot %s."
        % (fmt(PLAN[c][0]), PLAN[c][1], QUIET_WAIT_S, QUIET_BUSY_PCT, quiet_text(s),
           quiet_text(r), fmt(s["loadavg_before"], 2) if s else "n/a",
           fmt(r["loadavg_before"], 2) if r else "n/a"))
    add("")


def durability_section(L, results):
    add = L.append
    nf, s = results.get("strata_nofsync"), results["strata"].get(50)
    add("## What durability costs (Strata, 50 connections)")
    add("")
    if not nf or not s:
        add("The store.fsync=no run did not complete.")
        add("")
        return
    add("`store.fsync=no` keeps ACI but gives up D: message files, their directories and the "
        "index are not fsynced before the 250, so a power loss or kernel crash can lose mail "
        "that was accepted. It is shown only to measure what the fsyncs cost; never run a "
        "server that way.")
    add("")
    add("| store.fsync | msg/s | p50 ms | p99 ms | mean group-commit batch |")
    add("|---|---:|---:|---:|---:|")
    for label, x in (("yes (default, durable)", s), ("no (gives up D)", nf)):
        add("| %s | %s | %s | %s | %s |"
            % (label, fmt(x["e2e_rate"]), fmt(x["latency_ms"]["p50"], 1),
               fmt(x["latency_ms"]["p99"], 1), fmt(x["metrics"]["batch_mean"], 1)))
    add("")


def profile_section(L, results):
    add = L.append
    prof = results.get("profile")
    add("## Where Strata spends its time (50 connections)")
    add("")
    if not prof:
        add("No profile was taken (`perf` is not installed: `apt-get install linux-perf`).")
        add("")
        return
    add("`perf record -g -F 499` on the daemon during a separate, otherwise identical c=50 run "
        "(%s msg/s under the profiler; daemon CPU %s of one core)."
        % (fmt(prof["rate"]), pct(prof["server_cpu_pct"])))
    add("")
    add("Share of the daemon's on-CPU samples spent in the kernel under each system call "
        "path (inclusive, so rows may overlap; below 0.5% shows as 0):")
    add("")
    add("| path | % of samples |")
    add("|---|---:|")
    for label, share in prof["perf"]["hot_paths"]:
        add("| %s | %.1f |" % (label, share))
    add("")
    s50 = results["strata"].get(50)
    if s50 and s50.get("threads"):
        add("CPU by daemon thread during the measured (unprofiled) c=50 run, in % of one core:")
        add("")
        add("| thread | threads | % of a core |")
        add("|---|---:|---:|")
        for name, count, share in s50["threads"]:
            add("| %s | %d | %.0f |" % (name, count, share))
        add("")
    if any("recently_deleted" in ln for ln in prof["perf"].get("symbols", [])):
        add("`recently_deleted` and `find_inode_bit` are ext4's inode allocator on a file "
            "system without a journal: it skips inodes freed in the last 60 s (300 s while "
            "their inode table block is dirty), looking each candidate up in the buffer cache, "
            "so creating files is slow after many files were deleted, by Strata or by anything "
            "else on the same file system. With a journal (the ext4 default) this check is "
            "not made.")
        add("")
    add("Self time by object, then by symbol:")
    add("")
    for key in ("objects", "symbols"):
        add("```")
        L.extend(prof["perf"].get(key) or ["(no samples)"])
        add("```")
        add("")


def machine_section(L, meta):
    add = L.append
    m = meta["machine"]
    add("## Machine and versions")
    add("")
    add("* CPU: %s, %d cores (`nproc`); memory %s GiB" % (m["model"], m["nproc"], m["memory_gib"]))
    add("* Kernel: %s" % m["kernel"])
    add("* 1-minute load average when the run started: %s (anything else running on the "
        "machine competes with both stacks for the same cores)" % m["loadavg"])
    add("* Disk: %s (%s), file system %s; write(4 KB)+fdatasync p50 %s ms, p99 %s ms"
        % (m["device"], m["disk"], m["fs"], m["fsync_p50_ms"], m["fsync_p99_ms"]))
    add("* Strata: %s, source %s; `strata serve` with threads=2, other settings default"
        % (meta["strata_version"], meta["revision"]))
    for pkg, v in meta["packages"].items():
        add("* %s: %s" % (pkg, v))
    add("* Postfix: compatibility_level 3.6, default_process_limit 100, virtual_mailbox_maps "
        "hash: table, LMTP over a Unix socket to Dovecot; Dovecot: mail_fsync=optimized, "
        "Maildir created before the run (bench/reference/ holds both configurations)")
    add("* Command: `make bench`, as root, which runs `/usr/bin/python3 bench/run.py --strata "
        "build/strata`; this page came from `%s` on %s" % (meta.get("command", "?"), meta["date"]))
    add("")


# ---- main ---------------------------------------------------------------

def parse_args():
    ap = argparse.ArgumentParser(description="Strata vs Postfix + Dovecot: SMTP ingest, then "
                                 "IMAP and POP3 reading")
    ap.add_argument("--strata", required=True, help="path to the strata binary")
    ap.add_argument("--load", help="path to smtp_load (default: bench/smtp_load beside --strata)")
    ap.add_argument("--imap-load",
                    help="path to imap_load (default: bench/imap_load beside --strata)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--workdir", default=os.environ.get("STRATA_BENCH_DIR", "/var/tmp"),
                    help="where the stacks keep their state (must be a real disk, not tmpfs)")
    ap.add_argument("--only", choices=("strata", "reference", "read"),
                    help="strata, reference: one stack of the ingest phase only (no report is "
                    "written); read: the IMAP/POP3 read phase only (rewrites its section of "
                    "the report and results/read.json)")
    ap.add_argument("--no-profile", action="store_true", help="skip the perf runs")
    ap.add_argument("--from-json", metavar="FILE",
                    help="only rewrite the report and plot from a saved results/ingest.json")
    return ap.parse_args()


def check_environment(args):
    if os.geteuid() != 0:
        raise BenchError("run as root: Postfix and Dovecot must be started as root")
    paths = {"strata": (args.strata, args.load), "reference": (args.load,),
             "read": (args.strata, args.imap_load)}.get(args.only,
                                                        (args.strata, args.load, args.imap_load))
    for path in paths:
        if not os.access(path, os.X_OK):
            raise BenchError("%s is not an executable (build with `make build`)" % path)
    tools = ("dovecot", "doveadm") if args.only == "read" else \
        ("postfix", "postmap", "dovecot", "doveadm")
    for tool in tools:
        if shutil.which(tool) is None:
            raise BenchError("%s is not installed (scripts/deps bench)" % tool)
    p = run_cmd(["df", "--output=fstype", args.workdir], check=False)
    if "tmpfs" in p.stdout:
        raise BenchError("%s is on tmpfs: fsync would be free; use --workdir on a disk"
                         % args.workdir)


def on_signal(signum, _frame):
    raise KeyboardInterrupt("signal %d" % signum)


def rewrite_from_json(args):
    with open(args.from_json) as f:
        saved = json.load(f)
    results = saved["results"]
    for stack in ("strata", "reference"):
        results[stack] = {int(c): v for c, v in results[stack].items()}
    read_json = os.path.join(os.path.dirname(os.path.abspath(args.from_json)), "read.json")
    if os.path.exists(read_json):
        with open(read_json) as f:
            results["read"] = json.load(f)
    write_outputs(args, results, saved["meta"])


def main():
    args = parse_args()
    if args.from_json:
        rewrite_from_json(args)
        return
    args.strata = os.path.abspath(args.strata)
    if not args.load:
        args.load = os.path.join(os.path.dirname(args.strata), "bench", "smtp_load")
    if not args.imap_load:
        args.imap_load = os.path.join(os.path.dirname(args.strata), "bench", "imap_load")
    ingest = args.only != "read"
    read = args.only in (None, "read")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    # A hard stop for the whole run; finally blocks still tear down.
    signal.alarm((TOTAL_BUDGET_S if ingest else 0) + (READ_BUDGET_S if read else 0))
    check_environment(args)
    stop_system_instances()
    workroot = tempfile.mkdtemp(prefix="strata-bench-", dir=args.workdir)
    os.chmod(workroot, 0o755)
    load = Load(args.load)
    results = {"strata": {}, "reference": {}}
    t0 = time.monotonic()
    try:
        meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": machine_info(workroot), "packages": package_versions(),
                "strata_version": strata_version(args.strata), "revision": source_revision(),
                "command": command_line()}
        # One stack after the other, and nothing is deleted until the end:
        # on ext4 without a journal, creating files right after many were
        # deleted is slow (recently freed inodes are skipped for 1-5 min),
        # so each stack only ever pays for its own deletions.
        if ingest and args.only != "reference":
            for c in CONCURRENCY:
                log("Strata, %d connection(s)" % c)
                results["strata"][c] = run_strata(args.strata, load, workroot, c)
                summary("Strata", results["strata"][c])
            log("Strata, 50 connections, store.fsync=no (gives up D)")
            results["strata_nofsync"] = run_strata(args.strata, load, workroot, 50,
                                                   overrides=["store.fsync=no"])
            summary("Strata fsync=no", results["strata_nofsync"])
            if not args.no_profile and shutil.which("perf"):
                log("Strata, 50 connections, under perf")
                data = os.path.join(workroot, "perf.data")
                prof = run_strata(args.strata, load, workroot, 50, profile=data)
                prof["perf"] = perf_summary(data)
                results["profile"] = prof
        if ingest and args.only != "strata":
            for c in CONCURRENCY:
                log("Postfix + Dovecot, %d connection(s)" % c)
                results["reference"][c] = run_reference(load, workroot, c)
                summary("Postfix + Dovecot", results["reference"][c])
        if read:
            log("read phase: Strata vs Dovecot over IMAP and POP3")
            results["read"] = run_read(args.strata, args.imap_load, workroot,
                                       profile=not args.no_profile)
            results["read"]["meta"] = read_meta(args.strata)
        if args.only is None:
            write_outputs(args, results, meta)
        elif args.only == "read":
            write_read_outputs(args, results["read"])
        log("done in %.0f s" % (time.monotonic() - t0))
    finally:
        signal.alarm(0)
        log("removing %s" % workroot)
        shutil.rmtree(workroot, ignore_errors=True)


def summary(name, r):
    log("  %s: %d accepted, %.0f msg/s accepted, %.0f msg/s end to end, p50 %.1f ms, p99 %.1f ms"
        % (name, r["accepted"], r["rate"], r["e2e_rate"], r["latency_ms"]["p50"],
           r["latency_ms"]["p99"]))


def keep_other_sections(path, text):
    """Appends to the generated page the "## " sections of the current page
    that this script does not generate (other benchmarks document
    themselves there), so that a run does not erase them."""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        return text
    made = set(re.findall(r"^## .*$", text, re.M))
    kept = [sec for sec in re.split(r"\n(?=## )", old)[1:]
            if sec.startswith("## ") and sec.splitlines()[0] not in made and
            not sec.startswith(("## SMTP ingest", "## Where Strata spends", "## What durability"))]
    if not kept:
        return text
    return text.rstrip("\n") + "\n\n" + "\n".join(k.rstrip("\n") + "\n" for k in kept)


def plot_latency():
    """bench/results/latency.png from the JSON just written (bench/plot_latency.py)."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "plot_latency.py")],
                       capture_output=True, text=True)
    if p.returncode != 0:
        log("latency plot not drawn: %s" % (p.stderr.strip() or p.stdout.strip()))


def write_read_outputs(args, read):
    """The read phase alone: results/read.json and its section of the report."""
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "read.json"), "w") as f:
        json.dump(read, f, indent=1, sort_keys=True, default=str)
        f.write("\n")
    splice_read_section(args.out, read_lines(read))
    plot_latency()
    log("wrote the read section of %s, %s" % (os.path.relpath(args.out, ROOT),
                                               os.path.relpath(os.path.join(
                                                   args.results, "read.json"), ROOT)))


def write_outputs(args, results, meta):
    """The whole report; the read phase's raw results go to their own file."""
    ingest = {k: v for k, v in results.items() if k != "read"}
    os.makedirs(args.results, exist_ok=True)
    png = os.path.join(args.results, "ingest.png")
    plot(ingest, png)
    with open(os.path.join(args.results, "ingest.json"), "w") as f:
        json.dump({"meta": meta, "results": ingest}, f, indent=1, sort_keys=True, default=str)
        f.write("\n")
    if results.get("read"):
        with open(os.path.join(args.results, "read.json"), "w") as f:
            json.dump(results["read"], f, indent=1, sort_keys=True, default=str)
            f.write("\n")
    text = keep_other_sections(args.out, report_md(results, meta))  # before truncating
    with open(args.out, "w") as f:
        f.write(text)
    plot_latency()
    log("wrote %s, %s" % (os.path.relpath(args.out, ROOT), os.path.relpath(png, ROOT)))


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print("bench: error: %s" % e, file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:
        print("bench: interrupted (%s); everything started was stopped" % e, file=sys.stderr)
        sys.exit(130)
