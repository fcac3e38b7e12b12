#!/usr/bin/python3
"""bench/flood.py - "inbound under attack": Strata against Postfix + postscreen.

Owns: the flood benchmark's runs, bench/results/flood-<date>.json and .png,
and bench/reference/postscreen/ (the reference's configuration).

What it does, for each stack in turn (Strata first, then the reference):

  1. starts the stack from fresh state with 1,000 accounts of bench.example
     (user0 ... user999, password "benchpass") and delivers one 4 KB message
     to user0, the IMAP probe's account;
  2. idle baseline: bench/flood --roles imap-probe for --idle-seconds (LOGIN,
     SELECT, FETCH 1 BODY.PEEK[], LOGOUT in a loop from 127.30.0.1);
  3. the flood, --seconds long: bench/flood with every role at once - a
     connect flood from 10,000 addresses of 127.10.0.0/16, 5,000 slowloris
     connections, early talkers and junk, while 10 legitimate senders
     (127.20.0.1-10) each start a full SMTP transaction with a 4 KB message
     to an existing user every 2 s and the IMAP probe keeps measuring.
     The probe runs in a second bench/flood process of its own, like a
     user's mail client on another machine: in the flood's own process its
     rounds would wait behind the flood's 10,000 sockets in the tool's
     event loop, and the tool's stalls would be counted as the server's
     latency.  Per second, `loop_lag_ms` is then the probe process's lag
     (what can inflate a probe figure) and `flood_loop_lag_ms` the flood
     process's.  --probe-in-flood-tool runs it inside the flood's process
     as before (to compare with older results);
  4. idle control: the IMAP probe alone again for --idle-seconds, after the
     flood (on a shared machine the background load changes during a run;
     the control shows how much);
  5. samples the server's memory every second during the flood (Strata:
     VmRSS of the daemon, VmHWM at the end; reference: the sum of the PSS of
     every process in its cgroup, so that a page shared by many processes
     counts once, with the plain sum of VmRSS beside it),
     and for Strata also /metrics before and after and `strata guard
     status` near the end of the flood; for the reference, postscreen's
     and smtpd's verdicts counted in its log.

  Strata:     `strata serve`, SMTP, IMAP and admin on loopback ports, the
              connection guard on with the settings in STRATA_UNDER_ATTACK
              (documented in docs/BENCHMARKS.md); guard.allow is empty: the
              legitimate senders earn their way like everyone else.
  Reference:  Postfix with postscreen in front of smtpd (pregreet test
              enforced, no DNSBL, cache on, anvil limits set), delivering
              over LMTP to Dovecot (Maildir), which also serves the probe
              over IMAP.  See bench/reference/postscreen/.

Usable standalone (`/usr/bin/python3 bench/flood.py --strata build/strata`)
or from bench/run.py: run_flood(strata_bin, flood_bin, workroot, ...)
returns the results dict; write_results() writes the JSON and the plot.

Options for experiments: --strata-option KEY=VALUE adds a Strata setting
(recorded in the results); --nice N (default -10) sets the priority that
the servers and the tool inherit alike, so that other work on a shared
machine disturbs the run less.

Safety and bounds: all traffic is on 127.0.0.0/8; the flood tool bounds
every role in connections and time and stops by itself; every wait has a
deadline; every daemon started here is stopped in a finally block, also on
SIGINT/SIGTERM, and the whole run has an alarm.  Must run as root (Postfix
and Dovecot need it; the daemons drop privileges).  The descriptor limit is
raised to FD_LIMIT (or to the hard limit where raising that is not
permitted, as in a container without CAP_SYS_RESOURCE) for this
process and so for every daemon and the flood tool it starts; the flood
needs about 8,700 and each server up to the connections it admits.
"""

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import run as ingest  # noqa: E402  (the ingest benchmark's stack set-up, reused)

