"""Bans mirrored into the kernel firewall (nftables), proved at packet level.

Two network namespaces joined by a veth pair: the server side holds
198.18.0.1 and runs `strata serve` (as root, dropping to the user
`strata`: the nft helper must keep working after the drop); the client
side holds two addresses, 198.18.0.2 and 198.18.0.3.  A ban must make the
kernel drop the banned client's SYNs (its connect times out, the drop
rule's packet counter grows, `nft list set` shows the element) while the
other address still connects; an unban restores it at once; SIGHUP
rebuilds a flushed set; a clean shutdown removes the table.

Only 198.18.0.0/15 (benchmarking, RFC 2544) and loopback addresses are
used, inside namespaces the test creates and always deletes.  Needs root
(namespaces, nftables): skipped otherwise.
"""
import json
import os
import shutil
import signal
import subprocess
import tempfile

import pytest

from harness import IS_ROOT, SLOW, STRATA_BIN, Strata, make_traversable, proc_env, sanitizer_report, wait_until

SRV_ADDR = "198.18.0.1"
CLIENT_A = "198.18.0.2"
CLIENT_B = "198.18.0.3"
SMTP_PORT = 2525
ADMIN = "127.0.0.1:9425"     # the server namespace's own loopback


def _missing():
    if not IS_ROOT:
        return "needs root: network namespaces and nftables"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None and not os.path.exists("/usr/sbin/" + tool):
            return "%s is not installed (package %s)" % (tool, package)
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")

# Runs in the client namespace: connect from a source address with a
# deadline, print one JSON line: {"result": "timeout" | "refused" | "ok",
# "lines": [...]} (the banner, then the last line of the reply to each
# line sent, and one more: the 421 that may end the session).
PROBE = r"""
import json, socket, sys
src, dst, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
send = sys.argv[5:]
out = {"result": "ok", "lines": []}
s = socket.socket()
s.settimeout(timeout)
s.bind((src, 0))
try:
    s.connect((dst, port))
    f = s.makefile("rb")

    def reply():
        # the last line of a (multi-line) reply: "NNN " ends it; "" at EOF
        while True:
            line = f.readline().decode().strip()
            if len(line) < 4 or line[3] != "-":
                return line

    out["lines"].append(reply())
    for line in send:
        s.sendall(line.encode() + b"\r\n")
        out["lines"].append(reply())
    if send:
        out["lines"].append(reply())   # what follows the last reply: a 421 and EOF, or nothing
except socket.timeout:
    out["result"] = "timeout"
except ConnectionRefusedError:
    out["result"] = "refused"
except OSError as e:
    out["result"] = "error: %s" % e
print(json.dumps(out))
"""


def run(*cmd, check=True, timeout=30):
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout * SLOW)
    if check and p.returncode != 0:
        raise AssertionError("%s exited %d:\n%s%s" % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return p


class Namespaces:
    """The server and client namespaces and the veth pair between them."""

    def __init__(self):
        tag = "%d" % (os.getpid() % 100000)
        self.srv, self.cli = "strata-srv-" + tag, "strata-cli-" + tag
        self.veth_srv, self.veth_cli = "stsrv" + tag, "stcli" + tag

    def create(self):
        run("ip", "netns", "add", self.srv)
        run("ip", "netns", "add", self.cli)
        run("ip", "link", "add", self.veth_srv, "type", "veth", "peer", "name", self.veth_cli)
        run("ip", "link", "set", self.veth_srv, "netns", self.srv)
        run("ip", "link", "set", self.veth_cli, "netns", self.cli)
        run("ip", "-n", self.srv, "addr", "add", SRV_ADDR + "/24", "dev", self.veth_srv)
        run("ip", "-n", self.cli, "addr", "add", CLIENT_A + "/24", "dev", self.veth_cli)
        run("ip", "-n", self.cli, "addr", "add", CLIENT_B + "/24", "dev", self.veth_cli)
        for ns, dev in ((self.srv, self.veth_srv), (self.cli, self.veth_cli)):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "link", "set", dev, "up")

    def delete(self):
        # Deleting a namespace takes its end of the veth pair, and so the pair.
        for ns in (self.srv, self.cli):
            run("ip", "netns", "del", ns, check=False)
        run("ip", "link", "del", self.veth_srv, check=False)

    def in_srv(self, *cmd, **kw):
        return run("ip", "netns", "exec", self.srv, *cmd, **kw)

    def probe(self, src, timeout, *lines):
        p = run("ip", "netns", "exec", self.cli, "/usr/bin/python3", "-c", PROBE, src, SRV_ADDR,
                str(SMTP_PORT), str(timeout), *lines, timeout=timeout + 30)
        return json.loads(p.stdout)


