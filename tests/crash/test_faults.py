"""Storage faults: a failing open/write/fsync/rename/directory fsync
(STRATA_FAULT, src/core/core_fs.c) and a really full file system (a small
tmpfs holding the state directory).  Every failure must be a 4xx (SMTP) or
a NO (IMAP), never a loss, a partial message or a stuck server; after the
fault the same process serves again."""
import errno
import os
import random
import subprocess
import sys
import time

import pytest

import harness
from crashlib import Checker, Driver, Model, new_server, sigkill

DOMAIN = "fault.example"
USERS = ["alice@" + DOMAIN, "bob@" + DOMAIN]
EXPECTED = {errno.EIO: (451, "4.3.0"), errno.ENOSPC: (452, "4.3.1")}
SEED = int(os.environ.get("STRATA_CRASH_SEED") or 20261128)


def setup_server(root, name, options=None, state_dir=None):
    opts = dict(options or {})
    if state_dir:
        opts["state_dir"] = state_dir
    s = new_server(root, name, opts)
    if state_dir:
        s.state_dir = state_dir
    s.start()
    s.add_domain(DOMAIN)
    for u in USERS:
        s.add_user(u)
    return s


def check_invariants(s, checker, when):
    v, _ = checker.check()
    v = list(checker.model.errors) + v
    assert not v, "%s: %d violations:\n  %s" % (when, len(v), "\n  ".join(v[:30]))
    assert checker.lost == 0
    # no process died here: a refused message's blob must have been unlinked
    assert not checker.orphans, "%s: blob files no index row names: %r" % (when, sorted(checker.orphans)[:10])


def wait_tmp_empty(s):
    harness.wait_until(lambda: s.tmp_files() == [], 10 * harness.SLOW, what="blobs/tmp to be empty")


# --------------------------------------------------------------------------
# injected faults
# --------------------------------------------------------------------------

_rng = random.Random(SEED)
CASES = []
for _op in ("open", "write", "fsync", "rename", "fsync_dir"):
    for _err in (errno.EIO, errno.ENOSPC):
        CASES.append((_op, _rng.randint(1, 4), _err, False))
CASES += [("write", 2, errno.ENOSPC, True), ("fsync", 1, errno.EIO, True), ("rename", 3, errno.EIO, True)]


@pytest.mark.parametrize("op,nth,err,repeat", CASES,
                         ids=["%s:%d:%s%s" % (c[0], c[1], errno.errorcode[c[2]], ":repeat" if c[3] else "")
                              for c in CASES])
def test_fault_point(crash_root, op, nth, err, repeat):
    spec = "%s:%d:%d%s" % (op, nth, err, ":repeat" if repeat else "")
    s = setup_server(crash_root, "fault")
    try:
        model = Model(USERS)
        checker = Checker(s, model)
        rng = random.Random("%d %s" % (SEED, spec))
        d = Driver(s, model, rng, "f%d" % SEED, USERS)
        s.stop()                                    # start-up writes (TLS key) are done now
        s.start(env={"STRATA_FAULT": spec})
        failures = []
        want = EXPECTED[err]
        # SMTP and APPEND interleaved; sizes cross the 256 KiB spill threshold
        plan = [("smtp", 2000), ("append", 3000), ("smtp", 300000), ("append", 280000),
                ("smtp", 40000), ("append", 500), ("smtp", 700), ("smtp", 270000)]
        for kind, size in plan:
            if kind == "smtp":
                r = d.smtp(size)
                if r.code != 250:
                    assert (r.code, r.enhanced) == want, "%s: SMTP %r, expected %r" % (spec, r, want)
                    failures.append(r)
            else:
                typ, resp = d.append(size)
                if typ != "OK":
                    assert typ == "NO", "%s: APPEND answered %s %r, expected NO" % (spec, typ, resp)
                    failures.append((typ, resp))
        if repeat:
            ok_after = len(plan) - len(failures)
            assert len(failures) >= len(plan) - 3, "%s: only %d failures of %d" % (spec, len(failures), len(plan))
            assert ok_after <= 3
        else:
            assert len(failures) == 1, "%s: %d operations failed (one fault armed): %r" % (spec, len(failures),
                                                                                          failures)
        wait_tmp_empty(s)
        check_invariants(s, checker, spec + " (fault armed, still running)")
        # the same process still serves (a non-repeating fault has fired)
        if not repeat:
            assert d.smtp(1500).code == 250
            assert d.append(1500)[0] == "OK"
        s.stop()
        s.start()                                   # no fault: everything works again
        check_invariants(s, checker, spec + " (after restart)")
        assert d.smtp(1500).code == 250
        assert d.append(1500)[0] == "OK"
        check_invariants(s, checker, spec + " (after restart and new mail)")
    finally:
        if s.proc is not None:
            s.stop()