BenchError = ingest.BenchError
DOMAIN = ingest.DOMAIN
PASSWORD = "benchpass"          # the clear text of ingest.PASSWORD_HASH
PROBE_USER = "user0@" + DOMAIN
# Ports of their own, so that the flood can run beside `make bench`.
PORT_SMTP_STRATA = 2825
PORT_ADMIN_STRATA = 2826
PORT_IMAP_STRATA = 2844
PORT_SMTP_REF = 2925
PORT_IMAP_REF = 2944
FD_LIMIT = 65536
SMTPD_PROCESS_LIMIT = 200
DEFAULT_SECONDS = 60
IDLE_SECONDS = 30
# One IMAP round every 125 ms at most: 480 logins a minute from the probe's
# address, below the guard's default user-class rate (600 a minute).
IMAP_INTERVAL_MS = 125
BUDGET_EXTRA_S = 900            # set-up, delivery waits and shutdowns, both stacks

# Settings an operator would use on a Strata MX under attack (documented in
# docs/BENCHMARKS.md).  Everything not listed keeps its default: the guard is
# on by default with its per-address, per-/24 and class limits, fair shares,
# the banner delay and the good-sender reserve.
STRATA_UNDER_ATTACK = (
    "guard.enabled=yes",
    # Slowloris: the minimum-rate check runs every window; 10 s (default
    # 30 s) cuts a dribbling client within 10 to 20 s.
    "smtp.min_rate_window=10s",
    # A client that says nothing between commands: 1 min instead of RFC
    # 5321's 5 min while under attack (Postfix's stress mode uses 10 s).
    "smtp.timeout.command=1m",
    # The kernel mirror of bans never applies on loopback (its rule accepts
    # "lo" first), so it is off here rather than changing the host firewall.
    "guard.nft.enabled=no",
)

TARGET_SUCCESS = 0.999
TARGET_P99_MS = 1000.0
TARGET_IMAP_RATIO = 1.5
TARGET_RSS_MB = 512.0


