"""Operability: /metrics and /health, `strata status`, SIGHUP reload, the
privilege drop."""
import os
import pwd
import re
import signal
import subprocess

import pytest

import harness
from harness import SLOW, dot_stuff, make_message, queued_id, wait_until

ALICE = "alice@local.example"

REJECTED = 'strata_smtp_rejected_total{reason="%s"}'


def test_health(server):
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                          "http://127.0.0.1:%d/health" % server.admin_port],
                         capture_output=True, text=True, check=True).stdout
    assert out == "200"
    status, _ = server.http_get("/no-such-page")
    assert status == 404


def test_metrics_move(server):
    before = server.metrics()
    for name in ("strata_smtp_messages_accepted_total", "strata_store_commits_total",
                 "strata_store_commit_batch_size_count", "strata_smtp_connections_total",
                 REJECTED % "unknown_user", REJECTED % "relay_denied", REJECTED % "size",
                 "strata_smtp_sessions_active", 'strata_store_commit_batch_size_bucket{le="+Inf"}'):
        assert name in before, name
    for _ in range(3):
        server.deliver([ALICE])
    with server.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<m@remote.example>", 250)
        c.expect("RCPT TO:<nobody@local.example>", 550)
        c.expect("RCPT TO:<nobody2@local.example>", 550)
        c.expect("RCPT TO:<x@evil.example>", 554)
        c.expect("RSET", 250)
        c.expect("MAIL FROM:<m@remote.example> SIZE=999999999", 552)
        c.expect("QUIT", 221)
    after = server.metrics()

    def delta(name):
        return after[name] - before[name]

    assert delta("strata_smtp_messages_accepted_total") == 3
    assert delta(REJECTED % "unknown_user") == 2
    assert delta(REJECTED % "relay_denied") == 1
    assert delta(REJECTED % "size") == 1
    assert delta("strata_smtp_connections_total") == 4
    assert 1 <= delta("strata_store_commits_total") <= 3
    assert delta("strata_store_commit_batch_size_count") == delta("strata_store_commits_total")
    assert delta("strata_store_commit_batch_size_sum") == 3
    assert delta("strata_store_committed_deliveries_total") == 3
    assert delta("strata_store_blobs_written_total") == 3
    assert after['strata_store_commit_batch_size_bucket{le="+Inf"}'] == after["strata_store_commit_batch_size_count"]
    assert after["strata_queue_pending"] == 0


def test_group_commit_batches(server):
    """Concurrent deliveries share commits: fewer commits than messages."""
    before = server.metrics()
    conns = []
    for _ in range(20):
        c = server.smtp()
        c.ehlo()
        c.expect("MAIL FROM:<g@remote.example>", 250)
        c.expect("RCPT TO:<%s>" % ALICE, 250)
        c.expect("DATA", 354)
        conns.append(c)
    for c in conns:                  # 20 ends of data as close together as possible
        c.send(dot_stuff(make_message(to=ALICE)) + b".\r\n")
    for c in conns:
        queued_id(c.reply())
        c.close()
    after = server.metrics()
    commits = after["strata_store_commits_total"] - before["strata_store_commits_total"]
    assert after["strata_smtp_messages_accepted_total"] - before["strata_smtp_messages_accepted_total"] == 20
    assert 1 <= commits < 20, commits


def test_status_running_and_stopped(strata_factory):
    s = strata_factory.new(populate=True)
    for _ in range(2):
        s.deliver([ALICE])
    r = s.cli("status")
    out = r.stdout
    assert re.search(r"\brunning\b", out, re.I) and not re.search(r"not running", out, re.I), out
    assert re.search(r"messages accepted\D+2\b", out, re.I), out
    assert re.search(r"accounts\D+3\b", out, re.I), out
    assert re.search(r"domains\D+1\b", out, re.I), out
    assert re.search(r"messages\D+2\b", out, re.I), out
    s.stop()
    r = s.cli("status", rc=3)
    assert re.search(r"not running", r.stdout + r.stderr, re.I), r
    # the index figures are still printed
    assert re.search(r"messages\D+2\b", r.stdout, re.I), r.stdout


def test_sighup_reload(strata_factory):
    s = strata_factory.new(config_text="smtp.max_recipients = 10\n")
    s.add_domain("local.example")
    s.add_user(ALICE)

    def rcpts_accepted(c, n):
        c.expect("MAIL FROM:<h@remote.example>", 250)
        codes = [c.cmd("RCPT TO:<alice+%d@local.example>" % i).code for i in range(n)]
        c.expect("RSET", 250)
        return codes

    old = s.smtp()
    old.ehlo()
    assert rcpts_accepted(old, 6) == [250] * 6
    with open(s.config_path, "w") as f:
        f.write("smtp.max_recipients = 3\n")
    s.send_signal(signal.SIGHUP)

    def reloaded():
        with s.smtp() as c:
            c.ehlo()
            codes = rcpts_accepted(c, 4)
            c.expect("QUIT", 221)
            return codes == [250, 250, 250, 452]
    wait_until(reloaded, 10 * SLOW, interval=0.2, what="max_recipients=3 after SIGHUP")
    # the session opened before the reload keeps its settings
    assert rcpts_accepted(old, 6) == [250] * 6
    old.expect("QUIT", 221)
    old.close()
    assert s.running()

    # a broken file is refused on reload: the daemon keeps running on the old settings
    with open(s.config_path, "w") as f:
        f.write("smtp.max_recipients = banana\n")
    s.send_signal(signal.SIGHUP)
    wait_until(lambda: "banana" in s.read_log(), 10 * SLOW, what="the reload error in the log")
    assert s.running()
    with s.smtp() as c:
        c.ehlo()
        assert rcpts_accepted(c, 4) == [250, 250, 250, 452]
        c.expect("QUIT", 221)


@pytest.mark.skipif(not harness.IS_ROOT, reason="the privilege drop happens only when started as root")
def test_runs_unprivileged(server):
    """Started as root, the daemon binds its ports and then runs as `strata`."""
    pw = pwd.getpwnam("strata")
    with open("/proc/%d/status" % server.pid) as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    assert status["Uid"].split() == [str(pw.pw_uid)] * 4, status["Uid"]
    assert status["Gid"].split() == [str(pw.pw_gid)] * 4, status["Gid"]
    assert status["Groups"].split() in ([], [str(pw.pw_gid)]), status["Groups"]
    assert os.stat(os.path.join(server.state_dir, "index.db")).st_uid == pw.pw_uid
    key = os.stat(os.path.join(server.state_dir, "tls", "key.pem"))
    assert key.st_mode & 0o077 == 0, oct(key.st_mode)