@pytest.fixture
def netns():
    ns = Namespaces()
    ns.delete()                # leftovers of an earlier run killed mid-way
    try:
        ns.create()
        yield ns
    finally:
        ns.delete()


class Daemon:
    """strata serve inside the server namespace."""

    def __init__(self, ns, root):
        self.ns = ns
        self.s = Strata(root, "nft", options={
            "smtp.listen": "%s:%d" % (SRV_ADDR, SMTP_PORT),
            "admin.listen": ADMIN,
            "guard.nft.enabled": "yes",
            "smtp.max_errors": "2",
            "guard.smtp.banner_delay": "0",
        })
        self.proc = None
        self.log_path = os.path.join(self.s.dir, "serve.log")

    def start(self):
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns.srv, STRATA_BIN, "serve"] + self.s.opt_args(),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=proc_env(), start_new_session=True)
        wait_until(lambda: self.exited() or " ready: " in self.log(), 20 * SLOW, what="strata serve to start")
        assert not self.exited(), "strata serve exited during start-up:\n" + self.log()

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def exited(self):
        return self.proc.poll() is not None

    def cli(self, *args):
        return self.ns.in_srv(*self.s.cli_cmd(*args))

    def stop(self):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30 * SLOW)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            rc = None
        self.proc = None
        bad = sanitizer_report(self.log())
        assert bad is None, "sanitizer report: %s\n%s" % (bad, self.log())
        return rc

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@pytest.fixture
def daemon(netns):
    root = tempfile.mkdtemp(prefix="strata-nft-")
    make_traversable(root)            # the daemon, once `strata`, must reach its state
    d = Daemon(netns, root)
    try:
        yield d
    finally:
        d.kill()
        shutil.rmtree(root, ignore_errors=True)


def set_elements(ns, name):
    p = ns.in_srv("nft", "list", "set", "inet", "strata", name, check=False)
    return p.stdout if p.returncode == 0 else ""


def drop_packets(ns, setname):
    """Packets counted by the drop rule that matches @setname."""
    rules = json.loads(ns.in_srv("nft", "-j", "list", "chain", "inet", "strata", "input").stdout)["nftables"]
    for item in rules:
        rule = item.get("rule")
        if rule is None or ("@" + setname) not in json.dumps(rule["expr"]):
            continue
        for e in rule["expr"]:
            if "counter" in e:
                return e["counter"]["packets"]
    raise AssertionError("no drop rule for @%s in %r" % (setname, rules))


def expect_served(ns, src):
    r = ns.probe(src, 5 * SLOW)
    assert r["result"] == "ok" and r["lines"][0].startswith("220 "), "%s: %r" % (src, r)


def expect_dropped(ns, src):
    """The SYN gets no answer at all: not a refusal line, not a RST."""
    r = ns.probe(src, 2)
    assert r["result"] == "timeout", "%s: expected the kernel to drop the SYN, got %r" % (src, r)