def log(msg):
    print("flood: " + msg, flush=True)


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(FD_LIMIT, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def proc_status(pid):
    """{key: kB} of VmRSS/VmHWM from /proc/pid/status, or {} when gone."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def proc_pss_kb(pid):
    """Proportional set size: shared pages divided among the processes that
    map them, so a sum over many processes counts each page once."""
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def group_pids(cpu):
    if not cpu.path:
        return []
    try:
        with open(os.path.join(cpu.path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


class MemorySampler:
    """Samples memory once a second in a thread until stopped (bounded by
    the flood's own length: the caller stops it when the flood returns)."""

    def __init__(self, pids):
        self.pids = pids          # callable returning the pids to sum
        self.samples = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            pids = self.pids()
            rss = sum(proc_status(p).get("VmRSS", 0) for p in pids)
            pss = sum(proc_pss_kb(p) for p in pids)
            self.samples.append((round(time.monotonic() - self._t0, 1), rss, pss, len(pids)))
            self._stop.wait(1.0)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        return self.samples


def deliver_seed(port, source="127.0.0.1"):
    """One 4 KB message to the probe's account, so that FETCH 1 has a body."""
    body = "".join("seed line %03d %s\r\n" % (i, "x" * 50) for i in range(64))
    msg = ("From: <seed@bench.example>\r\nTo: <%s>\r\nSubject: probe message\r\n"
           "Message-ID: <seed.%d@bench.example>\r\n\r\n%s" % (PROBE_USER, os.getpid(), body))
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=(source, 0)) as s:
            s.sendmail("seed@bench.example", [PROBE_USER], msg.encode("ascii"))
    except (OSError, smtplib.SMTPException) as e:
        raise BenchError("seeding the probe's mailbox on port %d failed: %s" % (port, e))


class Flood:
    """Runs bench/flood and parses its JSON lines."""

    def __init__(self, binary):
        self.binary = binary

    def run_under_flood(self, smtp_port, imap_port, seconds, probe_apart):
        """Every role for `seconds`; with probe_apart the IMAP probe runs in a
        process of its own at the same time, and its per-second figures
        replace the flood process's (see the module comment)."""
        if not probe_apart:
            return self.run(smtp_port, imap_port, seconds, ALL_ROLES)
        out, errors = {}, []

        def flood_roles():
            try:
                out["flood"] = self.run(smtp_port, imap_port, seconds,
                                        [r for r in ALL_ROLES if r != "imap-probe"])
            except BenchError as e:   # reported by the caller's thread
                errors.append(e)
        t = threading.Thread(target=flood_roles)
        t.start()
        try:
            probe = self.run(smtp_port, imap_port, seconds, ["imap-probe"])
        finally:
            t.join(seconds + 240)
        if errors:
            raise errors[0]
        if "flood" not in out:
            raise BenchError("the flood process did not finish")
        res = out["flood"]
        res["roles"]["imap-probe"] = probe["roles"]["imap-probe"]
        res["flood_max_loop_lag_ms"] = res.get("max_loop_lag_ms")
        res["max_loop_lag_ms"] = probe.get("max_loop_lag_ms")
        by_t = {x["t"]: x for x in probe["seconds"]}
        for x in res["seconds"]:
            p = by_t.get(x["t"], {})
            x["flood_loop_lag_ms"] = x.get("loop_lag_ms", 0)
            x["loop_lag_ms"] = p.get("loop_lag_ms", 0)
            x["imap_rounds"] = p.get("imap_rounds", 0)
            x["imap_p99_ms"] = p.get("imap_p99_ms", -1)
        return res

    def run(self, smtp_port, imap_port, seconds, roles, extra=()):
        args = [self.binary, "--smtp-port", str(smtp_port), "--imap-port", str(imap_port),
                "--seconds", str(seconds), "--roles", ",".join(roles),
                "--imap-user", PROBE_USER, "--imap-pass", PASSWORD,
                "--domain", DOMAIN, "--users", str(ingest.ACCOUNTS),
                "--imap-interval", str(IMAP_INTERVAL_MS)] + list(extra)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        mc0 = ingest.cpu_times()
        t0 = time.monotonic()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            p = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                               timeout=seconds + 180)
            out.seek(0)
            err.seek(0)
            text = out.read().decode("utf-8", "replace")
            diag = err.read().decode("utf-8", "replace")
        if p.returncode != 0:
            raise BenchError("flood exited %d: %s" % (p.returncode, diag.strip()[-1500:]))
        elapsed = max(time.monotonic() - t0, 1e-9)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy, iowait = ingest.cpu_delta(mc0, ingest.cpu_times())
        res = {"roles": {}, "seconds": [], "machine_busy_pct": busy, "machine_iowait_pct": iowait,
               "tool_cpu_pct": round(100.0 * (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime
                                              - ru0.ru_stime) / elapsed, 1)}
        for line in text.splitlines():
            obj = json.loads(line)
            if obj["type"] == "role":
                res["roles"][obj["role"]] = obj
            elif obj["type"] == "tool":
                res["max_loop_lag_ms"] = obj["max_loop_lag_ms"]
            else:
                res["seconds"].append(obj)
        return res


ALL_ROLES = ("connect-flood", "slowloris", "early-talker", "junk", "legit", "imap-probe")


def http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode("utf-8", "replace")


class FloodStrata(ingest.Strata):
    """Strata with SMTP, IMAP and admin on loopback, guard on, no allowlist."""

    def start(self):
        for port in (PORT_SMTP_STRATA, PORT_ADMIN_STRATA, PORT_IMAP_STRATA):
            if not ingest.port_free(port):
                raise BenchError("port %d is in use" % port)
        self.log_fh = open(self.logfile, "ab")
        args = [self.binary, "serve"] + self._opts() + [
            "-o", "smtp.listen=127.0.0.1:%d" % PORT_SMTP_STRATA,
            "-o", "admin.listen=127.0.0.1:%d" % PORT_ADMIN_STRATA,
            "-o", "imap.listen=127.0.0.1:%d" % PORT_IMAP_STRATA,
            "-o", "threads=2"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log_fh,
                                     stderr=subprocess.STDOUT, preexec_fn=self.cpu.enter)
        alive = lambda: self.proc.poll() is None  # noqa: E731
        ingest.wait_smtp_banner(PORT_SMTP_STRATA, ingest.START_WAIT_S, alive)
        ingest.wait_banner(PORT_IMAP_STRATA, b"* OK", ingest.START_WAIT_S, alive)

    def metrics(self):
        out = {}
        text = http_get("http://127.0.0.1:%d/metrics" % PORT_ADMIN_STRATA)
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
        return out

    def guard_status(self):
        try:
            return http_get("http://127.0.0.1:%d/guard/status?format=text" % PORT_ADMIN_STRATA)
        except OSError as e:
            return "guard status unavailable: %s" % e


