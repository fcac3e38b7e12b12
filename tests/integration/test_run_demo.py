"""`make run` as a new user would: start scripts/run-demo, follow the
commands it prints, see the mail arrive, stop it with Ctrl-C."""
import os
import re
import signal
import subprocess
import time

import harness
from harness import SLOW, free_port, proc_env, sanitizer_report, wait_until

SCRIPT = os.path.join(harness.REPO, "scripts", "run-demo")


def read_block(proc, deadline):
    """stdout lines up to the 'Ctrl-C' line that ends the printed block."""
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "Ctrl-C" in line:
            return lines
    raise AssertionError("run-demo printed no complete block:\n" + "\n".join(lines))


def wait_smtp(port):
    def up():
        try:
            with harness.RawSMTP(port) as c:
                return c.reply().code == 220
        except (OSError, harness.StrataError):
            return False
    wait_until(up, 15 * SLOW, interval=0.1, what="the demo's SMTP port")


def test_run_demo(tmp_root):
    root = os.path.join(tmp_root, "demo")
    os.makedirs(root)
    harness.make_traversable(root)
    demo_dir = os.path.join(root, "state")
    smtp, admin, imap = free_port(), free_port(), free_port()
    env = proc_env({"STRATA_DEMO_DIR": demo_dir, "STRATA_DEMO_SMTP": "127.0.0.1:%d" % smtp,
                    "STRATA_DEMO_ADMIN": "127.0.0.1:%d" % admin,
                    "STRATA_DEMO_IMAP": "127.0.0.1:%d" % imap})
    log_path = os.path.join(root, "demo.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([SCRIPT, harness.STRATA_BIN], stdout=subprocess.PIPE, stderr=log,
                                stdin=subprocess.DEVNULL, env=env, text=True, start_new_session=True)
    try:
        block = read_block(proc, time.monotonic() + 60 * SLOW)
        text = "\n".join(block)
        commands = [l.strip() for l in block if l.startswith("  ") and
                    re.match(r"\s+(swaks|python3|curl|%s)\b" % re.escape(harness.STRATA_BIN), l)]
        sends = [c for c in commands if c.startswith(("swaks", "python3"))]
        lists = [c for c in commands if " mail list " in c]
        cats = [c for c in commands if " mail cat " in c]
        imap_reads = [c for c in commands if "imap://" in c]
        others = [c for c in commands if (c.startswith("curl") and "imap://" not in c)
                  or c.endswith(" status")]
        assert len(sends) == 2 and len(lists) == 1 and len(cats) == 1 and len(others) == 2, text
        assert len(imap_reads) == 1 and "127.0.0.1:%d" % imap in imap_reads[0], text
        assert "127.0.0.1:%d" % smtp in text and "127.0.0.1:%d" % admin in text, text

        wait_smtp(smtp)

        for c in sends:
            r = subprocess.run(c, shell=True, capture_output=True, text=True, timeout=60 * SLOW)
            assert r.returncode == 0, (c, r.stdout, r.stderr)
        r = subprocess.run(lists[0], shell=True, capture_output=True, text=True, timeout=60 * SLOW)
        assert r.returncode == 0, (lists[0], r.stderr)
        assert harness.parse_mail_list(r.stdout) == [1, 2], r.stdout
        r = subprocess.run(cats[0], shell=True, capture_output=True, timeout=60 * SLOW)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(b"Received: ") and b"Subject: Hello" in r.stdout, r.stdout
        assert b"My first Strata mail" in r.stdout, r.stdout
        assert sanitizer_report(r.stderr.decode()) is None
        # the same message over IMAP, as a mail client would read it
        r_imap = subprocess.run(imap_reads[0], shell=True, capture_output=True, timeout=60 * SLOW)
        assert r_imap.returncode == 0, (imap_reads[0], r_imap.stderr)
        assert r_imap.stdout == r.stdout, (r_imap.stdout, r.stdout)
        for c in others:
            r = subprocess.run(c, shell=True, capture_output=True, text=True, timeout=60 * SLOW)
            assert r.returncode == 0, (c, r.stdout, r.stderr)
            assert r.stdout.strip(), c
        assert "strata_smtp_messages_accepted_total 2" in subprocess.run(
            others[0] if others[0].startswith("curl") else others[1], shell=True, capture_output=True,
            text=True).stdout
        # Ctrl-C
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30 * SLOW) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    with open(log_path, errors="replace") as f:
        log = f.read()
    assert sanitizer_report(log) is None, log

    # a second run finds the domain and account and keeps the mail
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([SCRIPT, harness.STRATA_BIN], stdout=subprocess.PIPE, stderr=log,
                                stdin=subprocess.DEVNULL, env=env, text=True, start_new_session=True)
    try:
        read_block(proc, time.monotonic() + 60 * SLOW)
        wait_smtp(smtp)
        r = subprocess.run(lists[0], shell=True, capture_output=True, text=True, timeout=60 * SLOW)
        assert harness.parse_mail_list(r.stdout) == [1, 2], r.stdout
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30 * SLOW) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
