"""Listener isolation (src/server/server_listener.c): the MX listeners and the
user-facing ones (IMAP, POP3, submission) are served by separate pools of
network threads, and each class has its own connection budget in the guard.

Clients bind their sockets to chosen 127.x sources (all of 127/8 reaches
lo), so one test plays a flood of many addresses and a user apart from it.
The assertions are about outcomes (logins succeed, refusals name the right
class), never about timing: the suite runs on slow, shared machines.
"""
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest

from harness import SLOW, RawSMTP, LineClient, check_reply, free_port, wait_until

HOST = "mx.strata.test"
MX_REFUSAL = "421 4.7.0 %s Too many connections from your network, try again later" % HOST
PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)

# Only the class caps bind (per-address and per-network limits off), so the
# tests say exactly which budget is full.
OPEN = {
    "guard.allow": "127.0.0.1",
    "guard.mx.addr.rate": "0", "guard.mx.addr.concurrency": "0",
    "guard.mx.net.rate": "0", "guard.mx.net.concurrency": "0",
    "guard.user.addr.rate": "0", "guard.user.addr.concurrency": "0",
    "guard.user.net.rate": "0", "guard.user.net.concurrency": "0",
    "guard.smtp.banner_delay": "0",
    "guard.good.reserve": "0",
    "smtp.max_connections": "5000",
}

MX_CAP = 60          # guard.mx.max_connections in the flood test
# One source per /24 (127.10.N.1), so no network is over its fair share and
# the class cap itself is what fills.


def options(**kw):
    o = dict(OPEN)
    o.update({k.replace("__", "."): v for k, v in kw.items()})
    return o


class Sourced(RawSMTP):
    """RawSMTP (or any line protocol) from a chosen 127.x source."""

    def __init__(self, port, source, timeout=None):   # pylint: disable=super-init-not-called
        self.timeout = timeout if timeout is not None else 10 * SLOW
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=self.timeout,
                                             source_address=(source, 0))
        self.buf = b""
        self.closed = False


def first_line(port, source):
    c = Sourced(port, source)
    line = c.read_line()
    return c, (line.decode() if line is not None else None)


def add_user(s, name):
    s.add_domain("local.example")
    s.add_user("%s@local.example" % name)


def imap_login_cycle(port, source, user):
    """LOGIN, SELECT INBOX, LOGOUT from `source`; returns the tagged replies."""
    c = LineClient.__new__(LineClient)
    c.sock = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW, source_address=(source, 0))
    c.buf = b""
    try:
        c.greeting = c.line()
        assert c.greeting.startswith("* OK"), "greeting %r" % c.greeting
        c.send('a1 LOGIN %s@local.example "%s"\r\n' % (user, PASSWORD))
        login = c.until_tagged("a1")[-1]
        c.send("a2 SELECT INBOX\r\n")
        select = c.until_tagged("a2")[-1]
        c.send("a3 LOGOUT\r\n")
        logout = c.until_tagged("a3")[-1]
        return login, select, logout
    finally:
        c.close()