class FloodReference(ingest.Reference):
    """Postfix (postscreen -> smtpd) -> LMTP -> Dovecot, which also serves IMAP."""

    def _setup_dovecot(self):
        super()._setup_dovecot()
        with open(self.dv_conf, "w") as f:
            f.write(ingest.fill_template("postscreen/dovecot.conf.in", {
                "BASE_DIR": self.dv_base, "STATE_DIR": self.dv_state,
                "LOG_FILE": os.path.join(self.dir, "dovecot.log"), "MAIL_DIR": self.mail,
                "UID": self.mail_uid, "GID": self.mail_gid, "USERS_FILE": self.users,
                "LMTP_SOCKET_NAME": os.path.basename(self.lmtp_socket), "DOMAIN": DOMAIN,
                "IMAP_PORT": PORT_IMAP_REF, "CORES": os.cpu_count() or 1}))

    def _setup_postfix(self):
        values = {"CONFIG_DIR": self.pf_config, "QUEUE_DIR": self.pf_queue,
                  "DATA_DIR": self.pf_data, "LOG_FILE": os.path.join(self.dir, "postfix.log"),
                  "DOMAIN": DOMAIN, "LMTP_SOCKET": self.lmtp_socket,
                  "PROCESS_LIMIT": SMTPD_PROCESS_LIMIT,
                  "SMTPD_LISTEN": "127.0.0.1:%d" % PORT_SMTP_REF}
        for name in ("main.cf", "master.cf"):
            with open(os.path.join(self.pf_config, name), "w") as f:
                f.write(ingest.fill_template("postscreen/%s.in" % name, values))
        vmailbox = os.path.join(self.pf_config, "vmailbox")
        with open(vmailbox, "w") as f:
            for i in range(ingest.ACCOUNTS):
                f.write("%s%d@%s %s/%s%d/\n" % (ingest.PREFIX, i, DOMAIN, DOMAIN,
                                                ingest.PREFIX, i))
        ingest.run_cmd(["postmap", "-c", self.pf_config, "hash:" + vmailbox])
        pf = ingest.pwd.getpwnam("postfix")
        os.chown(self.pf_data, pf.pw_uid, pf.pw_gid)
        os.chmod(self.pf_data, 0o700)

    def start(self):
        for port in (PORT_SMTP_REF, PORT_IMAP_REF):
            if not ingest.port_free(port):
                raise BenchError("port %d is in use" % port)
        self.dv_started = True  # before: a failed start may still leave a master
        self._run_logged(["dovecot", "-c", self.dv_conf], "dovecot.log")
        deadline = time.monotonic() + ingest.START_WAIT_S
        while not os.path.exists(self.lmtp_socket):
            if time.monotonic() > deadline:
                raise BenchError("dovecot did not create %s" % self.lmtp_socket)
            time.sleep(0.1)
        self.pf_started = True
        self._run_logged(["postfix", "-c", self.pf_config, "start"], "postfix.log")
        # 127.0.0.1 is in mynetworks, so postscreen hands it to smtpd at once.
        ingest.wait_smtp_banner(PORT_SMTP_REF, ingest.START_WAIT_S)
        ingest.wait_banner(PORT_IMAP_REF, b"* OK", ingest.START_WAIT_S)

    def wait_seed(self, seconds=60):
        new = os.path.join(self.mail, DOMAIN, "user0", "new")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if os.listdir(new) or os.listdir(os.path.join(os.path.dirname(new), "cur")):
                return
            time.sleep(0.2)
        raise BenchError("the probe's seed message was not delivered to Dovecot in %ds"
                         % seconds)

    def log_counts(self):
        """Postscreen and smtpd verdicts counted in the Postfix log."""
        pats = {
            "postscreen_connect": r"postscreen\[\d+\]: CONNECT from",
            "postscreen_pregreet": r"postscreen\[\d+\]: PREGREET ",
            "postscreen_pass_new": r"postscreen\[\d+\]: PASS NEW ",
            "postscreen_pass_old": r"postscreen\[\d+\]: PASS OLD ",
            "postscreen_hangup": r"postscreen\[\d+\]: HANGUP ",
            "postscreen_noqueue": r"postscreen\[\d+\]: NOQUEUE: reject",
            "postscreen_busy": r"all server ports busy",
            "postscreen_too_many": r"too many connections",
            "postscreen_command_limit": r"COMMAND (COUNT|TIME|LENGTH) LIMIT",
            "smtpd_timeout": r"smtpd\[\d+\]: timeout after",
            "smtpd_rate_limit": r"Connection rate limit exceeded",
            "smtpd_count_limit": r"Connection concurrency limit exceeded",
            "smtpd_too_many_errors": r"too many errors after",
            "stress": r"(server features enabled|stress)",
        }
        counts = {k: 0 for k in pats}
        regs = {k: re.compile(v) for k, v in pats.items()}
        try:
            with open(os.path.join(self.dir, "postfix.log"), errors="replace") as f:
                for line in f:
                    for k, r in regs.items():
                        if r.search(line):
                            counts[k] += 1
        except OSError:
            pass
        return counts


