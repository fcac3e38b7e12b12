"""What kill -9 cannot show: a missing fsync (the page cache survives a
process crash).  The daemon is traced with strace while it takes SMTP
deliveries and IMAP APPENDs, and for every 250 / APPEND OK the trace must
show, before the reply was written:

  1. fsync of the blob's temp file, before the rename;
  2. rename(2) of the temp file to blobs/<5>/<2>/<id>;
  3. fsync of that directory after the rename;
  4. fsync/fdatasync of index.db-wal after the rename.

Skipped (with the reason) when strace is missing or cannot attach."""
import os
import random
import re
import shutil
import signal
import subprocess
import time

import pytest

import harness
from crashlib import Driver, Model, new_server

DOMAIN = "order.example"
USERS = ["alice@" + DOMAIN, "bob@" + DOMAIN]
LINE_RE = re.compile(r"^(\d+)\s+\S+\s+(.*)$")
CALL_RE = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+)")
STR_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')
QUEUED_RE = re.compile(r"250 2\.0\.0 Ok: queued as ([0-9A-Z]{26})")


def open_fds(pid):
    """The daemon's descriptors before tracing starts (index.db-wal among them)."""
    out = {}
    d = "/proc/%d/fd" % pid
    for name in os.listdir(d):
        try:
            out[int(name)] = os.readlink(os.path.join(d, name))
        except OSError:
            pass
    return out


def parse_trace(path, fds):
    """Events in order: ('sync', path) | ('rename', src, dst) | ('reply', text).
    fds: descriptor -> path when tracing started."""
    fds = dict(fds)
    pending = {}
    events = []
    with open(path, errors="replace") as f:
        for raw in f:
            m = LINE_RE.match(raw.rstrip("\n"))
            if not m:
                continue
            pid, text = m.group(1), m.group(2)
            if text.endswith("<unfinished ...>"):
                pending[pid] = text[: -len("<unfinished ...>")].rstrip()
                continue
            rm = re.match(r"^<\.\.\. \w+ resumed>(.*)$", text)
            if rm:
                text = pending.pop(pid, "") + rm.group(1)
            c = CALL_RE.match(text)
            if not c:
                continue
            name, args, ret = c.group(1), c.group(2), int(c.group(3))
            strs = STR_RE.findall(args)
            if name == "openat" and ret >= 0 and strs:
                fds[ret] = strs[0]
            elif name == "close":
                fds.pop(int(args.split(",")[0]), None)
            elif name in ("fsync", "fdatasync") and ret == 0:
                events.append(("sync", fds.get(int(args.split(",")[0]), "?")))
            elif name in ("rename", "renameat", "renameat2") and ret == 0 and len(strs) >= 2:
                events.append(("rename", strs[0], strs[1]))
            elif name in ("write", "writev", "sendto", "sendmsg") and ret > 0:
                for s in strs:
                    if "queued as" in s or "APPENDUID" in s:
                        events.append(("reply", s))
    return events


def check_order(events, state_dir):
    """Violations of the durability order, and the number of replies checked."""
    problems = []
    checked = 0
    wal = os.path.join(state_dir, "index.db-wal")
    blobs = os.path.join(state_dir, "blobs")
    last_rename = None
    for i, ev in enumerate(events):
        if ev[0] == "rename" and ev[2].startswith(blobs + "/") and not ev[2].startswith(blobs + "/tmp/"):
            last_rename = i
        if ev[0] != "reply":
            continue
        m = QUEUED_RE.search(ev[1])
        if m:
            r = next((j for j in range(i - 1, -1, -1) if events[j][0] == "rename"
                      and os.path.basename(events[j][2]) == m.group(1)), None)
            what = "250 for %s" % m.group(1)
        else:
            r = last_rename
            what = "APPEND OK %r" % ev[1][:60]
        checked += 1
        if r is None:
            problems.append("%s: no rename of its blob before the reply" % what)
            continue
        src, dst = events[r][1], events[r][2]
        before, after = events[:r], events[r + 1:i]
        if ("sync", src) not in before:
            problems.append("%s: temp file %s not fsynced before its rename" % (what, src))
        if ("sync", os.path.dirname(dst)) not in after:
            problems.append("%s: directory %s not fsynced between the rename and the reply" % (what, os.path.dirname(dst)))
        if ("sync", wal) not in after:
            problems.append("%s: index.db-wal not synced between the rename and the reply" % what)
    return problems, checked


def test_fsync_before_reply(crash_root):
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    if harness.ASAN:
        pytest.skip("the order is the same in every build; the plain build traces faster")
    s = new_server(crash_root, "order")
    s.start()
    tracer = None
    try:
        s.add_domain(DOMAIN)
        for u in USERS:
            s.add_user(u)
        trace = os.path.join(s.dir, "strace.txt")
        fds = open_fds(s.pid)
        tracer = subprocess.Popen(["strace", "-f", "-tt", "-qq", "-s", "120", "-p", str(s.pid), "-o", trace,
                                   "-e", "trace=openat,close,fsync,fdatasync,rename,renameat,renameat2,"
                                         "write,writev,sendto,sendmsg"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        if tracer.poll() is not None:
            pytest.skip("strace cannot attach: %s" % tracer.stderr.read().decode(errors="replace").strip())
        model = Model(USERS)
        d = Driver(s, model, random.Random(5), "order", USERS)
        for size in (1500, 300000, 40000):
            assert d.smtp(size).code == 250
            assert d.smtp(size + 17, rcpts=USERS).code == 250
            assert d.append(size)[0] == "OK"
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
        tracer = None
        problems, checked = check_order(parse_trace(trace, fds), s.state_dir)
        assert checked == 9, "found %d of the 9 replies in the trace" % checked
        assert problems == [], "\n".join(problems)
    finally:
        if tracer is not None and tracer.poll() is None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
        s.stop()


# The order checker itself, on synthetic traces: each case drops one step.
_SD = "/s"
_ID = "01M8J6PXHPYGYPN59EBPBBJ76Z"
_DST = "/s/blobs/01M8J/6P/" + _ID
_GOOD = [("sync", "/s/blobs/tmp/.tmp.1"), ("rename", "/s/blobs/tmp/.tmp.1", _DST), ("sync", "/s/blobs/01M8J/6P"),
         ("sync", "/s/index.db-wal"), ("reply", "250 2.0.0 Ok: queued as %s\\r\\n" % _ID)]
ORDER_CASES = [
    ("complete", _GOOD, None),
    ("no file fsync", [e for e in _GOOD if e != ("sync", "/s/blobs/tmp/.tmp.1")], "not fsynced before its rename"),
    ("no dir fsync", [e for e in _GOOD if e != ("sync", "/s/blobs/01M8J/6P")], "directory"),
    ("no wal sync", [e for e in _GOOD if e != ("sync", "/s/index.db-wal")], "index.db-wal"),
    ("wal synced before rename", [_GOOD[0], _GOOD[3], _GOOD[1], _GOOD[2], _GOOD[4]], "index.db-wal"),
    ("dir synced after reply", [_GOOD[0], _GOOD[1], _GOOD[3], _GOOD[4], _GOOD[2]], "directory"),
    ("no rename", [_GOOD[0], _GOOD[2], _GOOD[3], _GOOD[4]], "no rename"),
]


@pytest.mark.parametrize("name,events,expect", ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_order_checker(name, events, expect):
    problems, checked = check_order(events, _SD)
    assert checked == 1
    if expect is None:
        assert problems == [], problems
    else:
        assert any(expect in p for p in problems), "%s: expected %r in %r" % (name, expect, problems)