def thread_nices(pid):
    """{thread name: nice value} of the process's threads (proc(5) stat field 19)."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                stat = f.read()
        except OSError:
            continue   # a thread that just ended
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        out[name] = int(stat[stat.rindex(")") + 2:].split()[16])
    return out


def thread_names(pid):
    return list(thread_nices(pid))


def test_pools_have_their_own_threads(strata_factory):
    imap = free_port()
    s = strata_factory.new(options=options(imap__listen="127.0.0.1:%d" % imap, threads="2",
                                           threads__user="1", threads__mx_nice="4"))
    nices = thread_nices(s.pid)
    mx = sorted(n for n in nices if n.startswith("net-mx"))
    user = sorted(n for n in nices if n.startswith("net-user"))
    assert (mx, user) == (["net-mx0", "net-mx1"], ["net-user2"]), nices
    assert "network threads: 2 mx, 1 user" in s.read_log(), s.log_tail(20)
    # MX threads yield the CPU to the others; the user-facing ones keep the
    # daemon's own priority.
    base = os.getpriority(os.PRIO_PROCESS, s.pid)
    assert nices["net-user2"] == base, nices
    assert nices["net-mx0"] == nices["net-mx1"] == min(19, base + 4), nices


def thread_ids(pid, name):
    out = []
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                if f.read().strip() == name:
                    out.append(int(tid))
        except OSError:
            pass
    return out


def test_tier_mover_runs_behind_everything(strata_factory):
    """The mover thread is at SCHED_IDLE, nice 19, in the idle I/O class."""
    s = strata_factory.new(options=options())
    tids = thread_ids(s.pid, "tier-mover")
    assert len(tids) == 1, thread_nices(s.pid)
    with open("/proc/%d/task/%d/stat" % (s.pid, tids[0])) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    nice, policy = int(fields[16]), int(fields[38])   # proc(5): fields 19 and 41
    assert (nice, policy) == (19, 5), "nice %d policy %d, expected 19 and SCHED_IDLE (5)" % (nice, policy)
    out = subprocess.run(["ionice", "-p", str(tids[0])], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "idle", "ionice says %r" % out


def test_mx_flood_leaves_imap_logins_working(strata_factory):
    """A flood from many 127.10.x sources holds port 25's whole budget and
    keeps reconnecting; IMAP logins from another address all succeed
    meanwhile, and the MX refusals are counted against the mx class only."""
    imap = free_port()
    s = strata_factory.new(options=options(imap__listen="127.0.0.1:%d" % imap,
                                           guard__mx__max_connections=str(MX_CAP), threads="2",
                                           threads__user="1"))
    add_user(s, "ivy")
    held = []
    stop = threading.Event()
    attempts, refusals = [0], [0]
    lock = threading.Lock()

    def hammer():
        deadline = time.monotonic() + 60 * SLOW
        i = 0
        while not stop.is_set() and i < 5000 and time.monotonic() < deadline:
            src = "127.11.%d.%d" % (i // 200 % 200 + 1, i % 200 + 1)
            try:
                with socket.create_connection(("127.0.0.1", s.smtp_port), timeout=5 * SLOW,
                                              source_address=(src, 0)) as k:
                    if k.recv(512).startswith(b"421 "):
                        with lock:
                            refusals[0] += 1
            except OSError:
                pass
            i += 1
        with lock:
            attempts[0] += i

    hammers = [threading.Thread(target=hammer) for _ in range(3)]
    try:
        # The flood fills the mx budget (bounded: MX_CAP + 10 sources).
        for i in range(MX_CAP + 10):
            c, first = first_line(s.smtp_port, "127.10.%d.1" % (i + 1))
            if first is not None and first.startswith("220 "):
                held.append(c)
            else:
                assert first in (MX_REFUSAL, None), first
                c.close()
        assert len(held) == MX_CAP, "held %d MX sessions, the cap is %d" % (len(held), MX_CAP)
        c, first = first_line(s.smtp_port, "127.12.0.1")
        c.close()
        assert first == MX_REFUSAL, "port 25 should be full, got %r" % first

        for t in hammers:
            t.start()
        results = []
        for _ in range(20):
            results.append(imap_login_cycle(imap, "127.30.0.1", "ivy"))
        for i, (login, select, logout) in enumerate(results):
            assert login.startswith("a1 OK"), "login %d during the flood: %r" % (i, login)
            assert select.startswith("a2 OK"), "select %d during the flood: %r" % (i, select)
            assert logout.startswith("a3 OK"), "logout %d during the flood: %r" % (i, logout)
    finally:
        stop.set()
        for t in hammers:
            if t.ident is not None:
                t.join()
        for c in held:
            c.close()
    print("\nisolation: %d MX sessions held, %d reconnects (%d refused) during 20 IMAP login cycles"
          % (len(held), attempts[0], refusals[0]))
    assert refusals[0] > 0, "the flood's reconnects were never refused: port 25 was not full"


def test_submission_listeners_are_user_class_and_take_proxy(strata_factory):
    sub, subs = free_port(), free_port()
    balancer = "127.29.0.1"
    s = strata_factory.new(options=options(
        submission__listen="127.0.0.1:%d" % sub, submissions__listen="127.0.0.1:%d" % subs,
        guard__user__addr__concurrency="1", guard__user__proxy_from=balancer))
    log = s.read_log()
    assert "submission 127.0.0.1:%d, 127.0.0.1:%d" % (sub, subs) in log, s.log_tail(20)

    # 587: plain SMTP banner, STARTTLS offered.
    with Sourced(sub, "127.29.1.1") as c:
        check_reply(c.reply(), 220, what="submission banner")
        r = c.cmd("EHLO client.example")
        check_reply(r, 250, what="EHLO on submission")
        assert "STARTTLS" in r.text, r.text
        # The user class's per-address budget (1) is full for this source
        # on every user-facing listener ...
        c2, first = first_line(sub, "127.29.1.1")
        c2.close()
        assert first is not None and first.startswith("421 "), first
        # ... but port 25 is the mx class: not affected.
        c3, first = first_line(s.smtp_port, "127.29.1.1")
        c3.close()
        assert first is not None and first.startswith("220 "), first
        c.expect("QUIT", 221)

    # 465: TLS first, then the banner.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", subs), timeout=10 * SLOW, source_address=("127.29.2.1", 0))
    with ctx.wrap_socket(raw) as t:
        data = b""
        while b"\r\n" not in data:
            chunk = t.recv(1024)
            assert chunk, "EOF before the implicit-TLS banner"
            data += chunk
        assert data.startswith(b"220 "), data

    # PROXY protocol from the balancer: the client behind it is the one the
    # guard counts.
    c = Sourced(sub, balancer)
    c.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 587\r\n")
    try:
        check_reply(c.reply(), 220, what="banner through the balancer")
        d = Sourced(sub, balancer)
        d.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 40002 587\r\n")
        try:
            first = d.read_line()
            assert first is not None and first.startswith(b"421 "), first
        finally:
            d.close()
        e = Sourced(sub, balancer)
        e.send(b"PROXY TCP4 203.0.113.8 127.0.0.1 40003 587\r\n")
        try:
            check_reply(e.reply(), 220, what="another client through the balancer")
        finally:
            e.close()
    finally:
        c.close()
    assert s.metrics().get('strata_guard_proxy_total{result="accepted"}') == 3


def test_user_facing_node_without_mx(strata_factory):
    """smtp.listen empty: a node that serves users only (MX runs elsewhere)."""
    imap = free_port()
    s = strata_factory.new(options=options(smtp__listen="", imap__listen="127.0.0.1:%d" % imap),
                           start=False)
    s.start(wait=False)
    wait_until(lambda: "ready:" in (s.read_log() or "") or not s.running(), 20 * SLOW,
               what="the ready line")
    assert s.running(), s.log_tail(20)
    assert "ready: smtp off" in s.read_log() and "(network threads: 0 mx, 2 user)" in s.read_log(), \
        s.log_tail(20)
    c = LineClient(imap)
    try:
        assert c.greeting.startswith("* OK"), c.greeting
    finally:
        c.close()
    assert not any(n.startswith("net-mx") for n in thread_names(s.pid))


START_ERRORS = [
    # (label, options, what the log must say)
    ("no listener at all", {"smtp.listen": ""}, "nothing to listen on"),
    ("submission without a port", {"submission.listen": "127.0.0.1"},
     "submission.listen: '127.0.0.1' has no port"),
    ("submissions with a bad port", {"submissions.listen": "127.0.0.1:99999"},
     "submissions.listen: '127.0.0.1:99999': '99999' is not a port number"),
]


@pytest.mark.parametrize("label,opts,message", START_ERRORS, ids=[e[0] for e in START_ERRORS])
def test_start_up_refused(strata_factory, label, opts, message):
    s = strata_factory.new(options=options(**{k.replace(".", "__"): v for k, v in opts.items()}),
                           start=False)
    s.start(wait=False)
    rc = s.proc.wait(timeout=20 * SLOW)
    s.proc = None
    log = s.read_log()
    assert rc == 1, "%s: exit code %d, expected 1\n%s" % (label, rc, log)
    assert message in log, "%s: expected %r in the log:\n%s" % (label, message, log)