def log_problems(path, keep=20):
    """Count and first lines of the daemon's warnings and errors (bounded)."""
    count, first = 0, []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if ": warn" in line or ": error" in line or ": fatal" in line:
                    count += 1
                    if len(first) < keep:
                        first.append(line.rstrip()[:300])
    except OSError:
        pass
    return {"count": count, "first": first}


def metric_deltas(m0, m1):
    out = {}
    for name, v in m1.items():
        if not (name.startswith("strata_guard") or name.startswith("strata_smtp")
                or name.startswith("strata_imap")):
            continue
        d = v - m0.get(name, 0.0)
        if name.endswith("_bucket"):
            continue
        if d != 0 or name == "strata_guard_entries":
            out[name] = round(d if not name.endswith(("_entries", "_connections")) else v, 3)
    return out


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def run_strata(strata_bin, flood, workroot, seconds, idle_seconds, options=(), probe_apart=True):
    work = tempfile.mkdtemp(prefix="flood-strata-", dir=workroot)
    os.chmod(work, 0o755)
    st = FloodStrata(strata_bin, work, overrides=list(STRATA_UNDER_ATTACK) + list(options))
    try:
        st.setup()
        st.start()
        deliver_seed(PORT_SMTP_STRATA)
        res = {"stack": "strata", "settings": list(STRATA_UNDER_ATTACK) + list(options)}
        log("strata: idle IMAP baseline, %ds" % idle_seconds)
        res["idle"] = flood.run(PORT_SMTP_STRATA, PORT_IMAP_STRATA, idle_seconds, ["imap-probe"])
        res["load_before"] = load_average()
        m0 = st.metrics()
        cpu0 = st.cpu.seconds()
        threads0 = ingest.thread_cpu(st.pid)
        sampler = MemorySampler(lambda: [st.pid]).start()
        status = {}

        def grab_status():
            status["text"] = st.guard_status()
        timer = threading.Timer(max(seconds - 3, 1), grab_status)
        timer.start()
        log("strata: flood, %ds" % seconds)
        t0 = time.monotonic()
        try:
            res["flood"] = flood.run_under_flood(PORT_SMTP_STRATA, PORT_IMAP_STRATA, seconds, probe_apart)
        finally:
            timer.cancel()
            res["rss_samples_kb"] = sampler.stop()
        elapsed = time.monotonic() - t0
        res["load_after"] = load_average()
        res["vm"] = proc_status(st.pid)
        res["server_cpu_pct"], _ = ingest.cpu_used(st.cpu, cpu0, elapsed)
        res["threads"] = ingest.thread_cpu_pct(threads0, ingest.thread_cpu(st.pid), elapsed)
        res["metrics"] = metric_deltas(m0, st.metrics())
        res["guard_status"] = status.get("text") or st.guard_status()
        log("strata: idle IMAP control after the flood, %ds" % idle_seconds)
        res["idle_after"] = flood.run(PORT_SMTP_STRATA, PORT_IMAP_STRATA, idle_seconds,
                                      ["imap-probe"])
        res["visible"] = st.visible()
        res["log_problems"] = log_problems(os.path.join(work, "strata.log"))
        res["rss_peak_kb"] = res["vm"].get("VmHWM")
        return res
    finally:
        st.stop()