# --------------------------------------------------------------------------
# a full file system
# --------------------------------------------------------------------------

def try_mount_tmpfs(path, size):
    """Mounts a tmpfs; returns None or the reason it cannot."""
    if os.geteuid() != 0:
        return "not root: cannot mount a tmpfs"
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", path],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return "mount -t tmpfs failed: %s" % (p.stderr.strip() or p.returncode)
    return None


def fill(path):
    """Writes a filler file until ENOSPC (64 KiB, then 512-byte writes for
    the last pages); returns its size."""
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 512):
            for _ in range(1 << 20):
                try:
                    n += os.write(fd, chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return n


def test_full_disk(crash_root):
    mnt = os.path.join(crash_root, "tmpfs")
    os.makedirs(mnt)
    reason = try_mount_tmpfs(mnt, "24m")
    if reason:
        sys.stderr.write("\nSKIPPED full-disk case: %s\n" % reason)
        pytest.skip("full-disk case needs a tmpfs mount: %s" % reason)
    s = None
    try:
        os.chmod(mnt, 0o755)
        s = setup_server(crash_root, "full", state_dir=os.path.join(mnt, "state"))
        model = Model(USERS)
        checker = Checker(s, model)
        d = Driver(s, model, random.Random(SEED), "full%d" % SEED, USERS)
        for size in (2000, 60000, 300000):
            assert d.smtp(size).code == 250
            assert d.append(size)[0] == "OK"
        check_invariants(s, checker, "before filling the disk")
        filler = os.path.join(mnt, "filler")
        fill(filler)
        # SMTP: a temporary failure (452 4.3.1, or 451) at some step, never 5xx, never 250
        for size in (300000, 60000, 5000):
            r = d.smtp(size)
            sys.stderr.write("full disk, %d-byte message: SMTP %r\n" % (size, r))
            assert r.code in (451, 452), "full disk: SMTP got %r" % r
            if r.code == 452:
                assert r.enhanced == "4.3.1", r
        typ, resp = d.append(50000)
        sys.stderr.write("full disk: APPEND %s %r\n" % (typ, resp))
        assert typ == "NO" and resp and resp[0].startswith(b"["), \
            "full disk: APPEND answered %s %r, expected NO [code]" % (typ, resp)
        check_invariants(s, checker, "disk full")
        # free 4 KiB at a time: somewhere the blob fits and the index append
        # (WAL) may not; every reply is 250 or 451/452, never a loss
        size = os.path.getsize(filler)
        codes = []
        for step in range(1, 41):
            os.truncate(filler, max(0, size - step * 4096))
            r = d.smtp(1000 + 300 * step)
            typ, _ = d.append(800 + 200 * step)
            codes.append((r.code, typ))
            assert r.code in (250, 451, 452), "nearly full disk: SMTP %r" % r
            assert typ in ("OK", "NO"), "nearly full disk: APPEND %s" % typ
            check_invariants(s, checker, "nearly full disk, %d KiB freed" % (4 * step))
        sys.stderr.write("freeing 4 KiB per step: %r\n" % codes)
        fill(filler)
        # space comes back: the same process serves again, no restart
        os.unlink(filler)
        got = None
        for _ in range(20):
            got = d.smtp(5000)
            if got.code == 250:
                break
            time.sleep(0.5)
        assert got.code == 250, "no 250 within 10 s after space was freed: %r" % got
        assert d.smtp(300000).code == 250
        assert d.append(60000)[0] == "OK"
        wait_tmp_empty(s)
        check_invariants(s, checker, "space freed, no restart")
        s.stop()
        s.start()
        check_invariants(s, checker, "space freed, after restart")
        assert d.smtp(2000).code == 250
    finally:
        if s is not None and s.proc is not None:
            try:
                s.stop()
            except AssertionError:
                sigkill(s)
        if subprocess.run(["umount", mnt]).returncode != 0:
            subprocess.run(["umount", "-l", mnt])