def test_ban_drops_syns_in_the_kernel(daemon):
    ns = daemon.ns
    daemon.start()
    wait_until(lambda: "bans are mirrored into nftables" in daemon.log(), 10 * SLOW,
               what="the kernel mirror to become active")
    log = daemon.log()
    assert "user strata" in log, "the daemon did not drop privileges:\n" + log
    assert "cannot mirror bans" not in log, log
    table = ns.in_srv("nft", "list", "table", "inet", "strata").stdout
    assert "tcp dport %d" % SMTP_PORT in table and "@ban4" in table and "@ban6" in table, table
    expect_served(ns, CLIENT_A)
    expect_served(ns, CLIENT_B)
    before = drop_packets(ns, "ban4")

    # An administrator's ban reaches the kernel: A's SYNs are dropped.
    out = daemon.cli("guard", "ban", CLIENT_A, "1h").stdout
    assert "banned %s" % CLIENT_A in out, out
    wait_until(lambda: CLIENT_A in set_elements(ns, "ban4"), 5 * SLOW, what="the element in the set")
    assert "timeout 1h" in set_elements(ns, "ban4")
    expect_dropped(ns, CLIENT_A)
    assert drop_packets(ns, "ban4") > before, "the drop rule counted nothing"
    expect_served(ns, CLIENT_B)                          # the other address still connects
    status = daemon.cli("guard", "status").stdout
    assert "kernel firewall: active (table inet strata, sets ban4 and ban6)" in status, status
    metrics = ns.in_srv("curl", "-sS", "--max-time", "10", "http://%s/metrics" % ADMIN).stdout
    counts = dict(l.split()[:2] for l in metrics.splitlines() if l.startswith("strata_guard_nft_"))
    assert int(counts["strata_guard_nft_updates_total"]) >= 2, counts   # set-up, then the ban
    assert int(counts["strata_guard_nft_errors_total"]) == 0, counts

    # Unban: the element goes, and the first SYN gets through (under the
    # 1 s SYN retransmission: no dropped SYN on the way).
    daemon.cli("guard", "unban", CLIENT_A)
    wait_until(lambda: CLIENT_A not in set_elements(ns, "ban4"), 5 * SLOW, what="the element to go")
    r = ns.probe(CLIENT_A, 0.9)
    assert r["result"] == "ok" and r["lines"][0].startswith("220 "), r

    # A protocol offence bans too: B's 2nd error ends its session, then the
    # kernel drops it.
    r = ns.probe(CLIENT_B, 5 * SLOW, "EHLO b.example", "JUNK 1", "JUNK 2")
    assert r["lines"][-1].startswith("421 4.7.0") and "too many errors" in r["lines"][-1], r
    wait_until(lambda: CLIENT_B in set_elements(ns, "ban4"), 5 * SLOW, what="the offender's element")
    expect_dropped(ns, CLIENT_B)
    expect_served(ns, CLIENT_A)

    # Someone flushes the set: SIGHUP puts the bans back.
    ns.in_srv("nft", "flush", "set", "inet", "strata", "ban4")
    assert CLIENT_B not in set_elements(ns, "ban4")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: CLIENT_B in set_elements(ns, "ban4"), 10 * SLOW, what="the re-sync after SIGHUP")

    # A clean shutdown removes the table; the ban stays in the state file.
    assert daemon.stop() == 0
    tables = ns.in_srv("nft", "list", "tables").stdout
    assert "inet strata" not in tables, tables
    with open(os.path.join(daemon.s.state_dir, "guard-bans")) as f:
        assert CLIENT_B in f.read()

    # At the next start the saved ban is back in the kernel.
    daemon.start()
    wait_until(lambda: CLIENT_B in set_elements(ns, "ban4"), 10 * SLOW, what="the ban restored into the kernel")
    expect_dropped(ns, CLIENT_B)
    expect_served(ns, CLIENT_A)
    assert daemon.stop() == 0


def test_without_the_mirror_bans_stay_in_user_space(daemon):
    """guard.nft.enabled = no: no table, and a banned client still gets the
    guard's refusal line from user space."""
    ns = daemon.ns
    daemon.s.options["guard.nft.enabled"] = "no"
    daemon.start()
    assert ns.in_srv("nft", "list", "tables").stdout.strip() == ""
    daemon.cli("guard", "ban", CLIENT_A, "1h")
    r = ns.probe(CLIENT_A, 5 * SLOW)
    assert r["result"] == "ok" and r["lines"][0].startswith("421 4.7.0"), r
    assert "kernel firewall: off" in daemon.cli("guard", "status").stdout
    assert daemon.stop() == 0