def run_reference(flood, workroot, seconds, idle_seconds, probe_apart=True):
    work = tempfile.mkdtemp(prefix="flood-reference-", dir=workroot)
    os.chmod(work, 0o755)
    ref = FloodReference(work)
    try:
        ref.setup()
        ref.start()
        deliver_seed(PORT_SMTP_REF)
        ref.wait_seed()
        res = {"stack": "reference"}
        log("reference: idle IMAP baseline, %ds" % idle_seconds)
        res["idle"] = flood.run(PORT_SMTP_REF, PORT_IMAP_REF, idle_seconds, ["imap-probe"])
        res["load_before"] = load_average()
        cpu0 = ref.cpu.seconds()
        sampler = MemorySampler(lambda: group_pids(ref.cpu)).start()
        log("reference: flood, %ds" % seconds)
        t0 = time.monotonic()
        try:
            res["flood"] = flood.run_under_flood(PORT_SMTP_REF, PORT_IMAP_REF, seconds, probe_apart)
        finally:
            res["rss_samples_kb"] = sampler.stop()
        elapsed = time.monotonic() - t0
        res["load_after"] = load_average()
        res["server_cpu_pct"], _ = ingest.cpu_used(ref.cpu, cpu0, elapsed)
        # Peak of the PSS sum (each shared page once); the RSS sum would count
        # the shared libraries of every smtpd process again.
        res["rss_peak_kb"] = max((x[2] for x in res["rss_samples_kb"]), default=None)
        res["rss_sum_peak_kb"] = max((x[1] for x in res["rss_samples_kb"]), default=None)
        res["processes_peak"] = max((x[3] for x in res["rss_samples_kb"]), default=None)
        log("reference: idle IMAP control after the flood, %ds" % idle_seconds)
        res["idle_after"] = flood.run(PORT_SMTP_REF, PORT_IMAP_REF, idle_seconds, ["imap-probe"])
        res["log_counts"] = ref.log_counts()
        return res
    finally:
        ref.stop()


def summary(res):
    """The figures the targets speak of, for one stack."""
    legit = res["flood"]["roles"]["legit"]
    probe = res["flood"]["roles"]["imap-probe"]
    idle = res["idle"]["roles"]["imap-probe"]
    after = res["idle_after"]["roles"]["imap-probe"] if res.get("idle_after") else None
    ratio = probe["p99_ms"] / idle["p99_ms"] if idle["p99_ms"] > 0 else None
    # Seconds in which the flood tool itself was held off the CPU for more
    # than 50 ms: latencies measured across them include the machine's stall.
    secs = res["flood"]["seconds"]
    stalled = [x["t"] for x in secs if x.get("loop_lag_ms", 0) > 50]
    calm = sorted(x["imap_p99_ms"] for x in secs
                  if x.get("loop_lag_ms", 0) <= 50 and x["imap_p99_ms"] >= 0)
    return {"legit_success": legit["success_rate"], "legit_ok": legit["ok"],
            "legit_failed": legit["failed"], "legit_p50_ms": legit["p50_ms"],
            "legit_p99_ms": legit["p99_ms"], "legit_max_ms": legit["max_ms"],
            "imap_idle_p50_ms": idle["p50_ms"], "imap_flood_p50_ms": probe["p50_ms"],
            "imap_idle_p99_ms": idle["p99_ms"], "imap_flood_p99_ms": probe["p99_ms"],
            "imap_flood_ok": probe["ok"], "imap_flood_failed": probe["failed"],
            "imap_ratio": round(ratio, 2) if ratio is not None else None,
            "imap_idle_after_p50_ms": after["p50_ms"] if after else None,
            "imap_idle_after_p99_ms": after["p99_ms"] if after else None,
            "tool_stalled_seconds": len(stalled),
            "imap_calm_seconds_median_p99_ms": calm[len(calm) // 2] if calm else None,
            "tool_max_loop_lag_ms": res["flood"].get("max_loop_lag_ms"),
            "rss_peak_mb": round(res["rss_peak_kb"] / 1024.0, 1) if res.get("rss_peak_kb")
            else None}


def verdict(results):
    s = results.get("strata")
    r = results.get("reference")
    if not s:
        return {}
    a = summary(s)
    v = {"success": a["legit_success"] >= TARGET_SUCCESS,
         "p99": 0 <= a["legit_p99_ms"] <= TARGET_P99_MS,
         "imap": a["imap_ratio"] is not None and a["imap_ratio"] <= TARGET_IMAP_RATIO,
         "rss": a["rss_peak_mb"] is not None and a["rss_peak_mb"] <= TARGET_RSS_MB}
    if r:
        b = summary(r)
        v["ahead"] = {
            "success": a["legit_success"] > b["legit_success"] or a["legit_success"] == 1.0,
            "p99": b["legit_p99_ms"] < 0 or 0 <= a["legit_p99_ms"] < b["legit_p99_ms"],
            "imap": (a["imap_ratio"] or 1e9) < (b["imap_ratio"] or 1e9),
            "rss": (a["rss_peak_mb"] or 1e12) < (b["rss_peak_mb"] or 1e12)}
    return v


def run_flood(strata_bin, flood_bin, workroot, seconds=DEFAULT_SECONDS, only=None,
              idle_seconds=IDLE_SECONDS, strata_options=(), probe_apart=True):
    """Both stacks (or `only` one of them); returns the results dict."""
    limits = raise_fd_limit()
    flood = Flood(flood_bin)
    results = {"meta": {"started": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"),
                        "seconds": seconds, "idle_seconds": idle_seconds,
                        "probe": "own process" if probe_apart else "in the flood tool",
                        "fd_limit": list(limits), "cores": os.cpu_count(),
                        "load_start": load_average(),
                        "nice": os.getpriority(os.PRIO_PROCESS, 0),
                        "strata_version": ingest.strata_version(strata_bin),
                        "source": ingest.source_revision(),
                        "packages": ingest.package_versions()}}
    if only in (None, "strata"):
        results["strata"] = run_strata(strata_bin, flood, workroot, seconds, idle_seconds,
                                       strata_options, probe_apart)
        results["strata"]["summary"] = summary(results["strata"])
        log("strata: %s" % json.dumps(results["strata"]["summary"]))
    if only in (None, "postfix"):
        results["reference"] = run_reference(flood, workroot, seconds, idle_seconds, probe_apart)
        results["reference"]["summary"] = summary(results["reference"])
        log("reference: %s" % json.dumps(results["reference"]["summary"]))
    results["verdict"] = verdict(results)
    return results


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6.4), dpi=120, sharex=True)
    styles = (("strata", "Strata", "#1f77b4", "-"),
              ("reference", "Postfix + postscreen / Dovecot", "#d62728", "--"))
    for key, label, color, ls in styles:
        res = results.get(key)
        if not res:
            continue
        secs = res["flood"]["seconds"]
        t = [s["t"] for s in secs]
        ok = [100.0 * s["legit_ok"] / s["legit_started"] if s["legit_started"] else None
              for s in secs]
        ax1.plot(t, ok, ls, color=color, label=label, marker=".", markersize=3)
        p99 = [s["imap_p99_ms"] if s["imap_p99_ms"] >= 0 else None for s in secs]
        ax2.plot(t, p99, ls, color=color, label=label + " (flood)", marker=".", markersize=3)
        idle = res["idle"]["roles"]["imap-probe"]["p99_ms"]
        if idle > 0:
            ax2.axhline(idle, color=color, alpha=0.5, linewidth=1, linestyle=":",
                        label=label + " idle p99")
    ax1.set_ylabel("legitimate messages\naccepted, % (by start second)")
    ax1.set_ylim(-5, 105)
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title("Under attack: %d s flood, %d cores shared" % (results["meta"]["seconds"],
                                                                 os.cpu_count()))
    ax2.set_yscale("log")
    ax2.set_ylabel("IMAP login+select+fetch+logout\np99 per second, ms")
    ax2.set_xlabel("seconds into the flood")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(results, directory):
    os.makedirs(directory, exist_ok=True)
    day = datetime.datetime.utcnow().strftime("%Y-%m-%d")
    jpath = os.path.join(directory, "flood-%s.json" % day)
    ppath = os.path.join(directory, "flood-%s.png" % day)
    with open(jpath, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True, default=str)
        f.write("\n")
    plot(results, ppath)
    return jpath, ppath


def parse_args():
    ap = argparse.ArgumentParser(description="Flood benchmark: Strata vs Postfix + postscreen")
    ap.add_argument("--strata", required=True, help="path to the strata binary")
    ap.add_argument("--flood", help="path to the flood tool (default: bench/flood beside --strata)")
    ap.add_argument("--seconds", type=int, default=DEFAULT_SECONDS, help="flood length (10-600)")
    ap.add_argument("--idle-seconds", type=int, default=IDLE_SECONDS,
                    help="idle IMAP baseline length (5-120)")
    ap.add_argument("--only", choices=("strata", "postfix"))
    ap.add_argument("--probe-in-flood-tool", action="store_true",
                    help="run the IMAP probe inside the flood's own process (as runs before "
                    "the probe had a process of its own did)")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--workdir", default=os.environ.get("STRATA_BENCH_DIR", "/var/tmp"))
    ap.add_argument("--keep", action="store_true", help="keep the stacks' state for inspection")
    ap.add_argument("--strata-option", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra Strata setting after the under-attack ones (repeatable; "
                    "for experiments: the results record it)")
    ap.add_argument("--nice", type=int, default=-10,
                    help="scheduling priority for the servers and the flood tool (inherited; "
                    "default -10, so that other work on a shared machine disturbs less; "
                    "0 leaves it alone)")
    a = ap.parse_args()
    if not 10 <= a.seconds <= 600 or not 5 <= a.idle_seconds <= 120:
        ap.error("--seconds must be 10-600 and --idle-seconds 5-120")
    return a


def on_signal(signum, _frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main():
    args = parse_args()
    args.strata = os.path.abspath(args.strata)
    if not args.flood:
        args.flood = os.path.join(os.path.dirname(args.strata), "bench", "flood")
    if os.geteuid() != 0:
        raise BenchError("run as root: Postfix and Dovecot must be started as root")
    for path in (args.strata, args.flood):
        if not os.access(path, os.X_OK):
            raise BenchError("%s is not an executable (build it first)" % path)
    if args.only != "strata":
        for tool in ("postfix", "postmap", "dovecot", "doveadm"):
            if shutil.which(tool) is None:
                raise BenchError("%s is not installed" % tool)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(2 * (args.seconds + args.idle_seconds) + BUDGET_EXTRA_S)
    ingest.stop_system_instances()
    if args.nice:
        # Both stacks and the tool inherit it alike: it changes nothing
        # between them, only how much other processes can take from them.
        os.setpriority(os.PRIO_PROCESS, 0, max(-20, min(19, args.nice)))
    workroot = tempfile.mkdtemp(prefix="strata-flood-", dir=args.workdir)
    os.chmod(workroot, 0o755)
    try:
        results = run_flood(args.strata, args.flood, workroot, args.seconds, args.only,
                            args.idle_seconds, args.strata_option, not args.probe_in_flood_tool)
        jpath, ppath = write_results(results, args.results)
        log("wrote %s and %s" % (os.path.relpath(jpath, ROOT), os.path.relpath(ppath, ROOT)))
        log("verdict: %s" % json.dumps(results["verdict"]))
    finally:
        if args.keep:
            log("state kept in %s" % workroot)
        else:
            shutil.rmtree(workroot, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print("flood: error: %s" % e, file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:
        print("flood: interrupted (%s); everything started was stopped" % e, file=sys.stderr)
        sys.exit(130)
